#include "likes/sql_store.h"

#include <algorithm>
#include <functional>
#include <unordered_map>
#include <utility>

#include "base/clock.h"
#include "net/token.h"

namespace chorus::likes {
namespace {

using sql::Connection;
using sql::Row;
using sql::Value;

// Rows (keys, entities, log entries) per multi-row statement: large batches become several
// statements of bounded size (at most 6 values a row, far below the protocol's 65535).
constexpr size_t kRowsPerStatement = 500;
// The job's offset as a one-row table (0 before its first commit). Joined to the rows a read
// asks for, the offset and the rows come from one statement, hence one snapshot (InnoDB's
// consistent read, TiDB's statement timestamp).
constexpr char kOffsetSubquery[] = "(SELECT COALESCE(MAX(seq), 0) AS seq FROM job_offsets WHERE stream = ?) o";
// Keys per row-constructor IN list ((business, user, entity) IN (...)). The optimizer's cost of
// such a list grows faster than its length (MariaDB 10.11: ~2 ms for 50 keys, ~6 ms for 100,
// ~75 ms for 500), so lookups use shorter lists than writes.
constexpr size_t kKeysPerLookup = 100;
// A deadlock or lock-wait timeout between concurrent applies reruns the transaction this many
// times in all before it is reported.
constexpr int kApplyAttempts = 3;
// PendingLog reads the log in pages of this many entries.
constexpr size_t kLogPage = 5000;
constexpr size_t kMaxExamples = 20;

const char* const kMigrateHint = "run `chorus likes migrate` with the same database settings";

// One schema version: statements that are each idempotent (IF NOT EXISTS), so a step that
// stopped halfway, or two processes migrating at once, are harmless.
struct Migration {
  int version;
  std::vector<const char*> steps;
};

// Appended to, never edited: a deployed version is history.
const std::vector<Migration>& Migrations() {
  static const std::vector<Migration> migrations = {
      {1,
       {
           // The /*T![...] */ comments are executed by TiDB only (clustered primary keys; an
           // AUTO_INCREMENT that is consecutive per statement and increasing across servers).
           "CREATE TABLE IF NOT EXISTS likes ("
           " business VARBINARY(16) NOT NULL,"
           " user VARBINARY(64) NOT NULL,"
           " entity VARBINARY(64) NOT NULL,"
           " owner VARBINARY(64) NOT NULL DEFAULT '',"
           " state TINYINT NOT NULL,"
           " time_ms BIGINT NOT NULL,"
           " source VARCHAR(32) NOT NULL DEFAULT '',"
           " PRIMARY KEY (business, user, entity) /*T![clustered_index] CLUSTERED */,"
           " KEY user_likes (business, user, state, time_ms, entity),"
           " KEY likers (business, entity, state, time_ms, user)"
           ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
           "CREATE TABLE IF NOT EXISTS counts ("
           " business VARBINARY(16) NOT NULL,"
           " entity VARBINARY(64) NOT NULL,"
           " likes BIGINT NOT NULL DEFAULT 0,"
           " dislikes BIGINT NOT NULL DEFAULT 0,"
           " PRIMARY KEY (business, entity) /*T![clustered_index] CLUSTERED */"
           ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
           "CREATE TABLE IF NOT EXISTS received ("
           " business VARBINARY(16) NOT NULL,"
           " owner VARBINARY(64) NOT NULL,"
           " total BIGINT NOT NULL DEFAULT 0,"
           " PRIMARY KEY (business, owner) /*T![clustered_index] CLUSTERED */"
           ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
           "CREATE TABLE IF NOT EXISTS like_log ("
           " seq BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,"
           " entry VARBINARY(1024) NOT NULL,"
           " PRIMARY KEY (seq)"
           ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 /*T![auto_id_cache] AUTO_ID_CACHE=1 */",
           "CREATE TABLE IF NOT EXISTS job_offsets ("
           " stream VARCHAR(64) NOT NULL,"
           " seq BIGINT UNSIGNED NOT NULL,"
           " PRIMARY KEY (stream)"
           ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
       }},
  };
  return migrations;
}

// likes.source of a row written outside a stream (Apply, the synchronous path).
constexpr std::string_view kDirectSource = "direct";

// n groups of k placeholders: "(?,?),(?,?)".
std::string Tuples(size_t n, size_t k) {
  std::string group = "(";
  for (size_t i = 0; i < k; ++i) group += i == 0 ? "?" : ",?";
  group += ")";
  std::string out;
  out.reserve(n * (group.size() + 1));
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) out += ",";
    out += group;
  }
  return out;
}

Value Bytes(std::string_view s) { return Value::Binary(std::string(s)); }

Result<LikeState> StateOf(const Value& v) {
  CHORUS_ASSIGN_OR_RETURN(int64_t s, v.ToInt64());
  if (s < 0 || s > 2) return Internal("likes: stored state " + std::to_string(s) + " is not 0, 1 or 2");
  return static_cast<LikeState>(s);
}

// ns/id for messages (ids are printable by validation).
std::string Shown(std::string_view ns, std::string_view id) {
  return std::string(ns) + "/" + std::string(id);
}

// Cursor: base64url of the last item's time (8 bytes, big-endian) and id.
std::string EncodeCursor(int64_t time_ms, std::string_view id) {
  std::string raw;
  const auto u = static_cast<uint64_t>(time_ms);
  for (int i = 7; i >= 0; --i) raw.push_back(static_cast<char>(u >> (8 * i)));
  raw.append(id);
  return net::token_internal::Base64UrlEncode(raw);
}

