// Per-call cost of the threading: decode at small N (where a call lasts tens of microseconds and
// thread start-up or wake-up latency shows) on one thread, on the shared pool behind threads = 2,
// and on an explicit aqua::thread_pool with and without its spin; and the bare cost of an empty
// thread_pool::run against starting and joining a std::thread (what every threaded call did
// before the executor).
#include <aqua/attention.hpp>
#include <aqua/executor.hpp>
#include <aqua/kv_cache.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace {

using aqua::index_t;

struct executor_bench_layer {
  index_t hq = 32, hkv = 8, d = 128, n;
  aqua::kv_cache cache;
  std::vector<float> q, out;
  explicit executor_bench_layer(index_t n_) : n(n_), cache(8, 128, {32, 0, n_}), q(32 * 128), out(32 * 128) {
    std::mt19937 rng(5);
    std::normal_distribution<float> nd;
    std::vector<float> k(std::size_t(hkv * n * d)), v(k.size());
    for (auto& x : q) x = nd(rng);
    for (std::size_t i = 0; i < k.size(); ++i) {
      k[i] = nd(rng) * std::exp(-float(i % std::size_t(d)) / 32.0f);
      v[i] = nd(rng);
    }
    cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
                 aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
  }
};

executor_bench_layer& executor_layer(index_t n) {
  static std::vector<std::unique_ptr<executor_bench_layer>> all;
  for (auto& f : all)
    if (f->n == n) return *f;
  all.push_back(std::make_unique<executor_bench_layer>(n));
  return *all.back();
}

// Where a call runs: 0 the calling thread (threads = 1), 1 threads = 2 (the shared pool), 2 an
// explicit thread_pool(2), 3 an explicit thread_pool(2) that never spins.
enum runner : int { one_thread = 0, shared_two = 1, pool_two = 2, pool_two_no_spin = 3 };

std::unique_ptr<aqua::thread_pool> pool_for(int how) {
  if (how == pool_two) return std::make_unique<aqua::thread_pool>(2);
  if (how == pool_two_no_spin) return std::make_unique<aqua::thread_pool>(2, std::chrono::microseconds(0));
  return nullptr;
}

const char* runner_label(int how) {
  switch (how) {
    case one_thread:
      return "threads=1";
    case shared_two:
      return "threads=2 (shared pool)";
    case pool_two:
      return "thread_pool(2)";
    default:
      return "thread_pool(2, spin 0)";
  }
}

// Args: n, runner.
void BM_executor_dense_decode(benchmark::State& state) {
  auto& f = executor_layer(state.range(0));
  const int how = static_cast<int>(state.range(1));
  const auto pool = pool_for(how);
  aqua::attention_options opt;
  opt.threads = how == shared_two ? 2 : 1;
  opt.exec = pool.get();
  aqua::aqua_workspace ws;
  opt.workspace = &ws;
  for (auto _ : state) {
    aqua::dense_decode(aqua::make_view(static_cast<const float*>(f.q.data()), f.hq, f.d), f.cache,
                       aqua::make_view(f.out.data(), f.hq, f.d), opt);
    benchmark::DoNotOptimize(f.out.data());
  }
  state.SetLabel(runner_label(how));
}
BENCHMARK(BM_executor_dense_decode)
    ->ArgsProduct({{256, 1024}, {one_thread, shared_two, pool_two, pool_two_no_spin}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Args: n, runner; k = 32, group selection.
void BM_executor_aqua_decode(benchmark::State& state) {
  auto& f = executor_layer(state.range(0));
  const int how = static_cast<int>(state.range(1));
  const auto pool = pool_for(how);
  aqua::aqua_workspace ws;
  aqua::aqua_options opt;
  opt.threads = how == shared_two ? 2 : 1;
  opt.exec = pool.get();
  opt.workspace = &ws;
  for (auto _ : state) {
    aqua::aqua_decode(aqua::make_view(static_cast<const float*>(f.q.data()), f.hq, f.d), f.cache, 32,
                      aqua::make_view(f.out.data(), f.hq, f.d), opt);
    benchmark::DoNotOptimize(f.out.data());
  }
  state.SetLabel(runner_label(how));
}
BENCHMARK(BM_executor_aqua_decode)
    ->ArgsProduct({{256, 1024}, {one_thread, shared_two, pool_two, pool_two_no_spin}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Args: spin in microseconds. Two workers, empty tasks: the pure hand-off cost of one run().
void BM_executor_empty_run(benchmark::State& state) {
  aqua::thread_pool pool(2, std::chrono::microseconds(state.range(0)));
  auto task = [](int worker) noexcept { benchmark::DoNotOptimize(worker); };
  const aqua::task_ref ref = aqua::make_task_ref(task);
  for (auto _ : state) pool.run(2, ref);
}
BENCHMARK(BM_executor_empty_run)
    ->Arg(0)
    ->Arg(5)
    ->Arg(20)
    ->Arg(50)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Starting and joining one std::thread per call (the calling thread the other worker), as
// the library's internal parallel_for did before there were executors.
void BM_executor_spawn_join(benchmark::State& state) {
  for (auto _ : state) {
    std::thread other([] { benchmark::ClobberMemory(); });
    benchmark::ClobberMemory();
    other.join();
  }
}
BENCHMARK(BM_executor_spawn_join)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
