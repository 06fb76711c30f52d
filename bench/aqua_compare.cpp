// aqua_compare: dense vs AQUA attention, side by side, on identical synthetic data.
//
// In one process: first the machine's memory-read bandwidth (vectorised sum over 1 GiB, best of
// 5, with the requested thread count), then for each configuration dense and AQUA run in
// interleaved pairs (after warm-up; the order alternates) and the medians are reported. Decode
// compares dense_decode over the tiled cache (every tile) with aqua_decode on the same cache;
// prefill compares dense_prefill (Eigen GEMM scores on token-major keys) with aqua_prefill on a
// cache holding the same keys.
//
// Synthetic data (tools/aqua_tools/synthetic_data.hpp, shared with aqua_decode): in projected
// coordinates, queries and keys have per-dimension standard deviation exp(-i / TAU), i the
// projected dim; values are standard normal. --basis identity (default) hands the cache keys that
// are already projected (no query projection at run time); --basis random rotates queries and keys
// by a random orthogonal basis per KV head, so AQUA pays q~ = q P on every call, as in a model.
//
// --mode views: exact dense decode over an engine's own token-major buffers (aqua::dense_decode on
// views [Hkv, N, d] laid out [N][Hkv][d] as llama.cpp keeps them, elements of --kv-type) against
// dense decode over the tiled kv_cache holding the same tokens, interleaved; speedup is cache time
// / views time (1: the views path is as fast as the cache path).
// Usage: aqua_compare [--mode decode|prefill|views] [--n 32768[,..]] [--m M] [--d 128] [--k 32,64,96]
//                     [--hq 32] [--hkv 8] [--threads 1] [--select per-head,group,tile]
//                     [--tile 32] [--spectrum 32] [--reps 10] [--json] [--clock wall|cpu]
//                     [--basis identity|random] [--baseline projected|plain] [--budget TOKENS]
//                     [--isa auto|avx2|portable] [--prefetch auto|l1|l2] [--probe-bytes 1G]
//                     [--shards P[,..]] [--batch S] [--window W] [--softcap C]
//        aqua_compare --sweep-break-even [--k 96,32] [--select tile] [--hq 32] [--hkv 8]
//                     [--sweep-n 64:32768] [--baseline plain|projected|reference] [--threads 1]
//                     [--reps 15] [--basis random] [--json] [--clock cpu] ...
// --isa avx2 / portable run both sides on narrower kernels than the CPU has (auto: AVX-512 where
// present), to measure what the wider kernels buy. --prefetch l1 / l2 overrides the CPU vendor's
// decode prefetch, to compare the two on one host.
// --probe-bytes sizes the bandwidth probe's buffer (default 1G; each sample still reads 1 GiB): with
// a buffer the size of a small cache (e.g. --n 2048 --probe-bytes 16M) both sides and the probe read
// from the same cache level, which shows whether the kernels keep up with a faster source than DRAM.
// --clock cpu times with process CPU time / threads instead of wall time: on a machine shared
// with other jobs it leaves out the time the process was descheduled.
// --budget B (decode): AQUA runs on a second cache filled with the same N tokens, on which 32
// warm-up decode steps (same k and selection) accumulate H2O scores before one eviction down to B
// tokens per KV head (B/2 recent, B/2 heavy hitters; aqua/h2o.hpp); dense stays exact attention
// over the full cache, so rel_err is AQUA + H2O against full dense attention. With a budget the
// queries (warm-up and timed) are m + 0.5 z: a persistent direction m per head plus fresh noise,
// as queries of a head are correlated over the steps of a real model.
// --shards P[,..] (decode): the N tokens are split into P contiguous shards (sizes differ by at most
// one), each in its own kv_cache with the whole cache's bases, tile width and storage; the sharded
// side is P decode calls one after another, each writing its output and lse, then
// aqua::merge_attention (single-threaded); the whole side is one call over the full cache. Both
// run in interleaved pairs (after warm-up; the order alternates), for dense_decode over the caches
// (once per N and P) and for aqua_decode with each k and selection mode. Reported: the whole and
// the sharded time (medians), the overhead (median of sharded / whole per pair), the merge alone
// (median of the merges inside the timed sharded samples) and rel_err of the merged output against
// the whole one (float rounding: AQUA selects from the query alone, so every shard keeps the dims
// the whole call keeps). Rows have mode "shards"; not with --budget, --sweep-break-even or
// --baseline plain (both sides read AQUA's own caches).
// --window W, --softcap C (decode, with --batch too): both sides attend with a sliding window of
// the last W tokens (the bytes counted are still the whole cache's) or logit soft-capping
// cap * tanh(s / cap); either makes both sides take the chunked kernel instead of the fused one.
// --batch S (decode): S sequences of N tokens each (different tokens, the same bases), each in its
// own kv_cache; dense_decode_batch against aqua_decode_batch over the S caches, one call per
// sample, interleaved as above. GB/s count the bytes of all S caches; rows carry "batch". Not with
// --budget, --shards, --sweep-break-even or --baseline plain.
// --sweep-break-even (decode): for each k and selection mode, dense against AQUA at N = 64, 128,
// .., 32768 (--sweep-n MIN:MAX, doubling), then at three points (quarter octaves) between the last
// N where AQUA lost and the next; reports the measured break-even (the smallest measured N from
// which AQUA is faster at every larger measured N, by the median of interleaved pairs) next to the
// cost model's N* (include/aqua/cost_model.hpp) for the same configuration: FLOPs and bytes, key
// projection amortised (the cache is filled before timing), tiles of --tile dims, one selection per
// group for group and tile, the per-head union bound for per-head. Short calls are repeated within
// a sample so each sample lasts about a millisecond. --json: one line per configuration.
// The dense side of the sweep (--baseline): plain (default) is dense_decode over a cache without
// projection holding the raw keys, the same tiled kernel without q~ = q P or reading P: what an
// engine not using AQUA runs; projected is dense_decode over AQUA's own projected cache (it projects
// the query too, so that fixed cost cancels); reference is the exact Eigen kernel on token-major
// raw keys and values (slower than the tiled kernel: it measures the kernels, not the method).
// In decode mode --baseline takes plain or projected (the default, for comparability with earlier
// tables); with --basis identity both are the same cache.
#include <aqua/attention.hpp>
#include <aqua/cost_model.hpp>
#include <aqua/h2o.hpp>
#include <aqua/kv_cache.hpp>
#include <aqua/merge.hpp>

#include "aqua_tools/buffer.hpp"
#include "aqua_tools/measure.hpp"
#include "aqua_tools/synthetic_data.hpp"
#include "compare_cli.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define COMPARE_X86 1
#else
#define COMPARE_X86 0
#endif

