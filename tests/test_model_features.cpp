// Model features over the cache (attention_options::window, softcap, sinks, mask, prefill_mask):
// decode (one sequence and batched) and prefill, in every selection mode, held against a double
// reference computed here from the raw queries, keys, values and bases over the dims the
// independent oracle (aqua_oracle.hpp) selects; the window against a cache holding only the
// window's tokens; fully masked heads; bad feature settings.
#include <aqua/attention.hpp>
#include <aqua/quality.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "aqua_oracle.hpp"
#include "kernel_support.hpp"
#include "oracle_support.hpp"
#include "test_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// The features of one case, as the reference applies them.
struct feature_set {
  const char* name;
  index_t window = 0;
  double softcap = 0;
  bool mask = false, sinks = false;
};

const feature_set feature_cases[] = {
    {"window", 100, 0, false, false}, {"softcap", 0, 3.0, false, false}, {"mask", 0, 0, true, false},
    {"sinks", 0, 0, false, true},     {"all", 70, 2.5, true, true},
};

/// What the reference returns for one query: output, log-sum-exp and probabilities (over n).
struct reference_row {
  std::vector<double> out, probs, logits;  // logits over [0, visible): -inf where masked
  double lse = 0;
};

/// Attention of query row `q` (raw, d values) of head h at position `position` over tokens
/// [0, visible) of layer L, in double: scores over `dims` of the projected query and keys,
/// scaled, then softcap, mask row (null: none), window, sink.
reference_row reference(const aqua_test::random_layer& L, const float* q, index_t h, index_t position,
                        index_t visible, const std::vector<aqua_oracle::index>& dims, const feature_set& f,
                        const float* mask_row, float sink) {
  const index_t d = L.d, kv = h / (L.hq / L.hkv);
  const Eigen::MatrixXf& P = L.bases[std::size_t(kv)];
  auto project = [&](const float* x, index_t c) {
    double acc = 0;
    for (index_t i = 0; i < d; ++i) acc += double(x[i]) * double(P(i, c));
    return acc;
  };
  std::vector<double> qp(static_cast<std::size_t>(d));
  for (index_t c = 0; c < d; ++c) qp[std::size_t(c)] = project(q, c);
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> s(static_cast<std::size_t>(visible));
  const index_t first = f.window > 0 ? std::max<index_t>(0, position - f.window + 1) : 0;
  double mx = double(sink);
  for (index_t j = 0; j < visible; ++j) {
    const float* k = L.k.data() + (kv * L.n + j) * d;
    double dot = 0;
    for (auto c : dims) dot += qp[std::size_t(c)] * project(k, c);
    double x = scale * dot;
    if (f.softcap > 0) x = f.softcap * std::tanh(x / f.softcap);
    if (mask_row) x += double(mask_row[j]);
    if (j < first) x = -INFINITY;
    s[std::size_t(j)] = x;
    mx = std::max(mx, x);
  }
  reference_row r;
  r.logits = s;
  r.out.assign(static_cast<std::size_t>(d), 0.0);
  r.probs.assign(static_cast<std::size_t>(L.n), 0.0);
  if (mx == -INFINITY) {
    r.lse = -INFINITY;
    return r;
  }
  double total = std::exp(double(sink) - mx);
  for (double& x : s) total += (x = std::exp(x - mx));
  r.lse = mx + std::log(total);
  for (index_t j = 0; j < visible; ++j) {
    const double p = s[std::size_t(j)] / total;
    r.probs[std::size_t(j)] = p;
    for (index_t c = 0; c < d; ++c)
      r.out[std::size_t(c)] += p * double(L.v[std::size_t((kv * L.n + j) * d + c)]);
  }
  return r;
}

/// A mask with finite values in [-2, 2] and a few -inf entries, never the last position.
std::vector<float> random_mask(index_t count, unsigned seed) {
  std::vector<float> m(static_cast<std::size_t>(count));
  aqua_test::fill_normal(m, seed);
  for (index_t j = 0; j < count; ++j) {
    m[std::size_t(j)] = std::max(-2.0f, std::min(2.0f, m[std::size_t(j)]));
    if (j % 7 == 3 && j + 1 < count) m[std::size_t(j)] = neg_inf;
  }
  return m;
}

