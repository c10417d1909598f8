#include "live/cluster.h"

#include <algorithm>
#include <cstring>
#include <random>

#include <nlohmann/json.hpp>

#include "base/logging.h"
#include "base/mutex.h"
#include "nats/nats_client.h"

namespace chorus::live {
namespace {

constexpr std::string_view kNodesSubject = "chorus.live.nodes";
constexpr std::string_view kBroadcastSubject = "chorus.live.broadcast";
constexpr std::string_view kUserPrefix = "chorus.live.user.";
constexpr std::string_view kBlockPrefix = "chorus.live.block.";

uint64_t Mix64(uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

std::string ForwardSubject(uint32_t node) { return "chorus.live.node." + std::to_string(node) + ".publish"; }

void PutU64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
void PutU32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}
bool GetU64(std::string_view& in, uint64_t& v) {
  if (in.size() < 8) return false;
  v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[static_cast<size_t>(i)]);
  in.remove_prefix(8);
  return true;
}
bool GetU32(std::string_view& in, uint32_t& v) {
  if (in.size() < 4) return false;
  v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(in[static_cast<size_t>(i)]);
  in.remove_prefix(4);
  return true;
}
bool GetBytes(std::string_view& in, std::shared_ptr<const std::string>& out) {
  uint32_t n = 0;
  if (!GetU32(in, n) || in.size() < n) return false;
  out = std::make_shared<const std::string>(in.substr(0, n));
  in.remove_prefix(n);
  return true;
}

}  // namespace

// ---- pure functions ------------------------------------------------------------------------------

uint64_t RendezvousScore(std::string_view key, uint32_t node) {
  uint64_t h = 0xCBF29CE484222325ULL;  // FNV-1a over the key, then mixed with the node
  for (char c : key) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001B3ULL;
  }
  return Mix64(h ^ Mix64(0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(node) + 1)));
}

std::optional<uint32_t> RendezvousOwner(std::string_view key, const std::vector<uint32_t>& nodes) {
  std::optional<uint32_t> best;
  uint64_t best_score = 0;
  for (uint32_t n : nodes) {
    const uint64_t s = RendezvousScore(key, n);
    if (!best || s > best_score || (s == best_score && n < *best)) {
      best = n;
      best_score = s;
    }
  }
  return best;
}

std::string SubjectToken(std::string_view id) {
  std::string out(id);
  std::replace(out.begin(), out.end(), '.', '~');
  return out;
}

std::string IdFromSubjectToken(std::string_view token) {
  std::string out(token);
  std::replace(out.begin(), out.end(), '~', '.');
  return out;
}

// ---- wire formats --------------------------------------------------------------------------------

std::string EncodeAnnouncement(const Announcement& a) {
  nlohmann::json rooms = nlohmann::json::array();
  for (const RoomCount& r : a.rooms) rooms.push_back({r.room, r.online, r.joins, r.leaves});
  // The boot id as a string: JSON numbers lose precision above 2^53 in other tools.
  return nlohmann::json{{"node", a.node}, {"boot", std::to_string(a.boot)}, {"rooms", std::move(rooms)}}.dump();
}

Result<Announcement> DecodeAnnouncement(std::string_view data) {
  nlohmann::json j = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
  auto bad = [](std::string_view why) { return InvalidArgument("live cluster announcement: " + std::string(why)); };
  if (!j.is_object()) return bad("not a JSON object");
  auto node = j.find("node"), boot = j.find("boot"), rooms = j.find("rooms");
  if (node == j.end() || !node->is_number_unsigned() || node->get<uint64_t>() > 0xFFFFFFFFu) return bad("bad node");
  if (boot == j.end() || !boot->is_string()) return bad("bad boot");
  if (rooms == j.end() || !rooms->is_array()) return bad("bad rooms");
  Announcement a;
  a.node = static_cast<uint32_t>(node->get<uint64_t>());
  const std::string& b = boot->get_ref<const std::string&>();
  char* end = nullptr;
  a.boot = std::strtoull(b.c_str(), &end, 10);
  if (b.empty() || end != b.c_str() + b.size()) return bad("bad boot");
  for (const nlohmann::json& r : *rooms) {
    if (!r.is_array() || r.size() != 4 || !r[0].is_string() || !r[1].is_number_integer() ||
        !r[2].is_number_integer() || !r[3].is_number_integer()) {
      return bad("bad room entry");
    }
    a.rooms.push_back(RoomCount{r[0].get<std::string>(), r[1].get<int64_t>(), r[2].get<int64_t>(), r[3].get<int64_t>()});
  }
  return a;
}

