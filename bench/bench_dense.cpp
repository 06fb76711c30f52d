// Dense exact attention (the reference path) at decode and prefill shapes.
#include <aqua/attention.hpp>

#include <benchmark/benchmark.h>

#include <random>
#include <vector>

namespace {

std::vector<float> random_vector(std::size_t n, unsigned seed) {
  std::vector<float> v(n);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  for (auto& x : v) x = normal(rng);
  return v;
}

void BM_dense_decode_reference(benchmark::State& state) {
  const aqua::index_t n = state.range(0), hq = 32, hkv = 8, d = 128;
  auto q = random_vector(std::size_t(hq * d), 1), k = random_vector(std::size_t(hkv * n * d), 2),
       v = random_vector(std::size_t(hkv * n * d), 3), out = std::vector<float>(std::size_t(hq * d));
  aqua::attention_options opt;
  opt.threads = static_cast<int>(state.range(1));
  for (auto _ : state) {
    aqua::dense_decode<float>(aqua::make_view(q.data(), hq, d), aqua::make_view(k.data(), hkv, n, d),
                              aqua::make_view(v.data(), hkv, n, d), aqua::make_view(out.data(), hq, d), opt);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double bytes = 2.0 * double(hkv * n * d) * sizeof(float);
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  // Scores and values: 2 multiply-adds per key element per query head.
  state.counters["FLOP/s"] =
      benchmark::Counter(4.0 * double(hq * n * d), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_dense_decode_reference)
    ->ArgsProduct({{1024, 4096, 32768}, {1, 2}})
    ->Unit(benchmark::kMillisecond);

}  // namespace
