#include "net/http_server.h"

#include <sys/socket.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/websocket/rfc6455.hpp>
#include <boost/beast/websocket/stream.hpp>
#include <charconv>
#include <cstring>
#include <ctime>
#include <deque>
#include <optional>
#include <spdlog/spdlog.h>
#include <thread>
#include <unordered_set>

#include "base/metrics.h"
#include "base/mutex.h"

namespace chorus::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;

namespace {

// "Date: Mon, 23 Nov 2026 14:00:00 GMT\r\n", rebuilt at most once per second per thread.
std::string_view DateHeader() {
  thread_local time_t cached_second = 0;
  thread_local char buf[64];
  thread_local size_t len = 0;
  const time_t now = time(nullptr);
  if (now != cached_second) {
    cached_second = now;
    struct tm tm;
    gmtime_r(&now, &tm);
    len = strftime(buf, sizeof buf, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
  }
  return {buf, len};
}

// Server metrics in the default registry, shared by every server in the process.
struct HttpMetrics {
  HttpMetrics() {
    auto& m = DefaultMetrics();
    requests.emplace(m.Counter("chorus_http_requests_total", "HTTP responses sent, by status code", {"code"}).value());
    duration = &m.Histogram("chorus_http_request_duration_seconds",
                            "Time from a complete request to its response being queued",
                            {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                             5, 10})
                     .value()
                     .Get();
    connections = &m.Gauge("chorus_http_connections", "Open HTTP and WebSocket connections").value().Get();
    websockets = &m.Gauge("chorus_websocket_connections", "Open WebSocket connections").value().Get();
    ws_dropped = &m.Counter("chorus_websocket_dropped_messages_total",
                            "Outgoing WebSocket messages dropped by a full write queue")
                      .value()
                      .Get();
    ws_slow_closed = &m.Counter("chorus_websocket_slow_consumer_closes_total",
                                "WebSocket connections closed because their write queue overflowed")
                          .value()
                          .Get();
  }

  Counter& Requests(int status) {
    if (status < 100 || status > 599) status = 500;
    Counter* c = by_code[status].load(std::memory_order_acquire);
    if (c == nullptr) {
      const std::string code = std::to_string(status);
      c = &requests->WithLabels({std::string_view(code)});
      by_code[status].store(c, std::memory_order_release);
    }
    return *c;
  }

  std::optional<CounterFamily> requests;
  std::array<std::atomic<Counter*>, 600> by_code{};
  Histogram* duration;
  Gauge* connections;
  Gauge* websockets;
  Counter* ws_dropped;
  Counter* ws_slow_closed;
};

HttpMetrics& Metrics() {
  static HttpMetrics* metrics = new HttpMetrics();
  return *metrics;
}

class Connection {
 public:
  virtual ~Connection() = default;
  // Called on the connection's shard when the server shuts down.
  virtual void Shutdown() = 0;
};

}  // namespace

// State shared by the server handle and every connection. Per-shard parts are touched only on
// their shard's thread.
struct HttpServer::Core {
  Core(Runtime& rt, const Router& r, HttpServerOptions o) : runtime(rt), router(r), options(std::move(o)) {}

  struct ShardState {
    std::unique_ptr<tcp::acceptor> acceptor;
    std::unordered_set<Connection*> connections;
  };

  Runtime& runtime;
  const Router& router;
  const HttpServerOptions options;
  std::vector<ShardState> shards;
  uint16_t port = 0;
  std::atomic<bool> shutting_down{false};
  std::atomic<size_t> live{0};
  std::atomic<uint64_t> next_ws_id{1};
  // Guards no data (`live` is atomic): holding it around the notify orders the last decrement of
  // `live` against WaitDrained's check of it, so that wake-up cannot be lost.
  Mutex drain_mu;
  CondVar drained;

