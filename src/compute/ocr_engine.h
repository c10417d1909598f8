// The OCR engines, on Tesseract (layout analysis and LSTM recognition) and Leptonica (image
// decoding). Together they are the two halves of the `ocr` pipeline: detect finds text lines,
// recognize reads the boxes it is given; a router can run them on different replicas.
//
// ocr-detect
//   payload: image bytes, PNG, JPEG, TIFF (first page), BMP or PNM, recognised by their magic
//            bytes; anything else is "invalid_argument: not an image (...)".
//   answer:  {"width":W,"height":H,"lines":[{"x":X,"y":Y,"w":W,"h":H,"confidence":C},...]}
//            one entry per text line (Tesseract RIL_TEXTLINE) in reading order, pixel
//            coordinates, origin top-left. Layout analysis alone gives no score, so C is null —
//            unless the engine option confidence=recognize is set, in which case each line is
//            also recognised and C is Tesseract's mean confidence of the line, 0-100.
//
// ocr-recognize
//   payload: either bare image bytes (recognise the whole image as one region), or
//              4-byte big-endian header length L | L bytes of JSON header | image bytes
//            with the header {"boxes":[{"x":X,"y":Y,"w":W,"h":H},...]} (other members of a box,
//            such as a confidence, are ignored: the `lines` of an ocr-detect answer can be
//            passed on as `boxes` unchanged). No boxes, or L = 0, means the whole image.
//            Every box must lie inside the image, with w, h >= 1; at most 4096 boxes; L at most
//            1 MiB.
//   answer:  {"width":W,"height":H,"lines":[{"x","y","w","h","text":"...","confidence":C},...]}
//            one entry per box, in the order given; text is UTF-8 without trailing whitespace
//            (lines inside one box are joined by "\n"), C Tesseract's mean confidence 0-100.
//   Why this format: the image stays raw bytes (no base64: a third more bytes on every hop and a
//   decode pass on multi-megabyte images), the boxes stay readable JSON a router can copy from
//   ocr-detect's answer, and the length prefix is how the worker protocol frames everything
//   else. The two forms cannot be confused: a JSON header shorter than 16 MiB starts with a zero
//   byte, and no supported image format does.
//
// Engine model (--model): the tessdata language(s), "eng" when empty, e.g. "eng" or "eng+deu".
// Engine options (--option k=v):
//   tessdata    directory holding LANG.traineddata; default $TESSDATA_PREFIX, else Debian's
//               /usr/share/tesseract-ocr/5/tessdata
//   max_bytes   largest payload accepted, default 33554432 (32 MiB)
//   max_pixels  largest image (width x height) decoded, default 40000000; checked on the image
//               header before decoding, so a small file claiming a huge image costs nothing
//   confidence  ocr-detect only: "none" (default) or "recognize" (see above)
//
// Errors (the error response payload):
//   invalid_argument: empty payload (expected ...) / payload of N bytes exceeds the M-byte limit
//   invalid_argument: not an image (expected PNG, JPEG, TIFF, BMP, PNM)
//   invalid_argument: cannot decode the PNG image (truncated or corrupt)
//   invalid_argument: image of WxH = P pixels exceeds the M-pixel limit
//   invalid_argument: recognize header: ... / box N (...) lies outside the WxH image
//   internal: Tesseract ... (an engine failure, not the client's fault)
//
// Thread-safety: Handle() may be called from any number of threads at once. TessBaseAPI is not
// thread-safe, so each call borrows an initialised instance from a pool that grows to the
// number of concurrent calls (max_concurrency in a worker) and never shrinks; each instance
// holds the language model (tens of MiB for "eng"). The factory initialises the first instance,
// so a missing tessdata directory or language fails at start-up. Debian's libtesseract uses
// OpenMP inside each recognition; run OCR workers with OMP_THREAD_LIMIT=1 in their environment
// (read when the library loads, so it cannot be set from here) so that max_concurrency is the
// whole parallelism and a replica stays within its CPU request.
//
// Process-wide side effect: the factory lowers Leptonica's message severity so corrupt images
// from clients do not flood the worker's stderr; their errors are returned instead.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "compute/engine.h"

namespace chorus::compute {

inline constexpr const char* kDefaultTessdataDir = "/usr/share/tesseract-ocr/5/tessdata";
inline constexpr int64_t kDefaultOcrMaxPixels = 40'000'000;
inline constexpr int64_t kDefaultOcrMaxBytes = int64_t{32} << 20;

Result<std::unique_ptr<Engine>> MakeOcrDetectEngine(const EngineOptions& options);
Result<std::unique_ptr<Engine>> MakeOcrRecognizeEngine(const EngineOptions& options);

struct OcrBox {
  int64_t x = 0, y = 0, w = 0, h = 0;
};

// An ocr-recognize payload: the header {"boxes":[...]} and the image (for routers and tests).
std::string EncodeRecognizeRequest(const std::vector<OcrBox>& boxes, std::string_view image);

}  // namespace chorus::compute
