#include "http_load.h"

#include "base/text.h"

#include <netinet/in.h>

#include <algorithm>
#include <charconv>
#include <thread>
#include <vector>

#include "http_closed_loop.h"

namespace chorus::bench {

// ---------------------------------------------------------------------------------------------
// URL

Result<HttpUrl> ParseHttpUrl(std::string_view url) {
  constexpr std::string_view kScheme = "http://";
  if (url.substr(0, kScheme.size()) != kScheme) {
    return InvalidArgument("url must start with http:// (got '" + std::string(url) + "')");
  }
  std::string_view rest = url.substr(kScheme.size());
  const size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  HttpUrl out;
  if (slash != std::string_view::npos) {
    // "?q" alone means "/?q". (Built by appending: GCC 12's -Wrestrict misfires on insert().)
    out.target.clear();
    if (rest[slash] == '?') out.target.push_back('/');
    out.target.append(rest.substr(slash));
  }
  if (authority.empty() || authority.find('@') != std::string_view::npos ||
      authority.front() == '[') {
    return InvalidArgument("unsupported host in url '" + std::string(url) + "'");
  }
  const size_t colon = authority.rfind(':');
  if (colon != std::string_view::npos) {
    std::string_view port = authority.substr(colon + 1);
    unsigned value = 0;
    const auto [end, err] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || err != std::errc() || end != port.data() + port.size() || value == 0 ||
        value > 65535) {
      return InvalidArgument("bad port in url '" + std::string(url) + "'");
    }
    out.port = static_cast<uint16_t>(value);
    authority = authority.substr(0, colon);
  }
  if (authority.empty()) return InvalidArgument("missing host in url '" + std::string(url) + "'");
  out.host = std::string(authority);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Response parser

namespace {

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

bool ContainsTokenIgnoreCase(std::string_view haystack, std::string_view token) {
  if (token.size() > haystack.size()) return false;
  for (size_t i = 0; i + token.size() <= haystack.size(); ++i) {
    if (EqualsIgnoreCase(haystack.substr(i, token.size()), token)) return true;
  }
  return false;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}


}  // namespace

HttpResponseParser::HttpResponseParser() { head_.reserve(512); }

void HttpResponseParser::Reset() {
  phase_ = Phase::kHead;
  started_ = false;
  head_.clear();
  status_ = 0;
  close_after_ = false;
  remaining_ = 0;
  body_bytes_ = 0;
  body_.clear();
  chunk_size_ = 0;
  chunk_size_digits_ = false;
  chunk_size_ext_ = false;
  trailer_line_ = 0;
}

HttpResponseParser::State HttpResponseParser::ParseHead() {
  // head_ holds the status line and headers, ending in "\r\n\r\n".
  std::string_view head(head_);
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  // "HTTP/1.1 200 OK"
  if (line.size() < 12 || line.substr(0, 7) != "HTTP/1." || line[8] != ' ') return State::kError;
  const bool http10 = line[7] == '0';
  int status = 0;
  for (int i = 9; i < 12; ++i) {
    if (line[i] < '0' || line[i] > '9') return State::kError;
    status = status * 10 + (line[i] - '0');
  }
  if (line.size() > 12 && line[12] != ' ') return State::kError;
  status_ = status;

  bool has_length = false;
  uint64_t length = 0;
  bool chunked = false;
  bool conn_close = false;
  bool conn_keep_alive = false;
  size_t pos = eol + 2;
  while (pos < head.size()) {
    eol = head.find("\r\n", pos);
    if (eol == std::string_view::npos) return State::kError;
    line = head.substr(pos, eol - pos);
    pos = eol + 2;
    if (line.empty()) break;
    const size_t colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return State::kError;
    const std::string_view name = line.substr(0, colon);
    const std::string_view value = Trim(line.substr(colon + 1));
    if (EqualsIgnoreCase(name, "content-length")) {
      uint64_t v = 0;
      const auto [end, err] = std::from_chars(value.data(), value.data() + value.size(), v);
      if (value.empty() || err != std::errc() || end != value.data() + value.size()) {
        return State::kError;
      }
      if (has_length && v != length) return State::kError;
      has_length = true;
      length = v;
    } else if (EqualsIgnoreCase(name, "transfer-encoding")) {
      chunked = ContainsTokenIgnoreCase(value, "chunked");
    } else if (EqualsIgnoreCase(name, "connection")) {
      conn_close = conn_close || ContainsTokenIgnoreCase(value, "close");
      conn_keep_alive = conn_keep_alive || ContainsTokenIgnoreCase(value, "keep-alive");
    }
  }
  close_after_ = conn_close || (http10 && !conn_keep_alive);

  if (status >= 100 && status < 200) {
    if (status == 101) return State::kError;  // an upgrade is not an HTTP response we can time
    // Interim response (100 Continue, 103 Early Hints): the real one follows.
    head_.clear();
    return State::kNeedMore;
  }
  if (status == 204 || status == 304) {
    phase_ = Phase::kDone;
    return State::kComplete;
  }
  if (chunked) {
    phase_ = Phase::kChunkSize;
    return State::kNeedMore;
  }
  if (has_length) {
    remaining_ = length;
    phase_ = length == 0 ? Phase::kDone : Phase::kBody;
    return length == 0 ? State::kComplete : State::kNeedMore;
  }
  phase_ = Phase::kUntilClose;
  close_after_ = true;
  return State::kNeedMore;
}

HttpResponseParser::State HttpResponseParser::Feed(const char* data, size_t len, size_t* consumed) {
  size_t off = 0;
  if (len > 0) started_ = true;
  while (off < len) {
    switch (phase_) {
      case Phase::kHead: {
        const size_t before = head_.size();
        const size_t take = std::min(len - off, kMaxHeaderBytes + 4 - before);
        head_.append(data + off, take);
        const size_t from = before >= 3 ? before - 3 : 0;
        const size_t end = head_.find("\r\n\r\n", from);
        if (end == std::string::npos) {
          if (head_.size() > kMaxHeaderBytes) return State::kError;
          off += take;
          break;
        }
        const size_t head_len = end + 4;
        off += head_len - before;
        head_.resize(head_len);
        const State s = ParseHead();
        if (s == State::kError) return s;
        if (s == State::kComplete) {
          *consumed = off;
          return s;
        }
        break;  // body (or the next head after an interim response) follows
      }
      case Phase::kBody: {
        const uint64_t take = std::min<uint64_t>(remaining_, len - off);
        KeepBody(data + off, take);
        remaining_ -= take;
        body_bytes_ += take;
        off += take;
        if (remaining_ == 0) {
          phase_ = Phase::kDone;
          *consumed = off;
          return State::kComplete;
        }
        break;
      }
      case Phase::kUntilClose:
        KeepBody(data + off, len - off);
        body_bytes_ += len - off;
        off = len;
        break;
      case Phase::kDone:
        // Bytes after a complete response belong to the next one; the caller must Reset().
        *consumed = off;
        return State::kComplete;
      default: {
        size_t used = 0;
        const State s = FeedChunked(data + off, len - off, &used);
        off += used;
        if (s != State::kNeedMore) {
          *consumed = off;
          return s;
        }
        break;
      }
    }
  }
  *consumed = off;
  return phase_ == Phase::kDone ? State::kComplete : State::kNeedMore;
}

HttpResponseParser::State HttpResponseParser::FeedChunked(const char* data, size_t len,
                                                          size_t* consumed) {
  size_t off = 0;
  while (off < len) {
    const char c = data[off];
    switch (phase_) {
      case Phase::kChunkSize:
        ++off;
        if (c == '\n') {
          if (!chunk_size_digits_) return State::kError;
          if (chunk_size_ == 0) {
            phase_ = Phase::kTrailer;
            trailer_line_ = 0;
          } else {
            remaining_ = chunk_size_;
            phase_ = Phase::kChunkData;
          }
          chunk_size_ = 0;
          chunk_size_digits_ = chunk_size_ext_ = false;
        } else if (chunk_size_ext_) {
          // skipping "; ext=value" or the '\r'
        } else if (const int v = HexDigitValue(c); v >= 0) {
          if (chunk_size_ >> 56) return State::kError;  // absurd size: refuse, do not overflow
          chunk_size_ = chunk_size_ * 16 + static_cast<uint64_t>(v);
          chunk_size_digits_ = true;
        } else if (c == ';' || c == ' ' || c == '\t' || c == '\r') {
          chunk_size_ext_ = true;
        } else {
          return State::kError;
        }
        break;
      case Phase::kChunkData: {
        const uint64_t take = std::min<uint64_t>(remaining_, len - off);
        KeepBody(data + off, take);
        remaining_ -= take;
        body_bytes_ += take;
        off += take;
        if (remaining_ == 0) phase_ = Phase::kChunkDataEnd;
        break;
      }
      case Phase::kChunkDataEnd:
        ++off;
        if (c == '\n') {
          phase_ = Phase::kChunkSize;
        } else if (c != '\r') {
          return State::kError;
        }
        break;
      case Phase::kTrailer:
        ++off;
        if (c == '\n') {
          if (trailer_line_ == 0) {
            phase_ = Phase::kDone;
            *consumed = off;
            return State::kComplete;
          }
          trailer_line_ = 0;
        } else if (c != '\r') {
          if (++trailer_line_ > kMaxHeaderBytes) return State::kError;
        }
        break;
      default:
        return State::kError;
    }
  }
  *consumed = off;
  return State::kNeedMore;
}

HttpResponseParser::State HttpResponseParser::OnEof() {
  if (phase_ == Phase::kUntilClose) {
    phase_ = Phase::kDone;
    return State::kComplete;
  }
  return phase_ == Phase::kDone ? State::kComplete : State::kError;
}

// ---------------------------------------------------------------------------------------------
// Load generator

void HttpLoadResult::Merge(const HttpLoadResult& other) {
  requests += other.requests;
  non_2xx += other.non_2xx;
  connect_errors += other.connect_errors;
  read_errors += other.read_errors;
  write_errors += other.write_errors;
  timeout_errors += other.timeout_errors;
  parse_errors += other.parse_errors;
  reconnects += other.reconnects;
  bytes_read += other.bytes_read;
  elapsed_s = std::max(elapsed_s, other.elapsed_s);
  latency.Merge(other.latency);
}

Measurement HttpLoadResult::ToMeasurement(std::string system) const {
  Measurement m;
  m.system = std::move(system);
  m.throughput = requests_per_second();
  m.unit = "req/s";
  m.duration_s = elapsed_s;
  m.counts = {
      {"requests", requests},
      {"non_2xx", non_2xx},
      {"socket_errors", socket_errors()},
      {"connect_errors", connect_errors},
      {"read_errors", read_errors},
      {"write_errors", write_errors},
      {"timeout_errors", timeout_errors},
      {"parse_errors", parse_errors},
      {"reconnects", reconnects},
      {"bytes_read", bytes_read},
  };
  m.latency = latency;
  return m;
}

namespace {

// A fixed GET, counted.
class FixedRequestWorkload final : public HttpWorkload {
 public:
  explicit FixedRequestWorkload(const std::string& request) : request_(request) {}

