// AQUA decode below k = d held against the independent double-precision oracle (aqua_oracle.hpp):
// every selection mode and spec, GQA group sizes 1, 2, 4, 5, every kernel path the CPU has (fused
// and chunked; AVX-512, AVX2, portable), 1-3 threads with and without token segments, truncated
// caches, token probabilities and the H2O scores fed by them, and the profile's key fraction. The
// bound every comparison uses is derived in aqua_oracle.hpp (float rounding of the projection,
// the scores, the exponentials and the value sums, relative to sum_j p_j |v_j|).
#include <aqua/attention.hpp>
#include <aqua/eigen.hpp>
#include <aqua/h2o.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "aqua_oracle.hpp"
#include "kernel_support.hpp"
#include "oracle_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using aqua_test::both_paths;
using aqua_test::mode_name;
using aqua_test::spec_name;

namespace {

using top = aqua::selection_spec;

// The specs of the matrix for r selectable dims: k = 1, r / 4, r / 2 + 3, r - 1, a
// fraction, and two energy thresholds.
std::vector<aqua::selection_spec> decode_oracle_specs(index_t r) {
  return {top::top_k(1),      top::top_k(r / 4), top::top_k(r / 2 + 3), top::top_k(r - 1),
          top::fraction(0.3), top::energy(0.5),  top::energy(0.9)};
}

// Runs aqua_decode on q with token probabilities and holds both against the oracle's result.
void check_decode_against_oracle(const aqua_test::random_layer& L, const std::vector<float>& q,
                                 const aqua::selection_spec& spec, aqua::selection_mode mode, int threads,
                                 const aqua_oracle::result& res) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> out(std::size_t(L.hq * L.d), nan), probs(std::size_t(L.hkv * L.n), nan);
  aqua::aqua_options opt;
  opt.mode = mode;
  opt.threads = threads;
  aqua::aqua_decode(aqua::make_view(q.data(), L.hq, L.d), L.cache, spec,
                    aqua::make_view(out.data(), L.hq, L.d), opt, aqua::make_view(probs.data(), L.hkv, L.n));
  aqua_test::bound_report rep;
  aqua_test::compare_rows(rep, out, res, L.d);
  aqua_test::compare_token_probs(rep, probs, res, L.n);
  INFO(rep.summary());
  CHECK(rep.outside == 0);
}

// How far the selection's outputs lie from exact attention in units of the bound, over the rows
// whose selection drops at least one dim: the comparison can only catch a wrong selection if this
// is well above 1.
double distance_from_exact(const aqua_oracle::result& res, const aqua_oracle::result& exact, index_t r) {
  double worst = 0;
  for (std::size_t row = 0; row < res.rows.size(); ++row) {
    if (index_t(res.rows[row].dims.size()) == r) continue;
    for (std::size_t c = 0; c < res.rows[row].out.size(); ++c)
      worst = aqua_test::max_or_nan(
          worst, std::abs(res.rows[row].out[c] - exact.rows[row].out[c]) / res.rows[row].tol[c]);
  }
  return worst;
}

}  // namespace

TEST_CASE("AQUA decode below k = d agrees with the independent oracle in every mode on every kernel path",
          "[aqua][oracle][decode]") {
  // d = 64: the fused kernels (AVX-512 and AVX2); d = 40: fused AVX2 only (not a multiple of 16)
  // and a last tile of 8 dims; d = 36: the chunked path with vector scores (not a multiple of 8)
  // and a last tile of 4. n = 37 ends in a partial block; n = 300 spans three 128-token chunks.
  const index_t d = GENERATE(36, 40, 64);
  const index_t g = GENERATE(1, 2, 4, 5);
  const index_t n = GENERATE(37, 300);
  const index_t hkv = 2, hq = g * hkv;
  CAPTURE(d, g, n);
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, unsigned(d * 1000 + g * 10 + n), 100});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * d));
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : decode_oracle_specs(d)) {
      CAPTURE(mode_name(mode), spec_name(spec));
      const auto res = aqua_test::clear_decode_queries(o, q, d, 11, mode, spec);
      // The approximation must be visible well above the bound, or agreement proves nothing.
      const auto exact = o.decode(q.data(), aqua_oracle::mode::group, aqua_oracle::spec::top_k(d));
      if (spec.type == aqua::selection_spec::kind::top_k && spec.k <= d / 2 + 3)
        CHECK(distance_from_exact(res, exact, d) > 10);
      both_paths([&] { check_decode_against_oracle(L, q, spec, mode, 1, res); });
    }
}

