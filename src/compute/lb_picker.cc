#include "compute/lb_picker.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <string>
#include <utility>

namespace chorus::compute {
namespace {

Status ValidateNode(NodeId id, double weight) {
  if (id > kMaxNodeId) {
    return InvalidArgument("node id " + std::to_string(id) + " above " + std::to_string(kMaxNodeId));
  }
  if (!(weight >= kMinPickWeight && weight <= kMaxPickWeight)) {  // also NaN
    return InvalidArgument("node " + std::to_string(id) + ": weight " + std::to_string(weight) +
                           " is not a finite number in [1e-12, 1e12]");
  }
  return Status::Ok();
}

// Checks every node and that no id repeats. On success `seen[id]` is 1 for the table's ids.
Status ValidateTable(std::span<const WeightedNode> nodes, std::vector<uint8_t>* seen) {
  NodeId max_id = 0;
  for (const WeightedNode& n : nodes) {
    Status s = ValidateNode(n.id, n.weight);
    if (!s.ok()) return s;
    max_id = std::max(max_id, n.id);
  }
  seen->assign(nodes.empty() ? 0 : size_t{max_id} + 1, 0);
  for (const WeightedNode& n : nodes) {
    if ((*seen)[n.id] != 0) return InvalidArgument("node " + std::to_string(n.id) + " twice");
    (*seen)[n.id] = 1;
  }
  return Status::Ok();
}

bool InTable(const std::vector<uint8_t>& seen, size_t id) { return id < seen.size() && seen[id]; }

// Ensures `index` covers `id`, new slots −1.
void GrowIndex(std::vector<int32_t>* index, NodeId id) {
  if (index->size() <= id) index->resize(size_t{id} + 1, -1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// StaticSwrr

std::optional<NodeId> StaticSwrr::Pick() {
  if (nodes_.empty()) return std::nullopt;
  Node* best = nullptr;
  for (Node& n : nodes_) {
    n.current += n.weight;
    if (best == nullptr || n.current > best->current) best = &n;
  }
  best->current -= total_;
  return best->id;
}

void StaticSwrr::SpreadCurrent(double current) {
  if (nodes_.empty() || total_ <= 0) return;
  const double per_weight = current / total_;
  for (Node& n : nodes_) n.current += per_weight * n.weight;
}

Status StaticSwrr::Update(std::span<const WeightedNode> table) {
  std::vector<uint8_t> seen;
  Status s = ValidateTable(table, &seen);
  if (!s.ok()) return s;

  double new_total = 0;
  for (const WeightedNode& w : table) new_total += w.weight;
  // current = total × lag (in picks). nginx keeps the raw current across a weight change; with
  // real-valued weights whose scale moves every few seconds that is wrong by the factor the
  // total moved (a node owed half a pick when the total was 1000 would get 500 picks in a row
  // after the total fell to 1). Keep the lag instead: current' = current × total' / total.
  const double scale = total_ > 0 ? new_total / total_ : 0;
  double leaving = 0;
  for (const Node& n : nodes_) {
    if (!InTable(seen, n.id)) leaving += n.current * scale;
  }
  std::vector<Node> next;
  next.reserve(table.size());
  for (const WeightedNode& w : table) {
    double current = 0;
    if (w.id < index_.size() && index_[w.id] >= 0) {
      current = nodes_[static_cast<size_t>(index_[w.id])].current * scale;
    }
    next.push_back({w.weight, current, w.id});
  }
  for (const Node& n : nodes_) index_[n.id] = -1;
  nodes_ = std::move(next);
  total_ = new_total;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    GrowIndex(&index_, nodes_[i].id);
    index_[nodes_[i].id] = static_cast<int32_t>(i);
  }
  SpreadCurrent(leaving);
  return Status::Ok();
}

Status StaticSwrr::Add(NodeId id, double weight) {
  Status s = ValidateNode(id, weight);
  if (!s.ok()) return s;
  if (Contains(id)) return AlreadyExists("node " + std::to_string(id));
  GrowIndex(&index_, id);
  // Keep every lag (current / total) under the new total; the newcomer starts at lag 0.
  const double new_total = total_ + weight;
  const double scale = total_ > 0 ? new_total / total_ : 0;
  for (Node& n : nodes_) n.current *= scale;
  index_[id] = static_cast<int32_t>(nodes_.size());
  nodes_.push_back({weight, 0, id});
  total_ = new_total;
  return Status::Ok();
}

bool StaticSwrr::Remove(NodeId id) {
  if (!Contains(id)) return false;
  const size_t pos = static_cast<size_t>(index_[id]);
  const Node gone = nodes_[pos];
  // Erase in place (not swap-with-last) so the table order — the tie-break — is kept.
  nodes_.erase(nodes_.begin() + static_cast<std::ptrdiff_t>(pos));
  index_[id] = -1;
  double new_total = 0;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    index_[nodes_[i].id] = static_cast<int32_t>(i);
    new_total += nodes_[i].weight;
  }
  // Keep every lag (current / total), as Update does, and hand the leaver's lag to the rest.
  const double scale = total_ > 0 ? new_total / total_ : 0;
  for (Node& n : nodes_) n.current *= scale;
  total_ = new_total;
  SpreadCurrent(gone.current * scale);
  return true;
}

bool StaticSwrr::Contains(NodeId id) const { return id < index_.size() && index_[id] >= 0; }

// ---------------------------------------------------------------------------------------------
// FastSwrr

namespace {

// A node counts as eligible when it is ahead by less than this many picks: absorbs rounding
// when start and virtual time are mathematically equal.
constexpr double kEligibleSlack = 1e-9;

}  // namespace

struct FastSwrr::Entry {
  double base = 0;  // virtual start S = base + k / weight
  double weight = 0;
  double k = 0;       // picks since base: an exact integer (doubles are exact up to 2^53)
  uint32_t gen = 0;   // bumped when the node leaves; heap items carry the gen they were made in
  uint32_t live = 0;  // 1 while in the table
};

// A d-ary min-heap (d = kArity = 4) of 16-byte items laid out so that the d children of every
// item share one aligned block of d·16 bytes — one 64-byte cache line for d = 4: item i lives at
// slot i + d − 1 of a 64-byte-aligned buffer, so children d·i+1 .. d·i+d occupy slots
// d·(i+1) .. d·(i+1)+d−1. Measured at 1M nodes (lb_picker_benchmark): d = 4 beats d = 2 and
// d = 8 (see the numbers in lb_picker.h).
class FastSwrr::Heap {
 public:
  struct Item {
    double key;
    NodeId id;
    uint32_t gen;
  };
  static_assert(sizeof(Item) == 16);
  static constexpr size_t kArity = 4;

