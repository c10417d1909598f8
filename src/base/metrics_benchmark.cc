// Cost of the metric hot paths, each beside the naive peer a reader would otherwise write:
// one std::atomic shared by every thread. Single-threaded the two cost about the same; with
// threads on different cores the shared atomic's cache line bounces between them, while the
// striped metric keeps each thread on its own line.
//
//   cmake --build build/dev --target metrics_benchmark && ./build/dev/src/base/metrics_benchmark
#include <benchmark/benchmark.h>

#include <atomic>
#include <bit>
#include <cstdint>
#include <vector>

#include "base/metrics.h"

namespace chorus {
namespace {

MetricsRegistry& Registry() {
  static MetricsRegistry* registry = new MetricsRegistry();
  return *registry;
}

Counter& BenchCounter() {
  static Counter& c = Registry().Counter("bench_total", "Benchmark counter.").value().Get();
  return c;
}

const std::vector<double>& Bounds() {
  static const std::vector<double> bounds = ExponentialBuckets(0.0001, 2, 16);
  return bounds;
}

Histogram& BenchHistogram() {
  static Histogram& h = Registry().Histogram("bench_seconds", "Benchmark histogram.", Bounds()).value().Get();
  return h;
}

// Observed values cycle through every bucket, so the bucket search is not trivially predicted.
double Sample(uint64_t i) { return static_cast<double>(i & 1023) * 0.0001; }

void BM_CounterInc(benchmark::State& state) {
  Counter& c = BenchCounter();
  for (auto _ : state) c.Inc();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CounterInc)->Threads(1)->Threads(2)->UseRealTime();

// The naive peer: one atomic shared by all threads.
std::atomic<uint64_t> g_naive_counter{0};
void BM_NaiveAtomicInc(benchmark::State& state) {
  for (auto _ : state) g_naive_counter.fetch_add(1, std::memory_order_relaxed);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NaiveAtomicInc)->Threads(1)->Threads(2)->UseRealTime();

void BM_HistogramObserve(benchmark::State& state) {
  Histogram& h = BenchHistogram();
  uint64_t i = 0;
  for (auto _ : state) h.Observe(Sample(i++));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramObserve)->Threads(1)->Threads(2)->UseRealTime();

// The naive histogram: shared bucket counters and a shared CAS-updated sum.
struct NaiveHistogram {
  std::vector<double> bounds = Bounds();
  std::vector<std::atomic<uint64_t>> buckets = std::vector<std::atomic<uint64_t>>(Bounds().size() + 1);
  std::atomic<uint64_t> sum_bits{0};

  void Observe(double v) {
    size_t b = 0;
    while (b < bounds.size() && !(v <= bounds[b])) ++b;
    buckets[b].fetch_add(1, std::memory_order_relaxed);
    uint64_t old = sum_bits.load(std::memory_order_relaxed);
    while (!sum_bits.compare_exchange_weak(old, std::bit_cast<uint64_t>(std::bit_cast<double>(old) + v),
                                           std::memory_order_relaxed)) {
    }
  }
};
NaiveHistogram& SharedNaiveHistogram() {
  static NaiveHistogram* h = new NaiveHistogram();
  return *h;
}

void BM_NaiveHistogramObserve(benchmark::State& state) {
  NaiveHistogram& h = SharedNaiveHistogram();
  uint64_t i = 0;
  for (auto _ : state) h.Observe(Sample(i++));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_NaiveHistogramObserve)->Threads(1)->Threads(2)->UseRealTime();

// Not a hot path, but worth knowing: looking a child up by labels each time instead of caching.
void BM_WithLabelsLookup(benchmark::State& state) {
  static auto family = Registry().Counter("bench_labelled_total", "", {"route", "code"}).value();
  family.WithLabels({"/api/v1/likes", "200"});
  for (auto _ : state) benchmark::DoNotOptimize(&family.WithLabels({"/api/v1/likes", "200"}));
}
BENCHMARK(BM_WithLabelsLookup);

void BM_Render(benchmark::State& state) {
  MetricsRegistry registry;
  auto requests = registry.Counter("r_total", "Requests.", {"route", "code"}).value();
  auto latency = registry.Histogram("l_seconds", "Latency.", Bounds(), {"route"}).value();
  for (int r = 0; r < 20; ++r) {
    const std::string route = "/route/" + std::to_string(r);
    latency.WithLabels({route}).Observe(0.01);
    for (const char* code : {"200", "404", "500"}) requests.WithLabels({route, code}).Inc();
  }
  for (auto _ : state) benchmark::DoNotOptimize(registry.Render());
}
BENCHMARK(BM_Render);

}  // namespace
}  // namespace chorus
