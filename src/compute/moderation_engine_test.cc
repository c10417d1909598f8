#include "compute/moderation_engine.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace chorus::compute {
namespace {

using Json = nlohmann::json;

class ModerationEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/chorus-moderation-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string WriteModel(const std::string& content) {
    const std::string path = dir_ + "/words-" + std::to_string(files_++) + ".txt";
    std::ofstream(path, std::ios::binary) << content;
    return path;
  }

  // The engine over a model with the given content and options.
  std::unique_ptr<Engine> Make(const std::string& content,
                               std::map<std::string, std::string, std::less<>> values = {}) {
    EngineOptions options;
    options.model = WriteModel(content);
    options.values = std::move(values);
    auto engine = MakeModerationEngine(options);
    EXPECT_TRUE(engine.ok()) << engine.status().ToString();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  static Json Check(Engine& engine, std::string_view text) {
    auto answer = engine.Handle(text);
    EXPECT_TRUE(answer.ok()) << answer.status().ToString();
    if (!answer.ok()) return Json();
    return Json::parse(*answer);
  }

  static std::vector<std::string> Terms(const Json& answer) {
    std::vector<std::string> out;
    for (const Json& m : answer["matches"]) out.push_back(m["term"].get<std::string>());
    return out;
  }

  std::string dir_;
  int files_ = 0;
};

constexpr const char* kModel =
    "# test list\n"
    "scam\tfraud\n"
    "\n"
    "  # an indented comment\n"
    "free money\tspam\n"
    "fraud link\n";

TEST_F(ModerationEngineTest, FlagsDisguisedTerms) {
  auto engine = Make(kModel);
  ASSERT_NE(engine, nullptr);
  for (const std::string text :
       {"scam", "S C A M", "ScAm", "s.c.a.m", "s-c_a*m!", "this is a SCAM.",
        "\xEF\xBC\xB3\xEF\xBC\xA3\xEF\xBC\xA1\xEF\xBC\xAD",  // ＳＣＡＭ full-width
        "\xEF\xBD\x93\xE3\x80\x80\xEF\xBD\x83\xE3\x80\x80\xEF\xBD\x81\xEF\xBD\x8D",  // ｓ　ｃ　ａｍ
        "sc\xE2\x80\x8B"
        "am",  // zero-width space inside
        "s\xCC\xB2"
        "c\xCC\xB2"
        "a\xCC\xB2"
        "m\xCC\xB2"}) {  // combining underlines
    const Json answer = Check(*engine, text);
    EXPECT_EQ(answer["verdict"], "block") << text;
    EXPECT_EQ(Terms(answer), std::vector<std::string>{"scam"}) << text;
  }
}

TEST_F(ModerationEngineTest, AllowsCleanTextAndWordsThatOnlyContainATerm) {
  auto engine = Make(kModel);
  ASSERT_NE(engine, nullptr);
  for (const std::string text : {"", "hello there", "the scampi was great", "this cam is new", "Muscam",
                                 "scams?", "carefree money", "5c4m"}) {
    const Json answer = Check(*engine, text);
    EXPECT_EQ(answer["verdict"], "allow") << text;
    EXPECT_TRUE(answer["matches"].empty()) << text;
  }
}

TEST_F(ModerationEngineTest, LookAlikesOnlyWithTheOption) {
  auto engine = Make(kModel, {{"lookalikes", "true"}});
  ASSERT_NE(engine, nullptr);
  for (const std::string text : {"5c4m", "$C@M", "s c 4 m", "fr33 m0n3y", "fraud 1ink", "fraud l1nk",
                                 "\xD1\x95\xD1\x81\xD0\xB0m"}) {  // Cyrillic ѕса + Latin m
    EXPECT_EQ(Check(*engine, text)["verdict"], "block") << text;
  }
  EXPECT_EQ(Check(*engine, "2026 was fine")["verdict"], "allow");
}

TEST_F(ModerationEngineTest, MatchesCarryTermCategoryAndOriginalByteOffsets) {
  auto engine = Make(kModel);
  ASSERT_NE(engine, nullptr);
  const std::string text =
      "Beware: S C A M and FREE-money, \xEF\xBC\xB3\xEF\xBC\xA3\xEF\xBC\xA1\xEF\xBC\xAD!";
  const Json answer = Check(*engine, text);
  ASSERT_EQ(answer["verdict"], "block");
  ASSERT_EQ(answer["matches"].size(), 3u) << answer.dump();
  const Json& a = answer["matches"][0];
  EXPECT_EQ(a["term"], "scam");
  EXPECT_EQ(a["category"], "fraud");
  EXPECT_EQ(
      text.substr(a["start"].get<std::size_t>(), a["end"].get<std::size_t>() - a["start"].get<std::size_t>()),
      "S C A M");
  const Json& b = answer["matches"][1];
  EXPECT_EQ(b["term"], "free money");
  EXPECT_EQ(b["category"], "spam");
  EXPECT_EQ(
      text.substr(b["start"].get<std::size_t>(), b["end"].get<std::size_t>() - b["start"].get<std::size_t>()),
      "FREE-money");
  const Json& c = answer["matches"][2];
  EXPECT_EQ(c["start"].get<std::size_t>(), text.size() - 13);  // the 12 bytes of ＳＣＡＭ, then "!"
  EXPECT_EQ(c["end"].get<std::size_t>(), text.size() - 1);
}

TEST_F(ModerationEngineTest, UncategorisedTermsHaveAnEmptyCategory) {
  auto engine = Make(kModel);
  ASSERT_NE(engine, nullptr);
  const Json answer = Check(*engine, "a fraud link here");
  ASSERT_EQ(answer["matches"].size(), 1u);
  EXPECT_EQ(answer["matches"][0]["term"], "fraud link");
  EXPECT_EQ(answer["matches"][0]["category"], "");
}

TEST_F(ModerationEngineTest, OverlappingTermsAreAllReported) {
  auto engine = Make("money\nfree money\nfree\n");
  ASSERT_NE(engine, nullptr);
  const Json answer = Check(*engine, "get free money");
  EXPECT_EQ(Terms(answer), (std::vector<std::string>{"free", "free money", "money"}));
}

TEST_F(ModerationEngineTest, InvalidUtf8IsRejected) {
  auto engine = Make(kModel);
  ASSERT_NE(engine, nullptr);
  for (const std::string& text : {std::string("scam \xFF"), std::string("ab\xC3"),
                                  std::string("\xED\xA0\x80"), std::string("\xC0\xAF")}) {
    auto answer = engine->Handle(text);
    ASSERT_FALSE(answer.ok());
    EXPECT_EQ(answer.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(answer.status().ToString().find("invalid_argument: text is not valid UTF-8 (byte "),
              std::string::npos)
        << answer.status().ToString();
  }
}

TEST_F(ModerationEngineTest, OversizedTextIsRejected) {
  auto engine = Make(kModel, {{"max_bytes", "16"}});
  ASSERT_NE(engine, nullptr);
  EXPECT_TRUE(engine->Handle("sixteen bytes ok").ok());
  auto answer = engine->Handle("seventeen bytes!!");
  ASSERT_FALSE(answer.ok());
  EXPECT_EQ(answer.status().ToString(), "invalid_argument: payload of 17 bytes exceeds the 16-byte limit");
}

TEST_F(ModerationEngineTest, BadModelsFailAtLoad) {
  EngineOptions missing;
  missing.model = dir_ + "/no-such-file.txt";
  auto a = MakeModerationEngine(missing);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kNotFound);
  EXPECT_NE(a.status().message().find("no-such-file.txt"), std::string::npos) << a.status().message();

  for (const std::string content : {"", "# only a comment\n\n   \n"}) {
    EngineOptions empty;
    empty.model = WriteModel(content);
    auto b = MakeModerationEngine(empty);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(b.status().message().find("has no terms"), std::string::npos) << b.status().message();
  }

  EngineOptions bad_utf8;
  bad_utf8.model = WriteModel(
      "scam\nfr\xFF"
      "aud\n");
  auto c = MakeModerationEngine(bad_utf8);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("line 2 is not valid UTF-8"), std::string::npos)
      << c.status().message();

