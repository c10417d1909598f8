// End-to-end tests of the likes service over real sockets: an in-process runtime (2 shards) and
// HTTP server, the RocksDB store in a temporary directory, and HTTP clients on loopback.
#include "likes/likes_service.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <map>
#include <thread>

#include "base/metrics.h"
#include "likes/rocksdb_store.h"
#include "net/test_client.h"
#include "net/token.h"
#include "support/eventually.h"
#include "support/http_client.h"
#include "support/subprocess.h"

namespace chorus::likes {
namespace {

using net::testclient::ServerHarness;
using nlohmann::json;

const std::string kSecret(40, 'k');

struct Reply {
  int status = 0;
  std::string body;
  std::string retry_after;
  json Json() const { return json::parse(body, nullptr, false); }
};

// A store that fails on demand, in front of the real one (degradation tests).
class FlakyStore final : public LikeStore {
 public:
  explicit FlakyStore(std::shared_ptr<LikeStore> inner) : inner_(std::move(inner)) {}
  std::atomic<bool> fail_reads{false};
  std::atomic<bool> fail_appends{false};

  std::string_view name() const override { return "flaky"; }
  Status AppendLog(std::span<LogEntry> e) override {
    if (fail_appends) return Internal("injected append failure");
    return inner_->AppendLog(e);
  }
  Status Apply(std::span<const LogEntry> e) override { return inner_->Apply(e); }
  Result<std::vector<LogEntry>> PendingLog() override { return inner_->PendingLog(); }
  Status GetRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                    std::vector<std::optional<Record>>* out) override {
    if (fail_reads) return Internal("injected read failure");
    return inner_->GetRecords(ns, user, entities, out);
  }
  Status GetCounts(std::string_view ns, std::span<const std::string> entities, std::vector<Counts>* out) override {
    if (fail_reads) return Internal("injected read failure");
    return inner_->GetCounts(ns, entities, out);
  }
  Result<int64_t> GetReceived(std::string_view ns, std::string_view owner) override {
    return inner_->GetReceived(ns, owner);
  }
  Result<ListPage> UserLikes(std::string_view ns, std::string_view user, std::string_view cursor,
                             size_t limit) override {
    return inner_->UserLikes(ns, user, cursor, limit);
  }
  Result<ListPage> Likers(std::string_view ns, std::string_view entity, std::string_view cursor,
                          size_t limit) override {
    return inner_->Likers(ns, entity, cursor, limit);
  }
  Status TrimUserLists(std::string_view ns, std::span<const std::string> users, size_t keep) override {
    return inner_->TrimUserLists(ns, users, keep);
  }
  Result<VerifyReport> Verify(bool repair) override { return inner_->Verify(repair); }

 private:
  std::shared_ptr<LikeStore> inner_;
};

LikesOptions DefaultOptions() {
  LikesOptions o;
  Business video;
  video.id = "video";
  video.name = "Videos";
  video.ns = "v";
  Business live;
  live.id = "live";
  live.ns = "l";
  live.dislikes = false;
  o.businesses = {video, live};
  o.flush_interval = std::chrono::hours(1);  // tests apply explicitly unless they shorten it
  o.rate_limits = false;
  return o;
}

class LikesServer {
 public:
  explicit LikesServer(std::function<void(LikesOptions&)> tune = {}, bool flaky = false,
                       const std::string& dir = "") {
    if (dir.empty()) {
      auto d = chorus::testing::TempDir::Create("likes-svc");
      EXPECT_TRUE(d.ok());
      dir_.emplace(std::move(*d));
      path_ = dir_->path() + "/likes";
    } else {
      path_ = dir;
    }
    auto signer = net::TokenSigner::Create(kSecret);
    signer_ = std::make_unique<net::TokenSigner>(std::move(*signer));
    LikesOptions o = DefaultOptions();
    if (tune) tune(o);
    auto db = RocksDbLikeStore::Open({path_});
    EXPECT_TRUE(db.ok()) << db.status().ToString();
    std::shared_ptr<LikeStore> store(std::move(*db));
    if (flaky) {
      flaky_ = std::make_shared<FlakyStore>(store);
      store = flaky_;
    }
    store_ = store;
    bus_ = std::make_shared<InProcessBus>();
    auto svc = LikesService::Create(harness_.runtime(), *signer_, o, store, bus_);
    EXPECT_TRUE(svc.ok()) << svc.status().ToString();
    service_ = std::move(*svc);
    EXPECT_TRUE(service_->AddRoutes(harness_.router()).ok());
    Status started = service_->Start();
    EXPECT_TRUE(started.ok()) << started.ToString();
    harness_.Start({});
  }
  ~LikesServer() { Shutdown(/*clean=*/true); }

