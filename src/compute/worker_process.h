// WorkerProcess: one worker process for one replica, supervised, with requests multiplexed to it
// over the worker protocol (compute/worker_protocol.h, docs/compute.md "Worker protocol").
//
// Design. Each WorkerProcess owns one long-lived supervisor thread that does everything touching
// the child: it forks and execs it, writes queued requests to its stdin, reads and dispatches its
// responses, notices its death, reaps it and restarts it. Doing the fork on this thread matters:
// the child is started with PR_SET_PDEATHSIG=SIGKILL, which Linux fires when the *thread* that
// forked it exits, so workers die with the node even on kill -9, and never because a short-lived
// RPC thread that happened to call into us finished. The thread sleeps in poll() on the child's
// stdout, its stdin (when requests are waiting to be written), a pidfd (readable when the child
// exits) and an eventfd other threads use to wake it.
//
//   Invoke ──(encode, queue under mu_, wake)──▶ supervisor thread ──write──▶ worker stdin
//   callback ◀──(match id in pending_)──────── supervisor thread ◀──read─── worker stdout
//
// The child leads its own process group (a worker's helpers are killed with it), gets
// stdin/stdout from two pipes, inherits stderr, and every other descriptor is close-on-exec. A
// third, close-on-exec pipe tells the parent whether exec succeeded, so Start() fails fast on a
// missing binary. Writes never raise SIGPIPE, whatever the process does with that signal: the
// supervisor thread blocks it and treats EPIPE as the worker's death.
//
// Death. EOF on stdout, the pidfd, EPIPE or a protocol error from the worker all end in the same
// place: the worker is SIGKILLed (if still alive) with its process group, reaped, every request in
// flight fails with kUnavailable, and — unless Stop() was called — the worker is restarted after
// restart_backoff_min doubling per death in the last restart_window, capped at
// restart_backoff_max. A death when max_restarts restarts already happened within the window
// moves to kFailed instead: no more restarts (the scheduler replaces the replica elsewhere).
// Responses the worker wrote before dying are still delivered.
//
// Thread rules:
//   - Invoke, InvokeSync, Stop, the accessors and SetStateListener are safe from any thread.
//   - Callbacks and the state listener run on the supervisor thread (Invoke's callback runs inline
//     on the caller's thread when the request is refused at once), never with an internal lock
//     held. They may call Invoke and the accessors; they must be quick (they delay every other
//     request of this worker) and must not destroy the WorkerProcess. Stop() from a callback only
//     requests the stop; it cannot wait for the thread it runs on.
//   - Destroying the object stops the worker (1 s grace) and joins the thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "compute/worker_protocol.h"

namespace spdlog {
class logger;
}

namespace chorus::compute {

struct WorkerOptions {
  std::string command;  // absolute path of the executable
  std::vector<std::string> args;
  // Added to the node's environment, replacing variables of the same name (CHORUS_MODEL,
  // CHORUS_MAX_CONCURRENCY, ...).
  std::vector<std::pair<std::string, std::string>> env;
  Duration restart_backoff_min = std::chrono::milliseconds(100);
  Duration restart_backoff_max = std::chrono::seconds(5);
  // A death when this many restarts already happened within `restart_window` is final: kFailed.
  int max_restarts = 5;
  Duration restart_window = std::chrono::seconds(60);
  std::string log_prefix;  // starts every log line about this worker, e.g. "ocr-detect/r3: "
};

// The Status for a worker's error response: "invalid_argument: MESSAGE" (the request itself is
// bad, compute/engine.h) is kInvalidArgument with MESSAGE; anything else is kInternal.
Status WorkerError(std::string message);

class WorkerProcess {
 public:
  enum class State {
    kStarting,    // only before Start() returns
    kRunning,     // a worker process is up and takes requests
    kRestarting,  // the worker died; a new one starts after the backoff. Invoke fails at once
    kFailed,      // too many deaths within the window; final
    kStopped,     // Stop() finished; final
  };
  using Callback = std::function<void(Result<std::string> response)>;
  using StateListener = std::function<void(State)>;

  // Spawns the worker and returns once it has been exec'd (state kRunning). kInvalidArgument for
  // a command that is not an absolute path, kNotFound / kPermissionDenied / kInternal when exec
  // fails (message names the command and errno).
  static Result<std::unique_ptr<WorkerProcess>> Start(WorkerOptions options);

  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;
  ~WorkerProcess();

  // Sends `payload` to the worker. `done` runs exactly once with the worker's answer; kInternal
  // with the worker's message when it answered with status 1; kUnavailable if the worker died with
  // the request in flight, or (inline) if it is not running, has failed or is stopping;
  // kInvalidArgument (inline) for a payload above kMaxRequestPayload.
  void Invoke(std::string payload, Callback done) EXCLUDES(mu_);

