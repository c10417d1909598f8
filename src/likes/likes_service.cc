#include "likes/likes_service.h"

#include <algorithm>
#include <atomic>
#include <deque>
#include <future>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "base/logging.h"
#include "base/metrics.h"
#include "likes/blocking_pool.h"
#include "likes/committer.h"
#include "likes/count_cache.h"
#include "likes/hot_keys.h"
#include "likes/rate_limiter.h"
#include "net/runtime.h"
#include "net/token.h"

namespace chorus::likes {
namespace {

// An entity's counts in the overlay and the caches.
std::string EntityKey(std::string_view ns, std::string_view entity) { return TotalKey(ns, entity); }

struct Metrics {
  Gauge* log_lag = nullptr;
  Counter* applied = nullptr;
  Counter* apply_errors = nullptr;
  Histogram* apply_seconds = nullptr;
  Counter* cache_hits = nullptr;
  Counter* cache_misses = nullptr;
  Counter* degraded = nullptr;
  CounterFamily* actions = nullptr;  // {business, result}
};

Metrics& GetMetrics() {
  static Metrics m = [] {
    Metrics out;
    auto& reg = DefaultMetrics();
    if (auto f = reg.Gauge("chorus_likes_log_lag", "Acknowledged log entries not yet applied", {}); f.ok()) {
      out.log_lag = &f->Get();
    }
    if (auto f = reg.Counter("chorus_likes_applied_total", "Log entries applied by the job stage", {}); f.ok()) {
      out.applied = &f->Get();
    }
    if (auto f = reg.Counter("chorus_likes_apply_errors_total", "Apply batches that failed (retried)", {}); f.ok()) {
      out.apply_errors = &f->Get();
    }
    if (auto f = reg.Histogram("chorus_likes_apply_seconds", "Time of one apply batch's store write",
                               ExponentialBuckets(0.0001, 2, 16));
        f.ok()) {
      out.apply_seconds = &f->Get();
    }
    if (auto f = reg.Counter("chorus_likes_count_cache_total", "Count reads by cache outcome", {"result"}); f.ok()) {
      out.cache_hits = &f->WithLabels({"hit"});
      out.cache_misses = &f->WithLabels({"miss"});
    }
    if (auto f = reg.Counter("chorus_likes_degraded_total", "Reads answered degraded after a store failure", {});
        f.ok()) {
      out.degraded = &f->Get();
    }
    static std::optional<CounterFamily> actions;
    if (auto f = reg.Counter("chorus_likes_actions_total", "Like actions by business and result",
                             {"business", "result"});
        f.ok()) {
      actions.emplace(std::move(*f));
      out.actions = &*actions;
    }
    return out;
  }();
  return m;
}

}  // namespace

class LikesService::Impl {
 public:
  Impl(net::Runtime& runtime, const net::TokenSigner& signer, LikesOptions options, std::shared_ptr<LikeStore> store,
       std::shared_ptr<EventBus> bus, const Clock& clock)
      : runtime_(runtime),
        signer_(signer),
        options_(std::move(options)),
        store_(std::move(store)),
        bus_(std::move(bus)),
        clock_(clock),
        committer_(*store_),
        applies_elsewhere_(store_->applies_elsewhere()),
        limiter_(clock, 200000) {
    for (const Business& b : options_.businesses) {
      by_id_.emplace(b.id, &b);
      by_ns_.emplace(b.ns, &b);
    }
    if (applies_elsewhere_) io_pool_ = std::make_unique<BlockingPool>(options_.io_threads);
    for (uint32_t i = 0; i < runtime_.size(); ++i) {
      auto st = std::make_unique<ShardState>();
      st->index = i;
      HotKeyDetector::Options hot;
      hot.threshold = options_.hot_threshold;
      hot.window = options_.hot_window;
      hot.top_k = options_.hot_top_k;
      hot.seed = i + 1;
      st->hot = std::make_unique<HotKeyDetector>(clock_, hot);
      WTinyLfuCountCache::Options cache;
      cache.capacity = options_.cache_capacity;
      cache.ttl = options_.cache_ttl;
      st->cache = std::make_unique<WTinyLfuCountCache>(clock_, cache);
      shards_.push_back(std::move(st));
    }
    auto& m = GetMetrics();
    for (const Business& b : options_.businesses) {
      BusinessMetrics bm;
      if (m.actions) {
        bm.changed = &m.actions->WithLabels({b.id, "changed"});
        bm.noop = &m.actions->WithLabels({b.id, "noop"});
        bm.failed = &m.actions->WithLabels({b.id, "failed"});
      }
      metrics_.emplace(b.id, bm);
    }
  }

  // ---- per-shard state ----

  struct KeyOverlay {
    Record visible;      // acknowledged (durable) state
    Record latest;       // including appends in flight: what the next transition starts from
    uint32_t inflight = 0;
    uint32_t unapplied = 0;
  };
  struct EntityOverlay {
    Counts delta;        // acknowledged, not yet applied
    uint32_t refs = 0;   // entries behind it
    // Embedded engine: the store's counts of the entity, once read. Exact while the overlay
    // lives, because only this shard's apply changes them (and adds what it applied), so a
    // busy entity's writes answer their counts without a store read each.
    std::optional<Counts> base;
    // When the store applies elsewhere: each entry's (seq, delta) in log order, so a read adds
    // only the entries its store value does not include yet (LikeStore::GetCountsAsOf).
    std::deque<std::pair<uint64_t, Counts>> parts;
  };
  struct ShardState {
    uint32_t index = 0;
    uint64_t generation = 0;
    std::unordered_map<std::string, KeyOverlay> overlay;
    std::unordered_map<std::string, EntityOverlay> counts;
    std::deque<LogEntry> committed;  // acknowledged, waiting for the apply stage
    // Embedded engine: the store's counts of entities this shard owns that have no overlay now
    // (read for an answer, or left by an apply). Exact for the same reason as
    // EntityOverlay::base: only this shard's apply changes them, and a write moves the value
    // into its new overlay entry as its base. Two generations of kSettledGeneration entries
    // each (a cheap LRU): the popular entities' writes and count reads skip the store read.
    std::unordered_map<std::string, Counts> settled;
    std::unordered_map<std::string, Counts> settled_old;
    std::unordered_set<std::string> trim;  // ns \0 user with new likes since the last trim
    std::unique_ptr<HotKeyDetector> hot;
    std::unique_ptr<CountCache> cache;
    std::unordered_map<std::string, SteadyTime> watched;  // owned entities other shards cache
    double apply_tokens = 0;
    SteadyTime apply_refill{};
    TimerId apply_timer = 0;
    TimerId trim_timer = 0;
    bool stopped = false;

