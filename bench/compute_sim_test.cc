#include "compute_sim.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace chorus::bench {
namespace {

constexpr uint64_t kFirstIncarnation = 1'700'000'000'000'000;

SimTableOptions Options(int nodes, int slots = 2, int64_t cpu = 1000, int64_t memory = 1024) {
  SimTableOptions o;
  o.nodes = nodes;
  o.capacity.slots = slots;
  o.capacity.cpu_millis = cpu;
  o.capacity.memory_mb = memory;
  o.first_incarnation = kFirstIncarnation;
  return o;
}

// A claim for node i as a scheduler that saw `status` would send it.
cpb::ClaimRequest ClaimFor(const cpb::NodeStatus& status, const std::string& replica,
                           const std::string& app = "ocr", int64_t cpu = 100, int64_t memory = 10) {
  cpb::ClaimRequest c;
  c.set_node_id(status.node_id());
  c.set_incarnation(status.incarnation());
  c.set_expected_version(status.version());
  c.set_app(app);
  c.set_replica_id(replica);
  c.mutable_resources()->set_cpu_millis(cpu);
  c.mutable_resources()->set_memory_mb(memory);
  c.set_max_concurrency(1);
  c.mutable_engine()->set_engine("synthetic");
  c.set_scheduler_id("s1");
  c.set_app_generation(7);
  return c;
}

class SimNodeTableTest : public ::testing::Test {
 protected:
  SimulatedClock clock_;
};

TEST_F(SimNodeTableTest, NodesHaveDistinctIdsAndIncarnations) {
  SimNodeTable table(Options(3), clock_);
  table.SetAddress("127.0.0.1:5555");
  ASSERT_EQ(table.size(), 3u);
  EXPECT_EQ(table.node_id(0), "sim-00000");
  EXPECT_EQ(table.node_id(2), "sim-00002");
  EXPECT_EQ(table.Find("sim-00001").value_or(99), 1u);
  EXPECT_FALSE(table.Find("sim-00003").has_value());
  std::set<uint64_t> incarnations;
  for (size_t i = 0; i < table.size(); ++i) incarnations.insert(table.incarnation(i));
  EXPECT_EQ(incarnations.size(), 3u);
  const cpb::NodeStatus s = table.Status(1);
  EXPECT_EQ(s.address(), "127.0.0.1:5555");
  EXPECT_EQ(s.version(), 1u);
  EXPECT_EQ(s.capacity().slots(), 2);
  EXPECT_EQ(s.capacity().cpu_millis(), 1000);
  EXPECT_FALSE(s.draining());
}

TEST_F(SimNodeTableTest, AcceptedClaimAddsARunningReplicaBumpsTheVersionAndNotifies) {
  SimNodeTable table(Options(2), clock_);
  std::vector<size_t> changed;
  table.SetChangeListener([&](size_t i) { changed.push_back(i); });
  const SimAnswer a = table.Claim(ClaimFor(table.Status(1), "ocr-1"));
  ASSERT_EQ(a.code, SimCode::kOk) << a.message;
  ASSERT_TRUE(a.node.has_value());
  EXPECT_EQ(a.node->version(), 2u);
  ASSERT_EQ(a.node->replicas_size(), 1);
  EXPECT_EQ(a.node->replicas(0).replica_id(), "ocr-1");
  EXPECT_EQ(a.node->replicas(0).state(), cpb::REPLICA_RUNNING);
  EXPECT_EQ(a.node->replicas(0).app_generation(), 7u);
  EXPECT_EQ(a.node->allocated().cpu_millis(), 100);
  EXPECT_EQ(table.version(1), 2u);
  EXPECT_EQ(changed, std::vector<size_t>{1});
  EXPECT_EQ(table.Serving("ocr"), 1);
  EXPECT_EQ(table.Replicas(1, "ocr"), 1);
  EXPECT_EQ(table.counters().accepted, 1u);
}

TEST_F(SimNodeTableTest, OfTwoClaimsOnTheSameVersionExactlyOneWinsTheOtherIsAbortedWithTheCurrentStatus) {
  SimNodeTable table(Options(1), clock_);
  const cpb::NodeStatus seen = table.Status(0);
  const SimAnswer first = table.Claim(ClaimFor(seen, "ocr-a"));
  const SimAnswer second = table.Claim(ClaimFor(seen, "ocr-b"));
  EXPECT_EQ(first.code, SimCode::kOk);
  EXPECT_EQ(second.code, SimCode::kAborted);
  ASSERT_TRUE(second.node.has_value());  // the trailer: what the loser should know
  EXPECT_EQ(second.node->version(), 2u);
  EXPECT_EQ(second.node->replicas_size(), 1);
  // Retrying with the version from the trailer succeeds.
  EXPECT_EQ(table.Claim(ClaimFor(*second.node, "ocr-b")).code, SimCode::kOk);
  const SimCounters c = table.counters();
  EXPECT_EQ(c.claims, 3u);
  EXPECT_EQ(c.accepted, 2u);
  EXPECT_EQ(c.aborted, 1u);
}

TEST_F(SimNodeTableTest, RefusesWrongNodeIncarnationAndDrainingAsFailedPrecondition) {
  SimNodeTable table(Options(2), clock_);
  cpb::ClaimRequest unknown = ClaimFor(table.Status(0), "ocr-1");
  unknown.set_node_id("elsewhere");
  const SimAnswer a = table.Claim(unknown);
  EXPECT_EQ(a.code, SimCode::kFailedPrecondition);
  EXPECT_FALSE(a.node.has_value());

  cpb::ClaimRequest old = ClaimFor(table.Status(0), "ocr-1");
  old.set_incarnation(old.incarnation() - 1);
  const SimAnswer b = table.Claim(old);
  EXPECT_EQ(b.code, SimCode::kFailedPrecondition);
  ASSERT_TRUE(b.node.has_value());
  EXPECT_EQ(b.node->incarnation(), table.incarnation(0));

  ASSERT_TRUE(table.Drain(0));
  EXPECT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1")).code, SimCode::kFailedPrecondition);
  EXPECT_EQ(table.counters().failed_precondition, 3u);
  EXPECT_EQ(table.counters().accepted, 0u);
}

TEST_F(SimNodeTableTest, RefusesWhatDoesNotFitAsResourceExhausted) {
  SimNodeTable table(Options(1, /*slots=*/2, /*cpu=*/300, /*memory=*/100), clock_);
  EXPECT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1", "ocr", 400, 10)).code,
            SimCode::kResourceExhausted);
  EXPECT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1", "ocr", 10, 101)).code,
            SimCode::kResourceExhausted);
  cpb::ClaimRequest gpu = ClaimFor(table.Status(0), "ocr-1");
  gpu.mutable_resources()->set_gpus(1);
  EXPECT_EQ(table.Claim(gpu).code, SimCode::kResourceExhausted);
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1", "ocr", 200, 10)).code, SimCode::kOk);
  EXPECT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-2", "ocr", 200, 10)).code,
            SimCode::kResourceExhausted);
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-2", "ocr", 100, 10)).code, SimCode::kOk);
  // Both slots taken: even the smallest claim no longer fits.
  EXPECT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-3", "ocr", 1, 1)).code, SimCode::kResourceExhausted);
  EXPECT_EQ(table.counters().exhausted, 5u);
  EXPECT_EQ(table.OvercommittedNodes(), 0u);
}

