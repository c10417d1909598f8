#include "compute/node_agent.h"

#include <algorithm>
#include <map>
#include <vector>

#include <fmt/format.h>

#include "base/logging.h"
#include "compute/app_spec.h"

namespace chorus::compute {
namespace {

pb::ReplicaState ToProto(ReplicaRuntime::State s) {
  switch (s) {
    case ReplicaRuntime::State::kRunning:
      return pb::REPLICA_RUNNING;
    case ReplicaRuntime::State::kFailed:
      return pb::REPLICA_FAILED;
    case ReplicaRuntime::State::kStopped:
      return pb::REPLICA_DRAINING;
    case ReplicaRuntime::State::kStarting:
    case ReplicaRuntime::State::kRestarting:
      return pb::REPLICA_STARTING;
  }
  return pb::REPLICA_STARTING;
}

// The replica ids a claim asks for: replica_id, then more_replica_ids.
std::vector<std::string> ClaimedIds(const pb::ClaimRequest& c) {
  std::vector<std::string> ids;
  ids.reserve(1 + c.more_replica_ids_size());
  ids.push_back(c.replica_id());
  for (const auto& id : c.more_replica_ids()) ids.push_back(id);
  return ids;
}

Status ValidateClaimShape(const pb::ClaimRequest& c) {
  if (!IsValidName(c.app())) return InvalidArgument("app: not a valid app name");
  if (c.more_replica_ids_size() >= kMaxReplicasPerClaim) {
    return InvalidArgument("more_replica_ids: at most " + std::to_string(kMaxReplicasPerClaim) + " replicas per claim");
  }
  std::vector<std::string> ids = ClaimedIds(c);
  for (const auto& id : ids) {
    if (id.empty() || id.size() > 128) return InvalidArgument("replica_id: 1..128 bytes");
  }
  std::sort(ids.begin(), ids.end());
  if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) {
    return InvalidArgument("more_replica_ids: replica ids of a claim must be distinct");
  }
  const auto& r = c.resources();
  if (r.cpu_millis() <= 0 || r.memory_mb() <= 0 || r.gpus() < 0 || r.gpus() > kMaxGpus) {
    return InvalidArgument("resources: cpu_millis and memory_mb must be positive, gpus 0.." + std::to_string(kMaxGpus));
  }
  if (c.max_concurrency() < 1 || c.max_concurrency() > kMaxConcurrency) {
    return InvalidArgument("max_concurrency: 1.." + std::to_string(kMaxConcurrency));
  }
  const auto& e = c.engine();
  if (e.engine() == "exec") {
    if (e.command().empty() || e.command()[0] != '/') return InvalidArgument("engine.command: an absolute path");
  } else if (e.engine() != "synthetic" && !IsBuiltinEngine(e.engine())) {
    return InvalidArgument("engine: \"" + e.engine().substr(0, 40) + "\" is not exec, synthetic or a built-in engine");
  }
  return Status::Ok();
}

uint64_t NewIncarnation(Clock& clock) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(clock.WallNow().time_since_epoch()).count());
}

}  // namespace

NodeAgent::NodeAgent(NodeOptions options, Clock& clock, RuntimeFactory factory)
    : options_(std::move(options)), clock_(clock), factory_(std::move(factory)), incarnation_(NewIncarnation(clock)) {
  MutexLock lock(mu_);
  address_ = options_.address;
}

void NodeAgent::SetAddress(std::string address) {
  MutexLock lock(mu_);
  address_ = std::move(address);
}

NodeAgent::~NodeAgent() {
  StopAll(Duration::zero());
  MutexLock lock(mu_);
  stoppers_cv_.Wait(mu_, [&]() REQUIRES(mu_) { return active_stoppers_ == 0; });
}

void NodeAgent::BumpLocked() { ++version_; }

void NodeAgent::Notify() {
  std::function<void()> listener;
  {
    MutexLock lock(mu_);
    listener = listener_;
  }
  if (listener) listener();
}

void NodeAgent::SetChangeListener(std::function<void()> listener) {
  MutexLock lock(mu_);
  listener_ = std::move(listener);
}

