// CountCache: a bounded cache of hot entities' like/dislike counts with a short TTL, and its
// in-process implementation, WTinyLfuCountCache.
//
// The likes service reads counts far more often than they change, and a few entities (those
// the HotKeyDetector in hot_keys.h flags) draw most reads. The owner shard caches those counts:
// a count read consults the cache, a miss reads the store and Put()s the result, and the
// owner's own writes Update() a cached entry so it never serves a stale count of its own
// writes. The TTL bounds how stale a count written elsewhere (a replayed log, a repair) can be.
// CountCache is the interface, so a shared Redis-backed cache can replace the local one later
// (docs/likes.md, "Interfaces").
//
// WTinyLfuCountCache follows Caffeine's W-TinyLFU (Einziger, Friedman, Manes: "TinyLFU: A Highly
// Efficient Cache Admission Policy"):
//
//   new entry ─▶ window LRU (1% of capacity, ≥ 1) ─▶ candidate ─┬─ admitted ─▶ probation ─┐
//                                                               └─ rejected (dropped)     │
//                       main SLRU (the other 99%):  protected (80%) ◀── hit ──────────────┘
//                                                   └─ overflow demoted to probation's MRU end
//
//   - Every entry enters the window. The window's least recently used entry, when the window
//     overflows, is a candidate for the main region: it goes in for free while the main region
//     has room; otherwise it is compared with the main region's victim (probation's LRU entry,
//     or protected's when probation is empty) and replaces it only if its estimated access
//     frequency is strictly higher. A burst of one-off keys (a scan, a crawler) therefore
//     passes through the window without displacing the established hot set: scan resistance,
//     the point of TinyLFU, which a plain LRU lacks.
//   - A hit in probation promotes the entry to protected; protected's overflow is demoted back
//     to probation. A hit in the window or protected moves the entry to its segment's MRU end.
//   - Frequencies are estimated by a count-min sketch of 4-bit counters (four counters per key,
//     sixteen to a 64-bit word, about 16 counters per unit of capacity). Every Get() counts, hit
//     or miss: a miss is what makes a key a candidate worth admitting. After 10 x capacity
//     counted accesses every counter is halved, so past popularity fades and a new hot set can
//     displace an old one. There is no doorkeeper; Caffeine's random admission of warm
//     candidates (a defence against hash flooding) is left out to keep the cache deterministic.
//   - Every entry expires at (time of its Put/Update) + ttl on the injected Clock's steady time.
//     An expired entry is never returned: Get() and Update() drop it and report a miss/absence,
//     and the eviction path drops expired victims and candidates before comparing frequencies.
//     Expiry is lazy, so size() may include expired entries not yet touched; memory is bounded
//     by capacity all the same.
//
// Put() and Update() do not count as accesses (the Get() whose miss led to the Put() already
// did) and do not move an entry; they replace its value and restart its TTL.
//
// Cost: Get/Put/Update/Erase are O(1): two hashes of the key (XXH3 for the sketch, std::hash for
// the index), a hash-map lookup, list splices and four sketch counters; plus, every 10 x capacity
// Get()s, one halving pass over the sketch's ~capacity words (amortised O(1)). Memory: at most
// capacity entries (key, counts, expiry, list and map nodes: ~130 bytes plus a key longer than
// 15 bytes) and 8-16 bytes of sketch per unit of capacity.
//
// Thread rules: not thread-safe. Each shard owns one cache and calls it from its own thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/clock.h"
#include "likes/model.h"

namespace chorus::likes {

class CountCache {
 public:
  struct Stats {
    uint64_t hits = 0;      // Get() returned a value
    uint64_t misses = 0;    // Get() returned nothing (absent or expired)
    uint64_t admitted = 0;  // window candidates that entered the main region
    uint64_t rejected = 0;  // window candidates dropped by the admission filter
    uint64_t evicted = 0;   // live entries dropped to make room (victims of admitted candidates)
    uint64_t expired = 0;   // entries dropped because their TTL had passed
    friend bool operator==(const Stats&, const Stats&) = default;
  };

  virtual ~CountCache() = default;

  // The cached counts of `key`, if present and not expired.
  virtual std::optional<Counts> Get(std::string_view key) = 0;
  // Inserts or replaces `key`'s counts with a fresh TTL. May evict another entry, or (through
  // admission) not keep this one for long.
  virtual void Put(std::string_view key, const Counts& value) = 0;
  // Replaces `key`'s counts and restarts its TTL only if it is present and not expired.
  // Returns whether it was.
  virtual bool Update(std::string_view key, const Counts& value) = 0;
  virtual void Erase(std::string_view key) = 0;
  // Entries held (expired ones may be counted until they are dropped).
  virtual size_t size() const = 0;
  virtual Stats stats() const = 0;
};

class WTinyLfuCountCache final : public CountCache {
 public:
  struct Options {
    size_t capacity = 10000;  // entries; 0 caches nothing
    Duration ttl = std::chrono::seconds(2);
  };

  explicit WTinyLfuCountCache(const Clock& clock);
  WTinyLfuCountCache(const Clock& clock, Options options);

  WTinyLfuCountCache(const WTinyLfuCountCache&) = delete;
  WTinyLfuCountCache& operator=(const WTinyLfuCountCache&) = delete;

  std::optional<Counts> Get(std::string_view key) override;
  void Put(std::string_view key, const Counts& value) override;
  bool Update(std::string_view key, const Counts& value) override;
  void Erase(std::string_view key) override;
  size_t size() const override { return index_.size(); }
  Stats stats() const override { return stats_; }

  // The sketch's access-frequency estimate for `key` (0..15); for diagnostics and tests.
  uint32_t Frequency(std::string_view key) const;

  const Options& options() const { return options_; }
  // Segment capacities: window + probation + protected == capacity.
  size_t window_capacity() const { return window_cap_; }
  size_t protected_capacity() const { return protected_cap_; }

 private:
  // A count-min sketch of 4-bit saturating counters, four per key, with periodic halving.
  class FrequencySketch {
   public:
    explicit FrequencySketch(size_t capacity);
    void Increment(uint64_t hash);
    uint32_t Estimate(uint64_t hash) const;

   private:
    // Word and nibble of the key's i-th counter.
    void Locate(uint64_t hash, int i, size_t* word, int* shift) const;
    void Halve();

    std::vector<uint64_t> table_;
    size_t mask_;
    uint64_t additions_ = 0;
    uint64_t sample_size_;
  };

  enum class Segment : uint8_t { kWindow, kProbation, kProtected };
  struct Entry {
    std::string key;
    uint64_t hash;
    Counts value;
    SteadyTime expiry;
    Segment segment;
  };
  using List = std::list<Entry>;

  List& ListOf(Segment s);
  bool Expired(const Entry& e, SteadyTime now) const { return now >= e.expiry; }
  void Remove(List::iterator it);
  void OnHit(List::iterator it);
  // Moves window overflow to the main region, admitting or rejecting each candidate.
  void EvictFromWindow(SteadyTime now);
  size_t main_size() const { return probation_.size() + protected_.size(); }

  const Clock& clock_;
  Options options_;
  size_t window_cap_;
  size_t main_cap_;
  size_t protected_cap_;
  FrequencySketch sketch_;
  Stats stats_;

  // MRU at the front, LRU at the back. Entries move between lists by splice, so the keys the
  // index points into never move.
  List window_;
  List probation_;
  List protected_;
  std::unordered_map<std::string_view, List::iterator> index_;
};

}  // namespace chorus::likes
