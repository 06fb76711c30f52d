// AQUA attention over the tiled cache against an independent double oracle on the raw
// (unprojected) keys: k = d is exact in every mode, errors fall as k grows on a decaying spectrum,
// decode agrees with prefill and across thread counts, bad input is rejected.
#include <aqua/attention.hpp>
#include <aqua/quality.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "kernel_support.hpp"
#include "skip_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;

using aqua_test::both_paths;
using aqua_test::mode_name;

namespace {

// Raw data of one layer plus a cache built from it with random orthogonal bases.
struct layer : aqua_test::random_layer {
  layer(index_t hq_, index_t hkv_, index_t d_, index_t n_, index_t tile = 16, bool project = true,
        index_t rank = 0, unsigned seed = 1)
      : random_layer(hq_, hkv_, d_, n_, {tile, project, rank, 1, seed, 100}) {}

  // Exact attention of head h's query row `qrow` against tokens [0, visible), in double.
  std::vector<double> oracle(index_t h, const float* qrow, index_t visible) const {
    const index_t kv = h / (hq / hkv);
    return aqua_test::oracle_row(
        d, visible, 1.0 / std::sqrt(double(d)), [&](index_t c) { return qrow[c]; },
        [&](index_t j, index_t c) { return k[std::size_t((kv * n + j) * d + c)]; },
        [&](index_t j, index_t c) { return v[std::size_t((kv * n + j) * d + c)]; },
        [](index_t) { return 0.0; });
  }
  std::vector<double> oracle_decode() const {
    std::vector<double> ref;
    for (index_t h = 0; h < hq; ++h) {
      auto row = oracle(h, q.data() + h * d, n);
      ref.insert(ref.end(), row.begin(), row.end());
    }
    return ref;
  }
};

double rel_error(const std::vector<float>& out, const std::vector<double>& ref) {
  return aqua_test::normalized_error(
      index_t(ref.size()), [&](index_t i) { return out[std::size_t(i)]; },
      [&](index_t i) { return ref[std::size_t(i)]; });
}

}  // namespace

TEST_CASE("AQUA decode with k = d reproduces exact attention in every selection mode", "[aqua][decode]") {
  const index_t d = GENERATE(40, 64, 128);
  const index_t group = GENERATE(1, 4);
  const index_t n = GENERATE(1, 37, 300);
  const auto mode =
      GENERATE(aqua::selection_mode::per_head, aqua::selection_mode::group, aqua::selection_mode::tile);
  CAPTURE(d, group, n, mode_name(mode));
  layer L(2 * group, 2, d, n);
  const auto ref = L.oracle_decode();
  both_paths([&] {
    std::vector<float> out(std::size_t(L.hq * d));
    aqua::aqua_options opt;
    opt.mode = mode;
    aqua::aqua_decode(L.qv(), L.cache, d, aqua::make_view(out.data(), L.hq, d), opt);
    CHECK(rel_error(out, ref) < 1e-5);
    std::vector<float> dense(out.size());
    aqua::dense_decode(L.qv(), L.cache, aqua::make_view(dense.data(), L.hq, d));
    CHECK(rel_error(dense, ref) < 1e-5);
  });
}

TEST_CASE("AQUA prefill with k = d reproduces exact causal and full attention", "[aqua][prefill]") {
  const index_t d = GENERATE(40, 128);
  const index_t group = GENERATE(1, 4);
  const bool causal = GENERATE(true, false);
  const auto mode = GENERATE(aqua::selection_mode::per_head, aqua::selection_mode::tile);
  const index_t n = 150, m = 70;  // 70 > the 64-row block
  CAPTURE(d, group, causal, mode_name(mode));
  layer L(2 * group, 2, d, n);
  std::vector<float> qp(std::size_t(L.hq * m * d));
  aqua_test::fill_normal(qp, 77);
  std::vector<double> ref;
  for (index_t h = 0; h < L.hq; ++h)
    for (index_t i = 0; i < m; ++i) {
      auto row = L.oracle(h, qp.data() + (h * m + i) * d, causal ? n - m + i + 1 : n);
      ref.insert(ref.end(), row.begin(), row.end());
    }
  both_paths([&] {
    std::vector<float> out(qp.size());
    aqua::aqua_options opt;
    opt.mode = mode;
    opt.causal = causal;
    aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(qp.data()), L.hq, m, d), L.cache,
                       aqua::selection_spec::top_k(d), aqua::make_view(out.data(), L.hq, m, d), opt);
    CHECK(rel_error(out, ref) < 1e-5);
  });
}

