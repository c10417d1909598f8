// ClusterLikeStore: the LikeStore of a likes service process in a fleet (docs/scale-out.md).
//
//   AppendLog  publishes every entry to the JetStream stream (subject <subject_prefix>.<ns>,
//              message id <node_id>.<boot>.<n> so a retried publish is stored once) and returns
//              once the stream acknowledged all of them: an acknowledged like is in the stream's
//              file store. Each entry's seq becomes its stream sequence.
//              JetStream unreachable (or a publish failing): when sync_fallback is on, the
//              entries not acknowledged are applied to the database synchronously (the seed's
//              fallback from the queue to RPC) and keep seq 0, "applied at once"; otherwise, or
//              when the database fails too, the append fails (the write answers 503).
//   Apply      never called: applies_elsewhere(). `chorus likes job` (job.h) applies the stream to
//              the database and advances job_offsets[stream]; AppliedThrough() is that offset,
//              learnt from the job's notices on `changes_subject` and, as a backstop, read from
//              the database every offset_poll.
//   Reads      records (states) and counts: the Redis cache (redis_cache.h) when configured,
//              refilled on a miss from one database snapshot with its job offset (so the value
//              carries the offset it is valid at, and GetCountsAsOf lets the service add exactly
//              the entries the value lacks). Redis unreachable: the database directly, at most
//              db_read_rate reads per second (beyond: kUnavailable, answered degraded). Lists
//              and received totals: the database.
//   PendingLog empty: what is not applied yet is in the stream, and the job applies it.
//
// Threads: every method is safe from any thread. AppendLog is called by the service's one
// committer thread; the offset poller is a thread of this object.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "base/clock.h"
#include "base/mutex.h"
#include "likes/like_store.h"
#include "likes/redis_cache.h"
#include "likes/sql_store.h"

namespace chorus::nats {
class NatsClient;
class Subscription;
}  // namespace chorus::nats

namespace chorus::likes {

struct ClusterStoreOptions {
  std::string stream = "LIKES";
  std::string subject_prefix = "likes.log";       // entries go to <prefix>.<namespace>
  std::string changes_subject = "likes.changes";  // the job's notices (job.h)
  std::string node_id;                            // message id prefix; distinct per process
  bool sync_fallback = true;
  Duration offset_poll = std::chrono::seconds(1);
  std::shared_ptr<RedisLikeCache> cache;  // null: reads go to the database
  double db_read_rate = 2000;             // database reads/s while the cache is down
};

class ClusterLikeStore final : public LikeStore {
 public:
  // Subscribes to the job's notices and starts the offset poller. `nats` may be disconnected
  // (it reconnects in the background).
  static Result<std::unique_ptr<ClusterLikeStore>> Create(std::shared_ptr<SqlLikeStore> db,
                                                          std::shared_ptr<nats::NatsClient> nats,
                                                          ClusterStoreOptions options);
  ~ClusterLikeStore() override;

  std::string_view name() const override { return "cluster"; }
  Status AppendLog(std::span<LogEntry> entries) override;
  Status Apply(std::span<const LogEntry> entries) override;
  Result<std::vector<LogEntry>> PendingLog() override;
  Status GetRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                    std::vector<std::optional<Record>>* out) override;
  Status GetRecordsForUpdate(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                             std::vector<std::optional<Record>>* out) override;
  Status GetCounts(std::string_view ns, std::span<const std::string> entities,
                   std::vector<Counts>* out) override;
  Result<int64_t> GetReceived(std::string_view ns, std::string_view owner) override;
  Result<ListPage> UserLikes(std::string_view ns, std::string_view user, std::string_view cursor,
                             size_t limit) override;
  Result<ListPage> Likers(std::string_view ns, std::string_view entity, std::string_view cursor,
                          size_t limit) override;
  Status TrimUserLists(std::string_view ns, std::span<const std::string> users, size_t keep) override;
  Result<VerifyReport> Verify(bool repair) override;

  bool applies_elsewhere() const override { return true; }
  uint64_t AppliedThrough() override { return applied_through_.load(std::memory_order_acquire); }
  Status GetCountsAsOf(std::string_view ns, std::span<const std::string> entities, std::vector<Counts>* out,
                       std::vector<uint64_t>* as_of) override;

  // For metrics and /readyz.
  struct Health {
    bool queue_connected = false;
    bool falling_back = false;  // the last append went (partly) to the database directly
    uint64_t applied_through = 0;
    uint64_t last_appended = 0;  // highest stream seq this process appended
    uint64_t sync_applied = 0;   // entries applied synchronously since start
    bool cache_configured = false;
    bool cache_ok = true;  // the last cache call succeeded
    uint64_t cache_hits = 0, cache_misses = 0, db_fallback_reads = 0, db_fallback_refused = 0;
    std::string last_error;
  };
  Health health() const;

 private:
  ClusterLikeStore(std::shared_ptr<SqlLikeStore> db, std::shared_ptr<nats::NatsClient> nats,
                   ClusterStoreOptions options);
  void Advance(uint64_t through);
  void AdvanceFromDatabase(uint64_t offset);  // only without a cache (see PolledOffset)
  Result<uint64_t> PolledOffset();
  void PollOffsets();
  // The cache failed: may this read go to the database? (token bucket, db_read_rate)
  bool AdmitDatabaseRead(const Status& cache_error);

  std::shared_ptr<SqlLikeStore> db_;
  std::shared_ptr<nats::NatsClient> nats_;
  const ClusterStoreOptions options_;
  const std::string id_prefix_;  // node_id.boot.
  uint64_t next_msg_ = 1;        // committer thread only
  std::atomic<uint64_t> applied_through_{0};
  std::atomic<uint64_t> last_appended_{0};
  std::atomic<uint64_t> sync_applied_{0};
  std::atomic<bool> falling_back_{false};
  std::atomic<bool> cache_ok_{true};
  std::atomic<uint64_t> cache_hits_{0}, cache_misses_{0}, db_fallback_reads_{0}, db_fallback_refused_{0};
  double read_tokens_ GUARDED_BY(mu_) = 0;
  SteadyTime read_refill_ GUARDED_BY(mu_){};
  mutable Mutex mu_;
  std::string last_error_ GUARDED_BY(mu_);
  CondVar stop_cv_;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::unique_ptr<nats::Subscription> notices_;
  std::thread poller_;
};

// The job's notice once readers' copy (the database, or the cache when there is one) holds the
// stream through N, on ClusterStoreOptions::changes_subject: {"stream": "...", "through": N}.
std::string EncodeAppliedNotice(std::string_view stream, uint64_t through);
// The `through` of a notice for `stream`; 0 when it is about another stream or malformed.
uint64_t DecodeAppliedThrough(std::string_view stream, std::string_view notice);

}  // namespace chorus::likes
