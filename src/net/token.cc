#include "net/token.h"

#include "base/text.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>

namespace chorus::net {
namespace {

using json = nlohmann::json;

constexpr size_t kHmacBytes = 32;  // SHA-256 output
constexpr std::string_view kAlphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// ---------------------------------------------------------------- claim rules


// The rules shared by ValidateClaims (InvalidArgument, for issuers) and Verify
// (Unauthenticated, for presenters). Empty string when the claims are fine.
std::string ClaimsProblem(const TokenClaims& c) {
  if (c.subject.empty()) return "subject is empty";
  if (c.subject.size() > kMaxSubjectBytes) {
    return "subject is longer than " + std::to_string(kMaxSubjectBytes) + " bytes";
  }
  if (!IsValidUtf8(c.subject)) return "subject is not valid UTF-8";
  for (char ch : c.subject) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7F) return "subject contains control characters";
  }
  if (c.issued_at < 0) return "issued-at is negative";
  if (c.expires_at && *c.expires_at <= c.issued_at) return "token expires before it was issued";
  switch (c.kind) {
    case TokenClaims::Kind::kUser:
      if (c.level < 0) return "user level is negative";
      if (!c.expires_at) return "user tokens must expire";
      if (!c.scopes.empty()) return "user tokens carry no scopes";
      break;
    case TokenClaims::Kind::kService:
      if (c.level != 0) return "service tokens carry no level";
      if (c.scopes.empty()) return "service token has no scopes";
      if (c.scopes.size() > kMaxScopes) {
        return "more than " + std::to_string(kMaxScopes) + " scopes";
      }
      for (const std::string& s : c.scopes) {
        if (s.empty() || s.size() > kMaxScopeBytes) {
          return "scope length must be 1.." + std::to_string(kMaxScopeBytes) + " bytes";
        }
        for (char ch : s) {
          const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                          (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == ':' ||
                          ch == '/' || ch == '-';
          if (!ok) return "scope may contain only letters, digits and . _ : / -";
        }
      }
      break;
    default:
      return "unknown token kind";
  }
  return {};
}

// ---------------------------------------------------------------- encoding

std::string HexEncode(const unsigned char* data, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[data[i] >> 4]);
    out.push_back(kHex[data[i] & 0x0F]);
  }
  return out;
}

// Never throws: strings that are not valid UTF-8 (only possible if ValidateClaims was skipped)
// are written with U+FFFD rather than aborting the signer.
std::string DumpJson(const json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/false, json::error_handler_t::replace);
}

// ---------------------------------------------------------------- JSON claim readers

bool ReadInt64(const json& v, int64_t* out) {
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
    *out = static_cast<int64_t>(u);
    return true;
  }
  if (v.is_number_integer()) {
    *out = v.get<int64_t>();
    return true;
  }
  return false;  // floats, strings, ...: NumericDates here are whole seconds
}

// Parses `text` as a JSON object without exceptions; nullopt if it is anything else.
std::optional<json> ParseObject(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  return j;
}

Status Malformed(std::string_view what) {
  return Unauthenticated("malformed token: " + std::string(what));
}

