#include "compute_sim.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>

#include "base/random.h"
#include "chorus/compute/v1/compute.grpc.pb.h"
#include "net/grpc_server.h"
#include "net/grpc_status.h"
#include "net/token.h"

namespace chorus::bench {
namespace {

// The real node's limits (src/compute/app_spec.h): a claim outside them is INVALID_ARGUMENT.
constexpr int kMaxGpus = 64;
constexpr int kMaxConcurrency = 10'000;
constexpr int kMaxReplicasPerClaim = 64;

bool IsValidName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (const char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
                    c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::vector<std::string> ClaimedIds(const cpb::ClaimRequest& c) {
  std::vector<std::string> ids{c.replica_id()};
  for (const auto& id : c.more_replica_ids()) ids.push_back(id);
  return ids;
}

// node_agent.cc's ValidateClaimShape.
std::string ClaimShapeError(const cpb::ClaimRequest& c) {
  if (!IsValidName(c.app())) return "app: not a valid app name";
  if (c.more_replica_ids_size() >= kMaxReplicasPerClaim) {
    return "more_replica_ids: at most " + std::to_string(kMaxReplicasPerClaim) + " replicas per claim";
  }
  std::vector<std::string> ids = ClaimedIds(c);
  for (const auto& id : ids) {
    if (id.empty() || id.size() > 128) return "replica_id: 1..128 bytes";
  }
  std::sort(ids.begin(), ids.end());
  if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) return "more_replica_ids: replica ids of a claim must be distinct";
  const auto& r = c.resources();
  if (r.cpu_millis() <= 0 || r.memory_mb() <= 0 || r.gpus() < 0 || r.gpus() > kMaxGpus) {
    return "resources: cpu_millis and memory_mb must be positive, gpus 0.." + std::to_string(kMaxGpus);
  }
  if (c.max_concurrency() < 1 || c.max_concurrency() > kMaxConcurrency) {
    return "max_concurrency: 1.." + std::to_string(kMaxConcurrency);
  }
  const auto& e = c.engine();
  if (e.engine() == "exec") {
    if (e.command().empty() || e.command()[0] != '/') return "engine.command: an absolute path";
  } else if (e.engine() != "synthetic") {
    return "engine: \"" + e.engine().substr(0, 40) + "\" is not exec or synthetic";
  }
  return "";
}

std::string NodeId(const std::string& prefix, size_t i) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%05zu", i);
  return prefix + buf;
}

}  // namespace

std::string_view SimCodeName(SimCode code) {
  switch (code) {
    case SimCode::kOk:
      return "OK";
    case SimCode::kInvalidArgument:
      return "INVALID_ARGUMENT";
    case SimCode::kNotFound:
      return "NOT_FOUND";
    case SimCode::kAlreadyExists:
      return "ALREADY_EXISTS";
    case SimCode::kFailedPrecondition:
      return "FAILED_PRECONDITION";
    case SimCode::kAborted:
      return "ABORTED";
    case SimCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
    case SimCode::kUnavailable:
      return "UNAVAILABLE";
  }
  return "UNKNOWN";
}

SimCounters SimCounters::operator-(const SimCounters& e) const {
  SimCounters d;
  d.claims = claims - e.claims;
  d.accepted = accepted - e.accepted;
  d.accepted_replicas = accepted_replicas - e.accepted_replicas;
  d.aborted = aborted - e.aborted;
  d.exhausted = exhausted - e.exhausted;
  d.failed_precondition = failed_precondition - e.failed_precondition;
  d.unavailable = unavailable - e.unavailable;
  d.invalid = invalid - e.invalid;
  d.releases = releases - e.releases;
  d.released = released - e.released;
  d.releases_not_found = releases_not_found - e.releases_not_found;
  return d;
}

// ---------------------------------------------------------------------------------------------
// SimNodeTable

struct SimNodeTable::Node {
  mutable Mutex mu;
  std::string id;
  uint64_t incarnation = 0;
  uint64_t version GUARDED_BY(mu) = 1;
  bool draining GUARDED_BY(mu) = false;
  bool dead GUARDED_BY(mu) = false;
  std::vector<cpb::ReplicaStatus> replicas GUARDED_BY(mu);
  int64_t cpu_used GUARDED_BY(mu) = 0;
  int64_t memory_used GUARDED_BY(mu) = 0;
};

SimNodeTable::SimNodeTable(SimTableOptions options, Clock& clock)
    : options_(std::move(options)), clock_(clock) {
  uint64_t first = options_.first_incarnation;
  if (first == 0) {
    first = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(clock_.WallNow().time_since_epoch()).count());
  }
  const size_t n = options_.nodes > 0 ? static_cast<size_t>(options_.nodes) : 0;
  nodes_.reserve(n);
  index_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    auto node = std::make_unique<Node>();
    node->id = NodeId(options_.id_prefix, i);
    node->incarnation = first + i;
    index_.emplace(node->id, i);
    nodes_.push_back(std::move(node));
  }
}

