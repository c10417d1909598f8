#include "nats/nats_client.h"

#include <nats/nats.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "support/engines.h"
#include "support/eventually.h"

namespace chorus::nats {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Generous: the machine may be busy compiling. Waits end as soon as their condition holds.
constexpr auto kWait = seconds(30);
bool WaitFor(const std::function<bool()>& pred) { return testing::Eventually(pred, kWait); }

// What a subscription handler saw, readable from the test thread.
class Inbox {
 public:
  NatsClient::Handler Handler() {
    return [this](std::string_view subject, std::string_view data) {
      MutexLock lock(mu_);
      messages_.emplace_back(std::string(subject), std::string(data));
    };
  }
  std::vector<std::pair<std::string, std::string>> messages() const {
    MutexLock lock(mu_);
    return messages_;
  }
  size_t size() const {
    MutexLock lock(mu_);
    return messages_.size();
  }
  bool Has(const std::string& data) const {
    MutexLock lock(mu_);
    for (const auto& m : messages_) {
      if (m.second == data) return true;
    }
    return false;
  }

 private:
  mutable Mutex mu_;
  std::vector<std::pair<std::string, std::string>> messages_ GUARDED_BY(mu_);
};

// Connection state changes as reported by SetStateCallback.
class StateLog {
 public:
  std::function<void(bool)> Callback() {
    return [this](bool connected) {
      MutexLock lock(mu_);
      events_.push_back(connected);
    };
  }
  bool Saw(bool connected) const {
    MutexLock lock(mu_);
    for (bool e : events_) {
      if (e == connected) return true;
    }
    return false;
  }
  void Clear() {
    MutexLock lock(mu_);
    events_.clear();
  }

 private:
  mutable Mutex mu_;
  std::vector<bool> events_ GUARDED_BY(mu_);
};

class NatsClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = chorus::testing::NatsServer::Start();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(server).value();
  }

  NatsOptions Options() const {
    NatsOptions options;
    options.urls = {server_->url()};
    options.reconnect_wait = milliseconds(50);
    options.request_timeout = milliseconds(2000);
    return options;
  }

  std::unique_ptr<NatsClient> MustConnect(const NatsOptions& options) {
    auto client = NatsClient::Connect(options);
    EXPECT_TRUE(client.ok()) << client.status().ToString();
    if (!client.ok()) return nullptr;
    return std::move(client).value();
  }
  std::unique_ptr<NatsClient> MustConnect() { return MustConnect(Options()); }

  static StreamConfig Stream(const std::string& name, const std::string& subjects) {
    StreamConfig config;
    config.name = name;
    config.subjects = {subjects};
    return config;
  }

  // Fetches until `count` messages arrived (a fetch may return fewer than asked for).
  static std::vector<JsMessage> FetchN(PullConsumer& consumer, size_t count) {
    std::vector<JsMessage> out;
    const auto until = std::chrono::steady_clock::now() + kWait;
    while (out.size() < count && std::chrono::steady_clock::now() < until) {
      auto batch = consumer.Fetch(count - out.size(), seconds(5));
      EXPECT_TRUE(batch.ok()) << batch.status().ToString();
      if (!batch.ok()) break;
      for (JsMessage& m : *batch) out.push_back(std::move(m));
    }
    return out;
  }

  std::unique_ptr<chorus::testing::NatsServer> server_;
};

// ---- connecting ------------------------------------------------------------------------------

TEST_F(NatsClientTest, ConnectRejectsBadOptions) {
  NatsOptions options;
  EXPECT_EQ(NatsClient::Connect(options).status().code(), StatusCode::kInvalidArgument);
  options = Options();
  options.request_timeout = milliseconds(0);
  EXPECT_EQ(NatsClient::Connect(options).status().code(), StatusCode::kInvalidArgument);
  options = Options();
  options.urls = {"nats://127.0.0.1:notaport"};
  auto bad_url = NatsClient::Connect(options);
  EXPECT_EQ(bad_url.status().code(), StatusCode::kInvalidArgument) << bad_url.status().ToString();
}

TEST_F(NatsClientTest, ConnectsAndReportsConnected) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  EXPECT_TRUE(client->connected());
  EXPECT_TRUE(client->Flush(seconds(5)).ok());
}

// ---- core NATS -------------------------------------------------------------------------------