  // clean: the service applies everything before the runtime stops; otherwise it is dropped as a
  // crash would (the log keeps what was acknowledged).
  void Shutdown(bool clean) {
    if (!service_) return;
    harness_.server().BeginShutdown();
    harness_.server().WaitDrained(std::chrono::seconds(3));
    if (clean) service_->Stop();
    harness_.runtime().Stop();
    service_.reset();
    flaky_.reset();
    store_.reset();
    harness_.Shutdown();
  }

  uint16_t port() const { return harness_.port(); }
  LikesService& service() { return *service_; }
  InProcessBus& bus() { return *bus_; }
  FlakyStore& flaky() { return *flaky_; }
  const std::string& path() const { return path_; }

  std::string UserToken(const std::string& user) const { return net::testclient::SignUserToken(*signer_, user); }
  std::string ServiceToken(std::vector<std::string> scopes = {"likes.write"}) const {
    return net::testclient::SignServiceToken(*signer_, std::move(scopes));
  }

  Reply Call(std::string_view method, const std::string& target, const std::string& body, const std::string& token) {
    auto client = chorus::testing::HttpClient::Connect(port());
    EXPECT_TRUE(client.ok());
    if (!client.ok()) return {};
    std::vector<std::pair<std::string, std::string>> headers;
    if (!token.empty()) headers.emplace_back("Authorization", "Bearer " + token);
    if (!body.empty()) headers.emplace_back("Content-Type", "application/json");
    auto r = client->Request(method, target, body, std::move(headers));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return {};
    return {r->status, r->body, r->Header("retry-after")};
  }

  Reply Act(const std::string& user, const std::string& entity, const std::string& action,
            const std::string& business = "video", const std::string& owner = "") {
    json body = {{"business", business}, {"user", user}, {"entity", entity}, {"action", action}};
    if (!owner.empty()) body["owner"] = owner;
    return Call("POST", "/v1/likes", body.dump(), UserToken(user));
  }
  json Counts(const std::string& entities, const std::string& business = "video") {
    auto r = Call("GET", "/v1/likes/counts?business=" + business + "&entities=" + entities, "", UserToken("reader"));
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json();
  }
  json States(const std::string& user, const std::string& entities) {
    auto r = Call("GET", "/v1/likes/state?business=video&user=" + user + "&entities=" + entities, "",
                  UserToken("reader"));
    EXPECT_EQ(r.status, 200) << r.body;
    return r.Json();
  }
  // Runs the apply stage now (through a clean stop and restart of the timers is not needed: the
  // verify command and the lists read what Stop applied).
  Result<VerifyReport> StopAndVerify() {
    Shutdown(true);
    auto db = RocksDbLikeStore::Open({path_});
    if (!db.ok()) return db.status();
    return (*db)->Verify(false);
  }

 private:
  std::optional<chorus::testing::TempDir> dir_;
  std::string path_;
  ServerHarness harness_;
  std::unique_ptr<net::TokenSigner> signer_;
  std::shared_ptr<LikeStore> store_;
  std::shared_ptr<FlakyStore> flaky_;
  std::shared_ptr<InProcessBus> bus_;
  std::unique_ptr<LikesService> service_;
};

// Every transition from every state, in an order that visits them all.
struct Step {
  const char* action;
  const char* state;
  bool changed;
  int64_t likes, dislikes;
};
constexpr Step kTransitions[] = {
    {"like", "liked", true, 1, 0},        {"like", "liked", false, 1, 0},
    {"dislike", "disliked", true, 0, 1},  {"unlike", "disliked", false, 0, 1},
    {"dislike", "disliked", false, 0, 1}, {"like", "liked", true, 1, 0},
    {"undislike", "liked", false, 1, 0},  {"unlike", "none", true, 0, 0},
    {"unlike", "none", false, 0, 0},      {"undislike", "none", false, 0, 0},
    {"dislike", "disliked", true, 0, 1},  {"undislike", "none", true, 0, 0},
};

TEST(LikesServiceTest, EveryTransitionOverHttp) {
  LikesServer s;
  for (const Step& step : kTransitions) {
    SCOPED_TRACE(step.action);
    Reply r = s.Act("alice", "v1", step.action);
    ASSERT_EQ(r.status, 200) << r.body;
    json j = r.Json();
    EXPECT_EQ(j["state"], step.state);
    EXPECT_EQ(j["changed"], step.changed);
    EXPECT_EQ(j["counts"]["likes"], step.likes);
    EXPECT_EQ(j["counts"]["dislikes"], step.dislikes);
    // Read-your-writes: nothing has been applied (flush_interval is an hour), yet reads agree.
    EXPECT_EQ(s.States("alice", "v1")["states"]["v1"], step.state);
    EXPECT_EQ(s.Counts("v1")["counts"]["v1"]["likes"], step.likes);
  }
  auto report = s.StopAndVerify();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->differences(), 0u);
}