Result<std::pair<int64_t, std::string>> DecodeCursor(std::string_view cursor) {
  auto raw = net::token_internal::Base64UrlDecode(cursor);
  if (!raw || raw->size() < 9) return InvalidArgument("cursor is not valid");
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i) u = (u << 8) | static_cast<uint8_t>((*raw)[i]);
  std::string id = raw->substr(8);
  if (!ValidateId("cursor", id).ok()) return InvalidArgument("cursor is not valid");
  return std::make_pair(static_cast<int64_t>(u), std::move(id));
}

bool ValidDatabaseName(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// The current state of one (ns, user, entity) during an apply.
struct KeyState {
  const LogEntry* first = nullptr;  // names the key
  bool stored = false;              // a row exists (or is written by this batch)
  LikeState state = LikeState::kNone;
  int64_t time_ms = 0;
  std::string owner;
  bool changed = false;  // at least one real transition: the row is rewritten
  bool direct = false;   // the stored row was written outside a stream (source = 'direct')
};

// An aggregated delta of one entity's counts or one owner's total.
struct TotalDelta {
  std::string_view ns;
  std::string_view id;
  Counts delta;  // received totals use delta.likes only
};

// Everything one apply computes, before it is written.
struct ApplyPlan {
  std::vector<KeyState> keys;
  std::unordered_map<std::string, size_t> key_index;  // RecordKey -> keys[i]
  std::vector<TotalDelta> entities;                   // first-seen order
  std::unordered_map<std::string, size_t> entity_index;
  std::vector<TotalDelta> owners;
  std::unordered_map<std::string, size_t> owner_index;
  std::vector<uint64_t> log_seqs;
};

TotalDelta& Total(std::vector<TotalDelta>& list, std::unordered_map<std::string, size_t>& index,
                  std::string_view ns, std::string_view id) {
  auto [it, inserted] = index.try_emplace(TotalKey(ns, id), list.size());
  if (inserted) list.push_back({ns, id, {}});
  return list[it->second];
}

// Locks and reads the stored row of every key in the plan.
Status ReadKeysForUpdate(Connection& c, ApplyPlan& plan) {
  for (size_t at = 0; at < plan.keys.size(); at += kKeysPerLookup) {
    const size_t n = std::min(kKeysPerLookup, plan.keys.size() - at);
    std::vector<Value> values;
    values.reserve(n * 3);
    for (size_t i = at; i < at + n; ++i) {
      const LogEntry& e = *plan.keys[i].first;
      values.push_back(Bytes(e.ns));
      values.push_back(Bytes(e.user));
      values.push_back(Bytes(e.entity));
    }
    CHORUS_ASSIGN_OR_RETURN(
        std::vector<Row> rows,
        c.Query("SELECT business, user, entity, state, time_ms, owner, source FROM likes WHERE "
                "(business, user, entity) IN (" +
                    Tuples(n, 3) + ") FOR UPDATE",
                values));
    for (const Row& row : rows) {
      auto it = plan.key_index.find(RecordKey(row[0].bytes(), row[1].bytes(), row[2].bytes()));
      if (it == plan.key_index.end()) continue;  // cannot happen: the IN list names it
      KeyState& k = plan.keys[it->second];
      k.stored = true;
      CHORUS_ASSIGN_OR_RETURN(k.state, StateOf(row[3]));
      CHORUS_ASSIGN_OR_RETURN(k.time_ms, row[4].ToInt64());
      k.owner = row[5].bytes();
      k.direct = row[6].bytes() == kDirectSource;
    }
  }
  return Status::Ok();
}

// Adds deltas to a (business, id, value columns...) total table, clamped at zero. A new row
// takes the delta itself; a negative one there (a total missing while records say otherwise) is
// clamped by a second statement.
Status AddTotals(Connection& c, const std::vector<const TotalDelta*>& totals, bool counts) {
  const std::string head = counts ? "INSERT INTO counts (business, entity, likes, dislikes) VALUES "
                                  : "INSERT INTO received (business, owner, total) VALUES ";
  const std::string tail = counts ? " ON DUPLICATE KEY UPDATE likes = GREATEST(0, likes + VALUES(likes)),"
                                    " dislikes = GREATEST(0, dislikes + VALUES(dislikes))"
                                  : " ON DUPLICATE KEY UPDATE total = GREATEST(0, total + VALUES(total))";
  const size_t width = counts ? 4 : 3;
  std::vector<const TotalDelta*> negative;
  for (size_t at = 0; at < totals.size(); at += kRowsPerStatement) {
    const size_t n = std::min(kRowsPerStatement, totals.size() - at);
    std::vector<Value> values;
    values.reserve(n * width);
    for (size_t i = at; i < at + n; ++i) {
      const TotalDelta& t = *totals[i];
      values.push_back(Bytes(t.ns));
      values.push_back(Bytes(t.id));
      values.push_back(t.delta.likes);
      if (counts) values.push_back(t.delta.dislikes);
      if (t.delta.likes < 0 || (counts && t.delta.dislikes < 0)) negative.push_back(&t);
    }
    CHORUS_RETURN_IF_ERROR(c.Run(head + Tuples(n, width) + tail, values).status());
  }
  for (size_t at = 0; at < negative.size(); at += kKeysPerLookup) {
    const size_t n = std::min(kKeysPerLookup, negative.size() - at);
    std::vector<Value> values;
    values.reserve(n * 2);
    for (size_t i = at; i < at + n; ++i) {
      values.push_back(Bytes(negative[i]->ns));
      values.push_back(Bytes(negative[i]->id));
    }
    const std::string sql =
        counts
            ? "UPDATE counts SET likes = GREATEST(0, likes), dislikes = GREATEST(0, dislikes)"
              " WHERE (business, entity) IN (" +
                  Tuples(n, 2) + ") AND (likes < 0 OR dislikes < 0)"
            : "UPDATE received SET total = 0 WHERE (business, owner) IN (" + Tuples(n, 2) + ") AND total < 0";
    CHORUS_RETURN_IF_ERROR(c.Run(sql, values).status());
  }
  return Status::Ok();
}

// Reads back the absolute totals of `totals` (inside the transaction that wrote them).
Status ReadTotals(Connection& c, const std::vector<TotalDelta>& totals, bool counts, ApplyOutcome* outcome) {
  std::unordered_map<std::string, std::vector<int64_t>> found;
  for (size_t at = 0; at < totals.size(); at += kKeysPerLookup) {
    const size_t n = std::min(kKeysPerLookup, totals.size() - at);
    std::vector<Value> values;
    values.reserve(n * 2);
    for (size_t i = at; i < at + n; ++i) {
      values.push_back(Bytes(totals[i].ns));
      values.push_back(Bytes(totals[i].id));
    }
    const std::string sql =
        counts ? "SELECT business, entity, likes, dislikes FROM counts WHERE (business, entity) IN (" +
                     Tuples(n, 2) + ")"
               : "SELECT business, owner, total, 0 FROM received WHERE (business, owner) IN (" +
                     Tuples(n, 2) + ")";
    CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, c.Query(sql, values));
    for (const Row& row : rows) {
      CHORUS_ASSIGN_OR_RETURN(int64_t a, row[2].ToInt64());
      CHORUS_ASSIGN_OR_RETURN(int64_t b, row[3].ToInt64());
      found[TotalKey(row[0].bytes(), row[1].bytes())] = {a, b};
    }
  }
  for (const TotalDelta& t : totals) {
    auto it = found.find(TotalKey(t.ns, t.id));
    const int64_t a = it == found.end() ? 0 : it->second[0];
    const int64_t b = it == found.end() ? 0 : it->second[1];
    if (counts) {
      outcome->counts.push_back({std::string(t.ns), std::string(t.id), Counts{a, b}});
    } else {
      outcome->received.push_back({std::string(t.ns), std::string(t.id), a});
    }
  }
  return Status::Ok();
}

