// The embedded LikeStore on RocksDB (layout in docs/likes.md "RocksDB layout").
//
// Column families: log (seq -> entry), records, user_likes, likers, counts and received (both
// with an add merge operator, so an apply batch never reads a count). Log appends are one
// WriteBatch with sync=true per call; applies are sync=false (the log entries they consume are
// already durable, and the WAL orders the apply after them).
//
// RocksDB headers stay in rocksdb_store.cc.
#pragma once

#include <filesystem>
#include <memory>

#include "likes/like_store.h"

namespace chorus::likes {

struct RocksDbOptions {
  std::filesystem::path path;
  size_t block_cache_bytes = 64 << 20;
  bool read_only = false;  // for `chorus likes verify` beside a running server
};

class RocksDbLikeStore final : public LikeStore {
 public:
  // Opens (creating if needed) the database. FailedPrecondition if it is locked by another
  // process (unless read_only); Internal on other engine errors.
  static Result<std::unique_ptr<RocksDbLikeStore>> Open(const RocksDbOptions& options);
  ~RocksDbLikeStore() override;

  std::string_view name() const override { return "rocksdb"; }
  Status AppendLog(std::span<LogEntry> entries) override;
  Status Apply(std::span<const LogEntry> entries) override;
  Result<std::vector<LogEntry>> PendingLog() override;
  Status GetRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                    std::vector<std::optional<Record>>* out) override;
  Status GetCounts(std::string_view ns, std::span<const std::string> entities, std::vector<Counts>* out) override;
  Result<int64_t> GetReceived(std::string_view ns, std::string_view owner) override;
  Result<ListPage> UserLikes(std::string_view ns, std::string_view user, std::string_view cursor,
                             size_t limit) override;
  Result<ListPage> Likers(std::string_view ns, std::string_view entity, std::string_view cursor,
                          size_t limit) override;
  Status TrimUserLists(std::string_view ns, std::span<const std::string> users, size_t keep) override;
  Result<VerifyReport> Verify(bool repair) override;

  // Flushes memtables (tests and the benchmark's bytes-per-record figure).
  Status Flush();

  struct Impl;

 private:
  explicit RocksDbLikeStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace chorus::likes
