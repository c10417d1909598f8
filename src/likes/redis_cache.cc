#include "likes/redis_cache.h"

#include <charconv>
#include <map>

#include "redis/sync_client.h"

namespace chorus::likes {
namespace {

// Sets KEYS[1] to ARGV[1] .. "," .. ARGV[2] (the seq) unless it holds a newer seq; EX ARGV[3].
constexpr const char* kSetCounts = R"lua(
local cur = redis.call('GET', KEYS[1])
if cur then
  local s = tonumber(string.match(cur, '^[^,]*,[^,]*,(%d+)$'))
  if s and s > tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. ',' .. ARGV[2], 'EX', ARGV[3])
return 1
)lua";

// For each (field, value) pair from ARGV[3]: HSET unless the field holds a newer seq than
// ARGV[2] (values are "state,time,seq,owner"). EXPIRE ARGV[1].
constexpr const char* kSetRecords = R"lua(
local seq = tonumber(ARGV[2])
for i = 3, #ARGV, 2 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local s = cur and tonumber(string.match(cur, '^[^,]*,[^,]*,(%d+)'))
  if not s or s <= seq then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
)lua";

// Replaces a user's cached list (KEYS[1] zset, KEYS[2] "seq,capped") unless the cached one is
// newer. ARGV: ttl, seq, capped (0/1), then score, member pairs.
constexpr const char* kPutList = R"lua(
local cur = redis.call('GET', KEYS[2])
local s = cur and tonumber(string.match(cur, '^(%d+)'))
if s and s > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
for i = 4, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('SET', KEYS[2], ARGV[2] .. ',' .. ARGV[3], 'EX', ARGV[1])
if #ARGV >= 4 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return 1
)lua";

// Applies the job's changes at ARGV[2] to a cached list (nothing when it is not cached or the
// cached copy is from a newer snapshot). ARGV: ttl, seq, list max, then (liked 0/1, score,
// member) triples. Trimming to the max marks the list capped.
constexpr const char* kUpdateList = R"lua(
local cur = redis.call('GET', KEYS[2])
if not cur then return 0 end
local s, capped = string.match(cur, '^(%d+),(%d)')
if tonumber(s) > tonumber(ARGV[2]) then return 0 end
for i = 4, #ARGV, 3 do
  if ARGV[i] == '1' then redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i + 2])
  else redis.call('ZREM', KEYS[1], ARGV[i + 2]) end
end
local max = tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[1]) > max then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(max + 1))
  capped = '1'
end
redis.call('SET', KEYS[2], ARGV[2] .. ',' .. capped, 'EX', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
)lua";

std::string ListKey(std::string_view ns, std::string_view user) {
  return "ul:{" + std::string(ns) + ":" + std::string(user) + "}";
}
std::string ListStateKey(std::string_view ns, std::string_view user) {
  return "uls:{" + std::string(ns) + ":" + std::string(user) + "}";
}

// The bucketed layout's field update: HSET KEYS[1] ARGV[2] = ARGV[3] .. "," .. ARGV[4] (the seq)
// unless the field holds a newer seq; EXPIRE ARGV[1] (the whole bucket).
constexpr const char* kSetCountField = R"lua(
local cur = redis.call('HGET', KEYS[1], ARGV[2])
if cur then
  local s = tonumber(string.match(cur, '^[^,]*,[^,]*,(%d+)$'))
  if s and s > tonumber(ARGV[4]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3] .. ',' .. ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
)lua";

// FNV-1a: a bucket that is the same in every process and build.
uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::string CountsKey(std::string_view ns, std::string_view entity) {
  return "count:" + std::string(ns) + ":" + std::string(entity);
}
std::string StateKey(std::string_view ns, std::string_view user) {
  return "state:" + std::string(ns) + ":" + std::string(user);
}

// Splits "a,b,c,..." into at most `n` fields (the last takes the rest).
std::vector<std::string_view> Fields(std::string_view s, size_t n) {
  std::vector<std::string_view> out;
  while (out.size() + 1 < n) {
    const size_t comma = s.find(',');
    if (comma == std::string_view::npos) break;
    out.push_back(s.substr(0, comma));
    s.remove_prefix(comma + 1);
  }
  out.push_back(s);
  return out;
}

