#include "compute/resource_state.h"

#include <algorithm>
#include <cmath>

#include "base/logging.h"
#include "compute/app_spec.h"

namespace chorus::compute {
namespace {

// (incarnation, version) order of a node's states.
int CompareVersions(const pb::NodeStatus& a, const pb::NodeStatus& b) {
  if (a.incarnation() != b.incarnation()) return a.incarnation() < b.incarnation() ? -1 : 1;
  if (a.version() != b.version()) return a.version() < b.version() ? -1 : 1;
  return 0;
}

std::string DeletionKey(const std::string& name, uint64_t generation) {
  return name + "@" + std::to_string(generation);
}

}  // namespace

Status ValidateNodeStatus(const pb::NodeStatus& s) {
  if (!IsValidName(s.node_id())) {
    return InvalidArgument("node_id: \"" + s.node_id().substr(0, 80) + "\" is not a valid id ([A-Za-z0-9_.-]{1,64})");
  }
  if (s.incarnation() == 0) return InvalidArgument("incarnation: must be set (node " + s.node_id() + ")");
  const auto& c = s.capacity();
  if (c.cpu_millis() <= 0 || c.memory_mb() <= 0 || c.slots() < 0 || c.slots() > 100000) {
    return InvalidArgument("capacity: cpu_millis and memory_mb must be positive, slots 0..100000 (node " +
                           s.node_id() + ")");
  }
  for (const auto& g : c.gpus()) {
    if (!IsValidName(g.card_type()) || g.count() < 0 || !(g.perf() > 0)) {
      return InvalidArgument("capacity.gpus: bad card group (node " + s.node_id() + ")");
    }
  }
  if (!s.pool().empty() && !IsValidName(s.pool())) return InvalidArgument("pool: not a valid name");
  if (s.replicas_size() > c.slots()) {
    return InvalidArgument("replicas: more replicas than slots (node " + s.node_id() + ")");
  }
  for (const auto& r : s.replicas()) {
    if (!IsValidName(r.app()) || r.replica_id().empty() || r.replica_id().size() > 128) {
      return InvalidArgument("replicas: bad app or replica id (node " + s.node_id() + ")");
    }
  }
  if (s.address().empty() || s.address().size() > 256) return InvalidArgument("address: required");
  return Status::Ok();
}

ResourceState::ResourceState(ResourceOptions options, Clock& clock) : options_(std::move(options)), clock_(clock) {}

void ResourceState::MarkDirty(const std::string& node_id, bool urgent) {
  dirty_.insert(node_id);
  if (urgent) urgent_ = true;
}

void ResourceState::SetOffline(NodeEntry& e, const std::string& why) {
  if (!e.status.online()) return;
  e.status.set_online(false);
  e.offline_since = clock_.Now();
  e.disconnected_at.reset();
  e.orphan_since.reset();
  e.orphaned_by_silence = false;
  GetLogger("compute")->info("resource {}: node {} offline ({})", options_.resource_id, e.status.node_id(), why);
  MarkDirty(e.status.node_id(), /*urgent=*/true);
}

Status ResourceState::OnHeartbeat(uint64_t stream_id, pb::NodeStatus status) {
  CHORUS_RETURN_IF_ERROR(ValidateNodeStatus(status));
  const SteadyTime now = clock_.Now();
  MutexLock lock(mu_);
  auto [it, inserted] = nodes_.try_emplace(status.node_id());
  NodeEntry& e = it->second;
  if (!inserted && status.incarnation() < e.status.incarnation()) {
    return FailedPrecondition("node " + status.node_id() + ": incarnation " + std::to_string(status.incarnation()) +
                              " is older than the running one (" + std::to_string(e.status.incarnation()) + ")");
  }
  const bool was_online = !inserted && e.status.online();
  const bool newer = inserted || CompareVersions(status, e.status) > 0;
  const bool moved = e.home != options_.resource_id;
  const bool load_changed =
      std::fabs(status.cpu_utilization() - e.broadcast_cpu) >= options_.load_epsilon ||
      status.in_flight() != e.broadcast_in_flight;
  const bool draining_changed = !inserted && status.draining() != e.status.draining();
  if (!newer && CompareVersions(status, e.status) < 0) {
    // An older status on a live stream (reordered): keep the newer one, but the node is alive.
    e.last_heard = now;
    e.stream_id = stream_id;
    e.disconnected_at.reset();
    return Status::Ok();
  }
  status.set_resource_id(options_.resource_id);
  status.set_online(true);
  status.set_last_heartbeat_ms(clock_.WallMillis());
  e.status = std::move(status);
  e.home = options_.resource_id;
  e.stream_id = stream_id;
  e.last_heard = now;
  e.disconnected_at.reset();
  e.orphan_since.reset();
  e.orphaned_by_silence = false;
  if (newer || !was_online || moved || load_changed) {
    e.broadcast_cpu = e.status.cpu_utilization();
    e.broadcast_in_flight = e.status.in_flight();
    MarkDirty(e.status.node_id(), inserted || !was_online || draining_changed || moved);
  }
  return Status::Ok();
}

void ResourceState::OnStreamClosed(uint64_t stream_id, bool goodbye) {
  MutexLock lock(mu_);
  for (auto& [id, e] : nodes_) {
    if (e.home != options_.resource_id || e.stream_id != stream_id) continue;
    if (goodbye) {
      SetOffline(e, "goodbye");
    } else if (e.status.online()) {
      e.disconnected_at = clock_.Now();
    }
  }
}

pb::PeerAck ResourceState::OnPeerBatch(const pb::PeerBatch& batch) {
  pb::PeerAck ack;
  ack.set_resource_id(options_.resource_id);
  const std::string& from = batch.from_resource_id();
  if (from.empty() || from == options_.resource_id) return ack;
  const SteadyTime now = clock_.Now();
  MutexLock lock(mu_);
  auto [pit, new_peer] = peers_.try_emplace(from);
  const bool was_silent = pit->second.silent;
  pit->second.last_push = now;
  pit->second.silent = false;
  if (new_peer && !batch.full()) ack.set_need_full(true);
  if (was_silent) {
    // The peer vouches again: the nodes orphaned only by its silence are its own once more. Ask for
    // a snapshot as well, so nodes it dropped meanwhile become orphans by the usual full-batch rule.
    for (auto& [id, e] : nodes_) {
      if (e.home == from && e.orphaned_by_silence) {
        e.orphan_since.reset();
        e.orphaned_by_silence = false;
      }
    }
    if (!batch.full()) ack.set_need_full(true);
  }

  std::set<std::string> listed;
  for (const pb::NodeStatus& incoming : batch.nodes()) {
    if (!ValidateNodeStatus(incoming).ok()) continue;  // a peer validated it; never trust blindly
    listed.insert(incoming.node_id());
    auto [it, inserted] = nodes_.try_emplace(incoming.node_id());
    NodeEntry& e = it->second;
    bool accept = inserted;
    if (!inserted) {
      const int cmp = CompareVersions(incoming, e.status);
      if (cmp > 0) {
        accept = true;
      } else if (cmp == 0) {
        if (e.home == from) {
          accept = true;  // the home's own word: load, offline
        } else if (e.home == options_.resource_id) {
          // Ours too: the node moved only if our stream is gone and the peer heard it later.
          accept = incoming.online() && e.disconnected_at.has_value() &&
                   incoming.last_heartbeat_ms() >= e.status.last_heartbeat_ms();
        } else {
          accept = incoming.online() && incoming.last_heartbeat_ms() > e.status.last_heartbeat_ms();
        }
      }
    }
    if (!accept) continue;
    const bool was_online = !inserted && e.status.online();
    const bool urgent = inserted || was_online != incoming.online() || incoming.draining() != e.status.draining();
    e.status = incoming;
    e.home = from;
    e.stream_id = 0;
    e.disconnected_at.reset();
    e.orphan_since.reset();
    e.orphaned_by_silence = false;
    // A node first learned already offline is retained from now on, like one that just went offline.
    if (!incoming.online() && (was_online || inserted)) e.offline_since = now;
    MarkDirty(incoming.node_id(), urgent);
  }
  if (batch.full()) {
    // Nodes the peer no longer homes: orphans until someone vouches for them again.
    for (auto& [id, e] : nodes_) {
      if (e.home == from && e.status.online() && !listed.count(id) && !e.orphan_since) e.orphan_since = now;
    }
  }
  for (const pb::App& app : batch.apps()) {
    if (AcceptPeerApp(app)) dirty_apps_.insert(app.name());
  }
  for (const std::string& key : batch.deleted_apps()) {
    const size_t at = key.rfind('@');
    if (at == std::string::npos) continue;
    uint64_t generation = 0;
    try {
      generation = std::stoull(key.substr(at + 1));
    } catch (...) {
      continue;
    }
    AcceptDeletion(key.substr(0, at), generation);
  }
  return ack;
}

bool ResourceState::AcceptPeerApp(const pb::App& app) {
  if (!IsValidName(app.name()) || app.generation() == 0) return false;
  auto tomb = tombstones_.find(app.name());
  if (tomb != tombstones_.end() && tomb->second >= app.generation()) return false;
  auto it = apps_.find(app.name());
  if (it != apps_.end() && it->second.generation() >= app.generation()) return false;
  apps_[app.name()] = app;
  last_generation_ = std::max(last_generation_, app.generation());
  if (tomb != tombstones_.end()) tombstones_.erase(tomb);
  return true;
}

bool ResourceState::AcceptDeletion(const std::string& name, uint64_t generation) {
  auto tomb = tombstones_.find(name);
  if (tomb != tombstones_.end() && tomb->second >= generation) return false;
  auto it = apps_.find(name);
  if (it != apps_.end() && it->second.generation() > generation) return false;
  if (it != apps_.end()) apps_.erase(it);
  tombstones_[name] = generation;
  last_generation_ = std::max(last_generation_, generation);
  dirty_apps_.erase(name);
  deleted_apps_.push_back(DeletionKey(name, generation));
  urgent_ = true;
  return true;
}

pb::App ResourceState::ApplyApp(pb::App app) {
  MutexLock lock(mu_);
  const uint64_t wall_us = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(clock_.WallNow().time_since_epoch()).count());
  last_generation_ = std::max(last_generation_ + 1, wall_us);
  app.set_generation(last_generation_);
  tombstones_.erase(app.name());
  apps_[app.name()] = app;
  dirty_apps_.insert(app.name());
  urgent_ = true;
  return app;
}

