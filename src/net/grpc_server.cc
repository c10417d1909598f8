#include "net/grpc_server.h"
#include "net/grpc_status.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "net/token.h"

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

grpc::Status ToGrpcStatus(const Status& s) {
  using C = grpc::StatusCode;
  C code = C::UNKNOWN;
  switch (s.code()) {
    case StatusCode::kOk: return grpc::Status::OK;
    case StatusCode::kInvalidArgument: code = C::INVALID_ARGUMENT; break;
    case StatusCode::kNotFound: code = C::NOT_FOUND; break;
    case StatusCode::kAlreadyExists: code = C::ALREADY_EXISTS; break;
    case StatusCode::kPermissionDenied: code = C::PERMISSION_DENIED; break;
    case StatusCode::kUnauthenticated: code = C::UNAUTHENTICATED; break;
    case StatusCode::kResourceExhausted: code = C::RESOURCE_EXHAUSTED; break;
    case StatusCode::kFailedPrecondition: code = C::FAILED_PRECONDITION; break;
    case StatusCode::kUnavailable: code = C::UNAVAILABLE; break;
    case StatusCode::kDeadlineExceeded: code = C::DEADLINE_EXCEEDED; break;
    case StatusCode::kInternal: code = C::INTERNAL; break;
    case StatusCode::kUnimplemented: code = C::UNIMPLEMENTED; break;
  }
  return grpc::Status(code, s.message());
}

Status FromGrpcStatus(const grpc::Status& s) {
  using C = grpc::StatusCode;
  std::string message = s.error_message();
  switch (s.error_code()) {
    case C::OK: return Status::Ok();
    case C::INVALID_ARGUMENT:
    case C::OUT_OF_RANGE: return InvalidArgument(std::move(message));
    case C::NOT_FOUND: return NotFound(std::move(message));
    case C::ALREADY_EXISTS: return AlreadyExists(std::move(message));
    case C::PERMISSION_DENIED: return PermissionDenied(std::move(message));
    case C::UNAUTHENTICATED: return Unauthenticated(std::move(message));
    case C::RESOURCE_EXHAUSTED: return ResourceExhausted(std::move(message));
    case C::FAILED_PRECONDITION:
    case C::ABORTED: return FailedPrecondition(std::move(message));
    case C::DEADLINE_EXCEEDED: return DeadlineExceeded(std::move(message));
    case C::INTERNAL:
    case C::DATA_LOSS:
    case C::UNKNOWN: return Internal(std::move(message));
    case C::UNIMPLEMENTED: return Unimplemented(std::move(message));
    default: return Unavailable(std::move(message));  // UNAVAILABLE, CANCELLED, ...
  }
}

Result<std::string_view> GrpcBearerToken(const grpc::ServerContextBase& ctx) {
  const auto& md = ctx.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return Unauthenticated("missing authorization metadata");
  return BearerToken(std::string_view(it->second.data(), it->second.size()));
}

}  // namespace chorus::net
