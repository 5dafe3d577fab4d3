// The server and the client together over real loopback gRPC: the episode protocol, every error
// reason the helper produces, limits, idle timeouts, draining.
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "check.h"
#include "google/rpc/status.pb.h"
#include "rollmesh/client.h"
#include "rollmesh/server.h"

using namespace rollmesh;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::atomic<int> closed_episodes{0};

// "counter": the policy calls add(n) to grow a total, and says "stop" to end; "fail" makes the
// environment throw, "sleep" makes it block for 3 s, "big" makes it answer with 64 KiB.
Environment Counter(bool with_score = true) {
  Environment e;
  e.name = "counter";
  e.max_turns = 4;
  e.tools = {Tool("add", "Adds n to the total.", R"({"type":"object","properties":{"n":{"type":"integer"}}})")};
  for (int i = 0; i < 5; ++i) e.splits["train"].push_back(MakeTask("c" + std::to_string(i), "count", "stop", "be brief"));
  e.splits["test"] = {MakeTask("t0", "count", "stop")};
  e.reward_weights = {{"total", 0.5}, {"bonus", 1.0}};
  e.on_start = [](Episode& ep) {
    ep.data = 0.0;
    std::vector<v1::Message> first(ep.task.prompt().begin(), ep.task.prompt().end());
    first.push_back(Text("user", "seed " + std::to_string(ep.seed)));
    return first;
  };
  e.on_action = [](Episode& ep, const v1::Message& action) {
    double& total = std::any_cast<double&>(ep.data);
    StepResult r;
    for (const auto& call : action.tool_calls()) {
      total += std::stod(call.arguments_json().substr(call.arguments_json().find(':') + 1));
      r.messages.push_back(ToolReply(call, "total=" + std::to_string(static_cast<int>(total))));
    }
    if (action.content() == "fail") throw std::runtime_error("boom");
    if (action.content() == "sleep") std::this_thread::sleep_for(3s);
    if (action.content() == "big") r.messages.push_back(Text("user", std::string(64 << 10, 'x')));
    if (action.content() == "stop") {
      r.done = true;
      r.rewards = {{"total", total}, {"bonus", 1}};
      (*ep.state.mutable_fields())["total"].set_number_value(total);
    }
    r.metrics = {{"turn", ep.turn}};
    return r;
  };
  e.on_close = [](Episode&) { ++closed_episodes; };
  if (with_score)
    e.score = [](const v1::Task&, const Messages& messages, const google::protobuf::Struct& state) {
      return Rewards{{"total", state.fields().at("total").number_value()}, {"bonus", double(messages.size())}};
    };
  return e;
}

struct Running {
  explicit Running(ServerOptions o = Options(), bool with_score = true) : server({Counter(with_score)}, o) {
    address = server.Start();
  }
  static ServerOptions Options() {
    ServerOptions o;
    o.port = 0;
    o.max_episodes = 3;
    o.idle_timeout_s = 1.0;
    return o;
  }
  Server server;
  std::string address;
};

v1::StartEpisode StartOf(const std::string& env, const std::string& task_id, const std::string& split = "") {
  v1::StartEpisode s;
  s.set_env(env);
  s.set_task_id(task_id);
  s.set_split(split);
  return s;
}

v1::Message AddCall(const std::string& id, int n) {
  v1::Message m = Text("assistant", "");
  auto* call = m.add_tool_calls();
  call->set_id(id);
  call->set_name("add");
  call->set_arguments_json("{\"n\":" + std::to_string(n) + "}");
  return m;
}

// Runs `fn`, which must throw rollmesh::Error with `code` and `reason`; returns it.
template <class F>
Error Fails(grpc::StatusCode code, const std::string& reason, F&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    if (e.code() != code || e.reason() != reason)
      throw check::Failure("expected " + CodeName(code) + " " + reason + ", got " + CodeName(e.code()) + " " +
                           e.reason() + ": " + e.what());
    return e;
  }
  throw check::Failure("expected " + CodeName(code) + " " + reason + ", got no error");
}

