#include "compute_lb.h"

#include <time.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "base/random.h"
#include "chorus/compute/v1/compute.pb.h"
#include "compute/router.h"

namespace chorus::bench {

// ---------------------------------------------------------------------------------------------
// LbNodeModel

LbNodeModel::LbNodeModel(int cores, double speed, Discipline discipline)
    : cores_(std::max(1, cores)), base_speed_(speed), speed_(speed), discipline_(discipline) {}

double LbNodeModel::Rate() const {
  const size_t n = running_.size();
  if (n == 0) return 0;
  if (discipline_ == Discipline::kFcfs) return speed_;  // at most `cores` run, each on a core
  return speed_ * std::min(1.0, static_cast<double>(cores_) / static_cast<double>(n));
}

void LbNodeModel::Advance(double t) {
  if (!(t > now_)) return;
  const double dt = t - now_;
  attained_ += Rate() * dt;
  busy_ += std::min(static_cast<double>(running_.size()), static_cast<double>(cores_)) * dt;
  in_flight_s_ += static_cast<double>(in_flight()) * dt;
  now_ = t;
}

namespace {
// Min-heap order on the finish mark.
constexpr auto kFinishesLater = [](const auto& a, const auto& b) { return a.finish > b.finish; };
}  // namespace

void LbNodeModel::Start(double t, uint64_t job, double work) {
  Advance(t);
  if (discipline_ == Discipline::kFcfs && running_.size() >= static_cast<size_t>(cores_)) {
    waiting_.emplace_back(job, work);
    return;
  }
  running_.push_back({attained_ + std::max(0.0, work), job});
  std::push_heap(running_.begin(), running_.end(), kFinishesLater);
}

double LbNodeModel::NextFinish() const {
  if (running_.empty()) return std::numeric_limits<double>::infinity();
  const double remaining = std::max(0.0, running_.front().finish - attained_);
  return now_ + remaining / Rate();
}

uint64_t LbNodeModel::FinishNext(double t) {
  Advance(t);
  std::pop_heap(running_.begin(), running_.end(), kFinishesLater);
  const Running done = running_.back();
  running_.pop_back();
  // t was computed from attained_ and may land a rounding error short of the mark.
  attained_ = std::max(attained_, done.finish);
  while (!waiting_.empty() && running_.size() < static_cast<size_t>(cores_)) {
    running_.push_back({attained_ + waiting_.front().second, waiting_.front().first});
    std::push_heap(running_.begin(), running_.end(), kFinishesLater);
    waiting_.pop_front();
  }
  return done.job;
}

void LbNodeModel::SetSlowdown(double t, double factor) {
  Advance(t);
  speed_ = base_speed_ / std::max(1.0, factor);
}

double LbNodeModel::BusyCoreSeconds(double t) {
  Advance(t);
  return busy_;
}

double LbNodeModel::InFlightSeconds(double t) {
  Advance(t);
  return in_flight_s_;
}

// ---------------------------------------------------------------------------------------------
// Options

namespace {

namespace pb = ::chorus::compute::v1;

constexpr char kApp[] = "bench";
constexpr char kSource[] = "sim";

double Seconds(std::chrono::nanoseconds d) { return std::chrono::duration<double>(d).count(); }
int64_t Nanos(double seconds) { return static_cast<int64_t>(std::llround(seconds * 1e9)); }

struct PolicySpec {
  compute::PickerKind kind;
  bool dynamic;
};

std::optional<PolicySpec> ParsePolicy(std::string_view name) {
  using compute::PickerKind;
  if (name == "dynamic") return PolicySpec{PickerKind::kFastSwrr, true};
  if (name == "static") return PolicySpec{PickerKind::kStaticSwrr, false};
  if (name == "p2c") return PolicySpec{PickerKind::kP2cLeastRequest, false};
  if (name == "p2c-dynamic") return PolicySpec{PickerKind::kP2cLeastRequest, true};
  if (name == "static-dynamic") return PolicySpec{PickerKind::kStaticSwrr, true};
  return std::nullopt;
}

bool ParsePositive(std::string_view text, double* out) {
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || !(v > 0) || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

std::string Fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

std::string Ms(int64_t nanos) { return Fmt(nanos >= 100'000'000 ? "%.0f" : "%.1f", nanos / 1e6); }

std::string Thousands(double v) {
  std::string digits = Fmt("%.0f", v);
  std::string out;
  const size_t start = digits[0] == '-' ? 1 : 0;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > start && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string JoinNumbers(const auto& values) {
  std::string s;
  for (const auto& v : values) s += (s.empty() ? "" : ",") + Fmt("%g", static_cast<double>(v));
  return s;
}

}  // namespace

Result<std::pair<double, double>> ParseNumberRange(std::string_view text) {
  const size_t dash = text.find('-', 1);
  double lo = 0, hi = 0;
  if (dash == std::string_view::npos) {
    if (!ParsePositive(text, &lo)) return InvalidArgument("\"" + std::string(text) + "\": expected N or A-B");
    return std::pair{lo, lo};
  }
  if (!ParsePositive(text.substr(0, dash), &lo) || !ParsePositive(text.substr(dash + 1), &hi) || hi < lo) {
    return InvalidArgument("\"" + std::string(text) + "\": expected A-B with 0 < A <= B");
  }
  return std::pair{lo, hi};
}

Status ParseWeightOptions(std::string_view text, compute::WeightOptions* out) {
  compute::WeightOptions w = *out;
  const std::pair<const char*, double*> fields[] = {
      {"headroom_scale", &w.headroom_scale},
      {"min_headroom", &w.min_headroom},
      {"idle_below_concurrency", &w.idle_below_concurrency},
      {"min_measured_utilization", &w.min_measured_utilization},
      {"prior_share", &w.prior_share},
      {"min_share", &w.min_share},
      {"max_share", &w.max_share},
      {"min_capacity", &w.min_capacity},
      {"max_capacity", &w.max_capacity},
      {"min_weight", &w.min_weight},
      {"max_weight", &w.max_weight},
  };
  while (!text.empty()) {
    const size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos)
      return InvalidArgument("\"" + std::string(item) + "\": expected name=value");
    const std::string_view name = item.substr(0, eq), value = item.substr(eq + 1);
    double v = 0;
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc() || end != value.data() + value.size()) {
      return InvalidArgument("\"" + std::string(item) + "\": not a number");
    }
    if (name == "prior_from_fleet") {
      w.prior_from_fleet = v != 0;
      continue;
    }
    bool known = false;
    for (const auto& [field, target] : fields) {
      if (name == field) {
        *target = v;
        known = true;
      }
    }
    if (!known) return InvalidArgument("unknown weight option \"" + std::string(name) + "\"");
  }
  CHORUS_RETURN_IF_ERROR(w.Validate());
  *out = w;
  return Status::Ok();
}

Status ComputeLbOptions::Validate() const {
  if (nodes < 1 || nodes > 100'000) return InvalidArgument("--nodes: 1..100000");
  if (speeds.empty()) return InvalidArgument("--speeds: at least one");
  for (double s : speeds) {
    if (!(s > 0) || !std::isfinite(s)) return InvalidArgument("--speeds: positive numbers");
  }
  if (cores.empty()) return InvalidArgument("--cores: at least one");
  for (int c : cores) {
    if (c < 1 || c > 4096) return InvalidArgument("--cores: 1..4096");
  }
  if (max_in_flight < 0) return InvalidArgument("--max-in-flight: >= 0");
  if (!(load > 0) || load > 2) return InvalidArgument("--load: in (0, 2]");
  if (!(work_ms > 0) || !std::isfinite(work_ms)) return InvalidArgument("--work-ms: positive");
  if (!(work_cv >= 0) || work_cv > 10) return InvalidArgument("--work-cv: 0..10");
  if (!(slowdown_rate >= 0) || !std::isfinite(slowdown_rate)) return InvalidArgument("--slowdown-rate: >= 0");
  if (!(slowdown_factor_min >= 1) || slowdown_factor_max < slowdown_factor_min) {
    return InvalidArgument("--slowdown-factor: A-B with 1 <= A <= B");
  }
  if (slowdown_min <= std::chrono::nanoseconds::zero() || slowdown_max < slowdown_min) {
    return InvalidArgument("--slowdown-duration: A-B with 0 < A <= B");
  }
  if (warmup < std::chrono::nanoseconds::zero() || drain < std::chrono::nanoseconds::zero()) {
    return InvalidArgument("--warmup/--drain: >= 0");
  }
  if (duration <= std::chrono::nanoseconds::zero()) return InvalidArgument("--duration: > 0");
  if (heartbeat <= std::chrono::nanoseconds::zero() || weight_interval <= std::chrono::nanoseconds::zero() ||
      util_window <= std::chrono::nanoseconds::zero()) {
    return InvalidArgument("--heartbeat/--weight-interval/--util-window: > 0");
  }
  if (util_window > duration) return InvalidArgument("--util-window: at most --duration");
  if (!(time_scale >= 0) || !std::isfinite(time_scale)) return InvalidArgument("--time-scale: >= 0");
  if (policies.empty()) return InvalidArgument("--policies: at least one");
  for (const std::string& p : policies) {
    if (!ParsePolicy(p)) {
      return InvalidArgument("--policies: unknown \"" + p +
                             "\" (dynamic, static, p2c, p2c-dynamic, static-dynamic)");
    }
  }
  if (Status st = weights.Validate(); !st.ok()) return st.WithContext("weight options");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// The simulation of one policy

namespace {

// What a request carries to the node: its work, and for the books its arrival and whether it
// is measured. The router passes the payload through untouched (also to a retry's node).
struct Payload {
  double work;
  double arrival;
  uint8_t measured;
};

std::string EncodePayload(const Payload& p) {
  return std::string(reinterpret_cast<const char*>(&p), sizeof p);
}

// The router's clock: model time, moved by the event loop only.
class ModelClock final : public Clock {
 public:
  SteadyTime Now() const override {
    return origin_ + std::chrono::duration_cast<Duration>(std::chrono::duration<double>(t_));
  }
  WallTime WallNow() const override {
    return wall_origin_ + std::chrono::duration_cast<Duration>(Now() - origin_);
  }
  void Set(double t) { t_ = t; }

 private:
  // Any fixed origin after the epoch: the router compares against default (epoch) times.
  SteadyTime origin_ = SteadyTime() + std::chrono::hours(24);
  WallTime wall_origin_ = std::chrono::system_clock::now();
  double t_ = 0;
};

class LbSim;

class SimTransport final : public compute::InvokeTransport {
 public:
  explicit SimTransport(LbSim& sim) : sim_(sim) {}
  void Invoke(const compute::RouteTarget& target, std::shared_ptr<const std::string> payload,
              Done done) override;

 private:
  LbSim& sim_;
};

double CpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

class LbSim {
 public:
  LbSim(const ComputeLbOptions& o, std::string policy, PolicySpec spec)
      : o_(o),
        policy_(std::move(policy)),
        transport_(*this),
        arrivals_rng_(Random::ForShard(o.seed, 1)),
        work_rng_(Random::ForShard(o.seed, 2)) {
    compute::RouterOptions ro;
    ro.policy = spec.kind;
    ro.dynamic_weights = spec.dynamic;
    ro.weights = o.weights;
    ro.seed = o.seed;
    router_ = std::make_unique<compute::Router>(ro, clock_, transport_);

    warmup_end_ = Seconds(o.warmup);
    window_end_ = warmup_end_ + Seconds(o.duration);
    drain_end_ = window_end_ + Seconds(o.drain);
    double capacity = 0;  // core-seconds at 1× per second
    std::map<std::string, int> class_index;
    for (int i = 0; i < o.nodes; ++i) {
      const int cores = o.cores[static_cast<size_t>(i) % o.cores.size()];
      const double speed = o.speeds[static_cast<size_t>(i) % o.speeds.size()];
      capacity += cores * speed;
      const std::string label = std::to_string(cores) + "c " + Fmt("%g", speed) + "x";
      auto [it, inserted] = class_index.try_emplace(label, static_cast<int>(classes_.size()));
      if (inserted) classes_.push_back({label, 0, 0, 0, 0});
      ++classes_[static_cast<size_t>(it->second)].nodes;
      char id[32];
      std::snprintf(id, sizeof id, "n%03d", i);
      nodes_.push_back(Node{LbNodeModel(cores, speed, o.discipline), id, it->second});
      by_id_[id] = static_cast<uint32_t>(i);
    }
    arrival_rate_ = o.load * capacity / (o.work_ms / 1000.0);
    if (o.work_cv > 0) {
      const double shape = 1.0 / (o.work_cv * o.work_cv);
      gamma_ = std::gamma_distribution<double>(shape, o.work_ms / 1000.0 / shape);
    }
  }

  LbPolicyResult Run() {
    const double cpu0 = CpuSeconds();
    const auto wall0 = std::chrono::steady_clock::now();
    wall_start_ = wall0;

    // The view: the app, and every node idle.
    pb::ViewUpdate full;
    full.set_full(true);
    full.set_resource_id(kSource);
    full.add_apps()->set_name(kApp);
    for (size_t i = 0; i < nodes_.size(); ++i) *full.add_nodes() = NodeReport(i, 0, 0);
    router_->ApplyUpdate(kSource, full);

    // The schedule.
    Push(NextArrival(0), kArrival);
    const double hb = Seconds(o_.heartbeat);
    for (size_t i = 0; i < nodes_.size(); ++i) {
      Push(hb * (static_cast<double>(i) + 0.5) / static_cast<double>(nodes_.size()), kHeartbeat,
           static_cast<uint32_t>(i));
      ScheduleSlowdowns(i);
    }
    Push(Seconds(o_.weight_interval), kRecompute);
    Push(warmup_end_, kUtilSample, 0, 0);
    Push(window_end_, kWindowEnd);
    Push(drain_end_, kDrainEnd);

    const bool realtime = o_.time_scale > 0;
    double lag_sum = 0;
    uint64_t lag_n = 0;
    while (!events_.empty() && !stop_) {
      std::pop_heap(events_.begin(), events_.end(), Later);
      const Event e = events_.back();
      events_.pop_back();
      double now = e.t;
      if (realtime) {
        const auto due = wall_start_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                           std::chrono::duration<double>(e.t / o_.time_scale));
        // An event due within 100 µs runs now, at its model time: a sleep that short costs
        // more than it waits.
        if (due - std::chrono::steady_clock::now() > std::chrono::microseconds(100)) {
          std::this_thread::sleep_until(due);
        }
        const double wall_model =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_start_).count() *
            o_.time_scale;
        now = std::max({e.t, wall_model, now_});
        lag_sum += now - e.t;
        ++lag_n;
        result_.max_lag_ms = std::max(result_.max_lag_ms, (now - e.t) * 1e3);
      }
      now_ = now;
      clock_.Set(now);
      Dispatch(e);
      if (window_closed_ && outstanding_ == 0) stop_ = true;
    }
    if (outstanding_ > 0) {
      // Drain ran out: the measured requests still on nodes, at their age now.
      for (const Job& job : jobs_) {
        if (!job.live || !job.measured) continue;
        latency_.Record(Nanos(now_ - job.arrival));
        ++result_.unfinished;
      }
    }

    result_.policy = policy_;
    result_.latency = latency_;
    result_.requests = requests_;
    result_.completed = completed_;
    result_.failures = failures_;
    result_.retries = router_->stats().retries;
    result_.model_s = now_;
    result_.mean_lag_ms = lag_n ? lag_sum / static_cast<double>(lag_n) * 1e3 : 0;
    result_.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    result_.cpu_s = CpuSeconds() - cpu0;
    // Drop the router's pending calls before the jobs that hold their callbacks go.
    router_.reset();
    jobs_.clear();
    return std::move(result_);
  }

  // The transport's side: a request reaches a node.
  void Deliver(const compute::RouteTarget& target, const std::string& payload,
               compute::InvokeTransport::Done done) {
    auto it = by_id_.find(target.node_id);
    if (it == by_id_.end() || payload.size() != sizeof(Payload)) {
      done(Unavailable("no simulated node " + target.node_id));
      return;
    }
    Payload p;
    std::memcpy(&p, payload.data(), sizeof p);
    Node& node = nodes_[it->second];
    if (o_.max_in_flight > 0 && node.model.in_flight() >= o_.max_in_flight) {
      done(ResourceExhausted("every replica of " + std::string(kApp) + " on node " + node.id + " is busy"));
      return;
    }
    if (now_ >= warmup_end_ && now_ < window_end_) ++node.attempts;
    uint32_t slot;
    if (!free_jobs_.empty()) {
      slot = free_jobs_.back();
      free_jobs_.pop_back();
    } else {
      slot = static_cast<uint32_t>(jobs_.size());
      jobs_.emplace_back();
    }
    jobs_[slot] = Job{std::move(done), p.arrival, p.measured != 0, true};
    node.model.Start(now_, slot, p.work);
    Reschedule(it->second);
  }

 private:
  enum Kind : uint8_t {
    kArrival,
    kFinish,
    kSlowStart,
    kSlowEnd,
    kHeartbeat,
    kRecompute,
    kUtilSample,
    kWindowEnd,
    kDrainEnd,
  };
  struct Event {
    double t;
    uint64_t seq;  // ties run in scheduling order
    Kind kind;
    uint32_t node;
    uint64_t arg;  // kFinish: the node's generation; kUtilSample: the window number
    double value;  // kSlowStart: the factor
  };
  static bool Later(const Event& a, const Event& b) { return a.t != b.t ? a.t > b.t : a.seq > b.seq; }

  struct Node {
    LbNodeModel model;
    std::string id;
    int cls;
    uint64_t gen = 0;  // bumped on every change: older kFinish events are stale
    double hb_t = 0, hb_busy = 0, hb_in_flight_s = 0;
    double window_busy = 0;      // at the last utilization sample
    double run_busy = 0;         // at the window's start
    uint64_t attempts = 0;       // requests delivered during the window
    double last_reported_u = 0;  // for --verbose
    int last_reported_c = 0;
  };
  struct Job {
    compute::InvokeTransport::Done done;
    double arrival = 0;
    bool measured = false;
    bool live = false;
  };

  void Push(double t, Kind kind, uint32_t node = 0, uint64_t arg = 0, double value = 0) {
    events_.push_back({t, seq_++, kind, node, arg, value});
    std::push_heap(events_.begin(), events_.end(), Later);
  }

  double NextArrival(double t) { return t - std::log1p(-arrivals_rng_.NextDouble()) / arrival_rate_; }

  double DrawWork() { return o_.work_cv > 0 ? gamma_(work_rng_) : o_.work_ms / 1000.0; }

  // Every episode of node i up to the drain's end, from the node's own stream.
  void ScheduleSlowdowns(size_t i) {
    if (o_.slowdown_rate <= 0) return;
    Random rng = Random::ForShard(o_.seed ^ 0x5EED5EED5EEDULL, static_cast<uint32_t>(i));
    const double per_s = o_.slowdown_rate / 60.0;
    const double dmin = Seconds(o_.slowdown_min), dmax = Seconds(o_.slowdown_max);
    double t = -std::log1p(-rng.NextDouble()) / per_s;
    while (t < drain_end_) {
      const double length = dmin + (dmax - dmin) * rng.NextDouble();
      const double factor =
          o_.slowdown_factor_min + (o_.slowdown_factor_max - o_.slowdown_factor_min) * rng.NextDouble();
      Push(t, kSlowStart, static_cast<uint32_t>(i), 0, factor);
      Push(t + length, kSlowEnd, static_cast<uint32_t>(i));
      t += length - std::log1p(-rng.NextDouble()) / per_s;
    }
  }

  void Reschedule(uint32_t i) {
    Node& node = nodes_[i];
    ++node.gen;
    const double next = node.model.NextFinish();
    if (std::isfinite(next)) Push(next, kFinish, i, node.gen);
  }

  pb::NodeStatus NodeReport(size_t i, double utilization, int in_flight) const {
    const Node& node = nodes_[i];
    pb::NodeStatus s;
    s.set_node_id(node.id);
    s.set_cluster(kSource);
    s.set_address("sim://" + node.id);
    s.set_online(true);
    s.mutable_capacity()->set_cpu_millis(int64_t{node.model.cores()} * 1000);
    s.set_cpu_utilization(utilization);
    s.set_in_flight(in_flight);
    pb::ReplicaStatus* r = s.add_replicas();
    r->set_app(kApp);
    r->set_replica_id(node.id + "-r0");
    r->mutable_resources()->set_cpu_millis(int64_t{node.model.cores()} * 1000);
    r->set_state(pb::REPLICA_RUNNING);
    r->set_in_flight(in_flight);
    r->set_max_concurrency(o_.max_in_flight);
    return s;
  }

  void Dispatch(const Event& e) {
    switch (e.kind) {
      case kArrival:
        OnArrival(e.t);
        break;
      case kFinish: {
        Node& node = nodes_[e.node];
        if (e.arg != node.gen) break;  // stale: the node changed since
        const uint64_t slot = node.model.FinishNext(now_);
        Reschedule(e.node);
        Job& job = jobs_[slot];
        compute::InvokeTransport::Done done = std::move(job.done);
        job.live = false;
        free_jobs_.push_back(static_cast<uint32_t>(slot));
        done(std::string());
        break;
      }
      case kSlowStart:
      case kSlowEnd:
        nodes_[e.node].model.SetSlowdown(now_, e.kind == kSlowStart ? e.value : 1.0);
        Reschedule(e.node);
        break;
      case kHeartbeat:
        OnHeartbeat(e.node);
        Push(e.t + Seconds(o_.heartbeat), kHeartbeat, e.node);
        break;
      case kRecompute:
        router_->RecomputeWeights();
        OnRecomputed();
        Push(e.t + Seconds(o_.weight_interval), kRecompute);
        break;
      case kUtilSample:
        OnUtilSample(e.arg);
        break;
      case kWindowEnd:
        OnWindowEnd();
        break;
      case kDrainEnd:
        stop_ = true;
        break;
    }
  }

  void OnArrival(double t) {
    Push(NextArrival(t), kArrival);
    const bool measured = t >= warmup_end_ && t < window_end_;
    if (measured) {
      ++requests_;
      ++outstanding_;
    }
    const Payload p{DrawWork(), t, static_cast<uint8_t>(measured)};
    router_->Invoke(kApp, EncodePayload(p), [this, t, measured](Result<compute::Router::Reply> reply) {
      if (!measured) return;
      --outstanding_;
      if (reply.ok()) {
        ++completed_;
        latency_.Record(Nanos(now_ - t));
      } else {
        ++failures_;
      }
    });
  }

  void OnHeartbeat(uint32_t i) {
    Node& node = nodes_[i];
    const double busy = node.model.BusyCoreSeconds(now_);
    const double in_flight_s = node.model.InFlightSeconds(now_);
    const double dt = now_ - node.hb_t;
    const double utilization =
        dt > 0 ? std::clamp((busy - node.hb_busy) / (node.model.cores() * dt), 0.0, 1.0) : 0.0;
    const int in_flight = o_.report_average_in_flight && dt > 0
                              ? static_cast<int>(std::lround((in_flight_s - node.hb_in_flight_s) / dt))
                              : node.model.in_flight();
    node.hb_t = now_;
    node.hb_busy = busy;
    node.hb_in_flight_s = in_flight_s;
    update_.Clear();
    update_.set_resource_id(kSource);
    *update_.add_nodes() = NodeReport(i, utilization, in_flight);
    router_->ApplyUpdate(kSource, update_);
    node.last_reported_u = utilization;
    node.last_reported_c = in_flight;
  }

  void OnRecomputed() {
    const bool in_window = now_ >= warmup_end_ && now_ < window_end_;
    if (!in_window && !o_.verbose) return;
    std::vector<double> class_weight(classes_.size(), 0);
    double total = 0;
    for (const compute::Router::Route& r : router_->Routes(kApp)) {
      auto it = by_id_.find(r.node_id);
      if (it == by_id_.end()) continue;
      class_weight[static_cast<size_t>(nodes_[it->second].cls)] += r.weight;
      total += r.weight;
    }
    if (total <= 0) return;
    if (in_window) {
      for (size_t c = 0; c < classes_.size(); ++c) classes_[c].weight_share += class_weight[c] / total;
      ++recomputations_in_window_;
    }
    if (o_.verbose >= 1) {
      std::vector<double> u(classes_.size(), 0), reported(classes_.size(), 0), inflight(classes_.size(), 0);
      for (const Node& n : nodes_) {
        const size_t c = static_cast<size_t>(n.cls);
        u[c] += n.last_reported_u / classes_[c].nodes;
        reported[c] += n.last_reported_c / static_cast<double>(classes_[c].nodes);
        inflight[c] += n.model.in_flight() / static_cast<double>(classes_[c].nodes);
      }
      std::string line = "[" + policy_ + Fmt(" t=%.0fs]", now_);
      for (size_t c = 0; c < classes_.size(); ++c) {
        line += " | " + classes_[c].label + ": weight " + Fmt("%.1f%%", 100 * class_weight[c] / total) +
                " util " + Fmt("%.2f", u[c]) + " in-flight reported " + Fmt("%.1f", reported[c]) + " now " +
                Fmt("%.1f", inflight[c]);
      }
      std::fprintf(stderr, "%s\n", line.c_str());
    }
    if (o_.verbose >= 2) {
      for (const compute::Router::Route& r : router_->Routes(kApp)) {
        auto it = by_id_.find(r.node_id);
        if (it == by_id_.end()) continue;
        const Node& n = nodes_[it->second];
        std::fprintf(stderr,
                     "    %s %s speed %.2f: reported util %.2f in-flight %d -> weight %.4g (%.1f%%); in "
                     "flight now %d\n",
                     n.id.c_str(), classes_[static_cast<size_t>(n.cls)].label.c_str(), n.model.speed(),
                     n.last_reported_u, n.last_reported_c, r.weight, 100 * r.weight / total,
                     n.model.in_flight());
      }
    }
  }

  void OnUtilSample(uint64_t k) {
    const double w = Seconds(o_.util_window);
    std::vector<double> u;
    u.reserve(nodes_.size());
    for (Node& n : nodes_) {
      const double busy = n.model.BusyCoreSeconds(now_);
      if (k > 0) u.push_back((busy - n.window_busy) / (n.model.cores() * w));
      if (k == 0) n.run_busy = busy;
      n.window_busy = busy;
    }
    if (k > 0) {
      double mean = 0;
      for (double x : u) mean += x;
      mean /= static_cast<double>(u.size());
      double var = 0;
      for (double x : u) var += (x - mean) * (x - mean);
      var /= static_cast<double>(u.size());
      const auto [lo, hi] = std::minmax_element(u.begin(), u.end());
      util_mean_sum_ += mean;
      util_sd_sum_ += std::sqrt(var);
      util_range_sum_ += *hi - *lo;
      ++util_windows_;
    }
    const double next = warmup_end_ + static_cast<double>(k + 1) * w;
    if (next <= window_end_ + 1e-9) Push(next, kUtilSample, 0, k + 1);
  }

  void OnWindowEnd() {
    window_closed_ = true;
    const double span = window_end_ - warmup_end_;
    uint64_t attempts = 0;
    for (const Node& n : nodes_) attempts += n.attempts;
    std::vector<double> run_u;
    for (Node& n : nodes_) {
      const double u = (n.model.BusyCoreSeconds(now_) - n.run_busy) / (n.model.cores() * span);
      run_u.push_back(u);
      LbClassStats& c = classes_[static_cast<size_t>(n.cls)];
      c.utilization += u / c.nodes;
      if (attempts > 0) c.request_share += static_cast<double>(n.attempts) / static_cast<double>(attempts);
    }
    double mean = 0, var = 0;
    for (double x : run_u) mean += x;
    mean /= static_cast<double>(run_u.size());
    for (double x : run_u) var += (x - mean) * (x - mean);
    result_.util_sd_run = std::sqrt(var / static_cast<double>(run_u.size()));
    if (util_windows_ > 0) {
      result_.util_mean = util_mean_sum_ / static_cast<double>(util_windows_);
      result_.util_sd = util_sd_sum_ / static_cast<double>(util_windows_);
      result_.util_range = util_range_sum_ / static_cast<double>(util_windows_);
    }
    if (recomputations_in_window_ > 0) {
      for (LbClassStats& c : classes_) c.weight_share /= static_cast<double>(recomputations_in_window_);
    }
    result_.classes = classes_;
  }

  const ComputeLbOptions& o_;
  const std::string policy_;
  ModelClock clock_;
  SimTransport transport_;
  std::unique_ptr<compute::Router> router_;
  Random arrivals_rng_;
  Random work_rng_;
  std::gamma_distribution<double> gamma_;
  double arrival_rate_ = 0;

  std::vector<Node> nodes_;
  std::unordered_map<std::string, uint32_t> by_id_;
  std::vector<LbClassStats> classes_;
  std::vector<Event> events_;
  uint64_t seq_ = 0;
  std::vector<Job> jobs_;
  std::vector<uint32_t> free_jobs_;
  pb::ViewUpdate update_;

  double now_ = 0;
  double warmup_end_ = 0, window_end_ = 0, drain_end_ = 0;
  std::chrono::steady_clock::time_point wall_start_;
  bool window_closed_ = false;
  bool stop_ = false;

  LatencyHistogram latency_;
  uint64_t requests_ = 0, completed_ = 0, failures_ = 0, outstanding_ = 0;
  double util_mean_sum_ = 0, util_sd_sum_ = 0, util_range_sum_ = 0;
  uint64_t util_windows_ = 0;
  uint64_t recomputations_in_window_ = 0;
  LbPolicyResult result_;
};

void SimTransport::Invoke(const compute::RouteTarget& target, std::shared_ptr<const std::string> payload,
                          Done done) {
  sim_.Deliver(target, *payload, std::move(done));
}

double NominalCapacity(const ComputeLbOptions& o) {
  double capacity = 0;
  for (int i = 0; i < o.nodes; ++i) {
    capacity +=
        o.cores[static_cast<size_t>(i) % o.cores.size()] * o.speeds[static_cast<size_t>(i) % o.speeds.size()];
  }
  return capacity / (o.work_ms / 1000.0);
}

std::string Describe(const std::string& policy) {
  if (policy == "dynamic") return "FastSwrr, dynamic weights (ships)";
  if (policy == "static") return "nginx SWRR, weight = cores";
  if (policy == "p2c") return "P2C least-request, weight = cores";
  if (policy == "p2c-dynamic") return "P2C least-request, dynamic weights";
  if (policy == "static-dynamic") return "nginx SWRR, dynamic weights";
  return policy;
}

// Unfinished requests enter the histogram at their age when the run stopped: such a p99 is a
// lower bound, and a ratio of two lower bounds says nothing.
const char* LowerBoundNote(const LbPolicyResult& dynamic, const LbPolicyResult& peer) {
  if (dynamic.unfinished > 0 && peer.unfinished > 0)
    return "  [both p99 are lower bounds: unfinished requests]";
  if (dynamic.unfinished > 0) return "  [dynamic's p99 is a lower bound: unfinished requests]";
  if (peer.unfinished > 0) return "  [the peer's p99 is a lower bound: unfinished requests]";
  return "";
}

Measurement ToMeasurement(const LbPolicyResult& r, const ComputeLbOptions& o) {
  Measurement m;
  m.system = r.policy;
  m.duration_s = Seconds(o.duration);
  m.throughput = static_cast<double>(r.completed) / m.duration_s;
  m.counts = {{"requests", r.requests},
              {"completed", r.completed},
              {"failures", r.failures},
              {"unfinished", r.unfinished},
              {"retries", r.retries}};
  const LatencyHistogram& h = r.latency;
  m.figures = {
      {"p50_ms", h.Percentile(50) / 1e6},
      {"p90_ms", h.Percentile(90) / 1e6},
      {"p99_ms", h.Percentile(99) / 1e6},
      {"p999_ms", h.Percentile(99.9) / 1e6},
      {"max_ms", h.Max() / 1e6},
      {"util_mean", r.util_mean},
      {"util_sd", r.util_sd},
      {"util_range", r.util_range},
      {"util_sd_run", r.util_sd_run},
      {"sim_cpu_s", r.cpu_s},
      {"sim_wall_s", r.wall_s},
  };
  if (o.time_scale > 0) {
    m.figures["loop_lag_max_ms"] = r.max_lag_ms;
    m.figures["loop_lag_mean_ms"] = r.mean_lag_ms;
  }
  for (const LbClassStats& c : r.classes) {
    std::string key = c.label;
    std::replace(key.begin(), key.end(), ' ', '_');
    m.figures["request_share_" + key] = c.request_share;
    m.figures["utilization_" + key] = c.utilization;
    m.figures["weight_share_" + key] = c.weight_share;
  }
  m.latency = r.latency;
  return m;
}

}  // namespace

Result<LbPolicyResult> RunComputeLbPolicy(const ComputeLbOptions& options, const std::string& policy) {
  CHORUS_RETURN_IF_ERROR(options.Validate());
  auto spec = ParsePolicy(policy);
  if (!spec) return InvalidArgument("unknown policy \"" + policy + "\"");
  LbSim sim(options, policy, *spec);
  return sim.Run();
}

Result<ComputeLbResult> RunComputeLb(const ComputeLbOptions& o) {
  CHORUS_RETURN_IF_ERROR(o.Validate());
  ComputeLbResult out;
  for (const std::string& policy : o.policies) {
    CHORUS_ASSIGN_OR_RETURN(LbPolicyResult r, RunComputeLbPolicy(o, policy));
    std::fprintf(stderr, "compute-lb: %s done: %s requests, p99 %s ms, %.1f s wall, %.1f s CPU\n",
                 policy.c_str(), Thousands(static_cast<double>(r.requests)).c_str(),
                 Ms(r.latency.Percentile(99)).c_str(), r.wall_s, r.cpu_s);
    out.policies.push_back(std::move(r));
  }

  const LbPolicyResult* dynamic = nullptr;
  const LbPolicyResult* fixed = nullptr;
  const LbPolicyResult* p2c = nullptr;
  for (const LbPolicyResult& r : out.policies) {
    if (r.policy == "dynamic") dynamic = &r;
    if (r.policy == "static") fixed = &r;
    if (r.policy == "p2c") p2c = &r;
  }
  const LbPolicyResult& subject = dynamic ? *dynamic : out.policies.front();
  auto p99 = [](const LbPolicyResult& r) { return static_cast<double>(r.latency.Percentile(99)); };

  // The report.
  out.subject = ToMeasurement(subject, o);
  for (const LbPolicyResult& r : out.policies) {
    if (&r != &subject) out.peers.push_back(ToMeasurement(r, o));
  }
  if (dynamic && fixed && p99(*fixed) > 0) out.subject.figures["p99_vs_static"] = p99(*dynamic) / p99(*fixed);
  if (dynamic && p2c && p99(*p2c) > 0) out.subject.figures["p99_vs_p2c"] = p99(*dynamic) / p99(*p2c);
  out.summary_figures = {"p99_vs_static", "p99_vs_p2c", "util_sd"};

  const double capacity = NominalCapacity(o);
  const bool realtime = o.time_scale > 0;
  out.params = {
      {"nodes", std::to_string(o.nodes)},
      {"speeds", JoinNumbers(o.speeds)},
      {"cores", JoinNumbers(o.cores)},
      {"discipline", o.discipline == LbNodeModel::Discipline::kFcfs ? "fcfs" : "ps"},
      {"max_in_flight", std::to_string(o.max_in_flight)},
      {"load", Fmt("%g", o.load)},
      {"offered_rps", Fmt("%.0f", o.load * capacity)},
      {"work_ms", Fmt("%g", o.work_ms)},
      {"work_cv", Fmt("%g", o.work_cv)},
      {"slowdown_rate_per_node_per_min", Fmt("%g", o.slowdown_rate)},
      {"slowdown_factor", Fmt("%g", o.slowdown_factor_min) + "-" + Fmt("%g", o.slowdown_factor_max)},
      {"slowdown_duration_s", Fmt("%g", Seconds(o.slowdown_min)) + "-" + Fmt("%g", Seconds(o.slowdown_max))},
      {"warmup_s", Fmt("%g", Seconds(o.warmup))},
      {"duration_s", Fmt("%g", Seconds(o.duration))},
      {"drain_s", Fmt("%g", Seconds(o.drain))},
      {"heartbeat_s", Fmt("%g", Seconds(o.heartbeat))},
      {"weight_interval_s", Fmt("%g", Seconds(o.weight_interval))},
      {"util_window_s", Fmt("%g", Seconds(o.util_window))},
      {"in_flight_report", o.report_average_in_flight ? "average" : "instant"},
      {"weight_options", "headroom_scale=" + Fmt("%g", o.weights.headroom_scale) +
                             ",min_headroom=" + Fmt("%g", o.weights.min_headroom) +
                             ",idle_below_concurrency=" + Fmt("%g", o.weights.idle_below_concurrency) +
                             ",prior_share=" + Fmt("%g", o.weights.prior_share) + ",min_share=" +
                             Fmt("%g", o.weights.min_share) + ",max_share=" + Fmt("%g", o.weights.max_share) +
                             ",prior_from_fleet=" + (o.weights.prior_from_fleet ? "1" : "0")},
      {"time", realtime ? Fmt("wall clock x%g", o.time_scale) : "virtual"},
      {"seed", std::to_string(o.seed)},
      {"policies",
       [&] {
         std::string s;
         for (const auto& p : o.policies) s += (s.empty() ? "" : ",") + p;
         return s;
       }()},
      {"load_generator", "chorus-bench compute-lb (in-process simulated nodes, real compute::Router)"},
  };

  // The table.
  std::string t;
  char line[512];
  std::snprintf(
      line, sizeof line,
      "compute-lb: %d nodes (cores %s, speeds %sx), %s; offered %s req/s = %.0f%% of nominal %s req/s "
      "(work %g ms at 1x, cv %g)\n",
      o.nodes, JoinNumbers(o.cores).c_str(), JoinNumbers(o.speeds).c_str(),
      o.discipline == LbNodeModel::Discipline::kFcfs ? "FCFS per core" : "processor sharing",
      Thousands(o.load * capacity).c_str(), o.load * 100, Thousands(capacity).c_str(), o.work_ms, o.work_cv);
  t += line;
  std::snprintf(line, sizeof line,
                "  slowdowns %g per node per minute, x%g-%g for %g-%g s; heartbeat %g s, weights every %g s; "
                "window %g s after %g s warmup; %s time; seed %llu\n",
                o.slowdown_rate, o.slowdown_factor_min, o.slowdown_factor_max, Seconds(o.slowdown_min),
                Seconds(o.slowdown_max), Seconds(o.heartbeat), Seconds(o.weight_interval),
                Seconds(o.duration), Seconds(o.warmup),
                realtime ? Fmt("wall-clock x%g", o.time_scale).c_str() : "virtual",
                static_cast<unsigned long long>(o.seed));
  t += line;
  std::snprintf(line, sizeof line, "  %-15s %10s %9s %9s %9s %9s %9s %8s %10s %6s %7s %7s\n", "policy",
                "requests", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "failed", "unfinished",
                "util", "util sd", "max-min");
  t += line;
  for (const LbPolicyResult& r : out.policies) {
    const LatencyHistogram& h = r.latency;
    const char* ge = r.unfinished > 0 ? ">=" : "";  // unfinished requests count at their age
    std::snprintf(line, sizeof line, "  %-15s %10s %9s %9s %9s %9s %9s %8llu %10llu %6.2f %7.3f %7.3f\n",
                  r.policy.c_str(), Thousands(static_cast<double>(r.requests)).c_str(),
                  Ms(h.Percentile(50)).c_str(), Ms(h.Percentile(90)).c_str(),
                  (ge + Ms(h.Percentile(99))).c_str(), (ge + Ms(h.Percentile(99.9))).c_str(),
                  (ge + Ms(h.Max())).c_str(), static_cast<unsigned long long>(r.failures),
                  static_cast<unsigned long long>(r.unfinished), r.util_mean, r.util_sd, r.util_range);
    t += line;
  }
  t += "  by node class (share of requests / mean utilization / share of routing weight):\n";
  for (const LbPolicyResult& r : out.policies) {
    std::string s = "    " + r.policy + std::string(r.policy.size() < 15 ? 15 - r.policy.size() : 0, ' ');
    for (const LbClassStats& c : r.classes) {
      s += "  " + c.label + ": " + Fmt("%.1f%%", 100 * c.request_share) + " / " + Fmt("%.2f", c.utilization) +
           " / " + Fmt("%.1f%%", 100 * c.weight_share);
    }
    t += s + "   (" + Describe(r.policy) + ")\n";
  }
  auto ratio_row = [&](const char* what, const LbPolicyResult* peer, double target) {
    if (!dynamic || !peer || p99(*peer) <= 0) return;
    const double ratio = p99(*dynamic) / p99(*peer);
    std::snprintf(line, sizeof line, "  p99 dynamic / %-7s %.3f  (target <= %.1f: %s)%s\n", what, ratio,
                  target, ratio <= target ? "met" : "MISSED", LowerBoundNote(*dynamic, *peer));
    t += line;
  };
  ratio_row("static", fixed, kTargetP99VsStatic);
  ratio_row("p2c", p2c, kTargetP99VsP2c);
  std::string cpu;
  for (const LbPolicyResult& r : out.policies) {
    cpu += (cpu.empty() ? "" : ", ") + r.policy + " " + Fmt("%.1f s", r.cpu_s) + " CPU / " +
           Fmt("%.1f s", r.wall_s) + " wall for " + Fmt("%.0f s", r.model_s) + " simulated";
    if (realtime) cpu += Fmt(" (loop lag max %.1f ms", r.max_lag_ms) + Fmt(", mean %.3f ms)", r.mean_lag_ms);
  }
  t += "  simulator: " + cpu + "\n";
  out.table = std::move(t);
  return out;
}

}  // namespace chorus::bench