SimNodeTable::~SimNodeTable() = default;

const std::string& SimNodeTable::node_id(size_t i) const { return nodes_[i]->id; }
uint64_t SimNodeTable::incarnation(size_t i) const { return nodes_[i]->incarnation; }

std::optional<size_t> SimNodeTable::Find(std::string_view node_id) const {
  auto it = index_.find(std::string(node_id));
  if (it == index_.end()) return std::nullopt;
  return it->second;
}

void SimNodeTable::SetAddress(std::string address) { address_ = std::move(address); }
void SimNodeTable::SetChangeListener(std::function<void(size_t)> listener) {
  listener_ = std::move(listener);
}

void SimNodeTable::Notify(size_t i) {
  if (listener_) listener_(i);
}

cpb::NodeStatus SimNodeTable::StatusLocked(const Node& n) const NO_THREAD_SAFETY_ANALYSIS {
  cpb::NodeStatus s;
  s.set_node_id(n.id);
  s.set_cluster(options_.cluster);
  s.set_address(address_);
  s.set_incarnation(n.incarnation);
  s.set_version(n.version);
  auto* cap = s.mutable_capacity();
  cap->set_cpu_millis(options_.capacity.cpu_millis);
  cap->set_memory_mb(options_.capacity.memory_mb);
  cap->set_slots(options_.capacity.slots);
  s.mutable_allocated()->set_cpu_millis(n.cpu_used);
  s.mutable_allocated()->set_memory_mb(n.memory_used);
  s.set_draining(n.draining);
  for (const auto& r : n.replicas) *s.add_replicas() = r;
  return s;
}

SimAnswer SimNodeTable::Refuse(SimCode code, std::string message,
                               const Node* n) const NO_THREAD_SAFETY_ANALYSIS {
  SimAnswer a;
  a.code = code;
  a.message = std::move(message);
  if (n != nullptr) a.node = StatusLocked(*n);
  return a;
}

SimAnswer SimNodeTable::Claim(const cpb::ClaimRequest& c) {
  SimAnswer out;
  std::optional<size_t> index;
  if (std::string err = ClaimShapeError(c); !err.empty()) {
    out = Refuse(SimCode::kInvalidArgument, std::move(err), nullptr);
  } else if (index = Find(c.node_id()); !index) {
    out = Refuse(SimCode::kFailedPrecondition,
                 "claim for node " + c.node_id().substr(0, 80) + " reached a simulator that does not host it",
                 nullptr);
  } else {
    Node& n = *nodes_[*index];
    MutexLock lock(n.mu);
    const auto& want = c.resources();
    const int count = 1 + c.more_replica_ids_size();
    auto duplicate = [&]() REQUIRES(n.mu) -> const std::string* {
      for (const auto& r : n.replicas) {
        if (r.replica_id() == c.replica_id()) return &c.replica_id();
        for (const auto& id : c.more_replica_ids()) {
          if (r.replica_id() == id) return &id;
        }
      }
      return nullptr;
    };
    const int slots = options_.capacity.slots;
    if (n.dead) {
      out = Refuse(SimCode::kUnavailable, "node " + n.id + " is dead", nullptr);
    } else if (c.incarnation() != n.incarnation) {
      out = Refuse(SimCode::kFailedPrecondition,
                   "claim for incarnation " + std::to_string(c.incarnation()) + " of node " + n.id +
                       ", which now runs incarnation " + std::to_string(n.incarnation),
                   &n);
    } else if (n.draining) {
      out = Refuse(SimCode::kFailedPrecondition, "node " + n.id + " is draining", &n);
    } else if (c.expected_version() != n.version) {
      out = Refuse(SimCode::kAborted,
                   "claim conflict: node " + n.id + " is at version " + std::to_string(n.version) +
                       ", the claim expected " + std::to_string(c.expected_version()),
                   &n);
    } else if (const std::string* dup = duplicate()) {
      out = Refuse(SimCode::kAlreadyExists, "replica " + *dup + " already runs on node " + n.id, &n);
    } else if (static_cast<int>(n.replicas.size()) + count > slots) {
      out = Refuse(SimCode::kResourceExhausted, "node " + n.id + ": no free slot", &n);
    } else if (n.cpu_used + count * want.cpu_millis() > options_.capacity.cpu_millis ||
               n.memory_used + count * want.memory_mb() > options_.capacity.memory_mb) {
      out = Refuse(SimCode::kResourceExhausted, "node " + n.id + ": not enough free cpu or memory", &n);
    } else if (want.gpus() > 0) {
      out = Refuse(SimCode::kResourceExhausted,
                   "node " + n.id + ": not enough free GPUs of an accepted card type", &n);
    } else {
      for (int i = 0; i < count; ++i) {
        cpb::ReplicaStatus r;
        r.set_app(c.app());
        r.set_replica_id(i == 0 ? c.replica_id() : c.more_replica_ids(i - 1));
        *r.mutable_resources() = want;
        r.set_state(cpb::REPLICA_RUNNING);
        r.set_max_concurrency(c.max_concurrency());
        r.set_scheduler_id(c.scheduler_id());
        r.set_claimed_at_ms(clock_.WallMillis());
        r.set_app_generation(c.app_generation());
        n.replicas.push_back(std::move(r));
      }
      n.cpu_used += count * want.cpu_millis();
      n.memory_used += count * want.memory_mb();
      ++n.version;
      out.code = SimCode::kOk;
      out.node = StatusLocked(n);
      MutexLock book(book_mu_);
      ++counters_.claims;
      ++counters_.accepted;
      counters_.accepted_replicas += static_cast<uint64_t>(count);
      const SteadyTime now = clock_.Now();
      auto& received = received_at_[c.app()];
      received.insert(received.end(), static_cast<size_t>(count), now);
      const int64_t serving = serving_[c.app()] += count;
      int64_t& peak = peak_[c.app()];
      peak = std::max(peak, serving);
      last_change_ = now;
      auto& accepted = accepted_at_[c.app()];
      accepted.insert(accepted.end(), static_cast<size_t>(count), now);
      book_cv_.NotifyAll();
    }
  }
  if (out.code == SimCode::kOk) {
    Notify(*index);
    return out;
  }
  MutexLock book(book_mu_);
  ++counters_.claims;
  if (IsValidName(c.app())) {
    auto& received = received_at_[c.app()];
    const int asked = std::min(1 + c.more_replica_ids_size(), kMaxReplicasPerClaim);  // a refused shape may ask more
    received.insert(received.end(), static_cast<size_t>(asked), clock_.Now());
  }
  switch (out.code) {
    case SimCode::kAborted:
      ++counters_.aborted;
      break;
    case SimCode::kResourceExhausted:
      ++counters_.exhausted;
      break;
    case SimCode::kFailedPrecondition:
      ++counters_.failed_precondition;
      break;
    case SimCode::kUnavailable:
      ++counters_.unavailable;
      break;
    default:
      ++counters_.invalid;
      break;
  }
  return out;
}

