#include "compute/worker_process.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <system_error>

#include "base/logging.h"

extern char** environ;

namespace chorus::compute {
namespace {

using SteadyClock = std::chrono::steady_clock;

// Stop() grace used by the destructor.
constexpr Duration kDestructorGrace = std::chrono::seconds(1);
// A worker that closed its stdout gets this long to exit before it is SIGKILLed.
constexpr Duration kEofGrace = std::chrono::seconds(1);
// Without a pidfd, how often the supervisor checks whether the worker exited.
constexpr Duration kExitPollInterval = std::chrono::milliseconds(50);

std::string ErrnoText(int err) { return std::error_code(err, std::generic_category()).message(); }

// Closes its descriptor on scope exit, so every error path of Spawn() releases what it opened.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Moves fd above stdin/stdout/stderr (close-on-exec), so that the child's dup2 onto 0 and 1 cannot
// clobber a source descriptor when the node runs with some of them closed.
Status LiftAboveStdio(UniqueFd& fd) {
  if (fd.get() > 2) return Status::Ok();
  const int lifted = fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (lifted < 0) return Internal("fcntl(F_DUPFD_CLOEXEC): " + ErrnoText(errno));
  fd.reset(lifted);
  return Status::Ok();
}

Status MakePipe(UniqueFd& read_end, UniqueFd& write_end) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return Internal("pipe2: " + ErrnoText(errno));
  read_end.reset(p[0]);
  write_end.reset(p[1]);
  CHORUS_RETURN_IF_ERROR(LiftAboveStdio(read_end));
  return LiftAboveStdio(write_end);
}

// What the child reports through the close-on-exec status pipe when it cannot exec.
struct ChildError {
  int stage;
  int err;
};
enum ChildStage : int { kStageSetup = 1, kStageExec = 2 };

struct ChildPlan {
  pid_t parent;
  const char* exe;
  char* const* argv;
  char* const* envp;
  int stdin_fd;
  int stdout_fd;
  int status_fd;
  int max_fd;
};

[[noreturn]] void ChildFail(int status_fd, int stage) {
  const ChildError e{stage, errno};
  ssize_t ignored = write(status_fd, &e, sizeof e);
  (void)ignored;
  _exit(127);
}

// Runs between fork() and exec() in the child of a multi-threaded process: async-signal-safe
// calls only (no allocation, no locks, no logging).
[[noreturn]] void RunChild(const ChildPlan& plan) {
  // Own process group, so killing the worker reaches what it forked.
  setpgid(0, 0);
  // Die with the supervisor thread (and so with the node), even on SIGKILL. The parent may be
  // gone before prctl took effect, hence the re-check.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) ChildFail(plan.status_fd, kStageSetup);
  if (getppid() != plan.parent) _exit(127);

  // Ignored signals and the blocked mask survive exec (the supervisor thread blocks SIGPIPE;
  // the node may ignore it): the worker starts from the defaults.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &dfl, nullptr);  // EINVAL for glibc's own
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);

  // dup2 clears close-on-exec on the copies; stderr is inherited as is.
  if (dup2(plan.stdin_fd, STDIN_FILENO) < 0 || dup2(plan.stdout_fd, STDOUT_FILENO) < 0) {
    ChildFail(plan.status_fd, kStageSetup);
  }
  // Whatever else the node has open (sockets, other workers' pipes, files opened by libraries
  // without O_CLOEXEC) is closed by exec. The status pipe is among them: its closing tells the
  // parent that exec worked.
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < plan.max_fd; ++fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  execve(plan.exe, plan.argv, plan.envp);
  ChildFail(plan.status_fd, kStageExec);
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exit code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* name = sigabbrev_np(sig);
    return "signal " + std::to_string(sig) + (name != nullptr ? std::string(" (SIG") + name + ")" : "");
  }
  return "wait status " + std::to_string(status);
}

int MillisUntil(SteadyTime deadline, SteadyTime now) {
  if (deadline <= now) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
  return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
}

// The supervisor thread writes to pipes whose reader may be gone. With SIGPIPE blocked on this
// thread, such a write fails with EPIPE and leaves a SIGPIPE pending on this thread only (the
// signal a write raises is thread-directed); ConsumeSigpipe() takes it back.
void BlockSigpipeOnThisThread() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void ConsumeSigpipe() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  const timespec zero{0, 0};
  while (sigtimedwait(&set, nullptr, &zero) < 0 && errno == EINTR) {
  }
}

}  // namespace

