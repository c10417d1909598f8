#include "likes/rate_limiter.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"

namespace chorus::likes {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

int CountAllowed(RateLimiter& limiter, std::string_view key, const RateLimit& limit, int attempts) {
  int allowed = 0;
  for (int i = 0; i < attempts; ++i) allowed += limiter.Allow(key, limit) ? 1 : 0;
  return allowed;
}

TEST(RateLimiterTest, BurstThenRefill) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  const RateLimit limit{.per_second = 10, .burst = 5};
  EXPECT_EQ(CountAllowed(limiter, "u:video:alice", limit, 100), 5);
  const auto denied = limiter.Allow("u:video:alice", limit);
  EXPECT_FALSE(denied);
  EXPECT_EQ(denied.retry_after, milliseconds(100));
  clock.Advance(milliseconds(99));
  EXPECT_FALSE(limiter.Allow("u:video:alice", limit));
  clock.Advance(milliseconds(1));
  EXPECT_TRUE(limiter.Allow("u:video:alice", limit));
  EXPECT_FALSE(limiter.Allow("u:video:alice", limit));
  // Refill is capped at the burst however long the pause.
  clock.Advance(seconds(3600));
  EXPECT_EQ(CountAllowed(limiter, "u:video:alice", limit, 100), 5);
}

TEST(RateLimiterTest, SteadyRateIsHonoured) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  const RateLimit limit{.per_second = 20, .burst = 40};
  // 10 s of one attempt per millisecond: burst + rate x elapsed allowed.
  int allowed = 0;
  for (int ms = 0; ms <= 10000; ++ms) {
    allowed += limiter.Allow("ip:video:127.0.0.1", limit) ? 1 : 0;
    clock.Advance(milliseconds(1));
  }
  EXPECT_EQ(allowed, 40 + 20 * 10);
}

TEST(RateLimiterTest, RetryAfterIsEnoughAndNotMore) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  const RateLimit limit{.per_second = 3, .burst = 2};  // 1/3 s per token: not a round number
  ASSERT_EQ(CountAllowed(limiter, "k", limit, 2), 2);
  for (int i = 0; i < 20; ++i) {
    const auto denied = limiter.Allow("k", limit);
    ASSERT_FALSE(denied);
    ASSERT_GT(denied.retry_after, Duration(0));
    EXPECT_LE(denied.retry_after, milliseconds(334));
    clock.Advance(denied.retry_after - nanoseconds(2));
    EXPECT_FALSE(limiter.Allow("k", limit)) << i;
    clock.Advance(nanoseconds(2));
    EXPECT_TRUE(limiter.Allow("k", limit)) << i;
  }
}

TEST(RateLimiterTest, CostTakesThatManyTokens) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  const RateLimit limit{.per_second = 1, .burst = 10};
  EXPECT_TRUE(limiter.Allow("k", limit, 7));
  const auto denied = limiter.Allow("k", limit, 4);  // 3 left
  EXPECT_FALSE(denied);
  EXPECT_EQ(denied.retry_after, seconds(1));
  EXPECT_TRUE(limiter.Allow("k", limit, 3));  // a denial took nothing
  EXPECT_TRUE(limiter.Allow("k", limit, 0));  // free
  // More than the burst never passes, even from a full bucket.
  clock.Advance(seconds(100));
  const auto never = limiter.Allow("k", limit, 11);
  EXPECT_FALSE(never);
  EXPECT_EQ(never.retry_after, Duration(0));  // the bucket is already full
  EXPECT_FALSE(limiter.Allow("fresh", limit, 11));
  EXPECT_EQ(CountAllowed(limiter, "k", limit, 100), 10);
}

TEST(RateLimiterTest, UnlimitedStoresNothing) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(limiter.Allow("u:video:" + std::to_string(i), RateLimit{.per_second = 0, .burst = 0}));
    EXPECT_TRUE(limiter.Allow("u:video:x", RateLimit{.per_second = -1, .burst = 5}, 1e9));
  }
  EXPECT_EQ(limiter.size(), 0u);
}

TEST(RateLimiterTest, ZeroBurstAllowsNothing) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  EXPECT_FALSE(limiter.Allow("k", RateLimit{.per_second = 5, .burst = 0}));
  clock.Advance(seconds(10));
  EXPECT_FALSE(limiter.Allow("k", RateLimit{.per_second = 5, .burst = 0}));
}

TEST(RateLimiterTest, KeysAreIndependent) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  const RateLimit limit{.per_second = 1, .burst = 3};
  EXPECT_EQ(CountAllowed(limiter, "u:video:alice", limit, 10), 3);
  EXPECT_EQ(CountAllowed(limiter, "u:video:bob", limit, 10), 3);
  EXPECT_EQ(CountAllowed(limiter, "u:comment:alice", limit, 10), 3);
  EXPECT_EQ(CountAllowed(limiter, "u:video:alice", limit, 10), 0);
  EXPECT_EQ(limiter.size(), 3u);
}

TEST(RateLimiterTest, LimitChangesApplyToExistingBuckets) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  EXPECT_EQ(CountAllowed(limiter, "k", RateLimit{.per_second = 1, .burst = 10}, 4), 4);  // 6 left
  // A reload shrinks the burst to 2: the bucket is capped at once.
  EXPECT_EQ(CountAllowed(limiter, "k", RateLimit{.per_second = 1, .burst = 2}, 10), 2);
  // ...and raises the rate: refills at the new rate.
  clock.Advance(milliseconds(100));
  EXPECT_EQ(CountAllowed(limiter, "k", RateLimit{.per_second = 10, .burst = 2}, 10), 1);
}

