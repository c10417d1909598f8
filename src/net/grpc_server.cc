#include "net/grpc_server.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

namespace chorus::net {

Result<std::unique_ptr<GrpcServer>> GrpcServer::Start(const std::string& address,
                                                      const std::vector<grpc::Service*>& services) {
  std::unique_ptr<GrpcServer> s(new GrpcServer());
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &selected_port);
  builder.SetMaxReceiveMessageSize(16 * 1024 * 1024);
  for (grpc::Service* service : services) builder.RegisterService(service);
  s->server_ = builder.BuildAndStart();
  if (!s->server_ || selected_port == 0) return Unavailable("cannot listen for gRPC on " + address);
  s->port_ = static_cast<uint16_t>(selected_port);
  return s;
}

GrpcServer::~GrpcServer() { Shutdown(std::chrono::seconds(0)); }

void GrpcServer::Shutdown(Duration deadline) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline));
  server_->Wait();
}

}  // namespace chorus::net
