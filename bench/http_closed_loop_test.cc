// The closed-loop engine driven directly (RunHttpClosedLoop), mostly its pipelined path: a
// workload that checks every response against the request it sent on that stream, and a loopback
// server that echoes request ids and misbehaves on demand. The pipeline = 1 path is also covered
// end to end by http_load_test.cc and likes_load_test.cc.
#include "http_closed_loop.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "loopback_test_server.h"

namespace chorus::bench {
namespace {

// A single-threaded HTTP server on loopback (LoopbackServer) for requests
// "GET /<mode>/<id> HTTP/1.1" with an "X-Conn: <connection>" header; a response's body is
// "id=<id>;". It answers pipelined requests in order. Modes (counted per TCP connection):
//   echo    answers every request;
//   close3  the 3rd response carries "Connection: close", then the server closes, dropping the
//           requests it read but did not answer;
//   drop3   the same without the header: a silent close after the 3rd response;
//   cut3    the 3rd response is cut in the middle of its body, then the server closes;
//   hang    reads requests and never answers.
class EchoServer {
 public:
  const sockaddr_in& addr() const { return server_.addr(); }
  int accepted() const { return server_.accepted(); }
  int requests() const { return requests_; }  // complete requests read
  int answered() const { return answered_; }  // complete responses sent
  int dropped() const { return dropped_; }    // read, then dropped by a close
  // The most complete requests one recv() brought: > 1 only when requests were pipelined.
  int max_batch() const { return max_batch_; }
  // Connections that carried requests of more than one X-Conn (streams on the wrong connection).
  int mixed_connections() const { return mixed_; }

 private:
  struct Conn {
    int fd = -1;
    std::string in;
    int served = 0;
    bool seen = false;   // a request arrived
    std::string x_conn;  // of its first request
    bool mixed = false;
  };

  bool Send(const Conn& c, const std::string& bytes) {
    return ::send(c.fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
  }

  // Reads what is there and answers complete requests; false when the connection is done.
  bool Serve(Conn& c) {
    char buf[65536];
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    c.in.append(buf, static_cast<size_t>(n));
    std::vector<std::string> batch;
    size_t end;
    while ((end = c.in.find("\r\n\r\n")) != std::string::npos) {
      batch.push_back(c.in.substr(0, end + 4));
      c.in.erase(0, end + 4);
    }
    requests_ += static_cast<int>(batch.size());
    max_batch_ = std::max(max_batch_.load(), static_cast<int>(batch.size()));
    for (size_t i = 0; i < batch.size(); ++i) {
      const std::string& request = batch[i];
      const size_t x = request.find("\r\nX-Conn: ") + 10;
      const std::string x_conn = request.substr(x, request.find('\r', x) - x);
      if (!c.seen) {
        c.seen = true;
        c.x_conn = x_conn;
      } else if (x_conn != c.x_conn && !c.mixed) {
        c.mixed = true;
        ++mixed_;
      }
      // "GET /mode/id HTTP/1.1"
      const size_t mode_end = request.find('/', 5);
      const std::string mode = request.substr(5, mode_end - 5);
      const std::string id = request.substr(mode_end + 1, request.find(' ', mode_end) - mode_end - 1);
      if (mode == "hang") continue;
      const std::string body = "id=" + id + ";";
      const bool third = ++c.served % 3 == 0;
      const bool closing = third && (mode == "close3" || mode == "drop3" || mode == "cut3");
      std::string response = "HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
      if (closing && mode == "close3") response += "Connection: close\r\n";
      response += "\r\n";
      response += closing && mode == "cut3" ? body.substr(0, body.size() / 2) : body;
      if (!Send(c, response)) return false;
      if (closing) {
        dropped_ += static_cast<int>(batch.size() - i - 1);
        return false;
      }
      ++answered_;
    }
    return true;
  }

  std::atomic<int> requests_{0};
  std::atomic<int> answered_{0};
  std::atomic<int> dropped_{0};
  std::atomic<int> max_batch_{0};
  std::atomic<int> mixed_{0};
  LoopbackServer<Conn> server_{[this](Conn& c) { return Serve(c); }};  // last: see its header
};

// Sends "GET /<mode>/<id>" with a fresh id on every stream and checks that each response (body
// "id=<id>;") answers the request that stream has outstanding. Optionally each stream ends after
// `quota` requests.
class EchoWorkload final : public HttpWorkload {
 public:
  EchoWorkload(int connections, int depth, std::string mode, int quota = -1)
      : depth_(static_cast<size_t>(depth)),
        mode_(std::move(mode)),
        quota_(quota),
        streams_(static_cast<size_t>(connections) * depth_),
        outstanding_per_conn_(static_cast<size_t>(connections)) {}

