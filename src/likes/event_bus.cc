#include "likes/event_bus.h"

#include <algorithm>

namespace chorus::likes {

uint64_t InProcessBus::Add(std::shared_ptr<Subscriber> sub) {
  MutexLock lock(mu_);
  sub->id = next_id_++;
  subscribers_.push_back(sub);
  return sub->id;
}

uint64_t InProcessBus::SubscribeLikes(LikeHandler handler) {
  auto sub = std::make_shared<Subscriber>();
  sub->on_like = std::move(handler);
  return Add(std::move(sub));
}

uint64_t InProcessBus::SubscribeCounts(CountHandler handler) {
  auto sub = std::make_shared<Subscriber>();
  sub->on_count = std::move(handler);
  return Add(std::move(sub));
}

void InProcessBus::Unsubscribe(uint64_t id) {
  MutexLock lock(mu_);
  auto it = std::find_if(subscribers_.begin(), subscribers_.end(), [id](const auto& s) { return s->id == id; });
  if (it == subscribers_.end()) return;
  (*it)->active.store(false);
  subscribers_.erase(it);
}

bool InProcessBus::HasCountSubscribers() const {
  MutexLock lock(mu_);
  return std::any_of(subscribers_.begin(), subscribers_.end(), [](const auto& s) { return s->on_count != nullptr; });
}

bool InProcessBus::HasLikeSubscribers() const {
  MutexLock lock(mu_);
  return std::any_of(subscribers_.begin(), subscribers_.end(), [](const auto& s) { return s->on_like != nullptr; });
}

template <typename Event>
void InProcessBus::Deliver(const Event& event) {
  std::vector<std::shared_ptr<Subscriber>> targets;
  {
    MutexLock lock(mu_);
    targets = subscribers_;
  }
  for (const auto& s : targets) {
    if (!s->active.load()) continue;
    if constexpr (std::is_same_v<Event, LikeEvent>) {
      if (s->on_like) s->on_like(event);
    } else {
      if (s->on_count) s->on_count(event);
    }
  }
}

void InProcessBus::Publish(const LikeEvent& event) { Deliver(event); }
void InProcessBus::Publish(const CountEvent& event) { Deliver(event); }

}  // namespace chorus::likes
