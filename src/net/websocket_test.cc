#include "net/websocket.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <linux/io_uring.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <any>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "base/metrics.h"
#include "base/mutex.h"
#include "net/http_server.h"
#include "net/test_client.h"
#include "net/ws_codec.h"

namespace chorus::net {
namespace {

using namespace std::chrono_literals;
using testclient::Eventually;
using testclient::HttpClient;
using testclient::ServerHarness;
using testclient::WsClient;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;

// Records what the server reports about WebSocket connections. Declare it before the harness:
// callbacks may run until the runtime stops. It holds connections weakly so it never keeps a
// session (and its socket) alive past the runtime.
class Recorder {
 public:
  void Opened(const std::shared_ptr<WebSocketConnection>& c) {
    MutexLock lock(mu_);
    opened_.push_back(c);
  }
  void Closed(uint16_t code) {
    MutexLock lock(mu_);
    closes_.push_back(code);
  }
  size_t opened() {
    MutexLock lock(mu_);
    return opened_.size();
  }
  std::vector<uint16_t> closes() {
    MutexLock lock(mu_);
    return closes_;
  }
  // The i-th opened connection, or null if it is gone.
  std::shared_ptr<WebSocketConnection> conn(size_t i) {
    MutexLock lock(mu_);
    return i < opened_.size() ? opened_[i].lock() : nullptr;
  }
  bool WaitOpened(size_t n) {
    return Eventually([&] { return opened() >= n; });
  }
  bool WaitClosed(size_t n) {
    return Eventually([&] { return closes().size() >= n; });
  }

