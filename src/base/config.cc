#include "base/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/duration.h"

extern char** environ;

namespace chorus {
namespace {

std::string_view TypeName(ConfigType t) {
  switch (t) {
    case ConfigType::kString: return "string";
    case ConfigType::kInt: return "integer";
    case ConfigType::kDouble: return "number";
    case ConfigType::kBool: return "boolean";
    case ConfigType::kDuration: return "duration";
    case ConfigType::kStringList: return "list of strings";
    case ConfigType::kTree: return "YAML/JSON tree";
  }
  return "?";
}

bool ValidKeyName(std::string_view name) {
  if (name.empty() || name.front() == '.' || name.back() == '.') return false;
  char prev = 0;
  for (char c : name) {
    const bool ok = std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) ||
                    c == '_' || c == '.';
    if (!ok || (c == '.' && prev == '.')) return false;
    prev = c;
  }
  return true;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

// Bounds on one kTree value. YAML aliases share nodes, so `&a [x]` ... `[*a, *a, ...]` expands a
// few hundred bytes of text into gigabytes, and `&a [*a]` is a node that contains itself.
constexpr int kMaxTreeDepth = 64;
constexpr size_t kMaxTreeBytes = size_t{1} << 20;  // scalar and key bytes + 16 per node

// YAML -> JSON with YAML 1.2 core-schema typing; quoted scalars stay strings. `budget` is what is
// left of kMaxTreeBytes; an error (without the key name) once the tree exceeds the bounds.
Result<nlohmann::json> YamlToJson(const YAML::Node& node, int depth, size_t& budget) {
  const size_t cost = 16 + (node.IsScalar() ? node.Scalar().size() : 0);
  if (depth > kMaxTreeDepth) {
    return InvalidArgument("nested deeper than " + std::to_string(kMaxTreeDepth) + " levels");
  }
  if (cost > budget) {
    return InvalidArgument("larger than " + std::to_string(kMaxTreeBytes) + " bytes with aliases expanded");
  }
  budget -= cost;
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined: return nlohmann::json(nullptr);
    case YAML::NodeType::Sequence: {
      auto arr = nlohmann::json::array();
      for (const auto& item : node) {
        CHORUS_ASSIGN_OR_RETURN(nlohmann::json v, YamlToJson(item, depth + 1, budget));
        arr.push_back(std::move(v));
      }
      return arr;
    }
    case YAML::NodeType::Map: {
      auto obj = nlohmann::json::object();
      for (const auto& kv : node) {
        const std::string& key = kv.first.Scalar();
        if (key.size() > budget) {
          return InvalidArgument("larger than " + std::to_string(kMaxTreeBytes) + " bytes with aliases expanded");
        }
        budget -= key.size();
        CHORUS_ASSIGN_OR_RETURN(nlohmann::json v, YamlToJson(kv.second, depth + 1, budget));
        obj[key] = std::move(v);
      }
      return obj;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() == "!") return nlohmann::json(s);  // quoted
      if (s == "true" || s == "True" || s == "TRUE") return nlohmann::json(true);
      if (s == "false" || s == "False" || s == "FALSE") return nlohmann::json(false);
      if (s == "null" || s == "~" || s.empty()) return nlohmann::json(nullptr);
      int64_t i = 0;
      auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), i);
      if (ec == std::errc() && p == s.data() + s.size()) return nlohmann::json(i);
      char* end = nullptr;
      const double d = std::strtod(s.c_str(), &end);
      if (end == s.c_str() + s.size() && std::isfinite(d)) return nlohmann::json(d);
      return nlohmann::json(s);
    }
  }
  return nlohmann::json(nullptr);
}

// The JSON text of a kTree value, or why it cannot have one.
Result<std::string> TreeJson(const YAML::Node& node) {
  size_t budget = kMaxTreeBytes;
  CHORUS_ASSIGN_OR_RETURN(nlohmann::json json, YamlToJson(node, 0, budget));
  try {
    return json.dump();
  } catch (const nlohmann::json::exception&) {
    // YAML scalars may hold any bytes; JSON text must be UTF-8 (dump() throws type_error 316).
    return InvalidArgument("not valid UTF-8");
  }
}

}  // namespace

// ---------------------------------------------------------------- schema

ConfigSchema& ConfigSchema::Add(ConfigKey key) {
  // Schemas are written by us, not users: a bad declaration is a programming bug.
  if (!ValidKeyName(key.name) || Find(key.name) != nullptr) std::abort();
  for (const auto& k : keys_) {
    if (EnvName(k.name) == EnvName(key.name)) std::abort();
  }
  keys_.push_back(std::move(key));
  return *this;
}

