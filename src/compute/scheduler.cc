#include "compute/scheduler.h"

#include <atomic>
#include <deque>
#include <optional>
#include <set>
#include <thread>
#include <variant>

#include <grpcpp/grpcpp.h>

#include "base/logging.h"
#include "base/mutex.h"
#include "base/random.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "compute/view_watcher.h"
#include "net/grpc_status.h"

namespace chorus::compute {

class Scheduler::Impl {
 public:
  Impl(SchedulerServiceOptions options, Clock& clock)
      : options_(std::move(options)),
        clock_(clock),
        random_(options_.seed ? options_.seed : static_cast<uint64_t>(clock.WallNow().time_since_epoch().count())),
        core_(options_.core, clock, random_),
        log_(GetLogger("compute")) {}

  ~Impl() { Stop(); }

  void Start() {
    for (size_t i = 0; i < options_.clusters.size(); ++i) {
      auto watcher = std::make_unique<ViewWatcher>(
          options_.clusters[i], options_.token, "scheduler " + options_.core.scheduler_id,
          [this, source = "cluster" + std::to_string(i)](pb::ViewUpdate&& update) {
            Push(ViewEvent{source, std::move(update)});
          });
      watcher->Start();
      watchers_.push_back(std::move(watcher));
    }
    loop_ = std::thread([this] { Loop(); });
  }

  void Stop() {
    {
      MutexLock lock(mu_);
      if (stopped_) return;
      stopped_ = true;
      cv_.NotifyAll();
    }
    for (auto& w : watchers_) w->Stop();
    if (loop_.joinable()) loop_.join();
    MutexLock lock(mu_);
    cv_.Wait(mu_, [&]() REQUIRES(mu_) { return calls_in_flight_ == 0; });
  }

  Stats stats() const {
    MutexLock lock(mu_);
    return stats_;
  }

 private:
  struct ViewEvent {
    std::string source;
    pb::ViewUpdate update;
  };
  struct ClaimEvent {
    SchedulerCore::Claim claim;
    Status status;
    bool conflict = false;
    std::optional<pb::NodeStatus> node;
  };
  struct ReleaseEvent {
    SchedulerCore::Release release;
    Status status;
    std::optional<pb::NodeStatus> node;
  };
  using Event = std::variant<ViewEvent, ClaimEvent, ReleaseEvent>;

  void Push(Event e) {
    MutexLock lock(mu_);
    events_.push_back(std::move(e));
    cv_.NotifyAll();
  }

  pb::Node::Stub& StubFor(const std::string& address) {
    auto it = stubs_.find(address);
    if (it == stubs_.end()) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      it = stubs_
               .emplace(address, pb::Node::NewStub(grpc::CreateCustomChannel(
                                     address, grpc::InsecureChannelCredentials(), args)))
               .first;
    }
    return *it->second;
  }

  static std::optional<pb::NodeStatus> Trailer(const grpc::ClientContext& ctx) {
    const auto& md = ctx.GetServerTrailingMetadata();
    auto it = md.find("chorus-node-status-bin");
    if (it == md.end()) return std::nullopt;
    pb::NodeStatus node;
    if (!node.ParseFromArray(it->second.data(), static_cast<int>(it->second.size()))) return std::nullopt;
    return node;
  }

  void SendClaim(SchedulerCore::Claim claim) {
    struct Call {
      grpc::ClientContext ctx;
      pb::ClaimRequest request;
      pb::ClaimResponse response;
      SchedulerCore::Claim claim;
    };
    auto* call = new Call;
    call->ctx.AddMetadata("authorization", "Bearer " + options_.token);
    call->ctx.set_deadline(std::chrono::system_clock::now() + options_.rpc_timeout);
    call->request = claim.request;
    call->claim = std::move(claim);
    {
      MutexLock lock(mu_);
      ++calls_in_flight_;
    }
    StubFor(call->claim.address).async()->Claim(&call->ctx, &call->request, &call->response, [this, call](grpc::Status st) {
      ClaimEvent e;
      e.claim = std::move(call->claim);
      e.status = net::FromGrpcStatus(st);
      e.conflict = st.error_code() == grpc::StatusCode::ABORTED;
      if (st.ok()) {
        e.node = call->response.status();
      } else {
        e.node = Trailer(call->ctx);
      }
      delete call;
      MutexLock lock(mu_);
      events_.push_back(std::move(e));
      --calls_in_flight_;
      cv_.NotifyAll();
    });
  }

