// LiveService: the live-room messaging service (docs/live.md) on a net::Runtime.
//
// Ownership (thread-per-core, no locks on the hot path):
//   - a room's dispatcher, presence counters and block timer live on its owner shard,
//     hash(room) % shards; every publish to the room is posted there;
//   - a connection's subscriptions live on the shard that accepted it, in that shard's
//     MemberShards for the room; joins and leaves are posted to the owner as deltas;
//   - the owner serializes each block once and posts the shared bytes to every shard that has
//     members of the room, which walks its member shards and queues the bytes on each socket;
//   - private messages are encoded once and posted to every shard, which looks the user up in its
//     own connection index; broadcasts are posted to every shard and enqueued into every room it
//     owns.
// The poll store is shared (thread-safe or per-shard, see poll_store.h).
//
// Cluster mode (live.cluster.enabled, docs/scale-out.md "live across nodes"): several nodes
// serve one set of rooms over NATS (live/cluster.h). The same per-shard layout holds inside each
// node; across nodes:
//   - a room's dispatcher runs only on its owner node (rendezvous hash over live nodes), which
//     alone writes the (Redis) poll store; a publish on another node is forwarded to the owner
//     by request/reply and answered with the owner's ids, retried once on a recomputed owner if
//     the owner does not answer;
//   - the owner publishes each encoded block on the room's NATS subject instead of delivering it
//     itself; every node (the owner too) subscribes while it has local members and hands the
//     bytes to its member shards, so all members everywhere get identical bytes;
//   - private messages and broadcasts are delivered locally and published to every other node;
//   - a room's online count is the sum of the nodes' announced local counts, and joins/leaves
//     reach the owner's presence notice through the same announcements.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/config.h"
#include "base/status.h"
#include "live/cluster.h"
#include "live/dispatcher.h"
#include "live/message.h"
#include "live/poll_store.h"

namespace grpc {
class Service;
}

namespace chorus::net {
class Router;
class Runtime;
class TokenSigner;
}  // namespace chorus::net

namespace chorus::live {

struct LiveOptions {
  DispatcherOptions dispatcher;
  PriorityRules priority;
  Duration block_interval = std::chrono::seconds(1);
  // Per-room block_interval / block_max overrides (config live.rooms).
  struct RoomOverride {
    Duration block_interval{0};
    size_t block_max = 0;
  };
  std::map<std::string, RoomOverride, std::less<>> room_overrides;

  uint32_t node_id = 0;
  size_t max_payload_bytes = 4096;
  size_t max_batch = 100;

  // Membership and delivery.
  size_t shard_size = 512;
  size_t max_rooms_per_connection = 8;
  size_t max_frame_bytes = 4096;
  size_t outbound_queue_bytes = 1 << 20;
  Duration slow_client_grace = std::chrono::seconds(5);
  Duration idle_timeout = std::chrono::seconds(60);  // server pings at half of it
  Duration heartbeat = std::chrono::seconds(25);     // advised app-level ping period

  // Polling and transport choice.
  size_t poll_limit_default = 15;
  size_t poll_limit_max = 50;
  // (online below, poll ms) ascending by online; rooms at or above the last bound use poll_ms_max.
  std::vector<std::pair<int64_t, int64_t>> poll_tiers = {{100, 1500}, {1000, 2000}};
  int64_t poll_ms_max = 2500;
  bool poll_requires_token = false;
  std::string public_ws_url;  // advertised by /v1/connect; empty = ws://<Host header>/v1/ws
  size_t max_ws_connections = 0;  // above it /v1/connect advises polling; 0 = no limit

  // Viewer chat (the `chat` op, POST /v1/rooms/{room}/chat): checked, then published as a `chat`
  // message from the viewer.
  struct ChatOptions {
    size_t max_bytes = 500;
    double per_minute = 30;  // per user, token bucket
    double burst = 5;
    int32_t default_level = 0;  // sender level when the token has none
  };
  ChatOptions chat;

  RetentionOptions retention;
  Duration idle_room_ttl = std::chrono::seconds(60);  // an empty, quiet room is forgotten after it

