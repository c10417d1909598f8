// The compute control plane as separate processes on loopback (docs/compute.md): 2 resource
// servers, 4 node agents, 2 schedulers racing for the same nodes, 2 apps with different specs.
// Checks placement without over-commit, a SIGTERM drain with zero failed requests, kill -9 of a
// node (detected, replicas replaced), kill -9 + restart of a resource server (nothing running is
// disturbed), and the errors for bad input.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "base/mutex.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "support/eventually.h"
#include "support/subprocess.h"

namespace chorus::testing {
namespace {

namespace pb = ::chorus::compute::v1;
using namespace std::chrono_literals;

std::pair<int, std::string> RunChorus(std::vector<std::string> args) {
  args.insert(args.begin(), CHORUS_BIN);
  auto p = Subprocess::Start(args, {});
  if (!p.ok()) return {-100, p.status().ToString()};
  auto code = (*p)->Wait(30s);
  return {code.ok() ? *code : -101, (*p)->output()};
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

class ComputeClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create("compute_cluster_test");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = std::make_unique<TempDir>(std::move(*dir));
    data_ = dir_->path() + "/data";
    // One secret for the whole cluster (every process gets the same --data-dir); tokens from the CLI.
    auto [code, out] = RunChorus({"token", "--data-dir", data_, "--service", "cluster-admin", "--scope",
                                  "compute.admin,compute.invoke,compute.schedule"});
    ASSERT_EQ(code, 0) << out;
    admin_token_ = Trim(out);
  }

  struct Proc {
    std::unique_ptr<Subprocess> process;
    int grpc_port = 0;
    std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port); }
  };

  Result<Proc> Start(const std::string& role, int grpc_port, std::vector<std::string> sets) {
    std::vector<std::string> argv = {CHORUS_BIN, "compute", role, "--http", "127.0.0.1:0", "--grpc",
                                     "127.0.0.1:" + std::to_string(grpc_port), "--data-dir", data_,
                                     "--set", "runtime.pin_threads=false", "--set", "runtime.shards=1",
                                     "--set", "shutdown.drain_timeout=5s"};
    for (auto& s : sets) {
      argv.push_back("--set");
      argv.push_back(s);
    }
    Proc p;
    CHORUS_ASSIGN_OR_RETURN(p.process, Subprocess::Start(argv, {}));
    CHORUS_ASSIGN_OR_RETURN(std::string line, p.process->WaitForLine("grpc listening on", 30s));
    CHORUS_RETURN_IF_ERROR(p.process->WaitForLine("[chorus] ready", 30s).status());
    std::smatch m;
    if (!std::regex_search(line, m, std::regex(R"(127\.0\.0\.1:(\d+))"))) return Internal("no port: " + line);
    p.grpc_port = std::stoi(m[1]);
    return p;
  }

  Result<Proc> StartResource(const std::string& id, int port, int peer_port) {
    return Start("resource", port,
                 {"compute.resource.id=" + id, "compute.resource.peers=127.0.0.1:" + std::to_string(peer_port)});
  }

  Result<Proc> StartNode(const std::string& id, const std::string& resources) {
    return Start("node", 0,
                 {"compute.node.id=" + id, "compute.node.resources=" + resources, "compute.node.slots=4",
                  "compute.node.cpu_millis=3000", "compute.node.memory_mb=4096", "compute.node.drain_grace=1500ms"});
  }

  Result<pb::View> GetView(const std::string& address) {
    auto stub = pb::Resource::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + admin_token_);
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    pb::View view;
    grpc::Status st = stub->GetView(&ctx, pb::GetViewRequest(), &view);
    if (!st.ok()) return Unavailable(st.error_message());
    return view;
  }

  std::string WriteSpec(const std::string& name, const std::string& yaml) {
    const std::string path = dir_->path() + "/" + name + ".yaml";
    std::ofstream(path) << yaml;
    return path;
  }

  int Apply(const std::string& server, const std::string& path) {
    return RunChorus({"compute", "apply", path, "--server", server, "--token", admin_token_}).first;
  }

  // Replicas of `app` RUNNING on online, non-draining nodes, by replica id -> node id.
  static std::map<std::string, std::string> Running(const pb::View& view, const std::string& app) {
    std::map<std::string, std::string> out;
    for (const auto& n : view.nodes()) {
      if (!n.online() || n.draining()) continue;
      for (const auto& r : n.replicas()) {
        if (r.app() == app && r.state() == pb::REPLICA_RUNNING) out[r.replica_id()] = n.node_id();
      }
    }
    return out;
  }

  static size_t Replicas(const pb::View& view, const std::string& app) {
    size_t n = 0;
    for (const auto& node : view.nodes()) {
      if (!node.online()) continue;
      for (const auto& r : node.replicas()) n += r.app() == app ? 1 : 0;
    }
    return n;
  }

  // No node holds more than its capacity: the nodes' CAS is what guarantees it.
  static void ExpectNoOvercommit(const pb::View& view) {
    for (const auto& n : view.nodes()) {
      int64_t cpu = 0, mem = 0;
      for (const auto& r : n.replicas()) {
        cpu += r.resources().cpu_millis();
        mem += r.resources().memory_mb();
      }
      EXPECT_LE(cpu, n.capacity().cpu_millis()) << n.node_id();
      EXPECT_LE(mem, n.capacity().memory_mb()) << n.node_id();
      EXPECT_LE(n.replicas_size(), n.capacity().slots()) << n.node_id();
    }
  }

  bool Settled(const std::string& address, size_t want_a, size_t want_b) {
    auto v = GetView(address);
    return v.ok() && Running(*v, "alpha").size() == want_a && Replicas(*v, "alpha") == want_a &&
           Running(*v, "beta").size() == want_b && Replicas(*v, "beta") == want_b;
  }

  std::unique_ptr<TempDir> dir_;
  std::string data_;
  std::string admin_token_;
};

