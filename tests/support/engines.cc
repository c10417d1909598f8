#include "support/engines.h"

#include <hiredis/hiredis.h>
#include <mysql.h>
#include <nats/nats.h>
#include <sys/time.h>

#include <filesystem>
#include <mutex>
#include <optional>
#include <system_error>
#include <thread>
#include <utility>

#include "base/mutex.h"

namespace chorus::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr milliseconds kProbeInterval(20);
constexpr milliseconds kRedisTimeout = seconds(15);
constexpr milliseconds kNatsTimeout = seconds(15);
// A fresh datadir takes ~1 s to build and the server ~1 s to start on an idle machine; the rest
// is headroom for a machine busy compiling.
constexpr milliseconds kMariaDbInstallTimeout = seconds(30);
constexpr milliseconds kMariaDbTimeout = seconds(30);
// A port taken between PickFreePort() and the engine's bind() makes the engine exit at once.
constexpr int kPortAttempts = 3;

// Runs `launch(port)` with fresh ports while it fails with kUnavailable (the engine exited early,
// which is what a port clash looks like).
Status WithPortRetries(const std::function<Status(int)>& launch) {
  Status last;
  for (int attempt = 1; attempt <= kPortAttempts; ++attempt) {
    last = launch(PickFreePort());
    if (last.ok() || last.code() != StatusCode::kUnavailable) return last;
  }
  return last.WithContext("gave up after " + std::to_string(kPortAttempts) + " ports");
}

// ---- client probes --------------------------------------------------------------------------

Status PingRedis(int port) {
  const timeval tv{1, 0};
  redisContext* c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (c == nullptr) return Unavailable("hiredis: cannot allocate a context");
  std::unique_ptr<redisContext, void (*)(redisContext*)> guard(c, redisFree);
  if (c->err != 0) return Unavailable(std::string("connect: ") + c->errstr);
  if (redisSetTimeout(c, tv) != REDIS_OK) return Unavailable("hiredis: cannot set timeout");
  auto* reply = static_cast<redisReply*>(redisCommand(c, "PING"));
  if (reply == nullptr) return Unavailable(std::string("PING: ") + c->errstr);
  std::unique_ptr<redisReply, void (*)(void*)> reply_guard(reply, freeReplyObject);
  if (reply->type != REDIS_REPLY_STATUS || std::string(reply->str, reply->len) != "PONG") {
    return Unavailable("PING answered something other than PONG (reply type " +
                       std::to_string(reply->type) + ")");
  }
  return Status::Ok();
}

std::string NatsError(natsStatus s) {
  const char* detail = nats_GetLastError(nullptr);
  std::string text = natsStatus_GetText(s);
  if (detail != nullptr && *detail != '\0') text += std::string(" (") + detail + ")";
  return text;
}

// Connect, flush (a PING/PONG through the server) and ask JetStream for the account: the server
// answers and JetStream is enabled.
Status PingNats(const std::string& url) {
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  if (s != NATS_OK) return Internal("natsOptions_Create: " + NatsError(s));
  std::unique_ptr<natsOptions, void (*)(natsOptions*)> opts_guard(opts, natsOptions_Destroy);
  if ((s = natsOptions_SetURL(opts, url.c_str())) != NATS_OK ||
      (s = natsOptions_SetTimeout(opts, 1000)) != NATS_OK ||
      (s = natsOptions_SetAllowReconnect(opts, false)) != NATS_OK) {
    return Internal("natsOptions: " + NatsError(s));
  }
  natsConnection* nc = nullptr;
  if ((s = natsConnection_Connect(&nc, opts)) != NATS_OK) {
    return Unavailable("connect: " + NatsError(s));
  }
  std::unique_ptr<natsConnection, void (*)(natsConnection*)> nc_guard(nc, natsConnection_Destroy);
  if ((s = natsConnection_FlushTimeout(nc, 2000)) != NATS_OK) {
    return Unavailable("flush: " + NatsError(s));
  }

  jsCtx* js = nullptr;
  if ((s = natsConnection_JetStream(&js, nc, nullptr)) != NATS_OK) {
    return Internal("natsConnection_JetStream: " + NatsError(s));
  }
  std::unique_ptr<jsCtx, void (*)(jsCtx*)> js_guard(js, jsCtx_Destroy);
  jsAccountInfo* info = nullptr;
  jsErrCode jerr = static_cast<jsErrCode>(0);
  if ((s = js_GetAccountInfo(&info, js, nullptr, &jerr)) != NATS_OK) {
    return Unavailable("JetStream account info: " + NatsError(s) + ", JetStream error " +
                       std::to_string(static_cast<int>(jerr)));
  }
  jsAccountInfo_Destroy(info);
  return Status::Ok();
}

