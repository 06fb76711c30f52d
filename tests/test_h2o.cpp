// H2O eviction driven by AQUA decode: scores are the sums of the group's probabilities per step,
// the kept tokens are the recent window plus the largest accumulated scores (checked by brute
// force), eviction compacts per KV head keeping order and positions, and decode after eviction
// equals decode on a cache built from the kept raw tokens only.
#include <aqua/attention.hpp>
#include <aqua/cost_model.hpp>
#include <aqua/h2o.hpp>
#include <aqua/kv_cache.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "spectrum_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

// A decode stream: the raw keys and values of every token appended so far ([Hkv][pos][d]), so
// oracles and rebuilt caches can use the original data.
struct stream {
  aqua_test::spectrum_layer layer;
  std::mt19937 rng;
  std::vector<std::vector<float>> k, v;  // per KV head, token-major by position
  std::vector<float> q;
  index_t d;

  stream(index_t hq, index_t hkv, index_t d_, unsigned seed)
      : layer(hq, hkv, d_, seed), rng(seed), k(std::size_t(hkv)), v(std::size_t(hkv)), d(d_) {}

  void append(aqua::kv_cache& cache, index_t count) {
    std::vector<float> kt, vt;
    layer.tokens(count, rng, kt, vt);
    for (index_t h = 0; h < layer.hkv; ++h) {
      k[std::size_t(h)].insert(k[std::size_t(h)].end(), kt.begin() + h * count * d,
                               kt.begin() + (h + 1) * count * d);
      v[std::size_t(h)].insert(v[std::size_t(h)].end(), vt.begin() + h * count * d,
                               vt.begin() + (h + 1) * count * d);
    }
    cache.append(aqua::make_view(static_cast<const float*>(kt.data()), layer.hkv, count, d),
                 aqua::make_view(static_cast<const float*>(vt.data()), layer.hkv, count, d));
  }
  aqua::matrix_view<const float> next_query() {
    layer.queries(rng, q);
    return aqua::make_view(static_cast<const float*>(q.data()), layer.hq, d);
  }
  // A fresh cache (same bases and options) holding, per head, the raw tokens at the given positions.
  aqua::kv_cache rebuild(const aqua::kv_cache& from, const aqua::kv_cache_options& opt) const {
    const index_t hkv = layer.hkv, n = from.size();
    std::vector<float> kt(std::size_t(hkv * n * d)), vt(kt.size());
    for (index_t h = 0; h < hkv; ++h)
      for (index_t i = 0; i < n; ++i) {
        const index_t p = from.position(h, i);
        std::copy_n(k[std::size_t(h)].begin() + p * d, d, kt.begin() + (h * n + i) * d);
        std::copy_n(v[std::size_t(h)].begin() + p * d, d, vt.begin() + (h * n + i) * d);
      }
    aqua::kv_cache out = layer.make_cache(opt);
    out.append(aqua::make_view(static_cast<const float*>(kt.data()), hkv, n, d),
               aqua::make_view(static_cast<const float*>(vt.data()), hkv, n, d));
    return out;
  }
};

aqua::kv_cache_options cache_options(index_t tile = 16, index_t rank = 0) {
  aqua::kv_cache_options opt;
  opt.tile_dims = tile;
  opt.rank = rank;
  return opt;
}

}  // namespace

TEST_CASE("retain_per_head keeps each head's own tokens, values and positions", "[kv_cache][h2o]") {
  const index_t hkv = 2, d = 24, n = 40;
  aqua::kv_cache cache(hkv, d, cache_options());
  aqua_test::buffer3<float> k(hkv, n, d, false, 9), v(hkv, n, d, false, 10);
  cache.append(k.view, v.view);
  const std::vector<index_t> keep = {0, 3, 17, 39, /* head 1 */ 5, 6, 20, 38};
  cache.retain_per_head(aqua::make_view(keep.data(), hkv, 4));
  REQUIRE(cache.size() == 4);
  for (index_t h = 0; h < hkv; ++h)
    for (index_t i = 0; i < 4; ++i) {
      const index_t src = keep[std::size_t(h * 4 + i)];
      CHECK(cache.position(h, i) == src);
      for (index_t c = 0; c < d; ++c) {
        CHECK(cache.key(h, i, c) == k.view(h, src, c));
        CHECK(cache.value(h, i, c) == v.view(h, src, c));
      }
    }
  cache.append(k.view, v.view);
  CHECK(cache.position(0, 4) == n);
  CHECK(cache.position(1, 4 + n - 1) == 2 * n - 1);
  const std::vector<index_t> bad = {0, 3, 3, 4, 0, 1, 2, 3};
  CHECK_THROWS_WITH(cache.retain_per_head(aqua::make_view(bad.data(), hkv, 4)),
                    Contains("aqua::kv_cache::retain_per_head") && Contains("strictly increasing"));
}

