#include <openssl/evp.h>

#include <set>
#include <stdexcept>

#include "hosted_env.h"
#include "rollmesh/errors.h"

namespace rollmesh {

v1::Message Text(const std::string& role, const std::string& content) {
  v1::Message m;
  m.set_role(role);
  m.set_content(content);
  return m;
}

v1::Task MakeTask(const std::string& task_id, const std::string& user_prompt, const std::string& answer,
                  const std::string& system_prompt) {
  v1::Task t;
  t.set_task_id(task_id);
  if (!system_prompt.empty()) *t.add_prompt() = Text("system", system_prompt);
  *t.add_prompt() = Text("user", user_prompt);
  t.set_answer(answer);
  return t;
}

v1::ToolSpec Tool(const std::string& name, const std::string& description, const std::string& parameters_json_schema) {
  v1::ToolSpec t;
  t.set_name(name);
  t.set_description(description);
  t.set_parameters_json_schema(parameters_json_schema);
  return t;
}

v1::Message ToolReply(const v1::ToolCall& call, const std::string& content) {
  v1::Message m = Text("tool", content);
  m.set_tool_call_id(call.id());
  m.set_name(call.name());
  return m;
}

double WeightedReward(const Rewards& rewards, const Rewards& weights) {
  double total = 0;
  for (const auto& [name, value] : rewards) {
    auto w = weights.find(name);
    total += value * (w == weights.end() ? 1.0 : w->second);
  }
  return total;
}

namespace internal {
namespace {

void Require(bool ok, const std::string& env, const std::string& what) {
  if (!ok) throw std::invalid_argument("environment " + Quoted(env) + ": " + what);
}

// Hash of the environment's data (tools and tasks) and code (this executable), so that it changes
// whenever either does.
std::string Digest(const Environment& e) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  auto add = [ctx](const std::string& s) { EVP_DigestUpdate(ctx, s.data(), s.size()); };
  if (FILE* f = std::fopen("/proc/self/exe", "rb")) {
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) EVP_DigestUpdate(ctx, buf, n);
    std::fclose(f);
  }
  add(e.name + '\0' + e.version + '\0');
  for (const auto& t : e.tools) add(t.SerializeAsString());
  for (const auto& [split, tasks] : e.splits) {
    add(split + '\0');
    for (const auto& t : tasks) add(t.SerializeAsString());
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  static const char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) out += {hex[md[i] >> 4], hex[md[i] & 15]};
  return out;
}

}  // namespace

HostedEnv::HostedEnv(Environment e) : env(std::move(e)) {
  const std::string& name = env.name;
  if (name.empty()) throw std::invalid_argument("an environment needs a name");
  Require(static_cast<bool>(env.on_action), name, "on_action is required");
  Require(env.max_turns >= 1, name, "max_turns must be >= 1");
  Require(!env.splits.empty(), name, "needs at least one split of tasks");
  if (env.default_split.empty())
    env.default_split = env.splits.count("train") ? "train" : env.splits.begin()->first;
  Require(env.splits.count(env.default_split) > 0, name,
          "default_split " + Quoted(env.default_split) + " is not one of its splits");
  std::set<std::string> tool_names;
  for (const auto& t : env.tools)
    Require(!t.name().empty() && tool_names.insert(t.name()).second, name, "tools need unique, non-empty names");
  for (auto& [split, tasks] : env.splits) {
    Require(!split.empty(), name, "a split needs a name");
    auto& index = task_index[split];
    for (size_t i = 0; i < tasks.size(); ++i) {
      v1::Task& t = tasks[i];
      Require(!t.task_id().empty(), name, "task " + std::to_string(i) + " of split " + split + " has no task_id");
      Require(index.emplace(t.task_id(), i).second, name, "duplicate task_id " + Quoted(t.task_id()) + " in " + split);
      Require(t.prompt_size() > 0, name, "task " + Quoted(t.task_id()) + " has no prompt");
      t.set_env(name);
      t.set_split(split);
    }
  }
  if (env.reward_names.empty())
    for (const auto& [reward, _] : env.reward_weights) env.reward_names.push_back(reward);
  if (env.kind == v1::ENVIRONMENT_KIND_UNSPECIFIED)
    env.kind = !env.tools.empty()    ? v1::ENVIRONMENT_KIND_TOOL
               : env.max_turns == 1 ? v1::ENVIRONMENT_KIND_SINGLE_TURN
                                    : v1::ENVIRONMENT_KIND_MULTI_TURN;

  info.set_name(name);
  info.set_version(env.version);
  info.set_description(env.description);
  info.set_kind(env.kind);
  for (const auto& t : env.tools) *info.add_tools() = t;
  info.set_max_turns(env.max_turns);
  for (const auto& [split, tasks] : env.splits) (*info.mutable_splits())[split] = static_cast<int64_t>(tasks.size());
  for (const auto& r : env.reward_names) info.add_reward_names(r);
  info.set_has_score(static_cast<bool>(env.score));
  info.set_digest(Digest(env));
  *info.mutable_default_sampling() = env.default_sampling;
  info.set_has_run_episode(false);
  info.set_default_split(env.default_split);
}

const v1::Task* HostedEnv::find_task(const std::string& split, const std::string& task_id) const {
  auto s = task_index.find(split);
  if (s == task_index.end()) return nullptr;
  auto t = s->second.find(task_id);
  return t == s->second.end() ? nullptr : &env.splits.at(split)[t->second];
}

std::string HostedEnv::split_names() const {
  std::string out;
  for (const auto& [split, _] : env.splits) out += (out.empty() ? "" : ",") + split;
  return out;
}

}  // namespace internal
}  // namespace rollmesh
