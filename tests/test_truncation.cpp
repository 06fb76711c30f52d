// Key-dimension truncation end to end: a cache keeping r of d projected dims holds exactly the
// bytes the cost model says, and AQUA decode over it approaches exact attention (on the raw,
// unprojected keys) as r grows, on data with a decaying spectrum; r = d is exact.
#include <aqua/attention.hpp>
#include <aqua/cost_model.hpp>
#include <aqua/kv_cache.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "spectrum_support.hpp"

using aqua::index_t;

namespace {

aqua::cost_config layer_config(index_t hq, index_t hkv, index_t d, index_t r) {
  aqua::cost_config c;
  c.d = d;
  c.k = r;
  c.r = r;
  c.hq = hq;
  c.hkv = hkv;
  c.elem_bytes = 4;
  c.projection_elem_bytes = 4;
  return c;
}

}  // namespace

TEST_CASE("a truncated cache's bytes equal the cost model's KV-cache figure", "[truncation]") {
  const index_t hq = 32, hkv = 8, d = 128, n = 1024;
  aqua_test::spectrum_layer layer(hq, hkv, d);
  std::mt19937 rng(3);
  std::vector<float> k, v;
  layer.tokens(n, rng, k, v);
  for (index_t r : {d / 4, d / 2, 3 * d / 4, d}) {
    CAPTURE(r);
    aqua::kv_cache_options opt;
    opt.rank = r;
    opt.capacity = n;
    aqua::kv_cache identity(hkv, d, opt);
    aqua::kv_cache projected = layer.make_cache(opt);
    identity.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                    aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
    projected.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                     aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
    const auto c = layer_config(hq, hkv, d, r);
    const auto model = aqua::kv_cache_bytes(c, double(n));
    // Keys and values: Hkv (r + d) e per token, exactly.
    CHECK(double(identity.bytes()) == model.aqua_bytes);
    CHECK(double(identity.key_bytes() + identity.value_bytes()) == model.aqua_bytes);
    CHECK(double(identity.bytes()) == double(n) * aqua::aqua_kv_bytes_per_token(c));
    CHECK(double(projected.key_bytes() + projected.value_bytes()) == model.aqua_bytes);
    // The cache keeps only the r columns of P its keys and queries use, and so does the model.
    CHECK(double(projected.bytes()) == model.aqua_bytes + model.projection_bytes);
    CHECK(model.projection_bytes == double(hkv * d * r) * sizeof(float));
    // Against the dense cache: the key half shrinks to r / d.
    CHECK(double(identity.key_bytes()) == model.dense_bytes / 2 * double(r) / double(d));
  }
}

TEST_CASE("on a decaying spectrum the truncation error falls as r grows and r = d is exact", "[truncation]") {
  const index_t hq = 8, hkv = 2, d = 128, n = 1024;
  aqua_test::spectrum_layer layer(hq, hkv, d, 200);
  std::mt19937 rng(5);
  std::vector<float> k, v, q;
  layer.tokens(n, rng, k, v);
  layer.queries(rng, q);
  // Exact attention on the raw keys, in double.
  std::vector<double> ref;
  for (index_t h = 0; h < hq; ++h) {
    const index_t kv = h / (hq / hkv);
    auto row = aqua_test::oracle_row(
        d, n, 1.0 / std::sqrt(double(d)), [&](index_t c) { return q[std::size_t(h * d + c)]; },
        [&](index_t j, index_t c) { return k[std::size_t((kv * n + j) * d + c)]; },
        [&](index_t j, index_t c) { return v[std::size_t((kv * n + j) * d + c)]; },
        [](index_t) { return 0.0; });
    ref.insert(ref.end(), row.begin(), row.end());
  }
  double previous = 1e300;
  for (index_t r : {d / 4, d / 2, 3 * d / 4, d}) {
    aqua::kv_cache_options opt;
    opt.rank = r;
    aqua::kv_cache cache = layer.make_cache(opt);
    cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                 aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
    std::vector<float> out(q.size());
    // Every stored dim selected: the only approximation is the truncation itself.
    aqua::aqua_decode(aqua::make_view(static_cast<const float*>(q.data()), hq, d), cache,
                      aqua::selection_spec::top_k(r), aqua::make_view(out.data(), hq, d));
    const double err = aqua_test::normalized_error(
        index_t(ref.size()), [&](index_t i) { return out[std::size_t(i)]; },
        [&](index_t i) { return ref[std::size_t(i)]; });
    CAPTURE(r, err);
    CHECK(err < previous);
    previous = err;
    if (r == d) CHECK(err < 1e-5);
    if (r == d / 4) CHECK(err > 1e-4);  // the tail still carries measurable energy at r = d/4
  }
}

// What this case pins is the count rule on a truncated cache; that selection ranks only the r
// stored dims, even when most query energy lies beyond r, is held against the independent oracle in
// test_oracle_decode.cpp.
TEST_CASE("on a truncated cache fraction(1.0) selects the r stored dims like top_k(r), and k > r is rejected",
          "[truncation]") {
  const index_t hq = 4, hkv = 2, d = 64, n = 100;
  aqua_test::spectrum_layer layer(hq, hkv, d, 300);
  std::mt19937 rng(7);
  std::vector<float> k, v, q;
  layer.tokens(n, rng, k, v);
  layer.queries(rng, q);
  aqua::kv_cache_options opt;
  opt.tile_dims = 16;
  opt.rank = 32;
  aqua::kv_cache cache = layer.make_cache(opt);
  cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
               aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
  std::vector<float> all(q.size()), fraction(q.size());
  aqua::aqua_decode(aqua::make_view(static_cast<const float*>(q.data()), hq, d), cache,
                    aqua::selection_spec::top_k(32), aqua::make_view(all.data(), hq, d));
  aqua::aqua_decode(aqua::make_view(static_cast<const float*>(q.data()), hq, d), cache,
                    aqua::selection_spec::fraction(1.0), aqua::make_view(fraction.data(), hq, d));
  for (std::size_t i = 0; i < all.size(); ++i) CHECK(fraction[i] == Approx(all[i]).margin(1e-6));
  CHECK_THROWS_AS(aqua::aqua_decode(aqua::make_view(static_cast<const float*>(q.data()), hq, d), cache,
                                    aqua::selection_spec::top_k(33), aqua::make_view(all.data(), hq, d)),
                  aqua::error);
}
