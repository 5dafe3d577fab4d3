#include "page_token.h"

#include <cctype>

namespace rollmesh::internal {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
constexpr char kPrefix[] = "rollmesh-page:";  // format marker, so that other base64 text is refused

int Sextet(char c) {
  for (int i = 0; i < 64; ++i)
    if (kAlphabet[i] == c) return i;
  return -1;
}

}  // namespace

std::string Base64UrlEncode(const std::string& bytes) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : bytes) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out += kAlphabet[(acc << (6 - bits)) & 63];
  return out;  // unpadded
}

std::optional<std::string> Base64UrlDecode(const std::string& text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v = Sextet(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  if (bits >= 6 || (acc & ((1u << bits) - 1)) != 0) return std::nullopt;  // not canonical
  return out;
}

// The token is base64url("rollmesh-page:" OFFSET "\n" ENV "\n" SPLIT); only the server reads it.
std::string MakePageToken(const std::string& env, const std::string& split, int64_t offset) {
  return Base64UrlEncode(kPrefix + std::to_string(offset) + "\n" + env + "\n" + split);
}

std::optional<int64_t> PageOffset(const std::string& token, const std::string& env, const std::string& split,
                                  int64_t total) {
  if (token.empty()) return 0;
  auto text = Base64UrlDecode(token);
  const std::string prefix = kPrefix;
  if (!text || text->compare(0, prefix.size(), prefix) != 0) return std::nullopt;
  size_t nl = text->find('\n', prefix.size());
  if (nl == std::string::npos || nl == prefix.size() || nl - prefix.size() > 18) return std::nullopt;
  int64_t offset = 0;
  for (size_t i = prefix.size(); i < nl; ++i) {
    if (!std::isdigit(static_cast<unsigned char>((*text)[i]))) return std::nullopt;
    offset = offset * 10 + ((*text)[i] - '0');
  }
  if (text->substr(nl + 1) != env + "\n" + split || offset > total) return std::nullopt;
  return offset;
}

}  // namespace rollmesh::internal
