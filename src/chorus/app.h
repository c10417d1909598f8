// The chorus process: configuration schema, `chorus up` and `chorus token`, independent of the
// command-line parser so tests can drive them directly. The only place that knows every service.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/config.h"
#include "base/status.h"

namespace chorus::app {

// Every configuration key of the process, with its default and help.
const ConfigSchema& Schema();

std::string_view Version();  // "0.1.0 (git abc1234)"

// Runs `chorus up` until SIGTERM or SIGINT; returns the process exit code (0 after a clean
// shutdown). Logs why on failure. SIGTERM/SIGINT must be blocked in every thread (see
// BlockShutdownSignals) before this is called.
// `services` names the services to run ("live", ...); empty runs every service.
int RunUp(const Config& config, const std::vector<std::string>& services = {});

// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts afterwards, so
// RunUp can wait for them synchronously.
void BlockShutdownSignals();

// `chorus likes verify`: recomputes the likes store's (likes.engine's) counts, received totals
// and indexes from its records and prints every difference (repairing them with `repair`).
// Returns the exit code: 0 consistent (or repaired), 1 differences found or an engine error,
// 2 bad usage (no embedded store under data_dir).
int RunLikesVerify(const Config& config, bool repair);
// `chorus likes migrate`: creates or upgrades the cluster engine's schema. 0 done, 1 failed.
int RunLikesMigrate(const Config& config);

// `chorus compute apply|delete|status`: talk to a resource server (or `chorus up`) over gRPC.
struct ComputeRequest {
  std::string server = "127.0.0.1:9090";
  std::string token;                // empty: signed with the secret in data_dir (scope compute.admin)
  std::string data_dir = "./data";
  std::string file;                 // apply: the YAML spec ("-" = stdin)
  std::string app;                  // delete: the app name; status: only this app
  bool json = false;                // status: the view as JSON
};
// Exit codes: 0 done, 1 the server failed or could not be reached, 2 bad input (spec, flags),
// 3 not found (delete/status of an unknown app).
int RunComputeApply(const ComputeRequest& request);
int RunComputeDelete(const ComputeRequest& request);
int RunComputeStatus(const ComputeRequest& request);
// `chorus compute worker`: the synthetic engine's worker process (stdin/stdout frames).
int RunComputeWorker(double cpu_ms, double latency_ms, int max_concurrency);
// `chorus compute worker --engine NAME [--model M] [--option k=v ...]`: any registered engine
// (compute/engine.h); an empty engine is synthetic. Exit 2 when the engine cannot be built.
int RunComputeEngineWorker(const std::string& engine, const std::string& model,
                           const std::vector<std::string>& option_args, double cpu_ms, double latency_ms,
                           int max_concurrency);

struct TokenRequest {
  std::string data_dir;
  std::string user;               // exactly one of user / service
  std::string service;
  int level = 0;
  std::vector<std::string> scopes;
  std::string ttl;                // duration text; empty = 24h for users, no expiry for services
};
// Returns the signed token, or an error explaining which flag is wrong.
Result<std::string> MakeToken(const TokenRequest& request);

}  // namespace chorus::app