Result<TokenClaims> ClaimsFromPayload(const json& p) {
  TokenClaims c;

  auto sub = p.find("sub");
  if (sub == p.end()) return Malformed("missing claim 'sub'");
  if (!sub->is_string()) return Malformed("claim 'sub' is not a string");
  c.subject = sub->get<std::string>();

  auto kind = p.find("kind");
  if (kind == p.end()) return Malformed("missing claim 'kind'");
  if (!kind->is_string()) return Malformed("claim 'kind' is not a string");
  const auto& kind_name = kind->get_ref<const std::string&>();
  if (kind_name == "user") {
    c.kind = TokenClaims::Kind::kUser;
  } else if (kind_name == "service") {
    c.kind = TokenClaims::Kind::kService;
  } else {
    return Malformed("claim 'kind' must be \"user\" or \"service\"");
  }

  auto iat = p.find("iat");
  if (iat == p.end()) return Malformed("missing claim 'iat'");
  if (!ReadInt64(*iat, &c.issued_at)) return Malformed("claim 'iat' is not an integer");

  if (auto exp = p.find("exp"); exp != p.end()) {
    int64_t v = 0;
    if (!ReadInt64(*exp, &v)) return Malformed("claim 'exp' is not an integer");
    c.expires_at = v;
  }

  auto lvl = p.find("lvl");
  auto scope = p.find("scope");
  if (c.kind == TokenClaims::Kind::kUser) {
    if (scope != p.end()) return Malformed("user token carries 'scope'");
    if (lvl != p.end()) {
      int64_t v = 0;
      if (!ReadInt64(*lvl, &v) || v < 0 || v > std::numeric_limits<int>::max()) {
        return Malformed("claim 'lvl' is not a non-negative integer");
      }
      c.level = static_cast<int>(v);
    }
  } else {
    if (lvl != p.end()) return Malformed("service token carries 'lvl'");
    if (scope == p.end()) return Malformed("missing claim 'scope'");
    if (!scope->is_array()) return Malformed("claim 'scope' is not an array");
    if (scope->size() > kMaxScopes) return Malformed("too many scopes");
    for (const json& s : *scope) {
      if (!s.is_string()) return Malformed("claim 'scope' holds a non-string");
      c.scopes.push_back(s.get<std::string>());
    }
  }

  if (std::string problem = ClaimsProblem(c); !problem.empty()) return Malformed(problem);
  return c;
}

// ---------------------------------------------------------------- secret file

std::string Errno(int e) { return std::strerror(e); }

// Closes a descriptor on every path out of a scope.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  // Closes now and reports the error close() saw (for written files).
  int Close() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

// NotFound if the file does not exist (so the caller creates it).
Result<std::string> ReadSecret(const std::filesystem::path& path) {
  const std::string name = path.string();
  // Symlinks are followed on purpose: secret mounts (Kubernetes, Docker) are symlinks.
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    const int e = errno;
    if (e == ENOENT) return NotFound("secret file " + name + " does not exist");
    return Internal("cannot open secret file " + name + ": " + Errno(e));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return Internal("cannot stat secret file " + name + ": " + Errno(errno));
  }
  if (!S_ISREG(st.st_mode))
    return FailedPrecondition("secret file " + name + " is not a regular file");
  if ((st.st_mode & 0077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return FailedPrecondition("secret file " + name + " is accessible to group or others (mode " +
                              mode + "); it must be readable by its owner only: chmod 600 " + name);
  }

  constexpr size_t kMaxFileBytes = 4096;
  std::string content;
  char buf[1024];
  while (true) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Internal("cannot read secret file " + name + ": " + Errno(errno));
    }
    if (n == 0) break;
    content.append(buf, static_cast<size_t>(n));
    if (content.size() > kMaxFileBytes) {
      OPENSSL_cleanse(content.data(), content.size());
      return FailedPrecondition("secret file " + name + " is larger than " +
                                std::to_string(kMaxFileBytes) + " bytes");
    }
  }
  OPENSSL_cleanse(buf, sizeof buf);
  while (!content.empty() && (content.back() == '\n' || content.back() == '\r' ||
                              content.back() == ' ' || content.back() == '\t')) {
    content.pop_back();
  }
  if (content.empty()) return FailedPrecondition("secret file " + name + " is empty");
  if (content.size() < kMinSecretBytes) {
    return FailedPrecondition("secret file " + name + " is too short (" +
                              std::to_string(content.size()) + " bytes; need at least " +
                              std::to_string(kMinSecretBytes) + ")");
  }
  return content;
}