TEST_F(NatsClientTest, PublishSubscribeRoundtripAndUnsubscribeByDestructor) {
  auto subscriber = MustConnect();
  auto publisher = MustConnect();
  ASSERT_TRUE(subscriber && publisher);

  Inbox first;
  auto sub = subscriber->Subscribe("chorus.test.>", first.Handler());
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  ASSERT_TRUE(subscriber->Flush(seconds(5)).ok());  // the SUB reached the server

  const std::string binary("bin\0ary \xFF", 9);
  ASSERT_TRUE(publisher->Publish("chorus.test.a", binary).ok());
  ASSERT_TRUE(publisher->Publish("chorus.other", "not for us").ok());
  ASSERT_TRUE(publisher->Publish("chorus.test.b.c", "").ok());
  ASSERT_TRUE(WaitFor([&] { return first.size() >= 2; }));
  EXPECT_THAT(first.messages(), ElementsAre(std::make_pair(std::string("chorus.test.a"), binary),
                                            std::make_pair(std::string("chorus.test.b.c"), std::string())));

  // Destroyed: unsubscribed. A second subscription on the same subject is the witness that a
  // later message did arrive at this client.
  sub->reset();
  const size_t seen = first.size();
  Inbox second;
  auto witness = subscriber->Subscribe("chorus.test.>", second.Handler());
  ASSERT_TRUE(witness.ok());
  ASSERT_TRUE(subscriber->Flush(seconds(5)).ok());
  ASSERT_TRUE(publisher->Publish("chorus.test.after", "after").ok());
  ASSERT_TRUE(WaitFor([&] { return second.Has("after"); }));
  ASSERT_TRUE(subscriber->Flush(seconds(5)).ok());
  EXPECT_EQ(first.size(), seen);
}

TEST_F(NatsClientTest, SubscriptionDestructorWaitsForTheHandlerInFlight) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  std::atomic<bool> in_handler{false};
  std::atomic<bool> release{false};
  std::atomic<bool> handler_returned{false};
  auto sub = client->Subscribe("block", [&](std::string_view, std::string_view) {
    in_handler = true;
    while (!release) std::this_thread::sleep_for(milliseconds(1));
    handler_returned = true;
  });
  ASSERT_TRUE(sub.ok());
  ASSERT_TRUE(client->Publish("block", "x").ok());
  ASSERT_TRUE(WaitFor([&] { return in_handler.load(); }));

  std::atomic<bool> destroyed{false};
  std::atomic<bool> handler_done_at_destroy{false};
  std::thread destroyer([&] {
    sub->reset();
    handler_done_at_destroy = handler_returned.load();
    destroyed = true;
  });
  std::this_thread::sleep_for(milliseconds(100));  // room for a wrong destructor to return early
  EXPECT_FALSE(destroyed);
  release = true;
  destroyer.join();
  EXPECT_TRUE(handler_done_at_destroy);
}

TEST_F(NatsClientTest, SubscriptionMayBeDestroyedFromItsOwnHandler) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  Mutex mu;
  std::unique_ptr<Subscription> sub;  // guarded by mu (a local: annotated by hand below)
  std::atomic<int> calls{0};
  std::atomic<bool> destroyed{false};
  auto created = client->Subscribe("self", [&](std::string_view, std::string_view) {
    ++calls;
    MutexLock lock(mu);
    sub.reset();  // unsubscribes from inside: must neither deadlock nor crash
    destroyed = true;
  });
  ASSERT_TRUE(created.ok());
  {
    MutexLock lock(mu);
    sub = std::move(created).value();
  }
  ASSERT_TRUE(client->Publish("self", "1").ok());
  ASSERT_TRUE(WaitFor([&] { return destroyed.load(); }));
  ASSERT_TRUE(client->Publish("self", "2").ok());
  ASSERT_TRUE(client->Flush(seconds(5)).ok());
  EXPECT_EQ(calls, 1);
}

TEST_F(NatsClientTest, NoEchoIsHonored) {
  NatsOptions quiet_options = Options();
  quiet_options.no_echo = true;
  auto quiet = MustConnect(quiet_options);
  auto echoing = MustConnect();
  auto other = MustConnect();
  ASSERT_TRUE(quiet && echoing && other);

  Inbox quiet_inbox;
  Inbox echo_inbox;
  auto quiet_sub = quiet->Subscribe("echo", quiet_inbox.Handler());
  auto echo_sub = echoing->Subscribe("echo", echo_inbox.Handler());
  ASSERT_TRUE(quiet_sub.ok() && echo_sub.ok());
  ASSERT_TRUE(quiet->Flush(seconds(5)).ok());
  ASSERT_TRUE(echoing->Flush(seconds(5)).ok());

  ASSERT_TRUE(quiet->Publish("echo", "from-quiet").ok());
  ASSERT_TRUE(quiet->Flush(seconds(5)).ok());
  ASSERT_TRUE(echoing->Publish("echo", "from-echoing").ok());
  ASSERT_TRUE(echoing->Flush(seconds(5)).ok());
  ASSERT_TRUE(other->Publish("echo", "from-other").ok());  // published last: arrives last

  ASSERT_TRUE(WaitFor([&] { return quiet_inbox.Has("from-other") && echo_inbox.Has("from-other"); }));
  EXPECT_FALSE(quiet_inbox.Has("from-quiet"));   // its own publish is not echoed back
  EXPECT_TRUE(quiet_inbox.Has("from-echoing"));  // others' are delivered
  EXPECT_TRUE(echo_inbox.Has("from-echoing"));   // the default echoes
  EXPECT_TRUE(echo_inbox.Has("from-quiet"));
}

