#include "net/http_json.h"

#include <strings.h>

namespace chorus::net {

Result<nlohmann::json> ParseJsonBody(const HttpRequest& request) {
  std::string_view type = request.Header("content-type");
  if (!type.empty()) {
    const std::string_view media = type.substr(0, type.find(';'));
    if (media.size() != 16 || strncasecmp(media.data(), "application/json", 16) != 0) {
      return InvalidArgument("expected Content-Type application/json, got '" + std::string(media) + "'");
    }
  }
  if (request.body.empty()) return InvalidArgument("request body is empty; expected a JSON object");
  nlohmann::json value = nlohmann::json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) {
    // Parse again with exceptions to learn where it failed; bounded by max_body_bytes.
    try {
      nlohmann::json again = nlohmann::json::parse(request.body);
      (void)again;
    } catch (const nlohmann::json::parse_error& e) {
      return InvalidArgument("request body is not valid JSON (at byte " + std::to_string(e.byte) + ")");
    }
    return InvalidArgument("request body is not valid JSON");
  }
  if (!value.is_object()) return InvalidArgument("request body must be a JSON object");
  return value;
}

HttpResponse JsonResponse(int status, const nlohmann::json& value) {
  return HttpResponse::Json(status, value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

}  // namespace chorus::net
