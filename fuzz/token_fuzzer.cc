// Fuzzes bearer-token handling: TokenSigner::Verify, BearerToken and the strict base64url
// codec, with a fixed secret and a simulated clock (wall time 1'700'000'000, see
// SimulatedClock), so a seed token signed with kFuzzSecret verifies the same way every run.
//
// Every input is used four ways:
//   1. as a token: Verify never crashes and fails only with Unauthenticated, with a message
//      that does not echo a token-shaped input; if it succeeds, the claims pass ValidateClaims and
//      Sign(claims) verifies to the same claims, within kMaxTokenBytes.
//   2. as a token payload: the input is wrapped as base64url(HS256 header) "." base64url(input)
//      and signed with kFuzzSecret by this file (not by TokenSigner), so the claim parsing that
//      sits behind the signature check is reached with arbitrary JSON. Same checks as 1.
//   3. as an Authorization header: BearerToken fails only with Unauthenticated; a token it
//      returns points into the header, is a non-empty b64token and is found again in
//      "Bearer <token>".
//   4. as base64url text: decode ok => encode(decode(x)) == x (one accepted encoding per byte
//      string), and decode(encode(x)) == x for every byte string.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "base/clock.h"
#include "fuzz_check.h"
#include "net/token.h"

namespace chorus::net {
namespace {

using token_internal::Base64UrlDecode;
using token_internal::Base64UrlEncode;

// The seeds in fuzz/corpus/token were signed with this; changing it turns them into
// signature-mismatch cases.
constexpr std::string_view kFuzzSecret = "chorus-fuzz-secret-0123456789abcdef0123456789";

const TokenSigner& Signer() {
  static const TokenSigner* const kSigner = [] {
    Result<TokenSigner> s = TokenSigner::Create(std::string(kFuzzSecret));
    FUZZ_CHECK(s.ok(), s.status().message());
    return new TokenSigner(std::move(s).value());
  }();
  return *kSigner;
}

const Clock& FuzzClock() {
  static const SimulatedClock* const kClock = new SimulatedClock();
  return *kClock;
}

bool LooksLikeToken(std::string_view s) {
  for (char c : s) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

bool SameClaims(const TokenClaims& a, const TokenClaims& b) {
  return a.kind == b.kind && a.subject == b.subject && a.level == b.level && a.scopes == b.scopes &&
         a.issued_at == b.issued_at && a.expires_at == b.expires_at;
}

void CheckVerify(std::string_view token) {
  Result<TokenClaims> claims = Signer().Verify(token, FuzzClock());
  if (!claims.ok()) {
    const Status& st = claims.status();
    FUZZ_CHECK(st.code() == StatusCode::kUnauthenticated, st.ToString());
    FUZZ_CHECK(!st.message().empty());
    // "never the caller's bytes". Only checked for token-shaped input: the messages have no
    // 16-byte run of base64url characters, so a match is an echo, not a coincidence with the
    // wording (which the fuzzer otherwise learns and feeds back).
    if (token.size() >= 16 && LooksLikeToken(token)) {
      FUZZ_CHECK(st.message().find(token) == std::string::npos, st.message());
    }
    FUZZ_CHECK(st.message().find(kFuzzSecret) == std::string::npos, st.message());
    return;
  }
  const Status valid = ValidateClaims(*claims);
  FUZZ_CHECK(valid.ok(), valid.message());
  const int64_t now =
      std::chrono::floor<std::chrono::seconds>(FuzzClock().WallNow().time_since_epoch()).count();
  FUZZ_CHECK(!claims->expires_at || *claims->expires_at > now, "an expired token verified");

  const std::string resigned = Signer().Sign(*claims);
  FUZZ_CHECK(resigned.size() <= kMaxTokenBytes, resigned);
  Result<TokenClaims> again = Signer().Verify(resigned, FuzzClock());
  FUZZ_CHECK(again.ok(), again.status().message());
  FUZZ_CHECK(SameClaims(*again, *claims), resigned);
}

// header.payload.signature around `payload`, signed like TokenSigner::Sign does it.
std::string SignedToken(std::string_view payload) {
  std::string token = Base64UrlEncode(R"({"alg":"HS256","typ":"JWT"})");
  token += '.';
  token += Base64UrlEncode(payload);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), kFuzzSecret.data(), static_cast<int>(kFuzzSecret.size()),
       reinterpret_cast<const unsigned char*>(token.data()), token.size(), mac, &len);
  token += '.';
  token += Base64UrlEncode(std::string_view(reinterpret_cast<const char*>(mac), len));
  return token;
}

bool IsB64TokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~' || c == '+' || c == '/' || c == '=';
}

void CheckBearer(std::string_view header) {
  Result<std::string_view> token = BearerToken(header);
  if (!token.ok()) {
    FUZZ_CHECK(token.status().code() == StatusCode::kUnauthenticated, token.status().ToString());
    return;
  }
  const std::string_view t = *token;
  FUZZ_CHECK(!t.empty());
  FUZZ_CHECK(t.data() >= header.data() && t.data() + t.size() <= header.data() + header.size(),
             "token does not point into the header");
  for (char c : t) FUZZ_CHECK(IsB64TokenChar(c), t);
  FUZZ_CHECK(t.front() != '=', t);

  const std::string again_header = "Bearer " + std::string(t);
  Result<std::string_view> again = BearerToken(again_header);
  FUZZ_CHECK(again.ok(), again.status().message());
  FUZZ_CHECK(*again == t, again_header);
}

void CheckBase64(std::string_view in) {
  std::optional<std::string> decoded = Base64UrlDecode(in);
  if (decoded) {
    FUZZ_CHECK(Base64UrlEncode(*decoded) == in, "a non-canonical encoding was accepted");
  }
  const std::string encoded = Base64UrlEncode(in);
  std::optional<std::string> round = Base64UrlDecode(encoded);
  FUZZ_CHECK(round.has_value(), encoded);
  FUZZ_CHECK(*round == in, encoded);
}

}  // namespace
}  // namespace chorus::net

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  chorus::net::CheckVerify(in);
  chorus::net::CheckVerify(chorus::net::SignedToken(in));
  chorus::net::CheckBearer(in);
  chorus::net::CheckBase64(in);
  return 0;
}