void InitMysqlLibraryOnce() {
  // mysql_init() would do it lazily, but not thread-safely.
  static std::once_flag once;
  std::call_once(once, [] { mysql_library_init(0, nullptr, nullptr); });
}

using MysqlPtr = std::unique_ptr<MYSQL, void (*)(MYSQL*)>;

Result<MysqlPtr> NewMysql() {
  InitMysqlLibraryOnce();
  MYSQL* m = mysql_init(nullptr);
  if (m == nullptr) return Internal("mysql_init failed");
  MysqlPtr ptr(m, mysql_close);
  const unsigned int connect_timeout = 2;
  const unsigned int io_timeout = 10;
  mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
  mysql_options(m, MYSQL_OPT_READ_TIMEOUT, &io_timeout);
  mysql_options(m, MYSQL_OPT_WRITE_TIMEOUT, &io_timeout);
  return ptr;
}

std::string MysqlError(MYSQL* m) { return std::to_string(mysql_errno(m)) + " " + mysql_error(m); }

// Connects as root over the unix socket (the account mariadb-install-db made, empty password) and
// (re)creates the test account for TCP and socket logins. Idempotent, so retries are harmless.
Status CreateTestUser(const std::string& socket_path, const std::string& user,
                      const std::string& password) {
  CHORUS_ASSIGN_OR_RETURN(MysqlPtr m, NewMysql());
  if (mysql_real_connect(m.get(), "localhost", "root", "", nullptr, 0, socket_path.c_str(), 0) ==
      nullptr) {
    return Unavailable("root login on " + socket_path + ": " + MysqlError(m.get()));
  }
  for (const char* host : {"127.0.0.1", "localhost"}) {
    const std::string account = "'" + user + "'@'" + host + "'";
    for (const std::string& sql :
         {"CREATE OR REPLACE USER " + account + " IDENTIFIED BY '" + password + "'",
          "GRANT ALL PRIVILEGES ON *.* TO " + account + " WITH GRANT OPTION"}) {
      if (mysql_query(m.get(), sql.c_str()) != 0) {
        return Internal("creating the test account: " + MysqlError(m.get()));
      }
    }
  }
  return Status::Ok();
}

Status PingMariaDb(int port, const std::string& user, const std::string& password) {
  CHORUS_ASSIGN_OR_RETURN(MysqlPtr m, NewMysql());
  const unsigned int tcp = MYSQL_PROTOCOL_TCP;
  mysql_options(m.get(), MYSQL_OPT_PROTOCOL, &tcp);
  if (mysql_real_connect(m.get(), "127.0.0.1", user.c_str(), password.c_str(), nullptr,
                         static_cast<unsigned int>(port), nullptr, 0) == nullptr) {
    return Unavailable("login as " + user + " over TCP: " + MysqlError(m.get()));
  }
  if (mysql_query(m.get(), "SELECT 1") != 0) return Unavailable("SELECT 1: " + MysqlError(m.get()));
  MYSQL_RES* res = mysql_store_result(m.get());
  if (res == nullptr) return Unavailable("SELECT 1: no result: " + MysqlError(m.get()));
  std::unique_ptr<MYSQL_RES, void (*)(MYSQL_RES*)> res_guard(res, mysql_free_result);
  MYSQL_ROW row = mysql_fetch_row(res);
  if (row == nullptr || row[0] == nullptr || std::string(row[0]) != "1") {
    return Unavailable("SELECT 1 did not return 1");
  }
  return Status::Ok();
}

