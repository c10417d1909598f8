#include "latency_histogram.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <nlohmann/json.hpp>

namespace chorus::bench {

LatencyHistogram::LatencyHistogram() : counts_(kNumBuckets, 0) {}

int LatencyHistogram::BucketIndex(int64_t nanos) {
  if (nanos < kLinearLimit) return nanos < 0 ? 0 : static_cast<int>(nanos);
  if (nanos > kHighestTrackable) nanos = kHighestTrackable;
  const auto v = static_cast<uint64_t>(nanos);
  const int msb = 63 - std::countl_zero(v);  // in [kSubBucketBits + 1, kMaxBits - 1]
  const int shift = msb - kSubBucketBits;
  const int sub = static_cast<int>(v >> shift);  // in [kSubBuckets, 2 * kSubBuckets)
  return kLinearLimit + (msb - (kSubBucketBits + 1)) * kSubBuckets + (sub - kSubBuckets);
}

int64_t LatencyHistogram::BucketLowest(int index) {
  if (index < kLinearLimit) return index;
  const int j = index - kLinearLimit;
  const int shift = j / kSubBuckets + 1;
  const int64_t sub = kSubBuckets + j % kSubBuckets;
  return sub << shift;
}

int64_t LatencyHistogram::BucketHighest(int index) {
  if (index < kLinearLimit) return index;
  const int shift = (index - kLinearLimit) / kSubBuckets + 1;
  return BucketLowest(index) + (int64_t{1} << shift) - 1;
}

void LatencyHistogram::RecordN(int64_t nanos, uint64_t n) {
  if (n == 0) return;
  if (nanos < 0) nanos = 0;
  if (nanos > kHighestTrackable) out_of_range_ += n;
  counts_[BucketIndex(nanos)] += n;
  if (count_ == 0) {
    min_ = max_ = nanos;
  } else {
    min_ = std::min(min_, nanos);
    max_ = std::max(max_, nanos);
  }
  count_ += n;
  sum_ += static_cast<uint64_t>(nanos) * n;
}

void LatencyHistogram::Merge(const LatencyHistogram& other) {
  if (other.count_ == 0) return;
  for (int i = 0; i < kNumBuckets; ++i) counts_[i] += other.counts_[i];
  if (count_ == 0) {
    min_ = other.min_;
    max_ = other.max_;
  } else {
    min_ = std::min(min_, other.min_);
    max_ = std::max(max_, other.max_);
  }
  count_ += other.count_;
  out_of_range_ += other.out_of_range_;
  sum_ += other.sum_;
}

void LatencyHistogram::Reset() {
  std::fill(counts_.begin(), counts_.end(), 0);
  count_ = out_of_range_ = sum_ = 0;
  min_ = max_ = 0;
}

int64_t LatencyHistogram::Percentile(double p) const {
  if (count_ == 0) return 0;
  p = std::clamp(p, 0.0, 100.0);
  // Nearest rank: the smallest rank r with r >= p% of count, at least 1. The small epsilon keeps
  // decimal percentiles that binary doubles cannot hold (99.9) from rounding up a whole rank.
  const double exact = p * static_cast<double>(count_) / 100.0;
  auto rank = static_cast<uint64_t>(std::ceil(exact - 1e-9 * std::max(1.0, exact)));
  rank = std::clamp<uint64_t>(rank, 1, count_);
  uint64_t seen = 0;
  for (int i = 0; i < kNumBuckets; ++i) {
    seen += counts_[i];
    if (seen >= rank) return std::clamp(BucketHighest(i), min_, max_);
  }
  return max_;  // unreachable while the counters sum to count_
}

nlohmann::json LatencyHistogram::ToJson() const {
  return nlohmann::json{
      {"count", count_},
      {"min_ns", Min()},
      {"mean_ns", std::llround(Mean())},
      {"p50_ns", Percentile(50)},
      {"p90_ns", Percentile(90)},
      {"p99_ns", Percentile(99)},
      {"p999_ns", Percentile(99.9)},
      {"p9999_ns", Percentile(99.99)},
      {"max_ns", Max()},
      {"out_of_range", out_of_range_},
  };
}

nlohmann::json LatencyHistogram::ToBucketsJson() const {
  nlohmann::json buckets = nlohmann::json::array();
  for (int i = 0; i < kNumBuckets; ++i) {
    if (counts_[i] != 0) buckets.push_back({i, counts_[i]});
  }
  return nlohmann::json{
      {"count", count_},   {"min", min_}, {"max", max_}, {"sum", sum_}, {"out_of_range", out_of_range_},
      {"buckets", buckets}};
}

Result<LatencyHistogram> LatencyHistogram::FromBucketsJson(const nlohmann::json& j) {
  auto field = [&](const char* name) -> const nlohmann::json* {
    auto it = j.find(name);
    return it == j.end() || !it->is_number_integer() ? nullptr : &*it;
  };
  if (!j.is_object()) return InvalidArgument("histogram must be a JSON object");
  const nlohmann::json* count = field("count");
  const nlohmann::json* min = field("min");
  const nlohmann::json* max = field("max");
  const nlohmann::json* sum = field("sum");
  const nlohmann::json* out_of_range = field("out_of_range");
  auto buckets = j.find("buckets");
  if (!count || !min || !max || !sum || !out_of_range || buckets == j.end() || !buckets->is_array()) {
    return InvalidArgument("histogram needs count, min, max, sum, out_of_range and buckets");
  }
  LatencyHistogram h;
  uint64_t total = 0;
  for (const nlohmann::json& b : *buckets) {
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_unsigned()) {
      return InvalidArgument("histogram bucket must be [index, count]");
    }
    const int64_t index = b[0].get<int64_t>();
    if (index < 0 || index >= kNumBuckets) return InvalidArgument("histogram bucket out of range");
    const uint64_t n = b[1].get<uint64_t>();
    h.counts_[static_cast<size_t>(index)] += n;
    total += n;
  }
  if (total != count->get<uint64_t>()) return InvalidArgument("histogram buckets do not add up");
  h.count_ = total;
  h.min_ = min->get<int64_t>();
  h.max_ = max->get<int64_t>();
  h.sum_ = sum->get<uint64_t>();
  h.out_of_range_ = out_of_range->get<uint64_t>();
  return h;
}

}  // namespace chorus::bench
