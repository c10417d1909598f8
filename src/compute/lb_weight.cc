#include "compute/lb_weight.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace chorus::compute {
namespace {

// What one node's weight computation found, for the table statistics.
struct WeightFlags {
  bool idle = false;
  bool full = false;
  bool invalid = false;
};

// Clamp that also maps NaN to `lo` (std::clamp would propagate NaN).
double ClampOrLow(double x, double lo, double hi) {
  if (!(x >= lo)) return lo;  // NaN and below
  return x > hi ? hi : x;
}

// Last-resort bounds used when the options themselves are bad (Validate failed): the result
// must stay positive and finite whatever the caller passed.
constexpr double kAbsoluteMinWeight = 1e-12;
constexpr double kAbsoluteMaxWeight = 1e12;

// The per-request share of a node, or NaN when the node has no measurement (the caller
// substitutes the prior).
double MeasuredShare(const NodeLoad& load, const WeightOptions& o, WeightFlags* flags) {
  double c = load.concurrency;
  if (std::isnan(c) || c < 0) {
    flags->invalid = true;
    c = 0;
  }
  const double u = load.utilization;
  if (!std::isfinite(u)) return std::nan("");  // unknown load: prior (flagged by the caller)
  const double uc = std::clamp(u, 0.0, 1.0);
  if (c < o.idle_below_concurrency || uc < o.min_measured_utilization) return std::nan("");
  return uc / c;  // c may be +inf: share 0, clamped up to min_share by the caller
}

// `headroom_norm` is 1 / log1p(headroom_scale), computed once per table.
double WeightWithPrior(const NodeLoad& load, const WeightOptions& o, double headroom_norm, double prior,
                       WeightFlags* flags) {
  // Capacity.
  const double cap_raw = load.capacity;
  if (std::isnan(cap_raw) || cap_raw < 0) flags->invalid = true;
  const double cap = ClampOrLow(cap_raw, o.min_capacity, o.max_capacity);

  // Headroom.
  double u = load.utilization;
  if (!std::isfinite(u)) {
    flags->invalid = true;
    u = 1;  // unknown: probe only
  } else if (u < 0 || u > 1) {
    flags->invalid = true;
    u = std::clamp(u, 0.0, 1.0);
  }
  const double k = o.headroom_scale;
  double headroom = std::log1p(k * (1 - u)) * headroom_norm;
  if (!(headroom >= o.min_headroom)) {  // also catches NaN from bad options
    headroom = o.min_headroom;
    flags->full = true;
  }
  headroom = std::min(headroom, 1.0);

  // Per-request share.
  double share = MeasuredShare(load, o, flags);
  if (std::isnan(share)) {
    flags->idle = true;
    share = prior;
  }
  share = ClampOrLow(share, o.min_share, o.max_share);

  double w = cap * headroom * share;
  w = ClampOrLow(w, o.min_weight, o.max_weight);
  // Bad options (NaN or non-positive bounds) must not leak out as a non-positive weight.
  return ClampOrLow(w, kAbsoluteMinWeight, kAbsoluteMaxWeight);
}

}  // namespace

Status WeightOptions::Validate() const {
  auto positive = [](double x) { return std::isfinite(x) && x > 0; };
  if (!positive(headroom_scale)) return InvalidArgument("headroom_scale must be positive");
  if (!positive(min_headroom) || min_headroom > 1) {
    return InvalidArgument("min_headroom must be in (0, 1]");
  }
  if (!(std::isfinite(idle_below_concurrency) && idle_below_concurrency >= 0)) {
    return InvalidArgument("idle_below_concurrency must be finite and >= 0");
  }
  if (!(std::isfinite(min_measured_utilization) && min_measured_utilization >= 0 &&
        min_measured_utilization <= 1)) {
    return InvalidArgument("min_measured_utilization must be in [0, 1]");
  }
  if (!positive(min_share) || !positive(max_share) || min_share > max_share) {
    return InvalidArgument("need 0 < min_share <= max_share");
  }
  if (!positive(prior_share)) return InvalidArgument("prior_share must be positive");
  if (!positive(min_capacity) || !positive(max_capacity) || min_capacity > max_capacity) {
    return InvalidArgument("need 0 < min_capacity <= max_capacity");
  }
  if (!positive(min_weight) || !positive(max_weight) || min_weight > max_weight) {
    return InvalidArgument("need 0 < min_weight <= max_weight");
  }
  return Status::Ok();
}

double NodeCapacity(double cpu_cores, double gpu_cards, double card_perf) {
  auto nonneg = [](double x) { return x > 0 ? x : 0.0; };  // NaN → 0
  const double cards = nonneg(gpu_cards);
  if (cards > 0) return cards * nonneg(card_perf);
  return nonneg(cpu_cores);
}

double DynamicWeight(const NodeLoad& load, const WeightOptions& options) {
  WeightFlags flags;
  return WeightWithPrior(load, options, 1 / std::log1p(options.headroom_scale), options.prior_share, &flags);
}

std::vector<double> RecomputeWeights(std::span<const NodeLoad> loads, const WeightOptions& options,
                                     WeightTableStats* stats) {
  double prior = options.prior_share;
  if (options.prior_from_fleet) {
    std::vector<double> shares;
    shares.reserve(loads.size());
    for (const NodeLoad& load : loads) {
      WeightFlags ignored;
      const double s = MeasuredShare(load, options, &ignored);
      if (!std::isnan(s)) shares.push_back(ClampOrLow(s, options.min_share, options.max_share));
    }
    if (!shares.empty()) {
      auto mid = shares.begin() + static_cast<std::ptrdiff_t>(shares.size() / 2);
      std::nth_element(shares.begin(), mid, shares.end());
      prior = *mid;
    }
  }

  const double headroom_norm = 1 / std::log1p(options.headroom_scale);
  std::vector<double> out(loads.size());
  WeightTableStats local;
  local.prior_share = ClampOrLow(prior, options.min_share, options.max_share);
  for (size_t i = 0; i < loads.size(); ++i) {
    WeightFlags flags;
    out[i] = WeightWithPrior(loads[i], options, headroom_norm, prior, &flags);
    local.idle += flags.idle;
    local.full += flags.full;
    local.invalid += flags.invalid;
  }
  if (stats != nullptr) *stats = local;
  return out;
}

}  // namespace chorus::compute
