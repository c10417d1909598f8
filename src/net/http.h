// HTTP request/response values and the handler signature shared by every service.
//
// This header is deliberately free of Beast and Asio: services include it (and router.h) to
// declare routes without paying for the networking headers. The server (http_server.h) converts
// between these values and the wire.
//
// Handlers are asynchronous by contract: a handler receives the request and an HttpResponder,
// and must call responder.Send() exactly once, now or later, from any thread. A handler that
// answers inline pays no extra cost; one that hops to another shard just moves the responder.
// A responder dropped without Send() answers 500 (a bug, logged) so a connection never hangs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace chorus::net {

using HeaderList = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as received: path + "?" + query
  std::string path;    // percent-decoded path
  std::string body;
  HeaderList headers;  // names lower-cased
  std::vector<std::pair<std::string, std::string>> query;   // decoded, in order
  std::vector<std::pair<std::string, std::string>> params;  // path parameters from the route
  std::string remote;  // "127.0.0.1:54321"
  uint32_t shard = 0;  // the shard this connection lives on

  // First header with this (lower-case) name, or empty.
  std::string_view Header(std::string_view lower_name) const;
  // First query parameter with this name.
  std::optional<std::string_view> Query(std::string_view name) const;
  // Path parameter; empty when the route has none of that name.
  std::string_view Param(std::string_view name) const;
  // The bearer token from `Authorization: Bearer ...`, else from `?token=` when allow_query.
  std::optional<std::string_view> Token(bool allow_query) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  HeaderList headers;  // extra headers; Content-Length/Connection/Date are set by the server

  static HttpResponse Json(int status, std::string body);
  static HttpResponse Text(int status, std::string body);
  // {"error":{"code":"<code>","message":"<message>"}} with the given status.
  static HttpResponse Error(int status, std::string_view code, std::string_view message);
  // Maps a non-OK Status onto its HTTP status and the error body above.
  static HttpResponse FromStatus(const Status& status);
};

// HTTP status for a StatusCode (invalid_argument -> 400, not_found -> 404, ...).
int HttpStatusFor(StatusCode code);
std::string_view HttpReason(int status);

// Escapes s as the contents of a JSON string (no surrounding quotes). Bytes >= 0x80 pass
// through unchanged: the caller supplies valid UTF-8.
std::string JsonEscape(std::string_view s);
// Appends s to out as a quoted JSON string, escaped as JsonEscape does. For handlers that write
// a response body directly instead of building a document.
void AppendJsonString(std::string& out, std::string_view s);

class HttpResponder {
 public:
  class Sink {
   public:
    virtual ~Sink() = default;
    // `self` is this sink, handed over so the last reference can be released on the sink's own
    // thread.
    virtual void Deliver(std::shared_ptr<Sink> self, uint64_t request_id, HttpResponse response) = 0;
  };

  HttpResponder() = default;
  HttpResponder(std::shared_ptr<Sink> sink, uint64_t request_id) : sink_(std::move(sink)), id_(request_id) {}
  HttpResponder(HttpResponder&&) noexcept = default;
  HttpResponder& operator=(HttpResponder&& other) noexcept;
  HttpResponder(const HttpResponder&) = delete;
  HttpResponder& operator=(const HttpResponder&) = delete;
  ~HttpResponder();

  // Sends the response. Safe from any thread; a second call is ignored.
  void Send(HttpResponse response);
  void SendStatus(const Status& status) { Send(HttpResponse::FromStatus(status)); }
  bool sent() const { return sink_ == nullptr; }

 private:
  std::shared_ptr<Sink> sink_;
  uint64_t id_ = 0;
};

using HttpHandler = std::function<void(HttpRequest&, HttpResponder)>;

}  // namespace chorus::net