NodeAgent::ClaimOutcome NodeAgent::Claim(const pb::ClaimRequest& claim) {
  ClaimOutcome out;
  if (Status st = ValidateClaimShape(claim); !st.ok()) {
    out.status = st;
    out.node = CurrentStatus();
    return out;
  }
  const std::vector<std::string> ids = ClaimedIds(claim);
  const int count = static_cast<int>(ids.size());
  std::vector<std::string> cards(ids.size());  // the card type given to each replica (gpus > 0)
  {
    MutexLock lock(mu_);
    auto refuse = [&](Status st) REQUIRES(mu_) {
      out.status = std::move(st);
      out.node = StatusLocked();
      return out;
    };
    if (claim.node_id() != options_.node_id) {
      return refuse(FailedPrecondition("claim for node " + claim.node_id() + " reached node " + options_.node_id));
    }
    if (claim.incarnation() != incarnation_) {
      return refuse(FailedPrecondition("claim for incarnation " + std::to_string(claim.incarnation()) + " of node " +
                                       options_.node_id + ", which now runs incarnation " +
                                       std::to_string(incarnation_)));
    }
    if (draining_ || stopping_) return refuse(FailedPrecondition("node " + options_.node_id + " is draining"));
    if (claim.expected_version() != version_) {
      out.conflict = true;
      return refuse(FailedPrecondition("claim conflict: node " + options_.node_id + " is at version " +
                                       std::to_string(version_) + ", the claim expected " +
                                       std::to_string(claim.expected_version())));
    }
    for (const auto& id : ids) {
      if (replicas_.count(id)) return refuse(AlreadyExists("replica " + id + " already runs on node " + options_.node_id));
    }
    if (static_cast<int>(replicas_.size()) + count > options_.slots) {
      return refuse(ResourceExhausted("node " + options_.node_id + ": no free slot" + (count > 1 ? "s for " + std::to_string(count) + " replicas" : std::string())));
    }
    int64_t cpu = 0, mem = 0;
    for (const auto& [id, r] : replicas_) {
      cpu += r.status.resources().cpu_millis();
      mem += r.status.resources().memory_mb();
    }
    const auto& want = claim.resources();
    if (cpu + count * want.cpu_millis() > options_.capacity.cpu_millis ||
        mem + count * want.memory_mb() > options_.capacity.memory_mb) {
      return refuse(ResourceExhausted("node " + options_.node_id + ": not enough free cpu or memory"));
    }
    if (want.gpus() > 0) {
      std::map<std::string, int> used = gpus_used_;  // tentative, replica by replica
      for (int i = 0; i < count; ++i) {
        double best_perf = -1;
        for (const GpuGroup& g : options_.capacity.gpus) {
          const bool allowed = want.card_types().empty() ||
                               std::find(want.card_types().begin(), want.card_types().end(), g.card_type) !=
                                   want.card_types().end();
          if (!allowed || g.count - used[g.card_type] < want.gpus() || g.perf <= best_perf) continue;
          best_perf = g.perf;
          cards[i] = g.card_type;
        }
        if (cards[i].empty()) {
          return refuse(ResourceExhausted("node " + options_.node_id + ": not enough free GPUs of an accepted card type"));
        }
        used[cards[i]] += want.gpus();
      }
    }
    // Reserve before launching (outside the lock): the slots and resources are taken now.
    for (int i = 0; i < count; ++i) {
      Replica& r = replicas_[ids[i]];
      r.status.set_app(claim.app());
      r.status.set_replica_id(ids[i]);
      *r.status.mutable_resources() = want;
      r.status.set_state(pb::REPLICA_STARTING);
      r.status.set_max_concurrency(claim.max_concurrency());
      r.status.set_scheduler_id(claim.scheduler_id());
      r.status.set_claimed_at_ms(clock_.WallMillis());
      r.status.set_card_type(cards[i]);
      r.status.set_app_generation(claim.app_generation());
      if (!cards[i].empty()) gpus_used_[cards[i]] += want.gpus();
    }
    BumpLocked();
  }
  std::vector<std::unique_ptr<ReplicaRuntime>> orphans;  // started for replicas released meanwhile
  int started = 0;
  for (int i = 0; i < count; ++i) {
    ReplicaLaunch launch;
    launch.app = claim.app();
    launch.replica_id = ids[i];
    launch.engine = claim.engine();
    launch.max_concurrency = claim.max_concurrency();
    launch.on_state_change = [this, id = ids[i]] { OnRuntimeChange(id); };
    auto runtime = factory_(launch);
    MutexLock lock(mu_);
    auto it = replicas_.find(ids[i]);
    if (!runtime.ok()) {
      if (it != replicas_.end()) {
        if (!cards[i].empty()) gpus_used_[cards[i]] -= claim.resources().gpus();
        replicas_.erase(it);
      }
      BumpLocked();
      if (out.status.ok()) out.status = runtime.status().WithContext("starting the worker of " + ids[i]);
    } else if (it != replicas_.end()) {
      it->second.runtime = std::shared_ptr<ReplicaRuntime>(std::move(*runtime));
      const pb::ReplicaState state = ToProto(it->second.runtime->state());
      if (state != it->second.status.state()) {
        // The worker came up before it was stored, so OnRuntimeChange ignored it: the change is new.
        it->second.status.set_state(state);
        BumpLocked();
      }
      ++started;
    } else {
      // A Release (a racing scheduler's surplus decision) took the reserved slot while the worker
      // started: the replica does not exist, so it is not accepted.
      orphans.push_back(std::move(*runtime));
      if (out.status.ok()) {
        out.status = FailedPrecondition("replica " + ids[i] + " was released on node " + options_.node_id +
                                        " while its worker was starting");
      }
    }
  }
  {
    MutexLock lock(mu_);
    out.node = StatusLocked();
  }
  for (auto& orphan : orphans) orphan->Stop(options_.release_grace);
  if (started > 0) {
    GetLogger("compute")->info("node {}: claimed {}{} of {} for {}", options_.node_id, ids[0],
                               count > 1 ? fmt::format(" and {} more", count - 1) : std::string(), claim.app(),
                               claim.scheduler_id());
  }
  Notify();
  return out;
}

