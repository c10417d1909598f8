#include "http_closed_loop.h"

#include <netdb.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <vector>

#include "http_load.h"

namespace chorus::bench {

void HttpLoopCounters::Merge(const HttpLoopCounters& other) {
  connect_errors += other.connect_errors;
  read_errors += other.read_errors;
  write_errors += other.write_errors;
  timeout_errors += other.timeout_errors;
  parse_errors += other.parse_errors;
  reconnects += other.reconnects;
  bytes_read += other.bytes_read;
}

int64_t SteadyNowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Result<sockaddr_in> ResolveIpv4(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port_text = std::to_string(port);
  if (const int rc = getaddrinfo(host.c_str(), port_text.c_str(), &hints, &found); rc != 0) {
    return InvalidArgument("cannot resolve " + host + ": " + gai_strerror(rc));
  }
  sockaddr_in addr{};
  std::memcpy(&addr, found->ai_addr, sizeof addr);
  freeaddrinfo(found);
  return addr;
}

Status CheckOpenFileLimit(int sockets, std::string_view flag) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
      static_cast<rlim_t>(sockets) + 32 > limit.rlim_cur) {
    return InvalidArgument(std::string(flag) + " " + std::to_string(sockets) +
                           " exceeds the open-file limit " + std::to_string(limit.rlim_cur) +
                           " (minus 32 spare)");
  }
  return Status::Ok();
}

namespace {

constexpr int64_t kBackoffNs = 10'000'000;  // before reconnecting after an error

// Helpers of both loops below.

// Opens a non-blocking TCP connection to `addr` (connect() in progress) registered with `epfd` for
// EPOLLIN | EPOLLOUT with data.ptr = tag. Returns the socket, or -1 with nothing left open.
int StartConnect(const sockaddr_in& addr, int epfd, void* tag) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  if (rc != 0 && errno != EINPROGRESS) {
    ::close(fd);
    return -1;
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = tag;
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// Whether a connect() that was in progress succeeded (called once the socket is writable).
bool ConnectSucceeded(int fd) {
  int err = 0;
  socklen_t len = sizeof err;
  return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
}

enum class SendResult { kAll, kBlocked, kFailed };

// Sends data[*written, size) until all of it is sent, the socket is full or send() fails.
SendResult SendPending(int fd, const std::string& data, size_t* written) {
  while (*written < data.size()) {
    const ssize_t n = ::send(fd, data.data() + *written, data.size() - *written, MSG_NOSIGNAL);
    if (n > 0) {
      *written += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return SendResult::kBlocked;
    return SendResult::kFailed;
  }
  return SendResult::kAll;
}

void SetEpollInterest(int epfd, int fd, void* tag, bool write) {
  epoll_event ev{};
  ev.events = EPOLLIN | (write ? EPOLLOUT : 0u);
  ev.data.ptr = tag;
  epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
}

// The epoll skeleton of both loops below (CRTP): connects every connection, then hands readiness
// to Derived until end_ns or until every connection has finished. Derived provides Connect(c, now),
// Fail(c, now), OnConnected(c, now) (the connect completed), OnWritable(c, now) (EPOLLOUT while
// want_write), OnReadable(c) and CheckTimers(now); ConnT has index, fd, connecting, want_write
// and retry_at.
template <typename Derived, typename ConnT>
class EpollLoop {
 public:
  HttpLoopResult Run();

 protected:
  explicit EpollLoop(const HttpLoopOptions& options)
      : o_(options), conns_(static_cast<size_t>(std::max(options.connections, 0))) {}
  ~EpollLoop() {
    for (ConnT& c : conns_) CloseFd(c);
    if (epfd_ >= 0) ::close(epfd_);
  }

  void CloseFd(ConnT& c) {
    if (c.fd >= 0) {
      ::close(c.fd);  // also removes it from the epoll set
      c.fd = -1;
    }
    c.connecting = false;
    c.want_write = false;
  }
  // A reused connection closed by the server: reconnect at once (Derived::Connect resends).
  void Retry(ConnT& c, int64_t now) {
    ++counters_.reconnects;
    CloseFd(c);
    self().Connect(c, now);
  }
  // Opens c's socket towards its address (connect() in progress); on failure counts the error
  // and schedules a retry after the back-off.
  void StartConnecting(ConnT& c, int64_t now) {
    const sockaddr_in& addr = o_.addrs.empty() ? o_.addr : o_.addrs[c.index % o_.addrs.size()];
    c.fd = StartConnect(addr, epfd_, &c);
    if (c.fd < 0) {
      ++counters_.connect_errors;
      c.retry_at = now + kBackoffNs;  // back off: do not spin on a refused port
      return;
    }
    c.connecting = true;
  }
  void SetInterest(ConnT& c, bool write) {
    SetEpollInterest(epfd_, c.fd, &c, write);
    c.want_write = write;
  }

  const HttpLoopOptions o_;
  std::vector<ConnT> conns_;  // never resized: epoll events point into it
  int epfd_ = -1;
  size_t finished_ = 0;
  HttpLoopCounters counters_;

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

template <typename Derived, typename ConnT>
HttpLoopResult EpollLoop<Derived, ConnT>::Run() {
  HttpLoopResult result;
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    counters_.connect_errors += conns_.size();
    result.counters = counters_;
    result.ended_ns = SteadyNowNanos();
    return result;
  }
  const int64_t start = SteadyNowNanos();
  for (ConnT& c : conns_) self().Connect(c, start);

  std::vector<epoll_event> events(1024);
  int64_t next_check = start;
  int64_t now = start;
  while (finished_ < conns_.size()) {
    now = SteadyNowNanos();
    if (now >= o_.end_ns) break;
    if (now >= next_check) {
      self().CheckTimers(now);
      next_check = now + 10'000'000;  // 10 ms
    }
    const int wait_ms = static_cast<int>(std::min<int64_t>(10, (o_.end_ns - now) / 1'000'000 + 1));
    const int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), wait_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n; ++i) {
      ConnT& c = *static_cast<ConnT*>(events[i].data.ptr);
      const uint32_t ev = events[i].events;
      if (c.fd < 0) continue;
      if (c.connecting) {
        if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) continue;
        if (!ConnectSucceeded(c.fd)) {
          ++counters_.connect_errors;
          self().Fail(c, SteadyNowNanos());
          continue;
        }
        c.connecting = false;
        SetInterest(c, false);
        self().OnConnected(c, SteadyNowNanos());
        continue;
      }
      if ((ev & EPOLLOUT) && c.want_write) self().OnWritable(c, SteadyNowNanos());
      // Not if the write replaced the socket: these events were the old one's.
      if (c.fd >= 0 && !c.connecting && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) self().OnReadable(c);
    }
  }
  result.counters = counters_;
  result.ended_ns = std::min(std::max(now, SteadyNowNanos()), o_.end_ns);
  return result;
}

