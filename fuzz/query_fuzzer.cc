// Fuzzes what the HTTP server does with a request line before any handler runs: PercentDecode
// of the path, ParseQuery of the query string, and Router::Find of the raw (still encoded) path.
//
// Input: "METHOD TARGET", split at the first space ("GET /v1/rooms/lobby?since=10&q=a%20b");
// without a space the whole input is the target and the method is GET. The whole input is
// also decoded and parsed as a query on its own, so every byte string reaches every parser.
//
// Invariants (each violation aborts):
//   - PercentDecode fails exactly when some '%' is not followed by two hex digits, always with
//     InvalidArgument, and otherwise agrees byte for byte with the reference decoder below.
//   - decode(encode(decode(x))) == decode(x), in both '+' modes, with the encoder below.
//   - ParseQuery fails exactly when the string has a bad escape; a success re-encodes to a
//     query that parses to the same pairs.
//   - Router::Find agrees with a reference matcher over the same routes, on segments split at
//     '/' and then decoded: 400 if a segment has a bad escape; else 200 with the most specific
//     matching route for the method (HEAD may use GET), whose params are the decoded segments
//     (a rest param: the remaining ones joined by '/'); else 405 with exactly the methods of
//     the plain routes that match; else 426 if a WebSocket route matches; else 404. With an
//     upgrade: the WebSocket route if it matches, else 404 (400 for a bad escape).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fuzz_check.h"
#include "net/router.h"

namespace chorus::net {
namespace {

using Pairs = std::vector<std::pair<std::string, std::string>>;

// ---------------------------------------------------------------- percent-encoding
// A reference decoder and an encoder, deliberately independent of the code under test.

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsUnreserved(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

// Escapes every byte outside RFC 3986's unreserved set, so '%', '+', ' ', '&', '=' and '/' all
// decode back to themselves whichever '+' mode the decoder is in.
std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : s) {
    if (IsUnreserved(c)) {
      out += c;
    } else {
      const auto u = static_cast<unsigned char>(c);
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 0x0F];
    }
  }
  return out;
}

// False when some '%' does not start a complete escape, the one thing a decoder can reject.
bool RefDecode(std::string_view s, bool plus_is_space, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      if (s.size() - i < 3 || HexValue(s[i + 1]) < 0 || HexValue(s[i + 2]) < 0) return false;
      out->push_back(static_cast<char>(HexValue(s[i + 1]) * 16 + HexValue(s[i + 2])));
      i += 2;
    } else {
      out->push_back(plus_is_space && s[i] == '+' ? ' ' : s[i]);
    }
  }
  return true;
}

void CheckPercentDecode(std::string_view in) {
  for (bool plus_is_space : {false, true}) {
    std::string expected;
    const bool well_formed = RefDecode(in, plus_is_space, &expected);
    Result<std::string> decoded = PercentDecode(in, plus_is_space);
    FUZZ_CHECK(decoded.ok() == well_formed, decoded.status().message());
    if (!decoded.ok()) {
      FUZZ_CHECK(decoded.status().code() == StatusCode::kInvalidArgument, decoded.status().message());
      continue;
    }
    FUZZ_CHECK(*decoded == expected, *decoded);

    const std::string encoded = PercentEncode(*decoded);
    Result<std::string> again = PercentDecode(encoded, plus_is_space);
    FUZZ_CHECK(again.ok(), encoded);
    FUZZ_CHECK(*again == *decoded, encoded);
  }
}

// ---------------------------------------------------------------- query strings

void CheckParseQuery(std::string_view query) {
  std::string ignored;
  const bool well_formed = RefDecode(query, true, &ignored);
  Result<Pairs> pairs = ParseQuery(query);
  // '&' and '=' are never hex digits, so an escape never straddles a separator: the query is
  // malformed exactly when one of its components is.
  FUZZ_CHECK(pairs.ok() == well_formed, pairs.status().message());
  if (!pairs.ok()) {
    FUZZ_CHECK(pairs.status().code() == StatusCode::kInvalidArgument, pairs.status().message());
    return;
  }

  size_t nonempty_parts = 0;
  for (size_t start = 0; start <= query.size();) {
    size_t amp = query.find('&', start);
    if (amp == std::string_view::npos) amp = query.size();
    if (amp > start) ++nonempty_parts;
    start = amp + 1;
  }
  FUZZ_CHECK(pairs->size() == nonempty_parts);

  std::string rebuilt;
  for (const auto& [key, value] : *pairs) {
    if (!rebuilt.empty()) rebuilt += '&';
    rebuilt += PercentEncode(key) + "=" + PercentEncode(value);
  }
  Result<Pairs> again = ParseQuery(rebuilt);
  FUZZ_CHECK(again.ok(), rebuilt);
  FUZZ_CHECK(*again == *pairs, rebuilt);
}

