// SyncRedis: a blocking, thread-safe Redis client for one server or a Redis Cluster, built on
// hiredis's synchronous API. It serves callers that already block (worker threads, the likes
// cache layer beside its MariaDB store); shard code uses the asynchronous RedisClient instead.
//
// Contract of Command(args) and Pipeline(commands):
//   - Safe from any number of threads at once. A call blocks the calling thread; every wait in
//     it is bounded (see "Time bounds").
//   - Replies are RedisReply values (reply.h). A top-level error reply becomes a Status exactly
//     as in RedisClient: kUnavailable for LOADING, BUSY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN,
//     kInternal otherwise, message "redis: " + the server's text. Errors nested in an array
//     reply stay elements of type kError.
//   - Connection problems (refused, reset, closed, AUTH failed) are kUnavailable; a reply not
//     read within command_timeout is kDeadlineExceeded. Either way the connection is dropped (a
//     late reply must never be read as the answer to a later command) and the next use of that
//     node connects anew. A command that failed this way may or may not have been executed.
//     Nothing is re-sent after it may have reached the server: only commands that were never
//     written (the connect failed) or that the cluster refused (MOVED, ASK, TRYAGAIN,
//     CLUSTERDOWN) are sent again.
//   - Pipeline(commands) sends every command, grouped by node, pipelined on one connection per
//     node (all nodes written first, then all replies read, so a batch costs about one round
//     trip), and returns one Result per command in the original order. The outer Result fails
//     only when the batch itself is invalid (an empty or unsupported command, a cross-slot
//     command): then nothing is sent. Commands of one batch on different nodes are not atomic
//     together, and no ordering holds between nodes; on one node they run in batch order.
//   - Connection-state commands are refused with kInvalidArgument, because connections are
//     pooled and shared: MULTI, EXEC, DISCARD, WATCH, UNWATCH, SELECT, AUTH, HELLO, QUIT, RESET,
//     MONITOR and the (P|S)SUBSCRIBE family. Use EVAL for atomic multi-key updates. Blocking
//     commands (BLPOP...) work but their timeout must stay below command_timeout.
//
// Cluster mode:
//   - A key's slot is CRC16-XMODEM(key) mod 16384, hashing only the part between the first '{'
//     and the next '}' when that part is non-empty (KeySlot()). The slot map (slot -> master) is
//     an immutable snapshot loaded with CLUSTER SLOTS from any known master or seed and swapped
//     whole; readers never wait for a refresh.
//   - Routing key: for ordinary commands the key is args[1]. Known multi-key commands (MGET,
//     MSET, DEL, EXISTS, UNLINK, TOUCH, RENAME, SMOVE, LMOVE, RPOPLPUSH, COPY, SINTER/SUNION/
//     SDIFF[STORE], ZUNION/ZINTER/ZDIFF[STORE], PFCOUNT, PFMERGE, EVAL/EVALSHA/FCALL with their
//     numkeys, ...) must have all their keys in one slot (use hash tags: `{user1000}.a`,
//     `{user1000}.b`), else kInvalidArgument before anything is sent. OBJECT, MEMORY USAGE,
//     XINFO and XGROUP route on args[2]. Commands without a key (PING, INFO, DBSIZE, TIME,
//     CONFIG, CLUSTER, SCRIPT, FUNCTION, CLIENT, COMMAND, FLUSHALL, FLUSHDB, EVAL with 0 keys,
//     ...) go to ONE master, not to all of them. For any other command whose key is not args[1]
//     (XREAD, XREADGROUP, SORT ... STORE, GEORADIUS ... STORE, ...) pass the key explicitly:
//     CommandForKey() / PipelineForKeys(); then no key checks are made.
//     A command routed on the wrong key still works if its keys share a slot: the server
//     answers MOVED and the client follows it.
//   - `-MOVED slot host:port`: the command is sent again to host:port, the slot is re-pointed
//     there in the map at once, and a full map refresh is started (at most one per
//     min_refresh_interval, and only by one thread at a time; others keep using the map).
//   - `-ASK slot host:port`: ASKING then the command are sent to host:port, once, and the map
//     is left as it is (the slot is only being migrated).
//   - TRYAGAIN and CLUSTERDOWN are retried up to max_retries times after retry_backoff,
//     doubling; then they are returned as kUnavailable. MOVED, ASK and failed connects together
//     count against max_redirects per command; past it, kUnavailable.
//   - A master that refuses connections triggers a map refresh (rate-limited) and, if the slot
//     moved to another master (a failover), the unsent commands go there; else kUnavailable.
//   - Only masters are used (no READONLY reads from replicas).
//
// Connections: per node a pool of at most pool_size hiredis contexts, opened on first use. A
// call holds at most one connection per node and takes them in address order, so callers
// cannot deadlock each other; a call that finds every connection of a node in use waits up to
// command_timeout, then fails with kUnavailable. A pooled connection that turns readable while
// idle (the server closed it, e.g. it restarted) is dropped before use instead of failing the
// command, so a restarted server is used again on the very next call.
//
// Time bounds: connecting (TCP + AUTH) is bounded by connect_timeout per attempt (host names are
// resolved by a blocking getaddrinfo that hiredis does not bound: prefer IP addresses); every
// socket read or write by command_timeout. A call therefore blocks at most about
// (max_redirects + max_retries + 1) x (connect_timeout + command_timeout) plus the backoffs in
// the worst case, and about one round trip in the common one.
//
// Not owned: nothing; SyncRedis owns its connections and closes them when destroyed. It must not
// be destroyed while a call is running.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "base/thread_annotations.h"
#include "redis/reply.h"

