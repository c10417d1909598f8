#include "redis/sync_client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/engines.h"

namespace chorus::redis {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// A blocking hiredis connection to one server: the test's independent view, and how it drives
// resharding (CLUSTER SETSLOT, MIGRATE) behind the client's back.
class Direct {
 public:
  explicit Direct(int port) : c_(redisConnectWithTimeout("127.0.0.1", port, timeval{10, 0}), redisFree) {
    if (c_ != nullptr && c_->err == 0) (void)redisSetTimeout(c_.get(), timeval{10, 0});
  }
  bool ok() const { return c_ != nullptr && c_->err == 0; }

  // The reply as text: strings and statuses as they are, integers in decimal, errors as
  // "ERR: <text>", nil as "(nil)", arrays as their element count in brackets.
  std::string Run(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c_.get(), static_cast<int>(args.size()), argv.data(), lens.data()));
    if (r == nullptr) return "IOERR: " + std::string(c_->errstr);
    std::unique_ptr<redisReply, void (*)(void*)> guard(r, freeReplyObject);
    switch (r->type) {
      case REDIS_REPLY_STRING:
      case REDIS_REPLY_STATUS:
        return std::string(r->str, r->len);
      case REDIS_REPLY_ERROR:
        return "ERR: " + std::string(r->str, r->len);
      case REDIS_REPLY_INTEGER:
        return std::to_string(r->integer);
      case REDIS_REPLY_ARRAY:
        return "[" + std::to_string(r->elements) + "]";
      default:
        return "(nil)";
    }
  }

 private:
  std::unique_ptr<redisContext, void (*)(redisContext*)> c_;
};

std::string Address(const chorus::testing::EngineServer& server) {
  return server.host() + ":" + std::to_string(server.port());
}

// ---- slot function (no server) ----------------------------------------------------------------

TEST(SyncRedisSlotTest, Crc16AndKeySlotMatchRedisClusterSpec) {
  // The check value of CRC-16/XMODEM, quoted by the Redis Cluster specification.
  EXPECT_EQ(SyncRedis::Crc16("123456789"), 0x31C3);
  EXPECT_EQ(SyncRedis::Crc16(""), 0);
  EXPECT_EQ(SyncRedis::KeySlot("123456789"), 0x31C3 % 16384);
  EXPECT_EQ(SyncRedis::KeySlot("foo"), 12182);  // CLUSTER KEYSLOT foo
  // Hash tags: only the part between the first '{' and the next '}' counts, when non-empty.
  EXPECT_EQ(SyncRedis::KeySlot("{user1000}.following"), SyncRedis::KeySlot("{user1000}.followers"));
  EXPECT_EQ(SyncRedis::KeySlot("{user1000}.following"), SyncRedis::KeySlot("user1000"));
  EXPECT_EQ(SyncRedis::KeySlot("foo{bar}{zap}"), SyncRedis::KeySlot("bar"));
  EXPECT_EQ(SyncRedis::KeySlot("foo{{bar}}zap"), SyncRedis::KeySlot("{bar"));
  EXPECT_EQ(SyncRedis::KeySlot("foo{}{bar}"),
            SyncRedis::Crc16("foo{}{bar}") % 16384);                              // empty tag: whole key
  EXPECT_EQ(SyncRedis::KeySlot("foo{bar"), SyncRedis::Crc16("foo{bar") % 16384);  // unclosed: whole key
  EXPECT_NE(SyncRedis::KeySlot("{user1000}.a"), SyncRedis::KeySlot("{user1001}.a"));
}

TEST(SyncRedisSlotTest, CreateRejectsBadOptions) {
  EXPECT_EQ(SyncRedis::Create({}).status().code(), StatusCode::kInvalidArgument);
  SyncRedisOptions bad_address;
  bad_address.seeds = {"127.0.0.1"};
  EXPECT_EQ(SyncRedis::Create(bad_address).status().code(), StatusCode::kInvalidArgument);
  SyncRedisOptions two_standalone;
  two_standalone.mode = SyncRedisOptions::Mode::kStandalone;
  two_standalone.seeds = {"127.0.0.1:1", "127.0.0.1:2"};
  EXPECT_EQ(SyncRedis::Create(two_standalone).status().code(), StatusCode::kInvalidArgument);
  SyncRedisOptions no_pool;
  no_pool.seeds = {"127.0.0.1:1"};
  no_pool.pool_size = 0;
  EXPECT_EQ(SyncRedis::Create(no_pool).status().code(), StatusCode::kInvalidArgument);
}

