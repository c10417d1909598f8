#include "likes/job.h"

#include <algorithm>
#include <map>
#include <vector>

#include "base/logging.h"
#include "likes/cluster_store.h"
#include "likes/redis_cache.h"
#include "likes/sql_store.h"
#include "nats/nats_client.h"

namespace chorus::likes {

Status EnsureLikesStream(nats::NatsClient& nats, const std::string& stream, const std::string& subject_prefix,
                         Duration max_age) {
  nats::StreamConfig config;
  config.name = stream;
  config.subjects = {subject_prefix + ".>"};
  config.file_storage = true;
  config.max_age = std::chrono::duration_cast<std::chrono::milliseconds>(max_age);
  return nats.EnsureStream(config);
}

struct LikesJob::Pending {
  ApplyOutcome outcome;
  uint64_t seq = 0;
  SteadyTime since;
  size_t items() const { return outcome.counts.size() + outcome.records.size(); }
};

bool LikesJob::RefreshCache(std::optional<ApplyOutcome> outcome, uint64_t seq) {
  if (!options_.cache) return true;
  if (outcome) {
    backlog_.push_back(Pending{std::move(*outcome), seq, std::chrono::steady_clock::now()});
    backlog_items_ += backlog_.back().items();
  }
  uint64_t dropped = 0;
  while (backlog_items_ > options_.cache_backlog_max && backlog_.size() > 1) {
    backlog_items_ -= backlog_.front().items();
    dropped += backlog_.front().items();
    backlog_.pop_front();
  }
  Status status;
  uint64_t refreshed = 0;
  while (!backlog_.empty()) {
    status = options_.cache->Refresh(options_.stream, backlog_.front().outcome, backlog_.front().seq);
    if (!status.ok()) break;
    refreshed = backlog_.front().seq;
    backlog_items_ -= backlog_.front().items();
    backlog_.pop_front();
  }
  MutexLock lock(mu_);
  stats_.cache_dropped += dropped;
  if (refreshed) stats_.cache_refreshed_through = refreshed;
  stats_.cache_backlog = backlog_items_;
  stats_.cache_lag_seconds =
      backlog_.empty()
          ? 0
          : std::chrono::duration<double>(std::chrono::steady_clock::now() - backlog_.front().since).count();
  const bool was_ok = stats_.cache_ok;
  stats_.cache_ok = status.ok();
  if (!status.ok() && was_ok) {
    stats_.last_error = "refreshing the cache: " + status.ToString();
    GetLogger("likes")->warn("likes job: cache refresh failed, {} changes kept for retry: {}", backlog_items_,
                             status.ToString());
  }
  if (refreshed) {
    // The backlog just caught up: tell the services how far the cache now is.
    (void)nats_->Publish(options_.changes_subject, EncodeAppliedNotice(options_.stream, refreshed));
  }
  return status.ok();
}

LikesJob::LikesJob(std::shared_ptr<SqlLikeStore> db, std::shared_ptr<nats::NatsClient> nats,
                   JobOptions options)
    : db_(std::move(db)), nats_(std::move(nats)), options_(std::move(options)) {}

Result<std::unique_ptr<LikesJob>> LikesJob::Create(std::shared_ptr<SqlLikeStore> db,
                                                   std::shared_ptr<nats::NatsClient> nats,
                                                   JobOptions options) {
  if (!db || !nats) return InvalidArgument("likes job: needs a database and a NATS client");
  if (options.batch_max == 0) return InvalidArgument("likes job: batch_max must be at least 1");
  if (options.durable.empty() || options.durable.find('.') != std::string::npos) {
    return InvalidArgument("likes job: the durable consumer name must be non-empty without '.'");
  }
  return std::unique_ptr<LikesJob>(new LikesJob(std::move(db), std::move(nats), std::move(options)));
}

LikesJob::~LikesJob() { Stop(); }

void LikesJob::Start() {
  MutexLock lock(mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this] { Run(); });
}

void LikesJob::Stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  if (thread_.joinable()) thread_.join();
}

LikesJob::Stats LikesJob::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

bool LikesJob::SleepUnlessStopping(Duration d) {
  MutexLock lock(mu_);
  return !cv_.WaitFor(mu_, d, [this]() REQUIRES(mu_) { return stopping_; });
}

