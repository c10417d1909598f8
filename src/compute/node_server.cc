#include "compute/node_server.h"

#include <atomic>
#include <future>
#include <map>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "base/logging.h"
#include "base/mutex.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "compute/app_spec.h"
#include "compute/node_probe.h"
#include "compute/worker_process.h"
#include "net/grpc_status.h"
#include "net/token.h"

namespace chorus::compute {
namespace {

constexpr auto kInvokeWait = std::chrono::seconds(60);

class WorkerRuntime final : public ReplicaRuntime {
 public:
  explicit WorkerRuntime(std::unique_ptr<WorkerProcess> worker) : worker_(std::move(worker)) {}
  State state() const override {
    switch (worker_->state()) {
      case WorkerProcess::State::kStarting:
        return State::kStarting;
      case WorkerProcess::State::kRunning:
        return State::kRunning;
      case WorkerProcess::State::kRestarting:
        return State::kRestarting;
      case WorkerProcess::State::kFailed:
        return State::kFailed;
      case WorkerProcess::State::kStopped:
        return State::kStopped;
    }
    return State::kStopped;
  }
  int restarts() const override { return worker_->restarts(); }
  void Invoke(std::string payload, std::function<void(Result<std::string>)> done) override {
    worker_->Invoke(std::move(payload), std::move(done));
  }
  void Stop(Duration grace) override { worker_->Stop(grace); }

 private:
  std::unique_ptr<WorkerProcess> worker_;
};

}  // namespace

RuntimeFactory WorkerProcessFactory(WorkerEnvironment environment) {
  return [environment](const ReplicaLaunch& launch) -> Result<std::unique_ptr<ReplicaRuntime>> {
    WorkerOptions w;
    const pb::EngineSpec& e = launch.engine;
    const std::string concurrency = std::to_string(launch.max_concurrency);
    if (e.engine() == "synthetic" || IsBuiltinEngine(e.engine())) {
      if (environment.worker_binary.empty()) return FailedPrecondition("no worker binary for engine " + e.engine());
      w.command = environment.worker_binary;
      w.args = {"compute", "worker"};
      if (e.engine() == "synthetic") {
        w.args.insert(w.args.end(), {"--cpu-ms", std::to_string(e.cpu_ms()), "--latency-ms",
                                     std::to_string(e.latency_ms())});
      } else {
        w.args.insert(w.args.end(), {"--engine", e.engine()});
        if (!e.model().empty()) w.args.insert(w.args.end(), {"--model", e.model()});
        std::map<std::string, std::string> options(e.options().begin(), e.options().end());  // stable order
        for (const auto& [k, v] : options) w.args.insert(w.args.end(), {"--option", k + "=" + v});
      }
      w.args.insert(w.args.end(), {"--max-concurrency", concurrency});
    } else {
      w.command = e.command();
      w.args.assign(e.args().begin(), e.args().end());
    }
    w.env = {{"CHORUS_MODEL", e.model()},
             {"CHORUS_MAX_CONCURRENCY", concurrency},
             {"CHORUS_APP", launch.app},
             {"CHORUS_REPLICA", launch.replica_id},
             // Tesseract (via OpenMP) would otherwise use every core for each request: the
             // worker's own concurrency is the unit of parallelism.
             {"OMP_THREAD_LIMIT", "1"}};
    if (IsBuiltinEngine(e.engine())) {
      std::string resources;
      for (const auto& r : environment.resources ? environment.resources() : std::vector<std::string>{}) {
        resources += (resources.empty() ? "" : ",") + r;
      }
      w.env.emplace_back("CHORUS_COMPUTE_RESOURCES", resources);
      w.env.emplace_back("CHORUS_COMPUTE_INVOKE_TOKEN", environment.invoke_token);
    }
    w.log_prefix = launch.app + "/" + launch.replica_id + ": ";
    CHORUS_ASSIGN_OR_RETURN(auto worker, WorkerProcess::Start(std::move(w)));
    auto on_change = launch.on_state_change;
    worker->SetStateListener([on_change](WorkerProcess::State) {
      if (on_change) on_change();
    });
    return std::unique_ptr<ReplicaRuntime>(new WorkerRuntime(std::move(worker)));
  };
}

class NodeServer::Impl final : public pb::Node::Service {
 public:
  Impl(NodeServerOptions options, const net::TokenSigner& signer, Clock& clock)
      : options_(std::move(options)),
        resources_(options_.resources),
        signer_(signer),
        clock_(clock),
        agent_(options_.node, clock,
               WorkerProcessFactory({options_.worker_binary, [this] { return resources_; }, options_.invoke_token})),
        log_(GetLogger("compute")) {
    agent_.SetChangeListener([this] { Wake(); });
  }

