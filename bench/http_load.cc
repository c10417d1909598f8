#include "http_load.h"

#include "base/text.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <thread>
#include <vector>

namespace chorus::bench {

// ---------------------------------------------------------------------------------------------
// URL

Result<HttpUrl> ParseHttpUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument("url must start with http:// (got '" + std::string(url) + "')");
  }
  std::string_view rest = url.substr(kScheme.size());
  const size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  HttpUrl out;
  if (slash != std::string_view::npos) {
    out.target = std::string(rest.substr(slash));
    if (out.target.front() == '?') out.target.insert(0, "/");
  }
  if (authority.empty() || authority.find('@') != std::string_view::npos ||
      authority.front() == '[') {
    return InvalidArgument("unsupported host in url '" + std::string(url) + "'");
  }
  const size_t colon = authority.rfind(':');
  if (colon != std::string_view::npos) {
    std::string_view port = authority.substr(colon + 1);
    unsigned value = 0;
    const auto [end, err] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || err != std::errc() || end != port.data() + port.size() || value == 0 ||
        value > 65535) {
      return InvalidArgument("bad port in url '" + std::string(url) + "'");
    }
    out.port = static_cast<uint16_t>(value);
    authority = authority.substr(0, colon);
  }
  if (authority.empty()) return InvalidArgument("missing host in url '" + std::string(url) + "'");
  out.host = std::string(authority);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Response parser

namespace {

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

bool ContainsTokenIgnoreCase(std::string_view haystack, std::string_view token) {
  if (token.size() > haystack.size()) return false;
  for (size_t i = 0; i + token.size() <= haystack.size(); ++i) {
    if (EqualsIgnoreCase(haystack.substr(i, token.size()), token)) return true;
  }
  return false;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}


}  // namespace

HttpResponseParser::HttpResponseParser() { head_.reserve(512); }

void HttpResponseParser::Reset() {
  phase_ = Phase::kHead;
  started_ = false;
  head_.clear();
  status_ = 0;
  close_after_ = false;
  remaining_ = 0;
  body_bytes_ = 0;
  chunk_size_ = 0;
  chunk_size_digits_ = false;
  chunk_size_ext_ = false;
  trailer_line_ = 0;
}

HttpResponseParser::State HttpResponseParser::ParseHead() {
  // head_ holds the status line and headers, ending in "\r\n\r\n".
  std::string_view head(head_);
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  // "HTTP/1.1 200 OK"
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || line[8] != ' ') return State::kError;
  const bool http10 = line[7] == '0';
  int status = 0;
  for (int i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return State::kError;
    status = status * 10 + (line[i] - '0');
  }
  if (line.size() > 12 && line[12] != ' ') return State::kError;
  status_ = status;

  bool has_length = false;
  uint64_t length = 0;
  bool chunked = false;
  bool conn_close = false;
  bool conn_keep_alive = false;
  size_t pos = eol + 2;
  while (pos < head.size()) {
    eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos) return State::kError;
    line = head.substr(pos, eol - pos);
    pos = eol + 2;
    if (line.empty()) break;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return State::kError;
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = Trim(line.substr(colon + 1));
    if (EqualsIgnoreCase(name, "content-length")) {
      uint64_t v = 0;
      const auto [end, err] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (value.empty() || err != std::errc() || end != value.data() + value.size()) {
        return State::kError;
      }
      if (has_length && v != length) return State::kError;
      has_length = true;
      length = v;
    } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
      chunked = ContainsTokenIgnoreCase(value, "chunked");
    } else if (EqualsIgnoreCase(name, "connection")) {
      conn_close = conn_close || ContainsTokenIgnoreCase(value, "close");
      conn_keep_alive = conn_keep_alive || ContainsTokenIgnoreCase(value, "keep-alive");
    }
  }
  close_after_ = conn_close || (http10 && !conn_keep_alive);

  if (status >= 100 && status < 200) {
    if (status == 101) return State::kError;  // an upgrade is not an HTTP response we can time
    // Interim response (100 Continue, 103 Early Hints): the real one follows.
    head_.clear();
    return State::kNeedMore;
  }
  if (status == 204 || status == 304) {
    phase_ = Phase::kDone;
    return State::kComplete;
  }
  if (chunked) {
    phase_ = Phase::kChunkSize;
    return State::kNeedMore;
  }
  if (has_length) {
    remaining_ = length;
    phase_ = length == 0 ? Phase::kDone : Phase::kBody;
    return length == 0 ? State::kComplete : State::kNeedMore;
  }
  phase_ = Phase::kUntilClose;
  close_after_ = true;
  return State::kNeedMore;
}

