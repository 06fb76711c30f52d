// Where aqua's parallel work runs. An inference engine already owns its threads (a llama.cpp
// threadpool, OpenMP, TBB); it implements aqua::executor over them and passes it in the options, so
// aqua starts no threads of its own. aqua::thread_pool is a ready-made executor with persistent
// workers for callers that have no pool.
//
// Contract of executor::run(count, task): count is in [0, workers()]; task(w) is called exactly
// once for each w in [0, count), concurrently where the executor can; run returns when every call
// has returned. Worker 0 may be the calling thread. Tasks never throw (aqua catches inside each
// task and rethrows the first error on the calling thread after run returns), so an executor needs
// no exception handling and may be written over a C thread pool.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "aqua/config.hpp"

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#endif

namespace aqua {

/// A non-owning, trivially copyable reference to a task: call(context, worker). A C engine calls
/// it from its own threads as `task.call(task.context, ith)`, like ggml's ith/nth. The referenced
/// callable must outlive every call (aqua's stays alive until run() returns).
struct task_ref {
  void* context = nullptr;
  void (*call)(void* context, int worker) noexcept = nullptr;

  void operator()(int worker) const noexcept { call(context, worker); }
};

/// A task_ref to `callable`, which is called as callable(worker). An exception escaping it calls
/// std::terminate (tasks never throw; catch inside).
template <class Callable>
task_ref make_task_ref(Callable& callable) noexcept {
  task_ref task;
  task.context = static_cast<void*>(&callable);
  task.call = [](void* context, int worker) noexcept { (*static_cast<Callable*>(context))(worker); };
  return task;
}

/// The interface an engine implements over its own threads (see the contract above).
class executor {
public:
  virtual ~executor() = default;
  /// How many workers run() can use at once; at least 1.
  virtual int workers() const noexcept = 0;
  /// Calls task(w) once for each w in [0, count), count <= workers(); returns when all returned.
  virtual void run(int count, task_ref task) = 0;

protected:
  executor() = default;
  executor(const executor&) = default;
  executor& operator=(const executor&) = default;
};

/// One worker: the calling thread runs every task.
class inline_executor final : public executor {
public:
  int workers() const noexcept override { return 1; }
  void run(int count, task_ref task) override {
    AQUA_CHECK(count >= 0 && count <= 1, "aqua::inline_executor::run: count ", count,
               " is outside [0, 1] (one worker)");
    if (count == 1) task(0);
  }
};

namespace detail {

/// Tells a spinning core that it is waiting (saves power, frees the sibling hyperthread).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

/// Spins until done() or until `limit` has passed; true when done() held. After a few pauses it
/// yields the core on each round: where threads outnumber free cores the thread it waits for may
/// need this very core.
template <class Done>
bool spin_until(const Done& done, std::chrono::nanoseconds limit) noexcept {
  if (limit.count() <= 0) return done();
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (int i = 0; i < 64; ++i) {
    if (done()) return true;
    cpu_relax();
  }
  for (;;) {
    if (done()) return true;
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

}  // namespace detail

/// An executor with persistent workers: workers - 1 background threads, started once, plus the
/// thread that calls run() as worker 0. run() may be called from several threads at once: the calls
/// are serialised (one at a time; the others wait). Calling run() from inside one of this pool's
/// own tasks would wait for itself and is an aqua::error.
///
/// Wake-up: run() publishes the task under a generation counter and wakes sleeping workers through
/// a condition variable. A worker that finished a task first spins for up to `spin` before it
/// sleeps, as the caller does while waiting for the workers: a decode call of some 50 us would
/// otherwise be dominated by the futex wake-ups (tens of us each). Spinning is bounded; pass
/// spin = 0 where cores are oversubscribed.
class thread_pool final : public executor {
public:
  static constexpr std::chrono::microseconds default_spin{50};

  template <class = void>
  explicit thread_pool(int workers, std::chrono::microseconds spin = default_spin)
      : workers_(check_workers(workers)), spin_(spin) {
    AQUA_CHECK(spin.count() >= 0, "aqua::thread_pool: spin must not be negative, got ", spin.count(), " us");
    threads_.reserve(static_cast<std::size_t>(workers_ - 1));
#if AQUA_HAS_EXCEPTIONS
    try {
      for (int w = 1; w < workers_; ++w) threads_.emplace_back([this, w] { work(w); });
    } catch (...) {
      stop_and_join();
      throw;
    }
#else
    for (int w = 1; w < workers_; ++w) threads_.emplace_back([this, w] { work(w); });
#endif
  }

  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;
  thread_pool(thread_pool&&) = delete;
  thread_pool& operator=(thread_pool&&) = delete;

  /// Joins the workers; no run() may be in progress.
  ~thread_pool() override {
    stop_and_join();
  }

  int workers() const noexcept override {
    return workers_;
  }

  void run(int count, task_ref task) override {
    AQUA_CHECK(count >= 0 && count <= workers_, "aqua::thread_pool::run: count ", count, " is outside [0, ",
               workers_, "] (the pool has ", workers_, " workers)");
    AQUA_CHECK(running_pool() != this,
               "aqua::thread_pool::run: called from inside a task of the same pool, which would wait for "
               "itself; run nested work inline or on another executor");
    if (count == 0) return;
    std::lock_guard<std::mutex> one_caller_at_a_time(run_lock_);
    const running_scope scope(this);
    if (count == 1) {
      task(0);
      return;
    }
    {
      std::lock_guard<std::mutex> guard(state_lock_);
      task_ = task;
      count_ = count;
      pending_.store(count - 1, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    task(0);
    const auto finished = [this] { return pending_.load(std::memory_order_acquire) == 0; };
    if (!detail::spin_until(finished, spin_)) {
      std::unique_lock<std::mutex> lock(state_lock_);
      done_.wait(lock, finished);
    }
  }

private:
  static int check_workers(int workers) {
    AQUA_CHECK(workers >= 1,
               "aqua::thread_pool: workers must be at least 1 (the calling thread is one), got ", workers);
    return workers;
  }

  /// The pool whose task this thread is running (a background worker, or a caller inside run()).
  static const thread_pool*& running_pool() noexcept {
    static thread_local const thread_pool* pool = nullptr;
    return pool;
  }

  struct running_scope {
    const thread_pool* previous;
    explicit running_scope(const thread_pool* pool) noexcept : previous(running_pool()) {
      running_pool() = pool;
    }
    ~running_scope() { running_pool() = previous; }
    running_scope(const running_scope&) = delete;
    running_scope& operator=(const running_scope&) = delete;
  };

  void work(int index) {
    running_pool() = this;
    std::uint64_t seen = 0;
    for (;;) {
      const auto published = [this, seen] { return generation_.load(std::memory_order_acquire) != seen; };
      task_ref task;
      int count = 0;
      {
        // The spin is outside the lock; the task is then read under it together with its
        // generation, so a worker that is not needed this time can never mistake a later task's
        // count for this one's.
        const bool woke_spinning = detail::spin_until(published, spin_);
        std::unique_lock<std::mutex> lock(state_lock_);
        if (!woke_spinning) wake_.wait(lock, [&] { return stop_ || published(); });
        if (stop_) return;
        seen = generation_.load(std::memory_order_relaxed);
        task = task_;
        count = count_;
      }
      if (index >= count) continue;
      task(index);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // Under the lock: the caller either sees pending_ == 0 before it waits or is already waiting.
        std::lock_guard<std::mutex> guard(state_lock_);
        done_.notify_one();
      }
    }
  }

  void stop_and_join() noexcept {
    {
      std::lock_guard<std::mutex> guard(state_lock_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& t : threads_) t.join();
  }

  const int workers_;
  const std::chrono::nanoseconds spin_;
  std::mutex run_lock_;
  std::mutex state_lock_;
  std::condition_variable wake_, done_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  task_ref task_;      // guarded by state_lock_
  int count_ = 0;      // guarded by state_lock_
  bool stop_ = false;  // guarded by state_lock_
  std::vector<std::thread> threads_;
};

}  // namespace aqua
