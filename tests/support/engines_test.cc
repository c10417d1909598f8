#include "support/engines.h"

#include <hiredis/hiredis.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <nats/nats.h>
#include <sys/time.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace chorus::testing {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;

// After an engine is gone its port must refuse connections (one attempt, no waiting).
void ExpectPortClosed(int port) {
  Status s = WaitForTcpPort(port, milliseconds(0));
  EXPECT_EQ(s.code(), StatusCode::kDeadlineExceeded) << "port " << port << " still accepts";
}

// ---- redis ----------------------------------------------------------------------------------

using RedisPtr = std::unique_ptr<redisContext, void (*)(redisContext*)>;
using ReplyPtr = std::unique_ptr<redisReply, void (*)(void*)>;

RedisPtr ConnectRedis(const RedisServer& server) {
  redisContext* c = redisConnectWithTimeout(server.host().c_str(), server.port(), timeval{5, 0});
  return RedisPtr(c, redisFree);
}

ReplyPtr Command(redisContext* c, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  void* reply = redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lens.data());
  return ReplyPtr(static_cast<redisReply*>(reply), freeReplyObject);
}

TEST(RedisServerTest, SetGetRoundtripThenPortClosesWhenDestroyed) {
  auto started = RedisServer::Start();
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::unique_ptr<RedisServer> server = std::move(started).value();
  EXPECT_EQ(server->host(), "127.0.0.1");
  const int port = server->port();
  const std::string dir = server->dir();

  RedisPtr c = ConnectRedis(*server);
  ASSERT_NE(c, nullptr);
  ASSERT_EQ(c->err, 0) << c->errstr;
  const std::string value("binary\0value \xE2\x9C\x93", 17);
  ReplyPtr set = Command(c.get(), {"SET", "chorus:key", value});
  ASSERT_NE(set, nullptr) << c->errstr;
  EXPECT_EQ(set->type, REDIS_REPLY_STATUS);
  EXPECT_EQ(std::string(set->str, set->len), "OK");
  ReplyPtr get = Command(c.get(), {"GET", "chorus:key"});
  ASSERT_NE(get, nullptr) << c->errstr;
  ASSERT_EQ(get->type, REDIS_REPLY_STRING);
  EXPECT_EQ(std::string(get->str, get->len), value);
  ReplyPtr missing = Command(c.get(), {"GET", "chorus:absent"});
  ASSERT_NE(missing, nullptr);
  EXPECT_EQ(missing->type, REDIS_REPLY_NIL);
  // Started without persistence: nothing may be written to disk behind the tests' back.
  ReplyPtr save = Command(c.get(), {"CONFIG", "GET", "save"});
  ASSERT_NE(save, nullptr);
  ASSERT_EQ(save->type, REDIS_REPLY_ARRAY);
  ASSERT_EQ(save->elements, 2u);
  EXPECT_EQ(std::string(save->element[1]->str, save->element[1]->len), "");
  c.reset();

  server.reset();
  ExpectPortClosed(port);
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(RedisServerTest, StopClosesThePortWhileTheObjectLives) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  (*server)->Stop();
  ExpectPortClosed((*server)->port());
  EXPECT_TRUE(std::filesystem::exists((*server)->dir()));  // kept for post-mortems until destroyed
}

TEST(RedisServerTest, TwoServersAreIndependent) {
  auto a = RedisServer::Start();
  auto b = RedisServer::Start();
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_NE((*a)->port(), (*b)->port());
  EXPECT_NE((*a)->dir(), (*b)->dir());
  RedisPtr ca = ConnectRedis(**a);
  RedisPtr cb = ConnectRedis(**b);
  ASSERT_TRUE(ca != nullptr && ca->err == 0);
  ASSERT_TRUE(cb != nullptr && cb->err == 0);
  ASSERT_NE(Command(ca.get(), {"SET", "k", "in-a"}), nullptr);
  ReplyPtr from_b = Command(cb.get(), {"GET", "k"});
  ASSERT_NE(from_b, nullptr);
  EXPECT_EQ(from_b->type, REDIS_REPLY_NIL);
}

