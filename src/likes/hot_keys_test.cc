#include "likes/hot_keys.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
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

// Zipf(theta) over n keys whose popularity order is shuffled, so that rank says nothing about
// the key's name (or hash).
class ZipfKeys {
 public:
  ZipfKeys(size_t n, double theta, uint64_t seed) : rng_(seed), names_(n), cdf_(n) {
    double sum = 0;
    for (size_t i = 0; i < n; ++i) {
      sum += 1.0 / std::pow(static_cast<double>(i + 1), theta);
      cdf_[i] = sum;
    }
    for (double& c : cdf_) c /= sum;
    std::vector<size_t> ids(n);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    for (size_t i = 0; i < n; ++i) names_[i] = "video:" + std::to_string(ids[i]);
  }
  const std::string& Next() {
    const size_t rank = std::lower_bound(cdf_.begin(), cdf_.end(), rng_.NextDouble()) - cdf_.begin();
    return names_[std::min(rank, names_.size() - 1)];
  }

 private:
  Random rng_;
  std::vector<std::string> names_;
  std::vector<double> cdf_;
};

std::vector<std::string> TrueTop(const std::unordered_map<std::string, uint64_t>& counts, size_t k) {
  std::vector<std::pair<std::string, uint64_t>> all(counts.begin(), counts.end());
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  std::vector<std::string> out;
  for (size_t i = 0; i < k && i < all.size(); ++i) out.push_back(all[i].first);
  return out;
}

std::set<std::string> Names(const std::vector<std::pair<std::string, uint64_t>>& top) {
  std::set<std::string> out;
  for (const auto& [k, v] : top) out.insert(k);
  return out;
}

TEST(HotKeyDetectorTest, KeyBecomesHotAtThreshold) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.threshold = 100});
  for (int i = 1; i < 100; ++i) {
    EXPECT_FALSE(d.Record("video:1")) << i;
  }
  EXPECT_FALSE(d.IsHot("video:1"));
  EXPECT_EQ(d.Estimate("video:1"), 99u);
  EXPECT_TRUE(d.Record("video:1"));
  EXPECT_TRUE(d.IsHot("video:1"));
  EXPECT_EQ(d.Estimate("video:1"), 100u);
}

TEST(HotKeyDetectorTest, WeightedRecordCountsEveryAccess) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.threshold = 100});
  EXPECT_FALSE(d.Record("video:1", 60));
  EXPECT_TRUE(d.Record("video:1", 40));
  EXPECT_EQ(d.Estimate("video:1"), 100u);
  // n = 0 only asks.
  EXPECT_TRUE(d.Record("video:1", 0));
  EXPECT_FALSE(d.Record("video:2", 0));
  EXPECT_EQ(d.Estimate("video:2"), 0u);
}

TEST(HotKeyDetectorTest, KeysBelowThresholdAreNotHot) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.threshold = 100});
  // 500 warm keys at 60 accesses each, interleaved, plus one genuinely hot key.
  for (int round = 0; round < 60; ++round) {
    for (int k = 0; k < 500; ++k) d.Record("warm:" + std::to_string(k));
    d.Record("hot", 3);
  }
  int hot_warm = 0;
  for (int k = 0; k < 500; ++k) hot_warm += d.IsHot("warm:" + std::to_string(k)) ? 1 : 0;
  EXPECT_EQ(hot_warm, 0);
  EXPECT_TRUE(d.IsHot("hot"));
  EXPECT_FALSE(d.IsHot("never-seen"));
}

TEST(HotKeyDetectorTest, HotKeyCoolsAfterAFullWindowWithoutAccesses) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.window = seconds(1), .slots = 5, .threshold = 100});
  d.Record("video:1", 500);
  ASSERT_TRUE(d.IsHot("video:1"));
  // Still inside the window: the access's sub-window is one of the five live ones.
  clock.Advance(milliseconds(999));
  EXPECT_TRUE(d.IsHot("video:1"));
  EXPECT_EQ(d.TopK().size(), 1u);
  // A full window later it is cold, on time alone (no Record() rotated anything)...
  clock.Advance(milliseconds(1));
  EXPECT_FALSE(d.IsHot("video:1"));
  EXPECT_EQ(d.Estimate("video:1"), 0u);
  EXPECT_TRUE(d.TopK().empty());
  // ...and stays cold once a Record() rotates the sketches.
  EXPECT_FALSE(d.Record("video:2"));
  EXPECT_FALSE(d.IsHot("video:1"));
  ASSERT_EQ(d.TopK().size(), 1u);
  EXPECT_EQ(d.TopK()[0].first, "video:2");
}

