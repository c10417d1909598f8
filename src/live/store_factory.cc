#include "live/store_factory.h"

#include "live/memory_store.h"
#include "live/redis_store.h"
#include "net/http_server.h"
#include "net/runtime.h"

namespace chorus::live {

Result<std::shared_ptr<PollStore>> MakePollStore(const Config& config, const LiveOptions& options,
                                                 net::Runtime& runtime) {
  const std::string& engine = config.GetString("live.store");
  if (engine == "memory") return std::shared_ptr<PollStore>(std::make_shared<MemoryPollStore>(options.retention));
  if (engine == "redis") {
    auto address = net::ParseHostPort(config.GetString("live.redis.address"));
    if (!address.ok()) return InvalidArgument("live.redis.address: " + std::string(address.status().message()));
    redis::RedisOptions redis_options;
    redis_options.host = address->first;
    redis_options.port = address->second;
    CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<RedisPollStore> store,
                            RedisPollStore::Connect(runtime, redis_options, options.retention));
    return std::shared_ptr<PollStore>(std::move(store));
  }
  return InvalidArgument("live.store must be memory or redis, not " + engine);
}

}  // namespace chorus::live