namespace {

using aqua::index_t;
using aqua_examples::bench_clock;

using aqua_compare_cli::config;

aqua::selection_mode mode_of(const std::string& s) {
  return s == "per-head" ? aqua::selection_mode::per_head
         : s == "group"  ? aqua::selection_mode::group
                         : aqua::selection_mode::tile;
}

/// The synthetic layer of one run: the bases (empty: identity) and the key spectrum.
struct synthetic {
  const config& c;
  std::mt19937 bases_rng{5};
  std::vector<Eigen::MatrixXf> bases;
  std::vector<float> spectrum;
  explicit synthetic(const config& cfg)
      : c(cfg), spectrum(aqua_examples::decaying_spectrum(cfg.d, cfg.spectrum)) {
    if (c.random_basis) bases = aqua_examples::random_orthogonal_bases(c.hkv, c.d, bases_rng);
  }
  aqua::kv_cache make_cache(index_t capacity) const {
    return make_cache(capacity, c.key_type, c.value_type, !bases.empty());
  }
  aqua::kv_cache make_cache(index_t capacity, aqua::storage_type key_type, aqua::storage_type value_type,
                            bool projected) const {
    aqua::kv_cache_options opt;
    opt.tile_dims = c.tile;
    opt.capacity = capacity;
    opt.key_type = key_type;
    opt.value_type = value_type;
    if (!projected) return aqua::kv_cache(c.hkv, c.d, opt);
    return aqua::kv_cache(aqua_examples::basis_views(bases), opt);
  }
  std::vector<float> queries(index_t rows_per_head, unsigned seed) const {
    // [Hq, rows, d]: rotate each head's rows by its group's basis.
    auto q = aqua_examples::spectrum_rows(c.hq * rows_per_head, c.d, c.spectrum, seed);
    if (!bases.empty())
      for (index_t h = 0; h < c.hq; ++h)
        aqua_examples::rotate_rows_to_raw(bases[std::size_t(h / (c.hq / c.hkv))], rows_per_head,
                                          q.data() + h * rows_per_head * c.d);
    return q;
  }
};

bench_clock g_clock;

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

/// Best of 5 samples, each reading 1 GiB (split across `threads`), in GB/s (1e9 bytes): one pass
/// over a 1 GiB buffer by default, or repeated passes over a buffer of `bytes` (--probe-bytes: a
/// buffer that fits in a cache level measures that level, for comparison with a decode whose cache
/// is as small).
double measure_bandwidth(const aqua_examples::bench_clock& clock, int threads, std::size_t bytes) {
  const std::size_t count = bytes / sizeof(float) / 64 * 64;
  const std::size_t passes = ((std::size_t(1) << 30) + bytes - 1) / bytes;
  auto buffer = aqua_examples::zeroed_buffer(count * sizeof(float), true, "the bandwidth probe");
  auto* x = reinterpret_cast<float*>(buffer.get());
  for (std::size_t i = 0; i < count; i += 1024) x[i] = 1.0f;
  double best = 0;
  volatile float sink = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<float> partial(static_cast<std::size_t>(threads));
    const double t0 = clock.now_ms();
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t)
      pool.emplace_back([&, t] {
        const std::size_t b = count * std::size_t(t) / std::size_t(threads) / 64 * 64;
        const std::size_t e = count * std::size_t(t + 1) / std::size_t(threads) / 64 * 64;
        for (std::size_t pass = 0; pass < passes; ++pass) partial[std::size_t(t)] += sum_floats(x + b, e - b);
      });
    for (std::size_t pass = 0; pass < passes; ++pass)
      partial[0] += sum_floats(x, count / std::size_t(threads) / 64 * 64);
    for (auto& th : pool) th.join();
    const double s = (clock.now_ms() - t0) * 1e-3;
    for (float p : partial) sink = sink + p;
    best = std::max(best, double(passes * count * sizeof(float)) / s / 1e9);
  }
  return best;
}

std::string byte_text(std::size_t bytes) {
  char buf[32];
  if (bytes % (std::size_t(1) << 30) == 0)
    std::snprintf(buf, sizeof buf, "%zu GiB", bytes >> 30);
  else if (bytes % (std::size_t(1) << 20) == 0)
    std::snprintf(buf, sizeof buf, "%zu MiB", bytes >> 20);
  else
    std::snprintf(buf, sizeof buf, "%zu bytes", bytes);
  return buf;
}

/// The kernels that run on this CPU under --isa.
const char* kernel_isa() {
  return aqua::isa_name(aqua::active_isa());
}

/// The decode prefetch in effect under --prefetch (l1 or l2).
const char* decode_prefetch_name() {
  return aqua::decode_prefetch_name(aqua::active_decode_prefetch());
}

struct result {
  std::string mode, select;
  index_t n = 0, m = 0, d = 0, k = 0, hq = 0, hkv = 0;
  int threads = 1;
  double dense_ms = 0, aqua_ms = 0, speedup = 0, dense_gbps = 0, aqua_gbps = 0, bandwidth = 0, rel_err = 0,
         key_fraction = 0;
  double dense_score_ms = -1, aqua_score_ms = -1, score_speedup = -1;
  double aqua_select_ms = -1;  // prefill: the part of aqua_score_ms spent projecting and selecting
  index_t budget = 0;
  index_t batch = 0;  // decode: sequences per call
  std::string basis = "identity";
  double storage_err = -1;  // decode, 16-bit storage: dense over this cache against dense over f32
};

/// "bf16", or "bf16/f16" when keys and values are stored differently.
std::string storage_label(const config& c) {
  if (c.key_type == c.value_type) return aqua::storage_name(c.key_type);
  return std::string(aqua::storage_name(c.key_type)) + "/" + aqua::storage_name(c.value_type);
}