  bool NextRequest(size_t /*stream*/, int64_t /*now_ns*/, std::string* request) override {
    if (request->empty()) *request = request_;  // the engine keeps it between requests
    return true;
  }
  void OnResponse(size_t /*stream*/, int status, std::string_view /*body*/, int64_t latency_ns,
                  bool recorded) override {
    if (!recorded) return;
    ++result.requests;
    if (status < 200 || status > 299) ++result.non_2xx;
    result.latency.Record(latency_ns);
  }

  HttpLoadResult result;

 private:
  const std::string& request_;
};

}  // namespace

Result<HttpLoadResult> RunHttpLoad(const HttpLoadOptions& options) {
  CHORUS_ASSIGN_OR_RETURN(HttpUrl url, ParseHttpUrl(options.url));
  if (options.connections < 1) return InvalidArgument("--connections must be at least 1");
  if (options.threads < 1) return InvalidArgument("--threads must be at least 1");
  if (options.duration <= std::chrono::nanoseconds::zero()) {
    return InvalidArgument("--duration must be positive");
  }
  CHORUS_RETURN_IF_ERROR(CheckOpenFileLimit(options.connections, "--connections"));
  CHORUS_ASSIGN_OR_RETURN(sockaddr_in addr, ResolveIpv4(url.host, url.port));

  const std::string request = "GET " + url.target + " HTTP/1.1\r\nHost: " + url.host + ":" +
                              std::to_string(url.port) + "\r\nUser-Agent: chorus-bench\r\n\r\n";
  const int threads = std::min(options.threads, options.connections);
  const int64_t start = SteadyNowNanos();
  HttpLoopOptions loop;
  loop.addr = addr;
  loop.record_from_ns = start + options.warmup.count();
  loop.end_ns = loop.record_from_ns + options.duration.count();
  loop.timeout_ns = options.timeout.count();

  std::vector<HttpLoadResult> results(static_cast<size_t>(threads));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    HttpLoopOptions mine = loop;
    mine.connections = options.connections / threads + (t < options.connections % threads ? 1 : 0);
    pool.emplace_back([&request, &results, mine, t] {
      FixedRequestWorkload workload(request);
      const HttpLoopResult run = RunHttpClosedLoop(mine, workload);
      HttpLoadResult& r = results[static_cast<size_t>(t)];
      r = std::move(workload.result);
      const HttpLoopCounters& k = run.counters;
      r.connect_errors = k.connect_errors;
      r.read_errors = k.read_errors;
      r.write_errors = k.write_errors;
      r.timeout_errors = k.timeout_errors;
      r.parse_errors = k.parse_errors;
      r.reconnects = k.reconnects;
      r.bytes_read = k.bytes_read;
      r.elapsed_s = static_cast<double>(mine.end_ns - mine.record_from_ns) / 1e9;
    });
  }
  for (std::thread& th : pool) th.join();

  HttpLoadResult total;
  for (const HttpLoadResult& r : results) total.Merge(r);
  return total;
}

}  // namespace chorus::bench
