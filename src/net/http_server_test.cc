#include "net/http_server.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/metrics.h"
#include "base/mutex.h"
#include "net/test_client.h"

namespace chorus::net {
namespace {

using namespace std::chrono_literals;
using testclient::Eventually;
using testclient::HttpClient;
using testclient::Reply;
using testclient::ServerHarness;
using ::testing::HasSubstr;
namespace http = boost::beast::http;

HttpServerOptions TestOptions() {
  HttpServerOptions o;
  o.max_header_bytes = 4096;
  o.max_body_bytes = 64 * 1024;
  o.read_timeout = 5s;
  o.handler_timeout = 5s;
  return o;
}

void AddOk(Router& r) {
  ASSERT_TRUE(r.Add("GET", "/ok", [](HttpRequest&, HttpResponder res) {
                 res.Send(HttpResponse::Json(200, R"({"ok":true})"));
               }).ok());
}

// GET /n?i=<x> answers <x>, inline.
void AddEcho(Router& r) {
  ASSERT_TRUE(r.Add("GET", "/n", [](HttpRequest& req, HttpResponder res) {
                 res.Send(HttpResponse::Text(200, std::string(req.Query("i").value_or("?"))));
               }).ok());
}

std::string ErrorCode(const Reply& r) {
  auto j = nlohmann::json::parse(r.body(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("error")) return "<not an error body: " + r.body() + ">";
  return j["error"].value("code", "");
}

// Threads started by handlers; joined before the test ends.
class Threads {
 public:
  ~Threads() { JoinAll(); }
  template <typename Fn>
  void Spawn(Fn fn) {
    MutexLock lock(mu_);
    threads_.emplace_back(std::move(fn));
  }
  void JoinAll() {
    std::vector<std::thread> ts;
    {
      MutexLock lock(mu_);
      ts.swap(threads_);
    }
    for (auto& t : ts) t.join();
  }

 private:
  Mutex mu_;
  std::vector<std::thread> threads_ GUARDED_BY(mu_);
};

// ----------------------------------------------------------------------------- basics

TEST(HttpServerTest, JsonRouteAnswers200) {
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/v1/hello",
                       [](HttpRequest& req, HttpResponder res) {
                         HttpResponse r = HttpResponse::Json(
                             200, nlohmann::json{{"hello", "world"}, {"shard", req.shard}}.dump());
                         r.headers.emplace_back("X-Extra", "yes");
                         res.Send(std::move(r));
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  HttpClient c(h.port());
  ASSERT_FALSE(c.connect_error()) << c.connect_error().message();
  Reply r = c.Get("/v1/hello");
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.status(), 200);
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  EXPECT_EQ(r.header("Server"), "chorus");
  EXPECT_EQ(r.header("X-Extra"), "yes");
  EXPECT_FALSE(r.header("Date").empty());
  EXPECT_EQ(r.header("Content-Length"), std::to_string(r.body().size()));
  EXPECT_TRUE(r.msg.keep_alive());
  auto j = nlohmann::json::parse(r.body());
  EXPECT_EQ(j["hello"], "world");
  EXPECT_LT(j["shard"].get<int>(), 2);
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, HundredRequestsOnOneKeepAliveConnection) {
  Mutex mu;
  std::set<std::string> remotes;
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/n",
                       [&](HttpRequest& req, HttpResponder res) {
                         {
                           MutexLock lock(mu);
                           remotes.insert(req.remote);
                         }
                         res.Send(HttpResponse::Text(200, std::string(req.Query("i").value_or("?"))));
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  HttpClient c(h.port());
  ASSERT_FALSE(c.connect_error());
  for (int i = 0; i < 100; ++i) {
    Reply r = c.Get("/n?i=" + std::to_string(i));
    ASSERT_FALSE(r.ec) << "request " << i << ": " << r.ec.message();
    ASSERT_EQ(r.status(), 200);
    ASSERT_EQ(r.body(), std::to_string(i));
    ASSERT_TRUE(r.msg.keep_alive());
  }
  EXPECT_EQ(h.server().connections(), 1u);
  const auto local = c.socket().local_endpoint();
  MutexLock lock(mu);
  EXPECT_EQ(remotes, std::set<std::string>{"127.0.0.1:" + std::to_string(local.port())});
}

TEST(HttpServerTest, ConnectionsAreSpreadEvenlyOverTheShards) {
  // The kernel picks a shard's listener by a hash of the address pair; the server then moves a
  // connection to the shard holding the fewest. Eight connections opened one after another on a
  // two-shard server end up four and four (by hash alone: in about a quarter of the runs).
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/shard",
                       [](HttpRequest& req, HttpResponder res) {
                         res.Send(HttpResponse::Text(200, std::to_string(req.shard)));
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  std::vector<std::unique_ptr<HttpClient>> clients;
  std::map<std::string, int> per_shard;
  for (int i = 0; i < 8; ++i) {
    clients.push_back(std::make_unique<HttpClient>(h.port()));
    Reply r = clients.back()->Get("/shard");
    ASSERT_FALSE(r.ec) << r.ec.message();
    ++per_shard[r.body()];
  }
  EXPECT_EQ(per_shard, (std::map<std::string, int>{{"0", 4}, {"1", 4}}));
  // A connection moved to another shard keeps serving there.
  for (auto& c : clients) {
    Reply r = c->Get("/shard");
    ASSERT_FALSE(r.ec) << r.ec.message();
  }
  clients.clear();
  ASSERT_TRUE(Eventually([&] { return h.server().connections() == 0; }));
  // Closed connections free their shard's share: the next eight spread again.
  per_shard.clear();
  for (int i = 0; i < 8; ++i) {
    clients.push_back(std::make_unique<HttpClient>(h.port()));
    Reply r = clients.back()->Get("/shard");
    ASSERT_FALSE(r.ec) << r.ec.message();
    ++per_shard[r.body()];
  }
  EXPECT_EQ(per_shard, (std::map<std::string, int>{{"0", 4}, {"1", 4}}));
}

TEST(HttpServerTest, PipelinedRequestsAreAnsweredInOrder) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddEcho(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /n?i=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /n?i=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /n?i=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (const char* want : {"1", "2", "3"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
}

TEST(HttpServerTest, PipelinedRequestsAreDispatchedTogetherAndAnsweredInOrder) {
  // Request 1 answers only once request 3 has reached its handler: a server that handled
  // pipelined requests one at a time would time request 1 out (504) instead.
  Threads threads;
  std::atomic<bool> third_seen{false};
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/wait",
                       [&](HttpRequest& req, HttpResponder res) {
                         const std::string i(req.Query("i").value_or("?"));
                         if (i == "3") third_seen = true;
                         threads.Spawn([&third_seen, i, res = std::move(res)]() mutable {
                           if (i == "1") Eventually([&] { return third_seen.load(); }, 2s);
                           res.Send(HttpResponse::Text(200, i + (third_seen ? "+" : "-")));
                         });
                       })
                  .ok());
  HttpServerOptions o = TestOptions();
  o.handler_timeout = 3s;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /wait?i=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /wait?i=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /wait?i=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  Reply first = c.Read();
  ASSERT_FALSE(first.ec) << first.ec.message();
  EXPECT_EQ(first.status(), 200);
  EXPECT_EQ(first.body(), "1+");
  for (const char* want : {"2", "3"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body().substr(0, 1), want);  // in request order, whoever answered first
    EXPECT_TRUE(r.msg.keep_alive());
  }
  EXPECT_TRUE(h.Shutdown());
  threads.JoinAll();
}

TEST(HttpServerTest, PipelineDepthIsBoundedAndResumes) {
  Mutex mu;
  std::vector<HttpResponder> held;
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/hold",
                       [&](HttpRequest& req, HttpResponder res) {
                         MutexLock lock(mu);
                         held.push_back(std::move(res));
                       })
                  .ok());
  HttpServerOptions o = TestOptions();
  o.max_pipelined_requests = 2;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  HttpClient c(h.port());
  std::string five;
  for (int i = 0; i < 5; ++i) five += "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_FALSE(c.SendRaw(five));
  auto held_count = [&] {
    MutexLock lock(mu);
    return held.size();
  };
  auto answer_all = [&](const std::string& body) {
    std::vector<HttpResponder> now;
    {
      MutexLock lock(mu);
      now.swap(held);
    }
    for (auto& r : now) r.Send(HttpResponse::Text(200, body));
  };
  ASSERT_TRUE(Eventually([&] { return held_count() == 2; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(held_count(), 2u);  // the other three wait in the read buffer
  answer_all("a");
  ASSERT_TRUE(Eventually([&] { return held_count() == 2; }));
  answer_all("b");
  ASSERT_TRUE(Eventually([&] { return held_count() == 1; }));
  answer_all("c");
  for (const char* want : {"a", "a", "b", "b", "c"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, PipelinedPostsRunOneAtATimeInOrder) {
  Mutex mu;
  std::vector<std::pair<std::string, HttpResponder>> held;
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddEcho(h.router()));
  ASSERT_TRUE(h.router()
                  .Add("POST", "/hold",
                       [&](HttpRequest& req, HttpResponder res) {
                         MutexLock lock(mu);
                         held.emplace_back(req.body, std::move(res));
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /n?i=0 HTTP/1.1\r\nHost: x\r\n\r\n"
                "POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"
                "POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nb"
                "GET /n?i=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto answer = [&](const std::string& want) {
    std::optional<HttpResponder> r;
    {
      MutexLock lock(mu);
      ASSERT_EQ(held.size(), 1u);
      EXPECT_EQ(held[0].first, want);
      r.emplace(std::move(held[0].second));
      held.clear();
    }
    r->Send(HttpResponse::Text(200, want));
  };
  auto held_count = [&] {
    MutexLock lock(mu);
    return held.size();
  };
  ASSERT_TRUE(Eventually([&] { return held_count() == 1; }));
  std::this_thread::sleep_for(50ms);
  ASSERT_NO_FATAL_FAILURE(answer("a"));  // the second POST was not dispatched beside the first
  ASSERT_TRUE(Eventually([&] { return held_count() == 1; }));
  ASSERT_NO_FATAL_FAILURE(answer("b"));
  for (const char* want : {"0", "a", "b", "3"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, PostsToARouteThatKeepsItsOwnOrderAreDispatchedTogether) {
  Mutex mu;
  std::vector<std::pair<std::string, HttpResponder>> held;
  ServerHarness h;
  RouteOptions parallel;
  parallel.parallel_pipelining = true;
  ASSERT_TRUE(h.router()
                  .Add(
                      "POST", "/any",
                      [&](HttpRequest& req, HttpResponder res) {
                        MutexLock lock(mu);
                        held.emplace_back(req.body, std::move(res));
                      },
                      parallel)
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  std::string three;
  for (const char* body : {"a", "b", "c"}) {
    three += std::string("POST /any HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n") + body;
  }
  ASSERT_FALSE(c.SendRaw(three));
  ASSERT_TRUE(Eventually([&] {
    MutexLock lock(mu);
    return held.size() == 3;  // all three in progress at once
  }));
  std::vector<std::pair<std::string, HttpResponder>> now;
  {
    MutexLock lock(mu);
    now.swap(held);
  }
  for (auto it = now.rbegin(); it != now.rend(); ++it) it->second.Send(HttpResponse::Text(200, it->first));
  for (const char* want : {"a", "b", "c"}) {  // answered last to first, sent in request order
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, MalformedRequestInAPipelineIsAnsweredAfterTheOnesBeforeIt) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddEcho(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /n?i=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /n?i=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                "NOT HTTP AT ALL\r\n\r\n"
                "GET /n?i=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (const char* want : {"1", "2"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
    EXPECT_TRUE(r.msg.keep_alive());
  }
  Reply bad = c.Read();
  ASSERT_FALSE(bad.ec) << bad.ec.message();
  EXPECT_EQ(bad.status(), 400);
  EXPECT_EQ(ErrorCode(bad), "bad_request");
  EXPECT_FALSE(bad.msg.keep_alive());
  EXPECT_TRUE(c.WaitForClose());  // request 3, after the bad one, is never answered

  HttpClient next(h.port());  // and the server keeps serving
  Reply ok = next.Get("/n?i=4");
  ASSERT_FALSE(ok.ec) << ok.ec.message();
  EXPECT_EQ(ok.body(), "4");
}

TEST(HttpServerTest, OverdueHandlerInAPipelineGets504WithoutHoldingTheOthersBack) {
  Mutex mu;
  std::vector<HttpResponder> stuck;
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router()
                  .Add("GET", "/hang",
                       [&](HttpRequest&, HttpResponder res) {
                         MutexLock lock(mu);
                         stuck.push_back(std::move(res));
                       })
                  .ok());
  HttpServerOptions o = TestOptions();
  o.handler_timeout = 200ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (int want : {200, 504, 504, 200}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.status(), want);
  }
  {
    MutexLock lock(mu);
    EXPECT_EQ(stuck.size(), 2u);
    stuck.clear();  // late answers (500s) go nowhere
  }
  Reply ok = c.Get("/ok");
  ASSERT_FALSE(ok.ec) << ok.ec.message();
  EXPECT_EQ(ok.status(), 200);
  EXPECT_EQ(ok.body(), R"({"ok":true})");
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, PeerThatStopsSendingStillGetsEveryAnswer) {
  Threads threads;
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/later",
                       [&threads](HttpRequest& req, HttpResponder res) {
                         const std::string i(req.Query("i").value_or("?"));
                         threads.Spawn([i, res = std::move(res)]() mutable {
                           std::this_thread::sleep_for(20ms);
                           res.Send(HttpResponse::Text(200, i));
                         });
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /later?i=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /later?i=2 HTTP/1.1\r\nHost: x\r\n\r\n"));
  boost::system::error_code ignored;
  c.socket().shutdown(boost::asio::ip::tcp::socket::shutdown_send, ignored);  // EOF after two requests
  for (const char* want : {"1", "2"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
  EXPECT_TRUE(c.WaitForClose());
  EXPECT_TRUE(h.Shutdown());
  threads.JoinAll();
}

TEST(HttpServerTest, PathParamsQueryHeadersAndBodyReachTheHandler) {
  ServerHarness h;
  auto describe = [](HttpRequest& req, HttpResponder res) {
    nlohmann::json query = nlohmann::json::array();
    for (const auto& [k, v] : req.query) query.push_back({k, v});
    res.Send(HttpResponse::Json(200, nlohmann::json{{"method", req.method},
                                                    {"room", req.Param("room")},
                                                    {"id", req.Param("id")},
                                                    {"path", req.path},
                                                    {"target", req.target},
                                                    {"query", query},
                                                    {"custom", req.Header("x-custom")},
                                                    {"body", req.body}}
                                         .dump()));
  };
  ASSERT_TRUE(h.router().Add("GET", "/v1/rooms/{room}/messages/{id}", describe).ok());
  ASSERT_TRUE(h.router().Add("POST", "/v1/rooms/{room}/messages", describe).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  HttpClient c(h.port());
  Reply r = c.Request(http::verb::get, "/v1/rooms/caf%C3%A9/messages/42?limit=10&q=a+b%21&q=second", "",
                      {{"X-Custom", "Yes"}});
  ASSERT_FALSE(r.ec) << r.ec.message();
  ASSERT_EQ(r.status(), 200) << r.body();
  auto j = nlohmann::json::parse(r.body());
  EXPECT_EQ(j["method"], "GET");
  EXPECT_EQ(j["room"], "caf\xc3\xa9");
  EXPECT_EQ(j["id"], "42");
  EXPECT_EQ(j["path"], "/v1/rooms/caf\xc3\xa9/messages/42");
  EXPECT_EQ(j["target"], "/v1/rooms/caf%C3%A9/messages/42?limit=10&q=a+b%21&q=second");
  EXPECT_EQ(j["query"], nlohmann::json::parse(R"([["limit","10"],["q","a b!"],["q","second"]])"));
  EXPECT_EQ(j["custom"], "Yes");  // looked up by lower-case name

  Reply post = c.Request(http::verb::post, "/v1/rooms/lobby/messages", R"({"text":"hi"})");
  ASSERT_FALSE(post.ec);
  ASSERT_EQ(post.status(), 200) << post.body();
  auto p = nlohmann::json::parse(post.body());
  EXPECT_EQ(p["method"], "POST");
  EXPECT_EQ(p["room"], "lobby");
  EXPECT_EQ(p["body"], R"({"text":"hi"})");
}

TEST(HttpServerTest, AsynchronousHandlersAnswerFromOtherThreads) {
  Threads threads;
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/thread",
                       [&threads](HttpRequest&, HttpResponder res) {
                         threads.Spawn([res = std::move(res)]() mutable {
                           std::this_thread::sleep_for(10ms);
                           res.Send(HttpResponse::Text(200, "from a thread"));
                         });
                       })
                  .ok());
  ASSERT_TRUE(
      h.router()
          .Add("GET", "/other-shard",
               [&h](HttpRequest& req, HttpResponder res) {
                 // The move-only responder travels with the task to the other shard.
                 const uint32_t from = req.shard;
                 h.runtime().Post(from + 1, [res = std::move(res), from]() mutable {
                   res.Send(HttpResponse::Json(
                       200, nlohmann::json{{"from", from}, {"on", Runtime::Current()->index()}}.dump()));
                 });
               })
          .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  HttpClient c(h.port());
  for (int i = 0; i < 5; ++i) {
    Reply t = c.Get("/thread");
    ASSERT_FALSE(t.ec) << t.ec.message();
    EXPECT_EQ(t.status(), 200);
    EXPECT_EQ(t.body(), "from a thread");

    Reply s = c.Get("/other-shard");
    ASSERT_FALSE(s.ec) << s.ec.message();
    ASSERT_EQ(s.status(), 200);
    auto j = nlohmann::json::parse(s.body());
    EXPECT_NE(j["from"], j["on"]);
  }
  EXPECT_TRUE(h.Shutdown());
  threads.JoinAll();
}

TEST(HttpServerTest, SilentHandlerGets504AndTheConnectionKeepsWorking) {
  ServerHarness h;
  Mutex mu;
  std::vector<HttpResponder> stuck;  // declared after the harness: released while it still runs
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router()
                  .Add("GET", "/hang",
                       [&](HttpRequest&, HttpResponder res) {
                         MutexLock lock(mu);
                         stuck.push_back(std::move(res));
                       })
                  .ok());
  HttpServerOptions o = TestOptions();
  o.handler_timeout = 200ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));

  HttpClient c(h.port());
  Reply r = c.Get("/hang");
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.status(), 504);
  EXPECT_EQ(ErrorCode(r), "deadline_exceeded");
  EXPECT_TRUE(r.msg.keep_alive());

  Reply ok = c.Get("/ok");
  ASSERT_FALSE(ok.ec) << ok.ec.message();
  EXPECT_EQ(ok.status(), 200);

  // The handler finally answers (here: drops its responder, which sends 500). Too late: the
  // connection has moved on and must not see it.
  {
    MutexLock lock(mu);
    ASSERT_EQ(stuck.size(), 1u);
    stuck.clear();
  }
  for (int i = 0; i < 3; ++i) {
    Reply again = c.Get("/ok");
    ASSERT_FALSE(again.ec) << again.ec.message();
    EXPECT_EQ(again.status(), 200);
    EXPECT_EQ(again.body(), R"({"ok":true})");
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, DroppedResponderGets500) {
  Threads threads;
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router().Add("GET", "/drop", [](HttpRequest&, HttpResponder) {}).ok());
  ASSERT_TRUE(
      h.router()
          .Add("GET", "/drop-elsewhere",
               [&threads](HttpRequest&, HttpResponder res) { threads.Spawn([res = std::move(res)] {}); })
          .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  HttpClient c(h.port());
  for (const char* target : {"/drop", "/drop-elsewhere"}) {
    Reply r = c.Get(target);
    ASSERT_FALSE(r.ec) << target << ": " << r.ec.message();
    EXPECT_EQ(r.status(), 500) << target;
    EXPECT_EQ(ErrorCode(r), "internal") << target;
    Reply ok = c.Get("/ok");
    ASSERT_FALSE(ok.ec) << ok.ec.message();
    EXPECT_EQ(ok.status(), 200);
  }
  EXPECT_TRUE(h.Shutdown());
  threads.JoinAll();
}

// ----------------------------------------------------------------------------- bad input

TEST(HttpServerTest, MalformedRequestsGet400AndTheServerKeepsServing) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  const std::vector<std::string> bad = {
      "THIS IS NOT HTTP\r\n\r\n",
      "GET /ok HTTP/1.1\r\nHost: x\r\nheader-without-colon\r\n\r\n",
      "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n",     // bad escape in the path
      "GET /ok?q=%4 HTTP/1.1\r\nHost: x\r\n\r\n",  // bad escape in the query
      "GET ok HTTP/1.1\r\nHost: x\r\n\r\n",        // target not starting with '/'
  };
  for (const auto& raw : bad) {
    HttpClient c(h.port());
    ASSERT_FALSE(c.connect_error());
    ASSERT_FALSE(c.SendRaw(raw));
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << "'" << raw << "': " << r.ec.message();
    EXPECT_EQ(r.status(), 400) << raw;
    EXPECT_EQ(ErrorCode(r), "bad_request") << raw;
    EXPECT_FALSE(r.msg.keep_alive()) << raw;
    EXPECT_TRUE(c.WaitForClose()) << raw;
  }

  HttpClient fresh(h.port());
  Reply ok = fresh.Get("/ok");
  ASSERT_FALSE(ok.ec) << ok.ec.message();
  EXPECT_EQ(ok.status(), 200);
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, OversizedHeaderGets431) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  HttpServerOptions o = TestOptions();
  o.max_header_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));

  // Under the limit: fine.
  HttpClient small(h.port());
  Reply fine = small.Request(http::verb::get, "/ok", "", {{"X-Pad", std::string(600, 'a')}});
  ASSERT_FALSE(fine.ec) << fine.ec.message();
  EXPECT_EQ(fine.status(), 200);

  HttpClient c(h.port());
  ASSERT_FALSE(c.SendRaw("GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(3000, 'a') + "\r\n\r\n"));
  Reply r = c.Read();
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.status(), 431);
  EXPECT_EQ(ErrorCode(r), "header_too_large");
  EXPECT_FALSE(r.msg.keep_alive());
  EXPECT_TRUE(c.WaitForClose());
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, OversizedBodyGets413) {
  ServerHarness h;
  ASSERT_TRUE(
      h.router()
          .Add("POST", "/echo",
               [](HttpRequest& req, HttpResponder res) { res.Send(HttpResponse::Text(200, req.body)); })
          .ok());
  HttpServerOptions o = TestOptions();
  o.max_body_bytes = 1024;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));

  HttpClient small(h.port());
  Reply fine = small.Request(http::verb::post, "/echo", std::string(1024, 'b'));
  ASSERT_FALSE(fine.ec) << fine.ec.message();
  EXPECT_EQ(fine.status(), 200);
  EXPECT_EQ(fine.body(), std::string(1024, 'b'));

  {
    HttpClient c(h.port());
    Reply r = c.Request(http::verb::post, "/echo", std::string(4096, 'b'));
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.status(), 413);
    EXPECT_EQ(ErrorCode(r), "body_too_large");
    EXPECT_FALSE(r.msg.keep_alive());
  }
  {
    // Chunked bodies count too.
    HttpClient c(h.port());
    const std::string chunk(800, 'c');
    ASSERT_FALSE(
        c.SendRaw("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                  "320\r\n" +
                  chunk + "\r\n320\r\n" + chunk + "\r\n0\r\n\r\n"));
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.status(), 413);
  }
  EXPECT_TRUE(h.Shutdown());
}

// ----------------------------------------------------------------------------- timeouts

TEST(HttpServerTest, PartialRequestThenSilenceGets408) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  HttpServerOptions o = TestOptions();
  o.read_timeout = 200ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));

