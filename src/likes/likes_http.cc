// The likes HTTP/JSON API (docs/likes.md "API").
#include <algorithm>
#include <charconv>
#include <optional>

#include "likes/likes_service.h"
#include "net/http_json.h"
#include "net/router.h"
#include "net/token.h"

namespace chorus::likes {
namespace {

using nlohmann::json;

// Handlers answer from shard callbacks held in std::function, which must be copyable.
std::shared_ptr<net::HttpResponder> Share(net::HttpResponder& responder) {
  return std::make_shared<net::HttpResponder>(std::move(responder));
}

// The hot responses (act, states, counts) are written straight into the body: building an
// nlohmann document (a std::map per object) and dumping it cost about as much as the store read
// of a 20-entity states request. Ids are validated to [A-Za-z0-9_.:-], business ids to
// [a-z0-9_-]; AppendJsonString escapes anyway.
void AppendInt(std::string& out, int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

void AppendCounts(std::string& out, const Counts& c) {
  out += "{\"likes\":";
  AppendInt(out, c.likes);
  out += ",\"dislikes\":";
  AppendInt(out, c.dislikes);
  out += '}';
}

void AppendError(std::string& out, const Status& s) {
  out += "{\"error\":{\"code\":";
  net::AppendJsonString(out, StatusCodeName(s.code()));
  out += ",\"message\":";
  net::AppendJsonString(out, s.message());
  out += "}}";
}

void AppendAct(std::string& out, const ActRequest& r, const ActResult& res) {
  out += "{\"business\":";
  net::AppendJsonString(out, r.business);
  out += ",\"user\":";
  net::AppendJsonString(out, r.user);
  out += ",\"entity\":";
  net::AppendJsonString(out, r.entity);
  out += ",\"state\":";
  net::AppendJsonString(out, StateName(res.state));
  out += res.changed ? ",\"changed\":true,\"counts\":" : ",\"changed\":false,\"counts\":";
  AppendCounts(out, res.counts);
  if (res.degraded) out += ",\"degraded\":true";  // as the counts and states reads: present only when true
  out += '}';
}

// ,"<field>":{"<entity>":<value>,…} and the close of the answer (with "degraded" when true):
// the tail the states and counts answers share. `value(out, i)` appends the i-th entity's value.
template <typename AppendValue>
void AppendByEntity(std::string& out, std::string_view field, const std::vector<std::string>& entities,
                    bool degraded, AppendValue value) {
  out += ",\"";
  out += field;
  out += "\":{";
  for (size_t i = 0; i < entities.size(); ++i) {
    if (i > 0) out += ',';
    net::AppendJsonString(out, entities[i]);
    out += ':';
    value(out, i);
  }
  out += degraded ? "},\"degraded\":true}" : "}}";
}

// The client address without its port: "127.0.0.1:5000" -> "127.0.0.1", "[::1]:5000" -> "[::1]".
std::string_view ClientIp(std::string_view remote) {
  const size_t colon = remote.rfind(':');
  return colon == std::string_view::npos ? remote : remote.substr(0, colon);
}

Result<std::string> StringField(const json& j, const char* name, bool required) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) {
    if (required) return InvalidArgument(std::string("missing field '") + name + "'");
    return std::string();
  }
  if (!it->is_string()) return InvalidArgument(std::string("field '") + name + "' must be a string");
  return it->get<std::string>();
}

Result<ActRequest> ParseAct(const json& j) {
  if (!j.is_object()) return InvalidArgument("an action must be a JSON object");
  ActRequest r;
  CHORUS_ASSIGN_OR_RETURN(r.business, StringField(j, "business", true));
  CHORUS_ASSIGN_OR_RETURN(r.user, StringField(j, "user", true));
  CHORUS_ASSIGN_OR_RETURN(r.entity, StringField(j, "entity", true));
  CHORUS_ASSIGN_OR_RETURN(r.owner, StringField(j, "owner", false));
  CHORUS_ASSIGN_OR_RETURN(std::string action, StringField(j, "action", true));
  CHORUS_ASSIGN_OR_RETURN(r.action, ParseAction(action));
  return r;
}

class Handlers {
 public:
  explicit Handlers(LikesService& service) : service_(service) {}

