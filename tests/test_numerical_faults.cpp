// Numerical faults through the AQUA kernels over the kv_cache: non-finite queries, keys and values,
// rows that could be fully masked, logits at and beyond the float limits, and selection / rank
// arguments out of range. Each case pins exactly what the user gets (docs/errors.md).
#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernel_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;

using aqua_test::all_modes;
using aqua_test::bitwise_equal;

namespace {

constexpr float nan_f = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_f = std::numeric_limits<float>::infinity();

// Random keys and values [hkv, n, d] in an identity-projection cache (projected = raw coordinates).
struct filled_cache {
  index_t hkv, n, d;
  std::vector<float> k, v;
  aqua::kv_cache cache;
  filled_cache(index_t hkv_, index_t n_, index_t d_, unsigned seed = 3)
      : hkv(hkv_), n(n_), d(d_), k(std::size_t(hkv_ * n_ * d_)), v(k.size()), cache(hkv_, d_) {
    aqua_test::fill_normal(k, seed);
    aqua_test::fill_normal(v, seed + 1);
    cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                 aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
  }
};

// A cache of n tokens whose only key coordinate is dim 0: key j = (a[j] * key_scale, 0, ...);
// value j row = (100 j + c) (exact in float), so a one-hot output names its token.
struct line_cache {
  index_t n, d;
  std::vector<float> k, v;
  aqua::kv_cache cache;
  line_cache(const std::vector<float>& a, index_t d_, float key_scale)
      : n(index_t(a.size())), d(d_), k(std::size_t(n * d_), 0.0f), v(k.size()), cache(1, d_) {
    for (index_t j = 0; j < n; ++j) {
      k[std::size_t(j * d)] = a[std::size_t(j)] * key_scale;
      for (index_t c = 0; c < d; ++c) v[std::size_t(j * d + c)] = float(100 * j + c);
    }
    cache.append(aqua::make_view(static_cast<const float*>(k.data()), 1, n, d),
                 aqua::make_view(static_cast<const float*>(v.data()), 1, n, d));
  }
  const float* value_row(index_t j) const { return v.data() + j * d; }
};

// Coefficients in [-1, 1], distinct, with the maximum 1 at token 7 and the minimum -1 at token 23.
std::vector<float> line_coefficients(index_t n) {
  std::vector<float> a(static_cast<std::size_t>(n));
  for (index_t j = 0; j < n; ++j) a[std::size_t(j)] = -0.9f + 1.8f * float(j) / float(n);
  a[7] = 1.0f;
  a[23] = -1.0f;
  return a;
}

}  // namespace

TEST_CASE("a NaN or Inf query is rejected by every AQUA entry point with its index", "[faults][aqua]") {
  filled_cache C(2, 20, 16);
  const index_t hq = 4, d = 16, m = 3;
  for (float bad : {nan_f, inf_f, -inf_f}) {
    CAPTURE(bad);
    std::vector<float> q(std::size_t(hq * d), 0.5f), out(q.size());
    q[std::size_t(1 * d + 3)] = bad;
    auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, d);
    auto ov = aqua::make_view(out.data(), hq, d);
    for (auto mode : all_modes) {
      aqua::aqua_options opt;
      opt.mode = mode;
      CHECK_THROWS_WITH(
          aqua::aqua_decode(qv, C.cache, 4, ov, opt),
          Contains("aqua::aqua_decode: q holds a non-finite value") && Contains("at index [1, 3]"));
    }
    CHECK_THROWS_WITH(
        aqua::dense_decode(qv, C.cache, ov),
        Contains("aqua::dense_decode(cache): q holds a non-finite value") && Contains("[1, 3]"));
    std::vector<float> qp(std::size_t(hq * m * d), 0.5f), op(qp.size());
    qp[std::size_t((2 * m + 1) * d + 5)] = bad;
    CHECK_THROWS_WITH(
        aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(qp.data()), hq, m, d), C.cache,
                           aqua::selection_spec::top_k(4), aqua::make_view(op.data(), hq, m, d)),
        Contains("aqua::aqua_prefill: q holds a non-finite value") && Contains("at index [2, 1, 5]"));
  }
}

