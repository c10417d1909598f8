#include "net/ws_codec.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace chorus::net::ws {
namespace {

using Kind = FrameParser::Kind;

// The masking key of the RFC 6455 5.7 examples; its bytes differ, so a parser that applies
// the key at the wrong offset produces visibly wrong data.
constexpr std::array<uint8_t, 4> kKey = {0x37, 0xfa, 0x21, 0x3d};

std::string Bytes(std::initializer_list<uint8_t> bytes) { return std::string(bytes.begin(), bytes.end()); }

// Builds a client-to-server frame, valid or deliberately not:
//   ClientFrame(kText, "hi").NotFinal().Build()
class ClientFrame {
 public:
  ClientFrame(uint8_t opcode, std::string_view payload) : opcode_(opcode), payload_(payload) {}

  ClientFrame& NotFinal() {
    fin_ = false;
    return *this;
  }
  ClientFrame& Unmasked() {
    masked_ = false;
    return *this;
  }
  // Sets RSV1..3, given as bits 2..0.
  ClientFrame& Rsv(uint8_t bits) {
    rsv_ = bits;
    return *this;
  }
  // Forces the 16- or 64-bit length form even where 7 bits would do.
  ClientFrame& LengthBits(int bits) {
    length_bits_ = bits;
    return *this;
  }
  // Makes the header claim `len` bytes regardless of the payload actually appended.
  ClientFrame& Announce(uint64_t len) {
    announced_ = len;
    return *this;
  }
  ClientFrame& Key(std::array<uint8_t, 4> key) {
    key_ = key;
    return *this;
  }

  std::string Build() const {
    std::string out;
    out.push_back(static_cast<char>((fin_ ? 0x80 : 0) | (rsv_ << 4) | opcode_));
    const uint64_t len = announced_.value_or(payload_.size());
    const uint8_t mask_bit = masked_ ? 0x80 : 0;
    const int bits = length_bits_ != 0 ? length_bits_ : len <= 125 ? 7 : len <= 0xFFFF ? 16 : 64;
    if (bits == 7) {
      out.push_back(static_cast<char>(mask_bit | len));
    } else if (bits == 16) {
      out.push_back(static_cast<char>(mask_bit | 126));
      for (int shift = 8; shift >= 0; shift -= 8) out.push_back(static_cast<char>(len >> shift));
    } else {
      out.push_back(static_cast<char>(mask_bit | 127));
      for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(len >> shift));
    }
    if (masked_) out.append(key_.begin(), key_.end());
    for (size_t i = 0; i < payload_.size(); ++i) {
      const uint8_t m = masked_ ? key_[i % 4] : 0;
      out.push_back(static_cast<char>(static_cast<uint8_t>(payload_[i]) ^ m));
    }
    return out;
  }

 private:
  uint8_t opcode_;
  std::string_view payload_;
  bool fin_ = true;
  bool masked_ = true;
  uint8_t rsv_ = 0;
  int length_bits_ = 0;
  std::optional<uint64_t> announced_;
  std::array<uint8_t, 4> key_ = kKey;
};

// The common case: a well-formed masked frame.
std::string Frame(uint8_t opcode, std::string_view payload) { return ClientFrame(opcode, payload).Build(); }
std::string Fragment(uint8_t opcode, std::string_view payload) {
  return ClientFrame(opcode, payload).NotFinal().Build();
}

// An event with its views copied, so it outlives the next Parse() call.
struct Seen {
  Kind kind;
  bool binary = false;
  std::string data;
  uint16_t close_code = 0;
  std::string reason;
};

// Feeds `input` `chunk` bytes at a time (0: all at once) the way a connection does, and
// records every event up to the first error. Checks that consumption is consistent.
std::vector<Seen> ParseAll(FrameParser& parser, std::string_view input, size_t chunk = 0) {
  std::vector<Seen> seen;
  if (chunk == 0) chunk = input.size() == 0 ? 1 : input.size();
  for (size_t offset = 0; offset < input.size() || offset == 0; offset += chunk) {
    std::string_view buf = input.substr(offset, chunk);
    size_t n = 0;
    FrameParser::Event ev;
    while ((ev = parser.Parse(buf, &n)).kind != Kind::kNeedMore) {
      EXPECT_LE(n, buf.size());
      buf.remove_prefix(n);
      seen.push_back({ev.kind, ev.binary, std::string(ev.data), ev.close_code, std::string(ev.reason)});
      if (ev.kind == Kind::kError) return seen;
    }
    EXPECT_EQ(n, buf.size()) << "kNeedMore must consume everything";
    if (input.empty()) break;
  }
  return seen;
}

