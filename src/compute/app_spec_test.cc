#include "compute/app_spec.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace chorus::compute {
namespace {

constexpr char kFullExample[] = R"(
name: ocr-detect
resources: {cpu: 500m, memory: 256Mi, gpu: 2, card_types: [T4, A10]}
replicas: 4            # OR min_replicas + max_replicas
max_concurrency: 4
engine: {type: synthetic, cpu_ms: 5, latency_ms: 20}
model: ocr/detect@v3
pools: [cpu-large]
clusters: [east, west]
)";

// A valid minimal spec with top-level entries replaced, added (value non-empty) or removed
// (value empty), keeping the order name, resources, replicas, engine, then additions.
std::string Doc(const std::vector<std::pair<std::string, std::string>>& changes) {
  std::vector<std::pair<std::string, std::string>> entries = {
      {"name", "app1"},
      {"resources", "{cpu: 1, memory: 1Gi}"},
      {"replicas", "2"},
      {"engine", "{type: synthetic}"},
  };
  for (const auto& [key, value] : changes) {
    bool found = false;
    for (auto it = entries.begin(); it != entries.end(); ++it) {
      if (it->first == key) {
        found = true;
        if (value.empty()) {
          entries.erase(it);
        } else {
          it->second = value;
        }
        break;
      }
    }
    if (!found) entries.emplace_back(key, value);
  }
  std::string out;
  for (const auto& [key, value] : entries) out += key + ": " + value + "\n";
  return out;
}

TEST(AppSpecTest, FullExampleParsesEveryField) {
  Result<AppSpec> spec = ParseAppSpec(kFullExample);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->name, "ocr-detect");
  EXPECT_EQ(spec->resources.cpu_millis, 500);
  EXPECT_EQ(spec->resources.memory_mb, 256);
  EXPECT_EQ(spec->resources.gpus, 2);
  EXPECT_EQ(spec->resources.card_types, (std::vector<std::string>{"T4", "A10"}));
  EXPECT_EQ(spec->replicas, 4);
  EXPECT_EQ(spec->min_replicas, 0);
  EXPECT_EQ(spec->max_replicas, 0);
  EXPECT_FALSE(spec->autoscaled());
  EXPECT_EQ(spec->target_utilization, 0);
  EXPECT_EQ(spec->max_concurrency, 4);
  EXPECT_EQ(spec->engine.engine, "synthetic");
  EXPECT_EQ(spec->engine.cpu_ms, 5);
  EXPECT_EQ(spec->engine.latency_ms, 20);
  EXPECT_TRUE(spec->engine.command.empty());
  EXPECT_EQ(spec->model, "ocr/detect@v3");
  EXPECT_EQ(spec->pools, (std::vector<std::string>{"cpu-large"}));
  EXPECT_EQ(spec->clusters, (std::vector<std::string>{"east", "west"}));
  EXPECT_TRUE(ValidateAppSpec(*spec).ok());
}

TEST(AppSpecTest, BlockStyleExecEngineAndDefaults) {
  Result<AppSpec> spec = ParseAppSpec(R"(
name: worker_1.v2
resources:
  cpu: 2
  memory: 512
engine:
  type: exec
  command: /usr/local/bin/worker
  args:
    - --threads
    - "4"
    - ""
replicas: 1
)");
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->resources.cpu_millis, 2000);
  EXPECT_EQ(spec->resources.memory_mb, 512);
  EXPECT_EQ(spec->resources.gpus, 0);
  EXPECT_TRUE(spec->resources.card_types.empty());
  EXPECT_EQ(spec->max_concurrency, 1);
  EXPECT_EQ(spec->engine.engine, "exec");
  EXPECT_EQ(spec->engine.command, "/usr/local/bin/worker");
  EXPECT_EQ(spec->engine.args, (std::vector<std::string>{"--threads", "4", ""}));
  EXPECT_TRUE(spec->model.empty());
  EXPECT_TRUE(spec->pools.empty());
  EXPECT_TRUE(spec->clusters.empty());
}

