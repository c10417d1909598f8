#include "likes/sql_store.h"

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "support/engines.h"

namespace chorus::likes {
namespace {

using S = LikeState;
using chorus::testing::MariaDbServer;

sql::MySqlOptions OptionsFor(const MariaDbServer& server, std::string database) {
  sql::MySqlOptions o;
  o.host = server.host();
  o.port = server.port();
  o.user = server.user();
  o.password = server.password();
  o.database = std::move(database);
  o.connect_timeout = std::chrono::seconds(2);
  o.read_timeout = std::chrono::seconds(20);
  o.write_timeout = std::chrono::seconds(20);
  o.pool_size = 4;
  return o;
}

LogEntry Entry(std::string ns, std::string user, std::string entity, S from, S to, int64_t time,
               std::string owner = "") {
  return {0, std::move(ns), std::move(user), std::move(entity), std::move(owner), from, to, 0, time};
}

class SqlStoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = MariaDbServer::Start();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server).release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  // A fresh, migrated database per test.
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    static int next = 0;
    options_ = OptionsFor(*server_, "likes_test_" + std::to_string(++next));
    Status migrated = SqlLikeStore::Migrate(options_);
    ASSERT_TRUE(migrated.ok()) << migrated.ToString();
    Reopen();
  }

  void Reopen() {
    store_.reset();
    auto s = SqlLikeStore::Open(options_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }

  // Logs and applies one transition.
  void Act(std::string user, std::string entity, S from, S to, int64_t time, std::string owner = "") {
    std::vector<LogEntry> e = {
        Entry("v", std::move(user), std::move(entity), from, to, time, std::move(owner))};
    ASSERT_TRUE(store_->AppendLog(e).ok());
    Status applied = store_->Apply(e);
    ASSERT_TRUE(applied.ok()) << applied.ToString();
  }

  Counts CountsOf(std::string entity, std::string ns = "v") {
    std::vector<Counts> out;
    const std::string one[1] = {std::move(entity)};
    Status s = store_->GetCounts(ns, one, &out);
    EXPECT_TRUE(s.ok()) << s.ToString();
    return out.empty() ? Counts{-1, -1} : out[0];
  }

  int64_t ReceivedOf(std::string owner) {
    auto r = store_->GetReceived("v", owner);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : -1;
  }

  // Raw SQL on the test database, to damage it as a bug or an operator would.
  void Raw(const std::string& statement) {
    auto c = sql::Connection::Open(options_);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    Status s = (*c)->Execute(statement);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  std::vector<std::string> Ids(const ListPage& page) {
    std::vector<std::string> out;
    for (const auto& item : page.items) out.push_back(item.id);
    return out;
  }

  static MariaDbServer* server_;
  sql::MySqlOptions options_;
  std::unique_ptr<SqlLikeStore> store_;
};

MariaDbServer* SqlStoreTest::server_ = nullptr;

TEST_F(SqlStoreTest, ApplyWritesRecordsCountsListsAndReceived) {
  EXPECT_EQ(store_->name(), "mariadb");
  Act("alice", "e1", S::kNone, S::kLiked, 100, "owner1");
  Act("bob", "e1", S::kNone, S::kLiked, 200, "owner1");
  Act("carol", "e1", S::kNone, S::kDisliked, 300, "owner1");
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 1}));
  EXPECT_EQ(CountsOf("nothing"), (Counts{0, 0}));
  EXPECT_EQ(ReceivedOf("owner1"), 2);
  EXPECT_EQ(ReceivedOf("nobody"), 0);

  std::vector<std::optional<Record>> recs;
  const std::string entities[3] = {"e1", "e2", "e1"};
  ASSERT_TRUE(store_->GetRecords("v", "alice", entities, &recs).ok());
  ASSERT_EQ(recs.size(), 3u);
  ASSERT_TRUE(recs[0].has_value());
  EXPECT_EQ(recs[0]->state, S::kLiked);
  EXPECT_EQ(recs[0]->time_ms, 100);
  EXPECT_EQ(recs[0]->owner, "owner1");
  EXPECT_FALSE(recs[1].has_value());
  ASSERT_TRUE(recs[2].has_value());  // a repeated entity gets its record too

  auto likers = store_->Likers("v", "e1", "", 10);
  ASSERT_TRUE(likers.ok()) << likers.status().ToString();
  EXPECT_EQ(Ids(*likers), (std::vector<std::string>{"bob", "alice"}));  // newest first; no dislikes
  EXPECT_TRUE(likers->next_cursor.empty());
  auto alice = store_->UserLikes("v", "alice", "", 10);
  ASSERT_TRUE(alice.ok());
  ASSERT_EQ(alice->items.size(), 1u);
  EXPECT_EQ(alice->items[0].id, "e1");
  EXPECT_EQ(alice->items[0].time_ms, 100);

  // Switching like -> dislike moves both counts and takes the item off both lists.
  Act("alice", "e1", S::kLiked, S::kDisliked, 400, "owner1");
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 2}));
  EXPECT_EQ(ReceivedOf("owner1"), 1);
  EXPECT_EQ(Ids(*store_->Likers("v", "e1", "", 10)), (std::vector<std::string>{"bob"}));
  EXPECT_TRUE(store_->UserLikes("v", "alice", "", 10)->items.empty());
  // And back: dislike -> like.
  Act("alice", "e1", S::kDisliked, S::kLiked, 500, "owner1");
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 1}));
  EXPECT_EQ(ReceivedOf("owner1"), 2);
  EXPECT_EQ(Ids(*store_->Likers("v", "e1", "", 10)), (std::vector<std::string>{"alice", "bob"}));

  auto report = store_->Verify(false);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->differences(), 0u);
  EXPECT_EQ(report->records, 3u);
  EXPECT_EQ(report->entities, 1u);
  EXPECT_EQ(report->pending_log, 0u);
}