// Parses `input`, which must end in an error, and returns the close code that error asks for.
uint16_t ErrorCode(std::string_view input, size_t max_message_bytes = 1 << 20) {
  FrameParser parser(max_message_bytes);
  const std::vector<Seen> seen = ParseAll(parser, input);
  if (seen.empty() || seen.back().kind != Kind::kError) {
    ADD_FAILURE() << "no error; " << seen.size() << " events";
    return 0;
  }
  EXPECT_FALSE(seen.back().reason.empty());
  return seen.back().close_code;
}

std::string Header(Opcode op, uint64_t len) {
  uint8_t out[kMaxHeaderBytes];
  const size_t n = EncodeHeader(op, len, out);
  return std::string(reinterpret_cast<const char*>(out), n);
}

TEST(WsCodecEncodeTest, HeaderLengthForms) {
  EXPECT_EQ(Header(kText, 0), Bytes({0x81, 0x00}));
  EXPECT_EQ(Header(kText, 125), Bytes({0x81, 0x7D}));
  EXPECT_EQ(Header(kBinary, 126), Bytes({0x82, 0x7E, 0x00, 0x7E}));
  EXPECT_EQ(Header(kBinary, 65535), Bytes({0x82, 0x7E, 0xFF, 0xFF}));
  EXPECT_EQ(Header(kBinary, 65536), Bytes({0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00}));
  EXPECT_EQ(Header(kBinary, 0x0102030405060708ULL), Bytes({0x82, 0x7F, 1, 2, 3, 4, 5, 6, 7, 8}));
}

TEST(WsCodecEncodeTest, HeaderOpcodes) {
  EXPECT_EQ(Header(kClose, 2), Bytes({0x88, 0x02}));
  EXPECT_EQ(Header(kPing, 0), Bytes({0x89, 0x00}));
  EXPECT_EQ(Header(kPong, 5), Bytes({0x8A, 0x05}));
}

TEST(WsCodecEncodeTest, ClosePayloadShort) {
  EXPECT_EQ(ClosePayload(1000, ""), Bytes({0x03, 0xE8}));
  EXPECT_EQ(ClosePayload(4001, "bye"), Bytes({0x0F, 0xA1}) + "bye");
}

TEST(WsCodecEncodeTest, ClosePayloadTruncatesTo125Bytes) {
  const std::string reason(200, 'x');
  const std::string payload = ClosePayload(1008, reason);
  EXPECT_EQ(payload.size(), 125u);
  EXPECT_EQ(payload.substr(2), std::string(123, 'x'));
  // Exactly 123 bytes of reason fits unchanged.
  EXPECT_EQ(ClosePayload(1008, std::string(123, 'y')).size(), 125u);
}

TEST(WsCodecEncodeTest, ClosePayloadNeverSplitsUtf8) {
  // 122 ASCII bytes then "é" (2 bytes) straddles the 123-byte limit: it is dropped whole.
  const std::string two = std::string(122, 'a') + "\xC3\xA9";
  EXPECT_EQ(ClosePayload(1000, two).substr(2), std::string(122, 'a'));
  // 121 ASCII bytes then a 4-byte emoji: drops the emoji, 121 bytes remain.
  const std::string four = std::string(121, 'a') + "\xF0\x9F\x98\x80" + "tail";
  const std::string payload = ClosePayload(1000, four);
  EXPECT_EQ(payload.substr(2), std::string(121, 'a'));
  Utf8Validator v;
  EXPECT_TRUE(v.Feed(payload.substr(2)) && v.Complete());
  // A 3-byte character ending exactly at the limit is kept.
  const std::string fits = std::string(120, 'a') + "\xE2\x82\xAC" + "more";
  EXPECT_EQ(ClosePayload(1000, fits).substr(2), std::string(120, 'a') + "\xE2\x82\xAC");
}

