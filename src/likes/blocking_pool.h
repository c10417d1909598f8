// BlockingPool: a few threads for calls that block on the network (the cluster engine's Redis
// and MariaDB round trips), so a shard's event loop never waits for one and the waits of many
// requests overlap. Tasks run in submission order per thread, in parallel across threads; a
// task posts its result back to a shard itself.
//
// Threads: Submit() is safe from any thread. Stop() (also the destructor) runs what is queued,
// then joins; Submit() after Stop() runs the task inline.
#pragma once

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "base/mutex.h"

namespace chorus::likes {

class BlockingPool {
 public:
  explicit BlockingPool(size_t threads);
  ~BlockingPool();
  BlockingPool(const BlockingPool&) = delete;
  BlockingPool& operator=(const BlockingPool&) = delete;

  void Submit(std::function<void()> task);
  void Stop();
  // True on one of this pool's threads.
  bool IsCurrent() const;

 private:
  void Run();

  Mutex mu_;
  CondVar cv_;
  std::deque<std::function<void()>> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace chorus::likes
