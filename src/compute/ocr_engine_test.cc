// The OCR engines on images this test renders itself with ImageMagick's `convert` and the
// DejaVu Sans font (Debian: imagemagick, fonts-dejavu-core), so the expected text is known.
#include "compute/ocr_engine.h"

#include <gtest/gtest.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "compute/worker_protocol.h"

extern char** environ;

namespace chorus::compute {
namespace {

using Json = nlohmann::json;

constexpr const char* kFont = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
constexpr const char* kLine1 = "CHORUS LIVE 2026";
constexpr const char* kLine2 = "Quick brown fox";

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t colon = std::min(dirs.find(':', start), dirs.size());
    const std::string candidate = dirs.substr(start, colon - start) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = colon + 1;
  }
  return "";
}

// Runs a program and waits; true when it exited 0.
bool RunProgram(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return false;
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Upper case, runs of whitespace as one space, no leading or trailing space.
std::string Canonical(const std::string& s) {
  std::string out;
  bool space = false;
  for (const char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return out;
}

uint32_t Crc32(std::string_view bytes) {
  uint32_t crc = 0xFFFFFFFFu;
  for (const char c : bytes) {
    crc ^= static_cast<unsigned char>(c);
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void PutBig32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

// A PNG whose header claims width x height but carries no pixel data: a decompression bomb in
// miniature. Only a check of the header before decoding stops it cheaply.
std::string PngClaiming(uint32_t width, uint32_t height) {
  std::string png = "\x89PNG\r\n\x1a\n";
  auto chunk = [&png](std::string_view type, const std::string& data) {
    PutBig32(png, static_cast<uint32_t>(data.size()));
    const std::string body = std::string(type) + data;
    png += body;
    PutBig32(png, Crc32(body));
  };
  std::string ihdr;
  PutBig32(ihdr, width);
  PutBig32(ihdr, height);
  ihdr += std::string("\x08\x00\x00\x00\x00", 5);  // 8-bit greyscale, deflate, no filter, no interlace
  chunk("IHDR", ihdr);
  chunk("IEND", "");
  return png;
}

class OcrEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string convert = FindOnPath("convert");
    if (convert.empty()) {
      setup_error_ =
          new std::string("ImageMagick's `convert` is not on PATH (Debian: apt-get install imagemagick)");
      return;
    }
    if (access(kFont, R_OK) != 0) {
      setup_error_ =
          new std::string(std::string(kFont) + " is missing (Debian: apt-get install fonts-dejavu-core)");
      return;
    }
    char tmpl[] = "/tmp/chorus-ocr-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      setup_error_ = new std::string("mkdtemp failed");
      return;
    }
    dir_ = new std::string(tmpl);
    images_ = new std::map<std::string, std::string>();
    const std::string base = *dir_ + "/two_lines.png";
    std::vector<std::vector<std::string>> commands = {
        {convert, "-size", "900x220", "xc:white", "-font", kFont, "-pointsize", "48", "-fill", "black",
         "-annotate", "+40+80", kLine1, "-annotate", "+40+170", kLine2, "-depth", "8", "png:" + base},
        {convert, "-size", "700x120", "xc:none", "-font", kFont, "-pointsize", "48", "-fill", "black",
         "-annotate", "+30+80", kLine1, "png32:" + *dir_ + "/transparent.png"},
    };
    for (const char* ext : {"jpg", "tif", "pnm"})
      commands.push_back({convert, base, *dir_ + "/two_lines." + ext});
    commands.push_back({convert, base, "-compress", "none", *dir_ + "/two_lines.bmp"});
    commands.push_back({convert, base, "-compress", "rle", *dir_ + "/rle.bmp"});
    for (const auto& command : commands) {
      if (!RunProgram(command)) {
        setup_error_ =
            new std::string("could not render a test image: `convert` failed writing " + command.back());
        return;
      }
    }
    for (const char* name : {"two_lines.png", "two_lines.jpg", "two_lines.tif", "two_lines.bmp",
                             "two_lines.pnm", "rle.bmp", "transparent.png"}) {
      (*images_)[name] = ReadFile(*dir_ + "/" + name);
    }
  }

  static void TearDownTestSuite() {
    if (dir_ != nullptr) std::filesystem::remove_all(*dir_);
    delete dir_;
    delete images_;
    delete setup_error_;
    dir_ = nullptr;
    images_ = nullptr;
    setup_error_ = nullptr;
  }

  void SetUp() override { ASSERT_EQ(setup_error_, nullptr) << *setup_error_; }

  static const std::string& Image(const std::string& name) { return images_->at(name); }

  static std::unique_ptr<Engine> Make(const std::string& name,
                                      std::map<std::string, std::string, std::less<>> values = {}) {
    EngineOptions options;
    options.values = std::move(values);
    auto engine = MakeEngine(name, options);
    EXPECT_TRUE(engine.ok()) << engine.status().ToString();
    return engine.ok() ? std::move(*engine) : nullptr;
  }

  static Json Answer(Engine& engine, std::string_view payload) {
    auto answer = engine.Handle(payload);
    EXPECT_TRUE(answer.ok()) << answer.status().ToString();
    return answer.ok() ? Json::parse(*answer) : Json();
  }

  // The error response payload a client would see.
  static std::string Error(Engine& engine, std::string_view payload) {
    auto answer = engine.Handle(payload);
    EXPECT_FALSE(answer.ok()) << "unexpectedly answered: " << *answer;
    return answer.ok() ? "" : engine.DescribeError(answer.status());
  }

  static inline std::string* dir_ = nullptr;
  static inline std::map<std::string, std::string>* images_ = nullptr;
  static inline std::string* setup_error_ = nullptr;
};

TEST_F(OcrEngineTest, DetectFindsTheTwoLines) {
  auto detect = Make("ocr-detect");
  ASSERT_NE(detect, nullptr);
  const Json answer = Answer(*detect, Image("two_lines.png"));
  EXPECT_EQ(answer["width"], 900);
  EXPECT_EQ(answer["height"], 220);
  const Json& lines = answer["lines"];
  ASSERT_EQ(lines.size(), 2u) << answer.dump();
  // The baselines are at y=80 and y=170, 48-point text from x=40: each box holds its line.
  const int baselines[] = {80, 170};
  for (std::size_t i = 0; i < 2; ++i) {
    const int x = lines[i]["x"], y = lines[i]["y"], w = lines[i]["w"], h = lines[i]["h"];
    EXPECT_NEAR(x, 40, 8) << lines[i].dump();
    EXPECT_GT(w, 300) << lines[i].dump();
    EXPECT_LE(x + w, 900);
    EXPECT_GT(h, 25) << lines[i].dump();
    EXPECT_LT(h, 80) << lines[i].dump();
    EXPECT_LT(y, baselines[i]) << lines[i].dump();
    EXPECT_GE(y + h, baselines[i] - 2) << lines[i].dump();
    EXPECT_TRUE(lines[i]["confidence"].is_null());
  }
  EXPECT_LT(static_cast<int>(lines[0]["y"]) + static_cast<int>(lines[0]["h"]),
            static_cast<int>(lines[1]["y"]) + 5);
}

TEST_F(OcrEngineTest, DetectWithRecognizeConfidenceScoresEachLine) {
  auto detect = Make("ocr-detect", {{"confidence", "recognize"}});
  ASSERT_NE(detect, nullptr);
  const Json lines = Answer(*detect, Image("two_lines.png"))["lines"];
  ASSERT_EQ(lines.size(), 2u) << lines.dump();
  for (const Json& line : lines) {
    ASSERT_TRUE(line["confidence"].is_number()) << line.dump();
    EXPECT_GT(line["confidence"].get<double>(), 60.0) << line.dump();
    EXPECT_LE(line["confidence"].get<double>(), 100.0) << line.dump();
  }
}

TEST_F(OcrEngineTest, RecognizeReadsTheDetectedBoxes) {
  auto detect = Make("ocr-detect");
  auto recognize = Make("ocr-recognize");
  ASSERT_NE(detect, nullptr);
  ASSERT_NE(recognize, nullptr);
  const Json detected = Answer(*detect, Image("two_lines.png"));
  ASSERT_EQ(detected["lines"].size(), 2u);
  // Detect's lines go back as the boxes unchanged (the extra "confidence" member is ignored),
  // the way a router chains the two.
  const std::string header = Json{{"boxes", detected["lines"]}}.dump();
  std::string payload;
  PutBig32(payload, static_cast<uint32_t>(header.size()));
  payload += header + Image("two_lines.png");
  const Json answer = Answer(*recognize, payload);
  const Json& lines = answer["lines"];
  ASSERT_EQ(lines.size(), 2u) << answer.dump();
  EXPECT_EQ(Canonical(lines[0]["text"]), Canonical(kLine1)) << answer.dump();
  EXPECT_EQ(Canonical(lines[1]["text"]), Canonical(kLine2)) << answer.dump();
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(lines[i]["x"], detected["lines"][i]["x"]);
    EXPECT_EQ(lines[i]["h"], detected["lines"][i]["h"]);
    EXPECT_GT(lines[i]["confidence"].get<int>(), 60) << lines[i].dump();
  }
}

