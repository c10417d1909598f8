#include "compute/resource_server.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "base/logging.h"
#include "base/metrics.h"
#include "base/mutex.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "compute/app_spec.h"
#include "net/grpc_status.h"
#include "net/token.h"

namespace chorus::compute {
namespace {

pb::App ToProto(const AppSpec& spec, std::string yaml) {
  pb::App app;
  app.set_name(spec.name);
  auto* r = app.mutable_resources();
  r->set_cpu_millis(spec.resources.cpu_millis);
  r->set_memory_mb(spec.resources.memory_mb);
  r->set_gpus(spec.resources.gpus);
  for (const auto& t : spec.resources.card_types) r->add_card_types(t);
  app.set_replicas(spec.replicas);
  app.set_min_replicas(spec.min_replicas);
  app.set_max_replicas(spec.max_replicas);
  app.set_target_utilization(spec.target_utilization);
  app.set_max_concurrency(spec.max_concurrency);
  auto* e = app.mutable_engine();
  e->set_engine(spec.engine.engine);
  e->set_command(spec.engine.command);
  for (const auto& a : spec.engine.args) e->add_args(a);
  e->set_cpu_ms(spec.engine.cpu_ms);
  e->set_latency_ms(spec.engine.latency_ms);
  e->set_model(spec.model);
  for (const auto& [k, v] : spec.engine.options) (*e->mutable_options())[k] = v;
  for (const auto& p : spec.pools) app.add_pools(p);
  for (const auto& c : spec.clusters) app.add_clusters(c);
  app.set_spec_yaml(std::move(yaml));
  return app;
}

}  // namespace

class ResourceServer::Impl final : public pb::Resource::WithCallbackMethod_Heartbeat<pb::Resource::Service> {
 public:
  Impl(ResourceServerOptions options, const net::TokenSigner& signer, Clock& clock)
      : options_(std::move(options)),
        signer_(signer),
        clock_(clock),
        state_(options_.state, clock),
        log_(GetLogger("compute")) {
    auto& reg = DefaultMetrics();
    if (auto f = reg.Counter("chorus_compute_heartbeats_total", "Heartbeats received by resource servers", {}); f.ok()) {
      heartbeats_ = &f->Get();
    }
    if (auto f = reg.Gauge("chorus_compute_online_nodes", "Nodes online in a resource server's view", {}); f.ok()) {
      online_ = &f->Get();
    }
  }

  ResourceState& state() { return state_; }

  Result<net::TokenClaims> Authorize(const grpc::ServerContextBase& ctx, std::string_view scope) {
    CHORUS_ASSIGN_OR_RETURN(std::string_view token, net::GrpcBearerToken(ctx));
    CHORUS_ASSIGN_OR_RETURN(net::TokenClaims claims, signer_.Verify(token, clock_));
    if (!scope.empty()) CHORUS_RETURN_IF_ERROR(net::RequireScope(claims, scope));
    return claims;
  }

  void Kick() {
    MutexLock lock(mu_);
    kicked_ = true;
    cv_.NotifyAll();
  }

  bool stopping() const { return stopping_.load(); }

  // --- Heartbeat: one reactor per node stream --------------------------------------------------
  class HeartbeatReactor final : public grpc::ServerBidiReactor<pb::HeartbeatRequest, pb::HeartbeatAck> {
   public:
    HeartbeatReactor(Impl* impl, grpc::CallbackServerContext* ctx) : impl_(impl), stream_id_(impl->NextStreamId()) {
      if (impl_->stopping()) {
        Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "resource server is shutting down"));
        return;
      }
      auto claims = impl_->Authorize(*ctx, "compute.node");
      if (!claims.ok()) {
        Finish(net::ToGrpcStatus(claims.status()));
        return;
      }
      if (claims->subject.rfind("node:", 0) == 0) bound_node_ = claims->subject.substr(5);
      StartRead(&request_);
    }

