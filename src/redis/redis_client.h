// RedisClient: one asynchronous Redis connection owned by one runtime shard.
//
// The client drives hiredis's async API from the shard's io_context (hiredis 0.14 ships no Asio
// adapter; the one here maps hiredis's addRead/addWrite/cleanup hooks onto
// posix::stream_descriptor::async_wait). Commands are pipelined: Command() appends to hiredis's
// output buffer and returns; replies come back in order on the same connection.
//
// Contract of Command(args, done):
//   - `done` runs exactly once, always on the shard thread, never inline inside Command() (so a
//     caller may issue commands from a loop without re-entering itself), in command order. The
//     one exception: if the runtime stops before it runs, it is dropped.
//   - A Redis error reply (`-ERR ...`, `-WRONGTYPE ...`) becomes a Status, not a reply:
//     kUnavailable for the transient ones (LOADING, BUSY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN),
//     kInternal otherwise; the message is "redis: " + the server's text, so callers can match the
//     error prefix. Errors nested inside an array reply (EXEC) stay elements of type kError.
//   - Not connected (never connected yet, reconnecting, closed): kUnavailable at once. There is
//     no queue of commands waiting for a connection: live traffic is better refused than late.
//   - A command not answered within command_timeout: kDeadlineExceeded. Redis answers in order,
//     so an unanswered command means every later one is stuck too and the connection is presumed
//     dead (a partitioned or frozen server sends no RST): the client drops it, every other
//     in-flight command gets kUnavailable, and it reconnects. A reply arriving for a command that
//     already failed is never delivered. Do not use blocking commands (BLPOP...) with a timeout
//     longer than command_timeout.
//   - The connection dropping with commands in flight fails them with kUnavailable (they may or
//     may not have been executed by the server).
//   - Request/reply commands only: SUBSCRIBE/PSUBSCRIBE/MONITOR change the reply stream and are
//     not supported.
//
// Connection lifecycle: Connect() starts the first attempt; after a failed attempt or a lost
// connection the client retries after a backoff that doubles from reconnect_min to
// reconnect_max (with jitter, reset once connected). An attempt is resolve (asynchronous, so a
// host name never blocks the shard) + TCP connect + AUTH when a password is set, all within
// connect_timeout. connected() is true only once AUTH succeeded. Close() stops for good: every
// in-flight command fails with kUnavailable and later commands fail at once.
//
// Thread rules: Connect(), Command() and Close() may be called from any thread; off the shard
// thread they are posted to it (so e.g. a Command posted from a test thread runs after the
// shard picks it up). connected() may be read from any thread. The client must be destroyed on
// its shard thread, or after Runtime::Stop() and before the Runtime (Close() from another thread
// then dropping the reference is fine: the posted Close holds the client until it has run).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "net/runtime.h"
#include "redis/reply.h"  // RedisReply, part of this API

namespace chorus {
class Counter;
}

namespace chorus::redis {

struct RedisOptions {
  std::string host = "127.0.0.1";  // an IP address or a host name (resolved asynchronously)
  int port = 6379;
  Duration connect_timeout = std::chrono::seconds(1);  // resolve + connect + AUTH
  Duration command_timeout = std::chrono::seconds(1);
  Duration reconnect_min = std::chrono::milliseconds(50);
  Duration reconnect_max = std::chrono::seconds(2);
  std::string password;  // empty = no AUTH
};

class RedisClient : public std::enable_shared_from_this<RedisClient> {
 public:
  using Callback = std::function<void(Result<RedisReply>)>;

  // kInvalidArgument for an empty host, a port outside 1..65535, a non-positive timeout or
  // backoff, or reconnect_max < reconnect_min. Does not connect: call Connect().
  static Result<std::shared_ptr<RedisClient>> Create(net::Shard& shard, RedisOptions options);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Starts connecting (and reconnecting forever, until Close()). Idempotent; no-op after Close().
  void Connect();

  // Sends one command, e.g. {"SET", key, value}; arguments are binary-safe. See the header
  // comment for when and how `done` runs. `done` must not be null.
  void Command(std::vector<std::string> args, Callback done);

  // True while a connection is established and authenticated. Any thread.
  bool connected() const { return connected_.load(std::memory_order_acquire); }

  // Disconnects for good; in-flight commands fail with kUnavailable. Idempotent.
  void Close();

  net::Shard& shard() const { return shard_; }
  const RedisOptions& options() const { return options_; }

 private:
  struct Conn;  // one connection attempt: the hiredis context and its descriptor
  struct Pending {
    Callback done;
    SteadyTime deadline;
  };
  enum class State { kIdle, kResolving, kConnecting, kAuthenticating, kReady, kBackoff, kClosed };

  RedisClient(net::Shard& shard, RedisOptions options);

  // All private members run on the shard thread.
  void StartAttempt();
  void ConnectTo(const std::string& ip);
  void AttemptFailed(const std::string& reason);
  void ScheduleReconnect();
  void MarkReady();
  void DropConnection(const std::string& reason);
  void CancelTimer(TimerId& id);

  // hiredis callbacks, dispatched by the static trampolines in the .cc.
  void OnConnected(Conn* conn, bool ok);
  void OnAuthReply(Conn* conn, const redisReply* reply);
  void OnReply(Conn* conn, uint64_t id, const redisReply* reply);
  void OnConnectionEnded(Conn* conn, const std::string& reason);

  void ArmTimeoutTimer();
  void OnTimeoutTimer();
  void FailAllPending(const Status& status);
  // Hands `result` to `done` on the shard (posted) and counts it.
  void Finish(Callback done, Result<RedisReply> result);

  std::string Endpoint() const;

  net::Shard& shard_;
  const RedisOptions options_;
  std::atomic<bool> connected_{false};

  State state_ = State::kIdle;
  bool closed_ = false;
  std::shared_ptr<Conn> conn_;  // the current attempt or connection, if any
  uint64_t attempt_ = 0;        // bumped per attempt; stale timers/resolves compare it
  std::string last_error_;      // why the last attempt or connection ended, for kUnavailable
  Duration backoff_;
  uint32_t consecutive_failures_ = 0;

  uint64_t next_id_ = 1;
  // In-flight commands by id. Ids increase and every deadline is now + command_timeout, so
  // begin() is both the oldest command and the next deadline.
  std::map<uint64_t, Pending> pending_;

  TimerId connect_timer_ = 0;  // 0 = not armed
  TimerId reconnect_timer_ = 0;
  TimerId timeout_timer_ = 0;

  Counter* ok_count_;
  Counter* error_count_;
  Counter* unavailable_count_;
  Counter* timeout_count_;
};

}  // namespace chorus::redis