// ---- one server -------------------------------------------------------------------------------

class SyncRedisTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = chorus::testing::RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }

  SyncRedisOptions Options() const {
    SyncRedisOptions o;
    o.seeds = {Address(*server_)};
    o.connect_timeout = seconds(2);
    o.command_timeout = seconds(10);  // generous: the machine may be busy compiling
    o.pool_size = 2;
    return o;
  }

  std::unique_ptr<SyncRedis> NewClient(SyncRedisOptions options) {
    auto client = SyncRedis::Create(std::move(options));
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(client).value() : nullptr;
  }

  std::unique_ptr<chorus::testing::RedisServer> server_;
};

TEST_F(SyncRedisTest, CommandsRoundTripBinarySafe) {
  auto client = NewClient(Options());  // kAuto: asks the server
  ASSERT_NE(client, nullptr);
  EXPECT_FALSE(client->cluster());
  const std::string key("k\0ey\r\n", 6);
  const std::string value("\0va\r\nlue\xff", 10);
  auto set = client->Command({"SET", key, value});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_TRUE(set->is_status());
  EXPECT_EQ(set->str, "OK");
  auto get = client->Command({"GET", key});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  ASSERT_TRUE(get->is_string()) << get->DebugString();
  EXPECT_EQ(get->str, value);
  auto missing = client->Command({"GET", "absent"});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->is_nil());
  auto pushed = client->Command({"RPUSH", "list", "a", ""});
  ASSERT_TRUE(pushed.ok());
  ASSERT_TRUE(pushed->is_integer());
  EXPECT_EQ(pushed->integer, 2);
  auto range = client->Command({"LRANGE", "list", "0", "-1"});
  ASSERT_TRUE(range.ok());
  ASSERT_TRUE(range->is_array());
  ASSERT_EQ(range->elements.size(), 2u);
  EXPECT_EQ(range->elements[1].str, "");

  // Another client library sees exactly the bytes that were sent.
  Direct direct(server_->port());
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(direct.Run({"GET", key}), value);
}

TEST_F(SyncRedisTest, PipelineRepliesComeBackInOrderWithPerCommandErrors) {
  auto client = NewClient(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Command({"SET", "text", "not a number"}).ok());
  std::vector<std::vector<std::string>> batch;
  for (int i = 0; i < 100; ++i) {
    if (i % 3 == 0) batch.push_back({"SET", "k" + std::to_string(i), "v" + std::to_string(i)});
    if (i % 3 == 1) batch.push_back({"INCRBY", "counter", std::to_string(i)});
    if (i % 3 == 2) batch.push_back({"GET", "k" + std::to_string(i - 2)});
  }
  batch.push_back({"INCR", "text"});        // an error in the middle of a batch
  batch.push_back({"LPUSH", "text", "x"});  // WRONGTYPE
  batch.push_back({"GET", "k0"});           // still answered, in its place
  auto results = client->Pipeline(batch);
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  ASSERT_EQ(results->size(), batch.size());
  int64_t counter = 0;
  for (int i = 0; i < 100; ++i) {
    const Result<RedisReply>& r = (*results)[static_cast<size_t>(i)];
    ASSERT_TRUE(r.ok()) << i << ": " << r.status().ToString();
    if (i % 3 == 0) {
      EXPECT_EQ(r->str, "OK");
    }
    if (i % 3 == 1) {
      counter += i;
      EXPECT_EQ(r->integer, counter) << i;
    }
    if (i % 3 == 2) {
      EXPECT_EQ(r->str, "v" + std::to_string(i - 2)) << i;
    }
  }
  const Result<RedisReply>& incr = (*results)[100];
  EXPECT_EQ(incr.status().code(), StatusCode::kInternal);
  EXPECT_THAT(incr.status().message(), StartsWith("redis: ERR value is not an integer"));
  const Result<RedisReply>& wrongtype = (*results)[101];
  EXPECT_EQ(wrongtype.status().code(), StatusCode::kInternal);
  EXPECT_THAT(wrongtype.status().message(), StartsWith("redis: WRONGTYPE"));
  ASSERT_TRUE((*results)[102].ok());
  EXPECT_EQ((*results)[102]->str, "v0");

  // Errors nested in an array stay elements.
  auto eval = client->Command({"EVAL", "return {1, redis.error_reply('boom')}", "0"});
  ASSERT_TRUE(eval.ok()) << eval.status().ToString();
  ASSERT_TRUE(eval->is_array());
  ASSERT_EQ(eval->elements.size(), 2u);
  EXPECT_TRUE(eval->elements[1].is_error());
}

