// aqua_decode: a decode loop with AQUA selection and H2O eviction, against exact full attention.
//
// A prompt of N tokens fills one layer's cache (its last WARMUP tokens as decode steps without
// eviction, so the H2O scores have accumulated over several queries before the first eviction,
// as H2O accumulates the prompt's attention), then every step appends one token, runs AQUA
// decode (its probabilities feed the H2O policy), evicts down to the budget when due, and runs
// exact dense attention over the full, never evicted context (the reference and the baseline,
// timed in the same step, interleaved). Every interval it prints the cache tokens per KV head,
// KV bytes (AQUA cache vs the full dense cache), time per step of both, and the relative L2
// error of the AQUA + H2O output against exact full attention.
//
// Synthetic data (the default; .npy dumps are not read yet: aqua/io.hpp is not on main): one
// random orthogonal basis P per KV head; in projected coordinates keys and queries have per-dim
// standard deviation A exp(-i / TAU) (a decaying spectrum, like calibrated heads), and every query
// head has a persistent mean direction plus NOISE times fresh noise per step (queries of a head are
// correlated over steps, as in real models), so some tokens are attended to again and again: heavy
// hitters. Values are N(0, 1). With NOISE large the attention pattern changes every step and no
// eviction policy can keep what the next query needs; real attention heads lie in between.
//
// --sweep-rank instead reports static key truncation: for r in {d/4, d/2, 3d/4, d}, the cache
// bytes (and the cost model's figure) and the output error against exact attention.
//
// Usage: aqua_decode [--n 8192] [--steps 128] [--interval 16] [--hq 32] [--hkv 8] [--d 128]
//                    [--k 64] [--rank 0] [--budget B | --budget-fraction F] [--recent W]
//                    [--slack S] [--warmup 32] [--select group|per-head|tile] [--tile 32] [--threads 1]
//                    [--spectrum 32] [--amplitude 2.7] [--query-noise 0.5] [--seed 1] [--clock wall|cpu]
//                    [--json]
//                    [--sweep-rank]
#include <aqua/attention.hpp>
#include <aqua/cost_model.hpp>
#include <aqua/h2o.hpp>
#include <aqua/kv_cache.hpp>

#include "aqua_tools/measure.hpp"
#include "aqua_tools/synthetic_data.hpp"
#include "decode_loop/decode_cli.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <time.h>
#include <unistd.h>

