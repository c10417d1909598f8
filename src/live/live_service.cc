#include "live/live_service.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <future>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "base/logging.h"
#include "base/metrics.h"
#include "base/mutex.h"
#include "base/text.h"
#include "live/frames.h"
#include "live/membership.h"
#include "net/http_json.h"
#include "net/router.h"
#include "net/runtime.h"
#include "net/token.h"
#include "net/websocket.h"

namespace chorus::live {
namespace {

constexpr std::string_view kPublishScope = "live.publish";

int64_t WallMs() { return SystemClock::Instance().WallMillis(); }

// A viewer's socket in a room's member shards.
struct Subscriber {
  std::shared_ptr<net::WebSocketConnection> conn;
  bool json = false;
  // conn->dropped() when last looked at, shared by all of the connection's rooms (it lives in the
  // shard's connection table, whose nodes do not move): the difference is blocks its slow-client
  // policy dropped.
  uint64_t* dropped_seen = nullptr;
};

// What `accept` hands each connection.
struct WsContext {
  std::string user;
  int32_t level = 0;
  bool json = false;
};

enum ChatResult { kChatPublished, kChatRejected, kChatRateLimited, kChatUnavailable, kChatResults };

struct Metrics {
  Counter* published_room;
  Counter* published_user;
  Counter* published_broadcast;
  std::array<Counter*, static_cast<size_t>(DropReason::kCount)> dropped;
  Counter* coalesced;
  Counter* blocks;
  Counter* blocks_received;
  Counter* deliveries;
  Counter* private_deliveries;
  Counter* store_errors;
  Counter* polls;
  Counter* bad_frames;
  std::array<Counter*, 3> forwards;  // ok, retried, failed
  Counter* cluster_errors;
  Gauge* rooms;
  Gauge* connections;
  Gauge* subscriptions;
  Histogram* dwell;
  std::array<Counter*, kChatResults> chat;
};

Metrics& GetMetrics() {
  static Metrics* m = [] {
    auto* x = new Metrics();
    auto& reg = DefaultMetrics();
    auto published = reg.Counter("chorus_live_published_total", "Messages accepted for publishing", {"target"});
    x->published_room = &published->WithLabels({"room"});
    x->published_user = &published->WithLabels({"user"});
    x->published_broadcast = &published->WithLabels({"broadcast"});
    auto dropped = reg.Counter("chorus_live_dropped_total", "Room messages dropped by rule", {"reason"});
    for (size_t i = 0; i < x->dropped.size(); ++i) {
      x->dropped[i] = &dropped->WithLabels({DropReasonName(static_cast<DropReason>(i))});
    }
    x->coalesced = &reg.Counter("chorus_live_coalesced_total", "Gain messages replaced by a newer value")->Get();
    x->blocks = &reg.Counter("chorus_live_blocks_total", "Blocks emitted by room dispatchers")->Get();
    x->blocks_received =
        &reg.Counter("chorus_live_cluster_blocks_received_total", "Blocks received from room owners over NATS")->Get();
    x->deliveries = &reg.Counter("chorus_live_deliveries_total", "Blocks queued on member connections")->Get();
    x->private_deliveries =
        &reg.Counter("chorus_live_private_deliveries_total", "Private messages queued on connections")->Get();
    x->store_errors = &reg.Counter("chorus_live_store_errors_total", "Poll store writes that failed")->Get();
    x->polls = &reg.Counter("chorus_live_polls_total", "Short-poll requests answered")->Get();
    x->bad_frames = &reg.Counter("chorus_live_bad_frames_total", "Client frames answered with an error")->Get();
    auto forwards =
        reg.Counter("chorus_live_forwards_total", "Publishes forwarded to the room's owner node, by outcome", {"result"});
    x->forwards[0] = &forwards->WithLabels({"ok"});
    x->forwards[1] = &forwards->WithLabels({"retried"});
    x->forwards[2] = &forwards->WithLabels({"failed"});
    x->cluster_errors =
        &reg.Counter("chorus_live_cluster_errors_total", "Cluster messages that could not be sent or decoded")->Get();
    x->rooms = &reg.Gauge("chorus_live_rooms", "Rooms with a dispatcher")->Get();
    x->connections = &reg.Gauge("chorus_live_connections", "Open live WebSocket connections")->Get();
    x->subscriptions = &reg.Gauge("chorus_live_subscriptions", "Room subscriptions over all connections")->Get();
    x->dwell = &reg.Histogram("chorus_live_dwell_seconds", "Time a member stayed in a room",
                              {1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400})
                    ->Get();
    auto chat = reg.Counter("chorus_live_chat_total", "Viewer chat messages by outcome", {"result"});
    x->chat[kChatPublished] = &chat->WithLabels({"published"});
    x->chat[kChatRejected] = &chat->WithLabels({"rejected"});
    x->chat[kChatRateLimited] = &chat->WithLabels({"rate_limited"});
    x->chat[kChatUnavailable] = &chat->WithLabels({"unavailable"});
    return x;
  }();
  return *m;
}

Result<int64_t> ParseInt(std::string_view text, std::string_view name) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) {
    return InvalidArgument(std::string(name) + " must be an integer");
  }
  return v;
}

// Room-online counts readable from any shard (connect and poll choose poll_ms by room size).
class OnlineTable {
 public:
  void Set(const std::string& room, int64_t online) {
    Stripe& s = stripes_[std::hash<std::string>{}(room) % kStripes];
    MutexLock lock(s.mu);
    if (online == 0) {
      s.online.erase(room);
    } else {
      s.online[room] = online;
    }
  }
  int64_t Get(const std::string& room) const {
    const Stripe& s = stripes_[std::hash<std::string>{}(room) % kStripes];
    MutexLock lock(s.mu);
    auto it = s.online.find(room);
    return it == s.online.end() ? 0 : it->second;
  }

 private:
  static constexpr size_t kStripes = 16;
  struct Stripe {
    mutable Mutex mu;
    std::unordered_map<std::string, int64_t> online GUARDED_BY(mu);
  };
  std::array<Stripe, kStripes> stripes_;
};

}  // namespace

int64_t LiveOptions::PollMs(int64_t online) const {
  for (const auto& [below, ms] : poll_tiers) {
    if (online < below) return ms;
  }
  return poll_ms_max;
}

// ---------------------------------------------------------------------------------------------

class LiveService::Impl {
 public:
  Impl(net::Runtime& runtime, const net::TokenSigner& signer, LiveOptions options, std::shared_ptr<PollStore> store)
      : runtime_(runtime), signer_(signer), options_(std::move(options)), store_(std::move(store)) {
    for (auto& [room, o] : options_.room_overrides) {
      DispatcherOptions d = options_.dispatcher;
      if (o.block_max > 0) d.block_max = o.block_max;
      room_dispatch_.emplace(room, d);
    }
    for (uint32_t i = 0; i < runtime_.size(); ++i) {
      shards_.push_back(std::make_unique<ShardState>(i, IdGenerator(options_.node_id, i, runtime_.size())));
    }
    GetMetrics();
  }

  // -- state owned by one shard --

  struct OwnedRoom {
    std::string id;
    std::unique_ptr<RoomDispatcher> dispatcher;
    TimerId timer = 0;
    std::vector<int64_t> members;  // per shard
    int64_t online = 0;
    int64_t joins = 0;
    int64_t leaves = 0;
    uint64_t seq = 0;
    int64_t last_created = 0;
    bool published = false;  // ever got a message from a publisher (else forgotten once empty)
    SteadyTime last_active;
    RoomDispatcher::DropCounts reported{};
    uint64_t reported_coalesced = 0;
    uint64_t dropped_at_last_block = 0;  // the dispatcher's drop total when the last block went out
  };

  struct ConnInfo {
    std::shared_ptr<net::WebSocketConnection> conn;
    std::string user;
    int32_t level = 0;
    bool json = false;
    std::vector<std::pair<std::string, SteadyTime>> rooms;  // subscribed rooms and since when
    uint64_t dropped_seen = 0;                               // see Subscriber
  };

  struct ShardState {
    ShardState(uint32_t i, IdGenerator g) : index(i), ids(g) {}
    uint32_t index;
    IdGenerator ids;
    std::unordered_map<std::string, std::unique_ptr<OwnedRoom>> owned;
    std::unordered_map<std::string, std::unique_ptr<MemberShards<Subscriber>>> local;
    std::unordered_map<uint64_t, ConnInfo> conns;
    // user -> their connections here. A set, not a multimap: one user may hold thousands of
    // connections (a load test with one token), and closing one must not scan the others.
    std::unordered_map<std::string, std::unordered_set<uint64_t>> users;
    TimerId housekeeping = 0;
    TimerId cluster_timer = 0;  // shard 0, cluster mode
  };

  uint32_t OwnerOf(std::string_view room) const {
    return static_cast<uint32_t>(std::hash<std::string_view>{}(room) % runtime_.size());
  }
  ShardState& Here() {
    net::Shard* s = net::Runtime::Current();
    return *shards_[s->index()];
  }