// One attempt: the whole authoritative apply in one transaction (see the header).
Status ApplyOnce(Connection& c, std::span<const LogEntry> entries, std::string_view stream,
                 uint64_t through_seq, std::optional<uint64_t> after, ApplyOutcome* outcome) {
  ApplyPlan plan;
  for (const LogEntry& e : entries) {
    auto [it, inserted] = plan.key_index.try_emplace(RecordKey(e.ns, e.user, e.entity), plan.keys.size());
    if (inserted) plan.keys.push_back(KeyState{&e});
    Total(plan.entities, plan.entity_index, e.ns, e.entity);  // every entity named, for the outcome
    if (e.seq != 0) plan.log_seqs.push_back(e.seq);
  }

  // Row locks on missing keys need REPEATABLE READ (gap locks): under READ COMMITTED two
  // applies could both see "no row" and both count the same new like.
  CHORUS_RETURN_IF_ERROR(c.Execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"));
  CHORUS_RETURN_IF_ERROR(c.Begin());
  if (after) {
    CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows,
                            c.Query("SELECT seq FROM job_offsets WHERE stream = ? FOR UPDATE", {stream}));
    uint64_t current = 0;
    if (!rows.empty()) {
      CHORUS_ASSIGN_OR_RETURN(current, rows[0][0].ToUint64());
    }
    if (current != *after) {
      return FailedPrecondition("stream " + std::string(stream) + " is applied through " + std::to_string(current) +
                                ", not " + std::to_string(*after) + " (another job?)");
    }
  }
  CHORUS_RETURN_IF_ERROR(ReadKeysForUpdate(c, plan));

  for (const LogEntry& e : entries) {
    KeyState& k = plan.keys[plan.key_index.at(RecordKey(e.ns, e.user, e.entity))];
    if (k.state == e.to) continue;
    if (e.if_state && k.state != *e.if_state) continue;  // a blind un-action of another state
    // A stream entry older than a row written outside the stream (the synchronous fallback while
    // the queue was down): it was queued before that write, so the row wins. Between stream
    // entries the stream's order decides, never the writers' clocks.
    if (!stream.empty() && k.stored && k.direct && e.time_ms < k.time_ms) continue;
    const Counts d = DeltaOf(k.state, e.to);
    if (!k.stored) {
      k.stored = true;
      k.owner = e.owner;  // the first row fixes the owner credited
    }
    k.state = e.to;
    k.time_ms = e.time_ms;
    k.changed = true;
    k.direct = stream.empty();
    Total(plan.entities, plan.entity_index, e.ns, e.entity).delta += d;
    if (!k.owner.empty() && d.likes != 0) {
      Total(plan.owners, plan.owner_index, e.ns, k.owner).delta.likes += d.likes;
    }
  }

  // The final row of every key that changed, each key once.
  std::vector<const KeyState*> changed;
  for (const KeyState& k : plan.keys) {
    if (k.changed) changed.push_back(&k);
  }
  for (size_t at = 0; at < changed.size(); at += kRowsPerStatement) {
    const size_t n = std::min(kRowsPerStatement, changed.size() - at);
    std::vector<Value> values;
    values.reserve(n * 7);
    for (size_t i = at; i < at + n; ++i) {
      const KeyState& k = *changed[i];
      values.push_back(Bytes(k.first->ns));
      values.push_back(Bytes(k.first->user));
      values.push_back(Bytes(k.first->entity));
      values.push_back(Bytes(k.owner));
      values.push_back(static_cast<int64_t>(k.state));
      values.push_back(k.time_ms);
      values.push_back(Bytes(k.direct ? kDirectSource : ""));
    }
    CHORUS_RETURN_IF_ERROR(
        c.Run("INSERT INTO likes (business, user, entity, owner, state, time_ms, source) VALUES " +
                  Tuples(n, 7) +
                  " ON DUPLICATE KEY UPDATE owner = VALUES(owner), state = VALUES(state),"
                  " time_ms = VALUES(time_ms), source = VALUES(source)",
              values)
            .status());
  }

  std::vector<const TotalDelta*> entity_deltas;
  for (const TotalDelta& t : plan.entities) {
    if (t.delta.likes != 0 || t.delta.dislikes != 0) entity_deltas.push_back(&t);
  }
  CHORUS_RETURN_IF_ERROR(AddTotals(c, entity_deltas, /*counts=*/true));
  std::vector<const TotalDelta*> owner_deltas;
  for (const TotalDelta& t : plan.owners) {
    if (t.delta.likes != 0) owner_deltas.push_back(&t);
  }
  CHORUS_RETURN_IF_ERROR(AddTotals(c, owner_deltas, /*counts=*/false));

  for (size_t at = 0; at < plan.log_seqs.size(); at += kRowsPerStatement) {
    const size_t n = std::min(kRowsPerStatement, plan.log_seqs.size() - at);
    std::vector<Value> values(plan.log_seqs.begin() + static_cast<ptrdiff_t>(at),
                              plan.log_seqs.begin() + static_cast<ptrdiff_t>(at + n));
    std::string sql = "DELETE FROM like_log WHERE seq IN (?";
    for (size_t i = 1; i < n; ++i) sql += ",?";
    sql += ")";
    CHORUS_RETURN_IF_ERROR(c.Run(sql, values).status());
  }

  if (!stream.empty()) {
    CHORUS_RETURN_IF_ERROR(c.Run("INSERT INTO job_offsets (stream, seq) VALUES (?, ?)"
                                 " ON DUPLICATE KEY UPDATE seq = VALUES(seq)",
                                 {stream, through_seq})
                               .status());
  }

  if (outcome != nullptr) {
    CHORUS_RETURN_IF_ERROR(ReadTotals(c, plan.entities, /*counts=*/true, outcome));
    CHORUS_RETURN_IF_ERROR(ReadTotals(c, plan.owners, /*counts=*/false, outcome));
    for (const KeyState* k : changed) {
      outcome->records.push_back(
          {k->first->ns, k->first->user, k->first->entity, k->state, k->time_ms, k->owner});
    }
  }
  return c.Commit();
}

}  // namespace

