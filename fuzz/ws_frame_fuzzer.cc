// Fuzzes the server-side WebSocket codec (net/ws_codec.h): FrameParser on client bytes, the
// incremental UTF-8 validator, and the encoders.
//
// Input: the first byte picks max_message_bytes (0..127 as is, 128..255 as 32..4096 in steps of
// 32), so both tiny limits and the 1009 rule are reached; the rest (the "stream") is what a
// client's socket delivered.
//
// Every input is used these ways (each violation aborts):
//   1. The stream is fed whole to a parser, as the read loop in ws_codec.h does, until kNeedMore
//      or kError. kNeedMore consumed everything; any other event consumed at least one byte; a
//      message is within the limit and, as text, valid UTF-8; ping/pong payloads are at most 125
//      bytes; a close carries 1005 and no reason, or a valid peer code and a UTF-8 reason; an
//      error is 1002, 1007 or 1009 with a short ASCII reason that is not the peer's bytes, and
//      the parser then keeps returning it without consuming anything.
//   2. The same stream fed in 1-byte chunks, and in chunks from a PRNG seeded by the input's
//      hash (empty chunks with a null data() included), each chunk in its own exact-size heap
//      buffer so ASan sees any read past it: the events are exactly those of 1.
//   3. A reference parser (whole input, written for clarity rather than speed) agrees with 1 on
//      every event; for errors, on the close code only, since the reason is wording.
//   4. Utf8Validator on the stream, whole and in PRNG chunks, agrees with a reference decoder.
//   5. EncodeHeader(op, len), decoded by hand, gives op and len in the minimal form; masked and
//      followed by a payload from the stream it parses back to that payload. ClosePayload(code,
//      stream) is at most 125 bytes, the code followed by a prefix of the stream that is cut only
//      where needed, at a character boundary; parsed back as a client close frame it gives the
//      code and the reason (or the error a bad code or bad UTF-8 calls for).
//   6. ValidKey agrees with a reference; AcceptKey answers 28 base64 characters, and the RFC 6455
//      example key gets the RFC's answer.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "net/ws_codec.h"

namespace chorus::net::ws {
namespace {

using Kind = FrameParser::Kind;

size_t MaxMessageBytes(uint8_t selector) {
  return selector < 128 ? selector : static_cast<size_t>(selector - 127) * 32;
}

// ---------------------------------------------------------------- randomness from the input

uint64_t Fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : s) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ULL;
  }
  return h;
}

// splitmix64: deterministic per input, so a crash reproduces from the input file alone.
class Prng {
 public:
  explicit Prng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

 private:
  uint64_t state_;
};

// Cut points for `size` bytes: mostly 1-byte and short chunks (every header and UTF-8 sequence
// gets split somewhere), some empty ones, some long ones.
std::vector<size_t> RandomChunks(size_t size, Prng& rng) {
  std::vector<size_t> chunks;
  size_t left = size;
  while (left > 0) {
    size_t n = 0;
    switch (rng.Next() % 8) {
      case 0:
        n = 0;
        break;
      case 1:
      case 2:
      case 3:
        n = 1;
        break;
      case 4:
      case 5:
        n = 1 + rng.Next() % 16;
        break;
      case 6:
        n = 1 + rng.Next() % 256;
        break;
      default:
        n = left;
        break;
    }
    n = std::min(n, left);
    chunks.push_back(n);
    left -= n;
  }
  return chunks;
}

// ---------------------------------------------------------------- reference UTF-8

