// The Redis peer of the likes benchmark: the same operations (likes_load.h) as the primitive
// Redis work a like service built on Redis would do, pipelined.
//
//   write, per action   like:   ZADD   user:likes:{b}:u{user} {time_ms} e{entity}
//                               HINCRBY count:{b}:e{entity} likes 1
//                       unlike: ZREM   user:likes:{b}:u{user} e{entity}
//                               HINCRBY count:{b}:e{entity} likes -1
//                       with owners: HINCRBY received:{b}:o{owner} likes ±1
//                       with likers: ZADD/ZREM entity:likers:{b}:e{entity} [time_ms] u{user}
//   state read          ZSCORE user:likes:{b}:u{user} e{entity}, one per entity
//   counts read         HMGET count:{b}:e{entity} likes dislikes, one per entity
//
// Redis is not told the previous state (a blind HINCRBY): the generator's toggle tracking is what
// keeps its counts right, where chorus checks the transition itself. Durability is the server's
// configuration (`appendfsync always` acknowledges after the AOF fsync, grouped per event-loop
// turn, like chorus's group commit), not the client's.
//
// Client: per load thread one epoll loop over its connections, raw non-blocking sockets, RESP
// written by AppendRespCommand, replies parsed by hiredis's redisReader built without reply
// objects (a reply is only its type: no allocation per reply). Each connection keeps up to
// `pipeline` operations in flight (a sliding window: a completed operation is replaced at once)
// and flushes once per read; an operation's latency runs from appending its commands to its last
// reply. A lost connection drops its in-flight operations (counted as socket errors) and is
// reopened after 10 ms.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"
#include "likes_load.h"

namespace chorus::bench {

struct LikesRedisOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 6379;
  int pipeline = 16;    // operations in flight per connection
  bool likers = false;  // also keep entity:likers:{b}:e{entity} (who liked an entity)
};

// "host:port" into options.host / options.port.
Status ParseRedisAddress(std::string_view text, LikesRedisOptions* options);

Result<std::unique_ptr<LikesDriver>> MakeLikesRedisDriver(const LikesRedisOptions& options,
                                                          const LikesWorkload& workload);

// ---- pure pieces (tested) ----

// Appends one RESP command (an array of bulk strings).
void AppendRespCommand(std::string* out, std::initializer_list<std::string_view> args);

struct LikesRedisKeys {
  std::string business = "video";
  uint64_t owners = 0;
  bool likers = false;
};

// Appends the commands of `op` (see the header comment); returns how many replies they produce.
size_t AppendLikesRedisCommands(const LikesOp& op, const LikesRedisKeys& keys, int64_t time_ms,
                                std::string* out);

}  // namespace chorus::bench
