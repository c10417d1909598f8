// chorus.likes.v1.Likes over gRPC: the same core as the HTTP API (likes_http.cc), with the same
// validation, authorization and rate limits. gRPC's sync server threads wait for the shard that
// answers (at most kWait).
#include <future>

#include <grpcpp/grpcpp.h>

#include "chorus/likes/v1/likes.grpc.pb.h"
#include "likes/likes_service.h"
#include "net/grpc_status.h"
#include "net/token.h"

namespace chorus::likes {
namespace {

namespace pb = ::chorus::likes::v1;
constexpr auto kWait = std::chrono::seconds(10);

pb::State ToProto(LikeState s) {
  switch (s) {
    case LikeState::kLiked: return pb::STATE_LIKED;
    case LikeState::kDisliked: return pb::STATE_DISLIKED;
    case LikeState::kNone: break;
  }
  return pb::STATE_NONE;
}

Result<LikeAction> FromProto(pb::Action a) {
  switch (a) {
    case pb::ACTION_LIKE: return LikeAction::kLike;
    case pb::ACTION_UNLIKE: return LikeAction::kUnlike;
    case pb::ACTION_DISLIKE: return LikeAction::kDislike;
    case pb::ACTION_UNDISLIKE: return LikeAction::kUndislike;
    default: break;
  }
  return InvalidArgument("action must be one of like, unlike, dislike, undislike");
}

void Fill(const ActResult& r, pb::ActResponse* out) {
  out->set_state(ToProto(r.state));
  out->mutable_counts()->set_likes(r.counts.likes);
  out->mutable_counts()->set_dislikes(r.counts.dislikes);
  out->set_changed(r.changed);
  out->set_degraded(r.degraded);
}

// Runs an asynchronous core call and waits for its result on this gRPC thread.
template <typename T, typename Call>
Result<T> Wait(Call call) {
  auto promise = std::make_shared<std::promise<Result<T>>>();
  auto future = promise->get_future();
  call([promise](Result<T> r) { promise->set_value(std::move(r)); });
  if (future.wait_for(kWait) != std::future_status::ready) return DeadlineExceeded("no answer within 10s");
  return future.get();
}

class LikesGrpc final : public pb::Likes::Service {
 public:
  explicit LikesGrpc(LikesService& service) : service_(service) {}

  grpc::Status Act(grpc::ServerContext* ctx, const pb::ActRequest* req, pb::ActResponse* res) override {
    auto claims = Authenticate(*ctx);
    if (!claims.ok()) return net::ToGrpcStatus(claims.status());
    auto r = Admit(*claims, *req, *ctx);
    if (!r.ok()) return net::ToGrpcStatus(r.status());
    auto out = Wait<std::vector<Result<ActResult>>>([&](auto done) {
      service_.Act({std::move(*r)}, [done](std::vector<Result<ActResult>> v) { done(std::move(v)); });
    });
    if (!out.ok()) return net::ToGrpcStatus(out.status());
    if (!(*out)[0].ok()) return net::ToGrpcStatus((*out)[0].status());
    Fill(*(*out)[0], res);
    return grpc::Status::OK;
  }

  grpc::Status BatchAct(grpc::ServerContext* ctx, const pb::BatchActRequest* req, pb::BatchActResponse* res) override {
    auto claims = Authenticate(*ctx);
    if (!claims.ok()) return net::ToGrpcStatus(claims.status());
    const size_t max = service_.options().max_write_batch;
    if (req->actions().empty() || static_cast<size_t>(req->actions_size()) > max) {
      return net::ToGrpcStatus(InvalidArgument("actions must hold 1.." + std::to_string(max) + " items"));
    }
    std::vector<ActRequest> admitted;
    std::vector<int> positions;
    for (int i = 0; i < req->actions_size(); ++i) {
      pb::BatchActResult* item = res->add_results();
      auto r = Admit(*claims, req->actions(i), *ctx);
      if (!r.ok()) {
        item->set_error_code(static_cast<int>(net::ToGrpcStatus(r.status()).error_code()));
        item->set_error_message(r.status().message());
        continue;
      }
      admitted.push_back(std::move(*r));
      positions.push_back(i);
    }
    auto out = Wait<std::vector<Result<ActResult>>>([&](auto done) {
      service_.Act(std::move(admitted), [done](std::vector<Result<ActResult>> v) { done(std::move(v)); });
    });
    if (!out.ok()) return net::ToGrpcStatus(out.status());
    for (size_t k = 0; k < out->size(); ++k) {
      pb::BatchActResult* item = res->mutable_results(positions[k]);
      if ((*out)[k].ok()) {
        Fill(*(*out)[k], item->mutable_result());
      } else {
        item->set_error_code(static_cast<int>(net::ToGrpcStatus((*out)[k].status()).error_code()));
        item->set_error_message((*out)[k].status().message());
      }
    }
    return grpc::Status::OK;
  }

