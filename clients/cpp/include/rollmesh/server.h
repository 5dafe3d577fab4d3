// The environment-server helper: serves Environments as rollmesh.v1.EnvironmentService, with
// grpc.health.v1, server reflection, the NATS registry and graceful shutdown. The rules it follows
// are docs/protocol.md's; this header only says how to use it.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rollmesh/environment.h"
#include "rollmesh/errors.h"
#include "rollmesh/tls.h"

namespace rollmesh {

inline constexpr char kProtocolVersion[] = "v1";
std::string SdkVersion();  // "rollmesh-cpp 1.0.0"

// The server's command-line flags (the same spelling in every language's servers).
struct ServerOptions {
  std::string host = "127.0.0.1";  // --host
  int port = 50051;                // --port (0: any free port)
  // --max-episodes. Each open episode holds one thread (its callbacks may block), so the default
  // stays at a thread count any machine carries; raise it for environments with many idle episodes.
  int max_episodes = 256;
  double idle_timeout_s = 300;  // --idle-timeout (0: none)
  double max_message_mb = 16;   // --max-message-mb (MiB)
  double grace_s = 10;          // --grace: seconds in-flight episodes get on SIGTERM
  std::string nats_url;         // --nats: register in the registry of this NATS server
  std::string advertise_host;   // --advertise-host: the host in registry records (default: --host)
  // --tls-cert/--tls-key: serve over TLS with this certificate; --tls-ca: mutual TLS (callers need a
  // certificate of this CA) and every call is checked against the role table. Defaults:
  // $ROLLMESH_TLS_CERT, $ROLLMESH_TLS_KEY, $ROLLMESH_TLS_CA (ParseFlags reads them). The registry's
  // NATS connection uses the same files.
  TlsFiles tls;
  // --insecure: allow a --host beyond loopback without TLS and a CA (warns); without it Start refuses.
  bool insecure = false;

  long long max_message_bytes() const;
};

// Parses argv (the flags above, "--flag value" or "--flag=value"). Throws std::invalid_argument
// with a message that names the flag; sets *help when --help/-h was given.
ServerOptions ParseFlags(int argc, const char* const* argv, bool* help = nullptr);
std::string Usage(const std::string& program);

// A server on a port, for programs that manage their own life cycle (and tests).
class Server {
 public:
  // Throws std::invalid_argument when the environments are not servable (no name, duplicate
  // names, no on_action, empty or duplicate task ids, a task without a prompt, ...).
  Server(std::vector<Environment> envs, ServerOptions options);
  ~Server();  // Shutdown(0) when still serving
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Listens, registers (with --nats) and serves; returns "host:port" (the port it got).
  // Throws std::invalid_argument for incomplete TLS settings or an address beyond loopback without
  // TLS and a CA (unless insecure), std::runtime_error when it cannot listen or register.
  std::string Start();
  // Drains: health NOT_SERVING, deregistration, new episodes UNAVAILABLE (DRAINING); open
  // episodes get grace_s seconds, then are cancelled; returns once the server has stopped.
  void Shutdown(double grace_s);
  int active_episodes() const;
  const std::string& instance_id() const;
  std::string environment_names() const;  // "a, b"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Starts a Server, prints "rollmesh env server on HOST:PORT: NAMES" to stderr once listening, and
// serves until SIGTERM or SIGINT; then shuts down with options.grace_s. Returns the exit status
// (0 after a clean shutdown). Call it before starting threads of your own: it blocks the two
// signals in the calling thread, which new threads inherit.
int Serve(std::vector<Environment> envs, const ServerOptions& options);

// ParseFlags + Serve, for main(): exit status 2 on bad flags or environments, 1 when it cannot
// serve.
int Main(int argc, char** argv, std::vector<Environment> envs);

}  // namespace rollmesh