 private:
  Mutex mu_;
  std::vector<std::weak_ptr<WebSocketConnection>> opened_ GUARDED_BY(mu_);
  std::vector<uint16_t> closes_ GUARDED_BY(mu_);
};

// Echoes every message back with its type; records open/close.
WebSocketHandler EchoHandler(Recorder& rec, WebSocketOptions options = {}) {
  WebSocketHandler h;
  h.on_open = [&rec](const std::shared_ptr<WebSocketConnection>& c) { rec.Opened(c); };
  h.on_message = [](WebSocketConnection& c, std::string_view data, bool binary) {
    c.Send(std::make_shared<const std::string>(data), binary);
  };
  h.on_close = [&rec](WebSocketConnection&, uint16_t code) { rec.Closed(code); };
  h.options = options;
  return h;
}

// Runs a no-op on the connection's shard and waits for it: everything posted to that shard
// before (e.g. Send() from this thread) has been processed.
void Barrier(Runtime& rt, const WebSocketConnection& c) {
  std::promise<void> done;
  rt.shard(c.shard()).Post([&done] { done.set_value(); });
  ASSERT_EQ(done.get_future().wait_for(5s), std::future_status::ready);
}

// Message i of a slow-consumer burst: 8 bytes of index, then a filler derived from the index.
// When the server releases the buffer it is scribbled over first, so a payload freed while a
// write still reads from it shows up as damaged bytes at the client (not only under ASan).
std::shared_ptr<const std::string> BurstMessage(uint64_t i, size_t size) {
  auto* s = new std::string(size, static_cast<char>('a' + i % 26));
  std::memcpy(s->data(), &i, sizeof i);
  return std::shared_ptr<const std::string>(s, [](const std::string* p) {
    std::memset(const_cast<char*>(p->data()), '#', p->size());
    delete p;
  });
}

// Whether `s` is intact burst message and, if so, its index.
bool ParseBurstMessage(const std::string& s, size_t size, uint64_t* index) {
  if (s.size() != size) return false;
  std::memcpy(index, s.data(), sizeof *index);
  const char fill = static_cast<char>('a' + *index % 26);
  for (size_t k = sizeof *index; k < s.size(); ++k) {
    if (s[k] != fill) return false;
  }
  return true;
}

// A control frame (welcome, pong, error...) of a slow-consumer test, sent as text:
// "control <seq>", padded with '.' to `size` bytes if it is shorter.
std::shared_ptr<const std::string> ControlMessage(uint64_t seq, size_t size = 0) {
  std::string s = "control " + std::to_string(seq);
  if (s.size() < size) s.resize(size, '.');
  return std::make_shared<const std::string>(std::move(s));
}

bool ParseControlMessage(const std::string& s, uint64_t* seq) {
  constexpr std::string_view kPrefix = "control ";
  if (s.rfind(kPrefix, 0) != 0) return false;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data() + kPrefix.size(), end, *seq);
  if (ec != std::errc()) return false;
  return std::all_of(p, end, [](char c) { return c == '.'; });
}

// Options for the kDropOldest tests: a 64 KiB queue, i.e. eight 8 KiB blocks.
constexpr size_t kBlockSize = 8 * 1024;
// A burst of 16 MiB of blocks: far more than the loopback socket buffers absorb (tcp_wmem max is
// 4 MiB by default and the client's receive buffer is 16 KiB).
constexpr uint64_t kBurstBlocks = 2000;

// Brings `conn`, whose client reads nothing, to a stalled writer with a full queue: sends blocks
// 0, 1, 2... one at a time, each once the previous one was queued, until one overflows the queue.
// At that pace an overflow means the writer made no progress over several messages, so the socket
// buffers are full, and they stay full while the client does not read. (A fast burst overflows
// earlier, while the kernel may still be absorbing data, and the queue may drain afterwards.)
// Returns the number of blocks sent.
uint64_t StallWriter(Runtime& rt, WebSocketConnection& conn) {
  for (uint64_t seq = 0; seq < 20000; ++seq) {
    EXPECT_TRUE(conn.Send(BurstMessage(seq, kBlockSize), /*binary=*/true, /*droppable=*/true));
    Barrier(rt, conn);
    if (::testing::Test::HasFatalFailure()) return 0;
    if (conn.dropped() > 0) return seq + 1;
  }
  ADD_FAILURE() << "160 MiB went out to a client that reads nothing without filling its queue";
  return 0;
}

WebSocketOptions DropOldestOptions(Duration grace) {
  WebSocketOptions o;
  o.max_queue_bytes = 64 * 1024;
  o.overflow = WsOverflow::kDropOldest;
  o.slow_client_grace = grace;
  return o;
}

TEST(WebSocketTest, RejectedUpgradeAnswersHttpErrorAndOpensNothing) {
  Recorder rec;
  ServerHarness h;
  WebSocketHandler handler = EchoHandler(rec);
  handler.accept = [](const HttpRequest& req) -> Result<std::any> {
    if (req.Query("token") != "good") return Unauthenticated("missing or bad token");
    return std::any(std::string("ok"));
  };
  ASSERT_TRUE(h.router().AddWebSocket("/ws", handler).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient bad;
  EXPECT_EQ(bad.Connect(h.port(), "/ws?token=bad"), websocket::error::upgrade_declined);
  EXPECT_EQ(bad.response().result_int(), 401);
  EXPECT_THAT(bad.response().body(), HasSubstr("unauthenticated"));
  EXPECT_EQ(bad.response()[http::field::connection], "close");

  WsClient good;
  ASSERT_FALSE(good.Connect(h.port(), "/ws?token=good"));
  EXPECT_TRUE(rec.WaitOpened(1));
  EXPECT_EQ(rec.opened(), 1u);
  ASSERT_FALSE(good.Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, UpgradeOnlyWhereAWebSocketRouteExists) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient unknown;
  EXPECT_EQ(unknown.Connect(h.port(), "/elsewhere"), websocket::error::upgrade_declined);
  EXPECT_EQ(unknown.response().result_int(), 404);

  // A plain GET to the WebSocket path is not upgraded (and does not reach the handler).
  HttpClient plain(h.port());
  auto r = plain.Get("/ws");
  ASSERT_FALSE(r.ec) << r.ec.message();
  EXPECT_EQ(r.status(), 426);
  EXPECT_EQ(rec.opened(), 0u);
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, EchoesTextAndBinaryMessages) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws"));
  EXPECT_EQ(c.response()[http::field::server], "chorus");

  ASSERT_FALSE(c.Write("hello"));
  auto text = c.Read();
  ASSERT_FALSE(text.ec) << text.ec.message();
  EXPECT_EQ(text.data, "hello");
  EXPECT_FALSE(text.binary);

  const std::string bytes("\x00\x01\xff\xfe binary \x00", 13);
  ASSERT_FALSE(c.Write(bytes, /*binary=*/true));
  auto bin = c.Read();
  ASSERT_FALSE(bin.ec) << bin.ec.message();
  EXPECT_EQ(bin.data, bytes);
  EXPECT_TRUE(bin.binary);

  ASSERT_FALSE(c.Write(""));
  auto empty = c.Read();
  ASSERT_FALSE(empty.ec);
  EXPECT_EQ(empty.data, "");

  // Larger than one read: arrives as one message.
  const std::string large(48 * 1024, 'L');
  ASSERT_FALSE(c.Write(large));
  auto big = c.Read();
  ASSERT_FALSE(big.ec);
  EXPECT_TRUE(big.data == large);

  ASSERT_FALSE(c.Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, AcceptContextIsVisibleInOnMessageOnTheConnectionShard) {
  Recorder rec;
  ServerHarness h;
  WebSocketHandler handler = EchoHandler(rec);
  handler.accept = [](const HttpRequest& req) -> Result<std::any> {
    return std::any(std::string("user:") + std::string(req.Query("token").value_or("")) + "@" +
                    std::string(req.Param("room")));
  };
  handler.on_message = [](WebSocketConnection& c, std::string_view data, bool) {
    const auto* user = std::any_cast<std::string>(&c.context());
    Shard* here = Runtime::Current();
    nlohmann::json reply = {{"user", user ? *user : "<none>"},
                            {"data", std::string(data)},
                            {"on_shard", here != nullptr && here->index() == c.shard()}};
    c.Send(std::make_shared<const std::string>(reply.dump()), false);
  };
  ASSERT_TRUE(h.router().AddWebSocket("/rooms/{room}/ws", handler).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  for (const char* token : {"alice", "bob"}) {
    WsClient c;
    ASSERT_FALSE(c.Connect(h.port(), std::string("/rooms/lobby/ws?token=") + token));
    ASSERT_FALSE(c.Write("hi"));
    auto m = c.Read();
    ASSERT_FALSE(m.ec) << m.ec.message();
    auto j = nlohmann::json::parse(m.data);
    EXPECT_EQ(j["user"], std::string("user:") + token + "@lobby");
    EXPECT_EQ(j["data"], "hi");
    EXPECT_EQ(j["on_shard"], true);
    ASSERT_FALSE(c.Close(kWsNormal));
  }
  EXPECT_TRUE(rec.WaitClosed(2));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, SendFromAnotherThreadArrivesInOrder) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws"));
  ASSERT_TRUE(rec.WaitOpened(1));
  {
    auto conn = rec.conn(0);
    ASSERT_NE(conn, nullptr);
    EXPECT_EQ(conn->remote().rfind("127.0.0.1:", 0), 0u) << conn->remote();
    std::thread sender([conn] {
      for (int i = 0; i < 20; ++i) {
        EXPECT_TRUE(conn->Send(std::make_shared<const std::string>("msg " + std::to_string(i)), false));
      }
    });
    sender.join();
    for (int i = 0; i < 20; ++i) {
      auto m = c.Read();
      ASSERT_FALSE(m.ec) << m.ec.message();
      EXPECT_EQ(m.data, "msg " + std::to_string(i));
    }

    ASSERT_FALSE(c.Close(kWsNormal));
    ASSERT_TRUE(rec.WaitClosed(1));
    // Closed: Send reports it.
    EXPECT_FALSE(conn->Send(std::make_shared<const std::string>("too late"), false));
  }
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, OneSharedPayloadReachesFiftyConnectionsIntact) {
  constexpr int kClients = 50;
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  std::vector<std::unique_ptr<WsClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<WsClient>());
    ASSERT_FALSE(clients.back()->Connect(h.port(), "/ws")) << "client " << i;
  }
  ASSERT_TRUE(rec.WaitOpened(kClients));
  EXPECT_EQ(h.server().connections(), static_cast<size_t>(kClients));

