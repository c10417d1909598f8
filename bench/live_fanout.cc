#include "live_fanout.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>
#include <vector>

#include "base/random.h"
#include "http_load.h"
#include "ws_client.h"

extern char** environ;

namespace chorus::bench {
namespace {

int64_t SteadyNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t WallNanos() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The unsigned integer right after `key` in `text`, searching only the first `within` bytes.
bool FindUint(std::string_view text, std::string_view key, size_t within, uint64_t* out) {
  const size_t pos = text.substr(0, within).find(key);
  if (pos == std::string_view::npos) return false;
  const char* begin = text.data() + pos + key.size();
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(begin, end, *out);
  return ec == std::errc() && ptr != begin;
}

Result<sockaddr_in> Resolve(const std::string& host, uint16_t port) {
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

// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
rlim_t RaiseFileLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur;
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Frame scanning, metrics, /proc

LiveFrameKind ScanLiveFrame(std::string_view text, LiveBlockInfo* block) {
  constexpr std::string_view kPrefix = "{\"frame\":\"";
  if (text.substr(0, kPrefix.size()) != kPrefix) return LiveFrameKind::kOther;
  const std::string_view kind = text.substr(kPrefix.size(), 12);
  if (kind.starts_with("block\"")) {
    // The block header (room, seq, tick_at, online) precedes "messages"; a room id is at most
    // 64 bytes, so the header fits in the first 256.
    LiveBlockInfo info;
    uint64_t tick_at = 0;
    if (!FindUint(text, "\"tick_at\":", 256, &tick_at) || !FindUint(text, "\"seq\":", 256, &info.seq)) {
      return LiveFrameKind::kOther;
    }
    info.tick_at_ms = static_cast<int64_t>(tick_at);
    // One "created_at" per message: the key appears nowhere else in a block.
    constexpr std::string_view kCreated = "\"created_at\":";
    for (size_t pos = text.find(kCreated); pos != std::string_view::npos;
         pos = text.find(kCreated, pos + kCreated.size())) {
      ++info.messages;
    }
    *block = info;
    return LiveFrameKind::kBlock;
  }
  if (kind.starts_with("welcome\"")) return LiveFrameKind::kWelcome;
  if (kind.starts_with("subscribed\"")) return LiveFrameKind::kSubscribed;
  if (kind.starts_with("error\"")) return LiveFrameKind::kError;
  return LiveFrameKind::kOther;
}

std::map<std::string, double> ParseLiveMetrics(std::string_view text) {
  struct Suffix {
    std::string_view suffix;
    std::string_view key;
  };
  static constexpr Suffix kSuffixes[] = {
      {"_live_blocks_total", "blocks"},
      {"_live_deliveries_total", "deliveries"},
      {"_live_published_total", "published"},
      {"_websocket_dropped_messages_total", "ws_dropped"},
      {"_websocket_slow_consumer_closes_total", "slow_consumer_closes"},
  };
  std::map<std::string, double> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t eol = text.find('\n', start);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(start, eol - start);
    start = eol + 1;
    if (line.empty() || line.front() == '#') continue;
    const size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string_view::npos) continue;
    const std::string_view name = line.substr(0, name_end);
    const size_t space = line.rfind(' ');
    if (space == std::string_view::npos || space + 1 >= line.size()) continue;
    double value = 0;
    const std::string_view value_text = line.substr(space + 1);
    if (std::from_chars(value_text.data(), value_text.data() + value_text.size(), value).ec != std::errc()) {
      continue;
    }
    if (name.ends_with("_live_dropped_total")) {
      constexpr std::string_view kReason = "reason=\"";
      const size_t r = line.find(kReason);
      if (r == std::string_view::npos || r > space) continue;
      const size_t r_end = line.find('"', r + kReason.size());
      if (r_end == std::string_view::npos) continue;
      out["dropped_" + std::string(line.substr(r + kReason.size(), r_end - r - kReason.size()))] += value;
      continue;
    }
    for (const Suffix& s : kSuffixes) {
      if (name.ends_with(s.suffix)) out[std::string(s.key)] += value;
    }
  }
  return out;
}

Result<double> ParseProcStatCpuSeconds(std::string_view stat_text) {
  // "pid (comm) state ppid ... utime stime ...": comm may hold spaces and parentheses, so fields
  // are counted from the last ')'. utime and stime are fields 14 and 15 (1-based), i.e. the 12th
  // and 13th after the comm.
  const size_t paren = stat_text.rfind(')');
  if (paren == std::string_view::npos) return InvalidArgument("not a /proc/<pid>/stat line");
  std::istringstream in{std::string(stat_text.substr(paren + 1))};
  std::string field;
  uint64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15; ++i) {
    if (!(in >> field)) return InvalidArgument("/proc/<pid>/stat line too short");
    if (i == 14 || i == 15) {
      uint64_t v = 0;
      const auto [ptr, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
      if (ec != std::errc() || ptr != field.data() + field.size()) {
        return InvalidArgument("bad utime/stime in /proc/<pid>/stat");
      }
      (i == 14 ? utime : stime) = v;
    }
  }
  const long ticks = sysconf(_SC_CLK_TCK);
  return static_cast<double>(utime + stime) / static_cast<double>(ticks > 0 ? ticks : 100);
}

std::string MakePublishBody(int n, uint64_t* counter, uint64_t seed) {
  static constexpr const char* kGifts[] = {"rose", "heart", "rocket", "castle"};
  std::string body = "{\"messages\":[";
  for (int i = 0; i < n; ++i) {
    const uint64_t k = (*counter)++;
    // A fresh generator per message number: the mix does not depend on how messages are batched.
    Random rng(seed * 0x9E3779B97F4A7C15ULL + k);
    const uint64_t pick = rng.Uniform(100);
    std::string user = "u";  // appended: GCC 12's -Wrestrict misfires on "u" + std::string at -O3
    user += std::to_string(rng.Uniform(100000));
    const std::string level = std::to_string(rng.Uniform(60));
    if (i) body += ',';
    if (pick < 10) {
      body += "{\"type\":\"gift\",\"sender\":{\"id\":\"" + user + "\",\"level\":" + level +
              "},\"payload\":{\"gift\":\"" + kGifts[rng.Uniform(4)] +
              "\",\"value\":" + std::to_string(1 + rng.Uniform(1000)) + "}}";
    } else if (pick < 20) {
      body += "{\"type\":\"pk\",\"payload\":{\"blue\":" + std::to_string(rng.Uniform(10000)) +
              ",\"red\":" + std::to_string(rng.Uniform(10000)) + "}}";
    } else if (pick < 90) {
      body += "{\"type\":\"chat\",\"sender\":{\"id\":\"" + user + "\",\"level\":" + level +
              "},\"payload\":{\"text\":\"message " + std::to_string(k) + " from the fan-out bench\"}}";
    } else {
      body += "{\"type\":\"notify\",\"payload\":{\"event\":\"follow\",\"user\":\"" + user + "\"}}";
    }
  }
  body += "]}";
  return body;
}

// ---------------------------------------------------------------------------------------------
// LiveClientsResult

nlohmann::json LiveClientsResult::ToJson() const {
  return nlohmann::json{
      {"connections", connections},
      {"subscribed", subscribed},
      {"failed", failed},
      {"disconnects", disconnects},
      {"protocol_errors", protocol_errors},
      {"server_errors", server_errors},
      {"blocks", blocks},
      {"messages", messages},
      {"bytes", bytes},
      {"missed_blocks", missed_blocks},
      {"pings", pings},
      {"window_s", window_s},
      {"latency", latency.ToBucketsJson()},
  };
}

Result<LiveClientsResult> LiveClientsResult::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return InvalidArgument("client result must be a JSON object");
  LiveClientsResult r;
  auto get = [&](const char* key, uint64_t& out) -> Status {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_unsigned()) {
      return InvalidArgument(std::string("client result lacks ") + key);
    }
    out = it->get<uint64_t>();
    return Status::Ok();
  };
  CHORUS_RETURN_IF_ERROR(get("connections", r.connections));
  CHORUS_RETURN_IF_ERROR(get("subscribed", r.subscribed));
  CHORUS_RETURN_IF_ERROR(get("failed", r.failed));
  CHORUS_RETURN_IF_ERROR(get("disconnects", r.disconnects));
  CHORUS_RETURN_IF_ERROR(get("protocol_errors", r.protocol_errors));
  CHORUS_RETURN_IF_ERROR(get("server_errors", r.server_errors));
  CHORUS_RETURN_IF_ERROR(get("blocks", r.blocks));
  CHORUS_RETURN_IF_ERROR(get("messages", r.messages));
  CHORUS_RETURN_IF_ERROR(get("bytes", r.bytes));
  CHORUS_RETURN_IF_ERROR(get("missed_blocks", r.missed_blocks));
  CHORUS_RETURN_IF_ERROR(get("pings", r.pings));
  auto window = j.find("window_s");
  if (window == j.end() || !window->is_number()) return InvalidArgument("client result lacks window_s");
  r.window_s = window->get<double>();
  auto latency = j.find("latency");
  if (latency == j.end()) return InvalidArgument("client result lacks latency");
  CHORUS_ASSIGN_OR_RETURN(r.latency, LatencyHistogram::FromBucketsJson(*latency));
  return r;
}

