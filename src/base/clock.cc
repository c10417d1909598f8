#include "base/clock.h"

namespace chorus {

SystemClock& SystemClock::Instance() {
  static SystemClock clock;
  return clock;
}

SimulatedClock::SimulatedClock(WallTime wall_start)
    : steady_start_(std::chrono::hours(24)), now_(steady_start_), wall_start_(wall_start) {}

TimerId SimulatedClock::Schedule(SteadyTime due, TimerId id, Duration period,
                                 std::function<void()> fn) {
  auto key = std::make_pair(due, seq_++);
  timers_.emplace(key, Timer{id, period, std::move(fn)});
  index_[id] = key;
  return id;
}

TimerId SimulatedClock::RunAfter(Duration delay, std::function<void()> fn) {
  if (delay < Duration::zero()) delay = Duration::zero();
  return Schedule(now_ + delay, next_id_++, Duration::zero(), std::move(fn));
}

TimerId SimulatedClock::RunEveryImpl(Duration period, std::function<void()> fn) {
  if (period <= Duration::zero()) period = Duration(1);
  return Schedule(now_ + period, next_id_++, period, std::move(fn));
}

void SimulatedClock::Cancel(TimerId id) {
  auto it = index_.find(id);
  if (it == index_.end()) return;
  timers_.erase(it->second);
  index_.erase(it);
}

void SimulatedClock::Advance(Duration d) {
  const SteadyTime target = now_ + d;
  while (!timers_.empty() && timers_.begin()->first.first <= target) {
    auto node = timers_.extract(timers_.begin());
    Timer timer = std::move(node.mapped());
    now_ = node.key().first;
    index_.erase(timer.id);
    if (timer.period > Duration::zero()) {
      // Re-arm before running so the callback may cancel its own repetition.
      Schedule(now_ + timer.period, timer.id, timer.period, timer.fn);
    }
    timer.fn();
  }
  now_ = target;
}

}  // namespace chorus
