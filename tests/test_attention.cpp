// Dense attention (the oracle of every later kernel) against a naive double-precision reference.
#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include "test_support.hpp"

using aqua::index_t;
using aqua_test::buffer3;
using Catch::Matchers::Contains;

namespace {

template <class T>
double decode_error_against_oracle(index_t d, index_t n, index_t group, bool strided, int threads,
                                   bool with_mask) {
  const index_t hkv = 2, hq = hkv * group;
  buffer3<T> q(1, hq, d, strided, 1), k(hkv, n, d, strided, 2), v(hkv, n, d, strided, 3);
  std::vector<T> out(static_cast<std::size_t>(hq * d));
  std::vector<T> mask(static_cast<std::size_t>(n));
  aqua_test::fill_normal(mask, 4);
  if (n > 2) mask[1] = -std::numeric_limits<T>::infinity();
  aqua::attention_options opt;
  opt.threads = threads;
  aqua::dense_decode<T>(
      q.view[0], k.view, v.view, aqua::make_view(out.data(), hq, d), opt,
      with_mask ? aqua::make_view(static_cast<const T*>(mask.data()), n) : aqua::vector_view<const T>{});
  std::vector<double> ref;
  for (index_t h = 0; h < hq; ++h) {
    const index_t kv = h / group;
    auto row = aqua_test::oracle_row(
        d, n, 1.0 / std::sqrt(double(d)), [&](index_t c) { return q.view(0, h, c); },
        [&](index_t j, index_t c) { return k.view(kv, j, c); },
        [&](index_t j, index_t c) { return v.view(kv, j, c); },
        [&](index_t j) { return with_mask ? double(mask[std::size_t(j)]) : 0.0; });
    ref.insert(ref.end(), row.begin(), row.end());
  }
  return aqua_test::normalized_error(
      hq * d, [&](index_t i) { return out[std::size_t(i)]; }, [&](index_t i) { return ref[std::size_t(i)]; });
}

template <class T>
double prefill_error_against_oracle(index_t d, index_t n, index_t m, index_t group, bool causal, bool strided,
                                    int threads) {
  const index_t hkv = 2, hq = hkv * group;
  buffer3<T> q(hq, m, d, strided, 11), k(hkv, n, d, strided, 12), v(hkv, n, d, strided, 13);
  std::vector<T> out(static_cast<std::size_t>(hq * m * d));
  aqua::attention_options opt;
  opt.causal = causal;
  opt.threads = threads;
  aqua::dense_prefill<T>(q.view, k.view, v.view, aqua::make_view(out.data(), hq, m, d), opt);
  std::vector<double> ref;
  for (index_t h = 0; h < hq; ++h)
    for (index_t i = 0; i < m; ++i) {
      const index_t kv = h / group, visible = causal ? n - m + i + 1 : n;
      auto row = aqua_test::oracle_row(
          d, visible, 1.0 / std::sqrt(double(d)), [&](index_t c) { return q.view(h, i, c); },
          [&](index_t j, index_t c) { return k.view(kv, j, c); },
          [&](index_t j, index_t c) { return v.view(kv, j, c); }, [](index_t) { return 0.0; });
      ref.insert(ref.end(), row.begin(), row.end());
    }
  return aqua_test::normalized_error(
      hq * m * d, [&](index_t i) { return out[std::size_t(i)]; },
      [&](index_t i) { return ref[std::size_t(i)]; });
}

}  // namespace

TEST_CASE("dense decode matches the double oracle for every head dim, length, group size and layout",
          "[attention][decode]") {
  const index_t d = GENERATE(8, 64, 128);
  const index_t n = GENERATE(1, 7, 513);
  const index_t group = GENERATE(1, 4);
  const bool strided = GENERATE(false, true);
  CAPTURE(d, n, group, strided);
  CHECK(decode_error_against_oracle<float>(d, n, group, strided, 1, false) < 1e-5);
  CHECK(decode_error_against_oracle<double>(d, n, group, strided, 1, false) < 1e-12);
}

TEST_CASE("dense prefill matches the double oracle with and without the causal mask",
          "[attention][prefill]") {
  const index_t d = GENERATE(8, 64, 128);
  const index_t n = GENERATE(1, 7, 513);
  const index_t group = GENERATE(1, 4);
  const bool causal = GENERATE(true, false);
  const bool strided = GENERATE(false, true);
  const index_t m = std::min<index_t>(n, 70);  // 70 > the 64-row block: covers a partial block
  CAPTURE(d, n, m, group, causal, strided);
  CHECK(prefill_error_against_oracle<float>(d, n, m, group, causal, strided, 1) < 1e-5);
  CHECK(prefill_error_against_oracle<double>(d, n, m, group, causal, strided, 1) < 1e-12);
}