TEST_F(SqlStoreTest, UnlikeRemovesTheRecordButKeepsTheOwnerFirstCredited) {
  Act("alice", "e1", S::kNone, S::kLiked, 100, "first");
  Act("alice", "e1", S::kLiked, S::kNone, 200, "first");
  EXPECT_EQ(CountsOf("e1"), (Counts{0, 0}));
  EXPECT_EQ(ReceivedOf("first"), 0);
  std::vector<std::optional<Record>> recs;
  const std::string one[1] = {"e1"};
  ASSERT_TRUE(store_->GetRecords("v", "alice", one, &recs).ok());
  EXPECT_FALSE(recs[0].has_value());  // state none reads as no record
  // A later like names another owner: the owner first credited is credited again.
  Act("alice", "e1", S::kNone, S::kLiked, 300, "second");
  EXPECT_EQ(ReceivedOf("first"), 1);
  EXPECT_EQ(ReceivedOf("second"), 0);
  EXPECT_EQ(store_->Verify(false)->differences(), 0u);
}

TEST_F(SqlStoreTest, NamespacesAreIsolated) {
  Act("alice", "e1", S::kNone, S::kLiked, 100, "o1");
  EXPECT_EQ(CountsOf("e1", "c"), (Counts{0, 0}));
  EXPECT_TRUE(store_->UserLikes("c", "alice", "", 10)->items.empty());
  EXPECT_TRUE(store_->Likers("c", "e1", "", 10)->items.empty());
  EXPECT_EQ(*store_->GetReceived("c", "o1"), 0);
  std::vector<std::optional<Record>> recs;
  const std::string one[1] = {"e1"};
  ASSERT_TRUE(store_->GetRecords("c", "alice", one, &recs).ok());
  EXPECT_FALSE(recs[0].has_value());
  // The same ids in another namespace are separate rows.
  std::vector<LogEntry> other = {Entry("c", "alice", "e1", S::kNone, S::kDisliked, 200)};
  ASSERT_TRUE(store_->Apply(other).ok());
  EXPECT_EQ(CountsOf("e1", "c"), (Counts{0, 1}));
  EXPECT_EQ(CountsOf("e1", "v"), (Counts{1, 0}));
}

TEST_F(SqlStoreTest, CursorsPageThroughNewestFirst) {
  for (int i = 0; i < 25; ++i) Act("alice", "e" + std::to_string(i), S::kNone, S::kLiked, 1000 + i);
  // Two likes in the same millisecond are both listed, in a stable order.
  Act("alice", "same_a", S::kNone, S::kLiked, 1010);
  Act("alice", "same_b", S::kNone, S::kLiked, 1010);
  std::vector<std::string> seen;
  std::string cursor;
  int pages = 0;
  do {
    auto page = store_->UserLikes("v", "alice", cursor, 10);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    for (const auto& item : page->items) seen.push_back(item.id);
    cursor = page->next_cursor;
    ++pages;
  } while (!cursor.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), 27u);
  EXPECT_EQ(seen.front(), "e24");
  EXPECT_EQ(seen.back(), "e0");
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 27u);  // none twice

  // An exact multiple of the page size ends without an empty extra page.
  for (int i = 0; i < 4; ++i) Act("u" + std::to_string(i), "hot", S::kNone, S::kLiked, 50 + i);
  auto first = store_->Likers("v", "hot", "", 2);
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(Ids(*first), (std::vector<std::string>{"u3", "u2"}));
  auto second = store_->Likers("v", "hot", first->next_cursor, 2);
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(Ids(*second), (std::vector<std::string>{"u1", "u0"}));
  EXPECT_TRUE(second->next_cursor.empty());

  EXPECT_EQ(store_->UserLikes("v", "alice", "not a cursor!", 10).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->UserLikes("v", "alice", "AAAA", 10).status().code(), StatusCode::kInvalidArgument);
  // Well-formed base64 whose id part is not an id.
  EXPECT_EQ(store_->Likers("v", "hot", "AAAAAAAAAAAnJyc", 10).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SqlStoreTest, TrimIsANoOpTheIndexServesTheWholeList) {
  for (int i = 0; i < 12; ++i) Act("alice", "e" + std::to_string(i), S::kNone, S::kLiked, 1000 + i);
  ASSERT_TRUE(store_->TrimUserLists("v", std::vector<std::string>{"alice"}, 5).ok());
  EXPECT_EQ(store_->UserLikes("v", "alice", "", 100)->items.size(), 12u);
  EXPECT_EQ(store_->Verify(false)->differences(), 0u);
}

