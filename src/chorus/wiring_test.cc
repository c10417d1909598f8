// Unit tests of the product wiring's pure parts and of the dev routes' loopback rule, in process.
// The wiring end to end (chat through the real moderation app, likes as gain messages, PK scores)
// is tests/product_test.cc.
#include "chorus/wiring.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "net/test_client.h"
#include "net/token.h"
#include "support/http_client.h"

namespace chorus::app {
namespace {

TEST(WiringTest, LoopbackHosts) {
  for (const char* host : {"127.0.0.1", "127.1.2.3", "127.255.255.255", "localhost", "::1", "[::1]"}) {
    EXPECT_TRUE(IsLoopbackHost(host)) << host;
  }
  for (const char* host : {"0.0.0.0", "", "10.0.0.1", "128.0.0.1", "127.0.0", "127.0.0.1.5", "127.0.0.1x",
                           "127..0.1", "1270.0.0.1", "127.0.0.1234", "::", "example.com", "localhost.evil"}) {
    EXPECT_FALSE(IsLoopbackHost(host)) << host;
  }
}

TEST(WiringTest, ModerationAnswers) {
  auto allow = ParseModerationAnswer(R"({"verdict":"allow","matches":[]})");
  ASSERT_TRUE(allow.ok()) << allow.status().ToString();
  EXPECT_TRUE(allow->allowed);
  auto block = ParseModerationAnswer(
      R"({"verdict":"block","matches":[{"term":"scam","category":"fraud","start":0,"end":4},)"
      R"({"term":"free money","category":"spam","start":5,"end":15},{"term":"scam","start":20,"end":24}]})");
  ASSERT_TRUE(block.ok()) << block.status().ToString();
  EXPECT_FALSE(block->allowed);
  EXPECT_EQ(block->reason, R"(blocked words "scam", "free money")");
  auto bare = ParseModerationAnswer(R"({"verdict":"block"})");
  ASSERT_TRUE(bare.ok());
  EXPECT_FALSE(bare->allowed);
  // Anything else is an engine failure: the chat is refused as unavailable, never let through.
  for (const char* bad : {"", "[]", "{}", R"({"verdict":1})", R"({"verdict":"maybe"})", "not json"}) {
    EXPECT_FALSE(ParseModerationAnswer(bad).ok()) << bad;
  }
}

struct DevServer {
  explicit DevServer(bool loopback) {
    auto s = net::TokenSigner::Create(std::string(40, 'k'));
    EXPECT_TRUE(s.ok());
    signer = std::make_unique<net::TokenSigner>(std::move(*s));
    EXPECT_TRUE(AddDevRoutes(harness.router(), *signer, nullptr, loopback).ok());
    harness.Start({});
  }
  chorus::testing::HttpReply Post(const std::string& path, const std::string& body) {
    auto client = chorus::testing::HttpClient::Connect(harness.port());
    EXPECT_TRUE(client.ok());
    auto reply = client->Request("POST", path, body, {{"Content-Type", "application/json"}});
    EXPECT_TRUE(reply.ok()) << reply.status().ToString();
    return reply.ok() ? *reply : chorus::testing::HttpReply{};
  }
  net::testclient::ServerHarness harness;
  std::unique_ptr<net::TokenSigner> signer;
};

TEST(WiringTest, DevTokenOnLoopback) {
  DevServer server(/*loopback=*/true);
  auto reply = server.Post("/v1/dev/token", R"({"user":"alice","level":7})");
  ASSERT_EQ(reply.status, 200) << reply.body;
  auto j = nlohmann::json::parse(reply.body);
  EXPECT_EQ(j["user"], "alice");
  auto user = server.signer->Verify(j["token"].get<std::string>(), SystemClock::Instance());
  ASSERT_TRUE(user.ok()) << user.status().ToString();
  EXPECT_EQ(user->kind, net::TokenClaims::Kind::kUser);
  EXPECT_EQ(user->subject, "alice");
  EXPECT_EQ(user->level, 7);
  auto publish = server.signer->Verify(j["publish_token"].get<std::string>(), SystemClock::Instance());
  ASSERT_TRUE(publish.ok());
  EXPECT_TRUE(publish->HasScope("live.publish"));
  EXPECT_FALSE(publish->HasScope("compute.invoke"));
  auto invoke = server.signer->Verify(j["invoke_token"].get<std::string>(), SystemClock::Instance());
  ASSERT_TRUE(invoke.ok());
  EXPECT_TRUE(invoke->HasScope("compute.invoke"));

  // No body: a generated viewer name.
  auto anon = server.Post("/v1/dev/token", "");
  ASSERT_EQ(anon.status, 200) << anon.body;
  EXPECT_EQ(nlohmann::json::parse(anon.body)["user"].get<std::string>().rfind("viewer-", 0), 0u);
  // Bad input: clear 400s.
  EXPECT_EQ(server.Post("/v1/dev/token", R"({"user":"bad user"})").status, 400);
  EXPECT_EQ(server.Post("/v1/dev/token", R"({"level":1000})").status, 400);
  EXPECT_EQ(server.Post("/v1/dev/token", "{").status, 400);
  // PK without a live service in this process.
  EXPECT_EQ(server.Post("/v1/dev/pk", R"({"rooms":["a","b"]})").status, 503);
}

TEST(WiringTest, DevRoutesRefusedOffLoopback) {
  DevServer server(/*loopback=*/false);
  for (const char* path : {"/v1/dev/token", "/v1/dev/pk"}) {
    auto reply = server.Post(path, R"({"user":"alice","rooms":["a","b"]})");
    EXPECT_EQ(reply.status, 403) << path << ": " << reply.body;
    EXPECT_NE(reply.body.find("loopback"), std::string::npos) << reply.body;
    EXPECT_EQ(reply.body.find("token\":"), std::string::npos) << "no token handed out: " << reply.body;
  }
}

}  // namespace
}  // namespace chorus::app
