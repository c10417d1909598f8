// RFC 6455 WebSocket framing for the server side, without Boost.Beast.
//
// The server owns its WebSocket reads and writes (Beast's websocket stream serialized every
// write through its own state machine and cost us copies and allocations). This codec is the
// protocol part only: it never touches a socket, a clock or a thread, so the connection code
// decides how bytes move and this file decides what they mean.
//
// Writing: EncodeHeader() produces the header of an unfragmented, unmasked server frame; the
// caller writes it followed by the payload (a gather write, so payloads shared between many
// connections are never copied). Servers never mask (RFC 6455 5.1) and Chorus never fragments
// what it sends.
//
// Reading: FrameParser is a push parser. The caller hands it whatever the socket delivered and
// gets back one event at a time:
//
//   size_t n = 0;
//   FrameParser::Event ev;
//   while ((ev = parser.Parse(buf, &n)).kind != FrameParser::Kind::kNeedMore) {
//     buf.remove_prefix(n);
//     Handle(ev);                // stop on kClose / kError: the connection is closing
//   }
//   buf.remove_prefix(n);        // kNeedMore consumed everything: the parser kept what it needs
//
// Design: the parser copies each payload byte exactly once, unmasking it on the way, into one
// of two internal buffers: the message buffer (text/binary data, fragments appended in place)
// or the control buffer (ping/pong/close). Keeping them apart is what lets a control frame
// arrive between two fragments without disturbing the message being assembled. Partial
// headers (at most 14 bytes) are buffered too, so the caller never needs to keep unconsumed
// input around. Everything the protocol forbids is detected as early as the bytes allow: the
// first two header bytes decide RSV, opcode, masking and control-frame rules; the full header
// decides the size limit before any payload is buffered (so a client cannot make us allocate
// by announcing a huge frame); text is UTF-8-checked as each chunk arrives.
//
// Every protocol violation becomes a kError event carrying the close code the server must
// answer with (1002 protocol error, 1007 invalid payload, 1009 too big). The parser never
// throws and never asserts on input; it is safe on arbitrary bytes.
//
// Threads: none of this is thread-safe, and none of it needs to be: a FrameParser belongs to
// one connection and is used only on that connection's shard thread. The free functions are
// stateless and safe from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace chorus::net::ws {

enum Opcode : uint8_t {
  kContinuation = 0,
  kText = 1,
  kBinary = 2,
  kClose = 8,
  kPing = 9,
  kPong = 10,
};

// Close codes this codec produces or interprets (RFC 6455 7.4.1).
inline constexpr uint16_t kCloseProtocolError = 1002;
inline constexpr uint16_t kCloseNoStatus = 1005;  // reported for an empty close payload, never sent
inline constexpr uint16_t kCloseInvalidPayload = 1007;
inline constexpr uint16_t kCloseMessageTooBig = 1009;

// Control frames (close, ping, pong) carry at most this many payload bytes (RFC 6455 5.5).
inline constexpr size_t kMaxControlPayload = 125;
// A server frame header: 2 bytes, plus 2 or 8 bytes of extended length, never a mask.
inline constexpr size_t kMaxHeaderBytes = 10;

// Writes the header of a final (FIN set), unmasked server-to-client frame into `out` and
// returns its length: 2, 4 or 10. `payload_len` must be below 2^63, which any buffer in memory is.
[[nodiscard]] size_t EncodeHeader(Opcode op, uint64_t payload_len, uint8_t out[kMaxHeaderBytes]);

// The payload of a close frame: `code` in network order followed by `reason`, which should be
// UTF-8. A reason that would make the payload exceed kMaxControlPayload is truncated to fit,
// at a character boundary so the peer still receives valid UTF-8.
[[nodiscard]] std::string ClosePayload(uint16_t code, std::string_view reason);

// Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (RFC 6455 4.2.2):
// base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
[[nodiscard]] std::string AcceptKey(std::string_view key);

// Whether `key` is an acceptable Sec-WebSocket-Key (RFC 6455 4.2.1): base64 of exactly 16
// bytes, i.e. 22 base64 characters followed by "==". The caller trims header whitespace.
[[nodiscard]] bool ValidKey(std::string_view key);

