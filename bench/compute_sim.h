// The node simulator of `chorus-bench compute-cluster`: thousands of compute node identities in
// one process, so real resource servers and schedulers can be measured at cluster scale on one
// machine (docs/compute.md, "Measuring").
//
// Two layers:
//   - SimNodeTable: the nodes' state and the claim arbitration, no I/O (unit-tested in
//     compute_sim_test.cc). Each identity has a capacity (cpu_millis, memory_mb, slots), an
//     incarnation (wall µs at start, distinct per node), a version, a draining flag and the
//     replicas claimed on it. Claim() follows the real node agent (src/compute/node_agent.cc,
//     node_server.cc) check for check: a bad claim shape is INVALID_ARGUMENT; an unknown node or
//     another incarnation, or a draining node, FAILED_PRECONDITION; a version other than
//     expected_version ABORTED (with the node's status, which the server sends in the
//     `chorus-node-status-bin` trailer); a replica id already there ALREADY_EXISTS; no free slot
//     or not enough cpu/memory (or any GPU: simulated nodes have none) RESOURCE_EXHAUSTED; else
//     the replica is added as REPLICA_RUNNING (no worker processes) and the version goes up by
//     one. A claim of several replicas (more_replica_ids) passes the checks for all or is refused,
//     and bumps the version once. Release() removes the replica at once (the real node drains it first) and bumps the
//     version. A killed node answers UNAVAILABLE, like a dead process's closed port.
//     The table also keeps the benchmark's books: every claim by outcome, the time of every
//     accepted claim per app, and how many replicas of each app sit on nodes that are neither
//     draining nor dead ("serving": what a scheduler counts).
//   - NodeSimulator: one gRPC server on 127.0.0.1 implementing chorus.compute.v1.Node for every
//     identity (dispatch by node_id; every identity advertises that one address), and one
//     Resource.Heartbeat stream per identity over gRPC's callback client (no thread per stream),
//     node i reporting to resources[i % resources.size()]. A stream's first message is the
//     node's status; then one every heartbeat_interval and one at once after every change. A
//     stream that breaks reconnects to the next resource server, as the real agent does.
//     Drain() is the SIGTERM path (draining, version+1, heartbeat now); Kill() is kill -9 (the
//     stream is cancelled, no more heartbeats, claims refused).
//
// Threads: SimNodeTable is thread-safe (a mutex per node, one for the books; lock order node,
// then books); its change listener runs on the thread that made the change, outside the node's
// lock. NodeSimulator runs gRPC's callback threads and one ticker thread (periodic heartbeats,
// reconnects, the opening ramp); its methods are safe from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "chorus/compute/v1/compute.pb.h"

namespace chorus::net {
class TokenSigner;
}

namespace chorus::bench {

namespace cpb = ::chorus::compute::v1;

// A simulated node's answer, in gRPC's terms (NodeSimulator maps them onto grpc::StatusCode).
enum class SimCode {
  kOk,
  kInvalidArgument,
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kAborted,
  kResourceExhausted,
  kUnavailable
};
std::string_view SimCodeName(SimCode code);

struct SimAnswer {
  SimCode code = SimCode::kOk;
  std::string message;
  // The node after the call, or as it is on a refusal (sent as the trailer); absent for an
  // unknown or dead node.
  std::optional<cpb::NodeStatus> node;
};

struct SimNodeCapacity {
  int64_t cpu_millis = 4000;
  int64_t memory_mb = 8192;
  int slots = 8;
};

struct SimTableOptions {
  int nodes = 2000;
  std::string id_prefix = "sim-";  // node i is id_prefix + i zero-padded to 5 digits
  std::string cluster = "default";
  SimNodeCapacity capacity;
  uint64_t first_incarnation = 0;  // node i runs incarnation first + i; 0: wall µs now
};

// Claims and releases by outcome, since the table was made.
struct SimCounters {
  uint64_t claims = 0;  // every claim received
  uint64_t accepted = 0;
  uint64_t accepted_replicas = 0;  // in accepted claims (a claim may place several)
  uint64_t aborted = 0;  // stale expected_version: the CAS refused it
  uint64_t exhausted = 0;
  uint64_t failed_precondition = 0;
  uint64_t unavailable = 0;  // claims on killed nodes
  uint64_t invalid = 0;      // INVALID_ARGUMENT, ALREADY_EXISTS
  uint64_t releases = 0;
  uint64_t released = 0;            // releases that removed a replica
  uint64_t releases_not_found = 0;  // the replica was not (or no longer) there

  SimCounters operator-(const SimCounters& earlier) const;
};

class SimNodeTable {
 public:
  SimNodeTable(SimTableOptions options, Clock& clock);
  ~SimNodeTable();

  size_t size() const { return nodes_.size(); }
  const std::string& node_id(size_t i) const;
  uint64_t incarnation(size_t i) const;
  std::optional<size_t> Find(std::string_view node_id) const;
  // The address every node advertises (the simulator's gRPC server); before statuses are taken.
  void SetAddress(std::string address);
  // Runs after every change of node i (version bump), on the changing thread, outside the node's
  // lock. Set before use.
  void SetChangeListener(std::function<void(size_t)> listener);

  SimAnswer Claim(const cpb::ClaimRequest& claim);
  SimAnswer Release(const cpb::ReleaseRequest& release);

