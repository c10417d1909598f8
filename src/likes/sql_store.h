// The LikeStore on a MySQL-protocol database: MariaDB, and TiDB for scale-out (the SQL here is
// what both accept). Connections come from a chorus_sql ConnectionPool, so every method is safe
// from any thread concurrently; each takes one connection for its duration.
//
// Tables (created by Migrate(), versioned in schema_migrations):
//   likes(business, user, entity, owner, state, time_ms, source)  PRIMARY KEY (business, user, entity)
//       index user_likes (business, user, state, time_ms, entity)   a user's likes, newest first
//       index likers     (business, entity, state, time_ms, user)   an entity's likers, newest first
//     `business` holds the business namespace (Business::ns). A row whose state went back to
//     none stays (state 0): it keeps the owner first credited, so a later like credits the same
//     owner. GetRecords reports such a row as no record.
//   counts(business, entity, likes, dislikes)      received(business, owner, total)
//   like_log(seq AUTO_INCREMENT, entry)            the durable log (EncodeLogEntry bytes)
//   job_offsets(stream, seq)                       how far an external job applied a stream
//
// Apply is AUTHORITATIVE. Several service processes may write, so an entry's `from` is only what
// its writer believed. One transaction per batch: lock the current rows of every key in the
// batch (SELECT ... FOR UPDATE), walk the entries in order from the stored state to each
// entry's `to` (DeltaOf; a no-op when equal), then write the final row of every key that
// changed, the count deltas per entity and the received deltas per owner (the owner credited is
// the row's stored owner; a new row takes the entry's), clamped at zero, and delete the applied
// like_log rows. Applying the same entries again therefore changes nothing, and two writers'
// stale entries converge (two "none -> liked" for one key count one like). Rows written by Apply
// (outside a stream: the synchronous fallback) are marked source = 'direct'; an ApplyBatch entry
// older (time_ms) than such a row is skipped (it was queued before that write). Between stream
// entries only the stream's order counts. A deadlock or lock
// wait between concurrent applies is retried (the whole transaction) a few times, then
// reported as kUnavailable. A lost connection is kUnavailable (nothing committed, or for a lost
// COMMIT an unknown outcome; running the batch again is safe for the reason above).
//
// Sequence numbers: AppendLog inserts each batch with multi-row INSERTs and numbers the entries
// from the first generated value, so the database must hand a multi-row INSERT consecutive
// AUTO_INCREMENT values (MariaDB/MySQL innodb_autoinc_lock_mode 0 or 1, the default 1; TiDB
// with AUTO_ID_CACHE=1, which the table declares in a TiDB-only comment, also giving sequence
// numbers that increase across TiDB servers).
//
// Lists: UserLikes/Likers read the index (newest first, keyset pagination on (time_ms, id));
// the whole list is kept, so TrimUserLists is a no-op here — a user_list_max trim applies to
// caches in front of this store.
//
// Verify reads in one REPEATABLE READ snapshot and recomputes counts (likes/dislikes per entity)
// and received totals (liked rows per owner) from `likes`; repair adds each difference as a
// delta in one transaction, so it is correct beside running applies (they keep records and
// totals moving together). index_differences is always 0: the database maintains its indexes.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "likes/like_store.h"
#include "sql/mysql.h"

namespace chorus::likes {

// What one ApplyBatch committed, read back inside its transaction.
struct EntityCounts {
  std::string ns;
  std::string entity;
  Counts counts;  // the new absolute totals
};
struct RecordChange {
  std::string ns;
  std::string user;
  std::string entity;
  LikeState state = LikeState::kNone;
  int64_t time_ms = 0;
  std::string owner;
};
struct OwnerTotal {
  std::string ns;
  std::string owner;
  int64_t total = 0;  // the new absolute total
};
struct ApplyOutcome {
  std::vector<EntityCounts> counts;   // every entity the batch names, in first-seen order
  std::vector<RecordChange> records;  // every key with at least one real transition: its final row
  std::vector<OwnerTotal> received;   // every owner credited or debited by a real transition
};

class SqlLikeStore final : public LikeStore {
 public:
  // The schema version this code reads and writes.
  static constexpr int kSchemaVersion = 1;

