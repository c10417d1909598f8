#include "likes_load.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <thread>

#include "http_load.h"

namespace chorus::bench {

// ---------------------------------------------------------------------------------------------
// Zipf

Result<ZipfGenerator> ZipfGenerator::Create(uint64_t n, double theta) {
  if (n < 1) return InvalidArgument("zipf: need at least one item");
  if (!(theta > 0 && theta < 1)) return InvalidArgument("zipf: theta must be in (0, 1)");
  ZipfGenerator z;
  z.n_ = n;
  z.theta_ = theta;
  z.alpha_ = 1 / (1 - theta);
  // ζ(n, θ), summed from the smallest terms up for precision.
  double zeta = 0;
  for (uint64_t i = n; i >= 1; --i) zeta += 1 / std::pow(static_cast<double>(i), theta);
  z.zeta_n_ = zeta;
  z.half_pow_theta_ = std::pow(0.5, theta);
  const double zeta2 = 1 + z.half_pow_theta_;
  if (n > 2) {
    z.eta_ = (1 - std::pow(2.0 / static_cast<double>(n), 1 - theta)) / (1 - zeta2 / zeta);
  }
  return z;
}

uint64_t ZipfGenerator::Sample(double u) const {
  const double uz = u * zeta_n_;
  if (uz < 1 || n_ == 1) return 0;
  if (uz < 1 + half_pow_theta_ || n_ == 2) return 1;
  const double v = static_cast<double>(n_) * std::pow(eta_ * u - eta_ + 1, alpha_);
  const uint64_t rank = v <= 0 ? 0 : static_cast<uint64_t>(v);
  return std::min(rank, n_ - 1);
}

double ZipfGenerator::Probability(uint64_t rank) const {
  if (rank >= n_) return 0;
  return 1 / std::pow(static_cast<double>(rank + 1), theta_) / zeta_n_;
}

// ---------------------------------------------------------------------------------------------
// Scrambler

namespace {

uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

IdScrambler::IdScrambler(uint64_t n, uint64_t seed) : n_(std::max<uint64_t>(n, 1)) {
  int bits = 2;
  while (bits < 64 && (uint64_t{1} << bits) < n_) ++bits;
  half_bits_ = (bits + 1) / 2;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  uint64_t k = seed;
  for (uint64_t& key : keys_) key = Mix64(k += 0x9E3779B97F4A7C15ULL);
}

uint64_t IdScrambler::Permute(uint64_t x) const {
  uint64_t left = (x >> half_bits_) & half_mask_;
  uint64_t right = x & half_mask_;
  for (const uint64_t key : keys_) {
    const uint64_t next = left ^ (Mix64(right ^ key) & half_mask_);
    left = right;
    right = next;
  }
  return (left << half_bits_) | right;
}

uint64_t IdScrambler::operator()(uint64_t rank) const {
  // Cycle walking: the permutation of the power-of-4 domain restricted to [0, n) by following
  // each cycle until it re-enters the range. Terminates because `rank` itself is in range.
  uint64_t x = rank % n_;
  do {
    x = Permute(x);
  } while (x >= n_);
  return x;
}

// ---------------------------------------------------------------------------------------------
// Workload

Status LikesWorkload::Validate() const {
  if (business.empty() || business.size() > 32 || !std::all_of(business.begin(), business.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
      })) {
    return InvalidArgument("--business must be [a-z0-9_-]{1,32}");
  }
  if (entities < 2 || entities > 1'000'000'000) return InvalidArgument("--entities must be 2..1e9");
  if (users < 1 || users > 1'000'000'000) return InvalidArgument("--users must be 1..1e9");
  if (!(theta > 0 && theta < 1)) return InvalidArgument("--theta must be in (0, 1)");
  for (const auto& [flag, v] :
       {std::pair{"--write-batch", write_batch}, std::pair{"--state-batch", state_batch},
        std::pair{"--counts-batch", counts_batch}}) {
    if (v < 1 || v > 100) return InvalidArgument(std::string(flag) + " must be 1..100");
  }
  if (!(reads_per_write >= 0)) return InvalidArgument("--reads-per-write must be >= 0");
  if (!(counts_share >= 0 && counts_share <= 1)) return InvalidArgument("--counts-share must be in [0, 1]");
  if (!(spike_share >= 0 && spike_share <= 1)) return InvalidArgument("--spike-share must be in [0, 1]");
  if (!(spike_from >= 0 && spike_from <= spike_to && spike_to <= 1)) {
    return InvalidArgument("the spike window must satisfy 0 <= --spike-from <= --spike-to <= 1");
  }
  return Status::Ok();
}

std::string_view LikesPhaseName(LikesPhase phase) {
  switch (phase) {
    case LikesPhase::kPreload:
      return "preload";
    case LikesPhase::kWrite:
      return "write";
    case LikesPhase::kRead:
      return "read";
    case LikesPhase::kMixed:
      return "mixed";
  }
  return "?";
}

Result<LikesPhase> ParseLikesPhase(std::string_view name) {
  for (LikesPhase p : {LikesPhase::kPreload, LikesPhase::kWrite, LikesPhase::kRead, LikesPhase::kMixed}) {
    if (name == LikesPhaseName(p)) return p;
  }
  return InvalidArgument("unknown phase '" + std::string(name) + "' (preload, write, read, mixed)");
}

Result<std::shared_ptr<const LikesModel>> LikesModel::Create(const LikesWorkload& workload) {
  CHORUS_RETURN_IF_ERROR(workload.Validate());
  CHORUS_ASSIGN_OR_RETURN(ZipfGenerator zipf, ZipfGenerator::Create(workload.entities, workload.theta));
  return std::shared_ptr<const LikesModel>(new LikesModel(workload, zipf));
}

std::vector<std::pair<uint64_t, uint64_t>> LikesModel::PreloadPairs(uint64_t n) const {
  std::vector<std::pair<uint64_t, uint64_t>> out;
  n = std::min(n, workload_.users * workload_.entities / 2);
  out.reserve(n);
  std::unordered_set<uint64_t> seen;
  seen.reserve(n);
  Random rng(workload_.seed ^ 0x5052454C4F4144ULL);  // "PRELOAD"
  // Zipf's tail is thin: give up (fewer pairs) rather than spin if n is a large part of all pairs.
  for (uint64_t attempts = 0; out.size() < n && attempts < 100 * n + 1000; ++attempts) {
    const uint64_t user = rng.Uniform(workload_.users);
    const uint64_t entity = DrawEntity(rng);
    if (seen.insert(user * workload_.entities + entity).second) out.emplace_back(user, entity);
  }
  return out;
}

LikesOpGenerator::LikesOpGenerator(std::shared_ptr<const LikesModel> model, uint32_t stripe, uint32_t stripes)
    : model_(std::move(model)),
      stripe_(stripe),
      stripes_(std::max<uint32_t>(stripes, 1)),
      stripe_users_(model_->workload().users > stripe
                        ? (model_->workload().users - stripe + stripes_ - 1) / stripes_
                        : 1),
      rng_(Random::ForShard(model_->workload().seed, stripe)) {}

void LikesOpGenerator::AssumeLiked(const std::vector<std::pair<uint64_t, uint64_t>>& pairs) {
  for (const auto& [user, entity] : pairs) {
    if (user % stripes_ == stripe_) liked_.insert(PairKey(user, entity));
  }
}

void LikesOpGenerator::QueuePreload(const std::vector<std::pair<uint64_t, uint64_t>>& pairs) {
  preload_.clear();
  preload_next_ = 0;
  for (const auto& pair : pairs) {
    if (pair.first % stripes_ == stripe_) preload_.push_back(pair);
  }
}

void LikesOpGenerator::StartPhase(LikesPhase phase, int64_t spike_from_ns, int64_t spike_to_ns) {
  phase_ = phase;
  spike_from_ns_ = spike_from_ns;
  spike_to_ns_ = spike_to_ns;
}

uint64_t LikesOpGenerator::DrawUser() { return stripe_ + stripes_ * rng_.Uniform(stripe_users_); }

void LikesOpGenerator::DrawWrite(bool aimed, LikesOp* op) {
  const LikesWorkload& w = model_->workload();
  op->kind = LikesOpKind::kWrite;
  op->user = 0;
  op->entities.clear();
  op->actions.clear();
  for (int i = 0; i < w.write_batch; ++i) {
    LikeActionSpec a;
    a.user = DrawUser();
    a.entity = aimed ? model_->spike_entity() : model_->DrawEntity(rng_);
    const uint64_t key = PairKey(a.user, a.entity);
    a.like = liked_.erase(key) == 0;  // toggle: unlike what is liked, like the rest
    if (a.like) liked_.insert(key);
    op->actions.push_back(a);
  }
}

void LikesOpGenerator::DrawRead(LikesOpKind kind, int batch, bool aimed, LikesOp* op) {
  op->kind = kind;
  op->user = kind == LikesOpKind::kState ? DrawUser() : 0;
  op->entities.clear();
  op->actions.clear();
  if (aimed) op->entities.push_back(model_->spike_entity());
  // Distinct entities: popular ones repeat often under Zipf, so redraw (bounded) on a repeat.
  for (int tries = 0; op->entities.size() < static_cast<size_t>(batch) && tries < 8 * batch; ++tries) {
    const uint64_t e = model_->DrawEntity(rng_);
    if (std::find(op->entities.begin(), op->entities.end(), e) == op->entities.end()) {
      op->entities.push_back(e);
    }
  }
}

bool LikesOpGenerator::Next(int64_t now_ns, LikesOp* op) {
  const LikesWorkload& w = model_->workload();
  op->spike = false;
  switch (phase_) {
    case LikesPhase::kPreload: {
      if (preload_next_ >= preload_.size()) return false;
      op->kind = LikesOpKind::kWrite;
      op->user = 0;
      op->entities.clear();
      op->actions.clear();
      for (int i = 0; i < w.write_batch && preload_next_ < preload_.size(); ++i) {
        const auto& [user, entity] = preload_[preload_next_++];
        liked_.insert(PairKey(user, entity));
        op->actions.push_back({user, entity, true});
      }
      return true;
    }
    case LikesPhase::kWrite:
      DrawWrite(false, op);
      return true;
    case LikesPhase::kRead:
      DrawRead(LikesOpKind::kState, w.state_batch, false, op);
      return true;
    case LikesPhase::kMixed: {
      op->spike = now_ns >= spike_from_ns_ && now_ns < spike_to_ns_;
      const bool aimed = op->spike && rng_.Bernoulli(w.spike_share);
      if (rng_.NextDouble() * (1 + w.reads_per_write) < 1) {
        DrawWrite(aimed, op);
      } else if (rng_.Bernoulli(w.counts_share)) {
        DrawRead(LikesOpKind::kCounts, w.counts_batch, aimed, op);
      } else {
        DrawRead(LikesOpKind::kState, w.state_batch, aimed, op);
      }
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// HTTP requests

namespace {

void AppendUint(std::string* out, uint64_t v) {
  char buf[24];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out->append(buf, static_cast<size_t>(end - buf));
}

void AppendId(std::string* out, char tag, uint64_t v) {
  out->push_back(tag);
  AppendUint(out, v);
}

void AppendActionJson(std::string* out, const LikeActionSpec& a, const LikesHttpTarget& t) {
  out->append("{\"business\":\"").append(t.business).append("\",\"user\":\"");
  AppendId(out, 'u', a.user);
  out->append("\",\"entity\":\"");
  AppendId(out, 'e', a.entity);
  if (t.owners > 0) {
    out->append("\",\"owner\":\"");
    AppendId(out, 'o', a.entity % t.owners);
  }
  out->append(a.like ? "\",\"action\":\"like\"}" : "\",\"action\":\"unlike\"}");
}

void AppendCommonHeaders(std::string* out, const LikesHttpTarget& t) {
  out->append(" HTTP/1.1\r\nHost: ").append(t.host).append("\r\n");
  if (!t.token.empty()) out->append("Authorization: Bearer ").append(t.token).append("\r\n");
}

}  // namespace

void BuildLikesHttpRequest(const LikesOp& op, const LikesHttpTarget& target, std::string* out) {
  out->clear();
  if (op.kind == LikesOpKind::kWrite) {
    // The body first (its length goes in the head), then the head in front of it.
    std::string body;
    if (op.actions.size() == 1) {
      AppendActionJson(&body, op.actions[0], target);
    } else {
      body.append("{\"actions\":[");
      for (size_t i = 0; i < op.actions.size(); ++i) {
        if (i > 0) body.push_back(',');
        AppendActionJson(&body, op.actions[i], target);
      }
      body.append("]}");
    }
    out->append(op.actions.size() == 1 ? "POST /v1/likes" : "POST /v1/likes/batch");
    AppendCommonHeaders(out, target);
    out->append("Content-Type: application/json\r\nContent-Length: ");
    AppendUint(out, body.size());
    out->append("\r\n\r\n").append(body);
    return;
  }
  out->append(op.kind == LikesOpKind::kState ? "GET /v1/likes/state?business="
                                             : "GET /v1/likes/counts?business=");
  out->append(target.business);
  if (op.kind == LikesOpKind::kState) {
    out->append("&user=");
    AppendId(out, 'u', op.user);
  }
  out->append("&entities=");
  for (size_t i = 0; i < op.entities.size(); ++i) {
    if (i > 0) out->push_back(',');
    AppendId(out, 'e', op.entities[i]);
  }
  AppendCommonHeaders(out, target);
  out->append("\r\n");
}

size_t CountOccurrences(std::string_view haystack, std::string_view needle) {
  if (needle.empty()) return 0;
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string_view::npos;
       pos = haystack.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

// ---------------------------------------------------------------------------------------------
// Results

void LikesKindStats::Merge(const LikesKindStats& other) {
  requests += other.requests;
  items += other.items;
  non_2xx += other.non_2xx;
  item_errors += other.item_errors;
  liked += other.liked;
  latency.Merge(other.latency);
}

namespace {

void RecordInto(LikesKindStats& s, bool ok, uint64_t items, uint64_t item_errors, uint64_t liked,
                int64_t latency_ns) {
  ++s.requests;
  if (ok) {
    s.items += items - std::min(items, item_errors);
    s.item_errors += item_errors;
    s.liked += liked;
  } else {
    ++s.non_2xx;
  }
  s.latency.Record(latency_ns);
}

}  // namespace

void LikesPhaseResult::Record(LikesOpKind k, bool in_spike, bool ok, uint64_t items, uint64_t item_errors,
                              uint64_t liked, int64_t latency_ns) {
  RecordInto(kind(k), ok, items, item_errors, liked, latency_ns);
  if (phase == LikesPhase::kMixed) {
    RecordInto(in_spike ? spike : steady, ok, items, item_errors, liked, latency_ns);
  }
}

void LikesPhaseResult::Merge(const LikesPhaseResult& other) {
  for (size_t i = 0; i < kinds.size(); ++i) kinds[i].Merge(other.kinds[i]);
  spike.Merge(other.spike);
  steady.Merge(other.steady);
  transport.Merge(other.transport);
  elapsed_s = std::max(elapsed_s, other.elapsed_s);
  spike_s = std::max(spike_s, other.spike_s);
}

Measurement LikesPhaseResult::ToMeasurement(std::string system) const {
  Measurement m;
  m.system = std::move(system);
  m.duration_s = elapsed_s;
  const double secs = elapsed_s > 0 ? elapsed_s : 1;
  const LikesKindStats& w = kind(LikesOpKind::kWrite);
  const LikesKindStats& s = kind(LikesOpKind::kState);
  const LikesKindStats& c = kind(LikesOpKind::kCounts);
  LikesKindStats all;
  for (const LikesKindStats& k : kinds) all.Merge(k);
  switch (phase) {
    case LikesPhase::kPreload:
    case LikesPhase::kWrite:
      m.throughput = static_cast<double>(w.items) / secs;
      m.unit = "actions/s";
      m.latency = w.latency;
      break;
    case LikesPhase::kRead:
      m.throughput = static_cast<double>(s.items) / secs;
      m.unit = "entity-states/s";
      m.latency = s.latency;
      break;
    case LikesPhase::kMixed:
      m.throughput = static_cast<double>(all.requests) / secs;
      m.unit = "ops/s";
      m.latency = all.latency;
      break;
  }
  m.counts = {
      {"write_requests", w.requests},
      {"write_actions", w.items},
      {"state_requests", s.requests},
      {"state_entities", s.items},
      {"state_liked", s.liked},
      {"counts_requests", c.requests},
      {"counts_entities", c.items},
      {"non_2xx", all.non_2xx},
      {"item_errors", all.item_errors},
      {"connect_errors", transport.connect_errors},
      {"read_errors", transport.read_errors},
      {"write_errors", transport.write_errors},
      {"timeout_errors", transport.timeout_errors},
      {"parse_errors", transport.parse_errors},
      {"reconnects", transport.reconnects},
      {"bytes_read", transport.bytes_read},
  };
  auto ms = [](int64_t ns) { return static_cast<double>(ns) / 1e6; };
  auto add_kind = [&](const std::string& prefix, const LikesKindStats& k, const char* items_name,
                      double window_s) {
    if (k.requests == 0 || window_s <= 0) return;
    m.figures[prefix + "_requests_per_s"] = static_cast<double>(k.requests) / window_s;
    if (items_name != nullptr) m.figures[items_name] = static_cast<double>(k.items) / window_s;
    m.figures[prefix + "_p50_ms"] = ms(k.latency.Percentile(50));
    m.figures[prefix + "_p99_ms"] = ms(k.latency.Percentile(99));
    m.figures[prefix + "_p999_ms"] = ms(k.latency.Percentile(99.9));
  };
  add_kind("write", w, "write_actions_per_s", secs);
  add_kind("state", s, "entity_states_per_s", secs);
  add_kind("counts", c, "counts_entities_per_s", secs);
  if (s.items > 0) {
    m.figures["state_liked_share"] = static_cast<double>(s.liked) / static_cast<double>(s.items);
  }
  if (phase == LikesPhase::kMixed) {
    m.counts["spike_requests"] = spike.requests;
    add_kind("spike", spike, nullptr, spike_s);
    add_kind("steady", steady, nullptr, secs - spike_s);
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// The HTTP driver

namespace {

class LikesHttpWorkload final : public HttpWorkload {
 public:
  // `pipeline` streams per connection (http_closed_loop.h): stream s rides connection
  // s / pipeline, and connection i talks to targets[i % targets.size()] (the closed loop connects
  // it there).
  LikesHttpWorkload(LikesOpGenerator& generator, const std::vector<LikesHttpTarget>& targets, int connections,
                    int pipeline, LikesPhaseResult* result)
      : generator_(generator),
        targets_(targets),
        pipeline_(static_cast<size_t>(pipeline)),
        pending_(static_cast<size_t>(connections) * pipeline_),
        result_(result) {}

  bool NextRequest(size_t stream, int64_t now_ns, std::string* request) override {
    if (!generator_.Next(now_ns, &op_)) return false;
    pending_[stream] = {op_.kind, op_.spike, static_cast<uint32_t>(op_.items()),
                        op_.kind == LikesOpKind::kWrite && op_.actions.size() > 1};
    BuildLikesHttpRequest(op_, targets_[(stream / pipeline_) % targets_.size()], request);
    return true;
  }

  void OnResponse(size_t stream, int status, std::string_view body, int64_t latency_ns,
                  bool recorded) override {
    if (!recorded) return;
    const Pending& p = pending_[stream];
    const bool ok = status >= 200 && status <= 299;
    // A batch answers 200 with per-action results; a failed action is {"error":{...}}.
    const uint64_t item_errors = ok && p.batch ? CountOccurrences(body, "\"error\"") : 0;
    const uint64_t liked = ok && p.kind == LikesOpKind::kState ? CountOccurrences(body, "\"liked\"") : 0;
    result_->Record(p.kind, p.spike, ok, p.items, item_errors, liked, latency_ns);
  }

  size_t body_limit() const override { return size_t{64} * 1024; }

 private:
  struct Pending {
    LikesOpKind kind = LikesOpKind::kWrite;
    bool spike = false;
    uint32_t items = 0;
    bool batch = false;
  };
  LikesOpGenerator& generator_;
  const std::vector<LikesHttpTarget>& targets_;
  const size_t pipeline_;
  std::vector<Pending> pending_;  // by stream
  LikesOp op_;                    // reused to keep its vectors' capacity
  LikesPhaseResult* result_;
};

class LikesHttpDriver final : public LikesDriver {
 public:
  LikesHttpDriver(std::vector<sockaddr_in> addrs, std::vector<LikesHttpTarget> targets, int pipeline)
      : addrs_(std::move(addrs)), targets_(std::move(targets)), pipeline_(pipeline) {}

  void RunThread(LikesOpGenerator& generator, int connections, const LikesWindow& window,
                 LikesPhaseResult* result) override {
    LikesHttpWorkload workload(generator, targets_, connections, pipeline_, result);
    HttpLoopOptions options;
    options.addr = addrs_.front();
    if (addrs_.size() > 1) options.addrs = addrs_;
    options.connections = connections;
    options.pipeline = pipeline_;
    options.record_from_ns = window.record_from_ns;
    options.end_ns = window.end_ns;
    options.timeout_ns = window.timeout_ns;
    const HttpLoopResult run = RunHttpClosedLoop(options, workload);
    result->transport.Merge(run.counters);
    result->elapsed_s = static_cast<double>(run.ended_ns - window.record_from_ns) / 1e9;
  }

 private:
  const std::vector<sockaddr_in> addrs_;
  const std::vector<LikesHttpTarget> targets_;
  const int pipeline_;
};

}  // namespace

Result<std::unique_ptr<LikesDriver>> MakeLikesHttpDriver(const std::string& url, const std::string& token,
                                                         const LikesWorkload& workload, int pipeline) {
  return MakeLikesHttpDriver(std::vector<std::string>{url}, token, workload, pipeline);
}

Result<std::unique_ptr<LikesDriver>> MakeLikesHttpDriver(const std::vector<std::string>& urls,
                                                         const std::string& token,
                                                         const LikesWorkload& workload, int pipeline) {
  if (urls.empty()) return InvalidArgument("no --url");
  if (pipeline < 1 || pipeline > kMaxHttpPipeline) {
    return InvalidArgument("--pipeline must be 1.." + std::to_string(kMaxHttpPipeline) + " for chorus");
  }
  std::vector<sockaddr_in> addrs;
  std::vector<LikesHttpTarget> targets;
  for (const std::string& url : urls) {
    CHORUS_ASSIGN_OR_RETURN(HttpUrl parsed, ParseHttpUrl(url));
    if (parsed.target != "/") {
      return InvalidArgument("--url is the server's base URL (http://host:port), got '" + url + "'");
    }
    CHORUS_ASSIGN_OR_RETURN(sockaddr_in addr, ResolveIpv4(parsed.host, parsed.port));
    addrs.push_back(addr);
    LikesHttpTarget target;
    target.host = parsed.host + ":" + std::to_string(parsed.port);
    target.token = token;
    target.business = workload.business;
    target.owners = workload.owners;
    targets.push_back(std::move(target));
  }
  return std::unique_ptr<LikesDriver>(new LikesHttpDriver(std::move(addrs), std::move(targets), pipeline));
}

// ---------------------------------------------------------------------------------------------
// Phases

Result<std::vector<LikesPhaseResult>> RunLikesPhases(const LikesRunOptions& options, LikesDriver& driver) {
  if (options.phases.empty()) return InvalidArgument("no phases to run");
  if (options.connections < 1) return InvalidArgument("--connections must be at least 1");
  if (options.threads < 1) return InvalidArgument("--threads must be at least 1");
  if (options.duration <= std::chrono::nanoseconds::zero()) {
    return InvalidArgument("--duration must be positive");
  }
  const bool preloading =
      std::find(options.phases.begin(), options.phases.end(), LikesPhase::kPreload) != options.phases.end();
  if (preloading && options.preload == 0) return InvalidArgument("the preload phase needs --preload N");
  CHORUS_RETURN_IF_ERROR(CheckOpenFileLimit(options.connections, "--connections"));
  CHORUS_ASSIGN_OR_RETURN(std::shared_ptr<const LikesModel> model, LikesModel::Create(options.workload));
  const int threads = std::min(options.threads, options.connections);
  if (static_cast<uint64_t>(threads) > options.workload.users) {
    return InvalidArgument("--users must be at least --threads (each thread owns a stripe of users)");
  }

  std::vector<std::unique_ptr<LikesOpGenerator>> generators;
  generators.reserve(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    generators.push_back(
        std::make_unique<LikesOpGenerator>(model, static_cast<uint32_t>(t), static_cast<uint32_t>(threads)));
  }
  if (options.preloaded > 0) {
    const auto pairs = model->PreloadPairs(options.preloaded);
    for (auto& g : generators) g->AssumeLiked(pairs);
  }
  std::vector<std::pair<uint64_t, uint64_t>> preload_pairs;
  if (preloading) preload_pairs = model->PreloadPairs(options.preload);

  std::vector<LikesPhaseResult> out;
  for (const LikesPhase phase : options.phases) {
    const int64_t start = SteadyNowNanos();
    LikesWindow window;
    window.timeout_ns = options.timeout.count();
    int64_t spike_from = 0, spike_to = 0;
    if (phase == LikesPhase::kPreload) {
      window.record_from_ns = start;
      window.end_ns = start + options.preload_limit.count();
      for (auto& g : generators) g->QueuePreload(preload_pairs);
    } else {
      window.record_from_ns = start + options.warmup.count();
      window.end_ns = window.record_from_ns + options.duration.count();
      const double d = static_cast<double>(options.duration.count());
      spike_from = window.record_from_ns + static_cast<int64_t>(options.workload.spike_from * d);
      spike_to = window.record_from_ns + static_cast<int64_t>(options.workload.spike_to * d);
    }
    for (auto& g : generators) g->StartPhase(phase, spike_from, spike_to);

    // Results are large (histograms): keep them on the heap, one per thread.
    std::vector<std::unique_ptr<LikesPhaseResult>> results;
    for (int t = 0; t < threads; ++t) {
      results.push_back(std::make_unique<LikesPhaseResult>());
      results.back()->phase = phase;
    }
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      const int conns = options.connections / threads + (t < options.connections % threads ? 1 : 0);
      pool.emplace_back([&, t, conns] {
        driver.RunThread(*generators[static_cast<size_t>(t)], conns, window,
                         results[static_cast<size_t>(t)].get());
      });
    }
    for (std::thread& th : pool) th.join();

    LikesPhaseResult total;
    total.phase = phase;
    for (const auto& r : results) total.Merge(*r);
    if (phase != LikesPhase::kPreload) {
      total.elapsed_s = static_cast<double>(options.duration.count()) / 1e9;
      if (phase == LikesPhase::kMixed) total.spike_s = static_cast<double>(spike_to - spike_from) / 1e9;
    }
    out.push_back(std::move(total));
  }
  return out;
}

}  // namespace chorus::bench
