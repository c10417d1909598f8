// Fuzzes configuration loading: Config::Load over a schema with one key of every type, fed
// from each of its three input kinds, and ParseDuration.
//
// Every input is used four ways:
//   1. as `--set` overrides: each line "key=value" (no '=': the whole line is the key, the value
//      is empty) is one override; the first kMaxPairs lines are loaded one at a time and then
//      all together. Load never crashes or throws; an error is InvalidArgument and its message
//      names the key (when loading together: one of the keys). A success reads back from that
//      source ("flag").
//   2. as CHORUS_* environment variables: the same pairs with the key through EnvName(); the
//      error names the variable.
//   3. as a whole YAML document, written to one file in a per-process temporary directory (the
//      same path every run, removed after each) and loaded as the configuration file; an error
//      is InvalidArgument naming the file.
//   4. as a duration: ParseDuration fails only with InvalidArgument quoting the text; a
//      success is non-negative and FormatDuration renders it as text that parses back to
//      the same value (the header promises an exact rendering).
// After every successful Load, each key is read back with its typed getter (ints and doubles
// within their range, durations non-negative, tree JSON at most kMaxTreeJsonBytes) and Dump()
// runs.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/config.h"
#include "base/duration.h"
#include "fuzz_check.h"

namespace chorus {
namespace {

constexpr size_t kMaxPairs = 8;

// A bound on what one short (<= a few KiB) input may load as a kTree value. Without aliases a
// tree's JSON is within a small factor of its YAML; YAML aliases (`&a [x]` ... `[*a, *a]`) can
// expand a few hundred bytes into gigabytes, and a recursive alias (`&a [*a]`) forever. The
// bound is far above anything a real configuration needs and far below what an expansion
// produces.
constexpr size_t kMaxTreeJsonBytes = size_t{8} << 20;

// Nested sections ("http." with three keys) so the YAML walker recurses, plus one key of each
// type with the constraints the real schema uses (range, choices).
const ConfigSchema& Schema() {
  static const ConfigSchema* const kSchema = [] {
    auto* s = new ConfigSchema;
    s->String("node.name", "chorus", "Node name")
        .String("log.level", "info", "Log level", {"debug", "info", "warn", "error"})
        .Int("http.workers", 4, "Worker threads", 1, 64)
        .Bool("http.tls", false, "Serve TLS")
        .Duration("http.idle_timeout", "30s", "Idle connection timeout")
        .Double("live.hot_ratio", 0.5, "Ratio", 0.0, 1.0)
        .StringList("live.topics", {"news", "sport"}, "Topics")
        .Tree("likes.businesses", "[]", "Businesses");
    return s;
  }();
  return *kSchema;
}

// Reads every key back through its typed getter (which aborts on a missing key or a type
// mismatch) and renders the whole configuration.
void ReadBack(const Config& config) {
  for (const ConfigKey& key : Schema().keys()) {
    switch (key.type) {
      case ConfigType::kString:
        (void)config.GetString(key.name);
        break;
      case ConfigType::kInt: {
        const int64_t v = config.GetInt(key.name);
        FUZZ_CHECK((!key.min || static_cast<double>(v) >= *key.min) &&
                       (!key.max || static_cast<double>(v) <= *key.max),
                   key.name);
        break;
      }
      case ConfigType::kDouble: {
        const double v = config.GetDouble(key.name);
        FUZZ_CHECK((!key.min || v >= *key.min) && (!key.max || v <= *key.max), key.name);
        break;
      }
      case ConfigType::kBool:
        (void)config.GetBool(key.name);
        break;
      case ConfigType::kDuration:
        FUZZ_CHECK(config.GetDuration(key.name).count() >= 0, key.name);
        break;
      case ConfigType::kStringList:
        (void)config.GetStringList(key.name);
        break;
      case ConfigType::kTree:
        FUZZ_CHECK(config.GetTreeJson(key.name).size() <= kMaxTreeJsonBytes,
                   "a kTree value expanded past kMaxTreeJsonBytes");
        break;
    }
    (void)config.SourceOf(key.name);
  }
  (void)config.Dump();
}

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

void CheckError(const Status& st, std::string_view must_name) {
  FUZZ_CHECK(st.code() == StatusCode::kInvalidArgument, st.ToString());
  FUZZ_CHECK(Contains(st.message(), must_name), st.message());
}

std::vector<std::pair<std::string, std::string>> SplitPairs(std::string_view in) {
  std::vector<std::pair<std::string, std::string>> pairs;
  while (!in.empty() && pairs.size() < kMaxPairs) {
    size_t nl = in.find('\n');
    if (nl == std::string_view::npos) nl = in.size();
    const std::string_view line = in.substr(0, nl);
    in.remove_prefix(nl == in.size() ? nl : nl + 1);
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      pairs.emplace_back(std::string(line), std::string());
    } else {
      pairs.emplace_back(std::string(line.substr(0, eq)), std::string(line.substr(eq + 1)));
    }
  }
  return pairs;
}

void CheckOverrides(std::string_view in) {
  const auto pairs = SplitPairs(in);
  if (pairs.empty()) return;
  for (const auto& pair : pairs) {
    ConfigSources one;
    one.overrides = {pair};
    Result<Config> config = Config::Load(Schema(), one);
    if (!config.ok()) {
      CheckError(config.status(), pair.first);
      continue;
    }
    FUZZ_CHECK(config->SourceOf(pair.first) == "flag", pair.first);
    ReadBack(*config);
  }

  ConfigSources all;
  all.overrides = pairs;
  Result<Config> config = Config::Load(Schema(), all);
  if (config.ok()) {
    ReadBack(*config);
  } else {
    FUZZ_CHECK(config.status().code() == StatusCode::kInvalidArgument, config.status().ToString());
    bool named = false;
    for (const auto& pair : pairs) named = named || Contains(config.status().message(), pair.first);
    FUZZ_CHECK(named, config.status().message());
  }

  ConfigSources env;
  for (const auto& [key, value] : pairs) env.env.emplace_back(ConfigSchema::EnvName(key), value);
  config = Config::Load(Schema(), env);
  if (config.ok()) {
    ReadBack(*config);
  } else {
    FUZZ_CHECK(config.status().code() == StatusCode::kInvalidArgument, config.status().ToString());
    bool named = false;
    for (const auto& [name, value] : env.env) named = named || Contains(config.status().message(), name);
    FUZZ_CHECK(named, config.status().message());
  }
}

// The configuration file: one path per process (a directory named by mkdtemp once), created
// for each run and removed after it, so nothing is left behind between runs and at most one
// directory when a run crashes.
class ScratchFile {
 public:
  ScratchFile() {
    const char* tmp = std::getenv("TMPDIR");
    std::string dir_template =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/chorus-config-fuzzer-XXXXXX";
    FUZZ_CHECK(::mkdtemp(dir_template.data()) != nullptr, "mkdtemp failed");
    dir_ = dir_template;
    path_ = dir_ + "/chorus.yaml";
  }
  ~ScratchFile() { Remove(); }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  const std::string& path() const { return path_; }

