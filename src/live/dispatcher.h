// RoomDispatcher: one room's pending messages and the rule that turns them into blocks.
//
// Pure logic, no threads and no clock of its own: the owner shard calls Enqueue() as messages are
// accepted and Tick(now) every block interval, so the same code runs under SimulatedClock in
// tests. Rules (docs/live.md "Room dispatcher"):
//   - pending messages wait in one FIFO per priority; at most `pending_max` in all — beyond it the
//     lowest-priority oldest message is dropped (kOverflow), or the new one if it is lower still;
//   - a gain message (non-empty gain_key) replaces the pending message with the same key; only the
//     latest is kept (the replaced one is counted as coalesced, not dropped) and it is exempt from
//     the age rule and from over-budget drops while it is the newest value;
//   - Tick: drop messages older than max_age for their type (kExpired); take up to `block_max`,
//     highest priority first, oldest first within a priority; of the rest, keep up to `carry_max`
//     messages with priority >= carry_min_priority for the next block (kCarryLimit beyond) and
//     drop the others (kOverBudget).
#pragma once
#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "live/message.h"

namespace chorus::live {

enum class DropReason : uint8_t { kExpired, kOverBudget, kCarryLimit, kOverflow, kSlowClient, kCount };
std::string_view DropReasonName(DropReason reason);

struct DispatcherOptions {
  size_t block_max = 20;
  size_t pending_max = 2000;
  size_t carry_max = 20;
  int32_t carry_min_priority = 500;
  std::map<std::string, int64_t, std::less<>> max_age_ms = {
      {"gift", 10'000}, {"pk", 5'000}, {"chat", 3'000}, {"notify", 5'000}};
  int64_t default_max_age_ms = 5'000;

  int64_t MaxAgeMs(std::string_view type) const {
    auto it = max_age_ms.find(type);
    return it == max_age_ms.end() ? default_max_age_ms : it->second;
  }
};

class RoomDispatcher {
 public:
  using DropCounts = std::array<uint64_t, static_cast<size_t>(DropReason::kCount)>;

  explicit RoomDispatcher(const DispatcherOptions* options) : options_(options) {}

  void Enqueue(MessagePtr message);
  // Emits the next block (possibly empty) as of wall time `now_ms`.
  std::vector<MessagePtr> Tick(int64_t now_ms);

  size_t pending() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Cumulative drops by reason, and gain messages replaced by a newer value.
  const DropCounts& drops() const { return drops_; }
  uint64_t coalesced() const { return coalesced_; }
  uint64_t drops(DropReason r) const { return drops_[static_cast<size_t>(r)]; }

 private:
  void Drop(DropReason reason, uint64_t n = 1) { drops_[static_cast<size_t>(reason)] += n; }
  bool IsCurrentGain(const MessagePtr& m) const;
  void SweepReplacedGains();
  void EraseEmptyQueues();

  const DispatcherOptions* options_;
  // Highest priority first; each FIFO is in accept order (oldest first).
  std::map<int32_t, std::deque<MessagePtr>, std::greater<>> queues_;
  // gain_key -> its newest pending message (also present in queues_).
  std::unordered_map<std::string, MessagePtr> gain_;
  size_t size_ = 0;   // entries in queues_, including replaced gain entries not yet swept
  size_t stale_ = 0;  // replaced gain entries not yet swept
  DropCounts drops_{};
  uint64_t coalesced_ = 0;
};

}  // namespace chorus::live
