#include "sql/mysql.h"

#include <errmsg.h>
#include <mysql.h>
#include <mysqld_error.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <list>
#include <mutex>
#include <unordered_map>

namespace chorus::sql {
namespace {

// Server error numbers not (all) in libmariadb's mysqld_error.h.
constexpr unsigned kErConnectionKilled = 1927;          // MariaDB: KILL of this connection
constexpr unsigned kErClientInteractionTimeout = 4031;  // MariaDB: idle connection closed
constexpr unsigned kErCheckConstraintFailed = 4025;     // MariaDB
constexpr unsigned kTiDbWriteConflict = 9007;           // TiDB: optimistic write conflict
constexpr unsigned kTiDbTxnRetryable = 8022;            // TiDB: transaction retry error
constexpr unsigned kTiDbWriteConflictInTidb = 8002;     // TiDB: SELECT FOR UPDATE conflict
constexpr unsigned kTiDbSchemaChanged = 8028;           // TiDB: schema changed during the txn
constexpr unsigned kTiDbServerBusy = 9003;              // TiDB: TiKV server busy

// Prepared statements kept open per connection. Statements built for a varying number of rows
// have many texts; the least recently used beyond this many are closed on the server.
constexpr size_t kStatementCacheSize = 64;
// A string result column starts with a buffer of at least this many bytes; longer values are
// fetched again at their full length.
constexpr unsigned long kMinColumnBuffer = 64;

void InitLibraryOnce() {
  // mysql_init() would do it lazily, but not thread-safely.
  static std::once_flag once;
  std::call_once(once, [] { mysql_library_init(0, nullptr, nullptr); });
}

// The C API wants every thread that uses it registered; the guard unregisters at thread exit.
void InitThread() {
  InitLibraryOnce();
  struct ThreadRegistration {
    ThreadRegistration() { mysql_thread_init(); }
    ~ThreadRegistration() { mysql_thread_end(); }
  };
  thread_local ThreadRegistration registration;
  (void)registration;
}

unsigned WholeSeconds(Duration d) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  if (ms <= 0) return 1;
  const auto s = (ms + 999) / 1000;
  return static_cast<unsigned>(std::min<int64_t>(s, std::numeric_limits<unsigned>::max()));
}

// The connection is gone: the handle is useless and must be reopened.
bool IsConnectionLost(unsigned code) {
  switch (code) {
    case CR_SERVER_GONE_ERROR:
    case CR_SERVER_LOST:
    case CR_SERVER_LOST_EXTENDED:
    case CR_ERR_NET_READ:
    case CR_ERR_NET_WRITE:
    case CR_MALFORMED_PACKET:
    case CR_COMMANDS_OUT_OF_SYNC:  // the protocol state is unknown: never reuse the handle
    case ER_SERVER_SHUTDOWN:
    case kErConnectionKilled:
    case kErClientInteractionTimeout:
      return true;
    default:
      return false;
  }
}

// No connection could be made (or it failed during the handshake).
bool IsConnectFailure(unsigned code) {
  switch (code) {
    case CR_SOCKET_CREATE_ERROR:
    case CR_CONNECTION_ERROR:
    case CR_CONN_HOST_ERROR:
    case CR_IPSOCK_ERROR:
    case CR_UNKNOWN_HOST:
    case CR_SERVER_HANDSHAKE_ERR:
    case CR_SSL_CONNECTION_ERROR:
    case CR_TCP_CONNECTION:
    case ER_CON_COUNT_ERROR:
    case ER_TOO_MANY_USER_CONNECTIONS:
      return true;
    default:
      return false;
  }
}

Status StatusFor(unsigned code, std::string_view sqlstate, std::string_view text, std::string_view context) {
  std::string msg = "mysql: ";
  msg.append(context).append(": ").append(text);
  msg.append(" (error ").append(std::to_string(code));
  if (!sqlstate.empty() && sqlstate != "00000") msg.append(", SQLSTATE ").append(sqlstate);
  msg.append(")");
  if (IsConnectionLost(code) || IsConnectFailure(code) || IsTransactionConflict(code)) {
    return Unavailable(std::move(msg));
  }
  switch (code) {
    case ER_BAD_DB_ERROR:
      return FailedPrecondition(std::move(msg));
    case ER_DUP_ENTRY:
    case ER_DUP_ENTRY_WITH_KEY_NAME:
      return AlreadyExists(std::move(msg));
    case ER_BAD_NULL_ERROR:
    case ER_DATA_TOO_LONG:
    case ER_WARN_DATA_OUT_OF_RANGE:
    case ER_TRUNCATED_WRONG_VALUE:
    case ER_TRUNCATED_WRONG_VALUE_FOR_FIELD:
    case ER_NO_DEFAULT_FOR_FIELD:
    case ER_NO_REFERENCED_ROW_2:
    case ER_ROW_IS_REFERENCED_2:
    case kErCheckConstraintFailed:
      return InvalidArgument(std::move(msg));
    case ER_ACCESS_DENIED_ERROR:
    case ER_DBACCESS_DENIED_ERROR:
    case ER_TABLEACCESS_DENIED_ERROR:
    case ER_COLUMNACCESS_DENIED_ERROR:
      return PermissionDenied(std::move(msg));
    default:
      return Internal(std::move(msg));
  }
}

Status StatusOf(MYSQL* m, std::string_view context) {
  return StatusFor(mysql_errno(m), mysql_sqlstate(m), mysql_error(m), context);
}

Status StatusOf(MYSQL_STMT* s, std::string_view context) {
  return StatusFor(mysql_stmt_errno(s), mysql_stmt_sqlstate(s), mysql_stmt_error(s), context);
}

// The start of a statement, for error messages (values are never in the text).
std::string Shorten(std::string_view sql) {
  constexpr size_t kMax = 100;
  std::string out(sql.substr(0, kMax));
  std::replace(out.begin(), out.end(), '\n', ' ');
  if (sql.size() > kMax) out += "...";
  return out;
}

bool IsIntegerColumn(enum_field_types t) {
  switch (t) {
    case MYSQL_TYPE_TINY:
    case MYSQL_TYPE_SHORT:
    case MYSQL_TYPE_INT24:
    case MYSQL_TYPE_LONG:
    case MYSQL_TYPE_LONGLONG:
    case MYSQL_TYPE_YEAR:
      return true;
    default:
      return false;
  }
}

constexpr unsigned kBinaryCharset = 63;  // charsetnr of binary strings (VARBINARY, BLOB)

}  // namespace

