// End-to-end tests of the `chorus` binary: started as a real process on free loopback ports,
// driven over HTTP and gRPC, stopped with SIGTERM.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <csignal>
#include <nlohmann/json.hpp>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "chorus/likes/v1/likes.grpc.pb.h"
#include "chorus/live/v1/live.grpc.pb.h"
#include "chorus/system/v1/system.grpc.pb.h"
#include "support/engines.h"
#include "support/eventually.h"
#include "support/http_client.h"
#include "support/subprocess.h"

namespace chorus::testing {
namespace {

using namespace std::chrono_literals;

struct Chorus {
  std::unique_ptr<Subprocess> process;
  int http_port = 0;
  int grpc_port = 0;
};

// Starts `chorus up` on port 0 and learns the ports from its log.
Result<Chorus> StartChorus(const std::string& data_dir, std::vector<std::string> extra = {},
                           const std::string& command = "up") {
  std::vector<std::string> argv = {CHORUS_BIN, command, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                                   "--data-dir", data_dir, "--set", "runtime.pin_threads=false"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  Chorus c;
  CHORUS_ASSIGN_OR_RETURN(c.process, Subprocess::Start(argv, {}));
  CHORUS_ASSIGN_OR_RETURN(std::string http_line, c.process->WaitForLine("http listening on", 20s));
  CHORUS_ASSIGN_OR_RETURN(std::string grpc_line, c.process->WaitForLine("grpc listening on", 20s));
  // Readiness flips after the listeners are up; "[chorus] ready" is logged once it has.
  CHORUS_RETURN_IF_ERROR(c.process->WaitForLine("[chorus] ready", 20s).status());
  std::smatch m;
  if (!std::regex_search(http_line, m, std::regex(R"(127\.0\.0\.1:(\d+))"))) return Internal("no port: " + http_line);
  c.http_port = std::stoi(m[1]);
  if (!std::regex_search(grpc_line, m, std::regex(R"(127\.0\.0\.1:(\d+))"))) return Internal("no port: " + grpc_line);
  c.grpc_port = std::stoi(m[1]);
  return c;
}

// Runs a chorus subcommand to completion; returns exit code and output.
std::pair<int, std::string> RunChorus(std::vector<std::string> args,
                                      std::vector<std::pair<std::string, std::string>> env = {}) {
  args.insert(args.begin(), CHORUS_BIN);
  SubprocessOptions options;
  options.env = std::move(env);
  auto p = Subprocess::Start(args, options);
  if (!p.ok()) return {-100, p.status().ToString()};
  auto code = (*p)->Wait(20s);
  return {code.ok() ? *code : -101, (*p)->output()};
}

class ChorusUpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create("chorus_up_test");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = std::make_unique<TempDir>(std::move(*dir));
  }
  std::string DataDir() const { return dir_->path() + "/data"; }
  std::unique_ptr<TempDir> dir_;
};

TEST_F(ChorusUpTest, ServesHealthReadinessMetricsAndWebRoot) {
  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();

  auto health = HttpGet(c->http_port, "/healthz");
  ASSERT_TRUE(health.ok()) << health.status().ToString();
  EXPECT_EQ(health->status, 200);
  EXPECT_EQ(nlohmann::json::parse(health->body)["status"], "ok");

  auto ready = HttpGet(c->http_port, "/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(ready->status, 200);
  EXPECT_EQ(nlohmann::json::parse(ready->body)["ready"], true);

  auto metrics = HttpGet(c->http_port, "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_NE(metrics->Header("content-type").find("text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(metrics->body.find("# TYPE chorus_http_requests_total counter"), std::string::npos) << metrics->body;
  EXPECT_NE(metrics->body.find("chorus_http_requests_total{code=\"200\"}"), std::string::npos);

  auto index = HttpGet(c->http_port, "/");
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->status, 200);
  EXPECT_NE(index->Header("content-type").find("text/html"), std::string::npos);
  EXPECT_NE(index->body.find("Chorus"), std::string::npos);

  auto traversal = HttpGet(c->http_port, "/../CMakeLists.txt");
  ASSERT_TRUE(traversal.ok());
  EXPECT_EQ(traversal->status, 404);

  ASSERT_TRUE(c->process->Signal(SIGTERM).ok());
  auto code = c->process->Wait(15s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0) << c->process->OutputTail();
}

TEST_F(ChorusUpTest, GrpcSystemServiceAnswers) {
  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(c->grpc_port), grpc::InsecureChannelCredentials());
  auto stub = chorus::system::v1::System::NewStub(channel);
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    chorus::system::v1::GetVersionResponse res;
    grpc::Status st = stub->GetVersion(&ctx, {}, &res);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(res.version(), "0.1.0");
  }
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    chorus::system::v1::CheckReadyResponse res;
    grpc::Status st = stub->CheckReady(&ctx, {}, &res);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(res.ready());
    ASSERT_GE(res.services_size(), 1);
    EXPECT_EQ(res.services(0).name(), "core");
  }
}