void LiveClientsResult::Merge(const LiveClientsResult& o) {
  connections += o.connections;
  subscribed += o.subscribed;
  failed += o.failed;
  disconnects += o.disconnects;
  protocol_errors += o.protocol_errors;
  server_errors += o.server_errors;
  blocks += o.blocks;
  messages += o.messages;
  bytes += o.bytes;
  missed_blocks += o.missed_blocks;
  pings += o.pings;
  window_s = std::max(window_s, o.window_s);
  latency.Merge(o.latency);
}

// ---------------------------------------------------------------------------------------------
// live-clients: the subscriber loop

namespace {

class ClientLoop {
 public:
  ClientLoop(const LiveClientsOptions& options, const sockaddr_in& addr, std::FILE* out)
      : options_(options),
        addr_(addr),
        out_(out),
        conns_(static_cast<size_t>(options.connections)),
        buf_(256 * 1024) {
    result_.connections = conns_.size();
    subscribe_op_ = "{\"op\":\"subscribe\",\"room\":\"" + options.room + "\"}";
  }
  ~ClientLoop() {
    for (Conn& c : conns_) {
      if (c.fd >= 0) ::close(c.fd);
    }
    if (epfd_ >= 0) ::close(epfd_);
  }

  int Run(int control_in);

 private:
  enum class Phase { kQueued, kConnecting, kHandshake, kOpen, kSubscribed, kFailed, kClosed };
  struct Conn {
    int fd = -1;
    Phase phase = Phase::kQueued;
    int attempts = 0;
    bool want_write = false;
    bool fragmented = false;  // a text/binary message continues in the next frame
    uint8_t frag_opcode = 0;
    int64_t deadline = 0;  // of the current attempt (steady ns)
    uint64_t last_seq = 0;
    uint32_t mask = 0;
    std::string in;   // bytes not yet parsed (partial head or frame)
    std::string msg;  // a fragmented message being assembled
    std::string out;  // bytes the socket did not take yet
  };

  void Launch(int64_t now);
  void StartAttempt(Conn& c, int64_t now);
  // A connection attempt (or a subscribed connection) ended.
  void Lost(Conn& c, const char* why, int64_t now);
  void Settle(bool subscribed);
  void OnSocketEvent(Conn& c, uint32_t events, int64_t now);
  void OnReadable(Conn& c, int64_t now);
  // Parses frames from `data`; returns the bytes consumed, or npos after the connection died.
  size_t ParseFrames(Conn& c, std::string_view data, int64_t now);
  void OnMessage(Conn& c, uint8_t opcode, std::string_view payload, int64_t now);
  void SendFrame(Conn& c, uint8_t opcode, std::string_view payload, int64_t now);
  void Flush(Conn& c, int64_t now);
  void SetWrite(Conn& c, bool on);
  void SweepDeadlines(int64_t now);
  bool OnControl(int control_in);  // false: the control pipe ended
  void ReportProgress(int64_t now);

