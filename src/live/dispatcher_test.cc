#include "live/dispatcher.h"

#include <gtest/gtest.h>

#include "base/clock.h"

namespace chorus::live {
namespace {

class DispatcherTest : public ::testing::Test {
 protected:
  MessagePtr Make(std::string type, int32_t priority, std::string gain_key = "") {
    auto m = std::make_shared<Message>();
    m->id = ++next_id_;
    m->room = "r1";
    m->type = std::move(type);
    m->priority = priority;
    m->created_at = now_ms_;
    m->gain_key = std::move(gain_key);
    m->payload = "{\"n\":" + std::to_string(m->id) + "}";
    Finalize(*m);
    return m;
  }
  static std::vector<uint64_t> Ids(const std::vector<MessagePtr>& block) {
    std::vector<uint64_t> ids;
    for (const auto& m : block) ids.push_back(m->id);
    return ids;
  }

  DispatcherOptions options_;
  uint64_t next_id_ = 0;
  int64_t now_ms_ = 1'800'000'000'000;
};

TEST_F(DispatcherTest, BlockIsAtMostBlockMaxHighestPriorityThenOldest) {
  options_.block_max = 4;
  options_.carry_min_priority = 1000;  // nothing carries: isolate selection
  RoomDispatcher d(&options_);
  auto chat1 = Make("chat", 200), gift_small = Make("gift", 600), chat2 = Make("chat", 200);
  auto gift_big = Make("gift", 650), pk = Make("pk", 500), notify = Make("notify", 100);
  for (const auto& m : {chat1, gift_small, chat2, gift_big, pk, notify}) d.Enqueue(m);
  auto block = d.Tick(now_ms_);
  EXPECT_EQ(Ids(block), (std::vector<uint64_t>{gift_big->id, gift_small->id, pk->id, chat1->id}));
  // chat2 and notify were over budget and below carry_min_priority.
  EXPECT_EQ(d.drops(DropReason::kOverBudget), 2u);
  EXPECT_TRUE(d.empty());
  EXPECT_TRUE(d.Tick(now_ms_ + 1000).empty());
}

TEST_F(DispatcherTest, SamePriorityIsOldestFirst) {
  options_.block_max = 2;
  RoomDispatcher d(&options_);
  auto a = Make("chat", 200), b = Make("chat", 200), c = Make("chat", 200);
  d.Enqueue(a);
  d.Enqueue(b);
  d.Enqueue(c);
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{a->id, b->id}));
}

TEST_F(DispatcherTest, HighPriorityCarriesIntoNextBlockBounded) {
  options_.block_max = 2;
  options_.carry_min_priority = 500;
  options_.carry_max = 2;
  RoomDispatcher d(&options_);
  std::vector<MessagePtr> gifts;
  for (int i = 0; i < 5; ++i) gifts.push_back(Make("gift", 600));
  auto chat = Make("chat", 200);
  for (const auto& g : gifts) d.Enqueue(g);
  d.Enqueue(chat);
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{gifts[0]->id, gifts[1]->id}));
  // gifts 2,3 carried (carry_max = 2), gift 4 dropped by the carry limit, chat over budget.
  EXPECT_EQ(d.drops(DropReason::kCarryLimit), 1u);
  EXPECT_EQ(d.drops(DropReason::kOverBudget), 1u);
  EXPECT_EQ(d.pending(), 2u);
  EXPECT_EQ(Ids(d.Tick(now_ms_ + 1000)), (std::vector<uint64_t>{gifts[2]->id, gifts[3]->id}));
}

TEST_F(DispatcherTest, CarriedMessagesStillExpire) {
  options_.block_max = 1;
  options_.max_age_ms["gift"] = 1500;
  RoomDispatcher d(&options_);
  auto g1 = Make("gift", 600), g2 = Make("gift", 600);
  d.Enqueue(g1);
  d.Enqueue(g2);
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{g1->id}));
  EXPECT_EQ(d.pending(), 1u);
  EXPECT_TRUE(d.Tick(now_ms_ + 2000).empty());
  EXPECT_EQ(d.drops(DropReason::kExpired), 1u);
}

TEST_F(DispatcherTest, ExpiryIsPerType) {
  options_.max_age_ms = {{"chat", 1000}, {"gift", 5000}};
  options_.default_max_age_ms = 3000;
  RoomDispatcher d(&options_);
  auto chat = Make("chat", 200), gift = Make("gift", 600), custom = Make("vote", 150);
  d.Enqueue(chat);
  d.Enqueue(gift);
  d.Enqueue(custom);
  // 2 s later: chat (1 s) expired; gift (5 s) and the business type (default 3 s) remain.
  EXPECT_EQ(Ids(d.Tick(now_ms_ + 2000)), (std::vector<uint64_t>{gift->id, custom->id}));
  EXPECT_EQ(d.drops(DropReason::kExpired), 1u);
}