  void Register(uint32_t shard, Connection* c) {
    shards[shard].connections.insert(c);
  }
  void Unregister(uint32_t shard, Connection* c) {
    shards[shard].connections.erase(c);
  }
  void ConnectionGone() EXCLUDES(drain_mu) {
    Metrics().connections->Sub();
    if (live.fetch_sub(1) == 1) {
      MutexLock lock(drain_mu);
      drained.NotifyAll();
    }
  }
};

namespace {

using Core = HttpServer::Core;

// ------------------------------------------------------------------------------------ WebSocket

class WsSession final : public Connection,
                        public WebSocketConnection,
                        public std::enable_shared_from_this<WsSession> {
 public:
  WsSession(std::shared_ptr<Core> core, Shard& shard, beast::tcp_stream stream, const WebSocketHandler& handler,
            std::any context, std::string remote)
      : core_(std::move(core)),
        shard_(shard),
        ws_(std::move(stream)),
        handler_(handler),
        context_(std::move(context)),
        remote_(std::move(remote)),
        id_(core_->next_ws_id.fetch_add(1)) {
    Metrics().websockets->Add();
  }

  ~WsSession() override {
    Metrics().websockets->Sub();
    core_->ConnectionGone();
  }

  void Accept(http::request<http::string_body> req) {
    const auto& o = handler_.options;
    ws_.read_message_max(o.max_message_bytes);
    ws_.auto_fragment(false);
    websocket::stream_base::timeout timeouts{};
    timeouts.handshake_timeout = std::chrono::seconds(10);
    timeouts.idle_timeout = std::chrono::duration_cast<std::chrono::seconds>(o.idle_timeout);
    if (timeouts.idle_timeout.count() <= 0) timeouts.idle_timeout = std::chrono::seconds(1);
    timeouts.keep_alive_pings = true;
    beast::get_lowest_layer(ws_).expires_never();
    // Backstop for peers that vanish without a FIN while nothing is being written (the
    // WebSocket pings cover the rest). Best effort: a failure changes nothing else.
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().set_option(asio::socket_base::keep_alive(true), ignored);
    ws_.set_option(timeouts);
    ws_.set_option(websocket::stream_base::decorator(
        [](websocket::response_type& res) { res.set(http::field::server, "chorus"); }));
    core_->Register(shard_.index(), this);
    registered_ = true;
    ws_.async_accept(req, [self = shared_from_this()](beast::error_code ec) { self->OnAccept(ec); });
  }

  bool Send(std::shared_ptr<const std::string> payload, bool binary, bool droppable = false) override {
    if (closed_.load(std::memory_order_acquire)) return false;
    if (shard_.IsCurrent()) {  // the fan-out case: no task, no extra reference to the session
      Enqueue(std::move(payload), binary, droppable);
      return true;
    }
    shard_.Dispatch([self = shared_from_this(), payload = std::move(payload), binary, droppable]() mutable {
      self->Enqueue(std::move(payload), binary, droppable);
    });
    return true;
  }

  void Close(uint16_t code, std::string reason) override {
    shard_.Dispatch([self = shared_from_this(), code, reason = std::move(reason)]() mutable {
      self->StartClose(code, std::move(reason));
    });
  }

  uint64_t id() const override { return id_; }
  uint32_t shard() const override { return shard_.index(); }
  const std::string& remote() const override { return remote_; }
  const std::any& context() const override { return context_; }
  uint64_t dropped() const override { return dropped_.load(std::memory_order_relaxed); }

  void Shutdown() override { StartClose(kWsGoingAway, "server shutting down"); }

 private:
  struct Outgoing {
    std::shared_ptr<const std::string> payload;
    bool binary;
    bool droppable;
  };

  void OnAccept(beast::error_code ec) {
    if (ec) {
      Finish(kWsProtocolError);
      return;
    }
    open_ = true;
    if (handler_.on_open) handler_.on_open(shared_from_this());
    if (closed_) return;
    if (!queue_.empty() && !writing_) DoWrite();
    DoRead();
  }

  void DoRead() {
    ws_.async_read(read_buffer_, [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec) {
      uint16_t code = 1006;  // abnormal closure: no close frame
      if (ec == websocket::error::closed) code = ws_.reason().code;
      if (ec == websocket::error::message_too_big) code = kWsMessageTooBig;
      Finish(code);
      return;
    }
    if (handler_.on_message) {
      const auto data = read_buffer_.cdata();
      handler_.on_message(*this, std::string_view(static_cast<const char*>(data.data()), data.size()),
                          ws_.got_binary());
    }
    read_buffer_.consume(read_buffer_.size());
    if (!closed_) DoRead();
  }

  void Enqueue(std::shared_ptr<const std::string> payload, bool binary, bool droppable) {
    if (closed_ || closing_) return;
    const auto& o = handler_.options;
    if (!Fits(payload->size())) {
      switch (o.overflow) {
        case WsOverflow::kDropNewest:
          CountDrop();
          return;
        case WsOverflow::kClose:
          SlowConsumerClose();
          return;
        case WsOverflow::kDropOldest:
          if (Overflowed()) {
            SlowConsumerClose();
            return;
          }
          DropOldest(payload->size());
          if (droppable && !Fits(payload->size())) {
            CountDrop();
            return;
          }
          break;  // fits now, or a control message that goes past the limit
      }
    }
    queued_bytes_ += payload->size();
    queue_.push_back({std::move(payload), binary, droppable});
    if (!writing_ && open_) DoWrite();
  }

  // Whether a message of `bytes` can join the queue within its limits.
  bool Fits(size_t bytes) const {
    const auto& o = handler_.options;
    return queue_.size() < o.max_queue_messages && queued_bytes_ + bytes <= o.max_queue_bytes;
  }

  void CountDrop() {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    Metrics().ws_dropped->Inc();
  }

  // Drops the oldest droppable messages until `bytes` more would fit or none is left. The front
  // message is skipped while async_write reads from it.
  void DropOldest(size_t bytes) {
    size_t i = writing_ ? 1 : 0;
    while (!Fits(bytes) && i < queue_.size()) {
      if (!queue_[i].droppable) {
        ++i;
        continue;
      }
      queued_bytes_ -= queue_[i].payload->size();
      queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(i));  // erasing near the front is cheap
      CountDrop();
    }
  }

  // kDropOldest bookkeeping for an overflow happening now. Starts the grace period on the first
  // overflow since the queue last drained (and arms the timer that closes a peer which stopped
  // reading altogether). Returns true when the grace has run out: close the connection.
  bool Overflowed() {
    const auto now = std::chrono::steady_clock::now();
    if (overflow_since_ == std::chrono::steady_clock::time_point()) {
      overflow_since_ = now;
      ArmSlowTimer(now + handler_.options.slow_client_grace);
    }
    return now - overflow_since_ >= handler_.options.slow_client_grace;
  }

  // Ends the grace period once the queue is back to half its limits: the peer caught up.
  void MaybeCaughtUp() {
    const auto& o = handler_.options;
    if (overflow_since_ != std::chrono::steady_clock::time_point() && queued_bytes_ <= o.max_queue_bytes / 2 &&
        queue_.size() <= o.max_queue_messages / 2) {
      overflow_since_ = {};
    }
  }

  // One timer per connection, armed only while it is behind: for the grace deadline, then for
  // the deadline of a policy close stuck behind a write. Re-arming supersedes the pending wait;
  // the generation makes a wait that already completed harmless.
  void ArmSlowTimer(std::chrono::steady_clock::time_point deadline) {
    if (!slow_timer_) slow_timer_.emplace(ws_.get_executor());
    slow_timer_->expires_at(deadline);
    slow_timer_->async_wait([weak = weak_from_this(), gen = ++slow_timer_gen_](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || gen != self->slow_timer_gen_) return;
      self->OnSlowTimer();
    });
  }

