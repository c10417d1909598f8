#include "compute/node_probe.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace chorus::compute {
namespace {

// A temporary directory standing in for /proc (and holding fake nvidia-smi scripts).
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "chorus_node_probe_XXXXXX").string();
    path_ = ::mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

  void Write(const std::string& name, const std::string& body) const {
    std::ofstream(path_ + "/" + name, std::ios::trunc) << body;
  }
  // An executable shell script; returns its path.
  std::string Script(const std::string& name, const std::string& body) const {
    Write(name, "#!/bin/sh\n" + body);
    const std::string p = path_ + "/" + name;
    ::chmod(p.c_str(), 0755);
    return p;
  }

 private:
  std::string path_;
};

constexpr char kStatTail[] =
    "intr 1234 0 9 0 0\n"
    "ctxt 987654\n"
    "btime 1700000000\n"
    "cpufreq_is_not_a_cpu 1\n"
    "processes 4321\n";

std::string Stat(const std::string& cpu_line, int cpus) {
  std::string s = cpu_line + "\n";
  for (int i = 0; i < cpus; ++i) s += "cpu" + std::to_string(i) + " 1 2 3 4 5 6 7 8 0 0\n";
  return s + kStatTail;
}

constexpr char kMeminfo[] =
    "MemTotal:       16303416 kB\n"
    "MemFree:         1000000 kB\n"
    "MemAvailable:    8151708 kB\n"
    "Buffers:          200000 kB\n"
    "Cached:          3000000 kB\n"
    "SwapTotal:             0 kB\n";

ProbeOptions NoGpuProbe(const std::string& proc_root) {
  ProbeOptions o;
  o.proc_root = proc_root;
  o.nvidia_smi = "/nonexistent/nvidia-smi";
  return o;
}

TEST(NodeProbeTest, CapacityFromProcFiles) {
  TempDir proc;
  proc.Write("stat", Stat("cpu  10 20 30 40 50 60 70 80 0 0", 4));
  proc.Write("meminfo", kMeminfo);
  Result<MachineCapacity> cap = DetectCapacity(NoGpuProbe(proc.path()));
  ASSERT_TRUE(cap.ok()) << cap.status().ToString();
  EXPECT_EQ(cap->cpu_millis, 4000);
  EXPECT_EQ(cap->memory_mb, 15921);  // 16303416 kB / 1024 = 15921.3
  EXPECT_TRUE(cap->gpus.empty());
}

TEST(NodeProbeTest, OverridesWin) {
  TempDir proc;
  proc.Write("stat", Stat("cpu  1 1 1 1 1 1 1 1 0 0", 4));
  proc.Write("meminfo", kMeminfo);
  ProbeOptions o = NoGpuProbe(proc.path());
  o.cpu_millis = 2500;
  Result<MachineCapacity> cap = DetectCapacity(o);
  ASSERT_TRUE(cap.ok()) << cap.status().ToString();
  EXPECT_EQ(cap->cpu_millis, 2500);
  EXPECT_EQ(cap->memory_mb, 15921);

  // With every value overridden /proc is not read at all, and the GPU list replaces nvidia-smi.
  const std::string smi = proc.Script("nvidia-smi", "echo 'Tesla V100'\n");
  o = ProbeOptions{};
  o.proc_root = proc.path() + "/missing";
  o.nvidia_smi = smi;
  o.cpu_millis = 8000;
  o.memory_mb = 32768;
  o.gpus = {"T4:2", "A10:1"};
  o.card_perf = {"A10=1.6"};
  cap = DetectCapacity(o);
  ASSERT_TRUE(cap.ok()) << cap.status().ToString();
  EXPECT_EQ(cap->cpu_millis, 8000);
  EXPECT_EQ(cap->memory_mb, 32768);
  ASSERT_EQ(cap->gpus.size(), 2u);
  EXPECT_EQ(cap->gpus[0].card_type, "T4");
  EXPECT_EQ(cap->gpus[0].count, 2);
  EXPECT_DOUBLE_EQ(cap->gpus[0].perf, 1.0);
  EXPECT_EQ(cap->gpus[1].card_type, "A10");
  EXPECT_DOUBLE_EQ(cap->gpus[1].perf, 1.6);
}

