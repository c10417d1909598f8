// The WebSocket frame protocol (docs/live.md "Frame protocol"), in both encodings: protobuf
// (chorus.live.v1.ServerFrame / ClientFrame, binary frames, the default) and JSON (text frames,
// `format=json`). Every server frame is encoded once and the bytes shared by all receivers.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "live/message.h"

namespace chorus::live {

// One server frame in both encodings.
struct EncodedFrame {
  std::shared_ptr<const std::string> proto;
  std::shared_ptr<const std::string> json;
  const std::shared_ptr<const std::string>& For(bool json_format) const { return json_format ? json : proto; }
};

// `dropped`: messages the room's dispatcher dropped since the previous block.
EncodedFrame EncodeBlock(std::string_view room, uint64_t seq, int64_t tick_at, int64_t online, uint64_t dropped,
                         const std::vector<MessagePtr>& messages);
EncodedFrame EncodePrivate(const Message& message);
EncodedFrame EncodeWelcome(std::string_view user, uint64_t connection, int64_t heartbeat_ms);
EncodedFrame EncodePong(int64_t ts, int64_t server_ts);
EncodedFrame EncodeError(std::string_view code, std::string_view message);
EncodedFrame EncodeSubscribed(std::string_view room, int64_t online);
EncodedFrame EncodeUnsubscribed(std::string_view room);
EncodedFrame EncodeChatOk(std::string_view room, uint64_t id);

struct ClientOp {
  enum class Kind { kSubscribe, kUnsubscribe, kPing, kChat };
  Kind kind = Kind::kPing;
  std::string room;
  int64_t ts = 0;
  std::string text;  // kChat
};

// Parses a client frame: binary = protobuf ClientFrame, text = JSON {"op": ..., ...}. Errors are
// InvalidArgument with a message for the client; an unknown op is NotFound ("unknown op ...").
Result<ClientOp> ParseClientFrame(std::string_view data, bool binary);

}  // namespace chorus::live
