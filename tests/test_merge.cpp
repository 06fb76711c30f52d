// Log-sum-exp outputs and aqua::merge_attention: a context split into 2, 3 and 4 shards (token
// ranges of one cache, or of one engine buffer), each attended on its own and merged, is attention
// over the whole context within the bound the double oracle derives for the whole; the lse itself
// against a double loop; rows no part attends to; bad parts.
#include <aqua/attention.hpp>
#include <aqua/eigen.hpp>
#include <aqua/merge.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "aqua_oracle.hpp"
#include "kernel_support.hpp"
#include "oracle_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

/// Token ranges [0, n) cut into `shards` nearly equal consecutive pieces (the last ones shorter).
std::vector<std::pair<index_t, index_t>> shard_ranges(index_t n, index_t shards) {
  std::vector<std::pair<index_t, index_t>> r;
  for (index_t s = 0; s < shards; ++s) r.push_back({n * s / shards, n * (s + 1) / shards});
  return r;
}

/// A cache with the bases and tile width of L holding L's tokens [t0, t1) (tile selection depends
/// on the tile width: shards must share it, as they share the projection).
aqua::kv_cache shard_cache(const aqua_test::random_layer& L, index_t t0, index_t t1) {
  std::vector<aqua::matrix_view<const float>> views;
  for (const auto& b : L.bases) views.push_back(aqua::view_of(b));
  aqua::kv_cache_options opt;
  opt.tile_dims = L.cache.tile_dims();
  aqua::kv_cache c(views, opt);
  const index_t d = L.d;
  c.append(aqua::tensor3_view<const float>(L.k.data() + t0 * d, {L.hkv, t1 - t0, d}, {L.n * d, d, 1}),
           aqua::tensor3_view<const float>(L.v.data() + t0 * d, {L.hkv, t1 - t0, d}, {L.n * d, d, 1}));
  return c;
}

}  // namespace

TEST_CASE("AQUA and dense decode over cache shards, merged by their lse, are attention over the whole cache",
          "[merge][decode][oracle]") {
  const index_t shards = GENERATE(2, 3, 4);
  const index_t g = GENERATE(1, 4);
  const index_t hkv = 2, hq = g * hkv, d = 64, n = 333;
  CAPTURE(shards, g);
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, unsigned(40 + g), 700});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<aqua::kv_cache> caches;
  for (const auto& r : shard_ranges(n, shards)) caches.push_back(shard_cache(L, r.first, r.second));
  std::vector<float> q(std::size_t(hq * d));
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, d);
  using top = aqua::selection_spec;
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {top::top_k(d / 4), top::top_k(d), top::energy(0.8)}) {
      CAPTURE(aqua_test::mode_name(mode), aqua_test::spec_name(spec));
      // AQUA's selection depends on the queries only, so every shard selects what the whole would.
      const auto res = aqua_test::clear_decode_queries(o, q, d, 31, mode, spec);
      std::vector<std::vector<float>> outs(std::size_t(shards), std::vector<float>(q.size())),
          lses(std::size_t(shards), std::vector<float>(static_cast<std::size_t>(hq)));
      std::vector<aqua::attention_part> parts;
      for (index_t s = 0; s < shards; ++s) {
        aqua::aqua_options opt;
        opt.mode = mode;
        opt.lse = aqua::make_view(lses[std::size_t(s)].data(), hq);
        aqua::aqua_decode(qv, caches[std::size_t(s)], spec,
                          aqua::make_view(outs[std::size_t(s)].data(), hq, d), opt);
        parts.push_back({aqua::make_view(static_cast<const float*>(outs[std::size_t(s)].data()), hq, d),
                         aqua::make_view(static_cast<const float*>(lses[std::size_t(s)].data()), hq)});
      }
      std::vector<float> merged(q.size(), std::numeric_limits<float>::quiet_NaN()),
          merged_lse(static_cast<std::size_t>(hq));
      aqua::merge_attention(parts, aqua::make_view(merged.data(), hq, d),
                            aqua::make_view(merged_lse.data(), hq));
      // The merge adds one rounding of each weight and of each output to the shards' float error,
      // which the whole-cache bound covers twice over.
      aqua_test::bound_report rep;
      for (std::size_t row = 0; row < res.rows.size(); ++row)
        for (index_t c = 0; c < d; ++c)
          rep.add(double(merged[row * std::size_t(d) + std::size_t(c)]), res.rows[row].out[std::size_t(c)],
                  2 * res.rows[row].tol[std::size_t(c)], "merged", index_t(row), c);
      INFO(rep.summary());
      CHECK(rep.outside == 0);
      // The merged lse is the whole cache's.
      std::vector<float> whole(q.size()), whole_lse(static_cast<std::size_t>(hq));
      aqua::aqua_options opt;
      opt.mode = mode;
      opt.lse = aqua::make_view(whole_lse.data(), hq);
      aqua::aqua_decode(qv, L.cache, spec, aqua::make_view(whole.data(), hq, d), opt);
      for (index_t h = 0; h < hq; ++h)
        CHECK(std::abs(merged_lse[std::size_t(h)] - whole_lse[std::size_t(h)]) <=
              1e-5 * (1 + std::abs(whole_lse[std::size_t(h)])));
    }
}

