#include "chorus/wiring.h"

#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "base/logging.h"
#include "compute/gateway.h"
#include "compute/router_client.h"
#include "likes/event_bus.h"
#include "net/http_json.h"
#include "net/router.h"
#include "net/token.h"

namespace chorus::app {
namespace {

// The wiring's gain messages outrank every rule-derived priority (gifts top out at 699).
constexpr int32_t kPkPriority = 900;
constexpr int32_t kLikesPriority = 850;

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void PublishOrLog(live::LiveService& live, const std::string& room, live::Draft draft, std::string_view what) {
  std::vector<live::Draft> drafts;
  drafts.push_back(std::move(draft));
  live.PublishRoom(room, std::move(drafts), [room, what = std::string(what)](Result<live::PublishResult> r) {
    if (!r.ok()) GetLogger("chorus")->warn("{} for room {}: {}", what, room, r.status().ToString());
  });
}

}  // namespace

// ---------------------------------------------------------------------------------- likes

LikesToRoom::LikesToRoom(likes::EventBus& bus, live::LiveService& live, std::string business) : bus_(bus) {
  subscription_ = bus_.SubscribeCounts([&live, business = std::move(business)](const likes::CountEvent& e) {
    if (e.business != business || !live::ValidateRoomId(e.entity).ok()) return;
    live::Draft d;
    d.message.type = "notify";
    d.message.gain_key = "likes";
    // Above every gift and chat: a gain message is never lost to the age rule, but under a
    // sustained flood a low priority would keep it out of every block, and the counter would
    // freeze until the flood ends.
    d.message.priority = kLikesPriority;
    d.priority_set = true;
    d.message.payload = nlohmann::json{{"likes", e.counts.likes}, {"dislikes", e.counts.dislikes}}.dump();
    PublishOrLog(live, e.entity, std::move(d), "like total");
  });
}

LikesToRoom::~LikesToRoom() { bus_.Unsubscribe(subscription_); }

// ---------------------------------------------------------------------------------- moderation

Result<live::LiveService::ChatVerdict> ParseModerationAnswer(std::string_view text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("verdict") || !j["verdict"].is_string()) {
    return Internal("moderation answer is not {\"verdict\": ...}");
  }
  const std::string& verdict = j["verdict"].get_ref<const std::string&>();
  live::LiveService::ChatVerdict v;
  if (verdict == "allow") return v;
  if (verdict != "block") return Internal("moderation verdict \"" + verdict + "\" is neither allow nor block");
  v.allowed = false;
  std::string terms;
  if (auto m = j.find("matches"); m != j.end() && m->is_array()) {
    for (const auto& match : *m) {
      if (!match.is_object() || !match.contains("term") || !match["term"].is_string()) continue;
      const std::string& term = match["term"].get_ref<const std::string&>();
      if (terms.find("\"" + term + "\"") != std::string::npos) continue;
      if (!terms.empty()) terms += ", ";
      terms += "\"" + term + "\"";
    }
  }
  v.reason = terms.empty() ? "blocked words" : "blocked words " + terms;
  return v;
}

live::LiveService::ChatModerator ComputeModerator(compute::Gateway& gateway, std::string app) {
  return [&gateway, app = std::move(app)](const std::string&, const std::string& text,
                                          std::function<void(Result<live::LiveService::ChatVerdict>)> done) {
    compute::RouterClient* client = gateway.client();
    if (client == nullptr) return done(Unavailable("compute is still starting"));
    client->Invoke(app, text, [done = std::move(done)](Result<compute::Router::Reply> reply) {
      if (!reply.ok()) return done(reply.status());
      done(ParseModerationAnswer(reply->payload));
    });
  };
}

// ---------------------------------------------------------------------------------- PK

PkDemo::PkDemo(live::LiveService& live, Duration min_interval)
    : live_(live), min_interval_(min_interval), thread_([this] { Loop(); }) {}

PkDemo::~PkDemo() { Stop(); }

void PkDemo::Stop() {
  {
    MutexLock lock(mu_);
    stop_ = true;
  }
  cv_.NotifyAll();
  if (thread_.joinable()) thread_.join();
}