  const DispatcherOptions* DispatchOptionsFor(std::string_view room) const {
    auto it = room_dispatch_.find(room);
    return it == room_dispatch_.end() ? &options_.dispatcher : &it->second;
  }
  Duration IntervalFor(std::string_view room) const {
    auto it = options_.room_overrides.find(room);
    if (it != options_.room_overrides.end() && it->second.block_interval > Duration::zero()) {
      return it->second.block_interval;
    }
    return options_.block_interval;
  }

  // Owner shard only.
  OwnedRoom& RoomOf(ShardState& st, const std::string& room) {
    auto it = st.owned.find(room);
    if (it != st.owned.end()) return *it->second;
    auto r = std::make_unique<OwnedRoom>();
    r->id = room;
    // Embedded, every room has its dispatcher; in a cluster only the room's owner node runs one
    // (DispatcherOf), the other nodes keep the room for their local members.
    if (!cluster_) r->dispatcher = std::make_unique<RoomDispatcher>(DispatchOptionsFor(room));
    r->members.assign(runtime_.size(), 0);
    r->last_active = SystemClock::Instance().Now();
    OwnedRoom* raw = r.get();
    net::Shard& shard = runtime_.shard(st.index);
    // After Stop() no new timer is armed: nothing may call back into a service being torn down.
    if (!stopping_.load()) r->timer = shard.RunEvery(IntervalFor(room), [this, &st, raw] { Tick(st, *raw); });
    st.owned.emplace(room, std::move(r));
    GetMetrics().rooms->Add(1);
    return *raw;
  }

  RoomDispatcher& DispatcherOf(OwnedRoom& r) {
    if (!r.dispatcher) {
      r.dispatcher = std::make_unique<RoomDispatcher>(DispatchOptionsFor(r.id));
      if (cluster_) {
        // A node taking a room over numbers its blocks from 1000 × the wall clock in ms: past
        // every seq the previous owner sent, because that one started from its own takeover
        // time and sends at most one block per interval (≥ 1 ms), so a thousand per millisecond
        // since then is more than it can have used. Needs node clocks that agree to well within
        // the time between two takeovers; stays below 2^53 (exact in JSON) for centuries.
        r.seq = std::max<uint64_t>(r.seq, static_cast<uint64_t>(WallMs()) * 1000);
      }
    }
    return *r.dispatcher;
  }

  // Cluster mode: this node no longer owns the room and has sent everything it accepted.
  void ReleaseDispatcher(OwnedRoom& r) {
    ReportDrops(r);
    r.dispatcher.reset();
    r.reported = {};
    r.reported_coalesced = 0;
    r.dropped_at_last_block = 0;
    r.joins = r.leaves = 0;
  }

  // The room's online count: this node's members, or in a cluster every node's.
  int64_t OnlineOf(const std::string& room) const { return cluster_ ? cluster_->Online(room) : online_.Get(room); }

  void ReportDrops(OwnedRoom& r) {
    if (!r.dispatcher) return;
    const auto& drops = r.dispatcher->drops();
    for (size_t i = 0; i < drops.size(); ++i) {
      if (drops[i] != r.reported[i]) {
        GetMetrics().dropped[i]->Inc(drops[i] - r.reported[i]);
        r.reported[i] = drops[i];
      }
    }
    if (r.dispatcher->coalesced() != r.reported_coalesced) {
      GetMetrics().coalesced->Inc(r.dispatcher->coalesced() - r.reported_coalesced);
      r.reported_coalesced = r.dispatcher->coalesced();
    }
  }

  // Accepts one message into an owned room: stamps it and enqueues it. Owner shard only.
  MessagePtr Accept(ShardState& st, OwnedRoom& r, Draft& d, int64_t now, std::vector<StoredMessage>& stored) {
    const int32_t priority = options_.priority.Compute(d);
    auto m = std::make_shared<Message>(std::move(d.message));
    m->room = r.id;
    m->user.clear();
    m->priority = priority;
    m->id = st.ids.Next(now);
    // created_at strictly increases within a room (a room publishing more than 1000 messages/s
    // runs ahead of the wall clock), so a poller passing back next_since never skips a message:
    // everything stored later is newer than everything it has seen.
    m->created_at = std::max(now, r.last_created + 1);
    r.last_created = m->created_at;
    Finalize(*m);
    stored.push_back(Stored(m));
    DispatcherOf(r).Enqueue(m);
    if (observer_) observer_(*m, d.gift_value);
    return m;
  }

  static StoredMessage Stored(const MessagePtr& m) {
    StoredMessage s;
    s.id = m->id;
    s.created_at = m->created_at;
    s.priority = m->priority;
    s.type = m->type;
    s.gain_key = m->gain_key;
    // Aliasing constructor: the stored JSON shares the message's lifetime, no copy.
    s.json = std::shared_ptr<const std::string>(m, &m->json);
    return s;
  }

  // `then` (may be null) runs once the store answered, with whether it failed; on the calling
  // shard (or inline).
  void AppendToStore(const std::string& room, std::vector<StoredMessage> stored,
                     std::function<void(bool failed)> then = nullptr) {
    if (stored.empty()) {
      if (then) then(false);
      return;
    }
    store_->Append(room, std::move(stored), [then = std::move(then)](Status st) {
      if (!st.ok()) {
        GetMetrics().store_errors->Inc();
        static auto log = GetLogger("live");
        log->warn("poll store append failed: {}", st.ToString());
      }
      if (then) then(!st.ok());
    });
  }

  void Tick(ShardState& st, OwnedRoom& r) {
    const SteadyTime steady = SystemClock::Instance().Now();
    if (!r.dispatcher) {  // cluster mode, another node owns the room: only local members here
      if (r.online > 0) {
        r.last_active = steady;
      } else {
        ForgetRoom(st, r);  // `r` is destroyed here
      }
      return;
    }
    const int64_t now = WallMs();
    // Embedded: this process's members. Cluster: every node's, as last announced.
    const int64_t online = cluster_ ? cluster_->Online(r.id) : r.online;
    if (r.joins > 0 || r.leaves > 0) {
      // Presence, coalesced: one notify gain message per tick however many came and went.
      Draft d;
      d.message.type = "notify";
      d.message.gain_key = "presence";
      d.message.payload = "{\"event\":\"presence\",\"joined\":" + std::to_string(r.joins) +
                          ",\"left\":" + std::to_string(r.leaves) + ",\"online\":" + std::to_string(online) +
                          ",\"text\":\"" + std::to_string(r.joins) + " joined\"}";
      std::vector<StoredMessage> stored;
      Accept(st, r, d, now, stored);
      AppendToStore(r.id, std::move(stored));
    }
    std::vector<MessagePtr> block = r.dispatcher->Tick(now);
    // The presence notice counts everyone since the last one that went out: in a busy room it may
    // wait several ticks (a gain value is never dropped), each replacing the last with a total.
    if (r.joins > 0 || r.leaves > 0) {
      for (const MessagePtr& m : block) {
        if (m->gain_key == "presence") r.joins = r.leaves = 0;
      }
    }
    ReportDrops(r);
    if (!block.empty()) r.last_active = steady;
    if (!block.empty() && online > 0) {  // encoded only when someone is there to receive it
      ++r.seq;
      GetMetrics().blocks->Inc();
      uint64_t dropped = 0;
      for (uint64_t n : r.dispatcher->drops()) dropped += n;
      auto frame = std::make_shared<const EncodedFrame>(
          EncodeBlock(r.id, r.seq, now, online, dropped - r.dropped_at_last_block, block));
      r.dropped_at_last_block = dropped;
      if (cluster_) {
        // Every node with members (this one too) delivers it from its subscription: the same
        // bytes everywhere.
        if (Status s = cluster_->PublishBlock(r.id, EncodeFrames(cluster_->boot(), {*frame})); !s.ok()) {
          GetMetrics().cluster_errors->Inc();
          static auto log = GetLogger("live");
          log->warn("live cluster: publishing a block of {}: {}", r.id, s.ToString());
        }
      } else {
        DeliverToMembers(st, r, frame);
      }
    } else if (!block.empty() || online > 0 || r.online > 0 || !r.dispatcher->empty()) {
      r.last_active = steady;
    } else if (!r.published || steady - r.last_active > options_.idle_room_ttl) {
      ForgetRoom(st, r);  // `r` is destroyed here
      return;
    }
    // Cluster mode: a dispatcher on a node that no longer owns the room (a node joined, or a
    // forward came from a node with another view) goes once it has sent what it accepted.
    if (cluster_ && r.dispatcher->empty() && cluster_->OwnerOf(r.id) != cluster_->self()) ReleaseDispatcher(r);
  }

  // Last thing a caller does with `r`: it is destroyed here. Owner shard only.
  void ForgetRoom(ShardState& st, OwnedRoom& r) {
    runtime_.shard(st.index).Cancel(r.timer);
    GetMetrics().rooms->Sub(1);
    const std::string id = r.id;
    st.owned.erase(id);
  }

