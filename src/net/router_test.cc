#include "net/router.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace chorus::net {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;

// A handler that answers with its own name, so a test can tell which route a Match selected.
HttpHandler Named(std::string name) {
  return [name = std::move(name)](HttpRequest& req, HttpResponder) { req.body = name; };
}

// Runs the matched handler and returns the name it wrote ("" when nothing matched).
std::string Which(const Router::Match& m) {
  if (m.handler == nullptr) return "";
  HttpRequest req;
  (*m.handler)(req, HttpResponder());
  return req.body;
}

WebSocketHandler Ws() { return WebSocketHandler{}; }

TEST(RouterTest, LiteralSegmentBeatsParameterWhicheverIsAddedFirst) {
  for (bool literal_first : {true, false}) {
    Router r;
    if (literal_first) {
      ASSERT_TRUE(r.Add("GET", "/v1/rooms/online", Named("online")).ok());
      ASSERT_TRUE(r.Add("GET", "/v1/rooms/{room}", Named("room")).ok());
    } else {
      ASSERT_TRUE(r.Add("GET", "/v1/rooms/{room}", Named("room")).ok());
      ASSERT_TRUE(r.Add("GET", "/v1/rooms/online", Named("online")).ok());
    }
    auto online = r.Find("GET", "/v1/rooms/online", false);
    EXPECT_EQ(online.status, 200);
    EXPECT_EQ(Which(online), "online") << "literal_first=" << literal_first;
    EXPECT_THAT(online.params, IsEmpty());

    auto room = r.Find("GET", "/v1/rooms/lobby", false);
    EXPECT_EQ(Which(room), "room");
    EXPECT_THAT(room.params, ElementsAre(Pair("room", "lobby")));
  }
}

TEST(RouterTest, PathParametersAreCapturedInOrder) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/v1/rooms/{room}/messages/{id}", Named("msg")).ok());
  auto m = r.Find("GET", "/v1/rooms/lobby/messages/42", false);
  EXPECT_EQ(Which(m), "msg");
  EXPECT_THAT(m.params, ElementsAre(Pair("room", "lobby"), Pair("id", "42")));

  // A parameter is one whole segment: too few or too many segments do not match.
  EXPECT_EQ(r.Find("GET", "/v1/rooms/lobby/messages", false).status, 404);
  EXPECT_EQ(r.Find("GET", "/v1/rooms/lobby/messages/42/x", false).status, 404);
  EXPECT_EQ(r.Find("GET", "/v1/rooms/lobby/other/42", false).status, 404);
}

TEST(RouterTest, RestParameterCapturesTheRemainingPath) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/static/{path...}", Named("static")).ok());
  ASSERT_TRUE(r.Add("GET", "/static/special", Named("special")).ok());

  auto deep = r.Find("GET", "/static/css/site/main.css", false);
  EXPECT_EQ(Which(deep), "static");
  EXPECT_THAT(deep.params, ElementsAre(Pair("path", "css/site/main.css")));

  auto one = r.Find("GET", "/static/app.js", false);
  EXPECT_THAT(one.params, ElementsAre(Pair("path", "app.js")));

  // The directory itself matches with an empty rest (a static handler serves its index).
  auto root = r.Find("GET", "/static/", false);
  EXPECT_EQ(Which(root), "static");
  EXPECT_THAT(root.params, ElementsAre(Pair("path", "")));

  // A literal route still wins over the catch-all.
  EXPECT_EQ(Which(r.Find("GET", "/static/special", false)), "special");
  EXPECT_EQ(r.Find("GET", "/other/app.js", false).status, 404);
}

TEST(RouterTest, RootCatchAllServesEverythingElse) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/{path...}", Named("files")).ok());
  ASSERT_TRUE(r.Add("GET", "/healthz", Named("health")).ok());
  EXPECT_EQ(Which(r.Find("GET", "/healthz", false)), "health");
  auto m = r.Find("GET", "/", false);
  EXPECT_EQ(Which(m), "files");
  EXPECT_THAT(m.params, ElementsAre(Pair("path", "")));
  EXPECT_THAT(r.Find("GET", "/a/b", false).params, ElementsAre(Pair("path", "a/b")));
}