constexpr char kAlpha[] = R"(name: alpha
resources: {cpu: 500m, memory: 256Mi}
replicas: 4
max_concurrency: 4
engine: {type: synthetic, cpu_ms: 1, latency_ms: 20}
)";
constexpr char kBeta[] = R"(name: beta
resources: {cpu: 1, memory: 512Mi}
replicas: 2
max_concurrency: 2
engine: {type: synthetic, cpu_ms: 2, latency_ms: 5}
)";

// Sends requests to alpha through the nodes, routing by the view like a gateway would (running
// replicas on online, non-draining nodes), and counts every failure.
class Traffic {
 public:
  Traffic(std::function<Result<pb::View>()> view, std::string token) : view_(std::move(view)), token_(std::move(token)) {
    refresher_ = std::thread([this] { Refresh(); });
    for (int i = 0; i < 4; ++i) senders_.emplace_back([this, i] { Send(i); });
  }
  ~Traffic() { Stop(); }
  void Stop() {
    if (stop_.exchange(true)) return;
    refresher_.join();
    for (auto& t : senders_) t.join();
  }
  int ok() const { return ok_.load(); }
  int failed() const { return failed_.load(); }
  std::string last_error() {
    MutexLock lock(mu_);
    return last_error_;
  }
  std::set<std::string> nodes_used() {
    MutexLock lock(mu_);
    return nodes_used_;
  }

