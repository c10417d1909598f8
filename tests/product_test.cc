// The product wiring inside `chorus up` end to end (docs/web.md, "Wiring"), over real sockets
// against the real binary: viewer chat through the compute moderation app, likes turned into a
// room's gain message, a PK whose scores follow the gifts, the dev login and the pages.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <atomic>
#include <regex>
#include <thread>

#include "net/test_client.h"
#include "support/eventually.h"
#include "support/http_client.h"
#include "support/subprocess.h"

namespace chorus::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

class ProductTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto dir = TempDir::Create("product_test");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = new TempDir(std::move(*dir));
    auto p = Subprocess::Start({CHORUS_BIN, "up", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--data-dir",
                                dir_->path() + "/data", "--set", "runtime.pin_threads=false", "--set",
                                "live.block_interval=200ms", "--set", "likes.flush_interval=100ms"},
                               {});
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    chorus_ = p->release();
    auto http_line = chorus_->WaitForLine("http listening on", 30s);
    ASSERT_TRUE(http_line.ok()) << http_line.status().ToString();
    ASSERT_TRUE(chorus_->WaitForLine("[chorus] ready", 30s).ok()) << chorus_->output();
    std::smatch m;
    ASSERT_TRUE(std::regex_search(*http_line, m, std::regex(R"(127\.0\.0\.1:(\d+))")));
    port_ = std::stoi(m[1]);
    // The moderation app placed and routable: chat is refused as unavailable until then.
    const std::string invoke = DevToken("ops")["invoke_token"];
    ASSERT_TRUE(Eventually(
        [&] {
          auto r = Call("GET", "/v1/apps/moderation/routes", "", invoke);
          return r.ok() && r->status == 200 && r->body != "[]";
        },
        120s))
        << "moderation never became routable:\n"
        << chorus_->output();
  }
  static void TearDownTestSuite() {
    delete chorus_;
    chorus_ = nullptr;
    delete dir_;
  }

  static Result<HttpReply> Call(const std::string& method, const std::string& target, const std::string& body,
                                const std::string& token = "") {
    CHORUS_ASSIGN_OR_RETURN(HttpClient client, HttpClient::Connect(port_));
    std::vector<std::pair<std::string, std::string>> headers = {{"Content-Type", "application/json"}};
    if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
    return client.Request(method, target, body, headers);
  }
  static json DevToken(const std::string& user) {
    auto r = Call("POST", "/v1/dev/token", json{{"user", user}, {"level", 5}}.dump());
    EXPECT_TRUE(r.ok() && r->status == 200) << (r.ok() ? r->body : r.status().ToString());
    return r.ok() ? json::parse(r->body, nullptr, false) : json();
  }

  static inline TempDir* dir_ = nullptr;
  static inline Subprocess* chorus_ = nullptr;
  static inline int port_ = 0;
};

// A JSON viewer on the real server.
class Viewer {
 public:
  Viewer(int port, const std::string& token, const std::string& room) {
    EXPECT_FALSE(ws_.Connect(static_cast<uint16_t>(port), "/v1/ws?format=json&token=" + token));
    EXPECT_EQ(Next()["frame"], "welcome");
    Send({{"op", "subscribe"}, {"room", room}});
    EXPECT_EQ(NextFrame("subscribed")["room"], room);
  }
  json Next(Duration deadline = 5s) {
    auto m = ws_.Read(deadline);
    if (m.ec) return json{{"frame", "<closed>"}, {"error", m.ec.message()}};
    return json::parse(m.data, nullptr, false);
  }
  json NextFrame(const std::string& kind, Duration deadline = 10s) {
    const auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
      json f = Next(deadline);
      if (f["frame"] == kind || f["frame"] == "<closed>") return f;
    }
    return json{{"frame", "<timeout>"}};
  }
  // Messages from blocks until `pred` matches one (returned) or the deadline; every message seen
  // on the way is kept in seen().
  json WaitMessage(const std::function<bool(const json&)>& pred, Duration deadline = 15s) {
    const auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
      json f = NextFrame("block", until - std::chrono::steady_clock::now());
      if (f["frame"] != "block") break;
      for (const json& m : f["messages"]) {
        seen_.push_back(m);
        if (pred(m)) return m;
      }
    }
    return json();
  }
  void Send(const json& op) { EXPECT_FALSE(ws_.Write(op.dump())); }
  const std::vector<json>& seen() const { return seen_; }

 private:
  net::testclient::WsClient ws_;
  std::vector<json> seen_;
};

