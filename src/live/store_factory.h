// Builds the poll store chosen by config live.store: "memory" (embedded) or "redis".
#pragma once
#include <memory>

#include "base/config.h"
#include "base/status.h"
#include "live/live_service.h"
#include "live/poll_store.h"

namespace chorus::net {
class Runtime;
}

namespace chorus::live {

Result<std::shared_ptr<PollStore>> MakePollStore(const Config& config, const LiveOptions& options,
                                                 net::Runtime& runtime);

}  // namespace chorus::live
