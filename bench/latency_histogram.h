// LatencyHistogram: fixed-memory latency recording with bounded relative error.
//
// Layout (the HdrHistogram idea, specialised): values are nanoseconds. Values below 256 ns each
// get their own counter. Above that, every power-of-two range [2^k, 2^(k+1)) is split into 128
// equal sub-buckets, so a bucket is never wider than 1/128 (0.78%) of the values it holds. The
// top range ends at 2^37 ns (~137 s); larger values are clamped into the last bucket and counted
// in out_of_range(). That is 256 + 29 * 128 = 3968 counters (31 KiB), allocated once.
//
// Percentile(p) uses the nearest-rank definition (the smallest recorded value v such that at
// least p% of samples are <= v) and returns the highest value equivalent to v's bucket, clamped
// to [Min(), Max()]: the answer is never below the exact percentile and at most 0.78% above it.
// Min, Max, Mean and Count are exact (Max/Mean include clamped values at their true size).
//
// Not thread-safe: give each load-generator thread its own histogram and Merge() them at the end.
// Histograms recorded in other processes (live-fanout's client processes) travel as
// ToBucketsJson() and come back with FromBucketsJson(), losslessly.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <vector>

#include "base/status.h"

namespace chorus::bench {

class LatencyHistogram {
 public:
  // Sub-buckets per power of two in the logarithmic part, and the exact-counter range below it.
  static constexpr int kSubBucketBits = 7;
  static constexpr int kSubBuckets = 1 << kSubBucketBits;  // 128
  static constexpr int kLinearLimit = 2 * kSubBuckets;     // 256 ns: counted exactly
  static constexpr int kMaxBits = 37;                      // highest trackable ~ 2^37 ns (137 s)
  static constexpr int kNumBuckets = kLinearLimit + (kMaxBits - (kSubBucketBits + 1)) * kSubBuckets;
  static constexpr int64_t kHighestTrackable = (int64_t{1} << kMaxBits) - 1;

  // Copyable and movable; a moved-from histogram may only be assigned to or destroyed.
  LatencyHistogram();

  // Records one sample. Negative values count as 0; values above kHighestTrackable are clamped.
  void Record(int64_t nanos) { RecordN(nanos, 1); }
  void RecordN(int64_t nanos, uint64_t n);

  // Adds every sample of `other` to this histogram.
  void Merge(const LatencyHistogram& other);
  void Reset();

  uint64_t Count() const { return count_; }
  uint64_t out_of_range() const { return out_of_range_; }
  // 0 for an empty histogram.
  int64_t Min() const { return count_ ? min_ : 0; }
  int64_t Max() const { return count_ ? max_ : 0; }
  double Mean() const {
    return count_ ? static_cast<double>(sum_) / static_cast<double>(count_) : 0.0;
  }
  // p in [0, 100], e.g. 50, 99, 99.9. 0 for an empty histogram.
  int64_t Percentile(double p) const;

  // {"count", "min_ns", "mean_ns", "p50_ns", "p90_ns", "p99_ns", "p999_ns", "p9999_ns", "max_ns",
  //  "out_of_range"}: integers in nanoseconds, mean rounded.
  nlohmann::json ToJson() const;

  // The full state, for merging across processes: {"count", "min", "max", "sum", "out_of_range",
  // "buckets": [[index, count], ...]} with only the non-empty buckets listed.
  nlohmann::json ToBucketsJson() const;
  // Inverse of ToBucketsJson(). Rejects (InvalidArgument) anything it did not write: unknown
  // bucket indexes, counts that do not add up.
  static Result<LatencyHistogram> FromBucketsJson(const nlohmann::json& j);

  // Bucket arithmetic, exposed for tests.
  static int BucketIndex(int64_t nanos);
  static int64_t BucketLowest(int index);
  static int64_t BucketHighest(int index);

 private:
  std::vector<uint64_t> counts_;  // kNumBuckets counters
  uint64_t count_ = 0;
  uint64_t out_of_range_ = 0;
  int64_t min_ = 0;
  int64_t max_ = 0;
  // Sum of samples at their true size; 2^64 ns is 584 years of latency, enough for any run.
  uint64_t sum_ = 0;
};

}  // namespace chorus::bench
