// Where short-polling viewers read a room's recent messages: one interface, two engines.
//
// The room's owner shard appends every accepted room message (in accept order, created_at
// non-decreasing per room); poll requests on any shard query. Both engines keep, per room and
// per message type, the newest messages bounded by count and age (the retention window), so a
// query never scans more than the retention holds.
//
//   - MemoryPollStore (memory_store.h): in-process rings; thread-safe, answers inline.
//   - RedisPollStore (redis_store.h): sorted sets `live:{room}:<type>`, score created_at,
//     member the message's JSON; answers on the calling shard when Redis replies.
//
// Query semantics (shared by both engines, see SelectForPoll): candidates are messages with
// since < created_at <= until of the requested types; of messages with the same gain_key only
// the newest is a candidate; when more than `limit` remain, the highest priority ones win (older
// first within a priority); the result is returned in (created_at, id) order.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>
#include "base/status.h"

namespace chorus::live {

// One stored message: the fields a query needs plus the message's JSON object text.
struct StoredMessage {
  uint64_t id = 0;
  int64_t created_at = 0;  // ms since the Unix epoch
  int32_t priority = 0;
  std::string type;
  std::string gain_key;                    // empty when not a gain message
  std::shared_ptr<const std::string> json;  // the message as a JSON object
};

struct PollQuery {
  std::string room;
  int64_t since = 0;  // exclusive, ms; the caller has already clamped it to the retention window
  int64_t until = 0;  // inclusive, ms
  size_t limit = 15;
  std::vector<std::string> types;  // empty = every type
};

struct PollResult {
  std::vector<StoredMessage> messages;  // (created_at, id) order
  // The newest created_at among the candidates (returned or not), or the query's since when
  // there were none. The client passes it as the next `since`.
  int64_t newest = 0;
  size_t candidates = 0;  // how many matched before the limit
};

class PollStore {
 public:
  using AppendCallback = std::function<void(Status)>;
  using QueryCallback = std::function<void(Result<PollResult>)>;

  virtual ~PollStore() = default;
  // Appends messages of one room, all with created_at >= any earlier append to that room.
  // `done` may be null; it runs on the calling shard (or inline).
  virtual void Append(std::string_view room, std::vector<StoredMessage> messages,
                      AppendCallback done) = 0;
  // Runs a query; `done` runs on the calling shard (or inline) exactly once.
  virtual void Query(PollQuery query, QueryCallback done) = 0;
  virtual std::string_view name() const = 0;
  // Forgets what is older than the retention window as of `now_ms`, for engines that do not
  // expire data themselves; called every few seconds from one shard. Redis expires keys itself.
  virtual void Sweep(int64_t now_ms) {}
};

// Retention shared by both engines.
struct RetentionOptions {
  size_t max_per_type = 500;  // newest N per (room, type)
  int64_t max_age_ms = 60'000;
};

// The shared selection rule: `candidates` are the messages in (since, until] of the requested
// types in any order; returns what a poll answers.
PollResult SelectForPoll(std::vector<StoredMessage> candidates, const PollQuery& query);

}  // namespace chorus::live
