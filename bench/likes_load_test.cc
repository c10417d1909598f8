#include "likes_load.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <hiredis/read.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "likes_redis_peer.h"
#include "loopback_test_server.h"

namespace chorus::bench {
namespace {

// ---- Zipf ----

TEST(ZipfGeneratorTest, RejectsBadParameters) {
  EXPECT_FALSE(ZipfGenerator::Create(0, 0.99).ok());
  EXPECT_FALSE(ZipfGenerator::Create(10, 0).ok());
  EXPECT_FALSE(ZipfGenerator::Create(10, 1).ok());
  EXPECT_FALSE(ZipfGenerator::Create(10, 1.5).ok());
}

TEST(ZipfGeneratorTest, DrawsFollowTheZipfHead) {
  auto zipf = ZipfGenerator::Create(100'000, 0.99);
  ASSERT_TRUE(zipf.ok());
  Random rng(7);
  constexpr int kDraws = 1'000'000;
  std::map<uint64_t, int> hits;
  uint64_t max_rank = 0;
  for (int i = 0; i < kDraws; ++i) {
    const uint64_t r = zipf->Next(rng);
    max_rank = std::max(max_rank, r);
    if (r < 10) ++hits[r];
  }
  EXPECT_LT(max_rank, 100'000u);
  EXPECT_GT(max_rank, 50'000u);  // the tail is reached
  // Ranks 0 and 1 are exact in this method; a few more of the head are close.
  for (uint64_t rank : {0u, 1u}) {
    const double expected = zipf->Probability(rank) * kDraws;
    EXPECT_NEAR(hits[rank], expected, expected * 0.03) << "rank " << rank;
  }
  // Beyond rank 1 the method approximates: ranks 2..9 come up to ~20% too often, the tail ~2%
  // too rarely, but the share of the head as a whole stays within a point of Zipf's.
  double head_expected = 0;
  int head_hits = 0;
  for (uint64_t rank = 0; rank < 10; ++rank) {
    head_expected += zipf->Probability(rank);
    head_hits += hits[rank];
  }
  EXPECT_NEAR(static_cast<double>(head_hits) / kDraws, head_expected, 0.015);
  // θ = 0.99 over 100k: the most popular item gets ~8% of the draws, rank 1 about half that.
  EXPECT_GT(hits[0], kDraws / 20);
  EXPECT_GT(hits[0], hits[1] * 17 / 10);
}

TEST(ZipfGeneratorTest, TinyDomainsStayInRange) {
  for (uint64_t n : {1u, 2u, 3u}) {
    auto zipf = ZipfGenerator::Create(n, 0.5);
    ASSERT_TRUE(zipf.ok());
    std::set<uint64_t> seen;
    for (double u = 0; u < 1; u += 0.001) seen.insert(zipf->Sample(u));
    EXPECT_EQ(seen.size(), n);
    EXPECT_EQ(*seen.rbegin(), n - 1);
  }
}

// ---- scrambling ----

TEST(IdScramblerTest, IsABijectionOnTheRange) {
  for (uint64_t n : {1u, 2u, 3u, 1000u, 1024u, 4097u}) {
    IdScrambler s(n, 42);
    std::vector<bool> seen(n, false);
    for (uint64_t r = 0; r < n; ++r) {
      const uint64_t id = s(r);
      ASSERT_LT(id, n);
      EXPECT_FALSE(seen[id]) << "n " << n << ": " << id << " twice";
      seen[id] = true;
    }
  }
}

TEST(IdScramblerTest, SpreadsThePopularRanks) {
  constexpr uint64_t kN = 1'000'000;
  IdScrambler s(kN, 1);
  IdScrambler other(kN, 2);
  uint64_t lo = kN, hi = 0;
  int adjacent = 0, same_as_other_seed = 0;
  for (uint64_t r = 0; r < 100; ++r) {
    lo = std::min(lo, s(r));
    hi = std::max(hi, s(r));
    if (r > 0 && (s(r) == s(r - 1) + 1 || s(r) + 1 == s(r - 1))) ++adjacent;
    if (s(r) == other(r)) ++same_as_other_seed;
  }
  EXPECT_GT(hi - lo, kN / 2);
  EXPECT_EQ(adjacent, 0);
  EXPECT_LT(same_as_other_seed, 3);
}

// ---- the generator ----

std::shared_ptr<const LikesModel> Model(LikesWorkload w) {
  auto model = LikesModel::Create(w);
  EXPECT_TRUE(model.ok()) << model.status().ToString();
  return model.ok() ? *model : nullptr;
}

TEST(LikesOpGeneratorTest, UsersComeFromTheThreadsStripe) {
  LikesWorkload w;
  w.users = 10;
  w.entities = 1000;
  auto model = Model(w);
  LikesOpGenerator gen(model, 1, 3);  // users 1, 4, 7
  gen.StartPhase(LikesPhase::kMixed, 0, 0);
  std::set<uint64_t> users;
  LikesOp op;
  for (int i = 0; i < 2000; ++i) {
    ASSERT_TRUE(gen.Next(0, &op));
    if (op.kind == LikesOpKind::kState) users.insert(op.user);
    for (const auto& a : op.actions) users.insert(a.user);
  }
  EXPECT_EQ(users, (std::set<uint64_t>{1, 4, 7}));
}

TEST(LikesOpGeneratorTest, WritesToggleEachPairStartingWithALike) {
  LikesWorkload w;
  w.users = 2;
  w.entities = 3;
  w.write_batch = 2;
  auto model = Model(w);
  LikesOpGenerator gen(model, 0, 1);
  gen.StartPhase(LikesPhase::kWrite, 0, 0);
  std::map<std::pair<uint64_t, uint64_t>, bool> liked;
  LikesOp op;
  for (int i = 0; i < 500; ++i) {
    ASSERT_TRUE(gen.Next(0, &op));
    ASSERT_EQ(op.kind, LikesOpKind::kWrite);
    ASSERT_EQ(op.actions.size(), 2u);
    for (const auto& a : op.actions) {
      bool& state = liked[{a.user, a.entity}];
      EXPECT_EQ(a.like, !state) << "u" << a.user << " e" << a.entity;
      state = a.like;
    }
    for (const auto& a : op.actions) {
      EXPECT_EQ(gen.IsLiked(a.user, a.entity), (liked[{a.user, a.entity}]));
    }
  }
  EXPECT_EQ(liked.size(), 6u);
}

TEST(LikesOpGeneratorTest, PreloadLikesTheSeededPairsOnceThenStops) {
  LikesWorkload w;
  w.users = 1000;
  w.entities = 10'000;
  w.write_batch = 7;
  auto model = Model(w);
  const auto pairs = model->PreloadPairs(500);
  ASSERT_EQ(pairs.size(), 500u);
  EXPECT_EQ(pairs, model->PreloadPairs(500)) << "the preload must be reproducible";
  EXPECT_EQ(std::set(pairs.begin(), pairs.end()).size(), 500u) << "pairs must be distinct";

  std::set<std::pair<uint64_t, uint64_t>> sent;
  for (uint32_t stripe = 0; stripe < 2; ++stripe) {
    LikesOpGenerator gen(model, stripe, 2);
    gen.QueuePreload(pairs);
    gen.StartPhase(LikesPhase::kPreload, 0, 0);
    LikesOp op;
    while (gen.Next(0, &op)) {
      ASSERT_LE(op.actions.size(), 7u);
      for (const auto& a : op.actions) {
        EXPECT_TRUE(a.like);
        EXPECT_EQ(a.user % 2, stripe);
        EXPECT_TRUE(sent.insert({a.user, a.entity}).second);
      }
    }
    EXPECT_FALSE(gen.Next(0, &op));
  }
  EXPECT_EQ(sent, std::set(pairs.begin(), pairs.end()));

  // A later run told about the preload starts from those pairs liked: its first toggle unlikes.
  LikesOpGenerator later(model, 0, 1);
  later.AssumeLiked(pairs);
  EXPECT_EQ(later.liked_pairs(), 500u);
  EXPECT_TRUE(later.IsLiked(pairs[0].first, pairs[0].second));
}

TEST(LikesOpGeneratorTest, ReadsAskForDistinctEntities) {
  LikesWorkload w;
  w.entities = 50;  // small: Zipf repeats a lot
  w.state_batch = 20;
  auto model = Model(w);
  LikesOpGenerator gen(model, 0, 1);
  gen.StartPhase(LikesPhase::kRead, 0, 0);
  LikesOp op;
  for (int i = 0; i < 200; ++i) {
    ASSERT_TRUE(gen.Next(0, &op));
    ASSERT_EQ(op.kind, LikesOpKind::kState);
    EXPECT_EQ(op.entities.size(), 20u);
    EXPECT_EQ(std::set(op.entities.begin(), op.entities.end()).size(), op.entities.size());
  }
}

TEST(LikesOpGeneratorTest, MixedPhaseKeepsTheRatiosAndTheSpikeWindow) {
  LikesWorkload w;  // 20 reads per write, 20% of reads are counts, spike share 0.5
  auto model = Model(w);
  LikesOpGenerator gen(model, 0, 1);
  gen.StartPhase(LikesPhase::kMixed, /*spike_from_ns=*/1000, /*spike_to_ns=*/2000);
  const uint64_t hot = model->spike_entity();
  auto aims_at_hot = [hot](const LikesOp& op) {
    for (uint64_t e : op.entities) {
      if (e == hot) return true;
    }
    for (const auto& a : op.actions) {
      if (a.entity == hot) return true;
    }
    return false;
  };
  std::map<LikesOpKind, int> kinds;
  int hot_outside = 0, hot_inside = 0, spike_marked = 0;
  constexpr int kOps = 42'000;
  LikesOp op;
  for (int i = 0; i < kOps; ++i) {
    ASSERT_TRUE(gen.Next(/*now_ns=*/500, &op));
    ++kinds[op.kind];
    if (op.spike) ++spike_marked;
    if (aims_at_hot(op)) ++hot_outside;
  }
  EXPECT_EQ(spike_marked, 0);
  EXPECT_LT(hot_outside, 10);  // the coldest rank: practically never drawn
  EXPECT_NEAR(kinds[LikesOpKind::kWrite], kOps / 21, kOps / 21 * 0.1);
  const int reads = kinds[LikesOpKind::kState] + kinds[LikesOpKind::kCounts];
  EXPECT_NEAR(kinds[LikesOpKind::kCounts], reads * 0.2, reads * 0.2 * 0.1);
  for (int i = 0; i < kOps; ++i) {
    ASSERT_TRUE(gen.Next(/*now_ns=*/1500, &op));
    EXPECT_TRUE(op.spike);
    if (aims_at_hot(op)) ++hot_inside;
  }
  EXPECT_NEAR(hot_inside, kOps / 2, kOps * 0.02);
}

// ---- HTTP requests ----

LikesHttpTarget Target(std::string token = "T0K") {
  LikesHttpTarget t;
  t.host = "127.0.0.1:8080";
  t.token = std::move(token);
  t.business = "video";
  return t;
}

TEST(BuildLikesHttpRequestTest, SingleWriteIsAPostOfOneAction) {
  LikesOp op;
  op.kind = LikesOpKind::kWrite;
  op.actions = {{123, 456, true}};
  LikesHttpTarget t = Target();
  t.owners = 100;
  std::string req;
  BuildLikesHttpRequest(op, t, &req);
  const std::string body =
      R"({"business":"video","user":"u123","entity":"e456","owner":"o56","action":"like"})";
  EXPECT_EQ(req,
            "POST /v1/likes HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer T0K\r\n"
            "Content-Type: application/json\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n" + body);
}

TEST(BuildLikesHttpRequestTest, BatchWriteCarriesEveryActionAndItsLength) {
  LikesOp op;
  op.kind = LikesOpKind::kWrite;
  op.actions = {{1, 2, true}, {3, 4, false}, {5, 6, true}};
  std::string req;
  BuildLikesHttpRequest(op, Target(), &req);
  ASSERT_EQ(req.rfind("POST /v1/likes/batch HTTP/1.1\r\n", 0), 0u) << req;
  const size_t head_end = req.find("\r\n\r\n");
  ASSERT_NE(head_end, std::string::npos);
  const std::string body = req.substr(head_end + 4);
  EXPECT_NE(req.find("Content-Length: " + std::to_string(body.size()) + "\r\n"), std::string::npos);
  const auto j = nlohmann::json::parse(body);
  ASSERT_EQ(j["actions"].size(), 3u);
  EXPECT_EQ(j["actions"][1],
            nlohmann::json::parse(R"({"business":"video","user":"u3","entity":"e4","action":"unlike"})"));
}

TEST(BuildLikesHttpRequestTest, ReadsAreGetsWithTheEntityList) {
  LikesOp op;
  op.kind = LikesOpKind::kState;
  op.user = 9;
  op.entities = {1, 22, 333};
  std::string req;
  BuildLikesHttpRequest(op, Target(""), &req);
  EXPECT_EQ(req,
            "GET /v1/likes/state?business=video&user=u9&entities=e1,e22,e333 HTTP/1.1\r\n"
            "Host: 127.0.0.1:8080\r\n\r\n");
  op.kind = LikesOpKind::kCounts;
  BuildLikesHttpRequest(op, Target(), &req);
  EXPECT_EQ(req,
            "GET /v1/likes/counts?business=video&entities=e1,e22,e333 HTTP/1.1\r\n"
            "Host: 127.0.0.1:8080\r\nAuthorization: Bearer T0K\r\n\r\n");
}

TEST(CountOccurrencesTest, CountsNonOverlappingMatches) {
  EXPECT_EQ(CountOccurrences(R"({"states":{"e1":"liked","e2":"none","e3":"liked"}})", "\"liked\""), 2u);
  EXPECT_EQ(CountOccurrences("aaaa", "aa"), 2u);
  EXPECT_EQ(CountOccurrences("abc", ""), 0u);
}

// ---- Redis commands ----

TEST(RedisCommandsTest, RespArraysOfBulkStrings) {
  std::string out;
  AppendRespCommand(&out, {"ZSCORE", "user:likes:video:u1", "e22"});
  EXPECT_EQ(out, "*3\r\n$6\r\nZSCORE\r\n$19\r\nuser:likes:video:u1\r\n$3\r\ne22\r\n");
}

TEST(RedisCommandsTest, OperationsBecomeThePrimitiveCommands) {
  LikesRedisKeys keys;
  std::string out;
  LikesOp like;
  like.kind = LikesOpKind::kWrite;
  like.actions = {{7, 8, true}, {7, 9, false}};
  EXPECT_EQ(AppendLikesRedisCommands(like, keys, 1700000000000, &out), 4u);
  std::string want;
  AppendRespCommand(&want, {"ZADD", "user:likes:video:u7", "1700000000000", "e8"});
  AppendRespCommand(&want, {"HINCRBY", "count:video:e8", "likes", "1"});
  AppendRespCommand(&want, {"ZREM", "user:likes:video:u7", "e9"});
  AppendRespCommand(&want, {"HINCRBY", "count:video:e9", "likes", "-1"});
  EXPECT_EQ(out, want);

  keys.likers = true;
  keys.owners = 5;
  out.clear();
  like.actions.resize(1);
  EXPECT_EQ(AppendLikesRedisCommands(like, keys, 1, &out), 4u);
  EXPECT_NE(out.find("entity:likers:video:e8"), std::string::npos);
  EXPECT_NE(out.find("received:video:o3"), std::string::npos);

  LikesOp state;
  state.kind = LikesOpKind::kState;
  state.user = 3;
  state.entities = {1, 2, 3};
  out.clear();
  EXPECT_EQ(AppendLikesRedisCommands(state, keys, 1, &out), 3u);
  EXPECT_EQ(CountOccurrences(out, "ZSCORE"), 3u);
  LikesOp counts = state;
  counts.kind = LikesOpKind::kCounts;
  out.clear();
  EXPECT_EQ(AppendLikesRedisCommands(counts, keys, 1, &out), 3u);
  EXPECT_EQ(CountOccurrences(out, "HMGET"), 3u);
}

// The peer's loop relies on a reader without reply functions handing back bare reply types.
TEST(RedisCommandsTest, ObjectlessReaderYieldsReplyTypes) {
  redisReader* r = redisReaderCreateWithFunctions(nullptr);
  ASSERT_NE(r, nullptr);
  const std::string replies = ":1\r\n$-1\r\n*2\r\n$1\r\n1\r\n$-1\r\n-ERR x\r\n+OK\r\n$3\r\n123\r\n";
  ASSERT_EQ(redisReaderFeed(r, replies.data(), replies.size()), REDIS_OK);
  std::vector<intptr_t> types;
  void* reply = nullptr;
  while (redisReaderGetReply(r, &reply) == REDIS_OK && reply != nullptr) {
    types.push_back(reinterpret_cast<intptr_t>(reply));
  }
  EXPECT_EQ(types, (std::vector<intptr_t>{REDIS_REPLY_INTEGER, REDIS_REPLY_NIL, REDIS_REPLY_ARRAY,
                                          REDIS_REPLY_ERROR, REDIS_REPLY_STATUS, REDIS_REPLY_STRING}));
  redisReaderFree(r);
}

TEST(RedisAddressTest, HostAndPort) {
  LikesRedisOptions o;
  EXPECT_TRUE(ParseRedisAddress("127.0.0.1:7000", &o).ok());
  EXPECT_EQ(o.host, "127.0.0.1");
  EXPECT_EQ(o.port, 7000);
  EXPECT_FALSE(ParseRedisAddress("127.0.0.1", &o).ok());
  EXPECT_FALSE(ParseRedisAddress("h:0", &o).ok());
  EXPECT_FALSE(ParseRedisAddress(":1", &o).ok());
}

// ---- results ----

TEST(LikesPhaseResultTest, ThroughputCountsServedItemsAndErrorsShow) {
  LikesPhaseResult r;
  r.phase = LikesPhase::kWrite;
  r.elapsed_s = 2;
  r.Record(LikesOpKind::kWrite, false, true, 10, 0, 0, 1'000'000);
  r.Record(LikesOpKind::kWrite, false, true, 10, 2, 0, 3'000'000);   // 2 actions failed
  r.Record(LikesOpKind::kWrite, false, false, 10, 0, 0, 5'000'000);  // a 503
  const Measurement m = r.ToMeasurement("chorus");
  EXPECT_EQ(m.unit, "actions/s");
  EXPECT_DOUBLE_EQ(m.throughput, 18 / 2.0);
  EXPECT_EQ(m.counts.at("write_requests"), 3u);
  EXPECT_EQ(m.counts.at("non_2xx"), 1u);
  EXPECT_EQ(m.counts.at("item_errors"), 2u);
  EXPECT_EQ(m.ErrorCount(), 3u);
  EXPECT_DOUBLE_EQ(m.figures.at("write_requests_per_s"), 1.5);
  ASSERT_TRUE(m.latency.has_value());
  EXPECT_EQ(m.latency->Count(), 3u);
}

TEST(LikesPhaseResultTest, MixedPhaseSplitsSpikeFromSteady) {
  LikesPhaseResult r;
  r.phase = LikesPhase::kMixed;
  r.elapsed_s = 3;
  r.spike_s = 1;
  r.Record(LikesOpKind::kState, true, true, 20, 0, 5, 1'000'000);
  r.Record(LikesOpKind::kState, false, true, 20, 0, 15, 1'000'000);
  r.Record(LikesOpKind::kCounts, true, true, 20, 0, 0, 2'000'000);
  r.Record(LikesOpKind::kWrite, false, true, 1, 0, 0, 4'000'000);
  const Measurement m = r.ToMeasurement("redis");
  EXPECT_EQ(m.unit, "ops/s");
  EXPECT_DOUBLE_EQ(m.throughput, 4 / 3.0);
  EXPECT_EQ(m.counts.at("spike_requests"), 2u);
  EXPECT_DOUBLE_EQ(m.figures.at("spike_requests_per_s"), 2.0);
  EXPECT_DOUBLE_EQ(m.figures.at("steady_requests_per_s"), 1.0);
  EXPECT_DOUBLE_EQ(m.figures.at("entity_states_per_s"), 40 / 3.0);
  EXPECT_DOUBLE_EQ(m.figures.at("state_liked_share"), 0.5);
  EXPECT_EQ(m.ErrorCount(), 0u);
}

// ---- end to end against a fake likes server ----

// A single-threaded HTTP server on loopback answering the likes API with canned bodies:
// POST /v1/likes -> a state; POST /v1/likes/batch -> one result per action, every third an error;
// GET state/counts -> "liked" for every entity / counts; anything else -> 404.
class FakeLikesServer {
 public:
  std::string Url() const { return "http://127.0.0.1:" + std::to_string(server_.port()); }
  int unauthorized() const { return unauthorized_; }
  int requests() const { return requests_; }
  int wrong_host() const { return wrong_host_; }

 private:
  struct Conn {
    int fd;
    std::string in;
  };

  bool Serve(Conn& c) {
    char buf[65536];
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    c.in.append(buf, static_cast<size_t>(n));
    while (true) {
      const size_t head_end = c.in.find("\r\n\r\n");
      if (head_end == std::string::npos) return true;
      const std::string head = c.in.substr(0, head_end + 2);  // with the last header's CRLF
      size_t body_len = 0;
      if (const size_t cl = head.find("Content-Length: "); cl != std::string::npos) {
        body_len = std::stoul(head.substr(cl + 16));
      }
      if (c.in.size() < head_end + 4 + body_len) return true;
      const std::string body = c.in.substr(head_end + 4, body_len);
      c.in.erase(0, head_end + 4 + body_len);
      if (head.find("Authorization: Bearer tok\r\n") == std::string::npos) ++unauthorized_;
      ++requests_;
      if (head.find("Host: 127.0.0.1:" + std::to_string(server_.port()) + "\r\n") == std::string::npos) ++wrong_host_;
      std::string answer;
      int status = 200;
      if (head.rfind("POST /v1/likes/batch ", 0) == 0) {
        const auto actions = nlohmann::json::parse(body)["actions"];
        answer = "{\"results\":[";
        for (size_t i = 0; i < actions.size(); ++i) {
          if (i > 0) answer += ",";
          answer += i % 3 == 2 ? R"({"error":{"code":"invalid_argument","message":"x"}})"
                               : R"({"state":"liked","counts":{"likes":1,"dislikes":0}})";
        }
        answer += "]}";
      } else if (head.rfind("POST /v1/likes ", 0) == 0) {
        const auto action = nlohmann::json::parse(body);
        answer = action["action"] == "like" ? R"({"state":"liked","counts":{"likes":1,"dislikes":0}})"
                                            : R"({"state":"none","counts":{"likes":0,"dislikes":0}})";
      } else if (head.rfind("GET /v1/likes/state?", 0) == 0) {
        const size_t at = head.find("entities=");
        const size_t end = head.find(' ', at);
        const size_t entities = 1 + CountOccurrences(head.substr(at, end - at), ",");
        answer = "{\"states\":{";
        for (size_t i = 0; i < entities; ++i) {
          answer += (i > 0 ? ",\"e" : "\"e") + std::to_string(i) + "\":\"liked\"";
        }
        answer += "}}";
      } else if (head.rfind("GET /v1/likes/counts?", 0) == 0) {
        answer = R"({"counts":{}})";
      } else {
        status = 404;
      }
      const std::string response =
          "HTTP/1.1 " + std::to_string(status) +
          " X\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(answer.size()) +
          "\r\n\r\n" + answer;
      if (::send(c.fd, response.data(), response.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(response.size())) {
        return false;
      }
    }
  }

  std::atomic<int> unauthorized_{0};
  std::atomic<int> requests_{0};
  std::atomic<int> wrong_host_{0};
  LoopbackServer<Conn> server_{[this](Conn& c) { return Serve(c); }};  // last: see its header
};

LikesRunOptions SmallRun(std::vector<LikesPhase> phases) {
  LikesRunOptions o;
  o.workload.entities = 1000;
  o.workload.users = 100;
  o.phases = std::move(phases);
  o.connections = 4;
  o.threads = 2;
  o.duration = std::chrono::milliseconds(300);
  o.warmup = std::chrono::milliseconds(30);
  return o;
}

TEST(LikesHttpDriverTest, PhasesRunAgainstTheApiAndCountWhatTheyGet) {
  FakeLikesServer server;
  LikesRunOptions o =
      SmallRun({LikesPhase::kPreload, LikesPhase::kWrite, LikesPhase::kRead, LikesPhase::kMixed});
  o.preload = 200;
  auto driver = MakeLikesHttpDriver(server.Url(), "tok", o.workload);
  ASSERT_TRUE(driver.ok()) << driver.status().ToString();
  auto results = RunLikesPhases(o, **driver);
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  ASSERT_EQ(results->size(), 4u);
  EXPECT_EQ(server.unauthorized(), 0);

  const LikesPhaseResult& preload = (*results)[0];
  EXPECT_EQ(preload.kind(LikesOpKind::kWrite).items, 200u);
  EXPECT_LE(preload.elapsed_s, 1.0) << "the preload ends when its pairs are liked";

  const LikesPhaseResult& write = (*results)[1];
  EXPECT_GT(write.kind(LikesOpKind::kWrite).items, 0u);
  EXPECT_EQ(write.kind(LikesOpKind::kState).requests, 0u);

  const LikesPhaseResult& read = (*results)[2];
  const LikesKindStats& state = read.kind(LikesOpKind::kState);
  EXPECT_GT(state.requests, 0u);
  EXPECT_EQ(state.items, state.requests * 20);
  EXPECT_EQ(state.liked, state.items);

  const LikesPhaseResult& mixed = (*results)[3];
  EXPECT_GT(mixed.kind(LikesOpKind::kState).requests, mixed.kind(LikesOpKind::kWrite).requests);
  EXPECT_GT(mixed.spike.requests, 0u);
  EXPECT_GT(mixed.steady.requests, 0u);
  for (const LikesPhaseResult& r : *results) {
    const Measurement m = r.ToMeasurement("fake");
    EXPECT_EQ(m.ErrorCount(), 0u) << LikesPhaseName(r.phase);
  }
}

// Several --url (the nodes of a fleet): every node gets its share of the connections, each request
// carries its own node's Host header, and the results add up as against one server.
TEST(LikesHttpDriverTest, SeveralUrlsSpreadTheConnections) {
  FakeLikesServer a, b, c;
  LikesRunOptions o = SmallRun({LikesPhase::kRead});
  o.connections = 6;  // 3 per load thread: one to each server
  auto driver = MakeLikesHttpDriver(std::vector<std::string>{a.Url(), b.Url(), c.Url()}, "tok", o.workload);
  ASSERT_TRUE(driver.ok()) << driver.status().ToString();
  auto results = RunLikesPhases(o, **driver);
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  const LikesKindStats& state = (*results)[0].kind(LikesOpKind::kState);
  EXPECT_GT(state.requests, 0u);
  EXPECT_EQ(state.non_2xx, 0u);
  for (const FakeLikesServer* s : {&a, &b, &c}) {
    EXPECT_GT(s->requests(), 0);
    EXPECT_EQ(s->wrong_host(), 0);
    EXPECT_EQ(s->unauthorized(), 0);
  }
  EXPECT_FALSE(MakeLikesHttpDriver(std::vector<std::string>{}, "", o.workload).ok());
  EXPECT_FALSE(MakeLikesHttpDriver(std::vector<std::string>{a.Url(), "http://127.0.0.1:1/x"}, "", o.workload).ok());
}

// --pipeline for chorus: 4 requests in flight per connection (HTTP/1.1 pipelining, which the fake
// answers in order). Every stream's requests carry its own connection's node in the Host header,
// and the answers are counted per operation as without pipelining.
TEST(LikesHttpDriverTest, PipelinedConnectionsKeepTheirNodeAndCountEveryAnswer) {
  FakeLikesServer a, b;
  LikesRunOptions o = SmallRun({LikesPhase::kPreload, LikesPhase::kRead});
  o.preload = 200;
  auto driver =
      MakeLikesHttpDriver(std::vector<std::string>{a.Url(), b.Url()}, "tok", o.workload, /*pipeline=*/4);
  ASSERT_TRUE(driver.ok()) << driver.status().ToString();
  auto results = RunLikesPhases(o, **driver);
  ASSERT_TRUE(results.ok()) << results.status().ToString();
  EXPECT_EQ((*results)[0].kind(LikesOpKind::kWrite).items, 200u) << "every preload pair liked once";
  const LikesKindStats& state = (*results)[1].kind(LikesOpKind::kState);
  EXPECT_GT(state.requests, 0u);
  EXPECT_EQ(state.non_2xx, 0u);
  EXPECT_EQ(state.items, state.requests * 20);
  EXPECT_EQ(state.liked, state.items);
  for (const LikesPhaseResult& r : *results) {
    EXPECT_EQ(r.transport.socket_errors(), 0u) << LikesPhaseName(r.phase);
    EXPECT_EQ(r.ToMeasurement("fake").ErrorCount(), 0u) << LikesPhaseName(r.phase);
  }
  for (const FakeLikesServer* s : {&a, &b}) {
    EXPECT_GT(s->requests(), 0);
    EXPECT_EQ(s->wrong_host(), 0);
    EXPECT_EQ(s->unauthorized(), 0);
  }
  EXPECT_FALSE(MakeLikesHttpDriver(a.Url(), "tok", o.workload, 0).ok());
  EXPECT_FALSE(MakeLikesHttpDriver(a.Url(), "tok", o.workload, kMaxHttpPipeline + 1).ok());
}

TEST(LikesHttpDriverTest, BatchResultErrorsAreCountedPerAction) {
  FakeLikesServer server;
  LikesRunOptions o = SmallRun({LikesPhase::kWrite});
  o.workload.write_batch = 3;  // the fake fails every third action
  auto driver = MakeLikesHttpDriver(server.Url(), "tok", o.workload);
  ASSERT_TRUE(driver.ok());
  auto results = RunLikesPhases(o, **driver);
  ASSERT_TRUE(results.ok());
  const LikesKindStats& w = (*results)[0].kind(LikesOpKind::kWrite);
  ASSERT_GT(w.requests, 0u);
  EXPECT_EQ(w.item_errors, w.requests);
  EXPECT_EQ(w.items, w.requests * 2);
}

TEST(LikesHttpDriverTest, BadOptionsAreRejected) {
  LikesWorkload w;
  EXPECT_FALSE(MakeLikesHttpDriver("http://127.0.0.1:1/v1/likes", "", w).ok());
  auto driver = MakeLikesHttpDriver("http://127.0.0.1:1", "", w);
  ASSERT_TRUE(driver.ok());
  LikesRunOptions o = SmallRun({LikesPhase::kPreload});  // preload without --preload
  EXPECT_FALSE(RunLikesPhases(o, **driver).ok());
  o = SmallRun({LikesPhase::kWrite});
  o.workload.write_batch = 101;
  EXPECT_FALSE(RunLikesPhases(o, **driver).ok());
  o = SmallRun({LikesPhase::kWrite});
  o.workload.spike_from = 0.8;
  o.workload.spike_to = 0.2;
  EXPECT_FALSE(RunLikesPhases(o, **driver).ok());
}

}  // namespace
}  // namespace chorus::bench
