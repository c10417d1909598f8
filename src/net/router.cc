#include "net/router.h"

#include "base/text.h"

#include <algorithm>

namespace chorus::net {
namespace {

std::vector<std::string_view> SplitPath(std::string_view path) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') {
      ++i;
      continue;
    }
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    out.push_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}


}  // namespace

struct Router::Route {
  std::string method;  // empty for WebSocket routes
  std::string pattern;
  struct Segment {
    std::string text;  // literal text or parameter name
    bool param = false;
    bool rest = false;
  };
  std::vector<Segment> segments;
  HttpHandler handler;
  RouteOptions options;
  std::unique_ptr<WebSocketHandler> websocket;

  // Number of literal segments: more literals = more specific.
  int Specificity() const {
    int n = 0;
    for (const auto& s : segments) n += s.param ? 0 : 1;
    return n;
  }

  bool Matches(const std::vector<std::string_view>& parts,
               std::vector<std::pair<std::string, std::string>>* params) const {
    params->clear();
    size_t i = 0;
    for (; i < segments.size(); ++i) {
      const Segment& seg = segments[i];
      if (seg.rest) {
        std::string rest;
        for (size_t j = i; j < parts.size(); ++j) {
          if (!rest.empty()) rest += '/';
          rest += parts[j];
        }
        params->emplace_back(seg.text, std::move(rest));
        return true;
      }
      if (i >= parts.size()) return false;
      if (seg.param) {
        params->emplace_back(seg.text, std::string(parts[i]));
      } else if (seg.text != parts[i]) {
        return false;
      }
    }
    return i == parts.size();
  }
};

Router::Router() = default;
Router::~Router() = default;

static Result<std::vector<Router::Route::Segment>> ParsePattern(std::string_view pattern) {
  if (pattern.empty() || pattern.front() != '/') return InvalidArgument("route pattern must start with '/'");
  std::vector<Router::Route::Segment> segs;
  auto parts = SplitPath(pattern);
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string_view p = parts[i];
    Router::Route::Segment seg;
    if (p.front() == '{') {
      if (p.back() != '}' || p.size() < 3) return InvalidArgument("bad parameter in pattern '" + std::string(pattern) + "'");
      p = p.substr(1, p.size() - 2);
      seg.param = true;
      if (p.size() > 3 && p.substr(p.size() - 3) == "...") {
        if (i + 1 != parts.size()) return InvalidArgument("'{name...}' must be last in '" + std::string(pattern) + "'");
        seg.rest = true;
        p.remove_suffix(3);
      }
    }
    seg.text = std::string(p);
    segs.push_back(std::move(seg));
  }
  return segs;
}

Status Router::Add(std::string_view method, std::string_view pattern, HttpHandler handler, RouteOptions options) {
  CHORUS_ASSIGN_OR_RETURN(auto segs, ParsePattern(pattern));
  for (const auto& r : routes_) {
    if (r->method == method && r->pattern == pattern) {
      return AlreadyExists("duplicate route " + std::string(method) + " " + std::string(pattern));
    }
  }
  auto r = std::make_unique<Route>();
  r->method = std::string(method);
  r->pattern = std::string(pattern);
  r->segments = std::move(segs);
  r->handler = std::move(handler);
  r->options = options;
  routes_.push_back(std::move(r));
  std::stable_sort(routes_.begin(), routes_.end(),
                   [](const auto& a, const auto& b) { return a->Specificity() > b->Specificity(); });
  return Status::Ok();
}

Status Router::AddWebSocket(std::string_view pattern, WebSocketHandler handler) {
  CHORUS_ASSIGN_OR_RETURN(auto segs, ParsePattern(pattern));
  for (const auto& r : routes_) {
    if (r->websocket && r->pattern == pattern) return AlreadyExists("duplicate WebSocket route " + std::string(pattern));
  }
  auto r = std::make_unique<Route>();
  r->pattern = std::string(pattern);
  r->segments = std::move(segs);
  r->websocket = std::make_unique<WebSocketHandler>(std::move(handler));
  routes_.push_back(std::move(r));
  std::stable_sort(routes_.begin(), routes_.end(),
                   [](const auto& a, const auto& b) { return a->Specificity() > b->Specificity(); });
  return Status::Ok();
}

Router::Match Router::Find(std::string_view method, std::string_view raw_path, bool websocket_upgrade) const {
  Match m;
  // Split first, decode each segment after, so an encoded '/' (%2F) stays inside its segment.
  std::vector<std::string> decoded;
  for (std::string_view raw : SplitPath(raw_path)) {
    auto segment = PercentDecode(raw, false);
    if (!segment.ok()) {
      m.status = 400;
      return m;
    }
    decoded.push_back(std::move(*segment));
  }
  const std::vector<std::string_view> parts(decoded.begin(), decoded.end());
  std::vector<std::pair<std::string, std::string>> params;
  std::vector<std::string> allowed;
  bool websocket_only = false;
  for (const auto& r : routes_) {
    if (!r->Matches(parts, &params)) continue;
    if (r->websocket) {
      if (websocket_upgrade) {
        m.websocket = r->websocket.get();
        m.params = std::move(params);
        return m;
      }
      websocket_only = true;  // the path exists, but only as a WebSocket
      continue;
    }
    if (websocket_upgrade) continue;
    if (r->method == method || (method == "HEAD" && r->method == "GET")) {
      m.handler = &r->handler;
      m.parallel_pipelining = r->options.parallel_pipelining;
      m.params = std::move(params);
      return m;
    }
    allowed.push_back(r->method);
  }
  if (allowed.empty()) {
    m.status = websocket_only ? 426 : 404;
    return m;
  }
  std::sort(allowed.begin(), allowed.end());
  allowed.erase(std::unique(allowed.begin(), allowed.end()), allowed.end());
  m.status = 405;
  for (const auto& a : allowed) m.allow += (m.allow.empty() ? "" : ", ") + a;
  return m;
}

Result<std::string> PercentDecode(std::string_view in, bool plus_is_space) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return InvalidArgument("truncated percent-escape");
      const int hi = HexDigitValue(in[i + 1]);
      const int lo = HexDigitValue(in[i + 2]);
      if (hi < 0 || lo < 0) return InvalidArgument("bad percent-escape");
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

Result<std::vector<std::pair<std::string, std::string>>> ParseQuery(std::string_view query) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view part = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (part.empty()) continue;
    const size_t eq = part.find('=');
    CHORUS_ASSIGN_OR_RETURN(std::string key, PercentDecode(part.substr(0, eq), true));
    std::string value;
    if (eq != std::string_view::npos) {
      CHORUS_ASSIGN_OR_RETURN(value, PercentDecode(part.substr(eq + 1), true));
    }
    out.emplace_back(std::move(key), std::move(value));
  }
  return out;
}

}  // namespace chorus::net