TEST(RouterTest, UnknownPathIs404AndWrongMethodIs405WithSortedAllowList) {
  Router r;
  ASSERT_TRUE(r.Add("POST", "/v1/rooms", Named("create")).ok());
  ASSERT_TRUE(r.Add("GET", "/v1/rooms", Named("list")).ok());
  ASSERT_TRUE(r.Add("DELETE", "/v1/rooms/{room}", Named("delete")).ok());
  ASSERT_TRUE(r.Add("PUT", "/v1/rooms/{room}", Named("put")).ok());

  auto missing = r.Find("GET", "/v1/nothing", false);
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.handler, nullptr);
  EXPECT_EQ(missing.allow, "");

  auto wrong = r.Find("PATCH", "/v1/rooms", false);
  EXPECT_EQ(wrong.status, 405);
  EXPECT_EQ(wrong.handler, nullptr);
  EXPECT_EQ(wrong.allow, "GET, POST");

  auto wrong_param = r.Find("GET", "/v1/rooms/lobby", false);
  EXPECT_EQ(wrong_param.status, 405);
  EXPECT_EQ(wrong_param.allow, "DELETE, PUT");

  EXPECT_EQ(Which(r.Find("DELETE", "/v1/rooms/lobby", false)), "delete");
}

TEST(RouterTest, MethodMatchIsExact) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/a", Named("a")).ok());
  EXPECT_EQ(r.Find("get", "/a", false).status, 405);
}

TEST(RouterTest, HeadIsServedByTheGetRoute) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/v1/status", Named("status")).ok());
  ASSERT_TRUE(r.Add("POST", "/v1/submit", Named("submit")).ok());
  auto head = r.Find("HEAD", "/v1/status", false);
  EXPECT_EQ(head.status, 200);
  EXPECT_EQ(Which(head), "status");

  // HEAD does not borrow other methods.
  auto head_post = r.Find("HEAD", "/v1/submit", false);
  EXPECT_EQ(head_post.status, 405);
  EXPECT_EQ(head_post.allow, "POST");
}

TEST(RouterTest, DuplicateRouteIsAnError) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/v1/rooms/{room}", Named("a")).ok());
  Status dup = r.Add("GET", "/v1/rooms/{room}", Named("b"));
  EXPECT_EQ(dup.code(), StatusCode::kAlreadyExists);
  // The first registration keeps serving.
  EXPECT_EQ(Which(r.Find("GET", "/v1/rooms/x", false)), "a");
  // Same pattern with another method is a different route.
  EXPECT_TRUE(r.Add("POST", "/v1/rooms/{room}", Named("c")).ok());

  ASSERT_TRUE(r.AddWebSocket("/v1/ws", Ws()).ok());
  EXPECT_EQ(r.AddWebSocket("/v1/ws", Ws()).code(), StatusCode::kAlreadyExists);
}

TEST(RouterTest, BadPatternsAreRejected) {
  Router r;
  for (const char* bad : {"", "v1/rooms", "/v1/{}", "/v1/{room", "/v1/{room}x", "/v1/{rest...}/tail"}) {
    EXPECT_EQ(r.Add("GET", bad, Named("x")).code(), StatusCode::kInvalidArgument)
        << "pattern '" << bad << "'";
    EXPECT_EQ(r.AddWebSocket(bad, Ws()).code(), StatusCode::kInvalidArgument) << "pattern '" << bad << "'";
  }
  // Nothing half-registered.
  EXPECT_EQ(r.Find("GET", "/v1/x", false).status, 404);
  EXPECT_TRUE(r.Add("GET", "/", Named("root")).ok());
  EXPECT_EQ(Which(r.Find("GET", "/", false)), "root");
}

TEST(RouterTest, WebSocketRoutesMatchOnlyUpgrades) {
  Router r;
  ASSERT_TRUE(r.AddWebSocket("/v1/rooms/{room}/ws", Ws()).ok());
  ASSERT_TRUE(r.Add("GET", "/v1/plain", Named("plain")).ok());

  auto up = r.Find("GET", "/v1/rooms/lobby/ws", true);
  EXPECT_NE(up.websocket, nullptr);
  EXPECT_EQ(up.handler, nullptr);
  EXPECT_THAT(up.params, ElementsAre(Pair("room", "lobby")));

  // A plain request to a WebSocket path selects nothing.
  auto plain = r.Find("GET", "/v1/rooms/lobby/ws", false);
  EXPECT_EQ(plain.websocket, nullptr);
  EXPECT_EQ(plain.handler, nullptr);
  EXPECT_EQ(plain.status, 426);

  // An upgrade to a plain HTTP route selects nothing either.
  auto wrong_up = r.Find("GET", "/v1/plain", true);
  EXPECT_EQ(wrong_up.websocket, nullptr);
  EXPECT_EQ(wrong_up.handler, nullptr);
  EXPECT_EQ(wrong_up.status, 404);
}

