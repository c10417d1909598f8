// chorus-bench: load generators and peer comparisons behind every number the docs quote.
//
// Each subcommand is one Setup function below: it declares its flags on the CLI11 subcommand it
// is given and returns the function that runs it. To add a subcommand, write `SetupFoo` and add
// one line to kCommands. Every subcommand reports through report.h (JSON file + summary line).
// Exit codes: 0 clean run, 1 the run completed but saw errors (or the report could not be
// written), 2 bad flags or the run could not start.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "net/process_tuning.h"
#include "compute_cluster.h"
#include "compute_lb.h"
#include "http_load.h"
#include "likes_load.h"
#include "likes_redis_peer.h"
#include "live_fanout.h"
#include "report.h"

namespace chorus::bench {
namespace {

using CommandMain = std::function<int()>;

// Flags every subcommand shares: where the report goes and what it is called.
struct ReportFlags {
  std::string name;
  std::string out;
  std::string results_dir = DefaultResultsDir();
  std::string system;

  void Add(CLI::App& cmd, std::string default_name, std::string default_system) {
    name = std::move(default_name);
    system = std::move(default_system);
    cmd.add_option("--name", name, "benchmark name used in the summary and the file name")
        ->capture_default_str();
    cmd.add_option("--system", system, "what is being measured (label in the report)")
        ->capture_default_str();
    cmd.add_option("--out", out, "write the JSON report to this file instead of the results dir");
    cmd.add_option("--results-dir", results_dir, "directory for <name>-<timestamp>.json")
        ->capture_default_str();
  }

  // Writes the report and prints the summary; returns the process exit code.
  int Emit(const Report& report) const {
    auto path = WriteReport(report, out, results_dir, SystemClock::Instance());
    std::printf("%s\n", report.Summary().c_str());
    std::fflush(stdout);  // keep the summary ahead of later stderr lines when both are redirected
    if (!path.ok()) {
      std::fprintf(stderr, "chorus-bench: %s\n", path.status().ToString().c_str());
      return 1;
    }
    std::fprintf(stderr, "chorus-bench: wrote %s\n", path->c_str());
    return 0;
  }
};

// Duration flags are strings ("10s", "500ms") checked when the command runs.
struct DurationFlag {
  std::string text;
  std::chrono::nanoseconds value{};

