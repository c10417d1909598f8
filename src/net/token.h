// Signed bearer tokens: who is calling and what it may do.
//
// Chorus authenticates HTTP requests (`Authorization: Bearer <token>`) and WebSocket upgrades
// (the same header, or `?token=<token>` for browsers that cannot set headers) with tokens that
// the server can check without a database: the claims travel inside the token and an HMAC over
// them, keyed by a per-installation secret, proves that this installation issued them.
//
// Two kinds of token:
//   - user tokens name a user id and carry a level (lvl); they always expire.
//   - service tokens name a service and carry the exact scopes it may use ("live.publish");
//     they may be issued without an expiry. Scopes match exactly: there are no wildcards.
//
// Format: JWT compact serialization (RFC 7519) signed with HS256, so standard tools can decode
// them: base64url(header) "." base64url(payload) "." base64url(HMAC-SHA256(key, first two
// parts)), base64url without padding. Header {"alg":"HS256","typ":"JWT"}; payload claims:
//   sub   string   user id or service name (1..kMaxSubjectBytes bytes, no control characters)
//   kind  string   "user" | "service"
//   lvl   integer  user level >= 0 (user tokens only)
//   scope [string] scopes (service tokens only; 1..kMaxScopes of [A-Za-z0-9._:/-]{1,64})
//   iat   integer  issued at, unix seconds
//   exp   integer  expiry, unix seconds; absent means never (service tokens only)
// Unknown claims and header fields are ignored, except `crit`, which is rejected.
//
// What Verify() checks, cheapest first, each failure an Unauthenticated Status whose message
// says what was wrong (never the secret, never the caller's bytes): length <= kMaxTokenBytes
// before anything else; exactly three parts; strict base64url (no padding, canonical trailing
// bits); the header is a JSON object whose alg is exactly "HS256" (so "none", "HS512", "RS256"
// are refused: the algorithm is fixed by the server, never chosen by the token); the signature,
// compared in constant time, before the payload is parsed; the payload is a JSON object with
// the claims above present with the right types (ValidateClaims' rules); and `exp` against
// Clock::WallNow() — a token is expired from its exp second on. Verify never throws and never
// crashes on arbitrary bytes.
//
// Threads: TokenSigner is immutable after Create(); Sign() and Verify() are safe from any thread
// concurrently. The free functions are stateless. LoadOrCreateSecret is safe against concurrent
// callers in this and other processes: every caller gets the same secret.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "base/status.h"

namespace chorus::net {

// Tokens longer than this are rejected before any decoding. Every claim set that passes
// ValidateClaims signs to a token within this bound.
inline constexpr size_t kMaxTokenBytes = 4096;
// HMAC keys shorter than this are refused (256 bits, the HS256 output size).
inline constexpr size_t kMinSecretBytes = 32;
inline constexpr size_t kMaxSubjectBytes = 256;
inline constexpr size_t kMaxScopeBytes = 64;
inline constexpr size_t kMaxScopes = 32;

struct TokenClaims {
  enum class Kind { kUser, kService };

  Kind kind = Kind::kUser;
  std::string subject;                // user id or service name
  int level = 0;                      // users only
  std::vector<std::string> scopes;    // services only; exact-match
  int64_t issued_at = 0;              // unix seconds
  std::optional<int64_t> expires_at;  // unix seconds; required for users

  bool HasScope(std::string_view scope) const;
};

// "user" or "service", as written in the `kind` claim.
std::string_view TokenKindName(TokenClaims::Kind kind);

// InvalidArgument unless `claims` would make a token that Verify accepts (ignoring expiry):
// subject non-empty, at most kMaxSubjectBytes, valid UTF-8 without control characters; users
// have level >= 0, an expiry and no scopes; services have level 0 and 1..kMaxScopes valid
// scopes; issued_at >= 0 and expires_at, if set, after issued_at. Call it before Sign() on
// anything that came from a person (the CLI's flags).
Status ValidateClaims(const TokenClaims& claims);

class TokenSigner {
 public:
  // `secret` is the HMAC key, used byte for byte (LoadOrCreateSecret's hex string as is).
  // InvalidArgument if shorter than kMinSecretBytes.
  static Result<TokenSigner> Create(std::string secret);

  TokenSigner(const TokenSigner&) = default;
  TokenSigner& operator=(const TokenSigner&) = default;
  TokenSigner(TokenSigner&&) = default;
  TokenSigner& operator=(TokenSigner&&) = default;
  ~TokenSigner();  // wipes the key

  // Signs `claims` as they are: a claim set that fails ValidateClaims produces a token that
  // Verify rejects. Writes lvl only for users and scope only for services.
  std::string Sign(const TokenClaims& claims) const;

  // The claims of a token this secret signed, or Unauthenticated ("token expired",
  // "token signature mismatch", "malformed token: ..."). See the top of this file. Each thread
  // remembers the last few hundred tokens it verified for this secret (expiry still checked on
  // every call), so a caller's repeated token costs a lookup.
  Result<TokenClaims> Verify(std::string_view token, const Clock& clock) const;

 private:
  Result<TokenClaims> VerifyUncached(std::string_view token, const Clock& clock) const;
  explicit TokenSigner(std::string key) : key_(std::move(key)), key_hash_(std::hash<std::string>{}(key_)) {}
  std::string key_;
  size_t key_hash_;  // names the secret in each thread's cache of verified tokens
};

// OK if `claims` is a service token carrying exactly `scope`; otherwise PermissionDenied
// "token lacks scope '<scope>'" (user tokens never pass: they carry no scopes).
Status RequireScope(const TokenClaims& claims, std::string_view scope);

// The token in an `Authorization` header value "Bearer <token>" (scheme case-insensitive,
// surrounding whitespace ignored). The view points into `authorization_header`.
// Unauthenticated if the header is empty, another scheme, or the token is missing or malformed.
Result<std::string_view> BearerToken(std::string_view authorization_header);

// The installation's token secret, DATA_DIR/secret. Creates `data_dir` if needed. On first use
// writes 32 random bytes from the OS CSPRNG, hex-encoded (64 characters and a newline), mode
// 0600, atomically: the file appears complete or not at all, and if another process or thread
// creates it first, its secret is returned. An existing file is read with trailing whitespace
// stripped; FailedPrecondition if it is accessible to group or others, not a regular file,
// empty or shorter than kMinSecretBytes; Internal on I/O errors.
Result<std::string> LoadOrCreateSecret(const std::filesystem::path& data_dir);

// Exposed for tests and tools; not part of the contract above.
namespace token_internal {
// base64url without padding (RFC 4648 §5).
std::string Base64UrlEncode(std::string_view bytes);
// Strict: rejects padding, characters outside the alphabet, impossible lengths and
// non-canonical trailing bits, so each byte string has exactly one accepted encoding.
std::optional<std::string> Base64UrlDecode(std::string_view text);
}  // namespace token_internal

}  // namespace chorus::net
