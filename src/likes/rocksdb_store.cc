#include "likes/rocksdb_store.h"

#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/merge_operator.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/options_util.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <unordered_map>

#include "net/token.h"

namespace chorus::likes {
namespace {

// Column family order; handles_[i] belongs to kFamilies[i].
enum Family { kDefault = 0, kLog, kRecords, kUserLikes, kLikers, kCounts, kReceived, kFamilyCount };
constexpr const char* kFamilies[kFamilyCount] = {"default", "log",    "records", "user_likes",
                                                 "likers",  "counts", "received"};

void PutBigEndian64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>(v >> (8 * i)));
}

uint64_t GetBigEndian64(std::string_view in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

// ns \0 id \0: the prefix of a record group, a user's list or an entity's likers.
std::string Prefix(std::string_view ns, std::string_view id) {
  std::string k;
  k.reserve(ns.size() + id.size() + 2 + 8 + 64);
  k.append(ns).push_back('\0');
  k.append(id).push_back('\0');
  return k;
}

// The keys prefix ‖ id of a batch read, in one buffer: one allocation for the whole read
// instead of one per key.
struct KeyBatch {
  KeyBatch(std::string_view prefix, std::span<const std::string> ids) {
    size_t total = 0;
    for (const auto& id : ids) total += prefix.size() + id.size();
    buf.reserve(total);
    for (const auto& id : ids) buf.append(prefix).append(id);
    slices.reserve(ids.size());
    size_t at = 0;
    for (const auto& id : ids) {
      slices.emplace_back(buf.data() + at, prefix.size() + id.size());
      at += prefix.size() + id.size();
    }
  }
  KeyBatch(const KeyBatch&) = delete;  // the slices point into this object's buf
  KeyBatch& operator=(const KeyBatch&) = delete;
  std::string buf;  // never appended to after the slices point into it
  std::vector<rocksdb::Slice> slices;
};

// Newest first: the time is stored inverted.
std::string ListSuffix(int64_t time_ms, std::string_view id) {
  std::string s;
  PutBigEndian64(s, ~static_cast<uint64_t>(time_ms));
  s.append(id);
  return s;
}

std::string ListKey(std::string_view ns, std::string_view owner_id, int64_t time_ms, std::string_view id) {
  return Prefix(ns, owner_id).append(ListSuffix(time_ms, id));
}

std::string SeqKey(uint64_t seq) {
  std::string k;
  PutBigEndian64(k, seq);
  return k;
}

std::string EncodeInts(std::initializer_list<int64_t> values) {
  std::string out;
  for (int64_t v : values) {
    const auto u = static_cast<uint64_t>(v);
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(u >> (8 * i)));
  }
  return out;
}

int64_t IntAt(std::string_view in, size_t index) {
  if (in.size() < (index + 1) * 8) return 0;
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i) u |= static_cast<uint64_t>(static_cast<uint8_t>(in[index * 8 + i])) << (8 * i);
  return static_cast<int64_t>(u);
}

// Element-wise addition of little-endian int64 vectors: counts (likes, dislikes) and received
// totals merge without a read.
class AddInt64s final : public rocksdb::AssociativeMergeOperator {
 public:
  bool Merge(const rocksdb::Slice&, const rocksdb::Slice* existing, const rocksdb::Slice& value,
             std::string* new_value, rocksdb::Logger*) const override {
    const std::string_view a = existing ? std::string_view(existing->data(), existing->size()) : std::string_view();
    const std::string_view b(value.data(), value.size());
    const size_t n = std::max(a.size(), b.size()) / 8;
    new_value->clear();
    for (size_t i = 0; i < n; ++i) {
      const auto sum = static_cast<uint64_t>(IntAt(a, i)) + static_cast<uint64_t>(IntAt(b, i));
      for (int j = 0; j < 8; ++j) new_value->push_back(static_cast<char>(sum >> (8 * j)));
    }
    return true;
  }
  const char* Name() const override { return "chorus.AddInt64s"; }
};

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status::Ok();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return FailedPrecondition(msg + " (is another chorus using this data directory?)");
  }
  return Internal(msg);
}