void print(const config& c, const result& r, bool header) {
  if (c.json) {
    std::printf(
        "{\"mode\":\"%s\",\"n\":%lld,\"d\":%lld,\"k\":%lld,\"hq\":%lld,\"hkv\":%lld,\"threads\":%d,"
        "\"select\":\"%s\",\"dense_ms\":%.4f,\"aqua_ms\":%.4f,\"speedup\":%.4f,\"dense_gbps\":%.3f,"
        "\"aqua_gbps\":%.3f,\"bandwidth_gbps\":%.3f,\"rel_err\":%.6g,\"key_fraction_read\":%.4f",
        r.mode.c_str(), (long long)r.n, (long long)r.d, (long long)r.k, (long long)r.hq, (long long)r.hkv,
        r.threads, r.select.c_str(), r.dense_ms, r.aqua_ms, r.speedup, r.dense_gbps, r.aqua_gbps, r.bandwidth,
        r.rel_err, r.key_fraction);
    if (r.mode == "prefill")
      std::printf(
          ",\"m\":%lld,\"dense_score_ms\":%.4f,\"aqua_score_ms\":%.4f,\"score_speedup\":%.4f,"
          "\"aqua_select_ms\":%.4f",
          (long long)r.m, r.dense_score_ms, r.aqua_score_ms, r.score_speedup, r.aqua_select_ms);
    if (r.budget > 0) std::printf(",\"budget\":%lld", (long long)r.budget);
    if (r.batch > 0) std::printf(",\"batch\":%lld", (long long)r.batch);
    if (c.window > 0) std::printf(",\"window\":%lld", (long long)c.window);
    if (c.softcap > 0) std::printf(",\"softcap\":%g", c.softcap);
    if (r.storage_err >= 0) std::printf(",\"storage_err\":%.6g", r.storage_err);
    std::printf(",\"key_type\":\"%s\",\"value_type\":\"%s\"", aqua::storage_name(c.key_type),
                aqua::storage_name(c.value_type));
    std::printf(
        ",\"basis\":\"%s\",\"baseline\":\"%s\",\"clock\":\"%s\",\"isa\":\"%s\",\"probe_bytes\":%zu,"
        "\"prefetch\":\"%s\"}\n",
        r.basis.c_str(), c.baseline.c_str(), c.cpu_clock ? "cpu" : "wall", kernel_isa(), c.probe_bytes,
        decode_prefetch_name());
  } else {
    if (header) {
      std::printf("%-8s %6s %4s %4s %4s/%-3s %2s %-9s %9s %9s %7s %8s %8s %8s %9s %6s", "mode", "n", "d", "k",
                  "hq", "hkv", "T", "select", "dense_ms", "aqua_ms", "speedup", "dense_GB", "aqua_GB",
                  "bw_GB/s", "rel_err", "keyfr");
      if (r.mode == "prefill")
        std::printf(" %9s %9s %7s %9s", "dscore_ms", "ascore_ms", "s_spdup", "asel_ms");
      if (r.budget > 0) std::printf(" %7s", "budget");
      if (r.batch > 1) std::printf(" %5s", "batch");
      std::printf(" %-8s", "kv");
      if (r.storage_err >= 0) std::printf(" %9s", "store_err");
      std::printf("\n");
    }
    std::printf(
        "%-8s %6lld %4lld %4lld %4lld/%-3lld %2d %-9s %9.3f %9.3f %7.3f %8.2f %8.2f %8.2f %9.3g %6.3f",
        r.mode.c_str(), (long long)r.n, (long long)r.d, (long long)r.k, (long long)r.hq, (long long)r.hkv,
        r.threads, r.select.c_str(), r.dense_ms, r.aqua_ms, r.speedup, r.dense_gbps, r.aqua_gbps, r.bandwidth,
        r.rel_err, r.key_fraction);
    if (r.mode == "prefill")
      std::printf(" %9.3f %9.3f %7.3f %9.3f", r.dense_score_ms, r.aqua_score_ms, r.score_speedup,
                  r.aqua_select_ms);
    if (r.budget > 0) std::printf(" %7lld", (long long)r.budget);
    if (r.batch > 1) std::printf(" %5lld", (long long)r.batch);
    std::printf(" %-8s", storage_label(c).c_str());
    if (r.storage_err >= 0) std::printf(" %9.3g", r.storage_err);
    std::printf("\n");
  }
  std::fflush(stdout);
}

/// One decode configuration, dense on `cache` against AQUA on `acache` (the same tokens, or fewer
/// after eviction), timed by the shared interleaved loop.
struct decode_measurement {
  aqua_examples::pair_times times;
  double key_fraction = 0, rel_err = 0;
  int inner = 1;
};

/// The options of both sides of a decode row (--threads, --window, --softcap; AQUA's mode), each
/// with its own workspace, reused call after call as an engine reuses its scratch.
struct decode_options {
  aqua::aqua_workspace dense_ws, aqua_ws;
  aqua::attention_options dense;
  aqua::aqua_options aqua;
  decode_options(const config& c, const std::string& sel) {
    for (aqua::attention_options* o : {&dense, static_cast<aqua::attention_options*>(&aqua)}) {
      o->threads = c.threads;
      o->window = c.window;
      o->softcap = c.softcap;
    }
    dense.workspace = &dense_ws;
    aqua.workspace = &aqua_ws;
    aqua.mode = mode_of(sel);
  }
  decode_options(const decode_options&) = delete;
  decode_options& operator=(const decode_options&) = delete;
};

/// A row from interleaved times: the dense side read dense_bytes, the AQUA side aqua_bytes.
result timed_row(const config& c, const char* mode, const std::string& sel, index_t n, index_t k,
                 const aqua_examples::pair_times& times, double key_fraction, double dense_bytes,
                 double aqua_bytes, double bandwidth) {
  result r;
  r.mode = mode;
  r.select = sel;
  r.n = n;
  r.d = c.d;
  r.k = k;
  r.hq = c.hq;
  r.hkv = c.hkv;
  r.threads = c.threads;
  r.dense_ms = times.median_a();
  r.aqua_ms = times.median_b();
  r.speedup = times.median_ratio();
  r.key_fraction = key_fraction;
  r.dense_gbps = dense_bytes / (r.dense_ms * 1e-3) / 1e9;
  r.aqua_gbps = aqua_bytes / (r.aqua_ms * 1e-3) / 1e9;
  r.bandwidth = bandwidth;
  r.basis = c.random_basis ? "random" : "identity";
  return r;
}

/// A decode row: the AQUA side read key_fraction of its cache's key bytes and all its value bytes.
result decode_row(const config& c, const std::string& sel, index_t n, index_t k,
                  const aqua_examples::pair_times& times, double key_fraction, double dense_bytes,
                  double aqua_key_bytes, double aqua_value_bytes, double bandwidth) {
  return timed_row(c, "decode", sel, n, k, times, key_fraction, dense_bytes,
                   aqua_key_bytes * key_fraction + aqua_value_bytes, bandwidth);
}

/// The dense side: over the tiled cache (every tile; the same engine as AQUA, query projected
/// too), or (raw_keys set) the exact reference kernel over token-major raw keys and values
/// [Hkv, N, d] with row stride `raw_stride` tokens, as an engine without AQUA would hold them.
struct dense_side {
  const aqua::kv_cache* cache = nullptr;
  const float* raw_keys = nullptr;
  const float* raw_values = nullptr;
  index_t raw_stride = 0;
};

decode_measurement measure_decode(const config& c, const dense_side& base, const aqua::kv_cache& acache,
                                  const std::vector<float>& q, index_t k, const std::string& sel,
                                  double min_sample_ms) {
  const auto qv = aqua::make_view(q.data(), c.hq, c.d);
  std::vector<float> dense_out(std::size_t(c.hq * c.d)), aqua_out(dense_out.size());
  decode_options opts(c, sel);
  aqua::attention_options& dopt = opts.dense;
  aqua::aqua_options& aopt = opts.aqua;
  const index_t n = acache.size();
  const std::array<index_t, 3> ext = {c.hkv, n, c.d}, str = {base.raw_stride * c.d, c.d, 1};
  auto dense = [&] {
    if (base.raw_keys)
      aqua::dense_decode<float>(qv, aqua::tensor3_view<const float>(base.raw_keys, ext, str),
                                aqua::tensor3_view<const float>(base.raw_values, ext, str),
                                aqua::make_view(dense_out.data(), c.hq, c.d), dopt);
    else
      aqua::dense_decode(qv, *base.cache, aqua::make_view(dense_out.data(), c.hq, c.d), dopt);
  };
  auto run_aqua = [&] {
    aqua::aqua_decode(qv, acache, k, aqua::make_view(aqua_out.data(), c.hq, c.d), aopt);
  };
  decode_measurement m;
  // Untimed: the fraction of key tiles read, from the profile.
  aqua::attention_profile prof;
  aopt.profile = &prof;
  run_aqua();
  aopt.profile = nullptr;
  m.key_fraction = prof.key_fraction_read;
  if (min_sample_ms > 0) {
    dense();
    const double once = std::max(g_clock.time_ms(dense), 1e-4);
    m.inner = int(std::min(4096.0, std::max(1.0, std::ceil(min_sample_ms / once))));
  }
  m.times = aqua_examples::time_interleaved(g_clock, c.reps, 2, m.inner, dense, run_aqua);
  m.rel_err = aqua_examples::rel_l2(aqua_out, dense_out);
  return m;
}

