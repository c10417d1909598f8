#include "net/http_server.h"

#include <liburing.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/read_size.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/rfc7230.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>
#include <deque>
#include <mutex>
#include <optional>
#include <span>
#include <spdlog/spdlog.h>
#include <thread>
#include <unordered_set>

#include "base/metrics.h"
#include "base/mutex.h"
#include "net/ws_codec.h"

namespace chorus::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

// RFC 6455 §4.2.1: GET, HTTP/1.1 or later, `Connection: upgrade` and `Upgrade: websocket` (token
// lists, any case).
bool IsWebSocketUpgrade(const http::request<http::string_body>& req) {
  return req.version() >= 11 && req.method() == http::verb::get &&
         http::token_list{req[http::field::connection]}.exists("upgrade") &&
         http::token_list{req[http::field::upgrade]}.exists("websocket");
}

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
    auto writes = m.Counter("chorus_websocket_writes_total",
                            "WebSocket socket writes, by how they reached the kernel (io_uring batch or sendmsg)",
                            {"via"})
                      .value();
    ws_writes_uring = &writes.WithLabels({"io_uring"});
    ws_writes_sendmsg = &writes.WithLabels({"sendmsg"});
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
  Counter* ws_writes_uring;
  Counter* ws_writes_sendmsg;
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
    // The shard's WsShardWriter (defined with the WebSocket session, in an unnamed namespace),
    // created by the shard's first WebSocket.
    std::shared_ptr<void> ws_writer;
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
  // Connections living on each shard (HTTP and WebSocket), for PickShard.
  std::unique_ptr<std::atomic<size_t>[]> open_by_shard;

  // The kernel spreads connections over the shards' SO_REUSEPORT listeners by a hash of the
  // address pair, so a client's few connections may all land on one shard. A connection accepted
  // on a shard that holds more than another is handed to the least loaded one instead.
  uint32_t PickShard(uint32_t accepted_on) {
    uint32_t best = accepted_on;
    size_t least = open_by_shard[accepted_on].load(std::memory_order_relaxed);
    for (uint32_t i = 0; i < shards.size(); ++i) {
      const size_t n = open_by_shard[i].load(std::memory_order_relaxed);
      if (n < least) {
        least = n;
        best = i;
      }
    }
    open_by_shard[best].fetch_add(1, std::memory_order_relaxed);
    return best;
  }

  void ConnectionGone(uint32_t shard) EXCLUDES(drain_mu) {
    open_by_shard[shard].fetch_sub(1, std::memory_order_relaxed);
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
//
// The server speaks WebSocket itself (frames by net/ws_codec.h) on the raw socket, so that a
// room's block can reach thousands of connections in a few system calls:
//
// - Writing. A session's queue holds whole frames (header + shared payload). Sending on the
//   shard's thread never writes at once: the session joins its shard's WsShardWriter, which
//   writes every session that has data at the end of the event-loop turn. With io_uring the
//   whole batch is one `sendmsg` submission per ring-full (each non-blocking, MSG_DONTWAIT, so
//   they complete inline and nothing is in flight once Flush returns); without it, one `sendmsg`
//   per session. A socket whose buffer is full waits for writability (asio `async_wait`) and is
//   written from there on by the session itself until its queue drains.
// - Reading. The session waits for readability and reads into its writer's shared buffer (one per
//   shard), so an idle connection holds no read buffer; the parser keeps a partial frame.
// - Closing. Our close frame goes after the frame being written (the rest of the queue is
//   dropped); the socket closes when the peer answers, after 5 s, at once after a protocol error,
//   or after the peer's own close frame has been echoed. on_close reports the code of whoever
//   closed first (1006 when the connection just ended).

class WsSession;

// One server-to-client frame: header and payload in one buffer, ready for the socket.
std::shared_ptr<const std::string> Frame(ws::Opcode op, std::string_view payload) {
  uint8_t header[ws::kMaxHeaderBytes];
  const size_t n = ws::EncodeHeader(op, payload.size(), header);
  auto frame = std::make_shared<std::string>();
  frame->reserve(n + payload.size());
  frame->append(reinterpret_cast<const char*>(header), n);
  frame->append(payload);
  return frame;
}

// Per server and shard: the WebSocket sessions with data to write this event-loop turn.
class WsShardWriter : public std::enable_shared_from_this<WsShardWriter> {
 public:
  WsShardWriter(asio::io_context& io, bool use_io_uring) : io_(io), use_io_uring_(use_io_uring) {}
  ~WsShardWriter() {
    if (ring_open_) io_uring_queue_exit(&ring_);
  }
  WsShardWriter(const WsShardWriter&) = delete;
  WsShardWriter& operator=(const WsShardWriter&) = delete;

  // Writes `s` at the end of this turn. Shard thread only.
  void Add(std::shared_ptr<WsSession> s) {
    pending_.push_back(std::move(s));
    PostFlush();
  }

  // `payload` as a whole text or binary frame. Fan-out sends one payload to many sessions in a
  // row, so the last frame built of each kind is kept and shared: one copy per block per shard.
  std::shared_ptr<const std::string> Framed(const std::shared_ptr<const std::string>& payload, bool binary) {
    LastFrame& last = last_[binary ? 1 : 0];
    if (last.payload != payload) {
      last.frame = Frame(binary ? ws::kBinary : ws::kText, *payload);
      last.payload = payload;  // held, so its address cannot be reused meanwhile
      PostFlush();                        // which lets go of it
    }
    return last.frame;
  }

  // Registered-file slots. A socket registered with the ring spares the kernel looking its
  // descriptor up (fget/fput) on every send. A session takes a slot the first time it goes out
  // through the ring and gives it back before closing its socket: the registration holds a
  // reference that would keep the socket open. -1 when none is free (the session then sends by
  // descriptor).
  int AcquireSlot(int fd) {
    if (!ring_open_ || free_slots_.empty()) return -1;
    const int slot = free_slots_.back();
    if (io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &fd, 1) != 1) return -1;
    free_slots_.pop_back();
    return slot;
  }
  void ReleaseSlot(int slot) {
    int none = -1;
    const int rc = io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &none, 1);
    if (rc == 1) {
      free_slots_.push_back(slot);
    } else {
      // The socket stays referenced until the ring closes; its FIN went out with shutdown().
      spdlog::error("io_uring: unregistering file slot {} failed ({})", slot, strerror(-rc));
    }
  }

  // Scratch space for reads (sessions read on this thread one at a time).
  std::span<char> read_buffer() { return {read_buffer_.get(), kReadBufferBytes}; }

 private:
  enum class RingState { kUnknown, kReady, kUnavailable };
  static constexpr unsigned kRingEntries = 512;
  // Below this many sessions a batch goes out with plain sendmsg calls: the ring saves nothing.
  static constexpr size_t kMinRingBatch = 4;
  static constexpr size_t kReadBufferBytes = 64 * 1024;
  static constexpr rlim_t kMaxFileSlots = 16384;

  void PostFlush() {
    if (!posted_) {
      posted_ = true;
      // The task holds the writer: it may outlive every session (and the server) of this shard.
      asio::post(io_, [self = shared_from_this()] { self->Flush(); });
    }
  }
  void Flush();
  void FlushRing();
  bool Ring();

  struct LastFrame {
    std::shared_ptr<const std::string> payload;
    std::shared_ptr<const std::string> frame;
  };

  asio::io_context& io_;
  const bool use_io_uring_;
  LastFrame last_[2];  // text, binary
  std::vector<std::shared_ptr<WsSession>> pending_;
  std::vector<std::shared_ptr<WsSession>> batch_;
  bool posted_ = false;
  RingState ring_state_ = RingState::kUnknown;
  bool ring_open_ = false;
  std::vector<int> free_slots_;
  io_uring ring_{};
  std::unique_ptr<char[]> read_buffer_ = std::make_unique<char[]>(kReadBufferBytes);
};

