// aqua_compare: dense vs AQUA attention, side by side, on identical synthetic data.
//
// In one process: first the machine's memory-read bandwidth (vectorised sum over 1 GiB, best of
// 5, with the requested thread count), then for each configuration dense and AQUA run interleaved
// (A B A B ..., after warm-up) and the medians are reported. Decode compares dense_decode over the
// tiled cache (every tile) with aqua_decode on the same cache; prefill compares dense_prefill
// (Eigen GEMM scores on token-major keys) with aqua_prefill on a cache holding the same keys.
//
// Synthetic data: queries and keys are given in projected coordinates (identity projection) with
// per-dimension standard deviation exp(-i / TAU), i the projected dim; values standard normal.
//
// Usage: aqua_compare [--mode decode|prefill] [--n 32768[,..]] [--m M] [--d 128] [--k 32,64,96]
//                     [--hq 32] [--hkv 8] [--threads 1] [--select per-head,group,tile]
//                     [--tile 32] [--spectrum 32] [--reps 10] [--json] [--clock wall|cpu]
// --clock cpu times with process CPU time / threads instead of wall time: on a machine shared
// with other jobs it leaves out the time the process was descheduled.
#include <aqua/attention.hpp>
#include <aqua/kv_cache.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include <time.h>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define COMPARE_X86 1
#else
#define COMPARE_X86 0
#endif

namespace {

using aqua::index_t;
using clock_type = std::chrono::steady_clock;

struct config {
  std::string mode = "decode";
  std::vector<index_t> n = {32768};
  index_t m = 0;  // prefill queries; 0 means M = N
  index_t d = 128, hq = 32, hkv = 8, tile = 32;
  std::vector<index_t> k = {32, 64, 96};
  int threads = 1, reps = 10;
  std::vector<std::string> select = {"per-head", "group", "tile"};
  double spectrum = 32;
  bool json = false;
  bool cpu_clock = false;  // --clock cpu: process CPU time / threads (robust on a shared machine)
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr,
               "aqua_compare: %s\nusage: aqua_compare [--mode decode|prefill] [--n N[,N..]] [--m M] [--d D] "
               "[--k K[,K..]] [--hq HQ] [--hkv HKV] [--threads T] [--select per-head|group|tile[,..]] "
               "[--tile T] [--spectrum TAU] [--reps R] [--json]\n",
               msg);
  std::exit(2);
}

config parse(int argc, char** argv) {
  config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    auto ints = [&](const std::string& s) {
      std::vector<index_t> v;
      for (const auto& x : split(s)) v.push_back(std::stoll(x));
      if (v.empty()) usage(("empty list for " + a).c_str());
      return v;
    };
    if (a == "--mode") c.mode = next();
    else if (a == "--n") c.n = ints(next());
    else if (a == "--m") c.m = std::stoll(next());
    else if (a == "--d") c.d = std::stoll(next());
    else if (a == "--k") c.k = ints(next());
    else if (a == "--hq") c.hq = std::stoll(next());
    else if (a == "--hkv") c.hkv = std::stoll(next());
    else if (a == "--tile") c.tile = std::stoll(next());
    else if (a == "--threads") c.threads = std::stoi(next());
    else if (a == "--select") c.select = split(next());
    else if (a == "--spectrum") c.spectrum = std::stod(next());
    else if (a == "--reps") c.reps = std::stoi(next());
    else if (a == "--json") c.json = true;
    else if (a == "--clock") {
      const std::string v = next();
      if (v != "cpu" && v != "wall") usage("--clock takes cpu or wall");
      c.cpu_clock = v == "cpu";
    }
    else if (a == "--help" || a == "-h") usage("help");
    else usage(("unknown flag " + a).c_str());
  }
  if (c.mode != "decode" && c.mode != "prefill") usage("--mode must be decode or prefill");
  for (const auto& s : c.select)
    if (s != "per-head" && s != "group" && s != "tile") usage("--select takes per-head, group or tile");
  if (c.reps < 1 || c.threads < 1) usage("--reps and --threads must be >= 1");
  return c;
}

aqua::selection_mode mode_of(const std::string& s) {
  return s == "per-head" ? aqua::selection_mode::per_head
                         : s == "group" ? aqua::selection_mode::group : aqua::selection_mode::tile;
}

bool g_cpu_clock = false;
int g_threads = 1;

double now_ms() {
  if (g_cpu_clock) {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6) / g_threads;
  }
  return std::chrono::duration<double, std::milli>(clock_type::now().time_since_epoch()).count();
}

