#include "compute/node_agent.h"

#include <gtest/gtest.h>

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "support/eventually.h"

namespace chorus::compute {
namespace {

using std::chrono::seconds;
using State = ReplicaRuntime::State;

// What the test sees of one replica's runtime; outlives the runtime (the agent owns that).
class FakeWorker {
 public:
  explicit FakeWorker(ReplicaLaunch launch, State initial) : launch_(std::move(launch)), state_(initial) {}

  const ReplicaLaunch& launch() const { return launch_; }

  // The worker changes state and tells the agent, as WorkerProcess's listener does.
  void SetState(State s, int restarts = -1) {
    {
      MutexLock lock(mu_);
      state_ = s;
      if (restarts >= 0) restarts_ = restarts;
    }
    launch_.on_state_change();
  }
  // Answers the oldest request in flight.
  void CompleteOne(Result<std::string> result) {
    std::function<void(Result<std::string>)> done;
    {
      MutexLock lock(mu_);
      ASSERT_FALSE(pending_.empty());
      done = std::move(pending_.front());
      pending_.pop_front();
    }
    done(std::move(result));
  }
  int pending() const {
    MutexLock lock(mu_);
    return static_cast<int>(pending_.size());
  }
  int stops() const {
    MutexLock lock(mu_);
    return stops_;
  }
  // Stop() calls that found requests still in flight.
  int stops_with_pending() const {
    MutexLock lock(mu_);
    return stops_with_pending_;
  }
  Duration last_grace() const {
    MutexLock lock(mu_);
    return last_grace_;
  }
  bool destroyed() const {
    MutexLock lock(mu_);
    return destroyed_;
  }

  // ReplicaRuntime, forwarded by FakeRuntime.
  State state() const {
    MutexLock lock(mu_);
    return state_;
  }
  int restarts() const {
    MutexLock lock(mu_);
    return restarts_;
  }
  void Invoke(std::string payload, std::function<void(Result<std::string>)> done) {
    MutexLock lock(mu_);
    payloads_.push_back(std::move(payload));
    pending_.push_back(std::move(done));
  }
  void Stop(Duration grace) {
    std::deque<std::function<void(Result<std::string>)>> dropped;
    {
      MutexLock lock(mu_);
      ++stops_;
      if (!pending_.empty()) ++stops_with_pending_;
      last_grace_ = grace;
      state_ = State::kStopped;
      dropped.swap(pending_);
    }
    for (auto& done : dropped) done(Unavailable("worker stopped"));
    launch_.on_state_change();
  }
  void MarkDestroyed() {
    MutexLock lock(mu_);
    destroyed_ = true;
  }

 private:
  const ReplicaLaunch launch_;
  mutable Mutex mu_;
  State state_ GUARDED_BY(mu_);
  int restarts_ GUARDED_BY(mu_) = 0;
  std::vector<std::string> payloads_ GUARDED_BY(mu_);
  std::deque<std::function<void(Result<std::string>)>> pending_ GUARDED_BY(mu_);
  int stops_ GUARDED_BY(mu_) = 0;
  int stops_with_pending_ GUARDED_BY(mu_) = 0;
  Duration last_grace_ GUARDED_BY(mu_){};
  bool destroyed_ GUARDED_BY(mu_) = false;
};

class FakeRuntime final : public ReplicaRuntime {
 public:
  explicit FakeRuntime(std::shared_ptr<FakeWorker> worker) : worker_(std::move(worker)) {}
  ~FakeRuntime() override { worker_->MarkDestroyed(); }
  State state() const override { return worker_->state(); }
  int restarts() const override { return worker_->restarts(); }
  void Invoke(std::string payload, std::function<void(Result<std::string>)> done) override {
    worker_->Invoke(std::move(payload), std::move(done));
  }
  void Stop(Duration grace) override { worker_->Stop(grace); }

 private:
  std::shared_ptr<FakeWorker> worker_;
};

// The agent calls the factory on the claiming thread, which is the test thread here.
class FakeFactory {
 public:
  RuntimeFactory Get() {
    return [this](const ReplicaLaunch& launch) { return Make(launch); };
  }
  std::shared_ptr<FakeWorker> worker(const std::string& replica_id) const {
    auto it = workers_.find(replica_id);
    return it == workers_.end() ? nullptr : it->second;
  }
  int calls() const { return calls_; }

  Status fail_with = Status::Ok();  // non-OK: the factory fails
  State initial_state = State::kStarting;
  std::function<void(const ReplicaLaunch&)> during;  // runs inside the factory call

 private:
  Result<std::unique_ptr<ReplicaRuntime>> Make(const ReplicaLaunch& launch) {
    ++calls_;
    if (during) during(launch);
    if (!fail_with.ok()) return fail_with;
    auto worker = std::make_shared<FakeWorker>(launch, initial_state);
    workers_[launch.replica_id] = worker;
    std::unique_ptr<ReplicaRuntime> runtime = std::make_unique<FakeRuntime>(worker);
    return runtime;
  }