  // Hands a block to every shard of this node with members of the room. Room's shard only.
  void DeliverToMembers(ShardState& st, const OwnedRoom& r, const std::shared_ptr<const EncodedFrame>& frame) {
    for (uint32_t s = 0; s < r.members.size(); ++s) {
      if (r.members[s] <= 0) continue;
      if (s == st.index) {
        Deliver(st, r.id, *frame);
      } else {
        runtime_.Post(s, [this, s, room = r.id, frame] { Deliver(*shards_[s], room, *frame); });
      }
    }
  }

  // Queues a block on every local member of the room. Member shard only.
  void Deliver(ShardState& st, const std::string& room, const EncodedFrame& frame) {
    auto it = st.local.find(room);
    if (it == st.local.end()) return;
    uint64_t n = 0, slow_drops = 0;
    it->second->ForEach([&](uint64_t, const Subscriber& sub) {
      sub.conn->Send(frame.For(sub.json), !sub.json, /*droppable=*/true);
      // Send ran inline (same shard), so a drop it caused is already counted.
      const uint64_t dropped = sub.conn->dropped();
      slow_drops += dropped - *sub.dropped_seen;
      *sub.dropped_seen = dropped;
      ++n;
    });
    GetMetrics().deliveries->Inc(n);
    if (slow_drops > 0) GetMetrics().dropped[static_cast<size_t>(DropReason::kSlowClient)]->Inc(slow_drops);
  }

  // A member count change reported to the owner. Owner shard only.
  void MembersChanged(ShardState& st, const std::string& room, uint32_t from_shard, int64_t delta) {
    OwnedRoom& r = RoomOf(st, room);
    const int64_t before = r.online;
    r.members[from_shard] += delta;
    r.online += delta;
    online_.Set(room, r.online);
    if (!cluster_) {
      if (delta > 0) r.joins += delta;
      if (delta < 0) r.leaves -= delta;
      return;
    }
    // Cluster: joins and leaves reach the owner's presence notice through the announcements;
    // blocks reach this node while it has members.
    cluster_->LocalChanged(room, r.online, delta > 0 ? delta : 0, delta < 0 ? -delta : 0);
    if (before <= 0 && r.online > 0) cluster_->SubscribeRoom(room);
    if (before > 0 && r.online <= 0) cluster_->UnsubscribeRoom(room);
  }

  // -- publishing --

  struct Fanin {
    std::atomic<uint32_t> left;
    std::atomic<int64_t> reached{0};
    std::vector<uint64_t> ids;
    PublishCallback done;
  };

  void PublishRoom(std::string room, std::vector<Draft> drafts, PublishCallback done) {
    if (!cluster_) return PublishRoomHere(std::move(room), std::move(drafts), std::move(done));
    auto shared = std::make_shared<const std::vector<Draft>>(std::move(drafts));
    PublishRoomInCluster(std::move(room), std::move(shared), std::move(done), /*retry=*/false);
  }

  // Accepts the messages into the room's dispatcher on this node.
  void PublishRoomHere(std::string room, std::vector<Draft> drafts, PublishCallback done) {
    const uint32_t owner = OwnerOf(room);
    runtime_.Post(owner, [this, owner, room = std::move(room), drafts = std::move(drafts), done = std::move(done)]() mutable {
      ShardState& st = *shards_[owner];
      OwnedRoom& r = RoomOf(st, room);
      const int64_t now = WallMs();
      PublishResult result;
      std::vector<StoredMessage> stored;
      for (Draft& d : drafts) result.ids.push_back(Accept(st, r, d, now, stored)->id);
      r.published = true;
      GetMetrics().published_room->Inc(drafts.size());
      ReportDrops(r);  // an overflow may have dropped already
      result.reached = cluster_ ? cluster_->Online(room) : r.online;
      // Queued for push at once; answered when the poll store has them (with Redis: pollable on
      // every node, whatever happens to this one next). A store failure is said, not an error:
      // the messages are on their way to the WebSockets already.
      AppendToStore(room, std::move(stored), [result = std::move(result), done = std::move(done)](bool failed) mutable {
        result.poll_store_failed = failed;
        done(std::move(result));
      });
    });
  }

  // Cluster mode: accepted here if this node owns the room, else forwarded to the owner. An
  // owner that does not answer (gone: no responders; or too slow) is marked dead and the owner
  // recomputed once.
  void PublishRoomInCluster(std::string room, std::shared_ptr<const std::vector<Draft>> drafts, PublishCallback done,
                            bool retry) {
    if (!cluster_->connected()) {
      return done(Unavailable("live cluster: not connected to NATS; try again shortly"));
    }
    const std::optional<uint32_t> owner = cluster_->OwnerOf(room);
    if (!owner || *owner == cluster_->self()) return PublishRoomHere(std::move(room), *drafts, std::move(done));
    std::string request = EncodeForward(room, *drafts);
    const uint32_t home = OwnerOf(room);
    cluster_->Forward(*owner, request, options_.cluster.forward_timeout,
                      [this, room = std::move(room), drafts, done = std::move(done), retry, node = *owner,
                       home](Result<std::string> reply) mutable {
                        // Not while shutting down: the client failing its pending requests from
                        // its destructor must not start new ones.
                        if (!reply.ok() && !retry && !stopping_.load() &&
                            (reply.status().code() == StatusCode::kUnavailable ||
                             reply.status().code() == StatusCode::kDeadlineExceeded)) {
                          GetMetrics().forwards[1]->Inc();
                          cluster_->MarkDead(node);
                          return PublishRoomInCluster(std::move(room), std::move(drafts), std::move(done), true);
                        }
                        Result<PublishResult> result =
                            reply.ok() ? DecodeForwardReply(*reply)
                                       : Result<PublishResult>(Unavailable(
                                             "live cluster: the owner of room " + room + " (node " +
                                             std::to_string(node) + ") did not answer: " + reply.status().message()));
                        GetMetrics().forwards[result.ok() ? 0 : 2]->Inc();
                        // `done` runs on a shard, as for a local publish.
                        runtime_.Post(home, [done = std::move(done), result = std::move(result)]() mutable {
                          done(std::move(result));
                        });
                      });
  }

  // A publish forwarded by another node (a NATS thread): accepted here, answered with the ids.
  void OnForward(std::string request, std::function<void(std::string)> reply) {
    auto decoded = DecodeForward(request, options_.max_batch);
    if (!decoded.ok()) {
      GetMetrics().cluster_errors->Inc();
      return reply(EncodeForwardReply(decoded.status()));
    }
    PublishRoomHere(std::move(decoded->first), std::move(decoded->second),
                    [reply = std::move(reply)](Result<PublishResult> r) { reply(EncodeForwardReply(r)); });
  }

