#include "compute/worker_process.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "support/eventually.h"

namespace chorus::compute {
namespace {

using chorus::testing::Eventually;
using namespace std::chrono_literals;
using State = WorkerProcess::State;

constexpr Duration kTimeout = 30s;  // generous: a busy machine, ASan builds

int JsonInt(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  const auto at = json.find(needle);
  if (at == std::string::npos) return -1;
  return std::atoi(json.c_str() + at + needle.size());
}

// Collects asynchronous callback results.
class Results {
 public:
  WorkerProcess::Callback Add() {
    {
      MutexLock lock(mu_);
      ++expected_;
    }
    return [this](Result<std::string> r) {
      MutexLock lock(mu_);
      results_.push_back(std::move(r));
    };
  }
  bool WaitAll() {
    return Eventually([this] {
      MutexLock lock(mu_);
      return results_.size() == expected_;
    });
  }
  std::vector<Result<std::string>> Take() {
    MutexLock lock(mu_);
    return std::move(results_);
  }
  std::size_t count() {
    MutexLock lock(mu_);
    return results_.size();
  }

 private:
  Mutex mu_;
  std::size_t expected_ GUARDED_BY(mu_) = 0;
  std::vector<Result<std::string>> results_ GUARDED_BY(mu_);
};

class WorkerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* path = std::getenv("CHORUS_TEST_WORKER");
    if (path == nullptr || *path == '\0') {
      GTEST_SKIP() << "CHORUS_TEST_WORKER is not set: it must name the test worker executable built "
                      "from src/compute/testdata/synthetic_worker_main.cc";
    }
    worker_path_ = path;
  }

  WorkerOptions Options(double latency_ms = 0, int max_concurrency = 1) const {
    WorkerOptions options;
    options.command = worker_path_;
    options.args = {"--latency-ms", std::to_string(latency_ms), "--max-concurrency",
                    std::to_string(max_concurrency)};
    options.restart_backoff_min = 10ms;
    options.restart_backoff_max = 50ms;
    options.log_prefix = "test: ";
    return options;
  }

  std::unique_ptr<WorkerProcess> MustStart(WorkerOptions options) {
    auto worker = WorkerProcess::Start(std::move(options));
    EXPECT_TRUE(worker.ok()) << worker.status().ToString();
    if (!worker.ok()) return nullptr;
    return std::move(*worker);
  }

  std::string worker_path_;
};

TEST_F(WorkerProcessTest, InvokeRoundTrip) {
  WorkerOptions options = Options();
  options.env = {{"CHORUS_MODEL", "ocr/detect@v3"}};
  auto worker = MustStart(std::move(options));
  ASSERT_NE(worker, nullptr);
  EXPECT_EQ(worker->state(), State::kRunning);
  EXPECT_GT(worker->pid(), 0);

  auto answer = worker->InvokeSync("hello", kTimeout);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  EXPECT_EQ(JsonInt(*answer, "worker_pid"), worker->pid());
  EXPECT_EQ(JsonInt(*answer, "echo_bytes"), 5);
  EXPECT_NE(answer->find(R"("model":"ocr/detect@v3")"), std::string::npos) << *answer;
  EXPECT_EQ(worker->in_flight(), 0);
  EXPECT_EQ(worker->restarts(), 0);

  // A large payload crosses the pipe in many writes.
  auto big = worker->InvokeSync(std::string(3 << 20, 'b'), kTimeout);
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(JsonInt(*big, "echo_bytes"), 3 << 20);
}

TEST_F(WorkerProcessTest, ParallelRequestsRunConcurrently) {
  constexpr int kN = 4;
  auto worker = MustStart(Options(/*latency_ms=*/200, /*max_concurrency=*/kN));
  ASSERT_NE(worker, nullptr);
  Results results;
  for (int i = 0; i < kN; ++i) worker->Invoke("req" + std::to_string(i), results.Add());
  ASSERT_TRUE(results.WaitAll());
  int max_concurrent = 0;
  for (auto& r : results.Take()) {
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    max_concurrent = std::max(max_concurrent, JsonInt(*r, "concurrent"));
  }
  EXPECT_GE(max_concurrent, 2);
  EXPECT_EQ(worker->in_flight(), 0);
}

TEST_F(WorkerProcessTest, ManyCallersOnManyThreads) {
  auto worker = MustStart(Options(/*latency_ms=*/1, /*max_concurrency=*/2));
  ASSERT_NE(worker, nullptr);
  Results results;
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&worker, &results, t] {
      for (int i = 0; i < 50; ++i) worker->Invoke(std::string(static_cast<std::size_t>(t * 50 + i), 'p'), results.Add());
    });
  }
  for (auto& t : callers) t.join();
  ASSERT_TRUE(results.WaitAll());
  std::vector<int> sizes;
  for (auto& r : results.Take()) {
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    sizes.push_back(JsonInt(*r, "echo_bytes"));
  }
  // Every answer went to the callback of its own request: each payload size exactly once.
  std::sort(sizes.begin(), sizes.end());
  ASSERT_EQ(sizes.size(), 200u);
  for (int i = 0; i < 200; ++i) ASSERT_EQ(sizes[static_cast<std::size_t>(i)], i);
}

