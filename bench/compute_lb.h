// `chorus-bench compute-lb`: the compute router's load-balancing policies (src/compute/router.h)
// compared on a heterogeneous, misbehaving fleet of simulated nodes — dynamic-weight SWRR (the
// seed's formula, lb_weight.h) against static SWRR and P2C least-request — on per-request latency
// (p50/p90/p99/p99.9/max) and on how evenly the nodes are kept busy.
//
// What is real and what is simulated. The router is the real compute::Router, fed real
// pb::ViewUpdate messages through ApplyUpdate, recomputing weights through RecomputeWeights() and
// sending every request through its InvokeTransport; only the nodes behind that transport, their
// heartbeats and the clients are simulated:
//
//   nodes      node i has cores[i % |cores|] cores (what it advertises: its replica of the app
//              asks for cores × 1000 cpu_millis, which is the router's capacity) and a speed
//              speeds[i % |speeds|] (1×, 2×, 4×: how fast a core runs, which it does NOT
//              advertise). A request carries work W (core-seconds at 1×; gamma-distributed with
//              mean work_ms and coefficient of variation work_cv, drawn at arrival so every
//              policy sees the same requests); a node serves its requests by processor sharing
//              over its cores (each of n requests runs at speed × min(1, cores / n): a machine
//              running requests concurrently under the OS scheduler) or, optionally, as a FCFS
//              queue in front of `cores` servers (worker slots). LbNodeModel below.
//   slowdowns  each node, independently, is slowed down at Poisson times (slowdown_rate per
//              node per minute) by a factor uniform in [slowdown_factor_min, _max] for a time
//              uniform in [slowdown_min, slowdown_max], as if a co-tenant took its CPU (a
//              preemptible machine). Episodes of one node never overlap. The schedule is fixed by
//              the seed: identical for every policy.
//   reports    every `heartbeat` each node (staggered over the interval, as independent agents
//              are) sends a NodeStatus — online, its address, cpu_utilization = busy cores /
//              cores over the last interval, in_flight (now, or the interval's average), one
//              REPLICA_RUNNING replica of the app — which goes straight into
//              Router::ApplyUpdate (no resource-server delay). RecomputeWeights() runs every
//              `weight_interval` (3 s, the seed's period).
//   clients    open loop: Poisson arrivals at `load` × the fleet's nominal capacity
//              (Σ cores × speed / work_ms, slowdowns not deducted), each a Router::Invoke of the
//              app. Latency = the answer's time − the arrival time.
//
// One run per policy, one after another in this process, each on a fresh fleet and router with
// the same seed: same nodes, same arrivals and work, same slowdown schedule. Requests that arrive
// in [warmup, warmup + duration) are measured; arrivals go on afterwards (the load stays
// stationary) until every measured request has answered or `drain` has passed, when the ones
// still running are recorded at their age then (a lower bound) and counted `unfinished`.
// Utilization spread: every `util_window` of the measured window, every node's busy fraction
// over it; per window the standard deviation and max − min over the nodes; reported as the
// mean over windows.
//
// Time. By default (time_scale = 0) the run is a discrete-event simulation on virtual time: one
// thread, as fast as the CPU allows, bit-for-bit reproducible, and unaffected by whatever else
// the machine runs — the figures measure the policies, not this machine. With time_scale = S > 0
// the same event loop runs against the wall clock, S model seconds per wall second (1 = real
// time): the router then sees real-time interleavings, and a late event loop shows up in the
// latencies (reported as the loop's lag).
//
// Threads: everything of one run happens on the calling thread (the router's transport
// callbacks too). Not thread-safe; RunComputeLb may be called again after it returns.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/status.h"
#include "compute/lb_weight.h"
#include "latency_histogram.h"
#include "report.h"

namespace chorus::bench {

// One simulated node's CPU. Pure model, no I/O. Time is model seconds (a double), and must not go
// backwards across calls; work is core-seconds at speed 1. The node serves its requests
//   kProcessorSharing: all of them at once, each at speed × min(1, cores / n) (n in flight);
//   kFcfs:             at most `cores` at a time, each at full speed, the rest waiting in order.
// Implementation: every running request receives service at the same rate, so one "attained
// service" counter per node (advancing at that rate) and a min-heap of finish marks (attained at
// start + work) give the next finish in O(1) and every change in O(log n).
class LbNodeModel {
 public:
  enum class Discipline { kProcessorSharing, kFcfs };

  LbNodeModel(int cores, double speed, Discipline discipline = Discipline::kProcessorSharing);

  // A request `job` with `work` arrives at time t.
  void Start(double t, uint64_t job, double work);
  // When the next request finishes if nothing changes; +infinity when none is running.
  double NextFinish() const;
  // Finishes the request due at NextFinish() (call with t ≥ that time, or at it) and returns its
  // job id. Precondition: in_flight() > 0.
  uint64_t FinishNext(double t);
  // From t on the node runs at speed / factor (factor 1: its own speed again).
  void SetSlowdown(double t, double factor);

  // Integrals from time 0 to t, for callers that difference them over their own windows:
  // busy core-seconds (Σ over time of min(running, cores)) and request-seconds in flight.
  double BusyCoreSeconds(double t);
  double InFlightSeconds(double t);

  int in_flight() const { return static_cast<int>(running_.size() + waiting_.size()); }
  int cores() const { return cores_; }
  double base_speed() const { return base_speed_; }
  double speed() const { return speed_; }

 private:
  struct Running {
    double finish;  // attained_ value at which it is done
    uint64_t job;
  };
  void Advance(double t);
  // Service rate of each running request.
  double Rate() const;