  void OnSlowTimer() {
    if (closed_) return;
    if (closing_) {
      if (pending_close_) {
        // The close frame is still queued behind a write the peer does not read: give up on the
        // handshake. The pending read fails and Finish() reports the policy close code.
        beast::error_code ignored;
        beast::get_lowest_layer(ws_).socket().close(ignored);
      }
      return;
    }
    if (overflow_since_ == std::chrono::steady_clock::time_point()) return;  // caught up meanwhile
    const auto deadline = overflow_since_ + handler_.options.slow_client_grace;
    if (std::chrono::steady_clock::now() >= deadline) {
      SlowConsumerClose();
    } else {
      ArmSlowTimer(deadline);  // a newer grace period started after this timer was armed
    }
  }

  void SlowConsumerClose() {
    Metrics().ws_slow_closed->Inc();
    StartClose(kWsPolicyViolation, "slow consumer");
    // A peer that stopped reading never completes the write in progress, so the close frame
    // would wait for the idle timeout: bound the wait.
    if (pending_close_) ArmSlowTimer(std::chrono::steady_clock::now() + handler_.options.slow_client_grace);
  }

  void DoWrite() {
    writing_ = true;
    const Outgoing& front = queue_.front();
    ws_.binary(front.binary);
    ws_.async_write(asio::buffer(*front.payload),
                    [self = shared_from_this()](beast::error_code ec, size_t) { self->OnWrite(ec); });
  }

