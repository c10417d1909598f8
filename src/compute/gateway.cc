#include "compute/gateway.h"

#include <nlohmann/json.hpp>

#include "base/clock.h"
#include "chorus/compute/v1/compute.pb.h"
#include "base/mutex.h"
#include "net/http.h"
#include "net/router.h"
#include "net/token.h"

namespace chorus::compute {

struct Gateway::State {
  explicit State(const net::TokenSigner& s) : signer(s) {}
  const net::TokenSigner& signer;
  Mutex mu;
  std::shared_ptr<RouterClient> client GUARDED_BY(mu);

  std::shared_ptr<RouterClient> Client() {
    MutexLock lock(mu);
    return client;
  }

  Status Authorize(const net::HttpRequest& req) const {
    auto token = req.Token(/*allow_query=*/false);
    if (!token) return Unauthenticated("missing Authorization: Bearer token");
    CHORUS_ASSIGN_OR_RETURN(net::TokenClaims claims, signer.Verify(*token, SystemClock::Instance()));
    return net::RequireScope(claims, "compute.invoke");
  }
};

namespace {

// "running" for REPLICA_RUNNING.
std::string ReplicaStateName(int state) {
  std::string name = v1::ReplicaState_Name(static_cast<v1::ReplicaState>(state));
  if (name.rfind("REPLICA_", 0) == 0) name = name.substr(8);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

nlohmann::json NodeJson(const v1::NodeStatus& n) {
  nlohmann::json cards = nlohmann::json::array();
  for (const auto& g : n.capacity().gpus()) {
    cards.push_back({{"type", g.card_type()}, {"count", g.count()}, {"perf", g.perf()}});
  }
  nlohmann::json replicas = nlohmann::json::array();
  for (const auto& r : n.replicas()) {
    replicas.push_back({{"app", r.app()},
                        {"id", r.replica_id()},
                        {"state", ReplicaStateName(r.state())},
                        {"in_flight", r.in_flight()},
                        {"restarts", r.restarts()}});
  }
  return {{"id", n.node_id()},
          {"address", n.address()},
          {"cluster", n.cluster()},
          {"pool", n.pool()},
          {"state", !n.online() ? "offline" : n.draining() ? "draining" : "online"},
          {"cpu_utilization", n.cpu_utilization()},
          {"memory_used_mb", n.memory_used_mb()},
          {"in_flight", n.in_flight()},
          {"cards", std::move(cards)},
          {"capacity", {{"cpu_millis", n.capacity().cpu_millis()}, {"memory_mb", n.capacity().memory_mb()},
                        {"slots", n.capacity().slots()}}},
          {"allocated", {{"cpu_millis", n.allocated().cpu_millis()}, {"memory_mb", n.allocated().memory_mb()}}},
          {"last_heartbeat_ms", n.last_heartbeat_ms()},
          {"replicas", std::move(replicas)}};
}

bool LooksLikeJson(const std::string& body) {
  const size_t i = body.find_first_not_of(" \t\r\n");
  return i != std::string::npos && (body[i] == '{' || body[i] == '[');
}

}  // namespace

Gateway::Gateway(const net::TokenSigner& signer) : state_(std::make_shared<State>(signer)) {}
Gateway::~Gateway() { Stop(); }

Status Gateway::AddRoutes(net::Router& router) {
  std::shared_ptr<State> state = state_;
  CHORUS_RETURN_IF_ERROR(
      router.Add("POST", "/v1/apps/{app}/invoke", [state](net::HttpRequest& req, net::HttpResponder r) {
        if (Status st = state->Authorize(req); !st.ok()) return r.SendStatus(st);
        const std::string app(req.Param("app"));
        if (req.body.empty())
          return r.SendStatus(InvalidArgument("empty body: the request payload goes in the body"));
        std::shared_ptr<RouterClient> client = state->Client();
        if (!client) return r.SendStatus(Unavailable("the compute router is not ready yet"));
        auto responder = std::make_shared<net::HttpResponder>(std::move(r));
        client->Invoke(app, std::move(req.body), [responder](Result<Router::Reply> reply) {
          if (!reply.ok()) return responder->SendStatus(reply.status());
          net::HttpResponse response;
          response.status = 200;
          response.content_type =
              LooksLikeJson(reply->payload) ? "application/json" : "application/octet-stream";
          response.body = std::move(reply->payload);
          response.headers.emplace_back("X-Chorus-Node", reply->node_id);
          response.headers.emplace_back("X-Chorus-Attempts", std::to_string(reply->attempts));
          responder->Send(std::move(response));
        });
      }));
  CHORUS_RETURN_IF_ERROR(
      router.Add("GET", "/v1/apps/{app}/routes", [state](net::HttpRequest& req, net::HttpResponder r) {
        if (Status st = state->Authorize(req); !st.ok()) return r.SendStatus(st);
        std::shared_ptr<RouterClient> client = state->Client();
        if (!client) return r.SendStatus(Unavailable("the compute router is not ready yet"));
        const std::string app(req.Param("app"));
        if (!client->router().KnowsApp(app)) return r.SendStatus(NotFound("unknown app \"" + app + "\""));
        nlohmann::json out = nlohmann::json::array();
        for (const auto& route : client->router().Routes(app)) {
          out.push_back({{"node", route.node_id},
                         {"address", route.address},
                         {"weight", route.weight},
                         {"requests", route.requests}});
        }
        r.Send(net::HttpResponse::Json(200, out.dump()));
      }));
  CHORUS_RETURN_IF_ERROR(router.Add("GET", "/v1/compute/nodes", [state](net::HttpRequest& req, net::HttpResponder r) {
    if (Status st = state->Authorize(req); !st.ok()) return r.SendStatus(st);
    std::shared_ptr<RouterClient> client = state->Client();
    if (!client) return r.SendStatus(Unavailable("the compute router is not ready yet"));
    nlohmann::json nodes = nlohmann::json::array();
    for (const auto& n : client->router().Nodes()) nodes.push_back(NodeJson(*n));
    r.Send(net::HttpResponse::Json(200, nlohmann::json{{"nodes", std::move(nodes)}}.dump()));
  }));
  return Status::Ok();
}

void Gateway::Attach(std::unique_ptr<RouterClient> client) {
  MutexLock lock(state_->mu);
  state_->client = std::move(client);
}

void Gateway::Stop() {
  // The client stays owned here until the gateway is destroyed: a stopped client answers new
  // requests "unavailable" and has no call in flight, so nothing calls back into it afterwards.
  std::shared_ptr<RouterClient> client = state_->Client();
  if (client) client->Stop();
}

RouterClient* Gateway::client() {
  MutexLock lock(state_->mu);
  return state_->client.get();
}

}  // namespace chorus::compute