TEST(WsCodecHandshakeTest, AcceptKeyRfcExample) {
  // RFC 6455 1.3; `openssl sha1 -binary | base64` over key + GUID agrees.
  EXPECT_EQ(AcceptKey("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

TEST(WsCodecHandshakeTest, ValidKey) {
  EXPECT_TRUE(ValidKey("dGhlIHNhbXBsZSBub25jZQ=="));
  EXPECT_TRUE(ValidKey("AAAAAAAAAAAAAAAAAAAAAA=="));
  EXPECT_TRUE(ValidKey("+/+/+/+/+/+/+/+/+/+/+w=="));
  EXPECT_FALSE(ValidKey(""));
  EXPECT_FALSE(ValidKey("dGhlIHNhbXBsZSBub25jZQ="));                          // 23 chars
  EXPECT_FALSE(ValidKey("dGhlIHNhbXBsZSBub25jZQ==="));                        // 25 chars
  EXPECT_FALSE(ValidKey("dGhlIHNhbXBsZSBub25jZQAA"));                         // 18 bytes, no padding
  EXPECT_FALSE(ValidKey("dGhlIHNhbXBsZSBub25jZ==="));                         // 15 bytes
  EXPECT_FALSE(ValidKey("dGhlIHNhbXBsZSBub25j-Q=="));                         // base64url alphabet
  EXPECT_FALSE(ValidKey("dGhlIHNhbXBsZSBub25jZ Q=="));                        // embedded space
  EXPECT_FALSE(ValidKey(std::string_view("dGhlIHNhbXBsZSBub25jZ\0==", 24)));  // NUL
}

bool ValidUtf8(std::string_view s) {
  Utf8Validator v;
  return v.Feed(s) && v.Complete();
}

TEST(WsCodecUtf8Test, AcceptsValid) {
  EXPECT_TRUE(ValidUtf8(""));
  EXPECT_TRUE(ValidUtf8("plain ascii, long enough to use the eight-byte path"));
  EXPECT_TRUE(ValidUtf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));
  EXPECT_TRUE(ValidUtf8("\xC2\x80"));          // U+0080, smallest 2-byte
  EXPECT_TRUE(ValidUtf8("\xE0\xA0\x80"));      // U+0800, smallest 3-byte
  EXPECT_TRUE(ValidUtf8("\xED\x9F\xBF"));      // U+D7FF, just below the surrogates
  EXPECT_TRUE(ValidUtf8("\xEE\x80\x80"));      // U+E000, just above them
  EXPECT_TRUE(ValidUtf8("\xF0\x90\x80\x80"));  // U+10000, smallest 4-byte
  EXPECT_TRUE(ValidUtf8("\xF4\x8F\xBF\xBF"));  // U+10FFFF
  EXPECT_TRUE(ValidUtf8(std::string_view("a\0b", 3)));
}

TEST(WsCodecUtf8Test, RejectsInvalid) {
  EXPECT_FALSE(ValidUtf8("\x80"));              // stray continuation
  EXPECT_FALSE(ValidUtf8("abcdefgh\xBF"));      // stray continuation after the fast path
  EXPECT_FALSE(ValidUtf8("\xC0\x80"));          // overlong NUL
  EXPECT_FALSE(ValidUtf8("\xC1\xBF"));          // overlong 2-byte
  EXPECT_FALSE(ValidUtf8("\xE0\x9F\xBF"));      // overlong 3-byte
  EXPECT_FALSE(ValidUtf8("\xF0\x8F\xBF\xBF"));  // overlong 4-byte
  EXPECT_FALSE(ValidUtf8("\xED\xA0\x80"));      // U+D800
  EXPECT_FALSE(ValidUtf8("\xED\xBF\xBF"));      // U+DFFF
  EXPECT_FALSE(ValidUtf8("\xF4\x90\x80\x80"));  // U+110000
  EXPECT_FALSE(ValidUtf8("\xF5\x80\x80\x80"));
  EXPECT_FALSE(ValidUtf8("\xFF"));
  EXPECT_FALSE(ValidUtf8("\xC3"));      // truncated
  EXPECT_FALSE(ValidUtf8("\xE2\x82"));  // truncated
  EXPECT_FALSE(ValidUtf8("\xC3\x28"));  // continuation missing
  EXPECT_FALSE(
      ValidUtf8("\xF0\x9F\x98"
                "a"));  // 4-byte cut short
}

TEST(WsCodecUtf8Test, SplitAcrossFeeds) {
  const std::string text = "x\xC3\xA9y\xE2\x82\xAC\xF0\x9F\x98\x80z";
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    Utf8Validator v;
    EXPECT_TRUE(v.Feed(std::string_view(text).substr(0, cut))) << cut;
    EXPECT_TRUE(v.Feed(std::string_view(text).substr(cut))) << cut;
    EXPECT_TRUE(v.Complete()) << cut;
  }
  // A surrogate split after its lead byte is still caught on the next feed.
  Utf8Validator v;
  EXPECT_TRUE(v.Feed("\xED"));
  EXPECT_FALSE(v.Complete());
  EXPECT_FALSE(v.Feed("\xA0\x80"));
}

TEST(WsCodecUtf8Test, FailureIsStickyUntilReset) {
  Utf8Validator v;
  EXPECT_FALSE(v.Feed("\xFF"));
  EXPECT_FALSE(v.Feed("ok"));
  EXPECT_FALSE(v.Complete());
  v.Reset();
  EXPECT_TRUE(v.Feed("ok"));
  EXPECT_TRUE(v.Complete());
}

TEST(WsCodecParserTest, RfcMaskedHelloExample) {
  // RFC 6455 5.7: a single-frame masked text message containing "Hello".
  FrameParser parser(1024);
  const std::string wire = Bytes({0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58});
  size_t n = 0;
  const FrameParser::Event ev = parser.Parse(wire, &n);
  EXPECT_EQ(ev.kind, Kind::kMessage);
  EXPECT_FALSE(ev.binary);
  EXPECT_EQ(ev.data, "Hello");
  EXPECT_EQ(n, wire.size());
  EXPECT_EQ(parser.Parse({}, &n).kind, Kind::kNeedMore);
  EXPECT_EQ(n, 0u);
}

TEST(WsCodecParserTest, MaskedTextInOneGo) {
  FrameParser parser(1024);
  const std::string text = "{\"op\":\"subscribe\",\"room\":\"lobby\"}";
  const auto seen = ParseAll(parser, Frame(kText, text));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_FALSE(seen[0].binary);
  EXPECT_EQ(seen[0].data, text);
}

TEST(WsCodecParserTest, BinaryMessage) {
  FrameParser parser(1024);
  const std::string payload = Bytes({0x00, 0xFF, 0xC0, 0x80, 0x01});  // not UTF-8, must not matter
  const auto seen = ParseAll(parser, Frame(kBinary, payload));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_TRUE(seen[0].binary);
  EXPECT_EQ(seen[0].data, payload);
}

TEST(WsCodecParserTest, EmptyMessage) {
  FrameParser parser(1024);
  const auto seen = ParseAll(parser, Frame(kText, ""));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_EQ(seen[0].data, "");
}

TEST(WsCodecParserTest, FedOneByteAtATime) {
  FrameParser parser(1024);
  const std::string text = "h\xC3\xA9llo, a message longer than one unmasking word";
  const std::string wire = Frame(kText, text) + Frame(kPing, "p");
  const auto seen = ParseAll(parser, wire, 1);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_EQ(seen[0].data, text);
  EXPECT_EQ(seen[1].kind, Kind::kPing);
  EXPECT_EQ(seen[1].data, "p");
}

TEST(WsCodecParserTest, SplitAtEveryOffset) {
  // Covers a split inside the header, the mask and the payload at every mask phase.
  const std::string text = "0123456789abcdefghijklmnopqrstuvwxyz";
  const std::string wire = ClientFrame(kText, text).LengthBits(64).Key({0x01, 0x82, 0x43, 0xC4}).Build();
  for (size_t cut = 0; cut <= wire.size(); ++cut) {
    FrameParser parser(1024);
    size_t n = 0;
    const std::string_view first = std::string_view(wire).substr(0, cut);
    const std::string_view second = std::string_view(wire).substr(cut);
    FrameParser::Event ev = parser.Parse(first, &n);
    if (cut < wire.size()) {
      ASSERT_EQ(ev.kind, Kind::kNeedMore) << cut;
      ASSERT_EQ(n, first.size()) << cut;
      ev = parser.Parse(second, &n);
      ASSERT_EQ(n, second.size()) << cut;
    }
    ASSERT_EQ(ev.kind, Kind::kMessage) << cut;
    EXPECT_EQ(ev.data, text) << cut;
  }
}

TEST(WsCodecParserTest, TwoFramesInOneBuffer) {
  FrameParser parser(1024);
  const std::string first = Frame(kText, "first message");
  const std::string wire = first + Frame(kBinary, "2nd");
  size_t n = 0;
  FrameParser::Event ev = parser.Parse(wire, &n);
  EXPECT_EQ(ev.kind, Kind::kMessage);
  EXPECT_EQ(ev.data, "first message");
  EXPECT_EQ(n, first.size()) << "must stop after the first event";
  ev = parser.Parse(std::string_view(wire).substr(n), &n);
  EXPECT_EQ(ev.kind, Kind::kMessage);
  EXPECT_TRUE(ev.binary);
  EXPECT_EQ(ev.data, "2nd");  // a shorter message after a longer one: no leftovers
  EXPECT_EQ(n, wire.size() - first.size());
}

TEST(WsCodecParserTest, FragmentedMessageWithInterleavedControlFrames) {
  const std::string wire = Fragment(kText, "Hel") + Frame(kPing, "are you there") +
                           Fragment(kContinuation, "lo, ") + Frame(kPong, "") + Frame(kContinuation, "world");
  for (size_t chunk : {size_t{0}, size_t{1}, size_t{5}}) {
    FrameParser p(1024);
    const auto seen = ParseAll(p, wire, chunk);
    ASSERT_EQ(seen.size(), 3u) << chunk;
    EXPECT_EQ(seen[0].kind, Kind::kPing);
    EXPECT_EQ(seen[0].data, "are you there");
    EXPECT_EQ(seen[1].kind, Kind::kPong);
    EXPECT_EQ(seen[1].data, "");
    EXPECT_EQ(seen[2].kind, Kind::kMessage);
    EXPECT_FALSE(seen[2].binary);
    EXPECT_EQ(seen[2].data, "Hello, world");
  }
}

TEST(WsCodecParserTest, FragmentedBinaryKeepsItsType) {
  FrameParser parser(1024);
  const std::string wire = Fragment(kBinary, "\xFF") + Frame(kContinuation, "\xFE");
  const auto seen = ParseAll(parser, wire);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_TRUE(seen[0].binary);
  EXPECT_EQ(seen[0].data, "\xFF\xFE");
}

TEST(WsCodecParserTest, SixteenAndSixtyFourBitLengths) {
  const std::string medium(300, 'm');
  const std::string large(70000, 'L');
  FrameParser parser(100000);
  const auto seen = ParseAll(parser, Frame(kBinary, medium) + Frame(kBinary, large));
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].data, medium);
  EXPECT_EQ(seen[1].data, large);
}

