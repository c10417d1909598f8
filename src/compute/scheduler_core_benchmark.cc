// Cost of the scheduler's placement loop at the scale of `bench/compute_cluster.sh` (2,000 nodes ×
// 8 slots, one app of 10,000 replicas): one iteration = the node answers of `batch` accepted
// claims (OnClaimDone with each node's new status, as Scheduler's loop feeds them) and the
// Reconcile that follows, which places as many new claims. Reported per iteration and per claim
// (items/s = claims placed per second of scheduler CPU).
//
//   run: build/dev/src/compute/scheduler_core_benchmark   (the CMake target of the same name)
#include <benchmark/benchmark.h>

#include <deque>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/random.h"
#include "compute/scheduler_core.h"

namespace chorus::compute {
namespace {

pb::NodeStatus Node(int i) {
  pb::NodeStatus n;
  char id[16];
  std::snprintf(id, sizeof id, "sim-%05d", i);
  n.set_node_id(id);
  n.set_cluster("default");
  n.set_address("127.0.0.1:7000");
  n.set_incarnation(1000 + i);
  n.set_version(1);
  n.mutable_capacity()->set_cpu_millis(4000);
  n.mutable_capacity()->set_memory_mb(8192);
  n.mutable_capacity()->set_slots(8);
  n.set_online(true);
  n.set_resource_id("r1");
  return n;
}

void BM_PlacementLoop(benchmark::State& state) {
  const int nodes = 2000;
  const int replicas = static_cast<int>(state.range(0));
  const size_t batch = static_cast<size_t>(state.range(1));
  SimulatedClock clock;
  Random random(7);
  SchedulerOptions options;
  options.scheduler_id = "s1";
  std::vector<pb::NodeStatus> view;
  for (int i = 0; i < nodes; ++i) view.push_back(Node(i));
  pb::App app;
  app.set_name("bench");
  app.set_replicas(replicas);
  app.set_max_concurrency(4);
  app.mutable_resources()->set_cpu_millis(10);
  app.mutable_resources()->set_memory_mb(1);
  app.mutable_engine()->set_engine("synthetic");
  app.set_generation(1);

  auto fresh = [&](SchedulerCore& core, std::deque<SchedulerCore::Claim>& pending) {
    pb::ViewUpdate u;
    u.set_full(true);
    u.set_resource_id("r1");
    u.set_cluster("default");
    for (const auto& n : view) *u.add_nodes() = n;
    *u.add_apps() = app;
    core.ApplyUpdate("c0", u);
    for (auto& c : core.Reconcile().claims) pending.push_back(std::move(c));
  };
  std::vector<pb::NodeStatus> nodes_now = view;
  auto index_of = [](const std::string& id) { return std::stoi(id.substr(4)); };

  auto core = std::make_unique<SchedulerCore>(options, clock, random);
  std::deque<SchedulerCore::Claim> pending;
  fresh(*core, pending);
  int64_t placed = 0;
  for (auto _ : state) {
    if (pending.size() < batch) {  // the app is (nearly) placed: start over, untimed
      state.PauseTiming();
      nodes_now = view;
      core = std::make_unique<SchedulerCore>(options, clock, random);
      pending.clear();
      fresh(*core, pending);
      state.ResumeTiming();
    }
    for (size_t k = 0; k < batch; ++k) {
      SchedulerCore::Claim c = std::move(pending.front());
      pending.pop_front();
      pb::NodeStatus& n = nodes_now[index_of(c.request.node_id())];
      pb::ReplicaStatus* r = n.add_replicas();
      r->set_app(c.request.app());
      r->set_replica_id(c.request.replica_id());
      r->set_app_generation(c.request.app_generation());
      r->set_state(pb::REPLICA_RUNNING);
      *r->mutable_resources() = c.request.resources();
      r->set_scheduler_id(c.request.scheduler_id());
      n.set_version(n.version() + 1);
      core->OnClaimDone(c, Status::Ok(), false, &n);
    }
    SchedulerCore::Plan plan = core->Reconcile();
    placed += static_cast<int64_t>(batch);
    for (auto& c : plan.claims) pending.push_back(std::move(c));
  }
  state.SetItemsProcessed(placed);
}
// (replicas, claims answered per iteration)
BENCHMARK(BM_PlacementLoop)->Args({10000, 50})->Args({10000, 200})->Args({2000, 50})->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace chorus::compute