  void OnWrite(beast::error_code ec) {
    writing_ = false;
    if (!queue_.empty()) {
      queued_bytes_ -= queue_.front().payload->size();
      queue_.pop_front();
    }
    MaybeCaughtUp();
    if (ec) {
      // The read side reports the close; make sure it wakes up.
      beast::get_lowest_layer(ws_).socket().close(ec);
      return;
    }
    if (pending_close_) {
      DoClose();
    } else if (!queue_.empty()) {
      DoWrite();
    }
  }

  void StartClose(uint16_t code, std::string reason) {
    if (closed_ || closing_) return;
    closing_ = true;
    close_reason_ = websocket::close_reason(static_cast<websocket::close_code>(code), reason);
    if (writing_ && !queue_.empty()) {
      // The pending async_write still reads the front payload: OnWrite releases it.
      queue_.erase(queue_.begin() + 1, queue_.end());
      queued_bytes_ = queue_.front().payload->size();
    } else {
      queue_.clear();
      queued_bytes_ = 0;
    }
    if (!open_) {
      // Handshake still running: just drop the socket.
      beast::error_code ignored;
      beast::get_lowest_layer(ws_).socket().close(ignored);
      return;
    }
    if (writing_) {
      pending_close_ = true;
    } else {
      DoClose();
    }
  }

  void DoClose() {
    pending_close_ = false;
    writing_ = true;
    beast::get_lowest_layer(ws_).expires_after(std::chrono::seconds(5));
    ws_.async_close(close_reason_, [self = shared_from_this()](beast::error_code) {
      self->writing_ = false;
      // The pending read completes with `closed` and calls Finish().
      beast::error_code ignored;
      beast::get_lowest_layer(self->ws_).socket().close(ignored);
    });
  }

  void Finish(uint16_t code) {
    if (closed_.exchange(true)) return;
    if (slow_timer_) slow_timer_->cancel();
    if (registered_) core_->Unregister(shard_.index(), this);
    registered_ = false;
    if (open_ && handler_.on_close) handler_.on_close(*this, closing_ ? close_reason_.code : code);
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
  }