// ---- Value ------------------------------------------------------------------------------------

Value Value::Binary(std::string bytes) {
  Value v(std::move(bytes));
  v.kind_ = Kind::kBinary;
  return v;
}

std::string Value::ToString() const {
  switch (kind_) {
    case Kind::kNull:
      return "";
    case Kind::kInt64:
      return std::to_string(int_);
    case Kind::kUint64:
      return std::to_string(uint_);
    case Kind::kText:
    case Kind::kBinary:
      return bytes_;
  }
  return "";
}

Result<int64_t> Value::ToInt64() const {
  switch (kind_) {
    case Kind::kInt64:
      return int_;
    case Kind::kUint64:
      if (uint_ > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return InvalidArgument("value " + std::to_string(uint_) + " does not fit a signed 64-bit integer");
      }
      return static_cast<int64_t>(uint_);
    case Kind::kText:
    case Kind::kBinary: {
      int64_t v = 0;
      const char* end = bytes_.data() + bytes_.size();
      auto [ptr, ec] = std::from_chars(bytes_.data(), end, v);
      if (bytes_.empty() || ec != std::errc() || ptr != end) {
        return InvalidArgument("value '" + bytes_.substr(0, 40) + "' is not a signed 64-bit integer");
      }
      return v;
    }
    case Kind::kNull:
      break;
  }
  return InvalidArgument("value is NULL, not an integer");
}

Result<uint64_t> Value::ToUint64() const {
  switch (kind_) {
    case Kind::kUint64:
      return uint_;
    case Kind::kInt64:
      if (int_ < 0) return InvalidArgument("value " + std::to_string(int_) + " is negative");
      return static_cast<uint64_t>(int_);
    case Kind::kText:
    case Kind::kBinary: {
      uint64_t v = 0;
      const char* end = bytes_.data() + bytes_.size();
      auto [ptr, ec] = std::from_chars(bytes_.data(), end, v);
      if (bytes_.empty() || ec != std::errc() || ptr != end) {
        return InvalidArgument("value '" + bytes_.substr(0, 40) + "' is not an unsigned 64-bit integer");
      }
      return v;
    }
    case Kind::kNull:
      break;
  }
  return InvalidArgument("value is NULL, not an integer");
}

