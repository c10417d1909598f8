#include "compute/scheduler_core.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/random.h"

namespace chorus::compute {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

struct NodeSpec {
  int64_t cpu = 4000;
  int64_t mem = 8192;
  int slots = 4;
  std::string pool;
  std::string cluster = "default";
  std::vector<std::pair<std::string, int>> gpus;
  bool draining = false;
  bool online = true;
};

pb::NodeStatus MakeNode(const std::string& id, const NodeSpec& spec = {}, uint64_t version = 1,
                        uint64_t incarnation = 1000) {
  pb::NodeStatus n;
  n.set_node_id(id);
  n.set_cluster(spec.cluster);
  n.set_pool(spec.pool);
  n.set_address(id + ":9000");
  n.set_incarnation(incarnation);
  n.set_version(version);
  n.mutable_capacity()->set_cpu_millis(spec.cpu);
  n.mutable_capacity()->set_memory_mb(spec.mem);
  n.mutable_capacity()->set_slots(spec.slots);
  for (const auto& [type, count] : spec.gpus) {
    auto* g = n.mutable_capacity()->add_gpus();
    g->set_card_type(type);
    g->set_count(count);
    g->set_perf(1.0);
  }
  n.set_draining(spec.draining);
  n.set_online(spec.online);
  n.set_resource_id("r1");
  n.set_last_heartbeat_ms(1);
  return n;
}

pb::ReplicaStatus* AddReplica(pb::NodeStatus& n, const std::string& app, const std::string& id,
                              uint64_t generation, pb::ReplicaState state = pb::REPLICA_RUNNING,
                              int64_t cpu = 500, int64_t mem = 256) {
  pb::ReplicaStatus* r = n.add_replicas();
  r->set_app(app);
  r->set_replica_id(id);
  r->set_app_generation(generation);
  r->set_state(state);
  r->mutable_resources()->set_cpu_millis(cpu);
  r->mutable_resources()->set_memory_mb(mem);
  r->set_max_concurrency(4);
  return r;
}

pb::App MakeApp(const std::string& name, int replicas, uint64_t generation = 1, int64_t cpu = 500,
                int64_t mem = 256) {
  pb::App a;
  a.set_name(name);
  a.set_replicas(replicas);
  a.set_max_concurrency(4);
  a.mutable_resources()->set_cpu_millis(cpu);
  a.mutable_resources()->set_memory_mb(mem);
  a.mutable_engine()->set_engine("synthetic");
  a.set_generation(generation);
  return a;
}

pb::ViewUpdate FullView(const std::vector<pb::NodeStatus>& nodes, const std::vector<pb::App>& apps) {
  pb::ViewUpdate u;
  u.set_full(true);
  u.set_resource_id("r1");
  u.set_cluster("default");
  for (const auto& n : nodes) *u.add_nodes() = n;
  for (const auto& a : apps) *u.add_apps() = a;
  return u;
}

SchedulerOptions Options(const std::string& id = "s1", int candidates = 1) {
  SchedulerOptions o;
  o.scheduler_id = id;
  o.candidates = candidates;
  return o;
}

std::multiset<std::string> ClaimedNodes(const SchedulerCore::Plan& plan) {
  std::multiset<std::string> out;
  for (const auto& c : plan.claims) out.insert(c.request.node_id());
  return out;
}

std::set<std::string> ReleasedIds(const SchedulerCore::Plan& plan) {
  std::set<std::string> out;
  for (const auto& r : plan.releases) out.insert(r.request.replica_id());
  return out;
}

// The node after the node agent accepted `claim`: its replicas STARTING, the version bumped.
pb::NodeStatus Accepted(pb::NodeStatus node, const SchedulerCore::Claim& claim,
                        pb::ReplicaState state = pb::REPLICA_STARTING) {
  const auto& req = claim.request;
  for (int i = 0; i <= req.more_replica_ids_size(); ++i) {
    pb::ReplicaStatus* r =
        AddReplica(node, req.app(), i == 0 ? req.replica_id() : req.more_replica_ids(i - 1), req.app_generation(),
                   state, req.resources().cpu_millis(), req.resources().memory_mb());
    r->set_scheduler_id(req.scheduler_id());
  }
  node.set_version(node.version() + 1);
  return node;
}

int Replicas(const SchedulerCore::Claim& c) { return 1 + c.request.more_replica_ids_size(); }

class SchedulerCoreTest : public ::testing::Test {
 protected:
  SimulatedClock clock_;
  Random random_{42};
};

TEST_F(SchedulerCoreTest, PlacesExactlyTheMissingReplicasWithEachNodesVersion) {
  SchedulerCore core(Options("s1", 4), clock_, random_);
  pb::NodeStatus a = MakeNode("a", {}, 7, 111);
  AddReplica(a, "web", "web-existing", 3);
  std::vector<pb::NodeStatus> nodes = {a, MakeNode("b", {}, 2, 222), MakeNode("c", {}, 9, 333),
                                       MakeNode("d", {}, 4, 444)};
  core.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 3, 3)}));
  SchedulerCore::Plan plan = core.Reconcile();
  ASSERT_EQ(plan.claims.size(), 2u);
  EXPECT_TRUE(plan.releases.empty());
  std::set<std::string> ids;
  for (const auto& c : plan.claims) {
    const auto& req = c.request;
    auto node = std::find_if(nodes.begin(), nodes.end(),
                             [&](const pb::NodeStatus& n) { return n.node_id() == req.node_id(); });
    ASSERT_NE(node, nodes.end());
    EXPECT_EQ(c.address, node->address());
    EXPECT_EQ(req.expected_version(), node->version()) << req.node_id();
    EXPECT_EQ(req.incarnation(), node->incarnation()) << req.node_id();
    EXPECT_EQ(req.app(), "web");
    EXPECT_EQ(req.app_generation(), 3u);
    EXPECT_EQ(req.resources().cpu_millis(), 500);
    EXPECT_EQ(req.resources().memory_mb(), 256);
    EXPECT_EQ(req.max_concurrency(), 4);
    EXPECT_EQ(req.engine().engine(), "synthetic");
    EXPECT_EQ(req.scheduler_id(), "s1");
    EXPECT_EQ(req.replica_id().rfind("web-", 0), 0u) << req.replica_id();
    ids.insert(req.replica_id());
  }
  EXPECT_EQ(ids.size(), 2u) << "replica ids must be distinct";
  auto claimed = ClaimedNodes(plan);
  EXPECT_EQ(std::set<std::string>(claimed.begin(), claimed.end()).size(), 2u) << "one claim per node";
  EXPECT_EQ(core.claims_sent(), 2u);
  EXPECT_EQ(core.Counts()["web"].desired, 3);
  EXPECT_EQ(core.Counts()["web"].counted, 1);
  EXPECT_EQ(core.Counts()["web"].claims_in_flight, 2);
}