  const LiveClientsOptions& options_;
  const sockaddr_in addr_;
  std::FILE* out_;
  std::vector<Conn> conns_;
  std::vector<char> buf_;
  std::deque<size_t> queue_;  // connections waiting for an attempt
  std::string request_;
  std::string subscribe_op_;
  std::string control_buf_;
  int epfd_ = -1;
  int inflight_ = 0;
  uint64_t settled_ = 0;
  bool ready_ = false;
  bool recording_ = false;
  int64_t record_start_ = 0;
  int64_t next_progress_ = 0;
  uint64_t errors_logged_ = 0;
  uint32_t mask_seed_ = 0x9E3779B9u;
  LiveClientsResult result_;
};

int ClientLoop::Run(int control_in) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    std::fprintf(stderr, "live-clients[%d]: epoll_create1: %s\n", options_.index, std::strerror(errno));
    return 2;
  }
  epoll_event cev{};
  cev.events = EPOLLIN;
  cev.data.ptr = nullptr;  // the control pipe
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, control_in, &cev) != 0) {
    std::fprintf(stderr, "live-clients[%d]: cannot watch stdin: %s\n", options_.index, std::strerror(errno));
    return 2;
  }
  std::string key(16, '\0');
  Random rng(static_cast<uint64_t>(options_.index) * 7919 + 17);
  for (char& ch : key) ch = static_cast<char>(rng.Uniform(256));
  request_ = BuildWsUpgradeRequest(options_.host, options_.port, options_.target, key);
  mask_seed_ = static_cast<uint32_t>(rng.Next());

  const int64_t start = SteadyNanos();
  next_progress_ = start + 2'000'000'000;
  for (size_t i = 0; i < conns_.size(); ++i) queue_.push_back(i);
  Launch(start);
  if (conns_.empty()) Settle(false);  // nothing to wait for

  std::vector<epoll_event> events(1024);
  int64_t next_sweep = start + 100'000'000;
  while (true) {
    const int timeout_ms = ready_ ? 1000 : 100;
    const int n = epoll_wait(epfd_, events.data(), static_cast<int>(events.size()), timeout_ms);
    if (n < 0 && errno != EINTR) {
      std::fprintf(stderr, "live-clients[%d]: epoll_wait: %s\n", options_.index, std::strerror(errno));
      return 2;
    }
    const int64_t now = SteadyNanos();
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) {
        if (!OnControl(control_in)) return 0;
        continue;
      }
      OnSocketEvent(*static_cast<Conn*>(events[i].data.ptr), events[i].events, now);
    }
    if (!ready_ && now >= next_sweep) {
      SweepDeadlines(now);
      Launch(now);
      next_sweep = now + 100'000'000;
    }
    if (!ready_ && now >= next_progress_) ReportProgress(now);
  }
}

void ClientLoop::ReportProgress(int64_t now) {
  std::fprintf(stderr, "live-clients[%d]: %llu/%zu subscribed, %llu failed\n", options_.index,
               static_cast<unsigned long long>(result_.subscribed), conns_.size(),
               static_cast<unsigned long long>(result_.failed));
  next_progress_ = now + 2'000'000'000;
}

void ClientLoop::Launch(int64_t now) {
  while (inflight_ < options_.concurrency && !queue_.empty()) {
    Conn& c = conns_[queue_.front()];
    queue_.pop_front();
    StartAttempt(c, now);
  }
}

void ClientLoop::StartAttempt(Conn& c, int64_t now) {
  ++c.attempts;
  ++inflight_;
  c.phase = Phase::kConnecting;
  c.deadline = now + options_.attempt_timeout.count();
  c.in.clear();
  c.msg.clear();
  c.out.clear();
  c.fragmented = false;
  c.want_write = true;
  c.last_seq = 0;
  mask_seed_ = mask_seed_ * 1664525u + 1013904223u;
  c.mask = mask_seed_;
  c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.fd < 0) return Lost(c, "socket", now);
  const int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_) != 0 && errno != EINPROGRESS) {
    return Lost(c, "connect", now);
  }
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = &c;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0) return Lost(c, "epoll_ctl", now);
}

void ClientLoop::Settle(bool subscribed) {
  ++settled_;
  (void)subscribed;
  if (!ready_ && settled_ >= conns_.size()) {
    ready_ = true;
    std::fprintf(stderr, "live-clients[%d]: ready, %llu subscribed, %llu failed\n", options_.index,
                 static_cast<unsigned long long>(result_.subscribed),
                 static_cast<unsigned long long>(result_.failed));
    std::fprintf(out_, "ready %llu %llu\n", static_cast<unsigned long long>(result_.subscribed),
                 static_cast<unsigned long long>(result_.failed));
    std::fflush(out_);
  }
}

void ClientLoop::Lost(Conn& c, const char* why, int64_t now) {
  const Phase was = c.phase;
  if (c.fd >= 0) {
    ::close(c.fd);  // also leaves the epoll set
    c.fd = -1;
  }
  c.in.clear();
  c.in.shrink_to_fit();
  c.out.clear();
  c.msg.clear();
  if (was == Phase::kSubscribed) {
    c.phase = Phase::kClosed;
    ++result_.disconnects;
    if (errors_logged_++ < 5) {
      std::fprintf(stderr, "live-clients[%d]: subscribed connection lost (%s)\n", options_.index, why);
    }
    return;
  }
  if (was == Phase::kFailed || was == Phase::kClosed || was == Phase::kQueued) return;
  --inflight_;
  if (c.attempts < options_.max_attempts && !ready_) {
    c.phase = Phase::kQueued;
    queue_.push_back(static_cast<size_t>(&c - conns_.data()));
    return;
  }
  c.phase = Phase::kFailed;
  ++result_.failed;
  if (errors_logged_++ < 5) {
    std::fprintf(stderr, "live-clients[%d]: connection failed after %d attempts (%s: %s)\n", options_.index,
                 c.attempts, why, std::strerror(errno));
  }
  Settle(false);
  Launch(now);
}