bool IsTransactionConflict(unsigned code) {
  switch (code) {
    case ER_LOCK_DEADLOCK:
    case ER_LOCK_WAIT_TIMEOUT:
    case kTiDbWriteConflict:
    case kTiDbTxnRetryable:
    case kTiDbWriteConflictInTidb:
    case kTiDbSchemaChanged:
    case kTiDbServerBusy:
      return true;
    default:
      return false;
  }
}

// ---- Connection -------------------------------------------------------------------------------

struct Connection::Impl {
  explicit Impl(const MySqlOptions& o) : options(o) {}
  ~Impl() { Disconnect(); }

  MySqlOptions options;
  MYSQL* mysql = nullptr;  // nullptr while disconnected
  struct Cached {
    MYSQL_STMT* stmt;
    std::list<std::string>::iterator lru;
  };
  std::list<std::string> lru;  // most recently used first
  std::unordered_map<std::string, Cached> statements;
  bool in_transaction = false;
  bool transaction_lost = false;  // the connection died inside the open transaction
  unsigned last_error = 0;

  Status Fail(Status s, unsigned code) {
    last_error = code;
    return s;
  }

  Status Connect() {
    InitThread();
    MYSQL* m = mysql_init(nullptr);
    if (m == nullptr) return Fail(Internal("mysql: mysql_init failed (out of memory)"), CR_OUT_OF_MEMORY);
    const unsigned connect_timeout = WholeSeconds(options.connect_timeout);
    const unsigned read_timeout = WholeSeconds(options.read_timeout);
    const unsigned write_timeout = WholeSeconds(options.write_timeout);
    const unsigned protocol = MYSQL_PROTOCOL_TCP;
    const my_bool off = 0;
    const my_bool on = 1;
    // Row-lock waits end (error 1205, connection kept) before the read timeout drops the
    // connection; see the header.
    const std::string init =
        "SET SESSION innodb_lock_wait_timeout = " + std::to_string(std::max(1u, read_timeout / 2));
    if (mysql_optionsv(m, MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout) != 0 ||
        mysql_optionsv(m, MYSQL_OPT_READ_TIMEOUT, &read_timeout) != 0 ||
        mysql_optionsv(m, MYSQL_OPT_WRITE_TIMEOUT, &write_timeout) != 0 ||
        mysql_optionsv(m, MYSQL_OPT_PROTOCOL, &protocol) != 0 ||
        mysql_optionsv(m, MYSQL_OPT_RECONNECT, &off) != 0 ||
        mysql_optionsv(m, MYSQL_REPORT_DATA_TRUNCATION, &on) != 0 ||
        mysql_optionsv(m, MYSQL_SET_CHARSET_NAME, "utf8mb4") != 0 ||
        mysql_optionsv(m, MYSQL_INIT_COMMAND, init.c_str()) != 0) {
      Status s = StatusOf(m, "setting connection options");
      const unsigned code = mysql_errno(m);
      mysql_close(m);
      return Fail(s, code);
    }
    const char* db = options.database.empty() ? nullptr : options.database.c_str();
    if (mysql_real_connect(m, options.host.c_str(), options.user.c_str(), options.password.c_str(), db,
                           static_cast<unsigned>(options.port), nullptr, 0) == nullptr) {
      const unsigned code = mysql_errno(m);
      Status s = StatusOf(m, "connect to " + options.host + ":" + std::to_string(options.port) +
                                 (db ? " database " + options.database : std::string()));
      mysql_close(m);
      // Whatever the server said (access denied, unknown database, refused), the caller learns
      // it from the code above; a connect failure that is not one of those is still a
      // connection problem.
      if (s.code() == StatusCode::kInternal) s = Unavailable(s.message());
      return Fail(s, code);
    }
    mysql = m;
    return Status::Ok();
  }

  // Drops the connection and every statement prepared on it.
  void Disconnect() {
    if (mysql == nullptr) return;
    // mysql_close first: it detaches the statements, so closing them sends nothing over a
    // connection that may be dead.
    mysql_close(mysql);
    mysql = nullptr;
    for (auto& [text, cached] : statements) mysql_stmt_close(cached.stmt);
    statements.clear();
    lru.clear();
  }

