// End-to-end tests of the live service over real sockets: an in-process runtime and HTTP server,
// WebSocket and HTTP clients on loopback, the memory store and a real redis-server.
#include "live/live_service.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <set>
#include <sstream>
#include <thread>

#include "base/metrics.h"
#include "chorus/live/v1/live.pb.h"
#include "live/memory_store.h"
#include "live/redis_store.h"
#include "net/test_client.h"
#include "net/token.h"
#include "support/engines.h"
#include "support/http_client.h"

namespace chorus::live {
namespace {

using net::testclient::Eventually;
using net::testclient::ServerHarness;
using net::testclient::WsClient;
using nlohmann::json;
namespace beast = boost::beast;
namespace asio = boost::asio;

const std::string kSecret(40, 'k');

struct HttpReply {
  int status = 0;
  std::string body;
  json Json() const { return json::parse(body, nullptr, false); }
};

// One request on a fresh connection, through the shared test client.
HttpReply Request(uint16_t port, std::string_view method, std::string_view target, std::string_view body = "",
                  const std::string& bearer = "") {
  auto client = chorus::testing::HttpClient::Connect(port);
  EXPECT_TRUE(client.ok()) << client.status().ToString();
  if (!client.ok()) return {};
  std::vector<std::pair<std::string, std::string>> headers;
  if (!bearer.empty()) headers.emplace_back("Authorization", "Bearer " + bearer);
  if (!body.empty()) headers.emplace_back("Content-Type", "application/json");
  auto reply = client->Request(method, target, body, std::move(headers));
  EXPECT_TRUE(reply.ok()) << reply.status().ToString();
  if (!reply.ok()) return {};
  return {reply->status, reply->body};
}

class LiveServer {
 public:
  // `wire` runs before Start (chat moderator, room observer).
  explicit LiveServer(std::function<void(LiveOptions&)> tune = {}, std::shared_ptr<PollStore> store = nullptr,
                      std::function<std::shared_ptr<PollStore>(net::Runtime&)> make_store = {},
                      std::function<void(LiveService&)> wire = {}) {
    auto signer = net::TokenSigner::Create(kSecret);
    EXPECT_TRUE(signer.ok());
    signer_ = std::make_unique<net::TokenSigner>(std::move(*signer));
    LiveOptions o;
    o.block_interval = std::chrono::milliseconds(100);
    o.idle_timeout = std::chrono::seconds(30);
    if (tune) tune(o);
    if (make_store) store = make_store(harness_.runtime());
    if (!store) store = std::make_shared<MemoryPollStore>(o.retention);
    store_ = store;
    auto live = LiveService::Create(harness_.runtime(), *signer_, o, store);
    EXPECT_TRUE(live.ok()) << live.status().ToString();
    live_ = std::move(*live);
    EXPECT_TRUE(live_->AddRoutes(harness_.router()).ok());
    if (wire) wire(*live_);
    live_->Start();
    harness_.Start({});
  }
  ~LiveServer() {
    live_->Stop();
    harness_.server().BeginShutdown();
    harness_.server().WaitDrained(std::chrono::seconds(3));
    // The Redis store's clients live on the shards' event loops: drop them after the shards stop
    // and before the runtime goes away.
    harness_.runtime().Stop();
    live_.reset();
    store_.reset();
    harness_.Shutdown();
  }

  uint16_t port() const { return harness_.port(); }
  LiveService& live() { return *live_; }

  std::string UserToken(const std::string& user, int64_t ttl_s = 3600) const {
    return net::testclient::SignUserToken(*signer_, user, ttl_s);
  }
  std::string ServiceToken(std::vector<std::string> scopes = {"live.publish"}) const {
    return net::testclient::SignServiceToken(*signer_, std::move(scopes));
  }

  HttpReply Publish(const std::string& path, const json& body) {
    return Request(port(), "POST", path, body.dump(), ServiceToken());
  }
  HttpReply Poll(const std::string& room, const std::string& query = "") {
    return Request(port(), "GET", "/v1/rooms/" + room + "/messages" + query);
  }

