#include "compute/synthetic_worker.h"

#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace chorus::compute {
namespace {

double ThreadCpuMs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
}

void BurnCpu(double ms) {
  if (!(ms > 0)) return;
  const double until = ThreadCpuMs() + ms;
  volatile uint64_t sink = 0;
  while (ThreadCpuMs() < until) {
    for (int i = 0; i < 1000; ++i) sink = sink + static_cast<uint64_t>(i);
  }
}

void SleepMs(double ms) {
  if (!(ms > 0)) return;
  const double secs = std::floor(ms / 1e3);
  timespec ts{static_cast<time_t>(secs), static_cast<long>((ms - secs * 1e3) * 1e6)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Minimal JSON string escaping for the model name (it comes from the environment).
std::string JsonEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// The engine behind both RunSyntheticWorker and `--engine synthetic`.
class SyntheticEngine final : public Engine {
 public:
  SyntheticEngine(double cpu_ms, double latency_ms, std::string_view model)
      : cpu_ms_(cpu_ms), latency_ms_(latency_ms), pid_(getpid()), model_json_(JsonEscape(model)) {}

  std::string_view name() const override { return "synthetic"; }

  Result<std::string> Handle(std::string_view payload) override {
    if (payload == "crash") _exit(3);
    // Counted from here until the answer is made, so `concurrent` includes this request.
    active_.fetch_add(1);
    struct Leave {
      std::atomic<int>& active;
      ~Leave() { active.fetch_sub(1); }
    } leave{active_};
    BurnCpu(cpu_ms_);
    SleepMs(latency_ms_);
    if (payload == "fail") return Internal("synthetic failure");
    const int concurrent = active_.load();
    return "{\"worker_pid\":" + std::to_string(pid_) + ",\"echo_bytes\":" + std::to_string(payload.size()) +
           ",\"model\":\"" + model_json_ + "\",\"concurrent\":" + std::to_string(concurrent) + "}";
  }

  // The documented answer to "fail" is exactly "synthetic failure", without the kind: existing
  // callers (worker_process_test, benchmarks) compare it verbatim.
  std::string DescribeError(const Status& error) const override { return error.message(); }

 private:
  const double cpu_ms_;
  const double latency_ms_;
  const pid_t pid_;
  const std::string model_json_;
  std::atomic<int> active_{0};  // requests inside Handle()
};

std::string ModelFromEnvironment() {
  const char* model = std::getenv("CHORUS_MODEL");
  return model != nullptr ? model : "";
}

}  // namespace

int RunSyntheticWorker(const SyntheticOptions& options) {
  SyntheticEngine engine(options.cpu_ms, options.latency_ms, ModelFromEnvironment());
  return RunEngineWorker(
      engine, {.max_concurrency = options.max_concurrency, .in_fd = options.in_fd, .out_fd = options.out_fd});
}

Result<std::unique_ptr<Engine>> MakeSyntheticEngine(const EngineOptions& options) {
  OptionReader reader("synthetic", options);
  CHORUS_ASSIGN_OR_RETURN(const double cpu_ms, reader.Double("cpu_ms", 0, 0, 3.6e6));
  CHORUS_ASSIGN_OR_RETURN(const double latency_ms, reader.Double("latency_ms", 0, 0, 3.6e6));
  CHORUS_RETURN_IF_ERROR(reader.CheckNoneUnknown());
  const std::string model = options.model.empty() ? ModelFromEnvironment() : options.model;
  return std::unique_ptr<Engine>(new SyntheticEngine(cpu_ms, latency_ms, model));
}

}  // namespace chorus::compute