class WsSession final : public Connection,
                        public WebSocketConnection,
                        public std::enable_shared_from_this<WsSession> {
 public:
  // `input`: bytes the client sent after its upgrade request (already WebSocket frames).
  WsSession(std::shared_ptr<Core> core, Shard& shard, tcp::socket socket, const WebSocketHandler& handler,
            std::any context, std::string remote, std::string input)
      : core_(std::move(core)),
        shard_(shard),
        socket_(std::move(socket)),
        handler_(handler),
        context_(std::move(context)),
        remote_(std::move(remote)),
        id_(core_->next_ws_id.fetch_add(1)),
        input_(std::move(input)),
        parser_(handler.options.max_message_bytes),
        idle_timer_(shard.io()) {
    auto& writer = core_->shards[shard_.index()].ws_writer;
    if (!writer) writer = std::make_shared<WsShardWriter>(shard_.io(), core_->options.websocket_io_uring);
    writer_ = static_cast<WsShardWriter*>(writer.get());
    Metrics().websockets->Add();
  }

  ~WsSession() override {
    // A session normally released its slot in Finish. One destroyed unfinished is being dropped
    // with its event loop (runtime stop), maybe from another thread: the ring belongs to the shard
    // thread, and its closing drops the registration anyway.
    if (shard_.IsCurrent()) ReleaseFileSlot();
    Metrics().websockets->Sub();
    core_->ConnectionGone(shard_.index());
  }

  // Answers the upgrade request (101 with the accept key of `key`) and opens the connection.
  // Shard thread.
  void Open(std::string_view key) {
    // Backstop for peers that vanish without a FIN while nothing is being written (the
    // WebSocket pings cover the rest). Best effort: a failure changes nothing else.
    beast::error_code ignored;
    socket_.set_option(asio::socket_base::keep_alive(true), ignored);
    core_->Register(shard_.index(), this);
    registered_ = true;
    std::string response =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ";
    response += ws::AcceptKey(key);
    response += "\r\nServer: chorus\r\n\r\n";
    Outgoing& hs = Push(std::make_shared<const std::string>(std::move(response)), 0, /*droppable=*/false);
    hs.handshake = true;
    last_read_ = std::chrono::steady_clock::now();
    ArmIdleTimer(last_read_ + IdleHalf());
    if (handler_.on_open) handler_.on_open(shared_from_this());
    if (closed_) return;
    if (!input_.empty()) {
      std::string input = std::move(input_);
      if (!Process(input)) return;
    }
    WaitReadable();
  }

  bool Send(const std::shared_ptr<const std::string>& payload, bool binary, bool droppable = false) override {
    if (closed_.load(std::memory_order_acquire)) return false;
    if (shard_.IsCurrent()) {  // the fan-out case: no task, no extra reference to the session
      Enqueue(payload, binary, droppable);
      return true;
    }
    shard_.Dispatch([self = shared_from_this(), payload, binary, droppable] {
      self->Enqueue(payload, binary, droppable);
    });
    return true;
  }

  void Close(uint16_t code, std::string reason) override {
    shard_.Dispatch([self = shared_from_this(), code, reason = std::move(reason)]() mutable {
      self->StartClose(code, reason);
    });
  }

  uint64_t id() const override { return id_; }
  uint32_t shard() const override { return shard_.index(); }
  const std::string& remote() const override { return remote_; }
  const std::any& context() const override { return context_; }
  uint64_t dropped() const override { return dropped_.load(std::memory_order_relaxed); }

  void Shutdown() override { StartClose(kWsGoingAway, "server shutting down"); }

  // ---- called by WsShardWriter (shard thread)

  // Fills the gather list of the session's next write. False when there is nothing to write (the
  // session closed, or its queue emptied since it joined the batch).
  bool PrepareWrite() {
    if (closed_ || queue_.empty()) {
      write_state_ = WriteState::kIdle;
      return false;
    }
    write_state_ = WriteState::kSubmitted;
    Gather();
    return true;
  }
  bool submitted() const { return write_state_ == WriteState::kSubmitted; }
  // The batch's completion for this session was lost (a failing ring): its send may still happen,
  // so writing the same bytes again could duplicate them. Drop the connection instead.
  void WriteLost() {
    write_state_ = WriteState::kIdle;
    Finish(1006);
  }
  int fd() { return socket_.native_handle(); }
  // The socket's registered-file slot in the writer's ring, -1 if none (see AcquireSlot).
  int& file_slot() { return file_slot_; }
  const msghdr* message() const { return &msg_; }

  // The result of the write PrepareWrite set up: bytes written or -errno.
  void Written(ssize_t result) {
    write_state_ = WriteState::kIdle;
    if (closed_) return;
    if (result < 0) {
      if (result == -EAGAIN || result == -EWOULDBLOCK) return WaitWritable();
      if (result == -EINTR) return WriteNow();
      return Finish(1006);
    }
    const bool all = static_cast<size_t>(result) == gathered_;
    Consumed(static_cast<size_t>(result));
    if (closed_ || queue_.empty()) return;
    if (all) return WriteNow();  // more queued than one gather list holds
    WaitWritable();              // the socket buffer is full
  }

  // Writes with plain sendmsg calls until the queue drains or the socket is full.
  void WriteNow() {
    write_state_ = WriteState::kIdle;
    while (!closed_ && !queue_.empty()) {
      Gather();
      const ssize_t n = msg_.msg_iovlen == 1
                            ? ::send(fd(), iov_[0].iov_base, iov_[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL)
                            : ::sendmsg(fd(), &msg_, MSG_DONTWAIT | MSG_NOSIGNAL);
      Metrics().ws_writes_sendmsg->Inc();
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return WaitWritable();
        return Finish(1006);
      }
      const bool all = static_cast<size_t>(n) == gathered_;
      Consumed(static_cast<size_t>(n));
      if (!all) return WaitWritable();
    }
  }

 private:
  enum class WriteState {
    kIdle,       // nothing queued, or about to be
    kBatched,    // in the shard writer's list for the end of this turn
    kSubmitted,  // part of the batch being written
    kBlocked,    // waiting for the socket to take more
  };

  // A queued message as it goes on the wire: a whole frame (or the 101 response).
  struct Outgoing {
    std::shared_ptr<const std::string> wire;
    size_t payload_bytes = 0;  // what the queue limits count (the message without its header)
    bool droppable = false;
    bool handshake = false;  // the 101 response: never dropped, even by a close
    bool close = false;      // our close frame
    size_t size() const { return wire->size(); }
  };

  static constexpr size_t kMaxIov = 16;

  Duration IdleHalf() const {
    const Duration idle = std::max<Duration>(handler_.options.idle_timeout, std::chrono::milliseconds(2));
    return idle / 2;
  }

  // ---- reading

  void WaitReadable() {
    socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](beast::error_code ec) {
      if (self->closed_) return;
      if (ec) return self->Finish(1006);
      self->OnReadable();
    });
  }

  void OnReadable() {
    const std::span<char> buffer = writer_->read_buffer();
    for (;;) {
      const ssize_t n = ::recv(fd(), buffer.data(), buffer.size(), MSG_DONTWAIT);
      if (n > 0) {
        last_read_ = std::chrono::steady_clock::now();
        pinged_ = false;
        if (!Process(std::string_view(buffer.data(), static_cast<size_t>(n)))) return;
        if (static_cast<size_t>(n) < buffer.size()) break;
        continue;
      }
      if (n == 0) return Finish(1006);  // the peer ended the connection without a close frame
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return Finish(1006);
    }
    WaitReadable();
  }

  // Handles the frames in `data`. False when the session stops reading (closing or closed).
  bool Process(std::string_view data) {
    for (;;) {
      size_t used = 0;
      const ws::FrameParser::Event ev = parser_.Parse(data, &used);
      data.remove_prefix(used);
      switch (ev.kind) {
        case ws::FrameParser::Kind::kNeedMore:
          return true;
        case ws::FrameParser::Kind::kMessage:
          if (!closing_ && handler_.on_message) handler_.on_message(*this, ev.data, ev.binary);
          if (closed_) return false;
          break;
        case ws::FrameParser::Kind::kPing:
          if (!closing_) PushControl(ws::kPong, ev.data);
          break;
        case ws::FrameParser::Kind::kPong:
          break;
        case ws::FrameParser::Kind::kClose:
          PeerClosed(ev.close_code);
          return false;
        case ws::FrameParser::Kind::kError:
          ProtocolError(ev.close_code, std::string(ev.reason));
          return false;
      }
    }
  }

  // ---- keep-alive: ping after half the idle timeout without input, close after all of it

  void ArmIdleTimer(std::chrono::steady_clock::time_point at) {
    idle_timer_.expires_at(at);
    idle_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closed_) return;
      self->OnIdleTimer();
    });
  }

  void OnIdleTimer() {
    const auto now = std::chrono::steady_clock::now();
    const Duration half = IdleHalf();
    if (now - last_read_ >= 2 * half) return Finish(1006);  // no pong, no data
    if (now - last_read_ >= half && !pinged_) {
      pinged_ = true;
      if (!closing_) PushControl(ws::kPing, "");
    }
    ArmIdleTimer(last_read_ + (pinged_ ? 2 * half : half));
  }

  // ---- writing

  Outgoing& Push(std::shared_ptr<const std::string> wire, size_t payload_bytes, bool droppable) {
    queued_bytes_ += payload_bytes;
    Outgoing& o = queue_.emplace_back();
    o.wire = std::move(wire);
    o.payload_bytes = payload_bytes;
    o.droppable = droppable;
    Kick();
    return o;
  }

  // A control frame (ping, pong, close): never dropped, may go past the queue limits.
  void PushControl(ws::Opcode op, std::string_view payload) {
    Outgoing& o = Push(Frame(op, payload), payload.size(), /*droppable=*/false);
    o.close = op == ws::kClose;
  }

  // Joins the shard's batch unless a write is already due.
  void Kick() {
    if (write_state_ != WriteState::kIdle) return;
    write_state_ = WriteState::kBatched;
    writer_->Add(shared_from_this());
  }

  void WaitWritable() {
    write_state_ = WriteState::kBlocked;
    socket_.async_wait(tcp::socket::wait_write, [self = shared_from_this()](beast::error_code ec) {
      self->write_state_ = WriteState::kIdle;
      if (self->closed_) return;
      if (ec) return self->Finish(1006);
      self->WriteNow();
    });
  }

  // The gather list for the front of the queue (the front's unwritten part, then whole frames).
  // One entry in the common case: the writer then sends it without a msghdr.
  void Gather() {
    size_t n = 0;
    gathered_ = 0;
    size_t skip = sent_;
    for (const Outgoing& o : queue_) {
      if (n == kMaxIov) break;
      std::string_view part = *o.wire;
      part.remove_prefix(skip);
      skip = 0;
      iov_[n].iov_base = const_cast<char*>(part.data());
      iov_[n].iov_len = part.size();
      gathered_ += part.size();
      ++n;
    }
    msg_ = {};
    msg_.msg_iov = iov_;
    msg_.msg_iovlen = n;
  }

  // Retires `n` written bytes from the front of the queue.
  void Consumed(size_t n) {
    bool close_sent = false;
    while (n > 0 && !queue_.empty()) {
      Outgoing& front = queue_.front();
      const size_t left = front.size() - sent_;
      if (n < left) {
        sent_ += n;
        break;
      }
      n -= left;
      sent_ = 0;
      close_sent = close_sent || front.close;
      queued_bytes_ -= front.payload_bytes;
      queue_.pop_front();
    }
    MaybeCaughtUp();
    if (close_sent) CloseSent();
  }

  void Enqueue(const std::shared_ptr<const std::string>& payload, bool binary, bool droppable) {
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
    Push(writer_->Framed(payload, binary), payload->size(), droppable);
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

  // Drops the oldest droppable messages until `bytes` more would fit or none is left. A frame
  // partly written stays: the peer has its first bytes.
  void DropOldest(size_t bytes) {
    size_t i = sent_ > 0 ? 1 : 0;
    while (!Fits(bytes) && i < queue_.size()) {
      if (!queue_[i].droppable) {
        ++i;
        continue;
      }
      queued_bytes_ -= queue_[i].payload_bytes;
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

  // One timer per connection, armed only while it is behind or closing: for the grace deadline,
  // then for the deadline of the close handshake. Re-arming supersedes the pending wait; the
  // generation makes a wait that already completed harmless.
  void ArmSlowTimer(std::chrono::steady_clock::time_point deadline) {
    if (!slow_timer_) slow_timer_.emplace(shard_.io());
    slow_timer_->expires_at(deadline);
    slow_timer_->async_wait([weak = weak_from_this(), gen = ++slow_timer_gen_](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self || gen != self->slow_timer_gen_) return;
      self->OnSlowTimer();
    });
  }

  void OnSlowTimer() {
    if (closed_) return;
    // Closing: our close frame never got out (the peer does not read), or the peer never
    // answered it. Give up on the handshake.
    if (closing_) return Finish(1006);
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
    // A peer that stopped reading never takes the close frame: bound the wait.
    ArmSlowTimer(std::chrono::steady_clock::now() + handler_.options.slow_client_grace);
  }

  // ---- closing

  // Queues our close frame after the frame being written; everything else queued is dropped.
  void StartClose(uint16_t code, std::string_view reason) {
    if (closed_ || closing_) return;
    closing_ = true;
    close_code_ = code;
    size_t keep = 0;
    while (keep < queue_.size() && (queue_[keep].handshake || (keep == 0 && sent_ > 0))) ++keep;
    while (queue_.size() > keep) {
      queued_bytes_ -= queue_.back().payload_bytes;
      queue_.pop_back();
    }
    PushControl(ws::kClose, code == 1005 ? std::string() : ws::ClosePayload(code, reason));
    // Bounds the handshake (CloseSent re-arms it once the frame is out).
    ArmSlowTimer(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  }

  // The peer sent its close frame: the handshake is complete if we started it, else echo it.
  void PeerClosed(uint16_t code) {
    peer_closed_ = true;
    if (closing_) {
      if (close_sent_) Finish(1006);  // the code reported is ours (closing_)
      return;                         // CloseSent finishes once our frame is out
    }
    StartClose(code, "");
  }

  // A protocol violation: close with `code` and drop the connection once the frame is out.
  void ProtocolError(uint16_t code, const std::string& reason) {
    if (closing_) return Finish(1006);
    failed_ = true;
    StartClose(code, reason);
  }

  void CloseSent() {
    close_sent_ = true;
    if (peer_closed_ || failed_) return Finish(1006);
    ArmSlowTimer(std::chrono::steady_clock::now() + std::chrono::seconds(5));  // wait for the answer
  }

  // Ends the session: on_close once, then the socket closes. `code` is reported unless a close
  // handshake was under way, whose code wins.
  void Finish(uint16_t code) {
    if (closed_.exchange(true)) return;
    if (slow_timer_) slow_timer_->cancel();
    idle_timer_.cancel();
    if (registered_) core_->Unregister(shard_.index(), this);
    registered_ = false;
    queue_.clear();
    queued_bytes_ = 0;
    if (handler_.on_close) handler_.on_close(*this, closing_ ? close_code_ : code);
    beast::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    ReleaseFileSlot();  // or the ring keeps the socket open
    socket_.close(ignored);
  }

  void ReleaseFileSlot() {
    if (file_slot_ < 0) return;
    writer_->ReleaseSlot(file_slot_);
    file_slot_ = -1;
  }

  std::shared_ptr<Core> core_;
  Shard& shard_;
  tcp::socket socket_;
  const WebSocketHandler& handler_;
  const std::any context_;
  const std::string remote_;
  const uint64_t id_;
  WsShardWriter* writer_ = nullptr;
  int file_slot_ = -1;
  std::string input_;
  ws::FrameParser parser_;
  std::deque<Outgoing> queue_;
  size_t queued_bytes_ = 0;  // payload bytes in queue_ (headers not counted)
  size_t sent_ = 0;          // bytes of queue_.front() already written
  WriteState write_state_ = WriteState::kIdle;
  iovec iov_[kMaxIov];
  msghdr msg_{};
  size_t gathered_ = 0;  // bytes in iov_
  std::chrono::steady_clock::time_point last_read_{};
  bool pinged_ = false;
  asio::steady_timer idle_timer_;
  // kDropOldest: when the current run of overflows began; zero while the peer keeps up.
  std::chrono::steady_clock::time_point overflow_since_{};
  std::optional<asio::steady_timer> slow_timer_;
  uint64_t slow_timer_gen_ = 0;
  std::atomic<uint64_t> dropped_{0};
  std::atomic<bool> closed_{false};
  bool closing_ = false;      // our close frame is queued
  bool close_sent_ = false;   // and written
  bool peer_closed_ = false;  // the peer's close frame arrived
  bool failed_ = false;       // closing for a protocol error
  uint16_t close_code_ = 0;   // reported by on_close once closing_
  bool registered_ = false;
};

bool WsShardWriter::Ring() {
  if (ring_state_ == RingState::kUnknown) {
    ring_state_ = RingState::kUnavailable;
    if (use_io_uring_) {
      io_uring_params params{};
      params.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER;
      int rc = io_uring_queue_init_params(kRingEntries, &ring_, &params);
      if (rc == -EINVAL) {  // a kernel older than 6.0 lacks some of the flags
        params = {};
        rc = io_uring_queue_init_params(kRingEntries, &ring_, &params);
      }
      if (rc == 0) {
        ring_state_ = RingState::kReady;
        ring_open_ = true;
        // The kernel refuses a table larger than the open-file limit.
        rlimit files{};
        getrlimit(RLIMIT_NOFILE, &files);
        const auto slots = static_cast<unsigned>(std::min(kMaxFileSlots, files.rlim_cur));
        if (io_uring_register_files_sparse(&ring_, slots) == 0) {
          free_slots_.reserve(slots);
          for (unsigned i = slots; i > 0; --i) free_slots_.push_back(static_cast<int>(i - 1));
        }
      } else {
        static std::once_flag logged;
        std::call_once(logged, [rc] {
          spdlog::warn("io_uring unavailable ({}): WebSocket writes use one sendmsg per connection", strerror(-rc));
        });
      }
    }
  }
  return ring_state_ == RingState::kReady;
}

void WsShardWriter::Flush() {
  posted_ = false;
  batch_.swap(pending_);
  if (batch_.size() >= kMinRingBatch && Ring()) {
    FlushRing();
  } else {
    for (const auto& s : batch_) s->WriteNow();
  }
  batch_.clear();
  // The turn's fan-out is written: let go of its payloads (a sender may wait for its buffer to be
  // released).
  last_[0] = {};
  last_[1] = {};
}

// One send (or sendmsg) per session, submitted a ring-full at a time. MSG_DONTWAIT makes each complete (or
// fail with EAGAIN) inside io_uring_enter, so when the completions are reaped no operation is left
// in flight and the sessions' gather lists are free again.
void WsShardWriter::FlushRing() {
  size_t i = 0;
  while (i < batch_.size()) {
    unsigned submitted = 0;
    for (; i < batch_.size() && submitted < kRingEntries; ++i) {
      WsSession& s = *batch_[i];
      if (!s.PrepareWrite()) continue;
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (s.file_slot() < 0) s.file_slot() = AcquireSlot(s.fd());
      const int fd = s.file_slot() >= 0 ? s.file_slot() : s.fd();
      const msghdr* m = s.message();
      if (m->msg_iovlen == 1) {  // the usual case: no msghdr for the kernel to copy in
        io_uring_prep_send(sqe, fd, m->msg_iov[0].iov_base, m->msg_iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);
      } else {
        io_uring_prep_sendmsg(sqe, fd, m, MSG_DONTWAIT | MSG_NOSIGNAL);
      }
      if (s.file_slot() >= 0) io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
      io_uring_sqe_set_data64(sqe, i);
      ++submitted;
    }
    if (submitted == 0) continue;
    Metrics().ws_writes_uring->Inc(submitted);
    int rc;
    do {
      rc = io_uring_submit_and_wait(&ring_, submitted);
    } while (rc == -EINTR);
    if (rc != static_cast<int>(submitted)) {
      // Cannot happen with IORING_SETUP_SUBMIT_ALL short of a broken ring: SQEs left in it would
      // point at gather lists that change, so stop using it. Wait for what went in.
      spdlog::error("io_uring submit returned {} of {}: WebSocket writes fall back to sendmsg", rc, submitted);
      submitted = rc > 0 ? static_cast<unsigned>(rc) : 0;
      ring_state_ = RingState::kUnavailable;
    }
    bool lost = false;
    for (unsigned done = 0; done < submitted; ++done) {
      io_uring_cqe* cqe = nullptr;
      int w;
      do {
        w = io_uring_wait_cqe(&ring_, &cqe);
      } while (w == -EINTR);
      if (w < 0) {
        spdlog::error("io_uring wait failed ({}): WebSocket writes fall back to sendmsg", strerror(-w));
        ring_state_ = RingState::kUnavailable;
        lost = true;
        break;
      }
      const uint64_t index = io_uring_cqe_get_data64(cqe);
      const int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      batch_[index]->Written(res);
    }
    if (ring_state_ != RingState::kReady) {
      // Sessions prepared but never submitted write the plain way; those submitted whose
      // completion never came are dropped.
      for (const auto& s : batch_) {
        if (!s->submitted()) continue;
        if (lost) {
          s->WriteLost();
        } else {
          s->WriteNow();
        }
      }
      for (; i < batch_.size(); ++i) batch_[i]->WriteNow();
      return;
    }
  }
}

// ------------------------------------------------------------------------------------ HTTP
//
// HTTP/1.1 with pipelining. The session reads ahead: every complete request in its read buffer is
// dispatched at once, up to `max_pipelined_requests` received and not yet written back, so a handler that answers later
// (a durable write waiting for its group commit) does not hold up the requests queued behind it.
// Responses leave in request order: each request owns a slot, filled when its handler answers,
// and the filled slots at the front go out together in one gather write. While a read's requests
// are being dispatched nothing is written (the cork), so a burst of pipelined requests answered
// inline costs one recv and one send; answers arriving from other threads are gathered by
// flushing one event-loop turn later when more requests are outstanding. Only safe requests
// (GET, HEAD, ...) and routes with RouteOptions::parallel_pipelining run in parallel: any other
// POST waits for the requests before it to be answered, and the requests after it wait for its
// answer (CanDispatch).
//
// Closing: a request without keep-alive, a protocol error, the peer's end of stream or server
// shutdown stop the reading (`closing_`); the responses owed still go out, the last one with
// `Connection: close`, then the socket closes.

// A parsed request of an HttpSession waiting for its turn, already routed. (At namespace scope:
// clang cannot default-construct a nested class with member initializers inside its enclosing
// class, as std::optional::emplace() needs.)
struct HeldRequest {
  http::request<http::string_body> msg;
  Router::Match match;
  bool parallel = false;  // safe, or its route keeps the order itself
};

class HttpSession final : public Connection,
                          public HttpResponder::Sink,
                          public std::enable_shared_from_this<HttpSession> {
 public:
  HttpSession(std::shared_ptr<Core> core, Shard& shard, tcp::socket socket)
      : core_(std::move(core)),
        shard_(shard),
        stream_(std::move(socket)),
        read_timer_(stream_.get_executor()),
        handler_timer_(stream_.get_executor()) {
    beast::error_code ec;
    auto ep = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_ = ep.address().to_string() + ":" + std::to_string(ep.port());
  }

  ~HttpSession() override {
    if (!upgraded_) core_->ConnectionGone(shard_.index());
  }

  void Start() {
    core_->Register(shard_.index(), this);
    registered_ = true;
    NewParser();
    StartRequestDeadline();
    ReadMore();
  }

  void Shutdown() override {
    if (closed_ || upgraded_) return;
    closing_ = true;
    // Idle or mid-read: nothing was acknowledged, close now. Otherwise the owed responses go
    // out first, the last with `Connection: close`.
    if (slots_.empty() && !writing_) Close();
  }

  void Deliver(std::shared_ptr<Sink> self, uint64_t request_id, HttpResponse response) override {
    if (!shard_.IsCurrent()) {
      shard_.Post([self = std::move(self), request_id, response = std::move(response)]() mutable {
        auto* s = static_cast<HttpSession*>(self.get());
        s->Deliver(std::move(self), request_id, std::move(response));
      });
      return;
    }
    Complete(request_id, std::move(response));
  }

 private:
  struct Slot {
    uint64_t id = 0;
    bool head = false;  // a HEAD request: the body is not sent
    bool done = false;  // answered
    std::chrono::steady_clock::time_point start;
    HttpResponse response;
  };

  void NewParser() {
    parser_.emplace();
    parser_->eager(true);
    parser_->header_limit(static_cast<std::uint32_t>(core_->options.max_header_bytes));
    parser_->body_limit(core_->options.max_body_bytes);
  }

  // ---- reading

  void ReadMore() {
    if (reading_ || closed_) return;
    reading_ = true;
    // Not stream_.expires_after(): a tcp_stream timeout closes the socket, and a half-sent
    // request must still get its 408. The read timer only cancels the read. It runs while the
    // peer owes us a request (nothing outstanding); while we owe it answers, it does not.
    if (slots_.empty()) ArmReadTimer();
    // A write in progress keeps its own deadline; this clears only the read side's (a Flush
    // made while no read was pending set both).
    stream_.expires_never();
    stream_.async_read_some(buffer_.prepare(beast::read_size(buffer_, kReadChunk)),
                            [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnRead(ec, n); });
  }

  // The wait for a new request starts: it must arrive whole within read_timeout from now, however
  // it is split into reads.
  void StartRequestDeadline() {
    read_deadline_ = std::chrono::steady_clock::now() + core_->options.read_timeout;
  }

  void ArmReadTimer() {
    read_timer_armed_ = true;
    read_timed_out_ = false;
    read_timer_.expires_at(read_deadline_);
    read_timer_.async_wait([self = shared_from_this(), gen = read_gen_](beast::error_code ec) {
      if (ec || gen != self->read_gen_ || self->closed_) return;  // cancelled, or that read completed
      if (!self->slots_.empty()) {  // the peer waits for us, not we for it
        self->read_timer_armed_ = false;  // Progress re-arms once nothing is owed
        return;
      }
      self->read_timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
  }

  void OnRead(beast::error_code ec, size_t n) {
    reading_ = false;
    ++read_gen_;  // a read timer that fires from now on is stale
    read_timer_armed_ = false;
    if (closed_) return;
    if (ec) {
      if (read_timed_out_ && ec == asio::error::operation_aborted) {
        if (parser_->got_some()) return QueueError(408, "request_timeout", "request not received in time");
        return Close();
      }
      if (ec == asio::error::eof) {
        // The peer finished sending: answer what it asked, then close.
        closing_ = true;
        return Progress();
      }
      return Close();  // reset, aborted, or another socket error
    }
    buffer_.commit(n);
    if (closing_ || upgrade_) return;  // bytes after the last request we will answer
    ParseBuffered();
  }

  // RFC 9112 §9.3.2: pipelined requests may be processed in parallel only while they are all
  // safe. A request with another method (POST, PUT, DELETE, ...) is dispatched once every request
  // before it has been answered, and nothing after it until it has been answered itself, so its
  // effects happen in the order the client sent them.
  static bool IsSafe(http::verb method) {
    return method == http::verb::get || method == http::verb::head || method == http::verb::options ||
           method == http::verb::trace;
  }

  using Held = HeldRequest;

  // Requests received and not yet fully answered on the wire: dispatched, answered, or being
  // written. max_pipelined_requests bounds it.
  size_t Owed() const { return slots_.size() + in_write_.size(); }

  bool CanDispatch(const Held& held) const {
    if (Owed() >= core_->options.max_pipelined_requests || unsafe_running_) return false;
    return running_ == 0 || held.parallel;
  }

  // Dispatches every complete request in the buffer that may go now, then reads on unless the
  // connection is paused (pipeline full, or held by the ordering rule) or closing.
  void ParseBuffered() {
    paused_ = false;
    parsing_ = true;
    while (!closing_ && !upgrade_ && !closed_) {
      if (!held_) {
        if (buffer_.size() == 0) break;
        beast::error_code ec;
        const size_t used = parser_->put(buffer_.data(), ec);
        buffer_.consume(used);
        if (ec == http::error::need_more) break;
        if (ec) {
          ParseError(ec);
          break;
        }
        if (!parser_->is_done()) {
          if (used == 0) break;
          continue;
        }
        held_.emplace();
        held_->msg = parser_->release();
        NewParser();
        StartRequestDeadline();  // for the next request
        const std::string_view target = held_->msg.target();
        held_->match = core_->router.Find(held_->msg.method_string(), target.substr(0, target.find('?')),
                                          IsWebSocketUpgrade(held_->msg));
        held_->parallel = IsSafe(held_->msg.method()) || held_->match.parallel_pipelining;
      }
      if (!CanDispatch(*held_)) {
        paused_ = true;  // resumed by Progress once answers or writes make room
        break;
      }
      Held held = std::move(*held_);
      held_.reset();
      Dispatch(std::move(held));
    }
    parsing_ = false;
    if (!closing_ && !upgrade_ && !paused_) ReadMore();
    Progress();
  }

  void ParseError(beast::error_code ec) {
    if (ec == http::error::header_limit) {
      return QueueError(431, "header_too_large",
                        "request header exceeds " + std::to_string(core_->options.max_header_bytes) + " bytes");
    }
    if (ec == http::error::body_limit) {
      return QueueError(413, "body_too_large",
                        "request body exceeds " + std::to_string(core_->options.max_body_bytes) + " bytes");
    }
    QueueError(400, "bad_request", "malformed HTTP request: " + ec.message());
  }

  // ---- dispatching

  Slot& NewSlot(bool head) {
    Slot& s = slots_.emplace_back();
    s.id = ++next_id_;
    s.head = head;
    s.start = std::chrono::steady_clock::now();
    ++running_;
    return s;
  }

  // An error answer that ends the connection (after the responses owed before it); `head`: the
  // request was a HEAD, so the body is not sent.
  void QueueError(int status, std::string_view code, const std::string& message, bool head = false) {
    closing_ = true;
    const uint64_t id = NewSlot(head).id;
    Complete(id, HttpResponse::Error(status, code, message));
  }

  void Dispatch(Held held) {
    http::request<http::string_body>& msg = held.msg;
    const bool keep_alive = msg.keep_alive() && !core_->shutting_down.load(std::memory_order_relaxed);
    const bool head = msg.method() == http::verb::head;

    HttpRequest req;
    req.method = std::string(msg.method_string());
    req.target = std::string(msg.target());
    const std::string_view target = msg.target();
    const size_t q = target.find('?');
    auto path = PercentDecode(target.substr(0, q), false);
    if (!path.ok() || path->empty() || path->front() != '/') {
      return QueueError(400, "bad_request", "malformed request target", head);
    }
    req.path = std::move(*path);
    if (q != std::string_view::npos) {
      auto query = ParseQuery(target.substr(q + 1));
      if (!query.ok()) {
        return QueueError(400, "bad_request", "malformed query string: " + query.status().message(), head);
      }
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

    Router::Match& match = held.match;
    req.params = std::move(match.params);
    if (match.websocket != nullptr) {
      // The bytes after an upgrade request are WebSocket frames: stop parsing, and hand the
      // connection over once the responses owed before it are out (Progress).
      upgrade_.emplace(PendingUpgrade{std::move(msg), std::move(req), match.websocket});
      return;
    }
    if (!keep_alive) closing_ = true;  // this request's answer is the last
    const uint64_t id = NewSlot(head).id;
    if (!held.parallel) unsafe_running_ = id;
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
      return Complete(id, std::move(r));
    }
    req.body = std::move(msg.body());
    (*match.handler)(req, HttpResponder(shared_from_this(), id));
    if (!handler_timer_armed_ && !slots_.empty() && !slots_.back().done) ArmHandlerTimer();
  }

  // One timer for all outstanding handlers, aimed at the oldest unanswered slot. It is not
  // cancelled when that slot is answered: when it fires it answers 504 for whatever is overdue
  // and re-aims, so a pipeline of fast handlers costs no timer operations.
  void ArmHandlerTimer() {
    for (const Slot& s : slots_) {
      if (s.done) continue;
      handler_timer_armed_ = true;
      handler_timer_.expires_at(s.start + core_->options.handler_timeout);
      handler_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (ec) return;
        self->handler_timer_armed_ = false;
        self->OnHandlerTimer();
      });
      return;
    }
  }

  void OnHandlerTimer() {
    if (closed_) return;
    const auto now = std::chrono::steady_clock::now();
    std::vector<uint64_t> overdue;
    for (const Slot& s : slots_) {
      if (!s.done && s.start + core_->options.handler_timeout <= now) overdue.push_back(s.id);
    }
    for (uint64_t id : overdue) {
      Complete(id, HttpResponse::Error(504, "deadline_exceeded", "handler did not answer in time"));
    }
    if (!closed_) ArmHandlerTimer();
  }

  void Complete(uint64_t id, HttpResponse response) {
    if (closed_ || slots_.empty()) return;
    const uint64_t first = slots_.front().id;
    if (id < first || id - first >= slots_.size()) return;  // late, after a timeout
    Slot& s = slots_[id - first];
    if (s.done) return;  // late, after a timeout
    s.done = true;
    --running_;
    if (id == unsafe_running_) unsafe_running_ = 0;
    auto& metrics = Metrics();
    metrics.Requests(response.status).Inc();
    metrics.duration->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - s.start).count());
    s.response = std::move(response);
    if (parsing_) return;  // ParseBuffered flushes once the read's requests are dispatched
    // Posted rather than inline: when more answers may arrive in this event-loop turn (gathered
    // into one write), and when this answer lets held requests go: their handlers must not run
    // inside the Send() that called us (its caller may hold locks or be iterating).
    if (paused_ || (slots_.size() > 1 && !writing_)) {
      if (!flush_posted_) {
        flush_posted_ = true;
        asio::post(stream_.get_executor(), [self = shared_from_this()] {
          self->flush_posted_ = false;
          self->Progress();
        });
      }
      return;
    }
    Progress();
  }

  // ---- writing

  // Writes the answered slots at the front; once nothing is owed, upgrades or closes as decided.
  void Progress() {
    if (closed_) return;
    if (paused_ && !parsing_ && (!held_ || CanDispatch(*held_)) && Owed() < core_->options.max_pipelined_requests) {
      return ParseBuffered();  // room again; it comes back here when done
    }
    Flush();
    if (writing_ || !slots_.empty()) return;
    if (closing_) return Close();
    if (upgrade_) return Upgrade();
    if (reading_ && !read_timer_armed_) {  // idle again: the peer owes a request
      // The idle wait starts now, unless part of the next request already arrived (its
      // deadline started when the one before it was complete).
      if (!parser_->got_some()) StartRequestDeadline();
      ArmReadTimer();
    }
  }

  void Flush() {
    if (writing_ || parsing_ || closed_) return;
    size_t n = 0;
    while (n < slots_.size() && n < kMaxWriteSlots && slots_[n].done) ++n;
    if (n == 0) return;
    const bool shutting_down = core_->shutting_down.load(std::memory_order_relaxed);
    if (shutting_down) closing_ = true;
    in_write_.clear();
    for (size_t i = 0; i < n; ++i) {
      in_write_.push_back(std::move(slots_.front()));
      slots_.pop_front();
    }
    // Heads first (one buffer, so it must not grow while buffers point into it), then the list.
    heads_.clear();
    head_ends_.clear();
    for (size_t i = 0; i < n; ++i) {
      const bool last_owed = slots_.empty() && i + 1 == n;
      AppendHead(heads_, in_write_[i].response, closing_ && last_owed);
      head_ends_.push_back(heads_.size());
    }
    write_bufs_.clear();
    size_t from = 0;
    for (size_t i = 0; i < n; ++i) {
      write_bufs_.push_back(asio::buffer(heads_.data() + from, head_ends_[i] - from));
      from = head_ends_[i];
      if (!in_write_[i].head && !in_write_[i].response.body.empty()) {
        write_bufs_.push_back(asio::buffer(in_write_[i].response.body));
      }
    }
    writing_ = true;
    stream_.expires_after(core_->options.read_timeout);  // a peer that stops reading is closed
    asio::async_write(stream_, write_bufs_,
                      [self = shared_from_this()](beast::error_code ec, size_t) { self->OnWrite(ec); });
  }

  static void AppendHead(std::string& out, const HttpResponse& response, bool close) {
    out += "HTTP/1.1 ";
    char num[16];
    auto end = std::to_chars(num, num + sizeof num, response.status).ptr;
    out.append(num, end);
    out += ' ';
    out += HttpReason(response.status);
    out += "\r\nServer: chorus\r\n";
    out += DateHeader();
    if (!response.content_type.empty()) {
      out += "Content-Type: ";
      out += response.content_type;
      out += "\r\n";
    }
    for (const auto& [k, v] : response.headers) {
      out += k;
      out += ": ";
      out += v;
      out += "\r\n";
    }
    out += "Content-Length: ";
    end = std::to_chars(num, num + sizeof num, response.body.size()).ptr;
    out.append(num, end);
    out += close ? "\r\nConnection: close\r\n\r\n" : "\r\n\r\n";
  }

  void OnWrite(beast::error_code ec) {
    writing_ = false;
    in_write_.clear();
    if (closed_) return;
    if (ec) return Close();
    stream_.expires_never();
    Progress();
  }

  void Upgrade() {
    PendingUpgrade u = std::move(*upgrade_);
    upgrade_.reset();
    // The rest of RFC 6455 §4.2.1 (IsWebSocketUpgrade checked the method and headers).
    const std::string_view key = u.msg[http::field::sec_websocket_key];
    if (u.msg[http::field::sec_websocket_version] != "13") {
      closing_ = true;
      HttpResponse r = HttpResponse::Error(426, "upgrade_required", "Sec-WebSocket-Version must be 13");
      r.headers.emplace_back("Sec-WebSocket-Version", "13");
      return Complete(NewSlot(false).id, std::move(r));
    }
    if (!ws::ValidKey(key)) {
      closing_ = true;
      return Complete(NewSlot(false).id,
                      HttpResponse::Error(400, "bad_request", "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    std::any context;
    if (u.handler->accept) {
      auto accepted = u.handler->accept(u.req);
      if (!accepted.ok()) {
        closing_ = true;
        const uint64_t id = NewSlot(false).id;
        return Complete(id, HttpResponse::FromStatus(accepted.status()));
      }
      context = std::move(*accepted);
    }
    if (registered_) core_->Unregister(shard_.index(), this);
    registered_ = false;
    upgraded_ = true;  // the WebSocket session now owns the connection count
    closed_ = true;    // and the socket: this session does nothing more
    read_timer_.cancel();
    handler_timer_.cancel();
    // Frames the client sent right behind its request are already in our buffer.
    const auto rest = buffer_.data();
    std::string input(static_cast<const char*>(rest.data()), rest.size());
    auto ws = std::make_shared<WsSession>(core_, shard_, stream_.release_socket(), *u.handler, std::move(context),
                                          remote_, std::move(input));
    ws->Open(key);
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    if (registered_) core_->Unregister(shard_.index(), this);
    registered_ = false;
    read_timer_.cancel();
    handler_timer_.cancel();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.socket().close(ignored);
  }

  static constexpr size_t kReadChunk = 64 * 1024;
  static constexpr size_t kMaxWriteSlots = 64;  // responses gathered into one write

  struct PendingUpgrade {
    http::request<http::string_body> msg;
    HttpRequest req;
    const WebSocketHandler* handler;
  };

  std::shared_ptr<Core> core_;
  Shard& shard_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  asio::steady_timer read_timer_;
  std::chrono::steady_clock::time_point read_deadline_{};  // for the request being received
  asio::steady_timer handler_timer_;
  std::string remote_;
  std::deque<Slot> slots_;     // requests answered or owed, in request order
  std::vector<Slot> in_write_;  // the slots of the write in progress (their bodies are sent)
  std::string heads_;           // their response heads, back to back
  std::vector<size_t> head_ends_;
  std::vector<asio::const_buffer> write_bufs_;
  std::optional<PendingUpgrade> upgrade_;
  std::optional<Held> held_;     // parsed, not yet allowed to go
  size_t running_ = 0;           // slots whose handler has not answered
  uint64_t unsafe_running_ = 0;  // the slot of an unanswered unsafe request (0: none)
  uint64_t next_id_ = 0;
  uint64_t read_gen_ = 0;
  bool reading_ = false;
  bool read_timer_armed_ = false;
  bool read_timed_out_ = false;
  bool handler_timer_armed_ = false;
  bool parsing_ = false;       // dispatching a read's requests: answers wait (the cork)
  bool paused_ = false;        // not reading: pipeline full or held_ waits (ParseBuffered)
  bool writing_ = false;
  bool flush_posted_ = false;
  bool closing_ = false;       // no more requests are read; close once nothing is owed
  bool closed_ = false;
  bool registered_ = false;
  bool upgraded_ = false;
};

// An accepted socket on its way to another shard. If the task carrying it is dropped (the runtime
// stopped first), the destructor closes it and uncounts it.
struct SocketInTransit {
  std::shared_ptr<Core> core;
  uint32_t target = 0;
  int fd = -1;
  ~SocketInTransit() {
    if (fd < 0) return;
    ::close(fd);
    core->ConnectionGone(target);
  }
};

// Moves an accepted connection to shard `target` (counted there by PickShard already).
void HandOver(const std::shared_ptr<Core>& core, uint32_t target, tcp::socket socket) {
  beast::error_code ec;
  const auto protocol = socket.local_endpoint(ec).protocol();
  const auto fd = ec ? -1 : socket.release(ec);
  if (ec) {
    socket.close(ec);
    core->ConnectionGone(target);
    return;
  }
  auto transit = std::make_shared<SocketInTransit>();
  transit->core = core;
  transit->target = target;
  transit->fd = fd;
  core->runtime.shard(target).Post([transit, protocol] {
    Shard& shard = transit->core->runtime.shard(transit->target);
    if (transit->core->shutting_down.load()) return;  // stopped accepting meanwhile: closed above
    beast::error_code ec;
    tcp::socket moved(shard.io());
    moved.assign(protocol, transit->fd, ec);
    if (ec) return;  // still owned by `transit`: closed and uncounted
    transit->fd = -1;
    std::make_shared<HttpSession>(transit->core, shard, std::move(moved))->Start();
  });
}

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
      const uint32_t target = core->PickShard(shard_index);
      if (target == shard_index) {
        std::make_shared<HttpSession>(core, core->runtime.shard(target), std::move(socket))->Start();
      } else {
        HandOver(core, target, std::move(socket));
      }
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
  core->open_by_shard = std::make_unique<std::atomic<size_t>[]>(runtime.size());
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