TEST(WsCodecParserTest, AcceptsNonMinimalLengths) {
  FrameParser parser(1024);
  const auto seen =
      ParseAll(parser, ClientFrame(kText, "abc").LengthBits(16).Build() +
                           ClientFrame(kText, "defg").LengthBits(64).Build() + Frame(kPing, ""));
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0].data, "abc");
  EXPECT_EQ(seen[1].data, "defg");
  EXPECT_EQ(seen[2].kind, Kind::kPing);
}

TEST(WsCodecParserTest, MaxSizeExactlyAtLimit) {
  FrameParser parser(10);
  auto seen = ParseAll(parser, Frame(kText, "0123456789"));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_EQ(seen[0].data, "0123456789");
  // The limit applies per message, not per connection.
  seen = ParseAll(parser, Fragment(kText, "01234") + Frame(kContinuation, "56789"));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_EQ(seen[0].data, "0123456789");
}

TEST(WsCodecParserTest, MaxSizeOneOver) {
  EXPECT_EQ(ErrorCode(Frame(kText, "0123456789a"), 10), 1009);
  EXPECT_EQ(ErrorCode(Fragment(kText, "01234") + Frame(kContinuation, "56789a"), 10), 1009);
}

TEST(WsCodecParserTest, TooBigIsDetectedFromTheHeader) {
  // Only the header of a frame announcing 1 GiB: the error comes before any payload.
  FrameParser parser(1 << 20);
  const std::string header = ClientFrame(kBinary, "").Announce(uint64_t{1} << 30).Build();
  size_t n = 0;
  const FrameParser::Event ev = parser.Parse(header, &n);
  EXPECT_EQ(ev.kind, Kind::kError);
  EXPECT_EQ(ev.close_code, 1009);
}

