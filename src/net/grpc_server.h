// A gRPC server on its own completion-queue threads (gRPC's sync server), hosting the services a
// process registers. Kept behind this small header so the rest of the code never includes grpcpp.
//
// Services are owned by the caller and must outlive the server. Shutdown() lets in-flight calls
// finish up to the deadline, then cancels them. Safe to call Shutdown() from any thread, once.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"

namespace grpc {
class Service;
class Server;
}  // namespace grpc

namespace chorus::net {

class GrpcServer {
 public:
  // `address` is host:port; port 0 picks a free port.
  static Result<std::unique_ptr<GrpcServer>> Start(const std::string& address,
                                                   const std::vector<grpc::Service*>& services);
  ~GrpcServer();

  uint16_t port() const { return port_; }
  void Shutdown(Duration deadline);

 private:
  GrpcServer() = default;
  std::unique_ptr<grpc::Server> server_;
  uint16_t port_ = 0;
  bool shut_down_ = false;
};

}  // namespace chorus::net
