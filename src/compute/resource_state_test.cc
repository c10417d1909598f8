#include "compute/resource_state.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"

namespace chorus::compute {
namespace {

using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

constexpr uint64_t kIncarnation = 1000;

pb::NodeStatus NodeAt(const std::string& id, uint64_t version, uint64_t incarnation = kIncarnation) {
  pb::NodeStatus s;
  s.set_node_id(id);
  s.set_cluster("default");
  s.set_address(id + ":7000");
  s.set_incarnation(incarnation);
  s.set_version(version);
  s.mutable_capacity()->set_cpu_millis(4000);
  s.mutable_capacity()->set_memory_mb(8192);
  s.mutable_capacity()->set_slots(4);
  return s;
}

pb::App App(const std::string& name, const std::string& spec = "") {
  pb::App a;
  a.set_name(name);
  a.set_replicas(2);
  a.set_max_concurrency(1);
  a.mutable_resources()->set_cpu_millis(500);
  a.mutable_resources()->set_memory_mb(256);
  a.mutable_engine()->set_engine("synthetic");
  a.set_spec_yaml(spec);
  return a;
}

ResourceOptions Options(const std::string& id) {
  ResourceOptions o;
  o.resource_id = id;
  return o;
}

// The node `id` as the latest update or batch carries it, or null.
const pb::NodeStatus* Find(const google::protobuf::RepeatedPtrField<pb::NodeStatus>& nodes,
                           const std::string& id) {
  for (const auto& n : nodes) {
    if (n.node_id() == id) return &n;
  }
  return nullptr;
}

std::optional<pb::NodeStatus> InSnapshot(const ResourceState& state, const std::string& id) {
  pb::View view = state.Snapshot();
  for (const auto& n : view.nodes()) {
    if (n.node_id() == id) return n;
  }
  return std::nullopt;
}

bool Online(const ResourceState& state, const std::string& id) {
  auto n = InSnapshot(state, id);
  return n.has_value() && n->online();
}

bool HasApp(const ResourceState& state, const std::string& name) {
  for (const auto& a : state.Apps()) {
    if (a.name() == name) return true;
  }
  return false;
}

// A batch from peer `from`: a keepalive unless nodes are given.
pb::PeerBatch PeerBatch(const std::string& from, bool full, std::vector<pb::NodeStatus> nodes = {}) {
  pb::PeerBatch b;
  b.set_from_resource_id(from);
  b.set_cluster("default");
  b.set_full(full);
  for (auto& n : nodes) *b.add_nodes() = std::move(n);
  return b;
}

// A node as its home peer reports it: online, stamped with the home's id and heartbeat time.
pb::NodeStatus HomedOn(pb::NodeStatus s, const std::string& home, const Clock& clock, bool online = true) {
  s.set_resource_id(home);
  s.set_online(online);
  s.set_last_heartbeat_ms(clock.WallMillis());
  return s;
}

class ResourceStateTest : public ::testing::Test {
 protected:
  // Runs the broadcaster's loop for `d`: Flush every 100 ms of simulated time.
  void Run(ResourceState& state, Duration d) {
    for (Duration done{}; done < d; done += milliseconds(100)) {
      clock_.Advance(std::min<Duration>(milliseconds(100), d - done));
      (void)state.Flush();
    }
  }

  SimulatedClock clock_;
};

TEST_F(ResourceStateTest, HeartbeatMakesNodeOnlineAndFlushesItToWatchersAndPeers) {
  ResourceState state(Options("r1"), clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 1)).ok());
  EXPECT_EQ(state.online_nodes(), 1u);
  EXPECT_TRUE(state.urgent()) << "a new node should not wait for the next interval";

  ResourceState::Flushed out = state.Flush();
  ASSERT_NE(out.update, nullptr);
  const pb::NodeStatus* n = Find(out.update->nodes(), "n1");
  ASSERT_NE(n, nullptr);
  EXPECT_TRUE(n->online());
  EXPECT_EQ(n->resource_id(), "r1");
  EXPECT_EQ(n->last_heartbeat_ms(), clock_.WallMillis());
  ASSERT_NE(out.peer, nullptr);
  EXPECT_EQ(out.peer->from_resource_id(), "r1");
  EXPECT_FALSE(out.peer->full());
  ASSERT_NE(Find(out.peer->nodes(), "n1"), nullptr);
  EXPECT_FALSE(state.urgent());