// ---------------------------------------------------------------- routing

struct RouteSpec {
  std::string_view method;  // empty for a WebSocket route
  std::string_view pattern;
};

// Literals, parameters, a literal/parameter tie at one position, two methods on one path, two
// {rest...} routes, and a WebSocket route that shares its path with a plain one and one that
// does not.
constexpr RouteSpec kRoutes[] = {
    {"GET", "/"},
    {"GET", "/v1/rooms/online"},
    {"GET", "/v1/rooms/{room}"},
    {"DELETE", "/v1/rooms/{room}"},
    {"POST", "/v1/rooms/{room}/messages"},
    {"GET", "/v1/rooms/{room}/messages/{id}"},
    {"GET", "/static/{path...}"},
    {"PUT", "/files/{bucket}/{key...}"},
    {"", "/v1/live/{topic}"},
    {"", "/v1/rooms/{room}/messages"},
};

// Non-empty segments between slashes, as written (still encoded).
std::vector<std::string> Segments(std::string_view path) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > start) out.emplace_back(path.substr(start, slash - start));
    start = slash + 1;
  }
  return out;
}

struct PatternSegment {
  std::string text;
  bool param = false;
  bool rest = false;
};

std::vector<PatternSegment> ParsedPattern(std::string_view pattern) {
  std::vector<PatternSegment> out;
  for (const std::string& s : Segments(pattern)) {
    PatternSegment seg;
    if (s.front() == '{') {
      seg.param = true;
      seg.text = s.substr(1, s.size() - 2);
      if (seg.text.size() > 3 && seg.text.ends_with("...")) {
        seg.rest = true;
        seg.text.resize(seg.text.size() - 3);
      }
    } else {
      seg.text = s;
    }
    out.push_back(std::move(seg));
  }
  return out;
}

int Specificity(const std::vector<PatternSegment>& pattern) {
  return static_cast<int>(
      std::count_if(pattern.begin(), pattern.end(), [](const PatternSegment& s) { return !s.param; }));
}

bool RefMatches(const std::vector<PatternSegment>& pattern, const std::vector<std::string>& parts) {
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i].rest) return true;  // zero or more remaining segments
    if (i >= parts.size()) return false;
    if (!pattern[i].param && pattern[i].text != parts[i]) return false;
  }
  return pattern.size() == parts.size();
}

// The params a match of `pattern` against `parts` must produce.
Pairs RefParams(const std::vector<PatternSegment>& pattern, const std::vector<std::string>& parts) {
  Pairs out;
  for (size_t i = 0; i < pattern.size(); ++i) {
    if (pattern[i].rest) {
      std::string rest;
      for (size_t j = i; j < parts.size(); ++j) rest += (j > i ? "/" : "") + parts[j];
      out.emplace_back(pattern[i].text, std::move(rest));
      break;
    }
    if (pattern[i].param) out.emplace_back(pattern[i].text, parts[i]);
  }
  return out;
}

struct TestRouter {
  Router router;
  std::vector<std::vector<PatternSegment>> patterns;  // parallel to kRoutes
};

const TestRouter& GetRouter() {
  static const TestRouter* const kRouter = [] {
    auto* t = new TestRouter;
    for (size_t i = 0; i < std::size(kRoutes); ++i) {
      const RouteSpec& spec = kRoutes[i];
      t->patterns.push_back(ParsedPattern(spec.pattern));
      Status st;
      if (spec.method.empty()) {
        st = t->router.AddWebSocket(spec.pattern, WebSocketHandler{});
      } else {
        // The handler names its route, so a Match can be traced back to kRoutes.
        st = t->router.Add(spec.method, spec.pattern,
                           [i](HttpRequest& req, HttpResponder) { req.body = std::to_string(i); });
      }
      FUZZ_CHECK(st.ok(), st.message());
    }
    return t;
  }();
  return *kRouter;
}