TEST_CASE("scores accumulate the group-summed probabilities of every decode step (exact at k = d)", "[h2o]") {
  const index_t hq = 4, hkv = 2, d = 32, n0 = 50, steps = 5;
  stream s(hq, hkv, d, 11);
  aqua::kv_cache cache = s.layer.make_cache(cache_options());
  aqua::h2o_policy policy(hkv, {1000, 0, 0, true});
  s.append(cache, n0);
  std::vector<std::vector<double>> expected(static_cast<std::size_t>(hkv));
  std::vector<float> out(std::size_t(hq * d));
  for (index_t step = 0; step < steps; ++step) {
    s.append(cache, 1);
    auto q = s.next_query();
    policy.decode(q, cache, aqua::selection_spec::top_k(d), aqua::make_view(out.data(), hq, d));
    // Independent oracle: exact softmax per query head on the raw keys, summed over the group.
    const index_t n = cache.size();
    for (index_t h = 0; h < hq; ++h) {
      const index_t kv = h / (hq / hkv);
      auto& e = expected[std::size_t(kv)];
      e.resize(std::size_t(n), 0.0);
      std::vector<double> logit(static_cast<std::size_t>(n));
      double mx = -1e300, sum = 0;
      for (index_t j = 0; j < n; ++j) {
        double dot = 0;
        for (index_t c = 0; c < d; ++c)
          dot += double(q(h, c)) * double(s.k[std::size_t(kv)][std::size_t(j * d + c)]);
        logit[std::size_t(j)] = dot / std::sqrt(double(d));
        mx = std::max(mx, logit[std::size_t(j)]);
      }
      for (auto& l : logit) sum += (l = std::exp(l - mx));
      for (index_t j = 0; j < n; ++j) e[std::size_t(j)] += logit[std::size_t(j)] / sum;
    }
  }
  REQUIRE(policy.tokens() == n0 + steps);
  for (index_t h = 0; h < hkv; ++h)
    for (index_t j = 0; j < n0 + steps; ++j)
      CHECK(policy.score(h, j) == Approx(expected[std::size_t(h)][std::size_t(j)]).margin(1e-5));
}

TEST_CASE("a prefill seeds the scores with its last queries' probabilities, then evict keeps B", "[h2o]") {
  // The prompt's last W queries count as W decode steps would (exact at k = d): each query i of
  // the M sees keys 0 .. N - M + i (causal).
  const index_t hq = 4, hkv = 2, g = hq / hkv, d = 32, n = 60, m = 20, last = 6;
  stream s(hq, hkv, d, 12);
  aqua::kv_cache cache = s.layer.make_cache(cache_options());
  s.append(cache, n);
  std::vector<float> q(std::size_t(hq * m * d)), out(q.size());
  aqua_test::fill_normal(q, 13);
  aqua::h2o_policy policy(hkv, {24, 8, 0, true});
  policy.prefill(aqua::make_view(static_cast<const float*>(q.data()), hq, m, d), cache,
                 aqua::selection_spec::top_k(d), aqua::make_view(out.data(), hq, m, d), {}, last);
  REQUIRE(policy.tokens() == n);
  for (index_t kv = 0; kv < hkv; ++kv) {
    std::vector<double> expected(std::size_t(n), 0.0);
    for (index_t h = kv * g; h < (kv + 1) * g; ++h)
      for (index_t i = m - last; i < m; ++i) {
        const index_t visible = n - m + i + 1;
        std::vector<double> logit(static_cast<std::size_t>(visible));
        double mx = -1e300, sum = 0;
        for (index_t j = 0; j < visible; ++j) {
          double dot = 0;
          for (index_t c = 0; c < d; ++c)
            dot += double(q[std::size_t((h * m + i) * d + c)]) *
                   double(s.k[std::size_t(kv)][std::size_t(j * d + c)]);
          logit[std::size_t(j)] = dot / std::sqrt(double(d));
          mx = std::max(mx, logit[std::size_t(j)]);
        }
        for (auto& l : logit) sum += (l = std::exp(l - mx));
        for (index_t j = 0; j < visible; ++j) expected[std::size_t(j)] += logit[std::size_t(j)] / sum;
      }
    for (index_t j = 0; j < n; ++j)
      CHECK(policy.score(kv, j) == Approx(expected[std::size_t(j)]).margin(1e-5));
  }
  CHECK(policy.evict(cache) == n - 24);
  CHECK(cache.size() == 24);
}

