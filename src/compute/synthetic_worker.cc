#include "compute/synthetic_worker.h"

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "compute/worker_protocol.h"

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

void Complain(const std::string& message) {
  const std::string line = "chorus synthetic worker: " + message + "\n";
  ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
  (void)ignored;
}

class SyntheticWorker {
 public:
  explicit SyntheticWorker(const SyntheticOptions& options)
      : options_(options),
        threads_(std::max(1, options.max_concurrency)),
        pid_(getpid()) {
    const char* model = std::getenv("CHORUS_MODEL");
    model_json_ = JsonEscape(model != nullptr ? model : "");
  }

  int Run() {
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(threads_));
    for (int i = 0; i < threads_; ++i) pool.emplace_back([this] { PoolLoop(); });

    const bool input_ok = ReadRequests();
    {
      MutexLock lock(mu_);
      input_done_ = true;
    }
    cv_.NotifyAll();
    for (std::thread& t : pool) t.join();
    return input_ok && !write_failed_.load() ? 0 : 1;
  }

 private:
  // Reads and queues requests until EOF (true) or a protocol / read error (false).
  bool ReadRequests() {
    FrameDecoder decoder;
    std::vector<char> buf(64 * 1024);
    for (;;) {
      const ssize_t n = read(options_.in_fd, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        Complain(std::string("read: ") + std::strerror(errno));
        return false;
      }
      if (n == 0) {
        if (decoder.buffered() != 0) {
          Complain("input ended inside a frame (" + std::to_string(decoder.buffered()) + " bytes)");
          return false;
        }
        return true;
      }
      decoder.Append(buf.data(), static_cast<std::size_t>(n));
      for (;;) {
        auto next = decoder.Next();
        if (!next.ok()) {
          Complain(next.status().ToString());
          return false;
        }
        if (!next->has_value()) break;
        auto request = DecodeRequest(**next);
        if (!request.ok()) {
          Complain(request.status().ToString());
          return false;
        }
        {
          MutexLock lock(mu_);
          queue_.push_back(std::move(*request));
        }
        cv_.NotifyOne();
      }
    }
  }

  void PoolLoop() {
    for (;;) {
      Request request;
      {
        MutexLock lock(mu_);
        cv_.Wait(mu_, [this]() REQUIRES(mu_) { return !queue_.empty() || input_done_; });
        if (queue_.empty()) return;  // input done and nothing left
        request = std::move(queue_.front());
        queue_.pop_front();
        ++active_;
      }
      const std::string frame = Handle(request);
      // Still counted as active while the answer goes out, so `concurrent` includes this one.
      WriteFrame(frame);
      MutexLock lock(mu_);
      --active_;
    }
  }

  std::string Handle(const Request& request) {
    if (request.payload == "crash") _exit(3);
    BurnCpu(options_.cpu_ms);
    SleepMs(options_.latency_ms);
    if (request.payload == "fail") return EncodeResponse(request.id, false, "synthetic failure");
    int concurrent;
    {
      MutexLock lock(mu_);
      concurrent = active_;
    }
    const std::string answer = "{\"worker_pid\":" + std::to_string(pid_) +
                               ",\"echo_bytes\":" + std::to_string(request.payload.size()) +
                               ",\"model\":\"" + model_json_ + "\",\"concurrent\":" +
                               std::to_string(concurrent) + "}";
    return EncodeResponse(request.id, true, answer);
  }

  void WriteFrame(const std::string& frame) {
    MutexLock lock(write_mu_);
    if (write_failed_.load()) return;
    std::size_t done = 0;
    while (done < frame.size()) {
      const ssize_t n = write(options_.out_fd, frame.data() + done, frame.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        Complain(std::string("write: ") + std::strerror(errno));
        write_failed_.store(true);
        return;
      }
      done += static_cast<std::size_t>(n);
    }
  }

  const SyntheticOptions options_;
  const int threads_;
  const pid_t pid_;
  std::string model_json_;

  Mutex mu_;
  CondVar cv_;
  std::deque<Request> queue_ GUARDED_BY(mu_);
  bool input_done_ GUARDED_BY(mu_) = false;
  int active_ GUARDED_BY(mu_) = 0;  // requests taken by pool threads and not yet answered

  Mutex write_mu_;  // one frame at a time on out_fd
  std::atomic<bool> write_failed_{false};
};

}  // namespace

int RunSyntheticWorker(const SyntheticOptions& options) {
  SyntheticWorker worker(options);
  return worker.Run();
}

}  // namespace chorus::compute