std::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

Result<std::string> DecodeCursor(std::string_view cursor) {
  auto raw = net::token_internal::Base64UrlDecode(cursor);
  if (!raw || raw->size() < 9 || raw->size() > 8 + 64) return InvalidArgument("cursor is not valid");
  return std::move(*raw);
}

}  // namespace

struct RocksDbLikeStore::Impl {
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  std::mutex log_mu;            // orders seq assignment with the write
  uint64_t next_seq = 1;        // guarded by log_mu
  bool read_only = false;

  rocksdb::ColumnFamilyHandle* cf(Family f) const { return handles[f]; }

  ~Impl() {
    if (db) {
      for (auto* h : handles) (void)db->DestroyColumnFamilyHandle(h);
      (void)db->Close();
    }
  }

  Result<ListPage> List(std::string_view ns, std::string_view id, Family family, std::string_view cursor,
                        size_t limit) {
    const std::string prefix = Prefix(ns, id);
    std::string start = prefix;
    std::string after;
    if (!cursor.empty()) {
      CHORUS_ASSIGN_OR_RETURN(after, DecodeCursor(cursor));
      start.append(after);
    }
    ListPage page;
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf(family)));
    for (it->Seek(start); it->Valid(); it->Next()) {
      std::string_view key = View(it->key());
      if (key.substr(0, prefix.size()) != prefix) break;
      std::string_view suffix = key.substr(prefix.size());
      if (!after.empty() && suffix == after) continue;
      if (suffix.size() < 9) continue;
      if (page.items.size() == limit) {
        // One more exists: the cursor points at the last item returned.
        page.next_cursor = net::token_internal::Base64UrlEncode(
            ListSuffix(page.items.back().time_ms, page.items.back().id));
        break;
      }
      page.items.push_back({std::string(suffix.substr(8)), static_cast<int64_t>(~GetBigEndian64(suffix))});
    }
    CHORUS_RETURN_IF_ERROR(FromRocks(it->status(), "list"));
    return page;
  }
};

RocksDbLikeStore::RocksDbLikeStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RocksDbLikeStore::~RocksDbLikeStore() = default;

Result<std::unique_ptr<RocksDbLikeStore>> RocksDbLikeStore::Open(const RocksDbOptions& options) {
  rocksdb::Options db_options;
  db_options.create_if_missing = !options.read_only;
  db_options.create_missing_column_families = !options.read_only;
  db_options.max_background_jobs = 2;
  db_options.bytes_per_sync = 1 << 20;
  db_options.keep_log_file_num = 4;
  auto supported = rocksdb::GetSupportedCompressions();
  auto has = [&](rocksdb::CompressionType t) { return std::find(supported.begin(), supported.end(), t) != supported.end(); };

  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  auto table_factory = std::shared_ptr<rocksdb::TableFactory>(rocksdb::NewBlockBasedTableFactory(table));
  auto add = std::make_shared<AddInt64s>();

  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (int f = 0; f < kFamilyCount; ++f) {
    rocksdb::ColumnFamilyOptions cf;
    cf.table_factory = table_factory;
    cf.compression = has(rocksdb::kLZ4Compression) ? rocksdb::kLZ4Compression : rocksdb::kNoCompression;
    if (has(rocksdb::kZSTD)) cf.bottommost_compression = rocksdb::kZSTD;
    if (f == kCounts || f == kReceived) cf.merge_operator = add;
    if (f == kLog) cf.write_buffer_size = 16 << 20;
    if (f == kRecords || f == kCounts || f == kReceived) {
      // Most point reads miss (a user has not liked most entities): a whole-key bloom filter on
      // the memtable answers those without walking the skip list.
      cf.memtable_prefix_bloom_size_ratio = 0.05;
      cf.memtable_whole_key_filtering = true;
    }
    families.emplace_back(kFamilies[f], cf);
  }

  std::error_code ec;
  if (!options.read_only) std::filesystem::create_directories(options.path, ec);
  auto impl = std::make_unique<Impl>();
  impl->read_only = options.read_only;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s =
      options.read_only
          ? rocksdb::DB::OpenForReadOnly(db_options, options.path.string(), families, &impl->handles, &raw)
          : rocksdb::DB::Open(db_options, options.path.string(), families, &impl->handles, &raw);
  CHORUS_RETURN_IF_ERROR(FromRocks(s, "open " + options.path.string()));
  impl->db.reset(raw);

  // The next sequence number follows the newest unapplied entry (applied ones are deleted).
  std::unique_ptr<rocksdb::Iterator> it(impl->db->NewIterator(rocksdb::ReadOptions(), impl->cf(kLog)));
  it->SeekToLast();
  if (it->Valid() && it->key().size() == 8) impl->next_seq = GetBigEndian64(View(it->key())) + 1;
  CHORUS_RETURN_IF_ERROR(FromRocks(it->status(), "read log"));
  it.reset();
  return std::unique_ptr<RocksDbLikeStore>(new RocksDbLikeStore(std::move(impl)));
}

