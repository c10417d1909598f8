// The scheduler role (docs/compute.md, "Scheduler"): watches one resource server per cluster,
// feeds a SchedulerCore, and sends its claims and releases to the nodes with gRPC's callback
// client (many in flight at once, no thread per call).
//
// Threads: one watch thread per cluster (reconnects to the cluster's next server on failure),
// one loop thread that owns the SchedulerCore; RPC completions are queued to the loop thread.
// Start/Stop/Counts from any thread.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "compute/scheduler_core.h"

namespace chorus::compute {

struct SchedulerServiceOptions {
  SchedulerOptions core;
  // Each entry: the resource servers of one cluster (federation: one entry per cluster).
  std::vector<std::vector<std::string>> clusters;
  std::string token;  // scopes compute.schedule (claims, releases); any valid token watches
  Duration tick = std::chrono::seconds(1);
  Duration rpc_timeout = std::chrono::seconds(2);
  uint64_t seed = 0;  // 0: from the clock
};

class Scheduler {
 public:
  static Result<std::unique_ptr<Scheduler>> Create(SchedulerServiceOptions options, Clock& clock);
  ~Scheduler();

  void Start();
  void Stop();

  struct Stats {
    std::map<std::string, SchedulerCore::AppCounts> apps;
    size_t online_nodes = 0;
    uint64_t claims_sent = 0;
    uint64_t claims_accepted = 0;
    uint64_t conflicts = 0;
  };
  Stats stats() const;

  class Impl;

 private:
  explicit Scheduler(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::compute