// A responder written against nats.c directly (our Handler has no reply subject).
struct RawResponder {
  natsConnection* nc = nullptr;
  natsSubscription* sub = nullptr;
  ~RawResponder() {
    natsSubscription_Destroy(sub);
    natsConnection_Destroy(nc);
  }
  static void Answer(natsConnection* nc, natsSubscription*, natsMsg* msg, void*) {
    const std::string reply = "re:" + std::string(natsMsg_GetData(msg), natsMsg_GetDataLength(msg));
    if (natsMsg_GetReply(msg) != nullptr) {
      natsConnection_Publish(nc, natsMsg_GetReply(msg), reply.data(), static_cast<int>(reply.size()));
    }
    natsMsg_Destroy(msg);
  }
  static void Ignore(natsConnection*, natsSubscription*, natsMsg* msg, void*) { natsMsg_Destroy(msg); }
};

TEST_F(NatsClientTest, RequestReplyNoRespondersAndTimeout) {
  RawResponder responder;
  ASSERT_EQ(natsConnection_ConnectTo(&responder.nc, server_->url().c_str()), NATS_OK);
  ASSERT_EQ(natsConnection_Subscribe(&responder.sub, responder.nc, "svc.echo", RawResponder::Answer, nullptr),
            NATS_OK);
  natsSubscription* silent = nullptr;
  ASSERT_EQ(natsConnection_Subscribe(&silent, responder.nc, "svc.silent", RawResponder::Ignore, nullptr),
            NATS_OK);
  std::unique_ptr<natsSubscription, void (*)(natsSubscription*)> silent_guard(silent,
                                                                              natsSubscription_Destroy);
  ASSERT_EQ(natsConnection_FlushTimeout(responder.nc, 5000), NATS_OK);

  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  auto reply = client->Request("svc.echo", std::string("ping\0!", 6), seconds(5));
  ASSERT_TRUE(reply.ok()) << reply.status().ToString();
  EXPECT_EQ(*reply, std::string("re:ping\0!", 9));

  auto nobody = client->Request("svc.nobody", "x", seconds(5));
  EXPECT_EQ(nobody.status().code(), StatusCode::kUnavailable) << nobody.status().ToString();

  auto late = client->Request("svc.silent", "x", milliseconds(200));
  EXPECT_EQ(late.status().code(), StatusCode::kDeadlineExceeded) << late.status().ToString();
}

// Collects RequestAsync completions.
class Replies {
 public:
  std::function<void(Result<std::string>)> Done() {
    return [this](Result<std::string> r) {
      MutexLock lock(mu_);
      results_.push_back(std::move(r));
    };
  }
  size_t size() const {
    MutexLock lock(mu_);
    return results_.size();
  }
  Result<std::string> at(size_t i) const {
    MutexLock lock(mu_);
    return results_.at(i);
  }

 private:
  mutable Mutex mu_;
  std::vector<Result<std::string>> results_ GUARDED_BY(mu_);
};

TEST_F(NatsClientTest, ResponderAnswersRequestAndRequestAsync) {
  auto responder = MustConnect();
  auto client = MustConnect();
  ASSERT_TRUE(responder && client);
  NatsClient* r = responder.get();
  auto sub = responder->SubscribeMsgs("svc.upper", [r](const NatsMessage& m) {
    std::string out(m.data);
    for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    EXPECT_TRUE(r->Respond(m.reply, out).ok());
  });
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  ASSERT_TRUE(responder->Flush(seconds(5)).ok());

  auto sync = client->Request("svc.upper", "abc", seconds(5));
  ASSERT_TRUE(sync.ok()) << sync.status().ToString();
  EXPECT_EQ(*sync, "ABC");

  // Many in flight at once, each answered with its own reply.
  Replies replies;
  constexpr int kRequests = 50;
  for (int i = 0; i < kRequests; ++i) client->RequestAsync("svc.upper", "m" + std::to_string(i), seconds(5), replies.Done());
  ASSERT_TRUE(WaitFor([&] { return replies.size() == kRequests; }));
  std::set<std::string> got;
  for (size_t i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(replies.at(i).ok()) << replies.at(i).status().ToString();
    got.insert(*replies.at(i));
  }
  EXPECT_EQ(got.size(), static_cast<size_t>(kRequests));
  EXPECT_TRUE(got.count("M0") && got.count("M49"));

  // Respond needs a reply subject.
  EXPECT_EQ(responder->Respond("", "x").code(), StatusCode::kInvalidArgument);
  // A plain publish has none: the handler sees "".
  std::atomic<bool> saw_empty_reply{false};
  auto plain = responder->SubscribeMsgs("svc.plain", [&](const NatsMessage& m) { saw_empty_reply = m.reply.empty(); });
  ASSERT_TRUE(plain.ok());
  ASSERT_TRUE(responder->Flush(seconds(5)).ok());
  ASSERT_TRUE(client->Publish("svc.plain", "x").ok());
  ASSERT_TRUE(WaitFor([&] { return saw_empty_reply.load(); }));
}

