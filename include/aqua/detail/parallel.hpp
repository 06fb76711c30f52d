// Parallel loops over an aqua::executor, and the one place where the options' `threads` and
// executor become the executor a call runs on.
#pragma once

#include <algorithm>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/executor.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

/// The process-wide pool of `workers` workers behind `threads = workers` without an executor:
/// created on first use, reused by every later call, never destroyed (its threads sleep until the
/// process exits, so static destructors that still call aqua find it alive). One per distinct size.
template <class = void>
inline thread_pool& shared_thread_pool(int workers) {
  static std::mutex* const lock = new std::mutex;
  static auto* const pools = new std::map<int, std::unique_ptr<thread_pool>>;
  std::lock_guard<std::mutex> guard(*lock);
  std::unique_ptr<thread_pool>& pool = (*pools)[workers];
  if (!pool) pool.reset(new thread_pool(workers));
  return *pool;
}

inline executor& calling_thread_executor() {
  static inline_executor* const one = new inline_executor;  // never destroyed, as the shared pools
  return *one;
}

/// The executor a call runs on: the caller's (then threads must stay 1: one meaning per call), the
/// calling thread alone for threads = 1, or the shared pool of that size.
template <class = void>
inline executor& resolve_executor(executor* exec, int threads, const char* fn) {
  AQUA_CHECK(threads >= 1, fn, ": threads must be at least 1, got ", threads);
  if (exec != nullptr) {
    AQUA_CHECK(threads == 1, fn, ": both an executor (", exec->workers(), " workers) and threads = ", threads,
               " are set; the executor decides the workers, so leave threads at 1");
    AQUA_CHECK(exec->workers() >= 1, fn, ": the executor reports ", exec->workers(),
               " workers; it must have at least 1");
    return *exec;
  }
  if (threads == 1) return calling_thread_executor();
  return shared_thread_pool(threads);
}

/// Splits [0, count) into min(workers, count) contiguous chunks of near-equal size and runs
/// `body(begin, end, worker)` for each on the executor; a single chunk runs on the calling thread
/// without it. An exception thrown by a body is rethrown on the calling thread (the lowest
/// worker's, if several threw) after every chunk has finished.
template <class Body>
void parallel_for(index_t count, executor& exec, Body&& body) {
  if (count <= 0) return;
  const int available = exec.workers();
  AQUA_CHECK(available >= 1, "aqua: the executor reports ", available, " workers; it must have at least 1");
  const index_t workers = std::min<index_t>(available, count);
  if (workers == 1) {
    body(index_t{0}, count, 0);
    return;
  }
#if AQUA_HAS_EXCEPTIONS
  // One slot, kept for the lowest worker that threw: no allocation unless a body throws.
  std::mutex error_lock;
  std::exception_ptr error;
  int error_worker = available;
#endif
  auto chunk = [&](int w) noexcept {
    const index_t begin = count * w / workers, end = count * (w + 1) / workers;
#if AQUA_HAS_EXCEPTIONS
    try {
      body(begin, end, w);
    } catch (...) {
      std::lock_guard<std::mutex> guard(error_lock);
      if (w < error_worker) {
        error = std::current_exception();
        error_worker = w;
      }
    }
#else
    body(begin, end, w);
#endif
  };
  exec.run(static_cast<int>(workers), make_task_ref(chunk));
#if AQUA_HAS_EXCEPTIONS
  if (error) std::rethrow_exception(error);
#endif
}

}  // namespace detail
}  // namespace aqua