TEST(RouterTest, EncodedSlashStaysInsideItsSegment) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/v1/rooms/{room}/messages", Named("messages")).ok());
  auto m = r.Find("GET", "/v1/rooms/a%2Fb/messages", false);
  EXPECT_EQ(Which(m), "messages");
  EXPECT_THAT(m.params, ElementsAre(Pair("room", "a/b")));
  auto spaced = r.Find("GET", "/v1/rooms/live%20room/messages", false);
  EXPECT_THAT(spaced.params, ElementsAre(Pair("room", "live room")));
  EXPECT_EQ(r.Find("GET", "/v1/rooms/%zz/messages", false).status, 400);
}

TEST(RouterTest, HttpAndWebSocketRoutesCanShareAPath) {
  Router r;
  ASSERT_TRUE(r.Add("GET", "/v1/events", Named("poll")).ok());
  ASSERT_TRUE(r.AddWebSocket("/v1/events", Ws()).ok());
  EXPECT_NE(r.Find("GET", "/v1/events", true).websocket, nullptr);
  auto plain = r.Find("GET", "/v1/events", false);
  EXPECT_EQ(plain.websocket, nullptr);
  EXPECT_EQ(Which(plain), "poll");
}

// ----------------------------------------------------------------------------- decoding

TEST(PercentDecodeTest, DecodesEscapesInEitherCase) {
  EXPECT_EQ(PercentDecode("a%20b", false).value(), "a b");
  EXPECT_EQ(PercentDecode("%41%62%63", false).value(), "Abc");
  EXPECT_EQ(PercentDecode("caf%c3%a9", false).value(), "caf\xc3\xa9");
  EXPECT_EQ(PercentDecode("caf%C3%A9", false).value(), "caf\xc3\xa9");
  EXPECT_EQ(PercentDecode("%2F", false).value(), "/");
  EXPECT_EQ(PercentDecode("%25", false).value(), "%");
  EXPECT_EQ(PercentDecode("", false).value(), "");
  EXPECT_EQ(PercentDecode("plain", false).value(), "plain");
}

TEST(PercentDecodeTest, PlusIsSpaceOnlyWhenAsked) {
  EXPECT_EQ(PercentDecode("a+b", true).value(), "a b");
  EXPECT_EQ(PercentDecode("a+b", false).value(), "a+b");
  EXPECT_EQ(PercentDecode("a%2Bb", true).value(), "a+b");
}

TEST(PercentDecodeTest, BadOrTruncatedEscapesAreErrors) {
  for (const char* bad : {"%", "%4", "a%", "a%4", "100%", "%zz", "%4g", "%g4", "a%%20"}) {
    auto r = PercentDecode(bad, true);
    EXPECT_FALSE(r.ok()) << "'" << bad << "' decoded to '" << (r.ok() ? *r : "") << "'";
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

TEST(ParseQueryTest, DecodesPairsInOrder) {
  auto q = ParseQuery("a=1&b=x%20y&c=d+e&flag&&=v&a=2");
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_THAT(*q, ElementsAre(Pair("a", "1"), Pair("b", "x y"), Pair("c", "d e"), Pair("flag", ""),
                              Pair("", "v"), Pair("a", "2")));
}

TEST(ParseQueryTest, ValueMayContainEqualsAndEncodedAmpersand) {
  auto q = ParseQuery("expr=a%3Db&t=x%26y&eq=1=2");
  ASSERT_TRUE(q.ok());
  EXPECT_THAT(*q, ElementsAre(Pair("expr", "a=b"), Pair("t", "x&y"), Pair("eq", "1=2")));
}

TEST(ParseQueryTest, EmptyQueryIsEmpty) {
  auto q = ParseQuery("");
  ASSERT_TRUE(q.ok());
  EXPECT_THAT(*q, IsEmpty());
}

TEST(ParseQueryTest, BadEscapeInKeyOrValueIsAnError) {
  EXPECT_EQ(ParseQuery("a=%zz").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseQuery("a%=1").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseQuery("ok=1&b=%4").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace chorus::net
