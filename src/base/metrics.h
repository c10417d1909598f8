// Metrics: counters, gauges and histograms, rendered in the Prometheus text exposition format
// (version 0.0.4) for `GET /metrics`.
//
// A MetricsRegistry owns metric families. A family has a name, a help text, a type and a fixed
// list of label names; its children are the series, one per tuple of label values:
//
//   auto requests = DefaultMetrics().Counter("chorus_http_requests_total",
//                                            "HTTP requests served", {"route", "code"});
//   if (!requests.ok()) return requests.status();
//   Counter& ok_healthz = requests->WithLabels({"/healthz", "200"});  // cache this reference
//   ok_healthz.Inc();                                                  // hot path
//
// Registering the identical definition again (same type, help, label names, buckets) returns
// the existing family, so two components can share one metric; a conflicting definition under a
// taken name, or an invalid metric/label name, is an error Status. Families and children live
// as long as the registry; references returned by WithLabels()/Get() never dangle or move.
//
// Thread rules: everything here may be called from any thread.
//   - Counter::Inc and Histogram::Observe are striped: each object holds kMetricStripes
//     cache-line-aligned stripes; a thread is given a stripe index round-robin on its first use
//     of any metric (a thread_local) and only ever adds to that stripe with a relaxed atomic.
//     With one thread per core (the runtime's shards), no two shards share a line, so the hot
//     path neither locks nor bounces cache lines. Render() sums the stripes.
//   - Gauge is one relaxed std::atomic<int64_t> (values that go up and down are rarely written
//     from many threads at once; a gauge needing a fractional value uses a callback).
//   - Creating a child (WithLabels / Get) and registering families take a mutex; resolve
//     children once at startup or connection setup and keep the reference.
//   - Callbacks (GaugeCallback / CounterCallback) run on the thread calling Render(), under
//     their family's mutex. They must be thread-safe (read atomics, not shard-owned state) and
//     must not call into the registry. Destroying the returned CallbackHandle unregisters the
//     callback; once the destructor returns, the callback is not running and never runs again.
//
// Cost of each operation (x86-64, see metrics_benchmark.cc for measured numbers):
//   Counter::Inc          one thread_local load + one uncontended relaxed fetch_add.
//   Histogram::Observe    binary search over the bounds + one fetch_add + one CAS on the sum.
//   Gauge::Set/Add/Sub    one relaxed atomic op on a line shared by all writers.
//   Family::WithLabels    mutex + map lookup (allocates on first use of a label tuple).
//   Render()              takes each family's mutex in turn; O(series x stripes); allocates.
//
// Memory: a Counter child is kMetricStripes cache lines (1 KiB), a Histogram child
// kMetricStripes * ceil((buckets + 2) / 8) lines. Keep label cardinality bounded: label values
// must come from a closed set (routes, status codes, shard ids), never from user input.
//
// A WithLabels() call with the wrong number of values is a bug in the caller, not a reason to
// crash: it is logged (rate-limited) and returns the family's "dropped" child, which counts
// but is never rendered.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"

namespace chorus {

// Number of stripes per counter/histogram. Threads beyond this share stripes (still correct,
// just contended). A power of two so the index stays a mask.
inline constexpr size_t kMetricStripes = 16;

// Prometheus name rules: metric [a-zA-Z_:][a-zA-Z0-9_:]*, label [a-zA-Z_][a-zA-Z0-9_]* and not
// starting with "__" (reserved for Prometheus itself).
bool IsValidMetricName(std::string_view name);
bool IsValidLabelName(std::string_view name);

// Bucket helpers: `count` upper bounds start, start*factor, ... / start, start+width, ...
std::vector<double> ExponentialBuckets(double start, double factor, size_t count);
std::vector<double> LinearBuckets(double start, double width, size_t count);

namespace metrics_internal {

inline constexpr size_t kCacheLine = 64;
inline constexpr uint32_t kNoStripe = ~uint32_t{0};

// This thread's stripe, kNoStripe until the first metric update. Constant-initialised, so
// access compiles to a plain TLS load (no init guard).
inline thread_local uint32_t tls_stripe = kNoStripe;
uint32_t AssignStripe();  // round-robin; sets tls_stripe

inline size_t ThisThreadStripe() {
  uint32_t s = tls_stripe;
  if (s == kNoStripe) [[unlikely]]
    s = AssignStripe();
  return s;
}

struct alignas(kCacheLine) PaddedCounter {
  std::atomic<uint64_t> value{0};
};

struct alignas(kCacheLine) Line {
  static constexpr size_t kSlots = kCacheLine / sizeof(uint64_t);
  std::atomic<uint64_t> slot[kSlots] = {};
};

class FamilyState;

}  // namespace metrics_internal

// A monotonic counter. Inc() is wait-free and lock-free; see the header comment for cost.
class Counter {
 public:
  Counter() = default;
  Counter(const Counter&) = delete;
  Counter& operator=(const Counter&) = delete;