TEST(NodeProbeTest, BadOptionsAndMissingProc) {
  TempDir proc;
  ProbeOptions o = NoGpuProbe(proc.path());
  o.cpu_millis = -1;
  EXPECT_EQ(DetectCapacity(o).status().code(), StatusCode::kInvalidArgument);
  o = NoGpuProbe(proc.path());
  o.memory_mb = -5;
  EXPECT_EQ(DetectCapacity(o).status().code(), StatusCode::kInvalidArgument);
  o = NoGpuProbe(proc.path());
  o.memory_mb = 100;
  o.card_perf = {"A10=fast"};  // checked even though there are no GPUs
  Result<MachineCapacity> cap = DetectCapacity(o);
  EXPECT_EQ(cap.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(cap.status().message().find("A10=fast"), std::string::npos) << cap.status().message();
  o = NoGpuProbe(proc.path());
  o.memory_mb = 100;
  o.gpus = {"T4"};
  EXPECT_EQ(DetectCapacity(o).status().code(), StatusCode::kInvalidArgument);

  // No meminfo: an error naming the file. No stat: cores fall back to the C++ runtime's count.
  cap = DetectCapacity(NoGpuProbe(proc.path()));
  EXPECT_EQ(cap.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(cap.status().message().find("meminfo"), std::string::npos) << cap.status().message();
  proc.Write("meminfo", "MemFree: 12 kB\n");
  EXPECT_EQ(DetectCapacity(NoGpuProbe(proc.path())).status().code(), StatusCode::kFailedPrecondition);
  proc.Write("meminfo", kMeminfo);
  cap = DetectCapacity(NoGpuProbe(proc.path()));
  ASSERT_TRUE(cap.ok()) << cap.status().ToString();
  EXPECT_EQ(cap->cpu_millis, int64_t{std::thread::hardware_concurrency()} * 1000);
}

TEST(NodeProbeTest, RealProcHasCoresAndMemoryAndNoGpusWithoutNvidiaSmi) {
  Result<MachineCapacity> cap = DetectCapacity(NoGpuProbe("/proc"));
  ASSERT_TRUE(cap.ok()) << cap.status().ToString();
  EXPECT_GE(cap->cpu_millis, 1000);
  EXPECT_EQ(cap->cpu_millis % 1000, 0);
  EXPECT_GT(cap->memory_mb, 0);
  EXPECT_TRUE(cap->gpus.empty());
}

TEST(NodeProbeTest, GpuListTable) {
  Result<std::vector<GpuGroup>> g = ParseGpuList({"T4:2"}, {});
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_EQ(g->size(), 1u);
  EXPECT_EQ((*g)[0].card_type, "T4");
  EXPECT_EQ((*g)[0].count, 2);
  EXPECT_DOUBLE_EQ((*g)[0].perf, 1.0);

  // An explicit PERF beats card_perf; card_perf fills in the rest.
  g = ParseGpuList({"T4:2:1.5", "A10:1", "H100-80GB:8:3"}, {"A10=1.6", "T4=9", "L4=2"});
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_EQ(g->size(), 3u);
  EXPECT_EQ((*g)[0].card_type, "T4");
  EXPECT_DOUBLE_EQ((*g)[0].perf, 1.5);
  EXPECT_EQ((*g)[1].card_type, "A10");
  EXPECT_EQ((*g)[1].count, 1);
  EXPECT_DOUBLE_EQ((*g)[1].perf, 1.6);
  EXPECT_EQ((*g)[2].card_type, "H100-80GB");
  EXPECT_EQ((*g)[2].count, 8);
  EXPECT_DOUBLE_EQ((*g)[2].perf, 3.0);

  EXPECT_TRUE(ParseGpuList({}, {}).ok());
  EXPECT_TRUE(ParseGpuList({}, {})->empty());

  for (const char* bad : {"T4", "T4:x", "T4:-1", ":2", "T4:2:0", "T4:0", "T4:", "T4:2:", "T4:2:x", "T4:2:-1",
                          "T4:2:inf", "T4:2:nan", "T4:1:1:1", "T 4:1", "T4:1025", "T4: 2", ""}) {
    Result<std::vector<GpuGroup>> r = ParseGpuList({"A10:1", bad}, {});
    ASSERT_FALSE(r.ok()) << "accepted " << bad;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(r.status().message().find("\"" + std::string(bad) + "\""), std::string::npos)
        << bad << " -> " << r.status().message();
  }
  Result<std::vector<GpuGroup>> dup = ParseGpuList({"T4:1", "T4:2"}, {});
  ASSERT_FALSE(dup.ok());
  EXPECT_NE(dup.status().message().find("\"T4:2\""), std::string::npos) << dup.status().message();
}

TEST(NodeProbeTest, CardPerfTable) {
  Result<std::map<std::string, double>> p = ParseCardPerf({"A10=1.6", "T4=1", "L4=0.75"});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->size(), 3u);
  EXPECT_DOUBLE_EQ(p->at("A10"), 1.6);
  EXPECT_DOUBLE_EQ(p->at("L4"), 0.75);
  for (const char* bad : {"A10", "A10=", "=1", "A10=0", "A10=-1", "A10=x", "A 10=1", "A10=1=2"}) {
    Result<std::map<std::string, double>> r = ParseCardPerf({bad});
    ASSERT_FALSE(r.ok()) << "accepted " << bad;
    EXPECT_NE(r.status().message().find(bad), std::string::npos) << r.status().message();
  }
  EXPECT_FALSE(ParseCardPerf({"A10=1", "A10=2"}).ok());
}

TEST(NodeProbeTest, NvidiaSmiNamesAreGroupedByLastWord) {
  const std::map<std::string, double> perf = {{"A10", 1.6}};
  std::vector<GpuGroup> g = ParseNvidiaSmiNames(
      "Tesla T4\n"
      "NVIDIA A10\n"
      "Tesla T4\r\n"
      "\n"
      "   \n"
      "NVIDIA A100-SXM4-40GB\n"
      "Tesla V100*\n"
      "Tesla T4",  // no final newline
      perf);
  ASSERT_EQ(g.size(), 4u);
  EXPECT_EQ(g[0].card_type, "T4");
  EXPECT_EQ(g[0].count, 3);
  EXPECT_DOUBLE_EQ(g[0].perf, 1.0);
  EXPECT_EQ(g[1].card_type, "A10");
  EXPECT_EQ(g[1].count, 1);
  EXPECT_DOUBLE_EQ(g[1].perf, 1.6);
  EXPECT_EQ(g[2].card_type, "A100-SXM4-40GB");
  EXPECT_EQ(g[3].card_type, "V100");

  EXPECT_TRUE(ParseNvidiaSmiNames("", perf).empty());
  EXPECT_TRUE(ParseNvidiaSmiNames("\n\n(*)\n", perf).empty());
  g = ParseNvidiaSmiNames("X " + std::string(100, 'a') + "\n", perf);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].card_type, std::string(64, 'a'));
}

