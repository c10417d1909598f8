#include "redis/redis_client.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "net/runtime.h"
#include "support/engines.h"
#include "support/eventually.h"
#include "support/subprocess.h"

namespace chorus::redis {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::AnyOf;
using ::testing::HasSubstr;

// Generous: the machine may be busy compiling, and ASan builds are slow. Waits return as soon as
// their condition holds; nothing asserts how long anything took.
constexpr auto kWait = seconds(30);

bool WaitFor(const std::function<bool()>& pred) { return testing::Eventually(pred, kWait); }

// A blocking hiredis connection: the test's independent view of the server.
class SyncRedis {
 public:
  SyncRedis(const std::string& host, int port)
      : c_(redisConnectWithTimeout(host.c_str(), port, timeval{10, 0}), redisFree) {}
  bool ok() const { return c_ != nullptr && c_->err == 0; }

  // Runs one command; the reply as RedisReply-like text via its type and string/integer.
  std::unique_ptr<redisReply, void (*)(void*)> Run(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    void* reply = redisCommandArgv(c_.get(), static_cast<int>(args.size()), argv.data(), lens.data());
    return {static_cast<redisReply*>(reply), freeReplyObject};
  }

 private:
  std::unique_ptr<redisContext, void (*)(redisContext*)> c_;
};

class RedisClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = chorus::testing::RedisServer::Start();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    auto runtime = net::Runtime::Create({.shards = 1, .pin_threads = false, .seed = 7});
    ASSERT_TRUE(runtime.ok()) << runtime.status().ToString();
    runtime_ = std::move(runtime).value();
    runtime_->Start();
  }

  void TearDown() override {
    if (runtime_ != nullptr && !stopped_) {
      for (auto& c : clients_) OnShard([&] { c->Close(); });
      runtime_->Stop();
    }
    clients_.clear();  // after Stop, before the Runtime (see redis_client.h)
    runtime_.reset();
    server_.reset();
  }

  net::Shard& shard() { return runtime_->shard(0); }

  RedisOptions Options() const {
    RedisOptions o;
    o.host = server_->host();
    o.port = server_->port();
    o.connect_timeout = seconds(5);
    o.command_timeout = seconds(10);
    o.reconnect_min = milliseconds(10);
    o.reconnect_max = milliseconds(200);
    return o;
  }

  // A started client; does not wait for the connection.
  std::shared_ptr<RedisClient> NewClient(const RedisOptions& options) {
    auto client = RedisClient::Create(shard(), options);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    if (!client.ok()) return nullptr;
    clients_.push_back(*client);
    (*client)->Connect();
    return *client;
  }

  std::shared_ptr<RedisClient> ConnectedClient() {
    auto client = NewClient(Options());
    EXPECT_TRUE(client != nullptr && WaitFor([&] { return client->connected(); })) << "never connected";
    return client;
  }

  // Runs fn on the shard and waits for it.
  void OnShard(std::function<void()> fn) {
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    shard().Post([fn = std::move(fn), done] {
      fn();
      done->set_value();
    });
    ASSERT_EQ(future.wait_for(kWait), std::future_status::ready);
  }

  // One command from the test thread (Command posts itself to the shard); waits for `done`.
  Result<RedisReply> Run(RedisClient& client, std::vector<std::string> args) {
    auto promise = std::make_shared<std::promise<Result<RedisReply>>>();
    auto future = promise->get_future();
    client.Command(std::move(args), [promise](Result<RedisReply> r) { promise->set_value(std::move(r)); });
    if (future.wait_for(kWait) != std::future_status::ready) return Internal("test: no callback in time");
    return future.get();
  }

  std::unique_ptr<chorus::testing::RedisServer> server_;
  std::unique_ptr<net::Runtime> runtime_;
  std::vector<std::shared_ptr<RedisClient>> clients_;
  bool stopped_ = false;  // the test stopped the runtime itself
};