Status ResourceState::DeleteApp(const std::string& name) {
  MutexLock lock(mu_);
  auto it = apps_.find(name);
  if (it == apps_.end()) return NotFound("app \"" + name + "\" is not known");
  AcceptDeletion(name, std::max(last_generation_ + 1, it->second.generation()));
  return Status::Ok();
}

void ResourceState::LoadApps(const std::vector<pb::App>& apps) {
  MutexLock lock(mu_);
  for (const auto& app : apps) {
    if (AcceptPeerApp(app)) dirty_apps_.insert(app.name());
  }
}

void ResourceState::ExpireLocked(SteadyTime now) {
  const Duration silence = options_.heartbeat_interval * options_.offline_after;
  for (auto& [name, peer] : peers_) {
    if (!peer.silent && now - peer.last_push >= options_.peer_timeout) {
      peer.silent = true;
      GetLogger("compute")->warn("resource {}: peer {} silent; its nodes wait for re-homing", options_.resource_id,
                                 name);
      for (auto& [id, e] : nodes_) {
        if (e.home == name && e.status.online() && !e.orphan_since) {
          e.orphan_since = now;
          e.orphaned_by_silence = true;
        }
      }
    }
  }
  for (auto it = nodes_.begin(); it != nodes_.end();) {
    NodeEntry& e = it->second;
    if (e.status.online()) {
      if (e.home == options_.resource_id) {
        if (e.disconnected_at && now - *e.disconnected_at >= options_.reconnect_grace) {
          SetOffline(e, "stream lost");
        } else if (now - e.last_heard >= silence) {
          SetOffline(e, "silent");
        }
      } else if (e.orphan_since && now - *e.orphan_since >= silence) {
        SetOffline(e, "home " + e.home + " stopped vouching");
      }
    } else if (now - e.offline_since >= options_.offline_retention) {
      dirty_.erase(it->first);
      it = nodes_.erase(it);
      continue;
    }
    ++it;
  }
}