// DetectCapacity runs nvidia-smi with the query arguments and parses what it prints.
TEST(NodeProbeTest, RunsNvidiaSmi) {
  TempDir dir;
  dir.Write("meminfo", kMeminfo);
  ProbeOptions o = NoGpuProbe(dir.path());
  o.cpu_millis = 1000;
  o.card_perf = {"T4=0.5"};
  o.nvidia_smi = dir.Script("smi-ok",
                            "[ \"$1\" = --query-gpu=name ] && [ \"$2\" = --format=csv,noheader ] || exit 3\n"
                            "printf 'Tesla T4\\nTesla T4\\nNVIDIA A10\\n'\n");
  Result<MachineCapacity> cap = DetectCapacity(o);
  ASSERT_TRUE(cap.ok()) << cap.status().ToString();
  ASSERT_EQ(cap->gpus.size(), 2u);
  EXPECT_EQ(cap->gpus[0].card_type, "T4");
  EXPECT_EQ(cap->gpus[0].count, 2);
  EXPECT_DOUBLE_EQ(cap->gpus[0].perf, 0.5);
  EXPECT_EQ(cap->gpus[1].card_type, "A10");
  EXPECT_EQ(cap->gpus[1].count, 1);

  // Found by name on PATH.
  dir.Script("fake-smi", "echo 'NVIDIA L4'\n");
  const char* old_path = std::getenv("PATH");
  const std::string saved = old_path != nullptr ? old_path : "";
  ::setenv("PATH", ("/nonexistent:" + dir.path()).c_str(), 1);
  o.nvidia_smi = "fake-smi";
  cap = DetectCapacity(o);
  if (old_path != nullptr) {
    ::setenv("PATH", saved.c_str(), 1);
  } else {
    ::unsetenv("PATH");
  }
  ASSERT_TRUE(cap.ok()) << cap.status().ToString();
  ASSERT_EQ(cap->gpus.size(), 1u);
  EXPECT_EQ(cap->gpus[0].card_type, "L4");
}

// Failing, flooding, hanging or missing nvidia-smi: no GPUs, and no error.
TEST(NodeProbeTest, BrokenNvidiaSmiMeansNoGpus) {
  TempDir dir;
  dir.Write("meminfo", kMeminfo);
  dir.Write("not-executable", "#!/bin/sh\necho 'Tesla T4'\n");
  for (const std::string& program : {
           dir.Script("smi-fails", "echo 'Tesla T4'\nexit 1\n"),
           dir.Script("smi-floods", "yes 'Tesla T4'\n"),
           dir.Script("smi-hangs", "echo 'Tesla T4'\nsleep 600\n"),  // the kill must reach sleep too
           dir.Script("smi-killed", "echo 'Tesla T4'\nkill -9 $$\n"),
           dir.path() + "/not-executable",
           dir.path(),  // a directory
           std::string("/nonexistent/nvidia-smi"),
           std::string("chorus-no-such-program-on-path"),
           std::string(""),
       }) {
    SCOPED_TRACE(program);
    ProbeOptions o = NoGpuProbe(dir.path());
    o.cpu_millis = 1000;
    o.nvidia_smi = program;
    o.nvidia_smi_timeout_ms = 200;
    Result<MachineCapacity> cap = DetectCapacity(o);
    ASSERT_TRUE(cap.ok()) << cap.status().ToString();
    EXPECT_TRUE(cap->gpus.empty());
  }
}