 private:
  ServerHarness harness_;
  std::unique_ptr<net::TokenSigner> signer_;
  std::shared_ptr<PollStore> store_;
  std::unique_ptr<LiveService> live_;
};

// A JSON-format viewer.
class Viewer {
 public:
  Viewer(LiveServer& server, const std::string& user, int receive_buffer = 0) {
    ec_ = ws_.Connect(server.port(), "/v1/ws?format=json&token=" + server.UserToken(user), {}, receive_buffer);
    EXPECT_FALSE(ec_) << ec_.message();
    if (!ec_) welcome_ = Next();
  }
  json Next(chorus::Duration deadline = std::chrono::seconds(5)) {
    auto m = ws_.Read(deadline);
    if (m.ec) return json{{"frame", "<closed>"}, {"error", m.ec.message()}};
    return json::parse(m.data, nullptr, false);
  }
  // The next frame of the given kind, skipping others (e.g. presence-only blocks).
  json NextFrame(const std::string& kind, chorus::Duration deadline = std::chrono::seconds(5)) {
    const auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
      json f = Next(deadline);
      if (f["frame"] == kind || f["frame"] == "<closed>") return f;
    }
    return json{{"frame", "<timeout>"}};
  }
  // The next block that carries a message of a type other than notify (presence).
  json NextContentBlock(chorus::Duration deadline = std::chrono::seconds(5)) {
    const auto until = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < until) {
      json f = NextFrame("block", deadline);
      if (f["frame"] != "block") return f;
      for (const auto& m : f["messages"]) {
        if (m["type"] != "notify") return f;
      }
    }
    return json{{"frame", "<timeout>"}};
  }
  void Send(const json& op) { EXPECT_FALSE(ws_.Write(op.dump())); }
  json Subscribe(const std::string& room) {
    Send({{"op", "subscribe"}, {"room", room}});
    return NextFrame("subscribed");
  }
  WsClient& ws() { return ws_; }
  const json& welcome() const { return welcome_; }

 private:
  WsClient ws_;
  beast::error_code ec_;
  json welcome_;
};

// A series' value from the process registry (the in-process server's metrics), 0 if absent.
double MetricValue(const std::string& series) {
  std::istringstream in(DefaultMetrics().Render());
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series, 0) != 0) continue;
    const char next = line.size() > series.size() ? line[series.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    return std::stod(line.substr(line.rfind(' ') + 1));
  }
  return 0;
}

std::vector<std::string> Types(const json& block) {
  std::vector<std::string> out;
  for (const auto& m : block["messages"]) {
    if (m["type"] != "notify") out.push_back(m["type"].get<std::string>() + ":" + m["payload"]["n"].dump());
  }
  return out;
}

TEST(LiveServiceTest, SubscribeReceivesBlocksInPriorityOrder) {
  LiveServer server([](LiveOptions& o) { o.block_interval = std::chrono::milliseconds(300); });
  Viewer v(server, "alice");
  ASSERT_EQ(v.welcome()["frame"], "welcome");
  EXPECT_EQ(v.welcome()["user"], "alice");
  auto sub = v.Subscribe("r1");
  ASSERT_EQ(sub["frame"], "subscribed");
  EXPECT_EQ(sub["room"], "r1");
  auto res = server.Publish("/v1/rooms/r1/messages",
                            {{"messages",
                              {{{"type", "chat"}, {"payload", {{"n", 1}}}},
                               {{"type", "gift"}, {"payload", {{"n", 2}, {"value", 10}}}},
                               {{"type", "chat"}, {"sender", {{"id", "vip"}, {"level", 50}}}, {"payload", {{"n", 3}}}},
                               {{"type", "gift"}, {"payload", {{"n", 4}, {"value", 900}}}},
                               {{"type", "pk"}, {"payload", {{"n", 5}}}}}}});
  ASSERT_EQ(res.status, 200) << res.body;
  ASSERT_EQ(res.Json()["ids"].size(), 5u);
  auto block = v.NextContentBlock();
  ASSERT_EQ(block["frame"], "block") << block.dump();
  EXPECT_EQ(block["room"], "r1");
  // Published together, so one block: big gift, small gift, pk, high-level chat, anonymous chat.
  EXPECT_EQ(Types(block), (std::vector<std::string>{"gift:4", "gift:2", "pk:5", "chat:3", "chat:1"}));
  std::set<std::string> ids;
  for (const auto& m : block["messages"]) ids.insert(m["id"].get<std::string>());
  const json published = res.Json();
  for (const auto& id : published["ids"]) EXPECT_TRUE(ids.contains(id.get<std::string>()));
}

