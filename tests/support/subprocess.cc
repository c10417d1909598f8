#include "support/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <system_error>

extern char** environ;

namespace chorus::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Memory kept for captured output; beyond it the oldest half is dropped.
constexpr std::size_t kMaxCapturedBytes = std::size_t{64} << 20;

std::string ErrnoText(int err) { return std::error_code(err, std::generic_category()).message(); }

int RemainingMs(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return left > INT_MAX ? INT_MAX : static_cast<int>(left);
}

void SleepUntilOrFor(Clock::time_point deadline, std::chrono::milliseconds step) {
  std::this_thread::sleep_until(std::min(deadline, Clock::now() + step));
}

// Closes its descriptor on scope exit, so every error path of Start() releases what it opened.
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

// Moves fd above stdin/stdout/stderr (close-on-exec), so that the child's dup2 onto 0, 1 and 2
// cannot clobber a source descriptor even if the test process runs with some of them closed.
Status LiftAboveStdio(UniqueFd& fd, std::string_view what) {
  if (fd.get() > 2) return Status::Ok();
  const int lifted = fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
  if (lifted < 0) {
    return Internal(std::string(what) + ": fcntl(F_DUPFD_CLOEXEC): " + ErrnoText(errno));
  }
  fd.reset(lifted);
  return Status::Ok();
}

bool IsExecutableFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

// What the child reports through the close-on-exec error pipe when it cannot exec.
struct ChildError {
  int stage;
  int err;
};
enum ChildStage : int { kStageSetup = 1, kStageChdir = 2, kStageExec = 3 };

struct ChildPlan {
  pid_t parent;
  const char* exe;
  char* const* argv;
  char* const* envp;
  const char* workdir;  // nullptr: inherit
  int stdin_fd;
  int out_fd;
  int err_fd;
  int max_fd;
};

[[noreturn]] void ChildFail(int err_fd, int stage) {
  const ChildError e{stage, errno};
  ssize_t ignored = write(err_fd, &e, sizeof e);
  (void)ignored;
  _exit(127);
}

// Runs between fork() and exec() in the child of a multi-threaded process: async-signal-safe
// calls only (no allocation, no locks, no stdio).
[[noreturn]] void RunChild(const ChildPlan& plan) {
  // Own process group, so Stop() reaches what the child forks.
  setpgid(0, 0);
  // Die with the test process even if it is SIGKILLed. The parent may already be gone before
  // prctl took effect, hence the re-check.
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) ChildFail(plan.err_fd, kStageSetup);
  if (getppid() != plan.parent) _exit(127);

  // Ignored signals and the blocked mask survive exec; the program should start from defaults.
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

  if (dup2(plan.stdin_fd, STDIN_FILENO) < 0 || dup2(plan.out_fd, STDOUT_FILENO) < 0 ||
      dup2(plan.out_fd, STDERR_FILENO) < 0) {
    ChildFail(plan.err_fd, kStageSetup);
  }
  if (plan.workdir != nullptr && chdir(plan.workdir) != 0) ChildFail(plan.err_fd, kStageChdir);

  // Whatever else the child inherited (descriptors other libraries opened without O_CLOEXEC)
  // is closed by exec. The error pipe is among them: its closing tells the parent exec worked.
  if (close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    for (int fd = 3; fd < plan.max_fd; ++fd) fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  execve(plan.exe, plan.argv, plan.envp);
  ChildFail(plan.err_fd, kStageExec);
}

}  // namespace

// ---- TempDir --------------------------------------------------------------------------------

Result<TempDir> TempDir::Create(std::string_view prefix, std::string_view parent) {
  const char* env = std::getenv("TMPDIR");
  std::string base(parent);
  if (base.empty()) base = (env != nullptr && *env != '\0') ? env : "/tmp";
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  std::string path = base + "/" + std::string(prefix) + "-XXXXXX";
  if (mkdtemp(path.data()) == nullptr) {
    return Internal("mkdtemp(" + path + "): " + ErrnoText(errno));
  }
  return TempDir(std::move(path));
}

TempDir& TempDir::operator=(TempDir&& other) noexcept {
  if (this != &other) {
    Remove();
    path_ = std::exchange(other.path_, {});
  }
  return *this;
}

TempDir::~TempDir() { Remove(); }

void TempDir::Remove() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
  if (ec) {
    std::fprintf(stderr, "TempDir: cannot remove %s: %s\n", path_.c_str(), ec.message().c_str());
  }
  path_.clear();
}

// ---- ports ----------------------------------------------------------------------------------

int PickFreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    std::fprintf(stderr, "PickFreePort: socket: %s\n", ErrnoText(errno).c_str());
    std::abort();
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    std::fprintf(stderr, "PickFreePort: bind 127.0.0.1:0: %s\n", ErrnoText(errno).c_str());
    std::abort();
  }
  close(fd);
  return ntohs(addr.sin_port);
}

namespace {

// One non-blocking connect to 127.0.0.1:port bounded by `deadline`; 0 or an errno value.
int TryConnect(int port, Clock::time_point deadline) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return errno;
  UniqueFd guard(fd);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return 0;
  if (errno != EINPROGRESS) return errno;
  pollfd pfd{fd, POLLOUT, 0};
  // Even with an expired deadline, give loopback a moment to answer.
  const int r = poll(&pfd, 1, std::max(RemainingMs(deadline), 50));
  if (r == 0) return ETIMEDOUT;
  if (r < 0) return errno;
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return errno;
  return err;
}

}  // namespace

Status WaitForTcpPort(int port, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const int err = TryConnect(port, deadline);
    if (err == 0) return Status::Ok();
    if (Clock::now() >= deadline) {
      return DeadlineExceeded("nothing accepted connections on 127.0.0.1:" + std::to_string(port) +
                              " within " + std::to_string(timeout.count()) +
                              " ms; last error: " + ErrnoText(err));
    }
    SleepUntilOrFor(deadline, std::chrono::milliseconds(10));
  }
}

// ---- FindExecutable -------------------------------------------------------------------------

Result<std::string> FindExecutable(std::string_view name) {
  if (name.empty()) return InvalidArgument("FindExecutable: empty program name");
  if (name.find('/') != std::string_view::npos) {
    std::string path(name);
    if (IsExecutableFile(path)) return path;
    return NotFound("not an executable file: " + path);
  }
  const char* env_path = std::getenv("PATH");
  std::string dirs = env_path != nullptr ? env_path : "";
  dirs += ":/usr/local/sbin:/usr/sbin:/sbin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    std::size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    if (end > start) {
      std::string candidate = dirs.substr(start, end - start) + "/" + std::string(name);
      if (IsExecutableFile(candidate)) return candidate;
    }
    start = end + 1;
  }
  return NotFound("program not found in PATH or sbin directories: " + std::string(name));
}

// ---- Subprocess -----------------------------------------------------------------------------