// A raw Episode stream: the requests as they are, then the final status.
grpc::Status RawEpisode(const std::string& address, const std::vector<v1::EpisodeRequest>& requests,
                        std::vector<v1::EpisodeResponse>* responses = nullptr, bool half_close = true) {
  auto stub = v1::EnvironmentService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  auto stream = stub->Episode(&ctx);
  v1::EpisodeResponse response;
  for (const auto& r : requests) {
    if (!stream->Write(r)) break;
    if (!stream->Read(&response)) break;
    if (responses) responses->push_back(response);
  }
  if (half_close) stream->WritesDone();
  while (stream->Read(&response)) {
  }
  return stream->Finish();
}

v1::EpisodeRequest ActionOf(const v1::Message& m) {
  v1::EpisodeRequest r;
  *r.mutable_action()->mutable_message() = m;
  return r;
}

v1::EpisodeRequest StartRequest(const v1::StartEpisode& s) {
  v1::EpisodeRequest r;
  *r.mutable_start() = s;
  return r;
}

void WaitActive(Server& server, int n) {
  auto deadline = Clock::now() + 5s;
  while (server.active_episodes() != n && Clock::now() < deadline) std::this_thread::sleep_for(10ms);
  CHECK_EQ(server.active_episodes(), n);
}

}  // namespace

TEST(describe_reports_environments_and_limits) {
  Running r;
  EnvClient client(r.address);
  v1::DescribeResponse d = client.Describe();
  CHECK_EQ(d.server().protocol_version(), std::string("v1"));
  CHECK_EQ(d.server().language(), std::string("c++"));
  CHECK_EQ(d.server().sdk_version(), std::string("rollmesh-cpp 1.0.0"));
  CHECK_EQ(d.server().instance_id(), r.server.instance_id());
  CHECK_EQ(d.environments_size(), 1);
  const auto& env = d.environments(0);
  CHECK_EQ(env.default_split(), std::string("train"));
  CHECK_EQ(env.kind(), v1::ENVIRONMENT_KIND_TOOL);
  CHECK(env.has_score() && !env.has_run_episode());
  CHECK_EQ(env.splits().at("train"), 5);
  CHECK_EQ(env.reward_names_size(), 2);
  CHECK_EQ(d.limits().max_concurrent_episodes(), 3);
  CHECK_EQ(d.limits().episode_idle_timeout_s(), 1.0);
  CHECK_EQ(d.limits().max_message_bytes(), 16LL << 20);
  CHECK_EQ(d.active_episodes(), 0);
}

