// Dynamic node weights for the compute router (seed section 6.3: "dynamic-weight SWRR").
//
// Every ~3 s the router turns each node's last reported load into a routing weight and hands the
// whole table to a Picker (lb_picker.h). The seed's formula is
//
//     weight = capacity × log(remaining utilization) × (utilization / current concurrency)
//
// where capacity is the node's core count or, for GPU nodes, cards × the card type's performance
// coefficient (NodeCapacity). Taken literally it is unusable at the edges: with remaining
// utilization as a fraction in [0,1] the log is ≤ 0 (every weight negative or zero), a full node
// gives log(0) = -inf, an idle node gives 0/0. This header fixes a meaning for each factor and a
// clamping so that DynamicWeight is ALWAYS positive and finite, whatever a (buggy) node reports.
//
// The three factors (u = utilization clamped to [0,1], c = in-flight requests):
//
//   capacity  C = NodeLoad::capacity, clamped to [min_capacity, max_capacity].
//             A missing/zero/negative/NaN capacity becomes min_capacity: such a node is not
//             trusted with traffic but still gets a probe now and then.
//
//   headroom  H = log(1 + k·(1-u)) / log(1 + k), floored at min_headroom;  k = headroom_scale.
//             We read the seed's "log(剩余利用率)" as the log of the remaining utilization in
//             PERCENT (k = 100): log(30) for a node 70% busy. That is the only reading under which
//             the seed's formula is positive for a working node, and it is what "the log makes the
//             algorithm behave well under high load" means: the curve is flat for a lightly loaded
//             node (50% vs 100% remaining: 0.85 vs 1.0) and falls steeply over the last few percent
//             (5%: 0.39, 1%: 0.15), so nodes near saturation shed traffic fast while idle capacity
//             is not over-rewarded. log(1 + k·r) instead of log(k·r) keeps the curve ≥ 0 and
//             continuous down to r = 0 instead of diving to -inf below 1%; dividing by log(1 + k)
//             makes H ∈ [0,1] so the weight keeps the unit of capacity. A full node (u ≥ 1) gets
//             H = min_headroom (default 1%): a small positive floor, so it is still probed and its
//             next report can bring it back.
//
//   per-request share  S = u / c, clamped to [min_share, max_share].
//             How much of the node one in-flight request keeps busy. Under the seed's assumption
//             that concurrent requests of one app cost about the same, a node where each request
//             gets a bigger slice of the machine finishes requests faster ("本质上是机器性能的体现");
//             a node whose CPU is being stolen by co-located online work, or throttled, shows a
//             small share. With c < idle_below_concurrency or u < min_measured_utilization there
//             is no measurement (an idle node, or one whose utilization sample lags its first
//             requests): S = prior_share. RecomputeWeights sets prior_share to the median share of
//             the measured nodes in the table (when prior_from_fleet), so a new node starts like a
//             typical node of its capacity with full headroom: preferred, but not flooded.
//
//   weight = C × H × S, clamped to [min_weight, max_weight].
//
// Monotonicity (each with the other two factors held fixed; all non-decreasing, strictly inside
// the clamps): more capacity → more weight; more remaining utilization at the same per-request
// share → more weight; a larger per-request share (the node does more per unit of concurrency) →
// more weight. At a fixed concurrency, utilization moves H and S in opposite directions; with
// k = 100 the weight rises with utilization up to ~77% and then falls to the floor at 100% —
// the seed's intent: a busy, fast node is good until it runs out of room.
//
// Bad reports (the router never asserts on them; they are counted in WeightTableStats::invalid,
// for a "bug: log + metric" path):
//   utilization NaN/±inf   → load unknown: treated as full (H floor) with the prior share, so the
//                            node is probed but gets no real traffic until it reports sanely.
//   utilization < 0 or > 1 → clamped to [0, 1] (counted invalid).
//   concurrency NaN/< 0    → treated as 0 (idle, prior share). +inf → share floor.
//   capacity NaN/≤ 0       → min_capacity. +inf → max_capacity.
//
// Thread safety: everything here is a pure function of its arguments.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "base/status.h"

namespace chorus::compute {

// One node's load as last reported (node agent heartbeat → resource server → router).
struct NodeLoad {
  double capacity = 0;     // cores, or Σ cards × performance coefficient (NodeCapacity)
  double utilization = 0;  // busy fraction of that capacity, nominally [0, 1]
  double concurrency = 0;  // requests in flight (an average over the report window is fine)
};

struct WeightOptions {
  // Headroom: H = log1p(k·remaining) / log1p(k); k = 100 reads remaining utilization in percent.
  double headroom_scale = 100;
  double min_headroom = 0.01;  // floor of H: a full node keeps 1% of its headroom factor
  // Per-request share S = utilization / concurrency.
  double idle_below_concurrency = 0.5;     // fewer in flight: no measurement, use prior_share
  double min_measured_utilization = 0.01;  // below: utilization sample not meaningful yet
  double prior_share = 0.1;                // share assumed for unmeasured nodes (see prior_from_fleet)
  double min_share = 1e-3;
  double max_share = 1.0;
  // RecomputeWeights only: replace prior_share by the median share of the measured nodes of the
  // table (if there are any), clamped to [min_share, max_share].
  bool prior_from_fleet = true;
  // Capacity and final clamps.
  double min_capacity = 1e-3;
  double max_capacity = 1e6;
  double min_weight = 1e-9;
  double max_weight = 1e9;

  // All bounds positive and finite, min ≤ max, headroom_scale > 0, min_headroom ≤ 1.
  // DynamicWeight still returns a positive finite value for options that fail this check, but
  // which value is then unspecified.
  [[nodiscard]] Status Validate() const;
};

// Capacity of a node: GPU nodes are measured in cards × performance coefficient (a T4 is 1.0,
// an A10 1.6, ...), CPU-only nodes in cores. Negative/NaN inputs count as 0.
double NodeCapacity(double cpu_cores, double gpu_cards, double card_perf);

// The routing weight of one node: positive and finite for every input (see the header comment).
double DynamicWeight(const NodeLoad& load, const WeightOptions& options = {});

struct WeightTableStats {
  size_t idle = 0;         // nodes without a measured share (prior used)
  size_t full = 0;         // nodes at the headroom floor
  size_t invalid = 0;      // nodes with a NaN/out-of-range field in their report
  double prior_share = 0;  // the prior actually used
};

// Weights for a whole table, out[i] for loads[i]. With options.prior_from_fleet the idle prior is
// the median measured share of this table (O(n) selection), otherwise options.prior_share.
std::vector<double> RecomputeWeights(std::span<const NodeLoad> loads, const WeightOptions& options = {},
                                     WeightTableStats* stats = nullptr);

}  // namespace chorus::compute
