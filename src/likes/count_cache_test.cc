#include "likes/count_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <list>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "base/random.h"

namespace chorus::likes {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using std::chrono::seconds;

Counts C(int64_t likes, int64_t dislikes = 0) { return Counts{likes, dislikes}; }

// The read path the likes service runs: a miss loads the counts (here: made up) and Put()s them.
// Returns whether it was a hit.
bool ReadThrough(CountCache& cache, const std::string& key) {
  if (cache.Get(key)) return true;
  cache.Put(key, C(static_cast<int64_t>(key.size())));
  return false;
}

// A plain LRU with the same read-through use, to show what W-TinyLFU adds.
class LruCache {
 public:
  explicit LruCache(size_t capacity) : capacity_(capacity) {}
  bool ReadThrough(const std::string& key) {
    if (auto it = index_.find(key); it != index_.end()) {
      order_.splice(order_.begin(), order_, it->second);
      return true;
    }
    order_.push_front(key);
    index_[key] = order_.begin();
    if (order_.size() > capacity_) {
      index_.erase(order_.back());
      order_.pop_back();
    }
    return false;
  }

 private:
  size_t capacity_;
  std::list<std::string> order_;
  std::unordered_map<std::string, std::list<std::string>::iterator> index_;
};

// Zipf(theta) over n keys "e:<rank>".
class Zipf {
 public:
  Zipf(size_t n, double theta, uint64_t seed) : rng_(seed), cdf_(n) {
    double sum = 0;
    for (size_t i = 0; i < n; ++i) cdf_[i] = sum += 1.0 / std::pow(static_cast<double>(i + 1), theta);
    for (double& c : cdf_) c /= sum;
  }
  std::string Next() {
    const size_t rank = std::lower_bound(cdf_.begin(), cdf_.end(), rng_.NextDouble()) - cdf_.begin();
    return "e:" + std::to_string(std::min(rank, cdf_.size() - 1));
  }

 private:
  Random rng_;
  std::vector<double> cdf_;
};

TEST(WTinyLfuCountCacheTest, MissThenHit) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 100});
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);
  cache.Put("video:1", C(10, 2));
  EXPECT_EQ(cache.Get("video:1"), C(10, 2));
  EXPECT_EQ(cache.Get("video:2"), std::nullopt);
  EXPECT_EQ(cache.size(), 1u);
  const auto s = cache.stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 2u);
}

TEST(WTinyLfuCountCacheTest, EntriesExpireAfterTtl) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 100, .ttl = seconds(2)});
  cache.Put("video:1", C(1));
  clock.Advance(seconds(2) - nanoseconds(1));
  EXPECT_EQ(cache.Get("video:1"), C(1));
  clock.Advance(nanoseconds(1));
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);
  EXPECT_EQ(cache.size(), 0u);  // dropped, not just hidden
  EXPECT_EQ(cache.stats().expired, 1u);
  EXPECT_EQ(cache.stats().misses, 1u);
  EXPECT_EQ(cache.stats().hits, 1u);
}

TEST(WTinyLfuCountCacheTest, ReadsDoNotExtendTtl) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 100, .ttl = seconds(2)});
  cache.Put("video:1", C(1));
  for (int i = 0; i < 3; ++i) {
    clock.Advance(milliseconds(600));
    EXPECT_EQ(cache.Get("video:1"), C(1));
  }
  clock.Advance(milliseconds(200));  // 2 s after the Put, however often it was read
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);
}

TEST(WTinyLfuCountCacheTest, PutReplacesValueAndRestartsTtl) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 100, .ttl = seconds(2)});
  cache.Put("video:1", C(1));
  clock.Advance(seconds(1));
  cache.Put("video:1", C(2));
  EXPECT_EQ(cache.size(), 1u);
  clock.Advance(milliseconds(1500));
  EXPECT_EQ(cache.Get("video:1"), C(2));
  clock.Advance(milliseconds(500));
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);
}

TEST(WTinyLfuCountCacheTest, UpdateRefreshesOnlyPresentEntries) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 100, .ttl = seconds(2)});
  EXPECT_FALSE(cache.Update("video:1", C(5)));
  EXPECT_EQ(cache.size(), 0u);  // Update never inserts
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);

  cache.Put("video:1", C(5));
  clock.Advance(milliseconds(1500));
  EXPECT_TRUE(cache.Update("video:1", C(6, 1)));
  clock.Advance(seconds(1));  // 2.5 s after the Put, 1 s after the Update
  EXPECT_EQ(cache.Get("video:1"), C(6, 1));
  clock.Advance(seconds(1));  // 2 s after the Update
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);
}