TEST_F(SchedulerCoreTest, AtMostOneClaimInFlightPerNode) {
  SchedulerCore core(Options(), clock_, random_);
  core.ApplyUpdate("east", FullView({MakeNode("a", {.slots = 8})}, {MakeApp("web", 3), MakeApp("ocr", 2)}));
  SchedulerCore::Plan plan = core.Reconcile();
  ASSERT_EQ(plan.claims.size(), 1u) << "a second claim would conflict with the first on version";
  EXPECT_TRUE(core.Reconcile().claims.empty());
}

TEST_F(SchedulerCoreTest, ClaimsInFlightCountTowardsTheApp) {
  SchedulerCore core(Options("s1", 4), clock_, random_);
  core.ApplyUpdate(
      "east", FullView({MakeNode("a"), MakeNode("b"), MakeNode("c"), MakeNode("d")}, {MakeApp("web", 2)}));
  EXPECT_EQ(core.Reconcile().claims.size(), 2u);
  clock_.Advance(seconds(5));
  SchedulerCore::Plan again = core.Reconcile();
  EXPECT_TRUE(again.claims.empty()) << "the gap is already being filled";
  EXPECT_TRUE(again.releases.empty());
}

// An app short of more replicas than there are nodes: one claim per node carries several
// (ClaimRequest.more_replica_ids), each node filled to the even level at once.
TEST_F(SchedulerCoreTest, SeveralReplicasPerClaimFillEachNodeToTheEvenLevel) {
  SchedulerCore core(Options("s1", 4), clock_, random_);
  std::vector<pb::NodeStatus> nodes;
  for (const char* id : {"a", "b", "c", "d"}) nodes.push_back(MakeNode(id, {.slots = 8}));
  core.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 12)}));
  SchedulerCore::Plan plan = core.Reconcile();
  ASSERT_EQ(plan.claims.size(), 4u);
  std::set<std::string> ids;
  for (const auto& c : plan.claims) {
    EXPECT_EQ(Replicas(c), 3) << c.request.node_id();
    ids.insert(c.request.replica_id());
    for (const auto& id : c.request.more_replica_ids()) ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 12u) << "every replica id distinct";
  EXPECT_EQ(core.Counts()["web"].claims_in_flight, 12);
  EXPECT_TRUE(core.Reconcile().claims.empty()) << "the claims in flight cover the gap";

  for (const auto& c : plan.claims) {
    pb::NodeStatus& n = *std::find_if(nodes.begin(), nodes.end(),
                                      [&](const pb::NodeStatus& x) { return x.node_id() == c.request.node_id(); });
    n = Accepted(n, c);
    core.OnClaimDone(c, Status::Ok(), false, &n);
  }
  EXPECT_EQ(core.claims_accepted(), 4u);
  EXPECT_EQ(core.replicas_claimed(), 12u);
  EXPECT_EQ(core.Counts()["web"].counted, 12);
  EXPECT_TRUE(core.Reconcile().claims.empty());
}

TEST_F(SchedulerCoreTest, SeveralReplicasPerClaimKeepTheSpreadEven) {
  // a already runs 2: 8 more over 4 nodes is 10 in all, so the nodes end at 3, 3, 2, 2.
  pb::NodeStatus a = MakeNode("a", {.slots = 8});
  AddReplica(a, "web", "web-a1", 1);
  AddReplica(a, "web", "web-a2", 1);
  std::vector<pb::NodeStatus> nodes = {a, MakeNode("b", {.slots = 8}), MakeNode("c", {.slots = 8}),
                                       MakeNode("d", {.slots = 8})};
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    Random random(seed);
    SchedulerCore core(Options("s1", 4), clock_, random);
    core.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 10)}));
    std::map<std::string, int> total = {{"a", 2}, {"b", 0}, {"c", 0}, {"d", 0}};
    int placed = 0;
    for (const auto& c : core.Reconcile().claims) {
      total[c.request.node_id()] += Replicas(c);
      placed += Replicas(c);
    }
    EXPECT_EQ(placed, 8) << "seed " << seed;
    std::multiset<int> levels;
    for (const auto& [id, n] : total) levels.insert(n);
    EXPECT_EQ(levels, (std::multiset<int>{2, 2, 3, 3})) << "seed " << seed;
  }
}