  void Write(std::string_view content) const {
    FUZZ_CHECK(::mkdir(dir_.c_str(), 0700) == 0 || errno == EEXIST, dir_);
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    FUZZ_CHECK(f != nullptr, path_);
    FUZZ_CHECK(std::fwrite(content.data(), 1, content.size(), f) == content.size(), path_);
    FUZZ_CHECK(std::fclose(f) == 0, path_);
  }

  void Remove() const {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }

 private:
  std::string dir_;
  std::string path_;
};

void CheckFile(std::string_view in) {
  static const ScratchFile file;
  file.Write(in);
  ConfigSources sources;
  sources.file = file.path();
  Result<Config> config = Config::Load(Schema(), sources);
  file.Remove();
  if (!config.ok()) {
    CheckError(config.status(), file.path());
    return;
  }
  ReadBack(*config);
}

void CheckDuration(std::string_view in) {
  Result<Duration> d = ParseDuration(in);
  if (!d.ok()) {
    CheckError(d.status(), in);
    return;
  }
  FUZZ_CHECK(d->count() >= 0, in);
  const std::string text = FormatDuration(*d);
  Result<Duration> again = ParseDuration(text);
  FUZZ_CHECK(again.ok(), text);
  FUZZ_CHECK(*again == *d, text);
}

}  // namespace
}  // namespace chorus

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  chorus::CheckOverrides(in);
  chorus::CheckFile(in);
  chorus::CheckDuration(in);
  return 0;
}
