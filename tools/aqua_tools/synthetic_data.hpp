// Synthetic attention data shared by the examples and the benchmarks (not part of the library).
//
// One model of a calibrated head: in projected coordinates, queries and keys have per-dimension
// standard deviation A exp(-i / TAU) (i the projected dim, ordered by importance, as calibration
// orders them), values are standard normal. Raw (unprojected) vectors are the projected ones
// rotated by a random orthogonal basis P per KV head (raw = z P^T, so z = raw P).
#pragma once

#include <aqua/eigen.hpp>
#include <aqua/kv_cache.hpp>
#include <aqua/tensor_view.hpp>

#include <Eigen/Core>
#include <Eigen/QR>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <random>
#include <vector>

namespace aqua_examples {

using aqua::index_t;

/// Per-dimension standard deviations A exp(-i / tau), i = 0 .. d-1.
inline std::vector<float> decaying_spectrum(index_t d, double tau, double amplitude = 1.0) {
  std::vector<float> s(static_cast<std::size_t>(d));
  for (index_t i = 0; i < d; ++i)
    s[std::size_t(i)] = static_cast<float>(amplitude * std::exp(-double(i) / tau));
  return s;
}

/// rows x d row-major draws x[r][i] = s_i z, z ~ N(0, 1), drawn in row order from `rng`.
template <class Rng>
void fill_spectrum_rows(Rng& rng, const std::vector<float>& spectrum, index_t rows, float* out) {
  std::normal_distribution<float> normal;
  const auto d = static_cast<index_t>(spectrum.size());
  for (index_t r = 0; r < rows; ++r)
    for (index_t i = 0; i < d; ++i) out[r * d + i] = spectrum[std::size_t(i)] * normal(rng);
}

/// rows x d row-major rows with the decaying spectrum exp(-i / tau), seeded.
inline std::vector<float> spectrum_rows(index_t rows, index_t d, double tau, unsigned seed,
                                        double amplitude = 1.0) {
  std::vector<float> x(static_cast<std::size_t>(rows * d));
  std::mt19937 rng(seed);
  fill_spectrum_rows(rng, decaying_spectrum(d, tau, amplitude), rows, x.data());
  return x;
}

/// `count` standard normal floats, seeded.
inline std::vector<float> normal_data(std::size_t count, unsigned seed) {
  std::vector<float> x(count);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  for (auto& v : x) v = normal(rng);
  return x;
}

/// One random orthogonal d x d basis per KV head (QR of a Gaussian matrix), drawn from `rng`.
template <class Rng>
std::vector<Eigen::MatrixXf> random_orthogonal_bases(index_t heads, index_t d, Rng& rng) {
  std::normal_distribution<double> normal;
  std::vector<Eigen::MatrixXf> bases;
  for (index_t h = 0; h < heads; ++h) {
    Eigen::MatrixXd g(d, d);
    for (index_t i = 0; i < g.size(); ++i) g.data()[i] = normal(rng);
    Eigen::MatrixXd q = Eigen::HouseholderQR<Eigen::MatrixXd>(g).householderQ();
    bases.push_back(q.cast<float>());
  }
  return bases;
}

inline std::vector<aqua::matrix_view<const float>> basis_views(const std::vector<Eigen::MatrixXf>& bases) {
  std::vector<aqua::matrix_view<const float>> views;
  for (const auto& b : bases) views.push_back(aqua::view_of(b));
  return views;
}

/// Rotates rows given in projected coordinates into raw ones in place: row x := x P^T.
inline void rotate_rows_to_raw(const Eigen::MatrixXf& basis, index_t rows, float* x) {
  const index_t d = basis.rows();
  Eigen::Map<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> m(x, rows, d);
  m = (m * basis.transpose()).eval();
}

struct no_token_sink {
  void operator()(const float*, const float*, index_t) const {}
};

/// Appends `count` synthetic tokens per KV head to caches, in pieces: keys with the decaying
/// spectrum in projected coordinates (rotated to raw coordinates when `bases` is not empty, so a
/// cache built on those bases stores them projected back), values standard normal. `rng` carries
/// over calls, so growing a cache in steps gives the same tokens as filling it at once. `sink`
/// sees every piece as it is appended: (raw keys, values, tokens), each [Hkv, tokens, d].
template <class Rng, class Sink = no_token_sink>
void append_spectrum_tokens(Rng& rng, const std::vector<float>& spectrum,
                            const std::vector<Eigen::MatrixXf>& bases, index_t count,
                            const std::vector<aqua::kv_cache*>& caches, Sink&& sink = {}) {
  if (caches.empty() || count <= 0) return;
  const index_t hkv = caches.front()->kv_heads(), d = static_cast<index_t>(spectrum.size());
  const index_t piece = 2048;
  std::vector<float> keys, values;
  std::normal_distribution<float> normal;
  for (index_t t0 = 0; t0 < count; t0 += piece) {
    const index_t cnt = std::min(piece, count - t0);
    keys.resize(std::size_t(hkv * cnt * d));
    values.resize(keys.size());
    for (index_t h = 0; h < hkv; ++h) {
      float* kh = keys.data() + h * cnt * d;
      fill_spectrum_rows(rng, spectrum, cnt, kh);
      if (!bases.empty()) rotate_rows_to_raw(bases[std::size_t(h)], cnt, kh);
    }
    for (auto& v : values) v = normal(rng);
    sink(static_cast<const float*>(keys.data()), static_cast<const float*>(values.data()), cnt);
    for (auto* cache : caches)
      cache->append(aqua::make_view(static_cast<const float*>(keys.data()), hkv, cnt, d),
                    aqua::make_view(static_cast<const float*>(values.data()), hkv, cnt, d));
  }
}

/// Queries [heads, d] with the decaying spectrum, rotated to raw coordinates by the basis of each
/// head's KV group when `bases` is not empty.
inline std::vector<float> spectrum_queries(index_t heads, index_t d, double tau, unsigned seed,
                                           const std::vector<Eigen::MatrixXf>& bases) {
  auto q = spectrum_rows(heads, d, tau, seed);
  if (!bases.empty()) {
    const index_t group = heads / static_cast<index_t>(bases.size());
    for (index_t h = 0; h < heads; ++h)
      rotate_rows_to_raw(bases[std::size_t(h / group)], 1, q.data() + h * d);
  }
  return q;
}

}  // namespace aqua_examples
