#include "base/clock.h"

#include <gtest/gtest.h>

#include <vector>

#include "base/random.h"
#include "base/status.h"

namespace chorus {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(SimulatedClockTest, TimersFireInDueOrderWithClockAtDueTime) {
  SimulatedClock clock;
  const SteadyTime start = clock.Now();
  std::vector<std::pair<int, Duration>> fired;
  clock.RunAfter(milliseconds(300), [&] { fired.emplace_back(3, clock.Now() - start); });
  clock.RunAfter(milliseconds(100), [&] { fired.emplace_back(1, clock.Now() - start); });
  clock.RunAfter(milliseconds(200), [&] { fired.emplace_back(2, clock.Now() - start); });
  clock.Advance(milliseconds(150));
  ASSERT_EQ(fired.size(), 1u);
  EXPECT_EQ(fired[0], std::make_pair(1, Duration(milliseconds(100))));
  clock.Advance(milliseconds(150));
  ASSERT_EQ(fired.size(), 3u);
  EXPECT_EQ(fired[1].first, 2);
  EXPECT_EQ(fired[2].first, 3);
  EXPECT_EQ(clock.Now() - start, milliseconds(300));
}

TEST(SimulatedClockTest, CancelledTimerDoesNotFire) {
  SimulatedClock clock;
  bool fired = false;
  TimerId id = clock.RunAfter(seconds(1), [&] { fired = true; });
  clock.Cancel(id);
  clock.Advance(seconds(2));
  EXPECT_FALSE(fired);
  EXPECT_EQ(clock.pending_timers(), 0u);
}

TEST(SimulatedClockTest, PeriodicTimerRepeatsUntilCancelled) {
  SimulatedClock clock;
  int ticks = 0;
  TimerId id = 0;
  id = clock.RunEvery(seconds(1), [&] {
    if (++ticks == 5) clock.Cancel(id);
  });
  clock.Advance(seconds(3) + milliseconds(500));
  EXPECT_EQ(ticks, 3);
  clock.Advance(seconds(10));
  EXPECT_EQ(ticks, 5);
  EXPECT_EQ(clock.pending_timers(), 0u);
}

TEST(SimulatedClockTest, TimerScheduledFromCallbackRunsInSameAdvance) {
  SimulatedClock clock;
  std::vector<int> order;
  clock.RunAfter(milliseconds(10), [&] {
    order.push_back(1);
    clock.RunAfter(milliseconds(10), [&] { order.push_back(2); });
  });
  clock.Advance(milliseconds(25));
  EXPECT_EQ(order, (std::vector<int>{1, 2}));
}

TEST(SimulatedClockTest, WallClockMovesWithSteady) {
  SimulatedClock clock;
  const int64_t before = clock.WallMillis();
  clock.Advance(milliseconds(1234));
  EXPECT_EQ(clock.WallMillis() - before, 1234);
}

TEST(RandomTest, SameSeedSameStream) {
  Random a(42), b(42), c(43);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.Next();
    EXPECT_EQ(x, b.Next());
    differs |= x != c.Next();
  }
  EXPECT_TRUE(differs);
}

TEST(RandomTest, UniformStaysInRangeAndCoversIt) {
  Random r(7);
  std::vector<int> seen(10);
  for (int i = 0; i < 10000; ++i) {
    const uint64_t v = r.Uniform(10);
    ASSERT_LT(v, 10u);
    ++seen[v];
  }
  for (int n : seen) EXPECT_GT(n, 800);  // ~1000 each
  for (int i = 0; i < 1000; ++i) {
    const double d = r.NextDouble();
    ASSERT_GE(d, 0.0);
    ASSERT_LT(d, 1.0);
  }
}

TEST(StatusTest, ResultCarriesValueOrError) {
  Result<int> ok = 5;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 5);
  Result<int> bad = NotFound("no such room");
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().ToString(), "not_found: no such room");
  EXPECT_EQ(bad.status().WithContext("live").message(), "live: no such room");
}

Status Chain(int x, int* out) {
  auto f = [](int v) -> Result<int> {
    if (v < 0) return InvalidArgument("negative");
    return v * 2;
  };
  CHORUS_ASSIGN_OR_RETURN(int doubled, f(x));
  *out = doubled;
  return Status::Ok();
}

TEST(StatusTest, Macros) {
  int out = 0;
  EXPECT_TRUE(Chain(4, &out).ok());
  EXPECT_EQ(out, 8);
  EXPECT_EQ(Chain(-1, &out).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chorus