TEST(HotKeyDetectorTest, WindowSlidesBySubWindow) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.window = seconds(1), .slots = 5, .threshold = 100});
  d.Record("video:1", 60);  // sub-window [0, 200ms)
  clock.Advance(milliseconds(200));
  EXPECT_FALSE(d.Record("video:1", 30));  // [200, 400ms)
  clock.Advance(milliseconds(600));
  EXPECT_TRUE(d.Record("video:1", 10));  // [800ms, 1s): 60 + 30 + 10
  EXPECT_EQ(d.Estimate("video:1"), 100u);
  clock.Advance(milliseconds(200));  // 1s: the first sub-window has left the window
  EXPECT_EQ(d.Estimate("video:1"), 40u);
  EXPECT_FALSE(d.IsHot("video:1"));
  EXPECT_FALSE(d.Record("video:1", 59));
  EXPECT_TRUE(d.Record("video:1", 1));
  clock.Advance(milliseconds(200));  // 1.2s: the second one too
  EXPECT_EQ(d.Estimate("video:1"), 70u);
}

TEST(HotKeyDetectorTest, LongPauseClearsEverything) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.threshold = 10});
  for (int k = 0; k < 50; ++k) d.Record("k" + std::to_string(k), 20);
  clock.Advance(std::chrono::hours(5) + nanoseconds(7));
  EXPECT_FALSE(d.Record("k1"));
  EXPECT_EQ(d.Estimate("k1"), 1u);
  EXPECT_EQ(d.Estimate("k2"), 0u);
  EXPECT_EQ(d.TopK().size(), 1u);
  // The sub-window grid survived the pause: 5 hours + 7 ns is 7 ns into a sub-window.
  clock.Advance(milliseconds(200) - nanoseconds(8));
  d.Record("k1");
  clock.Advance(nanoseconds(1));
  d.Record("k1");
  EXPECT_EQ(d.Estimate("k1"), 3u);
  clock.Advance(milliseconds(800));  // the first sub-window (two accesses) has now ended
  EXPECT_EQ(d.Estimate("k1"), 1u);
}

TEST(HotKeyDetectorTest, TopKIsHottestFirstAndBounded) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.top_k = 3, .threshold = 1});
  // Keys 1..8 with 10*i accesses, recorded one at a time in interleaved order.
  for (int round = 0; round < 80; ++round) {
    for (int i = 1; i <= 8; ++i) {
      if (round < 10 * i) d.Record("k" + std::to_string(i));
    }
  }
  const auto top = d.TopK();
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0], std::make_pair(std::string("k8"), uint64_t{80}));
  EXPECT_EQ(top[1], std::make_pair(std::string("k7"), uint64_t{70}));
  EXPECT_EQ(top[2], std::make_pair(std::string("k6"), uint64_t{60}));
}

TEST(HotKeyDetectorTest, DecayProtectsElephantsFromMice) {
  SimulatedClock clock;
  // One bucket: every key competes for it.
  HotKeyDetector d(clock, {.width = 1, .depth = 1, .threshold = 1000});
  d.Record("elephant", 2000);
  for (int i = 0; i < 100000; ++i) d.Record("mouse:" + std::to_string(i));
  // 1.08^-2000 per access: the elephant is not dislodged.
  EXPECT_EQ(d.Estimate("elephant"), 2000u);
  EXPECT_TRUE(d.IsHot("elephant"));
  EXPECT_EQ(d.Estimate("mouse:5"), 0u);
}

TEST(HotKeyDetectorTest, WeightedAccessesDecayAndTakeOverALightResident) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.width = 1, .depth = 1, .threshold = 500});
  d.Record("light", 10);
  // 1.08^-10 ~ 0.46: the resident decays to zero within a few dozen of the 100000 accesses and
  // the newcomer takes the bucket with the rest.
  EXPECT_TRUE(d.Record("heavy", 100000));
  EXPECT_EQ(d.Estimate("light"), 0u);
  EXPECT_GE(d.Estimate("heavy"), 99900u);
  EXPECT_LE(d.Estimate("heavy"), 100000u);
}

TEST(HotKeyDetectorTest, ZipfTopTenAreFound) {
  SimulatedClock clock;
  HotKeyDetector d(clock);  // defaults: top 64, 2 x 1024 buckets
  ZipfKeys zipf(100000, 0.99, 42);
  std::unordered_map<std::string, uint64_t> truth;
  for (int i = 0; i < 1000000; ++i) {
    const std::string& key = zipf.Next();
    ++truth[key];
    d.Record(key);
  }
  const auto top = d.TopK();
  const auto names = Names(top);
  std::unordered_map<std::string, uint64_t> estimated(top.begin(), top.end());
  for (const std::string& key : TrueTop(truth, 10)) {
    EXPECT_TRUE(names.count(key)) << key << " (true count " << truth[key] << ") missing from TopK";
    // HeavyKeeper's estimates of heavy keys are within a percent, and never above.
    EXPECT_LE(estimated[key], truth[key]) << key;
    EXPECT_GE(static_cast<double>(estimated[key]), 0.99 * static_cast<double>(truth[key])) << key;
  }
  // Beyond the top ten, the table holds nearly all of the true top 64 (~1300 accesses each
  // against a mean of 10).
  size_t found = 0;
  for (const std::string& key : TrueTop(truth, 64)) found += names.count(key);
  EXPECT_GE(found, 58u);
}