  ~Impl() override {
    agent_.SetChangeListener(nullptr);
    StopThreads();
  }

  NodeAgent& agent() { return agent_; }
  void SetResources(std::vector<std::string> resources) { resources_ = std::move(resources); }

  Status Authorize(const grpc::ServerContextBase& ctx, std::string_view scope) {
    CHORUS_ASSIGN_OR_RETURN(std::string_view token, net::GrpcBearerToken(ctx));
    CHORUS_ASSIGN_OR_RETURN(net::TokenClaims claims, signer_.Verify(token, clock_));
    return net::RequireScope(claims, scope);
  }

  grpc::Status Claim(grpc::ServerContext* ctx, const pb::ClaimRequest* req, pb::ClaimResponse* resp) override {
    if (Status st = Authorize(*ctx, "compute.schedule"); !st.ok()) return net::ToGrpcStatus(st);
    NodeAgent::ClaimOutcome out = agent_.Claim(*req);
    *resp->mutable_status() = out.node;
    if (out.conflict) {
      // The loser learns the node's state from the trailer and tries again elsewhere.
      ctx->AddTrailingMetadata("chorus-node-status-bin", out.node.SerializeAsString());
      return grpc::Status(grpc::StatusCode::ABORTED, out.status.message());
    }
    if (!out.status.ok()) {
      ctx->AddTrailingMetadata("chorus-node-status-bin", out.node.SerializeAsString());
      return net::ToGrpcStatus(out.status);
    }
    return grpc::Status::OK;
  }

  grpc::Status Release(grpc::ServerContext* ctx, const pb::ReleaseRequest* req, pb::ReleaseResponse* resp) override {
    if (Status st = Authorize(*ctx, "compute.schedule"); !st.ok()) return net::ToGrpcStatus(st);
    auto node = agent_.Release(*req);
    if (!node.ok()) return net::ToGrpcStatus(node.status());
    *resp->mutable_status() = std::move(*node);
    return grpc::Status::OK;
  }

  grpc::Status Invoke(grpc::ServerContext* ctx, const pb::InvokeRequest* req, pb::InvokeResponse* resp) override {
    if (Status st = Authorize(*ctx, "compute.invoke"); !st.ok()) return net::ToGrpcStatus(st);
    auto promise = std::make_shared<std::promise<std::pair<Result<std::string>, std::string>>>();
    auto future = promise->get_future();
    agent_.Invoke(req->app(), req->replica_id(), req->payload(),
                  [promise](Result<std::string> result, const std::string& replica) {
                    promise->set_value({std::move(result), replica});
                  });
    if (future.wait_for(kInvokeWait) != std::future_status::ready) {
      return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the worker did not answer in time");
    }
    auto [result, replica] = future.get();
    if (!result.ok()) return net::ToGrpcStatus(result.status());
    resp->set_payload(std::move(*result));
    resp->set_node_id(agent_.options().node_id);
    resp->set_replica_id(replica);
    return grpc::Status::OK;
  }

  // --- heartbeats -------------------------------------------------------------------------------
  void Wake() {
    MutexLock lock(mu_);
    changed_ = true;
    cv_.NotifyAll();
  }

  void Start() {
    heartbeat_ = std::thread([this] { HeartbeatLoop(); });
  }

  void HeartbeatLoop() {
    UtilizationSampler sampler;
    size_t index = 0;
    int failures = 0;
    while (!stop_.load()) {
      const std::string& address = resources_[index % resources_.size()];
      const bool clean = RunStream(address, sampler);
      if (stop_.load()) break;
      // A broken stream: try the next server at once; back off only when all keep failing.
      ++index;
      failures = clean ? 0 : failures + 1;
      if (failures >= static_cast<int>(resources_.size())) {
        const auto backoff = std::min<Duration>(std::chrono::milliseconds(50) * (1 << std::min(failures, 5)),
                                                std::chrono::seconds(1));
        MutexLock lock(mu_);
        (void)cv_.WaitFor(mu_, backoff, [&]() REQUIRES(mu_) { return stopping_heartbeats_; });
      }
    }
  }

  std::shared_ptr<grpc::Channel> Channel(const std::string& address) {
    auto it = channels_.find(address);
    if (it != channels_.end()) return it->second;
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    channels_[address] = channel;
    return channel;
  }