  // The forward request: the room and its drafts as given (priority not yet applied).
  static std::string EncodeForward(const std::string& room, const std::vector<Draft>& drafts) {
    nlohmann::json list = nlohmann::json::array();
    for (const Draft& d : drafts) list.push_back(DraftToJson(d));
    return nlohmann::json{{"room", room}, {"drafts", std::move(list)}}.dump();
  }
  static nlohmann::json DraftToJson(const Draft& d) {
    const Message& m = d.message;
    return {{"type", m.type},           {"priority", m.priority},         {"priority_set", d.priority_set},
            {"sender_id", m.sender_id}, {"sender_level", m.sender_level}, {"payload", m.payload},
            {"gain_key", m.gain_key},   {"gift_value", d.gift_value}};
  }
  static Result<Draft> DraftFromJson(const nlohmann::json& j) {
    if (!j.is_object()) return InvalidArgument("live cluster: a forwarded draft is not an object");
    auto field = [&](const char* key) -> const nlohmann::json* {
      auto it = j.find(key);
      return it == j.end() ? nullptr : &*it;
    };
    const nlohmann::json *type = field("type"), *priority = field("priority"), *priority_set = field("priority_set"),
                         *sender_id = field("sender_id"), *sender_level = field("sender_level"),
                         *payload = field("payload"), *gain_key = field("gain_key"), *gift_value = field("gift_value");
    if (!type || !type->is_string() || !priority || !priority->is_number_integer() || !priority_set ||
        !priority_set->is_boolean() || !sender_id || !sender_id->is_string() || !sender_level ||
        !sender_level->is_number_integer() || !payload || !payload->is_string() || !gain_key ||
        !gain_key->is_string() || !gift_value || !gift_value->is_number()) {
      return InvalidArgument("live cluster: bad forwarded draft");
    }
    Draft d;
    d.message.type = type->get<std::string>();
    d.message.priority = static_cast<int32_t>(std::clamp<int64_t>(priority->get<int64_t>(), kMinPriority, kMaxPriority));
    d.priority_set = priority_set->get<bool>();
    d.message.sender_id = sender_id->get<std::string>();
    d.message.sender_level = static_cast<int32_t>(std::clamp<int64_t>(sender_level->get<int64_t>(), 0, 1'000'000));
    d.message.payload = payload->get<std::string>();
    d.message.gain_key = gain_key->get<std::string>();
    d.gift_value = gift_value->get<double>();
    return d;
  }
  static Result<std::pair<std::string, std::vector<Draft>>> DecodeForward(std::string_view text, size_t max_batch) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("room") || !j["room"].is_string() || !j.contains("drafts") ||
        !j["drafts"].is_array()) {
      return InvalidArgument("live cluster: malformed forwarded publish");
    }
    std::string room = j["room"].get<std::string>();
    CHORUS_RETURN_IF_ERROR(ValidateRoomId(room));
    if (j["drafts"].empty() || j["drafts"].size() > max_batch) {
      return InvalidArgument("live cluster: forwarded publish has " + std::to_string(j["drafts"].size()) + " messages");
    }
    std::vector<Draft> drafts;
    for (const nlohmann::json& d : j["drafts"]) {
      CHORUS_ASSIGN_OR_RETURN(Draft draft, DraftFromJson(d));
      drafts.push_back(std::move(draft));
    }
    return std::make_pair(std::move(room), std::move(drafts));
  }
  static std::string EncodeForwardReply(const Result<PublishResult>& r) {
    if (!r.ok()) {
      return nlohmann::json{{"error", {{"code", static_cast<int>(r.status().code())}, {"message", r.status().message()}}}}
          .dump();
    }
    nlohmann::json ids = nlohmann::json::array();
    for (uint64_t id : r->ids) ids.push_back(std::to_string(id));
    return nlohmann::json{{"ids", std::move(ids)}, {"reached", r->reached}, {"poll_store_failed", r->poll_store_failed}}
        .dump();
  }
  static Result<PublishResult> DecodeForwardReply(std::string_view text) {
    nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return Internal("live cluster: malformed reply from the room's owner");
    if (auto e = j.find("error"); e != j.end()) {
      // Typed lookups only: json::value() throws on a field of another type.
      int code = static_cast<int>(StatusCode::kInternal);
      std::string message = "error at the room's owner";
      if (e->is_object()) {
        if (auto c = e->find("code"); c != e->end() && c->is_number_integer()) code = c->get<int>();
        if (auto m = e->find("message"); m != e->end() && m->is_string()) message = m->get<std::string>();
      }
      const bool known = code > 0 && code <= static_cast<int>(StatusCode::kUnimplemented);
      return Status(known ? static_cast<StatusCode>(code) : StatusCode::kInternal, std::move(message));
    }
    PublishResult out;
    auto ids = j.find("ids");
    if (ids == j.end() || !ids->is_array()) return Internal("live cluster: reply from the room's owner has no ids");
    for (const nlohmann::json& id : *ids) {
      if (!id.is_string()) return Internal("live cluster: bad id in the owner's reply");
      out.ids.push_back(std::strtoull(id.get_ref<const std::string&>().c_str(), nullptr, 10));
    }
    if (auto f = j.find("reached"); f != j.end() && f->is_number_integer()) out.reached = f->get<int64_t>();
    if (auto f = j.find("poll_store_failed"); f != j.end() && f->is_boolean()) out.poll_store_failed = f->get<bool>();
    return out;
  }

  // Stamps messages that do not belong to one room (private, broadcast) on the calling shard,
  // or shard 0 for callers off the runtime (gRPC threads).
  template <typename Fn>
  void OnSomeShard(Fn fn) {
    if (net::Shard* s = net::Runtime::Current()) {
      fn(*shards_[s->index()]);
    } else {
      runtime_.Post(0, [this, fn = std::move(fn)]() mutable { fn(*shards_[0]); });
    }
  }

  void PublishUser(std::string user, std::vector<Draft> drafts, PublishCallback done) {
    OnSomeShard([this, user = std::move(user), drafts = std::move(drafts), done = std::move(done)](ShardState& st) mutable {
      const int64_t now = WallMs();
      auto frames = std::make_shared<std::vector<EncodedFrame>>();
      auto fanin = std::make_shared<Fanin>();
      fanin->left = runtime_.size();
      fanin->done = std::move(done);
      for (Draft& d : drafts) {
        Message m = std::move(d.message);
        m.priority = options_.priority.Compute(d);
        m.room.clear();
        m.user = user;
        m.id = st.ids.Next(now);
        m.created_at = now;
        Finalize(m);
        fanin->ids.push_back(m.id);
        frames->push_back(EncodePrivate(m));
      }
      GetMetrics().published_user->Inc(drafts.size());
      // Cluster: the user's connections on the other nodes get the same bytes; `reached` counts
      // this node's only.
      if (cluster_) {
        if (Status s = cluster_->PublishUser(user, EncodeFrames(cluster_->boot(), *frames)); !s.ok()) {
          GetMetrics().cluster_errors->Inc();
        }
      }
      for (uint32_t s = 0; s < runtime_.size(); ++s) {
        runtime_.Post(s, [this, s, user, frames, fanin] {
          fanin->reached += DeliverPrivate(*shards_[s], user, *frames);
          if (--fanin->left == 0) fanin->done(PublishResult{std::move(fanin->ids), fanin->reached.load()});
        });
      }
    });
  }

  // Queues private frames on the user's connections on this shard; returns how many.
  int64_t DeliverPrivate(ShardState& here, const std::string& user, const std::vector<EncodedFrame>& frames) {
    int64_t n = 0;
    if (auto u = here.users.find(user); u != here.users.end()) {
      for (uint64_t id : u->second) {
        auto c = here.conns.find(id);
        if (c == here.conns.end()) continue;
        for (const EncodedFrame& f : frames) c->second.conn->Send(f.For(c->second.json), !c->second.json);
        ++n;
      }
    }
    GetMetrics().private_deliveries->Inc(static_cast<uint64_t>(n) * frames.size());
    return n;
  }

  void Broadcast(std::vector<Draft> drafts, PublishCallback done) {
    OnSomeShard([this, drafts = std::move(drafts), done = std::move(done)](ShardState& st) mutable {
      const int64_t now = WallMs();
      auto fanin = std::make_shared<Fanin>();
      fanin->left = runtime_.size();
      fanin->done = std::move(done);
      // One id per message for every room, so a client in two rooms can dedupe.
      auto stamped = std::make_shared<std::vector<Draft>>(std::move(drafts));
      for (size_t i = 0; i < stamped->size(); ++i) fanin->ids.push_back(st.ids.Next(now));
      GetMetrics().published_broadcast->Inc(stamped->size());
      // Cluster: every node enqueues into the rooms it owns; `reached` counts this node's rooms.
      if (cluster_) {
        if (Status s = cluster_->PublishBroadcast(EncodeBroadcast(*stamped, fanin->ids)); !s.ok()) {
          GetMetrics().cluster_errors->Inc();
        }
      }
      auto ids = std::make_shared<const std::vector<uint64_t>>(fanin->ids);
      for (uint32_t s = 0; s < runtime_.size(); ++s) {
        runtime_.Post(s, [this, s, stamped, ids, fanin] {
          fanin->reached += EnqueueBroadcast(*shards_[s], *stamped, *ids);
          if (--fanin->left == 0) fanin->done(PublishResult{std::move(fanin->ids), fanin->reached.load()});
        });
      }
    });
  }

  // Enqueues broadcast messages (ids already assigned) into every room with a dispatcher on this
  // shard; returns how many rooms.
  int64_t EnqueueBroadcast(ShardState& here, const std::vector<Draft>& drafts, const std::vector<uint64_t>& ids) {
    const int64_t t = WallMs();
    int64_t rooms = 0;
    for (auto& [room, r] : here.owned) {
      if (!r->dispatcher) continue;  // cluster mode: owned by another node
      ++rooms;
      std::vector<StoredMessage> stored;
      for (size_t i = 0; i < drafts.size() && i < ids.size(); ++i) {
        Draft d = drafts[i];
        const int32_t priority = options_.priority.Compute(d);
        auto m = std::make_shared<Message>(std::move(d.message));
        m->room = room;
        m->priority = priority;
        m->id = ids[i];
        m->created_at = std::max(t, r->last_created + 1);
        r->last_created = m->created_at;
        r->published = true;
        Finalize(*m);
        stored.push_back(Stored(m));
        r->dispatcher->Enqueue(std::move(m));
      }
      ReportDrops(*r);
      AppendToStore(room, std::move(stored));
    }
    return rooms;
  }

  std::string EncodeBroadcast(const std::vector<Draft>& drafts, const std::vector<uint64_t>& ids) const {
    nlohmann::json list = nlohmann::json::array(), id_list = nlohmann::json::array();
    for (const Draft& d : drafts) list.push_back(DraftToJson(d));
    for (uint64_t id : ids) id_list.push_back(std::to_string(id));
    return nlohmann::json{{"origin", std::to_string(cluster_->boot())}, {"ids", std::move(id_list)}, {"drafts", std::move(list)}}
        .dump();
  }

  // -- cluster: what other nodes send (NATS threads) --

  void OnClusterBlock(const std::string& room, std::string_view data) {
    auto decoded = DecodeFrames(data);
    if (!decoded.ok() || decoded->frames.size() != 1) {
      GetMetrics().cluster_errors->Inc();
      return;
    }
    auto frame = std::make_shared<const EncodedFrame>(std::move(decoded->frames.front()));
    const uint32_t home = OwnerOf(room);
    runtime_.Post(home, [this, home, room, frame] {
      ShardState& st = *shards_[home];
      auto it = st.owned.find(room);
      if (it == st.owned.end()) return;
      GetMetrics().blocks_received->Inc();
      DeliverToMembers(st, *it->second, frame);
    });
  }

  void OnClusterUser(const std::string& user, std::string_view data) {
    auto decoded = DecodeFrames(data);
    if (!decoded.ok()) {
      GetMetrics().cluster_errors->Inc();
      return;
    }
    if (decoded->origin_boot == cluster_->boot()) return;  // delivered here when it was published
    auto frames = std::make_shared<const std::vector<EncodedFrame>>(std::move(decoded->frames));
    for (uint32_t s = 0; s < runtime_.size(); ++s) {
      runtime_.Post(s, [this, s, user, frames] { DeliverPrivate(*shards_[s], user, *frames); });
    }
  }

  void OnClusterBroadcast(std::string_view data) {
    nlohmann::json j = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("origin") || !j["origin"].is_string() || !j.contains("ids") ||
        !j["ids"].is_array() || !j.contains("drafts") || !j["drafts"].is_array() ||
        j["ids"].size() != j["drafts"].size()) {
      GetMetrics().cluster_errors->Inc();
      return;
    }
    if (j["origin"].get<std::string>() == std::to_string(cluster_->boot())) return;  // enqueued here already
    auto drafts = std::make_shared<std::vector<Draft>>();
    auto ids = std::make_shared<std::vector<uint64_t>>();
    for (size_t i = 0; i < j["ids"].size(); ++i) {
      auto d = DraftFromJson(j["drafts"][i]);
      if (!d.ok() || !j["ids"][i].is_string()) {
        GetMetrics().cluster_errors->Inc();
        return;
      }
      drafts->push_back(std::move(*d));
      ids->push_back(std::strtoull(j["ids"][i].get_ref<const std::string&>().c_str(), nullptr, 10));
    }
    for (uint32_t s = 0; s < runtime_.size(); ++s) {
      runtime_.Post(s, [this, s, drafts, ids] { EnqueueBroadcast(*shards_[s], *drafts, *ids); });
    }
  }

  // Joins and leaves the nodes announced for a room this node owns: into its presence notice.
  void OnClusterPresence(const std::string& room, int64_t joins, int64_t leaves) {
    const uint32_t home = OwnerOf(room);
    runtime_.Post(home, [this, home, room, joins, leaves] {
      if (stopping_.load()) return;
      OwnedRoom& r = RoomOf(*shards_[home], room);
      DispatcherOf(r);
      r.joins += joins;
      r.leaves += leaves;
    });
  }

  // Every announce_interval on shard 0: announce, forget silent nodes, and when the live set
  // changed start dispatchers for the rooms with members this node now owns (the rooms it lost
  // release theirs in Tick once drained).
  void ClusterTick() {
    if (!cluster_->Tick(SystemClock::Instance().Now())) return;
    const uint32_t self = cluster_->self();
    std::vector<uint32_t> live = cluster_->LiveNodes();
    static auto log = GetLogger("live");
    std::string nodes;
    for (uint32_t n : live) nodes += (nodes.empty() ? "" : ",") + std::to_string(n);
    log->info("live cluster: live nodes now [{}]", nodes);
    for (std::string& room : cluster_->Rooms()) {
      if (RendezvousOwner(room, live) != self) continue;
      const uint32_t home = OwnerOf(room);
      runtime_.Post(home, [this, home, room = std::move(room)] {
        if (stopping_.load()) return;
        DispatcherOf(RoomOf(*shards_[home], room));
      });
    }
  }

  // Under the lock, so the callback sees the changes in order.
  void SetReady(bool ready, std::string detail) {
    MutexLock lock(readiness_mu_);
    ready_state_ = std::make_pair(ready, detail);
    if (readiness_) readiness_(ready, std::move(detail));
  }
  std::string ClusterDetail(bool connected) const {
    return "cluster node " + std::to_string(cluster_->self()) + ", nats " + (connected ? "connected" : "disconnected");
  }

  // -- WebSocket --

  Result<std::any> AcceptWs(const net::HttpRequest& req) {
    auto token = req.Token(/*allow_query=*/true);
    if (!token) return Unauthenticated("missing token (?token= or Authorization: Bearer)");
    CHORUS_ASSIGN_OR_RETURN(net::TokenClaims claims, signer_.Verify(*token, SystemClock::Instance()));
    if (claims.kind != net::TokenClaims::Kind::kUser) {
      return PermissionDenied("a user token is required to subscribe");
    }
    WsContext ctx;
    ctx.user = claims.subject;
    ctx.level = claims.level;
    if (auto format = req.Query("format")) {
      if (*format == "json") {
        ctx.json = true;
      } else if (*format != "protobuf" && *format != "proto") {
        return InvalidArgument("format must be json or protobuf");
      }
    }
    if (options_.max_ws_connections > 0 && connections_.load() >= static_cast<int64_t>(options_.max_ws_connections)) {
      return Unavailable("live WebSocket capacity reached; use short polling (GET /v1/connect)");
    }
    return std::any(std::move(ctx));
  }

  void OnOpen(const std::shared_ptr<net::WebSocketConnection>& conn) {
    const auto& ctx = std::any_cast<const WsContext&>(conn->context());
    ShardState& st = Here();
    ConnInfo& info = st.conns[conn->id()];
    info.conn = conn;
    info.user = ctx.user;
    info.level = ctx.level;
    info.json = ctx.json;
    st.users[ctx.user].insert(conn->id());
    connections_.fetch_add(1);
    GetMetrics().connections->Add(1);
    const int64_t heartbeat_ms = std::chrono::duration_cast<std::chrono::milliseconds>(options_.heartbeat).count();
    conn->Send(EncodeWelcome(ctx.user, conn->id(), heartbeat_ms).For(info.json), !info.json);
  }

  void SendError(ConnInfo& info, std::string_view code, std::string_view message) {
    GetMetrics().bad_frames->Inc();
    info.conn->Send(EncodeError(code, message).For(info.json), !info.json);
  }

  void OnMessage(net::WebSocketConnection& conn, std::string_view data, bool binary) {
    ShardState& st = Here();
    auto it = st.conns.find(conn.id());
    if (it == st.conns.end()) return;
    ConnInfo& info = it->second;
    auto op = ParseClientFrame(data, binary);
    if (!op.ok()) {
      SendError(info, op.status().code() == StatusCode::kNotFound ? "unknown_op" : "bad_frame", op.status().message());
      return;
    }
    switch (op->kind) {
      case ClientOp::Kind::kPing:
        conn.Send(EncodePong(op->ts, WallMs()).For(info.json), !info.json);
        return;
      case ClientOp::Kind::kSubscribe:
        Subscribe(st, info, op->room);
        return;
      case ClientOp::Kind::kUnsubscribe:
        if (Status s = ValidateRoomId(op->room); !s.ok()) return SendError(info, "bad_room", s.message());
        if (!Leave(st, info, op->room)) return SendError(info, "not_subscribed", "not subscribed to " + op->room);
        info.conn->Send(EncodeUnsubscribed(op->room).For(info.json), !info.json);
        return;
      case ClientOp::Kind::kChat:
        return ChatOp(info, std::move(op->room), std::move(op->text));
    }
  }

  // -- viewer chat --

  void ChatOp(ConnInfo& info, std::string room, std::string text) {
    if (Status s = ValidateRoomId(room); !s.ok()) return SendError(info, "bad_room", s.message());
    if (std::none_of(info.rooms.begin(), info.rooms.end(), [&](const auto& r) { return r.first == room; })) {
      return SendError(info, "not_subscribed", "chat needs a subscription to " + room);
    }
    // The connection may be gone when the verdict comes back: Send then returns false.
    Chat(room, info.user, info.level, std::move(text),
         [conn = info.conn, json = info.json, room](Result<uint64_t> id) {
           if (id.ok()) {
             conn->Send(EncodeChatOk(room, *id).For(json), !json);
             return;
           }
           conn->Send(EncodeError(ChatErrorCode(id.status().code()), id.status().message()).For(json), !json);
         });
  }

  static std::string_view ChatErrorCode(StatusCode code) {
    switch (code) {
      case StatusCode::kPermissionDenied: return "moderation_rejected";
      case StatusCode::kResourceExhausted: return "rate_limited";
      case StatusCode::kUnavailable: return "moderation_unavailable";
      default: return "bad_frame";
    }
  }

  // Takes one chat token from the user's bucket; false when empty.
  bool TakeChatToken(const std::string& user) {
    const SteadyTime now = SystemClock::Instance().Now();
    MutexLock lock(chat_mu_);
    if (chat_buckets_.size() > 100'000) {  // forget idle users (full buckets) now and then
      std::erase_if(chat_buckets_, [&](const auto& e) { return now - e.second.at > std::chrono::minutes(10); });
    }
    auto [it, fresh] = chat_buckets_.try_emplace(user, ChatBucket{options_.chat.burst, now});
    ChatBucket& b = it->second;
    if (!fresh) {
      const double elapsed_min = std::chrono::duration<double>(now - b.at).count() / 60.0;
      b.tokens = std::min(options_.chat.burst, b.tokens + elapsed_min * options_.chat.per_minute);
      b.at = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  void Chat(std::string room, std::string user, int32_t level, std::string text,
            std::function<void(Result<uint64_t>)> done) {
    if (Status s = ValidateRoomId(room); !s.ok()) return done(s);
    if (text.empty()) return done(InvalidArgument("chat text is empty"));
    if (text.size() > options_.chat.max_bytes) {
      return done(InvalidArgument("chat text is " + std::to_string(text.size()) + " bytes; at most " +
                                  std::to_string(options_.chat.max_bytes) + " are allowed"));
    }
    if (!IsValidUtf8(text)) return done(InvalidArgument("chat text is not valid UTF-8"));
    if (!TakeChatToken(user)) {
      GetMetrics().chat[kChatRateLimited]->Inc();
      return done(ResourceExhausted("too many chat messages; at most " +
                                    std::to_string(static_cast<int64_t>(options_.chat.per_minute)) + " per minute"));
    }
    auto publish = [this, room, user, level, text](std::function<void(Result<uint64_t>)> done) {
      Draft d;
      d.message.type = "chat";
      d.message.sender_id = user;
      d.message.sender_level = level > 0 ? level : options_.chat.default_level;
      d.message.payload = nlohmann::json{{"text", text}}.dump();
      std::vector<Draft> drafts;
      drafts.push_back(std::move(d));
      PublishRoom(room, std::move(drafts), [done = std::move(done)](Result<PublishResult> res) {
        if (!res.ok()) return done(res.status());
        GetMetrics().chat[kChatPublished]->Inc();
        done(res->ids.front());
      });
    };
    if (!moderator_) return publish(std::move(done));
    moderator_(room, text, [publish, done = std::move(done)](Result<LiveService::ChatVerdict> verdict) mutable {
      if (!verdict.ok()) {
        GetMetrics().chat[kChatUnavailable]->Inc();
        return done(Unavailable("chat moderation is unavailable: " + verdict.status().message()));
      }
      if (!verdict->allowed) {
        GetMetrics().chat[kChatRejected]->Inc();
        return done(PermissionDenied(verdict->reason.empty() ? "rejected by moderation"
                                                             : "rejected by moderation: " + verdict->reason));
      }
      publish(std::move(done));
    });
  }

  void HandleChat(net::HttpRequest& req, net::HttpResponder r) {
    auto token = req.Token(/*allow_query=*/false);
    if (!token) return r.SendStatus(Unauthenticated("missing bearer token"));
    auto claims = signer_.Verify(*token, SystemClock::Instance());
    if (!claims.ok()) return r.SendStatus(claims.status());
    if (claims->kind != net::TokenClaims::Kind::kUser) return r.SendStatus(PermissionDenied("chat needs a user token"));
    std::string room(req.Param("room"));
    if (Status s = ValidateRoomId(room); !s.ok()) return r.SendStatus(s);
    auto body = net::ParseJsonBody(req);
    if (!body.ok()) return r.SendStatus(body.status());
    auto text = body->find("text");
    if (!body->is_object() || text == body->end() || !text->is_string()) {
      return r.SendStatus(InvalidArgument("body must be {\"text\": \"...\"}"));
    }
    auto rp = std::make_shared<net::HttpResponder>(std::move(r));
    Chat(room, claims->subject, claims->level, text->get<std::string>(), [rp, room](Result<uint64_t> id) {
      if (id.ok()) return rp->Send(net::JsonResponse(200, {{"room", room}, {"id", std::to_string(*id)}}));
      if (id.status().code() == StatusCode::kPermissionDenied) {
        // 422: the request was understood and refused for its content, not for the caller's rights.
        return rp->Send(net::JsonResponse(
            422, {{"error", {{"code", "moderation_rejected"}, {"message", id.status().message()}}}}));
      }
      rp->SendStatus(id.status());
    });
  }

  void Subscribe(ShardState& st, ConnInfo& info, const std::string& room) {
    if (Status s = ValidateRoomId(room); !s.ok()) return SendError(info, "bad_room", s.message());
    const bool already = std::any_of(info.rooms.begin(), info.rooms.end(), [&](const auto& r) { return r.first == room; });
    if (!already) {
      if (info.rooms.size() >= options_.max_rooms_per_connection) {
        return SendError(info, "too_many_rooms",
                         "a connection may be in at most " + std::to_string(options_.max_rooms_per_connection) +
                             " rooms; unsubscribe first");
      }
      auto& members = st.local[room];
      if (!members) members = std::make_unique<MemberShards<Subscriber>>(options_.shard_size);
      members->Join(info.conn->id(), Subscriber{info.conn, info.json, &info.dropped_seen});
      info.rooms.emplace_back(room, SystemClock::Instance().Now());
      GetMetrics().subscriptions->Add(1);
      const uint32_t owner = OwnerOf(room), from = st.index;
      runtime_.Post(owner, [this, owner, room, from] { MembersChanged(*shards_[owner], room, from, +1); });
    }
    // The count the owner last published, plus this join if it has not arrived yet.
    const int64_t online = OnlineOf(room) + (already ? 0 : 1);
    info.conn->Send(EncodeSubscribed(room, online).For(info.json), !info.json);
  }

  bool Leave(ShardState& st, ConnInfo& info, const std::string& room) {
    auto r = std::find_if(info.rooms.begin(), info.rooms.end(), [&](const auto& e) { return e.first == room; });
    if (r == info.rooms.end()) return false;
    const double dwell = std::chrono::duration<double>(SystemClock::Instance().Now() - r->second).count();
    info.rooms.erase(r);
    auto local = st.local.find(room);
    if (local != st.local.end()) {
      local->second->Leave(info.conn->id());
      if (local->second->empty()) st.local.erase(local);
    }
    GetMetrics().subscriptions->Sub(1);
    GetMetrics().dwell->Observe(dwell);
    static auto log = GetLogger("live");
    log->debug("event=leave room={} user={} dwell_s={:.3f}", room, info.user, dwell);
    const uint32_t owner = OwnerOf(room), from = st.index;
    runtime_.Post(owner, [this, owner, room, from] { MembersChanged(*shards_[owner], room, from, -1); });
    return true;
  }

  void OnClose(net::WebSocketConnection& conn, uint16_t) {
    ShardState& st = Here();
    auto it = st.conns.find(conn.id());
    if (it == st.conns.end()) return;
    ConnInfo& info = it->second;
    while (!info.rooms.empty()) {
      std::string room = info.rooms.back().first;
      Leave(st, info, room);
    }
    if (auto u = st.users.find(info.user); u != st.users.end()) {
      u->second.erase(conn.id());
      if (u->second.empty()) st.users.erase(u);
    }
    st.conns.erase(it);
    connections_.fetch_sub(1);
    GetMetrics().connections->Sub(1);
  }

  // -- HTTP --

  Status RequirePublisher(const net::HttpRequest& req) {
    auto token = req.Token(/*allow_query=*/false);
    if (!token) return Unauthenticated("missing bearer token");
    CHORUS_ASSIGN_OR_RETURN(net::TokenClaims claims, signer_.Verify(*token, SystemClock::Instance()));
    return net::RequireScope(claims, kPublishScope);
  }

  // Body: one message object or {"messages": [...]}.
  Result<std::vector<Draft>> ParseDrafts(const net::HttpRequest& req) {
    CHORUS_ASSIGN_OR_RETURN(nlohmann::json body, net::ParseJsonBody(req));
    std::vector<Draft> drafts;
    auto one = [&](const nlohmann::json& j, std::string_view where) -> Status {
      auto d = ParseDraftJson(j, options_.max_payload_bytes);
      if (!d.ok()) return InvalidArgument(std::string(where) + d.status().message());
      drafts.push_back(std::move(*d));
      return Status::Ok();
    };
    if (body.is_object() && body.contains("messages") && !body.contains("type")) {
      const nlohmann::json& list = body["messages"];
      if (!list.is_array() || list.empty()) return InvalidArgument("messages must be a non-empty array");
      if (list.size() > options_.max_batch) {
        return InvalidArgument("at most " + std::to_string(options_.max_batch) + " messages per request");
      }
      for (size_t i = 0; i < list.size(); ++i) {
        CHORUS_RETURN_IF_ERROR(one(list[i], "messages[" + std::to_string(i) + "]: "));
      }
    } else {
      CHORUS_RETURN_IF_ERROR(one(body, ""));
    }
    return drafts;
  }

  static void Respond(net::HttpResponder& r, const std::string& target_key, const std::string& target,
                      Result<PublishResult> result) {
    if (!result.ok()) return r.SendStatus(result.status());
    std::string body = "{\"" + target_key + "\":\"" + target + "\",\"ids\":[";
    for (size_t i = 0; i < result->ids.size(); ++i) {
      if (i) body += ',';
      body += '"' + std::to_string(result->ids[i]) + '"';
    }
    body += "],\"reached\":" + std::to_string(result->reached);
    if (result->poll_store_failed) body += ",\"poll_store_failed\":true";
    body += "}";
    r.Send(net::HttpResponse::Json(200, std::move(body)));
  }

  void HandlePublishRoom(net::HttpRequest& req, net::HttpResponder r) {
    if (Status s = RequirePublisher(req); !s.ok()) return r.SendStatus(s);
    std::string room(req.Param("room"));
    if (Status s = ValidateRoomId(room); !s.ok()) return r.SendStatus(s);
    auto drafts = ParseDrafts(req);
    if (!drafts.ok()) return r.SendStatus(drafts.status());
    auto rp = std::make_shared<net::HttpResponder>(std::move(r));
    PublishRoom(room, std::move(*drafts), [rp, room](Result<PublishResult> res) {
      Respond(*rp, "room", room, std::move(res));
    });
  }

  void HandlePublishUser(net::HttpRequest& req, net::HttpResponder r) {
    if (Status s = RequirePublisher(req); !s.ok()) return r.SendStatus(s);
    std::string user(req.Param("user"));
    if (Status s = ValidateUserId(user); !s.ok()) return r.SendStatus(s);
    auto drafts = ParseDrafts(req);
    if (!drafts.ok()) return r.SendStatus(drafts.status());
    auto rp = std::make_shared<net::HttpResponder>(std::move(r));
    PublishUser(user, std::move(*drafts), [rp, user](Result<PublishResult> res) {
      Respond(*rp, "user", user, std::move(res));
    });
  }

  void HandleBroadcast(net::HttpRequest& req, net::HttpResponder r) {
    if (Status s = RequirePublisher(req); !s.ok()) return r.SendStatus(s);
    auto drafts = ParseDrafts(req);
    if (!drafts.ok()) return r.SendStatus(drafts.status());
    auto rp = std::make_shared<net::HttpResponder>(std::move(r));
    Broadcast(std::move(*drafts), [rp](Result<PublishResult> res) {
      Respond(*rp, "target", "broadcast", std::move(res));
    });
  }

  void HandleConnect(net::HttpRequest& req, net::HttpResponder r) {
    auto room_q = req.Query("room");
    if (!room_q) return r.SendStatus(InvalidArgument("room is required"));
    std::string room(*room_q);
    if (Status s = ValidateRoomId(room); !s.ok()) return r.SendStatus(s);
    const int64_t online = OnlineOf(room);
    const int64_t poll_ms = options_.PollMs(online);
    const bool ws_capable = req.Query("ws").value_or("1") != "0";
    const bool ws_full = options_.max_ws_connections > 0 &&
                         connections_.load() >= static_cast<int64_t>(options_.max_ws_connections);
    nlohmann::json out = {{"room", room}, {"online", online}, {"poll_ms", poll_ms},
                          {"poll_url", "/v1/rooms/" + room + "/messages"}};
    if (ws_capable && !ws_full) {
      std::string url = options_.public_ws_url;
      if (url.empty()) {
        std::string_view host = req.Header("host");
        url = "ws://" + std::string(host.empty() ? "127.0.0.1" : host) + "/v1/ws";
      }
      out["transport"] = "websocket";
      out["urls"] = nlohmann::json::array({url});
    } else {
      out["transport"] = "poll";
      out["reason"] = ws_full ? "websocket capacity reached" : "client cannot use WebSocket";
    }
    r.Send(net::JsonResponse(200, out));
  }

  // GET /v1/live/cluster[?room=R]: this node, the live nodes and (with a room) its owner and
  // online count as this node sees them. For operators and tests.
  void HandleCluster(net::HttpRequest& req, net::HttpResponder r) {
    nlohmann::json out;
    out["enabled"] = cluster_ != nullptr;
    out["node"] = options_.node_id;
    if (cluster_) {
      out["boot"] = std::to_string(cluster_->boot());
      out["nats"] = cluster_->connected() ? "connected" : "disconnected";
      out["nodes"] = cluster_->LiveNodes();
    } else {
      out["nodes"] = nlohmann::json::array({options_.node_id});
    }
    if (auto room_q = req.Query("room")) {
      std::string room(*room_q);
      if (Status s = ValidateRoomId(room); !s.ok()) return r.SendStatus(s);
      const std::optional<uint32_t> owner = cluster_ ? cluster_->OwnerOf(room) : std::optional<uint32_t>(options_.node_id);
      out["room"] = room;
      out["owner"] = owner ? nlohmann::json(*owner) : nlohmann::json(nullptr);
      out["online"] = OnlineOf(room);
    }
    r.Send(net::JsonResponse(200, out));
  }

  void HandlePoll(net::HttpRequest& req, net::HttpResponder r) {
    if (options_.poll_requires_token || req.Token(false)) {
      auto token = req.Token(/*allow_query=*/true);
      if (!token) return r.SendStatus(Unauthenticated("missing token"));
      auto claims = signer_.Verify(*token, SystemClock::Instance());
      if (!claims.ok()) return r.SendStatus(claims.status());
    }
    std::string room(req.Param("room"));
    if (Status s = ValidateRoomId(room); !s.ok()) return r.SendStatus(s);
    PollQuery q;
    q.room = room;
    q.limit = options_.poll_limit_default;
    int64_t since = 0;
    for (const auto& [key, value] : req.query) {
      if (key == "since") {
        auto v = ParseInt(value, "since");
        if (!v.ok()) return r.SendStatus(v.status());
        if (*v < 0) return r.SendStatus(InvalidArgument("since must be >= 0"));
        since = *v;
      } else if (key == "limit") {
        auto v = ParseInt(value, "limit");
        if (!v.ok()) return r.SendStatus(v.status());
        if (*v < 1) return r.SendStatus(InvalidArgument("limit must be >= 1"));
        q.limit = std::min<size_t>(static_cast<size_t>(*v), options_.poll_limit_max);
      } else if (key == "types") {
        size_t start = 0;
        while (start <= value.size()) {
          size_t comma = value.find(',', start);
          if (comma == std::string::npos) comma = value.size();
          std::string type = value.substr(start, comma - start);
          if (!type.empty() && std::find(q.types.begin(), q.types.end(), type) == q.types.end()) {
            q.types.push_back(std::move(type));
          }
          start = comma + 1;
        }
        if (q.types.size() > 16) return r.SendStatus(InvalidArgument("at most 16 types"));
      } else if (key == "token") {
        // Checked above, with the Authorization header.
      } else {
        return r.SendStatus(InvalidArgument("unknown query parameter " + key + " (since, limit, types)"));
      }
    }
    // Clamp: never before the retention window, never after now. Messages of the current
    // millisecond wait for the next poll, so a message stamped in it cannot be skipped.
    const int64_t now = WallMs();
    q.until = now - 1;
    const int64_t floor = now - options_.retention.max_age_ms;
    if (since == 0 || since < floor) since = floor;
    if (since > q.until) since = q.until;
    q.since = since;
    const int64_t poll_ms = options_.PollMs(OnlineOf(room));
    GetMetrics().polls->Inc();
    auto rp = std::make_shared<net::HttpResponder>(std::move(r));
    store_->Query(std::move(q), [rp, poll_ms](Result<PollResult> res) {
      net::HttpResponder& r = *rp;
      if (!res.ok()) return r.SendStatus(res.status());
      std::string body;
      size_t bytes = 64;
      for (const auto& m : res->messages) bytes += m.json->size() + 1;
      body.reserve(bytes);
      body += "{\"messages\":[";
      for (size_t i = 0; i < res->messages.size(); ++i) {
        if (i) body += ',';
        body += *res->messages[i].json;
      }
      body += "],\"next_since\":";
      body += std::to_string(res->newest);
      body += ",\"next_poll_ms\":";
      body += std::to_string(poll_ms);
      body += "}";
      r.Send(net::HttpResponse::Json(200, std::move(body)));
    });
  }

  Status AddRoutes(net::Router& router) {
    using net::HttpRequest;
    using net::HttpResponder;
    CHORUS_RETURN_IF_ERROR(router.Add("POST", "/v1/rooms/{room}/messages",
                                      [this](HttpRequest& q, HttpResponder r) { HandlePublishRoom(q, std::move(r)); }));
    CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/rooms/{room}/messages",
                                      [this](HttpRequest& q, HttpResponder r) { HandlePoll(q, std::move(r)); }));
    CHORUS_RETURN_IF_ERROR(
        router.Add("POST", "/v1/rooms/{room}/chat", [this](HttpRequest& q, HttpResponder r) { HandleChat(q, std::move(r)); }));
    CHORUS_RETURN_IF_ERROR(router.Add("POST", "/v1/users/{user}/messages",
                                      [this](HttpRequest& q, HttpResponder r) { HandlePublishUser(q, std::move(r)); }));
    CHORUS_RETURN_IF_ERROR(
        router.Add("POST", "/v1/broadcast", [this](HttpRequest& q, HttpResponder r) { HandleBroadcast(q, std::move(r)); }));
    CHORUS_RETURN_IF_ERROR(
        router.Add("GET", "/v1/connect", [this](HttpRequest& q, HttpResponder r) { HandleConnect(q, std::move(r)); }));
    CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/live/cluster",
                                      [this](HttpRequest& q, HttpResponder r) { HandleCluster(q, std::move(r)); }));
    net::WebSocketHandler ws;
    ws.accept = [this](const HttpRequest& q) { return AcceptWs(q); };
    ws.on_open = [this](const std::shared_ptr<net::WebSocketConnection>& c) { OnOpen(c); };
    ws.on_message = [this](net::WebSocketConnection& c, std::string_view d, bool b) { OnMessage(c, d, b); };
    ws.on_close = [this](net::WebSocketConnection& c, uint16_t code) { OnClose(c, code); };
    ws.options.max_message_bytes = options_.max_frame_bytes;
    ws.options.max_queue_bytes = options_.outbound_queue_bytes;
    ws.options.max_queue_messages = 4096;
    ws.options.overflow = net::WsOverflow::kDropOldest;
    ws.options.slow_client_grace = options_.slow_client_grace;
    ws.options.idle_timeout = options_.idle_timeout;
    return router.AddWebSocket("/v1/ws", std::move(ws));
  }

  void Start() {
    // Housekeeping on shard 0: the poll store forgets what is past its retention window.
    runtime_.Post(0, [this] {
      shards_[0]->housekeeping = runtime_.shard(0).RunEvery(std::chrono::seconds(5), [this] { store_->Sweep(WallMs()); });
    });
    if (!cluster_) {
      SetReady(true, "");
      return;
    }
    Cluster::Handlers h;
    h.forward = [this](std::string request, std::function<void(std::string)> reply) {
      OnForward(std::move(request), std::move(reply));
    };
    h.block = [this](const std::string& room, std::string_view data) { OnClusterBlock(room, data); };
    h.user = [this](const std::string& user, std::string_view data) { OnClusterUser(user, data); };
    h.broadcast = [this](std::string_view data) { OnClusterBroadcast(data); };
    h.presence = [this](const std::string& room, int64_t joins, int64_t leaves) {
      OnClusterPresence(room, joins, leaves);
    };
    h.state = [this](bool connected) {
      static auto log = GetLogger("live");
      if (connected) {
        log->info("live cluster: connected to NATS");
      } else {
        log->warn("live cluster: NATS connection lost; publishes are refused until it is back");
      }
      SetReady(connected, ClusterDetail(connected));
    };
    if (Status st = cluster_->Start(std::move(h)); !st.ok()) {
      static auto log = GetLogger("live");
      log->error("live cluster: {}", st.ToString());
      SetReady(false, "cluster: " + st.ToString());
      return;
    }
    SetReady(cluster_->connected(), ClusterDetail(cluster_->connected()));
    runtime_.Post(0, [this] {
      if (stopping_.load()) return;
      shards_[0]->cluster_timer =
          runtime_.shard(0).RunEvery(options_.cluster.announce_interval, [this] { ClusterTick(); });
    });
  }

  void Stop() {
    // Cancel every timer on its own shard and wait. Tasks already posted may still run until the
    // runtime stops, but arm no timers: destroy the service only after Runtime::Stop().
    stopping_.store(true);
    for (uint32_t s = 0; s < runtime_.size(); ++s) {
      std::promise<void> cancelled;
      std::future<void> wait = cancelled.get_future();
      runtime_.Post(s, [this, s, cancelled = std::move(cancelled)]() mutable {
        ShardState& st = *shards_[s];
        net::Shard& shard = runtime_.shard(s);
        for (auto& [room, r] : st.owned) shard.Cancel(r->timer);
        if (st.housekeeping) shard.Cancel(st.housekeeping);
        if (st.cluster_timer) shard.Cancel(st.cluster_timer);
        cancelled.set_value();
      });
      // A runtime that is not running never answers: then no timer can fire either.
      wait.wait_for(std::chrono::seconds(2));
    }
    // No more NATS handlers after this; the client stays until the service is destroyed, so
    // replies still on their way from the shards can be sent.
    if (cluster_) cluster_->Stop();
  }

  net::Runtime& runtime_;
  const net::TokenSigner& signer_;
  LiveOptions options_;
  std::shared_ptr<PollStore> store_;
  std::map<std::string, DispatcherOptions, std::less<>> room_dispatch_;
  std::vector<std::unique_ptr<ShardState>> shards_;
  OnlineTable online_;
  std::atomic<int64_t> connections_{0};
  std::atomic<bool> stopping_{false};
  LiveService::ChatModerator moderator_;  // set before Start
  LiveService::RoomObserver observer_;    // set before Start
  std::unique_ptr<Cluster> cluster_;      // cluster mode only; set before Start
  Mutex readiness_mu_;
  LiveService::ReadinessCallback readiness_ GUARDED_BY(readiness_mu_);
  std::optional<std::pair<bool, std::string>> ready_state_ GUARDED_BY(readiness_mu_);  // the last SetReady

  struct ChatBucket {
    double tokens;
    SteadyTime at;
  };
  Mutex chat_mu_;
  std::unordered_map<std::string, ChatBucket> chat_buckets_ GUARDED_BY(chat_mu_);
};

