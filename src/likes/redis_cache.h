// RedisLikeCache: the likes cluster engine's shared cache (docs/scale-out.md), on Redis or a
// Redis Cluster through redis::SyncRedis.
//
// Keys (no hash tags, so a cluster spreads them over every master):
//   count:<ns>:<entity>   string "likes,dislikes,seq"
//   state:<ns>:<user>     hash entity -> "state,time_ms,seq,owner" (state 0 = known: no record)
//   ul:{<ns>:<user>}      zset entity -> time_ms: the newest likes of the user, at most the
//                         business's user_list_max (Options::list_max; none: lists not cached)
//   uls:{<ns>:<user>}     "seq,capped" for that list: present = the list is cached (an empty list
//                         has no zset); capped = older likes exist beyond the cached ones
//                         (the hash tag keeps the pair in one Redis Cluster slot for the scripts)
// `seq` is the likes stream offset the value is valid at: the job's offset for the values it
// writes after a commit, the database snapshot's offset for values refilled after a miss. A
// write carrying an older seq than the stored value is ignored (a Lua script compares them), so
// a slow refill never overwrites a newer refresh. Every key expires after `ttl` (also the bound
// on staleness if a refresh is lost).
//
// Threads: every method is safe from any thread (SyncRedis is) and blocks for about one round
// trip per node touched.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "likes/like_store.h"
#include "likes/model.h"
#include "likes/sql_store.h"

namespace chorus::redis {
class SyncRedis;
struct SyncRedisOptions;
}  // namespace chorus::redis

namespace chorus::likes {

class RedisLikeCache {
 public:
  struct Options {
    std::vector<std::string> seeds;  // host:port
    bool cluster = false;            // Redis Cluster (slot routing, MOVED/ASK)
    std::string password;
    Duration ttl = std::chrono::hours(1);
    Duration timeout = std::chrono::milliseconds(500);
    std::map<std::string, size_t, std::less<>> list_max;  // namespace -> likes kept per user list
    // 0: one key per entity's counts (count:<ns>:<entity>). N: N hashes per namespace,
    // counts:<ns>:<fnv1a(entity) % N>, field entity (fewer keys, listpack-encoded small hashes;
    // the TTL then applies to a whole bucket).
    size_t count_buckets = 0;
  };
  static Result<std::unique_ptr<RedisLikeCache>> Create(const Options& options);
  ~RedisLikeCache();

  struct CachedCounts {
    Counts counts;
    uint64_t seq = 0;
  };
  // out[i]: the cached counts of entities[i], or nullopt on a miss. An error: Redis unreachable.
  Status GetCounts(std::string_view ns, std::span<const std::string> entities,
                   std::vector<std::optional<CachedCounts>>* out);
  Status PutCounts(std::string_view ns, std::span<const std::string> entities, std::span<const Counts> counts,
                   uint64_t seq);

  // out[i]: nullopt on a miss, else the cached record (itself nullopt for "no record").
  Status GetRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                    std::vector<std::optional<std::optional<Record>>>* out);
  Status PutRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                    std::span<const std::optional<Record>> records, uint64_t seq);

  // The first page (newest first) of a user's likes: nullopt on a miss. A page that reaches the
  // end of what is cached while older likes exist carries a next_cursor (continue in the DB).
  Status GetUserLikes(std::string_view ns, std::string_view user, size_t limit, std::optional<ListPage>* out);
  // Caches a user's list from a database snapshot at `seq`: `newest` holds the newest likes (at
  // most list_max are kept); `capped`: older ones exist.
  Status PutUserLikes(std::string_view ns, std::string_view user, const std::vector<ListItem>& newest,
                      bool capped, uint64_t seq);
  size_t ListMax(std::string_view ns) const;  // 0: lists of `ns` are not cached

  // What one job batch committed, at stream offset `seq`: every count and changed record; then
  // records `seq` as how far the cache is refreshed for `stream`.
  Status Refresh(std::string_view stream, const ApplyOutcome& outcome, uint64_t seq);
  // How far the job refreshed the cache for `stream` (0 if never).
  Result<uint64_t> RefreshedThrough(std::string_view stream);
  // Drops the cached counts and records these entries touch (written outside the stream).
  Status Invalidate(std::span<const LogEntry> entries);

 private:
  explicit RedisLikeCache(std::unique_ptr<redis::SyncRedis> redis, Options options);
  Status Run(std::vector<std::vector<std::string>> commands);
  std::string BucketKey(std::string_view ns, std::string_view entity) const;
  std::vector<std::string> GetCountCommand(std::string_view ns, std::string_view entity) const;
  std::vector<std::string> SetCountCommand(std::string_view ns, std::string_view entity, const Counts& counts,
                                           uint64_t seq, const std::string& ttl) const;
  std::vector<std::string> DelCountCommand(std::string_view ns, std::string_view entity) const;

  std::unique_ptr<redis::SyncRedis> redis_;
  const Options options_;
};

}  // namespace chorus::likes