TEST_CASE("dense decode over token ranges of an engine buffer merges into dense decode over all of it",
          "[merge][decode][views]") {
  // Split-KV as an engine does it: views at offsets of one [Hkv, N, d] buffer, one part masked out
  // entirely (its lse is -inf and it must not count), checked against a double loop.
  const index_t hkv = 2, g = 3, hq = hkv * g, d = 40, n = 500;
  std::vector<float> q(std::size_t(hq * d)), k(std::size_t(hkv * n * d)), v(k.size());
  aqua_test::fill_normal(q, 1);
  aqua_test::fill_normal(k, 2);
  aqua_test::fill_normal(v, 3);
  std::vector<float> mask(std::size_t(n), 0.0f);
  for (index_t j = 100; j < 180; ++j) mask[std::size_t(j)] = -std::numeric_limits<float>::infinity();
  const double scale = 1.0 / std::sqrt(double(d));
  // Double reference over every unmasked token.
  std::vector<double> ref(q.size()), ref_lse(static_cast<std::size_t>(hq)), weight_sum(q.size());
  for (index_t h = 0; h < hq; ++h) {
    const index_t kv = h / g;
    std::vector<double> s(static_cast<std::size_t>(n));
    double mx = -INFINITY;
    for (index_t j = 0; j < n; ++j) {
      double dot = 0;
      for (index_t c = 0; c < d; ++c)
        dot += double(q[std::size_t(h * d + c)]) * k[std::size_t((kv * n + j) * d + c)];
      s[std::size_t(j)] = dot * scale + mask[std::size_t(j)];
      mx = std::max(mx, s[std::size_t(j)]);
    }
    double total = 0;
    for (double& x : s) total += (x = std::exp(x - mx));
    ref_lse[std::size_t(h)] = mx + std::log(total);
    for (index_t j = 0; j < n; ++j)
      for (index_t c = 0; c < d; ++c) {
        const double vj = v[std::size_t((kv * n + j) * d + c)];
        ref[std::size_t(h * d + c)] += s[std::size_t(j)] / total * vj;
        weight_sum[std::size_t(h * d + c)] += s[std::size_t(j)] / total * std::abs(vj);
      }
  }
  const std::vector<std::pair<index_t, index_t>> ranges = {{0, 100}, {100, 180}, {180, 377}, {377, 500}};
  std::vector<std::vector<float>> outs(ranges.size(), std::vector<float>(q.size())),
      lses(ranges.size(), std::vector<float>(static_cast<std::size_t>(hq)));
  std::vector<aqua::attention_part> parts;
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, d);
  for (std::size_t p = 0; p < ranges.size(); ++p) {
    const index_t t0 = ranges[p].first, len = ranges[p].second - t0;
    aqua::attention_options opt;
    opt.lse = aqua::make_view(lses[p].data(), hq);
    aqua::dense_decode<float>(
        qv, aqua::tensor3_view<const float>(k.data() + t0 * d, {hkv, len, d}, {n * d, d, 1}),
        aqua::tensor3_view<const float>(v.data() + t0 * d, {hkv, len, d}, {n * d, d, 1}),
        aqua::make_view(outs[p].data(), hq, d), opt,
        aqua::make_view(static_cast<const float*>(mask.data() + t0), len));
    parts.push_back({aqua::make_view(static_cast<const float*>(outs[p].data()), hq, d),
                     aqua::make_view(static_cast<const float*>(lses[p].data()), hq)});
  }
  for (index_t h = 0; h < hq; ++h) {
    CHECK(lses[1][std::size_t(h)] == -std::numeric_limits<float>::infinity());  // every key masked
    CHECK(outs[1][std::size_t(h * d)] == 0.0f);
    for (std::size_t p : {0, 2, 3}) CHECK(std::isfinite(lses[p][std::size_t(h)]));
  }
  std::vector<float> merged(q.size()), merged_lse(static_cast<std::size_t>(hq));
  aqua::merge_attention(parts, aqua::make_view(merged.data(), hq, d), aqua::make_view(merged_lse.data(), hq));
  // Float bound of each part (scores of d terms, N-term value sums, the exp) relative to
  // sum_j p_j |v_j|, with room for the merge's roundings: 4 gamma(2 N + 2 d + 40).
  const double u = std::ldexp(1.0, -24), bound = 4 * (2 * n + 2 * d + 40) * u;
  double worst = 0;
  for (std::size_t i = 0; i < ref.size(); ++i)
    worst = aqua_test::max_or_nan(worst, std::abs(merged[i] - ref[i]) / (bound * weight_sum[i] + 1e-30));
  CHECK(worst <= 1.0);
  for (index_t h = 0; h < hq; ++h)
    CHECK(std::abs(merged_lse[std::size_t(h)] - ref_lse[std::size_t(h)]) <=
          1e-5 * (1 + std::abs(ref_lse[std::size_t(h)])));
}

