// Test helper: a worker loop (RunEngineWorker, RunSyntheticWorker) driven over two pipes. The test
// writes request frames to in[1], the worker reads in[0] and writes out[1], and once the worker
// has returned the test decodes everything it wrote. Answers of small tests fit in the pipe
// buffers, so writing everything before reading cannot deadlock.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "compute/worker_protocol.h"

namespace chorus::compute {

struct WorkerPipes {
  int in[2] = {-1, -1};   // test writes in[1], worker reads in[0]
  int out[2] = {-1, -1};  // worker writes out[1], test reads out[0]

  WorkerPipes() {
    EXPECT_EQ(pipe(in), 0);
    EXPECT_EQ(pipe(out), 0);
  }
  ~WorkerPipes() {
    for (int fd : {in[0], in[1], out[0], out[1]}) {
      if (fd >= 0) close(fd);
    }
  }
  WorkerPipes(const WorkerPipes&) = delete;
  WorkerPipes& operator=(const WorkerPipes&) = delete;

  void Write(const std::string& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = write(in[1], bytes.data() + done, bytes.size() - done);
      ASSERT_GT(n, 0);
      done += static_cast<std::size_t>(n);
    }
  }
  void CloseInput() {
    close(in[1]);
    in[1] = -1;
  }

  // Every response the worker wrote, in the order written; call once the worker has returned.
  // `clean` is false after a malformed or truncated frame.
  std::vector<Response> ReadFrames(bool* clean) {
    close(out[1]);
    out[1] = -1;
    FrameDecoder decoder;
    char buf[4096];
    for (;;) {
      const ssize_t n = read(out[0], buf, sizeof buf);
      if (n <= 0) break;
      decoder.Append(buf, static_cast<std::size_t>(n));
    }
    std::vector<Response> responses;
    *clean = true;
    for (;;) {
      auto next = decoder.Next();
      if (!next.ok()) {
        *clean = false;
        break;
      }
      if (!next->has_value()) break;
      auto response = DecodeResponse(**next);
      if (!response.ok()) {
        *clean = false;
        break;
      }
      responses.push_back(std::move(*response));
    }
    if (decoder.buffered() != 0) *clean = false;
    return responses;
  }

  // The same, by request id (a second answer for one id is a test failure).
  std::map<uint64_t, Response> ReadAll(bool* clean) {
    std::map<uint64_t, Response> by_id;
    for (Response& r : ReadFrames(clean)) {
      const uint64_t id = r.id;
      EXPECT_EQ(by_id.count(id), 0u) << "two answers for request " << id;
      by_id[id] = std::move(r);
    }
    return by_id;
  }
};

}  // namespace chorus::compute
