// The node role (docs/compute.md, "Node agent"): chorus.compute.v1.Node over gRPC around a
// NodeAgent, the heartbeat stream to the resource servers, the load sampler, real worker
// processes (exec and synthetic engines), and the SIGTERM drain.
//
// Threads: a heartbeat thread (writes; a reader thread per stream notices a broken stream at
// once) and gRPC's sync threads for Claim/Release/Invoke. Create, SetAddress, Start, Drain and
// Stop are for the owner's thread.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "compute/node_agent.h"

namespace grpc {
class Service;
}
namespace chorus::net {
class TokenSigner;
}

namespace chorus::compute {

struct NodeServerOptions {
  NodeOptions node;                     // address may be set later with SetAddress
  std::vector<std::string> resources;   // resource servers, tried in order
  Duration heartbeat_interval = std::chrono::seconds(1);
  Duration drain_grace = std::chrono::seconds(2);  // keep serving after announcing draining
  std::string token;                    // bearer token for heartbeats (scope compute.node)
  std::string worker_binary;            // the chorus binary, for synthetic and built-in engines
  std::string invoke_token;             // given to workers that call other apps (scope compute.invoke)
};

class NodeServer {
 public:
  static Result<std::unique_ptr<NodeServer>> Create(NodeServerOptions options, const net::TokenSigner& signer,
                                                    Clock& clock);
  ~NodeServer();

  grpc::Service* service();
  // The address resource servers and schedulers reach this node at (known once gRPC listens).
  void SetAddress(std::string address);
  // Replaces the resource servers to report to; before Start().
  void SetResources(std::vector<std::string> resources);
  void Start();
  // The PreStop path: draining now (pushed at once), keep serving for drain_grace, wait up to
  // `max_wait` for in-flight requests, stop the workers, say goodbye.
  void Drain(Duration max_wait);
  void Stop();

  NodeAgent& agent();

  class Impl;

 private:
  explicit NodeServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// What a node's workers are given besides their app's engine spec.
struct WorkerEnvironment {
  std::string worker_binary;  // the chorus binary: synthetic and built-in engines run in it
  // For engines that call other apps through the router (the `ocr` pipeline): the resource
  // servers to watch and a token with scope compute.invoke. `resources` is read at each start.
  std::function<std::vector<std::string>()> resources;
  std::string invoke_token;
};
// The real ReplicaRuntime: one worker process per replica (worker_process.h): the app's own
// command for `exec`, else `chorus compute worker` with the engine, model and options.
RuntimeFactory WorkerProcessFactory(WorkerEnvironment environment);

}  // namespace chorus::compute
