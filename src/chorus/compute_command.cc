// `chorus compute apply|delete|status|worker` (docs/compute.md).
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "chorus/app.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "compute/compute_config.h"
#include "compute/engine.h"
#include "compute/synthetic_worker.h"
#include "net/token.h"

namespace chorus::app {
namespace {

namespace pb = ::chorus::compute::v1;

int ExitCodeFor(const grpc::Status& st) {
  switch (st.error_code()) {
    case grpc::StatusCode::INVALID_ARGUMENT:
      return 2;
    case grpc::StatusCode::NOT_FOUND:
      return 3;
    default:
      return 1;
  }
}

Result<std::string> Token(const ComputeRequest& r) {
  if (!r.token.empty()) return r.token;
  CHORUS_ASSIGN_OR_RETURN(std::string secret, net::LoadOrCreateSecret(r.data_dir));
  CHORUS_ASSIGN_OR_RETURN(net::TokenSigner signer, net::TokenSigner::Create(std::move(secret)));
  return compute::SignComputeToken(signer, "chorus-cli", {"compute.admin"});
}

std::unique_ptr<pb::Resource::Stub> Stub(const ComputeRequest& r) {
  return pb::Resource::NewStub(grpc::CreateChannel(r.server, grpc::InsecureChannelCredentials()));
}

void Prepare(grpc::ClientContext& ctx, const std::string& token) {
  ctx.AddMetadata("authorization", "Bearer " + token);
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
}

const char* StateName(pb::ReplicaState s) {
  switch (s) {
    case pb::REPLICA_STARTING:
      return "starting";
    case pb::REPLICA_RUNNING:
      return "running";
    case pb::REPLICA_DRAINING:
      return "draining";
    case pb::REPLICA_FAILED:
      return "failed";
    default:
      return "unknown";
  }
}

}  // namespace

int RunComputeApply(const ComputeRequest& r) {
  std::string yaml;
  if (r.file == "-") {
    yaml.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(r.file);
    if (!in) {
      std::cerr << "chorus compute apply: cannot read " << r.file << "\n";
      return 2;
    }
    yaml.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto token = Token(r);
  if (!token.ok()) {
    std::cerr << "chorus compute apply: " << token.status().message() << "\n";
    return 1;
  }
  grpc::ClientContext ctx;
  Prepare(ctx, *token);
  pb::ApplyAppRequest req;
  req.set_spec_yaml(yaml);
  pb::ApplyAppResponse resp;
  grpc::Status st = Stub(r)->ApplyApp(&ctx, req, &resp);
  if (!st.ok()) {
    std::cerr << "chorus compute apply: " << st.error_message() << "\n";
    return ExitCodeFor(st);
  }
  std::cout << "app " << resp.app().name() << " applied (generation " << resp.app().generation() << ")\n";
  return 0;
}

int RunComputeDelete(const ComputeRequest& r) {
  auto token = Token(r);
  if (!token.ok()) {
    std::cerr << "chorus compute delete: " << token.status().message() << "\n";
    return 1;
  }
  grpc::ClientContext ctx;
  Prepare(ctx, *token);
  pb::DeleteAppRequest req;
  req.set_name(r.app);
  pb::DeleteAppResponse resp;
  grpc::Status st = Stub(r)->DeleteApp(&ctx, req, &resp);
  if (!st.ok()) {
    std::cerr << "chorus compute delete: " << st.error_message() << "\n";
    return ExitCodeFor(st);
  }
  std::cout << "app " << r.app << " deleted\n";
  return 0;
}

int RunComputeStatus(const ComputeRequest& r) {
  auto token = Token(r);
  if (!token.ok()) {
    std::cerr << "chorus compute status: " << token.status().message() << "\n";
    return 1;
  }
  grpc::ClientContext ctx;
  Prepare(ctx, *token);
  pb::View view;
  grpc::Status st = Stub(r)->GetView(&ctx, pb::GetViewRequest(), &view);
  if (!st.ok()) {
    std::cerr << "chorus compute status: " << st.error_message() << "\n";
    return ExitCodeFor(st);
  }
  if (!r.app.empty()) {
    bool found = false;
    for (const auto& a : view.apps()) found |= a.name() == r.app;
    if (!found) {
      std::cerr << "chorus compute status: app \"" << r.app << "\" is not known\n";
      return 3;
    }
  }
  if (r.json) {
    std::string out;
    google::protobuf::util::JsonPrintOptions options;
    options.add_whitespace = true;
    options.preserve_proto_field_names = true;
    (void)google::protobuf::util::MessageToJsonString(view, &out, options);
    std::cout << out << "\n";
    return 0;
  }
  std::ostringstream o;
  o << "cluster " << view.cluster() << " (resource server " << view.resource_id() << ")\n\nAPPS\n";
  for (const auto& a : view.apps()) {
    if (!r.app.empty() && a.name() != r.app) continue;
    int running = 0, total = 0;
    for (const auto& n : view.nodes()) {
      if (!n.online()) continue;
      for (const auto& rep : n.replicas()) {
        if (rep.app() != a.name()) continue;
        ++total;
        running += rep.state() == pb::REPLICA_RUNNING && !n.draining() ? 1 : 0;
      }
    }
    o << "  " << a.name() << "  want ";
    if (a.max_replicas() > 0) {
      o << a.min_replicas() << ".." << a.max_replicas();
    } else {
      o << a.replicas();
    }
    o << "  running " << running << "  replicas " << total << "  engine " << a.engine().engine()
      << "  generation " << a.generation() << "\n";
  }
  o << "\nNODES\n";
  for (const auto& n : view.nodes()) {
    o << "  " << n.node_id() << "  " << (n.online() ? (n.draining() ? "draining" : "online") : "offline")
      << "  pool " << (n.pool().empty() ? "-" : n.pool()) << "  cpu " << n.allocated().cpu_millis() << "/"
      << n.capacity().cpu_millis() << "m  mem " << n.allocated().memory_mb() << "/" << n.capacity().memory_mb()
      << "Mi  slots " << n.replicas_size() << "/" << n.capacity().slots() << "  via " << n.resource_id() << "\n";
    for (const auto& rep : n.replicas()) {
      if (!r.app.empty() && rep.app() != r.app) continue;
      o << "    " << rep.replica_id() << "  " << StateName(rep.state()) << "  in_flight " << rep.in_flight()
        << "  restarts " << rep.restarts() << "\n";
    }
  }
  std::cout << o.str();
  return 0;
}

int RunComputeWorker(double cpu_ms, double latency_ms, int max_concurrency) {
  compute::SyntheticOptions o;
  o.cpu_ms = cpu_ms;
  o.latency_ms = latency_ms;
  o.max_concurrency = max_concurrency;
  return compute::RunSyntheticWorker(o);
}

// `chorus compute worker --engine NAME [--model M] [--option k=v ...] --max-concurrency N`:
// builds the engine (compute/engine.h), then serves it on stdin/stdout until EOF. An empty
// `engine` is the synthetic engine, so the synthetic flags keep working; --cpu-ms/--latency-ms
// are its cpu_ms/latency_ms options and are refused for any other engine. Exit codes: 0 after
// EOF, 1 on a protocol or I/O error, 2 when the engine cannot be built (unknown name, bad
// option, missing model) — the message on stderr says which.
int RunComputeEngineWorker(const std::string& engine, const std::string& model,
                           const std::vector<std::string>& option_args, double cpu_ms, double latency_ms,
                           int max_concurrency) {
  const std::string name = engine.empty() ? "synthetic" : engine;
  compute::EngineOptions options;
  options.model = model;
  Status parsed = compute::ParseEngineOptionArgs(option_args, options);
  if (parsed.ok() && (cpu_ms > 0 || latency_ms > 0)) {
    if (name != "synthetic") {
      parsed = InvalidArgument("--cpu-ms and --latency-ms apply to the synthetic engine only");
    } else {
      std::vector<std::string> synthetic;
      if (cpu_ms > 0) synthetic.push_back("cpu_ms=" + std::to_string(cpu_ms));
      if (latency_ms > 0) synthetic.push_back("latency_ms=" + std::to_string(latency_ms));
      parsed = compute::ParseEngineOptionArgs(synthetic, options);
    }
  }
  if (!parsed.ok()) {
    std::cerr << "chorus compute worker: " << parsed.message() << "\n";
    return 2;
  }
  auto built = compute::MakeEngine(name, options);
  if (!built.ok()) {
    std::cerr << "chorus compute worker: " << built.status().ToString() << "\n";
    return 2;
  }
  return compute::RunEngineWorker(**built, {.max_concurrency = max_concurrency, .in_fd = 0, .out_fd = 1});
}

}  // namespace chorus::app
