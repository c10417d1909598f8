// `chorus-bench compute-cluster`: the compute control plane (docs/compute.md) measured with real
// resource servers and schedulers (the `chorus` binary, as child processes on loopback) against
// the node simulator (compute_sim.h, in this process) hosting thousands of node identities.
//
// What runs: two resource servers peered with each other (`chorus compute resource`, fixed free
// gRPC ports), the simulator (node i reports to server i % 2; `open_per_second` nodes connect per
// second; `nodes_per_connection` heartbeat streams share a TCP connection), one or two schedulers
// (`chorus compute scheduler`, each watching the cluster `A|B`, the second in the order `B|A`), and
// the "view tracker": one Watch stream from this process to every resource server, open while the
// nodes register and during the drains and crashes (not while placing: it is apparatus, and its
// load would be taken from the processes under test). Every chorus process shares one --data-dir
// (one token secret) and gets `compute.token`, a service token (subject "chorus-bench") with every
// compute scope.
//
// Registration check: every node must be online in every view. Nodes that some view misses (a
// status lost between resource servers: it is sent again only when the node changes) are counted
// (registration_lost_nodes, an error) and then touched (version+1) so the run can go on.
//
// Phases, in order (times on the steady clock of this process; the simulator sees every claim):
//   1. placement, one scheduler: `chorus compute apply` of app `bench-1` (replicas R, cpu 10m,
//      memory 1Mi, synthetic engine) until R replicas are on live, non-draining simulated nodes:
//      placements/s = R / (that moment - just before apply). Then the cluster settles (exactly R
//      and nothing changing for 500 ms).
//   2. placement, two schedulers racing (when schedulers = 2): `bench-1` is deleted and its
//      replicas released, the second scheduler starts, app `bench-2` is applied and measured the
//      same way; conflict rate = claims refused ABORTED / claims received, over this round.
//      Optimistic schedulers may place more than R between them (overshoot) and release the
//      surplus; both are reported.
//   3. drains: the simulator marks a node holding replicas draining (its SIGTERM path) and the
//      tracker measures until every resource server's Watch shows it draining; the time until
//      its replicas are replaced is recorded too. Nodes alternate between the two homes.
//   4. crashes: the simulator kills a node holding replicas (stream cancelled, silence, claims
//      refused); measured until the simulator has accepted as many new claims of the app as the
//      node held (replaced), and until every view shows it offline (detected).
// Between drains and crashes the cluster settles, so replacement claims never mix. At the end
// the simulator recounts every node's replicas against its capacity (overcommitted nodes).
//
// Every child runs in its own process group with PDEATHSIG=SIGKILL and is stopped with SIGTERM,
// then SIGKILL after 5 s; SIGINT/SIGTERM to chorus-bench ends the run early and still stops them.
// Logs go to WORK_DIR/*.log; WORK_DIR (a fresh /tmp/chorus-compute-cluster.XXXXXX unless given)
// is removed after a clean run unless keep_work_dir.
//
// Not thread-safe; one run per process (it installs signal handlers for its duration and sets
// glibc malloc options for the process).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "base/status.h"
#include "report.h"

namespace chorus::bench {

struct ComputeClusterOptions {
  std::string chorus_bin;  // the chorus binary
  int nodes = 2000;
  int slots = 8;
  int64_t node_cpu_millis = 4000;
  int64_t node_memory_mb = 8192;
  int replicas = 10000;
  int drains = 20;
  int crashes = 10;
  int schedulers = 2;              // 1 or 2
  int open_per_second = 1000;      // simulated nodes connecting per second at start (0: all at once)
  int nodes_per_connection = 100;  // simulated nodes sharing one TCP connection to a resource server
  std::chrono::nanoseconds placement_timeout = std::chrono::seconds(120);
  std::string work_dir;  // empty: a fresh temporary directory
  bool keep_work_dir = false;
  uint64_t seed = 1;  // which nodes are drained and killed
  int max_replicas_per_claim = 0;  // compute.scheduler.max_replicas_per_claim; 0: chorus's default

  Status Validate() const;
};

// Targets and anchors (docs/compute.md) the report compares against.
inline constexpr double kTargetPlacementsPerS = 5000;
inline constexpr double kNomadC1mPlacementsPerS = 3333;  // 1M containers on 5,000 hosts in < 5 min
inline constexpr double kTargetDrainVisibleMs = 500;
inline constexpr double kTargetCrashReplacedMs = 3000;
inline constexpr double kSeedEvictionMs = 4000;

struct ComputeClusterResult {
  // throughput: placements/s of the one-scheduler round; counts (claims by outcome, timeouts as
  // *_errors, overcommitted_nodes); figures (per round, drain and crash percentiles, ratios).
  Measurement subject;
  std::map<std::string, std::string> params;
  std::string table;  // the human-readable table, several lines
  std::vector<std::string> summary_figures;
};

// Runs the whole benchmark. An error Status means it could not run (a process did not start, a
// placement never completed); a run that completed with timeouts or over-commitment reports
// them in the counts instead.
Result<ComputeClusterResult> RunComputeCluster(const ComputeClusterOptions& options);

}  // namespace chorus::bench