    // Read by other shards so reads need no hop when nothing is pending (see MayBePending):
    // a counting filter over the record and entity keys present in `overlay` / `counts`, and
    // an epoch that is odd while an apply batch is being written and its overlay dropped.
    std::unique_ptr<std::atomic<uint16_t>[]> pending{new std::atomic<uint16_t>[kPendingSlots]()};
    std::atomic<uint64_t> apply_epoch{0};
  };
  static constexpr size_t kPendingSlots = size_t{1} << 20;
  static constexpr size_t kSettledGeneration = 32768;

  static void KeepSettled(ShardState& st, const std::string& ek, const Counts& c) {
    st.settled[ek] = c;
    if (st.settled.size() >= kSettledGeneration) {
      st.settled_old = std::move(st.settled);
      st.settled.clear();
    }
  }
  // The settled counts of `ek`, removed from the cache (its overlay entry takes them over).
  // A key is in one generation at most (a hit in the old one moves it), but both are cleared.
  static std::optional<Counts> TakeSettled(ShardState& st, const std::string& ek) {
    std::optional<Counts> c;
    for (auto* gen : {&st.settled_old, &st.settled}) {
      auto it = gen->find(ek);
      if (it == gen->end()) continue;
      c = it->second;
      gen->erase(it);
    }
    return c;
  }

  static size_t PendingSlot(std::string_view key) { return std::hash<std::string_view>{}(key) & (kPendingSlots - 1); }
  static void MarkPending(ShardState& st, std::string_view key) {
    st.pending[PendingSlot(key)].fetch_add(1, std::memory_order_seq_cst);
  }
  static void UnmarkPending(ShardState& st, std::string_view key) {
    st.pending[PendingSlot(key)].fetch_sub(1, std::memory_order_seq_cst);
  }
  // Whether `key` (owned by `st`) may have acknowledged changes the store does not hold yet.
  // Call after reading the store; `epoch_before` is st.apply_epoch read before that read. False
  // means the store value read is current: every write acknowledged before the read began
  // marked its key before its answer, and the mark is cleared only inside an odd epoch, after
  // the apply that put it in the store.
  static bool MayBePending(const ShardState& st, size_t slot, uint64_t epoch_before) {
    if (epoch_before & 1) return true;
    if (st.pending[slot].load(std::memory_order_seq_cst) != 0) return true;
    return st.apply_epoch.load(std::memory_order_seq_cst) != epoch_before;
  }
  static bool MayBePending(const ShardState& st, std::string_view key, uint64_t epoch_before) {
    return MayBePending(st, PendingSlot(key), epoch_before);
  }

  struct BusinessMetrics {
    Counter* changed = nullptr;
    Counter* noop = nullptr;
    Counter* failed = nullptr;
  };

  uint32_t OwnerOf(std::string_view ns, std::string_view entity) const {
    const size_t h = std::hash<std::string_view>{}(ns) * 31 + std::hash<std::string_view>{}(entity);
    return static_cast<uint32_t>(h % runtime_.size());
  }

  const Business* FindBusiness(std::string_view id) const {
    auto it = by_id_.find(std::string(id));
    return it == by_id_.end() ? nullptr : it->second;
  }

  // ---- write path ----

  struct ActGather {
    std::vector<ActRequest> requests;     // read-only once dispatched
    std::vector<const Business*> biz;     // per request; null for an unknown business
    std::vector<Result<ActResult>> results;  // each index written by its owner shard only
    std::atomic<size_t> left{0};
    ActCallback done;
    // Cluster engine: each request's stored record (or the read's error), read on the I/O pool
    // before the owners run. An owner uses it only if its apply_epoch is still the one read
    // before the prefetch (no overlay of it was dropped since), else it reads again.
    std::vector<std::optional<Result<Record>>> prefetched;
    std::vector<uint64_t> prefetch_epochs;
    void Finish() {
      if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) done(std::move(results));
    }
  };

  void Act(std::vector<ActRequest> requests, ActCallback done) {
    auto gather = std::make_shared<ActGather>();
    gather->results.assign(requests.size(), Result<ActResult>(Internal("not processed")));
    gather->done = std::move(done);
    gather->biz.resize(requests.size());
    std::map<uint32_t, std::vector<size_t>> by_owner;
    for (size_t i = 0; i < requests.size(); ++i) {
      gather->biz[i] = FindBusiness(requests[i].business);
      if (!gather->biz[i]) {
        gather->results[i] = InvalidArgument("unknown business '" + requests[i].business + "'");
        continue;
      }
      by_owner[OwnerOf(gather->biz[i]->ns, requests[i].entity)].push_back(i);
    }
    gather->requests = std::move(requests);
    if (by_owner.empty()) {
      gather->done(std::move(gather->results));
      return;
    }
    gather->left.store(by_owner.size());
    if (io_pool_ && !io_pool_->IsCurrent()) {
      io_pool_->Submit([this, gather, by_owner = std::move(by_owner)]() mutable {
        Prefetch(*gather);
        DispatchActs(gather, std::move(by_owner));
      });
      return;
    }
    DispatchActs(gather, std::move(by_owner));
  }

  void DispatchActs(const std::shared_ptr<ActGather>& gather, std::map<uint32_t, std::vector<size_t>> by_owner) {
    for (auto& group : by_owner) {
      const uint32_t owner = group.first;  // (clang 14 cannot capture structured bindings)
      auto& indices = group.second;
      runtime_.shard(owner).Dispatch([this, owner, indices = std::move(indices), gather] {
        ActOnOwner(*shards_[owner], indices, gather);
      });
    }
  }

