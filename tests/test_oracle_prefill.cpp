// AQUA prefill below k = d held against the independent double-precision oracle (aqua_oracle.hpp):
// selection in every mode (per query; group mode one selection per KV group and query position), causal and
// full, GQA group sizes 1, 2, 4, 5, two 64-row query blocks, every kernel path, query grouping over
// the union of dims forced on and chosen, 1 and 2 threads. Rows whose selection lies within float
// error of a tie are left out (at most one in five).
#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

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

// Runs aqua_prefill on q [hq, m, d] and holds it against the oracle's rows; rows within float error
// of a selection tie are left out, at most one in five.
void check_prefill_against_oracle(const aqua_test::random_layer& L, const std::vector<float>& q, index_t m,
                                  const aqua::selection_spec& spec, aqua::selection_mode mode, int threads,
                                  const aqua_oracle::result& res) {
  const index_t hq = L.hq, d = L.d;
  std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
  aqua::aqua_options opt;
  opt.mode = mode;
  opt.threads = threads;
  aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q.data()), hq, m, d), L.cache, spec,
                     aqua::make_view(out.data(), hq, m, d), opt);
  index_t ambiguous = 0;
  aqua_test::bound_report rep;
  aqua_test::compare_rows(rep, out, res, d, &ambiguous);
  INFO(rep.summary());
  CHECK(rep.outside == 0);
  CHECK(ambiguous <= hq * m / 5);
}

}  // namespace

TEST_CASE(
    "AQUA prefill below k = d agrees with the independent oracle, causal and full, on every kernel path",
    "[aqua][oracle][prefill]") {
  const index_t d = GENERATE(40, 64);
  const index_t g = GENERATE(1, 2, 4, 5);
  const index_t hkv = 1, hq = g * hkv, n = 100, m = 70;  // 70 queries: a full 64-row block and 6
  CAPTURE(d, g);
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, unsigned(d * 10 + g), 800});
  auto in = aqua_test::oracle_inputs(L);
  std::vector<float> q(std::size_t(hq * m * d));
  aqua_test::fill_normal(q, unsigned(900 + g));
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, m, d);
  using top = aqua::selection_spec;
  for (bool causal : {true, false}) {
    in.causal = causal;
    const aqua_oracle::oracle o(in);
    for (auto mode : aqua_test::all_modes)
      for (const auto& spec :
           {top::top_k(1), top::top_k(d / 4), top::top_k(d / 2 + 3), top::top_k(d - 1), top::energy(0.8)}) {
        CAPTURE(causal, mode_name(mode), spec_name(spec));
        const auto res = o.prefill(q.data(), m, aqua_test::oracle_mode(mode), aqua_test::oracle_spec(spec));
        index_t ambiguous = 0;
        for (const auto& row : res.rows) ambiguous += row.margin < aqua_oracle::required_margin(d) ? 1 : 0;
        CAPTURE(ambiguous);
        // The tie margin is the worst-case float bound (aqua_oracle::required_margin), so energy
        // thresholds near it leave out a tenth or so of the rows; four in five must be compared.
        // Group mode shares one selection, and its margin, per KV group and position, so rows drop
        // out g at a time: three in four there.
        CHECK(ambiguous <= hq * m / (mode == aqua::selection_mode::group ? 4 : 5));
        both_paths([&] {
          for (index_t union_ratio : {0, 1000})  // 0: the library's choice; 1000: every group of 4 queries
            for (int threads : {1, 2}) {
              CAPTURE(union_ratio, threads);
              aqua::aqua_workspace ws;
              aqua::detail::workspace_access::scratch(ws).prefill_union_override = union_ratio;
              std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
              aqua::aqua_options opt;
              opt.mode = mode;
              opt.causal = causal;
              opt.threads = threads;
              opt.workspace = &ws;
              aqua::aqua_prefill(qv, L.cache, spec, aqua::make_view(out.data(), hq, m, d), opt);
              aqua_test::bound_report rep;
              aqua_test::compare_rows(rep, out, res, d);
              INFO(rep.summary());
              CHECK(rep.outside == 0);
            }
        });
      }
  }
}

TEST_CASE("AQUA prefill of a truncated cache agrees with the oracle over the r stored dims",
          "[aqua][oracle][prefill][truncation]") {
  const index_t r = GENERATE(16, 48);
  const index_t d = 64, hkv = 2, hq = 4, n = 90, m = 40;
  CAPTURE(r);
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, r, 1, unsigned(r), 810});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * m * d));
  aqua_test::fill_normal(q, 8111);  // not a basis seed (810 + h)
  using top = aqua::selection_spec;
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {top::top_k(1), top::top_k(r / 4), top::top_k(r / 2 + 3), top::top_k(r - 1)}) {
      CAPTURE(mode_name(mode), spec_name(spec));
      const auto res = o.prefill(q.data(), m, aqua_test::oracle_mode(mode), aqua_test::oracle_spec(spec));
      both_paths([&] { check_prefill_against_oracle(L, q, m, spec, mode, 1, res); });
    }
}