TEST_F(RedisClientTest, SetGetIsBinarySafe) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  const std::string key("k\0ey\r\n", 6);
  const std::string value("\0va\r\nlue\xff\x01 \"", 13);

  auto set = Run(*client, {"SET", key, value});
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_TRUE(set->is_status());
  EXPECT_EQ(set->str, "OK");

  auto get = Run(*client, {"GET", key});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  ASSERT_TRUE(get->is_string()) << get->DebugString();
  EXPECT_EQ(get->str, value);

  // Another client library sees exactly the bytes that were sent.
  SyncRedis sync(server_->host(), server_->port());
  ASSERT_TRUE(sync.ok());
  auto direct = sync.Run({"GET", key});
  ASSERT_NE(direct, nullptr);
  ASSERT_EQ(direct->type, REDIS_REPLY_STRING);
  EXPECT_EQ(std::string(direct->str, direct->len), value);

  auto missing = Run(*client, {"GET", "absent"});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->is_nil());

  // Integers and arrays, including empty and NUL-only elements.
  auto pushed = Run(*client, {"RPUSH", "list", "a", "", std::string(1, '\0')});
  ASSERT_TRUE(pushed.ok()) << pushed.status().ToString();
  ASSERT_TRUE(pushed->is_integer());
  EXPECT_EQ(pushed->integer, 3);
  auto range = Run(*client, {"LRANGE", "list", "0", "-1"});
  ASSERT_TRUE(range.ok());
  ASSERT_TRUE(range->is_array());
  ASSERT_EQ(range->elements.size(), 3u);
  EXPECT_EQ(range->elements[0].str, "a");
  EXPECT_EQ(range->elements[1].str, "");
  EXPECT_EQ(range->elements[2].str, std::string(1, '\0'));
}

// Values far larger than hiredis's 16 KiB read chunk and the socket buffers: replies span many
// read events and commands many partial writes.
TEST_F(RedisClientTest, LargeValuesSpanManyReadsAndWrites) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  std::string big(4 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7919 % 251);
  struct State {
    std::vector<Result<RedisReply>> replies;
    std::promise<void> done;
  };
  auto state = std::make_shared<State>();
  OnShard([&] {
    for (int i = 0; i < 3; ++i) {
      client->Command({"SET", "big" + std::to_string(i), big}, [](Result<RedisReply>) {});
    }
    for (int i = 0; i < 3; ++i) {
      client->Command({"GET", "big" + std::to_string(i)}, [state](Result<RedisReply> r) {
        state->replies.push_back(std::move(r));
        if (state->replies.size() == 3) state->done.set_value();
      });
    }
  });
  ASSERT_EQ(state->done.get_future().wait_for(kWait), std::future_status::ready);
  for (const auto& r : state->replies) {
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(r->is_string());
    EXPECT_TRUE(r->str == big) << "a " << r->str.size() << "-byte value came back different";
  }
}

TEST_F(RedisClientTest, ThousandPipelinedIncrsAnswerInOrderOnTheShard) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  static constexpr size_t kCommands = 1000;
  struct State {
    std::vector<int64_t> values;
    bool all_on_shard = true;
    std::promise<void> done;
  };
  auto state = std::make_shared<State>();
  net::Shard* s = &shard();
  // All issued from one shard task, before any reply can be read: they share the connection's
  // output buffer and travel as one pipeline.
  OnShard([&] {
    for (size_t i = 0; i < kCommands; ++i) {
      client->Command({"INCR", "counter"}, [state, s](Result<RedisReply> r) {
        state->all_on_shard = state->all_on_shard && s->IsCurrent();
        state->values.push_back(r.ok() && r->is_integer() ? r->integer : -1);
        if (state->values.size() == kCommands) state->done.set_value();
      });
    }
  });
  ASSERT_EQ(state->done.get_future().wait_for(kWait), std::future_status::ready);
  std::vector<int64_t> expected;
  for (int64_t i = 1; i <= static_cast<int64_t>(kCommands); ++i) expected.push_back(i);
  EXPECT_EQ(state->values, expected);
  EXPECT_TRUE(state->all_on_shard);
}

