#include "base/logging.h"

#include "base/mutex.h"
#include "base/text.h"

#include <fmt/format.h>
#include <spdlog/common.h>
#include <spdlog/formatter.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/dist_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <chrono>
#include <ctime>
#include <map>
#include <optional>
#include <vector>

namespace chorus {
namespace {

enum class Format { kText, kJson };

constexpr std::string_view kDefaultLoggerName = "chorus";

std::optional<spdlog::level::level_enum> ParseLevel(std::string_view s) {
  std::string lower(s);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "trace") return spdlog::level::trace;
  if (lower == "debug") return spdlog::level::debug;
  if (lower == "info") return spdlog::level::info;
  if (lower == "warn") return spdlog::level::warn;
  if (lower == "error") return spdlog::level::err;
  if (lower == "critical") return spdlog::level::critical;
  if (lower == "off") return spdlog::level::off;
  return std::nullopt;
}

std::optional<Format> ParseFormat(std::string_view s) {
  if (s == "text") return Format::kText;
  if (s == "json") return Format::kJson;
  return std::nullopt;
}

std::string_view LevelName(spdlog::level::level_enum l) {
  switch (l) {
    case spdlog::level::trace: return "trace";
    case spdlog::level::debug: return "debug";
    case spdlog::level::info: return "info";
    case spdlog::level::warn: return "warn";
    case spdlog::level::err: return "error";
    case spdlog::level::critical: return "critical";
    default: return "off";
  }
}

void Append(spdlog::memory_buf_t& out, std::string_view s) { out.append(s.data(), s.data() + s.size()); }
void Append(spdlog::memory_buf_t& out, char c) { out.push_back(c); }


// Appends `s` so that it stays on one line: for JSON, as the inside of a JSON string (RFC 8259);
// for text, with control characters other than tab written as escapes. Malformed UTF-8 bytes
// become U+FFFD (a JSON parser rejects them; a terminal garbles them).
void AppendEscaped(spdlog::memory_buf_t& out, std::string_view s, Format format) {
  static constexpr char kHex[] = "0123456789abcdef";
  const bool json = format == Format::kJson;
  size_t i = 0;
  while (i < s.size()) {
    // Copy the longest run that needs no escaping in one append.
    size_t run = i;
    while (run < s.size()) {
      const auto c = static_cast<unsigned char>(s[run]);
      if (c >= 0x80) {
        const size_t n = Utf8SequenceLength(s, run);
        if (n == 0) break;
        run += n;
        continue;
      }
      if (c < 0x20 && !(c == '\t' && !json)) break;
      if (json && (c == '"' || c == '\\')) break;
      ++run;
    }
    Append(out, s.substr(i, run - i));
    i = run;
    if (i == s.size()) break;
    const auto c = static_cast<unsigned char>(s[i]);
    ++i;
    if (c >= 0x80) {
      Append(out, "\xEF\xBF\xBD");
    } else if (c == '"') {
      Append(out, "\\\"");
    } else if (c == '\\') {
      Append(out, "\\\\");
    } else if (c == '\n') {
      Append(out, "\\n");
    } else if (c == '\r') {
      Append(out, "\\r");
    } else if (c == '\t') {
      Append(out, "\\t");
    } else if (json) {
      Append(out, "\\u00");
      Append(out, kHex[c >> 4]);
      Append(out, kHex[c & 0xF]);
    } else {
      Append(out, "\\x");
      Append(out, kHex[c >> 4]);
      Append(out, kHex[c & 0xF]);
    }
  }
}

// Formats every event as one line in the configured format. A formatter instance belongs to one
// sink and is only called under that sink's mutex, so the timestamp cache needs no lock.
class LineFormatter final : public spdlog::formatter {
 public:
  explicit LineFormatter(Format format) : format_(format) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    const std::string_view logger(msg.logger_name.data(), msg.logger_name.size());
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    if (format_ == Format::kJson) {
      Append(dest, "{\"ts\":\"");
      AppendTimestamp(msg.time, dest);
      Append(dest, "\",\"level\":\"");
      Append(dest, LevelName(msg.level));
      Append(dest, "\",\"logger\":\"");
      AppendEscaped(dest, logger, format_);
      Append(dest, "\",\"msg\":\"");
      AppendEscaped(dest, payload, format_);
      Append(dest, "\"}\n");
    } else {
      AppendTimestamp(msg.time, dest);
      Append(dest, ' ');
      Append(dest, LevelName(msg.level));
      Append(dest, " [");
      AppendEscaped(dest, logger, format_);
      Append(dest, "] ");
      AppendEscaped(dest, payload, format_);
      Append(dest, '\n');
    }
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<LineFormatter>(format_);
  }

