// The likes workload (`chorus-bench likes`): what is asked of a like service, and the runner that
// asks it of chorus over HTTP or of the Redis peer (likes_redis_peer.h) the same way.
//
// Workload (the issue's): entities' popularity is Zipf θ=0.99 over `entities` ranks, scrambled so
// popular ids are spread over the id space (a bijection, unlike YCSB's hash-mod, so scrambling
// does not change the drawn distribution); users are uniform. An operation is one of
//   write   — `write_batch` like/unlike actions (POST /v1/likes, or /v1/likes/batch when > 1);
//             each action toggles: like if the generator last left the pair unliked, else unlike,
//             so the server does a real transition every time rather than a no-op;
//   state   — one user's state for `state_batch` distinct Zipf-drawn entities
//             (GET /v1/likes/state);
//   counts  — the counts of `counts_batch` distinct Zipf-drawn entities (GET /v1/likes/counts).
// Phases, run in order by one process so the toggle tracking carries over:
//   preload — likes `n` distinct pairs (the first n of a fixed seeded sequence: PreloadPairs),
//             then stops; later runs given the same n and seed assume them liked;
//   write   — writes only: durable actions/s;
//   read    — state reads only: entity-states/s;
//   mixed   — `reads_per_write` reads per write (a `counts_share` of the reads are counts reads),
//             with a SPIKE: during [spike_from, spike_to) of the measured window a `spike_share`
//             of all operations aim at one entity (a cold one, rank entities-1: something nobody
//             liked going viral): every action of a write, and one of the entities of a read.
//
// Toggle tracking is exact because each load thread draws users from its own stripe
// (user % threads == thread): no two generators write for the same user. Two connections (or two
// pipelined streams) of one thread may still race on one pair; the loser is a no-op on the server
// (rare, harmless).
//
// Threads: a LikesModel is immutable and shared; a LikesOpGenerator belongs to one load thread.
// RunLikesPhases spawns the threads, one driver run per thread per phase, and merges.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "base/random.h"
#include "base/status.h"
#include "http_closed_loop.h"
#include "latency_histogram.h"
#include "report.h"

namespace chorus::bench {

// ---- pure pieces (tested in likes_load_test.cc) ----

// Zipf-distributed ranks over [0, n): rank k with probability (k+1)^-θ / ζ(n,θ), rank 0 the most
// popular. The method of Gray et al., "Quickly generating billion-record synthetic databases"
// (SIGMOD '94), as YCSB uses it: O(n) setup (ζ: tens of ms for 10^6), O(1) per draw. Exact for ranks
// 0 and 1; beyond, an approximation: at θ=0.99 over 10^6, ranks 2..9 come up 4-19% too often and
// the tail ~1.6% too rarely, the top-10/100/1000 shares within one point of Zipf's (20.2% vs
// 19.2%, 35.4% vs 34.4%, 51.0% vs 50.2%). Immutable: share one between threads.
class ZipfGenerator {
 public:
  // n >= 1 and 0 < theta < 1.
  static Result<ZipfGenerator> Create(uint64_t n, double theta);

  // The rank for a uniform u in [0, 1).
  uint64_t Sample(double u) const;
  uint64_t Next(Random& rng) const { return Sample(rng.NextDouble()); }
  // The exact Zipf probability of `rank`.
  double Probability(uint64_t rank) const;
  uint64_t n() const { return n_; }
  double theta() const { return theta_; }

 private:
  ZipfGenerator() = default;
  uint64_t n_ = 1;
  double theta_ = 0;
  double alpha_ = 0;
  double zeta_n_ = 1;
  double eta_ = 0;
  double half_pow_theta_ = 0;
};

// A seeded pseudo-random bijection on [0, n): a 4-round Feistel network over the smallest even
// number of bits covering n, cycle-walked back into range (fewer than 4 steps on average).
// Neighbouring ranks land far apart, so "the 100 most popular entities" are not 100 adjacent ids.
class IdScrambler {
 public:
  IdScrambler(uint64_t n, uint64_t seed);
  uint64_t operator()(uint64_t rank) const;
  uint64_t n() const { return n_; }

 private:
  uint64_t Permute(uint64_t x) const;  // bijection on [0, 2^(2*half_bits_))
  uint64_t n_;
  int half_bits_ = 1;
  uint64_t half_mask_ = 1;
  std::array<uint64_t, 4> keys_{};
};

struct LikesWorkload {
  std::string business = "video";
  uint64_t entities = 1'000'000;
  uint64_t users = 100'000;
  uint64_t owners = 0;  // > 0: actions carry owner "o<entity % owners>" (received-likes totals)
  double theta = 0.99;
  int write_batch = 1;          // actions per write operation (1..100)
  int state_batch = 20;         // entities per state read (1..100)
  int counts_batch = 20;        // entities per counts read (1..100)
  double reads_per_write = 20;  // mixed phase
  double counts_share = 0.2;    // mixed phase: share of reads that are counts reads
  double spike_share = 0.5;     // mixed phase: share of operations aimed at the spike entity...
  double spike_from = 1.0 / 3;  // ...during this part of the measured window (fractions)
  double spike_to = 2.0 / 3;
  uint64_t seed = 1;

