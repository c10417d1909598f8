#include "net/runtime.h"

#include <pthread.h>
#include <sched.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cassert>
#include <string>
#include <unordered_map>

namespace chorus::net {
namespace asio = boost::asio;

namespace {
thread_local Shard* tls_current_shard = nullptr;
}

struct Shard::Timers {
  TimerId next_id = 1;
  std::unordered_map<TimerId, std::unique_ptr<asio::steady_timer>> active;
};

Shard::Shard(uint32_t index, uint32_t count, uint64_t seed)
    : index_(index),
      count_(count),
      io_(std::make_unique<asio::io_context>(1)),
      timers_(std::make_unique<Timers>()),
      random_(Random::ForShard(seed, index)) {}

Shard::~Shard() = default;

void Shard::Post(Task fn) { asio::post(*io_, std::move(fn)); }

void Shard::Dispatch(Task fn) {
  if (IsCurrent()) {
    fn();
  } else {
    Post(std::move(fn));
  }
}

bool Shard::IsCurrent() const { return tls_current_shard == this; }

TimerId Shard::RunAfter(Duration delay, std::function<void()> fn) {
  assert(IsCurrent() || !thread_.joinable());
  const TimerId id = timers_->next_id++;
  Arm(id, delay, Duration::zero(), std::move(fn));
  return id;
}

TimerId Shard::RunEveryImpl(Duration period, std::function<void()> fn) {
  assert(IsCurrent() || !thread_.joinable());
  if (period <= Duration::zero()) period = Duration(1);
  const TimerId id = timers_->next_id++;
  Arm(id, period, period, std::move(fn));
  return id;
}

void Shard::Arm(TimerId id, Duration delay, Duration period, std::function<void()> fn) {
  auto& slot = timers_->active[id];
  if (!slot) slot = std::make_unique<asio::steady_timer>(*io_);
  slot->expires_after(delay);
  slot->async_wait([this, id, period, fn = std::move(fn)](const boost::system::error_code& ec) mutable {
    if (ec) return;  // cancelled
    auto it = timers_->active.find(id);
    if (it == timers_->active.end()) return;
    if (period > Duration::zero()) {
      // Re-arm first (fixed rate from now) so fn may Cancel its own repetition.
      std::function<void()> copy = fn;
      Arm(id, period, period, std::move(copy));
    } else {
      timers_->active.erase(it);
    }
    fn();
  });
}

void Shard::Cancel(TimerId id) {
  assert(IsCurrent() || !thread_.joinable());
  auto it = timers_->active.find(id);
  if (it == timers_->active.end()) return;
  it->second->cancel();
  timers_->active.erase(it);
}

Runtime::Runtime(const Options& options) : options_(options) {}

Result<std::unique_ptr<Runtime>> Runtime::Create(const Options& options) {
  Options o = options;
  if (o.shards == 0) o.shards = std::max(1u, std::thread::hardware_concurrency());
  if (o.shards > 1024) return InvalidArgument("runtime.shards: at most 1024 shards");
  if (o.seed == 0) o.seed = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) | 1;
  std::unique_ptr<Runtime> rt(new Runtime(o));
  for (uint32_t i = 0; i < o.shards; ++i) rt->shards_.push_back(std::make_unique<Shard>(i, o.shards, o.seed));
  return rt;
}

Runtime::~Runtime() { Stop(); }

Shard* Runtime::Current() { return tls_current_shard; }

void Runtime::Start() {
  if (started_ || stopped_) return;
  started_ = true;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (auto& s : shards_) {
    Shard* shard = s.get();
    shard->thread_ = std::thread([shard, cores, pin = options_.pin_threads] {
      tls_current_shard = shard;
      const std::string name = "shard-" + std::to_string(shard->index());
      pthread_setname_np(pthread_self(), name.c_str());
      if (pin) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(shard->index() % cores, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);  // best effort
      }
      auto guard = asio::make_work_guard(shard->io());
      shard->io().run();
      tls_current_shard = nullptr;
    });
  }
}

void Runtime::Stop() {
  if (stopped_) return;
  stopped_ = true;
  for (auto& s : shards_) s->io().stop();
  for (auto& s : shards_) {
    if (s->thread_.joinable()) s->thread_.join();
  }
  // Timers hold handlers that may reference shard-owned objects: drop them while the
  // io_contexts still exist, in shard order.
  for (auto& s : shards_) s->timers_->active.clear();
}

}  // namespace chorus::net