std::string_view WorkerStateName(WorkerProcess::State state) {
  switch (state) {
    case WorkerProcess::State::kStarting:
      return "starting";
    case WorkerProcess::State::kRunning:
      return "running";
    case WorkerProcess::State::kRestarting:
      return "restarting";
    case WorkerProcess::State::kFailed:
      return "failed";
    case WorkerProcess::State::kStopped:
      return "stopped";
  }
  return "unknown";
}

// ---- construction, any-thread API ----------------------------------------------------------

WorkerProcess::WorkerProcess(WorkerOptions options)
    : options_(std::move(options)), log_(GetLogger("compute")) {
  argv_strings_.push_back(options_.command);
  for (const std::string& a : options_.args) argv_strings_.push_back(a);
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view kv(*e);
    const std::string_view name = kv.substr(0, kv.find('='));
    const bool replaced = std::any_of(options_.env.begin(), options_.env.end(),
                                      [name](const auto& var) { return var.first == name; });
    if (!replaced) env_strings_.emplace_back(kv);
  }
  for (const auto& var : options_.env) env_strings_.push_back(var.first + "=" + var.second);
  for (std::string& s : argv_strings_) argv_.push_back(s.data());
  argv_.push_back(nullptr);
  for (std::string& s : env_strings_) envp_.push_back(s.data());
  envp_.push_back(nullptr);
}

Result<std::unique_ptr<WorkerProcess>> WorkerProcess::Start(WorkerOptions options) {
  if (options.command.empty() || options.command[0] != '/') {
    return InvalidArgument("worker command must be an absolute path, got \"" + options.command + "\"");
  }
  if (options.max_restarts < 0) return InvalidArgument("worker max_restarts must not be negative");
  std::unique_ptr<WorkerProcess> worker(new WorkerProcess(std::move(options)));
  worker->wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (worker->wake_fd_ < 0) return Internal("eventfd: " + ErrnoText(errno));
  worker->loop_ = std::thread([w = worker.get()] { w->Loop(); });
  worker->loop_id_ = worker->loop_.get_id();
  Status started = worker->WaitForFirstSpawn();
  if (!started.ok()) {
    worker->loop_.join();  // the thread ends at once after a failed first spawn
    return started;
  }
  return worker;
}

Status WorkerProcess::WaitForFirstSpawn() {
  MutexLock lock(mu_);
  start_cv_.Wait(mu_, [this]() REQUIRES(mu_) { return start_done_; });
  return start_status_;
}

