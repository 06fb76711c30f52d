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
              aqua::detail::prefill_union_test_ratio() = union_ratio;
              std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN());
              aqua::aqua_options opt;
              opt.mode = mode;
              opt.causal = causal;
              opt.threads = threads;
              aqua::aqua_prefill(qv, L.cache, spec, aqua::make_view(out.data(), hq, m, d), opt);
              aqua_test::bound_report rep;
              aqua_test::compare_rows(rep, out, res, d);
              INFO(rep.summary());
              CHECK(rep.outside == 0);
            }
          aqua::detail::prefill_union_test_ratio() = 0;
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