HttpResponseParser::State HttpResponseParser::Feed(const char* data, size_t len, size_t* consumed) {
  size_t off = 0;
  if (len > 0) started_ = true;
  while (off < len) {
    switch (phase_) {
      case Phase::kHead: {
        const size_t before = head_.size();
        const size_t take = std::min(len - off, kMaxHeaderBytes + 4 - before);
        head_.append(data + off, take);
        const size_t from = before >= 3 ? before - 3 : 0;
        const size_t end = head_.find("\r\n\r\n", from);
        if (end == std::string::npos) {
          if (head_.size() > kMaxHeaderBytes) return State::kError;
          off += take;
          break;
        }
        const size_t head_len = end + 4;
        off += head_len - before;
        head_.resize(head_len);
        const State s = ParseHead();
        if (s == State::kError) return s;
        if (s == State::kComplete) {
          *consumed = off;
          return s;
        }
        break;  // body (or the next head after an interim response) follows
      }
      case Phase::kBody: {
        const uint64_t take = std::min<uint64_t>(remaining_, len - off);
        remaining_ -= take;
        body_bytes_ += take;
        off += take;
        if (remaining_ == 0) {
          phase_ = Phase::kDone;
          *consumed = off;
          return State::kComplete;
        }
        break;
      }
      case Phase::kUntilClose:
        body_bytes_ += len - off;
        off = len;
        break;
      case Phase::kDone:
        // Bytes after a complete response belong to the next one; the caller must Reset().
        *consumed = off;
        return State::kComplete;
      default: {
        size_t used = 0;
        const State s = FeedChunked(data + off, len - off, &used);
        off += used;
        if (s != State::kNeedMore) {
          *consumed = off;
          return s;
        }
        break;
      }
    }
  }
  *consumed = off;
  return phase_ == Phase::kDone ? State::kComplete : State::kNeedMore;
}

HttpResponseParser::State HttpResponseParser::FeedChunked(const char* data, size_t len,
                                                          size_t* consumed) {
  size_t off = 0;
  while (off < len) {
    const char c = data[off];
    switch (phase_) {
      case Phase::kChunkSize:
        ++off;
        if (c == '\n') {
          if (!chunk_size_digits_) return State::kError;
          if (chunk_size_ == 0) {
            phase_ = Phase::kTrailer;
            trailer_line_ = 0;
          } else {
            remaining_ = chunk_size_;
            phase_ = Phase::kChunkData;
          }
          chunk_size_ = 0;
          chunk_size_digits_ = chunk_size_ext_ = false;
        } else if (chunk_size_ext_) {
          // skipping "; ext=value" or the '\r'
        } else if (const int v = HexDigitValue(c); v >= 0) {
          if (chunk_size_ >> 56) return State::kError;  // absurd size: refuse, do not overflow
          chunk_size_ = chunk_size_ * 16 + static_cast<uint64_t>(v);
          chunk_size_digits_ = true;
        } else if (c == ';' || c == ' ' || c == '\t' || c == '\r') {
          chunk_size_ext_ = true;
        } else {
          return State::kError;
        }
        break;
      case Phase::kChunkData: {
        const uint64_t take = std::min<uint64_t>(remaining_, len - off);
        remaining_ -= take;
        body_bytes_ += take;
        off += take;
        if (remaining_ == 0) phase_ = Phase::kChunkDataEnd;
        break;
      }
      case Phase::kChunkDataEnd:
        ++off;
        if (c == '\n') {
          phase_ = Phase::kChunkSize;
        } else if (c != '\r') {
          return State::kError;
        }
        break;
      case Phase::kTrailer:
        ++off;
        if (c == '\n') {
          if (trailer_line_ == 0) {
            phase_ = Phase::kDone;
            *consumed = off;
            return State::kComplete;
          }
          trailer_line_ = 0;
        } else if (c != '\r') {
          if (++trailer_line_ > kMaxHeaderBytes) return State::kError;
        }
        break;
      default:
        return State::kError;
    }
  }
  *consumed = off;
  return State::kNeedMore;
}

