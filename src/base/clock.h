// Injected time: a Clock (steady + wall) and a TimerService that runs callbacks later.
//
// Every component that waits, expires or schedules takes a Clock& and a TimerService& instead of
// calling std::chrono or sleeping, so tests drive it with SimulatedClock::Advance() and run in
// microseconds with no flakiness. Use the steady clock for intervals and deadlines; the wall clock
// only for timestamps shown to people or stored.
//
// In production the clock is SystemClock and the timer service is the owning shard
// (net::Shard implements TimerService on its io_context). Thread rules: SystemClock is safe from
// any thread; a TimerService runs callbacks on its own thread (the shard's), and SimulatedClock
// runs them on the thread that calls Advance(). SimulatedClock is not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <utility>

namespace chorus {

using Duration = std::chrono::nanoseconds;
using SteadyTime = std::chrono::steady_clock::time_point;
using WallTime = std::chrono::system_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual SteadyTime Now() const = 0;
  virtual WallTime WallNow() const = 0;

  int64_t WallMillis() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(WallNow().time_since_epoch()).count();
  }
};

// The real clocks. Stateless; one shared instance.
class SystemClock final : public Clock {
 public:
  static SystemClock& Instance();
  SteadyTime Now() const override { return std::chrono::steady_clock::now(); }
  WallTime WallNow() const override { return std::chrono::system_clock::now(); }
};

using TimerId = uint64_t;

class TimerService {
 public:
  virtual ~TimerService() = default;
  // Runs `fn` once, `delay` from now. Returns an id for Cancel().
  virtual TimerId RunAfter(Duration delay, std::function<void()> fn) = 0;
  // Cancels a pending timer; a timer that already ran or was cancelled is ignored.
  virtual void Cancel(TimerId id) = 0;

  // Runs `fn` every `period` until cancelled. The id stays valid across repetitions.
  TimerId RunEvery(Duration period, std::function<void()> fn);

 protected:
  // Implementations of RunEvery re-arm under one id; see SimulatedClock and net::Shard.
  virtual TimerId RunEveryImpl(Duration period, std::function<void()> fn) = 0;
};

inline TimerId TimerService::RunEvery(Duration period, std::function<void()> fn) {
  return RunEveryImpl(period, std::move(fn));
}

// A clock that moves only when told to, and a timer service driven by it.
// Advance(d) moves time forward and runs every timer due up to the new time, in due order
// (ties in scheduling order), with Now() equal to each timer's due time while it runs.
class SimulatedClock final : public Clock, public TimerService {
 public:
  explicit SimulatedClock(WallTime wall_start = WallTime(std::chrono::seconds(1'700'000'000)));

  SteadyTime Now() const override { return now_; }
  WallTime WallNow() const override { return wall_start_ + (now_ - steady_start_); }

  TimerId RunAfter(Duration delay, std::function<void()> fn) override;
  void Cancel(TimerId id) override;

  void Advance(Duration d);
  size_t pending_timers() const { return timers_.size(); }

 protected:
  TimerId RunEveryImpl(Duration period, std::function<void()> fn) override;

 private:
  struct Timer {
    TimerId id;
    Duration period;  // zero for one-shot
    std::function<void()> fn;
  };
  TimerId Schedule(SteadyTime due, TimerId id, Duration period, std::function<void()> fn);

  SteadyTime steady_start_;
  SteadyTime now_;
  WallTime wall_start_;
  TimerId next_id_ = 1;
  uint64_t seq_ = 0;
  // Ordered by (due time, scheduling sequence).
  std::map<std::pair<SteadyTime, uint64_t>, Timer> timers_;
  std::map<TimerId, std::pair<SteadyTime, uint64_t>> index_;
};

}  // namespace chorus
