// NatsClient: one NATS connection (core pub/sub and request/reply) plus its JetStream context
// (streams, de-duplicated publishes, durable pull consumers), over nats.c.
//
// Connection lifecycle. Connect() returns as soon as the options are valid: if no server answers
// yet, nats.c keeps trying in the background (RetryOnFailedConnect) and the client works once one
// does. A lost connection is retried forever every reconnect_wait; subscriptions are restored by
// nats.c on reconnect, JetStream consumers live in the server. connected() says whether a
// connection is up right now; SetStateCallback() reports the changes.
//
// Errors. Everything that reaches the network returns Status / Result:
//   - kUnavailable: not connected right now (JetStream calls, Flush, Request and Fetch refuse at
//     once instead of waiting for a server that is not there), no responders, the connection
//     closed, or a JetStream call / publish ack that timed out (request_timeout). A JsPublish that
//     failed this way may or may not have been stored: retry with the same msg_id and the
//     stream's duplicate window makes it count once.
//   - kDeadlineExceeded: a core Request() or Flush() not answered within its timeout.
//   - kInternal: any other JetStream or nats.c error; the message carries nats.c's text and the
//     JetStream error code.
//   - kNotFound: a stream (or the stream of a consumer) that does not exist.
//   - kInvalidArgument: bad options or arguments (empty subject, stream name...).
//   Core Publish() is the exception to "refuse when disconnected": nats.c buffers it (up to 8 MB)
//   while reconnecting and sends it after the reconnect, as NATS clients do.
//
// Threads. Every method of NatsClient, Subscription and PullConsumer may be called from any
// thread, concurrently. Handlers, the state callback and JsPublishAsync's `done` run on nats.c's
// threads (one per subscription, one shared for connection events, one for publish acks): keep
// them short, and do not block them on the same client's synchronous calls for long. A
// subscription whose handler falls behind has its messages queued by nats.c, up to 65536 (its
// default); beyond that nats.c drops them (a "slow consumer"), silently: core NATS is
// at-most-once. A JsMessage is a value: use each one from one thread at a time.
//
// Request/reply. Request() blocks its caller; RequestAsync() returns at once and completes
// through a callback (one shared reply subscription per client, `_INBOX.<nuid>.*`, and one
// timer thread started by the first call). The responder side is SubscribeMsgs() (optionally in
// a queue group: each message goes to one member of the group), whose handler sees the reply
// subject, answered with Respond().
//
// Not offered: push consumers, TLS and credentials.
//
// Lifetimes and callbacks. Destroying a Subscription unsubscribes; destroying the NatsClient
// closes the connection. When either destructor returns, no callback of it runs any more: the
// destructor waits for one in flight on another thread (and returns at once if called from inside
// that very callback, whose remaining code then still runs). nats.c reaches our callbacks through
// ids looked up in a registry, never through raw pointers, so an event nats.c delivers late (it
// queues connection events) finds nothing and is dropped. Subscriptions, PullConsumers and
// JsMessages may outlive the NatsClient (nats.c keeps the connection's memory while they hold
// it); they then fail with kUnavailable. A JsMessage keeps its consumer's subscription alive, so
// it can be acked after the PullConsumer is gone.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"

namespace chorus::nats {

struct NatsOptions {
  std::vector<std::string> urls;                    // "nats://127.0.0.1:4222"; at least one
  std::string name = "chorus";                      // connection name, shown by the server's monitoring
  bool no_echo = false;                             // don't deliver our own publishes to our subscriptions
  std::chrono::milliseconds connect_timeout{2000};  // one TCP connect + handshake
  // Wait between reconnect attempts to the same server. Reconnects never give up, and the first
  // connect is retried in the background too, so Connect() succeeds while the server is down.
  std::chrono::milliseconds reconnect_wait{250};
  std::chrono::milliseconds request_timeout{2000};  // JetStream API calls and publish acks
  // Deliver every subscription's messages from nats.c's shared delivery pool (one thread by
  // default) instead of one thread per subscription: for a process holding many subscriptions
  // (a live node subscribes per room). Handlers then share that thread: keep them short.
  bool shared_delivery = false;
};

// A core message as a SubscribeMsgs handler sees it; the views are valid during the call only.
struct NatsMessage {
  std::string_view subject;
  std::string_view reply;  // "" when the sender expects no answer
  std::string_view data;
};

namespace internal {
struct ClientImpl;        // the natsConnection, its jsCtx and the callback targets
struct SubscriptionImpl;  // a natsSubscription and its handler
struct ConsumerCore;      // a pull subscription, shared by its PullConsumer and its messages
struct Delivery;          // one fetched natsMsg and the ConsumerCore it is acked through
}  // namespace internal

// A message fetched from a pull consumer. Move-only; holds the underlying nats.c message until
// destroyed. A message neither acked nor nak'ed is redelivered after the consumer's ack_wait.
struct JsMessage {
  std::string subject;
  std::string data;
  std::string msg_id;  // the Nats-Msg-Id header, "" if none
  uint64_t stream_seq = 0;
  uint64_t deliveries = 0;  // 1 on first delivery

