// HTTP/1.1 keep-alive GET load generator (`chorus-bench http`).
//
// Closed loop (the engine is http_closed_loop.h, shared with `chorus-bench likes`): each
// connection sends its next request only once the previous response has fully arrived, so
// throughput = connections / latency and nothing queues inside the generator. Each
// worker thread owns its connections, one epoll instance and one LatencyHistogram; nothing is
// shared between threads until the run ends and the histograms are merged. Per request the hot
// path is one send(), one recv() and a share of one epoll_wait(): the same syscall budget as wrk,
// so on a shared machine the generator costs about what wrk costs.
//
// Latency is measured from just before send() to the arrival of the response's last byte, with
// the steady clock. Being closed-loop, it does not include time a request would have waited had
// the load been open (coordinated omission); use it to compare servers under equal load, not as a
// user-facing latency SLO.
//
// Counted separately: non-2xx responses (complete responses with status outside 200..299) and
// socket errors (connect, read, write, timeout, parse). When a server closes an idle keep-alive
// connection before any byte of the next response arrived, the request is retried on a new
// connection and counted in "reconnects", not as an error (an HTTP client does the same for an
// idempotent GET).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "base/status.h"
#include "latency_histogram.h"
#include "report.h"

namespace chorus::bench {

struct HttpUrl {
  std::string host;  // as written: "127.0.0.1", "localhost"
  uint16_t port = 80;
  std::string target = "/";  // path + query
};

// Accepts "http://host[:port][/path[?query]]". No https, no userinfo, no IPv6 literals.
Result<HttpUrl> ParseHttpUrl(std::string_view url);

// Incremental parser of one HTTP/1.x response at a time (status line, headers, body framed by
// Content-Length, chunked transfer coding, or the end of the connection). Feed() it bytes as they
// arrive; after kComplete, call Reset() before the next response. Never asserts on input: bad
// bytes give kError. Not thread-safe; one per connection.
class HttpResponseParser {
 public:
  enum class State { kNeedMore, kComplete, kError };
  static constexpr size_t kMaxHeaderBytes = 64 * 1024;

  HttpResponseParser();

  // Consumes a prefix of [data, data+len): on kComplete, *consumed says where the response ended
  // (bytes after it belong to the next response); on kNeedMore all bytes were consumed.
  State Feed(const char* data, size_t len, size_t* consumed);
  // The peer closed the connection: completes a body delimited by connection close.
  State OnEof();
  void Reset();

  // True once any byte of the current response has been fed.
  bool started() const { return started_; }
  int status() const { return status_; }
  // The response asked to close the connection (or was delimited by close, or was HTTP/1.0
  // without keep-alive).
  bool close_after() const { return close_after_; }
  uint64_t body_bytes() const { return body_bytes_; }

  // Keep up to `limit` bytes of each response body (decoded from chunks) for body(); 0, the
  // default, keeps none. Survives Reset().
  void set_body_limit(size_t limit) { body_limit_ = limit; }
  // The kept prefix of the current response's body.
  std::string_view body() const { return body_; }

 private:
  enum class Phase {
    kHead,
    kBody,
    kChunkSize,
    kChunkData,
    kChunkDataEnd,
    kTrailer,
    kUntilClose,
    kDone
  };
  State ParseHead();
  State FeedChunked(const char* data, size_t len, size_t* consumed);
  void KeepBody(const char* data, size_t len) {
    if (body_.size() < body_limit_) body_.append(data, std::min(len, body_limit_ - body_.size()));
  }

  Phase phase_ = Phase::kHead;
  bool started_ = false;
  std::string head_;
  int status_ = 0;
  bool close_after_ = false;
  uint64_t remaining_ = 0;  // body or chunk bytes still expected
  uint64_t body_bytes_ = 0;
  uint64_t chunk_size_ = 0;  // size line being parsed
  bool chunk_size_digits_ = false;
  bool chunk_size_ext_ = false;  // past the digits, skipping extensions to '\n'
  size_t trailer_line_ = 0;      // bytes on the current trailer line, excluding '\r'
  size_t body_limit_ = 0;
  std::string body_;
};

struct HttpLoadOptions {
  std::string url;
  int connections = 64;
  int threads = 2;
  std::chrono::nanoseconds duration = std::chrono::seconds(10);
  // Requests completing in the first `warmup` are not counted.
  std::chrono::nanoseconds warmup = std::chrono::nanoseconds::zero();
  // A request without a complete response after this long is a timeout error.
  std::chrono::nanoseconds timeout = std::chrono::seconds(5);
};

struct HttpLoadResult {
  uint64_t requests = 0;  // complete responses, any status
  uint64_t non_2xx = 0;
  uint64_t connect_errors = 0;
  uint64_t read_errors = 0;
  uint64_t write_errors = 0;
  uint64_t timeout_errors = 0;
  uint64_t parse_errors = 0;
  uint64_t reconnects = 0;
  uint64_t bytes_read = 0;
  double elapsed_s = 0;
  LatencyHistogram latency;

  uint64_t socket_errors() const {
    return connect_errors + read_errors + write_errors + timeout_errors + parse_errors;
  }
  double requests_per_second() const { return elapsed_s > 0 ? requests / elapsed_s : 0; }
  void Merge(const HttpLoadResult& other);
  Measurement ToMeasurement(std::string system) const;
};

// Runs the load for options.duration (plus warmup) and returns the merged result. Fails only on
// bad options or an unresolvable host; connection failures during the run are counted, not fatal.
Result<HttpLoadResult> RunHttpLoad(const HttpLoadOptions& options);

}  // namespace chorus::bench
