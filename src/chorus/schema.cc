#include "chorus/app.h"
#include "compute/compute_config.h"
#include "likes/likes_service.h"
#include "live/live_service.h"

namespace chorus::app {

const ConfigSchema& Schema() {
  static const ConfigSchema* schema = [] {
    auto* s = new ConfigSchema();
    s->String("data_dir", "./data", "Directory for durable state and the token secret.")
        .String("http.listen", "127.0.0.1:8080", "HTTP/WebSocket listen address (host:port; port 0 picks one).")
        .Int("http.max_header_bytes", 16 * 1024, "Largest request header accepted (431 above).", 1024,
             1024 * 1024)
        .Int("http.max_body_bytes", 1024 * 1024, "Largest request body accepted (413 above).", 0,
             1024LL * 1024 * 1024)
        .Duration("http.read_timeout", "30s",
                  "A request, or the wait for the next one on a keep-alive connection, must arrive within it.")
        .Duration("http.handler_timeout", "30s", "A handler must answer within it (504 otherwise).")
        .Int("http.max_connections", 18000, "Open connections accepted before new ones are refused.", 1,
             1'000'000)
        .Int("http.max_pipelined_requests", 64,
             "HTTP/1.1 pipelining: requests of one connection received and not yet answered on the wire (the "
             "rest wait unread).",
             1, 4096)
        .Bool("http.websocket_io_uring", true,
              "Write a room's WebSocket fan-out as one io_uring submission per event-loop turn (false: one "
              "sendmsg per connection; also the fallback when the kernel refuses io_uring).")
        .String("http.web_root", "",
                "Directory served at / (empty: ./web if present, else the source tree's web/).")
        .String("grpc.listen", "127.0.0.1:9090", "gRPC listen address (host:port; port 0 picks one; empty disables).")
        .Int("runtime.shards", 0, "Shard threads (0 = one per CPU core).", 0, 1024)
        .Bool("runtime.pin_threads", true, "Pin shard i to CPU core i.")
        .Int("runtime.seed", 0, "Seed of the per-shard random generators (0 = from the clock).", 0)
        .Duration("shutdown.drain_timeout", "10s", "How long SIGTERM waits for in-flight requests.")
        .String("log.level", "info", "Log level.", {"trace", "debug", "info", "warn", "error", "critical", "off"})
        .String("log.format", "text", "Log line format.", {"text", "json"})
        .String("log.file", "", "Log file (empty = stderr).");
    live::AddConfigKeys(*s);
    likes::AddConfigKeys(*s);
    compute::AddConfigKeys(*s);
    return s;
  }();
  return *schema;
}

std::string_view Version() {
  static const std::string version = std::string(CHORUS_VERSION) + " (git " + CHORUS_GIT + ")";
  return version;
}

}  // namespace chorus::app