TEST_F(OcrEngineTest, RecognizeWithoutBoxesReadsTheWholeImage) {
  auto recognize = Make("ocr-recognize");
  ASSERT_NE(recognize, nullptr);
  const std::string expected = Canonical(std::string(kLine1) + "\n" + kLine2);
  for (const std::string& payload :
       {Image("two_lines.png"), EncodeRecognizeRequest({}, Image("two_lines.png")),
        std::string(4, '\0') + Image("two_lines.png")}) {
    const Json answer = Answer(*recognize, payload);
    ASSERT_EQ(answer["lines"].size(), 1u) << answer.dump();
    const Json& whole = answer["lines"][0];
    EXPECT_EQ(Canonical(whole["text"]), expected) << answer.dump();
    EXPECT_EQ(whole["x"], 0);
    EXPECT_EQ(whole["w"], 900);
    EXPECT_EQ(whole["h"], 220);
  }
}

TEST_F(OcrEngineTest, EveryImageFormatIsRead) {
  auto recognize = Make("ocr-recognize");
  ASSERT_NE(recognize, nullptr);
  const std::vector<OcrBox> first_line = {{20, 20, 600, 80}};
  for (const char* name :
       {"two_lines.png", "two_lines.jpg", "two_lines.tif", "two_lines.bmp", "two_lines.pnm"}) {
    const Json answer = Answer(*recognize, EncodeRecognizeRequest(first_line, Image(name)));
    ASSERT_EQ(answer["lines"].size(), 1u) << name;
    EXPECT_EQ(Canonical(answer["lines"][0]["text"]), Canonical(kLine1)) << name;
  }
}