 private:
  void Refresh() {
    while (!stop_.load()) {
      auto v = view_();
      if (v.ok()) {
        std::vector<std::string> targets;
        for (const auto& n : v->nodes()) {
          if (!n.online() || n.draining()) continue;
          for (const auto& r : n.replicas()) {
            if (r.app() == "alpha" && r.state() == pb::REPLICA_RUNNING) {
              targets.push_back(n.address());
              break;
            }
          }
        }
        MutexLock lock(mu_);
        targets_ = std::move(targets);
      }
      std::this_thread::sleep_for(50ms);
    }
  }
  void Send(int seed) {
    std::map<std::string, std::unique_ptr<pb::Node::Stub>> stubs;
    uint64_t n = static_cast<uint64_t>(seed);
    while (!stop_.load()) {
      std::string target;
      {
        MutexLock lock(mu_);
        if (!targets_.empty()) target = targets_[n++ % targets_.size()];
      }
      if (target.empty()) {
        std::this_thread::sleep_for(10ms);
        continue;
      }
      // A refusal before any worker saw the request (UNAVAILABLE: the view was a moment old, the
      // replica was just released) is retried on the next node, as a gateway does; anything else
      // is a lost request.
      grpc::Status st;
      pb::InvokeResponse resp;
      for (int attempt = 0; attempt < 5; ++attempt) {
        if (attempt > 0) {
          MutexLock lock(mu_);
          if (!targets_.empty()) target = targets_[n++ % targets_.size()];
          refused_ += 1;
        }
        auto& stub = stubs[target];
        if (!stub) stub = pb::Node::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
        grpc::ClientContext ctx;
        ctx.AddMetadata("authorization", "Bearer " + token_);
        ctx.set_deadline(std::chrono::system_clock::now() + 10s);
        pb::InvokeRequest req;
        req.set_app("alpha");
        req.set_payload("hello");
        st = stub->Invoke(&ctx, req, &resp);
        if (st.error_code() != grpc::StatusCode::UNAVAILABLE) break;
        std::this_thread::sleep_for(20ms);
      }
      if (st.ok()) {
        ok_.fetch_add(1);
        MutexLock lock(mu_);
        nodes_used_.insert(resp.node_id());
      } else {
        failed_.fetch_add(1);
        MutexLock lock(mu_);
        last_error_ = target + ": " + st.error_message();
      }
    }
  }

  std::function<Result<pb::View>()> view_;
  std::string token_;
  std::atomic<bool> stop_{false};
  std::atomic<int> ok_{0}, failed_{0};
  Mutex mu_;
  std::vector<std::string> targets_ GUARDED_BY(mu_);
  std::set<std::string> nodes_used_ GUARDED_BY(mu_);
  std::string last_error_ GUARDED_BY(mu_);
  int refused_ GUARDED_BY(mu_) = 0;
  std::thread refresher_;
  std::vector<std::thread> senders_;
};