  bool NextRequest(size_t stream, int64_t /*now_ns*/, std::string* request) override {
    if (stream >= streams_.size()) {
      ++violations;
      return false;
    }
    Stream& s = streams_[stream];
    if (s.outstanding != 0) ++violations;  // asked again before its answer
    if (quota_ >= 0 && s.asked >= quota_) return false;
    ++s.asked;
    s.outstanding = next_id_++;
    const size_t conn = stream / depth_;
    max_outstanding_per_conn = std::max(max_outstanding_per_conn, ++outstanding_per_conn_[conn]);
    *request = "GET /" + mode_ + "/" + std::to_string(s.outstanding) +
               " HTTP/1.1\r\nHost: test\r\nX-Conn: " + std::to_string(conn) + "\r\n\r\n";
    return true;
  }

  void OnResponse(size_t stream, int status, std::string_view body, int64_t latency_ns,
                  bool /*recorded*/) override {
    Stream* s = Answer(stream);
    if (s == nullptr) return;
    if (status != 200 || body != "id=" + std::to_string(s->outstanding) + ";") ++mismatches;
    if (latency_ns < 0) ++violations;
    ++s->responses;
    ++responses;
    s->outstanding = 0;
  }

  void OnFailure(size_t stream) override {
    Stream* s = Answer(stream);
    if (s == nullptr) return;
    ++failures;
    s->outstanding = 0;
  }

  size_t body_limit() const override { return 64; }

  int responses_of(size_t stream) const { return streams_[stream].responses; }
  size_t streams() const { return streams_.size(); }

  int responses = 0;
  int failures = 0;
  int mismatches = 0;  // a response that is not the answer to its stream's request
  int violations = 0;  // the engine broke the HttpWorkload contract
  int max_outstanding_per_conn = 0;

 private:
  struct Stream {
    uint64_t outstanding = 0;  // id of the request awaiting its answer, 0: none
    int asked = 0;
    int responses = 0;
  };

  Stream* Answer(size_t stream) {
    if (stream >= streams_.size() || streams_[stream].outstanding == 0) {
      ++violations;  // nothing was asked on this stream
      return nullptr;
    }
    --outstanding_per_conn_[stream / depth_];
    return &streams_[stream];
  }