TEST_CASE("a non-finite key or value is rejected on append before anything is stored",
          "[faults][aqua][kv_cache]") {
  const index_t hkv = 2, n = 20, d = 16, hq = 4, t = 5;
  filled_cache C(hkv, n, d);
  std::vector<float> q(std::size_t(hq * d));
  aqua_test::fill_normal(q, 11);
  auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, d);
  std::vector<float> before(std::size_t(hq * d));
  aqua::aqua_decode(qv, C.cache, 8, aqua::make_view(before.data(), hq, d));

  std::vector<float> k(std::size_t(hkv * t * d)), v(k.size());
  aqua_test::fill_normal(k, 12);
  aqua_test::fill_normal(v, 13);
  struct fault {
    bool in_keys;
    float value;
    const char* message;
  };
  // The bad element sits in the last head's last token: a partial store would have written the
  // first head (and the first tokens) before the check.
  for (const fault& f :
       {fault{true, nan_f, "aqua::kv_cache::append: keys holds a non-finite value (nan) at index [1, 4, 9]"},
        fault{true, -inf_f, "keys holds a non-finite value (-inf) at index [1, 4, 9]"},
        fault{false, inf_f, "values holds a non-finite value (inf) at index [1, 4, 9]"},
        fault{false, nan_f, "values holds a non-finite value (nan) at index [1, 4, 9]"}}) {
    CAPTURE(f.message);
    std::vector<float> kb(k), vb(v);
    (f.in_keys ? kb : vb)[std::size_t((1 * t + 4) * d + 9)] = f.value;
    CHECK_THROWS_WITH(C.cache.append(aqua::make_view(static_cast<const float*>(kb.data()), hkv, t, d),
                                     aqua::make_view(static_cast<const float*>(vb.data()), hkv, t, d)),
                      Contains(f.message));
    CHECK(C.cache.size() == n);
    CHECK(C.cache.next_position() == n);
    std::vector<float> after(before.size());
    aqua::aqua_decode(qv, C.cache, 8, aqua::make_view(after.data(), hq, d));
    CHECK(bitwise_equal(after, before));
  }
  // The cache is still usable: a clean append lands at the next positions.
  C.cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, t, d),
                 aqua::make_view(static_cast<const float*>(v.data()), hkv, t, d));
  CHECK(C.cache.size() == n + t);
  CHECK(C.cache.position(n) == n);
}

TEST_CASE("causal prefill never leaves a query without a key: with M = N the first query sees token 0 only",
          "[faults][aqua][prefill]") {
  // Query i of a causal prefill sees tokens 0 .. N - M + i, and the entry point requires
  // 1 <= M <= N, so every query sees at least token 0: a fully masked row cannot be built (there
  // is no user mask on the cache path). The tightest case, M = N, makes query 0 attend to token 0
  // alone, so its output is v_0 exactly (weight exp(0) / 1 = 1, every other weight exp(-inf) = 0).
  const index_t hkv = 2, n = 37, d = 16, hq = 4;
  filled_cache C(hkv, n, d);
  std::vector<float> q(std::size_t(hq * n * d)), out(q.size());
  aqua_test::fill_normal(q, 5);
  for (auto mode : {aqua::selection_mode::per_head, aqua::selection_mode::tile}) {
    aqua::aqua_options opt;
    opt.mode = mode;
    aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q.data()), hq, n, d), C.cache,
                       aqua::selection_spec::top_k(5), aqua::make_view(out.data(), hq, n, d), opt);
    for (index_t h = 0; h < hq; ++h) {
      const index_t kv = h / 2;
      for (index_t c = 0; c < d; ++c)
        CHECK(out[std::size_t((h * n + 0) * d + c)] == C.v[std::size_t((kv * n + 0) * d + c)]);
    }
  }
}

TEST_CASE("attention over an empty cache is an error, also after every token was evicted", "[faults][aqua]") {
  const index_t d = 16, hq = 2;
  std::vector<float> q(std::size_t(hq * d), 1.0f), out(q.size());
  auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, d);
  auto ov = aqua::make_view(out.data(), hq, d);
  aqua::kv_cache fresh(1, d);
  filled_cache evicted(1, 10, d);
  evicted.cache.retain(aqua::vector_view<const index_t>());
  REQUIRE(evicted.cache.empty());
  for (const aqua::kv_cache* cache : {&fresh, &evicted.cache}) {
    CHECK_THROWS_WITH(aqua::aqua_decode(qv, *cache, 4, ov),
                      Contains("aqua::aqua_decode: the KV cache is empty; attention needs at least one key"));
    CHECK_THROWS_WITH(aqua::dense_decode(qv, *cache, ov),
                      Contains("aqua::dense_decode(cache): the KV cache is empty"));
    CHECK_THROWS_WITH(
        aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q.data()), hq, 1, d), *cache,
                           aqua::selection_spec::top_k(4), aqua::make_view(out.data(), hq, 1, d)),
        Contains("aqua::aqua_prefill: the KV cache is empty"));
  }
}

