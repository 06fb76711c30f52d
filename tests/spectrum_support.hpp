// Synthetic attention data with a decaying spectrum, for the truncation and H2O tests: random
// orthogonal bases P per KV head, and queries/keys whose projected coordinates (x P) have
// per-dimension standard deviation amplitude * exp(-i / tau), like calibrated heads.
#pragma once

#include <aqua/eigen.hpp>
#include <aqua/kv_cache.hpp>
#include <aqua/tensor_view.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "test_support.hpp"

namespace aqua_test {

/// Rows of `count` raw vectors (row-major [count, d]) whose coordinates in basis p decay: x = z P^T
/// with z_i ~ N(0, (amplitude exp(-i / tau))^2).
inline void decaying_rows(const Eigen::MatrixXf& p, index_t count, double tau, double amplitude,
                          std::mt19937& rng, float* out) {
  const index_t d = p.rows();
  std::normal_distribution<double> dist(0.0, 1.0);
  Eigen::VectorXf z(d);
  for (index_t j = 0; j < count; ++j) {
    for (index_t i = 0; i < d; ++i)
      z(i) = static_cast<float>(amplitude * std::exp(-double(i) / tau) * dist(rng));
    Eigen::VectorXf x = p * z;  // x P = z because P is orthogonal
    for (index_t i = 0; i < d; ++i) out[j * d + i] = x(i);
  }
}

/// One layer's bases and a projected cache using them.
struct spectrum_layer {
  index_t hq, hkv, d;
  std::vector<Eigen::MatrixXf> bases;
  explicit spectrum_layer(index_t hq_, index_t hkv_, index_t d_, unsigned seed = 100)
      : hq(hq_), hkv(hkv_), d(d_) {
    for (index_t h = 0; h < hkv; ++h) bases.push_back(random_orthogonal_basis(d, seed + unsigned(h)));
  }
  aqua::kv_cache make_cache(const aqua::kv_cache_options& opt) const {
    std::vector<aqua::matrix_view<const float>> views;
    for (const auto& b : bases) views.push_back(aqua::view_of(b));
    return aqua::kv_cache(views, opt);
  }
  /// Keys [Hkv, count, d] (decaying) and values (standard normal).
  void tokens(index_t count, std::mt19937& rng, std::vector<float>& k, std::vector<float>& v, double tau = 16,
              double amplitude = 3) const {
    k.resize(static_cast<std::size_t>(hkv * count * d));
    v.resize(k.size());
    for (index_t h = 0; h < hkv; ++h)
      decaying_rows(bases[std::size_t(h)], count, tau, amplitude, rng, k.data() + h * count * d);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (auto& x : v) x = dist(rng);
  }
  /// Queries [Hq, d]; query head h decays in its KV head's basis.
  void queries(std::mt19937& rng, std::vector<float>& q, double tau = 16, double amplitude = 3) const {
    q.resize(static_cast<std::size_t>(hq * d));
    for (index_t h = 0; h < hq; ++h)
      decaying_rows(bases[std::size_t(h / (hq / hkv))], 1, tau, amplitude, rng, q.data() + h * d);
  }
};

}  // namespace aqua_test