  EngineOptions no_letters;
  no_letters.model = WriteModel("scam\n!!!\tspam\n");
  auto d = MakeModerationEngine(no_letters);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("line 2: term \"!!!\" has no letters"), std::string::npos)
      << d.status().message();

  auto e = MakeModerationEngine(EngineOptions{});
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("needs a model"), std::string::npos) << e.status().message();

  EngineOptions typo;
  typo.model = WriteModel(kModel);
  typo.values = {{"look_alikes", "true"}};
  auto f = MakeModerationEngine(typo);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("unknown moderation option look_alikes"), std::string::npos)
      << f.status().message();
}

TEST_F(ModerationEngineTest, TheShippedWordListLoadsAndFlags) {
  // models/moderation/words.txt, found from this file's path (absolute in CMake builds).
  const auto path = std::filesystem::path(__FILE__).parent_path() / "../../models/moderation/words.txt";
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  EngineOptions options;
  options.model = path.string();
  auto engine = MakeEngine("moderation", options);
  ASSERT_TRUE(engine.ok()) << engine.status().ToString();
  EXPECT_EQ(Check(**engine, "Click here to WIN a prize")["verdict"], "block");
  EXPECT_EQ(Check(**engine, "Nice stream today!")["verdict"], "allow");
}

}  // namespace
}  // namespace chorus::compute