// Incremental UTF-8 validation (RFC 3629): rejects overlong encodings, surrogates (U+D800 to
// U+DFFF) and code points above U+10FFFF. Input may be split anywhere, including inside a
// multi-byte sequence, which is what WebSocket fragments require. Once Feed() has failed the
// validator stays failed until Reset().
class Utf8Validator {
 public:
  // Returns false if the bytes fed so far cannot be the prefix of valid UTF-8.
  [[nodiscard]] bool Feed(std::string_view bytes);
  // True when everything fed so far is valid and no multi-byte sequence is left unfinished.
  [[nodiscard]] bool Complete() const { return !failed_ && pending_ == 0; }
  void Reset() { *this = Utf8Validator(); }

 private:
  uint8_t pending_ = 0;  // continuation bytes still owed by the current sequence
  // Allowed range of the next continuation byte. Only the second byte of a sequence is ever
  // narrower than 0x80..0xBF; narrowing it is how overlongs, surrogates and > U+10FFFF are
  // refused without decoding code points.
  uint8_t next_min_ = 0x80;
  uint8_t next_max_ = 0xBF;
  bool failed_ = false;
};

// Incremental parser of client-to-server frames; see the top of this file.
class FrameParser {
 public:
  // `max_message_bytes` bounds a whole message (the sum of its fragments' payloads).
  explicit FrameParser(size_t max_message_bytes) : max_message_bytes_(max_message_bytes) {}

  FrameParser(const FrameParser&) = delete;
  FrameParser& operator=(const FrameParser&) = delete;

  enum class Kind { kNeedMore, kMessage, kPing, kPong, kClose, kError };

  // The views point into the parser and stay valid until the next Parse() call.
  struct Event {
    Kind kind = Kind::kNeedMore;
    bool binary = false;    // kMessage: binary rather than text
    std::string_view data;  // kMessage: the whole unmasked message; kPing/kPong: the payload
    // kClose: the peer's code (kCloseNoStatus when the payload was empty).
    // kError: the code our close frame must carry.
    uint16_t close_code = 0;
    // kClose: the peer's reason (valid UTF-8). kError: what went wrong, short enough for a
    // close frame and never containing the peer's bytes.
    std::string_view reason;
  };

  // Consumes bytes from the front of `input`, stores how many in `*consumed`, and returns the
  // first event they complete. kNeedMore means all of `input` was consumed without finishing a
  // frame. Parsing continues after kClose if asked, but RFC 6455 says nothing may follow a
  // close frame, so callers stop reading. After kError the parser stays in error: every later
  // call returns the same error and consumes nothing.
  [[nodiscard]] Event Parse(std::string_view input, size_t* consumed);

 private:
  enum class State { kHeader, kPayload, kError };

  Event Fail(uint16_t code, std::string_view reason);
  // Rules decidable from the first two header bytes; kNeedMore when they all pass.
  Event CheckFirstBytes();
  // Reads length and mask from the complete header and prepares the target buffer.
  Event StartFrame();
  // Called once the current frame's payload is complete; kNeedMore for a non-final fragment.
  Event FinishFrame();
  Event FinishClose();

  const size_t max_message_bytes_;
  State state_ = State::kHeader;

  // The header of the frame being read: up to 2 + 8 length + 4 mask bytes.
  uint8_t header_[14] = {};
  size_t header_size_ = 0;

  // The frame whose payload is being read.
  bool fin_ = false;
  uint8_t opcode_ = 0;
  uint8_t mask_[4] = {};
  uint64_t payload_size_ = 0;
  uint64_t payload_read_ = 0;

  // The data message being assembled, possibly across fragments.
  bool in_message_ = false;  // a text/binary frame without FIN has been read, final not yet
  bool message_binary_ = false;
  std::string message_;
  Utf8Validator message_utf8_;

  std::string control_;  // payload of the current control frame
  Event error_;
};

}  // namespace chorus::net::ws
