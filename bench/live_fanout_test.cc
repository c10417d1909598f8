#include "live_fanout.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "ws_client.h"

namespace chorus::bench {
namespace {

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

TEST(LiveFanoutTest, ScansBlocksWithoutParsingThem) {
  const std::string block =
      R"({"frame":"block","room":"r1","seq":42,"tick_at":1795452737385,"online":3,"messages":[)"
      R"({"id":"1","room":"r1","type":"gift","priority":605,"created_at":1795452737300,)"
      R"("sender":{"id":"u1","level":3},"payload":{"gift":"rose","value":50}},)"
      R"({"id":"2","room":"r1","type":"chat","priority":199,"created_at":1795452737301,)"
      R"("sender":{"id":"","level":0},"payload":{"text":"hi"}}]})";
  LiveBlockInfo info;
  ASSERT_EQ(ScanLiveFrame(block, &info), LiveFrameKind::kBlock);
  EXPECT_EQ(info.seq, 42u);
  EXPECT_EQ(info.tick_at_ms, 1795452737385);
  EXPECT_EQ(info.messages, 2u);

  EXPECT_EQ(ScanLiveFrame(R"({"frame":"block","room":"r1","seq":1,"online":0,"messages":[]})", &info),
            LiveFrameKind::kOther);  // no tick_at: not a block this bench can time
  EXPECT_EQ(ScanLiveFrame(R"({"frame":"welcome","user":"u","connection":"1"})", &info),
            LiveFrameKind::kWelcome);
  EXPECT_EQ(ScanLiveFrame(R"({"frame":"subscribed","room":"r1","online":1})", &info),
            LiveFrameKind::kSubscribed);
  EXPECT_EQ(ScanLiveFrame(R"({"frame":"error","code":"bad_room","message":"x"})", &info),
            LiveFrameKind::kError);
  EXPECT_EQ(ScanLiveFrame(R"({"frame":"pong","ts":1})", &info), LiveFrameKind::kOther);
  EXPECT_EQ(ScanLiveFrame("", &info), LiveFrameKind::kOther);
  EXPECT_EQ(ScanLiveFrame("\x0a\x05", &info), LiveFrameKind::kOther);  // protobuf bytes
}

TEST(LiveFanoutTest, ReadsLiveCountersOfAnyPrefix) {
  const std::string text =
      "# HELP chorus_live_blocks_total Blocks\n"
      "# TYPE chorus_live_blocks_total counter\n"
      "chorus_live_blocks_total 12\n"
      "chorus_live_deliveries_total 1.2e+05\n"
      "chorus_live_dropped_total{reason=\"over_budget\"} 70\n"
      "chorus_live_dropped_total{reason=\"expired\"} 0\n"
      "chorus_live_published_total{target=\"room\"} 100\n"
      "chorus_live_published_total{target=\"user\"} 5\n"
      "chorus_websocket_dropped_messages_total 3\n"
      "bunpeer_live_dropped_total{reason=\"over_budget\"} 30\n"
      "chorus_live_blocks_totally_different 99\n"
      "garbage line\n";
  const auto m = ParseLiveMetrics(text);
  EXPECT_EQ(m.at("blocks"), 12);
  EXPECT_EQ(m.at("deliveries"), 120000);
  EXPECT_EQ(m.at("dropped_over_budget"), 100);
  EXPECT_EQ(m.at("dropped_expired"), 0);
  EXPECT_EQ(m.at("published"), 105);
  EXPECT_EQ(m.at("ws_dropped"), 3);
  EXPECT_FALSE(m.contains("slow_consumer_closes"));
}

TEST(LiveFanoutTest, ReadsCpuTimeFromProcStat) {
  // comm with a space and a parenthesis; utime 250, stime 50 ticks.
  const std::string stat =
      "1234 (my (odd) proc) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100";
  auto cpu = ParseProcStatCpuSeconds(stat);
  ASSERT_TRUE(cpu.ok()) << cpu.status().ToString();
  EXPECT_DOUBLE_EQ(*cpu, 300.0 / static_cast<double>(sysconf(_SC_CLK_TCK)));
  EXPECT_FALSE(ParseProcStatCpuSeconds("1234 (x) S 1 2").ok());
  EXPECT_FALSE(ParseProcStatCpuSeconds("no parenthesis").ok());
}

TEST(LiveFanoutTest, PublishBodiesHaveTheMixAndAreBatchIndependent) {
  uint64_t counter = 0;
  const std::string body = MakePublishBody(100, &counter, 7);
  EXPECT_EQ(counter, 100u);
  const nlohmann::json j = nlohmann::json::parse(body);
  ASSERT_EQ(j["messages"].size(), 100u);
  std::map<std::string, int> types;
  for (const auto& m : j["messages"]) {
    ++types[m["type"].get<std::string>()];
    // Payload keys already sorted: servers that re-serialize (nlohmann sorts) keep the bytes.
    std::string prev;
    for (auto it = m["payload"].begin(); it != m["payload"].end(); ++it) {
      EXPECT_LT(prev, it.key());
      prev = it.key();
    }
  }
  EXPECT_GT(types["chat"], 50);
  EXPECT_GT(types["gift"], 2);
  EXPECT_GT(types["pk"], 2);
  EXPECT_GT(types["notify"], 2);

  uint64_t c2 = 0;
  std::string split = MakePublishBody(40, &c2, 7);
  const std::string rest = MakePublishBody(60, &c2, 7);
  const nlohmann::json a = nlohmann::json::parse(split), b = nlohmann::json::parse(rest);
  EXPECT_EQ(a["messages"][39], j["messages"][39]);
  EXPECT_EQ(b["messages"][0], j["messages"][40]);
}

TEST(LiveFanoutTest, ClientResultRoundTripsAndMerges) {
  LiveClientsResult a;
  a.connections = 10;
  a.subscribed = 9;
  a.failed = 1;
  a.blocks = 90;
  a.messages = 1800;
  a.missed_blocks = 2;
  a.window_s = 10.5;
  a.latency.Record(2'000'000);
  auto back = LiveClientsResult::FromJson(nlohmann::json::parse(a.ToJson().dump()));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->messages, 1800u);
  EXPECT_EQ(back->latency.Count(), 1u);
  back->Merge(a);
  EXPECT_EQ(back->connections, 20u);
  EXPECT_EQ(back->missed_blocks, 4u);
  EXPECT_EQ(back->latency.Count(), 2u);
  EXPECT_DOUBLE_EQ(back->window_s, 10.5);
  EXPECT_FALSE(LiveClientsResult::FromJson(nlohmann::json{{"connections", 1}}).ok());
}

// ---- the client loop against a scripted server ----

std::string ServerFrame(uint8_t opcode, const std::string& payload) {
  std::string f(1, static_cast<char>(0x80 | opcode));
  if (payload.size() < 126) {
    f += static_cast<char>(payload.size());
  } else {
    f += static_cast<char>(126);
    f += static_cast<char>(payload.size() >> 8);
    f += static_cast<char>(payload.size() & 0xFF);
  }
  return f + payload;
}

bool ReadUntil(int fd, std::string& buf, const std::string& marker) {
  char tmp[4096];
  while (buf.find(marker) == std::string::npos) {
    const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf.append(tmp, static_cast<size_t>(n));
  }
  return true;
}

// Reads one masked client frame; returns {opcode, unmasked payload}.
std::pair<int, std::string> ReadClientFrame(int fd, std::string& buf) {
  char tmp[4096];
  while (true) {
    if (buf.size() >= 6) {
      const size_t len = static_cast<uint8_t>(buf[1]) & 0x7F;  // the test's frames are short
      if (buf.size() >= 6 + len) {
        std::string payload = buf.substr(6, len);
        for (size_t i = 0; i < len; ++i) payload[i] ^= buf[2 + i % 4];
        const int opcode = buf[0] & 0x0F;
        EXPECT_NE(static_cast<uint8_t>(buf[1]) & 0x80, 0) << "client frames must be masked";
        buf.erase(0, 6 + len);
        return {opcode, payload};
      }
    }
    const ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return {-1, ""};
    buf.append(tmp, static_cast<size_t>(n));
  }
}

std::string ReadLineFrom(std::FILE* f) {
  char line[1 << 16];
  if (!std::fgets(line, sizeof line, f)) return "";
  std::string s(line);
  if (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

std::string Block(uint64_t seq, int messages) {
  std::string b = R"({"frame":"block","room":"r1","seq":)" + std::to_string(seq) + R"(,"tick_at":)" +
                  std::to_string(WallMs()) + R"(,"online":3,"messages":[)";
  for (int i = 0; i < messages; ++i) {
    if (i) b += ',';
    b += R"({"id":")" + std::to_string(i) + R"(","type":"chat","created_at":1,"payload":{}})";
  }
  return b + "]}";
}

TEST(LiveFanoutTest, ClientsSubscribeCountBlocksAndAnswerPings) {
  constexpr int kConns = 3;
  const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener, 16), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);

  int control[2], output[2];
  ASSERT_EQ(pipe(control), 0);
  ASSERT_EQ(pipe(output), 0);
  std::FILE* client_out = fdopen(output[1], "w");
  std::FILE* test_in = fdopen(output[0], "r");
  LiveClientsOptions options;
  options.port = ntohs(addr.sin_port);
  options.target = "/v1/ws?format=json&token=t";
  options.connections = kConns;
  int rc = -1;
  std::thread clients([&] { rc = RunLiveClients(options, control[0], client_out); });

  // Handshake every connection the way the live service does: 101, welcome, then subscribed in
  // answer to the subscribe op.
  std::vector<int> fds;
  std::vector<std::string> bufs(kConns);
  for (int i = 0; i < kConns; ++i) {
    const int fd = ::accept(listener, nullptr, nullptr);
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
    ASSERT_TRUE(ReadUntil(fd, bufs[i], "\r\n\r\n"));
    EXPECT_EQ(bufs[i].rfind("GET /v1/ws?format=json&token=t HTTP/1.1\r\n", 0), 0u);
    bufs[i].erase(0, bufs[i].find("\r\n\r\n") + 4);
    const std::string hello =
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" +
        ServerFrame(kWsText, R"({"frame":"welcome","user":"u","connection":"1"})");
    ASSERT_EQ(::send(fd, hello.data(), hello.size(), 0), static_cast<ssize_t>(hello.size()));
    auto [opcode, op] = ReadClientFrame(fd, bufs[i]);
    EXPECT_EQ(opcode, kWsText);
    EXPECT_EQ(op, R"({"op":"subscribe","room":"r1"})");
    const std::string sub = ServerFrame(kWsText, R"({"frame":"subscribed","room":"r1","online":3})");
    ASSERT_EQ(::send(fd, sub.data(), sub.size(), 0), static_cast<ssize_t>(sub.size()));
  }
  EXPECT_EQ(ReadLineFrom(test_in), "ready 3 0");

  // A block before "start" is not counted but sets the sequence. The ping after it comes back
  // only once the client has read the block.
  for (size_t i = 0; i < fds.size(); ++i) {
    const std::string b = ServerFrame(kWsText, Block(1, 5)) + ServerFrame(kWsPing, "sync");
    ASSERT_EQ(::send(fds[i], b.data(), b.size(), 0), static_cast<ssize_t>(b.size()));
    EXPECT_EQ(ReadClientFrame(fds[i], bufs[i]).second, "sync");
  }
  ASSERT_EQ(::write(control[1], "start\n", 6), 6);
  EXPECT_EQ(ReadLineFrom(test_in), "started");
  for (size_t i = 0; i < fds.size(); ++i) {
    // seq 2 whole, seq 5 (2 missed) split mid-frame, then a ping that must come back as a pong.
    const std::string wire = ServerFrame(kWsText, Block(2, 20)) + ServerFrame(kWsText, Block(5, 20)) +
                             ServerFrame(kWsPing, "p" + std::to_string(i));
    const size_t cut = wire.size() / 2 + 7;
    ASSERT_EQ(::send(fds[i], wire.data(), cut, 0), static_cast<ssize_t>(cut));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_EQ(::send(fds[i], wire.data() + cut, wire.size() - cut, 0),
              static_cast<ssize_t>(wire.size() - cut));
    auto [opcode, payload] = ReadClientFrame(fds[i], bufs[i]);
    EXPECT_EQ(opcode, kWsPong);
    EXPECT_EQ(payload, "p" + std::to_string(i));
  }
  ASSERT_EQ(::write(control[1], "stop\n", 5), 5);
  const std::string line = ReadLineFrom(test_in);
  ASSERT_EQ(line.rfind("result ", 0), 0u) << line;
  ::close(control[1]);  // the end of the control pipe ends the client process
  clients.join();
  EXPECT_EQ(rc, 0);

  auto result = LiveClientsResult::FromJson(nlohmann::json::parse(line.substr(7)));
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->subscribed, 3u);
  EXPECT_EQ(result->blocks, 6u);
  EXPECT_EQ(result->messages, 120u);
  EXPECT_EQ(result->missed_blocks, 6u);
  EXPECT_EQ(result->pings, 6u);
  EXPECT_EQ(result->protocol_errors, 0u);
  EXPECT_EQ(result->latency.Count(), 6u);
  EXPECT_LT(result->latency.Max(), 10'000'000'000);  // same clock: well under 10 s

  for (int fd : fds) ::close(fd);
  ::close(listener);
  ::close(control[0]);
  std::fclose(client_out);
  std::fclose(test_in);
}

}  // namespace
}  // namespace chorus::bench
