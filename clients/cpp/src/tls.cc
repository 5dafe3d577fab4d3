#include "rollmesh/tls.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "security.h"

namespace rollmesh {
namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

bool LoopbackAddress(const sockaddr* sa) {
  if (sa->sa_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr) >> 24) == 127;
  if (sa->sa_family == AF_INET6) {
    const in6_addr& a = reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&a)) return true;
    if (IN6_IS_ADDR_V4MAPPED(&a)) return a.s6_addr[12] == 127;
  }
  return false;
}

}  // namespace

TlsFiles TlsFiles::FromEnv() {
  TlsFiles t;
  t.cert = Env("ROLLMESH_TLS_CERT");
  t.key = Env("ROLLMESH_TLS_KEY");
  t.ca = Env("ROLLMESH_TLS_CA");
  return t;
}

void TlsFiles::Validate(bool server) const {
  if (cert.empty() != key.empty()) throw std::invalid_argument("give both --tls-cert and --tls-key, or neither");
  if (server && !ca.empty() && cert.empty())
    throw std::invalid_argument(
        "a server that checks its callers needs its own certificate: give --tls-cert and --tls-key");
  if (!cert.empty()) ReadPem(cert, "certificate");
  if (!key.empty()) ReadPem(key, "private key");
  if (!ca.empty()) ReadPem(ca, "CA bundle");
}

std::string ServerName(const std::string& kind) { return kind + ".rollmesh"; }

std::string ReadPem(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument("cannot read the " + what + " " + path + ": " + std::strerror(errno));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

namespace internal {

bool IsLoopback(const std::string& host_in) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) return false;
  if (host == "localhost") return true;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || !found) return false;
  bool all = true;
  for (addrinfo* a = found; a; a = a->ai_next) all = all && LoopbackAddress(a->ai_addr);
  freeaddrinfo(found);
  return all;
}

void CheckBind(const std::string& host, const std::string& what, const TlsFiles& tls, bool insecure) {
  if (IsLoopback(host) || (tls.enabled() && tls.authenticates())) return;
  std::string missing =
      tls.enabled() ? "caller authentication (--tls-ca)" : "TLS and caller authentication";
  if (!insecure)
    throw std::invalid_argument("refusing to serve " + what + " on " + host + " without " + missing +
                                ": anyone who reaches the address could use it. Give --tls-cert/--tls-key/--tls-ca "
                                "(`rollmesh certs init` makes them), or --insecure to accept the risk");
  std::fprintf(stderr, "rollmesh: serving %s on %s without %s (--insecure): anyone who reaches it can use it\n",
               what.c_str(), host.c_str(), missing.c_str());
}

}  // namespace internal
}  // namespace rollmesh
