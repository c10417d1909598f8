// likes as a fleet (docs/scale-out.md): three `chorus likes` processes and one `chorus likes job`
// on a real mariadbd and nats-server (JetStream), under a mixed load; then every acknowledged
// action is in the database, the counts agree on every node and `chorus likes verify` finds no
// difference. Then each degradation mode, by stopping the real engine mid-load: JetStream down
// (writes go to the database synchronously), the database down (writes keep queueing, the job
// catches up), and the job killed with -9 (redelivery is applied exactly once).
#include <gtest/gtest.h>

#include <atomic>
#include <csignal>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "chorus/likes/v1/likes.grpc.pb.h"
#include "support/engines.h"
#include "support/eventually.h"
#include "support/http_client.h"
#include "support/subprocess.h"

namespace chorus::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

struct Proc {
  std::unique_ptr<Subprocess> process;
  int http_port = 0;
  int grpc_port = 0;
};

class LikesClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = TempDir::Create("likes_cluster_test");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = std::make_unique<TempDir>(std::move(*dir));
    auto db = MariaDbServer::Start();
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = std::move(*db);
    auto nats = NatsServer::Start();
    ASSERT_TRUE(nats.ok()) << nats.status().ToString();
    nats_ = std::move(*nats);
    config_ = dir_->path() + "/chorus.yaml";
    std::ofstream(config_) << "likes:\n"
                           << "  engine: cluster\n"
                           << "  rate_limits: false\n"
                           << "  flush_interval: 200ms\n"
                           << "  mysql: {host: 127.0.0.1, port: " << db_->port() << ", user: " << db_->user()
                           << ", password: " << db_->password() << ", database: likes_fleet, pool_size: 4}\n"
                           << "  nats: {urls: [\"" << nats_->url() << "\"]}\n"
                           << "  job: {window: 50ms, ack_wait: 3s}\n"
                           << "runtime: {shards: 2, pin_threads: false}\n";
    auto [code, out] = Run({"likes", "migrate"});
    ASSERT_EQ(code, 0) << out;
    // Idempotent.
    std::tie(code, out) = Run({"likes", "migrate"});
    ASSERT_EQ(code, 0) << out;
    auto [tcode, tout] =
        Run({"token", "--data-dir", DataDir(), "--service", "loader", "--scope", "likes.write"});
    ASSERT_EQ(tcode, 0) << tout;
    token_ = tout.substr(0, tout.find('\n'));
  }

  std::string DataDir() const { return dir_->path() + "/data"; }

  // The Redis cache in front of the database: one server, or a 3-master Redis Cluster.
  void UseRedis(bool cluster) {
    std::string seeds;
    if (cluster) {
      auto c = RedisClusterServer::Start(3);
      ASSERT_TRUE(c.ok()) << c.status().ToString();
      redis_cluster_ = std::move(*c);
      for (const std::string& a : redis_cluster_->addresses()) seeds += (seeds.empty() ? "" : ",") + a;
      extra_ = {"--set", "likes.redis.cluster=true"};
    } else {
      auto r = RedisServer::Start();
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      redis_ = std::move(*r);
      seeds = "127.0.0.1:" + std::to_string(redis_->port());
    }
    extra_.insert(extra_.end(), {"--set", "likes.redis.seeds=[" + seeds + "]"});
  }

  std::pair<int, std::string> Run(std::vector<std::string> args) {
    args.insert(args.begin(), CHORUS_BIN);
    if (args[1] == "likes") {
      args.insert(args.end(), {"--config", config_, "--data-dir", DataDir()});
      args.insert(args.end(), extra_.begin(), extra_.end());
    }
    auto p = Subprocess::Start(args, {});
    if (!p.ok()) return {-100, p.status().ToString()};
    auto code = (*p)->Wait(60s);
    return {code.ok() ? *code : -101, (*p)->output()};
  }

  // `chorus likes` (a service node) or `chorus likes job`.
  Result<Proc> Start(const std::string& node_id, bool job = false) {
    std::vector<std::string> argv = {CHORUS_BIN, "likes"};
    if (job) argv.push_back("job");
    argv.insert(argv.end(), {"--config", config_, "--data-dir", DataDir(), "--http", "127.0.0.1:0", "--grpc",
                             "127.0.0.1:0", "--set", "likes.node_id=" + node_id});
    argv.insert(argv.end(), extra_.begin(), extra_.end());
    Proc p;
    CHORUS_ASSIGN_OR_RETURN(p.process, Subprocess::Start(argv, {}));
    CHORUS_ASSIGN_OR_RETURN(std::string line, p.process->WaitForLine("http listening on", 30s));
    CHORUS_RETURN_IF_ERROR(p.process->WaitForLine("[chorus] ready", 30s).status());
    std::smatch m;
    if (!std::regex_search(line, m, std::regex(R"(127\.0\.0\.1:(\d+))"))) return Internal("no port: " + line);
    p.http_port = std::stoi(m[1]);
    CHORUS_ASSIGN_OR_RETURN(std::string grpc_line, p.process->WaitForLine("grpc listening on", 30s));
    if (!std::regex_search(grpc_line, m, std::regex(R"(127\.0\.0\.1:(\d+))"))) return Internal("no port: " + grpc_line);
    p.grpc_port = std::stoi(m[1]);
    return p;
  }

  void StartFleet() {
    for (int i = 0; i < 3; ++i) {
      auto p = Start("node" + std::to_string(i));
      ASSERT_TRUE(p.ok()) << p.status().ToString();
      nodes_.push_back(std::move(*p));
    }
    auto j = Start("job", /*job=*/true);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    job_ = std::move(*j);
  }

  std::vector<std::pair<std::string, std::string>> Auth() const {
    return {{"Authorization", "Bearer " + token_}};
  }

  Result<HttpReply> Act(HttpClient& c, const std::string& user, const std::string& entity,
                        const std::string& action) {
    json body = {
        {"business", "video"}, {"user", user}, {"entity", entity}, {"owner", "author"}, {"action", action}};
    return c.Request("POST", "/v1/likes", body.dump(),
                     {{"Authorization", "Bearer " + token_}, {"Content-Type", "application/json"}});
  }

  // A metric's value from a process's /metrics (-1 when absent or unreachable).
  double Metric(int port, const std::string& name) {
    auto c = HttpClient::Connect(port);
    if (!c.ok()) return -1;
    auto r = c->Get("/metrics");
    if (!r.ok()) return -1;
    std::smatch m;
    if (!std::regex_search(r->body, m, std::regex("\n" + name + " ([0-9.e+]+)"))) return -1;
    return std::stod(m[1]);
  }

  json Readyz(int port) {
    auto c = HttpClient::Connect(port);
    if (!c.ok()) return json();
    auto r = c->Get("/readyz");
    if (!r.ok()) return json();
    return json::parse(r->body, nullptr, false);
  }

  std::string ReadyDetail(int port, const std::string& service) {
    json j = Readyz(port);
    if (!j.is_object() || !j.contains("services")) return "";
    for (const auto& s : j["services"]) {
      if (s.value("name", "") == service) return s.value("detail", "");
    }
    return "";
  }

  // Every action the nodes appended is in the database: each node's queue lag is 0.
  bool Drained() {
    for (const Proc& n : nodes_) {
      if (Metric(n.http_port, "chorus_likes_queue_lag") != 0) return false;
    }
    return true;
  }

  // A closed-loop writer: user `u` of writer `w` always talks to node (u % 3) (so its last
  // acknowledged state is the truth); returns the acknowledged state per (user, entity).
  struct Load {
    std::map<std::string, std::string> acked;  // "user/entity" -> state
    std::map<std::string, std::string> inflight;
    std::atomic<int> acks{0};  // read by the test thread while the writer runs
    int failures = 0;
  };
  // Writer threads and their loads.
  struct Writers {
    std::deque<Load> loads;
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    int acks() const {
      int n = 0;
      for (const Load& l : loads) n += l.acks.load();
      return n;
    }
    void Join() {
      stop = true;
      for (auto& t : threads) t.join();
      threads.clear();
    }
    ~Writers() { Join(); }
  };
  void StartWriters(Writers& w, int writers, int users, int entities, bool tolerate_failures) {
    for (int i = 0; i < writers; ++i) {
      Load& load = w.loads.emplace_back();
      w.threads.emplace_back([this, &w, &load, i, users, entities, tolerate_failures] {
        Writer(i, users, entities, w.stop, load, tolerate_failures);
      });
    }
  }
  void Writer(int w, int users, int entities, std::atomic<bool>& stop, Load& load, bool tolerate_failures) {
    std::vector<HttpClient> clients;
    for (const Proc& n : nodes_) {
      auto c = HttpClient::Connect(n.http_port);
      if (!c.ok()) return;
      clients.push_back(std::move(*c));
    }
    std::mt19937 rng(w + 1);
    while (!stop.load()) {
      const int u = static_cast<int>(rng() % users);
      const std::string user = "w" + std::to_string(w) + "u" + std::to_string(u);
      const std::string entity = "e" + std::to_string(rng() % entities);
      const std::string key = user + "/" + entity;
      const std::string current = load.acked.count(key) ? load.acked[key] : "none";
      const int pick = static_cast<int>(rng() % 4);
      const std::string action = current == "liked"      ? (pick < 2 ? "unlike" : "dislike")
                                 : current == "disliked" ? (pick < 2 ? "undislike" : "like")
                                                         : (pick < 3 ? "like" : "dislike");
      const std::string target = action == "like" ? "liked" : action == "dislike" ? "disliked" : "none";
      load.inflight[key] = target;
      auto r = Act(clients[static_cast<size_t>(u) % clients.size()], user, entity, action);
      if (!r.ok() || r->status != 200) {
        ++load.failures;
        if (!tolerate_failures) {
          ADD_FAILURE() << "write failed: "
                        << (r.ok() ? std::to_string(r->status) + " " + r->body : r.status().ToString());
          return;
        }
        // The outcome is unknown (may or may not have been applied): stop touching this key.
        if (!r.ok()) {
          auto c = HttpClient::Connect(nodes_[static_cast<size_t>(u) % nodes_.size()].http_port);
          if (c.ok()) clients[static_cast<size_t>(u) % clients.size()] = std::move(*c);
        }
        std::this_thread::sleep_for(5ms);
        continue;
      }
      load.acked[key] = json::parse(r->body).value("state", "?");
      load.inflight.erase(key);
      ++load.acks;
    }
  }

  // After the load: every node answers each user's acknowledged states, and the counts of every
  // entity equal what those states add up to.
  void CheckStates(const std::deque<Load>& loads, int entities) {
    std::map<std::string, std::pair<int, int>> expected;  // entity -> likes, dislikes
    for (const Load& l : loads) {
      for (const auto& [key, state] : l.acked) {
        const std::string entity = key.substr(key.find('/') + 1);
        if (state == "liked") ++expected[entity].first;
        if (state == "disliked") ++expected[entity].second;
      }
    }
    for (size_t n = 0; n < nodes_.size(); ++n) {
      auto c = HttpClient::Connect(nodes_[n].http_port);
      ASSERT_TRUE(c.ok());
      std::string list;
      for (int e = 0; e < entities; ++e) list += (e ? ",e" : "e") + std::to_string(e);
      // Hot entities' counts come from the node's in-process cache, which may lag other nodes'
      // writes by up to likes.cache.ttl (2 s): wait that out, then compare exactly.
      Result<HttpReply> r = Internal("not read");
      auto matches = [&] {
        r = c->Request("GET", "/v1/likes/counts?business=video&entities=" + list, "", Auth());
        if (!r.ok() || r->status != 200) return false;
        json counts = json::parse(r->body)["counts"];
        for (int e = 0; e < entities; ++e) {
          const std::string entity = "e" + std::to_string(e);
          if (counts[entity].value("likes", -1) != expected[entity].first ||
              counts[entity].value("dislikes", -1) != expected[entity].second) {
            return false;
          }
        }
        return true;
      };
      (void)Eventually(matches, 5s);
      ASSERT_TRUE(r.ok());
      ASSERT_EQ(r->status, 200) << r->body;
      json counts = json::parse(r->body)["counts"];
      for (int e = 0; e < entities; ++e) {
        const std::string entity = "e" + std::to_string(e);
        EXPECT_EQ(counts[entity].value("likes", -1), expected[entity].first)
            << "node " << n << " " << entity << " " << r->body << "\n"
            << nodes_[n].process->OutputTail(20);
        EXPECT_EQ(counts[entity].value("dislikes", -1), expected[entity].second)
            << "node " << n << " " << entity;
      }
      // Each user's like list (first page: the cached list with a Redis cache) is exactly the
      // entities the user was last told are liked.
      std::map<std::string, std::set<std::string>> liked_by_user;
      for (const auto& [key, state] : loads[n % loads.size()].acked) {
        auto& set = liked_by_user[key.substr(0, key.find('/'))];
        if (state == "liked") set.insert(key.substr(key.find('/') + 1));
      }
      for (const auto& [user, want] : liked_by_user) {
        for (int pass = 0; pass < 2; ++pass) {  // a refill from the database, then a cache hit
          auto l = c->Request("GET", "/v1/users/" + user + "/likes?business=video&limit=100", "", Auth());
          ASSERT_TRUE(l.ok());
          ASSERT_EQ(l->status, 200) << l->body;
          std::set<std::string> got;
          const json list = json::parse(l->body);
          for (const auto& item : list["items"]) got.insert(item.value("entity", "?"));
          EXPECT_EQ(got, want) << user << " on node " << n << " (read " << pass << "): " << l->body;
        }
      }
      // Spot-check states of one writer's users on this node.
      int checked = 0;
      for (const auto& [key, state] : loads[n % loads.size()].acked) {
        if (++checked > 40) break;
        const std::string user = key.substr(0, key.find('/'));
        const std::string entity = key.substr(key.find('/') + 1);
        auto s = c->Request("GET", "/v1/likes/state?business=video&user=" + user + "&entities=" + entity, "",
                            Auth());
        ASSERT_TRUE(s.ok());
        ASSERT_EQ(s->status, 200) << s->body;
        EXPECT_EQ(json::parse(s->body)["states"].value(entity, "?"), state) << key << " on node " << n;
      }
    }
  }

  void ExpectVerifyClean() {
    auto [code, out] = Run({"likes", "verify"});
    EXPECT_EQ(code, 0) << out;
    EXPECT_NE(out.find("store: mariadb"), std::string::npos) << out;
    EXPECT_NE(out.find("consistent"), std::string::npos) << out;
  }

  // Three writers plus a reader and users acting on the same likes from two nodes at once, then
  // the checks: every node's counts equal the acknowledged states, `chorus likes verify` is clean.
  void MixedLoadIsConsistent() {
    StartFleet();
    if (HasFatalFailure()) return;
    constexpr int kEntities = 12;
    Writers writers;
    StartWriters(writers, 3, /*users=*/30, kEntities, /*tolerate_failures=*/false);
    std::atomic<bool>& stop = writers.stop;
    std::vector<std::thread> threads;
    // Readers on every node meanwhile, and users acting on the same likes from two nodes at once
    // (stale views: the database's authoritative apply must keep counts equal to the records).
    std::atomic<int> reads{0};
    threads.emplace_back([&] {
      std::vector<HttpClient> clients;
      for (const Proc& n : nodes_) {
        auto c = HttpClient::Connect(n.http_port);
        if (!c.ok()) return;
        clients.push_back(std::move(*c));
      }
      for (int i = 0; !stop.load(); ++i) {
        auto r = clients[i % 3].Request("GET", "/v1/likes/counts?business=video&entities=e0,e1,e2,x0,x1", "",
                                        Auth());
        if (r.ok() && r->status == 200) ++reads;
        auto a = Act(clients[i % 3], "shared" + std::to_string(i % 7), "x" + std::to_string(i % 2),
                     i % 3 == 0 ? "unlike" : "like");
        (void)a;
      }
    });
    ASSERT_TRUE(Eventually([&] { return writers.acks() > 3000; }, 120s));
    writers.Join();
    for (auto& t : threads) t.join();
    EXPECT_GT(reads.load(), 0);
    ASSERT_TRUE(Eventually([&] { return Drained(); }, 60s)) << job_.process->OutputTail();
    EXPECT_GT(Metric(job_.http_port, "chorus_likes_job_applied"), 3000);
    CheckStates(writers.loads, kEntities);
    ExpectVerifyClean();
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<MariaDbServer> db_;
  std::unique_ptr<NatsServer> nats_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<RedisClusterServer> redis_cluster_;
  std::vector<std::string> extra_;  // flags for every chorus likes command (the Redis cache)
  std::string config_;
  std::string token_;
  std::vector<Proc> nodes_;
  Proc job_;
};