TEST_CASE("with B >= N nothing is evicted and the output equals decode without eviction", "[h2o]") {
  const index_t hq = 8, hkv = 2, d = 64, n0 = 100, steps = 20;
  for (index_t budget : {n0 + steps, n0 + steps + 37}) {
    CAPTURE(budget);
    stream s(hq, hkv, d, 21), twin(hq, hkv, d, 21);
    aqua::kv_cache cache = s.layer.make_cache(cache_options()),
                   plain = twin.layer.make_cache(cache_options());
    aqua::h2o_policy policy(hkv, {budget, 8, 0, true});
    s.append(cache, n0);
    twin.append(plain, n0);
    std::vector<float> out(std::size_t(hq * d)), ref(out.size());
    for (index_t step = 0; step < steps; ++step) {
      s.append(cache, 1);
      twin.append(plain, 1);
      policy.decode(s.next_query(), cache, aqua::selection_spec::top_k(d / 2),
                    aqua::make_view(out.data(), hq, d));
      aqua::aqua_decode(twin.next_query(), plain, aqua::selection_spec::top_k(d / 2),
                        aqua::make_view(ref.data(), hq, d));
      CHECK(policy.evict(cache) == 0);
      CHECK(cache.size() == n0 + step + 1);
      CHECK(out == ref);
    }
    CHECK(policy.evictions() == 0);
  }
}

TEST_CASE("the last W tokens are never evicted, even when they have the lowest scores", "[h2o]") {
  const index_t hkv = 2, d = 16, budget = 24, recent = 8;
  const index_t slack = GENERATE(index_t(0), index_t(5));
  CAPTURE(slack);
  aqua::kv_cache cache(hkv, d, cache_options());
  aqua::h2o_policy policy(hkv, {budget, recent, slack, true});
  aqua_test::buffer3<float> k(hkv, 1, d, false, 3), v(hkv, 1, d, false, 4);
  index_t appended = 0;
  for (index_t step = 0; step < 100; ++step) {
    cache.append(k.view, v.view);
    ++appended;
    // Adversarial scores: the newer a token, the less it gets, so only the window can keep it.
    const index_t n = cache.size();
    std::vector<float> probs(std::size_t(hkv * n));
    for (index_t h = 0; h < hkv; ++h)
      for (index_t j = 0; j < n; ++j) probs[std::size_t(h * n + j)] = float(n - j) / float(n * n);
    policy.accumulate(aqua::make_view(static_cast<const float*>(probs.data()), hkv, n));
    policy.evict(cache);
    REQUIRE(cache.size() <= budget + slack);
    const index_t m = cache.size();
    for (index_t h = 0; h < hkv; ++h) {
      for (index_t i = 0; i < std::min(recent, m); ++i)
        CHECK(cache.position(h, m - 1 - i) == appended - 1 - i);
      for (index_t i = 1; i < m; ++i) CHECK(cache.position(h, i) > cache.position(h, i - 1));  // order kept
    }
  }
  CHECK(policy.evictions() > 0);
}

TEST_CASE("the kept heavy hitters are exactly the tokens with the largest accumulated scores", "[h2o]") {
  const index_t hkv = 3, d = 16, n = 300, budget = 64, recent = 16, steps = 7;
  aqua::kv_cache cache(hkv, d, cache_options());
  aqua_test::buffer3<float> k(hkv, n, d, false, 5), v(hkv, n, d, false, 6);
  cache.append(k.view, v.view);
  aqua::h2o_policy policy(hkv, {budget, recent, 0, true});
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<double> mirror(std::size_t(hkv * n), 0.0);
  for (index_t step = 0; step < steps; ++step) {
    std::vector<float> probs(std::size_t(hkv * n));
    for (std::size_t i = 0; i < probs.size(); ++i) mirror[i] += double(probs[i] = u(rng));
    policy.accumulate(aqua::make_view(static_cast<const float*>(probs.data()), hkv, n));
  }
  REQUIRE(policy.evict(cache) == n - budget);
  REQUIRE(cache.size() == budget);
  for (index_t h = 0; h < hkv; ++h) {
    // Brute force: sort every older token by its summed score, take the best B - W.
    std::vector<index_t> older(std::size_t(n - recent));
    std::iota(older.begin(), older.end(), index_t{0});
    std::stable_sort(older.begin(), older.end(), [&](index_t a, index_t b) {
      return mirror[std::size_t(h * n + a)] > mirror[std::size_t(h * n + b)];
    });
    std::vector<index_t> expected(older.begin(), older.begin() + (budget - recent));
    std::sort(expected.begin(), expected.end());
    for (index_t j = n - recent; j < n; ++j) expected.push_back(j);
    std::vector<index_t> kept;
    for (index_t i = 0; i < budget; ++i) kept.push_back(cache.position(h, i));
    CHECK(kept == expected);
    // The kept tokens carry their scores along.
    for (index_t i = 0; i < budget; ++i)
      CHECK(policy.score(h, i) == Approx(mirror[std::size_t(h * n + kept[std::size_t(i)])]).epsilon(1e-12));
    for (index_t i = 0; i < budget; ++i)
      for (index_t c = 0; c < d; ++c) CHECK(cache.key(h, i, c) == k.view(h, kept[std::size_t(i)], c));
  }
}