TEST_F(SqlStoreTest, PendingLogSurvivesReopenAndIsAppliedOnce) {
  std::vector<LogEntry> e = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 10),
                             Entry("v", "bob", "e1", S::kNone, S::kLiked, 11)};
  ASSERT_TRUE(store_->AppendLog(e).ok());
  EXPECT_GT(e[0].seq, 0u);
  EXPECT_EQ(e[1].seq, e[0].seq + 1);
  Reopen();
  auto pending = store_->PendingLog();
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), 2u);
  EXPECT_EQ((*pending)[0].user, "alice");
  EXPECT_EQ((*pending)[0].seq, e[0].seq);
  EXPECT_EQ((*pending)[1].to, S::kLiked);
  EXPECT_EQ(store_->Verify(false)->pending_log, 2u);
  ASSERT_TRUE(store_->Apply(*pending).ok());
  EXPECT_TRUE(store_->PendingLog()->empty());
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 0}));
  // Applying the same entries again (a retry after an unknown COMMIT outcome) changes nothing.
  ASSERT_TRUE(store_->Apply(*pending).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 0}));
  // New appends continue after the old sequence numbers.
  std::vector<LogEntry> more = {Entry("v", "carol", "e1", S::kNone, S::kLiked, 12)};
  ASSERT_TRUE(store_->AppendLog(more).ok());
  EXPECT_GT(more[0].seq, e[1].seq);
}

TEST_F(SqlStoreTest, PendingLogPagesThroughALongLog) {
  std::vector<LogEntry> entries;
  for (int i = 0; i < 12000; ++i) {
    entries.push_back(
        Entry("v", "u" + std::to_string(i), "e" + std::to_string(i % 10), S::kNone, S::kLiked, i));
  }
  ASSERT_TRUE(store_->AppendLog(entries).ok());
  auto pending = store_->PendingLog();
  ASSERT_TRUE(pending.ok()) << pending.status().ToString();
  ASSERT_EQ(pending->size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    ASSERT_EQ((*pending)[i].seq, entries[i].seq) << i;
    ASSERT_EQ((*pending)[i].user, entries[i].user) << i;
  }
}

TEST_F(SqlStoreTest, StaleFromEntriesOfTwoWritersConverge) {
  // Two writers both believed "none" and both logged a like.
  std::vector<LogEntry> both = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 100, "o1"),
                                Entry("v", "alice", "e1", S::kNone, S::kLiked, 101, "o1")};
  ASSERT_TRUE(store_->Apply(both).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 0}));
  EXPECT_EQ(ReceivedOf("o1"), 1);
  // The same in two separate batches.
  std::vector<LogEntry> a = {Entry("v", "bob", "e1", S::kNone, S::kLiked, 200, "o1")};
  std::vector<LogEntry> b = {Entry("v", "bob", "e1", S::kNone, S::kLiked, 201, "o1")};
  ASSERT_TRUE(store_->Apply(a).ok());
  ASSERT_TRUE(store_->Apply(b).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 0}));
  EXPECT_EQ(ReceivedOf("o1"), 2);
  // Two unlikes, each believing "liked": one like goes.
  std::vector<LogEntry> unlikes = {Entry("v", "alice", "e1", S::kLiked, S::kNone, 300, "o1"),
                                   Entry("v", "alice", "e1", S::kLiked, S::kNone, 301, "o1")};
  ASSERT_TRUE(store_->Apply(unlikes).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 0}));
  // A writer that believed "disliked" but the store says liked: the real transition is
  // liked -> none.
  std::vector<LogEntry> wrong = {Entry("v", "bob", "e1", S::kDisliked, S::kNone, 400, "o1")};
  ASSERT_TRUE(store_->Apply(wrong).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{0, 0}));
  EXPECT_EQ(ReceivedOf("o1"), 0);
  EXPECT_EQ(store_->Verify(false)->differences(), 0u);
}

