// The resource server role (docs/compute.md): chorus.compute.v1.Resource over gRPC around a
// ResourceState, a broadcaster thread that flushes the state every broadcast_interval (or at
// once on urgent transitions) to watchers and peers, and one sender thread per peer.
//
// Heartbeat streams use gRPC's callback API (no thread per stream: thousands of nodes per
// server); Watch uses a sync-server thread per watcher (a handful of schedulers and tools).
// Threads: Start/BeginShutdown/Stop from the owner's thread; the rest is internal.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "compute/resource_state.h"

namespace grpc {
class Service;
}
namespace chorus::net {
class TokenSigner;
}

namespace chorus::compute {

struct ResourceServerOptions {
  ResourceOptions state;
  std::vector<std::string> peers;  // host:port of the cluster's other resource servers
  Duration broadcast_interval = std::chrono::milliseconds(100);
  std::string apps_file;           // app specs survive restarts here; empty: not persisted
  std::string peer_token;          // bearer token for PeerSync (scope compute.peer)
};

class ResourceServer {
 public:
  static Result<std::unique_ptr<ResourceServer>> Create(ResourceServerOptions options, const net::TokenSigner& signer,
                                                        Clock& clock);
  ~ResourceServer();

  grpc::Service* service();
  // Starts the broadcaster and the peer senders.
  void Start();
  // Ends watch streams and stops taking heartbeats (before the gRPC server drains).
  void BeginShutdown();
  void Stop();

  ResourceState& state();
  // Applies an app spec (YAML, as `chorus compute apply`) unless an app of that name exists (its
  // current version is returned then); a bad spec is kInvalidArgument naming the field.
  Result<pb::App> ApplyIfAbsent(const std::string& spec_yaml);

  class Impl;

 private:
  explicit ResourceServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::compute
