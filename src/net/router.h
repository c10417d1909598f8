// Routes HTTP requests and WebSocket upgrades to handlers by method and path pattern.
//
// Patterns are literal segments and parameters: "/v1/rooms/{room}/messages". A final
// "{name...}" captures the rest of the path (for static files). Literal segments win over
// parameters at the same position, so "/v1/rooms/online" and "/v1/rooms/{room}" can coexist.
// A path that matches with another method answers 405 with an Allow header; a plain request to a
// WebSocket-only path is 426; no match is 404. Find() takes the path as received (percent-encoded)
// and decodes each segment after splitting, so "%2F" stays inside a parameter; a bad escape is 400.
//
// Build the router before the server starts; it is read-only afterwards and shared by every shard
// without locks.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "net/http.h"
#include "net/websocket.h"

namespace chorus::net {

// How the server may treat a route's requests.
struct RouteOptions {
  // Pipelined requests with an unsafe method (POST, ...) run one at a time, in order (RFC 9112
  // §9.3.2). Set this when the handler itself keeps the order that matters between requests
  // dispatched in order (e.g. per key, through one shard's FIFO): such requests are then
  // dispatched without waiting for the answers before them, as safe ones are.
  bool parallel_pipelining = false;
};

class Router {
 public:
  Router();
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Adds a route; an invalid pattern or a duplicate (method, pattern) is an error.
  Status Add(std::string_view method, std::string_view pattern, HttpHandler handler, RouteOptions options = {});
  Status AddWebSocket(std::string_view pattern, WebSocketHandler handler);

  struct Match {
    const HttpHandler* handler = nullptr;
    const WebSocketHandler* websocket = nullptr;
    std::vector<std::pair<std::string, std::string>> params;
    int status = 200;     // 400, 404, 405 or 426 when nothing matched
    std::string allow;    // for 405: "GET, POST"
    bool parallel_pipelining = false;  // the route's RouteOptions
  };
  // `websocket_upgrade` selects WebSocket routes (GET with Upgrade: websocket).
  Match Find(std::string_view method, std::string_view raw_path, bool websocket_upgrade) const;

  struct Route;  // opaque, defined in router.cc

 private:
  std::vector<std::unique_ptr<Route>> routes_;
};

// Percent-decodes a URL component; `plus_is_space` for query strings. Error on bad escapes.
Result<std::string> PercentDecode(std::string_view in, bool plus_is_space);
// Parses "a=1&b=x%20y" into decoded pairs. Error on bad escapes.
Result<std::vector<std::pair<std::string, std::string>>> ParseQuery(std::string_view query);

}  // namespace chorus::net
