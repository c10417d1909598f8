#include "likes/blocking_pool.h"

namespace chorus::likes {
namespace {
thread_local const BlockingPool* current_pool = nullptr;
}  // namespace

BlockingPool::BlockingPool(size_t threads) {
  for (size_t i = 0; i < std::max<size_t>(1, threads); ++i) threads_.emplace_back([this] { Run(); });
}

BlockingPool::~BlockingPool() { Stop(); }

bool BlockingPool::IsCurrent() const { return current_pool == this; }

void BlockingPool::Submit(std::function<void()> task) {
  {
    MutexLock lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(task));
      lock.Unlock();
      cv_.NotifyOne();
      return;
    }
  }
  task();
}

void BlockingPool::Stop() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.NotifyAll();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void BlockingPool::Run() {
  current_pool = this;
  while (true) {
    std::function<void()> task;
    {
      MutexLock lock(mu_);
      cv_.Wait(mu_, [this]() REQUIRES(mu_) { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace chorus::likes
