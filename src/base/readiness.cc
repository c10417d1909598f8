#include "base/readiness.h"

namespace chorus {

void Readiness::Set(const std::string& name, bool ready, std::string detail) {
  MutexLock lock(mu_);
  for (auto& e : entries_) {
    if (e.name == name) {
      e.ready = ready;
      e.detail = std::move(detail);
      return;
    }
  }
  entries_.push_back({name, ready, std::move(detail)});
}

void Readiness::SetShuttingDown() {
  MutexLock lock(mu_);
  shutting_down_ = true;
}

bool Readiness::Ready() const {
  MutexLock lock(mu_);
  if (shutting_down_) return false;
  for (const auto& e : entries_) {
    if (!e.ready) return false;
  }
  return true;
}

std::vector<Readiness::Entry> Readiness::Snapshot() const {
  MutexLock lock(mu_);
  auto out = entries_;
  if (shutting_down_) out.push_back({"process", false, "shutting down"});
  return out;
}

}  // namespace chorus