WorkerProcess::~WorkerProcess() {
  Stop(kDestructorGrace);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void WorkerProcess::Wake() {
  const uint64_t one = 1;
  ssize_t ignored = write(wake_fd_, &one, sizeof one);  // EAGAIN: the counter is already non-zero
  (void)ignored;
}

void WorkerProcess::Invoke(std::string payload, Callback done) {
  if (payload.size() > kMaxRequestPayload) {
    done(InvalidArgument("worker request payload of " + std::to_string(payload.size()) +
                         " bytes exceeds the " + std::to_string(kMaxRequestPayload) + "-byte limit"));
    return;
  }
  const uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
  std::string frame = EncodeRequest(id, payload);
  payload = std::string();  // the frame holds a copy; do not keep two while queued
  Status refused;
  bool wake = false;
  {
    MutexLock lock(mu_);
    if (stop_requested_) {
      refused = Unavailable(options_.log_prefix + "worker is stopping");
    } else if (state_ != State::kRunning) {
      refused = Unavailable(options_.log_prefix + "worker is " + std::string(WorkerStateName(state_)));
    } else {
      outbox_ += frame;
      pending_.emplace(id, std::move(done));
      if (!wake_pending_) wake = wake_pending_ = true;
    }
  }
  if (!refused.ok()) {
    done(std::move(refused));
    return;
  }
  if (wake) Wake();
}

Result<std::string> WorkerProcess::InvokeSync(std::string payload, Duration timeout) {
  struct Shared {
    Mutex mu;
    CondVar cv;
    std::optional<Result<std::string>> result GUARDED_BY(mu);
  };
  auto shared = std::make_shared<Shared>();
  Invoke(std::move(payload), [shared](Result<std::string> response) {
    Shared& s = *shared;
    MutexLock lock(s.mu);
    s.result.emplace(std::move(response));
    s.cv.NotifyAll();
  });
  Shared& s = *shared;
  MutexLock lock(s.mu);
  if (!s.cv.WaitFor(s.mu, timeout, [&s]() REQUIRES(s.mu) { return s.result.has_value(); })) {
    return DeadlineExceeded(options_.log_prefix + "no answer from the worker within " +
                            std::to_string(std::chrono::ceil<std::chrono::milliseconds>(timeout).count()) +
                            " ms");
  }
  return std::move(*s.result);
}

void WorkerProcess::Stop(Duration grace) {
  {
    MutexLock lock(mu_);
    if (!stop_requested_) {
      stop_requested_ = true;
      stop_deadline_ = SteadyClock::now() + grace;
    }
  }
  Wake();
  if (std::this_thread::get_id() == loop_id_) return;  // from a callback: cannot join ourselves
  MutexLock lock(join_mu_);
  if (loop_.joinable()) loop_.join();
}

WorkerProcess::State WorkerProcess::state() const {
  MutexLock lock(mu_);
  return state_;
}

int WorkerProcess::restarts() const {
  MutexLock lock(mu_);
  return restarts_;
}

int WorkerProcess::in_flight() const {
  MutexLock lock(mu_);
  return static_cast<int>(pending_.size());
}

pid_t WorkerProcess::pid() const {
  MutexLock lock(mu_);
  return pid_;
}

void WorkerProcess::SetStateListener(StateListener listener) {
  State final_state;
  bool loop_gone;
  {
    MutexLock lock(mu_);
    loop_gone = loop_exited_;
    final_state = state_;
    if (!loop_gone) {
      listener_ = std::move(listener);
      listener_wants_current_ = true;
      wake_pending_ = true;
    }
  }
  if (loop_gone) {  // no supervisor thread left to call it
    if (listener) listener(final_state);
    return;
  }
  Wake();
}

// ---- supervisor thread -----------------------------------------------------------------------

void WorkerProcess::Loop() {
  BlockSigpipeOnThisThread();
  Status spawned = Spawn();
  {
    MutexLock lock(mu_);
    start_done_ = true;
    start_status_ = spawned;
    state_ = spawned.ok() ? State::kRunning : State::kFailed;
    loop_exited_ = !spawned.ok();
  }
  start_cv_.NotifyAll();
  if (!spawned.ok()) return;
  while (Step()) {
  }
  DeliverCurrentStateIfAsked();
  {
    MutexLock lock(mu_);
    loop_exited_ = true;
  }
  // A listener set between the delivery above and loop_exited_ is owed its first call.
  DeliverCurrentStateIfAsked();
}

bool WorkerProcess::Step() {
  bool stopping;
  SteadyTime stop_deadline;
  SteadyTime restart_at;
  {
    MutexLock lock(mu_);
    wake_pending_ = false;
    if (!outbox_.empty()) {
      if (in_fd_ >= 0) {
        write_buf_.erase(0, write_off_);
        write_off_ = 0;
        write_buf_ += outbox_;
      }  // else the worker's stdin is gone: its death is on the way and fails these requests
      outbox_.clear();
    }
    stopping = stop_requested_;
    stop_deadline = stop_deadline_;
    restart_at = restart_at_;
  }
  DeliverCurrentStateIfAsked();
  SteadyTime now = SteadyClock::now();

  if (child_ < 0) {  // between a death and the restart
    if (stopping) {
      {
        MutexLock lock(mu_);
        state_ = State::kStopped;
      }
      NotifyState(State::kStopped);
      return false;
    }
    if (now >= restart_at) {
      Respawn();
      MutexLock lock(mu_);
      return state_ != State::kFailed;
    }
    pollfd pfd{wake_fd_, POLLIN, 0};
    if (poll(&pfd, 1, MillisUntil(restart_at, now)) > 0) DrainWakeFd();
    return true;
  }

  // A worker is running.
  if (stopping && in_fd_ >= 0 && write_off_ == write_buf_.size()) {
    // Everything queued is written: EOF tells the worker to finish what it has and exit.
    close(std::exchange(in_fd_, -1));
    write_buf_.clear();
    write_off_ = 0;
  }
  if (!killed_ && stopping && now >= stop_deadline) KillWorker("stop grace expired");
  if (!killed_ && out_eof_ && now >= eof_kill_at_) KillWorker("closed its stdout but did not exit");

  pollfd fds[4];
  nfds_t n = 0;
  fds[n++] = {wake_fd_, POLLIN, 0};
  int out_idx = -1, in_idx = -1, pid_idx = -1;
  if (!out_eof_) {
    out_idx = static_cast<int>(n);
    fds[n++] = {out_fd_, POLLIN, 0};
  }
  if (in_fd_ >= 0 && write_off_ < write_buf_.size()) {
    in_idx = static_cast<int>(n);
    fds[n++] = {in_fd_, POLLOUT, 0};
  }
  if (pidfd_ >= 0) {
    pid_idx = static_cast<int>(n);
    fds[n++] = {pidfd_, POLLIN, 0};
  }
  std::optional<SteadyTime> wake_at;
  auto earliest = [&wake_at](SteadyTime t) { wake_at = wake_at ? std::min(*wake_at, t) : t; };
  if (!killed_ && stopping) earliest(stop_deadline);
  if (!killed_ && out_eof_) earliest(eof_kill_at_);
  if (pidfd_ < 0) earliest(now + kExitPollInterval);
  const int timeout = wake_at ? MillisUntil(*wake_at, now) : -1;

  const int ready = poll(fds, n, timeout);
  if (ready < 0 && errno != EINTR) {
    log_->error("{}poll: {}", options_.log_prefix, ErrnoText(errno));
    KillWorker("poll failed");
  }
  if (ready > 0) {
    if (fds[0].revents != 0) DrainWakeFd();
    if (out_idx >= 0 && fds[out_idx].revents != 0) ReadResponses();
    if (in_idx >= 0 && fds[in_idx].revents != 0) WritePending();
  }

  bool exited = false;
  if (pid_idx >= 0) {
    exited = ready > 0 && fds[pid_idx].revents != 0;
  } else {
    siginfo_t info;
    std::memset(&info, 0, sizeof info);
    const int r = waitid(P_PID, static_cast<id_t>(child_), &info, WEXITED | WNOHANG | WNOWAIT);
    exited = r != 0 || info.si_pid != 0;  // r != 0: ECHILD, reaped behind our back
  }
  if (!exited) return true;
  const State next = HandleExit();
  return next == State::kRestarting;
}

void WorkerProcess::DrainWakeFd() {
  uint64_t value;
  ssize_t ignored = read(wake_fd_, &value, sizeof value);
  (void)ignored;
}

Status WorkerProcess::Spawn() {
  UniqueFd in_read, in_write, out_read, out_write, status_read, status_write;
  CHORUS_RETURN_IF_ERROR(MakePipe(in_read, in_write));
  CHORUS_RETURN_IF_ERROR(MakePipe(out_read, out_write));
  CHORUS_RETURN_IF_ERROR(MakePipe(status_read, status_write));
  if (fcntl(in_write.get(), F_SETFL, O_NONBLOCK) != 0 || fcntl(out_read.get(), F_SETFL, O_NONBLOCK) != 0) {
    return Internal("fcntl(O_NONBLOCK): " + ErrnoText(errno));
  }

  struct rlimit nofile;
  int max_fd = 65536;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    max_fd = static_cast<int>(std::min<rlim_t>(nofile.rlim_cur, INT_MAX));
  }
  const ChildPlan plan{getpid(),      options_.command.c_str(), argv_.data(),        envp_.data(),
                       in_read.get(), out_write.get(),          status_write.get(), max_fd};

  const pid_t pid = fork();
  if (pid < 0) return Internal(options_.log_prefix + "fork: " + ErrnoText(errno));
  if (pid == 0) RunChild(plan);

  status_write.reset();
  in_read.reset();
  out_write.reset();

  // The status pipe closes at exec (EOF: success) or carries why the child could not get there.
  ChildError child_error{};
  ssize_t n;
  do {
    n = read(status_read.get(), &child_error, sizeof child_error);
  } while (n < 0 && errno == EINTR);
  if (n != 0) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (n != static_cast<ssize_t>(sizeof child_error)) {
      return Internal(options_.log_prefix + "lost the exec status of worker " + options_.command);
    }
    const std::string message = options_.log_prefix +
                                (child_error.stage == kStageExec ? "execve(" : "worker setup for (") +
                                options_.command + "): " + ErrnoText(child_error.err);
    if (child_error.stage == kStageExec && child_error.err == ENOENT) return NotFound(message);
    if (child_error.stage == kStageExec && child_error.err == EACCES) return PermissionDenied(message);
    return Internal(message);
  }

  child_ = pid;