TEST_CASE("logits near the float limit saturate the softmax to one-hot, as in the dense path",
          "[faults][aqua]") {
  // q = +-s e_0 and key j = a_j s e_0 with s = 1e19 and scale 1: logits a_j * 1e38 (FLT_MAX is
  // 3.4e38). Neighbouring logits differ by >= 4e36, so every weight but the largest underflows to
  // 0 and the output is the value row of the arg-max token, exactly, for head 0 (largest a_j: token
  // 7) and head 1 (smallest a_j: token 23). Same for logits all near -1e38 (keys a_j - 2 < 0).
  const index_t n = 40, d = 16;
  const float s = 1e19f;
  for (float shift : {0.0f, -2.0f}) {
    CAPTURE(shift);
    std::vector<float> a = line_coefficients(n);
    for (float& x : a) x = (x + shift) / (shift == 0.0f ? 1.0f : 3.0f);
    // With the shift every coefficient is negative; head 0's best token is still 7, head 1's is 23.
    line_cache L(a, d, s);
    std::vector<float> q(std::size_t(2 * d), 0.0f);
    q[0] = s;
    q[std::size_t(d)] = -s;
    auto qv = aqua::make_view(static_cast<const float*>(q.data()), 2, d);
    auto expect_one_hot = [&](const std::vector<float>& out) {
      for (index_t c = 0; c < d; ++c) {
        CHECK(out[std::size_t(c)] == L.value_row(7)[c]);
        CHECK(out[std::size_t(d + c)] == L.value_row(23)[c]);
      }
    };
    for (auto mode : all_modes) {
      for (index_t k : {index_t(1), index_t(4), d}) {
        CAPTURE(int(mode), k);
        std::vector<float> out(std::size_t(2 * d), -1.0f);
        aqua::aqua_options opt;
        opt.mode = mode;
        opt.scale = 1.0;
        aqua::aqua_decode(qv, L.cache, k, aqua::make_view(out.data(), 2, d), opt);
        expect_one_hot(out);
      }
    }
    aqua::attention_options dopt;
    dopt.scale = 1.0;
    std::vector<float> dense_cache(std::size_t(2 * d)), dense_views(std::size_t(2 * d));
    aqua::dense_decode(qv, L.cache, aqua::make_view(dense_cache.data(), 2, d), dopt);
    expect_one_hot(dense_cache);
    aqua::dense_decode<float>(qv, aqua::make_view(static_cast<const float*>(L.k.data()), 1, n, d),
                              aqua::make_view(static_cast<const float*>(L.v.data()), 1, n, d),
                              aqua::make_view(dense_views.data(), 2, d), dopt);
    expect_one_hot(dense_views);
    // Prefill, not causal, both queries at once: the same one-hot rows.
    std::vector<float> qp(std::size_t(2 * d), 0.0f), op(qp.size());
    qp[0] = s;
    qp[std::size_t(d)] = -s;
    aqua::aqua_options popt;
    popt.scale = 1.0;
    popt.causal = false;
    aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(qp.data()), 1, 2, d), L.cache,
                       aqua::selection_spec::top_k(2), aqua::make_view(op.data(), 1, 2, d), popt);
    expect_one_hot(op);
  }
}

TEST_CASE(
    "logits beyond the float range are an overflow error on the cache path, NaN on the dense views path",
    "[faults][aqua]") {
  // s = 1e20: the top logit 1e40 is not a float. The cache kernels know their inputs are finite,
  // so a non-finite result is reported; the dense view kernels do not scan keys (a NaN key must
  // propagate there), so they return what float arithmetic gives: inf - inf = NaN.
  const index_t n = 40, d = 16;
  const float s = 1e20f;
  line_cache L(line_coefficients(n), d, s);
  std::vector<float> q(std::size_t(2 * d), 0.0f), out(q.size());
  q[0] = s;
  q[std::size_t(d)] = -s;
  auto qv = aqua::make_view(static_cast<const float*>(q.data()), 2, d);
  for (auto mode : all_modes) {
    aqua::aqua_options opt;
    opt.mode = mode;
    opt.scale = 1.0;
    CHECK_THROWS_WITH(
        aqua::aqua_decode(qv, L.cache, 2, aqua::make_view(out.data(), 2, d), opt),
        Contains("aqua::aqua_decode: float overflow: out[0, 0] = ") && Contains("exceed the float range"));
  }
  aqua::attention_options dopt;
  dopt.scale = 1.0;
  CHECK_THROWS_WITH(aqua::dense_decode(qv, L.cache, aqua::make_view(out.data(), 2, d), dopt),
                    Contains("aqua::dense_decode(cache): float overflow"));
  aqua::aqua_options popt;
  popt.scale = 1.0;
  popt.causal = false;
  CHECK_THROWS_WITH(
      aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q.data()), 1, 2, d), L.cache,
                         aqua::selection_spec::top_k(2), aqua::make_view(out.data(), 1, 2, d), popt),
      Contains("aqua::aqua_prefill: float overflow"));
  aqua::dense_decode<float>(qv, aqua::make_view(static_cast<const float*>(L.k.data()), 1, n, d),
                            aqua::make_view(static_cast<const float*>(L.v.data()), 1, n, d),
                            aqua::make_view(out.data(), 2, d), dopt);
  CHECK(std::isnan(out[0]));
}

