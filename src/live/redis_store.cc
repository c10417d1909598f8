#include "live/redis_store.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "base/logging.h"
#include "net/runtime.h"

namespace chorus::live {
namespace {

using redis::RedisReply;

constexpr std::array<std::string_view, 4> kStandardTypes = {"gift", "chat", "pk", "notify"};
constexpr std::string_view kContext = "redis poll store";

const std::shared_ptr<spdlog::logger>& Log() {
  static const std::shared_ptr<spdlog::logger> logger = GetLogger("live");
  return logger;
}

// A member that is not a message we wrote: logged on occurrences 1, 2, 4, 8, ... so a polluted key
// cannot flood the log, and skipped.
void ReportBadMember(std::string_view key, std::string_view why) {
  static std::atomic<uint64_t> count{0};
  const uint64_t n = ++count;
  if ((n & (n - 1)) == 0) {
    Log()->error("redis poll store: skipping a member of {} that is not a stored message ({}); {} so far",
                 key, why, n);
  }
}

// The fields a query needs, read back from the message JSON that Finalize() rendered. The id is
// written as a string (JSON numbers lose precision past 2^53); a number is accepted too.
std::optional<StoredMessage> ParseMember(const std::string& text, std::string_view key) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    ReportBadMember(key, "not a JSON object");
    return std::nullopt;
  }
  StoredMessage m;
  auto id = j.find("id");
  if (id != j.end() && id->is_number_unsigned()) {
    m.id = id->get<uint64_t>();
  } else if (id != j.end() && id->is_string()) {
    const auto& s = id->get_ref<const std::string&>();
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), m.id);
    if (ec != std::errc() || end != s.data() + s.size()) {
      ReportBadMember(key, "id is not a number");
      return std::nullopt;
    }
  } else {
    ReportBadMember(key, "no id");
    return std::nullopt;
  }
  auto created = j.find("created_at");
  auto priority = j.find("priority");
  auto type = j.find("type");
  if (created == j.end() || !created->is_number_integer() || priority == j.end() ||
      !priority->is_number_integer() || type == j.end() || !type->is_string()) {
    ReportBadMember(key, "created_at, priority or type missing");
    return std::nullopt;
  }
  m.created_at = created->get<int64_t>();
  const int64_t p = priority->get<int64_t>();
  m.priority = static_cast<int32_t>(
      std::clamp<int64_t>(p, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
  m.type = type->get<std::string>();
  auto gain = j.find("gain_key");
  if (gain != j.end() && gain->is_string()) m.gain_key = gain->get<std::string>();
  m.json = std::make_shared<const std::string>(text);
  return m;
}

// Collects the replies of one pipelined Append and reports once. Lives on the client's shard.
struct AppendState {
  PollStore::AppendCallback done;
  Status status;
  size_t outstanding = 0;

  void Add(redis::RedisClient& client, std::vector<std::string> args,
           const std::shared_ptr<AppendState>& self) {
    ++outstanding;
    client.Command(std::move(args), [self](const Result<RedisReply>& r) {
      if (!r.ok() && self->status.ok()) self->status = r.status().WithContext(kContext);
      if (--self->outstanding == 0 && self->done) self->done(self->status);
    });
  }
};

// One Query in flight. Lives on the client's shard; commands are only ever added from a callback
// of a command still outstanding (or before the first reply), so `outstanding` cannot reach zero
// early: the client never runs a callback inline.
struct QueryState {
  PollQuery query;
  PollStore::QueryCallback done;
  std::shared_ptr<redis::RedisClient> client;
  size_t max_per_type = 0;
  std::vector<StoredMessage> candidates;
  std::vector<std::string> requested;  // types asked for so far
  Status status;
  size_t outstanding = 0;
  int64_t watermark = std::numeric_limits<int64_t>::min();

  bool Requested(std::string_view type) const {
    return std::find(requested.begin(), requested.end(), type) != requested.end();
  }

  void RequestType(std::string type, const std::shared_ptr<QueryState>& self) {
    std::string key = RedisPollStore::Key(query.room, type);
    requested.push_back(std::move(type));
    ++outstanding;
    client->Command({"ZRANGEBYSCORE", key, "(" + std::to_string(query.since), std::to_string(query.until),
                     "LIMIT", "0", std::to_string(max_per_type)},
                    [self, key](const Result<RedisReply>& r) {
                      if (!r.ok()) {
                        self->Fail(r.status());
                      } else if (r->is_array()) {
                        for (const RedisReply& e : r->elements) {
                          if (!e.is_string()) continue;
                          if (auto m = ParseMember(e.str, key)) self->candidates.push_back(std::move(*m));
                        }
                      }
                      self->Settle();
                    });
  }

  // Reads the room's type index: every type appended after `since`, asked for unless it already was.
  void RequestIndex(const std::shared_ptr<QueryState>& self) {
    ++outstanding;
    client->Command(
        {"ZRANGEBYSCORE", RedisPollStore::TypesKey(query.room), "(" + std::to_string(query.since), "+inf"},
        [self](const Result<RedisReply>& r) {
          if (!r.ok()) {
            self->Fail(r.status());
          } else if (r->is_array() && self->status.ok()) {
            for (const RedisReply& e : r->elements) {
              if (e.is_string() && !e.str.empty() && !self->Requested(e.str)) {
                self->RequestType(e.str, self);
              }
            }
          }
          self->Settle();
        });
  }

  void RequestWatermark(const std::shared_ptr<QueryState>& self) {
    ++outstanding;
    client->Command({"GET", RedisPollStore::WatermarkKey(query.room)}, [self](const Result<RedisReply>& r) {
      if (!r.ok()) {
        self->Fail(r.status());
      } else if (r->is_string()) {
        int64_t w = 0;
        auto [ptr, ec] = std::from_chars(r->str.data(), r->str.data() + r->str.size(), w);
        if (ec == std::errc() && ptr == r->str.data() + r->str.size()) self->watermark = w;
      }
      self->Settle();
    });
  }

  void Fail(const Status& s) {
    if (status.ok()) status = s.WithContext(kContext);
  }

  void Settle() {
    if (--outstanding > 0) return;
    if (!status.ok()) {
      done(status);
      return;
    }
    // No watermark: nothing of this room is stored yet, or it all expired.
    std::erase_if(candidates, [this](const StoredMessage& m) { return m.created_at > watermark; });
    done(SelectForPoll(std::move(candidates), query));
  }
};

}  // namespace

