#include "compute/lb_weight.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace chorus::compute {
namespace {

constexpr double kNan = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

bool PositiveFinite(double w) { return std::isfinite(w) && w > 0; }

double Headroom(double remaining) { return std::log1p(100 * remaining) / std::log1p(100.0); }

TEST(DynamicWeightTest, FollowsTheSeedFormulaForANormalNode) {
  // 8 cores, 50% busy, 4 requests in flight: 8 × log(1 + 50)/log(101) × (0.5 / 4).
  const double w = DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = 4});
  EXPECT_DOUBLE_EQ(w, 8 * Headroom(0.5) * 0.125);
  // A GPU node: two A10 cards with coefficient 1.6.
  const double gpu =
      DynamicWeight({.capacity = NodeCapacity(32, 2, 1.6), .utilization = 0.2, .concurrency = 1});
  EXPECT_DOUBLE_EQ(gpu, 3.2 * Headroom(0.8) * 0.2);
}

TEST(DynamicWeightTest, HeadroomReadsRemainingUtilizationInPercent) {
  // log(remaining %) for a node that is not nearly full: log1p(30)/log1p(100) ≈ log(30)/log(100).
  EXPECT_NEAR(Headroom(0.3), std::log(30) / std::log(100), 0.02);
  // The curve is flat when idle and steep when nearly full.
  EXPECT_GT(Headroom(0.5), 0.85);
  EXPECT_LT(Headroom(0.01), 0.16);
}

TEST(DynamicWeightTest, MoreCapacityMeansMoreWeight) {
  double last = 0;
  for (double cap : {0.5, 1.0, 2.0, 8.0, 64.0, 1000.0}) {
    const double w = DynamicWeight({.capacity = cap, .utilization = 0.4, .concurrency = 2});
    EXPECT_GT(w, last) << cap;
    last = w;
  }
  // Proportional: the factors multiply.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 16, .utilization = 0.4, .concurrency = 2}),
                   2 * DynamicWeight({.capacity = 8, .utilization = 0.4, .concurrency = 2}));
}

TEST(DynamicWeightTest, MoreRemainingMeansMoreWeightAtTheSameShare) {
  // Per-request share fixed at 0.1: utilization and concurrency move together.
  double last = std::numeric_limits<double>::infinity();
  for (double u = 0.1; u <= 1.0001; u += 0.1) {
    const double w = DynamicWeight({.capacity = 8, .utilization = u, .concurrency = u / 0.1});
    EXPECT_LT(w, last) << u;
    EXPECT_TRUE(PositiveFinite(w)) << u;
    last = w;
  }
}

TEST(DynamicWeightTest, MoreWorkPerRequestMeansMoreWeight) {
  // Same utilization, fewer requests to produce it: each request gets more of the machine.
  double last = std::numeric_limits<double>::infinity();
  for (double c : {1.0, 2.0, 4.0, 8.0, 32.0}) {
    const double w = DynamicWeight({.capacity = 8, .utilization = 0.6, .concurrency = c});
    EXPECT_LT(w, last) << c;
    last = w;
  }
}

TEST(DynamicWeightTest, AtFixedConcurrencyWeightPeaksBeforeFull) {
  // u × headroom(1−u) rises to ~77% utilization, then falls to the floor.
  const auto at = [](double u) { return DynamicWeight({.capacity = 8, .utilization = u, .concurrency = 4}); };
  EXPECT_LT(at(0.3), at(0.6));
  EXPECT_LT(at(0.6), at(0.77));
  EXPECT_GT(at(0.77), at(0.95));
  EXPECT_GT(at(0.95), at(1.0));
}

TEST(DynamicWeightTest, IdleNodeUsesThePriorShare) {
  WeightOptions o;
  o.prior_share = 0.25;
  // No requests yet (0/0 in the raw formula): capacity × full headroom × prior.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 4, .utilization = 0, .concurrency = 0}, o), 4 * 0.25);
  // Busy with other work but none of ours: headroom counts, share is the prior.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 4, .utilization = 0.5, .concurrency = 0}, o),
                   4 * Headroom(0.5) * 0.25);
  // Requests started but the utilization sample lags behind: still no measurement.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 4, .utilization = 0, .concurrency = 3}, o), 4 * 0.25);
  // Below the concurrency threshold.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 4, .utilization = 0.3, .concurrency = 0.2}, o),
                   4 * Headroom(0.7) * 0.25);
  // An idle node outweighs the same node fully measured at a smaller share.
  EXPECT_GT(DynamicWeight({.capacity = 4, .utilization = 0, .concurrency = 0}, o),
            DynamicWeight({.capacity = 4, .utilization = 0.5, .concurrency = 4}, o));
}