TEST_F(ComputeClusterTest, PlacesDrainsFailsOverAndSurvivesResourceRestart) {
  const int p1 = PickFreePort(), p2 = PickFreePort();
  auto r1 = StartResource("r1", p1, p2);
  ASSERT_TRUE(r1.ok()) << r1.status().ToString();
  auto r2 = StartResource("r2", p2, p1);
  ASSERT_TRUE(r2.ok()) << r2.status().ToString();
  const std::string a1 = r1->address(), a2 = r2->address();

  // Nodes 1 and 2 report to r1 first, 3 and 4 to r2 first; each falls back to the other.
  std::vector<Proc> nodes;
  for (int i = 1; i <= 4; ++i) {
    auto n = StartNode("n" + std::to_string(i), i <= 2 ? a1 + "," + a2 : a2 + "," + a1);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    nodes.push_back(std::move(*n));
  }
  std::vector<Proc> schedulers;
  for (int i = 0; i < 2; ++i) {
    auto s = Start("scheduler", 0, {"compute.scheduler.clusters=" + a1 + "|" + a2});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    schedulers.push_back(std::move(*s));
  }
  ASSERT_TRUE(Eventually([&] {
    auto v1 = GetView(a1), v2 = GetView(a2);
    auto online = [](const pb::View& v) {
      int n = 0;
      for (const auto& node : v.nodes()) n += node.online() ? 1 : 0;
      return n;
    };
    return v1.ok() && v2.ok() && online(*v1) == 4 && online(*v2) == 4;
  })) << "both resource servers see the 4 nodes";

  // Two apps, applied to different resource servers; both schedulers race to place them.
  ASSERT_EQ(Apply(a1, WriteSpec("alpha", kAlpha)), 0);
  ASSERT_EQ(Apply(a2, WriteSpec("beta", kBeta)), 0);
  ASSERT_TRUE(Eventually([&] { return Settled(a1, 4, 2) && Settled(a2, 4, 2); }, 60s))
      << GetView(a1)->DebugString();
  {
    auto v = GetView(a1);
    ASSERT_TRUE(v.ok());
    ExpectNoOvercommit(*v);
  }

  // SIGTERM on a node that runs alpha: it drains, alpha moves, no request fails.
  Traffic traffic([&] { return GetView(a2); }, admin_token_);
  ASSERT_TRUE(Eventually([&] { return traffic.ok() > 20; })) << traffic.last_error();
  std::string victim;
  {
    auto v = GetView(a1);
    ASSERT_TRUE(v.ok());
    victim = Running(*v, "alpha").begin()->second;
  }
  const size_t victim_index = static_cast<size_t>(victim[1] - '1');
  const int before_drain = traffic.ok();
  ASSERT_TRUE(nodes[victim_index].process->Signal(SIGTERM).ok());
  auto code = nodes[victim_index].process->Wait(30s);
  ASSERT_TRUE(code.ok()) << code.status().ToString();
  EXPECT_EQ(*code, 0) << nodes[victim_index].process->OutputTail();
  ASSERT_TRUE(Eventually([&] { return Settled(a1, 4, 2) && Settled(a2, 4, 2); }, 60s))
      << GetView(a1)->DebugString();
  {
    auto v = GetView(a1);
    ASSERT_TRUE(v.ok());
    for (const auto& [replica, node] : Running(*v, "alpha")) EXPECT_NE(node, victim);
    ExpectNoOvercommit(*v);
  }
  ASSERT_TRUE(Eventually([&] { return traffic.ok() > before_drain + 20; })) << traffic.last_error();
  EXPECT_EQ(traffic.failed(), 0) << traffic.last_error();

  // kill -9 on another node with replicas: detected, its replicas replaced elsewhere.
  std::string crashed;
  {
    auto v = GetView(a1);
    ASSERT_TRUE(v.ok());
    for (const auto& n : v->nodes()) {
      if (n.online() && n.replicas_size() > 0 && n.node_id() != victim) crashed = n.node_id();
    }
  }
  ASSERT_FALSE(crashed.empty());
  const size_t crashed_index = static_cast<size_t>(crashed[1] - '1');
  ASSERT_TRUE(nodes[crashed_index].process->Signal(SIGKILL).ok());
  ASSERT_TRUE(Eventually([&] {
    auto v1 = GetView(a1), v2 = GetView(a2);
    if (!v1.ok() || !v2.ok()) return false;
    for (const auto* v : {&*v1, &*v2}) {
      for (const auto& n : v->nodes()) {
        if (n.node_id() == crashed && n.online()) return false;
      }
    }
    return true;
  }, 30s)) << "the crashed node is offline everywhere";
  ASSERT_TRUE(Eventually([&] { return Settled(a1, 4, 2) && Settled(a2, 4, 2); }, 60s))
      << GetView(a1)->DebugString();
  traffic.Stop();

  // kill -9 and restart a resource server: nodes re-home, the other server never sees a node go
  // offline, no replica moves, and the restarted server gets the view and the apps back.
  std::map<std::string, std::string> alpha_before, beta_before;
  {
    auto v = GetView(a2);
    ASSERT_TRUE(v.ok());
    alpha_before = Running(*v, "alpha");
    beta_before = Running(*v, "beta");
  }
  ASSERT_TRUE(r1->process->Signal(SIGKILL).ok());
  (void)r1->process->Wait(10s);
  const auto until = std::chrono::steady_clock::now() + 4s;
  while (std::chrono::steady_clock::now() < until) {
    auto v = GetView(a2);
    ASSERT_TRUE(v.ok());
    for (const auto& n : v->nodes()) {
      if (n.node_id() == victim || n.node_id() == crashed) continue;
      ASSERT_TRUE(n.online()) << n.node_id() << " went offline while r1 was down";
    }
    ASSERT_EQ(Running(*v, "alpha"), alpha_before);
    std::this_thread::sleep_for(50ms);
  }
  auto r1_again = StartResource("r1", p1, p2);
  ASSERT_TRUE(r1_again.ok()) << r1_again.status().ToString();
  ASSERT_TRUE(Eventually([&] {
    auto v = GetView(a1);
    return v.ok() && v->apps_size() == 2 && Running(*v, "alpha") == alpha_before &&
           Running(*v, "beta") == beta_before;
  }, 30s)) << GetView(a1)->DebugString();
  {
    auto v = GetView(a2);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(Running(*v, "alpha"), alpha_before);
    EXPECT_EQ(Running(*v, "beta"), beta_before);
  }

  // kill -9 both schedulers and start a new one: it rebuilds from what the nodes report and
  // leaves the placement alone (no duplicates, nothing released).
  for (auto& s : schedulers) ASSERT_TRUE(s.process->Signal(SIGKILL).ok());
  auto fresh = Start("scheduler", 0, {"compute.scheduler.clusters=" + a2 + "|" + a1});
  ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
  ASSERT_TRUE(fresh->process->WaitForLine("watching", 30s).ok());
  std::this_thread::sleep_for(3s);  // several reconcile rounds; nothing may change
  {
    auto v = GetView(a1);
    ASSERT_TRUE(v.ok());
    EXPECT_EQ(Running(*v, "alpha"), alpha_before);
    EXPECT_EQ(Running(*v, "beta"), beta_before);
    EXPECT_EQ(Replicas(*v, "alpha"), 4u);
    EXPECT_EQ(Replicas(*v, "beta"), 2u);
  }
}

