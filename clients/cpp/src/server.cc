#include "rollmesh/server.h"

#include <google/protobuf/stubs/logging.h>
#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "registry.h"
#include "security.h"
#include "service.h"

namespace rollmesh {
namespace {

using Clock = std::chrono::steady_clock;

std::string JoinHostPort(const std::string& host, int port) {
  bool v6 = host.find(':') != std::string::npos && host.front() != '[';
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

// Protobuf logs a client's invalid UTF-8 at ERROR level while parsing; the client gets
// MALFORMED_REQUEST for it, so it is no server error. Everything else still reaches stderr.
void ProtobufLog(google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
  if (message.find("invalid UTF-8") != std::string::npos) return;
  static const char* const kLevels[] = {"info", "warning", "error", "fatal"};
  std::fprintf(stderr, "rollmesh: protobuf %s (%s:%d): %s\n", kLevels[std::min(static_cast<int>(level), 3)], file,
               line, message.c_str());
}

Clock::time_point After(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Plaintext; TLS with the certificate; with a CA, mutual TLS: callers must present a certificate
// that CA signed, and the calls of other services than EnvironmentService are checked at the
// gate (the service's own handlers check theirs).
std::shared_ptr<grpc::ServerCredentials> Credentials(const TlsFiles& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  if (tls.cert.empty()) throw std::invalid_argument("a TLS server needs a certificate: give --tls-cert and --tls-key");
  grpc::SslServerCredentialsOptions options(tls.authenticates()
                                                ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  options.pem_key_cert_pairs.push_back({ReadPem(tls.key, "private key"), ReadPem(tls.cert, "certificate")});
  if (tls.authenticates()) options.pem_root_certs = ReadPem(tls.ca, "CA bundle");
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::SslServerCredentials(options);
  if (tls.authenticates()) credentials->SetAuthMetadataProcessor(std::make_shared<internal::MethodGate>());
  return credentials;
}

}  // namespace

struct Server::Impl {
  Impl(std::vector<Environment> envs, const ServerOptions& options) : core(std::move(envs), options), service(&core) {}

  internal::ServiceCore core;
  internal::EnvironmentServiceImpl service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<internal::Registration> registration;
  std::mutex mu;
  bool serving = false;
};

Server::Server(std::vector<Environment> envs, ServerOptions options)
    : impl_(std::make_unique<Impl>(std::move(envs), options)) {}

Server::~Server() { Shutdown(0); }

int Server::active_episodes() const { return impl_->core.active_episodes(); }
const std::string& Server::instance_id() const { return impl_->core.instance_id(); }
std::string Server::environment_names() const { return impl_->core.env_names(", "); }

std::string Server::Start() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->serving) throw std::logic_error("the server is already serving");
  const ServerOptions& o = impl_->core.options();
  const int max_bytes = static_cast<int>(impl_->core.max_message_bytes());
  // The transport's caps only stop a flood: they sit far above the episode limit, so that the
  // service refuses first, with a reason.
  const int transport_cap = std::max(16384, 2 * o.max_episodes);

  o.tls.Validate(true);
  internal::CheckBind(o.host, "environments", o.tls, o.insecure);
  std::shared_ptr<grpc::ServerCredentials> credentials = Credentials(o.tls);

  google::protobuf::SetLogHandler(ProtobufLog);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(JoinHostPort(o.host, o.port), credentials, &port);
  builder.RegisterService(&impl_->service);
  builder.SetMaxReceiveMessageSize(max_bytes);
  builder.SetMaxSendMessageSize(max_bytes);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, transport_cap);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Clients ping every 30 s; refuse (GOAWAY) only those that ping more often than every 10 s.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  // Without this a second server on the same fixed port binds silently (SO_REUSEPORT).
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  impl_->server = builder.BuildAndStart();
  if (!impl_->server || port == 0) {
    impl_->server.reset();
    throw std::runtime_error("cannot listen on " + JoinHostPort(o.host, o.port));
  }
  auto* health = impl_->server->GetHealthCheckService();
  health->SetServingStatus("", true);
  health->SetServingStatus(v1::EnvironmentService::service_full_name(), true);
  impl_->serving = true;

  if (!o.nats_url.empty()) {
    std::vector<v1::ServiceRecord> records;
    const std::string advertised = JoinHostPort(o.advertise_host.empty() ? o.host : o.advertise_host, port);
    for (const auto& e : impl_->core.envs()) {
      v1::ServiceRecord r;
      r.set_kind(v1::SERVICE_KIND_ENVIRONMENT);
      r.set_name(e.info.name());
      r.set_version(e.info.version());
      r.set_address(advertised);
      r.set_capacity(o.max_episodes);
      r.set_instance_id(impl_->core.instance_id());
      r.set_protocol_version(kProtocolVersion);
      records.push_back(std::move(r));
    }
    try {
      impl_->registration = std::make_unique<internal::Registration>(o.nats_url, std::move(records), o.tls);
    } catch (...) {
      impl_->serving = false;
      impl_->server->Shutdown(std::chrono::system_clock::now());
      impl_->server.reset();
      throw;
    }
  }
  return JoinHostPort(o.host, port);
}

void Server::Shutdown(double grace_s) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!impl_->serving) return;
  impl_->serving = false;
  internal::ServiceCore& core = impl_->core;
  core.Drain();  // new episodes: UNAVAILABLE (DRAINING)
  impl_->server->GetHealthCheckService()->SetServingStatus(false);
  if (impl_->registration) {
    impl_->registration->Close();
    impl_->registration.reset();
  }
  core.WaitNoEpisodes(After(grace_s));
  // Cancels what is still open (episodes past their grace, health watches); the episode threads
  // see the cancellation, run on_close and end their streams.
  impl_->server->Shutdown(std::chrono::system_clock::now());
  impl_->server->Wait();
  core.WaitNoCalls(Clock::time_point::max());
  impl_->server.reset();
}

int Serve(std::vector<Environment> envs, const ServerOptions& options) {
  // The signals are taken with sigwait below: block them here, before gRPC starts its threads,
  // so that every thread inherits the mask and none is interrupted by them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Server server(std::move(envs), options);
  std::string address = server.Start();
  std::fprintf(stderr, "rollmesh env server on %s: %s\n", address.c_str(), server.environment_names().c_str());
  std::fflush(stderr);

  int sig = 0;
  while (sigwait(&signals, &sig) != 0) {
  }
  std::fprintf(stderr, "rollmesh: %s: shutting down (%d episodes in flight), grace %g s\n", strsignal(sig),
               server.active_episodes(), options.grace_s);
  // An environment callback that never returns would hold the shutdown forever: bound it.
  std::thread([limit = options.grace_s + 10] {
    std::this_thread::sleep_until(After(limit));
    std::fprintf(stderr, "rollmesh: episodes still running %g s after the signal; exiting\n", limit);
    std::fflush(stderr);
    _exit(0);
  }).detach();
  server.Shutdown(options.grace_s);
  std::fprintf(stderr, "rollmesh: stopped\n");
  return 0;
}

int Main(int argc, char** argv, std::vector<Environment> envs) {
  const std::string program = argc > 0 ? argv[0] : "server";
  ServerOptions options;
  try {
    bool help = false;
    options = ParseFlags(argc, argv, &help);
    if (help) {
      std::fputs(Usage(program).c_str(), stdout);
      return 0;
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s: %s\n%s", program.c_str(), e.what(), Usage(program).c_str());
    return 2;
  }
  try {
    return Serve(std::move(envs), options);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program.c_str(), e.what());
    return 1;
  }
}

}  // namespace rollmesh
