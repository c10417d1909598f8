// The closed-loop HTTP/1.1 keep-alive engine under the HTTP load generators (`chorus-bench http`,
// `chorus-bench likes`): one thread's connections, one epoll set, no Asio.
//
// Closed loop: each connection sends its next request only once the previous response has fully
// arrived, so nothing queues inside the generator. What to send is the workload's business
// (HttpWorkload, called back on the loop's thread); the engine owns sockets, connects, partial
// writes, response framing (HttpResponseParser), timeouts and reconnects, and counts socket
// errors. Per request the hot path is one send(), one recv() and a share of one epoll_wait(): the
// syscall budget of wrk.
//
// Failure rules (the same for every workload):
//   - a server closing an idle keep-alive connection before any byte of the next response
//     arrived is not an error: the same request is resent on a new connection ("reconnects"),
//     as an HTTP client does;
//   - any other socket failure or a response slower than `timeout_ns` is counted, the request
//     is reported to the workload as failed (OnFailure), and the connection is reopened after a
//     10 ms back-off; its next request is a new one.
//
// Pipelining (HttpLoopOptions::pipeline = d > 1, HTTP/1.1 pipelining): each connection carries d
// closed-loop *streams*, so up to d requests are in flight on it and their responses come back
// in request order. Connection c carries streams c*d .. c*d+d-1, and the workload is addressed by
// stream (with d = 1 the stream index is the connection index). A connection keeps a FIFO of its
// in-flight (stream, send time) entries. When it is (re)connected it asks each of its streams for
// a request and sends them all with one send(); a recv() is fed to the parser response after
// response, each completed response goes to the FIFO's head stream, and the streams answered in
// that recv() are asked for their next requests, which leave together in one send(). So per
// recv() there is one send() for many requests: the shape of a pipelined Redis client. Latency
// runs from when a request was queued for sending (just before the send() carrying it, unless an
// earlier partial write still waits for the socket) to its response's last byte. With d > 1 the
// failure rules become, per connection:
//   - idle close: the server closed (or a send failed) on a connection that already carried a
//     response, before any byte of the FIFO head's response arrived: every in-flight request is
//     resent on a new connection, counted once in "reconnects". The server may have processed
//     some of them before closing: fine for idempotent requests (GETs, the likes API's explicit
//     like/unlike actions);
//   - `Connection: close` (or a body delimited by the close): the response completes normally and
//     the requests still in flight behind it are resent on a new connection, not failed: a server
//     that announced the close processes no further request on that connection (RFC 9112 §9.6),
//     so resending is safe even for non-idempotent requests. Not an error, not a reconnect, as
//     with d = 1;
//   - bytes with nothing in flight, a malformed response, any other socket error, or a FIFO head
//     slower than `timeout_ns` (from its send time): the error is counted ONCE for the
//     connection, every in-flight stream gets OnFailure, and the connection is reopened after
//     the back-off, when each of its streams is asked for a new request;
//   - a stream whose NextRequest returns false has ended; a connection ends when all its streams
//     have ended and none has a request in flight.
//
// Thread-safety: RunHttpClosedLoop runs on the calling thread and calls the workload only from
// it. Run one per thread with its own workload; merge the results afterwards.
#pragma once

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace chorus::bench {

// What a closed loop sends and what it does with the answers. The workload is addressed by
// stream: streams are numbered 0..connections*pipeline-1 and stream s rides connection
// s / pipeline (with pipeline = 1, the default, the stream index equals the connection index).
// Per-stream state must be sized for connections*pipeline streams. A stream has at most one
// request outstanding: NextRequest is not called for it again before that request's OnResponse or
// OnFailure.
class HttpWorkload {
 public:
  virtual ~HttpWorkload() = default;

  // Writes the complete next request (head and body) for `stream` into *request, replacing its
  // contents (the engine keeps one string per stream and hands the same one back each time).
  // Returning false ends this stream; a connection is closed once all its streams have ended, and
  // the loop ends once every connection has (or its time is up).
  virtual bool NextRequest(size_t stream, int64_t now_ns, std::string* request) = 0;
  // The complete response to the last request of `stream`. `latency_ns` runs from just before the
  // request's first send() (pipelined: from when it was queued for sending) to the response's
  // last byte; `recorded` says the response completed inside the measured window
  // [record_from_ns, end_ns). `body` holds up to body_limit() bytes.
  virtual void OnResponse(size_t stream, int status, std::string_view body, int64_t latency_ns,
                          bool recorded) = 0;
  // The last request of `stream` failed (socket error or timeout, already counted by the engine,
  // once per connection failure however many streams it failed).
  virtual void OnFailure(size_t /*stream*/) {}
  // How many bytes of each response body OnResponse needs (0: none are kept).
  virtual size_t body_limit() const { return 0; }
};

// With pipelining an error is counted once per connection failure, not per in-flight request.
struct HttpLoopCounters {
  uint64_t connect_errors = 0;
  uint64_t read_errors = 0;
  uint64_t write_errors = 0;
  uint64_t timeout_errors = 0;
  uint64_t parse_errors = 0;  // malformed responses, or bytes nobody asked for
  uint64_t reconnects = 0;    // idle keep-alive closes followed (requests resent), not errors
  uint64_t bytes_read = 0;    // inside the measured window

  uint64_t socket_errors() const {
    return connect_errors + read_errors + write_errors + timeout_errors + parse_errors;
  }
  void Merge(const HttpLoopCounters& other);
};

inline constexpr int kMaxHttpPipeline = 1024;  // HttpLoopOptions::pipeline's upper bound

struct HttpLoopOptions {
  sockaddr_in addr{};
  // When not empty, connection i connects to addrs[i % addrs.size()] instead of addr (one load
  // spread over several servers, e.g. the nodes of a fleet without a load balancer in front).
  std::vector<sockaddr_in> addrs;
  int connections = 1;
  // Steady-clock nanoseconds (SteadyNowNanos): responses count from record_from_ns; the loop
  // stops at end_ns even if connections still have requests in flight.
  int64_t record_from_ns = 0;
  int64_t end_ns = 0;
  int64_t timeout_ns = 5'000'000'000;
  // Requests in flight per connection, 1..kMaxHttpPipeline (values outside are clamped): > 1 is
  // HTTP/1.1 pipelining with `pipeline` streams per connection (see the header comment).
  int pipeline = 1;
};

struct HttpLoopResult {
  HttpLoopCounters counters;
  // When the loop stopped: end_ns, or earlier if every connection ended.
  int64_t ended_ns = 0;
};

// Runs the loop on the calling thread (see the header comment).
HttpLoopResult RunHttpClosedLoop(const HttpLoopOptions& options, HttpWorkload& workload);

// The steady clock in nanoseconds, the time base of HttpLoopOptions.
int64_t SteadyNowNanos();

// The IPv4 address of host:port (a literal or a name getaddrinfo resolves).
Result<sockaddr_in> ResolveIpv4(const std::string& host, uint16_t port);

// InvalidArgument when `sockets` more open files (plus 32 spare) exceed RLIMIT_NOFILE.
Status CheckOpenFileLimit(int sockets, std::string_view flag);

}  // namespace chorus::bench