// Field access that tolerates absent keys (const operator[] on a missing key is undefined).
std::string Str(const json& m, const char* key) { return m.is_object() ? m.value(key, std::string()) : ""; }
const json& Payload(const json& m) {
  static const json kEmpty = json::object();
  return m.is_object() && m.contains("payload") && m.at("payload").is_object() ? m.at("payload") : kEmpty;
}

bool IsChat(const json& m, const std::string& text) {
  return Str(m, "type") == "chat" && Str(Payload(m), "text") == text;
}

TEST_F(ProductTest, ChatGoesThroughComputeModeration) {
  json alice = DevToken("alice"), bob = DevToken("bob");
  Viewer a(port_, alice["token"], "lobby"), b(port_, bob["token"], "lobby");
  // A listed word in disguise (models/moderation/words.txt has "free money"): refused, with the
  // term named, and never delivered.
  a.Send({{"op", "chat"}, {"room", "lobby"}, {"text", "get FREE-m o n e y now"}});
  json rejected = a.NextFrame("error");
  EXPECT_EQ(rejected["code"], "moderation_rejected") << rejected.dump();
  EXPECT_NE(rejected["message"].get<std::string>().find("free money"), std::string::npos) << rejected.dump();
  a.Send({{"op", "chat"}, {"room", "lobby"}, {"text", "hello everyone"}});
  json ok = a.NextFrame("chat_ok");
  ASSERT_EQ(ok["frame"], "chat_ok") << ok.dump();
  json got = b.WaitMessage([](const json& m) { return IsChat(m, "hello everyone"); });
  ASSERT_FALSE(got.is_null()) << "bob never saw alice's chat";
  EXPECT_EQ(got["id"], ok["id"]);
  EXPECT_EQ(got["sender"]["id"], "alice");
  EXPECT_EQ(got["sender"]["level"], 5);
  for (const json& m : b.seen()) EXPECT_FALSE(IsChat(m, "get FREE-m o n e y now")) << m.dump();

  // The HTTP form for polling clients.
  auto http = Call("POST", "/v1/rooms/lobby/chat", json{{"text", "a scam"}}.dump(), bob["token"]);
  ASSERT_TRUE(http.ok());
  EXPECT_EQ(http->status, 422) << http->body;
  EXPECT_EQ(json::parse(http->body)["error"]["code"], "moderation_rejected");
}

TEST_F(ProductTest, LikesBecomeTheRoomsGainMessage) {
  json carol = DevToken("carol"), dave = DevToken("dave");
  Viewer v(port_, carol["token"], "likes-room");
  auto like = [&](const json& who) {
    auto r = Call("POST", "/v1/likes",
                  json{{"business", "live"}, {"user", who["user"]}, {"entity", "likes-room"}, {"action", "like"}}.dump(),
                  who["token"]);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->status, 200) << r->body;
  };
  auto total_is = [](int64_t n) {
    return [n](const json& m) { return Str(m, "gain_key") == "likes" && Payload(m).value("likes", int64_t{-1}) == n; };
  };
  like(carol);
  json first = v.WaitMessage(total_is(1));
  ASSERT_FALSE(first.is_null()) << "no like total of 1 in the room";
  EXPECT_EQ(first["type"], "notify");
  // Under a sustained flood of gifts (far more than a block holds) the new total still gets
  // through: the wiring's gain messages outrank every gift.
  std::atomic<bool> stop{false}, flooding{true};
  std::thread flood([&] {
    json gifts = json::array();
    for (int i = 0; i < 100; ++i) gifts.push_back({{"type", "gift"}, {"payload", {{"value", 500}}}});
    const std::string body = json{{"messages", gifts}}.dump();
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (!stop && std::chrono::steady_clock::now() < until) {
      auto r = Call("POST", "/v1/rooms/likes-room/messages", body, carol["publish_token"]);
      EXPECT_TRUE(r.ok() && r->status == 200);
      std::this_thread::sleep_for(50ms);
    }
    flooding = false;
  });
  std::this_thread::sleep_for(500ms);
  like(dave);
  like(dave);  // a repeated like is a no-op: the total stays 2
  json second = v.WaitMessage(total_is(2), 8s);
  const bool during_flood = flooding;
  stop = true;
  flood.join();
  ASSERT_FALSE(second.is_null()) << "no like total of 2 in the room";
  EXPECT_TRUE(during_flood) << "the total arrived only after the flood ended";
}

