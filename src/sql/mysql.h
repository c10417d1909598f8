// A small blocking client for MySQL-protocol databases (MariaDB, TiDB) over libmariadb's C API:
// one Connection, a fixed-size ConnectionPool, and Value/Row for prepared-statement parameters
// and results. libmariadb's headers stay in mysql.cc.
//
// What a Connection offers and guarantees:
//   - Execute(sql) sends a statement as text (DDL, START TRANSACTION, SET ...). It takes no
//     values: anything carrying data goes through Run() or Query(), which prepare the statement
//     (cached per connection, least recently used evicted) and bind every value, so no value is
//     ever spliced into SQL text. Strings are sent as text in utf8mb4 (Value(std::string)) or as
//     raw bytes (Value::Binary); integers as signed or unsigned 64-bit; NULL as NULL.
//   - Results are copied out whole (mysql_stmt_store_result) before Query() returns: integer
//     columns arrive as int64/uint64 Values, everything else (VARBINARY, DECIMAL such as SUM(),
//     dates) as bytes; NULL as a null Value.
//   - Lost connections (the server closed it, restarted, was killed, a read/write timeout): the
//     connection is dropped and, OUTSIDE a transaction, reconnected and the statement prepared
//     and sent once more. A statement the server ran before the connection died may therefore
//     run twice: send writes that must not repeat inside a transaction. INSIDE a transaction
//     nothing is retried: the call fails with kUnavailable, the server has rolled the
//     transaction back, and every later statement fails the same way until Commit() or
//     Rollback() ends it (so nothing meant for the transaction can slip out in autocommit).
//   - Errors are Status values whose message carries the server's text, error number and
//     SQLSTATE: connection problems, server shutdown, deadlocks and lock-wait timeouts are
//     kUnavailable (retry later); an unknown database is kFailedPrecondition; duplicate keys
//     kAlreadyExists; values the schema refuses (too long, out of range, NULL into NOT NULL,
//     constraint checks) kInvalidArgument; access denied kPermissionDenied; anything else (bad
//     SQL, a missing table) kInternal. last_error_code() keeps the raw number, e.g. for
//     IsTransactionConflict().
//   - Timeouts: connect_timeout bounds each connection attempt, read_timeout/write_timeout each
//     network read/write (libmariadb counts whole seconds; values are rounded up). A reconnect
//     can add one connect_timeout. The session's innodb_lock_wait_timeout is set below
//     read_timeout so that a statement waiting for a row lock fails with a lock-wait error
//     (kUnavailable, connection kept) before the client gives up on the connection.
//
// Threads: a Connection is used by one thread at a time (the holder of its Lease); it may move
// between threads. ConnectionPool is safe from any thread. The library is initialised once per
// process (mysql_library_init) and every thread that calls in is registered with
// mysql_thread_init (and unregistered when it exits), as the C API requires.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/clock.h"
#include "base/mutex.h"
#include "base/status.h"
#include "base/thread_annotations.h"

namespace chorus::sql {

struct MySqlOptions {
  std::string host = "127.0.0.1";  // TCP always; "localhost" does not switch to a unix socket
  int port = 3306;
  std::string user;
  std::string password;
  std::string database;  // empty: connect without a default database
  Duration connect_timeout = std::chrono::seconds(2);
  Duration read_timeout = std::chrono::seconds(30);
  Duration write_timeout = std::chrono::seconds(30);
  size_t pool_size = 4;
  // How long ConnectionPool::Acquire() (without an argument) waits for a free connection.
  Duration acquire_timeout = std::chrono::seconds(5);
};

// A statement parameter or a result cell.
class Value {
 public:
  enum class Kind { kNull, kInt64, kUint64, kText, kBinary };

  Value() = default;        // NULL
  Value(std::nullptr_t) {}  // NOLINT: implicit by design, so parameter lists read naturally
  template <std::signed_integral T>
  Value(T v) : kind_(Kind::kInt64), int_(v) {}  // NOLINT
  template <std::unsigned_integral T>
  Value(T v) : kind_(Kind::kUint64), uint_(v) {}                            // NOLINT
  Value(std::string text) : kind_(Kind::kText), bytes_(std::move(text)) {}  // NOLINT
  Value(std::string_view text) : Value(std::string(text)) {}                // NOLINT
  Value(const char* text) : Value(std::string(text)) {}                     // NOLINT
  // Bytes that are not text (sent as a binary string, so no character set applies).
  static Value Binary(std::string bytes);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::kNull; }
  // Text and binary content; empty for NULL and integers.
  const std::string& bytes() const { return bytes_; }
  // Text and binary as they are, integers in decimal, "" for NULL.
  std::string ToString() const;
  // An integer, or text holding a decimal integer (DECIMAL results such as SUM()).
  // kInvalidArgument for NULL, anything else, and values out of range.
  Result<int64_t> ToInt64() const;
  Result<uint64_t> ToUint64() const;