  void Inc(uint64_t n = 1) {
    stripes_[metrics_internal::ThisThreadStripe()].value.fetch_add(n, std::memory_order_relaxed);
  }
  // Sum over the stripes: exact once writers are quiescent, a lower bound while they run.
  uint64_t Value() const;

 private:
  std::array<metrics_internal::PaddedCounter, kMetricStripes> stripes_;
};

// A value that goes up and down: connections, queue depth, bytes buffered. int64_t so that
// Add/Sub from several threads is exact (one fetch_add) and Set is one store.
class Gauge {
 public:
  Gauge() = default;
  Gauge(const Gauge&) = delete;
  Gauge& operator=(const Gauge&) = delete;

  void Set(int64_t v) { value_.store(v, std::memory_order_relaxed); }
  void Add(int64_t d = 1) { value_.fetch_add(d, std::memory_order_relaxed); }
  void Sub(int64_t d = 1) { value_.fetch_sub(d, std::memory_order_relaxed); }
  int64_t Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  alignas(metrics_internal::kCacheLine) std::atomic<int64_t> value_{0};
};

// A histogram over fixed upper bounds (le is inclusive: an observation equal to a bound counts
// in that bucket). NaN observations count in +Inf and make the sum NaN, as Prometheus does.
class Histogram {
 public:
  // `bounds` are strictly increasing finite upper bounds, without +Inf; they must outlive the
  // histogram (the registry keeps them in the family).
  explicit Histogram(std::span<const double> bounds);
  Histogram(const Histogram&) = delete;
  Histogram& operator=(const Histogram&) = delete;

  void Observe(double v) {
    const size_t bucket = static_cast<size_t>(
        std::partition_point(bounds_.begin(), bounds_.end(), [v](double ub) { return !(v <= ub); }) -
        bounds_.begin());
    metrics_internal::Line* stripe = &lines_[metrics_internal::ThisThreadStripe() * lines_per_stripe_];
    const size_t slot = bucket + 1;  // slot 0 holds the sum
    stripe[slot / metrics_internal::Line::kSlots].slot[slot % metrics_internal::Line::kSlots].fetch_add(
        1, std::memory_order_relaxed);
    std::atomic<uint64_t>& sum = stripe[0].slot[0];
    uint64_t old = sum.load(std::memory_order_relaxed);
    while (!sum.compare_exchange_weak(old, std::bit_cast<uint64_t>(std::bit_cast<double>(old) + v),
                                      std::memory_order_relaxed)) {
    }
  }

  struct Snapshot {
    std::vector<double> bounds;        // finite upper bounds; +Inf is implicit
    std::vector<uint64_t> cumulative;  // bounds.size() + 1 entries, the last one is le="+Inf"
    double sum = 0;
    uint64_t count = 0;  // == cumulative.back()
  };
  // Sums the stripes. Consistent within itself (+Inf bucket == count) even while observers run.
  Snapshot Collect() const;

 private:
  std::span<const double> bounds_;
  size_t lines_per_stripe_;
  std::unique_ptr<metrics_internal::Line[]> lines_;
};

// A handle to a family in a registry: cheap to copy, valid as long as the registry.
template <typename T>
class Family {
 public:
  // Returns the child for these label values (in label-name order), creating it on first use.
  // Takes the family mutex: call once and keep the reference, which stays valid for the life
  // of the registry. A wrong number of values returns the unrendered "dropped" child and logs.
  T& WithLabels(std::initializer_list<std::string_view> values) {
    return WithLabels(std::span<const std::string_view>(values.begin(), values.size()));
  }
  T& WithLabels(std::span<const std::string_view> values);
  T& WithLabels(std::span<const std::string> values);
  // The child of a family without labels.
  T& Get() { return WithLabels(std::span<const std::string_view>()); }