std::vector<float> sink_logits(index_t hq) {
  std::vector<float> s(static_cast<std::size_t>(hq));
  for (index_t h = 0; h < hq; ++h) s[std::size_t(h)] = h == 1 ? neg_inf : 0.5f * float(h) - 1.0f;
  return s;
}

constexpr double tolerance = 2e-5;

}  // namespace

TEST_CASE("decode over a cache applies window, softcap, mask and sinks as the double reference does",
          "[features][decode][threads]") {
  const index_t g = GENERATE(1, 4);
  const index_t hkv = 2, hq = g * hkv, d = 32, n = 333;  // the window starts mid-block
  CAPTURE(g);
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, unsigned(60 + g), 900});
  const aqua_oracle::oracle o(aqua_test::oracle_inputs(L));
  const auto mask = random_mask(n, 5);
  const auto sinks = sink_logits(hq);
  std::vector<float> q(static_cast<std::size_t>(hq * d));
  using top = aqua::selection_spec;
  aqua_test::both_paths([&] {
    for (const auto& f : feature_cases)
      for (auto mode : aqua_test::all_modes)
        for (const auto& spec : {top::top_k(d / 4), top::top_k(d)})
          for (int threads : {1, 3}) {
            CAPTURE(f.name, aqua_test::mode_name(mode), aqua_test::spec_name(spec), threads);
            const auto res = aqua_test::clear_decode_queries(o, q, d, 17, mode, spec);
            aqua::aqua_options opt;
            opt.mode = mode;
            opt.threads = threads;
            opt.window = f.window;
            opt.softcap = f.softcap;
            if (f.mask) opt.mask = aqua::make_view(mask.data(), n);
            if (f.sinks) opt.sinks = aqua::make_view(sinks.data(), hq);
            std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN()),
                lse(static_cast<std::size_t>(hq)), probs(static_cast<std::size_t>(hkv * n), -1.0f),
                logits(static_cast<std::size_t>(hq * n), std::numeric_limits<float>::quiet_NaN());
            opt.lse = aqua::make_view(lse.data(), hq);
            opt.logits = aqua::make_view(logits.data(), hq, n);
            aqua::aqua_decode(aqua::make_view(static_cast<const float*>(q.data()), hq, d), L.cache, spec,
                              aqua::make_view(out.data(), hq, d), opt, aqua::make_view(probs.data(), hkv, n));
            std::vector<double> group_probs(static_cast<std::size_t>(hkv * n), 0.0);
            for (index_t h = 0; h < hq; ++h) {
              const auto want =
                  reference(L, q.data() + h * d, h, n - 1, n, res.row(h).dims, f,
                            f.mask ? mask.data() : nullptr, f.sinks ? sinks[std::size_t(h)] : neg_inf);
              for (index_t c = 0; c < d; ++c)
                CHECK(std::abs(out[std::size_t(h * d + c)] - want.out[std::size_t(c)]) <= tolerance);
              CHECK(std::abs(lse[std::size_t(h)] - want.lse) <= tolerance * (1 + std::abs(want.lse)));
              index_t logits_outside = 0;
              for (index_t j = 0; j < n; ++j) {
                const double got = logits[std::size_t(h * n + j)], ref = want.logits[std::size_t(j)];
                logits_outside += ref == -INFINITY ? got != -INFINITY : !(std::abs(got - ref) <= tolerance);
              }
              CHECK(logits_outside == 0);
              for (index_t j = 0; j < n; ++j)
                group_probs[std::size_t((h / g) * n + j)] += want.probs[std::size_t(j)];
            }
            for (std::size_t i = 0; i < probs.size(); ++i)
              CHECK(std::abs(probs[i] - group_probs[i]) <= tolerance);
          }
  });
}

