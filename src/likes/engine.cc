#include "likes/engine.h"

#include <unistd.h>

#include <filesystem>

#include "base/logging.h"
#include "likes/cluster_store.h"
#include "likes/job.h"
#include "likes/likes_service.h"
#include "likes/redis_cache.h"
#include "likes/rocksdb_store.h"
#include "likes/sql_store.h"
#include "nats/nats_client.h"

namespace chorus::likes {
namespace {

bool Cluster(const Config& c) { return c.GetString("likes.engine") == "cluster"; }

sql::MySqlOptions MySqlFromConfig(const Config& c) {
  sql::MySqlOptions o;
  o.host = c.GetString("likes.mysql.host");
  o.port = static_cast<int>(c.GetInt("likes.mysql.port"));
  o.user = c.GetString("likes.mysql.user");
  o.password = c.GetString("likes.mysql.password");
  o.database = c.GetString("likes.mysql.database");
  o.pool_size = static_cast<size_t>(c.GetInt("likes.mysql.pool_size"));
  return o;
}

std::string NodeId(const Config& c) {
  std::string id = c.GetString("likes.node_id");
  if (!id.empty()) return id;
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "host");
  id = std::string(host) + "-" + std::to_string(getpid());
  for (char& ch : id) {
    if (!(isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_')) ch = '-';
  }
  return id;
}

Result<std::shared_ptr<nats::NatsClient>> ConnectNats(const Config& c, const std::string& name) {
  nats::NatsOptions o;
  o.urls = c.GetStringList("likes.nats.urls");
  o.name = name;
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<nats::NatsClient> client, nats::NatsClient::Connect(o));
  return std::shared_ptr<nats::NatsClient>(std::move(client));
}

// The Redis cache likes.redis.* configures, or null.
Result<std::shared_ptr<RedisLikeCache>> CacheFromConfig(const Config& c) {
  const auto& seeds = c.GetStringList("likes.redis.seeds");
  if (seeds.empty()) return std::shared_ptr<RedisLikeCache>();
  RedisLikeCache::Options o;
  o.seeds = seeds;
  o.cluster = c.GetBool("likes.redis.cluster");
  o.password = c.GetString("likes.redis.password");
  o.ttl = c.GetDuration("likes.redis.ttl");
  // Users' like lists are cached up to each business's user_list_max.
  auto businesses = OptionsFromConfig(c);
  if (!businesses.ok()) return businesses.status();
  o.count_buckets = static_cast<size_t>(c.GetInt("likes.redis.count_buckets"));
  const auto cap = static_cast<size_t>(c.GetInt("likes.redis.list_max"));
  for (const Business& b : businesses->businesses) {
    if (cap > 0) o.list_max[b.ns] = std::min(cap, b.user_list_max);
  }
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<RedisLikeCache> cache, RedisLikeCache::Create(o));
  return std::shared_ptr<RedisLikeCache>(std::move(cache));
}

void AddGauge(std::vector<CallbackHandle>& out, std::string_view name, std::string_view help,
              std::function<double()> fn) {
  if (auto h = DefaultMetrics().GaugeCallback(name, help, std::move(fn)); h.ok())
    out.push_back(std::move(*h));
}

}  // namespace

LikesJobProcess::LikesJobProcess() = default;
LikesJobProcess::~LikesJobProcess() = default;
LikesJobProcess::LikesJobProcess(LikesJobProcess&&) noexcept = default;
LikesJobProcess& LikesJobProcess::operator=(LikesJobProcess&&) noexcept = default;

Status MigrateLikes(const Config& config) { return SqlLikeStore::Migrate(MySqlFromConfig(config)); }

