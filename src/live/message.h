// The live message model: what publishers send, how priority is derived, how ids are assigned,
// and the two wire forms (JSON for HTTP/poll/`format=json`, protobuf for binary frames).
//
// A Message is built once at accept time on the room's owner shard and then shared immutably
// (MessagePtr) by the dispatcher, the poll store and every block that carries it. Its JSON text
// is rendered once, at accept, and reused by blocks, polls and the Redis store.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "base/status.h"

namespace chorus::live {

inline constexpr size_t kMaxRoomIdBytes = 64;
inline constexpr size_t kMaxTypeBytes = 32;
inline constexpr size_t kMaxGainKeyBytes = 64;
inline constexpr int32_t kMinPriority = 0;
inline constexpr int32_t kMaxPriority = 1000;

struct Message {
  uint64_t id = 0;
  std::string room;  // empty for private messages
  std::string type;
  int32_t priority = 0;
  int64_t created_at = 0;  // wall ms
  std::string sender_id;   // empty = anonymous
  int32_t sender_level = 0;
  std::string payload = "{}";  // JSON object text
  std::string gain_key;
  std::string user;  // private target
  std::string json;  // the whole message as JSON, rendered by Finalize()
};
using MessagePtr = std::shared_ptr<const Message>;

// Room ids and user ids: 1..64 bytes of [A-Za-z0-9_.:-]. Keeps keys, logs and URLs simple.
Status ValidateRoomId(std::string_view room);
Status ValidateUserId(std::string_view user);

// A message as a publisher sends it, before id/created_at/priority are assigned.
struct Draft {
  Message message;
  bool priority_set = false;  // the publisher gave an explicit priority
  double gift_value = 0;      // payload.value, used by the gift priority rule
};

// Parses one publisher message object (JSON text of an object). The target (room or user) is
// not read from the body: the caller sets it from the URL. `max_payload_bytes` bounds the
// serialized payload.
Result<Draft> ParseDraft(std::string_view json_object, size_t max_payload_bytes);
Result<Draft> ParseDraftJson(const nlohmann::json& object, size_t max_payload_bytes);

// Priority rules (docs/live.md "Priority"): base per type; gifts add min(value / gift_step,
// gift_bonus_max); chat adds min(level, level_bonus_max) and anonymous chat loses one point, so it
// sorts below every signed-in sender. A publisher's explicit priority wins (clamped to 0..1000).
struct PriorityRules {
  std::map<std::string, int32_t, std::less<>> base = {
      {"gift", 600}, {"pk", 500}, {"chat", 200}, {"notify", 100}};
  int32_t default_base = 150;  // business-defined types
  double gift_step = 10;
  int32_t gift_bonus_max = 99;
  int32_t level_bonus_max = 99;

  // From the JSON text of the `live.priority` config tree; unknown fields are errors.
  static Result<PriorityRules> FromJson(std::string_view json);
  int32_t Compute(const Draft& draft) const;
};

// Renders `m.json` from the other fields. Call after id, created_at and priority are set.
void Finalize(Message& m);

// Unique, time-ordered 64-bit ids: 41 bits of ms since 2026-01-01 UTC, 10 bits of node
// (config live.node_id, 0..1023 — distinct per process in a cluster) mixed with the shard, and
// 12 bits of sequence. One generator per shard; not thread-safe. If the clock goes backwards the
// generator keeps using its last timestamp, so ids never repeat or go down.
class IdGenerator {
 public:
  static constexpr int64_t kEpochMs = 1'767'225'600'000;  // 2026-01-01T00:00:00Z
  IdGenerator(uint32_t node, uint32_t shard, uint32_t shards);
  uint64_t Next(int64_t wall_ms);
  // The creation ms encoded in an id.
  static int64_t MillisOf(uint64_t id) { return static_cast<int64_t>(id >> 22) + kEpochMs; }

 private:
  uint64_t node_bits_;
  int64_t last_ms_ = 0;
  uint32_t seq_ = 0;
};

}  // namespace chorus::live
