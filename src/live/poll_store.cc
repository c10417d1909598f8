#include "live/poll_store.h"

#include <algorithm>
#include <unordered_map>

namespace chorus::live {

PollResult SelectForPoll(std::vector<StoredMessage> candidates, const PollQuery& query) {
  PollResult result;
  result.newest = query.since;
  for (const StoredMessage& m : candidates) result.newest = std::max(result.newest, m.created_at);

  // Gain messages: only the newest value per key is a candidate. Decide first, move after: the
  // map's keys point into the candidates' strings.
  std::unordered_map<std::string_view, size_t> newest_gain;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const StoredMessage& m = candidates[i];
    if (m.gain_key.empty()) continue;
    auto [it, inserted] = newest_gain.try_emplace(m.gain_key, i);
    const StoredMessage& prev = candidates[it->second];
    if (!inserted && (m.created_at > prev.created_at || (m.created_at == prev.created_at && m.id > prev.id))) {
      it->second = i;
    }
  }
  if (!newest_gain.empty()) {
    std::vector<bool> keep(candidates.size(), true);
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (!candidates[i].gain_key.empty()) keep[i] = newest_gain.at(candidates[i].gain_key) == i;
    }
    std::vector<StoredMessage> kept;
    kept.reserve(candidates.size());
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (keep[i]) kept.push_back(std::move(candidates[i]));
    }
    candidates = std::move(kept);
  }
  result.candidates = candidates.size();

  auto by_time = [](const StoredMessage& a, const StoredMessage& b) {
    return a.created_at != b.created_at ? a.created_at < b.created_at : a.id < b.id;
  };
  if (candidates.size() > query.limit) {
    auto by_priority = [&](const StoredMessage& a, const StoredMessage& b) {
      return a.priority != b.priority ? a.priority > b.priority : by_time(a, b);
    };
    std::partial_sort(candidates.begin(), candidates.begin() + static_cast<ptrdiff_t>(query.limit),
                      candidates.end(), by_priority);
    candidates.resize(query.limit);
  }
  std::sort(candidates.begin(), candidates.end(), by_time);
  result.messages = std::move(candidates);
  return result;
}

}  // namespace chorus::live