void ClientLoop::SweepDeadlines(int64_t now) {
  for (Conn& c : conns_) {
    if ((c.phase == Phase::kConnecting || c.phase == Phase::kHandshake || c.phase == Phase::kOpen) &&
        now > c.deadline) {
      errno = ETIMEDOUT;
      Lost(c, "timeout", now);
    }
  }
}

void ClientLoop::SetWrite(Conn& c, bool on) {
  if (c.want_write == on || c.fd < 0) return;
  epoll_event ev{};
  ev.events = EPOLLIN | (on ? EPOLLOUT : 0u);
  ev.data.ptr = &c;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  c.want_write = on;
}

void ClientLoop::Flush(Conn& c, int64_t now) {
  while (!c.out.empty()) {
    const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0) {
      c.out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      SetWrite(c, true);
      return;
    }
    return Lost(c, "send", now);
  }
  SetWrite(c, false);
}

void ClientLoop::SendFrame(Conn& c, uint8_t opcode, std::string_view payload, int64_t now) {
  c.mask = c.mask * 1664525u + 1013904223u;
  AppendWsClientFrame(opcode, payload, c.mask, &c.out);
  Flush(c, now);
}

void ClientLoop::OnSocketEvent(Conn& c, uint32_t events, int64_t now) {
  if (c.fd < 0) return;
  if (c.phase == Phase::kConnecting) {
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) == 0) return;
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
      errno = err;
      return Lost(c, "connect", now);
    }
    c.phase = Phase::kHandshake;
    c.out = request_;
    Flush(c, now);
    return;
  }
  if ((events & EPOLLOUT) && c.want_write) {
    Flush(c, now);
    if (c.fd < 0) return;
  }
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) OnReadable(c, now);
}

void ClientLoop::OnReadable(Conn& c, int64_t now) {
  const ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
    return Lost(c, "recv", now);
  }
  if (n == 0) {
    errno = ECONNRESET;
    return Lost(c, "closed by server", now);
  }
  std::string_view data(buf_.data(), static_cast<size_t>(n));
  if (c.phase == Phase::kHandshake) {
    c.in.append(data);
    size_t head_len = 0;
    int status = 0;
    switch (ParseWsUpgradeResponse(c.in, &head_len, &status)) {
      case WsHandshake::kNeedMore:
        return;
      case WsHandshake::kRejected:
        errno = EPROTO;
        if (errors_logged_ < 5) {
          std::fprintf(stderr, "live-clients[%d]: upgrade answered %d: %.200s\n", options_.index, status,
                       c.in.c_str());
        }
        return Lost(c, "upgrade rejected", now);
      case WsHandshake::kUpgraded:
        break;
    }
    c.phase = Phase::kOpen;
    c.in.erase(0, head_len);
    if (c.in.empty()) return;
    std::string rest = std::move(c.in);
    c.in.clear();
    const size_t used = ParseFrames(c, rest, now);
    if (used != std::string_view::npos) c.in.assign(rest, used);
    return;
  }
  if (c.in.empty()) {
    // Fast path: whole frames straight from the read buffer; only a tail is copied.
    const size_t used = ParseFrames(c, data, now);
    if (used != std::string_view::npos && used < data.size()) c.in.assign(data.substr(used));
    return;
  }
  c.in.append(data);
  std::string pending = std::move(c.in);
  c.in.clear();
  const size_t used = ParseFrames(c, pending, now);
  if (used != std::string_view::npos) c.in.assign(pending, used);
}

size_t ClientLoop::ParseFrames(Conn& c, std::string_view data, int64_t now) {
  size_t off = 0;
  while (off < data.size()) {
    WsFrame frame;
    size_t used = 0;
    const WsParse state = ParseWsServerFrame(data.substr(off), &frame, &used);
    if (state == WsParse::kNeedMore) break;
    if (state == WsParse::kError) {
      ++result_.protocol_errors;
      errno = EPROTO;
      Lost(c, "bad frame", now);
      return std::string_view::npos;
    }
    off += used;
    switch (frame.opcode) {
      case kWsPing:
        ++result_.pings;
        SendFrame(c, kWsPong, frame.payload, now);
        break;
      case kWsPong:
        break;
      case kWsClose:
        SendFrame(c, kWsClose, frame.payload.substr(0, 2), now);
        errno = ECONNRESET;
        if (c.fd >= 0) Lost(c, "close frame", now);
        return std::string_view::npos;
      case kWsContinuation:
        if (!c.fragmented) {
          ++result_.protocol_errors;
          errno = EPROTO;
          Lost(c, "stray continuation", now);
          return std::string_view::npos;
        }
        c.msg.append(frame.payload);
        if (frame.fin) {
          c.fragmented = false;
          std::string whole = std::move(c.msg);
          c.msg.clear();
          OnMessage(c, c.frag_opcode, whole, now);
        }
        break;
      default:  // text or binary
        if (!frame.fin) {
          c.fragmented = true;
          c.frag_opcode = frame.opcode;
          c.msg.assign(frame.payload);
        } else {
          OnMessage(c, frame.opcode, frame.payload, now);
        }
        break;
    }
    if (c.fd < 0) return std::string_view::npos;
  }
  return off;
}

