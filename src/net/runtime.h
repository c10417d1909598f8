// The thread-per-core runtime: N shards, each one thread running its own io_context.
//
// State is owned by one shard and touched only on its thread; other threads hand it work with
// Post(). A shard is also the TimerService for the components it owns, so the same component
// code runs on real timers here and on SimulatedClock in tests.
//
// Thread rules:
//   - Shard::Post() and Runtime::Post() are safe from any thread.
//   - Shard::RunAfter/RunEvery/Cancel must be called on the shard's own thread (debug-checked).
//   - Runtime::Current() tells the calling thread's shard (nullptr off shard threads).
//   - Start() and Stop() are called by the owner thread (main), once each.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "base/random.h"
#include "base/task.h"
#include "base/status.h"

namespace boost::asio {
class io_context;
}

namespace chorus::net {

class Shard final : public TimerService {
 public:
  Shard(uint32_t index, uint32_t count, uint64_t seed);
  ~Shard() override;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  uint32_t index() const { return index_; }
  uint32_t count() const { return count_; }
  boost::asio::io_context& io() { return *io_; }

  // Runs fn on this shard's thread, after whatever is queued. Safe from any thread. Move-only
  // captures are fine (e.g. an HttpResponder answered from the owning shard).
  void Post(Task fn);
  // Runs fn now if called on this shard's thread, else posts it.
  void Dispatch(Task fn);
  bool IsCurrent() const;

  // This shard's random generator (Random::ForShard of the runtime seed). Shard thread only.
  Random& random() { return random_; }

  TimerId RunAfter(Duration delay, std::function<void()> fn) override;
  void Cancel(TimerId id) override;

 protected:
  TimerId RunEveryImpl(Duration period, std::function<void()> fn) override;

 private:
  friend class Runtime;
  struct Timers;
  void Arm(TimerId id, Duration delay, Duration period, std::function<void()> fn);

  const uint32_t index_;
  const uint32_t count_;
  std::unique_ptr<boost::asio::io_context> io_;
  std::unique_ptr<Timers> timers_;
  Random random_;
  std::thread thread_;
};

class Runtime {
 public:
  struct Options {
    uint32_t shards = 0;      // 0 = one per CPU core
    bool pin_threads = true;  // pin shard i to core i % cores
    uint64_t seed = 0;        // per-shard Random seeds derive from it; 0 = from the clock
  };

  static Result<std::unique_ptr<Runtime>> Create(const Options& options);
  ~Runtime();

  uint32_t size() const { return static_cast<uint32_t>(shards_.size()); }
  Shard& shard(uint32_t i) { return *shards_[i]; }
  void Post(uint32_t shard, Task fn) { shards_[shard % size()]->Post(std::move(fn)); }

  // The calling thread's shard, or nullptr when not on a shard thread.
  static Shard* Current();

  // Starts the shard threads. Does nothing after Stop().
  void Start();
  // Stops every io_context and joins the threads; pending handlers are dropped. Idempotent.
  void Stop();

 private:
  explicit Runtime(const Options& options);
  Options options_;
  std::vector<std::unique_ptr<Shard>> shards_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace chorus::net
