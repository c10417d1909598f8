#include "compute/node_probe.h"

#include "compute/app_spec.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>
#include <utility>

#include "base/logging.h"

extern char** environ;

namespace chorus::compute {
namespace {

constexpr int32_t kMaxGpuCount = 1024;
constexpr size_t kMaxNvidiaSmiOutput = 64 * 1024;  // ~1000 GPUs' worth of names


bool IsNameChar(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
         c == '-';
}

bool IsCardType(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), IsNameChar);
}

// A positive finite decimal number ("1", "1.6", "0.5"); no sign, no inf/nan/hex.
bool ParsePerf(std::string_view s, double& out) {
  if (s.empty() || s.find_first_not_of("0123456789.eE-") != std::string_view::npos || s.front() == '-') {
    return false;
  }
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && std::isfinite(out) && out > 0;
}

bool ParseUnsigned(std::string_view s, uint64_t& out) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t at = s.find(sep, start);
    parts.push_back(s.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

std::vector<std::string_view> Words(std::string_view s) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) ++i;
    const size_t start = i;
    while (i < s.size() && s[i] != ' ' && s[i] != '\t' && s[i] != '\r') ++i;
    if (i > start) words.push_back(s.substr(start, i - start));
  }
  return words;
}

// ---- /proc -----------------------------------------------------------------------------------

// Number of `cpuN` lines in <proc_root>/stat (the online CPUs), or 0 if the file is unreadable.
int64_t CountProcCpus(const std::string& proc_root) {
  std::ifstream in(proc_root + "/stat");
  if (!in) return 0;
  int64_t cpus = 0;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("cpu", 0) != 0) {
      if (cpus > 0) break;  // the cpuN lines are contiguous; skip the long intr line after them
      continue;
    }
    if (line.size() > 3 && line[3] >= '0' && line[3] <= '9') ++cpus;
  }
  return cpus;
}

struct MemInfo {
  std::optional<uint64_t> total_kb, available_kb, free_kb, buffers_kb, cached_kb;
};

Result<MemInfo> ReadMemInfo(const std::string& proc_root) {
  const std::string path = proc_root + "/meminfo";
  std::ifstream in(path);
  if (!in) return FailedPrecondition("cannot read " + path);
  MemInfo info;
  std::string line;
  while (std::getline(in, line)) {
    const std::vector<std::string_view> w = Words(line);  // "MemTotal:", "16303416", "kB"
    if (w.size() < 2) continue;
    uint64_t kb = 0;
    if (!ParseUnsigned(w[1], kb)) continue;
    if (w[0] == "MemTotal:") info.total_kb = kb;
    if (w[0] == "MemAvailable:") info.available_kb = kb;
    if (w[0] == "MemFree:") info.free_kb = kb;
    if (w[0] == "Buffers:") info.buffers_kb = kb;
    if (w[0] == "Cached:") info.cached_kb = kb;
  }
  if (!info.total_kb || *info.total_kb == 0) return FailedPrecondition(path + " has no MemTotal");
  return info;
}

struct CpuTimes {
  uint64_t total = 0;
  uint64_t busy = 0;
};

Result<CpuTimes> ReadCpuTimes(const std::string& proc_root) {
  const std::string path = proc_root + "/stat";
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return FailedPrecondition("cannot read " + path);
  const std::vector<std::string_view> w = Words(line);
  // cpu user nice system idle iowait irq softirq steal guest guest_nice; kernels before 2.6 stop
  // after idle. guest and guest_nice are already counted in user and nice.
  if (w.size() < 5 || w[0] != "cpu") return FailedPrecondition(path + ": first line is not the cpu line");
  uint64_t v[8] = {};
  for (size_t i = 0; i < 8 && i + 1 < w.size(); ++i) {
    if (!ParseUnsigned(w[i + 1], v[i])) return FailedPrecondition(path + ": bad cpu line");
  }
  CpuTimes t;
  for (uint64_t x : v) t.total += x;
  t.busy = t.total - v[3] - v[4];  // minus idle, iowait
  return t;
}

// ---- nvidia-smi --------------------------------------------------------------------------------

// The path of an executable `name`: itself if it contains a slash, else the first match on PATH.
// Empty if none. Empty PATH entries (the current directory) are not searched.
std::string FindProgram(const std::string& name) {
  auto executable = [](const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0;
  };
  if (name.empty()) return "";
  if (name.find('/') != std::string::npos) return executable(name) ? name : "";
  const char* path = std::getenv("PATH");
  for (std::string_view dir : Split(path != nullptr ? path : "/usr/bin:/bin", ':')) {
    if (dir.empty()) continue;
    std::string candidate = std::string(dir) + "/" + name;
    if (executable(candidate)) return candidate;
  }
  return "";
}