  std::string body(100 * 1024, '\0');
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<char>((i * 7919) % 251);
  auto payload = std::make_shared<const std::string>(body);
  for (int i = 0; i < kClients; ++i) {
    auto conn = rec.conn(i);
    ASSERT_NE(conn, nullptr);
    EXPECT_TRUE(conn->Send(payload, /*binary=*/true));
  }
  for (int i = 0; i < kClients; ++i) {
    auto m = clients[i]->Read();
    ASSERT_FALSE(m.ec) << "client " << i << ": " << m.ec.message();
    EXPECT_TRUE(m.binary);
    EXPECT_TRUE(m.data == body) << "client " << i << " got a damaged payload";
  }
  // Every queue let go of the shared buffer.
  EXPECT_TRUE(Eventually([&] { return payload.use_count() == 1; }));

  for (auto& c : clients) ASSERT_FALSE(c->Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(kClients));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, MessageOverTheLimitClosesWith1009) {
  Recorder rec;
  ServerHarness h;
  WebSocketOptions o;
  o.max_message_bytes = 1024;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, o)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws"));
  ASSERT_FALSE(c.Write(std::string(1024, 'x')));  // at the limit: fine
  auto ok = c.Read();
  ASSERT_FALSE(ok.ec) << ok.ec.message();
  EXPECT_EQ(ok.data.size(), 1024u);

  // Small enough to sit whole in the socket buffers: the write succeeds before the server reacts.
  ASSERT_FALSE(c.Write(std::string(4096, 'x')));
  auto m = c.Read();
  // The close frame carries 1009. Beast's TCP teardown (1.81) then closes the server socket with
  // the rest of the oversized message unread, which resets the connection while the client answers
  // the close (boostorg/beast#802): the read may end in a transport error instead of `closed`.
  EXPECT_TRUE(m.ec == websocket::error::closed || m.ec == boost::asio::error::broken_pipe ||
              m.ec == boost::asio::error::not_connected || m.ec == boost::asio::error::connection_reset)
      << m.ec.message();
  EXPECT_EQ(c.close_code(), kWsMessageTooBig);
  ASSERT_TRUE(rec.WaitClosed(1));
  EXPECT_THAT(rec.closes(), ElementsAre(kWsMessageTooBig));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, SlowConsumerIsClosedWith1008AndEarlierMessagesArriveIntact) {
  constexpr size_t kSize = 64 * 1024;
  constexpr int kBurst = 400;  // ~25 MiB: far more than socket buffers plus the queue hold
  Recorder rec;
  ServerHarness h;
  WebSocketOptions o;
  o.max_queue_bytes = 256 * 1024;
  o.overflow = WsOverflow::kClose;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, o)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws", {}, /*receive_buffer_bytes=*/16 * 1024));
  ASSERT_TRUE(rec.WaitOpened(1));
  {
    auto conn = rec.conn(0);
    ASSERT_NE(conn, nullptr);
    // The client reads nothing while the server is asked to send the burst. Each message is its
    // own buffer, owned only by the server's queue.
    for (int i = 0; i < kBurst; ++i) {
      conn->Send(BurstMessage(i, kSize), true);
    }
  }

  // Now read: whatever was accepted before the overflow arrives intact and in order, then the
  // close frame.
  int received = 0;
  int64_t last = -1;
  WsClient::Message m;
  for (;;) {
    m = c.Read();
    if (m.ec) break;
    uint64_t index = 0;
    ASSERT_TRUE(ParseBurstMessage(m.data, kSize, &index)) << "message " << received << " is damaged";
    EXPECT_GT(static_cast<int64_t>(index), last);
    last = static_cast<int64_t>(index);
    ++received;
  }
  EXPECT_EQ(m.ec, websocket::error::closed) << m.ec.message();
  EXPECT_EQ(c.close_code(), kWsPolicyViolation);
  EXPECT_EQ(c.close_reason(), "slow consumer");
  EXPECT_LT(received, kBurst);
  ASSERT_TRUE(rec.WaitClosed(1));
  EXPECT_THAT(rec.closes(), ElementsAre(kWsPolicyViolation));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, DropNewestCountsDropsAndKeepsTheConnection) {
  constexpr size_t kSize = 64 * 1024;
  constexpr int kBurst = 300;
  Recorder rec;
  ServerHarness h;
  WebSocketOptions o;
  o.max_queue_messages = 4;
  o.overflow = WsOverflow::kDropNewest;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, o)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws", {}, /*receive_buffer_bytes=*/16 * 1024));
  ASSERT_TRUE(rec.WaitOpened(1));
  const auto payload = BurstMessage(7, kSize);
  uint64_t dropped = 0;
  {
    auto conn = rec.conn(0);
    ASSERT_NE(conn, nullptr);
    for (int i = 0; i < kBurst; ++i) EXPECT_TRUE(conn->Send(payload, true));
    ASSERT_NO_FATAL_FAILURE(Barrier(h.runtime(), *conn));  // every Send has been queued or dropped
    dropped = conn->dropped();
  }
  EXPECT_GT(dropped, 0u);
  ASSERT_LT(dropped, static_cast<uint64_t>(kBurst));

  // Exactly the accepted messages arrive...
  for (uint64_t i = 0; i < kBurst - dropped; ++i) {
    auto m = c.Read();
    ASSERT_FALSE(m.ec) << "message " << i << ": " << m.ec.message();
    ASSERT_TRUE(m.data == *payload) << "message " << i;
  }
  // ...and the connection is still open and working.
  ASSERT_FALSE(c.Write("still there?"));
  auto echo = c.Read();
  ASSERT_FALSE(echo.ec) << echo.ec.message();
  EXPECT_EQ(echo.data, "still there?");
  EXPECT_EQ(rec.closes().size(), 0u);

  ASSERT_FALSE(c.Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, DropOldestDropsOldBlocksButNeverControlMessages) {
  constexpr uint64_t kControlEvery = 50;  // every 50th message is a control frame
  Recorder rec;
  ServerHarness h;
  // The grace is out of reach here: this test is about what gets dropped, not about closing.
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, DropOldestOptions(1h))).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws", {}, /*receive_buffer_bytes=*/16 * 1024));
  ASSERT_TRUE(rec.WaitOpened(1));
  std::vector<uint64_t> controls;
  uint64_t dropped = 0;
  {
    auto conn = rec.conn(0);
    ASSERT_NE(conn, nullptr);
    // The client reads nothing meanwhile. Each message carries its sequence number.
    for (uint64_t seq = 0; seq < kBurstBlocks; ++seq) {
      if (seq % kControlEvery == kControlEvery - 1) {
        EXPECT_TRUE(conn->Send(ControlMessage(seq), /*binary=*/false));  // not droppable
        controls.push_back(seq);
      } else {
        EXPECT_TRUE(conn->Send(BurstMessage(seq, kBlockSize), /*binary=*/true, /*droppable=*/true));
      }
    }
    ASSERT_NO_FATAL_FAILURE(Barrier(h.runtime(), *conn));  // every Send has been queued or dropped
    dropped = conn->dropped();
  }
  const uint64_t blocks = kBurstBlocks - controls.size();
  EXPECT_GT(dropped, 0u);
  ASSERT_LT(dropped, blocks);

  // Now read: exactly the messages that were not dropped arrive, intact and in order.
  std::vector<uint64_t> got_controls;
  std::vector<uint64_t> got_blocks;
  int64_t last = -1;
  for (uint64_t i = 0; i < kBurstBlocks - dropped; ++i) {
    auto m = c.Read();
    ASSERT_FALSE(m.ec) << "message " << i << ": " << m.ec.message();
    uint64_t seq = 0;
    if (m.binary) {
      ASSERT_TRUE(ParseBurstMessage(m.data, kBlockSize, &seq)) << "message " << i << " is damaged";
      got_blocks.push_back(seq);
    } else {
      ASSERT_TRUE(ParseControlMessage(m.data, &seq)) << m.data;
      got_controls.push_back(seq);
    }
    EXPECT_GT(static_cast<int64_t>(seq), last);
    last = static_cast<int64_t>(seq);
  }
  // No control frame was lost; the drops were all blocks...
  EXPECT_EQ(got_controls, controls);
  EXPECT_EQ(got_blocks.size(), blocks - dropped);
  // ...and the oldest ones: the newest blocks (the queue holds six or more beside the one being
  // written) survived. Dropping the newest would have lost these.
  ASSERT_GE(got_blocks.size(), 4u);
  const std::vector<uint64_t> newest = {1995, 1996, 1997, 1998};  // 1999 is a control frame
  EXPECT_EQ(std::vector<uint64_t>(got_blocks.end() - 4, got_blocks.end()), newest);

  // Dropping did not close the connection.
  ASSERT_FALSE(c.Write("still there?"));
  auto echo = c.Read();
  ASSERT_FALSE(echo.ec) << echo.ec.message();
  EXPECT_EQ(echo.data, "still there?");
  EXPECT_EQ(rec.closes().size(), 0u);
  ASSERT_FALSE(c.Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, DropOldestQueuesControlMessagesPastTheLimitAndDropsBlocksThatDoNotFit) {
  constexpr uint64_t kControls = 20;  // 160 KiB of non-droppable messages: over the 64 KiB limit
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, DropOldestOptions(1h))).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws", {}, /*receive_buffer_bytes=*/16 * 1024));
  ASSERT_TRUE(rec.WaitOpened(1));
  uint64_t stall_blocks = 0;
  uint64_t late_block = 0;
  uint64_t dropped = 0;
  {
    auto conn = rec.conn(0);
    ASSERT_NE(conn, nullptr);
    // Stall the writer with blocks, then send 8 KiB control messages, then one more block.
    stall_blocks = StallWriter(h.runtime(), *conn);
    ASSERT_GT(stall_blocks, 0u);
    late_block = stall_blocks + kControls;
    for (uint64_t seq = stall_blocks; seq < late_block; ++seq) {
      EXPECT_TRUE(conn->Send(ControlMessage(seq, kBlockSize), /*binary=*/false));
    }
    EXPECT_TRUE(conn->Send(BurstMessage(late_block, kBlockSize), /*binary=*/true, /*droppable=*/true));
    ASSERT_NO_FATAL_FAILURE(Barrier(h.runtime(), *conn));
    dropped = conn->dropped();
  }
  ASSERT_GT(dropped, 0u);
  ASSERT_LT(dropped, stall_blocks);

  std::vector<uint64_t> got_controls;
  std::vector<uint64_t> got_blocks;
  for (uint64_t i = 0; i < late_block + 1 - dropped; ++i) {
    auto m = c.Read();
    ASSERT_FALSE(m.ec) << "message " << i << ": " << m.ec.message();
    uint64_t seq = 0;
    if (m.binary) {
      ASSERT_TRUE(ParseBurstMessage(m.data, kBlockSize, &seq)) << "message " << i << " is damaged";
      got_blocks.push_back(seq);
    } else {
      ASSERT_EQ(m.data.size(), kBlockSize);
      ASSERT_TRUE(ParseControlMessage(m.data, &seq)) << "message " << i << " is damaged";
      got_controls.push_back(seq);
    }
  }
  // Every control message arrived although together they exceed the queue limit...
  std::vector<uint64_t> want_controls;
  for (uint64_t seq = stall_blocks; seq < late_block; ++seq) want_controls.push_back(seq);
  EXPECT_EQ(got_controls, want_controls);
  // ...while the block sent behind them found no room (only controls and the message being
  // written were queued) and was dropped itself.
  ASSERT_FALSE(got_blocks.empty());
  EXPECT_LT(got_blocks.back(), stall_blocks);
  EXPECT_EQ(rec.closes().size(), 0u);
  ASSERT_FALSE(c.Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, DropOldestClosesASlowClientAfterTheGraceWhileAFastOneGetsEverything) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, DropOldestOptions(200ms))).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient slow;
  ASSERT_FALSE(slow.Connect(h.port(), "/ws", {}, /*receive_buffer_bytes=*/16 * 1024));
  ASSERT_TRUE(rec.WaitOpened(1));
  WsClient fast;
  ASSERT_FALSE(fast.Connect(h.port(), "/ws"));
  ASSERT_TRUE(rec.WaitOpened(2));
  {
    auto slow_conn = rec.conn(0);
    auto fast_conn = rec.conn(1);
    ASSERT_NE(slow_conn, nullptr);
    ASSERT_NE(fast_conn, nullptr);
    // Every block goes to both; the fast client reads each one before the next is sent, the slow
    // one reads nothing. Keep going until the slow one has been closed, then a little longer.
    const auto give_up = std::chrono::steady_clock::now() + 60s;
    uint64_t seq = 0;
    uint64_t after_close = 0;
    while (after_close < 50) {
      ASSERT_LT(std::chrono::steady_clock::now(), give_up) << "the slow client was never closed";
      auto block = BurstMessage(seq, kBlockSize);
      slow_conn->Send(block, /*binary=*/true, /*droppable=*/true);
      ASSERT_TRUE(fast_conn->Send(block, /*binary=*/true, /*droppable=*/true));
      auto m = fast.Read();
      ASSERT_FALSE(m.ec) << "block " << seq << ": " << m.ec.message();
      uint64_t index = 0;
      ASSERT_TRUE(ParseBurstMessage(m.data, kBlockSize, &index)) << "block " << seq << " is damaged";
      ASSERT_EQ(index, seq);
      ++seq;
      if (after_close > 0 || !rec.closes().empty()) ++after_close;
    }
    EXPECT_THAT(rec.closes(), ElementsAre(kWsPolicyViolation));
    EXPECT_GT(slow_conn->dropped(), 0u);
    EXPECT_EQ(fast_conn->dropped(), 0u);
  }
  // The slow client sees its connection end (with the 1008 close frame if it got out, else
  // the TCP connection closing) once it reads what was delivered before.
  WsClient::Message m;
  do {
    m = slow.Read();
  } while (!m.ec);
  EXPECT_NE(m.ec, boost::asio::error::timed_out);
  if (m.ec == websocket::error::closed) {
    EXPECT_EQ(slow.close_code(), kWsPolicyViolation);
    EXPECT_EQ(slow.close_reason(), "slow consumer");
  }

  ASSERT_FALSE(fast.Write("still there?"));
  auto echo = fast.Read();
  ASSERT_FALSE(echo.ec) << echo.ec.message();
  EXPECT_EQ(echo.data, "still there?");
  ASSERT_FALSE(fast.Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(2));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, DropOldestClosesAClientThatStoppedReadingWithoutFurtherSends) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, DropOldestOptions(200ms))).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws", {}, /*receive_buffer_bytes=*/16 * 1024));
  ASSERT_TRUE(rec.WaitOpened(1));
  {
    auto conn = rec.conn(0);
    ASSERT_NE(conn, nullptr);
    ASSERT_GT(StallWriter(h.runtime(), *conn), 0u);
  }
  // Nothing more is sent and the client still reads nothing: the grace timer closes it, long
  // before the 60 s idle timeout would (which would report 1006).
  ASSERT_TRUE(Eventually([&] { return !rec.closes().empty(); }, 30s));
  EXPECT_THAT(rec.closes(), ElementsAre(kWsPolicyViolation));

  // What was delivered is intact and in order; then the connection ends.
  int64_t last = -1;
  WsClient::Message m;
  for (;;) {
    m = c.Read();
    if (m.ec) break;
    uint64_t index = 0;
    ASSERT_TRUE(ParseBurstMessage(m.data, kBlockSize, &index)) << "block after " << last << " is damaged";
    EXPECT_GT(static_cast<int64_t>(index), last);
    last = static_cast<int64_t>(index);
  }
  EXPECT_NE(m.ec, boost::asio::error::timed_out);
  EXPECT_TRUE(h.server().WaitDrained(5s));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, OnCloseRunsOnceWithTheClientsCode) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws"));
  ASSERT_FALSE(c.Close(4001, "bye"));
  ASSERT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());  // after the runtime stopped nothing more can run
  EXPECT_THAT(rec.closes(), ElementsAre(4001));
}

