// RedisPollStore: the poll store in Redis, shared by every process that serves the same rooms.
//
// Layout (all keys of a room carry the Redis Cluster hash tag {room}, so they share a slot):
//   live:{<room>}:<type>   sorted set, score created_at (ms), member the message's JSON text
//                          (unique: it contains the message id). Bounded by RetentionOptions:
//                          after each append the newest max_per_type are kept (by score; equal
//                          scores order by member, i.e. by the JSON's leading "id"), and members
//                          older than max_age_ms before the append's newest created_at go.
//   live:{<room>}          sorted set, the room's type index: member a type, score the newest
//                          created_at appended with it. Lets a query without `types` find
//                          business-defined types that another process appended. No type can
//                          collide with it: types never contain ':' and the key has no suffix.
// Every key gets PEXPIRE 2 * max_age_ms on each append, so an idle room's keys vanish by
// themselves and the store needs no sweeper.
//
// Append pipelines, per touched type: ZADD (all of that type's messages in one command),
// ZREMRANGEBYRANK, ZREMRANGEBYSCORE, PEXPIRE; then the same for the index. The commands are not a
// transaction: a failure part-way leaves some messages stored, which a lossy live feed tolerates;
// `done` gets the first error. Query pipelines one ZRANGEBYSCORE key (since until LIMIT 0
// max_per_type per type; with no `types` it asks for the four standard types and reads the index
// in the same round trip, then asks for any other type the index names (only types appended
// after `since` are listed, so most polls need one round trip). Members are parsed back into
// StoredMessage and SelectForPoll() applies the shared selection rule. A member that does not
// parse is skipped and logged (a bug or a foreign writer, not a reason to fail the poll).
//
// Errors: Redis unreachable or reconnecting gives kUnavailable (the HTTP layer answers 503), a
// command without reply in time kDeadlineExceeded, an error reply kInternal; messages are
// prefixed with "redis poll store".
//
// Threads and shards: the store holds one RedisClient per runtime shard (clients[i] bound to
// shard i). Append and Query use the calling shard's client (Runtime::Current()), so `done` runs on
// the calling shard, never inline (except for an empty append or an empty time range). Called
// from a thread that is not a shard (tests), they use shard 0's client and `done` runs on shard 0.
// The store itself has no mutable state: any shard may call it concurrently.
//
// Shutdown: Close() (or Runtime::Stop()) first; destroy the store (and so the clients) after
// Runtime::Stop() and before the Runtime — the clients' sockets live on the shards' io_contexts.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "live/poll_store.h"
#include "redis/redis_client.h"

namespace chorus::net {
class Runtime;
}

namespace chorus::live {

class RedisPollStore final : public PollStore {
 public:
  // `clients[i]` must be bound to shard i (one per shard, in shard order). kInvalidArgument for no
  // clients, a null or misplaced client, or a retention of zero messages or zero ms. The clients
  // are used as they are: connecting them is the caller's business (see Connect()).
  static Result<std::unique_ptr<RedisPollStore>> Create(
      std::vector<std::shared_ptr<redis::RedisClient>> clients, RetentionOptions retention);
  // One client per shard of `runtime`, created from `options` and told to connect; the store is
  // usable at once (queries fail with kUnavailable until the clients are connected).
  static Result<std::unique_ptr<RedisPollStore>> Connect(net::Runtime& runtime,
                                                         const redis::RedisOptions& options,
                                                         RetentionOptions retention);

  void Append(std::string_view room, std::vector<StoredMessage> messages, AppendCallback done) override;
  void Query(PollQuery query, QueryCallback done) override;
  std::string_view name() const override { return "redis"; }

  // Closes every client (each on its shard); calls in flight fail with kUnavailable.
  void Close();

  // "live:{<room>}:<type>" and "live:{<room>}" (the type index), see the header comment.
  static std::string Key(std::string_view room, std::string_view type);
  static std::string TypesKey(std::string_view room);
  // "live:{<room>}:$wm": the newest created_at whose append has completed (written last).
  static std::string WatermarkKey(std::string_view room);

  const std::vector<std::shared_ptr<redis::RedisClient>>& clients() const { return clients_; }

 private:
  RedisPollStore(std::vector<std::shared_ptr<redis::RedisClient>> clients, RetentionOptions retention)
      : clients_(std::move(clients)), retention_(retention) {}

  // The calling shard's client (shard 0's off the shards).
  redis::RedisClient& ClientForCaller() const;

  const std::vector<std::shared_ptr<redis::RedisClient>> clients_;
  const RetentionOptions retention_;
};

}  // namespace chorus::live
