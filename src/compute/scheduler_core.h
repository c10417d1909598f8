// The decisions of a per-app scheduler (Starlink's optimistic shared-state scheduler; docs/compute.md,
// "Scheduler"), without I/O. scheduler.h feeds it views from resource servers and claim results,
// and sends the claims and releases Reconcile() returns.
//
// State is soft: the merged view of every watched cluster (nodes keyed by node id, which must be
// unique across federated clusters; apps merged by newest generation), the claims and releases
// this scheduler has in flight, and per-node conflict cooldowns. A restarted scheduler rebuilds
// all of it from the first full views: the replicas themselves live on the nodes.
//
// Invariants Reconcile keeps:
//   - at most one claim in flight per node (a second would conflict with the first on version);
//     one claim may place several replicas of an app (up to max_replicas_per_claim);
//   - a replica counts towards its app when it is of the app's current generation, STARTING or
//     RUNNING, on an online, non-draining node, and not being released; in-flight claims count;
//   - surplus is released newest replica id first, so schedulers racing on one app release the
//     same ones; nothing is released while claims for the app are in flight.
//
// Not thread-safe: one thread (the scheduler's loop) owns it.
#pragma once

#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/random.h"
#include "base/status.h"
#include "chorus/compute/v1/compute.pb.h"

namespace chorus::compute {

namespace pb = ::chorus::compute::v1;

struct SchedulerOptions {
  std::string scheduler_id;
  std::vector<std::string> apps;  // apps this scheduler places; empty = every app
  int candidates = 4;             // one of the best few nodes at random
  Duration cooldown_min = std::chrono::milliseconds(10);  // after a conflict on a node
  Duration cooldown_max = std::chrono::seconds(1);
  Duration scale_down_interval = std::chrono::seconds(30);  // autoscaling: at most one step down per interval
  // An app short of more replicas than there are nodes with room gets up to this many per claim
  // (ClaimRequest.more_replica_ids), filling each node to the even level at once.
  int max_replicas_per_claim = 8;
  size_t max_claims_in_flight = 1024;
  size_t max_releases_in_flight = 1024;
};

class SchedulerCore {
 public:
  SchedulerCore(SchedulerOptions options, Clock& clock, Random& random);

  // A watch update from one resource cluster (`source` names the cluster connection). A full
  // update replaces everything that source said before.
  void ApplyUpdate(const std::string& source, const pb::ViewUpdate& update);
  // The node's status as a claim or release answered it (newer than the view, usually).
  void ObserveNode(const pb::NodeStatus& node);

  struct Claim {
    std::string address;
    pb::ClaimRequest request;
  };
  struct Release {
    std::string address;
    pb::ReleaseRequest request;
  };
  struct Plan {
    std::vector<Claim> claims;
    std::vector<Release> releases;
  };
  Plan Reconcile();

  // Results. `node` is the node's status from the answer (a conflict's trailer), if any.
  void OnClaimDone(const Claim& claim, const Status& status, bool conflict, const pb::NodeStatus* node);
  void OnReleaseDone(const Release& release, const Status& status, const pb::NodeStatus* node);

  struct AppCounts {
    int desired = 0;
    int counted = 0;      // placed and counting
    int claims_in_flight = 0;
  };
  std::map<std::string, AppCounts> Counts() const;
  const pb::App* FindApp(const std::string& name) const;
  size_t online_nodes() const;

  // Totals since start, for metrics and the benchmark.
  uint64_t claims_sent() const { return claims_sent_; }
  uint64_t claims_accepted() const { return claims_accepted_; }
  uint64_t replicas_claimed() const { return replicas_claimed_; }  // in accepted claims
  uint64_t conflicts() const { return conflicts_; }

 private:
  struct NodeRecord {
    pb::NodeStatus status;
    std::string source;
  };
  struct AppRecord {
    pb::App app;
    std::string source;
  };
  struct Inflight {
    std::string app;
    int replicas = 1;  // replica_id + more_replica_ids
  };

  bool Handles(const std::string& app) const;
  // Whether `node` prefers this scheduler over every one in `others` (rendezvous hashing).
  bool MineAmong(const std::set<std::string_view>& others, std::string_view node) const;
  void Upsert(const std::string& source, const pb::NodeStatus& node);
  int Desired(const pb::App& app, int counted, double in_flight, const std::string& name);
  std::string NewReplicaId(const std::string& app);

  const SchedulerOptions options_;
  Clock& clock_;
  Random& random_;

  std::unordered_map<std::string, NodeRecord> nodes_;
  std::map<std::string, AppRecord> apps_;
  std::set<std::string> deleted_apps_;                 // seen deleted while running: release leftovers
  std::unordered_map<std::string, Inflight> claims_;   // node id -> claim in flight
  std::set<std::string> releasing_;                    // replica ids with a release in flight
  std::unordered_map<std::string, std::pair<SteadyTime, int>> cooldown_;  // node -> (until, conflicts in a row)
  std::map<std::string, int> desired_;                 // autoscaled apps: the current target
  std::map<std::string, SteadyTime> last_scale_down_;
  uint64_t claims_sent_ = 0;
  uint64_t claims_accepted_ = 0;
  uint64_t replicas_claimed_ = 0;
  uint64_t conflicts_ = 0;
};

}  // namespace chorus::compute