TEST_CASE("memory falls to the cost model's figure at the budget after eviction", "[h2o]") {
  const index_t hq = 8, hkv = 4, d = 64, n = 2048, budget = 255, rank = 32;
  stream s(hq, hkv, d, 31);
  aqua::kv_cache cache = s.layer.make_cache(cache_options(16, rank));
  s.append(cache, n);
  aqua::cost_config c;
  c.d = d;
  c.k = rank;
  c.r = rank;
  c.hq = hq;
  c.hkv = hkv;
  const double projection = double(hkv * d * rank * 4);  // the r columns of P the cache keeps
  CHECK(double(cache.bytes()) == aqua::kv_cache_bytes(c, double(n)).aqua_bytes + projection);
  const std::size_t before = cache.bytes();
  aqua::h2o_policy policy(hkv, {budget, 32, 0, true});
  std::vector<float> out(std::size_t(hq * d));
  policy.decode(s.next_query(), cache, aqua::selection_spec::top_k(16), aqua::make_view(out.data(), hq, d));
  CHECK(policy.evict(cache) == n - budget);
  // Room is kept for B + 1 tokens (the next token is appended before the next eviction): with
  // B + 1 = 256, a whole number of blocks, the figure is the model's at token_budget = B + 1.
  c.token_budget = budget + 1;
  CHECK(cache.capacity() == budget + 1);
  CHECK(double(cache.bytes()) == aqua::kv_cache_bytes(c, double(n)).aqua_bytes + projection);
  CHECK(cache.bytes() < before / 4);
  // The steady loop (append one, decode, evict one) never reallocates.
  const std::size_t steady = cache.bytes();
  for (index_t step = 0; step < 40; ++step) {
    s.append(cache, 1);
    policy.decode(s.next_query(), cache, aqua::selection_spec::top_k(16), aqua::make_view(out.data(), hq, d));
    CHECK(policy.evict(cache) == 1);
    CHECK(cache.size() == budget);
    CHECK(cache.bytes() == steady);
  }
}

TEST_CASE("decode after eviction equals decode on a cache built from the kept tokens only", "[h2o]") {
  const index_t hq = 8, hkv = 2, d = 64, n0 = 400, budget = 120, recent = 24;
  const index_t rank = GENERATE(index_t(0), index_t(32));
  CAPTURE(rank);
  stream s(hq, hkv, d, 41);
  const auto opt = cache_options(16, rank);
  aqua::kv_cache cache = s.layer.make_cache(opt);
  aqua::h2o_policy policy(hkv, {budget, recent, 10, true});
  s.append(cache, n0);
  std::vector<float> out(std::size_t(hq * d)), ref(out.size());
  const auto select = aqua::selection_spec::top_k(16);
  for (index_t step = 0; step < 30; ++step) {
    s.append(cache, 1);
    policy.decode(s.next_query(), cache, select, aqua::make_view(out.data(), hq, d));
    policy.evict(cache);
    if (step % 10 != 9) continue;
    // Per head, the kept tokens are different; the rebuilt cache holds the same raw tokens.
    aqua::kv_cache rebuilt = s.rebuild(cache, opt);
    auto q = s.next_query();
    aqua::aqua_decode(q, cache, select, aqua::make_view(out.data(), hq, d));
    aqua::aqua_decode(q, rebuilt, select, aqua::make_view(ref.data(), hq, d));
    for (std::size_t i = 0; i < out.size(); ++i) CHECK(out[i] == Approx(ref[i]).margin(1e-5));
    bool heads_differ = false;
    for (index_t i = 0; i < cache.size(); ++i) heads_differ |= cache.position(0, i) != cache.position(1, i);
    CHECK(heads_differ);
  }
  CHECK(policy.evictions() > 0);
}