TEST_CASE("AQUA decode below k = d over bf16 and f16 storage agrees with the oracle on the rounded inputs",
          "[aqua][oracle][decode][storage]") {
  // The oracle rounds the projected keys and the values with its own double rounding; signed
  // permutation bases keep the cache's float projection exact, so both round the same numbers.
  // Equal types take the fused kernels, mixed pairs the chunked path.
  using st = aqua::storage_type;
  using pair = aqua_test::storage_pair;
  const auto types = GENERATE(pair{st::bf16, st::bf16}, pair{st::f16, st::f16}, pair{st::bf16, st::f32},
                              pair{st::f32, st::f16}, pair{st::f16, st::bf16});
  const index_t d = GENERATE(40, 64);
  const index_t g = GENERATE(1, 4, 5);
  const index_t hkv = 2, hq = g * hkv, n = 300;
  CAPTURE(aqua::storage_name(types.key), aqua::storage_name(types.value), d, g);
  const aqua_test::random_layer L(
      hq, hkv, d, n, aqua_test::with_storage({16, true, 0, 1, unsigned(d * 100 + g), 300}, types));
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * d));
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {top::top_k(1), top::top_k(d / 4), top::top_k(d / 2 + 3), top::energy(0.9)}) {
      CAPTURE(mode_name(mode), spec_name(spec));
      const auto res = aqua_test::clear_decode_queries(o, q, d, 23, mode, spec);
      both_paths([&] {
        for (int threads : {1, 2}) {
          CAPTURE(threads);
          check_decode_against_oracle(L, q, spec, mode, threads, res);
        }
      });
    }
}

TEST_CASE("AQUA decode agrees with the oracle for 1, 2 and 3 threads, with and without token segments",
          "[aqua][oracle][decode][threads]") {
  // Segments (a KV head's tokens split across threads and merged) happen when the threads do not
  // divide the KV heads: hkv = 1 and 3 with 2 threads, hkv = 1 and 2 with 3. n = 2100 gives 17
  // chunks and a partial block.
  const index_t hkv = GENERATE(1, 2, 3);
  const index_t g = GENERATE(2, 5);
  const index_t d = GENERATE(36, 64);
  const index_t n = 2100, hq = g * hkv;
  CAPTURE(hkv, g, d);
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, unsigned(hkv * 100 + g * 10 + d), 200});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * d));
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {top::top_k(d / 4), top::top_k(d / 2 + 3), top::energy(0.8)}) {
      CAPTURE(mode_name(mode), spec_name(spec));
      const auto res = aqua_test::clear_decode_queries(o, q, d, 23, mode, spec);
      both_paths([&] {
        for (int threads : {1, 2, 3}) {
          CAPTURE(threads);
          check_decode_against_oracle(L, q, spec, mode, threads, res);
        }
      });
    }
}

TEST_CASE("AQUA decode on a truncated cache (r < d) agrees with the oracle over the r stored dims",
          "[aqua][oracle][decode][truncation]") {
  const index_t r = GENERATE(16, 32, 48);
  const index_t g = GENERATE(1, 4);
  const bool project = GENERATE(true, false);
  const index_t d = 64, hkv = 2, hq = g * hkv, n = 150;
  CAPTURE(r, g, project);
  const aqua_test::random_layer L(hq, hkv, d, n, {16, project, r, 1, unsigned(r + g), 300});
  REQUIRE(L.cache.rank() == r);
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * d));
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : decode_oracle_specs(r)) {
      CAPTURE(mode_name(mode), spec_name(spec));
      const auto res = aqua_test::clear_decode_queries(o, q, d, 31, mode, spec);
      both_paths([&] { check_decode_against_oracle(L, q, spec, mode, 1, res); });
    }
}