TEST_F(NatsClientTest, RequestAsyncNoRespondersTimeoutAndClose) {
  auto client = MustConnect();
  auto silent_side = MustConnect();
  ASSERT_TRUE(client && silent_side);
  auto silent = silent_side->SubscribeMsgs("svc.silent", [](const NatsMessage&) {});
  ASSERT_TRUE(silent.ok());
  ASSERT_TRUE(silent_side->Flush(seconds(5)).ok());

  Replies nobody;
  client->RequestAsync("svc.nobody", "x", seconds(5), nobody.Done());
  ASSERT_TRUE(WaitFor([&] { return nobody.size() == 1; }));
  EXPECT_EQ(nobody.at(0).status().code(), StatusCode::kUnavailable) << nobody.at(0).status().ToString();

  Replies late;
  const auto start = std::chrono::steady_clock::now();
  client->RequestAsync("svc.silent", "x", milliseconds(200), late.Done());
  ASSERT_TRUE(WaitFor([&] { return late.size() == 1; }));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(200));
  EXPECT_EQ(late.at(0).status().code(), StatusCode::kDeadlineExceeded) << late.at(0).status().ToString();

  Replies bad;
  client->RequestAsync("svc.silent", "x", milliseconds(0), bad.Done());
  ASSERT_EQ(bad.size(), 1u);  // inline
  EXPECT_EQ(bad.at(0).status().code(), StatusCode::kInvalidArgument);

  // Still pending when the client goes: completed by the destructor.
  Replies pending;
  client->RequestAsync("svc.silent", "x", seconds(60), pending.Done());
  client.reset();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending.at(0).status().code(), StatusCode::kUnavailable);
}

TEST_F(NatsClientTest, RequestAsyncWhileDisconnectedFailsInline) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  server_->Stop();
  ASSERT_TRUE(WaitFor([&] { return !client->connected(); }));
  Replies replies;
  client->RequestAsync("svc.any", "x", seconds(5), replies.Done());
  ASSERT_EQ(replies.size(), 1u);
  EXPECT_EQ(replies.at(0).status().code(), StatusCode::kUnavailable);
}

TEST_F(NatsClientTest, QueueGroupDeliversEachMessageToOneMember) {
  NatsOptions shared = Options();
  shared.shared_delivery = true;  // the pool option must not change what is delivered
  auto a = MustConnect(shared);
  auto b = MustConnect();
  auto publisher = MustConnect();
  ASSERT_TRUE(a && b && publisher);
  std::atomic<int> got_a{0}, got_b{0};
  auto sa = a->SubscribeMsgs("work.q", [&](const NatsMessage&) { ++got_a; }, "workers");
  auto sb = b->SubscribeMsgs("work.q", [&](const NatsMessage&) { ++got_b; }, "workers");
  ASSERT_TRUE(sa.ok() && sb.ok());
  ASSERT_TRUE(a->Flush(seconds(5)).ok());
  ASSERT_TRUE(b->Flush(seconds(5)).ok());
  constexpr int kMessages = 200;
  for (int i = 0; i < kMessages; ++i) ASSERT_TRUE(publisher->Publish("work.q", "job").ok());
  ASSERT_TRUE(publisher->Flush(seconds(5)).ok());
  ASSERT_TRUE(WaitFor([&] { return got_a + got_b == kMessages; }));
  ASSERT_TRUE(a->Flush(seconds(5)).ok());
  ASSERT_TRUE(b->Flush(seconds(5)).ok());
  EXPECT_EQ(got_a + got_b, kMessages);  // none twice
  EXPECT_GT(got_a, 0);                  // both members served (200 random picks)
  EXPECT_GT(got_b, 0);
}

// ---- JetStream -------------------------------------------------------------------------------

TEST_F(NatsClientTest, EnsureStreamIsIdempotentUpdatesAndDeletes) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  StreamConfig config = Stream("LIKES", "likes.actions.>");
  Status s = client->EnsureStream(config);
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(client->JsPublish("likes.actions.x", "1", "id-1").ok());
  s = client->EnsureStream(config);  // the same again: nothing changes, the message stays
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto info = client->GetStreamInfo("LIKES");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->messages, 1u);

  config.max_age = seconds(3600);  // other settings: updated in place
  config.subjects.push_back("likes.extra");
  s = client->EnsureStream(config);
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto extra = client->JsPublish("likes.extra", "2", "");
  ASSERT_TRUE(extra.ok()) << extra.status().ToString();  // the new subject is captured
  EXPECT_EQ(extra->stream_seq, 2u);

  config.file_storage = false;  // the server cannot change the storage type
  s = client->EnsureStream(config);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();

  s = client->DeleteStream("LIKES");
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(client->GetStreamInfo("LIKES").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(client->DeleteStream("LIKES").code(), StatusCode::kNotFound);
  // No stream listens any more: the publish has no responders.
  EXPECT_EQ(client->JsPublish("likes.actions.x", "1", "id-9").status().code(), StatusCode::kUnavailable);
}

