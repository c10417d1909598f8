#include "likes_redis_peer.h"

#include <hiredis/read.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <deque>
#include <vector>

#include "http_closed_loop.h"

namespace chorus::bench {

Status ParseRedisAddress(std::string_view text, LikesRedisOptions* options) {
  const size_t colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return InvalidArgument("--redis expects host:port, got '" + std::string(text) + "'");
  }
  const std::string_view port = text.substr(colon + 1);
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value == 0 || value > 65535) {
    return InvalidArgument("bad port in --redis '" + std::string(text) + "'");
  }
  options->host = std::string(text.substr(0, colon));
  options->port = static_cast<uint16_t>(value);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Commands

void AppendRespCommand(std::string* out, std::initializer_list<std::string_view> args) {
  char buf[24];
  auto append_len = [&](char tag, size_t n) {
    out->push_back(tag);
    const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
    out->append(buf, static_cast<size_t>(end - buf));
    out->append("\r\n");
  };
  append_len('*', args.size());
  for (const std::string_view arg : args) {
    append_len('$', arg.size());
    out->append(arg);
    out->append("\r\n");
  }
}

namespace {

// Small fixed-size text buffers for keys and members: no allocation per command.
class Text {
 public:
  Text& Add(std::string_view s) {
    const size_t n = std::min(s.size(), sizeof buf_ - len_);
    s.copy(buf_ + len_, n);
    len_ += n;
    return *this;
  }
  Text& Add(uint64_t v) {
    const auto [end, ec] = std::to_chars(buf_ + len_, buf_ + sizeof buf_, v);
    if (ec == std::errc()) len_ = static_cast<size_t>(end - buf_);
    return *this;
  }
  Text& Add(int64_t v) {
    const auto [end, ec] = std::to_chars(buf_ + len_, buf_ + sizeof buf_, v);
    if (ec == std::errc()) len_ = static_cast<size_t>(end - buf_);
    return *this;
  }
  std::string_view view() const { return {buf_, len_}; }

 private:
  char buf_[96];
  size_t len_ = 0;
};

}  // namespace

size_t AppendLikesRedisCommands(const LikesOp& op, const LikesRedisKeys& keys, int64_t time_ms,
                                std::string* out) {
  const std::string_view b = keys.business;
  size_t replies = 0;
  switch (op.kind) {
    case LikesOpKind::kWrite:
      for (const LikeActionSpec& a : op.actions) {
        Text user_key, entity_member, count_key;
        user_key.Add("user:likes:").Add(b).Add(":u").Add(a.user);
        entity_member.Add("e").Add(a.entity);
        count_key.Add("count:").Add(b).Add(":e").Add(a.entity);
        Text score;
        score.Add(time_ms);
        if (a.like) {
          AppendRespCommand(out, {"ZADD", user_key.view(), score.view(), entity_member.view()});
        } else {
          AppendRespCommand(out, {"ZREM", user_key.view(), entity_member.view()});
        }
        AppendRespCommand(out, {"HINCRBY", count_key.view(), "likes", a.like ? "1" : "-1"});
        replies += 2;
        if (keys.likers) {
          Text likers_key, user_member;
          likers_key.Add("entity:likers:").Add(b).Add(":e").Add(a.entity);
          user_member.Add("u").Add(a.user);
          if (a.like) {
            AppendRespCommand(out, {"ZADD", likers_key.view(), score.view(), user_member.view()});
          } else {
            AppendRespCommand(out, {"ZREM", likers_key.view(), user_member.view()});
          }
          ++replies;
        }
        if (keys.owners > 0) {
          Text received_key;
          received_key.Add("received:").Add(b).Add(":o").Add(a.entity % keys.owners);
          AppendRespCommand(out, {"HINCRBY", received_key.view(), "likes", a.like ? "1" : "-1"});
          ++replies;
        }
      }
      break;
    case LikesOpKind::kState: {
      Text user_key;
      user_key.Add("user:likes:").Add(b).Add(":u").Add(op.user);
      for (const uint64_t e : op.entities) {
        Text member;
        member.Add("e").Add(e);
        AppendRespCommand(out, {"ZSCORE", user_key.view(), member.view()});
        ++replies;
      }
      break;
    }
    case LikesOpKind::kCounts:
      for (const uint64_t e : op.entities) {
        Text count_key;
        count_key.Add("count:").Add(b).Add(":e").Add(e);
        AppendRespCommand(out, {"HMGET", count_key.view(), "likes", "dislikes"});
        ++replies;
      }
      break;
  }
  return replies;
}

// ---------------------------------------------------------------------------------------------
// The pipelined client loop

namespace {

constexpr int64_t kBackoffNs = 10'000'000;

int64_t WallMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One load thread's connections. Everything here is touched by that thread only.
class RedisLoop {
 public:
  RedisLoop(const LikesRedisOptions& options, const LikesRedisKeys& keys, const sockaddr_in& addr,
            LikesOpGenerator& generator, int connections, const LikesWindow& window, LikesPhaseResult* result)
      : options_(options),
        keys_(keys),
        addr_(addr),
        generator_(generator),
        window_(window),
        result_(result),
        conns_(static_cast<size_t>(connections)),
        buf_(size_t{64} * 1024) {}

