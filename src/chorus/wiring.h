// How `chorus up` wires its services together for the product (docs/web.md, "Wiring"). Each
// piece talks to the services only through their public C++ APIs and events — the same surface a
// separate process would reach over HTTP or gRPC:
//   - LikesToRoom: a like count change of (business `live`, entity = room) becomes a gain
//     message in that room (type notify, gain_key "likes"), so every viewer's counter converges
//     on the true total even when blocks are dropped.
//   - ComputeModerator: viewer chat goes through the compute `moderation` app before it is
//     published; a blocked text never reaches viewers.
//   - PkDemo: a PK between two rooms; gifts published to either room add their value to its
//     score, and both rooms receive the absolute scores as a gain message (gain_key "pk").
//   - the dev routes: POST /v1/dev/token and POST /v1/dev/pk for the demo page, offered only on
//     a loopback bind.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "live/live_service.h"

namespace chorus::likes {
class EventBus;
}
namespace chorus::compute {
class Gateway;
}
namespace chorus::net {
class Router;
class TokenSigner;
}  // namespace chorus::net

namespace chorus::app {

// Subscribes to the bus's count events for the lifetime of this object.
class LikesToRoom {
 public:
  LikesToRoom(likes::EventBus& bus, live::LiveService& live, std::string business = "live");
  ~LikesToRoom();
  LikesToRoom(const LikesToRoom&) = delete;
  LikesToRoom& operator=(const LikesToRoom&) = delete;

 private:
  likes::EventBus& bus_;
  uint64_t subscription_ = 0;
};

// The moderation engine's answer ({"verdict":"block"|"allow","matches":[{"term",...}]}) as a
// chat verdict; the reason names the matched terms.
Result<live::LiveService::ChatVerdict> ParseModerationAnswer(std::string_view json);

// Asks `app` on compute through the gateway's router. Unavailable while the router is not
// attached (compute still starting) or the app has no replica: the chat is then refused.
live::LiveService::ChatModerator ComputeModerator(compute::Gateway& gateway, std::string app = "moderation");

class PkDemo {
 public:
  struct Pk {
    std::string id;
    std::string rooms[2];
    int64_t scores[2] = {0, 0};
    int64_t ends_at_ms = 0;  // wall clock
  };

  // Publishes score updates at most every `min_interval` while a PK runs (and at its start and end).
  explicit PkDemo(live::LiveService& live, Duration min_interval = std::chrono::seconds(1));
  ~PkDemo();  // Stop()
  PkDemo(const PkDemo&) = delete;
  PkDemo& operator=(const PkDemo&) = delete;

  // Starts a PK between two distinct rooms for `length` (1 s .. 1 h). A room is in at most one
  // running PK: FailedPrecondition otherwise.
  Result<Pk> Start(const std::string& a, const std::string& b, Duration length);
  // The room observer: adds a gift's value to its room's running PK. Any thread.
  void Observe(const live::Message& message, double gift_value);
  // Ends the publishing thread; no callbacks into live after it returns.
  void Stop();

 private:
  struct Running {
    Pk pk;
    bool changed = true;  // scores changed since the last update went out
    SteadyTime last_sent{};
  };
  void Loop();
  void Send(const Pk& pk, bool ended);

  live::LiveService& live_;
  const Duration min_interval_;
  std::atomic<int> running_count_{0};  // lets Observe skip the lock when no PK runs
  Mutex mu_;
  std::map<std::string, Running> pks_ GUARDED_BY(mu_);      // by PK id
  std::map<std::string, std::string> by_room_ GUARDED_BY(mu_);  // room -> PK id
  uint64_t next_id_ GUARDED_BY(mu_) = 1;
  bool stop_ GUARDED_BY(mu_) = false;
  CondVar cv_;
  std::thread thread_;
};

// True for 127.0.0.0/8, ::1 and "localhost".
bool IsLoopbackHost(std::string_view host);

// POST /v1/dev/token and POST /v1/dev/pk (docs/web.md). With `loopback` false both answer 403:
// they hand out tokens without credentials. `pk` may be null (no live service): 503.
Status AddDevRoutes(net::Router& router, const net::TokenSigner& signer, PkDemo* pk, bool loopback);

// GET /ops: the compute ops page (web_root/ops.html).
Status AddPageRoutes(net::Router& router, const std::filesystem::path& web_root);

}  // namespace chorus::app