Result<LikesEngine> OpenLikesEngine(const Config& config) {
  LikesEngine engine;
  if (!Cluster(config)) {
    RocksDbOptions db;
    db.path = std::filesystem::path(config.GetString("data_dir")) / "likes";
    db.block_cache_bytes = static_cast<size_t>(config.GetInt("likes.block_cache_bytes"));
    CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbLikeStore> store, RocksDbLikeStore::Open(db));
    engine.store = std::move(store);
    engine.health = [] { return EngineHealth{true, "store=rocksdb"}; };
    return engine;
  }
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<SqlLikeStore> opened, SqlLikeStore::Open(MySqlFromConfig(config)));
  std::shared_ptr<SqlLikeStore> db = std::move(opened);
  const std::string node = NodeId(config);
  CHORUS_ASSIGN_OR_RETURN(std::shared_ptr<nats::NatsClient> nats,
                          ConnectNats(config, "chorus-likes-" + node));
  const std::string stream = config.GetString("likes.nats.stream");
  const std::string prefix = config.GetString("likes.nats.subject_prefix");
  // The job creates the stream too; whoever starts first does. Not reachable now: the service
  // falls back to the database until it is (sync_fallback).
  if (Status s = EnsureLikesStream(*nats, stream, prefix, config.GetDuration("likes.nats.max_age"));
      !s.ok()) {
    GetLogger("likes")->warn("likes: JetStream stream {} not ensured yet: {}", stream, s.ToString());
  }
  ClusterStoreOptions o;
  o.stream = stream;
  o.subject_prefix = prefix;
  o.changes_subject = config.GetString("likes.nats.changes_subject");
  o.node_id = node;
  o.sync_fallback = config.GetBool("likes.sync_fallback");
  CHORUS_ASSIGN_OR_RETURN(o.cache, CacheFromConfig(config));
  o.db_read_rate = config.GetDouble("likes.redis.db_read_rate");
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<ClusterLikeStore> created, ClusterLikeStore::Create(db, nats, o));
  std::shared_ptr<ClusterLikeStore> store = std::move(created);
  engine.store = store;
  engine.keep_alive = nats;
  ClusterLikeStore* s = store.get();
  engine.health = [s] {
    const ClusterLikeStore::Health h = s->health();
    EngineHealth out;
    out.detail = "store=cluster, queue=" + std::string(h.queue_connected ? "jetstream" : "down") +
                 (h.falling_back ? ", writes=sync-fallback" : "") +
                 (h.cache_configured ? std::string(", cache=") + (h.cache_ok ? "redis" : "down") : "") +
                 ", applied_through=" + std::to_string(h.applied_through) +
                 (h.last_error.empty() ? "" : ", last_error=" + h.last_error);
    return out;
  };
  AddGauge(engine.metrics, "chorus_likes_queue_connected", "1 while the JetStream queue is connected",
           [s] { return s->health().queue_connected ? 1.0 : 0.0; });
  AddGauge(engine.metrics, "chorus_likes_sync_fallback",
           "1 while writes go to the database directly (queue down)",
           [s] { return s->health().falling_back ? 1.0 : 0.0; });
  AddGauge(engine.metrics, "chorus_likes_sync_applied",
           "Actions applied synchronously (queue down) since start",
           [s] { return static_cast<double>(s->health().sync_applied); });
  if (o.cache) {
    AddGauge(engine.metrics, "chorus_likes_redis_up", "1 while the Redis cache answers",
             [s] { return s->health().cache_ok ? 1.0 : 0.0; });
    AddGauge(engine.metrics, "chorus_likes_redis_hits", "Counts and states read from the Redis cache",
             [s] { return static_cast<double>(s->health().cache_hits); });
    AddGauge(engine.metrics, "chorus_likes_redis_misses", "Counts and states refilled from the database",
             [s] { return static_cast<double>(s->health().cache_misses); });
    AddGauge(engine.metrics, "chorus_likes_db_fallback_reads",
             "Database reads while Redis was down (rate-limited)",
             [s] { return static_cast<double>(s->health().db_fallback_reads); });
    AddGauge(engine.metrics, "chorus_likes_db_fallback_refused",
             "Reads refused while Redis was down (over likes.redis.db_read_rate)",
             [s] { return static_cast<double>(s->health().db_fallback_refused); });
  }
  AddGauge(engine.metrics, "chorus_likes_job_applied_through", "Stream sequence the job has applied through",
           [s] { return static_cast<double>(s->health().applied_through); });
  AddGauge(engine.metrics, "chorus_likes_queue_lag",
           "Actions this process appended that the job has not applied yet (stream sequences)", [s] {
             const auto h = s->health();
             return h.last_appended > h.applied_through
                        ? static_cast<double>(h.last_appended - h.applied_through)
                        : 0.0;
           });
  return engine;
}