TEST(LiveServiceTest, BlocksAreCappedAndCarryOver) {
  LiveServer server([](LiveOptions& o) {
    o.block_interval = std::chrono::milliseconds(300);
    o.dispatcher.block_max = 3;
    o.dispatcher.carry_max = 2;
  });
  Viewer v(server, "bob");
  v.Subscribe("r1");
  json msgs = json::array();
  for (int i = 0; i < 6; ++i) msgs.push_back({{"type", "gift"}, {"payload", {{"n", i}}}});
  for (int i = 6; i < 8; ++i) msgs.push_back({{"type", "chat"}, {"payload", {{"n", i}}}});
  ASSERT_EQ(server.Publish("/v1/rooms/r1/messages", {{"messages", msgs}}).status, 200);
  auto first = v.NextContentBlock();
  EXPECT_EQ(Types(first), (std::vector<std::string>{"gift:0", "gift:1", "gift:2"}));
  auto second = v.NextContentBlock();
  // Two gifts carried (carry_max); gift 5 hit the carry limit, the chats were over budget.
  EXPECT_EQ(Types(second), (std::vector<std::string>{"gift:3", "gift:4"}));
  EXPECT_GT(second["seq"].get<uint64_t>(), first["seq"].get<uint64_t>());
  // Each block says how many messages the room dropped since the one before.
  EXPECT_EQ(first["dropped"], 3) << first.dump();
  EXPECT_EQ(second["dropped"], 0) << second.dump();
}

// Viewer chat: the moderator decides (a fake here, for the logic; chorus_up_test runs the real
// compute moderation app), accepted chat reaches every viewer in a block, rejected chat nobody.
TEST(LiveServiceTest, ViewerChatIsModeratedRateLimitedAndPublished) {
  std::atomic<int> observed_chats{0};
  LiveServer server(
      [](LiveOptions& o) {
        o.chat.burst = 3;
        o.chat.per_minute = 1;
        o.chat.max_bytes = 64;
      },
      nullptr, {},
      [&](LiveService& live) {
        live.SetChatModerator([](const std::string&, const std::string& text,
                                 std::function<void(Result<LiveService::ChatVerdict>)> done) {
          // Answer from another thread, as the compute client does.
          std::thread([text, done = std::move(done)] {
            if (text.find("boom") != std::string::npos) return done(Unavailable("no moderation replica"));
            LiveService::ChatVerdict v;
            v.allowed = text.find("scam") == std::string::npos;
            if (!v.allowed) v.reason = "scam";
            done(v);
          }).detach();
        });
        live.SetRoomObserver([&](const Message& m, double) {
          if (m.type == "chat") observed_chats.fetch_add(1);
        });
      });
  Viewer alice(server, "alice"), bob(server, "bob");
  ASSERT_EQ(alice.Subscribe("r1")["frame"], "subscribed");
  ASSERT_EQ(bob.Subscribe("r1")["frame"], "subscribed");

  // Not subscribed, bad room, empty and oversized text: errors, nothing published.
  alice.Send({{"op", "chat"}, {"room", "r2"}, {"text", "hi"}});
  EXPECT_EQ(alice.NextFrame("error")["code"], "not_subscribed");
  alice.Send({{"op", "chat"}, {"room", "bad room"}, {"text", "hi"}});
  EXPECT_EQ(alice.NextFrame("error")["code"], "bad_room");
  alice.Send({{"op", "chat"}, {"room", "r1"}});
  EXPECT_EQ(alice.NextFrame("error")["code"], "bad_frame");
  alice.Send({{"op", "chat"}, {"room", "r1"}, {"text", std::string(65, 'x')}});
  EXPECT_EQ(alice.NextFrame("error")["code"], "bad_frame");

  alice.Send({{"op", "chat"}, {"room", "r1"}, {"text", "total scam here"}});
  auto rejected = alice.NextFrame("error");
  EXPECT_EQ(rejected["code"], "moderation_rejected") << rejected.dump();
  EXPECT_NE(rejected["message"].get<std::string>().find("scam"), std::string::npos);
  alice.Send({{"op", "chat"}, {"room", "r1"}, {"text", "boom"}});
  EXPECT_EQ(alice.NextFrame("error")["code"], "moderation_unavailable");
  alice.Send({{"op", "chat"}, {"room", "r1"}, {"text", "hello room"}});
  auto ok = alice.NextFrame("chat_ok");
  ASSERT_EQ(ok["frame"], "chat_ok") << ok.dump();
  EXPECT_EQ(ok["room"], "r1");
  // The burst of 3 is spent (rejected and failed checks count, invalid input does not): the next
  // is rate limited.
  alice.Send({{"op", "chat"}, {"room", "r1"}, {"text", "again"}});
  EXPECT_EQ(alice.NextFrame("error")["code"], "rate_limited");

  auto block = bob.NextContentBlock();
  ASSERT_EQ(block["frame"], "block") << block.dump();
  std::vector<std::string> texts;
  for (const auto& m : block["messages"]) {
    if (m["type"] != "chat") continue;
    texts.push_back(m["payload"]["text"]);
    EXPECT_EQ(m["sender"]["id"], "alice");
    EXPECT_EQ(m["id"], ok["id"]);
  }
  EXPECT_EQ(texts, std::vector<std::string>{"hello room"});
  EXPECT_EQ(observed_chats.load(), 1);

  // HTTP, for polling clients: same checks, 422 for a rejected text.
  auto http = Request(server.port(), "POST", "/v1/rooms/r1/chat", json{{"text", "hi from http"}}.dump(),
                      server.UserToken("carol"));
  EXPECT_EQ(http.status, 200) << http.body;
  EXPECT_EQ(http.Json()["room"], "r1");
  auto bad = Request(server.port(), "POST", "/v1/rooms/r1/chat", json{{"text", "scam"}}.dump(),
                     server.UserToken("carol"));
  EXPECT_EQ(bad.status, 422) << bad.body;
  EXPECT_EQ(bad.Json()["error"]["code"], "moderation_rejected");
  EXPECT_EQ(Request(server.port(), "POST", "/v1/rooms/r1/chat", json{{"text", "x"}}.dump()).status, 401);
  EXPECT_EQ(Request(server.port(), "POST", "/v1/rooms/r1/chat", json{{"text", "x"}}.dump(), server.ServiceToken())
                .status,
            403);
  EXPECT_EQ(Request(server.port(), "POST", "/v1/rooms/r1/chat", "[1]", server.UserToken("carol")).status, 400);
  auto http_block = bob.NextContentBlock();
  ASSERT_EQ(http_block["frame"], "block") << http_block.dump();
  EXPECT_EQ(http_block["messages"][0]["payload"]["text"], "hi from http");
}

