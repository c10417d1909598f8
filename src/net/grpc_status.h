// The edge between chorus Status and gRPC, for gRPC services and clients (which include grpcpp
// anyway; nothing else should include this header).
#pragma once

#include <string_view>

#include <grpcpp/server_context.h>
#include <grpcpp/support/status.h>

#include "base/status.h"

namespace chorus::net {

// The gRPC status for a chorus Status: same code family, same message.
grpc::Status ToGrpcStatus(const Status& status);

// The chorus Status for a gRPC status (a client's view of a call): ABORTED is kFailedPrecondition
// (callers that care read the code themselves); UNKNOWN/DATA_LOSS are kInternal; CANCELLED and
// anything unlisted kUnavailable.
Status FromGrpcStatus(const grpc::Status& status);

// The token of the call's `authorization: Bearer <token>` metadata; Unauthenticated if absent or
// malformed. The view points into the call's metadata.
Result<std::string_view> GrpcBearerToken(const grpc::ServerContextBase& ctx);

}  // namespace chorus::net
