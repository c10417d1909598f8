#include "likes/rocksdb_store.h"

#include <gtest/gtest.h>

#include "support/subprocess.h"

namespace chorus::likes {
namespace {

using S = LikeState;

class RocksDbStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = chorus::testing::TempDir::Create("likes-store");
    ASSERT_TRUE(dir.ok());
    dir_.emplace(std::move(*dir));
    Reopen();
  }

  void Reopen() {
    store_.reset();
    auto s = RocksDbLikeStore::Open({dir_->path() + "/db"});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(*s);
  }

  // Logs and applies one transition.
  void Act(std::string user, std::string entity, S from, S to, int64_t from_time, int64_t time,
           std::string owner = "") {
    std::vector<LogEntry> e = {{0, "v", std::move(user), std::move(entity), std::move(owner), from, to, from_time, time}};
    ASSERT_TRUE(store_->AppendLog(e).ok());
    ASSERT_TRUE(store_->Apply(e).ok());
  }

  Counts CountsOf(std::string entity) {
    std::vector<Counts> out;
    const std::string one[1] = {std::move(entity)};
    EXPECT_TRUE(store_->GetCounts("v", one, &out).ok());
    return out[0];
  }

  std::optional<chorus::testing::TempDir> dir_;
  std::unique_ptr<RocksDbLikeStore> store_;
};

TEST_F(RocksDbStoreTest, ApplyWritesRecordsCountsListsAndReceived) {
  Act("alice", "e1", S::kNone, S::kLiked, 0, 100, "owner1");
  Act("bob", "e1", S::kNone, S::kLiked, 0, 200, "owner1");
  Act("carol", "e1", S::kNone, S::kDisliked, 0, 300, "owner1");
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 1}));
  EXPECT_EQ(CountsOf("nothing"), (Counts{0, 0}));
  EXPECT_EQ(*store_->GetReceived("v", "owner1"), 2);

  std::vector<std::optional<Record>> recs;
  const std::string entities[2] = {"e1", "e2"};
  ASSERT_TRUE(store_->GetRecords("v", "alice", entities, &recs).ok());
  ASSERT_TRUE(recs[0].has_value());
  EXPECT_EQ(recs[0]->state, S::kLiked);
  EXPECT_EQ(recs[0]->time_ms, 100);
  EXPECT_EQ(recs[0]->owner, "owner1");
  EXPECT_FALSE(recs[1].has_value());

  auto likers = store_->Likers("v", "e1", "", 10);
  ASSERT_TRUE(likers.ok());
  ASSERT_EQ(likers->items.size(), 2u);  // dislikes are not likers
  EXPECT_EQ(likers->items[0].id, "bob");  // newest first
  EXPECT_EQ(likers->items[1].id, "alice");
  EXPECT_TRUE(likers->next_cursor.empty());

  // Switching like -> dislike moves both counts and removes the list entries.
  Act("alice", "e1", S::kLiked, S::kDisliked, 100, 400, "owner1");
  EXPECT_EQ(CountsOf("e1"), (Counts{1, 2}));
  EXPECT_EQ(*store_->GetReceived("v", "owner1"), 1);
  EXPECT_EQ(store_->Likers("v", "e1", "", 10)->items.size(), 1u);
  EXPECT_TRUE(store_->UserLikes("v", "alice", "", 10)->items.empty());

  auto report = store_->Verify(false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->differences(), 0u);
  EXPECT_EQ(report->records, 3u);
}

TEST_F(RocksDbStoreTest, NamespacesAreIsolated) {
  Act("alice", "e1", S::kNone, S::kLiked, 0, 100);
  std::vector<Counts> out;
  const std::string one[1] = {"e1"};
  ASSERT_TRUE(store_->GetCounts("c", one, &out).ok());
  EXPECT_EQ(out[0], (Counts{0, 0}));
  EXPECT_TRUE(store_->UserLikes("c", "alice", "", 10)->items.empty());
}