TEST_F(SqlStoreTest, CountsNeverGoBelowZero) {
  Act("alice", "e1", S::kNone, S::kLiked, 100, "o1");
  Act("bob", "e1", S::kNone, S::kDisliked, 100, "o1");
  // Damage: the totals were lost (rows gone) or reset to zero.
  Raw("DELETE FROM counts");
  Raw("UPDATE received SET total = 0");
  Act("alice", "e1", S::kLiked, S::kNone, 200, "o1");
  Act("bob", "e1", S::kDisliked, S::kLiked, 200, "o1");
  // likes: 0 - 1 clamped to 0, then + 1; dislikes: 0 - 1 clamped to 0.
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 0}));
  EXPECT_GE(ReceivedOf("o1"), 0);
  // In one batch with a net negative delta on a missing row.
  Raw("DELETE FROM counts");
  Raw("DELETE FROM received");
  std::vector<LogEntry> batch = {Entry("v", "bob", "e1", S::kLiked, S::kNone, 300, "o1")};
  ASSERT_TRUE(store_->Apply(batch).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{0, 0}));
  EXPECT_EQ(ReceivedOf("o1"), 0);
}

// Applies `entries` to a model of the authoritative rules: the final state of every key, the
// owner fixed by its first real transition.
struct Model {
  struct Key {
    S state = S::kNone;
    std::string owner;
    bool stored = false;
  };
  std::map<std::tuple<std::string, std::string, std::string>, Key> keys;
  void Apply(const std::vector<LogEntry>& entries) {
    for (const LogEntry& e : entries) {
      Key& k = keys[{e.ns, e.user, e.entity}];
      if (k.state == e.to) continue;
      if (!k.stored) k.owner = e.owner;
      k.stored = true;
      k.state = e.to;
    }
  }
  Counts CountsOf(const std::string& entity) const {
    Counts c;
    for (const auto& [key, k] : keys) {
      if (std::get<2>(key) != entity) continue;
      if (k.state == S::kLiked) ++c.likes;
      if (k.state == S::kDisliked) ++c.dislikes;
    }
    return c;
  }
  int64_t ReceivedOf(const std::string& owner) const {
    int64_t n = 0;
    for (const auto& [key, k] : keys) n += k.state == S::kLiked && k.owner == owner;
    return n;
  }
};

TEST_F(SqlStoreTest, LargeBatchWithRepeatedKeys) {
  std::mt19937 rng(7);
  const S states[3] = {S::kNone, S::kLiked, S::kDisliked};
  std::vector<LogEntry> entries;
  for (int i = 0; i < 5000; ++i) {
    const int user = static_cast<int>(rng() % 300);
    const int entity = static_cast<int>(rng() % 40);
    // `from` is random: the store must not trust it.
    entries.push_back(Entry("v", "u" + std::to_string(user), "e" + std::to_string(entity), states[rng() % 3],
                            states[rng() % 3], 1000 + i, "o" + std::to_string(rng() % 3)));
  }
  ASSERT_TRUE(store_->AppendLog(entries).ok());
  Status applied = store_->Apply(entries);
  ASSERT_TRUE(applied.ok()) << applied.ToString();
  EXPECT_TRUE(store_->PendingLog()->empty());

  Model model;
  model.Apply(entries);
  std::vector<std::string> entities;
  for (int e = 0; e < 40; ++e) entities.push_back("e" + std::to_string(e));
  std::vector<Counts> counts;
  ASSERT_TRUE(store_->GetCounts("v", entities, &counts).ok());
  for (size_t i = 0; i < entities.size(); ++i)
    EXPECT_EQ(counts[i], model.CountsOf(entities[i])) << entities[i];
  for (int o = 0; o < 3; ++o)
    EXPECT_EQ(ReceivedOf("o" + std::to_string(o)), model.ReceivedOf("o" + std::to_string(o)));
  std::vector<std::optional<Record>> recs;
  ASSERT_TRUE(store_->GetRecords("v", "u7", entities, &recs).ok());
  for (size_t i = 0; i < entities.size(); ++i) {
    auto it = model.keys.find({"v", "u7", entities[i]});
    const S want = it == model.keys.end() ? S::kNone : it->second.state;
    EXPECT_EQ(recs[i] ? recs[i]->state : S::kNone, want) << entities[i];
  }
  auto report = store_->Verify(false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->differences(), 0u);

  // The same batch again is a no-op.
  ASSERT_TRUE(store_->Apply(entries).ok());
  ASSERT_TRUE(store_->GetCounts("v", entities, &counts).ok());
  for (size_t i = 0; i < entities.size(); ++i)
    EXPECT_EQ(counts[i], model.CountsOf(entities[i])) << entities[i];
}

