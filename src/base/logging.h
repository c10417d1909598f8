// Logging: spdlog loggers per component, one process-wide configuration.
//
//   CHORUS_RETURN_IF_ERROR(InitLogging({.level = "info", .format = "json", .file = ""}));
//   GetLogger("http")->info("listening on {}", addr);
//
// Output is one line per event:
//   text: 2026-11-23T14:00:00.123Z info [http] listening on 0.0.0.0:8080
//   json: {"ts":"2026-11-23T14:00:00.123Z","level":"info","logger":"http","msg":"listening on ..."}
// Timestamps are UTC wall-clock time with milliseconds. Level names are trace, debug, info,
// warn, error, critical. Messages are escaped so one event stays one line and every JSON line
// parses: in JSON, quotes, backslashes and control characters are escaped; in text, control
// characters other than tab become \n, \r, \xNN. Valid UTF-8 passes through; malformed bytes
// become U+FFFD.
//
// Thread rules: InitLogging and GetLogger may be called from any thread at any time. Every
// logger shares one sink; InitLogging swaps what is behind it (stderr or a file) and updates
// the level of every existing logger atomically, so loggers cached before InitLogging follow the
// new configuration. Logging a message takes the sink's mutex; a message below the level costs
// one atomic load. Lines are flushed as they are written, so a crash loses nothing.
//
// Before InitLogging is called, logging goes to stderr, text format, level info.
#pragma once

#include <spdlog/logger.h>

#include <memory>
#include <string>
#include <string_view>

#include "base/status.h"

namespace chorus {

struct LogOptions {
  std::string level = "info";   // trace|debug|info|warn|error|critical|off (any case)
  std::string format = "text";  // text|json
  std::string file;             // empty = stderr; otherwise appended to (created if missing)
};

// Validates `options` and applies them; on error (kInvalidArgument naming the bad value, or the
// file that cannot be opened) the previous configuration stays in force. Also makes the
// "chorus" logger spdlog's default logger, so spdlog::info(...) follows the configuration.
Status InitLogging(const LogOptions& options);

// The logger for `component` (shown as [component] / "logger"), created on first use and
// returned again afterwards. Cache it in components that log often.
std::shared_ptr<spdlog::logger> GetLogger(std::string_view component);

}  // namespace chorus