  bool Resolve(const char* flag) {
    auto parsed = ParseDuration(text);
    if (!parsed.ok()) {
      std::fprintf(stderr, "chorus-bench: %s: %s\n", flag, parsed.status().message().c_str());
      return false;
    }
    value = *parsed;
    return true;
  }
};

// chorus-bench http --url URL --connections N --duration 10s [--threads T] [--out FILE]
CommandMain SetupHttp(CLI::App& cmd) {
  struct Flags {
    HttpLoadOptions load;
    DurationFlag duration{"10s"};
    DurationFlag warmup{"0s"};
    DurationFlag timeout{"5s"};
    ReportFlags report;
  };
  auto flags = std::make_shared<Flags>();
  cmd.add_option("--url", flags->load.url, "http://host:port/path to GET")->required();
  cmd.add_option("-c,--connections", flags->load.connections, "keep-alive connections")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("-t,--threads", flags->load.threads, "load threads (each runs its own epoll loop)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("-d,--duration", flags->duration.text, "measured interval, e.g. 10s, 500ms")
      ->capture_default_str();
  cmd.add_option("--warmup", flags->warmup.text, "load applied before measuring starts")
      ->capture_default_str();
  cmd.add_option("--timeout", flags->timeout.text, "a request slower than this is an error")
      ->capture_default_str();
  flags->report.Add(cmd, "http", "target");

  return [flags]() -> int {
    if (!flags->duration.Resolve("--duration") || !flags->warmup.Resolve("--warmup") ||
        !flags->timeout.Resolve("--timeout")) {
      return 2;
    }
    flags->load.duration = flags->duration.value;
    flags->load.warmup = flags->warmup.value;
    flags->load.timeout = flags->timeout.value;
    auto result = RunHttpLoad(flags->load);
    if (!result.ok()) {
      std::fprintf(stderr, "chorus-bench http: %s\n", result.status().ToString().c_str());
      return 2;
    }
    Report report;
    report.name = flags->report.name;
    report.params = {
        {"url", flags->load.url},
        {"connections", std::to_string(flags->load.connections)},
        {"threads", std::to_string(flags->load.threads)},
        {"duration", flags->duration.text},
        {"warmup", flags->warmup.text},
        {"load_generator", "chorus-bench http"},
    };
    report.subject = result->ToMeasurement(flags->report.system);
    const int rc = flags->report.Emit(report);
    if (result->non_2xx > 0 || result->socket_errors() > 0) {
      std::fprintf(stderr,
                   "chorus-bench http: non-2xx %llu, socket errors: connect %llu, read %llu, "
                   "write %llu, timeout %llu, parse %llu\n",
                   static_cast<unsigned long long>(result->non_2xx),
                   static_cast<unsigned long long>(result->connect_errors),
                   static_cast<unsigned long long>(result->read_errors),
                   static_cast<unsigned long long>(result->write_errors),
                   static_cast<unsigned long long>(result->timeout_errors),
                   static_cast<unsigned long long>(result->parse_errors));
      return rc == 0 ? 1 : rc;  // reported, but not a clean run
    }
    return rc;
  };
}

std::string FormatRate(double rate) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", rate);
  return buf;
}

// chorus-bench live-clients: one subscriber process of live-fanout (spawned by it; speaks the
// ready/start/stop protocol of live_fanout.h on stdin/stdout).
CommandMain SetupLiveClients(CLI::App& cmd) {
  struct Flags {
    LiveClientsOptions clients;
    int port = 0;
    DurationFlag attempt_timeout{"15s"};
  };
  auto flags = std::make_shared<Flags>();
  cmd.add_option("--host", flags->clients.host, "server host")->capture_default_str();
  cmd.add_option("--port", flags->port, "server port")->required()->check(CLI::Range(1, 65535));
  cmd.add_option("--target", flags->clients.target, "WebSocket target, e.g. /v1/ws?format=json&token=T")
      ->required();
  cmd.add_option("--room", flags->clients.room, "room to subscribe to")->capture_default_str();
  cmd.add_option("-c,--connections", flags->clients.connections, "WebSocket connections")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--concurrency", flags->clients.concurrency, "connection attempts in flight")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--attempt-timeout", flags->attempt_timeout.text, "give one attempt this long")
      ->capture_default_str();
  cmd.add_option("--attempts", flags->clients.max_attempts, "attempts per connection")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--index", flags->clients.index, "process number (labels, seeds)")->capture_default_str();
  return [flags]() -> int {
    if (!flags->attempt_timeout.Resolve("--attempt-timeout")) return 2;
    flags->clients.port = static_cast<uint16_t>(flags->port);
    flags->clients.attempt_timeout = flags->attempt_timeout.value;
    return RunLiveClients(flags->clients, STDIN_FILENO, stdout);
  };
}

// chorus-bench live-fanout --url http://127.0.0.1:PORT --ws-target '/v1/ws?format=json&token=T'
//     --publish-token T --subscribers N --procs P --rate R --duration D --server-pid PID
CommandMain SetupLiveFanout(CLI::App& cmd) {
  struct Flags {
    LiveFanoutOptions fanout;
    DurationFlag duration{"20s"};
    DurationFlag warmup{"3s"};
    DurationFlag ready_timeout{"300s"};
    ReportFlags report;
  };
  auto flags = std::make_shared<Flags>();
  LiveFanoutOptions& f = flags->fanout;
  cmd.add_option("--url", f.url, "http://host:port of the live server")->required();
  cmd.add_option("--ws-target", f.ws_target,
                 "WebSocket target with query, e.g. /v1/ws?format=json&token=T (JSON frames only)")
      ->required();
  cmd.add_option("--publish-token", f.publish_token, "bearer token for publishing (live.publish)");
  cmd.add_option("--room", f.room, "the one room everybody is in")->capture_default_str();
  cmd.add_option("-n,--subscribers", f.subscribers, "WebSocket subscribers in all")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--procs", f.procs, "subscriber processes (at most ~19,900 sockets each)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--rate", f.rate, "published messages per second (mixed gift/pk/chat/notify)")
      ->capture_default_str();
  cmd.add_option("-d,--duration", flags->duration.text, "measured window")->capture_default_str();
  cmd.add_option("--warmup", flags->warmup.text, "publishing before the window opens")->capture_default_str();
  cmd.add_option("--ready-timeout", flags->ready_timeout.text, "time allowed to connect everybody")
      ->capture_default_str();
  cmd.add_option("--server-pid", f.server_pids,
                 "server process whose CPU time is measured; repeat (or comma-separate) for the nodes of a fleet, "
                 "summed (none or 0: not measured)")
      ->delimiter(',');
  cmd.add_option("--subscriber-url", f.subscriber_urls,
                 "http://host:port subscribers connect to instead of --url; repeat (or comma-separate) to spread "
                 "the subscriber processes round-robin over the nodes of a fleet (their /metrics are summed)")
      ->delimiter(',');
  cmd.add_option("--infra-pid", f.infra_pids,
                 "supporting server (nats-server, redis-server) whose CPU is reported apart (infra_cpu_s); "
                 "repeatable")
      ->delimiter(',');
  cmd.add_option("--seed", f.seed, "message mix seed")->capture_default_str();
  flags->report.Add(cmd, "live-fanout", "chorus");

  return [flags]() -> int {
    if (!flags->duration.Resolve("--duration") || !flags->warmup.Resolve("--warmup") ||
        !flags->ready_timeout.Resolve("--ready-timeout")) {
      return 2;
    }
    LiveFanoutOptions& f = flags->fanout;
    f.duration = flags->duration.value;
    f.warmup = flags->warmup.value;
    f.ready_timeout = flags->ready_timeout.value;
    char exe[4096];
    const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) {
      std::fprintf(stderr, "chorus-bench live-fanout: cannot find my own binary\n");
      return 2;
    }
    f.self_exe.assign(exe, static_cast<size_t>(len));
    auto result = RunLiveFanout(f);
    if (!result.ok()) {
      std::fprintf(stderr, "chorus-bench live-fanout: %s\n", result.status().ToString().c_str());
      return 2;
    }
    Report report;
    report.name = flags->report.name;
    report.params = {
        {"url", f.url},
        {"subscriber_urls", [&f] {
           std::string out;
           for (const std::string& u : f.subscriber_urls) out += (out.empty() ? "" : ",") + u;
           return out.empty() ? f.url : out;
         }()},
        {"room", f.room},
        {"subscribers", std::to_string(f.subscribers)},
        {"procs", std::to_string(f.procs)},
        {"rate", FormatRate(f.rate)},
        {"duration", flags->duration.text},
        {"warmup", flags->warmup.text},
        {"seed", std::to_string(f.seed)},
        {"load_generator", "chorus-bench live-fanout"},
    };
    report.subject = std::move(*result);
    report.subject.system = flags->report.system;
    report.summary_figures = {"server_cpu_s_per_million_deliveries", "server_cpu_pct"};
    const int rc = flags->report.Emit(report);
    return report.subject.ErrorCount() > 0 && rc == 0 ? 1 : rc;
  };
}

