#include "ws_client.h"

#include <gtest/gtest.h>

#include <string>

namespace chorus::bench {
namespace {

using namespace std::string_view_literals;

std::string ServerFrame(uint8_t first_byte, const std::string& payload) {
  std::string f(1, static_cast<char>(first_byte));
  if (payload.size() < 126) {
    f += static_cast<char>(payload.size());
  } else if (payload.size() <= 0xFFFF) {
    f += static_cast<char>(126);
    f += static_cast<char>(payload.size() >> 8);
    f += static_cast<char>(payload.size() & 0xFF);
  } else {
    f += static_cast<char>(127);
    for (int shift = 56; shift >= 0; shift -= 8) f += static_cast<char>(payload.size() >> shift);
  }
  return f + payload;
}

TEST(WsClientTest, UpgradeRequestCarriesTheRfc6455Headers) {
  const std::string req =
      BuildWsUpgradeRequest("127.0.0.1", 8080, "/v1/ws?format=json&token=t", "the sample nonce");
  EXPECT_EQ(req.rfind("GET /v1/ws?format=json&token=t HTTP/1.1\r\nHost: ", 0), 0u);
  EXPECT_NE(req.find("Host: 127.0.0.1:8080\r\n"), std::string::npos);
  EXPECT_NE(req.find("Upgrade: websocket\r\n"), std::string::npos);
  EXPECT_NE(req.find("Connection: Upgrade\r\n"), std::string::npos);
  EXPECT_NE(req.find("Sec-WebSocket-Version: 13\r\n"), std::string::npos);
  // RFC 6455 section 1.3's example nonce.
  EXPECT_NE(req.find("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), std::string::npos);
  EXPECT_EQ(req.substr(req.size() - 4), "\r\n\r\n");
}

TEST(WsClientTest, HandshakeAcceptsOnly101WithUpgrade) {
  size_t head = 0;
  int status = 0;
  const std::string ok =
      "HTTP/1.1 101 Switching Protocols\r\nUPGRADE: WebSocket\r\nConnection: upgrade\r\n"
      "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
  EXPECT_EQ(ParseWsUpgradeResponse(ok.substr(0, 20), &head, &status), WsHandshake::kNeedMore);
  ASSERT_EQ(ParseWsUpgradeResponse(ok + "\x81\x02hi", &head, &status), WsHandshake::kUpgraded);
  EXPECT_EQ(head, ok.size());
  EXPECT_EQ(status, 101);

  EXPECT_EQ(ParseWsUpgradeResponse("HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n", &head, &status),
            WsHandshake::kRejected);
  EXPECT_EQ(status, 401);
  EXPECT_EQ(ParseWsUpgradeResponse("HTTP/1.1 101 Switching Protocols\r\n\r\n", &head, &status),
            WsHandshake::kRejected);  // no Upgrade header
  EXPECT_EQ(ParseWsUpgradeResponse("garbage\r\n\r\n", &head, &status), WsHandshake::kRejected);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(ParseWsUpgradeResponse(std::string(10000, 'x'), &head, &status), WsHandshake::kRejected);
}

TEST(WsClientTest, ParsesServerFramesOfEveryLengthEncoding) {
  for (size_t len : {size_t{0}, size_t{125}, size_t{126}, size_t{65535}, size_t{65536}}) {
    const std::string payload(len, 'a');
    const std::string wire = ServerFrame(0x81, payload) + "\x8a";  // and the start of the next
    WsFrame frame;
    size_t used = 0;
    ASSERT_EQ(ParseWsServerFrame(wire, &frame, &used), WsParse::kFrame) << len;
    EXPECT_TRUE(frame.fin);
    EXPECT_EQ(frame.opcode, kWsText);
    EXPECT_EQ(frame.payload.size(), len);
    EXPECT_EQ(used, wire.size() - 1);
    // Every strict prefix needs more bytes.
    for (size_t cut : {size_t{0}, size_t{1}, wire.size() / 2, wire.size() - 2}) {
      EXPECT_EQ(ParseWsServerFrame(std::string_view(wire).substr(0, cut), &frame, &used), WsParse::kNeedMore)
          << len << " cut " << cut;
    }
  }
}

TEST(WsClientTest, RejectsFramesAServerMustNotSend) {
  WsFrame frame;
  size_t used = 0;
  EXPECT_EQ(ParseWsServerFrame("\x81\x82xxxxhi", &frame, &used), WsParse::kError);  // masked
  EXPECT_EQ(ParseWsServerFrame("\xc1\x02hi", &frame, &used), WsParse::kError);      // RSV1
  EXPECT_EQ(ParseWsServerFrame("\x83\x00"sv, &frame, &used), WsParse::kError);      // opcode 3
  EXPECT_EQ(ParseWsServerFrame("\x8b\x00"sv, &frame, &used), WsParse::kError);      // opcode 11
  EXPECT_EQ(ParseWsServerFrame("\x09\x00"sv, &frame, &used), WsParse::kError);      // fragmented ping
  EXPECT_EQ(ParseWsServerFrame(ServerFrame(0x89, std::string(126, 'p')), &frame, &used),
            WsParse::kError);  // control frame over 125 bytes
  EXPECT_EQ(ParseWsServerFrame(ServerFrame(0x82, std::string(2000, 'b')), &frame, &used, 1000),
            WsParse::kError);                                              // over max_payload
  const std::string huge("\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00", 10);  // 2^63 bytes
  EXPECT_EQ(ParseWsServerFrame(huge, &frame, &used), WsParse::kError);
}

TEST(WsClientTest, ClientFramesAreMaskedAndRoundTrip) {
  for (size_t len : {size_t{5}, size_t{300}, size_t{70000}}) {
    std::string payload;
    for (size_t i = 0; i < len; ++i) payload += static_cast<char>('a' + i % 26);
    std::string wire;
    AppendWsClientFrame(kWsPong, payload, 0x11223344, &wire);
    ASSERT_GE(wire.size(), len + 6);
    EXPECT_EQ(static_cast<uint8_t>(wire[0]), 0x8A);
    EXPECT_NE(static_cast<uint8_t>(wire[1]) & 0x80, 0) << "mask bit";
    const size_t header = len < 126 ? 2 : len <= 0xFFFF ? 4 : 10;
    const std::string mask = wire.substr(header, 4);
    EXPECT_EQ(mask, std::string("\x11\x22\x33\x44"));
    std::string unmasked = wire.substr(header + 4);
    for (size_t i = 0; i < unmasked.size(); ++i) unmasked[i] ^= mask[i % 4];
    EXPECT_EQ(unmasked, payload);
  }
}

}  // namespace
}  // namespace chorus::bench