// Length of the sequence `lead` starts (RFC 3629 lead bytes only), 0 if it starts none.
size_t SeqLen(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// Whether the complete sequence p[0..len) decodes to a scalar value in its shortest form.
bool DecodesOk(const uint8_t* p, size_t len) {
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  uint32_t cp = len == 1 ? p[0] : len == 2 ? p[0] & 0x1F : len == 3 ? p[0] & 0x0F : p[0] & 0x07;
  for (size_t i = 1; i < len; ++i) {
    if ((p[i] & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  return cp >= kMin[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
}

// Whether p[0..m) can be completed to a valid sequence: only the second byte is ever
// constrained beyond 0x80..0xBF, so trying every second byte is exhaustive.
bool SeqPrefixOk(const uint8_t* p, size_t m) {
  const size_t len = SeqLen(p[0]);
  if (len == 0 || m > len) return false;
  uint8_t buf[4];
  std::memcpy(buf, p, m);
  for (size_t i = m; i < len; ++i) buf[i] = 0x80;
  if (m >= 2 || len == 1) return DecodesOk(buf, len);
  for (int second = 0x80; second <= 0xBF; ++second) {
    buf[1] = static_cast<uint8_t>(second);
    if (DecodesOk(buf, len)) return true;
  }
  return false;
}

struct RefUtf8 {
  size_t valid_prefix = 0;  // longest prefix that some continuation makes valid UTF-8
  bool complete = false;    // the whole input is valid UTF-8
};

RefUtf8 CheckUtf8Ref(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    const size_t len = SeqLen(p[i]);
    if (len == 0) return {i, false};
    size_t m = 1;
    while (m < len && i + m < n && SeqPrefixOk(p + i, m + 1)) ++m;
    if (m < len) return {i + m, false};  // a bad byte at i + m, or the input ends mid-sequence
    i += len;
  }
  return {n, true};
}

bool ValidUtf8(std::string_view s) { return CheckUtf8Ref(s).complete; }

void CheckUtf8Validator(std::string_view s, Prng& rng) {
  const RefUtf8 ref = CheckUtf8Ref(s);
  {
    Utf8Validator v;
    FUZZ_CHECK(v.Feed(s) == (ref.valid_prefix == s.size()), "Utf8Validator disagrees with the reference");
    FUZZ_CHECK(v.Complete() == ref.complete, "Utf8Validator::Complete disagrees with the reference");
    v.Reset();
    FUZZ_CHECK(v.Complete(), "Reset() left the validator failed or mid-sequence");
  }
  Utf8Validator v;
  size_t fed = 0;
  for (size_t n : RandomChunks(s.size(), rng)) {
    fed += n;
    // Prefixes of a valid prefix are valid prefixes, and failure is sticky: Feed() answers for
    // everything fed so far.
    FUZZ_CHECK(v.Feed(s.substr(fed - n, n)) == (fed <= ref.valid_prefix), "split Utf8Validator::Feed");
  }
  FUZZ_CHECK(v.Complete() == ref.complete, "split Utf8Validator::Complete");
}

// ---------------------------------------------------------------- parser events

// An event with its views copied: they are only valid until the next Parse() call.
struct Recorded {
  Kind kind = Kind::kNeedMore;
  bool binary = false;
  std::string data;
  uint16_t close_code = 0;
  std::string reason;

  bool operator==(const Recorded&) const = default;
};

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kNeedMore:
      return "need-more";
    case Kind::kMessage:
      return "message";
    case Kind::kPing:
      return "ping";
    case Kind::kPong:
      return "pong";
    case Kind::kClose:
      return "close";
    case Kind::kError:
      return "error";
  }
  return "?";
}

std::string Describe(const std::vector<Recorded>& events) {
  std::string out;
  for (const Recorded& e : events) {
    out += KindName(e.kind);
    out += '(';
    if (e.kind == Kind::kMessage) out += e.binary ? "binary " : "text ";
    out += std::to_string(e.data.size()) + " bytes";
    if (e.close_code != 0) out += ", " + std::to_string(e.close_code);
    if (!e.reason.empty()) out += ", \"" + e.reason + "\"";
    out += ") ";
  }
  return out;
}

bool ValidPeerCode(uint16_t code) {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

bool Inside(std::string_view part, std::string_view whole) {
  const std::less_equal<const char*> le;
  return !whole.empty() && !part.empty() && le(whole.data(), part.data()) &&
         le(part.data() + part.size(), whole.data() + whole.size());
}

// Properties of one event on its own; `input` is what this Parse() call was given.
void CheckEvent(const FrameParser::Event& ev, std::string_view input, size_t max_message_bytes) {
  switch (ev.kind) {
    case Kind::kNeedMore:
      return;
    case Kind::kMessage: {
      FUZZ_CHECK(ev.data.size() <= max_message_bytes, "message over max_message_bytes");
      FUZZ_CHECK(ev.close_code == 0 && ev.reason.empty(), "message with a close code or reason");
      if (!ev.binary) {
        Utf8Validator utf8;
        FUZZ_CHECK(utf8.Feed(ev.data) && utf8.Complete(), "text message is not valid UTF-8");
        FUZZ_CHECK(ValidUtf8(ev.data), "text message is not valid UTF-8 (reference)");
      }
      return;
    }
    case Kind::kPing:
    case Kind::kPong:
      FUZZ_CHECK(ev.data.size() <= kMaxControlPayload, "control payload over 125 bytes");
      FUZZ_CHECK(!ev.binary && ev.close_code == 0 && ev.reason.empty(), "ping/pong with close fields");
      return;
    case Kind::kClose: {
      FUZZ_CHECK(ev.data.empty() && !ev.binary, "close event with message fields");
      if (ev.close_code == kCloseNoStatus) {
        FUZZ_CHECK(ev.reason.empty(), "1005 with a reason");
        return;
      }
      FUZZ_CHECK(ValidPeerCode(ev.close_code), std::to_string(ev.close_code));
      FUZZ_CHECK(ev.reason.size() <= kMaxControlPayload - 2, "close reason over 123 bytes");
      Utf8Validator utf8;
      FUZZ_CHECK(utf8.Feed(ev.reason) && utf8.Complete(), "close reason is not valid UTF-8");
      FUZZ_CHECK(ValidUtf8(ev.reason), "close reason is not valid UTF-8 (reference)");
      return;
    }
    case Kind::kError: {
      FUZZ_CHECK(ev.close_code == kCloseProtocolError || ev.close_code == kCloseInvalidPayload ||
                     ev.close_code == kCloseMessageTooBig,
                 std::to_string(ev.close_code));
      FUZZ_CHECK(!ev.reason.empty() && ev.reason.size() <= kMaxControlPayload - 2, ev.reason);
      for (char c : ev.reason) FUZZ_CHECK(c >= 0x20 && c < 0x7F, "error reason is not printable ASCII");
      FUZZ_CHECK(!Inside(ev.reason, input), "error reason points into the peer's bytes");
      FUZZ_CHECK(ev.data.empty() && !ev.binary, "error event with message fields");
      return;
    }
  }
  FUZZ_CHECK(false, "unknown event kind");
}

// After kError, every call returns the same error and consumes nothing.
void CheckStickyError(FrameParser& parser, const Recorded& error, std::string_view rest) {
  for (std::string_view input : {rest, std::string_view(), std::string_view("\x81\x80\0\0\0\0", 6)}) {
    size_t n = 99;
    const FrameParser::Event again = parser.Parse(input, &n);
    FUZZ_CHECK(again.kind == Kind::kError, "parser left the error state");
    FUZZ_CHECK(n == 0, "parser consumed input after an error");
    FUZZ_CHECK(again.close_code == error.close_code && again.reason == error.reason, "a different error");
  }
}

// One socket read: runs the read loop from ws_codec.h over `chunk`. Returns false once the parser
// has reported an error (the connection is closing; the caller stops feeding).
bool FeedChunk(FrameParser& parser, std::string_view chunk, size_t max_message_bytes,
               std::vector<Recorded>* events) {
  for (;;) {
    size_t n = 99999;
    const FrameParser::Event ev = parser.Parse(chunk, &n);
    FUZZ_CHECK(n <= chunk.size(), "consumed more than the input");
    if (ev.kind == Kind::kNeedMore) {
      FUZZ_CHECK(n == chunk.size(), "kNeedMore without consuming all input");
      return true;
    }
    // Otherwise a caller that loops until kNeedMore could spin forever.
    FUZZ_CHECK(n > 0, "an event that consumed nothing");
    CheckEvent(ev, chunk, max_message_bytes);
    events->push_back(
        Recorded{ev.kind, ev.binary, std::string(ev.data), ev.close_code, std::string(ev.reason)});
    chunk.remove_prefix(n);
    if (ev.kind == Kind::kError) {
      CheckStickyError(parser, events->back(), chunk);
      return false;
    }
  }
}

std::vector<Recorded> ParseWhole(std::string_view stream, size_t max_message_bytes) {
  FrameParser parser(max_message_bytes);
  std::vector<Recorded> events;
  FeedChunk(parser, stream, max_message_bytes, &events);
  return events;
}

// Each chunk in a heap buffer of exactly its size (none for an empty chunk: a null data()).
std::vector<Recorded> ParseSplit(std::string_view stream, const std::vector<size_t>& chunks,
                                 size_t max_message_bytes) {
  FrameParser parser(max_message_bytes);
  std::vector<Recorded> events;
  size_t at = 0;
  for (size_t n : chunks) {
    std::unique_ptr<char[]> copy;
    std::string_view chunk;
    if (n > 0) {
      copy = std::make_unique<char[]>(n);
      std::memcpy(copy.get(), stream.data() + at, n);
      chunk = std::string_view(copy.get(), n);
    }
    at += n;
    if (!FeedChunk(parser, chunk, max_message_bytes, &events)) break;
  }
  return events;
}

// ---------------------------------------------------------------- reference parser

// RFC 6455 section 5 for client frames, over the whole input at once. Errors are reported at the
// first byte that makes them certain, as ws_codec.h promises: the first two header bytes (RSV,
// opcode, mask bit, control-frame rules, fragmentation state), the full header (64-bit length's
// top bit, the size limit), each payload byte (UTF-8 of text), the end of a frame (incomplete
// UTF-8, close payload).
std::vector<Recorded> ReferenceParse(std::string_view in, size_t max_message_bytes) {
  std::vector<Recorded> out;
  auto fail = [&out](uint16_t code) {
    Recorded e;
    e.kind = Kind::kError;
    e.close_code = code;
    out.push_back(e);
    return out;
  };
  auto byte = [&in](size_t i) { return static_cast<uint8_t>(in[i]); };
  bool in_message = false;
  bool binary = false;
  std::string message;
  size_t pos = 0;
  while (in.size() - pos >= 2) {
    const uint8_t b0 = byte(pos);
    const uint8_t b1 = byte(pos + 1);
    const bool fin = (b0 & 0x80) != 0;
    const uint8_t op = b0 & 0x0F;
    const uint8_t len7 = b1 & 0x7F;
    const bool control = op >= 8;
    if ((b0 & 0x70) != 0) return fail(kCloseProtocolError);
    if (!(op <= 2 || (op >= 8 && op <= 10))) return fail(kCloseProtocolError);
    if ((b1 & 0x80) == 0) return fail(kCloseProtocolError);
    if (control && (!fin || len7 > 125)) return fail(kCloseProtocolError);
    if (op == kContinuation && !in_message) return fail(kCloseProtocolError);
    if ((op == kText || op == kBinary) && in_message) return fail(kCloseProtocolError);

    const size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    const size_t header = 2 + ext + 4;
    if (in.size() - pos < header) break;
    uint64_t len = len7;
    if (ext > 0) {
      len = 0;
      for (size_t i = 0; i < ext; ++i) len = (len << 8) | byte(pos + 2 + i);
    }
    if (ext == 8 && (len >> 63) != 0) return fail(kCloseProtocolError);
    if (!control) {
      const size_t so_far = op == kContinuation ? message.size() : 0;
      if (so_far + len > max_message_bytes || len > max_message_bytes) return fail(kCloseMessageTooBig);
      if (op != kContinuation) {
        message.clear();
        binary = op == kBinary;
        in_message = !fin;
      }
    }
    const size_t mask_at = pos + 2 + ext;
    const size_t avail = static_cast<size_t>(std::min<uint64_t>(len, in.size() - pos - header));
    std::string payload(avail, '\0');
    for (size_t i = 0; i < avail; ++i) {
      payload[i] = static_cast<char>(byte(pos + header + i) ^ byte(mask_at + i % 4));
    }
    if (!control && !binary) {
      const std::string so_far = message + payload;
      if (CheckUtf8Ref(so_far).valid_prefix < so_far.size()) return fail(kCloseInvalidPayload);
    }
    if (avail < len) break;
    pos += header + avail;

    Recorded e;
    if (op == kPing || op == kPong) {
      e.kind = op == kPing ? Kind::kPing : Kind::kPong;
      e.data = payload;
    } else if (op == kClose) {
      e.kind = Kind::kClose;
      if (payload.empty()) {
        e.close_code = kCloseNoStatus;
      } else {
        if (payload.size() == 1) return fail(kCloseProtocolError);
        e.close_code =
            static_cast<uint16_t>((static_cast<uint8_t>(payload[0]) << 8) | static_cast<uint8_t>(payload[1]));
        if (!ValidPeerCode(e.close_code)) return fail(kCloseProtocolError);
        e.reason = payload.substr(2);
        if (!ValidUtf8(e.reason)) return fail(kCloseInvalidPayload);
      }
    } else {
      message += payload;
      if (!fin) continue;
      in_message = false;
      if (!binary && !ValidUtf8(message)) return fail(kCloseInvalidPayload);
      e.kind = Kind::kMessage;
      e.binary = binary;
      e.data = message;
    }
    out.push_back(std::move(e));
  }
  return out;
}

bool SameAsReference(const std::vector<Recorded>& got, const std::vector<Recorded>& ref) {
  if (got.size() != ref.size()) return false;
  for (size_t i = 0; i < got.size(); ++i) {
    const Recorded& a = got[i];
    const Recorded& b = ref[i];
    if (a.kind != b.kind || a.close_code != b.close_code) return false;
    if (a.kind != Kind::kError && !(a == b)) return false;
  }
  return true;
}

void CheckParser(std::string_view stream, size_t max_message_bytes, Prng& rng) {
  const std::vector<Recorded> whole = ParseWhole(stream, max_message_bytes);

  const std::vector<size_t> ones(stream.size(), 1);
  const std::vector<Recorded> bytewise = ParseSplit(stream, ones, max_message_bytes);
  FUZZ_CHECK(bytewise == whole, "1-byte chunks: " + Describe(bytewise) + "| whole: " + Describe(whole));

  const std::vector<Recorded> chunked =
      ParseSplit(stream, RandomChunks(stream.size(), rng), max_message_bytes);
  FUZZ_CHECK(chunked == whole, "random chunks: " + Describe(chunked) + "| whole: " + Describe(whole));

  const std::vector<Recorded> ref = ReferenceParse(stream, max_message_bytes);
  FUZZ_CHECK(SameAsReference(whole, ref), "parser: " + Describe(whole) + "| reference: " + Describe(ref));
}

// ---------------------------------------------------------------- encoders

// Decodes a server header by hand; checks the fixed bits and the minimal length form.
void CheckEncodeHeader(Opcode op, uint64_t len) {
  uint8_t h[kMaxHeaderBytes];
  const size_t n = EncodeHeader(op, len, h);
  const size_t expected = len <= 125 ? 2 : len <= 0xFFFF ? 4 : 10;
  FUZZ_CHECK(n == expected, std::to_string(len));
  FUZZ_CHECK(h[0] == (0x80 | op), "not FIN, RSV set or wrong opcode");
  FUZZ_CHECK((h[1] & 0x80) == 0, "server frame masked");
  uint64_t decoded = h[1];
  if (h[1] == 126) {
    decoded = (uint64_t{h[2]} << 8) | h[3];
    FUZZ_CHECK(n == 4 && decoded > 125, "16-bit length not minimal");
  } else if (h[1] == 127) {
    FUZZ_CHECK((h[2] & 0x80) == 0, "64-bit length with the top bit set");
    decoded = 0;
    for (size_t i = 2; i < 10; ++i) decoded = (decoded << 8) | h[i];
    FUZZ_CHECK(n == 10 && decoded > 0xFFFF, "64-bit length not minimal");
  } else {
    FUZZ_CHECK(n == 2, "7-bit length with an extended header");
  }
  FUZZ_CHECK(decoded == len, std::to_string(decoded) + " != " + std::to_string(len));
}

// A client frame around `payload`: EncodeHeader's header with the mask bit and key added.
std::string ClientFrame(Opcode op, std::string_view payload, uint32_t key) {
  uint8_t h[kMaxHeaderBytes];
  const size_t n = EncodeHeader(op, payload.size(), h);
  h[1] |= 0x80;
  const uint8_t mask[4] = {static_cast<uint8_t>(key >> 24), static_cast<uint8_t>(key >> 16),
                           static_cast<uint8_t>(key >> 8), static_cast<uint8_t>(key)};
  std::string frame(reinterpret_cast<const char*>(h), n);
  frame.append(reinterpret_cast<const char*>(mask), 4);
  for (size_t i = 0; i < payload.size(); ++i) frame.push_back(static_cast<char>(payload[i] ^ mask[i % 4]));
  return frame;
}

// `frame` parsed whole and split at `cut` yields exactly `expected`, consuming the whole frame.
void CheckFrameParses(const std::string& frame, size_t cut, const Recorded& expected, size_t max) {
  FrameParser parser(max);
  size_t n = 0;
  const FrameParser::Event ev = parser.Parse(frame, &n);
  CheckEvent(ev, frame, max);
  const Recorded got{ev.kind, ev.binary, std::string(ev.data), ev.close_code, std::string(ev.reason)};
  const bool same = got.kind == Kind::kError
                        ? got.kind == expected.kind && got.close_code == expected.close_code
                        : got == expected;
  FUZZ_CHECK(same, "encoded frame: " + Describe({got}) + "| expected: " + Describe({expected}));
  FUZZ_CHECK(n == frame.size(), "encoded frame not consumed whole");

  const std::vector<Recorded> split = ParseSplit(frame, {cut, frame.size() - cut}, max);
  FUZZ_CHECK(split.size() == 1 && split[0] == got, "encoded frame split: " + Describe(split));
}

void CheckEncoders(std::string_view stream, Prng& rng) {
  static constexpr Opcode kOps[] = {kContinuation, kText, kBinary, kClose, kPing, kPong};
  for (uint64_t len :
       {uint64_t{0}, uint64_t{125}, uint64_t{126}, uint64_t{0xFFFF}, uint64_t{0x10000},
        (uint64_t{1} << 63) - 1, uint64_t{stream.size()}, rng.Next() >> (1 + rng.Next() % 63)}) {
    CheckEncodeHeader(kOps[rng.Next() % 6], len);
  }

  const auto key = static_cast<uint32_t>(rng.Next());
  // Data frames: the whole stream as payload, within a limit of exactly its size.
  for (Opcode op : {kBinary, kText}) {
    const std::string frame = ClientFrame(op, stream, key);
    Recorded expected;
    if (op == kText && !ValidUtf8(stream)) {
      expected.kind = Kind::kError;
      expected.close_code = kCloseInvalidPayload;
    } else {
      expected.kind = Kind::kMessage;
      expected.binary = op == kBinary;
      expected.data = std::string(stream);
    }
    CheckFrameParses(frame, rng.Next() % (frame.size() + 1), expected, stream.size());
  }
  // Control frames: at most 125 bytes of the stream.
  const std::string_view control = stream.substr(0, kMaxControlPayload);
  for (Opcode op : {kPing, kPong}) {
    const std::string frame = ClientFrame(op, control, key);
    Recorded expected;
    expected.kind = op == kPing ? Kind::kPing : Kind::kPong;
    expected.data = std::string(control);
    CheckFrameParses(frame, rng.Next() % (frame.size() + 1), expected, 0);
  }

  // ClosePayload with the stream as reason: code first, then the reason cut only if needed.
  static constexpr uint16_t kCodes[] = {1000, 1001, 1002, 1005, 1007, 1009, 1011, 3000, 4999, 5000};
  const uint16_t code = rng.Next() % 2 == 0 ? kCodes[rng.Next() % 10] : static_cast<uint16_t>(rng.Next());
  const std::string payload = ClosePayload(code, stream);
  constexpr size_t kMaxReason = kMaxControlPayload - 2;
  FUZZ_CHECK(payload.size() >= 2 && payload.size() <= kMaxControlPayload, std::to_string(payload.size()));
  FUZZ_CHECK(
      static_cast<uint8_t>(payload[0]) == (code >> 8) && static_cast<uint8_t>(payload[1]) == (code & 0xFF),
      "close code not in network order");
  const std::string_view reason = std::string_view(payload).substr(2);
  FUZZ_CHECK(stream.substr(0, reason.size()) == reason, "close reason is not a prefix of the input");
  const RefUtf8 utf8 = CheckUtf8Ref(stream);
  if (stream.size() <= kMaxReason) {
    FUZZ_CHECK(reason == stream, "a reason that fits was cut");
  } else if (utf8.valid_prefix > kMaxReason) {
    // The first 124 bytes are valid UTF-8 so far, so byte 123 starts or continues a character
    // and the cut backs up at most 3 bytes to a boundary.
    FUZZ_CHECK(reason.size() + 3 >= kMaxReason, "close reason cut more than one character short");
    FUZZ_CHECK(ValidUtf8(reason), "a truncated UTF-8 reason is not valid UTF-8");
  }
  if (reason.size() < stream.size() && !reason.empty()) {
    FUZZ_CHECK((static_cast<uint8_t>(stream[reason.size()]) & 0xC0) != 0x80, "reason cut inside a character");
  }

  // ...and back through the parser as the client's close frame.
  const std::string frame = ClientFrame(kClose, payload, key);
  Recorded expected;
  if (!ValidPeerCode(code)) {
    expected.kind = Kind::kError;
    expected.close_code = kCloseProtocolError;
  } else if (!ValidUtf8(reason)) {
    expected.kind = Kind::kError;
    expected.close_code = kCloseInvalidPayload;
  } else {
    expected.kind = Kind::kClose;
    expected.close_code = code;
    expected.reason = std::string(reason);
  }
  CheckFrameParses(frame, rng.Next() % (frame.size() + 1), expected, 0);
}

// ---------------------------------------------------------------- handshake keys

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

void CheckKeys(std::string_view stream) {
  static const bool kRfcExample = AcceptKey("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
  FUZZ_CHECK(kRfcExample, "AcceptKey disagrees with RFC 6455 section 1.3");
  for (std::string_view key : {stream, stream.substr(0, 24)}) {
    const bool ref = key.size() == 24 && key.substr(22) == "==" &&
                     std::all_of(key.begin(), key.begin() + 22, IsBase64Char);
    FUZZ_CHECK(ValidKey(key) == ref, key);
    const std::string accept = AcceptKey(key);
    FUZZ_CHECK(accept.size() == 28 && accept[27] == '=', accept);
    FUZZ_CHECK(std::all_of(accept.begin(), accept.begin() + 27, IsBase64Char), accept);
  }
}

}  // namespace
}  // namespace chorus::net::ws

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace chorus::net::ws;
  if (size == 0) return 0;
  const size_t max_message_bytes = MaxMessageBytes(data[0]);
  const std::string_view stream(reinterpret_cast<const char*>(data + 1), size - 1);
  Prng rng(Fnv1a(std::string_view(reinterpret_cast<const char*>(data), size)));
  CheckParser(stream, max_message_bytes, rng);
  CheckUtf8Validator(stream, rng);
  CheckEncoders(stream, rng);
  CheckKeys(stream);
  return 0;
}
