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

// What a closed loop sends and what it does with the answers. Connections are numbered
// 0..connections-1.
class HttpWorkload {
 public:
  virtual ~HttpWorkload() = default;

  // Writes the complete next request (head and body) for `conn` into *request, replacing its
  // contents. Returning false ends this connection: it is closed, and the loop ends once every
  // connection has ended (or its time is up).
  virtual bool NextRequest(size_t conn, int64_t now_ns, std::string* request) = 0;
  // The complete response to the last request of `conn`. `latency_ns` runs from just before the
  // request's first send() to the response's last byte; `recorded` says the response completed
  // inside the measured window [record_from_ns, end_ns). `body` holds up to body_limit() bytes.
  virtual void OnResponse(size_t conn, int status, std::string_view body, int64_t latency_ns,
                          bool recorded) = 0;
  // The last request of `conn` failed (socket error or timeout, already counted by the engine).
  virtual void OnFailure(size_t /*conn*/) {}
  // How many bytes of each response body OnResponse needs (0: none are kept).
  virtual size_t body_limit() const { return 0; }
};

struct HttpLoopCounters {
  uint64_t connect_errors = 0;
  uint64_t read_errors = 0;
  uint64_t write_errors = 0;
  uint64_t timeout_errors = 0;
  uint64_t parse_errors = 0;  // malformed responses, or bytes nobody asked for
  uint64_t reconnects = 0;    // idle keep-alive closes followed, not errors
  uint64_t bytes_read = 0;    // inside the measured window

  uint64_t socket_errors() const {
    return connect_errors + read_errors + write_errors + timeout_errors + parse_errors;
  }
  void Merge(const HttpLoopCounters& other);
};

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