  // Reads every request's stored record, one store call per (business, user).
  void Prefetch(ActGather& g) {
    g.prefetch_epochs.resize(runtime_.size());
    for (uint32_t s = 0; s < runtime_.size(); ++s) {
      g.prefetch_epochs[s] = shards_[s]->apply_epoch.load(std::memory_order_seq_cst);
    }
    g.prefetched.assign(g.requests.size(), std::nullopt);
    std::map<std::pair<std::string_view, std::string_view>, std::vector<size_t>> by_user;
    for (size_t i = 0; i < g.requests.size(); ++i) {
      if (g.biz[i]) by_user[{g.biz[i]->ns, g.requests[i].user}].push_back(i);
    }
    for (const auto& [key, indices] : by_user) {
      std::vector<std::string> entities;
      for (size_t i : indices) entities.push_back(g.requests[i].entity);
      std::vector<std::optional<Record>> out;
      Status s = store_->GetRecordsForUpdate(key.first, key.second, entities, &out);
      for (size_t k = 0; k < indices.size(); ++k) {
        if (s.ok()) {
          g.prefetched[indices[k]] = Result<Record>(out[k] ? *out[k] : Record{});
        } else {
          g.prefetched[indices[k]] = Result<Record>(s);
        }
      }
    }
  }

  Record StoredRecord(const Business& b, const ActRequest& r, Status* error) {
    std::vector<std::optional<Record>> out;
    const std::string entity[1] = {r.entity};
    Status s = store_->GetRecordsForUpdate(b.ns, r.user, entity, &out);
    if (!s.ok()) {
      *error = s;
      return {};
    }
    return out[0] ? *out[0] : Record{};
  }

  void ActOnOwner(ShardState& st, const std::vector<size_t>& indices, const std::shared_ptr<ActGather>& gather) {
    const std::vector<ActRequest>& requests = gather->requests;
    const std::vector<const Business*>& biz = gather->biz;
    std::vector<LogEntry> entries;
    std::vector<size_t> entry_items;    // request index per entry
    std::vector<size_t> fenced_items;   // no-ops behind appends in flight
    const int64_t now = clock_.WallMillis();
    for (size_t i : indices) {
      const ActRequest& r = requests[i];
      const Business& b = *biz[i];
      const BusinessMetrics& bm = metrics_.at(b.id);
      if (st.committed.size() >= options_.max_pending) {
        gather->results[i] = Unavailable("likes: the apply stage is behind; retry later");
        if (bm.failed) bm.failed->Inc();
        continue;
      }
      std::string key = RecordKey(b.ns, r.user, r.entity);
      auto it = st.overlay.find(key);
      Record current;
      bool blind = false;
      if (it != st.overlay.end()) {
        current = it->second.latest;
      } else {
        Status error;
        const uint64_t epoch = st.apply_epoch.load(std::memory_order_seq_cst);
        if (i < gather->prefetched.size() && gather->prefetched[i] && !(epoch & 1) &&
            epoch == gather->prefetch_epochs[st.index]) {
          const Result<Record>& pre = *gather->prefetched[i];
          if (pre.ok()) {
            current = *pre;
          } else {
            error = pre.status();
          }
        } else {
          current = StoredRecord(b, r, &error);
        }
        if (!error.ok()) {
          if (!applies_elsewhere_) {
            gather->results[i] = Unavailable("likes store: " + error.message());
            if (bm.failed) bm.failed->Inc();
            continue;
          }
          // Cluster engine, database unreachable: queue a blind write; the job applies it
          // against the stored state (LogEntry::if_state).
          blind = true;
          current = Record{};
        }
      }
      if (blind) {
        const bool undo = r.action == LikeAction::kUnlike || r.action == LikeAction::kUndislike;
        if ((r.action == LikeAction::kDislike || r.action == LikeAction::kUndislike) && !b.dislikes) {
          gather->results[i] = InvalidArgument("this business does not allow dislikes");
          if (bm.failed) bm.failed->Inc();
          continue;
        }
        const LikeState to = r.action == LikeAction::kLike      ? LikeState::kLiked
                             : r.action == LikeAction::kDislike ? LikeState::kDisliked
                                                                : LikeState::kNone;
        MarkPending(st, key);
        it = st.overlay.emplace(std::move(key), KeyOverlay{current, current, 0, 0}).first;
        LogEntry e;
        e.ns = b.ns;
        e.user = r.user;
        e.entity = r.entity;
        e.owner = r.owner;
        e.from = to;  // no count delta before the job knows the stored state
        e.to = to;
        if (undo) e.if_state = r.action == LikeAction::kUnlike ? LikeState::kLiked : LikeState::kDisliked;
        e.time_ms = now;
        it->second.latest = Record{e.to, e.time_ms, e.owner};
        ++it->second.inflight;
        entries.push_back(std::move(e));
        entry_items.push_back(i);
        continue;
      }
      auto t = likes::Apply(current.state, r.action, b.dislikes);
      if (!t.ok()) {
        gather->results[i] = t.status();
        if (bm.failed) bm.failed->Inc();
        continue;
      }
      if (!t->changed) {
        if (bm.noop) bm.noop->Inc();
        if (it != st.overlay.end() && it->second.inflight > 0) {
          fenced_items.push_back(i);
        } else {
          gather->results[i] = ActResult{current.state, {}, false};
          FillCounts(st, b.ns, r.entity, &*gather->results[i]);
        }
        continue;
      }
      if (it == st.overlay.end()) {
        MarkPending(st, key);
        it = st.overlay.emplace(std::move(key), KeyOverlay{current, current, 0, 0}).first;
      }
      LogEntry e;
      e.ns = b.ns;
      e.user = r.user;
      e.entity = r.entity;
      // The owner credited is the record's, once it has one: an unlike takes back what the like gave.
      e.owner = current.state != LikeState::kNone ? current.owner : r.owner;
      e.from = current.state;
      e.from_time_ms = current.time_ms;
      e.to = t->to;
      // Strictly after the record it replaces, so "newer wins" (the store's guard against stale
      // entries) orders every transition of one record.
      e.time_ms = std::max(now, current.time_ms + (current.time_ms > 0 ? 1 : 0));
      it->second.latest = Record{e.to, e.time_ms, e.owner};
      ++it->second.inflight;
      entries.push_back(std::move(e));
      entry_items.push_back(i);
    }
    if (entries.empty() && fenced_items.empty()) {
      gather->Finish();
      return;
    }
    LogCommitter::Batch batch;
    batch.source = st.index;
    batch.generation = st.generation;
    batch.entries = std::move(entries);
    const uint64_t generation = st.generation;
    batch.done = [this, &st, generation, gather, entry_items = std::move(entry_items),
                  fenced_items = std::move(fenced_items)](Status status, std::vector<LogEntry> written) mutable {
      runtime_.shard(st.index).Post([this, &st, generation, gather, status = std::move(status),
                                     written = std::move(written), entry_items = std::move(entry_items),
                                     fenced_items = std::move(fenced_items)] {
        OnCommitted(st, generation, status, written, entry_items, fenced_items, gather);
      });
    };
    committer_.Submit(std::move(batch));
  }