TEST(WorkerErrorTest, BadInputKeepsItsKindEverythingElseIsInternal) {
  Status bad = WorkerError("invalid_argument: not an image (expected PNG, JPEG, TIFF, BMP, PNM)");
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.message(), "not an image (expected PNG, JPEG, TIFF, BMP, PNM)");
  EXPECT_EQ(WorkerError("synthetic failure").code(), StatusCode::kInternal);
  EXPECT_EQ(WorkerError("unavailable: try elsewhere").code(), StatusCode::kInternal)
      << "only a refusal before the hand-off may say unavailable";
  EXPECT_EQ(WorkerError("xinvalid_argument: y").code(), StatusCode::kInternal);
}

TEST_F(WorkerProcessTest, FailAnswersInternalAndKeepsTheWorker) {
  auto worker = MustStart(Options());
  ASSERT_NE(worker, nullptr);
  const pid_t pid = worker->pid();
  auto answer = worker->InvokeSync("fail", kTimeout);
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().code(), StatusCode::kInternal);
  EXPECT_EQ(answer.status().message(), "synthetic failure");
  EXPECT_TRUE(worker->InvokeSync("ok", kTimeout).ok());
  EXPECT_EQ(worker->pid(), pid);
  EXPECT_EQ(worker->restarts(), 0);
}

TEST_F(WorkerProcessTest, CrashFailsTheRequestAndRestartsTheWorker) {
  auto worker = MustStart(Options());
  ASSERT_NE(worker, nullptr);
  const pid_t first_pid = worker->pid();

  auto crashed = worker->InvokeSync("crash", kTimeout);
  ASSERT_FALSE(crashed.ok());
  EXPECT_EQ(crashed.status().code(), StatusCode::kUnavailable) << crashed.status().ToString();

  ASSERT_TRUE(Eventually([&] { return worker->state() == State::kRunning && worker->restarts() == 1; }))
      << "state " << WorkerStateName(worker->state()) << ", restarts " << worker->restarts();
  auto answer = worker->InvokeSync("after", kTimeout);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  EXPECT_NE(worker->pid(), first_pid);
  EXPECT_EQ(JsonInt(*answer, "worker_pid"), worker->pid());
  // The dead worker was reaped, not left as a zombie.
  EXPECT_EQ(kill(first_pid, 0), -1);
}

TEST_F(WorkerProcessTest, TooManyCrashesWithinTheWindowFail) {
  WorkerOptions options = Options();
  options.max_restarts = 2;
  auto worker = MustStart(std::move(options));
  ASSERT_NE(worker, nullptr);
  for (int crash = 0; crash < 3; ++crash) {
    ASSERT_TRUE(Eventually([&] { return worker->state() == State::kRunning; }))
        << "crash " << crash << ": state " << WorkerStateName(worker->state());
    auto r = worker->InvokeSync("crash", kTimeout);
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  }
  ASSERT_TRUE(Eventually([&] { return worker->state() == State::kFailed; }))
      << "state " << WorkerStateName(worker->state());
  EXPECT_EQ(worker->restarts(), 2);
  EXPECT_EQ(worker->pid(), -1);

  // Refused inline: the callback has run when Invoke returns.
  bool called = false;
  worker->Invoke("x", [&called](Result<std::string> r) {
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable);
    called = true;
  });
  EXPECT_TRUE(called);
  worker->Stop(1s);
  EXPECT_EQ(worker->state(), State::kFailed);
}

TEST_F(WorkerProcessTest, StopLetsInFlightRequestsFinish) {
  auto worker = MustStart(Options(/*latency_ms=*/300));
  ASSERT_NE(worker, nullptr);
  const pid_t pid = worker->pid();
  Results results;
  worker->Invoke("slow", results.Add());
  worker->Stop(2s);
  // Stop returned after the worker exited: the answer has been delivered by then.
  auto taken = results.Take();
  ASSERT_EQ(taken.size(), 1u);
  ASSERT_TRUE(taken[0].ok()) << taken[0].status().ToString();
  EXPECT_EQ(JsonInt(*taken[0], "worker_pid"), pid);
  EXPECT_EQ(worker->state(), State::kStopped);
  EXPECT_EQ(worker->pid(), -1);
  EXPECT_EQ(worker->restarts(), 0);
  EXPECT_EQ(kill(pid, 0), -1);

  auto after = worker->InvokeSync("late", kTimeout);
  EXPECT_EQ(after.status().code(), StatusCode::kUnavailable);
  worker->Stop(1s);  // idempotent
  EXPECT_EQ(worker->state(), State::kStopped);
}

