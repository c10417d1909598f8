// The like model: states, actions, the transition rules, businesses, and the log entry that
// records one accepted transition. Pure values and functions; safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace chorus::likes {

enum class LikeState : uint8_t { kNone = 0, kLiked = 1, kDisliked = 2 };
enum class LikeAction : uint8_t { kLike, kUnlike, kDislike, kUndislike };

std::string_view StateName(LikeState s);   // "none" | "liked" | "disliked"
std::string_view ActionName(LikeAction a); // "like" | ...
Result<LikeAction> ParseAction(std::string_view text);

struct Counts {
  int64_t likes = 0;
  int64_t dislikes = 0;
  Counts& operator+=(const Counts& o) {
    likes += o.likes;
    dislikes += o.dislikes;
    return *this;
  }
  friend bool operator==(const Counts&, const Counts&) = default;
};

// What an action does from a state. A repeated action (like when liked, unlike when not liked)
// is a no-op: `changed` false and zero deltas. like <-> dislike switches in one step.
struct Transition {
  LikeState to = LikeState::kNone;
  Counts delta;
  bool changed = false;
};
// InvalidArgument when the action is a dislike/undislike and the business has none.
Result<Transition> Apply(LikeState from, LikeAction action, bool dislikes_allowed);

// The count change of a record moving from one state to another.
Counts DeltaOf(LikeState from, LikeState to);

// Token bucket parameters; rate 0 = unlimited.
struct RateLimit {
  double per_second = 0;
  double burst = 0;
};

// One onboarded business (config likes.businesses).
struct Business {
  std::string id;          // "video": the API's `business` value
  std::string name;        // display name
  bool dislikes = true;    // whether dislike/undislike are allowed
  size_t user_list_max = 1000;  // a user's like list keeps the newest this many
  RateLimit user_rate{20, 40};   // writes per user
  RateLimit ip_rate{200, 400};   // writes per client address
  std::string ns;          // storage namespace (key prefix); distinct per business
};

// Ids of users, entities and owners: [A-Za-z0-9_.:-]{1,64}.
Status ValidateId(std::string_view what, std::string_view id);
// Business ids: [a-z0-9_-]{1,32}; namespaces: 1..16 bytes of the same.
Status ValidateBusiness(const Business& b);

// One accepted transition, as the durable log stores it. `from_time`/`from_owner` describe the
// record being replaced (so the apply stage can remove its list entries without reading).
struct LogEntry {
  uint64_t seq = 0;  // assigned by the log on append
  std::string ns;
  std::string user;
  std::string entity;
  std::string owner;  // the entity's owner credited with received likes ("" = none)
  LikeState from = LikeState::kNone;
  LikeState to = LikeState::kNone;
  int64_t from_time_ms = 0;
  int64_t time_ms = 0;
  // A blind write (cluster engine, written while the current state could not be read): apply
  // only when the stored state is this one. Set for unlike/undislike (they undo one state); a
  // blind like/dislike has none and from == to (no count delta is guessed before the apply).
  std::optional<LikeState> if_state;
};
std::string EncodeLogEntry(const LogEntry& e);
// InvalidArgument on malformed bytes (a corrupt log is reported, never trusted).
Result<LogEntry> DecodeLogEntry(std::string_view bytes);

// Keys shared by the store and the service's overlay. Ids never contain a zero byte, so the
// parts cannot run into each other.
// ns \0 user \0 entity: one user's record on one entity.
std::string RecordKey(std::string_view ns, std::string_view user, std::string_view entity);
// ns \0 id: an entity's counts, an owner's received total.
std::string TotalKey(std::string_view ns, std::string_view id);

// A stored record: a user's current state on an entity.
struct Record {
  LikeState state = LikeState::kNone;
  int64_t time_ms = 0;
  std::string owner;
};
std::string EncodeRecord(const Record& r);
Result<Record> DecodeRecord(std::string_view bytes);

}  // namespace chorus::likes