HttpResponseParser::State HttpResponseParser::OnEof() {
  if (phase_ == Phase::kUntilClose) {
    phase_ = Phase::kDone;
    return State::kComplete;
  }
  return phase_ == Phase::kDone ? State::kComplete : State::kError;
}

// ---------------------------------------------------------------------------------------------
// Load generator

void HttpLoadResult::Merge(const HttpLoadResult& other) {
  requests += other.requests;
  non_2xx += other.non_2xx;
  connect_errors += other.connect_errors;
  read_errors += other.read_errors;
  write_errors += other.write_errors;
  timeout_errors += other.timeout_errors;
  parse_errors += other.parse_errors;
  reconnects += other.reconnects;
  bytes_read += other.bytes_read;
  elapsed_s = std::max(elapsed_s, other.elapsed_s);
  latency.Merge(other.latency);
}

Measurement HttpLoadResult::ToMeasurement(std::string system) const {
  Measurement m;
  m.system = std::move(system);
  m.throughput = requests_per_second();
  m.unit = "req/s";
  m.duration_s = elapsed_s;
  m.counts = {
      {"requests", requests},
      {"non_2xx", non_2xx},
      {"socket_errors", socket_errors()},
      {"connect_errors", connect_errors},
      {"read_errors", read_errors},
      {"write_errors", write_errors},
      {"timeout_errors", timeout_errors},
      {"parse_errors", parse_errors},
      {"reconnects", reconnects},
      {"bytes_read", bytes_read},
  };
  m.latency = latency;
  return m;
}

namespace {

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// One thread's share of the connections. Everything here is touched by that thread only.
class Worker {
 public:
  Worker(const sockaddr_in& addr, const std::string& request, int connections, int64_t record_from,
         int64_t end, int64_t timeout)
      : addr_(addr),
        request_(request),
        conns_(static_cast<size_t>(connections)),
        record_from_(record_from),
        end_(end),
        timeout_(timeout),
        buf_(64 * 1024) {}

  ~Worker() {
    for (Conn& c : conns_) CloseFd(c);
    if (epfd_ >= 0) ::close(epfd_);
  }

  HttpLoadResult Run();

 private:
  struct Conn {
    int fd = -1;
    bool connecting = false;
    bool want_write = false;  // EPOLLOUT registered for a partial request write
    bool in_flight = false;   // a request is outstanding (or waits for the connection)
    bool reused = false;      // this fd already carried a complete response
    size_t written = 0;
    int64_t start = 0;     // send time of the request, or connect time while connecting
    int64_t retry_at = 0;  // when fd < 0: reconnect at this time
    HttpResponseParser parser;
  };

  void Connect(Conn& c, int64_t now);
  void Reconnect(Conn& c, int64_t now);
  void CloseFd(Conn& c);
  void SendRequest(Conn& c, int64_t now);
  void ContinueWrite(Conn& c, int64_t now);
  void OnReadable(Conn& c);
  void OnComplete(Conn& c);
  void Retry(Conn& c, int64_t now);  // reused connection closed by the server: reconnect, resend
  void SetInterest(Conn& c, bool write);
  void CheckTimers(int64_t now);

