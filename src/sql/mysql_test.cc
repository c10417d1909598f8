#include "sql/mysql.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "support/engines.h"

namespace chorus::sql {
namespace {

using chorus::testing::MariaDbServer;

MySqlOptions OptionsFor(const MariaDbServer& server, std::string database = "") {
  MySqlOptions o;
  o.host = server.host();
  o.port = server.port();
  o.user = server.user();
  o.password = server.password();
  o.database = std::move(database);
  o.connect_timeout = std::chrono::seconds(2);
  o.read_timeout = std::chrono::seconds(10);
  o.write_timeout = std::chrono::seconds(10);
  o.pool_size = 3;
  return o;
}

class MySqlTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto server = MariaDbServer::Start();
    ASSERT_TRUE(server.ok()) << server.status().ToString();
    server_ = std::move(*server).release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  // A fresh database per test, and a connection to it.
  void SetUp() override {
    ASSERT_NE(server_, nullptr);
    static int next = 0;
    database_ = "sqltest_" + std::to_string(++next);
    auto admin = Connection::Open(OptionsFor(*server_));
    ASSERT_TRUE(admin.ok()) << admin.status().ToString();
    ASSERT_TRUE((*admin)->Execute("CREATE DATABASE " + database_).ok());
    auto c = Connection::Open(options());
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    conn_ = std::move(*c);
  }

  MySqlOptions options() const { return OptionsFor(*server_, database_); }

  // The server-side id of a connection, to KILL it from another one.
  static int64_t ConnectionId(Connection& c) {
    auto rows = c.Query("SELECT CONNECTION_ID()");
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    if (!rows.ok() || rows->size() != 1) return -1;
    return *(*rows)[0][0].ToInt64();
  }

  void Kill(int64_t id) {
    auto killer = Connection::Open(options());
    ASSERT_TRUE(killer.ok()) << killer.status().ToString();
    ASSERT_TRUE((*killer)->Run("KILL CONNECTION ?", {id}).ok());
  }

  static MariaDbServer* server_;
  std::string database_;
  std::unique_ptr<Connection> conn_;
};

MariaDbServer* MySqlTest::server_ = nullptr;

TEST_F(MySqlTest, PreparedValuesRoundTripExactly) {
  ASSERT_TRUE(
      conn_
          ->Execute("CREATE TABLE t (id INT PRIMARY KEY, text_col VARCHAR(100) NULL, "
                    "bin_col VARBINARY(100) NULL, signed_col BIGINT NULL, unsigned_col BIGINT UNSIGNED NULL)")
          .ok());
  const std::string quoted = "it's \"quoted\" \\ back'slash'); DROP TABLE t; --";
  const std::string unicode = "h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x98\x80";  // héllo 世界 😀
  const std::string bytes("\x00\x01\xff\xfe'\"\\\n\r\x1a", 10);
  struct Case {
    int id;
    Value text, bin, s, u;
  };
  const std::vector<Case> cases = {
      {1, quoted, Value::Binary(bytes), std::numeric_limits<int64_t>::min(),
       std::numeric_limits<uint64_t>::max()},
      {2, unicode, Value::Binary(unicode), std::numeric_limits<int64_t>::max(), uint64_t{0}},
      {3, nullptr, nullptr, nullptr, nullptr},
      {4, "", Value::Binary(""), int64_t{-1}, uint64_t{1} << 63},
  };
  for (const Case& c : cases) {
    auto r = conn_->Run("INSERT INTO t VALUES (?, ?, ?, ?, ?)", {c.id, c.text, c.bin, c.s, c.u});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->affected_rows, 1u);
  }
  auto rows = conn_->Query("SELECT id, text_col, bin_col, signed_col, unsigned_col FROM t ORDER BY id");
  ASSERT_TRUE(rows.ok()) << rows.status().ToString();
  ASSERT_EQ(rows->size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const Row& row = (*rows)[i];
    const Case& c = cases[i];
    ASSERT_EQ(row.size(), 5u);
    EXPECT_EQ(*row[0].ToInt64(), c.id);
    EXPECT_EQ(row[1], c.text) << "row " << c.id;
    EXPECT_EQ(row[2], c.bin) << "row " << c.id;  // binary columns come back as binary values
    EXPECT_EQ(row[3], c.s) << "row " << c.id;
    EXPECT_EQ(row[4], c.u) << "row " << c.id;
  }
  EXPECT_TRUE((*rows)[2][1].is_null());
  EXPECT_EQ((*rows)[0][2].bytes().size(), bytes.size());  // the zero byte survived

