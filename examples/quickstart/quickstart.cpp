// Quick start: exact dense attention on generated data, with the shapes an engine would pass.
//
//   aqua_quickstart [--hq 32] [--hkv 8] [--d 128] [--n 4096] [--threads 1]
// (flags parsed by CLI11 in quickstart_cli.hpp; exit status 0, 1 on a library error, 2 on bad usage)
#include <aqua/aqua.hpp>

#include "quickstart/quickstart_cli.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_quickstart"};
  aqua_quickstart_cli::options o;
  aqua_quickstart_cli::add_options(app, o);
  if (const int status = aqua_cli::parse(app, argc, argv); status >= 0) return status;
  const long hq = o.hq, hkv = o.hkv, d = o.d, n = o.n;
  const int threads = o.threads;

  // An engine's KV cache laid out token-major, [N, Hkv, d]: the views below read it in place.
  std::vector<float> q(static_cast<std::size_t>(hq * d)), k(static_cast<std::size_t>(n * hkv * d)),
      v(k.size()), out(q.size());
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (auto* buf : {&q, &k, &v})
    for (auto& x : *buf) x = normal(rng);

  const aqua::tensor3_view<const float> keys(k.data(), {hkv, n, d}, {d, hkv * d, 1});
  const aqua::tensor3_view<const float> values(v.data(), {hkv, n, d}, {d, hkv * d, 1});
  aqua::attention_options options;
  options.threads = threads;
  try {
    const auto start = std::chrono::steady_clock::now();
    aqua::dense_decode<float>(aqua::make_view(q.data(), hq, d), keys, values,
                              aqua::make_view(out.data(), hq, d), options);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    double norm = 0;
    for (float x : out) norm += double(x) * x;
    const double mib = 2.0 * double(n) * hkv * d * sizeof(float) / (1024.0 * 1024.0);
    std::printf("aqua %s quick start: exact dense decode\n", AQUA_VERSION_STRING);
    std::printf(
        "  shape: Hq=%ld Hkv=%ld (group %ld) d=%ld N=%ld, token-major cache read through strided views\n", hq,
        hkv, hq / hkv, d, n);
    std::printf("  read %.1f MiB of keys and values in %.3f ms (%.2f GB/s, %d thread%s)\n", mib, ms,
                mib * 1.048576 / ms, threads, threads == 1 ? "" : "s");
    std::printf("  output norm %.4f (one attention row per query head, written to the caller's buffer)\n",
                std::sqrt(norm));
  } catch (const aqua::error& e) {
    std::fprintf(stderr, "aqua_quickstart: %s\n", e.what());
    return 1;
  }
  return 0;
}