  const sockaddr_in addr_;
  const std::string& request_;
  std::vector<Conn> conns_;
  const int64_t record_from_;
  const int64_t end_;
  const int64_t timeout_;
  std::vector<char> buf_;
  int epfd_ = -1;
  HttpLoadResult result_;
};

HttpLoadResult Worker::Run() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    result_.connect_errors += conns_.size();
    return result_;
  }
  const int64_t start = NowNanos();
  for (Conn& c : conns_) Connect(c, start);

  std::vector<epoll_event> events(1024);
  int64_t next_check = start;
  while (true) {
    int64_t now = NowNanos();
    if (now >= end_) break;
    if (now >= next_check) {
      CheckTimers(now);
      next_check = now + 10'000'000;  // 10 ms
    }
    const int wait_ms = static_cast<int>(std::min<int64_t>(10, (end_ - now) / 1'000'000 + 1));
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
          ++result_.connect_errors;
          Reconnect(c, NowNanos());
          continue;
        }
        c.connecting = false;
        SetInterest(c, false);
        SendRequest(c, NowNanos());
        continue;
      }
      if ((ev & EPOLLOUT) && c.want_write) ContinueWrite(c, NowNanos());
      if (c.fd >= 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) OnReadable(c);
    }
  }
  result_.elapsed_s = static_cast<double>(end_ - record_from_) / 1e9;
  return result_;
}

void Worker::Connect(Conn& c, int64_t now) {
  c.connecting = false;
  c.want_write = false;
  c.reused = false;
  c.in_flight = true;  // the request waits for the connection
  c.start = now;
  c.parser.Reset();
  c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) {
    ++result_.connect_errors;
    c.retry_at = now + 10'000'000;
    return;
  }
  const int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const int rc = ::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_);
  if (rc != 0 && errno != EINPROGRESS) {
    ++result_.connect_errors;
    CloseFd(c);
    c.retry_at = now + 10'000'000;  // back off: do not spin on a refused port
    return;
  }
  c.connecting = true;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = &c;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
    ++result_.connect_errors;
    CloseFd(c);
    c.retry_at = now + 10'000'000;
  }
}

void Worker::CloseFd(Conn& c) {
  if (c.fd >= 0) {
    ::close(c.fd);  // also removes it from the epoll set
    c.fd = -1;
  }
  c.connecting = false;
  c.want_write = false;
}

void Worker::Reconnect(Conn& c, int64_t now) {
  CloseFd(c);
  c.retry_at = now + 10'000'000;  // an error: back off before trying again
}

void Worker::Retry(Conn& c, int64_t now) {
  ++result_.reconnects;
  CloseFd(c);
  Connect(c, now);
}

void Worker::SetInterest(Conn& c, bool write) {
  epoll_event ev{};
  ev.events = EPOLLIN | (write ? EPOLLOUT : 0u);
  ev.data.ptr = &c;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  c.want_write = write;
}

void Worker::SendRequest(Conn& c, int64_t now) {
  c.parser.Reset();
  c.written = 0;
  c.start = now;
  c.in_flight = true;
  ContinueWrite(c, now);
}

void Worker::ContinueWrite(Conn& c, int64_t now) {
  while (c.written < request_.size()) {
    const ssize_t n =
        ::send(c.fd, request_.data() + c.written, request_.size() - c.written, MSG_NOSIGNAL);
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
      ++result_.write_errors;
      Reconnect(c, now);
    }
    return;
  }
  if (c.want_write) SetInterest(c, false);
}