bool WriteAll(int fd, std::string_view data) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Writes a fresh secret to a private temporary file, then hard-links it into place. link()
// never replaces an existing name, so of racing creators exactly one wins and nobody ever sees
// a half-written secret. AlreadyExists if another creator won.
Result<std::string> CreateSecret(const std::filesystem::path& data_dir,
                                 const std::filesystem::path& path) {
  unsigned char raw[32];
  unsigned char tag[8];
  if (RAND_bytes(raw, sizeof raw) != 1 || RAND_bytes(tag, sizeof tag) != 1) {
    return Internal("cannot generate a token secret: RAND_bytes failed");
  }
  std::string secret = HexEncode(raw, sizeof raw);
  OPENSSL_cleanse(raw, sizeof raw);
  const std::filesystem::path tmp = data_dir / (".secret.tmp." + HexEncode(tag, sizeof tag));

  Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0) {
    return Internal("cannot create " + tmp.string() + ": " + Errno(errno));
  }
  std::string content = secret + "\n";
  const bool written = WriteAll(fd.get(), content) && ::fsync(fd.get()) == 0;
  const int write_errno = errno;
  OPENSSL_cleanse(content.data(), content.size());
  if (!written || fd.Close() != 0) {
    const int e = written ? errno : write_errno;
    ::unlink(tmp.c_str());
    return Internal("cannot write " + tmp.string() + ": " + Errno(e));
  }
  const int link_rc = ::link(tmp.c_str(), path.c_str());
  const int link_errno = errno;
  ::unlink(tmp.c_str());
  if (link_rc != 0) {
    if (link_errno == EEXIST) return AlreadyExists("secret file " + path.string() + " exists");
    return Internal("cannot create secret file " + path.string() + ": " + Errno(link_errno));
  }
  // Make the new name durable; a failure here loses nothing that a restart would not recreate.
  Fd dir(::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() >= 0) (void)::fsync(dir.get());
  return secret;
}

// ---------------------------------------------------------------- bearer header

bool IsOws(char c) { return c == ' ' || c == '\t'; }

std::string_view TrimOws(std::string_view s) {
  while (!s.empty() && IsOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsOws(s.back())) s.remove_suffix(1);
  return s;
}

// RFC 6750 b64token: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then "="s.
bool IsB64Token(std::string_view s) {
  size_t i = 0;
  for (; i < s.size(); ++i) {
    const char c = s[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/';
    if (!ok) break;
  }
  if (i == 0) return false;
  for (; i < s.size(); ++i) {
    if (s[i] != '=') return false;
  }
  return true;
}

}  // namespace

// ==================================================================== public API

namespace token_internal {

std::string Base64UrlEncode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() * 4 + 2) / 3);
  size_t i = 0;
  auto at = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[k])); };
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = (at(i) << 16) | (at(i + 1) << 8) | at(i + 2);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
    out.push_back(kAlphabet[v & 63]);
  }
  const size_t rest = bytes.size() - i;
  if (rest == 1) {
    const uint32_t v = at(i) << 16;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
  } else if (rest == 2) {
    const uint32_t v = (at(i) << 16) | (at(i + 1) << 8);
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(kAlphabet[(v >> 6) & 63]);
  }
  return out;
}

std::optional<std::string> Base64UrlDecode(std::string_view text) {
  if (text.size() % 4 == 1) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    const int v = value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  // Leftover bits (2 or 4) must be zero, or two texts would decode to the same bytes.
  if ((acc & ((1u << bits) - 1)) != 0) return std::nullopt;
  return out;
}

}  // namespace token_internal

using token_internal::Base64UrlDecode;
using token_internal::Base64UrlEncode;

bool TokenClaims::HasScope(std::string_view scope) const {
  return std::find(scopes.begin(), scopes.end(), scope) != scopes.end();
}

std::string_view TokenKindName(TokenClaims::Kind kind) {
  return kind == TokenClaims::Kind::kService ? "service" : "user";
}

Status ValidateClaims(const TokenClaims& claims) {
  if (std::string problem = ClaimsProblem(claims); !problem.empty()) {
    return InvalidArgument("invalid token claims: " + problem);
  }
  return Status::Ok();
}