TEST(LiveServiceTest, ProtobufFramesByDefault) {
  LiveServer server;
  WsClient ws;
  ASSERT_FALSE(ws.Connect(server.port(), "/v1/ws?token=" + server.UserToken("carol")));
  auto welcome = ws.Read();
  ASSERT_FALSE(welcome.ec);
  EXPECT_TRUE(welcome.binary);
  v1::ServerFrame frame;
  ASSERT_TRUE(frame.ParseFromString(welcome.data));
  ASSERT_TRUE(frame.has_welcome());
  EXPECT_EQ(frame.welcome().user(), "carol");
  v1::ClientFrame sub;
  sub.mutable_subscribe()->set_room("pb");
  ASSERT_FALSE(ws.Write(sub.SerializeAsString(), /*binary=*/true));
  ASSERT_TRUE(frame.ParseFromString(ws.Read().data));
  ASSERT_TRUE(frame.has_subscribed());
  ASSERT_EQ(server.Publish("/v1/rooms/pb/messages", {{"type", "gift"}, {"payload", {{"n", 1}}}}).status, 200);
  bool got = false;
  for (int i = 0; i < 20 && !got; ++i) {
    auto m = ws.Read();
    ASSERT_FALSE(m.ec) << m.ec.message();
    ASSERT_TRUE(frame.ParseFromString(m.data));
    if (!frame.has_block()) continue;
    for (const auto& msg : frame.block().messages()) {
      if (msg.type() != "gift") continue;
      got = true;
      EXPECT_EQ(json::parse(msg.payload())["n"], 1);
      EXPECT_GT(msg.id(), 0u);
      EXPECT_EQ(frame.block().room(), "pb");
    }
  }
  EXPECT_TRUE(got);
  v1::ClientFrame ping;
  ping.mutable_ping()->set_ts(42);
  ASSERT_FALSE(ws.Write(ping.SerializeAsString(), true));
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(frame.ParseFromString(ws.Read().data));
    if (frame.has_pong()) break;
  }
  ASSERT_TRUE(frame.has_pong());
  EXPECT_EQ(frame.pong().ts(), 42);
}

TEST(LiveServiceTest, SwitchRoomsAndPresence) {
  LiveServer server;
  Viewer v(server, "dave");
  Viewer other(server, "erin");
  v.Subscribe("a");
  other.Subscribe("a");
  // Presence is coalesced into one notify gain message per tick.
  auto presence = v.NextFrame("block");
  ASSERT_EQ(presence["frame"], "block");
  bool saw_presence = false;
  for (const auto& m : presence["messages"]) {
    if (m["gain_key"] != "presence") continue;
    saw_presence = true;
    EXPECT_GE(m["payload"]["joined"].get<int>(), 1);
    EXPECT_EQ(m["payload"]["text"], std::to_string(m["payload"]["joined"].get<int>()) + " joined");
  }
  EXPECT_TRUE(saw_presence) << presence.dump();

  v.Send({{"op", "unsubscribe"}, {"room", "a"}});
  EXPECT_EQ(v.NextFrame("unsubscribed")["room"], "a");
  v.Subscribe("b");
  ASSERT_EQ(server.Publish("/v1/rooms/a/messages", {{"type", "chat"}, {"payload", {{"n", 1}}}}).status, 200);
  ASSERT_EQ(server.Publish("/v1/rooms/b/messages", {{"type", "chat"}, {"payload", {{"n", 2}}}}).status, 200);
  auto block = v.NextContentBlock();
  EXPECT_EQ(block["room"], "b");
  EXPECT_EQ(Types(block), (std::vector<std::string>{"chat:2"}));
  EXPECT_EQ(Types(other.NextContentBlock()), (std::vector<std::string>{"chat:1"}));
  // Unsubscribing from a room it is not in is an error frame, not a disconnect.
  v.Send({{"op", "unsubscribe"}, {"room", "zzz"}});
  EXPECT_EQ(v.NextFrame("error")["code"], "not_subscribed");
}

