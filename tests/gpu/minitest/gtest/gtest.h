// A tiny stand-in for the part of GoogleTest that tests/gpu uses, for the GPU-check build
// (QLORA_GPU_CHECK_ONLY) on machines without GoogleTest. Same spelling, so the test files compile
// against either: TEST, EXPECT_/ASSERT_{TRUE,FALSE,EQ,NE,LT,LE,GT,GE,NEAR}, GTEST_SKIP,
// SCOPED_TRACE, ADD_FAILURE, messages streamed with <<. main() is in minitest_main.cpp and ends
// with the plain line "N passed, N failed, N skipped".
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace minitest {

struct TestCase {
  std::string name;
  void (*fn)();
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> r;
  return r;
}

struct State {
  bool failed = false, skipped = false;
  std::vector<std::string> traces;
};

inline State& state() {
  static State s;
  return s;
}

struct Registrar {
  Registrar(const char* suite, const char* name, void (*fn)()) {
    registry().push_back({std::string(suite) + "." + name, fn});
  }
};

struct Msg {
  std::ostringstream os;
  template <class T>
  Msg& operator<<(const T& v) {
    os << v;
    return *this;
  }
};

template <class T, class = void>
struct printable : std::false_type {};
template <class T>
struct printable<T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<const T&>())>> : std::true_type {
};

template <class T>
std::string show(const T& v) {
  if constexpr (printable<T>::value) {
    std::ostringstream os;
    os << v;
    return os.str();
  } else {
    return "<value>";
  }
}

// Records a failure (or a skip) when a message is assigned to it.
struct Failure {
  const char* file;
  int line;
  std::string what;
  void operator=(Msg& m) const {
    std::string s = m.os.str();
    std::fprintf(stderr, "%s:%d: Failure\n%s%s%s\n", file, line, what.c_str(), s.empty() ? "" : "\n", s.c_str());
    for (const std::string& t : state().traces) std::fprintf(stderr, "  trace: %s\n", t.c_str());
    state().failed = true;
  }
  void operator=(Msg&& m) const { *this = m; }
};

struct Skip {
  void operator=(Msg& m) const {
    std::printf("  skipped: %s\n", m.os.str().c_str());
    state().skipped = true;
  }
  void operator=(Msg&& m) const { *this = m; }
};

struct Trace {
  explicit Trace(const std::string& s) { state().traces.push_back(s); }
  ~Trace() { state().traces.pop_back(); }
};

template <class A, class B, class Op>
bool cmp(const A& a, const B& b, Op op, const char* ea, const char* eb, const char* ops, std::string& what) {
  if (op(a, b)) return true;
  what = std::string("Expected: (") + ea + ") " + ops + " (" + eb + "), actual: " + show(a) + " vs " + show(b);
  return false;
}

}  // namespace minitest

#define MT_CAT2_(a, b) a##b
#define MT_CAT_(a, b) MT_CAT2_(a, b)

#define TEST(suite, name)                                                          \
  static void MT_CAT_(mt_test_, MT_CAT_(suite, MT_CAT_(_, name)))();               \
  static ::minitest::Registrar MT_CAT_(mt_reg_, MT_CAT_(suite, MT_CAT_(_, name)))( \
      #suite, #name, &MT_CAT_(mt_test_, MT_CAT_(suite, MT_CAT_(_, name))));        \
  static void MT_CAT_(mt_test_, MT_CAT_(suite, MT_CAT_(_, name)))()

#define MT_BOOL_(cond, text, on_fail) \
  if (cond)                           \
    ;                                 \
  else                                \
    on_fail ::minitest::Failure{__FILE__, __LINE__, text} = ::minitest::Msg()

#define MT_CMP_(a, b, op, on_fail)                                                                           \
  if (std::string mt_what_;                                                                                  \
      ::minitest::cmp((a), (b), [](const auto& x, const auto& y) { return x op y; }, #a, #b, #op, mt_what_)) \
    ;                                                                                                        \
  else                                                                                                       \
    on_fail ::minitest::Failure{__FILE__, __LINE__, mt_what_} = ::minitest::Msg()

#define EXPECT_TRUE(c) MT_BOOL_(c, "Expected true: " #c, )
#define EXPECT_FALSE(c) MT_BOOL_(!(c), "Expected false: " #c, )
#define ASSERT_TRUE(c) MT_BOOL_(c, "Expected true: " #c, return )
#define ASSERT_FALSE(c) MT_BOOL_(!(c), "Expected false: " #c, return )
#define EXPECT_EQ(a, b) MT_CMP_(a, b, ==, )
#define EXPECT_NE(a, b) MT_CMP_(a, b, !=, )
#define EXPECT_LT(a, b) MT_CMP_(a, b, <, )
#define EXPECT_LE(a, b) MT_CMP_(a, b, <=, )
#define EXPECT_GT(a, b) MT_CMP_(a, b, >, )
#define EXPECT_GE(a, b) MT_CMP_(a, b, >=, )
#define ASSERT_EQ(a, b) MT_CMP_(a, b, ==, return )
#define ASSERT_NE(a, b) MT_CMP_(a, b, !=, return )
#define ASSERT_LT(a, b) MT_CMP_(a, b, <, return )
#define ASSERT_LE(a, b) MT_CMP_(a, b, <=, return )
#define ASSERT_GT(a, b) MT_CMP_(a, b, >, return )
#define ASSERT_GE(a, b) MT_CMP_(a, b, >=, return )
#define EXPECT_NEAR(a, b, tol) \
  MT_BOOL_(std::fabs(double(a) - double(b)) <= double(tol), "Expected near: " #a " vs " #b " within " #tol, )
#define ASSERT_NEAR(a, b, tol) \
  MT_BOOL_(std::fabs(double(a) - double(b)) <= double(tol), "Expected near: " #a " vs " #b " within " #tol, return )
#define ADD_FAILURE() ::minitest::Failure{__FILE__, __LINE__, "Failed"} = ::minitest::Msg()
#define GTEST_SKIP() return ::minitest::Skip{} = ::minitest::Msg()
#define SCOPED_TRACE(s) ::minitest::Trace MT_CAT_(mt_trace_, __LINE__)(s)