TEST_F(SqlStoreTest, ConcurrentAppliesStayConsistent) {
  // Several writers apply overlapping keys at once; deadlocks between them are retried inside
  // Apply, and a batch that still fails is retried by its writer, as the apply stage would.
  constexpr int kThreads = 4;
  std::atomic<int> gave_up{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      for (int round = 0; round < 15; ++round) {
        std::vector<LogEntry> batch;
        for (int i = 0; i < 30; ++i) {
          batch.push_back(Entry("v", "u" + std::to_string(rng() % 20), "e" + std::to_string(rng() % 5),
                                S::kNone, rng() % 2 ? S::kLiked : S::kNone, round,
                                "o" + std::to_string(rng() % 2)));
        }
        int attempts = 0;
        while (!store_->Apply(batch).ok()) {
          if (++attempts == 20) {
            ++gave_up;
            break;
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(gave_up.load(), 0);
  auto report = store_->Verify(false);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->differences(), 0u) << (report->examples.empty() ? "" : report->examples[0]);
}

TEST_F(SqlStoreTest, ApplyBatchSetsTheOffsetAtomicallyAndReportsWhatCommitted) {
  EXPECT_EQ(*store_->AppliedThrough("events"), 0u);
  Act("zed", "e2", S::kNone, S::kLiked, 50, "o2");
  std::vector<LogEntry> batch = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 100, "o1"),
                                 Entry("v", "bob", "e1", S::kNone, S::kDisliked, 101, "o1"),
                                 Entry("v", "zed", "e2", S::kNone, S::kLiked, 102, "o2"),  // already liked
                                 Entry("v", "alice", "e1", S::kNone, S::kLiked, 103, "o1")};
  auto outcome = store_->ApplyBatch(batch, "events", 42);
  ASSERT_TRUE(outcome.ok()) << outcome.status().ToString();
  EXPECT_EQ(*store_->AppliedThrough("events"), 42u);
  EXPECT_EQ(*store_->AppliedThrough("other"), 0u);

  ASSERT_EQ(outcome->counts.size(), 2u);  // every entity the batch names
  EXPECT_EQ(outcome->counts[0].ns, "v");
  EXPECT_EQ(outcome->counts[0].entity, "e1");
  EXPECT_EQ(outcome->counts[0].counts, (Counts{1, 1}));
  EXPECT_EQ(outcome->counts[1].entity, "e2");
  EXPECT_EQ(outcome->counts[1].counts, (Counts{1, 0}));
  ASSERT_EQ(outcome->records.size(), 2u);  // zed's like was no change
  EXPECT_EQ(outcome->records[0].user, "alice");
  EXPECT_EQ(outcome->records[0].state, S::kLiked);
  EXPECT_EQ(outcome->records[0].time_ms, 100);  // the repeated like changed nothing
  EXPECT_EQ(outcome->records[0].owner, "o1");
  EXPECT_EQ(outcome->records[1].user, "bob");
  EXPECT_EQ(outcome->records[1].state, S::kDisliked);
  ASSERT_EQ(outcome->received.size(), 1u);
  EXPECT_EQ(outcome->received[0].owner, "o1");
  EXPECT_EQ(outcome->received[0].total, 1);

  // A batch that fails writes nothing, the offset included: the valid entry before the bad one
  // is not applied.
  std::vector<LogEntry> bad = {Entry("v", "carol", "e1", S::kNone, S::kLiked, 200, "o1"),
                               Entry("namespace-far-too-long", "carol", "e1", S::kNone, S::kLiked, 200)};
  auto failed = store_->ApplyBatch(bad, "events", 43);
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), StatusCode::kInvalidArgument) << failed.status().ToString();
  EXPECT_EQ(*store_->AppliedThrough("events"), 42u);
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 1}));
  // Offsets may move either way: the job owns them.
  ASSERT_TRUE(store_->ApplyBatch({}, "events", 7).ok());
  EXPECT_EQ(*store_->AppliedThrough("events"), 7u);
  // With `after`, only on top of exactly that offset: a second job's overlapping run is refused
  // and writes nothing.
  std::vector<LogEntry> next = {Entry("v", "dave", "e1", S::kNone, S::kLiked, 300, "o1")};
  auto refused = store_->ApplyBatch(next, "events", 9, /*after=*/6);
  EXPECT_EQ(refused.status().code(), StatusCode::kFailedPrecondition) << refused.status().ToString();
  EXPECT_EQ(*store_->AppliedThrough("events"), 7u);
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 1}));
  ASSERT_TRUE(store_->ApplyBatch(next, "events", 9, /*after=*/7).ok());
  EXPECT_EQ(*store_->AppliedThrough("events"), 9u);
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 1}));
  EXPECT_TRUE(store_->ApplyBatch({}, "fresh", 3, /*after=*/0).ok());  // no row yet = 0
}