TEST(LikesServiceTest, PipelinedActionsOnOneLikeApplyInTheOrderSent) {
  // One burst on one connection: the server dispatches the actions together (the embedded store
  // keeps each key's order), and every answer must be the one the sequential order gives.
  LikesServer s;
  ASSERT_TRUE(s.service().keeps_action_order());
  const std::string token = s.UserToken("alice");
  std::string burst;
  for (const Step& step : kTransitions) {
    const std::string body = json{{"business", "video"}, {"user", "alice"}, {"entity", "v1"}, {"action", step.action}}
                                 .dump();
    burst += "POST /v1/likes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
             "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" +
             body;
  }
  net::testclient::HttpClient c(s.port());
  ASSERT_FALSE(c.SendRaw(burst));
  for (const Step& step : kTransitions) {
    SCOPED_TRACE(step.action);
    net::testclient::Reply r = c.Read();
    ASSERT_FALSE(r.ec) << r.ec.message();
    ASSERT_EQ(r.status(), 200) << r.body();
    json j = json::parse(r.body());
    EXPECT_EQ(j["state"], step.state);
    EXPECT_EQ(j["changed"], step.changed);
    EXPECT_EQ(j["counts"]["likes"], step.likes);
    EXPECT_EQ(j["counts"]["dislikes"], step.dislikes);
  }
  EXPECT_EQ(s.States("alice", "v1")["states"]["v1"], "none");
  auto report = s.StopAndVerify();
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->differences(), 0u);
}

// The act, states and counts bodies are written by hand (likes_http.cc): each must be exactly
// the documented object, and a repeated entity is answered once.
TEST(LikesServiceTest, ResponsesAreTheDocumentedObjects) {
  LikesServer s;
  ASSERT_EQ(s.Act("alice", "v1", "like").status, 200);
  EXPECT_EQ(s.Act("bob", "v1", "dislike").Json(),
            json::parse(R"({"business":"video","user":"bob","entity":"v1","state":"disliked","changed":true,)"
                        R"("counts":{"likes":1,"dislikes":1}})"));
  EXPECT_EQ(s.States("alice", "v1,v2,v1"),
            json::parse(R"({"business":"video","user":"alice","states":{"v1":"liked","v2":"none"}})"));
  EXPECT_EQ(s.Counts("v2,v1,v1"), json::parse(R"({"business":"video","counts":{"v1":{"likes":1,"dislikes":1},)"
                                              R"("v2":{"likes":0,"dislikes":0}}})"));
  // Repeats count towards the limit (likes.max_entities = 100).
  std::string many = "v1";
  for (int i = 0; i < 100; ++i) many += ",v1";
  EXPECT_EQ(s.Call("GET", "/v1/likes/counts?business=video&entities=" + many, "", s.UserToken("r")).status, 400);
}