    void OnReadDone(bool ok) override {
      if (!ok) {
        impl_->state_.OnStreamClosed(stream_id_, goodbye_);
        impl_->Kick();
        Finish(grpc::Status::OK);
        return;
      }
      if (!bound_node_.empty() && request_.status().node_id() != bound_node_) {
        impl_->state_.OnStreamClosed(stream_id_, false);
        Finish(grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            "token is bound to node " + bound_node_ + ", heartbeat names " +
                                request_.status().node_id().substr(0, 80)));
        return;
      }
      Status st = impl_->state_.OnHeartbeat(stream_id_, request_.status());
      if (!st.ok()) {
        impl_->state_.OnStreamClosed(stream_id_, false);
        Finish(net::ToGrpcStatus(st));
        return;
      }
      if (impl_->heartbeats_) impl_->heartbeats_->Inc();
      if (request_.goodbye()) goodbye_ = true;
      if (impl_->state_.urgent()) impl_->Kick();
      StartRead(&request_);
    }

    void OnDone() override { delete this; }

   private:
    Impl* const impl_;
    const uint64_t stream_id_;
    std::string bound_node_;
    bool goodbye_ = false;
    pb::HeartbeatRequest request_;
  };

  grpc::ServerBidiReactor<pb::HeartbeatRequest, pb::HeartbeatAck>* Heartbeat(
      grpc::CallbackServerContext* ctx) override {
    return new HeartbeatReactor(this, ctx);
  }

  uint64_t NextStreamId() { return next_stream_.fetch_add(1) + 1; }

  // --- Watch, GetView, PeerSync, apps ------------------------------------------------------------
  grpc::Status Watch(grpc::ServerContext* ctx, const pb::WatchRequest*, grpc::ServerWriter<pb::ViewUpdate>* writer) override {
    if (auto claims = Authorize(*ctx, ""); !claims.ok()) return net::ToGrpcStatus(claims.status());
    auto sub = state_.Subscribe();
    grpc::Status result = grpc::Status::OK;
    if (writer->Write(*sub.snapshot)) {
      while (!ctx->IsCancelled() && !stopping()) {
        auto next = state_.WaitNext(sub.id, std::chrono::milliseconds(200));
        if (!next.ok()) {
          result = net::ToGrpcStatus(next.status());
          break;
        }
        if (*next && !writer->Write(**next)) break;
      }
    }
    state_.Unsubscribe(sub.id);
    if (stopping()) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "resource server is shutting down");
    return result;
  }

  grpc::Status GetView(grpc::ServerContext* ctx, const pb::GetViewRequest*, pb::View* view) override {
    if (auto claims = Authorize(*ctx, ""); !claims.ok()) return net::ToGrpcStatus(claims.status());
    *view = state_.Snapshot();
    return grpc::Status::OK;
  }

  grpc::Status PeerSync(grpc::ServerContext* ctx, const pb::PeerBatch* batch, pb::PeerAck* ack) override {
    if (auto claims = Authorize(*ctx, "compute.peer"); !claims.ok()) return net::ToGrpcStatus(claims.status());
    if (batch->cluster() != options_.state.cluster) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "peer " + batch->from_resource_id() + " is in cluster " + batch->cluster() + ", this is " +
                              options_.state.cluster);
    }
    *ack = state_.OnPeerBatch(*batch);
    if (state_.urgent()) Kick();
    return grpc::Status::OK;
  }

  grpc::Status ApplyApp(grpc::ServerContext* ctx, const pb::ApplyAppRequest* req, pb::ApplyAppResponse* resp) override {
    if (auto claims = Authorize(*ctx, "compute.admin"); !claims.ok()) return net::ToGrpcStatus(claims.status());
    if (req->spec_yaml().size() > kMaxAppSpecBytes) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "app spec larger than 1 MiB");
    }
    auto app = Apply(req->spec_yaml(), /*only_if_absent=*/false);
    if (!app.ok()) return net::ToGrpcStatus(app.status());
    *resp->mutable_app() = std::move(*app);
    return grpc::Status::OK;
  }

  Result<pb::App> Apply(const std::string& yaml, bool only_if_absent) {
    CHORUS_ASSIGN_OR_RETURN(AppSpec spec, ParseAppSpec(yaml));
    if (only_if_absent) {
      for (pb::App& existing : state_.Apps()) {
        if (existing.name() == spec.name) return existing;
      }
    }
    pb::App app = state_.ApplyApp(ToProto(spec, yaml));
    log_->info("resource {}: app {} applied (generation {})", options_.state.resource_id, spec.name, app.generation());
    Kick();
    return app;
  }

  grpc::Status DeleteApp(grpc::ServerContext* ctx, const pb::DeleteAppRequest* req, pb::DeleteAppResponse*) override {
    if (auto claims = Authorize(*ctx, "compute.admin"); !claims.ok()) return net::ToGrpcStatus(claims.status());
    if (Status st = state_.DeleteApp(req->name()); !st.ok()) return net::ToGrpcStatus(st);
    Kick();
    return grpc::Status::OK;
  }

  // --- Threads -------------------------------------------------------------------------------------
  struct PeerLink {
    std::string address;
    std::unique_ptr<pb::Resource::Stub> stub;
    std::thread thread;
    Mutex mu;
    CondVar cv;
    std::deque<std::shared_ptr<const pb::PeerBatch>> queue GUARDED_BY(mu);
    bool need_full GUARDED_BY(mu) = true;
    // Bumped each time the broadcaster drops the queue on overflow. PeerLoop compares it across an
    // RPC so that an overflow during the call is never forgotten when the ack comes back.
    uint64_t overflows GUARDED_BY(mu) = 0;
  };

  void Start() {
    LoadApps();
    for (const std::string& address : options_.peers) {
      auto link = std::make_unique<PeerLink>();
      link->address = address;
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      link->stub = pb::Resource::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      peers_.push_back(std::move(link));
    }
    for (auto& link : peers_) {
      PeerLink* raw = link.get();
      raw->thread = std::thread([this, raw] { PeerLoop(*raw); });
    }
    broadcaster_ = std::thread([this] { BroadcastLoop(); });
  }

  void BeginShutdown() { stopping_.store(true); }

  void Stop() {
    stopping_.store(true);
    Kick();
    if (broadcaster_.joinable()) broadcaster_.join();
    for (auto& link : peers_) {
      {
        MutexLock lock(link->mu);
        link->cv.NotifyAll();
      }
      if (link->thread.joinable()) link->thread.join();
    }
  }

  void BroadcastLoop() {
    while (!stopping()) {
      {
        MutexLock lock(mu_);
        (void)cv_.WaitFor(mu_, options_.broadcast_interval, [&]() REQUIRES(mu_) { return kicked_; });
        kicked_ = false;
      }
      ResourceState::Flushed out = state_.Flush();
      if (online_) online_->Set(static_cast<int64_t>(state_.online_nodes()));
      if (out.apps_changed) PersistApps();
      for (auto& link : peers_) {
        MutexLock lock(link->mu);
        if (link->queue.size() >= 64) {
          link->queue.clear();
          link->need_full = true;
          ++link->overflows;
        }
        link->queue.push_back(out.peer);
        link->cv.NotifyAll();
      }
    }
  }

  void PeerLoop(PeerLink& link) {
    bool warned = false;
    while (!stopping()) {
      std::shared_ptr<const pb::PeerBatch> batch;
      bool full = false;
      uint64_t overflows_before = 0;
      {
        MutexLock lock(link.mu);
        link.cv.Wait(link.mu, [&]() REQUIRES(link.mu) { return !link.queue.empty() || stopping(); });
        if (stopping()) return;
        overflows_before = link.overflows;
        full = link.need_full;
        if (full) {
          link.queue.clear();
        } else {
          batch = std::move(link.queue.front());
          link.queue.pop_front();
        }
      }
      pb::PeerBatch full_batch;
      if (full) {
        full_batch = state_.FullPeerBatch();
        batch = std::shared_ptr<const pb::PeerBatch>(&full_batch, [](const pb::PeerBatch*) {});
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      ctx.AddMetadata("authorization", "Bearer " + options_.peer_token);
      pb::PeerAck ack;
      grpc::Status st = link.stub->PeerSync(&ctx, *batch, &ack);
      MutexLock lock(link.mu);
      if (!st.ok()) {
        if (!warned) {
          log_->warn("resource {}: peer {} unreachable: {}", options_.state.resource_id, link.address,
                     st.error_message());
          warned = true;
        }
        link.need_full = true;
        // Wait for the next batch before retrying: no hot loop against a dead peer.
        continue;
      }
      if (warned) log_->info("resource {}: peer {} reachable again", options_.state.resource_id, link.address);
      warned = false;
      if (ack.need_full() || link.overflows != overflows_before) {
        // The peer asked for a snapshot, or deltas were dropped while this call was in flight.
        link.need_full = true;
      } else if (full) {
        // The snapshot was taken after the queue was cleared, so it covers every dropped delta.
        link.need_full = false;
      }
    }
  }

  void LoadApps() {
    if (options_.apps_file.empty()) return;
    std::ifstream in(options_.apps_file, std::ios::binary);
    if (!in) return;
    pb::View saved;
    if (!saved.ParseFromIstream(&in)) {
      log_->error("resource {}: {} is unreadable; starting without saved apps", options_.state.resource_id,
                  options_.apps_file);
      return;
    }
    state_.LoadApps({saved.apps().begin(), saved.apps().end()});
    log_->info("resource {}: {} apps loaded from {}", options_.state.resource_id, saved.apps_size(), options_.apps_file);
  }

  void PersistApps() {
    if (options_.apps_file.empty()) return;
    pb::View saved;
    for (auto& app : state_.Apps()) *saved.add_apps() = std::move(app);
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(options_.apps_file).parent_path(), ec);
    const std::string tmp = options_.apps_file + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      if (!out || !saved.SerializeToOstream(&out)) {
        log_->error("resource {}: cannot write {}", options_.state.resource_id, tmp);
        return;
      }
    }
    std::filesystem::rename(tmp, options_.apps_file, ec);
    if (ec) log_->error("resource {}: cannot rename {}: {}", options_.state.resource_id, tmp, ec.message());
  }

 private:
  const ResourceServerOptions options_;
  const net::TokenSigner& signer_;
  Clock& clock_;
  ResourceState state_;
  std::shared_ptr<spdlog::logger> log_;
  Counter* heartbeats_ = nullptr;
  Gauge* online_ = nullptr;
  std::atomic<uint64_t> next_stream_{0};
  std::atomic<bool> stopping_{false};
  Mutex mu_;
  CondVar cv_;
  bool kicked_ GUARDED_BY(mu_) = false;
  std::thread broadcaster_;
  std::vector<std::unique_ptr<PeerLink>> peers_;
};