TEST_F(SqlStoreTest, CountsWithOffsetComeFromOneSnapshot) {
  std::vector<Counts> out;
  uint64_t offset = 99;
  const std::vector<std::string> entities = {"e1", "e2", "missing"};
  Status s = store_->GetCountsWithOffset("v", entities, "events", &out, &offset);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(offset, 0u);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0], (Counts{0, 0}));
  std::vector<LogEntry> batch = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 100, "o1"),
                                 Entry("v", "bob", "e2", S::kNone, S::kDisliked, 101, "o1")};
  ASSERT_TRUE(store_->ApplyBatch(batch, "events", 12).ok());
  s = store_->GetCountsWithOffset("v", entities, "events", &out, &offset);
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(offset, 12u);
  EXPECT_EQ(out[0], (Counts{1, 0}));
  EXPECT_EQ(out[1], (Counts{0, 1}));
  EXPECT_EQ(out[2], (Counts{0, 0}));
  // The connection goes back to the pool usable (the read-only transaction ended).
  Act("carol", "e1", S::kNone, S::kLiked, 200);
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 0}));
}

// Up to 500 keys are read with the offset in one statement, more in a transaction: both agree.
TEST_F(SqlStoreTest, RecordsWithOffsetOneStatementOrManyAgree) {
  std::vector<std::optional<Record>> out;
  uint64_t offset = 99;
  const std::vector<std::string> few = {"e1", "e2", "e3", "e1"};
  ASSERT_TRUE(store_->GetRecordsWithOffset("v", "alice", few, "events", &out, &offset).ok());
  EXPECT_EQ(offset, 0u) << "no offset row yet: 0, and the records are still read";
  std::vector<LogEntry> batch = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 100, "o1"),
                                 Entry("v", "alice", "e3", S::kNone, S::kDisliked, 101, "o2"),
                                 Entry("v", "bob", "e2", S::kNone, S::kLiked, 102, "o1")};
  ASSERT_TRUE(store_->ApplyBatch(batch, "events", 7).ok());
  Status st = store_->GetRecordsWithOffset("v", "alice", few, "events", &out, &offset);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(offset, 7u);
  ASSERT_EQ(out.size(), 4u);
  ASSERT_TRUE(out[0].has_value());
  EXPECT_EQ(out[0]->state, S::kLiked);
  EXPECT_EQ(out[0]->time_ms, 100);
  EXPECT_EQ(out[0]->owner, "o1");
  EXPECT_FALSE(out[1].has_value()) << "bob's like is not alice's";
  ASSERT_TRUE(out[2].has_value());
  EXPECT_EQ(out[2]->state, S::kDisliked);
  ASSERT_TRUE(out[3].has_value()) << "a repeated key gets its record too";

  std::vector<std::string> many = few;
  for (int i = 0; i < 600; ++i) many.push_back("x" + std::to_string(i));
  std::vector<std::optional<Record>> more;
  uint64_t more_offset = 0;
  st = store_->GetRecordsWithOffset("v", "alice", many, "events", &more, &more_offset);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(more_offset, 7u);
  for (size_t i = 0; i < few.size(); ++i) EXPECT_EQ(more[i].has_value(), out[i].has_value()) << i;
  for (size_t i = few.size(); i < many.size(); ++i) EXPECT_FALSE(more[i].has_value()) << many[i];
  // The unlike of e1 removes the record (its row stays for the owner: still no record).
  std::vector<LogEntry> unlike = {Entry("v", "alice", "e1", S::kLiked, S::kNone, 200, "o1")};
  ASSERT_TRUE(store_->ApplyBatch(unlike, "events", 8).ok());
  ASSERT_TRUE(store_->GetRecordsWithOffset("v", "alice", few, "events", &out, &offset).ok());
  EXPECT_EQ(offset, 8u);
  EXPECT_FALSE(out[0].has_value());
}

