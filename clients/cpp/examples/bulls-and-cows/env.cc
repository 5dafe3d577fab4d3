// The "bulls-and-cows" environment: find a secret code of 3 different digits from bulls/cows
// feedback, in at most 10 guesses. Rewards: solved (1 when cracked) and efficiency (weight 0.5):
// (11 - guesses) / 10 when solved, so fewer guesses score more.
#include "env.h"

#include <cstdio>

#include "game.h"

namespace bulls_and_cows {
namespace {

constexpr int kMaxTurns = 10;

const char kSystem[] = "You are playing Bulls and Cows. Think, then answer with your guess.";

std::string UserPrompt() {
  return "I picked a secret code of " + std::to_string(kDigits) +
         " different digits (0-9). Guess it: reply with " + std::to_string(kDigits) +
         " different digits, e.g. 071. For each guess I tell you the bulls (right digit in the right place) "
         "and cows (right digit in the wrong place). You have " +
         std::to_string(kMaxTurns) + " guesses.";
}

struct Game {
  std::string secret;
  int guesses = 0, invalid = 0;
  bool solved = false;
};

rollmesh::Rewards RewardsOf(const Game& g) {
  double efficiency = g.solved ? static_cast<double>(kMaxTurns - g.guesses + 1) / kMaxTurns : 0.0;
  return {{"solved", g.solved ? 1.0 : 0.0}, {"efficiency", efficiency}};
}

// Plays `text` as one turn of `g`; returns the environment's reply.
std::string Turn(Game& g, const std::string& text) {
  auto guess = ParseGuess(text);
  if (!guess) {
    ++g.invalid;
    return "Not a guess: reply with " + std::to_string(kDigits) + " different digits, e.g. 071.";
  }
  ++g.guesses;
  Score s = Compare(g.secret, *guess);
  if (s.bulls == kDigits) {
    g.solved = true;
    return Feedback(*guess, s) + " You cracked the code in " + std::to_string(g.guesses) +
           (g.guesses == 1 ? " guess!" : " guesses!");
  }
  return Feedback(*guess, s);
}

std::vector<rollmesh::v1::Task> Split(const std::string& name, int n, uint64_t seed) {
  std::vector<rollmesh::v1::Task> tasks;
  for (int i = 0; i < n; ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "%s-%03d", name.c_str(), i);
    rollmesh::v1::Task t = rollmesh::MakeTask(id, UserPrompt(), MakeSecret(seed * 1000003 + i), kSystem);
    (*t.mutable_info()->mutable_fields())["digits"].set_number_value(kDigits);
    tasks.push_back(std::move(t));
  }
  return tasks;
}

}  // namespace

rollmesh::Environment Environment(int train_tasks, int test_tasks) {
  rollmesh::Environment env;
  env.name = "bulls-and-cows";
  env.version = "1.0.0";
  env.description = "Find a secret code of 3 different digits from bulls-and-cows feedback.";
  env.max_turns = kMaxTurns;
  env.splits = {{"train", Split("train", train_tasks, 1)}, {"test", Split("test", test_tasks, 2)}};
  env.reward_names = {"solved", "efficiency"};
  env.reward_weights = {{"solved", 1.0}, {"efficiency", 0.5}};
  env.default_sampling.set_max_tokens(64);

  env.on_start = [](rollmesh::Episode& ep) {
    ep.data = Game{ep.task.answer()};
    if (!ParseGuess(ep.task.answer()))  // an inline task brings its own code
      throw rollmesh::Error(grpc::StatusCode::INVALID_ARGUMENT, rollmesh::v1::INVALID_TASK,
                            "the task's answer must be " + std::to_string(kDigits) + " different digits");
    return std::vector<rollmesh::v1::Message>(ep.task.prompt().begin(), ep.task.prompt().end());
  };
  env.on_action = [](rollmesh::Episode& ep, const rollmesh::v1::Message& action) {
    Game& g = std::any_cast<Game&>(ep.data);
    rollmesh::StepResult r;
    std::string reply = Turn(g, action.content());
    if (!g.solved && ep.turn == ep.max_turns) reply += " No guesses left: the code was " + g.secret + ".";
    r.messages.push_back(rollmesh::Text("user", reply));
    r.done = g.solved;
    if (g.solved || ep.turn == ep.max_turns) {  // the last turn: the server ends it, so score it here
      r.rewards = RewardsOf(g);
      r.metrics = {{"guesses", g.guesses}, {"invalid", g.invalid}};
      auto& state = *ep.state.mutable_fields();
      state["solved"].set_bool_value(g.solved);
      state["guesses"].set_number_value(g.guesses);
    }
    return r;
  };
  env.score = [](const rollmesh::v1::Task& task, const rollmesh::Messages& messages, const google::protobuf::Struct&) {
    if (!ParseGuess(task.answer()))
      throw rollmesh::Error(grpc::StatusCode::INVALID_ARGUMENT, rollmesh::v1::INVALID_FIELD,
                            "Score needs the task's answer (" + std::to_string(kDigits) + " different digits)",
                            {{"field", "task.answer"}});
    Game g{task.answer()};
    int turns = 0;
    for (const auto& m : messages) {
      if (m.role() != "assistant" || g.solved || turns == kMaxTurns) continue;
      ++turns;
      Turn(g, m.content());
    }
    return RewardsOf(g);
  };
  return env;
}

}  // namespace bulls_and_cows