SimAnswer SimNodeTable::Release(const cpb::ReleaseRequest& release) {
  {
    MutexLock book(book_mu_);
    ++counters_.releases;
  }
  const std::optional<size_t> index = Find(release.node_id());
  if (!index) {
    return Refuse(
        SimCode::kFailedPrecondition,
        "release for node " + release.node_id().substr(0, 80) + " reached a simulator that does not host it",
        nullptr);
  }
  Node& n = *nodes_[*index];
  SimAnswer out;
  {
    MutexLock lock(n.mu);
    if (n.dead) return Refuse(SimCode::kUnavailable, "node " + n.id + " is dead", nullptr);
    auto it = std::find_if(n.replicas.begin(), n.replicas.end(), [&](const cpb::ReplicaStatus& r) {
      return r.replica_id() == release.replica_id();
    });
    if (it == n.replicas.end()) {
      MutexLock book(book_mu_);
      ++counters_.releases_not_found;
      return Refuse(SimCode::kNotFound, "replica " + release.replica_id() + " does not run on node " + n.id,
                    nullptr);
    }
    const std::string app = it->app();
    n.cpu_used -= it->resources().cpu_millis();
    n.memory_used -= it->resources().memory_mb();
    n.replicas.erase(it);
    ++n.version;
    out.node = StatusLocked(n);
    MutexLock book(book_mu_);
    ++counters_.released;
    if (!n.draining) --serving_[app];
    last_change_ = clock_.Now();
    book_cv_.NotifyAll();
  }
  Notify(*index);
  return out;
}

cpb::NodeStatus SimNodeTable::Status(size_t i) const {
  const Node& n = *nodes_[i];
  MutexLock lock(n.mu);
  return StatusLocked(n);
}

uint64_t SimNodeTable::version(size_t i) const {
  MutexLock lock(nodes_[i]->mu);
  return nodes_[i]->version;
}

bool SimNodeTable::draining(size_t i) const {
  MutexLock lock(nodes_[i]->mu);
  return nodes_[i]->draining;
}

bool SimNodeTable::dead(size_t i) const {
  MutexLock lock(nodes_[i]->mu);
  return nodes_[i]->dead;
}

