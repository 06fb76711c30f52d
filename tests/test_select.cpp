// Top-k selection against a brute-force ranking (stable sort by decreasing magnitude).
#include <aqua/select.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

// Brute force: every index, stable-sorted by decreasing |x| (so equal magnitudes keep index order).
std::vector<index_t> brute_ranking(const std::vector<float>& x) {
  std::vector<index_t> idx(x.size());
  std::iota(idx.begin(), idx.end(), index_t{0});
  std::stable_sort(idx.begin(), idx.end(), [&](index_t a, index_t b) {
    return std::abs(double(x[std::size_t(a)])) > std::abs(double(x[std::size_t(b)]));
  });
  return idx;
}

// Values with many exact ties (small integers of either sign).
std::vector<float> tied_values(index_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-4, 4);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (auto& v : x) v = static_cast<float>(dist(rng)) * 0.5f;
  return x;
}

index_t run(const std::vector<float>& x, const aqua::selection_spec& spec, std::vector<index_t>& out) {
  out.assign(x.size(), -1);
  return aqua::select_top<float>(aqua::make_view(x.data(), index_t(x.size())), spec,
                                 aqua::make_view(out.data(), index_t(out.size())));
}

}  // namespace

TEST_CASE("top-k selection equals a brute-force sort, ties broken by lower index", "[select]") {
  const index_t n = GENERATE(1, 7, 64, 128, 256);
  const bool ties = GENERATE(false, true);
  std::vector<float> x = ties ? tied_values(n, 5) : std::vector<float>(static_cast<std::size_t>(n));
  if (!ties) {
    std::mt19937 rng(9);
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
  }
  const auto ref = brute_ranking(x);
  std::vector<index_t> out;
  for (index_t k : {index_t(1), n / 3 + 1, n / 2 + 1, n}) {
    if (k > n) continue;
    CAPTURE(n, ties, k);
    REQUIRE(run(x, aqua::selection_spec::top_k(k), out) == k);
    CHECK(std::vector<index_t>(out.begin(), out.begin() + k) ==
          std::vector<index_t>(ref.begin(), ref.begin() + k));
  }
}

TEST_CASE("fraction selection keeps ceil(f * n) dims", "[select]") {
  const auto x = tied_values(128, 11);
  const auto ref = brute_ranking(x);
  std::vector<index_t> out;
  for (double f : {0.01, 0.25, 0.3, 1.0}) {
    const auto expected = static_cast<index_t>(std::ceil(f * 128));
    CAPTURE(f);
    REQUIRE(run(x, aqua::selection_spec::fraction(f), out) == expected);
    CHECK(std::vector<index_t>(out.begin(), out.begin() + expected) ==
          std::vector<index_t>(ref.begin(), ref.begin() + expected));
  }
}

TEST_CASE("energy selection keeps the smallest prefix reaching tau of the squared norm", "[select]") {
  const bool ties = GENERATE(false, true);
  std::vector<float> x = tied_values(96, 13);
  if (!ties) {
    std::mt19937 rng(17);
    std::normal_distribution<float> nd;
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = nd(rng) * std::exp(-float(i) / 16.0f);
  }
  const auto ref = brute_ranking(x);
  double total = 0;
  for (float v : x) total += double(v) * double(v);
  std::vector<index_t> out;
  for (double tau : {0.1, 0.5, 0.9, 0.99, 1.0}) {
    index_t expected = 0;
    double acc = 0;
    while (expected < 96 && acc < tau * total * (1 - 1e-12)) {
      acc += double(x[std::size_t(ref[std::size_t(expected)])]) *
             double(x[std::size_t(ref[std::size_t(expected)])]);
      ++expected;
    }
    CAPTURE(ties, tau);
    REQUIRE(run(x, aqua::selection_spec::energy(tau), out) == expected);
    CHECK(std::vector<index_t>(out.begin(), out.begin() + expected) ==
          std::vector<index_t>(ref.begin(), ref.begin() + expected));
  }
}

