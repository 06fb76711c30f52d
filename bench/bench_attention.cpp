// AQUA vs dense attention over the tiled cache (decode) and AQUA vs Eigen-GEMM dense prefill, as
// Google Benchmark cases. For side-by-side ratios on a shared machine use bench/aqua_compare.
#include <aqua/attention.hpp>
#include <aqua/cost_model.hpp>
#include <aqua/kv_cache.hpp>

#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

namespace {

using aqua::index_t;

// Keys in projected coordinates with a decaying spectrum (stddev exp(-i / 32)), like calibrated heads.
std::vector<float> spectrum(index_t rows, index_t d, unsigned seed) {
  std::vector<float> x(static_cast<std::size_t>(rows * d));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  for (index_t r = 0; r < rows; ++r)
    for (index_t i = 0; i < d; ++i) x[std::size_t(r * d + i)] = nd(rng) * std::exp(-float(i) / 32.0f);
  return x;
}

struct decode_fixture {
  index_t hq = 32, hkv = 8, d = 128, n;
  aqua::kv_cache cache;
  std::vector<float> q, out;
  explicit decode_fixture(index_t n_)
      : n(n_), cache(8, 128, {32, 0, n_}), q(spectrum(32, 128, 3)), out(32 * 128) {
    for (index_t t0 = 0; t0 < n; t0 += 4096) {
      const index_t cnt = std::min<index_t>(4096, n - t0);
      auto k = spectrum(hkv * cnt, d, unsigned(10 + t0)), v = spectrum(hkv * cnt, d, unsigned(20 + t0));
      cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, cnt, d),
                   aqua::make_view(static_cast<const float*>(v.data()), hkv, cnt, d));
    }
  }
};

decode_fixture& fixture(index_t n) {
  static std::vector<std::unique_ptr<decode_fixture>> all;
  for (auto& f : all)
    if (f->n == n) return *f;
  all.push_back(std::make_unique<decode_fixture>(n));
  return *all.back();
}

// FLOP/s are the cost model's FLOPs (aqua/cost_model.hpp) per second; tokens/s are decode steps
// (one new token through one layer) per second.
void set_counters(benchmark::State& state, const decode_fixture& f, double key_fraction, index_t k = 0) {
  const double bytes = double(f.cache.key_bytes()) * key_fraction + double(f.cache.value_bytes());
  state.counters["bytes/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate);
  aqua::cost_config c;
  c.d = f.d;
  c.k = k == 0 ? f.d : k;
  c.hq = f.hq;
  c.hkv = f.hkv;
  const double flops = k == 0 ? aqua::dense_decode_cost(c, double(f.n)).flops()
                              : aqua::aqua_decode_cost(c, double(f.n)).flops();
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_dense_decode_cache(benchmark::State& state) {
  auto& f = fixture(state.range(0));
  aqua::attention_options opt;
  opt.threads = static_cast<int>(state.range(1));
  aqua::aqua_workspace ws;
  opt.workspace = &ws;
  for (auto _ : state) {
    aqua::dense_decode(aqua::make_view(static_cast<const float*>(f.q.data()), f.hq, f.d), f.cache,
                       aqua::make_view(f.out.data(), f.hq, f.d), opt);
    benchmark::ClobberMemory();
  }
  set_counters(state, f, 1.0);
}
BENCHMARK(BM_dense_decode_cache)->ArgsProduct({{4096, 32768}, {1, 2}})->Unit(benchmark::kMillisecond);

// Args: n, k, mode (0 per-head, 1 group, 2 tile), threads.
void BM_aqua_decode(benchmark::State& state) {
  auto& f = fixture(state.range(0));
  aqua::aqua_options opt;
  opt.mode = static_cast<aqua::selection_mode>(state.range(2));
  opt.threads = static_cast<int>(state.range(3));
  aqua::aqua_workspace ws;
  opt.workspace = &ws;
  aqua::attention_profile prof;
  for (auto _ : state) {
    aqua::aqua_decode(aqua::make_view(static_cast<const float*>(f.q.data()), f.hq, f.d), f.cache,
                      state.range(1), aqua::make_view(f.out.data(), f.hq, f.d), opt);
    benchmark::ClobberMemory();
  }
  opt.profile = &prof;
  aqua::aqua_decode(aqua::make_view(static_cast<const float*>(f.q.data()), f.hq, f.d), f.cache,
                    state.range(1), aqua::make_view(f.out.data(), f.hq, f.d), opt);
  set_counters(state, f, prof.key_fraction_read, state.range(1));
  state.counters["key_fraction"] = prof.key_fraction_read;
}
BENCHMARK(BM_aqua_decode)
    ->ArgsProduct({{32768}, {32, 64, 96}, {0, 1, 2}, {1}})
    ->Unit(benchmark::kMillisecond);

// Causal prefill M = N; Hq = 8, Hkv = 2 (a quarter of a Llama-3.1-8B layer, to keep runs short).
void BM_prefill(benchmark::State& state) {
  const index_t n = state.range(0), k = state.range(1), hq = 8, hkv = 2, d = 128;
  const bool dense = k == 0;
  auto keys = spectrum(hkv * n, d, 31), values = spectrum(hkv * n, d, 32), q = spectrum(hq * n, d, 33);
  std::vector<float> out(q.size());
  aqua::kv_cache cache(hkv, d, {32, 0, n});
  auto kv = aqua::make_view(static_cast<const float*>(keys.data()), hkv, n, d);
  auto vv = aqua::make_view(static_cast<const float*>(values.data()), hkv, n, d);
  cache.append(kv, vv);
  auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, n, d);
  aqua::aqua_options opt;
  opt.mode = static_cast<aqua::selection_mode>(state.range(2));
  for (auto _ : state) {
    if (dense)
      aqua::dense_prefill<float>(qv, kv, vv, aqua::make_view(out.data(), hq, n, d));
    else
      aqua::aqua_prefill(qv, cache, aqua::selection_spec::top_k(k), aqua::make_view(out.data(), hq, n, d),
                         opt);
    benchmark::ClobberMemory();
  }
  aqua::cost_config c;
  c.d = d;
  c.k = dense ? d : k;
  c.hq = hq;
  c.hkv = hkv;
  const auto cost = dense ? aqua::dense_prefill_cost(c, double(n), double(n))
                          : aqua::aqua_prefill_cost(c, double(n), double(n));
  state.counters["FLOP/s"] = benchmark::Counter(cost.flops(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bytes/s"] = benchmark::Counter(cost.bytes(), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_prefill)
    ->Args({4096, 0, 0})
    ->Args({4096, 32, 0})
    ->Args({4096, 32, 2})
    ->Unit(benchmark::kMillisecond);

}  // namespace
