#include "compute/scheduler_core.h"

#include <algorithm>
#include <cmath>

#include "base/logging.h"

namespace chorus::compute {
namespace {

bool Newer(const pb::NodeStatus& a, const pb::NodeStatus& b) {
  if (a.incarnation() != b.incarnation()) return a.incarnation() > b.incarnation();
  if (a.version() != b.version()) return a.version() > b.version();
  // Same state: a newer word on liveness or load still counts.
  return a.online() != b.online() || a.last_heartbeat_ms() >= b.last_heartbeat_ms();
}

bool Contains(const google::protobuf::RepeatedPtrField<std::string>& list, const std::string& v) {
  return list.empty() || std::find(list.begin(), list.end(), v) != list.end();
}

bool Serving(const pb::ReplicaStatus& r) {
  return r.state() == pb::REPLICA_STARTING || r.state() == pb::REPLICA_RUNNING;
}

// What is left on a node for new claims, including this scheduler's claim in flight to it.
struct Free {
  int slots = 0;
  int64_t cpu = 0;
  int64_t mem = 0;
  std::map<std::string, int> cards;
};

Free FreeOf(const pb::NodeStatus& n) {
  Free f;
  f.slots = n.capacity().slots() - n.replicas_size();
  int64_t cpu = 0, mem = 0;
  for (const auto& g : n.capacity().gpus()) f.cards[g.card_type()] += g.count();
  for (const auto& r : n.replicas()) {
    cpu += r.resources().cpu_millis();
    mem += r.resources().memory_mb();
    if (!r.card_type().empty()) f.cards[r.card_type()] -= r.resources().gpus();
  }
  f.cpu = n.capacity().cpu_millis() - cpu;
  f.mem = n.capacity().memory_mb() - mem;
  return f;
}

bool Fits(const Free& f, const pb::Resources& want) {
  if (f.slots <= 0 || f.cpu < want.cpu_millis() || f.mem < want.memory_mb()) return false;
  if (want.gpus() <= 0) return true;
  for (const auto& [type, free] : f.cards) {
    if (free >= want.gpus() && Contains(want.card_types(), type)) return true;
  }
  return false;
}

}  // namespace

SchedulerCore::SchedulerCore(SchedulerOptions options, Clock& clock, Random& random)
    : options_(std::move(options)), clock_(clock), random_(random) {}

bool SchedulerCore::Handles(const std::string& app) const {
  return options_.apps.empty() || std::find(options_.apps.begin(), options_.apps.end(), app) != options_.apps.end();
}

void SchedulerCore::Upsert(const std::string& source, const pb::NodeStatus& node) {
  auto [it, inserted] = nodes_.try_emplace(node.node_id());
  if (inserted || Newer(node, it->second.status)) {
    it->second.status = node;
    it->second.source = source;
  }
}

void SchedulerCore::ApplyUpdate(const std::string& source, const pb::ViewUpdate& update) {
  if (update.full()) {
    std::set<std::string> listed;
    for (const auto& n : update.nodes()) listed.insert(n.node_id());
    for (auto it = nodes_.begin(); it != nodes_.end();) {
      if (it->second.source == source && !listed.count(it->first)) {
        it = nodes_.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = apps_.begin(); it != apps_.end();) {
      bool listed_app = false;
      for (const auto& a : update.apps()) listed_app |= a.name() == it->first;
      if (it->second.source == source && !listed_app) {
        it = apps_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& n : update.nodes()) Upsert(source, n);
  for (const auto& a : update.apps()) {
    auto it = apps_.find(a.name());
    if (it == apps_.end() || it->second.app.generation() < a.generation()) {
      apps_[a.name()] = {a, source};
      deleted_apps_.erase(a.name());
    }
  }
  for (const std::string& key : update.deleted_apps()) {
    const size_t at = key.rfind('@');
    if (at == std::string::npos) continue;
    const std::string name = key.substr(0, at);
    uint64_t generation = 0;
    try {
      generation = std::stoull(key.substr(at + 1));
    } catch (...) {
      continue;
    }
    auto it = apps_.find(name);
    if (it != apps_.end() && it->second.app.generation() <= generation) {
      apps_.erase(it);
      deleted_apps_.insert(name);
    }
  }
}

void SchedulerCore::ObserveNode(const pb::NodeStatus& node) {
  auto it = nodes_.find(node.node_id());
  // Keep the view's liveness: an answer from the node itself does not say what resources think.
  pb::NodeStatus copy = node;
  if (it != nodes_.end()) {
    copy.set_online(it->second.status.online());
    copy.set_resource_id(it->second.status.resource_id());
    copy.set_last_heartbeat_ms(it->second.status.last_heartbeat_ms());
    if (Newer(copy, it->second.status)) it->second.status = std::move(copy);
  }
}

int SchedulerCore::Desired(const pb::App& app, int counted, double in_flight, const std::string& name) {
  if (app.max_replicas() <= 0) return app.replicas();
  const int lo = app.min_replicas(), hi = app.max_replicas();
  auto it = desired_.find(name);
  int current = it == desired_.end() ? std::clamp(std::max(counted, lo), lo, hi) : it->second;
  const double target = app.target_utilization() > 0 ? app.target_utilization() : 0.7;
  if (counted > 0 && app.max_concurrency() > 0) {
    const double utilization = in_flight / (static_cast<double>(counted) * app.max_concurrency());
    const int wanted = std::clamp(static_cast<int>(std::ceil(counted * utilization / target)), lo, hi);
    const SteadyTime now = clock_.Now();
    if (wanted > current) {
      current = wanted;
    } else if (wanted < current) {
      auto last = last_scale_down_.find(name);
      if (last == last_scale_down_.end() || now - last->second >= options_.scale_down_interval) {
        current -= 1;
        last_scale_down_[name] = now;
      }
    }
  }
  current = std::clamp(current, lo, hi);
  desired_[name] = current;
  return current;
}

std::string SchedulerCore::NewReplicaId(const std::string& app) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string id = app + "-";
  uint64_t r = random_.Next();
  for (int i = 0; i < 12; ++i, r >>= 4) id.push_back(kHex[r & 15]);
  return id;
}

SchedulerCore::Plan SchedulerCore::Reconcile() {
  Plan plan;
  const SteadyTime now = clock_.Now();

  // Tally what runs, per app, and what must go whatever the counts.
  struct Placed {
    const pb::ReplicaStatus* replica;
    const pb::NodeStatus* node;
  };
  std::map<std::string, std::vector<Placed>> current;      // counting replicas of the current generation
  std::map<std::string, std::vector<Placed>> old_gen;      // counting replicas of older generations
  std::map<std::string, double> in_flight;
  std::map<std::string, std::map<std::string, int>> per_node;  // app -> node -> replicas (any state)
  auto release = [&](const pb::NodeStatus& node, const pb::ReplicaStatus& r) {
    if (releasing_.count(r.replica_id())) return;
    releasing_.insert(r.replica_id());
    Release rel;
    rel.address = node.address();
    rel.request.set_node_id(node.node_id());
    rel.request.set_replica_id(r.replica_id());
    rel.request.set_scheduler_id(options_.scheduler_id);
    plan.releases.push_back(std::move(rel));
  };
  for (const auto& [id, rec] : nodes_) {
    const pb::NodeStatus& n = rec.status;
    if (!n.online()) continue;
    for (const auto& r : n.replicas()) {
      if (!Handles(r.app())) continue;
      per_node[r.app()][id] += 1;
      auto app = apps_.find(r.app());
      if (app == apps_.end()) {
        if (deleted_apps_.count(r.app()) && r.state() != pb::REPLICA_DRAINING) release(n, r);
        continue;
      }
      if (r.state() == pb::REPLICA_FAILED) {
        release(n, r);
        continue;
      }
      if (n.draining() || !Serving(r) || releasing_.count(r.replica_id())) continue;
      if (r.app_generation() == app->second.app.generation()) {
        current[r.app()].push_back({&r, &n});
        in_flight[r.app()] += r.in_flight();
      } else {
        old_gen[r.app()].push_back({&r, &n});
      }
    }
  }
  std::map<std::string, int> claims_per_app;
  for (const auto& [node, c] : claims_) claims_per_app[c.app] += 1;

  // Nodes that may take a claim now, with what they have free.
  struct Candidate {
    const pb::NodeStatus* node;
    Free free;
  };
  std::vector<Candidate> candidates;
  candidates.reserve(nodes_.size());
  for (const auto& [id, rec] : nodes_) {
    const pb::NodeStatus& n = rec.status;
    if (!n.online() || n.draining() || claims_.count(id)) continue;
    auto cd = cooldown_.find(id);
    if (cd != cooldown_.end() && now < cd->second.first) continue;
    Free f = FreeOf(n);
    if (f.slots <= 0) continue;
    candidates.push_back({&n, std::move(f)});
  }
  std::vector<bool> used(candidates.size(), false);

  for (const auto& [name, rec] : apps_) {
    if (!Handles(name)) continue;
    const pb::App& app = rec.app;
    auto& placed = current[name];
    const int counted = static_cast<int>(placed.size());
    const int inflight_claims = claims_per_app[name];
    const int desired = Desired(app, counted + inflight_claims, in_flight[name], name);
    int missing = desired - counted - inflight_claims;

    if (missing < 0 && inflight_claims == 0) {
      // Surplus: newest replica ids first, the same choice on every scheduler.
      std::sort(placed.begin(), placed.end(),
                [](const Placed& a, const Placed& b) { return a.replica->replica_id() > b.replica->replica_id(); });
      for (int i = 0; i < -missing && i < static_cast<int>(placed.size()); ++i) release(*placed[i].node, *placed[i].replica);
    }
    if (missing <= 0 && counted >= desired) {
      for (const auto& p : old_gen[name]) release(*p.node, *p.replica);  // the new generation is complete
    }
    if (missing <= 0) continue;

    // Placement: spread first (fewest replicas of this app), then most free CPU; one of the best
    // `candidates` at random so schedulers racing for the same nodes rarely collide.
    std::vector<size_t> fit;
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (used[i]) continue;
      const pb::NodeStatus& n = *candidates[i].node;
      if (!Contains(app.clusters(), n.cluster()) || !Contains(app.pools(), n.pool())) continue;
      if (Fits(candidates[i].free, app.resources())) fit.push_back(i);
    }
    const auto& spread = per_node[name];
    auto score_less = [&](size_t a, size_t b) {
      auto ca = spread.find(candidates[a].node->node_id());
      auto cb = spread.find(candidates[b].node->node_id());
      const int ra = ca == spread.end() ? 0 : ca->second;
      const int rb = cb == spread.end() ? 0 : cb->second;
      if (ra != rb) return ra < rb;
      return candidates[a].free.cpu > candidates[b].free.cpu;
    };
    const size_t take = std::min<size_t>(fit.size(), static_cast<size_t>(missing));
    const size_t window = std::min(fit.size(), take + static_cast<size_t>(std::max(0, options_.candidates - 1)));
    std::partial_sort(fit.begin(), fit.begin() + static_cast<std::ptrdiff_t>(window), fit.end(), score_less);
    fit.resize(window);
    for (size_t k = 0; k < take && claims_.size() < options_.max_claims_in_flight; ++k) {
      // Pick one of the best few that remain.
      const size_t span = std::min(fit.size() - k, static_cast<size_t>(std::max(1, options_.candidates)));
      const size_t pick = k + static_cast<size_t>(random_.Uniform(span));
      std::swap(fit[k], fit[pick]);
      const size_t i = fit[k];
      used[i] = true;
      const pb::NodeStatus& n = *candidates[i].node;
      Claim c;
      c.address = n.address();
      auto& req = c.request;
      req.set_node_id(n.node_id());
      req.set_incarnation(n.incarnation());
      req.set_expected_version(n.version());
      req.set_app(name);
      req.set_replica_id(NewReplicaId(name));
      *req.mutable_resources() = app.resources();
      req.set_max_concurrency(app.max_concurrency());
      *req.mutable_engine() = app.engine();
      req.set_scheduler_id(options_.scheduler_id);
      req.set_app_generation(app.generation());
      claims_[n.node_id()] = {name, app.resources()};
      ++claims_sent_;
      plan.claims.push_back(std::move(c));
    }
  }
  return plan;
}

void SchedulerCore::OnClaimDone(const Claim& claim, const Status& status, bool conflict, const pb::NodeStatus* node) {
  const std::string& id = claim.request.node_id();
  claims_.erase(id);
  if (node) ObserveNode(*node);
  if (status.ok()) {
    ++claims_accepted_;
    cooldown_.erase(id);
    return;
  }
  int& streak = cooldown_[id].second;
  if (conflict) ++conflicts_;
  streak = std::min(streak + 1, 16);
  // Exponential backoff with full jitter, so two schedulers do not retry in lockstep.
  const auto base = std::min<Duration>(options_.cooldown_max, options_.cooldown_min * (1LL << (streak - 1)));
  const auto jittered = Duration(static_cast<int64_t>(static_cast<double>(base.count()) * (0.5 + 0.5 * random_.NextDouble())));
  cooldown_[id].first = clock_.Now() + (conflict ? jittered : options_.cooldown_max);
}

void SchedulerCore::OnReleaseDone(const Release& release, const Status& status, const pb::NodeStatus* node) {
  releasing_.erase(release.request.replica_id());
  // A failed release is retried by the next Reconcile if the replica is still there.
  if (node) ObserveNode(*node);
  (void)status;
}

std::map<std::string, SchedulerCore::AppCounts> SchedulerCore::Counts() const {
  std::map<std::string, AppCounts> out;
  for (const auto& [name, rec] : apps_) {
    if (!Handles(name)) continue;
    AppCounts& c = out[name];
    auto d = desired_.find(name);
    c.desired = rec.app.max_replicas() > 0 ? (d == desired_.end() ? rec.app.min_replicas() : d->second)
                                           : rec.app.replicas();
  }
  for (const auto& [id, rec] : nodes_) {
    if (!rec.status.online() || rec.status.draining()) continue;
    for (const auto& r : rec.status.replicas()) {
      auto it = out.find(r.app());
      auto app = apps_.find(r.app());
      if (it == out.end() || app == apps_.end() || !Serving(r) || r.app_generation() != app->second.app.generation()) {
        continue;
      }
      it->second.counted += 1;
    }
  }
  for (const auto& [node, c] : claims_) {
    auto it = out.find(c.app);
    if (it != out.end()) it->second.claims_in_flight += 1;
  }
  return out;
}

const pb::App* SchedulerCore::FindApp(const std::string& name) const {
  auto it = apps_.find(name);
  return it == apps_.end() ? nullptr : &it->second.app;
}

size_t SchedulerCore::online_nodes() const {
  size_t n = 0;
  for (const auto& [id, rec] : nodes_) n += rec.status.online() ? 1 : 0;
  return n;
}

}  // namespace chorus::compute
