// Live across nodes (docs/scale-out.md, "live across nodes"): which `chorus live` nodes are
// alive, which one owns a room, and the NATS subjects they talk over.
//
// Membership. Every node announces itself on `chorus.live.nodes` every announce_interval (node
// id, a random boot id, and per room with local members: its local online count and the joins
// and leaves since the previous announcement). A node is alive while its announcements keep
// coming; one silent for dead_after, or whose forward subject has no responders (MarkDead), is
// dead until it announces again. This node is always alive to itself.
//
// Ownership. A room's owner is the rendezvous (highest-random-weight) winner over the live
// nodes: a pure function of the room id and the set, so every node that sees the same set agrees
// without talking, and a node joining or leaving moves only the rooms it wins or held. Views
// differ for at most dead_after after a node dies; a forward reaching a node that does not think
// it owns the room is still accepted (see live_service.cc).
//
// Subjects (ids are [A-Za-z0-9_.:-]; a '.' becomes '~' inside a subject token, see
// SubjectToken):
//   chorus.live.nodes                   announcements (JSON, EncodeAnnouncement)
//   chorus.live.node.<id>.publish       a publish forwarded to its owner (request/reply)
//   chorus.live.block.<room>            each block of the room, both encodings (EncodeFrames)
//   chorus.live.user.<user>             private messages (EncodeFrames)
//   chorus.live.broadcast               broadcasts (JSON, live_service.cc)
//
// This header keeps NATS out of LiveService: Cluster is the interface, ConnectNatsCluster the
// only implementation (cluster.cc). Threads: every Cluster method may be called from any thread;
// Handlers run on NATS delivery threads and must be quick (post the work to a shard).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "live/frames.h"

namespace chorus::live {

struct ClusterOptions {
  bool enabled = false;
  std::vector<std::string> nats_urls;
  Duration announce_interval = std::chrono::milliseconds(250);
  Duration dead_after = std::chrono::milliseconds(1500);
  // A forwarded publish not answered in this time is retried once on a recomputed owner.
  Duration forward_timeout = std::chrono::seconds(1);
};

// ---- pure functions ------------------------------------------------------------------------------

// The weight of `node` for `key`: a 64-bit mix of both, the same on every platform and build.
uint64_t RendezvousScore(std::string_view key, uint32_t node);
// The node with the highest score (ties, practically never, go to the lower id); nullopt when
// `nodes` is empty.
std::optional<uint32_t> RendezvousOwner(std::string_view key, const std::vector<uint32_t>& nodes);

// A room or user id as one NATS subject token: '.' (allowed in ids, a separator in subjects)
// becomes '~' (not allowed in ids), so the mapping is one-to-one.
std::string SubjectToken(std::string_view id);
std::string IdFromSubjectToken(std::string_view token);

// ---- wire formats --------------------------------------------------------------------------------

struct RoomCount {
  std::string room;
  int64_t online = 0;  // local members on the announcing node
  int64_t joins = 0;   // since its previous announcement
  int64_t leaves = 0;
  bool operator==(const RoomCount&) const = default;
};

struct Announcement {
  uint32_t node = 0;
  uint64_t boot = 0;  // random per process start: a restarted node is a new member
  std::vector<RoomCount> rooms;
  bool operator==(const Announcement&) const = default;
};

std::string EncodeAnnouncement(const Announcement& a);
// kInvalidArgument for anything malformed (it came from the network).
Result<Announcement> DecodeAnnouncement(std::string_view data);

// Encoded server frames as one NATS payload: the sender's boot id (so a node skips its own echo
// when it delivered locally already), then each frame's protobuf and JSON bytes, length-prefixed.
// The bytes are carried unchanged: every node's members get exactly what the sender encoded.
std::string EncodeFrames(uint64_t origin_boot, const std::vector<EncodedFrame>& frames);
struct DecodedFrames {
  uint64_t origin_boot = 0;
  std::vector<EncodedFrame> frames;
};
Result<DecodedFrames> DecodeFrames(std::string_view data);

// ---- membership ----------------------------------------------------------------------------------

// The last announcement of every node heard from, and who is alive. Pure (time is passed in) and
// not thread-safe: NatsCluster guards it with its mutex.
class NodeTable {
 public:
  NodeTable(uint32_t self, Duration dead_after) : self_(self), dead_after_(dead_after) {}

