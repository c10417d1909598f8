#include "likes/cluster_store.h"

#include <nlohmann/json.hpp>
#include <random>

#include "base/logging.h"
#include "nats/nats_client.h"

namespace chorus::likes {

std::string EncodeAppliedNotice(std::string_view stream, uint64_t through) {
  nlohmann::json j;
  j["stream"] = stream;
  j["through"] = through;
  return j.dump();
}

uint64_t DecodeAppliedThrough(std::string_view stream, std::string_view notice) {
  nlohmann::json j = nlohmann::json::parse(notice, nullptr, false);
  if (!j.is_object()) return 0;
  auto s = j.find("stream");
  auto t = j.find("through");
  if (s == j.end() || !s->is_string() || s->get<std::string>() != stream) return 0;
  if (t == j.end() || !t->is_number_unsigned()) return 0;
  return t->get<uint64_t>();
}

namespace {

std::string BootId() {
  std::random_device rd;
  const uint64_t v = (uint64_t{rd()} << 32) ^ rd();
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

ClusterLikeStore::ClusterLikeStore(std::shared_ptr<SqlLikeStore> db, std::shared_ptr<nats::NatsClient> nats,
                                   ClusterStoreOptions options)
    : db_(std::move(db)),
      nats_(std::move(nats)),
      options_(std::move(options)),
      id_prefix_(options_.node_id + "." + BootId() + ".") {}

Result<std::unique_ptr<ClusterLikeStore>> ClusterLikeStore::Create(std::shared_ptr<SqlLikeStore> db,
                                                                   std::shared_ptr<nats::NatsClient> nats,
                                                                   ClusterStoreOptions options) {
  if (!db || !nats) return InvalidArgument("cluster likes store: needs a database and a NATS client");
  if (options.node_id.empty()) return InvalidArgument("cluster likes store: node_id is empty");
  std::unique_ptr<ClusterLikeStore> store(
      new ClusterLikeStore(std::move(db), std::move(nats), std::move(options)));
  ClusterLikeStore* self = store.get();
  auto sub =
      self->nats_->Subscribe(self->options_.changes_subject, [self](std::string_view, std::string_view data) {
        self->Advance(DecodeAppliedThrough(self->options_.stream, data));
      });
  if (!sub.ok()) return sub.status();
  store->notices_ = std::move(*sub);
  // Start from where the job is when it answers; the poller keeps trying otherwise.
  if (auto through = store->PolledOffset(); through.ok()) store->Advance(*through);
  store->poller_ = std::thread([self] { self->PollOffsets(); });
  return store;
}

ClusterLikeStore::~ClusterLikeStore() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  stop_cv_.NotifyAll();
  if (poller_.joinable()) poller_.join();
  notices_.reset();  // no notice callback after this
}

void ClusterLikeStore::Advance(uint64_t through) {
  uint64_t seen = applied_through_.load(std::memory_order_relaxed);
  while (through > seen &&
         !applied_through_.compare_exchange_weak(seen, through, std::memory_order_acq_rel)) {
  }
}

void ClusterLikeStore::PollOffsets() {
  while (true) {
    {
      MutexLock lock(mu_);
      if (stop_cv_.WaitFor(mu_, options_.offset_poll, [this]() REQUIRES(mu_) { return stopping_; })) return;
    }
    if (auto through = PolledOffset(); through.ok()) Advance(*through);
  }
}

Result<uint64_t> ClusterLikeStore::PolledOffset() {
  // With a cache, entries are applied for readers once the cache holds them: the job records
  // that offset in Redis after each refresh. Without one, the database's offset.
  if (options_.cache) return options_.cache->RefreshedThrough(options_.stream);
  return db_->AppliedThrough(options_.stream);
}

void ClusterLikeStore::AdvanceFromDatabase(uint64_t offset) {
  if (!options_.cache) Advance(offset);
}

Status ClusterLikeStore::GetRecordsForUpdate(std::string_view ns, std::string_view user,
                                             std::span<const std::string> entities,
                                             std::vector<std::optional<Record>>* out) {
  // The database decides a transition. When it cannot answer, the caller writes blind (the job
  // then decides against the stored row, LogEntry::if_state); a cached record is not used, as a
  // stale one would turn e.g. an unlike into the removal of a dislike.
  return db_->GetRecords(ns, user, entities, out);
}

Status ClusterLikeStore::AppendLog(std::span<LogEntry> entries) {
  if (entries.empty()) return Status::Ok();
  // Publish everything pipelined, then wait for every ack.
  struct Acks {
    Mutex mu;
    CondVar cv;
    size_t left GUARDED_BY(mu) = 0;
    std::vector<Result<nats::PublishAck>> results GUARDED_BY(mu);
  };
  auto acks = std::make_shared<Acks>();
  {
    MutexLock lock(acks->mu);
    acks->left = entries.size();
    acks->results.assign(entries.size(), Result<nats::PublishAck>(Unavailable("not answered")));
  }
  for (size_t i = 0; i < entries.size(); ++i) {
    const LogEntry& e = entries[i];
    const std::string subject = options_.subject_prefix + "." + e.ns;
    const std::string msg_id = id_prefix_ + std::to_string(next_msg_++);
    nats_->JsPublishAsync(subject, EncodeLogEntry(e), msg_id, [acks, i](Result<nats::PublishAck> r) {
      MutexLock lock(acks->mu);
      acks->results[i] = std::move(r);
      if (--acks->left == 0) acks->cv.NotifyAll();
    });
  }
  std::vector<Result<nats::PublishAck>> results;
  {
    MutexLock lock(acks->mu);
    acks->cv.Wait(acks->mu, [&]() REQUIRES(acks->mu) { return acks->left == 0; });
    results = std::move(acks->results);
  }
  std::vector<LogEntry> direct;  // not acknowledged by the stream
  std::vector<size_t> direct_index;
  Status first_error;
  uint64_t highest = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    if (results[i].ok()) {
      entries[i].seq = results[i]->stream_seq;
      highest = std::max(highest, entries[i].seq);
      continue;
    }
    if (first_error.ok()) first_error = results[i].status();
    LogEntry copy = entries[i];
    copy.seq = 0;
    direct.push_back(std::move(copy));
    direct_index.push_back(i);
  }
  if (highest > 0) {
    uint64_t seen = last_appended_.load(std::memory_order_relaxed);
    while (highest > seen && !last_appended_.compare_exchange_weak(seen, highest)) {
    }
  }
  if (direct.empty()) {
    falling_back_.store(false, std::memory_order_release);
    return Status::Ok();
  }
  {
    MutexLock lock(mu_);
    last_error_ = "jetstream: " + first_error.message();
  }
  if (!options_.sync_fallback) {
    return Unavailable("likes queue (JetStream): " + first_error.message());
  }
  // The seed's fallback: write to the database directly. Entries queued earlier for the same
  // records are older and lose to these when the job applies them (SqlLikeStore's time guard).
  falling_back_.store(true, std::memory_order_release);
  if (Status s = db_->Apply(direct); !s.ok()) {
    MutexLock lock(mu_);
    last_error_ = "jetstream: " + first_error.message() + "; database: " + s.message();
    return Unavailable("likes queue (JetStream) and database both failed: " + s.message());
  }
  for (size_t i : direct_index) entries[i].seq = 0;  // applied at once
  if (options_.cache) {
    // Written outside the stream: the cached values of these keys are stale now.
    if (Status s = options_.cache->Invalidate(direct); !s.ok()) {
      GetLogger("likes")->warn("likes: cache invalidation after a synchronous write failed: {}",
                               s.ToString());
    }
  }
  sync_applied_.fetch_add(direct.size(), std::memory_order_relaxed);
  return Status::Ok();
}

Status ClusterLikeStore::Apply(std::span<const LogEntry>) {
  return FailedPrecondition("cluster likes store: entries are applied by `chorus likes job`");
}

Result<std::vector<LogEntry>> ClusterLikeStore::PendingLog() { return std::vector<LogEntry>{}; }

bool ClusterLikeStore::AdmitDatabaseRead(const Status& cache_error) {
  cache_ok_.store(false, std::memory_order_release);
  MutexLock lock(mu_);
  last_error_ = "redis: " + cache_error.message();
  const SteadyTime now = SystemClock::Instance().Now();
  const double rate = options_.db_read_rate;
  if (read_refill_ != SteadyTime{}) {
    read_tokens_ += rate * std::chrono::duration<double>(now - read_refill_).count();
  } else {
    read_tokens_ = rate;
  }
  read_tokens_ = std::min(read_tokens_, std::max(1.0, rate));
  read_refill_ = now;
  if (read_tokens_ < 1) {
    db_fallback_refused_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  read_tokens_ -= 1;
  db_fallback_reads_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

Status ClusterLikeStore::GetRecords(std::string_view ns, std::string_view user,
                                    std::span<const std::string> entities,
                                    std::vector<std::optional<Record>>* out) {
  RedisLikeCache* cache = options_.cache.get();
  if (!cache) return db_->GetRecords(ns, user, entities, out);
  std::vector<std::optional<std::optional<Record>>> cached;
  if (Status s = cache->GetRecords(ns, user, entities, &cached); !s.ok()) {
    if (!AdmitDatabaseRead(s)) return Unavailable("likes: cache down and the database read budget is spent");
    return db_->GetRecords(ns, user, entities, out);
  }
  cache_ok_.store(true, std::memory_order_release);
  out->assign(entities.size(), std::nullopt);
  std::vector<std::string> missing;
  std::vector<size_t> where;
  for (size_t i = 0; i < entities.size(); ++i) {
    if (cached[i]) {
      (*out)[i] = std::move(*cached[i]);
    } else {
      missing.push_back(entities[i]);
      where.push_back(i);
    }
  }
  cache_hits_.fetch_add(entities.size() - missing.size(), std::memory_order_relaxed);
  if (missing.empty()) return Status::Ok();
  cache_misses_.fetch_add(missing.size(), std::memory_order_relaxed);
  std::vector<std::optional<Record>> loaded;
  uint64_t offset = 0;
  CHORUS_RETURN_IF_ERROR(db_->GetRecordsWithOffset(ns, user, missing, options_.stream, &loaded, &offset));
  AdvanceFromDatabase(offset);
  (void)cache->PutRecords(ns, user, missing, loaded, offset);  // a failed refill is the next read's miss
  for (size_t k = 0; k < missing.size(); ++k) (*out)[where[k]] = std::move(loaded[k]);
  return Status::Ok();
}

Status ClusterLikeStore::GetCounts(std::string_view ns, std::span<const std::string> entities,
                                   std::vector<Counts>* out) {
  if (!options_.cache) return db_->GetCounts(ns, entities, out);
  std::vector<uint64_t> as_of;
  return GetCountsAsOf(ns, entities, out, &as_of);
}

Status ClusterLikeStore::GetCountsAsOf(std::string_view ns, std::span<const std::string> entities,
                                       std::vector<Counts>* out, std::vector<uint64_t>* as_of) {
  RedisLikeCache* cache = options_.cache.get();
  uint64_t offset = 0;
  if (!cache) {
    CHORUS_RETURN_IF_ERROR(db_->GetCountsWithOffset(ns, entities, options_.stream, out, &offset));
    AdvanceFromDatabase(offset);
    as_of->assign(entities.size(), offset);
    return Status::Ok();
  }
  std::vector<std::optional<RedisLikeCache::CachedCounts>> cached;
  if (Status s = cache->GetCounts(ns, entities, &cached); !s.ok()) {
    if (!AdmitDatabaseRead(s)) return Unavailable("likes: cache down and the database read budget is spent");
    CHORUS_RETURN_IF_ERROR(db_->GetCountsWithOffset(ns, entities, options_.stream, out, &offset));
    AdvanceFromDatabase(offset);
    as_of->assign(entities.size(), offset);
    return Status::Ok();
  }
  cache_ok_.store(true, std::memory_order_release);
  out->assign(entities.size(), Counts{});
  as_of->assign(entities.size(), 0);
  std::vector<std::string> missing;
  std::vector<size_t> where;
  for (size_t i = 0; i < entities.size(); ++i) {
    if (cached[i]) {
      (*out)[i] = cached[i]->counts;
      (*as_of)[i] = cached[i]->seq;
    } else {
      missing.push_back(entities[i]);
      where.push_back(i);
    }
  }
  cache_hits_.fetch_add(entities.size() - missing.size(), std::memory_order_relaxed);
  if (missing.empty()) return Status::Ok();
  cache_misses_.fetch_add(missing.size(), std::memory_order_relaxed);
  std::vector<Counts> loaded;
  CHORUS_RETURN_IF_ERROR(db_->GetCountsWithOffset(ns, missing, options_.stream, &loaded, &offset));
  AdvanceFromDatabase(offset);
  (void)cache->PutCounts(ns, missing, loaded, offset);
  for (size_t k = 0; k < missing.size(); ++k) {
    (*out)[where[k]] = loaded[k];
    (*as_of)[where[k]] = offset;
  }
  return Status::Ok();
}

Result<int64_t> ClusterLikeStore::GetReceived(std::string_view ns, std::string_view owner) {
  return db_->GetReceived(ns, owner);
}

Result<ListPage> ClusterLikeStore::UserLikes(std::string_view ns, std::string_view user,
                                             std::string_view cursor, size_t limit) {
  RedisLikeCache* cache = options_.cache.get();
  // The first page comes from the cached list; later pages (a cursor) from the database index.
  if (!cache || !cursor.empty() || cache->ListMax(ns) == 0) return db_->UserLikes(ns, user, cursor, limit);
  std::optional<ListPage> cached;
  if (Status s = cache->GetUserLikes(ns, user, limit, &cached); !s.ok()) {
    if (!AdmitDatabaseRead(s)) return Unavailable("likes: cache down and the database read budget is spent");
    return db_->UserLikes(ns, user, cursor, limit);
  }
  cache_ok_.store(true, std::memory_order_release);
  if (cached) {
    cache_hits_.fetch_add(1, std::memory_order_relaxed);
    return std::move(*cached);
  }
  cache_misses_.fetch_add(1, std::memory_order_relaxed);
  ListPage newest;
  uint64_t offset = 0;
  CHORUS_RETURN_IF_ERROR(
      db_->UserLikesWithOffset(ns, user, cache->ListMax(ns), options_.stream, &newest, &offset));
  AdvanceFromDatabase(offset);
  const bool capped = !newest.next_cursor.empty();
  (void)cache->PutUserLikes(ns, user, newest.items, capped, offset);
  ListPage page;
  for (size_t i = 0; i < newest.items.size() && i < limit; ++i) page.items.push_back(newest.items[i]);
  if (!page.items.empty() && (newest.items.size() > page.items.size() || capped)) {
    page.next_cursor = SqlLikeStore::ListCursor(page.items.back().time_ms, page.items.back().id);
  }
  return page;
}

Result<ListPage> ClusterLikeStore::Likers(std::string_view ns, std::string_view entity,
                                          std::string_view cursor, size_t limit) {
  return db_->Likers(ns, entity, cursor, limit);
}

Status ClusterLikeStore::TrimUserLists(std::string_view ns, std::span<const std::string> users, size_t keep) {
  return db_->TrimUserLists(ns, users, keep);
}

Result<VerifyReport> ClusterLikeStore::Verify(bool repair) { return db_->Verify(repair); }

ClusterLikeStore::Health ClusterLikeStore::health() const {
  Health h;
  h.queue_connected = nats_->connected();
  h.falling_back = falling_back_.load(std::memory_order_acquire);
  h.applied_through = applied_through_.load(std::memory_order_acquire);
  h.last_appended = last_appended_.load(std::memory_order_acquire);
  h.sync_applied = sync_applied_.load(std::memory_order_relaxed);
  h.cache_configured = options_.cache != nullptr;
  h.cache_ok = cache_ok_.load(std::memory_order_acquire);
  h.cache_hits = cache_hits_.load(std::memory_order_relaxed);
  h.cache_misses = cache_misses_.load(std::memory_order_relaxed);
  h.db_fallback_reads = db_fallback_reads_.load(std::memory_order_relaxed);
  h.db_fallback_refused = db_fallback_refused_.load(std::memory_order_relaxed);
  MutexLock lock(mu_);
  h.last_error = last_error_;
  return h;
}

}  // namespace chorus::likes