TEST_F(NatsClientTest, JsPublishSequencesAndDeduplicatesByMsgId) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("S", "s.>")).ok());
  for (uint64_t i = 1; i <= 3; ++i) {
    auto ack = client->JsPublish("s.x", "payload " + std::to_string(i), "msg-" + std::to_string(i));
    ASSERT_TRUE(ack.ok()) << ack.status().ToString();
    EXPECT_EQ(ack->stream_seq, i);
    EXPECT_FALSE(ack->duplicate);
  }
  auto again = client->JsPublish("s.x", "payload 1 retried", "msg-1");
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->stream_seq, 1u);

  // Without a msg_id nothing is de-duplicated.
  auto a = client->JsPublish("s.x", "same", "");
  auto b = client->JsPublish("s.x", "same", "");
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(b->stream_seq, a->stream_seq + 1);

  auto info = client->GetStreamInfo("S");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->messages, 5u);
  EXPECT_EQ(info->first_seq, 1u);
  EXPECT_EQ(info->last_seq, 5u);
}

TEST_F(NatsClientTest, JsPublishAsyncCompletesEveryPublish) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("ASYNC", "async.>")).ok());

  constexpr int kCount = 200;
  Mutex mu;
  std::vector<Result<PublishAck>> results;  // appended under mu by nats.c's thread
  for (int i = 0; i < kCount; ++i) {
    client->JsPublishAsync("async.x", "m" + std::to_string(i), "async-" + std::to_string(i % 150),
                           [&](Result<PublishAck> r) {
                             MutexLock lock(mu);
                             results.push_back(std::move(r));
                           });
  }
  ASSERT_TRUE(WaitFor([&] {
    MutexLock lock(mu);
    return results.size() == kCount;
  }));
  std::set<uint64_t> seqs;
  int duplicates = 0;
  {
    MutexLock lock(mu);
    for (const auto& r : results) {
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      if (r->duplicate) {
        ++duplicates;
      } else {
        seqs.insert(r->stream_seq);
      }
    }
  }
  EXPECT_EQ(duplicates, kCount - 150);  // ids 0..49 were sent twice
  EXPECT_EQ(seqs.size(), 150u);
  EXPECT_EQ(*seqs.begin(), 1u);
  EXPECT_EQ(*seqs.rbegin(), 150u);
  auto info = client->GetStreamInfo("ASYNC");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->messages, 150u);
}

TEST_F(NatsClientTest, JsPublishAsyncFailsWhenNoAckComes) {
  // Something listens on the subject but is not a stream: the request goes out, no ack comes back.
  RawResponder silent;
  ASSERT_EQ(natsConnection_ConnectTo(&silent.nc, server_->url().c_str()), NATS_OK);
  ASSERT_EQ(natsConnection_Subscribe(&silent.sub, silent.nc, "void.x", RawResponder::Ignore, nullptr),
            NATS_OK);
  ASSERT_EQ(natsConnection_FlushTimeout(silent.nc, 5000), NATS_OK);

  NatsOptions options = Options();
  options.request_timeout = milliseconds(300);
  auto client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  Mutex mu;
  std::vector<Status> results;  // appended under mu
  client->JsPublishAsync("void.x", "lost", "", [&](const Result<PublishAck>& r) {
    MutexLock lock(mu);
    results.push_back(r.status());
  });
  ASSERT_TRUE(WaitFor([&] {
    MutexLock lock(mu);
    return !results.empty();
  }));
  MutexLock lock(mu);
  EXPECT_EQ(results[0].code(), StatusCode::kUnavailable) << results[0].ToString();

  // Synchronous: the same, as a returned status.
  EXPECT_EQ(client->JsPublish("void.x", "lost", "").status().code(), StatusCode::kUnavailable);
}

TEST_F(NatsClientTest, PullConsumerFetchesAndAcks) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("P", "p.>")).ok());
  for (int i = 1; i <= 3; ++i) {
    ASSERT_TRUE(
        client->JsPublish("p." + std::to_string(i), "data " + std::to_string(i), "id-" + std::to_string(i))
            .ok());
  }
  ASSERT_TRUE(client->JsPublish("p.noid", "no id", "").ok());

  ConsumerConfig config;
  config.durable = "worker";
  auto consumer = client->PullSubscribe("P", config);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  std::vector<JsMessage> messages = FetchN(**consumer, 4);
  ASSERT_EQ(messages.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(messages[i].subject, "p." + std::to_string(i + 1));
    EXPECT_EQ(messages[i].data, "data " + std::to_string(i + 1));
    EXPECT_EQ(messages[i].msg_id, "id-" + std::to_string(i + 1));
    EXPECT_EQ(messages[i].stream_seq, static_cast<uint64_t>(i + 1));
    EXPECT_EQ(messages[i].deliveries, 1u);
  }
  EXPECT_EQ(messages[3].msg_id, "");
  ASSERT_TRUE(messages[0].Ack().ok());
  ASSERT_TRUE(messages[1].InProgress().ok());
  Status s = messages[1].AckSync();
  ASSERT_TRUE(s.ok()) << s.ToString();
  ASSERT_TRUE(messages[2].AckSync().ok());
  ASSERT_TRUE(messages[3].AckSync().ok());
  EXPECT_EQ(messages[0].Ack().code(), StatusCode::kFailedPrecondition);  // acked already
  EXPECT_EQ(JsMessage().Ack().code(), StatusCode::kFailedPrecondition);

  // Everything acked: nothing left, which is an empty batch, not an error.
  auto empty = (*consumer)->Fetch(10, milliseconds(300));
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->empty());

  // A message outlives its consumer and can still be acked.
  ASSERT_TRUE(client->JsPublish("p.late", "late", "").ok());
  std::vector<JsMessage> late = FetchN(**consumer, 1);
  ASSERT_EQ(late.size(), 1u);
  consumer->reset();
  s = late[0].AckSync();
  EXPECT_TRUE(s.ok()) << s.ToString();

  EXPECT_EQ(client->PullSubscribe("NOPE", config).status().code(), StatusCode::kNotFound);
}