Result<std::unique_ptr<Subprocess>> Subprocess::Start(std::vector<std::string> argv,
                                                      Options options) {
  if (argv.empty()) return InvalidArgument("Subprocess::Start: empty argv");
  const bool to_pipe = options.output == Options::Output::kPipe;
  if (!to_pipe && options.log_path.empty()) {
    return InvalidArgument("Subprocess::Start: Output::kLogFile needs log_path");
  }
  CHORUS_ASSIGN_OR_RETURN(std::string exe, FindExecutable(argv[0]));
  // Orphans of our children (a shell's background job) are re-parented to this process instead
  // of init, so ReapGroupLeftovers() can collect them: no zombies, whatever init does.
  static std::once_flag subreaper_once;
  std::call_once(subreaper_once, [] { prctl(PR_SET_CHILD_SUBREAPER, 1); });

  std::unique_ptr<Subprocess> proc(new Subprocess());
  for (const std::string& a : argv) {
    if (!proc->command_.empty()) proc->command_ += ' ';
    proc->command_ += a;
  }
  proc->mode_ = options.output;
  proc->log_path_ = options.log_path;

  // Everything the child needs is built before fork(): after it, only async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view kv(*e);
    const std::string_view name = kv.substr(0, kv.find('='));
    const bool replaced = std::any_of(options.env.begin(), options.env.end(),
                                      [&](const auto& var) { return var.first == name; });
    if (!replaced) env_strings.emplace_back(kv);
  }
  for (const auto& [name, value] : options.env) env_strings.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<char*> args;
  for (std::string& a : argv) args.push_back(a.data());
  args.push_back(nullptr);

  UniqueFd null_fd(open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null_fd.get() < 0) return Internal("open(/dev/null): " + ErrnoText(errno));
  CHORUS_RETURN_IF_ERROR(LiftAboveStdio(null_fd, "stdin"));

  UniqueFd out_read, out_write, wake;
  if (to_pipe) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return Internal("pipe2: " + ErrnoText(errno));
    out_read.reset(p[0]);
    out_write.reset(p[1]);
    if (fcntl(out_read.get(), F_SETFL, O_NONBLOCK) != 0) {
      return Internal("fcntl(O_NONBLOCK): " + ErrnoText(errno));
    }
    wake.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (wake.get() < 0) return Internal("eventfd: " + ErrnoText(errno));
  } else {
    out_write.reset(
        open(options.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (out_write.get() < 0) return Internal("open(" + options.log_path + "): " + ErrnoText(errno));
    // No other thread sees `proc` yet; the lock is uncontended and keeps the analysis exact.
    MutexLock lock(proc->mu_);
    proc->log_fd_ = open(options.log_path.c_str(), O_RDONLY | O_CLOEXEC);
    if (proc->log_fd_ < 0) return Internal("open(" + options.log_path + "): " + ErrnoText(errno));
    struct stat st;
    if (fstat(proc->log_fd_, &st) == 0) proc->log_offset_ = static_cast<std::size_t>(st.st_size);
  }
  CHORUS_RETURN_IF_ERROR(LiftAboveStdio(out_write, "output"));

  UniqueFd err_read, err_write;
  {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return Internal("pipe2: " + ErrnoText(errno));
    err_read.reset(p[0]);
    err_write.reset(p[1]);
  }
  CHORUS_RETURN_IF_ERROR(LiftAboveStdio(err_write, "exec status pipe"));

  struct rlimit nofile;
  int max_fd = 65536;
  if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    max_fd = static_cast<int>(std::min<rlim_t>(nofile.rlim_cur, INT_MAX));
  }
  const ChildPlan plan{getpid(),
                       exe.c_str(),
                       args.data(),
                       envp.data(),
                       options.working_dir.empty() ? nullptr : options.working_dir.c_str(),
                       null_fd.get(),
                       out_write.get(),
                       err_write.get(),
                       max_fd};

  const pid_t pid = fork();
  if (pid < 0) return Internal("fork: " + ErrnoText(errno));
  if (pid == 0) RunChild(plan);

  err_write.reset();
  out_write.reset();
  null_fd.reset();

  // The error pipe closes at exec (EOF: success) or carries why the child could not get there.
  ChildError child_error{};
  ssize_t n;
  do {
    n = read(err_read.get(), &child_error, sizeof child_error);
  } while (n < 0 && errno == EINTR);
  if (n != 0) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (n != static_cast<ssize_t>(sizeof child_error)) {
      return Internal("Subprocess::Start(" + proc->command_ + "): lost the child's exec status");
    }
    const std::string why = ErrnoText(child_error.err);
    switch (child_error.stage) {
      case kStageChdir:
        return InvalidArgument("Subprocess::Start(" + proc->command_ + "): chdir(" +
                               options.working_dir + "): " + why);
      case kStageExec:
        return Internal("Subprocess::Start(" + proc->command_ + "): execve(" + exe + "): " + why);
      default:
        return Internal("Subprocess::Start(" + proc->command_ + "): child setup: " + why);
    }
  }

  proc->pid_ = pid;
#ifdef SYS_pidfd_open
  // Lets waits sleep in poll() until the exit instead of polling waitid. The child cannot have
  // been reaped yet (only we reap it), so the pidfd refers to it.
  proc->pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#endif
  if (to_pipe) {
    proc->out_fd_ = out_read.release();
    proc->wake_fd_ = wake.release();
    proc->reader_ = std::thread(&Subprocess::ReaderLoop, proc.get());
  }
  return proc;
}

Subprocess::~Subprocess() {
  Stop();
  if (pidfd_ >= 0) close(pidfd_);
  if (log_fd_ >= 0) close(log_fd_);
}

void Subprocess::RecordStatus(int wait_status) {
  reaped_ = true;
  if (WIFSIGNALED(wait_status)) {
    term_signal_ = WTERMSIG(wait_status);
    exit_code_ = kSignalExitBase + term_signal_;
  } else if (WIFEXITED(wait_status)) {
    exit_code_ = WEXITSTATUS(wait_status);
  } else {
    exit_code_ = kUnknownExit;
  }
}

bool Subprocess::Reap(bool block) {
  if (reaped_ || pid_ <= 0) return true;
  siginfo_t info;
  for (;;) {
    std::memset(&info, 0, sizeof info);
    const int options = WEXITED | WNOWAIT | (block ? 0 : WNOHANG);
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, options) == 0) break;
    if (errno == EINTR) continue;
    // ECHILD: reaped behind our back (SIGCHLD ignored). Nothing left to kill safely.
    reaped_ = true;
    exit_code_ = kUnknownExit;
    return true;
  }
  if (info.si_pid == 0) return false;  // still running (WNOHANG)
  // The child is a zombie: its pid is still allocated, so the group id is still ours.
  kill(-pid_, SIGKILL);
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    RecordStatus(status);
  } else {
    reaped_ = true;
    exit_code_ = kUnknownExit;
  }
  ReapGroupLeftovers();
  // The child and its group are dead, so all they wrote is in the pipe: collect it now, so that
  // output() right after Wait() is complete.
  StopReader();
  return true;
}

