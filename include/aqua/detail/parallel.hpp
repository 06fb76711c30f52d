// Explicit, per-call threading: no hidden global pool. A caller asks for `threads` workers; the
// calling thread is one of them.
#pragma once

#include <algorithm>
#include <exception>
#include <thread>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

/// Splits [0, count) into `threads` contiguous chunks of near-equal size and runs
/// `body(begin, end, worker)` for each, chunk 0 on the calling thread. Exceptions thrown by a body
/// are rethrown on the calling thread after every worker has joined.
template <class Body>
void parallel_for(index_t count, int threads, Body&& body) {
  if (count <= 0) return;
  const index_t workers = std::max<index_t>(1, std::min<index_t>(threads, count));
  if (workers == 1) {
    body(index_t{0}, count, 0);
    return;
  }
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(workers));
  auto run = [&](index_t w) {
    const index_t begin = count * w / workers, end = count * (w + 1) / workers;
#if AQUA_HAS_EXCEPTIONS
    try {
      body(begin, end, static_cast<int>(w));
    } catch (...) {
      errors[static_cast<std::size_t>(w)] = std::current_exception();
    }
#else
    body(begin, end, static_cast<int>(w));
#endif
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<std::size_t>(workers - 1));
  for (index_t w = 1; w < workers; ++w) pool.emplace_back(run, w);
  run(0);
  for (auto& t : pool) t.join();
#if AQUA_HAS_EXCEPTIONS
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
#endif
}

}  // namespace detail
}  // namespace aqua
