#include "compute/ocr_engine.h"

#include <leptonica/allheaders.h>
#include <tesseract/baseapi.h>
#include <tesseract/pageiterator.h>
#include <tesseract/resultiterator.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "base/mutex.h"
#include "compute/worker_protocol.h"

namespace chorus::compute {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::size_t kMaxHeaderBytes = std::size_t{1} << 20;
constexpr std::size_t kMaxBoxes = 4096;
constexpr const char* kExpectedImage = "PNG, JPEG, TIFF, BMP, PNM";

// ---- Images ----

struct PixDeleter {
  void operator()(Pix* pix) const { pixDestroy(&pix); }
};
using PixPtr = std::unique_ptr<Pix, PixDeleter>;

// The format named by the payload's magic bytes, or nullptr. Only these reach Leptonica: it
// reads more formats (GIF, WebP, JP2, PostScript...), and each decoder is attack surface.
const char* SniffImageFormat(std::string_view b) {
  auto starts = [&b](std::string_view magic) { return b.substr(0, magic.size()) == magic; };
  if (starts("\x89PNG\r\n\x1a\n")) return "PNG";
  if (starts("\xff\xd8\xff")) return "JPEG";
  if (starts(std::string_view("II*\0", 4)) || starts(std::string_view("MM\0*", 4))) return "TIFF";
  if (starts("BM")) return "BMP";
  if (b.size() >= 3 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6' &&
      (b[2] == ' ' || b[2] == '\n' || b[2] == '\r' || b[2] == '\t' || b[2] == '#')) {
    return "PNM";
  }
  return nullptr;
}

struct ImageLimits {
  int64_t max_pixels = kDefaultOcrMaxPixels;
};

Status CheckPixels(int64_t w, int64_t h, const ImageLimits& limits) {
  if (w * h > limits.max_pixels) {
    return InvalidArgument("image of " + std::to_string(w) + "x" + std::to_string(h) + " = " +
                           std::to_string(w * h) + " pixels exceeds the " +
                           std::to_string(limits.max_pixels) + "-pixel limit");
  }
  return Status::Ok();
}

// Decodes an image, refusing too many pixels before anything is allocated for them.
Result<PixPtr> DecodeImage(std::string_view bytes, const ImageLimits& limits, std::string_view expected) {
  if (bytes.empty()) return InvalidArgument("empty image (expected " + std::string(expected) + ")");
  const char* format = SniffImageFormat(bytes);
  if (format == nullptr) return InvalidArgument("not an image (expected " + std::string(expected) + ")");
  if (std::string_view(format) == "BMP" && bytes.size() >= 34) {
    // Leptonica reads only uncompressed BMP (the compression field of BITMAPINFOHEADER is 0).
    const uint32_t compression = static_cast<unsigned char>(bytes[30]) |
                                 static_cast<unsigned char>(bytes[31]) << 8 |
                                 static_cast<unsigned char>(bytes[32]) << 16 |
                                 static_cast<uint32_t>(static_cast<unsigned char>(bytes[33])) << 24;
    if (compression != 0) {
      return InvalidArgument("compressed BMP images are not supported (send an uncompressed BMP, or a PNG)");
    }
  }
  const auto* data = reinterpret_cast<const l_uint8*>(bytes.data());
  l_int32 file_format = 0, w = 0, h = 0, bps = 0, spp = 0, iscmap = 0;
  if (pixReadHeaderMem(data, bytes.size(), &file_format, &w, &h, &bps, &spp, &iscmap) != 0 || w <= 0 ||
      h <= 0) {
    return InvalidArgument("cannot read the " + std::string(format) + " image header (truncated or corrupt)");
  }
  CHORUS_RETURN_IF_ERROR(CheckPixels(w, h, limits));
  PixPtr pix(pixReadMem(data, bytes.size()));
  if (pix == nullptr) {
    return InvalidArgument("cannot decode the " + std::string(format) + " image (truncated or corrupt)");
  }
  // The header is the client's word; the decoded image is what costs memory from here on.
  CHORUS_RETURN_IF_ERROR(CheckPixels(pixGetWidth(pix.get()), pixGetHeight(pix.get()), limits));
  if (pixGetColormap(pix.get()) != nullptr) {
    // Palette images (BMP, some PNG and TIFF) become plain grey or RGB, the same pixels Tesseract
    // would see had the image come without a palette.
    PixPtr plain(pixRemoveColormap(pix.get(), REMOVE_CMAP_BASED_ON_SRC));
    if (plain == nullptr) return Internal("cannot expand the image's colour palette");
    pix = std::move(plain);
  }
  return pix;
}

// ---- Tesseract instances ----

struct ApiDeleter {
  void operator()(tesseract::TessBaseAPI* api) const {
    api->End();
    delete api;
  }
};
using ApiPtr = std::unique_ptr<tesseract::TessBaseAPI, ApiDeleter>;

bool IsValidLanguage(std::string_view lang) {
  if (lang.empty() || lang.front() == '+' || lang.back() == '+') return false;
  for (std::size_t i = 0; i < lang.size(); ++i) {
    const char c = lang[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                    c == '-' || (c == '+' && lang[i - 1] != '+');
    if (!ok) return false;
  }
  return true;
}

// Initialised TessBaseAPI instances, one per concurrent caller (TessBaseAPI is not
// thread-safe). Grows on demand, never shrinks; instances are reset (Clear) when returned.
class TesseractPool {
 public:
  class Lease {
   public:
    Lease(TesseractPool& pool, ApiPtr api) : pool_(&pool), api_(std::move(api)) {}
    Lease(Lease&& other) noexcept = default;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (api_ != nullptr) pool_->Return(std::move(api_));
    }
    tesseract::TessBaseAPI& operator*() const { return *api_; }
    tesseract::TessBaseAPI* operator->() const { return api_.get(); }

   private:
    TesseractPool* pool_;
    ApiPtr api_;
  };

  static Result<std::unique_ptr<TesseractPool>> Create(std::string tessdata, std::string language) {
    if (!IsValidLanguage(language)) {
      return InvalidArgument(
          "OCR model \"" + language +
          "\" is not a tessdata language (letters, digits, _ and -, joined by +, e.g. eng or eng+deu)");
    }
    std::size_t start = 0;
    for (;;) {
      const std::size_t plus = language.find('+', start);
      const std::string one =
          language.substr(start, plus == std::string::npos ? std::string::npos : plus - start);
      const std::string path = tessdata + "/" + one + ".traineddata";
      if (access(path.c_str(), R_OK) != 0) {
        return NotFound("OCR model \"" + one + "\": " + path +
                        " is missing or unreadable (install tesseract-ocr-" + one +
                        ", or set the tessdata option or $TESSDATA_PREFIX)");
      }
      if (plus == std::string::npos) break;
      start = plus + 1;
    }
    auto pool = std::unique_ptr<TesseractPool>(new TesseractPool(std::move(tessdata), std::move(language)));
    // One instance now: a model Tesseract cannot load fails at start-up, not on a request.
    CHORUS_ASSIGN_OR_RETURN(ApiPtr first, pool->NewApi());
    pool->Return(std::move(first));
    return pool;
  }

  Result<Lease> Acquire() {
    {
      MutexLock lock(mu_);
      if (!idle_.empty()) {
        ApiPtr api = std::move(idle_.back());
        idle_.pop_back();
        return Lease(*this, std::move(api));
      }
    }
    // Loading a model takes a while; other callers go on meanwhile.
    CHORUS_ASSIGN_OR_RETURN(ApiPtr api, NewApi());
    return Lease(*this, std::move(api));
  }

 private:
  TesseractPool(std::string tessdata, std::string language)
      : tessdata_(std::move(tessdata)), language_(std::move(language)) {}

  Result<ApiPtr> NewApi() const {
    ApiPtr api(new tesseract::TessBaseAPI());
    // Tesseract reports through tprintf; a worker's stderr is not the place for per-image
    // chatter ("Estimating resolution as ..."). Failures come back as return values.
    api->SetVariable("debug_file", "/dev/null");
    if (api->Init(tessdata_.c_str(), language_.c_str(), tesseract::OEM_LSTM_ONLY) != 0) {
      return Internal("Tesseract could not load language \"" + language_ + "\" from " + tessdata_);
    }
    return api;
  }

  void Return(ApiPtr api) {
    api->Clear();  // drop the image and results, keep the model
    MutexLock lock(mu_);
    idle_.push_back(std::move(api));
  }

  const std::string tessdata_;
  const std::string language_;
  Mutex mu_;
  std::vector<ApiPtr> idle_ GUARDED_BY(mu_);
};

// ---- Shared configuration ----

struct OcrConfig {
  std::unique_ptr<TesseractPool> pool;
  ImageLimits limits;
  std::size_t max_bytes = kDefaultOcrMaxBytes;
};

// Reads the options both engines share; the caller reads its own, then checks for unknown ones.
Result<OcrConfig> ReadOcrConfig(OptionReader& reader, const EngineOptions& options) {
  // Leptonica prints every decoding failure to stderr; clients' corrupt images are answered
  // with an error instead.
  setMsgSeverity(L_SEVERITY_NONE);
  OcrConfig config;
  const char* env = std::getenv("TESSDATA_PREFIX");
  std::string tessdata =
      reader.String("tessdata", env != nullptr && *env != '\0' ? env : kDefaultTessdataDir);
  while (tessdata.size() > 1 && tessdata.back() == '/') tessdata.pop_back();
  CHORUS_ASSIGN_OR_RETURN(config.limits.max_pixels,
                          reader.Int("max_pixels", kDefaultOcrMaxPixels, 1, int64_t{1} << 32));
  CHORUS_ASSIGN_OR_RETURN(const int64_t max_bytes, reader.Int("max_bytes", kDefaultOcrMaxBytes, 1,
                                                              static_cast<int64_t>(kMaxRequestPayload)));
  config.max_bytes = static_cast<std::size_t>(max_bytes);
  const std::string language = options.model.empty() ? "eng" : options.model;
  CHORUS_ASSIGN_OR_RETURN(config.pool, TesseractPool::Create(std::move(tessdata), language));
  return config;
}

Json BoxJson(int64_t x, int64_t y, int64_t w, int64_t h) {
  Json j = Json::object();
  j["x"] = x;
  j["y"] = y;
  j["w"] = w;
  j["h"] = h;
  return j;
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

std::string TrimRight(std::string s) {
  while (!s.empty() &&
         (s.back() == '\n' || s.back() == ' ' || s.back() == '\r' || s.back() == '\t' || s.back() == '\f')) {
    s.pop_back();
  }
  return s;
}

// ---- ocr-detect ----

class OcrDetectEngine final : public Engine {
 public:
  OcrDetectEngine(OcrConfig config, bool recognize_confidence)
      : config_(std::move(config)), recognize_confidence_(recognize_confidence) {}

  std::string_view name() const override { return "ocr-detect"; }

  Result<std::string> Handle(std::string_view payload) override {
    const std::string expected = std::string("an image: ") + kExpectedImage;
    CHORUS_RETURN_IF_ERROR(CheckPayloadSize(payload, config_.max_bytes, expected));
    CHORUS_ASSIGN_OR_RETURN(PixPtr pix, DecodeImage(payload, config_.limits, kExpectedImage));
    CHORUS_ASSIGN_OR_RETURN(TesseractPool::Lease api, config_.pool->Acquire());
    api->SetPageSegMode(tesseract::PSM_AUTO);
    api->SetImage(pix.get());

    Json lines = Json::array();
    auto add = [&lines](const tesseract::PageIterator& it, std::optional<float> confidence) {
      int left = 0, top = 0, right = 0, bottom = 0;
      if (!it.BoundingBox(tesseract::RIL_TEXTLINE, &left, &top, &right, &bottom)) return;
      Json line = BoxJson(left, top, right - left, bottom - top);
      line["confidence"] = confidence.has_value() ? Json(*confidence) : Json(nullptr);
      lines.push_back(std::move(line));
    };
    if (recognize_confidence_) {
      if (api->Recognize(nullptr) != 0) return Internal("Tesseract recognition failed");
      std::unique_ptr<tesseract::ResultIterator> it(api->GetIterator());
      if (it != nullptr && !it->Empty(tesseract::RIL_TEXTLINE)) {
        do {
          if (tesseract::PTIsTextType(it->BlockType())) add(*it, it->Confidence(tesseract::RIL_TEXTLINE));
        } while (it->Next(tesseract::RIL_TEXTLINE));
      }
    } else {
      std::unique_ptr<tesseract::PageIterator> it(api->AnalyseLayout());
      if (it != nullptr && !it->Empty(tesseract::RIL_TEXTLINE)) {
        do {
          if (tesseract::PTIsTextType(it->BlockType())) add(*it, std::nullopt);
        } while (it->Next(tesseract::RIL_TEXTLINE));
      }
    }
    Json out = Json::object();
    out["width"] = pixGetWidth(pix.get());
    out["height"] = pixGetHeight(pix.get());
    out["lines"] = std::move(lines);
    return Dump(out);
  }

 private:
  OcrConfig config_;
  const bool recognize_confidence_;
};

// ---- ocr-recognize ----

Result<int64_t> IntMember(const Json& box, std::size_t index, const char* key) {
  const auto it = box.find(key);
  if (it == box.end()) return InvalidArgument("box " + std::to_string(index) + " has no \"" + key + "\"");
  if (!it->is_number_integer()) {
    return InvalidArgument("box " + std::to_string(index) + ": \"" + key + "\" must be an integer");
  }
  if (it->is_number_unsigned()) {
    const auto v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(INT32_MAX)) {
      return InvalidArgument("box " + std::to_string(index) + ": \"" + key + "\" is out of range");
    }
    return static_cast<int64_t>(v);
  }
  return it->get<int64_t>();
}

// The boxes of a recognize header (its geometry checked against the image later).
Result<std::vector<OcrBox>> ParseRecognizeHeader(std::string_view header) {
  const Json j = Json::parse(header.begin(), header.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("recognize header is not valid JSON");
  if (!j.is_object()) return InvalidArgument("recognize header must be a JSON object {\"boxes\":[...]}");
  std::vector<OcrBox> boxes;
  for (const auto& [key, value] : j.items()) {
    if (key != "boxes") {
      return InvalidArgument("recognize header has an unknown member \"" + key + "\" (expected \"boxes\")");
    }
  }
  const auto it = j.find("boxes");
  if (it == j.end() || it->is_null()) return boxes;
  if (!it->is_array()) return InvalidArgument("recognize header: \"boxes\" must be an array");
  if (it->size() > kMaxBoxes) {
    return InvalidArgument("recognize header has " + std::to_string(it->size()) + " boxes (at most " +
                           std::to_string(kMaxBoxes) + ")");
  }
  for (std::size_t i = 0; i < it->size(); ++i) {
    const Json& b = (*it)[i];
    if (!b.is_object()) return InvalidArgument("box " + std::to_string(i) + " must be an object {x,y,w,h}");
    OcrBox box;
    CHORUS_ASSIGN_OR_RETURN(box.x, IntMember(b, i, "x"));
    CHORUS_ASSIGN_OR_RETURN(box.y, IntMember(b, i, "y"));
    CHORUS_ASSIGN_OR_RETURN(box.w, IntMember(b, i, "w"));
    CHORUS_ASSIGN_OR_RETURN(box.h, IntMember(b, i, "h"));
    boxes.push_back(box);
  }
  return boxes;
}

std::string DescribeBox(std::size_t i, const OcrBox& b) {
  return "box " + std::to_string(i) + " (x=" + std::to_string(b.x) + " y=" + std::to_string(b.y) +
         " w=" + std::to_string(b.w) + " h=" + std::to_string(b.h) + ")";
}

class OcrRecognizeEngine final : public Engine {
 public:
  explicit OcrRecognizeEngine(OcrConfig config) : config_(std::move(config)) {}

  std::string_view name() const override { return "ocr-recognize"; }

  Result<std::string> Handle(std::string_view payload) override {
    const std::string expected =
        std::string(kExpectedImage) +
        "; or a 4-byte big-endian length, a JSON header {\"boxes\":[...]} and the image";
    CHORUS_RETURN_IF_ERROR(CheckPayloadSize(payload, config_.max_bytes, "an image: " + expected));
    std::string_view image = payload;
    std::vector<OcrBox> boxes;
    if (payload[0] == '\0') {
      if (payload.size() < 4)
        return InvalidArgument("recognize payload is shorter than its 4-byte header length");
      const uint64_t len = (uint64_t{static_cast<unsigned char>(payload[0])} << 24) |
                           (uint64_t{static_cast<unsigned char>(payload[1])} << 16) |
                           (uint64_t{static_cast<unsigned char>(payload[2])} << 8) |
                           uint64_t{static_cast<unsigned char>(payload[3])};
      if (len > kMaxHeaderBytes) {
        return InvalidArgument("recognize header of " + std::to_string(len) + " bytes exceeds the " +
                               std::to_string(kMaxHeaderBytes) + "-byte limit");
      }
      if (len > payload.size() - 4) {
        return InvalidArgument("recognize header length " + std::to_string(len) +
                               " runs past the end of the " + std::to_string(payload.size()) +
                               "-byte payload");
      }
      if (len > 0) {
        CHORUS_ASSIGN_OR_RETURN(boxes, ParseRecognizeHeader(payload.substr(4, len)));
      }
      image = payload.substr(4 + len);
    }
    for (std::size_t i = 0; i < boxes.size(); ++i) {
      if (boxes[i].w < 1 || boxes[i].h < 1 || boxes[i].x < 0 || boxes[i].y < 0) {
        return InvalidArgument(DescribeBox(i, boxes[i]) + " needs x, y >= 0 and w, h >= 1");
      }
    }
    CHORUS_ASSIGN_OR_RETURN(PixPtr pix, DecodeImage(image, config_.limits, expected));
    const int64_t width = pixGetWidth(pix.get());
    const int64_t height = pixGetHeight(pix.get());
    for (std::size_t i = 0; i < boxes.size(); ++i) {
      const OcrBox& b = boxes[i];
      if (b.x + b.w > width || b.y + b.h > height) {
        return InvalidArgument(DescribeBox(i, b) + " lies outside the " + std::to_string(width) + "x" +
                               std::to_string(height) + " image");
      }
    }

    CHORUS_ASSIGN_OR_RETURN(TesseractPool::Lease api, config_.pool->Acquire());
    Json lines = Json::array();
    auto read = [&](const OcrBox& b) -> Status {
      const std::unique_ptr<char[]> text(api->GetUTF8Text());  // recognises the current region
      if (text == nullptr) return Internal("Tesseract recognition failed");
      Json line = BoxJson(b.x, b.y, b.w, b.h);
      line["text"] = TrimRight(text.get());
      line["confidence"] = api->MeanTextConf();
      lines.push_back(std::move(line));
      return Status::Ok();
    };
    if (boxes.empty()) {
      api->SetPageSegMode(tesseract::PSM_AUTO);
      api->SetImage(pix.get());
      CHORUS_RETURN_IF_ERROR(read(OcrBox{0, 0, width, height}));
    } else {
      // A box is one line or one block of text, never a page needing layout analysis.
      api->SetPageSegMode(tesseract::PSM_SINGLE_BLOCK);
      api->SetImage(pix.get());
      for (const OcrBox& b : boxes) {
        api->SetRectangle(static_cast<int>(b.x), static_cast<int>(b.y), static_cast<int>(b.w),
                          static_cast<int>(b.h));
        CHORUS_RETURN_IF_ERROR(read(b));
      }
    }
    Json out = Json::object();
    out["width"] = width;
    out["height"] = height;
    out["lines"] = std::move(lines);
    return Dump(out);
  }

 private:
  OcrConfig config_;
};

}  // namespace

Result<std::unique_ptr<Engine>> MakeOcrDetectEngine(const EngineOptions& options) {
  OptionReader reader("ocr-detect", options);
  const std::string confidence = reader.String("confidence", "none");
  if (confidence != "none" && confidence != "recognize") {
    return InvalidArgument("ocr-detect option confidence=\"" + confidence + "\": want none or recognize");
  }
  CHORUS_ASSIGN_OR_RETURN(OcrConfig config, ReadOcrConfig(reader, options));
  CHORUS_RETURN_IF_ERROR(reader.CheckNoneUnknown());
  return std::unique_ptr<Engine>(new OcrDetectEngine(std::move(config), confidence == "recognize"));
}

Result<std::unique_ptr<Engine>> MakeOcrRecognizeEngine(const EngineOptions& options) {
  OptionReader reader("ocr-recognize", options);
  CHORUS_ASSIGN_OR_RETURN(OcrConfig config, ReadOcrConfig(reader, options));
  CHORUS_RETURN_IF_ERROR(reader.CheckNoneUnknown());
  return std::unique_ptr<Engine>(new OcrRecognizeEngine(std::move(config)));
}

std::string EncodeRecognizeRequest(const std::vector<OcrBox>& boxes, std::string_view image) {
  Json header = Json::object();
  header["boxes"] = Json::array();
  for (const OcrBox& b : boxes) header["boxes"].push_back(BoxJson(b.x, b.y, b.w, b.h));
  const std::string h = Dump(header);
  std::string out;
  out.reserve(4 + h.size() + image.size());
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((h.size() >> shift) & 0xff));
  out += h;
  out.append(image);
  return out;
}

}  // namespace chorus::compute