  // Creates the database (if missing) and every table, and records each migration step in
  // schema_migrations. Idempotent, and safe to run from several processes at once (every step is
  // itself idempotent). kInvalidArgument for a database name outside [A-Za-z0-9_]{1,64}.
  static Status Migrate(const sql::MySqlOptions& options);

  // FailedPrecondition (telling to run `chorus likes migrate`) when the database or schema is
  // missing or older than kSchemaVersion; kUnavailable when the server cannot be reached.
  static Result<std::unique_ptr<SqlLikeStore>> Open(const sql::MySqlOptions& options);
  ~SqlLikeStore() override;

  std::string_view name() const override { return "mariadb"; }
  Status AppendLog(std::span<LogEntry> entries) override;
  Status Apply(std::span<const LogEntry> entries) override;
  Result<std::vector<LogEntry>> PendingLog() override;
  Status GetRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                    std::vector<std::optional<Record>>* out) override;
  Status GetCounts(std::string_view ns, std::span<const std::string> entities,
                   std::vector<Counts>* out) override;
  Result<int64_t> GetReceived(std::string_view ns, std::string_view owner) override;
  Result<ListPage> UserLikes(std::string_view ns, std::string_view user, std::string_view cursor,
                             size_t limit) override;
  Result<ListPage> Likers(std::string_view ns, std::string_view entity, std::string_view cursor,
                          size_t limit) override;
  // A no-op (see above).
  Status TrimUserLists(std::string_view ns, std::span<const std::string> users, size_t keep) override;
  // `records` counts rows with a state (liked or disliked); `entities` those with a row in
  // likes or counts; `pending_log` the rows of like_log.
  Result<VerifyReport> Verify(bool repair) override;

  // Apply, plus job_offsets[stream] = through_seq in the same transaction; returns what
  // committed. For an external job that consumes a stream of entries (not the like_log). With
  // `after`, only if job_offsets[stream] is exactly `after` (read FOR UPDATE in the
  // transaction), else kFailedPrecondition and nothing is written: two jobs can never apply
  // overlapping or out-of-order runs.
  Result<ApplyOutcome> ApplyBatch(std::span<const LogEntry> entries, std::string_view stream,
                                  uint64_t through_seq, std::optional<uint64_t> after = std::nullopt);
  // Where ApplyBatch last left `stream`; 0 if never.
  Result<uint64_t> AppliedThrough(std::string_view stream);
  // GetCounts and AppliedThrough(stream) read in one snapshot: `out` includes exactly the
  // stream's entries up to `*offset`.
  Status GetCountsWithOffset(std::string_view ns, std::span<const std::string> entities, std::string_view stream,
                             std::vector<Counts>* out, uint64_t* offset);
  // The first page of `limit` of a user's likes, and the stream offset, in one snapshot.
  Status UserLikesWithOffset(std::string_view ns, std::string_view user, size_t limit, std::string_view stream,
                             ListPage* page, uint64_t* offset);
  // The next_cursor of a list page that ends with (time_ms, id).
  static std::string ListCursor(int64_t time_ms, std::string_view id);
  // The same for GetRecords.
  Status GetRecordsWithOffset(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                              std::string_view stream, std::vector<std::optional<Record>>* out, uint64_t* offset);

 private:
  explicit SqlLikeStore(std::unique_ptr<sql::ConnectionPool> pool);
  Status ApplyWithRetries(std::span<const LogEntry> entries, std::string_view stream, uint64_t through_seq,
                          std::optional<uint64_t> after, ApplyOutcome* outcome);
  Status WithOffset(std::string_view stream, uint64_t* offset, const std::function<Status(sql::Connection&)>& reads);
  Result<ListPage> List(std::string_view ns, std::string_view id, bool likers, std::string_view cursor,
                        size_t limit);

  std::unique_ptr<sql::ConnectionPool> pool_;
};

}  // namespace chorus::likes