int SimNodeTable::Replicas(size_t i, const std::string& app) const {
  MutexLock lock(nodes_[i]->mu);
  return static_cast<int>(std::count_if(nodes_[i]->replicas.begin(), nodes_[i]->replicas.end(),
                                        [&](const cpb::ReplicaStatus& r) { return r.app() == app; }));
}

int SimNodeTable::Replicas(size_t i) const {
  MutexLock lock(nodes_[i]->mu);
  return static_cast<int>(nodes_[i]->replicas.size());
}

bool SimNodeTable::Drain(size_t i) {
  Node& n = *nodes_[i];
  {
    MutexLock lock(n.mu);
    if (n.dead || n.draining) return false;
    n.draining = true;
    ++n.version;
    MutexLock book(book_mu_);
    for (const auto& r : n.replicas) --serving_[r.app()];
    last_change_ = clock_.Now();
    book_cv_.NotifyAll();
  }
  Notify(i);
  return true;
}

bool SimNodeTable::Touch(size_t i) {
  Node& n = *nodes_[i];
  {
    MutexLock lock(n.mu);
    if (n.dead) return false;
    ++n.version;
  }
  Notify(i);
  return true;
}

int SimNodeTable::Kill(size_t i) {
  Node& n = *nodes_[i];
  MutexLock lock(n.mu);
  if (n.dead) return -1;
  n.dead = true;
  MutexLock book(book_mu_);
  if (!n.draining) {
    for (const auto& r : n.replicas) --serving_[r.app()];
  }
  last_change_ = clock_.Now();
  book_cv_.NotifyAll();
  return static_cast<int>(n.replicas.size());
}

int64_t SimNodeTable::Serving(const std::string& app) const {
  MutexLock book(book_mu_);
  auto it = serving_.find(app);
  return it == serving_.end() ? 0 : it->second;
}

int64_t SimNodeTable::PeakServing(const std::string& app) const {
  MutexLock book(book_mu_);
  auto it = peak_.find(app);
  return it == peak_.end() ? 0 : it->second;
}

void SimNodeTable::ResetPeak(const std::string& app) {
  MutexLock book(book_mu_);
  auto it = serving_.find(app);
  peak_[app] = it == serving_.end() ? 0 : it->second;
}

std::optional<SteadyTime> SimNodeTable::WaitServing(const std::string& app,
                                                    const std::function<bool(int64_t)>& pred,
                                                    SteadyTime deadline) const {
  MutexLock book(book_mu_);
  auto serving = [&]() REQUIRES(book_mu_) {
    auto it = serving_.find(app);
    return it == serving_.end() ? int64_t{0} : it->second;
  };
  if (pred(serving())) return clock_.Now();
  if (!book_cv_.WaitUntil(book_mu_, deadline, [&]() REQUIRES(book_mu_) { return pred(serving()); })) {
    return std::nullopt;
  }
  // The change that made pred true happened at or before the last one recorded.
  return last_change_;
}

std::optional<SteadyTime> SimNodeTable::WaitAccepted(const std::string& app, SteadyTime since, size_t n,
                                                     SteadyTime deadline) const {
  MutexLock book(book_mu_);
  std::optional<SteadyTime> found;
  auto check = [&]() REQUIRES(book_mu_) {
    auto it = accepted_at_.find(app);
    if (it == accepted_at_.end()) return false;
    const auto& times = it->second;
    const auto from = std::lower_bound(times.begin(), times.end(), since);
    if (static_cast<size_t>(times.end() - from) < n || n == 0) return false;
    found = *(from + static_cast<std::ptrdiff_t>(n - 1));
    return true;
  };
  if (check()) return found;
  if (!book_cv_.WaitUntil(book_mu_, deadline, check)) return std::nullopt;
  return found;
}

size_t SimNodeTable::AcceptedSince(const std::string& app, SteadyTime since) const {
  MutexLock book(book_mu_);
  auto it = accepted_at_.find(app);
  if (it == accepted_at_.end()) return 0;
  return static_cast<size_t>(it->second.end() -
                             std::lower_bound(it->second.begin(), it->second.end(), since));
}

std::vector<SteadyTime> SimNodeTable::AcceptedTimes(const std::string& app) const {
  MutexLock book(book_mu_);
  auto it = accepted_at_.find(app);
  return it == accepted_at_.end() ? std::vector<SteadyTime>{} : it->second;
}

std::vector<SteadyTime> SimNodeTable::ReceivedTimes(const std::string& app) const {
  MutexLock book(book_mu_);
  auto it = received_at_.find(app);
  return it == received_at_.end() ? std::vector<SteadyTime>{} : it->second;
}

SteadyTime SimNodeTable::LastChange() const {
  MutexLock book(book_mu_);
  return last_change_;
}

