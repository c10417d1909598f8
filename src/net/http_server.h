// The HTTP/1.1 + WebSocket server: one SO_REUSEPORT listener per shard; an accepted connection
// goes to the shard with the fewest open connections and lives there; requests are routed
// through a Router.
//
// Per connection: keep-alive and pipelining (every complete request received is dispatched at
// once, up to max_pipelined_requests not yet written back; only safe methods and routes with
// RouteOptions::parallel_pipelining run side by side; answers leave in request order, those ready
// together in one write), a read timeout (a request, or the wait for the next one, must
// arrive within it: slow or idle peers are closed, a half-sent request gets 408), limits on
// header bytes (431) and body bytes (413), 400 for anything unparseable, and a handler timeout
// (504 when an asynchronous handler does not answer in time). Errors close the connection after
// the response; the server keeps serving everyone else.
//
// Shutdown is two steps, both safe from any thread: BeginShutdown() stops accepting, closes idle
// connections, lets in-flight requests finish (their responses carry `Connection: close`) and
// sends WebSocket peers 1001 "going away"; WaitDrained() blocks until every connection is gone
// or the timeout passes. Destroy the server after Runtime::Stop() and before the Runtime.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "base/clock.h"
#include "base/status.h"
#include "net/router.h"
#include "net/runtime.h"

namespace chorus::net {

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;  // 0 = pick a free port (see HttpServer::port())
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 1024 * 1024;
  Duration read_timeout = std::chrono::seconds(30);
  Duration handler_timeout = std::chrono::seconds(30);
  size_t max_connections = 18000;  // under the 20k open-file limit of the machine
  // HTTP/1.1 pipelining: requests of one connection received and not yet written back (in
  // progress, answered, or being written); further requests wait in the read buffer (and then in
  // the socket).
  size_t max_pipelined_requests = 64;
  // WebSocket writes of one event-loop turn (a room's block to its members) go to the kernel as
  // one io_uring submission instead of one sendmsg each. Falls back to sendmsg when the kernel
  // refuses io_uring.
  bool websocket_io_uring = true;
};

// "127.0.0.1:8080" / "[::1]:8080" / ":8080" -> host and port.
Result<std::pair<std::string, uint16_t>> ParseHostPort(std::string_view text);

class HttpServer {
 public:
  static Result<std::unique_ptr<HttpServer>> Start(Runtime& runtime, const Router& router,
                                                   const HttpServerOptions& options);
  ~HttpServer();

  uint16_t port() const;
  size_t connections() const;

  void BeginShutdown();
  // True when every connection closed within the timeout.
  bool WaitDrained(Duration timeout);

  struct Core;

 private:
  explicit HttpServer(std::shared_ptr<Core> core) : core_(std::move(core)) {}
  std::shared_ptr<Core> core_;
};

}  // namespace chorus::net