  // Values in WHERE clauses are compared as bound, never parsed as SQL.
  auto found = conn_->Query("SELECT id FROM t WHERE text_col = ?", {quoted});
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->size(), 1u);
  EXPECT_EQ(*(*found)[0][0].ToInt64(), 1);

  // A value longer than the first buffer is read in full; DECIMAL results parse as integers.
  const std::string long_text(5000, 'x');
  ASSERT_TRUE(conn_->Execute("CREATE TABLE big (b BLOB)").ok());
  ASSERT_TRUE(
      conn_->Run("INSERT INTO big VALUES (?), (?)", {Value::Binary("short"), Value::Binary(long_text)}).ok());
  auto big = conn_->Query("SELECT b FROM big ORDER BY LENGTH(b)");
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  ASSERT_EQ(big->size(), 2u);
  EXPECT_EQ((*big)[0][0].bytes(), "short");
  EXPECT_EQ((*big)[1][0].bytes(), long_text);
  auto sum = conn_->Query("SELECT SUM(signed_col > 0), SUM(id) FROM t");
  ASSERT_TRUE(sum.ok());
  EXPECT_EQ(*(*sum)[0][0].ToInt64(), 1);
  EXPECT_EQ(*(*sum)[0][1].ToInt64(), 10);
}

TEST_F(MySqlTest, InsertIdAndAffectedRows) {
  ASSERT_TRUE(
      conn_->Execute("CREATE TABLE log (seq BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, v INT)").ok());
  auto first = conn_->Run("INSERT INTO log (v) VALUES (?), (?), (?)", {1, 2, 3});
  ASSERT_TRUE(first.ok()) << first.status().ToString();
  EXPECT_EQ(first->affected_rows, 3u);
  EXPECT_EQ(first->insert_id, 1u);
  auto second = conn_->Run("INSERT INTO log (v) VALUES (?)", {4});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->insert_id, 4u);
  auto deleted = conn_->Run("DELETE FROM log WHERE v < ?", {3});
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->affected_rows, 2u);
}

TEST_F(MySqlTest, RollbackDiscardsAndCommitKeeps) {
  ASSERT_TRUE(conn_->Execute("CREATE TABLE t (k VARCHAR(10) PRIMARY KEY, v INT) ENGINE=InnoDB").ok());
  ASSERT_TRUE(conn_->Begin().ok());
  EXPECT_TRUE(conn_->in_transaction());
  EXPECT_EQ(conn_->Begin().code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(conn_->Run("INSERT INTO t VALUES (?, ?)", {"a", 1}).ok());
  ASSERT_TRUE(conn_->Rollback().ok());
  EXPECT_FALSE(conn_->in_transaction());
  EXPECT_TRUE(conn_->Query("SELECT * FROM t")->empty());

  ASSERT_TRUE(conn_->Begin().ok());
  ASSERT_TRUE(conn_->Run("INSERT INTO t VALUES (?, ?)", {"b", 2}).ok());
  // Another connection does not see it before the commit.
  auto other = Connection::Open(options());
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE((*other)->Query("SELECT * FROM t")->empty());
  ASSERT_TRUE(conn_->Commit().ok());
  auto rows = (*other)->Query("SELECT k, v FROM t");
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 1u);
  EXPECT_EQ((*rows)[0][0].ToString(), "b");
  EXPECT_EQ(conn_->Commit().code(), StatusCode::kFailedPrecondition);
}