Result<PkDemo::Pk> PkDemo::Start(const std::string& a, const std::string& b, Duration length) {
  CHORUS_RETURN_IF_ERROR(live::ValidateRoomId(a));
  CHORUS_RETURN_IF_ERROR(live::ValidateRoomId(b));
  if (a == b) return InvalidArgument("a PK needs two different rooms");
  if (length < std::chrono::seconds(1) || length > std::chrono::hours(1)) {
    return InvalidArgument("a PK lasts 1s to 1h");
  }
  Pk pk;
  {
    MutexLock lock(mu_);
    for (const std::string* room : {&a, &b}) {
      if (by_room_.count(*room)) return FailedPrecondition("room " + *room + " is already in a PK");
    }
    pk.id = "pk-" + std::to_string(next_id_++);
    pk.rooms[0] = a;
    pk.rooms[1] = b;
    pk.ends_at_ms = WallMs() + std::chrono::duration_cast<std::chrono::milliseconds>(length).count();
    pks_[pk.id] = Running{pk};
    by_room_[a] = by_room_[b] = pk.id;
    running_count_.fetch_add(1);
  }
  cv_.NotifyAll();
  return pk;
}

void PkDemo::Observe(const live::Message& m, double gift_value) {
  if (running_count_.load(std::memory_order_relaxed) == 0 || m.type != "gift" || gift_value <= 0) return;
  MutexLock lock(mu_);
  auto r = by_room_.find(m.room);
  if (r == by_room_.end()) return;
  Running& run = pks_.at(r->second);
  run.pk.scores[run.pk.rooms[0] == m.room ? 0 : 1] += static_cast<int64_t>(gift_value);
  run.changed = true;
}

void PkDemo::Send(const Pk& pk, bool ended) {
  nlohmann::json payload = {{"pk_id", pk.id},
                            {"rooms", {pk.rooms[0], pk.rooms[1]}},
                            {"scores", {pk.scores[0], pk.scores[1]}},
                            {"ends_at", pk.ends_at_ms},
                            {"state", ended ? "ended" : "running"}};
  for (const std::string& room : pk.rooms) {
    live::Draft d;
    d.message.type = "pk";
    d.message.gain_key = "pk";
    d.message.priority = kPkPriority;  // above gifts, for the reason given for likes
    d.priority_set = true;
    d.message.payload = payload.dump();
    PublishOrLog(live_, room, std::move(d), "PK score");
  }
}

void PkDemo::Loop() {
  for (;;) {
    std::vector<std::pair<Pk, bool>> out;  // sent after the lock is released
    {
      MutexLock lock(mu_);
      if (stop_) return;
      const SteadyTime now = SystemClock::Instance().Now();
      const int64_t wall = WallMs();
      for (auto it = pks_.begin(); it != pks_.end();) {
        Running& run = it->second;
        const bool ended = wall >= run.pk.ends_at_ms;
        if (ended || (run.changed && now - run.last_sent >= min_interval_)) {
          out.emplace_back(run.pk, ended);
          run.changed = false;
          run.last_sent = now;
        }
        if (ended) {
          by_room_.erase(run.pk.rooms[0]);
          by_room_.erase(run.pk.rooms[1]);
          running_count_.fetch_sub(1);
          it = pks_.erase(it);
        } else {
          ++it;
        }
      }
      if (out.empty()) {
        cv_.WaitFor(mu_, std::chrono::milliseconds(100), [this]() REQUIRES(mu_) { return stop_; });
        continue;
      }
    }
    for (const auto& [pk, ended] : out) Send(pk, ended);
  }
}

// ---------------------------------------------------------------------------------- routes

bool IsLoopbackHost(std::string_view host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost" || host == "::1") return true;
  if (!host.starts_with("127.")) return false;
  int dots = 0, digits = 0;
  for (char c : host) {
    if (c == '.') {
      if (digits == 0) return false;
      ++dots;
      digits = 0;
    } else if (c >= '0' && c <= '9' && digits < 3) {
      ++digits;
    } else {
      return false;
    }
  }
  return dots == 3 && digits > 0;
}