namespace {

using aqua::index_t;

using aqua_decode_cli::config;

aqua::selection_mode mode_of(const std::string& s) {
  return s == "per-head" ? aqua::selection_mode::per_head
         : s == "group"  ? aqua::selection_mode::group
                         : aqua::selection_mode::tile;
}

int g_threads = 1;
bool g_cpu_clock = false;

double now_ms() {
  if (g_cpu_clock) {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6) / g_threads;
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

using aqua_examples::median;
using aqua_examples::rel_l2;

double mib(double bytes) {
  return bytes / (1024.0 * 1024.0);
}

// The synthetic layer: bases, the per-dim spectrum, query means; raw keys and values of every
// token (token-major, [Hkv, capacity, d]) for the exact reference.
struct synthetic_layer {
  const config& c;
  std::mt19937 rng;
  std::normal_distribution<float> normal{0.0f, 1.0f};
  std::vector<Eigen::MatrixXf> bases;  // [Hkv] of [d, d]
  Eigen::VectorXf spectrum;            // A exp(-i / TAU)
  Eigen::MatrixXf query_mean;          // [d, Hq] in projected coordinates
  std::vector<float> k, v;             // [Hkv, capacity, d]
  index_t capacity = 0, n = 0;

  synthetic_layer(const config& cfg, index_t cap) : c(cfg), rng(cfg.seed), capacity(cap) {
    bases = aqua_examples::random_orthogonal_bases(c.hkv, c.d, rng);
    const auto s = aqua_examples::decaying_spectrum(c.d, c.spectrum, c.amplitude);
    spectrum = Eigen::Map<const Eigen::VectorXf>(s.data(), c.d);
    query_mean.resize(c.d, c.hq);
    for (index_t i = 0; i < query_mean.size(); ++i) query_mean.data()[i] = normal(rng);
    k.assign(std::size_t(c.hkv * capacity * c.d), 0.0f);
    v.assign(k.size(), 0.0f);
  }

  std::vector<aqua::matrix_view<const float>> basis_views() const {
    return aqua_examples::basis_views(bases);
  }

  // Appends `count` tokens to the raw store and to the caches (keys with the decaying spectrum in
  // projected coordinates, rotated to raw ones; the caches project them back; values N(0, 1)).
  void append(index_t count, std::vector<aqua::kv_cache*> caches) {
    auto keep_raw = [&](const float* keys, const float* values, index_t cnt) {
      for (index_t h = 0; h < c.hkv; ++h) {
        std::copy(keys + h * cnt * c.d, keys + (h + 1) * cnt * c.d, k.data() + (h * capacity + n) * c.d);
        std::copy(values + h * cnt * c.d, values + (h + 1) * cnt * c.d, v.data() + (h * capacity + n) * c.d);
      }
      n += cnt;
    };
    const std::vector<float> s(spectrum.data(), spectrum.data() + c.d);
    aqua_examples::append_spectrum_tokens(rng, s, bases, count, caches, keep_raw);
  }

  // Queries [Hq, d]: in projected coordinates s_i (mean_i + NOISE z_i), z ~ N(0, 1); raw q = (that) P^T.
  void query(std::vector<float>& q) {
    q.resize(std::size_t(c.hq * c.d));
    Eigen::VectorXf z(c.d);
    for (index_t h = 0; h < c.hq; ++h) {
      for (index_t i = 0; i < c.d; ++i)
        z(i) = spectrum(i) * (query_mean(i, h) + float(c.query_noise) * normal(rng));
      Eigen::VectorXf raw = bases[std::size_t(h / (c.hq / c.hkv))] * z;
      for (index_t i = 0; i < c.d; ++i) q[std::size_t(h * c.d + i)] = raw(i);
    }
  }

  aqua::tensor3_view<const float> keys() const {
    return aqua::tensor3_view<const float>(k.data(), {c.hkv, n, c.d}, {capacity * c.d, c.d, 1});
  }
  aqua::tensor3_view<const float> values() const {
    return aqua::tensor3_view<const float>(v.data(), {c.hkv, n, c.d}, {capacity * c.d, c.d, 1});
  }
};

void fill_prompt(synthetic_layer& layer, index_t n, std::vector<aqua::kv_cache*> caches) {
  const index_t piece = 2048;
  double last = now_ms();
  for (index_t t = 0; t < n; t += piece) {
    layer.append(std::min(piece, n - t), caches);
    if (now_ms() - last > 1000 && isatty(2)) {
      std::fprintf(stderr, "\rfilling the prompt: %lld / %lld tokens", (long long)layer.n, (long long)n);
      last = now_ms();
    }
  }
  if (isatty(2)) std::fprintf(stderr, "\r%60s\r", "");
}

aqua::cost_config cost_of(const config& c, index_t rank) {
  aqua::cost_config m;
  m.d = c.d;
  m.r = rank == 0 ? c.d : rank;
  m.k = std::min(c.k, m.r);
  m.hq = c.hq;
  m.hkv = c.hkv;
  m.tile = c.tile;
  m.token_budget = c.budget;
  return m;
}

int sweep_rank(const config& c) {
  synthetic_layer layer(c, c.n);
  std::vector<aqua::kv_cache> caches;
  std::vector<index_t> ranks;
  for (index_t r : {c.d / 4, c.d / 2, 3 * c.d / 4, c.d}) {
    aqua::kv_cache_options opt;
    opt.tile_dims = std::min(c.tile, std::max<index_t>(1, c.d / 4));
    opt.rank = r;
    opt.capacity = c.n;
    caches.emplace_back(layer.basis_views(), opt);
    ranks.push_back(r);
  }
  std::vector<aqua::kv_cache*> ptrs;
  for (auto& cache : caches) ptrs.push_back(&cache);
  fill_prompt(layer, c.n, ptrs);
  std::vector<float> q, exact(std::size_t(c.hq * c.d)), out(exact.size());
  const int queries = 8;
  std::vector<std::vector<double>> err_all(ranks.size()), err_half(ranks.size());
  aqua::aqua_options aopt;
  aopt.mode = mode_of(c.select);
  aopt.threads = c.threads;
  for (int t = 0; t < queries; ++t) {
    layer.query(q);
    const auto qv = aqua::make_view(static_cast<const float*>(q.data()), c.hq, c.d);
    aqua::attention_options dopt;
    dopt.threads = c.threads;
    aqua::dense_decode<float>(qv, layer.keys(), layer.values(), aqua::make_view(exact.data(), c.hq, c.d),
                              dopt);
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      aqua::aqua_decode(qv, caches[i], aqua::selection_spec::top_k(ranks[i]),
                        aqua::make_view(out.data(), c.hq, c.d), aopt);
      err_all[i].push_back(rel_l2(out, exact));
      aqua::aqua_decode(qv, caches[i], aqua::selection_spec::top_k(std::max<index_t>(1, ranks[i] / 2)),
                        aqua::make_view(out.data(), c.hq, c.d), aopt);
      err_half[i].push_back(rel_l2(out, exact));
    }
  }
  if (!c.json)
    std::printf(
        "key truncation: N = %lld, Hq = %lld, Hkv = %lld, d = %lld, spectrum exp(-i/%g), %d queries\n"
        "%6s %12s %12s %12s %14s %14s\n",
        (long long)c.n, (long long)c.hq, (long long)c.hkv, (long long)c.d, c.spectrum, queries, "r",
        "cache_MiB", "model_MiB", "dense_MiB", "err(k=r)", "err(k=r/2)");
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    const auto model = aqua::kv_cache_bytes(cost_of(c, ranks[i]), double(c.n));
    const double model_bytes = model.aqua_bytes + model.projection_bytes;
    const double e1 = median(err_all[i]), e2 = median(err_half[i]);
    if (c.json)
      std::printf(
          "{\"r\":%lld,\"n\":%lld,\"d\":%lld,\"cache_bytes\":%zu,\"model_bytes\":%.0f,\"dense_bytes\":%.0f,"
          "\"rel_err_k_eq_r\":%.6g,\"rel_err_k_half_r\":%.6g}\n",
          (long long)ranks[i], (long long)c.n, (long long)c.d, caches[i].bytes(), model_bytes,
          model.dense_bytes, e1, e2);
    else
      std::printf("%6lld %12.2f %12.2f %12.2f %14.3e %14.3e\n", (long long)ranks[i],
                  mib(double(caches[i].bytes())), mib(model_bytes), mib(model.dense_bytes), e1, e2);
  }
  return 0;
}

