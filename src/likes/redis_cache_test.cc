// RedisLikeCache against a real redis-server and a real 3-master Redis Cluster.
#include "likes/redis_cache.h"

#include <gtest/gtest.h>

#include "support/engines.h"

namespace chorus::likes {
namespace {

using chorus::testing::RedisClusterServer;
using chorus::testing::RedisServer;
using S = LikeState;

void Exercise(RedisLikeCache& cache) {
  const std::vector<std::string> entities = {"e1", "e2", "e3"};
  std::vector<std::optional<RedisLikeCache::CachedCounts>> counts;
  ASSERT_TRUE(cache.GetCounts("v", entities, &counts).ok());
  for (const auto& c : counts) EXPECT_FALSE(c.has_value());

  const std::vector<Counts> values = {{3, 1}, {0, 0}, {7, 2}};
  ASSERT_TRUE(cache.PutCounts("v", entities, values, 10).ok());
  ASSERT_TRUE(cache.GetCounts("v", entities, &counts).ok());
  ASSERT_TRUE(counts[0] && counts[1] && counts[2]);
  EXPECT_EQ(counts[0]->counts, (Counts{3, 1}));
  EXPECT_EQ(counts[0]->seq, 10u);
  EXPECT_EQ(counts[1]->counts, (Counts{0, 0}));  // zero is cached too, not a miss

  // An older value (a slow refill) never replaces a newer one; an equal or newer one does.
  const std::string e1[1] = {"e1"};
  const Counts older[1] = {{100, 100}};
  ASSERT_TRUE(cache.PutCounts("v", e1, older, 9).ok());
  ASSERT_TRUE(cache.GetCounts("v", entities, &counts).ok());
  EXPECT_EQ(counts[0]->counts, (Counts{3, 1}));
  const Counts newer[1] = {{4, 1}};
  ASSERT_TRUE(cache.PutCounts("v", e1, newer, 11).ok());
  ASSERT_TRUE(cache.GetCounts("v", entities, &counts).ok());
  EXPECT_EQ(counts[0]->counts, (Counts{4, 1}));
  EXPECT_EQ(counts[0]->seq, 11u);
  // Namespaces are separate keys.
  ASSERT_TRUE(cache.GetCounts("c", entities, &counts).ok());
  EXPECT_FALSE(counts[0].has_value());

  // Records: a known "no record" is a hit, not a miss.
  std::vector<std::optional<std::optional<Record>>> records;
  ASSERT_TRUE(cache.GetRecords("v", "alice", entities, &records).ok());
  for (const auto& r : records) EXPECT_FALSE(r.has_value());
  const std::vector<std::optional<Record>> put = {Record{S::kLiked, 100, "bob"}, std::nullopt,
                                                  Record{S::kDisliked, 200, ""}};
  ASSERT_TRUE(cache.PutRecords("v", "alice", entities, put, 5).ok());
  ASSERT_TRUE(cache.GetRecords("v", "alice", entities, &records).ok());
  ASSERT_TRUE(records[0] && records[1] && records[2]);
  ASSERT_TRUE(records[0]->has_value());
  EXPECT_EQ((*records[0])->state, S::kLiked);
  EXPECT_EQ((*records[0])->time_ms, 100);
  EXPECT_EQ((*records[0])->owner, "bob");
  EXPECT_FALSE(records[1]->has_value());
  EXPECT_EQ((*records[2])->state, S::kDisliked);

  // The job's refresh at seq 6: alice unliked e1, carol liked e2; counts move.
  ApplyOutcome outcome;
  outcome.counts.push_back({"v", "e1", {3, 1}});
  outcome.records.push_back({"v", "alice", "e1", S::kNone, 300, "bob"});
  outcome.records.push_back({"v", "carol", "e2", S::kLiked, 300, "dan"});
  EXPECT_EQ(*cache.RefreshedThrough("LIKES"), 0u);
  ASSERT_TRUE(cache.Refresh("LIKES", outcome, 12).ok());
  EXPECT_EQ(*cache.RefreshedThrough("LIKES"), 12u);
  ASSERT_TRUE(cache.GetRecords("v", "alice", entities, &records).ok());
  ASSERT_TRUE(records[0].has_value());
  EXPECT_FALSE(records[0]->has_value());  // known: no record
  ASSERT_TRUE(cache.GetCounts("v", entities, &counts).ok());
  EXPECT_EQ(counts[0]->counts, (Counts{3, 1}));
  // A stale refill of alice/e1 (snapshot at seq 5) is ignored.
  const std::optional<Record> stale[1] = {Record{S::kLiked, 100, "bob"}};
  ASSERT_TRUE(cache.PutRecords("v", "alice", e1, stale, 5).ok());
  ASSERT_TRUE(cache.GetRecords("v", "alice", entities, &records).ok());
  EXPECT_FALSE(records[0]->has_value());

  // Invalidate drops both.
  LogEntry e;
  e.ns = "v";
  e.user = "alice";
  e.entity = "e1";
  ASSERT_TRUE(cache.Invalidate(std::span<const LogEntry>(&e, 1)).ok());
  ASSERT_TRUE(cache.GetRecords("v", "alice", entities, &records).ok());
  EXPECT_FALSE(records[0].has_value());
  EXPECT_TRUE(records[2].has_value());
  ASSERT_TRUE(cache.GetCounts("v", entities, &counts).ok());
  EXPECT_FALSE(counts[0].has_value());
  EXPECT_TRUE(counts[2].has_value());
}

void ExerciseLists(RedisLikeCache& cache) {
  std::optional<ListPage> page;
  ASSERT_TRUE(cache.GetUserLikes("v", "alice", 10, &page).ok());
  EXPECT_FALSE(page.has_value());  // not cached
  ASSERT_TRUE(cache.GetUserLikes("x", "alice", 10, &page).ok());
  EXPECT_FALSE(page.has_value());  // a namespace without list caching
  // An empty list is cached too.
  ASSERT_TRUE(cache.PutUserLikes("v", "nobody", {}, false, 3).ok());
  ASSERT_TRUE(cache.GetUserLikes("v", "nobody", 10, &page).ok());
  ASSERT_TRUE(page.has_value());
  EXPECT_TRUE(page->items.empty());
  EXPECT_TRUE(page->next_cursor.empty());

  // list_max for "v" is 3: four newest given, three kept, capped (older exist in the DB).
  std::vector<ListItem> newest = {{"e9", 900}, {"e8", 800}, {"e7", 700}, {"e6", 600}};
  ASSERT_TRUE(cache.PutUserLikes("v", "alice", newest, false, 5).ok());
  ASSERT_TRUE(cache.GetUserLikes("v", "alice", 10, &page).ok());
  ASSERT_TRUE(page.has_value());
  ASSERT_EQ(page->items.size(), 3u);
  EXPECT_EQ(page->items[0].id, "e9");
  EXPECT_EQ(page->items[0].time_ms, 900);
  EXPECT_EQ(page->items[2].id, "e7");
  EXPECT_EQ(page->next_cursor, SqlLikeStore::ListCursor(700, "e7"));  // continue in the DB
  ASSERT_TRUE(cache.GetUserLikes("v", "alice", 2, &page).ok());
  ASSERT_EQ(page->items.size(), 2u);
  EXPECT_EQ(page->next_cursor, SqlLikeStore::ListCursor(800, "e8"));

  // The job at seq 6: alice liked e10 (newest), unliked e8. Trimmed back to 3, still capped.
  ApplyOutcome outcome;
  outcome.records.push_back({"v", "alice", "e10", S::kLiked, 1000, ""});
  outcome.records.push_back({"v", "alice", "e8", S::kNone, 1000, ""});
  ASSERT_TRUE(cache.Refresh("LIKES", outcome, 6).ok());
  ASSERT_TRUE(cache.GetUserLikes("v", "alice", 10, &page).ok());
  ASSERT_EQ(page->items.size(), 3u);
  EXPECT_EQ(page->items[0].id, "e10");
  EXPECT_EQ(page->items[1].id, "e9");
  EXPECT_EQ(page->items[2].id, "e7");
  // A refill from an older snapshot is refused; the job's change for an uncached user is not
  // cached (the next read refills).
  ASSERT_TRUE(cache.PutUserLikes("v", "alice", {{"old", 1}}, false, 4).ok());
  ASSERT_TRUE(cache.GetUserLikes("v", "alice", 10, &page).ok());
  EXPECT_EQ(page->items[0].id, "e10");
  ASSERT_TRUE(cache.GetUserLikes("v", "carol", 10, &page).ok());
  EXPECT_FALSE(page.has_value());

  // An uncapped list is complete: no cursor past its end.
  ASSERT_TRUE(cache.PutUserLikes("v", "bob", {{"e1", 100}}, false, 6).ok());
  ASSERT_TRUE(cache.GetUserLikes("v", "bob", 10, &page).ok());
  ASSERT_EQ(page->items.size(), 1u);
  EXPECT_TRUE(page->next_cursor.empty());
}

TEST(RedisLikeCacheTest, SingleServer) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  RedisLikeCache::Options o;
  o.seeds = {"127.0.0.1:" + std::to_string((*server)->port())};
  o.list_max = {{"v", 3}};
  auto cache = RedisLikeCache::Create(o);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  Exercise(**cache);
  ExerciseLists(**cache);
  // Down: an error, not a miss.
  (*server)->Stop();
  std::vector<std::optional<RedisLikeCache::CachedCounts>> counts;
  const std::string one[1] = {"e1"};
  EXPECT_EQ((*cache)->GetCounts("v", one, &counts).code(), StatusCode::kUnavailable);
}

TEST(RedisLikeCacheTest, BucketedCounts) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  RedisLikeCache::Options o;
  o.seeds = {"127.0.0.1:" + std::to_string((*server)->port())};
  o.count_buckets = 2;  // e1..e3 share buckets: fields must stay apart
  auto cache = RedisLikeCache::Create(o);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  Exercise(**cache);
}

TEST(RedisLikeCacheTest, ThreeMasterCluster) {
  auto cluster = RedisClusterServer::Start(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  RedisLikeCache::Options o;
  o.seeds = (*cluster)->addresses();
  o.cluster = true;
  o.list_max = {{"v", 3}};
  auto cache = RedisLikeCache::Create(o);
  ASSERT_TRUE(cache.ok()) << cache.status().ToString();
  Exercise(**cache);
  ExerciseLists(**cache);
  // Many entities spread over every master in one batch read.
  std::vector<std::string> entities;
  std::vector<Counts> values;
  for (int i = 0; i < 300; ++i) {
    entities.push_back("n" + std::to_string(i));
    values.push_back({i, 0});
  }
  ASSERT_TRUE((*cache)->PutCounts("v", entities, values, 1).ok());
  std::vector<std::optional<RedisLikeCache::CachedCounts>> counts;
  ASSERT_TRUE((*cache)->GetCounts("v", entities, &counts).ok());
  for (int i = 0; i < 300; ++i) {
    ASSERT_TRUE(counts[i].has_value()) << i;
    EXPECT_EQ(counts[i]->counts.likes, i);
  }
}

}  // namespace
}  // namespace chorus::likes
