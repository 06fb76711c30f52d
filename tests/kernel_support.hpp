// Helpers shared by the tests of the AQUA kernels: run a check on both kernel paths, name and
// enumerate the selection modes, compare outputs bit for bit.
#pragma once

#include <aqua/attention.hpp>
#include <aqua/eigen.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <random>
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
    aqua::set_max_isa(aqua::isa::avx512);
    aqua::set_decode_prefetch(aqua::decode_prefetch::automatic);
  }
};

/// Whether the CPU runs the AVX-512 decode kernel (then the tests also force the AVX2 one).
inline bool cpu_has_avx512() {
  return aqua::supported_isa() == aqua::isa::avx512;
}

/// Runs `f` on every kernel path the CPU has: the widest (AVX-512 or AVX2), AVX2 without AVX-512
/// when the widest is AVX-512, and the portable one (aqua::set_max_isa). A path the CPU
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
  for (aqua::isa cap : {aqua::isa::avx512, aqua::isa::avx2, aqua::isa::portable}) {
    if (cap == aqua::isa::avx2 && !wide) continue;
    aqua::set_max_isa(cap);
    CAPTURE(aqua::isa_name(aqua::active_isa()));
    f();
  }
  aqua::set_max_isa(aqua::isa::avx512);
}

inline bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// A random d x d signed permutation matrix (orthogonal; a float product with it is exact).
inline Eigen::MatrixXf signed_permutation_basis(index_t d, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<index_t> perm(static_cast<std::size_t>(d));
  for (index_t i = 0; i < d; ++i) perm[std::size_t(i)] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  Eigen::MatrixXf p = Eigen::MatrixXf::Zero(d, d);
  for (index_t i = 0; i < d; ++i) p(i, perm[std::size_t(i)]) = (rng() & 1) ? 1.0f : -1.0f;
  return p;
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
    aqua::storage_type key_type = aqua::storage_type::f32, value_type = aqua::storage_type::f32;
    /// Signed permutations instead of random orthogonal bases: the float projection is exact, so
    /// a 16-bit cache rounds exactly the values the oracle rounds.
    bool permutation_bases = false;
  };

  index_t hq, hkv, d, n;
  std::vector<float> q, k, v;
  std::vector<Eigen::MatrixXf> bases;
  aqua::kv_cache cache;
  aqua::storage_type key_type, value_type;

  random_layer(index_t hq_, index_t hkv_, index_t d_, index_t n_, const options& opt)
      : hq(hq_),
        hkv(hkv_),
        d(d_),
        n(n_),
        q(std::size_t(hq_ * opt.queries * d_)),
        k(std::size_t(hkv_ * n_ * d_)),
        v(k.size()),
        cache(make_cache(hkv_, d_, opt, bases)),
        key_type(opt.key_type),
        value_type(opt.value_type) {
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
    cache_opt.key_type = opt.key_type;
    cache_opt.value_type = opt.value_type;
    if (!opt.project) return aqua::kv_cache(hkv, d, cache_opt);
    std::vector<aqua::matrix_view<const float>> views;
    for (index_t h = 0; h < hkv; ++h) {
      bases.push_back(opt.permutation_bases ? signed_permutation_basis(d, opt.basis_seed + unsigned(h))
                                            : random_orthogonal_basis(d, opt.basis_seed + unsigned(h)));
      views.push_back(aqua::view_of(bases.back()));
    }
    return aqua::kv_cache(views, cache_opt);
  }
};

}  // namespace aqua_test