SimCounters SimNodeTable::counters() const {
  MutexLock book(book_mu_);
  return counters_;
}

size_t SimNodeTable::OvercommittedNodes() const {
  size_t over = 0;
  for (const auto& node : nodes_) {
    MutexLock lock(node->mu);
    int64_t cpu = 0, memory = 0;
    int gpus = 0;
    for (const auto& r : node->replicas) {
      cpu += r.resources().cpu_millis();
      memory += r.resources().memory_mb();
      gpus += r.resources().gpus();
    }
    if (static_cast<int>(node->replicas.size()) > options_.capacity.slots ||
        cpu > options_.capacity.cpu_millis || memory > options_.capacity.memory_mb || gpus > 0) {
      ++over;
    }
  }
  return over;
}

// ---------------------------------------------------------------------------------------------
// NodeSimulator

namespace {

grpc::Status ToGrpc(const SimAnswer& a) {
  using C = grpc::StatusCode;
  switch (a.code) {
    case SimCode::kOk:
      return grpc::Status::OK;
    case SimCode::kInvalidArgument:
      return grpc::Status(C::INVALID_ARGUMENT, a.message);
    case SimCode::kNotFound:
      return grpc::Status(C::NOT_FOUND, a.message);
    case SimCode::kAlreadyExists:
      return grpc::Status(C::ALREADY_EXISTS, a.message);
    case SimCode::kFailedPrecondition:
      return grpc::Status(C::FAILED_PRECONDITION, a.message);
    case SimCode::kAborted:
      return grpc::Status(C::ABORTED, a.message);
    case SimCode::kResourceExhausted:
      return grpc::Status(C::RESOURCE_EXHAUSTED, a.message);
    case SimCode::kUnavailable:
      return grpc::Status(C::UNAVAILABLE, a.message);
  }
  return grpc::Status(C::UNKNOWN, a.message);
}

}  // namespace

class NodeSimulator::Impl final : public cpb::Node::CallbackService {
 public:
  // One node's heartbeat stream. Its state fields are guarded by the node's Slot::mu. gRPC
  // operations (Start*, TryCancel, RemoveHold) are always issued outside that mutex, and only
  // while the stream provably cannot reach OnDone: a hold taken at start is dropped only once
  // the read has ended, no write is outstanding and no other thread is about to touch the call
  // (`ops`).
  class Stream final : public grpc::ClientBidiReactor<cpb::HeartbeatRequest, cpb::HeartbeatAck> {
   public:
    Stream(Impl* sim, size_t node) : sim_(sim), node_(node) {}
    void OnWriteDone(bool ok) override { sim_->OnWriteDone(this, ok); }
    void OnReadDone(bool ok) override {
      if (ok) {
        StartRead(&ack);
        return;
      }
      sim_->OnReadEnded(this);
    }
    void OnDone(const grpc::Status& status) override {
      sim_->OnStreamDone(this, status);
      delete this;
    }

    size_t node() const { return node_; }

    grpc::ClientContext ctx;
    cpb::HeartbeatRequest request;  // owned by whoever set `writing`
    cpb::HeartbeatAck ack;
    bool writing = false;  // a write is outstanding
    bool dirty = false;    // the node changed while writing: write again when done
    bool ended = false;    // the read failed: the call is over
    bool hold_released = false;
    int ops = 0;  // threads about to issue a gRPC operation on this stream

   private:
    Impl* const sim_;
    const size_t node_;
  };

  struct Slot {
    Mutex mu;
    Stream* stream GUARDED_BY(mu) = nullptr;
    bool killed GUARDED_BY(mu) = false;
    size_t server GUARDED_BY(mu) = 0;
    SteadyTime last_sent GUARDED_BY(mu){};
    SteadyTime retry_at GUARDED_BY(mu){};
  };

  Impl(NodeSimulatorOptions options, const net::TokenSigner& signer, Clock& clock)
      : options_(std::move(options)), signer_(signer), clock_(clock), table_(options_.table, clock) {
    slots_.reserve(table_.size());
    for (size_t i = 0; i < table_.size(); ++i) {
      auto slot = std::make_unique<Slot>();
      MutexLock lock(slot->mu);
      slot->server = i % options_.resources.size();
      slots_.push_back(std::move(slot));
    }
    table_.SetChangeListener([this](size_t i) { Push(i); });
  }

  ~Impl() override { Stop(); }

  SimNodeTable& table() { return table_; }
  const SimNodeTable& table() const { return table_; }
  const std::string& address() const { return address_; }

  Status Listen() {
    CHORUS_ASSIGN_OR_RETURN(server_, net::GrpcServer::Start(options_.listen, {this}));
    const size_t colon = options_.listen.rfind(':');
    address_ = options_.listen.substr(0, colon) + ":" + std::to_string(server_->port());
    table_.SetAddress(address_);
    return Status::Ok();
  }