TEST(RedisServerTest, RestartWhileRunningKeepsThePortAndStartsEmpty) {
  auto server = RedisServer::Start();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  const int port = (*server)->port();
  {
    RedisPtr c = ConnectRedis(**server);
    ASSERT_TRUE(c != nullptr && c->err == 0);
    ASSERT_NE(Command(c.get(), {"SET", "k", "before"}), nullptr);
  }
  Status restarted = (*server)->Restart();  // not stopped first: Restart() stops it
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  EXPECT_EQ((*server)->port(), port);
  RedisPtr c = ConnectRedis(**server);
  ASSERT_TRUE(c != nullptr && c->err == 0) << (c == nullptr ? "null" : c->errstr);
  ReplyPtr get = Command(c.get(), {"GET", "k"});
  ASSERT_NE(get, nullptr);
  EXPECT_EQ(get->type, REDIS_REPLY_NIL);  // no persistence: a restarted Redis is empty
}

// ---- redis cluster --------------------------------------------------------------------------

RedisPtr ConnectRedisNode(const RedisServer& node) { return ConnectRedis(node); }

std::string ReplyText(const ReplyPtr& r) {
  if (r == nullptr) return "(no reply)";
  if (r->type == REDIS_REPLY_INTEGER) return std::to_string(r->integer);
  if (r->str != nullptr) return std::string(r->str, r->len);
  return "(type " + std::to_string(r->type) + ")";
}

TEST(RedisClusterServerTest, ThreeMastersSplitTheSlotsAndRedirect) {
  auto started = RedisClusterServer::Start(3);
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::unique_ptr<RedisClusterServer> cluster = std::move(started).value();
  ASSERT_EQ(cluster->size(), 3u);
  const std::vector<std::string> addresses = cluster->addresses();
  ASSERT_EQ(addresses.size(), 3u);
  std::vector<int> ports;
  std::vector<std::string> dirs;
  int next_slot = 0;
  for (size_t i = 0; i < 3; ++i) {
    ports.push_back(cluster->node(i).port());
    dirs.push_back(cluster->node(i).dir());
    EXPECT_EQ(addresses[i], "127.0.0.1:" + std::to_string(ports[i]));
    EXPECT_EQ(cluster->node_id(i).size(), 40u);
    // Contiguous ranges covering every slot once.
    EXPECT_EQ(cluster->slot_range(i).first, next_slot);
    next_slot = cluster->slot_range(i).second + 1;
  }
  EXPECT_EQ(next_slot, 16384);
  EXPECT_NE(cluster->node_id(0), cluster->node_id(1));

  for (size_t i = 0; i < 3; ++i) {
    RedisPtr c = ConnectRedisNode(cluster->node(i));
    ASSERT_TRUE(c != nullptr && c->err == 0);
    const std::string info = ReplyText(Command(c.get(), {"CLUSTER", "INFO"}));
    EXPECT_THAT(info, HasSubstr("cluster_state:ok")) << "node " << i;
    EXPECT_THAT(info, HasSubstr("cluster_known_nodes:3")) << "node " << i;
    ReplyPtr slots = Command(c.get(), {"CLUSTER", "SLOTS"});
    ASSERT_NE(slots, nullptr);
    ASSERT_EQ(slots->type, REDIS_REPLY_ARRAY);
    EXPECT_EQ(slots->elements, 3u) << "node " << i << " sees another layout";
    // Cluster mode without persistence.
    ReplyPtr save = Command(c.get(), {"CONFIG", "GET", "save"});
    ASSERT_TRUE(save != nullptr && save->type == REDIS_REPLY_ARRAY && save->elements == 2u);
    EXPECT_EQ(std::string(save->element[1]->str, save->element[1]->len), "");
  }

  // "foo" is in slot 12182: the last node serves it; the others redirect there.
  RedisPtr owner = ConnectRedisNode(cluster->node(2));
  RedisPtr other = ConnectRedisNode(cluster->node(0));
  ASSERT_TRUE(owner != nullptr && owner->err == 0 && other != nullptr && other->err == 0);
  EXPECT_EQ(ReplyText(Command(owner.get(), {"CLUSTER", "KEYSLOT", "foo"})), "12182");
  EXPECT_EQ(ReplyText(Command(owner.get(), {"SET", "foo", "bar"})), "OK");
  EXPECT_EQ(ReplyText(Command(other.get(), {"GET", "foo"})), "MOVED 12182 " + addresses[2]);
  owner.reset();
  other.reset();

  cluster.reset();
  for (size_t i = 0; i < 3; ++i) {
    ExpectPortClosed(ports[i]);
    EXPECT_FALSE(std::filesystem::exists(dirs[i]));
  }
}

