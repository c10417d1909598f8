// Pickers: choose the node for the next request of an app (seed section 6.3, the data plane's
// routing core). No networking here: a Picker maps a table of weighted node ids to a stream of
// picks. The router recomputes the weights every ~3 s (lb_weight.h) and calls Update with the
// whole table; a node that starts draining or goes offline is Removed at once, on the watch event,
// without waiting for the next Update.
//
// Three implementations behind one interface:
//
//  StaticSwrr      nginx's smooth weighted round robin, exactly the seed's three steps: every
//                  node's current += weight; pick the max (first in table order on ties);
//                  picked.current -= total. O(n) per pick: the baseline.
//  FastSwrr        the one we ship. Smooth like SWRR, O(log n) per pick (~0.5 µs at 1M nodes),
//                  O(1) amortized Remove. Not nginx's sequence but a different smooth schedule
//                  with a STRONGER guarantee (see "Smoothness"): earliest eligible virtual
//                  deadline first (EEVDF, Stoica &
//                  Abdel-Wahab 1995), which for unit-size picks is Balinski & Young's quota method
//                  of apportionment. Two 4-ary heaps; see "FastSwrr" below.
//  P2cLeastRequest power of two choices: two distinct nodes uniformly at random, the one with the
//                  fewer requests in flight per unit of weight wins. Needs OnRequestStart/Finish.
//
// ## Smoothness — what is guaranteed, and why
//
// Weights w_i > 0 (real), W = Σ w_i, share p_i = w_i / W. After t picks node i has been picked
// n_i(t) times; its lag is L_i(t) = t·p_i − n_i(t) (> 0: owed picks; Σ_i L_i = 0). A window of
// the pick sequence, picks s+1..t, gives node i exactly n_i(t) − n_i(s) picks, so its deviation
// from the window's share is L_i(s) − L_i(t): window bounds follow from lag bounds. Better than
// "< 2" on every window is impossible in general: a sequence whose every window is within 1 of
// its share is balanced (equal-length windows differ by ≤ 1 in every count), and on 3+ letters
// balanced sequences exist only for special frequency vectors (Graham 1973; Fraenkel's
// conjecture): generic real weights have none. The tests show windows > 1.5 do occur.
//
// FastSwrr (EEVDF with unit requests), constant weights, fresh picker or after
// Update in kReset mode —
//   quota:   floor(t·p_i) ≤ n_i(t) ≤ ceil(t·p_i) for every prefix t and node i;
//            precisely p_i − 1 ≤ L_i(t) < 1.
//   windows: |count_i − len·p_i| < 2 − p_i for every window.
//   Proof. Node i's k-th pick is a unit "job" released at (k−1)/p_i (when i stops being ahead:
//   n_i ≤ t·p_i, "eligible") with deadline k/p_i (when it would fall a whole pick behind). Slot
//   t+1 may serve a job released at ≤ t. In any interval [a, b] the jobs of node i released at
//   ≥ a with deadline ≤ b are the k with a·p_i + 1 ≤ k ≤ b·p_i — at most (b−a)·p_i of them — so
//   all nodes together need ≤ b − a slots: the job set is feasible, and for unit jobs on one
//   machine EDF among released jobs meets every deadline when any schedule does (exchange
//   argument). Some node is always eligible (Σ L_i = 0 ⇒ some L_i ≥ 0), so no slot idles.
//   Every deadline met ⇒ n_i(t) ≥ floor(t·p_i), i.e. L < 1. Only released jobs run ⇒
//   n_i(t) ≤ floor((t−1)·p_i) + 1 ≤ ceil(t·p_i), i.e. L ≥ p_i − 1. Windows: L(s) − L(t) lies in
//   ((p_i − 1) − 1, 1 − (p_i − 1)).
//   This is Balinski & Young's quota method: the strongest per-prefix statement that holds for
//   all real weights (Tijdeman's 1 − 1/(2n−2) improves the constant by O(1/n) only).
//
// StaticSwrr (nginx SWRR), constant weights — what is true, and weaker:
//   ahead:   n_i(t) − t·p_i ≤ 1 − 1/n. Proof: Σ current = 0 is invariant, so after the "+=" step
//            the currents sum to W and the max is ≥ W/n; the picked node drops to ≥ W/n − W, and
//            current_i = W·L_i(t).
//   behind:  NOT < 1. SWRR picks the node with the largest absolute lag, not the earliest
//            deadline among the eligible, and can miss the quota: with weights {1, 5, 21, 21} the
//            fourth node has 6 picks after 16 although its share is exactly 7 (tested). The only
//            bound we can prove is the trivial L_i < (n−1)·(1 − 1/n) from Σ L = 0; a random
//            search found lags up to 1.44 at n = 20 (so windows up to ~2.4); the tests guard the
//            measured behaviour. Integer weights: after exactly W picks every node has exactly
//            w_i picks (every current is then a multiple of W, > −W, and they sum to 0).
//
// Dynamic tables (FastSwrr's default kKeepLag). Update keeps each surviving node's lag (in picks)
// under its new weight; Add starts a node at lag 0; a node leaving (Remove, or absent from an
// Update) has its lag spread over the survivors in proportion to weight (V moves by lag/W'), so
// Σ L stays 0. Keeping lags matters: with 1M nodes and far fewer picks per 3 s update, a picker
// that restarted at every update would give each period's picks to the same few nodes (tested).
// The price: right after a change the lags need not be those of a fresh start. Between two
// changes, with L0 the lags just after the first and E = Σ_j max(0, −L0_j) (total ahead-lag):
//       min(L0_i, p_i − 1) ≤ L_i(t) < max(1, L0_i) + p_i·E.
//   Lower: a node is picked only while eligible (L ≥ 0; the top of the eligible heap is
//   re-checked, so a node made ineligible when V moved back is never picked) and a pick lowers L
//   by 1 − p_i; other nodes' lags only rise. Upper: the busy-period argument for EDF. If node i's
//   job with deadline d is still undone at t, and the busy period of jobs with deadline ≤ d
//   began after the change, the static count above contradicts; so it began at the change, and
//   then t + 1 ≤ #jobs with deadline ≤ d ≤ Σ_j max(0, d·p_j + L0_j) ≤ d + E (for d ≥ 0), i.e.
//   the job is late by < E slots and L_i(t) = 1 + (t − d)·p_i < 1 + p_i·E; for d < 0 (the node
//   started more than a pick behind) the same count gives L_i(t) < L0_i + p_i·E.
//   E is small in practice (lags are spread over (−1, 1) and weighted by p_i); the tests drive
//   random Update/Remove/Add sequences and saw lags in [−1.00, 1.65].
//
// ## FastSwrr: how it is fast
//
// Virtual time V advances by 1/W per pick. Node i has a virtual start S_i (lag = w_i·(V − S_i))
// and deadline D_i = S_i + 1/w_i; a pick advances S_i to D_i. Nodes with S_i ≤ V are in the
// "eligible" heap keyed by D_i, the others in the "pending" heap keyed by S_i. A pick moves the
// pending nodes whose start has come (amortized ~1 per pick) to the eligible heap, takes the
// eligible node with the smallest deadline, and puts it back where its new start says (one
// sift when it stays eligible). The heaps are 4-ary with every node's four children in one
// 64-byte cache line (16-byte items), and a sift-down prefetches the grandchildren's lines while
// it compares the children. Measured at 1M nodes, ns per pick: 4-ary + prefetch 459, 4-ary 552,
// 8-ary + prefetch 524, binary + prefetch 683, binary 645. S_i is kept as base_i + k_i/w_i with
// an integer pick count k_i (and V as base + picks/W), so rounding error does not grow with the
// number of picks.
// Remove is O(1) amortized: the node's heap item is left as a tombstone (stamped with a
// generation) and dropped when it surfaces; when tombstones outnumber live nodes the heaps are
// rebuilt, O(n) once per Θ(n) Removes. Add is O(log n). Update is O(n) (heapify): ~15 ms at 1M.
//
// ## Thread safety
//
// A Picker is single-owner: Pick, Update, Add, Remove, size, Contains and OnRequestStart/Finish
// must not run concurrently on one object (wrap it in a mutex if several threads share it; a
// FastSwrr pick at 1M nodes is well under a microsecond, so a mutex around it is cheap up to a
// few million picks per second). To make picking cheap under contention, give every shard its
// own picker instance fed the same Update/Remove stream — the seed's "several algorithm
// instances". No lock and no shared cache lines on the pick path; each shard's stream is smooth
// by the bounds above, and the merged stream of k shards deviates from the shares by less than
// k times the single-picker bound on any window. P2C's in-flight counts are then per shard, like
// every per-worker least-request balancer (Envoy, brpc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "base/random.h"
#include "base/status.h"