TEST(list_tasks_pages_with_opaque_tokens) {
  Running r;
  EnvClient client(r.address);
  TaskPage all = client.ListTasks("counter");
  CHECK_EQ(all.tasks.size(), 5u);
  CHECK_EQ(all.total, 5);
  CHECK(all.next_page_token.empty());
  CHECK_EQ(all.tasks[0].env(), std::string("counter"));
  CHECK_EQ(all.tasks[0].split(), std::string("train"));
  std::vector<std::string> walked;
  std::string token;
  do {
    TaskPage page = client.ListTasks("counter", "train", 2, token);
    CHECK(page.tasks.size() <= 2);
    for (const auto& t : page.tasks) walked.push_back(t.task_id());
    token = page.next_page_token;
  } while (!token.empty());
  CHECK_EQ(walked.size(), 5u);
  CHECK_EQ(walked[4], all.tasks[4].task_id());
  std::string second = client.ListTasks("counter", "", 2).next_page_token;

  Fails(grpc::StatusCode::INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", [&] { client.ListTasks("counter", "train", 2, "3"); });
  Fails(grpc::StatusCode::INVALID_ARGUMENT, "INVALID_PAGE_TOKEN", [&] { client.ListTasks("counter", "test", 2, second); });
  Fails(grpc::StatusCode::INVALID_ARGUMENT, "INVALID_PAGE_SIZE", [&] { client.ListTasks("counter", "train", -1); });
  Error e = Fails(grpc::StatusCode::NOT_FOUND, "UNKNOWN_SPLIT", [&] { client.ListTasks("counter", "dev"); });
  CHECK_EQ(e.metadata().at("splits"), std::string("test,train"));
  e = Fails(grpc::StatusCode::NOT_FOUND, "UNKNOWN_ENVIRONMENT", [&] { client.ListTasks("nope"); });
  CHECK_EQ(e.metadata().at("environments"), std::string("counter"));
  Fails(grpc::StatusCode::INVALID_ARGUMENT, "NO_ENVIRONMENT", [&] { client.ListTasks(""); });
}

TEST(an_episode_with_tool_calls_and_weighted_rewards) {
  Running r;
  EnvClient client(r.address);
  int closed = closed_episodes;
  v1::StartEpisode start = StartOf("counter", "c1");
  start.set_seed(7);
  start.set_episode_id("my-episode");
  auto ep = client.Start(start);
  CHECK_EQ(ep->started().episode_id(), std::string("my-episode"));
  CHECK_EQ(ep->started().messages_size(), 3);  // system, user, and the environment's own
  CHECK_EQ(ep->started().messages(0).role(), std::string("system"));
  CHECK_EQ(ep->started().messages(2).content(), std::string("seed 7"));
  CHECK_EQ(ep->started().tools(0).name(), std::string("add"));
  CHECK_EQ(ep->started().max_turns(), 4);
  CHECK_EQ(ep->started().task().answer(), std::string("stop"));
  CHECK_EQ(r.server.active_episodes(), 1);

  v1::Step s = ep->Act(AddCall("call_1", 3));
  CHECK(!s.done() && !s.has_reward() && s.turn() == 1);
  CHECK_EQ(s.messages(0).role(), std::string("tool"));
  CHECK_EQ(s.messages(0).tool_call_id(), std::string("call_1"));
  CHECK_EQ(s.messages(0).content(), std::string("total=3"));
  s = ep->Act(Text("assistant", ""));  // empty content, no tool calls: a valid (useless) action
  CHECK(!s.done() && s.turn() == 2);
  s = ep->Act(Text("assistant", "stop"));
  CHECK(s.done() && s.has_reward() && s.turn() == 3);
  CHECK_EQ(s.stop_reason(), v1::STOP_REASON_DONE);
  CHECK_EQ(s.reward(), 0.5 * 3 + 1);
  CHECK_EQ(s.rewards().at("total"), 3.0);
  CHECK_EQ(s.metrics().at("turn"), 3.0);
  CHECK_EQ(s.state().fields().at("total").number_value(), 3.0);
  CHECK_EQ(ep->conversation().size(), 3u + 2 + 1 + 1);

  v1::ScoreRequest score;
  score.set_env("counter");
  *score.mutable_task() = ep->started().task();
  for (const auto& m : ep->conversation()) *score.add_messages() = m;
  *score.mutable_state() = s.state();
  v1::ScoreResponse scored = client.Score(score);
  CHECK_EQ(scored.rewards().at("bonus"), 7.0);
  CHECK_EQ(scored.reward(), 0.5 * 3 + 7);
  ep->Close();  // half-close after done: the server ends the stream with OK
  CHECK_EQ(r.server.active_episodes(), 0);
  CHECK_EQ(closed_episodes.load(), closed + 1);
}

TEST(max_turns_ends_the_episode) {
  Running r;
  EnvClient client(r.address);
  auto ep = client.Start(StartOf("counter", "t0", "test"));
  v1::Step s;
  for (int i = 0; i < 4; ++i) s = ep->Act(Text("assistant", "more"));
  CHECK(s.done() && s.turn() == 4 && !s.has_reward());
  CHECK_EQ(s.stop_reason(), v1::STOP_REASON_MAX_TURNS);
}

TEST(an_inline_task_takes_precedence) {
  Running r;
  EnvClient client(r.address);
  v1::StartEpisode start = StartOf("counter", "no-such-task", "no-such-split");
  *start.mutable_task() = MakeTask("", "inline prompt", "stop");
  auto ep = client.Start(start);
  CHECK_EQ(ep->started().messages(0).content(), std::string("inline prompt"));
  CHECK_EQ(ep->started().task().env(), std::string("counter"));
}

TEST(start_errors_have_reasons) {
  Running r;
  EnvClient client(r.address);
  Error e = Fails(grpc::StatusCode::NOT_FOUND, "UNKNOWN_ENVIRONMENT", [&] { client.Start(StartOf("nope", "c1")); });
  CHECK_EQ(e.metadata().at("environments"), std::string("counter"));
  Fails(grpc::StatusCode::INVALID_ARGUMENT, "NO_ENVIRONMENT", [&] { client.Start(StartOf("", "c1")); });
  Fails(grpc::StatusCode::NOT_FOUND, "UNKNOWN_SPLIT", [&] { client.Start(StartOf("counter", "c1", "dev")); });
  Fails(grpc::StatusCode::NOT_FOUND, "UNKNOWN_TASK", [&] { client.Start(StartOf("counter", "t0")); });
  Fails(grpc::StatusCode::INVALID_ARGUMENT, "NO_TASK", [&] { client.Start(StartOf("counter", "")); });
  v1::StartEpisode inline_task = StartOf("counter", "");
  inline_task.mutable_task()->set_answer("no prompt");
  Fails(grpc::StatusCode::INVALID_ARGUMENT, "INVALID_TASK", [&] { client.Start(inline_task); });
  WaitActive(r.server, 0);
}

TEST(stream_errors_have_reasons) {
  Running r;
  auto reason = [](const grpc::Status& s) { return Error::FromStatus(s).reason(); };
  v1::EpisodeRequest start = StartRequest(StartOf("counter", "c0"));
  grpc::Status s = RawEpisode(r.address, {ActionOf(Text("assistant", "hi"))});
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && reason(s) == "NOT_STARTED");
  s = RawEpisode(r.address, {v1::EpisodeRequest()});  // neither start nor action
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && reason(s) == "NOT_STARTED");
  s = RawEpisode(r.address, {start, start});
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && reason(s) == "ALREADY_STARTED");
  v1::EpisodeRequest empty_action;
  empty_action.mutable_action();
  s = RawEpisode(r.address, {start, empty_action});
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && reason(s) == "EMPTY_ACTION");
  std::vector<v1::EpisodeResponse> responses;
  s = RawEpisode(r.address, {start, ActionOf(Text("assistant", "stop")), ActionOf(Text("assistant", "again"))},
                 &responses);
  CHECK(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION && reason(s) == "EPISODE_DONE");
  CHECK(responses.size() == 2 && responses[1].step().done());
  s = RawEpisode(r.address, {start, ActionOf(Text("assistant", "stop"))});
  CHECK(s.ok());  // half-close after done
  s = RawEpisode(r.address, {});
  CHECK(s.ok());  // half-close before start: nothing to do
  WaitActive(r.server, 0);
}

