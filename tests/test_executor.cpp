// aqua::executor, aqua::thread_pool and the options that choose where a call's work runs: the
// run() contract (each worker index once, count below the worker count, errors back on the caller,
// concurrent callers), an engine's own executor used by the attention entry points with results
// bitwise equal to the same number of threads, the errors for bad worker counts and for an
// executor together with threads, and that `threads = 2` starts its threads once, not per call.
#include <aqua/attention.hpp>
#include <aqua/calibrate.hpp>
#include <aqua/executor.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <dirent.h>
#endif

#include "kernel_support.hpp"
#include "skip_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

// An engine's pool as a test stands in for it: each task on its own std::async thread, counting
// the run() calls that reached it.
class async_executor final : public aqua::executor {
public:
  explicit async_executor(int workers) : workers_(workers) {}
  int workers() const noexcept override { return workers_; }
  void run(int count, aqua::task_ref task) override {
    ++runs;
    std::vector<std::future<void>> pending;
    for (int w = 0; w < count; ++w) pending.push_back(std::async(std::launch::async, [task, w] { task(w); }));
    for (auto& f : pending) f.get();
  }
  std::atomic<int> runs{0};

private:
  int workers_;
};

// Counts how often each worker index was called.
struct index_counter {
  std::vector<std::atomic<int>> calls;
  explicit index_counter(int workers) : calls(static_cast<std::size_t>(workers)) {}
  void operator()(int w) noexcept { calls[static_cast<std::size_t>(w)].fetch_add(1); }
};

// Threads of this process (Linux), -1 elsewhere.
int process_threads() {
#if defined(__linux__)
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) return -1;
  int count = 0;
  while (const dirent* entry = readdir(dir))
    if (entry->d_name[0] != '.') ++count;
  closedir(dir);
  return count;
#else
  return -1;
#endif
}

struct executor_layer : aqua_test::random_layer {
  executor_layer(index_t hq_, index_t hkv_, index_t d_, index_t n_, index_t queries = 1)
      : random_layer(hq_, hkv_, d_, n_, {16, true, 0, queries, 11, 400}) {}
  aqua::tensor3_view<const float> kv(const std::vector<float>& x) const {
    return aqua::make_view(x.data(), hkv, n, d);
  }
};

}  // namespace

TEST_CASE("thread_pool::run calls every worker index exactly once per run", "[executor][threads]") {
  for (int workers : {1, 2, 3, 4}) {
    CAPTURE(workers);
    aqua::thread_pool pool(workers);
    CHECK(pool.workers() == workers);
    for (int count = 0; count <= workers; ++count) {
      CAPTURE(count);
      for (int rep = 0; rep < 20; ++rep) {
        index_counter counter(workers);
        pool.run(count, aqua::make_task_ref(counter));
        for (int w = 0; w < workers; ++w) CHECK(counter.calls[std::size_t(w)].load() == (w < count ? 1 : 0));
      }
    }
  }
}

TEST_CASE("thread_pool runs worker 0 on the calling thread and the others on its own threads",
          "[executor][threads]") {
  aqua::thread_pool pool(3);
  std::vector<std::thread::id> ids(3);
  auto record = [&](int w) noexcept { ids[std::size_t(w)] = std::this_thread::get_id(); };
  pool.run(3, aqua::make_task_ref(record));
  CHECK(ids[0] == std::this_thread::get_id());
  CHECK(ids[1] != ids[0]);
  CHECK(ids[2] != ids[0]);
  CHECK(ids[1] != ids[2]);
  // Persistent: the same threads serve the next run.
  const auto first = ids;
  pool.run(3, aqua::make_task_ref(record));
  CHECK(ids == first);
}

TEST_CASE("thread_pool works without spinning", "[executor][threads]") {
  aqua::thread_pool pool(3, std::chrono::microseconds(0));
  for (int rep = 0; rep < 50; ++rep) {
    index_counter counter(3);
    pool.run(rep % 4, aqua::make_task_ref(counter));
    for (int w = 0; w < 3; ++w) CHECK(counter.calls[std::size_t(w)].load() == (w < rep % 4 ? 1 : 0));
  }
}

TEST_CASE("an error thrown by a task reaches the caller and the pool stays usable", "[executor][threads]") {
  aqua::thread_pool pool(3);
  for (int thrower : {0, 1, 2}) {
    CAPTURE(thrower);
    std::atomic<int> finished{0};
    CHECK_THROWS_WITH(aqua::detail::parallel_for(3, pool,
                                                 [&](index_t, index_t, int w) {
                                                   if (w == thrower) throw std::runtime_error("task failed");
                                                   ++finished;
                                                 }),
                      "task failed");
    CHECK(finished.load() == 2);  // the others ran to the end before the rethrow
    std::atomic<index_t> sum{0};
    aqua::detail::parallel_for(100, pool, [&](index_t begin, index_t end, int) {
      for (index_t i = begin; i < end; ++i) sum += i;
    });
    CHECK(sum.load() == 4950);
  }
}

