// Top-k selection against a brute-force ranking (stable sort by decreasing magnitude).
#include <aqua/detail/simd.hpp>
#include <aqua/select.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <utility>
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

TEST_CASE("the engine's per-dim top-k selection picks the brute-force set in increasing index order",
          "[select]") {
  const index_t n = GENERATE(1, 9, 128, 200);
  const bool ties = GENERATE(false, true);
  std::vector<float> x = ties ? tied_values(n, 21) : std::vector<float>(static_cast<std::size_t>(n));
  if (!ties) {
    std::mt19937 rng(23);
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
  }
  std::vector<float> w(x.size());
  std::vector<double> e(x.size());  // unused by top-k specs
  for (std::size_t i = 0; i < x.size(); ++i) w[i] = std::abs(x[i]);
  const auto ref = brute_ranking(x);
  std::vector<std::int32_t> scratch(x.size()), out(x.size());
  for (int simd_off : {0, 1}) {
    aqua::set_max_isa(simd_off ? aqua::isa::portable : aqua::isa::avx512);
    for (index_t k = 1; k <= n; k += std::max<index_t>(1, n / 7)) {
      std::vector<std::int32_t> expected(ref.begin(), ref.begin() + k);
      std::sort(expected.begin(), expected.end());
      CAPTURE(n, ties, k, simd_off);
      REQUIRE(aqua::detail::select_dims(w.data(), e.data(), n, n, false, aqua::selection_spec::top_k(k),
                                        scratch.data(), out.data()) == k);
      CHECK(std::vector<std::int32_t>(out.begin(), out.begin() + k) == expected);
    }
  }
  aqua::set_max_isa(aqua::isa::avx512);
}

// ---------------------------------------------------------------------------------------------
// The ranking path works on integer images of the values and splits the ranking into runs; these
// cases pin the inputs that could break it, each against an independent stable-sort oracle.