  std::map<std::string, std::shared_ptr<FakeWorker>> workers_;
  int calls_ = 0;
};

NodeOptions Options(int slots = 2) {
  NodeOptions o;
  o.node_id = "n1";
  o.cluster = "east";
  o.pool = "gpu";
  o.address = "10.0.0.1:7000";
  o.capacity.cpu_millis = 4000;
  o.capacity.memory_mb = 8192;
  o.capacity.gpus = {{"T4", 2, 1.0}, {"A10", 1, 1.6}};
  o.slots = slots;
  o.release_grace = seconds(7);
  o.invoke_queue = 1;
  return o;
}

// A claim for `agent` at its current incarnation and version.
pb::ClaimRequest ClaimFor(const NodeAgent& agent, const std::string& replica_id,
                          const std::string& app = "web") {
  pb::ClaimRequest c;
  c.set_node_id("n1");
  c.set_incarnation(agent.incarnation());
  c.set_expected_version(agent.version());
  c.set_app(app);
  c.set_replica_id(replica_id);
  c.mutable_resources()->set_cpu_millis(1000);
  c.mutable_resources()->set_memory_mb(1024);
  c.set_max_concurrency(2);
  c.mutable_engine()->set_engine("synthetic");
  c.mutable_engine()->set_latency_ms(5);
  c.set_scheduler_id("s1");
  c.set_app_generation(7);
  return c;
}

pb::ReleaseRequest ReleaseOf(const std::string& replica_id, const std::string& node_id = "n1") {
  pb::ReleaseRequest r;
  r.set_node_id(node_id);
  r.set_replica_id(replica_id);
  r.set_scheduler_id("s1");
  return r;
}

const pb::ReplicaStatus* FindReplica(const pb::NodeStatus& n, const std::string& id) {
  for (const auto& r : n.replicas()) {
    if (r.replica_id() == id) return &r;
  }
  return nullptr;
}

// The answers Invoke gave, in order.
struct Answers {
  struct Answer {
    StatusCode code;
    std::string payload;
    std::string replica_id;
  };
  std::function<void(Result<std::string>, const std::string&)> Collector() {
    return [this](Result<std::string> r, const std::string& replica) {
      MutexLock lock(mu);
      list.push_back({r.status().code(), r.ok() ? *r : "", replica});
    };
  }
  Answer Last() {
    MutexLock lock(mu);
    return list.empty() ? Answer{StatusCode::kInternal, "none", ""} : list.back();
  }
  size_t size() {
    MutexLock lock(mu);
    return list.size();
  }
  Mutex mu;
  std::vector<Answer> list GUARDED_BY(mu);
};

class NodeAgentTest : public ::testing::Test {
 protected:
  SimulatedClock clock_;
  FakeFactory factory_;
  std::atomic<int> changes_{0};
};

TEST_F(NodeAgentTest, ClaimOnMatchingVersionIsAcceptedAndBumpsTheVersion) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  agent.SetChangeListener([this] { ++changes_; });
  const uint64_t v = agent.version();
  NodeAgent::ClaimOutcome out = agent.Claim(ClaimFor(agent, "web-1"));
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_FALSE(out.conflict);
  EXPECT_EQ(agent.version(), v + 1);
  EXPECT_EQ(out.node.version(), v + 1);
  EXPECT_EQ(out.node.node_id(), "n1");
  EXPECT_EQ(out.node.incarnation(), agent.incarnation());
  EXPECT_EQ(out.node.address(), "10.0.0.1:7000");
  EXPECT_EQ(out.node.capacity().slots(), 2);
  ASSERT_EQ(out.node.replicas_size(), 1);
  const pb::ReplicaStatus& r = out.node.replicas(0);
  EXPECT_EQ(r.app(), "web");
  EXPECT_EQ(r.replica_id(), "web-1");
  EXPECT_EQ(r.state(), pb::REPLICA_STARTING);
  EXPECT_EQ(r.app_generation(), 7u);
  EXPECT_EQ(r.scheduler_id(), "s1");
  EXPECT_EQ(r.max_concurrency(), 2);
  EXPECT_EQ(r.claimed_at_ms(), clock_.WallMillis());
  EXPECT_EQ(out.node.allocated().cpu_millis(), 1000);
  EXPECT_EQ(out.node.allocated().memory_mb(), 1024);
  EXPECT_EQ(changes_.load(), 1) << "the heartbeat must be woken";

  ASSERT_EQ(factory_.calls(), 1);
  const ReplicaLaunch& launch = factory_.worker("web-1")->launch();
  EXPECT_EQ(launch.app, "web");
  EXPECT_EQ(launch.replica_id, "web-1");
  EXPECT_EQ(launch.engine.engine(), "synthetic");
  EXPECT_EQ(launch.max_concurrency, 2);
}

TEST_F(NodeAgentTest, StaleVersionIsAConflictWithTheCurrentStatus) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  pb::ClaimRequest first = ClaimFor(agent, "web-1");
  pb::ClaimRequest second = ClaimFor(agent, "web-2");  // saw the same version
  ASSERT_TRUE(agent.Claim(first).status.ok());
  const uint64_t v = agent.version();

