#include "ws_client.h"

#include <cctype>

namespace chorus::bench {
namespace {

std::string Base64(std::string_view in) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    const uint32_t v = (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8) |
                       static_cast<uint8_t>(in[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i + 1 == in.size()) {
    const uint32_t v = static_cast<uint8_t>(in[i]) << 16;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += "==";
  } else if (i + 2 == in.size()) {
    const uint32_t v = (static_cast<uint8_t>(in[i]) << 16) | (static_cast<uint8_t>(in[i + 1]) << 8);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

bool HasHeaderValue(std::string_view head, std::string_view name, std::string_view value) {
  // Case-insensitive search for a "name: ...value..." line; good enough for one known server.
  auto lower = [](std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
  };
  const std::string h = lower(head);
  const std::string n = "\r\n" + lower(name) + ":";
  const std::string v = lower(value);
  for (size_t pos = h.find(n); pos != std::string::npos; pos = h.find(n, pos + 1)) {
    const size_t eol = h.find("\r\n", pos + n.size());
    if (h.substr(pos + n.size(), eol - pos - n.size()).find(v) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

std::string BuildWsUpgradeRequest(std::string_view host, uint16_t port, std::string_view target,
                                  std::string_view key16) {
  std::string req;
  req.reserve(256 + target.size());
  req += "GET ";
  req += target;
  req += " HTTP/1.1\r\nHost: ";
  req += host;
  req += ':';
  req += std::to_string(port);
  req += "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ";
  req += Base64(key16);
  req += "\r\nSec-WebSocket-Version: 13\r\nUser-Agent: chorus-bench\r\n\r\n";
  return req;
}

WsHandshake ParseWsUpgradeResponse(std::string_view data, size_t* head_len, int* status, size_t max_head) {
  *status = 0;
  const size_t end = data.find("\r\n\r\n");
  if (end == std::string_view::npos) {
    return data.size() > max_head ? WsHandshake::kRejected : WsHandshake::kNeedMore;
  }
  const std::string_view head = data.substr(0, end + 2);  // keeps the last header's "\r\n"
  *head_len = end + 4;
  if (head.size() < 12 || head.substr(0, 7) != "HTTP/1." || head[8] != ' ') {
    return WsHandshake::kRejected;
  }
  int code = 0;
  for (size_t i = 9; i < 12; ++i) {
    if (head[i] < '0' || head[i] > '9') return WsHandshake::kRejected;
    code = code * 10 + (head[i] - '0');
  }
  *status = code;
  if (code != 101 || !HasHeaderValue(head, "upgrade", "websocket")) return WsHandshake::kRejected;
  return WsHandshake::kUpgraded;
}

WsParse ParseWsServerFrame(std::string_view data, WsFrame* frame, size_t* consumed, uint64_t max_payload) {
  if (data.size() < 2) return WsParse::kNeedMore;
  const auto b0 = static_cast<uint8_t>(data[0]);
  const auto b1 = static_cast<uint8_t>(data[1]);
  if ((b0 & 0x70) != 0) return WsParse::kError;  // RSV1-3: no extension was negotiated
  if ((b1 & 0x80) != 0) return WsParse::kError;  // a server never masks
  const uint8_t opcode = b0 & 0x0F;
  const bool fin = (b0 & 0x80) != 0;
  const bool control = (opcode & 0x08) != 0;
  if ((opcode > kWsBinary && opcode < kWsClose) || opcode > kWsPong) return WsParse::kError;
  uint64_t len = b1 & 0x7F;
  size_t header = 2;
  if (len == 126) {
    if (data.size() < 4) return WsParse::kNeedMore;
    len = (uint64_t{static_cast<uint8_t>(data[2])} << 8) | static_cast<uint8_t>(data[3]);
    header = 4;
  } else if (len == 127) {
    if (data.size() < 10) return WsParse::kNeedMore;
    len = 0;
    for (size_t i = 2; i < 10; ++i) len = (len << 8) | static_cast<uint8_t>(data[i]);
    if (len >> 63) return WsParse::kError;
    header = 10;
  }
  if (control && (!fin || len > 125)) return WsParse::kError;
  if (len > max_payload) return WsParse::kError;
  if (data.size() - header < len) return WsParse::kNeedMore;
  frame->fin = fin;
  frame->opcode = opcode;
  frame->payload = data.substr(header, static_cast<size_t>(len));
  *consumed = header + static_cast<size_t>(len);
  return WsParse::kFrame;
}

void AppendWsClientFrame(uint8_t opcode, std::string_view payload, uint32_t mask_key, std::string* out) {
  out->push_back(static_cast<char>(0x80 | (opcode & 0x0F)));
  const uint64_t len = payload.size();
  if (len < 126) {
    out->push_back(static_cast<char>(0x80 | len));
  } else if (len <= 0xFFFF) {
    out->push_back(static_cast<char>(0x80 | 126));
    out->push_back(static_cast<char>(len >> 8));
    out->push_back(static_cast<char>(len & 0xFF));
  } else {
    out->push_back(static_cast<char>(0x80 | 127));
    for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(len >> shift));
  }
  const char mask[4] = {static_cast<char>(mask_key >> 24), static_cast<char>(mask_key >> 16),
                        static_cast<char>(mask_key >> 8), static_cast<char>(mask_key)};
  out->append(mask, 4);
  for (size_t i = 0; i < payload.size(); ++i) out->push_back(payload[i] ^ mask[i % 4]);
}

}  // namespace chorus::bench