namespace {

// Oracle: every index, stable-sorted by decreasing weight (equal weights keep index order, and
// -0.0 == +0.0 tie), then the spec's count: k, ceil(f * n), or the shortest prefix whose energies
// (summed in rank order, in double) reach tau of the total with the 1e-12 relative slack.
template <class W, class E>
std::vector<index_t> select_oracle_ranking(const std::vector<W>& weight, const std::vector<E>& energy,
                                           const aqua::selection_spec& spec, index_t& count) {
  std::vector<std::pair<W, index_t>> items;
  for (std::size_t i = 0; i < weight.size(); ++i) items.emplace_back(weight[i], index_t(i));
  std::stable_sort(items.begin(), items.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<index_t> order;
  for (const auto& it : items) order.push_back(it.second);
  const index_t n = index_t(weight.size());
  switch (spec.type) {
    case aqua::selection_spec::kind::top_k:
      count = spec.k;
      break;
    case aqua::selection_spec::kind::fraction:
      count = std::max<index_t>(1, index_t(std::ceil(spec.value * double(n) - 1e-9)));
      break;
    case aqua::selection_spec::kind::energy: {
      double total = 0, acc = 0;
      for (E e : energy) total += double(e);
      count = n;
      for (index_t c = 0; c < n; ++c) {
        acc += double(energy[std::size_t(order[std::size_t(c)])]);
        if (acc >= spec.value * total * (1 - 1e-12)) {
          count = c + 1;
          break;
        }
      }
      break;
    }
  }
  order.resize(std::size_t(count));
  return order;
}

// Value patterns that stress an integer-key ranking: sign, zeros of both signs, denormals, exact
// ties, values far apart in exponent, all equal.
enum class select_pattern { normal, ties, zeros, denormals, extremes, all_equal, mixed };

template <class T>
std::vector<T> select_pattern_values(select_pattern p, index_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd;
  std::uniform_int_distribution<int> small(-3, 3);
  const T denorm = std::numeric_limits<T>::denorm_min();
  std::vector<T> x(static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < x.size(); ++i) {
    switch (p) {
      case select_pattern::normal:
        x[i] = T(nd(rng));
        break;
      case select_pattern::ties:
        x[i] = T(small(rng)) * T(0.25);
        break;
      case select_pattern::zeros:
        x[i] = (rng() & 1) ? T(0) : -T(0);
        break;
      case select_pattern::denormals:
        x[i] = denorm * T(small(rng)) + ((rng() % 4 == 0) ? -T(0) : T(0));
        break;
      case select_pattern::extremes: {
        const T big = std::numeric_limits<T>::max(), tiny = std::numeric_limits<T>::min();
        const T choices[] = {big, -big, tiny, -tiny, denorm, T(1), T(-1), T(0), -T(0)};
        x[i] = choices[rng() % 9];
        break;
      }
      case select_pattern::all_equal:
        x[i] = (i % 2) ? T(-1.5) : T(1.5);
        break;
      case select_pattern::mixed:  // a few ties among many distinct values, zeros of both signs
        x[i] = (rng() % 5 == 0) ? T(small(rng)) : (rng() % 9 == 0 ? -T(0) : T(nd(rng)));
        break;
    }
  }
  return x;
}

std::vector<aqua::selection_spec> select_specs_for(index_t n) {
  std::vector<aqua::selection_spec> specs;
  for (index_t k : {index_t(1), index_t(2), n / 3 + 1, index_t(31), index_t(32), index_t(33), index_t(63),
                    index_t(64), index_t(65), index_t(129), n - 1, n})
    if (k >= 1 && k <= n) specs.push_back(aqua::selection_spec::top_k(k));
  for (double f : {0.1, 0.25, 0.5, 1.0}) specs.push_back(aqua::selection_spec::fraction(f));
  for (double tau : {0.05, 0.5, 0.9, 0.99, 1.0}) specs.push_back(aqua::selection_spec::energy(tau));
  return specs;
}

const char* select_spec_name(const aqua::selection_spec& s) {
  switch (s.type) {
    case aqua::selection_spec::kind::top_k:
      return "top_k";
    case aqua::selection_spec::kind::fraction:
      return "fraction";
    case aqua::selection_spec::kind::energy:
      return "energy";
  }
  return "?";
}

// select_top<T> on x against the oracle over (|x|, x^2 squared in double as every selection
// path forms it), for every spec; with the vector paths on and off.
template <class T>
void check_select_top_against_oracle(const std::vector<T>& x) {
  const index_t n = index_t(x.size());
  std::vector<T> mag(x.size());
  std::vector<double> sq(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    mag[i] = std::abs(x[i]);
    sq[i] = double(x[i]) * double(x[i]);
  }
  std::vector<std::int32_t> out(x.size());
  for (int simd_off : {0, 1}) {
    aqua::set_max_isa(simd_off ? aqua::isa::portable : aqua::isa::avx512);
    for (const auto& spec : select_specs_for(n)) {
      index_t expected_count = 0;
      const auto expected = select_oracle_ranking(mag, sq, spec, expected_count);
      std::fill(out.begin(), out.end(), -1);
      const index_t count =
          aqua::select_top<T>(aqua::make_view(x.data(), n), spec, aqua::make_view(out.data(), n));
      CAPTURE(n, simd_off, select_spec_name(spec), spec.k, spec.value);
      REQUIRE(count == expected_count);
      CHECK(std::vector<index_t>(out.begin(), out.begin() + count) == expected);
    }
  }
  aqua::set_max_isa(aqua::isa::avx512);
}

}  // namespace

TEST_CASE("select_top ranks like a stable sort on zeros, denormals, ties and extremes, float", "[select]") {
  const index_t n = GENERATE(1, 2, 7, 8, 9, 31, 33, 64, 65, 127, 128, 200, 256, 257, 511, 512, 513, 600);
  const auto p =
      GENERATE(select_pattern::normal, select_pattern::ties, select_pattern::zeros, select_pattern::denormals,
               select_pattern::extremes, select_pattern::all_equal, select_pattern::mixed);
  CAPTURE(n, int(p));
  check_select_top_against_oracle(select_pattern_values<float>(p, n, unsigned(n) * 7 + unsigned(p)));
}

TEST_CASE("select_top ranks like a stable sort on zeros, denormals, ties and extremes, double", "[select]") {
  const index_t n = GENERATE(1, 9, 64, 128, 256, 257, 512, 513);
  const auto p = GENERATE(select_pattern::normal, select_pattern::ties, select_pattern::zeros,
                          select_pattern::denormals, select_pattern::extremes, select_pattern::mixed);
  CAPTURE(n, int(p));
  check_select_top_against_oracle(select_pattern_values<double>(p, n, unsigned(n) * 11 + unsigned(p)));
}

TEST_CASE("double selection separates magnitudes that round to the same float", "[select]") {
  // 1 + 2^-40 and 1 are one float apart from nothing: a float key would tie them.
  const double base = 1.0, up = 1.0 + std::ldexp(1.0, -40), down = 1.0 - std::ldexp(1.0, -40);
  std::vector<double> x = {base, -down, up, base, -up, down, 0.5, -base};
  std::vector<std::int32_t> out(x.size());
  REQUIRE(aqua::select_top<double>(aqua::make_view(x.data(), 8), aqua::selection_spec::top_k(8),
                                   aqua::make_view(out.data(), 8)) == 8);
  CHECK(out == std::vector<std::int32_t>{2, 4, 0, 3, 7, 1, 5, 6});
  check_select_top_against_oracle(x);
}

TEST_CASE("energy selection over many runs of the ranking sums in rank order", "[select]") {
  // A flat spectrum needs nearly every dim for tau near 1, so the ranking is produced in several
  // runs; tau = 1 must stop at the last non-zero dim (zeros trail the ranking).
  const index_t n = GENERATE(96, 256, 300);
  std::mt19937 rng(static_cast<unsigned>(n));
  std::uniform_real_distribution<float> flat(0.9f, 1.1f);
  std::vector<float> x(static_cast<std::size_t>(n));
  for (auto& v : x) v = (rng() % 10 == 0) ? 0.0f : flat(rng) * ((rng() & 1) ? 1.0f : -1.0f);
  check_select_top_against_oracle(x);
}

TEST_CASE("select_ranked ranks float weights and thresholds separate energies like the oracle", "[select]") {
  // The engine's shape: float weights (summed magnitudes), separate energies (float here, to
  // exercise the generic template; the engine passes its squares in double), int32 indices.
  // Weights here also take negative values and both zeros: the ranking must follow the value
  // order (negative weights last), which select_count's weight overload exposes.
  const index_t n = GENERATE(1, 5, 32, 100, 128, 256, 400, 512, 513, 700);
  const int trial = GENERATE(0, 1, 2, 3);
  std::mt19937 rng(unsigned(n) * 13 + unsigned(trial));
  std::uniform_int_distribution<int> small(-2, 6);
  std::normal_distribution<float> nd;
  std::vector<float> w(static_cast<std::size_t>(n)), e(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) {
    switch (trial) {
      case 0:
        w[i] = std::abs(nd(rng));
        break;
      case 1:
        w[i] = float(small(rng));  // heavy ties
        break;
      case 2:
        w[i] = nd(rng);  // negative weights too
        break;
      default:
        w[i] = (rng() & 1) ? -0.0f : float(small(rng)) * std::numeric_limits<float>::denorm_min();
        break;
    }
    e[i] = float(rng() % 7) * 0.5f;  // energies unrelated to the weights, zeros included
  }
  std::vector<std::int32_t> out(w.size());
  std::vector<index_t> out64(w.size());
  for (int simd_off : {0, 1}) {
    aqua::set_max_isa(simd_off ? aqua::isa::portable : aqua::isa::avx512);
    for (const auto& spec : select_specs_for(n)) {
      index_t expected_count = 0;
      const auto expected = select_oracle_ranking(w, e, spec, expected_count);
      CAPTURE(n, trial, simd_off, select_spec_name(spec), spec.k, spec.value);
      const index_t count = aqua::detail::select_ranked(w.data(), e.data(), n, spec, out.data());
      REQUIRE(count == expected_count);
      CHECK(std::vector<index_t>(out.begin(), out.begin() + count) == expected);
      const index_t count64 = aqua::detail::select_ranked(w.data(), e.data(), n, spec, out64.data());
      REQUIRE(count64 == expected_count);
      CHECK(std::vector<index_t>(out64.begin(), out64.begin() + count) == expected);
      if (spec.type == aqua::selection_spec::kind::energy)
        CHECK(aqua::select_count<float>(aqua::make_view(w.data(), n), aqua::make_view(e.data(), n), spec) ==
              expected_count);
      // The same set in increasing index order (the kernels' dimension lists).
      std::vector<std::int32_t> scratch(w.size()), ascending(w.size());
      REQUIRE(aqua::detail::select_ranked_ascending(w.data(), e.data(), n, spec, scratch.data(),
                                                    ascending.data()) == expected_count);
      std::vector<index_t> expected_ascending = expected;
      std::sort(expected_ascending.begin(), expected_ascending.end());
      CHECK(std::vector<index_t>(ascending.begin(), ascending.begin() + count) == expected_ascending);
    }
  }
  aqua::set_max_isa(aqua::isa::avx512);
}

TEST_CASE("select_top names a non-finite value wherever it sits, vector block or tail", "[select][errors]") {
  for (int simd_off : {0, 1}) {
    aqua::set_max_isa(simd_off ? aqua::isa::portable : aqua::isa::avx512);
    for (index_t at : {index_t(2), index_t(9), index_t(16), index_t(18)}) {
      std::vector<float> x(19, 1.0f);
      std::vector<index_t> out(19);
      x[std::size_t(at)] =
          (at % 2) ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
      CAPTURE(simd_off, at);
      CHECK_THROWS_WITH(
          aqua::select_top<float>(aqua::make_view(static_cast<const float*>(x.data()), 19),
                                  aqua::selection_spec::top_k(3), aqua::make_view(out.data(), 19)),
          Contains("values holds a non-finite") && Contains("[" + std::to_string(at) + "]"));
    }
  }
  aqua::set_max_isa(aqua::isa::avx512);
}

#include "aqua_oracle.hpp"

TEST_CASE("the engine's whole-tile selection picks the tiles of the independent oracle", "[select]") {
  // detail::select_dims(..., true, ...) against aqua_oracle::select: tiles ranked by summed energy
  // (ties: lower tile), tiles in that order until the count is covered for fixed specs, the
  // shortest energy prefix for energy specs; the dims of the chosen tiles ascending. Partial last tiles (r =
  // 40 and 7), tied tile energies (small integers), a single tile, every kernel path of the key compares.
  struct shape {
    index_t r, tile;
  };
  const auto sh = GENERATE(shape{64, 16}, shape{40, 16}, shape{7, 3}, shape{5, 5}, shape{33, 1});
  const bool ties = GENERATE(false, true);
  CAPTURE(sh.r, sh.tile, ties);
  std::vector<float> x = ties ? tied_values(sh.r, 41) : std::vector<float>(static_cast<std::size_t>(sh.r));
  if (!ties) {
    std::mt19937 rng(43);
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
  }
  std::vector<float> w(x.size());
  std::vector<double> e(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    w[i] = std::abs(x[i]);
    e[i] = double(x[i]) * double(x[i]);
  }
  const std::vector<std::vector<double>> rows = {std::vector<double>(x.begin(), x.end())};
  std::vector<aqua::selection_spec> specs;
  for (index_t k = 1; k <= sh.r; k += std::max<index_t>(1, sh.r / 6))
    specs.push_back(aqua::selection_spec::top_k(k));
  specs.push_back(aqua::selection_spec::top_k(sh.r));
  specs.push_back(aqua::selection_spec::fraction(0.3));
  if (!ties)  // energy thresholds on random data, clear of the threshold (checked below)
    for (double tau : {0.3, 0.7, 0.95, 1.0}) specs.push_back(aqua::selection_spec::energy(tau));
  std::vector<std::int32_t> scratch(x.size()), out(x.size());
  for (int simd_off : {0, 1}) {
    aqua::set_max_isa(simd_off ? aqua::isa::portable : aqua::isa::avx512);
    for (const auto& spec : specs) {
      CAPTURE(simd_off, int(spec.type), spec.k, spec.value);
      aqua_oracle::spec os = spec.type == aqua::selection_spec::kind::top_k ? aqua_oracle::spec::top_k(spec.k)
                             : spec.type == aqua::selection_spec::kind::fraction
                                 ? aqua_oracle::spec::fraction(spec.value)
                                 : aqua_oracle::spec::energy(spec.value);
      double margin = std::numeric_limits<double>::infinity();
      const auto want = aqua_oracle::select(rows, sh.r, sh.tile, true, os, margin);
      if (spec.type == aqua::selection_spec::kind::energy && spec.value < 1.0) REQUIRE(margin > 1e-9);
      const index_t count = aqua::detail::select_dims(w.data(), e.data(), sh.r, sh.tile, true, spec,
                                                      scratch.data(), out.data());
      CHECK(std::vector<index_t>(out.begin(), out.begin() + count) == want);
    }
  }
  aqua::set_max_isa(aqua::isa::avx512);
}
