// A client of rollmesh.v1.EnvironmentService (blocking). Every failed call throws rollmesh::Error,
// whose reason() is the server's ErrorInfo reason (empty when there is none or it is unknown).
#pragma once

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/support/sync_stream.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rollmesh/errors.h"
#include "rollmesh/tls.h"
#include "rollmesh/v1/environment.grpc.pb.h"

namespace rollmesh {

class EpisodeSession;

struct TaskPage {
  std::vector<v1::Task> tasks;
  std::string next_page_token;  // pass it back for the next page; empty when none remain
  int64_t total = 0;            // tasks in the split
};

class EnvClient {
 public:
  // timeout_s bounds each unary call and ListTasks; episode_timeout_s a whole episode (0: none).
  // tls: the transport security; nullopt reads ROLLMESH_TLS_CA, ROLLMESH_TLS_CERT and
  // ROLLMESH_TLS_KEY. Plaintext when it names neither a CA nor a certificate; else the server is
  // verified against the CA and must hold a certificate for server_name (default "env.rollmesh",
  // whatever the address), and the client presents its certificate (mutual TLS) when it has one.
  // Throws std::invalid_argument when the TLS settings are incomplete or a file cannot be read.
  explicit EnvClient(const std::string& address, double timeout_s = 30, double episode_timeout_s = 0,
                     std::optional<TlsFiles> tls = std::nullopt, const std::string& server_name = "");

  v1::DescribeResponse Describe();
  // One ListTasks call (page_size 0: all remaining).
  TaskPage ListTasks(const std::string& env, const std::string& split = "", int page_size = 0,
                     const std::string& page_token = "");
  v1::ScoreResponse Score(const v1::ScoreRequest& request);
  // Opens an Episode stream and sends `start`; returns once `started` arrived.
  std::unique_ptr<EpisodeSession> Start(const v1::StartEpisode& start);

 private:
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::EnvironmentService::Stub> stub_;
  double timeout_s_;
  double episode_timeout_s_;
};

// One episode over one stream: Act once per turn until done(), then Close (or let the destructor
// do it). Closing before done cancels the episode on the server.
class EpisodeSession {
 public:
  ~EpisodeSession();
  const v1::EpisodeStarted& started() const { return started_; }
  // The conversation so far: the prompt, then each action and the environment's messages.
  const std::vector<v1::Message>& conversation() const { return conversation_; }
  bool done() const { return done_; }
  const v1::Step& last_step() const { return last_; }

  v1::Step Act(const v1::Message& action);
  // After done: half-closes and waits for the server's OK. Before: cancels the stream.
  void Close();

 private:
  friend class EnvClient;
  EpisodeSession() = default;
  [[noreturn]] void Fail(const char* what);

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::EpisodeRequest, v1::EpisodeResponse>> stream_;
  v1::EpisodeStarted started_;
  v1::Step last_;
  std::vector<v1::Message> conversation_;
  bool done_ = false;
  bool closed_ = false;
};

}  // namespace rollmesh
