#include "compute/view_watcher.h"

#include <grpcpp/grpcpp.h>

#include "base/logging.h"
#include "base/mutex.h"
#include "chorus/compute/v1/compute.grpc.pb.h"

namespace chorus::compute {

class ViewWatcher::Impl {
 public:
  Impl(std::vector<std::string> servers, std::string token, std::string who, OnUpdate on_update)
      : servers_(std::move(servers)),
        token_(std::move(token)),
        who_(std::move(who)),
        on_update_(std::move(on_update)),
        log_(GetLogger("compute")) {}

  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }

  void Stop() {
    {
      MutexLock lock(mu_);
      if (stopped_) return;
      stopped_ = true;
      if (ctx_ != nullptr) ctx_->TryCancel();
      cv_.NotifyAll();
    }
    if (thread_.joinable()) thread_.join();
  }

 private:
  void Loop() {
    size_t index = 0;
    while (true) {
      const std::string& address = servers_[index % servers_.size()];
      ++index;
      grpc::ChannelArguments args;
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
      auto stub =
          v1::Resource::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
      grpc::ClientContext ctx;
      ctx.AddMetadata("authorization", "Bearer " + token_);
      {
        MutexLock lock(mu_);
        if (stopped_) return;
        ctx_ = &ctx;
      }
      auto reader = stub->Watch(&ctx, v1::WatchRequest());
      v1::ViewUpdate update;
      bool got_any = false;
      while (reader->Read(&update)) {
        if (!got_any) log_->info("{}: watching {}", who_, address);
        got_any = true;
        on_update_(std::move(update));
        update.Clear();
      }
      grpc::Status st = reader->Finish();
      MutexLock lock(mu_);
      ctx_ = nullptr;
      if (stopped_) return;
      if (got_any) log_->warn("{}: watch on {} ended: {}", who_, address, st.error_message());
      // A server that never answered: wait a little before the next one, so a cluster that is
      // entirely down is not hammered. One that dropped an open stream: fail over at once.
      (void)cv_.WaitFor(mu_, got_any ? std::chrono::milliseconds(0) : std::chrono::milliseconds(200),
                        [&]() REQUIRES(mu_) { return stopped_; });
      if (stopped_) return;
    }
  }

  const std::vector<std::string> servers_;
  const std::string token_;
  const std::string who_;
  const OnUpdate on_update_;
  std::shared_ptr<spdlog::logger> log_;
  std::thread thread_;

  Mutex mu_;
  CondVar cv_;
  bool stopped_ GUARDED_BY(mu_) = false;
  grpc::ClientContext* ctx_ GUARDED_BY(mu_) = nullptr;
};

ViewWatcher::ViewWatcher(std::vector<std::string> servers, std::string token, std::string who,
                         OnUpdate on_update)
    : impl_(std::make_unique<Impl>(std::move(servers), std::move(token), std::move(who),
                                   std::move(on_update))) {}
ViewWatcher::~ViewWatcher() { Stop(); }
void ViewWatcher::Start() { impl_->Start(); }
void ViewWatcher::Stop() { impl_->Stop(); }

}  // namespace chorus::compute
