// The compute data plane end to end (docs/compute.md, "Data plane"): `chorus up` with its built-in
// apps (the OCR pipeline and moderation) on its own node, requests through the gateway
// (POST /v1/apps/{app}/invoke). An image this test renders itself comes back as its text; a listed
// word in disguise is flagged; bad input gets clear errors; killing a worker under load costs the
// client nothing.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "support/eventually.h"
#include "support/http_client.h"
#include "support/subprocess.h"

namespace chorus::testing {
namespace {

using namespace std::chrono_literals;

constexpr const char* kFont = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

std::pair<int, std::string> RunProgram(std::vector<std::string> argv) {
  auto p = Subprocess::Start(std::move(argv), {});
  if (!p.ok()) return {-100, p.status().ToString()};
  auto code = (*p)->Wait(60s);
  return {code.ok() ? *code : -101, (*p)->output()};
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Lower case, whitespace runs as one space: Tesseract may differ in spacing, not in letters.
std::string Normalize(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (!out.empty() && out.back() != ' ') out.push_back(' ');
    } else {
      out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

// The pids of `chorus compute worker --engine ENGINE` processes whose parent is `parent`.
std::vector<pid_t> WorkerPids(pid_t parent, const std::string& engine) {
  std::vector<pid_t> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    std::string cmdline = ReadFile(entry.path() / "cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    if (cmdline.find("compute worker --engine " + engine + " ") == std::string::npos) continue;
    std::string stat = ReadFile(entry.path() / "stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == parent) out.push_back(static_cast<pid_t>(std::stoi(name)));
  }
  return out;
}

class ComputeDataPlaneTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto dir = TempDir::Create("compute_data_plane_test");
    ASSERT_TRUE(dir.ok()) << dir.status().ToString();
    dir_ = new TempDir(std::move(*dir));
    const std::string data = dir_->path() + "/data";

    auto convert = FindExecutable("convert");
    ASSERT_TRUE(convert.ok())
        << "ImageMagick's convert is needed to render the test image (Debian: imagemagick)";
    ASSERT_TRUE(std::filesystem::exists(kFont)) << kFont << " is missing (Debian: fonts-dejavu-core)";
    image_path_ = new std::string(dir_->path() + "/two_lines.png");
    auto [rc, rout] =
        RunProgram({*convert, "-size", "900x220", "xc:white", "-font", kFont, "-pointsize", "48", "-fill",
                    "black", "-annotate", "+40+80", "CHORUS LIVE 2026", "-annotate", "+40+170",
                    "Quick brown fox", "-depth", "8", "png:" + *image_path_});
    ASSERT_EQ(rc, 0) << rout;

    auto [tc, tout] = RunProgram({CHORUS_BIN, "token", "--data-dir", data, "--service", "tester", "--scope",
                                  "compute.invoke,compute.admin"});
    ASSERT_EQ(tc, 0) << tout;
    token_ = new std::string(tout.substr(0, tout.find_last_not_of("\r\n") + 1));

    auto p = Subprocess::Start({CHORUS_BIN, "up", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
                                "--data-dir", data, "--set", "runtime.pin_threads=false", "--set",
                                "runtime.shards=1", "--set", "compute.gateway.weight_interval=500ms"},
                               {});
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    chorus_ = p->release();
    auto http_line = chorus_->WaitForLine("http listening on", 30s);
    ASSERT_TRUE(http_line.ok()) << http_line.status().ToString();
    ASSERT_TRUE(chorus_->WaitForLine("[chorus] ready", 30s).ok());
    std::smatch m;
    ASSERT_TRUE(std::regex_search(*http_line, m, std::regex(R"(127\.0\.0\.1:(\d+))")));
    http_port_ = std::stoi(m[1]);

    // Every built-in app routable: placed, its workers up and RUNNING, seen by the gateway.
    for (const char* app : {"ocr-detect", "ocr-recognize", "ocr", "moderation"}) {
      const bool routable = Eventually(
          [&] {
            auto reply = Call("GET", std::string("/v1/apps/") + app + "/routes", "");
            return reply.ok() && reply->status == 200 && reply->body != "[]";
          },
          120s);
      ASSERT_TRUE(routable) << app << " never became routable; chorus output:\n" << chorus_->output();
    }
  }

  static void TearDownTestSuite() {
    delete chorus_;  // SIGTERM, then reap
    chorus_ = nullptr;
    delete dir_;
    delete image_path_;
    delete token_;
  }

  static Result<HttpReply> Call(const std::string& method, const std::string& target, const std::string& body,
                                const std::string& token = "") {
    CHORUS_ASSIGN_OR_RETURN(HttpClient client, HttpClient::Connect(http_port_));
    std::vector<std::pair<std::string, std::string>> headers = {
        {"Authorization", "Bearer " + (token.empty() ? *token_ : token)}};
    return client.Request(method, target, body, headers);
  }

  static Result<HttpReply> Invoke(const std::string& app, const std::string& body) {
    CHORUS_ASSIGN_OR_RETURN(HttpClient client, HttpClient::Connect(http_port_, 60s));
    CHORUS_RETURN_IF_ERROR(
        client.SendRaw("POST /v1/apps/" + app + "/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                       *token_ + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body));
    return client.ReadReply(60s);
  }

  static inline TempDir* dir_ = nullptr;
  static inline Subprocess* chorus_ = nullptr;
  static inline std::string* image_path_ = nullptr;
  static inline std::string* token_ = nullptr;
  static inline int http_port_ = 0;
};

TEST_F(ComputeDataPlaneTest, OcrPipelineReadsTheRenderedImage) {
  auto reply = Invoke("ocr", ReadFile(*image_path_));
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  ASSERT_EQ(reply->status, 200) << reply->body;
  auto answer = nlohmann::json::parse(reply->body);
  EXPECT_EQ(answer["width"], 900);
  EXPECT_EQ(answer["height"], 220);
  EXPECT_EQ(Normalize(answer["text"].get<std::string>()), "chorus live 2026 quick brown fox") << reply->body;
  ASSERT_EQ(answer["lines"].size(), 2u) << reply->body;
  EXPECT_LT(answer["lines"][0]["y"].get<int>(), answer["lines"][1]["y"].get<int>()) << "reading order";
  EXPECT_FALSE(reply->Header("x-chorus-node").empty());
}

TEST_F(ComputeDataPlaneTest, ModerationFlagsAListedWordInDisguise) {
  // Full-width letters, spacing and mixed case around the listed term "scam".
  auto reply = Invoke("moderation", "great offer: \xEF\xBC\xB3 c A \xEF\xBD\x8D, pay now");
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  ASSERT_EQ(reply->status, 200) << reply->body;
  auto answer = nlohmann::json::parse(reply->body);
  EXPECT_EQ(answer["verdict"], "block") << reply->body;
  ASSERT_FALSE(answer["matches"].empty());
  EXPECT_EQ(answer["matches"][0]["term"], "scam");

  reply = Invoke("moderation", "a perfectly ordinary comment about the stream");
  ASSERT_TRUE(reply.ok());
  ASSERT_EQ(reply->status, 200) << reply->body;
  EXPECT_EQ(nlohmann::json::parse(reply->body)["verdict"], "allow");
}

TEST_F(ComputeDataPlaneTest, BadInputGetsAClearError) {
  auto not_image = Invoke("ocr", "this is plain text, not a picture");
  ASSERT_TRUE(not_image.ok());
  EXPECT_EQ(not_image->status, 400) << not_image->body;
  EXPECT_NE(not_image->body.find("not an image"), std::string::npos) << not_image->body;

  auto empty = Invoke("ocr", "");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->status, 400) << empty->body;
  EXPECT_NE(empty->body.find("empty body"), std::string::npos) << empty->body;

  {
    // Over http.max_body_bytes (1 MiB): refused on the Content-Length alone. (Only the head is sent:
    // a server that answers early and closes on unread bytes may reset the connection, and the
    // answer with it.)
    auto client = HttpClient::Connect(http_port_);
    ASSERT_TRUE(client.ok());
    ASSERT_TRUE(client
                    ->SendRaw("POST /v1/apps/ocr/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                              *token_ + "\r\nContent-Length: " + std::to_string(2 << 20) + "\r\n\r\n")
                    .ok());
    auto oversized = client->ReadReply(10s);
    ASSERT_TRUE(oversized.ok()) << oversized.status().ToString();
    EXPECT_EQ(oversized->status, 413) << oversized->body;
  }

  auto unknown = Invoke("no-such-app", "x");
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ(unknown->status, 404) << unknown->body;
  EXPECT_NE(unknown->body.find("unknown app"), std::string::npos) << unknown->body;

  auto bad_utf8 = Invoke("moderation", "\xff\xfe broken");
  ASSERT_TRUE(bad_utf8.ok());
  EXPECT_EQ(bad_utf8->status, 400) << bad_utf8->body;

  auto no_token = Call("POST", "/v1/apps/ocr/invoke", "x", "not-a-token");
  ASSERT_TRUE(no_token.ok());
  EXPECT_EQ(no_token->status, 401) << no_token->body;

  // The service keeps serving after all of that.
  auto fine = Invoke("moderation", "hello");
  ASSERT_TRUE(fine.ok());
  EXPECT_EQ(fine->status, 200) << fine->body;
}

TEST_F(ComputeDataPlaneTest, KillingAWorkerMidLoadCostsNoFailedRequest) {
  const std::string image = ReadFile(*image_path_);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0};
  std::string first_failure;
  std::mutex failure_mu;
  std::vector<std::thread> clients;
  for (int t = 0; t < 3; ++t) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        auto reply = Invoke("ocr", image);
        if (reply.ok() && reply->status == 200) {
          ok.fetch_add(1);
        } else {
          failed.fetch_add(1);
          std::lock_guard<std::mutex> lock(failure_mu);
          if (first_failure.empty()) {
            first_failure =
                reply.ok() ? std::to_string(reply->status) + " " + reply->body : reply.status().ToString();
          }
        }
      }
    });
  }
  ASSERT_TRUE(Eventually([&] { return ok.load() >= 3; }, 60s));
  // kill -9 one recognize worker (the node restarts it), then one detect worker, under load.
  for (const char* engine : {"ocr-recognize", "ocr-detect"}) {
    const std::vector<pid_t> pids = WorkerPids(chorus_->pid(), engine);
    ASSERT_FALSE(pids.empty()) << "no " << engine << " worker found";
    const int before = ok.load();
    ASSERT_EQ(::kill(pids.front(), SIGKILL), 0);
    ASSERT_TRUE(Eventually([&] { return ok.load() >= before + 6; }, 60s));
  }
  stop.store(true);
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed.load(), 0) << "first failure: " << first_failure;
  EXPECT_GE(ok.load(), 15);
}

}  // namespace
}  // namespace chorus::testing