std::string EncodeFrames(uint64_t origin_boot, const std::vector<EncodedFrame>& frames) {
  size_t bytes = 12;
  for (const EncodedFrame& f : frames) bytes += 8 + f.proto->size() + f.json->size();
  std::string out;
  out.reserve(bytes);
  PutU64(out, origin_boot);
  PutU32(out, static_cast<uint32_t>(frames.size()));
  for (const EncodedFrame& f : frames) {
    PutU32(out, static_cast<uint32_t>(f.proto->size()));
    out += *f.proto;
    PutU32(out, static_cast<uint32_t>(f.json->size()));
    out += *f.json;
  }
  return out;
}

Result<DecodedFrames> DecodeFrames(std::string_view data) {
  DecodedFrames out;
  uint32_t count = 0;
  if (!GetU64(data, out.origin_boot) || !GetU32(data, count)) return InvalidArgument("live cluster frames: truncated");
  if (count > data.size() / 8) return InvalidArgument("live cluster frames: bad count");
  for (uint32_t i = 0; i < count; ++i) {
    EncodedFrame f;
    if (!GetBytes(data, f.proto) || !GetBytes(data, f.json)) return InvalidArgument("live cluster frames: truncated");
    out.frames.push_back(std::move(f));
  }
  if (!data.empty()) return InvalidArgument("live cluster frames: trailing bytes");
  return out;
}

// ---- NodeTable -----------------------------------------------------------------------------------

bool NodeTable::Observe(const Announcement& a, SteadyTime now) {
  Node& n = nodes_[a.node];
  const bool was_live = n.boot != 0 && !n.dead;
  n.boot = a.boot;
  n.last_seen = now;
  n.dead = false;
  // An announcement lists every room the node has members in: it replaces the previous one.
  n.online.clear();
  for (const RoomCount& r : a.rooms) {
    if (r.online > 0) n.online[r.room] = r.online;
  }
  if (a.node == self_ || was_live) return false;
  Recompute();
  return true;
}

bool NodeTable::Expire(SteadyTime now) {
  bool changed = false;
  for (auto it = nodes_.begin(); it != nodes_.end();) {
    if (it->first != self_ && now - it->second.last_seen > dead_after_) {
      changed |= !it->second.dead;
      it = nodes_.erase(it);
    } else {
      ++it;
    }
  }
  if (changed) Recompute();
  return changed;
}

bool NodeTable::MarkDead(uint32_t node) {
  if (node == self_) return false;
  auto it = nodes_.find(node);
  if (it == nodes_.end() || it->second.dead) return false;
  it->second.dead = true;
  Recompute();
  return true;
}

void NodeTable::Recompute() {
  live_.clear();
  bool self_seen = false;
  for (const auto& [id, n] : nodes_) {
    if (n.dead) continue;
    live_.push_back(id);
    self_seen |= id == self_;
  }
  if (!self_seen) live_.insert(std::lower_bound(live_.begin(), live_.end(), self_), self_);
}

int64_t NodeTable::Online(std::string_view room) const {
  int64_t sum = 0;
  const std::string key(room);
  for (const auto& [id, n] : nodes_) {
    if (n.dead) continue;
    auto it = n.online.find(key);
    if (it != n.online.end()) sum += it->second;
  }
  return sum;
}

