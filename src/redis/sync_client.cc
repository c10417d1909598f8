#include "redis/sync_client.h"

#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include "base/logging.h"
#include "base/metrics.h"

namespace chorus::redis {
namespace {

const std::shared_ptr<spdlog::logger>& Log() {
  static const std::shared_ptr<spdlog::logger> logger = GetLogger("redis");
  return logger;
}

SteadyTime Now() { return SystemClock::Instance().Now(); }

int64_t Millis(Duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

timeval ToTimeval(Duration d) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  return timeval{static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
}

struct ContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextDeleter>;

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

bool ParsePort(std::string_view text, int* port) {
  int value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value < 1 || value > 65535) return false;
  *port = value;
  return true;
}

bool ParseInt(std::string_view text, int64_t* out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *out);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty();
}

// "host:port" or "[v6]:port". An empty host is allowed here (MOVED may carry ":port" when the
// node does not know its own address); callers substitute one.
bool SplitAddress(std::string_view address, std::string* host, int* port) {
  const size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return false;
  std::string_view h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (!ParsePort(address.substr(colon + 1), port)) return false;
  host->assign(h);
  return true;
}

std::string JoinAddress(const std::string& host, int port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

// Where a command's keys are, for cluster routing and the cross-slot check.
enum class KeySpec {
  kFirst,           // args[1] (the default for unknown commands)
  kNone,            // no key: any master
  kSecond,          // args[2] (OBJECT ENCODING key, MEMORY USAGE key, XINFO STREAM key, ...)
  kAll,             // args[1..]
  kAllButLast,      // args[1..n-2] (BLPOP k1 k2 timeout)
  kEveryOther,      // args[1], args[3], ... (MSET k v k v)
  kFirstTwo,        // args[1], args[2] (RENAME src dst)
  kNumkeysAt1,      // numkeys = args[1], keys args[2..] (ZUNION, SINTERCARD, LMPOP)
  kNumkeysAt2,      // numkeys = args[2], keys args[3..] (EVAL script n ..., BLMPOP timeout n ...)
  kDestNumkeysAt2,  // args[1] and numkeys = args[2], keys args[3..] (ZUNIONSTORE dst n ...)
  kUnsupported,     // changes or depends on the connection's state: refused
};

KeySpec SpecOf(const std::string& upper_name) {
  static const std::unordered_map<std::string, KeySpec> kSpecs = [] {
    std::unordered_map<std::string, KeySpec> m;
    for (const char* n :
         {"MULTI",      "EXEC",       "DISCARD",     "WATCH",        "UNWATCH",      "SELECT",
          "AUTH",       "HELLO",      "QUIT",        "RESET",        "MONITOR",      "SUBSCRIBE",
          "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE", "ASKING",
          "READONLY",   "READWRITE",  "SYNC",        "PSYNC"}) {
      m[n] = KeySpec::kUnsupported;
    }
    for (const char* n :
         {"PING",         "ECHO",    "INFO",    "TIME",     "DBSIZE",    "CONFIG",   "CLUSTER", "SCRIPT",
          "FUNCTION",     "CLIENT",  "COMMAND", "FLUSHALL", "FLUSHDB",   "LASTSAVE", "SAVE",    "BGSAVE",
          "BGREWRITEAOF", "SLOWLOG", "LATENCY", "ROLE",     "RANDOMKEY", "KEYS",     "SCAN",    "PUBLISH",
          "SPUBLISH",     "PUBSUB",  "WAIT",    "ACL",      "MODULE",    "LOLWUT",   "SWAPDB",  "DEBUG"}) {
      m[n] = KeySpec::kNone;
    }
    for (const char* n : {"OBJECT", "MEMORY", "XINFO", "XGROUP"}) m[n] = KeySpec::kSecond;
    for (const char* n : {"MGET", "DEL", "UNLINK", "EXISTS", "TOUCH", "SINTER", "SUNION", "SDIFF",
                          "SINTERSTORE", "SUNIONSTORE", "SDIFFSTORE", "PFCOUNT", "PFMERGE"}) {
      m[n] = KeySpec::kAll;
    }
    for (const char* n : {"BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX"}) m[n] = KeySpec::kAllButLast;
    for (const char* n : {"MSET", "MSETNX"}) m[n] = KeySpec::kEveryOther;
    for (const char* n : {"RENAME", "RENAMENX", "SMOVE", "RPOPLPUSH", "BRPOPLPUSH", "LMOVE", "BLMOVE", "COPY",
                          "LCS", "ZRANGESTORE", "GEOSEARCHSTORE"}) {
      m[n] = KeySpec::kFirstTwo;
    }
    for (const char* n : {"ZUNION", "ZINTER", "ZDIFF", "SINTERCARD", "ZINTERCARD", "LMPOP", "ZMPOP"}) {
      m[n] = KeySpec::kNumkeysAt1;
    }
    for (const char* n :
         {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO", "BLMPOP", "BZMPOP"}) {
      m[n] = KeySpec::kNumkeysAt2;
    }
    for (const char* n : {"ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE"}) m[n] = KeySpec::kDestNumkeysAt2;
    return m;
  }();
  auto it = kSpecs.find(upper_name);
  return it == kSpecs.end() ? KeySpec::kFirst : it->second;
}

// Appends the keys of `args` (a command whose name is upper_name, spec not kUnsupported).
Status CollectKeys(const std::vector<std::string>& args, KeySpec spec, const std::string& upper_name,
                   std::vector<std::string_view>* keys) {
  const size_t n = args.size();
  auto numkeys = [&](size_t at, size_t first_key) -> Status {
    int64_t count = 0;
    if (at >= n || !ParseInt(args[at], &count) || count < 0) {
      return InvalidArgument("redis: " + upper_name + ": numkeys is missing or not a number");
    }
    if (static_cast<uint64_t>(count) > n - std::min(n, first_key)) {
      return InvalidArgument("redis: " + upper_name + ": numkeys is larger than the number of arguments");
    }
    for (size_t i = 0; i < static_cast<size_t>(count); ++i) keys->push_back(args[first_key + i]);
    return Status::Ok();
  };
  switch (spec) {
    case KeySpec::kUnsupported:
    case KeySpec::kNone:
      return Status::Ok();
    case KeySpec::kFirst:
      if (n >= 2) keys->push_back(args[1]);
      return Status::Ok();
    case KeySpec::kSecond:
      if (n >= 3) keys->push_back(args[2]);
      return Status::Ok();
    case KeySpec::kAll:
      for (size_t i = 1; i < n; ++i) keys->push_back(args[i]);
      return Status::Ok();
    case KeySpec::kAllButLast:
      for (size_t i = 1; i + 1 < n; ++i) keys->push_back(args[i]);
      return Status::Ok();
    case KeySpec::kEveryOther:
      for (size_t i = 1; i < n; i += 2) keys->push_back(args[i]);
      return Status::Ok();
    case KeySpec::kFirstTwo:
      for (size_t i = 1; i < n && i <= 2; ++i) keys->push_back(args[i]);
      return Status::Ok();
    case KeySpec::kNumkeysAt1:
      return numkeys(1, 2);
    case KeySpec::kNumkeysAt2:
      return numkeys(2, 3);
    case KeySpec::kDestNumkeysAt2:
      if (n >= 2) keys->push_back(args[1]);
      return numkeys(2, 3);
  }
  return Status::Ok();
}

// The status of a failed hiredis call on `c`; `saved_errno` is errno right after it. A socket
// timeout (SO_RCVTIMEO/SO_SNDTIMEO) surfaces as an I/O error with EAGAIN.
Status IoStatus(const redisContext& c, int saved_errno, const std::string& address, Duration timeout) {
  if (c.err == REDIS_ERR_IO && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)) {
    return DeadlineExceeded("redis " + address + ": no reply within " + std::to_string(Millis(timeout)) +
                            " ms");
  }
  if (c.err == REDIS_ERR_EOF) return Unavailable("redis " + address + ": connection closed by the server");
  return Unavailable("redis " + address + ": " + (c.err != 0 ? std::string(c.errstr) : "I/O error"));
}

// An idle pooled connection should have nothing to read; readable (EOF, RST, stray bytes) or in
// error means the server dropped it while it sat in the pool.
bool IsStale(const redisContext& c) {
  pollfd p{c.fd, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;
}

bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

}  // namespace

// ---- hashing ----------------------------------------------------------------------------------

uint16_t SyncRedis::Crc16(std::string_view bytes) {
  static constexpr std::array<uint16_t, 256> kTable = [] {
    std::array<uint16_t, 256> t{};
    for (int i = 0; i < 256; ++i) {
      auto crc = static_cast<uint16_t>(i << 8);
      for (int bit = 0; bit < 8; ++bit) {
        crc = static_cast<uint16_t>((crc & 0x8000) != 0 ? (crc << 1) ^ 0x1021 : crc << 1);
      }
      t[static_cast<size_t>(i)] = crc;
    }
    return t;
  }();
  uint16_t crc = 0;
  for (unsigned char c : bytes) crc = static_cast<uint16_t>((crc << 8) ^ kTable[((crc >> 8) ^ c) & 0xff]);
  return crc;
}

int SyncRedis::KeySlot(std::string_view key) {
  // Redis's rule: hash only what lies between the first '{' and the first '}' after it, when
  // that is non-empty; otherwise the whole key.
  const size_t open = key.find('{');
  if (open != std::string_view::npos) {
    const size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return Crc16(key) & (kSlots - 1);
}

// ---- connections ------------------------------------------------------------------------------

// One server and its pool. open_ counts connections that exist or are being opened (idle or
// checked out), so the pool never exceeds pool_size.
class SyncRedis::Node {
 public:
  Node(std::string host, int port, std::string address, const SyncRedisOptions& options)
      : host_(std::move(host)), port_(port), address_(std::move(address)), options_(options) {}

  const std::string& host() const { return host_; }
  const std::string& address() const { return address_; }
  Duration command_timeout() const { return options_.command_timeout; }

  // A connection for this caller alone: an idle one, or a new one. Waits up to command_timeout
  // when pool_size connections are all in use.
  Result<ContextPtr> Acquire() EXCLUDES(mu_) {
    ContextPtr reuse;
    {
      MutexLock lock(mu_);
      const SteadyTime deadline = Now() + options_.command_timeout;
      if (!free_.WaitUntil(mu_, deadline,
                           [this]() REQUIRES(mu_) { return !idle_.empty() || open_ < options_.pool_size; })) {
        return Unavailable("redis " + address_ + ": all " + std::to_string(options_.pool_size) +
                           " connections stayed busy for " +
                           std::to_string(Millis(options_.command_timeout)) + " ms");
      }
      if (!idle_.empty()) {
        reuse = std::move(idle_.back());
        idle_.pop_back();
      } else {
        ++open_;  // reserved; Connect() below fills it or Forget() gives it back
      }
    }
    if (reuse != nullptr) {
      if (!IsStale(*reuse)) return reuse;
      Log()->info("redis {}: pooled connection was closed by the server; reconnecting", address_);
      reuse.reset();  // its place in open_ is taken over by the new connection
    }
    Result<ContextPtr> fresh = Connect();
    if (!fresh.ok()) Forget();
    return fresh;
  }

  // Takes a connection back; one that saw any error is closed instead (its stream position is
  // unknown: a late reply could be read as the answer to a later command).
  void Release(ContextPtr c) EXCLUDES(mu_) {
    if (c == nullptr) return;
    if (c->err != 0) {
      c.reset();
      Forget();
      return;
    }
    MutexLock lock(mu_);
    idle_.push_back(std::move(c));
    free_.NotifyOne();
  }

  // One command on `c`, for the client's own bookkeeping (CLUSTER SLOTS, INFO).
  Result<RedisReply> Exchange(redisContext& c, std::vector<std::string> args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    errno = 0;
    ReplyPtr reply(static_cast<redisReply*>(
        redisCommandArgv(&c, static_cast<int>(args.size()), argv.data(), lens.data())));
    if (reply == nullptr) return IoStatus(c, errno, address_, options_.command_timeout);
    if (reply->type == REDIS_REPLY_ERROR) {
      return internal::ErrorReplyStatus(std::string(reply->str, reply->len));
    }
    return internal::ConvertReply(*reply);
  }

  ~Node() = default;  // idle connections close with idle_

 private:
  Result<ContextPtr> Connect() {
    ContextPtr c(redisConnectWithTimeout(host_.c_str(), port_, ToTimeval(options_.connect_timeout)));
    if (c == nullptr) return Unavailable("redis " + address_ + ": cannot allocate a hiredis context");
    if (c->err != 0) return Unavailable("redis " + address_ + ": cannot connect: " + c->errstr);
    if (redisSetTimeout(c.get(), ToTimeval(options_.command_timeout)) != REDIS_OK) {
      return Unavailable("redis " + address_ + ": cannot set the socket timeout: " + c->errstr);
    }
    // A peer that vanishes without a RST is noticed on an idle connection too.
    (void)redisEnableKeepAlive(c.get());
    if (!options_.password.empty()) {
      Result<RedisReply> auth = Exchange(*c, {"AUTH", options_.password});
      if (!auth.ok()) {
        return Unavailable("redis " + address_ + ": AUTH failed: " + auth.status().message());
      }
    }
    return c;
  }

  void Forget() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    --open_;
    free_.NotifyOne();
  }

  const std::string host_;
  const int port_;
  const std::string address_;
  const SyncRedisOptions& options_;  // the client's, which outlives its nodes' use

  Mutex mu_;
  CondVar free_;  // an idle connection or room for a new one appeared
  std::vector<ContextPtr> idle_ GUARDED_BY(mu_);
  size_t open_ GUARDED_BY(mu_) = 0;
};

// ---- slot map ---------------------------------------------------------------------------------

struct SyncRedis::SlotMap {
  SlotMap() { owner.fill(-1); }

  int IndexOf(const std::string& address) {
    auto it = std::find(masters.begin(), masters.end(), address);
    if (it != masters.end()) return static_cast<int>(it - masters.begin());
    masters.push_back(address);
    return static_cast<int>(masters.size() - 1);
  }

  std::vector<std::string> masters;   // "host:port"
  std::array<int16_t, kSlots> owner;  // index into masters; -1 = no master known
};

struct SyncRedis::Op {
  std::vector<std::string> args;
  int slot = -1;  // -1: no key (cluster mode: any master)
  std::optional<Result<RedisReply>> result;
  std::string moved_to;     // MOVED named this node: send there
  std::string ask_to;       // ASK named this node: ASKING + the command there, once
  std::string unreachable;  // its last connect failed; if the map still names it, give up
  Status last_error;
  int redirects = 0;
  int retries = 0;
};

// ---- SyncRedis --------------------------------------------------------------------------------

Result<std::unique_ptr<SyncRedis>> SyncRedis::Create(SyncRedisOptions options) {
  using Mode = SyncRedisOptions::Mode;
  if (options.seeds.empty()) return InvalidArgument("redis: no seed address");
  if (options.mode == Mode::kStandalone && options.seeds.size() != 1) {
    return InvalidArgument("redis: standalone mode takes exactly one address, got " +
                           std::to_string(options.seeds.size()));
  }
  if (options.pool_size == 0) return InvalidArgument("redis: pool_size must be at least 1");
  if (options.connect_timeout <= Duration::zero() || options.command_timeout <= Duration::zero()) {
    return InvalidArgument("redis: connect_timeout and command_timeout must be positive");
  }
  if (options.max_redirects < 1 || options.max_retries < 0 || options.retry_backoff < Duration::zero() ||
      options.min_refresh_interval < Duration::zero()) {
    return InvalidArgument("redis: need max_redirects >= 1, max_retries >= 0 and non-negative intervals");
  }
  std::vector<Endpoint> seeds;
  for (const std::string& s : options.seeds) {
    Endpoint e;
    if (!SplitAddress(s, &e.host, &e.port) || e.host.empty()) {
      return InvalidArgument("redis: seed '" + s + "' is not host:port");
    }
    e.address = JoinAddress(e.host, e.port);
    seeds.push_back(std::move(e));
  }

  auto commands =
      DefaultMetrics().Counter("chorus_redis_sync_commands_total",
                               "Commands completed by the synchronous Redis client, by result", {"result"});
  if (!commands.ok()) return commands.status();
  auto redirects = DefaultMetrics().Counter(
      "chorus_redis_cluster_redirects_total",
      "Redis Cluster answers that sent a command again: MOVED, ASK, or a TRYAGAIN/CLUSTERDOWN retry",
      {"kind"});
  if (!redirects.ok()) return redirects.status();

  std::unique_ptr<SyncRedis> client(new SyncRedis(std::move(options), std::move(seeds)));
  client->ok_count_ = &commands->WithLabels({"ok"});
  client->error_count_ = &commands->WithLabels({"error"});
  client->unavailable_count_ = &commands->WithLabels({"unavailable"});
  client->timeout_count_ = &commands->WithLabels({"timeout"});
  client->moved_count_ = &redirects->WithLabels({"moved"});
  client->ask_count_ = &redirects->WithLabels({"ask"});
  client->retry_count_ = &redirects->WithLabels({"retry"});

  const Mode mode = client->options_.mode;
  client->standalone_ = client->seeds_.front().address;
  if (mode == Mode::kAuto) {
    // The first seed that answers decides; a standalone server is then the only one used.
    Status last = Unavailable("redis: no seed answered");
    bool decided = false;
    for (const Endpoint& seed : client->seeds_) {
      std::shared_ptr<Node> node = client->NodeFor(seed.address);
      Result<ContextPtr> conn = node->Acquire();
      if (!conn.ok()) {
        last = conn.status();
        continue;
      }
      Result<RedisReply> info = node->Exchange(**conn, {"INFO", "cluster"});
      node->Release(std::move(*conn));
      if (!info.ok() || !info->is_string()) {
        last =
            info.ok() ? Internal("redis " + seed.address + ": INFO cluster is not a string") : info.status();
        continue;
      }
      client->cluster_ = info->str.find("cluster_enabled:1") != std::string::npos;
      client->standalone_ = seed.address;
      decided = true;
      break;
    }
    if (!decided) return last.WithContext("redis: cannot tell whether the servers form a cluster");
  } else {
    client->cluster_ = mode == Mode::kCluster;
  }
  if (client->cluster_) {
    // Without a map now, the first command loads it.
    Status loaded = client->RefreshSlotMap();
    if (!loaded.ok()) Log()->warn("redis cluster: no slot map yet: {}", loaded.ToString());
  }
  Log()->info(
      "redis: synchronous client for {} ({})",
      client->cluster_ ? std::to_string(client->seeds_.size()) + " cluster seed(s)" : client->standalone_,
      client->cluster_ ? "cluster" : "standalone");
  return client;
}

SyncRedis::SyncRedis(SyncRedisOptions options, std::vector<Endpoint> seeds)
    : options_(std::move(options)), seeds_(std::move(seeds)) {}

SyncRedis::~SyncRedis() = default;

std::shared_ptr<SyncRedis::Node> SyncRedis::NodeFor(const std::string& address) {
  MutexLock lock(nodes_mu_);
  auto it = nodes_.find(address);
  if (it != nodes_.end()) return it->second;
  std::string host;
  int port = 0;
  (void)SplitAddress(address, &host, &port);  // addresses reaching here were parsed already
  auto node = std::make_shared<Node>(std::move(host), port, address, options_);
  nodes_.emplace(address, node);
  return node;
}

std::shared_ptr<const SyncRedis::SlotMap> SyncRedis::CurrentMap() const {
  MutexLock lock(map_mu_);
  return map_;
}

std::optional<std::string> SyncRedis::MasterForSlot(int slot) const {
  if (slot < 0 || slot >= kSlots) return std::nullopt;
  std::shared_ptr<const SlotMap> map = CurrentMap();
  if (map == nullptr || map->owner[static_cast<size_t>(slot)] < 0) return std::nullopt;
  return map->masters[static_cast<size_t>(map->owner[static_cast<size_t>(slot)])];
}

uint64_t SyncRedis::slot_map_loads() const {
  MutexLock lock(map_mu_);
  return loads_;
}

Status SyncRedis::RefreshSlotMap() {
  if (!cluster_) return FailedPrecondition("redis: not in cluster mode");
  MutexLock lock(refresh_mu_);
  {
    MutexLock map_lock(map_mu_);
    last_refresh_attempt_ = Now();
  }
  return LoadSlotMap();
}

void SyncRedis::MaybeRefresh(bool wait) {
  auto too_soon = [this]() REQUIRES(map_mu_) {
    return last_refresh_attempt_.has_value() &&
           Now() - *last_refresh_attempt_ < options_.min_refresh_interval;
  };
  {
    MutexLock map_lock(map_mu_);
    if (too_soon()) return;
  }
  if (wait) {
    refresh_mu_.Lock();
  } else if (!refresh_mu_.TryLock()) {
    return;  // another thread is loading it
  }
  {
    MutexLock map_lock(map_mu_);
    if (too_soon()) {  // loaded while this thread waited
      refresh_mu_.Unlock();
      return;
    }
    last_refresh_attempt_ = Now();
  }
  Status loaded = LoadSlotMap();
  refresh_mu_.Unlock();
  if (!loaded.ok()) Log()->warn("redis cluster: slot map refresh failed: {}", loaded.ToString());
}

Status SyncRedis::LoadSlotMap() {
  // Ask the masters we know, then the seeds: after a reshard or failover the seeds may be gone.
  std::vector<std::string> candidates;
  if (std::shared_ptr<const SlotMap> current = CurrentMap(); current != nullptr)
    candidates = current->masters;
  for (const Endpoint& seed : seeds_) {
    if (std::find(candidates.begin(), candidates.end(), seed.address) == candidates.end()) {
      candidates.push_back(seed.address);
    }
  }
  Status last = Unavailable("redis cluster: no node to ask for the slot map");
  for (const std::string& address : candidates) {
    std::shared_ptr<Node> node = NodeFor(address);
    Result<ContextPtr> conn = node->Acquire();
    if (!conn.ok()) {
      last = conn.status();
      continue;
    }
    Result<RedisReply> slots = node->Exchange(**conn, {"CLUSTER", "SLOTS"});
    node->Release(std::move(*conn));
    if (!slots.ok()) {
      last = slots.status();
      continue;
    }
    // Parse defensively: this is network input.
    auto map = std::make_shared<SlotMap>();
    bool valid = slots->is_array();
    size_t assigned = 0;
    for (const RedisReply& range : slots->elements) {
      if (!valid) break;
      if (!range.is_array() || range.elements.size() < 3 || !range.elements[0].is_integer() ||
          !range.elements[1].is_integer() || !range.elements[2].is_array() ||
          range.elements[2].elements.size() < 2 || !range.elements[2].elements[0].is_string() ||
          !range.elements[2].elements[1].is_integer()) {
        valid = false;
        break;
      }
      const int64_t first = range.elements[0].integer;
      const int64_t last_slot = range.elements[1].integer;
      std::string host = range.elements[2].elements[0].str;
      const int64_t port = range.elements[2].elements[1].integer;
      if (first < 0 || last_slot >= kSlots || first > last_slot || port < 1 || port > 65535) {
        valid = false;
        break;
      }
      // An empty or "?" endpoint means the node does not know how it is reached: as we reached it.
      if (host.empty() || host == "?") host = node->host();
      const int index = map->IndexOf(JoinAddress(host, static_cast<int>(port)));
      for (int64_t s = first; s <= last_slot; ++s)
        map->owner[static_cast<size_t>(s)] = static_cast<int16_t>(index);
      assigned += static_cast<size_t>(last_slot - first + 1);
    }
    if (!valid) {
      last = Internal("redis " + address + ": unexpected CLUSTER SLOTS reply: " + slots->DebugString());
      continue;
    }
    if (assigned == 0) {
      last = Unavailable("redis " + address + ": CLUSTER SLOTS lists no slots (cluster not set up?)");
      continue;
    }
    {
      MutexLock map_lock(map_mu_);
      map_ = map;
      ++loads_;
    }
    // Pools of nodes that left the map (and are no seed) are closed once no call uses them.
    std::set<std::string> keep(map->masters.begin(), map->masters.end());
    for (const Endpoint& seed : seeds_) keep.insert(seed.address);
    MutexLock nodes_lock(nodes_mu_);
    std::erase_if(nodes_, [&](const auto& entry) { return keep.count(entry.first) == 0; });
    return Status::Ok();
  }
  return last;
}

void SyncRedis::ApplyMoved(const std::vector<std::pair<int, std::string>>& moved) {
  MutexLock lock(map_mu_);
  auto map = map_ != nullptr ? std::make_shared<SlotMap>(*map_) : std::make_shared<SlotMap>();
  for (const auto& [slot, address] : moved) {
    map->owner[static_cast<size_t>(slot)] = static_cast<int16_t>(map->IndexOf(address));
  }
  map_ = std::move(map);
}

void SyncRedis::Count(const Result<RedisReply>& result) {
  if (result.ok()) {
    ok_count_->Inc();
  } else if (result.status().code() == StatusCode::kDeadlineExceeded) {
    timeout_count_->Inc();
  } else if (result.status().code() == StatusCode::kUnavailable) {
    unavailable_count_->Inc();
  } else {
    error_count_->Inc();
  }
}

Result<RedisReply> SyncRedis::Command(std::vector<std::string> args) {
  std::vector<std::vector<std::string>> one;
  one.push_back(std::move(args));
  CHORUS_ASSIGN_OR_RETURN(auto results, Pipeline(std::move(one)));
  return std::move(results.front());
}

Result<RedisReply> SyncRedis::CommandForKey(std::string routing_key, std::vector<std::string> args) {
  std::vector<KeyedCommand> one;
  one.push_back(KeyedCommand{std::move(routing_key), std::move(args)});
  CHORUS_ASSIGN_OR_RETURN(auto results, PipelineForKeys(std::move(one)));
  return std::move(results.front());
}

Result<std::vector<Result<RedisReply>>> SyncRedis::Pipeline(std::vector<std::vector<std::string>> commands) {
  std::vector<Op> ops(commands.size());
  std::vector<std::string_view> keys;
  for (size_t i = 0; i < commands.size(); ++i) {
    std::vector<std::string>& args = commands[i];
    if (args.empty()) return InvalidArgument("redis: command " + std::to_string(i) + " is empty");
    const std::string name = Upper(args[0]);
    const KeySpec spec = SpecOf(name);
    if (spec == KeySpec::kUnsupported) {
      return InvalidArgument("redis: " + name + " is not supported: connections are pooled and shared");
    }
    if (cluster_) {
      keys.clear();
      CHORUS_RETURN_IF_ERROR(CollectKeys(args, spec, name, &keys));
      if (!keys.empty()) {
        ops[i].slot = KeySlot(keys.front());
        for (std::string_view key : keys) {
          if (const int slot = KeySlot(key); slot != ops[i].slot) {
            return InvalidArgument("redis: CROSSSLOT: keys of " + name + " hash to slots " +
                                   std::to_string(ops[i].slot) + " and " + std::to_string(slot) +
                                   "; give them one {hash tag}");
          }
        }
      }
    }
    ops[i].args = std::move(args);
  }
  return Run(std::move(ops));
}

Result<std::vector<Result<RedisReply>>> SyncRedis::PipelineForKeys(std::vector<KeyedCommand> commands) {
  std::vector<Op> ops(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    std::vector<std::string>& args = commands[i].args;
    if (args.empty()) return InvalidArgument("redis: command " + std::to_string(i) + " is empty");
    const std::string name = Upper(args[0]);
    if (SpecOf(name) == KeySpec::kUnsupported) {
      return InvalidArgument("redis: " + name + " is not supported: connections are pooled and shared");
    }
    if (cluster_) ops[i].slot = KeySlot(commands[i].routing_key);
    ops[i].args = std::move(args);
  }
  return Run(std::move(ops));
}

// One round sends every unfinished op to the node it belongs to now (all nodes written first,
// then all replies read), then looks at what came back: MOVED/ASK/TRYAGAIN/CLUSTERDOWN and
// connect failures leave the op unfinished for the next round. Every unfinished op has used up
// one redirect or retry per round, so the rounds are bounded.
Result<std::vector<Result<RedisReply>>> SyncRedis::Run(std::vector<Op> ops) {
  struct Batch {
    std::shared_ptr<Node> node;
    ContextPtr conn;
    std::vector<size_t> ops;
    std::vector<bool> asking;
  };
  Duration backoff = options_.retry_backoff;
  const int max_rounds = options_.max_redirects + options_.max_retries + 2;
  for (int round = 0; round < max_rounds; ++round) {
    std::shared_ptr<const SlotMap> map;
    if (cluster_) {
      map = CurrentMap();
      if (map == nullptr) {
        MaybeRefresh(/*wait=*/true);
        map = CurrentMap();
      }
    }

    // Group by node; std::map orders the nodes, which is the order connections are taken in.
    std::map<std::string, std::vector<size_t>> groups;
    for (size_t i = 0; i < ops.size(); ++i) {
      Op& op = ops[i];
      if (op.result.has_value()) continue;
      std::string target;
      if (!cluster_) {
        target = standalone_;
      } else if (!op.ask_to.empty()) {
        target = op.ask_to;
      } else if (!op.moved_to.empty()) {
        target = op.moved_to;
      } else if (map == nullptr) {
        op.result =
            Unavailable("redis cluster: no slot map (no seed or known master answered CLUSTER SLOTS)");
        continue;
      } else if (op.slot < 0) {
        target = map->masters.front();
      } else if (const int16_t owner = map->owner[static_cast<size_t>(op.slot)]; owner >= 0) {
        target = map->masters[static_cast<size_t>(owner)];
      } else {
        op.result = Unavailable("redis cluster: no master serves slot " + std::to_string(op.slot));
        continue;
      }
      if (!op.unreachable.empty() && target == op.unreachable) {
        op.result = op.last_error;  // nowhere else to send it
        continue;
      }
      groups[target].push_back(i);
    }
    if (groups.empty()) break;

    // Send.
    bool refresh = false;
    std::vector<Batch> batches;
    for (auto& [address, indices] : groups) {
      Batch batch;
      batch.node = NodeFor(address);
      Result<ContextPtr> conn = batch.node->Acquire();
      if (!conn.ok()) {
        // Nothing was sent: in a cluster the slot may have moved on (a failover); try the map again.
        for (size_t i : indices) {
          Op& op = ops[i];
          if (!cluster_ || ++op.redirects > options_.max_redirects) {
            op.result = conn.status();
            continue;
          }
          op.unreachable = address;
          op.last_error = conn.status();
          op.moved_to.clear();
          op.ask_to.clear();
          refresh = true;
        }
        continue;
      }
      batch.conn = std::move(*conn);
      redisContext* c = batch.conn.get();
      Status failed;
      for (size_t i : indices) {
        const bool asking = !ops[i].ask_to.empty();
        if (asking && redisAppendCommand(c, "ASKING") != REDIS_OK) {
          failed = Internal("redis " + address + ": cannot buffer ASKING");
          break;
        }
        std::vector<const char*> argv;
        std::vector<size_t> lens;
        argv.reserve(ops[i].args.size());
        lens.reserve(ops[i].args.size());
        for (const auto& a : ops[i].args) {
          argv.push_back(a.data());
          lens.push_back(a.size());
        }
        if (redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK) {
          failed = Internal("redis " + address + ": cannot buffer a command");
          break;
        }
        batch.ops.push_back(i);
        batch.asking.push_back(asking);
      }
      if (failed.ok()) {
        int done = 0;
        while (done == 0) {
          errno = 0;
          if (redisBufferWrite(c, &done) != REDIS_OK) {
            failed = IoStatus(*c, errno, address, options_.command_timeout);
            break;
          }
        }
      }
      if (!failed.ok()) {
        // Some of it may have reached the server: never re-sent.
        if (c->err == 0) c->err = REDIS_ERR_OTHER;  // its stream is unusable: Release closes it
        for (size_t i : indices) ops[i].result = failed;
        batch.node->Release(std::move(batch.conn));
        continue;
      }
      batches.push_back(std::move(batch));
    }

    // Receive.
    std::vector<std::pair<int, std::string>> moved;
    bool backoff_needed = false;
    for (Batch& batch : batches) {
      redisContext* c = batch.conn.get();
      const std::string& address = batch.node->address();
      for (size_t k = 0; k < batch.ops.size(); ++k) {
        Op& op = ops[batch.ops[k]];
        void* raw = nullptr;
        errno = 0;
        if (batch.asking[k] && redisGetReply(c, &raw) == REDIS_OK) {  // ASKING's +OK
          freeReplyObject(raw);
          raw = nullptr;
          errno = 0;
        }
        if (c->err != 0 || redisGetReply(c, &raw) != REDIS_OK) {
          const Status failed = IoStatus(*c, errno, address, options_.command_timeout);
          for (size_t rest = k; rest < batch.ops.size(); ++rest) ops[batch.ops[rest]].result = failed;
          break;
        }
        ReplyPtr reply(static_cast<redisReply*>(raw));
        op.ask_to.clear();
        op.unreachable.clear();
        if (reply == nullptr) {
          op.result = Internal("redis " + address + ": no reply object");
          continue;
        }
        if (reply->type != REDIS_REPLY_ERROR) {
          op.result = internal::ConvertReply(*reply);
          continue;
        }
        const std::string text(reply->str, reply->len);
        const bool is_moved = StartsWith(text, "MOVED ");
        const bool is_ask = StartsWith(text, "ASK ");
        if (cluster_ && (is_moved || is_ask)) {
          // "MOVED <slot> <host>:<port>"; a host may be empty when the node does not know it.
          const size_t space = text.find(' ', is_moved ? 6 : 4);
          int64_t slot = -1;
          std::string host;
          int port = 0;
          if (space == std::string::npos ||
              !ParseInt(std::string_view(text).substr(is_moved ? 6 : 4, space - (is_moved ? 6 : 4)), &slot) ||
              slot < 0 || slot >= kSlots ||
              !SplitAddress(std::string_view(text).substr(space + 1), &host, &port)) {
            op.result = Internal("redis " + address + ": unparsable redirect: " + text);
            continue;
          }
          if (host.empty()) host = batch.node->host();
          if (++op.redirects > options_.max_redirects) {
            op.result = Unavailable("redis cluster: more than " + std::to_string(options_.max_redirects) +
                                    " redirects; last: " + text);
            continue;
          }
          const std::string to = JoinAddress(host, port);
          if (is_moved) {
            moved_count_->Inc();
            op.moved_to = to;
            moved.emplace_back(static_cast<int>(slot), to);
          } else {
            ask_count_->Inc();
            op.ask_to = to;
          }
          continue;
        }
        if (cluster_ && (StartsWith(text, "TRYAGAIN") || StartsWith(text, "CLUSTERDOWN"))) {
          if (++op.retries <= options_.max_retries) {
            retry_count_->Inc();
            backoff_needed = true;
            continue;
          }
        }
        op.result = internal::ErrorReplyStatus(text);
      }
      batch.node->Release(std::move(batch.conn));
    }

    if (!moved.empty()) {
      ApplyMoved(moved);
      refresh = true;
    }
    if (refresh) MaybeRefresh(/*wait=*/false);
    if (backoff_needed) {
      std::this_thread::sleep_for(backoff);
      backoff *= 2;
    }
  }

  std::vector<Result<RedisReply>> results;
  results.reserve(ops.size());
  for (Op& op : ops) {
    if (!op.result.has_value()) op.result = Unavailable("redis cluster: gave up after too many redirects");
    Count(*op.result);
    results.push_back(std::move(*op.result));
  }
  return results;
}

}  // namespace chorus::redis