TEST_F(SchedulerCoreTest, ReplicasPerClaimAreBoundedByRoomTheOptionAndGpus) {
  // Room: 3 slots free on a 4-slot node with one replica of another app.
  pb::NodeStatus a = MakeNode("a", {.slots = 4});
  AddReplica(a, "other", "other-1", 1);
  {
    SchedulerCore core(Options(), clock_, random_);
    core.ApplyUpdate("east", FullView({a}, {MakeApp("web", 10)}));
    SchedulerCore::Plan plan = core.Reconcile();
    ASSERT_EQ(plan.claims.size(), 1u);
    EXPECT_EQ(Replicas(plan.claims[0]), 3);
  }
  // The option: at most 2 per claim; 1 turns it off.
  for (int max : {2, 1}) {
    SchedulerOptions o = Options();
    o.max_replicas_per_claim = max;
    SchedulerCore core(o, clock_, random_);
    core.ApplyUpdate("east", FullView({MakeNode("b", {.slots = 8}), MakeNode("c", {.slots = 8})}, {MakeApp("web", 10)}));
    SchedulerCore::Plan plan = core.Reconcile();
    ASSERT_EQ(plan.claims.size(), 2u);
    for (const auto& c : plan.claims) EXPECT_EQ(Replicas(c), max);
  }
  // GPU replicas: one per claim (the node picks each one's card).
  {
    SchedulerCore core(Options(), clock_, random_);
    pb::App gpu = MakeApp("vision", 4);
    gpu.mutable_resources()->set_gpus(1);
    core.ApplyUpdate("east", FullView({MakeNode("g", {.slots = 8, .gpus = {{"T4", 4}}})}, {gpu}));
    SchedulerCore::Plan plan = core.Reconcile();
    ASSERT_EQ(plan.claims.size(), 1u);
    EXPECT_EQ(Replicas(plan.claims[0]), 1);
  }
}

TEST_F(SchedulerCoreTest, RespectsPoolsClustersCardTypesCpuMemoryAndSlots) {
  const NodeSpec good{.pool = "gpu", .cluster = "east", .gpus = {{"A10", 1}}};
  auto with = [&](auto change) {
    NodeSpec s = good;
    change(s);
    return s;
  };
  std::vector<pb::NodeStatus> nodes = {
      MakeNode("wrong-pool", with([](NodeSpec& s) { s.pool = "cpu"; })),
      MakeNode("wrong-cluster", with([](NodeSpec& s) { s.cluster = "west"; })),
      MakeNode("wrong-card", with([](NodeSpec& s) {
                 s.gpus = {{"T4", 4}};
               })),
      MakeNode("no-gpu", with([](NodeSpec& s) { s.gpus.clear(); })),
      MakeNode("small-cpu", with([](NodeSpec& s) { s.cpu = 400; })),
      MakeNode("small-mem", with([](NodeSpec& s) { s.mem = 200; })),
      MakeNode("draining", with([](NodeSpec& s) { s.draining = true; })),
      MakeNode("offline", with([](NodeSpec& s) { s.online = false; })),
      MakeNode("good", good),
  };
  // Full in other ways: no free slot, the A10 taken, CPU taken by another app.
  pb::NodeStatus no_slot = MakeNode("no-slot", with([](NodeSpec& s) { s.slots = 1; }));
  AddReplica(no_slot, "other", "other-1", 1, pb::REPLICA_RUNNING, 100, 100);
  pb::NodeStatus card_used = MakeNode("card-used", good);
  AddReplica(card_used, "other", "other-2", 1)->set_card_type("A10");
  card_used.mutable_replicas(0)->mutable_resources()->set_gpus(1);
  pb::NodeStatus cpu_used = MakeNode("cpu-used", good);
  AddReplica(cpu_used, "other", "other-3", 1, pb::REPLICA_RUNNING, 3600, 100);
  nodes.push_back(no_slot);
  nodes.push_back(card_used);
  nodes.push_back(cpu_used);

  pb::App app = MakeApp("gpu-app", 5);
  app.add_pools("gpu");
  app.add_clusters("east");
  app.mutable_resources()->set_gpus(1);
  app.mutable_resources()->add_card_types("A10");
  app.mutable_resources()->add_card_types("V100");

  SchedulerCore core(Options("s1", 4), clock_, random_);
  core.ApplyUpdate("east", FullView(nodes, {app}));
  SchedulerCore::Plan plan = core.Reconcile();
  ASSERT_EQ(plan.claims.size(), 1u) << "only one node can take it";
  EXPECT_EQ(plan.claims[0].request.node_id(), "good");
  EXPECT_EQ(plan.claims[0].request.resources().gpus(), 1);
}

TEST_F(SchedulerCoreTest, SpreadsFewestReplicasOfTheAppFirst) {
  // The busy nodes have more free CPU, so only the spread rule keeps the new replicas off them.
  pb::NodeStatus a = MakeNode("a", {.cpu = 16000, .slots = 8});
  AddReplica(a, "web", "web-a1", 1);
  AddReplica(a, "web", "web-a2", 1);
  pb::NodeStatus b = MakeNode("b", {.cpu = 16000, .slots = 8});
  AddReplica(b, "web", "web-b1", 1);
  std::vector<pb::NodeStatus> nodes = {a, b, MakeNode("c"), MakeNode("d", {.cpu = 6000})};

  SchedulerCore two(Options(), clock_, random_);
  two.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 5)}));
  EXPECT_EQ(ClaimedNodes(two.Reconcile()), (std::multiset<std::string>{"c", "d"}));

  SchedulerCore three(Options(), clock_, random_);
  three.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 6)}));
  EXPECT_EQ(ClaimedNodes(three.Reconcile()), (std::multiset<std::string>{"b", "c", "d"}));

  // Among equally spread nodes, the most free CPU wins.
  SchedulerCore one(Options(), clock_, random_);
  one.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 4)}));
  EXPECT_EQ(ClaimedNodes(one.Reconcile()), (std::multiset<std::string>{"d"}));
}

