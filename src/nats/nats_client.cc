#include "nats/nats_client.h"

#include <nats/nats.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include "base/mutex.h"

namespace chorus::nats {
namespace {

using std::chrono::milliseconds;

constexpr const char* kMsgIdHeader = "Nats-Msg-Id";
// Async publishes in flight per client before JsPublishAsync waits for room.
constexpr int64_t kMaxAsyncPending = 4096;

int64_t Nanos(milliseconds d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }

// ---- library and errors ----------------------------------------------------------------------

// nats_Open must run once before the first connection; nats.c would do it lazily, but not
// safely from two threads at once.
natsStatus OpenLibraryOnce() {
  static std::once_flag once;
  static natsStatus status = NATS_OK;
  std::call_once(once, [] { status = nats_Open(-1); });
  return status;
}

bool IsUnavailable(natsStatus s) {
  switch (s) {
    case NATS_TIMEOUT:
    case NATS_NO_SERVER:
    case NATS_CONNECTION_CLOSED:
    case NATS_CONNECTION_DISCONNECTED:
    case NATS_NO_RESPONDERS:
    case NATS_NOT_YET_CONNECTED:
    case NATS_STALE_CONNECTION:
    case NATS_IO_ERROR:
    case NATS_INSUFFICIENT_BUFFER:
    case NATS_DRAINING:
      return true;
    default:
      return false;
  }
}

// A failed nats.c call as a Status: "nats: <op>: <status text> (<nats.c's detail>) [JetStream
// error N]". Must be called right after the failing call: the detail is nats.c's thread-local
// last error.
Status NatsError(natsStatus s, std::string_view op, int js_err = 0) {
  std::string text = "nats: " + std::string(op) + ": " + natsStatus_GetText(s);
  const char* detail = nats_GetLastError(nullptr);
  if (detail != nullptr && *detail != '\0' && text.find(detail) == std::string::npos) {
    text += std::string(" (") + detail + ")";
  }
  if (js_err != 0) text += " [JetStream error " + std::to_string(js_err) + "]";

  if (js_err == JSStreamNotFoundErr || js_err == JSConsumerNotFoundErr) return NotFound(std::move(text));
  if (js_err == JSNotEnabledErr || js_err == JSNotEnabledForAccountErr || js_err == JSClusterNotAvailErr) {
    return Unavailable(std::move(text));
  }
  if (IsUnavailable(s)) return Unavailable(std::move(text));
  switch (s) {
    case NATS_NOT_FOUND:
      return NotFound(std::move(text));
    case NATS_ILLEGAL_STATE:
      return FailedPrecondition(std::move(text));
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_MAX_PAYLOAD:
      return InvalidArgument(std::move(text));
    default:
      return Internal(std::move(text));
  }
}

// Core request/reply and flush: no answer in time is a deadline, not an outage.
Status NatsCoreError(natsStatus s, std::string_view op) {
  Status st = NatsError(s, op);
  if (s == NATS_TIMEOUT) return DeadlineExceeded(st.message());
  return st;
}

Status CheckPayload(std::string_view data) {
  if (data.size() > static_cast<size_t>(INT_MAX)) return InvalidArgument("nats: payload too large");
  return Status::Ok();
}

bool IsConnected(natsConnection* nc) { return natsConnection_Status(nc) == NATS_CONN_STATUS_CONNECTED; }

Status RequireConnected(natsConnection* nc, std::string_view op) {
  if (IsConnected(nc)) return Status::Ok();
  return Unavailable("nats: " + std::string(op) + ": not connected");
}

// ---- callbacks ---------------------------------------------------------------------------------
//
// nats.c calls back with a `void* closure`. Ours is never a pointer: it is an id in Registry,
// looked up on each call. nats.c may run a callback after we have finished with its object (it
// queues connection events on a shared thread and delivers them later; an ack may already be on
// its way through a delivery thread when the client closes), and an id that has been removed is
// simply not found. The lookup hands out a shared_ptr, so the target stays alive for the call.
//
// The guarantee "no callback after the destructor returns" comes from CallbackTarget::Close():
// it refuses every later Run() and waits for those in flight.

class CallbackTarget;
thread_local const CallbackTarget* t_running_target = nullptr;  // whose callback this thread runs

class CallbackTarget {
 public:
  virtual ~CallbackTarget() = default;

  // Runs fn() (without any lock held) unless Close() was called.
  template <typename F>
  void Run(F&& fn) {
    {
      MutexLock lock(mu_);
      if (closed_) return;
      ++running_;
    }
    const CallbackTarget* outer = std::exchange(t_running_target, this);
    fn();
    t_running_target = outer;
    {
      MutexLock lock(mu_);
      --running_;
    }
    idle_.NotifyAll();
  }

  // After Close() returns no fn() of this target runs, except the one that called Close() from
  // inside itself (it finishes after Close() returns). Idempotent.
  void Close() {
    MutexLock lock(mu_);
    closed_ = true;
    const int own = t_running_target == this ? 1 : 0;
    idle_.Wait(mu_, [&]() REQUIRES(mu_) { return running_ <= own; });
  }

 private:
  Mutex mu_;
  CondVar idle_;
  bool closed_ GUARDED_BY(mu_) = false;
  int running_ GUARDED_BY(mu_) = 0;
};

// Process-wide and never destroyed: nats.c threads may call back while the process exits.
class Registry {
 public:
  static Registry& Get() {
    static Registry* registry = new Registry();
    return *registry;
  }