TEST_CASE("a window of W tokens is decode over a cache holding only the last W tokens",
          "[features][decode]") {
  const index_t hkv = 2, hq = 8, d = 32, n = 1000, window = 301;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 3, 900});
  std::vector<aqua::matrix_view<const float>> views;
  for (const auto& b : L.bases) views.push_back(aqua::view_of(b));
  aqua::kv_cache_options copt;
  copt.tile_dims = L.cache.tile_dims();
  aqua::kv_cache tail(views, copt);
  tail.append(
      aqua::tensor3_view<const float>(L.k.data() + (n - window) * d, {hkv, window, d}, {n * d, d, 1}),
      aqua::tensor3_view<const float>(L.v.data() + (n - window) * d, {hkv, window, d}, {n * d, d, 1}));
  std::vector<float> q(static_cast<std::size_t>(hq * d));
  aqua_test::fill_normal(q, 44);
  const auto qv = aqua::make_view(static_cast<const float*>(q.data()), hq, d);
  for (auto mode : aqua_test::all_modes) {
    CAPTURE(aqua_test::mode_name(mode));
    aqua::aqua_options opt;
    opt.mode = mode;
    std::vector<float> windowed(q.size()), alone(q.size());
    aqua::aqua_options wopt = opt;
    wopt.window = window;
    aqua::attention_profile prof;
    wopt.profile = &prof;
    aqua::aqua_decode(qv, L.cache, 8, aqua::make_view(windowed.data(), hq, d), wopt);
    aqua::aqua_decode(qv, tail, 8, aqua::make_view(alone.data(), hq, d), opt);
    for (std::size_t i = 0; i < q.size(); ++i) CHECK(std::abs(windowed[i] - alone[i]) <= 1e-5);
    // A window over every token is no window (the same kernels run).
    aqua::aqua_options wide = opt;
    wide.window = n + 5;
    std::vector<float> all(q.size()), plain(q.size());
    aqua::aqua_decode(qv, L.cache, 8, aqua::make_view(all.data(), hq, d), wide);
    aqua::aqua_decode(qv, L.cache, 8, aqua::make_view(plain.data(), hq, d), opt);
    CHECK(aqua_test::bitwise_equal(all, plain));
  }
}

TEST_CASE("a fully masked head outputs zeros, with lse -inf, or the sink's logit when it has one",
          "[features][decode]") {
  const index_t hkv = 1, hq = 2, d = 16, n = 50;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 8, 900});
  const std::vector<float> mask(static_cast<std::size_t>(n), neg_inf), sinks{neg_inf, 1.5f};
  std::vector<float> out(static_cast<std::size_t>(hq * d), 7.0f), lse(static_cast<std::size_t>(hq)),
      probs(static_cast<std::size_t>(n), 3.0f);
  aqua::attention_options opt;
  opt.mask = aqua::make_view(mask.data(), n);
  opt.sinks = aqua::make_view(sinks.data(), hq);
  opt.lse = aqua::make_view(lse.data(), hq);
  aqua::dense_decode(L.qv(), L.cache, aqua::make_view(out.data(), hq, d), opt,
                     aqua::make_view(probs.data(), hkv, n));
  for (float x : out) CHECK(x == 0.0f);
  for (float p : probs) CHECK(p == 0.0f);
  CHECK(lse[0] == neg_inf);
  CHECK(lse[1] == 1.5f);
}

TEST_CASE("prefill over a cache applies window, softcap, mask and sinks as the double reference does",
          "[features][prefill][threads]") {
  const index_t hkv = 2, hq = 4, d = 32, n = 150, m = 70;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, m, 21, 900});
  aqua_oracle::layer_inputs in = aqua_test::oracle_inputs(L);
  const aqua_oracle::oracle o(in);
  std::vector<float> mask(static_cast<std::size_t>(m * n));
  for (index_t i = 0; i < m; ++i) {
    const auto row = random_mask(n, unsigned(100 + i));
    std::copy(row.begin(), row.end(), mask.begin() + i * n);
    mask[std::size_t(i * n + (n - m + i))] = 0.0f;  // every query sees itself
  }
  const auto sinks = sink_logits(hq);
  std::vector<float> q(static_cast<std::size_t>(hq * m * d));
  using top = aqua::selection_spec;
  for (const auto& f : feature_cases)
    for (auto mode : aqua_test::all_modes)
      for (const auto& spec : {top::top_k(d / 4), top::top_k(d)})
        for (int threads : {1, 2}) {
          CAPTURE(f.name, aqua_test::mode_name(mode), aqua_test::spec_name(spec), threads);
          aqua_oracle::result res;
          for (unsigned attempt = 0;; ++attempt) {
            REQUIRE(attempt < 200);
            aqua_test::fill_normal(q, 31 + 7919 * attempt);
            res = o.prefill(q.data(), m, aqua_test::oracle_mode(mode), aqua_test::oracle_spec(spec));
            if (res.margin >= aqua_oracle::required_margin(d)) break;
          }
          aqua::aqua_options opt;
          opt.mode = mode;
          opt.threads = threads;
          opt.window = f.window;
          opt.softcap = f.softcap;
          if (f.mask) opt.prefill_mask = aqua::make_view(static_cast<const float*>(mask.data()), m, n);
          if (f.sinks) opt.sinks = aqua::make_view(sinks.data(), hq);
          std::vector<float> out(q.size(), std::numeric_limits<float>::quiet_NaN()),
              lse(static_cast<std::size_t>(hq * m));
          opt.prefill_lse = aqua::make_view(lse.data(), hq, m);
          aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q.data()), hq, m, d), L.cache, spec,
                             aqua::make_view(out.data(), hq, m, d), opt);
          index_t outside = 0;
          for (index_t h = 0; h < hq; ++h)
            for (index_t i = 0; i < m; ++i) {
              const index_t position = n - m + i;
              const auto want = reference(L, q.data() + (h * m + i) * d, h, position, position + 1,
                                          res.row(h, i, m).dims, f, f.mask ? mask.data() + i * n : nullptr,
                                          f.sinks ? sinks[std::size_t(h)] : neg_inf);
              for (index_t c = 0; c < d; ++c)
                outside += !(std::abs(out[std::size_t((h * m + i) * d + c)] - want.out[std::size_t(c)]) <=
                             tolerance);
              outside +=
                  !(std::abs(lse[std::size_t(h * m + i)] - want.lse) <= tolerance * (1 + std::abs(want.lse)));
            }
          CHECK(outside == 0);
        }
}