TEST_CASE("merge_attention gives zeros and -inf where no part attends, and skips parts at -inf", "[merge]") {
  const float ninf = -std::numeric_limits<float>::infinity();
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6, 7, 8};
  std::vector<float> la = {ninf, 0.0f}, lb = {ninf, ninf};
  std::vector<aqua::attention_part> parts = {{aqua::make_view(static_cast<const float*>(a.data()), 2, 2),
                                              aqua::make_view(static_cast<const float*>(la.data()), 2)},
                                             {aqua::make_view(static_cast<const float*>(b.data()), 2, 2),
                                              aqua::make_view(static_cast<const float*>(lb.data()), 2)}};
  std::vector<float> out(4, 99.0f), lse(2, 99.0f);
  aqua::merge_attention(parts, aqua::make_view(out.data(), 2, 2), aqua::make_view(lse.data(), 2));
  CHECK(out == std::vector<float>{0, 0, 3, 4});
  CHECK(lse[0] == ninf);
  CHECK(lse[1] == 0.0f);
  // Equal weights: the mean, and L = lse + log 2.
  std::vector<float> eq = {0.5f, 0.5f};
  parts[0].lse = parts[1].lse = aqua::make_view(static_cast<const float*>(eq.data()), 2);
  aqua::merge_attention(parts, aqua::make_view(out.data(), 2, 2), aqua::make_view(lse.data(), 2));
  CHECK(out == std::vector<float>{3, 4, 5, 6});
  CHECK(lse[1] == Approx(0.5 + std::log(2.0)).epsilon(1e-7));
}

TEST_CASE("merge_attention rejects bad parts with a message naming them", "[merge][errors]") {
  std::vector<float> a(6, 1.0f), l(3, 0.0f), out(6);
  const auto av = aqua::make_view(static_cast<const float*>(a.data()), 3, 2);
  const auto lv = aqua::make_view(static_cast<const float*>(l.data()), 3);
  const auto ov = aqua::make_view(out.data(), 3, 2);
  CHECK_THROWS_WITH(aqua::merge_attention({}, ov), Contains("no parts to merge"));
  CHECK_THROWS_WITH(
      aqua::merge_attention({{av, lv}, {aqua::make_view(static_cast<const float*>(a.data()), 2, 3), lv}}, ov),
      Contains("part 1 has out of shape [2, 3] but out has shape [3, 2]"));
  CHECK_THROWS_WITH(
      aqua::merge_attention({{av, aqua::make_view(static_cast<const float*>(l.data()), 2)}}, ov),
      Contains("part 0 has 2 lse values for 3 rows"));
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    l[1] = bad;
    CHECK_THROWS_WITH(aqua::merge_attention({{av, lv}}, ov), Contains("part 0 has lse[1] = "));
  }
  l[1] = 0;
  a[3] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(aqua::merge_attention({{av, lv}}, ov), Contains("non-finite"));
  a[3] = 1;
  std::vector<float> small(2);
  CHECK_THROWS_WITH(aqua::merge_attention({{av, lv}}, ov, aqua::make_view(small.data(), 2)),
                    Contains("lse has 2 elements but out has 3 rows"));
}