template <typename T>
bool Parse(std::string_view s, T* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::string RecordValue(const std::optional<Record>& r, uint64_t seq) {
  if (!r) return "0,0," + std::to_string(seq) + ",";
  return std::to_string(static_cast<int>(r->state)) + "," + std::to_string(r->time_ms) + "," +
         std::to_string(seq) + "," + r->owner;
}

}  // namespace

RedisLikeCache::RedisLikeCache(std::unique_ptr<redis::SyncRedis> redis, Options options)
    : redis_(std::move(redis)), options_(std::move(options)) {}
RedisLikeCache::~RedisLikeCache() = default;

Result<std::unique_ptr<RedisLikeCache>> RedisLikeCache::Create(const Options& options) {
  if (options.seeds.empty()) return InvalidArgument("likes redis cache: no seeds");
  if (options.ttl < std::chrono::seconds(1)) return InvalidArgument("likes.redis.ttl must be at least 1s");
  redis::SyncRedisOptions o;
  o.seeds = options.seeds;
  o.mode =
      options.cluster ? redis::SyncRedisOptions::Mode::kCluster : redis::SyncRedisOptions::Mode::kStandalone;
  if (!options.cluster && options.seeds.size() != 1) {
    return InvalidArgument("likes redis cache: one address without likes.redis.cluster");
  }
  o.password = options.password;
  o.connect_timeout = options.timeout;
  o.command_timeout = options.timeout;
  o.pool_size = 8;
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<redis::SyncRedis> client, redis::SyncRedis::Create(o));
  return std::unique_ptr<RedisLikeCache>(new RedisLikeCache(std::move(client), options));
}

Status RedisLikeCache::Run(std::vector<std::vector<std::string>> commands) {
  if (commands.empty()) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(auto replies, redis_->Pipeline(std::move(commands)));
  for (auto& r : replies) {
    if (!r.ok()) return r.status();
  }
  return Status::Ok();
}

Status RedisLikeCache::GetCounts(std::string_view ns, std::span<const std::string> entities,
                                 std::vector<std::optional<CachedCounts>>* out) {
  out->assign(entities.size(), std::nullopt);
  if (entities.empty()) return Status::Ok();
  std::vector<std::vector<std::string>> commands;
  commands.reserve(entities.size());
  for (const std::string& e : entities) commands.push_back(GetCountCommand(ns, e));
  CHORUS_ASSIGN_OR_RETURN(auto replies, redis_->Pipeline(std::move(commands)));
  for (size_t i = 0; i < entities.size(); ++i) {
    if (!replies[i].ok()) return replies[i].status();
    if (!replies[i]->is_string()) continue;
    auto f = Fields(replies[i]->str, 3);
    CachedCounts c;
    if (f.size() == 3 && Parse(f[0], &c.counts.likes) && Parse(f[1], &c.counts.dislikes) &&
        Parse(f[2], &c.seq)) {
      (*out)[i] = c;
    }
  }
  return Status::Ok();
}

Status RedisLikeCache::PutCounts(std::string_view ns, std::span<const std::string> entities,
                                 std::span<const Counts> counts, uint64_t seq) {
  const std::string ttl =
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options_.ttl).count());
  std::vector<std::vector<std::string>> commands;
  for (size_t i = 0; i < entities.size(); ++i) {
    commands.push_back(SetCountCommand(ns, entities[i], counts[i], seq, ttl));
  }
  return Run(std::move(commands));
}