TEST(WsCodecParserTest, ReservedBits) {
  for (uint8_t rsv : {1, 2, 4, 7}) {
    EXPECT_EQ(ErrorCode(ClientFrame(kText, "x").Rsv(rsv).Build()), 1002) << int{rsv};
  }
}

TEST(WsCodecParserTest, UnknownOpcodes) {
  for (uint8_t op : {3, 4, 5, 6, 7, 11, 12, 13, 14, 15}) {
    EXPECT_EQ(ErrorCode(Frame(op, "x")), 1002) << int{op};
  }
}

TEST(WsCodecParserTest, UnmaskedFrame) {
  EXPECT_EQ(ErrorCode(ClientFrame(kText, "Hello").Unmasked().Build()), 1002);
  // Detected from the first two bytes, before the payload arrives.
  FrameParser parser(1024);
  size_t n = 0;
  EXPECT_EQ(parser.Parse(Bytes({0x81, 0x05}), &n).kind, Kind::kError);
}

TEST(WsCodecParserTest, ControlFrameTooLong) {
  const std::string p126(126, 'p');
  EXPECT_EQ(ErrorCode(Frame(kPing, p126)), 1002);
  EXPECT_EQ(ErrorCode(Frame(kPong, p126)), 1002);
  EXPECT_EQ(ErrorCode(Frame(kClose, p126)), 1002);
  // 125 is the largest allowed.
  FrameParser parser(1024);
  const std::string p125(125, 'p');
  const auto seen = ParseAll(parser, Frame(kPing, p125));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kPing);
  EXPECT_EQ(seen[0].data, p125);
}

