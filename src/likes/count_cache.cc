#include "likes/count_cache.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <iterator>

// Header-only mode: the functions are compiled into this file, so no library to link.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace chorus::likes {
namespace {

// Counters are halved after this many counted accesses per unit of capacity (Caffeine's value).
constexpr uint64_t kSamplesPerEntry = 10;
constexpr int kCountersPerKey = 4;
constexpr uint32_t kMaxCount = 15;  // 4 bits
// Each nibble of every word shifted right by one, the bit that would cross into the next nibble
// masked off: halves sixteen counters at once.
constexpr uint64_t kHalfMask = 0x7777777777777777ULL;

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

uint64_t HashKey(std::string_view key) { return XXH3_64bits(key.data(), key.size()); }

}  // namespace

// ---- FrequencySketch ---------------------------------------------------------------------------

WTinyLfuCountCache::FrequencySketch::FrequencySketch(size_t capacity)
    // One word (16 counters) per unit of capacity, rounded up to a power of two for masking:
    // with four counters per key that keeps collisions, and so overestimates, rare.
    : table_(std::bit_ceil(std::max<size_t>(capacity, 8))),
      mask_(table_.size() - 1),
      sample_size_(kSamplesPerEntry * std::max<size_t>(capacity, 1)) {}

void WTinyLfuCountCache::FrequencySketch::Locate(uint64_t hash, int i, size_t* word, int* shift) const {
  const uint64_t x = Mix(hash + static_cast<uint64_t>(i + 1) * 0x9E3779B97F4A7C15ULL);
  *word = static_cast<size_t>(x) & mask_;
  *shift = static_cast<int>(x >> 60) * 4;  // which of the word's 16 nibbles
}

void WTinyLfuCountCache::FrequencySketch::Increment(uint64_t hash) {
  bool added = false;
  for (int i = 0; i < kCountersPerKey; ++i) {
    size_t word;
    int shift;
    Locate(hash, i, &word, &shift);
    if (((table_[word] >> shift) & 0xF) < kMaxCount) {
      table_[word] += uint64_t{1} << shift;
      added = true;
    }
  }
  // A key whose counters are all saturated adds nothing, so it does not hasten the aging.
  if (added && ++additions_ >= sample_size_) Halve();
}

uint32_t WTinyLfuCountCache::FrequencySketch::Estimate(uint64_t hash) const {
  uint32_t best = kMaxCount;
  for (int i = 0; i < kCountersPerKey; ++i) {
    size_t word;
    int shift;
    Locate(hash, i, &word, &shift);
    best = std::min(best, static_cast<uint32_t>((table_[word] >> shift) & 0xF));
  }
  return best;
}

void WTinyLfuCountCache::FrequencySketch::Halve() {
  for (uint64_t& w : table_) w = (w >> 1) & kHalfMask;
  additions_ /= 2;
}

// ---- WTinyLfuCountCache ------------------------------------------------------------------------

WTinyLfuCountCache::WTinyLfuCountCache(const Clock& clock) : WTinyLfuCountCache(clock, Options{}) {}

WTinyLfuCountCache::WTinyLfuCountCache(const Clock& clock, Options options)
    : clock_(clock),
      options_(options),
      window_cap_(options.capacity == 0 ? 0 : std::max<size_t>(1, options.capacity / 100)),
      main_cap_(options.capacity - window_cap_),
      protected_cap_(main_cap_ * 8 / 10),
      sketch_(options.capacity) {
  index_.reserve(options.capacity);
}

WTinyLfuCountCache::List& WTinyLfuCountCache::ListOf(Segment s) {
  switch (s) {
    case Segment::kWindow:
      return window_;
    case Segment::kProbation:
      return probation_;
    case Segment::kProtected:
      break;
  }
  return protected_;
}

void WTinyLfuCountCache::Remove(List::iterator it) {
  index_.erase(it->key);  // before the node (and the key the index's view points into) goes
  ListOf(it->segment).erase(it);
}

void WTinyLfuCountCache::OnHit(List::iterator it) {
  switch (it->segment) {
    case Segment::kWindow:
      window_.splice(window_.begin(), window_, it);
      return;
    case Segment::kProtected:
      protected_.splice(protected_.begin(), protected_, it);
      return;
    case Segment::kProbation:
      break;
  }
  it->segment = Segment::kProtected;
  protected_.splice(protected_.begin(), probation_, it);
  if (protected_.size() > protected_cap_) {
    auto demoted = std::prev(protected_.end());
    demoted->segment = Segment::kProbation;
    probation_.splice(probation_.begin(), protected_, demoted);
  }
}

void WTinyLfuCountCache::EvictFromWindow(SteadyTime now) {
  while (window_.size() > window_cap_) {
    const auto candidate = std::prev(window_.end());
    if (Expired(*candidate, now)) {
      Remove(candidate);
      ++stats_.expired;
      continue;
    }
    if (main_cap_ == 0) {  // capacity 1: the window is the whole cache
      Remove(candidate);
      ++stats_.evicted;
      continue;
    }
    if (main_size() >= main_cap_) {
      List& victims = probation_.empty() ? protected_ : probation_;
      const auto victim = std::prev(victims.end());
      if (Expired(*victim, now)) {
        Remove(victim);
        ++stats_.expired;
      } else if (sketch_.Estimate(candidate->hash) > sketch_.Estimate(victim->hash)) {
        Remove(victim);
        ++stats_.evicted;
      } else {
        // Ties go to the incumbent: a one-off key must not push out another one-off key that
        // has been around longer, let alone a frequent one.
        Remove(candidate);
        ++stats_.rejected;
        continue;
      }
    }
    candidate->segment = Segment::kProbation;
    probation_.splice(probation_.begin(), window_, candidate);
    ++stats_.admitted;
  }
  assert(window_.size() <= window_cap_ && main_size() <= main_cap_);
}

std::optional<Counts> WTinyLfuCountCache::Get(std::string_view key) {
  sketch_.Increment(HashKey(key));
  const auto found = index_.find(key);
  if (found == index_.end()) {
    ++stats_.misses;
    return std::nullopt;
  }
  const auto it = found->second;
  if (Expired(*it, clock_.Now())) {
    Remove(it);
    ++stats_.expired;
    ++stats_.misses;
    return std::nullopt;
  }
  ++stats_.hits;
  OnHit(it);
  return it->value;
}

void WTinyLfuCountCache::Put(std::string_view key, const Counts& value) {
  if (options_.capacity == 0) return;
  const SteadyTime now = clock_.Now();
  if (const auto found = index_.find(key); found != index_.end()) {
    found->second->value = value;
    found->second->expiry = now + options_.ttl;
    return;
  }
  window_.push_front(Entry{std::string(key), HashKey(key), value, now + options_.ttl, Segment::kWindow});
  index_.emplace(window_.front().key, window_.begin());
  EvictFromWindow(now);
}

bool WTinyLfuCountCache::Update(std::string_view key, const Counts& value) {
  const auto found = index_.find(key);
  if (found == index_.end()) return false;
  const auto it = found->second;
  const SteadyTime now = clock_.Now();
  if (Expired(*it, now)) {
    Remove(it);
    ++stats_.expired;
    return false;
  }
  it->value = value;
  it->expiry = now + options_.ttl;
  return true;
}

void WTinyLfuCountCache::Erase(std::string_view key) {
  if (const auto found = index_.find(key); found != index_.end()) Remove(found->second);
}

uint32_t WTinyLfuCountCache::Frequency(std::string_view key) const { return sketch_.Estimate(HashKey(key)); }

}  // namespace chorus::likes