  // The connection was lost during a call; inside a transaction that is final (see header).
  Status OnLost(Status s) {
    Disconnect();
    if (in_transaction) {
      transaction_lost = true;
      return Unavailable(s.message() +
                         "; the connection was lost inside a transaction, which the server "
                         "rolled back (not retried)");
    }
    return s;
  }

  // Runs `attempt` on a connected handle; outside a transaction, once more on a new connection
  // if the first one turns out to be lost.
  template <typename Attempt>
  Status WithReconnect(Attempt&& attempt) {
    InitThread();
    for (int round = 0;; ++round) {
      if (transaction_lost) {
        return Fail(
            Unavailable("mysql: the connection was lost inside the current transaction; roll it back"),
            CR_SERVER_LOST);
      }
      if (mysql == nullptr) {
        // Never open a fresh (autocommit) connection under an open transaction.
        if (in_transaction) {
          transaction_lost = true;
          continue;
        }
        CHORUS_RETURN_IF_ERROR(Connect());
      }
      Status s = attempt();
      if (s.ok()) {
        last_error = 0;
        return s;
      }
      if (!IsConnectionLost(last_error)) return s;
      s = OnLost(std::move(s));
      if (in_transaction || round >= 1) return s;
    }
  }

  // Text protocol: sends `sql` and discards any result.
  Status TextQuery(std::string_view sql) {
    if (mysql_real_query(mysql, sql.data(), static_cast<unsigned long>(sql.size())) != 0) {
      return Fail(StatusOf(mysql, Shorten(sql)), mysql_errno(mysql));
    }
    do {
      MYSQL_RES* res = mysql_store_result(mysql);
      if (res != nullptr) {
        mysql_free_result(res);
      } else if (mysql_field_count(mysql) != 0) {
        return Fail(StatusOf(mysql, Shorten(sql)), mysql_errno(mysql));
      }
    } while (mysql_more_results(mysql) && mysql_next_result(mysql) == 0);
    return Status::Ok();
  }

  Result<MYSQL_STMT*> Prepare(std::string_view sql) {
    std::string key(sql);
    if (auto it = statements.find(key); it != statements.end()) {
      lru.splice(lru.begin(), lru, it->second.lru);
      return it->second.stmt;
    }
    MYSQL_STMT* stmt = mysql_stmt_init(mysql);
    if (stmt == nullptr) return Fail(StatusOf(mysql, "mysql_stmt_init"), mysql_errno(mysql));
    const my_bool on = 1;
    mysql_stmt_attr_set(stmt, STMT_ATTR_UPDATE_MAX_LENGTH, &on);
    if (mysql_stmt_prepare(stmt, sql.data(), static_cast<unsigned long>(sql.size())) != 0) {
      const unsigned code = mysql_stmt_errno(stmt);
      Status s = StatusOf(stmt, "prepare " + Shorten(sql));
      mysql_stmt_close(stmt);
      return Fail(s, code);
    }
    if (statements.size() >= kStatementCacheSize) {
      auto victim = statements.find(lru.back());
      mysql_stmt_close(victim->second.stmt);
      statements.erase(victim);
      lru.pop_back();
    }
    lru.push_front(key);
    statements.emplace(std::move(key), Cached{stmt, lru.begin()});
    return stmt;
  }