  HttpClient c(h.port());
  ASSERT_FALSE(c.SendRaw("GET /ok HTTP/1.1\r\nHost: x\r\n"));  // no blank line: incomplete
  Reply r = c.Read();
  ASSERT_FALSE(r.ec) << "no 408 response: " << r.ec.message();
  EXPECT_EQ(r.status(), 408);
  EXPECT_EQ(ErrorCode(r), "request_timeout");
  EXPECT_FALSE(r.msg.keep_alive());
  EXPECT_TRUE(c.WaitForClose());
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, IdleConnectionsAreClosedAfterReadTimeoutWithoutAResponse) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  HttpServerOptions o = TestOptions();
  o.read_timeout = 200ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));

  // Idle between keep-alive requests.
  HttpClient kept(h.port());
  Reply r = kept.Get("/ok");
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_TRUE(r.msg.keep_alive());
  std::string extra;
  EXPECT_TRUE(kept.WaitForClose(5s, &extra));
  EXPECT_EQ(extra, "");

  // Never sent anything.
  HttpClient silent(h.port());
  ASSERT_FALSE(silent.connect_error());
  extra.clear();
  EXPECT_TRUE(silent.WaitForClose(5s, &extra));
  EXPECT_EQ(extra, "");

  EXPECT_TRUE(Eventually([&] { return h.server().connections() == 0; }));
  EXPECT_TRUE(h.Shutdown());
}