  void SendRelease(SchedulerCore::Release release) {
    struct Call {
      grpc::ClientContext ctx;
      pb::ReleaseRequest request;
      pb::ReleaseResponse response;
      SchedulerCore::Release release;
    };
    auto* call = new Call;
    call->ctx.AddMetadata("authorization", "Bearer " + options_.token);
    call->ctx.set_deadline(std::chrono::system_clock::now() + options_.rpc_timeout);
    call->request = release.request;
    call->release = std::move(release);
    {
      MutexLock lock(mu_);
      ++calls_in_flight_;
    }
    StubFor(call->release.address)
        .async()
        ->Release(&call->ctx, &call->request, &call->response, [this, call](grpc::Status st) {
          ReleaseEvent e;
          e.release = std::move(call->release);
          e.status = net::FromGrpcStatus(st);
          if (st.ok()) e.node = call->response.status();
          delete call;
          MutexLock lock(mu_);
          events_.push_back(std::move(e));
          --calls_in_flight_;
          cv_.NotifyAll();
        });
  }

  void Loop() {
    while (true) {
      std::deque<Event> events;
      {
        MutexLock lock(mu_);
        (void)cv_.WaitFor(mu_, options_.tick, [&]() REQUIRES(mu_) { return stopped_ || !events_.empty(); });
        if (stopped_) return;
        events.swap(events_);
      }
      for (Event& e : events) {
        if (auto* v = std::get_if<ViewEvent>(&e)) {
          core_.ApplyUpdate(v->source, v->update);
        } else if (auto* c = std::get_if<ClaimEvent>(&e)) {
          if (!c->status.ok() && !c->conflict && c->status.code() != StatusCode::kResourceExhausted) {
            log_->warn("scheduler {}: claim on {} failed: {}", options_.core.scheduler_id, c->claim.request.node_id(),
                       c->status.ToString());
          }
          core_.OnClaimDone(c->claim, c->status, c->conflict, c->node ? &*c->node : nullptr);
        } else if (auto* r = std::get_if<ReleaseEvent>(&e)) {
          core_.OnReleaseDone(r->release, r->status, r->node ? &*r->node : nullptr);
        }
      }
      SchedulerCore::Plan plan = core_.Reconcile();
      for (auto& c : plan.claims) SendClaim(std::move(c));
      for (auto& r : plan.releases) SendRelease(std::move(r));
      // Stats walk every replica: publish them when the loop catches up, and at most every 100 ms
      // while events keep coming (a busy placement burst), not on every iteration.
      const SteadyTime now = clock_.Now();
      bool idle = false;
      {
        MutexLock lock(mu_);
        idle = events_.empty();
      }
      if (!idle && now - last_stats_ < std::chrono::milliseconds(100)) continue;
      last_stats_ = now;
      Stats s;
      s.apps = core_.Counts();
      s.online_nodes = core_.online_nodes();
      s.claims_sent = core_.claims_sent();
      s.claims_accepted = core_.claims_accepted();
      s.conflicts = core_.conflicts();
      MutexLock lock(mu_);
      stats_ = std::move(s);
    }
  }

  const SchedulerServiceOptions options_;
  Clock& clock_;
  Random random_;
  SchedulerCore core_;  // loop thread only
  std::shared_ptr<spdlog::logger> log_;
  std::map<std::string, std::unique_ptr<pb::Node::Stub>> stubs_;  // loop thread only
  SteadyTime last_stats_{};                                        // loop thread only
  std::vector<std::unique_ptr<ViewWatcher>> watchers_;
  std::thread loop_;

  mutable Mutex mu_;
  CondVar cv_;
  bool stopped_ GUARDED_BY(mu_) = false;
  std::deque<Event> events_ GUARDED_BY(mu_);
  int calls_in_flight_ GUARDED_BY(mu_) = 0;
  Stats stats_ GUARDED_BY(mu_);
};

Result<std::unique_ptr<Scheduler>> Scheduler::Create(SchedulerServiceOptions options, Clock& clock) {
  if (options.clusters.empty()) return InvalidArgument("compute.scheduler.clusters: at least one resource server");
  for (const auto& c : options.clusters) {
    if (c.empty()) return InvalidArgument("compute.scheduler.clusters: an entry without servers");
  }
  if (options.core.scheduler_id.empty()) return InvalidArgument("scheduler id required");
  return std::unique_ptr<Scheduler>(new Scheduler(std::make_unique<Impl>(std::move(options), clock)));
}

Scheduler::Scheduler(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Scheduler::~Scheduler() = default;
void Scheduler::Start() { impl_->Start(); }
void Scheduler::Stop() { impl_->Stop(); }
Scheduler::Stats Scheduler::stats() const { return impl_->stats(); }

}  // namespace chorus::compute