// ---------------------------------------------------------------------------------------------

Result<std::unique_ptr<LiveService>> LiveService::Create(net::Runtime& runtime, const net::TokenSigner& signer,
                                                         LiveOptions options, std::shared_ptr<PollStore> store) {
  if (!store) return InvalidArgument("live: a poll store is required");
  if (options.dispatcher.block_max == 0) return InvalidArgument("live.block_max must be > 0");
  if (options.block_interval <= Duration::zero()) return InvalidArgument("live.block_interval must be > 0");
  uint32_t shard_bits = 0;
  while ((1u << shard_bits) < runtime.size()) ++shard_bits;
  if ((static_cast<uint64_t>(options.node_id) << shard_bits) >= 1024) {
    return InvalidArgument("live.node_id " + std::to_string(options.node_id) + " does not fit beside " +
                           std::to_string(runtime.size()) + " shards in the 10 node bits of an id (max " +
                           std::to_string((1024 >> shard_bits) - 1) + ")");
  }
  std::unique_ptr<Cluster> cluster;
  if (options.cluster.enabled) {
    CHORUS_ASSIGN_OR_RETURN(cluster, ConnectNatsCluster(options.cluster, options.node_id));
  }
  auto impl = std::make_unique<Impl>(runtime, signer, std::move(options), std::move(store));
  impl->cluster_ = std::move(cluster);
  return std::unique_ptr<LiveService>(new LiveService(std::move(impl)));
}