// Three service processes + one job under a mixed load of writes and reads: every acknowledged
// action is applied exactly once, all nodes agree, `chorus likes verify` reports no difference.
TEST_F(LikesClusterTest, FleetUnderMixedLoadIsConsistent) { MixedLoadIsConsistent(); }

// The same with the Redis cache in front of the database, refreshed by the job.
TEST_F(LikesClusterTest, FleetWithRedisCacheIsConsistent) {
  UseRedis(/*cluster=*/false);
  MixedLoadIsConsistent();
  EXPECT_GT(Metric(nodes_[0].http_port, "chorus_likes_redis_hits"), 0);
}

// The same on a real 3-master Redis Cluster (slot routing, keys on every master), with the
// bucketed count layout.
TEST_F(LikesClusterTest, FleetWithRedisClusterIsConsistent) {
  UseRedis(/*cluster=*/true);
  extra_.insert(extra_.end(), {"--set", "likes.redis.count_buckets=64"});
  MixedLoadIsConsistent();
  EXPECT_GT(Metric(nodes_[0].http_port, "chorus_likes_redis_hits"), 0);
}

// Redis stops mid-load: reads and writes go to the database, rate-limited (likes.redis.db_read_rate),
// visible in /readyz and the metrics; when Redis is back (empty) it refills. Consistent after.
TEST_F(LikesClusterTest, RedisDownReadsTheDatabaseBehindALimit) {
  UseRedis(/*cluster=*/false);
  StartFleet();
  Writers writers;
  StartWriters(writers, 2, /*users=*/20, /*entities=*/8, /*tolerate_failures=*/false);
  auto acks = [&] { return writers.acks(); };
  ASSERT_TRUE(Eventually([&] { return acks() > 300; }, 60s));
  redis_->Stop();
  const int before = acks();
  ASSERT_TRUE(Eventually([&] { return acks() > before + 300; }, 60s)) << nodes_[0].process->OutputTail();
  EXPECT_GT(Metric(nodes_[0].http_port, "chorus_likes_db_fallback_reads"), 0);
  EXPECT_TRUE(Eventually(
      [&] { return ReadyDetail(nodes_[0].http_port, "likes").find("cache=down") != std::string::npos; }, 10s))
      << Readyz(nodes_[0].http_port).dump();
  ASSERT_TRUE(redis_->Restart().ok());
  EXPECT_TRUE(Eventually([&] { return Metric(nodes_[0].http_port, "chorus_likes_redis_up") == 1; }, 30s));
  const int after = acks();
  ASSERT_TRUE(Eventually([&] { return acks() > after + 300; }, 60s));
  writers.Join();
  ASSERT_TRUE(Eventually([&] { return Drained(); }, 60s)) << job_.process->OutputTail();
  CheckStates(writers.loads, /*entities=*/8);
  ExpectVerifyClean();
}