// ----------------------------------------------------------------------------- protocol details

TEST(HttpServerTest, ConnectionCloseIsHonoured) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  {
    HttpClient c(h.port());
    Reply r = c.Request(http::verb::get, "/ok", "", {}, /*version=*/10);
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.status(), 200);
    EXPECT_EQ(r.header("Connection"), "close");
    EXPECT_TRUE(c.WaitForClose());
  }
  {
    HttpClient c(h.port());
    Reply r = c.Request(http::verb::get, "/ok", "", {{"Connection", "close"}});
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.header("Connection"), "close");
    EXPECT_TRUE(c.WaitForClose());
  }
  {
    // HTTP/1.0 asking for keep-alive keeps the connection.
    HttpClient c(h.port());
    for (int i = 0; i < 2; ++i) {
      Reply r = c.Request(http::verb::get, "/ok", "", {{"Connection", "keep-alive"}}, /*version=*/10);
      ASSERT_FALSE(r.ec) << i << ": " << r.ec.message();
      EXPECT_EQ(r.status(), 200);
      EXPECT_NE(r.header("Connection"), "close");
    }
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, HeadSendsHeadersWithoutBody) {
  ServerHarness h;
  ASSERT_TRUE(
      h.router()
          .Add("GET", "/doc",
               [](HttpRequest&, HttpResponder res) { res.Send(HttpResponse::Text(200, "hello world")); })
          .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  HttpClient c(h.port());
  Reply head = c.Request(http::verb::head, "/doc");
  ASSERT_FALSE(head.ec) << head.ec.message();
  EXPECT_EQ(head.status(), 200);
  EXPECT_EQ(head.header("Content-Length"), "11");
  EXPECT_EQ(head.header("Content-Type"), "text/plain; charset=utf-8");
  EXPECT_EQ(head.body(), "");
  // Had the server sent a body, it would be read as the start of this response.
  Reply get = c.Get("/doc");
  ASSERT_FALSE(get.ec) << get.ec.message();
  EXPECT_EQ(get.status(), 200);
  EXPECT_EQ(get.body(), "hello world");
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, NotFoundAndMethodNotAllowedAnswerJsonErrors) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router()
                  .Add("POST", "/ok",
                       [](HttpRequest&, HttpResponder res) { res.Send(HttpResponse::Json(201, "{}")); })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));

  HttpClient c(h.port());
  Reply missing = c.Get("/nope");
  ASSERT_FALSE(missing.ec) << missing.ec.message();
  EXPECT_EQ(missing.status(), 404);
  EXPECT_EQ(missing.header("Content-Type"), "application/json");
  EXPECT_EQ(ErrorCode(missing), "not_found");
  EXPECT_TRUE(missing.msg.keep_alive());

  Reply wrong = c.Request(http::verb::delete_, "/ok");
  ASSERT_FALSE(wrong.ec) << wrong.ec.message();
  EXPECT_EQ(wrong.status(), 405);
  EXPECT_EQ(wrong.header("Allow"), "GET, POST");
  EXPECT_EQ(ErrorCode(wrong), "method_not_allowed");

  // Errors from routing do not end the connection.
  Reply ok = c.Get("/ok");
  ASSERT_FALSE(ok.ec) << ok.ec.message();
  EXPECT_EQ(ok.status(), 200);
  EXPECT_TRUE(h.Shutdown());
}