TEST_F(RedisClientTest, ErrorReplyIsAStatusAndTheConnectionKeepsWorking) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(Run(*client, {"SET", "str", "v"}).ok());

  auto wrong = Run(*client, {"LPUSH", "str", "x"});
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kInternal);
  EXPECT_THAT(wrong.status().message(), HasSubstr("WRONGTYPE"));

  auto unknown = Run(*client, {"NOSUCHCOMMAND"});
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("unknown command"));

  // An error nested in an array is an element, not a failed command.
  auto nested = Run(*client, {"EVAL", "return {1, {err='boom'}}", "0"});
  ASSERT_TRUE(nested.ok()) << nested.status().ToString();
  ASSERT_TRUE(nested->is_array()) << nested->DebugString();
  ASSERT_EQ(nested->elements.size(), 2u);
  EXPECT_TRUE(nested->elements[0].is_integer());
  EXPECT_TRUE(nested->elements[1].is_error());
  EXPECT_EQ(nested->elements[1].str, "boom");

  auto get = Run(*client, {"GET", "str"});
  ASSERT_TRUE(get.ok()) << get.status().ToString();
  EXPECT_EQ(get->str, "v");
}

TEST_F(RedisClientTest, EmptyCommandIsInvalid) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  auto r = Run(*client, {});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(RedisClientTest, CommandsFailFastWhileNothingListens) {
  RedisOptions o = Options();
  o.port = chorus::testing::PickFreePort();  // nothing listens there
  auto client = NewClient(o);
  ASSERT_NE(client, nullptr);
  auto r = Run(*client, {"PING"});
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(r.status().message(), HasSubstr("not connected"));
  // Retries keep failing and keep refusing commands rather than queueing them.
  ASSERT_TRUE(WaitFor([&] {
    auto again = Run(*client, {"PING"});
    return again.status().code() == StatusCode::kUnavailable &&
           again.status().message().find("refused") != std::string::npos;
  }));
  EXPECT_FALSE(client->connected());
}

