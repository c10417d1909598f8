#include "support/http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace chorus::testing {

std::string HttpReply::Header(std::string_view lower_name) const {
  for (const auto& [k, v] : headers) {
    if (k == lower_name) return v;
  }
  return "";
}

Result<HttpClient> HttpClient::Connect(int port, std::chrono::milliseconds timeout) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Internal(std::string("socket: ") + strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    close(fd);
    return Unavailable(std::string("connect: ") + strerror(err));
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return HttpClient(fd, port);
}

HttpClient::HttpClient(HttpClient&& other) noexcept
    : fd_(other.fd_), port_(other.port_), buffer_(std::move(other.buffer_)) {
  other.fd_ = -1;
}

HttpClient& HttpClient::operator=(HttpClient&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.fd_;
    port_ = other.port_;
    buffer_ = std::move(other.buffer_);
    other.fd_ = -1;
  }
  return *this;
}

HttpClient::~HttpClient() {
  if (fd_ >= 0) close(fd_);
}

Status HttpClient::SendRaw(std::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Unavailable(std::string("send: ") + strerror(errno));
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Status HttpClient::Fill(std::chrono::steady_clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  if (left.count() <= 0) return DeadlineExceeded("timed out waiting for the server");
  pollfd p{fd_, POLLIN, 0};
  const int r = poll(&p, 1, static_cast<int>(left.count()));
  if (r == 0) return DeadlineExceeded("timed out waiting for the server");
  if (r < 0) return Internal(std::string("poll: ") + strerror(errno));
  char buf[16384];
  const ssize_t n = recv(fd_, buf, sizeof buf, 0);
  if (n == 0) return Unavailable("connection closed by the server");
  if (n < 0) return Unavailable(std::string("recv: ") + strerror(errno));
  buffer_.append(buf, static_cast<size_t>(n));
  return Status::Ok();
}

Result<HttpReply> HttpClient::ReadReply(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t header_end;
  while ((header_end = buffer_.find("\r\n\r\n")) == std::string::npos) {
    CHORUS_RETURN_IF_ERROR(Fill(deadline));
  }
  HttpReply reply;
  std::string_view head(buffer_.data(), header_end);
  size_t line_end = head.find("\r\n");
  std::string_view status_line = head.substr(0, line_end);
  if (status_line.substr(0, 9) != "HTTP/1.1 " && status_line.substr(0, 9) != "HTTP/1.0 ") {
    return Internal("bad status line: " + std::string(status_line));
  }
  reply.status = std::atoi(std::string(status_line.substr(9, 3)).c_str());
  size_t content_length = 0;
  bool has_length = false;
  while (line_end != std::string_view::npos && line_end < head.size()) {
    const size_t start = line_end + 2;
    line_end = head.find("\r\n", start);
    std::string_view line = head.substr(start, line_end == std::string_view::npos ? head.size() - start : line_end - start);
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string name(line.substr(0, colon));
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
    if (name == "content-length") {
      content_length = std::strtoul(std::string(value).c_str(), nullptr, 10);
      has_length = true;
    }
    reply.headers.emplace_back(std::move(name), std::string(value));
  }
  if (!has_length && reply.status != 101) return Internal("response without Content-Length");
  const size_t body_start = header_end + 4;
  while (buffer_.size() < body_start + content_length) CHORUS_RETURN_IF_ERROR(Fill(deadline));
  reply.body = buffer_.substr(body_start, content_length);
  buffer_.erase(0, body_start + content_length);
  return reply;
}

Result<HttpReply> HttpClient::Request(std::string_view method, std::string_view target, std::string_view body,
                                      std::vector<std::pair<std::string, std::string>> headers) {
  std::string req;
  req += method;
  req += ' ';
  req += target;
  req += " HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port_) + "\r\n";
  for (const auto& [k, v] : headers) req += k + ": " + v + "\r\n";
  if (!body.empty() || method == "POST" || method == "PUT") req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n";
  req += body;
  CHORUS_RETURN_IF_ERROR(SendRaw(req));
  return ReadReply();
}

bool HttpClient::WaitClosed(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    Status st = Fill(deadline);
    if (st.ok()) continue;  // data: keep draining
    return st.code() == StatusCode::kUnavailable;
  }
}

Result<HttpReply> HttpGet(int port, std::string_view target, std::vector<std::pair<std::string, std::string>> headers) {
  CHORUS_ASSIGN_OR_RETURN(HttpClient client, HttpClient::Connect(port));
  return client.Request("GET", target, {}, std::move(headers));
}

}  // namespace chorus::testing