  // One heartbeat stream; returns true if it was established and later broke (vs never connected).
  bool RunStream(const std::string& address, UtilizationSampler& sampler) {
    auto stub = pb::Resource::NewStub(Channel(address));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + options_.token);
    ctx.set_wait_for_ready(false);
    auto stream = stub->Heartbeat(&ctx);
    std::atomic<bool> broken{false};
    std::thread reader([&] {
      pb::HeartbeatAck ack;
      while (stream->Read(&ack)) {
      }
      broken.store(true);
      Wake();
    });
    bool sent_any = false;
    bool goodbye_sent = false;
    while (!broken.load()) {
      pb::HeartbeatRequest req;
      if (auto sample = sampler.Take(); sample.ok()) agent_.SetLoad(sample->cpu_utilization, sample->memory_used_mb);
      *req.mutable_status() = agent_.CurrentStatus();
      bool goodbye = false;
      {
        MutexLock lock(mu_);
        goodbye = goodbye_;
        changed_ = false;
      }
      req.set_goodbye(goodbye);
      if (!stream->Write(req)) break;
      if (!sent_any) log_->info("node {}: reporting to {}", agent_.options().node_id, address);
      sent_any = true;
      if (goodbye) {
        goodbye_sent = true;
        break;
      }
      MutexLock lock(mu_);
      (void)cv_.WaitFor(mu_, options_.heartbeat_interval,
                        [&]() REQUIRES(mu_) { return changed_ || goodbye_ || stopping_heartbeats_ || broken.load(); });
      if (stopping_heartbeats_ && !goodbye_) break;
    }
    stream->WritesDone();
    if (!goodbye_sent) ctx.TryCancel();
    grpc::Status st = stream->Finish();
    reader.join();
    if (goodbye_sent) {
      MutexLock lock(mu_);
      goodbye_done_ = true;
      cv_.NotifyAll();
      stop_.store(true);
    }
    if (!st.ok() && !stop_.load() && st.error_code() != grpc::StatusCode::CANCELLED) {
      log_->warn("node {}: heartbeat stream to {} ended: {}", agent_.options().node_id, address, st.error_message());
    }
    return sent_any;
  }

  void Drain(Duration max_wait) {
    agent_.BeginDrain();  // wakes the heartbeat thread: draining goes out now
    const SteadyTime start = clock_.Now();
    std::this_thread::sleep_for(options_.drain_grace);
    while (agent_.in_flight() > 0 && clock_.Now() - start < max_wait) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    agent_.StopAll(std::chrono::seconds(2));
    MutexLock lock(mu_);
    goodbye_ = true;
    cv_.NotifyAll();
    (void)cv_.WaitFor(mu_, std::chrono::seconds(2), [&]() REQUIRES(mu_) { return goodbye_done_; });
  }

  void StopThreads() {
    {
      MutexLock lock(mu_);
      stopping_heartbeats_ = true;
      cv_.NotifyAll();
    }
    stop_.store(true);
    if (heartbeat_.joinable()) heartbeat_.join();
  }

 private:
  const NodeServerOptions options_;
  std::vector<std::string> resources_;  // set before Start(); heartbeat thread only afterwards
  const net::TokenSigner& signer_;
  Clock& clock_;
  NodeAgent agent_;
  std::shared_ptr<spdlog::logger> log_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;  // heartbeat thread only
  std::atomic<bool> stop_{false};
  Mutex mu_;
  CondVar cv_;
  bool changed_ GUARDED_BY(mu_) = false;
  bool goodbye_ GUARDED_BY(mu_) = false;
  bool goodbye_done_ GUARDED_BY(mu_) = false;
  bool stopping_heartbeats_ GUARDED_BY(mu_) = false;
  std::thread heartbeat_;
};

Result<std::unique_ptr<NodeServer>> NodeServer::Create(NodeServerOptions options, const net::TokenSigner& signer,
                                                       Clock& clock) {
  if (!IsValidName(options.node.node_id)) {
    return InvalidArgument("compute.node.id: \"" + options.node.node_id + "\" is not a valid id ([A-Za-z0-9_.-]{1,64})");
  }
  if (options.resources.empty()) return InvalidArgument("compute.node.resources: at least one resource server");
  if (options.node.slots < 1) return InvalidArgument("compute.node.slots: at least 1");
  if (!options.node.pool.empty() && !IsValidName(options.node.pool)) {
    return InvalidArgument("compute.node.pool: not a valid name");
  }
  return std::unique_ptr<NodeServer>(new NodeServer(std::make_unique<Impl>(std::move(options), signer, clock)));
}

NodeServer::NodeServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NodeServer::~NodeServer() = default;
grpc::Service* NodeServer::service() { return impl_.get(); }
void NodeServer::SetAddress(std::string address) { impl_->agent().SetAddress(std::move(address)); }
void NodeServer::SetResources(std::vector<std::string> resources) { impl_->SetResources(std::move(resources)); }
void NodeServer::Start() { impl_->Start(); }
void NodeServer::Drain(Duration max_wait) { impl_->Drain(max_wait); }
void NodeServer::Stop() { impl_->StopThreads(); }
NodeAgent& NodeServer::agent() { return impl_->agent(); }

}  // namespace chorus::compute