// Options that shape the files of a datadir: the bootstrap and every server use the same ones.
// Without them the bootstrap writes a 96 MiB redo log that the first start then resizes.
const std::vector<std::string>& MariaDbFileOptions() {
  static const std::vector<std::string> options = {
      "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M", "--skip-log-bin",
      // io_uring/libaio may be unavailable in containers; tests gain nothing from native AIO.
      "--innodb-use-native-aio=0"};
  return options;
}

// mariadb-install-db runs thousands of bootstrap statements (seconds on a busy machine); copying
// its result takes tens of milliseconds. So a test process bootstraps once, into a directory
// removed at exit, and every MariaDbServer starts from a copy. Thread-safe.
Result<std::string> PristineMariaDbDataDir() {
  static Mutex mu;
  static std::optional<TempDir> pristine GUARDED_BY(mu);  // removed by its destructor at process exit
  MutexLock lock(mu);
  if (pristine.has_value()) return pristine->path() + "/data";

  CHORUS_ASSIGN_OR_RETURN(TempDir dir, TempDir::Create("chorus-mariadb-pristine"));
  const std::string tmp_dir = dir.path() + "/tmp";
  std::error_code ec;
  std::filesystem::create_directory(tmp_dir, ec);
  if (ec) return Internal("mariadb: mkdir " + tmp_dir + ": " + ec.message());
  // --no-defaults must come first: it keeps /etc/mysql (the system service's config) out.
  // No --user: with it, the script (run as root) also chowns/chmods the system's
  // auth_pam_tool; the bootstrap itself runs fine as root without it.
  // --skip-name-resolve: otherwise the script resolves the hostname and fails without DNS.
  // normal root authentication: root@localhost with an empty password, used once over the
  // socket to create the test account.
  std::vector<std::string> argv = {"mariadb-install-db",
                                   "--no-defaults",
                                   "--datadir=" + dir.path() + "/data",
                                   "--auth-root-authentication-method=normal",
                                   "--skip-test-db",
                                   "--skip-name-resolve",
                                   "--tmpdir=" + tmp_dir};
  argv.insert(argv.end(), MariaDbFileOptions().begin(), MariaDbFileOptions().end());

  Subprocess::Options options;
  options.output = Subprocess::Options::Output::kLogFile;
  options.log_path = dir.path() + "/install.log";
  options.working_dir = dir.path();
  auto bootstrap = Subprocess::Start(std::move(argv), options);
  if (!bootstrap.ok()) return bootstrap.status().WithContext("mariadb-install-db");
  auto code = (*bootstrap)->Wait(kMariaDbInstallTimeout);
  if (!code.ok()) {
    return DeadlineExceeded("mariadb-install-db did not finish within " +
                            std::to_string(kMariaDbInstallTimeout.count()) + " ms; " +
                            options.log_path + " ends with:\n" + (*bootstrap)->OutputTail());
  }
  if (*code != 0) {
    return Internal("mariadb-install-db exited with code " + std::to_string(*code) + "; " +
                    options.log_path + " ends with:\n" + (*bootstrap)->OutputTail());
  }
  pristine.emplace(std::move(dir));
  return pristine->path() + "/data";
}

}  // namespace

// ---- EngineServer ---------------------------------------------------------------------------

EngineServer::~EngineServer() { Stop(); }

void EngineServer::Stop() {
  if (process_ != nullptr) process_->Stop();
}

Status EngineServer::Restart() {
  if (argv_.empty() || !restart_probe_) return FailedPrecondition(name_ + " was never started");
  Stop();
  return Launch(argv_, port_, timeout_, restart_probe_);
}

std::string EngineServer::LogTail(std::size_t max_lines) const {
  if (process_ == nullptr) return "(not started)";
  return process_->OutputTail(max_lines);
}

