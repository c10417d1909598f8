#include "base/metrics.h"

#include "base/text.h"

#include <fmt/format.h>

#include <cmath>
#include <iterator>
#include <limits>

#include "base/logging.h"

namespace chorus {

namespace metrics_internal {

uint32_t AssignStripe() {
  static std::atomic<uint32_t> next{0};
  const uint32_t s = next.fetch_add(1, std::memory_order_relaxed) % kMetricStripes;
  tls_stripe = s;
  return s;
}

}  // namespace metrics_internal

namespace {

using metrics_internal::FamilyState;
using metrics_internal::Line;

bool IsNameStart(char c, bool colon) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}
bool IsNameChar(char c, bool colon) { return IsNameStart(c, colon) || (c >= '0' && c <= '9'); }


// Appends `s` escaped for the exposition format. Label values escape backslash, double quote
// and newline; HELP text only backslash and newline. Malformed UTF-8 becomes U+FFFD, because
// Prometheus rejects the whole scrape on an invalid label value.
void AppendEscaped(std::string& out, std::string_view s, bool label_value) {
  for (size_t i = 0; i < s.size();) {
    const size_t n = Utf8SequenceLength(s, i);
    if (n == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
      continue;
    }
    if (n == 1) {
      const char c = s[i];
      if (c == '\\') {
        out += "\\\\";
      } else if (c == '\n') {
        out += "\\n";
      } else if (c == '"' && label_value) {
        out += "\\\"";
      } else {
        out += c;
      }
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
}

// Prometheus parses sample values with Go's ParseFloat: integers print without exponent,
// infinities as +Inf/-Inf, NaN as NaN, other values in the shortest form that round-trips.
void AppendDouble(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else if (v == std::trunc(v) && std::fabs(v) < 1e15) {
    fmt::format_to(std::back_inserter(out), "{}", static_cast<int64_t>(v));
  } else {
    fmt::format_to(std::back_inserter(out), "{}", v);
  }
}

std::string FormatDouble(double v) {
  std::string s;
  AppendDouble(s, v);
  return s;
}

// Orders label-value tuples lexicographically; transparent so lookups by span<string_view>
// do not allocate.
struct LabelLess {
  using is_transparent = void;
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(),
                                        [](std::string_view x, std::string_view y) { return x < y; });
  }
};

std::string Join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) {
    if (!s.empty()) s += ',';
    s += x;
  }
  return s;
}

}  // namespace

namespace metrics_internal {

enum class Kind { kCounter, kGauge, kHistogram, kCounterCallback, kGaugeCallback };

std::string_view KindName(Kind k) {
  switch (k) {
    case Kind::kCounter: return "counter";
    case Kind::kGauge: return "gauge";
    case Kind::kHistogram: return "histogram";
    case Kind::kCounterCallback: return "counter callback";
    case Kind::kGaugeCallback: return "gauge callback";
  }
  return "unknown";
}

std::string_view ExpositionType(Kind k) {
  switch (k) {
    case Kind::kCounter:
    case Kind::kCounterCallback: return "counter";
    case Kind::kGauge:
    case Kind::kGaugeCallback: return "gauge";
    case Kind::kHistogram: return "histogram";
  }
  return "untyped";
}

// One family: its definition (immutable after construction) and its series (guarded by mu_).
class FamilyState {
 public:
  FamilyState(Kind kind, std::string_view name, std::string_view help, std::vector<std::string> label_names,
              std::vector<double> bounds)
      : kind_(kind),
        name_(name),
        help_(help),
        label_names_(std::move(label_names)),
        bounds_(std::move(bounds)) {}
  virtual ~FamilyState() = default;

  Kind kind() const { return kind_; }
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  const std::vector<double>& bounds() const { return bounds_; }

  bool SameDefinition(const FamilyState& o) const {
    return kind_ == o.kind_ && help_ == o.help_ && label_names_ == o.label_names_ && bounds_ == o.bounds_;
  }

  std::vector<std::string> SeriesNames() const {
    if (kind_ == Kind::kHistogram) return {name_ + "_bucket", name_ + "_sum", name_ + "_count"};
    return {name_};
  }

