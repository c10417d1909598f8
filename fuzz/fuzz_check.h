// Invariant checks for fuzz targets.
//
// A fuzz target reports a finding by crashing: libFuzzer saves the input that crashed, and the
// replay binary (replay_main.cc) fails its ctest. FUZZ_CHECK is that crash, and unlike assert()
// it stays on in every build type (the dev preset defines NDEBUG). The message says which
// invariant broke; the input itself is what libFuzzer or the replay binary names.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace chorus::fuzz {

[[noreturn]] inline void FuzzCheckFailed(const char* file, int line, const char* condition,
                                         std::string_view detail) {
  std::fprintf(stderr, "%s:%d: fuzz invariant violated: %s\n", file, line, condition);
  if (!detail.empty()) {
    std::fprintf(stderr, "  detail: %.*s\n", static_cast<int>(detail.size()), detail.data());
  }
  std::fflush(stderr);
  std::abort();
}

}  // namespace chorus::fuzz

// FUZZ_CHECK(cond) or FUZZ_CHECK(cond, detail), `detail` anything convertible to string_view
// (typically the Status message or the value that was wrong).
#define FUZZ_CHECK(cond, ...)                                                                      \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      ::chorus::fuzz::FuzzCheckFailed(__FILE__, __LINE__, #cond, ::std::string_view(__VA_ARGS__)); \
    }                                                                                              \
  } while (0)