TEST(AppSpecTest, MinMaxForm) {
  Result<AppSpec> spec = ParseAppSpec(Doc({{"replicas", ""}, {"min_replicas", "0"}, {"max_replicas", "10"}}));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_TRUE(spec->autoscaled());
  EXPECT_EQ(spec->replicas, 0);
  EXPECT_EQ(spec->min_replicas, 0);
  EXPECT_EQ(spec->max_replicas, 10);
  EXPECT_DOUBLE_EQ(spec->target_utilization, 0.7);  // default

  spec = ParseAppSpec(
      Doc({{"replicas", ""}, {"min_replicas", "3"}, {"max_replicas", "3"}, {"target_utilization", "0.5"}}));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->min_replicas, 3);
  EXPECT_EQ(spec->max_replicas, 3);
  EXPECT_DOUBLE_EQ(spec->target_utilization, 0.5);

  spec = ParseAppSpec(
      Doc({{"replicas", ""}, {"min_replicas", "1"}, {"max_replicas", "2"}, {"target_utilization", "1"}}));
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_DOUBLE_EQ(spec->target_utilization, 1.0);
}

TEST(AppSpecTest, CpuUnits) {
  const std::vector<std::pair<std::string, int64_t>> good = {
      {"500m", 500},  {"2", 2000}, {"0.5", 500}, {"1.5", 1500},   {"1.001", 1001},
      {"0.250", 250}, {"1m", 1},   {"0", 0},     {"0.5000", 500}, {"1000000", 1'000'000'000},
  };
  for (const auto& [text, millis] : good) {
    Result<int64_t> r = ParseCpuMillis(text);
    ASSERT_TRUE(r.ok()) << text << ": " << r.status().ToString();
    EXPECT_EQ(*r, millis) << text;
  }
  for (const char* text : {"", "abc", "m", "-1", "+1", "1.", ".5", "0.0005", "1e3", "1 ", " 1", "500M", "5mm",
                           "1.5m", "0x10", "99999999999999999999", "9223372036854775807"}) {
    Result<int64_t> r = ParseCpuMillis(text);
    EXPECT_FALSE(r.ok()) << "accepted " << text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << text;
  }
}

TEST(AppSpecTest, MemoryUnits) {
  const std::vector<std::pair<std::string, int64_t>> good = {
      {"256Mi", 256},
      {"1Gi", 1024},
      {"2Ti", 2 * 1024 * 1024},
      {"512", 512},
      {"1M", 1},                // 10^6 bytes rounds up to 1 MiB
      {"1048576M", 1'000'000},  // 2^20 * 10^6 bytes is exactly 10^6 MiB: no rounding
      {"2G", 1908},             // 2*10^9 bytes = 1907.35 MiB, rounded up
      {"0", 0},
  };
  for (const auto& [text, mb] : good) {
    Result<int64_t> r = ParseMemoryMb(text);
    ASSERT_TRUE(r.ok()) << text << ": " << r.status().ToString();
    EXPECT_EQ(*r, mb) << text;
  }
  for (const char* text : {"", "Mi", "abc", "1.5Gi", "-1Gi", "1Ki", "1K", "1mi", "1gi", "1GB", "1 Gi", "1Gi ",
                           "99999999999999999999", "9999999999999Ti"}) {
    Result<int64_t> r = ParseMemoryMb(text);
    EXPECT_FALSE(r.ok()) << "accepted " << text;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << text;
  }
}

TEST(AppSpecTest, NameRules) {
  EXPECT_TRUE(IsValidName("a"));
  EXPECT_TRUE(IsValidName("ocr-detect_v1.2"));
  EXPECT_TRUE(IsValidName(std::string(64, 'x')));
  EXPECT_FALSE(IsValidName(""));
  EXPECT_FALSE(IsValidName(std::string(65, 'x')));
  EXPECT_FALSE(IsValidName("a b"));
  EXPECT_FALSE(IsValidName("a/b"));
  EXPECT_FALSE(IsValidName("caf\xc3\xa9"));
}

struct BadCase {
  std::string yaml;
  std::string field;  // the message must start with "<field>: "
  std::string also;   // and contain this
};

void ExpectRejected(const BadCase& c) {
  Result<AppSpec> spec = ParseAppSpec(c.yaml);
  ASSERT_FALSE(spec.ok()) << "accepted:\n" << c.yaml;
  EXPECT_EQ(spec.status().code(), StatusCode::kInvalidArgument);
  const std::string& m = spec.status().message();
  EXPECT_EQ(m.rfind(c.field + ": ", 0), 0u) << "message '" << m << "' does not start with " << c.field;
  EXPECT_NE(m.find(c.also), std::string::npos) << "message '" << m << "' lacks '" << c.also << "'";
}

TEST(AppSpecTest, RejectsEachRuleNamingTheField) {
  const std::vector<BadCase> cases = {
      // structure
      {Doc({{"replica", "3"}}), "replica", "unknown key"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, gpus: 1}"}}), "resources.gpus", "unknown key"},
      {Doc({{"engine", "{type: synthetic, cpu: 5}"}}), "engine.cpu", "unknown key"},
      {Doc({}) + "replicas: 3\n", "replicas", "given twice"},
      {Doc({{"resources", "[1, 2]"}}), "resources", "expected a mapping"},
      {Doc({{"engine", "synthetic"}}), "engine", "expected a mapping"},
      // name
      {Doc({{"name", ""}}), "name", "required"},
      {Doc({{"name", "\"bad name\""}}), "name", "not a valid name"},
      {Doc({{"name", std::string(65, 'n')}}), "name", "not a valid name"},
      {Doc({{"name", "[a]"}}), "name", "expected a string"},
      // resources
      {Doc({{"resources", ""}}), "resources", "required"},
      {Doc({{"resources", "{memory: 1Gi}"}}), "resources.cpu", "required"},
      {Doc({{"resources", "{cpu: abc, memory: 1Gi}"}}), "resources.cpu", "\"abc\" is not a CPU amount"},
      {Doc({{"resources", "{cpu: 0, memory: 1Gi}"}}), "resources.cpu", "more than 0"},
      {Doc({{"resources", "{cpu: 0m, memory: 1Gi}"}}), "resources.cpu", "more than 0"},
      {Doc({{"resources", "{cpu: -1, memory: 1Gi}"}}), "resources.cpu", "not a CPU amount"},
      {Doc({{"resources", "{cpu: 1000001, memory: 1Gi}"}}), "resources.cpu", "limit of 1000000 cores"},
      {Doc({{"resources", "{cpu: 1}"}}), "resources.memory", "required"},
      {Doc({{"resources", "{cpu: 1, memory: 1GB}"}}), "resources.memory", "not a memory amount"},
      {Doc({{"resources", "{cpu: 1, memory: 0}"}}), "resources.memory", "more than 0"},
      {Doc({{"resources", "{cpu: 1, memory: 65Ti}"}}), "resources.memory", "limit of 64Ti"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, gpu: 65}"}}), "resources.gpu", "out of range 0..64"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, gpu: -1}"}}), "resources.gpu", "out of range 0..64"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, gpu: 1.5}"}}), "resources.gpu", "not a whole number"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, card_types: [T4]}"}}), "resources.card_types", "gpu"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, gpu: 1, card_types: [\"T 4\"]}"}}), "resources.card_types",
       "not a valid name"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, gpu: 1, card_types: [T4, T4]}"}}), "resources.card_types",
       "listed twice"},
      {Doc({{"resources", "{cpu: 1, memory: 1Gi, gpu: 1, card_types: T4}"}}), "resources.card_types",
       "expected a list"},
      // replicas
      {Doc({{"replicas", ""}}), "replicas", "required"},
      {Doc({{"replicas", "0"}}), "replicas", "out of range 1..100000"},
      {Doc({{"replicas", "100001"}}), "replicas", "out of range 1..100000"},
      {Doc({{"replicas", "x"}}), "replicas", "not a whole number"},
      {Doc({{"replicas", "\"x\""}}), "replicas", "quoted string"},
      {Doc({{"replicas", "\"4\""}}), "replicas", "quoted string"},
      {Doc({{"replicas", "1.5"}}), "replicas", "not a whole number"},
      {Doc({{"replicas", "99999999999"}}), "replicas", "out of range"},
      {Doc({{"replicas", "[1]"}}), "replicas", "expected a whole number"},
      {Doc({{"min_replicas", "1"}, {"max_replicas", "2"}}), "replicas", "not both"},
      {Doc({{"target_utilization", "0.5"}}), "target_utilization", "only allowed with"},
      {Doc({{"replicas", ""}, {"target_utilization", "0.5"}}), "target_utilization", "only allowed with"},
      {Doc({{"replicas", ""}, {"max_replicas", "2"}}), "min_replicas", "required"},
      {Doc({{"replicas", ""}, {"min_replicas", "2"}}), "max_replicas", "required"},
      {Doc({{"replicas", ""}, {"min_replicas", "3"}, {"max_replicas", "2"}}), "min_replicas",
       "out of range 0..2"},
      {Doc({{"replicas", ""}, {"min_replicas", "-1"}, {"max_replicas", "2"}}), "min_replicas",
       "out of range"},
      {Doc({{"replicas", ""}, {"min_replicas", "0"}, {"max_replicas", "0"}}), "max_replicas",
       "out of range 1..100000"},
      {Doc({{"replicas", ""}, {"min_replicas", "0"}, {"max_replicas", "100001"}}), "max_replicas",
       "out of range 1..100000"},
      {Doc({{"replicas", ""}, {"min_replicas", "0"}, {"max_replicas", "5"}, {"target_utilization", "0"}}),
       "target_utilization", "not in (0, 1]"},
      {Doc({{"replicas", ""}, {"min_replicas", "0"}, {"max_replicas", "5"}, {"target_utilization", "1.01"}}),
       "target_utilization", "not in (0, 1]"},
      {Doc({{"replicas", ""}, {"min_replicas", "0"}, {"max_replicas", "5"}, {"target_utilization", ".nan"}}),
       "target_utilization", "not a number"},
      {Doc({{"replicas", ""}, {"min_replicas", "0"}, {"max_replicas", "5"}, {"target_utilization", "high"}}),
       "target_utilization", "not a number"},
      // max_concurrency
      {Doc({{"max_concurrency", "0"}}), "max_concurrency", "out of range 1..10000"},
      {Doc({{"max_concurrency", "10001"}}), "max_concurrency", "out of range 1..10000"},
      {Doc({{"max_concurrency", "many"}}), "max_concurrency", "not a whole number"},
      // engine
      {Doc({{"engine", ""}}), "engine", "required"},
      {Doc({{"engine", "{cpu_ms: 1}"}}), "engine.type", "required"},
      {Doc({{"engine", "{type: docker}"}}), "engine.type", "not an engine"},
      {Doc({{"engine", "{type: exec}"}}), "engine.command", "required"},
      {Doc({{"engine", "{type: exec, command: bin/worker}"}}), "engine.command", "absolute path"},
      {Doc({{"engine", "{type: exec, command: /bin/w, cpu_ms: 5}"}}), "engine.cpu_ms", "not allowed"},
      {Doc({{"engine", "{type: exec, command: /bin/w, latency_ms: 5}"}}), "engine.latency_ms", "not allowed"},
      {Doc({{"engine", "{type: exec, command: /bin/w, args: x}"}}), "engine.args", "expected a list"},
      {Doc({{"engine", "{type: exec, command: /bin/w, args: [a, [b]]}"}}), "engine.args[1]",
       "expected a string"},
      {Doc({{"engine", "{type: synthetic, command: /bin/w}"}}), "engine.command", "not allowed"},
      {Doc({{"engine", "{type: synthetic, args: [a]}"}}), "engine.args", "not allowed"},
      {Doc({{"engine", "{type: synthetic, cpu_ms: -1}"}}), "engine.cpu_ms", "out of range 0..600000"},
      {Doc({{"engine", "{type: synthetic, latency_ms: 600001}"}}), "engine.latency_ms",
       "out of range 0..600000"},
      {Doc({{"engine", "{type: synthetic, latency_ms: \"5\"}"}}), "engine.latency_ms", "quoted string"},
      {Doc({{"engine", "{type: synthetic, cpu_ms: .inf}"}}), "engine.cpu_ms", "not a number"},
      // model
      {Doc({{"model", std::string(257, 'm')}}), "model", "longer than 256 bytes"},
      {Doc({{"model", "\"a\\tb\""}}), "model", "control characters"},
      {Doc({{"model", "\"a\\x85b\""}}), "model", "control characters"},  // U+0085 (C1)
      {Doc({{"model", "{a: b}"}}), "model", "expected a string"},
      // pools / clusters
      {Doc({{"pools", "[ok, \"not ok\"]"}}), "pools", "not a valid name"},
      {Doc({{"pools", "[a, a]"}}), "pools", "listed twice"},
      {Doc({{"pools", "a"}}), "pools", "expected a list"},
      {Doc({{"clusters", "[east, \"\"]"}}), "clusters", "not a valid name"},
      {Doc({{"clusters", "[east, east]"}}), "clusters", "listed twice"},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.yaml);
    ExpectRejected(c);
  }
}