  void* Add(std::shared_ptr<CallbackTarget> target) {
    const uint64_t id = next_id_.fetch_add(1, std::memory_order_relaxed);
    Shard& shard = ShardOf(id);
    MutexLock lock(shard.mu);
    shard.targets.emplace(id, std::move(target));
    // An id, not an address: it is only ever compared, never dereferenced.
    return reinterpret_cast<void*>(static_cast<uintptr_t>(id));  // NOLINT(performance-no-int-to-ptr)
  }

  void Remove(void* closure) {
    const uint64_t id = reinterpret_cast<uintptr_t>(closure);
    Shard& shard = ShardOf(id);
    std::shared_ptr<CallbackTarget> target;  // released after the lock
    MutexLock lock(shard.mu);
    auto it = shard.targets.find(id);
    if (it == shard.targets.end()) return;
    target = std::move(it->second);
    shard.targets.erase(it);
  }

  template <typename T>
  std::shared_ptr<T> Find(void* closure) {
    const uint64_t id = reinterpret_cast<uintptr_t>(closure);
    Shard& shard = ShardOf(id);
    MutexLock lock(shard.mu);
    auto it = shard.targets.find(id);
    if (it == shard.targets.end()) return nullptr;
    return std::static_pointer_cast<T>(it->second);
  }

 private:
  // Sharded so that busy subscriptions on different threads do not contend on one mutex.
  static constexpr size_t kShards = 16;
  struct Shard {
    Mutex mu;
    std::unordered_map<uint64_t, std::shared_ptr<CallbackTarget>> targets GUARDED_BY(mu);
  };
  Registry() = default;
  Shard& ShardOf(uint64_t id) { return shards_[id % kShards]; }

  std::atomic<uint64_t> next_id_{1};
  Shard shards_[kShards];
};

// Connection events for SetStateCallback.
class ConnTarget : public CallbackTarget {
 public:
  void Set(std::function<void(bool)> cb) {
    MutexLock lock(mu_);
    cb_ = std::move(cb);
  }
  void Notify(bool connected) {
    Run([&] {
      std::function<void(bool)> cb;
      {
        MutexLock lock(mu_);
        cb = cb_;
      }
      if (cb) cb(connected);
    });
  }

 private:
  Mutex mu_;
  std::function<void(bool)> cb_ GUARDED_BY(mu_);
};

void NotifyState(void* closure, bool connected) {
  if (auto target = Registry::Get().Find<ConnTarget>(closure)) target->Notify(connected);
}
void OnConnected(natsConnection*, void* closure) { NotifyState(closure, true); }
void OnReconnected(natsConnection*, void* closure) { NotifyState(closure, true); }
void OnDisconnected(natsConnection*, void* closure) { NotifyState(closure, false); }
void OnClosed(natsConnection*, void* closure) { NotifyState(closure, false); }

// A core subscription's handler.
class SubTarget : public CallbackTarget {
 public:
  explicit SubTarget(NatsClient::MsgHandler handler) : handler_(std::move(handler)) {}
  void Deliver(natsMsg* msg) {
    Run([&] {
      const char* data = natsMsg_GetData(msg);
      const char* reply = natsMsg_GetReply(msg);
      NatsMessage m{.subject = natsMsg_GetSubject(msg),
                    .reply = reply == nullptr ? std::string_view() : std::string_view(reply),
                    .data = std::string_view(data == nullptr ? "" : data,
                                             static_cast<size_t>(natsMsg_GetDataLength(msg)))};
      handler_(m);
    });
  }

 private:
  const NatsClient::MsgHandler handler_;
};

void OnMsg(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  if (auto target = Registry::Get().Find<SubTarget>(closure)) target->Deliver(msg);
  natsMsg_Destroy(msg);
}

// RequestAsync's pending requests: one reply subscription (`<inbox>.*`) per client, each request
// answered on `<inbox>.<token>`, and a timer thread that fails requests past their deadline.
class RequestMux : public CallbackTarget {
 public:
  using Done = std::function<void(Result<std::string>)>;
  using Clock = std::chrono::steady_clock;

  explicit RequestMux(std::string inbox) : inbox_(std::move(inbox)) {
    timer_ = std::thread([this] { TimerLoop(); });
  }
  ~RequestMux() override { Shutdown(); }

  const std::string& inbox() const { return inbox_; }

  // Registers a request; returns its reply subject.
  std::string Add(Done done, Clock::time_point deadline) {
    uint64_t token;
    {
      MutexLock lock(mu_);
      token = next_token_++;
      pending_.emplace(token, Pending{std::move(done), deadline});
      deadlines_.emplace(deadline, token);
    }
    wake_.NotifyAll();
    return inbox_ + "." + std::to_string(token);
  }
  Done Take(std::string_view reply_subject) {
    if (reply_subject.size() <= inbox_.size() + 1) return nullptr;
    const std::string_view tail = reply_subject.substr(inbox_.size() + 1);
    uint64_t token = 0;
    for (char c : tail) {
      if (c < '0' || c > '9') return nullptr;
      token = token * 10 + static_cast<uint64_t>(c - '0');
    }
    MutexLock lock(mu_);
    return TakeLocked(token);
  }
  void Deliver(natsMsg* msg) {
    Run([&] {
      Done done = Take(natsMsg_GetSubject(msg));
      if (!done) return;  // timed out already
      if (natsMsg_IsNoResponders(msg)) {
        return done(Unavailable("nats: request: no responders"));
      }
      const char* data = natsMsg_GetData(msg);
      done(data == nullptr ? std::string() : std::string(data, static_cast<size_t>(natsMsg_GetDataLength(msg))));
    });
  }

