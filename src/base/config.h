// Configuration: a declared schema of typed keys, filled from (lowest to highest precedence)
// the schema's embedded defaults, a YAML file, CHORUS_* environment variables, and command-line
// overrides.
//
// Keys are dotted paths ("http.listen", "live.block_interval"). In YAML they are nested maps
// (`http: {listen: ...}`); in the environment `http.listen` is CHORUS_HTTP_LISTEN; on the command
// line `--set http.listen=127.0.0.1:8080` (and a few dedicated flags that map onto keys).
//
// Strictness is the point: an unknown key in the file, an unknown CHORUS_* variable, or a value
// that does not parse as the key's type is an error whose message names the key and the source,
// so a typo never silently falls back to a default.
//
// A kTree key holds a whole YAML subtree (lists of objects such as the likes businesses), handed
// to its owner as JSON text to parse with its own rules.
//
// A Config is immutable after Load(): safe to read from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/status.h"

namespace chorus {

enum class ConfigType { kString, kInt, kDouble, kBool, kDuration, kStringList, kTree };

struct ConfigKey {
  std::string name;
  ConfigType type;
  std::string default_text;  // parsed like any other source; must be valid
  std::string help;
  // Constraints, checked for every source.
  std::optional<double> min;
  std::optional<double> max;
  std::vector<std::string> choices;  // kString: allowed values, empty = any
};

class ConfigSchema {
 public:
  ConfigSchema& String(std::string name, std::string def, std::string help,
                       std::vector<std::string> choices = {});
  ConfigSchema& Int(std::string name, int64_t def, std::string help,
                    std::optional<int64_t> min = std::nullopt, std::optional<int64_t> max = std::nullopt);
  ConfigSchema& Double(std::string name, double def, std::string help,
                       std::optional<double> min = std::nullopt, std::optional<double> max = std::nullopt);
  ConfigSchema& Bool(std::string name, bool def, std::string help);
  ConfigSchema& Duration(std::string name, std::string def, std::string help);
  ConfigSchema& StringList(std::string name, std::vector<std::string> def, std::string help);
  // `def_json` is the default subtree as JSON text ("[]", "{}", ...).
  ConfigSchema& Tree(std::string name, std::string def_json, std::string help);

  const ConfigKey* Find(std::string_view name) const;
  const std::vector<ConfigKey>& keys() const { return keys_; }

  // CHORUS_HTTP_LISTEN for "http.listen".
  static std::string EnvName(std::string_view key);

  // Every key with its type, default and help, one per line: for `--help` and docs.
  std::string Describe() const;

 private:
  ConfigSchema& Add(ConfigKey key);
  std::vector<ConfigKey> keys_;
};

struct ConfigSources {
  std::string file;                                         // YAML file path; empty = none
  std::vector<std::pair<std::string, std::string>> env;     // usually FromEnviron()
  std::vector<std::pair<std::string, std::string>> overrides;  // key=value from flags

  // The process environment's CHORUS_* variables.
  static std::vector<std::pair<std::string, std::string>> FromEnviron();
};

class Config {
 public:
  static Result<Config> Load(const ConfigSchema& schema, const ConfigSources& sources);

  // Typed getters. Asking for an undeclared key or with the wrong type is a programming bug
  // and aborts (it cannot come from input: input was validated by Load()).
  const std::string& GetString(std::string_view key) const;
  int64_t GetInt(std::string_view key) const;
  double GetDouble(std::string_view key) const;
  bool GetBool(std::string_view key) const;
  chorus::Duration GetDuration(std::string_view key) const;
  const std::vector<std::string>& GetStringList(std::string_view key) const;
  const std::string& GetTreeJson(std::string_view key) const;

  // "default", "file /etc/chorus.yaml", "env CHORUS_HTTP_LISTEN" or "flag".
  const std::string& SourceOf(std::string_view key) const;

  // The effective configuration as YAML (comments name non-default sources).
  std::string Dump() const;

 private:
  struct Value {
    ConfigType type;
    std::string text;  // canonical text as given
    int64_t i = 0;
    double d = 0;
    bool b = false;
    std::vector<std::string> list;
    std::string source;
  };
  const Value& Get(std::string_view key, ConfigType type) const;
  std::map<std::string, Value, std::less<>> values_;

  friend class ConfigLoader;
};

}  // namespace chorus
