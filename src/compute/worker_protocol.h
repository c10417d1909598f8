// The worker protocol: how a node agent talks to a worker process over its stdin and stdout
// (docs/compute.md, "Worker protocol").
//
// Both directions carry frames: a 4-byte big-endian length L, then L bytes of body. L is at most
// kMaxFrameBody (64 MiB); a bigger length is a protocol error, so a garbled stream cannot make the
// reader allocate without bound.
//
//   request body:  8-byte big-endian request id | payload
//   response body: 8-byte big-endian request id | status byte (0 ok, 1 error) | payload
//
// For an error response the payload is a human-readable message. Responses may come in any
// order; the id pairs each with its request. EOF on the worker's stdin means "finish what is in
// flight, then exit".
//
// Everything here is a pure function or a single-owner object: no locks, no I/O. Malformed input
// (from a buggy or hostile worker) is a Status, never a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "base/status.h"

namespace chorus::compute {

// The largest frame body, in bytes, either side accepts.
inline constexpr std::size_t kMaxFrameBody = std::size_t{64} << 20;
inline constexpr std::size_t kFrameHeaderBytes = 4;
inline constexpr std::size_t kRequestIdBytes = 8;
// The largest payload that fits in a request frame.
inline constexpr std::size_t kMaxRequestPayload = kMaxFrameBody - kRequestIdBytes;
// The largest payload that fits in a response frame.
inline constexpr std::size_t kMaxResponsePayload = kMaxFrameBody - kRequestIdBytes - 1;

struct Request {
  uint64_t id = 0;
  std::string payload;
};

struct Response {
  uint64_t id = 0;
  bool ok = false;
  std::string payload;  // the answer, or the error message when !ok
};

// Whole frames (header included), ready to write. The caller keeps payloads within
// kMaxRequestPayload / kMaxResponsePayload; a bigger one is encoded anyway and the peer's decoder
// rejects it.
std::string EncodeRequest(uint64_t id, std::string_view payload);
std::string EncodeResponse(uint64_t id, bool ok, std::string_view payload);

// Parse a frame body as returned by FrameDecoder::Next(). kInvalidArgument for a body too short
// to hold the id (and status byte) or a status byte other than 0 or 1.
Result<Request> DecodeRequest(std::string_view body);
Result<Response> DecodeResponse(std::string_view body);

// Splits a byte stream into frame bodies, however the stream was cut into reads.
//
//   decoder.Append(buf, n);
//   for (;;) {
//     auto next = decoder.Next();
//     if (!next.ok()) { /* protocol error: drop the connection */ }
//     if (!next->has_value()) break;  // need more bytes
//     Handle(**next);
//   }
//
// A length above kMaxFrameBody is kInvalidArgument, and the error is sticky: every later Next()
// returns it again (the stream cannot be resynchronised). Memory is bounded by the unconsumed
// bytes appended, which a correct peer keeps below one frame plus one read.
class FrameDecoder {
 public:
  void Append(const char* data, std::size_t n);
  void Append(std::string_view data) { Append(data.data(), data.size()); }

  // The next complete frame body, std::nullopt if more bytes are needed, or the protocol error.
  Result<std::optional<std::string>> Next();

  // Bytes appended but not yet returned as frames (a partial frame at EOF means truncation).
  std::size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::string buf_;
  std::size_t pos_ = 0;  // start of the unconsumed bytes in buf_
  Status error_;
};

}  // namespace chorus::compute