  NodeAgent::ClaimOutcome out = agent.Claim(second);
  EXPECT_TRUE(out.conflict);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(out.node.version(), v) << "the loser learns the current version";
  ASSERT_EQ(out.node.replicas_size(), 1);
  EXPECT_EQ(out.node.replicas(0).replica_id(), "web-1");
  EXPECT_EQ(agent.version(), v);
  EXPECT_EQ(factory_.calls(), 1);

  // With the version it learnt, it wins.
  second.set_expected_version(out.node.version());
  EXPECT_TRUE(agent.Claim(second).status.ok());
}

TEST_F(NodeAgentTest, WrongNodeOrIncarnationIsFailedPreconditionNotConflict) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  const uint64_t v = agent.version();
  pb::ClaimRequest other_node = ClaimFor(agent, "web-1");
  other_node.set_node_id("n2");
  NodeAgent::ClaimOutcome out = agent.Claim(other_node);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(out.conflict);

  pb::ClaimRequest old_run = ClaimFor(agent, "web-1");
  old_run.set_incarnation(agent.incarnation() - 1);
  out = agent.Claim(old_run);
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(out.conflict);
  EXPECT_EQ(agent.version(), v);
  EXPECT_EQ(factory_.calls(), 0);
  EXPECT_EQ(agent.CurrentStatus().replicas_size(), 0);
}

TEST_F(NodeAgentTest, DrainingNodeRefusesClaims) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  agent.SetChangeListener([this] { ++changes_; });
  const uint64_t v = agent.version();
  agent.BeginDrain();
  EXPECT_TRUE(agent.draining());
  EXPECT_EQ(agent.version(), v + 1) << "draining must reach the views";
  EXPECT_TRUE(agent.CurrentStatus().draining());
  EXPECT_EQ(changes_.load(), 1);
  agent.BeginDrain();
  EXPECT_EQ(agent.version(), v + 1);

  NodeAgent::ClaimOutcome out = agent.Claim(ClaimFor(agent, "web-1"));
  EXPECT_EQ(out.status.code(), StatusCode::kFailedPrecondition);
  EXPECT_FALSE(out.conflict) << "retrying with a fresh version cannot help";
  EXPECT_TRUE(out.node.draining());
  EXPECT_EQ(factory_.calls(), 0);
  EXPECT_EQ(agent.version(), v + 1);
}

TEST_F(NodeAgentTest, ClaimThatDoesNotFitIsResourceExhausted) {
  NodeAgent agent(Options(/*slots=*/3), clock_, factory_.Get());
  auto refused = [&](pb::ClaimRequest c) {
    const uint64_t v = agent.version();
    NodeAgent::ClaimOutcome out = agent.Claim(c);
    EXPECT_FALSE(out.conflict);
    EXPECT_EQ(agent.version(), v);
    return out.status.code();
  };
  pb::ClaimRequest cpu = ClaimFor(agent, "big-cpu");
  cpu.mutable_resources()->set_cpu_millis(4001);
  EXPECT_EQ(refused(cpu), StatusCode::kResourceExhausted);
  pb::ClaimRequest mem = ClaimFor(agent, "big-mem");
  mem.mutable_resources()->set_memory_mb(8193);
  EXPECT_EQ(refused(mem), StatusCode::kResourceExhausted);
  pb::ClaimRequest two_a10 = ClaimFor(agent, "two-a10");
  two_a10.mutable_resources()->set_gpus(2);
  two_a10.mutable_resources()->add_card_types("A10");
  EXPECT_EQ(refused(two_a10), StatusCode::kResourceExhausted) << "one A10 only; the T4s are not accepted";
  pb::ClaimRequest v100 = ClaimFor(agent, "v100");
  v100.mutable_resources()->set_gpus(1);
  v100.mutable_resources()->add_card_types("V100");
  EXPECT_EQ(refused(v100), StatusCode::kResourceExhausted);
  pb::ClaimRequest three = ClaimFor(agent, "three");
  three.mutable_resources()->set_gpus(3);  // any type, but no type has three
  EXPECT_EQ(refused(three), StatusCode::kResourceExhausted);
  EXPECT_EQ(factory_.calls(), 0);

  // Any card: the faster A10 is given first, then the T4s; a second A10 is not there.
  pb::ClaimRequest g1 = ClaimFor(agent, "g1");
  g1.mutable_resources()->set_gpus(1);
  NodeAgent::ClaimOutcome out = agent.Claim(g1);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(FindReplica(out.node, "g1")->card_type(), "A10");
  pb::ClaimRequest g2 = ClaimFor(agent, "g2");
  g2.mutable_resources()->set_gpus(1);
  g2.mutable_resources()->add_card_types("A10");
  EXPECT_EQ(refused(g2), StatusCode::kResourceExhausted) << "the only A10 is taken";
  g2.clear_resources();
  g2.mutable_resources()->set_cpu_millis(1000);
  g2.mutable_resources()->set_memory_mb(1024);
  g2.mutable_resources()->set_gpus(2);
  g2.set_expected_version(agent.version());
  out = agent.Claim(g2);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(FindReplica(out.node, "g2")->card_type(), "T4");
  EXPECT_EQ(out.node.allocated().gpus(), 3);

  // CPU: 2000 of 4000 taken; 2001 more does not fit, 2000 does (third and last slot).
  pb::ClaimRequest c3 = ClaimFor(agent, "c3");
  c3.mutable_resources()->set_cpu_millis(2001);
  EXPECT_EQ(refused(c3), StatusCode::kResourceExhausted);
  c3.mutable_resources()->set_cpu_millis(2000);
  ASSERT_TRUE(agent.Claim(c3).status.ok());
  // No slot left, though CPU would not matter for it.
  pb::ClaimRequest c4 = ClaimFor(agent, "c4");
  c4.mutable_resources()->set_cpu_millis(1);
  EXPECT_EQ(refused(c4), StatusCode::kResourceExhausted);
  EXPECT_EQ(agent.CurrentStatus().replicas_size(), 3);
}

