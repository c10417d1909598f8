#include "live/message.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

#include "net/http.h"

namespace chorus::live {
namespace {

bool IsIdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-' || c == '.' || c == ':';
}

Status ValidateId(std::string_view what, std::string_view id, size_t max) {
  if (id.empty() || id.size() > max) {
    return InvalidArgument(std::string(what) + " must be 1.." + std::to_string(max) + " bytes");
  }
  if (!std::all_of(id.begin(), id.end(), IsIdChar)) {
    return InvalidArgument(std::string(what) + " may only contain letters, digits and _ - . :");
  }
  return Status::Ok();
}

Status ValidateType(std::string_view type) {
  if (type.empty() || type.size() > kMaxTypeBytes) {
    return InvalidArgument("type must be 1.." + std::to_string(kMaxTypeBytes) + " bytes");
  }
  for (char c : type) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
      return InvalidArgument("type may only contain a-z, 0-9 and _");
    }
  }
  return Status::Ok();
}

inline constexpr size_t kMaxPayloadDepth = 32;

// Walks the payload iteratively: nesting deeper than kMaxPayloadDepth or far more values than
// could fit in `max_bytes` is refused before anything recursive (dump) touches it.
Status CheckPayloadShape(const nlohmann::json& root, size_t max_bytes) {
  std::vector<std::pair<const nlohmann::json*, size_t>> stack = {{&root, 1}};
  size_t values = 0;
  while (!stack.empty()) {
    auto [v, depth] = stack.back();
    stack.pop_back();
    if (depth > kMaxPayloadDepth) {
      return InvalidArgument("payload nests deeper than " + std::to_string(kMaxPayloadDepth) + " levels");
    }
    if (++values > max_bytes) return InvalidArgument("payload is larger than " + std::to_string(max_bytes) + " bytes");
    if (v->is_structured()) {
      for (const auto& child : *v) stack.emplace_back(&child, depth + 1);
    }
  }
  return Status::Ok();
}

}  // namespace

Status ValidateRoomId(std::string_view room) { return ValidateId("room id", room, kMaxRoomIdBytes); }
Status ValidateUserId(std::string_view user) { return ValidateId("user id", user, kMaxRoomIdBytes); }

Result<Draft> ParseDraft(std::string_view text, size_t max_payload_bytes) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("message is not valid JSON");
  return ParseDraftJson(j, max_payload_bytes);
}

Result<Draft> ParseDraftJson(const nlohmann::json& j, size_t max_payload_bytes) {
  if (!j.is_object()) return InvalidArgument("message must be a JSON object");
  Draft d;
  Message& m = d.message;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const nlohmann::json& v = it.value();
    if (k == "type") {
      if (!v.is_string()) return InvalidArgument("type must be a string");
      m.type = v.get<std::string>();
    } else if (k == "priority") {
      if (!v.is_number_integer()) return InvalidArgument("priority must be an integer");
      const int64_t p = v.get<int64_t>();
      if (p < kMinPriority || p > kMaxPriority) return InvalidArgument("priority must be 0..1000");
      m.priority = static_cast<int32_t>(p);
      d.priority_set = true;
    } else if (k == "sender") {
      if (!v.is_object()) return InvalidArgument("sender must be an object {id, level}");
      for (auto s = v.begin(); s != v.end(); ++s) {
        if (s.key() == "id") {
          if (!s.value().is_string()) return InvalidArgument("sender.id must be a string");
          m.sender_id = s.value().get<std::string>();
          if (!m.sender_id.empty()) CHORUS_RETURN_IF_ERROR(ValidateId("sender.id", m.sender_id, kMaxRoomIdBytes));
        } else if (s.key() == "level") {
          if (!s.value().is_number_integer()) return InvalidArgument("sender.level must be an integer");
          const int64_t level = s.value().get<int64_t>();
          if (level < 0 || level > 1000) return InvalidArgument("sender.level must be 0..1000");
          m.sender_level = static_cast<int32_t>(level);
        } else {
          return InvalidArgument("unknown field sender." + s.key());
        }
      }
    } else if (k == "payload") {
      if (!v.is_object()) return InvalidArgument("payload must be a JSON object");
      // dump() recurses: bound the nesting before serializing (and the size, roughly, too).
      CHORUS_RETURN_IF_ERROR(CheckPayloadShape(v, max_payload_bytes));
      m.payload = v.dump();
      if (auto value = v.find("value"); value != v.end() && value->is_number()) {
        d.gift_value = value->get<double>();
      }
    } else if (k == "gain_key") {
      if (!v.is_string()) return InvalidArgument("gain_key must be a string");
      m.gain_key = v.get<std::string>();
      if (m.gain_key.size() > kMaxGainKeyBytes) return InvalidArgument("gain_key is longer than 64 bytes");
    } else if (k == "id" || k == "created_at" || k == "room" || k == "user") {
      // Assigned by the server (or taken from the URL); a client copy is ignored.
    } else {
      return InvalidArgument("unknown field " + k);
    }
  }
  if (m.type.empty()) return InvalidArgument("type is required");
  CHORUS_RETURN_IF_ERROR(ValidateType(m.type));
  if (m.payload.size() > max_payload_bytes) {
    return InvalidArgument("payload is " + std::to_string(m.payload.size()) + " bytes; the limit is " +
                           std::to_string(max_payload_bytes));
  }
  return d;
}

