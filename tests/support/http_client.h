// A deliberately small blocking HTTP/1.1 client for integration tests: raw bytes in, parsed
// responses out, so tests can send malformed input as easily as well-formed requests.
// Not thread-safe; one client per connection per thread.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"

namespace chorus::testing {

struct HttpReply {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased
  std::string body;
  std::string Header(std::string_view lower_name) const;
};

class HttpClient {
 public:
  // Connects to 127.0.0.1:port.
  static Result<HttpClient> Connect(int port, std::chrono::milliseconds timeout = std::chrono::seconds(5));
  HttpClient(HttpClient&& other) noexcept;
  HttpClient& operator=(HttpClient&& other) noexcept;
  ~HttpClient();

  Status SendRaw(std::string_view bytes);
  // Reads one response (Content-Length framed). Error on timeout, EOF or garbage.
  Result<HttpReply> ReadReply(std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // Sends a request with Host (127.0.0.1:port) and Content-Length and reads the reply.
  Result<HttpReply> Request(std::string_view method, std::string_view target, std::string_view body = {},
                            std::vector<std::pair<std::string, std::string>> headers = {});
  Result<HttpReply> Get(std::string_view target) { return Request("GET", target); }
  // True once the server closed the connection (EOF seen within the timeout).
  bool WaitClosed(std::chrono::milliseconds timeout);

 private:
  HttpClient(int fd, int port) : fd_(fd), port_(port) {}
  Status Fill(std::chrono::steady_clock::time_point deadline);
  int fd_ = -1;
  int port_ = 0;  // for the Host header
  std::string buffer_;
};

// One-shot GET on a fresh connection.
Result<HttpReply> HttpGet(int port, std::string_view target,
                          std::vector<std::pair<std::string, std::string>> headers = {});

}  // namespace chorus::testing