Status EngineServer::Launch(std::vector<std::string> argv, int port, milliseconds timeout,
                            const std::function<Status()>& probe) {
  process_.reset();
  port_ = port;
  argv_ = argv;
  timeout_ = timeout;
  Subprocess::Options options;
  options.output = Subprocess::Options::Output::kLogFile;
  options.log_path = dir() + "/" + name_ + ".log";
  options.working_dir = dir();
  auto started = Subprocess::Start(std::move(argv), options);
  if (!started.ok()) return started.status().WithContext("starting " + name_);
  process_ = std::move(started).value();

  const std::string where = name_ + " on 127.0.0.1:" + std::to_string(port);
  const auto deadline = Clock::now() + timeout;
  Status last = Unavailable("no probe yet");
  for (;;) {
    if (!process_->running()) {
      return Unavailable(where + " exited with code " +
                         std::to_string(process_->Wait(milliseconds(0)).value()) +
                         " before answering (last probe: " + last.message() + "); log " +
                         options.log_path + " ends with:\n" + LogTail());
    }
    last = probe();
    if (last.ok()) return Status::Ok();
    if (Clock::now() >= deadline) {
      return DeadlineExceeded(where + " did not answer within " + std::to_string(timeout.count()) +
                              " ms (last probe: " + last.message() + "); log " + options.log_path +
                              " ends with:\n" + LogTail());
    }
    std::this_thread::sleep_until(std::min(deadline, Clock::now() + kProbeInterval));
  }
}

// ---- RedisServer ----------------------------------------------------------------------------

Result<std::unique_ptr<RedisServer>> RedisServer::Start() { return StartWith({}); }

Result<std::unique_ptr<RedisServer>> RedisServer::StartWith(
    const std::function<std::vector<std::string>()>& extra_args) {
  CHORUS_ASSIGN_OR_RETURN(TempDir dir, TempDir::Create("chorus-redis"));
  std::unique_ptr<RedisServer> server(new RedisServer(std::move(dir), "redis-server"));
  CHORUS_RETURN_IF_ERROR(WithPortRetries([&](int port) {
    std::vector<std::string> argv = {"redis-server", "--port", std::to_string(port), "--bind",
                                     "127.0.0.1", "--save", "", "--appendonly", "no", "--dir",
                                     server->dir()};
    if (extra_args) {
      std::vector<std::string> extra = extra_args();
      argv.insert(argv.end(), extra.begin(), extra.end());
    }
    return server->Launch(std::move(argv), port, kRedisTimeout, [port] { return PingRedis(port); });
  }));
  server->restart_probe_ = [port = server->port()] { return PingRedis(port); };
  return server;
}

// ---- RedisClusterServer ---------------------------------------------------------------------

namespace {

constexpr milliseconds kRedisClusterTimeout = seconds(30);
constexpr int kRedisClusterSlots = 16384;

// One command on a fresh connection to 127.0.0.1:port; a string, status or integer reply as text.
Result<std::string> RedisCall(int port, const std::vector<std::string>& args) {
  const timeval tv{2, 0};
  redisContext* c = redisConnectWithTimeout("127.0.0.1", port, tv);
  if (c == nullptr) return Unavailable("hiredis: cannot allocate a context");
  std::unique_ptr<redisContext, void (*)(redisContext*)> guard(c, redisFree);
  if (c->err != 0) return Unavailable("connect to " + std::to_string(port) + ": " + c->errstr);
  if (redisSetTimeout(c, tv) != REDIS_OK) return Unavailable("hiredis: cannot set timeout");
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  auto* reply = static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lens.data()));
  if (reply == nullptr) return Unavailable(args[0] + ": " + c->errstr);
  std::unique_ptr<redisReply, void (*)(void*)> reply_guard(reply, freeReplyObject);
  switch (reply->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      return std::string(reply->str, reply->len);
    case REDIS_REPLY_INTEGER:
      return std::to_string(reply->integer);
    case REDIS_REPLY_ERROR:
      return Internal(args[0] + " on port " + std::to_string(port) + ": " +
                      std::string(reply->str, reply->len));
    default:
      return Internal(args[0] + " on port " + std::to_string(port) + ": unexpected reply type " +
                      std::to_string(reply->type));
  }
}

}  // namespace

