// WebSocket connections as services see them: a Beast-free handle and a handler set.
//
// A service registers a WebSocketRoute on the router. On an upgrade request the server calls
// `accept` with the HTTP request (authenticate here: a non-OK status answers the upgrade with
// that HTTP error, no WebSocket is opened). Then `on_open`, `on_message` for every complete
// message and `on_close` once, all on the connection's shard thread.
//
// Writes: Send() is safe from any thread. Payloads are shared immutable buffers, so one
// serialized block can go to thousands of connections without copies. Nothing is written inside
// Send(): the shard writes all its connections' new frames together at the end of the event-loop
// turn (one io_uring submission; see docs/runtime.md). Each connection has a
// bounded write queue (max_queue_messages, max_queue_bytes of payload); what happens when a
// message does not fit is the route's overflow policy:
//   kClose       close with 1008 "slow consumer" at the first overflow.
//   kDropNewest  drop the new message (counted in dropped()).
//   kDropOldest  for fan-out traffic that a lagging reader may lose (room blocks): make room by
//                dropping the oldest queued messages that were sent `droppable`, never the one
//                being written and never a non-droppable (control) message. If that is not
//                enough, a droppable new message is dropped itself and a non-droppable one is
//                queued past the limit: control frames are small and must not be lost. A
//                reader that stays behind is closed with 1008 "slow consumer": the first
//                overflow starts a `slow_client_grace` clock, which stops only when the queue
//                drains to half its limits; an overflow after the grace, or the grace running
//                out with the queue still not drained (checked by a per-connection timer, so a
//                peer that stopped reading is closed without further sends), closes it.
// The `droppable` flag only matters under kDropOldest. Every dropped message increments dropped()
// and chorus_websocket_dropped_messages_total; policy closes count in
// chorus_websocket_slow_consumer_closes_total. A policy close whose close frame cannot be sent
// because the peer does not read (the write in progress never completes) drops the socket after
// another slow_client_grace: on_close still reports 1008, the peer sees the TCP connection end.
// All of this is per connection, on its shard: closing one never waits on another.
//
// Keep-alive: the server pings an idle peer and closes it (1006 semantics) when no pong or data
// arrives within the idle timeout. Messages over max_message_bytes close with 1009. Sockets have
// SO_KEEPALIVE set (kernel defaults for the probe timing) as a backstop for vanished peers.
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
  // `droppable`: under WsOverflow::kDropOldest the message may be dropped later, while queued, to
  // make room for newer ones (use it for fan-out data a lagging reader can afford to lose; leave
  // it false for control frames: welcome, pong, errors, private messages). Overrides must repeat
  // the same default: a default argument binds to the static type of the call.
  // Taken by reference: a fan-out passes one payload to thousands of connections, and copying the
  // pointer would bounce its reference count between the shards' cores.
  virtual bool Send(const std::shared_ptr<const std::string>& payload, bool binary, bool droppable = false) = 0;
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

// What a full write queue does; see the header comment.
enum class WsOverflow { kDropNewest, kClose, kDropOldest };

struct WebSocketOptions {
  size_t max_message_bytes = 64 * 1024;
  size_t max_queue_messages = 1024;
  size_t max_queue_bytes = 8 * 1024 * 1024;
  WsOverflow overflow = WsOverflow::kClose;
  Duration idle_timeout = std::chrono::seconds(60);  // ping after half of it, close after it
  // kDropOldest: how long a connection may stay behind (overflowing, not yet drained to half its
  // limits) before it is closed with 1008; zero closes at the first overflow. Under every policy
  // it also bounds how long a slow-consumer close waits for the write in progress before the
  // socket is dropped.
  Duration slow_client_grace = std::chrono::seconds(5);
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