TEST_CASE("batched decode applies window, softcap and sinks to every sequence as aqua_decode does",
          "[features][batch][decode]") {
  const index_t hkv = 2, hq = 4, d = 32;
  std::vector<std::unique_ptr<aqua_test::random_layer>> layers;
  std::vector<const aqua::kv_cache*> caches;
  for (index_t n : {index_t(40), index_t(500), index_t(130)}) {
    layers.push_back(std::make_unique<aqua_test::random_layer>(
        hq, hkv, d, n, aqua_test::random_layer::options{16, true, 0, 1, unsigned(n), 900}));
    caches.push_back(&layers.back()->cache);
  }
  const index_t count = index_t(caches.size());
  std::vector<float> q(static_cast<std::size_t>(count * hq * d)), out(q.size());
  aqua_test::fill_normal(q, 12);
  const auto sinks = sink_logits(hq);
  aqua::aqua_options opt;
  opt.window = 64;
  opt.softcap = 4.0;
  opt.sinks = aqua::make_view(sinks.data(), hq);
  aqua::aqua_decode_batch(aqua::make_view(static_cast<const float*>(q.data()), count, hq, d),
                          aqua::make_view(static_cast<const aqua::kv_cache* const*>(caches.data()), count), 8,
                          aqua::make_view(out.data(), count, hq, d), opt);
  for (index_t s = 0; s < count; ++s) {
    std::vector<float> alone(static_cast<std::size_t>(hq * d));
    aqua::aqua_decode(aqua::make_view(static_cast<const float*>(q.data()) + s * hq * d, hq, d),
                      *caches[std::size_t(s)], 8, aqua::make_view(alone.data(), hq, d), opt);
    CHECK(aqua_test::bitwise_equal(
        std::vector<float>(out.begin() + s * hq * d, out.begin() + (s + 1) * hq * d), alone));
  }
  std::vector<float> mask(40);
  opt.mask = aqua::make_view(mask.data(), 40);
  CHECK_THROWS_WITH(aqua::aqua_decode_batch(
                        aqua::make_view(static_cast<const float*>(q.data()), count, hq, d),
                        aqua::make_view(static_cast<const aqua::kv_cache* const*>(caches.data()), count), 8,
                        aqua::make_view(out.data(), count, hq, d), opt),
                    Contains("the batched decode takes none"));
}