TEST(AppSpecTest, AcceptsBoundaryValues) {
  for (const std::string& yaml : {
           Doc({{"resources", "{cpu: 1m, memory: 1}"}}),
           Doc({{"resources", "{cpu: 1000000, memory: 64Ti, gpu: 64, card_types: [T4]}"}}),
           Doc({{"replicas", "100000"}, {"max_concurrency", "10000"}}),
           Doc({{"engine", "{type: synthetic, cpu_ms: 0, latency_ms: 600000}"}}),
           Doc({{"engine", "{type: exec, command: /w, args: []}"}}),
           Doc({{"model", std::string(256, 'm')}, {"pools", "[]"}, {"clusters", "[a, b]"}}),
           Doc({{"model", "\"caf\xc3\xa9 \xe6\xa8\xa1\xe5\x9e\x8b\""}}),
       }) {
    Result<AppSpec> spec = ParseAppSpec(yaml);
    EXPECT_TRUE(spec.ok()) << yaml << "\n" << spec.status().ToString();
  }
}

TEST(AppSpecTest, DocumentLevelErrors) {
  Result<AppSpec> r = ParseAppSpec("");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "empty app spec");
  r = ParseAppSpec("# only a comment\n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "empty app spec");

  r = ParseAppSpec("name: a\nresources: {cpu: 1, memory: [1,\nreplicas: 1\n");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("YAML syntax error at line"), std::string::npos)
      << r.status().message();

  // The error is on line 3 (the bad indentation); yaml-cpp lines are 0-based, ours 1-based.
  r = ParseAppSpec("name: a\nreplicas: 1\n  engine: x\n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("line 3"), std::string::npos) << r.status().message();

  r = ParseAppSpec("- a\n- b\n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("mapping"), std::string::npos) << r.status().message();

  r = ParseAppSpec(Doc({}) + "---\n" + Doc({}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("2 YAML documents"), std::string::npos) << r.status().message();

  r = ParseAppSpec(std::string(kMaxAppSpecBytes + 1, '#'));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("larger than"), std::string::npos);

  // Deep nesting is refused by yaml-cpp, not a crash.
  r = ParseAppSpec("name: " + std::string(100000, '[') + std::string(100000, ']') + "\n");
  EXPECT_FALSE(r.ok());
}

TEST(AppSpecTest, AliasesCannotInflateStrings) {
  // One 4 KiB-plus scalar repeated through an alias is refused per entry before it is copied.
  std::string yaml =
      Doc({{"engine", "{type: exec, command: /w, args: [&a " + std::string(5000, 'x') + ", *a]}"}});
  Result<AppSpec> r = ParseAppSpec(yaml);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().rfind("engine.args[0]: longer than 4096 bytes", 0), 0u)
      << r.status().message();

  std::string many = "[&a x";
  for (size_t i = 0; i < kMaxArgs; ++i) many += ", *a";
  many += "]";
  r = ParseAppSpec(Doc({{"engine", "{type: exec, command: /w, args: " + many + "}"}}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().rfind("engine.args: more than 256 entries", 0), 0u) << r.status().message();
}

TEST(AppSpecTest, ValidateCatchesSpecsBuiltInCode) {
  AppSpec spec;
  spec.name = "a";
  spec.resources.cpu_millis = 100;
  spec.resources.memory_mb = 64;
  spec.replicas = 1;
  spec.engine.engine = "synthetic";
  EXPECT_TRUE(ValidateAppSpec(spec).ok());

  AppSpec both = spec;
  both.max_replicas = 3;
  Status s = ValidateAppSpec(both);
  EXPECT_EQ(s.message().rfind("replicas: ", 0), 0u) << s.message();

  AppSpec none = spec;
  none.replicas = 0;
  s = ValidateAppSpec(none);
  EXPECT_EQ(s.message().rfind("replicas: required", 0), 0u) << s.message();

  AppSpec autoscaled = none;
  autoscaled.max_replicas = 4;
  s = ValidateAppSpec(autoscaled);  // target_utilization left at 0
  EXPECT_EQ(s.message().rfind("target_utilization: ", 0), 0u) << s.message();
  autoscaled.target_utilization = 0.7;
  EXPECT_TRUE(ValidateAppSpec(autoscaled).ok());

  AppSpec exec = spec;
  exec.engine.engine = "exec";
  exec.engine.command = "/bin/w";
  exec.engine.args = {std::string("a\0b", 3)};
  s = ValidateAppSpec(exec);
  EXPECT_EQ(s.message().rfind("engine.args[0]: ", 0), 0u) << s.message();
}

}  // namespace
}  // namespace chorus::compute

