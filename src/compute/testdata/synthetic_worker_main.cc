// Test-only worker executable: the synthetic engine on stdin/stdout, for worker_process_test.cc
// (which finds it through $CHORUS_TEST_WORKER). The shipped binary is `chorus compute worker`.
//
//   synthetic_worker --cpu-ms X --latency-ms Y --max-concurrency N   (also --flag=value)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "compute/synthetic_worker.h"

namespace {

bool ParseDouble(const std::string& text, double& out) {
  char* end = nullptr;
  out = std::strtod(text.c_str(), &end);
  return !text.empty() && end != nullptr && *end == '\0' && out >= 0;
}

}  // namespace

int main(int argc, char** argv) {
  chorus::compute::SyntheticOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    if (const auto eq = arg.find('='); eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg.resize(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "synthetic_worker: %s needs a value\n", arg.c_str());
      return 2;
    }
    double number = 0;
    if (!ParseDouble(value, number)) {
      std::fprintf(stderr, "synthetic_worker: bad value for %s: %s\n", arg.c_str(), value.c_str());
      return 2;
    }
    if (arg == "--cpu-ms") {
      options.cpu_ms = number;
    } else if (arg == "--latency-ms") {
      options.latency_ms = number;
    } else if (arg == "--max-concurrency") {
      options.max_concurrency = static_cast<int>(number);
    } else {
      std::fprintf(stderr, "synthetic_worker: unknown flag %s\n", arg.c_str());
      return 2;
    }
  }
  return chorus::compute::RunSyntheticWorker(options);
}