void run_decode(const config& c, double bandwidth) {
  bool header = true;
  const synthetic data(c);
  for (index_t n : c.n) {
    aqua::kv_cache cache = data.make_cache(n);
    // --baseline plain with a random basis: dense runs on a cache without projection holding the
    // raw keys (with the identity basis the projected cache is that cache already).
    const bool separate_plain = c.baseline == "plain" && !data.bases.empty();
    aqua::kv_cache plain = data.make_cache(separate_plain ? n : 1, c.key_type, c.value_type, false);
    auto fill = [&](aqua::kv_cache& target, bool keep_plain) {
      std::mt19937 rng(1000);  // the same seed: an evicted copy holds the same tokens
      aqua_examples::append_spectrum_tokens(rng, data.spectrum, data.bases, n, {&target},
                                            [&](const float* keys, const float* values, index_t cnt) {
                                              if (keep_plain)
                                                plain.append(aqua::make_view(keys, c.hkv, cnt, c.d),
                                                             aqua::make_view(values, c.hkv, cnt, c.d));
                                            });
    };
    fill(cache, separate_plain);
    const aqua::kv_cache& dense_cache = separate_plain ? plain : cache;
    std::unique_ptr<aqua::kv_cache> evicted;  // --budget: the AQUA side's cache after H2O eviction
    // --budget: the queries of a head share a persistent direction m, as over the steps of a real
    // model: q = m + 0.5 z, z fresh per step (the warm-up steps and the timed one).
    auto persistent_query = [&](unsigned seed) {
      auto m = data.queries(1, 7);
      const auto z = data.queries(1, seed);
      for (std::size_t i = 0; i < m.size(); ++i) m[i] += 0.5f * z[i];
      return m;
    };
    const auto q = c.budget > 0 ? persistent_query(8) : data.queries(1, 7);
    // 16-bit storage: the error it adds, dense over this cache against dense over the same tokens
    // stored in f32.
    double storage_err = -1;
    if (c.key_type != aqua::storage_type::f32 || c.value_type != aqua::storage_type::f32) {
      aqua::kv_cache f32 =
          data.make_cache(n, aqua::storage_type::f32, aqua::storage_type::f32, !data.bases.empty());
      std::mt19937 rng(1000);
      aqua_examples::append_spectrum_tokens(rng, data.spectrum, data.bases, n, {&f32},
                                            [](const float*, const float*, index_t) {});
      std::vector<float> o16(std::size_t(c.hq * c.d)), o32(o16.size());
      aqua::dense_decode(aqua::make_view(q.data(), c.hq, c.d), cache, aqua::make_view(o16.data(), c.hq, c.d));
      aqua::dense_decode(aqua::make_view(q.data(), c.hq, c.d), f32, aqua::make_view(o32.data(), c.hq, c.d));
      storage_err = aqua_examples::rel_l2(o16, o32);
    }
    const double key_bytes = double(cache.key_bytes()), value_bytes = double(cache.value_bytes());
    for (const auto& sel : c.select)
      for (index_t k : c.k) {
        if (c.budget > 0 && c.budget < n) {
          evicted = std::make_unique<aqua::kv_cache>(data.make_cache(n));
          fill(*evicted, false);
          aqua::h2o_policy policy(c.hkv, {c.budget, c.budget / 2, 0, true});
          aqua::aqua_options aopt;
          aopt.mode = mode_of(sel);
          aopt.threads = c.threads;
          std::vector<float> out(std::size_t(c.hq * c.d));
          for (int w = 0; w < 32; ++w) {
            const auto qw = persistent_query(unsigned(100 + w));
            policy.decode(aqua::make_view(qw.data(), c.hq, c.d), *evicted, aqua::selection_spec::top_k(k),
                          aqua::make_view(out.data(), c.hq, c.d), aopt);
          }
          policy.evict(*evicted);
        }
        const aqua::kv_cache& acache = evicted ? *evicted : cache;
        const decode_measurement m =
            measure_decode(c, {&dense_cache, nullptr, nullptr, 0}, acache, q, k, sel, 0.0);
        result r = decode_row(c, sel, n, k, m.times, m.key_fraction, key_bytes + value_bytes,
                              double(acache.key_bytes()), double(acache.value_bytes()), bandwidth);
        r.rel_err = m.rel_err;
        r.budget = evicted ? c.budget : 0;
        r.batch = 1;
        r.storage_err = storage_err;
        print(c, r, header);
        header = false;
      }
  }
}

/// --batch S: S caches of N tokens each, filled from seeds 1000 + s, and their queries (seeds 7 + s);
/// one batched call per side and sample.
void run_batch_decode(const config& c, double bandwidth) {
  bool header = true;
  const synthetic data(c);
  const index_t count = c.batch;
  for (index_t n : c.n) {
    std::vector<aqua::kv_cache> caches;
    std::vector<const aqua::kv_cache*> pointers;
    std::vector<float> q;
    for (index_t s = 0; s < count; ++s) {
      caches.push_back(data.make_cache(n));
      std::mt19937 rng(unsigned(1000 + s));
      aqua_examples::append_spectrum_tokens(rng, data.spectrum, data.bases, n, {&caches.back()},
                                            [](const float*, const float*, index_t) {});
      const auto qs = data.queries(1, unsigned(7 + s));
      q.insert(q.end(), qs.begin(), qs.end());
    }
    for (const auto& cache : caches) pointers.push_back(&cache);
    const auto qv = aqua::make_view(static_cast<const float*>(q.data()), count, c.hq, c.d);
    const auto cv = aqua::make_view(static_cast<const aqua::kv_cache* const*>(pointers.data()), count);
    std::vector<float> dense_out(q.size()), aqua_out(q.size());
    double key_bytes = 0, value_bytes = 0;
    for (const auto& cache : caches) {
      key_bytes += double(cache.key_bytes());
      value_bytes += double(cache.value_bytes());
    }
    for (const auto& sel : c.select)
      for (index_t k : c.k) {
        decode_options opts(c, sel);
        aqua::attention_options& dopt = opts.dense;
        aqua::aqua_options& aopt = opts.aqua;
        auto dense = [&] {
          aqua::dense_decode_batch(qv, cv, aqua::make_view(dense_out.data(), count, c.hq, c.d), dopt);
        };
        auto run_aqua = [&] {
          aqua::aqua_decode_batch(qv, cv, k, aqua::make_view(aqua_out.data(), count, c.hq, c.d), aopt);
        };
        aqua::attention_profile prof;
        aopt.profile = &prof;
        run_aqua();
        aopt.profile = nullptr;
        const auto times = aqua_examples::time_interleaved(g_clock, c.reps, 2, 1, dense, run_aqua);
        result r = decode_row(c, sel, n, k, times, prof.key_fraction_read, key_bytes + value_bytes, key_bytes,
                              value_bytes, bandwidth);
        r.rel_err = aqua_examples::rel_l2(aqua_out, dense_out);
        r.batch = count;
        print(c, r, header);
        header = false;
      }
  }
}