namespace chorus::compute {
namespace {

constexpr const char* kModeration = R"(
name: moderation
replicas: 1
resources: {cpu: 100m, memory: 64Mi}
engine: {type: moderation, options: {lookalikes: "true", max_bytes: 4096}}
model: /srv/models/words.txt
)";

TEST(AppSpecBuiltinEnginesTest, BuiltinEngineWithOptions) {
  Result<AppSpec> spec = ParseAppSpec(kModeration);
  ASSERT_TRUE(spec.ok()) << spec.status().ToString();
  EXPECT_EQ(spec->engine.engine, "moderation");
  EXPECT_EQ(spec->engine.options, (std::map<std::string, std::string>{{"lookalikes", "true"}, {"max_bytes", "4096"}}));
  EXPECT_EQ(spec->model, "/srv/models/words.txt");
  for (const char* engine : {"ocr", "ocr-detect", "ocr-recognize"}) {
    EXPECT_TRUE(ParseAppSpec(std::string("name: a\nreplicas: 1\nresources: {cpu: 1, memory: 1Gi}\nengine: {type: ") +
                             engine + "}\n")
                    .ok())
        << engine;
  }
}

TEST(AppSpecBuiltinEnginesTest, OptionsAreCheckedAndOnlyForBuiltinEngines) {
  auto error = [](const std::string& engine_line) {
    return ParseAppSpec("name: a\nreplicas: 1\nresources: {cpu: 1, memory: 1Gi}\n" + engine_line + "\n").status();
  };
  Status st = error("engine: {type: synthetic, options: {a: b}}");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("engine.options"), std::string::npos) << st.message();
  st = error("engine: {type: moderation, options: {Bad-Key: x}}");
  EXPECT_NE(st.message().find("not an option name"), std::string::npos) << st.message();
  st = error("engine: {type: moderation, options: [a, b]}");
  EXPECT_NE(st.message().find("expected a mapping"), std::string::npos) << st.message();
  st = error("engine: {type: ocr, command: /bin/x}");
  EXPECT_NE(st.message().find("engine.command"), std::string::npos) << st.message();
  st = error("engine: {type: tensorflow}");
  EXPECT_NE(st.message().find("ocr-detect"), std::string::npos) << "names the engines: " << st.message();
}

}  // namespace
}  // namespace chorus::compute
