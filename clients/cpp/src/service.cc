#include "service.h"

#include <cstdio>
#include <random>
#include <thread>

#include "convert.h"
#include "episode_call.h"
#include "page_token.h"
#include "security.h"

namespace rollmesh::internal {
namespace {

constexpr int kListBatch = 64;  // tasks per ListTasks message (fewer when they are large)

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* ctx, const grpc::Status& status) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(status);
  return reactor;
}

// A streaming call refused before it started: it ends with the status at once.
template <class Reactor>
class Refused final : public Reactor {
 public:
  explicit Refused(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

#define ROLLMESH_METHOD(name) "/rollmesh.v1.EnvironmentService/" name

// One ListTasks call: the page is cut into messages of up to kListBatch tasks, written one by one.
class ListTasksCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  ListTasksCall(ServiceCore* core, const grpc::ByteBuffer* request) : core_(core) {
    try {
      v1::ListTasksRequest req;
      if (!Parse(*request, &req)) ThrowMalformed(req.GetTypeName());
      const HostedEnv& env = core->Env(req.env());
      split_ = core->Split(env, req.split());
      tasks_ = &env.env.splits.at(split_);
      total_ = static_cast<int64_t>(tasks_->size());
      if (req.page_size() < 0)
        throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::INVALID_PAGE_SIZE,
                    "page_size must be >= 0 (0: all remaining), got " + std::to_string(req.page_size()),
                    {{"field", "page_size"}});
      auto offset = PageOffset(req.page_token(), env.info.name(), split_, total_);
      if (!offset)
        throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::INVALID_PAGE_TOKEN,
                    "invalid page_token " + Quoted(req.page_token()) + " for " + Quoted(env.info.name()) + "/" +
                        Quoted(split_) + "; pass a previous next_page_token of the same environment and split",
                    {{"field", "page_token"}});
      env_ = env.info.name();
      next_ = *offset;
      end_ = req.page_size() == 0 ? total_ : std::min(total_, next_ + req.page_size());
    } catch (...) {
      Finish(StatusForException("ListTasks"));
      return;
    }
    WriteNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    if (next_ >= end_) {
      Finish(grpc::Status::OK);
      return;
    }
    WriteNext();
  }
  void OnDone() override { delete this; }

 private:
  // Writes the next message: the tasks from next_ that fit (at least one), or none for an empty page.
  void WriteNext() {
    v1::ListTasksResponse out;
    out.set_total(total_);
    size_t size = 64;  // total, the page token and framing
    try {
      for (int n = 0; next_ < end_ && n < kListBatch; ++n, ++next_) {
        const v1::Task& t = (*tasks_)[next_];
        size_t task_size = t.ByteSizeLong() + 6;
        if (n > 0 && static_cast<long long>(size + task_size) > core_->max_message_bytes()) break;
        *out.add_tasks() = t;
        size += task_size;
      }
      if (next_ >= end_ && end_ < total_) out.set_next_page_token(MakePageToken(env_, split_, end_));
      core_->CheckReplySize(out);
    } catch (...) {
      Finish(StatusForException("ListTasks"));
      return;
    }
    Serialize(out, &buffer_);
    StartWrite(&buffer_);
  }

  ServiceCore* core_;
  const std::vector<v1::Task>* tasks_ = nullptr;
  std::string env_, split_;
  int64_t total_ = 0, next_ = 0, end_ = 0;
  grpc::ByteBuffer buffer_;
};

}  // namespace

std::string RandomHex(int n) {
  thread_local std::mt19937_64 rng([] {
    std::random_device rd;
    return (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }());
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < n; ++i) out += hex[rng() & 15];
  return out;
}

grpc::Status StatusForException(const std::string& where) {
  try {
    throw;
  } catch (const Error& e) {
    return e.ToStatus();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rollmesh: %s failed: %s\n", where.c_str(), e.what());
    return Error(grpc::StatusCode::INTERNAL, v1::ENVIRONMENT_FAILED, where + " failed: " + e.what()).ToStatus();
  } catch (...) {
    std::fprintf(stderr, "rollmesh: %s failed with a non-standard exception\n", where.c_str());
    return Error(grpc::StatusCode::INTERNAL, v1::ENVIRONMENT_FAILED, where + " failed (a non-standard exception)")
        .ToStatus();
  }
}

// --- ServiceCore ----------------------------------------------------------------------------------

