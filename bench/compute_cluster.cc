#include "compute_cluster.h"

#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "base/mutex.h"
#include "base/random.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "compute_sim.h"
#include "net/token.h"

namespace chorus::bench {

Status ComputeClusterOptions::Validate() const {
  if (chorus_bin.empty()) return InvalidArgument("--chorus-bin: the chorus binary is required");
  if (access(chorus_bin.c_str(), X_OK) != 0)
    return InvalidArgument("--chorus-bin: " + chorus_bin + " is not executable");
  if (nodes < 2 || nodes > 100'000) return InvalidArgument("--nodes: 2..100000");
  if (slots < 1 || slots > 1000) return InvalidArgument("--slots: 1..1000");
  if (replicas < 1 || replicas > 100'000) return InvalidArgument("--replicas: 1..100000 (an app's limit)");
  if (static_cast<int64_t>(replicas) > static_cast<int64_t>(nodes) * slots) {
    return InvalidArgument("--replicas: more than nodes x slots can hold");
  }
  if (node_cpu_millis < 10 * slots || node_memory_mb < slots) {
    return InvalidArgument("--node-cpu/--node-memory: too small for `slots` replicas of 10m/1Mi");
  }
  if (drains < 0 || crashes < 0 || drains + crashes > nodes / 2) {
    return InvalidArgument("--drains/--crashes: at least 0, together at most half the nodes");
  }
  if (schedulers != 1 && schedulers != 2) return InvalidArgument("--schedulers: 1 or 2");
  return Status::Ok();
}

namespace {

namespace fs = std::filesystem;

constexpr int kResourceServers = 2;
constexpr auto kQuiet = std::chrono::milliseconds(500);  // "settled": nothing changed this long

std::atomic<bool> g_interrupted{false};
extern "C" void OnStopSignal(int) { g_interrupted.store(true); }
bool Interrupted() { return g_interrupted.load(); }

// SIGINT/SIGTERM end the run early (the children are still stopped); restored afterwards.
class SignalGuard {
 public:
  SignalGuard() {
    struct sigaction sa {};
    sa.sa_handler = OnStopSignal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
    g_interrupted.store(false);
  }
  ~SignalGuard() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

SteadyTime Now() { return std::chrono::steady_clock::now(); }
double Ms(Duration d) { return static_cast<double>(d.count()) / 1e6; }

// Runs wait(slice_deadline) in slices of at most 200 ms, so an interrupt is noticed.
template <typename F>
auto Sliced(SteadyTime deadline, F&& wait) -> decltype(wait(deadline)) {
  while (true) {
    const SteadyTime slice = std::min(deadline, Now() + std::chrono::milliseconds(200));
    auto r = wait(slice);
    if (r || Now() >= deadline || Interrupted()) return r;
  }
}

void SleepFor(Duration d) {
  const SteadyTime until = Now() + d;
  while (Now() < until && !Interrupted()) {
    std::this_thread::sleep_for(std::min<Duration>(until - Now(), std::chrono::milliseconds(50)));
  }
}

Result<std::vector<uint16_t>> FreePorts(int n) {
  std::vector<int> fds;
  std::vector<uint16_t> ports;
  Status error;
  for (int i = 0; i < n && error.ok(); ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = Internal(std::string("socket: ") + std::strerror(errno));
      break;
    }
    fds.push_back(fd);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      error = Internal(std::string("bind: ") + std::strerror(errno));
      break;
    }
    ports.push_back(ntohs(addr.sin_port));
  }
  for (const int fd : fds) ::close(fd);
  if (!error.ok()) return error;
  return ports;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Tail(const std::string& path, size_t lines) {
  const std::string text = ReadFile(path);
  size_t pos = text.size();
  for (size_t n = 0; n <= lines && pos > 0;) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) {
      pos = 0;
      break;
    }
    ++n;
  }
  std::string out;
  std::istringstream in(text.substr(pos));
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) out += "    " + line + "\n";
  }
  return out;
}

