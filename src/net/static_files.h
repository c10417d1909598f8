// Serves files under a root directory (the web demo) for GET/HEAD "/{path...}" routes.
//
// Paths are resolved inside the root only: "..", absolute components and symlinks leading out of
// the root answer 404. A directory serves its index.html. Files are read on the connection's
// shard; they are small demo assets, not a CDN. Content-Type comes from the extension.
#pragma once

#include <filesystem>

#include "net/http.h"

namespace chorus::net {

// The handler expects the route parameter "path" (register as "/{path...}").
HttpHandler StaticFiles(std::filesystem::path root);

std::string_view ContentTypeFor(const std::filesystem::path& file);

}  // namespace chorus::net
