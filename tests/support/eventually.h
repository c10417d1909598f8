// Waiting for a condition in tests, without asserting how long it took.
#pragma once
#include <chrono>
#include <thread>

namespace chorus::testing {

// Generous by default: the machine may be busy compiling and ASan builds are slow. Returns as soon
// as `pred` holds; false only when `deadline` passed first.
template <typename Pred>
bool Eventually(Pred&& pred, std::chrono::steady_clock::duration deadline = std::chrono::seconds(30)) {
  const auto until = std::chrono::steady_clock::now() + deadline;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace chorus::testing