void Worker::OnReadable(Conn& c) {
  const ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    if (c.in_flight && c.reused && !c.parser.started()) {
      Retry(c, NowNanos());
    } else {
      ++result_.read_errors;
      Reconnect(c, NowNanos());
    }
    return;
  }
  if (n == 0) {
    if (c.in_flight && c.parser.started()) {
      if (c.parser.OnEof() == HttpResponseParser::State::kComplete) {
        OnComplete(c);  // the body was delimited by the close: open the next connection
        CloseFd(c);
        Connect(c, NowNanos());
      } else {
        ++result_.read_errors;
        Reconnect(c, NowNanos());
      }
    } else if (c.in_flight && c.reused) {
      Retry(c, NowNanos());
    } else {
      ++result_.read_errors;
      Reconnect(c, NowNanos());
    }
    return;
  }
  if (NowNanos() >= record_from_) result_.bytes_read += static_cast<uint64_t>(n);
  if (!c.in_flight) {  // bytes nobody asked for
    ++result_.parse_errors;
    Reconnect(c, NowNanos());
    return;
  }
  size_t consumed = 0;
  const auto state = c.parser.Feed(buf_.data(), static_cast<size_t>(n), &consumed);
  if (state == HttpResponseParser::State::kNeedMore) return;
  if (state == HttpResponseParser::State::kError || consumed != static_cast<size_t>(n)) {
    ++result_.parse_errors;  // malformed, or more bytes than the one response we asked for
    Reconnect(c, NowNanos());
    return;
  }
  const bool close = c.parser.close_after();
  OnComplete(c);
  const int64_t now = NowNanos();
  if (close) {
    CloseFd(c);
    Connect(c, now);
  } else {
    SendRequest(c, now);
  }
}

void Worker::OnComplete(Conn& c) {
  const int64_t now = NowNanos();
  c.in_flight = false;
  c.reused = true;
  if (now < record_from_ || now >= end_) return;
  ++result_.requests;
  const int status = c.parser.status();
  if (status < 200 || status > 299) ++result_.non_2xx;
  result_.latency.Record(now - c.start);
}

void Worker::CheckTimers(int64_t now) {
  for (Conn& c : conns_) {
    if (c.fd < 0) {
      if (now >= c.retry_at) Connect(c, now);
    } else if (c.in_flight && now - c.start > timeout_) {
      ++result_.timeout_errors;
      Reconnect(c, now);
    }
  }
}

}  // namespace

Result<HttpLoadResult> RunHttpLoad(const HttpLoadOptions& options) {
  CHORUS_ASSIGN_OR_RETURN(HttpUrl url, ParseHttpUrl(options.url));
  if (options.connections < 1) return InvalidArgument("--connections must be at least 1");
  if (options.threads < 1) return InvalidArgument("--threads must be at least 1");
  if (options.duration <= std::chrono::nanoseconds::zero()) {
    return InvalidArgument("--duration must be positive");
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY &&
      static_cast<rlim_t>(options.connections) + 32 > limit.rlim_cur) {
    return InvalidArgument("--connections " + std::to_string(options.connections) +
                           " exceeds the open-file limit " + std::to_string(limit.rlim_cur) +
                           " (minus 32 spare)");
  }

  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(url.port);
  if (const int rc = getaddrinfo(url.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return InvalidArgument("cannot resolve " + url.host + ": " + gai_strerror(rc));
  }
  sockaddr_in addr{};
  std::memcpy(&addr, found->ai_addr, sizeof addr);
  freeaddrinfo(found);

  const std::string request = "GET " + url.target + " HTTP/1.1\r\nHost: " + url.host + ":" + port +
                              "\r\nUser-Agent: chorus-bench\r\n\r\n";
  const int threads = std::min(options.threads, options.connections);
  const int64_t start = NowNanos();
  const int64_t record_from = start + options.warmup.count();
  const int64_t end = record_from + options.duration.count();

  std::vector<HttpLoadResult> results(static_cast<size_t>(threads));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    const int conns = options.connections / threads + (t < options.connections % threads ? 1 : 0);
    pool.emplace_back([&, t, conns] {
      Worker worker(addr, request, conns, record_from, end, options.timeout.count());
      results[static_cast<size_t>(t)] = worker.Run();
    });
  }
  for (std::thread& th : pool) th.join();

  HttpLoadResult total;
  for (const HttpLoadResult& r : results) total.Merge(r);
  return total;
}

}  // namespace chorus::bench
