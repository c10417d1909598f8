// The likes.* configuration keys and their translation into LikesOptions.
#include <nlohmann/json.hpp>

#include "likes/likes_service.h"

namespace chorus::likes {
namespace {

constexpr const char* kDefaultBusinesses = R"({
  "video":   {"name": "Videos",     "dislikes": true,  "user_list_max": 1000, "namespace": "v"},
  "comment": {"name": "Comments",   "dislikes": true,  "user_list_max": 1000, "namespace": "c"},
  "live":    {"name": "Live rooms", "dislikes": false, "user_list_max": 1000, "namespace": "l"}
})";

Result<RateLimit> ParseRate(const nlohmann::json& j, const std::string& key, RateLimit fallback) {
  if (!j.is_object()) return InvalidArgument(key + " must be {per_second, burst}");
  RateLimit r = fallback;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it->is_number()) return InvalidArgument(key + "." + it.key() + " must be a number");
    if (it.key() == "per_second") {
      r.per_second = it->get<double>();
    } else if (it.key() == "burst") {
      r.burst = it->get<double>();
    } else {
      return InvalidArgument("unknown key " + key + "." + it.key() + " (per_second, burst)");
    }
  }
  if (r.per_second > 0 && !j.contains("burst")) r.burst = std::max(1.0, r.per_second * 2);
  return r;
}

}  // namespace