TEST_CASE("decode entry points check the lse output's length", "[merge][decode][errors]") {
  const aqua_test::random_layer L(4, 2, 32, 40, {16, true, 0, 1, 9, 90});
  std::vector<float> out(4 * 32), lse(3);
  aqua::aqua_options opt;
  opt.lse = aqua::make_view(lse.data(), 3);
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, 8, aqua::make_view(out.data(), 4, 32), opt),
                    Contains("lse has 3 elements but q has 4 query heads"));
  aqua::attention_options dopt;
  dopt.lse = aqua::make_view(lse.data(), 3);
  CHECK_THROWS_WITH(aqua::dense_decode(L.qv(), L.cache, aqua::make_view(out.data(), 4, 32), dopt),
                    Contains("lse has 3 elements but q has 4 query heads"));
}

namespace {

/// log sum_j exp(scale q.k_j + mask_j) over keys [0, visible) in double.
double reference_lse(const float* q, const float* k, index_t d, index_t visible, double scale,
                     const float* mask) {
  std::vector<double> s(static_cast<std::size_t>(visible));
  double mx = -INFINITY;
  for (index_t j = 0; j < visible; ++j) {
    double dot = 0;
    for (index_t c = 0; c < d; ++c) dot += double(q[c]) * k[j * d + c];
    s[std::size_t(j)] = dot * scale + (mask ? mask[j] : 0.0f);
    mx = std::max(mx, s[std::size_t(j)]);
  }
  if (mx == -INFINITY) return mx;
  double total = 0;
  for (double x : s) total += std::exp(x - mx);
  return mx + std::log(total);
}

}  // namespace

TEST_CASE("dense prefill and the Eigen decode path return each query's log-sum-exp",
          "[merge][prefill][decode]") {
  const index_t hkv = 2, g = 2, hq = hkv * g, d = 24, n = 90, m = 30;
  std::vector<float> q(std::size_t(hq * m * d)), k(std::size_t(hkv * n * d)), v(k.size()),
      mask(std::size_t(m * n));
  aqua_test::fill_normal(q, 11);
  aqua_test::fill_normal(k, 12);
  aqua_test::fill_normal(v, 13);
  aqua_test::fill_normal(mask, 14);
  for (index_t j = 0; j < n; ++j) mask[std::size_t(5 * n + j)] = -INFINITY;  // query 5 sees nothing
  const double scale = 1.0 / std::sqrt(double(d));
  const auto kv3 = aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d);
  const auto vv3 = aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d);
  for (bool causal : {true, false}) {
    CAPTURE(causal);
    std::vector<float> out(q.size()), lse(std::size_t(hq * m));
    aqua::attention_options opt;
    opt.causal = causal;
    opt.prefill_lse = aqua::make_view(lse.data(), hq, m);
    aqua::dense_prefill<float>(aqua::make_view(static_cast<const float*>(q.data()), hq, m, d), kv3, vv3,
                               aqua::make_view(out.data(), hq, m, d), opt,
                               aqua::make_view(static_cast<const float*>(mask.data()), m, n));
    for (index_t h = 0; h < hq; ++h)
      for (index_t i = 0; i < m; ++i) {
        const double ref = reference_lse(q.data() + (h * m + i) * d, k.data() + (h / g) * n * d, d,
                                         causal ? n - m + i + 1 : n, scale, mask.data() + i * n);
        CAPTURE(h, i);
        if (i == 5) {
          CHECK(lse[std::size_t(h * m + i)] == -std::numeric_limits<float>::infinity());
        } else {
          CHECK(std::abs(lse[std::size_t(h * m + i)] - ref) <= 1e-5 * (1 + std::abs(ref)));
        }
      }
  }
  // Decode in double and over a strided inner dimension (both through Eigen): the same lse.
  std::vector<double> qd(std::size_t(hq * d)), kd(k.begin(), k.end()), vd(v.begin(), v.end()),
      outd(qd.size());
  for (std::size_t i = 0; i < qd.size(); ++i) qd[i] = q[i];
  std::vector<float> lse_d(static_cast<std::size_t>(hq)), lse_strided(static_cast<std::size_t>(hq)),
      out_f(qd.size());
  aqua::attention_options dopt;
  dopt.lse = aqua::make_view(lse_d.data(), hq);
  aqua::dense_decode<double>(aqua::make_view(static_cast<const double*>(qd.data()), hq, d),
                             aqua::make_view(static_cast<const double*>(kd.data()), hkv, n, d),
                             aqua::make_view(static_cast<const double*>(vd.data()), hkv, n, d),
                             aqua::make_view(outd.data(), hq, d), dopt);
  // Every other element of a doubled buffer: inner stride 2.
  std::vector<float> k2(k.size() * 2), v2(v.size() * 2);
  for (std::size_t i = 0; i < k.size(); ++i) {
    k2[2 * i] = k[i];
    v2[2 * i] = v[i];
  }
  dopt.lse = aqua::make_view(lse_strided.data(), hq);
  aqua::dense_decode<float>(aqua::make_view(static_cast<const float*>(q.data()), hq, d),
                            aqua::tensor3_view<const float>(k2.data(), {hkv, n, d}, {2 * n * d, 2 * d, 2}),
                            aqua::tensor3_view<const float>(v2.data(), {hkv, n, d}, {2 * n * d, 2 * d, 2}),
                            aqua::make_view(out_f.data(), hq, d), dopt);
  for (index_t h = 0; h < hq; ++h) {
    const double ref = reference_lse(q.data() + h * d, k.data() + (h / g) * n * d, d, n, scale, nullptr);
    CHECK(std::abs(lse_d[std::size_t(h)] - ref) <= 1e-6 * (1 + std::abs(ref)));
    CHECK(std::abs(lse_strided[std::size_t(h)] - ref) <= 1e-5 * (1 + std::abs(ref)));
  }
}