TEST(WebSocketTest, ServerCloseReachesTheClientAndOnCloseRunsOnce) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws"));
  ASSERT_TRUE(rec.WaitOpened(1));
  {
    auto conn = rec.conn(0);
    ASSERT_NE(conn, nullptr);
    std::thread closer([conn] {
      conn->Close(kWsPolicyViolation, "kicked");
      conn->Close(kWsNormal, "again");  // idempotent
    });
    closer.join();
  }
  auto m = c.Read();
  EXPECT_EQ(m.ec, websocket::error::closed) << m.ec.message();
  EXPECT_EQ(c.close_code(), kWsPolicyViolation);
  EXPECT_EQ(c.close_reason(), "kicked");
  ASSERT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());
  EXPECT_THAT(rec.closes(), ElementsAre(kWsPolicyViolation));
}

TEST(WebSocketTest, ServerShutdownSendsGoingAwayAndDrains) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient a;
  WsClient b;
  ASSERT_FALSE(a.Connect(h.port(), "/ws"));
  ASSERT_FALSE(b.Connect(h.port(), "/ws"));
  ASSERT_TRUE(rec.WaitOpened(2));

  h.server().BeginShutdown();
  for (WsClient* c : {&a, &b}) {
    auto m = c->Read();
    EXPECT_EQ(m.ec, websocket::error::closed) << m.ec.message();
    EXPECT_EQ(c->close_code(), kWsGoingAway);
  }
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_EQ(h.server().connections(), 0u);
  EXPECT_THAT(rec.closes(), ElementsAre(kWsGoingAway, kWsGoingAway));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, ClientThatAnswersPingsOutlivesTheIdleTimeout) {
  Recorder rec;
  ServerHarness h;
  WebSocketOptions o;
  o.idle_timeout = 1s;  // ping after 0.5 s of silence, close after 1 s
  WebSocketHandler handler = EchoHandler(rec, o);
  handler.on_open = [&rec](const std::shared_ptr<WebSocketConnection>& c) {
    rec.Opened(c);
    // Speak only after 1.25 idle timeouts; until then the connection lives on pings and pongs.
    // (Not a multiple of the 0.5 s ping period: see the close below.)
    std::weak_ptr<WebSocketConnection> weak = c;
    Runtime::Current()->RunAfter(1250ms, [weak] {
      if (auto conn = weak.lock()) conn->Send(std::make_shared<const std::string>("still here"), false);
    });
  };
  ASSERT_TRUE(h.router().AddWebSocket("/ws", handler).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws"));
  auto m = c.Read(5s);  // reading answers the server's pings
  ASSERT_FALSE(m.ec) << m.ec.message();
  EXPECT_EQ(m.data, "still here");
  EXPECT_EQ(rec.closes().size(), 0u);
  ASSERT_FALSE(c.Close(kWsNormal));
  ASSERT_TRUE(rec.WaitClosed(1));
  EXPECT_TRUE(h.Shutdown());
  EXPECT_THAT(rec.closes(), ElementsAre(kWsNormal));
}

TEST(WebSocketTest, SilentPeerIsClosedAfterTheIdleTimeout) {
  Recorder rec;
  ServerHarness h;
  WebSocketOptions o;
  o.idle_timeout = 1s;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec, o)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  WsClient c;
  ASSERT_FALSE(c.Connect(h.port(), "/ws"));
  // The client never reads, so it never answers the ping.
  ASSERT_TRUE(rec.WaitClosed(1));
  EXPECT_THAT(rec.closes(), ElementsAre(1006));
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_TRUE(h.Shutdown());
}