TEST(RedisClusterServerTest, StoppedNodeRejoinsWithItsSlotsAfterRestart) {
  auto cluster = RedisClusterServer::Start(3);
  ASSERT_TRUE(cluster.ok()) << cluster.status().ToString();
  const int port = (*cluster)->node(1).port();
  const std::string id = (*cluster)->node_id(1);
  (*cluster)->StopNode(1);
  ExpectPortClosed(port);
  {
    RedisPtr c = ConnectRedisNode((*cluster)->node(0));
    ASSERT_TRUE(c != nullptr && c->err == 0);
    EXPECT_EQ(ReplyText(Command(c.get(), {"PING"})), "PONG");  // the others keep running
  }
  Status restarted = (*cluster)->RestartNode(1);
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  EXPECT_EQ((*cluster)->node(1).port(), port);
  RedisPtr c = ConnectRedisNode((*cluster)->node(1));
  ASSERT_TRUE(c != nullptr && c->err == 0);
  EXPECT_EQ(ReplyText(Command(c.get(), {"CLUSTER", "MYID"})), id);  // nodes.conf kept its identity
  // It still owns its first slot: it serves a key there instead of redirecting.
  const std::string slot = std::to_string((*cluster)->slot_range(1).first);
  EXPECT_EQ(ReplyText(Command(c.get(), {"CLUSTER", "COUNTKEYSINSLOT", slot})), "0");
  const std::string nodes = ReplyText(Command(c.get(), {"CLUSTER", "NODES"}));
  const size_t myself = nodes.find("myself,master");
  ASSERT_NE(myself, std::string::npos) << nodes;
  const std::string line = nodes.substr(myself, nodes.find('\n', myself) - myself);
  EXPECT_THAT(line, HasSubstr(" connected " + slot + "-" +
                              std::to_string((*cluster)->slot_range(1).second)))
      << nodes;
}

// ---- mariadb --------------------------------------------------------------------------------

using MysqlPtr = std::unique_ptr<MYSQL, void (*)(MYSQL*)>;