  // Records an announcement. True if the live set changed (a new node, or one that came back).
  // A new boot id replaces what the node announced before.
  bool Observe(const Announcement& a, SteadyTime now);
  // Forgets nodes silent for longer than dead_after. True if any was alive before.
  bool Expire(SteadyTime now);
  // Treats `node` as dead until its next announcement (never this node). True if it was alive.
  bool MarkDead(uint32_t node);

  // Sorted ids of the live nodes, always including this node.
  const std::vector<uint32_t>& live() const { return live_; }
  std::optional<uint32_t> OwnerOf(std::string_view room) const { return RendezvousOwner(room, live_); }
  // Sum of the live nodes' last announced local counts for `room`.
  int64_t Online(std::string_view room) const;
  // Rooms some live node announced members in.
  std::vector<std::string> Rooms() const;

 private:
  struct Node {
    uint64_t boot = 0;
    SteadyTime last_seen;
    bool dead = false;  // MarkDead'ed; alive again on the next announcement
    std::unordered_map<std::string, int64_t> online;
  };
  void Recompute();

  uint32_t self_;
  Duration dead_after_;
  std::map<uint32_t, Node> nodes_;
  std::vector<uint32_t> live_ = {self_};
};

// ---- the cluster ---------------------------------------------------------------------------------

class Cluster {
 public:
  struct Handlers {
    // A publish forwarded to this node; answer by calling `reply` exactly once, from any thread.
    std::function<void(std::string request, std::function<void(std::string)> reply)> forward;
    // A block of `room` (EncodeFrames bytes), on a room this node subscribed to.
    std::function<void(const std::string& room, std::string_view data)> block;
    // Private messages for `user` (EncodeFrames bytes).
    std::function<void(const std::string& user, std::string_view data)> user;
    std::function<void(std::string_view data)> broadcast;
    // Joins and leaves announced for a room this node owns (by its current view).
    std::function<void(const std::string& room, int64_t joins, int64_t leaves)> presence;
    // NATS connection up / down.
    std::function<void(bool connected)> state;
  };

  virtual ~Cluster() = default;

  virtual uint32_t self() const = 0;
  virtual uint64_t boot() const = 0;
  // Subscribes the node-wide subjects. Call once, before anything else below.
  virtual Status Start(Handlers handlers) = 0;
  // Unsubscribes everything; no handler runs after it returns. Idempotent.
  virtual void Stop() = 0;

  // Announces this node and forgets silent nodes; call every announce_interval. True if the
  // live set changed (ownership may have moved).
  virtual bool Tick(SteadyTime now) = 0;
  // This node's local member count for `room` changed to `online` (joins and leaves since the
  // last call are added to the next announcement).
  virtual void LocalChanged(const std::string& room, int64_t online, int64_t joins, int64_t leaves) = 0;

  virtual std::optional<uint32_t> OwnerOf(std::string_view room) const = 0;
  virtual std::vector<uint32_t> LiveNodes() const = 0;
  virtual int64_t Online(std::string_view room) const = 0;
  virtual std::vector<std::string> Rooms() const = 0;
  virtual void MarkDead(uint32_t node) = 0;

  // Request/reply to `node`'s forward subject; `done` runs once on any thread. kUnavailable when
  // nobody answers on that subject (the node is gone) or NATS is down, kDeadlineExceeded on
  // timeout.
  virtual void Forward(uint32_t node, std::string_view request, Duration timeout,
                       std::function<void(Result<std::string>)> done) = 0;
  virtual Status PublishBlock(std::string_view room, std::string_view data) = 0;
  virtual Status PublishUser(std::string_view user, std::string_view data) = 0;
  virtual Status PublishBroadcast(std::string_view data) = 0;
  // Block subscriptions, held while this node has local members of the room. Idempotent.
  virtual void SubscribeRoom(const std::string& room) = 0;
  virtual void UnsubscribeRoom(const std::string& room) = 0;

  virtual bool connected() const = 0;
};

// Connects to NATS (in the background: this returns before a server answers, see
// nats/nats_client.h) as node `self`. kInvalidArgument for bad options.
Result<std::unique_ptr<Cluster>> ConnectNatsCluster(const ClusterOptions& options, uint32_t self);

}  // namespace chorus::live
