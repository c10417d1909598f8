// LikeStore: where likes live durably. The embedded engine is RocksDB (rocksdb_store.h); the
// scale-out engines (MariaDB/TiDB) implement the same interface later.
//
// Two write paths, matching the service's two stages (docs/likes.md "Write path"):
//   - AppendLog: the durable log. Entries are synced before it returns; it is what makes an
//     action acknowledged. Called by the committer thread with everything queued since its last
//     write (group commit).
//   - Apply: the job stage. Turns log entries into records, like lists, likers, counts and
//     received totals, and removes them from the log, in ONE atomic batch. Entries must be
//     applied in log order per (namespace, entity); the service guarantees it because an entity
//     has one owner shard.
// A crash between the two leaves entries in the log; PendingLog() returns them at startup and
// they are applied then. An entry is never applied twice: its removal is in the batch that
// applies it.
//
// Threads: every method is safe from any thread concurrently (RocksDB is).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/status.h"
#include "likes/model.h"

namespace chorus::likes {

struct ListItem {
  std::string id;  // entity (a user's likes) or user (an entity's likers)
  int64_t time_ms = 0;
};

struct ListPage {
  std::vector<ListItem> items;
  std::string next_cursor;  // empty at the end
};

struct VerifyReport {
  uint64_t records = 0;           // records scanned
  uint64_t entities = 0;          // entities with a record or a count
  uint64_t count_differences = 0; // entities whose stored counts differ from the records
  uint64_t received_differences = 0;
  uint64_t index_differences = 0; // likers / user-list entries missing or orphaned
  uint64_t pending_log = 0;       // log entries not yet applied (consistent either way)
  bool repaired = false;
  std::vector<std::string> examples;  // up to 20 human-readable differences
  uint64_t differences() const { return count_differences + received_differences + index_differences; }
};

class LikeStore {
 public:
  virtual ~LikeStore() = default;
  virtual std::string_view name() const = 0;

  // Assigns each entry the next sequence number (increasing) and writes all of them durably.
  virtual Status AppendLog(std::span<LogEntry> entries) = 0;
  // Applies entries (in order) and removes them from the log atomically.
  virtual Status Apply(std::span<const LogEntry> entries) = 0;
  // Every log entry not yet applied, in sequence order.
  virtual Result<std::vector<LogEntry>> PendingLog() = 0;

  // out[i] is the record of (user, entities[i]), or nullopt for none.
  virtual Status GetRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                            std::vector<std::optional<Record>>* out) = 0;
  virtual Status GetCounts(std::string_view ns, std::span<const std::string> entities, std::vector<Counts>* out) = 0;
  virtual Result<int64_t> GetReceived(std::string_view ns, std::string_view owner) = 0;

  // GetRecords for deciding a transition (the write path): the authoritative copy, where a
  // store also has a cache that may lag.
  virtual Status GetRecordsForUpdate(std::string_view ns, std::string_view user,
                                     std::span<const std::string> entities,
                                     std::vector<std::optional<Record>>* out) {
    return GetRecords(ns, user, entities, out);
  }

  // Newest first. `cursor` is empty or a next_cursor from the same list; InvalidArgument if bad.
  virtual Result<ListPage> UserLikes(std::string_view ns, std::string_view user, std::string_view cursor,
                                     size_t limit) = 0;
  virtual Result<ListPage> Likers(std::string_view ns, std::string_view entity, std::string_view cursor,
                                  size_t limit) = 0;
  // Keeps the newest `keep` entries of each of these users' like lists (older likes stay in the
  // records). One call per round of users: the store can walk them in key order.
  virtual Status TrimUserLists(std::string_view ns, std::span<const std::string> users, size_t keep) = 0;

  // Recomputes counts, received totals and indexes from the records; with `repair`, rewrites
  // every difference.
  virtual Result<VerifyReport> Verify(bool repair) = 0;

  // ---- Stores whose apply stage runs in another process (the cluster store, cluster_store.h).
  // The service then never calls Apply: an entry is applied once its seq is at or below
  // AppliedThrough(), and the service only drops its overlay. AppendLog may apply an entry
  // itself (a synchronous fallback) and leave its seq 0: it counts as applied at once.
  virtual bool applies_elsewhere() const { return false; }
  virtual uint64_t AppliedThrough() { return 0; }
  // GetCounts, plus per entity the highest log seq the value includes (entries above it are not
  // in it). Only meaningful when applies_elsewhere(); the default reports 0 for every entity.
  virtual Status GetCountsAsOf(std::string_view ns, std::span<const std::string> entities, std::vector<Counts>* out,
                               std::vector<uint64_t>* as_of) {
    as_of->assign(entities.size(), 0);
    return GetCounts(ns, entities, out);
  }
};

}  // namespace chorus::likes