Status RedisLikeCache::GetRecords(std::string_view ns, std::string_view user,
                                  std::span<const std::string> entities,
                                  std::vector<std::optional<std::optional<Record>>>* out) {
  out->assign(entities.size(), std::nullopt);
  if (entities.empty()) return Status::Ok();
  std::vector<std::string> args = {"HMGET", StateKey(ns, user)};
  args.insert(args.end(), entities.begin(), entities.end());
  CHORUS_ASSIGN_OR_RETURN(redis::RedisReply reply, redis_->Command(std::move(args)));
  if (!reply.is_array() || reply.elements.size() != entities.size()) {
    return Internal("likes redis cache: unexpected HMGET reply " + reply.DebugString());
  }
  for (size_t i = 0; i < entities.size(); ++i) {
    const redis::RedisReply& e = reply.elements[i];
    if (!e.is_string()) continue;
    auto f = Fields(e.str, 4);
    int state = 0;
    Record r;
    uint64_t seq = 0;
    if (f.size() != 4 || !Parse(f[0], &state) || state < 0 || state > 2 || !Parse(f[1], &r.time_ms) ||
        !Parse(f[2], &seq)) {
      continue;  // unreadable: a miss
    }
    r.state = static_cast<LikeState>(state);
    r.owner = std::string(f[3]);
    (*out)[i] = r.state == LikeState::kNone ? std::optional<Record>() : std::optional<Record>(std::move(r));
  }
  return Status::Ok();
}

Status RedisLikeCache::PutRecords(std::string_view ns, std::string_view user,
                                  std::span<const std::string> entities,
                                  std::span<const std::optional<Record>> records, uint64_t seq) {
  if (entities.empty()) return Status::Ok();
  std::vector<std::string> args = {
      "EVAL",
      kSetRecords,
      "1",
      StateKey(ns, user),
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options_.ttl).count()),
      std::to_string(seq)};
  for (size_t i = 0; i < entities.size(); ++i) {
    args.push_back(entities[i]);
    args.push_back(RecordValue(records[i], seq));
  }
  return Run({std::move(args)});
}

std::string RedisLikeCache::BucketKey(std::string_view ns, std::string_view entity) const {
  return "counts:" + std::string(ns) + ":" + std::to_string(Fnv1a(entity) % options_.count_buckets);
}

std::vector<std::string> RedisLikeCache::GetCountCommand(std::string_view ns, std::string_view entity) const {
  if (options_.count_buckets == 0) return {"GET", CountsKey(ns, entity)};
  return {"HGET", BucketKey(ns, entity), std::string(entity)};
}

std::vector<std::string> RedisLikeCache::SetCountCommand(std::string_view ns, std::string_view entity,
                                                         const Counts& counts, uint64_t seq,
                                                         const std::string& ttl) const {
  std::string value = std::to_string(counts.likes) + "," + std::to_string(counts.dislikes);
  if (options_.count_buckets == 0) {
    return {"EVAL", kSetCounts, "1", CountsKey(ns, entity), std::move(value), std::to_string(seq), ttl};
  }
  return {"EVAL",           kSetCountField,     "1", BucketKey(ns, entity), ttl, std::string(entity),
          std::move(value), std::to_string(seq)};
}

std::vector<std::string> RedisLikeCache::DelCountCommand(std::string_view ns, std::string_view entity) const {
  if (options_.count_buckets == 0) return {"DEL", CountsKey(ns, entity)};
  return {"HDEL", BucketKey(ns, entity), std::string(entity)};
}

size_t RedisLikeCache::ListMax(std::string_view ns) const {
  auto it = options_.list_max.find(ns);
  return it == options_.list_max.end() ? 0 : it->second;
}

Status RedisLikeCache::GetUserLikes(std::string_view ns, std::string_view user, size_t limit,
                                    std::optional<ListPage>* out) {
  out->reset();
  if (ListMax(ns) == 0 || limit == 0) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(
      auto replies,
      redis_->Pipeline({{"GET", ListStateKey(ns, user)},
                        {"ZREVRANGE", ListKey(ns, user), "0", std::to_string(limit - 1), "WITHSCORES"},
                        {"ZCARD", ListKey(ns, user)}}));
  for (auto& r : replies) {
    if (!r.ok()) return r.status();
  }
  if (!replies[0]->is_string()) return Status::Ok();  // not cached
  auto state = Fields(replies[0]->str, 2);
  const bool capped = state.size() == 2 && state[1] == "1";
  ListPage page;
  const auto& items = replies[1]->elements;
  for (size_t i = 0; i + 1 < items.size(); i += 2) {
    int64_t time_ms = 0;
    if (!Parse(items[i + 1].str, &time_ms)) return Status::Ok();  // unreadable: a miss
    page.items.push_back({items[i].str, time_ms});
  }
  const size_t cached = static_cast<size_t>(replies[2]->integer);
  // More exist after this page: in the cache (a full page and more cached) or only in the DB.
  if (!page.items.empty() && (cached > page.items.size() || capped)) {
    page.next_cursor = SqlLikeStore::ListCursor(page.items.back().time_ms, page.items.back().id);
  }
  *out = std::move(page);
  return Status::Ok();
}