#if COMPARE_X86
__attribute__((target("avx2"))) float sum_avx2(const float* x, std::size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (std::size_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(x + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(x + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(x + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(x + i + 24));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

float sum_floats(const float* x, std::size_t n) {
#if COMPARE_X86
  if (__builtin_cpu_supports("avx2")) return sum_avx2(x, n);
#endif
  float a[8] = {};
  for (std::size_t i = 0; i + 8 <= n; i += 8)
    for (int u = 0; u < 8; ++u) a[u] += x[i + std::size_t(u)];
  return a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7];
}

/// Best of 5 read passes over 1 GiB (split across `threads`), in GB/s (1e9 bytes).
double measure_bandwidth(int threads) {
  const std::size_t count = std::size_t(1) << 28;  // 2^28 floats = 1 GiB
  auto buffer = aqua::detail::allocate_zeroed(static_cast<index_t>(count));
  float* x = buffer.get();
  for (std::size_t i = 0; i < count; i += 1024) x[i] = 1.0f;
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<float> partial(static_cast<std::size_t>(threads));
    const double t0 = now_ms();
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t)
      pool.emplace_back([&, t] {
        const std::size_t b = count * std::size_t(t) / std::size_t(threads) / 64 * 64;
        const std::size_t e = count * std::size_t(t + 1) / std::size_t(threads) / 64 * 64;
        partial[std::size_t(t)] = sum_floats(x + b, e - b);
      });
    partial[0] = sum_floats(x, count / std::size_t(threads) / 64 * 64);
    for (auto& th : pool) th.join();
    const double s = (now_ms() - t0) * 1e-3;
    for (float p : partial) sink = sink + p;
    best = std::max(best, double(count * sizeof(float)) / s / 1e9);
  }
  return best;
}

std::vector<float> spectrum_data(index_t rows, index_t d, double tau, unsigned seed) {
  std::vector<float> x(static_cast<std::size_t>(rows * d));
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  for (index_t r = 0; r < rows; ++r)
    for (index_t i = 0; i < d; ++i)
      x[std::size_t(r * d + i)] = nd(rng) * static_cast<float>(std::exp(-double(i) / tau));
  return x;
}

std::vector<float> normal_data(std::size_t count, unsigned seed) {
  std::vector<float> x(count);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  return x;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff += double(a[i] - ref[i]) * double(a[i] - ref[i]);
    norm += double(ref[i]) * double(ref[i]);
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-300);
}

template <class F>
double time_ms(F&& f) {
  const double t0 = now_ms();
  f();
  return now_ms() - t0;
}

struct result {
  std::string mode, select;
  index_t n = 0, m = 0, d = 0, k = 0, hq = 0, hkv = 0;
  int threads = 1;
  double dense_ms = 0, aqua_ms = 0, speedup = 0, dense_gbps = 0, aqua_gbps = 0, bandwidth = 0, rel_err = 0,
         key_fraction = 0;
  double dense_score_ms = -1, aqua_score_ms = -1, score_speedup = -1;
};

void print(const config& c, const result& r, bool header) {
  if (c.json) {
    std::printf("{\"mode\":\"%s\",\"n\":%lld,\"d\":%lld,\"k\":%lld,\"hq\":%lld,\"hkv\":%lld,\"threads\":%d,"
                "\"select\":\"%s\",\"dense_ms\":%.4f,\"aqua_ms\":%.4f,\"speedup\":%.4f,\"dense_gbps\":%.3f,"
                "\"aqua_gbps\":%.3f,\"bandwidth_gbps\":%.3f,\"rel_err\":%.6g,\"key_fraction_read\":%.4f",
                r.mode.c_str(), (long long)r.n, (long long)r.d, (long long)r.k, (long long)r.hq, (long long)r.hkv,
                r.threads, r.select.c_str(), r.dense_ms, r.aqua_ms, r.speedup, r.dense_gbps, r.aqua_gbps, r.bandwidth,
                r.rel_err, r.key_fraction);
    if (r.mode == "prefill")
      std::printf(",\"m\":%lld,\"dense_score_ms\":%.4f,\"aqua_score_ms\":%.4f,\"score_speedup\":%.4f", (long long)r.m,
                  r.dense_score_ms, r.aqua_score_ms, r.score_speedup);
    std::printf("}\n");
  } else {
    if (header) {
      std::printf("%-8s %6s %4s %4s %4s/%-3s %2s %-9s %9s %9s %7s %8s %8s %8s %9s %6s", "mode", "n", "d", "k", "hq",
                  "hkv", "T", "select", "dense_ms", "aqua_ms", "speedup", "dense_GB", "aqua_GB", "bw_GB/s", "rel_err",
                  "keyfr");
      if (r.mode == "prefill") std::printf(" %9s %9s %7s", "dscore_ms", "ascore_ms", "s_spdup");
      std::printf("\n");
    }
    std::printf("%-8s %6lld %4lld %4lld %4lld/%-3lld %2d %-9s %9.3f %9.3f %7.3f %8.2f %8.2f %8.2f %9.3g %6.3f",
                r.mode.c_str(), (long long)r.n, (long long)r.d, (long long)r.k, (long long)r.hq, (long long)r.hkv,
                r.threads, r.select.c_str(), r.dense_ms, r.aqua_ms, r.speedup, r.dense_gbps, r.aqua_gbps, r.bandwidth,
                r.rel_err, r.key_fraction);
    if (r.mode == "prefill") std::printf(" %9.3f %9.3f %7.3f", r.dense_score_ms, r.aqua_score_ms, r.score_speedup);
    std::printf("\n");
  }
  std::fflush(stdout);
}