TEST_CASE("bad feature settings are errors", "[features][errors]") {
  const index_t hkv = 2, hq = 4, d = 16, n = 30;
  const aqua_test::random_layer L(hq, hkv, d, n, {16, true, 0, 1, 2, 900});
  std::vector<float> out(static_cast<std::size_t>(hq * d));
  const auto ov = aqua::make_view(out.data(), hq, d);
  auto decode = [&](const aqua::aqua_options& opt) { aqua::aqua_decode(L.qv(), L.cache, 4, ov, opt); };
  aqua::aqua_options opt;
  SECTION("window") {
    opt.window = -1;
    CHECK_THROWS_WITH(decode(opt), Contains("window must be at least 0 (0: no window), got -1"));
  }
  SECTION("softcap") {
    for (double cap :
         {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(), 1e300}) {
      opt.softcap = cap;
      CHECK_THROWS_WITH(decode(opt), Contains("softcap must be finite and at least 0"));
    }
  }
  SECTION("sinks") {
    std::vector<float> sinks(static_cast<std::size_t>(hq), 0.0f);
    opt.sinks = aqua::make_view(sinks.data(), hq - 1);
    CHECK_THROWS_WITH(decode(opt), Contains("sinks has 3 elements but q has 4 query heads"));
    opt.sinks = aqua::make_view(sinks.data(), hq);
    sinks[2] = std::numeric_limits<float>::quiet_NaN();
    CHECK_THROWS_WITH(decode(opt), Contains("sinks[2] = nan; a sink logit is finite or -inf"));
    sinks[2] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(decode(opt), Contains("sinks[2] = inf"));
  }
  SECTION("masks") {
    std::vector<float> mask(static_cast<std::size_t>(n + 1), 0.0f);
    opt.mask = aqua::make_view(static_cast<const float*>(mask.data()), n + 1);
    CHECK_THROWS_WITH(decode(opt), Contains("mask has length 31 but the cache holds N = 30 tokens"));
    opt.mask = aqua::make_view(static_cast<const float*>(mask.data()), n);
    mask[4] = std::numeric_limits<float>::infinity();
    CHECK_THROWS_WITH(decode(opt), Contains("mask holds inf at index [4]"));
    mask[4] = 0.0f;
    opt.prefill_mask = aqua::make_view(static_cast<const float*>(mask.data()), 1, n);
    CHECK_THROWS_WITH(decode(opt), Contains("options.prefill_mask is a prefill input"));
    std::vector<float> q3(static_cast<std::size_t>(hq * 2 * d)), o3(q3.size());
    aqua::aqua_options popt;
    popt.mask = aqua::make_view(static_cast<const float*>(mask.data()), n);
    CHECK_THROWS_WITH(
        aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q3.data()), hq, 2, d), L.cache,
                           aqua::selection_spec::top_k(4), aqua::make_view(o3.data(), hq, 2, d), popt),
        Contains("options.mask is a decode input"));
    popt.mask = {};
    popt.prefill_mask = aqua::make_view(static_cast<const float*>(mask.data()), 1, n);
    CHECK_THROWS_WITH(
        aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q3.data()), hq, 2, d), L.cache,
                           aqua::selection_spec::top_k(4), aqua::make_view(o3.data(), hq, 2, d), popt),
        Contains("prefill_mask has shape [1, 30] but must be [M, N] = [2, 30]"));
  }
  SECTION("logits") {
    std::vector<float> logits(static_cast<std::size_t>(hq * n));
    opt.logits = aqua::make_view(logits.data(), hq, n - 1);
    CHECK_THROWS_WITH(decode(opt), Contains("logits has shape [4, 29] but must be [Hq, N] = [4, 30]"));
    opt.logits = aqua::make_view(logits.data(), hq, n);
    std::vector<float> q3(static_cast<std::size_t>(hq * 2 * d)), o3(q3.size());
    CHECK_THROWS_WITH(
        aqua::aqua_prefill(aqua::make_view(static_cast<const float*>(q3.data()), hq, 2, d), L.cache,
                           aqua::selection_spec::top_k(4), aqua::make_view(o3.data(), hq, 2, d), opt),
        Contains("options.logits is a decode output"));
  }
  SECTION("quality has no reference with features") {
    opt.softcap = 5;
    CHECK_THROWS_WITH(aqua::aqua_decode_quality(L.qv(), L.cache, aqua::selection_spec::top_k(4), opt),
                      Contains("the exact reference has no window, softcap, sinks or mask"));
  }
  SECTION("engine buffers take none of them") {
    aqua::attention_options vopt;
    vopt.window = 4;
    const auto kv = aqua::make_view(static_cast<const float*>(L.k.data()), hkv, n, d);
    CHECK_THROWS_WITH(aqua::dense_decode<float>(L.qv(), kv, kv, ov, vopt),
                      Contains("apply to attention over a kv_cache; over engine buffers pass the mask"));
  }
}
