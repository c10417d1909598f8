// EventBus: where the likes service announces changes for other services to react to (live turns
// a room's like total into a gain message). The embedded bus is in-process; NATS JetStream
// implements the same interface later.
//
// Events:
//   - LikeEvent  one per acknowledged state change, published on the entity's owner shard right
//                after the change is durable;
//   - CountEvent one per entity per apply window (likes.flush_interval) whose counts changed,
//                carrying the entity's counts after the window: the seed's aggregated count
//                message.
//
// Threads: Subscribe/Unsubscribe/Publish are safe from any thread. Handlers run synchronously on
// the publishing (shard) thread, outside the bus's lock: they must be quick and must not block;
// a handler that needs its own thread posts there. After Unsubscribe returns the handler is not
// called again, but a call already under way on another thread may still be finishing: keep
// what the handler touches alive (capture a shared_ptr) rather than destroying it right after.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/mutex.h"
#include "likes/model.h"

namespace chorus::likes {

struct LikeEvent {
  std::string business;
  std::string user;
  std::string entity;
  std::string owner;
  LikeState from = LikeState::kNone;
  LikeState to = LikeState::kNone;
  int64_t time_ms = 0;
  uint64_t seq = 0;
};

struct CountEvent {
  std::string business;
  std::string entity;
  Counts counts;
};

class EventBus {
 public:
  using LikeHandler = std::function<void(const LikeEvent&)>;
  using CountHandler = std::function<void(const CountEvent&)>;
  virtual ~EventBus() = default;

  virtual uint64_t SubscribeLikes(LikeHandler handler) = 0;
  virtual uint64_t SubscribeCounts(CountHandler handler) = 0;
  virtual void Unsubscribe(uint64_t id) = 0;
  virtual bool HasCountSubscribers() const = 0;
  virtual bool HasLikeSubscribers() const = 0;

  virtual void Publish(const LikeEvent& event) = 0;
  virtual void Publish(const CountEvent& event) = 0;
};

class InProcessBus final : public EventBus {
 public:
  uint64_t SubscribeLikes(LikeHandler handler) override;
  uint64_t SubscribeCounts(CountHandler handler) override;
  void Unsubscribe(uint64_t id) override;
  bool HasCountSubscribers() const override;
  bool HasLikeSubscribers() const override;
  void Publish(const LikeEvent& event) override;
  void Publish(const CountEvent& event) override;

 private:
  struct Subscriber {
    uint64_t id = 0;
    LikeHandler on_like;
    CountHandler on_count;
    std::atomic<bool> active{true};
  };
  uint64_t Add(std::shared_ptr<Subscriber> sub);
  template <typename Event>
  void Deliver(const Event& event);

  mutable Mutex mu_;
  uint64_t next_id_ GUARDED_BY(mu_) = 1;
  std::vector<std::shared_ptr<Subscriber>> subscribers_ GUARDED_BY(mu_);
};

}  // namespace chorus::likes
