#include "compute/worker_protocol.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace chorus::compute {
namespace {

// Drains every complete frame; fails the test on a protocol error.
std::vector<std::string> DrainFrames(FrameDecoder& decoder) {
  std::vector<std::string> out;
  for (;;) {
    auto next = decoder.Next();
    EXPECT_TRUE(next.ok()) << next.status().ToString();
    if (!next.ok() || !next->has_value()) return out;
    out.push_back(std::move(**next));
  }
}

std::string Header(uint32_t len) {
  std::string h;
  h.push_back(static_cast<char>(len >> 24));
  h.push_back(static_cast<char>(len >> 16));
  h.push_back(static_cast<char>(len >> 8));
  h.push_back(static_cast<char>(len));
  return h;
}

TEST(WorkerProtocolTest, RequestRoundTrip) {
  const std::string payload("hello\0world", 11);
  const std::string frame = EncodeRequest(0x0102030405060708ULL, payload);
  EXPECT_EQ(frame.size(), kFrameHeaderBytes + kRequestIdBytes + payload.size());
  EXPECT_EQ(frame.substr(0, 4), Header(8 + 11));
  EXPECT_EQ(frame.substr(4, 8), std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));

  FrameDecoder decoder;
  decoder.Append(frame);
  auto frames = DrainFrames(decoder);
  ASSERT_EQ(frames.size(), 1u);
  auto request = DecodeRequest(frames[0]);
  ASSERT_TRUE(request.ok()) << request.status().ToString();
  EXPECT_EQ(request->id, 0x0102030405060708ULL);
  EXPECT_EQ(request->payload, payload);
  EXPECT_EQ(decoder.buffered(), 0u);
}

TEST(WorkerProtocolTest, ResponseRoundTripOkErrorAndEmpty) {
  struct Case {
    uint64_t id;
    bool ok;
    std::string payload;
  };
  const std::vector<Case> cases = {
      {1, true, "{\"answer\":42}"}, {~0ULL, false, "synthetic failure"}, {0, true, ""}, {7, false, ""}};
  FrameDecoder decoder;
  for (const Case& c : cases) decoder.Append(EncodeResponse(c.id, c.ok, c.payload));
  auto frames = DrainFrames(decoder);
  ASSERT_EQ(frames.size(), cases.size());
  for (std::size_t i = 0; i < cases.size(); ++i) {
    auto response = DecodeResponse(frames[i]);
    ASSERT_TRUE(response.ok()) << response.status().ToString();
    EXPECT_EQ(response->id, cases[i].id);
    EXPECT_EQ(response->ok, cases[i].ok);
    EXPECT_EQ(response->payload, cases[i].payload);
  }
}

TEST(WorkerProtocolTest, SplitAtEveryByteBoundary) {
  const std::string stream = EncodeRequest(1, "first") + EncodeRequest(2, "") +
                             EncodeRequest(3, std::string(300, 'x'));
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    FrameDecoder decoder;
    decoder.Append(stream.data(), cut);
    auto frames = DrainFrames(decoder);
    decoder.Append(stream.data() + cut, stream.size() - cut);
    for (auto& f : DrainFrames(decoder)) frames.push_back(std::move(f));
    ASSERT_EQ(frames.size(), 3u) << "cut at " << cut;
    EXPECT_EQ(DecodeRequest(frames[0])->payload, "first");
    EXPECT_EQ(DecodeRequest(frames[1])->payload, "");
    EXPECT_EQ(DecodeRequest(frames[2])->payload, std::string(300, 'x'));
    EXPECT_EQ(DecodeRequest(frames[2])->id, 3u);
    EXPECT_EQ(decoder.buffered(), 0u);
  }
}

TEST(WorkerProtocolTest, OneByteAtATime) {
  const std::string stream = EncodeResponse(9, true, "abc") + EncodeResponse(10, false, "bad");
  FrameDecoder decoder;
  std::vector<std::string> frames;
  for (const char c : stream) {
    decoder.Append(&c, 1);
    for (auto& f : DrainFrames(decoder)) frames.push_back(std::move(f));
  }
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(DecodeResponse(frames[1])->payload, "bad");
  EXPECT_FALSE(DecodeResponse(frames[1])->ok);
}

TEST(WorkerProtocolTest, PartialFrameWaitsForMoreBytes) {
  const std::string frame = EncodeRequest(5, "payload");
  FrameDecoder decoder;
  decoder.Append(frame.data(), frame.size() - 1);
  auto next = decoder.Next();
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE(next->has_value());
  EXPECT_EQ(decoder.buffered(), frame.size() - 1);
}

TEST(WorkerProtocolTest, LargestFrameIsAccepted) {
  FrameDecoder decoder;
  decoder.Append(Header(static_cast<uint32_t>(kMaxFrameBody)));
  auto next = decoder.Next();
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_FALSE(next->has_value());  // waits for the 64 MiB body
}

TEST(WorkerProtocolTest, OversizeFrameIsAStickyError) {
  FrameDecoder decoder;
  decoder.Append(Header(static_cast<uint32_t>(kMaxFrameBody + 1)));
  auto next = decoder.Next();
  ASSERT_FALSE(next.ok());
  EXPECT_EQ(next.status().code(), StatusCode::kInvalidArgument);
  // The stream cannot be resynchronised: valid frames after it are not returned.
  decoder.Append(EncodeRequest(1, "ok"));
  EXPECT_FALSE(decoder.Next().ok());

  FrameDecoder huge;
  huge.Append(Header(0xffffffffu));
  EXPECT_FALSE(huge.Next().ok());
}

TEST(WorkerProtocolTest, TruncatedBodiesAreErrors) {
  for (std::size_t n = 0; n < kRequestIdBytes; ++n) {
    auto request = DecodeRequest(std::string(n, '\0'));
    ASSERT_FALSE(request.ok()) << n;
    EXPECT_EQ(request.status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(DecodeRequest(std::string(kRequestIdBytes, '\0')).ok());
  for (std::size_t n = 0; n <= kRequestIdBytes; ++n) {
    auto response = DecodeResponse(std::string(n, '\0'));
    ASSERT_FALSE(response.ok()) << n;
    EXPECT_EQ(response.status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(DecodeResponse(std::string(kRequestIdBytes + 1, '\0')).ok());
}

TEST(WorkerProtocolTest, BadStatusByteIsAnError) {
  std::string body(kRequestIdBytes, '\0');
  body.push_back('\2');
  body += "payload";
  auto response = DecodeResponse(body);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.status().code(), StatusCode::kInvalidArgument);
}

TEST(WorkerProtocolTest, ConsumedBytesAreReleased) {
  // A long stream of small frames must not accumulate in the decoder.
  FrameDecoder decoder;
  const std::string frame = EncodeRequest(1, std::string(100, 'p'));
  for (int i = 0; i < 10'000; ++i) {
    decoder.Append(frame.data(), 50);
    decoder.Append(frame.data() + 50, frame.size() - 50);
    ASSERT_EQ(DrainFrames(decoder).size(), 1u);
    ASSERT_EQ(decoder.buffered(), 0u);
  }
}

}  // namespace
}  // namespace chorus::compute
