#include "live/frames.h"

#include <nlohmann/json.hpp>

#include "chorus/live/v1/live.pb.h"
#include "net/http.h"

namespace chorus::live {
namespace {

namespace pb = ::chorus::live::v1;

std::shared_ptr<const std::string> Share(std::string s) {
  return std::make_shared<const std::string>(std::move(s));
}

std::shared_ptr<const std::string> Serialize(const pb::ServerFrame& frame) {
  std::string out;
  frame.SerializeToString(&out);
  return Share(std::move(out));
}

void ToProto(const Message& m, pb::Message* out) {
  out->set_id(m.id);
  if (!m.room.empty()) out->set_room(m.room);
  out->set_type(m.type);
  out->set_priority(m.priority);
  out->set_created_at(m.created_at);
  if (!m.sender_id.empty() || m.sender_level != 0) {
    out->mutable_sender()->set_id(m.sender_id);
    out->mutable_sender()->set_level(m.sender_level);
  }
  out->set_payload(m.payload);
  if (!m.gain_key.empty()) out->set_gain_key(m.gain_key);
  if (!m.user.empty()) out->set_user(m.user);
}

std::string Quote(std::string_view s) { return "\"" + net::JsonEscape(s) + "\""; }

}  // namespace

EncodedFrame EncodeBlock(std::string_view room, uint64_t seq, int64_t tick_at, int64_t online, uint64_t dropped,
                         const std::vector<MessagePtr>& messages) {
  pb::ServerFrame frame;
  pb::Block* block = frame.mutable_block();
  block->set_room(std::string(room));
  block->set_seq(seq);
  block->set_tick_at(tick_at);
  block->set_online(online);
  block->set_dropped(dropped);
  size_t json_bytes = 96;
  for (const MessagePtr& m : messages) {
    ToProto(*m, block->add_messages());
    json_bytes += m->json.size() + 1;
  }
  std::string json;
  json.reserve(json_bytes);
  json += "{\"frame\":\"block\",\"room\":";
  json += Quote(room);
  json += ",\"seq\":" + std::to_string(seq) + ",\"tick_at\":" + std::to_string(tick_at) +
          ",\"online\":" + std::to_string(online) + ",\"dropped\":" + std::to_string(dropped) +
          ",\"messages\":[";
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i) json += ',';
    json += messages[i]->json;
  }
  json += "]}";
  return {Serialize(frame), Share(std::move(json))};
}

EncodedFrame EncodePrivate(const Message& m) {
  pb::ServerFrame frame;
  ToProto(m, frame.mutable_private_message()->mutable_message());
  return {Serialize(frame), Share("{\"frame\":\"private\",\"message\":" + m.json + "}")};
}

EncodedFrame EncodeWelcome(std::string_view user, uint64_t connection, int64_t heartbeat_ms) {
  pb::ServerFrame frame;
  frame.mutable_welcome()->set_user(std::string(user));
  frame.mutable_welcome()->set_connection(connection);
  frame.mutable_welcome()->set_heartbeat_ms(heartbeat_ms);
  return {Serialize(frame), Share("{\"frame\":\"welcome\",\"user\":" + Quote(user) + ",\"connection\":\"" +
                                  std::to_string(connection) + "\",\"heartbeat_ms\":" +
                                  std::to_string(heartbeat_ms) + "}")};
}

EncodedFrame EncodePong(int64_t ts, int64_t server_ts) {
  pb::ServerFrame frame;
  frame.mutable_pong()->set_ts(ts);
  frame.mutable_pong()->set_server_ts(server_ts);
  return {Serialize(frame), Share("{\"frame\":\"pong\",\"ts\":" + std::to_string(ts) +
                                  ",\"server_ts\":" + std::to_string(server_ts) + "}")};
}

EncodedFrame EncodeError(std::string_view code, std::string_view message) {
  pb::ServerFrame frame;
  frame.mutable_error()->set_code(std::string(code));
  frame.mutable_error()->set_message(std::string(message));
  return {Serialize(frame),
          Share("{\"frame\":\"error\",\"code\":" + Quote(code) + ",\"message\":" + Quote(message) + "}")};
}

