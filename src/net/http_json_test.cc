#include "net/http_json.h"

#include <gtest/gtest.h>

namespace chorus::net {
namespace {

HttpRequest WithBody(std::string body, std::string content_type = "application/json") {
  HttpRequest r;
  r.method = "POST";
  r.body = std::move(body);
  if (!content_type.empty()) r.headers.emplace_back("content-type", std::move(content_type));
  return r;
}

TEST(HttpJsonTest, ParsesObject) {
  auto j = ParseJsonBody(WithBody(R"({"room":"lobby","n":3})", "application/json; charset=utf-8"));
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["room"], "lobby");
  EXPECT_EQ((*j)["n"], 3);
  EXPECT_TRUE(ParseJsonBody(WithBody("{}", "")).ok());  // no Content-Type: accepted
}

TEST(HttpJsonTest, RejectsBadBodiesWithClearErrors) {
  struct Case {
    HttpRequest req;
    std::string expect;
  } cases[] = {
      {WithBody("{}", "text/plain"), "Content-Type"},
      {WithBody(""), "empty"},
      {WithBody("{\"a\":"), "not valid JSON (at byte"},
      {WithBody("[1,2]"), "must be a JSON object"},
      {WithBody("\"str\""), "must be a JSON object"},
  };
  for (const auto& c : cases) {
    auto j = ParseJsonBody(c.req);
    ASSERT_FALSE(j.ok()) << c.req.body;
    EXPECT_EQ(j.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(HttpResponse::FromStatus(j.status()).status, 400);
    EXPECT_NE(j.status().message().find(c.expect), std::string::npos) << j.status().message();
  }
}

TEST(HttpJsonTest, ResponseSerializesAndSurvivesInvalidUtf8) {
  auto r = JsonResponse(201, nlohmann::json{{"id", 7}, {"bad", std::string("\xff")}});
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.content_type, "application/json");
  auto back = nlohmann::json::parse(r.body);
  EXPECT_EQ(back["id"], 7);
}

// The hand-written bodies (AppendJsonString) must read back as the strings they were given.
TEST(HttpJsonTest, AppendJsonStringRoundTripsThroughAParser) {
  const std::string cases[] = {"", "plain", "quote\" back\\slash", "line\nfeed\r\ttab", std::string("nul\0x", 5),
                               "\x01\x1f ctl", "utf-8 \xc3\xa9"};
  for (const std::string& s : cases) {
    std::string body = "{\"k\":";
    AppendJsonString(body, s);
    body += '}';
    auto parsed = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    ASSERT_FALSE(parsed.is_discarded()) << body;
    EXPECT_EQ(parsed["k"].get<std::string>(), s) << body;
    EXPECT_EQ(body, "{\"k\":\"" + JsonEscape(s) + "\"}");
  }
}

}  // namespace
}  // namespace chorus::net