// ---------------------------------------------------------------------------------------------
// --shards P (decode)

/// Token ranges [0, n) cut into `shards` contiguous pieces whose sizes differ by at most one.
std::vector<std::pair<index_t, index_t>> shard_ranges(index_t n, index_t shards) {
  std::vector<std::pair<index_t, index_t>> ranges;
  for (index_t s = 0; s < shards; ++s) ranges.push_back({n * s / shards, n * (s + 1) / shards});
  return ranges;
}

/// One side (dense or AQUA) of a shards configuration: P calls over the shards plus the merge,
/// against one call over the whole cache.
struct shard_timing {
  aqua_examples::pair_times times;  // a: sharded (P calls + merge), b: whole
  double merge_ms = 0, rel_err = 0;
};

/// Times `sharded` (which leaves the time of its merge in `merge_ms` and its result in
/// `merged`) against `whole` (result in `whole_out`) in interleaved pairs.
template <class Sharded, class Whole>
shard_timing time_shards(const config& c, Sharded&& sharded, Whole&& whole, const double& merge_ms,
                         const std::vector<float>& merged, const std::vector<float>& whole_out) {
  std::vector<double> merge_samples;
  shard_timing t;
  t.times = aqua_examples::time_interleaved(g_clock, c.reps, 2, 1, sharded, whole,
                                            [&] { merge_samples.push_back(merge_ms); });
  t.merge_ms = aqua_examples::median(merge_samples);
  t.rel_err = aqua_examples::rel_l2(merged, whole_out);
  return t;
}

void print_shards(const config& c, const std::string& sel, index_t n, index_t k, index_t shards,
                  const shard_timing& dense, const shard_timing& aqua_side, double key_fraction,
                  double bandwidth, bool header) {
  if (c.json) {
    std::printf(
        "{\"mode\":\"shards\",\"n\":%lld,\"d\":%lld,\"k\":%lld,\"hq\":%lld,\"hkv\":%lld,\"threads\":%d,"
        "\"select\":\"%s\",\"shards\":%lld,\"dense_whole_ms\":%.4f,\"dense_sharded_ms\":%.4f,"
        "\"dense_overhead\":%.4f,\"dense_merge_ms\":%.4f,\"dense_rel_err\":%.6g,\"aqua_whole_ms\":%.4f,"
        "\"aqua_sharded_ms\":%.4f,\"aqua_overhead\":%.4f,\"aqua_merge_ms\":%.4f,\"aqua_rel_err\":%.6g,"
        "\"key_fraction_read\":%.4f,\"bandwidth_gbps\":%.3f,\"key_type\":\"%s\",\"value_type\":\"%s\","
        "\"basis\":\"%s\",\"clock\":\"%s\",\"isa\":\"%s\",\"probe_bytes\":%zu,\"prefetch\":\"%s\"}\n",
        (long long)n, (long long)c.d, (long long)k, (long long)c.hq, (long long)c.hkv, c.threads, sel.c_str(),
        (long long)shards, dense.times.median_b(), dense.times.median_a(), dense.times.median_ratio(),
        dense.merge_ms, dense.rel_err, aqua_side.times.median_b(), aqua_side.times.median_a(),
        aqua_side.times.median_ratio(), aqua_side.merge_ms, aqua_side.rel_err, key_fraction, bandwidth,
        aqua::storage_name(c.key_type), aqua::storage_name(c.value_type),
        c.random_basis ? "random" : "identity", c.cpu_clock ? "cpu" : "wall", kernel_isa(), c.probe_bytes,
        decode_prefetch_name());
  } else {
    if (header)
      std::printf("%-8s %6s %4s %4s %4s/%-3s %2s %-9s %5s %9s %9s %7s %9s %9s %9s %9s %7s %9s %9s %6s %-8s\n",
                  "mode", "n", "d", "k", "hq", "hkv", "T", "select", "P", "dwhole_ms", "dshard_ms", "d_ovh",
                  "dmerge_ms", "d_err", "awhole_ms", "ashard_ms", "a_ovh", "amerge_ms", "a_err", "keyfr",
                  "kv");
    std::printf(
        "%-8s %6lld %4lld %4lld %4lld/%-3lld %2d %-9s %5lld %9.3f %9.3f %7.3f %9.4f %9.3g %9.3f %9.3f %7.3f "
        "%9.4f %9.3g %6.3f %-8s\n",
        "shards", (long long)n, (long long)c.d, (long long)k, (long long)c.hq, (long long)c.hkv, c.threads,
        sel.c_str(), (long long)shards, dense.times.median_b(), dense.times.median_a(),
        dense.times.median_ratio(), dense.merge_ms, dense.rel_err, aqua_side.times.median_b(),
        aqua_side.times.median_a(), aqua_side.times.median_ratio(), aqua_side.merge_ms, aqua_side.rel_err,
        key_fraction, storage_label(c).c_str());
  }
  std::fflush(stdout);
}

