// The live.* configuration keys and their translation into LiveOptions.
#include <nlohmann/json.hpp>

#include "base/duration.h"
#include "live/live_service.h"

namespace chorus::live {
namespace {

Result<int64_t> ParseMs(const nlohmann::json& v, const std::string& key) {
  if (!v.is_string()) return InvalidArgument(key + " must be a duration string such as \"3s\"");
  auto d = ParseDuration(v.get<std::string>());
  if (!d.ok()) return InvalidArgument(key + ": " + d.status().message());
  const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(*d).count();
  if (ms <= 0) return InvalidArgument(key + " must be at least 1ms");
  return ms;
}

}  // namespace

void AddConfigKeys(ConfigSchema& s) {
  s.Duration("live.block_interval", "1s", "How often each room emits a block (per-room: live.rooms).")
      .Int("live.block_max", 20, "Most messages in one block.", 1, 1000)
      .Int("live.pending_max", 2000, "Most pending messages per room; beyond it the lowest-priority oldest go.", 1,
           1'000'000)
      .Int("live.carry_max", 20, "Most unsent high-priority messages carried into the next block.", 0, 1'000'000)
      .Int("live.carry_min_priority", 500, "Messages at or above this priority may be carried over.", 0, 1000)
      .Tree("live.max_age", R"({"gift":"10s","pk":"5s","chat":"3s","notify":"5s","default":"5s"})",
            "Age after which a pending message is dropped, per type (\"default\" for other types).")
      .Tree("live.rooms", "{}",
            "Per-room overrides: {room: {block_interval: \"500ms\", block_max: 50}}.")
      .Tree("live.priority", "{}",
            "Priority rules: {types: {gift: 600, pk: 500, chat: 200, notify: 100}, default: 150, gift_step: 10, "
            "gift_bonus_max: 99, level_bonus_max: 99}.")
      .Int("live.node_id", 0, "This process's id in message ids (distinct per process in a cluster).", 0, 1023)
      .Int("live.max_payload_bytes", 4096, "Largest message payload (JSON bytes).", 2, 1 << 20)
      .Int("live.max_batch", 100, "Most messages in one publish request.", 1, 10'000)
      .Int("live.shard_size", 512, "Members per membership shard.", 1, 1'000'000)
      .Int("live.max_rooms_per_connection", 8, "Rooms one WebSocket connection may be in at once.", 1, 1024)
      .Int("live.max_frame_bytes", 4096, "Largest client frame (closed with 1009 above).", 64, 1 << 20)
      .Int("live.outbound_queue_bytes", 1 << 20,
           "Per-connection outbound queue; when full the oldest queued blocks are dropped.", 4096, 1LL << 30)
      .Duration("live.slow_client_grace", "5s", "A connection over its queue limit this long is closed (1008).")
      .Duration("live.idle_timeout", "60s", "A connection silent this long is closed; the server pings at half.")
      .Duration("live.heartbeat", "25s", "The app-level ping period advised to clients in `welcome`.")
      .Int("live.poll.limit_default", 15, "Messages per poll when the client gives no limit.", 1, 1000)
      .Int("live.poll.limit_max", 50, "Most messages per poll.", 1, 1000)
      .Int("live.poll.small_below", 100, "Rooms with fewer viewers poll every live.poll.ms_small.", 0)
      .Int("live.poll.medium_below", 1000, "Rooms with fewer viewers poll every live.poll.ms_medium.", 0)
      .Int("live.poll.ms_small", 1500, "Poll period advised for small rooms (ms).", 100, 600'000)
      .Int("live.poll.ms_medium", 2000, "Poll period advised for medium rooms (ms).", 100, 600'000)
      .Int("live.poll.ms_large", 2500, "Poll period advised for large rooms (ms).", 100, 600'000)
      .Bool("live.poll.requires_token", false, "Require a token to poll (otherwise a given token is checked).")
      .String("live.public_ws_url", "", "WebSocket URL advertised by /v1/connect (empty: from the Host header).")
      .Int("live.max_ws_connections", 0, "Above this many live WebSockets, /v1/connect advises polling (0 = no limit).",
           0)
      .String("live.store", "memory", "Poll store engine.", {"memory", "redis"})
      .String("live.redis.address", "127.0.0.1:6379", "Redis for live.store=redis (host:port).")
      .Int("live.retention.max_per_type", 500, "Messages kept per room and type for polling.", 1, 1'000'000)
      .Duration("live.retention.max_age", "60s", "How long messages stay pollable.")
      .Duration("live.idle_room_ttl", "60s", "An empty room with nothing pending is forgotten after this.")
      .Int("live.chat.max_bytes", 500, "Longest viewer chat text (UTF-8 bytes).", 1, 65536)
      .Int("live.chat.per_minute", 30, "Viewer chat messages each user may send per minute.", 1, 1'000'000)
      .Int("live.chat.burst", 5, "Viewer chat messages a user may send at once before the rate applies.", 1,
           1'000'000)
      .Int("live.chat.level", 0, "Sender level of viewer chat when the user token carries none.", 0, 1000)
      .Bool("live.cluster.enabled", false,
            "Serve rooms together with other `chorus live` nodes over NATS (docs/scale-out.md); needs "
            "live.store=redis and a distinct live.node_id per node.")
      .StringList("live.cluster.nats_urls", {"nats://127.0.0.1:4222"}, "NATS servers for live.cluster.enabled.")
      .Duration("live.cluster.announce_interval", "250ms",
                "How often a node announces itself and its rooms' local online counts.")
      .Duration("live.cluster.dead_after", "1500ms", "A node silent this long is dead; its rooms move.")
      .Duration("live.cluster.forward_timeout", "1s",
                "A publish forwarded to a room's owner and not answered in this time is retried once on a "
                "recomputed owner, then refused with 503.");
}

Result<LiveOptions> OptionsFromConfig(const Config& c) {
  LiveOptions o;
  o.block_interval = c.GetDuration("live.block_interval");
  if (o.block_interval <= Duration::zero()) return InvalidArgument("live.block_interval must be > 0");
  o.dispatcher.block_max = static_cast<size_t>(c.GetInt("live.block_max"));
  o.dispatcher.pending_max = static_cast<size_t>(c.GetInt("live.pending_max"));
  o.dispatcher.carry_max = static_cast<size_t>(c.GetInt("live.carry_max"));
  o.dispatcher.carry_min_priority = static_cast<int32_t>(c.GetInt("live.carry_min_priority"));

  nlohmann::json ages = nlohmann::json::parse(c.GetTreeJson("live.max_age"), nullptr, false);
  if (!ages.is_object()) return InvalidArgument("live.max_age must be a map of type: duration");
  o.dispatcher.max_age_ms.clear();
  for (auto it = ages.begin(); it != ages.end(); ++it) {
    CHORUS_ASSIGN_OR_RETURN(int64_t ms, ParseMs(it.value(), "live.max_age." + it.key()));
    if (it.key() == "default") {
      o.dispatcher.default_max_age_ms = ms;
    } else {
      o.dispatcher.max_age_ms[it.key()] = ms;
    }
  }

  nlohmann::json rooms = nlohmann::json::parse(c.GetTreeJson("live.rooms"), nullptr, false);
  if (!rooms.is_object()) return InvalidArgument("live.rooms must be a map of room: {block_interval, block_max}");
  for (auto it = rooms.begin(); it != rooms.end(); ++it) {
    const std::string key = "live.rooms." + it.key();
    CHORUS_RETURN_IF_ERROR(ValidateRoomId(it.key()));
    if (!it->is_object()) return InvalidArgument(key + " must be a map");
    LiveOptions::RoomOverride ov;
    for (auto f = it->begin(); f != it->end(); ++f) {
      if (f.key() == "block_interval") {
        CHORUS_ASSIGN_OR_RETURN(int64_t ms, ParseMs(f.value(), key + ".block_interval"));
        ov.block_interval = std::chrono::milliseconds(ms);
      } else if (f.key() == "block_max") {
        if (!f->is_number_integer() || f->get<int64_t>() < 1 || f->get<int64_t>() > 1000) {
          return InvalidArgument(key + ".block_max must be an integer 1..1000");
        }
        ov.block_max = static_cast<size_t>(f->get<int64_t>());
      } else {
        return InvalidArgument("unknown key " + key + "." + f.key() + " (block_interval, block_max)");
      }
    }
    o.room_overrides.emplace(it.key(), ov);
  }

  CHORUS_ASSIGN_OR_RETURN(o.priority, PriorityRules::FromJson(c.GetTreeJson("live.priority")));
  o.node_id = static_cast<uint32_t>(c.GetInt("live.node_id"));
  o.max_payload_bytes = static_cast<size_t>(c.GetInt("live.max_payload_bytes"));
  o.max_batch = static_cast<size_t>(c.GetInt("live.max_batch"));
  o.shard_size = static_cast<size_t>(c.GetInt("live.shard_size"));
  o.max_rooms_per_connection = static_cast<size_t>(c.GetInt("live.max_rooms_per_connection"));
  o.max_frame_bytes = static_cast<size_t>(c.GetInt("live.max_frame_bytes"));
  o.outbound_queue_bytes = static_cast<size_t>(c.GetInt("live.outbound_queue_bytes"));
  o.slow_client_grace = c.GetDuration("live.slow_client_grace");
  o.idle_timeout = c.GetDuration("live.idle_timeout");
  o.heartbeat = c.GetDuration("live.heartbeat");
  if (o.slow_client_grace < Duration::zero()) return InvalidArgument("live.slow_client_grace must be >= 0");
  if (o.idle_timeout < std::chrono::seconds(1)) return InvalidArgument("live.idle_timeout must be at least 1s");
  if (o.heartbeat <= Duration::zero()) return InvalidArgument("live.heartbeat must be > 0");
  o.poll_limit_default = static_cast<size_t>(c.GetInt("live.poll.limit_default"));
  o.poll_limit_max = static_cast<size_t>(c.GetInt("live.poll.limit_max"));
  if (o.poll_limit_default > o.poll_limit_max) {
    return InvalidArgument("live.poll.limit_default must not exceed live.poll.limit_max");
  }
  const int64_t small = c.GetInt("live.poll.small_below"), medium = c.GetInt("live.poll.medium_below");
  if (small > medium) return InvalidArgument("live.poll.small_below must not exceed live.poll.medium_below");
  o.poll_tiers = {{small, c.GetInt("live.poll.ms_small")}, {medium, c.GetInt("live.poll.ms_medium")}};
  o.poll_ms_max = c.GetInt("live.poll.ms_large");
  o.poll_requires_token = c.GetBool("live.poll.requires_token");
  o.public_ws_url = c.GetString("live.public_ws_url");
  o.max_ws_connections = static_cast<size_t>(c.GetInt("live.max_ws_connections"));
  o.retention.max_per_type = static_cast<size_t>(c.GetInt("live.retention.max_per_type"));
  o.retention.max_age_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(c.GetDuration("live.retention.max_age")).count();
  if (o.retention.max_age_ms <= 0) return InvalidArgument("live.retention.max_age must be > 0");
  o.idle_room_ttl = c.GetDuration("live.idle_room_ttl");
  if (o.idle_room_ttl < Duration::zero()) return InvalidArgument("live.idle_room_ttl must be >= 0");
  o.chat.max_bytes = static_cast<size_t>(c.GetInt("live.chat.max_bytes"));
  o.chat.per_minute = static_cast<double>(c.GetInt("live.chat.per_minute"));
  o.chat.burst = static_cast<double>(c.GetInt("live.chat.burst"));
  o.chat.default_level = static_cast<int32_t>(c.GetInt("live.chat.level"));

  o.cluster.enabled = c.GetBool("live.cluster.enabled");
  o.cluster.nats_urls = c.GetStringList("live.cluster.nats_urls");
  o.cluster.announce_interval = c.GetDuration("live.cluster.announce_interval");
  o.cluster.dead_after = c.GetDuration("live.cluster.dead_after");
  o.cluster.forward_timeout = c.GetDuration("live.cluster.forward_timeout");
  if (o.cluster.enabled) {
    // Polls must find a room's messages on any node: only a shared store does that.
    if (c.GetString("live.store") != "redis") {
      return InvalidArgument("live.cluster.enabled needs live.store=redis (every node polls the owner's messages "
                             "from the shared store), not live.store=" + c.GetString("live.store"));
    }
    if (o.cluster.nats_urls.empty()) return InvalidArgument("live.cluster.nats_urls must name at least one server");
    for (const std::string& url : o.cluster.nats_urls) {
      if (url.empty()) return InvalidArgument("live.cluster.nats_urls: empty URL");
    }
    if (o.cluster.announce_interval <= Duration::zero()) {
      return InvalidArgument("live.cluster.announce_interval must be > 0");
    }
    if (o.cluster.dead_after < 2 * o.cluster.announce_interval) {
      return InvalidArgument("live.cluster.dead_after must be at least twice live.cluster.announce_interval "
                             "(one lost announcement must not kill a node)");
    }
    if (o.cluster.forward_timeout <= Duration::zero()) {
      return InvalidArgument("live.cluster.forward_timeout must be > 0");
    }
  }
  return o;
}

}  // namespace chorus::live