int run(const config& c) {
  const index_t total = c.n + c.steps;
  synthetic_layer layer(c, total);
  aqua::kv_cache_options opt;
  opt.tile_dims = c.tile;
  opt.rank = c.rank;
  opt.capacity = total;  // no doubling before the first eviction; the policy releases the rest
  aqua::kv_cache cache(layer.basis_views(), opt);
  // The baseline: dense decode over a full, never evicted cache with every dim (the same tiled
  // kernels AQUA uses, all tiles read), so the speedup compares like with like.
  aqua::kv_cache_options full_opt = opt;
  full_opt.rank = 0;
  aqua::kv_cache full(layer.basis_views(), full_opt);
  fill_prompt(layer, c.n - c.warmup, {&cache, &full});
  const bool evicting = c.budget > 0;
  aqua::h2o_options hopt;
  hopt.budget = evicting ? c.budget : total + 1;
  hopt.recent = evicting ? std::min(c.recent, c.budget) : 0;
  hopt.slack = evicting ? c.slack : 0;
  aqua::h2o_policy policy(c.hkv, hopt);
  aqua::aqua_workspace ws;
  aqua::aqua_options aopt;
  aopt.mode = mode_of(c.select);
  aopt.threads = c.threads;
  aopt.workspace = &ws;
  aqua::attention_options dopt;
  dopt.threads = c.threads;
  const auto select = aqua::selection_spec::top_k(std::min(c.k, cache.rank()));
  const double dense_bytes_per_token = aqua::dense_kv_bytes_per_token(cost_of(c, 0));
  if (!c.json) {
    std::printf(
        "aqua_decode: prompt N = %lld, %lld steps, Hq = %lld, Hkv = %lld, d = %lld, k = %lld, r = %lld, "
        "select %s, tile %lld, %d thread%s, %s clock\n",
        (long long)c.n, (long long)c.steps, (long long)c.hq, (long long)c.hkv, (long long)c.d,
        (long long)select.k, (long long)cache.rank(), c.select.c_str(), (long long)c.tile, c.threads,
        c.threads == 1 ? "" : "s", c.cpu_clock ? "cpu" : "wall");
    if (evicting)
      std::printf(
          "H2O: budget B = %lld tokens per KV head (%lld heavy hitters + %lld recent), evict when > B + "
          "%lld; "
          "scores accumulated over the last %lld prompt tokens before the first eviction\n",
          (long long)c.budget, (long long)(c.budget - hopt.recent), (long long)hopt.recent,
          (long long)c.slack, (long long)c.warmup);
    else
      std::printf("H2O: off (no budget)\n");
    std::printf(
        "synthetic data: decaying spectrum exp(-i/%g), amplitude %g, query = mean + %g noise; reference: "
        "exact "
        "attention over the full context (never evicted)\n"
        "baseline (dense_ms): dense decode over a full cache (all %lld tokens kept, every dim read)\n",
        c.spectrum, c.amplitude, c.query_noise, (long long)total);
    std::printf("%6s %8s %10s %10s %9s %9s %9s %8s %10s %10s\n", "step", "tokens", "KV_MiB", "full_MiB",
                "aqua_ms", "evict_ms", "dense_ms", "speedup", "err_mean", "err_max");
  }
  std::vector<float> q, exact(std::size_t(c.hq * c.d)), out(exact.size()), dense_out(exact.size());
  aqua::aqua_workspace dense_ws;
  aqua::attention_options dense_ws_opt = dopt;
  dense_ws_opt.workspace = &dense_ws;
  std::vector<double> t_aqua, t_evict, t_dense, t_ratio, errs, dense_errs;
  for (index_t w = 0; w < c.warmup; ++w) {
    layer.append(1, {&cache, &full});
    layer.query(q);
    policy.decode(aqua::make_view(static_cast<const float*>(q.data()), c.hq, c.d), cache, select,
                  aqua::make_view(out.data(), c.hq, c.d), aopt);
  }
  double last_progress = now_ms();
  for (index_t step = 1; step <= c.steps; ++step) {
    layer.append(1, {&cache, &full});
    layer.query(q);
    const auto qv = aqua::make_view(static_cast<const float*>(q.data()), c.hq, c.d);
    // Interleaved: alternate which side runs first so neither always finds the caches warm.
    double ta = 0, te = 0, td = 0;
    auto aqua_side = [&] {
      double t0 = now_ms();
      policy.decode(qv, cache, select, aqua::make_view(out.data(), c.hq, c.d), aopt);
      const double t1 = now_ms();
      policy.evict(cache);
      te = now_ms() - t1;
      ta = t1 - t0;
    };
    auto dense_side = [&] {
      const double t0 = now_ms();
      aqua::dense_decode(qv, full, aqua::make_view(dense_out.data(), c.hq, c.d), dense_ws_opt);
      td = now_ms() - t0;
    };
    if (step % 2) {
      aqua_side();
      dense_side();
    } else {
      dense_side();
      aqua_side();
    }
    t_aqua.push_back(ta);
    t_evict.push_back(te);
    t_dense.push_back(td);
    t_ratio.push_back(td / (ta + te));
    // The reference: exact attention on the raw keys and values of the whole context (untimed).
    aqua::dense_decode<float>(qv, layer.keys(), layer.values(), aqua::make_view(exact.data(), c.hq, c.d),
                              dopt);
    errs.push_back(rel_l2(out, exact));
    dense_errs.push_back(rel_l2(dense_out, exact));
    if (step % c.interval == 0 || step == c.steps) {
      double mean = 0, mx = 0;
      for (double e : errs) {
        mean += e / double(errs.size());
        mx = std::max(mx, e);
      }
      // Evictions are rare with slack: report their cost amortised over the interval (mean).
      double evict_mean = 0;
      for (double e : t_evict) evict_mean += e / double(t_evict.size());
      if (isatty(2)) std::fprintf(stderr, "\r%70s\r", "");
      const double full_bytes = double(layer.n) * dense_bytes_per_token;
      if (c.json)
        std::printf(
            "{\"step\":%lld,\"tokens\":%lld,\"context\":%lld,\"kv_bytes\":%zu,\"full_kv_bytes\":%.0f,"
            "\"aqua_ms\":%.4f,\"evict_ms\":%.4f,\"dense_ms\":%.4f,\"speedup\":%.4f,\"rel_err_mean\":%.6g,"
            "\"rel_err_max\":%.6g,\"dense_rel_err\":%.3g,\"budget\":%lld,\"k\":%lld,\"r\":%lld}\n",
            (long long)step, (long long)cache.size(), (long long)layer.n, cache.bytes(), full_bytes,
            median(t_aqua), evict_mean, median(t_dense), median(t_ratio), mean, mx, median(dense_errs),
            (long long)c.budget, (long long)select.k, (long long)cache.rank());
      else
        std::printf("%6lld %8lld %10.2f %10.2f %9.3f %9.3f %9.3f %8.2f %10.3e %10.3e\n", (long long)step,
                    (long long)cache.size(), mib(double(cache.bytes())), mib(full_bytes), median(t_aqua),
                    evict_mean, median(t_dense), median(t_ratio), mean, mx);
      std::fflush(stdout);
      t_aqua.clear();
      t_evict.clear();
      t_dense.clear();
      t_ratio.clear();
      errs.clear();
      dense_errs.clear();
    } else if (isatty(2) && now_ms() - last_progress > 500) {
      std::fprintf(stderr, "\rstep %lld / %lld, cache %lld tokens", (long long)step, (long long)c.steps,
                   (long long)cache.size());
      last_progress = now_ms();
    }
  }
  if (!c.json)
    std::printf(
        "speedup = dense ms / (aqua ms + evict ms), median per interval; errors are relative L2 over all "
        "query heads against exact full attention\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_decode"};
  config c;
  aqua_decode_cli::add_options(app, c);
  return aqua_cli::run(app, argc, argv, [&] {
    g_threads = c.threads;
    g_cpu_clock = c.cpu_clock;
    return c.sweep_rank ? sweep_rank(c) : run(c);
  });
}
