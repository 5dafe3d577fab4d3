// rollmesh.v1.EnvironmentService over raw bytes with the callback API: requests are decoded here
// (MALFORMED_REQUEST when they do not decode), Describe/ListTasks answer inline, Score runs the
// environment's code on a thread of its own, and each Episode stream gets a thread (episode_call.h).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <vector>

#include "hosted_env.h"
#include "rollmesh/server.h"
#include "rollmesh/v1/environment.grpc.pb.h"

namespace rollmesh::internal {

using RawService = v1::EnvironmentService::WithRawCallbackMethod_Describe<
    v1::EnvironmentService::WithRawCallbackMethod_ListTasks<v1::EnvironmentService::WithRawCallbackMethod_Episode<
        v1::EnvironmentService::WithRawCallbackMethod_Score<
            v1::EnvironmentService::WithRawCallbackMethod_RunEpisode<v1::EnvironmentService::Service>>>>>;

// What every call shares: the environments, the limits, the episode count, the drain flag.
class ServiceCore {
 public:
  ServiceCore(std::vector<Environment> envs, const ServerOptions& options);

  const ServerOptions& options() const { return options_; }
  long long max_message_bytes() const { return max_message_bytes_; }
  const std::string& instance_id() const { return instance_id_; }
  const std::vector<HostedEnv>& envs() const { return envs_; }
  std::string env_names(const char* separator) const;

  // The environment `name`; NO_ENVIRONMENT / UNKNOWN_ENVIRONMENT otherwise.
  const HostedEnv& Env(const std::string& name) const;
  // `split`, or the default split when empty; UNKNOWN_SPLIT when the environment has no such split.
  const std::string& Split(const HostedEnv& env, const std::string& split) const;
  v1::DescribeResponse Describe() const;
  // OK when the caller of ctx may call method (always, without --tls-ca), else the refusal.
  grpc::Status Authorize(grpc::CallbackServerContext* ctx, const char* method) const;
  // Throws MESSAGE_TOO_LARGE when `reply` is over max_message_bytes.
  void CheckReplySize(const google::protobuf::Message& reply) const;

  // Episode slots: DRAINING when draining, EPISODE_LIMIT at the limit.
  void AcquireEpisode();
  void ReleaseEpisode();
  int active_episodes() const { return active_.load(); }
  bool draining() const { return draining_.load(); }
  void Drain() { draining_ = true; }
  // Waits until no episode is open, or `deadline`; true when none is.
  bool WaitNoEpisodes(std::chrono::steady_clock::time_point deadline);

  // Calls whose threads are still running (Episode streams, Score), for shutdown.
  void CallStarted();
  void CallEnded();
  bool WaitNoCalls(std::chrono::steady_clock::time_point deadline);

 private:
  ServerOptions options_;
  long long max_message_bytes_;
  std::string instance_id_;
  std::vector<HostedEnv> envs_;
  std::atomic<int> active_{0};
  std::atomic<bool> draining_{false};
  std::mutex mu_;
  std::condition_variable changed_;
  int calls_ = 0;  // guarded by mu_
};

class EnvironmentServiceImpl final : public RawService {
 public:
  explicit EnvironmentServiceImpl(ServiceCore* core) : core_(core) {}

  grpc::ServerUnaryReactor* Describe(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ListTasks(grpc::CallbackServerContext* ctx,
                                                        const grpc::ByteBuffer* request) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Episode(grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override;
  grpc::ServerUnaryReactor* RunEpisode(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

 private:
  ServiceCore* core_;
};

// n random hex digits (instance and episode ids).
std::string RandomHex(int n);

// The status for an exception thrown by the environment's own code (or ours).
grpc::Status StatusForException(const std::string& where);

}  // namespace rollmesh::internal