  grpc::Status GetStates(grpc::ServerContext* ctx, const pb::GetStatesRequest* req,
                         pb::GetStatesResponse* res) override {
    auto claims = Authenticate(*ctx);
    if (!claims.ok()) return net::ToGrpcStatus(claims.status());
    if (Status s = CheckRead(req->business(), req->entities()); !s.ok()) return net::ToGrpcStatus(s);
    if (Status s = ValidateId("user", req->user()); !s.ok()) return net::ToGrpcStatus(s);
    std::vector<std::string> entities(req->entities().begin(), req->entities().end());
    auto out = Wait<StatesResult>([&](auto done) {
      service_.States(req->business(), req->user(), std::move(entities), std::move(done));
    });
    if (!out.ok()) return net::ToGrpcStatus(out.status());
    for (LikeState s : out->states) res->add_states(ToProto(s));
    res->set_degraded(out->degraded);
    return grpc::Status::OK;
  }

  grpc::Status GetCounts(grpc::ServerContext* ctx, const pb::GetCountsRequest* req,
                         pb::GetCountsResponse* res) override {
    auto claims = Authenticate(*ctx);
    if (!claims.ok()) return net::ToGrpcStatus(claims.status());
    if (Status s = CheckRead(req->business(), req->entities()); !s.ok()) return net::ToGrpcStatus(s);
    std::vector<std::string> entities(req->entities().begin(), req->entities().end());
    auto out = Wait<CountsResult>([&](auto done) {
      service_.CountsOf(req->business(), std::move(entities), std::move(done));
    });
    if (!out.ok()) return net::ToGrpcStatus(out.status());
    for (const Counts& c : out->counts) {
      pb::Counts* pc = res->add_counts();
      pc->set_likes(c.likes);
      pc->set_dislikes(c.dislikes);
    }
    res->set_degraded(out->degraded);
    return grpc::Status::OK;
  }

  grpc::Status ListUserLikes(grpc::ServerContext* ctx, const pb::ListRequest* req, pb::ListResponse* res) override {
    return List(*ctx, *req, res, /*likers=*/false);
  }
  grpc::Status ListLikers(grpc::ServerContext* ctx, const pb::ListRequest* req, pb::ListResponse* res) override {
    return List(*ctx, *req, res, /*likers=*/true);
  }

  grpc::Status GetReceived(grpc::ServerContext* ctx, const pb::GetReceivedRequest* req,
                           pb::GetReceivedResponse* res) override {
    auto claims = Authenticate(*ctx);
    if (!claims.ok()) return net::ToGrpcStatus(claims.status());
    if (Status s = ValidateId("user", req->user()); !s.ok()) return net::ToGrpcStatus(s);
    auto total = service_.Received(req->business(), req->user());
    if (!total.ok()) return net::ToGrpcStatus(total.status());
    res->set_received(*total);
    return grpc::Status::OK;
  }

 private:
  Result<net::TokenClaims> Authenticate(const grpc::ServerContext& ctx) const {
    CHORUS_ASSIGN_OR_RETURN(std::string_view token, net::GrpcBearerToken(ctx));
    return service_.signer().Verify(token, SystemClock::Instance());
  }

  Result<ActRequest> Admit(const net::TokenClaims& claims, const pb::ActRequest& p, const grpc::ServerContext& ctx) {
    ActRequest r{p.business(), p.user(), p.entity(), p.owner()};
    CHORUS_ASSIGN_OR_RETURN(r.action, FromProto(p.action()));
    std::string peer = ctx.peer();  // "ipv4:127.0.0.1:5000"
    const size_t colon = peer.rfind(':');
    if (colon != std::string::npos) peer.resize(colon);
    CHORUS_RETURN_IF_ERROR(service_.AdmitWrite(claims, r, peer));
    return r;
  }

  Status CheckRead(const std::string& business, const google::protobuf::RepeatedPtrField<std::string>& entities) {
    if (!service_.FindBusiness(business)) return InvalidArgument("unknown business '" + business + "'");
    const size_t max = service_.options().max_entities;
    if (entities.empty() || static_cast<size_t>(entities.size()) > max) {
      return InvalidArgument("entities must hold 1.." + std::to_string(max) + " ids");
    }
    for (const std::string& e : entities) CHORUS_RETURN_IF_ERROR(ValidateId("entity", e));
    return Status::Ok();
  }

  grpc::Status List(const grpc::ServerContext& ctx, const pb::ListRequest& req, pb::ListResponse* res, bool likers) {
    auto claims = Authenticate(ctx);
    if (!claims.ok()) return net::ToGrpcStatus(claims.status());
    if (Status s = ValidateId(likers ? "entity" : "user", req.id()); !s.ok()) return net::ToGrpcStatus(s);
    const auto& o = service_.options();
    const size_t limit = req.limit() == 0 ? o.list_limit_default : req.limit();
    if (limit > o.list_limit_max) {
      return net::ToGrpcStatus(InvalidArgument("limit must be 1.." + std::to_string(o.list_limit_max)));
    }
    auto page = likers ? service_.Likers(req.business(), req.id(), req.cursor(), limit)
                       : service_.UserLikes(req.business(), req.id(), req.cursor(), limit);
    if (!page.ok()) return net::ToGrpcStatus(page.status());
    for (const ListItem& item : page->items) {
      pb::ListItem* out = res->add_items();
      out->set_id(item.id);
      out->set_time_ms(item.time_ms);
    }
    res->set_next_cursor(page->next_cursor);
    return grpc::Status::OK;
  }

  LikesService& service_;
};

}  // namespace

std::unique_ptr<grpc::Service> LikesService::MakeGrpcService() { return std::make_unique<LikesGrpc>(*this); }

}  // namespace chorus::likes