ConfigSchema& ConfigSchema::String(std::string name, std::string def, std::string help,
                                   std::vector<std::string> choices) {
  return Add({std::move(name), ConfigType::kString, std::move(def), std::move(help), {}, {}, std::move(choices)});
}
ConfigSchema& ConfigSchema::Int(std::string name, int64_t def, std::string help, std::optional<int64_t> min,
                                std::optional<int64_t> max) {
  ConfigKey k{std::move(name), ConfigType::kInt, std::to_string(def), std::move(help), {}, {}, {}};
  if (min) k.min = static_cast<double>(*min);
  if (max) k.max = static_cast<double>(*max);
  return Add(std::move(k));
}
ConfigSchema& ConfigSchema::Double(std::string name, double def, std::string help, std::optional<double> min,
                                   std::optional<double> max) {
  std::ostringstream os;
  os << def;
  return Add({std::move(name), ConfigType::kDouble, os.str(), std::move(help), min, max, {}});
}
ConfigSchema& ConfigSchema::Bool(std::string name, bool def, std::string help) {
  return Add({std::move(name), ConfigType::kBool, def ? "true" : "false", std::move(help), {}, {}, {}});
}
ConfigSchema& ConfigSchema::Duration(std::string name, std::string def, std::string help) {
  return Add({std::move(name), ConfigType::kDuration, std::move(def), std::move(help), {}, {}, {}});
}
ConfigSchema& ConfigSchema::StringList(std::string name, std::vector<std::string> def, std::string help) {
  std::string text;
  for (size_t i = 0; i < def.size(); ++i) text += (i ? "," : "") + def[i];
  return Add({std::move(name), ConfigType::kStringList, std::move(text), std::move(help), {}, {}, {}});
}
ConfigSchema& ConfigSchema::Tree(std::string name, std::string def_json, std::string help) {
  return Add({std::move(name), ConfigType::kTree, std::move(def_json), std::move(help), {}, {}, {}});
}

const ConfigKey* ConfigSchema::Find(std::string_view name) const {
  for (const auto& k : keys_) {
    if (k.name == name) return &k;
  }
  return nullptr;
}

std::string ConfigSchema::EnvName(std::string_view key) {
  std::string env = "CHORUS_";
  for (char c : key) env += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return env;
}

std::string ConfigSchema::Describe() const {
  std::ostringstream os;
  for (const auto& k : keys_) {
    os << "  " << k.name << " (" << TypeName(k.type) << ", default "
       << (k.default_text.empty() ? "\"\"" : k.default_text) << ")\n      " << k.help;
    if (!k.choices.empty()) {
      os << " One of:";
      for (const auto& c : k.choices) os << ' ' << c;
      os << '.';
    }
    os << " [env " << EnvName(k.name) << "]\n";
  }
  return os.str();
}