LiveService::LiveService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
void LiveService::SetChatModerator(ChatModerator moderator) { impl_->moderator_ = std::move(moderator); }
void LiveService::SetRoomObserver(RoomObserver observer) { impl_->observer_ = std::move(observer); }
void LiveService::SetReadinessCallback(ReadinessCallback cb) {
  MutexLock lock(impl_->readiness_mu_);
  impl_->readiness_ = std::move(cb);
  if (impl_->readiness_ && impl_->ready_state_) impl_->readiness_(impl_->ready_state_->first, impl_->ready_state_->second);
}
void LiveService::Chat(std::string room, std::string user, int32_t level, std::string text,
                       std::function<void(Result<uint64_t>)> done) {
  impl_->Chat(std::move(room), std::move(user), level, std::move(text), std::move(done));
}
LiveService::~LiveService() = default;

Status LiveService::AddRoutes(net::Router& router) { return impl_->AddRoutes(router); }
void LiveService::Start() { impl_->Start(); }
void LiveService::Stop() { impl_->Stop(); }
const LiveOptions& LiveService::options() const { return impl_->options_; }
const net::TokenSigner& LiveService::signer() const { return impl_->signer_; }

void LiveService::PublishRoom(std::string room, std::vector<Draft> drafts, PublishCallback done) {
  impl_->PublishRoom(std::move(room), std::move(drafts), std::move(done));
}
void LiveService::PublishUser(std::string user, std::vector<Draft> drafts, PublishCallback done) {
  impl_->PublishUser(std::move(user), std::move(drafts), std::move(done));
}
void LiveService::Broadcast(std::vector<Draft> drafts, PublishCallback done) {
  impl_->Broadcast(std::move(drafts), std::move(done));
}

}  // namespace chorus::live
