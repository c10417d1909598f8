#include "compute/router.h"

#include <gtest/gtest.h>

#include <map>

#include "base/clock.h"
#include "chorus/compute/v1/compute.pb.h"

namespace chorus::compute {
namespace {

namespace pb = ::chorus::compute::v1;
using std::chrono::seconds;

// Answers synchronously; each node's answer is scripted, and every call is recorded.
class FakeTransport final : public InvokeTransport {
 public:
  void Invoke(const RouteTarget& target, std::shared_ptr<const std::string> payload, Done done) override {
    calls.push_back(target.node_id);
    auto it = fail.find(target.node_id);
    if (it != fail.end()) return done(it->second);
    done("from " + target.node_id + ": " + *payload);
  }
  std::vector<std::string> calls;
  std::map<std::string, Status> fail;
};

struct NodeSpec {
  std::string id;
  std::vector<std::string> apps = {"ocr"};  // one RUNNING replica of each
  int64_t cpu_millis = 1000;                // per replica
  double utilization = 0.5;
  int in_flight = 2;
  bool online = true;
  bool draining = false;
  pb::ReplicaState state = pb::REPLICA_RUNNING;
};

pb::NodeStatus Node(const NodeSpec& s) {
  pb::NodeStatus n;
  n.set_node_id(s.id);
  n.set_address("127.0.0.1:" + std::to_string(1000 + s.id.size()));
  n.set_online(s.online);
  n.set_draining(s.draining);
  n.set_cpu_utilization(s.utilization);
  n.set_in_flight(s.in_flight);
  for (const std::string& app : s.apps) {
    pb::ReplicaStatus* r = n.add_replicas();
    r->set_app(app);
    r->set_replica_id(app + "-" + s.id);
    r->set_state(s.state);
    r->mutable_resources()->set_cpu_millis(s.cpu_millis);
  }
  return n;
}

pb::ViewUpdate View(const std::vector<NodeSpec>& nodes, const std::vector<std::string>& apps = {"ocr"},
                    bool full = true) {
  pb::ViewUpdate u;
  u.set_full(full);
  for (const auto& s : nodes) *u.add_nodes() = Node(s);
  for (const auto& a : apps) u.add_apps()->set_name(a);
  return u;
}

class RouterTest : public ::testing::Test {
 protected:
  Result<Router::Reply> Call(Router& router, const std::string& app, const std::string& payload = "x") {
    std::optional<Result<Router::Reply>> out;
    router.Invoke(app, payload, [&](Result<Router::Reply> r) { out = std::move(r); });
    EXPECT_TRUE(out.has_value()) << "the fake transport answers synchronously";
    return out ? std::move(*out) : Result<Router::Reply>(Internal("no answer"));
  }
  std::set<std::string> RouteIds(const Router& router, const std::string& app) {
    std::set<std::string> ids;
    for (const auto& r : router.Routes(app)) ids.insert(r.node_id);
    return ids;
  }

  SimulatedClock clock_;
  FakeTransport transport_;
};

TEST_F(RouterTest, TableHoldsOnlineNonDrainingNodesRunningTheApp) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a"},
                                 {.id = "b", .apps = {"moderation"}},
                                 {.id = "c", .online = false},
                                 {.id = "d", .draining = true},
                                 {.id = "e", .state = pb::REPLICA_STARTING},
                                 {.id = "f", .apps = {"ocr", "moderation"}}},
                                {"ocr", "moderation"}));
  EXPECT_EQ(RouteIds(router, "ocr"), (std::set<std::string>{"a", "f"}));
  EXPECT_EQ(RouteIds(router, "moderation"), (std::set<std::string>{"b", "f"}));
  for (const auto& r : router.Routes("ocr")) EXPECT_GT(r.weight, 0) << r.node_id;
}

TEST_F(RouterTest, DrainingNodeLeavesOnTheWatchEventNotTheNextTick) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a"}, {.id = "b"}}));
  ASSERT_EQ(RouteIds(router, "ocr").size(), 2u);
  router.ApplyUpdate("c0", View({{.id = "a", .draining = true}}, {}, /*full=*/false));
  EXPECT_EQ(RouteIds(router, "ocr"), (std::set<std::string>{"b"}));
  transport_.calls.clear();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(Call(router, "ocr").ok());
  EXPECT_EQ(std::count(transport_.calls.begin(), transport_.calls.end(), "a"), 0);

  // Offline, and a full update that no longer lists it, work the same way.
  router.ApplyUpdate("c0", View({{.id = "a"}, {.id = "b", .online = false}}, {}, false));
  EXPECT_EQ(RouteIds(router, "ocr"), (std::set<std::string>{"a"}));
  router.ApplyUpdate("c0", View({{.id = "b"}}));
  EXPECT_EQ(RouteIds(router, "ocr"), (std::set<std::string>{"b"}));
}

