// aqua_decode_quality (quality.hpp): its exact side is exact attention written out in double, not
// the decode engine, and its metrics (relative L2 error, top-1 and top-10 agreement of the most
// attended tokens) give the known answers of hand-built cases and the independent oracle's error
// on random ones.
#include <aqua/quality.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "aqua_oracle.hpp"
#include "kernel_support.hpp"
#include "oracle_support.hpp"
#include "test_support.hpp"

using aqua::index_t;

namespace {

// An identity cache of hkv = 1 KV head holding the given keys and values [n, d].
aqua::kv_cache quality_cache(index_t d, const std::vector<float>& k, const std::vector<float>& v) {
  aqua::kv_cache cache(1, d, {d, 0, 0});
  const index_t n = index_t(k.size()) / d;
  cache.append(aqua::make_view(k.data(), 1, n, d), aqua::make_view(v.data(), 1, n, d));
  return cache;
}

aqua::aqua_options quality_options() {
  aqua::aqua_options opt;
  opt.mode = aqua::selection_mode::per_head;
  opt.scale = 1.0;
  return opt;
}

}  // namespace

TEST_CASE("quality of a selection that turns a two-way tie into one token: relative error 1", "[quality]") {
  // q = (100, 1), k0 = (1, 100), k1 = (-1, 300): exact logits 200 and 200 (p = 1/2 each, out =
  // (v0 + v1) / 2 = (1/2, 1/2)); k = 1 keeps dim 0: logits 100 and -100, p1 = e^-200 (0 in float),
  // out = v0 = (1, 0). ||(1/2, -1/2)|| / ||(1/2, 1/2)|| = 1. Both rank token 0 first (a tie goes
  // to the lower index), and with N = 2 the top-10 sets are both {0, 1}.
  const std::vector<float> q = {100, 1}, k = {1, 100, -1, 300}, v = {1, 0, 0, 1};
  const auto cache = quality_cache(2, k, v);
  const auto qv = aqua::make_view(q.data(), 1, 2);
  const auto one = aqua::aqua_decode_quality(qv, cache, aqua::selection_spec::top_k(1), quality_options());
  CHECK(one.rel_l2_error == Approx(1.0).epsilon(1e-12));
  CHECK(one.top1_agreement == 1.0);
  CHECK(one.top10_agreement == 1.0);
  const auto all = aqua::aqua_decode_quality(qv, cache, aqua::selection_spec::top_k(2), quality_options());
  CHECK(all.rel_l2_error == 0.0);  // both sides compute (1/2, 1/2) exactly
  CHECK(all.top1_agreement == 1.0);
  CHECK(all.top10_agreement == 1.0);
}

TEST_CASE("quality's top-1 and top-10 agreement on hand-built rankings: 1/2 and 9/10", "[quality]") {
  // Keys k_j = (j, b_j), b_j = 0 except b_10 = b_11 = -100; two query heads, k = 1 per head.
  // Head 0, q = (2, 1), keeps dim 0: exact logits 2j + b_j rank 9, 8, ..., 0 first (tokens 10, 11
  // fall to -80, -78); AQUA's 2j rank 11, 10, ..., 2: top-1 differs (9 vs 11), top-10 shares
  // {2..9}: 8 of 10.
  // Head 1, q = (0, 1), keeps dim 1: both logits are b_j, all 0 for j < 10: ties to the lower
  // index, top-1 0 on both sides, top-10 {0..9} on both.
  // Means: top-1 (0 + 1) / 2, top-10 (0.8 + 1) / 2.
  const index_t d = 2, n = 12;
  std::vector<float> k, v;
  for (index_t j = 0; j < n; ++j) {
    k.push_back(float(j));
    k.push_back(j >= 10 ? -100.0f : 0.0f);
    v.push_back(float(j));
    v.push_back(1.0f);
  }
  const auto cache = quality_cache(d, k, v);
  const std::vector<float> q = {2, 1, 0, 1};
  const auto qual = aqua::aqua_decode_quality(aqua::make_view(q.data(), 2, d), cache,
                                              aqua::selection_spec::top_k(1), quality_options());
  CHECK(qual.top1_agreement == 0.5);
  CHECK(qual.top10_agreement == Approx(0.9).epsilon(1e-15));
  // The relative error against the oracle's: the same two outputs in double (AQUA's float output
  // differs from the oracle's by at most its bound).
  aqua_oracle::layer_inputs in;
  in.hq = 2;
  in.hkv = 1;
  in.d = d;
  in.n = n;
  in.k = k.data();
  in.v = v.data();
  in.tile = d;
  in.scale = 1.0;
  const aqua_oracle::oracle o(in);
  const auto approx = o.decode(q.data(), aqua_oracle::mode::per_head, aqua_oracle::spec::top_k(1));
  const auto exact = o.decode(q.data(), aqua_oracle::mode::per_head, aqua_oracle::spec::top_k(2));
  double diff = 0, ref = 0, tol = 0;
  for (std::size_t h = 0; h < 2; ++h)
    for (std::size_t c = 0; c < 2; ++c) {
      diff += std::pow(approx.rows[h].out[c] - exact.rows[h].out[c], 2);
      ref += std::pow(exact.rows[h].out[c], 2);
      tol += std::pow(approx.rows[h].tol[c], 2);
    }
  CHECK(std::abs(qual.rel_l2_error - std::sqrt(diff / ref)) <= std::sqrt(tol / ref) + 1e-12);
  CHECK(qual.rel_l2_error > 0.1);
}