  Status Validate() const;
};

enum class LikesPhase { kPreload, kWrite, kRead, kMixed };
std::string_view LikesPhaseName(LikesPhase phase);  // "preload", "write", "read", "mixed"
Result<LikesPhase> ParseLikesPhase(std::string_view name);

enum class LikesOpKind : uint8_t { kWrite = 0, kState = 1, kCounts = 2 };
inline constexpr size_t kLikesOpKinds = 3;

struct LikeActionSpec {
  uint64_t user = 0;
  uint64_t entity = 0;
  bool like = true;  // false: unlike
};

// One operation, in ids; the drivers turn it into an HTTP request or Redis commands.
struct LikesOp {
  LikesOpKind kind = LikesOpKind::kWrite;
  uint64_t user = 0;                    // state reads
  std::vector<uint64_t> entities;       // reads
  std::vector<LikeActionSpec> actions;  // writes
  bool spike = false;                   // drawn while the spike was on

  size_t items() const { return kind == LikesOpKind::kWrite ? actions.size() : entities.size(); }
};

// The shared, immutable part: workload, Zipf, scrambler.
class LikesModel {
 public:
  static Result<std::shared_ptr<const LikesModel>> Create(const LikesWorkload& workload);

  const LikesWorkload& workload() const { return workload_; }
  // A Zipf-popular entity id (scrambled rank).
  uint64_t DrawEntity(Random& rng) const { return scramble_(zipf_.Next(rng)); }
  // The id of the entity the spike aims at: the least popular rank's.
  uint64_t spike_entity() const { return scramble_(workload_.entities - 1); }
  // The first n distinct (user, entity) pairs of a sequence fixed by the seed (users uniform,
  // entities Zipf): what the preload phase likes. n <= users * entities / 2.
  std::vector<std::pair<uint64_t, uint64_t>> PreloadPairs(uint64_t n) const;

 private:
  LikesModel(LikesWorkload workload, ZipfGenerator zipf)
      : workload_(std::move(workload)), zipf_(zipf), scramble_(workload_.entities, workload_.seed) {}
  LikesWorkload workload_;
  ZipfGenerator zipf_;
  IdScrambler scramble_;
};

// Draws operations for one load thread. Not thread-safe.
class LikesOpGenerator {
 public:
  // Users come from stripe `stripe` of `stripes` (user % stripes == stripe); users >= stripes.
  LikesOpGenerator(std::shared_ptr<const LikesModel> model, uint32_t stripe, uint32_t stripes);

  // Records these pairs as liked (those of other stripes are ignored).
  void AssumeLiked(const std::vector<std::pair<uint64_t, uint64_t>>& pairs);
  // The preload phase likes these pairs (those of this stripe), then has nothing more.
  void QueuePreload(const std::vector<std::pair<uint64_t, uint64_t>>& pairs);
  // Operations drawn at steady time in [spike_from_ns, spike_to_ns) are spike operations
  // (mixed phase only).
  void StartPhase(LikesPhase phase, int64_t spike_from_ns, int64_t spike_to_ns);
  // The next operation; false when the phase has nothing more (preload done).
  bool Next(int64_t now_ns, LikesOp* op);

  size_t liked_pairs() const { return liked_.size(); }
  bool IsLiked(uint64_t user, uint64_t entity) const { return liked_.count(PairKey(user, entity)) > 0; }

 private:
  uint64_t PairKey(uint64_t user, uint64_t entity) const {
    return user * model_->workload().entities + entity;
  }
  uint64_t DrawUser();
  void DrawWrite(bool spiking, LikesOp* op);
  void DrawRead(LikesOpKind kind, int batch, bool spiking, LikesOp* op);