TEST_CASE("non-causal prefill over key shards merges into prefill over all keys", "[merge][prefill]") {
  // Each query row of [Hq, M, d] is one row of a [Hq * M, d] matrix, so merge_attention merges
  // prefill parts as it merges decode parts.
  const index_t hkv = 2, g = 3, hq = hkv * g, d = 32, n = 120, m = 17;
  std::vector<float> q(std::size_t(hq * m * d)), k(std::size_t(hkv * n * d)), v(k.size());
  aqua_test::fill_normal(q, 21);
  aqua_test::fill_normal(k, 22);
  aqua_test::fill_normal(v, 23);
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, m, d);
  aqua::attention_options opt;
  opt.causal = false;
  std::vector<float> whole(q.size());
  aqua::dense_prefill<float>(qv, aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                             aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d),
                             aqua::make_view(whole.data(), hq, m, d), opt);
  const std::vector<std::pair<index_t, index_t>> ranges = {{0, 40}, {40, 60}, {60, 120}};  // N >= M each
  std::vector<std::vector<float>> outs(ranges.size(), std::vector<float>(q.size())),
      lses(ranges.size(), std::vector<float>(std::size_t(hq * m)));
  std::vector<aqua::attention_part> parts;
  for (std::size_t p = 0; p < ranges.size(); ++p) {
    const index_t t0 = ranges[p].first, len = ranges[p].second - t0;
    opt.prefill_lse = aqua::make_view(lses[p].data(), hq, m);
    aqua::dense_prefill<float>(
        qv, aqua::tensor3_view<const float>(k.data() + t0 * d, {hkv, len, d}, {n * d, d, 1}),
        aqua::tensor3_view<const float>(v.data() + t0 * d, {hkv, len, d}, {n * d, d, 1}),
        aqua::make_view(outs[p].data(), hq, m, d), opt);
    parts.push_back({aqua::make_view(static_cast<const float*>(outs[p].data()), hq * m, d),
                     aqua::make_view(static_cast<const float*>(lses[p].data()), hq * m)});
  }
  std::vector<float> merged(q.size());
  aqua::merge_attention(parts, aqua::make_view(merged.data(), hq * m, d));
  double worst = 0;
  for (std::size_t i = 0; i < whole.size(); ++i)
    worst = aqua_test::max_or_nan(worst, std::abs(double(merged[i]) - whole[i]));
  CHECK(worst < 1e-5);
}

TEST_CASE("a log-sum-exp output of the other phase is an error, not a silent no-op", "[merge][errors]") {
  const aqua_test::random_layer L(4, 2, 32, 40, {16, true, 0, 1, 9, 90});
  std::vector<float> out(4 * 3 * 32), lse(4 * 3);
  aqua::aqua_options opt;
  opt.prefill_lse = aqua::make_view(lse.data(), 4, 1);
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, 8, aqua::make_view(out.data(), 4, 32), opt),
                    Contains("options.prefill_lse is a prefill output"));
  CHECK_THROWS_WITH(aqua::dense_decode(L.qv(), L.cache, aqua::make_view(out.data(), 4, 32), opt),
                    Contains("options.prefill_lse is a prefill output"));
  aqua::aqua_options popt;
  popt.lse = aqua::make_view(lse.data(), 4);
  std::vector<float> q3(4 * 3 * 32);
  const auto q3v = aqua::make_view(static_cast<const float*>(q3.data()), 4, 3, 32);
  CHECK_THROWS_WITH(aqua::aqua_prefill(q3v, L.cache, aqua::selection_spec::top_k(8),
                                       aqua::make_view(out.data(), 4, 3, 32), popt),
                    Contains("options.lse is a decode output"));
  const auto k = aqua::make_view(static_cast<const float*>(L.k.data()), 2, 40, 32);
  const auto v = aqua::make_view(static_cast<const float*>(L.v.data()), 2, 40, 32);
  CHECK_THROWS_WITH(aqua::dense_prefill<float>(q3v, k, v, aqua::make_view(out.data(), 4, 3, 32), popt),
                    Contains("options.lse is a decode output"));
}

