#include "base/logging.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>
#include <vector>

namespace chorus {
namespace {

namespace fs = std::filesystem;

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> seq{0};
    dir_ = fs::temp_directory_path() /
           ("chorus_logging_test_" + std::to_string(::getpid()) + "_" + std::to_string(seq++));
    fs::create_directories(dir_);
    path_ = (dir_ / "chorus.log").string();
  }
  void TearDown() override {
    ASSERT_TRUE(InitLogging(LogOptions{}).ok());  // back to stderr, releases the file
    fs::remove_all(dir_);
  }

  std::vector<std::string> ReadLines() const {
    std::ifstream in(path_);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
  }

  std::vector<nlohmann::json> ReadJson() const {
    std::vector<nlohmann::json> out;
    for (const std::string& line : ReadLines()) {
      auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      EXPECT_FALSE(j.is_discarded()) << "not JSON: " << line;
      out.push_back(j);
    }
    return out;
  }

  fs::path dir_;
  std::string path_;
};

const std::regex kTimestamp(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)");

TEST_F(LoggingTest, JsonLinesCarryLevelLoggerAndMessage) {
  ASSERT_TRUE(InitLogging({.level = "info", .format = "json", .file = path_}).ok());
  GetLogger("http")->info("listening on {}", "0.0.0.0:8080");
  GetLogger("likes")->warn("slow flush: {} ms", 250);
  GetLogger("likes")->error("boom");
  const auto lines = ReadJson();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["level"], "info");
  EXPECT_EQ(lines[0]["logger"], "http");
  EXPECT_EQ(lines[0]["msg"], "listening on 0.0.0.0:8080");
  EXPECT_EQ(lines[1]["level"], "warn");
  EXPECT_EQ(lines[1]["logger"], "likes");
  EXPECT_EQ(lines[1]["msg"], "slow flush: 250 ms");
  EXPECT_EQ(lines[2]["level"], "error");
  for (const auto& j : lines) {
    ASSERT_TRUE(j["ts"].is_string());
    EXPECT_TRUE(std::regex_match(j["ts"].get<std::string>(), kTimestamp)) << j["ts"];
    EXPECT_EQ(j.size(), 4u) << j.dump();
  }
}

