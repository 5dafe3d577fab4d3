// The server's command line: the same flags as every rollmesh environment server.
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

#include "rollmesh/server.h"

namespace rollmesh {
namespace {

double ParseNumber(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v))
    throw std::invalid_argument(flag + ": expected a number, got " + Quoted(text));
  return v;
}

int ParseInt(const std::string& flag, const std::string& text, long lo, long hi) {
  errno = 0;
  char* end = nullptr;
  long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi)
    throw std::invalid_argument(flag + ": expected an integer in " + std::to_string(lo) + ".." +
                                std::to_string(hi) + ", got " + Quoted(text));
  return static_cast<int>(v);
}

}  // namespace

std::string SdkVersion() { return std::string("rollmesh-cpp ") + ROLLMESH_CPP_VERSION; }

long long ServerOptions::max_message_bytes() const {
  return std::llround(max_message_mb * 1024 * 1024);
}

std::string Usage(const std::string& program) {
  return "usage: " + program +
         " [flags]\n"
         "  --host HOST            interface to bind (default 127.0.0.1)\n"
         "  --port PORT            port; 0 picks a free one (default 50051)\n"
         "  --max-episodes N       concurrent episodes before RESOURCE_EXHAUSTED (default 256)\n"
         "  --idle-timeout S       seconds an episode may wait for the client; 0: none (default 300)\n"
         "  --max-message-mb MB    largest gRPC message, MiB (default 16)\n"
         "  --grace S              seconds in-flight episodes get to finish on SIGTERM (default 10)\n"
         "  --nats URL             register in the registry of this NATS server\n"
         "  --advertise-host HOST  host other machines reach this server at (registry)\n"
         "  --tls-cert FILE        this server's certificate, PEM; turns TLS on ($ROLLMESH_TLS_CERT)\n"
         "  --tls-key FILE         the certificate's private key, PEM ($ROLLMESH_TLS_KEY)\n"
         "  --tls-ca FILE          CA of the callers' certificates: mutual TLS and roles ($ROLLMESH_TLS_CA)\n"
         "  --insecure             allow a --host beyond loopback without TLS and --tls-ca (warns)\n";
}

ServerOptions ParseFlags(int argc, const char* const* argv, bool* help) {
  ServerOptions o;
  o.tls = TlsFiles::FromEnv();
  if (help) *help = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    if (arg == "--help" || arg == "-h") {
      if (help) *help = true;
      continue;
    }
    if (arg == "--insecure") {  // a switch: no value
      o.insecure = true;
      continue;
    }
    if (arg.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument " + Quoted(arg));
    size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      throw std::invalid_argument(arg + " needs a value");
    }
    if (arg == "--host") {
      if (value.empty()) throw std::invalid_argument("--host: empty");
      o.host = value;
    } else if (arg == "--port") {
      o.port = ParseInt(arg, value, 0, 65535);
    } else if (arg == "--max-episodes") {
      o.max_episodes = ParseInt(arg, value, 1, 1 << 20);
    } else if (arg == "--idle-timeout") {
      o.idle_timeout_s = ParseNumber(arg, value);
      if (o.idle_timeout_s < 0) throw std::invalid_argument("--idle-timeout: must be >= 0 (0: none)");
    } else if (arg == "--max-message-mb") {
      o.max_message_mb = ParseNumber(arg, value);
      if (o.max_message_mb <= 0 || o.max_message_mb > 2047)
        throw std::invalid_argument("--max-message-mb: must be > 0 and < 2048 (gRPC's limit)");
    } else if (arg == "--grace") {
      o.grace_s = ParseNumber(arg, value);
      if (o.grace_s < 0) throw std::invalid_argument("--grace: must be >= 0");
    } else if (arg == "--nats") {
      o.nats_url = value;
    } else if (arg == "--advertise-host") {
      o.advertise_host = value;
    } else if (arg == "--tls-cert") {
      o.tls.cert = value;
    } else if (arg == "--tls-key") {
      o.tls.key = value;
    } else if (arg == "--tls-ca") {
      o.tls.ca = value;
    } else if (arg == "--insecure") {
      if (value != "true" && value != "false") throw std::invalid_argument("--insecure: true or false, got " + Quoted(value));
      o.insecure = value == "true";
    } else {
      throw std::invalid_argument("unknown flag " + Quoted(arg));
    }
  }
  return o;
}

}  // namespace rollmesh
