// Inference engines: what a worker process does with each request payload, behind one interface,
// and the worker main loop that serves any engine over the worker protocol
// (compute/worker_protocol.h, docs/compute.md "Worker protocol").
//
// An app declares `engine` and `model`; the node starts
//   chorus compute worker --engine NAME [--model M] [--option k=v ...] --max-concurrency N
// which does MakeEngine(NAME, {M, {k: v}}) once and then RunEngineWorker(engine, ...) until EOF.
// The registered engines:
//   synthetic      burns CPU and waits (compute/synthetic_worker.h)
//   ocr-detect     image -> text-line boxes (compute/ocr_engine.h)
//   ocr-recognize  image + boxes -> text per box (compute/ocr_engine.h)
//   moderation     UTF-8 text -> verdict and matched terms (compute/moderation_engine.h)
// `exec` is not one of them: the node runs the app's own command directly, and that program
// speaks the worker protocol itself. MakeEngine("exec") says so.
//
// Contract of an Engine:
//   - It is built once per worker process, before any request is read; everything that can be
//     checked up front (model file, tessdata, options) is checked by its factory, so a bad app
//     spec fails at start-up with a clear message instead of on every request.
//   - Handle() is called concurrently from up to max_concurrency pool threads and must be
//     thread-safe. Engines whose libraries are not (Tesseract's TessBaseAPI) keep one instance
//     per concurrent call.
//   - Handle() errors are answers, not crashes: the loop sends them as an error response (status
//     byte 1) whose payload is DescribeError(status), by default Status::ToString(), i.e. the kind
//     then a reason fit to show to the client: "invalid_argument: not an image (expected PNG,
//     JPEG, TIFF, BMP, PNM)". Input from the network never aborts the process.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace chorus::compute {

// What an engine is built from: the app's model and free-form key/values
// (`--model`, `--option k=v`). The meaning of both is the engine's; see each engine's header.
struct EngineOptions {
  std::string model;
  std::map<std::string, std::string, std::less<>> values;
};

class Engine {
 public:
  virtual ~Engine() = default;

  // The registered name ("ocr-detect"), for logs.
  virtual std::string_view name() const = 0;

  // One request: the payload in, the answer out. Thread-safe (see the contract above).
  virtual Result<std::string> Handle(std::string_view payload) = 0;

  // The error response payload for a failed Handle(). Default: "kind: message".
  virtual std::string DescribeError(const Status& error) const { return error.ToString(); }
};

// Builds a registered engine. kNotFound naming the known engines for an unknown name;
// kInvalidArgument / kNotFound / kFailedPrecondition from the engine's factory for bad options
// or a missing model.
Result<std::unique_ptr<Engine>> MakeEngine(std::string_view name, const EngineOptions& options);

// The names MakeEngine accepts, sorted.
std::vector<std::string> EngineNames();

// Parses `--option` arguments ("key=value", key non-empty, value may be empty or contain '=')
// into options.values. kInvalidArgument for a malformed or repeated key.
Status ParseEngineOptionArgs(const std::vector<std::string>& args, EngineOptions& options);

struct WorkerLoopOptions {
  int max_concurrency = 1;  // pool threads; values below 1 mean 1
  int in_fd = 0;
  int out_fd = 1;
};

// Serves `engine` on in_fd/out_fd with max_concurrency pool threads (the calling thread reads):
//   - each request frame is handed to one pool thread, which calls engine.Handle(payload) and
//     answers ok with the result, or with an error response (see the contract above); an engine
//     that throws (a bug) is answered "internal: ..." and the worker keeps serving;
//   - answers go out in completion order, one whole frame at a time; an answer larger than
//     kMaxResponsePayload becomes an error response instead;
//   - EOF on in_fd: every request already read is answered, then 0 is returned;
//   - a protocol error on input (oversize or truncated frame) stops reading, finishes what was
//     read and returns 1; so does a failed write (the reader of out_fd went away).
// The fds are not closed. A write to a closed pipe raises SIGPIPE unless the process ignores it;
// a worker process should simply die of it.
int RunEngineWorker(Engine& engine, const WorkerLoopOptions& options);

// ---- Helpers for engine factories and handlers ----

// Typed reads of EngineOptions::values that remember which keys were read, so a factory can
// reject the ones it does not know (a typo in an app spec is an error, not a silent default).
class OptionReader {
 public:
  OptionReader(std::string_view engine, const EngineOptions& options) : engine_(engine), options_(options) {}

  std::string String(std::string_view key, std::string fallback);
  // kInvalidArgument unless the value is a decimal integer within [min, max].
  Result<int64_t> Int(std::string_view key, int64_t fallback, int64_t min, int64_t max);
  // kInvalidArgument unless the value is a finite decimal number within [min, max].
  Result<double> Double(std::string_view key, double fallback, double min, double max);
  // true/false/1/0/yes/no/on/off.
  Result<bool> Bool(std::string_view key, bool fallback);
  // kInvalidArgument naming every key that was given but never read, and the known ones.
  Status CheckNoneUnknown() const;

 private:
  std::string engine_;
  const EngineOptions& options_;
  std::vector<std::string> read_;
};

// kInvalidArgument "empty payload (expected WHAT)" / "payload of N bytes exceeds the M-byte
// limit" — the common first checks of a handler.
Status CheckPayloadSize(std::string_view payload, std::size_t max_bytes, std::string_view what);

}  // namespace chorus::compute