// ---- the server's own protocol handling, seen from a client on a plain socket

// A WebSocket client on a plain blocking socket, for what Beast's client will not send: frames
// right behind the upgrade request, broken frames, handshakes with bad headers.
class RawClient {
 public:
  explicit RawClient(uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    timeval tv{5, 0};  // every read gives up after 5 s
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  static std::string Upgrade(std::string_view key = "dGhlIHNhbXBsZSBub25jZQ==", std::string_view version = "13") {
    std::string r = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    r += "Sec-WebSocket-Key: " + std::string(key) + "\r\nSec-WebSocket-Version: " + std::string(version) + "\r\n\r\n";
    return r;
  }

  // One final client frame with a payload under 126 bytes, masked unless told otherwise.
  static std::string Frame(uint8_t opcode, std::string_view payload, bool masked = true) {
    std::string f;
    f += static_cast<char>(0x80 | opcode);
    f += static_cast<char>((masked ? 0x80 : 0) | payload.size());
    const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d};
    if (masked) f.append(reinterpret_cast<const char*>(key), 4);
    for (size_t i = 0; i < payload.size(); ++i) {
      f += masked ? static_cast<char>(payload[i] ^ key[i % 4]) : payload[i];
    }
    return f;
  }

  bool Write(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      bytes.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // The HTTP response head, through the blank line (empty if none arrived); what follows stays
  // buffered for ReadFrame.
  std::string ReadHead() {
    size_t end;
    while ((end = buffered_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return "";
    }
    std::string head = buffered_.substr(0, end + 4);
    buffered_.erase(0, end + 4);
    return head;
  }

  struct ServerFrame {
    bool ok = false;
    uint8_t opcode = 0;
    std::string payload;
  };
  // One frame from the server (unmasked, final, as the server sends them).
  ServerFrame ReadFrame() {
    ServerFrame f;
    if (!FillTo(2)) return f;
    f.opcode = static_cast<uint8_t>(buffered_[0]) & 0x0f;
    uint64_t len = static_cast<uint8_t>(buffered_[1]) & 0x7f;
    size_t header = 2;
    if (len >= 126) {
      const size_t bytes = len == 126 ? 2 : 8;
      if (!FillTo(2 + bytes)) return f;
      len = 0;
      for (size_t i = 0; i < bytes; ++i) len = (len << 8) | static_cast<uint8_t>(buffered_[2 + i]);
      header += bytes;
    }
    if (!FillTo(header + len)) return f;
    f.payload = buffered_.substr(header, len);
    buffered_.erase(0, header + len);
    f.ok = true;
    return f;
  }

  // True when the server ended the connection (nothing more buffered, then end of stream).
  bool ReadsEndOfStream() { return buffered_.empty() && !Fill(); }

 private:
  bool Fill() {
    char tmp[16 * 1024];
    const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buffered_.append(tmp, static_cast<size_t>(n));
    return true;
  }
  bool FillTo(size_t n) {
    while (buffered_.size() < n) {
      if (!Fill()) return false;
    }
    return true;
  }

  int fd_;
  bool connected_ = false;
  std::string buffered_;
};

// The close code at the front of a close frame's payload.
uint16_t CloseCode(const std::string& payload) {
  if (payload.size() < 2) return 0;
  return static_cast<uint16_t>(static_cast<uint8_t>(payload[0]) << 8 | static_cast<uint8_t>(payload[1]));
}

TEST(WebSocketTest, FramesRightBehindTheUpgradeRequestAreReadAndPingsAnswered) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  RawClient c(h.port());
  ASSERT_TRUE(c.connected());
  // The request and two frames in one write: the server has them all in its first read.
  ASSERT_TRUE(c.Write(RawClient::Upgrade() + RawClient::Frame(ws::kText, "early") +
                      RawClient::Frame(ws::kPing, "p1")));
  const std::string head = c.ReadHead();
  EXPECT_THAT(head, ::testing::StartsWith("HTTP/1.1 101 "));
  // RFC 6455 §1.3's example key and answer.
  EXPECT_THAT(head, HasSubstr("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
  auto echo = c.ReadFrame();
  ASSERT_TRUE(echo.ok);
  EXPECT_EQ(echo.opcode, ws::kText);
  EXPECT_EQ(echo.payload, "early");
  auto pong = c.ReadFrame();
  ASSERT_TRUE(pong.ok);
  EXPECT_EQ(pong.opcode, ws::kPong);
  EXPECT_EQ(pong.payload, "p1");

  // Our close is echoed with its code, then the server ends the connection.
  ASSERT_TRUE(c.Write(RawClient::Frame(ws::kClose, std::string("\x0f\xa2", 2) + "done")));
  auto close = c.ReadFrame();
  ASSERT_TRUE(close.ok);
  EXPECT_EQ(close.opcode, ws::kClose);
  EXPECT_EQ(CloseCode(close.payload), 4002);
  EXPECT_TRUE(c.ReadsEndOfStream());
  ASSERT_TRUE(rec.WaitClosed(1));
  EXPECT_THAT(rec.closes(), ElementsAre(4002));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, HandshakeWithoutVersion13OrA16ByteKeyIsRefused) {
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  RawClient old_version(h.port());
  ASSERT_TRUE(old_version.Write(RawClient::Upgrade("dGhlIHNhbXBsZSBub25jZQ==", "8")));
  const std::string head = old_version.ReadHead();
  EXPECT_THAT(head, ::testing::StartsWith("HTTP/1.1 426 "));
  EXPECT_THAT(head, HasSubstr("Sec-WebSocket-Version: 13\r\n"));

  RawClient short_key(h.port());
  ASSERT_TRUE(short_key.Write(RawClient::Upgrade("c2hvcnQ=")));
  EXPECT_THAT(short_key.ReadHead(), ::testing::StartsWith("HTTP/1.1 400 "));

  EXPECT_EQ(rec.opened(), 0u);
  WsClient good;  // and the server still upgrades a proper request
  ASSERT_FALSE(good.Connect(h.port(), "/ws"));
  ASSERT_FALSE(good.Write("ok"));
  EXPECT_EQ(good.Read().data, "ok");
  ASSERT_FALSE(good.Close(kWsNormal));
  EXPECT_TRUE(h.Shutdown());
}

TEST(WebSocketTest, ProtocolErrorsCloseWithTheirCodeAndTheServerKeepsServing) {
  struct Case {
    const char* what;
    std::string frame;
    uint16_t code;
  };
  const std::vector<Case> cases = {
      {"unmasked frame", RawClient::Frame(ws::kText, "hi", /*masked=*/false), 1002},
      {"reserved opcode", RawClient::Frame(3, "x"), 1002},
      {"text that is not UTF-8", RawClient::Frame(ws::kText, "\xc3\x28"), 1007},
      {"continuation without a message", RawClient::Frame(ws::kContinuation, "x"), 1002},
  };
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  std::vector<uint16_t> expected;
  for (const Case& k : cases) {
    SCOPED_TRACE(k.what);
    RawClient c(h.port());
    ASSERT_TRUE(c.Write(RawClient::Upgrade()));
    ASSERT_THAT(c.ReadHead(), ::testing::StartsWith("HTTP/1.1 101 "));
    ASSERT_TRUE(c.Write(k.frame));
    auto close = c.ReadFrame();
    ASSERT_TRUE(close.ok);
    EXPECT_EQ(close.opcode, ws::kClose);
    EXPECT_EQ(CloseCode(close.payload), k.code);
    EXPECT_TRUE(c.ReadsEndOfStream());  // no close handshake after a protocol error
    expected.push_back(k.code);
    ASSERT_TRUE(rec.WaitClosed(expected.size()));
  }
  EXPECT_EQ(rec.closes(), expected);

  WsClient good;
  ASSERT_FALSE(good.Connect(h.port(), "/ws"));
  ASSERT_FALSE(good.Write("still serving"));
  EXPECT_EQ(good.Read().data, "still serving");
  ASSERT_FALSE(good.Close(kWsNormal));
  EXPECT_TRUE(h.Shutdown());
}

// Sends `payload` to every connection from its own shard in one task per shard, as the live
// service's fan-out does, so each shard's writes go out as one batch.
void FanOut(Runtime& rt, const std::vector<std::shared_ptr<WebSocketConnection>>& conns,
            const std::shared_ptr<const std::string>& payload, bool binary) {
  std::vector<std::vector<std::shared_ptr<WebSocketConnection>>> by_shard(rt.size());
  for (const auto& c : conns) by_shard[c->shard()].push_back(c);
  for (uint32_t s = 0; s < by_shard.size(); ++s) {
    rt.Post(s, [conns = std::move(by_shard[s]), payload, binary] {
      for (const auto& c : conns) c->Send(payload, binary, /*droppable=*/true);
    });
  }
}

// chorus_websocket_writes_total{via="io_uring"} and {via="sendmsg"} now.
std::pair<double, double> WsWrites() {
  const std::string text = DefaultMetrics().Render();
  auto value = [&](const std::string& series) {
    const size_t at = text.find(series + " ");
    return at == std::string::npos ? 0.0 : std::strtod(text.c_str() + at + series.size() + 1, nullptr);
  };
  return {value("chorus_websocket_writes_total{via=\"io_uring\"}"),
          value("chorus_websocket_writes_total{via=\"sendmsg\"}")};
}

// Fan-out as the live service does it: a shard sends one payload to all its connections in one
// task, so the writes of the turn go out together (io_uring batch, or sendmsg each). Payloads are
// larger than the socket buffers take at once, so most writes end partial and finish when the
// client reads.
class WebSocketFanOutTest : public ::testing::TestWithParam<bool> {};

// Whether this kernel lets the process create an io_uring (containers may forbid it).
bool IoUringAvailable() {
  io_uring_params params{};
  const long fd = ::syscall(__NR_io_uring_setup, 4, &params);
  if (fd < 0) return false;
  ::close(static_cast<int>(fd));
  return true;
}

TEST_P(WebSocketFanOutTest, EveryConnectionGetsEveryMessageIntactAndInOrder) {
  const bool io_uring = GetParam();
  if (io_uring && !IoUringAvailable()) GTEST_SKIP() << "io_uring is not available here (the server falls back to sendmsg)";
  constexpr int kClients = 100;
  constexpr uint64_t kMessages = 3;
  constexpr size_t kSize = 64 * 1024;
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  HttpServerOptions options;
  options.websocket_io_uring = io_uring;
  ASSERT_NO_FATAL_FAILURE(h.Start(options));

  std::vector<std::unique_ptr<WsClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<WsClient>());
    ASSERT_FALSE(clients.back()->Connect(h.port(), "/ws")) << "client " << i;
  }
  ASSERT_TRUE(rec.WaitOpened(kClients));

  const auto before = WsWrites();
  std::vector<std::shared_ptr<WebSocketConnection>> conns;
  for (int i = 0; i < kClients; ++i) {
    conns.push_back(rec.conn(i));
    ASSERT_NE(conns.back(), nullptr);
  }
  for (uint64_t m = 0; m < kMessages; ++m) FanOut(h.runtime(), conns, BurstMessage(m, kSize), /*binary=*/true);
  for (int i = 0; i < kClients; ++i) {
    for (uint64_t m = 0; m < kMessages; ++m) {
      auto got = clients[i]->Read();
      ASSERT_FALSE(got.ec) << "client " << i << ": " << got.ec.message();
      uint64_t index = 0;
      ASSERT_TRUE(ParseBurstMessage(got.data, kSize, &index)) << "client " << i << " got a damaged message";
      EXPECT_EQ(index, m) << "client " << i;
    }
  }
  const auto after = WsWrites();
  if (io_uring) {
    EXPECT_GE(after.first - before.first, kClients) << "the batches did not go through io_uring";
  } else {
    EXPECT_EQ(after.first, before.first);
    EXPECT_GE(after.second - before.second, kClients);
  }
  conns.clear();
  for (auto& c : clients) ASSERT_FALSE(c->Close(kWsNormal));
  EXPECT_TRUE(rec.WaitClosed(kClients));
  EXPECT_TRUE(h.Shutdown());
}

INSTANTIATE_TEST_SUITE_P(Writers, WebSocketFanOutTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "IoUring" : "SendMsg"; });


