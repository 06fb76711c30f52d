// Selection: select_top over d = 64 / 128 / 256 projected query magnitudes, by fixed k (d/4),
// fraction (1/4 of d) and energy threshold (tau = 0.9), on queries with a decaying spectrum (the
// shape calibrated heads give). One iteration selects for one query head. BM_select_ranked_* call
// the ranking the AQUA engine uses directly (float weights = |q~|, float energies = q~^2, int32
// indices), without select_top's checks and magnitude pass.
// Counters: selections/s (query heads per second), bytes/s (the d input floats read), FLOP/s (|x|
// and x^2 per dim: 2 per dim; the ranking's comparisons are not FLOPs and are not counted).
#include <aqua/select.hpp>

#include "aqua_tools/synthetic_data.hpp"

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

using aqua::index_t;

// Many different queries, cycled, so the branch predictor cannot learn one ranking.
constexpr index_t query_count = 256;

void run_selection(benchmark::State& state, const aqua::selection_spec& spec) {
  const index_t d = state.range(0);
  const auto q = aqua_examples::spectrum_rows(query_count, d, 32.0, 7);
  std::vector<std::int32_t> idx(static_cast<std::size_t>(d));
  index_t i = 0, kept = 0;
  for (auto _ : state) {
    const auto count = aqua::select_top<float>(aqua::make_view(q.data() + (i % query_count) * d, d), spec,
                                               aqua::make_view(idx.data(), d));
    kept += count;
    benchmark::DoNotOptimize(idx.data());
    ++i;
  }
  const double iters = double(state.iterations());
  state.counters["selections/s"] = benchmark::Counter(iters, benchmark::Counter::kIsRate);
  state.counters["bytes/s"] =
      benchmark::Counter(iters * double(d) * sizeof(float), benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] = benchmark::Counter(iters * 2.0 * double(d), benchmark::Counter::kIsRate);
  state.counters["kept"] = iters > 0 ? double(kept) / iters : 0.0;
}

/// Arg: d. Fixed k = d / 4.
void BM_select_top_k(benchmark::State& state) {
  run_selection(state, aqua::selection_spec::top_k(state.range(0) / 4));
}
BENCHMARK(BM_select_top_k)->Arg(64)->Arg(128)->Arg(256);

/// Arg: d. Fraction 1/4 of d.
void BM_select_fraction(benchmark::State& state) {
  run_selection(state, aqua::selection_spec::fraction(0.25));
}
BENCHMARK(BM_select_fraction)->Arg(64)->Arg(128)->Arg(256);

/// Arg: d. Energy threshold tau = 0.9 (the smallest set holding 90 % of |q~|^2).
void BM_select_energy(benchmark::State& state) {
  run_selection(state, aqua::selection_spec::energy(0.9));
}
BENCHMARK(BM_select_energy)->Arg(64)->Arg(128)->Arg(256);

}  // namespace