/// --shards: for each N and P, the whole cache and P shard caches (same bases, tile width and
/// storage) holding the same tokens; dense_decode and aqua_decode over the shards, each writing
/// its output and lse, then aqua::merge_attention, against one call over the whole cache, as an
/// engine splitting a context over workers would run it on one core.
void run_shards(const config& c, double bandwidth) {
  bool header = true;
  const synthetic data(c);
  const auto q = data.queries(1, 7);
  const auto qv = aqua::make_view(q.data(), c.hq, c.d);
  const auto out_size = std::size_t(c.hq * c.d);
  for (index_t n : c.n)
    for (index_t shard_count : c.shards) {
      const auto ranges = shard_ranges(n, shard_count);
      aqua::kv_cache whole = data.make_cache(n);
      std::vector<aqua::kv_cache> shards;
      for (const auto& r : ranges) shards.push_back(data.make_cache(r.second - r.first));
      // The generator hands out pieces [Hkv, cnt, d] of consecutive tokens: each shard gets the
      // part of a piece that falls into its range.
      index_t filled = 0;
      std::mt19937 rng(1000);
      aqua_examples::append_spectrum_tokens(
          rng, data.spectrum, data.bases, n, {&whole},
          [&](const float* keys, const float* values, index_t cnt) {
            for (std::size_t s = 0; s < ranges.size(); ++s) {
              const index_t from = std::max(filled, ranges[s].first);
              const index_t to = std::min(filled + cnt, ranges[s].second);
              if (from >= to) continue;
              const std::array<index_t, 3> ext = {c.hkv, to - from, c.d}, str = {cnt * c.d, c.d, 1};
              const index_t offset = (from - filled) * c.d;
              shards[s].append(aqua::tensor3_view<const float>(keys + offset, ext, str),
                               aqua::tensor3_view<const float>(values + offset, ext, str));
            }
            filled += cnt;
          });
      std::vector<std::vector<float>> shard_out(ranges.size(), std::vector<float>(out_size)),
          shard_lse(ranges.size(), std::vector<float>(std::size_t(c.hq)));
      std::vector<aqua::attention_part> parts;
      for (std::size_t s = 0; s < ranges.size(); ++s)
        parts.push_back({aqua::make_view(static_cast<const float*>(shard_out[s].data()), c.hq, c.d),
                         aqua::make_view(static_cast<const float*>(shard_lse[s].data()), c.hq)});
      std::vector<float> whole_out(out_size), merged(out_size);
      double merge_ms = 0;
      auto merge = [&] {
        const double t0 = g_clock.now_ms();
        aqua::merge_attention(parts, aqua::make_view(merged.data(), c.hq, c.d));
        merge_ms = g_clock.now_ms() - t0;
      };
      // One workspace for the shards, reused call after call as an engine reuses its scratch.
      aqua::aqua_workspace whole_ws, shard_ws;
      aqua::attention_options dopt;
      dopt.threads = c.threads;
      auto dense_sharded = [&] {
        for (std::size_t s = 0; s < ranges.size(); ++s) {
          aqua::attention_options opt = dopt;
          opt.workspace = &shard_ws;
          opt.lse = aqua::make_view(shard_lse[s].data(), c.hq);
          aqua::dense_decode(qv, shards[s], aqua::make_view(shard_out[s].data(), c.hq, c.d), opt);
        }
        merge();
      };
      auto dense_whole = [&] {
        aqua::attention_options opt = dopt;
        opt.workspace = &whole_ws;
        aqua::dense_decode(qv, whole, aqua::make_view(whole_out.data(), c.hq, c.d), opt);
      };
      const shard_timing dense = time_shards(c, dense_sharded, dense_whole, merge_ms, merged, whole_out);
      for (const auto& sel : c.select)
        for (index_t k : c.k) {
          aqua::aqua_options aopt;
          aopt.mode = mode_of(sel);
          aopt.threads = c.threads;
          auto aqua_sharded = [&] {
            for (std::size_t s = 0; s < ranges.size(); ++s) {
              aqua::aqua_options opt = aopt;
              opt.workspace = &shard_ws;
              opt.lse = aqua::make_view(shard_lse[s].data(), c.hq);
              aqua::aqua_decode(qv, shards[s], k, aqua::make_view(shard_out[s].data(), c.hq, c.d), opt);
            }
            merge();
          };
          auto aqua_whole = [&] {
            aqua::aqua_options opt = aopt;
            opt.workspace = &whole_ws;
            aqua::aqua_decode(qv, whole, k, aqua::make_view(whole_out.data(), c.hq, c.d), opt);
          };
          // Untimed: the fraction of key tiles the whole call reads.
          aqua::attention_profile prof;
          aopt.profile = &prof;
          aqua_whole();
          aopt.profile = nullptr;
          const shard_timing aqua_side =
              time_shards(c, aqua_sharded, aqua_whole, merge_ms, merged, whole_out);
          print_shards(c, sel, n, k, shard_count, dense, aqua_side, prof.key_fraction_read, bandwidth,
                       header);
          header = false;
        }
    }
}

void run_views(const config& c, double bandwidth) {
  bool header = true;
  const synthetic data(c);
  for (index_t n : c.n) {
    aqua::kv_cache cache = data.make_cache(n);
    aqua::visit_storage(c.key_type, [&](auto key_tag) {
      aqua::visit_storage(c.value_type, [&](auto value_tag) {
        using K = decltype(key_tag);
        using V = decltype(value_tag);
        // The engine's buffers, token-major: [N][Hkv][d] as llama.cpp lays out its K and V
        // (--layout interleaved), or [Hkv][N][d] (head-major).
        const bool interleaved = c.layout == "interleaved";
        // Allocated like the cache's arrays (2 MB aligned, transparent huge pages where Linux has
        // them) unless --engine-pages 4k: then the kernels are compared on the same page size.
        const std::size_t count = std::size_t(n * c.hkv * c.d);
        auto kmem = aqua_examples::zeroed_buffer(count * sizeof(K), c.engine_huge_pages, "the engine's keys");
        auto vmem =
            aqua_examples::zeroed_buffer(count * sizeof(V), c.engine_huge_pages, "the engine's values");
        K* kbuf = reinterpret_cast<K*>(kmem.get());
        V* vbuf = reinterpret_cast<V*>(vmem.get());
        index_t filled = 0;
        std::mt19937 rng(1000);
        aqua_examples::append_spectrum_tokens(
            rng, data.spectrum, data.bases, n, {&cache},
            [&](const float* keys, const float* values, index_t cnt) {
              for (index_t h = 0; h < c.hkv; ++h)
                for (index_t j = 0; j < cnt; ++j)
                  for (index_t i = 0; i < c.d; ++i) {
                    const std::size_t to = interleaved ? std::size_t(((filled + j) * c.hkv + h) * c.d + i)
                                                       : std::size_t((h * n + filled + j) * c.d + i);
                    kbuf[to] = K(keys[(h * cnt + j) * c.d + i]);
                    vbuf[to] = V(values[(h * cnt + j) * c.d + i]);
                  }
              filled += cnt;
            });
        const auto q = data.queries(1, 7);
        const auto qv = aqua::make_view(q.data(), c.hq, c.d);
        const std::array<index_t, 3> ext = {c.hkv, n, c.d};
        const std::array<index_t, 3> str = interleaved ? std::array<index_t, 3>{c.d, c.hkv * c.d, 1}
                                                       : std::array<index_t, 3>{n * c.d, c.d, 1};
        std::vector<float> out_cache(std::size_t(c.hq * c.d)), out_views(out_cache.size());
        aqua::attention_options opt;
        opt.threads = c.threads;
        aqua::aqua_workspace ws;
        opt.workspace = &ws;
        auto on_cache = [&] {
          aqua::dense_decode(qv, cache, aqua::make_view(out_cache.data(), c.hq, c.d), opt);
        };
        auto on_views = [&] {
          aqua::dense_decode(qv, aqua::tensor3_view<const K>(kbuf, ext, str),
                             aqua::tensor3_view<const V>(vbuf, ext, str),
                             aqua::make_view(out_views.data(), c.hq, c.d), opt);
        };
        const auto t = aqua_examples::time_interleaved(g_clock, c.reps, 2, 1, on_cache, on_views);
        const double bytes = double(c.hkv * n * c.d) * (sizeof(K) + sizeof(V));
        result r = timed_row(c, "views", c.layout == "interleaved" ? "interlvd" : "head-maj", n, c.d, t, 1.0,
                             double(cache.key_bytes() + cache.value_bytes()), bytes, bandwidth);
        r.rel_err = aqua_examples::rel_l2(out_views, out_cache);
        print(c, r, header);
        header = false;
      });
    });
  }
}

