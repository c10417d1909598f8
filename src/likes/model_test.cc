#include "likes/model.h"

#include <gtest/gtest.h>

namespace chorus::likes {
namespace {

using S = LikeState;
using A = LikeAction;

struct Case {
  S from;
  A action;
  S to;
  Counts delta;
  bool changed;
};

TEST(ApplyTest, EveryTransition) {
  const Case cases[] = {
      {S::kNone, A::kLike, S::kLiked, {1, 0}, true},
      {S::kNone, A::kUnlike, S::kNone, {0, 0}, false},
      {S::kNone, A::kDislike, S::kDisliked, {0, 1}, true},
      {S::kNone, A::kUndislike, S::kNone, {0, 0}, false},
      {S::kLiked, A::kLike, S::kLiked, {0, 0}, false},
      {S::kLiked, A::kUnlike, S::kNone, {-1, 0}, true},
      {S::kLiked, A::kDislike, S::kDisliked, {-1, 1}, true},
      {S::kLiked, A::kUndislike, S::kLiked, {0, 0}, false},
      {S::kDisliked, A::kLike, S::kLiked, {1, -1}, true},
      {S::kDisliked, A::kUnlike, S::kDisliked, {0, 0}, false},
      {S::kDisliked, A::kDislike, S::kDisliked, {0, 0}, false},
      {S::kDisliked, A::kUndislike, S::kNone, {0, -1}, true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(StateName(c.from)) + " + " + std::string(ActionName(c.action)));
    auto t = Apply(c.from, c.action, true);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->to, c.to);
    EXPECT_EQ(t->delta, c.delta);
    EXPECT_EQ(t->changed, c.changed);
    EXPECT_EQ(DeltaOf(c.from, t->to), c.delta);
  }
}

TEST(ApplyTest, DislikesRefusedWhereNotAllowed) {
  EXPECT_EQ(Apply(S::kNone, A::kDislike, false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Apply(S::kNone, A::kUndislike, false).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Apply(S::kNone, A::kLike, false).ok());
}

TEST(ParseActionTest, KnownAndUnknown) {
  for (A a : {A::kLike, A::kUnlike, A::kDislike, A::kUndislike}) {
    auto parsed = ParseAction(ActionName(a));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, a);
  }
  EXPECT_FALSE(ParseAction("LIKE").ok());
  EXPECT_FALSE(ParseAction("").ok());
  EXPECT_FALSE(ParseAction("love").ok());
}

TEST(ValidateTest, Ids) {
  EXPECT_TRUE(ValidateId("user", "u-1_a.b:c").ok());
  EXPECT_FALSE(ValidateId("user", "").ok());
  EXPECT_FALSE(ValidateId("user", std::string(65, 'a')).ok());
  EXPECT_FALSE(ValidateId("user", "a b").ok());
  EXPECT_FALSE(ValidateId("user", std::string("a\0b", 3)).ok());
}

TEST(ValidateTest, Businesses) {
  Business b;
  b.id = "video";
  b.ns = "v";
  EXPECT_TRUE(ValidateBusiness(b).ok());
  b.ns = "";
  EXPECT_FALSE(ValidateBusiness(b).ok());
  b.ns = "V";
  EXPECT_FALSE(ValidateBusiness(b).ok());
  b.ns = "v";
  b.user_rate = {10, 0};
  EXPECT_FALSE(ValidateBusiness(b).ok());
  b.user_rate = {0, 0};
  EXPECT_TRUE(ValidateBusiness(b).ok());
}

TEST(CodecTest, LogEntryRoundTrip) {
  LogEntry e{0, "v", "alice", "e1", "bob", S::kLiked, S::kDisliked, 123, -5};
  auto back = DecodeLogEntry(EncodeLogEntry(e));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->ns, "v");
  EXPECT_EQ(back->user, "alice");
  EXPECT_EQ(back->entity, "e1");
  EXPECT_EQ(back->owner, "bob");
  EXPECT_EQ(back->from, S::kLiked);
  EXPECT_EQ(back->to, S::kDisliked);
  EXPECT_EQ(back->from_time_ms, 123);
  EXPECT_EQ(back->time_ms, -5);
}

TEST(CodecTest, RejectsEveryTruncationAndBadState) {
  const std::string bytes = EncodeLogEntry({0, "v", "alice", "e1", "", S::kNone, S::kLiked, 1, 2});
  for (size_t n = 0; n < bytes.size(); ++n) EXPECT_FALSE(DecodeLogEntry(bytes.substr(0, n)).ok()) << n;
  EXPECT_FALSE(DecodeLogEntry(bytes + "x").ok());
  std::string bad = EncodeRecord({S::kLiked, 7, "o"});
  bad[1] = 9;
  EXPECT_FALSE(DecodeRecord(bad).ok());
  auto rec = DecodeRecord(EncodeRecord({S::kDisliked, 7, "o"}));
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->state, S::kDisliked);
  EXPECT_EQ(rec->time_ms, 7);
  EXPECT_EQ(rec->owner, "o");
}

}  // namespace
}  // namespace chorus::likes