TEST_F(SimNodeTableTest, RefusesMalformedClaimsAndDuplicateReplicaIds) {
  SimNodeTable table(Options(1, 4), clock_);
  cpb::ClaimRequest bad = ClaimFor(table.Status(0), "ocr-1");
  bad.set_app("no spaces");
  EXPECT_EQ(table.Claim(bad).code, SimCode::kInvalidArgument);
  bad = ClaimFor(table.Status(0), "ocr-1");
  bad.mutable_resources()->set_cpu_millis(0);
  EXPECT_EQ(table.Claim(bad).code, SimCode::kInvalidArgument);
  bad = ClaimFor(table.Status(0), "ocr-1");
  bad.mutable_engine()->set_engine("docker");
  EXPECT_EQ(table.Claim(bad).code, SimCode::kInvalidArgument);
  bad = ClaimFor(table.Status(0), "");
  EXPECT_EQ(table.Claim(bad).code, SimCode::kInvalidArgument);

  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1")).code, SimCode::kOk);
  EXPECT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1")).code, SimCode::kAlreadyExists);
  EXPECT_EQ(table.version(0), 2u);  // refusals never move the version
}

TEST_F(SimNodeTableTest, ReleaseRemovesTheReplicaAndBumpsTheVersion) {
  SimNodeTable table(Options(1), clock_);
  int notified = 0;
  table.SetChangeListener([&](size_t) { ++notified; });
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1")).code, SimCode::kOk);
  cpb::ReleaseRequest r;
  r.set_node_id(table.node_id(0));
  r.set_replica_id("ocr-1");
  const SimAnswer a = table.Release(r);
  ASSERT_EQ(a.code, SimCode::kOk);
  ASSERT_TRUE(a.node.has_value());
  EXPECT_EQ(a.node->version(), 3u);
  EXPECT_EQ(a.node->replicas_size(), 0);
  EXPECT_EQ(a.node->allocated().cpu_millis(), 0);
  EXPECT_EQ(table.Serving("ocr"), 0);
  EXPECT_EQ(notified, 2);
  EXPECT_EQ(table.Release(r).code, SimCode::kNotFound);
  EXPECT_EQ(table.counters().releases, 2u);
  EXPECT_EQ(table.counters().released, 1u);
  EXPECT_EQ(table.counters().releases_not_found, 1u);
}