  const size_t depth_;
  const std::string mode_;
  const int quota_;
  std::vector<Stream> streams_;
  std::vector<int> outstanding_per_conn_;
  uint64_t next_id_ = 1;
};

HttpLoopResult RunLoop(const EchoServer& server, EchoWorkload& workload, int connections, int depth,
                       std::chrono::milliseconds duration,
                       std::chrono::nanoseconds timeout = std::chrono::seconds(5)) {
  HttpLoopOptions options;
  options.addr = server.addr();
  options.connections = connections;
  options.pipeline = depth;
  options.record_from_ns = SteadyNowNanos();
  options.end_ns = options.record_from_ns + std::chrono::nanoseconds(duration).count();
  options.timeout_ns = timeout.count();
  return RunHttpClosedLoop(options, workload);
}

TEST(HttpClosedLoopTest, PipelinedStreamsGetTheirOwnResponsesInOrder) {
  EchoServer server;
  EchoWorkload w(/*connections=*/2, /*depth=*/4, "echo");
  const HttpLoopResult r = RunLoop(server, w, 2, 4, std::chrono::milliseconds(300));
  EXPECT_EQ(r.counters.socket_errors(), 0u);
  EXPECT_EQ(r.counters.reconnects, 0u);
  EXPECT_GT(r.counters.bytes_read, 0u);
  EXPECT_EQ(w.violations, 0);
  EXPECT_EQ(w.mismatches, 0);
  EXPECT_EQ(w.failures, 0);
  for (size_t s = 0; s < w.streams(); ++s) EXPECT_GT(w.responses_of(s), 0) << "stream " << s;
  EXPECT_EQ(w.max_outstanding_per_conn, 4);
  EXPECT_EQ(server.accepted(), 2);
  EXPECT_EQ(server.mixed_connections(), 0) << "a stream's requests left on another connection";
  // The streams' requests leave together: the server reads several in one recv(), never more
  // than the depth (a connection has at most 4 unanswered requests).
  EXPECT_GE(server.max_batch(), 2);
  EXPECT_LE(server.max_batch(), 4);
  EXPECT_GE(server.answered(), w.responses);
}

TEST(HttpClosedLoopTest, OneInFlightPerConnectionWithoutPipelining) {
  EchoServer server;
  EchoWorkload w(/*connections=*/3, /*depth=*/1, "echo");
  const HttpLoopResult r = RunLoop(server, w, 3, 1, std::chrono::milliseconds(200));
  EXPECT_EQ(r.counters.socket_errors(), 0u);
  EXPECT_EQ(w.violations, 0);
  EXPECT_EQ(w.mismatches, 0);
  for (size_t s = 0; s < w.streams(); ++s) EXPECT_GT(w.responses_of(s), 0) << "stream " << s;
  EXPECT_EQ(server.max_batch(), 1);
  EXPECT_EQ(server.mixed_connections(), 0);
}

TEST(HttpClosedLoopTest, StreamsEndOneByOneAndTheLoopEndsWhenAllHave) {
  EchoServer server;
  // Each stream ends after 5 requests; the loop must end on its own, long before its end time.
  EchoWorkload w(/*connections=*/2, /*depth=*/4, "echo", /*quota=*/5);
  const int64_t start = SteadyNowNanos();
  const HttpLoopResult r = RunLoop(server, w, 2, 4, std::chrono::seconds(20));
  EXPECT_LT(r.ended_ns, start + std::chrono::nanoseconds(std::chrono::seconds(20)).count())
      << "the loop ran to its end time: a connection did not end";
  EXPECT_EQ(r.counters.socket_errors(), 0u);
  EXPECT_EQ(w.violations, 0);
  EXPECT_EQ(w.mismatches, 0);
  for (size_t s = 0; s < w.streams(); ++s) EXPECT_EQ(w.responses_of(s), 5) << "stream " << s;
  EXPECT_EQ(server.requests(), 40);
}

// A response with "Connection: close": the requests still in flight behind it were never
// processed and are resent on a new connection, not failed and not counted as errors.
TEST(HttpClosedLoopTest, ConnectionCloseResendsWhatIsStillInFlight) {
  EchoServer server;
  EchoWorkload w(/*connections=*/2, /*depth=*/4, "close3", /*quota=*/6);
  const HttpLoopResult r = RunLoop(server, w, 2, 4, std::chrono::seconds(20));
  EXPECT_EQ(r.counters.socket_errors(), 0u);
  EXPECT_EQ(w.violations, 0);
  EXPECT_EQ(w.mismatches, 0);
  EXPECT_EQ(w.failures, 0);
  for (size_t s = 0; s < w.streams(); ++s) {
    EXPECT_EQ(w.responses_of(s), 6) << "stream " << s << ": every request answered in the end";
  }
  EXPECT_GT(server.dropped(), 0) << "the server never dropped a pipelined request: nothing tested";
  EXPECT_GT(server.accepted(), 2);
  EXPECT_EQ(server.mixed_connections(), 0);
}

// A silent close after a complete response, before any byte of the next: an idle keep-alive
// close. Everything in flight is resent on a new connection, once counted as a reconnect.
TEST(HttpClosedLoopTest, IdleCloseResendsEverythingInFlight) {
  EchoServer server;
  EchoWorkload w(/*connections=*/2, /*depth=*/4, "drop3", /*quota=*/6);
  const HttpLoopResult r = RunLoop(server, w, 2, 4, std::chrono::seconds(20));
  EXPECT_EQ(r.counters.socket_errors(), 0u);
  EXPECT_GT(r.counters.reconnects, 0u);
  EXPECT_LE(r.counters.reconnects, static_cast<uint64_t>(server.accepted()));
  EXPECT_EQ(w.violations, 0);
  EXPECT_EQ(w.mismatches, 0);
  EXPECT_EQ(w.failures, 0);
  for (size_t s = 0; s < w.streams(); ++s) EXPECT_EQ(w.responses_of(s), 6) << "stream " << s;
}

// A close in the middle of a response is an error: counted once per connection, and every stream
// with a request in flight on it is told (OnFailure) and later asked for a new request.
TEST(HttpClosedLoopTest, CloseMidResponseFailsEveryInFlightStreamAndCountsOnce) {
  EchoServer server;
  EchoWorkload w(/*connections=*/2, /*depth=*/4, "cut3");
  const HttpLoopResult r = RunLoop(server, w, 2, 4, std::chrono::milliseconds(400));
  EXPECT_GT(r.counters.read_errors, 0u);
  EXPECT_EQ(r.counters.parse_errors, 0u);
  EXPECT_EQ(r.counters.connect_errors, 0u);
  // Every failed connection had all 4 of its streams in flight.
  EXPECT_EQ(static_cast<uint64_t>(w.failures), 4 * r.counters.socket_errors());
  EXPECT_EQ(w.violations, 0);
  EXPECT_EQ(w.mismatches, 0);
  EXPECT_GT(w.responses, 0);
  EXPECT_EQ(server.mixed_connections(), 0);
}

// No answer at all: the FIFO head times out; the connection's streams fail together.
TEST(HttpClosedLoopTest, TimeoutFailsEveryInFlightStreamAndCountsOnce) {
  EchoServer server;
  EchoWorkload w(/*connections=*/2, /*depth=*/4, "hang");
  const HttpLoopResult r =
      RunLoop(server, w, 2, 4, std::chrono::milliseconds(400), std::chrono::milliseconds(50));
  EXPECT_GT(r.counters.timeout_errors, 0u);
  EXPECT_EQ(r.counters.socket_errors(), r.counters.timeout_errors);
  EXPECT_EQ(static_cast<uint64_t>(w.failures), 4 * r.counters.timeout_errors);
  EXPECT_EQ(w.responses, 0);
  EXPECT_EQ(w.violations, 0);
}

}  // namespace
}  // namespace chorus::bench