  friend bool operator==(const Value&, const Value&) = default;

 private:
  Kind kind_ = Kind::kNull;
  int64_t int_ = 0;
  uint64_t uint_ = 0;
  std::string bytes_;
};

using Row = std::vector<Value>;

struct ExecResult {
  uint64_t affected_rows = 0;
  uint64_t insert_id = 0;  // the first AUTO_INCREMENT value a (multi-row) INSERT generated
};

// Deadlock, lock-wait timeout, TiDB write conflicts: the transaction was (or must be) rolled
// back and may simply be run again.
bool IsTransactionConflict(unsigned error_code);

class ConnectionPool;

class Connection {
 public:
  // Connects now; kUnavailable (or another code above) if it cannot.
  static Result<std::unique_ptr<Connection>> Open(const MySqlOptions& options);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // A statement without values, sent as text; any result set is discarded.
  Status Execute(std::string_view sql);
  // A prepared statement that returns no rows (INSERT, UPDATE, DELETE, ...), one Value per `?`.
  Result<ExecResult> Run(std::string_view sql, const std::vector<Value>& params = {});
  // A prepared statement that returns rows.
  Result<std::vector<Row>> Query(std::string_view sql, const std::vector<Value>& params = {});

  // START TRANSACTION / COMMIT / ROLLBACK. Begin inside a transaction is kFailedPrecondition.
  // Commit after the connection was lost is kUnavailable (rolled back); a connection lost while
  // COMMIT is in flight is kUnavailable with an unknown outcome. Rollback always ends the
  // transaction and is OK when the connection is gone (the server discarded it).
  Status Begin();
  Status Commit();
  Status Rollback();
  bool in_transaction() const;
  // Whether a server connection is open now (false before the first use by a pool, after a
  // loss, while the server is down).
  bool connected() const;
  // The MySQL/MariaDB error number of the last failed call (0 after a success).
  unsigned last_error_code() const;

 private:
  friend class ConnectionPool;
  struct Impl;
  explicit Connection(std::unique_ptr<Impl> impl);
  // Not connected yet: the pool connects on first use.
  static std::unique_ptr<Connection> Lazy(const MySqlOptions& options);

  std::unique_ptr<Impl> impl_;
};

// A fixed number of connections, opened lazily on first use and kept open (a lost one reopens
// on its next use). Acquire() blocks until a connection is free or the timeout passes
// (kUnavailable). A Lease gives the connection back when it dies, rolling back a transaction
// left open. The pool must outlive its leases.
class ConnectionPool {
 public:
  class Lease {
   public:
    Lease(Lease&& other) noexcept;
    Lease& operator=(Lease&& other) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease();

    Connection& operator*() const { return *connection_; }
    Connection* operator->() const { return connection_; }

   private:
    friend class ConnectionPool;
    Lease(ConnectionPool* pool, Connection* connection) : pool_(pool), connection_(connection) {}
    void Return();

    ConnectionPool* pool_ = nullptr;
    Connection* connection_ = nullptr;
  };

  // kInvalidArgument for a pool_size of 0 or a port out of range. Opens no connection.
  static Result<std::unique_ptr<ConnectionPool>> Create(const MySqlOptions& options);
  ~ConnectionPool();
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;

  Result<Lease> Acquire(Duration timeout) EXCLUDES(mu_);
  Result<Lease> Acquire() EXCLUDES(mu_) { return Acquire(options_.acquire_timeout); }

  const MySqlOptions& options() const { return options_; }
  size_t size() const { return connections_.size(); }

 private:
  explicit ConnectionPool(const MySqlOptions& options);
  void Release(Connection* connection) EXCLUDES(mu_);

  const MySqlOptions options_;
  std::vector<std::unique_ptr<Connection>> connections_;  // fixed after Create
  Mutex mu_;
  CondVar freed_;
  std::vector<Connection*> idle_ GUARDED_BY(mu_);
};

}  // namespace chorus::sql