TEST_CASE(
    "selection within a truncated cache ranks only the r stored dims, even when most query energy lies "
    "beyond r",
    "[aqua][oracle][decode][truncation]") {
  // Queries built in projected coordinates (q = q~ P^T, P orthogonal) with N(0, 0.1) on the r stored
  // dims and N(0, 10) on the d - r dropped ones: a selection ranking all d dims would pick almost only
  // dropped dims; the rule ranks the stored r and attends on them alone.
  const index_t d = 64, r = 32, hkv = 2, g = 2, hq = g * hkv, n = 120;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, r, 1, 5, 400});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {top::top_k(4), top::top_k(20), top::energy(0.7)}) {
      CAPTURE(mode_name(mode), spec_name(spec));
      std::vector<float> q(std::size_t(hq * d));
      aqua_oracle::result res;
      for (unsigned attempt = 0;; ++attempt) {
        REQUIRE(attempt < 200);
        std::vector<double> qt(std::size_t(hq * d));
        aqua_test::fill_normal(qt, 600 + attempt);
        double stored = 0, dropped = 0;
        for (index_t h = 0; h < hq; ++h)
          for (index_t j = 0; j < d; ++j) {
            double& x = qt[std::size_t(h * d + j)];
            x *= j < r ? 0.1 : 10.0;
            (j < r ? stored : dropped) += x * x;
          }
        REQUIRE(dropped > 0.99 * (stored + dropped));
        const auto& bases = L.bases;
        for (index_t h = 0; h < hq; ++h)
          for (index_t c = 0; c < d; ++c) {
            double x = 0;
            for (index_t j = 0; j < d; ++j)
              x += double(bases[std::size_t(h / g)](c, j)) * qt[std::size_t(h * d + j)];
            q[std::size_t(h * d + c)] = float(x);
          }
        res = o.decode(q.data(), aqua_test::oracle_mode(mode), aqua_test::oracle_spec(spec));
        if (res.margin >= aqua_oracle::required_margin(d)) break;
      }
      for (const auto& row : res.rows)
        for (index_t dim : row.dims) REQUIRE(dim < r);
      both_paths([&] { check_decode_against_oracle(L, q, spec, mode, 1, res); });
    }
}

