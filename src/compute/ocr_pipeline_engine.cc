#include "compute/ocr_pipeline_engine.h"

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "base/clock.h"
#include "compute/ocr_engine.h"
#include "compute/router_client.h"

namespace chorus::compute {
namespace {

std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    std::string part = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!part.empty()) out.push_back(std::move(part));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

class OcrPipelineEngine final : public Engine {
 public:
  OcrPipelineEngine(std::unique_ptr<RouterClient> client, std::string detect_app, std::string recognize_app,
                    Duration timeout, size_t max_bytes)
      : client_(std::move(client)),
        detect_app_(std::move(detect_app)),
        recognize_app_(std::move(recognize_app)),
        timeout_(timeout),
        max_bytes_(max_bytes) {}

  ~OcrPipelineEngine() override { client_->Stop(); }

  std::string_view name() const override { return "ocr"; }

  Result<std::string> Handle(std::string_view payload) override {
    CHORUS_RETURN_IF_ERROR(CheckPayloadSize(payload, max_bytes_, "an image"));
    CHORUS_ASSIGN_OR_RETURN(Router::Reply detected,
                            client_->InvokeSync(detect_app_, std::string(payload), timeout_));
    auto lines = nlohmann::json::parse(detected.payload, nullptr, /*allow_exceptions=*/false);
    if (!lines.is_object() || !lines["lines"].is_array()) {
      return Internal("app " + detect_app_ + " answered something that is not an ocr-detect answer");
    }
    nlohmann::json out = {{"width", lines["width"]},
                          {"height", lines["height"]},
                          {"text", ""},
                          {"lines", nlohmann::json::array()}};
    std::vector<OcrBox> boxes;
    for (const auto& l : lines["lines"]) {
      if (!l["x"].is_number_integer() || !l["y"].is_number_integer() || !l["w"].is_number_integer() ||
          !l["h"].is_number_integer()) {
        return Internal("app " + detect_app_ + " answered a line without integer x, y, w, h");
      }
      boxes.push_back(
          {l["x"].get<int64_t>(), l["y"].get<int64_t>(), l["w"].get<int64_t>(), l["h"].get<int64_t>()});
    }
    if (boxes.empty()) return out.dump();  // no text found: nothing to recognise
    CHORUS_ASSIGN_OR_RETURN(
        Router::Reply recognized,
        client_->InvokeSync(recognize_app_, EncodeRecognizeRequest(boxes, payload), timeout_));
    auto read = nlohmann::json::parse(recognized.payload, nullptr, false);
    if (!read.is_object() || !read["lines"].is_array()) {
      return Internal("app " + recognize_app_ + " answered something that is not an ocr-recognize answer");
    }
    std::string text;
    for (const auto& l : read["lines"]) {
      const std::string t = l.value("text", "");
      if (t.empty()) continue;
      text += (text.empty() ? "" : "\n") + t;
    }
    out["text"] = text;
    out["lines"] = read["lines"];
    return out.dump();
  }

 private:
  std::unique_ptr<RouterClient> client_;
  const std::string detect_app_;
  const std::string recognize_app_;
  const Duration timeout_;
  const size_t max_bytes_;
};

}  // namespace

Result<std::unique_ptr<Engine>> MakeOcrPipelineEngine(const EngineOptions& options) {
  OptionReader reader("ocr", options);
  const char* env_resources = std::getenv("CHORUS_COMPUTE_RESOURCES");
  const char* env_token = std::getenv("CHORUS_COMPUTE_INVOKE_TOKEN");
  const std::string resources = reader.String("resources", env_resources ? env_resources : "");
  const std::string detect_app = reader.String("detect_app", "ocr-detect");
  const std::string recognize_app = reader.String("recognize_app", "ocr-recognize");
  CHORUS_ASSIGN_OR_RETURN(int64_t timeout_ms, reader.Int("timeout_ms", 30'000, 1, 3'600'000));
  CHORUS_ASSIGN_OR_RETURN(int64_t max_bytes,
                          reader.Int("max_bytes", kDefaultOcrMaxBytes, 1, int64_t{1} << 30));
  CHORUS_RETURN_IF_ERROR(reader.CheckNoneUnknown());
  RouterClientOptions o;
  o.clusters = {SplitCommas(resources)};
  if (o.clusters[0].empty()) {
    return InvalidArgument(
        "engine ocr: no resource servers (a node sets CHORUS_COMPUTE_RESOURCES; or --option "
        "resources=HOST:PORT)");
  }
  o.token = env_token ? env_token : "";
  o.timeout = std::chrono::milliseconds(timeout_ms);
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<RouterClient> client,
                          RouterClient::Create(std::move(o), SystemClock::Instance()));
  client->Start();
  // The first views make the first requests routable; a cluster that is not up yet is not an
  // error here (the router keeps trying, and requests meanwhile answer unavailable).
  (void)client->WaitForViews(std::chrono::seconds(5));
  return std::unique_ptr<Engine>(new OcrPipelineEngine(std::move(client), detect_app, recognize_app,
                                                       std::chrono::milliseconds(timeout_ms),
                                                       static_cast<size_t>(max_bytes)));
}

}  // namespace chorus::compute
