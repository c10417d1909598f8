#include "live/message.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <set>

namespace chorus::live {
namespace {

TEST(MessageTest, ParsesAndFinalizes) {
  auto d = ParseDraft(R"({"type":"gift","sender":{"id":"u1","level":7},"payload":{"value":120,"name":"rocket"},"gain_key":"g"})", 4096);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  Message& m = d->message;
  EXPECT_EQ(m.type, "gift");
  EXPECT_EQ(m.sender_id, "u1");
  EXPECT_EQ(m.sender_level, 7);
  EXPECT_EQ(d->gift_value, 120);
  m.id = 1ull << 60;
  m.room = "room-1";
  m.created_at = 1'800'000'000'123;
  m.priority = PriorityRules{}.Compute(*d);
  Finalize(m);
  auto j = nlohmann::json::parse(m.json);
  EXPECT_EQ(j["id"], std::to_string(1ull << 60));  // a string: exact in JavaScript
  EXPECT_EQ(j["room"], "room-1");
  EXPECT_EQ(j["priority"], 612);
  EXPECT_EQ(j["created_at"], 1'800'000'000'123);
  EXPECT_EQ(j["sender"]["level"], 7);
  EXPECT_EQ(j["payload"]["name"], "rocket");
  EXPECT_EQ(j["gain_key"], "g");
}

TEST(MessageTest, RejectsBadInput) {
  const size_t kMax = 64;
  for (const char* bad : {"", "[]", "{}", R"({"type":""})", R"({"type":"Gift!"})", R"({"type":1})",
                          R"({"type":"chat","payload":[1]})", R"({"type":"chat","priority":1001})",
                          R"({"type":"chat","priority":"high"})", R"({"type":"chat","sender":{"id":"a b"}})",
                          R"({"type":"chat","sender":{"level":-1}})", R"({"type":"chat","bogus":1})",
                          R"({"type":"chat","payload":{"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}})"}) {
    auto d = ParseDraft(bad, kMax);
    ASSERT_FALSE(d.ok()) << bad;
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(MessageTest, DeepOrHugePayloadsAreRefusedBeforeSerializing) {
  // 100,000 levels would overflow the stack in a recursive dump().
  std::string deep = R"({"type":"chat","payload":{"a":)";
  for (int i = 0; i < 100000; ++i) deep += '[';
  for (int i = 0; i < 100000; ++i) deep += ']';
  deep += "}}";
  auto d = ParseDraft(deep, 1 << 20);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("deeper"), std::string::npos) << d.status().message();
  std::string nested = R"({"type":"chat","payload":{"a":[[[[1]]]]}})";
  EXPECT_TRUE(ParseDraft(nested, 4096).ok());
}

TEST(MessageTest, RoomIds) {
  EXPECT_TRUE(ValidateRoomId("r1").ok());
  EXPECT_TRUE(ValidateRoomId("live:123_a.b-c").ok());
  EXPECT_FALSE(ValidateRoomId("").ok());
  EXPECT_FALSE(ValidateRoomId("a/b").ok());
  EXPECT_FALSE(ValidateRoomId("{r}").ok());
  EXPECT_FALSE(ValidateRoomId(std::string(65, 'a')).ok());
}

TEST(PriorityRulesTest, FollowTheSeed) {
  PriorityRules rules;
  auto p = [&](const char* json) {
    auto d = ParseDraft(json, 4096);
    EXPECT_TRUE(d.ok()) << json;
    return rules.Compute(*d);
  };
  const int small_gift = p(R"({"type":"gift","payload":{"value":10}})");
  const int big_gift = p(R"({"type":"gift","payload":{"value":5000}})");
  const int pk = p(R"({"type":"pk"})");
  const int notify = p(R"({"type":"notify"})");
  const int chat_high = p(R"({"type":"chat","sender":{"id":"u","level":40}})");
  const int chat_low = p(R"({"type":"chat","sender":{"id":"u","level":1}})");
  const int chat_zero = p(R"({"type":"chat","sender":{"id":"u","level":0}})");
  const int chat_anon = p(R"({"type":"chat"})");
  EXPECT_GT(big_gift, small_gift);
  EXPECT_GT(small_gift, chat_high);
  EXPECT_GT(pk, notify);
  EXPECT_GT(chat_high, chat_low);
  EXPECT_GT(chat_zero, chat_anon);
  EXPECT_EQ(p(R"({"type":"chat","priority":999})"), 999);  // the business may set it
  EXPECT_EQ(p(R"({"type":"vote"})"), rules.default_base);
  // A gift too large for any integer still gets the biggest bonus, not the smallest.
  EXPECT_EQ(p(R"({"type":"gift","payload":{"value":1e300}})"), rules.base.at("gift") + rules.gift_bonus_max);
}

TEST(PriorityRulesTest, FromConfig) {
  auto rules = PriorityRules::FromJson(R"({"types":{"vote":700,"chat":300},"default":50,"gift_step":1})");
  ASSERT_TRUE(rules.ok()) << rules.status().ToString();
  EXPECT_EQ(rules->base.at("vote"), 700);
  EXPECT_EQ(rules->base.at("gift"), 600);  // untouched defaults stay
  EXPECT_EQ(rules->default_base, 50);
  EXPECT_FALSE(PriorityRules::FromJson(R"({"typo":1})").ok());
  EXPECT_FALSE(PriorityRules::FromJson(R"({"types":{"chat":5000}})").ok());
  EXPECT_TRUE(PriorityRules::FromJson("").ok());
}

TEST(IdGeneratorTest, UniqueAndTimeOrdered) {
  IdGenerator a(0, 0, 2), b(0, 1, 2);
  std::set<uint64_t> seen;
  uint64_t last = 0;
  const int64_t t0 = 1'800'000'000'000;
  for (int i = 0; i < 10000; ++i) {
    const uint64_t id = a.Next(t0 + i / 5000);  // 5000 ids in one ms: borrows the next ms
    EXPECT_GT(id, last);
    last = id;
    EXPECT_TRUE(seen.insert(id).second);
    EXPECT_TRUE(seen.insert(b.Next(t0)).second);
  }
  EXPECT_GE(IdGenerator::MillisOf(last), t0 + 1);
  // A clock going backwards never produces a smaller id.
  EXPECT_GT(a.Next(t0 - 60'000), last);
}

}  // namespace
}  // namespace chorus::live
