#include "likes/committer.h"

#include "base/metrics.h"

namespace chorus::likes {
namespace {

struct CommitMetrics {
  Histogram* batch_entries = nullptr;
  Histogram* append_seconds = nullptr;
};

const CommitMetrics& Metrics() {
  static const CommitMetrics m = [] {
    CommitMetrics out;
    auto& reg = DefaultMetrics();
    if (auto f = reg.Histogram("chorus_likes_group_commit_entries", "Log entries per synced append",
                               ExponentialBuckets(1, 4, 8));
        f.ok()) {
      out.batch_entries = &f->Get();
    }
    if (auto f = reg.Histogram("chorus_likes_log_append_seconds", "Time of one synced log append",
                               ExponentialBuckets(0.0001, 2, 14));
        f.ok()) {
      out.append_seconds = &f->Get();
    }
    return out;
  }();
  return m;
}

}  // namespace

LogCommitter::LogCommitter(LikeStore& store) : store_(store) {
  (void)Metrics();
  thread_ = std::thread([this] { Run(); });
}

LogCommitter::~LogCommitter() { Stop(); }

void LogCommitter::Submit(Batch batch) {
  {
    MutexLock lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(batch));
      cv_.NotifyAll();
      return;
    }
  }
  batch.done(Unavailable("shutting down"), {});
}

void LogCommitter::Drain() {
  MutexLock lock(mu_);
  cv_.Wait(mu_, [this]() REQUIRES(mu_) { return queue_.empty() && !busy_; });
}

void LogCommitter::Stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
    cv_.NotifyAll();
  }
  if (thread_.joinable()) thread_.join();
}

LogCommitter::Stats LogCommitter::stats() const {
  MutexLock lock(mu_);
  return stats_;
}

void LogCommitter::Run() {
  for (;;) {
    std::vector<Batch> batches;
    {
      MutexLock lock(mu_);
      busy_ = false;
      cv_.NotifyAll();
      cv_.Wait(mu_, [this]() REQUIRES(mu_) { return !queue_.empty() || stopping_; });
      if (queue_.empty()) return;  // stopping with nothing left
      batches.swap(queue_);
      busy_ = true;
    }
    // Batches from a source behind a failure fail without being written.
    std::vector<LogEntry> entries;
    std::vector<size_t> writing;
    std::vector<size_t> rejected;
    for (size_t i = 0; i < batches.size(); ++i) {
      auto it = min_generation_.find(batches[i].source);
      if (it != min_generation_.end() && batches[i].generation < it->second) {
        rejected.push_back(i);
        continue;
      }
      writing.push_back(i);
      for (auto& e : batches[i].entries) entries.push_back(std::move(e));
    }
    const auto start = std::chrono::steady_clock::now();
    Status status = store_.AppendLog(entries);
    const auto& m = Metrics();
    if (!entries.empty()) {
      if (m.append_seconds) {
        m.append_seconds->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      if (m.batch_entries) m.batch_entries->Observe(static_cast<double>(entries.size()));
    }
    {
      MutexLock lock(mu_);
      if (status.ok() && !entries.empty()) {
        ++stats_.appends;
        stats_.entries += entries.size();
      }
      if (!status.ok()) stats_.failed += writing.size();
      stats_.failed += rejected.size();
    }
    if (!status.ok()) {
      for (size_t i : writing) {
        uint64_t& min = min_generation_[batches[i].source];
        min = std::max(min, batches[i].generation + 1);
      }
    }
    // Complete in submission order so a source sees its batches in order.
    size_t next = 0;
    for (size_t i = 0; i < batches.size(); ++i) {
      Batch& b = batches[i];
      const bool was_rejected = std::find(rejected.begin(), rejected.end(), i) != rejected.end();
      if (was_rejected) {
        b.done(Unavailable("an earlier write of this shard failed; retry"), {});
        continue;
      }
      const size_t n = b.entries.size();
      if (!status.ok()) {
        b.done(Unavailable("log append failed: " + status.message()), {});
        next += n;
        continue;
      }
      std::vector<LogEntry> mine(std::make_move_iterator(entries.begin() + static_cast<ptrdiff_t>(next)),
                                 std::make_move_iterator(entries.begin() + static_cast<ptrdiff_t>(next + n)));
      next += n;
      b.done(Status::Ok(), std::move(mine));
    }
  }
}

}  // namespace chorus::likes
