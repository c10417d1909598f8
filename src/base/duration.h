// Human-readable durations for configuration and flags: "250ms", "1s", "1.5s", "2m", "1h30m", "100us".
// Units: ns, us, ms, s, m, h. A bare "0" is zero; any other bare number is rejected (ambiguous).
#pragma once

#include <string>
#include <string_view>

#include "base/clock.h"
#include "base/status.h"

namespace chorus {

Result<Duration> ParseDuration(std::string_view text);

// Shortest exact rendering in the largest fitting units, e.g. "1s", "1m30s", "250ms".
std::string FormatDuration(Duration d);

}  // namespace chorus
