#include "http_load.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "loopback_test_server.h"

namespace chorus::bench {
namespace {

using State = HttpResponseParser::State;

// Feeds `bytes` one at a time; returns the state after the last byte and checks that nothing
// completed early.
State FeedBytewise(HttpResponseParser& p, std::string_view bytes) {
  for (size_t i = 0; i < bytes.size(); ++i) {
    size_t consumed = 0;
    const State s = p.Feed(bytes.data() + i, 1, &consumed);
    if (s == State::kError) return s;
    if (s == State::kComplete) {
      EXPECT_EQ(i + 1, bytes.size()) << "completed early at byte " << i;
      EXPECT_EQ(consumed, 1u);
      return s;
    }
    EXPECT_EQ(consumed, 1u);
  }
  return State::kNeedMore;
}

TEST(HttpResponseParserTest, ContentLengthResponseCompletesOnItsLastByte) {
  const std::string r =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 15\r\n\r\n"
      "{\"status\":\"ok\"}";
  HttpResponseParser p;
  EXPECT_EQ(FeedBytewise(p, r), State::kComplete);
  EXPECT_EQ(p.status(), 200);
  EXPECT_EQ(p.body_bytes(), 15u);
  EXPECT_FALSE(p.close_after());
}

TEST(HttpResponseParserTest, KeepsTheBodyUpToItsLimitAcrossResets) {
  HttpResponseParser p;
  size_t consumed = 0;
  const std::string plain = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789";
  ASSERT_EQ(p.Feed(plain.data(), plain.size(), &consumed), State::kComplete);
  EXPECT_EQ(p.body(), "") << "no limit set: nothing kept";

  p.set_body_limit(6);
  p.Reset();
  ASSERT_EQ(FeedBytewise(p, plain), State::kComplete);
  EXPECT_EQ(p.body(), "012345");
  EXPECT_EQ(p.body_bytes(), 10u);

  p.set_body_limit(100);
  p.Reset();
  const std::string chunked =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n2\r\n:1\r\n1\r\n}\r\n0\r\n\r\n";
  ASSERT_EQ(FeedBytewise(p, chunked), State::kComplete);
  EXPECT_EQ(p.body(), "{\"a\":1}") << "chunk framing is not part of the body";
  p.Reset();
  EXPECT_EQ(p.body(), "");
}

TEST(HttpResponseParserTest, BackToBackResponsesSplitAtTheBoundary) {
  const std::string one = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno!";
  const std::string two = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
  const std::string both = one + two;
  HttpResponseParser p;
  size_t consumed = 0;
  ASSERT_EQ(p.Feed(both.data(), both.size(), &consumed), State::kComplete);
  EXPECT_EQ(consumed, one.size());
  EXPECT_EQ(p.status(), 404);
  p.Reset();
  ASSERT_EQ(p.Feed(both.data() + consumed, both.size() - consumed, &consumed), State::kComplete);
  EXPECT_EQ(consumed, two.size());
  EXPECT_EQ(p.status(), 200);
}

TEST(HttpResponseParserTest, ChunkedBodyWithExtensionsAndTrailers) {
  const std::string r =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;name=value\r\nhello\r\n"
      "1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
      "0\r\nX-Trailer: yes\r\n\r\n";
  HttpResponseParser p;
  EXPECT_EQ(FeedBytewise(p, r), State::kComplete);
  EXPECT_EQ(p.body_bytes(), 31u);

  p.Reset();
  size_t consumed = 0;
  const std::string next = r + "HTTP/1.1 200 OK\r\n";
  EXPECT_EQ(p.Feed(next.data(), next.size(), &consumed), State::kComplete);
  EXPECT_EQ(consumed, r.size());
}

TEST(HttpResponseParserTest, NoBodyStatusesAndCloseDelimitedBodies) {
  HttpResponseParser p;
  EXPECT_EQ(FeedBytewise(p, "HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n"),
            State::kComplete);

  p.Reset();
  size_t consumed = 0;
  const std::string r = "HTTP/1.0 200 OK\r\n\r\nbody until the end";
  EXPECT_EQ(p.Feed(r.data(), r.size(), &consumed), State::kNeedMore);
  EXPECT_EQ(consumed, r.size());
  EXPECT_EQ(p.OnEof(), State::kComplete);
  EXPECT_TRUE(p.close_after());
  EXPECT_EQ(p.body_bytes(), 18u);

  p.Reset();
  const std::string partial = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc";
  EXPECT_EQ(p.Feed(partial.data(), partial.size(), &consumed), State::kNeedMore);
  EXPECT_EQ(p.OnEof(), State::kError);  // truncated body
}

TEST(HttpResponseParserTest, ConnectionHeadersDecideReuse) {
  HttpResponseParser p;
  EXPECT_EQ(FeedBytewise(p, "HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n"),
            State::kComplete);
  EXPECT_TRUE(p.close_after());
  p.Reset();
  EXPECT_EQ(
      FeedBytewise(p, "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
      State::kComplete);
  EXPECT_FALSE(p.close_after());
}

TEST(HttpResponseParserTest, InterimResponseIsSkipped) {
  HttpResponseParser p;
  EXPECT_EQ(
      FeedBytewise(
          p, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
      State::kComplete);
  EXPECT_EQ(p.status(), 201);
}

TEST(HttpResponseParserTest, MalformedInputIsAnErrorNotACrash) {
  const char* bad[] = {
      "HTTX/1.1 200 OK\r\n\r\n",
      "HTTP/1.1 2x0 OK\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
      "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
      "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
      "HTTP/1.1 101 Switching Protocols\r\n\r\n",
  };
  for (const char* r : bad) {
    HttpResponseParser p;
    EXPECT_EQ(FeedBytewise(p, r), State::kError) << r;
  }
  HttpResponseParser p;
  const std::string huge = "HTTP/1.1 200 OK\r\nX: " + std::string(70'000, 'a');
  size_t consumed = 0;
  EXPECT_EQ(p.Feed(huge.data(), huge.size(), &consumed), State::kError);
}

TEST(ParseHttpUrlTest, AcceptsHostPortAndTarget) {
  auto u = ParseHttpUrl("http://127.0.0.1:8080/healthz?x=1");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8080);
  EXPECT_EQ(u->target, "/healthz?x=1");
  u = ParseHttpUrl("http://localhost");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->port, 80);
  EXPECT_EQ(u->target, "/");
  EXPECT_FALSE(ParseHttpUrl("https://localhost/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://:80/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://h:0/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://h:99999/").ok());
  EXPECT_FALSE(ParseHttpUrl("http://[::1]:80/").ok());
}

// A tiny single-threaded HTTP server on loopback (poll loop, non-blocking sockets). Paths:
//   /ok       200 with a Content-Length body
//   /chunked  200 with a chunked body
//   /missing  404
//   /close    200 + "Connection: close", then closes
//   /idle3    200, but silently closes the connection after every third response
class TestServer {
 public:
  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(server_.port()) + path;
  }

 private:
  struct Conn {
    int fd;
    std::string in;
    int served = 0;
  };

  // Reads what is there and answers complete requests; false when the connection is done.
  static bool Serve(Conn& c) {
    char buf[4096];
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n <= 0) return false;
    c.in.append(buf, static_cast<size_t>(n));
    size_t end;
    while ((end = c.in.find("\r\n\r\n")) != std::string::npos) {
      const std::string request = c.in.substr(0, end + 4);
      c.in.erase(0, end + 4);
      const std::string path = request.substr(4, request.find(' ', 4) - 4);
      std::string response;
      bool close_now = false;
      if (path == "/ok" || path == "/idle3") {
        response = "HTTP/1.1 200 OK\r\nContent-Length: 15\r\n\r\n{\"status\":\"ok\"}";
        close_now = path == "/idle3" && ++c.served % 3 == 0;
      } else if (path == "/chunked") {
        response = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
      } else if (path == "/close") {
        response = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        close_now = true;
      } else {
        response = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
      }
      // Responses are tiny and the client waits for each: a short write means a broken peer.
      if (::send(c.fd, response.data(), response.size(), MSG_NOSIGNAL) !=
          static_cast<ssize_t>(response.size())) {
        return false;
      }
      if (close_now) return false;
    }
    return true;
  }

