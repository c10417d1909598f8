#include "base/config.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "base/duration.h"

namespace chorus {
namespace {

ConfigSchema TestSchema() {
  ConfigSchema s;
  s.String("http.listen", "127.0.0.1:8080", "HTTP address")
      .Int("runtime.shards", 0, "Shard threads", 0, 256)
      .Double("likes.hot_ratio", 0.5, "Ratio", 0.0, 1.0)
      .Bool("runtime.pin_threads", true, "Pin")
      .Duration("http.request_timeout", "30s", "Timeout")
      .String("log.format", "text", "Format", {"text", "json"})
      .StringList("likes.businesses_enabled", {"video", "comment"}, "Enabled")
      .Tree("likes.businesses", "[]", "Businesses");
  return s;
}

class TempFile {
 public:
  explicit TempFile(const std::string& body) {
    char name[] = "/tmp/chorus_config_test_XXXXXX";
    int fd = mkstemp(name);
    close(fd);
    path_ = name;
    std::ofstream(path_) << body;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ConfigTest, DefaultsApply) {
  auto c = Config::Load(TestSchema(), {});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->GetString("http.listen"), "127.0.0.1:8080");
  EXPECT_EQ(c->GetInt("runtime.shards"), 0);
  EXPECT_TRUE(c->GetBool("runtime.pin_threads"));
  EXPECT_EQ(c->GetDuration("http.request_timeout"), std::chrono::seconds(30));
  EXPECT_EQ(c->GetStringList("likes.businesses_enabled"), (std::vector<std::string>{"video", "comment"}));
  EXPECT_EQ(c->SourceOf("http.listen"), "default");
}

TEST(ConfigTest, PrecedenceFileThenEnvThenFlag) {
  TempFile f("http:\n  listen: 0.0.0.0:1\n  request_timeout: 5s\nruntime:\n  shards: 3\n");
  ConfigSources src;
  src.file = f.path();
  src.env = {{"CHORUS_RUNTIME_SHARDS", "4"}};
  src.overrides = {{"http.listen", "127.0.0.1:9"}};
  auto c = Config::Load(TestSchema(), src);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->GetString("http.listen"), "127.0.0.1:9");
  EXPECT_EQ(c->SourceOf("http.listen"), "flag");
  EXPECT_EQ(c->GetInt("runtime.shards"), 4);
  EXPECT_EQ(c->SourceOf("runtime.shards"), "env CHORUS_RUNTIME_SHARDS");
  EXPECT_EQ(c->GetDuration("http.request_timeout"), std::chrono::seconds(5));
}

TEST(ConfigTest, UnknownFileKeyIsNamed) {
  TempFile f("http:\n  lisen: 0.0.0.0:1\n");
  auto c = Config::Load(TestSchema(), {.file = f.path()});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find("'http.lisen'"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("did you mean 'http.listen'"), std::string::npos) << c.status().message();
}

TEST(ConfigTest, UnknownTopLevelSectionIsNamed) {
  TempFile f("nosuch:\n  thing: 1\n");
  auto c = Config::Load(TestSchema(), {.file = f.path()});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'nosuch'"), std::string::npos) << c.status().message();
}

TEST(ConfigTest, BadValuesNameTheKey) {
  struct Case {
    std::string key, value, expect;
  } cases[] = {
      {"runtime.shards", "abc", "expected an integer"},
      {"runtime.shards", "1000", "out of range"},
      {"runtime.shards", "-1", "out of range"},
      {"likes.hot_ratio", "x", "expected a number"},
      {"runtime.pin_threads", "maybe", "expected true or false"},
      {"http.request_timeout", "10", "missing unit"},
      {"http.request_timeout", "5parsecs", "unknown unit"},
      {"log.format", "xml", "not one of: text, json"},
      {"likes.businesses", "[{", "invalid YAML/JSON"},
  };
  for (const auto& c : cases) {
    auto r = Config::Load(TestSchema(), {.overrides = {{c.key, c.value}}});
    ASSERT_FALSE(r.ok()) << c.key << "=" << c.value;
    EXPECT_NE(r.status().message().find("'" + c.key + "'"), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().message();
  }
}

TEST(ConfigTest, BadValueInFileNamesKeyAndFile) {
  TempFile f("runtime:\n  shards: many\n");
  auto c = Config::Load(TestSchema(), {.file = f.path()});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'runtime.shards'"), std::string::npos);
  EXPECT_NE(c.status().message().find(f.path()), std::string::npos);
}

TEST(ConfigTest, MapWhereScalarExpectedIsError) {
  TempFile f("http:\n  listen:\n    host: x\n");
  auto c = Config::Load(TestSchema(), {.file = f.path()});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'http.listen'"), std::string::npos);
}

TEST(ConfigTest, UnknownEnvVariableIsNamed) {
  auto c = Config::Load(TestSchema(), {.env = {{"CHORUS_HTTP_LISTN", "x"}}});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("CHORUS_HTTP_LISTN"), std::string::npos);
}

TEST(ConfigTest, UnknownFlagKeyIsNamed) {
  auto c = Config::Load(TestSchema(), {.overrides = {{"runtime.shard", "1"}}});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("'runtime.shard'"), std::string::npos);
}