// Spread comes before randomness: with the default `candidates` (4) the random draws are made only
// among the nodes with the fewest replicas of the app, so no node gets a second replica while
// equally good empty nodes stay unused (whatever the seed).
TEST_F(SchedulerCoreTest, DefaultCandidatesStillSpreadFirst) {
  pb::NodeStatus a = MakeNode("a");
  AddReplica(a, "web", "web-existing", 1);
  const std::vector<pb::NodeStatus> nodes = {a, MakeNode("b"), MakeNode("c"), MakeNode("d")};
  int stacked = 0;
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    Random random(seed);
    SchedulerCore core(Options("s1", 4), clock_, random);
    core.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 3)}));
    stacked += static_cast<int>(ClaimedNodes(core.Reconcile()).count("a"));
  }
  EXPECT_EQ(stacked, 0) << "runs (of 20 seeds) that put a second replica on a while b, c, d were empty";
}

// Two schedulers that see each other in the view (replicas they claimed) split the nodes by
// rendezvous hashing, so racing for one app they rarely claim the same node; drawing at random
// from one shared ranking would collide on about 40 x 40 / 100 = 16 of these claims.
TEST_F(SchedulerCoreTest, SchedulersThatSeeEachOtherClaimDifferentNodes) {
  std::vector<pb::NodeStatus> nodes;
  pb::NodeStatus seed1 = MakeNode("seed-1");
  AddReplica(seed1, "web", "web-a", 1)->set_scheduler_id("s1");
  pb::NodeStatus seed2 = MakeNode("seed-2");
  AddReplica(seed2, "web", "web-b", 1)->set_scheduler_id("s2");
  nodes = {seed1, seed2};
  for (int i = 0; i < 100; ++i) nodes.push_back(MakeNode("n" + std::to_string(i)));
  std::multiset<std::string> claimed[2];
  for (int k = 0; k < 2; ++k) {
    Random random(7 + k);
    SchedulerCore core(Options(k == 0 ? "s1" : "s2", 4), clock_, random);
    core.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 42)}));
    claimed[k] = ClaimedNodes(core.Reconcile());
    ASSERT_EQ(claimed[k].size(), 40u);
  }
  int both = 0;
  for (const auto& n : claimed[0]) both += static_cast<int>(claimed[1].count(n));
  EXPECT_LE(both, 2) << "schedulers that know each other should claim (almost) disjoint nodes";
}

TEST_F(SchedulerCoreTest, ConflictCoolsTheNodeDownAndTheNextReconcilePicksAnother) {
  SchedulerCore core(Options(), clock_, random_);
  pb::NodeStatus a = MakeNode("a", {.cpu = 8000});
  pb::NodeStatus b = MakeNode("b", {.cpu = 4000});
  core.ApplyUpdate("east", FullView({a, b}, {MakeApp("web", 1)}));
  SchedulerCore::Plan first = core.Reconcile();
  ASSERT_EQ(first.claims.size(), 1u);
  ASSERT_EQ(first.claims[0].request.node_id(), "a");

  // Another scheduler's claim won a: a moved on (another app), still has room.
  pb::NodeStatus a2 = a;
  AddReplica(a2, "other", "other-1", 1, pb::REPLICA_STARTING, 1000, 100);
  a2.set_version(2);
  core.OnClaimDone(first.claims[0], FailedPrecondition("claim conflict"), /*conflict=*/true, &a2);
  EXPECT_EQ(core.conflicts(), 1u);

  SchedulerCore::Plan second = core.Reconcile();
  ASSERT_EQ(second.claims.size(), 1u);
  EXPECT_EQ(second.claims[0].request.node_id(), "b") << "a is cooling down";

  core.OnClaimDone(second.claims[0], FailedPrecondition("claim conflict"), true, nullptr);
  EXPECT_TRUE(core.Reconcile().claims.empty()) << "both nodes cooling down";

  clock_.Advance(seconds(1));  // cooldown_max: longer than any first-conflict cooldown
  SchedulerCore::Plan third = core.Reconcile();
  ASSERT_EQ(third.claims.size(), 1u);
  EXPECT_EQ(third.claims[0].request.node_id(), "a");
  EXPECT_EQ(third.claims[0].request.expected_version(), 2u) << "the version from the conflict's node status";
  EXPECT_EQ(core.conflicts(), 2u);
}

TEST_F(SchedulerCoreTest, AcceptedClaimObservedCountsAndNoFurtherClaims) {
  SchedulerCore core(Options(), clock_, random_);
  pb::NodeStatus a = MakeNode("a", {.cpu = 8000});
  pb::NodeStatus b = MakeNode("b");
  core.ApplyUpdate("east", FullView({a, b}, {MakeApp("web", 1)}));
  SchedulerCore::Plan plan = core.Reconcile();
  ASSERT_EQ(plan.claims.size(), 1u);
  pb::NodeStatus after = Accepted(a, plan.claims[0]);
  after.set_online(false);  // the node's own answer says nothing about liveness
  core.OnClaimDone(plan.claims[0], Status::Ok(), false, &after);
  EXPECT_EQ(core.claims_accepted(), 1u);

  EXPECT_TRUE(core.Reconcile().claims.empty());
  EXPECT_EQ(core.Counts()["web"].counted, 1);
  EXPECT_EQ(core.Counts()["web"].claims_in_flight, 0);
  EXPECT_EQ(core.online_nodes(), 2u);

  // A late delta from the resource server with a's old status must not reopen the gap.
  pb::ViewUpdate stale;
  *stale.add_nodes() = a;
  core.ApplyUpdate("east", stale);
  SchedulerCore::Plan later = core.Reconcile();
  EXPECT_TRUE(later.claims.empty());
  EXPECT_TRUE(later.releases.empty());
}