  // Channels: per resource server, one per `nodes_per_connection` streams (distinct channel
  // arguments and a local subchannel pool force distinct TCP connections).
  void MakeStubs() {
    const size_t servers = options_.resources.size();
    const size_t per_conn = static_cast<size_t>(std::max(1, options_.nodes_per_connection));
    const size_t conns = std::max<size_t>(1, (table_.size() / servers + per_conn - 1) / per_conn);
    stubs_.resize(servers);
    for (size_t s = 0; s < servers; ++s) {
      for (size_t c = 0; c < conns; ++c) {
        grpc::ChannelArguments args;
        args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
        args.SetInt("chorus.sim.connection", static_cast<int>(c));
        args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
        args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
        args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
        stubs_[s].push_back(cpb::Resource::NewStub(
            grpc::CreateCustomChannel(options_.resources[s], grpc::InsecureChannelCredentials(), args)));
      }
    }
  }

  cpb::Resource::Stub& StubFor(size_t server, size_t node) {
    auto& list = stubs_[server];
    const size_t per_conn = static_cast<size_t>(std::max(1, options_.nodes_per_connection));
    return *list[(node / options_.resources.size() / per_conn) % list.size()];
  }

  void StartStreams() {
    if (options_.open_per_second <= 0) {
      while (OpenNext()) {
      }
    } else {
      OpenNext();
    }
    ticker_ = std::thread([this] { Tick(); });
  }

  // Opens the stream of the next node not started yet; false when all are.
  bool OpenNext() {
    const size_t i = started_.load();
    if (i >= slots_.size()) return false;
    started_.store(i + 1);
    Open(i);
    // Spread the periodic heartbeats over the interval, as independent machines would be.
    Slot& s = *slots_[i];
    MutexLock lock(s.mu);
    s.last_sent -= Duration(static_cast<int64_t>(
        random_.Uniform(static_cast<uint64_t>(std::max<int64_t>(1, options_.heartbeat_interval.count())))));
    return true;
  }

  // --- Node service ------------------------------------------------------------------------------
  Status Authorize(const grpc::ServerContextBase& ctx, std::string_view scope) {
    CHORUS_ASSIGN_OR_RETURN(std::string_view token, net::GrpcBearerToken(ctx));
    CHORUS_ASSIGN_OR_RETURN(net::TokenClaims claims, signer_.Verify(token, clock_));
    return net::RequireScope(claims, scope);
  }