TEST_F(SyncRedisTest, ConnectionStateCommandsAreRefusedBeforeSending) {
  auto client = NewClient(Options());
  ASSERT_NE(client, nullptr);
  for (const char* name : {"MULTI", "exec", "WATCH", "SUBSCRIBE", "SELECT"}) {
    auto r = client->Command({name, "x"});
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << name;
  }
  EXPECT_EQ(client->Command({}).status().code(), StatusCode::kInvalidArgument);
  // One bad command fails the whole batch, and nothing of it is sent.
  auto batch = client->Pipeline({{"SET", "sent", "1"}, {"MULTI"}});
  EXPECT_EQ(batch.status().code(), StatusCode::kInvalidArgument);
  Direct direct(server_->port());
  EXPECT_EQ(direct.Run({"EXISTS", "sent"}), "0");
}

TEST_F(SyncRedisTest, ServerDownIsUnavailableAndRestartRecoversOnTheNextCall) {
  auto client = NewClient(Options());
  ASSERT_NE(client, nullptr);
  // Fill the pool: these connections are idle when the server goes away.
  ASSERT_TRUE(client->Pipeline({{"SET", "a", "1"}, {"SET", "b", "2"}}).ok());
  server_->Stop();
  for (int i = 0; i < 3; ++i) {
    auto r = client->Command({"GET", "a"});
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  }
  auto batch = client->Pipeline({{"GET", "a"}, {"GET", "b"}});
  ASSERT_TRUE(batch.ok());
  for (const auto& r : *batch) EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);

  Status restarted = server_->Restart();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  // The very first call after the restart works: stale connections are noticed before use.
  auto set = client->Command({"SET", "a", "again"});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  auto get = client->Command({"GET", "a"});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->str, "again");

  // A restart while idle connections sit in the pool: still no failed call.
  ASSERT_TRUE(server_->Restart().ok());
  auto after = client->Command({"GET", "a"});
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_TRUE(after->is_nil());  // no persistence
}

TEST_F(SyncRedisTest, AutoModeNeedsAServerButExplicitModeDoesNot) {
  server_->Stop();
  auto auto_mode = SyncRedis::Create(Options());
  EXPECT_EQ(auto_mode.status().code(), StatusCode::kUnavailable) << auto_mode.status().ToString();
  SyncRedisOptions standalone = Options();
  standalone.mode = SyncRedisOptions::Mode::kStandalone;
  auto client = NewClient(standalone);
  ASSERT_NE(client, nullptr);
  EXPECT_EQ(client->Command({"PING"}).status().code(), StatusCode::kUnavailable);
  ASSERT_TRUE(server_->Restart().ok());
  auto pong = client->Command({"PING"});
  ASSERT_TRUE(pong.ok()) << pong.status().ToString();
  EXPECT_EQ(pong->str, "PONG");
}