TEST(LikesServiceTest, ListsReceivedAndCursorsAfterApply) {
  LikesServer s([](LikesOptions& o) { o.flush_interval = std::chrono::milliseconds(20); });
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(s.Act("u" + std::to_string(i), "clip", "like", "video", "author").status, 200);
    ASSERT_EQ(s.Act("fan", "clip" + std::to_string(i), "like", "video", "author").status, 200);
    // Lists are newest first by the like's millisecond; likes within one millisecond tie (then
    // by id), so keep each round in its own millisecond for the order asserted below.
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const std::string token = s.UserToken("reader");
  ASSERT_TRUE(chorus::testing::Eventually([&] {
    auto r = s.Call("GET", "/v1/users/author/received?business=video", "", token);
    return r.status == 200 && r.Json()["received"] == 10;
  }));
  std::vector<std::string> likers;
  std::string cursor;
  for (int page = 0; page < 10; ++page) {
    std::string target = "/v1/entities/clip/likers?business=video&limit=2";
    if (!cursor.empty()) target += "&cursor=" + cursor;
    Reply r = s.Call("GET", target, "", token);
    ASSERT_EQ(r.status, 200) << r.body;
    json j = r.Json();
    for (const auto& item : j["items"]) likers.push_back(item["user"]);
    if (j["next_cursor"].is_null()) break;
    cursor = j["next_cursor"];
  }
  ASSERT_EQ(likers.size(), 5u);
  EXPECT_EQ(likers.front(), "u4");  // newest first
  Reply mine = s.Call("GET", "/v1/users/fan/likes?business=video&limit=100", "", token);
  ASSERT_EQ(mine.status, 200);
  EXPECT_EQ(mine.Json()["items"].size(), 5u);
  EXPECT_EQ(mine.Json()["items"][0]["entity"], "clip4");
  EXPECT_EQ(s.Call("GET", "/v1/users/fan/likes?business=video&cursor=%21%21", "", token).status, 400);
  EXPECT_EQ(s.Call("GET", "/v1/users/fan/likes?business=video&limit=0", "", token).status, 400);
  EXPECT_EQ(s.Call("GET", "/v1/users/fan/likes?business=video&limit=101", "", token).status, 400);
}

TEST(LikesServiceTest, BadInputIsRefusedAndNothingIsWritten) {
  LikesServer s([](LikesOptions& o) {
    o.rate_limits = true;
    o.businesses[0].user_rate = {1, 3};  // 3 writes, then 1/s
  });
  const std::string alice = s.UserToken("alice");
  auto post = [&](const json& body, const std::string& token) {
    return s.Call("POST", "/v1/likes", body.dump(), token);
  };
  json ok = {{"business", "video"}, {"user", "alice"}, {"entity", "e1"}, {"action", "like"}};
  struct Bad {
    json body;
    std::string token;
    int status;
  };
  json unknown_business = ok, bad_action = ok, bad_entity = ok, no_user = ok, other_user = ok, dislike_live = ok;
  unknown_business["business"] = "nope";
  bad_action["action"] = "love";
  bad_entity["entity"] = "a b";
  no_user.erase("user");
  other_user["user"] = "bob";
  dislike_live["business"] = "live";
  dislike_live["action"] = "dislike";
  const Bad bad[] = {
      {unknown_business, alice, 400}, {bad_action, alice, 400},   {bad_entity, alice, 400},
      {no_user, alice, 400},          {other_user, alice, 403},   {dislike_live, alice, 400},
      {ok, "", 401},                  {ok, "garbage.token.x", 401}, {ok, s.ServiceToken({"likes.read"}), 403},
  };
  for (const Bad& b : bad) {
    Reply r = post(b.body, b.token);
    EXPECT_EQ(r.status, b.status) << b.body.dump() << " -> " << r.body;
    EXPECT_TRUE(r.Json()["error"]["message"].is_string()) << r.body;
  }
  EXPECT_EQ(s.Call("POST", "/v1/likes", "{not json", alice).status, 400);
  EXPECT_EQ(s.Call("POST", "/v1/likes", "[1,2]", alice).status, 400);
  // Nothing above was written.
  EXPECT_EQ(s.Counts("e1")["counts"]["e1"]["likes"], 0);
  EXPECT_EQ(s.Counts("e1", "live")["counts"]["e1"]["dislikes"], 0);

  // Reads: oversized batch, missing parameters, bad ids, bad token.
  std::string many;
  for (int i = 0; i < 101; ++i) many += (i ? "," : "") + std::string("e") + std::to_string(i);
  EXPECT_EQ(s.Call("GET", "/v1/likes/counts?business=video&entities=" + many, "", alice).status, 400);
  EXPECT_EQ(s.Call("GET", "/v1/likes/counts?business=video", "", alice).status, 400);
  EXPECT_EQ(s.Call("GET", "/v1/likes/counts?business=nope&entities=a", "", alice).status, 400);
  EXPECT_EQ(s.Call("GET", "/v1/likes/counts?business=video&entities=a,,b", "", alice).status, 400);
  EXPECT_EQ(s.Call("GET", "/v1/likes/state?business=video&entities=a", "", alice).status, 400);
  EXPECT_EQ(s.Call("GET", "/v1/likes/counts?business=video&entities=a", "", "").status, 401);

  // Rate limit: the burst of 3 passes, the 4th is 429 with Retry-After and is not written.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(s.Act("alice", "r" + std::to_string(i), "like").status, 200);
  Reply limited = s.Act("alice", "r3", "like");
  EXPECT_EQ(limited.status, 429) << limited.body;
  EXPECT_EQ(limited.retry_after, "1");
  EXPECT_EQ(s.Counts("r3")["counts"]["r3"]["likes"], 0);
  // Another user is not limited by alice's bucket.
  EXPECT_EQ(s.Act("bob", "r3", "like").status, 200);
  // The process kept serving throughout.
  EXPECT_EQ(s.Call("GET", "/v1/likes/businesses", "", "").status, 200);
}