  grpc::ServerUnaryReactor* Claim(grpc::CallbackServerContext* ctx, const cpb::ClaimRequest* req,
                                  cpb::ClaimResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (Status st = Authorize(*ctx, "compute.schedule"); !st.ok()) {
      reactor->Finish(net::ToGrpcStatus(st));
      return reactor;
    }
    SimAnswer a = table_.Claim(*req);
    if (a.node) {
      if (a.code != SimCode::kOk)
        ctx->AddTrailingMetadata("chorus-node-status-bin", a.node->SerializeAsString());
      *resp->mutable_status() = std::move(*a.node);
    }
    reactor->Finish(ToGrpc(a));
    return reactor;
  }

  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* ctx, const cpb::ReleaseRequest* req,
                                    cpb::ReleaseResponse* resp) override {
    auto* reactor = ctx->DefaultReactor();
    if (Status st = Authorize(*ctx, "compute.schedule"); !st.ok()) {
      reactor->Finish(net::ToGrpcStatus(st));
      return reactor;
    }
    SimAnswer a = table_.Release(*req);
    if (a.node && a.code == SimCode::kOk) *resp->mutable_status() = std::move(*a.node);
    reactor->Finish(ToGrpc(a));
    return reactor;
  }

  grpc::ServerUnaryReactor* Invoke(grpc::CallbackServerContext* ctx, const cpb::InvokeRequest* req,
                                   cpb::InvokeResponse*) override {
    auto* reactor = ctx->DefaultReactor();
    if (Status st = Authorize(*ctx, "compute.invoke"); !st.ok()) {
      reactor->Finish(net::ToGrpcStatus(st));
      return reactor;
    }
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                 "simulated nodes run no workers (app " + req->app().substr(0, 64) + ")"));
    return reactor;
  }

  // --- heartbeat streams ---------------------------------------------------------------------------
  // True (once) when the stream's hold may go: the call is over and nobody is using it.
  static bool ShouldRelease(Stream& st) {
    if (st.ended && !st.writing && st.ops == 0 && !st.hold_released) {
      st.hold_released = true;
      return true;
    }
    return false;
  }

  void FinishOp(Stream* st) {
    bool release = false;
    {
      MutexLock lock(slots_[st->node()]->mu);
      --st->ops;
      release = ShouldRelease(*st);
    }
    if (release) st->RemoveHold();
  }

  void Open(size_t i) {
    Slot& s = *slots_[i];
    auto* st = new Stream(this, i);
    st->ctx.AddMetadata("authorization", "Bearer " + options_.token);
    size_t server = 0;
    {
      MutexLock lock(s.mu);
      if (s.killed || s.stream != nullptr || stopping_.load()) {
        delete st;
        return;
      }
      server = s.server;
      s.stream = st;
      st->writing = true;
      st->ops = 1;
      *st->request.mutable_status() = table_.Status(i);
      s.last_sent = clock_.Now();
    }
    open_.fetch_add(1);
    opened_.fetch_add(1);
    heartbeats_.fetch_add(1);
    StubFor(server, i).async()->Heartbeat(&st->ctx, st);
    st->AddHold();
    st->StartWrite(&st->request);
    st->StartRead(&st->ack);
    st->StartCall();
    FinishOp(st);
  }

  void Push(size_t i) {
    Slot& s = *slots_[i];
    Stream* st = nullptr;
    {
      MutexLock lock(s.mu);
      st = s.stream;
      if (st == nullptr || st->ended || s.killed) return;
      if (st->writing) {
        st->dirty = true;
        return;
      }
      st->writing = true;
      *st->request.mutable_status() = table_.Status(i);
      s.last_sent = clock_.Now();
    }
    heartbeats_.fetch_add(1);
    st->StartWrite(&st->request);
  }

  void OnWriteDone(Stream* st, bool ok) {
    Slot& s = *slots_[st->node()];
    bool again = false, release = false;
    {
      MutexLock lock(s.mu);
      st->writing = false;
      if (ok && !st->ended && st->dirty && !s.killed) {
        st->dirty = false;
        st->writing = true;
        *st->request.mutable_status() = table_.Status(st->node());
        s.last_sent = clock_.Now();
        again = true;
      } else {
        release = ShouldRelease(*st);
      }
    }
    if (again) {
      heartbeats_.fetch_add(1);
      st->StartWrite(&st->request);
    }
    if (release) st->RemoveHold();
  }

  void OnReadEnded(Stream* st) {
    bool release = false;
    {
      MutexLock lock(slots_[st->node()]->mu);
      st->ended = true;
      release = ShouldRelease(*st);
    }
    if (release) st->RemoveHold();
  }

  void OnStreamDone(Stream* st, const grpc::Status& status) {
    Slot& s = *slots_[st->node()];
    bool unexpected = false;
    {
      MutexLock lock(s.mu);
      if (s.stream == st) s.stream = nullptr;
      unexpected = !s.killed && !stopping_.load();
      if (unexpected) {
        // As the real agent: reconnect at once, to the next resource server.
        s.server = (s.server + 1) % options_.resources.size();
        s.retry_at = clock_.Now() + std::chrono::milliseconds(50);
      }
    }
    if (unexpected) {
      const uint64_t n = broken_.fetch_add(1);
      if (n < 5) {
        std::fprintf(stderr, "compute-sim: heartbeat stream of %s ended: %d %s (reconnecting)\n",
                     table_.node_id(st->node()).c_str(), static_cast<int>(status.error_code()),
                     status.error_message().c_str());
      }
    }
    MutexLock lock(mu_);
    open_.fetch_sub(1);
    cv_.NotifyAll();
  }

  void Tick() {
    const Duration period =
        std::max<Duration>(std::chrono::milliseconds(1), options_.heartbeat_interval / 20);
    while (!stopping_.load()) {
      {
        MutexLock lock(mu_);
        (void)cv_.WaitFor(mu_, period, [&] { return stopping_.load(); });
      }
      if (stopping_.load()) return;
      const SteadyTime now = clock_.Now();
      if (options_.open_per_second > 0 && started_.load() < slots_.size()) {
        // The opening ramp: as many as are due since the start.
        if (ramp_start_ == SteadyTime{}) ramp_start_ = now;
        const double due =
            1 + std::chrono::duration<double>(now - ramp_start_).count() * options_.open_per_second;
        while (started_.load() < std::min<double>(due, static_cast<double>(slots_.size())) && OpenNext()) {
        }
      }
      const size_t started = started_.load();
      for (size_t i = 0; i < started && !stopping_.load(); ++i) {
        Slot& s = *slots_[i];
        bool open = false, push = false;
        {
          MutexLock lock(s.mu);
          if (s.killed) continue;
          if (s.stream == nullptr) {
            open = now >= s.retry_at;
          } else {
            push = now - s.last_sent >= options_.heartbeat_interval;
          }
        }
        if (open) Open(i);
        if (push) Push(i);
      }
    }
  }

  bool Drain(size_t i) { return table_.Drain(i); }  // the change listener pushes at once
  bool Touch(size_t i) { return table_.Touch(i); }

  int Kill(size_t i) {
    const int held = table_.Kill(i);
    CancelStream(*slots_[i], /*kill=*/true);
    return held;
  }

  // Cancels the slot's heartbeat stream, if one is open (and marks the node killed if `kill`).
  void CancelStream(Slot& s, bool kill) {
    Stream* st = nullptr;
    {
      MutexLock lock(s.mu);
      if (kill) s.killed = true;
      st = s.stream;
      if (st != nullptr && !st->ended) {
        ++st->ops;
      } else {
        st = nullptr;
      }
    }
    if (st != nullptr) {
      st->ctx.TryCancel();
      FinishOp(st);
    }
  }

  size_t home(size_t i) const {
    MutexLock lock(slots_[i]->mu);
    return slots_[i]->server;
  }

  StreamStats stream_stats() const {
    StreamStats s;
    s.opened = opened_.load();
    s.broken = broken_.load();
    s.heartbeats = heartbeats_.load();
    s.open = static_cast<size_t>(std::max<int64_t>(0, open_.load()));
    return s;
  }

  // True when every stream finished (the object may then be destroyed).
  bool Stop() {
    if (stopped_) return clean_;
    stopped_ = true;
    {
      MutexLock lock(mu_);
      stopping_.store(true);
      cv_.NotifyAll();
    }
    if (ticker_.joinable()) ticker_.join();
    for (auto& slot : slots_) CancelStream(*slot, /*kill=*/false);
    {
      MutexLock lock(mu_);
      clean_ = cv_.WaitFor(mu_, std::chrono::seconds(10), [&] { return open_.load() <= 0; });
    }
    if (!clean_)
      std::fprintf(stderr, "compute-sim: %lld heartbeat streams did not finish\n",
                   static_cast<long long>(open_.load()));
    if (server_) server_->Shutdown(std::chrono::seconds(1));
    return clean_;
  }

 private:
  const NodeSimulatorOptions options_;
  const net::TokenSigner signer_;
  Clock& clock_;
  SimNodeTable table_;
  std::string address_;
  std::unique_ptr<net::GrpcServer> server_;
  std::vector<std::vector<std::unique_ptr<cpb::Resource::Stub>>> stubs_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::thread ticker_;
  std::atomic<size_t> started_{0};  // nodes whose first stream was opened (ramp)
  SteadyTime ramp_start_{};         // ticker thread
  Random random_{0x5eed};           // OpenNext: the starting thread, then the ticker
  std::atomic<bool> stopping_{false};
  std::atomic<int64_t> open_{0};
  std::atomic<uint64_t> opened_{0};
  std::atomic<uint64_t> broken_{0};
  std::atomic<uint64_t> heartbeats_{0};
  bool stopped_ = false;  // owner's thread
  bool clean_ = true;
  Mutex mu_;
  CondVar cv_;
};