std::string RedisPollStore::Key(std::string_view room, std::string_view type) {
  std::string key;
  key.reserve(room.size() + type.size() + 8);
  key.append("live:{").append(room).append("}:").append(type);
  return key;
}

std::string RedisPollStore::WatermarkKey(std::string_view room) {
  std::string key;
  key.reserve(room.size() + 11);
  key.append("live:{").append(room).append("}:$wm");  // '$' cannot occur in a type name
  return key;
}

std::string RedisPollStore::TypesKey(std::string_view room) {
  std::string key;
  key.reserve(room.size() + 7);
  key.append("live:{").append(room).append("}");
  return key;
}

Result<std::unique_ptr<RedisPollStore>> RedisPollStore::Create(
    std::vector<std::shared_ptr<redis::RedisClient>> clients, RetentionOptions retention) {
  if (clients.empty()) return InvalidArgument("redis poll store: no Redis clients");
  for (size_t i = 0; i < clients.size(); ++i) {
    if (clients[i] == nullptr)
      return InvalidArgument("redis poll store: client " + std::to_string(i) + " is null");
    if (clients[i]->shard().index() != i) {
      return InvalidArgument("redis poll store: client " + std::to_string(i) + " is bound to shard " +
                             std::to_string(clients[i]->shard().index()));
    }
  }
  if (retention.max_per_type == 0 || retention.max_age_ms <= 0) {
    return InvalidArgument("redis poll store: retention must keep at least one message for at least 1 ms");
  }
  return std::unique_ptr<RedisPollStore>(new RedisPollStore(std::move(clients), retention));
}

Result<std::unique_ptr<RedisPollStore>> RedisPollStore::Connect(net::Runtime& runtime,
                                                                const redis::RedisOptions& options,
                                                                RetentionOptions retention) {
  std::vector<std::shared_ptr<redis::RedisClient>> clients;
  for (uint32_t i = 0; i < runtime.size(); ++i) {
    CHORUS_ASSIGN_OR_RETURN(std::shared_ptr<redis::RedisClient> client,
                            redis::RedisClient::Create(runtime.shard(i), options));
    clients.push_back(std::move(client));
  }
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<RedisPollStore> store, Create(std::move(clients), retention));
  for (const auto& client : store->clients_) client->Connect();
  return store;
}