Status RocksDbLikeStore::AppendLog(std::span<LogEntry> entries) {
  if (entries.empty()) return Status::Ok();
  if (impl_->read_only) return FailedPrecondition("store is read-only");
  std::lock_guard lock(impl_->log_mu);
  rocksdb::WriteBatch batch;
  uint64_t seq = impl_->next_seq;
  for (LogEntry& e : entries) {
    e.seq = seq++;
    batch.Put(impl_->cf(kLog), SeqKey(e.seq), EncodeLogEntry(e));
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  CHORUS_RETURN_IF_ERROR(FromRocks(impl_->db->Write(wo, &batch), "append log"));
  impl_->next_seq = seq;
  return Status::Ok();
}

Status RocksDbLikeStore::Apply(std::span<const LogEntry> entries) {
  if (entries.empty()) return Status::Ok();
  if (impl_->read_only) return FailedPrecondition("store is read-only");
  // The batch goes into each family's memtable in key order. A skip list insert starts from the
  // previous insert's position, so sorted keys cost a short walk instead of a search from the
  // top of a memtable holding hundreds of thousands of keys (random order made those searches
  // ~10% of a write load's CPU). The sort is stable: operations on one key keep their order
  // (a like and an unlike in the same millisecond touch the same list key).
  struct Op {
    std::string key;
    std::string value;
    bool put;
  };
  std::vector<Op> records, user_likes, likers;
  records.reserve(entries.size());
  std::map<std::string, Counts> counts;
  std::map<std::string, int64_t> received;
  for (const LogEntry& e : entries) {
    if (e.to == LikeState::kNone) {
      records.push_back({RecordKey(e.ns, e.user, e.entity), {}, false});
    } else {
      records.push_back({RecordKey(e.ns, e.user, e.entity), EncodeRecord({e.to, e.time_ms, e.owner}), true});
    }
    if (e.from == LikeState::kLiked) {
      user_likes.push_back({ListKey(e.ns, e.user, e.from_time_ms, e.entity), {}, false});
      likers.push_back({ListKey(e.ns, e.entity, e.from_time_ms, e.user), {}, false});
    }
    if (e.to == LikeState::kLiked) {
      user_likes.push_back({ListKey(e.ns, e.user, e.time_ms, e.entity), {}, true});
      likers.push_back({ListKey(e.ns, e.entity, e.time_ms, e.user), {}, true});
    }
    const Counts d = DeltaOf(e.from, e.to);
    counts[TotalKey(e.ns, e.entity)] += d;
    if (!e.owner.empty() && d.likes != 0) received[TotalKey(e.ns, e.owner)] += d.likes;
  }
  rocksdb::WriteBatch batch;
  auto add_sorted = [&](Family f, std::vector<Op>& ops) {
    std::stable_sort(ops.begin(), ops.end(), [](const Op& a, const Op& b) { return a.key < b.key; });
    for (const Op& op : ops) {
      if (op.put) {
        batch.Put(impl_->cf(f), op.key, op.value);
      } else {
        batch.Delete(impl_->cf(f), op.key);
      }
    }
  };
  add_sorted(kRecords, records);
  add_sorted(kUserLikes, user_likes);
  add_sorted(kLikers, likers);
  for (const auto& [key, d] : counts) {
    if (d.likes != 0 || d.dislikes != 0) batch.Merge(impl_->cf(kCounts), key, EncodeInts({d.likes, d.dislikes}));
  }
  for (const auto& [key, d] : received) {
    if (d != 0) batch.Merge(impl_->cf(kReceived), key, EncodeInts({d}));
  }
  for (const LogEntry& e : entries) batch.Delete(impl_->cf(kLog), SeqKey(e.seq));
  return FromRocks(impl_->db->Write(rocksdb::WriteOptions(), &batch), "apply");
}

Result<std::vector<LogEntry>> RocksDbLikeStore::PendingLog() {
  std::vector<LogEntry> out;
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cf(kLog)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    if (it->key().size() != 8) return Internal("log: malformed key");
    auto e = DecodeLogEntry(View(it->value()));
    if (!e.ok()) return Internal("log entry " + std::to_string(GetBigEndian64(View(it->key()))) + ": " +
                                 e.status().message());
    e->seq = GetBigEndian64(View(it->key()));
    out.push_back(std::move(*e));
  }
  CHORUS_RETURN_IF_ERROR(FromRocks(it->status(), "read log"));
  return out;
}