TEST_CASE("parallel_for covers the range in worker-ordered chunks on any executor", "[executor][threads]") {
  aqua::thread_pool pool(4);
  async_executor async(3);
  aqua::inline_executor alone;
  for (aqua::executor* exec : std::vector<aqua::executor*>{&pool, &async, &alone})
    for (index_t count : {1, 2, 3, 5, 100}) {
      CAPTURE(exec->workers(), count);
      std::vector<int> owner(std::size_t(count), -1);
      aqua::detail::parallel_for(count, *exec, [&](index_t begin, index_t end, int w) {
        for (index_t i = begin; i < end; ++i) owner[std::size_t(i)] = w;
      });
      const int used = int(std::min<index_t>(exec->workers(), count));
      CHECK(owner.front() == 0);
      CHECK(owner.back() == used - 1);
      for (std::size_t i = 1; i < owner.size(); ++i)
        CHECK((owner[i] == owner[i - 1] || owner[i] == owner[i - 1] + 1));
    }
  // One chunk runs inline: the executor is not asked.
  async_executor counted(4);
  aqua::detail::parallel_for(1, counted, [](index_t, index_t, int) {});
  CHECK(counted.runs.load() == 0);
}

TEST_CASE("thread_pool::run from two threads at once runs both, one after the other", "[executor][threads]") {
  aqua::thread_pool pool(2);
  std::atomic<int> inside{0}, overlap{0}, total{0};
  auto task = [&](int) noexcept {
    if (inside.fetch_add(1) >= 2) ++overlap;  // more than one run's workers at once
    ++total;
    std::this_thread::yield();
    inside.fetch_sub(1);
  };
  auto caller = [&] {
    for (int rep = 0; rep < 200; ++rep) pool.run(2, aqua::make_task_ref(task));
  };
  std::thread other(caller);
  caller();
  other.join();
  CHECK(total.load() == 2 * 200 * 2);
  CHECK(overlap.load() == 0);
}

TEST_CASE("thread_pool rejects bad worker counts, counts and calls from its own tasks",
          "[executor][threads]") {
  CHECK_THROWS_WITH(aqua::thread_pool(0),
                    Contains("aqua::thread_pool: workers must be at least 1") && Contains("got 0"));
  CHECK_THROWS_WITH(aqua::thread_pool(-3), Contains("got -3"));
  CHECK_THROWS_WITH(aqua::thread_pool(2, std::chrono::microseconds(-1)),
                    Contains("spin must not be negative"));
  aqua::thread_pool pool(2);
  index_counter counter(3);
  CHECK_THROWS_WITH(pool.run(3, aqua::make_task_ref(counter)), Contains("count 3 is outside [0, 2]"));
  CHECK_THROWS_WITH(pool.run(-1, aqua::make_task_ref(counter)), Contains("count -1 is outside [0, 2]"));
  aqua::inline_executor alone;
  CHECK_THROWS_WITH(alone.run(2, aqua::make_task_ref(counter)), Contains("count 2 is outside [0, 1]"));
  // Nested: a task of the pool calling back into it would wait for itself, on the calling thread
  // (worker 0, also when it runs alone) as on the pool's own.
  CHECK_THROWS_WITH(
      aqua::detail::parallel_for(
          2, pool,
          [&](index_t, index_t, int) { aqua::detail::parallel_for(2, pool, [](index_t, index_t, int) {}); }),
      Contains("called from inside a task of the same pool"));
  std::string nested_error;
  auto nested = [&](int) noexcept {
    try {
      pool.run(1, aqua::make_task_ref(counter));
    } catch (const aqua::error& e) {
      nested_error = e.what();
    }
  };
  pool.run(1, aqua::make_task_ref(nested));
  CHECK_THAT(nested_error, Contains("called from inside a task of the same pool"));
  std::atomic<int> ran{0};
  aqua::detail::parallel_for(2, pool, [&](index_t, index_t, int) { ++ran; });
  CHECK(ran.load() == 2);
}

