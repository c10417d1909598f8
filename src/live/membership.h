// MemberShards: one room's members on one runtime shard, kept in dynamic member shards.
//
// Members live in fixed-capacity shards of at most `shard_size` entries. A join goes into the
// last shard if it has room, else a new shard is opened; a leave swaps the last entry of its
// shard into the hole (O(1)); a shard that falls empty is released, and when a shard and its
// neighbour together fit in `shard_size` they are merged (compaction), so fan-out walks a few
// dense arrays instead of a hash table. Not thread-safe: owned by one runtime shard.
#pragma once
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

namespace chorus::live {

template <typename T>
class MemberShards {
 public:
  explicit MemberShards(size_t shard_size) : shard_size_(shard_size == 0 ? 1 : shard_size) {}

  // Adds `id` (ignored and false if already present).
  bool Join(uint64_t id, T value) {
    if (index_.contains(id)) return false;
    if (shards_.empty() || shards_.back().size() >= shard_size_) {
      shards_.emplace_back();
      shards_.back().reserve(shard_size_);
    }
    const size_t s = shards_.size() - 1;
    index_.emplace(id, Pos{s, shards_[s].size()});
    shards_[s].push_back(Entry{id, std::move(value)});
    ++size_;
    return true;
  }

  // Removes `id`; returns its value, or nullopt-like false if absent.
  bool Leave(uint64_t id, T* out = nullptr) {
    auto it = index_.find(id);
    if (it == index_.end()) return false;
    const Pos pos = it->second;
    index_.erase(it);
    auto& shard = shards_[pos.shard];
    if (out) *out = std::move(shard[pos.slot].value);
    if (pos.slot != shard.size() - 1) {
      shard[pos.slot] = std::move(shard.back());
      index_[shard[pos.slot].id].slot = pos.slot;
    }
    shard.pop_back();
    --size_;
    Compact(pos.shard);
    return true;
  }

  bool Contains(uint64_t id) const { return index_.contains(id); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t shard_count() const { return shards_.size(); }
  size_t shard_size(size_t i) const { return shards_[i].size(); }

  template <typename Fn>
  void ForEach(Fn&& fn) const {
    for (const auto& shard : shards_) {
      for (const Entry& e : shard) fn(e.id, e.value);
    }
  }

 private:
  struct Entry {
    uint64_t id;
    T value;
  };
  struct Pos {
    size_t shard;
    size_t slot;
  };

  void Compact(size_t s) {
    if (shards_[s].empty()) {
      shards_.erase(shards_.begin() + static_cast<ptrdiff_t>(s));
      Reindex(s);
      return;
    }
    // Merge with a neighbour when both fit in one shard: the later one moves into the earlier.
    for (size_t n : {s + 1, s - 1}) {
      if (n >= shards_.size()) continue;  // s - 1 wraps for s == 0
      const size_t lo = std::min(s, n), hi = std::max(s, n);
      if (shards_[lo].size() + shards_[hi].size() > shard_size_) continue;
      for (Entry& e : shards_[hi]) shards_[lo].push_back(std::move(e));
      shards_.erase(shards_.begin() + static_cast<ptrdiff_t>(hi));
      Reindex(lo);
      return;
    }
  }

  // Rebuilds positions of every entry in shards [from, end).
  void Reindex(size_t from) {
    for (size_t s = from; s < shards_.size(); ++s) {
      for (size_t i = 0; i < shards_[s].size(); ++i) index_[shards_[s][i].id] = Pos{s, i};
    }
  }

  size_t shard_size_;
  size_t size_ = 0;
  std::vector<std::vector<Entry>> shards_;
  std::unordered_map<uint64_t, Pos> index_;
};

}  // namespace chorus::live