TEST(WsCodecParserTest, FragmentedControlFrame) {
  EXPECT_EQ(ErrorCode(Fragment(kPing, "x")), 1002);
  EXPECT_EQ(ErrorCode(Fragment(kClose, "")), 1002);
}

TEST(WsCodecParserTest, SixtyFourBitLengthWithTopBitSet) {
  EXPECT_EQ(ErrorCode(ClientFrame(kBinary, "").Announce(uint64_t{1} << 63).Build(), UINT64_MAX), 1002);
}

TEST(WsCodecParserTest, ContinuationWithoutMessage) {
  EXPECT_EQ(ErrorCode(Frame(kContinuation, "x")), 1002);
  // Also after a message has been completed.
  EXPECT_EQ(ErrorCode(Frame(kText, "a") + Frame(kContinuation, "b")), 1002);
}

TEST(WsCodecParserTest, NewMessageInsideFragmentedMessage) {
  EXPECT_EQ(ErrorCode(Fragment(kText, "a") + Frame(kText, "b")), 1002);
  EXPECT_EQ(ErrorCode(Fragment(kText, "a") + Frame(kBinary, "b")), 1002);
}

TEST(WsCodecParserTest, InvalidUtf8Text) {
  EXPECT_EQ(ErrorCode(Frame(kText, "bad \xC0\x80")), 1007);
  // Truncated at the end of the final fragment.
  EXPECT_EQ(ErrorCode(Frame(kText, "ok \xE2\x82")), 1007);
  EXPECT_EQ(ErrorCode(Fragment(kText, "ok") + Frame(kContinuation, "\xE2\x82")), 1007);
}

TEST(WsCodecParserTest, Utf8SplitAcrossFragmentsIsValid) {
  FrameParser parser(1024);
  const auto seen = ParseAll(parser, Fragment(kText, "caf\xC3") + Frame(kContinuation, "\xA9!"));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kMessage);
  EXPECT_EQ(seen[0].data, "caf\xC3\xA9!");
}

