#include "base/duration.h"
#include "chorus/app.h"
#include "net/token.h"

namespace chorus::app {

Result<std::string> MakeToken(const TokenRequest& request) {
  if (request.data_dir.empty()) return InvalidArgument("--data-dir is required");
  if (request.user.empty() == request.service.empty()) {
    return InvalidArgument("give exactly one of --user ID or --service NAME");
  }
  net::TokenClaims claims;
  const int64_t now = SystemClock::Instance().WallMillis() / 1000;
  claims.issued_at = now;
  Duration ttl = std::chrono::hours(24);
  if (!request.ttl.empty()) {
    auto parsed = ParseDuration(request.ttl);
    if (!parsed.ok()) return InvalidArgument("--ttl: " + parsed.status().message());
    if (*parsed < std::chrono::seconds(1)) return InvalidArgument("--ttl must be at least 1s");
    ttl = *parsed;
  }
  if (!request.user.empty()) {
    if (!request.scopes.empty()) return InvalidArgument("--scope applies to --service tokens only");
    claims.kind = net::TokenClaims::Kind::kUser;
    claims.subject = request.user;
    claims.level = request.level;
  } else {
    if (request.level != 0) return InvalidArgument("--level applies to --user tokens only");
    if (request.scopes.empty()) return InvalidArgument("--service needs --scope SCOPE[,SCOPE]");
    claims.kind = net::TokenClaims::Kind::kService;
    claims.subject = request.service;
    claims.scopes = request.scopes;
  }
  if (!request.user.empty() || !request.ttl.empty()) {
    claims.expires_at = now + std::chrono::duration_cast<std::chrono::seconds>(ttl).count();
  }
  Status valid = net::ValidateClaims(claims);
  if (!valid.ok()) return valid;
  CHORUS_ASSIGN_OR_RETURN(std::string secret, net::LoadOrCreateSecret(request.data_dir));
  CHORUS_ASSIGN_OR_RETURN(net::TokenSigner signer, net::TokenSigner::Create(std::move(secret)));
  return signer.Sign(claims);
}

}  // namespace chorus::app