  // Stops the timer and fails every request still pending, on the calling thread. Idempotent.
  void Shutdown() {
    {
      MutexLock lock(mu_);
      stopping_ = true;
    }
    wake_.NotifyAll();
    if (timer_.joinable()) {
      // From inside a `done` run by the timer thread itself: it ends on its own.
      if (timer_.get_id() == std::this_thread::get_id()) {
        timer_.detach();
      } else {
        timer_.join();
      }
    }
    std::unordered_map<uint64_t, Pending> pending;
    {
      MutexLock lock(mu_);
      pending.swap(pending_);
      deadlines_.clear();
    }
    for (auto& [token, p] : pending) p.done(Unavailable("nats: request: client closed before the reply"));
  }

 private:
  struct Pending {
    Done done;
    Clock::time_point deadline;
  };

  Done TakeLocked(uint64_t token) REQUIRES(mu_) {
    auto it = pending_.find(token);
    if (it == pending_.end()) return nullptr;
    Done done = std::move(it->second.done);
    deadlines_.erase({it->second.deadline, token});
    pending_.erase(it);
    return done;
  }

  void TimerLoop() {
    for (;;) {
      Done done;
      {
        MutexLock lock(mu_);
        if (stopping_) return;
        if (deadlines_.empty()) {
          wake_.Wait(mu_);
          continue;
        }
        const Clock::time_point next = deadlines_.begin()->first;
        if (Clock::now() < next) {
          wake_.WaitUntil(mu_, next, [&]() REQUIRES(mu_) {
            return stopping_ || (!deadlines_.empty() && deadlines_.begin()->first < next);
          });
          continue;
        }
        done = TakeLocked(deadlines_.begin()->second);
      }
      if (done) done(DeadlineExceeded("nats: request: no reply in time"));
    }
  }

  const std::string inbox_;
  Mutex mu_;
  CondVar wake_;
  bool stopping_ GUARDED_BY(mu_) = false;
  uint64_t next_token_ GUARDED_BY(mu_) = 1;
  std::unordered_map<uint64_t, Pending> pending_ GUARDED_BY(mu_);
  std::set<std::pair<Clock::time_point, uint64_t>> deadlines_ GUARDED_BY(mu_);
  std::thread timer_;
};

void OnMuxReply(natsConnection*, natsSubscription*, natsMsg* msg, void* closure) {
  if (auto target = Registry::Get().Find<RequestMux>(closure)) target->Deliver(msg);
  natsMsg_Destroy(msg);
}

// JsPublishAsync's callbacks, by the natsMsg each one published (unique while in flight: we
// destroy a message only after its entry is gone).
class AsyncPublisher : public CallbackTarget {
 public:
  using Done = std::function<void(Result<PublishAck>)>;

  void Add(natsMsg* msg, Done done) {
    MutexLock lock(mu_);
    pending_.emplace(msg, std::move(done));
  }
  Done Take(natsMsg* msg) {
    MutexLock lock(mu_);
    auto it = pending_.find(msg);
    if (it == pending_.end()) return nullptr;
    Done done = std::move(it->second);
    pending_.erase(it);
    return done;
  }
  // After Close(): completes everything still waiting, on the calling thread.
  void FailAll(const Status& status) {
    std::unordered_map<natsMsg*, Done> pending;
    {
      MutexLock lock(mu_);
      pending.swap(pending_);
    }
    for (auto& [msg, done] : pending) done(status);
  }

 private:
  Mutex mu_;
  std::unordered_map<natsMsg*, Done> pending_ GUARDED_BY(mu_);
};

void OnPubAck(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  if (auto target = Registry::Get().Find<AsyncPublisher>(closure)) {
    // Take inside Run: once the publisher is closed the entry stays, and FailAll completes it.
    target->Run([&] {
      AsyncPublisher::Done done = target->Take(msg);
      if (!done) return;
      if (pa != nullptr) {
        done(PublishAck{.stream_seq = pa->Sequence, .duplicate = pa->Duplicate});
      } else if (pae != nullptr) {
        std::string text = "nats: async publish: " + std::string(natsStatus_GetText(pae->Err));
        if (pae->ErrText != nullptr && *pae->ErrText != '\0') text += std::string(" (") + pae->ErrText + ")";
        if (pae->ErrCode != 0) text += " [JetStream error " + std::to_string(pae->ErrCode) + "]";
        done(IsUnavailable(pae->Err) ? Unavailable(std::move(text)) : Internal(std::move(text)));
      } else {
        done(Internal("nats: async publish: neither ack nor error"));
      }
    });
  }
  natsMsg_Destroy(msg);  // an AckHandler owns the message
}

// Builds a message for `subject` with the Nats-Msg-Id header when msg_id is not empty.
Result<natsMsg*> NewMsg(std::string_view subject, std::string_view data, std::string_view msg_id) {
  CHORUS_RETURN_IF_ERROR(CheckPayload(data));
  const std::string subj(subject);
  natsMsg* msg = nullptr;
  natsStatus s = natsMsg_Create(&msg, subj.c_str(), nullptr, data.data(), static_cast<int>(data.size()));
  if (s != NATS_OK) return NatsError(s, "creating a message");
  if (!msg_id.empty()) {
    s = natsMsgHeader_Set(msg, kMsgIdHeader, std::string(msg_id).c_str());
    if (s != NATS_OK) {
      natsMsg_Destroy(msg);
      return NatsError(s, "setting Nats-Msg-Id");
    }
  }
  return msg;
}

}  // namespace

// ---- internal types ------------------------------------------------------------------------------

namespace internal {

struct ClientImpl {
  NatsOptions options;
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  std::shared_ptr<ConnTarget> conn_target = std::make_shared<ConnTarget>();
  void* conn_id = nullptr;
  std::shared_ptr<AsyncPublisher> publisher = std::make_shared<AsyncPublisher>();
  void* publisher_id = nullptr;
  // RequestAsync's reply subscription, made by the first call.
  Mutex mux_mu;
  std::shared_ptr<RequestMux> mux GUARDED_BY(mux_mu);
  natsSubscription* mux_sub GUARDED_BY(mux_mu) = nullptr;
  void* mux_id GUARDED_BY(mux_mu) = nullptr;