Status RedisLikeCache::PutUserLikes(std::string_view ns, std::string_view user,
                                    const std::vector<ListItem>& newest, bool capped, uint64_t seq) {
  const size_t max = ListMax(ns);
  if (max == 0) return Status::Ok();
  capped = capped || newest.size() > max;
  std::vector<std::string> args = {
      "EVAL",
      kPutList,
      "2",
      ListKey(ns, user),
      ListStateKey(ns, user),
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options_.ttl).count()),
      std::to_string(seq),
      capped ? "1" : "0"};
  for (size_t i = 0; i < newest.size() && i < max; ++i) {
    args.push_back(std::to_string(newest[i].time_ms));
    args.push_back(newest[i].id);
  }
  return Run({std::move(args)});
}

Status RedisLikeCache::Refresh(std::string_view stream, const ApplyOutcome& outcome, uint64_t seq) {
  const std::string ttl =
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options_.ttl).count());
  std::vector<std::vector<std::string>> commands;
  for (const EntityCounts& c : outcome.counts) {
    commands.push_back(SetCountCommand(c.ns, c.entity, c.counts, seq, ttl));
  }
  // Records grouped by user: one script per user's hash.
  std::map<std::pair<std::string_view, std::string_view>, std::vector<const RecordChange*>> by_user;
  for (const RecordChange& r : outcome.records) by_user[{r.ns, r.user}].push_back(&r);
  for (const auto& [key, changes] : by_user) {
    std::vector<std::string> args = {"EVAL", kSetRecords,        "1", StateKey(key.first, key.second),
                                     ttl,    std::to_string(seq)};
    for (const RecordChange* r : changes) {
      args.push_back(r->entity);
      args.push_back(RecordValue(Record{r->state, r->time_ms, r->owner}, seq));
    }
    commands.push_back(std::move(args));
    if (const size_t max = ListMax(key.first); max > 0) {
      std::vector<std::string> list = {"EVAL",
                                       kUpdateList,
                                       "2",
                                       ListKey(key.first, key.second),
                                       ListStateKey(key.first, key.second),
                                       ttl,
                                       std::to_string(seq),
                                       std::to_string(max)};
      for (const RecordChange* r : changes) {
        list.push_back(r->state == LikeState::kLiked ? "1" : "0");
        list.push_back(std::to_string(r->time_ms));
        list.push_back(r->entity);
      }
      commands.push_back(std::move(list));
    }
  }
  CHORUS_RETURN_IF_ERROR(Run(std::move(commands)));
  // After the values: a reader that sees this offset sees them.
  return Run({{"SET", "refreshed:" + std::string(stream), std::to_string(seq)}});
}

Result<uint64_t> RedisLikeCache::RefreshedThrough(std::string_view stream) {
  CHORUS_ASSIGN_OR_RETURN(redis::RedisReply reply,
                          redis_->Command({"GET", "refreshed:" + std::string(stream)}));
  uint64_t seq = 0;
  if (reply.is_string() && !Parse(reply.str, &seq))
    return Internal("likes redis cache: bad refreshed offset");
  return seq;
}

Status RedisLikeCache::Invalidate(std::span<const LogEntry> entries) {
  std::vector<std::vector<std::string>> commands;
  for (const LogEntry& e : entries) {
    commands.push_back(DelCountCommand(e.ns, e.entity));
    commands.push_back({"HDEL", StateKey(e.ns, e.user), e.entity});
    commands.push_back({"DEL", ListKey(e.ns, e.user), ListStateKey(e.ns, e.user)});
  }
  return Run(std::move(commands));
}

}  // namespace chorus::likes