  const std::string& name() const;

 private:
  friend class MetricsRegistry;
  explicit Family(metrics_internal::FamilyState* state) : state_(state) {}
  metrics_internal::FamilyState* state_;
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

// Label name/value pairs for a callback series, e.g. {{"shard", "0"}}.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// Keeps a callback series registered. Destroying or Reset()ting it removes the series; after
// that returns the callback is not running and will not run again. Safe to outlive the registry.
class CallbackHandle {
 public:
  CallbackHandle() = default;
  CallbackHandle(CallbackHandle&& other) noexcept = default;
  CallbackHandle& operator=(CallbackHandle&& other) noexcept;
  CallbackHandle(const CallbackHandle&) = delete;
  CallbackHandle& operator=(const CallbackHandle&) = delete;
  ~CallbackHandle() { Reset(); }

  void Reset();

 private:
  friend class MetricsRegistry;
  CallbackHandle(std::weak_ptr<metrics_internal::FamilyState> family, std::vector<std::string> values)
      : family_(std::move(family)), values_(std::move(values)) {}
  std::weak_ptr<metrics_internal::FamilyState> family_;
  std::vector<std::string> values_;
};

class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  // Registers (or returns the identical existing) family. Errors: kInvalidArgument for a bad
  // metric/label name, duplicate label names or bad bounds; kAlreadyExists when the name (or a
  // histogram's _bucket/_sum/_count series name) is taken by a different definition.
  Result<Family<chorus::Counter>> Counter(std::string_view name, std::string_view help,
                                          std::vector<std::string> label_names = {});
  Result<Family<chorus::Gauge>> Gauge(std::string_view name, std::string_view help,
                                      std::vector<std::string> label_names = {});
  // `bounds`: strictly increasing upper bounds; a trailing +Inf is accepted and dropped.
  Result<Family<chorus::Histogram>> Histogram(std::string_view name, std::string_view help,
                                              std::vector<double> bounds,
                                              std::vector<std::string> label_names = {});

  // A series whose value is computed by `fn` at render time, e.g. open connections summed
  // over shards. Series of one name share the family: same help and label names (in the same
  // order); registering label values that are already registered is kAlreadyExists.
  Result<CallbackHandle> GaugeCallback(std::string_view name, std::string_view help,
                                       std::function<double()> fn);
  Result<CallbackHandle> GaugeCallback(std::string_view name, std::string_view help,
                                       const MetricLabels& labels, std::function<double()> fn);
  Result<CallbackHandle> CounterCallback(std::string_view name, std::string_view help,
                                         std::function<double()> fn);
  Result<CallbackHandle> CounterCallback(std::string_view name, std::string_view help,
                                         const MetricLabels& labels, std::function<double()> fn);

  // The exposition text (Content-Type: text/plain; version=0.0.4): families sorted by name,
  // series sorted by label values; families without series are omitted.
  std::string Render() const EXCLUDES(mu_);

 private:
  Result<std::shared_ptr<metrics_internal::FamilyState>> Register(
      std::shared_ptr<metrics_internal::FamilyState> wanted) EXCLUDES(mu_);
  Result<CallbackHandle> RegisterCallback(bool counter, std::string_view name, std::string_view help,
                                          const MetricLabels& labels, std::function<double()> fn);

  mutable Mutex mu_;
  // Families are never removed, so FamilyState pointers handed out stay valid.
  std::map<std::string, std::shared_ptr<metrics_internal::FamilyState>, std::less<>> families_
      GUARDED_BY(mu_);
  // Every series name a family renders (histograms render three) -> family.
  std::map<std::string, std::string, std::less<>> series_owner_ GUARDED_BY(mu_);
};

// The process-wide registry that /metrics serves. Never destroyed, so metrics may be updated
// during static destruction.
MetricsRegistry& DefaultMetrics();

}  // namespace chorus
