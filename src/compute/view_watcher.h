// Follows the global view of one resource cluster (docs/compute.md, "Resource server"): a Watch
// stream to one of the cluster's servers, and on failure the next one, for as long as it runs.
// Every (re)connection starts with a full update, so a consumer that applies full updates as
// "replace what this source said" never keeps a stale node across a failover.
//
// Threads: one thread per watcher; `on_update` runs on it, in stream order. Start/Stop from any
// thread (not concurrently with each other); Stop cancels the stream and joins.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/status.h"

namespace chorus::compute {

namespace v1 {
class ViewUpdate;
}

class ViewWatcher {
 public:
  using OnUpdate = std::function<void(v1::ViewUpdate&&)>;

  // `servers`: the cluster's resource servers (host:port), tried in order, round and round.
  // `token`: any valid chorus token. `who`: names the watcher in logs ("scheduler s1").
  ViewWatcher(std::vector<std::string> servers, std::string token, std::string who, OnUpdate on_update);
  ~ViewWatcher();
  ViewWatcher(const ViewWatcher&) = delete;
  ViewWatcher& operator=(const ViewWatcher&) = delete;

  void Start();
  void Stop();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::compute