SqlLikeStore::SqlLikeStore(std::unique_ptr<sql::ConnectionPool> pool) : pool_(std::move(pool)) {}
SqlLikeStore::~SqlLikeStore() = default;

Status SqlLikeStore::Migrate(const sql::MySqlOptions& options) {
  if (!ValidDatabaseName(options.database)) {
    return InvalidArgument("likes: database name '" + options.database + "' must be 1-64 of [A-Za-z0-9_]");
  }
  auto connected = Connection::Open(options);
  if (!connected.ok() && connected.status().code() == StatusCode::kFailedPrecondition) {
    // No such database yet: create it, then connect to it.
    sql::MySqlOptions server = options;
    server.database.clear();
    CHORUS_ASSIGN_OR_RETURN(auto admin, Connection::Open(server));
    CHORUS_RETURN_IF_ERROR(
        admin->Execute("CREATE DATABASE IF NOT EXISTS `" + options.database + "` CHARACTER SET utf8mb4"));
    connected = Connection::Open(options);
  }
  if (!connected.ok()) return connected.status().WithContext("likes migrate");
  Connection& c = **connected;
  CHORUS_RETURN_IF_ERROR(
      c.Execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INT NOT NULL PRIMARY KEY,"
                " applied_at BIGINT NOT NULL"
                ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"));
  CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, c.Query("SELECT version FROM schema_migrations"));
  std::vector<int64_t> applied;
  for (const Row& row : rows) {
    CHORUS_ASSIGN_OR_RETURN(int64_t v, row[0].ToInt64());
    applied.push_back(v);
  }
  for (const Migration& m : Migrations()) {
    if (std::find(applied.begin(), applied.end(), m.version) != applied.end()) continue;
    for (const char* step : m.steps) {
      CHORUS_RETURN_IF_ERROR(
          c.Execute(step).WithContext("likes migrate to version " + std::to_string(m.version)));
    }
    CHORUS_RETURN_IF_ERROR(c.Run("INSERT IGNORE INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                                 {m.version, SystemClock::Instance().WallMillis()})
                               .status());
  }
  return Status::Ok();
}

Result<std::unique_ptr<SqlLikeStore>> SqlLikeStore::Open(const sql::MySqlOptions& options) {
  CHORUS_ASSIGN_OR_RETURN(std::unique_ptr<sql::ConnectionPool> pool, sql::ConnectionPool::Create(options));
  {
    CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool->Acquire());
    auto tables = c->Query(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
        {"schema_migrations"});
    if (!tables.ok()) {
      if (tables.status().code() == StatusCode::kFailedPrecondition) {
        return FailedPrecondition("likes: " + tables.status().message() + "; " + kMigrateHint);
      }
      return tables.status().WithContext("likes open");
    }
    CHORUS_ASSIGN_OR_RETURN(int64_t present, (*tables)[0][0].ToInt64());
    if (present == 0) {
      return FailedPrecondition("likes: database '" + options.database + "' has no likes schema; " +
                                kMigrateHint);
    }
    CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows,
                            c->Query("SELECT COALESCE(MAX(version), 0) FROM schema_migrations"));
    CHORUS_ASSIGN_OR_RETURN(int64_t version, rows[0][0].ToInt64());
    if (version < kSchemaVersion) {
      return FailedPrecondition("likes: database '" + options.database + "' has schema version " +
                                std::to_string(version) + ", this chorus needs " +
                                std::to_string(kSchemaVersion) + "; " + kMigrateHint);
    }
    // A newer schema is accepted: migrations only add, so an older binary keeps working during a
    // rolling upgrade.
  }
  return std::unique_ptr<SqlLikeStore>(new SqlLikeStore(std::move(pool)));
}

