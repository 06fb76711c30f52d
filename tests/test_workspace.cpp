// The workspace promise (aqua::aqua_workspace): with one, a decode call allocates nothing once a
// call of the same shape has sized it, in every selection mode, for dense decode over the cache,
// with token probabilities and log-sum-exp outputs, on one worker and on a pool. Counted by
// replacing the global operator new of this test binary; only calls made while counting is on are
// counted, on every thread (the pool's workers allocate too if anything does).
#include <aqua/attention.hpp>
#include <aqua/executor.hpp>

#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "kernel_support.hpp"
#include "skip_support.hpp"
#include "test_support.hpp"

// The sanitizers bring their own operator new and check that each block is freed the way it was
// allocated; a replacement here would mix theirs and ours (ASan: alloc-dealloc-mismatch), so
// under them the cases skip loudly and the optimised build counts.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define AQUA_TEST_COUNTS_ALLOCATIONS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define AQUA_TEST_COUNTS_ALLOCATIONS 0
#endif
#endif
#ifndef AQUA_TEST_COUNTS_ALLOCATIONS
#define AQUA_TEST_COUNTS_ALLOCATIONS 1
#endif

namespace {
std::atomic<bool> counting_allocations{false};
std::atomic<long> allocations_counted{0};
}  // namespace

#if AQUA_TEST_COUNTS_ALLOCATIONS
// GCC sees the malloc behind this operator new and the free behind operator delete once both are
// inlined, and takes the pair for a mismatch; they are this binary's allocator, so they match.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t bytes) {
  if (counting_allocations.load(std::memory_order_relaxed)) allocations_counted.fetch_add(1);
  if (void* p = std::malloc(bytes ? bytes : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // AQUA_TEST_COUNTS_ALLOCATIONS

namespace {

/// Allocations (operator new, any thread) while f runs.
template <class F>
long allocations_during(F&& f) {
  allocations_counted = 0;
  counting_allocations = true;
  f();
  counting_allocations = false;
  return allocations_counted.load();
}

constexpr const char* no_counting = "allocations are not counted under a sanitizer (it owns operator new)";

}  // namespace

TEST_CASE("with a workspace a repeated decode of one shape allocates nothing", "[workspace][threads]") {
  if (!AQUA_TEST_COUNTS_ALLOCATIONS) return aqua_test::skip_case(no_counting);
  using aqua::index_t;
  const index_t hq = 8, hkv = 2, d = 64, n = 333;
  aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 5, 300});
  std::vector<float> out(std::size_t(hq * d)), probs(std::size_t(hkv * n)), lse(static_cast<std::size_t>(hq));
  const auto outv = aqua::make_view(out.data(), hq, d);
  const auto probsv = aqua::make_view(probs.data(), hkv, n);
  const auto lsev = aqua::make_view(lse.data(), hq);
  aqua::thread_pool pool(2);
  for (aqua::executor* exec : {static_cast<aqua::executor*>(nullptr), static_cast<aqua::executor*>(&pool)}) {
    for (auto mode : aqua_test::all_modes)
      for (const auto& spec : {aqua::selection_spec::top_k(24), aqua::selection_spec::energy(0.9)}) {
        CAPTURE(exec != nullptr, aqua_test::mode_name(mode), int(spec.type));
        aqua::aqua_workspace ws;
        aqua::aqua_options opt;
        opt.mode = mode;
        opt.exec = exec;
        opt.workspace = &ws;
        opt.lse = lsev;
        aqua::aqua_decode(L.qv(), L.cache, spec, outv, opt, probsv);
        CHECK(allocations_during([&] { aqua::aqua_decode(L.qv(), L.cache, spec, outv, opt, probsv); }) == 0);
        opt.lse = {};
        CHECK(allocations_during([&] { aqua::aqua_decode(L.qv(), L.cache, spec, outv, opt); }) == 0);
      }
    aqua::aqua_workspace ws;
    aqua::attention_options dense;
    dense.exec = exec;
    dense.lse = lsev;
    dense.workspace = &ws;
    aqua::dense_decode(L.qv(), L.cache, outv, dense, probsv);
    CHECK(allocations_during([&] { aqua::dense_decode(L.qv(), L.cache, outv, dense, probsv); }) == 0);
  }
}

TEST_CASE("with a workspace a repeated batched decode of one shape allocates nothing",
          "[workspace][batch][threads]") {
  if (!AQUA_TEST_COUNTS_ALLOCATIONS) return aqua_test::skip_case(no_counting);
  using aqua::index_t;
  const index_t hq = 8, hkv = 2, d = 64;
  const std::vector<index_t> lengths{333, 20, 1000};
  const index_t count = index_t(lengths.size());
  std::vector<std::unique_ptr<aqua_test::random_layer>> layers;
  std::vector<const aqua::kv_cache*> caches;
  std::vector<std::vector<float>> probs;
  std::vector<aqua::matrix_view<float>> prob_views;
  for (index_t n : lengths) {
    layers.push_back(std::make_unique<aqua_test::random_layer>(
        hq, hkv, d, n, aqua_test::random_layer::options{16, true, 0, 1, 5, 300}));
    caches.push_back(&layers.back()->cache);
    probs.emplace_back(static_cast<std::size_t>(hkv * n));
    prob_views.push_back(aqua::make_view(probs.back().data(), hkv, n));
  }
  std::vector<float> q(static_cast<std::size_t>(count * hq * d), 0.5f), out(q.size()),
      lse(static_cast<std::size_t>(count * hq));
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), count, hq, d);
  const auto cv = aqua::make_view(static_cast<const aqua::kv_cache* const*>(caches.data()), count);
  const auto outv = aqua::make_view(out.data(), count, hq, d);
  aqua::batch_decode_outputs extra;
  extra.token_probs = aqua::make_view(static_cast<const aqua::matrix_view<float>*>(prob_views.data()), count);
  extra.lse = aqua::make_view(lse.data(), count, hq);
  aqua::thread_pool pool(2);
  for (aqua::executor* exec : {static_cast<aqua::executor*>(nullptr), static_cast<aqua::executor*>(&pool)})
    for (auto mode : aqua_test::all_modes) {
      CAPTURE(exec != nullptr, aqua_test::mode_name(mode));
      aqua::aqua_workspace ws;
      aqua::aqua_options opt;
      opt.mode = mode;
      opt.exec = exec;
      opt.workspace = &ws;
      aqua::aqua_decode_batch(qv, cv, 24, outv, opt, extra);
      CHECK(allocations_during([&] { aqua::aqua_decode_batch(qv, cv, 24, outv, opt, extra); }) == 0);
      aqua::dense_decode_batch(qv, cv, outv, opt, extra);
      CHECK(allocations_during([&] { aqua::dense_decode_batch(qv, cv, outv, opt, extra); }) == 0);
    }
}

TEST_CASE("the allocation counter sees allocations on the pool's workers", "[workspace][threads]") {
  if (!AQUA_TEST_COUNTS_ALLOCATIONS) return aqua_test::skip_case(no_counting);
  aqua::thread_pool pool(2);
  std::vector<std::vector<int>> made(2);
  auto task = [&](int worker) { made[std::size_t(worker)].resize(10); };
  const long seen = allocations_during([&] { pool.run(2, aqua::make_task_ref(task)); });
  CHECK(seen >= 2);
}
