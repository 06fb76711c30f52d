// Helpers shared by the tests of the AQUA kernels: run a check on both kernel paths, name and
// enumerate the selection modes, compare outputs bit for bit.
#pragma once

#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

#include <cstring>
#include <vector>

#include "test_support.hpp"

namespace aqua_test {

inline constexpr aqua::selection_mode all_modes[] = {aqua::selection_mode::per_head,
                                                     aqua::selection_mode::group, aqua::selection_mode::tile};

inline const char* mode_name(aqua::selection_mode m) {
  return m == aqua::selection_mode::per_head ? "per_head"
         : m == aqua::selection_mode::group  ? "group"
                                             : "tile";
}

/// Resets the kernel test hooks when a check leaves its scope, thrown out of or not.
struct hook_guard {
  hook_guard() = default;
  hook_guard(const hook_guard&) = delete;
  hook_guard& operator=(const hook_guard&) = delete;
  ~hook_guard() {
    aqua::detail::simd_disabled() = 0;
    aqua::detail::prefill_union_test_ratio() = 0;
  }
};

/// Whether the CPU runs the AVX-512 decode kernel (then the tests also force the AVX2 one).
inline bool cpu_has_avx512() {
  return aqua::detail::has_avx512f();
}

/// Runs `f` on every kernel path the CPU has: the widest (AVX-512 or AVX2), AVX2 without AVX-512
/// when the widest is AVX-512, and the portable one (simd_disabled() = 0, 2, 1). A path the CPU
/// lacks is not silently dropped: the case warns, once per process (each ctest test is one case).
template <class F>
void both_paths(F&& f) {
  const bool wide = cpu_has_avx512();
  if (!wide) {
    static bool warned = false;
    if (!warned)
      WARN("this CPU has no AVX-512F: the AVX-512 kernels are not exercised (AVX2 and portable are)");
    warned = true;
  }
  const hook_guard reset;
  for (int off : {0, 2, 1}) {
    if (off == 2 && !wide) continue;
    aqua::detail::simd_disabled() = off;
    CAPTURE(off);
    f();
  }
  aqua::detail::simd_disabled() = 0;
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// Random data of one attention layer, q [Hq, queries, d] and k, v [Hkv, N, d] drawn N(0, 1) from
/// `seed`, and a kv_cache holding k and v: projected by random orthogonal bases (seeded
/// basis_seed + h), or unprojected.
struct random_layer {
  struct options {
    index_t tile = 16;
    bool project = true;
    index_t rank = 0;
    index_t queries = 1;
    unsigned seed = 1;
    unsigned basis_seed = 100;
  };

  index_t hq, hkv, d, n;
  std::vector<float> q, k, v;
  std::vector<Eigen::MatrixXf> bases;
  aqua::kv_cache cache;

  random_layer(index_t hq_, index_t hkv_, index_t d_, index_t n_, const options& opt)
      : hq(hq_),
        hkv(hkv_),
        d(d_),
        n(n_),
        q(std::size_t(hq_ * opt.queries * d_)),
        k(std::size_t(hkv_ * n_ * d_)),
        v(k.size()),
        cache(make_cache(hkv_, d_, opt, bases)) {
    fill_normal(q, opt.seed);
    fill_normal(k, opt.seed + 1);
    fill_normal(v, opt.seed + 2);
    cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                 aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
  }
  aqua::matrix_view<const float> qv() const { return aqua::make_view(q.data(), hq, d); }

private:
  static aqua::kv_cache make_cache(index_t hkv, index_t d, const options& opt,
                                   std::vector<Eigen::MatrixXf>& bases) {
    aqua::kv_cache_options cache_opt;
    cache_opt.tile_dims = opt.tile;
    cache_opt.rank = opt.rank;
    if (!opt.project) return aqua::kv_cache(hkv, d, cache_opt);
    std::vector<aqua::matrix_view<const float>> views;
    for (index_t h = 0; h < hkv; ++h) {
      bases.push_back(random_orthogonal_basis(d, opt.basis_seed + unsigned(h)));
      views.push_back(aqua::view_of(bases.back()));
    }
    return aqua::kv_cache(views, cache_opt);
  }
};

}  // namespace aqua_test