// chorus-bench likes --target chorus --url http://127.0.0.1:PORT --token T [--phases write,read,mixed]
//                    [--pipeline 1]
// chorus-bench likes --target redis --redis 127.0.0.1:PORT --pipeline 16 [...]
// One report per phase: <name>-<phase>; --out takes a "{phase}" placeholder when several run.
CommandMain SetupLikes(CLI::App& cmd) {
  struct Flags {
    LikesRunOptions run;
    std::string target = "chorus";
    std::vector<std::string> urls;
    std::string token;
    std::string redis = "127.0.0.1:6379";
    LikesRedisOptions redis_options;
    int pipeline = 1;  // chorus's; the redis target keeps redis_options.pipeline unless --pipeline is given
    std::string phases = "write,read,mixed";
    DurationFlag duration{"10s"};
    DurationFlag warmup{"2s"};
    DurationFlag timeout{"5s"};
    ReportFlags report;
  };
  auto flags = std::make_shared<Flags>();
  LikesWorkload& w = flags->run.workload;
  cmd.add_option("--target", flags->target, "chorus (the likes HTTP API) or redis (the Redis peer)")
      ->capture_default_str()
      ->check(CLI::IsMember({"chorus", "redis"}));
  cmd.add_option("--url", flags->urls,
                 "chorus: base URL, http://host:port; repeat it (or comma-separate) to spread the connections "
                 "round-robin over several nodes")
      ->delimiter(',');
  cmd.add_option("--token", flags->token, "chorus: bearer token (scopes likes.write,likes.read)");
  cmd.add_option("--redis", flags->redis, "redis: host:port")->capture_default_str();
  // Its default depends on the target (redis 16, chorus 1), so it is applied once the target is known.
  auto* pipeline = cmd.add_option("--pipeline", flags->pipeline,
                                  "operations in flight per connection (redis default 16, chorus default 1: "
                                  "HTTP/1.1 pipelining when > 1)")
                       ->check(CLI::PositiveNumber);
  cmd.add_flag("--redis-likers", flags->redis_options.likers,
               "redis: also keep entity:likers:{b}:{entity} (who liked it), as chorus does");
  auto* connections = cmd.add_option("-c,--connections", flags->run.connections,
                                     "connections (default 64 for chorus, 4 for redis)")
                          ->check(CLI::PositiveNumber);
  cmd.add_option("-t,--threads", flags->run.threads, "load threads (each its own epoll loop and user stripe)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--phases", flags->phases, "comma-separated, run in order: preload, write, read, mixed")
      ->capture_default_str();
  cmd.add_option("-d,--duration", flags->duration.text, "measured window of each timed phase")
      ->capture_default_str();
  cmd.add_option("--warmup", flags->warmup.text, "load before each timed phase's window")->capture_default_str();
  cmd.add_option("--timeout", flags->timeout.text, "an operation slower than this is an error")
      ->capture_default_str();
  cmd.add_option("--preload", flags->run.preload, "preload phase: like this many distinct (user, entity) pairs")
      ->capture_default_str();
  cmd.add_option("--preloaded", flags->run.preloaded,
                 "an earlier run preloaded this many pairs (same seed, users, entities): start from them liked")
      ->capture_default_str();
  cmd.add_option("--business", w.business, "business id")->capture_default_str();
  cmd.add_option("--entities", w.entities, "entities (Zipf ranks, scrambled)")->capture_default_str();
  cmd.add_option("--users", w.users, "users (uniform)")->capture_default_str();
  cmd.add_option("--owners", w.owners, "entity owners; 0: actions carry no owner")->capture_default_str();
  cmd.add_option("--theta", w.theta, "Zipf exponent, 0 < theta < 1")->capture_default_str();
  cmd.add_option("--write-batch", w.write_batch, "actions per write (1: POST /v1/likes, >1: /v1/likes/batch)")
      ->capture_default_str();
  cmd.add_option("--state-batch", w.state_batch, "entities per state read")->capture_default_str();
  cmd.add_option("--counts-batch", w.counts_batch, "entities per counts read")->capture_default_str();
  cmd.add_option("--reads-per-write", w.reads_per_write, "mixed: read operations per write operation")
      ->capture_default_str();
  cmd.add_option("--counts-share", w.counts_share, "mixed: share of reads that are counts reads")
      ->capture_default_str();
  cmd.add_option("--spike-share", w.spike_share, "mixed: share of operations aimed at one entity during the spike")
      ->capture_default_str();
  cmd.add_option("--spike-from", w.spike_from, "mixed: spike start, fraction of the window")->capture_default_str();
  cmd.add_option("--spike-to", w.spike_to, "mixed: spike end, fraction of the window")->capture_default_str();
  cmd.add_option("--seed", w.seed, "workload seed (preload pairs, draws, id scrambling)")->capture_default_str();
  flags->report.Add(cmd, "likes", "");

  return [flags, connections, pipeline]() -> int {
    if (!flags->duration.Resolve("--duration") || !flags->warmup.Resolve("--warmup") ||
        !flags->timeout.Resolve("--timeout")) {
      return 2;
    }
    LikesRunOptions& run = flags->run;
    run.duration = flags->duration.value;
    run.warmup = flags->warmup.value;
    run.timeout = flags->timeout.value;
    const bool redis = flags->target == "redis";
    if (connections->count() == 0) run.connections = redis ? 4 : 64;
    for (const std::string& name : CLI::detail::split(flags->phases, ',')) {
      auto phase = ParseLikesPhase(name);
      if (!phase.ok()) {
        std::fprintf(stderr, "chorus-bench likes: --phases: %s\n", phase.status().message().c_str());
        return 2;
      }
      run.phases.push_back(*phase);
    }
    if (run.phases.size() > 1 && !flags->report.out.empty() &&
        flags->report.out.find("{phase}") == std::string::npos) {
      std::fprintf(stderr, "chorus-bench likes: with several phases --out needs a {phase} placeholder\n");
      return 2;
    }
    std::string system = flags->report.system.empty() ? flags->target : flags->report.system;

    Result<std::unique_ptr<LikesDriver>> driver = InvalidArgument("no target");
    std::map<std::string, std::string> params = {
        {"target", flags->target},
        {"connections", std::to_string(run.connections)},
        {"threads", std::to_string(run.threads)},
        {"duration", flags->duration.text},
        {"warmup", flags->warmup.text},
        {"business", run.workload.business},
        {"entities", std::to_string(run.workload.entities)},
        {"users", std::to_string(run.workload.users)},
        {"owners", std::to_string(run.workload.owners)},
        {"theta", FormatRate(run.workload.theta)},
        {"write_batch", std::to_string(run.workload.write_batch)},
        {"state_batch", std::to_string(run.workload.state_batch)},
        {"counts_batch", std::to_string(run.workload.counts_batch)},
        {"reads_per_write", FormatRate(run.workload.reads_per_write)},
        {"counts_share", FormatRate(run.workload.counts_share)},
        {"spike_share", FormatRate(run.workload.spike_share)},
        {"spike_window", FormatRate(run.workload.spike_from) + "-" + FormatRate(run.workload.spike_to)},
        {"preload", std::to_string(run.preload)},
        {"preloaded", std::to_string(run.preloaded)},
        {"seed", std::to_string(run.workload.seed)},
        {"load_generator", "chorus-bench likes"},
    };
    if (redis) {
      if (Status st = ParseRedisAddress(flags->redis, &flags->redis_options); !st.ok()) {
        std::fprintf(stderr, "chorus-bench likes: %s\n", st.message().c_str());
        return 2;
      }
      if (pipeline->count() > 0) flags->redis_options.pipeline = flags->pipeline;
      driver = MakeLikesRedisDriver(flags->redis_options, run.workload);
      params["redis"] = flags->redis;
      params["pipeline"] = std::to_string(flags->redis_options.pipeline);
      params["redis_likers"] = flags->redis_options.likers ? "true" : "false";
    } else {
      if (flags->urls.empty()) {
        std::fprintf(stderr, "chorus-bench likes: --target chorus needs --url\n");
        return 2;
      }
      driver = MakeLikesHttpDriver(flags->urls, flags->token, run.workload, flags->pipeline);
      params["pipeline"] = std::to_string(flags->pipeline);
      std::string urls;
      for (const std::string& u : flags->urls) urls += (urls.empty() ? "" : ",") + u;
      params["url"] = urls;
      params["nodes"] = std::to_string(flags->urls.size());
    }
    if (!driver.ok()) {
      std::fprintf(stderr, "chorus-bench likes: %s\n", driver.status().ToString().c_str());
      return 2;
    }
    auto results = RunLikesPhases(run, **driver);
    if (!results.ok()) {
      std::fprintf(stderr, "chorus-bench likes: %s\n", results.status().ToString().c_str());
      return 2;
    }
    int rc = 0;
    for (const LikesPhaseResult& result : *results) {
      const std::string phase(LikesPhaseName(result.phase));
      Report report;
      report.name = flags->report.name + "-" + phase;
      report.params = params;
      report.params["phase"] = phase;
      report.subject = result.ToMeasurement(system);
      switch (result.phase) {
        case LikesPhase::kPreload:
        case LikesPhase::kWrite:
          report.summary_figures = {"write_p99_ms"};
          break;
        case LikesPhase::kRead:
          report.summary_figures = {"state_requests_per_s", "state_p99_ms", "state_liked_share"};
          break;
        case LikesPhase::kMixed:
          report.summary_figures = {"write_actions_per_s", "entity_states_per_s", "counts_entities_per_s",
                                    "write_p99_ms", "state_p99_ms", "counts_p99_ms", "spike_p99_ms",
                                    "steady_p99_ms"};
          break;
      }
      ReportFlags out = flags->report;
      if (const size_t at = out.out.find("{phase}"); at != std::string::npos) {
        out.out.replace(at, 7, phase);
      }
      const int emitted = out.Emit(report);
      if (emitted != 0) rc = emitted;
      if (report.subject.ErrorCount() > 0 && rc == 0) rc = 1;
    }
    return rc;
  };
}