TEST(LiveServiceTest, PrivateMessagesReachOnlyTheUser) {
  LiveServer server;
  Viewer alice1(server, "alice"), alice2(server, "alice"), bob(server, "bob");
  auto res = server.Publish("/v1/users/alice/messages", {{"type", "notify"}, {"payload", {{"n", 7}}}});
  ASSERT_EQ(res.status, 200) << res.body;
  EXPECT_EQ(res.Json()["reached"], 2);  // both of alice's connections
  for (Viewer* v : {&alice1, &alice2}) {
    auto f = v->NextFrame("private");
    ASSERT_EQ(f["frame"], "private");
    EXPECT_EQ(f["message"]["payload"]["n"], 7);
    EXPECT_EQ(f["message"]["user"], "alice");
  }
  bob.Send({{"op", "ping"}, {"ts", 1}});
  EXPECT_EQ(bob.Next()["frame"], "pong");  // bob got nothing before his pong
  EXPECT_EQ(server.Publish("/v1/users/nobody/messages", {{"type", "notify"}}).Json()["reached"], 0);
}

TEST(LiveServiceTest, BroadcastReachesEveryRoom) {
  LiveServer server;
  Viewer a(server, "u1"), b(server, "u2");
  a.Subscribe("room-a");
  b.Subscribe("room-b");
  auto res = server.Publish("/v1/broadcast", {{"type", "notify"}, {"payload", {{"n", 9}}}});
  ASSERT_EQ(res.status, 200) << res.body;
  EXPECT_GE(res.Json()["reached"].get<int>(), 2);
  const std::string id = res.Json()["ids"][0];
  for (Viewer* v : {&a, &b}) {
    bool found = false;
    for (int i = 0; i < 10 && !found; ++i) {
      auto f = v->NextFrame("block");
      for (const auto& m : f["messages"]) found |= m["id"] == id;
    }
    EXPECT_TRUE(found);
  }
}

TEST(LiveServiceTest, SilentClientIsClosedByHeartbeatTimeout) {
  LiveServer server([](LiveOptions& o) { o.idle_timeout = std::chrono::milliseconds(600); });
  // A raw TCP client that upgrades and then never reads or answers pings.
  asio::io_context io;
  asio::ip::tcp::socket sock(io);
  sock.connect({asio::ip::make_address("127.0.0.1"), server.port()});
  const std::string upgrade = "GET /v1/ws?format=json&token=" + server.UserToken("mute") +
                              " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
  asio::write(sock, asio::buffer(upgrade));
  // Read until the server closes the TCP connection (bounded: the test fails rather than hangs).
  std::string seen;
  beast::error_code ec;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  sock.non_blocking(true);
  while (std::chrono::steady_clock::now() < until) {
    char buf[4096];
    size_t n = sock.read_some(asio::buffer(buf), ec);
    if (ec == asio::error::would_block) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      continue;
    }
    if (ec) break;
    seen.append(buf, n);
  }
  EXPECT_TRUE(ec == asio::error::eof || ec == asio::error::connection_reset) << ec.message();
  EXPECT_NE(seen.find("101"), std::string::npos);
  // The server still serves others.
  Viewer v(server, "talker");
  EXPECT_EQ(v.welcome()["frame"], "welcome");
}