TEST(environment_exceptions_are_environment_failed) {
  Running r;
  EnvClient client(r.address);
  int closed = closed_episodes;
  auto ep = client.Start(StartOf("counter", "c0"));
  Error e = Fails(grpc::StatusCode::INTERNAL, "ENVIRONMENT_FAILED", [&] { ep->Act(Text("assistant", "fail")); });
  CHECK(std::string(e.what()).find("boom") != std::string::npos);
  WaitActive(r.server, 0);
  CHECK_EQ(closed_episodes.load(), closed + 1);
}

TEST(replies_over_the_message_limit_are_message_too_large) {
  ServerOptions o = Running::Options();
  o.max_message_mb = 0.05;  // 52 KiB
  Running r(o);
  EnvClient client(r.address);
  auto ep = client.Start(StartOf("counter", "c0"));
  Error e = Fails(grpc::StatusCode::RESOURCE_EXHAUSTED, "MESSAGE_TOO_LARGE", [&] { ep->Act(Text("assistant", "big")); });
  CHECK_EQ(e.metadata().at("limit_bytes"), std::to_string(o.max_message_bytes()));
}

TEST(the_episode_limit_refuses_with_episode_limit) {
  Running r;
  EnvClient client(r.address);
  auto a = client.Start(StartOf("counter", "c0"));
  auto b = client.Start(StartOf("counter", "c1"));
  auto c = client.Start(StartOf("counter", "c2"));
  CHECK_EQ(client.Describe().active_episodes(), 3);
  Error e = Fails(grpc::StatusCode::RESOURCE_EXHAUSTED, "EPISODE_LIMIT", [&] { client.Start(StartOf("counter", "c3")); });
  CHECK_EQ(e.metadata().at("limit"), std::string("3"));
  c->Close();  // cancelled: its slot is freed
  WaitActive(r.server, 2);
  client.Start(StartOf("counter", "c3"))->Close();
}

