// Mutex, MutexLock and CondVar: std::mutex and std::condition_variable with clang thread-safety
// annotations (base/thread_annotations.h), so that `clang++ -Wthread-safety` can prove every
// GUARDED_BY member is only touched with its mutex held. Chorus code uses these instead of the
// std types (CONVENTIONS.md: "any mutex that remains is annotated"); locking costs exactly what
// std::mutex costs, every member is inline.
//
//   class Readiness {
//     ...
//     mutable Mutex mu_;
//     bool shutting_down_ GUARDED_BY(mu_) = false;
//   };
//   void Readiness::SetShuttingDown() {
//     MutexLock lock(mu_);
//     shutting_down_ = true;
//   }
//
// Contract:
//   - Mutex is not recursive, not copyable, not movable. Lock() by the thread that holds it is a
//     deadlock; Unlock() by a thread that does not hold it is undefined behaviour (as std::mutex).
//   - Mutex is constant-initialised (constexpr constructor), so a function-local or namespace-scope
//     `static Mutex` is safe to use from static constructors and destructors.
//   - MutexLock holds the mutex from construction until destruction or until its Unlock(); it
//     cannot re-lock. Prefer it to Lock()/Unlock() pairs: early returns stay correct.
//   - AssertHeld() tells the analysis the mutex is held where it cannot see it (a callback run
//     under a lock). std::mutex cannot tell who holds it, so it checks nothing at run time.
//   - CondVar waits take the Mutex itself and are annotated REQUIRES(mu): the analysis checks that
//     the caller holds exactly the mutex the wait releases and re-acquires. As with
//     std::condition_variable, a wait may wake spuriously; the predicate forms loop for you.
//     A predicate that reads guarded data runs with the mutex held, but the analysis checks a
//     lambda as a function of its own, so annotate it: `[&]() REQUIRES(mu_) { return done_; }`.
//   - Notify*() may be called with or without the mutex held.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <type_traits>

#include "base/thread_annotations.h"

namespace chorus {

class CAPABILITY("mutex") Mutex {
 public:
  constexpr Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  // True if the mutex was free and is now held by the caller; never blocks.
  [[nodiscard]] bool TryLock() TRY_ACQUIRE(true) { return mu_.try_lock(); }

  // No run-time check (see the header comment); informs the analysis only.
  void AssertHeld() const ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

// Holds `mu` for its lifetime: `MutexLock lock(mu_);`.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.Lock(); }
  ~MutexLock() RELEASE() {
    if (held_) mu_.Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // Releases the mutex before the end of the scope (before a slow call, or on a path that must
  // not hold it). Call at most once; the destructor then does nothing.
  void Unlock() RELEASE() {
    held_ = false;
    mu_.Unlock();
  }

 private:
  Mutex& mu_;
  bool held_ = true;
};

// A condition variable bound, per wait, to a chorus::Mutex the caller holds. Every wait releases
// `mu` while blocked and holds it again when it returns (also when the predicate throws).
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  void NotifyOne() noexcept { cv_.notify_one(); }
  void NotifyAll() noexcept { cv_.notify_all(); }

  // Blocks until notified (or a spurious wake-up).
  void Wait(Mutex& mu) REQUIRES(mu) {
    WithNative(mu, [this](std::unique_lock<std::mutex>& native) { cv_.wait(native); });
  }

  // Blocks until pred() is true; pred runs with `mu` held.
  template <typename Predicate>
  void Wait(Mutex& mu, Predicate pred) REQUIRES(mu) {
    WithNative(mu, [&](std::unique_lock<std::mutex>& native) { cv_.wait(native, pred); });
  }

  // Blocks until notified, a spurious wake-up, or `deadline`.
  template <typename Clock, typename Dur>
  std::cv_status WaitUntil(Mutex& mu, const std::chrono::time_point<Clock, Dur>& deadline) REQUIRES(mu) {
    return WithNative(mu,
                      [&](std::unique_lock<std::mutex>& native) { return cv_.wait_until(native, deadline); });
  }

  // Blocks until pred() is true or `deadline`/`timeout` passes; returns pred() as last
  // evaluated, i.e. false only on a timeout.
  template <typename Clock, typename Dur, typename Predicate>
  bool WaitUntil(Mutex& mu, const std::chrono::time_point<Clock, Dur>& deadline, Predicate pred)
      REQUIRES(mu) {
    return WithNative(
        mu, [&](std::unique_lock<std::mutex>& native) { return cv_.wait_until(native, deadline, pred); });
  }
  template <typename Rep, typename Period, typename Predicate>
  bool WaitFor(Mutex& mu, const std::chrono::duration<Rep, Period>& timeout, Predicate pred) REQUIRES(mu) {
    return WithNative(
        mu, [&](std::unique_lock<std::mutex>& native) { return cv_.wait_for(native, timeout, pred); });
  }

 private:
  // Lends the already-held std::mutex inside `mu` to std::condition_variable as a unique_lock
  // that adopts it and gives it back, still locked, however `wait` returns.
  template <typename F>
  static auto WithNative(Mutex& mu, F&& wait) -> std::invoke_result_t<F&, std::unique_lock<std::mutex>&> {
    std::unique_lock<std::mutex> native(mu.mu_, std::adopt_lock);
    struct Disown {
      std::unique_lock<std::mutex>& lock;
      ~Disown() { lock.release(); }
    } disown{native};
    return wait(native);
  }

  std::condition_variable cv_;
};

}  // namespace chorus