redis::RedisClient& RedisPollStore::ClientForCaller() const {
  net::Shard* shard = net::Runtime::Current();
  return *clients_[shard == nullptr ? 0 : shard->index() % clients_.size()];
}

void RedisPollStore::Close() {
  for (const auto& client : clients_) client->Close();
}

void RedisPollStore::Append(std::string_view room, std::vector<StoredMessage> messages, AppendCallback done) {
  // One ZADD per type, members in append order; types in order of first appearance.
  struct TypeBatch {
    std::string type;
    std::vector<std::string> zadd;
    int64_t newest = 0;
  };
  std::vector<TypeBatch> batches;
  int64_t newest = std::numeric_limits<int64_t>::min();
  for (StoredMessage& m : messages) {
    if (m.json == nullptr) {  // a caller bug; the rest of the batch is still worth storing
      Log()->error("redis poll store: message {} of room {} has no JSON; not stored", m.id, room);
      continue;
    }
    auto batch =
        std::find_if(batches.begin(), batches.end(), [&](const TypeBatch& b) { return b.type == m.type; });
    if (batch == batches.end()) {
      batch = batches.insert(batches.end(), TypeBatch{m.type, {"ZADD", Key(room, m.type)}, m.created_at});
    }
    batch->zadd.push_back(std::to_string(m.created_at));
    batch->zadd.push_back(*m.json);
    batch->newest = std::max(batch->newest, m.created_at);
    newest = std::max(newest, m.created_at);
  }
  if (batches.empty()) {
    if (done) done(Status::Ok());
    return;
  }

  // Age is measured from the newest message appended, not the local clock: appends of a room come
  // in created_at order, and every process then trims the same way.
  const std::string keep_from = "(" + std::to_string(newest - retention_.max_age_ms);
  const std::string ttl_ms = std::to_string(retention_.max_age_ms * 2);
  const std::string drop_rank = "-" + std::to_string(retention_.max_per_type + 1);

  redis::RedisClient& client = ClientForCaller();
  auto state = std::make_shared<AppendState>();
  state->done = std::move(done);
  std::vector<std::string> index = {"ZADD", TypesKey(room)};
  for (TypeBatch& b : batches) {
    const std::string key = b.zadd[1];
    state->Add(client, std::move(b.zadd), state);
    state->Add(client, {"ZREMRANGEBYRANK", key, "0", drop_rank}, state);
    state->Add(client, {"ZREMRANGEBYSCORE", key, "-inf", keep_from}, state);
    state->Add(client, {"PEXPIRE", key, ttl_ms}, state);
    index.push_back(std::to_string(b.newest));
    index.push_back(std::move(b.type));
  }
  const std::string index_key = index[1];
  state->Add(client, std::move(index), state);
  state->Add(client, {"ZREMRANGEBYSCORE", index_key, "-inf", keep_from}, state);
  state->Add(client, {"PEXPIRE", index_key, ttl_ms}, state);
  // Last: the watermark. One connection runs these in order, so a reader that sees watermark W
  // also sees every message with created_at <= W (created_at strictly increases per room).
  state->Add(client, {"SET", WatermarkKey(room), std::to_string(newest), "PX", ttl_ms}, state);
}

void RedisPollStore::Query(PollQuery query, QueryCallback done) {
  if (query.until <= query.since) {  // nothing can match
    done(SelectForPoll({}, query));
    return;
  }
  redis::RedisClient& client = ClientForCaller();
  auto state = std::make_shared<QueryState>();
  state->client = client.shared_from_this();
  state->max_per_type = retention_.max_per_type;
  state->done = std::move(done);
  std::vector<std::string> types = query.types;
  state->query = std::move(query);
  // First, the watermark: the ranges below may also see appends that land after it, which are
  // filtered out so that the answer is a consistent prefix (see Append).
  state->RequestWatermark(state);
  if (types.empty()) {
    // Business types are found through the index, the standard ones asked for in the same round trip.
    for (std::string_view t : kStandardTypes) state->RequestType(std::string(t), state);
    state->RequestIndex(state);
  } else {
    for (std::string& t : types) {
      if (!state->Requested(t)) state->RequestType(std::move(t), state);
    }
  }
}

}  // namespace chorus::live