// chorus-bench compute-cluster [--chorus-bin PATH] [--nodes 2000 --slots 8 --replicas 10000]
//     [--drains 20 --crashes 10 --schedulers 2]
CommandMain SetupComputeCluster(CLI::App& cmd) {
  struct Flags {
    ComputeClusterOptions cluster;
    DurationFlag placement_timeout{"120s"};
    ReportFlags report;
  };
  auto flags = std::make_shared<Flags>();
  ComputeClusterOptions& c = flags->cluster;
  cmd.add_option("--chorus-bin", c.chorus_bin,
                 "the chorus binary (default: src/chorus/chorus of the build tree chorus-bench is in)");
  cmd.add_option("--nodes", c.nodes, "simulated node identities")->capture_default_str();
  cmd.add_option("--slots", c.slots, "slots per simulated node")->capture_default_str();
  cmd.add_option("--node-cpu", c.node_cpu_millis, "CPU per simulated node, millicores")
      ->capture_default_str();
  cmd.add_option("--node-memory", c.node_memory_mb, "memory per simulated node, MiB")->capture_default_str();
  cmd.add_option("--replicas", c.replicas, "replicas of the app (cpu 10m, memory 1Mi each)")
      ->capture_default_str();
  cmd.add_option("--drains", c.drains, "nodes drained one after another")->capture_default_str();
  cmd.add_option("--crashes", c.crashes, "nodes killed one after another")->capture_default_str();
  cmd.add_option("--schedulers", c.schedulers, "1, or 2 (then a second placement round with two racing)")
      ->capture_default_str();
  cmd.add_option("--ramp", c.open_per_second,
                 "simulated nodes connecting per second at start (0: all at once)")
      ->capture_default_str();
  cmd.add_option("--nodes-per-connection", c.nodes_per_connection,
                 "simulated nodes whose heartbeat streams share one TCP connection")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd.add_option("--placement-timeout", flags->placement_timeout.text,
                 "give up on a placement round after this")
      ->capture_default_str();
  cmd.add_option("--seed", c.seed, "which nodes are drained and killed")->capture_default_str();
  cmd.add_option("--max-replicas-per-claim", c.max_replicas_per_claim,
                 "the schedulers' compute.scheduler.max_replicas_per_claim (0: chorus's default; 1: one "
                 "replica per claim)")
      ->capture_default_str()
      ->check(CLI::Range(0, 64));
  cmd.add_option("--work-dir", c.work_dir,
                 "data dir and logs here (default: a fresh /tmp/chorus-compute-cluster.*)");
  cmd.add_flag("--keep-work-dir", c.keep_work_dir, "keep the work dir (logs) after a clean run");
  flags->report.Add(cmd, "compute-cluster", "chorus");

  return [flags]() -> int {
    if (!flags->placement_timeout.Resolve("--placement-timeout")) return 2;
    ComputeClusterOptions& c = flags->cluster;
    c.placement_timeout = flags->placement_timeout.value;
    if (c.chorus_bin.empty()) {
      char exe[4096];
      const ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
      if (len > 0) {
        std::string self(exe, static_cast<size_t>(len));
        c.chorus_bin = self.substr(0, self.rfind('/')) + "/../src/chorus/chorus";
      }
    }
    if (Status st = c.Validate(); !st.ok()) {
      std::fprintf(stderr, "chorus-bench compute-cluster: %s\n", st.message().c_str());
      return 2;
    }
    auto result = RunComputeCluster(c);
    if (!result.ok()) {
      std::fprintf(stderr, "chorus-bench compute-cluster: %s\n", result.status().ToString().c_str());
      return 2;
    }
    std::printf("%s", result->table.c_str());
    Report report;
    report.name = flags->report.name;
    report.params = result->params;
    report.subject = std::move(result->subject);
    report.subject.system = flags->report.system;
    report.summary_figures = result->summary_figures;
    const int rc = flags->report.Emit(report);
    return report.subject.ErrorCount() > 0 && rc == 0 ? 1 : rc;
  };
}