Status SqlLikeStore::AppendLog(std::span<LogEntry> entries) {
  if (entries.empty()) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  // One transaction: the batch is durable as a whole or not at all, and a lost connection is
  // reported rather than the INSERT retried (which could log the entries twice).
  CHORUS_RETURN_IF_ERROR(c->Begin());
  std::vector<uint64_t> seqs;
  seqs.reserve(entries.size());
  for (size_t at = 0; at < entries.size(); at += kRowsPerStatement) {
    const size_t n = std::min(kRowsPerStatement, entries.size() - at);
    std::vector<Value> values;
    values.reserve(n);
    for (size_t i = at; i < at + n; ++i) values.push_back(Value::Binary(EncodeLogEntry(entries[i])));
    std::string sql = "INSERT INTO like_log (entry) VALUES (?)";
    for (size_t i = 1; i < n; ++i) sql += ",(?)";
    CHORUS_ASSIGN_OR_RETURN(sql::ExecResult r, c->Run(sql, values));
    if (r.affected_rows != n || r.insert_id == 0) {
      return Internal("likes: appending to like_log inserted " + std::to_string(r.affected_rows) + " of " +
                      std::to_string(n) + " entries");
    }
    for (size_t i = 0; i < n; ++i) seqs.push_back(r.insert_id + i);
  }
  CHORUS_RETURN_IF_ERROR(c->Commit());
  for (size_t i = 0; i < entries.size(); ++i) entries[i].seq = seqs[i];
  return Status::Ok();
}

Status SqlLikeStore::ApplyWithRetries(std::span<const LogEntry> entries, std::string_view stream,
                                      uint64_t through_seq, std::optional<uint64_t> after,
                                      ApplyOutcome* outcome) {
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  for (int attempt = 1;; ++attempt) {
    if (outcome != nullptr) *outcome = ApplyOutcome{};
    Status s = ApplyOnce(*c, entries, stream, through_seq, after, outcome);
    if (s.ok()) return s;
    const unsigned code = c->last_error_code();
    if (c->in_transaction()) (void)c->Rollback();
    if (!sql::IsTransactionConflict(code) || attempt >= kApplyAttempts) return s.WithContext("likes apply");
  }
}

Status SqlLikeStore::Apply(std::span<const LogEntry> entries) {
  if (entries.empty()) return Status::Ok();
  return ApplyWithRetries(entries, "", 0, std::nullopt, nullptr);
}

Result<ApplyOutcome> SqlLikeStore::ApplyBatch(std::span<const LogEntry> entries, std::string_view stream,
                                              uint64_t through_seq, std::optional<uint64_t> after) {
  if (stream.empty() || stream.size() > 64) return InvalidArgument("likes: stream name must be 1-64 bytes");
  ApplyOutcome outcome;
  CHORUS_RETURN_IF_ERROR(ApplyWithRetries(entries, stream, through_seq, after, &outcome));
  return outcome;
}

Result<uint64_t> SqlLikeStore::AppliedThrough(std::string_view stream) {
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows,
                          c->Query("SELECT seq FROM job_offsets WHERE stream = ?", {stream}));
  if (rows.empty()) return uint64_t{0};
  return rows[0][0].ToUint64();
}

Result<std::vector<LogEntry>> SqlLikeStore::PendingLog() {
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  std::vector<LogEntry> out;
  uint64_t after = 0;
  while (true) {
    CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows,
                            c->Query("SELECT seq, entry FROM like_log WHERE seq > ? ORDER BY seq LIMIT ?",
                                     {after, static_cast<uint64_t>(kLogPage)}));
    for (const Row& row : rows) {
      CHORUS_ASSIGN_OR_RETURN(uint64_t seq, row[0].ToUint64());
      auto e = DecodeLogEntry(row[1].bytes());
      if (!e.ok())
        return Internal("likes: like_log entry " + std::to_string(seq) + ": " + e.status().message());
      e->seq = seq;
      out.push_back(std::move(*e));
      after = seq;
    }
    if (rows.size() < kLogPage) break;
  }
  return out;
}

namespace {
// Appends " IN (?,?,...)" for `ids` to `sql` and their values to `values` (ids non-empty).
void AppendInList(std::span<const std::string> ids, std::string* sql, std::vector<Value>* values) {
  *sql += " IN (";
  for (size_t i = 0; i < ids.size(); ++i) {
    *sql += i == 0 ? "?" : ",?";
    values->push_back(Bytes(ids[i]));
  }
  *sql += ")";
}
}  // namespace