TEST(idle_clients_get_idle_timeout) {
  Running r;
  EnvClient client(r.address);
  auto ep = client.Start(StartOf("counter", "c0"));
  ep->Act(AddCall("call_1", 1));
  std::this_thread::sleep_for(1500ms);
  Error e = Fails(grpc::StatusCode::DEADLINE_EXCEEDED, "IDLE_TIMEOUT", [&] { ep->Act(Text("assistant", "stop")); });
  CHECK_EQ(e.metadata().at("idle_timeout_s"), std::string("1"));
  WaitActive(r.server, 0);
  // before start, and after done
  auto t0 = Clock::now();
  grpc::Status s = RawEpisode(r.address, {}, nullptr, /*half_close=*/false);
  CHECK(s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && Error::FromStatus(s).reason() == "IDLE_TIMEOUT");
  CHECK(Clock::now() - t0 >= 900ms);
  s = RawEpisode(r.address, {StartRequest(StartOf("counter", "c0")), ActionOf(Text("assistant", "stop"))}, nullptr, false);
  CHECK(s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && Error::FromStatus(s).reason() == "IDLE_TIMEOUT");
}

TEST(a_blocking_environment_does_not_stall_other_episodes) {
  Running r;
  EnvClient client(r.address);
  auto slow = client.Start(StartOf("counter", "c0"));
  std::thread sleeper([&] { slow->Act(Text("assistant", "sleep")); });
  std::this_thread::sleep_for(100ms);
  auto t0 = Clock::now();
  auto quick = client.Start(StartOf("counter", "c1"));
  quick->Act(AddCall("call_1", 2));
  CHECK(quick->Act(Text("assistant", "stop")).done());
  quick->Close();
  auto quick_took = Clock::now() - t0;
  sleeper.join();
  CHECK(quick_took < 2500ms);  // not after the 3 s the other episode's environment blocks
}

TEST(undecodable_bytes_are_malformed_request) {
  Running r;
  auto channel = grpc::CreateChannel(r.address, grpc::InsecureChannelCredentials());
  grpc::Slice slice(std::string("\x0a\x7f\x00", 3));
  grpc::ByteBuffer garbage(&slice, 1), reply;
  for (const char* method : {"Describe", "Score", "RunEpisode"}) {
    grpc::ClientContext ctx;
    std::string path = std::string("/rollmesh.v1.EnvironmentService/") + method;
    grpc::Status s = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
        channel.get(), grpc::internal::RpcMethod(path.c_str(), grpc::internal::RpcMethod::NORMAL_RPC), &ctx, garbage,
        &reply);
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && Error::FromStatus(s).reason() == "MALFORMED_REQUEST");
  }
  {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
        grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(
            channel.get(),
            grpc::internal::RpcMethod("/rollmesh.v1.EnvironmentService/ListTasks",
                                      grpc::internal::RpcMethod::SERVER_STREAMING),
            &ctx, garbage));
    while (reader->Read(&reply)) {
    }
    grpc::Status s = reader->Finish();
    CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && Error::FromStatus(s).reason() == "MALFORMED_REQUEST");
  }
  grpc::ClientContext ctx;
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel.get(),
          grpc::internal::RpcMethod("/rollmesh.v1.EnvironmentService/Episode", grpc::internal::RpcMethod::BIDI_STREAMING),
          &ctx));
  stream->Write(garbage);
  while (stream->Read(&reply)) {
  }
  grpc::Status s = stream->Finish();
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT && Error::FromStatus(s).reason() == "MALFORMED_REQUEST");
  EnvClient(r.address).Describe();
}

