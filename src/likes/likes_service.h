// LikesService: the like platform (docs/likes.md) on a net::Runtime.
//
// Ownership (thread-per-core, no locks on the hot path):
//   - a (business, entity) is owned by shard hash(namespace, entity) % shards. Every action on
//     it and every read of its states or counts runs there, so transitions and counts are
//     serialized without locks;
//   - the owner keeps an overlay of what is logged but not yet applied (per record and per
//     entity's counts), so reads of states and counts always include acknowledged writes;
//   - durable log appends go through one committer thread (group commit, committer.h); the apply
//     stage runs on each owner shard every likes.flush_interval;
//   - each shard has its own hot-key detector and W-TinyLFU cache of hot entities' counts; the
//     owner pushes new counts of cached entities to every shard when they change.
// Lists (a user's likes, an entity's likers) and received totals are read from the store on the
// shard that took the request; they include a write once the apply stage has run.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/config.h"
#include "base/status.h"
#include "likes/event_bus.h"
#include "likes/like_store.h"
#include "likes/model.h"

namespace grpc {
class Service;
}

namespace chorus::net {
class Router;
class Runtime;
class TokenSigner;
struct TokenClaims;
}  // namespace chorus::net

namespace chorus::likes {

struct LikesOptions {
  std::vector<Business> businesses;
  Duration flush_interval = std::chrono::seconds(1);  // apply window (the seed aggregates 10 s)
  size_t apply_batch_max = 20000;  // most log entries one shard applies per window
  double apply_rate = 0;           // job stage: most entries applied per second overall; 0 = no limit
  size_t max_pending = 1'000'000;  // unapplied entries per shard beyond which writes answer 503
  Duration trim_interval = std::chrono::seconds(10);
  size_t max_entities = 100;       // per state / counts read
  size_t max_write_batch = 100;    // actions per POST /v1/likes/batch
  size_t list_limit_default = 20;
  size_t list_limit_max = 100;
  bool rate_limits = true;
  // Hot keys and the count cache.
  uint64_t hot_threshold = 100;  // reads of one entity's counts per hot_window to be hot
  Duration hot_window = std::chrono::seconds(1);
  size_t hot_top_k = 64;
  size_t cache_capacity = 10000;
  // Threads for the cluster engine's blocking store calls (Redis, MariaDB round trips), so the
  // shards never wait on the network. Unused by the embedded engine.
  size_t io_threads = 16;
  Duration cache_ttl = std::chrono::seconds(2);
};

// Declares the likes.* configuration keys.
void AddConfigKeys(ConfigSchema& schema);
// Reads and validates the likes.* keys.
Result<LikesOptions> OptionsFromConfig(const Config& config);

struct ActRequest {
  std::string business;
  std::string user;
  std::string entity;
  std::string owner;
  LikeAction action = LikeAction::kLike;
};

struct ActResult {
  LikeState state = LikeState::kNone;
  Counts counts;
  bool changed = false;
  bool degraded = false;  // the counts could not be read from the store (cache or overlay only)
};

struct StatesResult {
  std::vector<LikeState> states;  // in request order
  bool degraded = false;          // the store failed; unknown states answered as none
};

struct CountsResult {
  std::vector<Counts> counts;  // in request order
  bool degraded = false;       // the store failed; counts from the cache or zero
};

class LikesService {
 public:
  static Result<std::unique_ptr<LikesService>> Create(net::Runtime& runtime, const net::TokenSigner& signer,
                                                      LikesOptions options, std::shared_ptr<LikeStore> store,
                                                      std::shared_ptr<EventBus> bus,
                                                      const Clock& clock = SystemClock::Instance());
  ~LikesService();

  // Applies what the log holds from before a crash, then starts the apply and trim timers. Call
  // after the runtime has started and before serving.
  Status Start();
  // Completes in-flight appends, applies everything acknowledged, stops the committer. Call
  // before stopping the runtime.
  void Stop();

  Status AddRoutes(net::Router& router);
  std::unique_ptr<grpc::Service> MakeGrpcService();

  // The core shared by HTTP and gRPC. Callable from any thread; `done` runs on a shard thread.
  // Requests must name configured businesses and valid ids (ValidateAct); a per-item failure
  // (dislikes not allowed, store failure) is that item's Result.
  using ActCallback = std::function<void(std::vector<Result<ActResult>>)>;
  void Act(std::vector<ActRequest> requests, ActCallback done);
  void States(std::string business, std::string user, std::vector<std::string> entities,
              std::function<void(Result<StatesResult>)> done);
  void CountsOf(std::string business, std::vector<std::string> entities,
                std::function<void(Result<CountsResult>)> done);
  Result<ListPage> UserLikes(std::string_view business, std::string_view user, std::string_view cursor,
                             size_t limit);
  Result<ListPage> Likers(std::string_view business, std::string_view entity, std::string_view cursor,
                          size_t limit);
  Result<int64_t> Received(std::string_view business, std::string_view owner);

  // Whether a caller may submit this action: valid ids of a configured business
  // (InvalidArgument); a user token for that user or a service token with scope likes.write
  // (PermissionDenied); and a token left in the user's and the client address's write buckets
  // of the business (ResourceExhausted; likes.rate_limits). Takes those tokens when OK.
  Status AdmitWrite(const net::TokenClaims& claims, const ActRequest& request, std::string_view client_ip);

  // InvalidArgument unless the business is configured and the ids are valid.
  Status ValidateAct(const ActRequest& request) const;
  const Business* FindBusiness(std::string_view id) const;
  const LikesOptions& options() const;
  const net::TokenSigner& signer() const;
  // True when actions handed to Act in order are applied in that order per (business, user,
  // entity): the embedded store, where each key's actions pass through its owner shard's FIFO.
  // Not with the cluster engines, whose reads go through a thread pool first.
  bool keeps_action_order() const;

  class Impl;

 private:
  explicit LikesService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::likes
