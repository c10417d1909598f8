#include "compute/worker_protocol.h"

#include <cstdint>
#include <utility>

namespace chorus::compute {
namespace {

void PutBig32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

void PutBig64(std::string& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>((v >> shift) & 0xff));
}

uint64_t GetBig(std::string_view bytes) {
  uint64_t v = 0;
  for (const char c : bytes) v = (v << 8) | static_cast<unsigned char>(c);
  return v;
}

std::string Frame(std::size_t body_size) {
  std::string out;
  out.reserve(kFrameHeaderBytes + body_size);
  // A body above 4 GiB cannot be expressed at all; saturate so the peer rejects it as oversize
  // instead of reading a wrapped-around length.
  PutBig32(out, body_size > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(body_size));
  return out;
}

}  // namespace

std::string EncodeRequest(uint64_t id, std::string_view payload) {
  std::string out = Frame(kRequestIdBytes + payload.size());
  PutBig64(out, id);
  out.append(payload);
  return out;
}

std::string EncodeResponse(uint64_t id, bool ok, std::string_view payload) {
  std::string out = Frame(kRequestIdBytes + 1 + payload.size());
  PutBig64(out, id);
  out.push_back(ok ? '\0' : '\1');
  out.append(payload);
  return out;
}

Result<Request> DecodeRequest(std::string_view body) {
  if (body.size() < kRequestIdBytes) {
    return InvalidArgument("worker request frame of " + std::to_string(body.size()) +
                           " bytes is shorter than its 8-byte id");
  }
  return Request{GetBig(body.substr(0, kRequestIdBytes)), std::string(body.substr(kRequestIdBytes))};
}

Result<Response> DecodeResponse(std::string_view body) {
  if (body.size() < kRequestIdBytes + 1) {
    return InvalidArgument("worker response frame of " + std::to_string(body.size()) +
                           " bytes is shorter than its 8-byte id and status byte");
  }
  const auto status = static_cast<unsigned char>(body[kRequestIdBytes]);
  if (status > 1) {
    return InvalidArgument("worker response has status byte " + std::to_string(status) +
                           " (want 0 or 1)");
  }
  return Response{GetBig(body.substr(0, kRequestIdBytes)), status == 0,
                  std::string(body.substr(kRequestIdBytes + 1))};
}

void FrameDecoder::Append(const char* data, std::size_t n) {
  if (!error_.ok() || n == 0) return;
  // Drop consumed bytes before growing, so the buffer holds at most one partial frame plus the
  // new bytes instead of the whole history of the stream.
  if (pos_ > 0 && (pos_ == buf_.size() || pos_ >= buf_.size() / 2)) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(data, n);
}

Result<std::optional<std::string>> FrameDecoder::Next() {
  if (!error_.ok()) return error_;
  const std::string_view rest = std::string_view(buf_).substr(pos_);
  if (rest.size() < kFrameHeaderBytes) return std::optional<std::string>();
  const uint64_t len = GetBig(rest.substr(0, kFrameHeaderBytes));
  if (len > kMaxFrameBody) {
    error_ = InvalidArgument("worker frame of " + std::to_string(len) + " bytes exceeds the " +
                             std::to_string(kMaxFrameBody) + "-byte limit");
    return error_;
  }
  if (rest.size() - kFrameHeaderBytes < len) return std::optional<std::string>();
  std::string body(rest.substr(kFrameHeaderBytes, len));
  pos_ += kFrameHeaderBytes + len;
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  return std::optional<std::string>(std::move(body));
}

}  // namespace chorus::compute