TEST(WTinyLfuCountCacheTest, UpdateOfExpiredEntryDropsIt) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 100, .ttl = seconds(2)});
  cache.Put("video:1", C(5));
  clock.Advance(seconds(2));
  EXPECT_FALSE(cache.Update("video:1", C(6)));
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.stats().expired, 1u);
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);
}

TEST(WTinyLfuCountCacheTest, Erase) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 100});
  cache.Put("video:1", C(1));
  cache.Put("video:2", C(2));
  cache.Erase("video:1");
  cache.Erase("video:3");  // absent: nothing happens
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.Get("video:1"), std::nullopt);
  EXPECT_EQ(cache.Get("video:2"), C(2));
  EXPECT_FALSE(cache.Update("video:1", C(9)));
  // Erased from any segment: promote video:2 to protected first, then erase it.
  EXPECT_EQ(cache.Get("video:2"), C(2));
  cache.Erase("video:2");
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Get("video:2"), std::nullopt);
}

TEST(WTinyLfuCountCacheTest, SegmentSizesFollowCaffeine) {
  SimulatedClock clock;
  WTinyLfuCountCache big(clock, {.capacity = 10000});
  EXPECT_EQ(big.window_capacity(), 100u);
  EXPECT_EQ(big.protected_capacity(), 7920u);  // 80% of the main 9900
  WTinyLfuCountCache small(clock, {.capacity = 10});
  EXPECT_EQ(small.window_capacity(), 1u);
  EXPECT_EQ(small.protected_capacity(), 7u);
}

TEST(WTinyLfuCountCacheTest, StatsFollowAdmissionDecisions) {
  SimulatedClock clock;
  // Window 1, probation + protected 2 (protected at most 1).
  WTinyLfuCountCache cache(clock, {.capacity = 3, .ttl = seconds(2)});
  EXPECT_FALSE(ReadThrough(cache, "a"));  // window [a]
  EXPECT_FALSE(ReadThrough(cache, "b"));  // a moves to the empty main region: admitted
  EXPECT_FALSE(ReadThrough(cache, "c"));  // b too
  EXPECT_EQ(cache.stats().admitted, 2u);
  EXPECT_FALSE(ReadThrough(cache, "d"));  // c (seen once) vs victim a (seen once): rejected
  EXPECT_EQ(cache.stats().rejected, 1u);
  EXPECT_EQ(cache.Get("c"), std::nullopt);
  EXPECT_TRUE(ReadThrough(cache, "a"));  // hit: a promoted to protected
  EXPECT_TRUE(ReadThrough(cache, "d"));  // still in the window
  EXPECT_TRUE(ReadThrough(cache, "d"));
  EXPECT_FALSE(ReadThrough(cache, "e"));  // d (seen 4 times) vs victim b (once): b evicted
  EXPECT_EQ(cache.Get("b"), std::nullopt);
  EXPECT_TRUE(ReadThrough(cache, "d"));
  EXPECT_TRUE(ReadThrough(cache, "a"));
  EXPECT_EQ(cache.size(), 3u);
  clock.Advance(seconds(2));
  EXPECT_EQ(cache.Get("a"), std::nullopt);  // expired
  const CountCache::Stats want{
      .hits = 5, .misses = 8, .admitted = 3, .rejected = 1, .evicted = 1, .expired = 1};
  EXPECT_EQ(cache.stats(), want);
  EXPECT_EQ(cache.size(), 2u);
}

TEST(WTinyLfuCountCacheTest, ExpiredVictimsAndCandidatesAreDroppedFirst) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 3, .ttl = seconds(2)});
  for (int i = 0; i < 10; ++i) ReadThrough(cache, "hot");  // frequent
  ReadThrough(cache, "x");
  ReadThrough(cache, "y");  // main: hot, x; window: y
  clock.Advance(seconds(2));
  // Everything has expired; a newcomer seen once replaces the expired victim instead of
  // losing to its (higher) frequency.
  ReadThrough(cache, "z");  // y, the candidate, expired: dropped
  ReadThrough(cache, "w");  // z vs expired victim: admitted
  EXPECT_EQ(cache.stats().expired, 2u);
  EXPECT_EQ(cache.stats().rejected, 0u);
  EXPECT_EQ(cache.Get("z"), C(1));
  EXPECT_EQ(cache.Get("w"), C(1));
}

TEST(WTinyLfuCountCacheTest, CapacityZeroCachesNothing) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 0});
  cache.Put("a", C(1));
  EXPECT_EQ(cache.size(), 0u);
  EXPECT_EQ(cache.Get("a"), std::nullopt);
  EXPECT_FALSE(cache.Update("a", C(2)));
}