namespace {

// Where each key occurs in `keys` (a key may be asked twice).
using KeyPositions = std::unordered_map<std::string_view, std::vector<size_t>>;
KeyPositions Positions(std::span<const std::string> keys) {
  KeyPositions positions;
  for (size_t i = 0; i < keys.size(); ++i) positions[keys[i]].push_back(i);
  return positions;
}

// row[at..at+3] = entity, state, time_ms, owner of a likes row, stored at its entity's positions.
// A NULL entity (a LEFT JOIN that matched nothing) or state 0 (a row kept for its owner) is no record.
Status TakeRecordRow(const Row& row, size_t at, const KeyPositions& positions, std::vector<std::optional<Record>>* out) {
  if (row[at].is_null()) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(LikeState state, StateOf(row[at + 1]));
  if (state == LikeState::kNone) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(int64_t time_ms, row[at + 2].ToInt64());
  auto it = positions.find(row[at].bytes());
  if (it == positions.end()) return Status::Ok();
  for (size_t i : it->second) (*out)[i] = Record{state, time_ms, row[at + 3].bytes()};
  return Status::Ok();
}

// row[at..at+2] = entity, likes, dislikes of a counts row, stored at its entity's positions (a NULL
// entity: a LEFT JOIN that matched nothing).
Status TakeCountsRow(const Row& row, size_t at, const KeyPositions& positions, std::vector<Counts>* out) {
  if (row[at].is_null()) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(int64_t likes, row[at + 1].ToInt64());
  CHORUS_ASSIGN_OR_RETURN(int64_t dislikes, row[at + 2].ToInt64());
  auto it = positions.find(row[at].bytes());
  if (it == positions.end()) return Status::Ok();
  for (size_t i : it->second) (*out)[i] = Counts{likes, dislikes};
  return Status::Ok();
}

// Runs `sql`, whose first column is kOffsetSubquery's seq (every row carries it, and there is at
// least one row), on a pooled connection: the rows, and the offset in *offset.
Result<std::vector<Row>> QueryWithOffset(sql::ConnectionPool& pool, const std::string& sql,
                                         const std::vector<Value>& values, uint64_t* offset) {
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool.Acquire());
  CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, c->Query(sql, values));
  if (rows.empty()) return Internal("read with the job's offset: the offset row is missing from the answer");
  CHORUS_ASSIGN_OR_RETURN(*offset, rows[0][0].ToUint64());
  return rows;
}

// The records of `user` on `entities` (nullopt for none) on `c`, 100 per statement.
Status ReadRecords(Connection& c, std::string_view ns, std::string_view user,
                   std::span<const std::string> entities, std::vector<std::optional<Record>>* out) {
  out->assign(entities.size(), std::nullopt);
  const auto positions = Positions(entities);
  for (size_t at = 0; at < entities.size(); at += kRowsPerStatement) {
    const size_t n = std::min(kRowsPerStatement, entities.size() - at);
    std::vector<Value> values = {Bytes(ns), Bytes(user)};
    std::string sql =
        "SELECT entity, state, time_ms, owner FROM likes WHERE business = ? AND user = ? AND entity";
    AppendInList(entities.subspan(at, n), &sql, &values);
    CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, c.Query(sql, values));
    for (const Row& row : rows) CHORUS_RETURN_IF_ERROR(TakeRecordRow(row, 0, positions, out));
  }
  return Status::Ok();
}

}  // namespace

Status SqlLikeStore::GetRecords(std::string_view ns, std::string_view user,
                                std::span<const std::string> entities,
                                std::vector<std::optional<Record>>* out) {
  out->assign(entities.size(), std::nullopt);
  if (entities.empty()) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  return ReadRecords(*c, ns, user, entities, out);
}

namespace {

// The counts of `entities` (zero for none) on `c`, 100 per statement.
Status ReadCounts(Connection& c, std::string_view ns, std::span<const std::string> entities,
                  std::vector<Counts>* out) {
  out->assign(entities.size(), Counts{});
  const auto positions = Positions(entities);
  for (size_t at = 0; at < entities.size(); at += kRowsPerStatement) {
    const size_t n = std::min(kRowsPerStatement, entities.size() - at);
    std::vector<Value> values = {Bytes(ns)};
    std::string sql = "SELECT entity, likes, dislikes FROM counts WHERE business = ? AND entity";
    AppendInList(entities.subspan(at, n), &sql, &values);
    CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, c.Query(sql, values));
    for (const Row& row : rows) CHORUS_RETURN_IF_ERROR(TakeCountsRow(row, 0, positions, out));
  }
  return Status::Ok();
}

}  // namespace

Status SqlLikeStore::GetCounts(std::string_view ns, std::span<const std::string> entities,
                               std::vector<Counts>* out) {
  out->assign(entities.size(), Counts{});
  if (entities.empty()) return Status::Ok();
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  return ReadCounts(*c, ns, entities, out);
}

Status SqlLikeStore::WithOffset(std::string_view stream, uint64_t* offset,
                                const std::function<Status(Connection&)>& reads) {
  *offset = 0;
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  // One read view for the offset and every read (REPEATABLE READ: the view is taken by the
  // first read and kept to the end of the transaction).
  CHORUS_RETURN_IF_ERROR(c->Execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"));
  CHORUS_RETURN_IF_ERROR(c->Begin());
  Status status = [&]() -> Status {
    CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows,
                            c->Query("SELECT seq FROM job_offsets WHERE stream = ?", {stream}));
    if (!rows.empty()) {
      CHORUS_ASSIGN_OR_RETURN(*offset, rows[0][0].ToUint64());
    }
    return reads(*c);
  }();
  if (!status.ok()) {
    (void)c->Rollback();
    return status;
  }
  return c->Commit();
}

// Up to kRowsPerStatement keys are read with the offset in ONE statement (kOffsetSubquery LEFT
// JOIN the rows asked for): what WithOffset's transaction gives, in one round trip instead of five.
Status SqlLikeStore::GetCountsWithOffset(std::string_view ns, std::span<const std::string> entities,
                                         std::string_view stream, std::vector<Counts>* out,
                                         uint64_t* offset) {
  out->assign(entities.size(), Counts{});
  if (entities.empty() || entities.size() > kRowsPerStatement) {
    return WithOffset(stream, offset, [&](Connection& c) { return ReadCounts(c, ns, entities, out); });
  }
  *offset = 0;
  const auto positions = Positions(entities);
  std::vector<Value> values = {Bytes(stream), Bytes(ns)};
  std::string sql = std::string("SELECT o.seq, c.entity, c.likes, c.dislikes FROM ") + kOffsetSubquery +
                    " LEFT JOIN counts c ON c.business = ? AND c.entity";
  AppendInList(entities, &sql, &values);
  CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, QueryWithOffset(*pool_, sql, values, offset));
  for (const Row& row : rows) CHORUS_RETURN_IF_ERROR(TakeCountsRow(row, 1, positions, out));
  return Status::Ok();
}