  std::shared_ptr<Core> core_;
  Shard& shard_;
  websocket::stream<beast::tcp_stream> ws_;
  const WebSocketHandler& handler_;
  const std::any context_;
  const std::string remote_;
  const uint64_t id_;
  beast::flat_buffer read_buffer_;
  std::deque<Outgoing> queue_;
  size_t queued_bytes_ = 0;
  // kDropOldest: when the current run of overflows began; zero while the peer keeps up.
  std::chrono::steady_clock::time_point overflow_since_{};
  std::optional<asio::steady_timer> slow_timer_;
  uint64_t slow_timer_gen_ = 0;
  std::atomic<uint64_t> dropped_{0};
  std::atomic<bool> closed_{false};
  bool open_ = false;
  bool writing_ = false;
  bool closing_ = false;
  bool pending_close_ = false;
  bool registered_ = false;
  websocket::close_reason close_reason_;
};

// ------------------------------------------------------------------------------------ HTTP

class HttpSession final : public Connection,
                          public HttpResponder::Sink,
                          public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(std::shared_ptr<Core> core, Shard& shard, tcp::socket socket)
      : core_(std::move(core)), shard_(shard), stream_(std::move(socket)) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string() + ":" + std::to_string(ep.port());
  }

  ~HttpSession() override {
    if (!upgraded_) core_->ConnectionGone();
  }

  void Start() {
    core_->Register(shard_.index(), this);
    registered_ = true;
    DoRead();
  }

  void Shutdown() override {
    keep_alive_ = false;
    if (!in_flight_) {
      // Idle or mid-read: nothing was acknowledged, close now.
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream_.socket().close(ignored);
    }
    // In flight: the response goes out with `Connection: close`, then the socket closes.
  }

  void Deliver(std::shared_ptr<Sink> self, uint64_t request_id, HttpResponse response) override {
    if (!shard_.IsCurrent()) {
      shard_.Post([self = std::move(self), request_id, response = std::move(response)]() mutable {
        auto* s = static_cast<HttpSession*>(self.get());
        s->Deliver(std::move(self), request_id, std::move(response));
      });
      return;
    }
    if (!in_flight_ || request_id != request_id_ || responded_) return;  // late, after a timeout
    responded_ = true;
    if (handler_timer_) handler_timer_->cancel();
    Write(std::move(response));
  }

 private:
  void DoRead() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(core_->options.max_header_bytes));
    parser_->body_limit(core_->options.max_body_bytes);
    // Not stream_.expires_after(): a tcp_stream timeout closes the socket, and a half-sent request
    // must still get its 408. The read timer only cancels the read.
    stream_.expires_never();
    read_timed_out_ = false;
    if (!read_timer_) read_timer_.emplace(stream_.get_executor());
    read_timer_->expires_after(core_->options.read_timeout);
    read_timer_->async_wait([self = shared_from_this(), gen = ++read_gen_](beast::error_code ec) {
      if (ec || gen != self->read_gen_) return;  // cancelled, or the read already completed
      self->read_timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    ++read_gen_;  // a read timer that fires from now on is stale
    read_timer_->cancel();
    if (ec) {
      if (read_timed_out_ && ec == asio::error::operation_aborted) ec = beast::error::timeout;
      if (ec == http::error::end_of_stream || ec == asio::error::operation_aborted ||
          ec == asio::error::connection_reset || ec == asio::error::eof || ec == asio::error::bad_descriptor) {
        return Close();
      }
      if (ec == beast::error::timeout) {
        if (parser_->got_some()) return SendError(408, "request_timeout", "request not received in time");
        return Close();
      }
      if (ec == http::error::header_limit) {
        return SendError(431, "header_too_large",
                         "request header exceeds " + std::to_string(core_->options.max_header_bytes) + " bytes");
      }
      if (ec == http::error::body_limit) {
        return SendError(413, "body_too_large",
                         "request body exceeds " + std::to_string(core_->options.max_body_bytes) + " bytes");
      }
      if (ec.category() == http::make_error_code(http::error::bad_method).category()) {
        return SendError(400, "bad_request", "malformed HTTP request: " + ec.message());
      }
      return Close();  // socket error
    }
    stream_.expires_never();
    request_start_ = std::chrono::steady_clock::now();
    http::request<http::string_body> msg = parser_->release();
    keep_alive_ = msg.keep_alive() && !core_->shutting_down.load(std::memory_order_relaxed);
    head_ = msg.method() == http::verb::head;

    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    const std::string_view target = msg.target();
    const size_t q = target.find('?');
    auto path = PercentDecode(target.substr(0, q), false);
    if (!path.ok() || path->empty() || path->front() != '/') {
      return SendError(400, "bad_request", "malformed request target");
    }
    req.path = std::move(*path);
    if (q != std::string_view::npos) {
      auto query = ParseQuery(target.substr(q + 1));
      if (!query.ok()) return SendError(400, "bad_request", "malformed query string: " + query.status().message());
      req.query = std::move(*query);
    }
    req.headers.reserve(8);
    for (const auto& f : msg) {
      std::string name(f.name_string());
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      req.headers.emplace_back(std::move(name), std::string(f.value()));
    }
    req.remote = remote_;
    req.shard = shard_.index();

    const bool upgrade = websocket::is_upgrade(msg);
    Router::Match match = core_->router.Find(req.method, target.substr(0, q), upgrade);
    req.params = std::move(match.params);
    if (match.websocket != nullptr) return Upgrade(std::move(msg), std::move(req), *match.websocket);
    if (match.handler == nullptr) {
      HttpResponse r;
      switch (match.status) {
        case 405: r = HttpResponse::Error(405, "method_not_allowed", req.method + " is not allowed on " + req.path); break;
        case 426: r = HttpResponse::Error(426, "upgrade_required", req.path + " is a WebSocket endpoint"); break;
        case 400: r = HttpResponse::Error(400, "bad_request", "malformed request target"); break;
        default: r = HttpResponse::Error(404, "not_found", "no route for " + req.path);
      }
      if (match.status == 426) r.headers.emplace_back("Upgrade", "websocket");
      if (!match.allow.empty()) r.headers.emplace_back("Allow", match.allow);
      in_flight_ = true;
      return Write(std::move(r));
    }
    req.body = std::move(msg.body());

    in_flight_ = true;
    responded_ = false;
    const uint64_t id = ++request_id_;
    (*match.handler)(req, HttpResponder(shared_from_this(), id));
    if (!responded_ && in_flight_ && request_id_ == id) ArmHandlerTimeout(id);
  }

  void ArmHandlerTimeout(uint64_t id) {
    if (!handler_timer_) handler_timer_.emplace(stream_.get_executor());
    handler_timer_->expires_after(core_->options.handler_timeout);
    handler_timer_->async_wait([self = shared_from_this(), id](beast::error_code ec) {
      if (ec) return;
      self->Deliver(self, id, HttpResponse::Error(504, "deadline_exceeded", "handler did not answer in time"));
    });
  }

  void Upgrade(http::request<http::string_body> msg, HttpRequest req, const WebSocketHandler& handler) {
    std::any context;
    if (handler.accept) {
      auto accepted = handler.accept(req);
      if (!accepted.ok()) {
        keep_alive_ = false;
        in_flight_ = true;
        return Write(HttpResponse::FromStatus(accepted.status()));
      }
      context = std::move(*accepted);
    }
    if (registered_) core_->Unregister(shard_.index(), this);
    registered_ = false;
    upgraded_ = true;  // the WebSocket session now owns the connection count
    auto ws = std::make_shared<WsSession>(core_, shard_, std::move(stream_), handler, std::move(context), remote_);
    ws->Accept(std::move(msg));
  }

  void SendError(int status, std::string_view code, std::string message) {
    keep_alive_ = false;
    in_flight_ = true;
    Write(HttpResponse::Error(status, code, message));
  }

  void Write(HttpResponse response) {
    auto& metrics = Metrics();
    metrics.Requests(response.status).Inc();
    if (request_start_ != std::chrono::steady_clock::time_point()) {
      metrics.duration->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - request_start_).count());
      request_start_ = {};
    }
    if (core_->shutting_down.load(std::memory_order_relaxed)) keep_alive_ = false;
    header_.clear();
    header_ += "HTTP/1.1 ";
    char num[16];
    auto end = std::to_chars(num, num + sizeof num, response.status).ptr;
    header_.append(num, end);
    header_ += ' ';
    header_ += HttpReason(response.status);
    header_ += "\r\nServer: chorus\r\n";
    header_ += DateHeader();
    if (!response.content_type.empty()) {
      header_ += "Content-Type: ";
      header_ += response.content_type;
      header_ += "\r\n";
    }
    for (const auto& [k, v] : response.headers) {
      header_ += k;
      header_ += ": ";
      header_ += v;
      header_ += "\r\n";
    }
    header_ += "Content-Length: ";
    end = std::to_chars(num, num + sizeof num, response.body.size()).ptr;
    header_.append(num, end);
    header_ += keep_alive_ ? "\r\n\r\n" : "\r\nConnection: close\r\n\r\n";
    body_ = std::move(response.body);
    std::array<asio::const_buffer, 2> bufs{asio::buffer(header_), asio::buffer(head_ ? std::string_view() : body_)};
    stream_.expires_after(core_->options.read_timeout);
    asio::async_write(stream_, bufs,
                      [self = shared_from_this()](beast::error_code ec, size_t) { self->OnWrite(ec); });
  }

  void OnWrite(beast::error_code ec) {
    in_flight_ = false;
    if (ec || !keep_alive_) return Close();
    DoRead();
  }

  void Close() {
    if (registered_) core_->Unregister(shard_.index(), this);
    registered_ = false;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
  }

  std::shared_ptr<Core> core_;
  Shard& shard_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<asio::steady_timer> handler_timer_;
  std::optional<asio::steady_timer> read_timer_;
  uint64_t read_gen_ = 0;
  bool read_timed_out_ = false;
  std::string remote_;
  std::string header_;
  std::string body_;
  std::chrono::steady_clock::time_point request_start_{};
  uint64_t request_id_ = 0;
  bool in_flight_ = false;
  bool responded_ = false;
  bool keep_alive_ = true;
  bool head_ = false;
  bool registered_ = false;
  bool upgraded_ = false;
};

