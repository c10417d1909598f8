#include "compute/router_client.h"

#include <grpcpp/grpcpp.h>

#include <future>
#include <map>
#include <set>
#include <thread>

#include "base/mutex.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "compute/view_watcher.h"
#include "net/grpc_status.h"

namespace chorus::compute {
namespace {

namespace pb = ::chorus::compute::v1;

class GrpcInvokeTransport final : public InvokeTransport {
 public:
  GrpcInvokeTransport(std::string token, Duration timeout) : token_(std::move(token)), timeout_(timeout) {}

  void Invoke(const RouteTarget& target, std::shared_ptr<const std::string> payload, Done done) override {
    struct Call {
      grpc::ClientContext ctx;
      pb::InvokeRequest request;
      pb::InvokeResponse response;
      Done done;
    };
    auto* call = new Call;
    call->ctx.AddMetadata("authorization", "Bearer " + token_);
    call->ctx.set_deadline(std::chrono::system_clock::now() + timeout_);
    call->request.set_app(target.app);
    call->request.set_payload(*payload);
    call->done = std::move(done);
    {
      MutexLock lock(mu_);
      ++in_flight_;
    }
    StubFor(target.address)
        .async()
        ->Invoke(&call->ctx, &call->request, &call->response, [this, call](grpc::Status st) {
          Result<std::string> result = st.ok()
                                           ? Result<std::string>(std::move(*call->response.mutable_payload()))
                                           : Result<std::string>(net::FromGrpcStatus(st));
          Done done = std::move(call->done);
          delete call;
          done(std::move(result));  // may start a retry: counted before this one ends
          MutexLock lock(mu_);
          --in_flight_;
          idle_.NotifyAll();
        });
  }

  // Waits until no call is in flight (each ends by its deadline), so the router they call back
  // into can be destroyed.
  void WaitIdle() {
    MutexLock lock(mu_);
    idle_.Wait(mu_, [&]() REQUIRES(mu_) { return in_flight_ == 0; });
  }

 private:
  pb::Node::Stub& StubFor(const std::string& address) {
    MutexLock lock(mu_);
    auto& stub = stubs_[address];
    if (!stub) {
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      args.SetMaxReceiveMessageSize(64 << 20);
      args.SetMaxSendMessageSize(64 << 20);
      stub = pb::Node::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
    }
    return *stub;
  }

  const std::string token_;
  const Duration timeout_;
  Mutex mu_;
  CondVar idle_;
  std::map<std::string, std::unique_ptr<pb::Node::Stub>> stubs_ GUARDED_BY(mu_);
  int64_t in_flight_ GUARDED_BY(mu_) = 0;
};

}  // namespace

class RouterClient::Impl {
 public:
  Impl(RouterClientOptions options, Clock& clock)
      : options_(std::move(options)),
        clock_(clock),
        transport_(options_.token, options_.timeout),
        router_(options_.router, clock, transport_) {}

  ~Impl() { Stop(); }

  void Start() {
    for (size_t i = 0; i < options_.clusters.size(); ++i) {
      auto watcher = std::make_unique<ViewWatcher>(
          options_.clusters[i], options_.token, "router",
          [this, i, source = "cluster" + std::to_string(i)](pb::ViewUpdate&& update) {
            router_.ApplyUpdate(source, update);
            if (update.full()) {
              MutexLock lock(mu_);
              seen_.insert(i);
              cv_.NotifyAll();
            }
          });
      watcher->Start();
      watchers_.push_back(std::move(watcher));
    }
    timer_ = std::thread([this] {
      while (true) {
        {
          MutexLock lock(mu_);
          (void)cv_.WaitFor(mu_, options_.weight_interval, [&]() REQUIRES(mu_) { return stopped_; });
          if (stopped_) return;
        }
        router_.RecomputeWeights();
      }
    });
  }

  void Stop() {
    {
      MutexLock lock(mu_);
      if (stopped_) return;
      stopped_ = true;
      cv_.NotifyAll();
    }
    for (auto& w : watchers_) w->Stop();
    if (timer_.joinable()) timer_.join();
    {
      MutexLock lock(mu_);
      cv_.Wait(mu_, [&]() REQUIRES(mu_) { return entering_ == 0; });
    }
    transport_.WaitIdle();
  }

  void Invoke(const std::string& app, std::string payload, Router::Done done) {
    {
      MutexLock lock(mu_);
      if (stopped_) {
        lock.Unlock();
        return done(Unavailable("the router is stopping"));
      }
      ++entering_;
    }
    router_.Invoke(app, std::move(payload), std::move(done));  // its call is counted in flight now
    MutexLock lock(mu_);
    --entering_;
    cv_.NotifyAll();
  }

  bool WaitForViews(Duration wait) {
    MutexLock lock(mu_);
    return cv_.WaitFor(mu_, wait, [&]() REQUIRES(mu_) { return seen_.size() == options_.clusters.size(); });
  }

  Router& router() { return router_; }

 private:
  const RouterClientOptions options_;
  Clock& clock_;
  GrpcInvokeTransport transport_;
  Router router_;
  std::vector<std::unique_ptr<ViewWatcher>> watchers_;
  std::thread timer_;
  Mutex mu_;
  CondVar cv_;
  bool stopped_ GUARDED_BY(mu_) = false;
  int entering_ GUARDED_BY(mu_) = 0;  // Invoke calls between the stopped_ check and the transport
  std::set<size_t> seen_ GUARDED_BY(mu_);
};

Result<std::unique_ptr<RouterClient>> RouterClient::Create(RouterClientOptions options, Clock& clock) {
  if (options.clusters.empty()) return InvalidArgument("router: at least one resource server");
  for (const auto& c : options.clusters) {
    if (c.empty()) return InvalidArgument("router: a cluster without servers");
  }
  if (options.weight_interval <= Duration::zero())
    return InvalidArgument("router: weight_interval must be positive");
  CHORUS_RETURN_IF_ERROR(options.router.weights.Validate());
  return std::unique_ptr<RouterClient>(new RouterClient(std::make_unique<Impl>(std::move(options), clock)));
}

RouterClient::RouterClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RouterClient::~RouterClient() = default;
void RouterClient::Start() { impl_->Start(); }
void RouterClient::Stop() { impl_->Stop(); }
bool RouterClient::WaitForViews(Duration wait) { return impl_->WaitForViews(wait); }
Router& RouterClient::router() { return impl_->router(); }

void RouterClient::Invoke(const std::string& app, std::string payload, Router::Done done) {
  impl_->Invoke(app, std::move(payload), std::move(done));
}

Result<Router::Reply> RouterClient::InvokeSync(const std::string& app, std::string payload, Duration wait) {
  auto promise = std::make_shared<std::promise<Result<Router::Reply>>>();
  auto future = promise->get_future();
  Invoke(app, std::move(payload),
         [promise](Result<Router::Reply> reply) { promise->set_value(std::move(reply)); });
  if (future.wait_for(wait) != std::future_status::ready) {
    return DeadlineExceeded("no answer from app " + app + " within the wait");
  }
  return future.get();
}

}  // namespace chorus::compute
