// The gRPC System service (proto/chorus/system/v1): version and readiness of this process.
// Kept out of app.h so only this file and up.cc include generated gRPC headers.
#pragma once

#include <memory>

#include "base/readiness.h"

namespace grpc {
class Service;
}

namespace chorus::app {

std::unique_ptr<grpc::Service> MakeSystemService(const Readiness& readiness);

}  // namespace chorus::app