// Runs `argv` (argv[0] a path) with stdin and stderr on /dev/null and returns its stdout, or
// nothing if it cannot start, exits non-zero or by a signal, prints more than `max_bytes`, or is
// still running after `timeout_ms` (then it is killed). Never leaves a zombie behind.
std::optional<std::string> RunAndCapture(const std::vector<std::string>& argv, int timeout_ms,
                                         size_t max_bytes, std::string& why) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    why = "pipe failed";
    return std::nullopt;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  // Its own process group, so that a kill also reaches whatever it started.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0].c_str(), &actions, &attr, args.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    why = "cannot start: errno " + std::to_string(rc);
    return std::nullopt;
  }

  std::string out;
  bool failed = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max(timeout_ms, 1));
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      why = "timed out after " + std::to_string(timeout_ms) + " ms";
      failed = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1'000'000)));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      why = "poll failed";
      failed = true;
      break;
    }
    if (n == 0) continue;  // the deadline check above ends the loop
    char buf[4096];
    const ssize_t got = ::read(fds[0], buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      why = "read failed";
      failed = true;
      break;
    }
    if (got == 0) break;  // EOF
    out.append(buf, static_cast<size_t>(got));
    if (out.size() > max_bytes) {
      why = "printed more than " + std::to_string(max_bytes) + " bytes";
      failed = true;
      break;
    }
  }
  ::close(fds[0]);
  if (failed) ::kill(-pid, SIGKILL);
  int status = 0;
  pid_t waited;
  do {
    waited = ::waitpid(pid, &status, 0);
  } while (waited < 0 && errno == EINTR);
  if (failed) return std::nullopt;
  // ECHILD: SIGCHLD is ignored in this process, so the exit status is gone; trust the output.
  if (waited < 0) return errno == ECHILD ? std::optional<std::string>(std::move(out)) : std::nullopt;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    why = WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                            : "killed by a signal";
    return std::nullopt;
  }
  return out;
}

std::vector<GpuGroup> DetectGpus(const ProbeOptions& options,
                                 const std::map<std::string, double>& card_perf) {
  const std::string program = FindProgram(options.nvidia_smi);
  if (program.empty()) {
    GetLogger("compute")->debug("{} not found; assuming no GPUs", options.nvidia_smi);
    return {};
  }
  std::string why;
  std::optional<std::string> out = RunAndCapture({program, "--query-gpu=name", "--format=csv,noheader"},
                                                 options.nvidia_smi_timeout_ms, kMaxNvidiaSmiOutput, why);
  if (!out) {
    GetLogger("compute")->warn("{} {}; assuming no GPUs", program, why);
    return {};
  }
  return ParseNvidiaSmiNames(*out, card_perf);
}

}  // namespace

Result<std::map<std::string, double>> ParseCardPerf(const std::vector<std::string>& card_perf) {
  std::map<std::string, double> out;
  for (const std::string& entry : card_perf) {
    const size_t eq = entry.find('=');
    const std::string_view type = std::string_view(entry).substr(0, eq);
    double perf = 0;
    if (eq == std::string::npos) return InvalidArgument("card_perf: " + QuoteForError(entry) + " is not TYPE=PERF");
    if (!IsCardType(type)) {
      return InvalidArgument("card_perf: " + QuoteForError(entry) + ": " + QuoteForError(type) + " is not a valid card type");
    }
    if (!ParsePerf(std::string_view(entry).substr(eq + 1), perf)) {
      return InvalidArgument("card_perf: " + QuoteForError(entry) + ": perf must be a positive number");
    }
    if (!out.emplace(std::string(type), perf).second) {
      return InvalidArgument("card_perf: " + QuoteForError(entry) + ": card type listed twice");
    }
  }
  return out;
}

Result<std::vector<GpuGroup>> ParseGpuList(const std::vector<std::string>& entries,
                                           const std::vector<std::string>& card_perf) {
  CHORUS_ASSIGN_OR_RETURN(auto perf_by_type, ParseCardPerf(card_perf));
  std::vector<GpuGroup> groups;
  for (const std::string& entry : entries) {
    const std::string prefix = "gpus: " + QuoteForError(entry) + ": ";
    const std::vector<std::string_view> parts = Split(entry, ':');
    if (parts.size() < 2 || parts.size() > 3) return InvalidArgument(prefix + "expected TYPE:COUNT[:PERF]");
    GpuGroup g;
    if (!IsCardType(parts[0])) return InvalidArgument(prefix + QuoteForError(parts[0]) + " is not a valid card type");
    g.card_type = std::string(parts[0]);
    uint64_t count = 0;
    if (!ParseUnsigned(parts[1], count) || count < 1 || count > static_cast<uint64_t>(kMaxGpuCount)) {
      return InvalidArgument(prefix + "count must be a whole number 1.." + std::to_string(kMaxGpuCount));
    }
    g.count = static_cast<int32_t>(count);
    if (parts.size() == 3) {
      if (!ParsePerf(parts[2], g.perf)) return InvalidArgument(prefix + "perf must be a positive number");
    } else if (auto it = perf_by_type.find(g.card_type); it != perf_by_type.end()) {
      g.perf = it->second;
    }
    for (const GpuGroup& other : groups) {
      if (other.card_type == g.card_type) return InvalidArgument(prefix + "card type listed twice");
    }
    groups.push_back(std::move(g));
  }
  return groups;
}