TEST_CASE("an engine's executor runs dense and AQUA decode and prefill, bitwise equal to as many threads",
          "[executor][threads]") {
  // Hkv = 2 with 3 workers: AQUA decode splits tokens into segments, which depend on the worker count.
  const index_t hq = 4, hkv = 2, d = 32, n = 200, m = 70;
  executor_layer layer(hq, hkv, d, n, m);
  const auto k = layer.kv(layer.k), v = layer.kv(layer.v);
  for (int workers : {2, 3}) {
    CAPTURE(workers);
    async_executor engine(workers);
    std::vector<float> by_threads(std::size_t(hq * d)), by_engine(by_threads.size());

    aqua::attention_options threads_opt, engine_opt;
    threads_opt.threads = workers;
    engine_opt.exec = &engine;
    aqua::dense_decode<float>(layer.qv(), k, v, aqua::make_view(by_threads.data(), hq, d), threads_opt);
    int runs = engine.runs.load();
    aqua::dense_decode<float>(layer.qv(), k, v, aqua::make_view(by_engine.data(), hq, d), engine_opt);
    CHECK(engine.runs.load() == runs + 1);
    CHECK(aqua_test::bitwise_equal(by_threads, by_engine));

    aqua::dense_decode(layer.qv(), layer.cache, aqua::make_view(by_threads.data(), hq, d), threads_opt);
    runs = engine.runs.load();
    aqua::dense_decode(layer.qv(), layer.cache, aqua::make_view(by_engine.data(), hq, d), engine_opt);
    CHECK(engine.runs.load() == runs + 1);
    CHECK(aqua_test::bitwise_equal(by_threads, by_engine));

    for (auto mode : aqua_test::all_modes) {
      CAPTURE(aqua_test::mode_name(mode));
      aqua::aqua_options athreads, aengine;
      athreads.mode = aengine.mode = mode;
      athreads.threads = workers;
      aengine.exec = &engine;
      aqua::aqua_decode(layer.qv(), layer.cache, 12, aqua::make_view(by_threads.data(), hq, d), athreads);
      runs = engine.runs.load();
      aqua::aqua_decode(layer.qv(), layer.cache, 12, aqua::make_view(by_engine.data(), hq, d), aengine);
      CHECK(engine.runs.load() == runs + 1);
      CHECK(aqua_test::bitwise_equal(by_threads, by_engine));
    }

    // Prefill: the last m positions' queries.
    std::vector<float> q3(layer.q.begin(), layer.q.begin() + hq * m * d);
    const auto qp = aqua::make_view<const float>(q3.data(), hq, m, d);
    std::vector<float> p_threads(q3.size()), p_engine(q3.size());
    aqua::dense_prefill<float>(qp, k, v, aqua::make_view(p_threads.data(), hq, m, d), threads_opt);
    runs = engine.runs.load();
    aqua::dense_prefill<float>(qp, k, v, aqua::make_view(p_engine.data(), hq, m, d), engine_opt);
    CHECK(engine.runs.load() == runs + 1);
    CHECK(aqua_test::bitwise_equal(p_threads, p_engine));

    aqua::aqua_options athreads, aengine;
    athreads.threads = workers;
    aengine.exec = &engine;
    const auto spec = aqua::selection_spec::top_k(12);
    aqua::aqua_prefill(qp, layer.cache, spec, aqua::make_view(p_threads.data(), hq, m, d), athreads);
    runs = engine.runs.load();
    aqua::aqua_prefill(qp, layer.cache, spec, aqua::make_view(p_engine.data(), hq, m, d), aengine);
    CHECK(engine.runs.load() == runs + 1);
    CHECK(aqua_test::bitwise_equal(p_threads, p_engine));
  }
}

TEST_CASE("calibrator::finalize and the retention evaluator run on an engine's executor",
          "[executor][threads]") {
  const index_t layers = 2, hq = 4, hkv = 2, d = 8, rows = 40;
  aqua::calibrator cal(layers, hq, hkv, d);
  std::vector<float> q(std::size_t(hq * rows * d)), k(std::size_t(hkv * rows * d));
  aqua_test::fill_normal(q, 3);
  aqua_test::fill_normal(k, 4);
  const auto qv = aqua::make_view<const float>(q.data(), hq, rows, d);
  const auto kv = aqua::make_view<const float>(k.data(), hkv, rows, d);
  for (index_t l = 0; l < layers; ++l) cal.add_queries(l, qv);
  async_executor engine(3);
  const auto by_threads = cal.finalize(3);
  const auto by_engine = cal.finalize(engine);
  CHECK(engine.runs.load() == 1);
  for (index_t l = 0; l < layers; ++l)
    for (index_t h = 0; h < hkv; ++h) CHECK(by_threads.head(l, h).basis() == by_engine.head(l, h).basis());

  aqua::retention_options threads_opt, engine_opt;
  threads_opt.threads = 3;
  engine_opt.exec = &engine;
  aqua::retention_evaluator a(by_threads, threads_opt), b(by_threads, engine_opt);
  a.add_layer(0, qv, kv);
  b.add_layer(0, qv, kv);
  CHECK(engine.runs.load() == 2);
  CHECK(a.layer(0).topk == b.layer(0).topk);
  CHECK(a.layer(0).score_rel_err == b.layer(0).score_rel_err);
}

