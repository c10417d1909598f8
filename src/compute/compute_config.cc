#include "compute/compute_config.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>

#include "base/clock.h"
#include "compute/app_spec.h"
#include "compute/node_probe.h"
#include "net/token.h"

namespace chorus::compute {
namespace {

std::string Sanitize(std::string s) {
  for (char& c : s) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) c = '-';
  }
  if (s.size() > 64) s.resize(64);
  return s;
}

std::string Hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "host";
  return buf;
}

std::string PortOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(colon + 1);
}

// `key`: one entry per cluster, its servers separated by '|'; empty: this process alone.
Result<std::vector<std::vector<std::string>>> Clusters(const Config& c, const std::string& key,
                                                      const std::string& grpc_address) {
  std::vector<std::vector<std::string>> clusters;
  for (const std::string& entry : c.GetStringList(key)) {
    std::vector<std::string> servers;
    size_t start = 0;
    while (start <= entry.size()) {
      const size_t bar = entry.find('|', start);
      std::string server = entry.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
      if (!server.empty()) servers.push_back(server);
      if (bar == std::string::npos) break;
      start = bar + 1;
    }
    if (servers.empty()) return InvalidArgument(key + ": an empty cluster entry");
    clusters.push_back(std::move(servers));
  }
  if (clusters.empty()) clusters = {{grpc_address}};
  return clusters;
}

}  // namespace

void AddConfigKeys(ConfigSchema& s) {
  s.String("compute.cluster", "default", "Resource cluster this process belongs to.")
      .Duration("compute.heartbeat_interval", "1s", "Node heartbeat period (resource servers expect the same).")
      .String("compute.token", "",
              "Bearer token for compute calls between processes (empty: signed here with DATA_DIR/secret, which "
              "every process of a cluster must then share).")
      .String("compute.resource.id", "", "This resource server's id (empty: r-HOSTNAME-GRPCPORT).")
      .StringList("compute.resource.peers", {}, "The cluster's other resource servers (host:port, comma-separated).")
      .Int("compute.resource.offline_after", 3, "Silent heartbeat intervals after which a node is offline.", 1, 1000)
      .Duration("compute.resource.reconnect_grace", "500ms",
                "A node whose stream broke is offline unless it reports again (anywhere) within this.")
      .Duration("compute.resource.peer_timeout", "1s",
                "A peer silent this long no longer vouches for its nodes (they wait for re-homing).")
      .Duration("compute.resource.broadcast_interval", "100ms", "Changes are batched to peers and watchers this often.")
      .String("compute.node.id", "", "This node's id (empty: HOSTNAME-PID).")
      .String("compute.node.pool", "", "Hardware pool label apps may select (pools: [...]).")
      .StringList("compute.node.resources", {},
                  "Resource servers to report to, tried in order (empty: this process's gRPC address).")
      .Int("compute.node.slots", 8, "Pre-created worker slots: most replicas on this node.", 1, 100000)
      .Int("compute.node.cpu_millis", 0, "CPU offered, in millicores (0: every core).", 0)
      .Int("compute.node.memory_mb", 0, "Memory offered, in MiB (0: all of it).", 0)
      .StringList("compute.node.gpus", {}, "GPUs offered as TYPE:COUNT[:PERF] (empty: nvidia-smi if present).")
      .StringList("compute.node.card_perf", {}, "Performance coefficients of card types, TYPE=PERF.")
      .Int("compute.node.invoke_queue", 4,
           "A replica takes up to max_concurrency times this many requests at once (the rest wait in its "
           "worker's queue); beyond that the node answers busy.",
           1, 1000)
      .Duration("compute.node.drain_grace", "2s", "After SIGTERM, keep serving this long once draining is announced.")
      .String("compute.node.worker_binary", "",
              "Program run for the synthetic and built-in engines (empty: this chorus binary).")
      .StringList("compute.scheduler.apps", {}, "Apps this scheduler places (empty: every app).")
      .StringList("compute.scheduler.clusters", {},
                  "Resource clusters to watch: one entry per cluster, its servers separated by '|' "
                  "(empty: this process's gRPC address).")
      .Int("compute.scheduler.candidates", 4,
           "Placement draws this many nodes at random among those with the fewest replicas of the app "
           "and takes the one with the most free CPU (1: always the most free CPU).",
           1, 1000)
      .Int("compute.scheduler.max_replicas_per_claim", 8,
           "When an app needs more replicas than there are nodes with room, one claim places up to this "
           "many on a node (one compare-and-swap, one version bump); 1: one replica per claim.",
           1, 64)
      .Bool("compute.builtin_apps", true,
            "chorus up (all services) applies the ocr pipeline (ocr, ocr-detect, ocr-recognize) and moderation "
            "apps at start, unless apps of those names exist.")
      .String("compute.models_dir", "",
              "Where built-in apps find their model files (empty: ./models, else the source tree's models/).")
      .StringList("compute.gateway.clusters", {},
                  "Resource clusters the gateway's router watches, as compute.scheduler.clusters "
                  "(empty: this process's gRPC address).")
      .String("compute.gateway.policy", "dynamic",
              "Routing policy: dynamic (SWRR on the seed's load-based weights), static (SWRR on capacity) "
              "or p2c (least requests in flight of two random nodes).")
      .Duration("compute.gateway.weight_interval", "3s", "How often routing weights are recomputed from node reports.")
      .Duration("compute.gateway.timeout", "30s", "Per-attempt limit on a request to a node.")
      .Int("compute.gateway.retries", 1, "Retries of a failed request, each on another node.", 0, 5);
}