  void OnCommitted(ShardState& st, uint64_t generation, const Status& status, const std::vector<LogEntry>& written,
                   const std::vector<size_t>& entry_items, const std::vector<size_t>& fenced_items,
                   const std::shared_ptr<ActGather>& gather) {
    const std::vector<ActRequest>& requests = gather->requests;
    const std::vector<const Business*>& biz = gather->biz;
    if (!status.ok()) {
      if (generation == st.generation) {
        // Everything in flight was built on a state that never became durable: forget it.
        ++st.generation;
        for (auto it = st.overlay.begin(); it != st.overlay.end();) {
          KeyOverlay& ko = it->second;
          if (ko.inflight > 0) {
            ko.inflight = 0;
            ko.latest = ko.visible;
          }
          if (ko.unapplied == 0 && ko.inflight == 0) {
            // Never acknowledged: the store was right all along, no epoch needed.
            UnmarkPending(st, it->first);
            it = st.overlay.erase(it);
          } else {
            ++it;
          }
        }
      }
      for (size_t i : entry_items) {
        gather->results[i] = status;
        if (auto* c = metrics_.at(biz[i]->id).failed) c->Inc();
      }
      for (size_t i : fenced_items) gather->results[i] = status;
      gather->Finish();
      return;
    }
    auto& m = GetMetrics();
    const bool publish_likes = bus_ && bus_->HasLikeSubscribers();
    std::vector<std::string> changed_entities;
    for (size_t j = 0; j < written.size(); ++j) {
      const LogEntry& e = written[j];
      const size_t i = entry_items[j];
      KeyOverlay& ko = st.overlay[RecordKey(e.ns, e.user, e.entity)];
      if (ko.inflight > 0) --ko.inflight;
      ++ko.unapplied;
      ko.visible = Record{e.to, e.time_ms, e.owner};
      std::string ek = EntityKey(e.ns, e.entity);
      auto [eo_it, created] = st.counts.try_emplace(ek);
      EntityOverlay& eo = eo_it->second;
      if (created) {
        MarkPending(st, ek);
        if (!applies_elsewhere_) eo.base = TakeSettled(st, ek);
      }
      eo.delta += DeltaOf(e.from, e.to);
      ++eo.refs;
      if (applies_elsewhere_) eo.parts.emplace_back(e.seq, DeltaOf(e.from, e.to));
      changed_entities.push_back(std::move(ek));
      if (auto* c = metrics_.at(biz[i]->id).changed) c->Inc();
      if (publish_likes) {
        bus_->Publish(LikeEvent{biz[i]->id, e.user, e.entity, e.owner, e.from, e.to, e.time_ms, e.seq});
      }
      st.committed.push_back(e);
    }
    if (m.log_lag) m.log_lag->Add(static_cast<int64_t>(written.size()));
    for (size_t j = 0; j < entry_items.size(); ++j) {
      const size_t i = entry_items[j];
      const Business& b = *biz[i];
      const ActRequest& r = requests[i];
      auto ko = st.overlay.find(RecordKey(b.ns, r.user, r.entity));
      gather->results[i] = ActResult{ko->second.visible.state, {}, true};
      FillCounts(st, b.ns, r.entity, &*gather->results[i]);
    }
    for (size_t i : fenced_items) {
      const Business& b = *biz[i];
      const ActRequest& r = requests[i];
      auto ko = st.overlay.find(RecordKey(b.ns, r.user, r.entity));
      LikeState state = ko != st.overlay.end() ? ko->second.visible.state : LikeState::kNone;
      if (ko == st.overlay.end()) {
        Status error;
        state = StoredRecord(b, r, &error).state;
      }
      gather->results[i] = ActResult{state, {}, false};
      FillCounts(st, b.ns, r.entity, &*gather->results[i]);
    }
    // Counts other shards cache: push the new value to them.
    std::sort(changed_entities.begin(), changed_entities.end());
    changed_entities.erase(std::unique(changed_entities.begin(), changed_entities.end()), changed_entities.end());
    for (const std::string& ek : changed_entities) RefreshCaches(st, ek);
    gather->Finish();
  }

  // An answer's counts; marked degraded when the store read failed (cache or overlay only).
  void FillCounts(ShardState& st, std::string_view ns, std::string_view entity, ActResult* out) {
    bool degraded = false;
    out->counts = VisibleCounts(st, ns, entity, &degraded);
    out->degraded = degraded;
  }

  // Store counts plus acknowledged-but-unapplied deltas. On the owner shard only.
  Counts VisibleCounts(ShardState& st, std::string_view ns, std::string_view entity, bool* degraded) {
    const std::string ek = EntityKey(ns, entity);
    auto it = st.counts.find(ek);  // the store calls below never touch st.counts
    if (!applies_elsewhere_ && it != st.counts.end() && it->second.base) {
      Counts c = *it->second.base;
      c += it->second.delta;
      return c;
    }
    if (!applies_elsewhere_ && it == st.counts.end()) {
      if (auto known = st.settled.find(ek); known != st.settled.end()) return known->second;
      if (auto known = st.settled_old.find(ek); known != st.settled_old.end()) {
        const Counts c = known->second;
        st.settled_old.erase(known);
        KeepSettled(st, ek, c);  // recently used: move it to the young generation
        return c;
      }
    }
    std::vector<Counts> out;
    std::vector<uint64_t> as_of;
    const std::string one[1] = {std::string(entity)};
    Counts c;
    bool read = false;
    if (Status s = applies_elsewhere_ ? store_->GetCountsAsOf(ns, one, &out, &as_of) : store_->GetCounts(ns, one, &out);
        s.ok()) {
      c = out[0];
      read = true;
    } else {
      if (degraded) *degraded = true;
      auto cached = st.cache->Get(ek);
      if (cached) return *cached;
    }
    if (it == st.counts.end()) {
      if (!applies_elsewhere_ && read) KeepSettled(st, ek, c);
      return c;
    }
    if (!applies_elsewhere_ && read) it->second.base = c;
    if (!applies_elsewhere_ || !read) {
      c += it->second.delta;
    } else {
      for (const auto& [seq, d] : it->second.parts) {
        if (seq > as_of[0]) c += d;
      }
    }
    return c;
  }