// One thread's connections, one request in flight on each (pipeline = 1). Everything here is
// touched by that thread only.
struct ClosedLoopConn {
  size_t index = 0;
  int fd = -1;
  bool connecting = false;
  bool want_write = false;   // EPOLLOUT registered for a partial request write
  bool in_flight = false;    // a request is outstanding (or waits for the connection)
  bool reused = false;       // this fd already carried a complete response
  bool has_request = false;  // `request` was handed out and not yet answered
  bool done = false;         // the workload has nothing more for this connection
  size_t written = 0;
  int64_t start = 0;     // send time of the request, or connect time while connecting
  int64_t retry_at = 0;  // when fd < 0: reconnect at this time
  std::string request;
  HttpResponseParser parser;
};

class Loop final : public EpollLoop<Loop, ClosedLoopConn> {
 public:
  Loop(const HttpLoopOptions& options, HttpWorkload& workload)
      : EpollLoop(options), workload_(workload), body_limit_(workload.body_limit()), buf_(size_t{64} * 1024) {
    for (size_t i = 0; i < conns_.size(); ++i) {
      conns_[i].index = i;
      conns_[i].parser.set_body_limit(body_limit_);
    }
  }

 private:
  friend class EpollLoop<Loop, ClosedLoopConn>;
  using Conn = ClosedLoopConn;

  void Connect(Conn& c, int64_t now);
  void Fail(Conn& c, int64_t now);  // an error: drop the request, reconnect after a back-off
  void Finish(Conn& c);
  void OnConnected(Conn& c, int64_t now) { SendRequest(c, now); }
  void OnWritable(Conn& c, int64_t now) { ContinueWrite(c, now); }
  void SendRequest(Conn& c, int64_t now);
  void ContinueWrite(Conn& c, int64_t now);
  void OnReadable(Conn& c);
  void OnComplete(Conn& c);
  void CheckTimers(int64_t now);