TEST(NodeProbeTest, SamplerUtilizationFromJiffies) {
  TempDir proc;
  // user nice system idle iowait irq softirq steal guest guest_nice
  proc.Write("stat", Stat("cpu  100 10 50 800 50 5 5 0 30 0", 4));
  proc.Write("meminfo",
             "MemTotal:        8000000 kB\n"
             "MemFree:          500000 kB\n"
             "MemAvailable:    2000000 kB\n");
  UtilizationSampler sampler(proc.path());
  Result<UtilizationSampler::Sample> s = sampler.Take();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->cpu_utilization, 0);    // first call
  EXPECT_EQ(s->memory_used_mb, 5859);  // 6000000 kB / 1024 = 5859.4

  // Deltas: user +60, system +25, idle +100, iowait +10, irq +3, softirq +2, guest +30 (already
  // inside user). total +200, busy = 200 - 100 - 10 = 90 -> 0.45.
  proc.Write("stat", Stat("cpu  160 10 75 900 60 8 7 0 60 0", 4));
  s = sampler.Take();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_DOUBLE_EQ(s->cpu_utilization, 0.45);

  // No time passed: the last value stands.
  s = sampler.Take();
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->cpu_utilization, 0.45);

  // Fully busy interval: user +100 only.
  proc.Write("stat", Stat("cpu  260 10 75 900 60 8 7 0 60 0", 4));
  s = sampler.Take();
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->cpu_utilization, 1.0);

  // A failed read keeps the baseline: the next good sample is measured from the last good one.
  std::filesystem::remove(proc.path() + "/stat");
  s = sampler.Take();
  EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition);
  proc.Write("stat", Stat("cpu  270 10 75 930 60 8 7 0 60 0", 4));  // +10 busy, +30 idle
  s = sampler.Take();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_DOUBLE_EQ(s->cpu_utilization, 0.25);

  // Counters going backwards restart the measurement.
  proc.Write("stat", Stat("cpu  10 0 5 100 0 0 0 0 0 0", 2));
  s = sampler.Take();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->cpu_utilization, 0);
  proc.Write("stat", Stat("cpu  20 0 5 130 0 0 0 0 0 0", 2));
  s = sampler.Take();
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->cpu_utilization, 0.25);
}

TEST(NodeProbeTest, SamplerMemoryAndErrors) {
  TempDir proc;
  proc.Write("stat", Stat("cpu  1 2 3 4", 1));  // old kernels: four fields
  // No MemAvailable: free + buffers + cached.
  proc.Write("meminfo",
             "MemTotal:        4096000 kB\n"
             "MemFree:          1024000 kB\n"
             "Buffers:           102400 kB\n"
             "Cached:            921600 kB\n");
  UtilizationSampler sampler(proc.path());
  Result<UtilizationSampler::Sample> s = sampler.Take();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->memory_used_mb, 2000);  // (4096000 - 2048000) / 1024

  proc.Write("stat", "intr 1 2 3\n");
  EXPECT_EQ(sampler.Take().status().code(), StatusCode::kFailedPrecondition);
  proc.Write("stat", "cpu  1 2 x 4 5\n");
  EXPECT_EQ(sampler.Take().status().code(), StatusCode::kFailedPrecondition);
  proc.Write("stat", Stat("cpu  1 2 3 4", 1));
  std::filesystem::remove(proc.path() + "/meminfo");
  EXPECT_EQ(sampler.Take().status().code(), StatusCode::kFailedPrecondition);

  UtilizationSampler nowhere(proc.path() + "/missing");
  EXPECT_EQ(nowhere.Take().status().code(), StatusCode::kFailedPrecondition);
}

TEST(NodeProbeTest, SamplerOnRealProc) {
  UtilizationSampler sampler;
  Result<UtilizationSampler::Sample> a = sampler.Take();
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->cpu_utilization, 0);
  EXPECT_GT(a->memory_used_mb, 0);
  Result<UtilizationSampler::Sample> b = sampler.Take();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_GE(b->cpu_utilization, 0);
  EXPECT_LE(b->cpu_utilization, 1);
}

}  // namespace
}  // namespace chorus::compute