std::vector<std::string> NodeTable::Rooms() const {
  std::vector<std::string> out;
  for (const auto& [id, n] : nodes_) {
    if (n.dead) continue;
    for (const auto& [room, online] : n.online) out.push_back(room);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

// ---- NatsCluster ---------------------------------------------------------------------------------

namespace {

class NatsCluster final : public Cluster {
 public:
  NatsCluster(const ClusterOptions& options, uint32_t self, uint64_t boot, std::unique_ptr<nats::NatsClient> client)
      : options_(options), self_(self), boot_(boot), client_(std::move(client)), table_(self, options.dead_after) {}
  ~NatsCluster() override { Stop(); }

  uint32_t self() const override { return self_; }
  uint64_t boot() const override { return boot_; }

  Status Start(Handlers handlers) override {
    handlers_ = std::move(handlers);
    client_->SetStateCallback([this](bool up) {
      if (handlers_.state) handlers_.state(up);
    });
    std::vector<std::unique_ptr<nats::Subscription>> subs;
    auto add = [&](Result<std::unique_ptr<nats::Subscription>> sub) -> Status {
      if (!sub.ok()) return sub.status();
      subs.push_back(std::move(*sub));
      return Status::Ok();
    };
    CHORUS_RETURN_IF_ERROR(add(client_->SubscribeMsgs(kNodesSubject, [this](const nats::NatsMessage& m) {
      OnAnnouncement(m.data);
    })));
    CHORUS_RETURN_IF_ERROR(add(client_->SubscribeMsgs(ForwardSubject(self_), [this](const nats::NatsMessage& m) {
      if (m.reply.empty()) return;
      handlers_.forward(std::string(m.data), [this, reply = std::string(m.reply)](std::string answer) {
        (void)client_->Respond(reply, answer);  // lost if NATS is down: the sender times out and retries
      });
    })));
    CHORUS_RETURN_IF_ERROR(add(client_->SubscribeMsgs(std::string(kUserPrefix) + "*", [this](const nats::NatsMessage& m) {
      handlers_.user(IdFromSubjectToken(m.subject.substr(kUserPrefix.size())), m.data);
    })));
    CHORUS_RETURN_IF_ERROR(add(client_->SubscribeMsgs(kBroadcastSubject, [this](const nats::NatsMessage& m) {
      handlers_.broadcast(m.data);
    })));
    MutexLock lock(mu_);
    node_subs_ = std::move(subs);
    return Status::Ok();
  }

  void Stop() override {
    std::vector<std::unique_ptr<nats::Subscription>> subs;
    std::unordered_map<std::string, std::unique_ptr<nats::Subscription>> rooms;
    {
      MutexLock lock(mu_);
      subs.swap(node_subs_);
      rooms.swap(room_subs_);
    }
    subs.clear();  // waits for handlers in flight, outside our lock (they take it)
    rooms.clear();
    client_->SetStateCallback(nullptr);
  }

  bool Tick(SteadyTime now) override {
    Announcement a;
    a.node = self_;
    a.boot = boot_;
    bool changed = false;
    {
      MutexLock lock(mu_);
      for (auto it = local_.begin(); it != local_.end();) {
        Local& l = it->second;
        if (l.online > 0 || l.joins > 0 || l.leaves > 0) {
          a.rooms.push_back(RoomCount{it->first, l.online, l.joins, l.leaves});
        }
        l.joins = l.leaves = 0;
        if (l.online <= 0) {
          it = local_.erase(it);
        } else {
          ++it;
        }
      }
      changed = table_.Expire(now);
    }
    (void)client_->Publish(kNodesSubject, EncodeAnnouncement(a));  // buffered by nats.c while down
    return changed;
  }

  void LocalChanged(const std::string& room, int64_t online, int64_t joins, int64_t leaves) override {
    MutexLock lock(mu_);
    Local& l = local_[room];
    l.online = online;
    l.joins += joins;
    l.leaves += leaves;
  }

  std::optional<uint32_t> OwnerOf(std::string_view room) const override {
    MutexLock lock(mu_);
    return table_.OwnerOf(room);
  }
  std::vector<uint32_t> LiveNodes() const override {
    MutexLock lock(mu_);
    return table_.live();
  }
  int64_t Online(std::string_view room) const override {
    MutexLock lock(mu_);
    return table_.Online(room);
  }
  std::vector<std::string> Rooms() const override {
    MutexLock lock(mu_);
    return table_.Rooms();
  }
  void MarkDead(uint32_t node) override {
    MutexLock lock(mu_);
    if (table_.MarkDead(node)) {
      static auto log = GetLogger("live");
      log->warn("live cluster: node {} did not answer a forward; treating it as dead", node);
    }
  }

  void Forward(uint32_t node, std::string_view request, Duration timeout,
               std::function<void(Result<std::string>)> done) override {
    auto ms = std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count());
    client_->RequestAsync(ForwardSubject(node), request, std::chrono::milliseconds(ms), std::move(done));
  }
  Status PublishBlock(std::string_view room, std::string_view data) override {
    return client_->Publish(std::string(kBlockPrefix) + SubjectToken(room), data);
  }
  Status PublishUser(std::string_view user, std::string_view data) override {
    return client_->Publish(std::string(kUserPrefix) + SubjectToken(user), data);
  }
  Status PublishBroadcast(std::string_view data) override { return client_->Publish(kBroadcastSubject, data); }

  void SubscribeRoom(const std::string& room) override {
    {
      MutexLock lock(mu_);
      if (room_subs_.count(room)) return;
    }
    auto sub = client_->SubscribeMsgs(std::string(kBlockPrefix) + SubjectToken(room),
                                      [this, room](const nats::NatsMessage& m) { handlers_.block(room, m.data); });
    if (!sub.ok()) {
      static auto log = GetLogger("live");
      log->error("live cluster: subscribing to the blocks of {}: {}", room, sub.status().ToString());
      return;
    }
    MutexLock lock(mu_);
    room_subs_.emplace(room, std::move(*sub));
  }
  void UnsubscribeRoom(const std::string& room) override {
    std::unique_ptr<nats::Subscription> sub;
    {
      MutexLock lock(mu_);
      auto it = room_subs_.find(room);
      if (it == room_subs_.end()) return;
      sub = std::move(it->second);
      room_subs_.erase(it);
    }
    sub.reset();  // outside the lock: waits for a handler in flight
  }

  bool connected() const override { return client_->connected(); }

 private:
  struct Local {
    int64_t online = 0, joins = 0, leaves = 0;
  };

  void OnAnnouncement(std::string_view data) {
    auto a = DecodeAnnouncement(data);
    if (!a.ok()) {
      static auto log = GetLogger("live");
      log->warn("live cluster: {}", a.status().ToString());
      return;
    }
    std::vector<RoomCount> mine;  // presence deltas of rooms this node owns
    {
      MutexLock lock(mu_);
      table_.Observe(*a, SystemClock::Instance().Now());
      for (const RoomCount& r : a->rooms) {
        if ((r.joins > 0 || r.leaves > 0) && table_.OwnerOf(r.room) == self_) mine.push_back(r);
      }
    }
    if (handlers_.presence) {
      for (const RoomCount& r : mine) handlers_.presence(r.room, r.joins, r.leaves);
    }
  }

  const ClusterOptions options_;
  const uint32_t self_;
  const uint64_t boot_;
  std::unique_ptr<nats::NatsClient> client_;
  Handlers handlers_;  // set by Start, before any subscription exists

  mutable Mutex mu_;
  NodeTable table_ GUARDED_BY(mu_);
  std::unordered_map<std::string, Local> local_ GUARDED_BY(mu_);
  std::vector<std::unique_ptr<nats::Subscription>> node_subs_ GUARDED_BY(mu_);
  std::unordered_map<std::string, std::unique_ptr<nats::Subscription>> room_subs_ GUARDED_BY(mu_);
};

}  // namespace

Result<std::unique_ptr<Cluster>> ConnectNatsCluster(const ClusterOptions& options, uint32_t self) {
  if (options.nats_urls.empty()) return InvalidArgument("live.cluster.nats_urls: at least one NATS URL is required");
  if (options.announce_interval <= Duration::zero()) {
    return InvalidArgument("live.cluster.announce_interval must be > 0");
  }
  if (options.dead_after <= options.announce_interval) {
    return InvalidArgument("live.cluster.dead_after must be longer than live.cluster.announce_interval");
  }
  nats::NatsOptions nats_options;
  nats_options.urls = options.nats_urls;
  nats_options.name = "chorus-live-" + std::to_string(self);
  nats_options.shared_delivery = true;  // one subscription per room with members: no thread each
  nats_options.reconnect_wait = std::chrono::milliseconds(250);
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<nats::NatsClient> client, nats::NatsClient::Connect(nats_options));
  std::random_device rd;
  uint64_t boot = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  if (boot == 0) boot = 1;  // 0 means "never heard of" in NodeTable
  return std::unique_ptr<Cluster>(new NatsCluster(options, self, boot, std::move(client)));
}

}  // namespace chorus::live
