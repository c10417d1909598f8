// Loopback harness for the net tests (header-only, test code only): a Runtime + Router +
// HttpServer started on 127.0.0.1:0, and blocking HTTP / raw-TCP / WebSocket clients.
//
// Every client call has a deadline, so a server that misbehaves fails the test quickly instead of
// hanging it. A client owns its io_context and runs it on the calling thread: each call starts one
// asynchronous Beast operation and runs the context for at most the deadline; on expiry the
// socket is closed and the call returns asio::error::timed_out. Clients are not thread-safe; use
// one client per thread.
//
// ServerHarness shuts down in the order http_server.h requires: BeginShutdown, WaitDrained,
// Runtime::Stop, destroy the server, then the runtime. State captured by route handlers must
// outlive the harness (declare it first).
#pragma once

#include <gtest/gtest.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "net/http_server.h"
#include "net/token.h"
#include "net/router.h"
#include "net/runtime.h"

namespace chorus::net::testclient {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

// Upper bound for one client operation that should succeed promptly; generous for loaded CI.
inline constexpr Duration kIoDeadline = std::chrono::seconds(5);

// Polls `pred` every few milliseconds until it holds or `deadline` passes.
template <typename Pred>
bool Eventually(Pred pred, Duration deadline = std::chrono::seconds(5)) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= until) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Starts one operation via `start(handler)` and runs `io` until it completes or `deadline`
// passes; on expiry closes `socket` (aborting the operation) and reports timed_out.
template <typename Start>
beast::error_code Await(asio::io_context& io, tcp::socket& socket, Duration deadline, Start&& start) {
  bool done = false;
  beast::error_code result;
  start([&done, &result](beast::error_code ec, auto&&...) {
    done = true;
    result = ec;
  });
  io.restart();
  io.run_for(deadline);
  if (!done) {
    beast::error_code ignored;
    socket.close(ignored);
    io.restart();
    io.run();  // let the aborted operation finish before its state goes away
    return asio::error::timed_out;
  }
  return result;
}

inline bool IsClosedByPeer(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe;
}

// ----------------------------------------------------------------------------- server harness

class ServerHarness {
 public:
  ServerHarness() {
    auto rt = Runtime::Create({.shards = 2, .pin_threads = false});
    EXPECT_TRUE(rt.ok()) << rt.status().ToString();
    runtime_ = std::move(rt).value();
    runtime_->Start();
  }
  ~ServerHarness() { Shutdown(); }
  ServerHarness(const ServerHarness&) = delete;
  ServerHarness& operator=(const ServerHarness&) = delete;

  Router& router() { return router_; }
  Runtime& runtime() { return *runtime_; }
  HttpServer& server() { return *server_; }
  uint16_t port() const { return server_->port(); }

  // Starts listening on 127.0.0.1 on a free port; register routes first.
  void Start(HttpServerOptions options) {
    options.host = "127.0.0.1";
    options.port = 0;
    auto server = HttpServer::Start(*runtime_, router_, options);
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
    ASSERT_NE(server_->port(), 0);
  }

  // Full shutdown; returns what WaitDrained returned. Idempotent.
  bool Shutdown(Duration drain = std::chrono::seconds(3)) {
    if (!runtime_) return true;
    bool drained = true;
    if (server_) {
      server_->BeginShutdown();
      drained = server_->WaitDrained(drain);
    }
    runtime_->Stop();
    server_.reset();
    runtime_.reset();
    return drained;
  }

 private:
  Router router_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<HttpServer> server_;
};

// ----------------------------------------------------------------------------- HTTP / raw TCP

struct Reply {
  beast::error_code ec;
  http::response<http::string_body> msg;

  int status() const { return msg.result_int(); }
  std::string header(std::string_view name) const { return std::string(msg[name]); }
  const std::string& body() const { return msg.body(); }
};

class HttpClient {
 public:
  // Connects to 127.0.0.1:port; see connect_error().
  explicit HttpClient(uint16_t port, int receive_buffer_bytes = 0) : socket_(io_) {
    const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), port);
    socket_.open(ep.protocol(), connect_error_);
    if (!connect_error_ && receive_buffer_bytes > 0) {
      socket_.set_option(asio::socket_base::receive_buffer_size(receive_buffer_bytes), connect_error_);
    }
    if (!connect_error_) {
      connect_error_ =
          Await(io_, socket_, kIoDeadline, [&](auto handler) { socket_.async_connect(ep, handler); });
    }
  }

  const beast::error_code& connect_error() const { return connect_error_; }
  tcp::socket& socket() { return socket_; }

  // Writes raw bytes.
  beast::error_code SendRaw(std::string_view bytes, Duration deadline = kIoDeadline) {
    return Await(io_, socket_, deadline, [&](auto handler) {
      asio::async_write(socket_, asio::buffer(bytes.data(), bytes.size()), handler);
    });
  }

  beast::error_code Write(http::request<http::string_body>& req, Duration deadline = kIoDeadline) {
    return Await(io_, socket_, deadline, [&](auto handler) { http::async_write(socket_, req, handler); });
  }

  // Reads one response. `head`: the response answers a HEAD request, so no body follows.
  Reply Read(bool head = false, Duration deadline = kIoDeadline) {
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    parser.skip(head);
    Reply reply;
    reply.ec = Await(io_, socket_, deadline,
                     [&](auto handler) { http::async_read(socket_, buffer_, parser, handler); });
    if (!reply.ec) reply.msg = parser.release();
    return reply;
  }

  // Sends one request and reads its response.
  Reply Request(http::verb method, std::string target, std::string body = {},
                std::vector<std::pair<std::string, std::string>> headers = {}, unsigned version = 11) {
    http::request<http::string_body> req{method, target, version};
    req.set(http::field::host, "127.0.0.1");
    for (const auto& [k, v] : headers) req.set(k, v);
    if (!body.empty() || method == http::verb::post || method == http::verb::put) {
      req.body() = std::move(body);
      req.prepare_payload();
    }
    Reply reply;
    reply.ec = Write(req);
    if (reply.ec) return reply;
    return Read(method == http::verb::head);
  }
  Reply Get(std::string target) { return Request(http::verb::get, std::move(target)); }

  // Waits until the server closes the connection. True on EOF/reset; false when the deadline
  // passed. Bytes that arrived meanwhile (there should be none) are appended to `extra`.
  bool WaitForClose(Duration deadline = kIoDeadline, std::string* extra = nullptr) {
    if (buffer_.size() > 0) {
      if (extra) extra->append(static_cast<const char*>(buffer_.data().data()), buffer_.size());
      buffer_.consume(buffer_.size());
    }
    const auto until = std::chrono::steady_clock::now() + deadline;
    char chunk[4096];
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= until) return false;
      size_t n = 0;
      beast::error_code ec = Await(io_, socket_, until - now, [&](auto handler) {
        socket_.async_read_some(asio::buffer(chunk), [&n, handler](beast::error_code e, size_t got) mutable {
          n = got;
          handler(e, got);
        });
      });
      if (extra) extra->append(chunk, n);
      if (ec == asio::error::timed_out) return false;
      if (ec) return IsClosedByPeer(ec);
    }
  }

 private:
  asio::io_context io_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
  beast::error_code connect_error_;
};

