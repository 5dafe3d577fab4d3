#include <cstdio>
#include <cstring>

#include "check.h"

std::vector<check::Case>& check::Registry() {
  static std::vector<Case> cases;
  return cases;
}

// Runs every test (or those whose name contains argv[1]); exit status 1 when any failed.
int main(int argc, char** argv) {
  int passed = 0, failed = 0;
  for (const auto& c : check::Registry()) {
    if (argc > 1 && !std::strstr(c.name, argv[1])) continue;
    try {
      c.fn();
      ++passed;
      std::printf("PASS %s\n", c.name);
    } catch (const std::exception& e) {
      ++failed;
      std::printf("FAIL %s: %s\n", c.name, e.what());
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