// One app across two resource clusters (federation): a scheduler watching both spreads it over
// both clusters' nodes; an app restricted to one cluster stays there.
TEST_F(ComputeClusterTest, AppSpansFederatedClusters) {
  auto west = Start("resource", 0, {"compute.resource.id=west1", "compute.cluster=west"});
  ASSERT_TRUE(west.ok()) << west.status().ToString();
  auto east = Start("resource", 0, {"compute.resource.id=east1", "compute.cluster=east"});
  ASSERT_TRUE(east.ok()) << east.status().ToString();
  auto wn = Start("node", 0, {"compute.node.id=w1", "compute.cluster=west", "compute.node.resources=" + west->address(),
                              "compute.node.cpu_millis=2000", "compute.node.memory_mb=1024", "compute.node.pool=cpu"});
  ASSERT_TRUE(wn.ok()) << wn.status().ToString();
  auto en = Start("node", 0, {"compute.node.id=e1", "compute.cluster=east", "compute.node.resources=" + east->address(),
                              "compute.node.cpu_millis=2000", "compute.node.memory_mb=1024",
                              "compute.node.gpus=T4:1:1.0", "compute.node.pool=gpu-t4"});
  ASSERT_TRUE(en.ok()) << en.status().ToString();
  auto s = Start("scheduler", 0, {"compute.scheduler.clusters=" + west->address() + "," + east->address()});
  ASSERT_TRUE(s.ok()) << s.status().ToString();

  ASSERT_EQ(Apply(west->address(), WriteSpec("spread", "name: spread\nresources: {cpu: 200m, memory: 64Mi}\n"
                                                       "replicas: 2\nengine: {type: synthetic}\n")),
            0);
  ASSERT_EQ(Apply(east->address(), WriteSpec("gpu", "name: gpu\nresources: {cpu: 200m, memory: 64Mi, gpu: 1, "
                                                    "card_types: [T4]}\nreplicas: 1\nclusters: [east]\n"
                                                    "engine: {type: synthetic}\n")),
            0);
  auto placed = [&](const pb::View& v, const std::string& app) {
    std::set<std::string> nodes;
    for (const auto& [replica, node] : Running(v, app)) nodes.insert(node);
    return nodes;
  };
  ASSERT_TRUE(Eventually([&] {
    auto w = GetView(west->address()), e = GetView(east->address());
    return w.ok() && e.ok() && placed(*w, "spread") == std::set<std::string>{"w1"} &&
           placed(*e, "spread") == std::set<std::string>{"e1"} && placed(*e, "gpu") == std::set<std::string>{"e1"};
  }, 60s)) << GetView(west->address())->DebugString() << GetView(east->address())->DebugString();
  auto e = GetView(east->address());
  ASSERT_TRUE(e.ok());
  for (const auto& n : e->nodes()) {
    for (const auto& r : n.replicas()) {
      if (r.app() == "gpu") {
        EXPECT_EQ(r.card_type(), "T4");
      }
    }
  }
}