void ClientLoop::OnMessage(Conn& c, uint8_t opcode, std::string_view payload, int64_t now) {
  if (opcode != kWsText) return;  // this client asked for JSON frames
  LiveBlockInfo block;
  switch (ScanLiveFrame(payload, &block)) {
    case LiveFrameKind::kBlock:
      if (recording_) {
        ++result_.blocks;
        result_.messages += block.messages;
        result_.bytes += payload.size();
        result_.latency.Record(WallNanos() - block.tick_at_ms * 1'000'000);
        // A jump of a million or more is a live cluster's new room owner numbering from its
        // clock (docs/live.md), not blocks lost.
        if (c.last_seq != 0 && block.seq > c.last_seq + 1 && block.seq - c.last_seq - 1 < 1'000'000) {
          result_.missed_blocks += block.seq - c.last_seq - 1;
        }
      }
      c.last_seq = block.seq;
      break;
    case LiveFrameKind::kWelcome:
      if (c.phase == Phase::kOpen) SendFrame(c, kWsText, subscribe_op_, now);
      break;
    case LiveFrameKind::kSubscribed:
      if (c.phase == Phase::kOpen) {
        c.phase = Phase::kSubscribed;
        c.in.shrink_to_fit();
        --inflight_;
        ++result_.subscribed;
        Settle(true);
        Launch(now);
      }
      break;
    case LiveFrameKind::kError:
      ++result_.server_errors;
      if (errors_logged_++ < 5) {
        std::fprintf(stderr, "live-clients[%d]: server error frame: %.*s\n", options_.index,
                     static_cast<int>(std::min<size_t>(payload.size(), 300)), payload.data());
      }
      break;
    case LiveFrameKind::kOther:
      break;
  }
}

bool ClientLoop::OnControl(int control_in) {
  char tmp[256];
  const ssize_t n = ::read(control_in, tmp, sizeof tmp);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
  if (n <= 0) return false;  // the orchestrator is gone
  control_buf_.append(tmp, static_cast<size_t>(n));
  size_t eol;
  while ((eol = control_buf_.find('\n')) != std::string::npos) {
    const std::string line = control_buf_.substr(0, eol);
    control_buf_.erase(0, eol + 1);
    if (line == "start") {
      const uint64_t pings = result_.pings;
      const uint64_t subscribed = result_.subscribed, failed = result_.failed;
      const uint64_t disconnects = result_.disconnects;
      result_ = LiveClientsResult();
      result_.connections = conns_.size();
      result_.subscribed = subscribed;
      result_.failed = failed;
      result_.disconnects = disconnects;
      result_.pings = pings;
      recording_ = true;
      record_start_ = SteadyNanos();
      std::fprintf(out_, "started\n");
      std::fflush(out_);
    } else if (line == "stop") {
      result_.window_s = recording_ ? static_cast<double>(SteadyNanos() - record_start_) / 1e9 : 0;
      recording_ = false;
      std::fprintf(out_, "result %s\n", result_.ToJson().dump().c_str());
      std::fflush(out_);
    }
  }
  return true;
}

}  // namespace

int RunLiveClients(const LiveClientsOptions& options, int control_in, std::FILE* control_out) {
  if (options.connections < 1 || options.port == 0 || options.target.empty()) {
    std::fprintf(stderr, "live-clients: need --connections >= 1, --port and --target\n");
    return 2;
  }
  const rlim_t limit = RaiseFileLimit();
  if (limit != RLIM_INFINITY && static_cast<rlim_t>(options.connections) + 32 > limit) {
    std::fprintf(stderr,
                 "live-clients: %d connections exceed the open-file limit %llu (minus 32 spare); "
                 "use more processes\n",
                 options.connections, static_cast<unsigned long long>(limit));
    return 2;
  }
  auto addr = Resolve(options.host, options.port);
  if (!addr.ok()) {
    std::fprintf(stderr, "live-clients: %s\n", addr.status().ToString().c_str());
    return 2;
  }
  ClientLoop loop(options, *addr, control_out);
  return loop.Run(control_in);
}

// ---------------------------------------------------------------------------------------------
// live-fanout: the orchestrator

namespace {

// One live-clients process and the two pipes to it.
struct Child {
  pid_t pid = -1;
  int to = -1;    // its stdin
  int from = -1;  // its stdout
  std::string buf;
};

Result<Child> SpawnClient(const std::string& exe, const std::vector<std::string>& args) {
  int in_pipe[2], out_pipe[2];
  if (pipe2(in_pipe, O_CLOEXEC) != 0) return Internal(std::string("pipe: ") + std::strerror(errno));
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    ::close(in_pipe[0]);
    ::close(in_pipe[1]);
    return Internal(std::string("pipe: ") + std::strerror(errno));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(exe.c_str()));
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, exe.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (rc != 0) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    return Internal("cannot start " + exe + ": " + std::strerror(rc));
  }
  Child child;
  child.pid = pid;
  child.to = in_pipe[1];
  child.from = out_pipe[0];
  return child;
}

// Reads one line from the child, waiting until `deadline` (steady ns).
Result<std::string> ReadLine(Child& child, int64_t deadline) {
  while (true) {
    const size_t eol = child.buf.find('\n');
    if (eol != std::string::npos) {
      std::string line = child.buf.substr(0, eol);
      child.buf.erase(0, eol + 1);
      return line;
    }
    const int64_t left_ms = (deadline - SteadyNanos()) / 1'000'000;
    if (left_ms <= 0)
      return DeadlineExceeded("client process " + std::to_string(child.pid) + " did not answer in time");
    pollfd pfd{child.from, POLLIN, 0};
    const int rc = ::poll(&pfd, 1, static_cast<int>(std::min<int64_t>(left_ms, 1000)));
    if (rc < 0 && errno != EINTR) return Internal(std::string("poll: ") + std::strerror(errno));
    if (rc <= 0) continue;
    char tmp[65536];
    const ssize_t n = ::read(child.from, tmp, sizeof tmp);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Unavailable("client process " + std::to_string(child.pid) + " exited");
    child.buf.append(tmp, static_cast<size_t>(n));
  }
}