TEST_F(SchedulerCoreTest, SurplusReleasesHighestReplicaIdsAndRacingCoresAgree) {
  pb::NodeStatus a = MakeNode("a");
  pb::NodeStatus b = MakeNode("b");
  pb::NodeStatus c = MakeNode("c");
  AddReplica(a, "web", "web-3c9e", 1);
  AddReplica(a, "web", "web-f012", 1);
  AddReplica(b, "web", "web-0a7d", 1);
  AddReplica(b, "web", "web-a551", 1);
  AddReplica(c, "web", "web-77b0", 1);
  const pb::ViewUpdate view = FullView({a, b, c}, {MakeApp("web", 2)});

  Random r1(1), r2(999);
  SchedulerCore s1(Options("s1", 4), clock_, r1);
  SchedulerCore s2(Options("s2", 4), clock_, r2);
  s1.ApplyUpdate("east", view);
  s2.ApplyUpdate("east", view);
  SchedulerCore::Plan p1 = s1.Reconcile();
  SchedulerCore::Plan p2 = s2.Reconcile();
  EXPECT_TRUE(p1.claims.empty());
  const std::set<std::string> expected = {"web-f012", "web-a551", "web-77b0"};
  EXPECT_EQ(ReleasedIds(p1), expected);
  EXPECT_EQ(ReleasedIds(p2), expected);
  for (const auto& r : p1.releases) {
    EXPECT_EQ(r.request.scheduler_id(), "s1");
    const std::string node = r.request.replica_id() == "web-f012"   ? "a"
                             : r.request.replica_id() == "web-a551" ? "b"
                                                                    : "c";
    EXPECT_EQ(r.request.node_id(), node);
    EXPECT_EQ(r.address, node + ":9000");
  }
  // Releases in flight are not sent again, and nothing is placed for them.
  SchedulerCore::Plan again = s1.Reconcile();
  EXPECT_TRUE(again.releases.empty());
  EXPECT_TRUE(again.claims.empty());

  // The node answers: the replica is draining. Still nothing to do.
  pb::NodeStatus c2 = c;
  c2.mutable_replicas(0)->set_state(pb::REPLICA_DRAINING);
  c2.set_version(2);
  for (const auto& r : p1.releases) {
    s1.OnReleaseDone(r, Status::Ok(), r.request.node_id() == "c" ? &c2 : nullptr);
  }
  pb::NodeStatus a2 = a, b2 = b;
  a2.mutable_replicas(1)->set_state(pb::REPLICA_DRAINING);
  a2.set_version(2);
  b2.mutable_replicas(1)->set_state(pb::REPLICA_DRAINING);
  b2.set_version(2);
  s1.ApplyUpdate("east", FullView({a2, b2, c2}, {MakeApp("web", 2)}));
  SchedulerCore::Plan settled = s1.Reconcile();
  EXPECT_TRUE(settled.claims.empty());
  EXPECT_TRUE(settled.releases.empty());
  EXPECT_EQ(s1.Counts()["web"].counted, 2);
}

TEST_F(SchedulerCoreTest, NothingIsReleasedWhileClaimsForTheAppAreInFlight) {
  SchedulerCore core(Options(), clock_, random_);
  core.ApplyUpdate("east", FullView({MakeNode("a"), MakeNode("b")}, {MakeApp("web", 2)}));
  SchedulerCore::Plan plan = core.Reconcile();
  ASSERT_EQ(plan.claims.size(), 2u);
  // Meanwhile the app shrinks to one: no release until the claims are answered.
  pb::App smaller = MakeApp("web", 1, 2);
  pb::ViewUpdate update;
  *update.add_apps() = smaller;
  core.ApplyUpdate("east", update);
  EXPECT_TRUE(core.Reconcile().releases.empty());
}

TEST_F(SchedulerCoreTest, ReplicasOnDrainingNodesAreReplacedNotReleased) {
  pb::NodeStatus a = MakeNode("a", {.draining = true});
  AddReplica(a, "web", "web-1", 1);
  AddReplica(a, "web", "web-2", 1);
  SchedulerCore core(Options("s1", 4), clock_, random_);
  core.ApplyUpdate("east", FullView({a, MakeNode("b"), MakeNode("c")}, {MakeApp("web", 2)}));
  SchedulerCore::Plan plan = core.Reconcile();
  EXPECT_EQ(ClaimedNodes(plan), (std::multiset<std::string>{"b", "c"}));
  EXPECT_TRUE(plan.releases.empty()) << "draining replicas finish on their own";
  EXPECT_EQ(core.Counts()["web"].counted, 0);

  for (const auto& c : plan.claims) {
    pb::NodeStatus after = Accepted(MakeNode(c.request.node_id()), c, pb::REPLICA_RUNNING);
    core.OnClaimDone(c, Status::Ok(), false, &after);
  }
  SchedulerCore::Plan settled = core.Reconcile();
  EXPECT_TRUE(settled.claims.empty());
  EXPECT_TRUE(settled.releases.empty()) << "the draining node's replicas are not surplus";
}

