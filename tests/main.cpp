// Catch's main, with the exit code of loud skips (skip_support.hpp): when every case that ran
// called skip_case and none failed, the process exits with skip_exit_code, which ctest reports as
// skipped; otherwise the number of failed cases as usual.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "skip_support.hpp"

namespace {

struct skip_listener : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(const Catch::TestCaseInfo& info) override {
    TestEventListenerBase::testCaseStarting(info);
    ++aqua_test::skip_state().started;
    aqua_test::skip_state().current_skipped = false;
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(skip_listener)

int main(int argc, char* argv[]) {
  const int failed = Catch::Session().run(argc, argv);
  const auto& s = aqua_test::skip_state();
  if (failed == 0 && s.started > 0 && s.skipped == s.started) return aqua_test::skip_exit_code;
  return failed;
}
