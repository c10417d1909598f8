#include "live/cluster.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "support/engines.h"
#include "support/eventually.h"

namespace chorus::live {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> Rooms(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back("room-" + std::to_string(i));
  return out;
}

TEST(RendezvousTest, StableAndIndependentOfOrder) {
  const std::vector<uint32_t> nodes = {3, 1, 7};
  const std::vector<uint32_t> shuffled = {7, 3, 1};
  for (const std::string& room : Rooms(200)) {
    auto a = RendezvousOwner(room, nodes);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a, RendezvousOwner(room, nodes));
    EXPECT_EQ(a, RendezvousOwner(room, shuffled));
    EXPECT_TRUE(*a == 1 || *a == 3 || *a == 7);
  }
  EXPECT_FALSE(RendezvousOwner("lobby", {}).has_value());
  EXPECT_EQ(RendezvousOwner("lobby", {5}), 5u);
  // A fixed value: every node, every build, every platform computes the same owner.
  EXPECT_EQ(RendezvousScore("lobby", 1), RendezvousScore("lobby", 1));
  EXPECT_NE(RendezvousScore("lobby", 1), RendezvousScore("lobby", 2));
  EXPECT_NE(RendezvousScore("lobby", 1), RendezvousScore("lobbz", 1));
}

TEST(RendezvousTest, SpreadsRoomsEvenly) {
  const std::vector<uint32_t> nodes = {1, 2, 3};
  std::map<uint32_t, int> count;
  for (const std::string& room : Rooms(3000)) ++count[*RendezvousOwner(room, nodes)];
  ASSERT_EQ(count.size(), 3u);
  for (const auto& [node, n] : count) {
    EXPECT_GT(n, 800) << "node " << node;  // 1000 expected
    EXPECT_LT(n, 1200) << "node " << node;
  }
}

TEST(RendezvousTest, MinimalMovementWhenANodeLeavesOrJoins) {
  const std::vector<uint32_t> three = {1, 2, 3};
  const std::vector<uint32_t> without2 = {1, 3};
  const std::vector<uint32_t> four = {1, 2, 3, 4};
  int moved_to_4 = 0;
  for (const std::string& room : Rooms(2000)) {
    const uint32_t before = *RendezvousOwner(room, three);
    // Node 2 leaves: only its rooms move; everyone else keeps theirs.
    const uint32_t after_leave = *RendezvousOwner(room, without2);
    if (before != 2) {
      EXPECT_EQ(after_leave, before) << room;
    } else {
      EXPECT_NE(after_leave, 2u);
    }
    // Node 4 joins: a room either stays or moves to node 4, never between old nodes.
    const uint32_t after_join = *RendezvousOwner(room, four);
    if (after_join != before) {
      EXPECT_EQ(after_join, 4u) << room;
      ++moved_to_4;
    }
  }
  EXPECT_GT(moved_to_4, 400);  // about a quarter of 2000
  EXPECT_LT(moved_to_4, 600);
}

TEST(SubjectTokenTest, DotsAreMappedOneToOne) {
  EXPECT_EQ(SubjectToken("a.b:c-d_e"), "a~b:c-d_e");
  EXPECT_EQ(IdFromSubjectToken(SubjectToken("x.y.z")), "x.y.z");
  EXPECT_EQ(SubjectToken("plain"), "plain");
}

