#include "compute_lb.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace chorus::bench {
namespace {

using Discipline = LbNodeModel::Discipline;

TEST(LbNodeModelTest, TwiceAsFastFinishesTheSameWorkInHalfTheTime) {
  LbNodeModel slow(4, 1.0), fast(4, 2.0), fastest(4, 4.0);
  slow.Start(1.0, 7, 0.010);
  fast.Start(1.0, 7, 0.010);
  fastest.Start(1.0, 7, 0.010);
  EXPECT_DOUBLE_EQ(slow.NextFinish(), 1.010);
  EXPECT_DOUBLE_EQ(fast.NextFinish(), 1.005);
  EXPECT_DOUBLE_EQ(fastest.NextFinish(), 1.0025);
  EXPECT_EQ(fast.FinishNext(fast.NextFinish()), 7u);
  EXPECT_EQ(fast.in_flight(), 0);
  EXPECT_EQ(fast.NextFinish(), std::numeric_limits<double>::infinity());
}

TEST(LbNodeModelTest, ProcessorSharingSplitsTheCoresOnlyWhenOversubscribed) {
  // 2 requests on 4 cores: each has a core, 1 s each.
  LbNodeModel node(4, 1.0);
  node.Start(0, 1, 1.0);
  node.Start(0, 2, 1.0);
  EXPECT_DOUBLE_EQ(node.NextFinish(), 1.0);
  // 8 requests of 1 s on 4 cores: each runs at half speed, all done at 2 s.
  LbNodeModel full(4, 1.0);
  for (uint64_t j = 0; j < 8; ++j) full.Start(0, j, 1.0);
  for (int i = 0; i < 8; ++i) {
    EXPECT_NEAR(full.NextFinish(), 2.0, 1e-12);
    full.FinishNext(full.NextFinish());
  }
}

TEST(LbNodeModelTest, ProcessorSharingArrivalMidService) {
  // One core: A (1 s) at 0, B (1 s) at 0.5. A has 0.5 left at half speed: done at 1.5; B then has
  // 0.5 left alone: done at 2.0.
  LbNodeModel node(1, 1.0);
  node.Start(0, 1, 1.0);
  node.Start(0.5, 2, 1.0);
  EXPECT_DOUBLE_EQ(node.NextFinish(), 1.5);
  EXPECT_EQ(node.FinishNext(1.5), 1u);
  EXPECT_DOUBLE_EQ(node.NextFinish(), 2.0);
  EXPECT_EQ(node.FinishNext(2.0), 2u);
}

TEST(LbNodeModelTest, FcfsQueuesBehindBusyCores) {
  LbNodeModel node(1, 2.0, Discipline::kFcfs);
  node.Start(0, 1, 1.0);
  node.Start(0, 2, 1.0);
  EXPECT_EQ(node.in_flight(), 2);
  EXPECT_DOUBLE_EQ(node.NextFinish(), 0.5);  // the first alone at 2x
  EXPECT_EQ(node.FinishNext(0.5), 1u);
  EXPECT_DOUBLE_EQ(node.NextFinish(), 1.0);  // the second starts only now
  EXPECT_EQ(node.FinishNext(1.0), 2u);
}

TEST(LbNodeModelTest, SlowdownStretchesTheRemainingWork) {
  // 1 s of work at 1x; at 0.5 s the node is slowed 4x: the remaining 0.5 takes 2 s more.
  LbNodeModel node(2, 1.0);
  node.Start(0, 1, 1.0);
  node.SetSlowdown(0.5, 4.0);
  EXPECT_DOUBLE_EQ(node.speed(), 0.25);
  EXPECT_DOUBLE_EQ(node.NextFinish(), 2.5);
  // Speed back at 1.5 s: 0.25 done during the slowdown, 0.25 left at 1x.
  node.SetSlowdown(1.5, 1.0);
  EXPECT_DOUBLE_EQ(node.NextFinish(), 1.75);
}

TEST(LbNodeModelTest, UtilizationCountsBusyCoresNotWork) {
  LbNodeModel node(4, 2.0);
  // 2 requests of 1 core-second each at 2x: 0.5 s on 2 of 4 cores.
  node.Start(0, 1, 1.0);
  node.Start(0, 2, 1.0);
  node.FinishNext(node.NextFinish());
  node.FinishNext(node.NextFinish());
  EXPECT_DOUBLE_EQ(node.BusyCoreSeconds(1.0), 1.0);  // 2 cores x 0.5 s; utilization 1/4 over 1 s
  EXPECT_DOUBLE_EQ(node.InFlightSeconds(1.0), 1.0);
  // 8 requests on 4 cores: every core busy, in flight 8, until 1 s later (each at 1x of 2x).
  for (uint64_t j = 0; j < 8; ++j) node.Start(1.0, j, 2.0);
  EXPECT_NEAR(node.NextFinish(), 3.0, 1e-12);
  EXPECT_DOUBLE_EQ(node.BusyCoreSeconds(2.0), 1.0 + 4.0);
  EXPECT_DOUBLE_EQ(node.InFlightSeconds(2.0), 1.0 + 8.0);
  // A slowdown makes each request stay longer but adds no busy cores.
  node.SetSlowdown(2.0, 10.0);
  EXPECT_DOUBLE_EQ(node.BusyCoreSeconds(3.0), 5.0 + 4.0);
  EXPECT_EQ(node.in_flight(), 8);
}

TEST(ComputeLbTest, ParseNumberRange) {
  auto one = ParseNumberRange("5");
  ASSERT_TRUE(one.ok());
  EXPECT_EQ(*one, (std::pair<double, double>{5, 5}));
  auto range = ParseNumberRange("3-10");
  ASSERT_TRUE(range.ok());
  EXPECT_EQ(*range, (std::pair<double, double>{3, 10}));
  EXPECT_FALSE(ParseNumberRange("10-3").ok());
  EXPECT_FALSE(ParseNumberRange("x").ok());
  EXPECT_FALSE(ParseNumberRange("-3").ok());
}

// A short virtual-time run through the real router: what each policy does with a 1x/4x fleet.
ComputeLbOptions SmallFleet() {
  ComputeLbOptions o;
  o.nodes = 4;
  o.speeds = {1, 4};
  o.cores = {2};
  o.load = 0.5;
  o.slowdown_rate = 0;
  o.warmup = std::chrono::seconds(6);
  o.duration = std::chrono::seconds(10);
  o.drain = std::chrono::seconds(30);
  return o;
}

double Share(const LbPolicyResult& r, const std::string& label) {
  for (const LbClassStats& c : r.classes) {
    if (c.label == label) return c.request_share;
  }
  return -1;
}

TEST(ComputeLbTest, StaticSplitsByCoresWhileLoadAwarePoliciesFavourFastNodes) {
  const ComputeLbOptions o = SmallFleet();
  auto fixed = RunComputeLbPolicy(o, "static");
  auto p2c = RunComputeLbPolicy(o, "p2c");
  auto dynamic = RunComputeLbPolicy(o, "dynamic");
  ASSERT_TRUE(fixed.ok() && p2c.ok() && dynamic.ok());
  for (const LbPolicyResult* r : {&*fixed, &*p2c, &*dynamic}) {
    SCOPED_TRACE(r->policy);
    EXPECT_GT(r->requests, 9'000u);  // 0.5 x 2 cores x (1+4+1+4) / 10 ms = 1,000/s for 10 s
    EXPECT_EQ(r->failures, 0u);
    EXPECT_EQ(r->completed + r->unfinished, r->requests);
    EXPECT_EQ(r->latency.Count(), r->requests);
    EXPECT_GT(r->util_mean, 0.2);
  }
  // Equal cores: static SWRR sends half to the 1x nodes, 250/s each against a capacity of 200/s:
  // they fall behind without bound.
  EXPECT_NEAR(Share(*fixed, "2c 1x"), 0.5, 0.01);
  EXPECT_GT(fixed->unfinished, 0u);
  EXPECT_GT(fixed->util_range, 0.5);
  // P2C and the dynamic weights see the 1x nodes' queues and send them less (their fair share by
  // capacity is 20%).
  EXPECT_LT(Share(*p2c, "2c 1x"), 0.4);
  EXPECT_LT(Share(*dynamic, "2c 1x"), 0.4);
  EXPECT_EQ(p2c->unfinished, 0u);
  EXPECT_EQ(dynamic->unfinished, 0u);
  EXPECT_LT(p2c->latency.Percentile(99), fixed->latency.Percentile(99));
  EXPECT_LT(dynamic->latency.Percentile(99), fixed->latency.Percentile(99));
}

TEST(ComputeLbTest, SameSeedSameRun) {
  ComputeLbOptions o = SmallFleet();
  o.slowdown_rate = 6;
  o.duration = std::chrono::seconds(4);
  auto a = RunComputeLbPolicy(o, "dynamic");
  auto b = RunComputeLbPolicy(o, "dynamic");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->requests, b->requests);
  EXPECT_EQ(a->latency.Percentile(99), b->latency.Percentile(99));
  EXPECT_EQ(a->latency.Max(), b->latency.Max());
  o.seed = 2;
  auto c = RunComputeLbPolicy(o, "dynamic");
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->latency.Max(), c->latency.Max());
}

TEST(ComputeLbTest, RefusalsAreRetriedElsewhere) {
  ComputeLbOptions o = SmallFleet();
  o.max_in_flight = 3;
  o.duration = std::chrono::seconds(4);
  auto r = RunComputeLbPolicy(o, "static");
  ASSERT_TRUE(r.ok());
  EXPECT_GT(r->retries, 0u);  // the 1x nodes are full most of the time
  EXPECT_EQ(r->completed + r->failures + r->unfinished, r->requests);
}

TEST(ComputeLbTest, ValidateRejectsNonsense) {
  ComputeLbOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.policies = {"round-robin"};
  EXPECT_FALSE(o.Validate().ok());
  o = ComputeLbOptions();
  o.speeds = {};
  EXPECT_FALSE(o.Validate().ok());
  o = ComputeLbOptions();
  o.slowdown_factor_min = 0.5;
  EXPECT_FALSE(o.Validate().ok());
}

}  // namespace
}  // namespace chorus::bench