// Transparent pixels of this PNG are black: read as they are, black text would sit on black.
TEST_F(OcrEngineTest, TransparentBackgroundIsReadAsWhite) {
  auto recognize = Make("ocr-recognize");
  ASSERT_NE(recognize, nullptr);
  const Json answer = Answer(*recognize, Image("transparent.png"));
  ASSERT_EQ(answer["lines"].size(), 1u);
  EXPECT_EQ(Canonical(answer["lines"][0]["text"]), Canonical(kLine1)) << answer.dump();
}

TEST_F(OcrEngineTest, BadImagesAreClearErrors) {
  auto detect = Make("ocr-detect");
  auto recognize = Make("ocr-recognize");
  ASSERT_NE(detect, nullptr);
  ASSERT_NE(recognize, nullptr);
  const std::string& png = Image("two_lines.png");
  for (Engine* engine : {detect.get(), recognize.get()}) {
    SCOPED_TRACE(std::string(engine->name()));
    EXPECT_EQ(Error(*engine, "")
                  .rfind("invalid_argument: empty payload (expected an image: PNG, JPEG, TIFF, BMP, PNM", 0),
              0u);
    EXPECT_EQ(Error(*engine, "hello, this is text")
                  .rfind("invalid_argument: not an image (expected PNG, JPEG, TIFF, BMP, PNM", 0),
              0u);
    EXPECT_EQ(Error(*engine, "GIF89a....").rfind("invalid_argument: not an image", 0), 0u);
    EXPECT_EQ(Error(*engine, png.substr(0, png.size() / 2)),
              "invalid_argument: cannot decode the PNG image (truncated or corrupt)");
    EXPECT_EQ(Error(*engine, png.substr(0, 12)),
              "invalid_argument: cannot read the PNG image header (truncated or corrupt)");
    EXPECT_EQ(
        Error(*engine, Image("rle.bmp")),
        "invalid_argument: compressed BMP images are not supported (send an uncompressed BMP, or a PNG)");
    EXPECT_EQ(Error(*engine, PngClaiming(10000, 10000)),
              "invalid_argument: image of 10000x10000 = 100000000 pixels exceeds the 40000000-pixel limit");
  }
}

