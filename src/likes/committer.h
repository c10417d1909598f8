// LogCommitter: the group-commit thread in front of LikeStore::AppendLog.
//
// Shards Submit() batches of log entries and return to their event loops; the committer thread
// takes everything queued while its previous write was syncing and writes it as one synced
// append, then calls each batch's `done` (on the committer thread; `done` posts back to its
// shard). So one fsync acknowledges every action that arrived during the previous one: under
// load the batch grows instead of the queue.
//
// Failure: when an append fails, every batch in it fails, and so does every later batch from the
// same source with a generation not newer than the failed one. A source (shard) that sees a
// failure bumps its generation and drops the state it built on top of the failed entries, so an
// entry computed from a state that never became durable is never written.
//
// Order: batches of one source complete in submission order, successes and failures alike, and
// an empty batch completes after every batch its source submitted before it (a fence).
//
// Threads: Submit/Drain/Stop are safe from any thread.
#pragma once

#include <cstdint>
#include <functional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "base/mutex.h"
#include "likes/like_store.h"

namespace chorus::likes {

class LogCommitter {
 public:
  struct Batch {
    uint32_t source = 0;
    uint64_t generation = 0;
    std::vector<LogEntry> entries;
    // Called once on the committer thread: OK with the entries (seq assigned), or the error.
    std::function<void(Status, std::vector<LogEntry>)> done;
  };

  explicit LogCommitter(LikeStore& store);
  ~LogCommitter();  // Stop()
  LogCommitter(const LogCommitter&) = delete;
  LogCommitter& operator=(const LogCommitter&) = delete;

  // After Stop(), the batch fails with Unavailable.
  void Submit(Batch batch);
  // Returns once everything submitted before the call has completed.
  void Drain();
  // Completes what is queued, then joins the thread. Idempotent.
  void Stop();

  struct Stats {
    uint64_t appends = 0;   // synced writes
    uint64_t entries = 0;   // entries written
    uint64_t failed = 0;    // batches failed
  };
  Stats stats() const;

 private:
  void Run();

  LikeStore& store_;
  mutable Mutex mu_;
  CondVar cv_;
  std::vector<Batch> queue_ GUARDED_BY(mu_);
  bool busy_ GUARDED_BY(mu_) = false;
  bool stopping_ GUARDED_BY(mu_) = false;
  Stats stats_ GUARDED_BY(mu_);
  std::unordered_map<uint32_t, uint64_t> min_generation_;  // committer thread only
  std::thread thread_;
};

}  // namespace chorus::likes