TEST(LikesServiceTest, BatchAnswersEachItem) {
  LikesServer s;
  json body = {{"actions",
                {{{"business", "video"}, {"user", "u1"}, {"entity", "b1"}, {"action", "like"}},
                 {{"business", "video"}, {"user", "u2"}, {"entity", "b1"}, {"action", "like"}},
                 {{"business", "video"}, {"user", "u3"}, {"entity", "b2"}, {"action", "bogus"}},
                 {{"business", "live"}, {"user", "u3"}, {"entity", "b2"}, {"action", "dislike"}},
                 {{"business", "video"}, {"user", "u1"}, {"entity", "b1"}, {"action", "like"}}}}};
  Reply r = s.Call("POST", "/v1/likes/batch", body.dump(), s.ServiceToken());
  ASSERT_EQ(r.status, 200) << r.body;
  json results = r.Json()["results"];
  ASSERT_EQ(results.size(), 5u);
  EXPECT_EQ(results[0]["state"], "liked");
  EXPECT_EQ(results[1]["state"], "liked");
  EXPECT_EQ(results[1]["counts"]["likes"], 2);
  EXPECT_EQ(results[2]["error"]["code"], "invalid_argument");
  EXPECT_EQ(results[3]["error"]["code"], "invalid_argument");
  EXPECT_EQ(results[4]["changed"], false);
  EXPECT_EQ(s.Counts("b1")["counts"]["b1"]["likes"], 2);
  // A user token may not batch for other users; an empty or oversized batch is refused whole.
  Reply mixed = s.Call("POST", "/v1/likes/batch", body.dump(), s.UserToken("u1"));
  ASSERT_EQ(mixed.status, 200);
  EXPECT_EQ(mixed.Json()["results"][1]["error"]["code"], "permission_denied");
  EXPECT_EQ(s.Call("POST", "/v1/likes/batch", R"({"actions":[]})", s.ServiceToken()).status, 400);
  json big = {{"actions", json::array()}};
  for (int i = 0; i < 101; ++i) big["actions"].push_back(body["actions"][0]);
  EXPECT_EQ(s.Call("POST", "/v1/likes/batch", big.dump(), s.ServiceToken()).status, 400);
}

// Many clients toggle the same likes at once: whatever order the owner serialized them in,
// each user's final state, the counts and the stored records agree.
TEST(LikesServiceTest, ConcurrentTogglesAgree) {
  LikesServer s([](LikesOptions& o) { o.flush_interval = std::chrono::milliseconds(5); });
  constexpr int kThreads = 8, kUsers = 4, kRounds = 40;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string token = s.ServiceToken();
      auto client = chorus::testing::HttpClient::Connect(s.port());
      if (!client.ok()) {
        ++failures;
        return;
      }
      for (int i = 0; i < kRounds; ++i) {
        const std::string user = "u" + std::to_string((t + i) % kUsers);
        const char* action = (i + t) % 3 == 0 ? "dislike" : (i % 2 ? "unlike" : "like");
        json body = {{"business", "video"}, {"user", user}, {"entity", "hot"}, {"action", action}};
        auto r = client->Request("POST", "/v1/likes", body.dump(),
                                 {{"Authorization", "Bearer " + token}, {"Content-Type", "application/json"}});
        if (!r.ok() || r->status != 200) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  int liked = 0, disliked = 0;
  for (int u = 0; u < kUsers; ++u) {
    const std::string state = s.States("u" + std::to_string(u), "hot")["states"]["hot"];
    liked += state == "liked";
    disliked += state == "disliked";
  }
  json counts = s.Counts("hot")["counts"]["hot"];
  EXPECT_EQ(counts["likes"], liked);
  EXPECT_EQ(counts["dislikes"], disliked);
  auto report = s.StopAndVerify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->differences(), 0u);
}

