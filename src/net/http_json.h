// JSON bodies for HTTP handlers. Separate from http.h so only handlers that speak JSON pay for
// nlohmann's header.
#pragma once

#include <nlohmann/json.hpp>

#include "base/status.h"
#include "net/http.h"

namespace chorus::net {

// Parses the request body as a JSON object. Errors (as InvalidArgument, so they answer 400):
// a Content-Type other than application/json (absent is accepted), an empty body, invalid JSON
// (with the byte offset), or a top-level value that is not an object. Never throws.
Result<nlohmann::json> ParseJsonBody(const HttpRequest& request);

// A response whose body is `value` serialized (invalid UTF-8 replaced, never throws).
HttpResponse JsonResponse(int status, const nlohmann::json& value);

}  // namespace chorus::net