  // Any valid token.
  Result<net::TokenClaims> Authenticate(const net::HttpRequest& req) const {
    auto token = req.Token(/*allow_query=*/false);
    if (!token) return Unauthenticated("missing bearer token (Authorization: Bearer <token>)");
    return service_.signer().Verify(*token, SystemClock::Instance());
  }

  Status Admit(const net::TokenClaims& claims, const ActRequest& r, std::string_view ip) {
    return service_.AdmitWrite(claims, r, ip);
  }

  void Post(net::HttpRequest& req, net::HttpResponder responder) {
    auto claims = Authenticate(req);
    if (!claims.ok()) return responder.SendStatus(claims.status());
    auto body = net::ParseJsonBody(req);
    if (!body.ok()) return responder.SendStatus(body.status());
    auto r = ParseAct(*body);
    if (!r.ok()) return responder.SendStatus(r.status());
    if (Status s = Admit(*claims, *r, ClientIp(req.remote)); !s.ok()) return SendWithRetry(responder, s);
    ActRequest copy = *r;
    service_.Act({std::move(*r)}, [copy = std::move(copy), rp = Share(responder)](
                                      std::vector<Result<ActResult>> results) mutable {
      if (!results[0].ok()) return rp->SendStatus(results[0].status());
      std::string body;
      body.reserve(160);
      AppendAct(body, copy, *results[0]);
      rp->Send(net::HttpResponse::Json(200, std::move(body)));
    });
  }

  void PostBatch(net::HttpRequest& req, net::HttpResponder responder) {
    auto claims = Authenticate(req);
    if (!claims.ok()) return responder.SendStatus(claims.status());
    auto body = net::ParseJsonBody(req);
    if (!body.ok()) return responder.SendStatus(body.status());
    auto actions = body->find("actions");
    if (actions == body->end() || !actions->is_array()) {
      return responder.SendStatus(InvalidArgument("body must be {\"actions\": [...]}"));
    }
    const size_t max = service_.options().max_write_batch;
    if (actions->empty() || actions->size() > max) {
      return responder.SendStatus(InvalidArgument("actions must hold 1.." + std::to_string(max) + " items"));
    }
    // Each item is admitted or refused on its own; refused items are answered, never written.
    auto refused = std::make_shared<std::vector<std::optional<Status>>>(actions->size());
    std::vector<ActRequest> admitted;  // in position order
    const std::string_view ip = ClientIp(req.remote);
    for (size_t i = 0; i < actions->size(); ++i) {
      auto r = ParseAct((*actions)[i]);
      Status s = r.ok() ? Admit(*claims, *r, ip) : r.status();
      if (!s.ok()) {
        (*refused)[i] = std::move(s);
        continue;
      }
      admitted.push_back(std::move(*r));
    }
    auto requests = std::make_shared<std::vector<ActRequest>>(admitted);
    service_.Act(std::move(admitted), [refused, requests,
                                       rp = Share(responder)](std::vector<Result<ActResult>> out) mutable {
      std::string body = "{\"results\":[";
      body.reserve(16 + 160 * refused->size());
      size_t k = 0;  // next admitted item, in position order
      for (size_t i = 0; i < refused->size(); ++i) {
        if (i > 0) body += ',';
        if ((*refused)[i]) {
          AppendError(body, *(*refused)[i]);
        } else if (k >= out.size()) {  // the service answers every admitted action; never taken
          AppendError(body, Internal("no result for this action"));
        } else if (out[k].ok()) {
          AppendAct(body, (*requests)[k], *out[k]);
          ++k;
        } else {
          AppendError(body, out[k].status());
          ++k;
        }
      }
      body += "]}";
      rp->Send(net::HttpResponse::Json(200, std::move(body)));
    });
  }