// A write's answer carries the entity's counts. The owner keeps the store's counts of entities it
// wrote or read (the overlay's base, then the settled cache once applied) instead of reading
// the store each time; with the apply stage running every millisecond, every answer, changed or
// a no-op, and every counts read must still match a model of the writes.
TEST(LikesServiceTest, WriteAnswersCountExactlyAcrossApplies) {
  LikesServer s([](LikesOptions& o) { o.flush_interval = std::chrono::milliseconds(1); });
  std::map<std::string, bool> liked;
  int64_t likes = 0;
  for (int i = 0; i < 90; ++i) {
    SCOPED_TRACE(i);
    const std::string user = "s" + std::to_string((i * 7) % 11);
    // Every third step repeats the user's current state: a no-op answered from what is known.
    const bool like = i % 3 == 2 ? liked[user] : !liked[user];
    Reply r = s.Act(user, "busy", like ? "like" : "unlike");
    ASSERT_EQ(r.status, 200) << r.body;
    if (like != liked[user]) likes += like ? 1 : -1;
    liked[user] = like;
    EXPECT_EQ(r.Json()["counts"]["likes"], likes);
    if (i % 4 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // let applies run
    if (i % 10 == 0) {
      EXPECT_EQ(s.Counts("busy")["counts"]["busy"]["likes"], likes);
    }
  }
  auto report = s.StopAndVerify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->differences(), 0u);
}