namespace chorus::compute {

// Ids index dense tables inside the pickers (memory O(largest id)): use the router's node-table
// index, not a hash.
using NodeId = uint32_t;
inline constexpr NodeId kMaxNodeId = (NodeId{1} << 24) - 1;
// Accepted weights: finite, in [kMinPickWeight, kMaxPickWeight]. DynamicWeight's defaults fit.
inline constexpr double kMinPickWeight = 1e-12;
inline constexpr double kMaxPickWeight = 1e12;

struct WeightedNode {
  NodeId id = 0;
  double weight = 0;
};

class Picker {
 public:
  virtual ~Picker() = default;

  // The node for the next request; nullopt when the table is empty.
  virtual std::optional<NodeId> Pick() = 0;

  // Replaces the whole table. Nodes absent from `nodes` leave, new ones join, the others keep
  // their scheduling state under their new weight. Invalid input (an id > kMaxNodeId, a
  // duplicate id, a weight outside [kMinPickWeight, kMaxPickWeight] or NaN) → InvalidArgument,
  // and the picker is unchanged.
  [[nodiscard]] virtual Status Update(std::span<const WeightedNode> nodes) = 0;
  // A node joins (AlreadyExists if present, InvalidArgument for a bad id/weight).
  [[nodiscard]] virtual Status Add(NodeId id, double weight) = 0;
  // A node leaves before the next Pick. False if it was not there.
  virtual bool Remove(NodeId id) = 0;

