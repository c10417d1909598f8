#include "report.h"

#include <unistd.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

namespace chorus::bench {
namespace {

nlohmann::json MeasurementJson(const Measurement& m) {
  nlohmann::json j{
      {"system", m.system}, {"throughput", std::round(m.throughput * 100) / 100},
      {"unit", m.unit},     {"duration_s", std::round(m.duration_s * 1000) / 1000},
      {"counts", m.counts},
  };
  if (!m.figures.empty()) {
    nlohmann::json figures = nlohmann::json::object();
    for (const auto& [key, value] : m.figures) figures[key] = std::round(value * 1e4) / 1e4;
    j["figures"] = std::move(figures);
  }
  if (m.latency) j["latency"] = m.latency->ToJson();
  return j;
}

std::string UtcStamp(WallTime when, const char* format) {
  const std::time_t t = std::chrono::system_clock::to_time_t(when);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  const size_t n = std::strftime(buf, sizeof buf, format, &tm);
  return std::string(buf, n);
}

std::string FormatThroughput(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, v >= 100 ? "%.0f" : "%.2f", v);
  return buf;
}

std::string Hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "";
  return buf;
}

}  // namespace

uint64_t Measurement::ErrorCount() const {
  uint64_t n = 0;
  for (const auto& [key, value] : counts) {
    if (key == "non_2xx" || key.find("error") != std::string::npos) n += value;
  }
  return n;
}

std::map<std::string, double> Report::Ratios() const {
  std::map<std::string, double> ratios;
  for (const Measurement& peer : peers) {
    if (peer.throughput <= 0) continue;
    ratios[subject.system + "/" + peer.system] = subject.throughput / peer.throughput;
  }
  return ratios;
}

nlohmann::json Report::ToJson(WallTime when) const {
  nlohmann::json j{
      {"name", name},
      {"timestamp", UtcStamp(when, "%Y-%m-%dT%H:%M:%SZ")},
      {"host", {{"cores", std::thread::hardware_concurrency()}, {"hostname", Hostname()}}},
      {"params", params},
      {"subject", MeasurementJson(subject)},
  };
  j["peers"] = nlohmann::json::array();
  for (const Measurement& peer : peers) j["peers"].push_back(MeasurementJson(peer));
  nlohmann::json ratios = nlohmann::json::object();
  for (const auto& [key, value] : Ratios()) ratios[key] = std::round(value * 1000) / 1000;
  j["ratios"] = std::move(ratios);
  return j;
}

std::string Report::Summary() const {
  std::string s = name + ": " + subject.system + " " + FormatThroughput(subject.throughput) + " " +
                  subject.unit;
  for (const Measurement& peer : peers) {
    s += ", " + peer.system + " " + FormatThroughput(peer.throughput) + " " + peer.unit;
    if (peer.throughput > 0) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.2fx", subject.throughput / peer.throughput);
      s += ", ratio ";
      s += buf;
    }
  }
  if (subject.latency && subject.latency->Count() > 0) {
    const LatencyHistogram& h = *subject.latency;
    s += "; p50 " + FormatMillis(h.Percentile(50)) + " p99 " + FormatMillis(h.Percentile(99)) +
         " p999 " + FormatMillis(h.Percentile(99.9));
  }
  for (const std::string& key : summary_figures) {
    auto it = subject.figures.find(key);
    if (it == subject.figures.end()) continue;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.4g", it->second);
    s += "; " + key + " " + buf;
  }
  uint64_t errors = subject.ErrorCount();
  for (const Measurement& peer : peers) errors += peer.ErrorCount();
  if (errors > 0) s += "; ERRORS " + std::to_string(errors);
  return s;
}

Result<std::string> WriteReport(const Report& report, std::string_view out_path,
                                std::string_view results_dir, const Clock& clock) {
  const WallTime now = clock.WallNow();
  std::filesystem::path path;
  if (!out_path.empty()) {
    path = std::filesystem::path(out_path);
  } else {
    path = std::filesystem::path(results_dir) /
           (report.name + "-" + UtcStamp(now, "%Y%m%dT%H%M%SZ") + ".json");
  }
  std::error_code ec;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), ec);
  if (ec) return Internal("cannot create " + path.parent_path().string() + ": " + ec.message());
  std::ofstream out(path, std::ios::trunc);
  if (!out) return Internal("cannot open " + path.string() + " for writing");
  out << report.ToJson(now).dump(2) << "\n";
  out.close();
  if (!out) return Internal("cannot write " + path.string());
  return path.string();
}

std::string DefaultResultsDir() {
  if (const char* env = std::getenv("BENCH_RESULTS_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
#ifdef CHORUS_BENCH_RESULTS_DIR
  return CHORUS_BENCH_RESULTS_DIR;
#else
  return "bench/results";
#endif
}

Result<std::chrono::nanoseconds> ParseDuration(std::string_view text) {
  const std::string original(text);
  size_t unit_pos = 0;
  while (unit_pos < text.size() &&
         (std::isdigit(static_cast<unsigned char>(text[unit_pos])) || text[unit_pos] == '.')) {
    ++unit_pos;
  }
  if (unit_pos == 0) return InvalidArgument("bad duration '" + original + "'");
  double value = 0;
  const auto [end, err] = std::from_chars(text.data(), text.data() + unit_pos, value);
  if (err != std::errc() || end != text.data() + unit_pos) {
    return InvalidArgument("bad duration '" + original + "'");
  }
  const std::string_view unit = text.substr(unit_pos);
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1e9;
  } else if (unit == "ms") {
    scale = 1e6;
  } else if (unit == "us") {
    scale = 1e3;
  } else if (unit == "ns") {
    scale = 1;
  } else if (unit == "m") {
    scale = 60e9;
  } else if (unit == "h") {
    scale = 3600e9;
  } else {
    return InvalidArgument("bad duration unit in '" + original + "' (use ns, us, ms, s, m, h)");
  }
  return std::chrono::nanoseconds(std::llround(value * scale));
}

std::string FormatMillis(int64_t nanos) {
  const double ms = static_cast<double>(nanos) / 1e6;
  const char* format = ms >= 100 ? "%.0fms" : ms >= 10 ? "%.1fms" : ms >= 1 ? "%.2fms" : "%.3fms";
  char buf[32];
  std::snprintf(buf, sizeof buf, format, ms);
  return buf;
}

}  // namespace chorus::bench
