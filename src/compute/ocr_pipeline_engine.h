// The `ocr` engine: the seed's example pipeline. A request is an image (as for ocr-detect); the
// engine sends it to the `ocr-detect` app through the router, then the image with the line boxes
// found to the `ocr-recognize` app, and answers
//   {"width":W,"height":H,"text":"line 1\nline 2","lines":[{"x","y","w","h","text","confidence"}]}
// Both hops go through the router (router_client.h), so detect and recognize scale, fail over
// and are weighted independently of this app.
//
// Options: detect_app (default "ocr-detect"), recognize_app ("ocr-recognize"), timeout_ms
// (30000, per hop), max_bytes (32 MiB); resources (comma-separated resource servers) and the
// token come from the environment a node gives built-in engines (CHORUS_COMPUTE_RESOURCES,
// CHORUS_COMPUTE_INVOKE_TOKEN); the `resources` option overrides the first.
//
// Errors: a hop's error is the answer's ("invalid_argument: not an image ..." from ocr-detect
// stays a client error); an app that is missing or has no replica is "unavailable: ...".
// Thread-safe: Handle() runs on any number of threads; the router is shared.
#pragma once

#include <memory>

#include "base/status.h"
#include "compute/engine.h"

namespace chorus::compute {

Result<std::unique_ptr<Engine>> MakeOcrPipelineEngine(const EngineOptions& options);

}  // namespace chorus::compute