TEST_F(OcrEngineTest, LimitsAreOptions) {
  auto small = Make("ocr-detect", {{"max_pixels", "100000"}, {"max_bytes", "4096"}});
  ASSERT_NE(small, nullptr);
  const std::string& png = Image("two_lines.png");
  ASSERT_GT(png.size(), 4096u);
  EXPECT_EQ(Error(*small, png), "invalid_argument: payload of " + std::to_string(png.size()) +
                                    " bytes exceeds the 4096-byte limit");
  auto few_pixels = Make("ocr-detect", {{"max_pixels", "100000"}});
  ASSERT_NE(few_pixels, nullptr);
  EXPECT_EQ(Error(*few_pixels, png),
            "invalid_argument: image of 900x220 = 198000 pixels exceeds the 100000-pixel limit");
}

TEST_F(OcrEngineTest, MalformedRecognizeRequestsAreClearErrors) {
  auto recognize = Make("ocr-recognize");
  ASSERT_NE(recognize, nullptr);
  const std::string& png = Image("two_lines.png");
  auto with_header = [&png](const std::string& header) {
    std::string payload;
    PutBig32(payload, static_cast<uint32_t>(header.size()));
    return payload + header + png;
  };
  EXPECT_EQ(Error(*recognize, std::string("\0\0", 2)),
            "invalid_argument: recognize payload is shorter than its 4-byte header length");
  EXPECT_EQ(Error(*recognize, std::string("\0\0\1\0{}", 6)),
            "invalid_argument: recognize header length 256 runs past the end of the 6-byte payload");
  EXPECT_EQ(Error(*recognize, std::string("\0\x20\0\0", 4) + png),
            "invalid_argument: recognize header of 2097152 bytes exceeds the 1048576-byte limit");
  EXPECT_EQ(Error(*recognize, with_header("{\"boxes\": [")),
            "invalid_argument: recognize header is not valid JSON");
  EXPECT_EQ(Error(*recognize, with_header("[1,2]")),
            "invalid_argument: recognize header must be a JSON object {\"boxes\":[...]}");
  EXPECT_EQ(Error(*recognize, with_header(R"({"box":[]})")),
            "invalid_argument: recognize header has an unknown member \"box\" (expected \"boxes\")");
  EXPECT_EQ(Error(*recognize, with_header(R"({"boxes":{"x":1}})")),
            "invalid_argument: recognize header: \"boxes\" must be an array");
  EXPECT_EQ(Error(*recognize, with_header(R"({"boxes":[{"x":1,"y":2,"w":3}]})")),
            "invalid_argument: box 0 has no \"h\"");
  EXPECT_EQ(Error(*recognize, with_header(R"({"boxes":[{"x":1,"y":2,"w":"3","h":4}]})")),
            "invalid_argument: box 0: \"w\" must be an integer");
  EXPECT_EQ(Error(*recognize,
                  with_header(R"({"boxes":[{"x":0,"y":0,"w":10,"h":10},{"x":-1,"y":0,"w":10,"h":10}]})")),
            "invalid_argument: box 1 (x=-1 y=0 w=10 h=10) needs x, y >= 0 and w, h >= 1");
  EXPECT_EQ(Error(*recognize, EncodeRecognizeRequest({{800, 10, 200, 50}}, png)),
            "invalid_argument: box 0 (x=800 y=10 w=200 h=50) lies outside the 900x220 image");
  EXPECT_EQ(Error(*recognize, EncodeRecognizeRequest({{0, 0, 10, 10}}, "")),
            "invalid_argument: empty image (expected PNG, JPEG, TIFF, BMP, PNM; or a 4-byte big-endian "
            "length, a JSON "
            "header {\"boxes\":[...]} and the image)");
  EXPECT_EQ(Error(*recognize, EncodeRecognizeRequest({{0, 0, 10, 10}}, "not an image"))
                .rfind("invalid_argument: not an image (expected PNG", 0),
            0u);
}

