// App spec: what an operator asks compute to run, parsed from YAML and validated.
//
// An app spec names an app, the resources one replica needs, how many replicas to run (a fixed
// count, or a min/max range the scheduler autoscales within) and the engine a worker runs. It
// reaches us from `chorus compute apply` through ApplyApp, so it is untrusted input: every field
// is checked, unknown keys are errors (a typo must not silently fall back to a default), and
// every error is kInvalidArgument whose message starts with the offending field, e.g.
//   resources.cpu: "abc" is not a CPU amount (use 500m or 0.5)
// Nothing here throws (yaml-cpp exceptions are caught inside) and nothing here asserts on input.
//
//   name: ocr-detect
//   resources: {cpu: 500m, memory: 256Mi, gpu: 0, card_types: [T4, A10]}
//   replicas: 4              # or min_replicas + max_replicas [+ target_utilization, default 0.7]
//   max_concurrency: 4       # default 1
//   engine: {type: synthetic, cpu_ms: 5, latency_ms: 20}  # or {type: exec, command: /x, args: [a]}
//   model: ocr/detect@v3     # optional
//   pools: [cpu-large]       # optional
//   clusters: [east]         # optional
//
// Integer and number fields must be unquoted YAML numbers (`replicas: "4"` is an error); cpu and
// memory may also be strings with units. Pure functions; safe from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace chorus::compute {

// Bounds of a valid spec. Lists and strings are bounded so that a spec, even one that uses YAML
// aliases to repeat a node, stays small once parsed.
inline constexpr size_t kMaxAppSpecBytes = size_t{1} << 20;          // YAML text
inline constexpr int64_t kMaxCpuMillis = int64_t{1'000'000} * 1000;  // 1,000,000 cores
inline constexpr int64_t kMaxMemoryMb = int64_t{64} * 1024 * 1024;   // 64 TiB
inline constexpr int32_t kMaxGpus = 64;
inline constexpr int32_t kMaxReplicas = 100'000;
inline constexpr int32_t kMaxConcurrency = 10'000;
inline constexpr int32_t kMaxReplicasPerClaim = 64;  // replica_id + more_replica_ids of one claim
inline constexpr double kMaxSyntheticMs = 600'000;  // cpu_ms and latency_ms
inline constexpr double kDefaultTargetUtilization = 0.7;
inline constexpr size_t kMaxModelBytes = 256;
inline constexpr size_t kMaxCommandBytes = 4096;  // engine.command and each engine.args entry
inline constexpr size_t kMaxArgs = 256;
inline constexpr size_t kMaxNameListEntries = 256;  // pools, clusters, card_types

struct ResourceRequest {
  int64_t cpu_millis = 0;
  int64_t memory_mb = 0;  // MiB
  int32_t gpus = 0;
  std::vector<std::string> card_types;  // accepted GPU card types; empty = any (only with gpus > 0)
};

// The engines `chorus compute worker` runs itself (compute/engine.h), besides synthetic.
inline constexpr std::string_view kBuiltinEngines[] = {"ocr", "ocr-detect", "ocr-recognize", "moderation"};
bool IsBuiltinEngine(std::string_view engine);
inline constexpr size_t kMaxEngineOptions = 64;
inline constexpr size_t kMaxEngineOptionBytes = 4096;

struct EngineConfig {
  std::string engine;             // "exec" | "synthetic" | a built-in engine
  std::string command;            // exec: absolute path of the worker program
  std::vector<std::string> args;  // exec: its arguments
  double cpu_ms = 0;              // synthetic: CPU burnt per request
  double latency_ms = 0;          // synthetic: added latency per request
  std::map<std::string, std::string> options;  // built-in engines: their options (key = [a-z0-9_]+)
};

struct AppSpec {
  std::string name;
  ResourceRequest resources;
  int32_t replicas = 0;      // fixed form; 0 when autoscaled
  int32_t min_replicas = 0;  // autoscaled form (max_replicas > 0)
  int32_t max_replicas = 0;
  double target_utilization = 0;  // autoscaled form only; ParseAppSpec defaults it to 0.7
  int32_t max_concurrency = 1;
  EngineConfig engine;
  std::string model;                  // free text passed to workers as CHORUS_MODEL; may be empty
  std::vector<std::string> pools;     // allowed node pools; empty = any
  std::vector<std::string> clusters;  // allowed clusters; empty = any

  bool autoscaled() const { return max_replicas > 0; }
};

// Parses one YAML document and validates it (ValidateAppSpec). Errors: a YAML syntax error (the
// message carries the line), an empty document ("empty app spec"), more than one document, a
// top level that is not a mapping, unknown or duplicate keys, wrong types, and every rule of
// ValidateAppSpec.
[[nodiscard]] Result<AppSpec> ParseAppSpec(std::string_view yaml);

// Checks a spec built in code (or parsed) against the rules above: valid names, cpu in
// (0, 1,000,000 cores], memory in (0, 64 TiB], gpus 0..64, card_types only with gpus > 0, either
// replicas 1..100000 or 0 <= min_replicas <= max_replicas, 1 <= max_replicas <= 100000 with
// target_utilization in (0, 1], max_concurrency 1..10000, engine exec (absolute command, no
// synthetic fields) or synthetic (no command/args, cpu_ms/latency_ms in [0, 600000]), model at
// most 256 bytes of UTF-8 without control characters, pools/clusters valid and distinct.
[[nodiscard]] Status ValidateAppSpec(const AppSpec& spec);

// "500m" -> 500, "2" -> 2000, "0.5" -> 500, "1.5" -> 1500. Cores may carry at most three
// decimals (a millicore is the unit); no sign, no exponent, no spaces. Does not range-check
// beyond what fits in int64 ("0" parses to 0; ValidateAppSpec rejects it).
[[nodiscard]] Result<int64_t> ParseCpuMillis(std::string_view text);

// Memory in MiB from a whole number with an optional unit: "256Mi" -> 256, "1Gi" -> 1024,
// "1Ti" -> 1048576, a plain "512" -> 512 (MiB). The decimal units M (10^6 bytes) and G (10^9
// bytes) are converted to bytes and rounded up to whole MiB: "1M" -> 1, "2G" -> 1908. Nothing
// else (no fractions, no Ki/K, no lower case, no sign).
[[nodiscard]] Result<int64_t> ParseMemoryMb(std::string_view text);

// How a value from untrusted input appears in an error: quoted, control bytes escaped so the
// message stays one printable line, cut after 64 bytes.
std::string QuoteForError(std::string_view s);

// [A-Za-z0-9_.-]{1,64}: app names, pool and cluster names, GPU card types.
bool IsValidName(std::string_view s);

}  // namespace chorus::compute
