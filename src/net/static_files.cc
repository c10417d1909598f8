#include "net/static_files.h"

#include <fstream>
#include <sstream>
#include <system_error>

namespace chorus::net {

std::string_view ContentTypeFor(const std::filesystem::path& file) {
  const std::string ext = file.extension().string();
  if (ext == ".html" || ext == ".htm") return "text/html; charset=utf-8";
  if (ext == ".js" || ext == ".mjs") return "text/javascript; charset=utf-8";
  if (ext == ".css") return "text/css; charset=utf-8";
  if (ext == ".json") return "application/json";
  if (ext == ".svg") return "image/svg+xml";
  if (ext == ".png") return "image/png";
  if (ext == ".jpg" || ext == ".jpeg") return "image/jpeg";
  if (ext == ".ico") return "image/x-icon";
  if (ext == ".txt") return "text/plain; charset=utf-8";
  if (ext == ".wasm") return "application/wasm";
  return "application/octet-stream";
}

HttpHandler StaticFiles(std::filesystem::path root) {
  std::error_code ec;
  auto canonical_root = std::filesystem::weakly_canonical(root, ec);
  if (ec) canonical_root = root;
  return [root = std::move(canonical_root)](HttpRequest& req, HttpResponder responder) {
    const std::filesystem::path rel(std::string(req.Param("path")));
    for (const auto& part : rel) {
      if (part == ".." || part.has_root_directory()) {
        return responder.Send(HttpResponse::Error(404, "not_found", "no such file"));
      }
    }
    std::error_code ec;
    std::filesystem::path file = std::filesystem::weakly_canonical(root / rel, ec);
    if (!ec && std::filesystem::is_directory(file, ec)) file /= "index.html";
    // Symlinks may not lead out of the root.
    const auto [r, f] = std::mismatch(root.begin(), root.end(), file.begin(), file.end());
    if (ec || r != root.end() || !std::filesystem::is_regular_file(file, ec)) {
      return responder.Send(HttpResponse::Error(404, "not_found", "no such file: /" + rel.string()));
    }
    std::ifstream in(file, std::ios::binary);
    std::ostringstream body;
    body << in.rdbuf();
    if (!in.good() && !in.eof()) {
      return responder.Send(HttpResponse::Error(500, "internal", "cannot read file"));
    }
    HttpResponse res;
    res.status = 200;
    res.content_type = std::string(ContentTypeFor(file));
    res.body = std::move(body).str();
    res.headers.emplace_back("Cache-Control", "no-cache");
    responder.Send(std::move(res));
  };
}

}  // namespace chorus::net
