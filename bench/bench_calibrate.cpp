// Calibration: accumulation throughput (vectors per second into X^T X) and finalize time per head.
// Targets (issue 3): >= 1e6 vectors/s per core at d = 128; finalize <= 5 ms per head.
#include <aqua/calibrate.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <vector>

namespace {

std::vector<float> random_rows(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  for (auto& x : v) x = normal(rng);
  return v;
}

/// Args: d, rows per add call, SIMD kernel allowed (1) or portable Eigen kernel only (0).
void BM_calibrate_accumulate(benchmark::State& state) {
  const aqua::index_t d = state.range(0), rows = state.range(1);
  const aqua::isa previous = aqua::set_max_isa(state.range(2) != 0 ? aqua::isa::avx512 : aqua::isa::portable);
  aqua::calibrator cal(1, 1, 1, d, {});
  const auto x = random_rows(std::size_t(rows * d), 1);
  const auto view = aqua::make_view(x.data(), rows, d);
  for (auto _ : state) {
    cal.add_queries(0, 0, view);
    benchmark::ClobberMemory();
  }
  state.counters["vectors/s"] =
      benchmark::Counter(double(rows), benchmark::Counter::kIsIterationInvariantRate);
  // X^T X += x^T x per row: d^2 multiply-adds (the full square; the kernel may use the symmetry).
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * double(rows) * double(d) * double(d),
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] =
      benchmark::Counter(double(rows * d) * sizeof(float), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(aqua::active_isa() >= aqua::isa::avx2 ? "avx2+fma" : "portable");
  aqua::set_max_isa(previous);
}
BENCHMARK(BM_calibrate_accumulate)
    ->ArgsProduct({{64, 128}, {256, 4096}, {1, 0}})
    ->Unit(benchmark::kMicrosecond);

/// A whole layer's queries at once: [Hq = 32, rows, 128] into 8 KV heads (GQA group of 4).
void BM_calibrate_accumulate_layer(benchmark::State& state) {
  const aqua::index_t hq = 32, hkv = 8, d = 128, rows = state.range(0);
  aqua::calibrator cal(1, hq, hkv, d);
  const auto q = random_rows(std::size_t(hq * rows * d), 2);
  for (auto _ : state) {
    cal.add_queries(0, aqua::make_view(q.data(), hq, rows, d));
    benchmark::ClobberMemory();
  }
  state.counters["vectors/s"] =
      benchmark::Counter(double(hq * rows), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * double(hq * rows) * double(d) * double(d),
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] = benchmark::Counter(double(hq * rows * d) * sizeof(float),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_calibrate_accumulate_layer)->Arg(512)->Unit(benchmark::kMillisecond);

/// Eigendecomposition, sort, sign fix and orthogonality check of one head.
void BM_calibrate_finalize_head(benchmark::State& state) {
  const aqua::index_t d = state.range(0), rows = 8 * d;
  aqua::calibrator cal(1, 1, 1, d);
  auto x = random_rows(std::size_t(rows * d), 3);
  // A decaying spectrum, like real query activations.
  for (aqua::index_t r = 0; r < rows; ++r)
    for (aqua::index_t c = 0; c < d; ++c) x[std::size_t(r * d + c)] *= float(1.0 / (1.0 + 0.1 * double(c)));
  cal.add_queries(0, 0, aqua::make_view(x.data(), rows, d));
  for (auto _ : state) {
    auto p = cal.finalize_head(0, 0);
    benchmark::DoNotOptimize(p.basis().data());
  }
}
BENCHMARK(BM_calibrate_finalize_head)->Arg(64)->Arg(128)->Unit(benchmark::kMillisecond);

/// Retention analysis of one layer: 8 query heads, 2 KV heads, d = 128, 256 queries x 256 keys.
void BM_retention_layer(benchmark::State& state) {
  const aqua::index_t hq = 8, hkv = 2, d = 128, rows = 256;
  const auto set = aqua::projection_set::random_orthogonal(1, hkv, d, hq / hkv, 1);
  const auto q = random_rows(std::size_t(hq * rows * d), 4), k = random_rows(std::size_t(hkv * rows * d), 5);
  for (auto _ : state) {
    aqua::retention_evaluator ev(set);
    ev.add_layer(0, aqua::make_view(q.data(), hq, rows, d), aqua::make_view(k.data(), hkv, rows, d));
    benchmark::DoNotOptimize(ev.overall().topk.data());
  }
  state.counters["queries/s"] =
      benchmark::Counter(double(hq * rows), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_retention_layer)->Unit(benchmark::kMillisecond);

}  // namespace