  ~RedisLoop() {
    for (Conn& c : conns_) {
      CloseFd(c);
      if (c.reader != nullptr) redisReaderFree(c.reader);
    }
    if (epfd_ >= 0) ::close(epfd_);
  }

  int64_t Run();  // returns when it stopped (steady ns)

 private:
  struct InFlight {
    LikesOpKind kind = LikesOpKind::kWrite;
    bool spike = false;
    uint32_t items = 0;
    uint32_t replies_left = 0;
    uint32_t errors = 0;
    uint32_t liked = 0;
    int64_t start = 0;
  };
  struct Conn {
    int fd = -1;
    bool connecting = false;
    bool want_write = false;
    bool done = false;
    int64_t connect_start = 0;
    int64_t retry_at = 0;
    redisReader* reader = nullptr;
    std::string out;
    size_t written = 0;
    std::deque<InFlight> in_flight;
  };

  void Connect(Conn& c, int64_t now);
  void CloseFd(Conn& c);
  void Fail(Conn& c, int64_t now);
  void Finish(Conn& c);
  void Fill(Conn& c, int64_t now);
  void Flush(Conn& c, int64_t now);
  void OnReadable(Conn& c);
  void OnReply(Conn& c, int type, int64_t now);
  void SetInterest(Conn& c, bool write);
  void CheckTimers(int64_t now);

  const LikesRedisOptions& options_;
  const LikesRedisKeys& keys_;
  const sockaddr_in addr_;
  LikesOpGenerator& generator_;
  const LikesWindow window_;
  LikesPhaseResult* result_;
  std::vector<Conn> conns_;  // never resized: epoll events point into it
  std::vector<char> buf_;
  LikesOp op_;
  int epfd_ = -1;
  bool exhausted_ = false;  // the generator has nothing more this phase
  size_t finished_ = 0;
};

int64_t RedisLoop::Run() {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) {
    result_->transport.connect_errors += conns_.size();
    return SteadyNowNanos();
  }
  const int64_t start = SteadyNowNanos();
  for (Conn& c : conns_) Connect(c, start);
  std::vector<epoll_event> events(256);
  int64_t next_check = start;
  int64_t now = start;
  while (finished_ < conns_.size()) {
    now = SteadyNowNanos();
    if (now >= window_.end_ns) break;
    if (now >= next_check) {
      CheckTimers(now);
      next_check = now + 10'000'000;
    }
    const int wait_ms = static_cast<int>(std::min<int64_t>(10, (window_.end_ns - now) / 1'000'000 + 1));
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
          ++result_->transport.connect_errors;
          Fail(c, SteadyNowNanos());
          continue;
        }
        c.connecting = false;
        SetInterest(c, false);
        const int64_t t = SteadyNowNanos();
        Fill(c, t);
        if (c.fd >= 0) Flush(c, t);
        continue;
      }
      if ((ev & EPOLLOUT) && c.want_write) Flush(c, SteadyNowNanos());
      if (c.fd >= 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) OnReadable(c);
    }
  }
  return std::min(std::max(now, SteadyNowNanos()), window_.end_ns);
}

void RedisLoop::Connect(Conn& c, int64_t now) {
  c.connecting = false;
  c.want_write = false;
  c.connect_start = now;
  c.out.clear();
  c.written = 0;
  c.in_flight.clear();
  if (c.reader != nullptr) redisReaderFree(c.reader);
  c.reader = redisReaderCreateWithFunctions(nullptr);  // replies are bare types: no objects
  c.fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c.reader == nullptr || c.fd < 0) {
    ++result_->transport.connect_errors;
    CloseFd(c);
    c.retry_at = now + kBackoffNs;
    return;
  }
  const int one = 1;
  setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const int rc = ::connect(c.fd, reinterpret_cast<const sockaddr*>(&addr_), sizeof addr_);
  if (rc != 0 && errno != EINPROGRESS) {
    ++result_->transport.connect_errors;
    CloseFd(c);
    c.retry_at = now + kBackoffNs;
    return;
  }
  c.connecting = true;
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT;
  ev.data.ptr = &c;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, c.fd, &ev) != 0) {
    ++result_->transport.connect_errors;
    CloseFd(c);
    c.retry_at = now + kBackoffNs;
  }
}

void RedisLoop::CloseFd(Conn& c) {
  if (c.fd >= 0) {
    ::close(c.fd);
    c.fd = -1;
  }
  c.connecting = false;
  c.want_write = false;
}

void RedisLoop::Fail(Conn& c, int64_t now) {
  CloseFd(c);
  c.in_flight.clear();  // lost with the connection; the error is already counted
  c.out.clear();
  c.written = 0;
  c.retry_at = now + kBackoffNs;
  if (exhausted_) Finish(c);
}

void RedisLoop::Finish(Conn& c) {
  if (c.done) return;
  CloseFd(c);
  c.done = true;
  ++finished_;
}

