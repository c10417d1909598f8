// The router as a client library (docs/compute.md, "Data plane"): a Router (router.h) fed by a
// Watch stream per resource cluster (view_watcher.h), weights recomputed every `weight_interval`,
// and requests sent to Node.Invoke with gRPC's callback client (many in flight, no thread each).
//
//   auto client = RouterClient::Create({.clusters = {{"127.0.0.1:9090"}}, .token = token}, clock);
//   (*client)->Start();
//   auto reply = (*client)->InvokeSync("ocr", image_bytes, std::chrono::seconds(30));
//
// Threads: one watch thread per cluster, one weight-timer thread; gRPC's completion threads run
// the Router's callbacks. Start/Stop from one thread; Invoke from any. Stop waits for the calls
// in flight to end (each within `timeout`), so `done` callbacks never outlive the client; Invoke
// after Stop is not allowed.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/status.h"
#include "compute/router.h"

namespace chorus::compute {

struct RouterClientOptions {
  RouterOptions router;
  // Each entry: the resource servers of one cluster, tried in order (federation: one per cluster).
  std::vector<std::vector<std::string>> clusters;
  std::string token;  // scope compute.invoke (any valid token may watch)
  Duration weight_interval = std::chrono::seconds(3);
  Duration timeout = std::chrono::seconds(30);  // per attempt
};

class RouterClient {
 public:
  static Result<std::unique_ptr<RouterClient>> Create(RouterClientOptions options, Clock& clock);
  ~RouterClient();

  void Start();
  void Stop();

  void Invoke(const std::string& app, std::string payload, Router::Done done);
  // Blocks until the answer (or `wait`: kDeadlineExceeded).
  Result<Router::Reply> InvokeSync(const std::string& app, std::string payload, Duration wait);
  // True once every cluster's first full view has arrived.
  bool WaitForViews(Duration wait);

  Router& router();

  class Impl;

 private:
  explicit RouterClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::compute