TEST_F(NodeAgentTest, DuplicateReplicaIdIsAlreadyExists) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  const uint64_t v = agent.version();
  NodeAgent::ClaimOutcome out = agent.Claim(ClaimFor(agent, "web-1"));
  EXPECT_EQ(out.status.code(), StatusCode::kAlreadyExists);
  EXPECT_FALSE(out.conflict);
  EXPECT_EQ(agent.version(), v);
  EXPECT_EQ(agent.CurrentStatus().replicas_size(), 1);
  EXPECT_EQ(factory_.calls(), 1);
}

TEST_F(NodeAgentTest, InvalidClaimShapeIsInvalidArgument) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  const uint64_t v = agent.version();
  std::vector<std::pair<std::string, pb::ClaimRequest>> cases;
  pb::ClaimRequest c = ClaimFor(agent, "r");
  c.set_app("bad app!");
  cases.emplace_back("bad app name", c);
  c = ClaimFor(agent, "r");
  c.mutable_resources()->set_cpu_millis(0);
  cases.emplace_back("zero cpu", c);
  c = ClaimFor(agent, "r");
  c.mutable_resources()->set_memory_mb(-1);
  cases.emplace_back("negative memory", c);
  c = ClaimFor(agent, "r");
  c.mutable_engine()->set_engine("docker");
  cases.emplace_back("unknown engine", c);
  c = ClaimFor(agent, "r");
  c.mutable_engine()->set_engine("exec");
  c.mutable_engine()->set_command("bin/worker");
  cases.emplace_back("relative exec command", c);
  c = ClaimFor(agent, "r");
  c.set_max_concurrency(0);
  cases.emplace_back("zero max_concurrency", c);
  c = ClaimFor(agent, "");
  cases.emplace_back("empty replica id", c);
  for (const auto& [what, claim] : cases) {
    NodeAgent::ClaimOutcome out = agent.Claim(claim);
    EXPECT_EQ(out.status.code(), StatusCode::kInvalidArgument) << what;
    EXPECT_FALSE(out.conflict) << what;
  }
  EXPECT_EQ(agent.version(), v);
  EXPECT_EQ(factory_.calls(), 0);

  c = ClaimFor(agent, "r");
  c.mutable_engine()->set_engine("exec");
  c.mutable_engine()->set_command("/usr/bin/worker");
  EXPECT_TRUE(agent.Claim(c).status.ok()) << "an absolute exec command is fine";
}

TEST_F(NodeAgentTest, FactoryFailureFreesTheReservation) {
  NodeAgent agent(Options(/*slots=*/1), clock_, factory_.Get());
  factory_.fail_with = Internal("exec: no such file");
  pb::ClaimRequest gpu = ClaimFor(agent, "web-1");
  gpu.mutable_resources()->set_gpus(1);
  gpu.mutable_resources()->add_card_types("A10");
  NodeAgent::ClaimOutcome out = agent.Claim(gpu);
  EXPECT_EQ(out.status.code(), StatusCode::kInternal);
  EXPECT_FALSE(out.conflict);
  EXPECT_EQ(out.node.replicas_size(), 0);
  EXPECT_EQ(out.node.version(), agent.version());
  EXPECT_EQ(agent.CurrentStatus().replicas_size(), 0);

  // The only slot and the only A10 are free again.
  factory_.fail_with = Status::Ok();
  pb::ClaimRequest again = ClaimFor(agent, "web-2");
  again.mutable_resources()->set_gpus(1);
  again.mutable_resources()->add_card_types("A10");
  out = agent.Claim(again);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(FindReplica(out.node, "web-2")->card_type(), "A10");
}