TEST_F(RocksDbStoreTest, CursorsPageThroughNewestFirst) {
  for (int i = 0; i < 25; ++i) Act("alice", "e" + std::to_string(i), S::kNone, S::kLiked, 0, 1000 + i);
  std::vector<std::string> seen;
  std::string cursor;
  int pages = 0;
  do {
    auto page = store_->UserLikes("v", "alice", cursor, 10);
    ASSERT_TRUE(page.ok()) << page.status().ToString();
    for (const auto& item : page->items) seen.push_back(item.id);
    cursor = page->next_cursor;
    ++pages;
  } while (!cursor.empty());
  EXPECT_EQ(pages, 3);
  ASSERT_EQ(seen.size(), 25u);
  EXPECT_EQ(seen.front(), "e24");
  EXPECT_EQ(seen.back(), "e0");
  EXPECT_EQ(store_->UserLikes("v", "alice", "not a cursor!", 10).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store_->UserLikes("v", "alice", "AAAA", 10).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(RocksDbStoreTest, TrimKeepsNewest) {
  for (int i = 0; i < 12; ++i) Act("alice", "e" + std::to_string(i), S::kNone, S::kLiked, 0, 1000 + i);
  ASSERT_TRUE(store_->TrimUserLists("v", std::vector<std::string>{"alice"}, 5).ok());
  auto page = store_->UserLikes("v", "alice", "", 100);
  ASSERT_EQ(page->items.size(), 5u);
  EXPECT_EQ(page->items.front().id, "e11");
  EXPECT_EQ(page->items.back().id, "e7");
  // The likes themselves remain: records, counts and likers are untouched.
  EXPECT_EQ(CountsOf("e0"), (Counts{1, 0}));
  // A trimmed list is not a difference.
  EXPECT_EQ(store_->Verify(false)->differences(), 0u);
  // Unliking a trimmed entry is harmless.
  Act("alice", "e0", S::kLiked, S::kNone, 1000, 2000);
  EXPECT_EQ(CountsOf("e0"), (Counts{0, 0}));
  EXPECT_EQ(store_->Verify(false)->differences(), 0u);
}


// One round trims several users through one iterator: each list is cut on its own, in any
// order of the users given, and users whose names are prefixes of others do not mix.
TEST_F(RocksDbStoreTest, TrimRoundOfSeveralUsers) {
  for (int i = 0; i < 9; ++i) Act("zoe", "z" + std::to_string(i), S::kNone, S::kLiked, 0, 1000 + i);
  for (int i = 0; i < 3; ++i) Act("bob", "b" + std::to_string(i), S::kNone, S::kLiked, 0, 1000 + i);
  for (int i = 0; i < 7; ++i) Act("bo", "o" + std::to_string(i), S::kNone, S::kLiked, 0, 1000 + i);
  Act("carl", "c0", S::kNone, S::kLiked, 0, 1000);
  ASSERT_TRUE(store_->TrimUserLists("v", std::vector<std::string>{"zoe", "bob", "nobody", "bo"}, 4).ok());
  auto size_of = [&](const std::string& user) { return store_->UserLikes("v", user, "", 100)->items.size(); };
  EXPECT_EQ(size_of("zoe"), 4u);
  EXPECT_EQ(store_->UserLikes("v", "zoe", "", 100)->items.back().id, "z5");
  EXPECT_EQ(size_of("bob"), 3u);
  EXPECT_EQ(size_of("bo"), 4u);
  EXPECT_EQ(store_->UserLikes("v", "bo", "", 100)->items.front().id, "o6");
  EXPECT_EQ(size_of("carl"), 1u);  // not in the round
  EXPECT_TRUE(store_->TrimUserLists("v", std::vector<std::string>{}, 4).ok());
  EXPECT_EQ(store_->Verify(false)->differences(), 0u);
}
TEST_F(RocksDbStoreTest, PendingLogSurvivesReopenAndIsAppliedOnce) {
  std::vector<LogEntry> e = {{0, "v", "alice", "e1", "", S::kNone, S::kLiked, 0, 10},
                             {0, "v", "bob", "e1", "", S::kNone, S::kLiked, 0, 11}};
  ASSERT_TRUE(store_->AppendLog(e).ok());
  EXPECT_LT(e[0].seq, e[1].seq);
  Reopen();
  auto pending = store_->PendingLog();
  ASSERT_TRUE(pending.ok());
  ASSERT_EQ(pending->size(), 2u);
  EXPECT_EQ((*pending)[0].user, "alice");
  ASSERT_TRUE(store_->Apply(*pending).ok());
  EXPECT_TRUE(store_->PendingLog()->empty());
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 0}));
  // New appends continue after the old sequence numbers.
  std::vector<LogEntry> more = {{0, "v", "carol", "e1", "", S::kNone, S::kLiked, 0, 12}};
  ASSERT_TRUE(store_->AppendLog(more).ok());
  EXPECT_GT(more[0].seq, 0u);
}

TEST_F(RocksDbStoreTest, VerifyFindsAndRepairsDamage) {
  Act("alice", "e1", S::kNone, S::kLiked, 0, 100, "o1");
  Act("bob", "e1", S::kNone, S::kLiked, 0, 200, "o1");
  // Damage: an extra count merge and an orphan likers entry, written as if by a buggy apply.
  std::vector<LogEntry> ghost = {{0, "v", "zed", "e1", "o1", S::kNone, S::kLiked, 0, 300}};
  ASSERT_TRUE(store_->AppendLog(ghost).ok());
  ASSERT_TRUE(store_->Apply(ghost).ok());
  // Remove zed's record only (an unlike whose list removal used the wrong time).
  std::vector<LogEntry> bad = {{0, "v", "zed", "e1", "o1", S::kLiked, S::kNone, 999, 400}};
  ASSERT_TRUE(store_->AppendLog(bad).ok());
  ASSERT_TRUE(store_->Apply(bad).ok());
  auto report = store_->Verify(false);
  ASSERT_TRUE(report.ok());
  EXPECT_GE(report->index_differences, 2u);  // zed's likers and user list entries are orphans
  EXPECT_FALSE(report->repaired);
  auto repaired = store_->Verify(true);
  ASSERT_TRUE(repaired.ok());
  EXPECT_TRUE(repaired->repaired);
  EXPECT_EQ(store_->Verify(false)->differences(), 0u);
  EXPECT_EQ(store_->Likers("v", "e1", "", 10)->items.size(), 2u);
  EXPECT_EQ(CountsOf("e1"), (Counts{2, 0}));
  EXPECT_EQ(*store_->GetReceived("v", "o1"), 2);
}

TEST_F(RocksDbStoreTest, ReadOnlyBesideAWriter) {
  Act("alice", "e1", S::kNone, S::kLiked, 0, 100);
  ASSERT_TRUE(store_->Flush().ok());
  RocksDbOptions ro{dir_->path() + "/db"};
  ro.read_only = true;
  auto reader = RocksDbLikeStore::Open(ro);
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader)->Verify(false)->records, 1u);
  EXPECT_EQ((*reader)->Verify(true).status().code(), StatusCode::kFailedPrecondition);
  // A second writer is refused while the first holds the lock.
  auto second = RocksDbLikeStore::Open({dir_->path() + "/db"});
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition) << second.status().ToString();
}

}  // namespace
}  // namespace chorus::likes
