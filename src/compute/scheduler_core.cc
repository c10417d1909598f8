#include "compute/scheduler_core.h"

#include <algorithm>
#include <cmath>
#include <string_view>

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

constexpr int kForeignPenalty = 2;

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t Affinity(std::string_view scheduler, std::string_view node) {
  return Mix(std::hash<std::string_view>{}(scheduler) ^ Mix(std::hash<std::string_view>{}(node)));
}

}  // namespace

bool SchedulerCore::MineAmong(const std::set<std::string_view>& others, std::string_view node) const {
  const uint64_t mine = Affinity(options_.scheduler_id, node);
  for (std::string_view s : others) {
    if (s != options_.scheduler_id && Affinity(s, node) > mine) return false;
  }
  return true;
}

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
    if (it == apps_.end()) {
      deleted_apps_.insert(name);  // e.g. deleted before this scheduler started: leftovers still go
    } else if (it->second.app.generation() <= generation) {
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

  // Tally what runs, per app, and what must go whatever the counts. This walks every replica on
  // every Reconcile, so it does one hash lookup per replica (the app's tally) and keys by views
  // into the records, which stay put until Reconcile returns.
  struct Placed {
    const pb::ReplicaStatus* replica;
    const pb::NodeStatus* node;
  };
  struct Tally {
    const pb::App* app = nullptr;  // null: not a known app
    std::vector<Placed> current;   // counting replicas of the current generation
    std::vector<Placed> old_gen;   // counting replicas of older generations
    double in_flight = 0;
    std::unordered_map<std::string_view, int> per_node;  // node id -> replicas of the app (any state)
    int claims = 0;                                       // claims in flight
    std::set<std::string_view> schedulers;                // who claimed its replicas (the view says)
  };
  std::unordered_map<std::string_view, Tally> tallies;
  for (const auto& [name, rec] : apps_) {
    if (Handles(name)) tallies[name].app = &rec.app;
  }
  auto release = [&](const pb::NodeStatus& node, const pb::ReplicaStatus& r) {
    if (releasing_.size() >= options_.max_releases_in_flight || !releasing_.insert(r.replica_id()).second) return;
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
      auto t = tallies.find(r.app());
      if (t == tallies.end()) {
        if (Handles(r.app()) && deleted_apps_.count(r.app()) && r.state() != pb::REPLICA_DRAINING) release(n, r);
        continue;
      }
      Tally& tally = t->second;
      tally.per_node[id] += 1;
      if (!r.scheduler_id().empty()) tally.schedulers.insert(r.scheduler_id());
      if (r.state() == pb::REPLICA_FAILED) {
        release(n, r);
        continue;
      }
      if (n.draining() || !Serving(r) || (!releasing_.empty() && releasing_.count(r.replica_id()))) continue;
      if (r.app_generation() == tally.app->generation()) {
        tally.current.push_back({&r, &n});
        tally.in_flight += r.in_flight();
      } else {
        tally.old_gen.push_back({&r, &n});
      }
    }
  }
  for (const auto& [node, c] : claims_) {
    auto t = tallies.find(c.app);
    if (t != tallies.end()) t->second.claims += c.replicas;
  }

  // Nodes that may take a claim now, with what they have free: built on first need.
  struct Candidate {
    const pb::NodeStatus* node;
    Free free;
  };
  std::vector<Candidate> candidates;
  std::vector<bool> used;
  bool have_candidates = false;
  auto build_candidates = [&] {
    have_candidates = true;
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
    used.assign(candidates.size(), false);
  };

  for (const auto& [name, rec] : apps_) {  // in name order, so placement is reproducible
    auto t = tallies.find(name);
    if (t == tallies.end()) continue;
    Tally& tally = t->second;
    const pb::App& app = rec.app;
    auto& placed = tally.current;
    const int counted = static_cast<int>(placed.size());
    const int inflight_claims = tally.claims;
    const int desired = Desired(app, counted + inflight_claims, tally.in_flight, name);
    int missing = desired - counted - inflight_claims;

    if (missing < 0 && inflight_claims == 0) {
      // Surplus: newest replica ids first, the same choice on every scheduler.
      std::sort(placed.begin(), placed.end(),
                [](const Placed& a, const Placed& b) { return a.replica->replica_id() > b.replica->replica_id(); });
      for (int i = 0; i < -missing && i < static_cast<int>(placed.size()); ++i) release(*placed[i].node, *placed[i].replica);
    }
    if (missing <= 0 && counted >= desired) {
      for (const auto& p : tally.old_gen) release(*p.node, *p.replica);  // the new generation is complete
    }
    if (missing <= 0) continue;

    if (claims_.size() >= options_.max_claims_in_flight) continue;
    if (!have_candidates) build_candidates();

    // Placement (docs/compute.md, "Scheduler"): spread first — only nodes with the fewest replicas
    // of this app are considered until they run out — then, within that tier, free CPU: with
    // `candidates` = 1 the most free CPU wins; with d > 1, the best of d nodes drawn at random from
    // the tier (power of d choices). Drawing at random is what keeps schedulers racing for the same
    // nodes apart: two of them pick the same node with probability about 1/tier, not 1/d.
    const auto& spread = tally.per_node;
    // Schedulers racing on one app split the nodes: among the schedulers the view shows placing
    // it, each node "belongs" to the one with the highest hash of (scheduler, node) (rendezvous
    // hashing). Another scheduler's node ranks as if it ran kForeignPenalty more replicas of the
    // app, so a scheduler fills its own nodes a little deeper before it crosses into another's
    // (where its view lags and claims conflict): spread stays within kForeignPenalty replicas per
    // node, and two schedulers collide only when one runs out of room, not on half their claims.
    struct Fit {
      int key;       // 2 × (replicas of the app + kForeignPenalty if not mine) + not mine
      int replicas;  // of the app on the node
      size_t candidate;
    };
    std::vector<Fit> fit;
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (used[i]) continue;
      const pb::NodeStatus& n = *candidates[i].node;
      if (!Contains(app.clusters(), n.cluster()) || !Contains(app.pools(), n.pool())) continue;
      if (!Fits(candidates[i].free, app.resources())) continue;
      auto sp = spread.find(n.node_id());
      const int replicas = sp == spread.end() ? 0 : sp->second;
      const int not_mine = MineAmong(tally.schedulers, n.node_id()) ? 0 : 1;
      fit.push_back({2 * (replicas + kForeignPenalty * not_mine) + not_mine, replicas, i});
    }
    std::sort(fit.begin(), fit.end(), [&](const Fit& x, const Fit& y) {
      if (x.key != y.key) return x.key < y.key;
      return candidates[x.candidate].free.cpu > candidates[y.candidate].free.cpu;
    });
    // Several replicas per claim when the app is short of more than the nodes with room can take
    // one each, up to the level an even spread reaches (water filling over the nodes in `fit`):
    // `level` is the highest with sum(max(0, level - replicas)) <= missing; a node below it gets
    // level - replicas, and the `rest` go one each to nodes at the level (spread first), then one
    // more each to nodes below it. GPU replicas go one per claim (the node picks each one's card).
    const int per_claim_max = app.resources().gpus() > 0 ? 1 : std::max(1, options_.max_replicas_per_claim);
    int64_t level = 0, rest_at_level = 0, rest_below = 0;
    if (per_claim_max > 1 && !fit.empty()) {
      std::vector<int> sorted;
      sorted.reserve(fit.size());
      for (const Fit& f : fit) sorted.push_back(f.replicas);
      std::sort(sorted.begin(), sorted.end());
      level = sorted[0];
      size_t at_or_below = 0;  // nodes with replicas <= level
      int64_t filled = 0;      // sum(max(0, level - replicas))
      while (true) {
        while (at_or_below < sorted.size() && sorted[at_or_below] <= level) ++at_or_below;
        if (filled + static_cast<int64_t>(at_or_below) > missing) break;
        filled += static_cast<int64_t>(at_or_below);
        ++level;
      }
      const int64_t rest = missing - filled;
      const int64_t at_level = static_cast<int64_t>(std::count(sorted.begin(), sorted.end(), static_cast<int>(level)));
      rest_at_level = std::min(rest, at_level);
      rest_below = rest - rest_at_level;
    }
    const size_t draws = static_cast<size_t>(std::max(1, options_.candidates));
    size_t tier_end = 0;
    int to_place = missing;
    for (size_t k = 0; k < fit.size() && to_place > 0 && claims_.size() < options_.max_claims_in_flight; ++k) {
      if (tier_end <= k) {
        tier_end = k;
        while (tier_end < fit.size() && fit[tier_end].key == fit[k].key) ++tier_end;
      }
      size_t pick = k;  // with one draw: fit[k..tier_end) is sorted by free CPU, so k is the best
      if (draws > 1) {
        pick = k + static_cast<size_t>(random_.Uniform(tier_end - k));
        for (size_t d = 1; d < draws; ++d) {
          const size_t other = k + static_cast<size_t>(random_.Uniform(tier_end - k));
          if (candidates[fit[other].candidate].free.cpu > candidates[fit[pick].candidate].free.cpu) pick = other;
        }
      }
      std::swap(fit[k], fit[pick]);
      const size_t i = fit[k].candidate;
      used[i] = true;
      const pb::NodeStatus& n = *candidates[i].node;
      int count = 1;
      if (per_claim_max > 1) {
        const Free& f = candidates[i].free;
        const pb::Resources& want = app.resources();
        int64_t room = std::min<int64_t>({f.slots, f.cpu / std::max<int64_t>(1, want.cpu_millis()),
                                          f.mem / std::max<int64_t>(1, want.memory_mb())});
        int64_t share = 0;
        if (fit[k].replicas < level) {
          share = level - fit[k].replicas;
          if (rest_below > 0) ++share, --rest_below;
        } else if (fit[k].replicas == level && rest_at_level > 0) {
          share = 1;
          --rest_at_level;
        }
        count = static_cast<int>(std::clamp<int64_t>(std::min<int64_t>({share, room, to_place, per_claim_max}), 1,
                                                     per_claim_max));
      }
      Claim c;
      c.address = n.address();
      auto& req = c.request;
      req.set_node_id(n.node_id());
      req.set_incarnation(n.incarnation());
      req.set_expected_version(n.version());
      req.set_app(name);
      req.set_replica_id(NewReplicaId(name));
      for (int r = 1; r < count; ++r) req.add_more_replica_ids(NewReplicaId(name));
      *req.mutable_resources() = app.resources();
      req.set_max_concurrency(app.max_concurrency());
      *req.mutable_engine() = app.engine();
      req.set_scheduler_id(options_.scheduler_id);
      req.set_app_generation(app.generation());
      claims_[n.node_id()] = {name, count};
      to_place -= count;
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
    replicas_claimed_ += 1 + static_cast<uint64_t>(claim.request.more_replica_ids_size());
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
  if (node) ObserveNode(*node);
  if (status.code() == StatusCode::kNotFound) {
    // The node no longer runs it (stopped meanwhile, or the node restarted): the view is stale, so
    // forget the replica rather than release it again on every Reconcile.
    auto it = nodes_.find(release.request.node_id());
    if (it != nodes_.end()) {
      auto* replicas = it->second.status.mutable_replicas();
      for (int i = 0; i < replicas->size(); ++i) {
        if (replicas->Get(i).replica_id() == release.request.replica_id()) {
          replicas->DeleteSubrange(i, 1);
          break;
        }
      }
    }
  }
  // Any other failure is retried by the next Reconcile if the replica is still there.
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
    if (it != out.end()) it->second.claims_in_flight += c.replicas;
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
