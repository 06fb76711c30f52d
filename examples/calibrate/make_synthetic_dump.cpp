// Writes a synthetic activation dump in the layout aqua_calibrate reads: q_layer{l}.npy
// [Hq, rows, d] and k_layer{l}.npy [Hkv, rows, d]. Queries and keys of each KV group live mostly in
// a planted low-rank subspace (different per layer and KV head) plus isotropic noise, so a
// calibrated projection has something to find.
//
//   aqua_make_synthetic_dump DIR [--layers 2] [--query-heads 4] [--kv-heads 2] [--rows 256] [--d 32]
//                                [--rank 4] [--seed 1]
// Exit status: 0 success (also --help), 1 a file that fails to write, 2 bad usage.
#include <aqua/io.hpp>
#include <aqua/projection.hpp>

#include "calibrate/make_dump_cli.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_make_synthetic_dump"};
  aqua_make_dump_cli::options o;
  aqua_make_dump_cli::add_options(app, o);
  const int status = aqua_cli::parse(app, argc, argv);
  if (status >= 0) return status;
  const std::string& dir = o.dir;
  const long layers = o.layers, hq = o.hq, hkv = o.hkv, rows = o.rows, d = o.d, rank = o.rank;
  const unsigned seed = o.seed;
  try {
    std::filesystem::create_directories(dir);
    std::mt19937 rng(static_cast<std::uint32_t>(seed));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (long l = 0; l < layers; ++l) {
      std::vector<float> q(static_cast<std::size_t>(hq * rows * d)),
          k(static_cast<std::size_t>(hkv * rows * d));
      for (long h = 0; h < hkv; ++h) {
        // The subspace depends on (layer, head) only, not on --seed: two dumps with different
        // seeds are held-out samples of the same "model".
        const auto frame =
            aqua::head_projection::random_orthogonal(d, static_cast<std::uint64_t>(1000 + l * hkv + h));
        auto fill = [&](float* out) {
          for (long r = 0; r < rows; ++r) {
            for (long c = 0; c < d; ++c) out[r * d + c] = 0.05f * normal(rng);
            for (long j = 0; j < rank; ++j) {
              const float z = normal(rng) * float(rank - j);
              for (long c = 0; c < d; ++c) out[r * d + c] += z * frame.basis()(c, j);
            }
          }
        };
        fill(k.data() + h * rows * d);
        for (long g = 0; g < hq / hkv; ++g) fill(q.data() + (h * (hq / hkv) + g) * rows * d);
      }
      const std::string base = (std::filesystem::path(dir) / "").string();
      aqua::save_npy(base + "q_layer" + std::to_string(l) + ".npy", q.data(), {hq, rows, d});
      aqua::save_npy(base + "k_layer" + std::to_string(l) + ".npy", k.data(), {hkv, rows, d});
    }
  } catch (const std::exception& e) {
    std::cerr << "aqua_make_synthetic_dump: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