  Result<std::vector<std::string>> Entities(const net::HttpRequest& req) const {
    auto raw = req.Query("entities");
    if (!raw || raw->empty()) return InvalidArgument("missing query parameter 'entities' (comma-separated)");
    // A repeated id is read and answered once (the answer is an object keyed by id); it still
    // counts towards the limit.
    std::vector<std::string> out;
    std::string_view rest = *raw;
    const size_t max = service_.options().max_entities;
    for (size_t n = 1;; ++n) {
      const size_t comma = rest.find(',');
      std::string_view id = rest.substr(0, comma);
      CHORUS_RETURN_IF_ERROR(ValidateId("entity", id));
      if (n > max) return InvalidArgument("at most " + std::to_string(max) + " entities per request");
      if (std::find(out.begin(), out.end(), id) == out.end()) out.emplace_back(id);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    return out;
  }

  Result<std::string> Business(const net::HttpRequest& req) const {
    auto b = req.Query("business");
    if (!b || b->empty()) return InvalidArgument("missing query parameter 'business'");
    if (!service_.FindBusiness(*b)) return InvalidArgument("unknown business '" + std::string(*b) + "'");
    return std::string(*b);
  }

  void GetStates(net::HttpRequest& req, net::HttpResponder responder) {
    auto claims = Authenticate(req);
    if (!claims.ok()) return responder.SendStatus(claims.status());
    auto business = Business(req);
    if (!business.ok()) return responder.SendStatus(business.status());
    auto user = req.Query("user");
    if (!user) return responder.SendStatus(InvalidArgument("missing query parameter 'user'"));
    if (Status s = ValidateId("user", *user); !s.ok()) return responder.SendStatus(s);
    auto entities = Entities(req);
    if (!entities.ok()) return responder.SendStatus(entities.status());
    auto names = std::make_shared<std::vector<std::string>>(*entities);
    service_.States(*business, std::string(*user), std::move(*entities),
                    [names, business = *business, user = std::string(*user),
                     rp = Share(responder)](Result<StatesResult> r) mutable {
                      if (!r.ok()) return rp->SendStatus(r.status());
                      std::string body = "{\"business\":";
                      body.reserve(64 + 32 * names->size());
                      net::AppendJsonString(body, business);
                      body += ",\"user\":";
                      net::AppendJsonString(body, user);
                      AppendByEntity(body, "states", *names, r->degraded, [&](std::string& out, size_t i) {
                        net::AppendJsonString(out, StateName(r->states[i]));
                      });
                      rp->Send(net::HttpResponse::Json(200, std::move(body)));
                    });
  }

  void GetCounts(net::HttpRequest& req, net::HttpResponder responder) {
    auto claims = Authenticate(req);
    if (!claims.ok()) return responder.SendStatus(claims.status());
    auto business = Business(req);
    if (!business.ok()) return responder.SendStatus(business.status());
    auto entities = Entities(req);
    if (!entities.ok()) return responder.SendStatus(entities.status());
    auto names = std::make_shared<std::vector<std::string>>(*entities);
    service_.CountsOf(*business, std::move(*entities),
                      [names, business = *business, rp = Share(responder)](Result<CountsResult> r) mutable {
                        if (!r.ok()) return rp->SendStatus(r.status());
                        std::string body = "{\"business\":";
                        body.reserve(48 + 48 * names->size());
                        net::AppendJsonString(body, business);
                        AppendByEntity(body, "counts", *names, r->degraded,
                                       [&](std::string& out, size_t i) { AppendCounts(out, r->counts[i]); });
                        rp->Send(net::HttpResponse::Json(200, std::move(body)));
                      });
  }

  Result<size_t> Limit(const net::HttpRequest& req) const {
    const auto& o = service_.options();
    auto raw = req.Query("limit");
    if (!raw) return o.list_limit_default;
    size_t v = 0;
    auto [end, ec] = std::from_chars(raw->data(), raw->data() + raw->size(), v);
    if (ec != std::errc() || end != raw->data() + raw->size() || v == 0 || v > o.list_limit_max) {
      return InvalidArgument("limit must be an integer 1.." + std::to_string(o.list_limit_max));
    }
    return v;
  }

  // GET /v1/users/{user}/likes and /v1/entities/{entity}/likers.
  void GetList(net::HttpRequest& req, net::HttpResponder responder, bool likers) {
    auto claims = Authenticate(req);
    if (!claims.ok()) return responder.SendStatus(claims.status());
    auto business = Business(req);
    if (!business.ok()) return responder.SendStatus(business.status());
    const std::string_view id = req.Param(likers ? "entity" : "user");
    if (Status s = ValidateId(likers ? "entity" : "user", id); !s.ok()) return responder.SendStatus(s);
    auto limit = Limit(req);
    if (!limit.ok()) return responder.SendStatus(limit.status());
    const std::string_view cursor = req.Query("cursor").value_or("");
    auto page = likers ? service_.Likers(*business, id, cursor, *limit) : service_.UserLikes(*business, id, cursor, *limit);
    if (!page.ok()) return responder.SendStatus(page.status());
    json items = json::array();
    for (const ListItem& item : page->items) {
      items.push_back({{likers ? "user" : "entity", item.id}, {"time", item.time_ms}});
    }
    json out = {{"business", *business}, {likers ? "entity" : "user", id}, {"items", std::move(items)}};
    out["next_cursor"] = page->next_cursor.empty() ? json(nullptr) : json(page->next_cursor);
    responder.Send(net::JsonResponse(200, out));
  }

  void GetReceived(net::HttpRequest& req, net::HttpResponder responder) {
    auto claims = Authenticate(req);
    if (!claims.ok()) return responder.SendStatus(claims.status());
    auto business = Business(req);
    if (!business.ok()) return responder.SendStatus(business.status());
    const std::string_view user = req.Param("user");
    if (Status s = ValidateId("user", user); !s.ok()) return responder.SendStatus(s);
    auto total = service_.Received(*business, user);
    if (!total.ok()) return responder.SendStatus(total.status());
    responder.Send(net::JsonResponse(200, {{"business", *business}, {"user", user}, {"received", *total}}));
  }

  void GetBusinesses(net::HttpRequest& req, net::HttpResponder responder) {
    json list = json::array();
    for (const auto& b : service_.options().businesses) {
      list.push_back({{"id", b.id},
                      {"name", b.name},
                      {"dislikes", b.dislikes},
                      {"user_list_max", b.user_list_max}});
    }
    responder.Send(net::JsonResponse(200, {{"businesses", std::move(list)}}));
  }

 private:
  static void SendWithRetry(net::HttpResponder& responder, const Status& s) {
    net::HttpResponse res = net::HttpResponse::FromStatus(s);
    if (s.code() == StatusCode::kResourceExhausted) res.headers.emplace_back("Retry-After", "1");
    responder.Send(std::move(res));
  }

  LikesService& service_;
};

}  // namespace

Status LikesService::AddRoutes(net::Router& router) {
  auto h = std::make_shared<Handlers>(*this);
  // Pipelined actions of one connection may wait for their group commit together when each
  // key's actions keep their order anyway (the embedded store); otherwise they run one by one.
  net::RouteOptions writes;
  writes.parallel_pipelining = keeps_action_order();
  CHORUS_RETURN_IF_ERROR(router.Add(
      "POST", "/v1/likes", [h](net::HttpRequest& q, net::HttpResponder r) { h->Post(q, std::move(r)); }, writes));
  CHORUS_RETURN_IF_ERROR(router.Add(
      "POST", "/v1/likes/batch", [h](net::HttpRequest& q, net::HttpResponder r) { h->PostBatch(q, std::move(r)); },
      writes));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/likes/state", [h](net::HttpRequest& q, net::HttpResponder r) {
    h->GetStates(q, std::move(r));
  }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/likes/counts", [h](net::HttpRequest& q, net::HttpResponder r) {
    h->GetCounts(q, std::move(r));
  }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/likes/businesses", [h](net::HttpRequest& q, net::HttpResponder r) {
    h->GetBusinesses(q, std::move(r));
  }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/users/{user}/likes", [h](net::HttpRequest& q, net::HttpResponder r) {
    h->GetList(q, std::move(r), /*likers=*/false);
  }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/entities/{entity}/likers",
                                    [h](net::HttpRequest& q, net::HttpResponder r) {
                                      h->GetList(q, std::move(r), /*likers=*/true);
                                    }));
  return router.Add("GET", "/v1/users/{user}/received", [h](net::HttpRequest& q, net::HttpResponder r) {
    h->GetReceived(q, std::move(r));
  });
}

}  // namespace chorus::likes
