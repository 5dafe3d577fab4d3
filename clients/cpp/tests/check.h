// A minimal test runner: TEST(name) { CHECK(...); }, run by tests/main.cc, which ends with the
// line "N passed, N failed".
#pragma once

#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace check {

struct Case {
  const char* name;
  std::function<void()> fn;
};
std::vector<Case>& Registry();

struct Register {
  Register(const char* name, std::function<void()> fn) { Registry().push_back({name, std::move(fn)}); }
};

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class A, class B>
void Equal(const A& a, const B& b, const char* expr_a, const char* expr_b, const char* file, int line) {
  if (a == b) return;
  std::ostringstream out;
  out << file << ":" << line << ": " << expr_a << " == " << expr_b << " failed: " << a << " vs " << b;
  throw Failure(out.str());
}

}  // namespace check

#define CHECK_CONCAT2(a, b) a##b
#define CHECK_CONCAT(a, b) CHECK_CONCAT2(a, b)
#define TEST(name)                                                              \
  static void name();                                                           \
  static check::Register CHECK_CONCAT(register_, name)(#name, name);            \
  static void name()
#define CHECK(cond)                                                                                       \
  do {                                                                                                    \
    if (!(cond)) throw check::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #cond); \
  } while (0)
#define CHECK_EQ(a, b) check::Equal((a), (b), #a, #b, __FILE__, __LINE__)
// Runs `stmt`, which must throw `type`; binds the exception to `e` for the checks in `then`.
#define CHECK_THROWS(type, stmt, then)                                                                    \
  do {                                                                                                    \
    bool thrown = false;                                                                                  \
    try {                                                                                                 \
      stmt;                                                                                               \
    } catch (const type& e) {                                                                             \
      thrown = true;                                                                                      \
      (void)e;                                                                                            \
      then;                                                                                               \
    }                                                                                                     \
    if (!thrown) throw check::Failure(std::string(__FILE__) + ":" + std::to_string(__LINE__) + ": " #stmt \
                                      " did not throw " #type);                                            \
  } while (0)