  // Invoke and wait. kDeadlineExceeded after `timeout` (the request stays in flight; its answer
  // is dropped). Must not be called from a callback or the state listener (it would wait for the
  // thread it blocks).
  Result<std::string> InvokeSync(std::string payload, Duration timeout);

  // Graceful stop: requests already queued are still written, then the worker's stdin is closed
  // (it finishes what is in flight and exits) and its answers are delivered; after `grace` it is
  // SIGKILLed and what is still pending gets kUnavailable. No restarts afterwards; new Invokes
  // fail with kUnavailable. Blocks until the supervisor thread has finished (except when called
  // from a callback, see above). Idempotent: a second call waits for the first one's stop. A
  // failed worker stays kFailed; otherwise the final state is kStopped.
  void Stop(Duration grace) EXCLUDES(mu_);

  State state() const EXCLUDES(mu_);
  // Restarts attempted since Start.
  int restarts() const EXCLUDES(mu_);
  // Requests sent (or queued) whose callback has not run yet.
  int in_flight() const EXCLUDES(mu_);
  // The current worker's pid; -1 while none is running.
  pid_t pid() const EXCLUDES(mu_);

  // `listener` is called on the supervisor thread first with the current state (soon after this
  // call), then with every new state, in order and never concurrently. Set it before traffic;
  // setting another replaces it. If the supervisor thread has already finished (kFailed,
  // kStopped), the listener is called once, inline, with that final state.
  void SetStateListener(StateListener listener) EXCLUDES(mu_);

 private:
  explicit WorkerProcess(WorkerOptions options);

  // ---- supervisor thread ----
  void Loop();
  // One round of poll() and what it found. False when the thread should exit.
  bool Step();
  Status Spawn();
  void ReadResponses();
  void ProtocolError(const Status& error);
  void WritePending();
  void KillWorker(std::string_view why);
  // Reaps the dead worker and fails its requests; returns the next state.
  State HandleExit();
  // Records a death at `now`; returns kRestarting (restart_at_ set) or kFailed.
  State RecordDeathLocked(SteadyTime now) REQUIRES(mu_);
  void Respawn();
  void CloseChildFds();
  void NotifyState(State state) EXCLUDES(mu_);
  void DeliverCurrentStateIfAsked() EXCLUDES(mu_);
  void DrainWakeFd();

  // ---- any thread ----
  void Wake();
  Status WaitForFirstSpawn() EXCLUDES(mu_);

  const WorkerOptions options_;
  const std::shared_ptr<spdlog::logger> log_;
  // Built once by the constructor; argv_/envp_ point into the strings.
  std::vector<std::string> argv_strings_;
  std::vector<std::string> env_strings_;
  std::vector<char*> argv_;
  std::vector<char*> envp_;

  int wake_fd_ = -1;  // eventfd; closed by the destructor after the thread is joined
  std::thread loop_;
  std::thread::id loop_id_;  // written by Start() before the object is shared
  std::atomic<uint64_t> next_id_{1};

  mutable Mutex mu_;
  CondVar start_cv_;  // signals start_done_
  bool start_done_ GUARDED_BY(mu_) = false;
  Status start_status_ GUARDED_BY(mu_);
  State state_ GUARDED_BY(mu_) = State::kStarting;
  int restarts_ GUARDED_BY(mu_) = 0;
  pid_t pid_ GUARDED_BY(mu_) = -1;
  std::unordered_map<uint64_t, Callback> pending_ GUARDED_BY(mu_);
  std::string outbox_ GUARDED_BY(mu_);  // encoded frames the supervisor has not taken yet
  bool wake_pending_ GUARDED_BY(mu_) = false;  // an eventfd wake-up is on its way
  bool stop_requested_ GUARDED_BY(mu_) = false;
  SteadyTime stop_deadline_ GUARDED_BY(mu_);
  StateListener listener_ GUARDED_BY(mu_);
  bool listener_wants_current_ GUARDED_BY(mu_) = false;
  bool loop_exited_ GUARDED_BY(mu_) = false;
  std::deque<SteadyTime> deaths_ GUARDED_BY(mu_);  // within restart_window
  SteadyTime restart_at_ GUARDED_BY(mu_);

  Mutex join_mu_;  // serialises joining loop_ between concurrent Stop() calls

  // ---- supervisor thread only ----
  pid_t child_ = -1;
  int pidfd_ = -1;   // -1 if pidfd_open is unavailable: exits are then polled with waitid
  int in_fd_ = -1;   // worker's stdin (write end, non-blocking); -1 once closed
  int out_fd_ = -1;  // worker's stdout (read end, non-blocking)
  bool out_eof_ = false;
  bool killed_ = false;
  SteadyTime eof_kill_at_;  // stdout closed: SIGKILL if it has not exited by then
  FrameDecoder decoder_;
  std::string write_buf_;
  std::size_t write_off_ = 0;
};

std::string_view WorkerStateName(WorkerProcess::State state);

}  // namespace chorus::compute