std::string SignComputeToken(const net::TokenSigner& signer, const std::string& subject,
                             std::vector<std::string> scopes) {
  net::TokenClaims c;
  c.kind = net::TokenClaims::Kind::kService;
  c.subject = subject;
  c.scopes = std::move(scopes);
  c.issued_at = SystemClock::Instance().WallMillis() / 1000;
  return signer.Sign(c);
}

Result<ResourceServerOptions> ResourceOptionsFromConfig(const Config& c, const std::string& grpc_address,
                                                        const net::TokenSigner& signer) {
  ResourceServerOptions o;
  o.state.resource_id = c.GetString("compute.resource.id");
  if (o.state.resource_id.empty()) o.state.resource_id = Sanitize("r-" + Hostname() + "-" + PortOf(grpc_address));
  o.state.cluster = c.GetString("compute.cluster");
  o.state.heartbeat_interval = c.GetDuration("compute.heartbeat_interval");
  o.state.offline_after = static_cast<int>(c.GetInt("compute.resource.offline_after"));
  o.state.reconnect_grace = c.GetDuration("compute.resource.reconnect_grace");
  o.state.peer_timeout = c.GetDuration("compute.resource.peer_timeout");
  o.broadcast_interval = c.GetDuration("compute.resource.broadcast_interval");
  o.peers = c.GetStringList("compute.resource.peers");
  o.apps_file = (std::filesystem::path(c.GetString("data_dir")) / "compute" / ("apps-" + o.state.resource_id + ".pb")).string();
  o.peer_token = c.GetString("compute.token");
  if (o.peer_token.empty()) o.peer_token = SignComputeToken(signer, "resource:" + o.state.resource_id, {"compute.peer"});
  if (o.state.heartbeat_interval <= Duration::zero() || o.broadcast_interval <= Duration::zero()) {
    return InvalidArgument("compute.heartbeat_interval and compute.resource.broadcast_interval must be positive");
  }
  return o;
}

