#include "latency_histogram.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

#include "base/random.h"

namespace chorus::bench {
namespace {

constexpr double kPrecision = 1.0 / LatencyHistogram::kSubBuckets;  // 0.78%

// A percentile as an exact fraction, so the reference rank has no floating-point doubt.
struct Pct {
  double p;
  uint64_t num;
  uint64_t den;
};
constexpr Pct kPercentiles[] = {{0, 0, 1},         {1, 1, 100},          {25, 1, 4},
                                {50, 1, 2},        {90, 9, 10},          {99, 99, 100},
                                {99.9, 999, 1000}, {99.99, 9999, 10000}, {100, 1, 1}};

// Nearest-rank percentile of the samples: the smallest value with at least num/den of the
// samples at or below it.
int64_t ExactPercentile(std::vector<int64_t> sorted, const Pct& pct) {
  std::sort(sorted.begin(), sorted.end());
  const uint64_t n = sorted.size();
  uint64_t rank = (pct.num * n + pct.den - 1) / pct.den;
  rank = std::clamp<uint64_t>(rank, 1, n);
  return sorted[rank - 1];
}

void ExpectPercentilesMatch(const LatencyHistogram& h, const std::vector<int64_t>& samples) {
  for (const Pct& pct : kPercentiles) {
    const int64_t exact = ExactPercentile(samples, pct);
    const int64_t got = h.Percentile(pct.p);
    EXPECT_GE(got, exact) << "p" << pct.p;
    EXPECT_LE(static_cast<double>(got), static_cast<double>(exact) * (1 + kPrecision) + 1)
        << "p" << pct.p;
  }
}

// Log-uniform between 1 us and 100 s: every decade the histogram covers gets samples.
std::vector<int64_t> LogUniformSamples(Random& rng, size_t n) {
  std::vector<int64_t> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const double exponent = 3 + 8 * rng.NextDouble();  // 10^3 ns .. 10^11 ns
    out.push_back(static_cast<int64_t>(std::pow(10.0, exponent)));
  }
  return out;
}

TEST(LatencyHistogramTest, EmptyHistogramReportsZeros) {
  LatencyHistogram h;
  EXPECT_EQ(h.Count(), 0u);
  EXPECT_EQ(h.Min(), 0);
  EXPECT_EQ(h.Max(), 0);
  EXPECT_EQ(h.Mean(), 0.0);
  EXPECT_EQ(h.Percentile(50), 0);
  EXPECT_EQ(h.Percentile(99.9), 0);
  const nlohmann::json j = h.ToJson();
  EXPECT_EQ(j["count"], 0);
  EXPECT_EQ(j["p99_ns"], 0);
}

TEST(LatencyHistogramTest, BucketsTileTheRangeWithBoundedWidth) {
  for (int i = 0; i + 1 < LatencyHistogram::kNumBuckets; ++i) {
    ASSERT_EQ(LatencyHistogram::BucketHighest(i) + 1, LatencyHistogram::BucketLowest(i + 1)) << i;
    const int64_t low = LatencyHistogram::BucketLowest(i);
    const int64_t width = LatencyHistogram::BucketHighest(i) - low + 1;
    if (i >= LatencyHistogram::kLinearLimit) {  // below it every bucket is one exact value
      ASSERT_LE(static_cast<double>(width) / static_cast<double>(low), kPrecision) << i;
    }
    ASSERT_EQ(LatencyHistogram::BucketIndex(low), i);
    ASSERT_EQ(LatencyHistogram::BucketIndex(LatencyHistogram::BucketHighest(i)), i);
  }
  EXPECT_EQ(LatencyHistogram::BucketHighest(LatencyHistogram::kNumBuckets - 1),
            LatencyHistogram::kHighestTrackable);
}

TEST(LatencyHistogramTest, PercentilesMatchSortedSamplesWithinPrecision) {
  Random rng(42);
  const std::vector<int64_t> samples = LogUniformSamples(rng, 100'000);
  LatencyHistogram h;
  for (int64_t v : samples) h.Record(v);
  ASSERT_EQ(h.Count(), samples.size());
  EXPECT_EQ(h.Min(), *std::min_element(samples.begin(), samples.end()));
  EXPECT_EQ(h.Max(), *std::max_element(samples.begin(), samples.end()));
  ExpectPercentilesMatch(h, samples);
}

TEST(LatencyHistogramTest, TightLatencyClusterKeepsPrecision) {
  // A realistic loopback run: ~200 us with a long tail, where p50 and p99 are close together.
  Random rng(7);
  std::vector<int64_t> samples;
  for (int i = 0; i < 50'000; ++i) {
    const double tail = rng.Bernoulli(0.02) ? 20.0 * rng.NextDouble() : 1.0;
    samples.push_back(static_cast<int64_t>((180'000 + 40'000 * rng.NextDouble()) * tail));
  }
  LatencyHistogram h;
  for (int64_t v : samples) h.Record(v);
  ExpectPercentilesMatch(h, samples);
}

TEST(LatencyHistogramTest, SmallValuesAreExact) {
  LatencyHistogram h;
  std::vector<int64_t> samples;
  for (int64_t v = 0; v < 256; ++v) {
    samples.push_back(v);
    h.Record(v);
  }
  for (const Pct& pct : kPercentiles) EXPECT_EQ(h.Percentile(pct.p), ExactPercentile(samples, pct));
  EXPECT_DOUBLE_EQ(h.Mean(), 127.5);
}

TEST(LatencyHistogramTest, MergeEqualsRecordingEverythingInOne) {
  Random rng(3);
  const std::vector<int64_t> a = LogUniformSamples(rng, 20'000);
  std::vector<int64_t> b;
  for (int i = 0; i < 5'000; ++i)
    b.push_back(static_cast<int64_t>(1'000'000 * (1 + rng.NextDouble())));
  LatencyHistogram ha, hb, all;
  for (int64_t v : a) {
    ha.Record(v);
    all.Record(v);
  }
  for (int64_t v : b) {
    hb.Record(v);
    all.Record(v);
  }
  ha.Merge(hb);
  EXPECT_EQ(ha.Count(), all.Count());
  EXPECT_EQ(ha.Min(), all.Min());
  EXPECT_EQ(ha.Max(), all.Max());
  EXPECT_DOUBLE_EQ(ha.Mean(), all.Mean());
  for (const Pct& pct : kPercentiles) EXPECT_EQ(ha.Percentile(pct.p), all.Percentile(pct.p));
  std::vector<int64_t> both = a;
  both.insert(both.end(), b.begin(), b.end());
  ExpectPercentilesMatch(ha, both);

  // Merging into or from an empty histogram keeps min/max honest.
  LatencyHistogram empty;
  empty.Merge(hb);
  EXPECT_EQ(empty.Min(), hb.Min());
  EXPECT_EQ(empty.Max(), hb.Max());
  hb.Merge(LatencyHistogram());
  EXPECT_EQ(hb.Count(), b.size());
}

TEST(LatencyHistogramTest, ValuesBeyondRangeAreClampedAndCounted) {
  LatencyHistogram h;
  h.Record(-5);
  h.Record(1000);
  const int64_t huge = int64_t{1} << 40;
  h.Record(huge);
  EXPECT_EQ(h.Count(), 3u);
  EXPECT_EQ(h.out_of_range(), 1u);
  EXPECT_EQ(h.Min(), 0);
  EXPECT_EQ(h.Max(), huge);
  EXPECT_EQ(h.Percentile(100), LatencyHistogram::kHighestTrackable);
  EXPECT_EQ(h.Percentile(50), 1003);  // 1000 lands in [1000, 1003]: reported as the bucket top
}

TEST(LatencyHistogramTest, JsonCarriesPercentilesInNanoseconds) {
  LatencyHistogram h;
  for (int i = 1; i <= 1000; ++i) h.Record(i * 1000);
  const nlohmann::json j = h.ToJson();
  EXPECT_EQ(j["count"], 1000);
  EXPECT_EQ(j["min_ns"], 1000);
  EXPECT_EQ(j["max_ns"], 1'000'000);
  EXPECT_EQ(j["p50_ns"].get<int64_t>(), h.Percentile(50));
  EXPECT_GE(j["p999_ns"].get<int64_t>(), 999'000);
  EXPECT_EQ(j["mean_ns"], 500'500);
}

TEST(LatencyHistogramTest, BucketsJsonRoundTripsAcrossProcesses) {
  Random rng(5);
  LatencyHistogram h;
  for (int64_t v : LogUniformSamples(rng, 10'000)) h.Record(v);
  h.Record(int64_t{1} << 40);  // out of range survives too
  // Through text, as it travels between live-fanout's processes.
  auto back = LatencyHistogram::FromBucketsJson(nlohmann::json::parse(h.ToBucketsJson().dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->Count(), h.Count());
  EXPECT_EQ(back->Min(), h.Min());
  EXPECT_EQ(back->Max(), h.Max());
  EXPECT_EQ(back->out_of_range(), 1u);
  EXPECT_DOUBLE_EQ(back->Mean(), h.Mean());
  for (const Pct& pct : kPercentiles) EXPECT_EQ(back->Percentile(pct.p), h.Percentile(pct.p));

  auto empty = LatencyHistogram::FromBucketsJson(LatencyHistogram().ToBucketsJson());
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->Count(), 0u);
}

TEST(LatencyHistogramTest, BucketsJsonRejectsWhatItDidNotWrite) {
  LatencyHistogram h;
  h.Record(1000);
  nlohmann::json j = h.ToBucketsJson();
  j["count"] = 2;  // buckets hold 1
  EXPECT_FALSE(LatencyHistogram::FromBucketsJson(j).ok());
  j = h.ToBucketsJson();
  j["buckets"] = nlohmann::json::array({nlohmann::json::array({LatencyHistogram::kNumBuckets, 1})});
  EXPECT_FALSE(LatencyHistogram::FromBucketsJson(j).ok());
  EXPECT_FALSE(LatencyHistogram::FromBucketsJson(nlohmann::json::array()).ok());
  EXPECT_FALSE(LatencyHistogram::FromBucketsJson(nlohmann::json{{"count", 0}}).ok());
}

TEST(LatencyHistogramTest, ResetForgetsEverything) {
  LatencyHistogram h;
  h.Record(5'000);
  h.Reset();
  EXPECT_EQ(h.Count(), 0u);
  EXPECT_EQ(h.Percentile(50), 0);
  h.Record(7);
  EXPECT_EQ(h.Min(), 7);
  EXPECT_EQ(h.Max(), 7);
}

}  // namespace
}  // namespace chorus::bench