  // Several nodes over NATS (live.cluster.*); off = embedded, everything in this process.
  ClusterOptions cluster;

  int64_t PollMs(int64_t online) const;
};

// Declares the live.* configuration keys.
void AddConfigKeys(ConfigSchema& schema);
// Reads the live.* keys (validating the tree-valued ones).
Result<LiveOptions> OptionsFromConfig(const Config& config);

// What a publish reports: the assigned ids, in request order, and how far it reached — the room's
// online count (room), the connections the private message was queued on (user), or the rooms
// it was enqueued into (broadcast).
struct PublishResult {
  std::vector<uint64_t> ids;
  int64_t reached = 0;
  // Room publishes are answered once the poll store has the messages (live.store=redis: in
  // Redis, so pollable on every node even if this one dies right after). True when it did not
  // confirm them: they are queued for push anyway, but a poller may not see them.
  bool poll_store_failed = false;
};

class LiveService {
 public:
  using PublishCallback = std::function<void(Result<PublishResult>)>;

  // `store` serves polls; the service appends room messages to it. Nothing runs until Start().
  static Result<std::unique_ptr<LiveService>> Create(net::Runtime& runtime, const net::TokenSigner& signer,
                                                     LiveOptions options, std::shared_ptr<PollStore> store);
  ~LiveService();

  // Registers the HTTP and WebSocket routes (docs/live.md "API").
  Status AddRoutes(net::Router& router);
  // The chorus.live.v1.Live gRPC service, backed by this service; owned by the caller.
  std::unique_ptr<grpc::Service> MakeGrpcService();

  // Viewer chat passes this check before it is published (chorus up wires the compute
  // `moderation` app here); with none set, chat is published unchecked. The moderator may answer
  // on any thread: allowed, rejected (with a reason for the sender), or an error (the chat is
  // refused as "moderation_unavailable": nothing unchecked gets through). Set before Start().
  struct ChatVerdict {
    bool allowed = true;
    std::string reason;  // why not, for the sender
  };
  using ChatModerator =
      std::function<void(const std::string& room, const std::string& text, std::function<void(Result<ChatVerdict>)> done)>;
  void SetChatModerator(ChatModerator moderator);
  // Sees every message accepted into a room (publishers, viewer chat, presence), on the room's
  // owner shard, after it is stamped: keep it quick and non-blocking. `gift_value` is the gift
  // rule's payload.value (0 for other types). Set before Start().
  using RoomObserver = std::function<void(const Message& message, double gift_value)>;
  void SetRoomObserver(RoomObserver observer);

  // Viewer chat from `user` (with `level`): validated, rate-limited per user, moderated, then
  // published to `room`. `done` gets the message id, or kInvalidArgument (bad text),
  // kResourceExhausted (rate), kPermissionDenied (rejected by moderation; the message is the
  // reason), kUnavailable (moderation failed). Callable from any thread; `done` may run on any.
  void Chat(std::string room, std::string user, int32_t level, std::string text,
            std::function<void(Result<uint64_t>)> done);

  // Readiness of the service for /readyz: called with (ready, detail) at Start() and on every
  // change after it (cluster mode: the NATS connection going down and up), from any thread;
  // set after Start(), it is called at once with the current state. `detail` is "" embedded.
  using ReadinessCallback = std::function<void(bool ready, std::string detail)>;
  void SetReadinessCallback(ReadinessCallback cb);

  // Starts the per-shard housekeeping timers (and in cluster mode the NATS subscriptions and the
  // announcements). Call after the runtime has started.
  void Start();
  // Cancels timers on every shard and waits for that, and leaves the cluster; call before
  // stopping the runtime.
  void Stop();

  // The publishing core shared by HTTP and gRPC. Callable from any thread; `done` runs on a
  // shard thread with the assigned ids once the messages are accepted.
  void PublishRoom(std::string room, std::vector<Draft> drafts, PublishCallback done);
  void PublishUser(std::string user, std::vector<Draft> drafts, PublishCallback done);
  void Broadcast(std::vector<Draft> drafts, PublishCallback done);

  const LiveOptions& options() const;
  const net::TokenSigner& signer() const;

  class Impl;

 private:
  explicit LiveService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::live
