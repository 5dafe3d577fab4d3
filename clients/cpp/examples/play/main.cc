// play: plays episodes on any rollmesh environment server with a scripted policy, through
// rollmesh::EnvClient, and prints one line per episode. Failed calls print the status code and the
// server's ErrorInfo reason.
//
//   play ADDRESS [--env NAME] [--split SPLIT] [--episodes N] [--policy answer|bisect|codebreaker]
//        [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]
//
// With a CA (or $ROLLMESH_TLS_CA, ...) it connects over TLS and checks that the server's
// certificate names env.rollmesh; servers with mutual TLS need the certificate of an identity with
// the orchestrator role.
//
// Policies: `answer` replies the task's reference answer (the client decides what the policy sees);
// `bisect` finds a number from "Higher"/"Lower" feedback (guess-number); `codebreaker` plays bulls
// and cows, always guessing a code that agrees with all the feedback so far.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "rollmesh/client.h"
#include "rollmesh/environment.h"

namespace {

using rollmesh::v1::Message;

struct Args {
  std::string address, env, split, policy = "answer";
  int episodes = 1;
  rollmesh::TlsFiles tls = rollmesh::TlsFiles::FromEnv();
};

// A policy: the next assistant message, given the conversation so far.
using Policy = std::function<std::string(const std::vector<Message>&)>;

const std::string& LastEnvText(const std::vector<Message>& conversation) {
  static const std::string none;
  return conversation.empty() ? none : conversation.back().content();
}

Policy Answer(const rollmesh::v1::Task& task) {
  return [answer = task.answer().empty() ? std::string("42") : task.answer()](const std::vector<Message>&) {
    return answer;
  };
}

Policy Bisect(const rollmesh::v1::Task& task) {
  long lo = 1, hi = 100;
  const auto& info = task.info().fields();
  if (info.count("low") && info.count("high")) {
    lo = static_cast<long>(info.at("low").number_value());
    hi = static_cast<long>(info.at("high").number_value());
  } else {
    std::smatch m;
    const std::string& prompt = task.prompt(task.prompt_size() - 1).content();
    if (std::regex_search(prompt, m, std::regex(R"(between (-?\d+) and (-?\d+))")))
      lo = std::stol(m[1]), hi = std::stol(m[2]);
  }
  auto state = std::make_shared<std::pair<long, long>>(lo, hi);
  auto last = std::make_shared<long>(0);
  return [state, last](const std::vector<Message>& conversation) {
    const std::string& feedback = LastEnvText(conversation);
    if (feedback.find("Higher") != std::string::npos) state->first = *last + 1;
    if (feedback.find("Lower") != std::string::npos) state->second = *last - 1;
    *last = state->first + (state->second - state->first) / 2;
    return std::to_string(*last);
  };
}

Policy Codebreaker() {
  auto candidates = std::make_shared<std::vector<std::string>>();
  for (char a = '0'; a <= '9'; ++a)
    for (char b = '0'; b <= '9'; ++b)
      for (char c = '0'; c <= '9'; ++c)
        if (a != b && a != c && b != c) candidates->push_back({a, b, c});
  return [candidates](const std::vector<Message>& conversation) {
    static const std::regex feedback(R"(Guess (\d{3}): (\d) bulls? and (\d) cows?)");
    std::smatch m;
    const std::string& text = LastEnvText(conversation);
    if (std::regex_search(text, m, feedback)) {
      std::string guess = m[1];
      int bulls = std::stoi(m[2]), cows = std::stoi(m[3]);
      std::vector<std::string> keep;
      for (const auto& code : *candidates) {
        int b = 0, c = 0;
        for (int i = 0; i < 3; ++i) {
          if (guess[i] == code[i])
            ++b;
          else if (code.find(guess[i]) != std::string::npos)
            ++c;
        }
        if (b == bulls && c == cows) keep.push_back(code);
      }
      candidates->swap(keep);
    }
    return candidates->empty() ? std::string("012") : candidates->front();
  };
}

std::string Join(const google::protobuf::Map<std::string, double>& values) {
  std::vector<std::pair<std::string, double>> sorted(values.begin(), values.end());
  std::sort(sorted.begin(), sorted.end());
  std::string out;
  char buf[64];
  for (const auto& [k, v] : sorted) {
    std::snprintf(buf, sizeof buf, "%s:%.6g", k.c_str(), v);
    out += (out.empty() ? "" : ",") + std::string(buf);
  }
  return out.empty() ? "-" : out;
}

int Play(const Args& args) {
  rollmesh::EnvClient client(args.address, 30, 600, args.tls);
  rollmesh::v1::DescribeResponse info = client.Describe();
  std::printf("server %s (%s, %s), protocol %s\n", args.address.c_str(), info.server().language().c_str(),
              info.server().sdk_version().c_str(), info.server().protocol_version().c_str());
  if (info.environments().empty()) throw std::runtime_error("the server hosts no environment");
  std::string env = args.env.empty() ? info.environments(0).name() : args.env;
  rollmesh::TaskPage page = client.ListTasks(env, args.split, args.episodes);
  if (page.tasks.empty()) throw std::runtime_error("no tasks in " + env + "/" + (args.split.empty() ? "default" : args.split));

  double total = 0;
  for (const auto& task : page.tasks) {
    rollmesh::v1::StartEpisode start;
    start.set_env(env);
    start.set_task_id(task.task_id());
    start.set_split(task.split());
    auto session = client.Start(start);
    const rollmesh::v1::Task& played = session->started().task();
    Policy policy = args.policy == "bisect" ? Bisect(played) : args.policy == "codebreaker" ? Codebreaker() : Answer(played);
    while (!session->done()) session->Act(rollmesh::Text("assistant", policy(session->conversation())));
    const rollmesh::v1::Step& last = session->last_step();
    session->Close();
    std::string stop = rollmesh::v1::StopReason_Name(last.stop_reason()).substr(std::string("STOP_REASON_").size());
    for (auto& c : stop) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::printf("task=%s turns=%d stop=%s reward=%.6g rewards=%s\n", task.task_id().c_str(), last.turn(),
                stop.c_str(), last.has_reward() ? last.reward() : 0.0, Join(last.rewards()).c_str());
    total += last.reward();
  }
  std::printf("played %zu episodes of %s: mean reward %.6g\n", page.tasks.size(), env.c_str(),
              total / static_cast<double>(page.tasks.size()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage =
      "usage: play ADDRESS [--env NAME] [--split SPLIT] [--episodes N] [--policy answer|bisect|codebreaker]\n"
      "            [--tls-ca FILE] [--tls-cert FILE --tls-key FILE]   (default: $ROLLMESH_TLS_CA, ...)\n";
  Args args;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
        return argv[++i];
      };
      if (a == "--help" || a == "-h") {
        std::fputs(usage, stdout);
        return 0;
      } else if (a == "--env") {
        args.env = value();
      } else if (a == "--split") {
        args.split = value();
      } else if (a == "--episodes") {
        args.episodes = std::stoi(value());
        if (args.episodes < 1) throw std::invalid_argument("--episodes must be >= 1");
      } else if (a == "--policy") {
        args.policy = value();
        if (args.policy != "answer" && args.policy != "bisect" && args.policy != "codebreaker")
          throw std::invalid_argument("unknown policy " + rollmesh::Quoted(args.policy));
      } else if (a == "--tls-ca") {
        args.tls.ca = value();
      } else if (a == "--tls-cert") {
        args.tls.cert = value();
      } else if (a == "--tls-key") {
        args.tls.key = value();
      } else if (a.rfind("--", 0) == 0 || !args.address.empty()) {
        throw std::invalid_argument("unexpected argument " + rollmesh::Quoted(a));
      } else {
        args.address = a;
      }
    }
    if (args.address.empty()) throw std::invalid_argument("ADDRESS is required");
  } catch (const std::exception& e) {  // std::stoi throws std::invalid_argument/out_of_range too
    std::fprintf(stderr, "play: %s\n%s", e.what(), usage);
    return 2;
  }
  try {
    return Play(args);
  } catch (const rollmesh::Error& e) {
    std::fprintf(stderr, "play: %s %s: %s\n", rollmesh::CodeName(e.code()).c_str(),
                 e.reason().empty() ? "(no reason)" : e.reason().c_str(), e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "play: %s\n", e.what());
    return 1;
  }
}