ResourceState::Flushed ResourceState::Flush() {
  Flushed out;
  auto peer = std::make_shared<pb::PeerBatch>();
  peer->set_from_resource_id(options_.resource_id);
  peer->set_cluster(options_.cluster);
  MutexLock lock(mu_);
  ExpireLocked(clock_.Now());
  urgent_ = false;
  if (!dirty_.empty() || !dirty_apps_.empty() || !deleted_apps_.empty()) {
    auto update = std::make_shared<pb::ViewUpdate>();
    update->set_resource_id(options_.resource_id);
    update->set_cluster(options_.cluster);
    for (const std::string& id : dirty_) {
      auto it = nodes_.find(id);
      if (it == nodes_.end()) continue;
      *update->add_nodes() = it->second.status;
      if (it->second.home == options_.resource_id) *peer->add_nodes() = it->second.status;
    }
    for (const std::string& name : dirty_apps_) {
      auto it = apps_.find(name);
      if (it == apps_.end()) continue;
      *update->add_apps() = it->second;
      *peer->add_apps() = it->second;
    }
    for (const std::string& key : deleted_apps_) {
      update->add_deleted_apps(key);
      peer->add_deleted_apps(key);
    }
    out.apps_changed = !dirty_apps_.empty() || !deleted_apps_.empty();
    dirty_.clear();
    dirty_apps_.clear();
    deleted_apps_.clear();
    out.update = update;
    for (auto& [id, w] : watchers_) {
      if (w.cut_off) continue;
      if (w.queue.size() >= options_.max_watch_queue) {
        w.cut_off = true;
        w.queue.clear();
        continue;
      }
      w.queue.push_back(update);
    }
    watch_cv_.NotifyAll();
  }
  out.peer = std::move(peer);
  return out;
}

