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

// Requests a test answers itself, later or never: the handler from Handler() parks each
// request's body and responder here. Declare it before the harness (handlers point at it), or
// after it when the parked responders must be released while the server still runs.
class Parked {
 public:
  HttpHandler Handler() {
    return [this](HttpRequest& req, HttpResponder res) {
      MutexLock lock(mu_);
      items_.emplace_back(req.body, std::move(res));
    };
  }
  size_t size() {
    MutexLock lock(mu_);
    return items_.size();
  }
  // Everything parked so far, oldest first; the rest of the test owns it.
  std::vector<std::pair<std::string, HttpResponder>> Take() {
    std::vector<std::pair<std::string, HttpResponder>> out;
    MutexLock lock(mu_);
    out.swap(items_);
    return out;
  }
  // Answers everything parked so far: 200 with `body`.
  void AnswerAll(const std::string& body) {
    for (auto& item : Take()) item.second.Send(HttpResponse::Text(200, body));
  }

 private:
  Mutex mu_;
  std::vector<std::pair<std::string, HttpResponder>> items_ GUARDED_BY(mu_);
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
  Parked held;
  ServerHarness h;
  ASSERT_TRUE(h.router().Add("GET", "/hold", held.Handler()).ok());
  HttpServerOptions o = TestOptions();
  o.max_pipelined_requests = 2;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  HttpClient c(h.port());
  std::string five;
  for (int i = 0; i < 5; ++i) five += "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_FALSE(c.SendRaw(five));
  ASSERT_TRUE(Eventually([&] { return held.size() == 2; }));
  std::this_thread::sleep_for(50ms);
  EXPECT_EQ(held.size(), 2u);  // the other three wait in the read buffer
  held.AnswerAll("a");
  ASSERT_TRUE(Eventually([&] { return held.size() == 2; }));
  held.AnswerAll("b");
  ASSERT_TRUE(Eventually([&] { return held.size() == 1; }));
  held.AnswerAll("c");
  for (const char* want : {"a", "a", "b", "b", "c"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, PipelinedPostsRunOneAtATimeInOrder) {
  Parked held;
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddEcho(h.router()));
  ASSERT_TRUE(h.router().Add("POST", "/hold", held.Handler()).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /n?i=0 HTTP/1.1\r\nHost: x\r\n\r\n"
                "POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"
                "POST /hold HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nb"
                "GET /n?i=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  auto answer = [&](const std::string& want) {
    auto now = held.Take();
    ASSERT_EQ(now.size(), 1u);
    EXPECT_EQ(now[0].first, want);
    now[0].second.Send(HttpResponse::Text(200, want));
  };
  ASSERT_TRUE(Eventually([&] { return held.size() == 1; }));
  std::this_thread::sleep_for(50ms);
  ASSERT_NO_FATAL_FAILURE(answer("a"));  // the second POST was not dispatched beside the first
  ASSERT_TRUE(Eventually([&] { return held.size() == 1; }));
  ASSERT_NO_FATAL_FAILURE(answer("b"));
  for (const char* want : {"0", "a", "b", "3"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, PostsToARouteThatKeepsItsOwnOrderAreDispatchedTogether) {
  Parked held;
  ServerHarness h;
  RouteOptions parallel;
  parallel.parallel_pipelining = true;
  ASSERT_TRUE(h.router().Add("POST", "/any", held.Handler(), parallel).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  std::string three;
  for (const char* body : {"a", "b", "c"}) {
    three += std::string("POST /any HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n") + body;
  }
  ASSERT_FALSE(c.SendRaw(three));
  ASSERT_TRUE(Eventually([&] { return held.size() == 3; }));  // all three in progress at once
  auto now = held.Take();
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
  Parked stuck;
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router().Add("GET", "/hang", stuck.Handler()).ok());
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
  EXPECT_EQ(stuck.Take().size(), 2u);  // dropped: their late 500s go nowhere
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
  Parked stuck;  // declared after the harness: released while it still runs
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router().Add("GET", "/hang", stuck.Handler()).ok());
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
  ASSERT_EQ(stuck.Take().size(), 1u);
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
  Parked stuck;
  ASSERT_TRUE(h.router().Add("GET", "/hang", stuck.Handler()).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));  // handler timeout 5 s

  HttpClient c(h.port());
  http::request<http::string_body> req{http::verb::get, "/hang", 11};
  req.set(http::field::host, "127.0.0.1");
  ASSERT_FALSE(c.Write(req));
  ASSERT_TRUE(Eventually([&] { return stuck.size() == 1; }));
  h.server().BeginShutdown();
  EXPECT_FALSE(h.server().WaitDrained(100ms));

  stuck.AnswerAll("late but fine");
  Reply r = c.Read();
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.body(), "late but fine");
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_TRUE(h.Shutdown());
}

