#include "live/memory_store.h"

#include <algorithm>
#include <functional>

namespace chorus::live {

MemoryPollStore::Stripe& MemoryPollStore::StripeOf(std::string_view room) {
  return stripes_[std::hash<std::string_view>{}(room) % kStripes];
}

void MemoryPollStore::Trim(TypeLog& log, int64_t now_ms) const {
  while (log.size() > retention_.max_per_type) log.pop_front();
  while (!log.empty() && log.front().created_at < now_ms - retention_.max_age_ms) log.pop_front();
}

void MemoryPollStore::Append(std::string_view room, std::vector<StoredMessage> messages, AppendCallback done) {
  if (!messages.empty()) {
    Stripe& stripe = StripeOf(room);
    MutexLock lock(stripe.mu);
    auto it = stripe.rooms.find(room);
    if (it == stripe.rooms.end()) it = stripe.rooms.emplace(std::string(room), RoomLog{}).first;
    int64_t newest = 0;
    for (StoredMessage& m : messages) {
      newest = std::max(newest, m.created_at);
      TypeLog& log = it->second.types[m.type];
      // Appends arrive in created_at order per room; keep the log sorted even if a caller slips.
      if (log.empty() || log.back().created_at <= m.created_at) {
        log.push_back(std::move(m));
      } else {
        auto pos = std::upper_bound(log.begin(), log.end(), m.created_at,
                                    [](int64_t t, const StoredMessage& e) { return t < e.created_at; });
        log.insert(pos, std::move(m));
      }
    }
    for (auto& [type, log] : it->second.types) Trim(log, newest);
  }
  if (done) done(Status::Ok());
}

void MemoryPollStore::Query(PollQuery query, QueryCallback done) {
  std::vector<StoredMessage> candidates;
  {
    Stripe& stripe = StripeOf(query.room);
    MutexLock lock(stripe.mu);
    auto it = stripe.rooms.find(query.room);
    if (it != stripe.rooms.end()) {
      auto collect = [&](const TypeLog& log) {
        auto first = std::upper_bound(log.begin(), log.end(), query.since,
                                      [](int64_t t, const StoredMessage& e) { return t < e.created_at; });
        for (; first != log.end() && first->created_at <= query.until; ++first) candidates.push_back(*first);
      };
      if (query.types.empty()) {
        for (const auto& [type, log] : it->second.types) collect(log);
      } else {
        for (const std::string& type : query.types) {
          auto log = it->second.types.find(type);
          if (log != it->second.types.end()) collect(log->second);
        }
      }
    }
  }
  done(SelectForPoll(std::move(candidates), query));
}

void MemoryPollStore::Sweep(int64_t now_ms) {
  for (Stripe& stripe : stripes_) {
    MutexLock lock(stripe.mu);
    for (auto room = stripe.rooms.begin(); room != stripe.rooms.end();) {
      auto& types = room->second.types;
      for (auto t = types.begin(); t != types.end();) {
        Trim(t->second, now_ms);
        t = t->second.empty() ? types.erase(t) : std::next(t);
      }
      room = types.empty() ? stripe.rooms.erase(room) : std::next(room);
    }
  }
}

size_t MemoryPollStore::rooms() const {
  size_t n = 0;
  for (const Stripe& stripe : stripes_) {
    MutexLock lock(stripe.mu);
    n += stripe.rooms.size();
  }
  return n;
}

}  // namespace chorus::live