void run_decode(const config& c, double bandwidth) {
  bool header = true;
  for (index_t n : c.n) {
    aqua::kv_cache_options opt;
    opt.tile_dims = c.tile;
    opt.capacity = n;
    aqua::kv_cache cache(c.hkv, c.d, opt);
    {
      // Keys in projected coordinates (decaying spectrum), values standard normal; appended in
      // pieces so the raw copies stay small.
      const index_t piece = 4096;
      for (index_t t0 = 0; t0 < n; t0 += piece) {
        const index_t cnt = std::min(piece, n - t0);
        auto keys = spectrum_data(c.hkv * cnt, c.d, c.spectrum, unsigned(1000 + t0));
        auto values = normal_data(std::size_t(c.hkv * cnt * c.d), unsigned(2000 + t0));
        cache.append(aqua::make_view(static_cast<const float*>(keys.data()), c.hkv, cnt, c.d),
                     aqua::make_view(static_cast<const float*>(values.data()), c.hkv, cnt, c.d));
      }
    }
    const auto q = spectrum_data(c.hq, c.d, c.spectrum, 7);
    const auto qv = aqua::make_view(q.data(), c.hq, c.d);
    std::vector<float> dense_out(std::size_t(c.hq * c.d)), aqua_out(dense_out.size());
    aqua::aqua_workspace dense_ws, aqua_ws;
    aqua::attention_options dopt;
    dopt.threads = c.threads;
    auto dense = [&] { aqua::dense_decode(qv, cache, aqua::make_view(dense_out.data(), c.hq, c.d), dopt, &dense_ws); };
    const double key_bytes = double(cache.key_bytes()), value_bytes = double(cache.value_bytes());
    for (const auto& sel : c.select)
      for (index_t k : c.k) {
        aqua::aqua_options aopt;
        aopt.mode = mode_of(sel);
        aopt.threads = c.threads;
        aopt.workspace = &aqua_ws;
        auto run_aqua = [&] {
          aqua::aqua_decode(qv, cache, k, aqua::make_view(aqua_out.data(), c.hq, c.d), aopt);
        };
        // Untimed: the fraction of key tiles read, from the profile.
        aqua::attention_profile prof;
        aopt.profile = &prof;
        run_aqua();
        aopt.profile = nullptr;
        for (int w = 0; w < 2; ++w) {
          dense();
          run_aqua();
        }
        std::vector<double> td, ta, ratio;
        for (int rep = 0; rep < c.reps; ++rep) {
          const double a = time_ms(dense), b = time_ms(run_aqua);
          td.push_back(a);
          ta.push_back(b);
          ratio.push_back(a / b);
        }
        result r;
        r.mode = "decode";
        r.select = sel;
        r.n = n;
        r.d = c.d;
        r.k = k;
        r.hq = c.hq;
        r.hkv = c.hkv;
        r.threads = c.threads;
        r.dense_ms = median(td);
        r.aqua_ms = median(ta);
        r.speedup = median(ratio);
        r.key_fraction = prof.key_fraction_read;
        r.dense_gbps = (key_bytes + value_bytes) / (r.dense_ms * 1e-3) / 1e9;
        r.aqua_gbps = (key_bytes * r.key_fraction + value_bytes) / (r.aqua_ms * 1e-3) / 1e9;
        r.bandwidth = bandwidth;
        r.rel_err = rel_l2(aqua_out, dense_out);
        print(c, r, header);
        header = false;
      }
  }
}