TEST(DynamicWeightTest, FullNodeGetsASmallPositiveFloor) {
  const NodeLoad full = {.capacity = 8, .utilization = 1, .concurrency = 4};
  const double w = DynamicWeight(full);
  EXPECT_TRUE(PositiveFinite(w));
  EXPECT_DOUBLE_EQ(w, 8 * 0.01 * 0.25);
  // Well below a node with a little room left, far below a healthy one.
  EXPECT_LT(w, DynamicWeight({.capacity = 8, .utilization = 0.97, .concurrency = 4}));
  EXPECT_LT(w * 50, DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = 2}));
}

TEST(DynamicWeightTest, ZeroCapacityIsTinyButPositive) {
  const double zero = DynamicWeight({.capacity = 0, .utilization = 0.2, .concurrency = 1});
  EXPECT_TRUE(PositiveFinite(zero));
  EXPECT_LT(zero * 100, DynamicWeight({.capacity = 1, .utilization = 0.9, .concurrency = 8}));
}

TEST(DynamicWeightTest, BrokenReportsStayPositiveAndFinite) {
  const NodeLoad sane = {.capacity = 8, .utilization = 0.5, .concurrency = 4};
  // Utilization over 1 is clamped to 1 (full); negative to 0.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 8, .utilization = 1.7, .concurrency = 4}),
                   DynamicWeight({.capacity = 8, .utilization = 1.0, .concurrency = 4}));
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 8, .utilization = -0.5, .concurrency = 4}),
                   DynamicWeight({.capacity = 8, .utilization = 0, .concurrency = 4}));
  // NaN utilization: unknown load → probe floor with the prior.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 8, .utilization = kNan, .concurrency = 4}), 8 * 0.01 * 0.1);
  // Negative or NaN concurrency: idle.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = -3}),
                   DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = 0}));
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = kNan}),
                   DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = 0}));
  // Negative / NaN capacity: like zero.
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = -8, .utilization = 0.5, .concurrency = 4}),
                   DynamicWeight({.capacity = 0, .utilization = 0.5, .concurrency = 4}));
  EXPECT_DOUBLE_EQ(DynamicWeight({.capacity = kNan, .utilization = 0.5, .concurrency = 4}),
                   DynamicWeight({.capacity = 0, .utilization = 0.5, .concurrency = 4}));
  // Infinities.
  EXPECT_TRUE(PositiveFinite(DynamicWeight({.capacity = kInf, .utilization = 0.5, .concurrency = 4})));
  EXPECT_TRUE(PositiveFinite(DynamicWeight({.capacity = 8, .utilization = kInf, .concurrency = 4})));
  EXPECT_TRUE(PositiveFinite(DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = kInf})));
  EXPECT_TRUE(PositiveFinite(DynamicWeight(sane)));
}

TEST(DynamicWeightTest, AnyInputGivesAWeightWithinTheClamps) {
  const std::vector<double> specials = {0,     -0.0,   1,    -1,   0.5,   1e-300,    -1e-300,
                                        1e300, -1e300, kNan, kInf, -kInf, 1.0000001, 0.9999999};
  std::mt19937_64 rng(9);
  std::uniform_int_distribution<size_t> pick(0, specials.size() - 1);
  const WeightOptions o;
  for (int i = 0; i < 20'000; ++i) {
    auto draw = [&] {
      return rng() % 2 ? specials[pick(rng)] : std::uniform_real_distribution<double>(-2, 40)(rng);
    };
    const NodeLoad load = {.capacity = draw(), .utilization = draw(), .concurrency = draw()};
    const double w = DynamicWeight(load, o);
    ASSERT_TRUE(PositiveFinite(w)) << load.capacity << " " << load.utilization << " " << load.concurrency;
    ASSERT_GE(w, o.min_weight);
    ASSERT_LE(w, o.max_weight);
  }
}