TEST_CASE("H2O scores at k < d are the sums of the oracle's group-summed token probabilities over the steps",
          "[aqua][oracle][h2o]") {
  // Two decode steps through h2o_policy::decode, one token appended in between (it enters with
  // score 0 and gains only the second step's probability).
  const index_t d = 64, hkv = 2, g = GENERATE(1, 4), hq = g * hkv, n = 90;
  const auto mode =
      GENERATE(aqua::selection_mode::per_head, aqua::selection_mode::group, aqua::selection_mode::tile);
  CAPTURE(g, mode_name(mode));
  const aqua_test::random_layer full(hq, hkv, d, n + 1, {16, true, 0, 1, unsigned(40 + g), 500});
  // The first n tokens of every head, contiguous, for the oracle of step 1 and the cache.
  std::vector<float> k1, v1;
  for (index_t h = 0; h < hkv; ++h) {
    k1.insert(k1.end(), full.k.begin() + h * (n + 1) * d, full.k.begin() + (h * (n + 1) + n) * d);
    v1.insert(v1.end(), full.v.begin() + h * (n + 1) * d, full.v.begin() + (h * (n + 1) + n) * d);
  }
  std::vector<aqua::matrix_view<const float>> views;
  for (const auto& b : full.bases) views.push_back(aqua::view_of(b));
  aqua::kv_cache cache(views, {16, 0, 0});
  cache.append(aqua::make_view(static_cast<const float*>(k1.data()), hkv, n, d),
               aqua::make_view(static_cast<const float*>(v1.data()), hkv, n, d));
  auto in1 = aqua_test::oracle_inputs(full);
  in1.n = n;
  in1.k = k1.data();
  in1.v = v1.data();
  const aqua_oracle::oracle o1(in1), o2(aqua_test::oracle_inputs(full));
  const auto spec = top::top_k(d / 4);
  std::vector<float> q1(std::size_t(hq * d)), q2(q1.size()), out(q1.size());
  const auto r1 = aqua_test::clear_decode_queries(o1, q1, d, 50, mode, spec);
  const auto r2 = aqua_test::clear_decode_queries(o2, q2, d, 70, mode, spec);
  aqua::h2o_policy policy(hkv, {n + 10, 4, 0, true});
  aqua::aqua_options opt;
  opt.mode = mode;
  policy.decode(aqua::make_view(q1.data(), hq, d), cache, spec, aqua::make_view(out.data(), hq, d), opt);
  aqua::tensor3_view<const float> k_last(full.k.data() + n * d, {hkv, 1, d}, {(n + 1) * d, d, 1});
  aqua::tensor3_view<const float> v_last(full.v.data() + n * d, {hkv, 1, d}, {(n + 1) * d, d, 1});
  cache.append(k_last, v_last);
  policy.decode(aqua::make_view(q2.data(), hq, d), cache, spec, aqua::make_view(out.data(), hq, d), opt);
  REQUIRE(policy.tokens() == n + 1);
  aqua_test::bound_report rep;
  for (index_t kv = 0; kv < hkv; ++kv)
    for (index_t j = 0; j <= n; ++j) {
      double want = r2.token_probs[std::size_t(kv)][std::size_t(j)];
      double tol = r2.token_prob_tol[std::size_t(kv)][std::size_t(j)];
      if (j < n) {
        want += r1.token_probs[std::size_t(kv)][std::size_t(j)];
        tol += r1.token_prob_tol[std::size_t(kv)][std::size_t(j)];
      }
      // The policy adds the float probabilities in double: no rounding beyond the probabilities'.
      rep.add(policy.score(kv, j), want, tol + 1e-30, "score", kv, j);
    }
  INFO(rep.summary());
  CHECK(rep.outside == 0);
}

TEST_CASE("the decode profile's key fraction is the share of key tiles holding a selected dim",
          "[aqua][oracle][profile]") {
  // Per KV head, the tiles read are the union over its lists (per head: the g heads' own
  // selections; group and tile: the shared one); the fraction is their count over tiles * Hkv.
  const index_t d = 64, hkv = 2, g = 4, hq = g * hkv, n = 2000, tile = 16, tiles = d / tile;
  const aqua_test::random_layer L(hq, hkv, d, n, {tile, true, 0, 1, 9, 600});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * d)), out(q.size());
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {top::top_k(1), top::top_k(5), top::top_k(20), top::energy(0.6), top::top_k(d)}) {
      CAPTURE(mode_name(mode), spec_name(spec));
      const auto res = aqua_test::clear_decode_queries(o, q, d, 80, mode, spec);
      index_t read = 0;
      for (index_t kv = 0; kv < hkv; ++kv) {
        std::vector<bool> touched(std::size_t(tiles), false);
        for (index_t h = kv * g; h < (kv + 1) * g; ++h)
          for (auto dim : res.rows[std::size_t(h)].dims) touched[std::size_t(dim / tile)] = true;
        for (bool t : touched) read += t ? 1 : 0;
      }
      aqua::attention_profile prof;
      prof.select_seconds = prof.score_seconds = prof.softmax_seconds = prof.value_seconds = -1;
      aqua::aqua_options opt;
      opt.mode = mode;
      opt.profile = &prof;
      aqua::aqua_decode(aqua::make_view(q.data(), hq, d), L.cache, spec, aqua::make_view(out.data(), hq, d),
                        opt);
      CHECK(prof.key_fraction_read == double(read) / double(tiles * hkv));
      for (double t : {prof.select_seconds, prof.score_seconds, prof.softmax_seconds, prof.value_seconds}) {
        CHECK(std::isfinite(t));
        CHECK(t >= 0);
      }
      // 2000 tokens of 8 heads take microseconds of CPU: a thread CPU clock (ns resolution) sees them.
      CHECK(prof.score_seconds + prof.softmax_seconds + prof.value_seconds > 0);
    }
  // Dense decode over the cache reads every tile.
  aqua::attention_profile dense_prof;
  aqua::attention_options dopt;
  dopt.profile = &dense_prof;
  aqua::dense_decode(aqua::make_view(q.data(), hq, d), L.cache, aqua::make_view(out.data(), hq, d), dopt);
  CHECK(dense_prof.key_fraction_read == 1.0);
}