TEST_CASE("selection works on strided values and 32-bit index buffers", "[select]") {
  std::vector<double> storage = {0.0, 9.0, -3.0, 9.0, 5.0, 9.0, -7.0, 9.0};  // every other value is padding
  aqua::vector_view<const double> x(storage.data(), {4}, {2});               // 0, -3, 5, -7
  std::vector<int> out(4);
  REQUIRE(aqua::select_top<double>(x, aqua::selection_spec::top_k(2), aqua::make_view(out.data(), 4)) == 2);
  CHECK(out[0] == 3);
  CHECK(out[1] == 2);
}

TEST_CASE("selection rejects bad specs and buffers with a message naming them", "[select][errors]") {
  std::vector<float> x(8, 1.0f);
  std::vector<index_t> out(8), small(4);
  auto xv = aqua::make_view(static_cast<const float*>(x.data()), 8);
  auto ov = aqua::make_view(out.data(), 8);
  CHECK_THROWS_WITH(aqua::select_top<float>(xv, aqua::selection_spec::top_k(0), ov), Contains("k = 0"));
  CHECK_THROWS_WITH(aqua::select_top<float>(xv, aqua::selection_spec::top_k(9), ov),
                    Contains("k = 9") && Contains("[1, 8]"));
  CHECK_THROWS_WITH(aqua::select_top<float>(xv, aqua::selection_spec::fraction(0.0), ov),
                    Contains("fraction"));
  CHECK_THROWS_WITH(aqua::select_top<float>(xv, aqua::selection_spec::energy(1.5), ov),
                    Contains("tau = 1.5"));
  CHECK_THROWS_WITH(
      aqua::select_top<float>(xv, aqua::selection_spec::top_k(2), aqua::make_view(small.data(), 4)),
      Contains("indices has room for 4"));
  x[3] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(aqua::select_top<float>(xv, aqua::selection_spec::top_k(2), ov),
                    Contains("values holds a non-finite"));
}

// Brute-force count: walk a ranking by decreasing weight (stable: ties by lower index) and stop at
// the first prefix whose summed energy reaches tau of the total.
index_t brute_energy_count(const std::vector<double>& weight, const std::vector<double>& energy, double tau) {
  std::vector<index_t> idx(weight.size());
  std::iota(idx.begin(), idx.end(), index_t{0});
  std::stable_sort(idx.begin(), idx.end(),
                   [&](index_t a, index_t b) { return weight[std::size_t(a)] > weight[std::size_t(b)]; });
  double total = 0, acc = 0;
  for (double e : energy) total += e;
  for (std::size_t c = 0; c < idx.size(); ++c) {
    acc += energy[std::size_t(idx[c])];
    if (acc >= tau * total * (1 - 1e-12)) return index_t(c + 1);
  }
  return index_t(idx.size());
}

TEST_CASE("select_count returns the number of dims select_top keeps, for every kind of spec", "[select]") {
  const index_t n = GENERATE(1, 8, 37, 600);
  const bool ties = GENERATE(false, true);
  std::vector<float> x = ties ? tied_values(n, 31) : std::vector<float>(static_cast<std::size_t>(n));
  if (!ties) {
    std::mt19937 rng(37);
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
  }
  const auto xv = aqua::make_view(static_cast<const float*>(x.data()), n);
  std::vector<double> mag(x.size()), sq(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    mag[i] = std::abs(double(x[i]));
    sq[i] = double(x[i]) * double(x[i]);
  }
  CAPTURE(n, ties);
  CHECK(aqua::select_count<float>(xv, aqua::selection_spec::top_k(n)) == n);
  CHECK(aqua::select_count<float>(xv, aqua::selection_spec::top_k(1)) == 1);
  CHECK(aqua::select_count<float>(xv, aqua::selection_spec::fraction(0.5)) == (n + 1) / 2);
  for (double tau : {0.1, 0.5, 0.9, 0.99, 1.0}) {
    CAPTURE(tau);
    CHECK(aqua::select_count<float>(xv, aqua::selection_spec::energy(tau)) ==
          brute_energy_count(mag, sq, tau));
  }
}

