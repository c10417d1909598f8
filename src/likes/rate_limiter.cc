#include "likes/rate_limiter.h"

#include <algorithm>
#include <cmath>
#include <functional>

namespace chorus::likes {
namespace {

// Token arithmetic is in doubles; a request is allowed when the bucket is short by less than
// this, so that waiting exactly retry_after is always enough despite rounding (which is about
// 1e-16 of the burst). A billionth of a token is far below anything a limit can express, and
// below a nanosecond's refill at any rate under a billion per second, so retry_after stays
// exact to the nanosecond.
constexpr double kEpsilon = 1e-9;

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }

// Rounded up, so that waiting this long is enough.
Duration CeilDuration(double seconds) {
  const double ns = std::ceil(seconds * 1e9);
  // A microscopic rate can ask for longer than a Duration holds; a year is "not soon" enough.
  constexpr double kMaxNs = 365.0 * 24 * 3600 * 1e9;
  return Duration(static_cast<Duration::rep>(std::min(ns, kMaxNs)));
}

}  // namespace

RateLimiter::RateLimiter(const Clock& clock, size_t max_keys)
    : clock_(clock), max_keys_(std::max(max_keys, kStripes)), stripes_(new Stripe[kStripes]) {
  for (size_t i = 0; i < kStripes; ++i) {
    stripes_[i].capacity = max_keys_ / kStripes + (i < max_keys_ % kStripes ? 1 : 0);
  }
}

RateLimiter::Stripe& RateLimiter::StripeFor(std::string_view key) const {
  // The high bits pick the stripe; the map inside uses the same hash modulo its (prime) bucket
  // count, which the high bits do not bias.
  const uint64_t h = std::hash<std::string_view>{}(key);
  return stripes_[(h >> 32) % kStripes];
}

RateLimiter::Decision RateLimiter::Allow(std::string_view key, const RateLimit& limit, double cost) {
  const double rate = limit.per_second;
  if (!(rate > 0)) return {};  // unlimited (also NaN)
  const double burst = limit.burst > 0 ? limit.burst : 0;
  if (!(cost > 0)) return {};  // free: takes nothing, so changes nothing
  const SteadyTime now = clock_.Now();

  Stripe& s = StripeFor(key);
  MutexLock lock(s.mu);
  const auto found = s.index.find(key);
  if (found == s.index.end()) {
    // No bucket is a full bucket.
    if (cost > burst + kEpsilon) return {false, CeilDuration(0)};  // never; already full
    if (s.index.size() >= s.capacity) MakeRoom(s, now);
    const double tokens = std::max(0.0, burst - cost);
    s.lru.push_front(Bucket{std::string(key), tokens, now, now + CeilDuration((burst - tokens) / rate)});
    s.index.emplace(s.lru.front().key, s.lru.begin());
    ++s.inserts_since_sweep;
    return {};
  }

  const auto it = found->second;
  s.lru.splice(s.lru.begin(), s.lru, it);
  Bucket& b = *it;
  if (now > b.last) {
    b.tokens = std::min(burst, b.tokens + Seconds(now - b.last) * rate);
    b.last = now;
  } else {
    b.tokens = std::min(burst, b.tokens);  // the burst may have shrunk
  }
  Decision d;
  if (b.tokens + kEpsilon >= cost) {
    b.tokens = std::max(0.0, b.tokens - cost);
  } else {
    // Short of `cost` (or, for a cost above the burst, of a full bucket).
    d.allowed = false;
    d.retry_after = CeilDuration((std::min(cost, burst) - b.tokens) / rate);
  }
  b.full_at = b.last + CeilDuration((burst - b.tokens) / rate);
  return d;
}

void RateLimiter::MakeRoom(Stripe& s, SteadyTime now) {
  // Full buckets go first: dropping them loses nothing. A sweep visits the whole stripe, so it
  // runs at most once per capacity/2 inserts; in between, the least recently used bucket goes.
  if (s.inserts_since_sweep >= s.capacity / 2) {
    s.inserts_since_sweep = 0;
    for (auto it = s.lru.begin(); it != s.lru.end();) {
      const auto next = std::next(it);
      if (it->full_at <= now) Erase(s, it);
      it = next;
    }
    if (s.index.size() < s.capacity) return;
  }
  const auto victim = std::prev(s.lru.end());
  if (victim->full_at > now) evicted_.fetch_add(1, std::memory_order_relaxed);
  Erase(s, victim);
}

void RateLimiter::Erase(Stripe& s, List::iterator it) {
  s.index.erase(it->key);  // before the node the view points into goes
  s.lru.erase(it);
}

size_t RateLimiter::size() const {
  size_t total = 0;
  for (size_t i = 0; i < kStripes; ++i) {
    MutexLock lock(stripes_[i].mu);
    total += stripes_[i].index.size();
  }
  return total;
}

}  // namespace chorus::likes
