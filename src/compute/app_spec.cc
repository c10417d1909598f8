#include "compute/app_spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <exception>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>
#include <utility>

#include "base/text.h"

namespace chorus::compute {

bool IsBuiltinEngine(std::string_view engine) {
  return std::find(std::begin(kBuiltinEngines), std::end(kBuiltinEngines), engine) != std::end(kBuiltinEngines);
}

namespace {

constexpr const char* kEngineList = "use exec, synthetic, ocr, ocr-detect, ocr-recognize or moderation";

std::string QuoteImpl(std::string_view s) {
  constexpr size_t kMaxShown = 64;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxShown) out += "...";
  out += '"';
  return out;
}

std::string FormatNumber(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", v);
  return buf;
}

Status FieldError(std::string_view field, std::string_view what) {
  std::string m(field);
  m += ": ";
  m += what;
  return InvalidArgument(std::move(m));
}

std::string Range(int64_t lo, int64_t hi) { return std::to_string(lo) + ".." + std::to_string(hi); }

Status CheckRange(std::string_view field, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) return FieldError(field, std::to_string(v) + " is out of range " + Range(lo, hi));
  return Status::Ok();
}

// Names in a list must be valid and distinct.
Status CheckNameList(std::string_view field, const std::vector<std::string>& names) {
  if (names.size() > kMaxNameListEntries) {
    return FieldError(field, "more than " + std::to_string(kMaxNameListEntries) + " entries");
  }
  std::set<std::string_view> seen;
  for (const std::string& n : names) {
    if (!IsValidName(n)) {
      return FieldError(field, QuoteForError(n) + " is not a valid name (1-64 of A-Z a-z 0-9 _ . -)");
    }
    if (!seen.insert(n).second) return FieldError(field, QuoteForError(n) + " is listed twice");
  }
  return Status::Ok();
}

// Model names travel to workers in an environment variable and show up in status output, so
// they must be printable UTF-8: no C0 or C1 control characters, no DEL.
bool IsPrintableUtf8(std::string_view s) {
  if (!IsValidUtf8(s)) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c == 0xC2 && i + 1 < s.size() && static_cast<unsigned char>(s[i + 1]) < 0xA0) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// YAML access. Every helper names the field it reads in its errors. Sizes are checked before a
// scalar is copied, so aliases that repeat one large scalar many times cannot blow up memory.

std::string Describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return QuoteForError(n.Scalar());
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

std::string Join(const std::string& prefix, std::string_view key) {
  return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
}

using Fields = std::map<std::string, YAML::Node, std::less<>>;

// The entries of mapping `node` (at `path`, "" for the document), refusing keys outside
// `allowed` and keys given twice.
Result<Fields> ReadFields(const YAML::Node& node, const std::string& path,
                          std::initializer_list<std::string_view> allowed) {
  if (!node.IsMap()) {
    if (path.empty())
      return InvalidArgument("app spec: expected a mapping at the top level, got " + Describe(node));
    return FieldError(path, "expected a mapping, got " + Describe(node));
  }
  Fields fields;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) {
      return FieldError(path.empty() ? "app spec" : path,
                        "keys must be plain strings, got " + Describe(kv.first));
    }
    const std::string& key = kv.first.Scalar();
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      std::string expected;
      for (std::string_view a : allowed) expected += (expected.empty() ? "" : ", ") + std::string(a);
      return FieldError(Join(path, IsValidName(key) ? key : QuoteForError(key)),
                        "unknown key (expected one of " + expected + ")");
    }
    if (!fields.emplace(key, kv.second).second) return FieldError(Join(path, key), "given twice");
  }
  return fields;
}

const YAML::Node* Find(const Fields& fields, std::string_view key) {
  auto it = fields.find(key);
  return it == fields.end() ? nullptr : &it->second;
}

