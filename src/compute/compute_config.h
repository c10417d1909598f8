// Configuration of the compute roles (compute.* keys) and the options each role is built from.
// The process-level values a role needs but configuration does not hold (its gRPC address, the
// token signer, the worker binary) are passed in by the caller (src/chorus).
#pragma once

#include <string>

#include "base/config.h"
#include "base/status.h"
#include "compute/node_server.h"
#include "compute/resource_server.h"
#include "compute/router_client.h"
#include "compute/scheduler.h"

namespace chorus::net {
class TokenSigner;
}

namespace chorus::compute {

void AddConfigKeys(ConfigSchema& schema);

// `grpc_address` is this process's gRPC address (host:port, port known): the default resource
// server of nodes and schedulers, and the address a node advertises.
Result<ResourceServerOptions> ResourceOptionsFromConfig(const Config& config, const std::string& grpc_address,
                                                        const net::TokenSigner& signer);
Result<NodeServerOptions> NodeOptionsFromConfig(const Config& config, const std::string& grpc_address,
                                                const net::TokenSigner& signer);
Result<SchedulerServiceOptions> SchedulerOptionsFromConfig(const Config& config, const std::string& grpc_address,
                                                           const net::TokenSigner& signer);

// The gateway's router (compute.gateway.* keys); the token defaults to one with compute.invoke.
Result<RouterClientOptions> GatewayOptionsFromConfig(const Config& config, const std::string& grpc_address,
                                                     const net::TokenSigner& signer);

// A service token for compute calls: subject `subject`, the given scopes, no expiry.
std::string SignComputeToken(const net::TokenSigner& signer, const std::string& subject,
                             std::vector<std::string> scopes);

}  // namespace chorus::compute
