// The engines likes.engine selects (docs/scale-out.md), from configuration:
//   embedded  RocksDB under data_dir/likes; the service applies its own log.
//   cluster   ClusterLikeStore (cluster_store.h): NATS JetStream + MariaDB/TiDB, applied by
//             `chorus likes job` (job.h), whose process is built here too.
// Also the operations commands' engine access: `chorus likes migrate` and `verify`.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/metrics.h"
#include "base/status.h"
#include "likes/like_store.h"

namespace chorus::likes {

class LikesJob;

// Readiness for /readyz: whether to serve, and a detail naming the mode.
struct EngineHealth {
  bool ready = true;
  std::string detail;
};

struct LikesEngine {
  std::shared_ptr<LikeStore> store;
  std::function<EngineHealth()> health;
  std::vector<CallbackHandle> metrics;  // the engine's gauges, registered while this lives
  std::shared_ptr<void> keep_alive;     // clients the store uses
};
Result<LikesEngine> OpenLikesEngine(const Config& config);

// `chorus likes job`: the job, not started.
struct LikesJobProcess {
  std::unique_ptr<LikesJob> job;
  std::function<EngineHealth()> health;
  std::vector<CallbackHandle> metrics;
  std::shared_ptr<void> keep_alive;
  ~LikesJobProcess();
  LikesJobProcess();
  LikesJobProcess(LikesJobProcess&&) noexcept;
  LikesJobProcess& operator=(LikesJobProcess&&) noexcept;
};
Result<LikesJobProcess> OpenLikesJob(const Config& config);

// `chorus likes migrate`: creates or upgrades the cluster engine's schema (likes.mysql.*).
Status MigrateLikes(const Config& config);

// The store `chorus likes verify` checks: RocksDB (read-only unless `repair`) or the database.
Result<std::unique_ptr<LikeStore>> OpenLikesStoreForVerify(const Config& config, bool repair);

}  // namespace chorus::likes
