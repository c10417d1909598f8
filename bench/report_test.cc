#include "report.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace chorus::bench {
namespace {

Report SampleReport() {
  Report r;
  r.name = "http-json";
  r.params = {{"connections", "64"}};
  r.subject.system = "chorus";
  r.subject.throughput = 123456;
  r.subject.counts = {{"requests", 1234560}, {"non_2xx", 0}, {"socket_errors", 0}};
  LatencyHistogram h;
  for (int i = 0; i < 998; ++i) h.Record(210'000);
  h.Record(3'400'000);
  h.Record(3'400'000);
  r.subject.latency = h;
  Measurement nginx;
  nginx.system = "nginx";
  nginx.throughput = 100000;
  r.peers.push_back(nginx);
  return r;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "report_test.XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

TEST(ReportTest, SummaryNamesBothSystemsRatioAndPercentiles) {
  const std::string s = SampleReport().Summary();
  // 210 us reads as 0.211ms: percentiles report the top of their bucket (< 0.8% above).
  EXPECT_EQ(s,
            "http-json: chorus 123456 req/s, nginx 100000 req/s, ratio 1.23x; "
            "p50 0.211ms p99 0.211ms p999 3.40ms");
  EXPECT_EQ(s.find("ERRORS"), std::string::npos) << s;
}

TEST(ReportTest, SummaryShoutsAboutErrors) {
  Report r = SampleReport();
  r.subject.counts["non_2xx"] = 3;
  r.peers[0].counts["socket_errors"] = 2;
  r.peers[0].counts["reconnects"] = 100;  // not an error
  EXPECT_NE(r.Summary().find("; ERRORS 5"), std::string::npos) << r.Summary();
}

TEST(ReportTest, FiguresGoToJsonAndChosenOnesToTheSummary) {
  Report r = SampleReport();
  r.subject.figures = {{"server_cpu_s_per_million_deliveries", 0.41234567}, {"client_cpu_s", 3}};
  r.summary_figures = {"server_cpu_s_per_million_deliveries", "not_there"};
  EXPECT_NE(r.Summary().find("p999 3.40ms; server_cpu_s_per_million_deliveries 0.4123"), std::string::npos)
      << r.Summary();
  EXPECT_EQ(r.Summary().find("client_cpu_s"), std::string::npos) << r.Summary();
  const nlohmann::json j = r.ToJson(WallTime{});
  EXPECT_DOUBLE_EQ(j["subject"]["figures"]["server_cpu_s_per_million_deliveries"].get<double>(), 0.4123);
  EXPECT_FALSE(j["peers"][0].contains("figures"));  // absent when there are none
}

TEST(ReportTest, RatiosSkipPeersWithoutThroughput) {
  Report r = SampleReport();
  Measurement dead;
  dead.system = "redis";
  r.peers.push_back(dead);
  const auto ratios = r.Ratios();
  ASSERT_EQ(ratios.size(), 1u);
  EXPECT_DOUBLE_EQ(ratios.at("chorus/nginx"), 1.23456);
}

TEST(ReportTest, WritesTimestampedJsonIntoResultsDir) {
  TempDir dir;
  SimulatedClock clock;  // wall clock starts at 1'700'000'000 s = 2023-11-14T22:13:20Z
  auto path = WriteReport(SampleReport(), "", (dir.path() / "results").string(), clock);
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_EQ(*path, (dir.path() / "results" / "http-json-20231114T221320Z.json").string());

  std::ifstream in(*path);
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j["name"], "http-json");
  EXPECT_EQ(j["timestamp"], "2023-11-14T22:13:20Z");
  EXPECT_EQ(j["params"]["connections"], "64");
  EXPECT_EQ(j["subject"]["system"], "chorus");
  EXPECT_EQ(j["subject"]["throughput"], 123456.0);
  EXPECT_EQ(j["subject"]["unit"], "req/s");
  EXPECT_EQ(j["subject"]["counts"]["requests"], 1234560);
  EXPECT_EQ(j["subject"]["latency"]["count"], 1000);
  EXPECT_EQ(j["subject"]["latency"]["p999_ns"], 3'400'000);
  ASSERT_EQ(j["peers"].size(), 1u);
  EXPECT_EQ(j["peers"][0]["system"], "nginx");
  EXPECT_FALSE(j["peers"][0].contains("latency"));
  EXPECT_DOUBLE_EQ(j["ratios"]["chorus/nginx"].get<double>(), 1.235);
}

TEST(ReportTest, ExplicitOutPathWins) {
  TempDir dir;
  SimulatedClock clock;
  const std::string out = (dir.path() / "nested" / "mine.json").string();
  auto path = WriteReport(SampleReport(), out, "/nonexistent-results-dir", clock);
  ASSERT_TRUE(path.ok()) << path.status().ToString();
  EXPECT_EQ(*path, out);
  EXPECT_TRUE(std::filesystem::exists(out));
}

TEST(ReportTest, UnwritablePathIsAnErrorNotACrash) {
  TempDir dir;
  std::ofstream(dir.path() / "file") << "x";
  SimulatedClock clock;
  auto path = WriteReport(SampleReport(), (dir.path() / "file" / "sub.json").string(), "", clock);
  EXPECT_FALSE(path.ok());
}

TEST(ReportTest, ParsesDurations) {
  using std::chrono::nanoseconds;
  EXPECT_EQ(*ParseDuration("10s"), nanoseconds(10'000'000'000));
  EXPECT_EQ(*ParseDuration("10"), nanoseconds(10'000'000'000));
  EXPECT_EQ(*ParseDuration("500ms"), nanoseconds(500'000'000));
  EXPECT_EQ(*ParseDuration("1.5s"), nanoseconds(1'500'000'000));
  EXPECT_EQ(*ParseDuration("250us"), nanoseconds(250'000));
  EXPECT_EQ(*ParseDuration("2m"), nanoseconds(120'000'000'000));
  EXPECT_FALSE(ParseDuration("").ok());
  EXPECT_FALSE(ParseDuration("s").ok());
  EXPECT_FALSE(ParseDuration("10x").ok());
  EXPECT_FALSE(ParseDuration("-1s").ok());
  EXPECT_FALSE(ParseDuration("1..2s").ok());
}

TEST(ReportTest, FormatsMillisWithThreeSignificantDigits) {
  EXPECT_EQ(FormatMillis(210'000), "0.210ms");
  EXPECT_EQ(FormatMillis(1'100'000), "1.10ms");
  EXPECT_EQ(FormatMillis(12'345'000), "12.3ms");
  EXPECT_EQ(FormatMillis(456'000'000), "456ms");
}

}  // namespace
}  // namespace chorus::bench