TEST(WsCodecParserTest, InvalidUtf8FailsEarly) {
  // The first fragment is already invalid: the error comes before the message is finished.
  FrameParser parser(1024);
  size_t n = 0;
  FrameParser::Event ev = parser.Parse(Fragment(kText, "\xFF"), &n);
  EXPECT_EQ(ev.kind, Kind::kError);
  EXPECT_EQ(ev.close_code, 1007);
  // Even within a frame whose payload has not fully arrived.
  FrameParser partial(1024);
  const std::string wire = Frame(kText, "ab\xFF and more that has not arrived yet");
  ev = partial.Parse(std::string_view(wire).substr(0, 6 + 3), &n);
  EXPECT_EQ(ev.kind, Kind::kError);
  EXPECT_EQ(ev.close_code, 1007);
}

TEST(WsCodecParserTest, CloseWithCodeAndReason) {
  FrameParser parser(1024);
  const auto seen = ParseAll(parser, Frame(kClose, Bytes({0x03, 0xE9}) + "going \xC3\xA9"));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kClose);
  EXPECT_EQ(seen[0].close_code, 1001);
  EXPECT_EQ(seen[0].reason, "going \xC3\xA9");
}

TEST(WsCodecParserTest, CloseWithCodeOnly) {
  FrameParser parser(1024);
  const auto seen = ParseAll(parser, Frame(kClose, Bytes({0x0F, 0xA0})));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kClose);
  EXPECT_EQ(seen[0].close_code, 4000);
  EXPECT_EQ(seen[0].reason, "");
}

TEST(WsCodecParserTest, CloseWithoutPayload) {
  FrameParser parser(1024);
  const auto seen = ParseAll(parser, Frame(kClose, ""));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kClose);
  EXPECT_EQ(seen[0].close_code, 1005);
  EXPECT_EQ(seen[0].reason, "");
}

TEST(WsCodecParserTest, CloseInsideFragmentedMessage) {
  FrameParser parser(1024);
  const auto seen = ParseAll(parser, Fragment(kText, "part") + Frame(kClose, Bytes({0x03, 0xE8})));
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].kind, Kind::kClose);
  EXPECT_EQ(seen[0].close_code, 1000);
}

TEST(WsCodecParserTest, CloseOneBytePayload) {
  // 0x0F followed by anything would read as a valid 3000-range code, so only the length rule
  // can refuse this.
  EXPECT_EQ(ErrorCode(Frame(kClose, Bytes({0x0F}))), 1002);
}

std::string CodeBytes(uint16_t code) {
  return Bytes({static_cast<uint8_t>(code >> 8), static_cast<uint8_t>(code)});
}

TEST(WsCodecParserTest, CloseCodeValidity) {
  for (uint16_t code : {0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535}) {
    EXPECT_EQ(ErrorCode(Frame(kClose, CodeBytes(code))), 1002) << code;
  }
  for (uint16_t code : {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999}) {
    FrameParser parser(1024);
    const auto seen = ParseAll(parser, Frame(kClose, CodeBytes(code)));
    ASSERT_EQ(seen.size(), 1u) << code;
    EXPECT_EQ(seen[0].kind, Kind::kClose) << code;
    EXPECT_EQ(seen[0].close_code, code);
  }
}

TEST(WsCodecParserTest, CloseReasonNotUtf8) {
  EXPECT_EQ(ErrorCode(Frame(kClose, CodeBytes(1000) + "\xED\xA0\x80")), 1007);
  EXPECT_EQ(ErrorCode(Frame(kClose, CodeBytes(1000) + "cut \xC3")), 1007);
}

TEST(WsCodecParserTest, ErrorIsSticky) {
  FrameParser parser(1024);
  size_t n = 0;
  FrameParser::Event ev = parser.Parse(ClientFrame(kText, "x").Rsv(4).Build(), &n);
  ASSERT_EQ(ev.kind, Kind::kError);
  const std::string valid = Frame(kText, "fine");
  ev = parser.Parse(valid, &n);
  EXPECT_EQ(ev.kind, Kind::kError);
  EXPECT_EQ(ev.close_code, 1002);
  EXPECT_EQ(n, 0u);
}

}  // namespace
}  // namespace chorus::net::ws