  Heap() = default;
  Heap(const Heap&) = delete;
  Heap& operator=(const Heap&) = delete;
  ~Heap() { Free(); }

  bool empty() const { return size_ == 0; }
  size_t size() const { return size_; }
  const Item& top() const { return At(0); }
  void clear() { size_ = 0; }

  void push(const Item& x) {
    Reserve(size_ + 1);
    SiftUp(size_++, x);
  }
  void pop() {
    const Item last = At(--size_);
    if (size_ > 0) SiftDown(0, last);
  }
  // pop() then push(x), in one sift.
  void replace_top(const Item& x) { SiftDown(0, x); }

  // Bulk load: append without ordering, then heapify().
  void append(const Item& x) {
    Reserve(size_ + 1);
    At(size_++) = x;
  }
  void heapify() {
    if (size_ < 2) return;
    for (size_t i = (size_ - 2) / kArity + 1; i-- > 0;) SiftDown(i, At(i));
  }

 private:
  static constexpr size_t kPad = kArity - 1;
  static constexpr std::align_val_t kAlign{64};
  Item& At(size_t i) { return data_[i + kPad]; }
  const Item& At(size_t i) const { return data_[i + kPad]; }

  void Reserve(size_t n) {
    if (n <= capacity_) return;
    const size_t cap = std::max<size_t>(64, std::max(n, capacity_ * 2));
    auto* fresh = static_cast<Item*>(::operator new((cap + kPad) * sizeof(Item), kAlign));
    if (data_ != nullptr) std::copy(data_ + kPad, data_ + kPad + size_, fresh + kPad);
    Free();
    data_ = fresh;
    capacity_ = cap;
  }
  void Free() {
    if (data_ != nullptr) ::operator delete(data_, kAlign);
    data_ = nullptr;
  }