TEST_CASE("AQUA decode of values whose weighted sum exceeds float range matches dense attention",
          "[faults][aqua][threads]") {
  // Uniform attention over n = 40 tokens whose values are all 1e37: the exact output is 1e37.
  // AQUA decode accumulates unnormalised weights in float (sum_j p_j v_j with p_j <= 1, normalised
  // once at the end), which reaches 4e38 > FLT_MAX; a head whose accumulator overflows while its
  // scores are finite is recomputed in double with normalised weights, so the result is exact.
  const index_t n = 40, d = 16;
  std::vector<float> k(std::size_t(n * d), 0.0f), v(k.size(), 1e37f);
  aqua::kv_cache cache(1, d);
  cache.append(aqua::make_view(static_cast<const float*>(k.data()), 1, n, d),
               aqua::make_view(static_cast<const float*>(v.data()), 1, n, d));
  std::vector<float> q(std::size_t(2 * d), 1.0f), out(q.size(), 0.0f);
  for (auto mode : {aqua::selection_mode::per_head, aqua::selection_mode::group, aqua::selection_mode::tile})
    for (int threads : {1, 2}) {
      CAPTURE(static_cast<int>(mode), threads);
      aqua::aqua_options opt;
      opt.mode = mode;
      opt.threads = threads;
      aqua::aqua_decode(aqua::make_view(static_cast<const float*>(q.data()), 2, d), cache, 4,
                        aqua::make_view(out.data(), 2, d), opt);
      for (float x : out) CHECK(x == Approx(1e37).epsilon(1e-5));
    }
}

TEST_CASE("AQUA prefill and dense decode return values near the float limit exactly, like AQUA decode",
          "[faults][aqua]") {
  const index_t n = 40, d = 16;
  std::vector<float> k(std::size_t(n * d), 0.0f), v(k.size(), 1e37f);
  aqua::kv_cache cache(1, d);
  cache.append(aqua::make_view(static_cast<const float*>(k.data()), 1, n, d),
               aqua::make_view(static_cast<const float*>(v.data()), 1, n, d));
  std::vector<float> q(std::size_t(n * d), 1.0f), out(q.size(), 0.0f);
  aqua::aqua_options popt;
  popt.causal = false;
  aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q.data()), 1, n, d), cache,
                     aqua::selection_spec::top_k(4), aqua::make_view(out.data(), 1, n, d), popt);
  for (float x : out) CHECK(x == Approx(1e37).epsilon(1e-5));
  std::vector<float> dv(static_cast<std::size_t>(d));
  aqua::dense_decode<float>(aqua::make_view(static_cast<const float*>(q.data()), 1, d),
                            aqua::make_view(static_cast<const float*>(k.data()), 1, n, d),
                            aqua::make_view(static_cast<const float*>(v.data()), 1, n, d),
                            aqua::make_view(dv.data(), 1, d));
  for (float x : dv) CHECK(x == Approx(1e37).epsilon(1e-5));
  std::vector<float> oc(static_cast<std::size_t>(d));
  aqua::dense_decode(aqua::make_view(static_cast<const float*>(q.data()), 1, d), cache,
                     aqua::make_view(oc.data(), 1, d));
  for (float x : oc) CHECK(x == Approx(1e37).epsilon(1e-5));
}

