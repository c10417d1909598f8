#include "live/redis_store.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "live/message.h"
#include "net/runtime.h"
#include "support/engines.h"
#include "support/eventually.h"

namespace chorus::live {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

// Generous: the machine may be busy and ASan is slow. Nothing asserts how long anything took.
constexpr auto kWait = seconds(30);

bool WaitFor(const std::function<bool()>& pred) { return testing::Eventually(pred, kWait); }

// A message as the live service stores it: JSON rendered by Finalize(), as in production.
StoredMessage Stored(uint64_t id, int64_t at, std::string type, int32_t priority, std::string gain = "") {
  Message msg;
  msg.id = id;
  msg.room = "r";
  msg.type = type;
  msg.priority = priority;
  msg.created_at = at;
  msg.payload = "{\"n\":" + std::to_string(id) + "}";
  msg.gain_key = gain;
  Finalize(msg);
  StoredMessage m;
  m.id = id;
  m.created_at = at;
  m.type = std::move(type);
  m.priority = priority;
  m.gain_key = std::move(gain);
  m.json = std::make_shared<const std::string>(msg.json);
  return m;
}

std::vector<uint64_t> Ids(const PollResult& r) {
  std::vector<uint64_t> ids;
  for (const auto& m : r.messages) ids.push_back(m.id);
  return ids;
}

class RedisPollStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = chorus::testing::RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    auto runtime = net::Runtime::Create({.shards = 2, .pin_threads = false, .seed = 11});
    ASSERT_TRUE(runtime.ok()) << runtime.status().ToString();
    runtime_ = std::move(runtime).value();
    runtime_->Start();
    store_ = NewStore({.max_per_type = 100, .max_age_ms = 60'000});
    ASSERT_NE(store_, nullptr);
  }

  void TearDown() override {
    if (runtime_ != nullptr) {
      for (auto& store : stores_) store->Close();
      for (uint32_t i = 0; i < runtime_->size(); ++i) OnShard(i, [] {});  // the posted Closes ran
      runtime_->Stop();
    }
    stores_.clear();  // after Stop, before the Runtime (see redis_store.h)
    store_ = nullptr;
    runtime_.reset();
    server_.reset();
  }

  redis::RedisOptions Options() const {
    redis::RedisOptions o;
    o.host = server_->host();
    o.port = server_->port();
    o.connect_timeout = seconds(5);
    o.command_timeout = seconds(10);
    o.reconnect_min = milliseconds(10);
    o.reconnect_max = milliseconds(200);
    return o;
  }

  // A store with its own clients, connected.
  RedisPollStore* NewStore(RetentionOptions retention) {
    auto store = RedisPollStore::Connect(*runtime_, Options(), retention);
    EXPECT_TRUE(store.ok()) << store.status().ToString();
    if (!store.ok()) return nullptr;
    RedisPollStore* s = store->get();
    stores_.push_back(std::move(store).value());
    EXPECT_TRUE(WaitFor([&] {
      return std::all_of(s->clients().begin(), s->clients().end(),
                         [](const auto& c) { return c->connected(); });
    })) << "clients never connected";
    return s;
  }

  void OnShard(uint32_t shard, std::function<void()> fn) {
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    runtime_->shard(shard).Post([fn = std::move(fn), done] {
      fn();
      done->set_value();
    });
    ASSERT_EQ(future.wait_for(kWait), std::future_status::ready);
  }

  // Appends on `shard` (the room's owner in the service) and waits for `done`.
  Status Append(RedisPollStore& store, std::string room, std::vector<StoredMessage> messages,
                uint32_t shard = 0) {
    auto promise = std::make_shared<std::promise<Status>>();
    auto future = promise->get_future();
    runtime_->shard(shard).Post(
        [&store, room = std::move(room), messages = std::move(messages), promise]() mutable {
          store.Append(room, std::move(messages), [promise](Status s) { promise->set_value(std::move(s)); });
        });
    if (future.wait_for(kWait) != std::future_status::ready)
      return Internal("test: no append callback in time");
    return future.get();
  }
  Status Append(std::string room, std::vector<StoredMessage> messages) {
    return Append(*store_, std::move(room), std::move(messages));
  }

  // Queries on `shard`; *answered_on receives the shard the callback ran on.
  Result<PollResult> Query(RedisPollStore& store, PollQuery q, uint32_t shard = 0,
                           int* answered_on = nullptr) {
    auto promise = std::make_shared<std::promise<std::pair<Result<PollResult>, int>>>();
    auto future = promise->get_future();
    runtime_->shard(shard).Post([&store, q = std::move(q), promise]() mutable {
      store.Query(std::move(q), [promise](Result<PollResult> r) {
        net::Shard* current = net::Runtime::Current();
        promise->set_value({std::move(r), current == nullptr ? -1 : static_cast<int>(current->index())});
      });
    });
    if (future.wait_for(kWait) != std::future_status::ready)
      return Internal("test: no query callback in time");
    auto [result, on] = future.get();
    if (answered_on != nullptr) *answered_on = on;
    return std::move(result);
  }
  Result<PollResult> Query(PollQuery q) { return Query(*store_, std::move(q)); }

  // A raw command through the store's shard-0 client, for looking at Redis directly.
  Result<redis::RedisReply> Redis(std::vector<std::string> args) {
    auto promise = std::make_shared<std::promise<Result<redis::RedisReply>>>();
    auto future = promise->get_future();
    store_->clients()[0]->Command(
        std::move(args), [promise](Result<redis::RedisReply> r) { promise->set_value(std::move(r)); });
    if (future.wait_for(kWait) != std::future_status::ready) return Internal("test: no reply in time");
    return future.get();
  }

  std::vector<std::string> Keys(const std::string& pattern) {
    std::vector<std::string> keys;
    auto r = Redis({"KEYS", pattern});
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (r.ok()) {
      for (const auto& e : r->elements) keys.push_back(e.str);
    }
    return keys;
  }

  int64_t Integer(std::vector<std::string> args) {
    auto r = Redis(std::move(args));
    EXPECT_TRUE(r.ok() && r->is_integer()) << r.status().ToString();
    return r.ok() ? r->integer : -1;
  }

  std::unique_ptr<chorus::testing::RedisServer> server_;
  std::unique_ptr<net::Runtime> runtime_;
  std::vector<std::unique_ptr<RedisPollStore>> stores_;
  RedisPollStore* store_ = nullptr;
};

TEST_F(RedisPollStoreTest, QueriesBySinceUntilTypesAndLimit) {
  ASSERT_TRUE(
      Append("r1", {Stored(1, 1000, "chat", 200), Stored(2, 1001, "gift", 600), Stored(3, 1002, "chat", 200),
                    Stored(4, 1003, "pk", 500), Stored(5, 1004, "vote", 150)})
          .ok());
  ASSERT_TRUE(Append("r2", {Stored(9, 1000, "chat", 200)}).ok());

  // No types: the standard ones and the business type "vote", found through the room's index.
  auto all = Query({.room = "r1", .since = 999, .until = 2000, .limit = 15});
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(Ids(*all), (std::vector<uint64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(all->newest, 1004);
  EXPECT_EQ(all->candidates, 5u);
  // What comes back is the stored JSON and the fields parsed out of it.
  const StoredMessage expected = Stored(2, 1001, "gift", 600);
  const StoredMessage& gift = all->messages[1];
  ASSERT_NE(gift.json, nullptr);
  EXPECT_EQ(*gift.json, *expected.json);
  EXPECT_EQ(gift.type, "gift");
  EXPECT_EQ(gift.priority, 600);
  EXPECT_EQ(gift.created_at, 1001);

  auto window = Query({.room = "r1", .since = 1001, .until = 1002, .limit = 15});
  ASSERT_TRUE(window.ok());
  EXPECT_EQ(Ids(*window), (std::vector<uint64_t>{3}));  // since exclusive, until inclusive
  EXPECT_EQ(window->newest, 1002);

  auto chats =
      Query({.room = "r1", .since = 0, .until = 2000, .limit = 15, .types = {"chat", "nope", "chat"}});
  ASSERT_TRUE(chats.ok());
  EXPECT_EQ(Ids(*chats), (std::vector<uint64_t>{1, 3}));

  auto votes = Query({.room = "r1", .since = 0, .until = 2000, .limit = 15, .types = {"vote"}});
  ASSERT_TRUE(votes.ok());
  EXPECT_EQ(Ids(*votes), (std::vector<uint64_t>{5}));

  auto limited = Query({.room = "r1", .since = 0, .until = 2000, .limit = 2});
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(Ids(*limited), (std::vector<uint64_t>{2, 4}));  // gift 600, pk 500
  EXPECT_EQ(limited->candidates, 5u);
  EXPECT_EQ(limited->newest, 1004);

  auto none = Query({.room = "r1", .since = 1004, .until = 2000, .limit = 15});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->messages.empty());
  EXPECT_EQ(none->newest, 1004);  // stays at since

  auto unknown = Query({.room = "unknown", .since = 0, .until = 2000, .limit = 15});
  ASSERT_TRUE(unknown.ok());
  EXPECT_TRUE(unknown->messages.empty());
}

TEST_F(RedisPollStoreTest, OverLimitHighestPriorityFirstThenTimeOrder) {
  ASSERT_TRUE(
      Append("r", {Stored(1, 1000, "chat", 200), Stored(2, 1001, "gift", 600), Stored(3, 1002, "chat", 201),
                   Stored(4, 1003, "notify", 100), Stored(5, 1004, "gift", 650)})
          .ok());
  auto r = Query({.room = "r", .since = 0, .until = 2000, .limit = 3});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Ids(*r), (std::vector<uint64_t>{2, 3, 5}));  // the three best, returned in time order
  EXPECT_EQ(r->candidates, 5u);
}

TEST_F(RedisPollStoreTest, GainMessagesCoalesceToTheNewest) {
  ASSERT_TRUE(Append("r", {Stored(1, 1000, "pk", 500, "pk:score"), Stored(2, 1001, "chat", 200),
                           Stored(3, 1002, "pk", 500, "pk:score")})
                  .ok());
  ASSERT_TRUE(Append("r", {Stored(4, 1003, "pk", 500, "pk:score")}).ok());
  auto r = Query({.room = "r", .since = 0, .until = 2000, .limit = 15});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Ids(*r), (std::vector<uint64_t>{2, 4}));
  ASSERT_EQ(r->messages.size(), 2u);
  EXPECT_EQ(r->messages[1].gain_key, "pk:score");
}