// The database stops: counts and states the cache holds are still served (not degraded), and
// writes keep being acknowledged.
TEST_F(LikesClusterTest, DatabaseDownServesReadsFromRedis) {
  UseRedis(/*cluster=*/false);
  StartFleet();
  Writers writers;
  StartWriters(writers, 2, /*users=*/20, /*entities=*/8, /*tolerate_failures=*/false);
  ASSERT_TRUE(Eventually([&] { return writers.acks() > 300; }, 60s));
  // Reads fill the cache.
  auto c = HttpClient::Connect(nodes_[1].http_port);
  ASSERT_TRUE(c.ok());
  const std::string target = "/v1/likes/counts?business=video&entities=e0,e1,e2,e3,e4,e5,e6,e7";
  ASSERT_TRUE(c->Request("GET", target, "", Auth()).ok());
  db_->Stop();
  const int before = writers.acks();
  ASSERT_TRUE(Eventually([&] { return writers.acks() > before + 300; }, 60s))
      << nodes_[0].process->OutputTail();
  auto r = c->Request("GET", target, "", Auth());
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_FALSE(json::parse(r->body).value("degraded", false)) << r->body;  // present only when true
  ASSERT_TRUE(db_->Restart().ok());
  writers.Join();
  ASSERT_TRUE(Eventually([&] { return Drained(); }, 60s)) << job_.process->OutputTail();
  CheckStates(writers.loads, /*entities=*/8);
  ExpectVerifyClean();
}

