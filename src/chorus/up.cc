// `chorus up`: one process serving every service on one runtime.
//
// Start order: logging, secret, runtime threads, routes, HTTP, gRPC, then readiness. Stop order
// on SIGTERM/SIGINT: not ready, stop accepting (HTTP and gRPC), drain in-flight work up to
// shutdown.drain_timeout, stop the shards, exit 0.
#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <thread>
#include <grpcpp/impl/service_type.h>

#include "base/logging.h"
#include "base/metrics.h"
#include "base/readiness.h"
#include "chorus/app.h"
#include "chorus/system_service.h"
#include "chorus/wiring.h"
#include "compute/compute_config.h"
#include "compute/gateway.h"
#include "likes/likes_service.h"
#include "likes/engine.h"
#include "likes/job.h"
#include "live/live_service.h"
#include "live/store_factory.h"
#include "net/grpc_server.h"
#include "net/http_json.h"
#include "net/http_server.h"
#include "net/router.h"
#include "net/runtime.h"
#include "net/static_files.h"
#include "net/token.h"

namespace chorus::app {
namespace {

nlohmann::json ClaimsJson(const net::TokenClaims& c) {
  return {{"kind", net::TokenKindName(c.kind)},
          {"subject", c.subject},
          {"level", c.level},
          {"scopes", c.scopes},
          {"issued_at", c.issued_at},
          {"expires_at", c.expires_at ? nlohmann::json(*c.expires_at) : nlohmann::json(nullptr)}};
}

std::filesystem::path WebRoot(const Config& config) {
  const std::string& configured = config.GetString("http.web_root");
  if (!configured.empty()) return configured;
  std::error_code ec;
  if (std::filesystem::is_directory("web", ec)) return "web";
  return CHORUS_SOURCE_WEB_ROOT;
}

std::filesystem::path ModelsDir(const Config& config) {
  const std::string& configured = config.GetString("compute.models_dir");
  if (!configured.empty()) return configured;
  std::error_code ec;
  if (std::filesystem::is_directory("models", ec)) return std::filesystem::absolute("models", ec);
  return CHORUS_SOURCE_MODELS_DIR;
}

// The apps `chorus up` runs on its own node: the seed's OCR pipeline and a text moderation app
// (docs/compute.md, "Built-in apps"). Two replicas of each OCR stage, so a worker that dies is
// covered by the other while it restarts; sized to fit together on a 2-core node.
std::vector<std::string> BuiltinAppSpecs(const std::filesystem::path& models_dir) {
  return {
      "name: ocr-detect\nreplicas: 2\nresources: {cpu: 300m, memory: 256Mi}\nmax_concurrency: 2\n"
      "engine: {type: ocr-detect}\nmodel: eng\n",
      "name: ocr-recognize\nreplicas: 2\nresources: {cpu: 500m, memory: 512Mi}\nmax_concurrency: 2\n"
      "engine: {type: ocr-recognize}\nmodel: eng\n",
      "name: ocr\nreplicas: 1\nresources: {cpu: 100m, memory: 64Mi}\nmax_concurrency: 8\nengine: {type: ocr}\n",
      "name: moderation\nreplicas: 1\nresources: {cpu: 100m, memory: 64Mi}\nmax_concurrency: 8\n"
      "engine: {type: moderation, options: {lookalikes: \"true\"}}\nmodel: \"" +
          (models_dir / "moderation" / "words.txt").string() + "\"\n",
  };
}

Status AddCoreRoutes(net::Router& router, const Readiness& readiness, const net::TokenSigner& signer,
                     const std::filesystem::path& web_root) {
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/healthz", [](net::HttpRequest&, net::HttpResponder r) {
    r.Send(net::HttpResponse::Json(200, "{\"status\":\"ok\"}"));
  }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/readyz", [&readiness](net::HttpRequest&, net::HttpResponder r) {
    const bool ready = readiness.Ready();
    nlohmann::json services = nlohmann::json::array();
    for (const auto& e : readiness.Snapshot()) {
      services.push_back({{"name", e.name}, {"ready", e.ready}, {"detail", e.detail}});
    }
    r.Send(net::JsonResponse(ready ? 200 : 503, {{"ready", ready}, {"services", std::move(services)}}));
  }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/metrics", [](net::HttpRequest&, net::HttpResponder r) {
    net::HttpResponse res;
    res.content_type = "text/plain; version=0.0.4; charset=utf-8";
    res.body = DefaultMetrics().Render();
    r.Send(std::move(res));
  }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/auth/whoami", [&signer](net::HttpRequest& req, net::HttpResponder r) {
    auto token = req.Token(/*allow_query=*/true);
    if (!token) return r.SendStatus(Unauthenticated("missing bearer token"));
    auto claims = signer.Verify(*token, SystemClock::Instance());
    if (!claims.ok()) return r.SendStatus(claims.status());
    r.Send(net::JsonResponse(200, ClaimsJson(*claims)));
  }));
  std::error_code ec;
  if (std::filesystem::is_directory(web_root, ec)) {
    CHORUS_RETURN_IF_ERROR(router.Add("GET", "/{path...}", net::StaticFiles(web_root)));
  }
  return Status::Ok();
}

int WaitForShutdownSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

}  // namespace

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

int RunUp(const Config& config, const std::vector<std::string>& services) {
  auto wants = [&](std::string_view name) {
    return services.empty() || std::find(services.begin(), services.end(), name) != services.end();
  };
  // compute roles: "compute" is all four; "compute.resource" etc. one of them.
  auto wants_compute = [&](std::string_view role) {
    return wants("compute") || std::find(services.begin(), services.end(), "compute." + std::string(role)) !=
                                   services.end();
  };
  auto log = GetLogger("chorus");
  log->info("chorus {} starting", Version());

  auto secret = net::LoadOrCreateSecret(config.GetString("data_dir"));
  if (!secret.ok()) {
    log->error("{}", secret.status().ToString());
    return 1;
  }
  auto signer = net::TokenSigner::Create(std::move(*secret));
  if (!signer.ok()) {
    log->error("token secret: {}", signer.status().ToString());
    return 1;
  }

  net::Runtime::Options rt_options;
  rt_options.shards = static_cast<uint32_t>(config.GetInt("runtime.shards"));
  rt_options.pin_threads = config.GetBool("runtime.pin_threads");
  rt_options.seed = static_cast<uint64_t>(config.GetInt("runtime.seed"));
  auto runtime = net::Runtime::Create(rt_options);
  if (!runtime.ok()) {
    log->error("{}", runtime.status().ToString());
    return 1;
  }

  Readiness readiness;
  readiness.Set("core", false, "starting");
  net::Router router;
  if (Status st = AddCoreRoutes(router, readiness, *signer, WebRoot(config)); !st.ok()) {
    log->error("routes: {}", st.ToString());
    return 1;
  }

  // live: the store and the service; routes now, timers once the runtime runs.
  std::unique_ptr<live::LiveService> live_service;
  if (wants("live")) {
    auto live_options = live::OptionsFromConfig(config);
    if (!live_options.ok()) {
      log->error("{}", live_options.status().ToString());
      return 2;
    }
    auto store = live::MakePollStore(config, *live_options, **runtime);
    if (!store.ok()) {
      log->error("live store: {}", store.status().ToString());
      return store.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
    }
    auto created = live::LiveService::Create(**runtime, *signer, std::move(*live_options), std::move(*store));
    if (!created.ok()) {
      log->error("live: {}", created.status().ToString());
      return 2;
    }
    live_service = std::move(*created);
    if (Status st = live_service->AddRoutes(router); !st.ok()) {
      log->error("live routes: {}", st.ToString());
      return 1;
    }
  }

  // likes: the engine likes.engine selects (likes/engine.h), opened before serving.
  std::unique_ptr<likes::LikesService> likes_service;
  auto likes_bus = std::make_shared<likes::InProcessBus>();
  std::optional<likes::LikesEngine> likes_engine;
  if (wants("likes")) {
    auto likes_options = likes::OptionsFromConfig(config);
    if (!likes_options.ok()) {
      log->error("{}", likes_options.status().ToString());
      return 2;
    }
    auto engine = likes::OpenLikesEngine(config);
    if (!engine.ok()) {
      log->error("likes store: {}", engine.status().ToString());
      return 1;
    }
    likes_engine = std::move(*engine);
    auto store = likes_engine->store;
    auto created = likes::LikesService::Create(**runtime, *signer, std::move(*likes_options),
                                               std::move(store), likes_bus);
    if (!created.ok()) {
      log->error("likes: {}", created.status().ToString());
      return 2;
    }
    likes_service = std::move(*created);
    if (Status st = likes_service->AddRoutes(router); !st.ok()) {
      log->error("likes routes: {}", st.ToString());
      return 1;
    }
  }

  // `chorus likes job` (likes.engine=cluster): applies the stream to the database.
  std::optional<likes::LikesJobProcess> likes_job;
  if (std::find(services.begin(), services.end(), "likes.job") != services.end()) {
    auto job = likes::OpenLikesJob(config);
    if (!job.ok()) {
      log->error("likes job: {}", job.status().ToString());
      return job.status().code() == StatusCode::kFailedPrecondition ? 2 : 1;
    }
    likes_job = std::move(*job);
  }

  // compute gateway: routes now (503 until its router is attached, once gRPC listens).
  std::unique_ptr<compute::Gateway> gateway;
  if (wants_compute("gateway")) {
    gateway = std::make_unique<compute::Gateway>(*signer);
    if (Status st = gateway->AddRoutes(router); !st.ok()) {
      log->error("compute gateway routes: {}", st.ToString());
      return 1;
    }
  }

  auto http_address = net::ParseHostPort(config.GetString("http.listen"));
  if (!http_address.ok()) {
    log->error("http.listen: {}", http_address.status().message());
    return 2;
  }

  // The product's wiring between the services (wiring.h) and the demo page's routes.
  std::unique_ptr<PkDemo> pk_demo;
  std::unique_ptr<LikesToRoom> likes_to_room;
  if (live_service) {
    pk_demo = std::make_unique<PkDemo>(*live_service);
    live_service->SetRoomObserver([pk = pk_demo.get()](const live::Message& m, double v) { pk->Observe(m, v); });
    if (gateway && !config.GetString("grpc.listen").empty()) {
      live_service->SetChatModerator(ComputeModerator(*gateway));
    }
    if (likes_service) likes_to_room = std::make_unique<LikesToRoom>(*likes_bus, *live_service);
  }
  const bool loopback = IsLoopbackHost(http_address->first);
  if (Status st = AddDevRoutes(router, *signer, pk_demo.get(), loopback); !st.ok()) {
    log->error("dev routes: {}", st.ToString());
    return 1;
  }
  if (Status st = AddPageRoutes(router, WebRoot(config)); !st.ok()) {
    log->error("page routes: {}", st.ToString());
    return 1;
  }
  net::HttpServerOptions http_options;
  http_options.host = http_address->first;
  http_options.port = http_address->second;
  http_options.max_header_bytes = static_cast<size_t>(config.GetInt("http.max_header_bytes"));
  http_options.max_body_bytes = static_cast<size_t>(config.GetInt("http.max_body_bytes"));
  http_options.read_timeout = config.GetDuration("http.read_timeout");
  http_options.handler_timeout = config.GetDuration("http.handler_timeout");
  http_options.max_connections = static_cast<size_t>(config.GetInt("http.max_connections"));
  http_options.max_pipelined_requests = static_cast<size_t>(config.GetInt("http.max_pipelined_requests"));
  http_options.websocket_io_uring = config.GetBool("http.websocket_io_uring");

  (*runtime)->Start();
  if (live_service) live_service->Start();
  if (likes_service) {
    if (Status st = likes_service->Start(); !st.ok()) {
      log->error("likes: {}", st.ToString());
      (*runtime)->Stop();
      return 1;
    }
  }
  if (likes_job) likes_job->job->Start();
  auto http = net::HttpServer::Start(**runtime, router, http_options);
  if (!http.ok()) {
    log->error("{}", http.status().ToString());
    (*runtime)->Stop();
    return 1;
  }
  log->info("http listening on {}:{} with {} shards", http_options.host, (*http)->port(), (*runtime)->size());

  std::unique_ptr<grpc::Service> system_service = MakeSystemService(readiness);
  std::unique_ptr<grpc::Service> live_grpc;
  std::unique_ptr<grpc::Service> likes_grpc;
  std::unique_ptr<net::GrpcServer> grpc_server;
  std::unique_ptr<compute::ResourceServer> resource_server;
  std::unique_ptr<compute::NodeServer> node_server;
  std::unique_ptr<compute::Scheduler> scheduler;
  const bool any_compute = wants_compute("resource") || wants_compute("node") || wants_compute("scheduler") ||
                           wants_compute("gateway");
  const std::string& grpc_listen = config.GetString("grpc.listen");
  if (grpc_listen.empty() && any_compute) {
    if (!services.empty() && !wants("live") && !wants("likes")) {
      log->error("compute roles need grpc.listen");
      (*runtime)->Stop();
      return 2;
    }
    log->warn("grpc.listen is empty: compute is not started");
  }
  auto stop_compute = [&] {
    if (gateway) gateway->Stop();
    if (scheduler) scheduler->Stop();
    if (resource_server) resource_server->Stop();
    if (node_server) node_server->Stop();
  };
  if (!grpc_listen.empty()) {
    auto grpc_address = net::ParseHostPort(grpc_listen);
    if (!grpc_address.ok()) {
      log->error("grpc.listen: {}", grpc_address.status().message());
      (*runtime)->Stop();
      return 2;
    }
    std::vector<grpc::Service*> grpc_services = {system_service.get()};
    if (live_service) {
      live_grpc = live_service->MakeGrpcService();
      grpc_services.push_back(live_grpc.get());
    }
    if (likes_service) {
      likes_grpc = likes_service->MakeGrpcService();
      grpc_services.push_back(likes_grpc.get());
    }
    // compute: the services are registered now; their addresses are known once gRPC listens.
    // The pre-listen address is a placeholder for roles that do not need the port.
    const std::string planned = grpc_address->first + ":" + std::to_string(grpc_address->second);
    if (wants_compute("resource")) {
      auto o = compute::ResourceOptionsFromConfig(config, planned, *signer);
      if (o.ok() && grpc_address->second == 0 && config.GetString("compute.resource.id").empty()) {
        o->state.resource_id = "r-" + std::to_string(::getpid());  // the port is not known yet
        o->apps_file = (std::filesystem::path(config.GetString("data_dir")) / "compute" / "apps.pb").string();
      }
      auto created = o.ok() ? compute::ResourceServer::Create(std::move(*o), *signer, SystemClock::Instance())
                            : Result<std::unique_ptr<compute::ResourceServer>>(o.status());
      if (!created.ok()) {
        log->error("compute resource: {}", created.status().ToString());
        (*runtime)->Stop();
        return 2;
      }
      resource_server = std::move(*created);
      grpc_services.push_back(resource_server->service());
    }
    if (wants_compute("node")) {
      auto o = compute::NodeOptionsFromConfig(config, planned, *signer);
      auto created = o.ok() ? compute::NodeServer::Create(std::move(*o), *signer, SystemClock::Instance())
                            : Result<std::unique_ptr<compute::NodeServer>>(o.status());
      if (!created.ok()) {
        log->error("compute node: {}", created.status().ToString());
        (*runtime)->Stop();
        return 2;
      }
      node_server = std::move(*created);
      grpc_services.push_back(node_server->service());
    }
    auto started = net::GrpcServer::Start(grpc_listen, grpc_services);
    if (!started.ok()) {
      log->error("{}", started.status().ToString());
      (*runtime)->Stop();
      return 1;
    }
    grpc_server = std::move(*started);
    log->info("grpc listening on {}:{}", grpc_address->first, grpc_server->port());
    const std::string actual = grpc_address->first + ":" + std::to_string(grpc_server->port());
    if (resource_server) {
      resource_server->Start();
      log->info("compute resource server {} in cluster {}", resource_server->state().options().resource_id,
                resource_server->state().options().cluster);
      if (services.empty() && config.GetBool("compute.builtin_apps")) {
        for (const std::string& yaml : BuiltinAppSpecs(ModelsDir(config))) {
          if (auto app = resource_server->ApplyIfAbsent(yaml); !app.ok()) {
            log->error("compute built-in app: {}", app.status().ToString());
          }
        }
      }
    }
    if (node_server) {
      node_server->SetAddress(actual);
      // With no resource servers configured the node reports to this process (the embedded shape).
      if (config.GetStringList("compute.node.resources").empty()) node_server->SetResources({actual});
      node_server->Start();
      log->info("compute node {} ({} slots)", node_server->agent().options().node_id,
                node_server->agent().options().slots);
    }
    if (wants_compute("scheduler")) {
      auto o = compute::SchedulerOptionsFromConfig(config, actual, *signer);
      auto created = o.ok() ? compute::Scheduler::Create(std::move(*o), SystemClock::Instance())
                            : Result<std::unique_ptr<compute::Scheduler>>(o.status());
      if (!created.ok()) {
        log->error("compute scheduler: {}", created.status().ToString());
        stop_compute();
        grpc_server->Shutdown(Duration::zero());
        (*runtime)->Stop();
        return 2;
      }
      scheduler = std::move(*created);
      scheduler->Start();
      log->info("compute scheduler started");
    }
    if (gateway) {
      auto o = compute::GatewayOptionsFromConfig(config, actual, *signer);
      auto created = o.ok() ? compute::RouterClient::Create(std::move(*o), SystemClock::Instance())
                            : Result<std::unique_ptr<compute::RouterClient>>(o.status());
      if (!created.ok()) {
        log->error("compute gateway: {}", created.status().ToString());
        stop_compute();
        grpc_server->Shutdown(Duration::zero());
        (*runtime)->Stop();
        return 2;
      }
      (*created)->Start();
      gateway->Attach(std::move(*created));
      log->info("compute gateway routing with policy {}", config.GetString("compute.gateway.policy"));
    }
  }

  readiness.Set("core", true);
  if (live_service) {
    // Embedded: ready from here on. Cluster: follows the NATS connection (called at once, then on
    // every change).
    live_service->SetReadinessCallback([&readiness, store = config.GetString("live.store")](bool ready,
                                                                                             std::string detail) {
      readiness.Set("live", ready, "store=" + store + (detail.empty() ? "" : ", " + detail));
    });
  }
  // likes: the engine's health (cluster: queue and database modes), refreshed every second.
  std::function<likes::EngineHealth()> likes_health;
  std::string likes_ready_name = "likes";
  if (likes_service) likes_health = likes_engine->health;
  if (likes_job) {
    likes_health = likes_job->health;
    likes_ready_name = "likes.job";
  }
  if (likes_health) {
    auto update = [&readiness, likes_health, likes_ready_name] {
      const likes::EngineHealth h = likes_health();
      readiness.Set(likes_ready_name, h.ready, h.detail);
    };
    update();
    net::Runtime* rt = runtime->get();
    rt->Post(0, [rt, update] { rt->shard(0).RunEvery(std::chrono::seconds(1), update); });
  }
  if (resource_server || node_server || scheduler || (gateway && gateway->client())) {
    std::string roles;
    if (resource_server) roles += "resource ";
    if (node_server) roles += "node ";
    if (scheduler) roles += "scheduler ";
    if (gateway && gateway->client()) roles += "gateway";
    readiness.Set("compute", true, roles);
  }
  log->info("ready");  // after readiness flips: tests and scripts may wait for this line
  const int sig = WaitForShutdownSignal();
  log->info("received {}, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");

  readiness.SetShuttingDown();
  const Duration drain = config.GetDuration("shutdown.drain_timeout");
  // compute first, while everything still serves: the node announces draining, finishes its
  // requests and says goodbye (the seed's PreStop path); then the scheduler and resource server.
  if (node_server) node_server->Drain(drain);
  if (scheduler) scheduler->Stop();
  if (resource_server) resource_server->BeginShutdown();
  (*http)->BeginShutdown();
  // gRPC's Shutdown blocks while it drains: run it beside the HTTP drain, not before it, so the
  // whole stop takes at most one drain_timeout.
  std::thread grpc_drain([&grpc_server, drain] {
    if (grpc_server) grpc_server->Shutdown(drain);
  });
  const bool http_drained = (*http)->WaitDrained(drain);
  grpc_drain.join();
  if (!http_drained) {
    log->warn("{} connections still open after {}s; closing them", (*http)->connections(),
              std::chrono::duration_cast<std::chrono::seconds>(drain).count());
  }
  if (pk_demo) pk_demo->Stop();
  likes_to_room.reset();
  if (live_service) live_service->Stop();
  if (likes_service) likes_service->Stop();
  if (likes_job) likes_job->job->Stop();
  stop_compute();
  (*runtime)->Stop();
  http->reset();
  log->info("stopped");
  return 0;
}

}  // namespace chorus::app