TEST_CASE("dense decode applies an additive mask, -inf entries included", "[attention][decode][mask]") {
  const bool strided = GENERATE(false, true);
  CHECK(decode_error_against_oracle<float>(64, 33, 4, strided, 1, true) < 1e-5);
  CHECK(decode_error_against_oracle<double>(64, 33, 4, strided, 1, true) < 1e-12);
}

TEST_CASE("prefill with M = N and causal mask gives each query only its prefix", "[attention][prefill]") {
  CHECK(prefill_error_against_oracle<float>(32, 200, 200, 2, true, false, 1) < 1e-5);
}

TEST_CASE("dense prefill mask of shape [M, N] is added to the logits", "[attention][prefill][mask]") {
  const index_t d = 16, n = 9, m = 4;
  buffer3<double> q(1, m, d, false, 21), k(1, n, d, false, 22), v(1, n, d, false, 23);
  std::vector<double> mask(static_cast<std::size_t>(m * n), 0.0), out(static_cast<std::size_t>(m * d));
  aqua_test::fill_normal(mask, 24);
  mask[0] = -std::numeric_limits<double>::infinity();
  aqua::attention_options opt;
  opt.causal = false;
  aqua::dense_prefill<double>(q.view, k.view, v.view, aqua::make_view(out.data(), 1, m, d), opt,
                              aqua::make_view(static_cast<const double*>(mask.data()), m, n));
  for (index_t i = 0; i < m; ++i) {
    auto row = aqua_test::oracle_row(
        d, n, 0.25, [&](index_t c) { return q.view(0, i, c); },
        [&](index_t j, index_t c) { return k.view(0, j, c); },
        [&](index_t j, index_t c) { return v.view(0, j, c); },
        [&](index_t j) { return mask[std::size_t(i * n + j)]; });
    for (index_t c = 0; c < d; ++c)
      CHECK(out[std::size_t(i * d + c)] == Approx(row[std::size_t(c)]).margin(1e-12));
  }
}

TEST_CASE("a fully masked row outputs zeros, not NaN", "[attention][mask]") {
  const index_t d = 8, n = 5;
  buffer3<float> q(1, 2, d, false, 31), k(1, n, d, false, 32), v(1, n, d, false, 33);
  std::vector<float> mask(static_cast<std::size_t>(n), -std::numeric_limits<float>::infinity());
  std::vector<float> out(static_cast<std::size_t>(2 * d), 42.0f);
  aqua::dense_decode<float>(q.view[0], k.view, v.view, aqua::make_view(out.data(), 2, d), {},
                            aqua::make_view(static_cast<const float*>(mask.data()), n));
  for (float x : out) CHECK(x == 0.0f);
}

TEST_CASE("logits of magnitude 1e4 produce finite outputs", "[attention][numerics]") {
  const index_t d = 64, n = 100;
  buffer3<float> q(1, 4, d, false, 41), k(1, n, d, false, 42), v(1, n, d, false, 43);
  for (auto& x : q.storage) x *= 100.0f;  // |q.k| / sqrt(d) reaches ~1e4
  for (auto& x : k.storage) x *= 100.0f;
  std::vector<float> out(static_cast<std::size_t>(4 * d));
  aqua::dense_decode<float>(q.view[0], k.view, v.view, aqua::make_view(out.data(), 4, d));
  for (float x : out) REQUIRE(std::isfinite(x));
  std::vector<float> out_prefill(static_cast<std::size_t>(4 * d));
  aqua::tensor3_view<const float> q3(q.storage.data(), {4, 1, d});
  aqua::dense_prefill<float>(q3, k.view, v.view, aqua::make_view(out_prefill.data(), 4, 1, d));
  for (float x : out_prefill) REQUIRE(std::isfinite(x));
  // Softmax is then one-hot on the largest logit: the output equals that key's value row.
  for (index_t h = 0; h < 4; ++h) {
    index_t best = 0;
    double best_logit = -1e300;
    for (index_t j = 0; j < n; ++j) {
      double dot = 0;
      for (index_t c = 0; c < d; ++c) dot += double(q.view(0, h, c)) * double(k.view(0, j, c));
      if (dot > best_logit) best_logit = dot, best = j;
    }
    for (index_t c = 0; c < d; ++c)
      CHECK(out[std::size_t(h * d + c)] == Approx(v.view(0, best, c)).margin(1e-4));
  }
}