Result<std::unique_ptr<RedisClusterServer>> RedisClusterServer::Start(int masters) {
  if (masters < 1 || masters > 100) return InvalidArgument("redis cluster: masters must be in 1..100");
  std::unique_ptr<RedisClusterServer> cluster(new RedisClusterServer());
  std::vector<int> bus_ports;
  for (int i = 0; i < masters; ++i) {
    int bus_port = 0;
    CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<RedisServer> node, RedisServer::StartWith([&bus_port] {
      // The bus port defaults to port + 10000, which overflows for high ephemeral ports.
      bus_port = PickFreePort();
      return std::vector<std::string>{"--cluster-enabled", "yes", "--cluster-config-file",
                                      "nodes.conf", "--cluster-port", std::to_string(bus_port),
                                      "--cluster-node-timeout", "5000"};
    }));
    cluster->nodes_.push_back(std::move(node));
    bus_ports.push_back(bus_port);
  }
  for (int i = 0; i < masters; ++i) {
    const int port = cluster->nodes_[static_cast<size_t>(i)]->port();
    const int first = kRedisClusterSlots * i / masters;
    const int last = kRedisClusterSlots * (i + 1) / masters - 1;
    cluster->ranges_.emplace_back(first, last);
    CHORUS_ASSIGN_OR_RETURN(std::string id, RedisCall(port, {"CLUSTER", "MYID"}));
    cluster->ids_.push_back(std::move(id));
    // Distinct epochs up front, as redis-cli does, so no epoch collision has to be resolved.
    CHORUS_RETURN_IF_ERROR(
        RedisCall(port, {"CLUSTER", "SET-CONFIG-EPOCH", std::to_string(i + 1)}).status());
    CHORUS_RETURN_IF_ERROR(RedisCall(port, {"CLUSTER", "ADDSLOTSRANGE", std::to_string(first),
                                            std::to_string(last)})
                               .status());
  }
  const int first_port = cluster->nodes_.front()->port();
  for (int i = 1; i < masters; ++i) {
    // With the bus port: MEET would otherwise assume port + 10000.
    const auto n = static_cast<size_t>(i);
    CHORUS_RETURN_IF_ERROR(RedisCall(first_port, {"CLUSTER", "MEET", "127.0.0.1",
                                                  std::to_string(cluster->nodes_[n]->port()),
                                                  std::to_string(bus_ports[n])})
                               .status());
  }
  CHORUS_RETURN_IF_ERROR(cluster->WaitUntilHealthy(kRedisClusterTimeout));
  return cluster;
}

RedisClusterServer::~RedisClusterServer() {
  for (auto& node : nodes_) node->Stop();
}

std::vector<std::string> RedisClusterServer::addresses() const {
  std::vector<std::string> out;
  for (const auto& node : nodes_) out.push_back(node->host() + ":" + std::to_string(node->port()));
  return out;
}

void RedisClusterServer::StopNode(size_t i) { nodes_.at(i)->Stop(); }

Status RedisClusterServer::RestartNode(size_t i) {
  CHORUS_RETURN_IF_ERROR(nodes_.at(i)->Restart());
  return WaitUntilHealthy(kRedisClusterTimeout);
}

Status RedisClusterServer::WaitUntilHealthy(milliseconds timeout) const {
  const auto deadline = Clock::now() + timeout;
  const std::string known = "cluster_known_nodes:" + std::to_string(nodes_.size()) + "\r\n";
  for (;;) {
    std::string problem;
    for (const auto& node : nodes_) {
      Result<std::string> info = RedisCall(node->port(), {"CLUSTER", "INFO"});
      if (!info.ok()) {
        problem = "node " + std::to_string(node->port()) + ": " + info.status().message();
      } else if (info->find("cluster_state:ok\r\n") == std::string::npos ||
                 info->find("cluster_slots_assigned:16384\r\n") == std::string::npos ||
                 info->find(known) == std::string::npos) {
        problem = "node " + std::to_string(node->port()) + " says:\n" + *info;
      }
      if (!problem.empty()) break;
    }
    if (problem.empty()) return Status::Ok();
    if (Clock::now() >= deadline) {
      return DeadlineExceeded("redis cluster not healthy within " + std::to_string(timeout.count()) +
                              " ms: " + problem);
    }
    std::this_thread::sleep_until(std::min(deadline, Clock::now() + kProbeInterval * 5));
  }
}

