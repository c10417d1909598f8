// The built-in `synthetic` inference engine: a worker main loop that speaks the worker protocol
// (compute/worker_protocol.h) and spends a configured amount of CPU and wall time per request,
// so clusters, schedulers and routers can be exercised and measured without a real model.
// `chorus compute worker --cpu-ms X --latency-ms Y --max-concurrency N` runs it on stdin/stdout
// (as does `--engine synthetic --option cpu_ms=X --option latency_ms=Y`).
//
// It is one Engine (compute/engine.h) served by the shared worker loop, RunEngineWorker.
//
// Per request, on one of `max_concurrency` pool threads:
//   - payload exactly "crash": _exit(3) at once (tests kill a worker mid-request this way);
//   - burn `cpu_ms` of this thread's CPU time (CLOCK_THREAD_CPUTIME_ID) in a busy loop, then
//     sleep `latency_ms`;
//   - payload exactly "fail": answer status 1, "synthetic failure";
//   - otherwise answer ok with
//       {"worker_pid":PID,"echo_bytes":N,"model":"<$CHORUS_MODEL>","concurrent":K}
//     where N is the request payload's size and K the number of requests being processed by the
//     pool (this one included) when the answer was made: K >= 2 proves requests overlapped.
//     (Built through MakeEngine, the model is `--model`, or $CHORUS_MODEL when that is empty.)
// Answers go out in completion order; writes are serialised, one whole frame at a time.
//
// Lifecycle: the calling thread reads requests until EOF on `in_fd`, then waits for every
// request already read to be answered and returns 0. A protocol error on input (oversize or
// truncated frame) stops reading, finishes what was read and returns 1; so does a failed write
// (the reader of `out_fd` went away). The fds are not closed. A write to a closed pipe raises
// SIGPIPE unless the process ignores it; a worker process should simply die of it.
#pragma once

#include <memory>

#include "base/status.h"
#include "compute/engine.h"

namespace chorus::compute {

struct SyntheticOptions {
  double cpu_ms = 0;      // CPU time burnt per request
  double latency_ms = 0;  // then slept per request
  int max_concurrency = 1;  // pool threads; values below 1 mean 1
  int in_fd = 0;
  int out_fd = 1;
};

// Returns the process exit code: 0 after EOF on input once in-flight requests finish, 1 on a
// protocol or I/O error.
int RunSyntheticWorker(const SyntheticOptions& options);

// The registry's "synthetic" factory. Options: cpu_ms, latency_ms (non-negative numbers,
// default 0); model: reported as "model", $CHORUS_MODEL when empty.
Result<std::unique_ptr<Engine>> MakeSyntheticEngine(const EngineOptions& options);

}  // namespace chorus::compute