TEST(LiveServiceTest, SlowClientIsDroppedWithoutDelayingAFastOne) {
  LiveServer server([](LiveOptions& o) {
    o.block_interval = std::chrono::milliseconds(20);
    o.dispatcher.block_max = 200;
    o.outbound_queue_bytes = 256 * 1024;
    o.slow_client_grace = std::chrono::milliseconds(300);
    o.max_payload_bytes = 8192;
  });
  const double slow_closes_before = MetricValue("chorus_websocket_slow_consumer_closes_total");
  Viewer fast(server, "fast");
  Viewer slow(server, "slow", /*receive_buffer=*/4096);
  fast.Subscribe("hot");
  slow.Subscribe("hot");
  // ~4 KiB messages, 600 publishes of 4: ~10 MB, more than the loopback socket buffers absorb
  // for a reader that never reads; each block stays well under the queue limit.
  const std::string filler(4000, 'x');
  constexpr int kBatches = 600, kPerBatch = 4;
  std::thread publisher([&] {
    for (int b = 0; b < kBatches; ++b) {
      json msgs = json::array();
      for (int i = 0; i < kPerBatch; ++i) {
        msgs.push_back({{"type", "gift"}, {"payload", {{"n", b * kPerBatch + i}, {"f", filler}}}});
      }
      EXPECT_EQ(server.Publish("/v1/rooms/hot/messages", {{"messages", msgs}}).status, 200);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  // The fast reader gets every message, in order.
  std::set<int> got;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (got.size() < kBatches * kPerBatch && std::chrono::steady_clock::now() < until) {
    auto f = fast.NextFrame("block");
    if (f["frame"] != "block") break;
    for (const auto& m : f["messages"]) {
      if (m["type"] == "gift") got.insert(m["payload"]["n"].get<int>());
    }
  }
  publisher.join();
  EXPECT_EQ(got.size(), static_cast<size_t>(kBatches * kPerBatch));
  // The slow one was closed as a slow consumer: the server counts it, and the client, reading
  // again, finds the connection ended — with a 1008 close frame if it still fit, else at TCP level
  // (a reader that stopped cannot receive a close frame behind its full buffers).
  EXPECT_TRUE(Eventually([&] { return MetricValue("chorus_websocket_slow_consumer_closes_total") > slow_closes_before; },
                         std::chrono::seconds(10)));
  json f;
  for (int i = 0; i < 100000 && f["frame"] != "<closed>"; ++i) f = slow.Next(std::chrono::seconds(10));
  ASSERT_EQ(f["frame"], "<closed>");
  EXPECT_NE(f["error"], "Connection timed out");
  if (slow.ws().close_code() != 0) {
    EXPECT_EQ(slow.ws().close_code(), 1008);
    EXPECT_EQ(slow.ws().close_reason(), "slow consumer");
  }
  EXPECT_GT(MetricValue("chorus_websocket_dropped_messages_total"), 0);
  EXPECT_GT(MetricValue("chorus_live_dropped_total{reason=\"slow_client\"}"), 0);
}

TEST(LiveServiceTest, BadInputGetsClearErrorsAndServerKeepsServing) {
  LiveServer server([](LiveOptions& o) { o.max_frame_bytes = 1024; });
  const uint16_t port = server.port();
  // Upgrades: no token, bad token, expired token, service token, bad format.
  WsClient ws;
  EXPECT_TRUE(ws.Connect(port, "/v1/ws"));
  EXPECT_EQ(ws.response().result_int(), 401u);
  WsClient bad;
  EXPECT_TRUE(bad.Connect(port, "/v1/ws?token=garbage"));
  EXPECT_EQ(bad.response().result_int(), 401u);
  WsClient expired;
  EXPECT_TRUE(expired.Connect(port, "/v1/ws?token=" + server.UserToken("old", -10)));
  EXPECT_EQ(expired.response().result_int(), 401u);
  WsClient service;
  EXPECT_TRUE(service.Connect(port, "/v1/ws?token=" + server.ServiceToken()));
  EXPECT_EQ(service.response().result_int(), 403u);
  WsClient format;
  EXPECT_TRUE(format.Connect(port, "/v1/ws?format=xml&token=" + server.UserToken("x")));
  EXPECT_EQ(format.response().result_int(), 400u);

  // Frames: unknown op, malformed JSON, garbage protobuf, bad room: error frames, still open.
  Viewer v(server, "frank");
  v.Send({{"op", "dance"}});
  EXPECT_EQ(v.NextFrame("error")["code"], "unknown_op");
  ASSERT_FALSE(v.ws().Write("{not json"));
  EXPECT_EQ(v.NextFrame("error")["code"], "bad_frame");
  ASSERT_FALSE(v.ws().Write(std::string("\xff\xff\xff", 3), /*binary=*/true));
  EXPECT_EQ(v.NextFrame("error")["code"], "bad_frame");
  v.Send({{"op", "subscribe"}, {"room", "no/slash"}});
  EXPECT_EQ(v.NextFrame("error")["code"], "bad_room");
  v.Send({{"op", "subscribe"}});
  EXPECT_EQ(v.NextFrame("error")["code"], "bad_frame");
  EXPECT_EQ(v.Subscribe("fine")["frame"], "subscribed");
  // Oversized frame: closed with 1009.
  ASSERT_FALSE(v.ws().Write(std::string(4096, 'a')));
  EXPECT_EQ(v.Next()["frame"], "<closed>");
  EXPECT_EQ(v.ws().close_code(), 1009);

  // Publishing: no token, user token, wrong scope, bad room, bad body, bad type, empty batch.
  const json ok = {{"type", "chat"}};
  EXPECT_EQ(Request(port, "POST", "/v1/rooms/r/messages", ok.dump()).status, 401);
  EXPECT_EQ(Request(port, "POST", "/v1/rooms/r/messages", ok.dump(), server.UserToken("u")).status, 403);
  EXPECT_EQ(Request(port, "POST", "/v1/rooms/r/messages", ok.dump(), server.ServiceToken({"likes.write"})).status,
            403);
  const std::string t = server.ServiceToken();
  EXPECT_EQ(Request(port, "POST", "/v1/rooms/bad%20room/messages", ok.dump(), t).status, 400);
  EXPECT_EQ(Request(port, "POST", "/v1/rooms/r/messages", "{oops", t).status, 400);
  auto bad_type = Request(port, "POST", "/v1/rooms/r/messages", R"({"type":"Bad Type"})", t);
  EXPECT_EQ(bad_type.status, 400);
  EXPECT_NE(bad_type.body.find("type"), std::string::npos);
  EXPECT_EQ(Request(port, "POST", "/v1/rooms/r/messages", R"({"messages":[]})", t).status, 400);
  auto second_bad = Request(port, "POST", "/v1/rooms/r/messages",
                            R"({"messages":[{"type":"chat"},{"type":"chat","priority":5000}]})", t);
  EXPECT_EQ(second_bad.status, 400);
  EXPECT_NE(second_bad.body.find("messages[1]"), std::string::npos) << second_bad.body;
  // Polling: bad since / limit / parameter.
  EXPECT_EQ(server.Poll("r", "?since=abc").status, 400);
  EXPECT_EQ(server.Poll("r", "?limit=0").status, 400);
  EXPECT_EQ(server.Poll("r", "?bogus=1").status, 400);
  EXPECT_EQ(server.Poll("a%2Fb").status, 400);
  // And it still serves.
  EXPECT_EQ(server.Publish("/v1/rooms/r/messages", ok).status, 200);
  Viewer after(server, "after");
  EXPECT_EQ(after.welcome()["frame"], "welcome");
}

TEST(LiveServiceTest, ConnectChoosesTransportByCapabilityAndRoomSize) {
  LiveServer server([](LiveOptions& o) { o.poll_tiers = {{1, 1500}, {2, 2000}}; o.poll_ms_max = 2500; });
  auto c = Request(server.port(), "GET", "/v1/connect?room=r").Json();
  EXPECT_EQ(c["transport"], "websocket");
  EXPECT_EQ(c["urls"][0], "ws://127.0.0.1:" + std::to_string(server.port()) + "/v1/ws");
  EXPECT_EQ(c["poll_ms"], 1500);
  auto p = Request(server.port(), "GET", "/v1/connect?room=r&ws=0").Json();
  EXPECT_EQ(p["transport"], "poll");
  EXPECT_EQ(p["poll_url"], "/v1/rooms/r/messages");
  Viewer a(server, "a"), b(server, "b");
  a.Subscribe("r");
  b.Subscribe("r");
  EXPECT_TRUE(Eventually([&] {
    return Request(server.port(), "GET", "/v1/connect?room=r").Json()["poll_ms"] == 2500;
  }));
  EXPECT_EQ(Request(server.port(), "GET", "/v1/connect").status, 400);
}

// Polling behaves the same on both stores.
class LivePollTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "redis") {
      auto redis = chorus::testing::RedisServer::Start();
      ASSERT_TRUE(redis.ok()) << redis.status().ToString();
      redis_ = std::move(*redis);
    }
  }
  std::unique_ptr<LiveServer> MakeServer() {
    if (GetParam() == "memory") return std::make_unique<LiveServer>();
    return std::make_unique<LiveServer>(nullptr, nullptr, [this](net::Runtime& rt) -> std::shared_ptr<PollStore> {
      redis::RedisOptions ro;
      ro.host = redis_->host();
      ro.port = redis_->port();
      auto store = RedisPollStore::Connect(rt, ro, RetentionOptions{});
      EXPECT_TRUE(store.ok()) << store.status().ToString();
      std::shared_ptr<RedisPollStore> s = std::move(*store);
      EXPECT_TRUE(Eventually([&] { return s->clients()[0]->connected() && s->clients()[1]->connected(); }));
      return s;
    });
  }
  std::unique_ptr<chorus::testing::RedisServer> redis_;
};