// chorus-bench compute-lb [--nodes 24 --speeds 1,2,4 --cores 4] [--load 0.7 --work-ms 10]
//     [--slowdown-rate 1 --slowdown-factor 3-10 --slowdown-duration 2s-6s] [--duration 120s]
//     [--policies dynamic,static,p2c] [--time-scale 0]
CommandMain SetupComputeLb(CLI::App& cmd) {
  struct Flags {
    ComputeLbOptions lb;
    std::string speeds = "1,2,4";
    std::string cores = "4";
    std::string policies = "dynamic,static,p2c";
    std::string discipline = "ps";
    std::string slowdown_factor = "3-10";
    std::string slowdown_duration = "2s-6s";
    std::string in_flight_report = "instant";
    std::string weight_options;
    DurationFlag warmup{"15s"};
    DurationFlag duration{"120s"};
    DurationFlag drain{"30s"};
    DurationFlag heartbeat{"1s"};
    DurationFlag weight_interval{"3s"};
    DurationFlag util_window{"1s"};
    ReportFlags report;
  };
  auto flags = std::make_shared<Flags>();
  ComputeLbOptions& o = flags->lb;
  cmd.add_option("--nodes", o.nodes, "simulated nodes")->capture_default_str();
  cmd.add_option("--speeds", flags->speeds, "core speeds, node i gets the (i mod n)-th, e.g. 1,2,4")
      ->capture_default_str();
  cmd.add_option("--cores", flags->cores, "cores per node (advertised capacity), node i gets the (i mod n)-th")
      ->capture_default_str();
  cmd.add_option("--discipline", flags->discipline,
                 "ps: requests share the cores (processor sharing); fcfs: one request per core, the rest wait")
      ->capture_default_str()
      ->check(CLI::IsMember({"ps", "fcfs"}));
  cmd.add_option("--max-in-flight", o.max_in_flight,
                 "a node refuses more requests than this (RESOURCE_EXHAUSTED, retried elsewhere); 0: no limit")
      ->capture_default_str();
  cmd.add_option("--load", o.load, "offered load, fraction of the fleet's nominal capacity")->capture_default_str();
  cmd.add_option("--work-ms", o.work_ms, "mean work per request, ms of one core at 1x")->capture_default_str();
  cmd.add_option("--work-cv", o.work_cv, "coefficient of variation of the work (gamma; 0 constant, 1 exponential)")
      ->capture_default_str();
  cmd.add_option("--slowdown-rate", o.slowdown_rate, "slowdown episodes per node per minute (0: none)")
      ->capture_default_str();
  cmd.add_option("--slowdown-factor", flags->slowdown_factor, "speed divided by a factor uniform in A-B (or N)")
      ->capture_default_str();
  cmd.add_option("--slowdown-duration", flags->slowdown_duration, "episode length uniform in A-B, e.g. 2s-6s")
      ->capture_default_str();
  cmd.add_option("--warmup", flags->warmup.text, "model time before the measured window")->capture_default_str();
  cmd.add_option("-d,--duration", flags->duration.text, "measured window (model time) per policy")
      ->capture_default_str();
  cmd.add_option("--drain", flags->drain.text, "after the window, wait this long for measured requests")
      ->capture_default_str();
  cmd.add_option("--heartbeat", flags->heartbeat.text, "node report interval")->capture_default_str();
  cmd.add_option("--weight-interval", flags->weight_interval.text, "Router::RecomputeWeights() interval")
      ->capture_default_str();
  cmd.add_option("--util-window", flags->util_window.text, "window of the utilization-spread samples")
      ->capture_default_str();
  cmd.add_option("--in-flight-report", flags->in_flight_report,
                 "in_flight in node reports: instant (at the heartbeat, as the agent does) or average (over the interval)")
      ->capture_default_str()
      ->check(CLI::IsMember({"instant", "average"}));
  cmd.add_option("--weight-options", flags->weight_options,
                 "compute::WeightOptions overrides for the dynamic weights, e.g. min_headroom=0.1,max_share=0.5");
  cmd.add_option("--time-scale", o.time_scale,
                 "0: virtual time (fast, reproducible); S > 0: wall clock, S model seconds per second")
      ->capture_default_str();
  cmd.add_option("--seed", o.seed, "nodes' slowdowns, arrivals and work")->capture_default_str();
  cmd.add_option("--policies", flags->policies,
                 "run in this order: dynamic, static, p2c (also p2c-dynamic, static-dynamic)")
      ->capture_default_str();
  cmd.add_flag("-v,--verbose", o.verbose,
               "weights and reports by node class at every recomputation (stderr); twice: every node too");
  flags->report.Add(cmd, "compute-lb", "dynamic");

  return [flags]() -> int {
    Flags& f = *flags;
    ComputeLbOptions& o = f.lb;
    if (!f.warmup.Resolve("--warmup") || !f.duration.Resolve("--duration") || !f.drain.Resolve("--drain") ||
        !f.heartbeat.Resolve("--heartbeat") || !f.weight_interval.Resolve("--weight-interval") ||
        !f.util_window.Resolve("--util-window")) {
      return 2;
    }
    o.warmup = f.warmup.value;
    o.duration = f.duration.value;
    o.drain = f.drain.value;
    o.heartbeat = f.heartbeat.value;
    o.weight_interval = f.weight_interval.value;
    o.util_window = f.util_window.value;
    o.discipline = f.discipline == "fcfs" ? LbNodeModel::Discipline::kFcfs : LbNodeModel::Discipline::kProcessorSharing;
    o.report_average_in_flight = f.in_flight_report == "average";
    auto fail = [](const std::string& message) {
      std::fprintf(stderr, "chorus-bench compute-lb: %s\n", message.c_str());
      return 2;
    };
    o.speeds.clear();
    for (const std::string& s : CLI::detail::split(f.speeds, ',')) {
      auto v = ParseNumberRange(s);
      if (!v.ok() || v->first != v->second) return fail("--speeds: \"" + f.speeds + "\": positive numbers");
      o.speeds.push_back(v->first);
    }
    o.cores.clear();
    for (const std::string& s : CLI::detail::split(f.cores, ',')) {
      auto v = ParseNumberRange(s);
      if (!v.ok() || v->first != v->second || v->first != static_cast<int>(v->first)) {
        return fail("--cores: \"" + f.cores + "\": positive integers");
      }
      o.cores.push_back(static_cast<int>(v->first));
    }
    o.policies = CLI::detail::split(f.policies, ',');
    auto factor = ParseNumberRange(f.slowdown_factor);
    if (!factor.ok()) return fail("--slowdown-factor: " + factor.status().message());
    o.slowdown_factor_min = factor->first;
    o.slowdown_factor_max = factor->second;
    const size_t dash = f.slowdown_duration.find('-');
    DurationFlag lo{f.slowdown_duration.substr(0, dash)};
    DurationFlag hi{dash == std::string::npos ? lo.text : f.slowdown_duration.substr(dash + 1)};
    if (!lo.Resolve("--slowdown-duration") || !hi.Resolve("--slowdown-duration")) return 2;
    o.slowdown_min = lo.value;
    o.slowdown_max = hi.value;
    if (Status st = ParseWeightOptions(f.weight_options, &o.weights); !st.ok()) {
      return fail("--weight-options: " + st.message());
    }
    if (Status st = o.Validate(); !st.ok()) return fail(st.message());

    auto result = RunComputeLb(o);
    if (!result.ok()) return fail(result.status().ToString());
    std::printf("%s", result->table.c_str());
    Report report;
    report.name = f.report.name;
    report.params = result->params;
    report.subject = std::move(result->subject);
    report.peers = std::move(result->peers);
    report.summary_figures = result->summary_figures;
    return f.report.Emit(report);
  };
}