// ---- NatsServer -----------------------------------------------------------------------------

Result<std::unique_ptr<NatsServer>> NatsServer::Start() {
  CHORUS_ASSIGN_OR_RETURN(TempDir dir, TempDir::Create("chorus-nats"));
  std::unique_ptr<NatsServer> server(new NatsServer(std::move(dir), "nats-server"));
  CHORUS_RETURN_IF_ERROR(WithPortRetries([&](int port) {
    const std::string url = "nats://127.0.0.1:" + std::to_string(port);
    return server->Launch({"nats-server", "-a", "127.0.0.1", "-p", std::to_string(port), "-js",
                           "-sd", server->dir() + "/js"},
                          port, kNatsTimeout, [url] { return PingNats(url); });
  }));
  server->restart_probe_ = [url = server->url()] { return PingNats(url); };
  return server;
}

// ---- MariaDbServer --------------------------------------------------------------------------

Result<std::unique_ptr<MariaDbServer>> MariaDbServer::Start() {
  CHORUS_ASSIGN_OR_RETURN(TempDir dir, TempDir::Create("chorus-mariadb"));
  std::unique_ptr<MariaDbServer> server(new MariaDbServer(std::move(dir), "mariadbd"));
  const std::string data_dir = server->dir() + "/data";
  const std::string tmp_dir = server->dir() + "/tmp";
  std::error_code ec;
  std::filesystem::create_directory(tmp_dir, ec);
  if (ec) return Internal("mariadb: mkdir " + tmp_dir + ": " + ec.message());

  // sun_path holds 107 bytes; a deep $TMPDIR would make mariadbd fail to create its socket.
  server->socket_path_ = server->dir() + "/mysql.sock";
  if (server->socket_path_.size() > 100) {
    CHORUS_ASSIGN_OR_RETURN(TempDir short_dir, TempDir::Create("chorus-mysock", "/tmp"));
    server->socket_dir_.emplace(std::move(short_dir));
    server->socket_path_ = server->socket_dir_->path() + "/mysql.sock";
  }

  CHORUS_ASSIGN_OR_RETURN(const std::string pristine, PristineMariaDbDataDir());
  std::filesystem::copy(pristine, data_dir, std::filesystem::copy_options::recursive, ec);
  if (ec) return Internal("mariadb: copying " + pristine + " to " + data_dir + ": " + ec.message());

  MariaDbServer* s = server.get();
  CHORUS_RETURN_IF_ERROR(WithPortRetries([&](int port) {
    std::vector<std::string> argv = {
        "mariadbd", "--no-defaults", "--datadir=" + data_dir, "--socket=" + s->socket_path_,
        // --user=root: as root, mariadbd refuses to start without it.
        "--port=" + std::to_string(port), "--bind-address=127.0.0.1", "--user=root",
        "--skip-name-resolve", "--pid-file=" + s->dir() + "/mariadbd.pid", "--tmpdir=" + tmp_dir,
        "--character-set-server=utf8mb4", "--collation-server=utf8mb4_general_ci",
        "--max-connections=200", "--table-open-cache=400",
        // Durability is not what these tests check; speed is welcome.
        "--innodb-doublewrite=0", "--innodb-flush-log-at-trx-commit=2"};
    argv.insert(argv.end(), MariaDbFileOptions().begin(), MariaDbFileOptions().end());
    bool user_created = false;
    return s->Launch(std::move(argv), port, kMariaDbTimeout, [s, port, &user_created] {
      if (!user_created) {
        CHORUS_RETURN_IF_ERROR(CreateTestUser(s->socket_path_, s->user_, s->password_));
        user_created = true;
      }
      return PingMariaDb(port, s->user_, s->password_);
    });
  }));
  // The test account lives in the datadir now: a restart only has to answer.
  server->restart_probe_ = [port = server->port(), user = server->user_, password = server->password_] {
    return PingMariaDb(port, user, password);
  };
  return server;
}

}  // namespace chorus::testing