ServiceCore::ServiceCore(std::vector<Environment> envs, const ServerOptions& options)
    : options_(options), max_message_bytes_(options.max_message_bytes()), instance_id_(RandomHex(12)) {
  if (envs.empty()) throw std::invalid_argument("a server needs at least one environment");
  if (options.max_episodes < 1) throw std::invalid_argument("max_episodes must be >= 1");
  if (options.idle_timeout_s < 0) throw std::invalid_argument("idle_timeout_s must be >= 0");
  if (max_message_bytes_ < 1024) throw std::invalid_argument("max_message_mb must allow at least 1 KiB");
  for (auto& e : envs) {
    for (const auto& h : envs_)
      if (h.info.name() == e.name) throw std::invalid_argument("two environments are named " + Quoted(e.name));
    envs_.emplace_back(std::move(e));
  }
}

std::string ServiceCore::env_names(const char* separator) const {
  std::string out;
  for (const auto& e : envs_) out += (out.empty() ? "" : separator) + e.info.name();
  return out;
}

const HostedEnv& ServiceCore::Env(const std::string& name) const {
  if (name.empty())
    throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::NO_ENVIRONMENT,
                "no environment named; this server hosts " + env_names(", "), {{"environments", env_names(",")}});
  for (const auto& e : envs_)
    if (e.info.name() == name) return e;
  throw Error(grpc::StatusCode::NOT_FOUND, v1::UNKNOWN_ENVIRONMENT,
              "no environment " + Quoted(name) + " on this server; it hosts " + env_names(", "),
              {{"environments", env_names(",")}});
}

const std::string& ServiceCore::Split(const HostedEnv& env, const std::string& split) const {
  if (split.empty()) return env.env.default_split;
  auto it = env.env.splits.find(split);
  if (it == env.env.splits.end())
    throw Error(grpc::StatusCode::NOT_FOUND, v1::UNKNOWN_SPLIT,
                "environment " + Quoted(env.info.name()) + " has no split " + Quoted(split) + "; it has " +
                    env.split_names(),
                {{"splits", env.split_names()}});
  return it->first;
}

v1::DescribeResponse ServiceCore::Describe() const {
  v1::DescribeResponse r;
  auto* server = r.mutable_server();
  server->set_protocol_version(kProtocolVersion);
  server->set_language("c++");
  server->set_sdk_version(SdkVersion());
  server->set_instance_id(instance_id_);
  for (const auto& e : envs_) *r.add_environments() = e.info;
  auto* limits = r.mutable_limits();
  limits->set_max_concurrent_episodes(options_.max_episodes);
  limits->set_max_message_bytes(max_message_bytes_);
  limits->set_episode_idle_timeout_s(options_.idle_timeout_s);
  r.set_active_episodes(active_.load());
  return r;
}

void ServiceCore::CheckReplySize(const google::protobuf::Message& reply) const {
  auto size = static_cast<long long>(reply.ByteSizeLong());
  if (size > max_message_bytes_)
    throw Error(grpc::StatusCode::RESOURCE_EXHAUSTED, v1::MESSAGE_TOO_LARGE,
                "the reply is " + std::to_string(size) + " bytes, over the " + std::to_string(max_message_bytes_) +
                    "-byte message limit",
                {{"limit_bytes", std::to_string(max_message_bytes_)}});
}

void ServiceCore::AcquireEpisode() {
  if (draining_)
    throw Error(grpc::StatusCode::UNAVAILABLE, v1::DRAINING,
                "the server is shutting down; start the episode on another replica");
  int n = active_.load();
  do {
    if (n >= options_.max_episodes)
      throw Error(grpc::StatusCode::RESOURCE_EXHAUSTED, v1::EPISODE_LIMIT,
                  "the server is at its limit of " + std::to_string(options_.max_episodes) +
                      " concurrent episodes; retry later or use another replica",
                  {{"limit", std::to_string(options_.max_episodes)}});
  } while (!active_.compare_exchange_weak(n, n + 1));
}

void ServiceCore::ReleaseEpisode() {
  std::lock_guard<std::mutex> lock(mu_);
  --active_;
  changed_.notify_all();
}

bool ServiceCore::WaitNoEpisodes(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_until(lock, deadline, [this] { return active_.load() == 0; });
}

void ServiceCore::CallStarted() {
  std::lock_guard<std::mutex> lock(mu_);
  ++calls_;
}

void ServiceCore::CallEnded() {
  std::lock_guard<std::mutex> lock(mu_);
  --calls_;
  changed_.notify_all();
}

bool ServiceCore::WaitNoCalls(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_until(lock, deadline, [this] { return calls_ == 0; });
}

// --- the RPCs -------------------------------------------------------------------------------------

grpc::Status ServiceCore::Authorize(grpc::CallbackServerContext* ctx, const char* method) const {
  if (!options_.tls.authenticates()) return grpc::Status::OK;
  return internal::Authorize(ctx->auth_context().get(), method, ctx->peer());
}

