// Test support: temporary directories, loopback ports and child processes.
//
// Integration tests start real programs (redis-server, mariadbd, nats-server, the `chorus` binary)
// and must never leak them. The contract here is built around that:
//
//  * A Subprocess owns its child. Destroying it sends SIGTERM to the child's process group, waits
//    up to 5 s, then sends SIGKILL and reaps the child, so no zombie and no orphan survives the
//    object. Each child leads its own process group; when the child is reaped (by Wait(),
//    running() or Stop()) whatever is left in that group is SIGKILLed, so helpers it forked (a
//    shell's `sleep`) never outlive it. The first Start() makes the test process a child
//    subreaper (PR_SET_CHILD_SUBREAPER), so those orphans are re-parented to it and reaped here
//    rather than left as zombies for init.
//  * The child is started with PR_SET_PDEATHSIG=SIGKILL, so it also dies if the test process is
//    killed outright. Linux delivers that signal when the *thread* that called Start() exits:
//    start long-lived children from a thread that outlives them (the gtest main thread, a test
//    environment).
//  * Output (stdout and stderr merged) goes either to a pipe drained continuously by an internal
//    reader thread, so a chatty child never blocks on a full pipe whatever the test is doing, or
//    straight to a log file (nothing to drain; the file survives for post-mortems). Both modes
//    support WaitForLine() and output(). Either way the child's stdout is not a terminal, so C
//    stdio block-buffers it: a program must flush the lines tests wait for ("listening on ...").
//  * Only fds created for the child reach it: every other descriptor is close-on-exec in the
//    child, stdin is /dev/null, signal dispositions and the signal mask are reset to defaults.
//  * Waits and reaps name the child's pid or process group only (never waitpid(-1)), so several
//    Subprocess objects and other code with children coexist. If the test process ignores SIGCHLD
//    the kernel reaps children itself and exit codes are reported as kUnknownExit.
//
// Threading: a Subprocess is not thread-safe; call it from one thread at a time. The reader thread
// is internal. Errors are Status values; nothing here throws.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "base/status.h"

namespace chorus::testing {

// A fresh directory removed recursively when the object dies. Move-only; a moved-from TempDir
// owns nothing.
class TempDir {
 public:
  // mkdtemp("<parent>/<prefix>-XXXXXX"); an empty parent means $TMPDIR, or /tmp if unset.
  static Result<TempDir> Create(std::string_view prefix = "chorus", std::string_view parent = {});

  TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}
  TempDir& operator=(TempDir&& other) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir();

  const std::string& path() const { return path_; }

 private:
  explicit TempDir(std::string path) : path_(std::move(path)) {}
  void Remove();

  std::string path_;
};

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close). Another
// process may take it before the caller binds it; engines.h retries on that. Aborts with a message
// if the machine cannot bind a loopback socket at all: no test could run there.
int PickFreePort();

// Polls until something accepts TCP connections on 127.0.0.1:port. Makes at least one attempt even
// with a zero timeout. kDeadlineExceeded names the port and the last connect error.
Status WaitForTcpPort(int port, std::chrono::milliseconds timeout);

// Resolves a program name: a name containing '/' is taken as is; otherwise $PATH is searched, then
// /usr/local/sbin, /usr/sbin and /sbin (server binaries live there and test runners often drop
// sbin from PATH). kNotFound if no executable file matches.
Result<std::string> FindExecutable(std::string_view name);

struct SubprocessOptions {
  enum class Output {
    kPipe,     // read through a pipe into memory
    kLogFile,  // appended to log_path by the child itself; read back from the file on demand
  };
  // Added to the test process's environment; an existing variable with the same name is replaced.
  std::vector<std::pair<std::string, std::string>> env;
  // The child's working directory; empty keeps the test process's.
  std::string working_dir;
  Output output = Output::kPipe;
  // Required with kLogFile; created if missing, appended to otherwise.
  std::string log_path;
};

class Subprocess {
 public:
  using Options = SubprocessOptions;
  // Wait() reports a death by signal N as kSignalExitBase + N, like a shell; killed_by_signal()
  // tells it apart from a program that exited with that code.
  static constexpr int kSignalExitBase = 128;
  // Reported when the child was reaped by someone else (SIGCHLD ignored in the test process).
  static constexpr int kUnknownExit = -1;

