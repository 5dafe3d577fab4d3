// What a C++ author writes: an Environment (tasks + a harness + rewards). The helper in
// rollmesh/server.h serves it as rollmesh.v1.EnvironmentService.
#pragma once

#include <google/protobuf/repeated_ptr_field.h>
#include <google/protobuf/struct.pb.h>

#include <any>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "rollmesh/errors.h"
#include "rollmesh/v1/environment.pb.h"
#include "rollmesh/v1/messages.pb.h"

namespace rollmesh {

using Rewards = std::map<std::string, double>;
using Messages = google::protobuf::RepeatedPtrField<v1::Message>;

// One episode, as the environment's callbacks see it. The helper creates it on `start` and passes
// the same object to on_start, every on_action and on_close.
struct Episode {
  std::string id;      // the client's episode_id, or one the server made up
  std::string env;     // the environment's name
  v1::Task task;       // from the dataset, or inline from the client
  int64_t seed = 0;    // StartEpisode.seed
  google::protobuf::Struct options;  // StartEpisode.options
  int max_turns = 0;
  int turn = 0;        // in on_action: the 1-based number of this action
  google::protobuf::Struct state;    // sent with the final step, for Score
  std::any data;       // anything else the environment keeps per episode
};

// The environment's answer to one action.
struct StepResult {
  std::vector<v1::Message> messages;  // tool results, feedback, the next user turn
  bool done = false;                  // the environment ends the episode (stop_reason DONE)
  Rewards rewards;  // inline rewards; empty = "not scored here" (has_reward false)
  Rewards metrics;  // reported, not rewarded
};

using StartFn = std::function<std::vector<v1::Message>(Episode&)>;
using ActionFn = std::function<StepResult(Episode&, const v1::Message& action)>;
using CloseFn = std::function<void(Episode&)>;
using ScoreFn = std::function<Rewards(const v1::Task& task, const Messages& messages,
                                      const google::protobuf::Struct& state)>;

struct Environment {
  std::string name;  // required, unique per server
  std::string version = "0.1.0";
  std::string description;
  // UNSPECIFIED: TOOL when there are tools, SINGLE_TURN when max_turns is 1, MULTI_TURN otherwise.
  v1::EnvironmentKind kind = v1::ENVIRONMENT_KIND_UNSPECIFIED;
  int max_turns = 1;
  // Split name -> tasks (task_id unique per split, a prompt each); the helper fills in env and split.
  std::map<std::string, std::vector<v1::Task>> splits;
  std::string default_split;  // empty: "train" when there is one, else the first split
  std::vector<v1::ToolSpec> tools;
  std::vector<std::string> reward_names;  // empty: the keys of reward_weights
  // Weight of each reward in Step.reward and ScoreResponse.reward; 1 when absent.
  Rewards reward_weights;
  v1::SamplingParams default_sampling;

  // The callbacks run on the episode's own thread: they may block without stalling other episodes.
  // Throw rollmesh::Error for a particular status; any other exception ends the episode with
  // INTERNAL (ENVIRONMENT_FAILED).
  StartFn on_start;    // optional: the first messages; default: task.prompt
  ActionFn on_action;  // required: one call per action
  CloseFn on_close;    // optional: once, however the episode ends (done, dropped, timeout, shutdown)
  ScoreFn score;       // optional: rewards a finished conversation; absent = has_score false
};

// A chat message with a role and text.
v1::Message Text(const std::string& role, const std::string& content);
// A task with a user prompt (and a system prompt, when not empty).
v1::Task MakeTask(const std::string& task_id, const std::string& user_prompt, const std::string& answer,
                  const std::string& system_prompt = "");
// A tool: name, description and the JSON Schema of its arguments object.
v1::ToolSpec Tool(const std::string& name, const std::string& description,
                  const std::string& parameters_json_schema);
// The `tool` message that answers one tool call.
v1::Message ToolReply(const v1::ToolCall& call, const std::string& content);
// Weighted sum of rewards (weight 1 when absent).
double WeightedReward(const Rewards& rewards, const Rewards& weights);

}  // namespace rollmesh