void run_prefill(const config& c, double bandwidth) {
  bool header = true;
  const synthetic data(c);
  for (index_t n : c.n) {
    const index_t m = c.m > 0 ? std::min(c.m, n) : n;
    aqua::kv_cache cache = data.make_cache(n);
    // Raw keys [Hkv, N, d] (rotated when the basis is random) for the dense GEMM baseline; the
    // cache projects the same keys.
    auto keys = aqua_examples::spectrum_rows(c.hkv * n, c.d, c.spectrum, 11);
    if (!data.bases.empty())
      for (index_t h = 0; h < c.hkv; ++h)
        aqua_examples::rotate_rows_to_raw(data.bases[std::size_t(h)], n, keys.data() + h * n * c.d);
    const auto values = aqua_examples::normal_data(std::size_t(c.hkv * n * c.d), 12);
    const auto kview = aqua::make_view(static_cast<const float*>(keys.data()), c.hkv, n, c.d);
    const auto vview = aqua::make_view(values.data(), c.hkv, n, c.d);
    cache.append(kview, vview);
    const auto q = data.queries(m, 13);
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
          aqua::aqua_prefill(qv, cache, aqua::selection_spec::top_k(k),
                             aqua::make_view(aqua_out.data(), c.hq, m, c.d), aopt);
        };
        // The score phases, read from the profiles after each timed call (CPU seconds over workers).
        std::vector<double> sd, sa, ss;
        const auto t = aqua_examples::time_interleaved(
            g_clock, c.reps, 1, 1, dense, run_aqua,
            [&] { sd.push_back(dprof.score_seconds * 1e3 / c.threads); },
            [&] {
              sa.push_back((aprof.score_seconds + aprof.select_seconds) * 1e3 / c.threads);
              ss.push_back(aprof.select_seconds * 1e3 / c.threads);
            });
        std::vector<double> sratio;
        for (std::size_t i = 0; i < sd.size(); ++i) sratio.push_back(sd[i] / sa[i]);
        result r = timed_row(c, "prefill", sel, n, k, t, double(k) / double(c.d), bytes, bytes, bandwidth);
        r.m = m;
        r.dense_score_ms = aqua_examples::median(sd);
        r.aqua_score_ms = aqua_examples::median(sa);
        r.aqua_select_ms = aqua_examples::median(ss);
        r.score_speedup = aqua_examples::median(sratio);
        r.rel_err = aqua_examples::rel_l2(aqua_out, dense_out);
        print(c, r, header);
        header = false;
      }
  }
}

// ---------------------------------------------------------------------------------------------
// --sweep-break-even

/// The cost model's configuration matching a measured one: tiles of c.tile dims, key projection
/// amortised (the cache is filled before timing), one selection per group for group and tile mode,
/// the per-head union bound for per-head mode, fp32 cache and projection.
aqua::cost_config model_of(const config& c, index_t k, const std::string& sel) {
  aqua::cost_config m;
  m.d = c.d;
  m.k = k;
  m.hq = c.hq;
  m.hkv = c.hkv;
  m.tile = c.tile;
  m.key_projection = aqua::key_projection_cost::amortised;
  m.sharing = sel == "per-head" ? aqua::selection_sharing::per_head : aqua::selection_sharing::group_shared;
  m.union_spread = aqua::union_spread_disjoint;
  // An identity cache neither projects queries nor reads P: the model's fixed costs would be absent.
  if (!c.random_basis) m.projection_elem_bytes = 0;
  return m;
}

struct sweep_point {
  index_t n = 0;
  double dense_ms = 0, aqua_ms = 0, speedup = 0, key_fraction = 0;
  int inner = 1;
};

/// Smallest measured N from which AQUA won at every larger measured N; nullopt if it lost at the
/// largest. `last_loss` gets the largest N at which it lost (0 if none).
std::optional<index_t> measured_break_even(const std::vector<sweep_point>& pts, index_t& last_loss) {
  last_loss = 0;
  std::optional<index_t> first_win;
  for (const auto& p : pts) {
    if (p.speedup > 1.0) {
      if (!first_win) first_win = p.n;
    } else {
      last_loss = p.n;
      first_win.reset();
    }
  }
  return first_win;
}

std::string opt_text(const std::optional<double>& x, const char* fmt) {
  if (!x) return "never";
  char b[32];
  std::snprintf(b, sizeof b, fmt, *x);
  return b;
}

std::string opt_json(const std::optional<double>& x) {
  if (!x) return "null";
  char b[32];
  std::snprintf(b, sizeof b, "%.6g", *x);
  return b;
}

