// RedisReply: one Redis reply as a plain value, shared by the two clients of this folder (the
// asynchronous per-shard RedisClient and the synchronous, thread-safe SyncRedis).
//
// A RedisReply owns copies of every byte hiredis handed over, so it outlives the hiredis reply
// object and may move between threads. hiredis stays out of this header: the conversion helpers
// below take hiredis's redisReply by forward declaration and are defined in redis_client.cc.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

struct redisReply;  // hiredis; only .cc files see its definition

namespace chorus::redis {

// A reply copied out of hiredis's redisReply, so it outlives the callback and can be moved
// between threads. Strings are binary-safe.
struct RedisReply {
  enum class Type { kNil, kStatus, kError, kInteger, kString, kArray };

  Type type = Type::kNil;
  std::string str;                   // kStatus, kError, kString
  int64_t integer = 0;               // kInteger
  std::vector<RedisReply> elements;  // kArray

  bool is_nil() const { return type == Type::kNil; }
  bool is_status() const { return type == Type::kStatus; }
  bool is_error() const { return type == Type::kError; }
  bool is_integer() const { return type == Type::kInteger; }
  bool is_string() const { return type == Type::kString; }
  bool is_array() const { return type == Type::kArray; }

  // For logs and test failures: `"OK"`, `(integer) 3`, `(nil)`, `[...]`; bytes escaped.
  std::string DebugString() const;
};

// Internal to src/redis (both clients use them; not for callers).
namespace internal {

// A deep copy of a hiredis reply. Nesting is bounded by hiredis's reader (7 levels).
RedisReply ConvertReply(const redisReply& reply);

// A top-level error reply (`-ERR ...`) as a Status, the same for both clients: kUnavailable for
// the transient ones (LOADING, BUSY, MASTERDOWN, TRYAGAIN, CLUSTERDOWN), kInternal otherwise;
// the message is "redis: " + the server's text.
Status ErrorReplyStatus(const std::string& text);

}  // namespace internal
}  // namespace chorus::redis
