// The node agent's state (docs/compute.md, "Node agent"): the machine's capacity, its
// pre-created slots, the replicas claimed on them with their workers, the version that orders
// its states, and draining. The node is the arbitration point for claims: Claim() is a
// compare-and-swap on (incarnation, version), so schedulers that race for it never over-commit
// it and no central lock is needed.
//
// No gRPC here: node_server.h authenticates calls and turns them into these methods, and runs
// the heartbeat stream. Workers are behind ReplicaRuntime so tests run the logic with fakes and
// the node uses real worker processes (worker_process.h).
//
// Thread-safe: one mutex guards the state; worker callbacks and gRPC threads may call in at
// once. The change listener runs after every version bump, outside the lock, on whichever thread
// made the change; it must be cheap (the heartbeat client just wakes its thread).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "chorus/compute/v1/compute.pb.h"
#include "compute/node_probe.h"

namespace chorus::compute {

namespace pb = ::chorus::compute::v1;

// One replica's worker(s).
class ReplicaRuntime {
 public:
  enum class State { kStarting, kRunning, kRestarting, kFailed, kStopped };
  virtual ~ReplicaRuntime() = default;
  virtual State state() const = 0;
  virtual int restarts() const = 0;
  // `done` runs once, on any thread.
  virtual void Invoke(std::string payload, std::function<void(Result<std::string>)> done) = 0;
  // Graceful stop: in-flight requests finish (up to `grace`), then the worker is killed.
  virtual void Stop(Duration grace) = 0;
};

struct ReplicaLaunch {
  std::string app;
  std::string replica_id;
  pb::EngineSpec engine;
  int max_concurrency = 1;
  // The runtime calls this whenever state() changes (any thread).
  std::function<void()> on_state_change;
};
using RuntimeFactory = std::function<Result<std::unique_ptr<ReplicaRuntime>>(const ReplicaLaunch&)>;

struct NodeOptions {
  std::string node_id;
  std::string cluster = "default";
  std::string pool;
  std::string address;  // host:port of this node's Node service
  MachineCapacity capacity;
  int slots = 8;
  Duration release_grace = std::chrono::seconds(10);  // a released replica's in-flight work may take this long
  // A replica takes up to max_concurrency × invoke_queue requests at once: max_concurrency run in
  // its worker, the rest wait in the worker's queue. Beyond that Invoke refuses (busy), so a router
  // can try another node. 1 = no waiting.
  int invoke_queue = 4;
};

class NodeAgent {
 public:
  NodeAgent(NodeOptions options, Clock& clock, RuntimeFactory factory);
  ~NodeAgent();  // stops every worker (StopAll with no grace if not done before)

  const NodeOptions& options() const { return options_; }
  uint64_t incarnation() const { return incarnation_; }

  struct ClaimOutcome {
    Status status;          // Ok: accepted
    bool conflict = false;  // the claim's version is stale: status is FailedPrecondition, node is current
    pb::NodeStatus node;    // the node after the claim, or as it is
  };
  // Caller checked the credentials. Accepts the claim if it names this node and incarnation, the
  // version still matches, the node is not draining, a slot is free and the resources fit.
  ClaimOutcome Claim(const pb::ClaimRequest& claim);
  // Stops taking requests for the replica, lets in-flight ones finish, then frees its slot.
  // NotFound for an unknown replica; releasing one already being released is a no-op.
  Result<pb::NodeStatus> Release(const pb::ReleaseRequest& release);

  // Hands `payload` to a running replica of `app` (`replica_id` if not empty) with the fewest
  // requests in flight. Refusals before any worker saw the request: Unavailable if none runs here
  // (or the node is stopping), ResourceExhausted if all are at max_concurrency; both are safe to
  // retry on another node. Once handed to a worker, a failure is Internal (it may have run).
  void Invoke(const std::string& app, const std::string& replica_id, std::string payload,
              std::function<void(Result<std::string>, const std::string& replica_id)> done);

  // SIGTERM: refuse new claims, report draining (version bump). Requests are still served.
  void BeginDrain();
  bool draining() const;
  int in_flight() const;
  // Stops every worker, in parallel, each with `grace` for its in-flight requests.
  void StopAll(Duration grace);

  void SetLoad(double cpu_utilization, int64_t memory_used_mb);
  void SetAddress(std::string address);
  pb::NodeStatus CurrentStatus() const;
  uint64_t version() const;

  void SetChangeListener(std::function<void()> listener);

 private:
  struct Replica {
    pb::ReplicaStatus status;
    std::shared_ptr<ReplicaRuntime> runtime;
    bool releasing = false;
    bool stop_started = false;
  };

  void BumpLocked() REQUIRES(mu_);
  void Notify();
  void OnRuntimeChange(const std::string& replica_id);
  void MaybeFinishRelease(const std::string& replica_id) REQUIRES(mu_);
  void FinishRelease(std::string replica_id, std::shared_ptr<ReplicaRuntime> runtime);
  pb::NodeStatus StatusLocked() const REQUIRES(mu_);
  void Done(const std::string& replica_id);

  const NodeOptions options_;
  Clock& clock_;
  const RuntimeFactory factory_;
  const uint64_t incarnation_;

  mutable Mutex mu_;
  uint64_t version_ GUARDED_BY(mu_) = 1;
  bool draining_ GUARDED_BY(mu_) = false;
  std::string address_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  double cpu_utilization_ GUARDED_BY(mu_) = 0;
  int64_t memory_used_mb_ GUARDED_BY(mu_) = 0;
  std::map<std::string, Replica> replicas_ GUARDED_BY(mu_);
  std::map<std::string, int> gpus_used_ GUARDED_BY(mu_);  // card type -> cards given
  int active_stoppers_ GUARDED_BY(mu_) = 0;  // release threads still running
  CondVar stoppers_cv_;
  std::function<void()> listener_ GUARDED_BY(mu_);
};

}  // namespace chorus::compute
