// Cost of one pick for each picker at 10 .. 1M nodes, and of the 3 s weight recomputation.
//
//   build: g++ -std=c++20 -O2 -DNDEBUG -Isrc src/compute/lb_weight.cc src/compute/lb_picker.cc
//            src/base/random.cc src/base/status.cc src/compute/lb_picker_benchmark.cc
//            -lbenchmark -lbenchmark_main -pthread -o /tmp/lb_bench
//          (or the lb_picker_benchmark target of the CMake build)
//   run:   /tmp/lb_bench            (time per iteration = one pick / one table)
//
// Weights are spread over a factor of ~10 (log-uniform), like dynamic weights of a mixed fleet.
// FastSwrr is measured in steady state (after 2n warm-up picks), when its two heaps hold a
// realistic mix of eligible and pending nodes.
#include <benchmark/benchmark.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "compute/lb_picker.h"
#include "compute/lb_weight.h"

namespace chorus::compute {
namespace {

std::vector<WeightedNode> RandomTable(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> log_w(std::log(0.3), std::log(3.0));
  std::vector<WeightedNode> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = {static_cast<NodeId>(i), std::exp(log_w(rng))};
  return t;
}

std::unique_ptr<Picker> Ready(PickerKind kind, size_t n) {
  std::unique_ptr<Picker> p = MakePicker(kind, 7);
  if (!p->Update(RandomTable(n, 1)).ok()) std::abort();
  return p;
}

void BM_StaticSwrrPick(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::unique_ptr<Picker> p = Ready(PickerKind::kStaticSwrr, n);
  for (auto _ : state) benchmark::DoNotOptimize(p->Pick());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_StaticSwrrPick)->Arg(10)->Arg(1000)->Arg(100'000);
BENCHMARK(BM_StaticSwrrPick)->Arg(1'000'000)->Iterations(300);

void BM_FastSwrrPick(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::unique_ptr<Picker> p = Ready(PickerKind::kFastSwrr, n);
  for (size_t i = 0; i < 2 * n; ++i) benchmark::DoNotOptimize(p->Pick());
  for (auto _ : state) benchmark::DoNotOptimize(p->Pick());
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FastSwrrPick)->Arg(10)->Arg(1000)->Arg(100'000)->Arg(1'000'000);

// A pick as the router does it: pick, start, and finish a request started 64 picks earlier.
void BM_P2cPick(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::unique_ptr<Picker> p = Ready(PickerKind::kP2cLeastRequest, n);
  std::vector<NodeId> ring(64, 0);
  for (NodeId id : ring) p->OnRequestStart(id);
  size_t at = 0;
  for (auto _ : state) {
    const NodeId id = *p->Pick();
    p->OnRequestStart(id);
    p->OnRequestFinish(ring[at]);
    ring[at] = id;
    at = (at + 1) % ring.size();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_P2cPick)->Arg(10)->Arg(1000)->Arg(100'000)->Arg(1'000'000);

// A draining node leaves and (to keep the table size) another joins, interleaved with picks.
void BM_FastSwrrRemoveAddPick(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::unique_ptr<Picker> p = Ready(PickerKind::kFastSwrr, n);
  for (size_t i = 0; i < 2 * n; ++i) benchmark::DoNotOptimize(p->Pick());
  std::mt19937_64 rng(3);
  for (auto _ : state) {
    const NodeId id = static_cast<NodeId>(rng() % n);
    benchmark::DoNotOptimize(p->Remove(id));
    if (!p->Add(id, 1.0).ok()) std::abort();
    benchmark::DoNotOptimize(p->Pick());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_FastSwrrRemoveAddPick)->Arg(1000)->Arg(1'000'000);

// The 3 s full-table replacement.
void BM_FastSwrrUpdate(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::unique_ptr<Picker> p = Ready(PickerKind::kFastSwrr, n);
  const std::vector<WeightedNode> a = RandomTable(n, 2), b = RandomTable(n, 3);
  bool flip = false;
  for (auto _ : state) {
    if (!p->Update((flip = !flip) ? a : b).ok()) std::abort();
    benchmark::DoNotOptimize(p->Pick());
  }
}
BENCHMARK(BM_FastSwrrUpdate)->Arg(100'000)->Arg(1'000'000)->Unit(benchmark::kMillisecond);

void BM_RecomputeWeights(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> unit(0, 1);
  std::vector<NodeLoad> loads(n);
  for (NodeLoad& l : loads) {
    l.capacity = 4 + static_cast<double>(rng() % 60);
    l.utilization = unit(rng);
    l.concurrency = static_cast<double>(rng() % 16);  // some idle
  }
  const WeightOptions options;
  for (auto _ : state) benchmark::DoNotOptimize(RecomputeWeights(loads, options));
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK(BM_RecomputeWeights)->Arg(100'000)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace chorus::compute
