#include "live/dispatcher.h"

#include <algorithm>

namespace chorus::live {

std::string_view DropReasonName(DropReason reason) {
  switch (reason) {
    case DropReason::kExpired: return "expired";
    case DropReason::kOverBudget: return "over_budget";
    case DropReason::kCarryLimit: return "carry_limit";
    case DropReason::kOverflow: return "overflow";
    case DropReason::kSlowClient: return "slow_client";
    case DropReason::kCount: break;
  }
  return "unknown";
}

bool RoomDispatcher::IsCurrentGain(const MessagePtr& m) const {
  auto it = gain_.find(m->gain_key);
  return it != gain_.end() && it->second == m;
}

void RoomDispatcher::SweepReplacedGains() {
  for (auto& [priority, fifo] : queues_) {
    const size_t before = fifo.size();
    std::erase_if(fifo, [&](const MessagePtr& m) { return !m->gain_key.empty() && !IsCurrentGain(m); });
    size_ -= before - fifo.size();
  }
  stale_ = 0;
  EraseEmptyQueues();
}

void RoomDispatcher::EraseEmptyQueues() {
  for (auto q = queues_.begin(); q != queues_.end();) q = q->second.empty() ? queues_.erase(q) : std::next(q);
}

void RoomDispatcher::Enqueue(MessagePtr m) {
  const bool replaces = !m->gain_key.empty() && gain_.contains(m->gain_key);
  if (size_ >= options_->pending_max && stale_ > 0) SweepReplacedGains();
  // A replacement does not grow the live set (its old value becomes stale and is swept later).
  if (size_ >= options_->pending_max && !replaces) {
    // Full: drop the lowest-priority oldest message, or the new one if it is the lowest. A current
    // gain value is never the victim.
    bool dropped = false;
    if (!queues_.empty() && std::prev(queues_.end())->first <= m->priority) {
      for (auto q = queues_.rbegin(); q != queues_.rend() && !dropped; ++q) {
        auto& fifo = q->second;
        if (q->first > m->priority) break;
        auto victim = std::find_if(fifo.begin(), fifo.end(), [](const MessagePtr& e) { return e->gain_key.empty(); });
        if (victim == fifo.end()) continue;
        fifo.erase(victim);
        --size_;
        dropped = true;
      }
      EraseEmptyQueues();
    }
    Drop(DropReason::kOverflow);
    if (!dropped) return;  // the new message was the lowest
  }
  if (replaces) {
    ++coalesced_;
    MessagePtr& current = gain_[m->gain_key];
    // Same priority: the new value takes the old one's place, so a value updated every tick keeps
    // its turn instead of going to the back. Otherwise the old entry goes stale (swept later).
    auto q = queues_.find(current->priority);
    if (q != queues_.end() && current->priority == m->priority) {
      auto slot = std::find(q->second.begin(), q->second.end(), current);
      if (slot != q->second.end()) {
        *slot = m;
        current = std::move(m);
        return;
      }
    }
    ++stale_;
    current = m;
  } else if (!m->gain_key.empty()) {
    gain_[m->gain_key] = m;
  }
  queues_[m->priority].push_back(std::move(m));
  ++size_;
}

std::vector<MessagePtr> RoomDispatcher::Tick(int64_t now_ms) {
  std::vector<MessagePtr> block;
  block.reserve(std::min(options_->block_max, size_));
  // 1. Sweep replaced gain values and expired messages.
  for (auto& [priority, fifo] : queues_) {
    const size_t before = fifo.size();
    std::erase_if(fifo, [&](const MessagePtr& m) {
      if (!m->gain_key.empty()) return !IsCurrentGain(m);
      if (now_ms - m->created_at > options_->MaxAgeMs(m->type)) {
        Drop(DropReason::kExpired);
        return true;
      }
      return false;
    });
    size_ -= before - fifo.size();
  }
  stale_ = 0;
  // 2. Select: highest priority first, oldest first within a priority.
  for (auto& [priority, fifo] : queues_) {
    while (block.size() < options_->block_max && !fifo.empty()) {
      MessagePtr m = std::move(fifo.front());
      fifo.pop_front();
      --size_;
      if (!m->gain_key.empty()) gain_.erase(m->gain_key);
      block.push_back(std::move(m));
    }
    if (block.size() == options_->block_max) break;
  }
  // 3. Carry or drop what is left. Current gain values always stay.
  size_t carried = 0;
  for (auto& [priority, fifo] : queues_) {
    const size_t before = fifo.size();
    std::erase_if(fifo, [&](const MessagePtr& m) {
      if (!m->gain_key.empty()) return false;
      if (priority >= options_->carry_min_priority) {
        if (carried < options_->carry_max) {
          ++carried;
          return false;
        }
        Drop(DropReason::kCarryLimit);
        return true;
      }
      Drop(DropReason::kOverBudget);
      return true;
    });
    size_ -= before - fifo.size();
  }
  EraseEmptyQueues();
  return block;
}

}  // namespace chorus::live