TEST_F(NatsClientTest, ConcurrentFetchesOnOneConsumerTakeTurns) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("C", "c.>")).ok());
  ConsumerConfig config;
  config.durable = "shared";
  auto consumer = client->PullSubscribe("C", config);
  ASSERT_TRUE(consumer.ok());

  // Two threads wait on one consumer at once; each message goes to one of them.
  std::vector<Result<std::vector<JsMessage>>> results;
  results.reserve(2);
  for (int t = 0; t < 2; ++t) results.emplace_back(Internal("not run"));
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] { results[t] = (*consumer)->Fetch(1, seconds(20)); });
  }
  ASSERT_TRUE(client->JsPublish("c.x", "1", "").ok());
  ASSERT_TRUE(client->JsPublish("c.x", "2", "").ok());
  for (auto& t : threads) t.join();
  std::set<std::string> got;
  for (auto& r : results) {
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->size(), 1u);
    got.insert((*r)[0].data);
    EXPECT_TRUE((*r)[0].AckSync().ok());
  }
  EXPECT_EQ(got, (std::set<std::string>{"1", "2"}));

  // A Fetch that never gets its turn within its timeout returns empty, like any timeout.
  std::thread long_fetch([&] { EXPECT_TRUE((*consumer)->Fetch(1, seconds(2)).ok()); });
  auto short_fetch = (*consumer)->Fetch(1, milliseconds(50));
  ASSERT_TRUE(short_fetch.ok()) << short_fetch.status().ToString();
  EXPECT_TRUE(short_fetch->empty());
  long_fetch.join();
}

TEST_F(NatsClientTest, NakedMessageIsRedelivered) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("N", "n.>")).ok());
  ASSERT_TRUE(client->JsPublish("n.x", "retry me", "only").ok());
  ConsumerConfig config;
  config.durable = "naker";
  auto consumer = client->PullSubscribe("N", config);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();

  std::vector<JsMessage> first = FetchN(**consumer, 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].deliveries, 1u);
  ASSERT_TRUE(first[0].Nak(milliseconds(0)).ok());

  std::vector<JsMessage> second = FetchN(**consumer, 1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].stream_seq, first[0].stream_seq);
  EXPECT_EQ(second[0].data, "retry me");
  EXPECT_EQ(second[0].deliveries, 2u);
  ASSERT_TRUE(second[0].Nak(milliseconds(100)).ok());  // with a delay

  std::vector<JsMessage> third = FetchN(**consumer, 1);
  ASSERT_EQ(third.size(), 1u);
  EXPECT_EQ(third[0].deliveries, 3u);
  EXPECT_TRUE(third[0].AckSync().ok());
}

TEST_F(NatsClientTest, UnackedMessageIsRedeliveredAfterAckWait) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("W", "w.>")).ok());
  ASSERT_TRUE(client->JsPublish("w.x", "forgotten", "").ok());
  ConsumerConfig config;
  config.durable = "slow";
  config.ack_wait = milliseconds(500);
  auto consumer = client->PullSubscribe("W", config);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();

  std::vector<JsMessage> first = FetchN(**consumer, 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].deliveries, 1u);
  // Not acked: the server hands it out again once ack_wait has passed.
  std::vector<JsMessage> again = FetchN(**consumer, 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].stream_seq, first[0].stream_seq);
  EXPECT_EQ(again[0].deliveries, 2u);
  EXPECT_TRUE(again[0].AckSync().ok());
}