TEST_F(SimNodeTableTest, DrainBumpsTheVersionOnceAndStopsCountingItsReplicas) {
  SimNodeTable table(Options(2), clock_);
  int notified = 0;
  table.SetChangeListener([&](size_t) { ++notified; });
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1")).code, SimCode::kOk);
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(1), "ocr-2")).code, SimCode::kOk);
  EXPECT_EQ(table.Serving("ocr"), 2);
  ASSERT_TRUE(table.Drain(0));
  EXPECT_TRUE(table.draining(0));
  EXPECT_TRUE(table.Status(0).draining());
  EXPECT_EQ(table.version(0), 3u);
  EXPECT_EQ(table.Serving("ocr"), 1);
  EXPECT_EQ(notified, 3);  // two claims, one drain: the heartbeat goes out at once
  EXPECT_FALSE(table.Drain(0));
  EXPECT_EQ(table.version(0), 3u);
  // Releasing a draining node's replica does not count it twice.
  cpb::ReleaseRequest r;
  r.set_node_id(table.node_id(0));
  r.set_replica_id("ocr-1");
  ASSERT_EQ(table.Release(r).code, SimCode::kOk);
  EXPECT_EQ(table.Serving("ocr"), 1);
}

TEST_F(SimNodeTableTest, AKilledNodeRefusesEverythingAsUnavailableAndIsNotAnnounced) {
  SimNodeTable table(Options(2, 4), clock_);
  int notified = 0;
  table.SetChangeListener([&](size_t) { ++notified; });
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-1")).code, SimCode::kOk);
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "ocr-2")).code, SimCode::kOk);
  const cpb::NodeStatus before = table.Status(0);
  EXPECT_EQ(table.Kill(0), 2);
  EXPECT_EQ(notified, 2);  // no heartbeat from a dead node
  EXPECT_TRUE(table.dead(0));
  EXPECT_EQ(table.Serving("ocr"), 0);
  const SimAnswer a = table.Claim(ClaimFor(before, "ocr-3"));
  EXPECT_EQ(a.code, SimCode::kUnavailable);
  EXPECT_FALSE(a.node.has_value());
  cpb::ReleaseRequest r;
  r.set_node_id(table.node_id(0));
  r.set_replica_id("ocr-1");
  EXPECT_EQ(table.Release(r).code, SimCode::kUnavailable);
  EXPECT_EQ(table.Kill(0), -1);
  EXPECT_FALSE(table.Drain(0));
  EXPECT_EQ(table.counters().unavailable, 1u);
}

TEST_F(SimNodeTableTest, AcceptedClaimsAreTimedPerApp) {
  SimNodeTable table(Options(1, 8), clock_);
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "a-1", "a")).code, SimCode::kOk);
  clock_.Advance(std::chrono::milliseconds(10));
  const SteadyTime since = clock_.Now();
  clock_.Advance(std::chrono::milliseconds(5));
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "b-1", "b")).code, SimCode::kOk);
  const SteadyTime first_a = clock_.Now() + std::chrono::milliseconds(20);
  clock_.Advance(std::chrono::milliseconds(20));
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "a-2", "a")).code, SimCode::kOk);
  clock_.Advance(std::chrono::milliseconds(20));
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "a-3", "a")).code, SimCode::kOk);

  EXPECT_EQ(table.AcceptedSince("a", since), 2u);
  EXPECT_EQ(table.AcceptedSince("b", since), 1u);
  EXPECT_EQ(table.WaitAccepted("a", since, 1, clock_.Now()), first_a);
  EXPECT_EQ(table.WaitAccepted("a", since, 2, clock_.Now()), first_a + std::chrono::milliseconds(20));
  // Not there yet: waits until the (already passed) deadline and gives up.
  EXPECT_FALSE(table.WaitAccepted("a", since, 3, SteadyTime{}).has_value());
  EXPECT_EQ(table.PeakServing("a"), 3);
  EXPECT_EQ(table.LastChange(), clock_.Now());
}

