#include "base/duration.h"

#include <cmath>
#include <cstdint>
#include <cctype>
#include <cstdlib>

namespace chorus {
namespace {

struct Unit {
  std::string_view name;
  int64_t nanos;
};
constexpr Unit kUnits[] = {{"ns", 1},
                           {"us", 1'000},
                           {"ms", 1'000'000},
                           {"s", 1'000'000'000},
                           {"m", 60'000'000'000},
                           {"h", 3'600'000'000'000}};

}  // namespace

Result<Duration> ParseDuration(std::string_view text) {
  const std::string original(text);
  auto bad = [&](std::string_view why) {
    return InvalidArgument("invalid duration '" + original + "': " + std::string(why));
  };
  if (text.empty()) return bad("empty");
  if (text == "0") return Duration::zero();
  long double total = 0;
  while (!text.empty()) {
    size_t i = 0;
    bool dot = false;
    while (i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || (text[i] == '.' && !dot))) {
      dot |= text[i] == '.';
      ++i;
    }
    if (i == 0 || (i == 1 && dot)) return bad("expected a number");
    const std::string number(text.substr(0, i));
    text.remove_prefix(i);
    size_t j = 0;
    while (j < text.size() && std::isalpha(static_cast<unsigned char>(text[j]))) ++j;
    const std::string_view unit = text.substr(0, j);
    text.remove_prefix(j);
    if (unit.empty()) return bad("missing unit (use ns, us, ms, s, m or h)");
    const Unit* found = nullptr;
    for (const Unit& u : kUnits) {
      if (u.name == unit) found = &u;
    }
    if (found == nullptr) return bad("unknown unit '" + std::string(unit) + "'");
    total += std::strtold(number.c_str(), nullptr) * static_cast<long double>(found->nanos);
    if (total > static_cast<long double>(INT64_MAX) / 2) return bad("too large");
  }
  return Duration(static_cast<int64_t>(std::llroundl(total)));
}

std::string FormatDuration(Duration d) {
  int64_t n = d.count();
  if (n == 0) return "0s";
  std::string out;
  if (n < 0) {
    out = "-";
    n = -n;
  }
  // Values that are not whole seconds in their largest exact unit; whole seconds as h/m/s.
  if (n < 1'000'000'000 || n % 1'000'000'000 != 0) {
    for (int u = 2; u >= 0; --u) {
      if (n % kUnits[u].nanos == 0) return out + std::to_string(n / kUnits[u].nanos) + std::string(kUnits[u].name);
    }
  }
  int64_t s = n / 1'000'000'000;
  if (s >= 3600) {
    out += std::to_string(s / 3600) + "h";
    s %= 3600;
  }
  if (s >= 60) {
    out += std::to_string(s / 60) + "m";
    s %= 60;
  }
  if (s > 0) out += std::to_string(s) + "s";
  return out;
}

}  // namespace chorus