  std::shared_ptr<const LikesModel> model_;
  const uint32_t stripe_;
  const uint32_t stripes_;
  const uint64_t stripe_users_;  // users in this stripe
  Random rng_;
  LikesPhase phase_ = LikesPhase::kMixed;
  int64_t spike_from_ns_ = 0;
  int64_t spike_to_ns_ = 0;
  std::unordered_set<uint64_t> liked_;  // PairKey of pairs this generator last liked
  std::vector<std::pair<uint64_t, uint64_t>> preload_;
  size_t preload_next_ = 0;
};

// What the HTTP requests carry besides the operation.
struct LikesHttpTarget {
  std::string host;   // Host header value, "127.0.0.1:8080"
  std::string token;  // bearer token; empty: no Authorization header
  std::string business = "video";
  uint64_t owners = 0;
};

// The complete HTTP/1.1 request for `op` (replaces *out):
//   write, 1 action : POST /v1/likes        {"business","user","entity"[,"owner"],"action"}
//   write, n actions: POST /v1/likes/batch  {"actions":[...]}
//   state           : GET /v1/likes/state?business=B&user=U&entities=E1,E2,...
//   counts          : GET /v1/likes/counts?business=B&entities=E1,E2,...
// Ids render as u<user>, e<entity>, o<entity % owners>.
void BuildLikesHttpRequest(const LikesOp& op, const LikesHttpTarget& target, std::string* out);

// Non-overlapping occurrences of `needle` in `haystack` (responses are scanned, not parsed).
size_t CountOccurrences(std::string_view haystack, std::string_view needle);

// ---- results ----

struct LikesKindStats {
  uint64_t requests = 0;     // complete operations (HTTP responses, Redis replies), any status
  uint64_t items = 0;        // actions or entities served (2xx, minus per-item errors)
  uint64_t non_2xx = 0;      // HTTP only
  uint64_t item_errors = 0;  // batch results carrying "error"; Redis error replies
  uint64_t liked = 0;        // state reads: entity states answered "liked" (Redis: ZSCORE hits)
  LatencyHistogram latency;

  void Merge(const LikesKindStats& other);
};

struct LikesPhaseResult {
  LikesPhase phase = LikesPhase::kWrite;
  std::array<LikesKindStats, kLikesOpKinds> kinds;  // by LikesOpKind
  // Mixed phase, all kinds: operations drawn while the spike was on, and the others.
  LikesKindStats spike;
  LikesKindStats steady;
  HttpLoopCounters transport;  // socket errors (both targets), reconnects
  double elapsed_s = 0;        // measured window (preload: until the last action)
  double spike_s = 0;          // length of the spike window

  LikesKindStats& kind(LikesOpKind k) { return kinds[static_cast<size_t>(k)]; }
  const LikesKindStats& kind(LikesOpKind k) const { return kinds[static_cast<size_t>(k)]; }
  // Counts one completed operation inside the measured window.
  void Record(LikesOpKind kind, bool spike, bool ok, uint64_t items, uint64_t item_errors, uint64_t liked,
              int64_t latency_ns);
  void Merge(const LikesPhaseResult& other);
  // throughput: preload/write actions/s, read entity-states/s, mixed operations/s; counts,
  // per-kind figures (…_per_s, …_p50_ms, …_p99_ms), latency of the phase's main kind (mixed: all).
  Measurement ToMeasurement(std::string system) const;
};

// ---- running ----

// The time frame of one phase, steady-clock ns (SteadyNowNanos).
struct LikesWindow {
  int64_t record_from_ns = 0;
  int64_t end_ns = 0;
  int64_t timeout_ns = 5'000'000'000;
};

// Runs one load thread's share of a phase against one system. RunThread is called concurrently
// from every load thread, each with its own generator and result.
class LikesDriver {
 public:
  virtual ~LikesDriver() = default;
  virtual void RunThread(LikesOpGenerator& generator, int connections, const LikesWindow& window,
                         LikesPhaseResult* result) = 0;
};

// chorus (or anything speaking the likes HTTP API) over closed-loop keep-alive connections, with
// `pipeline` requests in flight on each (1..kMaxHttpPipeline; > 1 is HTTP/1.1 pipelining, the
// shape of the Redis peer's connections; see http_closed_loop.h).
Result<std::unique_ptr<LikesDriver>> MakeLikesHttpDriver(const std::string& url, const std::string& token,
                                                         const LikesWorkload& workload, int pipeline = 1);
// The same spread over several servers (the nodes of a fleet, no load balancer in front): each
// load thread's connection i talks to urls[i % urls.size()], so connections split evenly and a
// user's successive operations may land on different nodes, as behind a round-robin balancer.
Result<std::unique_ptr<LikesDriver>> MakeLikesHttpDriver(const std::vector<std::string>& urls,
                                                         const std::string& token,
                                                         const LikesWorkload& workload, int pipeline = 1);

struct LikesRunOptions {
  LikesWorkload workload;
  std::vector<LikesPhase> phases;
  int connections = 64;
  int threads = 2;
  std::chrono::nanoseconds duration = std::chrono::seconds(10);  // per timed phase
  std::chrono::nanoseconds warmup = std::chrono::seconds(2);     // per timed phase
  std::chrono::nanoseconds timeout = std::chrono::seconds(5);
  uint64_t preload = 0;    // pairs the preload phase likes
  uint64_t preloaded = 0;  // pairs an earlier preload run liked (assumed liked here)
  // A preload stops after this long even if unfinished.
  std::chrono::nanoseconds preload_limit = std::chrono::minutes(30);
};

// Runs options.phases in order against `driver`, one result per phase.
Result<std::vector<LikesPhaseResult>> RunLikesPhases(const LikesRunOptions& options, LikesDriver& driver);

}  // namespace chorus::bench