grpc::ServerUnaryReactor* EnvironmentServiceImpl::Describe(grpc::CallbackServerContext* ctx,
                                                           const grpc::ByteBuffer* request,
                                                           grpc::ByteBuffer* response) {
  if (grpc::Status refused = core_->Authorize(ctx, ROLLMESH_METHOD("Describe")); !refused.ok())
    return FinishUnary(ctx, refused);
  try {
    v1::DescribeRequest req;
    if (!Parse(*request, &req)) ThrowMalformed(req.GetTypeName());
    v1::DescribeResponse out = core_->Describe();
    core_->CheckReplySize(out);
    Serialize(out, response);
    return FinishUnary(ctx, grpc::Status::OK);
  } catch (...) {
    return FinishUnary(ctx, StatusForException("Describe"));
  }
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* EnvironmentServiceImpl::ListTasks(grpc::CallbackServerContext* ctx,
                                                                              const grpc::ByteBuffer* request) {
  if (grpc::Status refused = core_->Authorize(ctx, ROLLMESH_METHOD("ListTasks")); !refused.ok())
    return new Refused<grpc::ServerWriteReactor<grpc::ByteBuffer>>(refused);
  return new ListTasksCall(core_, request);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* EnvironmentServiceImpl::Episode(
    grpc::CallbackServerContext* ctx) {
  if (grpc::Status refused = core_->Authorize(ctx, ROLLMESH_METHOD("Episode")); !refused.ok())
    return new Refused<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(refused);
  return EpisodeCall::Create(core_, ctx);
}

grpc::ServerUnaryReactor* EnvironmentServiceImpl::Score(grpc::CallbackServerContext* ctx,
                                                        const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
  if (grpc::Status refused = core_->Authorize(ctx, ROLLMESH_METHOD("Score")); !refused.ok())
    return FinishUnary(ctx, refused);
  auto req = std::make_shared<v1::ScoreRequest>();
  const HostedEnv* env = nullptr;
  v1::Task task;
  try {
    if (!Parse(*request, req.get())) ThrowMalformed(req->GetTypeName());
    env = &core_->Env(req->env());
    if (!env->env.score)
      throw Error(grpc::StatusCode::UNIMPLEMENTED, v1::NOT_SUPPORTED,
                  "environment " + Quoted(env->info.name()) + " does not implement Score (has_score is false)");
    if (req->task().prompt_size() > 0 || !req->task().answer().empty()) {
      task = req->task();
    } else if (!req->task().task_id().empty()) {
      const std::string& split = core_->Split(*env, req->task().split());
      const v1::Task* found = env->find_task(split, req->task().task_id());
      if (!found)
        throw Error(grpc::StatusCode::NOT_FOUND, v1::UNKNOWN_TASK,
                    "no task " + Quoted(req->task().task_id()) + " in " + Quoted(env->info.name()) + "/" +
                        Quoted(split));
      task = *found;
    } else {
      throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::NO_TASK,
                  "Score needs the task: inline (with its prompt or answer), or its task_id and split");
    }
  } catch (...) {
    return FinishUnary(ctx, StatusForException("Score"));
  }
  // The environment's code may block: it runs on a thread of its own, not on gRPC's.
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  ServiceCore* core = core_;
  core->CallStarted();
  auto work = [core, env, req, task = std::move(task), reactor, response] {
    grpc::Status status;
    try {
      Rewards rewards = env->env.score(task, req->messages(), req->state());
      v1::ScoreResponse out;
      out.mutable_rewards()->insert(rewards.begin(), rewards.end());
      out.set_reward(WeightedReward(rewards, env->env.reward_weights));
      core->CheckReplySize(out);
      Serialize(out, response);
    } catch (...) {
      status = StatusForException("environment " + Quoted(env->info.name()) + " in score");
    }
    reactor->Finish(status);
    core->CallEnded();
  };
  try {
    std::thread(work).detach();
  } catch (const std::system_error&) {
    work();  // no thread to be had: score on this one
  }
  return reactor;
}

grpc::ServerUnaryReactor* EnvironmentServiceImpl::RunEpisode(grpc::CallbackServerContext* ctx,
                                                             const grpc::ByteBuffer* request, grpc::ByteBuffer*) {
  if (grpc::Status refused = core_->Authorize(ctx, ROLLMESH_METHOD("RunEpisode")); !refused.ok())
    return FinishUnary(ctx, refused);
  try {
    v1::RunEpisodeRequest req;
    if (!Parse(*request, &req)) ThrowMalformed(req.GetTypeName());
    throw Error(grpc::StatusCode::UNIMPLEMENTED, v1::NOT_SUPPORTED,
                "this server's environments do not drive episodes themselves (has_run_episode is false); "
                "drive them with the Episode stream");
  } catch (...) {
    return FinishUnary(ctx, StatusForException("RunEpisode"));
  }
}

}  // namespace rollmesh::internal