  Counts VisibleCountsByKey(ShardState& st, const std::string& ek, bool* degraded) {
    const size_t sep = ek.find('\0');
    return VisibleCounts(st, std::string_view(ek).substr(0, sep), std::string_view(ek).substr(sep + 1), degraded);
  }

  void RefreshCaches(ShardState& st, const std::string& ek) {
    auto w = st.watched.find(ek);
    const bool watched = w != st.watched.end() && w->second > clock_.Now();
    if (w != st.watched.end() && !watched) st.watched.erase(w);
    if (!watched) {
      // Only this shard may hold it: drop it; the next read refills it from the owner (here).
      st.cache->Erase(ek);
      return;
    }
    bool degraded = false;
    const Counts value = VisibleCountsByKey(st, ek, &degraded);
    if (degraded) {
      st.cache->Erase(ek);
      return;
    }
    st.cache->Update(ek, value);
    for (uint32_t s = 0; s < runtime_.size(); ++s) {
      if (s == st.index) continue;
      runtime_.shard(s).Post([this, s, ek, value] { shards_[s]->cache->Update(ek, value); });
    }
  }

  // ---- apply stage (the job) ----

  void ApplyTick(ShardState& st, bool everything) {
    while (!st.committed.empty()) {
      size_t n = std::min(st.committed.size(), options_.apply_batch_max);
      if (applies_elsewhere_) {
        // Another process applies; take the prefix it has applied already.
        const uint64_t through = store_->AppliedThrough();
        size_t k = 0;
        while (k < n && st.committed[k].seq <= through) ++k;
        if (k == 0) return;
        n = k;
      } else if (!everything && options_.apply_rate > 0) {
        const double per_shard = options_.apply_rate / static_cast<double>(runtime_.size());
        const SteadyTime now = clock_.Now();
        if (st.apply_refill != SteadyTime{}) {
          st.apply_tokens += per_shard * std::chrono::duration<double>(now - st.apply_refill).count();
        }
        st.apply_tokens = std::min(st.apply_tokens,
                                   per_shard * std::chrono::duration<double>(options_.flush_interval).count() * 2);
        st.apply_refill = now;
        n = std::min(n, static_cast<size_t>(std::max(0.0, st.apply_tokens)));
        if (n == 0) return;
        st.apply_tokens -= static_cast<double>(n);
      }
      std::vector<LogEntry> batch(st.committed.begin(), st.committed.begin() + static_cast<ptrdiff_t>(n));
      auto& m = GetMetrics();
      st.apply_epoch.fetch_add(1, std::memory_order_seq_cst);  // odd: the store changes under readers
      const SteadyTime apply_start = clock_.Now();
      Status applied = applies_elsewhere_ ? Status::Ok() : store_->Apply(batch);
      if (m.apply_seconds && !applies_elsewhere_) {
        m.apply_seconds->Observe(std::chrono::duration<double>(clock_.Now() - apply_start).count());
      }
      if (!applied.ok()) {
        st.apply_epoch.fetch_add(1, std::memory_order_seq_cst);
        const Status& s = applied;
        if (m.apply_errors) m.apply_errors->Inc();
        GetLogger("likes")->error("apply of {} entries failed (retrying next window): {}", n, s.ToString());
        return;
      }
      st.committed.erase(st.committed.begin(), st.committed.begin() + static_cast<ptrdiff_t>(n));
      if (m.applied) m.applied->Inc(n);
      if (m.log_lag) m.log_lag->Sub(static_cast<int64_t>(n));
      std::vector<std::string> touched;
      for (const LogEntry& e : batch) {
        auto ko = st.overlay.find(RecordKey(e.ns, e.user, e.entity));
        if (ko != st.overlay.end()) {
          if (ko->second.unapplied > 0) --ko->second.unapplied;
          if (ko->second.unapplied == 0 && ko->second.inflight == 0) {
            UnmarkPending(st, ko->first);
            st.overlay.erase(ko);
          }
        }
        std::string ek = EntityKey(e.ns, e.entity);
        auto eo = st.counts.find(ek);
        if (eo != st.counts.end()) {
          Counts d = DeltaOf(e.from, e.to);
          eo->second.delta.likes -= d.likes;
          eo->second.delta.dislikes -= d.dislikes;
          if (eo->second.base) *eo->second.base += d;  // the store holds it now
          if (!eo->second.parts.empty()) eo->second.parts.pop_front();
          if (--eo->second.refs == 0) {
            if (eo->second.base) KeepSettled(st, eo->first, *eo->second.base);
            UnmarkPending(st, eo->first);
            st.counts.erase(eo);
          }
        }
        if (e.to == LikeState::kLiked) st.trim.insert(EntityKey(e.ns, e.user));
        touched.push_back(std::move(ek));
      }
      st.apply_epoch.fetch_add(1, std::memory_order_seq_cst);  // even: overlay and store agree
      if (bus_ && bus_->HasCountSubscribers()) {
        std::sort(touched.begin(), touched.end());
        touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
        for (const std::string& ek : touched) {
          bool degraded = false;
          Counts c = VisibleCountsByKey(st, ek, &degraded);
          if (degraded) continue;
          const size_t sep = ek.find('\0');
          auto b = by_ns_.find(ek.substr(0, sep));
          if (b == by_ns_.end()) continue;
          bus_->Publish(CountEvent{b->second->id, ek.substr(sep + 1), c});
        }
      }
      if (!everything) return;
    }
  }

  void TrimTick(ShardState& st) {
    std::unordered_set<std::string> keys;
    keys.swap(st.trim);
    std::unordered_map<const Business*, std::vector<std::string>> by_business;
    for (const std::string& key : keys) {
      const size_t sep = key.find('\0');
      auto b = by_ns_.find(key.substr(0, sep));
      if (b != by_ns_.end()) by_business[b->second].push_back(key.substr(sep + 1));
    }
    for (const auto& [b, users] : by_business) {
      if (Status s = store_->TrimUserLists(b->ns, users, b->user_list_max); !s.ok()) {
        GetLogger("likes")->warn("trim of like lists failed: {}", s.ToString());
      }
    }
  }