  LoopbackServer<Conn> server_{[](Conn& c) { return Serve(c); }};
};

HttpLoadResult RunAgainst(const std::string& url) {
  HttpLoadOptions options;
  options.url = url;
  options.connections = 4;
  options.threads = 2;
  options.duration = std::chrono::milliseconds(300);
  options.warmup = std::chrono::milliseconds(50);
  auto result = RunHttpLoad(options);
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  return result.ok() ? *result : HttpLoadResult{};
}

TEST(HttpLoadTest, KeepAliveLoadCountsEveryResponseAndItsLatency) {
  TestServer server;
  for (const char* path : {"/ok", "/chunked"}) {
    const HttpLoadResult r = RunAgainst(server.Url(path));
    EXPECT_GT(r.requests, 0u) << path;
    EXPECT_EQ(r.non_2xx, 0u) << path;
    EXPECT_EQ(r.socket_errors(), 0u) << path;
    EXPECT_EQ(r.reconnects, 0u) << path;
    EXPECT_EQ(r.latency.Count(), r.requests) << path;
    EXPECT_GT(r.latency.Min(), 0) << path;
    EXPECT_GT(r.requests_per_second(), 0) << path;

    const Measurement m = r.ToMeasurement("test");
    EXPECT_EQ(m.counts.at("requests"), r.requests);
    EXPECT_EQ(m.ErrorCount(), 0u);
  }
}

