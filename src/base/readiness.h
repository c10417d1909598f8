// Readiness of the services in this process, for /readyz and the gRPC System service.
//
// Each service registers itself (not ready) at wiring time and flips to ready when it can serve;
// shutdown marks the whole process not ready first so load balancers stop sending work.
// Thread-safe; not on any hot path (a mutex is fine).
#pragma once

#include <mutex>
#include <string>
#include <vector>

namespace chorus {

class Readiness {
 public:
  struct Entry {
    std::string name;
    bool ready = false;
    std::string detail;  // why not ready
  };

  void Set(const std::string& name, bool ready, std::string detail = {});
  void SetShuttingDown();

  // Ready when not shutting down and every registered service is ready.
  bool Ready() const;
  std::vector<Entry> Snapshot() const;

 private:
  mutable std::mutex mu_;
  std::vector<Entry> entries_;  // guarded by mu_
  bool shutting_down_ = false;  // guarded by mu_
};

}  // namespace chorus
