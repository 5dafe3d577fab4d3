#include "episode_call.h"

#include <chrono>
#include <cstdio>
#include <thread>

#include "convert.h"

namespace rollmesh::internal {
namespace {

using Clock = std::chrono::steady_clock;

std::string FormatSeconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// Runs the environment's code: a rollmesh::Error passes through (the environment chose the
// status), any other exception becomes INTERNAL (ENVIRONMENT_FAILED).
template <class F>
auto CallEnvironment(const std::string& env, const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rollmesh: environment '%s' failed in %s: %s\n", env.c_str(), what, e.what());
    throw Error(grpc::StatusCode::INTERNAL, v1::ENVIRONMENT_FAILED,
                "environment " + Quoted(env) + " failed in " + what + ": " + e.what());
  } catch (...) {
    std::fprintf(stderr, "rollmesh: environment '%s' failed in %s\n", env.c_str(), what);
    throw Error(grpc::StatusCode::INTERNAL, v1::ENVIRONMENT_FAILED,
                "environment " + Quoted(env) + " failed in " + what + " (a non-standard exception)");
  }
}

// Builds the episode from the first message: the environment and the task (spec 3's start rules).
const HostedEnv& NewEpisode(const ServiceCore& core, const v1::EpisodeRequest& request, Episode* ep) {
  if (!request.has_start())
    throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::NOT_STARTED,
                "the first message of an episode must be `start`");
  const v1::StartEpisode& start = request.start();
  const HostedEnv& env = core.Env(start.env());
  if (start.has_task()) {  // an inline task takes precedence over task_id and split
    if (start.task().prompt_size() == 0)
      throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::INVALID_TASK, "an inline task needs a prompt");
    ep->task = start.task();
    ep->task.set_env(env.info.name());
  } else if (!start.task_id().empty()) {
    const std::string& split = core.Split(env, start.split());
    const v1::Task* task = env.find_task(split, start.task_id());
    if (!task)
      throw Error(grpc::StatusCode::NOT_FOUND, v1::UNKNOWN_TASK,
                  "no task " + Quoted(start.task_id()) + " in " + Quoted(env.info.name()) + "/" + Quoted(split) +
                      "; see ListTasks");
    ep->task = *task;
  } else {
    throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::NO_TASK,
                "start needs a task_id (see ListTasks) or an inline task");
  }
  ep->id = start.episode_id().empty() ? RandomHex(16) : start.episode_id();
  ep->env = env.info.name();
  ep->seed = start.seed();
  ep->options = start.options();
  ep->max_turns = env.env.max_turns;
  return env;
}

}  // namespace

EpisodeCall* EpisodeCall::Create(ServiceCore* core, grpc::CallbackServerContext* ctx) {
  auto* call = new EpisodeCall(core, ctx);
  core->CallStarted();
  try {
    std::thread(&EpisodeCall::Run, call).detach();
  } catch (const std::system_error& e) {
    call->refs_ = 1;  // no episode thread
    call->Finish(Error(grpc::StatusCode::RESOURCE_EXHAUSTED, v1::EPISODE_LIMIT,
                       std::string("the server cannot start a thread for the episode: ") + e.what(),
                       {{"limit", std::to_string(core->options().max_episodes)}})
                     .ToStatus());
    core->CallEnded();
  }
  return call;
}

void EpisodeCall::Run() {
  grpc::Status status;
  try {
    status = Play();
  } catch (...) {
    status = StatusForException("episode");
  }
  ServiceCore* core = core_;
  Finish(status);
  Unref();
  core->CallEnded();  // last: shutdown waits for it, and `this` may be gone
}