Result<std::string> ReadString(const YAML::Node& n, std::string_view field, size_t max_bytes) {
  if (!n.IsScalar()) return FieldError(field, "expected a string, got " + Describe(n));
  if (n.Scalar().size() > max_bytes) {
    return FieldError(field, "longer than " + std::to_string(max_bytes) + " bytes");
  }
  return n.Scalar();
}

// Numbers must be plain scalars: a quoted "4" is a string, and the spec says so.
Result<std::string_view> NumberText(const YAML::Node& n, std::string_view field, std::string_view kind) {
  if (!n.IsScalar()) return FieldError(field, "expected " + std::string(kind) + ", got " + Describe(n));
  if (n.Tag() == "!") {
    return FieldError(field, QuoteForError(n.Scalar()) + " is a quoted string; expected " + std::string(kind));
  }
  return std::string_view(n.Scalar());
}

Result<int32_t> ReadInt32(const YAML::Node& n, std::string_view field) {
  CHORUS_ASSIGN_OR_RETURN(std::string_view text, NumberText(n, field, "a whole number"));
  int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec == std::errc::result_out_of_range) return FieldError(field, QuoteForError(text) + " is out of range");
  if (ec != std::errc() || p != text.data() + text.size()) {
    return FieldError(field, QuoteForError(text) + " is not a whole number");
  }
  if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max()) {
    return FieldError(field, QuoteForError(text) + " is out of range");
  }
  return static_cast<int32_t>(v);
}

Result<double> ReadDouble(const YAML::Node& n, std::string_view field) {
  CHORUS_ASSIGN_OR_RETURN(std::string_view text, NumberText(n, field, "a number"));
  // from_chars also takes "inf", "nan" and hex; a spec number is decimal.
  const bool decimal = !text.empty() && text.find_first_not_of("0123456789.eE+-") == std::string_view::npos;
  double v = 0;
  const char* begin = text.data();
  if (!text.empty() && text.front() == '+') ++begin;  // YAML allows a leading +, from_chars does not
  auto [p, ec] = std::from_chars(begin, text.data() + text.size(), v);
  if (!decimal || ec != std::errc() || p != text.data() + text.size() || !std::isfinite(v)) {
    return FieldError(field, QuoteForError(text) + " is not a number");
  }
  return v;
}

Result<std::vector<std::string>> ReadList(const YAML::Node& n, std::string_view field, size_t max_entries,
                                          size_t max_bytes) {
  if (!n.IsSequence()) return FieldError(field, "expected a list, got " + Describe(n));
  if (n.size() > max_entries)
    return FieldError(field, "more than " + std::to_string(max_entries) + " entries");
  std::vector<std::string> out;
  out.reserve(n.size());
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string item_field = std::string(field) + "[" + std::to_string(i) + "]";
    CHORUS_ASSIGN_OR_RETURN(std::string s, ReadString(n[i], item_field, max_bytes));
    out.push_back(std::move(s));
  }
  return out;
}

// Name lists: entries longer than a name can be are refused before being copied; the rest is
// checked by ValidateAppSpec.
Result<std::vector<std::string>> ReadNameList(const YAML::Node& n, std::string_view field) {
  return ReadList(n, field, kMaxNameListEntries, 64);
}

Status ParseResources(const YAML::Node& node, ResourceRequest& out) {
  CHORUS_ASSIGN_OR_RETURN(Fields f, ReadFields(node, "resources", {"cpu", "memory", "gpu", "card_types"}));
  const YAML::Node* cpu = Find(f, "cpu");
  if (cpu == nullptr) return FieldError("resources.cpu", "required (e.g. 500m or 0.5)");
  CHORUS_ASSIGN_OR_RETURN(std::string cpu_text, ReadString(*cpu, "resources.cpu", 64));
  Result<int64_t> millis = ParseCpuMillis(cpu_text);
  if (!millis.ok()) return millis.status().WithContext("resources.cpu");
  out.cpu_millis = *millis;

  const YAML::Node* memory = Find(f, "memory");
  if (memory == nullptr) return FieldError("resources.memory", "required (e.g. 256Mi or 1Gi)");
  CHORUS_ASSIGN_OR_RETURN(std::string memory_text, ReadString(*memory, "resources.memory", 64));
  Result<int64_t> mb = ParseMemoryMb(memory_text);
  if (!mb.ok()) return mb.status().WithContext("resources.memory");
  out.memory_mb = *mb;

  if (const YAML::Node* gpu = Find(f, "gpu")) {
    CHORUS_ASSIGN_OR_RETURN(out.gpus, ReadInt32(*gpu, "resources.gpu"));
  }
  if (const YAML::Node* types = Find(f, "card_types")) {
    CHORUS_ASSIGN_OR_RETURN(out.card_types, ReadNameList(*types, "resources.card_types"));
  }
  return Status::Ok();
}

