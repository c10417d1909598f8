// The state of one resource server (docs/compute.md, "Resource server"): the online list of the
// cluster's nodes, which resource server each node reports to (its home), the app specs, and the
// watchers of the view. No I/O: the gRPC layer (resource_server.h) feeds it heartbeats and peer
// batches and sends what Flush() returns; tests drive it with SimulatedClock.
//
// Liveness rules, all measured on the injected steady clock:
//   - A node homed here is online while its heartbeats arrive. It goes offline when it says
//     goodbye, when its stream closed and it did not come back (here or, seen through a peer's
//     batch, on another server) within reconnect_grace, or after offline_after heartbeat
//     intervals of silence.
//   - A node homed on a peer is trusted to that peer while the peer keeps pushing batches
//     (empty batches are keepalives). If the peer goes silent for peer_timeout, or a full batch
//     from it no longer lists the node, the node is an orphan: it stays online for offline_after
//     more intervals, the time its agent needs to re-home somewhere else.
//   - A status replaces the one held only if it is newer: (incarnation, version) greater, or
//     equal with a later heartbeat from a different home (the node moved servers).
//
// Aggregation: every accepted change marks the node dirty; Flush() (every broadcast_interval,
// or at once when urgent() says a draining/offline/new-node transition is waiting) turns the
// dirty set into one ViewUpdate for the watchers and one PeerBatch of the nodes homed here.
//
// Thread-safe: every method takes the one mutex. Watchers' queues are filled under it, so a
// snapshot taken by Subscribe() and the updates after it never miss or repeat a change.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "chorus/compute/v1/compute.pb.h"

namespace chorus::compute {

namespace pb = ::chorus::compute::v1;

struct ResourceOptions {
  std::string resource_id;  // unique among the cluster's resource servers
  std::string cluster = "default";
  Duration heartbeat_interval = std::chrono::seconds(1);
  int offline_after = 3;  // heartbeat intervals of silence
  Duration reconnect_grace = std::chrono::milliseconds(500);
  Duration peer_timeout = std::chrono::seconds(1);
  double load_epsilon = 0.05;  // CPU utilization change that is worth broadcasting
  Duration offline_retention = std::chrono::minutes(10);  // offline nodes stay listed this long
  size_t max_watch_queue = 256;  // updates queued for one watcher before it is cut off
};

// Checks a node's self-reported status: id, capacity and replica fields.
Status ValidateNodeStatus(const pb::NodeStatus& status);

class ResourceState {
 public:
  ResourceState(ResourceOptions options, Clock& clock);

  const ResourceOptions& options() const { return options_; }

  // A heartbeat on stream `stream_id` (any id unique per stream). InvalidArgument for a bad
  // status; FailedPrecondition for an older incarnation than the one known (a stale agent).
  Status OnHeartbeat(uint64_t stream_id, pb::NodeStatus status);
  // The stream ended: with `goodbye` the node is offline now, otherwise reconnect_grace starts.
  void OnStreamClosed(uint64_t stream_id, bool goodbye);

  // A batch from a peer resource server. The ack asks for a full batch when the peer is new here.
  pb::PeerAck OnPeerBatch(const pb::PeerBatch& batch);

  // Stores `app` (validated by the caller) with a new generation; returns it as stored.
  pb::App ApplyApp(pb::App app);
  Status DeleteApp(const std::string& name);  // NotFound if unknown

  struct Flushed {
    std::shared_ptr<const pb::ViewUpdate> update;  // null when nothing changed
    std::shared_ptr<const pb::PeerBatch> peer;      // always set: a keepalive when empty
    bool apps_changed = false;
  };
  // Applies the timeouts due now and drains the dirty set into the watchers' queues and a batch.
  Flushed Flush();
  // True when a change is waiting that should not wait for the next interval.
  bool urgent() const;

  pb::View Snapshot() const;
  pb::PeerBatch FullPeerBatch() const;
  std::vector<pb::App> Apps() const;
  // Restores apps persisted by an earlier run (generations kept).
  void LoadApps(const std::vector<pb::App>& apps);

  // Watchers: Subscribe returns the current view as a full update and an id whose queue receives
  // every later update. Next() pops one (nullptr if none). A watcher that falls max_watch_queue
  // behind is cut off: Next() then returns ResourceExhausted.
  struct Subscription {
    uint64_t id;
    std::shared_ptr<const pb::ViewUpdate> snapshot;
  };
  Subscription Subscribe();
  Result<std::shared_ptr<const pb::ViewUpdate>> Next(uint64_t id);
  // Next(), waiting up to `timeout` (real time) for an update; null on timeout.
  Result<std::shared_ptr<const pb::ViewUpdate>> WaitNext(uint64_t id, Duration timeout);
  void Unsubscribe(uint64_t id);

  // Counts for metrics and tests.
  size_t online_nodes() const;
  size_t known_nodes() const;

 private:
  struct NodeEntry {
    pb::NodeStatus status;
    std::string home;
    uint64_t stream_id = 0;                    // home == self
    SteadyTime last_heard{};                   // home == self: last heartbeat
    std::optional<SteadyTime> disconnected_at;  // home == self: stream closed
    std::optional<SteadyTime> orphan_since;     // home is a peer that stopped vouching for it
    bool orphaned_by_silence = false;           // ...because the peer went quiet, not because it dropped it
    SteadyTime offline_since{};
    double broadcast_cpu = 0;
    int broadcast_in_flight = 0;
  };
  struct Peer {
    SteadyTime last_push{};
    bool silent = false;
  };
  struct Watcher {
    std::deque<std::shared_ptr<const pb::ViewUpdate>> queue;
    bool cut_off = false;
  };

  void MarkDirty(const std::string& node_id, bool urgent) REQUIRES(mu_);
  void SetOffline(NodeEntry& e, const std::string& why) REQUIRES(mu_);
  bool AcceptPeerApp(const pb::App& app) REQUIRES(mu_);
  bool AcceptDeletion(const std::string& name, uint64_t generation) REQUIRES(mu_);
  void ExpireLocked(SteadyTime now) REQUIRES(mu_);
  pb::View SnapshotLocked() const REQUIRES(mu_);
  Result<std::shared_ptr<const pb::ViewUpdate>> NextLocked(uint64_t id) REQUIRES(mu_);

  const ResourceOptions options_;
  Clock& clock_;

  mutable Mutex mu_;
  CondVar watch_cv_;
  std::unordered_map<std::string, NodeEntry> nodes_ GUARDED_BY(mu_);
  std::set<std::string> dirty_ GUARDED_BY(mu_);
  bool urgent_ GUARDED_BY(mu_) = false;
  std::map<std::string, Peer> peers_ GUARDED_BY(mu_);
  std::map<std::string, pb::App> apps_ GUARDED_BY(mu_);
  std::map<std::string, uint64_t> tombstones_ GUARDED_BY(mu_);  // name -> deleted generation
  std::set<std::string> dirty_apps_ GUARDED_BY(mu_);
  std::vector<std::string> deleted_apps_ GUARDED_BY(mu_);  // "name@generation" since last Flush
  uint64_t last_generation_ GUARDED_BY(mu_) = 0;
  std::map<uint64_t, Watcher> watchers_ GUARDED_BY(mu_);
  uint64_t next_watcher_ GUARDED_BY(mu_) = 1;
};

}  // namespace chorus::compute
