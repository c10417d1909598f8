// A single-threaded TCP server on 127.0.0.1:<free port> for the bench tests (test code only):
// a non-blocking listener and a poll() loop on its own thread. The owner supplies `serve`, called
// when a connection is readable; it returns false to have the connection closed. Conn must be
// default-constructible with an `int fd` member.
//
// Declare the LoopbackServer as the owner's LAST member: it is then built after everything
// `serve` touches and destroyed (its thread joined) before any of it.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <thread>
#include <utility>
#include <vector>

namespace chorus::bench {

template <typename Conn>
class LoopbackServer {
 public:
  explicit LoopbackServer(std::function<bool(Conn&)> serve) : serve_(std::move(serve)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    addr_.sin_family = AF_INET;
    addr_.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr_), sizeof addr_), 0);
    EXPECT_EQ(::listen(listen_fd_, 128), 0);
    socklen_t len = sizeof addr_;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr_), &len);
    thread_ = std::thread([this] { Loop(); });
  }
  ~LoopbackServer() {
    stop_ = true;
    thread_.join();
    for (const Conn& c : conns_) ::close(c.fd);
    ::close(listen_fd_);
  }
  LoopbackServer(const LoopbackServer&) = delete;
  LoopbackServer& operator=(const LoopbackServer&) = delete;

  const sockaddr_in& addr() const { return addr_; }
  uint16_t port() const { return ntohs(addr_.sin_port); }
  int accepted() const { return accepted_; }  // connections accepted so far

 private:
  void Loop() {
    std::vector<pollfd> fds;
    while (!stop_) {
      fds.clear();
      fds.push_back({listen_fd_, POLLIN, 0});
      for (const Conn& c : conns_) fds.push_back({c.fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 20) <= 0) continue;
      std::vector<Conn> keep;
      for (size_t i = 0; i < conns_.size(); ++i) {
        if (fds[i + 1].revents == 0 || serve_(conns_[i])) {
          keep.push_back(std::move(conns_[i]));
        } else {
          ::close(conns_[i].fd);
        }
      }
      conns_ = std::move(keep);
      if (fds[0].revents & POLLIN) {
        int fd;
        while ((fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          ++accepted_;
          Conn c{};
          c.fd = fd;
          conns_.push_back(std::move(c));
        }
      }
    }
  }

  const std::function<bool(Conn&)> serve_;
  int listen_fd_ = -1;
  sockaddr_in addr_{};
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::vector<Conn> conns_;  // owned by thread_ until it is joined
  std::thread thread_;
};

}  // namespace chorus::bench
