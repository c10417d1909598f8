// chorus: the command line. Parses flags (CLI11) and hands over to the app library.
// Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad configuration.

#include <CLI/CLI.hpp>
#include <iostream>

#include "base/logging.h"
#include "chorus/app.h"
#include "net/process_tuning.h"

namespace {

std::vector<std::pair<std::string, std::string>> ParseSets(const std::vector<std::string>& sets, bool* ok) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& s : sets) {
    const size_t eq = s.find('=');
    if (eq == std::string::npos || eq == 0) {
      std::cerr << "chorus: --set expects KEY=VALUE, got '" << s << "'\n";
      *ok = false;
      continue;
    }
    out.emplace_back(s.substr(0, eq), s.substr(eq + 1));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  chorus::net::TuneProcess();
  CLI::App app{
      "Chorus: the real-time backbone of a live-streaming and video community.\n"
      "Three services (live, likes, compute) in one binary."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(chorus::app::Version()));

  // chorus up / chorus live: the same server flags.
  std::string config_file, http, grpc, data_dir;
  std::vector<std::string> sets;
  bool print_config = false, list_keys = false;
  const char* const kPrecedence =
      "Configuration precedence (lowest first): built-in defaults, --config FILE, CHORUS_* environment "
      "variables (http.listen -> CHORUS_HTTP_LISTEN), flags. Unknown keys are errors. See --list-keys.";
  auto config_flags = [&](CLI::App* cmd) {
    cmd->add_option("--config", config_file, "YAML configuration file")->check(CLI::ExistingFile);
    cmd->add_option("--data-dir", data_dir, "Directory for durable state and the token secret (data_dir)");
    cmd->add_option("--set", sets, "Override any configuration key: --set runtime.shards=2 (repeatable)");
    cmd->footer(kPrecedence);
  };
  auto server_flags = [&](CLI::App* cmd) {
    config_flags(cmd);
    cmd->add_option("--http", http, "HTTP/WebSocket listen address, e.g. 127.0.0.1:8080 (http.listen)");
    cmd->add_option("--grpc", grpc, "gRPC listen address, e.g. 127.0.0.1:9090 (grpc.listen)");
    cmd->add_flag("--print-config", print_config, "Print the effective configuration as YAML and exit");
    cmd->add_flag("--list-keys", list_keys, "List every configuration key with its default and exit");
  };
  auto* up = app.add_subcommand("up", "Run every service in this process until SIGTERM/SIGINT.");
  server_flags(up);
  auto* live = app.add_subcommand(
      "live", "Run only the live-room messaging service (plus /healthz, /metrics) until SIGTERM/SIGINT.");
  server_flags(live);
  auto* likes = app.add_subcommand(
      "likes",
      "Run only the like platform (plus /healthz, /metrics) until SIGTERM/SIGINT; or `likes job|migrate|verify`.");
  server_flags(likes);
  likes->require_subcommand(0, 1);
  bool repair = false;
  auto* verify = likes->add_subcommand(
      "verify",
      "Recompute the likes store's counts, received totals and like indexes from its records and report every "
      "difference: RocksDB under data_dir/likes, or the database with likes.engine=cluster. Exit 0 when "
      "consistent (or repaired), 1 when differences remain or the store fails, 2 on bad usage.");
  config_flags(verify);
  verify->add_flag("--repair", repair,
                   "Rewrite every difference (embedded: needs the store to itself, stop chorus first; cluster: "
                   "safe beside running services and job)");
  auto* migrate = likes->add_subcommand(
      "migrate",
      "Create or upgrade the cluster engine's database schema (likes.mysql.*). Idempotent. Exit 0 done, 1 failed.");
  config_flags(migrate);
  auto* job = likes->add_subcommand(
      "job",
      "Run the likes job (likes.engine=cluster): apply the JetStream stream to the database in batches, in "
      "order, exactly once; serves /healthz, /readyz, /metrics until SIGTERM/SIGINT. Run one per stream.");
  server_flags(job);

  // chorus compute <role> | apply | delete | status | worker
  auto* compute = app.add_subcommand(
      "compute", "AI compute: run a role (resource, node, scheduler, gateway) or manage apps.");
  compute->require_subcommand(1);
  auto* c_resource = compute->add_subcommand(
      "resource", "Run a resource server: ingests node heartbeats, shares the view with peers, serves watches.");
  server_flags(c_resource);
  auto* c_node = compute->add_subcommand(
      "node", "Run a node agent: reports capacity and load, accepts claims, runs workers; drains on SIGTERM.");
  server_flags(c_node);
  auto* c_scheduler = compute->add_subcommand(
      "scheduler", "Run a scheduler: places the replicas of apps by claiming nodes optimistically.");
  server_flags(c_scheduler);
  auto* c_gateway = compute->add_subcommand(
      "gateway",
      "Run a gateway: POST /v1/apps/{app}/invoke routed to the app's replicas by dynamic-weight SWRR.");
  server_flags(c_gateway);
  chorus::app::ComputeRequest creq;
  auto client_flags = [&](CLI::App* cmd) {
    cmd->add_option("--server", creq.server, "gRPC address of a resource server or `chorus up` (default 127.0.0.1:9090)");
    cmd->add_option("--token", creq.token, "Bearer token with scope compute.admin (default: signed with the secret in --data-dir)");
    cmd->add_option("--data-dir", creq.data_dir, "Data directory holding the secret (default ./data)");
  };
  auto* c_apply = compute->add_subcommand("apply", "Create or update an app from a YAML spec (docs/compute.md). Exit 2 on a bad spec.");
  client_flags(c_apply);
  c_apply->add_option("file", creq.file, "The app spec (- for stdin)")->required();
  auto* c_delete = compute->add_subcommand("delete", "Delete an app; its replicas are released. Exit 3 if unknown.");
  client_flags(c_delete);
  c_delete->add_option("app", creq.app, "App name")->required();
  auto* c_status = compute->add_subcommand("status", "Apps, nodes and replicas as a resource server sees them.");
  client_flags(c_status);
  c_status->add_option("--app", creq.app, "Only this app (exit 3 if unknown)");
  c_status->add_flag("--json", creq.json, "The whole view as JSON");
  double w_cpu_ms = 0, w_latency_ms = 0;
  int w_concurrency = 1;
  std::string w_engine, w_model;
  std::vector<std::string> w_options;
  auto* c_worker = compute->add_subcommand(
      "worker", "Run an inference engine as a worker process: request frames on stdin, answers on stdout.");
  c_worker->add_option("--engine", w_engine, "synthetic (default), ocr, ocr-detect, ocr-recognize or moderation");
  c_worker->add_option("--model", w_model,
                       "The engine's model: tessdata language(s) for ocr-* (default eng), word-list file for moderation");
  c_worker->add_option("--option", w_options, "Engine option KEY=VALUE (repeatable), e.g. --option lookalikes=true");
  c_worker->add_option("--cpu-ms", w_cpu_ms, "synthetic: CPU milliseconds per request")->check(CLI::NonNegativeNumber);
  c_worker->add_option("--latency-ms", w_latency_ms, "synthetic: added latency per request")->check(CLI::NonNegativeNumber);
  c_worker->add_option("--max-concurrency", w_concurrency, "Requests handled at once")->check(CLI::PositiveNumber);
  c_worker->footer(
      "Options: ocr-detect/ocr-recognize: tessdata=DIR, max_pixels=N (40000000), max_bytes=N (32 MiB); ocr-detect: "
      "confidence=none|recognize. moderation: lookalikes=true|false (false), max_bytes=N (1 MiB). Payloads and answers: "
      "docs/compute.md. Exit 2 when the engine cannot be built (unknown engine or option, missing model).");

  // chorus token
  auto* token = app.add_subcommand("token", "Print a signed user or service token.");
  chorus::app::TokenRequest treq;
  std::string scopes;
  token->add_option("--data-dir", treq.data_dir, "Data directory holding the secret (created if missing)")
      ->required();
  auto* user_opt = token->add_option("--user", treq.user, "User id: prints a user token");
  auto* service_opt = token->add_option("--service", treq.service, "Service name: prints a service token");
  user_opt->excludes(service_opt);
  token->add_option("--level", treq.level, "User level (users only)")->check(CLI::NonNegativeNumber);
  token->add_option("--scope", scopes, "Comma-separated scopes, e.g. live.publish (services only)");
  token->add_option("--ttl", treq.ttl, "Lifetime, e.g. 24h, 30m (users: default 24h; services: no expiry)");

  // chorus version
  auto* version = app.add_subcommand("version", "Print the version.");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }

  if (version->parsed()) {
    std::cout << "chorus " << chorus::app::Version() << "\n";
    return 0;
  }

  if (token->parsed()) {
    if (!scopes.empty()) treq.scopes = CLI::detail::split(scopes, ',');
    auto t = chorus::app::MakeToken(treq);
    if (!t.ok()) {
      std::cerr << "chorus token: " << t.status().message() << "\n";
      return t.status().code() == chorus::StatusCode::kInvalidArgument ? 2 : 1;
    }
    std::cout << *t << "\n";
    return 0;
  }

  if (c_apply->parsed()) return chorus::app::RunComputeApply(creq);
  if (c_delete->parsed()) return chorus::app::RunComputeDelete(creq);
  if (c_status->parsed()) return chorus::app::RunComputeStatus(creq);
  if (c_worker->parsed()) {
    return chorus::app::RunComputeEngineWorker(w_engine, w_model, w_options, w_cpu_ms, w_latency_ms, w_concurrency);
  }

  // up
  if (list_keys) {
    std::cout << chorus::app::Schema().Describe();
    return 0;
  }
  bool ok = true;
  chorus::ConfigSources sources;
  sources.file = config_file;
  sources.env = chorus::ConfigSources::FromEnviron();
  sources.overrides = ParseSets(sets, &ok);
  if (!ok) return 2;
  if (!http.empty()) sources.overrides.emplace_back("http.listen", http);
  if (!grpc.empty()) sources.overrides.emplace_back("grpc.listen", grpc);
  if (!data_dir.empty()) sources.overrides.emplace_back("data_dir", data_dir);
  auto config = chorus::Config::Load(chorus::app::Schema(), sources);
  if (!config.ok()) {
    std::cerr << "chorus: " << config.status().message() << "\n";
    return 2;
  }
  if (print_config) {
    std::cout << config->Dump();
    return 0;
  }
  chorus::LogOptions log_options;
  log_options.level = config->GetString("log.level");
  log_options.format = config->GetString("log.format");
  log_options.file = config->GetString("log.file");
  if (auto st = chorus::InitLogging(log_options); !st.ok()) {
    std::cerr << "chorus: " << st.message() << "\n";
    return 2;
  }
  if (verify->parsed()) return chorus::app::RunLikesVerify(*config, repair);
  if (migrate->parsed()) return chorus::app::RunLikesMigrate(*config);
  chorus::app::BlockShutdownSignals();
  std::vector<std::string> services;
  if (live->parsed()) services = {"live"};
  if (likes->parsed()) services = {"likes"};
  if (job->parsed()) services = {"likes.job"};
  if (c_resource->parsed()) services = {"compute.resource"};
  if (c_node->parsed()) services = {"compute.node"};
  if (c_scheduler->parsed()) services = {"compute.scheduler"};
  if (c_gateway->parsed()) services = {"compute.gateway"};
  return chorus::app::RunUp(*config, services);
}