  HttpWorkload& workload_;
  const size_t body_limit_;
  std::vector<char> buf_;
};

void Loop::Connect(Conn& c, int64_t now) {
  c.connecting = false;
  c.want_write = false;
  c.reused = false;
  c.in_flight = true;  // the request waits for the connection
  c.start = now;
  c.parser.Reset();
  StartConnecting(c, now);
}

void Loop::Fail(Conn& c, int64_t now) {
  CloseFd(c);
  if (c.has_request) {
    c.has_request = false;
    workload_.OnFailure(c.index);
  }
  c.retry_at = now + kBackoffNs;
}

void Loop::Finish(Conn& c) {
  CloseFd(c);
  c.in_flight = false;
  c.done = true;
  ++finished_;
}

void Loop::SendRequest(Conn& c, int64_t now) {
  if (!c.has_request) {
    if (!workload_.NextRequest(c.index, now, &c.request)) {
      Finish(c);
      return;
    }
    c.has_request = true;
  }
  c.parser.Reset();
  c.written = 0;
  c.start = now;
  c.in_flight = true;
  ContinueWrite(c, now);
}

void Loop::ContinueWrite(Conn& c, int64_t now) {
  switch (SendPending(c.fd, c.request, &c.written)) {
    case SendResult::kAll:
      break;
    case SendResult::kBlocked:
      if (!c.want_write) SetInterest(c, true);
      return;
    case SendResult::kFailed:
      if (c.reused && c.written == 0) {
        Retry(c, now);
      } else {
        ++counters_.write_errors;
        Fail(c, now);
      }
      return;
  }
  if (c.want_write) SetInterest(c, false);
}

void Loop::OnReadable(Conn& c) {
  const ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    if (c.in_flight && c.reused && !c.parser.started()) {
      Retry(c, SteadyNowNanos());
    } else {
      ++counters_.read_errors;
      Fail(c, SteadyNowNanos());
    }
    return;
  }
  if (n == 0) {
    if (c.in_flight && c.parser.started()) {
      if (c.parser.OnEof() == HttpResponseParser::State::kComplete) {
        OnComplete(c);  // the body was delimited by the close: open the next connection
        CloseFd(c);
        Connect(c, SteadyNowNanos());
      } else {
        ++counters_.read_errors;
        Fail(c, SteadyNowNanos());
      }
    } else if (c.in_flight && c.reused) {
      Retry(c, SteadyNowNanos());
    } else {
      ++counters_.read_errors;
      Fail(c, SteadyNowNanos());
    }
    return;
  }
  if (SteadyNowNanos() >= o_.record_from_ns) counters_.bytes_read += static_cast<uint64_t>(n);
  if (!c.in_flight) {  // bytes nobody asked for
    ++counters_.parse_errors;
    Fail(c, SteadyNowNanos());
    return;
  }
  size_t consumed = 0;
  const auto state = c.parser.Feed(buf_.data(), static_cast<size_t>(n), &consumed);
  if (state == HttpResponseParser::State::kNeedMore) return;
  if (state == HttpResponseParser::State::kError || consumed != static_cast<size_t>(n)) {
    ++counters_.parse_errors;  // malformed, or more bytes than the one response we asked for
    Fail(c, SteadyNowNanos());
    return;
  }
  const bool close = c.parser.close_after();
  OnComplete(c);
  const int64_t now = SteadyNowNanos();
  if (close) {
    CloseFd(c);
    Connect(c, now);
  } else {
    SendRequest(c, now);
  }
}

void Loop::OnComplete(Conn& c) {
  const int64_t now = SteadyNowNanos();
  c.in_flight = false;
  c.reused = true;
  c.has_request = false;
  const bool recorded = now >= o_.record_from_ns && now < o_.end_ns;
  workload_.OnResponse(c.index, c.parser.status(), c.parser.body(), now - c.start, recorded);
}

void Loop::CheckTimers(int64_t now) {
  for (Conn& c : conns_) {
    if (c.done) continue;
    if (c.fd < 0) {
      if (now >= c.retry_at) Connect(c, now);
    } else if (c.in_flight && now - c.start > o_.timeout_ns) {
      ++counters_.timeout_errors;
      Fail(c, now);
    }
  }
}