  JsMessage();
  ~JsMessage();
  JsMessage(JsMessage&&) noexcept;
  JsMessage& operator=(JsMessage&&) noexcept;
  JsMessage(const JsMessage&) = delete;
  JsMessage& operator=(const JsMessage&) = delete;

  // Each returns kFailedPrecondition once the message was already acked or nak'ed (or for a
  // default-constructed one), kUnavailable when the connection is gone.
  Status Ack();      // ack (sent asynchronously; lost if the connection drops right then)
  Status AckSync();  // ack and wait (request_timeout) for the server's confirmation
  Status Nak(std::chrono::milliseconds delay = std::chrono::milliseconds(0));  // redeliver after delay
  Status InProgress();  // still working on it: restarts the ack_wait timer; may be repeated

 private:
  friend class PullConsumer;
  std::unique_ptr<internal::Delivery> delivery_;
};

struct StreamConfig {
  std::string name;                      // "LIKES"
  std::vector<std::string> subjects;     // {"likes.actions.>"}
  bool file_storage = true;              // false = memory
  std::chrono::milliseconds max_age{0};  // 0 = unlimited
  std::chrono::milliseconds duplicate_window{120000};
  int replicas = 1;
};

struct ConsumerConfig {
  std::string durable;         // durable name (required; no '.')
  std::string filter_subject;  // "" = all of the stream's subjects
  std::chrono::milliseconds ack_wait{30000};
  int64_t max_ack_pending = 100000;
  int64_t max_deliver = -1;  // -1 = unlimited
};

// A core NATS subscription. Destroying it unsubscribes; see the header comment for callbacks.
class Subscription {
 public:
  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

 private:
  friend class NatsClient;
  explicit Subscription(std::unique_ptr<internal::SubscriptionImpl> impl);
  std::unique_ptr<internal::SubscriptionImpl> impl_;
};

// A subscription bound to a durable pull consumer. The consumer lives in the server: destroying
// this object leaves it (and its position) there for the next PullSubscribe with the same name.
class PullConsumer {
 public:
  ~PullConsumer();
  PullConsumer(const PullConsumer&) = delete;
  PullConsumer& operator=(const PullConsumer&) = delete;

  // Up to `max` messages (max >= 1), waiting at most `timeout` for the first; returns an empty
  // vector (not an error) on timeout; kUnavailable when the server/JetStream is unreachable
  // (including: not connected when called, or disconnected by the time the wait ended).
  // Concurrent Fetch calls on one consumer take turns (nats.c runs one at a time per
  // subscription); each still returns within its own timeout. For parallel pulls, bind several
  // PullConsumers to the same durable.
  Result<std::vector<JsMessage>> Fetch(size_t max, std::chrono::milliseconds timeout);

 private:
  friend class NatsClient;
  explicit PullConsumer(std::shared_ptr<internal::ConsumerCore> core);
  std::shared_ptr<internal::ConsumerCore> core_;
};

struct PublishAck {
  uint64_t stream_seq = 0;
  bool duplicate = false;  // the msg_id was seen within the duplicate window; stream_seq is the first's
};

class NatsClient {
 public:
  // kInvalidArgument for no URL, a non-positive timeout or reconnect_wait, or a URL nats.c
  // rejects. Does not wait for a server (see the header comment).
  static Result<std::unique_ptr<NatsClient>> Connect(const NatsOptions& options);
  ~NatsClient();  // closes; no callbacks after it returns
  NatsClient(const NatsClient&) = delete;
  NatsClient& operator=(const NatsClient&) = delete;

