#include "net/runtime.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace chorus::net {
namespace {

using namespace std::chrono_literals;

constexpr auto kWait = 5s;  // upper bound for anything that should happen promptly

std::unique_ptr<Runtime> StartedRuntime(uint32_t shards = 2) {
  auto rt = Runtime::Create({.shards = shards, .pin_threads = false});
  EXPECT_TRUE(rt.ok()) << rt.status().ToString();
  auto runtime = std::move(rt).value();
  runtime->Start();
  return runtime;
}

// Runs fn on shard `i` and waits for its result.
template <typename Fn>
auto OnShard(Runtime& rt, uint32_t i, Fn fn) -> decltype(fn()) {
  auto done = std::make_shared<std::promise<decltype(fn())>>();
  auto result = done->get_future();
  rt.shard(i).Post([done, fn]() mutable { done->set_value(fn()); });
  EXPECT_EQ(result.wait_for(kWait), std::future_status::ready) << "shard " << i << " did not run the task";
  return result.get();
}

struct Where {
  Shard* current = nullptr;
  bool is_current = false;
  std::thread::id thread;
};

TEST(RuntimeTest, CreateChoosesShardCountAndRejectsTooMany) {
  auto one = Runtime::Create({.shards = 3, .pin_threads = false});
  ASSERT_TRUE(one.ok());
  EXPECT_EQ((*one)->size(), 3u);
  for (uint32_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*one)->shard(i).index(), i);
    EXPECT_EQ((*one)->shard(i).count(), 3u);
  }

  auto per_core = Runtime::Create({.shards = 0, .pin_threads = false});
  ASSERT_TRUE(per_core.ok());
  EXPECT_GE((*per_core)->size(), 1u);

  auto too_many = Runtime::Create({.shards = 5000, .pin_threads = false});
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
}

TEST(RuntimeTest, PostRunsOnTheTargetShardThread) {
  auto rt = StartedRuntime(2);
  EXPECT_EQ(Runtime::Current(), nullptr);
  EXPECT_FALSE(rt->shard(0).IsCurrent());

  std::vector<std::thread::id> threads;
  for (uint32_t i = 0; i < rt->size(); ++i) {
    Where w = OnShard(*rt, i, [&rt, i] {
      return Where{Runtime::Current(), rt->shard(i).IsCurrent(), std::this_thread::get_id()};
    });
    EXPECT_EQ(w.current, &rt->shard(i));
    EXPECT_TRUE(w.is_current);
    EXPECT_NE(w.thread, std::this_thread::get_id());
    threads.push_back(w.thread);
    // The other shard is not current there.
    EXPECT_FALSE(OnShard(*rt, i, [&rt, i] { return rt->shard((i + 1) % rt->size()).IsCurrent(); }));
  }
  EXPECT_NE(threads[0], threads[1]);
  // The same shard always runs on the same thread.
  EXPECT_EQ(OnShard(*rt, 0, [] { return std::this_thread::get_id(); }), threads[0]);
  rt->Stop();
}

TEST(RuntimeTest, RuntimePostWrapsTheShardIndex) {
  auto rt = StartedRuntime(2);
  std::promise<uint32_t> where;
  rt->Post(3, [&where] { where.set_value(Runtime::Current()->index()); });
  auto f = where.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(f.get(), 1u);
  rt->Stop();
}