TEST_F(SchedulerCoreTest, FailedReplicasAreReleasedAndReplaced) {
  pb::NodeStatus a = MakeNode("a");
  AddReplica(a, "web", "web-1", 1);
  AddReplica(a, "web", "web-2", 1, pb::REPLICA_FAILED);
  SchedulerCore core(Options(), clock_, random_);
  core.ApplyUpdate("east", FullView({a, MakeNode("b")}, {MakeApp("web", 2)}));
  SchedulerCore::Plan plan = core.Reconcile();
  EXPECT_EQ(ReleasedIds(plan), (std::set<std::string>{"web-2"}));
  ASSERT_EQ(plan.releases.size(), 1u);
  EXPECT_EQ(plan.releases[0].request.node_id(), "a");
  EXPECT_EQ(ClaimedNodes(plan), (std::multiset<std::string>{"b"}));
}

TEST_F(SchedulerCoreTest, OldGenerationReleasedOnlyOnceTheNewOneIsComplete) {
  pb::NodeStatus a = MakeNode("a");
  pb::NodeStatus b = MakeNode("b");
  AddReplica(a, "web", "web-old1", 1);
  AddReplica(b, "web", "web-old2", 1);
  std::vector<pb::NodeStatus> nodes = {a, b, MakeNode("c"), MakeNode("d")};
  SchedulerCore core(Options(), clock_, random_);
  core.ApplyUpdate("east", FullView(nodes, {MakeApp("web", 2, 1)}));
  SchedulerCore::Plan steady = core.Reconcile();
  EXPECT_TRUE(steady.claims.empty());
  EXPECT_TRUE(steady.releases.empty());

  pb::ViewUpdate rollout;
  *rollout.add_apps() = MakeApp("web", 2, 2);
  core.ApplyUpdate("east", rollout);
  SchedulerCore::Plan plan = core.Reconcile();
  EXPECT_TRUE(plan.releases.empty()) << "the old generation serves until the new one is there";
  ASSERT_EQ(plan.claims.size(), 2u);
  EXPECT_EQ(ClaimedNodes(plan), (std::multiset<std::string>{"c", "d"}));
  for (const auto& c : plan.claims) EXPECT_EQ(c.request.app_generation(), 2u);

  // One of two new replicas is up: still not enough.
  const SchedulerCore::Claim first = plan.claims[0];
  const SchedulerCore::Claim second = plan.claims[1];
  pb::NodeStatus n1 = Accepted(MakeNode(first.request.node_id()), first);
  core.OnClaimDone(first, Status::Ok(), false, &n1);
  EXPECT_TRUE(core.Reconcile().releases.empty());

  pb::NodeStatus n2 = Accepted(MakeNode(second.request.node_id()), second);
  core.OnClaimDone(second, Status::Ok(), false, &n2);
  SchedulerCore::Plan done = core.Reconcile();
  EXPECT_EQ(ReleasedIds(done), (std::set<std::string>{"web-old1", "web-old2"}));
  EXPECT_TRUE(done.claims.empty());
}

TEST_F(SchedulerCoreTest, DeletedAppsReplicasAreReleased) {
  pb::NodeStatus a = MakeNode("a");
  AddReplica(a, "web", "web-1", 5);
  AddReplica(a, "web", "web-2", 5, pb::REPLICA_DRAINING);  // already on its way out
  AddReplica(a, "ocr", "ocr-1", 1);
  SchedulerCore core(Options(), clock_, random_);
  core.ApplyUpdate("east", FullView({a}, {MakeApp("web", 2, 5), MakeApp("ocr", 1, 1)}));
  (void)core.Reconcile();

  // A deletion older than the app is stale: ignored.
  pb::ViewUpdate stale;
  stale.add_deleted_apps("web@4");
  core.ApplyUpdate("east", stale);
  ASSERT_NE(core.FindApp("web"), nullptr);
  EXPECT_TRUE(core.Reconcile().releases.empty());

  pb::ViewUpdate deleted;
  deleted.add_deleted_apps("web@6");
  core.ApplyUpdate("east", deleted);
  EXPECT_EQ(core.FindApp("web"), nullptr);
  SchedulerCore::Plan plan = core.Reconcile();
  EXPECT_EQ(ReleasedIds(plan), (std::set<std::string>{"web-1"}));
  EXPECT_TRUE(plan.claims.empty());
}

TEST_F(SchedulerCoreTest, AppDeletedBeforeTheSchedulerStartedStillHasItsReplicasReleased) {
  pb::NodeStatus a = MakeNode("a");
  AddReplica(a, "web", "web-1", 5);
  SchedulerCore core(Options(), clock_, random_);
  pb::ViewUpdate view = FullView({a}, {});
  view.add_deleted_apps("web@5");  // the resource server's tombstone, in its first full update
  core.ApplyUpdate("east", view);
  EXPECT_EQ(ReleasedIds(core.Reconcile()), (std::set<std::string>{"web-1"}));
}

TEST_F(SchedulerCoreTest, ReleaseAnsweredNotFoundForgetsTheReplicaInsteadOfRetrying) {
  pb::NodeStatus a = MakeNode("a");
  AddReplica(a, "web", "web-1", 1, pb::REPLICA_FAILED);
  SchedulerCore core(Options(), clock_, random_);
  core.ApplyUpdate("east", FullView({a}, {MakeApp("web", 0)}));
  SchedulerCore::Plan plan = core.Reconcile();
  ASSERT_EQ(plan.releases.size(), 1u);
  core.OnReleaseDone(plan.releases[0], NotFound("replica web-1 does not run on node a"), nullptr);
  EXPECT_TRUE(core.Reconcile().releases.empty()) << "released again although the node said it is gone";

  // Any other failure is retried.
  pb::NodeStatus b = MakeNode("b");
  AddReplica(b, "web", "web-2", 1, pb::REPLICA_FAILED);
  core.ApplyUpdate("east", FullView({b}, {MakeApp("web", 0)}));
  plan = core.Reconcile();
  ASSERT_EQ(plan.releases.size(), 1u);
  core.OnReleaseDone(plan.releases[0], Unavailable("connection refused"), nullptr);
  EXPECT_EQ(ReleasedIds(core.Reconcile()), (std::set<std::string>{"web-2"}));
}