  // Prepares (or reuses), binds and executes; with `rows`, fetches the whole result.
  Status RunPrepared(std::string_view sql, const std::vector<Value>& params, ExecResult* exec,
                     std::vector<Row>* rows) {
    CHORUS_ASSIGN_OR_RETURN(MYSQL_STMT * stmt, Prepare(sql));
    const unsigned long expected = mysql_stmt_param_count(stmt);
    if (expected != params.size()) {
      return Fail(InvalidArgument("mysql: " + Shorten(sql) + ": takes " + std::to_string(expected) +
                                  " values, got " + std::to_string(params.size())),
                  CR_PARAMS_NOT_BOUND);
    }
    std::vector<MYSQL_BIND> binds(params.size());
    std::vector<unsigned long> lengths(params.size());
    std::vector<uint64_t> ints(params.size());
    for (size_t i = 0; i < params.size(); ++i) {
      MYSQL_BIND& b = binds[i];
      std::memset(&b, 0, sizeof b);
      const Value& v = params[i];
      switch (v.kind()) {
        case Value::Kind::kNull:
          b.buffer_type = MYSQL_TYPE_NULL;
          break;
        case Value::Kind::kInt64:
          ints[i] = static_cast<uint64_t>(*v.ToInt64());  // the same 8 bytes; is_unsigned says which
          b.buffer_type = MYSQL_TYPE_LONGLONG;
          b.buffer = &ints[i];
          break;
        case Value::Kind::kUint64:
          ints[i] = *v.ToUint64();
          b.buffer_type = MYSQL_TYPE_LONGLONG;
          b.buffer = &ints[i];
          b.is_unsigned = 1;
          break;
        case Value::Kind::kText:
        case Value::Kind::kBinary:
          // BLOB parameters are binary strings on the server; STRING ones are in utf8mb4.
          b.buffer_type = v.kind() == Value::Kind::kText ? MYSQL_TYPE_STRING : MYSQL_TYPE_BLOB;
          b.buffer = const_cast<char*>(v.bytes().data());
          b.buffer_length = static_cast<unsigned long>(v.bytes().size());
          lengths[i] = b.buffer_length;
          b.length = &lengths[i];
          break;
      }
    }
    if (!binds.empty() && mysql_stmt_bind_param(stmt, binds.data()) != 0) {
      return Fail(StatusOf(stmt, "bind " + Shorten(sql)), mysql_stmt_errno(stmt));
    }
    if (mysql_stmt_execute(stmt) != 0) {
      return Fail(StatusOf(stmt, Shorten(sql)), mysql_stmt_errno(stmt));
    }
    if (exec != nullptr) {
      exec->affected_rows = mysql_stmt_affected_rows(stmt);
      exec->insert_id = mysql_stmt_insert_id(stmt);
    }
    if (mysql_stmt_field_count(stmt) == 0) return Status::Ok();
    Status s = rows != nullptr ? Fetch(stmt, sql, rows) : Status::Ok();
    mysql_stmt_free_result(stmt);
    // An error inside the rows (a deadlock found while the server sent them, say) leaves the
    // statement waiting for rows that never come: reusing it would block its next execution
    // until the read timeout. Close it; the next use prepares it afresh.
    if (!s.ok() && mysql != nullptr) Forget(sql);
    return s;
  }

  void Forget(std::string_view sql) {
    auto it = statements.find(std::string(sql));
    if (it == statements.end()) return;
    mysql_stmt_close(it->second.stmt);
    lru.erase(it->second.lru);
    statements.erase(it);
  }

