#include "live/memory_store.h"

#include <gtest/gtest.h>

namespace chorus::live {
namespace {

StoredMessage Stored(uint64_t id, int64_t at, std::string type, int32_t priority, std::string gain = "") {
  StoredMessage m;
  m.id = id;
  m.created_at = at;
  m.type = std::move(type);
  m.priority = priority;
  m.gain_key = std::move(gain);
  m.json = std::make_shared<const std::string>("{\"id\":\"" + std::to_string(id) + "\"}");
  return m;
}

PollResult RunQuery(MemoryPollStore& store, PollQuery q) {
  PollResult out;
  bool called = false;
  store.Query(std::move(q), [&](Result<PollResult> r) {
    ASSERT_TRUE(r.ok());
    out = std::move(*r);
    called = true;
  });
  EXPECT_TRUE(called);
  return out;
}

std::vector<uint64_t> Ids(const PollResult& r) {
  std::vector<uint64_t> ids;
  for (const auto& m : r.messages) ids.push_back(m.id);
  return ids;
}

TEST(MemoryPollStoreTest, SinceUntilTypesAndOrder) {
  MemoryPollStore store({.max_per_type = 100, .max_age_ms = 60'000});
  store.Append("r1", {Stored(1, 1000, "chat", 200), Stored(2, 1001, "gift", 600), Stored(3, 1002, "chat", 200),
                      Stored(4, 1003, "pk", 500)}, nullptr);
  store.Append("r2", {Stored(9, 1000, "chat", 200)}, nullptr);
  auto all = RunQuery(store, {.room = "r1", .since = 999, .until = 2000, .limit = 15});
  EXPECT_EQ(Ids(all), (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_EQ(all.newest, 1003);
  auto after = RunQuery(store, {.room = "r1", .since = 1001, .until = 1002, .limit = 15});
  EXPECT_EQ(Ids(after), (std::vector<uint64_t>{3}));  // since exclusive, until inclusive
  EXPECT_EQ(after.newest, 1002);
  auto chats = RunQuery(store, {.room = "r1", .since = 0, .until = 2000, .limit = 15, .types = {"chat", "nope"}});
  EXPECT_EQ(Ids(chats), (std::vector<uint64_t>{1, 3}));
  auto none = RunQuery(store, {.room = "r1", .since = 1003, .until = 2000, .limit = 15});
  EXPECT_TRUE(none.messages.empty());
  EXPECT_EQ(none.newest, 1003);  // stays at since
  EXPECT_TRUE(RunQuery(store, {.room = "unknown", .since = 0, .until = 2000, .limit = 15}).messages.empty());
}

TEST(MemoryPollStoreTest, OverLimitHighestPriorityFirstThenTimeOrder) {
  MemoryPollStore store({.max_per_type = 100, .max_age_ms = 60'000});
  store.Append("r", {Stored(1, 1000, "chat", 200), Stored(2, 1001, "gift", 600), Stored(3, 1002, "chat", 201),
                     Stored(4, 1003, "notify", 100), Stored(5, 1004, "gift", 650)}, nullptr);
  auto r = RunQuery(store, {.room = "r", .since = 0, .until = 2000, .limit = 3});
  EXPECT_EQ(Ids(r), (std::vector<uint64_t>{2, 3, 5}));  // chosen by priority, returned by time
  EXPECT_EQ(r.candidates, 5u);
  EXPECT_EQ(r.newest, 1004);  // the skipped ones are not offered again
}

TEST(MemoryPollStoreTest, GainKeepsNewestOnly) {
  MemoryPollStore store({.max_per_type = 100, .max_age_ms = 60'000});
  store.Append("r", {Stored(1, 1000, "pk", 500, "score"), Stored(2, 1001, "pk", 500, "score"),
                     Stored(3, 1002, "chat", 200), Stored(4, 1003, "pk", 500, "score")}, nullptr);
  EXPECT_EQ(Ids(RunQuery(store, {.room = "r", .since = 0, .until = 2000, .limit = 15})), (std::vector<uint64_t>{3, 4}));
}

TEST(MemoryPollStoreTest, RetentionByCountAndAge) {
  MemoryPollStore store({.max_per_type = 3, .max_age_ms = 10'000});
  for (uint64_t i = 1; i <= 5; ++i) store.Append("r", {Stored(i, 1000 + static_cast<int64_t>(i), "chat", 200)}, nullptr);
  EXPECT_EQ(Ids(RunQuery(store, {.room = "r", .since = 0, .until = 99'999, .limit = 15})), (std::vector<uint64_t>{3, 4, 5}));
  // A gift 20 s later ages the old chats out of the room on append.
  store.Append("r", {Stored(6, 21'000, "gift", 600)}, nullptr);
  EXPECT_EQ(Ids(RunQuery(store, {.room = "r", .since = 0, .until = 99'999, .limit = 15})), (std::vector<uint64_t>{6}));
  EXPECT_EQ(store.rooms(), 1u);
  store.Sweep(40'000);
  EXPECT_EQ(store.rooms(), 0u);
}

}  // namespace
}  // namespace chorus::live