TEST_CASE("the prefill profiles report non-negative phase times that add up to measurable work",
          "[aqua][profile][prefill]") {
  const index_t d = 64, hkv = 2, hq = 4, n = 400, m = 300;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 12, 700});
  std::vector<float> q(std::size_t(hq * m * d)), out(q.size());
  aqua_test::fill_normal(q, 13);
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, m, d);
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    aqua::attention_profile prof;
    prof.key_fraction_read = -1;
    aqua::aqua_options opt;
    opt.profile = &prof;
    opt.threads = threads;
    aqua::aqua_prefill(qv, L.cache, top::top_k(16), aqua::make_view(out.data(), hq, m, d), opt);
    for (double t : {prof.select_seconds, prof.score_seconds, prof.softmax_seconds, prof.value_seconds}) {
      CHECK(std::isfinite(t));
      CHECK(t >= 0);
    }
    CHECK(prof.select_seconds + prof.score_seconds + prof.softmax_seconds + prof.value_seconds > 0);
    CHECK(prof.key_fraction_read == 0);  // a decode figure: prefill resets the profile and leaves it 0
    // The exact dense prefill on the raw keys fills its score, softmax and value phases too.
    aqua::attention_profile dense_prof;
    dense_prof.select_seconds = -1;
    aqua::attention_options dopt;
    dopt.profile = &dense_prof;
    dopt.threads = threads;
    aqua::dense_prefill<float>(qv, aqua::make_view(L.k.data(), hkv, n, d),
                               aqua::make_view(L.v.data(), hkv, n, d), aqua::make_view(out.data(), hq, m, d),
                               dopt);
    for (double t : {dense_prof.score_seconds, dense_prof.softmax_seconds, dense_prof.value_seconds}) {
      CHECK(std::isfinite(t));
      CHECK(t >= 0);
    }
    CHECK(dense_prof.select_seconds == 0);
    CHECK(dense_prof.score_seconds + dense_prof.softmax_seconds + dense_prof.value_seconds > 0);
  }
}

// The engine once took ceil(k / tile) tiles, so a narrower last tile (r = d not a multiple of the
// tile width) ranking first left fewer than k dims scored (8 of k = 10 here).
TEST_CASE("tile selection covers k dims even when the narrower last tile ranks first",
          "[aqua][oracle][decode]") {
  // d = 40 with tiles of 16: tiles of 16, 16 and 8 dims. Queries whose energy sits in the last
  // tile rank it first; top_k(10) then needs a second tile to cover 10 dims.
  const index_t d = 40, hkv = 1, g = 2, hq = g * hkv, n = 50;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, false, 0, 1, 3, 0});
  auto in = aqua_test::oracle_inputs(L);
  const aqua_oracle::oracle o(in);
  std::vector<float> q(std::size_t(hq * d));
  aqua_test::fill_normal(q, 17);
  for (index_t h = 0; h < hq; ++h)
    for (index_t c = 32; c < d; ++c) q[std::size_t(h * d + c)] *= 20.0f;
  const auto spec = aqua::selection_spec::top_k(10);
  const auto res = o.decode(q.data(), aqua_oracle::mode::tile, aqua_test::oracle_spec(spec));
  REQUIRE(res.margin >= aqua_oracle::required_margin(d));
  CHECK(res.rows[0].dims.size() == 24);  // the 8-dim last tile and one 16-dim tile
  both_paths([&] { check_decode_against_oracle(L, q, spec, aqua::selection_mode::tile, 1, res); });
}