// One thread's pipelined connections (pipeline = d > 1; the design is in the header comment).
// The same skeleton as Loop, but a connection carries d streams and a FIFO of their in-flight
// requests, and requests leave in batches: all of a connection's streams when it connects, then
// after each recv() the streams it answered. Everything here is touched by that thread only.
struct PipelinedConn {
  struct InFlight {
    size_t stream = 0;
    int64_t sent = 0;  // when it was queued for sending
  };
  size_t index = 0;
  int fd = -1;
  bool connecting = false;
  bool want_write = false;  // EPOLLOUT registered for a partial write of `out`
  bool reused = false;      // this fd already carried a complete response
  bool done = false;        // every stream ended and nothing is in flight
  int64_t connect_start = 0;
  int64_t retry_at = 0;  // when fd < 0: reconnect at this time
  std::string out;       // queued requests; out[written, size) are not sent yet
  size_t written = 0;
  // Oldest first; the parser works on the head's response. Between events, once connected: a
  // stream of this connection is in here iff it has a request (so iff it has not ended).
  std::deque<InFlight> in_flight;
  HttpResponseParser parser;
};

class PipelinedLoop final : public EpollLoop<PipelinedLoop, PipelinedConn> {
 public:
  PipelinedLoop(const HttpLoopOptions& options, HttpWorkload& workload, size_t depth)
      : EpollLoop(options),
        workload_(workload),
        depth_(depth),
        streams_(conns_.size() * depth),
        buf_(size_t{64} * 1024) {
    const size_t body_limit = workload.body_limit();
    for (size_t i = 0; i < conns_.size(); ++i) {
      conns_[i].index = i;
      conns_[i].parser.set_body_limit(body_limit);
    }
    answered_.reserve(depth);
  }

 private:
  friend class EpollLoop<PipelinedLoop, PipelinedConn>;
  using Conn = PipelinedConn;
  using InFlight = PipelinedConn::InFlight;
  struct Stream {
    std::string request;       // the workload's current request, kept to be resent
    bool has_request = false;  // handed out, not yet answered: in flight or waiting to be resent
    bool ended = false;        // NextRequest said there is nothing more
  };

  void Connect(Conn& c, int64_t now);  // forgets the FIFO; streams with a request resend it
  void Fail(Conn& c, int64_t now);     // an error: fail every in-flight stream, back off, reconnect
  void Finish(Conn& c);
  void Enqueue(Conn& c, size_t stream, int64_t now);  // the stream's request, if it has one
  void OnConnected(Conn& c, int64_t now);
  void OnWritable(Conn& c, int64_t now) { Flush(c, now); }
  void Flush(Conn& c, int64_t now);
  void OnReadable(Conn& c);
  void CompleteHead(Conn& c, int64_t now);
  void CheckTimers(int64_t now);

  HttpWorkload& workload_;
  const size_t depth_;
  std::vector<Stream> streams_;  // connection c's are [c * depth_, (c + 1) * depth_)
  std::vector<char> buf_;
  std::vector<size_t> answered_;  // streams answered by the recv() being processed
};

void PipelinedLoop::Connect(Conn& c, int64_t now) {
  c.connecting = false;
  c.want_write = false;
  c.reused = false;
  c.connect_start = now;
  c.out.clear();
  c.written = 0;
  c.in_flight.clear();
  c.parser.Reset();
  StartConnecting(c, now);
}

void PipelinedLoop::Fail(Conn& c, int64_t now) {
  CloseFd(c);
  c.in_flight.clear();
  c.out.clear();
  c.written = 0;
  // In flight, or waiting to be resent after a Retry or a close: either way lost with this
  // connection. The caller counted the error once.
  for (size_t s = c.index * depth_; s < (c.index + 1) * depth_; ++s) {
    if (streams_[s].has_request) {
      streams_[s].has_request = false;
      workload_.OnFailure(s);
    }
  }
  c.retry_at = now + kBackoffNs;
}

void PipelinedLoop::Finish(Conn& c) {
  CloseFd(c);
  c.in_flight.clear();
  c.done = true;
  ++finished_;
}

void PipelinedLoop::Enqueue(Conn& c, size_t stream, int64_t now) {
  Stream& s = streams_[stream];
  if (s.ended) return;
  if (!s.has_request) {
    if (!workload_.NextRequest(stream, now, &s.request)) {
      s.ended = true;
      return;
    }
    s.has_request = true;
  }
  c.out += s.request;
  c.in_flight.push_back(InFlight{stream, now});
}

