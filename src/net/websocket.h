// WebSocket connections as services see them: a Beast-free handle and a handler set.
//
// A service registers a WebSocketRoute on the router. On an upgrade request the server calls
// `accept` with the HTTP request (authenticate here: a non-OK status answers the upgrade with
// that HTTP error, no WebSocket is opened). Then `on_open`, `on_message` for every complete
// message and `on_close` once, all on the connection's shard thread.
//
// Writes: Send() is safe from any thread. Payloads are shared immutable buffers, so one
// serialized block can go to thousands of connections without copies. Each connection has a
// bounded write queue (messages and bytes); a slow reader that overflows it is handled by the
// route's overflow policy: drop the new message (counted) or close with 1008 "slow consumer".
//
// Keep-alive: the server pings an idle peer and closes it (1006 semantics) when no pong or data
// arrives within the idle timeout. Messages over max_message_bytes close with 1009.
#pragma once

#include <any>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "base/clock.h"
#include "base/status.h"
#include "net/http.h"

namespace chorus::net {

// RFC 6455 close codes used by Chorus.
enum WsCloseCode : uint16_t {
  kWsNormal = 1000,
  kWsGoingAway = 1001,  // server shutdown
  kWsProtocolError = 1002,
  kWsUnsupportedData = 1003,
  kWsPolicyViolation = 1008,  // slow consumer, bad auth after open
  kWsMessageTooBig = 1009,
  kWsInternalError = 1011,
  kWsTryAgainLater = 1013,
};

class WebSocketConnection {
 public:
  virtual ~WebSocketConnection() = default;

  // Queues a message; safe from any thread. Returns false if the connection is already closed
  // (a message dropped by the overflow policy still returns true: it is counted, not an error).
  virtual bool Send(std::shared_ptr<const std::string> payload, bool binary) = 0;
  // Starts a close handshake with the given code; safe from any thread, idempotent.
  virtual void Close(uint16_t code, std::string reason) = 0;

  virtual uint64_t id() const = 0;      // unique within the process
  virtual uint32_t shard() const = 0;   // the shard whose thread runs its callbacks
  virtual const std::string& remote() const = 0;
  // What `accept` returned (e.g. the authenticated user). Read-only after open.
  virtual const std::any& context() const = 0;
  // Messages dropped by the overflow policy so far.
  virtual uint64_t dropped() const = 0;
};

enum class WsOverflow { kDropNewest, kClose };

struct WebSocketOptions {
  size_t max_message_bytes = 64 * 1024;
  size_t max_queue_messages = 1024;
  size_t max_queue_bytes = 8 * 1024 * 1024;
  WsOverflow overflow = WsOverflow::kClose;
  Duration idle_timeout = std::chrono::seconds(60);  // ping after half of it, close after it
};

struct WebSocketHandler {
  // Decides whether to upgrade. Returns the per-connection context or an error status.
  std::function<Result<std::any>(const HttpRequest&)> accept;
  std::function<void(const std::shared_ptr<WebSocketConnection>&)> on_open;
  std::function<void(WebSocketConnection&, std::string_view data, bool binary)> on_message;
  std::function<void(WebSocketConnection&, uint16_t code)> on_close;
  WebSocketOptions options;
};

}  // namespace chorus::net