  // ---- read path ----

  void States(std::string business, std::string user, std::vector<std::string> entities,
              std::function<void(Result<StatesResult>)> done) {
    const Business* b = FindBusiness(business);
    if (!b) return done(InvalidArgument("unknown business '" + business + "'"));
    if (io_pool_ && !io_pool_->IsCurrent()) {
      io_pool_->Submit([this, b, user = std::move(user), entities = std::move(entities),
                        done = std::move(done)]() mutable {
        StatesOf(b, std::move(user), std::move(entities), std::move(done));
      });
      return;
    }
    StatesOf(b, std::move(user), std::move(entities), std::move(done));
  }

  void StatesOf(const Business* b, std::string user, std::vector<std::string> entities,
                std::function<void(Result<StatesResult>)> done) {
    struct Gather {
      StatesResult result;
      std::atomic<size_t> left{0};
      std::atomic<bool> degraded{false};
      std::function<void(Result<StatesResult>)> done;
    };
    auto g = std::make_shared<Gather>();
    g->result.states.assign(entities.size(), LikeState::kNone);
    g->done = std::move(done);
    // Read the store here; only keys that may have acknowledged-but-unapplied changes go to
    // their owners (MayBePending). Under a steady state that is none of them: no hop.
    // The filter probes land on random slots of 2 MiB per shard, each a likely cache miss
    // (~8% of a read's CPU when they were taken one by one after the store read); their lines
    // are fetched now, all at once, and read after the store read.
    std::vector<uint32_t> owners(entities.size());
    std::vector<size_t> slots(entities.size());
    std::string key = RecordKey(b->ns, user, "");  // the record keys, built in one buffer
    const size_t prefix = key.size();
    for (size_t i = 0; i < entities.size(); ++i) {
      owners[i] = OwnerOf(b->ns, entities[i]);
      key.resize(prefix);
      key.append(entities[i]);
      slots[i] = PendingSlot(key);
      __builtin_prefetch(&shards_[owners[i]]->pending[slots[i]]);
    }
    std::vector<uint64_t> epochs(runtime_.size());
    for (uint32_t s = 0; s < runtime_.size(); ++s) epochs[s] = shards_[s]->apply_epoch.load(std::memory_order_seq_cst);
    std::vector<std::optional<Record>> records;
    const bool read = store_->GetRecords(b->ns, user, entities, &records).ok();
    std::map<uint32_t, std::vector<size_t>> by_owner;
    for (size_t i = 0; i < entities.size(); ++i) {
      const uint32_t owner = owners[i];
      if (read && !MayBePending(*shards_[owner], slots[i], epochs[owner])) {
        if (records[i]) g->result.states[i] = records[i]->state;
        continue;
      }
      by_owner[owner].push_back(i);
    }
    if (by_owner.empty()) return g->done(std::move(g->result));
    g->left.store(by_owner.size());
    auto shared = std::make_shared<std::vector<std::string>>(std::move(entities));
    for (auto& group : by_owner) {
      const uint32_t owner = group.first;  // (clang 14 cannot capture structured bindings)
      auto& indices = group.second;
      runtime_.shard(owner).Dispatch([this, owner, b, user, shared, g, indices = std::move(indices)] {
        ShardState& st = *shards_[owner];
        std::vector<std::string> missing;
        std::vector<size_t> missing_at;
        for (size_t i : indices) {
          auto it = st.overlay.find(RecordKey(b->ns, user, (*shared)[i]));
          if (it != st.overlay.end()) {
            g->result.states[i] = it->second.visible.state;
          } else {
            missing.push_back((*shared)[i]);
            missing_at.push_back(i);
          }
        }
        if (!missing.empty()) {
          std::vector<std::optional<Record>> records;
          if (Status s = store_->GetRecords(b->ns, user, missing, &records); s.ok()) {
            for (size_t k = 0; k < missing.size(); ++k) {
              if (records[k]) g->result.states[missing_at[k]] = records[k]->state;
            }
          } else {
            g->degraded.store(true);
          }
        }
        if (g->left.fetch_sub(1, std::memory_order_acq_rel) == 1) {
          g->result.degraded = g->degraded.load();
          if (g->result.degraded) {
            if (auto* c = GetMetrics().degraded) c->Inc();
          }
          g->done(std::move(g->result));
        }
      });
    }
  }

  void CountsOf(std::string business, std::vector<std::string> entities,
                std::function<void(Result<CountsResult>)> done) {
    const Business* b = FindBusiness(business);
    if (!b) return done(InvalidArgument("unknown business '" + business + "'"));
    net::Shard* here = net::Runtime::Current();
    if (!here) {
      // Off the runtime (gRPC threads): run on a shard so the cache and detector stay shard-owned.
      const uint32_t s = OwnerOf(b->ns, entities.empty() ? std::string_view() : std::string_view(entities[0]));
      runtime_.shard(s).Post([this, business = std::move(business), entities = std::move(entities),
                              done = std::move(done)]() mutable {
        CountsOf(std::move(business), std::move(entities), std::move(done));
      });
      return;
    }
    const uint32_t origin = here->index();
    ShardState& st = *shards_[origin];
    auto g = std::make_shared<CountsGather>();
    g->result.counts.assign(entities.size(), Counts{});
    g->done = std::move(done);
    auto& m = GetMetrics();
    std::map<uint32_t, std::vector<CountsMiss>> by_owner;
    // Cold misses are read from the store here unless they may be pending (see States); hot
    // ones always go to the owner, which then keeps this shard's cached copy fresh.
    std::vector<uint64_t> epochs(runtime_.size());
    for (uint32_t s = 0; s < runtime_.size(); ++s) epochs[s] = shards_[s]->apply_epoch.load(std::memory_order_seq_cst);
    std::vector<std::string> cold;
    std::vector<CountsMiss> cold_misses;
    for (size_t i = 0; i < entities.size(); ++i) {
      std::string ek = EntityKey(b->ns, entities[i]);
      const bool hot = st.hot->Record(ek);
      if (auto cached = st.cache->Get(ek)) {
        g->result.counts[i] = *cached;
        if (m.cache_hits) m.cache_hits->Inc();
        continue;
      }
      if (m.cache_misses) m.cache_misses->Inc();
      if (hot) {
        by_owner[OwnerOf(b->ns, entities[i])].push_back({i, std::move(ek), hot});
      } else {
        cold.push_back(entities[i]);
        cold_misses.push_back({i, std::move(ek), hot});
      }
    }
    if (!cold.empty() && io_pool_) {
      // The cluster engine: read the cold ones on the I/O pool, then carry on here.
      io_pool_->Submit([this, origin, b, g, cold = std::move(cold), cold_misses = std::move(cold_misses),
                        epochs = std::move(epochs), by_owner = std::move(by_owner)]() mutable {
        std::vector<Counts> values;
        const bool read = store_->GetCounts(b->ns, cold, &values).ok();
        runtime_.shard(origin).Post([this, origin, b, g, cold = std::move(cold), cold_misses = std::move(cold_misses),
                                     epochs = std::move(epochs), by_owner = std::move(by_owner),
                                     values = std::move(values), read]() mutable {
          CountsFromOwners(origin, g, ColdToOwners(b, g, cold, cold_misses, epochs, values, read, std::move(by_owner)));
        });
      });
      return;
    }
    if (!cold.empty()) {
      std::vector<Counts> values;
      const bool read = store_->GetCounts(b->ns, cold, &values).ok();
      by_owner = ColdToOwners(b, g, cold, cold_misses, epochs, values, read, std::move(by_owner));
    }
    CountsFromOwners(origin, g, std::move(by_owner));
  }