  Status Fetch(MYSQL_STMT* stmt, std::string_view sql, std::vector<Row>* rows) {
    if (mysql_stmt_store_result(stmt) != 0) {
      return Fail(StatusOf(stmt, "read result of " + Shorten(sql)), mysql_stmt_errno(stmt));
    }
    MYSQL_RES* meta = mysql_stmt_result_metadata(stmt);
    if (meta == nullptr)
      return Fail(StatusOf(stmt, "result metadata of " + Shorten(sql)), mysql_stmt_errno(stmt));
    const unsigned n = mysql_num_fields(meta);
    MYSQL_FIELD* fields = mysql_fetch_fields(meta);
    enum class As { kInt, kDouble, kBytes };
    struct Column {
      As as = As::kBytes;
      bool binary = false;
      int64_t i = 0;
      double d = 0;
      std::string buffer;
      unsigned long length = 0;
      my_bool is_null = 0;
      my_bool error = 0;
    };
    std::vector<Column> columns(n);
    std::vector<MYSQL_BIND> binds(n);
    for (unsigned c = 0; c < n; ++c) {
      MYSQL_BIND& b = binds[c];
      std::memset(&b, 0, sizeof b);
      Column& col = columns[c];
      if (IsIntegerColumn(fields[c].type)) {
        col.as = As::kInt;
        b.buffer_type = MYSQL_TYPE_LONGLONG;
        b.buffer = &col.i;
        b.is_unsigned = (fields[c].flags & UNSIGNED_FLAG) != 0;
      } else if (fields[c].type == MYSQL_TYPE_FLOAT || fields[c].type == MYSQL_TYPE_DOUBLE) {
        col.as = As::kDouble;
        b.buffer_type = MYSQL_TYPE_DOUBLE;
        b.buffer = &col.d;
      } else {
        col.binary = fields[c].charsetnr == kBinaryCharset;
        col.buffer.resize(std::max<unsigned long>(fields[c].max_length, kMinColumnBuffer));
        b.buffer_type = MYSQL_TYPE_STRING;
        b.buffer = col.buffer.data();
        b.buffer_length = static_cast<unsigned long>(col.buffer.size());
      }
      b.length = &col.length;
      b.is_null = &col.is_null;
      b.error = &col.error;
    }
    mysql_free_result(meta);
    if (mysql_stmt_bind_result(stmt, binds.data()) != 0) {
      return Fail(StatusOf(stmt, "bind result of " + Shorten(sql)), mysql_stmt_errno(stmt));
    }
    rows->reserve(rows->size() + mysql_stmt_num_rows(stmt));
    while (true) {
      const int r = mysql_stmt_fetch(stmt);
      if (r == MYSQL_NO_DATA) break;
      if (r == 1) return Fail(StatusOf(stmt, "fetch " + Shorten(sql)), mysql_stmt_errno(stmt));
      Row row;
      row.reserve(n);
      for (unsigned c = 0; c < n; ++c) {
        Column& col = columns[c];
        if (col.is_null) {
          row.emplace_back();
          continue;
        }
        switch (col.as) {
          case As::kInt:
            if (binds[c].is_unsigned) {
              row.emplace_back(static_cast<uint64_t>(col.i));
            } else {
              row.emplace_back(col.i);
            }
            break;
          case As::kDouble: {
            char text[64];
            auto [end, ec] = std::to_chars(text, text + sizeof text, col.d);
            row.emplace_back(std::string(text, ec == std::errc() ? end : text));
            break;
          }
          case As::kBytes: {
            std::string value;
            if (col.length <= col.buffer.size()) {
              value.assign(col.buffer.data(), col.length);
            } else {
              // Longer than the buffer: fetch this cell again at its full length.
              value.resize(col.length);
              MYSQL_BIND again;
              std::memset(&again, 0, sizeof again);
              unsigned long length = 0;
              again.buffer_type = MYSQL_TYPE_STRING;
              again.buffer = value.data();
              again.buffer_length = col.length;
              again.length = &length;
              if (mysql_stmt_fetch_column(stmt, &again, c, 0) != 0) {
                return Fail(StatusOf(stmt, "fetch column of " + Shorten(sql)), mysql_stmt_errno(stmt));
              }
              value.resize(std::min<unsigned long>(length, col.length));
            }
            row.push_back(col.binary ? Value::Binary(std::move(value)) : Value(std::move(value)));
            break;
          }
        }
      }
      rows->push_back(std::move(row));
    }
    return Status::Ok();
  }
};