Status SqlLikeStore::GetRecordsWithOffset(std::string_view ns, std::string_view user,
                                          std::span<const std::string> entities, std::string_view stream,
                                          std::vector<std::optional<Record>>* out, uint64_t* offset) {
  out->assign(entities.size(), std::nullopt);
  if (entities.empty() || entities.size() > kRowsPerStatement) {
    return WithOffset(stream, offset, [&](Connection& c) { return ReadRecords(c, ns, user, entities, out); });
  }
  *offset = 0;
  const auto positions = Positions(entities);
  std::vector<Value> values = {Bytes(stream), Bytes(ns), Bytes(user)};
  std::string sql = std::string("SELECT o.seq, l.entity, l.state, l.time_ms, l.owner FROM ") + kOffsetSubquery +
                    " LEFT JOIN likes l ON l.business = ? AND l.user = ? AND l.entity";
  AppendInList(entities, &sql, &values);
  CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, QueryWithOffset(*pool_, sql, values, offset));
  for (const Row& row : rows) CHORUS_RETURN_IF_ERROR(TakeRecordRow(row, 1, positions, out));
  return Status::Ok();
}

Result<int64_t> SqlLikeStore::GetReceived(std::string_view ns, std::string_view owner) {
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  CHORUS_ASSIGN_OR_RETURN(
      std::vector<Row> rows,
      c->Query("SELECT total FROM received WHERE business = ? AND owner = ?", {Bytes(ns), Bytes(owner)}));
  if (rows.empty()) return int64_t{0};
  return rows[0][0].ToInt64();
}

namespace {

// Walks index user_likes (business, user, state, time_ms, entity) or likers (business, entity,
// state, time_ms, user) backwards from the cursor.
Result<ListPage> ReadList(Connection& c, std::string_view ns, std::string_view id, bool likers,
                          std::string_view cursor, size_t limit) {
  const char* const fixed = likers ? "entity" : "user";
  const char* const item = likers ? "user" : "entity";
  std::vector<Value> values = {Bytes(ns), Bytes(id)};
  std::string sql = std::string("SELECT ") + item + ", time_ms FROM likes WHERE business = ? AND " + fixed +
                    " = ? AND state = 1";
  if (!cursor.empty()) {
    CHORUS_ASSIGN_OR_RETURN(auto after, DecodeCursor(cursor));
    sql += std::string(" AND (time_ms < ? OR (time_ms = ? AND ") + item + " < ?))";
    values.push_back(after.first);
    values.push_back(after.first);
    values.push_back(Bytes(after.second));
  }
  ListPage page;
  if (limit == 0) return page;
  sql += std::string(" ORDER BY time_ms DESC, ") + item + " DESC LIMIT ?";
  values.push_back(static_cast<uint64_t>(limit) + 1);  // one more says whether a next page exists
  CHORUS_ASSIGN_OR_RETURN(std::vector<Row> rows, c.Query(sql, values));
  for (const Row& row : rows) {
    if (page.items.size() == limit) {
      page.next_cursor = EncodeCursor(page.items.back().time_ms, page.items.back().id);
      break;
    }
    CHORUS_ASSIGN_OR_RETURN(int64_t time_ms, row[1].ToInt64());
    page.items.push_back({row[0].bytes(), time_ms});
  }
  return page;
}

}  // namespace

std::string SqlLikeStore::ListCursor(int64_t time_ms, std::string_view id) {
  return EncodeCursor(time_ms, id);
}

Result<ListPage> SqlLikeStore::List(std::string_view ns, std::string_view id, bool likers,
                                    std::string_view cursor, size_t limit) {
  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  return ReadList(*c, ns, id, likers, cursor, limit);
}

Status SqlLikeStore::UserLikesWithOffset(std::string_view ns, std::string_view user, size_t limit,
                                         std::string_view stream, ListPage* page, uint64_t* offset) {
  return WithOffset(stream, offset, [&](Connection& c) -> Status {
    CHORUS_ASSIGN_OR_RETURN(*page, ReadList(c, ns, user, /*likers=*/false, "", limit));
    return Status::Ok();
  });
}

Result<ListPage> SqlLikeStore::UserLikes(std::string_view ns, std::string_view user, std::string_view cursor,
                                         size_t limit) {
  return List(ns, user, /*likers=*/false, cursor, limit);
}

Result<ListPage> SqlLikeStore::Likers(std::string_view ns, std::string_view entity, std::string_view cursor,
                                      size_t limit) {
  return List(ns, entity, /*likers=*/true, cursor, limit);
}

Status SqlLikeStore::TrimUserLists(std::string_view, std::span<const std::string>, size_t) { return Status::Ok(); }