void AddConfigKeys(ConfigSchema& s) {
  s.Tree("likes.businesses", kDefaultBusinesses,
         "Onboarded businesses: {id: {name, dislikes, user_list_max, namespace, user_rate: {per_second, burst}, "
         "ip_rate: {per_second, burst}}}. Namespaces must be distinct; changing one orphans its data.")
      .Duration("likes.flush_interval", "1s",
                "Apply window: acknowledged actions are aggregated and applied (counts merged) this often.")
      .Int("likes.apply_batch_max", 20000, "Most log entries one shard applies per window.", 1, 10'000'000)
      .Int("likes.apply_rate", 0, "Job stage rate limit: most entries applied per second (0 = no limit).", 0)
      .Int("likes.max_pending", 1'000'000,
           "Acknowledged but unapplied entries per shard beyond which writes answer 503.", 1)
      .Duration("likes.trim_interval", "10s", "How often users' like lists are trimmed to user_list_max.")
      .Int("likes.max_entities", 100, "Most entities per state or counts read.", 1, 10'000)
      .Int("likes.max_write_batch", 100, "Most actions per POST /v1/likes/batch.", 1, 10'000)
      .Int("likes.list_limit_default", 20, "List page size when the request gives none.", 1, 10'000)
      .Int("likes.list_limit_max", 100, "Largest list page.", 1, 10'000)
      .Bool("likes.rate_limits", true, "Enforce the per-user and per-address write rate limits.")
      .Int("likes.hot.threshold", 100, "Count reads of one entity per likes.hot.window that make it hot.", 1)
      .Duration("likes.hot.window", "1s", "Hot-key detection window.")
      .Int("likes.hot.top_k", 64, "Hot keys tracked per shard.", 1, 100'000)
      .Int("likes.cache.capacity", 10000, "Hot entities' counts cached per shard (W-TinyLFU).", 1, 10'000'000)
      .Duration("likes.cache.ttl", "2s", "How long a cached count may be served.")
      .Int("likes.io_threads", 16,
           "likes.engine=cluster: threads for the blocking Redis/database calls (reads, a write's record reads).", 1,
           1024)
      .Int("likes.block_cache_bytes", 64 << 20, "RocksDB block cache.", 1 << 20, 1LL << 40)
      // Scale-out (docs/scale-out.md): MariaDB/TiDB + NATS JetStream, `chorus likes job`.
      .String("likes.engine", "embedded",
              "embedded: RocksDB under data_dir/likes, applied in-process. cluster: actions go to NATS JetStream, "
              "`chorus likes job` applies them to MariaDB/TiDB (likes.mysql.*, likes.nats.*).",
              {"embedded", "cluster"})
      .String("likes.mysql.host", "127.0.0.1", "MariaDB/TiDB host (likes.engine=cluster).")
      .Int("likes.mysql.port", 3306, "MariaDB/TiDB port.", 1, 65535)
      .String("likes.mysql.user", "chorus", "Database user.")
      .String("likes.mysql.password", "", "Database password (prefer CHORUS_LIKES_MYSQL_PASSWORD).")
      .String("likes.mysql.database", "chorus_likes", "Database name ([A-Za-z0-9_]); created by `chorus likes migrate`.")
      .Int("likes.mysql.pool_size", 8, "Database connections per process.", 1, 1000)
      .StringList("likes.nats.urls", {"nats://127.0.0.1:4222"}, "NATS servers with JetStream enabled.")
      .String("likes.nats.stream", "LIKES", "JetStream stream carrying the actions (file storage).")
      .String("likes.nats.subject_prefix", "likes.log", "Actions are published on <prefix>.<namespace>.")
      .String("likes.nats.changes_subject", "likes.changes", "The job's notices of committed batches.")
      .Duration("likes.nats.max_age", "168h", "How long the stream keeps actions (applied or not).")
      .String("likes.node_id", "", "This process's name in message ids (default: hostname-pid); distinct per process.")
      .Bool("likes.sync_fallback", true,
            "When JetStream is unreachable, apply actions to the database synchronously instead of failing them.")
      .StringList("likes.redis.seeds", {},
                  "Redis cache of the cluster engine (host:port; several with likes.redis.cluster). Empty: no cache.")
      .Bool("likes.redis.cluster", false, "likes.redis.seeds are Redis Cluster nodes (slot routing, MOVED/ASK).")
      .String("likes.redis.password", "", "Redis password (prefer CHORUS_LIKES_REDIS_PASSWORD).")
      .Duration("likes.redis.ttl", "10m", "Cached counts and states expire after this (bounds staleness).")
      .Double("likes.redis.db_read_rate", 2000, "Database reads/s per process while Redis is unreachable.", 0)
      .Int("likes.redis.count_buckets", 0,
           "0: one Redis key per entity's counts. N: N hashes per business holding the counts as fields "
           "(fewer keys; size N so each holds at most ~128 entities to keep the compact encoding).",
           0, 100'000'000)
      .Int("likes.redis.list_max", 128,
           "Newest likes cached per user list (at most the business's user_list_max; 128 keeps Redis's compact "
           "listpack encoding); older pages are read from the database. 0: lists not cached.",
           0, 1'000'000)
      .String("likes.job.durable", "likes-job", "The job's durable consumer name.")
      .Int("likes.job.batch_max", 5000, "Most actions the job applies in one transaction.", 1, 100000)
      .Duration("likes.job.window", "200ms", "Longest the job waits for a batch to fill.")
      .Duration("likes.job.ack_wait", "10s", "Redelivery delay of actions a dead job had fetched.")
      .Double("likes.job.rate", 0, "Most actions the job applies per second (protects the database); 0 = no limit.", 0);
}

Result<LikesOptions> OptionsFromConfig(const Config& c) {
  LikesOptions o;
  nlohmann::json businesses = nlohmann::json::parse(c.GetTreeJson("likes.businesses"), nullptr, false);
  if (!businesses.is_object() || businesses.empty()) {
    return InvalidArgument("likes.businesses must be a non-empty map of id: {...}");
  }
  for (auto it = businesses.begin(); it != businesses.end(); ++it) {
    const std::string key = "likes.businesses." + it.key();
    if (!it->is_object()) return InvalidArgument(key + " must be a map");
    Business b;
    b.id = it.key();
    b.name = it.key();
    b.ns = it.key();
    for (auto f = it->begin(); f != it->end(); ++f) {
      const std::string fk = key + "." + f.key();
      if (f.key() == "name") {
        if (!f->is_string()) return InvalidArgument(fk + " must be a string");
        b.name = f->get<std::string>();
      } else if (f.key() == "dislikes") {
        if (!f->is_boolean()) return InvalidArgument(fk + " must be true or false");
        b.dislikes = f->get<bool>();
      } else if (f.key() == "user_list_max") {
        if (!f->is_number_integer() || f->get<int64_t>() < 1 || f->get<int64_t>() > 1'000'000) {
          return InvalidArgument(fk + " must be an integer 1..1000000");
        }
        b.user_list_max = static_cast<size_t>(f->get<int64_t>());
      } else if (f.key() == "namespace") {
        if (!f->is_string()) return InvalidArgument(fk + " must be a string");
        b.ns = f->get<std::string>();
      } else if (f.key() == "user_rate") {
        CHORUS_ASSIGN_OR_RETURN(b.user_rate, ParseRate(*f, fk, b.user_rate));
      } else if (f.key() == "ip_rate") {
        CHORUS_ASSIGN_OR_RETURN(b.ip_rate, ParseRate(*f, fk, b.ip_rate));
      } else {
        return InvalidArgument("unknown key " + fk + " (name, dislikes, user_list_max, namespace, user_rate, ip_rate)");
      }
    }
    if (Status s = ValidateBusiness(b); !s.ok()) return s.WithContext(key);
    o.businesses.push_back(std::move(b));
  }
  o.flush_interval = c.GetDuration("likes.flush_interval");
  if (o.flush_interval < std::chrono::milliseconds(1)) return InvalidArgument("likes.flush_interval must be >= 1ms");
  o.apply_batch_max = static_cast<size_t>(c.GetInt("likes.apply_batch_max"));
  o.apply_rate = static_cast<double>(c.GetInt("likes.apply_rate"));
  o.max_pending = static_cast<size_t>(c.GetInt("likes.max_pending"));
  o.trim_interval = c.GetDuration("likes.trim_interval");
  if (o.trim_interval < std::chrono::milliseconds(1)) return InvalidArgument("likes.trim_interval must be >= 1ms");
  o.max_entities = static_cast<size_t>(c.GetInt("likes.max_entities"));
  o.max_write_batch = static_cast<size_t>(c.GetInt("likes.max_write_batch"));
  o.list_limit_default = static_cast<size_t>(c.GetInt("likes.list_limit_default"));
  o.list_limit_max = static_cast<size_t>(c.GetInt("likes.list_limit_max"));
  if (o.list_limit_default > o.list_limit_max) {
    return InvalidArgument("likes.list_limit_default must not exceed likes.list_limit_max");
  }
  o.rate_limits = c.GetBool("likes.rate_limits");
  o.hot_threshold = static_cast<uint64_t>(c.GetInt("likes.hot.threshold"));
  o.hot_window = c.GetDuration("likes.hot.window");
  if (o.hot_window < std::chrono::milliseconds(10)) return InvalidArgument("likes.hot.window must be >= 10ms");
  o.hot_top_k = static_cast<size_t>(c.GetInt("likes.hot.top_k"));
  o.cache_capacity = static_cast<size_t>(c.GetInt("likes.cache.capacity"));
  o.cache_ttl = c.GetDuration("likes.cache.ttl");
  o.io_threads = static_cast<size_t>(c.GetInt("likes.io_threads"));
  if (o.cache_ttl <= Duration::zero()) return InvalidArgument("likes.cache.ttl must be > 0");
  return o;
}

}  // namespace chorus::likes