Result<NodeServerOptions> NodeOptionsFromConfig(const Config& c, const std::string& grpc_address,
                                                const net::TokenSigner& signer) {
  NodeServerOptions o;
  o.node.node_id = c.GetString("compute.node.id");
  if (o.node.node_id.empty()) o.node.node_id = Sanitize(Hostname() + "-" + std::to_string(getpid()));
  o.node.cluster = c.GetString("compute.cluster");
  o.node.pool = c.GetString("compute.node.pool");
  o.node.address = grpc_address;
  o.node.slots = static_cast<int>(c.GetInt("compute.node.slots"));
  ProbeOptions probe;
  probe.cpu_millis = c.GetInt("compute.node.cpu_millis");
  probe.memory_mb = c.GetInt("compute.node.memory_mb");
  probe.gpus = c.GetStringList("compute.node.gpus");
  probe.card_perf = c.GetStringList("compute.node.card_perf");
  auto capacity = DetectCapacity(probe);
  if (!capacity.ok()) return capacity.status().WithContext("compute.node");
  o.node.capacity = std::move(*capacity);
  o.resources = c.GetStringList("compute.node.resources");
  if (o.resources.empty()) o.resources = {grpc_address};
  o.heartbeat_interval = c.GetDuration("compute.heartbeat_interval");
  o.drain_grace = c.GetDuration("compute.node.drain_grace");
  o.node.invoke_queue = static_cast<int>(c.GetInt("compute.node.invoke_queue"));
  o.token = c.GetString("compute.token");
  if (o.token.empty()) o.token = SignComputeToken(signer, "node:" + o.node.node_id, {"compute.node"});
  o.invoke_token = c.GetString("compute.token");
  if (o.invoke_token.empty()) {
    o.invoke_token = SignComputeToken(signer, "node:" + o.node.node_id + ":workers", {"compute.invoke"});
  }
  o.worker_binary = c.GetString("compute.node.worker_binary");
  if (o.worker_binary.empty()) {
    std::error_code ec;
    o.worker_binary = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  }
  return o;
}

Result<SchedulerServiceOptions> SchedulerOptionsFromConfig(const Config& c, const std::string& grpc_address,
                                                           const net::TokenSigner& signer) {
  SchedulerServiceOptions o;
  o.core.scheduler_id = Sanitize("s-" + Hostname() + "-" + std::to_string(getpid()));
  o.core.apps = c.GetStringList("compute.scheduler.apps");
  for (const auto& a : o.core.apps) {
    if (!IsValidName(a)) return InvalidArgument("compute.scheduler.apps: \"" + a + "\" is not a valid app name");
  }
  o.core.candidates = static_cast<int>(c.GetInt("compute.scheduler.candidates"));
  o.core.max_replicas_per_claim = static_cast<int>(c.GetInt("compute.scheduler.max_replicas_per_claim"));
  CHORUS_ASSIGN_OR_RETURN(o.clusters, Clusters(c, "compute.scheduler.clusters", grpc_address));
  o.token = c.GetString("compute.token");
  if (o.token.empty()) o.token = SignComputeToken(signer, "scheduler:" + o.core.scheduler_id, {"compute.schedule"});
  o.seed = static_cast<uint64_t>(c.GetInt("runtime.seed"));
  return o;
}

Result<RouterClientOptions> GatewayOptionsFromConfig(const Config& c, const std::string& grpc_address,
                                                     const net::TokenSigner& signer) {
  RouterClientOptions o;
  CHORUS_ASSIGN_OR_RETURN(o.clusters, Clusters(c, "compute.gateway.clusters", grpc_address));
  const std::string& policy = c.GetString("compute.gateway.policy");
  if (policy == "dynamic") {
    o.router.policy = PickerKind::kFastSwrr;
  } else if (policy == "static") {
    o.router.policy = PickerKind::kStaticSwrr;
    o.router.dynamic_weights = false;
  } else if (policy == "p2c") {
    o.router.policy = PickerKind::kP2cLeastRequest;
    o.router.dynamic_weights = false;
  } else {
    return InvalidArgument("compute.gateway.policy: \"" + policy + "\" is not one of dynamic, static, p2c");
  }
  o.weight_interval = c.GetDuration("compute.gateway.weight_interval");
  if (o.weight_interval <= Duration::zero()) {
    return InvalidArgument("compute.gateway.weight_interval: must be positive");
  }
  o.router.suspend_for = o.weight_interval;
  o.timeout = c.GetDuration("compute.gateway.timeout");
  if (o.timeout <= Duration::zero()) return InvalidArgument("compute.gateway.timeout: must be positive");
  o.router.retries = static_cast<int>(c.GetInt("compute.gateway.retries"));
  o.router.seed = static_cast<uint64_t>(c.GetInt("runtime.seed")) + 1;
  o.token = c.GetString("compute.token");
  if (o.token.empty()) o.token = SignComputeToken(signer, "gateway", {"compute.invoke"});
  return o;
}

}  // namespace chorus::compute