namespace chorus {
class Counter;
}

namespace chorus::redis {

struct SyncRedisOptions {
  enum class Mode {
    kAuto,        // ask the first seed that answers (INFO cluster); Create() fails if none does
    kStandalone,  // one server: seeds must hold exactly one address; Create() connects to nothing
    kCluster,     // Redis Cluster; Create() tries to load the slot map but succeeds without it
  };

  // "host:port" ("[::1]:6379" for IPv6). Cluster: any subset of the nodes.
  std::vector<std::string> seeds;
  Mode mode = Mode::kAuto;
  std::string password;  // empty = no AUTH
  Duration connect_timeout = std::chrono::seconds(1);
  Duration command_timeout = std::chrono::seconds(1);
  size_t pool_size = 4;  // connections per node
  int max_redirects = 5;
  int max_retries = 3;  // TRYAGAIN / CLUSTERDOWN
  Duration retry_backoff = std::chrono::milliseconds(10);
  Duration min_refresh_interval = std::chrono::milliseconds(100);
};

class SyncRedis {
 public:
  static constexpr int kSlots = 16384;

  // A command with an explicit routing key (cluster mode; ignored on one server).
  struct KeyedCommand {
    std::string routing_key;
    std::vector<std::string> args;
  };

  // kInvalidArgument for no seed, an address that is not host:port, several seeds in
  // kStandalone, a zero pool_size, non-positive timeouts or max_redirects < 1. In kAuto mode
  // kUnavailable when no seed answers.
  static Result<std::unique_ptr<SyncRedis>> Create(SyncRedisOptions options);
  ~SyncRedis();
  SyncRedis(const SyncRedis&) = delete;
  SyncRedis& operator=(const SyncRedis&) = delete;

  // One command, e.g. {"SET", key, value}; arguments are binary-safe.
  Result<RedisReply> Command(std::vector<std::string> args);
  // One command routed on `routing_key` (see the header comment).
  Result<RedisReply> CommandForKey(std::string routing_key, std::vector<std::string> args);

  // Many commands; one Result per command, in order (see the header comment).
  Result<std::vector<Result<RedisReply>>> Pipeline(std::vector<std::vector<std::string>> commands);
  Result<std::vector<Result<RedisReply>>> PipelineForKeys(std::vector<KeyedCommand> commands);

  bool cluster() const { return cluster_; }

  // Cluster mode: the master the current map names for `slot` ("host:port"), if any.
  std::optional<std::string> MasterForSlot(int slot) const EXCLUDES(map_mu_);
  // Cluster mode: reloads the slot map now, ignoring the rate limit. kUnavailable if no known
  // node answers CLUSTER SLOTS with a usable map.
  Status RefreshSlotMap() EXCLUDES(refresh_mu_, map_mu_);
  // How many full slot-map loads succeeded so far (for tests and diagnostics).
  uint64_t slot_map_loads() const EXCLUDES(map_mu_);

  // CRC16/XMODEM (polynomial 0x1021, initial value 0), as Redis Cluster uses it.
  static uint16_t Crc16(std::string_view bytes);
  // The cluster slot of `key`, honouring {hash tags}.
  static int KeySlot(std::string_view key);

 private:
  struct Endpoint {
    std::string host;
    int port = 0;
    std::string address;  // "host:port", the node's identity in the map and the pool table
  };
  class Node;  // one server: its address and connection pool
  struct Op;   // one command of a call, with its routing state
  struct SlotMap;

  SyncRedis(SyncRedisOptions options, std::vector<Endpoint> seeds);

  Result<std::vector<Result<RedisReply>>> Run(std::vector<Op> ops);
  std::shared_ptr<Node> NodeFor(const std::string& address) EXCLUDES(nodes_mu_);
  std::shared_ptr<const SlotMap> CurrentMap() const EXCLUDES(map_mu_);
  // Loads the map unless one was loaded less than min_refresh_interval ago or another thread is
  // loading it (then returns at once), or `force`. `wait` blocks behind a running load instead.
  void MaybeRefresh(bool wait) EXCLUDES(refresh_mu_, map_mu_);
  Status LoadSlotMap() REQUIRES(refresh_mu_) EXCLUDES(map_mu_);
  // Re-points slots at the addresses MOVED named, in one copy of the map.
  void ApplyMoved(const std::vector<std::pair<int, std::string>>& moved) EXCLUDES(map_mu_);
  void Count(const Result<RedisReply>& result);

  const SyncRedisOptions options_;
  const std::vector<Endpoint> seeds_;
  bool cluster_ = false;    // fixed by Create()
  std::string standalone_;  // the server's address when !cluster_; fixed by Create()

  mutable Mutex nodes_mu_;
  std::map<std::string, std::shared_ptr<Node>> nodes_ GUARDED_BY(nodes_mu_);

  Mutex refresh_mu_;  // held by the one thread loading the map; taken before map_mu_
  mutable Mutex map_mu_;
  std::shared_ptr<const SlotMap> map_ GUARDED_BY(map_mu_);
  std::optional<SteadyTime> last_refresh_attempt_ GUARDED_BY(map_mu_);
  uint64_t loads_ GUARDED_BY(map_mu_) = 0;

  Counter* ok_count_ = nullptr;
  Counter* error_count_ = nullptr;
  Counter* unavailable_count_ = nullptr;
  Counter* timeout_count_ = nullptr;
  Counter* moved_count_ = nullptr;
  Counter* ask_count_ = nullptr;
  Counter* retry_count_ = nullptr;
};

}  // namespace chorus::redis