  // Nothing changed: no update, and the peer batch is an empty keepalive.
  out = state.Flush();
  EXPECT_EQ(out.update, nullptr);
  ASSERT_NE(out.peer, nullptr);
  EXPECT_EQ(out.peer->nodes_size(), 0);
}

TEST_F(ResourceStateTest, OlderStatusIgnoredNewerAccepted) {
  ResourceState state(Options("r1"), clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 5)).ok());
  (void)state.Flush();

  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 3)).ok());  // reordered: not an error
  EXPECT_EQ(InSnapshot(state, "n1")->version(), 5u);
  EXPECT_EQ(state.Flush().update, nullptr) << "an older status must not be broadcast";

  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 7)).ok());
  EXPECT_EQ(InSnapshot(state, "n1")->version(), 7u);
  auto out = state.Flush();
  ASSERT_NE(out.update, nullptr);
  ASSERT_NE(Find(out.update->nodes(), "n1"), nullptr);
  EXPECT_EQ(Find(out.update->nodes(), "n1")->version(), 7u);
}

TEST_F(ResourceStateTest, OlderIncarnationIsFailedPreconditionNewerIncarnationWins) {
  ResourceState state(Options("r1"), clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 9, 200)).ok());
  Status st = state.OnHeartbeat(2, NodeAt("n1", 50, 100));
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_EQ(InSnapshot(state, "n1")->incarnation(), 200u);

  // A restarted agent: new incarnation, version starts over, and still wins.
  ASSERT_TRUE(state.OnHeartbeat(3, NodeAt("n1", 1, 300)).ok());
  EXPECT_EQ(InSnapshot(state, "n1")->incarnation(), 300u);
  EXPECT_EQ(InSnapshot(state, "n1")->version(), 1u);
}

TEST_F(ResourceStateTest, InvalidStatusIsInvalidArgument) {
  ResourceState state(Options("r1"), clock_);
  pb::NodeStatus bad_id = NodeAt("bad id!", 1);
  EXPECT_EQ(state.OnHeartbeat(1, bad_id).code(), StatusCode::kInvalidArgument);
  pb::NodeStatus empty_id = NodeAt("", 1);
  EXPECT_EQ(state.OnHeartbeat(1, empty_id).code(), StatusCode::kInvalidArgument);
  pb::NodeStatus no_cpu = NodeAt("n1", 1);
  no_cpu.mutable_capacity()->set_cpu_millis(0);
  EXPECT_EQ(state.OnHeartbeat(1, no_cpu).code(), StatusCode::kInvalidArgument);
  pb::NodeStatus no_memory = NodeAt("n1", 1);
  no_memory.mutable_capacity()->set_memory_mb(0);
  EXPECT_EQ(state.OnHeartbeat(1, no_memory).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(state.known_nodes(), 0u);
  EXPECT_EQ(state.Flush().update, nullptr);
}

TEST_F(ResourceStateTest, StreamClosedGoesOfflineAfterReconnectGrace) {
  ResourceState state(Options("r1"), clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 1)).ok());
  (void)state.Flush();
  state.OnStreamClosed(1, /*goodbye=*/false);
  EXPECT_TRUE(Online(state, "n1"));

  clock_.Advance(milliseconds(499));
  EXPECT_EQ(state.Flush().update, nullptr);
  EXPECT_TRUE(Online(state, "n1"));

  clock_.Advance(milliseconds(1));
  auto out = state.Flush();
  EXPECT_FALSE(Online(state, "n1"));
  ASSERT_NE(out.update, nullptr);
  ASSERT_NE(Find(out.update->nodes(), "n1"), nullptr);
  EXPECT_FALSE(Find(out.update->nodes(), "n1")->online());
  ASSERT_NE(Find(out.peer->nodes(), "n1"), nullptr) << "peers must hear that our node is gone";
  EXPECT_FALSE(Find(out.peer->nodes(), "n1")->online());
}