// Two jobs at once (a standby left running, or a supervisor restarting one too early): each
// applies only on top of the database's offset and reloads it when the other moved it, so every
// action is still applied exactly once.
TEST_F(LikesClusterTest, TwoJobsAtOnceStayExactlyOnce) {
  StartFleet();
  auto second = Start("job-b", /*job=*/true);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  Writers writers;
  StartWriters(writers, 3, /*users=*/30, /*entities=*/8, /*tolerate_failures=*/false);
  ASSERT_TRUE(Eventually([&] { return writers.acks() > 2000; }, 60s));
  writers.Join();
  ASSERT_TRUE(Eventually([&] { return Drained(); }, 90s))
      << job_.process->OutputTail() << second->process->OutputTail();
  const double a = Metric(job_.http_port, "chorus_likes_job_applied");
  const double b = Metric(second->http_port, "chorus_likes_job_applied");
  std::cout << "applied by job A " << a << ", by job B " << b << "\n";
  CheckStates(writers.loads, /*entities=*/8);
  ExpectVerifyClean();
}

// likes.job.rate: the job applies at most that many actions per second; the rest waits in
// JetStream (a backlog shows on the services) and is applied in the end.
TEST_F(LikesClusterTest, JobRateLimitKeepsABacklogInTheStream) {
  extra_ = {"--set", "likes.job.rate=100"};
  StartFleet();
  Writers writers;
  StartWriters(writers, 3, /*users=*/30, /*entities=*/8, /*tolerate_failures=*/false);
  ASSERT_TRUE(Eventually([&] { return writers.acks() > 1000; }, 60s));
  writers.Join();
  // 1000+ actions at 100/s take the job ten seconds: the backlog is visible right after the load.
  double lag = 0;
  for (const Proc& n : nodes_) lag += Metric(n.http_port, "chorus_likes_queue_lag");
  EXPECT_GT(lag, 0);
  ASSERT_TRUE(Eventually([&] { return Drained(); }, 60s)) << job_.process->OutputTail();
  CheckStates(writers.loads, /*entities=*/8);
  ExpectVerifyClean();
}