TEST_CASE("select_count with a separate weight ranks by weight and thresholds the energies", "[select]") {
  // Ranked by weight 4, 3, 2, 1 -> dims 2, 0, 3, 1 with energies 1, 8, 1, 90: tau 0.05 needs dim 2
  // and dim 0 (1 + 8 = 9 of 100), tau 0.5 needs all four. The magnitude rule alone would keep dim 1.
  const std::vector<float> weight = {3, 1, 4, 2}, energy = {8, 90, 1, 1};
  const auto wv = aqua::make_view(weight.data(), 4), ev = aqua::make_view(energy.data(), 4);
  CHECK(aqua::select_count<float>(wv, ev, aqua::selection_spec::energy(0.01)) == 1);
  CHECK(aqua::select_count<float>(wv, ev, aqua::selection_spec::energy(0.05)) == 2);
  CHECK(aqua::select_count<float>(wv, ev, aqua::selection_spec::energy(0.5)) == 4);
  CHECK(aqua::select_count<float>(wv, ev, aqua::selection_spec::top_k(3)) == 3);
  std::mt19937 rng(41);
  std::uniform_int_distribution<int> small(0, 3);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<float> w(17), e(17);
    std::vector<double> wd(17), ed(17);
    for (std::size_t i = 0; i < w.size(); ++i) {
      w[i] = float(small(rng));  // many ties in the ranking weight
      e[i] = float(small(rng) + 1);
      wd[i] = w[i];
      ed[i] = e[i];
    }
    const double tau = 0.05 + 0.9 * trial / 50.0;
    CAPTURE(trial, tau);
    CHECK(aqua::select_count<float>(aqua::make_view(w.data(), 17), aqua::make_view(e.data(), 17),
                                    aqua::selection_spec::energy(tau)) == brute_energy_count(wd, ed, tau));
  }
}

TEST_CASE("select_count rejects bad specs and inputs with a message naming them", "[select][errors]") {
  std::vector<float> x(8, 1.0f), e(7, 1.0f);
  auto xv = aqua::make_view(static_cast<const float*>(x.data()), 8);
  CHECK_THROWS_WITH(aqua::select_count<float>(xv, aqua::selection_spec::top_k(9)),
                    Contains("aqua::select_count") && Contains("k = 9"));
  CHECK_THROWS_WITH(aqua::select_count<float>(xv, aqua::selection_spec::energy(0.0)), Contains("tau = 0"));
  CHECK_THROWS_WITH(aqua::select_count<float>(xv, aqua::make_view(static_cast<const float*>(e.data()), 7),
                                              aqua::selection_spec::top_k(2)),
                    Contains("energy has 7 entries"));
  std::vector<float> neg(8, 1.0f);
  neg[5] = -1.0f;
  CHECK_THROWS_WITH(aqua::select_count<float>(xv, aqua::make_view(static_cast<const float*>(neg.data()), 8),
                                              aqua::selection_spec::top_k(2)),
                    Contains("energy[5] = -1"));
  x[2] = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(aqua::select_count<float>(xv, aqua::selection_spec::top_k(2)),
                    Contains("values holds a non-finite"));
}

#include <aqua/detail/aqua_engine.hpp>

TEST_CASE("the kernels' threshold selection picks the same set as the brute-force ranking", "[select]") {
  const index_t n = GENERATE(1, 9, 128, 200);
  const bool ties = GENERATE(false, true);
  std::vector<float> x = ties ? tied_values(n, 21) : std::vector<float>(static_cast<std::size_t>(n));
  if (!ties) {
    std::mt19937 rng(23);
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
  }
  std::vector<float> w(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) w[i] = std::abs(x[i]);
  const auto ref = brute_ranking(x);
  std::vector<std::uint32_t> bits(x.size());
  std::vector<std::int32_t> out(x.size());
  for (int simd_off : {0, 1}) {
    aqua::detail::simd_disabled() = simd_off;
    for (index_t k = 1; k <= n; k += std::max<index_t>(1, n / 7)) {
      std::vector<std::int32_t> expected(ref.begin(), ref.begin() + k);
      std::sort(expected.begin(), expected.end());
      aqua::detail::select_top_ascending(w.data(), n, k, bits.data(), out.data());
      CAPTURE(n, ties, k, simd_off);
      CHECK(std::vector<std::int32_t>(out.begin(), out.begin() + k) == expected);
    }
  }
  aqua::detail::simd_disabled() = 0;
}