std::vector<GpuGroup> ParseNvidiaSmiNames(std::string_view csv_output,
                                          const std::map<std::string, double>& card_perf) {
  std::vector<GpuGroup> groups;
  for (std::string_view line : Split(csv_output, '\n')) {
    const std::vector<std::string_view> words = Words(line);
    if (words.empty()) continue;
    std::string type;
    for (char c : words.back()) {
      if (IsNameChar(c) && type.size() < 64) type += c;
    }
    if (type.empty()) continue;
    auto it =
        std::find_if(groups.begin(), groups.end(), [&](const GpuGroup& g) { return g.card_type == type; });
    if (it != groups.end()) {
      ++it->count;
      continue;
    }
    GpuGroup g;
    g.card_type = std::move(type);
    g.count = 1;
    if (auto p = card_perf.find(g.card_type); p != card_perf.end()) g.perf = p->second;
    groups.push_back(std::move(g));
  }
  return groups;
}

Result<MachineCapacity> DetectCapacity(const ProbeOptions& options) {
  if (options.cpu_millis < 0) return InvalidArgument("cpu_millis: must not be negative");
  if (options.memory_mb < 0) return InvalidArgument("memory_mb: must not be negative");
  // Checked even when nvidia-smi is absent, so a typo shows up on the machine where it is made.
  CHORUS_ASSIGN_OR_RETURN(auto perf_by_type, ParseCardPerf(options.card_perf));

  MachineCapacity cap;
  cap.cpu_millis = options.cpu_millis;
  if (cap.cpu_millis == 0) {
    int64_t cores = CountProcCpus(options.proc_root);
    if (cores == 0) cores = std::thread::hardware_concurrency();
    if (cores == 0) return FailedPrecondition("cannot count CPUs in " + options.proc_root + "/stat");
    cap.cpu_millis = cores * 1000;
  }
  cap.memory_mb = options.memory_mb;
  if (cap.memory_mb == 0) {
    CHORUS_ASSIGN_OR_RETURN(MemInfo info, ReadMemInfo(options.proc_root));
    cap.memory_mb = static_cast<int64_t>(*info.total_kb / 1024);
  }
  if (!options.gpus.empty()) {
    CHORUS_ASSIGN_OR_RETURN(cap.gpus, ParseGpuList(options.gpus, options.card_perf));
  } else {
    cap.gpus = DetectGpus(options, perf_by_type);
  }
  return cap;
}

UtilizationSampler::UtilizationSampler(std::string proc_root) : proc_root_(std::move(proc_root)) {}

Result<UtilizationSampler::Sample> UtilizationSampler::Take() {
  CHORUS_ASSIGN_OR_RETURN(CpuTimes t, ReadCpuTimes(proc_root_));
  CHORUS_ASSIGN_OR_RETURN(MemInfo mem, ReadMemInfo(proc_root_));

  Sample s;
  // Kernels before 3.14 have no MemAvailable; free + buffers + page cache approximates it.
  const uint64_t available =
      mem.available_kb ? *mem.available_kb
                       : mem.free_kb.value_or(0) + mem.buffers_kb.value_or(0) + mem.cached_kb.value_or(0);
  s.memory_used_mb =
      available >= *mem.total_kb ? 0 : static_cast<int64_t>((*mem.total_kb - available) / 1024);

  if (!have_previous_ || t.total < previous_total_ || t.busy < previous_busy_) {
    s.cpu_utilization = 0;
  } else if (t.total == previous_total_) {
    s.cpu_utilization = previous_utilization_;
  } else {
    const double busy = static_cast<double>(t.busy - previous_busy_);
    const double total = static_cast<double>(t.total - previous_total_);
    s.cpu_utilization = std::clamp(busy / total, 0.0, 1.0);
  }
  have_previous_ = true;
  previous_total_ = t.total;
  previous_busy_ = t.busy;
  previous_utilization_ = s.cpu_utilization;
  return s;
}

}  // namespace chorus::compute
