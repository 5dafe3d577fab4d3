// Bulls and cows: the rules, apart from any server. A code is 3 different digits; a guess scores
// bulls (right digit, right place) and cows (right digit, wrong place).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace bulls_and_cows {

inline constexpr int kDigits = 3;

struct Score {
  int bulls = 0, cows = 0;
};

// The secret code of a task, from a seed (deterministic: the dataset is the same on every run).
std::string MakeSecret(uint64_t seed);
// The first run of exactly kDigits digits in `text`, when they are all different.
std::optional<std::string> ParseGuess(const std::string& text);
Score Compare(const std::string& secret, const std::string& guess);
// "Guess 071: 1 bull and 0 cows."
std::string Feedback(const std::string& guess, Score score);

}  // namespace bulls_and_cows
