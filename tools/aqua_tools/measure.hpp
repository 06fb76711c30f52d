// Timing and comparison helpers shared by the examples and the benchmarks (not part of the library).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

#include <time.h>

namespace aqua_examples {

/// Milliseconds on the wall clock, or (cpu) process CPU time divided by the thread count: on a
/// machine shared with other jobs the CPU clock leaves out the time the process was descheduled.
struct bench_clock {
  bool cpu = false;
  int threads = 1;
  double now_ms() const {
    if (cpu) {
      timespec ts{};
      clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
      return (double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6) / threads;
    }
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  template <class F>
  double time_ms(F&& f) const {
    const double t0 = now_ms();
    f();
    return now_ms() - t0;
  }
};

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

/// Relative L2 distance |a - ref| / |ref|.
template <class Vector>
double rel_l2(const Vector& a, const Vector& ref) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += (double(a[i]) - double(ref[i])) * (double(a[i]) - double(ref[i]));
    norm += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-300);
}

/// Per-pair times of two competitors, and their medians.
struct pair_times {
  std::vector<double> a_ms, b_ms, ratio;  // ratio = a / b per pair (> 1: b faster)
  double median_a() const { return median(a_ms); }
  double median_b() const { return median(b_ms); }
  double median_ratio() const { return median(ratio); }
};

struct no_hook {
  void operator()() const {}
};

/// Times `a` and `b` in `reps` interleaved pairs after `warmup` untimed pairs, alternating which
/// runs first so neither always finds the caches warm from the other. Each sample runs its
/// function `inner` times (for calls too short to time alone) and reports the time per call.
/// `after_a` / `after_b` run untimed after each timed sample (e.g. to read a profile).
template <class A, class B, class AfterA = no_hook, class AfterB = no_hook>
pair_times time_interleaved(const bench_clock& clock, int reps, int warmup, int inner, A&& a, B&& b,
                            AfterA after_a = {}, AfterB after_b = {}) {
  for (int w = 0; w < warmup; ++w) {
    a();
    b();
  }
  pair_times t;
  auto sample = [&](auto& f) {
    const double t0 = clock.now_ms();
    for (int i = 0; i < inner; ++i) f();
    return (clock.now_ms() - t0) / inner;
  };
  for (int rep = 0; rep < reps; ++rep) {
    double ta = 0, tb = 0;
    if (rep % 2 == 0) {
      ta = sample(a);
      after_a();
      tb = sample(b);
      after_b();
    } else {
      tb = sample(b);
      after_b();
      ta = sample(a);
      after_a();
    }
    t.a_ms.push_back(ta);
    t.b_ms.push_back(tb);
    t.ratio.push_back(ta / tb);
  }
  return t;
}

}  // namespace aqua_examples
