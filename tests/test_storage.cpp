// 16-bit KV storage: for every (key, value) storage pair the cache holds what rounding gives,
// reports the bytes it holds, and every kernel path computes exact attention (k = d) over the
// rounded keys and values, against the double oracle evaluated on those rounded inputs.
#include <aqua/attention.hpp>
#include <aqua/float16.hpp>
#include <aqua/kv_cache.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernel_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using aqua::storage_type;
using Catch::Matchers::Contains;

namespace {

constexpr storage_type storage_types[] = {storage_type::f32, storage_type::bf16, storage_type::f16};

std::vector<float> rounded(const std::vector<float>& x, storage_type t) {
  std::vector<float> r(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) r[i] = aqua::round_to_storage(x[i], t);
  return r;
}

/// One layer in projected coordinates (identity basis, so the stored keys are the rounded keys
/// themselves), the cache in the chosen storage, and the double oracle on the rounded data.
struct stored_layer {
  index_t hq, hkv, d, n;
  std::vector<float> q, k, v, k_stored, v_stored;
  aqua::kv_cache cache;

  stored_layer(index_t hq_, index_t hkv_, index_t d_, index_t n_, storage_type kt, storage_type vt,
               index_t tile = 16)
      : hq(hq_),
        hkv(hkv_),
        d(d_),
        n(n_),
        q(std::size_t(hq_ * d_)),
        k(std::size_t(hkv_ * n_ * d_)),
        v(k.size()),
        cache(hkv_, d_, options(kt, vt, tile)) {
    aqua_test::fill_normal(q, 3);
    aqua_test::fill_normal(k, 4);
    aqua_test::fill_normal(v, 5);
    k_stored = rounded(k, kt);
    v_stored = rounded(v, vt);
    cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                 aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
  }
  static aqua::kv_cache_options options(storage_type kt, storage_type vt, index_t tile) {
    aqua::kv_cache_options o;
    o.key_type = kt;
    o.value_type = vt;
    o.tile_dims = tile;
    return o;
  }
  std::vector<double> oracle_row(index_t h, const float* qrow, index_t visible) const {
    const index_t kv = h / (hq / hkv);
    return aqua_test::oracle_row(
        d, visible, 1.0 / std::sqrt(double(d)), [&](index_t c) { return qrow[c]; },
        [&](index_t j, index_t c) { return k_stored[std::size_t((kv * n + j) * d + c)]; },
        [&](index_t j, index_t c) { return v_stored[std::size_t((kv * n + j) * d + c)]; },
        [](index_t) { return 0.0; });
  }
  std::vector<double> oracle_decode() const {
    std::vector<double> ref;
    for (index_t h = 0; h < hq; ++h) {
      auto row = oracle_row(h, q.data() + h * d, n);
      ref.insert(ref.end(), row.begin(), row.end());
    }
    return ref;
  }
};

double storage_error(const std::vector<float>& out, const std::vector<double>& ref) {
  return aqua_test::normalized_error(
      index_t(ref.size()), [&](index_t i) { return out[std::size_t(i)]; },
      [&](index_t i) { return ref[std::size_t(i)]; });
}

}  // namespace

TEST_CASE("a cache stores keys and values rounded to their storage types", "[storage]") {
  for (storage_type kt : storage_types)
    for (storage_type vt : storage_types) {
      CAPTURE(aqua::storage_name(kt), aqua::storage_name(vt));
      stored_layer L(2, 2, 40, 37, kt, vt);
      CHECK(L.cache.key_type() == kt);
      CHECK(L.cache.value_type() == vt);
      for (index_t h = 0; h < 2; ++h)
        for (index_t j = 0; j < L.n; ++j)
          for (index_t c = 0; c < L.d; ++c) {
            const std::size_t i = std::size_t((h * L.n + j) * L.d + c);
            if (L.cache.key(h, j, c) != L.k_stored[i] || L.cache.value(h, j, c) != L.v_stored[i])
              FAIL("element (" << h << ", " << j << ", " << c << ") differs from its rounding");
          }
      // Bytes follow the element sizes: 37 tokens pad to 48 for the keys (3 blocks of 16), and
      // d = 40 takes 3 tiles of 16 dims (48 stored dims, the last tile half used).
      const std::size_t kb = std::size_t(aqua::storage_bytes(kt)), vb = std::size_t(aqua::storage_bytes(vt));
      CHECK(L.cache.key_bytes() == 2 * 48 * 48 * kb);
      CHECK(L.cache.value_bytes() == 2 * 37 * 40 * vb);
      CHECK(L.cache.bytes() == std::size_t(L.cache.capacity()) * 2 * (48 * kb + 40 * vb));
    }
}