TEST_F(ResourceStateTest, ReconnectOnAnotherStreamWithinGraceKeepsNodeOnline) {
  ResourceState state(Options("r1"), clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 1)).ok());
  (void)state.Flush();
  state.OnStreamClosed(1, false);
  clock_.Advance(milliseconds(300));
  ASSERT_TRUE(state.OnHeartbeat(2, NodeAt("n1", 1)).ok());  // same status, new stream

  for (int i = 0; i < 5; ++i) {
    clock_.Advance(milliseconds(500));
    ASSERT_TRUE(state.OnHeartbeat(2, NodeAt("n1", 1)).ok());
    (void)state.Flush();
    EXPECT_TRUE(Online(state, "n1")) << "after " << i;
  }
  // The old stream closing again (a late close) does not touch the node on the new stream.
  state.OnStreamClosed(1, false);
  clock_.Advance(seconds(1));
  (void)state.Flush();
  EXPECT_TRUE(Online(state, "n1"));
}

TEST_F(ResourceStateTest, NodeReHomedOnPeerWithinGraceStaysOnline) {
  ResourceState r1(Options("r1"), clock_);
  ResourceState r2(Options("r2"), clock_);
  ASSERT_TRUE(r1.OnHeartbeat(1, NodeAt("n1", 4)).ok());
  (void)r1.Flush();
  r1.OnStreamClosed(1, false);

  clock_.Advance(milliseconds(200));
  ASSERT_TRUE(r2.OnHeartbeat(7, NodeAt("n1", 4)).ok());  // the agent moved to r2
  (void)r1.OnPeerBatch(*r2.Flush().peer);

  for (int i = 0; i < 10; ++i) {  // well past reconnect_grace; r2 keeps vouching
    clock_.Advance(milliseconds(100));
    ASSERT_TRUE(r2.OnHeartbeat(7, NodeAt("n1", 4)).ok());
    (void)r1.OnPeerBatch(*r2.Flush().peer);
    (void)r1.Flush();
  }
  auto n = InSnapshot(r1, "n1");
  ASSERT_TRUE(n.has_value());
  EXPECT_TRUE(n->online());
  EXPECT_EQ(n->resource_id(), "r2");
}

TEST_F(ResourceStateTest, GoodbyeIsOfflineAtOnceAndUrgent) {
  ResourceState state(Options("r1"), clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 1)).ok());
  (void)state.Flush();
  EXPECT_FALSE(state.urgent());

  state.OnStreamClosed(1, /*goodbye=*/true);
  EXPECT_TRUE(state.urgent());
  EXPECT_EQ(state.online_nodes(), 0u);
  auto out = state.Flush();
  ASSERT_NE(out.update, nullptr);
  ASSERT_NE(Find(out.update->nodes(), "n1"), nullptr);
  EXPECT_FALSE(Find(out.update->nodes(), "n1")->online());
}

TEST_F(ResourceStateTest, SilentNodeGoesOfflineAfterOfflineAfterIntervals) {
  ResourceOptions o = Options("r1");
  o.heartbeat_interval = seconds(1);
  o.offline_after = 3;
  ResourceState state(o, clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 1)).ok());
  ASSERT_TRUE(state.OnHeartbeat(2, NodeAt("n2", 1)).ok());
  (void)state.Flush();

  // n2 keeps beating, n1 falls silent on a stream that never closes.
  for (int i = 0; i < 29; ++i) {
    clock_.Advance(milliseconds(100));
    if (i % 10 == 9) {
      ASSERT_TRUE(state.OnHeartbeat(2, NodeAt("n2", 1)).ok());
    }
    (void)state.Flush();
  }
  EXPECT_TRUE(Online(state, "n1")) << "2.9 s of silence is within offline_after";
  clock_.Advance(milliseconds(100));
  (void)state.Flush();
  EXPECT_FALSE(Online(state, "n1"));
  EXPECT_TRUE(Online(state, "n2"));
}

TEST_F(ResourceStateTest, PeerNodesAppearButAreNotRelayedToOtherPeers) {
  ResourceState r1(Options("r1"), clock_);
  ResourceState r2(Options("r2"), clock_);
  ASSERT_TRUE(r2.OnHeartbeat(1, NodeAt("n1", 3)).ok());
  pb::PeerAck ack = r1.OnPeerBatch(*r2.Flush().peer);
  EXPECT_EQ(ack.resource_id(), "r1");

  EXPECT_EQ(r1.online_nodes(), 1u);
  auto out = r1.Flush();
  ASSERT_NE(out.update, nullptr);
  const pb::NodeStatus* n = Find(out.update->nodes(), "n1");
  ASSERT_NE(n, nullptr);
  EXPECT_TRUE(n->online());
  EXPECT_EQ(n->resource_id(), "r2");
  EXPECT_EQ(Find(out.peer->nodes(), "n1"), nullptr) << "only nodes homed here go to peers";
  EXPECT_EQ(r1.FullPeerBatch().nodes_size(), 0);
}