EncodedFrame EncodeSubscribed(std::string_view room, int64_t online) {
  pb::ServerFrame frame;
  frame.mutable_subscribed()->set_room(std::string(room));
  frame.mutable_subscribed()->set_online(online);
  return {Serialize(frame), Share("{\"frame\":\"subscribed\",\"room\":" + Quote(room) +
                                  ",\"online\":" + std::to_string(online) + "}")};
}

EncodedFrame EncodeUnsubscribed(std::string_view room) {
  pb::ServerFrame frame;
  frame.mutable_unsubscribed()->set_room(std::string(room));
  return {Serialize(frame), Share("{\"frame\":\"unsubscribed\",\"room\":" + Quote(room) + "}")};
}

EncodedFrame EncodeChatOk(std::string_view room, uint64_t id) {
  pb::ServerFrame frame;
  frame.mutable_chat_ok()->set_room(std::string(room));
  frame.mutable_chat_ok()->set_id(id);
  return {Serialize(frame), Share("{\"frame\":\"chat_ok\",\"room\":" + Quote(room) + ",\"id\":\"" +
                                  std::to_string(id) + "\"}")};
}

Result<ClientOp> ParseClientFrame(std::string_view data, bool binary) {
  ClientOp op;
  if (binary) {
    pb::ClientFrame frame;
    if (!frame.ParseFromArray(data.data(), static_cast<int>(data.size()))) {
      return InvalidArgument("binary frame is not a chorus.live.v1.ClientFrame");
    }
    switch (frame.op_case()) {
      case pb::ClientFrame::kSubscribe:
        op.kind = ClientOp::Kind::kSubscribe;
        op.room = frame.subscribe().room();
        break;
      case pb::ClientFrame::kUnsubscribe:
        op.kind = ClientOp::Kind::kUnsubscribe;
        op.room = frame.unsubscribe().room();
        break;
      case pb::ClientFrame::kPing:
        op.kind = ClientOp::Kind::kPing;
        op.ts = frame.ping().ts();
        break;
      case pb::ClientFrame::kChat:
        op.kind = ClientOp::Kind::kChat;
        op.room = frame.chat().room();
        op.text = frame.chat().text();
        break;
      case pb::ClientFrame::OP_NOT_SET:
        return NotFound("unknown op (no op set in ClientFrame)");
    }
    return op;
  }
  nlohmann::json j = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgument("text frame must be a JSON object");
  auto name = j.find("op");
  if (name == j.end() || !name->is_string()) return InvalidArgument("frame needs a string field \"op\"");
  const std::string& verb = name->get_ref<const std::string&>();
  if (verb == "subscribe" || verb == "unsubscribe") {
    op.kind = verb == "subscribe" ? ClientOp::Kind::kSubscribe : ClientOp::Kind::kUnsubscribe;
    auto room = j.find("room");
    if (room == j.end() || !room->is_string()) return InvalidArgument(verb + " needs a string field \"room\"");
    op.room = room->get<std::string>();
  } else if (verb == "ping") {
    op.kind = ClientOp::Kind::kPing;
    if (auto ts = j.find("ts"); ts != j.end()) {
      if (!ts->is_number_integer()) return InvalidArgument("ping ts must be an integer");
      op.ts = ts->get<int64_t>();
    }
  } else if (verb == "chat") {
    op.kind = ClientOp::Kind::kChat;
    auto room = j.find("room");
    auto text = j.find("text");
    if (room == j.end() || !room->is_string() || text == j.end() || !text->is_string()) {
      return InvalidArgument("chat needs string fields \"room\" and \"text\"");
    }
    op.room = room->get<std::string>();
    op.text = text->get<std::string>();
  } else {
    return NotFound("unknown op (expected subscribe, unsubscribe, ping or chat)");
  }
  return op;
}

}  // namespace chorus::live
