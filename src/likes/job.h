// LikesJob: `chorus likes job`, the one process that applies the likes stream to the database
// (docs/scale-out.md "likes as a fleet").
//
// Data flow: a durable pull consumer on the JetStream stream fetches up to batch_max entries,
// waiting at most `window`; the contiguous run of stream sequences after the database's offset
// (job_offsets[stream]) goes to SqlLikeStore::ApplyBatch in ONE transaction that also moves the
// offset to the run's last sequence; then a notice goes out on changes_subject (the services
// learn how far the database is, and caches refresh from the committed counts) and the run's
// messages are acked.
//
// Why this is exactly-once and in order:
//   - the offset commits with the rows, so after any crash a sequence at or below it is acked
//     and skipped, never applied twice;
//   - only a contiguous run after the offset is applied. Messages fetched beyond a gap (the gap
//     was delivered to a job that died and is redelivered after ack_wait) are held until the gap
//     arrives, so a user's actions apply in stream order however deliveries interleave;
//   - a batch that fails (database down) is retried from memory, never nak'ed, so no later
//     batch can overtake it; InProgress keeps its messages from being redelivered meanwhile.
// A sequence below the stream's first (removed by max_age before it was applied) is reported
// as lost in the log and the metrics, and skipped.
//
// Threads: Start() starts one worker thread; stats() may be read from any thread.
#pragma once

#include <atomic>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"

namespace chorus::nats {
class NatsClient;
}

namespace chorus::likes {

class SqlLikeStore;
class RedisLikeCache;
struct ApplyOutcome;

struct JobOptions {
  std::string stream = "LIKES";
  std::string subject_prefix = "likes.log";
  std::string durable = "likes-job";
  std::string changes_subject = "likes.changes";
  size_t batch_max = 5000;                               // entries per transaction
  Duration window = std::chrono::milliseconds(200);      // longest wait for a batch to fill
  Duration ack_wait = std::chrono::seconds(10);          // redelivery after a job died
  Duration stream_max_age = std::chrono::hours(24 * 7);  // how long the stream keeps entries
  Duration retry = std::chrono::milliseconds(500);       // backoff after an engine failed
  double rate = 0;  // most entries applied per second (protects the database); 0 = no limit
  // The services' shared cache, refreshed from every committed batch (null: none). Refreshes
  // that fail (Redis down) are kept, up to cache_backlog_max changes, and retried before the
  // next batch; beyond that the oldest are dropped (the cache's TTL bounds their staleness).
  std::shared_ptr<RedisLikeCache> cache;
  size_t cache_backlog_max = 200000;
};

// The stream the services publish to and the job consumes; both sides ensure it exists.
Status EnsureLikesStream(nats::NatsClient& nats, const std::string& stream, const std::string& subject_prefix,
                         Duration max_age);

class LikesJob {
 public:
  static Result<std::unique_ptr<LikesJob>> Create(std::shared_ptr<SqlLikeStore> db,
                                                  std::shared_ptr<nats::NatsClient> nats, JobOptions options);
  ~LikesJob();  // Stop()

  // Starts the worker thread. It waits for the engines itself (a down engine is retried).
  void Start();
  // Finishes the batch in hand if the database answers within one retry, then joins. Idempotent.
  void Stop();

  struct Stats {
    uint64_t applied = 0;      // entries applied
    uint64_t batches = 0;      // transactions committed
    uint64_t duplicates = 0;   // redelivered entries already applied (acked, skipped)
    uint64_t corrupt = 0;      // undecodable messages (acked, skipped)
    uint64_t lost = 0;         // sequences removed from the stream before being applied
    uint64_t failures = 0;     // failed attempts (database or stream)
    uint64_t through = 0;      // the database's offset
    uint64_t stream_last = 0;  // the stream's last sequence at the last check
    bool database_ok = false;
    bool queue_ok = false;
    bool cache_ok = true;
    uint64_t cache_refreshed_through = 0;  // stream seq of the newest batch the cache has
    uint64_t cache_backlog = 0;            // changes waiting for the cache (Redis down)
    uint64_t cache_dropped = 0;            // changes dropped from a full backlog
    double cache_lag_seconds = 0;          // age of the oldest change waiting for the cache
    std::string last_error;
  };
  Stats stats() const;

 private:
  LikesJob(std::shared_ptr<SqlLikeStore> db, std::shared_ptr<nats::NatsClient> nats, JobOptions options);
  void Run();
  void Fail(const std::string& what, const Status& s, bool database);
  bool SleepUnlessStopping(Duration d);
  // Refreshes the cache with the backlog, then `outcome` (committed at `seq`); true when the
  // cache holds everything committed (or there is no cache).
  bool RefreshCache(std::optional<ApplyOutcome> outcome, uint64_t seq);

  std::shared_ptr<SqlLikeStore> db_;
  std::shared_ptr<nats::NatsClient> nats_;
  const JobOptions options_;
  mutable Mutex mu_;
  CondVar cv_;
  bool stopping_ GUARDED_BY(mu_) = false;
  Stats stats_ GUARDED_BY(mu_);
  std::thread thread_;
  struct Pending;
  std::deque<Pending> backlog_;  // worker thread only
  size_t backlog_items_ = 0;
};

}  // namespace chorus::likes