bool ResourceState::urgent() const {
  MutexLock lock(mu_);
  return urgent_;
}

pb::View ResourceState::SnapshotLocked() const {
  pb::View view;
  view.set_resource_id(options_.resource_id);
  view.set_cluster(options_.cluster);
  std::vector<const pb::NodeStatus*> sorted;
  sorted.reserve(nodes_.size());
  for (const auto& [id, e] : nodes_) sorted.push_back(&e.status);
  std::sort(sorted.begin(), sorted.end(),
            [](const pb::NodeStatus* a, const pb::NodeStatus* b) { return a->node_id() < b->node_id(); });
  for (const pb::NodeStatus* s : sorted) *view.add_nodes() = *s;
  for (const auto& [name, app] : apps_) *view.add_apps() = app;
  return view;
}

pb::View ResourceState::Snapshot() const {
  MutexLock lock(mu_);
  return SnapshotLocked();
}

pb::PeerBatch ResourceState::FullPeerBatch() const {
  pb::PeerBatch batch;
  batch.set_from_resource_id(options_.resource_id);
  batch.set_cluster(options_.cluster);
  batch.set_full(true);
  MutexLock lock(mu_);
  for (const auto& [id, e] : nodes_) {
    if (e.home == options_.resource_id) *batch.add_nodes() = e.status;
  }
  for (const auto& [name, app] : apps_) *batch.add_apps() = app;
  for (const auto& [name, generation] : tombstones_) batch.add_deleted_apps(DeletionKey(name, generation));
  return batch;
}

std::vector<pb::App> ResourceState::Apps() const {
  MutexLock lock(mu_);
  std::vector<pb::App> out;
  for (const auto& [name, app] : apps_) out.push_back(app);
  return out;
}

ResourceState::Subscription ResourceState::Subscribe() {
  MutexLock lock(mu_);
  auto snapshot = std::make_shared<pb::ViewUpdate>();
  pb::View view = SnapshotLocked();
  snapshot->set_full(true);
  snapshot->set_resource_id(view.resource_id());
  snapshot->set_cluster(view.cluster());
  snapshot->mutable_nodes()->Swap(view.mutable_nodes());
  snapshot->mutable_apps()->Swap(view.mutable_apps());
  // Deletions too: a scheduler that starts after an app was deleted must still release its leftovers.
  for (const auto& [name, generation] : tombstones_) snapshot->add_deleted_apps(DeletionKey(name, generation));
  const uint64_t id = next_watcher_++;
  watchers_.try_emplace(id);
  return {id, std::move(snapshot)};
}

Result<std::shared_ptr<const pb::ViewUpdate>> ResourceState::Next(uint64_t id) {
  MutexLock lock(mu_);
  return NextLocked(id);
}

Result<std::shared_ptr<const pb::ViewUpdate>> ResourceState::WaitNext(uint64_t id, Duration timeout) {
  MutexLock lock(mu_);
  (void)watch_cv_.WaitFor(mu_, timeout, [&]() REQUIRES(mu_) {
    auto it = watchers_.find(id);
    return it == watchers_.end() || it->second.cut_off || !it->second.queue.empty();
  });
  return NextLocked(id);
}

Result<std::shared_ptr<const pb::ViewUpdate>> ResourceState::NextLocked(uint64_t id) {
  auto it = watchers_.find(id);
  if (it == watchers_.end()) return NotFound("no such watcher");
  if (it->second.cut_off) {
    return ResourceExhausted("watcher fell more than " + std::to_string(options_.max_watch_queue) +
                             " updates behind; watch again for a fresh snapshot");
  }
  if (it->second.queue.empty()) return std::shared_ptr<const pb::ViewUpdate>();
  auto update = std::move(it->second.queue.front());
  it->second.queue.pop_front();
  return update;
}

void ResourceState::Unsubscribe(uint64_t id) {
  MutexLock lock(mu_);
  watchers_.erase(id);
  watch_cv_.NotifyAll();
}

size_t ResourceState::online_nodes() const {
  MutexLock lock(mu_);
  size_t n = 0;
  for (const auto& [id, e] : nodes_) n += e.status.online() ? 1 : 0;
  return n;
}

size_t ResourceState::known_nodes() const {
  MutexLock lock(mu_);
  return nodes_.size();
}

}  // namespace chorus::compute
