// Minimal RFC 6455 client pieces for load generators: the upgrade request, the check of the
// server's answer, masked client frames and an incremental parser of server frames.
//
// Just enough for `chorus-bench live-clients` to hold thousands of subscriber sockets in one epoll
// loop at a few hundred bytes each, with no per-frame allocation: frames are parsed in place from
// whatever buffer the bytes are in and handed out as views. No extensions are offered (so RSV bits
// must be clear), server frames must be unmasked, control frames must be final and at most 125
// bytes. Sec-WebSocket-Accept is not verified: the peer is a server we start ourselves, and the
// check would cost a SHA-1 per connection for nothing a benchmark needs.
//
// Pure functions and plain data, no sockets, no threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace chorus::bench {

enum WsOpcode : uint8_t {
  kWsContinuation = 0x0,
  kWsText = 0x1,
  kWsBinary = 0x2,
  kWsClose = 0x8,
  kWsPing = 0x9,
  kWsPong = 0xA,
};

// "GET <target> HTTP/1.1" with the upgrade headers; `key16` is 16 bytes sent base64-encoded as
// Sec-WebSocket-Key.
std::string BuildWsUpgradeRequest(std::string_view host, uint16_t port, std::string_view target,
                                  std::string_view key16);

// Looks for the end of the server's HTTP answer at the start of `data`.
//   kNeedMore: no "\r\n\r\n" yet (and fewer than max_head bytes);
//   kUpgraded: status 101 with "Upgrade: websocket"; *head_len says where frames start;
//   kRejected: any other complete answer (or a head over max_head bytes); *status holds its
//              status code, 0 when it was not even HTTP.
enum class WsHandshake { kNeedMore, kUpgraded, kRejected };
WsHandshake ParseWsUpgradeResponse(std::string_view data, size_t* head_len, int* status,
                                   size_t max_head = 8192);

// One server frame, pointing into the parsed buffer.
struct WsFrame {
  bool fin = false;
  uint8_t opcode = 0;
  std::string_view payload;
};

// Parses the frame at the start of `data`.
//   kNeedMore: `data` holds only part of a frame (nothing consumed);
//   kFrame: *frame is set and *consumed is its size on the wire;
//   kError: not a frame this client accepts (masked, RSV bits, reserved opcode, bad control
//           frame, or a payload over max_payload bytes).
enum class WsParse { kNeedMore, kFrame, kError };
WsParse ParseWsServerFrame(std::string_view data, WsFrame* frame, size_t* consumed,
                           uint64_t max_payload = 16 * 1024 * 1024);

// A final client frame with the payload masked by `mask_key` (RFC 6455 5.3: every client frame
// is masked). Appends to *out.
void AppendWsClientFrame(uint8_t opcode, std::string_view payload, uint32_t mask_key, std::string* out);

}  // namespace chorus::bench
