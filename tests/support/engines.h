// Real storage and messaging engines for integration tests: redis-server (also as a 3-master
// Redis Cluster), mariadbd, nats-server.
//
// Each Start() picks a free loopback port, makes a private TempDir, launches the Debian binary
// bound to 127.0.0.1 only (never a system service, never a config file from /etc), and returns once
// the engine answers through its real client library: hiredis PING, libmariadb connect + SELECT 1,
// nats.c connect + flush + JetStream account info. A failure or timeout is a Status that names the
// engine, the port and the last probe error and carries the tail of the engine's log, so a red
// test says why.
//
// The returned object owns the engine: destroying it (or Stop()) shuts the process down (SIGTERM,
// SIGKILL after 5 s, see subprocess.h) and then removes its directory, so the port stops accepting
// connections and nothing survives the test binary. If the chosen port is taken between picking
// and binding, Start() retries with another port.
//
// Engines are independent: a test may run several at once. Objects are not thread-safe; start and
// destroy them from a thread that outlives them (a test body, a gtest Environment), because the
// child dies when the thread that started it exits (PR_SET_PDEATHSIG).
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "base/status.h"
#include "support/subprocess.h"

namespace chorus::testing {

// What the three engines share: a directory, a port on 127.0.0.1 and the server process.
class EngineServer {
 public:
  EngineServer(const EngineServer&) = delete;
  EngineServer& operator=(const EngineServer&) = delete;

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  // The engine's private directory (data, log); removed when the object dies.
  const std::string& dir() const { return dir_.path(); }
  // The last lines of the engine's log, for failure messages.
  std::string LogTail(std::size_t max_lines = 30) const;

  // Shuts the engine down now; the port stops accepting connections. The directory stays until
  // the object dies. Idempotent; the destructor calls it. Useful to test "engine went away".
  void Stop();

  // Starts the engine again, typically after Stop(): the same binary and arguments, the SAME port
  // (clients hold it, so it never changes) and the same directory, so what the engine keeps on
  // disk is still there: NATS's JetStream store, MariaDB's datadir (and its test account). Redis
  // runs without persistence and comes back empty. A running engine is stopped first. Returns once
  // the engine answers its probe, as Start() does; kFailedPrecondition if it was never started,
  // kUnavailable (with the log tail) if it exits at once, e.g. because the port was taken while it
  // was down. Useful to test "engine came back".
  Status Restart();

 protected:
  EngineServer(TempDir dir, std::string name) : dir_(std::move(dir)), name_(std::move(name)) {}
  ~EngineServer();

  // Launches argv with output to dir()/<name>.log and polls `probe` (every ~20 ms) until it
  // returns OK or `timeout` passes. On a port clash the engine exits early: Start() retries.
  // Returns kUnavailable if the process exited, kDeadlineExceeded on timeout.
  // Remembers argv, port and timeout for Restart().
  Status Launch(std::vector<std::string> argv, int port, std::chrono::milliseconds timeout,
                const std::function<Status()>& probe);

  TempDir dir_;  // declared first: outlives process_, whose files it holds
  std::string name_;
  std::string host_ = "127.0.0.1";
  int port_ = 0;
  std::unique_ptr<Subprocess> process_;
  // What Restart() runs: the last Launch()'s argv and timeout, and the probe each Start() sets
  // once the engine first answered (one that needs no first-start setup, unlike MariaDB's).
  std::vector<std::string> argv_;
  std::chrono::milliseconds timeout_{0};
  std::function<Status()> restart_probe_;
};

// redis-server without persistence (--save "" --appendonly no).
class RedisServer : public EngineServer {
 public:
  static Result<std::unique_ptr<RedisServer>> Start();

 private:
  friend class RedisClusterServer;
  using EngineServer::EngineServer;