// Sockets registered with this process's io_uring instances (the "UserFiles" entries of their
// /proc fdinfo, which lists them only while the ring's lock is free: retried by the caller).
size_t RegisteredSockets() {
  size_t n = 0;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code link_ec;
    if (std::filesystem::read_symlink(entry.path(), link_ec).string() != "anon_inode:[io_uring]") continue;
    std::ifstream info("/proc/self/fdinfo/" + entry.path().filename().string());
    std::string line;
    while (std::getline(info, line)) {
      const size_t colon = line.find(": socket:");
      if (colon != std::string::npos && line.find_first_not_of(" 0123456789") == colon) ++n;
    }
  }
  return n;
}

// A socket that went out through the ring is registered with it; closing the session must undo
// that, or the registration would keep the socket (and its memory) alive after close().
// Server-initiated closes, the usual kick path.
TEST(WebSocketTest, ClosingASessionWrittenThroughIoUringUnregistersItsSocket) {
  if (!IoUringAvailable()) GTEST_SKIP() << "io_uring is not available here";
  constexpr int kClients = 8;  // a batch large enough for the ring
  Recorder rec;
  ServerHarness h;
  ASSERT_TRUE(h.router().AddWebSocket("/ws", EchoHandler(rec)).ok());
  ASSERT_NO_FATAL_FAILURE(h.Start({}));

  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<RawClient>(h.port()));
    ASSERT_TRUE(clients.back()->Write(RawClient::Upgrade()));
    ASSERT_THAT(clients.back()->ReadHead(), ::testing::StartsWith("HTTP/1.1 101 "));
  }
  ASSERT_TRUE(rec.WaitOpened(kClients));
  std::vector<std::shared_ptr<WebSocketConnection>> conns;
  for (int i = 0; i < kClients; ++i) conns.push_back(rec.conn(i));
  const double ring_before = WsWrites().first;
  FanOut(h.runtime(), conns, std::make_shared<const std::string>("to all"), /*binary=*/false);
  for (auto& c : clients) {
    auto f = c->ReadFrame();
    ASSERT_TRUE(f.ok);
    EXPECT_EQ(f.payload, "to all");
  }
  EXPECT_GE(WsWrites().first - ring_before, kClients);
  EXPECT_TRUE(Eventually([] { return RegisteredSockets() >= kClients; })) << RegisteredSockets();

  for (auto& conn : conns) conn->Close(kWsPolicyViolation, "kicked");
  for (auto& c : clients) {
    auto close = c->ReadFrame();
    ASSERT_TRUE(close.ok);
    EXPECT_EQ(close.opcode, ws::kClose);
    EXPECT_EQ(CloseCode(close.payload), kWsPolicyViolation);
    ASSERT_TRUE(c->Write(RawClient::Frame(ws::kClose, close.payload)));  // complete the handshake
    EXPECT_TRUE(c->ReadsEndOfStream());
  }
  ASSERT_TRUE(rec.WaitClosed(kClients));
  conns.clear();
  EXPECT_TRUE(Eventually([] { return RegisteredSockets() == 0; })) << RegisteredSockets();
  EXPECT_TRUE(h.server().WaitDrained(3s));
  EXPECT_TRUE(h.Shutdown());
}

}  // namespace
}  // namespace chorus::net
