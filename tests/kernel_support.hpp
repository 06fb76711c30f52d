// Helpers shared by the tests of the AQUA kernels: run a check on both kernel paths, name and
// enumerate the selection modes, compare outputs bit for bit.
#pragma once

#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

namespace aqua_test {

inline constexpr aqua::selection_mode all_modes[] = {aqua::selection_mode::per_head,
                                                     aqua::selection_mode::group, aqua::selection_mode::tile};

inline const char* mode_name(aqua::selection_mode m) {
  return m == aqua::selection_mode::per_head ? "per_head"
         : m == aqua::selection_mode::group  ? "group"
                                             : "tile";
}

/// Runs `f` with the AVX2 kernels (when the CPU has them) and with the portable ones.
template <class F>
void both_paths(F&& f) {
  for (int off : {0, 1}) {
    aqua::detail::simd_disabled() = off;
    CAPTURE(off);
    f();
  }
  aqua::detail::simd_disabled() = 0;
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

}  // namespace aqua_test
