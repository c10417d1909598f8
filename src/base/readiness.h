// Readiness of the services in this process, for /readyz and the gRPC System service.
//
// Each service registers itself (not ready) at wiring time and flips to ready when it can serve;
// shutdown marks the whole process not ready first so load balancers stop sending work.
// Thread-safe; not on any hot path (a mutex is fine).
#pragma once

#include <string>
#include <vector>

#include "base/mutex.h"

namespace chorus {

class Readiness {
 public:
  struct Entry {
    std::string name;
    bool ready = false;
    std::string detail;  // why not ready
  };

  void Set(const std::string& name, bool ready, std::string detail = {}) EXCLUDES(mu_);
  void SetShuttingDown() EXCLUDES(mu_);

  // Ready when not shutting down and every registered service is ready.
  bool Ready() const EXCLUDES(mu_);
  std::vector<Entry> Snapshot() const EXCLUDES(mu_);

 private:
  mutable Mutex mu_;
  std::vector<Entry> entries_ GUARDED_BY(mu_);
  bool shutting_down_ GUARDED_BY(mu_) = false;
};

}  // namespace chorus