Status ParseEngine(const YAML::Node& node, EngineConfig& out) {
  CHORUS_ASSIGN_OR_RETURN(
      Fields f, ReadFields(node, "engine", {"type", "command", "args", "cpu_ms", "latency_ms", "options"}));
  const YAML::Node* type = Find(f, "type");
  if (type == nullptr) return FieldError("engine.type", std::string("required (") + kEngineList + ")");
  CHORUS_ASSIGN_OR_RETURN(out.engine, ReadString(*type, "engine.type", 64));
  if (const YAML::Node* options = Find(f, "options")) {
    if (out.engine == "exec" || out.engine == "synthetic") {
      return FieldError("engine.options", "not allowed with engine type " + out.engine);
    }
    if (!options->IsMap()) return FieldError("engine.options", "expected a mapping, got " + Describe(*options));
    for (const auto& kv : *options) {
      if (!kv.first.IsScalar()) return FieldError("engine.options", "keys must be plain strings");
      const std::string key = kv.first.Scalar();
      CHORUS_ASSIGN_OR_RETURN(std::string value,
                              ReadString(kv.second, "engine.options." + key.substr(0, 64), kMaxEngineOptionBytes));
      if (!out.options.emplace(key, std::move(value)).second) {
        return FieldError("engine.options." + key.substr(0, 64), "given twice");
      }
    }
  }
  if (IsBuiltinEngine(out.engine)) {
    for (std::string_view k : {"command", "args", "cpu_ms", "latency_ms"}) {
      if (Find(f, k) != nullptr) {
        return FieldError("engine." + std::string(k), "not allowed with engine type " + out.engine);
      }
    }
  } else if (out.engine == "exec") {
    for (std::string_view k : {"cpu_ms", "latency_ms"}) {
      if (Find(f, k) != nullptr)
        return FieldError("engine." + std::string(k), "not allowed with engine type exec");
    }
    const YAML::Node* command = Find(f, "command");
    if (command == nullptr) return FieldError("engine.command", "required with engine type exec");
    CHORUS_ASSIGN_OR_RETURN(out.command, ReadString(*command, "engine.command", kMaxCommandBytes));
    if (const YAML::Node* args = Find(f, "args")) {
      CHORUS_ASSIGN_OR_RETURN(out.args, ReadList(*args, "engine.args", kMaxArgs, kMaxCommandBytes));
    }
  } else if (out.engine == "synthetic") {
    for (std::string_view k : {"command", "args"}) {
      if (Find(f, k) != nullptr) {
        return FieldError("engine." + std::string(k), "not allowed with engine type synthetic");
      }
    }
    if (const YAML::Node* v = Find(f, "cpu_ms")) {
      CHORUS_ASSIGN_OR_RETURN(out.cpu_ms, ReadDouble(*v, "engine.cpu_ms"));
    }
    if (const YAML::Node* v = Find(f, "latency_ms")) {
      CHORUS_ASSIGN_OR_RETURN(out.latency_ms, ReadDouble(*v, "engine.latency_ms"));
    }
  } else {
    return FieldError("engine.type", QuoteForError(out.engine) + " is not an engine (" + kEngineList + ")");
  }
  return Status::Ok();
}