  // Appends HELP, TYPE and the series; nothing when the family has no series yet.
  void Render(std::string& out) const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (!HasSeriesLocked()) return;
    if (!help_.empty()) {
      out += "# HELP ";
      out += name_;
      out += ' ';
      AppendEscaped(out, help_, /*label_value=*/false);
      out += '\n';
    }
    out += "# TYPE ";
    out += name_;
    out += ' ';
    out += ExpositionType(kind_);
    out += '\n';
    RenderSeriesLocked(out);
  }

 protected:
  virtual bool HasSeriesLocked() const REQUIRES(mu_) = 0;
  virtual void RenderSeriesLocked(std::string& out) const REQUIRES(mu_) = 0;

  // `name{l1="v1",l2="v2",extra="x"} ` (braces omitted when there are no labels).
  void AppendSeries(std::string& out, std::string_view suffix, const std::vector<std::string>& values,
                    std::string_view extra_name = {}, std::string_view extra_value = {}) const {
    out += name_;
    out += suffix;
    if (!values.empty() || !extra_name.empty()) {
      out += '{';
      for (size_t i = 0; i < values.size(); ++i) {
        if (i) out += ',';
        out += label_names_[i];
        out += "=\"";
        AppendEscaped(out, values[i], /*label_value=*/true);
        out += '"';
      }
      if (!extra_name.empty()) {
        if (!values.empty()) out += ',';
        out += extra_name;
        out += "=\"";
        out += extra_value;
        out += '"';
      }
      out += '}';
    }
    out += ' ';
  }

  // Guards the series of the derived family (children_ / series_) and serialises Render().
  mutable Mutex mu_;

 private:
  const Kind kind_;
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const std::vector<double> bounds_;  // histograms only
};

template <typename T>
class ChildFamily final : public FamilyState {
 public:
  ChildFamily(Kind kind, std::string_view name, std::string_view help, std::vector<std::string> label_names,
              std::vector<double> bounds)
      : FamilyState(kind, name, help, std::move(label_names), std::move(bounds)), dropped_(MakeChild()) {
    for (double b : this->bounds()) le_.push_back(FormatDouble(b));
    // An unlabelled metric is exported (as zero) from registration on.
    if (label_names_size() == 0) children_.emplace(std::vector<std::string>{}, MakeChild());
  }

  template <typename Values>
  T& Child(const Values& values) EXCLUDES(mu_) {
    if (values.size() != label_names_size()) return Dropped(values.size());
    MutexLock lock(mu_);
    auto it = children_.find(values);
    if (it == children_.end()) {
      it = children_.emplace(std::vector<std::string>(values.begin(), values.end()), MakeChild()).first;
    }
    return *it->second;
  }

 protected:
  bool HasSeriesLocked() const REQUIRES(mu_) override { return !children_.empty(); }

  void RenderSeriesLocked(std::string& out) const REQUIRES(mu_) override {
    for (const auto& [values, child] : children_) {
      if constexpr (std::is_same_v<T, Histogram>) {
        const Histogram::Snapshot snap = child->Collect();
        for (size_t i = 0; i < le_.size(); ++i) {
          AppendSeries(out, "_bucket", values, "le", le_[i]);
          fmt::format_to(std::back_inserter(out), "{}\n", snap.cumulative[i]);
        }
        AppendSeries(out, "_bucket", values, "le", "+Inf");
        fmt::format_to(std::back_inserter(out), "{}\n", snap.count);
        AppendSeries(out, "_sum", values);
        AppendDouble(out, snap.sum);
        out += '\n';
        AppendSeries(out, "_count", values);
        fmt::format_to(std::back_inserter(out), "{}\n", snap.count);
      } else {
        AppendSeries(out, "", values);
        fmt::format_to(std::back_inserter(out), "{}\n", child->Value());
      }
    }
  }

 private:
  size_t label_names_size() const { return label_names().size(); }

  std::unique_ptr<T> MakeChild() const {
    if constexpr (std::is_same_v<T, Histogram>) {
      return std::make_unique<Histogram>(std::span<const double>(bounds()));
    } else {
      return std::make_unique<T>();
    }
  }

