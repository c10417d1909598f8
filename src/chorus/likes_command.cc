// `chorus likes verify`: the likes store's consistency check (docs/likes.md "Operations").
#include <filesystem>
#include <iostream>

#include "chorus/app.h"
#include "likes/rocksdb_store.h"

namespace chorus::app {

int RunLikesVerify(const VerifyRequest& request) {
  const std::filesystem::path path = std::filesystem::path(request.data_dir) / "likes";
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) {
    std::cerr << "chorus likes verify: no likes store at " << path.string() << "\n";
    return 2;
  }
  likes::RocksDbOptions options;
  options.path = path;
  // Report-only opens read-only, so it also runs beside a serving chorus (seeing what that
  // process has written so far); a repair needs the store to itself.
  options.read_only = !request.repair;
  auto store = likes::RocksDbLikeStore::Open(options);
  if (!store.ok()) {
    std::cerr << "chorus likes verify: " << store.status().message() << "\n";
    return 1;
  }
  auto report = (*store)->Verify(request.repair);
  if (!report.ok()) {
    std::cerr << "chorus likes verify: " << report.status().message() << "\n";
    return 1;
  }
  std::cout << "records: " << report->records << "\n"
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