TEST_F(RouterTest, UnknownAppIsNotFoundAndAnAppWithoutReplicasIsUnavailable) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a"}}, {"ocr", "idle"}));
  EXPECT_EQ(Call(router, "nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(Call(router, "idle").status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(transport_.calls.empty());

  pb::ViewUpdate deleted;
  deleted.add_deleted_apps("ocr@7");
  router.ApplyUpdate("c0", deleted);
  EXPECT_EQ(Call(router, "ocr").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(router.Routes("ocr").empty());
}

TEST_F(RouterTest, AFailedRequestIsRetriedOnceOnAnotherNodeAndTheRefusingNodeIsSuspended) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a"}, {.id = "b"}, {.id = "c"}}));
  transport_.fail["a"] = Unavailable("connection refused");
  for (int i = 0; i < 9; ++i) {
    auto reply = Call(router, "ocr", "p");
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_NE(reply->node_id, "a");
  }
  EXPECT_EQ(std::count(transport_.calls.begin(), transport_.calls.end(), "a"), 1)
      << "suspended after one refusal";
  EXPECT_EQ(router.stats().retries, 1u);
  EXPECT_EQ(RouteIds(router, "ocr"), (std::set<std::string>{"b", "c"}));

  // Back after suspend_for, at the next recomputation.
  transport_.fail.clear();
  clock_.Advance(seconds(2));
  router.RecomputeWeights();
  EXPECT_EQ(RouteIds(router, "ocr").size(), 2u) << "still suspended";
  clock_.Advance(seconds(2));
  router.RecomputeWeights();
  EXPECT_EQ(RouteIds(router, "ocr").size(), 3u);
}

TEST_F(RouterTest, TheAppsOnlyNodeIsNeverSuspended) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a"}}));
  transport_.fail["a"] = Unavailable("worker restarting");
  EXPECT_EQ(Call(router, "ocr").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(transport_.calls.size(), 2u) << "tried, then retried on the only node";
  transport_.fail.clear();
  EXPECT_TRUE(Call(router, "ocr").ok()) << "still routable: an empty table would fail everything";
}

TEST_F(RouterTest, WorkerFailureAfterHandOffIsRetriedElsewhereWithoutSuspendingTheNode) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a"}, {.id = "b"}}));
  transport_.fail["a"] = Internal("worker of ocr-a: worker died");
  for (int i = 0; i < 6; ++i) {
    auto reply = Call(router, "ocr");
    ASSERT_TRUE(reply.ok()) << reply.status().ToString();
    EXPECT_EQ(reply->node_id, "b");
  }
  EXPECT_EQ(RouteIds(router, "ocr").size(), 2u);
}

TEST_F(RouterTest, BadInputIsNeverRetriedAndTwoFailuresEndTheRequest) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a"}, {.id = "b"}}));
  transport_.fail["a"] = InvalidArgument("not an image");
  transport_.fail["b"] = InvalidArgument("not an image");
  auto reply = Call(router, "ocr");
  EXPECT_EQ(reply.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(transport_.calls.size(), 1u);

  transport_.calls.clear();
  transport_.fail["a"] = ResourceExhausted("busy");
  transport_.fail["b"] = ResourceExhausted("busy");
  reply = Call(router, "ocr");
  EXPECT_EQ(reply.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(transport_.calls.size(), 2u) << "one try and one retry";
  EXPECT_NE(transport_.calls[0], transport_.calls[1]) << "the retry goes to another node";
  EXPECT_EQ(router.stats().failures, 2u);
}

TEST_F(RouterTest, DynamicWeightsFollowCapacityAndLoad) {
  Router router({}, clock_, transport_);
  // Same utilization per request; "big" has 4x the cores and as much headroom.
  router.ApplyUpdate("c0", View({{.id = "big", .cpu_millis = 4000, .utilization = 0.4, .in_flight = 4},
                                 {.id = "small", .cpu_millis = 1000, .utilization = 0.4, .in_flight = 4},
                                 {.id = "hot", .cpu_millis = 4000, .utilization = 1.0, .in_flight = 4}}));
  router.RecomputeWeights();
  std::map<std::string, double> w;
  for (const auto& r : router.Routes("ocr")) w[r.node_id] = r.weight;
  EXPECT_NEAR(w["big"] / w["small"], 4.0, 1e-9);
  EXPECT_LT(w["hot"], w["small"]) << "a nearly full node gets little, however big";
  transport_.calls.clear();
  for (int i = 0; i < 900; ++i) ASSERT_TRUE(Call(router, "ocr").ok());
  const auto picks = [&](const std::string& id) {
    return static_cast<double>(std::count(transport_.calls.begin(), transport_.calls.end(), id));
  };
  const double total = w["big"] + w["small"] + w["hot"];
  for (const auto& [id, weight] : w) EXPECT_NEAR(picks(id), 900 * weight / total, 2.0) << id;
}

TEST_F(RouterTest, DynamicWeightsAreDampedBetweenRecomputations) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a", .utilization = 0.5, .in_flight = 4},
                                 {.id = "b", .utilization = 0.5, .in_flight = 4}}));
  router.RecomputeWeights();
  const double before = router.Routes("ocr")[0].weight;
  // a's report now says a quarter of the per-request cost: the raw weight jumps 4x.
  router.ApplyUpdate("c0", View({{.id = "a", .utilization = 0.5, .in_flight = 16}}, {}, false));
  router.RecomputeWeights();
  const double after = router.Routes("ocr")[0].weight;
  EXPECT_LT(after, before) << "moves towards the new value";
  EXPECT_GE(after, before / 2 * 0.999) << "by at most max_weight_step (2) per recomputation";
  for (int i = 0; i < 10; ++i) router.RecomputeWeights();
  EXPECT_NEAR(router.Routes("ocr")[0].weight / router.Routes("ocr")[1].weight, 0.25, 0.01) << "converges";
}