TEST_F(ProductTest, PkScoresFollowTheGifts) {
  json eve = DevToken("eve");
  Viewer red(port_, eve["token"], "pk-red");
  auto started = Call("POST", "/v1/dev/pk", json{{"rooms", {"pk-red", "pk-blue"}}, {"seconds", 3}}.dump());
  ASSERT_TRUE(started.ok());
  ASSERT_EQ(started->status, 200) << started->body;
  const std::string pk_id = json::parse(started->body)["pk_id"];
  // One of the rooms is busy now.
  auto busy = Call("POST", "/v1/dev/pk", json{{"rooms", {"pk-blue", "other"}}, {"seconds", 3}}.dump());
  ASSERT_TRUE(busy.ok());
  EXPECT_EQ(busy->status, 412) << busy->body;
  EXPECT_EQ(Call("POST", "/v1/dev/pk", json{{"rooms", {"a"}}}.dump())->status, 400);

  auto gift = [&](const std::string& room, int value) {
    auto r = Call("POST", "/v1/rooms/" + room + "/messages",
                  json{{"type", "gift"}, {"sender", {{"id", "fan"}}}, {"payload", {{"value", value}}}}.dump(),
                  eve["publish_token"]);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->status, 200) << r->body;
  };
  gift("pk-red", 100);
  gift("pk-blue", 30);
  gift("pk-red", 20);
  auto scores_are = [&](int64_t red_score, int64_t blue_score, const std::string& state) {
    return [=](const json& m) {
      const json& p = Payload(m);
      return Str(m, "type") == "pk" && Str(m, "gain_key") == "pk" && Str(p, "pk_id") == pk_id &&
             p.value("scores", json()) == json{red_score, blue_score} && Str(p, "state") == state;
    };
  };
  ASSERT_FALSE(red.WaitMessage(scores_are(120, 30, "running")).is_null()) << "scores never reached 120:30";
  json ended = red.WaitMessage(scores_are(120, 30, "ended"));
  ASSERT_FALSE(ended.is_null()) << "the PK never ended";
  EXPECT_EQ(ended["payload"]["rooms"], (json{"pk-red", "pk-blue"}));
}

// What the ops page reads: every node with its state and replicas, and per-node request counts.
TEST_F(ProductTest, NodesAndRequestSharesForTheOpsPage) {
  const std::string invoke = DevToken("ops")["invoke_token"];
  auto nodes = Call("GET", "/v1/compute/nodes", "", invoke);
  ASSERT_TRUE(nodes.ok());
  ASSERT_EQ(nodes->status, 200) << nodes->body;
  json j = json::parse(nodes->body);
  ASSERT_EQ(j["nodes"].size(), 1u) << nodes->body;
  const json& node = j["nodes"][0];
  EXPECT_EQ(node["state"], "online");
  EXPECT_GT(node["capacity"]["cpu_millis"].get<int64_t>(), 0);
  bool moderation_running = false;
  for (const json& r : node["replicas"]) moderation_running |= r["app"] == "moderation" && r["state"] == "running";
  EXPECT_TRUE(moderation_running) << node.dump();
  EXPECT_EQ(Call("GET", "/v1/compute/nodes", "")->status, 401);
  EXPECT_EQ(Call("GET", "/v1/compute/nodes", "", DevToken("x")["publish_token"])->status, 403);

  auto requests = [&] {
    auto routes = Call("GET", "/v1/apps/moderation/routes", "", invoke);
    EXPECT_TRUE(routes.ok() && routes->status == 200);
    uint64_t n = 0;
    for (const json& r : json::parse(routes->body)) n += r["requests"].get<uint64_t>();
    return n;
  };
  const uint64_t before = requests();
  for (int i = 0; i < 3; ++i) {
    auto r = Call("POST", "/v1/apps/moderation/invoke", "just words", invoke);
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->status, 200) << r->body;
  }
  EXPECT_EQ(requests(), before + 3);
}

TEST_F(ProductTest, PagesAreServed) {
  for (const char* path : {"/", "/ops", "/chorus-client.js"}) {
    auto r = Call("GET", path, "");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 200) << path;
  }
  auto ops = Call("GET", "/ops", "");
  EXPECT_NE(ops->Header("content-type").find("text/html"), std::string::npos);
}

}  // namespace
}  // namespace chorus::testing