  struct CountsGather {
    CountsResult result;
    size_t left = 0;  // touched on the origin shard only
    std::function<void(Result<CountsResult>)> done;
  };
  struct CountsMiss {
    size_t index;
    std::string key;
    bool hot;
  };

  // Cold misses read from the store: answered when nothing may be pending for them here, else
  // left to their owners (added to `by_owner`).
  std::map<uint32_t, std::vector<CountsMiss>> ColdToOwners(const Business* b, const std::shared_ptr<CountsGather>& g,
                                                           const std::vector<std::string>& cold,
                                                           std::vector<CountsMiss>& cold_misses,
                                                           const std::vector<uint64_t>& epochs,
                                                           const std::vector<Counts>& values, bool read,
                                                           std::map<uint32_t, std::vector<CountsMiss>> by_owner) {
    for (size_t k = 0; k < cold.size(); ++k) {
      const uint32_t owner = OwnerOf(b->ns, cold[k]);
      if (read && !MayBePending(*shards_[owner], cold_misses[k].key, epochs[owner])) {
        g->result.counts[cold_misses[k].index] = values[k];
      } else {
        by_owner[owner].push_back(std::move(cold_misses[k]));
      }
    }
    return by_owner;
  }

  // The misses their owners answer (hot ones, and those that may be pending); on the origin shard.
  void CountsFromOwners(uint32_t origin, const std::shared_ptr<CountsGather>& g,
                        std::map<uint32_t, std::vector<CountsMiss>> by_owner) {
    if (by_owner.empty()) return g->done(std::move(g->result));
    g->left = by_owner.size();
    auto finish_part = [this, origin, g](std::vector<CountsMiss> part, std::vector<Counts> values, bool degraded) {
      ShardState& o = *shards_[origin];
      for (size_t k = 0; k < part.size(); ++k) {
        g->result.counts[part[k].index] = values[k];
        if (part[k].hot && !degraded) o.cache->Put(part[k].key, values[k]);
      }
      if (degraded) g->result.degraded = true;
      if (--g->left == 0) {
        if (g->result.degraded) {
          if (auto* c = GetMetrics().degraded) c->Inc();
        }
        g->done(std::move(g->result));
      }
    };
    for (auto& group : by_owner) {
      const uint32_t owner = group.first;
      auto& part = group.second;
      auto compute = [this, owner](const std::vector<CountsMiss>& part, bool* degraded) {
        ShardState& os = *shards_[owner];
        std::vector<Counts> values;
        values.reserve(part.size());
        for (const CountsMiss& miss : part) {
          values.push_back(VisibleCountsByKey(os, miss.key, degraded));
          if (miss.hot) os.watched[miss.key] = clock_.Now() + options_.cache_ttl;
        }
        return values;
      };
      if (owner == origin) {
        bool degraded = false;
        auto values = compute(part, &degraded);
        finish_part(std::move(part), std::move(values), degraded);
        continue;
      }
      runtime_.shard(owner).Post([this, owner, origin, compute, finish_part, part = std::move(part)]() mutable {
        bool degraded = false;
        auto values = compute(part, &degraded);
        runtime_.shard(origin).Post([finish_part, part = std::move(part), values = std::move(values),
                                     degraded]() mutable {
          finish_part(std::move(part), std::move(values), degraded);
        });
      });
    }
  }

  // ---- lifecycle ----

  Status Start() {
    CHORUS_ASSIGN_OR_RETURN(std::vector<LogEntry> pending, store_->PendingLog());
    if (!pending.empty()) {
      GetLogger("likes")->info("applying {} log entries left from before the last stop", pending.size());
      for (size_t at = 0; at < pending.size(); at += 10000) {
        const size_t n = std::min<size_t>(10000, pending.size() - at);
        CHORUS_RETURN_IF_ERROR(store_->Apply(std::span<const LogEntry>(pending).subspan(at, n)));
      }
    }
    for (uint32_t s = 0; s < runtime_.size(); ++s) {
      runtime_.Post(s, [this, s] {
        ShardState& st = *shards_[s];
        if (st.stopped) return;
        net::Shard& shard = runtime_.shard(s);
        st.apply_timer = shard.RunEvery(options_.flush_interval, [this, &st] { ApplyTick(st, false); });
        st.trim_timer = shard.RunEvery(options_.trim_interval, [this, &st] { TrimTick(st); });
      });
    }
    return Status::Ok();
  }

  void Stop() {
    if (io_pool_) io_pool_->Stop();
    committer_.Drain();
    for (uint32_t s = 0; s < runtime_.size(); ++s) {
      std::promise<void> stopped;
      std::future<void> wait = stopped.get_future();
      runtime_.Post(s, [this, s, stopped = std::move(stopped)]() mutable {
        ShardState& st = *shards_[s];
        net::Shard& shard = runtime_.shard(s);
        st.stopped = true;
        if (st.apply_timer) shard.Cancel(st.apply_timer);
        if (st.trim_timer) shard.Cancel(st.trim_timer);
        ApplyTick(st, /*everything=*/true);
        TrimTick(st);
        stopped.set_value();
      });
      wait.wait_for(std::chrono::seconds(30));
    }
    committer_.Stop();
  }