// Holds every request until told to answer.
class HoldingTransport final : public InvokeTransport {
 public:
  void Invoke(const RouteTarget& target, std::shared_ptr<const std::string>, Done done) override {
    held.emplace_back(target.node_id, std::move(done));
  }
  int HeldOn(const std::string& node) const {
    return static_cast<int>(
        std::count_if(held.begin(), held.end(), [&](const auto& h) { return h.first == node; }));
  }
  std::vector<std::pair<std::string, Done>> held;
};

TEST_F(RouterTest, DynamicPolicyPassesOverANodeHoldingFarMoreThanItsShare) {
  HoldingTransport holding;
  Router router({}, clock_, holding);
  router.ApplyUpdate("c0", View({{.id = "a"}, {.id = "b"}, {.id = "c"}, {.id = "d"}}));
  router.RecomputeWeights();
  for (int i = 0; i < 40; ++i) router.Invoke("ocr", "x", [](Result<Router::Reply>) {});
  for (const char* n : {"a", "b", "c", "d"})
    EXPECT_EQ(holding.HeldOn(n), 10) << n << ": equal weights, equal picks";
  // Everything but a's requests finishes: a "slowed down" and still holds 10.
  std::vector<std::pair<std::string, InvokeTransport::Done>> still;
  for (auto& [node, done] : holding.held) {
    if (node == "a") {
      still.emplace_back(node, std::move(done));
    } else {
      done(std::string("ok"));
    }
  }
  holding.held = std::move(still);
  for (int i = 0; i < 30; ++i) router.Invoke("ocr", "x", [](Result<Router::Reply>) {});
  EXPECT_LE(holding.HeldOn("a"), 12) << "a got new requests although it holds far more than its share";
  EXPECT_GE(holding.HeldOn("b") + holding.HeldOn("c") + holding.HeldOn("d"), 28);
  for (auto& [node, done] : holding.held) done(std::string("ok"));
}

TEST_F(RouterTest, StaticWeightsIgnoreLoad) {
  RouterOptions options;
  options.dynamic_weights = false;
  options.policy = PickerKind::kStaticSwrr;
  Router router(options, clock_, transport_);
  router.ApplyUpdate("c0", View({{.id = "a", .cpu_millis = 2000, .utilization = 0.99},
                                 {.id = "b", .cpu_millis = 1000, .utilization = 0.01}}));
  router.RecomputeWeights();
  std::map<std::string, double> w;
  for (const auto& r : router.Routes("ocr")) w[r.node_id] = r.weight;
  EXPECT_DOUBLE_EQ(w["a"], 2.0);
  EXPECT_DOUBLE_EQ(w["b"], 1.0);
}

TEST_F(RouterTest, SourcesAreIndependent) {
  Router router({}, clock_, transport_);
  router.ApplyUpdate("west", View({{.id = "w1"}}));
  router.ApplyUpdate("east", View({{.id = "e1"}}));
  EXPECT_EQ(RouteIds(router, "ocr"), (std::set<std::string>{"w1", "e1"}));
  router.ApplyUpdate("east", View({}, {"ocr"}));  // east's full view without e1
  EXPECT_EQ(RouteIds(router, "ocr"), (std::set<std::string>{"w1"}));
}

}  // namespace
}  // namespace chorus::compute