// CPU seconds (user + system) of a live process, from /proc/<pid>/stat; -1 if unreadable.
double ProcessCpuSeconds(pid_t pid) {
  const std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream in(stat.substr(paren + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double SelfCpuSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// ---------------------------------------------------------------------------------------------
// Child processes

// One chorus process: its own process group, output to a log file, killed with us (PDEATHSIG;
// must be spawned from the thread that lives as long as the run: the main thread).
class Child {
 public:
  static Result<std::unique_ptr<Child>> Spawn(std::string name, const std::vector<std::string>& argv,
                                              const std::string& log_path) {
    const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return Internal("cannot open " + log_path + ": " + std::strerror(errno));
    const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    // chorus reads CHORUS_* variables as configuration (and refuses unknown ones, e.g. a script's
    // CHORUS_BIN): the children are configured by their flags alone.
    std::vector<char*> env;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, "CHORUS_", 7) != 0) env.push_back(*e);
    }
    env.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
      ::close(fd);
      if (null_fd >= 0) ::close(null_fd);
      return Internal(std::string("fork: ") + std::strerror(errno));
    }
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec.
      ::setpgid(0, 0);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      if (null_fd >= 0) ::dup2(null_fd, 0);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      ::execve(args[0], args.data(), env.data());
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also here: no race with a signal sent before the child ran
    ::close(fd);
    if (null_fd >= 0) ::close(null_fd);
    auto child = std::unique_ptr<Child>(new Child());
    child->name_ = std::move(name);
    child->log_ = log_path;
    child->pid_ = pid;
    return child;
  }

  ~Child() { Stop(std::chrono::seconds(5)); }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  const std::string& name() const { return name_; }
  const std::string& log() const { return log_; }
  pid_t pid() const { return pid_; }

  bool Alive() {
    if (reaped_) return false;
    const pid_t r = ::waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) reaped_ = true;
    return !reaped_;
  }
  // The exit code once it ended (128 + signal when killed).
  int ExitCode() const {
    if (WIFEXITED(status_)) return WEXITSTATUS(status_);
    if (WIFSIGNALED(status_)) return 128 + WTERMSIG(status_);
    return -1;
  }

  // Waits up to `timeout` for the process to end by itself; true if it did.
  bool Wait(Duration timeout) {
    const SteadyTime until = Now() + timeout;
    while (Alive()) {
      if (Now() >= until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }

  // SIGTERM to its process group, SIGKILL after `grace`.
  void Stop(Duration grace) {
    if (pid_ <= 0 || !Alive()) return;
    ::kill(-pid_, SIGTERM);
    if (Wait(grace)) return;
    std::fprintf(stderr, "compute-cluster: %s (pid %d) ignored SIGTERM for %.0f s: SIGKILL\n", name_.c_str(),
                 static_cast<int>(pid_), Ms(grace) / 1000);
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
    reaped_ = true;
  }

 private:
  Child() = default;
  std::string name_;
  std::string log_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int status_ = 0;
};

// Runs a short command (apply, delete) to completion; its exit code.
Result<int> RunCommand(std::string name, const std::vector<std::string>& argv, const std::string& log_path,
                       Duration timeout) {
  CHORUS_ASSIGN_OR_RETURN(auto child, Child::Spawn(std::move(name), argv, log_path));
  if (!child->Wait(timeout)) {
    child->Stop(std::chrono::seconds(1));
    return DeadlineExceeded(child->name() + " did not finish in time; its log:\n" + Tail(log_path, 20));
  }
  return child->ExitCode();
}

// Waits until `needle` appears in the child's log.
Status WaitForLog(Child& child, const std::string& needle, SteadyTime deadline) {
  while (true) {
    if (ReadFile(child.log()).find(needle) != std::string::npos) return Status::Ok();
    if (!child.Alive()) {
      return Unavailable(child.name() + " exited (code " + std::to_string(child.ExitCode()) +
                         "); its log:\n" + Tail(child.log(), 30));
    }
    if (Now() >= deadline || Interrupted()) {
      return DeadlineExceeded(child.name() + " did not log \"" + needle + "\" in time; its log:\n" +
                              Tail(child.log(), 30));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// ---------------------------------------------------------------------------------------------
// The view tracker: one Watch per resource server, recording when each node was first seen
// draining and offline in each view.

class ViewTracker {
 public:
  ViewTracker(std::vector<std::string> servers, std::string token)
      : servers_(std::move(servers)),
        token_(std::move(token)),
        views_(servers_.size()),
        contexts_(servers_.size()) {}
  ~ViewTracker() { Stop(); }

  void Start() {
    for (size_t i = 0; i < servers_.size(); ++i) threads_.emplace_back([this, i] { Loop(i); });
  }

  void Stop() {
    {
      MutexLock lock(mu_);
      stopping_ = true;
      for (grpc::ClientContext* ctx : contexts_) {
        if (ctx != nullptr) ctx->TryCancel();
      }
      cv_.NotifyAll();
    }
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

  // Waits until every view lists at least n online nodes.
  bool WaitOnline(size_t n, SteadyTime deadline) {
    MutexLock lock(mu_);
    return cv_.WaitUntil(mu_, deadline, [&]() REQUIRES(mu_) {
      return std::all_of(views_.begin(), views_.end(), [&](const View& v) { return v.online >= n; });
    });
  }

  // Waits until every view got its first (full) update.
  bool WaitSynced(SteadyTime deadline) {
    MutexLock lock(mu_);
    return cv_.WaitUntil(mu_, deadline, [&]() REQUIRES(mu_) {
      return std::all_of(views_.begin(), views_.end(), [](const View& v) { return v.synced; });
    });
  }

  size_t MinOnline() const {
    MutexLock lock(mu_);
    size_t n = SIZE_MAX;
    for (const View& v : views_) n = std::min(n, v.online);
    return n;
  }

  // The moment the last view showed `node` draining; nullopt at the deadline.
  std::optional<SteadyTime> WaitDraining(const std::string& node, SteadyTime deadline) {
    return WaitAll(node, deadline,
                   [](const Seen& s) { return s.draining ? std::optional(s.draining_at) : std::nullopt; });
  }
  // The moment the last view showed `node` offline.
  std::optional<SteadyTime> WaitOffline(const std::string& node, SteadyTime deadline) {
    return WaitAll(node, deadline,
                   [](const Seen& s) { return !s.online ? std::optional(s.offline_at) : std::nullopt; });
  }

  uint64_t restarts() const {
    MutexLock lock(mu_);
    return restarts_;
  }

  // Of `ids`, those some view does not list as online.
  std::vector<std::string> NotOnlineEverywhere(const std::vector<std::string>& ids) const {
    MutexLock lock(mu_);
    std::vector<std::string> out;
    for (const std::string& id : ids) {
      for (const View& v : views_) {
        auto it = v.nodes.find(id);
        if (it == v.nodes.end() || !it->second.online) {
          out.push_back(id);
          break;
        }
      }
    }
    return out;
  }

 private:
  struct Seen {
    bool online = false;
    bool draining = false;
    SteadyTime draining_at{};
    SteadyTime offline_at{};
  };
  struct View {
    std::unordered_map<std::string, Seen> nodes;
    size_t online = 0;
    bool synced = false;  // the first full update arrived
  };

  template <typename F>
  std::optional<SteadyTime> WaitAll(const std::string& node, SteadyTime deadline, F when) {
    MutexLock lock(mu_);
    std::optional<SteadyTime> last;
    auto check = [&]() REQUIRES(mu_) {
      SteadyTime latest{};
      for (const View& v : views_) {
        auto it = v.nodes.find(node);
        if (it == v.nodes.end()) return false;
        const std::optional<SteadyTime> t = when(it->second);
        if (!t) return false;
        latest = std::max(latest, *t);
      }
      last = latest;
      return true;
    };
    if (!cv_.WaitUntil(mu_, deadline, check)) return std::nullopt;
    return last;
  }

  void Apply(size_t server, const cpb::ViewUpdate& update, SteadyTime now) {
    MutexLock lock(mu_);
    View& view = views_[server];
    if (update.full()) view.synced = true;
    for (const cpb::NodeStatus& n : update.nodes()) {
      auto [it, inserted] = view.nodes.try_emplace(n.node_id());
      Seen& s = it->second;
      if (n.online() && (inserted || !s.online)) ++view.online;
      if (!n.online() && !inserted && s.online) --view.online;
      if (n.draining() && !s.draining) s.draining_at = now;
      if (!n.online() && (inserted || s.online)) s.offline_at = now;
      s.online = n.online();
      s.draining = n.draining();
    }
    cv_.NotifyAll();
  }

  void Loop(size_t server) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(256 * 1024 * 1024);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto stub = cpb::Resource::NewStub(
        grpc::CreateCustomChannel(servers_[server], grpc::InsecureChannelCredentials(), args));
    while (true) {
      grpc::ClientContext ctx;
      ctx.AddMetadata("authorization", "Bearer " + token_);
      {
        MutexLock lock(mu_);
        if (stopping_) return;
        contexts_[server] = &ctx;
      }
      auto reader = stub->Watch(&ctx, cpb::WatchRequest());
      cpb::ViewUpdate update;
      bool got_any = false;
      while (reader->Read(&update)) {
        got_any = true;
        Apply(server, update, Now());
        update.Clear();
      }
      const grpc::Status st = reader->Finish();
      MutexLock lock(mu_);
      contexts_[server] = nullptr;
      if (stopping_) return;
      if (got_any) {
        ++restarts_;
        std::fprintf(stderr, "compute-cluster: watch on %s ended (%s); watching again\n",
                     servers_[server].c_str(), st.error_message().c_str());
      }
      (void)cv_.WaitFor(mu_, std::chrono::milliseconds(100), [&]() REQUIRES(mu_) { return stopping_; });
    }
  }

  const std::vector<std::string> servers_;
  const std::string token_;
  mutable Mutex mu_;
  CondVar cv_;
  std::vector<View> views_ GUARDED_BY(mu_);
  std::vector<grpc::ClientContext*> contexts_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  uint64_t restarts_ GUARDED_BY(mu_) = 0;
  std::vector<std::thread> threads_;
};

// ---------------------------------------------------------------------------------------------
// Figures

struct Samples {
  std::vector<double> ms;
  int timeouts = 0;

  // Nearest rank; 0 when empty.
  double Percentile(double p) const {
    if (ms.empty()) return 0;
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    const double rank = std::ceil(p / 100.0 * static_cast<double>(sorted.size()));
    const size_t index = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(sorted.size()))) - 1;
    return sorted[index];
  }
  double Max() const { return ms.empty() ? 0 : *std::max_element(ms.begin(), ms.end()); }
};

struct Round {
  std::string app;
  int schedulers = 0;
  bool measured = false;
  double elapsed_s = 0;
  double placements_per_s = 0;
  double first_claim_ms = 0;            // apply -> first accepted claim
  double settled_ms = 0;                // apply -> exactly R and quiet
  int64_t peak = 0;                     // most replicas serving at once
  SimCounters claims;                   // during the round (apply .. settled)
  std::vector<int> timeline;            // accepted claims per 250 ms from the apply until placed
  std::map<std::string, double> cpu_s;  // CPU seconds per process from the apply until placed
};

std::string Thousands(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.0f", v);
  std::string digits = buf, out;
  const bool negative = !digits.empty() && digits[0] == '-';
  if (negative) digits.erase(0, 1);
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return negative ? "-" + out : out;
}

std::string Fmt(const char* format, double a) {
  char buf[128];
  std::snprintf(buf, sizeof buf, format, a);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// The run

class ClusterRun {
 public:
  explicit ClusterRun(const ComputeClusterOptions& o) : o_(o), rng_(o.seed) {}
  ~ClusterRun() { Shutdown(); }

  Status Setup() {
    // Every process of the cluster may hold a few thousand sockets; children inherit the limit.
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (o_.work_dir.empty()) {
      char tmpl[] = "/tmp/chorus-compute-cluster.XXXXXX";
      if (::mkdtemp(tmpl) == nullptr) return Internal(std::string("mkdtemp: ") + std::strerror(errno));
      work_ = tmpl;
      own_work_ = true;
    } else {
      work_ = o_.work_dir;
      std::error_code ec;
      fs::create_directories(work_, ec);
      if (ec) return Internal("cannot create " + work_ + ": " + ec.message());
    }
    data_ = work_ + "/data";
    std::fprintf(stderr, "compute-cluster: work dir %s\n", work_.c_str());

    // One secret for every process (they share --data-dir) and one token with every scope.
    CHORUS_ASSIGN_OR_RETURN(std::string secret, net::LoadOrCreateSecret(data_));
    CHORUS_ASSIGN_OR_RETURN(net::TokenSigner signer, net::TokenSigner::Create(std::move(secret)));
    signer_.emplace(std::move(signer));
    net::TokenClaims claims;
    claims.kind = net::TokenClaims::Kind::kService;
    claims.subject = "chorus-bench";
    claims.scopes = {"compute.node", "compute.peer", "compute.schedule", "compute.admin", "compute.invoke"};
    claims.issued_at = SystemClock::Instance().WallMillis() / 1000;
    CHORUS_RETURN_IF_ERROR(net::ValidateClaims(claims));
    token_ = signer_->Sign(claims);

    // Resource servers on fixed free ports (each must name the other as its peer).
    CHORUS_ASSIGN_OR_RETURN(std::vector<uint16_t> ports, FreePorts(kResourceServers));
    for (int i = 0; i < kResourceServers; ++i) resources_.push_back("127.0.0.1:" + std::to_string(ports[i]));
    for (int i = 0; i < kResourceServers; ++i) {
      std::string peers;
      for (int j = 0; j < kResourceServers; ++j) {
        if (j == i) continue;
        peers += (peers.empty() ? "" : ",") + resources_[j];
      }
      const std::string id = "r" + std::to_string(i + 1);
      CHORUS_ASSIGN_OR_RETURN(
          auto child, Child::Spawn("resource " + id,
                                   ChorusArgs({"compute", "resource", "--http", "127.0.0.1:0", "--grpc",
                                               resources_[i], "--set", "compute.resource.id=" + id, "--set",
                                               "compute.resource.peers=" + peers}),
                                   work_ + "/" + id + ".log"));
      resource_procs_.push_back(std::move(child));
    }
    for (size_t i = 0; i < resource_procs_.size(); ++i) {
      CHORUS_RETURN_IF_ERROR(WaitForLog(*resource_procs_[i], "ready", Now() + std::chrono::seconds(30)));
      CHORUS_RETURN_IF_ERROR(PingResource(resources_[i], *resource_procs_[i]));
    }

    // The simulator, then the views: every node online on every resource server.
    NodeSimulatorOptions so;
    so.table.nodes = o_.nodes;
    so.table.capacity.slots = o_.slots;
    so.table.capacity.cpu_millis = o_.node_cpu_millis;
    so.table.capacity.memory_mb = o_.node_memory_mb;
    so.resources = resources_;
    so.token = token_;
    so.open_per_second = o_.open_per_second;
    so.nodes_per_connection = o_.nodes_per_connection;
    const SteadyTime sim_start = Now();
    CHORUS_ASSIGN_OR_RETURN(sim_, NodeSimulator::Start(std::move(so), *signer_, SystemClock::Instance()));
    tracker_ = std::make_unique<ViewTracker>(resources_, token_);
    tracker_->Start();
    const auto ramp = o_.open_per_second > 0 ? std::chrono::seconds(o_.nodes / o_.open_per_second)
                                             : std::chrono::seconds(0);
    bool online = Sliced(Now() + ramp + std::chrono::seconds(20), [&](SteadyTime d) {
      return tracker_->WaitOnline(static_cast<size_t>(o_.nodes), d);
    });
    if (!online && !Interrupted()) {
      // Nodes every view should list but some does not, though they heartbeat every second: a
      // status that never reached a peer (it is sent again only when the node changes). Say so,
      // then make them change (version+1) so the run can go on.
      std::vector<std::string> ids;
      for (size_t i = 0; i < sim_->table().size(); ++i) ids.push_back(sim_->table().node_id(i));
      const std::vector<std::string> missing = tracker_->NotOnlineEverywhere(ids);
      lost_at_registration_ = missing.size();
      std::fprintf(
          stderr,
          "compute-cluster: %zu of %d nodes are not online in every view %.0f s after they connected "
          "(first: %s); bumping their versions\n",
          missing.size(), o_.nodes, Ms(Now() - sim_start) / 1000,
          missing.empty() ? "-" : missing.front().c_str());
      for (const std::string& id : missing) {
        if (auto i = sim_->table().Find(id)) sim_->Touch(*i);
      }
      online = Sliced(Now() + std::chrono::seconds(20),
                      [&](SteadyTime d) { return tracker_->WaitOnline(static_cast<size_t>(o_.nodes), d); });
    }
    if (!online) {
      return DeadlineExceeded("only " + std::to_string(tracker_->MinOnline()) + " of " +
                              std::to_string(o_.nodes) + " simulated nodes online in every view");
    }
    registered_ms_ = Ms(Now() - sim_start);
    std::fprintf(stderr, "compute-cluster: %d nodes online in both views after %.0f ms\n", o_.nodes,
                 registered_ms_);
    // The tracker is apparatus: it watches again only for the drains and crashes, so that
    // placement is measured without its load (here and on the resource servers).
    watch_restarts_ += tracker_->restarts();
    tracker_.reset();
    cpu_start_ = Cpu();
    return Status::Ok();
  }

  Status StartTracker() {
    tracker_ = std::make_unique<ViewTracker>(resources_, token_);
    tracker_->Start();
    if (!Sliced(Now() + std::chrono::seconds(30), [&](SteadyTime d) { return tracker_->WaitSynced(d); })) {
      return DeadlineExceeded("the view tracker got no snapshot from the resource servers in 30 s");
    }
    return Status::Ok();
  }

  Status StartScheduler() {
    const size_t k = scheduler_procs_.size();
    std::string clusters;
    for (size_t j = 0; j < resources_.size(); ++j) {
      clusters += (j == 0 ? "" : "|") + resources_[(j + k) % resources_.size()];
    }
    const std::string name = "s" + std::to_string(k + 1);
    std::vector<std::string> args = {"compute", "scheduler", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                                     "--set", "compute.scheduler.clusters=" + clusters};
    if (o_.max_replicas_per_claim > 0) {
      args.push_back("--set");
      args.push_back("compute.scheduler.max_replicas_per_claim=" + std::to_string(o_.max_replicas_per_claim));
    }
    CHORUS_ASSIGN_OR_RETURN(auto child, Child::Spawn("scheduler " + name, ChorusArgs(args), work_ + "/" + name + ".log"));
    scheduler_procs_.push_back(std::move(child));
    return WaitForLog(*scheduler_procs_.back(), ": watching ", Now() + std::chrono::seconds(30));
  }

  // Applies `app` with R replicas and measures until they are placed, then until settled.
  Status Place(const std::string& app, Round* round) {
    round->app = app;
    round->schedulers = static_cast<int>(scheduler_procs_.size());
    const std::string file = work_ + "/" + app + ".yaml";
    {
      std::ofstream out(file, std::ios::trunc);
      out << "name: " << app << "\n"
          << "resources: {cpu: 10m, memory: 1Mi}\n"
          << "replicas: " << o_.replicas << "\n"
          << "max_concurrency: 1\n"
          << "engine: {type: synthetic, cpu_ms: 0, latency_ms: 0}\n";
      if (!out) return Internal("cannot write " + file);
    }
    sim_->table().ResetPeak(app);
    const SimCounters before = sim_->table().counters();
    const int64_t want = o_.replicas;
    const std::map<std::string, double> cpu_before = Cpu();
    const SteadyTime t0 = Now();
    CHORUS_ASSIGN_OR_RETURN(int rc, RunCommand("apply " + app,
                                               {o_.chorus_bin, "compute", "apply", file, "--server",
                                                resources_[0], "--token", token_},
                                               work_ + "/apply-" + app + ".log", std::chrono::seconds(30)));
    if (rc != 0) {
      return Internal("chorus compute apply exited " + std::to_string(rc) + ":\n" +
                      Tail(work_ + "/apply-" + app + ".log", 10));
    }
    const SteadyTime deadline = t0 + o_.placement_timeout;
    const auto placed = Sliced(deadline, [&](SteadyTime d) {
      return sim_->table().WaitServing(
          app, [want](int64_t n) { return n >= want; }, d);
    });
    if (!placed) {
      return DeadlineExceeded(app + ": " + std::to_string(sim_->table().Serving(app)) + " of " +
                              std::to_string(want) + " replicas placed after " +
                              Fmt("%.0f", Ms(o_.placement_timeout) / 1000) + " s" + ProcessNote());
    }
    for (const auto& [name, end] : Cpu()) {
      auto start = cpu_before.find(name);
      if (end >= 0)
        round->cpu_s[name] = end - (start == cpu_before.end() ? 0.0 : std::max(0.0, start->second));
    }
    if (auto first = sim_->table().WaitAccepted(app, t0, 1, Now())) round->first_claim_ms = Ms(*first - t0);
    round->elapsed_s = Ms(*placed - t0) / 1000;
    round->placements_per_s = static_cast<double>(want) / std::max(round->elapsed_s, 1e-9);
    const auto settled = Settle(app, want, Now() + std::chrono::seconds(60));
    if (!settled) {
      return DeadlineExceeded(app + ": did not settle at " + std::to_string(want) + " replicas (now " +
                              std::to_string(sim_->table().Serving(app)) + ")" + ProcessNote());
    }
    round->settled_ms = Ms(*settled - t0);
    round->peak = sim_->table().PeakServing(app);
    round->claims = sim_->table().counters() - before;
    round->measured = true;
    // Claims received and accepted per 250 ms from the apply: how the placement ramps and flows.
    auto per_bucket = [&](const std::vector<SteadyTime>& times) {
      std::vector<int> buckets;
      for (const SteadyTime at : times) {
        if (at < t0 || at > *placed) continue;
        const size_t bucket = static_cast<size_t>((at - t0) / std::chrono::milliseconds(250));
        if (buckets.size() <= bucket) buckets.resize(bucket + 1);
        ++buckets[bucket];
      }
      return buckets;
    };
    round->timeline = per_bucket(sim_->table().AcceptedTimes(app));
    const std::vector<int> received = per_bucket(sim_->table().ReceivedTimes(app));
    std::string timeline;
    for (size_t b = 0; b < std::max(received.size(), round->timeline.size()); ++b) {
      timeline += " " + std::to_string(b < received.size() ? received[b] : 0) + "/" +
                  std::to_string(b < round->timeline.size() ? round->timeline[b] : 0);
    }
    std::fprintf(stderr, "compute-cluster: %s replicas claimed/accepted per 250 ms:%s\n", app.c_str(),
                 timeline.c_str());
    std::fprintf(stderr,
                 "compute-cluster: %s with %d scheduler(s): %lld replicas in %.2f s (%.0f placements/s), "
                 "%llu claims (%.2f replicas per accepted claim), %llu aborted, peak %lld, settled after %.0f ms\n",
                 app.c_str(), round->schedulers, static_cast<long long>(want), round->elapsed_s,
                 round->placements_per_s, static_cast<unsigned long long>(round->claims.claims),
                 round->claims.accepted == 0 ? 0.0
                                             : static_cast<double>(round->claims.accepted_replicas) /
                                                   static_cast<double>(round->claims.accepted),
                 static_cast<unsigned long long>(round->claims.aborted), static_cast<long long>(round->peak),
                 round->settled_ms);
    return Status::Ok();
  }

  Status Delete(const std::string& app) {
    const SimCounters before = sim_->table().counters();
    const SteadyTime t0 = Now();
    CHORUS_ASSIGN_OR_RETURN(int rc, RunCommand("delete " + app,
                                               {o_.chorus_bin, "compute", "delete", app, "--server",
                                                resources_[0], "--token", token_},
                                               work_ + "/delete-" + app + ".log", std::chrono::seconds(30)));
    if (rc != 0) {
      return Internal("chorus compute delete exited " + std::to_string(rc) + ":\n" +
                      Tail(work_ + "/delete-" + app + ".log", 10));
    }
    const auto settled = Settle(app, 0, Now() + std::chrono::seconds(60));
    if (!settled) {
      return DeadlineExceeded(app + ": " + std::to_string(sim_->table().Serving(app)) +
                              " replicas still placed 60 s after delete" + ProcessNote());
    }
    deleted_ = sim_->table().counters() - before;
    delete_ms_ = Ms(*settled - t0);
    return Status::Ok();
  }

  void Drains(const std::string& app) {
    for (int k = 0; k < o_.drains && !Interrupted(); ++k) {
      const std::optional<size_t> node = PickNode(app, static_cast<size_t>(k) % resources_.size());
      if (!node) break;
      const std::string& id = sim_->table().node_id(*node);
      const SteadyTime t0 = Now();
      sim_->Drain(*node);
      const auto visible =
          Sliced(t0 + std::chrono::seconds(5), [&](SteadyTime d) { return tracker_->WaitDraining(id, d); });
      if (visible) {
        drain_visible_.ms.push_back(Ms(*visible - t0));
      } else {
        ++drain_visible_.timeouts;
        std::fprintf(stderr, "compute-cluster: drain of %s not visible everywhere within 5 s\n", id.c_str());
      }
      const int64_t want = o_.replicas;
      const auto replaced = Sliced(t0 + std::chrono::seconds(20), [&](SteadyTime d) {
        return sim_->table().WaitServing(
            app, [want](int64_t n) { return n >= want; }, d);
      });
      if (replaced) {
        drain_replaced_.ms.push_back(Ms(*replaced - t0));
      } else {
        ++drain_replaced_.timeouts;
      }
      (void)Settle(app, want, Now() + std::chrono::seconds(30));
    }
  }

  void Crashes(const std::string& app) {
    for (int k = 0; k < o_.crashes && !Interrupted(); ++k) {
      const std::optional<size_t> node = PickNode(app, static_cast<size_t>(k) % resources_.size());
      if (!node) break;
      const std::string& id = sim_->table().node_id(*node);
      const int held = sim_->table().Replicas(*node, app);
      const SteadyTime t0 = Now();
      sim_->Kill(*node);
      const auto replaced = Sliced(t0 + std::chrono::seconds(20), [&](SteadyTime d) {
        return sim_->table().WaitAccepted(app, t0, static_cast<size_t>(held), d);
      });
      if (replaced) {
        crash_replaced_.ms.push_back(Ms(*replaced - t0));
      } else {
        ++crash_replaced_.timeouts;
        std::fprintf(stderr, "compute-cluster: the %d replicas of killed %s not replaced within 20 s\n", held,
                     id.c_str());
      }
      const auto offline =
          Sliced(t0 + std::chrono::seconds(10), [&](SteadyTime d) { return tracker_->WaitOffline(id, d); });
      if (offline) {
        crash_detected_.ms.push_back(Ms(*offline - t0));
      } else {
        ++crash_detected_.timeouts;
      }
      replicas_per_crash_ += held;
      (void)Settle(app, o_.replicas, Now() + std::chrono::seconds(30));
    }
  }

  // Stops the schedulers, resource servers and the simulator. Idempotent.
  void Shutdown() {
    if (shut_down_) return;
    shut_down_ = true;
    if (!cpu_start_.empty()) cpu_end_ = Cpu();
    for (auto& c : scheduler_procs_) {
      if (!c->Alive()) ++early_exits_;
    }
    for (auto& c : resource_procs_) {
      if (!c->Alive()) ++early_exits_;
    }
    if (sim_) overcommitted_ = sim_->table().OvercommittedNodes();
    if (sim_) {
      counters_ = sim_->table().counters();
      streams_ = sim_->stream_stats();
    }
    if (tracker_) watch_restarts_ += tracker_->restarts();
    for (auto& c : scheduler_procs_) c->Stop(std::chrono::seconds(5));
    if (tracker_) tracker_->Stop();
    if (sim_) sim_->Stop();
    for (auto& c : resource_procs_) c->Stop(std::chrono::seconds(5));
  }

  void RemoveWorkDir(bool clean) {
    if (!own_work_ || o_.keep_work_dir || !clean) {
      std::fprintf(stderr, "compute-cluster: logs kept in %s\n", work_.c_str());
      return;
    }
    std::error_code ec;
    fs::remove_all(work_, ec);
  }

  ComputeClusterResult Build(const Round& one, const Round& two) const;

 private:
  std::vector<std::string> ChorusArgs(std::vector<std::string> args) const {
    args.insert(args.begin(), o_.chorus_bin);
    for (const char* s : {"runtime.pin_threads=false", "runtime.shards=1"}) {
      args.push_back("--set");
      args.push_back(s);
    }
    args.push_back("--set");
    args.push_back("compute.token=" + token_);
    args.push_back("--data-dir");
    args.push_back(data_);
    return args;
  }

  Status PingResource(const std::string& address, Child& child) {
    auto stub = cpb::Resource::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    const SteadyTime deadline = Now() + std::chrono::seconds(30);
    grpc::Status last;
    while (Now() < deadline && !Interrupted()) {
      grpc::ClientContext ctx;
      ctx.AddMetadata("authorization", "Bearer " + token_);
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
      cpb::View view;
      last = stub->GetView(&ctx, cpb::GetViewRequest(), &view);
      if (last.ok()) return Status::Ok();
      if (!child.Alive()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return Unavailable(child.name() + " at " + address + " does not answer GetView: " + last.error_message() +
                       "; its log:\n" + Tail(child.log(), 30));
  }

  // Replicas == R on live non-draining nodes and no claim or release for kQuiet; the moment the
  // last change happened.
  std::optional<SteadyTime> Settle(const std::string& app, int64_t target, SteadyTime deadline) {
    while (!Interrupted()) {
      const auto at = Sliced(deadline, [&](SteadyTime d) {
        return sim_->table().WaitServing(
            app, [target](int64_t n) { return n == target; }, d);
      });
      if (!at) return std::nullopt;
      const SteadyTime last = sim_->table().LastChange();
      const Duration quiet_for = Now() - last;
      if (quiet_for >= kQuiet && sim_->table().Serving(app) == target) return last;
      if (Now() >= deadline) return std::nullopt;
      SleepFor(std::min<Duration>(kQuiet - quiet_for, deadline - Now()) + std::chrono::milliseconds(1));
    }
    return std::nullopt;
  }

  // A random node holding replicas of `app`, neither draining nor dead, preferring `home`.
  std::optional<size_t> PickNode(const std::string& app, size_t home) {
    std::vector<size_t> any, preferred;
    for (size_t i = 0; i < sim_->table().size(); ++i) {
      if (picked_.count(i) || sim_->table().dead(i) || sim_->table().draining(i)) continue;
      if (sim_->table().Replicas(i, app) == 0) continue;
      any.push_back(i);
      if (sim_->home(i) == home) preferred.push_back(i);
    }
    const auto& from = preferred.empty() ? any : preferred;
    if (from.empty()) return std::nullopt;
    const size_t i = from[rng_.Uniform(from.size())];
    picked_.insert(i);
    return i;
  }

  std::string ProcessNote() {
    std::string note;
    for (auto* list : {&resource_procs_, &scheduler_procs_}) {
      for (auto& c : *list) {
        if (!c->Alive())
          note += "\n" + c->name() + " exited (code " + std::to_string(c->ExitCode()) + "):\n" +
                  Tail(c->log(), 20);
      }
    }
    return note;
  }

  std::map<std::string, double> Cpu() {
    std::map<std::string, double> cpu;
    for (auto* list : {&resource_procs_, &scheduler_procs_}) {
      for (auto& c : *list) {
        if (c->Alive()) cpu[c->name()] = ProcessCpuSeconds(c->pid());
      }
    }
    cpu["chorus-bench (simulator)"] = SelfCpuSeconds();
    return cpu;
  }

  const ComputeClusterOptions& o_;
  Random rng_;
  std::string work_;
  bool own_work_ = false;
  std::string data_;
  std::optional<net::TokenSigner> signer_;
  std::string token_;
  std::vector<std::string> resources_;
  std::vector<std::unique_ptr<Child>> resource_procs_;
  std::vector<std::unique_ptr<Child>> scheduler_procs_;
  std::unique_ptr<NodeSimulator> sim_;
  std::unique_ptr<ViewTracker> tracker_;
  std::set<size_t> picked_;
  double registered_ms_ = 0;
  size_t lost_at_registration_ = 0;  // nodes some view missed until they changed

  Samples drain_visible_, drain_replaced_, crash_replaced_, crash_detected_;
  int replicas_per_crash_ = 0;
  SimCounters deleted_;  // claims and releases while bench-1 was deleted
  double delete_ms_ = 0;

  bool shut_down_ = false;
  std::map<std::string, double> cpu_start_, cpu_end_;
  int early_exits_ = 0;
  size_t overcommitted_ = 0;
  SimCounters counters_;
  NodeSimulator::StreamStats streams_;
  uint64_t watch_restarts_ = 0;
};

ComputeClusterResult ClusterRun::Build(const Round& one, const Round& two) const {
  ComputeClusterResult r;
  Measurement& m = r.subject;
  m.system = "chorus";
  m.unit = "placements/s";
  m.throughput = one.placements_per_s;
  m.duration_s = one.elapsed_s;
  m.counts = {
      {"nodes", static_cast<uint64_t>(o_.nodes)},
      {"replicas", static_cast<uint64_t>(o_.replicas)},
      {"claims", counters_.claims},
      {"claims_accepted", counters_.accepted},
      {"claims_aborted", counters_.aborted},
      {"claims_exhausted", counters_.exhausted},
      {"claims_failed_precondition", counters_.failed_precondition},
      {"claims_unavailable", counters_.unavailable},
      {"claims_invalid_errors", counters_.invalid},
      {"releases", counters_.releases},
      {"released", counters_.released},
      {"releases_not_found", counters_.releases_not_found},
      {"overcommitted_nodes", overcommitted_},
      {"overcommit_errors", overcommitted_},
      {"drain_timeout_errors", static_cast<uint64_t>(drain_visible_.timeouts + drain_replaced_.timeouts)},
      {"crash_timeout_errors", static_cast<uint64_t>(crash_replaced_.timeouts + crash_detected_.timeouts)},
      {"process_exit_errors", static_cast<uint64_t>(early_exits_)},
      {"drains", drain_visible_.ms.size()},
      {"crashes", crash_replaced_.ms.size()},
      {"replicas_on_crashed_nodes", static_cast<uint64_t>(replicas_per_crash_)},
      {"heartbeats_sent", streams_.heartbeats},
      {"heartbeat_streams_broken", streams_.broken},
      {"watch_restarts", watch_restarts_},
      {"registration_lost_nodes", lost_at_registration_},
      {"peer_sync_lost_errors", lost_at_registration_},
  };
  auto& f = m.figures;
  f["nodes_registered_ms"] = registered_ms_;
  auto add_round = [&](const Round& rd, const std::string& suffix) {
    if (!rd.measured) return;
    f["placements_per_s_" + suffix] = rd.placements_per_s;
    f["placement_s_" + suffix] = rd.elapsed_s;
    f["first_claim_ms_" + suffix] = rd.first_claim_ms;
    f["settled_ms_" + suffix] = rd.settled_ms;
    f["overshoot_" + suffix] = static_cast<double>(rd.peak - o_.replicas);
    f["claims_" + suffix] = static_cast<double>(rd.claims.claims);
    f["claims_aborted_" + suffix] = static_cast<double>(rd.claims.aborted);
    f["releases_" + suffix] = static_cast<double>(rd.claims.releases);
    f["releases_not_found_" + suffix] = static_cast<double>(rd.claims.releases_not_found);
    for (const auto& [name, seconds] : rd.cpu_s) {
      std::string key = "placing_cpu_pct_" + name + "_" + suffix;
      std::replace(key.begin(), key.end(), ' ', '_');
      key.erase(std::remove_if(key.begin(), key.end(), [](char c) { return c == '(' || c == ')'; }),
                key.end());
      f[key] = 100 * seconds / std::max(rd.elapsed_s, 1e-9);
    }
    f["conflict_rate_" + suffix] = rd.claims.claims == 0 ? 0
                                                         : static_cast<double>(rd.claims.aborted) /
                                                               static_cast<double>(rd.claims.claims);
  };
  add_round(one, "1_scheduler");
  add_round(two, "2_schedulers");
  if (two.measured) {
    f["delete_all_released_ms"] = delete_ms_;
    f["delete_releases"] = static_cast<double>(deleted_.releases);
    f["delete_releases_not_found"] = static_cast<double>(deleted_.releases_not_found);
  }
  auto add_samples = [&](const Samples& s, const std::string& name) {
    if (s.ms.empty()) return;
    f[name + "_p50_ms"] = s.Percentile(50);
    f[name + "_p99_ms"] = s.Percentile(99);
    f[name + "_max_ms"] = s.Max();
  };
  add_samples(drain_visible_, "drain_visible");
  add_samples(drain_replaced_, "drain_replaced");
  add_samples(crash_replaced_, "crash_replaced");
  add_samples(crash_detected_, "crash_detected");
  f["placements_vs_target"] = one.placements_per_s / kTargetPlacementsPerS;
  f["placements_vs_nomad_c1m"] = one.placements_per_s / kNomadC1mPlacementsPerS;
  if (two.measured) {
    f["placements_2_schedulers_vs_target"] = two.placements_per_s / kTargetPlacementsPerS;
    f["placements_2_schedulers_vs_nomad_c1m"] = two.placements_per_s / kNomadC1mPlacementsPerS;
  }
  if (!drain_visible_.ms.empty())
    f["drain_p99_vs_target"] = drain_visible_.Percentile(99) / kTargetDrainVisibleMs;
  if (!crash_replaced_.ms.empty()) {
    f["crash_p99_vs_target"] = crash_replaced_.Percentile(99) / kTargetCrashReplacedMs;
    f["crash_p99_vs_seed_eviction"] = crash_replaced_.Percentile(99) / kSeedEvictionMs;
  }
  f["overcommitted_nodes"] = static_cast<double>(overcommitted_);
  // CPU over the measured part (processes started later: since their start).
  auto cpu_used = [&](const std::string& name, double end) {
    auto start = cpu_start_.find(name);
    return end - (start == cpu_start_.end() ? 0.0 : std::max(0.0, start->second));
  };
  for (const auto& [name, end] : cpu_end_) {
    if (end < 0) continue;
    std::string key = "cpu_s_" + name;
    std::replace(key.begin(), key.end(), ' ', '_');
    key.erase(std::remove_if(key.begin(), key.end(), [](char c) { return c == '(' || c == ')'; }), key.end());
    f[key] = cpu_used(name, end);
  }
  r.summary_figures = {"placements_per_s_2_schedulers", "conflict_rate_2_schedulers", "drain_visible_p99_ms",
                       "crash_replaced_p99_ms", "overcommitted_nodes"};

  r.params = {
      {"nodes", std::to_string(o_.nodes)},
      {"slots", std::to_string(o_.slots)},
      {"node_cpu_millis", std::to_string(o_.node_cpu_millis)},
      {"node_memory_mb", std::to_string(o_.node_memory_mb)},
      {"replicas", std::to_string(o_.replicas)},
      {"replica_resources", "cpu 10m, memory 1Mi"},
      {"drains", std::to_string(o_.drains)},
      {"crashes", std::to_string(o_.crashes)},
      {"schedulers", std::to_string(o_.schedulers)},
      {"open_per_second", std::to_string(o_.open_per_second)},
      {"nodes_per_connection", std::to_string(o_.nodes_per_connection)},
      {"resource_servers", std::to_string(kResourceServers)},
      {"heartbeat_interval", "1s"},
      {"seed", std::to_string(o_.seed)},
      {"max_replicas_per_claim", o_.max_replicas_per_claim == 0 ? "default" : std::to_string(o_.max_replicas_per_claim)},
      {"chorus_bin", o_.chorus_bin},
      {"load_generator", "chorus-bench compute-cluster (in-process node simulator)"},
  };

  // The table.
  std::string t;
  char line[512];
  auto row = [&](const std::string& what, const std::string& value, const std::string& target,
                 const std::string& ratio) {
    std::snprintf(line, sizeof line, "  %-44s %-42s %-32s %s\n", what.c_str(), value.c_str(), target.c_str(),
                  ratio.c_str());
    t += line;
  };
  std::snprintf(
      line, sizeof line,
      "compute-cluster: %s simulated nodes x %d slots (cpu %lldm, memory %lldMi), %d resource servers, "
      "%s replicas of cpu 10m memory 1Mi\n",
      Thousands(o_.nodes).c_str(), o_.slots, static_cast<long long>(o_.node_cpu_millis),
      static_cast<long long>(o_.node_memory_mb), kResourceServers, Thousands(o_.replicas).c_str());
  t += line;
  row("measure", "value", "target / anchor", "ratio");
  auto place_row = [&](const Round& rd) {
    if (!rd.measured) return;
    row("placements/s, " + std::to_string(rd.schedulers) +
            (rd.schedulers == 1 ? " scheduler" : " schedulers"),
        Thousands(rd.placements_per_s) + "/s (" + Fmt("%.2f", rd.elapsed_s) + " s; first claim " +
            Fmt("%.0f", rd.first_claim_ms) + " ms)",
        ">= 5,000/s; Nomad C1M 3,333/s",
        Fmt("%.2fx target, ", rd.placements_per_s / kTargetPlacementsPerS) +
            Fmt("%.2fx Nomad", rd.placements_per_s / kNomadC1mPlacementsPerS));
    const double rate = rd.claims.claims == 0 ? 0
                                              : 100.0 * static_cast<double>(rd.claims.aborted) /
                                                    static_cast<double>(rd.claims.claims);
    row("  conflict rate (ABORTED / claims)",
        Fmt("%.2f%% (", rate) + Thousands(static_cast<double>(rd.claims.aborted)) + " / " +
            Thousands(static_cast<double>(rd.claims.claims)) + ")",
        "", "");
    std::string cpu;
    for (const auto& [name, seconds] : rd.cpu_s) {
      cpu += (cpu.empty() ? "" : ", ") + name + " " +
             Fmt("%.0f%%", 100 * seconds / std::max(rd.elapsed_s, 1e-9));
    }
    t += "    CPU while placing (% of one core): " + cpu + "\n";
    row("  overshoot; releases (not found); settled",
        "+" + Thousands(static_cast<double>(rd.peak - o_.replicas)) + "; " +
            Thousands(static_cast<double>(rd.claims.releases)) + " (" +
            Thousands(static_cast<double>(rd.claims.releases_not_found)) + "); " +
            Fmt("%.0f ms", rd.settled_ms),
        "", "");
  };
  place_row(one);
  if (two.measured) {
    row("delete of bench-1: all released after",
        Fmt("%.0f ms; ", delete_ms_) + Thousands(static_cast<double>(deleted_.releases)) + " releases (" +
            Thousands(static_cast<double>(deleted_.releases_not_found)) + " not found)",
        "", "");
  }
  place_row(two);
  auto lat_row = [&](const std::string& what, const Samples& s, const std::string& target,
                     const std::string& ratio) {
    std::string value = s.ms.empty()
                            ? std::string("-")
                            : Fmt("%.0f / ", s.Percentile(50)) + Fmt("%.0f / ", s.Percentile(99)) +
                                  Fmt("%.0f ms", s.Max()) + " (n=" + std::to_string(s.ms.size()) + ")";
    if (s.timeouts > 0) value += ", " + std::to_string(s.timeouts) + " timed out";
    row(what, value, target, ratio);
  };
  lat_row("drain visible everywhere p50/p99/max", drain_visible_, "<= 500 ms",
          drain_visible_.ms.empty()
              ? ""
              : Fmt("p99 %.2fx target", drain_visible_.Percentile(99) / kTargetDrainVisibleMs));
  lat_row("drained node's replicas replaced", drain_replaced_, "", "");
  lat_row("crash -> replicas replaced p50/p99/max", crash_replaced_, "<= 3,000 ms; seed evicts in 4 s",
          crash_replaced_.ms.empty()
              ? ""
              : Fmt("p99 %.2fx target, ", crash_replaced_.Percentile(99) / kTargetCrashReplacedMs) +
                    Fmt("%.2fx seed", crash_replaced_.Percentile(99) / kSeedEvictionMs));
  lat_row("crash -> offline in every view", crash_detected_, "reconnect_grace 500 ms", "");
  row("overcommitted nodes (simulator's books)", std::to_string(overcommitted_), "0", "");
  if (lost_at_registration_ > 0) {
    row("nodes a view missed at registration",
        std::to_string(lost_at_registration_) + " (until they changed)", "0", "");
  }
  std::string cpu;
  for (const auto& [name, end] : cpu_end_) {
    if (end < 0) continue;
    cpu += (cpu.empty() ? "" : ", ") + name + " " + Fmt("%.1f s", cpu_used(name, end));
  }
  if (!cpu.empty()) t += "  CPU over the run: " + cpu + "\n";
  r.table = std::move(t);
  return r;
}

}  // namespace

Result<ComputeClusterResult> RunComputeCluster(const ComputeClusterOptions& options) {
  CHORUS_RETURN_IF_ERROR(options.Validate());
  // gRPC allocates and frees per call and message; keep glibc from returning the heap top to the
  // kernel after every burst (and faulting it in again): the simulator is apparatus, its CPU is
  // taken from the processes under test.
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  mallopt(M_TOP_PAD, 64 << 20);
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum (64 MiB was refused, silently)
  SignalGuard signals;
  ClusterRun run(options);
  Round one, two;
  Status st = run.Setup();
  if (st.ok()) st = run.StartScheduler();
  if (st.ok()) st = run.Place("bench-1", &one);
  std::string app = "bench-1";
  if (st.ok() && options.schedulers == 2) {
    st = run.Delete("bench-1");
    if (st.ok()) st = run.StartScheduler();
    if (st.ok()) st = run.Place("bench-2", &two);
    app = "bench-2";
  }
  if (st.ok() && options.drains + options.crashes > 0) st = run.StartTracker();
  if (st.ok()) run.Drains(app);
  if (st.ok()) run.Crashes(app);
  if (st.ok() && Interrupted()) st = Unavailable("interrupted");
  run.Shutdown();
  if (!st.ok()) {
    run.RemoveWorkDir(false);
    return st;
  }
  ComputeClusterResult result = run.Build(one, two);
  run.RemoveWorkDir(result.subject.ErrorCount() == 0);
  return result;
}

}  // namespace chorus::bench