TEST_CASE("on a decaying spectrum the AQUA error falls as k grows", "[aqua][quality]") {
  // Queries and keys in projected coordinates with per-dim stddev exp(-i / 16), like calibrated heads.
  const index_t hq = 8, hkv = 2, d = 64, n = 512;
  const auto mode =
      GENERATE(aqua::selection_mode::per_head, aqua::selection_mode::group, aqua::selection_mode::tile);
  CAPTURE(mode_name(mode));
  layer L(hq, hkv, d, n, 16, false);
  for (std::size_t i = 0; i < L.q.size(); ++i) L.q[i] *= std::exp(-float(i % std::size_t(d)) / 16.0f) * 3.0f;
  aqua::kv_cache cache(hkv, d, {16, 0, 0});
  std::vector<float> ks(L.k);
  for (std::size_t i = 0; i < ks.size(); ++i) ks[i] *= std::exp(-float(i % std::size_t(d)) / 16.0f) * 3.0f;
  cache.append(aqua::make_view(static_cast<const float*>(ks.data()), hkv, n, d),
               aqua::make_view(static_cast<const float*>(L.v.data()), hkv, n, d));
  aqua::aqua_options opt;
  opt.mode = mode;
  double previous = 1e300;
  for (index_t k : {4, 8, 16, 32, 48, 64}) {
    const auto qual = aqua::aqua_decode_quality(L.qv(), cache, aqua::selection_spec::top_k(k), opt);
    CAPTURE(k, qual.rel_l2_error, qual.top1_agreement, qual.top10_agreement);
    CHECK(qual.rel_l2_error <= previous * 1.0001 + 1e-7);
    previous = qual.rel_l2_error;
    if (k == d) {
      CHECK(qual.rel_l2_error < 1e-5);
      CHECK(qual.top1_agreement == 1.0);
      CHECK(qual.top10_agreement == 1.0);
    }
    if (k == 4) CHECK(qual.rel_l2_error > 1e-3);
  }
  // The energy rule: tau = 1 keeps everything.
  CHECK(aqua::aqua_decode_quality(L.qv(), cache, aqua::selection_spec::energy(1.0), opt).rel_l2_error < 1e-5);
  CHECK(aqua::aqua_decode_quality(L.qv(), cache, aqua::selection_spec::energy(0.9), opt).rel_l2_error <
        aqua::aqua_decode_quality(L.qv(), cache, aqua::selection_spec::energy(0.5), opt).rel_l2_error);
}

TEST_CASE("selection by fraction equals the same fixed k", "[aqua][decode]") {
  layer L(8, 2, 64, 100);
  std::vector<float> a(std::size_t(8 * 64)), b(a.size());
  aqua::aqua_options opt;
  opt.mode = aqua::selection_mode::per_head;
  aqua::aqua_decode(L.qv(), L.cache, aqua::selection_spec::fraction(0.25), aqua::make_view(a.data(), 8, 64),
                    opt);
  aqua::aqua_decode(L.qv(), L.cache, 16, aqua::make_view(b.data(), 8, 64), opt);
  CHECK(a == b);
}

TEST_CASE("AQUA decode of the last token equals the last row of AQUA prefill", "[aqua]") {
  const index_t hq = 4, hkv = 4, d = 64, n = 90;  // MHA: tile selection per group is per query head
  layer L(hq, hkv, d, n);
  std::vector<float> qp(std::size_t(hq * n * d));
  aqua_test::fill_normal(qp, 55);
  for (auto mode : {aqua::selection_mode::per_head, aqua::selection_mode::tile}) {
    CAPTURE(mode_name(mode));
    aqua::aqua_options opt;
    opt.mode = mode;
    std::vector<float> prefill(qp.size()), decode(std::size_t(hq * d));
    aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(qp.data()), hq, n, d), L.cache,
                       aqua::selection_spec::top_k(16), aqua::make_view(prefill.data(), hq, n, d), opt);
    // With one query head per group, group selection equals per-head selection.
    aqua::matrix_view<const float> q_last(qp.data() + (n - 1) * d, {hq, d}, {n * d, 1});
    aqua::aqua_decode(q_last, L.cache, 16, aqua::make_view(decode.data(), hq, d), opt);
    double worst = 0;
    for (index_t h = 0; h < hq; ++h)
      for (index_t c = 0; c < d; ++c)
        worst = aqua_test::max_or_nan(worst, double(std::abs(decode[std::size_t(h * d + c)] -
                                                             prefill[std::size_t((h * n + n - 1) * d + c)])));
    CHECK(worst < 1e-5);
  }
}