TEST_F(NatsClientTest, DurableConsumerContinuesWhereItLeftOffWithANewClient) {
  {
    auto client = MustConnect();
    ASSERT_NE(client, nullptr);
    ASSERT_TRUE(client->EnsureStream(Stream("D", "d.>")).ok());
    for (int i = 1; i <= 5; ++i) ASSERT_TRUE(client->JsPublish("d.x", std::to_string(i), "").ok());
    ConsumerConfig config;
    config.durable = "resumer";
    auto consumer = client->PullSubscribe("D", config);
    ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
    std::vector<JsMessage> done = FetchN(**consumer, 2);
    ASSERT_EQ(done.size(), 2u);
    for (JsMessage& m : done) ASSERT_TRUE(m.AckSync().ok());
  }  // consumer and client gone; the durable stays in the server

  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ConsumerConfig config;
  config.durable = "resumer";
  auto consumer = client->PullSubscribe("D", config);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  std::vector<JsMessage> rest = FetchN(**consumer, 3);
  ASSERT_EQ(rest.size(), 3u);
  EXPECT_EQ(rest[0].stream_seq, 3u);
  EXPECT_EQ(rest[0].data, "3");
  EXPECT_EQ(rest[2].stream_seq, 5u);
  EXPECT_EQ(rest[0].deliveries, 1u);
}

TEST_F(NatsClientTest, PullSubscribeFiltersAndUpdatesTheConsumer) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("F", "f.>")).ok());
  ASSERT_TRUE(client->JsPublish("f.skip", "skip", "").ok());
  ASSERT_TRUE(client->JsPublish("f.keep", "keep", "").ok());

  ConsumerConfig config;
  config.durable = "filtered";
  config.filter_subject = "f.keep";
  auto consumer = client->PullSubscribe("F", config);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  std::vector<JsMessage> got = FetchN(**consumer, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].subject, "f.keep");
  EXPECT_EQ(got[0].stream_seq, 2u);
  ASSERT_TRUE(got[0].AckSync().ok());
  consumer->reset();

  // The same durable with other settings is updated in place and keeps its position.
  config.ack_wait = seconds(10);
  config.max_ack_pending = 10;
  auto updated = client->PullSubscribe("F", config);
  ASSERT_TRUE(updated.ok()) << updated.status().ToString();
  {  // what the server now holds, seen through nats.c directly
    natsConnection* nc = nullptr;
    ASSERT_EQ(natsConnection_ConnectTo(&nc, server_->url().c_str()), NATS_OK);
    std::unique_ptr<natsConnection, void (*)(natsConnection*)> nc_guard(nc, natsConnection_Destroy);
    jsCtx* js = nullptr;
    ASSERT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
    std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_guard(js, jsCtx_Destroy);
    jsConsumerInfo* ci = nullptr;
    ASSERT_EQ(js_GetConsumerInfo(&ci, js, "F", "filtered", nullptr, nullptr), NATS_OK);
    EXPECT_EQ(ci->Config->AckWait, int64_t{10'000'000'000});
    EXPECT_EQ(ci->Config->MaxAckPending, 10);
    EXPECT_EQ(std::string(ci->Config->FilterSubject), "f.keep");
    jsConsumerInfo_Destroy(ci);
  }
  ASSERT_TRUE(client->JsPublish("f.keep", "keep 2", "").ok());
  got = FetchN(**updated, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].data, "keep 2");
}

TEST_F(NatsClientTest, SubscriptionsAndMessagesMayOutliveTheClient) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->EnsureStream(Stream("O", "o.>")).ok());
  ASSERT_TRUE(client->JsPublish("o.x", "1", "").ok());
  ConsumerConfig config;
  config.durable = "outliver";
  auto consumer = client->PullSubscribe("O", config);
  ASSERT_TRUE(consumer.ok());
  std::vector<JsMessage> got = FetchN(**consumer, 1);
  ASSERT_EQ(got.size(), 1u);
  Inbox inbox;
  auto sub = client->Subscribe("o.core", inbox.Handler());
  ASSERT_TRUE(sub.ok());

  client.reset();
  EXPECT_EQ(got[0].Ack().code(), StatusCode::kUnavailable);
  EXPECT_EQ((*consumer)->Fetch(1, milliseconds(100)).status().code(), StatusCode::kUnavailable);
  consumer->reset();
  sub->reset();
}

// ---- the server goes away and comes back ----------------------------------------------------------

