// Projection: q~ = q P for one query head and for the Hq heads of a layer (each with its KV group's
// basis), and the key projection k~ = k P that kv_cache::append does per new token (all KV heads),
// with and without truncation, against an identity cache that stores keys as given.
// Counters: FLOP/s (2 d r per projected vector), bytes/s (P read: d r floats per basis used, plus
// the vectors read and written; for append also the value row stored), tokens/s or heads/s.
#include <aqua/kv_cache.hpp>
#include <aqua/projection.hpp>

#include "aqua_tools/synthetic_data.hpp"

#include <benchmark/benchmark.h>

#include <array>
#include <random>
#include <vector>

namespace {

using aqua::index_t;

/// Arg: d. One query head: out = q P (head_projection::project, one Eigen GEMV).
void BM_project_query_head(benchmark::State& state) {
  const index_t d = state.range(0);
  const auto p = aqua::head_projection::random_orthogonal(d, 1);
  const auto q = aqua_examples::spectrum_rows(1, d, 32.0, 2);
  std::vector<float> out(static_cast<std::size_t>(d));
  for (auto _ : state) {
    p.project(q.data(), out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double iters = double(state.iterations()), dd = double(d);
  state.counters["heads/s"] = benchmark::Counter(iters, benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] = benchmark::Counter(iters * 2.0 * dd * dd, benchmark::Counter::kIsRate);
  state.counters["bytes/s"] =
      benchmark::Counter(iters * (dd * dd + 2.0 * dd) * sizeof(float), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_project_query_head)->Arg(64)->Arg(128)->Arg(256);

/// Args: Hq, Hkv (d = 128). A layer's queries [Hq, d], head h projected by the basis of KV head
/// h / g: what AQUA decode does before selecting, once per step.
void BM_project_queries_layer(benchmark::State& state) {
  const index_t hq = state.range(0), hkv = state.range(1), d = 128, g = hq / hkv;
  const auto set = aqua::projection_set::random_orthogonal(1, hkv, d, g, 3);
  const auto q = aqua_examples::spectrum_rows(hq, d, 32.0, 4);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    for (index_t h = 0; h < hq; ++h) set.head(0, h / g).project(q.data() + h * d, out.data() + h * d);
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  const double iters = double(state.iterations()), dd = double(d);
  state.counters["steps/s"] = benchmark::Counter(iters, benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] =
      benchmark::Counter(iters * double(hq) * 2.0 * dd * dd, benchmark::Counter::kIsRate);
  state.counters["bytes/s"] = benchmark::Counter(
      iters * (double(hkv) * dd * dd + 2.0 * double(hq) * dd) * sizeof(float), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_project_queries_layer)->Args({32, 8})->Args({32, 32});

/// Args: projected (0: identity cache, keys stored as given; 1: random bases), r (0: r = d).
/// Hkv = 8, d = 128: one decode step's new token (key and value for every KV head) per iteration.
void BM_kv_cache_append_token(benchmark::State& state) {
  const index_t hkv = 8, d = 128, cap = 4096;
  const bool projected = state.range(0) != 0;
  const index_t r = state.range(1) == 0 ? d : state.range(1);
  aqua::kv_cache_options opt;
  opt.tile_dims = 32;
  opt.rank = projected ? state.range(1) : 0;
  opt.capacity = cap;
  std::mt19937 rng(5);
  const auto bases = aqua_examples::random_orthogonal_bases(hkv, d, rng);
  aqua::kv_cache cache =
      projected ? aqua::kv_cache(aqua_examples::basis_views(bases), opt) : aqua::kv_cache(hkv, d, opt);
  // Distinct tokens, cycled: [Hkv, 64, d] keys and values.
  const index_t distinct = 64;
  const auto keys = aqua_examples::spectrum_rows(hkv * distinct, d, 32.0, 6);
  const auto values = aqua_examples::normal_data(keys.size(), 7);
  index_t t = 0;
  for (auto _ : state) {
    if (cache.size() == cap) {
      state.PauseTiming();
      cache.clear();
      state.ResumeTiming();
    }
    const index_t j = t++ % distinct;
    const std::array<index_t, 3> ext = {hkv, 1, d}, str = {distinct * d, d, 1};
    cache.append(aqua::tensor3_view<const float>(keys.data() + j * d, ext, str),
                 aqua::tensor3_view<const float>(values.data() + j * d, ext, str));
  }
  const double iters = double(state.iterations()), dd = double(d), rr = double(projected ? r : d);
  state.counters["tokens/s"] = benchmark::Counter(iters, benchmark::Counter::kIsRate);
  state.counters["FLOP/s"] =
      benchmark::Counter(projected ? iters * double(hkv) * 2.0 * dd * rr : 0.0, benchmark::Counter::kIsRate);
  // Read: key and value rows (and P when projecting); written: r projected key floats and d values.
  const double bytes = double(hkv) * (2.0 * dd + (projected ? dd * rr : 0.0) + rr + dd) * sizeof(float);
  state.counters["bytes/s"] = benchmark::Counter(iters * bytes, benchmark::Counter::kIsRate);
}
BENCHMARK(BM_kv_cache_append_token)->Args({0, 0})->Args({1, 0})->Args({1, 64});

}  // namespace