TEST_CASE("AQUA prefill below k = d over bf16 and f16 storage agrees with the oracle on the rounded inputs",
          "[aqua][oracle][prefill][storage]") {
  // As in decode: the oracle rounds with its own double rounding, signed permutation bases keep
  // the cache's float projection exact. Prefill widens 16-bit values once per head.
  using st = aqua::storage_type;
  using pair = aqua_test::storage_pair;
  const auto types = GENERATE(pair{st::bf16, st::bf16}, pair{st::f16, st::f16}, pair{st::bf16, st::f16},
                              pair{st::f32, st::bf16});
  const index_t d = 64, g = GENERATE(1, 4), hkv = 2, hq = g * hkv, n = 100, m = 70;
  CAPTURE(aqua::storage_name(types.key), aqua::storage_name(types.value), g);
  const aqua_test::random_layer L(hq, hkv, d, n,
                                  aqua_test::with_storage({16, true, 0, 1, unsigned(500 + g), 820}, types));
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * m * d));
  aqua_test::fill_normal(q, 8221);
  using top = aqua::selection_spec;
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {top::top_k(1), top::top_k(d / 4), top::top_k(d / 2 + 3)}) {
      CAPTURE(mode_name(mode), spec_name(spec));
      const auto res = o.prefill(q.data(), m, aqua_test::oracle_mode(mode), aqua_test::oracle_spec(spec));
      both_paths([&] {
        for (int threads : {1, 2}) {
          CAPTURE(threads);
          check_prefill_against_oracle(L, q, m, spec, mode, threads, res);
        }
      });
    }
}

TEST_CASE("prefill token probabilities are the oracle's, summed over the group and the last queries",
          "[aqua][oracle][prefill][h2o][threads]") {
  // What H2O accumulates from a prompt: per KV head, each token's probability summed over the
  // group's query heads and over the last W queries (W = 0: all M). KV heads whose counted rows
  // lie within float error of a selection tie are left out (their selection may differ).
  const index_t d = 32, hkv = 2, g = 3, hq = g * hkv, n = 75, m = 40;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 31, 830});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  std::vector<float> q(std::size_t(hq * m * d)), out(q.size()), probs(std::size_t(hkv * n));
  aqua_test::fill_normal(q, 8331);
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, m, d);
  index_t compared = 0;
  for (auto mode : aqua_test::all_modes)
    for (const auto& spec : {aqua::selection_spec::top_k(d), aqua::selection_spec::top_k(d / 4)})
      for (index_t last : {index_t(0), index_t(1), index_t(7)})
        for (int threads : {1, 2}) {
          CAPTURE(mode_name(mode), spec_name(spec), last, threads);
          const auto res = o.prefill(q.data(), m, aqua_test::oracle_mode(mode), aqua_test::oracle_spec(spec));
          aqua::aqua_options opt;
          opt.mode = mode;
          opt.threads = threads;
          std::fill(probs.begin(), probs.end(), -1.0f);
          aqua::aqua_prefill(qv, L.cache, spec, aqua::make_view(out.data(), hq, m, d), opt,
                             aqua::make_view(probs.data(), hkv, n), last);
          const index_t first = last == 0 ? 0 : m - last;
          for (index_t kv = 0; kv < hkv; ++kv) {
            std::vector<double> want(std::size_t(n), 0.0), tol(std::size_t(n), 0.0);
            bool clear = true;
            for (index_t h = kv * g; h < (kv + 1) * g; ++h)
              for (index_t i = first; i < m; ++i) {
                const auto& row = res.rows[std::size_t(h * m + i)];
                clear = clear && row.margin >= aqua_oracle::required_margin(d);
                for (std::size_t j = 0; j < row.probs.size(); ++j) {
                  want[j] += row.probs[j];
                  tol[j] += row.prob_tol[j];
                }
              }
            if (!clear) continue;
            ++compared;
            for (index_t j = 0; j < n; ++j) {
              CAPTURE(kv, j);
              // The float sum of up to g * M terms adds its own rounding (in double: negligible).
              CHECK(std::abs(double(probs[std::size_t(kv * n + j)]) - want[std::size_t(j)]) <=
                    tol[std::size_t(j)] + 1e-6 * want[std::size_t(j)] + 1e-30);
            }
          }
        }
  CHECK(compared >= 24);  // of the 72 (mode, spec, window, threads, KV head) cases; most are clear of ties
  std::vector<float> wrong(std::size_t(hkv * (n - 1)));
  CHECK_THROWS_WITH(
      aqua::aqua_prefill(qv, L.cache, aqua::selection_spec::top_k(8), aqua::make_view(out.data(), hq, m, d),
                         {}, aqua::make_view(wrong.data(), hkv, n - 1)),
      Catch::Matchers::Contains("token_probs has shape [2, 74] but must be [Hkv, N] = [2, 75]"));
  CHECK_THROWS_WITH(
      aqua::aqua_prefill(qv, L.cache, aqua::selection_spec::top_k(8), aqua::make_view(out.data(), hq, m, d),
                         {}, aqua::make_view(probs.data(), hkv, n), m + 1),
      Catch::Matchers::Contains("last_queries = 41 must lie in [0, M = 40]"));
}