TEST_CASE("the AVX-512 and AVX2 kernels agree bit for bit: decode outputs, token probabilities, prefill",
          "[aqua][decode][prefill][simd]") {
  if (!aqua_test::cpu_has_avx512()) {
    aqua_test::skip_case("this CPU has no AVX-512F: the 512-bit decode kernel cannot run here");
    return;
  }
  // Group sizes 1-5 and 8 cover every head block of the kernel (1-4 heads, 5 = 4 + 1); n = 149
  // ends in a partial block; d = 48 leaves a 16-column value slice after the wide ones.
  const index_t g = GENERATE(1, 2, 3, 4, 5, 8);
  const index_t d = GENERATE(48, 128);
  const index_t hkv = 2, hq = g * hkv, n = 149;
  CAPTURE(g, d);
  layer L(hq, hkv, d, n);
  // Causal prefill of the last m tokens: a key chunk of 8 blocks, then a partial one.
  const index_t m = 140;
  std::vector<float> prefill_q(std::size_t(hq * m * d));
  aqua_test::fill_normal(prefill_q, 77);
  const aqua::selection_spec specs[] = {aqua::selection_spec::top_k(d / 4), aqua::selection_spec::energy(0.9),
                                        aqua::selection_spec::top_k(d)};
  const aqua_test::hook_guard reset;
  for (auto mode : aqua_test::all_modes) {
    for (const auto& spec : specs) {
      CAPTURE(mode_name(mode), int(spec.type), spec.k);
      aqua::aqua_options opt;
      opt.mode = mode;
      std::vector<float> out[2], probs[2], dense[2], prefill[2];
      for (int path : {0, 1}) {
        aqua::set_max_isa(path == 0 ? aqua::isa::avx512 : aqua::isa::avx2);
        out[path].assign(std::size_t(hq * d), 0.0f);
        probs[path].assign(std::size_t(hkv * n), 0.0f);
        dense[path].assign(std::size_t(hq * d), 0.0f);
        prefill[path].assign(prefill_q.size(), 0.0f);
        aqua::aqua_decode(L.qv(), L.cache, spec, aqua::make_view(out[path].data(), hq, d), opt,
                          aqua::make_view(probs[path].data(), hkv, n));
        aqua::dense_decode(L.qv(), L.cache, aqua::make_view(dense[path].data(), hq, d));
        aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(prefill_q.data()), hq, m, d), L.cache,
                           spec, aqua::make_view(prefill[path].data(), hq, m, d), opt);
      }
      aqua::set_max_isa(aqua::isa::avx512);
      CHECK(aqua_test::bitwise_equal(out[0], out[1]));
      CHECK(aqua_test::bitwise_equal(probs[0], probs[1]));
      CHECK(aqua_test::bitwise_equal(dense[0], dense[1]));
      CHECK(aqua_test::bitwise_equal(prefill[0], prefill[1]));
    }
  }
}