void LikesJob::Fail(const std::string& what, const Status& s, bool database) {
  const std::string message = what + ": " + s.ToString();
  bool first = false;
  {
    MutexLock lock(mu_);
    ++stats_.failures;
    first = (database ? stats_.database_ok : stats_.queue_ok) || stats_.last_error != message;
    (database ? stats_.database_ok : stats_.queue_ok) = false;
    stats_.last_error = message;
  }
  if (first)
    GetLogger("likes")->warn("likes job: {} (retrying every {} ms)", message,
                             std::chrono::duration_cast<std::chrono::milliseconds>(options_.retry).count());
}

void LikesJob::Run() {
  auto log = GetLogger("likes");
  // 1. The offset: everything at or below it is in the database.
  uint64_t through = 0;
  while (true) {
    auto offset = db_->AppliedThrough(options_.stream);
    if (offset.ok()) {
      through = *offset;
      MutexLock lock(mu_);
      stats_.through = through;
      stats_.database_ok = true;
      break;
    }
    Fail("reading the offset", offset.status(), true);
    if (!SleepUnlessStopping(options_.retry)) return;
  }
  log->info("likes job: stream {} applied through {}", options_.stream, through);

  std::unique_ptr<nats::PullConsumer> consumer;
  std::map<uint64_t, nats::JsMessage> held;  // fetched, after `through`, not yet contiguous
  auto stopping = [this] {
    MutexLock lock(mu_);
    return stopping_;
  };
  SteadyTime next_batch = std::chrono::steady_clock::now();  // likes.job.rate
  // With a rate, batches of a tenth of a second's worth, so the rate holds over short spans too.
  const size_t batch_max =
      options_.rate > 0 ? std::clamp<size_t>(static_cast<size_t>(options_.rate / 10), 1, options_.batch_max)
                        : options_.batch_max;
  while (!stopping()) {
    if (options_.rate > 0 && std::chrono::steady_clock::now() < next_batch) {
      if (!SleepUnlessStopping(next_batch - std::chrono::steady_clock::now())) break;
    }
    // 2. The stream and the consumer (both survive us in the server).
    if (!consumer) {
      Status s = EnsureLikesStream(*nats_, options_.stream, options_.subject_prefix, options_.stream_max_age);
      if (s.ok()) {
        nats::ConsumerConfig config;
        config.durable = options_.durable;
        config.filter_subject = options_.subject_prefix + ".>";
        config.ack_wait = std::chrono::duration_cast<std::chrono::milliseconds>(options_.ack_wait);
        config.max_ack_pending = static_cast<int64_t>(options_.batch_max) * 4;
        // A stream that ends before the database's offset was recreated or reset: its new
        // entries would be taken for applied ones. Refuse until an operator sorts it out.
        auto info = nats_->GetStreamInfo(options_.stream);
        if (info.ok() && info->last_seq < through) {
          s = FailedPrecondition("stream " + options_.stream + " ends at " + std::to_string(info->last_seq) +
                                 ", before the database's offset " + std::to_string(through) +
                                 " (stream recreated?); not applying");
        } else {
          auto bound = nats_->PullSubscribe(options_.stream, config);
          if (bound.ok()) {
            consumer = std::move(*bound);
          } else {
            s = bound.status();
          }
        }
      }
      if (!consumer) {
        Fail("binding the consumer", s, false);
        if (!SleepUnlessStopping(options_.retry)) break;
        continue;
      }
    }

    // 3. Fetch and order.
    auto got =
        consumer->Fetch(batch_max, std::chrono::duration_cast<std::chrono::milliseconds>(options_.window));
    if (!got.ok()) {
      Fail("fetching", got.status(), false);
      if (!SleepUnlessStopping(options_.retry)) break;
      continue;
    }
    {
      MutexLock lock(mu_);
      stats_.queue_ok = true;
    }
    uint64_t duplicates = 0;
    for (nats::JsMessage& m : *got) {
      if (m.stream_seq <= through) {
        (void)m.Ack();
        ++duplicates;
        continue;
      }
      // A redelivery replaces the older delivery's handle (never ack that one: an ack is by
      // stream sequence, and the message is not applied yet).
      held[m.stream_seq] = std::move(m);
    }
    if (!held.empty() && held.begin()->first != through + 1) {
      // A gap: another job may have applied it (its share of the durable consumer) ...
      if (auto offset = db_->AppliedThrough(options_.stream); offset.ok() && *offset > through) {
        through = *offset;
        held.erase(held.begin(), held.upper_bound(through));  // not acked: redelivered, then skipped
      }
    }
    if (!held.empty() && held.begin()->first != through + 1) {
      // ... else wait for its redelivery, unless the stream no longer has it.
      auto info = nats_->GetStreamInfo(options_.stream);
      if (info.ok() && info->first_seq > through + 1) {
        const uint64_t lost = info->first_seq - (through + 1);
        log->error("likes job: stream {} sequences {}..{} were removed before being applied (max_age?)",
                   options_.stream, through + 1, info->first_seq - 1);
        through = info->first_seq - 1;
        MutexLock lock(mu_);
        stats_.lost += lost;
      }
    }
    std::vector<nats::JsMessage> run;
    while (!held.empty() && held.begin()->first == through + 1 && run.size() < batch_max) {
      run.push_back(std::move(held.begin()->second));
      held.erase(held.begin());
      ++through;
    }
    {
      MutexLock lock(mu_);
      stats_.duplicates += duplicates;
    }
    if (run.empty()) {
      if (!backlog_.empty()) RefreshCache(std::nullopt, 0);
      continue;
    }

    // 4. Apply the run with the offset, retrying from memory until it commits.
    std::vector<LogEntry> entries;
    entries.reserve(run.size());
    uint64_t corrupt = 0;
    for (const nats::JsMessage& m : run) {
      auto e = DecodeLogEntry(m.data);
      if (!e.ok()) {
        ++corrupt;
        log->error("likes job: stream {} seq {} is not a log entry ({}); skipped", options_.stream,
                   m.stream_seq, e.status().message());
        continue;
      }
      e->seq = 0;  // not a like_log row
      entries.push_back(std::move(*e));
    }
    const uint64_t last = run.back().stream_seq;
    Result<ApplyOutcome> outcome = Internal("not applied");
    SteadyTime last_progress = std::chrono::steady_clock::now();
    bool moved = false;
    while (true) {
      // Only on top of the offset this run follows: another job that moved it wins.
      outcome = db_->ApplyBatch(entries, options_.stream, last, run.front().stream_seq - 1);
      if (outcome.ok()) break;
      if (outcome.status().code() == StatusCode::kFailedPrecondition) {
        moved = true;
        break;
      }
      Fail("applying", outcome.status(), true);
      if (std::chrono::steady_clock::now() - last_progress > options_.ack_wait / 3) {
        for (nats::JsMessage& m : run) (void)m.InProgress();
        last_progress = std::chrono::steady_clock::now();
      }
      if (!SleepUnlessStopping(options_.retry)) break;
    }
    if (moved) {
      // Reload the offset; what is still ahead of it goes back to wait its turn.
      log->warn("likes job: {}; reloading the offset", outcome.status().message());
      auto offset = db_->AppliedThrough(options_.stream);
      through = offset.ok() ? *offset : run.front().stream_seq - 1;
      for (nats::JsMessage& m : run) {
        if (m.stream_seq > through) held[m.stream_seq] = std::move(m);
      }
      held.erase(held.begin(), held.upper_bound(through));
      continue;
    }
    if (!outcome.ok()) break;  // stopping: the messages are redelivered to the next job
    if (options_.rate > 0) {
      next_batch = std::max(next_batch, std::chrono::steady_clock::now()) +
                   std::chrono::duration_cast<Duration>(
                       std::chrono::duration<double>(static_cast<double>(run.size()) / options_.rate));
    }
    {
      MutexLock lock(mu_);
      stats_.applied += entries.size();
      stats_.corrupt += corrupt;
      ++stats_.batches;
      stats_.through = last;
      stats_.database_ok = true;
    }
    // 5. Refresh the cache, then tell the services (they drop their overlays of these entries,
    // so the cache must hold them first), then ack. A lost notice only delays them to their
    // next offset poll. While the cache cannot be refreshed the services are not told: they keep
    // their overlays, which stay correct.
    std::string notice = EncodeAppliedNotice(options_.stream, last);
    if (RefreshCache(std::move(*outcome), last)) (void)nats_->Publish(options_.changes_subject, notice);
    for (nats::JsMessage& m : run) (void)m.Ack();
    if (auto info = nats_->GetStreamInfo(options_.stream); info.ok()) {
      MutexLock lock(mu_);
      stats_.stream_last = info->last_seq;
    }
  }
  log->info("likes job: stopped at {}", through);
}

}  // namespace chorus::likes