TEST(score_and_run_episode_when_not_offered_are_not_supported) {
  Running r(Running::Options(), /*with_score=*/false);
  EnvClient client(r.address);
  CHECK(!client.Describe().environments(0).has_score());
  v1::ScoreRequest req;
  req.set_env("counter");
  req.mutable_task()->set_task_id("c0");
  Fails(grpc::StatusCode::UNIMPLEMENTED, "NOT_SUPPORTED", [&] { client.Score(req); });
  auto stub = v1::EnvironmentService::NewStub(grpc::CreateChannel(r.address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::RunEpisodeResponse out;
  grpc::Status s = stub->RunEpisode(&ctx, v1::RunEpisodeRequest(), &out);
  CHECK(s.error_code() == grpc::StatusCode::UNIMPLEMENTED && Error::FromStatus(s).reason() == "NOT_SUPPORTED");
}

TEST(score_finds_dataset_tasks_and_refuses_unknown_ones) {
  Running r;
  EnvClient client(r.address);
  v1::ScoreRequest req;
  req.set_env("counter");
  (*req.mutable_state()->mutable_fields())["total"].set_number_value(2);
  req.mutable_task()->set_task_id("t0");
  req.mutable_task()->set_split("test");
  CHECK_EQ(client.Score(req).reward(), 1.0);
  req.mutable_task()->set_split("");
  Fails(grpc::StatusCode::NOT_FOUND, "UNKNOWN_TASK", [&] { client.Score(req); });
  req.clear_task();
  Fails(grpc::StatusCode::INVALID_ARGUMENT, "NO_TASK", [&] { client.Score(req); });
  req.set_env("nope");
  Fails(grpc::StatusCode::NOT_FOUND, "UNKNOWN_ENVIRONMENT", [&] { client.Score(req); });
}

TEST(shutdown_drains_then_stops) {
  Running r;
  EnvClient client(r.address);
  auto open = client.Start(StartOf("counter", "c0"));
  auto t0 = Clock::now();
  std::thread stopper([&] { r.server.Shutdown(5.0); });
  while (r.server.active_episodes() == 1) {  // wait for the drain to start
    try {
      client.Start(StartOf("counter", "c1"))->Close();
      std::this_thread::sleep_for(10ms);
    } catch (const Error& e) {
      CHECK_EQ(e.code(), grpc::StatusCode::UNAVAILABLE);
      CHECK_EQ(e.reason(), std::string("DRAINING"));
      break;
    }
  }
  CHECK(open->Act(Text("assistant", "stop")).done());  // in-flight episodes go on during the grace
  open->Close();
  stopper.join();
  CHECK(Clock::now() - t0 < 4s);  // it stopped when the last episode ended, not at the grace's end
}

TEST(shutdown_cancels_episodes_past_the_grace) {
  Running r;
  EnvClient client(r.address);
  int closed = closed_episodes;
  auto open = client.Start(StartOf("counter", "c0"));
  auto t0 = Clock::now();
  r.server.Shutdown(0.3);
  CHECK(Clock::now() - t0 >= 250ms);
  CHECK_EQ(r.server.active_episodes(), 0);
  CHECK_EQ(closed_episodes.load(), closed + 1);
  try {
    open->Act(Text("assistant", "stop"));
    CHECK(false);
  } catch (const Error& e) {
    CHECK(e.code() == grpc::StatusCode::CANCELLED || e.code() == grpc::StatusCode::UNAVAILABLE);
  }
}