Connection::Connection(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Connection::~Connection() = default;

std::unique_ptr<Connection> Connection::Lazy(const MySqlOptions& options) {
  return std::unique_ptr<Connection>(new Connection(std::make_unique<Impl>(options)));
}

Result<std::unique_ptr<Connection>> Connection::Open(const MySqlOptions& options) {
  std::unique_ptr<Connection> c = Lazy(options);
  CHORUS_RETURN_IF_ERROR(c->impl_->Connect());
  return c;
}

Status Connection::Execute(std::string_view sql) {
  return impl_->WithReconnect([&] { return impl_->TextQuery(sql); });
}

Result<ExecResult> Connection::Run(std::string_view sql, const std::vector<Value>& params) {
  ExecResult out;
  CHORUS_RETURN_IF_ERROR(impl_->WithReconnect([&] {
    out = ExecResult{};
    return impl_->RunPrepared(sql, params, &out, nullptr);
  }));
  return out;
}

Result<std::vector<Row>> Connection::Query(std::string_view sql, const std::vector<Value>& params) {
  std::vector<Row> rows;
  CHORUS_RETURN_IF_ERROR(impl_->WithReconnect([&] {
    rows.clear();
    return impl_->RunPrepared(sql, params, nullptr, &rows);
  }));
  return rows;
}

Status Connection::Begin() {
  if (impl_->in_transaction) return FailedPrecondition("mysql: Begin inside a transaction");
  CHORUS_RETURN_IF_ERROR(impl_->WithReconnect([&] { return impl_->TextQuery("START TRANSACTION"); }));
  impl_->in_transaction = true;
  impl_->transaction_lost = false;
  return Status::Ok();
}

Status Connection::Commit() {
  Impl& d = *impl_;
  if (!d.in_transaction) return FailedPrecondition("mysql: Commit without a transaction");
  d.in_transaction = false;
  if (d.transaction_lost || d.mysql == nullptr) {
    d.transaction_lost = false;
    return d.Fail(Unavailable("mysql: COMMIT: the connection was lost inside the transaction; the server "
                              "rolled it back"),
                  CR_SERVER_LOST);
  }
  Status s = d.TextQuery("COMMIT");
  if (s.ok()) {
    d.last_error = 0;
    return s;
  }
  if (IsConnectionLost(d.last_error)) {
    d.Disconnect();
    return Unavailable(s.message() + "; the connection was lost during COMMIT: the outcome is unknown");
  }
  // The server refused to commit (a TiDB write conflict, say): make sure nothing stays open.
  const unsigned code = d.last_error;
  if (!d.TextQuery("ROLLBACK").ok()) d.Disconnect();
  d.last_error = code;
  return s;
}

Status Connection::Rollback() {
  Impl& d = *impl_;
  const bool lost = d.transaction_lost || d.mysql == nullptr;
  d.in_transaction = false;
  d.transaction_lost = false;
  if (lost) return Status::Ok();  // the server discarded the transaction with the connection
  Status s = d.TextQuery("ROLLBACK");
  if (s.ok()) {
    d.last_error = 0;
    return s;
  }
  // Whatever went wrong, this connection's transaction state is unknown: start afresh.
  const bool gone = IsConnectionLost(d.last_error);
  d.Disconnect();
  return gone ? Status::Ok() : s;
}

bool Connection::in_transaction() const { return impl_->in_transaction; }
bool Connection::connected() const { return impl_->mysql != nullptr; }
unsigned Connection::last_error_code() const { return impl_->last_error; }

// ---- ConnectionPool ---------------------------------------------------------------------------

ConnectionPool::ConnectionPool(const MySqlOptions& options) : options_(options) {
  connections_.reserve(options.pool_size);
  for (size_t i = 0; i < options.pool_size; ++i) connections_.push_back(Connection::Lazy(options));
  MutexLock lock(mu_);
  for (auto& c : connections_) idle_.push_back(c.get());
}

ConnectionPool::~ConnectionPool() = default;

Result<std::unique_ptr<ConnectionPool>> ConnectionPool::Create(const MySqlOptions& options) {
  if (options.pool_size == 0) return InvalidArgument("mysql: pool_size must be at least 1");
  if (options.port <= 0 || options.port > 65535) {
    return InvalidArgument("mysql: port " + std::to_string(options.port) + " is out of range");
  }
  if (options.host.empty()) return InvalidArgument("mysql: host is empty");
  InitLibraryOnce();
  return std::unique_ptr<ConnectionPool>(new ConnectionPool(options));
}

Result<ConnectionPool::Lease> ConnectionPool::Acquire(Duration timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(mu_);
  if (!freed_.WaitUntil(mu_, deadline, [this]() REQUIRES(mu_) { return !idle_.empty(); })) {
    return Unavailable(
        "mysql: all " + std::to_string(connections_.size()) + " connections to " + options_.host + ":" +
        std::to_string(options_.port) + " stayed busy for " +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) + " ms");
  }
  Connection* c = idle_.back();
  idle_.pop_back();
  return Lease(this, c);
}

void ConnectionPool::Release(Connection* connection) {
  {
    MutexLock lock(mu_);
    idle_.push_back(connection);
  }
  freed_.NotifyOne();
}

ConnectionPool::Lease::Lease(Lease&& other) noexcept
    : pool_(std::exchange(other.pool_, nullptr)), connection_(std::exchange(other.connection_, nullptr)) {}

ConnectionPool::Lease& ConnectionPool::Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    Return();
    pool_ = std::exchange(other.pool_, nullptr);
    connection_ = std::exchange(other.connection_, nullptr);
  }
  return *this;
}

ConnectionPool::Lease::~Lease() { Return(); }

void ConnectionPool::Lease::Return() {
  if (connection_ == nullptr) return;
  // A transaction left open (an early return on an error) must not leak into the next user.
  if (connection_->in_transaction()) (void)connection_->Rollback();
  pool_->Release(connection_);
  pool_ = nullptr;
  connection_ = nullptr;
}

}  // namespace chorus::sql
