// chorus.live.v1.Live over gRPC: the same publishing core as the HTTP API. Callers authenticate
// with `authorization: Bearer <service token with scope live.publish>` metadata.
#include <future>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "chorus/live/v1/live.grpc.pb.h"
#include "live/live_service.h"
#include "net/grpc_status.h"
#include "net/token.h"

namespace chorus::live {
namespace {

namespace pb = ::chorus::live::v1;

grpc::Status ToGrpc(const Status& s) { return net::ToGrpcStatus(s); }

// A proto Message as a publisher draft, through the same validation as JSON input. Priority 0
// means "derive by rules" (proto3 cannot tell an unset field from 0).
Result<Draft> DraftOf(const pb::Message& m, size_t max_payload_bytes, size_t index) {
  nlohmann::json j = {{"type", m.type()}};
  if (m.priority() != 0) j["priority"] = m.priority();
  if (m.has_sender()) j["sender"] = {{"id", m.sender().id()}, {"level", m.sender().level()}};
  if (!m.payload().empty()) {
    nlohmann::json payload = nlohmann::json::parse(m.payload(), nullptr, false);
    if (payload.is_discarded()) {
      return InvalidArgument("messages[" + std::to_string(index) + "]: payload is not valid JSON");
    }
    j["payload"] = std::move(payload);
  }
  if (!m.gain_key().empty()) j["gain_key"] = m.gain_key();
  auto d = ParseDraftJson(j, max_payload_bytes);
  if (!d.ok()) return InvalidArgument("messages[" + std::to_string(index) + "]: " + std::string(d.status().message()));
  return d;
}

class LiveGrpc final : public pb::Live::Service {
 public:
  explicit LiveGrpc(LiveService& live) : live_(live) {}

  grpc::Status PublishRoom(grpc::ServerContext* ctx, const pb::PublishRequest* req, pb::PublishResponse* res) override {
    if (Status s = ValidateRoomId(req->room()); !s.ok()) return ToGrpc(s);
    return Run(ctx, req, res, [&](std::vector<Draft> d, LiveService::PublishCallback cb) {
      live_.PublishRoom(req->room(), std::move(d), std::move(cb));
    });
  }
  grpc::Status PublishUser(grpc::ServerContext* ctx, const pb::PublishRequest* req, pb::PublishResponse* res) override {
    if (Status s = ValidateUserId(req->user()); !s.ok()) return ToGrpc(s);
    return Run(ctx, req, res, [&](std::vector<Draft> d, LiveService::PublishCallback cb) {
      live_.PublishUser(req->user(), std::move(d), std::move(cb));
    });
  }
  grpc::Status Broadcast(grpc::ServerContext* ctx, const pb::PublishRequest* req, pb::PublishResponse* res) override {
    return Run(ctx, req, res, [&](std::vector<Draft> d, LiveService::PublishCallback cb) {
      live_.Broadcast(std::move(d), std::move(cb));
    });
  }

 private:
  Status Authorize(grpc::ServerContext* ctx) {
    CHORUS_ASSIGN_OR_RETURN(std::string_view token, net::GrpcBearerToken(*ctx));
    CHORUS_ASSIGN_OR_RETURN(net::TokenClaims claims, live_.signer().Verify(token, SystemClock::Instance()));
    return net::RequireScope(claims, "live.publish");
  }

  template <typename Publish>
  grpc::Status Run(grpc::ServerContext* ctx, const pb::PublishRequest* req, pb::PublishResponse* res, Publish publish) {
    if (Status s = Authorize(ctx); !s.ok()) return ToGrpc(s);
    if (req->messages().empty()) return ToGrpc(InvalidArgument("messages must not be empty"));
    if (static_cast<size_t>(req->messages_size()) > live_.options().max_batch) {
      return ToGrpc(InvalidArgument("at most " + std::to_string(live_.options().max_batch) + " messages per request"));
    }
    std::vector<Draft> drafts;
    for (int i = 0; i < req->messages_size(); ++i) {
      auto d = DraftOf(req->messages(i), live_.options().max_payload_bytes, static_cast<size_t>(i));
      if (!d.ok()) return ToGrpc(d.status());
      drafts.push_back(std::move(*d));
    }
    auto promise = std::make_shared<std::promise<Result<PublishResult>>>();
    auto future = promise->get_future();
    publish(std::move(drafts), [promise](Result<PublishResult> r) { promise->set_value(std::move(r)); });
    if (future.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      return ToGrpc(DeadlineExceeded("publish was not accepted within 10s"));
    }
    Result<PublishResult> r = future.get();
    if (!r.ok()) return ToGrpc(r.status());
    for (uint64_t id : r->ids) res->add_ids(id);
    res->set_reached(r->reached);
    res->set_poll_store_failed(r->poll_store_failed);
    return grpc::Status::OK;
  }

  LiveService& live_;
};

}  // namespace

std::unique_ptr<grpc::Service> LiveService::MakeGrpcService() { return std::make_unique<LiveGrpc>(*this); }

}  // namespace chorus::live