TEST_CASE("AQUA prefill's lse is each query's log-sum-exp over the keys it sees", "[merge][prefill]") {
  const index_t hkv = 2, g = 2, hq = hkv * g, d = 64, n = 150, m = 70;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 77, 710});
  std::vector<float> q(static_cast<std::size_t>(hq * m * d)), out(q.size()),
      lse(static_cast<std::size_t>(hq * m));
  aqua_test::fill_normal(q, 78);
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, m, d);
  const double scale = 1.0 / std::sqrt(double(d));
  for (bool causal : {true, false}) {
    CAPTURE(causal);
    // k = d: the exact scores, recomputed from the raw q and k in double (the bases are orthogonal).
    aqua::aqua_options opt;
    opt.mode = aqua::selection_mode::per_head;
    opt.causal = causal;
    opt.prefill_lse = aqua::make_view(lse.data(), hq, m);
    aqua::aqua_prefill(qv, L.cache, aqua::selection_spec::top_k(d), aqua::make_view(out.data(), hq, m, d),
                       opt);
    double worst = 0;
    for (index_t h = 0; h < hq; ++h)
      for (index_t i = 0; i < m; ++i) {
        const index_t visible = causal ? n - m + i + 1 : n;
        std::vector<double> s(static_cast<std::size_t>(visible));
        double mx = -INFINITY;
        for (index_t j = 0; j < visible; ++j) {
          double dot = 0;
          for (index_t c = 0; c < d; ++c)
            dot += double(q[std::size_t((h * m + i) * d + c)]) * L.k[std::size_t(((h / g) * n + j) * d + c)];
          mx = std::max(mx, s[std::size_t(j)] = dot * scale);
        }
        double total = 0;
        for (double x : s) total += std::exp(x - mx);
        worst = aqua_test::max_or_nan(worst, std::abs(lse[std::size_t(h * m + i)] - (mx + std::log(total))));
      }
    CHECK(worst < 1e-4);
  }
  // k < d: the last query sees every key, as a decode step would, and selects per head alike.
  std::vector<float> dec_out(static_cast<std::size_t>(hq * d)), dec_lse(static_cast<std::size_t>(hq)),
      last_q(dec_out.size());
  for (index_t h = 0; h < hq; ++h) std::copy_n(q.begin() + (h * m + m - 1) * d, d, last_q.begin() + h * d);
  aqua::aqua_options opt;
  opt.mode = aqua::selection_mode::per_head;
  opt.prefill_lse = aqua::make_view(lse.data(), hq, m);
  aqua::aqua_prefill(qv, L.cache, aqua::selection_spec::top_k(d / 4), aqua::make_view(out.data(), hq, m, d),
                     opt);
  aqua::aqua_options dopt;
  dopt.mode = aqua::selection_mode::per_head;
  dopt.lse = aqua::make_view(dec_lse.data(), hq);
  aqua::aqua_decode(aqua::make_view(static_cast<const float*>(last_q.data()), hq, d), L.cache, d / 4,
                    aqua::make_view(dec_out.data(), hq, d), dopt);
  for (index_t h = 0; h < hq; ++h)
    CHECK(std::abs(lse[std::size_t(h * m + m - 1)] - dec_lse[std::size_t(h)]) <=
          1e-5 * (1 + std::abs(dec_lse[std::size_t(h)])));
  std::vector<float> small(static_cast<std::size_t>(hq * (m - 1)));
  opt.prefill_lse = aqua::make_view(small.data(), hq, m - 1);
  CHECK_THROWS_WITH(aqua::aqua_prefill(qv, L.cache, aqua::selection_spec::top_k(d / 4),
                                       aqua::make_view(out.data(), hq, m, d), opt),
                    Contains("prefill_lse has shape [4, 69] but must be [Hq, M] = [4, 70]"));
}
