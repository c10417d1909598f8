// The router of the compute data plane (docs/compute.md, "Data plane"): per app, a routing table
// of the nodes that run the app, weights from the nodes' reports (lb_weight.h), a picker
// (lb_picker.h), and one retry on another node. No networking here: views come in through
// ApplyUpdate (a ViewWatcher in router_client.h, or a simulator), requests go out through an
// InvokeTransport (gRPC to Node.Invoke, or a simulator).
//
// Routing table of app A: every node that is online, not draining, not suspended, and runs at
// least one RUNNING replica of A. A view update that changes any of that adds or removes the node
// at once (a draining node leaves on the watch event, not on the next tick). Weights are
// recomputed for every table by RecomputeWeights(), which the owner calls every
// `weight_interval` (3 s, the seed's period); a node that joins between two recomputations gets
// a weight from its last report right away.
//
// Weight inputs per (app, node): capacity = Σ over the app's replicas on the node of their cores
// (cpu_millis / 1000), or cards × the card type's performance coefficient for GPU replicas;
// utilization = the node's cpu_utilization; concurrency = the node's in_flight (what its
// heartbeat says: the seed's "节点当前并发"). With `dynamic_weights` off every weight is the
// capacity alone: the static baseline.
//
// Failures: a request that fails with kUnavailable (refused before any worker saw it, or the node
// is unreachable), kResourceExhausted (every replica busy), kFailedPrecondition (node draining) or
// kInternal (the worker failed after taking it: inference engines are idempotent) is retried once
// (`retries`) on another node. kUnavailable also suspends the node for `suspend_for` (unless it
// is the app's only node): it leaves every table until then. kInvalidArgument (the request itself is bad) and
// kDeadlineExceeded are never retried.
//
// Thread-safe: one mutex guards the view and the tables; a pick holds it for well under a
// microsecond. Transport callbacks may run on any thread; `done` runs on the transport's thread
// (or the caller's, for an immediate answer), never under the lock.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "compute/lb_picker.h"
#include "compute/lb_weight.h"

namespace chorus::compute {

namespace v1 {
class ViewUpdate;
class NodeStatus;
}  // namespace v1

struct RouteTarget {
  std::string app;
  std::string node_id;
  std::string address;  // the node's gRPC address
};

class InvokeTransport {
 public:
  using Done = std::function<void(Result<std::string>)>;
  virtual ~InvokeTransport() = default;
  // Sends `payload` to any replica of target.app on target's node; `done` exactly once.
  virtual void Invoke(const RouteTarget& target, std::shared_ptr<const std::string> payload, Done done) = 0;
};

struct RouterOptions {
  PickerKind policy = PickerKind::kFastSwrr;
  bool dynamic_weights = true;
  WeightOptions weights;
  int retries = 1;
  Duration suspend_for = std::chrono::seconds(3);
  // Damping of dynamic weights per recomputation: a weight moves at most by this factor, and to
  // old^(1-s) × new^s of the (clamped) new value. 1 and 1.0: no damping (the raw formula).
  double max_weight_step = 2.0;
  double weight_smoothing = 0.5;
  // Dynamic SWRR: a pick whose node already holds more of this router's requests in flight than
  // 2 + inflight_guard × (its weight share of all of them) is passed over for the next pick (up to
  // 3 draws; the least loaded relative to its share wins). Weights follow reports every few
  // seconds; this reacts per request, like least-request balancing. 0: off.
  double inflight_guard = 0.7;
  uint64_t seed = 1;
};

class Router {
 public:
  Router(RouterOptions options, Clock& clock, InvokeTransport& transport);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // A watch update from one resource cluster (`source` names it). A full update replaces what
  // that source said before.
  void ApplyUpdate(const std::string& source, const v1::ViewUpdate& update);

  // Recomputes every table's weights from the latest reports, and lets suspended nodes back in.
  void RecomputeWeights();

  struct Reply {
    std::string payload;
    std::string node_id;  // the node that answered
    int attempts = 0;     // 1, or 2 after a retry
  };
  using Done = std::function<void(Result<Reply>)>;
  // kNotFound for an app the view does not know; kUnavailable when it has no routable node.
  void Invoke(const std::string& app, std::string payload, Done done);

  struct Route {
    std::string node_id;
    std::string address;
    double weight = 0;
    uint64_t requests = 0;  // requests this router sent the node for the app (attempts, retries too)
  };
  // The app's routing table, for status pages and tests.
  std::vector<Route> Routes(const std::string& app) const;
  bool KnowsApp(const std::string& app) const;
  // The latest status of every node the views list (online, draining and recently offline), by
  // node id; for status pages.
  std::vector<std::shared_ptr<const v1::NodeStatus>> Nodes() const;

  struct Stats {
    uint64_t requests = 0;
    uint64_t retries = 0;
    uint64_t failures = 0;  // answered with an error after every attempt
    uint64_t recomputations = 0;
  };
  Stats stats() const;

 private:
  struct NodeInfo {
    std::string source;
    std::string address;
    bool routable = false;  // online, not draining
    double utilization = 0;
    double concurrency = 0;
    std::map<std::string, double> running;  // app -> capacity of its RUNNING replicas here
    std::set<std::string> member_of;        // apps whose table holds this node now
    SteadyTime suspended_until{};
    std::shared_ptr<const v1::NodeStatus> status;  // as last reported
  };
  struct Table {
    std::unique_ptr<Picker> picker;
    std::unordered_map<std::string, NodeId> ids;    // node id -> picker id (never reused)
    std::vector<std::string> names;                 // picker id -> node id
    std::unordered_map<NodeId, double> weights;     // current members
    double total_weight = 0;                        // Σ weights
    std::unordered_map<NodeId, int64_t> in_flight;  // this router's requests in flight, per node
    std::unordered_map<NodeId, uint64_t> requests;  // sent, per node, since this router started
    int64_t total_in_flight = 0;
  };
  struct Call;

  void UpsertLocked(const std::string& source, const v1::NodeStatus& node) REQUIRES(mu_);
  void EraseLocked(const std::string& node_id) REQUIRES(mu_);
  // Brings node's table memberships in line with its info.
  void SyncMembershipLocked(const std::string& node_id, NodeInfo& info) REQUIRES(mu_);
  double WeightLocked(const NodeInfo& info, const std::string& app) const REQUIRES(mu_);
  Table& TableLocked(const std::string& app) REQUIRES(mu_);
  void Attempt(std::shared_ptr<Call> call);

  const RouterOptions options_;
  Clock& clock_;
  InvokeTransport& transport_;

  mutable Mutex mu_;
  std::unordered_map<std::string, NodeInfo> nodes_ GUARDED_BY(mu_);
  std::map<std::string, std::string> apps_ GUARDED_BY(mu_);  // known app -> source
  std::map<std::string, Table> tables_ GUARDED_BY(mu_);
  std::set<std::string> suspended_ GUARDED_BY(mu_);
  Stats stats_ GUARDED_BY(mu_);
  uint64_t next_seed_ GUARDED_BY(mu_);
};

}  // namespace chorus::compute