TEST_CASE("typed tile access names the storage type it holds", "[storage]") {
  stored_layer L(1, 1, 32, 20, storage_type::bf16, storage_type::f16);
  CHECK(L.cache.key_tile<aqua::bf16>(0, 0) != nullptr);
  CHECK(L.cache.values<aqua::f16>(0) != nullptr);
  CHECK_THROWS_WITH(L.cache.key_tile(0, 0), Contains("keys are stored as bf16, not f32"));
  CHECK_THROWS_WITH(L.cache.values<aqua::bf16>(0), Contains("values are stored as f16, not bf16"));
}

TEST_CASE("decode over 16-bit storage is exact attention on the rounded keys and values",
          "[storage][decode]") {
  const index_t d = GENERATE(48, 128);
  const index_t group = GENERATE(1, 4);
  const index_t n = GENERATE(1, 37, 300);
  CAPTURE(d, group, n);
  for (storage_type kt : storage_types)
    for (storage_type vt : storage_types) {
      CAPTURE(aqua::storage_name(kt), aqua::storage_name(vt));
      stored_layer L(2 * group, 2, d, n, kt, vt);
      const auto ref = L.oracle_decode();
      aqua_test::both_paths([&] {
        for (const auto mode : aqua_test::all_modes) {
          CAPTURE(aqua_test::mode_name(mode));
          std::vector<float> out(std::size_t(L.hq * d));
          aqua::aqua_options opt;
          opt.mode = mode;
          aqua::aqua_decode(aqua::make_view(static_cast<const float*>(L.q.data()), L.hq, d), L.cache, d,
                            aqua::make_view(out.data(), L.hq, d), opt);
          // Float accumulation of d products and n terms: relative error a few 1e-7 at these sizes.
          CHECK(storage_error(out, ref) < 1e-5);
        }
        std::vector<float> dense(std::size_t(L.hq * d));
        aqua::attention_options dopt;
        dopt.threads = 2;
        aqua::dense_decode(aqua::make_view(static_cast<const float*>(L.q.data()), L.hq, d), L.cache,
                           aqua::make_view(dense.data(), L.hq, d), dopt);
        CHECK(storage_error(dense, ref) < 1e-5);
      });
    }
}

TEST_CASE("prefill over 16-bit storage is exact causal attention on the rounded inputs",
          "[storage][prefill]") {
  const index_t d = 64, n = 150, m = 70;
  for (storage_type kt : storage_types)
    for (storage_type vt : storage_types) {
      CAPTURE(aqua::storage_name(kt), aqua::storage_name(vt));
      stored_layer L(4, 2, d, n, kt, vt);
      std::vector<float> qp(std::size_t(L.hq * m * d));
      aqua_test::fill_normal(qp, 9);
      std::vector<double> ref;
      for (index_t h = 0; h < L.hq; ++h)
        for (index_t i = 0; i < m; ++i) {
          auto row = L.oracle_row(h, qp.data() + (h * m + i) * d, n - m + i + 1);
          ref.insert(ref.end(), row.begin(), row.end());
        }
      aqua_test::both_paths([&] {
        for (const auto mode : {aqua::selection_mode::per_head, aqua::selection_mode::tile}) {
          for (int threads : {1, 2}) {
            CAPTURE(aqua_test::mode_name(mode), threads);
            std::vector<float> out(qp.size());
            aqua::aqua_options opt;
            opt.mode = mode;
            opt.threads = threads;
            aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(qp.data()), L.hq, m, d), L.cache,
                               aqua::selection_spec::top_k(d), aqua::make_view(out.data(), L.hq, m, d), opt);
            CHECK(storage_error(out, ref) < 1e-5);
          }
        }
      });
    }
}

TEST_CASE("AVX-512 and AVX2 kernels agree bit for bit on 16-bit storage", "[storage][simd]") {
  if (!aqua_test::cpu_has_avx512()) {
    WARN("this CPU has no AVX-512F: the bitwise ISA comparison is skipped");
    return;
  }
  const aqua_test::hook_guard reset;
  for (storage_type t : {storage_type::bf16, storage_type::f16}) {
    CAPTURE(aqua::storage_name(t));
    stored_layer L(8, 2, 128, 517, t, t, 32);
    for (const auto mode : aqua_test::all_modes)
      for (index_t k : {index_t(32), index_t(128)}) {
        CAPTURE(aqua_test::mode_name(mode), k);
        std::vector<float> wide(std::size_t(L.hq * L.d)), narrow(wide.size());
        std::vector<float> pw(std::size_t(L.hkv * L.n)), pn(pw.size());
        aqua::aqua_options opt;
        opt.mode = mode;
        aqua::set_max_isa(aqua::isa::avx512);
        aqua::aqua_decode(aqua::make_view(static_cast<const float*>(L.q.data()), L.hq, L.d), L.cache, k,
                          aqua::make_view(wide.data(), L.hq, L.d), opt,
                          aqua::make_view(pw.data(), L.hkv, L.n));
        aqua::set_max_isa(aqua::isa::avx2);
        aqua::aqua_decode(aqua::make_view(static_cast<const float*>(L.q.data()), L.hq, L.d), L.cache, k,
                          aqua::make_view(narrow.data(), L.hq, L.d), opt,
                          aqua::make_view(pn.data(), L.hkv, L.n));
        aqua::set_max_isa(aqua::isa::avx512);
        CHECK(aqua_test::bitwise_equal(wide, narrow));
        CHECK(aqua_test::bitwise_equal(pw, pn));
      }
  }
}

