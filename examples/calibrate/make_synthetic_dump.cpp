// Writes a synthetic activation dump in the layout aqua_calibrate reads: q_layer{l}.npy
// [Hq, rows, d] and k_layer{l}.npy [Hkv, rows, d]. Queries and keys of each KV group live mostly in
// a planted low-rank subspace (different per layer and KV head) plus isotropic noise, so a
// calibrated projection has something to find.
//
//   aqua_make_synthetic_dump DIR [--layers 2] [--query-heads 4] [--kv-heads 2] [--rows 256] [--d 32]
//                                [--rank 4] [--seed 1]
#include <aqua/io.hpp>
#include <aqua/projection.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace {

long parse_positive(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || v < 1) {
    std::cerr << "aqua_make_synthetic_dump: " << flag << " needs a positive integer, got \"" << text
              << "\"\n";
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help") {
    std::cerr << "usage: aqua_make_synthetic_dump DIR [--layers L] [--query-heads HQ] [--kv-heads HKV] "
                 "[--rows N] [--d D] [--rank R] [--seed S]\n";
    return argc < 2 ? 2 : 0;
  }
  const std::string dir = argv[1];
  long layers = 2, hq = 4, hkv = 2, rows = 256, d = 32, rank = 4, seed = 1;
  for (int i = 2; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) {
      std::cerr << "aqua_make_synthetic_dump: " << flag << " needs a value\n";
      return 2;
    }
    long* target = flag == "--layers"        ? &layers
                   : flag == "--query-heads" ? &hq
                   : flag == "--kv-heads"    ? &hkv
                   : flag == "--rows"        ? &rows
                   : flag == "--d"           ? &d
                   : flag == "--rank"        ? &rank
                   : flag == "--seed"        ? &seed
                                             : nullptr;
    if (!target) {
      std::cerr << "aqua_make_synthetic_dump: unknown option " << flag << "\n";
      return 2;
    }
    *target = parse_positive(flag, argv[i + 1]);
  }
  if (hq % hkv != 0 || rank > d) {
    std::cerr << "aqua_make_synthetic_dump: need query heads a multiple of KV heads and rank <= d\n";
    return 2;
  }
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