std::vector<std::pair<std::string, std::string>> ConfigSources::FromEnviron() {
  std::vector<std::pair<std::string, std::string>> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    if (kv.substr(0, 7) != "CHORUS_") continue;
    const size_t eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    out.emplace_back(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return out;
}

// ---------------------------------------------------------------- loading

class ConfigLoader {
 public:
  ConfigLoader(const ConfigSchema& schema, Config& config) : schema_(schema), config_(config) {}

  // Parses `text` as the type of `key` and stores it.
  Status SetText(const ConfigKey& key, const std::string& raw, const std::string& source) {
    const std::string text = key.type == ConfigType::kString ? raw : Trim(raw);
    Config::Value v;
    v.type = key.type;
    v.text = text;
    v.source = source;
    auto bad = [&](std::string why) {
      return InvalidArgument("configuration key '" + key.name + "' (from " + source + "): " + why);
    };
    switch (key.type) {
      case ConfigType::kString:
        if (!key.choices.empty() && std::find(key.choices.begin(), key.choices.end(), text) == key.choices.end()) {
          std::string all;
          for (const auto& c : key.choices) all += (all.empty() ? "" : ", ") + c;
          return bad("'" + text + "' is not one of: " + all);
        }
        break;
      case ConfigType::kInt: {
        auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v.i);
        if (text.empty() || ec != std::errc() || p != text.data() + text.size()) {
          return bad("expected an integer, got '" + text + "'");
        }
        if ((key.min && static_cast<double>(v.i) < *key.min) || (key.max && static_cast<double>(v.i) > *key.max)) {
          return bad(RangeText(key, text));
        }
        break;
      }
      case ConfigType::kDouble: {
        char* end = nullptr;
        v.d = std::strtod(text.c_str(), &end);
        if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(v.d)) {
          return bad("expected a number, got '" + text + "'");
        }
        if ((key.min && v.d < *key.min) || (key.max && v.d > *key.max)) return bad(RangeText(key, text));
        break;
      }
      case ConfigType::kBool:
        if (text == "true" || text == "1" || text == "yes" || text == "on") {
          v.b = true;
        } else if (text == "false" || text == "0" || text == "no" || text == "off") {
          v.b = false;
        } else {
          return bad("expected true or false, got '" + text + "'");
        }
        break;
      case ConfigType::kDuration: {
        auto d = ParseDuration(text);
        if (!d.ok()) return bad(d.status().message());
        if (d->count() < 0) return bad("must not be negative");
        v.i = d->count();
        break;
      }
      case ConfigType::kStringList: {
        if (!text.empty() && text.front() == '[') {
          YAML::Node node;
          try {
            node = YAML::Load(text);
          } catch (const YAML::Exception& e) {
            return bad(std::string("invalid list: ") + e.what());
          }
          auto st = SetList(key, node, source);
          return st;
        }
        size_t start = 0;
        while (start <= text.size() && !text.empty()) {
          size_t comma = text.find(',', start);
          if (comma == std::string::npos) comma = text.size();
          std::string item = Trim(std::string_view(text).substr(start, comma - start));
          if (!item.empty()) v.list.push_back(std::move(item));
          start = comma + 1;
        }
        break;
      }
      case ConfigType::kTree: {
        YAML::Node node;
        try {
          node = YAML::Load(text);
        } catch (const YAML::Exception& e) {
          return bad(std::string("invalid YAML/JSON: ") + e.what());
        }
        Result<std::string> json = TreeJson(node);
        if (!json.ok()) return bad(json.status().message());
        v.text = std::move(*json);
        break;
      }
    }
    config_.values_[key.name] = std::move(v);
    return Status::Ok();
  }

  Status SetList(const ConfigKey& key, const YAML::Node& node, const std::string& source) {
    if (!node.IsSequence()) {
      return InvalidArgument("configuration key '" + key.name + "' (from " + source + "): expected a list of strings");
    }
    Config::Value v;
    v.type = key.type;
    v.source = source;
    for (const auto& item : node) {
      if (!item.IsScalar()) {
        return InvalidArgument("configuration key '" + key.name + "' (from " + source +
                               "): list items must be strings");
      }
      v.list.push_back(item.Scalar());
      v.text += (v.text.empty() ? "" : ",") + item.Scalar();
    }
    config_.values_[key.name] = std::move(v);
    return Status::Ok();
  }

  Status LoadFile(const std::string& path) {
    YAML::Node root;
    try {
      root = YAML::LoadFile(path);
    } catch (const YAML::BadFile&) {
      return InvalidArgument("cannot read configuration file '" + path + "'");
    } catch (const YAML::Exception& e) {
      return InvalidArgument("configuration file '" + path + "': " + e.what());
    }
    if (root.IsNull()) return Status::Ok();
    if (!root.IsMap()) return InvalidArgument("configuration file '" + path + "': top level must be a map");
    return Walk(root, "", "file " + path);
  }

  Status Walk(const YAML::Node& map, const std::string& prefix, const std::string& source) {
    for (const auto& kv : map) {
      const std::string name = prefix + kv.first.Scalar();
      const ConfigKey* key = schema_.Find(name);
      if (key != nullptr) {
        if (key->type == ConfigType::kTree) {
          Config::Value v;
          v.type = key->type;
          Result<std::string> json = TreeJson(kv.second);
          if (!json.ok()) {
            return InvalidArgument("configuration key '" + name + "' (from " + source + "): " +
                                   json.status().message());
          }
          v.text = std::move(*json);
          v.source = source;
          config_.values_[name] = std::move(v);
        } else if (key->type == ConfigType::kStringList && kv.second.IsSequence()) {
          CHORUS_RETURN_IF_ERROR(SetList(*key, kv.second, source));
        } else if (kv.second.IsScalar()) {
          CHORUS_RETURN_IF_ERROR(SetText(*key, kv.second.Scalar(), source));
        } else {
          return InvalidArgument("configuration key '" + name + "' (from " + source + "): expected a " +
                                 std::string(TypeName(key->type)));
        }
        continue;
      }
      if (IsSection(name) && (kv.second.IsMap() || kv.second.IsNull())) {
        if (kv.second.IsMap()) CHORUS_RETURN_IF_ERROR(Walk(kv.second, name + ".", source));
        continue;
      }
      return InvalidArgument("unknown configuration key '" + name + "' (in " + source + ")" + Suggest(name));
    }
    return Status::Ok();
  }

  bool IsSection(const std::string& name) const {
    const std::string p = name + ".";
    for (const auto& k : schema_.keys()) {
      if (k.name.compare(0, p.size(), p) == 0) return true;
    }
    return false;
  }

  // " (did you mean 'http.listen'?)" when one key is a near miss.
  std::string Suggest(const std::string& name) const {
    auto distance = [](const std::string& a, const std::string& b) {
      std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
      for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
      for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
          cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1] ? 1 : 0)});
        }
        std::swap(prev, cur);
      }
      return prev[b.size()];
    };
    for (const auto& k : schema_.keys()) {
      if (distance(name, k.name) <= 2) return " (did you mean '" + k.name + "'?)";
    }
    return "";
  }

  static std::string RangeText(const ConfigKey& key, const std::string& text) {
    std::ostringstream os;
    os << "'" << text << "' is out of range";
    if (key.min) os << ", minimum " << *key.min;
    if (key.max) os << ", maximum " << *key.max;
    return os.str();
  }

 private:
  const ConfigSchema& schema_;
  Config& config_;
};