TEST_F(SqlStoreTest, AnEntryOlderThanTheStoredRowLoses) {
  Act("alice", "e1", S::kNone, S::kLiked, 100, "o1");
  Act("alice", "e1", S::kLiked, S::kNone, 200, "o1");
  // A like written at 150 by a writer that had not seen the unlike at 200 (queued before it).
  std::vector<LogEntry> stale = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 150, "o1")};
  ASSERT_TRUE(store_->ApplyBatch(stale, "events", 1).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{0, 0}));
  // A newer one applies.
  std::vector<LogEntry> newer = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 250, "o1")};
  ASSERT_TRUE(store_->ApplyBatch(newer, "events", 2).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 0}));
  // Between stream entries the stream's order decides, not the writers' clocks: a dislike
  // stamped 240 by a node whose clock lags, after the like stamped 250, still applies.
  std::vector<LogEntry> skewed = {Entry("v", "alice", "e1", S::kLiked, S::kDisliked, 240, "o1")};
  ASSERT_TRUE(store_->ApplyBatch(skewed, "events", 3).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{0, 1}));
}

TEST_F(SqlStoreTest, BlindUnactionsApplyOnlyToTheStateTheyUndo) {
  Act("alice", "e1", S::kNone, S::kDisliked, 100, "o1");
  Act("bob", "e1", S::kNone, S::kLiked, 100, "o1");
  // Blind unlikes (written while the state could not be read): alice's row is disliked, so hers
  // changes nothing; bob's undoes his like.
  LogEntry a = Entry("v", "alice", "e1", S::kNone, S::kNone, 200, "o1");
  a.if_state = S::kLiked;
  LogEntry b = Entry("v", "bob", "e1", S::kNone, S::kNone, 200, "o1");
  b.if_state = S::kLiked;
  // A blind like of someone with no row yet.
  LogEntry c = Entry("v", "carol", "e1", S::kLiked, S::kLiked, 200, "o1");
  std::vector<LogEntry> batch = {a, b, c};
  ASSERT_TRUE(store_->ApplyBatch(batch, "events", 3).ok());
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 1}));
  EXPECT_EQ(ReceivedOf("o1"), 1);
  // They survive the log encoding.
  auto decoded = DecodeLogEntry(EncodeLogEntry(a));
  ASSERT_TRUE(decoded.ok());
  ASSERT_TRUE(decoded->if_state.has_value());
  EXPECT_EQ(*decoded->if_state, S::kLiked);
  EXPECT_FALSE(DecodeLogEntry(EncodeLogEntry(c))->if_state.has_value());
}

TEST_F(SqlStoreTest, VerifyFindsDamageMadeWithSqlAndRepairFixesIt) {
  Act("alice", "e1", S::kNone, S::kLiked, 100, "o1");
  Act("bob", "e1", S::kNone, S::kLiked, 200, "o1");
  Act("carol", "e2", S::kNone, S::kDisliked, 300, "o2");
  Raw("UPDATE counts SET likes = likes + 5 WHERE entity = 'e1'");  // wrong count
  Raw("DELETE FROM counts WHERE entity = 'e2'");                   // missing count
  Raw("INSERT INTO counts VALUES ('v', 'ghost', 3, 0)");           // count without records
  Raw("DELETE FROM received WHERE owner = 'o1'");                  // missing total
  Raw("INSERT INTO received VALUES ('v', 'nobody', 9)");           // total without likes
  std::vector<LogEntry> pending = {Entry("v", "dan", "e1", S::kNone, S::kLiked, 400)};
  ASSERT_TRUE(store_->AppendLog(pending).ok());

  auto report = store_->Verify(false);
  ASSERT_TRUE(report.ok()) << report.status().ToString();
  EXPECT_EQ(report->count_differences, 3u);
  EXPECT_EQ(report->received_differences, 2u);
  EXPECT_EQ(report->index_differences, 0u);
  EXPECT_EQ(report->pending_log, 1u);
  EXPECT_EQ(report->records, 3u);
  EXPECT_EQ(report->entities, 3u);  // e1, e2, ghost
  EXPECT_FALSE(report->repaired);
  EXPECT_EQ(report->examples.size(), 5u);
  bool named = false;
  for (const auto& ex : report->examples) named = named || ex.find("v/ghost") != std::string::npos;
  EXPECT_TRUE(named) << ::testing::PrintToString(report->examples);
  EXPECT_EQ(CountsOf("e1"), (Counts{7, 0}));  // verify alone changes nothing

  auto repaired = store_->Verify(true);
  ASSERT_TRUE(repaired.ok()) << repaired.status().ToString();
  EXPECT_TRUE(repaired->repaired);
  EXPECT_EQ(repaired->differences(), 5u);  // what it found (and fixed)
  auto after = store_->Verify(false);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->differences(), 0u) << ::testing::PrintToString(after->examples);
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 0}));
  EXPECT_EQ(CountsOf("e2"), (Counts{0, 1}));
  EXPECT_EQ(CountsOf("ghost"), (Counts{0, 0}));
  EXPECT_EQ(ReceivedOf("o1"), 2);
  EXPECT_EQ(ReceivedOf("nobody"), 0);
  // A consistent store is not "repaired" again.
  EXPECT_FALSE(store_->Verify(true)->repaired);
}

