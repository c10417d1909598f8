#include "compute/engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "compute/testdata/worker_pipes.h"
#include "compute/worker_protocol.h"

namespace chorus::compute {
namespace {

// A fake engine whose requests can be held inside Handle() until the test lets them go, so
// concurrency is proven by who is inside at once rather than by timing.
//   "bad"    -> invalid_argument error
//   "throw"  -> throws (a bug in an engine)
//   "wait:N" -> blocks until N requests have been inside at once (or 10 s pass: a deadlock guard)
//   "gate"   -> blocks until Release()
//   else     -> echoes "echo:" + payload
class FakeEngine final : public Engine {
 public:
  std::string_view name() const override { return "fake"; }

  Result<std::string> Handle(std::string_view payload) override {
    std::unique_lock lock(mu_);
    ++inside_;
    max_inside_ = std::max(max_inside_, inside_);
    cv_.notify_all();
    struct Leave {
      FakeEngine& e;
      ~Leave() { --e.inside_; }
    } leave{*this};
    if (payload == "bad") return InvalidArgument("bad thing");
    if (payload == "throw") throw std::runtime_error("boom");
    if (payload.substr(0, 5) == "wait:") {
      const int want = std::stoi(std::string(payload.substr(5)));
      if (!cv_.wait_for(lock, std::chrono::seconds(10), [&] { return max_inside_ >= want; })) {
        return DeadlineExceeded("never saw " + std::to_string(want) + " requests at once");
      }
      return std::string("together");
    }
    if (payload == "gate") {
      cv_.wait(lock, [&] { return released_; });
      return std::string("released");
    }
    return "echo:" + std::string(payload);
  }

  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

  int max_inside() {
    std::lock_guard lock(mu_);
    return max_inside_;
  }

  // Blocks until `n` requests are inside Handle() at once.
  bool WaitInside(int n) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return inside_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int inside_ = 0;
  int max_inside_ = 0;
  bool released_ = false;
};


// Runs the loop over pipes on `input` (written whole, then EOF) and decodes what it answered.
struct LoopRun {
  int exit_code = -1;
  bool clean = false;
  std::map<uint64_t, Response> responses;
};
LoopRun RunLoop(Engine& engine, int max_concurrency, const std::string& input) {
  WorkerPipes p;
  LoopRun run;
  std::thread worker([&] {
    run.exit_code =
        RunEngineWorker(engine, {.max_concurrency = max_concurrency, .in_fd = p.in[0], .out_fd = p.out[1]});
  });
  p.Write(input);
  p.CloseInput();
  worker.join();
  run.responses = p.ReadAll(&run.clean);
  return run;
}

TEST(EngineRegistryTest, UnknownEngineIsNotFoundAndNamesTheKnownOnes) {
  auto engine = MakeEngine("ocr-detekt", {});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), StatusCode::kNotFound);
  EXPECT_NE(engine.status().message().find("unknown engine \"ocr-detekt\""), std::string::npos);
  for (const char* name : {"moderation", "ocr", "ocr-detect", "ocr-recognize", "synthetic"}) {
    EXPECT_NE(engine.status().message().find(name), std::string::npos) << engine.status().message();
  }
}

TEST(EngineRegistryTest, ExecIsExplainedNotUnknown) {
  auto engine = MakeEngine("exec", {});
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(engine.status().message().find("node starts the app's own command"), std::string::npos);
}

TEST(EngineRegistryTest, ListsEveryEngineSorted) {
  EXPECT_EQ(EngineNames(),
            (std::vector<std::string>{"moderation", "ocr", "ocr-detect", "ocr-recognize", "synthetic"}));
}

TEST(EngineRegistryTest, BuildsTheSyntheticEngineWithOptions) {
  EngineOptions options;
  options.model = "m1";
  ASSERT_TRUE(ParseEngineOptionArgs({"cpu_ms=0", "latency_ms=0.5"}, options).ok());
  auto engine = MakeEngine("synthetic", options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  EXPECT_EQ((*engine)->name(), "synthetic");
  auto answer = (*engine)->Handle("abc");
  ASSERT_TRUE(answer.ok());
  EXPECT_NE(answer->find("\"echo_bytes\":3"), std::string::npos) << *answer;
  EXPECT_NE(answer->find("\"model\":\"m1\""), std::string::npos) << *answer;
  auto failed = (*engine)->Handle("fail");
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ((*engine)->DescribeError(failed.status()), "synthetic failure");
}

TEST(EngineRegistryTest, BadOptionsAreClearErrors) {
  EngineOptions options;
  EXPECT_FALSE(ParseEngineOptionArgs({"novalue"}, options).ok());
  EXPECT_FALSE(ParseEngineOptionArgs({"=x"}, options).ok());
  EXPECT_FALSE(ParseEngineOptionArgs({"a=1", "a=2"}, options).ok());

  EngineOptions typo;
  ASSERT_TRUE(ParseEngineOptionArgs({"cpu_msec=5"}, typo).ok());
  auto engine = MakeEngine("synthetic", typo);
  ASSERT_FALSE(engine.ok());
  EXPECT_EQ(engine.status().ToString(),
            "invalid_argument: unknown synthetic option cpu_msec (known: cpu_ms, latency_ms)");

  EngineOptions negative;
  ASSERT_TRUE(ParseEngineOptionArgs({"latency_ms=-1"}, negative).ok());
  auto bad = MakeEngine("synthetic", negative);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("latency_ms=\"-1\""), std::string::npos) << bad.status().message();
}