void Accept(std::shared_ptr<Core> core, uint32_t shard_index) {
  auto& state = core->shards[shard_index];
  if (!state.acceptor) return;
  state.acceptor->async_accept([core, shard_index](beast::error_code ec, tcp::socket socket) {
    auto& st = core->shards[shard_index];
    if (!st.acceptor || core->shutting_down) return;
    if (ec) {
      // EMFILE and friends: back off briefly instead of spinning.
      if (ec != asio::error::operation_aborted) {
        spdlog::warn("http: accept failed on shard {}: {}", shard_index, ec.message());
        auto& shard = core->runtime.shard(shard_index);
        shard.RunAfter(std::chrono::milliseconds(50), [core, shard_index] { Accept(core, shard_index); });
      }
      return;
    }
    if (core->live.load() >= core->options.max_connections) {
      beast::error_code ignored;
      socket.close(ignored);  // over the limit: refuse rather than run out of descriptors
    } else {
      socket.set_option(tcp::no_delay(true), ec);
      core->live.fetch_add(1);
      Metrics().connections->Add();
      std::make_shared<HttpSession>(core, core->runtime.shard(shard_index), std::move(socket))->Start();
    }
    Accept(core, shard_index);
  });
}

}  // namespace

Result<std::pair<std::string, uint16_t>> ParseHostPort(std::string_view text) {
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return InvalidArgument("address '" + std::string(text) + "' must be host:port");
  std::string host(text.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  const std::string_view port_text = text.substr(colon + 1);
  unsigned port = 0;
  auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || p != port_text.data() + port_text.size() || port > 65535) {
    return InvalidArgument("address '" + std::string(text) + "' has a bad port");
  }
  beast::error_code aec;
  asio::ip::make_address(host, aec);
  if (aec) return InvalidArgument("address '" + std::string(text) + "' has a bad IP address");
  return std::make_pair(host, static_cast<uint16_t>(port));
}