void NodeAgent::OnRuntimeChange(const std::string& replica_id) {
  {
    MutexLock lock(mu_);
    auto it = replicas_.find(replica_id);
    if (it == replicas_.end() || !it->second.runtime || it->second.releasing) return;
    const pb::ReplicaState next = ToProto(it->second.runtime->state());
    it->second.status.set_restarts(it->second.runtime->restarts());
    if (next == it->second.status.state()) return;
    it->second.status.set_state(next);
    BumpLocked();
  }
  Notify();
}

Result<pb::NodeStatus> NodeAgent::Release(const pb::ReleaseRequest& release) {
  {
    MutexLock lock(mu_);
    if (release.node_id() != options_.node_id) {
      return FailedPrecondition("release for node " + release.node_id() + " reached node " + options_.node_id);
    }
    auto it = replicas_.find(release.replica_id());
    if (it == replicas_.end()) {
      return NotFound("replica " + release.replica_id() + " does not run on node " + options_.node_id);
    }
    if (it->second.releasing) return StatusLocked();
    it->second.releasing = true;
    it->second.status.set_state(pb::REPLICA_DRAINING);
    BumpLocked();
    MaybeFinishRelease(release.replica_id());
  }
  GetLogger("compute")->info("node {}: releasing {} for {}", options_.node_id, release.replica_id(),
                             release.scheduler_id());
  Notify();
  MutexLock lock(mu_);
  return StatusLocked();
}

void NodeAgent::MaybeFinishRelease(const std::string& replica_id) {
  auto it = replicas_.find(replica_id);
  if (it == replicas_.end() || !it->second.releasing || it->second.status.in_flight() > 0 ||
      it->second.stop_started) {
    return;
  }
  std::shared_ptr<ReplicaRuntime> runtime = it->second.runtime;
  it->second.stop_started = true;
  ++active_stoppers_;
  std::thread([this, id = replica_id, runtime] { FinishRelease(id, runtime); }).detach();
}

void NodeAgent::FinishRelease(std::string replica_id, std::shared_ptr<ReplicaRuntime> runtime) {
  if (runtime) runtime->Stop(options_.release_grace);
  {
    MutexLock lock(mu_);
    auto it = replicas_.find(replica_id);
    if (it != replicas_.end()) {
      if (!it->second.status.card_type().empty()) {
        gpus_used_[it->second.status.card_type()] -= it->second.status.resources().gpus();
      }
      replicas_.erase(it);
      BumpLocked();
    }
  }
  Notify();
  MutexLock lock(mu_);
  --active_stoppers_;
  stoppers_cv_.NotifyAll();
}

