#include "live/membership.h"

#include <gtest/gtest.h>

#include <set>

namespace chorus::live {
namespace {

std::set<uint64_t> Members(const MemberShards<int>& m) {
  std::set<uint64_t> ids;
  m.ForEach([&](uint64_t id, int value) {
    EXPECT_EQ(static_cast<int>(id) * 10, value);
    ids.insert(id);
  });
  return ids;
}

TEST(MemberShardsTest, SplitsAtShardSize) {
  MemberShards<int> m(3);
  for (uint64_t i = 1; i <= 7; ++i) ASSERT_TRUE(m.Join(i, static_cast<int>(i) * 10));
  EXPECT_FALSE(m.Join(3, 30));  // already a member
  EXPECT_EQ(m.size(), 7u);
  ASSERT_EQ(m.shard_count(), 3u);
  EXPECT_EQ(m.shard_size(0), 3u);
  EXPECT_EQ(m.shard_size(1), 3u);
  EXPECT_EQ(m.shard_size(2), 1u);
  EXPECT_EQ(Members(m), (std::set<uint64_t>{1, 2, 3, 4, 5, 6, 7}));
}

TEST(MemberShardsTest, EmptyShardIsReleasedAndNeighboursMerge) {
  MemberShards<int> m(4);
  for (uint64_t i = 1; i <= 12; ++i) m.Join(i, static_cast<int>(i) * 10);
  ASSERT_EQ(m.shard_count(), 3u);  // [1..4] [5..8] [9..12]
  // Shrink the middle shard to 0: it is released, no merge possible (4 + 4 > 4).
  for (uint64_t i = 5; i <= 8; ++i) ASSERT_TRUE(m.Leave(i));
  EXPECT_EQ(m.shard_count(), 2u);
  // Two leaves from each remaining shard: 2 + 2 fits in 4, so they merge.
  int out = 0;
  ASSERT_TRUE(m.Leave(1, &out));
  EXPECT_EQ(out, 10);
  m.Leave(2);
  m.Leave(9);
  EXPECT_EQ(m.shard_count(), 2u);
  m.Leave(10);
  EXPECT_EQ(m.shard_count(), 1u);
  EXPECT_EQ(Members(m), (std::set<uint64_t>{3, 4, 11, 12}));
  // Positions stay right after the merge: leaving and rejoining everyone works.
  for (uint64_t id : {3, 4, 11, 12}) ASSERT_TRUE(m.Leave(id));
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(m.shard_count(), 0u);
  EXPECT_FALSE(m.Leave(3));
}

TEST(MemberShardsTest, ChurnKeepsIndexConsistent) {
  MemberShards<int> m(16);
  std::set<uint64_t> expected;
  uint64_t x = 12345;
  for (int step = 0; step < 20000; ++step) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    const uint64_t id = (x >> 33) % 200;
    if (expected.contains(id)) {
      ASSERT_TRUE(m.Leave(id));
      expected.erase(id);
    } else {
      ASSERT_TRUE(m.Join(id, static_cast<int>(id) * 10));
      expected.insert(id);
    }
    ASSERT_EQ(m.size(), expected.size());
  }
  EXPECT_EQ(Members(m), expected);
  size_t total = 0;
  for (size_t s = 0; s < m.shard_count(); ++s) {
    EXPECT_GT(m.shard_size(s), 0u);
    EXPECT_LE(m.shard_size(s), 16u);
    total += m.shard_size(s);
  }
  EXPECT_EQ(total, expected.size());
}

}  // namespace
}  // namespace chorus::live