// Connects over TCP (or the socket when socket_path is given); nullptr plus *error on failure.
MysqlPtr ConnectMysql(const MariaDbServer& server, const std::string& password, std::string* error,
                      bool via_socket = false) {
  MysqlPtr m(mysql_init(nullptr), mysql_close);
  if (m == nullptr) {
    *error = "mysql_init failed";
    return m;
  }
  const unsigned int timeout = 5;
  mysql_options(m.get(), MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
  mysql_options(m.get(), MYSQL_SET_CHARSET_NAME, "utf8mb4");
  const unsigned int protocol = via_socket ? MYSQL_PROTOCOL_SOCKET : MYSQL_PROTOCOL_TCP;
  mysql_options(m.get(), MYSQL_OPT_PROTOCOL, &protocol);
  const char* host = via_socket ? "localhost" : server.host().c_str();
  if (mysql_real_connect(m.get(), host, server.user().c_str(), password.c_str(), nullptr,
                         static_cast<unsigned int>(server.port()),
                         via_socket ? server.socket_path().c_str() : nullptr, 0) == nullptr) {
    *error = std::to_string(mysql_errno(m.get())) + " " + mysql_error(m.get());
    return MysqlPtr(nullptr, mysql_close);
  }
  return m;
}

// Runs a statement and returns its rows as strings ("NULL" for NULL).
std::vector<std::vector<std::string>> Query(MYSQL* m, const std::string& sql) {
  std::vector<std::vector<std::string>> rows;
  EXPECT_EQ(mysql_query(m, sql.c_str()), 0) << sql << ": " << mysql_error(m);
  MYSQL_RES* res = mysql_store_result(m);
  if (res == nullptr) return rows;
  const unsigned int fields = mysql_num_fields(res);
  while (MYSQL_ROW row = mysql_fetch_row(res)) {
    unsigned long* lengths = mysql_fetch_lengths(res);
    std::vector<std::string> r;
    for (unsigned int i = 0; i < fields; ++i) {
      r.push_back(row[i] == nullptr ? "NULL" : std::string(row[i], lengths[i]));
    }
    rows.push_back(std::move(r));
  }
  mysql_free_result(res);
  return rows;
}

TEST(MariaDbServerTest, SqlRoundtripWithRealAuthThenPortClosesWhenDestroyed) {
  auto started = MariaDbServer::Start();
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::unique_ptr<MariaDbServer> server = std::move(started).value();
  EXPECT_EQ(server->host(), "127.0.0.1");
  EXPECT_FALSE(server->user().empty());
  const int port = server->port();
  const std::string dir = server->dir();

  std::string error;
  MysqlPtr m = ConnectMysql(*server, server->password(), &error);
  ASSERT_NE(m, nullptr) << error;
  Query(m.get(), "CREATE DATABASE chorus_test");
  Query(m.get(),
        "CREATE TABLE chorus_test.messages (id INT PRIMARY KEY, body VARCHAR(100) NOT NULL) "
        "ENGINE=InnoDB");
  Query(m.get(),
        "INSERT INTO chorus_test.messages VALUES (2, 'second'), (1, 'h\xC3\xA9llo "
        "\xF0\x9F\x8E\xB5')");
  EXPECT_EQ(mysql_affected_rows(m.get()), 2u);
  const auto rows = Query(m.get(), "SELECT id, body FROM chorus_test.messages ORDER BY id");
  const std::vector<std::vector<std::string>> expected = {
      {"1", "h\xC3\xA9llo \xF0\x9F\x8E\xB5"},  // a 4-byte UTF-8 character needs utf8mb4
      {"2", "second"}};
  EXPECT_EQ(rows, expected);
  EXPECT_EQ(Query(m.get(), "SELECT @@bind_address"),
            (std::vector<std::vector<std::string>>{{"127.0.0.1"}}));
  m.reset();

  // The same account over the unix socket.
  MysqlPtr via_socket = ConnectMysql(*server, server->password(), &error, /*via_socket=*/true);
  ASSERT_NE(via_socket, nullptr) << error;
  EXPECT_EQ(Query(via_socket.get(), "SELECT COUNT(*) FROM chorus_test.messages"),
            (std::vector<std::vector<std::string>>{{"2"}}));
  via_socket.reset();

  // Authentication is real: a wrong password is refused.
  MysqlPtr wrong = ConnectMysql(*server, server->password() + "-wrong", &error);
  EXPECT_EQ(wrong, nullptr);
  EXPECT_THAT(error, HasSubstr(std::to_string(ER_ACCESS_DENIED_ERROR)));

  server.reset();
  ExpectPortClosed(port);
  EXPECT_FALSE(std::filesystem::exists(dir));
}

TEST(MariaDbServerTest, ServersStartFromSeparateDataDirectories) {
  auto a = MariaDbServer::Start();
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = MariaDbServer::Start();
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_NE((*a)->port(), (*b)->port());
  EXPECT_NE((*a)->socket_path(), (*b)->socket_path());
  std::string error;
  MysqlPtr ma = ConnectMysql(**a, (*a)->password(), &error);
  ASSERT_NE(ma, nullptr) << error;
  MysqlPtr mb = ConnectMysql(**b, (*b)->password(), &error);
  ASSERT_NE(mb, nullptr) << error;
  Query(ma.get(), "CREATE DATABASE only_in_a");
  EXPECT_EQ(Query(ma.get(), "SHOW DATABASES LIKE 'only_in_a'"),
            (std::vector<std::vector<std::string>>{{"only_in_a"}}));
  EXPECT_TRUE(Query(mb.get(), "SHOW DATABASES LIKE 'only_in_a'").empty());
}

TEST(MariaDbServerTest, RestartAfterStopKeepsPortDataAndAccount) {
  auto started = MariaDbServer::Start();
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  MariaDbServer& server = **started;
  const int port = server.port();
  std::string error;
  {
    MysqlPtr m = ConnectMysql(server, server.password(), &error);
    ASSERT_NE(m, nullptr) << error;
    Query(m.get(), "CREATE DATABASE survives");
    Query(m.get(), "CREATE TABLE survives.t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE=InnoDB");
    Query(m.get(), "INSERT INTO survives.t VALUES (1, 'committed')");
  }

  server.Stop();
  ExpectPortClosed(port);
  EXPECT_EQ(ConnectMysql(server, server.password(), &error), nullptr);

  Status restarted = server.Restart();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  EXPECT_EQ(server.port(), port);
  MysqlPtr m = ConnectMysql(server, server.password(), &error);
  ASSERT_NE(m, nullptr) << error;
  EXPECT_EQ(Query(m.get(), "SELECT id, v FROM survives.t"),
            (std::vector<std::vector<std::string>>{{"1", "committed"}}));
}

// ---- nats -----------------------------------------------------------------------------------

struct NatsConn {
  natsConnection* nc = nullptr;
  ~NatsConn() { natsConnection_Destroy(nc); }
};

TEST(NatsServerTest, PublishSubscribeAndJetStreamThenPortClosesWhenDestroyed) {
  auto started = NatsServer::Start();
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  std::unique_ptr<NatsServer> server = std::move(started).value();
  const int port = server->port();
  EXPECT_EQ(server->url(), "nats://127.0.0.1:" + std::to_string(port));

  NatsConn conn;
  ASSERT_EQ(natsConnection_ConnectTo(&conn.nc, server->url().c_str()), NATS_OK)
      << nats_GetLastError(nullptr);

  // Core NATS: what is published on a subject reaches its subscriber.
  natsSubscription* sub = nullptr;
  ASSERT_EQ(natsConnection_SubscribeSync(&sub, conn.nc, "chorus.test.ping"), NATS_OK);
  ASSERT_EQ(natsConnection_PublishString(conn.nc, "chorus.test.ping", "hello nats"), NATS_OK);
  natsMsg* msg = nullptr;
  ASSERT_EQ(natsSubscription_NextMsg(&msg, sub, 5000), NATS_OK);
  EXPECT_EQ(std::string(natsMsg_GetSubject(msg)), "chorus.test.ping");
  EXPECT_EQ(std::string(natsMsg_GetData(msg), natsMsg_GetDataLength(msg)), "hello nats");
  natsMsg_Destroy(msg);
  natsSubscription_Destroy(sub);

  // JetStream: a stream stores what is published to its subjects, acknowledging each in order.
  jsCtx* js = nullptr;
  ASSERT_EQ(natsConnection_JetStream(&js, conn.nc, nullptr), NATS_OK);
  std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_guard(js, jsCtx_Destroy);
  jsStreamConfig cfg;
  ASSERT_EQ(jsStreamConfig_Init(&cfg), NATS_OK);
  const char* subjects[] = {"chorus.events.>"};
  cfg.Name = "CHORUS_EVENTS";
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Storage = js_FileStorage;
  jsStreamInfo* info = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  ASSERT_EQ(js_AddStream(&info, js, &cfg, nullptr, &jerr), NATS_OK)
      << nats_GetLastError(nullptr) << " jetstream error " << jerr;
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(std::string(info->Config->Name), "CHORUS_EVENTS");
  jsStreamInfo_Destroy(info);

  for (uint64_t expected_seq = 1; expected_seq <= 2; ++expected_seq) {
    const std::string payload = "event " + std::to_string(expected_seq);
    jsPubAck* ack = nullptr;
    ASSERT_EQ(js_Publish(&ack, js, "chorus.events.created", payload.data(),
                         static_cast<int>(payload.size()), nullptr, &jerr),
              NATS_OK)
        << nats_GetLastError(nullptr);
    ASSERT_NE(ack, nullptr);
    EXPECT_EQ(std::string(ack->Stream), "CHORUS_EVENTS");
    EXPECT_EQ(ack->Sequence, expected_seq);
    EXPECT_FALSE(ack->Duplicate);
    jsPubAck_Destroy(ack);
  }
  // The stored state agrees with the acks; the file store lives in the server's directory.
  ASSERT_EQ(js_GetStreamInfo(&info, js, "CHORUS_EVENTS", nullptr, &jerr), NATS_OK);
  EXPECT_EQ(info->State.Msgs, 2u);
  EXPECT_EQ(info->State.LastSeq, 2u);
  jsStreamInfo_Destroy(info);
  EXPECT_TRUE(std::filesystem::exists(server->dir() + "/js"));

  js_guard.reset();
  natsConnection_Destroy(std::exchange(conn.nc, nullptr));
  server.reset();
  ExpectPortClosed(port);
}

TEST(NatsServerTest, RestartAfterStopKeepsPortAndJetStreamStreams) {
  auto started = NatsServer::Start();
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  NatsServer& server = **started;
  const int port = server.port();
  jsErrCode jerr = static_cast<jsErrCode>(0);
  {
    NatsConn conn;
    ASSERT_EQ(natsConnection_ConnectTo(&conn.nc, server.url().c_str()), NATS_OK)
        << nats_GetLastError(nullptr);
    jsCtx* js = nullptr;
    ASSERT_EQ(natsConnection_JetStream(&js, conn.nc, nullptr), NATS_OK);
    std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_guard(js, jsCtx_Destroy);
    jsStreamConfig cfg;
    ASSERT_EQ(jsStreamConfig_Init(&cfg), NATS_OK);
    const char* subjects[] = {"kept.>"};
    cfg.Name = "KEPT";
    cfg.Subjects = subjects;
    cfg.SubjectsLen = 1;
    cfg.Storage = js_FileStorage;
    ASSERT_EQ(js_AddStream(nullptr, js, &cfg, nullptr, &jerr), NATS_OK) << nats_GetLastError(nullptr);
    for (const char* payload : {"one", "two", "three"}) {
      ASSERT_EQ(js_Publish(nullptr, js, "kept.x", payload, static_cast<int>(std::strlen(payload)),
                           nullptr, &jerr),
                NATS_OK)
          << nats_GetLastError(nullptr);
    }
  }

  server.Stop();
  ExpectPortClosed(port);

  Status restarted = server.Restart();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  EXPECT_EQ(server.port(), port);
  EXPECT_EQ(server.url(), "nats://127.0.0.1:" + std::to_string(port));
  NatsConn conn;
  ASSERT_EQ(natsConnection_ConnectTo(&conn.nc, server.url().c_str()), NATS_OK)
      << nats_GetLastError(nullptr);
  jsCtx* js = nullptr;
  ASSERT_EQ(natsConnection_JetStream(&js, conn.nc, nullptr), NATS_OK);
  std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_guard(js, jsCtx_Destroy);
  jsStreamInfo* info = nullptr;
  ASSERT_EQ(js_GetStreamInfo(&info, js, "KEPT", nullptr, &jerr), NATS_OK)
      << nats_GetLastError(nullptr) << " jetstream error " << jerr;
  EXPECT_EQ(info->State.Msgs, 3u);
  EXPECT_EQ(info->State.LastSeq, 3u);
  jsStreamInfo_Destroy(info);
}

TEST(NatsServerTest, StopAndRestartRepeatedlyOnTheSamePort) {
  auto started = NatsServer::Start();
  ASSERT_TRUE(started.ok()) << started.status().ToString();
  const int port = (*started)->port();
  for (int i = 0; i < 2; ++i) {
    (*started)->Stop();
    ExpectPortClosed(port);
    Status restarted = (*started)->Restart();  // returns once the server answers the probe
    ASSERT_TRUE(restarted.ok()) << restarted.ToString();
    EXPECT_EQ((*started)->port(), port);
  }
}

}  // namespace
}  // namespace chorus::testing