TEST_CASE("prefill scores groups of queries over the union of their dims exactly as each query alone",
          "[aqua][prefill]") {
  // Grouping is chosen by how much the union exceeds the queries' own dims; the workspace's
  // prefill_union_override forces it off (ratio 1) and on for every group (ratio 1000). Causal
  // and full, per-dim and tile selection, fixed and energy specs, group sizes 1 and 4 (a group
  // never spans two heads).
  const index_t g = GENERATE(1, 4);
  const index_t hkv = 2, hq = g * hkv, d = 64, n = 150, m = 137;
  CAPTURE(g);
  layer L(hq, hkv, d, n);
  std::vector<float> q(std::size_t(hq * m * d));
  aqua_test::fill_normal(q, 91);
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, m, d);
  both_paths([&] {
    for (auto mode : {aqua::selection_mode::per_head, aqua::selection_mode::tile})
      for (const auto& spec : {aqua::selection_spec::top_k(16), aqua::selection_spec::energy(0.8)})
        for (bool causal : {true, false}) {
          CAPTURE(mode_name(mode), int(spec.type), causal);
          aqua::aqua_options opt;
          opt.mode = mode;
          opt.causal = causal;
          aqua::aqua_workspace ws;
          opt.workspace = &ws;
          index_t& ratio = aqua::detail::workspace_access::scratch(ws).prefill_union_override;
          std::vector<float> alone(q.size()), grouped(q.size(), -1.0f), chosen(q.size(), -2.0f);
          ratio = 1;
          aqua::aqua_prefill(qv, L.cache, spec, aqua::make_view(alone.data(), hq, m, d), opt);
          ratio = 1000;
          aqua::aqua_prefill(qv, L.cache, spec, aqua::make_view(grouped.data(), hq, m, d), opt);
          ratio = 0;
          aqua::aqua_prefill(qv, L.cache, spec, aqua::make_view(chosen.data(), hq, m, d), opt);
          CHECK(aqua_test::bitwise_equal(grouped, alone));
          CHECK(aqua_test::bitwise_equal(chosen, alone));
        }
  });
}

TEST_CASE("thread counts 1, 2 and 3 agree within float rounding, with and without segment merging",
          "[aqua][threads]") {
  const index_t hkv = GENERATE(1, 2, 3);
  const index_t n = 1000, d = 64, hq = hkv * 2;
  CAPTURE(hkv);
  layer L(hq, hkv, d, n);
  const auto ref = L.oracle_decode();
  for (auto mode :
       {aqua::selection_mode::per_head, aqua::selection_mode::group, aqua::selection_mode::tile}) {
    std::vector<float> one(std::size_t(hq * d));
    aqua::aqua_options opt;
    opt.mode = mode;
    aqua::aqua_decode(L.qv(), L.cache, 24, aqua::make_view(one.data(), hq, d), opt);
    for (int threads : {2, 3}) {
      CAPTURE(mode_name(mode), threads);
      std::vector<float> many(one.size()), exact(one.size());
      opt.threads = threads;
      aqua::aqua_decode(L.qv(), L.cache, 24, aqua::make_view(many.data(), hq, d), opt);
      double worst = 0;
      for (std::size_t i = 0; i < one.size(); ++i)
        worst = aqua_test::max_or_nan(worst, double(std::abs(one[i] - many[i])));
      CHECK(worst < 1e-5);
      aqua::attention_options dopt;
      dopt.threads = threads;
      aqua::dense_decode(L.qv(), L.cache, aqua::make_view(exact.data(), hq, d), dopt);
      CHECK(rel_error(exact, ref) < 1e-5);
      opt.threads = 1;
    }
  }
}

TEST_CASE("token probabilities sum over the group's heads and match the oracle at k = d", "[aqua][h2o]") {
  const index_t hq = 8, hkv = 2, d = 32, n = 70;
  layer L(hq, hkv, d, n);
  std::vector<float> out(std::size_t(hq * d)), probs(std::size_t(hkv * n), -1.0f);
  aqua::aqua_options opt;
  opt.threads = 2;
  aqua::aqua_decode(L.qv(), L.cache, d, aqua::make_view(out.data(), hq, d), opt,
                    aqua::make_view(probs.data(), hkv, n));
  for (index_t kv = 0; kv < hkv; ++kv) {
    std::vector<double> expected(static_cast<std::size_t>(n), 0.0);
    for (index_t h = kv * 4; h < kv * 4 + 4; ++h) {
      std::vector<double> logits(static_cast<std::size_t>(n));
      double mx = -1e300, sum = 0;
      for (index_t j = 0; j < n; ++j) {
        double dot = 0;
        for (index_t c = 0; c < d; ++c)
          dot += double(L.q[std::size_t(h * d + c)]) * double(L.k[std::size_t((kv * n + j) * d + c)]);
        logits[std::size_t(j)] = dot / std::sqrt(double(d));
        mx = std::max(mx, logits[std::size_t(j)]);
      }
      for (auto& x : logits) sum += (x = std::exp(x - mx));
      for (index_t j = 0; j < n; ++j) expected[std::size_t(j)] += logits[std::size_t(j)] / sum;
    }
    double total = 0;
    for (index_t j = 0; j < n; ++j) {
      CHECK(probs[std::size_t(kv * n + j)] == Approx(expected[std::size_t(j)]).margin(1e-5));
      total += probs[std::size_t(kv * n + j)];
    }
    CHECK(total == Approx(4.0).epsilon(1e-5));
  }
}