TEST_P(LivePollTest, ClampLimitPriorityAndNextSince) {
  auto server = MakeServer();
  json msgs = json::array();
  for (int i = 0; i < 10; ++i) msgs.push_back({{"type", "chat"}, {"payload", {{"n", i}}}});
  msgs.push_back({{"type", "gift"}, {"payload", {{"n", 100}, {"value", 50}}}});
  msgs.push_back({{"type", "pk"}, {"payload", {{"n", 200}}}});
  ASSERT_EQ(server->Publish("/v1/rooms/p/messages", {{"messages", msgs}}).status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the current ms is held back

  // A batch is stamped 1 ms apart, and the current millisecond is held back: wait until all of
  // it is pollable.
  HttpReply r;
  ASSERT_TRUE(Eventually([&] {
    r = server->Poll("p", "?since=0&limit=50");
    return r.status == 200 && r.Json()["messages"].size() == 12;
  })) << r.status << " " << r.body;
  // since=0 is clamped to the retention window; limit 3 keeps the highest priorities.
  r = server->Poll("p", "?since=0&limit=3");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.Json();
  std::set<std::string> types;
  for (const auto& m : j["messages"]) types.insert(m["type"]);
  EXPECT_EQ(types, (std::set<std::string>{"gift", "pk", "chat"}));
  EXPECT_GT(j["next_since"].get<int64_t>(), 0);
  EXPECT_EQ(j["next_poll_ms"], 1500);
  // next_since is past everything considered: the next poll is empty.
  auto next = server->Poll("p", "?since=" + std::to_string(j["next_since"].get<int64_t>())).Json();
  EXPECT_TRUE(next["messages"].empty()) << next.dump();
  EXPECT_EQ(next["next_since"], j["next_since"]);

  // Default limit 15, max 50; types filter.
  auto all = server->Poll("p", "?limit=500").Json();
  EXPECT_EQ(all["messages"].size(), 12u);
  auto chats = server->Poll("p", "?types=chat,chat").Json();  // a repeated type counts once
  EXPECT_EQ(chats["messages"].size(), 10u);
  for (const auto& m : chats["messages"]) EXPECT_EQ(m["type"], "chat");
  // In time order; created_at strictly increases within a room, even inside one batch.
  int64_t prev = 0;
  for (const auto& m : chats["messages"]) {
    EXPECT_GT(m["created_at"].get<int64_t>(), prev);
    prev = m["created_at"];
  }
  // A since in the future is clamped to now: nothing, and a next_since to continue from.
  const int64_t future = SystemClock::Instance().WallMillis() + 3'600'000;
  auto f = server->Poll("p", "?since=" + std::to_string(future)).Json();
  EXPECT_TRUE(f["messages"].empty());
  EXPECT_LT(f["next_since"].get<int64_t>(), future);
  // An unknown room is simply empty.
  EXPECT_TRUE(server->Poll("nobody-here").Json()["messages"].empty());
}

// A room publish is answered once the poll store has the messages. With the store down (Redis
// stopped) the answer says so, and the messages are still pushed.
TEST_P(LivePollTest, PublishIsAnsweredOnceThePollStoreHasIt) {
  auto server = MakeServer();
  Viewer v(*server, "v");
  v.Subscribe("q");
  HttpReply p = server->Publish("/v1/rooms/q/messages", {{"type", "chat"}, {"payload", {{"n", 1}}}});
  ASSERT_EQ(p.status, 200) << p.body;
  EXPECT_FALSE(p.Json().contains("poll_store_failed")) << p.body;
  const std::string id = p.Json()["ids"][0];
  json polled;
  EXPECT_TRUE(Eventually([&] {  // a poll does not see the current millisecond yet
    polled = server->Poll("q", "?since=0&limit=50").Json();
    for (const auto& m : polled["messages"]) {
      if (m["id"] == id) return true;
    }
    return false;
  })) << "the answered publish is pollable: " << polled.dump() << " id " << id;
  json block = v.NextContentBlock();
  ASSERT_EQ(block["frame"], "block") << block.dump();

  if (GetParam() != "redis") return;
  redis_->Stop();
  HttpReply down;
  ASSERT_TRUE(Eventually([&] {
    down = server->Publish("/v1/rooms/q/messages", {{"type", "chat"}, {"payload", {{"n", 2}}}});
    return down.status == 200 && down.Json().value("poll_store_failed", false);
  })) << down.status << " " << down.body;
  json pushed = v.NextContentBlock();
  ASSERT_EQ(pushed["frame"], "block") << pushed.dump() << ": pushed even though the poll store is down";
}

INSTANTIATE_TEST_SUITE_P(Stores, LivePollTest, ::testing::Values("memory", "redis"));

}  // namespace
}  // namespace chorus::live