  // Start() with more redis-server arguments, made per port attempt (they may pick ports too).
  static Result<std::unique_ptr<RedisServer>> StartWith(
      const std::function<std::vector<std::string>()>& extra_args);
};

// A Redis Cluster of `masters` redis-server processes without replicas (Debian 12 ships Redis
// 7.0), each a RedisServer started with --cluster-enabled yes, its nodes.conf in its own
// directory and its cluster bus on a second free port (--cluster-port, so bus = port + 10000 never
// overflows). Start() gives the nodes config epochs 1..N, assigns the 16384 slots in contiguous,
// nearly equal ranges in node order (node i serves 16384*i/N .. 16384*(i+1)/N - 1: 0..5460,
// 5461..10921 and 10922..16383 for 3; slot_range() tells), joins them with CLUSTER MEET (no
// redis-cli needed) and returns once WaitUntilHealthy() passes. cluster-node-timeout is 5 s.
//
// Tests reshard through the nodes themselves (CLUSTER SETSLOT, MIGRATE). Same threading rules as
// the engines above.
class RedisClusterServer {
 public:
  static Result<std::unique_ptr<RedisClusterServer>> Start(int masters = 3);
  RedisClusterServer(const RedisClusterServer&) = delete;
  RedisClusterServer& operator=(const RedisClusterServer&) = delete;
  ~RedisClusterServer();  // stops every node

  size_t size() const { return nodes_.size(); }
  RedisServer& node(size_t i) const { return *nodes_.at(i); }
  // "127.0.0.1:PORT" of every node, in node order: what clients take as seeds.
  std::vector<std::string> addresses() const;
  // The node's 40-character cluster id (CLUSTER MYID), read at Start().
  const std::string& node_id(size_t i) const { return ids_.at(i); }
  // The first and last slot node i was given at Start().
  std::pair<int, int> slot_range(size_t i) const { return ranges_.at(i); }

  // Stops node i (its port closes at once). Its slots become unreachable; since every slot is
  // needed, the other nodes report cluster_state:fail once cluster-node-timeout has passed.
  void StopNode(size_t i);
  // Starts node i again on the same ports with its nodes.conf, so it rejoins owning the same
  // slots (with no data: there is no persistence), and waits until the cluster is healthy.
  Status RestartNode(size_t i);

  // Polls until every node answers CLUSTER INFO with cluster_state:ok, cluster_slots_assigned
  // 16384 and cluster_known_nodes equal to size(). kDeadlineExceeded (naming the node and its
  // last CLUSTER INFO) otherwise; every node must be running.
  Status WaitUntilHealthy(std::chrono::milliseconds timeout) const;

 private:
  RedisClusterServer() = default;

  std::vector<std::unique_ptr<RedisServer>> nodes_;
  std::vector<std::string> ids_;
  std::vector<std::pair<int, int>> ranges_;
};

// mariadbd with its own datadir and real authentication. The first Start() in a test process runs
// mariadb-install-db (seconds) into a pristine directory that is removed at exit; every server
// then starts from a copy of it (tens of milliseconds), so servers never share data. Clients log in
// as user()/password() over TCP (host 127.0.0.1, privileges ALL ... WITH GRANT OPTION); the same
// account works over socket_path(). root@localhost (empty password) exists on the socket too.
// Server character set utf8mb4 / utf8mb4_general_ci, as Debian's packaged config sets it.
class MariaDbServer : public EngineServer {
 public:
  static Result<std::unique_ptr<MariaDbServer>> Start();

  const std::string& user() const { return user_; }
  const std::string& password() const { return password_; }
  const std::string& socket_path() const { return socket_path_; }

 private:
  using EngineServer::EngineServer;

  std::string user_ = "chorus";
  std::string password_ = "chorus-test-password";
  std::string socket_path_;
  // Only used when dir() is too deep for a unix socket path (108 bytes).
  std::optional<TempDir> socket_dir_;
};

// nats-server with JetStream enabled (store in dir()/js).
class NatsServer : public EngineServer {
 public:
  static Result<std::unique_ptr<NatsServer>> Start();

  // "nats://127.0.0.1:PORT"
  std::string url() const { return "nats://" + host() + ":" + std::to_string(port()); }

 private:
  using EngineServer::EngineServer;
};

}  // namespace chorus::testing