#ifdef SYS_pidfd_open
  // The child cannot have been reaped yet (only this thread reaps it), so the pidfd refers to it.
  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd_ >= 0) fcntl(pidfd_, F_SETFD, FD_CLOEXEC);
#endif
  in_fd_ = in_write.release();
  out_fd_ = out_read.release();
  out_eof_ = false;
  killed_ = false;
  decoder_ = FrameDecoder();
  write_buf_.clear();
  write_off_ = 0;
  {
    MutexLock lock(mu_);
    pid_ = pid;
  }
  log_->info("{}worker pid {} started: {}", options_.log_prefix, pid, options_.command);
  return Status::Ok();
}

void WorkerProcess::ReadResponses() {
  char chunk[64 * 1024];
  for (;;) {
    const ssize_t n = read(out_fd_, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      out_eof_ = true;  // the worker closed its stdout, normally by exiting
      eof_kill_at_ = SteadyClock::now() + kEofGrace;
      return;
    }
    decoder_.Append(chunk, static_cast<std::size_t>(n));
    for (;;) {
      auto next = decoder_.Next();
      if (!next.ok()) return ProtocolError(next.status());
      if (!next->has_value()) break;
      auto response = DecodeResponse(**next);
      if (!response.ok()) return ProtocolError(response.status());
      Callback done;
      {
        MutexLock lock(mu_);
        auto it = pending_.find(response->id);
        if (it != pending_.end()) {
          done = std::move(it->second);
          pending_.erase(it);
        }
      }
      if (!done) {
        log_->warn("{}worker pid {} answered unknown request id {}", options_.log_prefix, child_,
                   response->id);
        continue;
      }
      if (response->ok) {
        done(std::move(response->payload));
      } else {
        done(WorkerError(std::move(response->payload)));
      }
    }
  }
}