TEST_F(NodeAgentTest, ClaimOfSeveralReplicasIsOneCompareAndSwap) {
  NodeAgent agent(Options(/*slots=*/4), clock_, factory_.Get());
  const uint64_t v = agent.version();
  pb::ClaimRequest three = ClaimFor(agent, "web-1");
  three.add_more_replica_ids("web-2");
  three.add_more_replica_ids("web-3");
  NodeAgent::ClaimOutcome out = agent.Claim(three);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  EXPECT_EQ(agent.version(), v + 1) << "one version bump for the whole claim";
  ASSERT_EQ(out.node.replicas_size(), 3);
  for (const char* id : {"web-1", "web-2", "web-3"}) {
    const pb::ReplicaStatus* r = FindReplica(out.node, id);
    ASSERT_NE(r, nullptr) << id;
    EXPECT_EQ(r->app(), "web");
    EXPECT_EQ(r->resources().cpu_millis(), 1000);
    EXPECT_EQ(r->app_generation(), 7u);
  }
  EXPECT_EQ(factory_.calls(), 3) << "a worker per replica";

  // All or none: two more replicas need two slots and 2000m of cpu; one slot and 1000m are left.
  const uint64_t v2 = agent.version();
  pb::ClaimRequest two = ClaimFor(agent, "web-4");
  two.add_more_replica_ids("web-5");
  out = agent.Claim(two);
  EXPECT_EQ(out.status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(agent.version(), v2);
  EXPECT_EQ(agent.CurrentStatus().replicas_size(), 3);
  EXPECT_EQ(factory_.calls(), 3);

  // A stale version refuses every replica of the claim.
  pb::ClaimRequest stale = ClaimFor(agent, "web-6");
  stale.set_expected_version(v);
  out = agent.Claim(stale);
  EXPECT_TRUE(out.conflict);

  // One id already there refuses the claim.
  pb::ClaimRequest dup = ClaimFor(agent, "web-7");
  dup.add_more_replica_ids("web-2");
  out = agent.Claim(dup);
  EXPECT_EQ(out.status.code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(agent.CurrentStatus().replicas_size(), 3);
}

TEST_F(NodeAgentTest, ClaimOfSeveralReplicasShapeIsChecked) {
  NodeAgent agent(Options(/*slots=*/100), clock_, factory_.Get());
  pb::ClaimRequest same = ClaimFor(agent, "web-1");
  same.add_more_replica_ids("web-1");
  EXPECT_EQ(agent.Claim(same).status.code(), StatusCode::kInvalidArgument);
  pb::ClaimRequest empty = ClaimFor(agent, "web-1");
  empty.add_more_replica_ids("");
  EXPECT_EQ(agent.Claim(empty).status.code(), StatusCode::kInvalidArgument);
  pb::ClaimRequest too_many = ClaimFor(agent, "web-0");
  for (int i = 1; i < 65; ++i) too_many.add_more_replica_ids("web-" + std::to_string(i));
  EXPECT_EQ(agent.Claim(too_many).status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(factory_.calls(), 0);
}

TEST_F(NodeAgentTest, ClaimOfSeveralGpuReplicasGivesEachACard) {
  NodeAgent agent(Options(/*slots=*/4), clock_, factory_.Get());
  pb::ClaimRequest gpus = ClaimFor(agent, "g-1");
  gpus.add_more_replica_ids("g-2");
  gpus.add_more_replica_ids("g-3");
  gpus.mutable_resources()->set_cpu_millis(100);
  gpus.mutable_resources()->set_gpus(1);
  NodeAgent::ClaimOutcome out = agent.Claim(gpus);
  ASSERT_TRUE(out.status.ok()) << out.status.ToString();
  std::multiset<std::string> cards;
  for (const auto& r : out.node.replicas()) cards.insert(r.card_type());
  EXPECT_EQ(cards, (std::multiset<std::string>{"A10", "T4", "T4"})) << "the A10 first (faster), then both T4s";

  pb::ClaimRequest one_more = ClaimFor(agent, "g-4");
  one_more.mutable_resources()->set_cpu_millis(100);
  one_more.mutable_resources()->set_gpus(1);
  EXPECT_EQ(agent.Claim(one_more).status.code(), StatusCode::kResourceExhausted) << "every card is taken";
}

TEST_F(NodeAgentTest, AWorkerThatFailsToStartCostsOnlyItsReplica) {
  NodeAgent agent(Options(/*slots=*/4), clock_, factory_.Get());
  factory_.during = [&](const ReplicaLaunch& launch) {
    factory_.fail_with = launch.replica_id == "web-2" ? Internal("exec: no such file") : Status::Ok();
  };
  pb::ClaimRequest three = ClaimFor(agent, "web-1");
  three.add_more_replica_ids("web-2");
  three.add_more_replica_ids("web-3");
  NodeAgent::ClaimOutcome out = agent.Claim(three);
  EXPECT_EQ(out.status.code(), StatusCode::kInternal);
  EXPECT_NE(out.status.message().find("web-2"), std::string::npos) << out.status.ToString();
  EXPECT_EQ(out.node.replicas_size(), 2);
  EXPECT_NE(FindReplica(out.node, "web-1"), nullptr);
  EXPECT_EQ(FindReplica(out.node, "web-2"), nullptr);
  EXPECT_NE(FindReplica(out.node, "web-3"), nullptr);
  EXPECT_EQ(out.node.version(), agent.version());
}

TEST_F(NodeAgentTest, ReleaseWaitsForInFlightRequestsThenStopsAndFreesTheSlot) {
  Answers answers;
  NodeAgent agent(Options(/*slots=*/1), clock_, factory_.Get());
  agent.SetChangeListener([this] { ++changes_; });
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  std::shared_ptr<FakeWorker> worker = factory_.worker("web-1");
  worker->SetState(State::kRunning);
  agent.Invoke("web", "", "req", answers.Collector());
  ASSERT_EQ(worker->pending(), 1);
  ASSERT_EQ(agent.in_flight(), 1);

  const uint64_t v = agent.version();
  const int changes = changes_.load();
  Result<pb::NodeStatus> released = agent.Release(ReleaseOf("web-1"));
  ASSERT_TRUE(released.ok()) << released.status().ToString();
  ASSERT_NE(FindReplica(*released, "web-1"), nullptr);
  EXPECT_EQ(FindReplica(*released, "web-1")->state(), pb::REPLICA_DRAINING);
  EXPECT_EQ(released->version(), v + 1);
  EXPECT_EQ(changes_.load(), changes + 1);

  // New requests no longer go to it; releasing it again changes nothing.
  agent.Invoke("web", "", "late", answers.Collector());
  EXPECT_EQ(answers.Last().code, StatusCode::kUnavailable);
  Result<pb::NodeStatus> again = agent.Release(ReleaseOf("web-1"));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->version(), v + 1);
  // The slot is still taken while the request runs, and the worker is not stopped under it.
  EXPECT_EQ(agent.Claim(ClaimFor(agent, "web-2")).status.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(worker->stops(), 0);

  worker->CompleteOne(std::string("answer"));
  EXPECT_EQ(answers.Last().code, StatusCode::kOk);
  EXPECT_EQ(answers.Last().payload, "answer");
  EXPECT_EQ(answers.Last().replica_id, "web-1");
  // A release thread stops the worker and frees the slot (real time, bounded).
  ASSERT_TRUE(chorus::testing::Eventually([&] { return agent.CurrentStatus().replicas_size() == 0; }));
  EXPECT_EQ(worker->stops(), 1);
  EXPECT_EQ(worker->stops_with_pending(), 0) << "stopped under a running request";
  EXPECT_EQ(worker->last_grace(), seconds(7)) << "release_grace";
  EXPECT_GT(agent.version(), v + 1);
  EXPECT_EQ(agent.in_flight(), 0);
  EXPECT_TRUE(agent.Claim(ClaimFor(agent, "web-2")).status.ok());
}

// The release thread must not start while a request runs. A wrong agent would stop the worker on
// another thread at some moment, so repeat the sequence to give that moment many chances; a
// correct agent passes every round.
TEST_F(NodeAgentTest, ReleaseNeverStopsAWorkerUnderARunningRequest) {
  for (int round = 0; round < 200; ++round) {
    Answers answers;
    FakeFactory factory;
    NodeAgent agent(Options(/*slots=*/1), clock_, factory.Get());
    ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
    std::shared_ptr<FakeWorker> worker = factory.worker("web-1");
    worker->SetState(State::kRunning);
    agent.Invoke("web", "", "a", answers.Collector());
    agent.Invoke("web", "", "b", answers.Collector());
    ASSERT_TRUE(agent.Release(ReleaseOf("web-1")).ok());
    const pb::NodeStatus draining = agent.CurrentStatus();
    ASSERT_NE(FindReplica(draining, "web-1"), nullptr)
        << "round " << round << ": freed with requests running";
    EXPECT_EQ(FindReplica(draining, "web-1")->state(), pb::REPLICA_DRAINING);
    worker->CompleteOne(std::string("a"));
    EXPECT_EQ(agent.CurrentStatus().replicas_size(), 1)
        << "round " << round << ": freed with a request running";
    worker->CompleteOne(std::string("b"));
    ASSERT_TRUE(chorus::testing::Eventually([&] { return agent.CurrentStatus().replicas_size() == 0; }));
    ASSERT_EQ(worker->stops_with_pending(), 0) << "round " << round;
    ASSERT_EQ(answers.Last().code, StatusCode::kOk) << "round " << round;
  }
}

TEST_F(NodeAgentTest, ReleaseWithoutRequestsStopsAtOnce) {
  NodeAgent agent(Options(/*slots=*/1), clock_, factory_.Get());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  ASSERT_TRUE(agent.Release(ReleaseOf("web-1")).ok());
  ASSERT_TRUE(chorus::testing::Eventually([&] { return agent.CurrentStatus().replicas_size() == 0; }));
  EXPECT_EQ(factory_.worker("web-1")->stops(), 1);
}

TEST_F(NodeAgentTest, ReleaseOfUnknownReplicaOrOtherNode) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  const uint64_t v = agent.version();
  EXPECT_EQ(agent.Release(ReleaseOf("nope")).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(agent.Release(ReleaseOf("web-1", "n2")).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(agent.version(), v);
  EXPECT_EQ(FindReplica(agent.CurrentStatus(), "web-1")->state(), pb::REPLICA_STARTING);
}

TEST_F(NodeAgentTest, InvokeQueuesUpToTheQueueFactorThenRefuses) {
  Answers answers;
  NodeOptions options = Options();
  options.invoke_queue = 3;
  NodeAgent agent(options, clock_, factory_.Get());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());  // max_concurrency 2
  factory_.worker("web-1")->SetState(State::kRunning);
  for (int i = 0; i < 6; ++i) agent.Invoke("web", "", "p", answers.Collector());
  EXPECT_EQ(answers.size(), 0u) << "2 running and 4 waiting: none refused";
  EXPECT_EQ(agent.in_flight(), 6);
  agent.Invoke("web", "", "p", answers.Collector());
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers.Last().code, StatusCode::kResourceExhausted);
}

TEST_F(NodeAgentTest, InvokePicksLeastLoadedRunningReplica) {
  Answers answers;
  NodeAgent agent(Options(/*slots=*/3), clock_, factory_.Get());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-2")).status.ok());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "img-1", "img")).status.ok());  // stays STARTING
  auto w1 = factory_.worker("web-1");
  auto w2 = factory_.worker("web-2");
  w1->SetState(State::kRunning);
  w2->SetState(State::kRunning);

  // No running replica of the app here: Unavailable (also for an app never claimed).
  agent.Invoke("img", "", "x", answers.Collector());
  EXPECT_EQ(answers.Last().code, StatusCode::kUnavailable);
  agent.Invoke("ocr", "", "x", answers.Collector());
  EXPECT_EQ(answers.Last().code, StatusCode::kUnavailable);

  // Four requests over two replicas of max_concurrency 2: they alternate, two each.
  agent.Invoke("web", "", "p", answers.Collector());
  EXPECT_EQ(w1->pending() + w2->pending(), 1);
  agent.Invoke("web", "", "p", answers.Collector());
  EXPECT_EQ(w1->pending(), 1) << "the second request must go to the idle replica";
  EXPECT_EQ(w2->pending(), 1);
  for (int i = 0; i < 2; ++i) agent.Invoke("web", "", "p", answers.Collector());
  EXPECT_EQ(w1->pending(), 2);
  EXPECT_EQ(w2->pending(), 2);
  EXPECT_EQ(agent.in_flight(), 4);
  EXPECT_EQ(agent.CurrentStatus().in_flight(), 4);

  // All at max_concurrency: ResourceExhausted, and nothing is queued.
  const size_t before = answers.size();
  agent.Invoke("web", "", "p", answers.Collector());
  ASSERT_EQ(answers.size(), before + 1);
  EXPECT_EQ(answers.Last().code, StatusCode::kResourceExhausted);
  agent.Invoke("web", "web-1", "p", answers.Collector());
  EXPECT_EQ(answers.Last().code, StatusCode::kResourceExhausted);
  EXPECT_EQ(agent.in_flight(), 4);

  // web-2 finishes one: the next request goes there, the least loaded.
  w2->CompleteOne(std::string("ok"));
  EXPECT_EQ(answers.Last().replica_id, "web-2");
  agent.Invoke("web", "", "p", answers.Collector());
  EXPECT_EQ(w1->pending(), 2);
  EXPECT_EQ(w2->pending(), 2);

  // A failing worker answer is passed on, and the slot of concurrency is given back.
  w1->CompleteOne(Internal("worker said no"));
  EXPECT_EQ(answers.Last().code, StatusCode::kInternal);
  EXPECT_EQ(answers.Last().replica_id, "web-1");
  agent.Invoke("web", "web-1", "p", answers.Collector());
  EXPECT_EQ(w1->pending(), 2);

  // A replica that fails is no longer invoked.
  w1->CompleteOne(std::string("a"));
  w1->CompleteOne(std::string("b"));
  w1->SetState(State::kFailed);
  w2->CompleteOne(std::string("c"));
  agent.Invoke("web", "", "p", answers.Collector());
  EXPECT_EQ(w1->pending(), 0);
  EXPECT_EQ(w2->pending(), 2);
}

TEST_F(NodeAgentTest, RuntimeStateChangesBumpTheVersionAndNotify) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  agent.SetChangeListener([this] { ++changes_; });
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  auto w = factory_.worker("web-1");
  uint64_t v = agent.version();
  int changes = changes_.load();

  w->SetState(State::kRunning);
  EXPECT_EQ(agent.version(), v + 1);
  EXPECT_EQ(changes_.load(), changes + 1);
  EXPECT_EQ(FindReplica(agent.CurrentStatus(), "web-1")->state(), pb::REPLICA_RUNNING);

  w->SetState(State::kRunning);  // no change: no bump
  EXPECT_EQ(agent.version(), v + 1);
  EXPECT_EQ(changes_.load(), changes + 1);

  w->SetState(State::kRestarting, /*restarts=*/3);
  EXPECT_EQ(agent.version(), v + 2);
  EXPECT_EQ(changes_.load(), changes + 2);
  EXPECT_EQ(FindReplica(agent.CurrentStatus(), "web-1")->state(), pb::REPLICA_STARTING);
  EXPECT_EQ(FindReplica(agent.CurrentStatus(), "web-1")->restarts(), 3);

  w->SetState(State::kFailed);
  EXPECT_EQ(agent.version(), v + 3);
  EXPECT_EQ(changes_.load(), changes + 3);
  EXPECT_EQ(FindReplica(agent.CurrentStatus(), "web-1")->state(), pb::REPLICA_FAILED);
}

TEST_F(NodeAgentTest, StopAllStopsEveryRuntimeAndRefusesNewWork) {
  Answers answers;
  NodeAgent agent(Options(/*slots=*/3), clock_, factory_.Get());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-2")).status.ok());
  factory_.worker("web-1")->SetState(State::kRunning);
  agent.StopAll(seconds(3));
  for (const char* id : {"web-1", "web-2"}) {
    EXPECT_EQ(factory_.worker(id)->stops(), 1) << id;
    EXPECT_EQ(factory_.worker(id)->last_grace(), seconds(3)) << id;
  }
  agent.Invoke("web", "", "p", answers.Collector());
  EXPECT_EQ(answers.Last().code, StatusCode::kUnavailable);
  NodeAgent::ClaimOutcome out = agent.Claim(ClaimFor(agent, "web-3"));
  EXPECT_FALSE(out.status.ok());
  EXPECT_FALSE(out.conflict);
  EXPECT_EQ(factory_.calls(), 2);
}

TEST_F(NodeAgentTest, DestructorStopsRemainingRuntimes) {
  std::shared_ptr<FakeWorker> w;
  {
    NodeAgent agent(Options(), clock_, factory_.Get());
    ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
    w = factory_.worker("web-1");
  }
  EXPECT_GE(w->stops(), 1);
  EXPECT_TRUE(w->destroyed());
}

// A Release that arrives while the claim's worker is still being started (the replica is reserved
// and visible as STARTING, so a racing scheduler may release it as surplus) wins: the claim is
// refused with the node's current status, and the worker that came up is stopped.
TEST_F(NodeAgentTest, ReleaseWhileTheWorkerStartsIsReportedCorrectly) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  factory_.during = [&agent](const ReplicaLaunch& launch) {
    ASSERT_TRUE(agent.Release(ReleaseOf(launch.replica_id)).ok());
    ASSERT_TRUE(chorus::testing::Eventually([&] { return agent.CurrentStatus().replicas_size() == 0; }));
  };
  NodeAgent::ClaimOutcome out = agent.Claim(ClaimFor(agent, "web-1"));
  EXPECT_EQ(agent.CurrentStatus().replicas_size(), 0);
  EXPECT_EQ(out.node.node_id(), "n1") << "the answer carries an empty node status";
  EXPECT_EQ(out.node.version(), agent.version());
  EXPECT_FALSE(out.status.ok())
      << "claim reported accepted for a replica that was released before it started";
  ASSERT_NE(factory_.worker("web-1"), nullptr);
  EXPECT_GE(factory_.worker("web-1")->stops(), 1) << "the worker started for the released replica still runs";
}

// The version changes with every change of replica states, including a worker that was already
// RUNNING when Claim() stored it (its state change came before the runtime was known).
TEST_F(NodeAgentTest, ReplicaStateSetAfterStartBumpsTheVersion) {
  NodeAgent agent(Options(), clock_, factory_.Get());
  factory_.initial_state = State::kRunning;
  pb::NodeStatus seen;
  factory_.during = [&](const ReplicaLaunch&) { seen = agent.CurrentStatus(); };
  ASSERT_TRUE(agent.Claim(ClaimFor(agent, "web-1")).status.ok());
  pb::NodeStatus after = agent.CurrentStatus();
  ASSERT_EQ(FindReplica(seen, "web-1")->state(), pb::REPLICA_STARTING);
  ASSERT_EQ(FindReplica(after, "web-1")->state(), pb::REPLICA_RUNNING);
  EXPECT_GT(after.version(), seen.version()) << "two different states under one version";
}

}  // namespace
}  // namespace chorus::compute