TEST_F(NatsClientTest, ServerStopMakesCallsUnavailableAndRestartReconnectsByItself) {
  NatsOptions options = Options();
  options.request_timeout = milliseconds(1000);
  auto client = MustConnect(options);
  ASSERT_NE(client, nullptr);
  StateLog states;
  client->SetStateCallback(states.Callback());
  Inbox inbox;
  auto sub = client->Subscribe("core.>", inbox.Handler());
  ASSERT_TRUE(sub.ok());
  ASSERT_TRUE(client->EnsureStream(Stream("R", "r.>")).ok());
  ASSERT_TRUE(client->JsPublish("r.x", "1", "r-1").ok());
  ASSERT_TRUE(client->JsPublish("r.x", "2", "r-2").ok());
  ConsumerConfig config;
  config.durable = "survivor";
  auto consumer = client->PullSubscribe("R", config);
  ASSERT_TRUE(consumer.ok()) << consumer.status().ToString();
  std::vector<JsMessage> before = FetchN(**consumer, 1);
  ASSERT_EQ(before.size(), 1u);
  ASSERT_TRUE(before[0].AckSync().ok());

  server_->Stop();
  // Whether or not the client has noticed yet: an error, not a hang (request_timeout at most).
  auto failed = client->JsPublish("r.x", "3", "r-3");
  EXPECT_EQ(failed.status().code(), StatusCode::kUnavailable) << failed.status().ToString();
  ASSERT_TRUE(WaitFor([&] { return !client->connected(); }));
  ASSERT_TRUE(WaitFor([&] { return states.Saw(false); }));
  EXPECT_EQ(client->JsPublish("r.x", "3", "r-3").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ((*consumer)->Fetch(1, milliseconds(100)).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(client->GetStreamInfo("R").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(client->Flush(milliseconds(100)).code(), StatusCode::kUnavailable);

  Status restarted = server_->Restart();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  ASSERT_TRUE(WaitFor([&] { return client->connected(); }));
  ASSERT_TRUE(WaitFor([&] { return states.Saw(true); }));

  // The retry with the same msg_id counts once, even if the failed attempt did reach the stream.
  auto retried = client->JsPublish("r.x", "3", "r-3");
  ASSERT_TRUE(retried.ok()) << retried.status().ToString();
  EXPECT_EQ(retried->stream_seq, 3u);
  auto info = client->GetStreamInfo("R");
  ASSERT_TRUE(info.ok()) << info.status().ToString();
  EXPECT_EQ(info->messages, 3u);  // the two from before the restart are still there

  // The durable consumer, persisted by the server, continues after its last ack.
  std::vector<JsMessage> after = FetchN(**consumer, 2);
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[0].stream_seq, 2u);
  EXPECT_EQ(after[1].stream_seq, 3u);

  // nats.c restored the core subscription on reconnect.
  ASSERT_TRUE(client->Publish("core.x", "after restart").ok());
  EXPECT_TRUE(WaitFor([&] { return inbox.Has("after restart"); }));
}

TEST_F(NatsClientTest, ConnectWhileServerIsDownSucceedsAndWorksOnceItStarts) {
  const int port = server_->port();
  server_->Stop();

  auto client = MustConnect();  // same URL, nobody listening
  ASSERT_NE(client, nullptr);
  StateLog states;
  client->SetStateCallback(states.Callback());
  EXPECT_FALSE(client->connected());
  EXPECT_EQ(client->JsPublish("late.x", "1", "").status().code(), StatusCode::kUnavailable);
  Inbox inbox;
  auto sub = client->Subscribe("late.core", inbox.Handler());  // registered before any connection
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  std::atomic<int> async_errors{0};
  client->JsPublishAsync("late.x", "1", "", [&](const Result<PublishAck>& r) {
    if (r.status().code() == StatusCode::kUnavailable) ++async_errors;
  });
  EXPECT_EQ(async_errors, 1);  // refused inline while not connected

  Status restarted = server_->Restart();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  EXPECT_EQ(server_->port(), port);
  ASSERT_TRUE(WaitFor([&] { return client->connected(); }));
  EXPECT_TRUE(WaitFor([&] { return states.Saw(true); }));

  ASSERT_TRUE(client->EnsureStream(Stream("LATE", "late.x")).ok());
  auto ack = client->JsPublish("late.x", "1", "");
  ASSERT_TRUE(ack.ok()) << ack.status().ToString();
  EXPECT_EQ(ack->stream_seq, 1u);
  ASSERT_TRUE(client->Publish("late.core", "hello").ok());
  EXPECT_TRUE(WaitFor([&] { return inbox.Has("hello"); }));
}

TEST_F(NatsClientTest, ClientConnectingInTheBackgroundCanBeDestroyed) {
  server_->Stop();
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  std::atomic<int> calls{0};
  client->SetStateCallback([&](bool) { ++calls; });
  EXPECT_FALSE(client->connected());
  client.reset();  // still retrying the first connect: must return, and report nothing after
  const int at_destroy = calls;
  ASSERT_TRUE(server_->Restart().ok());
  auto witness = MustConnect();  // by the time a new client is up, a leftover would have connected
  ASSERT_NE(witness, nullptr);
  ASSERT_TRUE(witness->Flush(seconds(5)).ok());
  EXPECT_EQ(calls, at_destroy);
}

TEST_F(NatsClientTest, NoStateCallbackAfterTheClientIsDestroyed) {
  auto client = MustConnect();
  ASSERT_NE(client, nullptr);
  std::atomic<int> calls{0};
  client->SetStateCallback([&](bool) { ++calls; });
  client.reset();  // closing is not reported once the destructor has started
  const int at_destroy = calls;
  server_->Stop();
  ASSERT_TRUE(server_->Restart().ok());
  EXPECT_EQ(calls, at_destroy);
  EXPECT_EQ(calls, 0);
}

}  // namespace
}  // namespace chorus::nats