TEST_CASE("a truncated cache gives attention on the first r projected dims", "[aqua][decode]") {
  const index_t hq = 4, hkv = 1, d = 64, n = 50, r = 32;
  layer L(hq, hkv, d, n, 16, false, r);
  std::vector<float> out(std::size_t(hq * d));
  aqua::aqua_decode(L.qv(), L.cache, r, aqua::make_view(out.data(), hq, d));
  std::vector<float> q_cut(L.q);
  for (std::size_t i = 0; i < q_cut.size(); ++i)
    if (index_t(i) % d >= r) q_cut[i] = 0.0f;  // the dropped dims contribute nothing
  std::vector<double> ref;
  for (index_t h = 0; h < hq; ++h) {
    auto row = L.oracle(h, q_cut.data() + h * d, n);
    ref.insert(ref.end(), row.begin(), row.end());
  }
  CHECK(rel_error(out, ref) < 1e-5);
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, r + 1, aqua::make_view(out.data(), hq, d)),
                    Contains("k = 33") && Contains("[1, 32]"));
}

TEST_CASE("AQUA entry points reject bad input with a message naming it", "[aqua][errors]") {
  const index_t d = 16;
  layer L(4, 2, d, 10);
  std::vector<float> out(std::size_t(4 * d));
  auto ov = aqua::make_view(out.data(), 4, d);
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, 0, ov),
                    Contains("aqua::aqua_decode") && Contains("k = 0"));
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, d + 1, ov), Contains("k = 17"));
  auto q3 = aqua::make_view(static_cast<const float*>(L.q.data()), 3, d);
  CHECK_THROWS_WITH(aqua::aqua_decode(q3, L.cache, 4, aqua::make_view(out.data(), 3, d)),
                    Contains("query heads (3)") && Contains("KV heads (2)"));
  auto q_wrong_d = aqua::make_view(static_cast<const float*>(L.q.data()), 4, 8);
  CHECK_THROWS_WITH(aqua::aqua_decode(q_wrong_d, L.cache, 4, aqua::make_view(out.data(), 4, 8)),
                    Contains("head dim 8") && Contains("head dim 16"));
  aqua::kv_cache empty(2, d, {});
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), empty, 4, ov), Contains("cache is empty"));
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, 4, aqua::make_view(out.data(), 2, d)),
                    Contains("out has shape [2, 16]"));
  std::vector<float> probs(5);
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, 4, ov, {}, aqua::make_view(probs.data(), 1, 5)),
                    Contains("token_probs has shape [1, 5]"));
  aqua::aqua_options opt;
  opt.threads = 0;
  CHECK_THROWS_WITH(aqua::aqua_decode(L.qv(), L.cache, 4, ov, opt), Contains("threads must be at least 1"));
  // A NaN in a query is rejected (never silently propagated).
  std::vector<float> qnan(L.q);
  qnan[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(
      aqua::aqua_decode(aqua::make_view(static_cast<const float*>(qnan.data()), 4, d), L.cache, 4, ov),
      Contains("q holds a non-finite value"));
  std::vector<float> qp(std::size_t(4 * 11 * d)), op(qp.size());
  CHECK_THROWS_WITH(
      aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(qp.data()), 4, 11, d), L.cache,
                         aqua::selection_spec::top_k(4), aqua::make_view(op.data(), 4, 11, d)),
      Contains("M = 11") && Contains("N = 10"));
  CHECK_THROWS_WITH(
      aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(qp.data()), 4, 2, d), L.cache,
                         aqua::selection_spec::top_k(0), aqua::make_view(op.data(), 4, 2, d)),
      Contains("aqua::aqua_prefill") && Contains("k = 0"));
}