  // A caller bug: keep serving, count into a child nobody renders, and say so in the log
  // (the 1st, 2nd, 4th, 8th... time, so a bug on a hot path cannot flood the log).
  T& Dropped(size_t got) {
    const uint64_t n = dropped_calls_.fetch_add(1, std::memory_order_relaxed) + 1;
    if ((n & (n - 1)) == 0) {
      GetLogger("metrics")->error(
          "bug: metric {} got {} label values but has {} labels ({}); updates dropped "
          "(occurrence {})",
          name(), got, label_names_size(), Join(label_names()), n);
    }
    return *dropped_;
  }

  std::vector<std::string> le_;  // rendered bucket bounds
  std::map<std::vector<std::string>, std::unique_ptr<T>, LabelLess> children_ GUARDED_BY(mu_);
  const std::unique_ptr<T> dropped_;
  std::atomic<uint64_t> dropped_calls_{0};
};

class CallbackFamily final : public FamilyState {
 public:
  using FamilyState::FamilyState;

  Status Add(const std::vector<std::string>& values, std::function<double()> fn) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (!series_.emplace(values, std::move(fn)).second) {
      return AlreadyExists(
          fmt::format("metric {}: a callback for labels {{{}}} is already registered", name(), Join(values)));
    }
    return Status::Ok();
  }

  void Remove(const std::vector<std::string>& values) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    series_.erase(values);
  }

 protected:
  bool HasSeriesLocked() const REQUIRES(mu_) override { return !series_.empty(); }

  void RenderSeriesLocked(std::string& out) const REQUIRES(mu_) override {
    for (const auto& [values, fn] : series_) {
      AppendSeries(out, "", values);
      AppendDouble(out, fn());
      out += '\n';
    }
  }

 private:
  std::map<std::vector<std::string>, std::function<double()>, LabelLess> series_ GUARDED_BY(mu_);
};

}  // namespace metrics_internal

using metrics_internal::CallbackFamily;
using metrics_internal::ChildFamily;
using metrics_internal::Kind;

bool IsValidMetricName(std::string_view name) {
  if (name.empty() || !IsNameStart(name[0], /*colon=*/true)) return false;
  for (char c : name) {
    if (!IsNameChar(c, /*colon=*/true)) return false;
  }
  return true;
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || !IsNameStart(name[0], /*colon=*/false)) return false;
  if (name.starts_with("__")) return false;
  for (char c : name) {
    if (!IsNameChar(c, /*colon=*/false)) return false;
  }
  return true;
}

std::vector<double> ExponentialBuckets(double start, double factor, size_t count) {
  std::vector<double> b;
  b.reserve(count);
  for (double v = start; b.size() < count; v *= factor) b.push_back(v);
  return b;
}

std::vector<double> LinearBuckets(double start, double width, size_t count) {
  std::vector<double> b;
  b.reserve(count);
  for (size_t i = 0; i < count; ++i) b.push_back(start + width * static_cast<double>(i));
  return b;
}

// ---- Counter / Histogram -------------------------------------------------------------------

uint64_t Counter::Value() const {
  uint64_t sum = 0;
  for (const auto& s : stripes_) sum += s.value.load(std::memory_order_relaxed);
  return sum;
}

Histogram::Histogram(std::span<const double> bounds)
    : bounds_(bounds),
      // slot 0: sum; slots 1..bounds+1: per-bucket counts, the last one +Inf.
      lines_per_stripe_((bounds.size() + 2 + Line::kSlots - 1) / Line::kSlots),
      lines_(std::make_unique<Line[]>(lines_per_stripe_ * kMetricStripes)) {}

Histogram::Snapshot Histogram::Collect() const {
  Snapshot snap;
  snap.bounds.assign(bounds_.begin(), bounds_.end());
  snap.cumulative.assign(bounds_.size() + 1, 0);
  for (size_t s = 0; s < kMetricStripes; ++s) {
    const Line* stripe = &lines_[s * lines_per_stripe_];
    snap.sum += std::bit_cast<double>(stripe[0].slot[0].load(std::memory_order_relaxed));
    for (size_t b = 0; b <= bounds_.size(); ++b) {
      const size_t slot = b + 1;
      snap.cumulative[b] +=
          stripe[slot / Line::kSlots].slot[slot % Line::kSlots].load(std::memory_order_relaxed);
    }
  }
  for (size_t b = 1; b < snap.cumulative.size(); ++b) snap.cumulative[b] += snap.cumulative[b - 1];
  snap.count = snap.cumulative.back();
  return snap;
}