TEST(RateLimiterTest, MemoryIsBoundedWithManyKeys) {
  SimulatedClock clock;
  RateLimiter limiter(clock, /*max_keys=*/1000);
  const RateLimit limit{.per_second = 1, .burst = 2};
  for (int i = 0; i < 200000; ++i) {
    ASSERT_TRUE(limiter.Allow("ip:" + std::to_string(i), limit));
    ASSERT_LE(limiter.size(), 1000u);
    if (i % 10 == 0) clock.Advance(milliseconds(1));
  }
  EXPECT_GE(limiter.size(), 900u);  // the room is used, not thrown away
}

TEST(RateLimiterTest, RefilledBucketsAreDroppedBeforeLiveOnes) {
  SimulatedClock clock;
  RateLimiter limiter(clock, /*max_keys=*/6400);  // 100 per stripe
  const RateLimit slow{.per_second = 0.001, .burst = 1};
  const RateLimit fast{.per_second = 1000, .burst = 1};
  // The oldest buckets: 100 drained users, who would be the first to go under plain LRU.
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(limiter.Allow("busy:" + std::to_string(i), slow));
  // 3200 buckets that are full again a millisecond later.
  for (int i = 0; i < 3200; ++i) ASSERT_TRUE(limiter.Allow("old:" + std::to_string(i), fast));
  clock.Advance(seconds(1));
  // 4000 newcomers: the stripes overflow, and the refilled buckets make the room.
  for (int i = 0; i < 4000; ++i) {
    ASSERT_TRUE(limiter.Allow("new:" + std::to_string(i), slow));
    ASSERT_LE(limiter.size(), 6400u);
  }
  EXPECT_EQ(limiter.evicted(), 0u);
  EXPECT_LT(limiter.size(), 100u + 3200u + 4000u);  // some refilled buckets were dropped
  for (int i = 0; i < 100; ++i) {
    EXPECT_FALSE(limiter.Allow("busy:" + std::to_string(i), slow)) << i;  // still drained
  }
}

TEST(RateLimiterTest, FloodOfLiveBucketsEvictsLeastRecentlyUsed) {
  SimulatedClock clock;
  RateLimiter limiter(clock, /*max_keys=*/64);             // one bucket per stripe
  const RateLimit limit{.per_second = 0.001, .burst = 1};  // a bucket refills in 1000 s
  for (int i = 0; i < 10000; ++i) ASSERT_TRUE(limiter.Allow("k" + std::to_string(i), limit));
  EXPECT_LE(limiter.size(), 64u);
  EXPECT_GE(limiter.evicted(), 10000u - 64u);
  // Fail open: an evicted key starts again from a full bucket.
  EXPECT_TRUE(limiter.Allow("k0", limit));
}

TEST(RateLimiterTest, MaxKeysBelowStripeCountIsRaised) {
  SimulatedClock clock;
  RateLimiter limiter(clock, 1);
  EXPECT_EQ(limiter.max_keys(), RateLimiter::kStripes);
  for (int i = 0; i < 1000; ++i) (void)limiter.Allow("k" + std::to_string(i), RateLimit{1, 1});
  EXPECT_LE(limiter.size(), RateLimiter::kStripes);
}

// Several threads on one key: with time stopped, exactly the burst passes; each time the clock
// moves (between rounds, never during one: SimulatedClock is not thread-safe to advance) exactly
// rate x elapsed more. So the total allowed never exceeds burst + rate x elapsed.
TEST(RateLimiterTest, ConcurrentCallersNeverExceedTheLimit) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  const RateLimit limit{.per_second = 10, .burst = 100};
  constexpr int kThreads = 8;
  constexpr int kAttemptsPerThread = 5000;
  constexpr int kRounds = 5;
  int total = 0;
  for (int round = 0; round < kRounds; ++round) {
    std::atomic<int> allowed{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        for (int i = 0; i < kAttemptsPerThread; ++i) {
          if (limiter.Allow("u:video:alice", limit)) allowed.fetch_add(1, std::memory_order_relaxed);
        }
      });
    }
    go.store(true, std::memory_order_release);
    for (auto& th : threads) th.join();
    total += allowed.load();
    const int elapsed_s = round;  // the clock has moved `round` seconds in all
    EXPECT_EQ(total, 100 + 10 * elapsed_s) << "round " << round;
    clock.Advance(seconds(1));
  }
}

TEST(RateLimiterTest, ConcurrentCallersOnManyKeys) {
  SimulatedClock clock;
  RateLimiter limiter(clock);
  const RateLimit limit{.per_second = 1, .burst = 3};
  constexpr int kThreads = 8;
  constexpr int kKeys = 2000;
  std::vector<std::atomic<int>> allowed(kKeys);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Every thread tries every key twice, in its own order.
      for (int n = 0; n < 2 * kKeys; ++n) {
        const int k = (n * 7 + t * 131) % kKeys;
        if (limiter.Allow("u:video:" + std::to_string(k), limit)) allowed[k].fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int k = 0; k < kKeys; ++k) EXPECT_EQ(allowed[k].load(), 3) << k;
  EXPECT_EQ(limiter.size(), static_cast<size_t>(kKeys));
}

TEST(RateLimiterTest, ConcurrentFloodStaysBounded) {
  SimulatedClock clock;
  RateLimiter limiter(clock, /*max_keys=*/640);
  const RateLimit limit{.per_second = 1, .burst = 1};
  std::vector<std::thread> threads;
  threads.reserve(8);
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20000; ++i) {
        (void)limiter.Allow("ip:" + std::to_string(t) + ":" + std::to_string(i), limit);
        if (i % 1000 == 0) {
          EXPECT_LE(limiter.size(), 640u);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_LE(limiter.size(), 640u);
  EXPECT_GE(limiter.evicted(), 8u * 20000u - 640u);
}

}  // namespace
}  // namespace chorus::likes