int run_sweep(const config& c, double bandwidth) {
  struct entry {
    index_t k;
    std::string sel;
    std::vector<sweep_point> points;
  };
  std::vector<entry> entries;
  for (const auto& sel : c.select)
    for (index_t k : c.k) entries.push_back({k, sel, {}});
  const synthetic data(c);
  const auto q = data.queries(1, 7);
  const double min_sample_ms = 1.0;
  // One pass over ascending N: the cache grows by appending (the same seed gives the same tokens
  // in every pass), and every configuration is measured at each N of the pass.
  auto pass = [&](const std::vector<index_t>& ns, const std::vector<std::vector<bool>>& wanted) {
    const index_t cap = ns.back();
    aqua::kv_cache cache = data.make_cache(cap);
    // --baseline plain: the raw keys in a cache without projection (the same tiled kernel, no q~ = q P);
    // --baseline reference: the raw keys and values token-major, [Hkv, cap, d].
    aqua::kv_cache plain = data.make_cache(c.baseline == "plain" ? cap : 1, c.key_type, c.value_type, false);
    std::vector<float> raw_k, raw_v;
    if (c.baseline == "reference") {
      raw_k.resize(std::size_t(c.hkv * cap * c.d));
      raw_v.resize(raw_k.size());
    }
    auto keep_raw = [&](const float* keys, const float* values, index_t cnt) {
      if (c.baseline == "plain")
        plain.append(aqua::make_view(keys, c.hkv, cnt, c.d), aqua::make_view(values, c.hkv, cnt, c.d));
      if (c.baseline != "reference") return;
      for (index_t h = 0; h < c.hkv; ++h) {
        std::copy(keys + h * cnt * c.d, keys + (h + 1) * cnt * c.d,
                  raw_k.data() + (h * cap + cache.size()) * c.d);
        std::copy(values + h * cnt * c.d, values + (h + 1) * cnt * c.d,
                  raw_v.data() + (h * cap + cache.size()) * c.d);
      }
    };
    const dense_side base = c.baseline == "reference" ? dense_side{nullptr, raw_k.data(), raw_v.data(), cap}
                            : c.baseline == "plain"   ? dense_side{&plain, nullptr, nullptr, 0}
                                                      : dense_side{&cache, nullptr, nullptr, 0};
    std::mt19937 rng(1000);
    for (std::size_t i = 0; i < ns.size(); ++i) {
      aqua_examples::append_spectrum_tokens(rng, data.spectrum, data.bases, ns[i] - cache.size(), {&cache},
                                            keep_raw);
      for (std::size_t e = 0; e < entries.size(); ++e) {
        if (!wanted[e][i]) continue;
        const auto m = measure_decode(c, base, cache, q, entries[e].k, entries[e].sel, min_sample_ms);
        entries[e].points.push_back(
            {ns[i], m.times.median_a(), m.times.median_b(), m.times.median_ratio(), m.key_fraction, m.inner});
        if (!c.json)
          std::fprintf(stderr, "\r  k = %lld %-8s N = %6lld: speedup %.3f (%d call%s per sample)     ",
                       (long long)entries[e].k, entries[e].sel.c_str(), (long long)ns[i],
                       m.times.median_ratio(), m.inner, m.inner == 1 ? "" : "s");
      }
    }
  };
  std::vector<index_t> grid;
  for (index_t n = c.sweep_min; n <= c.sweep_max; n *= 2) grid.push_back(n);
  pass(grid, std::vector<std::vector<bool>>(entries.size(), std::vector<bool>(grid.size(), true)));
  // Refinement: three points, a quarter octave apart (multiples of 16 tokens, one cache block),
  // between the last loss and the next grid point.
  std::vector<index_t> refine;
  std::vector<std::vector<index_t>> refine_of(entries.size());
  for (std::size_t e = 0; e < entries.size(); ++e) {
    index_t last_loss = 0;
    const auto win = measured_break_even(entries[e].points, last_loss);
    if (!win || last_loss == 0) continue;
    for (int j = 1; j <= 3; ++j) {
      const index_t n = index_t(std::llround(double(last_loss) * std::pow(2.0, j / 4.0) / 16.0)) * 16;
      if (n > last_loss && n < *win) {
        refine_of[e].push_back(n);
        refine.push_back(n);
      }
    }
  }
  std::sort(refine.begin(), refine.end());
  refine.erase(std::unique(refine.begin(), refine.end()), refine.end());
  if (!refine.empty()) {
    std::vector<std::vector<bool>> wanted(entries.size(), std::vector<bool>(refine.size(), false));
    for (std::size_t e = 0; e < entries.size(); ++e)
      for (std::size_t i = 0; i < refine.size(); ++i)
        wanted[e][i] = std::find(refine_of[e].begin(), refine_of[e].end(), refine[i]) != refine_of[e].end();
    pass(refine, wanted);
  }
  if (!c.json) std::fprintf(stderr, "\r%80s\r", "");

  if (!c.json) {
    std::printf(
        "measured vs modelled decode break-even: d = %lld, Hq = %lld, Hkv = %lld, tile %lld, %d thread%s, "
        "%s clock, basis %s, dense baseline %s, %d pairs per N, N = %lld..%lld doubling + 3 refinement "
        "points\n",
        (long long)c.d, (long long)c.hq, (long long)c.hkv, (long long)c.tile, c.threads,
        c.threads == 1 ? "" : "s", c.cpu_clock ? "cpu" : "wall", c.random_basis ? "random" : "identity",
        c.baseline.c_str(), c.reps, (long long)c.sweep_min, (long long)c.sweep_max);
    std::printf("%4s %-8s %10s %10s %12s %12s %12s %8s\n", "k", "select", "last_loss", "measured",
                "model_FLOPs", "model_bytes", "model_D/d", "keyfr");
  }
  for (auto& e : entries) {
    std::sort(e.points.begin(), e.points.end(),
              [](const sweep_point& a, const sweep_point& b) { return a.n < b.n; });
    index_t last_loss = 0;
    const auto win = measured_break_even(e.points, last_loss);
    const aqua::cost_config model = model_of(c, e.k, e.sel);
    const auto flops = aqua::break_even_decode_flops(model), bytes = aqua::break_even_decode_bytes(model);
    const double d_read = aqua::key_dims_read(model) / double(c.d);
    const double keyfr = e.points.empty() ? 0 : e.points.back().key_fraction;
    if (c.json) {
      std::printf(
          "{\"mode\":\"break_even\",\"d\":%lld,\"k\":%lld,\"hq\":%lld,\"hkv\":%lld,\"tile\":%lld,"
          "\"threads\":%d,\"select\":\"%s\",\"baseline\":\"%s\",\"basis\":\"%s\",\"clock\":\"%s\","
          "\"bandwidth_gbps\":%.3f,"
          "\"measured_break_even\":%s,\"last_loss_n\":%lld,\"model_break_even_flops\":%s,"
          "\"model_break_even_bytes\":%s,\"model_key_fraction\":%.4f,\"key_fraction_read\":%.4f,"
          "\"model_sharing\":\"%s\",\"model_projection_elem_bytes\":%g,\"points\":[",
          (long long)c.d, (long long)e.k, (long long)c.hq, (long long)c.hkv, (long long)c.tile, c.threads,
          e.sel.c_str(), c.baseline.c_str(), c.random_basis ? "random" : "identity",
          c.cpu_clock ? "cpu" : "wall", bandwidth, win ? std::to_string(*win).c_str() : "null",
          (long long)last_loss, opt_json(flops).c_str(), opt_json(bytes).c_str(), d_read, keyfr,
          model.sharing == aqua::selection_sharing::per_head ? "per_head" : "group_shared",
          model.projection_elem_bytes);
      for (std::size_t i = 0; i < e.points.size(); ++i)
        std::printf("%s{\"n\":%lld,\"dense_ms\":%.5f,\"aqua_ms\":%.5f,\"speedup\":%.4f,\"inner\":%d}",
                    i ? "," : "", (long long)e.points[i].n, e.points[i].dense_ms, e.points[i].aqua_ms,
                    e.points[i].speedup, e.points[i].inner);
      std::printf("]}\n");
    } else {
      std::printf("%4lld %-8s %10lld %10s %12s %12s %12.3f %8.3f\n", (long long)e.k, e.sel.c_str(),
                  (long long)last_loss, win ? std::to_string(*win).c_str() : "never",
                  opt_text(flops, "%.1f").c_str(), opt_text(bytes, "%.1f").c_str(), d_read, keyfr);
      std::printf("     speedup by N:");
      for (const auto& p : e.points) std::printf(" %lld:%.2f", (long long)p.n, p.speedup);
      std::printf("\n");
    }
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_compare"};
  config c;
  aqua_compare_cli::add_options(app, c);
  return aqua_cli::run(app, argc, argv, [&] {
    aqua::set_max_isa(c.isa == "portable" ? aqua::isa::portable
                      : c.isa == "avx2"   ? aqua::isa::avx2
                                          : aqua::isa::avx512);
    aqua::set_decode_prefetch(c.prefetch == "l1"   ? aqua::decode_prefetch::l1
                              : c.prefetch == "l2" ? aqua::decode_prefetch::l2
                                                   : aqua::decode_prefetch::automatic);
    g_clock.cpu = c.cpu_clock;
    g_clock.threads = c.threads;
    const double bandwidth = measure_bandwidth(g_clock, c.threads, c.probe_bytes);
    if (!c.json)
      std::printf(
          "memory-read bandwidth (sum over %s, best of 5, %d thread%s, %s clock): %.2f GB/s; kernels: %s; "
          "decode prefetch: %s\n",
          byte_text(c.probe_bytes).c_str(), c.threads, c.threads == 1 ? "" : "s",
          c.cpu_clock ? "cpu" : "wall", bandwidth, kernel_isa(), decode_prefetch_name());
    if (c.sweep) return run_sweep(c, bandwidth);
    if (!c.shards.empty())
      run_shards(c, bandwidth);
    else if (c.mode == "decode" && c.batch > 1)
      run_batch_decode(c, bandwidth);
    else if (c.mode == "decode")
      run_decode(c, bandwidth);
    else if (c.mode == "views")
      run_views(c, bandwidth);
    else
      run_prefill(c, bandwidth);
    return 0;
  });
}