TEST_CASE("f16 storage rejects values beyond its range instead of storing infinity", "[storage][errors]") {
  aqua::kv_cache_options o;
  o.value_type = storage_type::f16;
  aqua::kv_cache cache(1, 16, o);
  std::vector<float> k(16, 1.0f), v(16, 1.0f);
  v[3] = 70000.0f;
  CHECK_THROWS_WITH(cache.append(aqua::make_view(static_cast<const float*>(k.data()), 1, 1, 16),
                                 aqua::make_view(static_cast<const float*>(v.data()), 1, 1, 16)),
                    Contains("values[0, 0, 3] = 70000 is beyond the f16 range"));
  CHECK(cache.size() == 0);
  o.value_type = storage_type::f32;
  o.key_type = storage_type::f16;
  aqua::kv_cache keys16(1, 16, o);
  v[3] = 1.0f;
  k[5] = -1e5f;
  CHECK_THROWS_WITH(keys16.append(aqua::make_view(static_cast<const float*>(k.data()), 1, 1, 16),
                                  aqua::make_view(static_cast<const float*>(v.data()), 1, 1, 16)),
                    Contains("beyond the f16 range"));
  CHECK(keys16.size() == 0);
  // bf16 has float's range: the same value is stored (rounded).
  o.key_type = storage_type::bf16;
  aqua::kv_cache keys_bf16(1, 16, o);
  keys_bf16.append(aqua::make_view(static_cast<const float*>(k.data()), 1, 1, 16),
                   aqua::make_view(static_cast<const float*>(v.data()), 1, 1, 16));
  CHECK(keys_bf16.key(0, 0, 5) == static_cast<float>(aqua::bf16(-1e5f)));
}

TEST_CASE("eviction moves 16-bit keys and values with their tokens", "[storage][h2o]") {
  stored_layer L(2, 2, 48, 70, storage_type::bf16, storage_type::f16);
  std::vector<index_t> keep = {0, 5, 17, 33, 34, 69};
  L.cache.retain(aqua::make_view(static_cast<const index_t*>(keep.data()), index_t(keep.size())));
  REQUIRE(L.cache.size() == 6);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < 6; ++i)
      for (index_t c = 0; c < 48; ++c) {
        const std::size_t src = std::size_t((h * 70 + keep[std::size_t(i)]) * 48 + c);
        if (L.cache.key(h, i, c) != L.k_stored[src] || L.cache.value(h, i, c) != L.v_stored[src])
          FAIL("token " << i << " of head " << h << " did not move with its data");
      }
}