TEST_CASE("the policy rejects bad options and mismatched inputs with a message naming them",
          "[h2o][errors]") {
  CHECK_THROWS_WITH(aqua::h2o_policy(2, {0, 0, 0, true}),
                    Contains("aqua::h2o_policy") && Contains("budget B"));
  CHECK_THROWS_WITH(aqua::h2o_policy(2, {8, 9, 0, true}), Contains("recent window W = 9"));
  CHECK_THROWS_WITH(aqua::h2o_policy(0, {8, 0, 0, true}), Contains("kv_heads"));
  CHECK_THROWS_WITH(aqua::h2o_policy(2, {8, 0, -1, true}), Contains("slack"));
  aqua::h2o_policy policy(2, {8, 2, 0, true});
  std::vector<float> probs(30, 0.1f);
  CHECK_THROWS_WITH(policy.accumulate(aqua::make_view(static_cast<const float*>(probs.data()), 3, 10)),
                    Contains("aqua::h2o_policy::accumulate") && Contains("Hkv = 2"));
  policy.accumulate(aqua::make_view(static_cast<const float*>(probs.data()), 2, 10));
  CHECK_THROWS_WITH(policy.accumulate(aqua::make_view(static_cast<const float*>(probs.data()), 2, 9)),
                    Contains("behind the policy's back"));
  aqua::kv_cache other(3, 16);
  CHECK_THROWS_WITH(policy.evict(other), Contains("aqua::h2o_policy::evict") && Contains("3 KV heads"));
}

TEST_CASE("eviction ties keep the older token, with scores tied exactly by construction", "[h2o]") {
  // Hand-built probabilities (sums of powers of two, exact in float and double): B = 3, W = 1, so
  // token 5 stays as the recent window and two heavy hitters come from tokens 0..4. Head 0: token 1
  // leads (0.5), tokens 0, 2, 3, 4 tie at 0.25 after two steps: the oldest, token 0, is kept. Head 1:
  // all five tie at 0.25: tokens 0 and 1 are kept.
  const index_t hkv = 2, d = 4, n = 6;
  aqua::kv_cache cache(hkv, d, {4, 0, 0});
  std::vector<float> k(std::size_t(hkv * n * d)), v(k.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    v[i] = float(i / std::size_t(d) % std::size_t(n));  // v = token index
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = float(i % 7) - 3.0f;
  cache.append(aqua::make_view(static_cast<const float*>(k.data()), hkv, n, d),
               aqua::make_view(static_cast<const float*>(v.data()), hkv, n, d));
  aqua::h2o_policy policy(hkv, {3, 1, 0, false});
  const std::vector<float> step1 = {0.125f, 0.25f,  0.25f,  0.125f, 0.125f, 0.125f,  // head 0
                                    0.125f, 0.125f, 0.125f, 0.125f, 0.125f, 0.375f};
  const std::vector<float> step2 = {0.125f, 0.25f,  0.0f,   0.125f, 0.125f, 0.375f,  // head 0
                                    0.125f, 0.125f, 0.125f, 0.125f, 0.125f, 0.375f};
  policy.accumulate(aqua::make_view(step1.data(), hkv, n));
  policy.accumulate(aqua::make_view(step2.data(), hkv, n));
  for (index_t j : {0, 2, 3, 4}) CHECK(policy.score(0, j) == 0.25);
  CHECK(policy.score(0, 1) == 0.5);
  for (index_t j = 0; j < 5; ++j) CHECK(policy.score(1, j) == 0.25);
  CHECK(policy.keep_set(0, n) == std::vector<index_t>{0, 1, 5});
  CHECK(policy.keep_set(1, n) == std::vector<index_t>{0, 1, 5});
  REQUIRE(policy.evict(cache) == n - 3);
  REQUIRE(cache.size() == 3);
  const index_t kept[2][3] = {{0, 1, 5}, {0, 1, 5}};
  for (index_t h = 0; h < hkv; ++h)
    for (index_t i = 0; i < 3; ++i) {
      CHECK(cache.position(h, i) == kept[h][i]);
      CHECK(cache.value(h, i, 0) == float(kept[h][i]));
    }
}