  cpb::NodeStatus Status(size_t i) const;
  uint64_t version(size_t i) const;
  bool draining(size_t i) const;
  bool dead(size_t i) const;
  int Replicas(size_t i, const std::string& app) const;  // of `app` on node i
  int Replicas(size_t i) const;                          // of any app

  // The SIGTERM path's state change: draining, version+1. False if already draining or dead.
  bool Drain(size_t i);
  // kill -9: the node is gone (its replicas with it, as far as the books go). Returns the
  // replicas it held (any app), or -1 if it was dead already.
  int Kill(size_t i);
  // A change that matters to nobody (as a replica's restart count would be): version+1, so the
  // node's status is news again. False if dead.
  bool Touch(size_t i);

  // Replicas of `app` on nodes neither draining nor dead.
  int64_t Serving(const std::string& app) const;
  // The most Serving(app) has been since the last ResetPeak(app).
  int64_t PeakServing(const std::string& app) const;
  void ResetPeak(const std::string& app);
  // Waits until pred(Serving(app)) holds; the steady time it first held (now if at once), or
  // nullopt at `deadline`.
  std::optional<SteadyTime> WaitServing(const std::string& app, const std::function<bool(int64_t)>& pred,
                                        SteadyTime deadline) const;
  // The time of the n-th (1-based) claim of `app` accepted at or after `since`; waits for it
  // until `deadline`.
  std::optional<SteadyTime> WaitAccepted(const std::string& app, SteadyTime since, size_t n,
                                         SteadyTime deadline) const;
  // Accepted claims of `app` at or after `since`.
  size_t AcceptedSince(const std::string& app, SteadyTime since) const;
  // The steady times of every accepted claim of `app`, and of every claim of it received
  // (whatever the answer), in order.
  std::vector<SteadyTime> AcceptedTimes(const std::string& app) const;
  std::vector<SteadyTime> ReceivedTimes(const std::string& app) const;
  // The steady time of the last accepted claim, removed replica, drain or kill (any app); epoch
  // if none.
  SteadyTime LastChange() const;

  SimCounters counters() const;
  // Nodes whose replicas exceed any of their capacity's limits (slots, cpu, memory), recounted
  // from the replicas themselves rather than from the running totals the claims check.
  size_t OvercommittedNodes() const;

 private:
  struct Node;

  void Notify(size_t i);
  cpb::NodeStatus StatusLocked(const Node& n) const;
  SimAnswer Refuse(SimCode code, std::string message, const Node* n) const;

  const SimTableOptions options_;
  Clock& clock_;
  std::string address_;
  std::function<void(size_t)> listener_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unordered_map<std::string, size_t> index_;

  mutable Mutex book_mu_;
  mutable CondVar book_cv_;
  SimCounters counters_ GUARDED_BY(book_mu_);
  std::unordered_map<std::string, int64_t> serving_ GUARDED_BY(book_mu_);
  std::unordered_map<std::string, int64_t> peak_ GUARDED_BY(book_mu_);
  // app -> steady times of its accepted claims, in order (taken under book_mu_).
  std::unordered_map<std::string, std::vector<SteadyTime>> accepted_at_ GUARDED_BY(book_mu_);
  std::unordered_map<std::string, std::vector<SteadyTime>> received_at_ GUARDED_BY(book_mu_);
  SteadyTime last_change_ GUARDED_BY(book_mu_){};
};

struct NodeSimulatorOptions {
  SimTableOptions table;
  std::vector<std::string> resources;  // resource servers (host:port); node i reports to [i % n]
  std::string token;                   // bearer token for heartbeats (scope compute.node)
  Duration heartbeat_interval = std::chrono::seconds(1);
  int nodes_per_connection = 100;  // heartbeat streams share a TCP connection per this many
  int open_per_second = 0;         // streams opened per second at start (0: all at once)
  std::string listen = "127.0.0.1:0";
};

class NodeSimulator {
 public:
  // Listens, then opens every heartbeat stream. `signer` checks the claims' tokens (scope
  // compute.schedule) and is copied.
  static Result<std::unique_ptr<NodeSimulator>> Start(NodeSimulatorOptions options,
                                                      const net::TokenSigner& signer, Clock& clock);
  ~NodeSimulator();  // Stop()

  const std::string& address() const;
  SimNodeTable& table();
  const SimNodeTable& table() const;
  // The resource server (index into options.resources) node i's stream was opened to last.
  size_t home(size_t i) const;

  // SIGTERM: draining, version+1, heartbeat sent at once. False if already draining or dead.
  bool Drain(size_t i);
  // kill -9: cancels node i's stream (the server sees it break), no more heartbeats, claims
  // refused with UNAVAILABLE. Returns the replicas it held, -1 if already dead.
  int Kill(size_t i);
  // SimNodeTable::Touch, and the heartbeat at once.
  bool Touch(size_t i);

  struct StreamStats {
    uint64_t opened = 0;
    uint64_t broken = 0;      // ended without Kill() or Stop(): reconnected
    uint64_t heartbeats = 0;  // messages written
    size_t open = 0;          // streams open now
  };
  StreamStats stream_stats() const;

  // Cancels every stream and shuts the server down. Idempotent.
  void Stop();

  class Impl;

 private:
  explicit NodeSimulator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::bench