void run_prefill(const config& c, double bandwidth) {
  bool header = true;
  for (index_t n : c.n) {
    const index_t m = c.m > 0 ? std::min(c.m, n) : n;
    aqua::kv_cache_options opt;
    opt.tile_dims = c.tile;
    opt.capacity = n;
    aqua::kv_cache cache(c.hkv, c.d, opt);
    const auto keys = spectrum_data(c.hkv * n, c.d, c.spectrum, 11);
    const auto values = normal_data(std::size_t(c.hkv * n * c.d), 12);
    const auto kview = aqua::make_view(keys.data(), c.hkv, n, c.d);
    const auto vview = aqua::make_view(values.data(), c.hkv, n, c.d);
    cache.append(kview, vview);
    const auto q = spectrum_data(c.hq * m, c.d, c.spectrum, 13);
    const auto qv = aqua::make_view(q.data(), c.hq, m, c.d);
    std::vector<float> dense_out(std::size_t(c.hq * m * c.d)), aqua_out(dense_out.size());
    aqua::attention_profile dprof, aprof;
    aqua::attention_options dopt;
    dopt.threads = c.threads;
    dopt.profile = &dprof;
    auto dense = [&] {
      aqua::dense_prefill<float>(qv, kview, vview, aqua::make_view(dense_out.data(), c.hq, m, c.d), dopt);
    };
    const double bytes = double(cache.key_bytes() + cache.value_bytes());
    aqua::aqua_workspace ws;
    for (const auto& sel : c.select)
      for (index_t k : c.k) {
        aqua::aqua_options aopt;
        aopt.mode = mode_of(sel);
        aopt.threads = c.threads;
        aopt.workspace = &ws;
        aopt.profile = &aprof;
        auto run_aqua = [&] {
          aqua::aqua_prefill(qv, cache, aqua::selection_spec::top_k(k), aqua::make_view(aqua_out.data(), c.hq, m, c.d),
                             aopt);
        };
        dense();
        run_aqua();
        std::vector<double> td, ta, ratio, sd, sa, sratio;
        for (int rep = 0; rep < c.reps; ++rep) {
          const double a = time_ms(dense);
          const double ds = (dprof.score_seconds) * 1e3 / c.threads;
          const double b = time_ms(run_aqua);
          const double as = (aprof.score_seconds + aprof.select_seconds) * 1e3 / c.threads;
          td.push_back(a);
          ta.push_back(b);
          ratio.push_back(a / b);
          sd.push_back(ds);
          sa.push_back(as);
          sratio.push_back(ds / as);
        }
        result r;
        r.mode = "prefill";
        r.select = sel;
        r.n = n;
        r.m = m;
        r.d = c.d;
        r.k = k;
        r.hq = c.hq;
        r.hkv = c.hkv;
        r.threads = c.threads;
        r.dense_ms = median(td);
        r.aqua_ms = median(ta);
        r.speedup = median(ratio);
        r.dense_score_ms = median(sd);
        r.aqua_score_ms = median(sa);
        r.score_speedup = median(sratio);
        r.key_fraction = double(k) / double(c.d);
        r.dense_gbps = bytes / (r.dense_ms * 1e-3) / 1e9;
        r.aqua_gbps = bytes / (r.aqua_ms * 1e-3) / 1e9;
        r.bandwidth = bandwidth;
        r.rel_err = rel_l2(aqua_out, dense_out);
        print(c, r, header);
        header = false;
      }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const config c = parse(argc, argv);
  g_cpu_clock = c.cpu_clock;
  g_threads = c.threads;
  const double bandwidth = measure_bandwidth(c.threads);
  if (!c.json)
    std::printf("memory-read bandwidth (sum over 1 GiB, best of 5, %d thread%s, %s clock): %.2f GB/s\n", c.threads,
                c.threads == 1 ? "" : "s", c.cpu_clock ? "cpu" : "wall", bandwidth);
  try {
    if (c.mode == "decode") run_decode(c, bandwidth);
    else run_prefill(c, bandwidth);
  } catch (const aqua::error& e) {
    std::fprintf(stderr, "aqua_compare: %s\n", e.what());
    return 1;
  }
  return 0;
}