namespace {

/// Token-major engine buffers [N][Hkv][d] (llama.cpp's layout: the token stride is Hkv * d) holding
/// k and v of a layer rounded to K and V, viewed as [Hkv, N, d].
template <class T>
std::vector<T> engine_layout(const std::vector<float>& x, index_t hkv, index_t n, index_t d) {
  std::vector<T> out(x.size());
  for (index_t h = 0; h < hkv; ++h)
    for (index_t j = 0; j < n; ++j)
      for (index_t c = 0; c < d; ++c)
        out[std::size_t((j * hkv + h) * d + c)] = T(x[std::size_t((h * n + j) * d + c)]);
  return out;
}

template <class T>
aqua::tensor3_view<const T> engine_view(const std::vector<T>& x, index_t hkv, index_t n, index_t d) {
  return aqua::tensor3_view<const T>(x.data(), {hkv, n, d}, {d, hkv * d, 1});
}

template <class K, class V>
void check_engine_buffers_decode(index_t group, index_t n, index_t d, bool masked) {
  const storage_type kt = aqua::detail::storage_of<K>::value, vt = aqua::detail::storage_of<V>::value;
  CAPTURE(aqua::storage_name(kt), aqua::storage_name(vt), group, n, d, masked);
  stored_layer L(2 * group, 2, d, n, kt, vt);
  const auto kb = engine_layout<K>(L.k, L.hkv, n, d);
  const auto vb = engine_layout<V>(L.v, L.hkv, n, d);
  std::vector<float> mask(std::size_t(n), 0.0f);
  for (index_t j = 0; j < n; j += 3)
    mask[std::size_t(j)] = j % 2 ? -std::numeric_limits<float>::infinity() : -1.5f;
  std::vector<double> ref;
  for (index_t h = 0; h < L.hq; ++h) {
    const index_t kv = h / group;
    auto row = aqua_test::oracle_row(
        d, n, 1.0 / std::sqrt(double(d)), [&](index_t c) { return L.q[std::size_t(h * d + c)]; },
        [&](index_t j, index_t c) { return L.k_stored[std::size_t((kv * n + j) * d + c)]; },
        [&](index_t j, index_t c) { return L.v_stored[std::size_t((kv * n + j) * d + c)]; },
        [&](index_t j) { return masked ? double(mask[std::size_t(j)]) : 0.0; });
    ref.insert(ref.end(), row.begin(), row.end());
  }
  aqua_test::both_paths([&] {
    for (int threads : {1, 2}) {
      std::vector<float> out(std::size_t(L.hq * d));
      aqua::attention_options opt;
      opt.threads = threads;
      aqua::dense_decode(aqua::make_view(static_cast<const float*>(L.q.data()), L.hq, d),
                         engine_view(kb, L.hkv, n, d), engine_view(vb, L.hkv, n, d),
                         aqua::make_view(out.data(), L.hq, d), opt,
                         masked ? aqua::make_view(static_cast<const float*>(mask.data()), n)
                                : aqua::vector_view<const float>());
      CHECK(storage_error(out, ref) < 1e-5);
    }
  });
}

}  // namespace

TEST_CASE("dense decode reads 16-bit engine buffers in place as exact attention on their values",
          "[storage][decode][views]") {
  const index_t group = GENERATE(1, 4, 5);
  const index_t n = GENERATE(1, 37, 600);
  const index_t d = GENERATE(40, 64, 128);
  const bool masked = GENERATE(false, true);
  check_engine_buffers_decode<aqua::bf16, aqua::bf16>(group, n, d, masked);
  check_engine_buffers_decode<aqua::f16, aqua::f16>(group, n, d, masked);
  check_engine_buffers_decode<aqua::bf16, aqua::f16>(group, n, d, masked);
  check_engine_buffers_decode<float, aqua::bf16>(group, n, d, masked);
  check_engine_buffers_decode<float, float>(group, n, d, masked);
}

TEST_CASE("dense prefill over 16-bit engine buffers is exact causal attention on their values",
          "[storage][prefill][views]") {
  const index_t d = 64, n = 130, m = 70, hkv = 2, hq = 4;
  stored_layer L(hq, hkv, d, n, storage_type::bf16, storage_type::f16);
  const auto kb = engine_layout<aqua::bf16>(L.k, hkv, n, d);
  const auto vb = engine_layout<aqua::f16>(L.v, hkv, n, d);
  std::vector<float> qp(std::size_t(hq * m * d));
  aqua_test::fill_normal(qp, 21);
  std::vector<double> ref;
  for (index_t h = 0; h < hq; ++h)
    for (index_t i = 0; i < m; ++i) {
      auto row = L.oracle_row(h, qp.data() + (h * m + i) * d, n - m + i + 1);
      ref.insert(ref.end(), row.begin(), row.end());
    }
  for (int threads : {1, 2}) {
    std::vector<float> out(qp.size());
    aqua::attention_options opt;
    opt.threads = threads;
    aqua::dense_prefill(aqua::make_view(static_cast<const float*>(qp.data()), hq, m, d),
                        engine_view(kb, hkv, n, d), engine_view(vb, hkv, n, d),
                        aqua::make_view(out.data(), hq, m, d), opt);
    CHECK(storage_error(out, ref) < 1e-5);
  }
}

TEST_CASE("16-bit engine buffers need unit inner stride and consistent shapes", "[storage][views][errors]") {
  std::vector<aqua::bf16> k(2 * 10 * 16), v(k.size());
  std::vector<float> q(2 * 16), out(q.size());
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), 2, 16);
  const aqua::tensor3_view<const aqua::bf16> strided(k.data(), {2, 5, 16}, {160, 32, 2});
  const auto kv = aqua::make_view(static_cast<const aqua::bf16*>(k.data()), 2, 10, 16);
  CHECK_THROWS_WITH(aqua::dense_decode(qv, strided, strided, aqua::make_view(out.data(), 2, 16)),
                    Contains("need unit inner stride"));
  const auto short_v = aqua::make_view(static_cast<const aqua::bf16*>(v.data()), 2, 9, 16);
  CHECK_THROWS_WITH(aqua::dense_decode(qv, kv, short_v, aqua::make_view(out.data(), 2, 16)),
                    Contains("v must be [Hkv, N, d] like k"));
}
