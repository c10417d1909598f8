#include "likes/model.h"

#include <cstring>

namespace chorus::likes {
namespace {

bool IdChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
         c == ':' || c == '-';
}

bool BusinessChar(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'; }

void PutFixed64(std::string& out, uint64_t v) {
  char buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(v >> (8 * i));
  out.append(buf, 8);
}

void PutString(std::string& out, std::string_view s) {
  // Ids are at most 64 bytes and namespaces 16: one length byte is enough.
  out.push_back(static_cast<char>(s.size()));
  out.append(s);
}

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool Byte(uint8_t* v) {
    if (in_.empty()) return false;
    *v = static_cast<uint8_t>(in_[0]);
    in_.remove_prefix(1);
    return true;
  }
  bool Fixed64(int64_t* v) {
    if (in_.size() < 8) return false;
    uint64_t x = 0;
    for (int i = 0; i < 8; ++i) x |= static_cast<uint64_t>(static_cast<uint8_t>(in_[i])) << (8 * i);
    in_.remove_prefix(8);
    *v = static_cast<int64_t>(x);
    return true;
  }
  bool String(std::string* s) {
    uint8_t n = 0;
    if (!Byte(&n) || in_.size() < n) return false;
    s->assign(in_.substr(0, n));
    in_.remove_prefix(n);
    return true;
  }
  bool State(LikeState* s) {
    uint8_t v = 0;
    if (!Byte(&v) || v > 2) return false;
    *s = static_cast<LikeState>(v);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

constexpr uint8_t kLogVersion = 1;
constexpr uint8_t kLogVersionIfState = 2;  // version 1 plus one byte: if_state
constexpr uint8_t kRecordVersion = 1;

}  // namespace

std::string_view StateName(LikeState s) {
  switch (s) {
    case LikeState::kNone: return "none";
    case LikeState::kLiked: return "liked";
    case LikeState::kDisliked: return "disliked";
  }
  return "none";
}

std::string_view ActionName(LikeAction a) {
  switch (a) {
    case LikeAction::kLike: return "like";
    case LikeAction::kUnlike: return "unlike";
    case LikeAction::kDislike: return "dislike";
    case LikeAction::kUndislike: return "undislike";
  }
  return "like";
}

Result<LikeAction> ParseAction(std::string_view text) {
  if (text == "like") return LikeAction::kLike;
  if (text == "unlike") return LikeAction::kUnlike;
  if (text == "dislike") return LikeAction::kDislike;
  if (text == "undislike") return LikeAction::kUndislike;
  return InvalidArgument("action must be one of like, unlike, dislike, undislike");
}

Result<Transition> Apply(LikeState from, LikeAction action, bool dislikes_allowed) {
  if (!dislikes_allowed && (action == LikeAction::kDislike || action == LikeAction::kUndislike)) {
    return InvalidArgument("this business does not allow dislikes");
  }
  LikeState to = from;
  switch (action) {
    case LikeAction::kLike: to = LikeState::kLiked; break;
    case LikeAction::kDislike: to = LikeState::kDisliked; break;
    case LikeAction::kUnlike:
      if (from == LikeState::kLiked) to = LikeState::kNone;
      break;
    case LikeAction::kUndislike:
      if (from == LikeState::kDisliked) to = LikeState::kNone;
      break;
  }
  Transition t;
  t.to = to;
  t.changed = to != from;
  t.delta = DeltaOf(from, to);
  return t;
}

Counts DeltaOf(LikeState from, LikeState to) {
  Counts d;
  if (from == to) return d;
  if (from == LikeState::kLiked) --d.likes;
  if (from == LikeState::kDisliked) --d.dislikes;
  if (to == LikeState::kLiked) ++d.likes;
  if (to == LikeState::kDisliked) ++d.dislikes;
  return d;
}

Status ValidateId(std::string_view what, std::string_view id) {
  if (id.empty() || id.size() > 64) {
    return InvalidArgument(std::string(what) + " must be 1..64 characters");
  }
  for (char c : id) {
    if (!IdChar(c)) return InvalidArgument(std::string(what) + " may contain only A-Z a-z 0-9 _ . : -");
  }
  return Status::Ok();
}

Status ValidateBusiness(const Business& b) {
  auto check = [](std::string_view what, std::string_view v, size_t max) -> Status {
    if (v.empty() || v.size() > max) {
      return InvalidArgument(std::string(what) + " must be 1.." + std::to_string(max) + " characters");
    }
    for (char c : v) {
      if (!BusinessChar(c)) return InvalidArgument(std::string(what) + " may contain only a-z 0-9 _ -");
    }
    return Status::Ok();
  };
  CHORUS_RETURN_IF_ERROR(check("business id", b.id, 32));
  CHORUS_RETURN_IF_ERROR(check("business '" + b.id + "' namespace", b.ns, 16));
  if (b.user_list_max == 0) return InvalidArgument("business '" + b.id + "': user_list_max must be > 0");
  for (const RateLimit* r : {&b.user_rate, &b.ip_rate}) {
    if (r->per_second < 0 || r->burst < 0 || (r->per_second > 0 && r->burst < 1)) {
      return InvalidArgument("business '" + b.id + "': a rate limit needs per_second >= 0 and burst >= 1");
    }
  }
  return Status::Ok();
}

std::string EncodeLogEntry(const LogEntry& e) {
  std::string out;
  out.reserve(4 + e.ns.size() + e.user.size() + e.entity.size() + e.owner.size() + 2 + 16 + 1);
  out.push_back(static_cast<char>(e.if_state ? kLogVersionIfState : kLogVersion));
  PutString(out, e.ns);
  PutString(out, e.user);
  PutString(out, e.entity);
  PutString(out, e.owner);
  out.push_back(static_cast<char>(e.from));
  out.push_back(static_cast<char>(e.to));
  PutFixed64(out, static_cast<uint64_t>(e.from_time_ms));
  PutFixed64(out, static_cast<uint64_t>(e.time_ms));
  if (e.if_state) out.push_back(static_cast<char>(*e.if_state));
  return out;
}

Result<LogEntry> DecodeLogEntry(std::string_view bytes) {
  Reader r(bytes);
  LogEntry e;
  uint8_t version = 0;
  if (!r.Byte(&version) || (version != kLogVersion && version != kLogVersionIfState)) {
    return InvalidArgument("log entry: unknown version");
  }
  if (!r.String(&e.ns) || !r.String(&e.user) || !r.String(&e.entity) || !r.String(&e.owner) ||
      !r.State(&e.from) || !r.State(&e.to) || !r.Fixed64(&e.from_time_ms) || !r.Fixed64(&e.time_ms)) {
    return InvalidArgument("log entry: malformed");
  }
  if (version == kLogVersionIfState) {
    LikeState required;
    if (!r.State(&required)) return InvalidArgument("log entry: malformed");
    e.if_state = required;
  }
  if (!r.done()) return InvalidArgument("log entry: malformed");
  return e;
}

std::string RecordKey(std::string_view ns, std::string_view user, std::string_view entity) {
  std::string k;
  k.reserve(ns.size() + user.size() + entity.size() + 2);
  k.append(ns).push_back('\0');
  k.append(user).push_back('\0');
  k.append(entity);
  return k;
}

std::string TotalKey(std::string_view ns, std::string_view id) {
  std::string k;
  k.reserve(ns.size() + id.size() + 1);
  k.append(ns).push_back('\0');
  k.append(id);
  return k;
}

std::string EncodeRecord(const Record& rec) {
  std::string out;
  out.reserve(2 + 8 + 1 + rec.owner.size());
  out.push_back(static_cast<char>(kRecordVersion));
  out.push_back(static_cast<char>(rec.state));
  PutFixed64(out, static_cast<uint64_t>(rec.time_ms));
  PutString(out, rec.owner);
  return out;
}

Result<Record> DecodeRecord(std::string_view bytes) {
  Reader r(bytes);
  Record rec;
  uint8_t version = 0;
  if (!r.Byte(&version) || version != kRecordVersion || !r.State(&rec.state) || !r.Fixed64(&rec.time_ms) ||
      !r.String(&rec.owner) || !r.done()) {
    return InvalidArgument("record: malformed");
  }
  return rec;
}

}  // namespace chorus::likes