TEST_CASE("quality's relative error is the oracle's error of the selection against exact attention",
          "[quality][oracle]") {
  // Random projected layers: rel_l2_error = ||aqua - exact|| / ||exact||, where AQUA's output lies
  // within the oracle's bound of the oracle's approximate output and quality's exact side is
  // double: the reported error is within ||bound|| / ||exact|| of the oracle's. A quality function
  // whose exact side used the same wrong selection as the engine would report 0 here.
  const index_t hq = 8, hkv = 2, d = 64, n = 300;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 3, 900});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * d));
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {aqua::selection_spec::top_k(4), aqua::selection_spec::top_k(19),
                             aqua::selection_spec::energy(0.8)}) {
      CAPTURE(aqua_test::mode_name(mode), aqua_test::spec_name(spec));
      // Query seeds differ from the basis seeds (900 + h): a query drawn from a basis's seed is a
      // column of the matrix whose QR gave the basis, so its energy sits in the leading dims.
      const auto approx = aqua_test::clear_decode_queries(o, q, d, 9001, mode, spec);
      const auto exact = o.decode(q.data(), aqua_oracle::mode::group, aqua_oracle::spec::top_k(d));
      double diff = 0, ref = 0, tol = 0;
      for (std::size_t h = 0; h < std::size_t(hq); ++h)
        for (std::size_t c = 0; c < std::size_t(d); ++c) {
          diff += std::pow(approx.rows[h].out[c] - exact.rows[h].out[c], 2);
          ref += std::pow(exact.rows[h].out[c], 2);
          tol += std::pow(approx.rows[h].tol[c] + exact.rows[h].tol[c], 2);
        }
      aqua::aqua_options opt;
      opt.mode = mode;
      const auto qual = aqua::aqua_decode_quality(aqua::make_view(q.data(), hq, d), L.cache, spec, opt);
      CAPTURE(qual.rel_l2_error, std::sqrt(diff / ref));
      CHECK(std::abs(qual.rel_l2_error - std::sqrt(diff / ref)) <= std::sqrt(tol / ref));
      // Where the selection drops dims, the error stands out of the bound (a quality whose exact
      // side shared the selection would report about 0). The bound is the oracle's worst case,
      // relative to sum_j p_j |v_j|, which on near-uniform attention is far above ||out||.
      bool drops = false;
      for (const auto& row : approx.rows) drops = drops || index_t(row.dims.size()) < d;
      if (drops) CHECK(qual.rel_l2_error > 2 * std::sqrt(tol / ref));
      CHECK(qual.top1_agreement >= 0);
      CHECK(qual.top1_agreement <= 1);
      CHECK(qual.top10_agreement >= 0);
      CHECK(qual.top10_agreement <= 1);
    }
  // k = d: exact on both sides.
  std::vector<float> q_all(std::size_t(hq * d));
  aqua_test::fill_normal(q_all, 5);
  const auto qual = aqua::aqua_decode_quality(aqua::make_view(q_all.data(), hq, d), L.cache,
                                              aqua::selection_spec::top_k(d));
  CHECK(qual.rel_l2_error < 1e-5);
  CHECK(qual.top1_agreement == 1.0);
  CHECK(qual.top10_agreement == 1.0);
}
