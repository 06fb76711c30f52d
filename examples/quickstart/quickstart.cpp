// Quick start: AQUA end to end on generated data. Calibrate a projection on sample queries, build
// the projected KV cache from an engine's token-major buffer, decode one token with AQUA (top k of
// d dims) and with exact dense attention, and compare the two.
//
//   aqua_quickstart [--hq 32] [--hkv 8] [--d 128] [--n 4096] [--k 32] [--threads 1]
// (flags parsed by CLI11 in quickstart_cli.hpp; exit status 0, 1 on a library error, 2 on bad usage)
#include <aqua/aqua.hpp>

#include "quickstart/quickstart_cli.hpp"

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_quickstart"};
  aqua_quickstart_cli::options o;
  aqua_quickstart_cli::add_options(app, o);
  if (const int status = aqua_cli::parse(app, argc, argv); status >= 0) return status;
  const aqua::index_t hq = o.hq, hkv = o.hkv, d = o.d, n = o.n, rows = 256;
  try {
    // Generated data with the energy decaying over the dims, as in real queries and keys. The
    // engine's cache is token-major, [N, Hkv, d]; strided views read it in place.
    std::mt19937 rng(7);
    std::normal_distribution<float> normal;
    auto fill = [&](std::vector<float>& x) {
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = normal(rng) * std::exp(-float(i % d) / (d / 4.0f));
    };
    std::vector<float> sample(hq * rows * d), q(hq * d), k(n * hkv * d), v(k.size()), dense(q.size()),
        approx(q.size());
    for (auto* x : {&sample, &q, &k, &v}) fill(*x);
    const aqua::tensor3_view<const float> keys(k.data(), {hkv, n, d}, {d, hkv * d, 1});
    const aqua::tensor3_view<const float> values(v.data(), {hkv, n, d}, {d, hkv * d, 1});

    // 1. Projection: one orthogonal basis per KV head, calibrated on sample queries
    //    (aqua::projection_set::random_orthogonal is the uncalibrated stand-in).
    aqua::calibrator cal(/*layers=*/1, hq, hkv, d);
    cal.add_queries(/*layer=*/0, aqua::make_view(sample.data(), hq, rows, d));
    const aqua::projection_set set = cal.finalize();

    // 2. Cache: append projects the keys once, into dimension tiles.
    aqua::kv_cache cache(set, /*layer=*/0);
    cache.append(keys, values);

    // 3. Decode one token: AQUA over the top k dims of each query, and exact dense attention.
    aqua::aqua_options opt;
    opt.threads = o.threads;
    const auto qv = aqua::make_view(q.data(), hq, d);
    aqua::aqua_decode(qv, cache, aqua::selection_spec::top_k(o.k), aqua::make_view(approx.data(), hq, d),
                      opt);
    aqua::attention_options dense_opt;
    dense_opt.threads = o.threads;
    aqua::dense_decode<float>(qv, keys, values, aqua::make_view(dense.data(), hq, d), dense_opt);

    // 4. Error against dense: ||out_aqua - out_dense|| / ||out_dense|| over all query heads.
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < dense.size(); ++i) {
      diff += double(approx[i] - dense[i]) * (approx[i] - dense[i]);
      norm += double(dense[i]) * dense[i];
    }
    std::printf("aqua %s quick start: Hq=%ld Hkv=%ld d=%ld N=%ld\n", AQUA_VERSION_STRING, long(hq), long(hkv),
                long(d), long(n));
    std::printf("AQUA decode, k = %ld of %ld dims: rel. L2 error against dense %.4f\n", o.k, long(d),
                std::sqrt(diff / norm));
  } catch (const aqua::error& e) {
    std::fprintf(stderr, "aqua_quickstart: %s\n", e.what());
    return 1;
  }
  return 0;
}