TEST_CASE("selection sizes, fractions, energies, ranks and tiles out of range are rejected with their values",
          "[faults][aqua][errors]") {
  const index_t d = 64, hq = 2;
  aqua::kv_cache_options topt;
  topt.tile_dims = 16;
  topt.rank = 32;
  aqua::kv_cache truncated(1, d, topt);
  std::vector<float> k(std::size_t(10 * d)), v(k.size());
  aqua_test::fill_normal(k, 1);
  aqua_test::fill_normal(v, 2);
  truncated.append(aqua::make_view(static_cast<const float*>(k.data()), 1, 10, d),
                   aqua::make_view(static_cast<const float*>(v.data()), 1, 10, d));
  std::vector<float> q(std::size_t(hq * 10 * d), 0.25f), out(q.size());
  auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, d);
  auto ov = aqua::make_view(out.data(), hq, d);
  auto qp = aqua::make_view(static_cast<const float*>(q.data()), hq, 10, d);
  auto op = aqua::make_view(out.data(), hq, 10, d);
  struct bad_spec {
    aqua::selection_spec spec;
    const char* message;
  };
  const bad_spec specs[] = {
      {aqua::selection_spec::top_k(0), "k = 0 must lie in [1, 32]"},
      {aqua::selection_spec::top_k(33), "k = 33 must lie in [1, 32]"},
      {aqua::selection_spec::top_k(-5), "k = -5 must lie in [1, 32]"},
      {aqua::selection_spec::fraction(0.0), "selection fraction 0 must lie in (0, 1]"},
      {aqua::selection_spec::fraction(1.5), "selection fraction 1.5 must lie in (0, 1]"},
      {aqua::selection_spec::fraction(std::nan("")), "must lie in (0, 1]"},
      {aqua::selection_spec::energy(0.0), "energy threshold tau = 0 must lie in (0, 1]"},
      {aqua::selection_spec::energy(-0.5), "energy threshold tau = -0.5 must lie in (0, 1]"},
      {aqua::selection_spec::energy(1.01), "energy threshold tau = 1.01 must lie in (0, 1]"},
      {aqua::selection_spec::energy(std::numeric_limits<double>::infinity()), "energy threshold tau = inf"},
  };
  for (const auto& b : specs) {
    CAPTURE(b.message);
    for (auto mode : all_modes) {
      aqua::aqua_options opt;
      opt.mode = mode;
      CHECK_THROWS_WITH(aqua::aqua_decode(qv, truncated, b.spec, ov, opt),
                        Contains("aqua::aqua_decode") && Contains(b.message));
    }
    CHECK_THROWS_WITH(aqua::aqua_prefill(qp, truncated, b.spec, op),
                      Contains("aqua::aqua_prefill") && Contains(b.message));
  }
  aqua::aqua_options nan_scale;
  nan_scale.scale = std::nan("");
  CHECK_THROWS_WITH(aqua::aqua_decode(qv, truncated, 4, ov, nan_scale),
                    Contains("scale must be finite, got nan"));
  nan_scale.scale = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(aqua::aqua_prefill(qp, truncated, aqua::selection_spec::top_k(4), op, nan_scale),
                    Contains("aqua::aqua_prefill: scale must be finite, got inf"));

  // Rank r and tile width of the cache itself.
  auto make = [&](index_t kv_heads, index_t dim, index_t tile, index_t rank, index_t capacity) {
    aqua::kv_cache_options o;
    o.tile_dims = tile;
    o.rank = rank;
    o.capacity = capacity;
    return aqua::kv_cache(kv_heads, dim, o);
  };
  CHECK_THROWS_WITH(make(1, d, 16, 65, 0), Contains("rank r = 65 must lie in [1, d = 64] (0 means d)"));
  CHECK_THROWS_WITH(make(1, d, 16, -1, 0), Contains("rank r = -1 must lie in [1, d = 64]"));
  CHECK_THROWS_WITH(make(1, d, 16, 40, 0), Contains("rank r = 40 must be a multiple of tile_dims = 16"));
  CHECK_THROWS_WITH(make(1, d, 0, 0, 0), Contains("tile_dims must be at least 1, got 0"));
  CHECK_THROWS_WITH(make(0, d, 16, 0, 0), Contains("kv_heads (0) and head_dim (64) must be at least 1"));
  CHECK_THROWS_WITH(make(1, 0, 16, 0, 0), Contains("kv_heads (1) and head_dim (0) must be at least 1"));
  CHECK_THROWS_WITH(make(1, d, 16, 0, -3), Contains("capacity must be >= 0, got -3"));
  // A basis with a NaN is rejected when the cache copies it.
  std::vector<float> basis(std::size_t(d * d), 0.0f);
  for (index_t i = 0; i < d; ++i) basis[std::size_t(i * d + i)] = 1.0f;
  basis[std::size_t(3 * d + 5)] = nan_f;
  std::vector<aqua::matrix_view<const float>> bases = {
      aqua::make_view(static_cast<const float*>(basis.data()), d, d)};
  CHECK_THROWS_WITH(aqua::kv_cache(bases),
                    Contains("projections[h] holds a non-finite value (nan) at index [3, 5]"));
}
