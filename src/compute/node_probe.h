// Node probe: the capacity and the current utilization of the machine a node agent runs on.
//
// Capacity (DetectCapacity) is read once at node start: cores from the `cpuN` lines of
// /proc/stat, memory from MemTotal in /proc/meminfo, GPUs from `nvidia-smi` when it is on PATH.
// Operator settings (compute.node.cpu_millis / memory_mb / gpus / card_perf) override detection.
// Detection counts what the kernel shows: inside a container it sees the host's cores and memory,
// not the cgroup's limits, so containers should set the overrides.
//
// GPUs are grouped by card type; a card type carries a performance coefficient (1.0 unless
// `card_perf` or an explicit `TYPE:COUNT:PERF` says otherwise) that schedulers use to compare
// cards. nvidia-smi that is missing, fails, hangs past its timeout or prints too much means "no
// GPUs", not an error: a CPU node must start without it. Bad operator settings are errors
// (kInvalidArgument naming the entry); an unreadable /proc is kFailedPrecondition.
//
// Utilization (UtilizationSampler) is sampled by the node agent before every heartbeat.
//
// Thread rules: the free functions are safe from any thread. DetectCapacity may start a child
// process and blocks until it exits (at most nvidia_smi_timeout_ms). A UtilizationSampler is not
// thread-safe: one owner thread calls Take().
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace chorus::compute {

struct GpuGroup {
  std::string card_type;  // [A-Za-z0-9_.-]{1,64}, e.g. "T4"
  int32_t count = 0;      // >= 1
  double perf = 1.0;      // > 0
};

struct MachineCapacity {
  int64_t cpu_millis = 0;
  int64_t memory_mb = 0;       // MiB
  std::vector<GpuGroup> gpus;  // one entry per card type, in order of first appearance
};

struct ProbeOptions {
  int64_t cpu_millis = 0;                 // > 0 overrides detection; < 0 is an error
  int64_t memory_mb = 0;                  // > 0 overrides detection; < 0 is an error
  std::vector<std::string> gpus;          // "TYPE:COUNT[:PERF]" entries; non-empty overrides nvidia-smi
  std::vector<std::string> card_perf;     // "TYPE=PERF" for cards without an explicit PERF
  std::string proc_root = "/proc";        // tests point this at a temporary directory
  std::string nvidia_smi = "nvidia-smi";  // program name (searched on PATH) or path
  int nvidia_smi_timeout_ms = 10'000;     // a wedged driver can hang nvidia-smi; then no GPUs
};

// Capacity of this machine per the rules above.
[[nodiscard]] Result<MachineCapacity> DetectCapacity(const ProbeOptions& options);

// "TYPE=PERF" entries (PERF a positive finite number, TYPE a valid name, each TYPE once).
[[nodiscard]] Result<std::map<std::string, double>> ParseCardPerf(const std::vector<std::string>& card_perf);

// "TYPE:COUNT[:PERF]" entries: COUNT 1..1024, PERF a positive finite number, each TYPE once.
// Cards without PERF get card_perf[TYPE], else 1.0. Errors name the entry: `gpus: "T4:x": ...`.
[[nodiscard]] Result<std::vector<GpuGroup>> ParseGpuList(const std::vector<std::string>& entries,
                                                         const std::vector<std::string>& card_perf);

// Output of `nvidia-smi --query-gpu=name --format=csv,noheader`, one line per GPU ("Tesla T4").
// The card type is the last whitespace-separated word with every byte outside [A-Za-z0-9_.-]
// dropped, cut to 64 bytes ("Tesla T4" -> "T4", "NVIDIA A10" -> "A10"); lines that leave nothing
// are skipped. Equal types are grouped, in order of first appearance, perf from card_perf or 1.0.
std::vector<GpuGroup> ParseNvidiaSmiNames(std::string_view csv_output,
                                          const std::map<std::string, double>& card_perf);

// CPU and memory utilization from <proc_root>/stat and <proc_root>/meminfo.
class UtilizationSampler {
 public:
  explicit UtilizationSampler(std::string proc_root = "/proc");

  struct Sample {
    // Busy share of all cores since the previous successful Take(), 0..1; 0 on the first call.
    // From the aggregate "cpu" line: total = user + nice + system + idle + iowait + irq + softirq
    // + steal (guest time is already inside user/nice), busy = total - idle - iowait. If no
    // jiffies passed since the previous call, the previous value is repeated; if the counters went
    // backwards (CPU hot-unplug), the sample restarts from 0.
    double cpu_utilization = 0;
    // (MemTotal - MemAvailable) kB / 1024, rounded down; kernels without MemAvailable (before
    // 3.14) use MemFree + Buffers + Cached instead.
    int64_t memory_used_mb = 0;
  };

  // kFailedPrecondition when a file cannot be read or parsed; the previous baseline is kept.
  [[nodiscard]] Result<Sample> Take();

 private:
  std::string proc_root_;
  bool have_previous_ = false;
  uint64_t previous_total_ = 0;
  uint64_t previous_busy_ = 0;
  double previous_utilization_ = 0;
};

}  // namespace chorus::compute
