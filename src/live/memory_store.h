// MemoryPollStore: the embedded poll store. Per room, per type, the newest messages in created_at
// order, bounded by RetentionOptions. Rooms hash onto 64 stripes, each with its own mutex, so
// polls on different shards rarely contend and a query holds a stripe only while it copies
// shared pointers. Appends and queries answer inline.
#pragma once
#include <array>
#include <deque>
#include <functional>
#include <string>
#include <unordered_map>

#include "base/mutex.h"
#include "live/poll_store.h"

namespace chorus::live {

class MemoryPollStore final : public PollStore {
 public:
  explicit MemoryPollStore(RetentionOptions retention) : retention_(retention) {}

  void Append(std::string_view room, std::vector<StoredMessage> messages, AppendCallback done) override;
  void Query(PollQuery query, QueryCallback done) override;
  std::string_view name() const override { return "memory"; }

  // Also forgets rooms left empty; appends trim their own room.
  void Sweep(int64_t now_ms) override;
  size_t rooms() const;

 private:
  using TypeLog = std::deque<StoredMessage>;  // created_at order
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  template <typename V>
  using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;
  struct RoomLog {
    StringMap<TypeLog> types;
  };
  struct Stripe {
    mutable Mutex mu;
    StringMap<RoomLog> rooms GUARDED_BY(mu);
  };
  static constexpr size_t kStripes = 64;

  Stripe& StripeOf(std::string_view room);
  void Trim(TypeLog& log, int64_t now_ms) const;

  const RetentionOptions retention_;
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace chorus::live