Status WorkerError(std::string message) {
  // The worker judged the request itself bad (compute/engine.h answers "invalid_argument: ...");
  // that is the caller's error, not the worker's, and no other node would answer differently.
  static constexpr std::string_view kBadInput = "invalid_argument: ";
  if (message.rfind(kBadInput, 0) == 0) return InvalidArgument(message.substr(kBadInput.size()));
  return Internal(std::move(message));
}

void WorkerProcess::ProtocolError(const Status& error) {
  log_->error("{}worker pid {} broke the protocol: {}", options_.log_prefix, child_, error.message());
  KillWorker("protocol error");
  // Nothing more from it is trusted; its exit is on the way.
  out_eof_ = true;
  eof_kill_at_ = SteadyClock::now();
}

void WorkerProcess::WritePending() {
  while (write_off_ < write_buf_.size()) {
    const ssize_t n = write(in_fd_, write_buf_.data() + write_off_, write_buf_.size() - write_off_);
    if (n > 0) {
      write_off_ += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    const int err = errno;
    if (err == EPIPE) ConsumeSigpipe();
    // The worker no longer reads requests: treat it as dead.
    close(std::exchange(in_fd_, -1));
    write_buf_.clear();
    write_off_ = 0;
    KillWorker("its stdin failed: " + ErrnoText(err));
    return;
  }
  write_buf_.clear();
  write_off_ = 0;
}

void WorkerProcess::KillWorker(std::string_view why) {
  if (child_ < 0 || killed_) return;
  log_->warn("{}killing worker pid {}: {}", options_.log_prefix, child_, why);
  // Not reaped yet, so child_ still names the worker and its process group.
  if (kill(-child_, SIGKILL) != 0) kill(child_, SIGKILL);
  killed_ = true;
}

void WorkerProcess::CloseChildFds() {
  if (in_fd_ >= 0) close(std::exchange(in_fd_, -1));
  if (out_fd_ >= 0) close(std::exchange(out_fd_, -1));
  if (pidfd_ >= 0) close(std::exchange(pidfd_, -1));
}

WorkerProcess::State WorkerProcess::HandleExit() {
  // Answers written before the exit are still in the pipe: deliver them.
  if (!out_eof_) ReadResponses();
  // The worker is a zombie, so its pid (and process group id) cannot have been reused: kill
  // whatever it left behind in its group, then reap it.
  kill(-child_, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = waitpid(child_, &status, 0);
  } while (r < 0 && errno == EINTR);
  const std::string how = r == child_ ? DescribeWaitStatus(status) : "an unknown status";
  const pid_t dead = child_;
  CloseChildFds();
  child_ = -1;
  write_buf_.clear();
  write_off_ = 0;

  std::unordered_map<uint64_t, Callback> orphans;
  State next;
  Duration backoff{0};
  int deaths = 0;
  {
    MutexLock lock(mu_);
    pid_ = -1;
    orphans.swap(pending_);
    outbox_.clear();
    if (stop_requested_) {
      next = State::kStopped;
    } else {
      const SteadyTime now = SteadyClock::now();
      next = RecordDeathLocked(now);
      backoff = restart_at_ - now;
      deaths = static_cast<int>(deaths_.size());
    }
    state_ = next;
  }
  if (next == State::kStopped) {
    log_->info("{}worker pid {} stopped with {}", options_.log_prefix, dead, how);
  } else if (next == State::kFailed) {
    log_->error("{}worker pid {} exited with {}; {} deaths within {} s: giving up", options_.log_prefix,
                dead, how, deaths,
                std::chrono::duration_cast<std::chrono::seconds>(options_.restart_window).count());
  } else {
    log_->warn("{}worker pid {} exited with {}; restarting in {} ms", options_.log_prefix, dead, how,
               std::chrono::duration_cast<std::chrono::milliseconds>(backoff).count());
  }
  NotifyState(next);
  const std::string why = options_.log_prefix + "worker pid " + std::to_string(dead) + " exited (" +
                          how + ") with the request in flight";
  for (auto& entry : orphans) entry.second(Unavailable(why));
  return next;
}

WorkerProcess::State WorkerProcess::RecordDeathLocked(SteadyTime now) {
  while (!deaths_.empty() && now - deaths_.front() > options_.restart_window) deaths_.pop_front();
  // Restarts already made within the window: one per death recorded there.
  if (static_cast<int>(deaths_.size()) >= options_.max_restarts) {
    deaths_.push_back(now);
    return State::kFailed;
  }
  deaths_.push_back(now);
  Duration backoff = options_.restart_backoff_min;
  for (std::size_t i = 1; i < deaths_.size() && backoff < options_.restart_backoff_max; ++i) backoff *= 2;
  restart_at_ = now + std::min(backoff, options_.restart_backoff_max);
  return State::kRestarting;
}

void WorkerProcess::Respawn() {
  {
    MutexLock lock(mu_);
    ++restarts_;
  }
  Status spawned = Spawn();
  State next = State::kRunning;
  {
    MutexLock lock(mu_);
    if (!spawned.ok()) next = RecordDeathLocked(SteadyClock::now());
    state_ = next;
  }
  if (!spawned.ok()) {
    log_->error("{}worker restart failed: {}{}", options_.log_prefix, spawned.message(),
                next == State::kFailed ? "; giving up" : "");
  }
  NotifyState(next);
}

void WorkerProcess::NotifyState(State state) {
  StateListener listener;
  {
    MutexLock lock(mu_);
    listener = listener_;
    listener_wants_current_ = false;  // this call tells it the current state
  }
  if (listener) listener(state);
}

void WorkerProcess::DeliverCurrentStateIfAsked() {
  StateListener listener;
  State state;
  {
    MutexLock lock(mu_);
    if (!listener_wants_current_) return;
    listener_wants_current_ = false;
    listener = listener_;
    state = state_;
  }
  if (listener) listener(state);
}

}  // namespace chorus::compute