TEST_F(MySqlTest, ErrorsAreClearAndKeepTheConnection) {
  auto bad = conn_->Query("SELEC 1");
  EXPECT_EQ(bad.status().code(), StatusCode::kInternal);
  EXPECT_NE(bad.status().message().find("SQL syntax"), std::string::npos) << bad.status().message();
  EXPECT_NE(bad.status().message().find("1064"), std::string::npos) << bad.status().message();
  EXPECT_EQ(conn_->last_error_code(), 1064u);

  Status missing = conn_->Execute("SELECT * FROM no_such_table");
  EXPECT_EQ(missing.code(), StatusCode::kInternal);
  EXPECT_NE(missing.message().find("no_such_table"), std::string::npos) << missing.message();

  ASSERT_TRUE(conn_->Execute("CREATE TABLE t (k VARCHAR(3) PRIMARY KEY, v INT NOT NULL)").ok());
  ASSERT_TRUE(conn_->Run("INSERT INTO t VALUES (?, ?)", {"a", 1}).ok());
  EXPECT_EQ(conn_->Run("INSERT INTO t VALUES (?, ?)", {"a", 2}).status().code(), StatusCode::kAlreadyExists);
  EXPECT_EQ(conn_->Run("INSERT INTO t VALUES (?, ?)", {"toolong", 2}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(conn_->Run("INSERT INTO t VALUES (?, ?)", {"b", nullptr}).status().code(),
            StatusCode::kInvalidArgument);
  auto wrong_count = conn_->Run("INSERT INTO t VALUES (?, ?)", {"c"});
  EXPECT_EQ(wrong_count.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_count.status().message().find("takes 2 values, got 1"), std::string::npos);

  // None of that broke the connection.
  auto one = conn_->Query("SELECT 1");
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(*(*one)[0][0].ToInt64(), 1);
  EXPECT_EQ(conn_->last_error_code(), 0u);
}

TEST_F(MySqlTest, AnErrorInsideTheRowsLeavesTheStatementReusable) {
  // Row 1 is sent, then row 2's subquery returns two rows: the error arrives after a row.
  ASSERT_TRUE(conn_->Execute("CREATE TABLE t (k INT PRIMARY KEY)").ok());
  ASSERT_TRUE(conn_->Execute("INSERT INTO t VALUES (1), (2), (3)").ok());
  const std::string sql = "SELECT k, (SELECT k FROM t AS u WHERE u.k <= t.k AND u.k < ?) FROM t ORDER BY k";
  const int64_t id = ConnectionId(*conn_);
  for (int i = 0; i < 3; ++i) {
    auto r = conn_->Query(sql, {3});
    EXPECT_EQ(r.status().code(), StatusCode::kInternal) << r.status().ToString();
    EXPECT_NE(r.status().message().find("more than 1 row"), std::string::npos) << r.status().ToString();
  }
  auto fine = conn_->Query(sql, {2});  // the same statement, now without the error
  ASSERT_TRUE(fine.ok()) << fine.status().ToString();
  EXPECT_EQ(fine->size(), 3u);
  // Still the first connection: no call waited for rows until the read timeout dropped it.
  EXPECT_EQ(ConnectionId(*conn_), id);
}

TEST_F(MySqlTest, UnknownDatabaseIsFailedPrecondition) {
  MySqlOptions o = options();
  o.database = "does_not_exist";
  auto c = Connection::Open(o);
  EXPECT_EQ(c.status().code(), StatusCode::kFailedPrecondition) << c.status().ToString();
  EXPECT_NE(c.status().message().find("does_not_exist"), std::string::npos);
}

TEST_F(MySqlTest, WrongPasswordIsPermissionDenied) {
  MySqlOptions o = options();
  o.password = "wrong";
  auto c = Connection::Open(o);
  EXPECT_EQ(c.status().code(), StatusCode::kPermissionDenied) << c.status().ToString();
}

TEST_F(MySqlTest, ManyDistinctStatementsOutgrowTheCache) {
  ASSERT_TRUE(conn_->Execute("CREATE TABLE t (v INT)").ok());
  for (int n = 1; n <= 150; ++n) {
    std::string sql = "INSERT INTO t VALUES (?)";
    std::vector<Value> values = {n};
    for (int i = 1; i < n % 7 + 1; ++i) {
      sql += ", (?)";
      values.emplace_back(n);
    }
    sql += " /* " + std::to_string(n) + " */";
    ASSERT_TRUE(conn_->Run(sql, values).ok()) << n;
  }
  // The first statement was evicted and is prepared again transparently.
  ASSERT_TRUE(conn_->Run("INSERT INTO t VALUES (?) /* 1 */", {0}).ok());
  auto count = conn_->Query("SELECT COUNT(*) FROM t");
  ASSERT_TRUE(count.ok());
  int expected = 1;
  for (int n = 1; n <= 150; ++n) expected += n % 7 + 1;
  EXPECT_EQ(*(*count)[0][0].ToInt64(), expected);
}

TEST_F(MySqlTest, KilledConnectionReconnectsOutsideATransaction) {
  ASSERT_TRUE(conn_->Execute("CREATE TABLE t (v INT)").ok());
  const int64_t before = ConnectionId(*conn_);
  Kill(before);
  // The statement is sent again on a new connection.
  auto r = conn_->Run("INSERT INTO t VALUES (?)", {1});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_NE(ConnectionId(*conn_), before);
  EXPECT_EQ(*(*conn_->Query("SELECT COUNT(*) FROM t"))[0][0].ToInt64(), 1);
}

TEST_F(MySqlTest, KilledConnectionInsideATransactionIsReportedNotRetried) {
  ASSERT_TRUE(conn_->Execute("CREATE TABLE t (v INT) ENGINE=InnoDB").ok());
  ASSERT_TRUE(conn_->Begin().ok());
  ASSERT_TRUE(conn_->Run("INSERT INTO t VALUES (?)", {1}).ok());
  Kill(ConnectionId(*conn_));
  auto lost = conn_->Run("INSERT INTO t VALUES (?)", {2});
  EXPECT_EQ(lost.status().code(), StatusCode::kUnavailable) << lost.status().ToString();
  // Nothing else runs (in autocommit) until the transaction is ended.
  EXPECT_EQ(conn_->Run("INSERT INTO t VALUES (?)", {3}).status().code(), StatusCode::kUnavailable);
  EXPECT_EQ(conn_->Commit().code(), StatusCode::kUnavailable);
  EXPECT_FALSE(conn_->in_transaction());
  // The connection is usable again and nothing of the transaction was kept.
  auto count = conn_->Query("SELECT COUNT(*) FROM t");
  ASSERT_TRUE(count.ok()) << count.status().ToString();
  EXPECT_EQ(*(*count)[0][0].ToInt64(), 0);

  // Rollback of a lost transaction is fine too.
  ASSERT_TRUE(conn_->Begin().ok());
  Kill(ConnectionId(*conn_));
  EXPECT_EQ(conn_->Query("SELECT 1").status().code(), StatusCode::kUnavailable);
  EXPECT_TRUE(conn_->Rollback().ok());
  EXPECT_TRUE(conn_->Query("SELECT 1").ok());
}

TEST_F(MySqlTest, PoolSharesConnectionsBetweenThreads) {
  ASSERT_TRUE(
      conn_->Execute("CREATE TABLE counter (id INT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB").ok());
  ASSERT_TRUE(conn_->Run("INSERT INTO counter VALUES (?, ?)", {1, 0}).ok());
  auto pool = ConnectionPool::Create(options());
  ASSERT_TRUE(pool.ok()) << pool.status().ToString();
  EXPECT_EQ((*pool)->size(), 3u);
  constexpr int kThreads = 8;
  constexpr int kIncrements = 40;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIncrements; ++i) {
        auto lease = (*pool)->Acquire(std::chrono::seconds(30));
        if (!lease.ok()) {
          ++failures;
          continue;
        }
        Connection& c = **lease;
        // Read-modify-write under a row lock: only correct if the transaction is really one.
        auto increment = [&]() -> Status {
          CHORUS_RETURN_IF_ERROR(c.Begin());
          CHORUS_ASSIGN_OR_RETURN(auto rows, c.Query("SELECT n FROM counter WHERE id = ? FOR UPDATE", {1}));
          if (rows.size() != 1) return Internal("counter row missing");
          CHORUS_ASSIGN_OR_RETURN(int64_t n, rows[0][0].ToInt64());
          CHORUS_RETURN_IF_ERROR(c.Run("UPDATE counter SET n = ? WHERE id = ?", {n + 1, 1}).status());
          CHORUS_RETURN_IF_ERROR(
              c.Run("INSERT INTO counter VALUES (?, ?)", {100 + t * kIncrements + i, 0}).status());
          return c.Commit();
        };
        const bool ok = increment().ok();
        if (!ok) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  auto n = conn_->Query("SELECT n FROM counter WHERE id = 1");
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*(*n)[0][0].ToInt64(), kThreads * kIncrements);
  // At most pool_size connections were opened to the server by the pool.
  auto sessions =
      conn_->Query("SELECT COUNT(*) FROM information_schema.processlist WHERE db = ?", {database_});
  ASSERT_TRUE(sessions.ok()) << sessions.status().ToString();
  EXPECT_LE(*(*sessions)[0][0].ToInt64(), 3 + 1);  // the pool's plus conn_
}

TEST_F(MySqlTest, AcquireTimesOutWhenEveryConnectionIsLeased) {
  auto pool = ConnectionPool::Create(options());
  ASSERT_TRUE(pool.ok());
  std::vector<ConnectionPool::Lease> leases;
  for (size_t i = 0; i < (*pool)->size(); ++i) {
    auto lease = (*pool)->Acquire(std::chrono::seconds(1));
    ASSERT_TRUE(lease.ok());
    leases.push_back(std::move(*lease));
  }
  auto none = (*pool)->Acquire(std::chrono::milliseconds(20));
  EXPECT_EQ(none.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(none.status().message().find("busy"), std::string::npos);

  // A lease returned with an open transaction is rolled back before anyone else gets it.
  ASSERT_TRUE(conn_->Execute("CREATE TABLE t (v INT) ENGINE=InnoDB").ok());
  ASSERT_TRUE(leases.back()->Begin().ok());
  ASSERT_TRUE(leases.back()->Run("INSERT INTO t VALUES (?)", {1}).ok());
  leases.pop_back();
  auto next = (*pool)->Acquire(std::chrono::seconds(1));
  ASSERT_TRUE(next.ok());
  EXPECT_FALSE((*next)->in_transaction());
  EXPECT_EQ(*(*conn_->Query("SELECT COUNT(*) FROM t"))[0][0].ToInt64(), 0);
}

TEST(MySqlPoolTest, RejectsBadOptions) {
  MySqlOptions o;
  o.pool_size = 0;
  EXPECT_EQ(ConnectionPool::Create(o).status().code(), StatusCode::kInvalidArgument);
  o.pool_size = 1;
  o.port = 70000;
  EXPECT_EQ(ConnectionPool::Create(o).status().code(), StatusCode::kInvalidArgument);
}

// Its own server: this test stops it.
TEST(MySqlServerGoneTest, StoppedServerIsUnavailableNotAHang) {
  auto server = MariaDbServer::Start();
  ASSERT_TRUE(server.ok()) << server.status().ToString();
  MySqlOptions o = OptionsFor(**server);
  o.pool_size = 2;
  auto pool = ConnectionPool::Create(o);
  ASSERT_TRUE(pool.ok());
  auto conn = Connection::Open(o);
  ASSERT_TRUE(conn.ok()) << conn.status().ToString();
  {
    auto lease = (*pool)->Acquire();
    ASSERT_TRUE(lease.ok());
    ASSERT_TRUE((*lease)->Query("SELECT 1").ok());
  }
  ASSERT_TRUE((*conn)->Begin().ok());

  (*server)->Stop();

  {
    auto lease = (*pool)->Acquire();
    ASSERT_TRUE(lease.ok());  // leasing needs no server
    auto r = (*lease)->Query("SELECT 1");
    EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
    EXPECT_FALSE((*lease)->connected());
    // Still down: the next call tries to connect and is refused.
    Status again = (*lease)->Execute("SELECT 1");
    EXPECT_EQ(again.code(), StatusCode::kUnavailable) << again.ToString();
    EXPECT_NE(again.message().find("connect"), std::string::npos) << again.ToString();
  }
  EXPECT_EQ((*conn)->Query("SELECT 1").status().code(), StatusCode::kUnavailable);
  EXPECT_EQ((*conn)->Commit().code(), StatusCode::kUnavailable);
  EXPECT_EQ(Connection::Open(o).status().code(), StatusCode::kUnavailable);
}

}  // namespace
}  // namespace chorus::sql