TEST_CASE("thread counts 1, 2 and 3 give bitwise identical dense results", "[attention][threads]") {
  const index_t d = 64, n = 300, hkv = 2, hq = 8, m = 130;
  buffer3<float> q(hq, m, d, false, 51), k(hkv, n, d, false, 52), v(hkv, n, d, false, 53);
  std::vector<float> reference(static_cast<std::size_t>(hq * m * d)),
      decode_ref(static_cast<std::size_t>(hq * d));
  aqua::dense_prefill<float>(q.view, k.view, v.view, aqua::make_view(reference.data(), hq, m, d));
  aqua::matrix_view<const float> q_last(q.storage.data() + (m - 1) * d, {hq, d}, {m * d, 1});
  aqua::dense_decode<float>(q_last, k.view, v.view, aqua::make_view(decode_ref.data(), hq, d));
  for (int threads : {2, 3}) {
    aqua::attention_options opt;
    opt.threads = threads;
    std::vector<float> out(reference.size()), decode_out(decode_ref.size());
    aqua::dense_prefill<float>(q.view, k.view, v.view, aqua::make_view(out.data(), hq, m, d), opt);
    aqua::dense_decode<float>(q_last, k.view, v.view, aqua::make_view(decode_out.data(), hq, d), opt);
    CHECK(out == reference);
    CHECK(decode_out == decode_ref);
  }
}

TEST_CASE("a caller-chosen scale replaces 1/sqrt(d)", "[attention]") {
  const index_t d = 16, n = 12;
  buffer3<double> q(1, 1, d, false, 61), k(1, n, d, false, 62), v(1, n, d, false, 63);
  std::vector<double> out(static_cast<std::size_t>(d));
  aqua::attention_options opt;
  opt.scale = 0.7;
  aqua::dense_decode<double>(q.view[0], k.view, v.view, aqua::make_view(out.data(), 1, d), opt);
  auto ref = aqua_test::oracle_row(
      d, n, 0.7, [&](index_t c) { return q.view(0, 0, c); },
      [&](index_t j, index_t c) { return k.view(0, j, c); },
      [&](index_t j, index_t c) { return v.view(0, j, c); }, [](index_t) { return 0.0; });
  for (index_t c = 0; c < d; ++c) CHECK(out[std::size_t(c)] == Approx(ref[std::size_t(c)]).margin(1e-12));
}

TEST_CASE("decode of the last query equals the last row of causal prefill", "[attention]") {
  const index_t d = 32, n = 50, hq = 4, hkv = 2;
  buffer3<double> q(hq, n, d, false, 71), k(hkv, n, d, false, 72), v(hkv, n, d, false, 73);
  std::vector<double> prefill(static_cast<std::size_t>(hq * n * d)), decode(static_cast<std::size_t>(hq * d));
  aqua::dense_prefill<double>(q.view, k.view, v.view, aqua::make_view(prefill.data(), hq, n, d));
  aqua::matrix_view<const double> q_last(q.storage.data() + (n - 1) * d, {hq, d}, {n * d, 1});
  aqua::dense_decode<double>(q_last, k.view, v.view, aqua::make_view(decode.data(), hq, d));
  for (index_t h = 0; h < hq; ++h)
    for (index_t c = 0; c < d; ++c)
      CHECK(decode[std::size_t(h * d + c)] ==
            Approx(prefill[std::size_t((h * n + n - 1) * d + c)]).margin(1e-12));
}