Status AddDevRoutes(net::Router& router, const net::TokenSigner& signer, PkDemo* pk, bool loopback) {
  const Status refused = PermissionDenied(
      "dev routes hand out tokens without credentials and are offered only when http.listen is a loopback "
      "address; use `chorus token` instead");
  CHORUS_RETURN_IF_ERROR(
      router.Add("POST", "/v1/dev/token", [&signer, loopback, refused](net::HttpRequest& req, net::HttpResponder r) {
        if (!loopback) return r.SendStatus(refused);
        nlohmann::json body = nlohmann::json::object();
        if (!req.body.empty()) {
          auto parsed = net::ParseJsonBody(req);
          if (!parsed.ok()) return r.SendStatus(parsed.status());
          body = std::move(*parsed);
          if (!body.is_object()) return r.SendStatus(InvalidArgument("body must be a JSON object"));
        }
        std::string user;
        if (auto u = body.find("user"); u != body.end()) {
          if (!u->is_string()) return r.SendStatus(InvalidArgument("user must be a string"));
          user = u->get<std::string>();
        } else {
          std::random_device rd;
          char suffix[9];
          std::snprintf(suffix, sizeof suffix, "%08x", rd());
          user = std::string("viewer-") + suffix;
        }
        if (Status s = live::ValidateUserId(user); !s.ok()) return r.SendStatus(s);
        int level = 1;
        if (auto l = body.find("level"); l != body.end()) {
          if (!l->is_number_integer() || l->get<int64_t>() < 0 || l->get<int64_t>() > 100) {
            return r.SendStatus(InvalidArgument("level must be an integer 0..100"));
          }
          level = static_cast<int>(l->get<int64_t>());
        }
        const int64_t now = WallMs() / 1000;
        constexpr int64_t kTtl = 24 * 3600;
        net::TokenClaims u;
        u.kind = net::TokenClaims::Kind::kUser;
        u.subject = user;
        u.level = level;
        u.issued_at = now;
        u.expires_at = now + kTtl;
        auto service = [&](std::string scope) {
          net::TokenClaims s;
          s.kind = net::TokenClaims::Kind::kService;
          s.subject = "dev-page";
          s.scopes = {std::move(scope)};
          s.issued_at = now;
          s.expires_at = now + kTtl;
          return signer.Sign(s);
        };
        r.Send(net::JsonResponse(200, {{"user", user},
                                       {"level", level},
                                       {"token", signer.Sign(u)},
                                       {"publish_token", service("live.publish")},
                                       {"invoke_token", service("compute.invoke")},
                                       {"expires_at", now + kTtl}}));
      }));
  return router.Add("POST", "/v1/dev/pk", [pk, loopback, refused](net::HttpRequest& req, net::HttpResponder r) {
    if (!loopback) return r.SendStatus(refused);
    if (pk == nullptr) return r.SendStatus(Unavailable("the live service is not running in this process"));
    auto body = net::ParseJsonBody(req);
    if (!body.ok()) return r.SendStatus(body.status());
    auto rooms = body->find("rooms");
    if (!body->is_object() || rooms == body->end() || !rooms->is_array() || rooms->size() != 2 ||
        !(*rooms)[0].is_string() || !(*rooms)[1].is_string()) {
      return r.SendStatus(InvalidArgument("body must be {\"rooms\": [\"a\", \"b\"], \"seconds\": 60}"));
    }
    int64_t seconds = 60;
    if (auto s = body->find("seconds"); s != body->end()) {
      if (!s->is_number_integer()) return r.SendStatus(InvalidArgument("seconds must be an integer"));
      seconds = s->get<int64_t>();
    }
    auto started = pk->Start((*rooms)[0].get<std::string>(), (*rooms)[1].get<std::string>(),
                             std::chrono::seconds(std::clamp<int64_t>(seconds, 0, 24 * 3600)));
    if (!started.ok()) return r.SendStatus(started.status());
    r.Send(net::JsonResponse(
        200, {{"pk_id", started->id}, {"rooms", {started->rooms[0], started->rooms[1]}}, {"ends_at", started->ends_at_ms}}));
  });
}

Status AddPageRoutes(net::Router& router, const std::filesystem::path& web_root) {
  return router.Add("GET", "/ops", [web_root](net::HttpRequest&, net::HttpResponder r) {
    std::ifstream in(web_root / "ops.html", std::ios::binary);
    if (!in) return r.SendStatus(NotFound("ops.html is not in the web root " + web_root.string()));
    std::ostringstream body;
    body << in.rdbuf();
    net::HttpResponse res;
    res.content_type = "text/html; charset=utf-8";
    res.body = body.str();
    r.Send(std::move(res));
  });
}

}  // namespace chorus::app