// ---- Family --------------------------------------------------------------------------------

template <typename T>
T& Family<T>::WithLabels(std::span<const std::string_view> values) {
  return static_cast<ChildFamily<T>*>(state_)->Child(values);
}

template <typename T>
T& Family<T>::WithLabels(std::span<const std::string> values) {
  return static_cast<ChildFamily<T>*>(state_)->Child(values);
}

template <typename T>
const std::string& Family<T>::name() const {
  return state_->name();
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---- CallbackHandle ------------------------------------------------------------------------

CallbackHandle& CallbackHandle::operator=(CallbackHandle&& other) noexcept {
  if (this != &other) {
    Reset();
    family_ = std::move(other.family_);
    values_ = std::move(other.values_);
    other.family_.reset();
  }
  return *this;
}

void CallbackHandle::Reset() {
  if (auto family = family_.lock()) static_cast<CallbackFamily*>(family.get())->Remove(values_);
  family_.reset();
  values_.clear();
}

// ---- MetricsRegistry -----------------------------------------------------------------------

namespace {

Status ValidateDefinition(std::string_view name, const std::vector<std::string>& label_names,
                          bool histogram) {
  if (!IsValidMetricName(name)) {
    return InvalidArgument(
        fmt::format("metric name '{}' is invalid: must match [a-zA-Z_:][a-zA-Z0-9_:]*", name));
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& l = label_names[i];
    if (!IsValidLabelName(l)) {
      return InvalidArgument(fmt::format(
          "metric {}: label name '{}' is invalid: must match [a-zA-Z_][a-zA-Z0-9_]* and not start "
          "with __",
          name, l));
    }
    if (histogram && l == "le") {
      return InvalidArgument(fmt::format("metric {}: a histogram cannot have a label named le", name));
    }
    for (size_t j = 0; j < i; ++j) {
      if (label_names[j] == l) {
        return InvalidArgument(fmt::format("metric {}: label name '{}' appears twice", name, l));
      }
    }
  }
  return Status::Ok();
}

}  // namespace

MetricsRegistry::MetricsRegistry() = default;
MetricsRegistry::~MetricsRegistry() = default;

Result<std::shared_ptr<FamilyState>> MetricsRegistry::Register(std::shared_ptr<FamilyState> wanted) {
  MutexLock lock(mu_);
  auto it = families_.find(wanted->name());
  if (it != families_.end()) {
    const FamilyState& have = *it->second;
    if (have.SameDefinition(*wanted)) return it->second;
    std::string why;
    if (have.kind() != wanted->kind()) {
      why = fmt::format("it is a {}, not a {}", KindName(have.kind()), KindName(wanted->kind()));
    } else if (have.help() != wanted->help()) {
      why = fmt::format("its help is \"{}\", not \"{}\"", have.help(), wanted->help());
    } else if (have.label_names() != wanted->label_names()) {
      why = fmt::format("its labels are {{{}}}, not {{{}}}", Join(have.label_names()),
                        Join(wanted->label_names()));
    } else {
      why = "its bucket bounds differ";
    }
    return AlreadyExists(fmt::format("metric {} is already registered differently: {}", wanted->name(), why));
  }
  const std::vector<std::string> series = wanted->SeriesNames();
  for (const std::string& s : series) {
    auto owner = series_owner_.find(s);
    if (owner != series_owner_.end()) {
      return AlreadyExists(fmt::format("metric {}: series name {} is already used by metric {}",
                                       wanted->name(), s, owner->second));
    }
  }
  for (const std::string& s : series) series_owner_.emplace(s, wanted->name());
  families_.emplace(wanted->name(), wanted);
  return wanted;
}

Result<Family<Counter>> MetricsRegistry::Counter(std::string_view name, std::string_view help,
                                                 std::vector<std::string> label_names) {
  CHORUS_RETURN_IF_ERROR(ValidateDefinition(name, label_names, /*histogram=*/false));
  CHORUS_ASSIGN_OR_RETURN(auto state,
                          Register(std::make_shared<ChildFamily<chorus::Counter>>(
                              Kind::kCounter, name, help, std::move(label_names), std::vector<double>{})));
  return Family<chorus::Counter>(state.get());
}

Result<Family<Gauge>> MetricsRegistry::Gauge(std::string_view name, std::string_view help,
                                             std::vector<std::string> label_names) {
  CHORUS_RETURN_IF_ERROR(ValidateDefinition(name, label_names, /*histogram=*/false));
  CHORUS_ASSIGN_OR_RETURN(auto state,
                          Register(std::make_shared<ChildFamily<chorus::Gauge>>(
                              Kind::kGauge, name, help, std::move(label_names), std::vector<double>{})));
  return Family<chorus::Gauge>(state.get());
}

Result<Family<Histogram>> MetricsRegistry::Histogram(std::string_view name, std::string_view help,
                                                     std::vector<double> bounds,
                                                     std::vector<std::string> label_names) {
  CHORUS_RETURN_IF_ERROR(ValidateDefinition(name, label_names, /*histogram=*/true));
  if (!bounds.empty() && bounds.back() == std::numeric_limits<double>::infinity()) bounds.pop_back();
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) {
      return InvalidArgument(
          fmt::format("metric {}: bucket bound {} is not finite", name, FormatDouble(bounds[i])));
    }
    if (i > 0 && !(bounds[i - 1] < bounds[i])) {
      return InvalidArgument(fmt::format("metric {}: bucket bounds must increase strictly ({} then {})", name,
                                         FormatDouble(bounds[i - 1]), FormatDouble(bounds[i])));
    }
  }
  CHORUS_ASSIGN_OR_RETURN(auto state,
                          Register(std::make_shared<ChildFamily<chorus::Histogram>>(
                              Kind::kHistogram, name, help, std::move(label_names), std::move(bounds))));
  return Family<chorus::Histogram>(state.get());
}