// Reads are answered from the store without a hop unless the key may be pending; with the apply
// stage running every millisecond, every read that follows an acknowledged write still sees it.
TEST(LikesServiceTest, ReadsAfterAWriteSeeItWhileApplyRuns) {
  LikesServer s([](LikesOptions& o) { o.flush_interval = std::chrono::milliseconds(1); });
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const std::string user = "ryw" + std::to_string(t);
      const std::string token = s.UserToken(user);
      const std::string reader = s.UserToken("reader");
      auto client = chorus::testing::HttpClient::Connect(s.port());
      if (!client.ok()) {
        ++mismatches;
        return;
      }
      for (int i = 0; i < 60; ++i) {
        const std::string entity = "x" + std::to_string(i % 7);
        const bool like = i % 2 == 0;
        json body = {{"business", "video"}, {"user", user}, {"entity", entity}, {"action", like ? "like" : "unlike"}};
        auto w = client->Request("POST", "/v1/likes", body.dump(),
                                 {{"Authorization", "Bearer " + token}, {"Content-Type", "application/json"}});
        if (!w.ok() || w->status != 200) {
          ++mismatches;
          continue;
        }
        const std::string want = json::parse(w->body)["state"];
        auto r = client->Request("GET", "/v1/likes/state?business=video&user=" + user + "&entities=" + entity, "",
                                 {{"Authorization", "Bearer " + reader}});
        if (!r.ok() || json::parse(r->body)["states"][entity] != want) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(LikesServiceTest, AcknowledgedWritesSurviveACrashBeforeApply) {
  auto dir = chorus::testing::TempDir::Create("likes-crash");
  ASSERT_TRUE(dir.ok());
  const std::string path = dir->path() + "/likes";
  {
    LikesServer s({}, false, path);
    for (int i = 0; i < 20; ++i) ASSERT_EQ(s.Act("u" + std::to_string(i), "clip", "like").status, 200);
    ASSERT_EQ(s.Act("u0", "clip", "unlike").status, 200);
    s.Shutdown(/*clean=*/false);  // nothing applied: flush_interval is an hour
  }
  {
    auto db = RocksDbLikeStore::Open({path});
    ASSERT_TRUE(db.ok());
    EXPECT_EQ((*db)->PendingLog()->size(), 21u);
  }
  LikesServer again({}, false, path);  // Start() applies the log
  EXPECT_EQ(again.Counts("clip")["counts"]["clip"]["likes"], 19);
  EXPECT_EQ(again.States("u0", "clip")["states"]["clip"], "none");
  EXPECT_EQ(again.States("u1", "clip")["states"]["clip"], "liked");
  auto report = again.StopAndVerify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->differences(), 0u);
  EXPECT_EQ(report->pending_log, 0u);
}

TEST(LikesServiceTest, EventsForLikesAndAggregatedCounts) {
  LikesServer s([](LikesOptions& o) { o.flush_interval = std::chrono::milliseconds(50); });
  struct Seen {
    std::mutex mu;
    std::vector<LikeEvent> likes;
    std::vector<CountEvent> counts;
  };
  auto seen = std::make_shared<Seen>();
  s.bus().SubscribeLikes([seen](const LikeEvent& e) {
    std::lock_guard lock(seen->mu);
    seen->likes.push_back(e);
  });
  s.bus().SubscribeCounts([seen](const CountEvent& e) {
    std::lock_guard lock(seen->mu);
    seen->counts.push_back(e);
  });
  for (int i = 0; i < 3; ++i) ASSERT_EQ(s.Act("u" + std::to_string(i), "room7", "like", "live").status, 200);
  ASSERT_EQ(s.Act("u0", "room7", "like", "live").status, 200);  // a no-op: no event
  ASSERT_TRUE(chorus::testing::Eventually([&] {
    std::lock_guard lock(seen->mu);
    return !seen->counts.empty() && seen->counts.back().counts.likes == 3;
  }));
  std::lock_guard lock(seen->mu);
  ASSERT_EQ(seen->likes.size(), 3u);
  EXPECT_EQ(seen->likes[0].business, "live");
  EXPECT_EQ(seen->likes[0].to, LikeState::kLiked);
  EXPECT_EQ(seen->counts.back().entity, "room7");
  EXPECT_LE(seen->counts.size(), 3u);  // aggregated per window, not one per like
}

TEST(LikesServiceTest, StoreFailuresDegradeReadsAndRefuseWrites) {
  LikesServer s({}, /*flaky=*/true);
  ASSERT_EQ(s.Act("alice", "d1", "like").status, 200);
  s.flaky().fail_reads = true;
  json counts = s.Counts("d1,d2");
  EXPECT_EQ(counts["degraded"], true);
  EXPECT_EQ(counts["counts"]["d2"]["likes"], 0);
  json states = s.States("bob", "d1");
  EXPECT_EQ(states["degraded"], true);
  EXPECT_EQ(states["states"]["d1"], "none");
  s.flaky().fail_reads = false;

  s.flaky().fail_appends = true;
  Reply refused = s.Act("bob", "d1", "like");
  EXPECT_EQ(refused.status, 503) << refused.body;
  s.flaky().fail_appends = false;
  // The refused like was not written, and the next one goes through.
  EXPECT_EQ(s.States("bob", "d1")["states"]["d1"], "none");
  EXPECT_EQ(s.Counts("d1")["counts"]["d1"]["likes"], 1);
  Reply retried = s.Act("bob", "d1", "like");
  ASSERT_EQ(retried.status, 200) << retried.body;
  EXPECT_EQ(retried.Json()["counts"]["likes"], 2);
  auto report = s.StopAndVerify();
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->differences(), 0u);
}

double CacheHits() {
  const std::string text = DefaultMetrics().Render();
  const std::string series = "chorus_likes_count_cache_total{result=\"hit\"} ";
  const size_t at = text.find(series);
  return at == std::string::npos ? 0 : std::stod(text.substr(at + series.size()));
}

TEST(LikesServiceTest, HotEntityCountsAreCachedAndStayFresh) {
  LikesServer s([](LikesOptions& o) {
    o.hot_threshold = 5;
    o.cache_ttl = std::chrono::seconds(30);
  });
  const double hits_before = CacheHits();
  ASSERT_EQ(s.Act("u0", "star", "like").status, 200);
  // Make it hot on every shard (connections land on either shard).
  for (int i = 0; i < 40; ++i) EXPECT_EQ(s.Counts("star")["counts"]["star"]["likes"], 1);
  // Writes reach the cached copies: every read after an acknowledged write sees it.
  for (int u = 1; u <= 5; ++u) {
    ASSERT_EQ(s.Act("u" + std::to_string(u), "star", "like").status, 200);
    for (int i = 0; i < 6; ++i) EXPECT_EQ(s.Counts("star")["counts"]["star"]["likes"], u + 1);
  }
  EXPECT_GT(CacheHits(), hits_before);
}

}  // namespace
}  // namespace chorus::likes