Status RocksDbLikeStore::GetRecords(std::string_view ns, std::string_view user, std::span<const std::string> entities,
                                    std::vector<std::optional<Record>>* out) {
  const size_t n = entities.size();
  out->assign(n, std::nullopt);
  if (n == 0) return Status::Ok();
  KeyBatch keys(Prefix(ns, user), entities);  // RecordKey(ns, user, entity) each
  std::vector<rocksdb::PinnableSlice> values(n);
  std::vector<rocksdb::Status> statuses(n);
  impl_->db->MultiGet(rocksdb::ReadOptions(), impl_->cf(kRecords), n, keys.slices.data(), values.data(),
                      statuses.data());
  for (size_t i = 0; i < n; ++i) {
    if (statuses[i].IsNotFound()) continue;
    CHORUS_RETURN_IF_ERROR(FromRocks(statuses[i], "read records"));
    auto rec = DecodeRecord(View(values[i]));
    if (!rec.ok()) return Internal("record of " + entities[i] + ": " + rec.status().message());
    (*out)[i] = std::move(*rec);
  }
  return Status::Ok();
}

Status RocksDbLikeStore::GetCounts(std::string_view ns, std::span<const std::string> entities,
                                   std::vector<Counts>* out) {
  const size_t n = entities.size();
  out->assign(n, Counts{});
  if (n == 0) return Status::Ok();
  KeyBatch keys(TotalKey(ns, ""), entities);  // TotalKey(ns, entity) each
  std::vector<rocksdb::PinnableSlice> values(n);
  std::vector<rocksdb::Status> statuses(n);
  impl_->db->MultiGet(rocksdb::ReadOptions(), impl_->cf(kCounts), n, keys.slices.data(), values.data(),
                      statuses.data());
  for (size_t i = 0; i < n; ++i) {
    if (statuses[i].IsNotFound()) continue;
    CHORUS_RETURN_IF_ERROR(FromRocks(statuses[i], "read counts"));
    (*out)[i] = {IntAt(View(values[i]), 0), IntAt(View(values[i]), 1)};
  }
  return Status::Ok();
}