Result<CallbackHandle> MetricsRegistry::RegisterCallback(bool counter, std::string_view name,
                                                         std::string_view help, const MetricLabels& labels,
                                                         std::function<double()> fn) {
  std::vector<std::string> label_names;
  std::vector<std::string> values;
  for (const auto& [k, v] : labels) {
    label_names.push_back(k);
    values.push_back(v);
  }
  CHORUS_RETURN_IF_ERROR(ValidateDefinition(name, label_names, /*histogram=*/false));
  if (!fn) return InvalidArgument(fmt::format("metric {}: callback is empty", name));
  CHORUS_ASSIGN_OR_RETURN(auto state, Register(std::make_shared<CallbackFamily>(
                                          counter ? Kind::kCounterCallback : Kind::kGaugeCallback, name, help,
                                          std::move(label_names), std::vector<double>{})));
  CHORUS_RETURN_IF_ERROR(static_cast<CallbackFamily*>(state.get())->Add(values, std::move(fn)));
  return CallbackHandle(state, std::move(values));
}

Result<CallbackHandle> MetricsRegistry::GaugeCallback(std::string_view name, std::string_view help,
                                                      std::function<double()> fn) {
  return RegisterCallback(false, name, help, {}, std::move(fn));
}

Result<CallbackHandle> MetricsRegistry::GaugeCallback(std::string_view name, std::string_view help,
                                                      const MetricLabels& labels,
                                                      std::function<double()> fn) {
  return RegisterCallback(false, name, help, labels, std::move(fn));
}

Result<CallbackHandle> MetricsRegistry::CounterCallback(std::string_view name, std::string_view help,
                                                        std::function<double()> fn) {
  return RegisterCallback(true, name, help, {}, std::move(fn));
}

Result<CallbackHandle> MetricsRegistry::CounterCallback(std::string_view name, std::string_view help,
                                                        const MetricLabels& labels,
                                                        std::function<double()> fn) {
  return RegisterCallback(true, name, help, labels, std::move(fn));
}

std::string MetricsRegistry::Render() const {
  // Copy the family list so callbacks run without the registry lock held.
  std::vector<std::shared_ptr<FamilyState>> families;
  {
    MutexLock lock(mu_);
    families.reserve(families_.size());
    for (const auto& [name, family] : families_) families.push_back(family);
  }
  std::string out;
  for (const auto& family : families) family->Render(out);
  return out;
}

MetricsRegistry& DefaultMetrics() {
  static MetricsRegistry* const registry = new MetricsRegistry();  // never destroyed, by design
  return *registry;
}

}  // namespace chorus
