// Loud skips. Catch2 2.13 has no SKIP: a case that cannot run here calls skip_case(why), which
// prints a Catch warning naming the reason and counts the case as skipped. main.cpp then exits
// with skip_exit_code when every case of the run skipped and none failed, and tests/CMakeLists.txt
// maps that code to "skipped" (SKIP_RETURN_CODE) for the ctest test of each case. Run directly,
// a skipped case passes with the warning; a run that also holds cases that ran exits 0.
// A case that was told where its data is (an environment variable) and cannot use it fails: it
// must not skip.
#pragma once

#include <catch2/catch.hpp>

#include <string>

namespace aqua_test {

/// The exit code ctest reads as "skipped" (the automake convention).
inline constexpr int skip_exit_code = 77;

struct skip_counts {
  int started = 0, skipped = 0;
  bool current_skipped = false;
};
inline skip_counts& skip_state() {
  static skip_counts s;
  return s;
}

/// Marks the running case skipped (once per case) and says why; the caller returns right after.
inline void skip_case(const std::string& why) {
  WARN("SKIPPED: " << why);
  auto& s = skip_state();
  if (!s.current_skipped) {
    s.current_skipped = true;
    ++s.skipped;
  }
}

}  // namespace aqua_test
