#include "game.h"

#include <cctype>

namespace bulls_and_cows {

std::string MakeSecret(uint64_t seed) {
  std::string digits = "0123456789", code;
  for (int i = 0; i < kDigits; ++i) {
    // splitmix64: a few lines, and the same numbers on every platform
    uint64_t z = (seed += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    size_t pick = z % digits.size();
    code += digits[pick];
    digits.erase(pick, 1);
  }
  return code;
}

std::optional<std::string> ParseGuess(const std::string& text) {
  for (size_t i = 0; i < text.size();) {
    if (!std::isdigit(static_cast<unsigned char>(text[i]))) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
    if (j - i == kDigits) {
      std::string guess = text.substr(i, kDigits);
      bool distinct = guess[0] != guess[1] && guess[0] != guess[2] && guess[1] != guess[2];
      return distinct ? std::optional<std::string>(guess) : std::nullopt;
    }
    i = j;
  }
  return std::nullopt;
}

Score Compare(const std::string& secret, const std::string& guess) {
  Score s;
  for (int i = 0; i < kDigits; ++i) {
    if (guess[i] == secret[i])
      ++s.bulls;
    else if (secret.find(guess[i]) != std::string::npos)
      ++s.cows;
  }
  return s;
}

std::string Feedback(const std::string& guess, Score score) {
  return "Guess " + guess + ": " + std::to_string(score.bulls) + (score.bulls == 1 ? " bull" : " bulls") + " and " +
         std::to_string(score.cows) + (score.cows == 1 ? " cow." : " cows.");
}

}  // namespace bulls_and_cows