void Subprocess::ReapGroupLeftovers() {
  // Members of the group orphaned by the child were re-parented to us (we are a subreaper, see
  // Start()) and were just SIGKILLed: collect them so they do not linger as zombies. Bounded, in
  // case one is stuck in an uninterruptible sleep.
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  auto step = std::chrono::milliseconds(1);
  for (;;) {
    int status;
    const pid_t r = waitpid(-pid_, &status, WNOHANG);
    if (r > 0) continue;
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || Clock::now() >= deadline) return;  // ECHILD: none left
    SleepUntilOrFor(deadline, step);
    step = std::min(step * 2, std::chrono::milliseconds(10));
  }
}

bool Subprocess::WaitExitedNoReap(Clock::time_point deadline) {
  auto step = std::chrono::milliseconds(1);
  for (;;) {
    if (reaped_) return true;
    siginfo_t info;
    std::memset(&info, 0, sizeof info);
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT | WNOHANG) != 0) {
      if (errno == EINTR) continue;
      return true;  // ECHILD: gone; Reap() records it
    }
    if (info.si_pid != 0) return true;
    if (Clock::now() >= deadline) return false;
    if (pidfd_ >= 0) {
      pollfd pfd{pidfd_, POLLIN, 0};
      poll(&pfd, 1, std::min(RemainingMs(deadline), 1000));
    } else {
      SleepUntilOrFor(deadline, step);
      step = std::min(step * 2, std::chrono::milliseconds(10));
    }
  }
}

bool Subprocess::running() { return !Reap(/*block=*/false); }

Result<int> Subprocess::Wait(std::chrono::milliseconds timeout) {
  if (!reaped_ && !WaitExitedNoReap(Clock::now() + timeout)) {
    return DeadlineExceeded("pid " + std::to_string(pid_) + " (" + command_ +
                            ") still running after " + std::to_string(timeout.count()) + " ms");
  }
  Reap(/*block=*/true);
  return exit_code_;
}

Status Subprocess::Signal(int sig) {
  if (reaped_) {
    return FailedPrecondition("pid " + std::to_string(pid_) + " (" + command_ + ") already exited");
  }
  if (kill(pid_, sig) != 0) {
    return Internal("kill(" + std::to_string(pid_) + ", " + std::to_string(sig) +
                    "): " + ErrnoText(errno));
  }
  return Status::Ok();
}

int Subprocess::Stop(std::chrono::milliseconds grace) {
  if (pid_ > 0 && !reaped_) {
    kill(-pid_, SIGTERM);
    if (!WaitExitedNoReap(Clock::now() + grace)) kill(-pid_, SIGKILL);
    Reap(/*block=*/true);
  }
  StopReader();
  return exit_code_;
}

// ---- output ---------------------------------------------------------------------------------