TEST_F(DispatcherTest, GainMessagesKeepOnlyTheLatestValue) {
  RoomDispatcher d(&options_);
  auto s1 = Make("pk", 500, "pk:score"), chat = Make("chat", 200), s2 = Make("pk", 500, "pk:score");
  auto s3 = Make("pk", 500, "pk:score"), likes = Make("notify", 100, "likes");
  for (const auto& m : {s1, chat, s2, s3, likes}) d.Enqueue(m);
  EXPECT_EQ(d.coalesced(), 2u);
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{s3->id, chat->id, likes->id}));
  EXPECT_EQ(d.drops(DropReason::kOverBudget), 0u);
  // Once sent the key is free: a new value is queued again.
  auto s4 = Make("pk", 500, "pk:score");
  d.Enqueue(s4);
  EXPECT_EQ(Ids(d.Tick(now_ms_ + 1000)), (std::vector<uint64_t>{s4->id}));
}

TEST_F(DispatcherTest, GainMessageIsNotExpiredOrDroppedWhileNewest) {
  options_.block_max = 1;
  options_.max_age_ms["notify"] = 100;
  options_.carry_min_priority = 1000;
  RoomDispatcher d(&options_);
  auto gift = Make("gift", 600);
  auto likes = Make("notify", 100, "likes");
  d.Enqueue(gift);
  d.Enqueue(likes);
  // Over budget and (later) past its age: a plain notify would be dropped; the gain value stays.
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{gift->id}));
  EXPECT_EQ(Ids(d.Tick(now_ms_ + 5000)), (std::vector<uint64_t>{likes->id}));
  EXPECT_EQ(d.drops(DropReason::kExpired) + d.drops(DropReason::kOverBudget), 0u);
}

TEST_F(DispatcherTest, GainReplacementKeepsItsTurn) {
  options_.block_max = 1;
  RoomDispatcher d(&options_);
  auto score = Make("pk", 500, "score");
  auto other = Make("pk", 500);
  d.Enqueue(score);
  d.Enqueue(other);
  auto score2 = Make("pk", 500, "score");
  d.Enqueue(score2);  // replaces in place: still first in line
  EXPECT_EQ(d.pending(), 2u);
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{score2->id}));
  // A replacement at another priority moves to that priority's queue.
  auto score3 = Make("pk", 700, "score");
  auto score4 = Make("pk", 100, "score");
  d.Enqueue(score3);
  d.Enqueue(score4);
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{other->id}));
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{score4->id}));
  EXPECT_TRUE(d.empty());
}

TEST_F(DispatcherTest, OverflowDropsLowestOldestOrTheNewcomer) {
  options_.pending_max = 3;
  RoomDispatcher d(&options_);
  auto chat1 = Make("chat", 200), chat2 = Make("chat", 200), gift = Make("gift", 600);
  d.Enqueue(chat1);
  d.Enqueue(chat2);
  d.Enqueue(gift);
  auto notify = Make("notify", 100);
  d.Enqueue(notify);  // lower than everything pending: the newcomer goes
  EXPECT_EQ(d.drops(DropReason::kOverflow), 1u);
  auto pk = Make("pk", 500);
  d.Enqueue(pk);  // evicts the oldest of the lowest priority: chat1
  EXPECT_EQ(d.drops(DropReason::kOverflow), 2u);
  EXPECT_EQ(d.pending(), 3u);
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{gift->id, pk->id, chat2->id}));
}

TEST_F(DispatcherTest, OverflowNeverEvictsCurrentGainValues) {
  options_.pending_max = 2;
  RoomDispatcher d(&options_);
  auto score = Make("pk", 100, "score"), likes = Make("notify", 100, "likes");
  d.Enqueue(score);
  d.Enqueue(likes);
  auto chat = Make("chat", 200);
  d.Enqueue(chat);  // nothing evictable: the newcomer is dropped
  EXPECT_EQ(d.drops(DropReason::kOverflow), 1u);
  auto score2 = Make("pk", 100, "score");
  d.Enqueue(score2);  // a replacement is always accepted
  // The new score took the old one's place: still ahead of the (younger) likes value.
  EXPECT_EQ(Ids(d.Tick(now_ms_)), (std::vector<uint64_t>{score2->id, likes->id}));
}

TEST_F(DispatcherTest, SimulatedClockDrivesTicks) {
  SimulatedClock clock;
  options_.block_max = 20;
  RoomDispatcher d(&options_);
  std::vector<size_t> sizes;
  clock.RunEvery(std::chrono::seconds(1), [&] { sizes.push_back(d.Tick(clock.WallMillis()).size()); });
  now_ms_ = clock.WallMillis();
  for (int i = 0; i < 25; ++i) d.Enqueue(Make("gift", 600));
  clock.Advance(std::chrono::seconds(1));
  clock.Advance(std::chrono::seconds(1));
  clock.Advance(std::chrono::seconds(1));
  // 20 in the first block, the 5 carried in the second, then an empty tick.
  EXPECT_EQ(sizes, (std::vector<size_t>{20, 5, 0}));
}

}  // namespace
}  // namespace chorus::live