TEST_F(ResourceStateTest, SilentPeerOrphansItsNodesWhichGoOfflineOnlyAfterOfflineAfterIntervals) {
  ResourceState r1(Options("r1"), clock_);  // peer_timeout 1 s, 3 x 1 s heartbeats
  (void)r1.OnPeerBatch(PeerBatch("r2", true, {HomedOn(NodeAt("n1", 1), "r2", clock_)}));
  ASSERT_TRUE(Online(r1, "n1"));

  Run(r1, milliseconds(1500));  // the peer is silent now; n1 is an orphan
  EXPECT_TRUE(Online(r1, "n1"));
  Run(r1, milliseconds(2400));  // 3.9 s after the last batch
  EXPECT_TRUE(Online(r1, "n1")) << "orphans get offline_after intervals to re-home";
  Run(r1, milliseconds(100));  // peer_timeout + offline_after x heartbeat_interval
  EXPECT_FALSE(Online(r1, "n1"));
}

TEST_F(ResourceStateTest, OrphanThatReHomesHereStaysOnline) {
  ResourceState r1(Options("r1"), clock_);
  (void)r1.OnPeerBatch(PeerBatch("r2", true, {HomedOn(NodeAt("n1", 1), "r2", clock_)}));
  Run(r1, milliseconds(1500));
  ASSERT_TRUE(r1.OnHeartbeat(5, NodeAt("n1", 1)).ok());  // the agent reconnected to us
  for (int i = 0; i < 6; ++i) {
    Run(r1, seconds(1));
    ASSERT_TRUE(r1.OnHeartbeat(5, NodeAt("n1", 1)).ok());
  }
  EXPECT_TRUE(Online(r1, "n1"));
  EXPECT_EQ(InSnapshot(r1, "n1")->resource_id(), "r1");
}

TEST_F(ResourceStateTest, FullBatchThatOmitsNodeOrphansIt) {
  ResourceState r1(Options("r1"), clock_);
  (void)r1.OnPeerBatch(PeerBatch(
      "r2", true, {HomedOn(NodeAt("n1", 1), "r2", clock_), HomedOn(NodeAt("n2", 1), "r2", clock_)}));
  ASSERT_EQ(r1.online_nodes(), 2u);
  (void)r1.OnPeerBatch(PeerBatch("r2", true, {HomedOn(NodeAt("n2", 1), "r2", clock_)}));

  // r2 keeps pushing keepalives, so only the omission counts.
  for (int i = 0; i < 29; ++i) {
    clock_.Advance(milliseconds(100));
    (void)r1.OnPeerBatch(PeerBatch("r2", false));
    (void)r1.Flush();
  }
  EXPECT_TRUE(Online(r1, "n1")) << "an orphan waits offline_after intervals";
  clock_.Advance(milliseconds(100));
  (void)r1.OnPeerBatch(PeerBatch("r2", false));
  (void)r1.Flush();
  EXPECT_FALSE(Online(r1, "n1"));
  EXPECT_TRUE(Online(r1, "n2"));
}

TEST_F(ResourceStateTest, PeerOfflineForNodeHomedElsewhereIsIgnored) {
  ResourceState r1(Options("r1"), clock_);
  ASSERT_TRUE(r1.OnHeartbeat(1, NodeAt("n1", 4)).ok());                                   // homed here
  (void)r1.OnPeerBatch(PeerBatch("r3", true, {HomedOn(NodeAt("n2", 2), "r3", clock_)}));  // homed on r3
  (void)r1.Flush();

  // r2 once had both and now declares them offline, at the same versions.
  clock_.Advance(milliseconds(600));
  (void)r1.OnPeerBatch(PeerBatch("r2", true,
                                 {HomedOn(NodeAt("n1", 4), "r2", clock_, /*online=*/false),
                                  HomedOn(NodeAt("n2", 2), "r2", clock_, /*online=*/false)}));
  EXPECT_TRUE(Online(r1, "n1"));
  EXPECT_EQ(InSnapshot(r1, "n1")->resource_id(), "r1");
  EXPECT_TRUE(Online(r1, "n2"));
  EXPECT_EQ(InSnapshot(r1, "n2")->resource_id(), "r3");
  auto out = r1.Flush();
  EXPECT_EQ(out.update, nullptr) << "nothing changed";
}