Result<int64_t> RocksDbLikeStore::GetReceived(std::string_view ns, std::string_view owner) {
  rocksdb::PinnableSlice value;
  auto s = impl_->db->Get(rocksdb::ReadOptions(), impl_->cf(kReceived), TotalKey(ns, owner), &value);
  if (s.IsNotFound()) return int64_t{0};
  CHORUS_RETURN_IF_ERROR(FromRocks(s, "read received"));
  return IntAt(View(value), 0);
}

Result<ListPage> RocksDbLikeStore::UserLikes(std::string_view ns, std::string_view user, std::string_view cursor,
                                             size_t limit) {
  return impl_->List(ns, user, kUserLikes, cursor, limit);
}

Result<ListPage> RocksDbLikeStore::Likers(std::string_view ns, std::string_view entity, std::string_view cursor,
                                          size_t limit) {
  return impl_->List(ns, entity, kLikers, cursor, limit);
}

Status RocksDbLikeStore::TrimUserLists(std::string_view ns, std::span<const std::string> users, size_t keep) {
  // One iterator for the whole round, its seeks in key order: building an iterator (a merge of
  // every memtable and table file) cost as much as the seek itself, once per user.
  std::vector<std::string> prefixes;
  prefixes.reserve(users.size());
  for (const std::string& user : users) prefixes.push_back(Prefix(ns, user));
  std::sort(prefixes.begin(), prefixes.end());
  rocksdb::WriteBatch batch;
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cf(kUserLikes)));
  for (const std::string& prefix : prefixes) {
    size_t seen = 0;
    for (it->Seek(prefix); it->Valid() && View(it->key()).substr(0, prefix.size()) == prefix; it->Next()) {
      if (++seen > keep) batch.Delete(impl_->cf(kUserLikes), it->key());
    }
    CHORUS_RETURN_IF_ERROR(FromRocks(it->status(), "trim"));
  }
  it.reset();
  if (batch.Count() == 0) return Status::Ok();
  return FromRocks(impl_->db->Write(rocksdb::WriteOptions(), &batch), "trim");
}

Status RocksDbLikeStore::Flush() {
  rocksdb::FlushOptions fo;
  return FromRocks(impl_->db->Flush(fo, impl_->handles), "flush");
}