TEST(HttpLoadTest, Non2xxIsCountedApartFromSocketErrors) {
  TestServer server;
  const HttpLoadResult r = RunAgainst(server.Url("/missing"));
  EXPECT_GT(r.requests, 0u);
  EXPECT_EQ(r.non_2xx, r.requests);
  EXPECT_EQ(r.socket_errors(), 0u);
}

TEST(HttpLoadTest, ServerClosesAreFollowedWithoutErrors) {
  TestServer server;
  const HttpLoadResult announced = RunAgainst(server.Url("/close"));
  EXPECT_GT(announced.requests, 0u);
  EXPECT_EQ(announced.socket_errors(), 0u);
  EXPECT_EQ(announced.non_2xx, 0u);

  // Closing an idle keep-alive connection is legal: the request is retried, not failed.
  const HttpLoadResult idle = RunAgainst(server.Url("/idle3"));
  EXPECT_GT(idle.requests, 0u);
  EXPECT_EQ(idle.socket_errors(), 0u);
  EXPECT_GT(idle.reconnects, 0u);
}

TEST(HttpLoadTest, RefusedConnectionsAreConnectErrors) {
  // Bind a port, then close it: nothing listens there for the duration of the test.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  const HttpLoadResult r =
      RunAgainst("http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port)) + "/");
  EXPECT_EQ(r.requests, 0u);
  EXPECT_GT(r.connect_errors, 0u);
}

TEST(HttpLoadTest, BadOptionsAreRejected) {
  HttpLoadOptions options;
  options.url = "ftp://x/";
  EXPECT_FALSE(RunHttpLoad(options).ok());
  options.url = "http://127.0.0.1:1/";
  options.connections = 0;
  EXPECT_FALSE(RunHttpLoad(options).ok());
  options.connections = 1'000'000;  // beyond the open-file limit
  EXPECT_FALSE(RunHttpLoad(options).ok());
}

}  // namespace
}  // namespace chorus::bench