Result<VerifyReport> SqlLikeStore::Verify(bool repair) {
  VerifyReport report;
  auto note = [&report](std::string text) {
    if (report.examples.size() < kMaxExamples) report.examples.push_back(std::move(text));
  };
  struct Difference {
    std::string ns, id;
    Counts want, stored;  // received totals use .likes
  };
  std::vector<Difference> count_diffs, received_diffs;

  CHORUS_ASSIGN_OR_RETURN(sql::ConnectionPool::Lease c, pool_->Acquire());
  // One snapshot for every read, so records and totals are compared at the same instant.
  CHORUS_RETURN_IF_ERROR(c->Execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"));
  CHORUS_RETURN_IF_ERROR(c->Begin());
  {
    CHORUS_ASSIGN_OR_RETURN(auto rows, c->Query("SELECT COUNT(*) FROM likes WHERE state <> 0"));
    CHORUS_ASSIGN_OR_RETURN(int64_t n, rows[0][0].ToInt64());
    report.records = static_cast<uint64_t>(n);
  }
  {
    CHORUS_ASSIGN_OR_RETURN(auto rows,
                            c->Query("SELECT COUNT(*) FROM (SELECT business, entity FROM likes UNION "
                                     "SELECT business, entity FROM counts) AS t"));
    CHORUS_ASSIGN_OR_RETURN(int64_t n, rows[0][0].ToInt64());
    report.entities = static_cast<uint64_t>(n);
  }
  {
    // Expected vs stored, both ways: entities with records, then stored counts without records.
    CHORUS_ASSIGN_OR_RETURN(
        auto rows,
        c->Query(
            "SELECT e.business, e.entity, e.likes, e.dislikes, COALESCE(c.likes, 0), COALESCE(c.dislikes, 0)"
            " FROM (SELECT business, entity, SUM(state = 1) AS likes, SUM(state = 2) AS dislikes"
            "       FROM likes GROUP BY business, entity) AS e"
            " LEFT JOIN counts AS c ON c.business = e.business AND c.entity = e.entity"
            " WHERE COALESCE(c.likes, 0) <> e.likes OR COALESCE(c.dislikes, 0) <> e.dislikes"
            " UNION ALL"
            " SELECT c.business, c.entity, 0, 0, c.likes, c.dislikes"
            " FROM counts AS c LEFT JOIN (SELECT DISTINCT business, entity FROM likes) AS e"
            "   ON e.business = c.business AND e.entity = c.entity"
            " WHERE e.entity IS NULL AND (c.likes <> 0 OR c.dislikes <> 0)"));
    for (const Row& row : rows) {
      Difference d{row[0].bytes(), row[1].bytes(), {}, {}};
      CHORUS_ASSIGN_OR_RETURN(d.want.likes, row[2].ToInt64());
      CHORUS_ASSIGN_OR_RETURN(d.want.dislikes, row[3].ToInt64());
      CHORUS_ASSIGN_OR_RETURN(d.stored.likes, row[4].ToInt64());
      CHORUS_ASSIGN_OR_RETURN(d.stored.dislikes, row[5].ToInt64());
      note("counts of " + Shown(d.ns, d.id) + " are " + std::to_string(d.stored.likes) + " likes, " +
           std::to_string(d.stored.dislikes) + " dislikes; the records say " + std::to_string(d.want.likes) +
           ", " + std::to_string(d.want.dislikes));
      count_diffs.push_back(std::move(d));
    }
  }
  {
    CHORUS_ASSIGN_OR_RETURN(
        auto rows,
        c->Query("SELECT e.business, e.owner, e.total, COALESCE(r.total, 0)"
                 " FROM (SELECT business, owner, COUNT(*) AS total FROM likes"
                 "       WHERE state = 1 AND owner <> '' GROUP BY business, owner) AS e"
                 " LEFT JOIN received AS r ON r.business = e.business AND r.owner = e.owner"
                 " WHERE COALESCE(r.total, 0) <> e.total"
                 " UNION ALL"
                 " SELECT r.business, r.owner, 0, r.total"
                 " FROM received AS r LEFT JOIN (SELECT DISTINCT business, owner FROM likes"
                 "   WHERE state = 1 AND owner <> '') AS e ON e.business = r.business AND e.owner = r.owner"
                 " WHERE e.owner IS NULL AND r.total <> 0"));
    for (const Row& row : rows) {
      Difference d{row[0].bytes(), row[1].bytes(), {}, {}};
      CHORUS_ASSIGN_OR_RETURN(d.want.likes, row[2].ToInt64());
      CHORUS_ASSIGN_OR_RETURN(d.stored.likes, row[3].ToInt64());
      note("received total of " + Shown(d.ns, d.id) + " is " + std::to_string(d.stored.likes) +
           "; the records say " + std::to_string(d.want.likes));
      received_diffs.push_back(std::move(d));
    }
  }
  {
    CHORUS_ASSIGN_OR_RETURN(auto rows, c->Query("SELECT COUNT(*) FROM like_log"));
    CHORUS_ASSIGN_OR_RETURN(int64_t n, rows[0][0].ToInt64());
    report.pending_log = static_cast<uint64_t>(n);
  }
  CHORUS_RETURN_IF_ERROR(c->Rollback());  // read-only
  report.count_differences = count_diffs.size();
  report.received_differences = received_diffs.size();
  if (!repair || report.differences() == 0) return report;

  // Each difference is added as a delta: applies that committed since the snapshot moved records
  // and totals together, so the difference measured then is still the one to remove.
  std::vector<TotalDelta> count_fixes, received_fixes;
  for (const Difference& d : count_diffs) {
    count_fixes.push_back(
        {d.ns, d.id, Counts{d.want.likes - d.stored.likes, d.want.dislikes - d.stored.dislikes}});
  }
  for (const Difference& d : received_diffs) {
    received_fixes.push_back({d.ns, d.id, Counts{d.want.likes - d.stored.likes, 0}});
  }
  std::vector<const TotalDelta*> count_ptrs, received_ptrs;
  for (const TotalDelta& t : count_fixes) count_ptrs.push_back(&t);
  for (const TotalDelta& t : received_fixes) received_ptrs.push_back(&t);
  CHORUS_RETURN_IF_ERROR(c->Begin());
  CHORUS_RETURN_IF_ERROR(AddTotals(*c, count_ptrs, /*counts=*/true));
  CHORUS_RETURN_IF_ERROR(AddTotals(*c, received_ptrs, /*counts=*/false));
  CHORUS_RETURN_IF_ERROR(c->Commit().WithContext("likes repair"));
  report.repaired = true;
  return report;
}

}  // namespace chorus::likes
