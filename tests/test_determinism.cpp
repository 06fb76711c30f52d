// Determinism of the AQUA kernels over the kv_cache (aqua_decode in every selection mode,
// aqua_prefill, dense_decode over the cache): the same inputs and thread count give bitwise
// identical outputs run after run, with a fresh workspace or a reused one; different thread
// counts agree within a rounding bound derived below (prefill: bitwise, by construction).
//
// Why thread counts can differ at all: decode splits a KV head's tokens into segments when the
// threads do not divide the KV heads, and merges the segments' partial softmax results. The
// scores are the same (same chunks, same kernels), only the order of the float sums changes.
//
// The bound (per output element (h, c), first order in u = 2^-24; V_c = max_j |v_jc| over the
// head's tokens, N tokens, K = ceil(N / 16) an upper bound on online-softmax chunks and segments):
// every thread count computes o = (sum_j p^_j v_jc) / L^ where
//   * the numerator is a chain of at most N + 2K + 2 float fma/multiply steps (tokens, chunk
//     rescales, segment merges, the final 1/L): |error| <= (N + 2K + 2) u L V_c;
//   * each weight p^_j = e^(s_j - M) (1 + delta_j) with |delta_j| <= (e_exp + 1 + K + 2 |s_j - M|) u:
//     exp error e_exp (4 ulp allowed; the kernels' exp is ~2 ulp), rounding of the shifted
//     argument s_j - m (relative u of |s_j - m| <= |s_j - M|), and the product of chunk rescale
//     factors e^(m_k - M), each with its own exp error and argument rounding. A perturbed
//     weighted average moves by at most 2 V_c sum_j p_j |delta_j|, and since the softmax's
//     expected gap E_p[M - s] <= ln N (entropy bound), that is <= 2 V_c (e_exp + 1 + K + 2 ln N) u.
// So |o - exact(o given the scores)| <= eps = (N + 4K + 2 e_exp + 4 + 4 ln N) u V_c, and two
// thread counts differ by at most 2 eps. The normaliser is summed in double (negligible error).
// This is a worst-case bound: the measured differences are far below it (see the test output
// with -s), but unlike a picked tolerance it cannot be exceeded by a correct kernel.
#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernel_support.hpp"
#include "test_support.hpp"

using aqua::index_t;

using aqua_test::all_modes;
using aqua_test::bitwise_equal;
using aqua_test::both_paths;
using aqua_test::mode_name;

namespace {

// One layer of random data and a projected cache holding it (tiles of 16 dims).
struct fixture : aqua_test::random_layer {
  fixture(index_t hq_, index_t hkv_, index_t d_, index_t n_, index_t m_queries = 1, unsigned seed = 7)
      : random_layer(hq_, hkv_, d_, n_, {16, true, 0, m_queries, seed, 300}) {}

  // eps of the header comment for every output element [hq, d].
  std::vector<double> bound_per_element() const {
    const double u = std::ldexp(1.0, -24), e_exp = 4;
    const double chunks = double((n + 15) / 16);
    const double factor = (double(n) + 4 * chunks + 2 * e_exp + 4 + 4 * std::log(double(n))) * u;
    std::vector<double> eps(std::size_t(hq * d));
    for (index_t h = 0; h < hq; ++h) {
      const index_t kv = h / (hq / hkv);
      for (index_t c = 0; c < d; ++c) {
        double vmax = 0;
        for (index_t j = 0; j < n; ++j)
          vmax = std::max(vmax, double(std::abs(v[std::size_t((kv * n + j) * d + c)])));
        eps[std::size_t(h * d + c)] = factor * vmax;
      }
    }
    return eps;
  }
};

// A workspace already sized and filled by a call on other shapes, so reuse starts from stale data.
aqua::aqua_workspace dirty_workspace() {
  fixture other(8, 4, 32, 300, 1, 99);
  aqua::aqua_workspace ws;
  std::vector<float> out(std::size_t(8 * 32)), probs(std::size_t(4 * 300));
  aqua::aqua_options opt;
  opt.threads = 3;
  opt.mode = aqua::selection_mode::per_head;
  opt.workspace = &ws;
  aqua::aqua_decode(other.qv(), other.cache, 9, aqua::make_view(out.data(), 8, 32), opt,
                    aqua::make_view(probs.data(), 4, 300));
  return ws;
}

}  // namespace