Result<TokenSigner> TokenSigner::Create(std::string secret) {
  if (secret.size() < kMinSecretBytes) {
    return InvalidArgument("token secret is too short (" + std::to_string(secret.size()) +
                           " bytes; need at least " + std::to_string(kMinSecretBytes) + ")");
  }
  return TokenSigner(std::move(secret));
}

TokenSigner::~TokenSigner() { OPENSSL_cleanse(key_.data(), key_.size()); }

namespace {
// HMAC-SHA256 into `out`. A caller-supplied buffer keeps HMAC() off its static one, which is
// what makes concurrent Sign/Verify safe.
void Mac(std::string_view key, std::string_view data, unsigned char out[kHmacBytes]) {
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
}
}  // namespace

std::string TokenSigner::Sign(const TokenClaims& claims) const {
  json payload = json::object();
  payload["sub"] = claims.subject;
  payload["kind"] = std::string(TokenKindName(claims.kind));
  if (claims.kind == TokenClaims::Kind::kUser) {
    payload["lvl"] = claims.level;
  } else {
    payload["scope"] = claims.scopes;
  }
  payload["iat"] = claims.issued_at;
  if (claims.expires_at) payload["exp"] = *claims.expires_at;

  static const std::string kHeader = Base64UrlEncode(R"({"alg":"HS256","typ":"JWT"})");
  std::string token = kHeader;
  token += '.';
  token += Base64UrlEncode(DumpJson(payload));
  unsigned char mac[kHmacBytes];
  Mac(key_, token, mac);
  token += '.';
  token += Base64UrlEncode(std::string_view(reinterpret_cast<const char*>(mac), sizeof mac));
  return token;
}

namespace {

// The tokens a thread verified lately, for one secret at a time: a service calls with the same
// token again and again, and a verification (two base64 decodes, two JSON parses, an HMAC) costs
// more than the request it guards. Only tokens that passed are kept; expiry is checked on every
// hit; a thread verifying for another secret starts over.
struct VerifyCache {
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  static constexpr size_t kEntries = 256;
  // std::hash of the key the entries were verified with: the key itself is not copied (the
  // signer wipes it); two random secrets hashing alike is a 2^-64 chance.
  size_t secret = 0;
  std::unordered_map<std::string, TokenClaims, Hash, std::equal_to<>> verified;
};

VerifyCache& ThreadVerifyCache() {
  thread_local VerifyCache cache;
  return cache;
}

bool Expired(const TokenClaims& claims, const Clock& clock) {
  if (!claims.expires_at) return false;
  const int64_t now = std::chrono::floor<std::chrono::seconds>(clock.WallNow().time_since_epoch()).count();
  return now >= *claims.expires_at;
}

}  // namespace

Result<TokenClaims> TokenSigner::Verify(std::string_view token, const Clock& clock) const {
  if (token.empty()) return Unauthenticated("missing token");
  if (token.size() > kMaxTokenBytes) {
    return Unauthenticated("token too long (over " + std::to_string(kMaxTokenBytes) + " bytes)");
  }
  VerifyCache& cache = ThreadVerifyCache();
  if (cache.secret != key_hash_) {
    cache.verified.clear();
    cache.secret = key_hash_;
  }
  if (auto it = cache.verified.find(token); it != cache.verified.end()) {
    if (!Expired(it->second, clock)) return it->second;
    cache.verified.erase(it);
    return Unauthenticated("token expired");
  }
  Result<TokenClaims> claims = VerifyUncached(token, clock);
  if (claims.ok()) {
    if (cache.verified.size() >= VerifyCache::kEntries) cache.verified.clear();
    cache.verified.emplace(std::string(token), *claims);
  }
  return claims;
}