struct Command {
  const char* name;
  const char* help;
  CommandMain (*setup)(CLI::App& cmd);
};

constexpr Command kCommands[] = {
    {"http", "HTTP/1.1 keep-alive GET load (closed loop, epoll, latency histogram)", SetupHttp},
    {"live-fanout", "one room, N WebSocket subscribers, steady publisher: deliveries/s, server CPU, latency",
     SetupLiveFanout},
    {"live-clients", "internal: one subscriber process of live-fanout", SetupLiveClients},
    {"likes", "likes workload (Zipf, 20:1 reads, spike) against chorus or the Redis peer", SetupLikes},
    {"compute-cluster",
     "compute control plane: real resource servers and schedulers against thousands of simulated nodes",
     SetupComputeCluster},
    {"compute-lb",
     "compute router policies (dynamic SWRR, static SWRR, P2C) on simulated heterogeneous, slowing nodes",
     SetupComputeLb},
};

}  // namespace
}  // namespace chorus::bench

int main(int argc, char** argv) {
  using namespace chorus::bench;
  chorus::net::TuneProcess();
  CLI::App app{"chorus-bench: Chorus load generators and peer comparisons (see bench/README.md)",
               "chorus-bench"};
  app.require_subcommand(1);
  std::map<CLI::App*, CommandMain> mains;
  for (const Command& command : kCommands) {
    CLI::App* sub = app.add_subcommand(command.name, command.help);
    mains[sub] = command.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help is a success
  }
  for (auto& [sub, run] : mains) {
    if (sub->parsed()) return run();
  }
  return 2;
}