void NodeAgent::Invoke(const std::string& app, const std::string& replica_id, std::string payload,
                       std::function<void(Result<std::string>, const std::string&)> done) {
  std::shared_ptr<ReplicaRuntime> runtime;
  std::string chosen;
  {
    MutexLock lock(mu_);
    if (stopping_) return done(Unavailable("node " + options_.node_id + " is stopping"), "");
    Replica* best = nullptr;
    bool saturated = false;
    for (auto& [id, r] : replicas_) {
      if (r.status.app() != app || (!replica_id.empty() && id != replica_id)) continue;
      if (r.releasing || !r.runtime || r.status.state() != pb::REPLICA_RUNNING) continue;
      if (r.status.in_flight() >= r.status.max_concurrency() * std::max(1, options_.invoke_queue)) {
        saturated = true;
        continue;
      }
      if (!best || r.status.in_flight() < best->status.in_flight()) best = &r;
    }
    if (!best) {
      if (saturated) {
        return done(ResourceExhausted("every replica of " + app + " on node " + options_.node_id + " is busy"), "");
      }
      return done(Unavailable("no running replica of " + app + " on node " + options_.node_id), "");
    }
    best->status.set_in_flight(best->status.in_flight() + 1);
    runtime = best->runtime;
    chosen = best->status.replica_id();
  }
  runtime->Invoke(std::move(payload), [this, chosen, done = std::move(done)](Result<std::string> result) {
    Done(chosen);
    // Unavailable is kept for refusals before a worker saw the request (safe to retry elsewhere);
    // a failure after the hand-off may have run part of the work, so it is Internal.
    if (!result.ok() && result.status().code() == StatusCode::kUnavailable) {
      result = Internal("worker of " + chosen + ": " + std::string(result.status().message()));
    }
    done(std::move(result), chosen);
  });
}

void NodeAgent::Done(const std::string& replica_id) {
  MutexLock lock(mu_);
  auto it = replicas_.find(replica_id);
  if (it == replicas_.end()) return;
  it->second.status.set_in_flight(std::max(0, it->second.status.in_flight() - 1));
  MaybeFinishRelease(replica_id);
}

void NodeAgent::BeginDrain() {
  {
    MutexLock lock(mu_);
    if (draining_) return;
    draining_ = true;
    BumpLocked();
  }
  GetLogger("compute")->info("node {}: draining", options_.node_id);
  Notify();
}

bool NodeAgent::draining() const {
  MutexLock lock(mu_);
  return draining_;
}

int NodeAgent::in_flight() const {
  MutexLock lock(mu_);
  int n = 0;
  for (const auto& [id, r] : replicas_) n += r.status.in_flight();
  return n;
}

void NodeAgent::StopAll(Duration grace) {
  std::vector<std::shared_ptr<ReplicaRuntime>> runtimes;
  {
    MutexLock lock(mu_);
    stopping_ = true;
    for (auto& [id, r] : replicas_) {
      if (r.runtime) runtimes.push_back(r.runtime);
    }
  }
  std::vector<std::thread> threads;
  for (auto& rt : runtimes) threads.emplace_back([rt, grace] { rt->Stop(grace); });
  for (auto& t : threads) t.join();
}

void NodeAgent::SetLoad(double cpu_utilization, int64_t memory_used_mb) {
  MutexLock lock(mu_);
  cpu_utilization_ = cpu_utilization;
  memory_used_mb_ = memory_used_mb;
}

pb::NodeStatus NodeAgent::StatusLocked() const {
  pb::NodeStatus s;
  s.set_node_id(options_.node_id);
  s.set_cluster(options_.cluster);
  s.set_pool(options_.pool);
  s.set_address(address_);
  s.set_incarnation(incarnation_);
  s.set_version(version_);
  auto* cap = s.mutable_capacity();
  cap->set_cpu_millis(options_.capacity.cpu_millis);
  cap->set_memory_mb(options_.capacity.memory_mb);
  cap->set_slots(options_.slots);
  for (const GpuGroup& g : options_.capacity.gpus) {
    auto* cards = cap->add_gpus();
    cards->set_card_type(g.card_type);
    cards->set_count(g.count);
    cards->set_perf(g.perf);
  }
  int64_t cpu = 0, mem = 0;
  int32_t gpus = 0, in_flight = 0;
  for (const auto& [id, r] : replicas_) {
    pb::ReplicaStatus* rs = s.add_replicas();
    *rs = r.status;
    cpu += r.status.resources().cpu_millis();
    mem += r.status.resources().memory_mb();
    gpus += r.status.resources().gpus();
    in_flight += r.status.in_flight();
  }
  s.mutable_allocated()->set_cpu_millis(cpu);
  s.mutable_allocated()->set_memory_mb(mem);
  s.mutable_allocated()->set_gpus(gpus);
  s.set_cpu_utilization(cpu_utilization_);
  s.set_memory_used_mb(memory_used_mb_);
  s.set_in_flight(in_flight);
  s.set_draining(draining_);
  return s;
}

pb::NodeStatus NodeAgent::CurrentStatus() const {
  MutexLock lock(mu_);
  return StatusLocked();
}

uint64_t NodeAgent::version() const {
  MutexLock lock(mu_);
  return version_;
}

}  // namespace chorus::compute