grpc::Status EpisodeCall::Play() {
  const grpc::Status cancelled(grpc::StatusCode::CANCELLED, "the episode stream was cancelled");
  const double idle_s = core_->options().idle_timeout_s;
  auto idle = [&] {
    return Error(grpc::StatusCode::DEADLINE_EXCEEDED, v1::IDLE_TIMEOUT,
                 "no message from the client for " + FormatSeconds(idle_s) + " s; episode closed",
                 {{"idle_timeout_s", FormatSeconds(idle_s)}});
  };

  v1::EpisodeRequest request;
  switch (Next(&request)) {
    case Got::kHalfClose: return grpc::Status::OK;  // closed without starting: nothing to do
    case Got::kIdle: throw idle();
    case Got::kCancelled: return cancelled;
    case Got::kMessage: break;
  }
  core_->AcquireEpisode();  // DRAINING, EPISODE_LIMIT
  struct Slot {
    ServiceCore* core;
    ~Slot() { core->ReleaseEpisode(); }
  } slot{core_};

  Episode ep;
  const HostedEnv& hosted = NewEpisode(*core_, request, &ep);
  const Environment& env = hosted.env;
  struct Closer {  // on_close runs once however the episode ends, before its slot is freed
    const Environment& env;
    Episode& ep;
    ~Closer() {
      if (!env.on_close) return;
      try {
        env.on_close(ep);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "rollmesh: environment '%s' failed in on_close: %s\n", env.name.c_str(), e.what());
      } catch (...) {
        std::fprintf(stderr, "rollmesh: environment '%s' failed in on_close\n", env.name.c_str());
      }
    }
  } closer{env, ep};

  v1::EpisodeResponse response;
  auto* started = response.mutable_started();
  std::vector<v1::Message> first = env.on_start ? CallEnvironment(env.name, "on_start", [&] { return env.on_start(ep); })
                                                : std::vector<v1::Message>(ep.task.prompt().begin(), ep.task.prompt().end());
  started->set_episode_id(ep.id);
  *started->mutable_task() = ep.task;
  for (auto& m : first) *started->add_messages() = std::move(m);
  for (const auto& t : env.tools) *started->add_tools() = t;
  started->set_max_turns(env.max_turns);
  core_->CheckReplySize(response);
  if (!Send(response)) return cancelled;

  bool done = false;
  while (true) {
    switch (Next(&request)) {
      case Got::kHalfClose: return grpc::Status::OK;
      case Got::kIdle: throw idle();
      case Got::kCancelled: return cancelled;
      case Got::kMessage: break;
    }
    if (request.has_start())
      throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::ALREADY_STARTED,
                  "the episode has started; send actions, not another start");
    if (done)
      throw Error(grpc::StatusCode::FAILED_PRECONDITION, v1::EPISODE_DONE,
                  "the episode is done (the last step had done = true); half-close the stream");
    if (!request.action().has_message())
      throw Error(grpc::StatusCode::INVALID_ARGUMENT, v1::EMPTY_ACTION, "an action needs a message");
    ep.turn++;
    StepResult result = CallEnvironment(env.name, "on_action", [&] { return env.on_action(ep, request.action().message()); });

    response.Clear();
    v1::Step* step = response.mutable_step();
    for (auto& m : result.messages) *step->add_messages() = std::move(m);
    step->set_turn(ep.turn);
    step->mutable_rewards()->insert(result.rewards.begin(), result.rewards.end());
    step->set_has_reward(!result.rewards.empty());
    step->set_reward(WeightedReward(result.rewards, env.reward_weights));
    step->mutable_metrics()->insert(result.metrics.begin(), result.metrics.end());
    if (result.done || ep.turn >= env.max_turns) {
      done = true;
      step->set_done(true);
      step->set_stop_reason(result.done ? v1::STOP_REASON_DONE : v1::STOP_REASON_MAX_TURNS);
      *step->mutable_state() = ep.state;
    }
    core_->CheckReplySize(response);
    if (!Send(response)) return cancelled;
  }
}

EpisodeCall::Got EpisodeCall::Next(v1::EpisodeRequest* request) {
  std::unique_lock<std::mutex> lock(mu_);
  if (cancelled_) return Got::kCancelled;
  read_done_ = false;
  lock.unlock();
  StartRead(&in_);
  lock.lock();
  auto arrived = [this] { return read_done_ || cancelled_; };
  const double idle_s = core_->options().idle_timeout_s;
  if (idle_s > 0) {
    auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(idle_s));
    if (!cv_.wait_until(lock, deadline, arrived)) return Got::kIdle;  // the read stays pending; Finish ends it
  } else {
    cv_.wait(lock, arrived);
  }
  if (!read_done_) return Got::kCancelled;
  if (!read_ok_) return cancelled_ ? Got::kCancelled : Got::kHalfClose;
  lock.unlock();
  request->Clear();
  if (!Parse(in_, request)) ThrowMalformed(request->GetTypeName());
  return Got::kMessage;
}

bool EpisodeCall::Send(const v1::EpisodeResponse& response) {
  Serialize(response, &out_);
  std::unique_lock<std::mutex> lock(mu_);
  if (cancelled_) return false;
  write_done_ = false;
  lock.unlock();
  StartWrite(&out_);
  lock.lock();
  // A client that stops reading holds the write; after the idle timeout the stream is cancelled.
  const double idle_s = core_->options().idle_timeout_s;
  auto written = [this] { return write_done_; };
  if (idle_s > 0 &&
      !cv_.wait_until(lock, Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(idle_s)),
                      written)) {
    ctx_->TryCancel();
  }
  cv_.wait(lock, written);  // a cancelled write completes too (not ok)
  return write_ok_;
}

void EpisodeCall::OnReadDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  read_done_ = true;
  read_ok_ = ok;
  cv_.notify_all();
}

void EpisodeCall::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  write_done_ = true;
  write_ok_ = ok;
  cv_.notify_all();
}

void EpisodeCall::OnCancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  cv_.notify_all();
}

void EpisodeCall::OnDone() { Unref(); }

void EpisodeCall::Unref() {
  bool last;
  {
    std::lock_guard<std::mutex> lock(mu_);
    last = --refs_ == 0;
  }
  if (last) delete this;
}

}  // namespace rollmesh::internal