// JetStream stops mid-load: writes keep succeeding, applied to the database synchronously (the
// seed's fallback from the queue to RPC), visible in /readyz and the metrics; when it is back,
// writes queue again. Nothing acknowledged is lost and the store stays consistent.
TEST_F(LikesClusterTest, QueueDownFallsBackToSynchronousWrites) {
  StartFleet();
  Writers writers;
  StartWriters(writers, 2, /*users=*/20, /*entities=*/8, /*tolerate_failures=*/true);
  auto acks = [&] { return writers.acks(); };
  ASSERT_TRUE(Eventually([&] { return acks() > 500; }, 60s));
  nats_->Stop();
  const int before = acks();
  ASSERT_TRUE(Eventually([&] { return acks() > before + 500; }, 60s)) << nodes_[0].process->OutputTail();
  EXPECT_GT(Metric(nodes_[0].http_port, "chorus_likes_sync_applied"), 0);
  // /readyz names the mode (refreshed every second); the node stays ready.
  EXPECT_TRUE(Eventually(
      [&] {
        const std::string d = ReadyDetail(nodes_[0].http_port, "likes");
        return d.find("queue=down") != std::string::npos &&
               d.find("writes=sync-fallback") != std::string::npos;
      },
      10s))
      << Readyz(nodes_[0].http_port).dump();
  EXPECT_EQ(Readyz(nodes_[0].http_port).value("ready", false), true);
  ASSERT_TRUE(nats_->Restart().ok());
  ASSERT_TRUE(
      Eventually([&] { return Metric(nodes_[0].http_port, "chorus_likes_sync_fallback") == 0; }, 30s));
  const int after = acks();
  ASSERT_TRUE(Eventually([&] { return acks() > after + 500; }, 60s));
  writers.Join();
  std::deque<Load>& loads = writers.loads;
  ASSERT_TRUE(Eventually([&] { return Drained(); }, 60s)) << job_.process->OutputTail();
  // Writes whose answer was lost (the connection broke) have an unknown outcome: leave them out.
  for (Load& l : loads) {
    for (const auto& [key, target] : l.inflight) l.acked.erase(key);
  }
  ExpectVerifyClean();
  // States the writers were told are what every node answers (counts are not compared: the
  // keys with an unknown outcome still count).
  for (size_t n = 0; n < nodes_.size(); ++n) {
    auto c = HttpClient::Connect(nodes_[n].http_port);
    ASSERT_TRUE(c.ok());
    for (const Load& l : loads) {
      int checked = 0;
      for (const auto& [key, state] : l.acked) {
        if (++checked > 30) break;
        const std::string user = key.substr(0, key.find('/'));
        const std::string entity = key.substr(key.find('/') + 1);
        auto s = c->Request("GET", "/v1/likes/state?business=video&user=" + user + "&entities=" + entity, "",
                            Auth());
        ASSERT_TRUE(s.ok());
        EXPECT_EQ(json::parse(s->body)["states"].value(entity, "?"), state) << key;
      }
    }
  }
}

