// `chorus likes verify` and `chorus likes migrate` (docs/likes.md "Operations", docs/scale-out.md).
#include <iostream>

#include "chorus/app.h"
#include "likes/engine.h"

namespace chorus::app {

int RunLikesMigrate(const Config& config) {
  if (Status s = likes::MigrateLikes(config); !s.ok()) {
    std::cerr << "chorus likes migrate: " << s.message() << "\n";
    return s.code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::cout << "schema of " << config.GetString("likes.mysql.database") << " on "
            << config.GetString("likes.mysql.host") << ":" << config.GetInt("likes.mysql.port") << " is current\n";
  return 0;
}

int RunLikesVerify(const Config& config, bool repair) {
  auto store = likes::OpenLikesStoreForVerify(config, repair);
  if (!store.ok()) {
    std::cerr << "chorus likes verify: " << store.status().message() << "\n";
    return store.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  auto report = (*store)->Verify(repair);
  if (!report.ok()) {
    std::cerr << "chorus likes verify: " << report.status().message() << "\n";
    return 1;
  }
  std::cout << "store: " << (*store)->name() << "\n"
            << "records: " << report->records << "\n"
            << "entities: " << report->entities << "\n"
            << "count differences: " << report->count_differences << "\n"
            << "received differences: " << report->received_differences << "\n"
            << "index differences: " << report->index_differences << "\n"
            << "log entries pending apply: " << report->pending_log << "\n";
  for (const std::string& e : report->examples) std::cout << "  " << e << "\n";
  if (report->differences() == 0) {
    std::cout << "consistent\n";
    return 0;
  }
  if (report->repaired) {
    std::cout << "repaired " << report->differences() << " differences\n";
    return 0;
  }
  std::cout << report->differences() << " differences (run with --repair to fix them)\n";
  return 1;
}

}  // namespace chorus::app
