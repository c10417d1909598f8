// Fuzzes the live service's parsers of untrusted input: WebSocket client frames (protobuf and
// JSON) and publisher messages.
//
// Input: the first byte picks the parser (0: binary ClientFrame, 1: JSON text frame, else:
// a publisher message object); the rest is its input.
//
// Invariants (each violation aborts):
//   - nothing crashes, throws or overflows the stack (deeply nested JSON included);
//   - a parsed subscribe/unsubscribe carries the room it was given and a failure is
//     InvalidArgument or NotFound (unknown op);
//   - a parsed message has a valid type and a payload within the size limit; Finalize() renders
//     JSON that parses back to an object with the same type and payload.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "fuzz_check.h"

// GCC 12 reports a bogus -Wrestrict inside std::string assignment at -O2 (GCC bug 105329).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wrestrict"
#endif
#include "live/frames.h"
#include "live/message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace chorus;
  using namespace chorus::live;
  if (size == 0) return 0;
  const uint8_t mode = data[0];
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  if (mode == 0 || mode == 1) {
    auto op = ParseClientFrame(input, /*binary=*/mode == 0);
    if (!op.ok()) {
      FUZZ_CHECK(op.status().code() == StatusCode::kInvalidArgument || op.status().code() == StatusCode::kNotFound,
                 op.status().ToString());
    }
    return 0;
  }
  constexpr size_t kMaxPayload = 1024;
  auto draft = ParseDraft(input, kMaxPayload);
  if (!draft.ok()) {
    FUZZ_CHECK(draft.status().code() == StatusCode::kInvalidArgument, draft.status().ToString());
    return 0;
  }
  Message m = draft->message;
  FUZZ_CHECK(!m.type.empty() && m.type.size() <= kMaxTypeBytes, "bad type accepted");
  FUZZ_CHECK(m.payload.size() <= kMaxPayload, "payload over the limit accepted");
  m.id = 1;
  m.room = "r";
  m.created_at = 1;
  m.priority = PriorityRules{}.Compute(*draft);
  FUZZ_CHECK(m.priority >= kMinPriority && m.priority <= kMaxPriority, "priority out of range");
  Finalize(m);
  nlohmann::json back = nlohmann::json::parse(m.json, nullptr, false);
  FUZZ_CHECK(back.is_object(), m.json);
  FUZZ_CHECK(back["type"] == m.type, "type changed");
  FUZZ_CHECK(back["payload"].dump() == m.payload, "payload changed");
  return 0;
}