TEST_F(ResourceStateTest, NeedFullOnFirstPartialBatchFromUnknownPeer) {
  ResourceState r1(Options("r1"), clock_);
  EXPECT_TRUE(r1.OnPeerBatch(PeerBatch("r2", false)).need_full());
  EXPECT_FALSE(r1.OnPeerBatch(PeerBatch("r2", false)).need_full());
  EXPECT_FALSE(r1.OnPeerBatch(PeerBatch("r3", true)).need_full());
  EXPECT_FALSE(r1.OnPeerBatch(PeerBatch("r3", false)).need_full());
}

TEST_F(ResourceStateTest, ApplyAppAssignsIncreasingGenerations) {
  ResourceState state(Options("r1"), clock_);
  pb::App a1 = state.ApplyApp(App("web"));
  pb::App a2 = state.ApplyApp(App("web"));  // same wall-clock microsecond
  pb::App b = state.ApplyApp(App("ocr"));
  EXPECT_GT(a1.generation(), 0u);
  EXPECT_GT(a2.generation(), a1.generation());
  EXPECT_GT(b.generation(), a2.generation());
  EXPECT_TRUE(state.urgent());

  auto out = state.Flush();
  EXPECT_TRUE(out.apps_changed);
  ASSERT_NE(out.update, nullptr);
  EXPECT_EQ(out.update->apps_size(), 2);
  EXPECT_EQ(out.peer->apps_size(), 2);
  EXPECT_FALSE(state.Flush().apps_changed);
}

TEST_F(ResourceStateTest, PeerAppWithOlderGenerationIsIgnored) {
  ResourceState state(Options("r1"), clock_);
  pb::App mine = state.ApplyApp(App("web", "mine"));
  pb::App old = App("web", "old");
  old.set_generation(mine.generation() - 1);
  pb::PeerBatch b = PeerBatch("r2", true);
  *b.add_apps() = old;
  (void)state.OnPeerBatch(b);
  ASSERT_EQ(state.Apps().size(), 1u);
  EXPECT_EQ(state.Apps()[0].spec_yaml(), "mine");

  pb::App newer = App("web", "newer");
  newer.set_generation(mine.generation() + 10);
  pb::PeerBatch b2 = PeerBatch("r2", false);
  *b2.add_apps() = newer;
  (void)state.OnPeerBatch(b2);
  EXPECT_EQ(state.Apps()[0].spec_yaml(), "newer");
  // Our next apply is newer still.
  EXPECT_GT(state.ApplyApp(App("web", "again")).generation(), newer.generation());
}

TEST_F(ResourceStateTest, DeletedAppTombstoneTravelsToPeersAndBlocksOlderResurrection) {
  ResourceState r1(Options("r1"), clock_);
  ResourceState r2(Options("r2"), clock_);
  pb::App app = r1.ApplyApp(App("web"));
  (void)r2.OnPeerBatch(*r1.Flush().peer);
  ASSERT_TRUE(HasApp(r2, "web"));

  ASSERT_TRUE(r1.DeleteApp("web").ok());
  EXPECT_TRUE(r1.urgent());
  EXPECT_FALSE(HasApp(r1, "web"));
  auto out = r1.Flush();
  EXPECT_TRUE(out.apps_changed);
  ASSERT_EQ(out.peer->deleted_apps_size(), 1);
  const std::string key = out.peer->deleted_apps(0);
  ASSERT_EQ(key.rfind("web@", 0), 0u) << key;
  EXPECT_GT(std::stoull(key.substr(4)), app.generation());
  ASSERT_NE(out.update, nullptr);
  ASSERT_EQ(out.update->deleted_apps_size(), 1);
  EXPECT_EQ(out.update->deleted_apps(0), key);

  (void)r2.OnPeerBatch(*out.peer);
  EXPECT_FALSE(HasApp(r2, "web"));

  // A third server that missed the deletion still pushes the old spec: it stays deleted.
  pb::PeerBatch stale = PeerBatch("r3", true);
  *stale.add_apps() = app;
  (void)r2.OnPeerBatch(stale);
  (void)r1.OnPeerBatch(stale);
  EXPECT_FALSE(HasApp(r2, "web"));
  EXPECT_FALSE(HasApp(r1, "web"));
  // And a full batch carries the tombstone for peers that connect later.
  pb::PeerBatch full = r2.FullPeerBatch();
  ASSERT_EQ(full.deleted_apps_size(), 1);
  EXPECT_EQ(full.deleted_apps(0), key);
}