  virtual size_t size() const = 0;
  virtual bool Contains(NodeId id) const = 0;

  // Request accounting: the router calls OnRequestStart(id) when it sends a request to the
  // picked node and OnRequestFinish(id) when the request ends (success or failure), also for
  // nodes removed meanwhile. Only load-aware pickers use them; the SWRR pickers ignore them.
  virtual void OnRequestStart(NodeId /*id*/) {}
  virtual void OnRequestFinish(NodeId /*id*/) {}
};

// nginx smooth weighted round robin, O(n) per pick. Remove/Add/Update are O(n). Unlike nginx,
// a table change keeps every node's lag (current / total) rather than its raw current — with
// real weights whose scale moves every 3 s the raw current would be off by the ratio of the
// totals — and a leaver's current is spread over the rest, so Σ current stays 0.
class StaticSwrr final : public Picker {
 public:
  std::optional<NodeId> Pick() override;
  [[nodiscard]] Status Update(std::span<const WeightedNode> nodes) override;
  [[nodiscard]] Status Add(NodeId id, double weight) override;
  bool Remove(NodeId id) override;
  size_t size() const override { return nodes_.size(); }
  bool Contains(NodeId id) const override;

 private:
  struct Node {
    double weight;
    double current;
    NodeId id;
  };
  // Spreads `current` of a leaving node over the others by weight so Σ current stays 0.
  void SpreadCurrent(double current);

  std::vector<Node> nodes_;
  std::vector<int32_t> index_;  // id → position in nodes_, −1 if absent
  double total_ = 0;
};

// Smooth weighted picks in O(log n): EEVDF / quota method (see the header comment).
class FastSwrr final : public Picker {
 public:
  enum class UpdateMode {
    kKeepLag,  // surviving nodes keep their lag (default: continuity across the 3 s updates)
    kReset,    // every node starts at lag 0, as in a fresh picker
  };
  FastSwrr();
  explicit FastSwrr(UpdateMode mode);
  ~FastSwrr() override;
  FastSwrr(const FastSwrr&) = delete;
  FastSwrr& operator=(const FastSwrr&) = delete;

  std::optional<NodeId> Pick() override;
  [[nodiscard]] Status Update(std::span<const WeightedNode> nodes) override;
  [[nodiscard]] Status Add(NodeId id, double weight) override;
  bool Remove(NodeId id) override;
  size_t size() const override { return live_; }
  bool Contains(NodeId id) const override;

 private:
  struct Entry;
  class Heap;

  double VirtualTime() const { return v_base_ + static_cast<double>(picks_) * inv_total_; }
  double Start(const Entry& e) const;
  // Makes the current V the new origin after the total weight changed.
  void RebaseVirtualTime();
  // Puts every live node into the right heap, dropping tombstones. O(n).
  void RebuildHeaps();
  // Moves pending nodes whose start has come into the eligible heap.
  void Promote(double v);

  UpdateMode mode_;
  std::vector<Entry> entries_;      // indexed by id
  std::unique_ptr<Heap> eligible_;  // keyed by deadline
  std::unique_ptr<Heap> pending_;   // keyed by start
  size_t live_ = 0;
  size_t tombstones_ = 0;  // heap items of removed nodes not yet dropped
  double total_ = 0;
  double total_at_recompute_ = 0;  // to notice cancellation in the running total_
  double inv_total_ = 0;
  double v_base_ = 0;
  uint64_t picks_ = 0;  // since v_base_
};

// Power of two choices on in-flight requests per unit of weight. O(1) per pick and per Remove.
class P2cLeastRequest final : public Picker {
 public:
  explicit P2cLeastRequest(uint64_t seed);

  std::optional<NodeId> Pick() override;
  [[nodiscard]] Status Update(std::span<const WeightedNode> nodes) override;
  [[nodiscard]] Status Add(NodeId id, double weight) override;
  bool Remove(NodeId id) override;
  size_t size() const override { return nodes_.size(); }
  bool Contains(NodeId id) const override;
  void OnRequestStart(NodeId id) override;
  void OnRequestFinish(NodeId id) override;

  // Requests in flight on `id` as counted from the hooks (0 for unknown ids).
  int64_t in_flight(NodeId id) const;

 private:
  struct Node {
    double inv_weight;
    NodeId id;
  };
  std::vector<Node> nodes_;
  std::vector<int32_t> index_;      // id → position in nodes_, −1 if absent
  std::vector<int64_t> in_flight_;  // by id; survives Remove so late finishes are counted
  Random rng_;
};

enum class PickerKind { kStaticSwrr, kFastSwrr, kP2cLeastRequest };
std::unique_ptr<Picker> MakePicker(PickerKind kind, uint64_t seed = 1);

}  // namespace chorus::compute