double SeriesValue(const std::string& text, const std::string& series) {
  size_t pos = 0;
  while ((pos = text.find(series, pos)) != std::string::npos) {
    const bool line_start = pos == 0 || text[pos - 1] == '\n';
    const size_t after = pos + series.size();
    if (line_start && after < text.size() && text[after] == ' ')
      return std::strtod(text.c_str() + after + 1, nullptr);
    pos = after;
  }
  return 0;
}

TEST(HttpServerTest, RequestsAreCountedInTheDefaultMetrics) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  const std::string ok_series = R"(chorus_http_requests_total{code="200"})";
  const std::string missing_series = R"(chorus_http_requests_total{code="404"})";
  const std::string before = DefaultMetrics().Render();

  HttpClient c(h.port());
  for (int i = 0; i < 3; ++i) ASSERT_EQ(c.Get("/ok").status(), 200);
  ASSERT_EQ(c.Get("/missing").status(), 404);
  EXPECT_TRUE(h.Shutdown());

  const std::string after = DefaultMetrics().Render();
  EXPECT_THAT(after, HasSubstr("# TYPE chorus_http_requests_total counter"));
  EXPECT_GE(SeriesValue(after, ok_series) - SeriesValue(before, ok_series), 3.0) << after;
  EXPECT_GE(SeriesValue(after, missing_series) - SeriesValue(before, missing_series), 1.0) << after;
}