// The database stops mid-load: writes keep being acknowledged (queued in JetStream), the job
// reports database=down and retries; when the database is back it catches up. Then the job is
// killed with -9 mid-load and restarted: what it had fetched is redelivered and applied once.
TEST_F(LikesClusterTest, DatabaseDownQueuesAndJobRestartAppliesOnce) {
  StartFleet();
  Writers writers;
  StartWriters(writers, 2, /*users=*/20, /*entities=*/8, /*tolerate_failures=*/true);
  auto acks = [&] { return writers.acks(); };
  ASSERT_TRUE(Eventually([&] { return acks() > 500; }, 60s));
  db_->Stop();
  const int before = acks();
  ASSERT_TRUE(Eventually([&] { return acks() > before + 300; }, 60s)) << nodes_[0].process->OutputTail();
  ASSERT_TRUE(Eventually([&] { return Metric(job_.http_port, "chorus_likes_job_database_up") == 0; }, 30s));
  EXPECT_TRUE(Eventually(
      [&] { return ReadyDetail(job_.http_port, "likes.job").find("database=down") != std::string::npos; },
      10s))
      << Readyz(job_.http_port).dump();
  EXPECT_GT(Metric(nodes_[0].http_port, "chorus_likes_queue_lag"), 0);
  {
    // A write is still acknowledged (blind); its answer's counts could not be read: marked.
    auto c = HttpClient::Connect(nodes_[2].http_port);
    ASSERT_TRUE(c.ok());
    auto r = Act(*c, "probe", "p0", "like");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 200) << r->body;
    EXPECT_TRUE(json::parse(r->body).value("degraded", false)) << r->body;

    // The same over gRPC.
    namespace pb = ::chorus::likes::v1;
    auto stub = pb::Likes::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(nodes_[1].grpc_port),
                                                       grpc::InsecureChannelCredentials()));
    pb::ActRequest req;
    req.set_business("video");
    req.set_user("probe");
    req.set_entity("p1");
    req.set_action(pb::ACTION_LIKE);
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token_);
    ctx.set_deadline(std::chrono::system_clock::now() + 30s);
    pb::ActResponse res;
    grpc::Status st = stub->Act(&ctx, req, &res);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(res.state(), pb::STATE_LIKED);
    EXPECT_TRUE(res.degraded());
  }
  ASSERT_TRUE(db_->Restart().ok());
  ASSERT_TRUE(Eventually([&] { return Metric(job_.http_port, "chorus_likes_job_database_up") == 1; }, 30s));

  // kill -9 the job while writes continue, then start another.
  ASSERT_TRUE(job_.process->Signal(SIGKILL).ok());
  ASSERT_TRUE(job_.process->Wait(15s).ok());
  const int mid = acks();
  ASSERT_TRUE(Eventually([&] { return acks() > mid + 300; }, 60s));
  auto j = Start("job2", /*job=*/true);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  job_ = std::move(*j);
  const int later = acks();
  ASSERT_TRUE(Eventually([&] { return acks() > later + 300; }, 60s));
  writers.Join();
  ASSERT_TRUE(Eventually([&] { return Drained(); }, 60s)) << job_.process->OutputTail();
  for (const Load& l : writers.loads)
    EXPECT_EQ(l.failures, 0) << "writes failed while only the database was down";
  CheckStates(writers.loads, /*entities=*/8);
  ExpectVerifyClean();
}

}  // namespace
}  // namespace chorus::testing
