#include "compute/engine.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <thread>
#include <utility>

#include "base/mutex.h"
#include "compute/moderation_engine.h"
#include "compute/ocr_engine.h"
#include "compute/ocr_pipeline_engine.h"
#include "compute/synthetic_worker.h"
#include "compute/worker_protocol.h"

namespace chorus::compute {
namespace {

using Factory = Result<std::unique_ptr<Engine>> (*)(const EngineOptions&);

struct Registered {
  std::string_view name;
  Factory factory;
};

// The registry is an explicit table rather than self-registering statics: chorus_compute is a
// static library, and a linker drops object files nobody references, registrations included.
constexpr Registered kEngines[] = {
    {"moderation", &MakeModerationEngine},
    {"ocr", &MakeOcrPipelineEngine},
    {"ocr-detect", &MakeOcrDetectEngine},
    {"ocr-recognize", &MakeOcrRecognizeEngine},
    {"synthetic", &MakeSyntheticEngine},
};

std::string FormatNumber(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string Joined(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

// The worker loop: the calling thread reads frames and queues requests; pool threads take them,
// run the engine and write answers. One mutex guards the queue, one serialises writes.
class WorkerLoop {
 public:
  WorkerLoop(Engine& engine, const WorkerLoopOptions& options)
      : engine_(engine), options_(options), threads_(std::max(1, options.max_concurrency)) {}

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
  void Complain(const std::string& message) const {
    const std::string line = "chorus worker (" + std::string(engine_.name()) + "): " + message + "\n";
    ssize_t ignored = write(STDERR_FILENO, line.data(), line.size());
    (void)ignored;
  }

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
      }
      WriteFrame(Answer(request));
    }
  }

  std::string Answer(const Request& request) {
    Result<std::string> result = Internal("no answer");
    // Engines return errors as values; an exception is a bug in an engine or a library it
    // calls (std::bad_alloc on a huge input included). Answer it and keep serving.
    try {
      result = engine_.Handle(request.payload);
    } catch (const std::exception& e) {
      result = Internal(std::string("engine failed: ") + e.what());
      Complain("request " + std::to_string(request.id) + ": exception: " + e.what());
    } catch (...) {
      result = Internal("engine failed");
      Complain("request " + std::to_string(request.id) + ": unknown exception");
    }
    if (!result.ok()) return EncodeResponse(request.id, false, engine_.DescribeError(result.status()));
    if (result->size() > kMaxResponsePayload) {
      return EncodeResponse(request.id, false,
                            engine_.DescribeError(ResourceExhausted(
                                "answer of " + std::to_string(result->size()) + " bytes exceeds the " +
                                std::to_string(kMaxResponsePayload) + "-byte response limit")));
    }
    return EncodeResponse(request.id, true, *result);
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

  Engine& engine_;
  const WorkerLoopOptions options_;
  const int threads_;

  Mutex mu_;
  CondVar cv_;
  std::deque<Request> queue_ GUARDED_BY(mu_);
  bool input_done_ GUARDED_BY(mu_) = false;

  Mutex write_mu_;  // one frame at a time on out_fd
  std::atomic<bool> write_failed_{false};
};

}  // namespace

std::vector<std::string> EngineNames() {
  std::vector<std::string> names;
  for (const Registered& r : kEngines) names.emplace_back(r.name);
  std::sort(names.begin(), names.end());
  return names;
}

Result<std::unique_ptr<Engine>> MakeEngine(std::string_view name, const EngineOptions& options) {
  for (const Registered& r : kEngines) {
    if (r.name == name) return r.factory(options);
  }
  if (name == "exec") {
    return InvalidArgument(
        "engine \"exec\" is not run by `chorus compute worker`: the node starts the app's own command, "
        "which speaks the worker protocol itself");
  }
  return NotFound("unknown engine \"" + std::string(name) + "\" (known: " + Joined(EngineNames()) + ")");
}

Status ParseEngineOptionArgs(const std::vector<std::string>& args, EngineOptions& options) {
  for (const std::string& arg : args) {
    const std::size_t eq = arg.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgument("engine option \"" + arg + "\" is not key=value");
    }
    std::string key = arg.substr(0, eq);
    if (options.values.count(key) != 0) return InvalidArgument("engine option \"" + key + "\" given twice");
    options.values.emplace(std::move(key), arg.substr(eq + 1));
  }
  return Status::Ok();
}

int RunEngineWorker(Engine& engine, const WorkerLoopOptions& options) {
  WorkerLoop loop(engine, options);
  return loop.Run();
}

std::string OptionReader::String(std::string_view key, std::string fallback) {
  read_.emplace_back(key);
  const auto it = options_.values.find(key);
  return it == options_.values.end() ? std::move(fallback) : it->second;
}

Result<int64_t> OptionReader::Int(std::string_view key, int64_t fallback, int64_t min, int64_t max) {
  read_.emplace_back(key);
  const auto it = options_.values.find(key);
  if (it == options_.values.end()) return fallback;
  const std::string& text = it->second;
  int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value < min || value > max) {
    return InvalidArgument(engine_ + " option " + std::string(key) + "=\"" + text +
                           "\": want an integer in [" + std::to_string(min) + ", " + std::to_string(max) +
                           "]");
  }
  return value;
}

Result<double> OptionReader::Double(std::string_view key, double fallback, double min, double max) {
  read_.emplace_back(key);
  const auto it = options_.values.find(key);
  if (it == options_.values.end()) return fallback;
  const std::string& text = it->second;
  double value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || !std::isfinite(value) ||
      value < min || value > max) {
    return InvalidArgument(engine_ + " option " + std::string(key) + "=\"" + text + "\": want a number in [" +
                           FormatNumber(min) + ", " + FormatNumber(max) + "]");
  }
  return value;
}

Result<bool> OptionReader::Bool(std::string_view key, bool fallback) {
  read_.emplace_back(key);
  const auto it = options_.values.find(key);
  if (it == options_.values.end()) return fallback;
  const std::string& v = it->second;
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  return InvalidArgument(engine_ + " option " + std::string(key) + "=\"" + v + "\": want true or false");
}

Status OptionReader::CheckNoneUnknown() const {
  std::vector<std::string> unknown;
  for (const auto& [key, value] : options_.values) {
    if (std::find(read_.begin(), read_.end(), key) == read_.end()) unknown.push_back(key);
  }
  if (unknown.empty()) return Status::Ok();
  std::vector<std::string> known = read_;
  std::sort(known.begin(), known.end());
  known.erase(std::unique(known.begin(), known.end()), known.end());
  return InvalidArgument("unknown " + engine_ + " option" + (unknown.size() > 1 ? "s " : " ") +
                         Joined(unknown) +
                         " (known: " + (known.empty() ? std::string("none") : Joined(known)) + ")");
}

Status CheckPayloadSize(std::string_view payload, std::size_t max_bytes, std::string_view what) {
  if (payload.empty()) return InvalidArgument("empty payload (expected " + std::string(what) + ")");
  if (payload.size() > max_bytes) {
    return InvalidArgument("payload of " + std::to_string(payload.size()) + " bytes exceeds the " +
                           std::to_string(max_bytes) + "-byte limit");
  }
  return Status::Ok();
}

}  // namespace chorus::compute