TEST_CASE("AQUA decode repeats bitwise for a fixed thread count, with fresh and reused workspaces",
          "[determinism][aqua][threads]") {
  const index_t hkv = GENERATE(1, 2);
  const index_t hq = 4 * hkv, d = 64, n = 700;
  CAPTURE(hkv);
  fixture F(hq, hkv, d, n);
  const aqua::selection_spec specs[] = {aqua::selection_spec::top_k(24), aqua::selection_spec::energy(0.9)};
  both_paths([&] {
    for (int threads : {1, 2, 3, 4}) {
      for (auto mode : all_modes) {
        for (const auto& spec : specs) {
          CAPTURE(threads, mode_name(mode), int(spec.type));
          aqua::aqua_options opt;
          opt.mode = mode;
          opt.threads = threads;
          std::vector<float> first(std::size_t(hq * d)), probs_first(std::size_t(hkv * n));
          aqua::aqua_decode(F.qv(), F.cache, spec, aqua::make_view(first.data(), hq, d), opt,
                            aqua::make_view(probs_first.data(), hkv, n));
          aqua::aqua_workspace ws = dirty_workspace();
          for (int run = 0; run < 3; ++run) {
            CAPTURE(run);
            std::vector<float> fresh(first.size(), -1.0f), reused(first.size(), -2.0f);
            std::vector<float> probs_fresh(probs_first.size()), probs_reused(probs_first.size(), 5.0f);
            opt.workspace = nullptr;
            aqua::aqua_decode(F.qv(), F.cache, spec, aqua::make_view(fresh.data(), hq, d), opt,
                              aqua::make_view(probs_fresh.data(), hkv, n));
            opt.workspace = &ws;
            aqua::aqua_decode(F.qv(), F.cache, spec, aqua::make_view(reused.data(), hq, d), opt,
                              aqua::make_view(probs_reused.data(), hkv, n));
            CHECK(bitwise_equal(fresh, first));
            CHECK(bitwise_equal(reused, first));
            CHECK(bitwise_equal(probs_fresh, probs_first));
            CHECK(bitwise_equal(probs_reused, probs_first));
          }
        }
      }
    }
  });
}

TEST_CASE("dense decode over the cache repeats bitwise for a fixed thread count",
          "[determinism][aqua][threads]") {
  const index_t hq = 6, hkv = 3, d = 48, n = 333;
  fixture F(hq, hkv, d, n);
  for (int threads : {1, 2, 3, 4}) {
    CAPTURE(threads);
    aqua::attention_options opt;
    opt.threads = threads;
    std::vector<float> first(std::size_t(hq * d));
    aqua::dense_decode(F.qv(), F.cache, aqua::make_view(first.data(), hq, d), opt);
    aqua::aqua_workspace ws = dirty_workspace();
    for (int run = 0; run < 3; ++run) {
      std::vector<float> fresh(first.size()), reused(first.size());
      aqua::dense_decode(F.qv(), F.cache, aqua::make_view(fresh.data(), hq, d), opt);
      aqua::attention_options with_ws = opt;
      with_ws.workspace = &ws;
      aqua::dense_decode(F.qv(), F.cache, aqua::make_view(reused.data(), hq, d), with_ws);
      CHECK(bitwise_equal(fresh, first));
      CHECK(bitwise_equal(reused, first));
    }
  }
}

