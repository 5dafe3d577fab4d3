// ListTasks page tokens (docs/protocol.md, "5. ListTasks"): opaque to clients, bound to one
// environment and split, so that a token of another listing, or a made-up one, is refused.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace rollmesh::internal {

std::string MakePageToken(const std::string& env, const std::string& split, int64_t offset);
// The offset `token` stands for, when it came from MakePageToken(env, split, ...) and the offset
// is within 0..total; nullopt otherwise. An empty token is offset 0.
std::optional<int64_t> PageOffset(const std::string& token, const std::string& env, const std::string& split,
                                  int64_t total);

std::string Base64UrlEncode(const std::string& bytes);
std::optional<std::string> Base64UrlDecode(const std::string& text);

}  // namespace rollmesh::internal
