// Task: a move-only `void()` callable, for work handed between threads.
//
// std::function requires a copyable target, so it cannot carry an HttpResponder, a unique_ptr or
// any other move-only state across a Post(); Task can (like C++23 std::move_only_function).
// One heap allocation per task, the same as std::function for captures beyond its small buffer.
#pragma once

#include <concepts>
#include <memory>
#include <type_traits>
#include <utility>

namespace chorus {

class Task {
 public:
  Task() = default;

  template <typename F>
    requires(std::invocable<std::decay_t<F>&> && !std::same_as<std::decay_t<F>, Task>)
  Task(F&& f)  // NOLINT: implicit by design, like std::function
      : impl_(std::make_unique<Impl<std::decay_t<F>>>(std::forward<F>(f))) {}

  Task(Task&&) noexcept = default;
  Task& operator=(Task&&) noexcept = default;

  void operator()() { impl_->Run(); }
  explicit operator bool() const { return impl_ != nullptr; }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual void Run() = 0;
  };
  template <typename F>
  struct Impl final : Base {
    explicit Impl(F&& f) : fn(std::move(f)) {}
    explicit Impl(const F& f) : fn(f) {}
    void Run() override { fn(); }
    F fn;
  };
  std::unique_ptr<Base> impl_;
};

}  // namespace chorus
