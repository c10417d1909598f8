// The compute gateway (docs/compute.md, "Data plane"): HTTP in front of the router.
//
//   POST /v1/apps/{app}/invoke   body = the request payload, passed to a worker as is; answer =
//                                the worker's payload (application/json when it looks like JSON),
//                                with X-Chorus-Node and X-Chorus-Attempts headers
//   GET  /v1/apps/{app}/routes   the app's routing table: [{"node","address","weight","requests"}]
//   GET  /v1/compute/nodes       every node in the view: state (online/draining/offline), cards,
//                                utilization, capacity, allocation, replicas
//
// All need `Authorization: Bearer <token with scope compute.invoke>`. Errors are the usual JSON
// error with the status of the failure: 400 bad input (empty body, or the engine refused the
// payload), 401/403 token, 404 unknown app, 413 body over http.max_body_bytes (the HTTP server's
// own limit), 429 every replica busy, 503 no routable replica or the router not attached yet,
// 504 the worker did not answer in time, 500 a worker failed twice.
//
// Routes are added before the HTTP server starts; the router client is attached once the gRPC
// address it watches is known. Thread-safe.
#pragma once

#include <atomic>
#include <memory>

#include "base/status.h"
#include "compute/router_client.h"

namespace chorus::net {
class Router;
class TokenSigner;
}  // namespace chorus::net

namespace chorus::compute {

class Gateway {
 public:
  explicit Gateway(const net::TokenSigner& signer);
  ~Gateway();

  Status AddRoutes(net::Router& router);
  // Takes over a started client; requests before this answer 503.
  void Attach(std::unique_ptr<RouterClient> client);
  // Stops the client (in-flight requests finish or fail); later requests answer 503.
  void Stop();
  RouterClient* client();

 private:
  struct State;
  std::shared_ptr<State> state_;
};

}  // namespace chorus::compute