  bool connected() const;

  // Connection state changes: false on disconnect and on close, true on (re)connect (including
  // the first connect when it happened in the background). Runs on a nats.c thread, in order;
  // nats.c delivers these asynchronously, so connected() may already say otherwise. Replaces the
  // previous callback; nullptr removes it. Call before subscribing to see every change.
  void SetStateCallback(std::function<void(bool connected)> cb);

  // ---- Core NATS.
  Status Publish(std::string_view subject, std::string_view data);  // buffered, async
  // Waits until the server has processed everything published so far (a PING/PONG).
  Status Flush(std::chrono::milliseconds timeout);
  using Handler = std::function<void(std::string_view subject, std::string_view data)>;  // on a nats.c thread
  Result<std::unique_ptr<Subscription>> Subscribe(std::string_view subject, Handler handler);
  // kUnavailable when nobody subscribes to `subject` (no responders) or not connected;
  // kDeadlineExceeded when nobody answered within `timeout`.
  Result<std::string> Request(std::string_view subject, std::string_view data,
                              std::chrono::milliseconds timeout);
  // Request() without blocking: `done` runs exactly once, with the answer or the same errors
  // as Request(), on a nats.c thread or the client's request-timer thread; inline (before
  // RequestAsync returns) when the request cannot be sent (not connected, bad arguments).
  // Requests still unanswered when the NatsClient is destroyed complete with kUnavailable from
  // its destructor.
  void RequestAsync(std::string_view subject, std::string_view data, std::chrono::milliseconds timeout,
                    std::function<void(Result<std::string>)> done);

  // The responder side: like Subscribe, but the handler sees the reply subject. With a
  // non-empty `queue_group`, each message goes to one subscriber of the group (of all clients
  // subscribing with that group name), not to all.
  using MsgHandler = std::function<void(const NatsMessage& message)>;  // on a nats.c thread
  Result<std::unique_ptr<Subscription>> SubscribeMsgs(std::string_view subject, MsgHandler handler,
                                                      std::string_view queue_group = {});
  // Answers a request: publishes `data` to its reply subject (kInvalidArgument if empty).
  // Callable from the handler itself or later, from any thread.
  Status Respond(std::string_view reply_subject, std::string_view data);

  // ---- JetStream.
  // Creates the stream, or updates it if it exists with other settings. Settings the server
  // cannot change (storage type, ...) make it fail with kInternal and the server's reason.
  Status EnsureStream(const StreamConfig& config);
  Status DeleteStream(std::string_view name);  // kNotFound if there is no such stream
  // Synchronous publish with de-duplication by msg_id (Nats-Msg-Id) inside the stream's
  // duplicate window; an empty msg_id disables it. kUnavailable on timeout / no responders /
  // disconnected; kInternal on other JetStream errors.
  Result<PublishAck> JsPublish(std::string_view subject, std::string_view data, std::string_view msg_id);
  // The same, pipelined: returns at once, `done` runs exactly once with the ack or the error
  // (mapped as for JsPublish), on a nats.c thread; when the publish cannot even be sent (not
  // connected, too many in flight) `done` runs inline before JsPublishAsync returns. Publishes
  // still unanswered when the NatsClient is destroyed complete with kUnavailable from its
  // destructor. At most 4096 are in flight; beyond that a call waits up to request_timeout for
  // room, then fails with kUnavailable.
  void JsPublishAsync(std::string_view subject, std::string_view data, std::string_view msg_id,
                      std::function<void(Result<PublishAck>)> done);
  // Creates the durable consumer (explicit acks, deliver all) or updates it to `config`, then
  // binds a pull subscription to it. kNotFound if the stream does not exist.
  Result<std::unique_ptr<PullConsumer>> PullSubscribe(std::string_view stream, const ConsumerConfig& config);
  // Stream state for metrics: messages held, first and last seq. kNotFound if there is no such stream.
  struct StreamInfo {
    uint64_t messages = 0, first_seq = 0, last_seq = 0;
  };
  Result<StreamInfo> GetStreamInfo(std::string_view stream);

 private:
  explicit NatsClient(std::unique_ptr<internal::ClientImpl> impl);
  std::unique_ptr<internal::ClientImpl> impl_;
};

}  // namespace chorus::nats
