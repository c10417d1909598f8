// HotKeyDetector: which keys (entities whose counts are being read) are hot right now.
//
// The likes service sees every count read on a shard; the few entities that draw a large share
// of them (a viral video) get their counts served from a local cache (count_cache.h). This class
// decides which: a key is hot while its estimated number of accesses in the last `window` is at
// least `threshold`. It also reports the top-k keys of the window, hottest first, for metrics
// and the admin page.
//
// Design. The counting is a HeavyKeeper sketch (Gong et al., USENIX ATC '18): `depth` arrays of
// `width` buckets, each bucket a (32-bit fingerprint, count) pair. A key maps to one bucket per
// array. If the bucket is empty or holds the key's fingerprint, its count grows; otherwise the
// resident is decayed: each of the new accesses decrements its count with probability
// b^-count (b = 1.08), and the access that brings it to zero takes the bucket over. Large
// counts (elephants) therefore almost never decay, while the mice that share their buckets
// wear each other out. A key's estimate is the largest count among its buckets that carry its
// fingerprint. HeavyKeeper never overestimates, except when two keys share a bucket and a
// fingerprint (probability about 2^-32 per pair), and the estimates of heavy keys are close to
// exact; the estimates of light keys are often zero, which is what we want from a detector.
//
// Hotness must expire, so the window is divided into `slots` sub-windows of window/slots each,
// with one sketch per sub-window in a ring. Accesses go to the current sub-window's sketch; a
// key's window estimate is the sum of its estimates in all live sub-windows. When a sub-window
// ends, the oldest sketch is cleared and becomes the current one. The counted span is thus the
// current partial sub-window plus the `slots - 1` before it: between (slots-1)/slots of
// `window` and `window`. A key not accessed for a full `window` has an estimate of zero.
// Sub-windows start at construction time + k x (window / slots), whatever the pauses between
// calls.
// Time comes from the injected Clock's steady Now(); queries (const) ignore the sub-windows
// that have ended even before a Record() rotates them out, so IsHot() turns false on time alone.
//
// Beside the sketches, a min-heap of at most `top_k` (key, estimate) entries remembers the
// names of the heaviest keys (a sketch stores fingerprints, not names): a key enters when the
// heap has room or its estimate beats the heap's minimum, which it then replaces. Entries are
// re-estimated, and those that fell to zero dropped, when a sub-window ends.
//
// Cost. Record(): one XXH3 hash of the key, `depth` bucket updates, `slots x depth` bucket reads
// and an O(log top_k) heap update; a decay of n accesses draws at most min(n, count + 1)
// random numbers. IsHot(): one hash and `slots x depth` reads. TopK(): O(top_k x slots x depth
// + top_k log top_k). Memory: slots x depth x width x 8 bytes of buckets plus the top_k entries
// (with their key strings), whatever the number of distinct keys; defaults: 80 KiB + 64 keys.
//
// Options are taken as given, except that zero sizes are raised to 1 and a window shorter than
// `slots` nanoseconds to `slots` nanoseconds (they come from configuration, which is not a
// reason to crash). threshold 0 makes every key with a non-zero estimate hot.
//
// Thread rules: not thread-safe. Each shard owns one detector and calls it from its own thread
// only. Deterministic: the same options (seed), clock readings and calls give the same answers.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/random.h"

namespace chorus::likes {

class HotKeyDetector {
 public:
  struct Options {
    size_t top_k = 64;    // keys remembered by name (TopK() size limit)
    size_t width = 1024;  // buckets per array
    size_t depth = 2;     // arrays per sketch
    Duration window = std::chrono::seconds(1);
    size_t slots = 5;          // sub-windows per window: the granularity of expiry
    uint64_t threshold = 100;  // accesses per window at which a key is hot
    uint64_t seed = 1;         // hash seed and decay random stream
  };

  explicit HotKeyDetector(const Clock& clock);
  HotKeyDetector(const Clock& clock, Options options);

  HotKeyDetector(const HotKeyDetector&) = delete;
  HotKeyDetector& operator=(const HotKeyDetector&) = delete;

  // Counts `n` accesses to `key` now. Returns IsHot(key) afterwards.
  bool Record(std::string_view key, uint64_t n = 1);

  // Whether the estimated accesses to `key` in the window are at least the threshold.
  bool IsHot(std::string_view key) const;

  // Estimated accesses to `key` in the window (usually exact for hot keys, often 0 for cold).
  uint64_t Estimate(std::string_view key) const;

  // The remembered heaviest keys with their current window estimates, hottest first (ties by
  // key), without those whose estimate is now zero. At most top_k entries.
  std::vector<std::pair<std::string, uint64_t>> TopK() const;

  // Approximate bytes held: the sketches plus the top-k table and its key strings. Bounded by
  // the options and the key lengths, not by the number of distinct keys seen.
  size_t MemoryBytes() const;

  const Options& options() const { return options_; }

 private:
  struct Bucket {
    uint32_t fingerprint = 0;
    uint32_t count = 0;  // 0 = empty; saturates at UINT32_MAX
  };
  struct Hashed {
    uint64_t hash;
    uint32_t fingerprint;
  };
  struct Entry {
    std::string key;
    uint64_t hash = 0;
    uint64_t count = 0;  // estimate when last updated
  };

  Hashed Hash(std::string_view key) const;
  // The fingerprint is the hash's high half; the bucket indexes are mixed from the whole hash.
  static Hashed FromHash(uint64_t hash) { return {hash, static_cast<uint32_t>(hash >> 32)}; }
  size_t Index(uint64_t hash, size_t row) const;
  Bucket* SlotBuckets(size_t slot) { return buckets_.data() + slot * options_.depth * options_.width; }
  const Bucket* SlotBuckets(size_t slot) const {
    return buckets_.data() + slot * options_.depth * options_.width;
  }

  // Clears the sub-windows that ended before `now` and makes the current one current.
  void Rotate(SteadyTime now);
  // Sub-windows that have ended since the last Rotate() (at most slots).
  size_t EndedSlots(SteadyTime now) const;
  void Insert(const Hashed& h, uint64_t n);
  uint64_t SlotEstimate(size_t slot, const Hashed& h) const;
  uint64_t WindowEstimate(const Hashed& h, SteadyTime now) const;

  void UpdateTopK(std::string_view key, const Hashed& h, uint64_t estimate);
  void RefreshTopK(SteadyTime now);
  void SiftUp(size_t i);
  void SiftDown(size_t i);
  void SwapEntries(size_t a, size_t b);

  const Clock& clock_;
  Options options_;
  Duration slot_length_;
  Random rng_;
  std::vector<Bucket> buckets_;  // slots x depth x width
  size_t current_ = 0;           // index of the current sub-window's sketch
  SteadyTime current_start_;     // when the current sub-window began

  std::vector<Entry> heap_;                   // min-heap on count
  std::unordered_map<uint64_t, size_t> pos_;  // key hash -> heap index
};

}  // namespace chorus::likes