TEST_CASE("an executor together with threads != 1, and threads < 1, are errors", "[executor]") {
  const index_t hq = 2, hkv = 1, d = 16, n = 20;
  executor_layer layer(hq, hkv, d, n);
  std::vector<float> out(std::size_t(hq * d));
  aqua::thread_pool pool(2);
  aqua::attention_options opt;
  opt.exec = &pool;
  opt.threads = 2;
  CHECK_THROWS_WITH(aqua::dense_decode<float>(layer.qv(), layer.kv(layer.k), layer.kv(layer.v),
                                              aqua::make_view(out.data(), hq, d), opt),
                    Contains("aqua::dense_decode: both an executor (2 workers) and threads = 2 are set"));
  CHECK_THROWS_WITH(aqua::dense_decode(layer.qv(), layer.cache, aqua::make_view(out.data(), hq, d), opt),
                    Contains("both an executor"));
  aqua::aqua_options aopt;
  aopt.exec = &pool;
  aopt.threads = 2;
  CHECK_THROWS_WITH(aqua::aqua_decode(layer.qv(), layer.cache, 8, aqua::make_view(out.data(), hq, d), aopt),
                    Contains("aqua::aqua_decode: both an executor"));
  aopt.threads = 0;
  CHECK_THROWS_WITH(aqua::aqua_decode(layer.qv(), layer.cache, 8, aqua::make_view(out.data(), hq, d), aopt),
                    Contains("threads must be at least 1, got 0"));
  aqua::retention_options ropt;
  ropt.exec = &pool;
  ropt.threads = 3;
  aqua::calibrator cal(1, hq, hkv, d);
  cal.add_queries(0, aqua::make_view<const float>(layer.q.data(), hq, 1, d));
  const auto set = cal.finalize();
  CHECK_THROWS_WITH(aqua::retention_evaluator(set, ropt),
                    Contains("aqua::retention_evaluator: both an executor"));
  CHECK_THROWS_WITH(cal.finalize(-1),
                    Contains("aqua::calibrator::finalize: threads must be at least 1, got -1"));
  async_executor empty(0);
  opt.threads = 1;
  opt.exec = &empty;
  CHECK_THROWS_WITH(aqua::dense_decode(layer.qv(), layer.cache, aqua::make_view(out.data(), hq, d), opt),
                    Contains("the executor reports 0 workers; it must have at least 1"));
}

TEST_CASE("threads = 2 starts its workers once: later calls start no thread", "[executor][threads]") {
  if (process_threads() < 0) {
    aqua_test::skip_case("counting threads needs /proc/self/task (Linux)");
    return;
  }
  const index_t hq = 4, hkv = 2, d = 32, n = 100;
  executor_layer layer(hq, hkv, d, n);
  std::vector<float> out(std::size_t(hq * d));
  aqua::attention_options opt;
  opt.threads = 2;
  aqua::aqua_options aopt;
  aopt.threads = 2;
  aqua::dense_decode<float>(layer.qv(), layer.kv(layer.k), layer.kv(layer.v),
                            aqua::make_view(out.data(), hq, d), opt);
  const int after_first = process_threads();
  for (int rep = 0; rep < 10; ++rep) {
    aqua::dense_decode<float>(layer.qv(), layer.kv(layer.k), layer.kv(layer.v),
                              aqua::make_view(out.data(), hq, d), opt);
    aqua::aqua_decode(layer.qv(), layer.cache, 8, aqua::make_view(out.data(), hq, d), aopt);
  }
  CHECK(process_threads() == after_first);

  // Counted while the work runs (a thread started per call would be alive then): the calibrator's
  // progress callback is called from inside finalize's workers.
  std::mutex lock;
  int most_during = 0;
  aqua::calibrator_options copt;
  copt.progress = [&](const aqua::calibration_progress& p) {
    if (p.stage != aqua::calibration_progress::stage_t::finalize) return;
    std::lock_guard<std::mutex> guard(lock);
    most_during = std::max(most_during, process_threads());
  };
  aqua::calibrator cal(2, hq, hkv, d, copt);
  for (index_t l = 0; l < 2; ++l) cal.add_queries(l, aqua::make_view<const float>(layer.q.data(), hq, 1, d));
  cal.finalize(2);  // the shared pool of 2 exists already; this must not add to it
  const int between = process_threads();
  most_during = 0;
  cal.finalize(2);
  CHECK(most_during == between);
  CHECK(between == after_first);
}