 private:
  // 2026-11-23T14:00:00.123Z; the part up to the seconds is cached per second.
  void AppendTimestamp(spdlog::log_clock::time_point tp, spdlog::memory_buf_t& dest) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(tp.time_since_epoch()).count();
    int64_t secs = ms / 1000;
    int64_t millis = ms % 1000;
    if (millis < 0) {
      millis += 1000;
      secs -= 1;
    }
    if (secs != cached_secs_) {
      const std::time_t t = static_cast<std::time_t>(secs);
      std::tm tm{};
      gmtime_r(&t, &tm);
      cached_len_ = std::strftime(cached_, sizeof(cached_), "%Y-%m-%dT%H:%M:%S", &tm);
      cached_secs_ = secs;
    }
    Append(dest, std::string_view(cached_, cached_len_));
    const char frac[5] = {'.', static_cast<char>('0' + millis / 100),
                          static_cast<char>('0' + millis / 10 % 10), static_cast<char>('0' + millis % 10),
                          'Z'};
    Append(dest, std::string_view(frac, sizeof(frac)));
  }

  const Format format_;
  int64_t cached_secs_ = INT64_MIN;
  char cached_[32] = {};
  size_t cached_len_ = 0;
};

std::shared_ptr<spdlog::sinks::sink> MakeStderrSink(Format format) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  sink->set_formatter(std::make_unique<LineFormatter>(format));
  return sink;
}

// The process-wide configuration. Every logger writes to `sink`, whose target InitLogging swaps
// (dist_sink::set_sinks takes the same mutex as writing), so loggers never need re-creating.
struct LoggingState {
  Mutex mu;
  const std::shared_ptr<spdlog::sinks::dist_sink_mt> sink = std::make_shared<spdlog::sinks::dist_sink_mt>(
      std::vector<spdlog::sink_ptr>{MakeStderrSink(Format::kText)});
  spdlog::level::level_enum level GUARDED_BY(mu) = spdlog::level::info;
  std::map<std::string, std::shared_ptr<spdlog::logger>, std::less<>> loggers GUARDED_BY(mu);

  std::shared_ptr<spdlog::logger> GetLocked(std::string_view component) REQUIRES(mu) {
    auto it = loggers.find(component);
    if (it != loggers.end()) return it->second;
    auto logger = std::make_shared<spdlog::logger>(std::string(component), sink);
    logger->set_level(level);
    logger->flush_on(spdlog::level::trace);
    loggers.emplace(std::string(component), logger);
    return logger;
  }
};

// Never destroyed: components may log from static destructors and other threads at exit.
LoggingState& State() {
  static LoggingState* const state = new LoggingState();
  return *state;
}

}  // namespace

Status InitLogging(const LogOptions& options) {
  const auto level = ParseLevel(options.level);
  if (!level) {
    return InvalidArgument(fmt::format(
        "log level '{}' is not one of trace, debug, info, warn, error, critical, off", options.level));
  }
  const auto format = ParseFormat(options.format);
  if (!format) {
    return InvalidArgument(fmt::format("log format '{}' is not one of text, json", options.format));
  }
  spdlog::sink_ptr target;
  if (options.file.empty()) {
    target = MakeStderrSink(*format);
  } else {
    try {  // spdlog reports open failures by exception; keep it inside this function
      target = std::make_shared<spdlog::sinks::basic_file_sink_mt>(options.file, /*truncate=*/false);
    } catch (const spdlog::spdlog_ex& e) {
      return InvalidArgument(fmt::format("log file '{}' cannot be opened: {}", options.file, e.what()));
    }
    target->set_formatter(std::make_unique<LineFormatter>(*format));
  }

  LoggingState& state = State();
  MutexLock lock(state.mu);
  state.sink->set_sinks({std::move(target)});
  state.level = *level;
  for (auto& [name, logger] : state.loggers) logger->set_level(*level);
  spdlog::set_default_logger(state.GetLocked(kDefaultLoggerName));
  return Status::Ok();
}

std::shared_ptr<spdlog::logger> GetLogger(std::string_view component) {
  LoggingState& state = State();
  MutexLock lock(state.mu);
  return state.GetLocked(component);
}

}  // namespace chorus