TEST_F(OcrEngineTest, BadModelsFailAtStartUp) {
  EngineOptions missing_language;
  missing_language.model = "klingon";
  auto a = MakeEngine("ocr-recognize", missing_language);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().code(), StatusCode::kNotFound);
  EXPECT_NE(a.status().message().find("klingon.traineddata is missing"), std::string::npos)
      << a.status().message();

  EngineOptions path_trick;
  path_trick.model = "../../etc/passwd";
  auto b = MakeEngine("ocr-detect", path_trick);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kInvalidArgument);

  EngineOptions elsewhere;
  elsewhere.values = {{"tessdata", *dir_}};
  auto c = MakeEngine("ocr-detect", elsewhere);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find(*dir_ + "/eng.traineddata is missing"), std::string::npos)
      << c.status().message();

  EngineOptions typo;
  typo.values = {{"confidence", "always"}};
  EXPECT_FALSE(MakeEngine("ocr-detect", typo).ok());
  EngineOptions unknown;
  unknown.values = {{"max_pixel", "5"}};
  auto d = MakeEngine("ocr-recognize", unknown);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("unknown ocr-recognize option max_pixel"), std::string::npos)
      << d.status().message();
}

// The engine behind the worker loop with two pool threads: concurrent requests use separate
// Tesseract instances and every answer is right.
TEST_F(OcrEngineTest, ServesConcurrentRequestsThroughTheWorkerLoop) {
  auto recognize = Make("ocr-recognize");
  ASSERT_NE(recognize, nullptr);
  int in[2], out[2];
  ASSERT_EQ(pipe(in), 0);
  ASSERT_EQ(pipe(out), 0);
  int exit_code = -1;
  std::thread worker([&] {
    exit_code = RunEngineWorker(*recognize, {.max_concurrency = 2, .in_fd = in[0], .out_fd = out[1]});
  });
  std::thread writer([&] {
    std::string input;
    for (uint64_t id = 1; id <= 4; ++id) {
      input +=
          EncodeRequest(id, id % 2 == 1 ? EncodeRecognizeRequest({{20, 20, 600, 80}}, Image("two_lines.png"))
                                        : std::string("not an image"));
    }
    std::size_t done = 0;
    while (done < input.size()) {
      const ssize_t n = write(in[1], input.data() + done, input.size() - done);
      if (n <= 0) break;
      done += static_cast<std::size_t>(n);
    }
    close(in[1]);
  });
  std::string output;
  std::thread reader([&] {
    char buf[4096];
    for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) output.append(buf, static_cast<std::size_t>(n));
  });
  writer.join();
  worker.join();
  close(out[1]);  // the reader sees EOF once the worker's answers are drained
  reader.join();
  close(in[0]);
  close(out[0]);
  EXPECT_EQ(exit_code, 0);
  FrameDecoder decoder;
  decoder.Append(output);
  std::map<uint64_t, Response> responses;
  for (;;) {
    auto next = decoder.Next();
    ASSERT_TRUE(next.ok()) << next.status().ToString();
    if (!next->has_value()) break;
    auto response = DecodeResponse(**next);
    ASSERT_TRUE(response.ok()) << response.status().ToString();
    responses[response->id] = *response;
  }
  EXPECT_EQ(decoder.buffered(), 0u);
  ASSERT_EQ(responses.size(), 4u);
  for (uint64_t id : {1, 3}) {
    ASSERT_TRUE(responses[id].ok) << responses[id].payload;
    EXPECT_EQ(Canonical(Json::parse(responses[id].payload)["lines"][0]["text"]), Canonical(kLine1));
  }
  for (uint64_t id : {2, 4}) {
    EXPECT_FALSE(responses[id].ok);
    EXPECT_EQ(responses[id].payload.rfind("invalid_argument: not an image", 0), 0u) << responses[id].payload;
  }
}

}  // namespace
}  // namespace chorus::compute
