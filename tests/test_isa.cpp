// The one CPU probe and the process-wide ISA cap: supported_isa() against the kernel's own account
// of the CPU (/proc/cpuinfo), active_isa() as the narrower of the two, and decode under each cap.
#include <aqua/attention.hpp>
#include <aqua/calibrate.hpp>
#include <aqua/isa.hpp>

#include <catch2/catch.hpp>

#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "kernel_support.hpp"
#include "skip_support.hpp"

namespace {

/// The feature flags of the first processor in /proc/cpuinfo (empty when there is none).
std::set<std::string> cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

}  // namespace

TEST_CASE("supported_isa reports what the kernel says the CPU has", "[isa]") {
  const auto flags = cpuinfo_flags();
  if (flags.empty()) {
    aqua_test::skip_case("no /proc/cpuinfo flags line to compare with (not Linux on x86)");
    return;
  }
  const bool avx2 = flags.count("avx2") && flags.count("fma") && flags.count("f16c");
  const aqua::isa want = !avx2                    ? aqua::isa::portable
                         : flags.count("avx512f") ? aqua::isa::avx512
                                                  : aqua::isa::avx2;
  CAPTURE(aqua::isa_name(want));
  CHECK(aqua::supported_isa() == want);
}

TEST_CASE("set_max_isa caps active_isa, returns the previous cap, and never widens past the CPU", "[isa]") {
  const aqua_test::hook_guard reset;
  const aqua::isa supported = aqua::supported_isa();
  CHECK(aqua::max_isa() == aqua::isa::avx512);  // no cap by default
  CHECK(aqua::active_isa() == supported);
  CHECK(aqua::set_max_isa(aqua::isa::portable) == aqua::isa::avx512);
  CHECK(aqua::active_isa() == aqua::isa::portable);
  CHECK(aqua::set_max_isa(aqua::isa::avx2) == aqua::isa::portable);
  CHECK(aqua::active_isa() == (supported == aqua::isa::portable ? aqua::isa::portable : aqua::isa::avx2));
  aqua::set_max_isa(aqua::isa::avx512);
  CHECK(aqua::active_isa() == supported);
  CHECK(std::string(aqua::isa_name(aqua::isa::avx512)) == "avx512");
  CHECK(std::string(aqua::isa_name(aqua::isa::avx2)) == "avx2");
  CHECK(std::string(aqua::isa_name(aqua::isa::portable)) == "portable");
}

TEST_CASE("decode under every cap is the same attention to float rounding", "[isa]") {
  // The portable path sums in another order than the SIMD ones, so the paths agree to float
  // rounding (AVX-512 and AVX2 bit for bit: test_aqua_attention.cpp, test_storage.cpp).
  const aqua_test::hook_guard reset;
  const aqua_test::random_layer L(8, 2, 64, 300, {16, true, 0, 1, 5, 100});
  std::vector<float> ref(std::size_t(8 * 64)), out(ref.size());
  aqua::aqua_decode(L.qv(), L.cache, aqua::selection_spec::top_k(64), aqua::make_view(ref.data(), 8, 64));
  for (aqua::isa cap : {aqua::isa::avx2, aqua::isa::portable}) {
    aqua::set_max_isa(cap);
    CAPTURE(aqua::isa_name(aqua::active_isa()));
    aqua::aqua_decode(L.qv(), L.cache, aqua::selection_spec::top_k(64), aqua::make_view(out.data(), 8, 64));
    double worst = 0;
    for (std::size_t i = 0; i < ref.size(); ++i)
      worst = aqua_test::max_or_nan(worst, std::abs(ref[i] - out[i]));
    CHECK(worst < 1e-5);
  }
}