  int cores_;
  double base_speed_;
  double speed_;
  Discipline discipline_;
  double now_ = 0;
  double attained_ = 0;  // service each running request has received since time 0 (work units)
  double busy_ = 0;      // busy core-seconds since time 0
  double in_flight_s_ = 0;
  std::vector<Running> running_;                     // min-heap on finish
  std::deque<std::pair<uint64_t, double>> waiting_;  // FCFS: (job, work) not yet running
};

struct ComputeLbOptions {
  int nodes = 24;
  std::vector<double> speeds = {1, 2, 4};  // node i: speeds[i % size]
  std::vector<int> cores = {4};            // node i: cores[i % size]
  LbNodeModel::Discipline discipline = LbNodeModel::Discipline::kProcessorSharing;
  int max_in_flight = 0;  // > 0: a node refuses more (RESOURCE_EXHAUSTED; the router retries once)

  double load = 0.7;     // offered load, fraction of Σ cores × speed / work_ms
  double work_ms = 10;   // mean work per request, ms of one core at 1×
  double work_cv = 0.5;  // coefficient of variation of the work (0: constant, 1: exponential)

  double slowdown_rate = 1;  // episodes per node per minute (0: none)
  double slowdown_factor_min = 3;
  double slowdown_factor_max = 10;
  std::chrono::nanoseconds slowdown_min = std::chrono::seconds(2);
  std::chrono::nanoseconds slowdown_max = std::chrono::seconds(6);

  std::chrono::nanoseconds warmup = std::chrono::seconds(15);
  std::chrono::nanoseconds duration = std::chrono::seconds(120);
  std::chrono::nanoseconds drain = std::chrono::seconds(30);
  std::chrono::nanoseconds heartbeat = std::chrono::seconds(1);
  std::chrono::nanoseconds weight_interval = std::chrono::seconds(3);
  std::chrono::nanoseconds util_window = std::chrono::seconds(1);
  bool report_average_in_flight = false;  // in_flight in reports: false = at the heartbeat, true = mean

  compute::WeightOptions weights;  // the router's (dynamic policies)
  double time_scale = 0;           // 0: virtual time; S > 0: wall clock, S model seconds per second
  uint64_t seed = 1;
  // Run in this order: "dynamic" (FastSwrr + dynamic weights: what ships), "static" (nginx SWRR,
  // weight = advertised cores), "p2c" (P2C least-request, weight = cores); also "p2c-dynamic"
  // and "static-dynamic" (those pickers fed the dynamic weights).
  std::vector<std::string> policies = {"dynamic", "static", "p2c"};
  int verbose = 0;  // per weight recomputation, to stderr: 1 by node class, 2 also every node

  Status Validate() const;
};

// "3" or "3-10" (inclusive range of positive numbers).
Result<std::pair<double, double>> ParseNumberRange(std::string_view text);
// "name=value,..." over compute::WeightOptions' fields (headroom_scale, min_headroom,
// idle_below_concurrency, min_measured_utilization, prior_share, min_share, max_share,
// prior_from_fleet (0/1), min_capacity, max_capacity, min_weight, max_weight), applied to *out.
Status ParseWeightOptions(std::string_view text, compute::WeightOptions* out);

// Per class of identical nodes (same cores and speed), over the measured window.
struct LbClassStats {
  std::string label;  // "4c 2x"
  int nodes = 0;
  double request_share = 0;  // of the requests sent to any node (attempts)
  double utilization = 0;    // mean busy fraction
  double weight_share = 0;   // share of the table's total weight, mean over the recomputations
};

struct LbPolicyResult {
  std::string policy;
  LatencyHistogram latency;  // measured requests; unfinished ones at their age when the run ended
  uint64_t requests = 0;     // measured arrivals
  uint64_t completed = 0;
  uint64_t failures = 0;    // answered with an error (only with max_in_flight)
  uint64_t unfinished = 0;  // still running when `drain` ran out
  uint64_t retries = 0;     // router retries over the whole run
  double util_mean = 0;     // mean busy fraction over nodes and windows
  double util_sd = 0;       // mean over windows of the std-dev over nodes
  double util_range = 0;    // mean over windows of max − min over nodes
  double util_sd_run = 0;   // std-dev over nodes of each node's utilization over the whole window
  std::vector<LbClassStats> classes;
  double wall_s = 0;      // wall time of this policy's run
  double cpu_s = 0;       // CPU time of this process during it
  double max_lag_ms = 0;  // real time only: how late the event loop ran an event, at worst
  double mean_lag_ms = 0;
  double model_s = 0;  // model time simulated
};

struct ComputeLbResult {
  std::vector<LbPolicyResult> policies;
  // The report: subject = the first of dynamic/first policy, peers = the others; figures per
  // policy (percentiles in ms, utilization spread, per-class shares) and, on the subject, the
  // p99 ratios against static and p2c.
  Measurement subject;
  std::vector<Measurement> peers;
  std::map<std::string, std::string> params;
  std::vector<std::string> summary_figures;
  std::string table;  // human-readable, several lines
};

// Targets of the issue: dynamic SWRR's p99 at most these fractions of static SWRR's and P2C's.
inline constexpr double kTargetP99VsStatic = 0.6;
inline constexpr double kTargetP99VsP2c = 0.8;

// Runs one policy (a name accepted in ComputeLbOptions::policies).
Result<LbPolicyResult> RunComputeLbPolicy(const ComputeLbOptions& options, const std::string& policy);
// Runs every policy of options.policies and builds the table and the report's measurements.
Result<ComputeLbResult> RunComputeLb(const ComputeLbOptions& options);

}  // namespace chorus::bench