// ----------------------------------------------------------------------------- WebSocket

class WsClient {
 public:
  WsClient() : ws_(io_) {}

  // Connects and upgrades. A refused upgrade returns websocket::error::upgrade_declined and
  // response() holds the server's HTTP answer.
  beast::error_code Connect(uint16_t port, const std::string& target,
                            std::vector<std::pair<std::string, std::string>> headers = {},
                            int receive_buffer_bytes = 0) {
    tcp::socket& sock = ws_.next_layer();
    const tcp::endpoint ep(asio::ip::make_address("127.0.0.1"), port);
    beast::error_code ec;
    sock.open(ep.protocol(), ec);
    if (!ec && receive_buffer_bytes > 0) {
      sock.set_option(asio::socket_base::receive_buffer_size(receive_buffer_bytes), ec);
    }
    if (ec) return ec;
    ec = Await(io_, sock, kIoDeadline, [&](auto handler) { sock.async_connect(ep, handler); });
    if (ec) return ec;
    ws_.set_option(
        websocket::stream_base::decorator([headers = std::move(headers)](websocket::request_type& req) {
          for (const auto& [k, v] : headers) req.set(k, v);
        }));
    ws_.read_message_max(64 * 1024 * 1024);
    return Await(io_, sock, kIoDeadline,
                 [&](auto handler) { ws_.async_handshake(response_, "127.0.0.1", target, handler); });
  }

  beast::error_code Write(std::string_view data, bool binary = false, Duration deadline = kIoDeadline) {
    ws_.binary(binary);
    return Await(io_, ws_.next_layer(), deadline,
                 [&](auto handler) { ws_.async_write(asio::buffer(data.data(), data.size()), handler); });
  }

  struct Message {
    beast::error_code ec;
    std::string data;
    bool binary = false;
  };
  // Reads one message, answering pings meanwhile. A close from the server returns
  // websocket::error::closed; see close_code().
  Message Read(Duration deadline = kIoDeadline) {
    beast::flat_buffer buffer;
    Message m;
    m.ec = Await(io_, ws_.next_layer(), deadline, [&](auto handler) { ws_.async_read(buffer, handler); });
    if (!m.ec) {
      m.data = beast::buffers_to_string(buffer.data());
      m.binary = ws_.got_binary();
    }
    return m;
  }

  beast::error_code Close(uint16_t code, std::string reason = {}) {
    return Await(io_, ws_.next_layer(), kIoDeadline, [&](auto handler) {
      ws_.async_close(websocket::close_reason(static_cast<websocket::close_code>(code), reason), handler);
    });
  }

  uint16_t close_code() const { return static_cast<uint16_t>(ws_.reason().code); }
  std::string close_reason() const {
    return std::string(ws_.reason().reason.data(), ws_.reason().reason.size());
  }
  const websocket::response_type& response() const { return response_; }
  bool is_open() const { return ws_.is_open(); }

 private:
  asio::io_context io_;
  websocket::stream<tcp::socket> ws_;
  websocket::response_type response_;
};

// Tokens signed by `signer` for tests: a user token valid for `ttl_s`, a service token "biz"
// with `scopes` and no expiry.
inline std::string SignUserToken(const TokenSigner& signer, const std::string& user, int64_t ttl_s = 3600) {
  TokenClaims c;
  c.kind = TokenClaims::Kind::kUser;
  c.subject = user;
  c.issued_at = SystemClock::Instance().WallMillis() / 1000;
  c.expires_at = c.issued_at + ttl_s;
  return signer.Sign(c);
}
inline std::string SignServiceToken(const TokenSigner& signer, std::vector<std::string> scopes) {
  TokenClaims c;
  c.kind = TokenClaims::Kind::kService;
  c.subject = "biz";
  c.scopes = std::move(scopes);
  c.issued_at = SystemClock::Instance().WallMillis() / 1000;
  return signer.Sign(c);
}

}  // namespace chorus::net::testclient