TEST_F(RedisClientTest, CreateRejectsBadOptions) {
  RedisOptions o = Options();
  o.port = 0;
  EXPECT_EQ(RedisClient::Create(shard(), o).status().code(), StatusCode::kInvalidArgument);
  o = Options();
  o.host = "";
  EXPECT_EQ(RedisClient::Create(shard(), o).status().code(), StatusCode::kInvalidArgument);
  o = Options();
  o.command_timeout = Duration::zero();
  EXPECT_EQ(RedisClient::Create(shard(), o).status().code(), StatusCode::kInvalidArgument);
  o = Options();
  o.reconnect_max = o.reconnect_min / 2;
  EXPECT_EQ(RedisClient::Create(shard(), o).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(RedisClientTest, ResolvesAHostName) {
  RedisOptions o = Options();
  o.host = "localhost";
  auto client = NewClient(o);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitFor([&] { return client->connected(); }));
  auto r = Run(*client, {"PING"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->str, "PONG");
}

TEST_F(RedisClientTest, ServerStoppedThenRestartedOnTheSamePort) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(Run(*client, {"SET", "k", "before"}).ok());
  const int port = server_->port();

  server_->Stop();
  ASSERT_TRUE(WaitFor([&] { return !client->connected(); }));
  auto down = Run(*client, {"GET", "k"});
  EXPECT_EQ(down.status().code(), StatusCode::kUnavailable) << down.status().ToString();

  // A new server on the same port, as a restarted redis would be (no persistence: empty).
  auto dir = chorus::testing::TempDir::Create("chorus-redis-restart");
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  auto restarted = chorus::testing::Subprocess::Start({"redis-server", "--port", std::to_string(port),
                                                       "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                                       "no", "--dir", dir->path()});
  ASSERT_TRUE(restarted.ok()) << restarted.status().ToString();
  ASSERT_TRUE(chorus::testing::WaitForTcpPort(port, kWait).ok()) << (*restarted)->OutputTail();

  ASSERT_TRUE(WaitFor([&] { return client->connected(); }));
  auto fresh = Run(*client, {"GET", "k"});
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  EXPECT_TRUE(fresh->is_nil());
  ASSERT_TRUE(Run(*client, {"SET", "k", "after"}).ok());
  auto after = Run(*client, {"GET", "k"});
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->str, "after");

  // Closed while the server it talks to still runs; then the server goes first.
  OnShard([&] { client->Close(); });
  (*restarted)->Stop();
}

TEST_F(RedisClientTest, ReconnectsAfterTheServerKillsTheConnection) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  auto id = Run(*client, {"CLIENT", "ID"});
  ASSERT_TRUE(id.ok() && id->is_integer()) << id.status().ToString();

  SyncRedis admin(server_->host(), server_->port());
  ASSERT_TRUE(admin.ok());
  auto killed = admin.Run({"CLIENT", "KILL", "ID", std::to_string(id->integer)});
  ASSERT_NE(killed, nullptr);
  ASSERT_EQ(killed->type, REDIS_REPLY_INTEGER);
  ASSERT_EQ(killed->integer, 1);

  // Commands may fail while the client notices and reconnects; then a new connection answers.
  ASSERT_TRUE(WaitFor([&] {
    auto again = Run(*client, {"CLIENT", "ID"});
    return again.ok() && again->is_integer() && again->integer != id->integer;
  }));
  EXPECT_TRUE(client->connected());
}

TEST_F(RedisClientTest, UnansweredCommandTimesOutAndTheClientRecovers) {
  RedisOptions o = Options();
  o.command_timeout = milliseconds(300);
  auto client = NewClient(o);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(WaitFor([&] { return client->connected(); }));

  struct State {
    Mutex mu;
    std::vector<StatusCode> blpop GUARDED_BY(mu);
    std::vector<StatusCode> ping GUARDED_BY(mu);
  };
  auto state = std::make_shared<State>();
  // BLPOP on an empty list gets no reply for 20 s; the PING queued behind it neither.
  OnShard([&] {
    client->Command({"BLPOP", "empty-list", "20"}, [state](Result<RedisReply> r) {
      MutexLock lock(state->mu);
      state->blpop.push_back(r.status().code());
    });
    client->Command({"PING"}, [state](Result<RedisReply> r) {
      MutexLock lock(state->mu);
      state->ping.push_back(r.status().code());
    });
  });
  ASSERT_TRUE(WaitFor([&] {
    MutexLock lock(state->mu);
    return !state->blpop.empty() && !state->ping.empty();
  }));
  {
    MutexLock lock(state->mu);
    EXPECT_EQ(state->blpop, std::vector<StatusCode>{StatusCode::kDeadlineExceeded});
    ASSERT_EQ(state->ping.size(), 1u);
    EXPECT_THAT(state->ping[0], AnyOf(StatusCode::kDeadlineExceeded, StatusCode::kUnavailable));
  }
  // The silent connection was given up; a fresh one answers.
  ASSERT_TRUE(WaitFor([&] {
    auto r = Run(*client, {"PING"});
    return r.ok() && r->str == "PONG";
  }));
  // Nothing was delivered twice: no late reply reached a callback.
  OnShard([] {});
  MutexLock lock(state->mu);
  EXPECT_EQ(state->blpop.size(), 1u);
  EXPECT_EQ(state->ping.size(), 1u);
}

TEST_F(RedisClientTest, CloseFailsEveryInFlightCommandExactlyOnce) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  static constexpr int kCommands = 100;
  struct State {
    std::vector<int> calls = std::vector<int>(kCommands, 0);
    std::vector<StatusCode> codes = std::vector<StatusCode>(kCommands, StatusCode::kOk);
    int finished = 0;
  };
  auto state = std::make_shared<State>();  // touched on the shard only
  // A BLPOP holds the connection, so the PINGs behind it are sent but not answered.
  OnShard([&] {
    for (int i = 0; i < kCommands; ++i) {
      std::vector<std::string> args =
          i == 0 ? std::vector<std::string>{"BLPOP", "empty-list", "20"} : std::vector<std::string>{"PING"};
      client->Command(std::move(args), [state, i](Result<RedisReply> r) {
        ++state->calls[i];
        state->codes[i] = r.status().code();
        ++state->finished;
      });
    }
  });
  // Let the pipeline reach the server, then close with everything in flight.
  SyncRedis admin(server_->host(), server_->port());
  ASSERT_TRUE(admin.ok());
  ASSERT_TRUE(WaitFor([&] {
    auto blocked = admin.Run({"INFO", "clients"});
    return blocked != nullptr &&
           std::string(blocked->str, blocked->len).find("blocked_clients:1") != std::string::npos;
  }));
  OnShard([&] { client->Close(); });
  EXPECT_FALSE(client->connected());

  auto finished = [&] {
    int n = 0;
    OnShard([&] { n = state->finished; });
    return n == kCommands;
  };
  ASSERT_TRUE(WaitFor(finished));
  OnShard([&] {
    for (int i = 0; i < kCommands; ++i) {
      EXPECT_EQ(state->calls[i], 1) << "command " << i;
      EXPECT_EQ(state->codes[i], StatusCode::kUnavailable) << "command " << i;
    }
  });

  auto after = Run(*client, {"PING"});
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable);
  EXPECT_THAT(after.status().message(), HasSubstr("closed"));
  // Close is final: Connect does not revive the client.
  client->Connect();
  OnShard([] {});
  EXPECT_FALSE(client->connected());
}