TEST_CASE("dense attention rejects bad arguments with a message naming them", "[attention][errors]") {
  const index_t d = 8, n = 4;
  std::vector<float> qb(64), kb(256), vb(256), ob(64);
  auto q = aqua::make_view(static_cast<const float*>(qb.data()), 4, d);
  auto k = aqua::make_view(static_cast<const float*>(kb.data()), 2, n, d);
  auto v = aqua::make_view(static_cast<const float*>(vb.data()), 2, n, d);
  auto out = aqua::make_view(ob.data(), 4, d);

  SECTION("Hq not a multiple of Hkv") {
    auto q3 = aqua::make_view(static_cast<const float*>(qb.data()), 3, d);
    auto out3 = aqua::make_view(ob.data(), 3, d);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q3, k, v, out3),
                      Contains("query heads (3)") && Contains("number of KV heads (2)"));
  }
  SECTION("head dim of k differs from q") {
    auto k6 = aqua::make_view(static_cast<const float*>(kb.data()), 2, n, 6);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k6, v, out),
                      Contains("k has shape [2, 4, 6]") && Contains("8"));
  }
  SECTION("v shape differs from k") {
    auto v6 = aqua::make_view(static_cast<const float*>(vb.data()), 2, n, 6);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k, v6, out), Contains("v has shape [2, 4, 6]"));
    auto v3 = aqua::make_view(static_cast<const float*>(vb.data()), 2, n + 1, d);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k, v3, out), Contains("v has shape [2, 5, 8]"));
  }
  SECTION("out shape mismatch") {
    auto out2 = aqua::make_view(ob.data(), 2, d);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k, v, out2), Contains("out has shape [2, 8]"));
  }
  SECTION("null data with non-zero extent") {
    aqua::tensor3_view<const float> null_k(nullptr, {2, n, d});
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, null_k, v, out), Contains("k has null data"));
    aqua::matrix_view<const float> null_q(nullptr, {4, d});
    CHECK_THROWS_WITH(aqua::dense_decode<float>(null_q, k, v, out), Contains("q has null data"));
  }
  SECTION("empty cache (N = 0)") {
    auto k0 = aqua::make_view(static_cast<const float*>(kb.data()), 2, 0, d);
    auto v0 = aqua::make_view(static_cast<const float*>(vb.data()), 2, 0, d);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k0, v0, out), Contains("KV cache is empty"));
  }
  SECTION("M > N in prefill") {
    auto q3 = aqua::make_view(static_cast<const float*>(qb.data()), 4, n + 1, d);
    std::vector<float> o3(static_cast<std::size_t>(4 * (n + 1) * d));
    CHECK_THROWS_WITH(aqua::dense_prefill<float>(q3, k, v, aqua::make_view(o3.data(), 4, n + 1, d)),
                      Contains("M = 5") && Contains("N = 4"));
  }
  SECTION("mask of the wrong length") {
    std::vector<float> mask(3);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k, v, out, {},
                                                aqua::make_view(static_cast<const float*>(mask.data()), 3)),
                      Contains("mask has length 3"));
  }
  SECTION("NaN or +inf in a mask") {
    std::vector<float> mask(n, 0.0f);
    mask[2] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k, v, out, {},
                                                aqua::make_view(static_cast<const float*>(mask.data()), n)),
                      Contains("mask holds inf at index [2]"));
  }
  SECTION("non-finite query") {
    std::vector<float> qnan(qb);
    qnan[9] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(
        aqua::dense_decode<float>(aqua::make_view(static_cast<const float*>(qnan.data()), 4, d), k, v, out),
        Contains("q holds a non-finite value") && Contains("[1, 1]"));
  }
  SECTION("threads < 1 and non-finite scale") {
    aqua::attention_options opt;
    opt.threads = 0;
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k, v, out, opt), Contains("threads must be at least 1"));
    opt.threads = 1;
    opt.scale = std::numeric_limits<double>::infinity();
    CHECK_THROWS_WITH(aqua::dense_decode<float>(q, k, v, out, opt), Contains("scale must be finite"));
  }
  SECTION("the error type is aqua::error, an std::invalid_argument") {
    auto k0 = aqua::make_view(static_cast<const float*>(kb.data()), 2, 0, d);
    CHECK_THROWS_AS(aqua::dense_decode<float>(q, k0, v, out), aqua::error);
    CHECK_THROWS_AS(aqua::dense_decode<float>(q, k0, v, out), std::invalid_argument);
  }
}

TEST_CASE("NaN in a key propagates to the outputs of the heads that read it", "[attention][numerics]") {
  const index_t d = 8, n = 6;
  buffer3<float> q(1, 4, d, false, 81), k(2, n, d, false, 82), v(2, n, d, false, 83);
  k.view(1, 3, 2) = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> out(static_cast<std::size_t>(4 * d));
  aqua::dense_decode<float>(q.view[0], k.view, v.view, aqua::make_view(out.data(), 4, d));
  for (index_t h = 0; h < 4; ++h)
    for (index_t c = 0; c < d; ++c) CHECK(std::isnan(out[std::size_t(h * d + c)]) == (h >= 2));
}