TEST(HotKeyDetectorTest, ZipfTopTenAreFoundInASlidingWindow) {
  SimulatedClock clock;
  const SteadyTime start = clock.Now();
  HotKeyDetector d(clock, {.window = seconds(1), .slots = 5});
  ZipfKeys zipf(100000, 0.99, 7);
  // 2.5 s of traffic, one access per 2 us; only the live sub-windows count at the end.
  std::vector<std::pair<SteadyTime, const std::string*>> log;
  for (int i = 0; i < 1250000; ++i) {
    const std::string& key = zipf.Next();
    log.emplace_back(clock.Now(), &key);
    d.Record(key);
    clock.Advance(std::chrono::microseconds(2));
  }
  const Duration slot = milliseconds(200);
  const auto current = (clock.Now() - start) / slot;
  const SteadyTime live_from = start + slot * (current - 4);
  std::unordered_map<std::string, uint64_t> truth;
  for (const auto& [t, key] : log) {
    if (t >= live_from) ++truth[*key];
  }
  const auto names = Names(d.TopK());
  for (const std::string& key : TrueTop(truth, 10)) {
    EXPECT_TRUE(names.count(key)) << key << " (true count " << truth[key] << ") missing from TopK";
    EXPECT_LE(d.Estimate(key), truth[key]) << key;
    EXPECT_GE(static_cast<double>(d.Estimate(key)), 0.98 * static_cast<double>(truth[key])) << key;
  }
}

TEST(HotKeyDetectorTest, MemoryDoesNotGrowWithDistinctKeys) {
  SimulatedClock clock;
  HotKeyDetector d(clock, {.top_k = 16, .width = 256, .depth = 2, .slots = 4});
  // Every key name has the same length, so the table's strings weigh the same.
  auto key = [](int i) {
    std::string s = std::to_string(i);
    return "user:" + std::string(8 - s.size(), '0') + s;
  };
  // A flood of one-off keys with, every 1000 of them, a round of 16 heavy ones that keep the
  // top-k table full.
  auto feed = [&](int from, int to) {
    for (int i = from; i < to; ++i) {
      d.Record(key(i), 1 + i % 7);
      if (i % 1000 == 0) {
        for (int h = 0; h < 16; ++h) d.Record(key(10000000 + h), 50);
      }
    }
  };
  feed(0, 1000);
  const size_t after_thousand = d.MemoryBytes();
  feed(1000, 300000);
  EXPECT_LE(d.MemoryBytes(), after_thousand);
  const auto top = d.TopK();
  ASSERT_EQ(top.size(), 16u);
  for (const auto& [k, count] : top) EXPECT_GE(k, key(10000000)) << k;
  // The bound the header promises: buckets plus the table, nothing per distinct key.
  const size_t buckets = size_t{4} * 2 * 256 * 8;
  EXPECT_GE(d.MemoryBytes(), buckets);
  EXPECT_LE(d.MemoryBytes(), buckets + size_t{16} * 1024);
}

TEST(HotKeyDetectorTest, DeterministicForASeed) {
  auto run = [](uint64_t seed) {
    SimulatedClock clock;
    // Few buckets, so decays (the random part) happen constantly.
    HotKeyDetector d(clock, {.top_k = 20, .width = 32, .depth = 2, .threshold = 50, .seed = seed});
    ZipfKeys zipf(5000, 0.99, 3);
    std::vector<bool> hot;
    for (int i = 0; i < 200000; ++i) {
      hot.push_back(d.Record(zipf.Next()));
      if (i % 1000 == 999) clock.Advance(milliseconds(37));
    }
    return std::make_pair(d.TopK(), hot);
  };
  const auto a = run(1);
  const auto b = run(1);
  EXPECT_EQ(a.first, b.first);
  EXPECT_TRUE(a.second == b.second);
  ASSERT_FALSE(a.first.empty());
  // Another seed lays keys out differently: the outcome is allowed to differ, and does here.
  const auto c = run(2);
  EXPECT_FALSE(a.first == c.first && a.second == c.second);
}

TEST(HotKeyDetectorTest, DegenerateOptionsAreRaisedToUsableValues) {
  SimulatedClock clock;
  HotKeyDetector d(clock,
                   {.top_k = 0, .width = 0, .depth = 0, .window = Duration(0), .slots = 0, .threshold = 0});
  EXPECT_EQ(d.options().top_k, 1u);
  EXPECT_EQ(d.options().width, 1u);
  EXPECT_EQ(d.options().depth, 1u);
  EXPECT_EQ(d.options().slots, 1u);
  EXPECT_EQ(d.options().window, nanoseconds(1));
  // threshold 0: any key with a non-zero estimate is hot, an unseen key is not.
  EXPECT_TRUE(d.Record("a"));
  EXPECT_FALSE(d.IsHot("b"));
  clock.Advance(nanoseconds(1));
  EXPECT_FALSE(d.IsHot("a"));
}

}  // namespace
}  // namespace chorus::likes