TEST_F(SqlStoreTest, VerifyReportsAtMostTwentyExamples) {
  for (int i = 0; i < 30; ++i) Raw("INSERT INTO counts VALUES ('v', 'g" + std::to_string(i) + "', 1, 0)");
  auto report = store_->Verify(false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->count_differences, 30u);
  EXPECT_EQ(report->examples.size(), 20u);
}

TEST_F(SqlStoreTest, OpenBeforeMigrateFailsWithTheMigrateHint) {
  // No database at all.
  sql::MySqlOptions fresh = OptionsFor(*server_, "never_migrated");
  auto missing_db = SqlLikeStore::Open(fresh);
  EXPECT_EQ(missing_db.status().code(), StatusCode::kFailedPrecondition) << missing_db.status().ToString();
  EXPECT_NE(missing_db.status().message().find("chorus likes migrate"), std::string::npos);
  // A database without the schema.
  Raw("CREATE DATABASE empty_db");
  auto empty = SqlLikeStore::Open(OptionsFor(*server_, "empty_db"));
  EXPECT_EQ(empty.status().code(), StatusCode::kFailedPrecondition) << empty.status().ToString();
  EXPECT_NE(empty.status().message().find("chorus likes migrate"), std::string::npos);
  // A schema older than the code.
  Raw("DELETE FROM schema_migrations");
  auto old = SqlLikeStore::Open(options_);
  EXPECT_EQ(old.status().code(), StatusCode::kFailedPrecondition) << old.status().ToString();
  EXPECT_NE(old.status().message().find("chorus likes migrate"), std::string::npos);
  // Migrating fixes each.
  ASSERT_TRUE(SqlLikeStore::Migrate(fresh).ok());
  EXPECT_TRUE(SqlLikeStore::Open(fresh).ok());
  ASSERT_TRUE(SqlLikeStore::Migrate(options_).ok());
  EXPECT_TRUE(SqlLikeStore::Open(options_).ok());
}

TEST_F(SqlStoreTest, MigrateTwiceKeepsData) {
  Act("alice", "e1", S::kNone, S::kLiked, 100, "o1");
  ASSERT_TRUE(SqlLikeStore::Migrate(options_).ok());
  ASSERT_TRUE(SqlLikeStore::Migrate(options_).ok());
  Reopen();
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 0}));
  auto c = sql::Connection::Open(options_);
  ASSERT_TRUE(c.ok());
  auto versions = (*c)->Query("SELECT version FROM schema_migrations");
  ASSERT_TRUE(versions.ok());
  ASSERT_EQ(versions->size(), 1u);
  EXPECT_EQ(*(*versions)[0][0].ToInt64(), SqlLikeStore::kSchemaVersion);
  EXPECT_EQ(SqlLikeStore::Migrate(OptionsFor(*server_, "bad-name; DROP")).code(),
            StatusCode::kInvalidArgument);
}

// Its own server: this test stops it.
TEST(SqlStoreServerGoneTest, StoppedServerGivesUnavailable) {
  auto server = MariaDbServer::Start();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  sql::MySqlOptions options = OptionsFor(**server, "gone");
  ASSERT_TRUE(SqlLikeStore::Migrate(options).ok());
  auto store = SqlLikeStore::Open(options);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  std::vector<LogEntry> e = {Entry("v", "alice", "e1", S::kNone, S::kLiked, 1)};
  ASSERT_TRUE((*store)->AppendLog(e).ok());

  (*server)->Stop();

  SqlLikeStore& s = **store;
  EXPECT_EQ(s.AppendLog(e).code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.Apply(e).code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.ApplyBatch(e, "x", 1).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.PendingLog().status().code(), StatusCode::kUnavailable);
  std::vector<Counts> counts;
  const std::string one[1] = {"e1"};
  EXPECT_EQ(s.GetCounts("v", one, &counts).code(), StatusCode::kUnavailable);
  std::vector<std::optional<Record>> recs;
  EXPECT_EQ(s.GetRecords("v", "alice", one, &recs).code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.GetReceived("v", "o").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.UserLikes("v", "alice", "", 10).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.Likers("v", "e1", "", 10).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.Verify(false).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(s.AppliedThrough("x").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(SqlLikeStore::Open(options).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(SqlLikeStore::Migrate(options).code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace chorus::likes