Result<TokenClaims> TokenSigner::VerifyUncached(std::string_view token, const Clock& clock) const {
  const size_t dot1 = token.find('.');
  const size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return Malformed("expected three dot-separated parts");
  }
  const std::string_view header_text = token.substr(0, dot1);
  const std::string_view payload_text = token.substr(dot1 + 1, dot2 - dot1 - 1);
  const std::string_view signature_text = token.substr(dot2 + 1);

  try {
    // Header first: the algorithm is ours to choose, so anything but HS256 is refused before
    // the signature is looked at.
    std::optional<std::string> header_bytes = Base64UrlDecode(header_text);
    if (!header_bytes) return Malformed("header is not base64url");
    std::optional<json> header = ParseObject(*header_bytes);
    if (!header) return Malformed("header is not a JSON object");
    auto alg = header->find("alg");
    if (alg == header->end() || !alg->is_string() ||
        alg->get_ref<const std::string&>() != "HS256") {
      return Unauthenticated("unsupported token algorithm: only HS256 is accepted");
    }
    if (header->contains("crit")) return Malformed("unsupported critical header extensions");

    std::optional<std::string> signature = Base64UrlDecode(signature_text);
    if (!signature) return Malformed("signature is not base64url");
    unsigned char expected[kHmacBytes];
    Mac(key_, token.substr(0, dot2), expected);
    if (signature->size() != kHmacBytes ||
        CRYPTO_memcmp(signature->data(), expected, kHmacBytes) != 0) {
      return Unauthenticated("token signature mismatch");
    }

    // Only signed bytes from here on.
    std::optional<std::string> payload_bytes = Base64UrlDecode(payload_text);
    if (!payload_bytes) return Malformed("payload is not base64url");
    std::optional<json> payload = ParseObject(*payload_bytes);
    if (!payload) return Malformed("payload is not a JSON object");
    Result<TokenClaims> claims = ClaimsFromPayload(*payload);
    if (!claims.ok()) return claims;

    if (Expired(*claims, clock)) return Unauthenticated("token expired");
    return claims;
  } catch (const std::exception&) {
    // The JSON calls above are the non-throwing kinds; this is a backstop (e.g. bad_alloc).
    return Malformed("cannot decode");
  }
}

Status RequireScope(const TokenClaims& claims, std::string_view scope) {
  if (claims.kind == TokenClaims::Kind::kService && claims.HasScope(scope)) return Status::Ok();
  std::string message = "token lacks scope '" + std::string(scope) + "'";
  if (claims.kind == TokenClaims::Kind::kUser) message += " (user tokens carry no scopes)";
  return PermissionDenied(std::move(message));
}

Result<std::string_view> BearerToken(std::string_view authorization_header) {
  const std::string_view h = TrimOws(authorization_header);
  if (h.empty()) return Unauthenticated("missing Authorization header");
  size_t scheme_end = 0;
  while (scheme_end < h.size() && !IsOws(h[scheme_end])) ++scheme_end;
  const std::string_view scheme = h.substr(0, scheme_end);
  constexpr std::string_view kBearer = "bearer";
  const bool is_bearer =
      scheme.size() == kBearer.size() &&
      std::equal(scheme.begin(), scheme.end(), kBearer.begin(), [](char a, char b) {
        return (a >= 'A' && a <= 'Z' ? static_cast<char>(a - 'A' + 'a') : a) == b;
      });
  if (!is_bearer) return Unauthenticated("Authorization scheme must be Bearer");
  const std::string_view token = TrimOws(h.substr(scheme_end));
  if (token.empty()) return Unauthenticated("Authorization header has no bearer token");
  if (!IsB64Token(token)) return Unauthenticated("malformed bearer token");
  return token;
}

Result<std::string> LoadOrCreateSecret(const std::filesystem::path& data_dir) {
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec)
    return Internal("cannot create data directory " + data_dir.string() + ": " + ec.message());
  const std::filesystem::path path = data_dir / "secret";

  Result<std::string> existing = ReadSecret(path);
  if (existing.ok() || existing.status().code() != StatusCode::kNotFound) return existing;
  Result<std::string> created = CreateSecret(data_dir, path);
  if (created.ok() || created.status().code() != StatusCode::kAlreadyExists) return created;
  return ReadSecret(path);  // another process or thread created it first: use theirs
}

}  // namespace chorus::net