Result<AppSpec> ParseDocument(const YAML::Node& root) {
  CHORUS_ASSIGN_OR_RETURN(Fields f, ReadFields(root, "",
                                               {"name", "resources", "replicas", "min_replicas",
                                                "max_replicas", "target_utilization", "max_concurrency",
                                                "engine", "model", "pools", "clusters"}));
  AppSpec spec;

  const YAML::Node* name = Find(f, "name");
  if (name == nullptr) return FieldError("name", "required");
  CHORUS_ASSIGN_OR_RETURN(spec.name, ReadString(*name, "name", 64 + 1));  // +1: let Validate say why

  const YAML::Node* resources = Find(f, "resources");
  if (resources == nullptr) return FieldError("resources", "required (at least cpu and memory)");
  CHORUS_RETURN_IF_ERROR(ParseResources(*resources, spec.resources));

  // Exactly one form: `replicas`, or `min_replicas` + `max_replicas` (+ `target_utilization`).
  const YAML::Node* replicas = Find(f, "replicas");
  const YAML::Node* min = Find(f, "min_replicas");
  const YAML::Node* max = Find(f, "max_replicas");
  const YAML::Node* target = Find(f, "target_utilization");
  if (replicas != nullptr) {
    if (min != nullptr || max != nullptr) {
      return FieldError("replicas", "give either replicas or min_replicas/max_replicas, not both");
    }
    if (target != nullptr)
      return FieldError("target_utilization", "only allowed with min_replicas/max_replicas");
    CHORUS_ASSIGN_OR_RETURN(spec.replicas, ReadInt32(*replicas, "replicas"));
    // Checked here too: a replicas of 0 would otherwise read as "not given" in ValidateAppSpec.
    CHORUS_RETURN_IF_ERROR(CheckRange("replicas", spec.replicas, 1, kMaxReplicas));
  } else if (min != nullptr || max != nullptr) {
    if (min == nullptr) return FieldError("min_replicas", "required with max_replicas");
    if (max == nullptr) return FieldError("max_replicas", "required with min_replicas");
    CHORUS_ASSIGN_OR_RETURN(spec.min_replicas, ReadInt32(*min, "min_replicas"));
    CHORUS_ASSIGN_OR_RETURN(spec.max_replicas, ReadInt32(*max, "max_replicas"));
    CHORUS_RETURN_IF_ERROR(CheckRange("max_replicas", spec.max_replicas, 1, kMaxReplicas));
    spec.target_utilization = kDefaultTargetUtilization;
    if (target != nullptr) {
      CHORUS_ASSIGN_OR_RETURN(spec.target_utilization, ReadDouble(*target, "target_utilization"));
    }
  } else {
    if (target != nullptr)
      return FieldError("target_utilization", "only allowed with min_replicas/max_replicas");
    return FieldError("replicas", "required (or min_replicas and max_replicas)");
  }

  if (const YAML::Node* v = Find(f, "max_concurrency")) {
    CHORUS_ASSIGN_OR_RETURN(spec.max_concurrency, ReadInt32(*v, "max_concurrency"));
  }

  const YAML::Node* engine = Find(f, "engine");
  if (engine == nullptr) return FieldError("engine", "required");
  CHORUS_RETURN_IF_ERROR(ParseEngine(*engine, spec.engine));

  if (const YAML::Node* v = Find(f, "model")) {
    CHORUS_ASSIGN_OR_RETURN(spec.model, ReadString(*v, "model", kMaxModelBytes));
  }
  if (const YAML::Node* v = Find(f, "pools")) {
    CHORUS_ASSIGN_OR_RETURN(spec.pools, ReadNameList(*v, "pools"));
  }
  if (const YAML::Node* v = Find(f, "clusters")) {
    CHORUS_ASSIGN_OR_RETURN(spec.clusters, ReadNameList(*v, "clusters"));
  }

  CHORUS_RETURN_IF_ERROR(ValidateAppSpec(spec));
  return spec;
}