TEST(WTinyLfuCountCacheTest, CapacityOneKeepsTheNewest) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 1});
  cache.Put("a", C(1));
  cache.Put("b", C(2));
  EXPECT_EQ(cache.size(), 1u);
  EXPECT_EQ(cache.Get("b"), C(2));
  EXPECT_EQ(cache.Get("a"), std::nullopt);
  EXPECT_EQ(cache.stats().evicted, 1u);
}

// Random operations against a model of what was last written: the cache may forget anything,
// but never exceeds its capacity and never returns a value other than the last one written, nor
// one older than the TTL.
TEST(WTinyLfuCountCacheTest, RandomOperationsKeepCapacityAndValues) {
  for (size_t capacity : {1, 2, 3, 7, 10, 100, 1000}) {
    SimulatedClock clock;
    WTinyLfuCountCache cache(clock, {.capacity = capacity, .ttl = milliseconds(500)});
    Random rng(capacity);
    Zipf keys(capacity * 5 + 10, 0.9, capacity + 1);
    struct Written {
      Counts value;
      SteadyTime at;
    };
    std::unordered_map<std::string, Written> model;
    for (int op = 0; op < 50000; ++op) {
      const std::string key = keys.Next();
      const Counts value = C(op, op % 3);
      switch (rng.Uniform(10)) {
        case 0:
        case 1:
        case 2:
        case 3:
        case 4: {
          const auto got = cache.Get(key);
          if (got) {
            ASSERT_TRUE(model.count(key)) << key;
            EXPECT_EQ(*got, model[key].value) << key;
            EXPECT_LT(clock.Now() - model[key].at, milliseconds(500)) << key;
          }
          break;
        }
        case 5:
        case 6:
          cache.Put(key, value);
          model[key] = {value, clock.Now()};
          break;
        case 7:
          if (cache.Update(key, value)) model[key] = {value, clock.Now()};
          break;
        case 8:
          cache.Erase(key);
          model.erase(key);
          break;
        case 9:
          clock.Advance(milliseconds(rng.Uniform(20)));
          break;
      }
      ASSERT_LE(cache.size(), capacity) << "capacity " << capacity << " op " << op;
    }
  }
}

TEST(WTinyLfuCountCacheTest, FrequentKeysSurviveAScanThatFlushesLru) {
  SimulatedClock clock;
  constexpr size_t kCapacity = 100;
  WTinyLfuCountCache cache(clock, {.capacity = kCapacity, .ttl = std::chrono::hours(1)});
  LruCache lru(kCapacity);
  std::vector<std::string> hot;
  hot.reserve(50);
  for (int i = 0; i < 50; ++i) hot.push_back("hot:" + std::to_string(i));
  for (int round = 0; round < 20; ++round) {
    for (const auto& key : hot) {
      ReadThrough(cache, key);
      lru.ReadThrough(key);
    }
  }
  // A scan: 900 keys read once each (a crawler paging through old videos), nine times what the
  // cache holds. (Not many more: after a few aging periods of 10 x capacity reads without a
  // single read of theirs, the hot keys would rightly be forgotten.)
  for (int i = 0; i < 900; ++i) {
    const std::string key = "scan:" + std::to_string(i);
    ReadThrough(cache, key);
    lru.ReadThrough(key);
  }
  int cache_hits = 0;
  int lru_hits = 0;
  for (const auto& key : hot) {
    cache_hits += cache.Get(key).has_value() ? 1 : 0;
    lru_hits += lru.ReadThrough(key) ? 1 : 0;
  }
  EXPECT_EQ(cache_hits, 50);
  EXPECT_EQ(lru_hits, 0);
  EXPECT_LE(cache.size(), kCapacity);
  EXPECT_GE(cache.stats().rejected, 800u);
}

TEST(WTinyLfuCountCacheTest, FrequentKeysSurviveAScanInterleavedWithTheirReads) {
  // The realistic case: the hot keys keep being read, but more one-off keys arrive between two
  // reads of a hot key than the cache holds, so LRU has always just evicted it.
  SimulatedClock clock;
  constexpr size_t kCapacity = 100;
  WTinyLfuCountCache cache(clock, {.capacity = kCapacity, .ttl = std::chrono::hours(1)});
  LruCache lru(kCapacity);
  int cache_hits = 0;
  int lru_hits = 0;
  int reads = 0;
  int scan = 0;
  for (int round = 0; round < 40; ++round) {
    for (int h = 0; h < 20; ++h) {
      const std::string key = "hot:" + std::to_string(h);
      const bool measured = round >= 10;
      reads += measured ? 1 : 0;
      cache_hits += ReadThrough(cache, key) && measured ? 1 : 0;
      lru_hits += lru.ReadThrough(key) && measured ? 1 : 0;
      for (int s = 0; s < 10; ++s) {
        const std::string one_off = "scan:" + std::to_string(scan++);
        ReadThrough(cache, one_off);
        lru.ReadThrough(one_off);
      }
    }
  }
  EXPECT_EQ(lru_hits, 0);
  EXPECT_EQ(cache_hits, reads);
}