  ~ClientImpl() {
    // Taken out first: a reply callback in flight may itself call RequestAsync (a retry).
    std::shared_ptr<RequestMux> requests;
    natsSubscription* requests_sub = nullptr;
    void* requests_id = nullptr;
    {
      MutexLock lock(mux_mu);
      requests = std::move(mux);
      requests_sub = std::exchange(mux_sub, nullptr);
      requests_id = std::exchange(mux_id, nullptr);
    }
    if (requests != nullptr) {
      (void)natsSubscription_Unsubscribe(requests_sub);
      requests->Close();
      Registry::Get().Remove(requests_id);
      natsSubscription_Destroy(requests_sub);
      requests->Shutdown();  // pending requests fail now
    }
    // No callback of ours once this returns (see the header), then the connection goes.
    conn_target->Close();
    Registry::Get().Remove(conn_id);
    publisher->Close();
    Registry::Get().Remove(publisher_id);
    // Async publishes still unacknowledged fail now. nats.c may still hand us their acks (or
    // time them out) later: the publisher's id is gone, so OnPubAck only frees the message.
    // (js_PublishAsyncGetPendingList would take them back, but nats.c 3.4 crashes in it on a
    // context that never published asynchronously.)
    publisher->FailAll(Unavailable("nats: async publish: client closed before the ack"));
    if (nc != nullptr) natsConnection_Close(nc);
    // Only references: nats.c frees them when subscriptions still holding them are gone too.
    if (js != nullptr) jsCtx_Destroy(js);
    if (nc != nullptr) natsConnection_Destroy(nc);
  }
};

struct SubscriptionImpl {
  natsSubscription* sub = nullptr;
  std::shared_ptr<SubTarget> target;
  void* id = nullptr;
};

struct ConsumerCore {
  natsSubscription* sub = nullptr;
  natsConnection* nc = nullptr;  // kept alive by sub (nats.c subscriptions hold their connection)

  ~ConsumerCore() {
    // Destroy, not Unsubscribe: the durable consumer stays in the server.
    if (sub != nullptr) natsSubscription_Destroy(sub);
  }

  // nats.c refuses a second fetch on a subscription while one is running, so Fetch calls take
  // turns. False if `deadline` passed before this caller's turn came.
  bool BeginFetch(std::chrono::steady_clock::time_point deadline) {
    MutexLock lock(mu);
    if (!turn.WaitUntil(mu, deadline, [&]() REQUIRES(mu) { return !fetching; })) return false;
    fetching = true;
    return true;
  }
  void EndFetch() {
    {
      MutexLock lock(mu);
      fetching = false;
    }
    turn.NotifyOne();
  }