Result<PriorityRules> PriorityRules::FromJson(std::string_view text) {
  PriorityRules rules;
  if (text.empty()) return rules;
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !(j.is_object() || j.is_null())) return InvalidArgument("live.priority must be a map");
  if (j.is_null()) return rules;
  auto read_int = [](const nlohmann::json& v, const std::string& name, int32_t& out) -> Status {
    if (!v.is_number_integer() || v.get<int64_t>() < kMinPriority || v.get<int64_t>() > kMaxPriority) {
      return InvalidArgument("live.priority." + name + " must be an integer 0..1000");
    }
    out = static_cast<int32_t>(v.get<int64_t>());
    return Status::Ok();
  };
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k == "types") {
      if (!it->is_object()) return InvalidArgument("live.priority.types must be a map of type: priority");
      for (auto t = it->begin(); t != it->end(); ++t) {
        CHORUS_RETURN_IF_ERROR(ValidateType(t.key()));
        int32_t p = 0;
        CHORUS_RETURN_IF_ERROR(read_int(t.value(), "types." + t.key(), p));
        rules.base[t.key()] = p;
      }
    } else if (k == "default") {
      CHORUS_RETURN_IF_ERROR(read_int(*it, k, rules.default_base));
    } else if (k == "gift_bonus_max") {
      CHORUS_RETURN_IF_ERROR(read_int(*it, k, rules.gift_bonus_max));
    } else if (k == "level_bonus_max") {
      CHORUS_RETURN_IF_ERROR(read_int(*it, k, rules.level_bonus_max));
    } else if (k == "gift_step") {
      if (!it->is_number() || it->get<double>() <= 0) return InvalidArgument("live.priority.gift_step must be > 0");
      rules.gift_step = it->get<double>();
    } else {
      return InvalidArgument("unknown key live.priority." + k +
                             " (known: types, default, gift_step, gift_bonus_max, level_bonus_max)");
    }
  }
  return rules;
}

int32_t PriorityRules::Compute(const Draft& d) const {
  const Message& m = d.message;
  if (d.priority_set) return m.priority;
  auto it = base.find(m.type);
  int64_t p = it == base.end() ? default_base : it->second;
  if (m.type == "gift" && d.gift_value > 0) {
    // Clamp in double first: a huge (or infinite) value must not overflow the integer cast.
    p += static_cast<int64_t>(std::min(std::floor(d.gift_value / gift_step), static_cast<double>(gift_bonus_max)));
  } else if (m.type == "chat") {
    if (m.sender_id.empty()) {
      p -= 1;
    } else {
      p += std::min<int32_t>(m.sender_level, level_bonus_max);
    }
  }
  return static_cast<int32_t>(std::clamp<int64_t>(p, kMinPriority, kMaxPriority));
}

void Finalize(Message& m) {
  // Ids are strings in JSON: they exceed 2^53, which JavaScript numbers cannot hold exactly.
  std::string& s = m.json;
  s.clear();
  s.reserve(160 + m.payload.size());
  s += "{\"id\":\"";
  s += std::to_string(m.id);
  s += "\"";
  if (!m.room.empty()) {
    s += ",\"room\":\"";
    s += m.room;  // validated: no characters that need escaping
    s += "\"";
  }
  if (!m.user.empty()) {
    s += ",\"user\":\"";
    s += m.user;
    s += "\"";
  }
  s += ",\"type\":\"";
  s += m.type;
  s += "\",\"priority\":";
  s += std::to_string(m.priority);
  s += ",\"created_at\":";
  s += std::to_string(m.created_at);
  s += ",\"sender\":{\"id\":\"";
  s += m.sender_id;
  s += "\",\"level\":";
  s += std::to_string(m.sender_level);
  s += "},\"payload\":";
  s += m.payload;
  if (!m.gain_key.empty()) {
    s += ",\"gain_key\":\"";
    s += net::JsonEscape(m.gain_key);
    s += "\"";
  }
  s += "}";
}

IdGenerator::IdGenerator(uint32_t node, uint32_t shard, uint32_t shards) {
  uint32_t shard_bits = 0;
  while ((1u << shard_bits) < shards) ++shard_bits;
  node_bits_ = ((static_cast<uint64_t>(node) << shard_bits) | shard) & 0x3ff;
}

uint64_t IdGenerator::Next(int64_t wall_ms) {
  int64_t ms = std::max(wall_ms - kEpochMs, int64_t{0});
  if (ms <= last_ms_) {
    ms = last_ms_;
    if (++seq_ == 4096) {  // 4096 ids in one ms: borrow the next ms rather than repeat
      seq_ = 0;
      ms = ++last_ms_;
    }
  } else {
    seq_ = 0;
    last_ms_ = ms;
  }
  return (static_cast<uint64_t>(ms) << 22) | (node_bits_ << 12) | seq_;
}

}  // namespace chorus::live