// An app with more replicas than nodes: the scheduler puts several on a node in one claim
// (ClaimRequest.more_replica_ids) and real node agents start a worker for each.
TEST_F(ComputeClusterTest, SeveralReplicasPerClaimOnRealNodes) {
  auto r = Start("resource", 0, {"compute.resource.id=r1"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  std::vector<Proc> nodes;
  for (const char* id : {"m1", "m2"}) {
    auto n = Start("node", 0, {std::string("compute.node.id=") + id, "compute.node.resources=" + r->address(),
                               "compute.node.slots=4", "compute.node.cpu_millis=2000", "compute.node.memory_mb=1024"});
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    nodes.push_back(std::move(*n));
  }
  ASSERT_TRUE(Eventually([&] {
    auto v = GetView(r->address());
    return v.ok() && v->nodes_size() == 2;
  })) << "the resource server sees both nodes";
  auto s = Start("scheduler", 0, {"compute.scheduler.clusters=" + r->address()});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  ASSERT_EQ(Apply(r->address(), WriteSpec("many", "name: many\nresources: {cpu: 100m, memory: 32Mi}\n"
                                                  "replicas: 6\nengine: {type: synthetic}\n")),
            0);
  ASSERT_TRUE(Eventually([&] {
    auto v = GetView(r->address());
    return v.ok() && Running(*v, "many").size() == 6 && Replicas(*v, "many") == 6;
  }, 60s)) << GetView(r->address())->DebugString();
  auto v = GetView(r->address());
  ASSERT_TRUE(v.ok());
  std::map<std::string, int> per_node;
  for (const auto& [replica, node] : Running(*v, "many")) ++per_node[node];
  EXPECT_EQ(per_node, (std::map<std::string, int>{{"m1", 3}, {"m2", 3}}));
  ExpectNoOvercommit(*v);
  for (auto& n : nodes) {
    EXPECT_TRUE(n.process->WaitForLine("and 2 more of many", 5s).ok())
        << "one claim carried all three of the node's replicas\n" << n.process->OutputTail();
  }
}

TEST_F(ComputeClusterTest, BadInputGetsClearErrors) {
  const int p1 = PickFreePort();
  auto r = Start("resource", p1, {"compute.resource.id=r1"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const std::string a = r->address();

  // Malformed spec, impossible resources, unknown key: exit 2 with the field named.
  auto [c1, o1] = RunChorus({"compute", "apply", WriteSpec("bad1", "name: [oops"), "--server", a, "--token", admin_token_});
  EXPECT_EQ(c1, 2) << o1;
  auto [c2, o2] = RunChorus({"compute", "apply",
                             WriteSpec("bad2", "name: x\nresources: {cpu: 0, memory: 1Mi}\nreplicas: 1\n"
                                               "engine: {type: synthetic}\n"),
                             "--server", a, "--token", admin_token_});
  EXPECT_EQ(c2, 2) << o2;
  EXPECT_NE(o2.find("resources.cpu"), std::string::npos) << o2;
  auto [c3, o3] = RunChorus({"compute", "apply",
                             WriteSpec("bad3", "name: x\nresources: {cpu: 1, memory: 1Mi}\nreplicas: 1\n"
                                               "engine: {type: synthetic}\nreplicaz: 2\n"),
                             "--server", a, "--token", admin_token_});
  EXPECT_EQ(c3, 2) << o3;
  EXPECT_NE(o3.find("replicaz"), std::string::npos) << o3;
  // Unknown app.
  auto [c4, o4] = RunChorus({"compute", "delete", "nope", "--server", a, "--token", admin_token_});
  EXPECT_EQ(c4, 3) << o4;
  auto [c5, o5] = RunChorus({"compute", "status", "--app", "nope", "--server", a, "--token", admin_token_});
  EXPECT_EQ(c5, 3) << o5;
  // A token without compute.admin.
  auto [tc, user_token] = RunChorus({"token", "--data-dir", data_, "--user", "u1"});
  ASSERT_EQ(tc, 0);
  auto [c6, o6] = RunChorus({"compute", "apply", WriteSpec("ok", kAlpha), "--server", a, "--token", Trim(user_token)});
  EXPECT_EQ(c6, 1) << o6;
  EXPECT_NE(o6.find("compute.admin"), std::string::npos) << o6;

  // Heartbeats: forged token, bad node id.
  auto stub = pb::Resource::NewStub(grpc::CreateChannel(a, grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + admin_token_ + "x");
    auto stream = stub->Heartbeat(&ctx);
    pb::HeartbeatRequest req;
    req.mutable_status()->set_node_id("n1");
    (void)stream->Write(req);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  auto [nc, node_token] = RunChorus({"token", "--data-dir", data_, "--service", "node:n1", "--scope", "compute.node"});
  ASSERT_EQ(nc, 0);
  auto [gc, generic_node_token] = RunChorus({"token", "--data-dir", data_, "--service", "fleet", "--scope", "compute.node"});
  ASSERT_EQ(gc, 0);
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + Trim(generic_node_token));
    auto stream = stub->Heartbeat(&ctx);
    pb::HeartbeatRequest req;
    req.mutable_status()->set_node_id("n/1");
    (void)stream->Write(req);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    // A token bound to node n1 cannot speak for n2.
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + Trim(node_token));
    auto stream = stub->Heartbeat(&ctx);
    pb::HeartbeatRequest req;
    auto* s = req.mutable_status();
    s->set_node_id("n2");
    s->set_incarnation(1);
    s->set_address("127.0.0.1:1");
    s->mutable_capacity()->set_cpu_millis(1000);
    s->mutable_capacity()->set_memory_mb(1000);
    s->mutable_capacity()->set_slots(1);
    (void)stream->Write(req);
    stream->WritesDone();
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }

  // Claims on a real node: forged token, stale version, wrong incarnation.
  auto node = StartNode("n1", a);
  ASSERT_TRUE(node.ok()) << node.status().ToString();
  pb::NodeStatus status;
  ASSERT_TRUE(Eventually([&] {
    auto v = GetView(a);
    if (!v.ok() || v->nodes_size() != 1) return false;
    status = v->nodes(0);
    return true;
  }));
  auto node_stub = pb::Node::NewStub(grpc::CreateChannel(node->address(), grpc::InsecureChannelCredentials()));
  pb::ClaimRequest claim;
  claim.set_node_id("n1");
  claim.set_incarnation(status.incarnation());
  claim.set_expected_version(status.version());
  claim.set_app("alpha");
  claim.set_replica_id("alpha-1");
  claim.mutable_resources()->set_cpu_millis(100);
  claim.mutable_resources()->set_memory_mb(10);
  claim.set_max_concurrency(1);
  claim.mutable_engine()->set_engine("synthetic");
  auto do_claim = [&](const std::string& token, const pb::ClaimRequest& c) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    pb::ClaimResponse resp;
    return node_stub->Claim(&ctx, c, &resp).error_code();
  };
  EXPECT_EQ(do_claim(admin_token_ + "x", claim), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(do_claim(Trim(node_token), claim), grpc::StatusCode::PERMISSION_DENIED);  // lacks compute.schedule
  pb::ClaimRequest stale = claim;
  stale.set_expected_version(status.version() + 7);
  EXPECT_EQ(do_claim(admin_token_, stale), grpc::StatusCode::ABORTED);
  pb::ClaimRequest other = claim;
  other.set_incarnation(status.incarnation() + 1);
  EXPECT_EQ(do_claim(admin_token_, other), grpc::StatusCode::FAILED_PRECONDITION);
  pb::ClaimRequest huge = claim;
  huge.mutable_resources()->set_cpu_millis(1'000'000);
  EXPECT_EQ(do_claim(admin_token_, huge), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(do_claim(admin_token_, claim), grpc::StatusCode::OK);
  EXPECT_EQ(do_claim(admin_token_, claim), grpc::StatusCode::ABORTED) << "the same claim again is stale";
  // The process kept serving through all of it.
  EXPECT_TRUE(GetView(a).ok());
}

}  // namespace
}  // namespace chorus::testing