Result<std::unique_ptr<NodeSimulator>> NodeSimulator::Start(NodeSimulatorOptions options,
                                                            const net::TokenSigner& signer, Clock& clock) {
  if (options.resources.empty()) return InvalidArgument("node simulator: no resource servers");
  if (options.table.nodes < 1) return InvalidArgument("node simulator: at least one node");
  if (options.table.capacity.slots < 1) return InvalidArgument("node simulator: at least one slot per node");
  auto impl = std::make_unique<Impl>(std::move(options), signer, clock);
  CHORUS_RETURN_IF_ERROR(impl->Listen());
  impl->MakeStubs();
  impl->StartStreams();
  return std::unique_ptr<NodeSimulator>(new NodeSimulator(std::move(impl)));
}

NodeSimulator::NodeSimulator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NodeSimulator::~NodeSimulator() { Stop(); }

void NodeSimulator::Stop() {
  if (!impl_) return;
  // Streams that never finished still point at the simulator: leak it rather than free it
  // under them (the process is about to exit anyway).
  if (!impl_->Stop()) (void)impl_.release();
}

const std::string& NodeSimulator::address() const { return impl_->address(); }
SimNodeTable& NodeSimulator::table() { return impl_->table(); }
const SimNodeTable& NodeSimulator::table() const { return impl_->table(); }
size_t NodeSimulator::home(size_t i) const { return impl_->home(i); }
bool NodeSimulator::Drain(size_t i) { return impl_->Drain(i); }
bool NodeSimulator::Touch(size_t i) { return impl_->Touch(i); }
int NodeSimulator::Kill(size_t i) { return impl_->Kill(i); }
NodeSimulator::StreamStats NodeSimulator::stream_stats() const { return impl_->stream_stats(); }

}  // namespace chorus::bench