TEST(HttpServerTest, ConnectionsOverTheLimitAreRefused) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  HttpServerOptions o = TestOptions();
  o.max_connections = 1;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));

  HttpClient first(h.port());
  ASSERT_EQ(first.Get("/ok").status(), 200);
  HttpClient second(h.port());  // the kernel accepts; the server closes it at once
  ASSERT_FALSE(second.connect_error());
  std::string extra;
  EXPECT_TRUE(second.WaitForClose(5s, &extra));
  EXPECT_EQ(extra, "");
  // The first connection is unaffected.
  EXPECT_EQ(first.Get("/ok").status(), 200);
  EXPECT_TRUE(h.Shutdown());
}

// ----------------------------------------------------------------------------- shutdown

TEST(HttpServerTest, GracefulShutdownFinishesInFlightRequests) {
  Threads threads;
  std::atomic<bool> started{false};
  const std::string big(256 * 1024, 'z');  // several writes' worth: the response must arrive whole
  ServerHarness h;
  // After the harness: on an early failure it is destroyed first, releasing the handler thread
  // while the server still runs.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router()
                  .Add("GET", "/slow",
                       [&](HttpRequest&, HttpResponder res) {
                         started = true;
                         threads.Spawn([res = std::move(res), released, &big]() mutable {
                           // Answers ~300 ms later, and never before the test let it.
                           std::this_thread::sleep_for(300ms);
                           released.wait();
                           res.Send(HttpResponse::Text(200, big));
                         });
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  const uint16_t port = h.port();

  HttpClient slow(port);
  http::request<http::string_body> req{http::verb::get, "/slow", 11};
  req.set(http::field::host, "127.0.0.1");
  ASSERT_FALSE(slow.Write(req));
  ASSERT_TRUE(Eventually([&] { return started.load(); }));
  HttpClient idle(port);
  ASSERT_EQ(idle.Get("/ok").status(), 200);

  h.server().BeginShutdown();
  h.server().BeginShutdown();  // idempotent

  // New connections are refused once every shard has closed its listener.
  EXPECT_TRUE(Eventually([&] { return static_cast<bool>(HttpClient(port).connect_error()); }));
  // The idle keep-alive connection is closed without waiting for the read timeout.
  EXPECT_TRUE(idle.WaitForClose(3s));

  release.set_value();
  Reply r = slow.Read();
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.status(), 200);
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_EQ(r.body().size(), big.size());
  EXPECT_TRUE(r.body() == big);
  EXPECT_TRUE(slow.WaitForClose());

  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_EQ(h.server().connections(), 0u);
  threads.JoinAll();
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, ShutdownClosesIdleKeepAliveConnectionsPromptly) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  HttpServerOptions o = TestOptions();
  o.read_timeout = 30s;  // far beyond the deadline below: only the shutdown can close it
  ASSERT_NO_FATAL_FAILURE(h.Start(o));

  HttpClient a(h.port());
  HttpClient b(h.port());
  ASSERT_EQ(a.Get("/ok").status(), 200);
  ASSERT_EQ(b.Get("/ok").status(), 200);
  HttpClient silent(h.port());  // connected, never sent a byte
  ASSERT_TRUE(Eventually([&] { return h.server().connections() == 3; }));

  h.server().BeginShutdown();
  EXPECT_TRUE(a.WaitForClose(3s));
  EXPECT_TRUE(b.WaitForClose(3s));
  EXPECT_TRUE(silent.WaitForClose(3s));
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, WaitDrainedTimesOutWhileAHandlerHoldsItsConnection) {
  ServerHarness h;
  Mutex mu;
  std::vector<HttpResponder> stuck;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/hang",
                       [&](HttpRequest&, HttpResponder res) {
                         MutexLock lock(mu);
                         stuck.push_back(std::move(res));
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));  // handler timeout 5 s

  HttpClient c(h.port());
  http::request<http::string_body> req{http::verb::get, "/hang", 11};
  req.set(http::field::host, "127.0.0.1");
  ASSERT_FALSE(c.Write(req));
  ASSERT_TRUE(Eventually([&] {
    MutexLock lock(mu);
    return stuck.size() == 1;
  }));
  h.server().BeginShutdown();
  EXPECT_FALSE(h.server().WaitDrained(100ms));

  {
    MutexLock lock(mu);
    stuck.front().Send(HttpResponse::Text(200, "late but fine"));
    stuck.clear();
  }
  Reply r = c.Read();
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.body(), "late but fine");
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_TRUE(h.Shutdown());
}

// ----------------------------------------------------------------------------- configuration

TEST(ParseHostPortTest, AcceptsHostPortForms) {
  auto v4 = ParseHostPort("127.0.0.1:8080");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->first, "127.0.0.1");
  EXPECT_EQ(v4->second, 8080);

  auto v6 = ParseHostPort("[::1]:9000");
  ASSERT_TRUE(v6.ok());
  EXPECT_EQ(v6->first, "::1");
  EXPECT_EQ(v6->second, 9000);

  auto any = ParseHostPort(":80");
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(any->first, "0.0.0.0");
  EXPECT_EQ(any->second, 80);
}

TEST(ParseHostPortTest, RejectsBadAddresses) {
  for (const char* bad : {"localhost", "127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000",
                          "127.0.0.1:80x", "not-an-ip:80"}) {
    EXPECT_EQ(ParseHostPort(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(HttpServerStartTest, BadListenAddressIsAnError) {
  auto rt = Runtime::Create({.shards = 1, .pin_threads = false});
  ASSERT_TRUE(rt.ok());
  Router router;
  HttpServerOptions o;
  o.host = "not-an-ip";
  o.port = 0;
  EXPECT_EQ(HttpServer::Start(**rt, router, o).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chorus::net