TEST_F(ChorusUpTest, BadRequestsGet4xxAndServerKeepsServing) {
  auto c = StartChorus(DataDir(), {"--set", "http.max_header_bytes=4096", "--set", "http.max_body_bytes=1024"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  struct Case {
    std::string raw;
    int status;
  } cases[] = {
      {"GARBAGE\r\n\r\n", 400},
      {"GET /healthz HTTP/9.9\r\n\r\n", 400},
      {"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(8000, 'a') + "\r\n\r\n", 431},
      {"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + std::string(5000, 'b'), 413},
      {"GET /nope%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400},
      {"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405},
  };
  for (const auto& tc : cases) {
    auto client = HttpClient::Connect(c->http_port);
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE(client->SendRaw(tc.raw).ok());
    auto reply = client->ReadReply();
    ASSERT_TRUE(reply.ok()) << tc.raw.substr(0, 40) << ": " << reply.status().ToString();
    EXPECT_EQ(reply->status, tc.status) << tc.raw.substr(0, 40);
    EXPECT_NE(reply->body.find("\"error\""), std::string::npos);
    auto health = HttpGet(c->http_port, "/healthz");
    ASSERT_TRUE(health.ok());
    EXPECT_EQ(health->status, 200);
  }
}

TEST_F(ChorusUpTest, HundredThousandKeepAliveRequestsWithoutErrors) {
  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  constexpr int kConnections = 8;
  constexpr int kPerConnection = 12500;  // 100k in all
  std::atomic<int> ok{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kConnections; ++t) {
    threads.emplace_back([&] {
      auto client = HttpClient::Connect(c->http_port);
      if (!client.ok()) {
        failed += kPerConnection;
        return;
      }
      for (int i = 0; i < kPerConnection; ++i) {
        auto r = client->Get("/healthz");
        if (r.ok() && r->status == 200 && r->body == "{\"status\":\"ok\"}") {
          ++ok;
        } else {
          ++failed;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), kConnections * kPerConnection);
  EXPECT_EQ(failed.load(), 0);
}

TEST_F(ChorusUpTest, WrkHundredThousandKeepAliveRequestsHaveNoErrors) {
  auto wrk = FindExecutable("wrk");
  ASSERT_TRUE(wrk.ok()) << "wrk is installed by scripts/install-deps.sh";
  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // wrk runs for a duration, not a count: repeat 2 s runs until 100k requests have been served
  // (one or two runs on a release build, more under ASan).
  long total = 0;
  for (int run = 0; run < 40 && total < 100'000; ++run) {
    auto p = Subprocess::Start(
        {*wrk, "-t2", "-c32", "-d2s", "http://127.0.0.1:" + std::to_string(c->http_port) + "/healthz"}, {});
    ASSERT_TRUE(p.ok());
    auto code = (*p)->Wait(30s);
    ASSERT_TRUE(code.ok());
    EXPECT_EQ(*code, 0);
    const std::string out = (*p)->output();
    std::smatch m;
    ASSERT_TRUE(std::regex_search(out, m, std::regex(R"((\d+) requests in)"))) << out;
    total += std::stol(m[1]);
    ASSERT_EQ(out.find("Non-2xx"), std::string::npos) << out;
    ASSERT_EQ(out.find("Socket errors"), std::string::npos) << out;
  }
  EXPECT_GE(total, 100'000);
}

TEST_F(ChorusUpTest, SigtermDuringLoadExitsZeroAndEveryResponseIsComplete) {
  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  std::atomic<bool> stop{false};
  std::atomic<int> complete{0}, garbled{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        auto client = HttpClient::Connect(c->http_port, 1s);
        if (!client.ok()) return;  // listener closed: shutdown in progress
        while (!stop) {
          auto r = client->Get("/healthz");
          if (!r.ok()) {
            // A closed connection between requests is fine; a half response is not.
            if (r.status().message().find("bad status line") != std::string::npos ||
                r.status().message().find("without Content-Length") != std::string::npos) {
              ++garbled;
            }
            break;
          }
          if (r->status == 200 && r->body == "{\"status\":\"ok\"}") {
            ++complete;
          } else {
            ++garbled;
          }
          if (r->Header("connection") == "close") break;
        }
      }
    });
  }
  while (complete.load() < 2000) std::this_thread::sleep_for(10ms);
  ASSERT_TRUE(c->process->Signal(SIGTERM).ok());
  auto code = c->process->Wait(20s);
  stop = true;
  for (auto& t : threads) t.join();
  ASSERT_TRUE(code.ok()) << c->process->OutputTail();
  EXPECT_EQ(*code, 0) << c->process->OutputTail();
  EXPECT_EQ(garbled.load(), 0);
  EXPECT_NE(c->process->output().find("stopped"), std::string::npos);
}

TEST_F(ChorusUpTest, TokensFromTheCliAuthenticateOverHttp) {
  auto [code, out] = RunChorus({"token", "--data-dir", DataDir(), "--user", "42", "--level", "3", "--ttl", "1h"});
  ASSERT_EQ(code, 0) << out;
  const std::string user_token = out.substr(0, out.find('\n'));
  struct stat st{};
  ASSERT_EQ(stat((DataDir() + "/secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto [scode, sout] = RunChorus({"token", "--data-dir", DataDir(), "--service", "gifts", "--scope", "live.publish,likes.write"});
  ASSERT_EQ(scode, 0) << sout;
  const std::string service_token = sout.substr(0, sout.find('\n'));

  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto me = HttpGet(c->http_port, "/v1/auth/whoami", {{"Authorization", "Bearer " + user_token}});
  ASSERT_TRUE(me.ok());
  ASSERT_EQ(me->status, 200) << me->body;
  auto j = nlohmann::json::parse(me->body);
  EXPECT_EQ(j["kind"], "user");
  EXPECT_EQ(j["subject"], "42");
  EXPECT_EQ(j["level"], 3);

  auto svc = HttpGet(c->http_port, "/v1/auth/whoami?token=" + service_token);
  ASSERT_TRUE(svc.ok());
  ASSERT_EQ(svc->status, 200) << svc->body;
  j = nlohmann::json::parse(svc->body);
  EXPECT_EQ(j["kind"], "service");
  EXPECT_EQ(j["scopes"], nlohmann::json({"live.publish", "likes.write"}));

  std::string tampered = user_token;
  tampered[tampered.size() / 2] = tampered[tampered.size() / 2] == 'a' ? 'b' : 'a';
  auto bad = HttpGet(c->http_port, "/v1/auth/whoami", {{"Authorization", "Bearer " + tampered}});
  ASSERT_TRUE(bad.ok());
  EXPECT_EQ(bad->status, 401);
  auto none = HttpGet(c->http_port, "/v1/auth/whoami");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->status, 401);
}

TEST_F(ChorusUpTest, TokenCommandRejectsBadUsage) {
  EXPECT_EQ(RunChorus({"token", "--data-dir", DataDir(), "--user", "1", "--service", "x"}).first, 2);
  EXPECT_EQ(RunChorus({"token", "--data-dir", DataDir(), "--service", "x"}).first, 2);
  EXPECT_EQ(RunChorus({"token", "--data-dir", DataDir(), "--user", "1", "--ttl", "soon"}).first, 2);
  EXPECT_EQ(RunChorus({"token", "--user", "1"}).first, 2);
}

TEST_F(ChorusUpTest, ConfigErrorsNameTheKeyAndExit2) {
  auto [code, out] = RunChorus({"up", "--data-dir", DataDir(), "--set", "http.lisen=1"});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("'http.lisen'"), std::string::npos) << out;

  std::tie(code, out) = RunChorus({"up", "--data-dir", DataDir()}, {{"CHORUS_RUNTIME_SHARDS", "many"}});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("'runtime.shards'"), std::string::npos) << out;

  const std::string file = dir_->path() + "/bad.yaml";
  FILE* f = fopen(file.c_str(), "w");
  fputs("http:\n  listen: 127.0.0.1:0\nlive:\n  nonsense: 1\n", f);
  fclose(f);
  std::tie(code, out) = RunChorus({"up", "--config", file});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("'live.nonsense'"), std::string::npos) << out;

  f = fopen(file.c_str(), "w");
  fputs("likez:\n  anything: 1\n", f);
  fclose(f);
  std::tie(code, out) = RunChorus({"up", "--config", file});
  EXPECT_EQ(code, 2);
  EXPECT_NE(out.find("'likez'"), std::string::npos) << out;

  // The live service's own validation: a tree key with a bad value.
  std::tie(code, out) = RunChorus({"up", "--data-dir", DataDir(), "--set", "live.max_age={\"chat\": \"soon\"}"});
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("live.max_age.chat"), std::string::npos) << out;

  std::tie(code, out) = RunChorus({"up", "--data-dir", DataDir(), "--http", "not-an-address"});
  EXPECT_EQ(code, 2) << out;
}

TEST_F(ChorusUpTest, HelpOnEverySubcommand) {
  for (const char* sub : {"up", "live", "likes", "token", "version"}) {
    auto [code, out] = RunChorus({sub, "--help"});
    EXPECT_EQ(code, 0) << sub;
    EXPECT_NE(out.find("Usage"), std::string::npos) << sub;
  }
  auto [code, out] = RunChorus({"version"});
  EXPECT_EQ(code, 0);
  EXPECT_NE(out.find("chorus 0.1.0"), std::string::npos);
}

// The live service inside the binary: publish over gRPC and HTTP, read back by short polling; with
// `chorus up` on the embedded store and `chorus live` on a real redis-server.
void PublishAndPoll(const Chorus& c, const std::string& service_token) {
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(c.grpc_port), grpc::InsecureChannelCredentials());
  auto stub = chorus::live::v1::Live::NewStub(channel);
  chorus::live::v1::PublishRequest req;
  req.set_room("stage");
  auto* m = req.add_messages();
  m->set_type("gift");
  m->set_payload(R"({"value":100,"via":"grpc"})");
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 10s);
    chorus::live::v1::PublishResponse res;
    grpc::Status st = stub->PublishRoom(&ctx, req, &res);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);  // no token
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  ctx.AddMetadata("authorization", "Bearer " + service_token);
  chorus::live::v1::PublishResponse res;
  grpc::Status st = stub->PublishRoom(&ctx, req, &res);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(res.ids_size(), 1);

  auto http = HttpClient::Connect(c.http_port);
  ASSERT_TRUE(http.ok());
  auto posted = http->Request("POST", "/v1/rooms/stage/messages", R"({"type":"chat","payload":{"via":"http"}})",
                              {{"Authorization", "Bearer " + service_token}, {"Content-Type", "application/json"}});
  ASSERT_TRUE(posted.ok());
  ASSERT_EQ(posted->status, 200) << posted->body;

  std::set<std::string> via;
  for (int i = 0; i < 100 && via.size() < 2; ++i) {
    std::this_thread::sleep_for(20ms);
    auto poll = HttpGet(c.http_port, "/v1/rooms/stage/messages?since=0");
    ASSERT_TRUE(poll.ok());
    ASSERT_EQ(poll->status, 200) << poll->body;
    auto j = nlohmann::json::parse(poll->body);
    for (const auto& msg : j["messages"]) via.insert(msg["payload"]["via"].get<std::string>());
  }
  EXPECT_EQ(via, (std::set<std::string>{"grpc", "http"}));
  EXPECT_NE(posted->body.find("\"ids\""), std::string::npos) << posted->body;
  auto ready = HttpGet(c.http_port, "/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_NE(ready->body.find("\"live\""), std::string::npos) << ready->body;
}

std::string ServiceToken(const std::string& data_dir) {
  auto [code, out] = RunChorus({"token", "--data-dir", data_dir, "--service", "biz", "--scope", "live.publish"});
  EXPECT_EQ(code, 0) << out;
  return out.substr(0, out.find('\n'));
}

TEST_F(ChorusUpTest, LivePublishOverGrpcAndHttpThenPoll) {
  const std::string token = ServiceToken(DataDir());
  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  PublishAndPoll(*c, token);
  ASSERT_TRUE(c->process->Signal(SIGTERM).ok());
  auto code = c->process->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

TEST_F(ChorusUpTest, ChorusLiveAloneOnRedis) {
  auto redis = RedisServer::Start();
  ASSERT_TRUE(redis.ok()) << redis.status().ToString();
  const std::string token = ServiceToken(DataDir());
  auto c = StartChorus(DataDir(),
                       {"--set", "live.store=redis", "--set",
                        "live.redis.address=127.0.0.1:" + std::to_string((*redis)->port())},
                       "live");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  PublishAndPoll(*c, token);
  // Redis going away: polls answer 503 and the process keeps serving.
  (*redis)->Stop();
  int status = 0;
  for (int i = 0; i < 100 && status != 503; ++i) {
    std::this_thread::sleep_for(20ms);
    auto poll = HttpGet(c->http_port, "/v1/rooms/stage/messages");
    ASSERT_TRUE(poll.ok());
    status = poll->status;
  }
  EXPECT_EQ(status, 503);
  auto health = HttpGet(c->http_port, "/healthz");
  ASSERT_TRUE(health.ok());
  EXPECT_EQ(health->status, 200);
  ASSERT_TRUE(c->process->Signal(SIGTERM).ok());
  auto code = c->process->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

std::string LikesToken(const std::string& data_dir) {
  auto [code, out] = RunChorus({"token", "--data-dir", data_dir, "--service", "loader", "--scope", "likes.write"});
  EXPECT_EQ(code, 0) << out;
  return out.substr(0, out.find('\n'));
}

// kill -9 in the middle of a write load: after a restart every acknowledged action is there (a
// request in flight at the kill may or may not be), the counts agree with the states, and
// `chorus likes verify` finds nothing to repair.
TEST_F(ChorusUpTest, LikesSurviveKill9DuringWrites) {
  const std::string token = LikesToken(DataDir());
  auto c = StartChorus(DataDir(), {"--set", "likes.rate_limits=false", "--set", "likes.flush_interval=200ms"},
                       "likes");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  constexpr int kThreads = 4, kUsers = 6, kEntities = 5;
  // Per (thread, user, entity): the last acknowledged state and the state of a request in flight.
  struct Pair {
    std::string acked = "none";
    std::string inflight;
  };
  std::vector<std::vector<Pair>> pairs(kThreads, std::vector<Pair>(kUsers * kEntities));
  std::atomic<bool> stop{false};
  std::atomic<int> acked{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      auto client = HttpClient::Connect(c->http_port);
      if (!client.ok()) return;
      for (int i = 0; !stop.load(); ++i) {
        const int k = i % (kUsers * kEntities);
        Pair& p = pairs[t][k];
        const bool like = p.acked != "liked";
        p.inflight = like ? "liked" : "none";
        nlohmann::json body = {{"business", "video"},
                               {"user", "w" + std::to_string(t) + "_" + std::to_string(k / kEntities)},
                               {"entity", "e" + std::to_string(k % kEntities)},
                               {"owner", "author"},
                               {"action", like ? "like" : "unlike"}};
        auto r = client->Request("POST", "/v1/likes", body.dump(),
                                 {{"Authorization", "Bearer " + token}, {"Content-Type", "application/json"}});
        if (!r.ok() || r->status != 200) return;  // the kill
        p.acked = nlohmann::json::parse(r->body)["state"];
        p.inflight.clear();
        ++acked;
      }
    });
  }
  ASSERT_TRUE(Eventually([&] { return acked.load() > 2000; }, 60s));
  ASSERT_TRUE(c->process->Signal(SIGKILL).ok());
  auto killed = c->process->Wait(15s);
  stop = true;
  for (auto& w : writers) w.join();
  ASSERT_TRUE(killed.ok());

  auto again = StartChorus(DataDir(), {}, "likes");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  auto http = HttpClient::Connect(again->http_port);
  ASSERT_TRUE(http.ok());
  std::map<std::string, int> liked_per_entity;
  int checked = 0;
  for (int t = 0; t < kThreads; ++t) {
    for (int u = 0; u < kUsers; ++u) {
      const std::string user = "w" + std::to_string(t) + "_" + std::to_string(u);
      auto r = http->Request("GET", "/v1/likes/state?business=video&user=" + user + "&entities=e0,e1,e2,e3,e4", "",
                             {{"Authorization", "Bearer " + token}});
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->status, 200) << r->body;
      auto states = nlohmann::json::parse(r->body)["states"];
      for (int e = 0; e < kEntities; ++e) {
        const Pair& p = pairs[t][u * kEntities + e];
        const std::string got = states["e" + std::to_string(e)];
        EXPECT_TRUE(got == p.acked || (!p.inflight.empty() && got == p.inflight))
            << user << "/e" << e << ": got " << got << ", acknowledged " << p.acked << ", in flight " << p.inflight;
        if (got == "liked") ++liked_per_entity["e" + std::to_string(e)];
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, kThreads * kUsers * kEntities);
  auto counts = http->Request("GET", "/v1/likes/counts?business=video&entities=e0,e1,e2,e3,e4", "",
                              {{"Authorization", "Bearer " + token}});
  ASSERT_TRUE(counts.ok());
  auto cj = nlohmann::json::parse(counts->body)["counts"];
  for (int e = 0; e < kEntities; ++e) {
    const std::string id = "e" + std::to_string(e);
    EXPECT_EQ(cj[id]["likes"], liked_per_entity[id]) << id;
  }
  // verify beside the running server (read-only), then after a clean stop.
  auto [live_code, live_out] = RunChorus({"likes", "verify", "--data-dir", DataDir()});
  EXPECT_EQ(live_code, 0) << live_out;
  ASSERT_TRUE(again->process->Signal(SIGTERM).ok());
  auto code = again->process->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0) << again->process->OutputTail();
  auto [vcode, vout] = RunChorus({"likes", "verify", "--data-dir", DataDir()});
  EXPECT_EQ(vcode, 0) << vout;
  EXPECT_NE(vout.find("consistent"), std::string::npos) << vout;
  EXPECT_NE(vout.find("log entries pending apply: 0"), std::string::npos) << vout;
  EXPECT_EQ(RunChorus({"likes", "verify", "--data-dir", dir_->path() + "/nowhere"}).first, 2);
}

// The likes service inside `chorus up`: act over gRPC, read over HTTP, bad input over both.
TEST_F(ChorusUpTest, LikesOverGrpcAndHttp) {
  const std::string token = LikesToken(DataDir());
  auto c = StartChorus(DataDir());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(c->grpc_port), grpc::InsecureChannelCredentials());
  auto stub = chorus::likes::v1::Likes::NewStub(channel);
  namespace pb = chorus::likes::v1;
  pb::ActRequest req;
  req.set_business("comment");
  req.set_user("viewer");
  req.set_entity("c42");
  req.set_owner("writer");
  req.set_action(pb::ACTION_LIKE);
  {
    grpc::ClientContext ctx;
    pb::ActResponse res;
    EXPECT_EQ(stub->Act(&ctx, req, &res).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    pb::ActResponse res;
    grpc::Status st = stub->Act(&ctx, req, &res);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(res.state(), pb::STATE_LIKED);
    EXPECT_EQ(res.counts().likes(), 1);
  }
  {
    pb::ActRequest bad = req;
    bad.set_business("nope");
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    pb::ActResponse res;
    EXPECT_EQ(stub->Act(&ctx, bad, &res).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    pb::GetCountsRequest counts;
    counts.set_business("comment");
    counts.add_entities("c42");
    counts.add_entities("c43");
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    pb::GetCountsResponse res;
    ASSERT_TRUE(stub->GetCounts(&ctx, counts, &res).ok());
    ASSERT_EQ(res.counts_size(), 2);
    EXPECT_EQ(res.counts(0).likes(), 1);
    EXPECT_EQ(res.counts(1).likes(), 0);
  }
  auto state = HttpGet(c->http_port, "/v1/likes/state?business=comment&user=viewer&entities=c42",
                       {{"Authorization", "Bearer " + token}});
  ASSERT_TRUE(state.ok());
  ASSERT_EQ(state->status, 200) << state->body;
  EXPECT_EQ(nlohmann::json::parse(state->body)["states"]["c42"], "liked");
  auto ready = HttpGet(c->http_port, "/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_NE(ready->body.find("\"likes\""), std::string::npos) << ready->body;
  ASSERT_TRUE(c->process->Signal(SIGTERM).ok());
  auto code = c->process->Wait(20s);
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  // The clean stop applied everything: the received total is there.
  auto [vcode, vout] = RunChorus({"likes", "verify", "--data-dir", DataDir()});
  EXPECT_EQ(vcode, 0) << vout;
  EXPECT_NE(vout.find("records: 1"), std::string::npos) << vout;
}

}  // namespace
}  // namespace chorus::testing