Result<VerifyReport> RocksDbLikeStore::Verify(bool repair) {
  if (repair && impl_->read_only) return FailedPrecondition("cannot repair a read-only store");
  VerifyReport report;
  auto note = [&report](std::string text) {
    if (report.examples.size() < 20) report.examples.push_back(std::move(text));
  };
  rocksdb::DB& db = *impl_->db;
  const rocksdb::Snapshot* snapshot = db.GetSnapshot();
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  rocksdb::WriteBatch fix;

  // Expected totals from the records; every liked record must have its likers entry.
  std::unordered_map<std::string, Counts> counts;
  std::unordered_map<std::string, int64_t> received;
  Status status;
  {
    std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(ro, impl_->cf(kRecords)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string_view key = View(it->key());
      const size_t a = key.find('\0');
      const size_t b = a == std::string_view::npos ? a : key.find('\0', a + 1);
      auto rec = DecodeRecord(View(it->value()));
      if (b == std::string_view::npos || !rec.ok()) {
        status = Internal("malformed record key or value");
        break;
      }
      ++report.records;
      const std::string_view ns = key.substr(0, a), user = key.substr(a + 1, b - a - 1), entity = key.substr(b + 1);
      Counts& c = counts[TotalKey(ns, entity)];
      if (rec->state == LikeState::kLiked) {
        ++c.likes;
        if (!rec->owner.empty()) ++received[TotalKey(ns, rec->owner)];
        const std::string lk = ListKey(ns, entity, rec->time_ms, user);
        std::string ignored;
        if (db.Get(ro, impl_->cf(kLikers), lk, &ignored).IsNotFound()) {
          ++report.index_differences;
          note("likers of " + std::string(ns) + "/" + std::string(entity) + " miss " + std::string(user));
          fix.Put(impl_->cf(kLikers), lk, rocksdb::Slice());
        }
      } else if (rec->state == LikeState::kDisliked) {
        ++c.dislikes;
      }
    }
    if (status.ok()) status = FromRocks(it->status(), "verify records");
  }
  // A list entry (likers or a user's likes) must match a liked record with the same time.
  for (Family family : {kLikers, kUserLikes}) {
    if (!status.ok()) break;
    std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(ro, impl_->cf(family)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      std::string_view key = View(it->key());
      const size_t a = key.find('\0');
      const size_t b = a == std::string_view::npos ? a : key.find('\0', a + 1);
      if (b == std::string_view::npos || key.size() < b + 1 + 9) {
        status = Internal("malformed list key");
        break;
      }
      const std::string_view ns = key.substr(0, a), first = key.substr(a + 1, b - a - 1);
      const std::string_view suffix = key.substr(b + 1);
      const auto time_ms = static_cast<int64_t>(~GetBigEndian64(suffix));
      const std::string_view second = suffix.substr(8);
      const std::string_view user = family == kLikers ? second : first;
      const std::string_view entity = family == kLikers ? first : second;
      std::string value;
      auto s = db.Get(ro, impl_->cf(kRecords), RecordKey(ns, user, entity), &value);
      bool ok = false;
      if (s.ok()) {
        auto rec = DecodeRecord(value);
        ok = rec.ok() && rec->state == LikeState::kLiked && rec->time_ms == time_ms;
      }
      if (!ok) {
        ++report.index_differences;
        note(std::string(family == kLikers ? "likers" : "user likes") + " entry without a like: " + std::string(ns) +
             " user " + std::string(user) + " entity " + std::string(entity));
        fix.Delete(impl_->cf(family), it->key());
      }
    }
    if (status.ok()) status = FromRocks(it->status(), "verify lists");
  }
  // Stored totals against the expected ones, both ways.
  auto compare = [&](Family family, auto& expected, auto encode, auto decode, uint64_t* differences,
                     std::string_view what) {
    std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(ro, impl_->cf(family)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string key(View(it->key()));
      auto stored = decode(View(it->value()));
      auto found = expected.find(key);
      decltype(stored) want{};
      if (found != expected.end()) {
        want = found->second;
        expected.erase(found);
      }
      if (!(stored == want)) {
        ++*differences;
        std::string shown = key;
        std::replace(shown.begin(), shown.end(), '\0', '/');
        note(std::string(what) + " of " + shown + " differ from the records");
        fix.Put(impl_->cf(family), key, encode(want));
      }
    }
    for (const auto& [key, want] : expected) {
      if (want == decltype(want){}) continue;
      ++*differences;
      std::string shown = key;
      std::replace(shown.begin(), shown.end(), '\0', '/');
      note(std::string(what) + " of " + shown + " missing");
      fix.Put(impl_->cf(family), key, encode(want));
    }
    return FromRocks(it->status(), "verify totals");
  };
  report.entities = counts.size();
  if (status.ok()) {
    status = compare(
        kCounts, counts, [](const Counts& c) { return EncodeInts({c.likes, c.dislikes}); },
        [](std::string_view v) { return Counts{IntAt(v, 0), IntAt(v, 1)}; }, &report.count_differences, "counts");
  }
  if (status.ok()) {
    status = compare(
        kReceived, received, [](int64_t v) { return EncodeInts({v}); },
        [](std::string_view v) { return IntAt(v, 0); }, &report.received_differences, "received total");
  }
  if (status.ok()) {
    std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(ro, impl_->cf(kLog)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) ++report.pending_log;
  }
  db.ReleaseSnapshot(snapshot);
  CHORUS_RETURN_IF_ERROR(status);
  if (repair && fix.Count() > 0) {
    rocksdb::WriteOptions wo;
    wo.sync = true;
    CHORUS_RETURN_IF_ERROR(FromRocks(db.Write(wo, &fix), "repair"));
    report.repaired = true;
  }
  return report;
}

}  // namespace chorus::likes