void RedisLoop::SetInterest(Conn& c, bool write) {
  epoll_event ev{};
  ev.events = EPOLLIN | (write ? EPOLLOUT : 0u);
  ev.data.ptr = &c;
  epoll_ctl(epfd_, EPOLL_CTL_MOD, c.fd, &ev);
  c.want_write = write;
}

void RedisLoop::Fill(Conn& c, int64_t now) {
  const int64_t time_ms = WallMillis();
  while (!exhausted_ && c.in_flight.size() < static_cast<size_t>(options_.pipeline)) {
    if (!generator_.Next(now, &op_)) {
      exhausted_ = true;
      break;
    }
    InFlight f;
    f.kind = op_.kind;
    f.spike = op_.spike;
    f.items = static_cast<uint32_t>(op_.items());
    f.replies_left = static_cast<uint32_t>(AppendLikesRedisCommands(op_, keys_, time_ms, &c.out));
    f.start = now;
    c.in_flight.push_back(f);
  }
  if (exhausted_ && c.in_flight.empty()) Finish(c);
}

void RedisLoop::Flush(Conn& c, int64_t now) {
  while (c.written < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + c.written, c.out.size() - c.written, MSG_NOSIGNAL);
    if (n > 0) {
      c.written += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!c.want_write) SetInterest(c, true);
      return;
    }
    ++result_->transport.write_errors;
    Fail(c, now);
    return;
  }
  c.out.clear();
  c.written = 0;
  if (c.want_write) SetInterest(c, false);
}

void RedisLoop::OnReply(Conn& c, int type, int64_t now) {
  InFlight& f = c.in_flight.front();
  if (type == REDIS_REPLY_ERROR) ++f.errors;
  if (f.kind == LikesOpKind::kState && type == REDIS_REPLY_STRING) ++f.liked;  // a score: liked
  if (--f.replies_left > 0) return;
  if (now >= window_.record_from_ns && now < window_.end_ns) {
    result_->Record(f.kind, f.spike, /*ok=*/true, f.items, f.errors, f.liked, now - f.start);
  }
  c.in_flight.pop_front();
}

void RedisLoop::OnReadable(Conn& c) {
  const ssize_t n = ::recv(c.fd, buf_.data(), buf_.size(), 0);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
  const int64_t now = SteadyNowNanos();
  if (n <= 0) {
    ++result_->transport.read_errors;
    Fail(c, now);
    return;
  }
  if (now >= window_.record_from_ns) result_->transport.bytes_read += static_cast<uint64_t>(n);
  if (redisReaderFeed(c.reader, buf_.data(), static_cast<size_t>(n)) != 0) {
    ++result_->transport.parse_errors;
    Fail(c, now);
    return;
  }
  while (true) {
    void* reply = nullptr;
    if (redisReaderGetReply(c.reader, &reply) != 0) {
      ++result_->transport.parse_errors;
      Fail(c, now);
      return;
    }
    if (reply == nullptr) break;
    if (c.in_flight.empty()) {  // a reply nobody asked for
      ++result_->transport.parse_errors;
      Fail(c, now);
      return;
    }
    OnReply(c, static_cast<int>(reinterpret_cast<intptr_t>(reply)), now);
  }
  Fill(c, now);
  if (c.fd >= 0) Flush(c, now);
}

void RedisLoop::CheckTimers(int64_t now) {
  for (Conn& c : conns_) {
    if (c.done) continue;
    if (c.fd < 0) {
      if (now >= c.retry_at) Connect(c, now);
    } else if (c.connecting ? now - c.connect_start > window_.timeout_ns
                            : !c.in_flight.empty() && now - c.in_flight.front().start > window_.timeout_ns) {
      ++result_->transport.timeout_errors;
      Fail(c, now);
    }
  }
}

class LikesRedisDriver final : public LikesDriver {
 public:
  LikesRedisDriver(LikesRedisOptions options, LikesRedisKeys keys, sockaddr_in addr)
      : options_(std::move(options)), keys_(std::move(keys)), addr_(addr) {}

  void RunThread(LikesOpGenerator& generator, int connections, const LikesWindow& window,
                 LikesPhaseResult* result) override {
    RedisLoop loop(options_, keys_, addr_, generator, connections, window, result);
    const int64_t ended = loop.Run();
    result->elapsed_s = static_cast<double>(ended - window.record_from_ns) / 1e9;
  }

 private:
  const LikesRedisOptions options_;
  const LikesRedisKeys keys_;
  const sockaddr_in addr_;
};

}  // namespace

Result<std::unique_ptr<LikesDriver>> MakeLikesRedisDriver(const LikesRedisOptions& options,
                                                          const LikesWorkload& workload) {
  if (options.pipeline < 1 || options.pipeline > 10000) {
    return InvalidArgument("--pipeline must be 1..10000");
  }
  CHORUS_ASSIGN_OR_RETURN(sockaddr_in addr, ResolveIpv4(options.host, options.port));
  LikesRedisKeys keys;
  keys.business = workload.business;
  keys.owners = workload.owners;
  keys.likers = options.likers;
  return std::unique_ptr<LikesDriver>(new LikesRedisDriver(options, std::move(keys), addr));
}

}  // namespace chorus::bench