// The supported shutdown without Close(): stop the runtime, then drop the client. The connection
// is released (the server sees it go) and nothing runs on the stopped shard.
TEST_F(RedisClientTest, DestroyedAfterRuntimeStopReleasesTheConnection) {
  auto client = ConnectedClient();
  ASSERT_NE(client, nullptr);
  auto called = std::make_shared<std::atomic<int>>(0);
  OnShard([&] {
    client->Command({"BLPOP", "empty-list", "20"}, [called](Result<RedisReply>) { ++*called; });
  });
  SyncRedis admin(server_->host(), server_->port());
  ASSERT_TRUE(admin.ok());
  auto clients = [&] {
    auto info = admin.Run({"INFO", "clients"});
    return info == nullptr ? std::string() : std::string(info->str, info->len);
  };
  ASSERT_TRUE(WaitFor([&] { return clients().find("blocked_clients:1") != std::string::npos; }));

  runtime_->Stop();
  stopped_ = true;
  client.reset();
  clients_.clear();  // the destructor runs here, on the test thread, with the shard stopped
  ASSERT_TRUE(WaitFor([&] { return clients().find("connected_clients:1\r\n") != std::string::npos; }))
      << clients();
  EXPECT_EQ(*called, 0);  // its completion was posted to a shard that no longer runs
}

TEST_F(RedisClientTest, AuthenticatesWithThePassword) {
  SyncRedis admin(server_->host(), server_->port());
  ASSERT_TRUE(admin.ok());
  auto set = admin.Run({"CONFIG", "SET", "requirepass", "s3cret"});
  ASSERT_NE(set, nullptr);
  ASSERT_EQ(set->type, REDIS_REPLY_STATUS);

  RedisOptions good = Options();
  good.password = "s3cret";
  auto authed = NewClient(good);
  ASSERT_NE(authed, nullptr);
  ASSERT_TRUE(WaitFor([&] { return authed->connected(); }));
  auto ping = Run(*authed, {"PING"});
  ASSERT_TRUE(ping.ok()) << ping.status().ToString();
  EXPECT_EQ(ping->str, "PONG");

  // Without a password the connection is up but the server refuses commands.
  auto anonymous = NewClient(Options());
  ASSERT_NE(anonymous, nullptr);
  ASSERT_TRUE(WaitFor([&] { return anonymous->connected(); }));
  auto refused = Run(*anonymous, {"PING"});
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(refused.status().message(), HasSubstr("NOAUTH"));

  // A wrong password never counts as connected; commands say why.
  RedisOptions bad = Options();
  bad.password = "wrong";
  auto rejected = NewClient(bad);
  ASSERT_NE(rejected, nullptr);
  ASSERT_TRUE(WaitFor([&] {
    auto r = Run(*rejected, {"PING"});
    return r.status().code() == StatusCode::kUnavailable &&
           r.status().message().find("AUTH failed") != std::string::npos;
  }));
  EXPECT_FALSE(rejected->connected());
}

}  // namespace
}  // namespace chorus::redis
