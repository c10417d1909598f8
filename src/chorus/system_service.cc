#include "chorus/system_service.h"

#include "chorus/app.h"
#include "chorus/system/v1/system.grpc.pb.h"

namespace chorus::app {
namespace {

namespace pb = ::chorus::system::v1;

class SystemService final : public pb::System::Service {
 public:
  explicit SystemService(const Readiness& readiness) : readiness_(readiness) {}

  grpc::Status GetVersion(grpc::ServerContext*, const pb::GetVersionRequest*,
                          pb::GetVersionResponse* response) override {
    response->set_version(CHORUS_VERSION);
    response->set_git(CHORUS_GIT);
    return grpc::Status::OK;
  }

  grpc::Status CheckReady(grpc::ServerContext*, const pb::CheckReadyRequest*,
                          pb::CheckReadyResponse* response) override {
    response->set_ready(readiness_.Ready());
    for (const auto& e : readiness_.Snapshot()) {
      auto* s = response->add_services();
      s->set_name(e.name);
      s->set_ready(e.ready);
      s->set_detail(e.detail);
    }
    return grpc::Status::OK;
  }

 private:
  const Readiness& readiness_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeSystemService(const Readiness& readiness) {
  return std::make_unique<SystemService>(readiness);
}

}  // namespace chorus::app