TEST_F(SchedulerCoreTest, ReleasesInFlightAreCapped) {
  pb::NodeStatus a = MakeNode("a", {.slots = 16});
  for (int i = 0; i < 10; ++i) AddReplica(a, "web", "web-" + std::to_string(i), 1, pb::REPLICA_FAILED);
  SchedulerOptions options = Options();
  options.max_releases_in_flight = 3;
  SchedulerCore core(options, clock_, random_);
  core.ApplyUpdate("east", FullView({a}, {MakeApp("web", 0)}));
  SchedulerCore::Plan plan = core.Reconcile();
  EXPECT_EQ(plan.releases.size(), 3u);
  EXPECT_TRUE(core.Reconcile().releases.empty());
  core.OnReleaseDone(plan.releases[0], Unavailable("timeout"), nullptr);
  EXPECT_EQ(core.Reconcile().releases.size(), 1u);
}

TEST_F(SchedulerCoreTest, OfflineNodesAreIgnored) {
  pb::NodeStatus gone = MakeNode("gone", {.cpu = 64000, .slots = 16, .online = false});
  AddReplica(gone, "web", "web-1", 1);
  AddReplica(gone, "web", "web-2", 1);
  SchedulerCore core(Options("s1", 4), clock_, random_);
  core.ApplyUpdate("east", FullView({gone, MakeNode("b"), MakeNode("c")}, {MakeApp("web", 2)}));
  EXPECT_EQ(core.online_nodes(), 2u);
  SchedulerCore::Plan plan = core.Reconcile();
  EXPECT_EQ(ClaimedNodes(plan), (std::multiset<std::string>{"b", "c"}));
  EXPECT_TRUE(plan.releases.empty()) << "nobody answers on an offline node";
}

TEST_F(SchedulerCoreTest, AutoscaleUpWithLoadAndDownOneStepPerInterval) {
  pb::App app = MakeApp("web", 0);
  app.set_min_replicas(1);
  app.set_max_replicas(6);
  app.set_target_utilization(0.5);
  app.set_max_concurrency(4);
  std::vector<pb::NodeStatus> nodes;
  for (const char* id : {"a", "b", "c", "d", "e", "f", "g"}) nodes.push_back(MakeNode(id));
  AddReplica(nodes[0], "web", "web-1", 1)->set_in_flight(4);
  AddReplica(nodes[1], "web", "web-2", 1)->set_in_flight(4);
  SchedulerOptions o = Options("s1", 4);
  o.scale_down_interval = seconds(30);
  SchedulerCore core(o, clock_, random_);
  core.ApplyUpdate("east", FullView(nodes, {app}));

  // 8 in flight at 4 per replica and a 0.5 target: 4 replicas.
  SchedulerCore::Plan up = core.Reconcile();
  EXPECT_EQ(up.claims.size(), 2u);
  EXPECT_EQ(core.Counts()["web"].desired, 4);
  for (const auto& c : up.claims) {
    for (auto& n : nodes) {
      if (n.node_id() == c.request.node_id()) n = Accepted(n, c, pb::REPLICA_RUNNING);
    }
    core.OnClaimDone(c, Status::Ok(), false, nullptr);
  }
  // Load beyond max: capped at max_replicas.
  for (auto& n : nodes) {
    for (auto& r : *n.mutable_replicas()) r.set_in_flight(40);
  }
  core.ApplyUpdate("east", FullView(nodes, {app}));
  EXPECT_EQ(core.Reconcile().claims.size(), 2u);
  EXPECT_EQ(core.Counts()["web"].desired, 6);

  // The load is gone (the two new claims are not answered yet: nothing is released meanwhile).
  for (auto& n : nodes) {
    for (auto& r : *n.mutable_replicas()) r.set_in_flight(0);
  }
  core.ApplyUpdate("east", FullView(nodes, {app}));
  EXPECT_TRUE(core.Reconcile().releases.empty());
  // A scheduler started now sees four idle replicas: it scales down one step per interval.
  SchedulerCore fresh(o, clock_, random_);
  fresh.ApplyUpdate("east", FullView(nodes, {app}));
  SchedulerCore::Plan down = fresh.Reconcile();
  EXPECT_EQ(down.releases.size(), 1u);
  EXPECT_EQ(fresh.Counts()["web"].desired, 3);
  clock_.Advance(seconds(29));
  EXPECT_TRUE(fresh.Reconcile().releases.empty());
  EXPECT_EQ(fresh.Counts()["web"].desired, 3);
  clock_.Advance(seconds(1));
  EXPECT_EQ(fresh.Reconcile().releases.size(), 1u);
  EXPECT_EQ(fresh.Counts()["web"].desired, 2);
  clock_.Advance(seconds(30));
  (void)fresh.Reconcile();
  clock_.Advance(seconds(30));
  (void)fresh.Reconcile();
  EXPECT_EQ(fresh.Counts()["web"].desired, 1) << "never below min_replicas";
}