Result<std::unique_ptr<ResourceServer>> ResourceServer::Create(ResourceServerOptions options,
                                                               const net::TokenSigner& signer, Clock& clock) {
  if (!IsValidName(options.state.resource_id)) {
    return InvalidArgument("compute.resource.id: \"" + options.state.resource_id + "\" is not a valid id");
  }
  if (!IsValidName(options.state.cluster)) return InvalidArgument("compute.cluster: not a valid name");
  if (options.state.offline_after < 1) return InvalidArgument("compute.resource.offline_after: at least 1");
  return std::unique_ptr<ResourceServer>(new ResourceServer(std::make_unique<Impl>(std::move(options), signer, clock)));
}

ResourceServer::ResourceServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ResourceServer::~ResourceServer() { impl_->Stop(); }
grpc::Service* ResourceServer::service() { return impl_.get(); }
void ResourceServer::Start() { impl_->Start(); }
void ResourceServer::BeginShutdown() { impl_->BeginShutdown(); }
void ResourceServer::Stop() { impl_->Stop(); }
Result<pb::App> ResourceServer::ApplyIfAbsent(const std::string& spec_yaml) { return impl_->Apply(spec_yaml, true); }
ResourceState& ResourceServer::state() { return impl_->state(); }

}  // namespace chorus::compute