// ----------------------------------------------------------------------------- pipelining review

// True once the server has sent something (or the socket failed): the client has bytes to read.
bool ServerHasAnswered(HttpClient& c) {
  boost::system::error_code ec;
  const size_t n = c.socket().available(ec);
  return ec || n > 0;
}

TEST(HttpServerTest, DripFedRequestStillTimesOut) {
  // The read timeout bounds a whole request ("a request ... must arrive within it",
  // http_server.h), not the gap between two of its reads: a peer dripping its header a line at a
  // time, each line well within the timeout, must still get its 408.
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  HttpServerOptions o = TestOptions();
  o.read_timeout = 300ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  HttpClient c(h.port());
  ASSERT_FALSE(c.SendRaw("GET /ok HTTP/1.1\r\nHost: x\r\n"));
  // 40 lines 60 ms apart: 2.4 s, eight read timeouts. Stops as soon as the server answers.
  for (int i = 0; i < 40 && !ServerHasAnswered(c); ++i) {
    std::this_thread::sleep_for(60ms);
    if (ServerHasAnswered(c) || c.SendRaw("X-Drip: " + std::to_string(i) + "\r\n")) break;
  }
  // A server that has not answered yet gets the end of the request (and would answer 200).
  if (!ServerHasAnswered(c)) (void)c.SendRaw("\r\n");
  Reply r = c.Read();
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.status(), 408) << "a request dripped over eight read timeouts was served";
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, HeadWithAMalformedTargetGets400WithoutABody) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  for (const char* raw : {"HEAD /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD /ok?q=%4 HTTP/1.1\r\nHost: x\r\n\r\n"}) {
    HttpClient c(h.port());
    ASSERT_FALSE(c.SendRaw(raw));
    Reply r = c.Read(/*head=*/true);
    ASSERT_FALSE(r.ec) << raw << ": " << r.ec.message();
    EXPECT_EQ(r.status(), 400) << raw;
    std::string extra;
    EXPECT_TRUE(c.WaitForClose(5s, &extra)) << raw;
    EXPECT_EQ(extra, "") << raw << ": the response to a HEAD request carried a body";
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, SendOnTheConnectionsShardDoesNotRunTheNextHandlerInsideIt) {
  // POST /first is held; POST /second waits for its answer (unsafe requests run one at a time).
  // Answering /first from a task on the connection's shard must not run /second's handler
  // inside that Send(): the caller may hold a lock /second's handler takes, or be iterating a
  // container /second's handler appends to.
  Mutex mu;
  std::optional<HttpResponder> first;
  uint32_t first_shard = 0;
  std::atomic<bool> in_send{false};
  std::atomic<int> second_ran{0};  // 1: on its own, 2: inside the Send() of /first
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("POST", "/first",
                       [&](HttpRequest& req, HttpResponder res) {
                         MutexLock lock(mu);
                         first_shard = req.shard;
                         first.emplace(std::move(res));
                       })
                  .ok());
  ASSERT_TRUE(h.router()
                  .Add("POST", "/second",
                       [&](HttpRequest&, HttpResponder res) {
                         second_ran = in_send ? 2 : 1;
                         res.Send(HttpResponse::Text(200, "second"));
                       })
                  .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                "POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
  ASSERT_TRUE(Eventually([&] {
    MutexLock lock(mu);
    return first.has_value();
  }));
  std::optional<HttpResponder> res;
  uint32_t shard = 0;
  {
    MutexLock lock(mu);
    res.emplace(std::move(*first));
    first.reset();
    shard = first_shard;
  }
  h.runtime().Post(shard, [&in_send, res = std::move(res)]() mutable {
    in_send = true;
    res->Send(HttpResponse::Text(200, "first"));
    in_send = false;
  });
  for (const char* want : {"first", "second"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.body(), want);
  }
  EXPECT_EQ(second_ran.load(), 1) << "/second's handler ran inside HttpResponder::Send of /first";
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, ShutdownMidPipelineMarksOnlyTheLastAnswerClose) {
  Parked held;
  ServerHarness h;
  ASSERT_TRUE(h.router().Add("GET", "/hold", held.Handler()).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  const uint16_t port = h.port();
  HttpClient c(port);
  ASSERT_FALSE(
      c.SendRaw("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_TRUE(Eventually([&] { return held.size() == 2; }));
  auto both = held.Take();
  h.server().BeginShutdown();
  // Every shard has run its shutdown task once no listener accepts.
  ASSERT_TRUE(Eventually([&] { return static_cast<bool>(HttpClient(port).connect_error()); }));
  both[0].second.Send(HttpResponse::Text(200, "a"));
  Reply a = c.Read();
  ASSERT_FALSE(a.ec) << a.ec.message();
  EXPECT_EQ(a.body(), "a");
  EXPECT_NE(a.header("Connection"), "close");  // another answer is still owed on this connection
  both[1].second.Send(HttpResponse::Text(200, "b"));
  Reply b = c.Read();
  ASSERT_FALSE(b.ec) << b.ec.message();
  EXPECT_EQ(b.body(), "b");
  EXPECT_EQ(b.header("Connection"), "close");
  EXPECT_TRUE(c.WaitForClose());
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, RequestWithoutKeepAliveEndsThePipeline) {
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddEcho(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /n?i=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /n?i=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                "GET /n?i=3 HTTP/1.1\r\nHost: x\r\n\r\n"));
  Reply one = c.Read();
  ASSERT_FALSE(one.ec) << one.ec.message();
  EXPECT_EQ(one.body(), "1");
  EXPECT_NE(one.header("Connection"), "close");
  Reply two = c.Read();
  ASSERT_FALSE(two.ec) << two.ec.message();
  EXPECT_EQ(two.body(), "2");
  EXPECT_EQ(two.header("Connection"), "close");
  std::string extra;
  EXPECT_TRUE(c.WaitForClose(5s, &extra));
  EXPECT_EQ(extra, "");  // request 3 is not answered
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, HeadInAPipelineSendsNoBody) {
  ServerHarness h;
  ASSERT_TRUE(
      h.router()
          .Add("GET", "/doc",
               [](HttpRequest&, HttpResponder res) { res.Send(HttpResponse::Text(200, "hello world")); })
          .ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("HEAD /doc HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /doc HTTP/1.1\r\nHost: x\r\n\r\n"
                "HEAD /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /doc HTTP/1.1\r\nHost: x\r\n\r\n"));
  Reply head = c.Read(/*head=*/true);
  ASSERT_FALSE(head.ec) << head.ec.message();
  EXPECT_EQ(head.status(), 200);
  EXPECT_EQ(head.header("Content-Length"), "11");
  Reply get = c.Read();
  ASSERT_FALSE(get.ec) << get.ec.message();
  EXPECT_EQ(get.body(), "hello world");
  Reply missing = c.Read(/*head=*/true);
  ASSERT_FALSE(missing.ec) << missing.ec.message();
  EXPECT_EQ(missing.status(), 404);
  Reply again = c.Read();
  ASSERT_FALSE(again.ec) << again.ec.message();
  EXPECT_EQ(again.status(), 200);
  EXPECT_EQ(again.body(), "hello world");
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, LateAnswerAfter504DoesNotReachALaterRequest) {
  Parked hung;
  Parked held;
  ServerHarness h;
  ASSERT_TRUE(h.router().Add("GET", "/hang", hung.Handler()).ok());
  ASSERT_TRUE(h.router().Add("GET", "/hold", held.Handler()).ok());
  HttpServerOptions o = TestOptions();
  o.handler_timeout = 200ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  HttpClient c(h.port());
  Reply timed_out = c.Get("/hang");
  ASSERT_FALSE(timed_out.ec) << timed_out.ec.message();
  EXPECT_EQ(timed_out.status(), 504);
  http::request<http::string_body> req{http::verb::get, "/hold", 11};
  req.set(http::field::host, "x");
  ASSERT_FALSE(c.Write(req));
  ASSERT_TRUE(Eventually([&] { return held.size() == 1; }));
  auto late = hung.Take();
  auto mine = held.Take();
  late.front().second.Send(HttpResponse::Text(200, "late"));  // answers /hang, long gone
  mine.front().second.Send(HttpResponse::Text(200, "mine"));
  Reply r = c.Read();
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.body(), "mine");
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, PostThatTimesOutReleasesTheRequestsBehindIt) {
  Parked stuck;
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddEcho(h.router()));
  ASSERT_TRUE(h.router().Add("POST", "/hang", stuck.Handler()).ok());
  HttpServerOptions o = TestOptions();
  o.handler_timeout = 200ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                "GET /n?i=2 HTTP/1.1\r\nHost: x\r\n\r\n"
                "POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                "GET /n?i=4 HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (const char* want : {"504", "2", "504", "4"}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    if (std::string(want) == "504") {
      EXPECT_EQ(r.status(), 504);
    } else {
      EXPECT_EQ(r.body(), want);
    }
  }
  EXPECT_EQ(stuck.Take().size(), 2u);
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, WebSocketUpgradeInAPipelineWaitsForTheAnswersBeforeIt) {
  Threads threads;
  std::atomic<int> opened{0};
  ServerHarness h;
  ASSERT_TRUE(h.router()
                  .Add("GET", "/later",
                       [&threads](HttpRequest&, HttpResponder res) {
                         threads.Spawn([res = std::move(res)]() mutable {
                           std::this_thread::sleep_for(50ms);
                           res.Send(HttpResponse::Text(200, "later"));
                         });
                       })
                  .ok());
  WebSocketHandler ws;
  ws.on_open = [&](const std::shared_ptr<WebSocketConnection>&) { ++opened; };
  ASSERT_TRUE(h.router().AddWebSocket("/ws", ws).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"));
  Reply first = c.Read();
  ASSERT_FALSE(first.ec) << first.ec.message();
  EXPECT_EQ(first.status(), 200);
  EXPECT_EQ(first.body(), "later");
  Reply upgrade = c.Read();
  ASSERT_FALSE(upgrade.ec) << upgrade.ec.message();
  EXPECT_EQ(upgrade.status(), 101);
  EXPECT_TRUE(Eventually([&] { return opened.load() == 1; }));
  // This raw client would not answer the server's close frame (the server waits 5 s for it).
  boost::system::error_code ignored;
  c.socket().close(ignored);
  EXPECT_TRUE(h.Shutdown());
  threads.JoinAll();
}

TEST(HttpServerTest, ShutdownWithAnUpgradeQueuedMarksTheLastAnswerClose) {
  // GET /hold is owed, the upgrade request behind it waits (PendingUpgrade). The shutdown then
  // means the upgrade never happens and the connection closes after /hold's answer: that answer
  // is the last, so it carries `Connection: close`.
  Parked held;
  std::atomic<int> opened{0};
  ServerHarness h;
  ASSERT_TRUE(h.router().Add("GET", "/hold", held.Handler()).ok());
  WebSocketHandler ws;
  ws.on_open = [&](const std::shared_ptr<WebSocketConnection>&) { ++opened; };
  ASSERT_TRUE(h.router().AddWebSocket("/ws", ws).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  const uint16_t port = h.port();
  HttpClient c(port);
  ASSERT_FALSE(
      c.SendRaw("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"));
  ASSERT_TRUE(Eventually([&] { return held.size() == 1; }));
  h.server().BeginShutdown();
  ASSERT_TRUE(Eventually([&] { return static_cast<bool>(HttpClient(port).connect_error()); }));
  held.AnswerAll("held");
  Reply r = c.Read();
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.body(), "held");
  std::string extra;
  EXPECT_TRUE(c.WaitForClose(5s, &extra));
  EXPECT_EQ(extra, "");  // no 101: the upgrade is dropped
  EXPECT_EQ(opened.load(), 0);
  EXPECT_EQ(r.header("Connection"), "close") << "the last answer before the close";
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, PipelinedRequestsAreCountedOnceInTheMetrics) {
  Parked stuck;
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_TRUE(h.router().Add("GET", "/hang", stuck.Handler()).ok());
  HttpServerOptions o = TestOptions();
  o.handler_timeout = 200ms;
  ASSERT_NO_FATAL_FAILURE(h.Start(o));
  auto value = [](const std::string& code) {
    return SeriesValue(DefaultMetrics().Render(), "chorus_http_requests_total{code=\"" + code + "\"}");
  };
  const double ok0 = value("200"), late0 = value("500"), timeout0 = value("504");
  HttpClient c(h.port());
  ASSERT_FALSE(
      c.SendRaw("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"));
  for (int want : {200, 504, 200, 200}) {
    Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    EXPECT_EQ(r.status(), want);
  }
  stuck.Take();  // dropped: the late 500 is not a response, and not counted
  ASSERT_EQ(c.Get("/ok").status(), 200);
  EXPECT_EQ(value("200") - ok0, 4.0);
  EXPECT_EQ(value("504") - timeout0, 1.0);
  EXPECT_EQ(value("500") - late0, 0.0);
  EXPECT_TRUE(h.Shutdown());
}

TEST(HttpServerTest, ConnectionsAcceptedDuringShutdownAreDrained) {
  // Connections accepted while the shutdown starts, some handed over to the other shard, are all
  // closed and counted out: WaitDrained returns true.
  ServerHarness h;
  ASSERT_NO_FATAL_FAILURE(AddOk(h.router()));
  ASSERT_NO_FATAL_FAILURE(h.Start(TestOptions()));
  std::vector<std::unique_ptr<HttpClient>> clients;
  for (int i = 0; i < 6; ++i) clients.push_back(std::make_unique<HttpClient>(h.port()));
  std::thread late([&] {
    for (int i = 0; i < 20; ++i) HttpClient(h.port());  // connect and go, racing the shutdown
  });
  h.server().BeginShutdown();
  late.join();
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_EQ(h.server().connections(), 0u);
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