TEST(WTinyLfuCountCacheTest, ZipfHitRatioBeatsLru) {
  SimulatedClock clock;
  constexpr size_t kCapacity = 1000;
  WTinyLfuCountCache cache(clock, {.capacity = kCapacity, .ttl = std::chrono::hours(1)});
  LruCache lru(kCapacity);
  Zipf zipf(100000, 0.99, 11);
  int cache_hits = 0;
  int lru_hits = 0;
  constexpr int kReads = 500000;
  for (int i = 0; i < kReads; ++i) {
    const std::string key = zipf.Next();
    cache_hits += ReadThrough(cache, key) ? 1 : 0;
    lru_hits += lru.ReadThrough(key) ? 1 : 0;
  }
  const double cache_ratio = static_cast<double>(cache_hits) / kReads;
  const double lru_ratio = static_cast<double>(lru_hits) / kReads;
  RecordProperty("w_tinylfu_hit_ratio", std::to_string(cache_ratio));
  RecordProperty("lru_hit_ratio", std::to_string(lru_ratio));
  EXPECT_GT(cache_ratio, lru_ratio + 0.05) << "W-TinyLFU " << cache_ratio << " vs LRU " << lru_ratio;
}

TEST(WTinyLfuCountCacheTest, SketchCountsEveryGetAndSaturatesAtFifteen) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 1000});
  EXPECT_EQ(cache.Frequency("video:1"), 0u);
  for (int i = 0; i < 7; ++i) cache.Get("video:1");  // misses count too
  EXPECT_EQ(cache.Frequency("video:1"), 7u);
  cache.Put("video:1", C(1));  // writes do not
  cache.Update("video:1", C(2));
  EXPECT_EQ(cache.Frequency("video:1"), 7u);
  for (int i = 0; i < 100; ++i) cache.Get("video:1");
  EXPECT_EQ(cache.Frequency("video:1"), 15u);
}

TEST(WTinyLfuCountCacheTest, SketchHalvesAfterTenTimesCapacityAccesses) {
  SimulatedClock clock;
  WTinyLfuCountCache cache(clock, {.capacity = 1000});
  for (int i = 0; i < 12; ++i) cache.Get("video:1");
  // 12 counted accesses so far; the halving comes at 10000.
  for (int i = 0; i < 9987; ++i) cache.Get("other:" + std::to_string(i));
  EXPECT_GE(cache.Frequency("video:1"), 12u);
  cache.Get("other:last");
  const uint32_t halved = cache.Frequency("video:1");
  EXPECT_GE(halved, 6u);
  EXPECT_LE(halved, 7u);
}

TEST(WTinyLfuCountCacheTest, ANewHotSetDisplacesAnOldOne) {
  // Aging at work: without halving, the old hot set's saturated counters would tie with the new
  // one's forever and every new candidate would be rejected.
  SimulatedClock clock;
  constexpr size_t kCapacity = 100;
  WTinyLfuCountCache cache(clock, {.capacity = kCapacity, .ttl = std::chrono::hours(1)});
  for (int round = 0; round < 50; ++round) {
    for (int k = 0; k < 90; ++k) ReadThrough(cache, "old:" + std::to_string(k));
  }
  int hits = 0;
  int reads = 0;
  for (int round = 0; round < 100; ++round) {
    for (int k = 0; k < 90; ++k) {
      const bool hit = ReadThrough(cache, "new:" + std::to_string(k));
      if (round >= 80) {
        ++reads;
        hits += hit ? 1 : 0;
      }
    }
  }
  EXPECT_GE(hits, reads * 95 / 100) << hits << " of " << reads;
}

TEST(WTinyLfuCountCacheTest, UsableThroughTheInterface) {
  SimulatedClock clock;
  std::unique_ptr<CountCache> cache =
      std::make_unique<WTinyLfuCountCache>(clock, WTinyLfuCountCache::Options{.capacity = 10});
  cache->Put("k", C(3, 1));
  EXPECT_EQ(cache->Get("k"), C(3, 1));
  EXPECT_TRUE(cache->Update("k", C(4, 1)));
  EXPECT_EQ(cache->Get("k"), C(4, 1));
  cache->Erase("k");
  EXPECT_EQ(cache->size(), 0u);
  EXPECT_EQ(cache->stats().hits, 2u);
}

}  // namespace
}  // namespace chorus::likes
