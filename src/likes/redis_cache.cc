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
  for (const std::string& e : entities) commands.push_back({"GET", CountsKey(ns, e)});
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
    commands.push_back({"EVAL", kSetCounts, "1", CountsKey(ns, entities[i]),
                        std::to_string(counts[i].likes) + "," + std::to_string(counts[i].dislikes),
                        std::to_string(seq), ttl});
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

Status RedisLikeCache::Refresh(std::string_view stream, const ApplyOutcome& outcome, uint64_t seq) {
  const std::string ttl =
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(options_.ttl).count());
  std::vector<std::vector<std::string>> commands;
  for (const EntityCounts& c : outcome.counts) {
    commands.push_back({"EVAL", kSetCounts, "1", CountsKey(c.ns, c.entity),
                        std::to_string(c.counts.likes) + "," + std::to_string(c.counts.dislikes),
                        std::to_string(seq), ttl});
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
  }
  CHORUS_RETURN_IF_ERROR(Run(std::move(commands)));
  // After the values: a reader that sees this offset sees them.
  return Run({{"SET", "refreshed:" + std::string(stream), std::to_string(seq)}});
}

Result<uint64_t> RedisLikeCache::RefreshedThrough(std::string_view stream) {
  CHORUS_ASSIGN_OR_RETURN(redis::RedisReply reply, redis_->Command({"GET", "refreshed:" + std::string(stream)}));
  uint64_t seq = 0;
  if (reply.is_string() && !Parse(reply.str, &seq)) return Internal("likes redis cache: bad refreshed offset");
  return seq;
}

Status RedisLikeCache::Invalidate(std::span<const LogEntry> entries) {
  std::vector<std::vector<std::string>> commands;
  for (const LogEntry& e : entries) {
    commands.push_back({"DEL", CountsKey(e.ns, e.entity)});
    commands.push_back({"HDEL", StateKey(e.ns, e.user), e.entity});
  }
  return Run(std::move(commands));
}

}  // namespace chorus::likes
