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

// One thread's connections. Everything here is touched by that thread only.
class Loop {
 public:
  Loop(const HttpLoopOptions& options, HttpWorkload& workload)
      : o_(options),
        workload_(workload),
        body_limit_(workload.body_limit()),
        conns_(static_cast<size_t>(std::max(options.connections, 0))),
        buf_(size_t{64} * 1024) {
    for (size_t i = 0; i < conns_.size(); ++i) {
      conns_[i].index = i;
      conns_[i].parser.set_body_limit(body_limit_);
    }
  }

  ~Loop() {
    for (Conn& c : conns_) CloseFd(c);
    if (epfd_ >= 0) ::close(epfd_);
  }

  HttpLoopResult Run();

 private:
  struct Conn {
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

  void Connect(Conn& c, int64_t now);
  void Fail(Conn& c, int64_t now);   // an error: drop the request, reconnect after a back-off
  void Retry(Conn& c, int64_t now);  // reused connection closed by the server: resend
  void Finish(Conn& c);
  void CloseFd(Conn& c);
  void SendRequest(Conn& c, int64_t now);
  void ContinueWrite(Conn& c, int64_t now);
  void OnReadable(Conn& c);
  void OnComplete(Conn& c);
  void SetInterest(Conn& c, bool write);
  void CheckTimers(int64_t now);

  const HttpLoopOptions o_;
  HttpWorkload& workload_;
  const size_t body_limit_;
  std::vector<Conn> conns_;  // never resized: epoll events point into it
  std::vector<char> buf_;
  int epfd_ = -1;
  size_t finished_ = 0;
  HttpLoopCounters counters_;
};

HttpLoopResult Loop::Run() {
  HttpLoopResult result;
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    counters_.connect_errors += conns_.size();
    result.counters = counters_;
    result.ended_ns = SteadyNowNanos();
    return result;
  }
  const int64_t start = SteadyNowNanos();
  for (Conn& c : conns_) Connect(c, start);

  std::vector<epoll_event> events(1024);
  int64_t next_check = start;
  int64_t now = start;
  while (finished_ < conns_.size()) {
    now = SteadyNowNanos();
    if (now >= o_.end_ns) break;
    if (now >= next_check) {
      CheckTimers(now);
      next_check = now + 10'000'000;  // 10 ms
    }
    const int wait_ms = static_cast<int>(std::min<int64_t>(10, (o_.end_ns - now) / 1'000'000 + 1));
    const int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), wait_ms);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n; ++i) {
      Conn& c = *static_cast<Conn*>(events[i].data.ptr);
      const uint32_t ev = events[i].events;
      if (c.fd < 0) continue;
      if (c.connecting) {
        if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) continue;
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
          ++counters_.connect_errors;
          Fail(c, SteadyNowNanos());
          continue;
        }
        c.connecting = false;
        SetInterest(c, false);
        SendRequest(c, SteadyNowNanos());
        continue;
      }
      if ((ev & EPOLLOUT) && c.want_write) ContinueWrite(c, SteadyNowNanos());
      if (c.fd >= 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) OnReadable(c);
    }
  }
  result.counters = counters_;
  result.ended_ns = std::min(std::max(now, SteadyNowNanos()), o_.end_ns);
  return result;
}

void Loop::Connect(Conn& c, int64_t now) {
  c.connecting = false;
  c.want_write = false;
  c.reused = false;
  c.in_flight = true;  // the request waits for the connection
  c.start = now;
  c.parser.Reset();
  c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    ++counters_.connect_errors;
    c.retry_at = now + kBackoffNs;
    return;
  }
  const int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const sockaddr_in& addr = o_.addrs.empty() ? o_.addr : o_.addrs[c.index % o_.addrs.size()];
  const int rc = ::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  if (rc != 0 && errno != EINPROGRESS) {
    ++counters_.connect_errors;
    CloseFd(c);
    c.retry_at = now + kBackoffNs;  // back off: do not spin on a refused port
    return;
  }
  c.connecting = true;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = &c;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
    ++counters_.connect_errors;
    CloseFd(c);
    c.retry_at = now + kBackoffNs;
  }
}

void Loop::CloseFd(Conn& c) {
  if (c.fd >= 0) {
    ::close(c.fd);  // also removes it from the epoll set
    c.fd = -1;
  }
  c.connecting = false;
  c.want_write = false;
}

void Loop::Fail(Conn& c, int64_t now) {
  CloseFd(c);
  if (c.has_request) {
    c.has_request = false;
    workload_.OnFailure(c.index);
  }
  c.retry_at = now + kBackoffNs;
}

void Loop::Retry(Conn& c, int64_t now) {
  ++counters_.reconnects;
  CloseFd(c);
  Connect(c, now);
}

void Loop::Finish(Conn& c) {
  CloseFd(c);
  c.in_flight = false;
  c.done = true;
  ++finished_;
}

void Loop::SetInterest(Conn& c, bool write) {
  epoll_event ev{};
  ev.events = EPOLLIN | (write ? EPOLLOUT : 0u);
  ev.data.ptr = &c;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  c.want_write = write;
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
  while (c.written < c.request.size()) {
    const ssize_t n = ::send(c.fd, c.request.data() + c.written, c.request.size() - c.written, MSG_NOSIGNAL);
    if (n > 0) {
      c.written += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c.want_write) SetInterest(c, true);
      return;
    }
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

}  // namespace

HttpLoopResult RunHttpClosedLoop(const HttpLoopOptions& options, HttpWorkload& workload) {
  Loop loop(options, workload);
  return loop.Run();
}

}  // namespace chorus::bench