// Every stream of the connection: its unanswered request again, or its next one; one send().
void PipelinedLoop::OnConnected(Conn& c, int64_t now) {
  for (size_t s = c.index * depth_; s < (c.index + 1) * depth_; ++s) Enqueue(c, s, now);
  if (c.in_flight.empty()) {
    Finish(c);
    return;
  }
  Flush(c, now);
}

void PipelinedLoop::Flush(Conn& c, int64_t now) {
  switch (SendPending(c.fd, c.out, &c.written)) {
    case SendResult::kAll:
      break;
    case SendResult::kBlocked:
      if (!c.want_write) SetInterest(c, true);
      return;
    case SendResult::kFailed:
      if (c.reused && !c.parser.started()) {
        Retry(c, now);  // most likely an idle close we have not read yet
      } else {
        ++counters_.write_errors;
        Fail(c, now);
      }
      return;
  }
  c.out.clear();
  c.written = 0;
  if (c.want_write) SetInterest(c, false);
}

void PipelinedLoop::OnReadable(Conn& c) {
  const ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  const int64_t now = SteadyNowNanos();  // every response in this recv() arrived now
  answered_.clear();
  const bool idle_close = !c.in_flight.empty() && c.reused && !c.parser.started();
  if (n < 0) {
    if (idle_close) {
      Retry(c, now);
    } else {
      ++counters_.read_errors;
      Fail(c, now);
    }
    return;
  }
  if (n == 0) {
    if (!c.in_flight.empty() && c.parser.started()) {
      if (c.parser.OnEof() == HttpResponseParser::State::kComplete) {
        CompleteHead(c, now);  // the body was delimited by the close: the rest are resent
        CloseFd(c);
        Connect(c, now);
      } else {
        ++counters_.read_errors;
        Fail(c, now);
      }
    } else if (idle_close) {
      Retry(c, now);
    } else {
      ++counters_.read_errors;
      Fail(c, now);
    }
    return;
  }
  if (now >= o_.record_from_ns) counters_.bytes_read += static_cast<uint64_t>(n);

  const char* data = buf_.data();
  size_t left = static_cast<size_t>(n);
  bool close = false;
  while (left > 0) {
    if (c.in_flight.empty() || close) {  // bytes nobody asked for
      ++counters_.parse_errors;
      Fail(c, now);
      return;
    }
    size_t consumed = 0;
    const auto state = c.parser.Feed(data, left, &consumed);
    if (state == HttpResponseParser::State::kNeedMore) break;  // consumed all of it
    if (state == HttpResponseParser::State::kError) {
      ++counters_.parse_errors;
      Fail(c, now);
      return;
    }
    data += consumed;
    left -= consumed;
    close = c.parser.close_after();
    CompleteHead(c, now);
    c.parser.Reset();
  }
  if (close) {
    // The server processes nothing more on this connection: what is still in flight was not
    // processed and is resent on the next one, with the answered streams' next requests.
    CloseFd(c);
    Connect(c, now);
    return;
  }
  for (const size_t stream : answered_) Enqueue(c, stream, now);
  if (c.in_flight.empty()) {
    Finish(c);
    return;
  }
  if (!c.want_write && c.written < c.out.size()) Flush(c, now);
}

void PipelinedLoop::CompleteHead(Conn& c, int64_t now) {
  const InFlight head = c.in_flight.front();
  c.in_flight.pop_front();
  c.reused = true;
  streams_[head.stream].has_request = false;
  answered_.push_back(head.stream);
  const bool recorded = now >= o_.record_from_ns && now < o_.end_ns;
  workload_.OnResponse(head.stream, c.parser.status(), c.parser.body(), now - head.sent, recorded);
}

void PipelinedLoop::CheckTimers(int64_t now) {
  for (Conn& c : conns_) {
    if (c.done) continue;
    if (c.fd < 0) {
      if (now >= c.retry_at) Connect(c, now);
    } else if (c.connecting ? now - c.connect_start > o_.timeout_ns
                            : !c.in_flight.empty() && now - c.in_flight.front().sent > o_.timeout_ns) {
      ++counters_.timeout_errors;
      Fail(c, now);
    }
  }
}

}  // namespace

HttpLoopResult RunHttpClosedLoop(const HttpLoopOptions& options, HttpWorkload& workload) {
  const int depth = std::clamp(options.pipeline, 1, kMaxHttpPipeline);
  if (depth > 1) {
    PipelinedLoop loop(options, workload, static_cast<size_t>(depth));
    return loop.Run();
  }
  Loop loop(options, workload);
  return loop.Run();
}

}  // namespace chorus::bench