Result<LikesJobProcess> OpenLikesJob(const Config& config) {
  if (!Cluster(config)) {
    return FailedPrecondition(
        "`chorus likes job` needs likes.engine=cluster (the embedded engine applies in-process)");
  }
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<SqlLikeStore> opened, SqlLikeStore::Open(MySqlFromConfig(config)));
  std::shared_ptr<SqlLikeStore> db = std::move(opened);
  CHORUS_ASSIGN_OR_RETURN(std::shared_ptr<nats::NatsClient> nats, ConnectNats(config, "chorus-likes-job"));
  JobOptions o;
  o.stream = config.GetString("likes.nats.stream");
  o.subject_prefix = config.GetString("likes.nats.subject_prefix");
  o.changes_subject = config.GetString("likes.nats.changes_subject");
  o.durable = config.GetString("likes.job.durable");
  o.batch_max = static_cast<size_t>(config.GetInt("likes.job.batch_max"));
  o.window = config.GetDuration("likes.job.window");
  o.ack_wait = config.GetDuration("likes.job.ack_wait");
  o.stream_max_age = config.GetDuration("likes.nats.max_age");
  o.rate = config.GetDouble("likes.job.rate");
  CHORUS_ASSIGN_OR_RETURN(o.cache, CacheFromConfig(config));
  LikesJobProcess p;
  CHORUS_ASSIGN_OR_RETURN(p.job, LikesJob::Create(db, nats, o));
  p.keep_alive = nats;
  LikesJob* job = p.job.get();
  p.health = [job] {
    const LikesJob::Stats st = job->stats();
    EngineHealth out;
    out.ready = st.database_ok && st.queue_ok;
    out.detail = std::string("database=") + (st.database_ok ? "up" : "down") +
                 ", queue=" + (st.queue_ok ? "up" : "down") + (st.cache_ok ? "" : ", cache=down") +
                 ", through=" + std::to_string(st.through) +
                 (st.last_error.empty() ? "" : ", last_error=" + st.last_error);
    return out;
  };
  AddGauge(p.metrics, "chorus_likes_job_through", "Stream sequence applied to the database",
           [job] { return static_cast<double>(job->stats().through); });
  AddGauge(p.metrics, "chorus_likes_job_lag", "Stream entries not applied yet (at the last batch)", [job] {
    const auto st = job->stats();
    return st.stream_last > st.through ? static_cast<double>(st.stream_last - st.through) : 0.0;
  });
  AddGauge(p.metrics, "chorus_likes_job_applied", "Actions the job applied",
           [job] { return static_cast<double>(job->stats().applied); });
  AddGauge(p.metrics, "chorus_likes_job_batches", "Transactions the job committed",
           [job] { return static_cast<double>(job->stats().batches); });
  AddGauge(p.metrics, "chorus_likes_job_failures", "Failed job attempts (database or queue), retried",
           [job] { return static_cast<double>(job->stats().failures); });
  AddGauge(p.metrics, "chorus_likes_job_duplicates", "Redelivered actions skipped as already applied",
           [job] { return static_cast<double>(job->stats().duplicates); });
  AddGauge(p.metrics, "chorus_likes_cache_lag_seconds",
           "Age of the oldest committed change not yet in the Redis cache (0 when none waits)",
           [job] { return job->stats().cache_lag_seconds; });
  AddGauge(p.metrics, "chorus_likes_cache_backlog", "Committed changes waiting for the Redis cache",
           [job] { return static_cast<double>(job->stats().cache_backlog); });
  AddGauge(p.metrics, "chorus_likes_cache_refreshed_through",
           "Stream sequence the Redis cache is refreshed through",
           [job] { return static_cast<double>(job->stats().cache_refreshed_through); });
  AddGauge(p.metrics, "chorus_likes_job_database_up", "1 while the job's database answers",
           [job] { return job->stats().database_ok ? 1.0 : 0.0; });
  return p;
}

Result<std::unique_ptr<LikeStore>> OpenLikesStoreForVerify(const Config& config, bool repair) {
  if (Cluster(config)) {
    CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<SqlLikeStore> db, SqlLikeStore::Open(MySqlFromConfig(config)));
    return std::unique_ptr<LikeStore>(std::move(db));
  }
  const std::filesystem::path path = std::filesystem::path(config.GetString("data_dir")) / "likes";
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) {
    return InvalidArgument("no likes store at " + path.string());
  }
  RocksDbOptions options;
  options.path = path;
  // Report-only opens read-only, so it also runs beside a serving chorus; a repair needs the
  // store to itself.
  options.read_only = !repair;
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<RocksDbLikeStore> store, RocksDbLikeStore::Open(options));
  return std::unique_ptr<LikeStore>(std::move(store));
}

}  // namespace chorus::likes
