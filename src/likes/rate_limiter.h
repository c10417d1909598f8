// RateLimiter: token buckets keyed by string ("u:video:alice", "ip:video:127.0.0.1"), shared by
// every shard, with bounded memory.
//
// Each key has a bucket holding up to `burst` tokens that refills at `per_second` tokens per
// second; a request costing `cost` tokens is allowed if the bucket holds that many, and then
// takes them. A denied request takes nothing. The limit is passed on every call rather than
// registered, because it comes from the business's configuration (model.h RateLimit) and may
// change on reload: a bucket is refilled at the rate of the call that touches it and capped at
// that call's burst. per_second <= 0 means unlimited: always allowed, nothing stored.
//
//   auto d = limiter.Allow("u:" + business + ":" + user, b.user_rate);
//   if (!d) return Reply429(d.retry_after);   // Retry-After: ceil(retry_after) seconds
//
// Allow() returns a Decision rather than a bool so that a denial carries how long until the
// same request would be allowed (retry_after), computed under the same lock as the decision;
// a separate RetryAfter() call could answer for a bucket another thread has changed since.
// Decision converts to bool explicitly, so `if (limiter.Allow(...))` reads as before. A cost
// above the burst can never be allowed; its retry_after is then the time until the bucket is
// full.
//
// Memory. A bucket that has refilled to full behaves exactly like an absent bucket (a new key
// starts full), so the limiter keeps at most `max_keys` buckets and, when it must make room,
// first drops the full ones and only then the least recently used (which hands that key a fresh
// burst: the limiter fails open under a flood of distinct keys rather than grow; evicted()
// counts these). Keys are spread over kStripes stripes by hash, each with its own share of
// max_keys (max_keys below kStripes is raised to kStripes so every stripe holds one).
//
// Thread rules: safe from any thread. Each stripe is a Mutex guarding a hash map and an LRU list;
// a call locks exactly one stripe, so shards contend only when their keys share a stripe.
// Times come from the injected Clock's steady Now(), read before locking; a call that read an
// older time than the bucket's last update refills nothing (time never runs backwards for a
// bucket).
//
// Cost: Allow() is one hash, one lock, one map lookup, O(1) arithmetic and an LRU splice; an
// insert into a full stripe is amortised O(1): a sweep for full buckets costs O(stripe size) and
// runs at most once per (stripe size / 2) inserts, LRU eviction in between. Memory: about
// 120 bytes plus the key (when longer than 15 bytes) per bucket.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/thread_annotations.h"
#include "likes/model.h"

namespace chorus::likes {

class RateLimiter {
 public:
  static constexpr size_t kStripes = 64;

  struct Decision {
    bool allowed = true;
    // When denied: how long until the bucket holds `cost` tokens (rounded up to a nanosecond).
    // Zero when allowed.
    Duration retry_after{0};
    explicit operator bool() const { return allowed; }
  };

  explicit RateLimiter(const Clock& clock, size_t max_keys = 100000);

  RateLimiter(const RateLimiter&) = delete;
  RateLimiter& operator=(const RateLimiter&) = delete;

  // Takes `cost` tokens from `key`'s bucket if it holds them. A cost <= 0 (or NaN) takes nothing
  // and is allowed; a burst <= 0 allows nothing but free requests.
  [[nodiscard]] Decision Allow(std::string_view key, const RateLimit& limit, double cost = 1);

  // Buckets held (locks each stripe in turn, so only a snapshot under concurrent calls).
  size_t size() const;
  // Buckets dropped before they had refilled, to make room for other keys.
  uint64_t evicted() const { return evicted_.load(std::memory_order_relaxed); }
  size_t max_keys() const { return max_keys_; }

 private:
  struct Bucket {
    std::string key;
    double tokens = 0;
    SteadyTime last;     // when `tokens` was computed
    SteadyTime full_at;  // when it will have refilled to the burst of its last call
  };
  using List = std::list<Bucket>;

  struct alignas(64) Stripe {
    Mutex mu;
    size_t capacity = 0;      // set before any call, then read-only
    List lru GUARDED_BY(mu);  // most recently used first
    std::unordered_map<std::string_view, List::iterator> index GUARDED_BY(mu);  // views of lru keys
    size_t inserts_since_sweep GUARDED_BY(mu) = 0;
  };

  Stripe& StripeFor(std::string_view key) const;
  // Makes room for one more bucket in a stripe at capacity.
  void MakeRoom(Stripe& s, SteadyTime now) REQUIRES(s.mu);
  void Erase(Stripe& s, List::iterator it) REQUIRES(s.mu);

  const Clock& clock_;
  const size_t max_keys_;
  std::unique_ptr<Stripe[]> stripes_;
  std::atomic<uint64_t> evicted_{0};
};

}  // namespace chorus::likes