void Subprocess::ReaderLoop() {
  char chunk[64 * 1024];
  bool stopping = false;
  bool at_eof = false;
  while (!at_eof && !stopping) {
    pollfd fds[2] = {{out_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    // Told to stop: the child is reaped, so what it wrote is already in the pipe; take it all.
    if (fds[1].revents != 0) stopping = true;
    for (;;) {
      const ssize_t n = read(out_fd_, chunk, sizeof chunk);
      if (n > 0) {
        MutexLock lock(mu_);
        AppendLocked(chunk, static_cast<std::size_t>(n));
        cv_.NotifyAll();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) break;
      at_eof = true;  // every writer closed the pipe (or it failed): no more output
      break;
    }
  }
  MutexLock lock(mu_);
  eof_ = true;
  cv_.NotifyAll();
}

void Subprocess::StopReader() {
  if (reader_.joinable()) {
    const uint64_t one = 1;
    ssize_t ignored = write(wake_fd_, &one, sizeof one);
    (void)ignored;
    reader_.join();
  }
  if (out_fd_ >= 0) close(std::exchange(out_fd_, -1));
  if (wake_fd_ >= 0) close(std::exchange(wake_fd_, -1));
}

void Subprocess::AppendLocked(const char* data, std::size_t n) const {
  buf_.append(data, n);
  if (buf_.size() <= kMaxCapturedBytes) return;
  std::size_t cut = buf_.size() - kMaxCapturedBytes / 2;
  const std::size_t nl = buf_.find('\n', cut);
  if (nl != std::string::npos) cut = nl + 1;
  buf_.erase(0, cut);
  dropped_ += cut;
}

void Subprocess::RefreshLogLocked() const {
  if (log_fd_ < 0) return;
  char chunk[64 * 1024];
  for (;;) {
    const ssize_t n = pread(log_fd_, chunk, sizeof chunk, static_cast<off_t>(log_offset_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    AppendLocked(chunk, static_cast<std::size_t>(n));
    log_offset_ += static_cast<std::size_t>(n);
  }
}

std::string Subprocess::OutputLocked() const {
  if (dropped_ == 0) return buf_;
  return "[... " + std::to_string(dropped_) + " earlier bytes dropped ...]\n" + buf_;
}

std::string Subprocess::TailLocked(std::size_t max_lines) const {
  if (buf_.empty()) return "(no output)";
  if (max_lines == 0) return "";
  std::size_t end = buf_.size();
  if (buf_[end - 1] == '\n') --end;
  std::size_t start = end;
  std::size_t lines = 0;
  while (start > 0) {
    const std::size_t nl = buf_.rfind('\n', start - 1);
    if (nl == std::string::npos) {
      start = 0;
      break;
    }
    if (++lines == max_lines) {
      start = nl + 1;
      break;
    }
    start = nl;
  }
  return buf_.substr(start, end - start);
}

std::string Subprocess::output() const {
  MutexLock lock(mu_);
  if (mode_ == Options::Output::kLogFile) RefreshLogLocked();
  return OutputLocked();
}

std::string Subprocess::OutputTail(std::size_t max_lines) const {
  MutexLock lock(mu_);
  if (mode_ == Options::Output::kLogFile) RefreshLogLocked();
  return TailLocked(max_lines);
}

Result<std::string> Subprocess::WaitForLine(std::string_view substring,
                                            std::chrono::milliseconds timeout) {
  const std::string needle(substring);
  return WaitForLineImpl(
      [&needle](std::string_view line) { return line.find(needle) != std::string_view::npos; },
      "containing \"" + needle + "\"", timeout);
}

Result<std::string> Subprocess::WaitForLine(const std::function<bool(std::string_view)>& predicate,
                                            std::chrono::milliseconds timeout) {
  return WaitForLineImpl(predicate, "accepted by the predicate", timeout);
}

Result<std::string> Subprocess::WaitForLineImpl(
    const std::function<bool(std::string_view)>& predicate, std::string_view what,
    std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  const bool from_log = mode_ == Options::Output::kLogFile;
  std::size_t pos = 0;  // absolute offset of the next line to examine
  for (;;) {
    // Decided before reading, so a line written just before the exit is still seen. running()
    // may stop the reader thread, so it is never called with mu_ held.
    const bool exited = from_log && !running();
    MutexLock lock(mu_);
    const bool finished = from_log ? exited : eof_;
    if (from_log) RefreshLogLocked();

    pos = std::max(pos, dropped_);
    for (;;) {
      const std::size_t rel = pos - dropped_;
      const std::size_t nl = buf_.find('\n', rel);
      const bool last_partial = nl == std::string::npos && finished && rel < buf_.size();
      if (nl == std::string::npos && !last_partial) break;
      const std::size_t line_end = last_partial ? buf_.size() : nl;
      std::string_view line(buf_.data() + rel, line_end - rel);
      pos = dropped_ + line_end + (last_partial ? 0 : 1);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (predicate(line)) return std::string(line);
    }

    const std::string who = "pid " + std::to_string(pid_) + " (" + command_ + ")";
    if (finished) {
      const std::string tail = TailLocked(30);
      lock.Unlock();
      const std::string how =
          running() ? "closed its output" : "exited with code " + std::to_string(exit_code_);
      return FailedPrecondition(who + " " + how + " without a line " + std::string(what) +
                                "; output tail:\n" + tail);
    }
    if (Clock::now() >= deadline) {
      return DeadlineExceeded(who + ": no line " + std::string(what) + " within " +
                              std::to_string(timeout.count()) + " ms; output tail:\n" +
                              TailLocked(30));
    }
    if (from_log) {
      lock.Unlock();
      SleepUntilOrFor(deadline, std::chrono::milliseconds(5));
    } else {
      cv_.WaitUntil(mu_, deadline);
    }
  }
}

}  // namespace chorus::testing