  net::Runtime& runtime_;
  const net::TokenSigner& signer_;
  const LikesOptions options_;
  std::shared_ptr<LikeStore> store_;
  std::shared_ptr<EventBus> bus_;
  const Clock& clock_;
  LogCommitter committer_;
  const bool applies_elsewhere_;
  // The cluster engine's store calls block on the network: reads and a write's record reads run
  // here, not on the shard threads (null for the embedded engine, whose reads are local).
  std::unique_ptr<BlockingPool> io_pool_;
  RateLimiter limiter_;
  std::unordered_map<std::string, const Business*> by_id_;
  std::unordered_map<std::string, const Business*> by_ns_;
  std::unordered_map<std::string, BusinessMetrics> metrics_;
  std::vector<std::unique_ptr<ShardState>> shards_;
};

// ---------------------------------------------------------------------------------------------

LikesService::LikesService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LikesService::~LikesService() = default;

Result<std::unique_ptr<LikesService>> LikesService::Create(net::Runtime& runtime, const net::TokenSigner& signer,
                                                           LikesOptions options, std::shared_ptr<LikeStore> store,
                                                           std::shared_ptr<EventBus> bus, const Clock& clock) {
  if (!store) return InvalidArgument("likes: a store is required");
  if (options.businesses.empty()) return InvalidArgument("likes: at least one business must be configured");
  std::unordered_set<std::string> ids, namespaces;
  for (const Business& b : options.businesses) {
    CHORUS_RETURN_IF_ERROR(ValidateBusiness(b));
    if (!ids.insert(b.id).second) return InvalidArgument("likes: business '" + b.id + "' configured twice");
    if (!namespaces.insert(b.ns).second) {
      return InvalidArgument("likes: namespace '" + b.ns + "' used by two businesses");
    }
  }
  if (options.flush_interval <= Duration::zero()) return InvalidArgument("likes.flush_interval must be > 0");
  if (options.apply_batch_max == 0) return InvalidArgument("likes.apply_batch_max must be > 0");
  return std::unique_ptr<LikesService>(new LikesService(std::make_unique<Impl>(
      runtime, signer, std::move(options), std::move(store), std::move(bus), clock)));
}

Status LikesService::Start() { return impl_->Start(); }
void LikesService::Stop() { impl_->Stop(); }
const LikesOptions& LikesService::options() const { return impl_->options_; }
const net::TokenSigner& LikesService::signer() const { return impl_->signer_; }
bool LikesService::keeps_action_order() const { return !impl_->applies_elsewhere_; }
const Business* LikesService::FindBusiness(std::string_view id) const { return impl_->FindBusiness(id); }

Status LikesService::ValidateAct(const ActRequest& r) const {
  if (!FindBusiness(r.business)) return InvalidArgument("unknown business '" + r.business + "'");
  CHORUS_RETURN_IF_ERROR(ValidateId("user", r.user));
  CHORUS_RETURN_IF_ERROR(ValidateId("entity", r.entity));
  if (!r.owner.empty()) CHORUS_RETURN_IF_ERROR(ValidateId("owner", r.owner));
  return Status::Ok();
}

Status LikesService::AdmitWrite(const net::TokenClaims& claims, const ActRequest& r, std::string_view client_ip) {
  CHORUS_RETURN_IF_ERROR(ValidateAct(r));
  if (claims.kind == net::TokenClaims::Kind::kService) {
    CHORUS_RETURN_IF_ERROR(net::RequireScope(claims, "likes.write"));
  } else if (claims.subject != r.user) {
    return PermissionDenied("a user token may only act for its own user ('" + claims.subject + "')");
  }
  if (!impl_->options_.rate_limits) return Status::Ok();
  const Business& b = *FindBusiness(r.business);
  const std::string_view user = r.user;
  std::string key;
  key.reserve(4 + b.id.size() + std::max(user.size(), client_ip.size()));
  key.append("u:").append(b.id).push_back(':');
  key.append(user);
  if (!impl_->limiter_.Allow(key, b.user_rate)) {
    return ResourceExhausted("rate limit: too many writes by user '" + std::string(user) + "' in business '" + b.id + "'");
  }
  key.assign("ip:").append(b.id).push_back(':');
  key.append(client_ip);
  if (!impl_->limiter_.Allow(key, b.ip_rate)) {
    return ResourceExhausted("rate limit: too many writes from " + std::string(client_ip) + " in business '" + b.id + "'");
  }
  return Status::Ok();
}

void LikesService::Act(std::vector<ActRequest> requests, ActCallback done) {
  impl_->Act(std::move(requests), std::move(done));
}
void LikesService::States(std::string business, std::string user, std::vector<std::string> entities,
                          std::function<void(Result<StatesResult>)> done) {
  impl_->States(std::move(business), std::move(user), std::move(entities), std::move(done));
}
void LikesService::CountsOf(std::string business, std::vector<std::string> entities,
                            std::function<void(Result<CountsResult>)> done) {
  impl_->CountsOf(std::move(business), std::move(entities), std::move(done));
}

Result<ListPage> LikesService::UserLikes(std::string_view business, std::string_view user, std::string_view cursor,
                                         size_t limit) {
  const Business* b = FindBusiness(business);
  if (!b) return InvalidArgument("unknown business '" + std::string(business) + "'");
  return impl_->store_->UserLikes(b->ns, user, cursor, limit);
}

Result<ListPage> LikesService::Likers(std::string_view business, std::string_view entity, std::string_view cursor,
                                      size_t limit) {
  const Business* b = FindBusiness(business);
  if (!b) return InvalidArgument("unknown business '" + std::string(business) + "'");
  return impl_->store_->Likers(b->ns, entity, cursor, limit);
}

Result<int64_t> LikesService::Received(std::string_view business, std::string_view owner) {
  const Business* b = FindBusiness(business);
  if (!b) return InvalidArgument("unknown business '" + std::string(business) + "'");
  return impl_->store_->GetReceived(b->ns, owner);
}

}  // namespace chorus::likes