TEST(ConfigTest, MissingFileIsError) {
  auto c = Config::Load(TestSchema(), {.file = "/nonexistent/chorus.yaml"});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("/nonexistent/chorus.yaml"), std::string::npos);
}

TEST(ConfigTest, ListsFromYamlAndText) {
  TempFile f("likes:\n  businesses_enabled: [a, b, c]\n");
  auto c = Config::Load(TestSchema(), {.file = f.path()});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->GetStringList("likes.businesses_enabled"), (std::vector<std::string>{"a", "b", "c"}));
  auto d = Config::Load(TestSchema(), {.env = {{"CHORUS_LIKES_BUSINESSES_ENABLED", "x, y"}}});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->GetStringList("likes.businesses_enabled"), (std::vector<std::string>{"x", "y"}));
}

TEST(ConfigTest, TreeKeyBecomesJson) {
  TempFile f(
      "likes:\n  businesses:\n    - id: 1\n      name: video\n      dislike: true\n      ratio: 0.5\n"
      "      code: \"007\"\n");
  auto c = Config::Load(TestSchema(), {.file = f.path()});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto j = nlohmann::json::parse(c->GetTreeJson("likes.businesses"));
  ASSERT_TRUE(j.is_array());
  EXPECT_EQ(j[0]["id"], 1);
  EXPECT_EQ(j[0]["name"], "video");
  EXPECT_EQ(j[0]["dislike"], true);
  EXPECT_DOUBLE_EQ(j[0]["ratio"].get<double>(), 0.5);
  EXPECT_EQ(j[0]["code"], "007");  // quoted stays a string
}

TEST(ConfigTest, DumpRoundTrips) {
  auto c = Config::Load(TestSchema(), {.overrides = {{"runtime.shards", "7"}}});
  ASSERT_TRUE(c.ok());
  TempFile f(c->Dump());
  auto d = Config::Load(TestSchema(), {.file = f.path()});
  ASSERT_TRUE(d.ok()) << d.status().ToString() << "\n" << c->Dump();
  EXPECT_EQ(d->GetInt("runtime.shards"), 7);
  EXPECT_EQ(d->GetStringList("likes.businesses_enabled"), c->GetStringList("likes.businesses_enabled"));
}

TEST(ConfigTest, EnvNames) {
  EXPECT_EQ(ConfigSchema::EnvName("live.block_interval"), "CHORUS_LIVE_BLOCK_INTERVAL");
}

TEST(DurationTest, ParseAndFormat) {
  EXPECT_EQ(*ParseDuration("250ms"), std::chrono::milliseconds(250));
  EXPECT_EQ(*ParseDuration("1.5s"), std::chrono::milliseconds(1500));
  EXPECT_EQ(*ParseDuration("1h30m"), std::chrono::minutes(90));
  EXPECT_EQ(*ParseDuration("100us"), std::chrono::microseconds(100));
  EXPECT_EQ(*ParseDuration("0"), Duration::zero());
  EXPECT_FALSE(ParseDuration("").ok());
  EXPECT_FALSE(ParseDuration("5").ok());
  EXPECT_FALSE(ParseDuration("s").ok());
  EXPECT_FALSE(ParseDuration("5x").ok());
  EXPECT_FALSE(ParseDuration("-5s").ok());
  EXPECT_FALSE(ParseDuration("99999999999h").ok());
  EXPECT_EQ(FormatDuration(std::chrono::seconds(90)), "1m30s");
  EXPECT_EQ(FormatDuration(std::chrono::milliseconds(250)), "250ms");
  EXPECT_EQ(FormatDuration(std::chrono::milliseconds(1500)), "1500ms");
  EXPECT_EQ(FormatDuration(std::chrono::hours(2)), "2h");
}

}  // namespace
}  // namespace chorus