  Mutex mu;
  CondVar turn;
  bool fetching GUARDED_BY(mu) = false;
};

struct Delivery {
  natsMsg* msg = nullptr;
  std::shared_ptr<ConsumerCore> core;  // acks go through the subscription
  bool finished = false;               // acked or nak'ed
  ~Delivery() { natsMsg_Destroy(msg); }
};

}  // namespace internal

// ---- JsMessage -----------------------------------------------------------------------------------

JsMessage::JsMessage() = default;
JsMessage::~JsMessage() = default;
JsMessage::JsMessage(JsMessage&&) noexcept = default;
JsMessage& JsMessage::operator=(JsMessage&&) noexcept = default;

namespace {

Status CheckOpen(const internal::Delivery* d, std::string_view op) {
  if (d == nullptr) return FailedPrecondition("nats: " + std::string(op) + ": no message");
  if (d->finished)
    return FailedPrecondition("nats: " + std::string(op) + ": message already acked or nak'ed");
  return Status::Ok();
}

}  // namespace

Status JsMessage::Ack() {
  CHORUS_RETURN_IF_ERROR(CheckOpen(delivery_.get(), "ack"));
  natsStatus s = natsMsg_Ack(delivery_->msg, nullptr);
  if (s != NATS_OK) return NatsError(s, "ack");
  delivery_->finished = true;
  return Status::Ok();
}

Status JsMessage::AckSync() {
  CHORUS_RETURN_IF_ERROR(CheckOpen(delivery_.get(), "ack"));
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = natsMsg_AckSync(delivery_->msg, nullptr, &jerr);
  if (s != NATS_OK) return NatsError(s, "ack (sync)", jerr);
  delivery_->finished = true;
  return Status::Ok();
}

Status JsMessage::Nak(milliseconds delay) {
  CHORUS_RETURN_IF_ERROR(CheckOpen(delivery_.get(), "nak"));
  natsStatus s = delay.count() > 0 ? natsMsg_NakWithDelay(delivery_->msg, delay.count(), nullptr)
                                   : natsMsg_Nak(delivery_->msg, nullptr);
  if (s != NATS_OK) return NatsError(s, "nak");
  delivery_->finished = true;
  return Status::Ok();
}

Status JsMessage::InProgress() {
  CHORUS_RETURN_IF_ERROR(CheckOpen(delivery_.get(), "in progress"));
  natsStatus s = natsMsg_InProgress(delivery_->msg, nullptr);
  if (s != NATS_OK) return NatsError(s, "in progress");
  return Status::Ok();
}

// ---- Subscription / PullConsumer ---------------------------------------------------------------

Subscription::Subscription(std::unique_ptr<internal::SubscriptionImpl> impl) : impl_(std::move(impl)) {}

Subscription::~Subscription() {
  // Unsubscribe first so nats.c stops queueing; then wait out a handler in flight.
  (void)natsSubscription_Unsubscribe(impl_->sub);
  impl_->target->Close();
  Registry::Get().Remove(impl_->id);
  natsSubscription_Destroy(impl_->sub);
}

PullConsumer::PullConsumer(std::shared_ptr<internal::ConsumerCore> core) : core_(std::move(core)) {}
PullConsumer::~PullConsumer() = default;

Result<std::vector<JsMessage>> PullConsumer::Fetch(size_t max, milliseconds timeout) {
  if (max == 0) return InvalidArgument("nats: fetch: max must be at least 1");
  if (timeout.count() <= 0) return InvalidArgument("nats: fetch: timeout must be positive");
  // A pull request sent while disconnected would sit in nats.c's reconnect buffer and the wait
  // would end in a timeout that looks like "no messages".
  CHORUS_RETURN_IF_ERROR(RequireConnected(core_->nc, "fetch"));
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  if (!core_->BeginFetch(deadline)) return std::vector<JsMessage>();  // another Fetch had it all along
  const int64_t wait_ms = std::max<int64_t>(
      1, std::chrono::ceil<milliseconds>(deadline - std::chrono::steady_clock::now()).count());
  const int batch = max > static_cast<size_t>(INT_MAX) ? INT_MAX : static_cast<int>(max);
  natsMsgList list{};
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = natsSubscription_Fetch(&list, core_->sub, batch, wait_ms, &jerr);
  core_->EndFetch();
  if (s != NATS_OK && !(s == NATS_TIMEOUT && list.Count > 0)) {
    Status error = NatsError(s, "fetch", jerr);
    natsMsgList_Destroy(&list);
    if (s == NATS_TIMEOUT) {
      if (!IsConnected(core_->nc)) return Unavailable("nats: fetch: disconnected while waiting");
      return std::vector<JsMessage>();
    }
    return error;
  }

  std::vector<JsMessage> out;
  out.reserve(static_cast<size_t>(list.Count));
  for (int i = 0; i < list.Count; ++i) {
    natsMsg* msg = std::exchange(list.Msgs[i], nullptr);  // ours now; natsMsgList_Destroy skips it
    JsMessage m;
    m.subject = natsMsg_GetSubject(msg);
    const char* data = natsMsg_GetData(msg);
    if (data != nullptr) m.data.assign(data, static_cast<size_t>(natsMsg_GetDataLength(msg)));
    const char* msg_id = nullptr;
    if (natsMsgHeader_Get(msg, kMsgIdHeader, &msg_id) == NATS_OK && msg_id != nullptr) m.msg_id = msg_id;
    jsMsgMetaData* meta = nullptr;
    if (natsMsg_GetMetaData(&meta, msg) == NATS_OK) {
      m.stream_seq = meta->Sequence.Stream;
      m.deliveries = meta->NumDelivered;
      jsMsgMetaData_Destroy(meta);
    }
    m.delivery_ = std::make_unique<internal::Delivery>();
    m.delivery_->msg = msg;
    m.delivery_->core = core_;
    out.push_back(std::move(m));
  }
  natsMsgList_Destroy(&list);
  return out;
}

// ---- NatsClient ------------------------------------------------------------------------------------

NatsClient::NatsClient(std::unique_ptr<internal::ClientImpl> impl) : impl_(std::move(impl)) {}
NatsClient::~NatsClient() = default;

Result<std::unique_ptr<NatsClient>> NatsClient::Connect(const NatsOptions& options) {
  if (options.urls.empty()) return InvalidArgument("nats: no server URL");
  for (const std::string& url : options.urls) {
    if (url.empty()) return InvalidArgument("nats: empty server URL");
  }
  if (options.connect_timeout.count() <= 0 || options.reconnect_wait.count() <= 0 ||
      options.request_timeout.count() <= 0) {
    return InvalidArgument("nats: connect_timeout, reconnect_wait and request_timeout must be positive");
  }
  natsStatus s = OpenLibraryOnce();
  if (s != NATS_OK) return NatsError(s, "nats_Open");

  auto impl = std::make_unique<internal::ClientImpl>();
  impl->options = options;
  impl->conn_id = Registry::Get().Add(impl->conn_target);
  impl->publisher_id = Registry::Get().Add(impl->publisher);

  natsOptions* opts = nullptr;
  if ((s = natsOptions_Create(&opts)) != NATS_OK) return NatsError(s, "natsOptions_Create");
  std::unique_ptr<natsOptions, void (*)(natsOptions*)> opts_guard(opts, natsOptions_Destroy);
  std::vector<const char*> urls;
  for (const std::string& url : options.urls) urls.push_back(url.c_str());
  void* conn_id = impl->conn_id;
  if ((s = natsOptions_SetServers(opts, urls.data(), static_cast<int>(urls.size()))) != NATS_OK) {
    return NatsError(s, "server URLs");
  }
  if ((s = natsOptions_SetName(opts, options.name.c_str())) != NATS_OK ||
      (s = natsOptions_SetNoEcho(opts, options.no_echo)) != NATS_OK ||
      (s = natsOptions_UseGlobalMessageDelivery(opts, options.shared_delivery)) != NATS_OK ||
      (s = natsOptions_SetTimeout(opts, options.connect_timeout.count())) != NATS_OK ||
      (s = natsOptions_SetMaxReconnect(opts, -1)) != NATS_OK ||
      (s = natsOptions_SetReconnectWait(opts, options.reconnect_wait.count())) != NATS_OK ||
      (s = natsOptions_SetRetryOnFailedConnect(opts, true, OnConnected, conn_id)) != NATS_OK ||
      (s = natsOptions_SetDisconnectedCB(opts, OnDisconnected, conn_id)) != NATS_OK ||
      (s = natsOptions_SetReconnectedCB(opts, OnReconnected, conn_id)) != NATS_OK ||
      (s = natsOptions_SetClosedCB(opts, OnClosed, conn_id)) != NATS_OK) {
    return NatsError(s, "connection options");
  }

  // With RetryOnFailedConnect, NATS_NOT_YET_CONNECTED means "connecting in the background".
  s = natsConnection_Connect(&impl->nc, opts);
  // A URL nats.c cannot parse comes back as NATS_INVALID_ARG: kInvalidArgument.
  if (s != NATS_OK && s != NATS_NOT_YET_CONNECTED) return NatsError(s, "connect");

  jsOptions jo;
  if ((s = jsOptions_Init(&jo)) != NATS_OK) return NatsError(s, "jsOptions_Init");
  jo.Wait = options.request_timeout.count();
  jo.PublishAsync.MaxPending = kMaxAsyncPending;
  jo.PublishAsync.StallWait = options.request_timeout.count();
  jo.PublishAsync.AckHandler = OnPubAck;
  jo.PublishAsync.AckHandlerClosure = impl->publisher_id;
  if ((s = natsConnection_JetStream(&impl->js, impl->nc, &jo)) != NATS_OK)
    return NatsError(s, "JetStream context");

  return std::unique_ptr<NatsClient>(new NatsClient(std::move(impl)));
}

bool NatsClient::connected() const { return IsConnected(impl_->nc); }

void NatsClient::SetStateCallback(std::function<void(bool connected)> cb) {
  impl_->conn_target->Set(std::move(cb));
}

Status NatsClient::Publish(std::string_view subject, std::string_view data) {
  CHORUS_RETURN_IF_ERROR(CheckPayload(data));
  const std::string subj(subject);
  natsStatus s = natsConnection_Publish(impl_->nc, subj.c_str(), data.data(), static_cast<int>(data.size()));
  if (s != NATS_OK) return NatsError(s, "publish");
  return Status::Ok();
}

Status NatsClient::Flush(milliseconds timeout) {
  if (timeout.count() <= 0) return InvalidArgument("nats: flush: timeout must be positive");
  CHORUS_RETURN_IF_ERROR(RequireConnected(impl_->nc, "flush"));
  natsStatus s = natsConnection_FlushTimeout(impl_->nc, timeout.count());
  if (s != NATS_OK) return NatsCoreError(s, "flush");
  return Status::Ok();
}

Result<std::unique_ptr<Subscription>> NatsClient::Subscribe(std::string_view subject, Handler handler) {
  if (!handler) return InvalidArgument("nats: subscribe: no handler");
  return SubscribeMsgs(subject, [handler = std::move(handler)](const NatsMessage& m) { handler(m.subject, m.data); });
}

Result<std::unique_ptr<Subscription>> NatsClient::SubscribeMsgs(std::string_view subject, MsgHandler handler,
                                                                std::string_view queue_group) {
  if (!handler) return InvalidArgument("nats: subscribe: no handler");
  auto impl = std::make_unique<internal::SubscriptionImpl>();
  impl->target = std::make_shared<SubTarget>(std::move(handler));
  impl->id = Registry::Get().Add(impl->target);
  const std::string subj(subject);
  const std::string queue(queue_group);
  natsStatus s = queue.empty()
                     ? natsConnection_Subscribe(&impl->sub, impl_->nc, subj.c_str(), OnMsg, impl->id)
                     : natsConnection_QueueSubscribe(&impl->sub, impl_->nc, subj.c_str(), queue.c_str(), OnMsg, impl->id);
  if (s != NATS_OK) {
    Status error = NatsError(s, "subscribe to '" + subj + "'");
    Registry::Get().Remove(impl->id);
    return error;
  }
  return std::unique_ptr<Subscription>(new Subscription(std::move(impl)));
}

Status NatsClient::Respond(std::string_view reply_subject, std::string_view data) {
  if (reply_subject.empty()) return InvalidArgument("nats: respond: the request has no reply subject");
  return Publish(reply_subject, data);
}

void NatsClient::RequestAsync(std::string_view subject, std::string_view data, milliseconds timeout,
                              std::function<void(Result<std::string>)> done) {
  if (!done) done = [](const Result<std::string>&) {};
  if (timeout.count() <= 0) return done(InvalidArgument("nats: request: timeout must be positive"));
  if (subject.empty()) return done(InvalidArgument("nats: request: empty subject"));
  if (Status st = CheckPayload(data); !st.ok()) return done(st);
  if (Status st = RequireConnected(impl_->nc, "request"); !st.ok()) return done(st);
  std::shared_ptr<RequestMux> mux;
  {
    MutexLock lock(impl_->mux_mu);
    if (impl_->mux == nullptr) {
      natsInbox* inbox = nullptr;
      natsStatus s = natsInbox_Create(&inbox);
      if (s != NATS_OK) return done(NatsError(s, "request inbox"));
      auto created = std::make_shared<RequestMux>(inbox);
      natsInbox_Destroy(inbox);
      void* id = Registry::Get().Add(created);
      const std::string wildcard = created->inbox() + ".*";
      natsSubscription* sub = nullptr;
      s = natsConnection_Subscribe(&sub, impl_->nc, wildcard.c_str(), OnMuxReply, id);
      if (s != NATS_OK) {
        Status error = NatsError(s, "request reply subscription");
        Registry::Get().Remove(id);
        created->Shutdown();
        return done(error);
      }
      impl_->mux = std::move(created);
      impl_->mux_sub = sub;
      impl_->mux_id = id;
    }
    mux = impl_->mux;
  }
  // Registered before publishing: the reply may come back before PublishRequest returns.
  const std::string reply = mux->Add(std::move(done), std::chrono::steady_clock::now() + timeout);
  const std::string subj(subject);
  natsStatus s = natsConnection_PublishRequest(impl_->nc, subj.c_str(), reply.c_str(), data.data(),
                                               static_cast<int>(data.size()));
  if (s != NATS_OK) {
    Status error = NatsCoreError(s, "request on '" + subj + "'");
    if (RequestMux::Done mine = mux->Take(reply)) mine(error);
  }
}

Result<std::string> NatsClient::Request(std::string_view subject, std::string_view data,
                                        milliseconds timeout) {
  if (timeout.count() <= 0) return InvalidArgument("nats: request: timeout must be positive");
  CHORUS_RETURN_IF_ERROR(CheckPayload(data));
  CHORUS_RETURN_IF_ERROR(RequireConnected(impl_->nc, "request"));
  const std::string subj(subject);
  natsMsg* reply = nullptr;
  natsStatus s = natsConnection_Request(&reply, impl_->nc, subj.c_str(), data.data(),
                                        static_cast<int>(data.size()), timeout.count());
  if (s != NATS_OK) return NatsCoreError(s, "request on '" + subj + "'");
  const char* bytes = natsMsg_GetData(reply);
  std::string out = bytes == nullptr ? std::string()
                                     : std::string(bytes, static_cast<size_t>(natsMsg_GetDataLength(reply)));
  natsMsg_Destroy(reply);
  return out;
}

Status NatsClient::EnsureStream(const StreamConfig& config) {
  if (config.name.empty()) return InvalidArgument("nats: stream: no name");
  if (config.subjects.empty()) return InvalidArgument("nats: stream " + config.name + ": no subjects");
  CHORUS_RETURN_IF_ERROR(RequireConnected(impl_->nc, "stream " + config.name));
  jsStreamConfig cfg;
  natsStatus s = jsStreamConfig_Init(&cfg);
  if (s != NATS_OK) return NatsError(s, "jsStreamConfig_Init");
  std::vector<const char*> subjects;
  for (const std::string& subject : config.subjects) subjects.push_back(subject.c_str());
  cfg.Name = config.name.c_str();
  cfg.Subjects = subjects.data();
  cfg.SubjectsLen = static_cast<int>(subjects.size());
  cfg.Storage = config.file_storage ? js_FileStorage : js_MemoryStorage;
  cfg.MaxAge = Nanos(config.max_age);
  cfg.Duplicates = Nanos(config.duplicate_window);
  cfg.Replicas = config.replicas;

  jsErrCode jerr = static_cast<jsErrCode>(0);
  jsStreamInfo* info = nullptr;
  // The server answers an identical create with the existing stream, and a create with other
  // settings with "name already in use": then it is an update.
  s = js_AddStream(&info, impl_->js, &cfg, nullptr, &jerr);
  if (s == NATS_OK) {
    jsStreamInfo_Destroy(info);
    return Status::Ok();
  }
  if (jerr != JSStreamNameExistErr) return NatsError(s, "creating stream " + config.name, jerr);
  jerr = static_cast<jsErrCode>(0);
  s = js_UpdateStream(&info, impl_->js, &cfg, nullptr, &jerr);
  if (s != NATS_OK) return NatsError(s, "updating stream " + config.name, jerr);
  jsStreamInfo_Destroy(info);
  return Status::Ok();
}

Status NatsClient::DeleteStream(std::string_view name) {
  const std::string stream(name);
  if (stream.empty()) return InvalidArgument("nats: delete stream: no name");
  CHORUS_RETURN_IF_ERROR(RequireConnected(impl_->nc, "delete stream " + stream));
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_DeleteStream(impl_->js, stream.c_str(), nullptr, &jerr);
  if (s != NATS_OK) return NatsError(s, "deleting stream " + stream, jerr);
  return Status::Ok();
}

Result<PublishAck> NatsClient::JsPublish(std::string_view subject, std::string_view data,
                                         std::string_view msg_id) {
  // Refuse at once rather than buffer the publish for after a reconnect and time out meanwhile.
  CHORUS_RETURN_IF_ERROR(RequireConnected(impl_->nc, "JetStream publish"));
  CHORUS_ASSIGN_OR_RETURN(natsMsg * msg, NewMsg(subject, data, msg_id));
  std::unique_ptr<natsMsg, void (*)(natsMsg*)> msg_guard(msg, natsMsg_Destroy);
  jsPubOptions po;
  natsStatus s = jsPubOptions_Init(&po);
  if (s != NATS_OK) return NatsError(s, "jsPubOptions_Init");
  po.MaxWait = impl_->options.request_timeout.count();
  jsPubAck* pa = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  s = js_PublishMsg(&pa, impl_->js, msg, &po, &jerr);
  if (s != NATS_OK) {
    Status error = NatsError(s, "JetStream publish to '" + std::string(subject) + "'", jerr);
    // Not found here means no stream listens on the subject: the same as no responders.
    if (error.code() == StatusCode::kNotFound) return Unavailable(error.message());
    return error;
  }
  PublishAck ack{.stream_seq = pa->Sequence, .duplicate = pa->Duplicate};
  jsPubAck_Destroy(pa);
  return ack;
}

void NatsClient::JsPublishAsync(std::string_view subject, std::string_view data, std::string_view msg_id,
                                std::function<void(Result<PublishAck>)> done) {
  if (!done) done = [](const Result<PublishAck>&) {};
  if (Status st = RequireConnected(impl_->nc, "JetStream async publish"); !st.ok()) return done(st);
  Result<natsMsg*> created = NewMsg(subject, data, msg_id);
  if (!created.ok()) return done(created.status());
  natsMsg* msg = *created;
  jsPubOptions po;
  natsStatus s = jsPubOptions_Init(&po);
  if (s != NATS_OK) {
    natsMsg_Destroy(msg);
    return done(NatsError(s, "jsPubOptions_Init"));
  }
  po.MaxWait = impl_->options.request_timeout.count();  // an ack not back by then fails the publish

  // Registered before sending: the ack may arrive before js_PublishMsgAsync returns.
  impl_->publisher->Add(msg, std::move(done));
  natsMsg* handed = msg;  // nats.c clears it when it takes the message
  s = js_PublishMsgAsync(impl_->js, &handed, &po);
  if (s != NATS_OK) {
    Status error = NatsError(s, "JetStream async publish to '" + std::string(subject) + "'");
    if (s == NATS_TIMEOUT) error = Unavailable("nats: JetStream async publish: too many publishes in flight");
    AsyncPublisher::Done mine = impl_->publisher->Take(msg);
    natsMsg_Destroy(handed);  // still ours (nullptr, a no-op, if nats.c took it after all)
    if (mine) mine(error);
  }
}

Result<std::unique_ptr<PullConsumer>> NatsClient::PullSubscribe(std::string_view stream,
                                                                const ConsumerConfig& config) {
  const std::string stream_name(stream);
  if (stream_name.empty()) return InvalidArgument("nats: pull subscribe: no stream");
  if (config.durable.empty()) return InvalidArgument("nats: pull subscribe: no durable name");
  const std::string what = "consumer " + stream_name + "/" + config.durable;
  CHORUS_RETURN_IF_ERROR(RequireConnected(impl_->nc, what));

  jsConsumerConfig cc;
  natsStatus s = jsConsumerConfig_Init(&cc);
  if (s != NATS_OK) return NatsError(s, "jsConsumerConfig_Init");
  cc.Durable = config.durable.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.DeliverPolicy = js_DeliverAll;
  cc.AckWait = Nanos(config.ack_wait);
  cc.MaxAckPending = config.max_ack_pending;
  cc.MaxDeliver = config.max_deliver;
  if (!config.filter_subject.empty()) cc.FilterSubject = config.filter_subject.c_str();

  // Created (or updated) here rather than by js_PullSubscribe: nats.c deletes a consumer that
  // its subscribe call created when the subscription is unsubscribed.
  jsErrCode jerr = static_cast<jsErrCode>(0);
  jsConsumerInfo* info = nullptr;
  s = js_AddConsumer(&info, impl_->js, stream_name.c_str(), &cc, nullptr, &jerr);
  if (s != NATS_OK && jerr == JSConsumerNameExistErr) {
    jerr = static_cast<jsErrCode>(0);
    s = js_UpdateConsumer(&info, impl_->js, stream_name.c_str(), &cc, nullptr, &jerr);
    if (s != NATS_OK) return NatsError(s, "updating " + what, jerr);
  } else if (s != NATS_OK) {
    return NatsError(s, "creating " + what, jerr);
  }
  jsConsumerInfo_Destroy(info);

  jsSubOptions so;
  if ((s = jsSubOptions_Init(&so)) != NATS_OK) return NatsError(s, "jsSubOptions_Init");
  so.Stream = stream_name.c_str();
  so.Consumer = config.durable.c_str();
  auto core = std::make_shared<internal::ConsumerCore>();
  core->nc = impl_->nc;
  jerr = static_cast<jsErrCode>(0);
  s = js_PullSubscribe(&core->sub, impl_->js,
                       config.filter_subject.empty() ? nullptr : config.filter_subject.c_str(),
                       config.durable.c_str(), nullptr, &so, &jerr);
  if (s != NATS_OK) return NatsError(s, "binding to " + what, jerr);
  return std::unique_ptr<PullConsumer>(new PullConsumer(std::move(core)));
}

Result<NatsClient::StreamInfo> NatsClient::GetStreamInfo(std::string_view stream) {
  const std::string name(stream);
  if (name.empty()) return InvalidArgument("nats: stream info: no name");
  CHORUS_RETURN_IF_ERROR(RequireConnected(impl_->nc, "stream info " + name));
  jsStreamInfo* info = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  natsStatus s = js_GetStreamInfo(&info, impl_->js, name.c_str(), nullptr, &jerr);
  if (s != NATS_OK) return NatsError(s, "stream info " + name, jerr);
  StreamInfo out{
      .messages = info->State.Msgs, .first_seq = info->State.FirstSeq, .last_seq = info->State.LastSeq};
  jsStreamInfo_Destroy(info);
  return out;
}

}  // namespace chorus::nats