TEST_F(WorkerProcessTest, StopKillsAWorkerThatOverrunsTheGrace) {
  auto worker = MustStart(Options(/*latency_ms=*/60'000));
  ASSERT_NE(worker, nullptr);
  Results results;
  worker->Invoke("never answered in time", results.Add());
  worker->Stop(100ms);
  auto taken = results.Take();
  ASSERT_EQ(taken.size(), 1u);
  EXPECT_EQ(taken[0].status().code(), StatusCode::kUnavailable) << taken[0].status().ToString();
  EXPECT_EQ(worker->state(), State::kStopped);
  EXPECT_EQ(worker->in_flight(), 0);
}

TEST_F(WorkerProcessTest, DestructorStopsAndReapsTheWorker) {
  auto worker = MustStart(Options());
  ASSERT_NE(worker, nullptr);
  const pid_t pid = worker->pid();
  ASSERT_EQ(kill(pid, 0), 0);
  worker.reset();
  EXPECT_EQ(kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST_F(WorkerProcessTest, KilledFromOutsideIsRestarted) {
  auto worker = MustStart(Options());
  ASSERT_NE(worker, nullptr);
  const pid_t first = worker->pid();
  ASSERT_EQ(kill(first, SIGKILL), 0);
  ASSERT_TRUE(Eventually([&] { return worker->restarts() == 1 && worker->state() == State::kRunning; }));
  EXPECT_NE(worker->pid(), first);
  EXPECT_TRUE(worker->InvokeSync("x", kTimeout).ok());
}

TEST_F(WorkerProcessTest, MissingBinaryFailsStart) {
  WorkerOptions options = Options();
  options.command = "/nonexistent/chorus-worker";
  auto worker = WorkerProcess::Start(std::move(options));
  ASSERT_FALSE(worker.ok());
  EXPECT_EQ(worker.status().code(), StatusCode::kNotFound) << worker.status().ToString();
  EXPECT_NE(worker.status().message().find("/nonexistent/chorus-worker"), std::string::npos);

  WorkerOptions relative = Options();
  relative.command = "synthetic_worker";
  auto rel = WorkerProcess::Start(std::move(relative));
  ASSERT_FALSE(rel.ok());
  EXPECT_EQ(rel.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(WorkerProcessTest, StateListenerSeesEveryTransition) {
  auto worker = MustStart(Options());
  ASSERT_NE(worker, nullptr);
  Mutex mu;
  std::vector<State> seen;
  worker->SetStateListener([&mu, &seen](State s) {
    MutexLock lock(mu);
    seen.push_back(s);
  });
  auto seen_copy = [&mu, &seen] {
    MutexLock lock(mu);
    return seen;
  };
  ASSERT_TRUE(Eventually([&] { return !seen_copy().empty(); }));
  EXPECT_EQ(seen_copy().front(), State::kRunning);

  EXPECT_FALSE(worker->InvokeSync("crash", kTimeout).ok());
  ASSERT_TRUE(Eventually([&] { return seen_copy().size() >= 3; }));
  worker->Stop(2s);
  const std::vector<State> expected = {State::kRunning, State::kRestarting, State::kRunning,
                                       State::kStopped};
  EXPECT_EQ(seen_copy(), expected);
}

// Workers that misbehave at the protocol level are killed; with no restarts allowed they fail.
class MisbehavingWorkerTest : public ::testing::Test {
 protected:
  static WorkerOptions Shell(const std::string& script) {
    WorkerOptions options;
    options.command = "/bin/sh";
    options.args = {"-c", script};
    options.max_restarts = 0;
    options.log_prefix = "misbehaving: ";
    return options;
  }
};

TEST_F(MisbehavingWorkerTest, GarbageOnStdoutKillsTheWorker) {
  // "garbage!" reads as a frame length far above 64 MiB.
  auto worker = WorkerProcess::Start(Shell("printf 'garbage!'; exec sleep 60"));
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  ASSERT_TRUE(Eventually([&] { return (*worker)->state() == State::kFailed; }))
      << WorkerStateName((*worker)->state());
}

TEST_F(MisbehavingWorkerTest, ClosedStdoutKillsTheWorker) {
  auto worker = WorkerProcess::Start(Shell("exec >&-; exec sleep 60"));
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  ASSERT_TRUE(Eventually([&] { return (*worker)->state() == State::kFailed; }))
      << WorkerStateName((*worker)->state());
}

TEST_F(MisbehavingWorkerTest, ClosedStdinFailsRequestsWithoutSigpipe) {
  // The test process does not ignore SIGPIPE: a write to the closed pipe that raised it would
  // kill the test. A payload bigger than the pipe buffer makes sure a write hits the closed end.
  auto worker = WorkerProcess::Start(Shell("exec <&-; exec sleep 60"));
  ASSERT_TRUE(worker.ok()) << worker.status().ToString();
  auto r = (*worker)->InvokeSync(std::string(1 << 20, 'x'), kTimeout);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  ASSERT_TRUE(Eventually([&] { return (*worker)->state() == State::kFailed; }));
}

}  // namespace
}  // namespace chorus::compute