  void SiftUp(size_t i, Item x) {
    while (i > 0) {
      const size_t parent = (i - 1) / kArity;
      if (!(x.key < At(parent).key)) break;
      At(i) = At(parent);
      i = parent;
    }
    At(i) = x;
  }

  void SiftDown(size_t i, Item x) {  // by value: x may alias At(i)
    const size_t n = size_;
    for (;;) {
      const size_t first = kArity * i + 1;
      if (first >= n) break;
      const size_t end = std::min(first + kArity, n);
      if (kArity * first + 1 < n) {
        // Start fetching every child's own block of children while the children compare: below
        // the top few levels of a 1M-item heap none of it is in cache.
        for (size_t c = first; c < end; ++c) __builtin_prefetch(&At(std::min(kArity * c + 1, n - 1)));
      }
      size_t best = first;
      double best_key = At(first).key;
      for (size_t c = first + 1; c < end; ++c) {
        if (At(c).key < best_key) {
          best = c;
          best_key = At(c).key;
        }
      }
      if (!(best_key < x.key)) break;
      At(i) = At(best);
      i = best;
    }
    At(i) = x;
  }

  Item* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

FastSwrr::FastSwrr() : FastSwrr(UpdateMode::kKeepLag) {}
FastSwrr::FastSwrr(UpdateMode mode)
    : mode_(mode), eligible_(std::make_unique<Heap>()), pending_(std::make_unique<Heap>()) {}
FastSwrr::~FastSwrr() = default;

double FastSwrr::Start(const Entry& e) const { return e.base + e.k / e.weight; }

void FastSwrr::RebaseVirtualTime() {
  v_base_ = VirtualTime();
  picks_ = 0;
  inv_total_ = total_ > 0 ? 1 / total_ : 0;
}

void FastSwrr::RebuildHeaps() {
  eligible_->clear();
  pending_->clear();
  tombstones_ = 0;
  const double v = VirtualTime();
  for (size_t id = 0; id < entries_.size(); ++id) {
    const Entry& e = entries_[id];
    if (e.live == 0) continue;
    const double start = Start(e);
    const double eligible_at = start - kEligibleSlack / e.weight;
    if (eligible_at <= v) {
      eligible_->append({e.base + (e.k + 1) / e.weight, static_cast<NodeId>(id), e.gen});
    } else {
      pending_->append({eligible_at, static_cast<NodeId>(id), e.gen});
    }
  }
  eligible_->heapify();
  pending_->heapify();
}

void FastSwrr::Promote(double v) {
  while (!pending_->empty() && pending_->top().key <= v) {
    const Heap::Item it = pending_->top();
    pending_->pop();
    const Entry& e = entries_[it.id];
    if (e.gen != it.gen) {
      --tombstones_;
      continue;
    }
    eligible_->push({e.base + (e.k + 1) / e.weight, it.id, it.gen});
  }
}

std::optional<NodeId> FastSwrr::Pick() {
  if (live_ == 0) return std::nullopt;
  for (;;) {
    const double v = VirtualTime();
    Promote(v);
    // Settle the top of the eligible heap: drop tombstones, and send back to pending a node
    // that stopped being eligible because V moved back (a leaving node that was ahead had its
    // negative lag spread over the rest). Only the top matters; others are checked when they
    // surface.
    while (!eligible_->empty()) {
      const Heap::Item top = eligible_->top();
      const Entry& e = entries_[top.id];
      if (e.gen != top.gen) {
        eligible_->pop();
        --tombstones_;
        continue;
      }
      const double eligible_at = Start(e) - kEligibleSlack / e.weight;
      if (eligible_at <= v) break;
      eligible_->pop();
      pending_->push({eligible_at, top.id, top.gen});
    }
    if (eligible_->empty()) {
      // Nobody is eligible. With Σ lag = 0 someone always is; a Remove of a node that was ahead
      // moves V back, and rounding can do the same by an ulp. Stay work-conserving: advance V
      // to the earliest start.
      while (!pending_->empty() && entries_[pending_->top().id].gen != pending_->top().gen) {
        pending_->pop();
        --tombstones_;
      }
      if (pending_->empty()) {
        RebuildHeaps();  // live_ > 0 but no items: cannot happen; recover rather than spin
        if (eligible_->empty() && pending_->empty()) return std::nullopt;
        continue;
      }
      v_base_ = pending_->top().key;
      picks_ = 0;
      continue;
    }
    const Heap::Item top = eligible_->top();
    Entry& e = entries_[top.id];
    e.k += 1;
    ++picks_;
    const double start = top.key;  // the old deadline is the new start
    if (start - kEligibleSlack / e.weight <= VirtualTime()) {
      eligible_->replace_top({e.base + (e.k + 1) / e.weight, top.id, top.gen});
    } else {
      eligible_->pop();
      pending_->push({start - kEligibleSlack / e.weight, top.id, top.gen});
    }
    return top.id;
  }
}

Status FastSwrr::Update(std::span<const WeightedNode> table) {
  std::vector<uint8_t> seen;
  Status s = ValidateTable(table, &seen);
  if (!s.ok()) return s;

  const double v = VirtualTime();
  const bool keep = mode_ == UpdateMode::kKeepLag;
  // Nodes leaving: their lag is spread over the rest (below, through the new V).
  double leaving_lag = 0;
  for (size_t id = 0; id < entries_.size(); ++id) {
    Entry& e = entries_[id];
    if (e.live == 0 || InTable(seen, id)) continue;
    leaving_lag += e.weight * (v - Start(e));
    e.live = 0;
    ++e.gen;
  }
  if (!table.empty()) {
    const NodeId max_id = static_cast<NodeId>(seen.size() - 1);
    if (entries_.size() <= max_id) entries_.resize(size_t{max_id} + 1);
  }
  // New origin: V' = the leavers' lag spread over the survivors by their new weight (0 without
  // survivors). A survivor keeps its lag in picks plus its part of the spread:
  // w'·(V' − S') = w·(v − S) + w'·V'. A newcomer starts at S' = V': lag 0.
  double survivors = 0;
  total_ = 0;
  for (const WeightedNode& n : table) {
    if (keep && entries_[n.id].live != 0) survivors += n.weight;
    total_ += n.weight;
  }
  const double origin = survivors > 0 ? leaving_lag / survivors : 0;
  for (const WeightedNode& n : table) {
    Entry& e = entries_[n.id];
    const bool survivor = keep && e.live != 0;
    e.base = survivor ? -e.weight * (v - Start(e)) / n.weight : origin;
    e.k = 0;
    e.weight = n.weight;
    e.live = 1;
  }
  live_ = table.size();
  total_at_recompute_ = total_;
  v_base_ = origin;
  picks_ = 0;
  inv_total_ = total_ > 0 ? 1 / total_ : 0;
  RebuildHeaps();
  return Status::Ok();
}

Status FastSwrr::Add(NodeId id, double weight) {
  Status s = ValidateNode(id, weight);
  if (!s.ok()) return s;
  if (Contains(id)) return AlreadyExists("node " + std::to_string(id));
  if (entries_.size() <= id) entries_.resize(size_t{id} + 1);
  const double v = VirtualTime();
  Entry& e = entries_[id];
  e.base = v;  // lag 0: eligible now, due one period later
  e.k = 0;
  e.weight = weight;
  e.live = 1;
  ++live_;
  total_ += weight;
  total_at_recompute_ = std::max(total_at_recompute_, total_);
  RebaseVirtualTime();
  eligible_->push({e.base + 1 / weight, id, e.gen});
  return Status::Ok();
}

bool FastSwrr::Remove(NodeId id) {
  if (!Contains(id)) return false;
  Entry& e = entries_[id];
  const double v = VirtualTime();
  const double lag = e.weight * (v - Start(e));
  e.live = 0;
  ++e.gen;
  --live_;
  ++tombstones_;  // its one heap item
  if (live_ == 0) {
    eligible_->clear();
    pending_->clear();
    tombstones_ = 0;
    total_ = total_at_recompute_ = 0;
    v_base_ = 0;
    picks_ = 0;
    inv_total_ = 0;
    return true;
  }
  total_ -= e.weight;
  if (total_ < 1e-9 * total_at_recompute_) {
    // Cancellation after removing nodes much heavier than the rest: sum again.
    total_ = 0;
    for (const Entry& x : entries_) total_ += x.live != 0 ? x.weight : 0;
    total_at_recompute_ = total_;
  }
  // Spread the leaving node's lag over the others by weight (Σ lag stays 0): V += lag / W'.
  v_base_ = v + lag / total_;
  picks_ = 0;
  inv_total_ = 1 / total_;
  if (tombstones_ > live_ + 64) RebuildHeaps();
  return true;
}

bool FastSwrr::Contains(NodeId id) const { return id < entries_.size() && entries_[id].live != 0; }

// ---------------------------------------------------------------------------------------------
// P2cLeastRequest

P2cLeastRequest::P2cLeastRequest(uint64_t seed) : rng_(seed) {}

std::optional<NodeId> P2cLeastRequest::Pick() {
  const size_t n = nodes_.size();
  if (n == 0) return std::nullopt;
  if (n == 1) return nodes_[0].id;
  const size_t a = rng_.Uniform(n);
  size_t b = rng_.Uniform(n - 1);
  if (b >= a) ++b;
  const Node& x = nodes_[a];
  const Node& y = nodes_[b];
  // Requests in flight per unit of weight, counting the one about to be sent.
  const double load_x = static_cast<double>(in_flight_[x.id] + 1) * x.inv_weight;
  const double load_y = static_cast<double>(in_flight_[y.id] + 1) * y.inv_weight;
  return load_y < load_x ? y.id : x.id;
}

Status P2cLeastRequest::Update(std::span<const WeightedNode> table) {
  std::vector<uint8_t> seen;
  Status s = ValidateTable(table, &seen);
  if (!s.ok()) return s;
  for (const Node& n : nodes_) index_[n.id] = -1;
  nodes_.clear();
  nodes_.reserve(table.size());
  for (const WeightedNode& w : table) {
    GrowIndex(&index_, w.id);
    if (in_flight_.size() <= w.id) in_flight_.resize(size_t{w.id} + 1, 0);
    index_[w.id] = static_cast<int32_t>(nodes_.size());
    nodes_.push_back({1 / w.weight, w.id});
  }
  return Status::Ok();
}

Status P2cLeastRequest::Add(NodeId id, double weight) {
  Status s = ValidateNode(id, weight);
  if (!s.ok()) return s;
  if (Contains(id)) return AlreadyExists("node " + std::to_string(id));
  GrowIndex(&index_, id);
  if (in_flight_.size() <= id) in_flight_.resize(size_t{id} + 1, 0);
  index_[id] = static_cast<int32_t>(nodes_.size());
  nodes_.push_back({1 / weight, id});
  return Status::Ok();
}

bool P2cLeastRequest::Remove(NodeId id) {
  if (!Contains(id)) return false;
  const size_t pos = static_cast<size_t>(index_[id]);
  nodes_[pos] = nodes_.back();  // order does not matter to P2C
  index_[nodes_[pos].id] = static_cast<int32_t>(pos);
  nodes_.pop_back();
  index_[id] = -1;
  return true;
}

bool P2cLeastRequest::Contains(NodeId id) const { return id < index_.size() && index_[id] >= 0; }

void P2cLeastRequest::OnRequestStart(NodeId id) {
  if (id < in_flight_.size()) ++in_flight_[id];
}

void P2cLeastRequest::OnRequestFinish(NodeId id) {
  // A finish without a start (a router bug, or a node id never seen) must not go negative.
  if (id < in_flight_.size() && in_flight_[id] > 0) --in_flight_[id];
}

int64_t P2cLeastRequest::in_flight(NodeId id) const { return id < in_flight_.size() ? in_flight_[id] : 0; }

// ---------------------------------------------------------------------------------------------

std::unique_ptr<Picker> MakePicker(PickerKind kind, uint64_t seed) {
  switch (kind) {
    case PickerKind::kStaticSwrr:
      return std::make_unique<StaticSwrr>();
    case PickerKind::kFastSwrr:
      return std::make_unique<FastSwrr>();
    case PickerKind::kP2cLeastRequest:
      return std::make_unique<P2cLeastRequest>(seed);
  }
  return nullptr;
}

}  // namespace chorus::compute
