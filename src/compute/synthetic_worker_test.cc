#include "compute/synthetic_worker.h"

#include <gtest/gtest.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "compute/testdata/worker_pipes.h"
#include "compute/worker_protocol.h"

namespace chorus::compute {
namespace {

double ProcessCpuMs() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

int JsonInt(const std::string& json, const std::string& key) {
  const std::string needle = "\"" + key + "\":";
  const auto at = json.find(needle);
  if (at == std::string::npos) return -1;
  return std::atoi(json.c_str() + at + needle.size());
}

// Runs RunSyntheticWorker in a thread over two pipes: the test writes `input`, closes it, waits
// for the worker to return and decodes everything it wrote.
struct WorkerRun {
  int exit_code = -1;
  std::vector<Response> responses;
  bool output_ok = true;
};

WorkerRun RunWorker(SyntheticOptions options, const std::string& input) {
  WorkerPipes pipes;
  options.in_fd = pipes.in[0];
  options.out_fd = pipes.out[1];
  WorkerRun run;
  std::thread worker([&run, options] { run.exit_code = RunSyntheticWorker(options); });
  pipes.Write(input);
  pipes.CloseInput();
  worker.join();
  run.responses = pipes.ReadFrames(&run.output_ok);
  return run;
}

TEST(SyntheticWorkerTest, AnswersEveryRequestAndExitsZeroAfterEof) {
  setenv("CHORUS_MODEL", "ocr/\"detect\"@v3", 1);
  const WorkerRun run = RunWorker({.max_concurrency = 2},
                            EncodeRequest(1, "hello") + EncodeRequest(2, "fail") + EncodeRequest(3, ""));
  unsetenv("CHORUS_MODEL");
  EXPECT_EQ(run.exit_code, 0);
  ASSERT_TRUE(run.output_ok);
  ASSERT_EQ(run.responses.size(), 3u);
  bool seen[4] = {};
  for (const Response& r : run.responses) {
    ASSERT_GE(r.id, 1u);
    ASSERT_LE(r.id, 3u);
    seen[r.id] = true;
    if (r.id == 2) {
      EXPECT_FALSE(r.ok);
      EXPECT_EQ(r.payload, "synthetic failure");
      continue;
    }
    EXPECT_TRUE(r.ok) << r.payload;
    EXPECT_EQ(JsonInt(r.payload, "worker_pid"), getpid());
    EXPECT_EQ(JsonInt(r.payload, "echo_bytes"), r.id == 1 ? 5 : 0);
    EXPECT_NE(r.payload.find(R"("model":"ocr/\"detect\"@v3")"), std::string::npos) << r.payload;
    EXPECT_GE(JsonInt(r.payload, "concurrent"), 1);
  }
  EXPECT_TRUE(seen[1] && seen[2] && seen[3]);
}

TEST(SyntheticWorkerTest, EmptyModelWhenUnset) {
  unsetenv("CHORUS_MODEL");
  const WorkerRun run = RunWorker({}, EncodeRequest(7, "abc"));
  EXPECT_EQ(run.exit_code, 0);
  ASSERT_EQ(run.responses.size(), 1u);
  EXPECT_NE(run.responses[0].payload.find(R"("model":"")"), std::string::npos) << run.responses[0].payload;
}

TEST(SyntheticWorkerTest, ConcurrentRequestsOverlap) {
  std::string input;
  for (uint64_t id = 1; id <= 3; ++id) input += EncodeRequest(id, "x");
  const WorkerRun run = RunWorker({.latency_ms = 200, .max_concurrency = 3}, input);
  EXPECT_EQ(run.exit_code, 0);
  ASSERT_EQ(run.responses.size(), 3u);
  int max_concurrent = 0;
  for (const Response& r : run.responses) max_concurrent = std::max(max_concurrent, JsonInt(r.payload, "concurrent"));
  EXPECT_GE(max_concurrent, 2);
  EXPECT_LE(max_concurrent, 3);
}

TEST(SyntheticWorkerTest, OneAtATimeWithConcurrencyOne) {
  std::string input;
  for (uint64_t id = 1; id <= 3; ++id) input += EncodeRequest(id, "x");
  const WorkerRun run = RunWorker({.latency_ms = 20, .max_concurrency = 1}, input);
  ASSERT_EQ(run.responses.size(), 3u);
  for (const Response& r : run.responses) EXPECT_EQ(JsonInt(r.payload, "concurrent"), 1) << r.payload;
  // With one thread answers come in request order.
  EXPECT_EQ(run.responses[0].id, 1u);
  EXPECT_EQ(run.responses[2].id, 3u);
}

TEST(SyntheticWorkerTest, BurnsTheConfiguredCpu) {
  const double before = ProcessCpuMs();
  const WorkerRun run = RunWorker({.cpu_ms = 30}, EncodeRequest(1, "x") + EncodeRequest(2, "y"));
  const double used = ProcessCpuMs() - before;
  ASSERT_EQ(run.responses.size(), 2u);
  EXPECT_GE(used, 60.0);  // a lower bound only: CPU time is burnt, never skipped
}

TEST(SyntheticWorkerTest, OversizeFrameIsAProtocolError) {
  std::string header = {'\x7f', '\x00', '\x00', '\x00'};
  const WorkerRun run = RunWorker({}, EncodeRequest(1, "before") + header);
  EXPECT_EQ(run.exit_code, 1);
  // What was read before the bad frame is still answered.
  ASSERT_EQ(run.responses.size(), 1u);
  EXPECT_EQ(run.responses[0].id, 1u);
}

TEST(SyntheticWorkerTest, TruncatedInputIsAProtocolError) {
  const std::string frame = EncodeRequest(1, "payload");
  EXPECT_EQ(RunWorker({}, frame.substr(0, frame.size() - 1)).exit_code, 1);
  // A body too short to hold the request id.
  EXPECT_EQ(RunWorker({}, std::string("\0\0\0\3abc", 7)).exit_code, 1);
}

TEST(SyntheticWorkerTest, NoInputExitsZero) {
  const WorkerRun run = RunWorker({.max_concurrency = 4}, "");
  EXPECT_EQ(run.exit_code, 0);
  EXPECT_TRUE(run.responses.empty());
}

}  // namespace
}  // namespace chorus::compute