TEST(ClusterWireTest, AnnouncementRoundTripsAndRejectsGarbage) {
  Announcement a;
  a.node = 7;
  a.boot = 0xFFFFFFFFFFFFFFF0ULL;  // above 2^53: carried as a string
  a.rooms = {{"lobby", 3, 1, 0}, {"a.b", 1, 0, 2}};
  auto back = DecodeAnnouncement(EncodeAnnouncement(a));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, a);
  for (const char* bad : {"", "[]", "{\"node\":1}", "{\"node\":-1,\"boot\":\"1\",\"rooms\":[]}",
                          "{\"node\":1,\"boot\":\"x\",\"rooms\":[]}", "{\"node\":1,\"boot\":\"1\",\"rooms\":[[\"r\",1]]}"}) {
    EXPECT_EQ(DecodeAnnouncement(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ClusterWireTest, FramesCarryBytesUnchanged) {
  EncodedFrame f1{std::make_shared<const std::string>(std::string("\x08\x00\xff", 3)),
                  std::make_shared<const std::string>("{\"frame\":\"block\"}")};
  EncodedFrame f2{std::make_shared<const std::string>(""), std::make_shared<const std::string>("{}")};
  const std::string wire = EncodeFrames(42, {f1, f2});
  auto back = DecodeFrames(wire);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->origin_boot, 42u);
  ASSERT_EQ(back->frames.size(), 2u);
  EXPECT_EQ(*back->frames[0].proto, *f1.proto);
  EXPECT_EQ(*back->frames[0].json, *f1.json);
  EXPECT_EQ(*back->frames[1].proto, "");
  EXPECT_EQ(*back->frames[1].json, "{}");
  for (size_t cut = 0; cut < wire.size(); ++cut) {
    EXPECT_FALSE(DecodeFrames(wire.substr(0, cut)).ok()) << cut;
  }
  EXPECT_FALSE(DecodeFrames(wire + "x").ok());
}

TEST(NodeTableTest, LiveSetOnlineSumsAndExpiry) {
  const SteadyTime t0{};
  NodeTable table(/*self=*/1, 1500ms);
  EXPECT_EQ(table.live(), std::vector<uint32_t>({1}));  // itself, before hearing anything
  EXPECT_FALSE(table.Observe({1, 11, {{"lobby", 2, 2, 0}}}, t0));  // its own echo changes nothing
  EXPECT_TRUE(table.Observe({2, 22, {{"lobby", 3, 3, 0}, {"other", 1, 1, 0}}}, t0));
  EXPECT_TRUE(table.Observe({3, 33, {}}, t0));
  EXPECT_FALSE(table.Observe({3, 33, {}}, t0 + 250ms));  // already known
  EXPECT_EQ(table.live(), std::vector<uint32_t>({1, 2, 3}));
  EXPECT_EQ(table.Online("lobby"), 5);
  EXPECT_EQ(table.Online("other"), 1);
  EXPECT_EQ(table.Rooms(), std::vector<std::string>({"lobby", "other"}));

  // A later announcement replaces the node's counts (rooms it no longer lists are gone).
  table.Observe({2, 22, {{"lobby", 1, 0, 2}}}, t0 + 500ms);
  EXPECT_EQ(table.Online("lobby"), 3);
  EXPECT_EQ(table.Online("other"), 0);

  // Node 3 falls silent: dead after 1.5 s, not before. This node never expires itself.
  EXPECT_FALSE(table.Expire(t0 + 1500ms));
  table.Observe({2, 22, {{"lobby", 1, 0, 0}}}, t0 + 1600ms);
  EXPECT_TRUE(table.Expire(t0 + 1800ms));
  EXPECT_EQ(table.live(), std::vector<uint32_t>({1, 2}));
  EXPECT_FALSE(table.Expire(t0 + 1900ms));

  // Marked dead (no responders on a forward): out until it announces again.
  EXPECT_TRUE(table.MarkDead(2));
  EXPECT_FALSE(table.MarkDead(2));
  EXPECT_FALSE(table.MarkDead(1));  // never itself
  EXPECT_EQ(table.live(), std::vector<uint32_t>({1}));
  EXPECT_EQ(table.Online("lobby"), 2);  // only its own count
  EXPECT_TRUE(table.Observe({2, 23, {}}, t0 + 2000ms));  // back, with a new boot id
  EXPECT_EQ(table.live(), std::vector<uint32_t>({1, 2}));
  EXPECT_EQ(table.OwnerOf("lobby"), RendezvousOwner("lobby", {1, 2}));
}

// Two NatsClusters on a real nats-server: announcements, ownership agreement, forwards and
// block subscriptions.
class RecordingHandlers {
 public:
  Cluster::Handlers Make(Cluster*& self) {
    Cluster::Handlers h;
    h.forward = [this, &self](std::string request, std::function<void(std::string)> reply) {
      reply("node" + std::to_string(self->self()) + ":" + request);
    };
    h.block = [this](const std::string& room, std::string_view data) {
      MutexLock lock(mu_);
      blocks_.emplace_back(room, std::string(data));
    };
    h.user = [](const std::string&, std::string_view) {};
    h.broadcast = [](std::string_view) {};
    h.presence = [this](const std::string& room, int64_t joins, int64_t leaves) {
      MutexLock lock(mu_);
      joins_[room] += joins;
      leaves_[room] += leaves;
    };
    h.state = [](bool) {};
    return h;
  }
  size_t blocks() const {
    MutexLock lock(mu_);
    return blocks_.size();
  }
  std::pair<std::string, std::string> block(size_t i) const {
    MutexLock lock(mu_);
    return blocks_.at(i);
  }
  int64_t joins(const std::string& room) const {
    MutexLock lock(mu_);
    auto it = joins_.find(room);
    return it == joins_.end() ? 0 : it->second;
  }

 private:
  mutable Mutex mu_;
  std::vector<std::pair<std::string, std::string>> blocks_ GUARDED_BY(mu_);
  std::map<std::string, int64_t> joins_ GUARDED_BY(mu_);
  std::map<std::string, int64_t> leaves_ GUARDED_BY(mu_);
};

TEST(NatsClusterTest, NodesAgreeForwardAndFanOutBlocks) {
  auto server = testing::NatsServer::Start();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  ClusterOptions options;
  options.enabled = true;
  options.nats_urls = {(*server)->url()};
  auto a = ConnectNatsCluster(options, 1);
  auto b = ConnectNatsCluster(options, 2);
  ASSERT_TRUE(a.ok() && b.ok());
  Cluster* ca = a->get();
  Cluster* cb = b->get();
  RecordingHandlers ha, hb;
  ASSERT_TRUE(ca->Start(ha.Make(ca)).ok());
  ASSERT_TRUE(cb->Start(hb.Make(cb)).ok());
  ASSERT_TRUE(testing::Eventually([&] { return ca->connected() && cb->connected(); }, 10s));

  // Members: 2 on node 1, 1 on node 2. The ticks announce them.
  ca->LocalChanged("lobby", 2, 0, 0);
  cb->LocalChanged("lobby", 1, 0, 0);
  auto tick_both = [&] {
    ca->Tick(SystemClock::Instance().Now());
    cb->Tick(SystemClock::Instance().Now());
  };
  ASSERT_TRUE(testing::Eventually(
      [&] {
        tick_both();
        return ca->LiveNodes().size() == 2 && cb->LiveNodes().size() == 2 && ca->Online("lobby") == 3 &&
               cb->Online("lobby") == 3;
      },
      10s));
  const uint32_t owner = *ca->OwnerOf("lobby");
  EXPECT_EQ(cb->OwnerOf("lobby"), owner);
  // Joins on both nodes reach the owner only (its own through its echo).
  ca->LocalChanged("lobby", 2, 2, 0);
  cb->LocalChanged("lobby", 1, 1, 0);
  RecordingHandlers& owner_h = owner == 1 ? ha : hb;
  RecordingHandlers& other_h = owner == 1 ? hb : ha;
  EXPECT_TRUE(testing::Eventually(
      [&] {
        tick_both();
        return owner_h.joins("lobby") == 3;
      },
      10s))
      << owner_h.joins("lobby");
  EXPECT_EQ(other_h.joins("lobby"), 0);

  // Forward: answered by the named node.
  std::atomic<int> answered{0};
  std::string answer;
  Mutex mu;
  ca->Forward(2, "hello", 5s, [&](Result<std::string> r) {
    MutexLock lock(mu);
    answer = r.ok() ? *r : r.status().ToString();
    ++answered;
  });
  ASSERT_TRUE(testing::Eventually([&] { return answered == 1; }, 10s));
  {
    MutexLock lock(mu);
    EXPECT_EQ(answer, "node2:hello");
  }
  // A node that is not there: no responders, at once.
  std::atomic<int> code{-1};
  ca->Forward(9, "x", 5s, [&](Result<std::string> r) { code = static_cast<int>(r.status().code()); });
  ASSERT_TRUE(testing::Eventually([&] { return code != -1; }, 10s));
  EXPECT_EQ(code, static_cast<int>(StatusCode::kUnavailable));

  // Blocks reach the nodes subscribed to the room, byte for byte; a room with a '.' works too.
  ca->SubscribeRoom("lobby");
  cb->SubscribeRoom("lobby");
  cb->SubscribeRoom("a.b");
  ca->SubscribeRoom("lobby");  // idempotent
  // The SUBs are on their way: publish until both saw one.
  ASSERT_TRUE(testing::Eventually(
      [&] {
        (void)ca->PublishBlock("lobby", std::string("\x00\x01payload", 9));
        return ha.blocks() > 0 && hb.blocks() > 0;
      },
      10s));
  EXPECT_EQ(ha.block(0), std::make_pair(std::string("lobby"), std::string("\x00\x01payload", 9)));
  EXPECT_EQ(hb.block(0), ha.block(0));
  ASSERT_TRUE(testing::Eventually(
      [&] {
        (void)ca->PublishBlock("a.b", "dotted");
        for (size_t i = 0; i < hb.blocks(); ++i) {
          if (hb.block(i).first == "a.b" && hb.block(i).second == "dotted") return true;
        }
        return false;
      },
      10s));

  // Node 2 leaves: node 1 sees it dead after dead_after (1.5 s) and owns everything.
  cb->Stop();
  b->reset();
  ASSERT_TRUE(testing::Eventually(
      [&] {
        ca->Tick(SystemClock::Instance().Now());
        return ca->LiveNodes() == std::vector<uint32_t>({1});
      },
      10s));
  EXPECT_EQ(ca->OwnerOf("lobby"), 1u);
  EXPECT_EQ(ca->Online("lobby"), 2);
  ca->Stop();
}

}  // namespace
}  // namespace chorus::live
