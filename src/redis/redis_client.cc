#include "redis/redis_client.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <cstdio>
#include <iterator>
#include <string_view>
#include <utility>

#include "base/logging.h"
#include "base/metrics.h"

namespace chorus::redis {
namespace asio = boost::asio;

namespace {

const std::shared_ptr<spdlog::logger>& Log() {
  static const std::shared_ptr<spdlog::logger> logger = GetLogger("redis");
  return logger;
}

SteadyTime Now() { return SystemClock::Instance().Now(); }

int64_t Millis(Duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

}  // namespace

namespace internal {

RedisReply ConvertReply(const redisReply& r) {
  RedisReply out;
  switch (r.type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::kString;
      out.str.assign(r.str, r.len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::kStatus;
      out.str.assign(r.str, r.len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::kError;
      out.str.assign(r.str, r.len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::kInteger;
      out.integer = r.integer;
      break;
    case REDIS_REPLY_ARRAY:
      // hiredis's reader bounds nesting (7 levels), so the recursion is bounded too.
      out.type = RedisReply::Type::kArray;
      out.elements.reserve(r.elements);
      for (size_t i = 0; i < r.elements; ++i) {
        out.elements.push_back(r.element[i] != nullptr ? ConvertReply(*r.element[i]) : RedisReply{});
      }
      break;
    default:
      out.type = RedisReply::Type::kNil;
      break;
  }
  return out;
}

// A top-level error reply as a Status. The transient ones say "try again": the server is loading,
// busy with a script, or a replica/cluster is failing over.
Status ErrorReplyStatus(const std::string& text) {
  const std::string_view code = std::string_view(text).substr(0, text.find(' '));
  static constexpr std::array<std::string_view, 5> kTransient = {"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN",
                                                                 "CLUSTERDOWN"};
  if (std::find(kTransient.begin(), kTransient.end(), code) != kTransient.end()) {
    return Unavailable("redis: " + text);
  }
  return Internal("redis: " + text);
}

}  // namespace internal

namespace {

void AppendEscaped(std::string& out, std::string_view bytes) {
  out += '"';
  for (unsigned char c : bytes) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      char buf[5];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  out += '"';
}

void AppendDebug(std::string& out, const RedisReply& r) {
  switch (r.type) {
    case RedisReply::Type::kNil:
      out += "(nil)";
      break;
    case RedisReply::Type::kStatus:
      out += "(status) " + r.str;
      break;
    case RedisReply::Type::kError:
      out += "(error) " + r.str;
      break;
    case RedisReply::Type::kInteger:
      out += "(integer) " + std::to_string(r.integer);
      break;
    case RedisReply::Type::kString:
      AppendEscaped(out, r.str);
      break;
    case RedisReply::Type::kArray:
      out += '[';
      for (size_t i = 0; i < r.elements.size(); ++i) {
        if (i > 0) out += ", ";
        AppendDebug(out, r.elements[i]);
      }
      out += ']';
      break;
  }
}

}  // namespace

std::string RedisReply::DebugString() const {
  std::string out;
  AppendDebug(out, *this);
  return out;
}

// The Asio adapter for one hiredis async context (one connection attempt).
//
// hiredis asks for read/write interest through the ev hooks; each hook only records what is
// wanted and keeps at most one async_wait per direction outstanding. A wait handler calls
// redisAsyncHandleRead/Write, which may run reply callbacks and may free the context (EOF, error,
// a deferred redisAsyncFree). hiredis calls `cleanup` exactly when the context is going away (the
// last hook it calls), so `alive` turns false there and no handler touches `ac` afterwards. The
// socket belongs to hiredis (redisFree closes it): the descriptor is release()d, never closed.
//
// Lifetime: handlers hold a shared_ptr<Conn>, and every call into hiredis that may free the
// context is made while some shared_ptr<Conn> is held (a handler, DropConnection, the
// destructor), so a Conn outlives any hiredis call that reaches it through ac->data/ev.data.
// `client` is cleared once the client is done with the connection; callbacks then do nothing.
struct RedisClient::Conn : std::enable_shared_from_this<Conn> {
  Conn(asio::io_context& io, redisAsyncContext* context, RedisClient* owner)
      : ac(context), client(owner), sd(io) {}
  ~Conn() { ReleaseFd(); }

  void ReleaseFd() {
    if (sd.is_open()) sd.release();
  }

  // Why the connection ended: our own reason when we freed it, else hiredis's error.
  std::string Reason() const {
    if (!drop_reason.empty()) return drop_reason;
    if (alive && ac->err != 0) return ac->errstr;
    return "connection closed";
  }

  void ArmRead() {
    if (!alive || !want_read || read_armed) return;
    read_armed = true;
    sd.async_wait(asio::posix::descriptor_base::wait_read,
                  [self = shared_from_this()](const boost::system::error_code& ec) {
                    self->read_armed = false;
                    if (!self->alive || ec == asio::error::operation_aborted || !self->want_read) return;
                    if (ec) {
                      self->Fail("waiting to read: " + ec.message());
                      return;
                    }
                    redisAsyncHandleRead(self->ac);
                    self->ArmRead();
                  });
  }

  void ArmWrite() {
    if (!alive || !want_write || write_armed) return;
    write_armed = true;
    sd.async_wait(asio::posix::descriptor_base::wait_write,
                  [self = shared_from_this()](const boost::system::error_code& ec) {
                    self->write_armed = false;
                    if (!self->alive || ec == asio::error::operation_aborted || !self->want_write) return;
                    if (ec) {
                      self->Fail("waiting to write: " + ec.message());
                      return;
                    }
                    redisAsyncHandleWrite(self->ac);
                    self->ArmWrite();
                  });
  }

  // A descriptor the reactor cannot wait on: give the connection up.
  void Fail(const std::string& reason) {
    if (client != nullptr) {
      client->DropConnection(reason);
    } else if (alive && drop_reason.empty()) {
      drop_reason = reason;
      redisAsyncFree(ac);
    }
  }

  // hiredis event hooks; `p` is ev.data.
  static void AddRead(void* p) {
    auto* c = static_cast<Conn*>(p);
    c->want_read = true;
    c->ArmRead();
  }
  static void DelRead(void* p) { static_cast<Conn*>(p)->want_read = false; }
  static void AddWrite(void* p) {
    auto* c = static_cast<Conn*>(p);
    c->want_write = true;
    c->ArmWrite();
  }
  static void DelWrite(void* p) { static_cast<Conn*>(p)->want_write = false; }
  static void Cleanup(void* p) {
    auto* c = static_cast<Conn*>(p);
    if (!c->alive) return;
    const std::string reason = c->Reason();
    c->alive = false;
    c->want_read = c->want_write = false;
    c->ReleaseFd();  // cancels outstanding waits; their handlers see !alive
    if (c->client != nullptr) c->client->OnConnectionEnded(c, reason);
  }

  // hiredis callbacks; ac->data is the Conn.
  static void ConnectCallback(const redisAsyncContext* ac, int status) {
    auto* c = static_cast<Conn*>(ac->data);
    if (c->client != nullptr) c->client->OnConnected(c, status == REDIS_OK);
  }
  static void ReplyCallback(redisAsyncContext* ac, void* reply, void* privdata) {
    auto* c = static_cast<Conn*>(ac->data);
    if (c->client != nullptr) {
      c->client->OnReply(c, reinterpret_cast<uintptr_t>(privdata), static_cast<const redisReply*>(reply));
    }
  }
  static void AuthCallback(redisAsyncContext* ac, void* reply, void* /*privdata*/) {
    auto* c = static_cast<Conn*>(ac->data);
    if (c->client != nullptr) c->client->OnAuthReply(c, static_cast<const redisReply*>(reply));
  }

  redisAsyncContext* const ac;
  RedisClient* client;
  asio::posix::stream_descriptor sd;
  bool alive = true;  // false from hiredis's cleanup on: `ac` is being freed
  bool want_read = false;
  bool want_write = false;
  bool read_armed = false;
  bool write_armed = false;
  std::string drop_reason;  // non-empty once we asked hiredis to free the context
};

Result<std::shared_ptr<RedisClient>> RedisClient::Create(net::Shard& shard, RedisOptions options) {
  if (options.host.empty()) return InvalidArgument("redis: host is empty");
  if (options.port < 1 || options.port > 65535) {
    return InvalidArgument("redis: port " + std::to_string(options.port) + " is not in 1..65535");
  }
  if (options.connect_timeout <= Duration::zero() || options.command_timeout <= Duration::zero()) {
    return InvalidArgument("redis: connect_timeout and command_timeout must be positive");
  }
  if (options.reconnect_min <= Duration::zero() || options.reconnect_max < options.reconnect_min) {
    return InvalidArgument("redis: need 0 < reconnect_min <= reconnect_max");
  }
  auto family = DefaultMetrics().Counter("chorus_redis_commands_total", "Redis commands completed, by result",
                                         {"result"});
  if (!family.ok()) return family.status();
  std::shared_ptr<RedisClient> client(new RedisClient(shard, std::move(options)));
  client->ok_count_ = &family->WithLabels({"ok"});
  client->error_count_ = &family->WithLabels({"error"});
  client->unavailable_count_ = &family->WithLabels({"unavailable"});
  client->timeout_count_ = &family->WithLabels({"timeout"});
  return client;
}

RedisClient::RedisClient(net::Shard& shard, RedisOptions options)
    : shard_(shard), options_(std::move(options)), backoff_(options_.reconnect_min) {}

RedisClient::~RedisClient() {
  // On the shard thread or with the runtime stopped (see the header). Timers are left to fire
  // into an expired weak_ptr rather than cancelled, which is only legal on the shard thread.
  closed_ = true;
  connected_.store(false, std::memory_order_release);
  if (conn_ != nullptr) {
    std::shared_ptr<Conn> conn = std::move(conn_);
    conn->client = nullptr;  // hiredis must not call back into a dying client
    if (conn->alive && conn->drop_reason.empty()) {
      conn->drop_reason = "client destroyed";
      redisAsyncFree(conn->ac);
    }
  }
  FailAllPending(Unavailable("redis " + Endpoint() + ": client destroyed"));
}

std::string RedisClient::Endpoint() const { return options_.host + ":" + std::to_string(options_.port); }

void RedisClient::Connect() {
  if (!shard_.IsCurrent()) {
    shard_.Post([self = shared_from_this()] { self->Connect(); });
    return;
  }
  if (closed_ || state_ != State::kIdle) return;
  StartAttempt();
}

void RedisClient::StartAttempt() {
  if (closed_ || conn_ != nullptr) return;
  const uint64_t attempt = ++attempt_;
  CancelTimer(connect_timer_);
  // One deadline covers the whole attempt: resolve, connect and AUTH.
  connect_timer_ = shard_.RunAfter(options_.connect_timeout, [weak = weak_from_this(), attempt] {
    auto self = weak.lock();
    if (self == nullptr) return;
    self->connect_timer_ = 0;
    if (self->attempt_ != attempt) return;
    const std::string reason =
        "connect timed out after " + std::to_string(Millis(self->options_.connect_timeout)) + " ms";
    if (self->state_ == State::kResolving) {
      self->AttemptFailed(reason);
    } else if (self->state_ == State::kConnecting || self->state_ == State::kAuthenticating) {
      self->DropConnection(reason);
    }
  });

  boost::system::error_code ec;
  asio::ip::make_address(options_.host, ec);
  if (!ec) {
    ConnectTo(options_.host);
    return;
  }
  // hiredis would resolve a name with a blocking getaddrinfo on the shard thread; Asio's resolver
  // runs it on its own thread instead.
  state_ = State::kResolving;
  auto resolver = std::make_shared<asio::ip::tcp::resolver>(shard_.io());
  resolver->async_resolve(
      options_.host, std::to_string(options_.port),
      [weak = weak_from_this(), attempt, resolver](const boost::system::error_code& error,
                                                   const asio::ip::tcp::resolver::results_type& results) {
        auto self = weak.lock();
        if (self == nullptr || self->attempt_ != attempt || self->state_ != State::kResolving) return;
        if (error || results.empty()) {
          self->AttemptFailed("cannot resolve " + self->options_.host + ": " +
                              (error ? error.message() : std::string("no addresses")));
          return;
        }
        // A name may resolve to several addresses (localhost: ::1 and 127.0.0.1) of which only
        // some accept: successive failed attempts walk through them.
        auto it = results.begin();
        std::advance(it, self->consecutive_failures_ % results.size());
        self->ConnectTo(it->endpoint().address().to_string());
      });
}

void RedisClient::ConnectTo(const std::string& ip) {
  state_ = State::kConnecting;
  redisAsyncContext* ac = redisAsyncConnect(ip.c_str(), options_.port);
  if (ac == nullptr) {
    AttemptFailed("cannot allocate a hiredis context");
    return;
  }
  if (ac->err != 0) {  // e.g. an immediate ECONNREFUSED on loopback
    const std::string reason = ac->errstr;
    redisAsyncFree(ac);
    AttemptFailed(reason);
    return;
  }
  auto conn = std::make_shared<Conn>(shard_.io(), ac, this);
  boost::system::error_code ec;
  conn->sd.assign(ac->c.fd, ec);
  if (ec) {
    conn->alive = false;
    redisAsyncFree(ac);  // no hooks attached yet: frees and closes the socket, nothing else
    AttemptFailed("cannot watch the socket: " + ec.message());
    return;
  }
  ac->data = conn.get();
  ac->ev.data = conn.get();
  ac->ev.addRead = &Conn::AddRead;
  ac->ev.delRead = &Conn::DelRead;
  ac->ev.addWrite = &Conn::AddWrite;
  ac->ev.delWrite = &Conn::DelWrite;
  ac->ev.cleanup = &Conn::Cleanup;
  // A peer that vanishes without a RST on an idle connection is noticed by TCP keepalive.
  redisEnableKeepAlive(&ac->c);
  conn_ = std::move(conn);
  // Also arms the first write wait: writability is how a non-blocking connect completes.
  redisAsyncSetConnectCallback(ac, &Conn::ConnectCallback);
}

void RedisClient::OnConnected(Conn* conn, bool ok) {
  // hiredis 0.14 runs this callback without its in-callback guard, so nothing here may free the
  // context: failures are left to the connect timer.
  if (conn != conn_.get() || !ok) return;  // on failure hiredis frees the context next: Cleanup
  if (options_.password.empty()) {
    MarkReady();
    return;
  }
  state_ = State::kAuthenticating;
  const char* argv[2] = {"AUTH", options_.password.data()};
  const size_t lens[2] = {4, options_.password.size()};
  if (redisAsyncCommandArgv(conn->ac, &Conn::AuthCallback, nullptr, 2, argv, lens) != REDIS_OK) {
    Log()->warn("redis {}: cannot queue AUTH; the connect timeout will retry", Endpoint());
  }
}

void RedisClient::OnAuthReply(Conn* conn, const redisReply* reply) {
  // A null reply means the context is being freed; Cleanup reports why.
  if (conn != conn_.get() || reply == nullptr) return;
  if (reply->type == REDIS_REPLY_ERROR) {
    // Inside a reply callback hiredis defers the free until the callback returns.
    DropConnection("AUTH failed: " + std::string(reply->str, reply->len));
    return;
  }
  MarkReady();
}

void RedisClient::MarkReady() {
  CancelTimer(connect_timer_);
  state_ = State::kReady;
  backoff_ = options_.reconnect_min;
  if (consecutive_failures_ > 0) {
    Log()->info("redis {}: connected after {} failed attempts", Endpoint(), consecutive_failures_);
  } else {
    Log()->info("redis {}: connected", Endpoint());
  }
  consecutive_failures_ = 0;
  last_error_.clear();
  connected_.store(true, std::memory_order_release);
}

void RedisClient::DropConnection(const std::string& reason) {
  std::shared_ptr<Conn> conn = conn_;  // held across redisAsyncFree, see Conn
  if (conn == nullptr || !conn->alive || !conn->drop_reason.empty()) return;
  conn->drop_reason = reason;
  redisAsyncFree(conn->ac);  // synchronous unless inside a hiredis callback
}

void RedisClient::OnConnectionEnded(Conn* conn, const std::string& reason) {
  conn->client = nullptr;
  if (conn != conn_.get()) return;
  conn_.reset();  // whoever called into hiredis still holds a reference
  CancelTimer(connect_timer_);
  const bool was_ready = state_ == State::kReady;
  connected_.store(false, std::memory_order_release);
  // hiredis has already failed every command it held; anything left is failed here.
  FailAllPending(Unavailable("redis " + Endpoint() + ": connection lost: " + reason));
  if (closed_) {
    state_ = State::kClosed;
    return;
  }
  if (!was_ready) {
    AttemptFailed(reason);
    return;
  }
  Log()->warn("redis {}: connection lost: {}; reconnecting", Endpoint(), reason);
  last_error_ = reason;
  ScheduleReconnect();
}

void RedisClient::AttemptFailed(const std::string& reason) {
  CancelTimer(connect_timer_);
  connected_.store(false, std::memory_order_release);
  last_error_ = reason;
  if (closed_) {
    state_ = State::kClosed;
    return;
  }
  ++consecutive_failures_;
  // A server that stays down must not flood the log: warn on failures 1, 2, 4, 8, ...
  if ((consecutive_failures_ & (consecutive_failures_ - 1)) == 0) {
    Log()->warn("redis {}: cannot connect: {} (attempt {}); retrying", Endpoint(), reason,
                consecutive_failures_);
  } else {
    Log()->debug("redis {}: cannot connect: {} (attempt {})", Endpoint(), reason, consecutive_failures_);
  }
  ScheduleReconnect();
}

void RedisClient::ScheduleReconnect() {
  state_ = State::kBackoff;
  const Duration base = backoff_;
  backoff_ = std::min(backoff_ * 2, options_.reconnect_max);
  // Uniform in [base/2, base]: clients that lost the same server spread their retries.
  const auto half = base.count() / 2;
  const Duration delay(half +
                       static_cast<Duration::rep>(shard_.random().NextDouble() * static_cast<double>(half)));
  CancelTimer(reconnect_timer_);
  reconnect_timer_ = shard_.RunAfter(delay, [weak = weak_from_this()] {
    auto self = weak.lock();
    if (self == nullptr) return;
    self->reconnect_timer_ = 0;
    self->StartAttempt();
  });
}

void RedisClient::Command(std::vector<std::string> args, Callback done) {
  if (!shard_.IsCurrent()) {
    shard_.Post([self = shared_from_this(), args = std::move(args), done = std::move(done)]() mutable {
      self->Command(std::move(args), std::move(done));
    });
    return;
  }
  if (args.empty()) {
    Finish(std::move(done), InvalidArgument("redis: empty command"));
    return;
  }
  if (state_ != State::kReady || conn_ == nullptr) {
    std::string message = "redis " + Endpoint() + ": " + (closed_ ? "client closed" : "not connected");
    if (!closed_ && !last_error_.empty()) message += " (" + last_error_ + ")";
    Finish(std::move(done), Unavailable(std::move(message)));
    return;
  }
  std::vector<const char*> argv(args.size());
  std::vector<size_t> lens(args.size());
  for (size_t i = 0; i < args.size(); ++i) {
    argv[i] = args[i].data();
    lens[i] = args[i].size();
  }
  const uint64_t id = next_id_++;
  // The privdata is the command's id, not a pointer: a reply for a command that already failed
  // finds no entry in pending_ instead of a freed object. hiredis copies the arguments before
  // returning.
  void* privdata = reinterpret_cast<void*>(static_cast<uintptr_t>(id));  // NOLINT(performance-no-int-to-ptr)
  if (redisAsyncCommandArgv(conn_->ac, &Conn::ReplyCallback, privdata, static_cast<int>(args.size()),
                            argv.data(), lens.data()) != REDIS_OK) {
    Finish(std::move(done), Unavailable("redis " + Endpoint() + ": connection is closing"));
    return;
  }
  pending_.emplace(id, Pending{std::move(done), Now() + options_.command_timeout});
  ArmTimeoutTimer();
}

void RedisClient::OnReply(Conn* conn, uint64_t id, const redisReply* reply) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;  // already failed (timed out): the late reply goes nowhere
  Callback done = std::move(it->second.done);
  pending_.erase(it);
  if (reply == nullptr) {  // hiredis is freeing the context with this command in flight
    Finish(std::move(done), Unavailable("redis " + Endpoint() + ": connection lost: " + conn->Reason()));
    return;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    Finish(std::move(done), internal::ErrorReplyStatus(std::string(reply->str, reply->len)));
    return;
  }
  Finish(std::move(done), internal::ConvertReply(*reply));
}

void RedisClient::ArmTimeoutTimer() {
  if (timeout_timer_ != 0 || pending_.empty()) return;
  const Duration delay = std::max(Duration::zero(), pending_.begin()->second.deadline - Now());
  timeout_timer_ = shard_.RunAfter(delay, [weak = weak_from_this()] {
    if (auto self = weak.lock()) self->OnTimeoutTimer();
  });
}

void RedisClient::OnTimeoutTimer() {
  timeout_timer_ = 0;
  const SteadyTime now = Now();
  size_t expired = 0;
  while (!pending_.empty() && pending_.begin()->second.deadline <= now) {
    Callback done = std::move(pending_.begin()->second.done);
    pending_.erase(pending_.begin());
    Finish(std::move(done), DeadlineExceeded("redis " + Endpoint() + ": no reply within " +
                                             std::to_string(Millis(options_.command_timeout)) + " ms"));
    ++expired;
  }
  if (expired > 0) {
    // Replies come in order: the server has answered nothing for a whole timeout.
    Log()->warn("redis {}: {} command(s) timed out; reconnecting", Endpoint(), expired);
    DropConnection("a command got no reply within command_timeout");
  }
  ArmTimeoutTimer();
}

void RedisClient::FailAllPending(const Status& status) {
  std::map<uint64_t, Pending> pending = std::move(pending_);
  pending_.clear();
  for (auto& [id, p] : pending) Finish(std::move(p.done), status);
}

void RedisClient::Finish(Callback done, Result<RedisReply> result) {
  if (result.ok()) {
    ok_count_->Inc();
  } else if (result.status().code() == StatusCode::kDeadlineExceeded) {
    timeout_count_->Inc();
  } else if (result.status().code() == StatusCode::kUnavailable) {
    unavailable_count_->Inc();
  } else {
    error_count_->Inc();
  }
  if (!done) return;
  // Posted, never inline: the caller of Command() and hiredis's callbacks are never re-entered.
  shard_.Post([done = std::move(done), result = std::move(result)]() mutable { done(std::move(result)); });
}

void RedisClient::Close() {
  if (!shard_.IsCurrent()) {
    shard_.Post([self = shared_from_this()] { self->Close(); });
    return;
  }
  if (closed_) return;
  closed_ = true;
  state_ = State::kClosed;
  connected_.store(false, std::memory_order_release);
  CancelTimer(connect_timer_);
  CancelTimer(reconnect_timer_);
  CancelTimer(timeout_timer_);
  DropConnection("client closed");  // hiredis fails every in-flight command through OnReply
  FailAllPending(Unavailable("redis " + Endpoint() + ": client closed"));
}

void RedisClient::CancelTimer(TimerId& id) {
  if (id == 0) return;
  shard_.Cancel(id);
  id = 0;
}

}  // namespace chorus::redis