// Parses a whole number of digits in `s` into `out` without overflow.
bool ParseDigits(std::string_view s, int64_t& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() &&
         s.find_first_not_of("0123456789") == std::string_view::npos;
}

bool DigitsOverflow(std::string_view s) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  return ec == std::errc::result_out_of_range && p == s.data() + s.size();
}

}  // namespace

std::string QuoteForError(std::string_view s) { return QuoteImpl(s); }

bool IsValidName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  for (char c : s) {
    const bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                    c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Result<int64_t> ParseCpuMillis(std::string_view text) {
  const std::string bad = QuoteForError(text) + " is not a CPU amount (use 500m or 0.5)";
  if (!text.empty() && text.back() == 'm') {
    const std::string_view digits = text.substr(0, text.size() - 1);
    int64_t v = 0;
    if (DigitsOverflow(digits)) return InvalidArgument(QuoteForError(text) + " is too large");
    if (!ParseDigits(digits, v)) return InvalidArgument(bad);
    return v;
  }
  // Cores, with at most three decimals: computed in integers so 1.001 is exactly 1001m.
  const size_t dot = text.find('.');
  const std::string_view whole = text.substr(0, dot);
  std::string_view frac = dot == std::string_view::npos ? std::string_view() : text.substr(dot + 1);
  int64_t cores = 0;
  if (DigitsOverflow(whole)) return InvalidArgument(QuoteForError(text) + " is too large");
  if (!ParseDigits(whole, cores)) return InvalidArgument(bad);
  if (dot != std::string_view::npos) {
    if (frac.empty() || frac.find_first_not_of("0123456789") != std::string_view::npos)
      return InvalidArgument(bad);
    while (frac.size() > 3 && frac.back() == '0') frac.remove_suffix(1);
    if (frac.size() > 3) return InvalidArgument(QuoteForError(text) + " is finer than a millicore (1m = 0.001)");
  }
  if (cores > std::numeric_limits<int64_t>::max() / 1000 - 1)
    return InvalidArgument(QuoteForError(text) + " is too large");
  int64_t millis = cores * 1000;
  int64_t scale = 100;
  for (char c : frac) {
    millis += (c - '0') * scale;
    scale /= 10;
  }
  return millis;
}

Result<int64_t> ParseMemoryMb(std::string_view text) {
  const std::string bad = QuoteForError(text) + " is not a memory amount (use 256Mi, 1Gi or a whole number of MiB)";
  const size_t unit_at = text.find_first_not_of("0123456789");
  const std::string_view digits = text.substr(0, unit_at);
  const std::string_view unit = unit_at == std::string_view::npos ? std::string_view() : text.substr(unit_at);
  // Bytes per unit, or for binary units MiB per unit.
  constexpr int64_t kMiB = int64_t{1} << 20;
  int64_t mib_per_unit = 0;
  int64_t bytes_per_unit = 0;
  if (unit.empty() || unit == "Mi") {
    mib_per_unit = 1;
  } else if (unit == "Gi") {
    mib_per_unit = 1024;
  } else if (unit == "Ti") {
    mib_per_unit = 1024 * 1024;
  } else if (unit == "M") {
    bytes_per_unit = 1'000'000;
  } else if (unit == "G") {
    bytes_per_unit = 1'000'000'000;
  } else {
    return InvalidArgument(bad);
  }
  int64_t n = 0;
  if (DigitsOverflow(digits)) return InvalidArgument(QuoteForError(text) + " is too large");
  if (!ParseDigits(digits, n)) return InvalidArgument(bad);
  if (mib_per_unit != 0) {
    if (n > std::numeric_limits<int64_t>::max() / mib_per_unit)
      return InvalidArgument(QuoteForError(text) + " is too large");
    return n * mib_per_unit;
  }
  if (n > std::numeric_limits<int64_t>::max() / bytes_per_unit)
    return InvalidArgument(QuoteForError(text) + " is too large");
  const int64_t bytes = n * bytes_per_unit;
  return bytes / kMiB + (bytes % kMiB != 0 ? 1 : 0);
}

Status ValidateAppSpec(const AppSpec& spec) {
  if (spec.name.empty()) return FieldError("name", "required");
  if (!IsValidName(spec.name)) {
    return FieldError("name", QuoteForError(spec.name) + " is not a valid name (1-64 of A-Z a-z 0-9 _ . -)");
  }

  const ResourceRequest& r = spec.resources;
  if (r.cpu_millis <= 0) return FieldError("resources.cpu", "must be more than 0");
  if (r.cpu_millis > kMaxCpuMillis) {
    return FieldError("resources.cpu", std::to_string(r.cpu_millis) + "m is more than the limit of " +
                                           std::to_string(kMaxCpuMillis / 1000) + " cores");
  }
  if (r.memory_mb <= 0) return FieldError("resources.memory", "must be more than 0");
  if (r.memory_mb > kMaxMemoryMb) {
    return FieldError("resources.memory", std::to_string(r.memory_mb) + "Mi is more than the limit of 64Ti");
  }
  CHORUS_RETURN_IF_ERROR(CheckRange("resources.gpu", r.gpus, 0, kMaxGpus));
  if (!r.card_types.empty() && r.gpus == 0) {
    return FieldError("resources.card_types", "only allowed when resources.gpu is more than 0");
  }
  CHORUS_RETURN_IF_ERROR(CheckNameList("resources.card_types", r.card_types));

  if (spec.replicas != 0 && (spec.min_replicas != 0 || spec.max_replicas != 0)) {
    return FieldError("replicas", "give either replicas or min_replicas/max_replicas, not both");
  }
  if (spec.replicas != 0) {
    CHORUS_RETURN_IF_ERROR(CheckRange("replicas", spec.replicas, 1, kMaxReplicas));
    if (spec.target_utilization != 0) {
      return FieldError("target_utilization", "only allowed with min_replicas/max_replicas");
    }
  } else {
    if (spec.max_replicas == 0 && spec.min_replicas == 0) {
      return FieldError("replicas", "required (or min_replicas and max_replicas)");
    }
    CHORUS_RETURN_IF_ERROR(CheckRange("max_replicas", spec.max_replicas, 1, kMaxReplicas));
    if (spec.min_replicas < 0 || spec.min_replicas > spec.max_replicas) {
      return FieldError("min_replicas", std::to_string(spec.min_replicas) + " is out of range " +
                                            Range(0, spec.max_replicas) + " (0..max_replicas)");
    }
    // Written so that NaN fails too.
    if (!(spec.target_utilization > 0 && spec.target_utilization <= 1)) {
      return FieldError("target_utilization", FormatNumber(spec.target_utilization) + " is not in (0, 1]");
    }
  }
  CHORUS_RETURN_IF_ERROR(CheckRange("max_concurrency", spec.max_concurrency, 1, kMaxConcurrency));

  const EngineConfig& e = spec.engine;
  if (e.engine.empty()) return FieldError("engine.type", std::string("required (") + kEngineList + ")");
  if (e.engine == "exec") {
    if (e.command.empty()) return FieldError("engine.command", "required with engine type exec");
    if (e.command.front() != '/')
      return FieldError("engine.command", QuoteForError(e.command) + " is not an absolute path");
    if (e.command.size() > kMaxCommandBytes || e.command.find('\0') != std::string::npos) {
      return FieldError("engine.command",
                        "longer than " + std::to_string(kMaxCommandBytes) + " bytes or contains a NUL byte");
    }
    if (e.args.size() > kMaxArgs)
      return FieldError("engine.args", "more than " + std::to_string(kMaxArgs) + " entries");
    for (size_t i = 0; i < e.args.size(); ++i) {
      if (e.args[i].size() > kMaxCommandBytes || e.args[i].find('\0') != std::string::npos) {
        return FieldError(
            "engine.args[" + std::to_string(i) + "]",
            "longer than " + std::to_string(kMaxCommandBytes) + " bytes or contains a NUL byte");
      }
    }
    if (e.cpu_ms != 0) return FieldError("engine.cpu_ms", "not allowed with engine type exec");
    if (e.latency_ms != 0) return FieldError("engine.latency_ms", "not allowed with engine type exec");
  } else if (e.engine == "synthetic") {
    if (!e.command.empty()) return FieldError("engine.command", "not allowed with engine type synthetic");
    if (!e.args.empty()) return FieldError("engine.args", "not allowed with engine type synthetic");
    for (auto [field, v] :
         {std::pair{"engine.cpu_ms", e.cpu_ms}, std::pair{"engine.latency_ms", e.latency_ms}}) {
      if (!(v >= 0 && v <= kMaxSyntheticMs)) {
        return FieldError(field, FormatNumber(v) + " is out of range 0..600000");
      }
    }
  } else if (IsBuiltinEngine(e.engine)) {
    if (!e.command.empty() || !e.args.empty() || e.cpu_ms != 0 || e.latency_ms != 0) {
      return FieldError("engine", "command, args, cpu_ms and latency_ms are not allowed with engine type " + e.engine);
    }
  } else {
    return FieldError("engine.type", QuoteForError(e.engine) + " is not an engine (" + kEngineList + ")");
  }
  if (!e.options.empty() && !IsBuiltinEngine(e.engine)) {
    return FieldError("engine.options", "not allowed with engine type " + e.engine);
  }
  if (e.options.size() > kMaxEngineOptions) {
    return FieldError("engine.options", "more than " + std::to_string(kMaxEngineOptions) + " entries");
  }
  for (const auto& [key, value] : e.options) {
    const bool key_ok = !key.empty() && key.size() <= 64 &&
                        std::all_of(key.begin(), key.end(), [](char c) {
                          return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
                        });
    if (!key_ok) return FieldError("engine.options", QuoteForError(key) + " is not an option name ([a-z0-9_]{1,64})");
    if (value.size() > kMaxEngineOptionBytes || !IsPrintableUtf8(value)) {
      return FieldError("engine.options." + key,
                        "longer than " + std::to_string(kMaxEngineOptionBytes) + " bytes or not printable UTF-8");
    }
  }

  if (spec.model.size() > kMaxModelBytes) {
    return FieldError("model", "longer than " + std::to_string(kMaxModelBytes) + " bytes");
  }
  if (!IsPrintableUtf8(spec.model)) return FieldError("model", "must be UTF-8 without control characters");

  CHORUS_RETURN_IF_ERROR(CheckNameList("pools", spec.pools));
  CHORUS_RETURN_IF_ERROR(CheckNameList("clusters", spec.clusters));
  return Status::Ok();
}

Result<AppSpec> ParseAppSpec(std::string_view yaml) {
  if (yaml.size() > kMaxAppSpecBytes) {
    return InvalidArgument("app spec: larger than " + std::to_string(kMaxAppSpecBytes) + " bytes");
  }
  try {
    std::vector<YAML::Node> docs = YAML::LoadAll(std::string(yaml));
    if (docs.empty() || (docs.size() == 1 && docs[0].IsNull())) return InvalidArgument("empty app spec");
    if (docs.size() > 1) {
      return InvalidArgument("app spec: " + std::to_string(docs.size()) + " YAML documents; expected one");
    }
    return ParseDocument(docs[0]);
  } catch (const YAML::ParserException& e) {
    std::string m = "app spec: YAML syntax error";
    if (e.mark.line >= 0) {
      m += " at line " + std::to_string(e.mark.line + 1) + ", column " + std::to_string(e.mark.column + 1);
    }
    return InvalidArgument(m + ": " + e.msg);
  } catch (const YAML::Exception& e) {
    // Accessors throw on a type mismatch; types are checked before access, so this is a safety net.
    return InvalidArgument(std::string("app spec: ") + e.what());
  } catch (const std::exception& e) {
    return InvalidArgument(std::string("app spec: ") + e.what());
  }
}

}  // namespace chorus::compute