Result<Config> Config::Load(const ConfigSchema& schema, const ConfigSources& sources) {
  Config config;
  ConfigLoader loader(schema, config);
  for (const auto& key : schema.keys()) {
    Status st = loader.SetText(key, key.default_text, "default");
    if (!st.ok()) return Internal("bad default: " + st.message());
  }
  if (!sources.file.empty()) CHORUS_RETURN_IF_ERROR(loader.LoadFile(sources.file));
  for (const auto& [name, value] : sources.env) {
    const ConfigKey* found = nullptr;
    for (const auto& key : schema.keys()) {
      if (ConfigSchema::EnvName(key.name) == name) found = &key;
    }
    if (found == nullptr) {
      return InvalidArgument("unknown configuration variable '" + name +
                             "' in the environment (CHORUS_* variables must name a configuration key; unset it)");
    }
    CHORUS_RETURN_IF_ERROR(loader.SetText(*found, value, "env " + name));
  }
  for (const auto& [name, value] : sources.overrides) {
    const ConfigKey* key = schema.Find(name);
    if (key == nullptr) {
      return InvalidArgument("unknown configuration key '" + name + "' (in flag)" + loader.Suggest(name));
    }
    CHORUS_RETURN_IF_ERROR(loader.SetText(*key, value, "flag"));
  }
  return config;
}

const Config::Value& Config::Get(std::string_view key, ConfigType type) const {
  auto it = values_.find(key);
  if (it == values_.end() || it->second.type != type) std::abort();  // programming bug
  return it->second;
}

const std::string& Config::GetString(std::string_view key) const { return Get(key, ConfigType::kString).text; }
int64_t Config::GetInt(std::string_view key) const { return Get(key, ConfigType::kInt).i; }
double Config::GetDouble(std::string_view key) const { return Get(key, ConfigType::kDouble).d; }
bool Config::GetBool(std::string_view key) const { return Get(key, ConfigType::kBool).b; }
chorus::Duration Config::GetDuration(std::string_view key) const {
  return chorus::Duration(Get(key, ConfigType::kDuration).i);
}
const std::vector<std::string>& Config::GetStringList(std::string_view key) const {
  return Get(key, ConfigType::kStringList).list;
}
const std::string& Config::GetTreeJson(std::string_view key) const { return Get(key, ConfigType::kTree).text; }

const std::string& Config::SourceOf(std::string_view key) const {
  auto it = values_.find(key);
  if (it == values_.end()) std::abort();
  return it->second.source;
}

std::string Config::Dump() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  for (const auto& [name, v] : values_) {
    out << YAML::Key << name << YAML::Value;
    if (v.type == ConfigType::kStringList) {
      out << YAML::Flow << v.list;
    } else {
      out << v.text;
    }
    if (v.source != "default") out << YAML::Comment(v.source);
  }
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace chorus