  // Starts argv[0] (resolved with FindExecutable) with arguments argv[1..]. Returns once the
  // program has been exec'd: a missing binary, a bad working directory or an exec failure is an
  // error here, not an exit code later.
  static Result<std::unique_ptr<Subprocess>> Start(std::vector<std::string> argv,
                                                   Options options = {});

  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  // Stop(): SIGTERM, up to 5 s, SIGKILL, reap.
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // The command line, for messages.
  const std::string& command() const { return command_; }

  // Returns the first output line (without its "\n" or "\r\n") that contains `substring`, or
  // that `predicate` accepts, waiting for it if needed. Every call searches all output captured
  // since Start, so lines can be awaited in any order ("http listening", then "grpc listening"),
  // and the same line is found again by a second call. An unterminated last line counts once the
  // output has ended. Errors: kDeadlineExceeded on timeout; kFailedPrecondition if the output ended
  // (the process exited) without such a line. Both messages carry the tail of the output. The
  // predicate runs with an internal lock held: it must not call back into this Subprocess.
  Result<std::string> WaitForLine(std::string_view substring, std::chrono::milliseconds timeout);
  Result<std::string> WaitForLine(const std::function<bool(std::string_view)>& predicate,
                                  std::chrono::milliseconds timeout);

  // Everything the child wrote so far (in kLogFile mode: since Start); complete once Wait() or
  // running() has seen the exit. Only the last 64 MiB are kept in memory; a first line then says
  // how much was dropped.
  std::string output() const;
  // The last `max_lines` lines of output(), for diagnostics.
  std::string OutputTail(std::size_t max_lines = 30) const;

  // Sends `sig` to the child itself (not its process group). kFailedPrecondition once reaped.
  Status Signal(int sig);

  // Waits for the child to exit and reaps it; returns its exit code, or kSignalExitBase + signal.
  // kDeadlineExceeded (child left running) on timeout. Once reaped, returns the same code again.
  Result<int> Wait(std::chrono::milliseconds timeout);
  // True after Wait() returned a code that came from a signal.
  bool killed_by_signal() const { return reaped_ && term_signal_ != 0; }

  // False once the child has exited (this reaps it; Wait() then returns the code at once).
  bool running();

  // SIGTERM to the process group, up to `grace` for the child to exit, then SIGKILL; reaps the
  // child and kills anything left in its group. Returns the exit code as Wait() does. Idempotent.
  int Stop(std::chrono::milliseconds grace = std::chrono::seconds(5));

 private:
  Subprocess() = default;

  Result<std::string> WaitForLineImpl(const std::function<bool(std::string_view)>& predicate,
                                      std::string_view what, std::chrono::milliseconds timeout);
  // Reaping goes through Reap(): once the child has exited (it is then a zombie, so its pid still
  // names its process group and cannot have been reused) anything left in the group is killed,
  // then the child is reaped. Returns false if `block` is false and the child is still running.
  bool Reap(bool block);
  void ReapGroupLeftovers();
  void RecordStatus(int wait_status);
  bool WaitExitedNoReap(std::chrono::steady_clock::time_point deadline);
  void ReaderLoop();
  void AppendLocked(const char* data, std::size_t n) const REQUIRES(mu_);
  void RefreshLogLocked() const REQUIRES(mu_);
  void StopReader();
  std::string OutputLocked() const REQUIRES(mu_);
  std::string TailLocked(std::size_t max_lines) const REQUIRES(mu_);

  pid_t pid_ = -1;
  int pidfd_ = -1;  // -1 if pidfd_open is unavailable; waits then poll waitid
  std::string command_;
  Options::Output mode_ = Options::Output::kPipe;
  std::string log_path_;

  bool reaped_ = false;
  int exit_code_ = 0;
  int term_signal_ = 0;

  int out_fd_ = -1;   // kPipe: read end, non-blocking; owned by the reader thread while it runs
  int wake_fd_ = -1;  // kPipe: eventfd that tells the reader thread to finish
  std::thread reader_;

  // Captured output; absolute offsets count from the first byte ever captured.
  mutable Mutex mu_;
  CondVar cv_;  // signalled on new complete lines and at end of output
  mutable std::string buf_ GUARDED_BY(mu_);
  mutable std::size_t dropped_ GUARDED_BY(mu_) = 0;     // bytes dropped from the front of buf_
  bool eof_ GUARDED_BY(mu_) = false;                    // kPipe output ended
  mutable int log_fd_ GUARDED_BY(mu_) = -1;             // kLogFile read handle
  mutable std::size_t log_offset_ GUARDED_BY(mu_) = 0;  // bytes of the log read into buf_
};

}  // namespace chorus::testing