void StopChildren(std::vector<Child>& children) {
  for (Child& c : children) {
    if (c.to >= 0) ::close(c.to);
    c.to = -1;
  }
  for (Child& c : children) {
    if (c.pid > 0) {
      // Closing stdin ends a client; give it a moment, then insist.
      for (int i = 0; i < 50; ++i) {
        if (waitpid(c.pid, nullptr, WNOHANG) == c.pid) {
          c.pid = -1;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (c.pid > 0) {
        ::kill(c.pid, SIGKILL);
        waitpid(c.pid, nullptr, 0);
        c.pid = -1;
      }
    }
    if (c.from >= 0) ::close(c.from);
    c.from = -1;
  }
}

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Busy and total jiffies of the whole machine, from /proc/stat's "cpu" line.
struct MachineCpu {
  double busy = 0;
  double total = 0;
};
MachineCpu ReadMachineCpu() {
  std::istringstream in(ReadFileText("/proc/stat"));
  std::string label;
  in >> label;
  MachineCpu m;
  if (label != "cpu") return m;
  double v = 0;
  for (int i = 0; i < 8 && (in >> v); ++i) {
    m.total += v;
    if (i != 3 && i != 4) m.busy += v;  // idle, iowait
  }
  return m;
}

double ProcessCpu(pid_t pid) {
  if (pid <= 0) return 0;
  auto cpu = ParseProcStatCpuSeconds(ReadFileText("/proc/" + std::to_string(pid) + "/stat"));
  return cpu.ok() ? *cpu : 0;
}

// One request/response over a blocking socket, reconnecting once when a kept-alive connection
// turns out closed. Used by the publisher (keep-alive) and for /metrics.
class HttpClient {
 public:
  HttpClient(const sockaddr_in& addr, std::string host_header)
      : addr_(addr), host_(std::move(host_header)), buf_(64 * 1024) {}
  ~HttpClient() { Close(); }

  // Returns the status; *body gets the response body when asked for.
  Result<int> Do(const std::string& method, const std::string& target, const std::string& extra_headers,
                 const std::string& body, std::string* out_body) {
    std::string req = method + " " + target + " HTTP/1.1\r\nHost: " + host_ +
                      "\r\nUser-Agent: chorus-bench\r\n" + extra_headers;
    if (!body.empty() || method == "POST") req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    req += "\r\n";
    req += body;
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool reused = fd_ >= 0;
      if (fd_ < 0) CHORUS_RETURN_IF_ERROR(Connect());
      auto status = Exchange(req, out_body);
      if (status.ok()) return status;
      Close();
      if (!reused) return status;
    }
    return Unavailable("request failed twice");
  }

 private:
  Status Connect() {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return Unavailable(std::string("socket: ") + std::strerror(errno));
    timeval tv{5, 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::connect(fd_, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_) != 0) {
      const std::string err = std::strerror(errno);
      Close();
      return Unavailable("connect: " + err);
    }
    return Status::Ok();
  }

  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  Result<int> Exchange(const std::string& req, std::string* out_body) {
    if (!WriteAll(fd_, req)) return Unavailable(std::string("send: ") + std::strerror(errno));
    HttpResponseParser parser;
    std::string response;  // head and body, kept only when the body is wanted
    while (true) {
      const ssize_t n = ::recv(fd_, buf_.data(), buf_.size(), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Unavailable(std::string("recv: ") + std::strerror(errno));
      HttpResponseParser::State state;
      if (n == 0) {
        state = parser.OnEof();
      } else {
        size_t consumed = 0;
        state = parser.Feed(buf_.data(), static_cast<size_t>(n), &consumed);
        if (out_body) response.append(buf_.data(), consumed);
      }
      if (state == HttpResponseParser::State::kError) return Unavailable("bad HTTP response");
      if (state == HttpResponseParser::State::kComplete) {
        if (out_body) {
          // No chunked answers are expected here; a chunked one keeps its framing lines, which
          // the metrics parser skips as unparsable.
          const size_t head_end = response.find("\r\n\r\n");
          *out_body = head_end == std::string::npos ? "" : response.substr(head_end + 4);
        }
        if (parser.close_after() || n == 0) Close();
        return parser.status();
      }
      if (n == 0) return Unavailable("connection closed mid-response");
    }
  }

  const sockaddr_in addr_;
  const std::string host_;
  std::vector<char> buf_;
  int fd_ = -1;
};

std::map<std::string, double> ScrapeMetrics(const sockaddr_in& addr, const std::string& host) {
  HttpClient client(addr, host);
  std::string body;
  auto status = client.Do("GET", "/metrics", "Connection: close\r\n", "", &body);
  if (!status.ok() || *status != 200) return {};
  return ParseLiveMetrics(body);
}

// Posts `rate` messages per second to the room until told to stop, in batches every 50 ms.
class Publisher {
 public:
  Publisher(const LiveFanoutOptions& o, const sockaddr_in& addr, std::string host)
      : options_(o), client_(addr, std::move(host)) {
    headers_ = "Content-Type: application/json\r\n";
    if (!o.publish_token.empty()) headers_ += "Authorization: Bearer " + o.publish_token + "\r\n";
    target_ = "/v1/rooms/" + o.room + "/messages";
  }

  void Start() {
    thread_ = std::thread([this] { Run(); });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  uint64_t sent() const { return sent_; }
  uint64_t accepted() const { return accepted_; }
  uint64_t non_2xx() const { return non_2xx_; }
  uint64_t errors() const { return errors_; }
  double elapsed_s() const { return elapsed_s_; }
  // The slowest publish request: a server whose HTTP path stalls behind fan-out shows here.
  double max_latency_ms() const { return static_cast<double>(max_latency_ns_) / 1e6; }

 private:
  void Run() {
    const int64_t start = SteadyNanos();
    uint64_t counter = 0;
    while (!stop_) {
      const int64_t now = SteadyNanos();
      const auto due = static_cast<uint64_t>(options_.rate * static_cast<double>(now - start) / 1e9);
      while (counter < due && !stop_) {
        const int n = static_cast<int>(std::min<uint64_t>(100, due - counter));
        const std::string body = MakePublishBody(n, &counter, options_.seed);
        sent_ += static_cast<uint64_t>(n);
        const int64_t sent_at = SteadyNanos();
        auto status = client_.Do("POST", target_, headers_, body, nullptr);
        max_latency_ns_ = std::max<int64_t>(max_latency_ns_, SteadyNanos() - sent_at);
        if (!status.ok()) {
          if (errors_++ < 3)
            std::fprintf(stderr, "live-fanout: publish failed: %s\n", status.status().ToString().c_str());
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        } else if (*status < 200 || *status > 299) {
          if (non_2xx_++ < 3) std::fprintf(stderr, "live-fanout: publish answered %d\n", *status);
        } else {
          accepted_ += static_cast<uint64_t>(n);
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    elapsed_s_ = static_cast<double>(SteadyNanos() - start) / 1e9;
  }

  const LiveFanoutOptions& options_;
  HttpClient client_;
  std::string headers_;
  std::string target_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> sent_{0}, accepted_{0}, non_2xx_{0}, errors_{0};
  double elapsed_s_ = 0;
  std::atomic<int64_t> max_latency_ns_{0};
};

struct Snapshot {
  double server_cpu = 0;
  double infra_cpu = 0;
  std::vector<double> node_cpu;  // by o.server_pids
  double clients_cpu = 0;
  MachineCpu machine;
  std::map<std::string, double> metrics;
  int64_t at = 0;
};

void ReadCpu(const LiveFanoutOptions& o, const std::vector<Child>& children, Snapshot* s) {
  s->at = SteadyNanos();
  for (const pid_t pid : o.server_pids) {
    s->node_cpu.push_back(ProcessCpu(pid));
    s->server_cpu += s->node_cpu.back();
  }
  for (const pid_t pid : o.infra_pids) s->infra_cpu += ProcessCpu(pid);
  for (const Child& c : children) s->clients_cpu += ProcessCpu(c.pid);
  s->machine = ReadMachineCpu();
}

}  // namespace

Result<Measurement> RunLiveFanout(const LiveFanoutOptions& o) {
  CHORUS_ASSIGN_OR_RETURN(HttpUrl url, ParseHttpUrl(o.url));
  if (o.subscribers < 1) return InvalidArgument("--subscribers must be at least 1");
  if (o.procs < 1 || o.procs > o.subscribers) return InvalidArgument("--procs must be 1..subscribers");
  if (!(o.rate > 0)) return InvalidArgument("--rate must be positive");
  if (o.duration <= std::chrono::nanoseconds::zero()) return InvalidArgument("--duration must be positive");
  if (o.ws_target.empty() || o.ws_target.front() != '/')
    return InvalidArgument("--ws-target must start with /");
  CHORUS_ASSIGN_OR_RETURN(sockaddr_in addr, Resolve(url.host, url.port));
  const std::string host = url.host + ":" + std::to_string(url.port);
  // Where subscribers connect (process i: subscriber_urls[i % n]), and every distinct node whose
  // /metrics are summed.
  std::vector<HttpUrl> sub_urls;
  for (const std::string& u : o.subscriber_urls) {
    CHORUS_ASSIGN_OR_RETURN(HttpUrl parsed, ParseHttpUrl(u));
    sub_urls.push_back(std::move(parsed));
  }
  if (sub_urls.empty()) sub_urls.push_back(url);
  std::vector<std::pair<sockaddr_in, std::string>> nodes;
  {
    std::set<std::string> seen;
    auto add_node = [&](const HttpUrl& u) -> Status {
      const std::string h = u.host + ":" + std::to_string(u.port);
      if (!seen.insert(h).second) return Status::Ok();
      CHORUS_ASSIGN_OR_RETURN(sockaddr_in a, Resolve(u.host, u.port));
      nodes.emplace_back(a, h);
      return Status::Ok();
    };
    CHORUS_RETURN_IF_ERROR(add_node(url));
    for (const HttpUrl& u : sub_urls) CHORUS_RETURN_IF_ERROR(add_node(u));
  }
  auto scrape_all = [&nodes] {
    std::map<std::string, double> sum;
    for (const auto& [a, h] : nodes) {
      for (const auto& [k, v] : ScrapeMetrics(a, h)) sum[k] += v;
    }
    return sum;
  };
  signal(SIGPIPE, SIG_IGN);

  // 1. Subscribers.
  std::vector<Child> children;
  struct Cleanup {
    std::vector<Child>& c;
    ~Cleanup() { StopChildren(c); }
  } cleanup{children};
  for (int i = 0; i < o.procs; ++i) {
    const int k = o.subscribers / o.procs + (i < o.subscribers % o.procs ? 1 : 0);
    const HttpUrl& sub = sub_urls[static_cast<size_t>(i) % sub_urls.size()];
    CHORUS_ASSIGN_OR_RETURN(
        Child child,
        SpawnClient(o.self_exe, {"live-clients", "--host", sub.host, "--port", std::to_string(sub.port),
                                 "--target", o.ws_target, "--room", o.room, "--connections",
                                 std::to_string(k), "--index", std::to_string(i)}));
    children.push_back(std::move(child));
  }
  const int64_t ready_deadline = SteadyNanos() + o.ready_timeout.count();
  uint64_t subscribed = 0, failed = 0;
  for (Child& c : children) {
    CHORUS_ASSIGN_OR_RETURN(std::string line, ReadLine(c, ready_deadline));
    unsigned long long s = 0, f = 0;
    if (std::sscanf(line.c_str(), "ready %llu %llu", &s, &f) != 2) {
      return Internal("unexpected line from a client process: " + line);
    }
    subscribed += s;
    failed += f;
  }
  std::fprintf(stderr, "live-fanout: %llu subscribed, %llu failed; publishing %.0f msg/s, warm-up %.1fs\n",
               static_cast<unsigned long long>(subscribed), static_cast<unsigned long long>(failed), o.rate,
               std::chrono::duration<double>(o.warmup).count());
  if (subscribed == 0) return Unavailable("no subscriber could subscribe");

  // 2-4. Publish, warm up, measure.
  Publisher publisher(o, addr, host);
  publisher.Start();
  std::this_thread::sleep_for(o.warmup);
  // The scrapes sit outside the CPU window: before it opens and after it closes.
  Snapshot before, after;
  before.metrics = scrape_all();
  ReadCpu(o, children, &before);
  for (Child& c : children) WriteAll(c.to, "start\n");
  for (Child& c : children) {
    CHORUS_ASSIGN_OR_RETURN(std::string line, ReadLine(c, SteadyNanos() + 10'000'000'000));
    if (line != "started") return Internal("unexpected line from a client process: " + line);
  }
  std::this_thread::sleep_for(o.duration);
  for (Child& c : children) WriteAll(c.to, "stop\n");
  ReadCpu(o, children, &after);
  after.metrics = scrape_all();
  publisher.Stop();

  // 5. Collect.
  LiveClientsResult total;
  const int64_t result_deadline = SteadyNanos() + 30'000'000'000;
  for (Child& c : children) {
    CHORUS_ASSIGN_OR_RETURN(std::string line, ReadLine(c, result_deadline));
    if (!line.starts_with("result ")) return Internal("unexpected line from a client process: " + line);
    nlohmann::json j = nlohmann::json::parse(line.substr(7), nullptr, false);
    CHORUS_ASSIGN_OR_RETURN(LiveClientsResult r, LiveClientsResult::FromJson(j));
    total.Merge(r);
  }

  const double window_s = static_cast<double>(after.at - before.at) / 1e9;
  const double server_cpu = after.server_cpu - before.server_cpu;
  const double busy = after.machine.busy - before.machine.busy;
  const double all = after.machine.total - before.machine.total;
  auto delta = [&](const std::string& key) -> uint64_t {
    auto a = after.metrics.find(key);
    auto b = before.metrics.find(key);
    const double v = (a == after.metrics.end() ? 0 : a->second) - (b == before.metrics.end() ? 0 : b->second);
    return v > 0 ? static_cast<uint64_t>(std::llround(v)) : 0;
  };

  Measurement m;
  m.throughput = window_s > 0 ? static_cast<double>(total.messages) / window_s : 0;
  m.unit = "deliveries/s";
  m.duration_s = window_s;
  m.counts = {
      {"subscribers", static_cast<uint64_t>(o.subscribers)},
      {"subscribed", total.subscribed},
      {"connect_errors", total.failed},
      {"disconnect_errors", total.disconnects},
      {"protocol_errors", total.protocol_errors},
      {"server_error_frames", total.server_errors},
      {"deliveries", total.messages},
      {"blocks_received", total.blocks},
      {"bytes_received", total.bytes},
      {"missed_blocks", total.missed_blocks},
      {"pings_answered", total.pings},
      {"publisher_accepted", publisher.accepted()},  // whole run, warm-up included
      {"publish_errors", publisher.errors() + publisher.non_2xx()},
      {"server_published", delta("published")},
      {"server_blocks", delta("blocks")},
      {"server_block_deliveries", delta("deliveries")},
      {"server_ws_dropped", delta("ws_dropped")},
      {"server_slow_consumer_closes", delta("slow_consumer_closes")},
  };
  uint64_t dropped = 0;
  for (const auto& [key, value] : after.metrics) {
    if (!key.starts_with("dropped_")) continue;
    m.counts["server_" + key] = delta(key);
    dropped += delta(key);
  }
  m.counts["server_dropped_by_rule"] = dropped;
  m.figures = {
      {"window_s", window_s},
      {"publish_rate", o.rate},
      {"publish_max_latency_ms", publisher.max_latency_ms()},
      {"blocks_per_subscriber_per_s",
       total.subscribed > 0 && window_s > 0
           ? static_cast<double>(total.blocks) / static_cast<double>(total.subscribed) / window_s
           : 0},
      {"messages_per_block",
       total.blocks > 0 ? static_cast<double>(total.messages) / static_cast<double>(total.blocks) : 0},
      {"clients_cpu_s", after.clients_cpu - before.clients_cpu},
      {"machine_busy_pct", all > 0 ? 100.0 * busy / all : 0},
  };
  const bool measured = std::any_of(o.server_pids.begin(), o.server_pids.end(), [](pid_t p) { return p > 0; });
  if (measured) {
    m.figures["server_cpu_s"] = server_cpu;
    m.figures["server_cpu_pct"] = window_s > 0 ? 100.0 * server_cpu / window_s : 0;
    m.figures["server_cpu_s_per_million_deliveries"] =
        total.messages > 0 ? server_cpu / (static_cast<double>(total.messages) / 1e6) : 0;
    if (o.server_pids.size() > 1) {
      for (size_t i = 0; i < o.server_pids.size() && i < after.node_cpu.size(); ++i) {
        m.figures["server_cpu_s_node" + std::to_string(i)] = after.node_cpu[i] - before.node_cpu[i];
      }
    }
  }
  m.figures["server_nodes"] = static_cast<double>(nodes.size());
  if (!o.infra_pids.empty()) {
    const double infra_cpu = after.infra_cpu - before.infra_cpu;
    m.figures["infra_cpu_s"] = infra_cpu;
    m.figures["infra_cpu_s_per_million_deliveries"] =
        total.messages > 0 ? infra_cpu / (static_cast<double>(total.messages) / 1e6) : 0;
    m.figures["total_cpu_s_per_million_deliveries"] =
        total.messages > 0 ? (server_cpu + infra_cpu) / (static_cast<double>(total.messages) / 1e6) : 0;
  }
  m.latency = total.latency;
  return m;
}

}  // namespace chorus::bench