TEST_F(ResourceStateTest, DeleteUnknownAppIsNotFound) {
  ResourceState state(Options("r1"), clock_);
  EXPECT_EQ(state.DeleteApp("nope").code(), StatusCode::kNotFound);
  (void)state.ApplyApp(App("web"));
  ASSERT_TRUE(state.DeleteApp("web").ok());
  EXPECT_EQ(state.DeleteApp("web").code(), StatusCode::kNotFound);
}

TEST_F(ResourceStateTest, WatchSnapshotCarriesDeletions) {
  ResourceState state(Options("r1"), clock_);
  const uint64_t generation = state.ApplyApp(App("web")).generation();
  ASSERT_TRUE(state.DeleteApp("web").ok());
  (void)state.Flush();
  ResourceState::Subscription sub = state.Subscribe();
  ASSERT_NE(sub.snapshot, nullptr);
  EXPECT_EQ(sub.snapshot->apps_size(), 0);
  ASSERT_EQ(sub.snapshot->deleted_apps_size(), 1) << "a scheduler starting now would never release web's leftovers";
  const std::string& key = sub.snapshot->deleted_apps(0);
  ASSERT_EQ(key.rfind("web@", 0), 0u) << key;
  EXPECT_GE(std::stoull(key.substr(4)), generation) << "a deletion outranks the app it deletes";
}

TEST_F(ResourceStateTest, WatcherGetsSnapshotThenEveryUpdateExactlyOnce) {
  ResourceState state(Options("r1"), clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 1)).ok());
  (void)state.ApplyApp(App("web"));
  (void)state.Flush();

  ResourceState::Subscription sub = state.Subscribe();
  ASSERT_NE(sub.snapshot, nullptr);
  EXPECT_TRUE(sub.snapshot->full());
  ASSERT_EQ(sub.snapshot->nodes_size(), 1);
  EXPECT_EQ(sub.snapshot->nodes(0).node_id(), "n1");
  EXPECT_EQ(sub.snapshot->apps_size(), 1);
  auto none = state.Next(sub.id);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);

  std::vector<std::shared_ptr<const pb::ViewUpdate>> flushed;
  for (uint64_t v = 2; v <= 5; ++v) {
    clock_.Advance(milliseconds(100));
    ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", v)).ok());
    if (v == 3) {
      ASSERT_TRUE(state.OnHeartbeat(2, NodeAt("n2", 1)).ok());
    }
    flushed.push_back(state.Flush().update);
    ASSERT_NE(flushed.back(), nullptr);
    (void)state.Flush();  // an empty interval queues nothing
  }
  for (size_t i = 0; i < flushed.size(); ++i) {
    auto next = state.Next(sub.id);
    ASSERT_TRUE(next.ok());
    ASSERT_NE(*next, nullptr) << "update " << i << " missing";
    EXPECT_EQ(next->get(), flushed[i].get()) << "updates out of order at " << i;
    const pb::NodeStatus* n1 = Find((*next)->nodes(), "n1");
    ASSERT_NE(n1, nullptr);
    EXPECT_EQ(n1->version(), i + 2);
  }
  auto after = state.Next(sub.id);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(*after, nullptr) << "an update delivered twice";

  state.Unsubscribe(sub.id);
  EXPECT_EQ(state.Next(sub.id).status().code(), StatusCode::kNotFound);
}