TEST(RuntimeTest, PostsFromOneThreadRunInOrder) {
  auto rt = StartedRuntime(2);
  std::vector<int> seen;  // touched only on shard 1
  std::promise<void> done;
  for (int i = 0; i < 1000; ++i) rt->shard(1).Post([&seen, i] { seen.push_back(i); });
  rt->shard(1).Post([&done] { done.set_value(); });
  ASSERT_EQ(done.get_future().wait_for(kWait), std::future_status::ready);
  ASSERT_EQ(seen.size(), 1000u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(seen[i], i);
  rt->Stop();
}

TEST(RuntimeTest, PostsFromManyThreadsAllRun) {
  auto rt = StartedRuntime(2);
  std::atomic<int> ran{0};
  std::vector<std::thread> posters;
  for (int t = 0; t < 4; ++t) {
    posters.emplace_back([&rt, &ran, t] {
      for (int i = 0; i < 500; ++i) rt->Post(static_cast<uint32_t>(t + i), [&ran] { ran.fetch_add(1); });
    });
  }
  for (auto& p : posters) p.join();
  const auto until = std::chrono::steady_clock::now() + kWait;
  while (ran.load() < 2000 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(ran.load(), 2000);
  rt->Stop();
}

TEST(RuntimeTest, DispatchRunsInlineOnTheShardAndPostsFromElsewhere) {
  auto rt = StartedRuntime(2);
  // On its own shard: runs before Dispatch returns.
  EXPECT_TRUE(OnShard(*rt, 0, [&rt] {
    bool ran = false;
    rt->shard(0).Dispatch([&ran] { ran = true; });
    return ran;
  }));

  // From shard 0 to shard 1: not inline (that would run on shard 0's thread) but on shard 1.
  std::promise<Shard*> ran_on;
  EXPECT_FALSE(OnShard(*rt, 0, [&rt, &ran_on] {
    rt->shard(1).Dispatch([&ran_on] { ran_on.set_value(Runtime::Current()); });
    return rt->shard(1).IsCurrent();
  }));
  auto f = ran_on.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(f.get(), &rt->shard(1));

  // From a non-shard thread: runs on the shard.
  std::promise<Shard*> from_main;
  rt->shard(0).Dispatch([&from_main] { from_main.set_value(Runtime::Current()); });
  auto g = from_main.get_future();
  ASSERT_EQ(g.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(g.get(), &rt->shard(0));
  rt->Stop();
}

TEST(RuntimeTest, RunAfterFiresOnTheShard) {
  auto rt = StartedRuntime(2);
  std::promise<Shard*> fired;
  rt->shard(1).Post(
      [&rt, &fired] { rt->shard(1).RunAfter(5ms, [&fired] { fired.set_value(Runtime::Current()); }); });
  auto f = fired.get_future();
  ASSERT_EQ(f.wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(f.get(), &rt->shard(1));
  rt->Stop();
}

TEST(RuntimeTest, CancelledRunAfterNeverFires) {
  auto rt = StartedRuntime(2);
  std::atomic<bool> cancelled_fired{false};
  std::promise<void> later_fired;
  rt->shard(0).Post([&] {
    Shard& s = rt->shard(0);
    const TimerId id = s.RunAfter(10ms, [&cancelled_fired] { cancelled_fired = true; });
    // A later timer on the same shard proves the cancelled one's deadline has passed.
    s.RunAfter(60ms, [&later_fired] { later_fired.set_value(); });
    s.Cancel(id);
    s.Cancel(id);         // cancelling twice is harmless
    s.Cancel(id + 1000);  // so is an unknown id
  });
  ASSERT_EQ(later_fired.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_FALSE(cancelled_fired.load());
  rt->Stop();
}

TEST(RuntimeTest, CancelAfterFiringIsIgnored) {
  auto rt = StartedRuntime(2);
  std::promise<void> fired;
  std::promise<void> next_fired;  // set by the timer armed after the cancel
  TimerId id = 0;                 // touched only on shard 0
  rt->shard(0).Post([&] { id = rt->shard(0).RunAfter(1ms, [&fired] { fired.set_value(); }); });
  ASSERT_EQ(fired.get_future().wait_for(kWait), std::future_status::ready);
  // Cancelling the spent id must not touch a timer armed afterwards.
  rt->shard(0).Post([&] {
    TimerId next = rt->shard(0).RunAfter(1ms, [&next_fired] { next_fired.set_value(); });
    EXPECT_NE(next, id);
    rt->shard(0).Cancel(id);
  });
  ASSERT_EQ(next_fired.get_future().wait_for(kWait), std::future_status::ready);
  rt->Stop();
}

TEST(RuntimeTest, RunEveryRepeatsOnTheShardUntilItCancelsItself) {
  auto rt = StartedRuntime(2);
  std::atomic<int> runs{0};
  std::atomic<bool> off_shard{false};
  std::promise<void> third;
  std::promise<void> barrier;
  rt->shard(1).Post([&] {
    Shard& s = rt->shard(1);
    auto id = std::make_shared<TimerId>(0);
    *id = s.RunEvery(2ms, [&, id] {
      if (!rt->shard(1).IsCurrent()) off_shard = true;
      if (runs.fetch_add(1) + 1 == 3) {
        rt->shard(1).Cancel(*id);
        // Long after several more periods would have elapsed.
        rt->shard(1).RunAfter(50ms, [&barrier] { barrier.set_value(); });
        third.set_value();
      }
    });
  });
  ASSERT_EQ(third.get_future().wait_for(kWait), std::future_status::ready);
  ASSERT_EQ(barrier.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(runs.load(), 3);
  EXPECT_FALSE(off_shard.load());
  rt->Stop();
}

TEST(RuntimeTest, RunEveryCancelledFromAnotherTaskStops) {
  auto rt = StartedRuntime(2);
  std::atomic<int> runs{0};
  TimerId id = 0;  // touched only on shard 0
  rt->shard(0).Post([&] { id = rt->shard(0).RunEvery(1ms, [&runs] { runs.fetch_add(1); }); });
  const auto until = std::chrono::steady_clock::now() + kWait;
  while (runs.load() < 2 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  ASSERT_GE(runs.load(), 2);

  std::promise<int> at_cancel;
  std::promise<void> barrier;
  rt->shard(0).Post([&] {
    rt->shard(0).Cancel(id);
    at_cancel.set_value(runs.load());
    rt->shard(0).RunAfter(30ms, [&barrier] { barrier.set_value(); });
  });
  auto c = at_cancel.get_future();
  ASSERT_EQ(c.wait_for(kWait), std::future_status::ready);
  ASSERT_EQ(barrier.get_future().wait_for(kWait), std::future_status::ready);
  EXPECT_EQ(runs.load(), c.get());
  rt->Stop();
}

TEST(RuntimeTest, StopIsIdempotentAndDropsLaterWork) {
  auto rt = StartedRuntime(2);
  EXPECT_EQ(OnShard(*rt, 0, [] { return 7; }), 7);
  rt->Stop();
  rt->Stop();
  // After Stop nothing runs, and posting is still safe.
  std::atomic<bool> ran{false};
  rt->shard(0).Post([&ran] { ran = true; });
  rt->Post(1, [&ran] { ran = true; });
  rt.reset();  // the destructor stops again
  EXPECT_FALSE(ran.load());
}

TEST(RuntimeTest, StopDropsPendingTimers) {
  auto rt = StartedRuntime(2);
  auto token = std::make_shared<int>(0);
  std::weak_ptr<int> watch = token;
  std::atomic<bool> fired{false};
  std::promise<void> armed;
  rt->shard(0).Post([&, token] {
    rt->shard(0).RunAfter(1h, [token, &fired] { fired = true; });
    armed.set_value();
  });
  token.reset();
  ASSERT_EQ(armed.get_future().wait_for(kWait), std::future_status::ready);
  rt->Stop();
  EXPECT_FALSE(fired.load());
  rt.reset();
  // The timer's callback (and what it captured) was released.
  EXPECT_TRUE(watch.expired());
}

TEST(RuntimeTest, DestroyWithoutStartOrStopIsSafe) {
  auto created = Runtime::Create({.shards = 2, .pin_threads = false});
  ASSERT_TRUE(created.ok());
  std::unique_ptr<Runtime> rt = std::move(created).value();
  std::atomic<bool> ran{false};
  rt->shard(0).Post([&ran] { ran = true; });
  rt.reset();
  EXPECT_FALSE(ran.load());

  auto started = StartedRuntime(2);
  started.reset();  // no explicit Stop
}

}  // namespace
}  // namespace chorus::net