// A node that enforces only the compare-and-swap on its version, as the node agent does; it
// checks capacity after the fact, so a scheduler that claimed what does not fit shows up here.
class NodeArbiter {
 public:
  explicit NodeArbiter(std::vector<pb::NodeStatus> nodes) {
    for (auto& n : nodes) nodes_[n.node_id()] = std::move(n);
  }

  struct Answer {
    Status status;
    bool conflict = false;
    pb::NodeStatus node;
  };

  Answer Claim(const pb::ClaimRequest& req) {
    pb::NodeStatus& n = nodes_.at(req.node_id());
    Answer out;
    if (req.incarnation() != n.incarnation() || req.expected_version() != n.version()) {
      out.status = FailedPrecondition("claim conflict");
      out.conflict = true;
      out.node = n;
      return out;
    }
    for (int i = 0; i <= req.more_replica_ids_size(); ++i) {
      pb::ReplicaStatus* r = n.add_replicas();
      r->set_app(req.app());
      r->set_replica_id(i == 0 ? req.replica_id() : req.more_replica_ids(i - 1));
      *r->mutable_resources() = req.resources();
      r->set_state(pb::REPLICA_RUNNING);
      r->set_app_generation(req.app_generation());
      r->set_max_concurrency(req.max_concurrency());
    }
    n.set_version(n.version() + 1);
    int64_t cpu = 0, mem = 0;
    for (const auto& rep : n.replicas()) {
      cpu += rep.resources().cpu_millis();
      mem += rep.resources().memory_mb();
    }
    if (n.replicas_size() > n.capacity().slots() || cpu > n.capacity().cpu_millis() ||
        mem > n.capacity().memory_mb()) {
      ++overcommits_;
    }
    out.node = n;
    return out;
  }

  Answer Release(const pb::ReleaseRequest& req) {
    pb::NodeStatus& n = nodes_.at(req.node_id());
    Answer out;
    auto* replicas = n.mutable_replicas();
    for (int i = 0; i < replicas->size(); ++i) {
      if (replicas->Get(i).replica_id() == req.replica_id()) {
        replicas->DeleteSubrange(i, 1);
        n.set_version(n.version() + 1);
        out.node = n;
        return out;
      }
    }
    out.status = NotFound("no such replica");
    return out;
  }

  pb::ViewUpdate View(const std::vector<pb::App>& apps) const {
    std::vector<pb::NodeStatus> nodes;
    for (const auto& [id, n] : nodes_) nodes.push_back(n);
    return FullView(nodes, apps);
  }

  int Count(const std::string& app) const {
    int n = 0;
    for (const auto& [id, node] : nodes_) {
      for (const auto& r : node.replicas()) n += r.app() == app ? 1 : 0;
    }
    return n;
  }
  int overcommits() const { return overcommits_; }

 private:
  std::map<std::string, pb::NodeStatus> nodes_;
  int overcommits_ = 0;
};

TEST_F(SchedulerCoreTest, RacingSchedulersNeverOverCommitAndConverge) {
  std::vector<pb::NodeStatus> nodes;
  for (int i = 0; i < 8; ++i) {
    nodes.push_back(MakeNode("n" + std::to_string(i), {.cpu = 4000, .mem = 4096, .slots = 3}, 1, 500 + i));
  }
  NodeArbiter arbiter(nodes);
  const std::vector<pb::App> apps = {MakeApp("a", 10, 1, 1000, 512), MakeApp("b", 7, 1, 1500, 1024)};

  Random r0(7), r1(8), order(9);
  SchedulerCore s0(Options("s0", 4), clock_, r0);
  SchedulerCore s1(Options("s1", 4), clock_, r1);
  SchedulerCore* cores[] = {&s0, &s1};
  uint64_t conflicts = 0;
  for (int round = 0; round < 300; ++round) {
    const bool settle = round >= 200;  // the last rounds: every view fresh, so they converge
    struct Op {
      SchedulerCore* core;
      std::optional<SchedulerCore::Claim> claim;
      std::optional<SchedulerCore::Release> release;
    };
    std::vector<Op> ops;
    for (SchedulerCore* core : cores) {
      if (settle || order.Bernoulli(0.6)) core->ApplyUpdate("east", arbiter.View(apps));
      SchedulerCore::Plan plan = core->Reconcile();
      for (auto& c : plan.claims) ops.push_back({core, std::move(c), std::nullopt});
      for (auto& r : plan.releases) ops.push_back({core, std::nullopt, std::move(r)});
    }
    std::shuffle(ops.begin(), ops.end(), order);
    for (Op& op : ops) {
      if (op.claim) {
        NodeArbiter::Answer a = arbiter.Claim(op.claim->request);
        conflicts += a.conflict ? 1 : 0;
        op.core->OnClaimDone(*op.claim, a.status, a.conflict, &a.node);
      } else {
        NodeArbiter::Answer a = arbiter.Release(op.release->request);
        op.core->OnReleaseDone(*op.release, a.status, a.status.ok() ? &a.node : nullptr);
      }
    }
    ASSERT_EQ(arbiter.overcommits(), 0) << "round " << round;
    clock_.Advance(milliseconds(50));
  }
  EXPECT_GT(conflicts, 0u) << "the race was not exercised";
  EXPECT_EQ(arbiter.Count("a"), 10);
  EXPECT_EQ(arbiter.Count("b"), 7);
  for (SchedulerCore* core : cores) {
    auto counts = core->Counts();
    EXPECT_EQ(counts["a"].counted, 10);
    EXPECT_EQ(counts["b"].counted, 7);
  }
}

}  // namespace
}  // namespace chorus::compute