TEST_F(SyncRedisTest, ReplyLaterThanCommandTimeoutIsDeadlineExceededAndTheConnectionIsNotReused) {
  SyncRedisOptions options = Options();
  options.command_timeout = milliseconds(200);
  options.pool_size = 1;  // the next command would get the same connection if it were kept
  auto client = NewClient(options);
  ASSERT_NE(client, nullptr);
  // BLPOP answers (nil) after 2 s, long after the client stopped waiting.
  auto blocked = client->Command({"BLPOP", "empty", "2"});
  EXPECT_EQ(blocked.status().code(), StatusCode::kDeadlineExceeded) << blocked.status().ToString();
  auto set = client->Command({"SET", "k", "v"});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_EQ(set->str, "OK");
  auto get = client->Command({"GET", "k"});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->str, "v");
}

TEST_F(SyncRedisTest, ManyThreadsShareASmallPool) {
  auto client = NewClient(Options());  // pool_size 2
  ASSERT_NE(client, nullptr);
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        bool ok = false;
        if (i % 2 == 0) {
          ok = client->Command({"INCR", "shared"}).ok();
        } else {
          auto r = client->Pipeline({{"INCR", "shared"}, {"SET", "t" + std::to_string(t), "x"}});
          ok = r.ok() && (*r)[0].ok() && (*r)[1].ok();
        }
        if (!ok) failures.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto total = client->Command({"GET", "shared"});
  ASSERT_TRUE(total.ok());
  EXPECT_EQ(total->str, std::to_string(kThreads * kPerThread));
}

// ---- a 3-master cluster -----------------------------------------------------------------------

class SyncRedisClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = chorus::testing::RedisClusterServer::Start(3);
    ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
    cluster_ = std::move(cluster).value();
  }

  SyncRedisOptions Options() const {
    SyncRedisOptions o;
    o.seeds = {cluster_->addresses().front()};  // one seed is enough: the map names the rest
    o.connect_timeout = seconds(2);
    o.command_timeout = seconds(10);
    return o;
  }

  std::unique_ptr<SyncRedis> NewClient(SyncRedisOptions options) {
    auto client = SyncRedis::Create(std::move(options));
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    return client.ok() ? std::move(client).value() : nullptr;
  }

  // The index of the node whose Start() range holds `slot`.
  size_t OwnerAtStart(int slot) const {
    for (size_t i = 0; i < cluster_->size(); ++i) {
      auto [first, last] = cluster_->slot_range(i);
      if (slot >= first && slot <= last) return i;
    }
    ADD_FAILURE() << "slot " << slot << " in no range";
    return 0;
  }

  std::string AddressOf(size_t i) const { return Address(cluster_->node(i)); }

  // Moves `slot` from node `from` to node `to`, as redis-cli --cluster reshard does, in two
  // steps: Begin() marks it migrating/importing; Move() copies keys; Finish() assigns it.
  void BeginMigration(int slot, size_t from, size_t to) {
    Direct src(cluster_->node(from).port());
    Direct dst(cluster_->node(to).port());
    ASSERT_EQ(dst.Run({"CLUSTER", "SETSLOT", std::to_string(slot), "IMPORTING", cluster_->node_id(from)}),
              "OK");
    ASSERT_EQ(src.Run({"CLUSTER", "SETSLOT", std::to_string(slot), "MIGRATING", cluster_->node_id(to)}),
              "OK");
  }
  void MoveKey(const std::string& key, size_t from, size_t to) {
    Direct src(cluster_->node(from).port());
    ASSERT_EQ(src.Run({"MIGRATE", "127.0.0.1", std::to_string(cluster_->node(to).port()), key, "0", "5000"}),
              "OK");
  }
  void FinishMigration(int slot, size_t to) {
    // The new owner first, as the specification recommends, then everyone else.
    std::vector<size_t> order = {to};
    for (size_t i = 0; i < cluster_->size(); ++i) {
      if (i != to) order.push_back(i);
    }
    for (size_t i : order) {
      Direct node(cluster_->node(i).port());
      ASSERT_EQ(node.Run({"CLUSTER", "SETSLOT", std::to_string(slot), "NODE", cluster_->node_id(to)}), "OK")
          << i;
    }
  }

  std::unique_ptr<chorus::testing::RedisClusterServer> cluster_;
};