TEST(DynamicWeightTest, BadOptionsAreReportedAndStillGiveAPositiveWeight) {
  EXPECT_TRUE(WeightOptions{}.Validate().ok());
  WeightOptions bad;
  bad.min_headroom = 0;
  EXPECT_EQ(bad.Validate().code(), StatusCode::kInvalidArgument);
  bad = {};
  bad.min_share = 2;  // > max_share
  EXPECT_FALSE(bad.Validate().ok());
  bad = {};
  bad.headroom_scale = kNan;
  EXPECT_FALSE(bad.Validate().ok());
  bad = {};
  bad.min_weight = -1;
  EXPECT_FALSE(bad.Validate().ok());

  WeightOptions garbage;
  garbage.headroom_scale = kNan;
  garbage.min_headroom = kNan;
  garbage.min_share = garbage.max_share = garbage.prior_share = kNan;
  garbage.min_capacity = garbage.max_capacity = kNan;
  garbage.min_weight = garbage.max_weight = kNan;
  EXPECT_TRUE(PositiveFinite(DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = 4}, garbage)));
  garbage.min_weight = garbage.max_weight = 0;
  EXPECT_TRUE(PositiveFinite(DynamicWeight({.capacity = 8, .utilization = 0.5, .concurrency = 4}, garbage)));
}

TEST(NodeCapacityTest, CardsTimesPerformanceElseCores) {
  EXPECT_DOUBLE_EQ(NodeCapacity(16, 0, 1.0), 16);
  EXPECT_DOUBLE_EQ(NodeCapacity(16, 2, 1.6), 3.2);
  EXPECT_DOUBLE_EQ(NodeCapacity(-4, 0, 0), 0);
  EXPECT_DOUBLE_EQ(NodeCapacity(kNan, kNan, 1), 0);
  EXPECT_DOUBLE_EQ(NodeCapacity(8, 2, kNan), 0);  // a GPU node with an unknown card: no capacity
}

TEST(RecomputeWeightsTest, OneWeightPerNodeWithTheFleetPrior) {
  // Measured shares 0.05, 0.1, 0.2 → median 0.1; node 3 is idle, node 4 broken (and so idle).
  const std::vector<NodeLoad> loads = {
      {.capacity = 8, .utilization = 0.2, .concurrency = 4},
      {.capacity = 8, .utilization = 0.5, .concurrency = 5},
      {.capacity = 8, .utilization = 0.8, .concurrency = 4},
      {.capacity = 4, .utilization = 0, .concurrency = 0},
      {.capacity = kNan, .utilization = 1.0, .concurrency = kNan},
  };
  WeightOptions o;
  o.prior_share = 0.9;  // ignored: the fleet's median wins
  WeightTableStats stats;
  const std::vector<double> w = RecomputeWeights(loads, o, &stats);
  ASSERT_EQ(w.size(), loads.size());
  EXPECT_DOUBLE_EQ(stats.prior_share, 0.1);
  EXPECT_EQ(stats.idle, 2u);
  EXPECT_EQ(stats.full, 1u);
  EXPECT_EQ(stats.invalid, 1u);
  o.prior_share = 0.1;
  for (size_t i = 0; i < loads.size(); ++i) EXPECT_DOUBLE_EQ(w[i], DynamicWeight(loads[i], o)) << i;
  EXPECT_DOUBLE_EQ(w[3], 4 * 0.1);

  // Without the fleet prior, the configured one.
  o.prior_share = 0.3;
  o.prior_from_fleet = false;
  EXPECT_DOUBLE_EQ(RecomputeWeights(loads, o, &stats)[3], 4 * 0.3);
  EXPECT_DOUBLE_EQ(stats.prior_share, 0.3);
}

TEST(RecomputeWeightsTest, EmptyAndAllIdleTables) {
  EXPECT_TRUE(RecomputeWeights({}).empty());
  const std::vector<NodeLoad> idle(3, NodeLoad{.capacity = 2, .utilization = 0, .concurrency = 0});
  WeightTableStats stats;
  const std::vector<double> w = RecomputeWeights(idle, {}, &stats);
  EXPECT_EQ(stats.idle, 3u);
  EXPECT_DOUBLE_EQ(stats.prior_share, WeightOptions{}.prior_share);
  for (double x : w) EXPECT_DOUBLE_EQ(x, 2 * 0.1);
}

}  // namespace
}  // namespace chorus::compute
