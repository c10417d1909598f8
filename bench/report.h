// Report: the result of one benchmark run, in the one shape every bench command writes.
//
// A report names the benchmark ("http-json"), records the parameters it ran with, and holds the
// measurement of the subject (usually chorus) plus optional measurements of peers measured the
// same way (nginx, redis, ...). Ratios subject/peer are derived from throughput, so a report
// cannot disagree with itself. Results go to `bench/results/<name>-<UTC timestamp>.json` (or an
// explicit path) and a one-line summary goes to stdout, e.g.
//
//   http-json: chorus 123456 req/s, nginx 100000 req/s, ratio 1.23x; p50 0.210ms p99 1.10ms
//   p999 3.40ms
//
// JSON schema (bench/README.md explains how to read it):
//   {"name", "timestamp", "host": {"cores", "hostname"}, "params": {string: string},
//    "subject": Measurement, "peers": [Measurement], "ratios": {"<subject>/<peer>": number}}
//   Measurement = {"system", "throughput", "unit", "duration_s", "counts": {string: integer},
//                  "figures": {string: number} | absent, "latency": LatencyHistogram::ToJson() | absent}
//
// Plain data, no threads. Shell scripts that cannot link this (http_vs_nginx.sh) write the same
// schema by hand; keep them in step when changing it.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "latency_histogram.h"

namespace chorus::bench {

// What was measured on one system.
struct Measurement {
  std::string system;          // "chorus", "nginx", ...
  double throughput = 0;       // operations per second over `duration`
  std::string unit = "req/s";  // "req/s", "msg/s", ...
  double duration_s = 0;       // measured interval, seconds
  // Totals and error counts, e.g. "requests", "non_2xx", "socket_errors". Errors are counted, never
  // hidden: a run with errors is still reported, and the summary says so.
  std::map<std::string, uint64_t> counts;
  // Derived non-integer figures, e.g. "server_cpu_s_per_million_deliveries" (written only when
  // non-empty).
  std::map<std::string, double> figures;
  std::optional<LatencyHistogram> latency;

  // Sum of the counts whose name marks an error ("non_2xx", "*error*").
  uint64_t ErrorCount() const;
};

struct Report {
  std::string name;
  std::map<std::string, std::string> params;
  Measurement subject;
  std::vector<Measurement> peers;
  // Names of subject figures the summary line shows after the latency, as "; name value".
  std::vector<std::string> summary_figures;

  // subject.throughput / peer.throughput, keyed "<subject>/<peer>"; peers with zero throughput
  // are left out.
  std::map<std::string, double> Ratios() const;

  nlohmann::json ToJson(WallTime when) const;
  // One line, no trailing newline (see the header comment for the shape).
  std::string Summary() const;
};

// Writes report.ToJson(now) to `out_path` if non-empty, else to
// `<results_dir>/<name>-<YYYYmmddTHHMMSSZ>.json`, creating directories as needed.
// Returns the path written.
Result<std::string> WriteReport(const Report& report, std::string_view out_path,
                                std::string_view results_dir, const Clock& clock);

// Where reports go when no --out is given: $BENCH_RESULTS_DIR, else the source tree's
// bench/results (baked in at build time), else ./bench/results.
std::string DefaultResultsDir();

// "10s", "500ms", "2m", "250us", "1.5s"; a bare number is seconds.
Result<std::chrono::nanoseconds> ParseDuration(std::string_view text);

// Latency in milliseconds with three significant digits: "0.210ms", "1.10ms", "12.3ms", "456ms".
std::string FormatMillis(int64_t nanos);

}  // namespace chorus::bench