bool MethodAllows(std::string_view route_method, std::string_view method) {
  return route_method == method || (method == "HEAD" && route_method == "GET");
}

void CheckFind(std::string_view method, std::string_view raw_path) {
  const TestRouter& t = GetRouter();

  std::vector<std::string> parts;
  bool bad_escape = false;
  for (const std::string& raw : Segments(raw_path)) {
    std::string segment;
    bad_escape = bad_escape || !RefDecode(raw, false, &segment);
    parts.push_back(std::move(segment));
  }

  std::vector<size_t> matching;  // indexes into kRoutes
  if (!bad_escape) {
    for (size_t i = 0; i < std::size(kRoutes); ++i) {
      if (RefMatches(t.patterns[i], parts)) matching.push_back(i);
    }
  }

  for (bool upgrade : {false, true}) {
    const Router::Match m = t.router.Find(method, raw_path, upgrade);
    const bool matched = m.handler != nullptr || m.websocket != nullptr;
    FUZZ_CHECK(matched == (m.status == 200));
    FUZZ_CHECK(m.handler == nullptr || m.websocket == nullptr);
    FUZZ_CHECK(m.status == 405 || m.allow.empty(), m.allow);
    if (bad_escape) {
      FUZZ_CHECK(m.status == 400, raw_path);
      continue;
    }

    if (upgrade) {
      FUZZ_CHECK(m.handler == nullptr, "a plain route answered an upgrade");
      size_t ws = std::size(kRoutes);
      for (size_t i : matching) {
        if (kRoutes[i].method.empty()) ws = i;  // the WebSocket patterns never overlap
      }
      if (ws == std::size(kRoutes)) {
        FUZZ_CHECK(m.status == 404, raw_path);
      } else {
        FUZZ_CHECK(m.websocket != nullptr, raw_path);
        FUZZ_CHECK(m.params == RefParams(t.patterns[ws], parts), kRoutes[ws].pattern);
      }
      continue;
    }

    FUZZ_CHECK(m.websocket == nullptr, "a WebSocket route answered a plain request");
    int best = -1;
    bool websocket_matches = false;
    std::set<std::string> allowed;
    for (size_t i : matching) {
      if (kRoutes[i].method.empty()) {
        websocket_matches = true;
        continue;
      }
      if (MethodAllows(kRoutes[i].method, method)) best = std::max(best, Specificity(t.patterns[i]));
      allowed.emplace(kRoutes[i].method);
    }
    if (best >= 0) {
      FUZZ_CHECK(m.handler != nullptr, raw_path);
      HttpRequest req;
      (*m.handler)(req, HttpResponder());
      const size_t i = std::stoul(req.body);
      FUZZ_CHECK(MethodAllows(kRoutes[i].method, method), kRoutes[i].pattern);
      FUZZ_CHECK(Specificity(t.patterns[i]) == best, kRoutes[i].pattern);
      FUZZ_CHECK(RefMatches(t.patterns[i], parts), kRoutes[i].pattern);
      FUZZ_CHECK(m.params == RefParams(t.patterns[i], parts), kRoutes[i].pattern);
    } else if (!allowed.empty()) {
      FUZZ_CHECK(m.status == 405, raw_path);
      std::string allow;
      for (const std::string& a : allowed) allow += (allow.empty() ? "" : ", ") + a;
      FUZZ_CHECK(m.allow == allow, m.allow);
    } else {
      FUZZ_CHECK(m.status == (websocket_matches ? 426 : 404), raw_path);
    }
  }
}

// What HttpServer does with a request target: the path is decoded whole for the request and
// routed as received; the query is parsed.
void CheckRequest(std::string_view method, std::string_view target) {
  const size_t q = target.find('?');
  CheckPercentDecode(target.substr(0, q));
  CheckFind(method, target.substr(0, q));
  if (q != std::string_view::npos) {
    CheckParseQuery(target.substr(q + 1));
    CheckFind(method, target);  // a '?' inside the path is just a byte to the router
  }
}

}  // namespace
}  // namespace chorus::net

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  chorus::net::CheckPercentDecode(in);
  chorus::net::CheckParseQuery(in);
  const size_t space = in.find(' ');
  if (space == std::string_view::npos) {
    chorus::net::CheckRequest("GET", in);
  } else {
    chorus::net::CheckRequest(in.substr(0, space), in.substr(space + 1));
  }
  return 0;
}
