#include "likes/hot_keys.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <cmath>
#include <limits>

// Header-only mode: the functions are compiled into this file, so no library to link.
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace chorus::likes {
namespace {

// HeavyKeeper's decay base (the paper's b); 1.08 is its recommended value.
constexpr double kDecayBase = 1.08;
// b^-c for c beyond this is below 1e-33: such a count is never decayed in practice.
constexpr size_t kDecayTableSize = 1024;

// For each count c: the decay probability b^-c and log(1 - b^-c), shared by every detector.
struct DecayTables {
  DecayTables() {
    for (size_t c = 0; c < kDecayTableSize; ++c) {
      p[c] = std::pow(kDecayBase, -static_cast<double>(c));
      log_keep[c] = c == 0 ? 0 : std::log1p(-p[c]);
    }
  }
  std::array<double, kDecayTableSize> p;
  std::array<double, kDecayTableSize> log_keep;
};

const DecayTables& Decay() {
  static const DecayTables tables;
  return tables;
}

uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

uint32_t SaturatingAdd(uint32_t a, uint64_t b) {
  const uint64_t sum = uint64_t{a} + std::min<uint64_t>(b, std::numeric_limits<uint32_t>::max());
  return static_cast<uint32_t>(std::min<uint64_t>(sum, std::numeric_limits<uint32_t>::max()));
}

HotKeyDetector::Options Sanitize(HotKeyDetector::Options o) {
  o.top_k = std::max<size_t>(o.top_k, 1);
  o.width = std::max<size_t>(o.width, 1);
  o.depth = std::max<size_t>(o.depth, 1);
  o.slots = std::max<size_t>(o.slots, 1);
  const Duration min_window(static_cast<Duration::rep>(o.slots));
  if (o.window < min_window) o.window = min_window;
  return o;
}

}  // namespace

HotKeyDetector::HotKeyDetector(const Clock& clock) : HotKeyDetector(clock, Options{}) {}

HotKeyDetector::HotKeyDetector(const Clock& clock, Options options)
    : clock_(clock),
      options_(Sanitize(options)),
      slot_length_(options_.window / static_cast<Duration::rep>(options_.slots)),
      rng_(options_.seed),
      buckets_(options_.slots * options_.depth * options_.width),
      current_start_(clock.Now()) {
  heap_.reserve(options_.top_k);
  pos_.reserve(options_.top_k);
}

HotKeyDetector::Hashed HotKeyDetector::Hash(std::string_view key) const {
  return FromHash(XXH3_64bits_withSeed(key.data(), key.size(), options_.seed));
}

size_t HotKeyDetector::Index(uint64_t hash, size_t row) const {
  // Each row needs its own bucket choice; re-mixing the one hash with a per-row constant makes
  // the rows independent enough without hashing the key `depth` times.
  return static_cast<size_t>(Mix(hash + (row + 1) * 0x9E3779B97F4A7C15ULL) % options_.width);
}

size_t HotKeyDetector::EndedSlots(SteadyTime now) const {
  if (now < current_start_ + slot_length_) return 0;
  const auto ended = static_cast<uint64_t>((now - current_start_) / slot_length_);
  return static_cast<size_t>(std::min<uint64_t>(ended, options_.slots));
}

void HotKeyDetector::Rotate(SteadyTime now) {
  if (now < current_start_ + slot_length_) return;
  const auto ended = static_cast<uint64_t>((now - current_start_) / slot_length_);
  const size_t clear = static_cast<size_t>(std::min<uint64_t>(ended, options_.slots));
  const size_t per_slot = options_.depth * options_.width;
  for (size_t i = 0; i < clear; ++i) {
    current_ = (current_ + 1) % options_.slots;
    std::fill_n(SlotBuckets(current_), per_slot, Bucket{});
  }
  // Keep sub-window boundaries on the original grid, however long the pause was.
  current_start_ += slot_length_ * static_cast<Duration::rep>(ended);
  RefreshTopK(now);
}

void HotKeyDetector::Insert(const Hashed& h, uint64_t n) {
  Bucket* sketch = SlotBuckets(current_);
  for (size_t row = 0; row < options_.depth; ++row) {
    Bucket& b = sketch[row * options_.width + Index(h.hash, row)];
    if (b.count == 0) {
      b.fingerprint = h.fingerprint;
      b.count = SaturatingAdd(0, n);
      continue;
    }
    if (b.fingerprint == h.fingerprint) {
      b.count = SaturatingAdd(b.count, n);
      continue;
    }
    // Each of the n accesses decays the resident with probability b^-count, and the access that
    // decays it to zero takes the bucket over (count 1), the accesses after it adding to that.
    // Rather than one coin per access, draw the number of failed coins before the next decay
    // (geometric), so a large n costs one draw per decay, not per access.
    const DecayTables& decay = Decay();
    uint64_t remaining = n;
    while (remaining > 0 && b.count < kDecayTableSize) {
      uint64_t failures = 0;
      if (remaining == 1) {  // the common case: one coin
        if (rng_.NextDouble() >= decay.p[b.count]) break;
      } else {
        const double u = 1.0 - rng_.NextDouble();  // (0, 1]
        const double f = std::floor(std::log(u) / decay.log_keep[b.count]);
        if (f >= static_cast<double>(remaining)) break;
        failures = static_cast<uint64_t>(f);
      }
      remaining -= failures + 1;
      if (--b.count == 0) {
        b.fingerprint = h.fingerprint;
        b.count = SaturatingAdd(1, remaining);
        break;
      }
    }
  }
}

uint64_t HotKeyDetector::SlotEstimate(size_t slot, const Hashed& h) const {
  const Bucket* sketch = SlotBuckets(slot);
  uint32_t best = 0;
  for (size_t row = 0; row < options_.depth; ++row) {
    const Bucket& b = sketch[row * options_.width + Index(h.hash, row)];
    if (b.count > best && b.fingerprint == h.fingerprint) best = b.count;
  }
  return best;
}

uint64_t HotKeyDetector::WindowEstimate(const Hashed& h, SteadyTime now) const {
  // Ring order: current_ is the newest sketch and current_+1 the oldest. The `ended` sketches
  // after current_ would be cleared by the next Rotate(): they hold accesses older than the
  // window, so they do not count, and neither does current_ once every sub-window has ended.
  const size_t ended = EndedSlots(now);
  uint64_t total = 0;
  for (size_t i = ended + 1; i <= options_.slots; ++i) {
    total += SlotEstimate((current_ + i) % options_.slots, h);  // i == slots: current_ itself
  }
  return total;
}

bool HotKeyDetector::Record(std::string_view key, uint64_t n) {
  const SteadyTime now = clock_.Now();
  Rotate(now);
  const Hashed h = Hash(key);
  if (n > 0) Insert(h, n);
  const uint64_t estimate = WindowEstimate(h, now);
  if (estimate > 0) UpdateTopK(key, h, estimate);
  return estimate > 0 && estimate >= options_.threshold;
}

bool HotKeyDetector::IsHot(std::string_view key) const {
  const uint64_t estimate = Estimate(key);
  return estimate > 0 && estimate >= options_.threshold;
}

uint64_t HotKeyDetector::Estimate(std::string_view key) const {
  return WindowEstimate(Hash(key), clock_.Now());
}

std::vector<std::pair<std::string, uint64_t>> HotKeyDetector::TopK() const {
  const SteadyTime now = clock_.Now();
  std::vector<std::pair<std::string, uint64_t>> out;
  out.reserve(heap_.size());
  for (const Entry& e : heap_) {
    // Re-estimate: other keys may have decayed this one's buckets since it was last recorded.
    const uint64_t estimate = WindowEstimate(FromHash(e.hash), now);
    if (estimate > 0) out.emplace_back(e.key, estimate);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  return out;
}

size_t HotKeyDetector::MemoryBytes() const {
  size_t bytes = sizeof(*this) + buckets_.size() * sizeof(Bucket);
  bytes += heap_.capacity() * sizeof(Entry);
  // An unordered_map node holds the pair and a next pointer (and the cached hash is not stored
  // for integer keys in libstdc++); plus one bucket pointer per bucket.
  bytes += pos_.size() * (sizeof(std::pair<const uint64_t, size_t>) + sizeof(void*)) +
           pos_.bucket_count() * sizeof(void*);
  for (const Entry& e : heap_) bytes += e.key.size();
  return bytes;
}

// ---- top-k min-heap ---------------------------------------------------------------------------

void HotKeyDetector::UpdateTopK(std::string_view key, const Hashed& h, uint64_t estimate) {
  if (auto it = pos_.find(h.hash); it != pos_.end()) {
    const size_t i = it->second;
    const uint64_t old = heap_[i].count;
    heap_[i].count = estimate;
    if (estimate < old) {
      SiftUp(i);
    } else {
      SiftDown(i);
    }
    return;
  }
  if (heap_.size() < options_.top_k) {
    heap_.push_back(Entry{std::string(key), h.hash, estimate});
    pos_.emplace(h.hash, heap_.size() - 1);
    SiftUp(heap_.size() - 1);
    return;
  }
  if (estimate <= heap_[0].count) return;
  // Replace the minimum in place.
  pos_.erase(heap_[0].hash);
  heap_[0].key.assign(key.data(), key.size());
  heap_[0].hash = h.hash;
  heap_[0].count = estimate;
  pos_.emplace(h.hash, 0);
  SiftDown(0);
}

void HotKeyDetector::RefreshTopK(SteadyTime now) {
  size_t kept = 0;
  for (size_t i = 0; i < heap_.size(); ++i) {
    Entry& e = heap_[i];
    e.count = WindowEstimate(FromHash(e.hash), now);
    if (e.count == 0) continue;
    if (kept != i) heap_[kept] = std::move(e);
    ++kept;
  }
  heap_.resize(kept);
  pos_.clear();
  for (size_t i = 0; i < heap_.size(); ++i) pos_.emplace(heap_[i].hash, i);
  for (size_t i = heap_.size() / 2; i-- > 0;) SiftDown(i);
}

void HotKeyDetector::SwapEntries(size_t a, size_t b) {
  std::swap(heap_[a], heap_[b]);
  pos_[heap_[a].hash] = a;
  pos_[heap_[b].hash] = b;
}

void HotKeyDetector::SiftUp(size_t i) {
  while (i > 0) {
    const size_t parent = (i - 1) / 2;
    if (heap_[parent].count <= heap_[i].count) break;
    SwapEntries(parent, i);
    i = parent;
  }
}

void HotKeyDetector::SiftDown(size_t i) {
  const size_t n = heap_.size();
  for (;;) {
    const size_t l = 2 * i + 1;
    const size_t r = l + 1;
    size_t smallest = i;
    if (l < n && heap_[l].count < heap_[smallest].count) smallest = l;
    if (r < n && heap_[r].count < heap_[smallest].count) smallest = r;
    if (smallest == i) return;
    SwapEntries(i, smallest);
    i = smallest;
  }
}

}  // namespace chorus::likes