TEST(EngineRegistryTest, ValuesMayContainEquals) {
  EngineOptions options;
  ASSERT_TRUE(ParseEngineOptionArgs({"k=a=b", "empty="}, options).ok());
  EXPECT_EQ(options.values.at("k"), "a=b");
  EXPECT_EQ(options.values.at("empty"), "");
}

TEST(CheckPayloadSizeTest, EmptyAndOversize) {
  EXPECT_EQ(CheckPayloadSize("", 10, "an image").ToString(),
            "invalid_argument: empty payload (expected an image)");
  EXPECT_EQ(CheckPayloadSize("0123456789x", 10, "an image").ToString(),
            "invalid_argument: payload of 11 bytes exceeds the 10-byte limit");
  EXPECT_TRUE(CheckPayloadSize("0123456789", 10, "an image").ok());
}

TEST(EngineWorkerTest, RunsRequestsConcurrentlyUpToTheLimit) {
  FakeEngine engine;
  const LoopRun run = RunLoop(
      engine, 3, EncodeRequest(1, "wait:3") + EncodeRequest(2, "wait:3") + EncodeRequest(3, "wait:3"));
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_TRUE(run.clean);
  ASSERT_EQ(run.responses.size(), 3u);
  for (const auto& [id, r] : run.responses) {
    EXPECT_TRUE(r.ok) << r.payload;
    EXPECT_EQ(r.payload, "together");
  }
  EXPECT_EQ(engine.max_inside(), 3);
}

TEST(EngineWorkerTest, ConcurrencyOneRunsOneAtATimeInOrder) {
  FakeEngine engine;
  const LoopRun run =
      RunLoop(engine, 1, EncodeRequest(1, "a") + EncodeRequest(2, "b") + EncodeRequest(3, "c"));
  EXPECT_EQ(run.exit_code, 0);
  ASSERT_EQ(run.responses.size(), 3u);
  EXPECT_EQ(run.responses.at(2).payload, "echo:b");
  EXPECT_EQ(engine.max_inside(), 1);
}

TEST(EngineWorkerTest, ErrorsAndExceptionsAreAnswersAndTheWorkerKeepsServing) {
  FakeEngine engine;
  const LoopRun run = RunLoop(
      engine, 1,
      EncodeRequest(1, "bad") + EncodeRequest(2, "throw") + EncodeRequest(3, "after") + EncodeRequest(4, ""));
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_TRUE(run.clean);
  ASSERT_EQ(run.responses.size(), 4u);
  EXPECT_FALSE(run.responses.at(1).ok);
  EXPECT_EQ(run.responses.at(1).payload, "invalid_argument: bad thing");
  EXPECT_FALSE(run.responses.at(2).ok);
  EXPECT_EQ(run.responses.at(2).payload, "internal: engine failed: boom");
  EXPECT_TRUE(run.responses.at(3).ok);
  EXPECT_EQ(run.responses.at(3).payload, "echo:after");
  EXPECT_TRUE(run.responses.at(4).ok);
  EXPECT_EQ(run.responses.at(4).payload, "echo:");
}

TEST(EngineWorkerTest, EofDrainsRequestsInFlight) {
  FakeEngine engine;
  WorkerPipes p;
  int exit_code = -1;
  std::thread worker([&] {
    exit_code = RunEngineWorker(engine, {.max_concurrency = 2, .in_fd = p.in[0], .out_fd = p.out[1]});
  });
  p.Write(EncodeRequest(7, "gate") + EncodeRequest(8, "gate") + EncodeRequest(9, "queued"));
  // Both pool threads are held and request 9 waits in the queue; no ASSERT before the join.
  EXPECT_TRUE(engine.WaitInside(2));
  p.CloseInput();  // EOF while two are in flight and one is queued
  engine.Release();
  worker.join();
  bool clean = false;
  const auto responses = p.ReadAll(&clean);
  EXPECT_EQ(exit_code, 0);
  EXPECT_TRUE(clean);
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(responses.at(7).payload, "released");
  EXPECT_EQ(responses.at(8).payload, "released");
  EXPECT_EQ(responses.at(9).payload, "echo:queued");
}

TEST(EngineWorkerTest, ProtocolErrorFinishesWhatWasReadAndExitsOne) {
  FakeEngine engine;
  const std::string oversize = {'\x7f', '\x00', '\x00', '\x00'};
  const LoopRun run = RunLoop(engine, 2, EncodeRequest(1, "before") + oversize);
  EXPECT_EQ(run.exit_code, 1);
  ASSERT_EQ(run.responses.size(), 1u);
  EXPECT_EQ(run.responses.at(1).payload, "echo:before");
}

}  // namespace
}  // namespace chorus::compute