Result<std::unique_ptr<HttpServer>> HttpServer::Start(Runtime& runtime, const Router& router,
                                                      const HttpServerOptions& options) {
  auto core = std::make_shared<Core>(runtime, router, options);
  core->shards.resize(runtime.size());
  beast::error_code ec;
  const auto address = asio::ip::make_address(options.host, ec);
  if (ec) return InvalidArgument("bad listen address '" + options.host + "'");
  uint16_t port = options.port;
  for (uint32_t i = 0; i < runtime.size(); ++i) {
    auto acceptor = std::make_unique<tcp::acceptor>(runtime.shard(i).io());
    tcp::endpoint ep(address, port);
    acceptor->open(ep.protocol(), ec);
    if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      int one = 1;
      if (setsockopt(acceptor->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
        ec = beast::error_code(errno, boost::system::system_category());
      }
    }
    if (!ec) acceptor->bind(ep, ec);
    if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return Unavailable("cannot listen on " + options.host + ":" + std::to_string(port) + ": " + ec.message());
    }
    if (port == 0) port = acceptor->local_endpoint().port();  // the other shards join this port
    core->shards[i].acceptor = std::move(acceptor);
  }
  core->port = port;
  for (uint32_t i = 0; i < runtime.size(); ++i) {
    runtime.shard(i).Post([core, i] { Accept(core, i); });
  }
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(core)));
}

HttpServer::~HttpServer() {
  // Acceptors belong to shard io_contexts: release them while those still exist.
  for (auto& s : core_->shards) s.acceptor.reset();
}

uint16_t HttpServer::port() const { return core_->port; }

size_t HttpServer::connections() const { return core_->live.load(); }

void HttpServer::BeginShutdown() {
  if (core_->shutting_down.exchange(true)) return;
  for (uint32_t i = 0; i < core_->shards.size(); ++i) {
    core_->runtime.shard(i).Post([core = core_, i] {
      auto& st = core->shards[i];
      if (st.acceptor) {
        beast::error_code ignored;
        st.acceptor->close(ignored);
      }
      // Shutdown() may unregister the connection: iterate over a copy.
      std::vector<Connection*> conns(st.connections.begin(), st.connections.end());
      for (Connection* c : conns) c->Shutdown();
    });
  }
}

bool HttpServer::WaitDrained(Duration timeout) {
  MutexLock lock(core_->drain_mu);
  return core_->drained.WaitFor(core_->drain_mu, timeout, [this] { return core_->live.load() == 0; });
}

}  // namespace chorus::net