TEST_F(SimNodeTableTest, AClaimOfSeveralReplicasIsAllOrNoneAndCountsEachReplica) {
  SimNodeTable table(Options(1, 4), clock_);
  std::vector<size_t> changed;
  table.SetChangeListener([&](size_t i) { changed.push_back(i); });
  cpb::ClaimRequest three = ClaimFor(table.Status(0), "ocr-1");
  three.add_more_replica_ids("ocr-2");
  three.add_more_replica_ids("ocr-3");
  const SimAnswer a = table.Claim(three);
  ASSERT_EQ(a.code, SimCode::kOk) << a.message;
  EXPECT_EQ(a.node->version(), 2u) << "one bump for the claim";
  EXPECT_EQ(a.node->replicas_size(), 3);
  EXPECT_EQ(changed, std::vector<size_t>{0});
  EXPECT_EQ(table.Serving("ocr"), 3);
  EXPECT_EQ(table.AcceptedSince("ocr", SteadyTime{}), 3u) << "placements are replicas";
  EXPECT_EQ(table.counters().accepted, 1u);
  EXPECT_EQ(table.counters().accepted_replicas, 3u);

  cpb::ClaimRequest two = ClaimFor(table.Status(0), "ocr-4");  // one slot left
  two.add_more_replica_ids("ocr-5");
  EXPECT_EQ(table.Claim(two).code, SimCode::kResourceExhausted);
  cpb::ClaimRequest dup = ClaimFor(table.Status(0), "ocr-4");
  dup.add_more_replica_ids("ocr-4");
  EXPECT_EQ(table.Claim(dup).code, SimCode::kInvalidArgument);
  cpb::ClaimRequest again = ClaimFor(table.Status(0), "ocr-2");  // already runs
  EXPECT_EQ(table.Claim(again).code, SimCode::kAlreadyExists);
  EXPECT_EQ(table.Replicas(0), 3);
  EXPECT_EQ(table.version(0), 2u);
}

TEST_F(SimNodeTableTest, ServingPeakFollowsTheCountSinceTheLastReset) {
  SimNodeTable table(Options(1, 8), clock_);
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "a-1", "a")).code, SimCode::kOk);
  ASSERT_EQ(table.Claim(ClaimFor(table.Status(0), "a-2", "a")).code, SimCode::kOk);
  cpb::ReleaseRequest r;
  r.set_node_id(table.node_id(0));
  r.set_replica_id("a-2");
  ASSERT_EQ(table.Release(r).code, SimCode::kOk);
  EXPECT_EQ(table.PeakServing("a"), 2);
  table.ResetPeak("a");
  EXPECT_EQ(table.PeakServing("a"), 1);
  EXPECT_EQ(table.WaitServing(
                "a", [](int64_t n) { return n == 1; }, SteadyTime{}),
            clock_.Now());
  EXPECT_FALSE(table
                   .WaitServing(
                       "a", [](int64_t n) { return n == 2; }, SteadyTime{})
                   .has_value());
}

// Racing claimers that each read a node's status and claim it, as optimistic schedulers do:
// whatever the interleaving, no node takes more than its slots and every claim is either
// accepted, refused as stale (ABORTED) or refused as full.
TEST_F(SimNodeTableTest, RacingClaimersNeverOvercommitANode) {
  constexpr int kNodes = 4, kSlots = 3, kThreads = 4, kClaimsPerThread = 200;
  SimNodeTable table(Options(kNodes, kSlots, 100'000, 100'000), clock_);
  std::atomic<int> next{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int k = 0; k < kClaimsPerThread; ++k) {
        const size_t node = static_cast<size_t>((t + k) % kNodes);
        const cpb::NodeStatus seen = table.Status(node);
        (void)table.Claim(ClaimFor(seen, "ocr-" + std::to_string(next.fetch_add(1))));
      }
    });
  }
  for (auto& th : threads) th.join();
  const SimCounters c = table.counters();
  EXPECT_EQ(c.claims, static_cast<uint64_t>(kThreads * kClaimsPerThread));
  EXPECT_EQ(c.accepted, static_cast<uint64_t>(kNodes * kSlots));
  EXPECT_EQ(c.accepted + c.aborted + c.exhausted, c.claims);
  EXPECT_EQ(table.OvercommittedNodes(), 0u);
  EXPECT_EQ(table.Serving("ocr"), kNodes * kSlots);
  for (size_t i = 0; i < kNodes; ++i) {
    EXPECT_EQ(table.Replicas(i), kSlots);
    EXPECT_EQ(table.version(i), 1u + kSlots);
  }
}

}  // namespace
}  // namespace chorus::bench
