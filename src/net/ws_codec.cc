#include "net/ws_codec.h"

#include <openssl/evp.h>

#include <algorithm>
#include <cassert>
#include <cstring>

namespace chorus::net::ws {
namespace {

constexpr std::string_view kAcceptGuid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

// A connection that once received a large message should not hold that much memory for the
// rest of its life; below this, keeping the buffer saves an allocation per message.
constexpr size_t kRetainedMessageCapacity = 64 * 1024;

bool IsControl(uint8_t opcode) { return (opcode & 0x08) != 0; }

bool KnownOpcode(uint8_t opcode) {
  switch (opcode) {
    case kContinuation:
    case kText:
    case kBinary:
    case kClose:
    case kPing:
    case kPong:
      return true;
    default:
      return false;
  }
}

// RFC 6455 7.4: codes a peer may legitimately send. 1004-1006 and 1015 are reserved for local
// use, 1016-2999 for future protocol revisions; 3000-4999 belong to libraries and applications.
bool ValidPeerCloseCode(uint16_t code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

// Copies `n` bytes from `src` to `dst` XOR-ing with the frame's mask, where `phase` is the
// position of src[0] within the payload (only its value mod 4 matters). Works a word at a time
// because this runs over every byte a client sends.
void UnmaskCopy(char* dst, const char* src, size_t n, const uint8_t mask[4], uint64_t phase) {
  uint8_t rotated[8];
  for (size_t i = 0; i < 8; ++i) rotated[i] = mask[(phase + i) & 3];
  uint64_t word_mask;
  std::memcpy(&word_mask, rotated, sizeof word_mask);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t word;
    std::memcpy(&word, src + i, sizeof word);
    word ^= word_mask;
    std::memcpy(dst + i, &word, sizeof word);
  }
  for (; i < n; ++i) dst[i] = static_cast<char>(src[i] ^ rotated[i & 7]);
}

}  // namespace

size_t EncodeHeader(Opcode op, uint64_t payload_len, uint8_t out[kMaxHeaderBytes]) {
  // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
  assert(payload_len >> 63 == 0);
  out[0] = static_cast<uint8_t>(0x80 | op);
  if (payload_len <= 125) {
    out[1] = static_cast<uint8_t>(payload_len);
    return 2;
  }
  if (payload_len <= 0xFFFF) {
    out[1] = 126;
    out[2] = static_cast<uint8_t>(payload_len >> 8);
    out[3] = static_cast<uint8_t>(payload_len);
    return 4;
  }
  out[1] = 127;
  for (size_t i = 0; i < 8; ++i) out[2 + i] = static_cast<uint8_t>(payload_len >> (56 - 8 * i));
  return 10;
}

std::string ClosePayload(uint16_t code, std::string_view reason) {
  constexpr size_t kMaxReason = kMaxControlPayload - 2;
  if (reason.size() > kMaxReason) {
    size_t cut = kMaxReason;
    // Back up to the lead byte of the sequence the cut would split, dropping it whole.
    while (cut > 0 && (static_cast<uint8_t>(reason[cut]) & 0xC0) == 0x80) --cut;
    reason = reason.substr(0, cut);
  }
  std::string payload;
  payload.reserve(2 + reason.size());
  payload.push_back(static_cast<char>(code >> 8));
  payload.push_back(static_cast<char>(code & 0xFF));
  payload.append(reason);
  return payload;
}

std::string AcceptKey(std::string_view key) {
  std::string input;
  input.reserve(key.size() + kAcceptGuid.size());
  input.append(key).append(kAcceptGuid);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int digest_len = 0;
  if (EVP_Digest(input.data(), input.size(), digest, &digest_len, EVP_sha1(), nullptr) != 1) {
    // Only possible if libcrypto cannot allocate or SHA-1 is disabled by policy; an empty
    // accept value makes the handshake fail visibly instead of answering with garbage.
    return {};
  }
  // base64 of 20 bytes is 28 characters; EVP_EncodeBlock also writes a terminating NUL.
  char encoded[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
  const int encoded_len =
      EVP_EncodeBlock(reinterpret_cast<unsigned char*>(encoded), digest, static_cast<int>(digest_len));
  return std::string(encoded, static_cast<size_t>(encoded_len));
}

bool ValidKey(std::string_view key) {
  // 16 bytes encode to 21 full sextets plus 4 bits, padded with "==". The 4 unused bits of the
  // 22nd character are not required to be zero: decoders ignore them, and the key only ever
  // feeds SHA-1 as text, so refusing them would only break lenient clients.
  if (key.size() != 24 || key[22] != '=' || key[23] != '=') return false;
  return std::all_of(key.begin(), key.begin() + 22, IsBase64Char);
}

bool Utf8Validator::Feed(std::string_view bytes) {
  if (failed_) return false;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  const auto* const end = p + bytes.size();
  while (p < end) {
    if (pending_ > 0) {
      const uint8_t c = *p++;
      if (c < next_min_ || c > next_max_) {
        failed_ = true;
        return false;
      }
      next_min_ = 0x80;
      next_max_ = 0xBF;
      --pending_;
      continue;
    }
    // Between sequences: most protocol text is ASCII, so skip it eight bytes at a time.
    while (end - p >= 8) {
      uint64_t word;
      std::memcpy(&word, p, sizeof word);
      if ((word & 0x8080808080808080ULL) != 0) break;
      p += 8;
    }
    if (p == end) break;
    const uint8_t c = *p++;
    if (c < 0x80) continue;
    // Lead bytes per RFC 3629 / Unicode table 3-7. C0, C1 could only start overlong 2-byte
    // forms; E0 and F0 need a high enough second byte to not be overlong; ED must stay below
    // the surrogates; F4 must stay at or below U+10FFFF; F5 and above are never valid.
    if (c < 0xC2) {
      failed_ = true;
      return false;
    }
    if (c < 0xE0) {
      pending_ = 1;
    } else if (c < 0xF0) {
      pending_ = 2;
      if (c == 0xE0) next_min_ = 0xA0;
      if (c == 0xED) next_max_ = 0x9F;
    } else if (c < 0xF5) {
      pending_ = 3;
      if (c == 0xF0) next_min_ = 0x90;
      if (c == 0xF4) next_max_ = 0x8F;
    } else {
      failed_ = true;
      return false;
    }
  }
  return true;
}

FrameParser::Event FrameParser::Fail(uint16_t code, std::string_view reason) {
  state_ = State::kError;
  error_ = Event();
  error_.kind = Kind::kError;
  error_.close_code = code;
  error_.reason = reason;
  return error_;
}

FrameParser::Event FrameParser::Parse(std::string_view input, size_t* consumed) {
  *consumed = 0;
  if (state_ == State::kError) return error_;
  size_t pos = 0;
  for (;;) {
    if (state_ == State::kHeader) {
      for (;;) {
        size_t need = 2;
        if (header_size_ >= 2) {
          const uint8_t len7 = header_[1] & 0x7F;
          need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4;
        }
        if (header_size_ == need) break;
        const size_t take = std::min(need - header_size_, input.size() - pos);
        // An empty view may have a null data(), which memcpy must never see.
        if (take == 0) return Event{};
        std::memcpy(header_ + header_size_, input.data() + pos, take);
        header_size_ += take;
        pos += take;
        *consumed = pos;
        if (header_size_ < need) return Event{};
        if (header_size_ == 2) {
          if (Event ev = CheckFirstBytes(); ev.kind != Kind::kNeedMore) return ev;
        }
      }
      if (Event ev = StartFrame(); ev.kind != Kind::kNeedMore) return ev;
      state_ = State::kPayload;
    }

    // Payload: append to the target buffer, unmasking on the way.
    std::string& target = IsControl(opcode_) ? control_ : message_;
    const size_t take =
        static_cast<size_t>(std::min<uint64_t>(payload_size_ - payload_read_, input.size() - pos));
    if (take > 0) {
      const size_t old_size = target.size();
      target.resize(old_size + take);
      UnmaskCopy(target.data() + old_size, input.data() + pos, take, mask_, payload_read_);
      payload_read_ += take;
      pos += take;
      *consumed = pos;
      const bool text = !IsControl(opcode_) && !message_binary_;
      if (text && !message_utf8_.Feed(std::string_view(target).substr(old_size))) {
        return Fail(kCloseInvalidPayload, "invalid UTF-8 in text message");
      }
    }
    if (payload_read_ < payload_size_) return Event{};

    state_ = State::kHeader;
    header_size_ = 0;
    if (Event ev = FinishFrame(); ev.kind != Kind::kNeedMore) return ev;
    // A non-final fragment completes no event; keep going with the rest of the input.
  }
}

FrameParser::Event FrameParser::CheckFirstBytes() {
  const uint8_t b0 = header_[0];
  const uint8_t b1 = header_[1];
  const bool fin = (b0 & 0x80) != 0;
  const uint8_t opcode = b0 & 0x0F;
  // No extension is ever negotiated, so nothing may use the reserved bits (RFC 6455 5.2).
  if ((b0 & 0x70) != 0) return Fail(kCloseProtocolError, "reserved bits set");
  if (!KnownOpcode(opcode)) return Fail(kCloseProtocolError, "unknown opcode");
  // Clients must mask so that intermediaries cannot be poisoned by chosen bytes (RFC 6455 10.3).
  if ((b1 & 0x80) == 0) return Fail(kCloseProtocolError, "client frame not masked");
  if (IsControl(opcode)) {
    if (!fin) return Fail(kCloseProtocolError, "fragmented control frame");
    if ((b1 & 0x7F) > kMaxControlPayload) return Fail(kCloseProtocolError, "control frame too long");
  } else if (opcode == kContinuation) {
    if (!in_message_) return Fail(kCloseProtocolError, "continuation without a message");
  } else if (in_message_) {
    return Fail(kCloseProtocolError, "new message inside a fragmented message");
  }
  return Event{};
}

FrameParser::Event FrameParser::StartFrame() {
  fin_ = (header_[0] & 0x80) != 0;
  opcode_ = header_[0] & 0x0F;
  const uint8_t len7 = header_[1] & 0x7F;
  size_t mask_at = 2;
  // Non-minimal length encodings are accepted: RFC 6455 asks for minimal ones, but nothing is
  // ambiguous about a longer form and refusing it would only break sloppy clients.
  if (len7 == 126) {
    payload_size_ = (uint64_t{header_[2]} << 8) | header_[3];
    mask_at = 4;
  } else if (len7 == 127) {
    if ((header_[2] & 0x80) != 0) return Fail(kCloseProtocolError, "frame length has the top bit set");
    payload_size_ = 0;
    for (size_t i = 2; i < 10; ++i) payload_size_ = (payload_size_ << 8) | header_[i];
    mask_at = 10;
  } else {
    payload_size_ = len7;
  }
  std::memcpy(mask_, header_ + mask_at, sizeof mask_);
  payload_read_ = 0;

  if (IsControl(opcode_)) {
    control_.clear();
    return Event{};
  }
  // Checked against the announced length, before any payload is buffered.
  const size_t so_far = opcode_ == kContinuation ? message_.size() : 0;
  if (payload_size_ > max_message_bytes_ - so_far) return Fail(kCloseMessageTooBig, "message too big");
  if (opcode_ != kContinuation) {
    // The previous message's view was only promised until this Parse() call.
    if (message_.capacity() > kRetainedMessageCapacity) {
      std::string().swap(message_);
    } else {
      message_.clear();
    }
    message_binary_ = opcode_ == kBinary;
    message_utf8_.Reset();
    in_message_ = !fin_;
  }
  return Event{};
}

FrameParser::Event FrameParser::FinishFrame() {
  Event ev;
  switch (opcode_) {
    case kPing:
      ev.kind = Kind::kPing;
      ev.data = control_;
      return ev;
    case kPong:
      ev.kind = Kind::kPong;
      ev.data = control_;
      return ev;
    case kClose:
      return FinishClose();
    default:
      break;
  }
  if (!fin_) return ev;
  in_message_ = false;
  if (!message_binary_ && !message_utf8_.Complete()) {
    return Fail(kCloseInvalidPayload, "invalid UTF-8 in text message");
  }
  ev.kind = Kind::kMessage;
  ev.binary = message_binary_;
  ev.data = message_;
  return ev;
}

FrameParser::Event FrameParser::FinishClose() {
  Event ev;
  ev.kind = Kind::kClose;
  if (control_.empty()) {
    ev.close_code = kCloseNoStatus;
    return ev;
  }
  if (control_.size() == 1) return Fail(kCloseProtocolError, "close payload of 1 byte");
  const auto code =
      static_cast<uint16_t>((static_cast<uint8_t>(control_[0]) << 8) | static_cast<uint8_t>(control_[1]));
  if (!ValidPeerCloseCode(code)) return Fail(kCloseProtocolError, "invalid close code");
  const std::string_view reason = std::string_view(control_).substr(2);
  Utf8Validator utf8;
  if (!utf8.Feed(reason) || !utf8.Complete())
    return Fail(kCloseInvalidPayload, "invalid UTF-8 in close reason");
  ev.close_code = code;
  ev.reason = reason;
  return ev;
}

}  // namespace chorus::net::ws