TEST_F(LoggingTest, JsonEscapesEverythingThatWouldBreakALine) {
  ASSERT_TRUE(InitLogging({.level = "trace", .format = "json", .file = path_}).ok());
  const std::vector<std::string> messages = {
      "say \"hi\"",
      "line1\nline2\r\n",
      "back\\slash \\n not a newline",
      "tab\there",
      std::string("controls \x01\x1f\x7f and nul ") + std::string(1, '\0') + " end",
      "utf8 h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80",
      "{\"looks\":\"like json\"}",
  };
  auto log = GetLogger("escape");
  for (const auto& m : messages) log->info("{}", m);
  log->info("bad byte \xff and truncated \xe2\x9c");
  const auto lines = ReadJson();
  ASSERT_EQ(lines.size(), messages.size() + 1);  // no message spilled onto a second line
  for (size_t i = 0; i < messages.size(); ++i) {
    EXPECT_EQ(lines[i]["msg"].get<std::string>(), messages[i]) << i;
  }
  EXPECT_EQ(lines.back()["msg"], "bad byte \xEF\xBF\xBD and truncated \xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_F(LoggingTest, TextFormatIsOneLinePerEvent) {
  ASSERT_TRUE(InitLogging({.level = "debug", .format = "text", .file = path_}).ok());
  GetLogger("http")->info("listening on {}", "0.0.0.0:8080");
  GetLogger("http")->debug("two\nlines\tand a tab");
  GetLogger("compute")->critical("down");
  const auto lines = ReadLines();
  ASSERT_EQ(lines.size(), 3u);
  const std::regex line0(
      R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info \[http\] listening on 0\.0\.0\.0:8080)");
  EXPECT_TRUE(std::regex_match(lines[0], line0)) << lines[0];
  EXPECT_TRUE(lines[1].ends_with(" debug [http] two\\nlines\tand a tab")) << lines[1];
  EXPECT_TRUE(lines[2].ends_with(" critical [compute] down")) << lines[2];
}

TEST_F(LoggingTest, BadLevelAndFormatAreErrorsNamingTheValue) {
  Status s = InitLogging({.level = "verbose"});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'verbose'"), std::string::npos) << s.message();
  s = InitLogging({.format = "xml"});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'xml'"), std::string::npos) << s.message();
  EXPECT_EQ(InitLogging({.level = "warning"}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(InitLogging({.format = "JSONL"}).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(InitLogging({.level = "WARN"}).ok());  // level names are case-insensitive
}

TEST_F(LoggingTest, FailedInitKeepsThePreviousConfiguration) {
  ASSERT_TRUE(InitLogging({.level = "info", .format = "json", .file = path_}).ok());
  EXPECT_FALSE(InitLogging({.level = "debug", .format = "yaml"}).ok());
  // A file whose parent is a regular file cannot be created.
  const std::string impossible = path_ + "/sub/x.log";
  Status s = InitLogging({.file = impossible});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(impossible), std::string::npos) << s.message();
  GetLogger("cfg")->debug("hidden");  // level is still info
  GetLogger("cfg")->info("still json, still the file");
  const auto lines = ReadJson();
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["msg"], "still json, still the file");
}

TEST_F(LoggingTest, LevelFilteringAppliesToExistingAndNewLoggers) {
  auto early = GetLogger("early");  // created before InitLogging, must follow it
  ASSERT_TRUE(InitLogging({.level = "warn", .format = "json", .file = path_}).ok());
  early->info("dropped");
  early->warn("kept 1");
  GetLogger("late")->debug("dropped");
  GetLogger("late")->error("kept 2");
  spdlog::info("dropped");
  spdlog::critical("kept 3");  // the default logger follows the configuration too
  auto lines = ReadJson();
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0]["msg"], "kept 1");
  EXPECT_EQ(lines[0]["logger"], "early");
  EXPECT_EQ(lines[1]["msg"], "kept 2");
  EXPECT_EQ(lines[2]["msg"], "kept 3");
  EXPECT_EQ(lines[2]["logger"], "chorus");
  EXPECT_EQ(lines[2]["level"], "critical");

  ASSERT_TRUE(InitLogging({.level = "off", .format = "json", .file = path_}).ok());
  early->critical("not even this");
  EXPECT_EQ(ReadJson().size(), 3u);

  ASSERT_TRUE(InitLogging({.level = "trace", .format = "json", .file = path_}).ok());
  early->trace("now everything");
  lines = ReadJson();
  ASSERT_EQ(lines.size(), 4u);  // the file is appended to, not truncated
  EXPECT_EQ(lines[3]["level"], "trace");
}

TEST_F(LoggingTest, GetLoggerIsSharedAndThreadSafe) {
  EXPECT_EQ(GetLogger("same"), GetLogger("same"));
  EXPECT_NE(GetLogger("same"), GetLogger("other"));
  ASSERT_TRUE(InitLogging({.level = "info", .format = "json", .file = path_}).ok());
  constexpr int kThreads = 4;
  constexpr int kLines = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      for (int i = 0; i < kLines; ++i) GetLogger("worker" + std::to_string(t))->info("line {} of {}", i, t);
    });
  }
  for (auto& th : threads) th.join();
  const auto lines = ReadJson();
  ASSERT_EQ(lines.size(), size_t{kThreads} * kLines);  // no lost or interleaved lines
  std::vector<int> per_thread(kThreads);
  for (const auto& j : lines) {
    const std::string logger = j["logger"];
    per_thread[std::stoi(logger.substr(6))]++;
  }
  for (int n : per_thread) EXPECT_EQ(n, kLines);
}

}  // namespace
}  // namespace chorus