TEST_CASE("AQUA decode and dense decode over the cache agree across thread counts within the derived bound",
          "[determinism][aqua][threads]") {
  // hkv = 1 and 3 make most thread counts split tokens into merged segments; n = 5 with up to
  // 16 threads gives more threads than tokens (and than chunks).
  const index_t hkv = GENERATE(1, 3);
  const index_t n = GENERATE(index_t(5), index_t(1000));
  const index_t hq = 2 * hkv, d = 64;
  CAPTURE(hkv, n);
  fixture F(hq, hkv, d, n);
  const std::vector<double> eps = F.bound_per_element();
  double worst_ratio = 0;
  auto compare = [&](const std::vector<float>& a, const std::vector<float>& b) {
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double diff = std::abs(double(a[i]) - double(b[i]));
      worst_ratio = aqua_test::max_or_nan(worst_ratio, diff / (2 * eps[i]));
      if (!(diff <= 2 * eps[i])) {
        CAPTURE(i, a[i], b[i], diff, 2 * eps[i]);
        FAIL("thread counts differ by more than the derived bound");
      }
    }
  };
  both_paths([&] {
    for (auto mode : all_modes) {
      CAPTURE(mode_name(mode));
      aqua::aqua_options opt;
      opt.mode = mode;
      std::vector<float> one(std::size_t(hq * d)), dense_one(one.size());
      aqua::aqua_decode(F.qv(), F.cache, 24, aqua::make_view(one.data(), hq, d), opt);
      aqua::dense_decode(F.qv(), F.cache, aqua::make_view(dense_one.data(), hq, d));
      for (int threads : {2, 3, 4, 7, 16}) {
        CAPTURE(threads);
        std::vector<float> many(one.size()), dense_many(one.size());
        opt.threads = threads;
        aqua::aqua_decode(F.qv(), F.cache, 24, aqua::make_view(many.data(), hq, d), opt);
        compare(many, one);
        aqua::attention_options dopt;
        dopt.threads = threads;
        aqua::dense_decode(F.qv(), F.cache, aqua::make_view(dense_many.data(), hq, d), dopt);
        compare(dense_many, dense_one);
      }
    }
  });
  // Shows how far below the worst case the kernels run (visible with -s).
  INFO("largest |difference| / (2 eps) seen: " << worst_ratio);
  SUCCEED();
}

TEST_CASE("AQUA prefill repeats bitwise and gives bitwise equal results for every thread count",
          "[determinism][aqua][threads]") {
  // Prefill's work items are (query head, block of 64 query rows); nothing inside an item depends
  // on the thread count, so every count gives the same bits, also with more threads than items.
  const index_t hq = 4, hkv = 2, d = 32, n = 150, m = 70;
  fixture F(hq, hkv, d, n, m);
  auto qv = aqua::make_view(static_cast<const float*>(F.q.data()), hq, m, d);
  const bool causal = GENERATE(true, false);
  CAPTURE(causal);
  both_paths([&] {
    for (auto mode : {aqua::selection_mode::per_head, aqua::selection_mode::tile}) {
      for (const auto& spec : {aqua::selection_spec::top_k(12), aqua::selection_spec::energy(0.8)}) {
        CAPTURE(mode_name(mode), int(spec.type));
        aqua::aqua_options opt;
        opt.mode = mode;
        opt.causal = causal;
        std::vector<float> first(std::size_t(hq * m * d));
        aqua::aqua_prefill(qv, F.cache, spec, aqua::make_view(first.data(), hq, m, d), opt);
        aqua::aqua_workspace ws = dirty_workspace();
        for (int threads : {1, 2, 3, 4, 16}) {
          CAPTURE(threads);
          opt.threads = threads;
          for (int run = 0; run < 2; ++run) {
            std::vector<float> fresh(first.size(), -1.0f), reused(first.size(), -2.0f);
            opt.workspace = nullptr;
            aqua::aqua_prefill(qv, F.cache, spec, aqua::make_view(fresh.data(), hq, m, d), opt);
            opt.workspace = &ws;
            aqua::aqua_prefill(qv, F.cache, spec, aqua::make_view(reused.data(), hq, m, d), opt);
            CHECK(bitwise_equal(fresh, first));
            CHECK(bitwise_equal(reused, first));
          }
        }
      }
    }
  });
}