TEST_F(ResourceStateTest, WatcherThatFallsBehindIsCutOff) {
  ResourceOptions o = Options("r1");
  o.max_watch_queue = 2;
  ResourceState state(o, clock_);
  auto slow = state.Subscribe();
  auto fast = state.Subscribe();
  for (uint64_t v = 1; v <= 3; ++v) {
    ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", v)).ok());
    ASSERT_NE(state.Flush().update, nullptr);
    if (v < 3) {  // the fast watcher keeps up
      auto got = state.Next(fast.id);
      ASSERT_TRUE(got.ok());
      ASSERT_NE(*got, nullptr);
    }
  }
  // The slow one held max_watch_queue updates when the third came.
  auto cut = state.Next(slow.id);
  EXPECT_EQ(cut.status().code(), StatusCode::kResourceExhausted);
  auto got = state.Next(fast.id);
  ASSERT_TRUE(got.ok());
  ASSERT_NE(*got, nullptr);
  EXPECT_EQ(Find((*got)->nodes(), "n1")->version(), 3u);
  // A cut-off watcher stays cut off; a new subscription starts from a fresh snapshot.
  EXPECT_EQ(state.Next(slow.id).status().code(), StatusCode::kResourceExhausted);
  auto again = state.Subscribe();
  EXPECT_EQ(again.snapshot->nodes(0).version(), 3u);
}

TEST_F(ResourceStateTest, OfflineNodesAreDroppedAfterRetention) {
  ResourceOptions o = Options("r1");
  o.offline_retention = minutes(10);
  ResourceState state(o, clock_);
  ASSERT_TRUE(state.OnHeartbeat(1, NodeAt("n1", 1)).ok());
  ASSERT_TRUE(state.OnHeartbeat(2, NodeAt("n2", 1)).ok());
  state.OnStreamClosed(1, /*goodbye=*/true);
  (void)state.Flush();
  EXPECT_EQ(state.known_nodes(), 2u);

  for (int i = 0; i < 599; ++i) {
    clock_.Advance(seconds(1));
    ASSERT_TRUE(state.OnHeartbeat(2, NodeAt("n2", 1)).ok());
    (void)state.Flush();
  }
  EXPECT_EQ(state.known_nodes(), 2u) << "still listed (offline) within offline_retention";
  EXPECT_TRUE(InSnapshot(state, "n1").has_value());
  clock_.Advance(seconds(1));
  (void)state.Flush();
  EXPECT_EQ(state.known_nodes(), 1u);
  EXPECT_FALSE(InSnapshot(state, "n1").has_value());
  EXPECT_TRUE(Online(state, "n2"));
}

// A node a peer's batch brings in already offline (a peer's full batch lists the offline nodes it
// still retains) is kept for offline_retention from when we learned of it, not dropped at once.
TEST_F(ResourceStateTest, OfflineNodeLearnedFromPeerIsRetained) {
  ResourceState r1(Options("r1"), clock_);
  (void)r1.OnPeerBatch(PeerBatch("r2", true, {HomedOn(NodeAt("n1", 3), "r2", clock_, /*online=*/false)}));
  EXPECT_EQ(r1.known_nodes(), 1u);
  clock_.Advance(milliseconds(100));
  (void)r1.Flush();
  EXPECT_EQ(r1.known_nodes(), 1u) << "dropped at once instead of after offline_retention";
}

// A peer silent for peer_timeout orphans its nodes; when it pushes again, even with ordinary
// (non-full) batches, the nodes orphaned by that silence are its own again (and a full batch is
// requested), so they do not go offline while their home vouches for them.
TEST_F(ResourceStateTest, PeerResumingKeepalivesReadoptsItsNodes) {
  ResourceState r1(Options("r1"), clock_);
  (void)r1.OnPeerBatch(PeerBatch("r2", true, {HomedOn(NodeAt("n1", 1), "r2", clock_)}));
  Run(r1, milliseconds(1200));    // r2 late once: silent for a moment
  for (int i = 0; i < 50; ++i) {  // then back, every 100 ms, for 5 s
    clock_.Advance(milliseconds(100));
    (void)r1.OnPeerBatch(PeerBatch("r2", false));
    (void)r1.Flush();
  }
  EXPECT_TRUE(Online(r1, "n1")) << "its home pushes again, yet the node was declared offline";
}

}  // namespace
}  // namespace chorus::compute
