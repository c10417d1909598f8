// Small text helpers shared by parsers and renderers (HTTP, tokens, logs, metrics).
// Pure functions; safe from any thread.
#pragma once

#include <cstddef>
#include <string_view>

namespace chorus {

// Length of the well-formed UTF-8 sequence at s[i] (RFC 3629: no overlongs, no surrogates,
// nothing above U+10FFFF), or 0 if the byte there does not start one. Requires i < s.size().
size_t Utf8SequenceLength(std::string_view s, size_t i);

// True when every byte of s belongs to a well-formed UTF-8 sequence.
bool IsValidUtf8(std::string_view s);

// 0-15 for a hexadecimal digit (either case), -1 otherwise.
inline int HexDigitValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace chorus