TEST_F(SyncRedisClusterTest, KeySlotAgreesWithTheServer) {
  auto client = NewClient(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->cluster());
  std::vector<std::string> keys = {"",
                                   "a",
                                   "foo",
                                   "123456789",
                                   "{user1000}.following",
                                   "foo{}{bar}",
                                   "foo{{bar}}zap",
                                   "{",
                                   "}{x}",
                                   std::string("\0\xff", 2)};
  for (int i = 0; i < 200; ++i) keys.push_back("likes:count:" + std::to_string(i * 7919));
  std::vector<std::vector<std::string>> batch;
  for (const auto& k : keys) batch.push_back({"CLUSTER", "KEYSLOT", k});
  auto results = client->Pipeline(batch);
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE((*results)[i].ok()) << (*results)[i].status().ToString();
    EXPECT_EQ((*results)[i]->integer, SyncRedis::KeySlot(keys[i])) << "key #" << i;
  }
}

TEST_F(SyncRedisClusterTest, KeysSpreadOverAllMastersAndPipelinesKeepOrder) {
  auto client = NewClient(Options());
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->cluster());
  // The map names every master, learnt from one seed.
  std::set<std::string> masters;
  for (int slot = 0; slot < SyncRedis::kSlots; ++slot) {
    auto m = client->MasterForSlot(slot);
    ASSERT_TRUE(m.has_value()) << slot;
    masters.insert(*m);
  }
  EXPECT_EQ(masters, std::set<std::string>({AddressOf(0), AddressOf(1), AddressOf(2)}));

  constexpr int kKeys = 300;
  std::vector<std::vector<std::string>> writes;
  for (int i = 0; i < kKeys; ++i)
    writes.push_back({"SET", "key:" + std::to_string(i), "value" + std::to_string(i)});
  auto written = client->Pipeline(writes);
  ASSERT_TRUE(written.ok()) << written.status().ToString();
  for (const auto& r : *written) ASSERT_TRUE(r.ok()) << r.status().ToString();

  // Each key landed on the master that owns its slot, and every master got some.
  std::vector<int> per_node(cluster_->size(), 0);
  for (size_t n = 0; n < cluster_->size(); ++n) {
    Direct direct(cluster_->node(n).port());
    per_node[n] = std::stoi(direct.Run({"DBSIZE"}));
  }
  for (int i = 0; i < kKeys; i += 37) {
    const std::string key = "key:" + std::to_string(i);
    Direct owner(cluster_->node(OwnerAtStart(SyncRedis::KeySlot(key))).port());
    EXPECT_EQ(owner.Run({"GET", key}), "value" + std::to_string(i)) << key;
  }
  EXPECT_EQ(per_node[0] + per_node[1] + per_node[2], kKeys);
  for (size_t n = 0; n < cluster_->size(); ++n) EXPECT_GT(per_node[n], 0) << "node " << n;

  // A read batch interleaving nodes, misses and counters comes back in the order sent.
  std::vector<std::vector<std::string>> reads;
  for (int i = kKeys - 1; i >= 0; --i) {
    reads.push_back({"GET", "key:" + std::to_string(i)});
    if (i % 10 == 0) reads.push_back({"GET", "missing:" + std::to_string(i)});
    if (i % 25 == 0) reads.push_back({"INCRBY", "ctr:" + std::to_string(i % 4), "2"});
  }
  auto read = client->Pipeline(reads);
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  ASSERT_EQ(read->size(), reads.size());
  std::map<std::string, int64_t> counters;
  for (size_t j = 0; j < reads.size(); ++j) {
    const auto& r = (*read)[j];
    ASSERT_TRUE(r.ok()) << j << ": " << r.status().ToString();
    const std::string& key = reads[j][1];
    if (key.starts_with("key:")) {
      EXPECT_EQ(r->str, "value" + key.substr(4)) << j;
    } else if (key.starts_with("missing:")) {
      EXPECT_TRUE(r->is_nil()) << j;
    } else {
      counters[key] += 2;
      EXPECT_EQ(r->integer, counters[key]) << j;
    }
  }

  // Several threads at once, each with its own batches.
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        std::vector<std::vector<std::string>> batch;
        for (int i = t; i < kKeys; i += 7) batch.push_back({"GET", "key:" + std::to_string(i)});
        auto got = client->Pipeline(batch);
        if (!got.ok()) {
          wrong.fetch_add(1);
          continue;
        }
        for (size_t j = 0; j < batch.size(); ++j) {
          if (!(*got)[j].ok() || (*got)[j]->str != "value" + batch[j][1].substr(4)) wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST_F(SyncRedisClusterTest, MultiKeyCommandsNeedOneSlot) {
  auto client = NewClient(Options());
  ASSERT_NE(client, nullptr);
  auto set = client->Command({"MSET", "{user1000}.following", "3", "{user1000}.followers", "5"});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  auto get = client->Command({"MGET", "{user1000}.following", "{user1000}.followers"});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  ASSERT_EQ(get->elements.size(), 2u);
  EXPECT_EQ(get->elements[0].str, "3");
  EXPECT_EQ(get->elements[1].str, "5");

  // "a" and "b" hash to different slots: refused before anything is sent.
  ASSERT_NE(SyncRedis::KeySlot("a"), SyncRedis::KeySlot("b"));
  auto cross = client->Command({"MSET", "a", "1", "b", "2"});
  EXPECT_EQ(cross.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(cross.status().message(), HasSubstr("CROSSSLOT"));
  EXPECT_EQ(client->Command({"DEL", "a", "b"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Command({"EVAL", "return 1", "2", "a", "b"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Command({"ZUNIONSTORE", "{z}dst", "2", "{z}1", "b"}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Command({"EVAL", "return 1", "5", "a"}).status().code(), StatusCode::kInvalidArgument);
  auto exists = client->Command({"EXISTS", "a"});
  ASSERT_TRUE(exists.ok());
  EXPECT_EQ(exists->integer, 0);
  // EVAL with its keys in one slot runs on that slot's master.
  auto eval = client->Command({"EVAL", "return redis.call('GET', KEYS[1]) .. redis.call('GET', KEYS[2])", "2",
                               "{user1000}.following", "{user1000}.followers"});
  ASSERT_TRUE(eval.ok()) << eval.status().ToString();
  EXPECT_EQ(eval->str, "35");

  // A command whose key is not args[1]: routed on the key the caller names.
  auto added = client->CommandForKey("{feed}", {"XADD", "{feed}s", "*", "f", "v"});
  ASSERT_TRUE(added.ok()) << added.status().ToString();
  auto read = client->CommandForKey("{feed}", {"XREAD", "COUNT", "1", "STREAMS", "{feed}s", "0"});
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  ASSERT_TRUE(read->is_array());
  ASSERT_EQ(read->elements.size(), 1u);
}

TEST_F(SyncRedisClusterTest, MovedIsFollowedAndUpdatesTheMap) {
  SyncRedisOptions options = Options();
  options.min_refresh_interval = milliseconds(0);  // so the MOVED-triggered full reload happens now
  auto client = NewClient(options);
  ASSERT_NE(client, nullptr);
  const std::string key = "foo";
  const int slot = SyncRedis::KeySlot(key);
  const size_t from = OwnerAtStart(slot);
  const size_t to = (from + 1) % cluster_->size();
  ASSERT_TRUE(client->Command({"SET", key, "bar"}).ok());
  ASSERT_EQ(client->MasterForSlot(slot), AddressOf(from));
  const uint64_t loads_before = client->slot_map_loads();

  BeginMigration(slot, from, to);
  MoveKey(key, from, to);
  FinishMigration(slot, to);
  // The old owner now redirects: the client's map is stale.
  Direct old_owner(cluster_->node(from).port());
  EXPECT_EQ(old_owner.Run({"GET", key}), "ERR: MOVED " + std::to_string(slot) + " " + AddressOf(to));
  ASSERT_EQ(client->MasterForSlot(slot), AddressOf(from));

  auto get = client->Command({"GET", key});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->str, "bar");
  EXPECT_EQ(client->MasterForSlot(slot), AddressOf(to));
  EXPECT_GT(client->slot_map_loads(), loads_before);
  // Slots that did not move still point where they did.
  const int other = SyncRedis::KeySlot("a");
  if (other != slot) {
    EXPECT_EQ(client->MasterForSlot(other), AddressOf(OwnerAtStart(other)));
  }
  // Writes go to the new owner directly.
  ASSERT_TRUE(client->Command({"SET", key, "baz"}).ok());
  Direct new_owner(cluster_->node(to).port());
  EXPECT_EQ(new_owner.Run({"GET", key}), "baz");
}

TEST_F(SyncRedisClusterTest, AskIsFollowedOnceWhileASlotIsHalfMigrated) {
  auto client = NewClient(Options());  // default rate limit: the map must not change anyway
  ASSERT_NE(client, nullptr);
  const std::string moved_key = "{mig}moved";
  const std::string staying_key = "{mig}staying";
  const int slot = SyncRedis::KeySlot("mig");
  const size_t from = OwnerAtStart(slot);
  const size_t to = (from + 2) % cluster_->size();
  ASSERT_TRUE(client->Pipeline({{"SET", moved_key, "m"}, {"SET", staying_key, "s"}}).ok());

  BeginMigration(slot, from, to);
  MoveKey(moved_key, from, to);
  // The source now answers ASK for the moved key only.
  Direct src(cluster_->node(from).port());
  EXPECT_EQ(src.Run({"GET", moved_key}), "ERR: ASK " + std::to_string(slot) + " " + AddressOf(to));
  EXPECT_EQ(src.Run({"GET", staying_key}), "s");

  auto moved = client->Command({"GET", moved_key});
  ASSERT_TRUE(moved.ok()) << moved.status().ToString();
  EXPECT_EQ(moved->str, "m");
  auto staying = client->Command({"GET", staying_key});
  ASSERT_TRUE(staying.ok()) << staying.status().ToString();
  EXPECT_EQ(staying->str, "s");
  auto both = client->Pipeline({{"GET", staying_key}, {"GET", moved_key}, {"GET", staying_key}});
  ASSERT_TRUE(both.ok());
  ASSERT_TRUE((*both)[0].ok() && (*both)[1].ok() && (*both)[2].ok());
  EXPECT_EQ((*both)[0]->str, "s");
  EXPECT_EQ((*both)[1]->str, "m");
  EXPECT_EQ((*both)[2]->str, "s");
  // ASK does not re-point the slot.
  EXPECT_EQ(client->MasterForSlot(slot), AddressOf(from));

  // A multi-key read split across the two nodes gets TRYAGAIN, retried a bounded number of
  // times, then reported as transient.
  auto split = client->Command({"MGET", moved_key, staying_key});
  EXPECT_EQ(split.status().code(), StatusCode::kUnavailable) << split.status().ToString();
  EXPECT_THAT(split.status().message(), HasSubstr("TRYAGAIN"));

  // Finishing the migration: the client follows MOVED for the rest.
  MoveKey(staying_key, from, to);
  FinishMigration(slot, to);
  auto after = client->Command({"MGET", moved_key, staying_key});
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  ASSERT_EQ(after->elements.size(), 2u);
  EXPECT_EQ(after->elements[0].str, "m");
  EXPECT_EQ(after->elements[1].str, "s");
  EXPECT_EQ(client->MasterForSlot(slot), AddressOf(to));
}

TEST_F(SyncRedisClusterTest, StoppedMasterIsUnavailableForItsSlotsUntilItComesBack) {
  auto client = NewClient(Options());
  ASSERT_NE(client, nullptr);
  const std::string key = "foo";
  const size_t owner = OwnerAtStart(SyncRedis::KeySlot(key));
  ASSERT_TRUE(client->Command({"SET", key, "1"}).ok());
  cluster_->StopNode(owner);
  auto down = client->Command({"GET", key});
  EXPECT_EQ(down.status().code(), StatusCode::kUnavailable) << down.status().ToString();

  Status restarted = cluster_->RestartNode(owner);
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  auto set = client->Command({"SET", key, "2"});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  auto get = client->Command({"GET", key});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->str, "2");
}

}  // namespace
}  // namespace chorus::redis
