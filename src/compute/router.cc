#include "compute/router.h"

#include <algorithm>
#include <cmath>

#include "chorus/compute/v1/compute.pb.h"

namespace chorus::compute {
namespace {

namespace pb = ::chorus::compute::v1;

bool Retryable(StatusCode code) {
  switch (code) {
    case StatusCode::kUnavailable:
    case StatusCode::kResourceExhausted:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kInternal:
      return true;
    default:
      return false;
  }
}

// The capacity a replica brings to its app's routing weight.
double ReplicaCapacity(const pb::NodeStatus& node, const pb::ReplicaStatus& r) {
  if (r.resources().gpus() > 0) {
    double perf = 1.0;
    for (const auto& g : node.capacity().gpus()) {
      if (g.card_type() == r.card_type() && g.perf() > 0) perf = g.perf();
    }
    return NodeCapacity(0, r.resources().gpus(), perf);
  }
  return NodeCapacity(static_cast<double>(r.resources().cpu_millis()) / 1000.0, 0, 0);
}

}  // namespace

struct Router::Call {
  std::string app;
  std::shared_ptr<const std::string> payload;
  Done done;
  int attempts = 0;
  std::string failed_node;  // the node of the failed attempt: avoided by the retry
};

Router::Router(RouterOptions options, Clock& clock, InvokeTransport& transport)
    : options_(std::move(options)), clock_(clock), transport_(transport), next_seed_(options_.seed) {}

Router::~Router() = default;

Router::Table& Router::TableLocked(const std::string& app) {
  auto [it, inserted] = tables_.try_emplace(app);
  if (inserted) it->second.picker = MakePicker(options_.policy, next_seed_++);
  return it->second;
}

double Router::WeightLocked(const NodeInfo& info, const std::string& app) const {
  auto it = info.running.find(app);
  const double capacity = it == info.running.end() ? 0 : it->second;
  if (!options_.dynamic_weights)
    return std::clamp(capacity, options_.weights.min_weight, options_.weights.max_weight);
  return DynamicWeight({capacity, info.utilization, info.concurrency}, options_.weights);
}

void Router::SyncMembershipLocked(const std::string& node_id, NodeInfo& info) {
  const bool suspended = clock_.Now() < info.suspended_until;
  std::set<std::string> want;
  if (info.routable && !suspended) {
    for (const auto& [app, capacity] : info.running) {
      if (apps_.count(app)) want.insert(app);
    }
  }
  for (auto it = info.member_of.begin(); it != info.member_of.end();) {
    if (want.count(*it)) {
      ++it;
      continue;
    }
    auto t = tables_.find(*it);
    if (t != tables_.end()) {
      auto id = t->second.ids.find(node_id);
      if (id != t->second.ids.end()) {
        t->second.picker->Remove(id->second);
        auto w = t->second.weights.find(id->second);
        if (w != t->second.weights.end()) {
          t->second.total_weight -= w->second;
          t->second.weights.erase(w);
        }
      }
    }
    it = info.member_of.erase(it);
  }
  for (const std::string& app : want) {
    if (info.member_of.count(app)) continue;
    Table& t = TableLocked(app);
    auto [id, inserted] = t.ids.try_emplace(node_id, static_cast<NodeId>(t.names.size()));
    if (inserted) t.names.push_back(node_id);
    const double weight = WeightLocked(info, app);
    if (t.picker->Add(id->second, weight).ok()) {
      t.weights[id->second] = weight;
      t.total_weight += weight;
      info.member_of.insert(app);
    }
  }
}

void Router::UpsertLocked(const std::string& source, const pb::NodeStatus& node) {
  NodeInfo& info = nodes_[node.node_id()];
  info.source = source;
  info.address = node.address();
  info.routable = node.online() && !node.draining() && !node.address().empty();
  info.utilization = node.cpu_utilization();
  info.concurrency = node.in_flight();
  info.status = std::make_shared<const pb::NodeStatus>(node);
  info.running.clear();
  for (const auto& r : node.replicas()) {
    if (r.state() == pb::REPLICA_RUNNING) info.running[r.app()] += ReplicaCapacity(node, r);
  }
  SyncMembershipLocked(node.node_id(), info);
}

void Router::EraseLocked(const std::string& node_id) {
  auto it = nodes_.find(node_id);
  if (it == nodes_.end()) return;
  it->second.routable = false;
  SyncMembershipLocked(node_id, it->second);
  suspended_.erase(node_id);
  nodes_.erase(it);
}

void Router::ApplyUpdate(const std::string& source, const pb::ViewUpdate& update) {
  MutexLock lock(mu_);
  std::vector<std::string> resync;  // nodes whose memberships depend on the apps that changed
  if (update.full()) {
    std::set<std::string> listed_apps;
    for (const auto& a : update.apps()) listed_apps.insert(a.name());
    for (auto it = apps_.begin(); it != apps_.end();) {
      if (it->second == source && !listed_apps.count(it->first)) {
        tables_.erase(it->first);
        it = apps_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& a : update.apps()) apps_.try_emplace(a.name(), source);
  for (const std::string& key : update.deleted_apps()) {
    const std::string name = key.substr(0, key.rfind('@'));
    if (apps_.erase(name)) tables_.erase(name);
  }
  if (!update.apps().empty() || !update.deleted_apps().empty() || update.full()) {
    // Tables may have gone or become possible: drop stale memberships, add new ones.
    for (auto& [id, info] : nodes_) {
      for (auto it = info.member_of.begin(); it != info.member_of.end();) {
        it = tables_.count(*it) ? std::next(it) : info.member_of.erase(it);
      }
      resync.push_back(id);
    }
  }
  if (update.full()) {
    std::set<std::string> listed;
    for (const auto& n : update.nodes()) listed.insert(n.node_id());
    std::vector<std::string> gone;
    for (const auto& [id, info] : nodes_) {
      if (info.source == source && !listed.count(id)) gone.push_back(id);
    }
    for (const auto& id : gone) EraseLocked(id);
  }
  for (const auto& n : update.nodes()) UpsertLocked(source, n);
  for (const std::string& id : resync) {
    auto it = nodes_.find(id);
    if (it != nodes_.end()) SyncMembershipLocked(id, it->second);
  }
}

void Router::RecomputeWeights() {
  MutexLock lock(mu_);
  const SteadyTime now = clock_.Now();
  for (auto it = suspended_.begin(); it != suspended_.end();) {
    auto node = nodes_.find(*it);
    if (node == nodes_.end()) {
      it = suspended_.erase(it);
    } else if (now >= node->second.suspended_until) {
      SyncMembershipLocked(*it, node->second);
      it = suspended_.erase(it);
    } else {
      ++it;
    }
  }
  std::vector<NodeLoad> loads;
  std::vector<WeightedNode> table;
  for (auto& [app, t] : tables_) {
    loads.clear();
    table.clear();
    for (const auto& [id, weight] : t.weights) {
      const NodeInfo& info = nodes_.at(t.names[id]);
      auto cap = info.running.find(app);
      loads.push_back({cap == info.running.end() ? 0 : cap->second, info.utilization, info.concurrency});
      table.push_back({id, 0});
    }
    if (options_.dynamic_weights) {
      std::vector<double> weights = compute::RecomputeWeights(loads, options_.weights);
      for (size_t i = 0; i < table.size(); ++i) {
        // Damping: the formula's inputs are instantaneous samples (in-flight counts of a few), so
        // a raw weight can swing by orders of magnitude between two ticks and starve or flood a
        // node for a whole interval. Move geometrically towards the new value, at most by
        // max_weight_step per tick.
        const double old = t.weights[table[i].id];
        double w = weights[i];
        if (old > 0 && std::isfinite(old)) {
          const double step = std::max(1.0, options_.max_weight_step);
          w = std::clamp(w, old / step, old * step);
          w = std::exp(options_.weight_smoothing * std::log(w) +
                       (1 - options_.weight_smoothing) * std::log(old));
        }
        table[i].weight = std::clamp(w, options_.weights.min_weight, options_.weights.max_weight);
      }
    } else {
      for (size_t i = 0; i < table.size(); ++i) {
        table[i].weight =
            std::clamp(loads[i].capacity, options_.weights.min_weight, options_.weights.max_weight);
      }
    }
    if (t.picker->Update(table).ok()) {
      t.total_weight = 0;
      for (const auto& n : table) {
        t.weights[n.id] = n.weight;
        t.total_weight += n.weight;
      }
    }
  }
  ++stats_.recomputations;
}

void Router::Invoke(const std::string& app, std::string payload, Done done) {
  auto call = std::make_shared<Call>();
  call->app = app;
  call->payload = std::make_shared<const std::string>(std::move(payload));
  call->done = std::move(done);
  {
    MutexLock lock(mu_);
    ++stats_.requests;
  }
  Attempt(std::move(call));
}

void Router::Attempt(std::shared_ptr<Call> call) {
  RouteTarget target;
  NodeId picked = 0;
  Status refused;
  {
    MutexLock lock(mu_);
    auto t = tables_.find(call->app);
    if (!apps_.count(call->app)) {
      refused = NotFound("unknown app \"" + call->app + "\"");
    } else if (t == tables_.end() || t->second.picker->size() == 0) {
      refused = Unavailable("no running replica of app " + call->app + " on any reachable node");
    } else {
      Table& table = t->second;
      // A retry avoids the node that just failed (a few draws: the picker is smooth, so the next
      // pick is almost never the same node again unless it is the only one).
      std::optional<NodeId> id;
      for (int i = 0; i < 4; ++i) {
        id = table.picker->Pick();
        if (!id || table.picker->size() == 1 || table.names[*id] != call->failed_node) break;
      }
      if (id && options_.inflight_guard > 0 && options_.dynamic_weights &&
          options_.policy != PickerKind::kP2cLeastRequest) {
        // Pass over a node that holds far more of our requests than its weight share (it slowed
        // down since the last weights): the best of up to 3 picks by in-flight / allowance.
        auto load = [&](NodeId n) {
          const double share = table.total_weight > 0 ? table.weights[n] / table.total_weight : 0;
          const double allowance =
              2 + options_.inflight_guard * static_cast<double>(table.total_in_flight) * share;
          return static_cast<double>(table.in_flight[n]) / allowance;
        };
        double best = load(*id);
        for (int i = 0; i < 2 && best >= 1; ++i) {
          std::optional<NodeId> other = table.picker->Pick();
          if (!other || table.names[*other] == call->failed_node) continue;
          if (const double l = load(*other); l < best) {
            best = l;
            id = other;
          }
        }
      }
      if (!id) {
        refused = Unavailable("no running replica of app " + call->app + " on any reachable node");
      } else {
        picked = *id;
        table.picker->OnRequestStart(picked);
        ++table.in_flight[picked];
        ++table.total_in_flight;
        ++table.requests[picked];
        target.app = call->app;
        target.node_id = table.names[picked];
        target.address = nodes_.at(target.node_id).address;
      }
    }
    if (!refused.ok()) ++stats_.failures;
  }
  if (!refused.ok()) {
    // A retry that finds nothing left reports the first failure's reason too.
    call->done(call->attempts > 0 ? refused.WithContext("after a failed attempt on " + call->failed_node)
                                  : refused);
    return;
  }
  ++call->attempts;
  transport_.Invoke(target, call->payload, [this, call, picked, target](Result<std::string> result) mutable {
    const bool retry =
        !result.ok() && Retryable(result.status().code()) && call->attempts <= options_.retries;
    {
      MutexLock lock(mu_);
      auto t = tables_.find(target.app);
      if (t != tables_.end()) {
        t->second.picker->OnRequestFinish(picked);
        auto n = t->second.in_flight.find(picked);
        if (n != t->second.in_flight.end() && n->second > 0) {
          --n->second;
          --t->second.total_in_flight;
        }
      }
      // Suspend a node that refused, unless it is the app's last one: a lone node that refused once
      // (a worker restarting) is still the best bet, and an empty table fails everything.
      const bool others = t != tables_.end() && t->second.picker->size() > 1;
      if (!result.ok() && result.status().code() == StatusCode::kUnavailable && others) {
        auto node = nodes_.find(target.node_id);
        if (node != nodes_.end()) {
          node->second.suspended_until = clock_.Now() + options_.suspend_for;
          suspended_.insert(target.node_id);
          SyncMembershipLocked(target.node_id, node->second);
        }
      }
      if (retry) ++stats_.retries;
      if (!result.ok() && !retry) ++stats_.failures;
    }
    if (result.ok()) {
      call->done(Reply{std::move(*result), target.node_id, call->attempts});
    } else if (retry) {
      call->failed_node = target.node_id;
      Attempt(std::move(call));
    } else {
      call->done(result.status());
    }
  });
}

std::vector<Router::Route> Router::Routes(const std::string& app) const {
  MutexLock lock(mu_);
  std::vector<Route> out;
  auto t = tables_.find(app);
  if (t == tables_.end()) return out;
  for (const auto& [id, weight] : t->second.weights) {
    const std::string& node_id = t->second.names[id];
    auto n = t->second.requests.find(id);
    out.push_back({node_id, nodes_.at(node_id).address, weight, n == t->second.requests.end() ? 0 : n->second});
  }
  std::sort(out.begin(), out.end(), [](const Route& a, const Route& b) { return a.node_id < b.node_id; });
  return out;
}

std::vector<std::shared_ptr<const pb::NodeStatus>> Router::Nodes() const {
  MutexLock lock(mu_);
  std::vector<std::shared_ptr<const pb::NodeStatus>> out;
  for (const auto& [id, info] : nodes_) {
    if (info.status) out.push_back(info.status);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a->node_id() < b->node_id(); });
  return out;
}

bool Router::KnowsApp(const std::string& app) const {
  MutexLock lock(mu_);
  return apps_.count(app) > 0;
}

Router::Stats Router::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

}  // namespace chorus::compute