TEST_F(RedisPollStoreTest, RetentionByCountAndByAge) {
  RedisPollStore* store = NewStore({.max_per_type = 3, .max_age_ms = 10'000});
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(Append(*store, "r", {Stored(1, 1000, "chat", 200), Stored(2, 1001, "chat", 200)}).ok());
  ASSERT_TRUE(Append(*store, "r",
                     {Stored(3, 1002, "chat", 200), Stored(4, 1003, "chat", 200),
                      Stored(5, 1004, "chat", 200), Stored(6, 1004, "gift", 600)})
                  .ok());
  EXPECT_EQ(Integer({"ZCARD", "live:{r}:chat"}), 3);
  auto r = Query(*store, {.room = "r", .since = 0, .until = 2000, .limit = 15});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Ids(*r), (std::vector<uint64_t>{3, 4, 5, 6}));  // the newest three chats survive

  // 20 s later (in message time) the old chats are out of the 10 s window.
  ASSERT_TRUE(Append(*store, "r", {Stored(7, 21'000, "chat", 200)}).ok());
  EXPECT_EQ(Integer({"ZCARD", "live:{r}:chat"}), 1);
  auto later = Query(*store, {.room = "r", .since = 0, .until = 30'000, .limit = 15, .types = {"chat"}});
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(Ids(*later), (std::vector<uint64_t>{7}));

  // Idle rooms expire by themselves: every key carries a TTL of at most twice the window.
  for (const std::string key : {"live:{r}:chat", "live:{r}:gift", "live:{r}", "live:{r}:$wm"}) {
    const int64_t ttl = Integer({"PTTL", key});
    EXPECT_GT(ttl, 0) << key;
    EXPECT_LE(ttl, 20'000) << key;
  }
}

TEST_F(RedisPollStoreTest, QueriesNeverSeePastTheWatermark) {
  // A message stored without its append completing (as if the query ran between the ZADD and the
  // watermark SET of an append in flight) is held back until the watermark covers it.
  ASSERT_TRUE(Append("w", {Stored(1, 1000, "chat", 200)}).ok());
  ASSERT_TRUE(Redis({"ZADD", "live:{w}:gift", "1001", *Stored(2, 1001, "gift", 600).json}).ok());
  auto first = Query({.room = "w", .since = 0, .until = 99'999, .limit = 15});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(Ids(*first), (std::vector<uint64_t>{1}));
  EXPECT_EQ(first->newest, 1000);
  ASSERT_TRUE(Append("w", {Stored(3, 1002, "chat", 200)}).ok());
  auto second = Query({.room = "w", .since = first->newest, .until = 99'999, .limit = 15});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(Ids(*second), (std::vector<uint64_t>{2, 3}));  // the gift was not skipped
}

TEST_F(RedisPollStoreTest, KeysAreLiveRoomHashTagAndType) {
  const std::string room = "room:1.a-b_C";  // every character a room id may hold
  ASSERT_TRUE(Append(room, {Stored(1, 1000, "gift", 600), Stored(2, 1001, "chat", 200),
                            Stored(3, 1002, "chat", 200), Stored(4, 1003, "vote", 150)})
                  .ok());
  EXPECT_EQ(RedisPollStore::Key(room, "gift"), "live:{room:1.a-b_C}:gift");
  EXPECT_THAT(Keys("live:*"), UnorderedElementsAre("live:{room:1.a-b_C}:gift", "live:{room:1.a-b_C}:chat",
                                                   "live:{room:1.a-b_C}:vote", "live:{room:1.a-b_C}",
                                                   "live:{room:1.a-b_C}:$wm"));
  EXPECT_EQ(Keys("live:{room:1.a-b_C}:$wm").size(), 1u);
  EXPECT_EQ(Integer({"ZCARD", "live:{room:1.a-b_C}:gift"}), 1);
  EXPECT_EQ(Integer({"ZCARD", "live:{room:1.a-b_C}:chat"}), 2);
  EXPECT_EQ(Integer({"EXISTS", "live:{room:1.a-b_C}:pk"}), 0);
  // Score = created_at, member = the message JSON.
  auto chats = Redis({"ZRANGE", "live:{room:1.a-b_C}:chat", "0", "-1", "WITHSCORES"});
  ASSERT_TRUE(chats.ok()) << chats.status().ToString();
  ASSERT_EQ(chats->elements.size(), 4u);
  EXPECT_EQ(chats->elements[0].str, *Stored(2, 1001, "chat", 200).json);
  EXPECT_EQ(chats->elements[1].str, "1001");
  EXPECT_EQ(chats->elements[3].str, "1002");
  // The index: each type with its newest created_at.
  auto index = Redis({"ZRANGE", "live:{room:1.a-b_C}", "0", "-1", "WITHSCORES"});
  ASSERT_TRUE(index.ok());
  ASSERT_EQ(index->elements.size(), 6u);
  EXPECT_EQ(index->elements[0].str, "gift");
  EXPECT_EQ(index->elements[1].str, "1000");
  EXPECT_EQ(index->elements[2].str, "chat");
  EXPECT_EQ(index->elements[3].str, "1002");
}

// Another process (here: another store with its own connections) finds a business type it never
// appended itself.
TEST_F(RedisPollStoreTest, AnotherStoreSeesBusinessTypesWithoutNamingThem) {
  ASSERT_TRUE(Append("r", {Stored(1, 1000, "vote", 150), Stored(2, 1001, "quiz", 150)}).ok());
  RedisPollStore* other = NewStore({.max_per_type = 100, .max_age_ms = 60'000});
  ASSERT_NE(other, nullptr);
  auto r = Query(*other, {.room = "r", .since = 0, .until = 2000, .limit = 15});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Ids(*r), (std::vector<uint64_t>{1, 2}));
  // A type whose newest message is not after `since` is not even asked for; the answer is the same.
  auto after = Query(*other, {.room = "r", .since = 1000, .until = 2000, .limit = 15});
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(Ids(*after), (std::vector<uint64_t>{2}));
}

TEST_F(RedisPollStoreTest, AnswersOnTheCallingShard) {
  ASSERT_TRUE(Append(*store_, "r", {Stored(1, 1000, "chat", 200)}, /*shard=*/0).ok());
  for (uint32_t shard : {0u, 1u}) {
    int answered_on = -1;
    auto r = Query(*store_, {.room = "r", .since = 0, .until = 2000, .limit = 15}, shard, &answered_on);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(Ids(*r), (std::vector<uint64_t>{1}));
    EXPECT_EQ(answered_on, static_cast<int>(shard));
  }
}

TEST_F(RedisPollStoreTest, SkipsMembersThatAreNotStoredMessages) {
  ASSERT_TRUE(Append("r", {Stored(1, 1000, "chat", 200), Stored(3, 1002, "chat", 200)}).ok());
  ASSERT_TRUE(
      Redis({"ZADD", "live:{r}:chat", "1001", "not json", "1001", "{\"id\":\"x\"}", "1001", "[1]"}).ok());
  // A numeric id is accepted as well as the string Finalize() writes.
  ASSERT_TRUE(
      Redis({"ZADD", "live:{r}:chat", "1001", R"({"id":2,"type":"chat","priority":200,"created_at":1001})"})
          .ok());
  auto r = Query({.room = "r", .since = 0, .until = 2000, .limit = 15, .types = {"chat"}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Ids(*r), (std::vector<uint64_t>{1, 2, 3}));
}

TEST_F(RedisPollStoreTest, RedisDownIsUnavailable) {
  ASSERT_TRUE(Append("r", {Stored(1, 1000, "chat", 200)}).ok());
  server_->Stop();
  ASSERT_TRUE(WaitFor([&] {
    return std::none_of(store_->clients().begin(), store_->clients().end(),
                        [](const auto& c) { return c->connected(); });
  }));
  for (uint32_t shard : {0u, 1u}) {
    auto r = Query(*store_, {.room = "r", .since = 0, .until = 2000, .limit = 15}, shard);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
    EXPECT_THAT(r.status().message(), HasSubstr("redis poll store"));
    auto typed =
        Query(*store_, {.room = "r", .since = 0, .until = 2000, .limit = 15, .types = {"chat"}}, shard);
    EXPECT_EQ(typed.status().code(), StatusCode::kUnavailable);
  }
  Status appended = Append("r", {Stored(2, 1001, "chat", 200)});
  EXPECT_EQ(appended.code(), StatusCode::kUnavailable) << appended.ToString();
}

TEST_F(RedisPollStoreTest, CreateChecksClientsAndRetention) {
  const RetentionOptions retention{.max_per_type = 10, .max_age_ms = 1000};
  EXPECT_EQ(RedisPollStore::Create({}, retention).status().code(), StatusCode::kInvalidArgument);
  auto reversed = store_->clients();
  std::reverse(reversed.begin(), reversed.end());
  EXPECT_EQ(RedisPollStore::Create(reversed, retention).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(
      RedisPollStore::Create(store_->clients(), {.max_per_type = 0, .max_age_ms = 1000}).status().code(),
      StatusCode::kInvalidArgument);
  EXPECT_TRUE(RedisPollStore::Create(store_->clients(), retention).ok());
}

TEST_F(RedisPollStoreTest, EmptyAppendAndEmptyRangeAnswerInline) {
  bool appended = false;
  store_->Append("r", {}, [&](Status s) { appended = s.ok(); });
  EXPECT_TRUE(appended);
  bool queried = false;
  store_->Query({.room = "r", .since = 2000, .until = 2000, .limit = 15},
                [&](Result<PollResult> r) { queried = r.ok() && r->messages.empty() && r->newest == 2000; });
  EXPECT_TRUE(queried);
}

}  // namespace
}  // namespace chorus::live
