// Tests of the selection policies of experiments/llama2c_policies (policy.hpp) on the tiny synthetic
// llama2.c model of tests/llama2c_support.hpp.
#include <catch2/catch.hpp>

#include <Eigen/Dense>

#include "llama2c_support.hpp"
#include "policy.hpp"

// =============================================================================================
// Selection policies (policy.hpp)

namespace {

/// A policy with the given transforms for every (layer, KV head), unit weights and k = d.
llama2c::selection_policy policy_for(const tiny_model& m, const Eigen::MatrixXd& tq,
                                     const Eigen::MatrixXd& tk) {
  llama2c::selection_policy p;
  const int d = m.head_dim();
  p.resize(m.layers, m.heads, m.kv_heads, d);
  for (int l = 0; l < m.layers; ++l)
    for (int g = 0; g < m.kv_heads; ++g)
      for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) {
          p.tq[p.transform_at(l, g) + std::size_t(i * d + j)] = tq(i, j);
          p.tk[p.transform_at(l, g) + std::size_t(i * d + j)] = tk(i, j);
        }
  return p;
}

}  // namespace

TEST_CASE(
    "llama2c policy: every dim kept is exact attention, for orthogonal and non-orthogonal transform pairs",
    "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  const std::vector<int> tokens = {1, 7, 39, 0, 12, 12, 25, 3, 30, 5, 5, 17};
  llama2c::dense_attention dense;
  const auto want = run_logits(ck, dense, tokens, true);
  const int d = m.head_dim();
  // A non-orthogonal pair with Tq Tk^T = I (the joint basis's shape): Tq = A, Tk = A^-T.
  Eigen::MatrixXd a(d, d);
  for (int i = 0; i < d; ++i)
    for (int j = 0; j < d; ++j) a(i, j) = (i == j ? 2.0 : 0.0) + 0.3 * std::sin(1.0 + i * 3 + j);
  const Eigen::MatrixXd a_inv_t = a.inverse().transpose();
  for (const bool joint : {false, true}) {
    llama2c::selection_policy p =
        joint ? policy_for(m, a, a_inv_t)
              : policy_for(m, Eigen::MatrixXd::Identity(d, d), Eigen::MatrixXd::Identity(d, d));
    for (double& w : p.weight) w = 0.5 + 0.1 * double(&w - p.weight.data());  // weights only rank
    for (const bool whole : {true, false}) {
      llama2c::policy_attention attention(p, m.seq_len);
      INFO("joint " << joint << ", whole " << whole);
      CHECK(max_rel_diff(run_logits(ck, attention, tokens, whole), want) < 1e-5);
      CHECK(attention.mean_selected() == d);
    }
  }
}

TEST_CASE(
    "llama2c policy: a uniform k with identity bases equals the aqua backend, and per-head counts are "
    "counted",
    "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const auto ck = llama2c::checkpoint::load(write_model(dir, m));
  const std::vector<int> tokens = {1, 7, 39, 0, 12, 12, 25, 3, 30, 5, 5, 17};
  const int d = m.head_dim();
  const auto id = Eigen::MatrixXd::Identity(d, d);
  llama2c::selection_policy p = policy_for(m, id, id);
  for (int& k : p.k) k = 2;
  llama2c::aqua_attention_options o;
  o.select = aqua::selection_spec::top_k(2);
  llama2c::aqua_attention reference(
      aqua::projection_set::identity(m.layers, m.kv_heads, d, m.heads / m.kv_heads), o);
  llama2c::policy_attention attention(p, m.seq_len);
  CHECK(max_rel_diff(run_logits(ck, attention, tokens, true), run_logits(ck, reference, tokens, true)) <
        1e-5);
  // Counts 1 and 3 on alternate heads average to 2; a threshold head counts what it keeps.
  for (std::size_t i = 0; i < p.k.size(); ++i) p.k[i] = i % 2 ? 3 : 1;
  llama2c::policy_attention mixed(p, m.seq_len);
  run_logits(ck, mixed, tokens, true);
  CHECK(mixed.mean_selected() == Approx(2.0));
  for (std::size_t i = 0; i < p.k.size(); ++i) p.k[i] = 0, p.tau[i] = 1.0;
  llama2c::policy_attention full(p, m.seq_len);
  run_logits(ck, full, tokens, true);
  CHECK(full.mean_selected() <= d);
  CHECK(full.mean_selected() > d - 1);  // random queries have no zero coordinate
}

TEST_CASE("llama2c policy: the budget allocation is the brute-force optimum", "[llama2c]") {
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> u(0, 1);
  const int heads = 4, d = 4;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::vector<double>> err(heads, std::vector<double>(d));
    for (auto& row : err) {
      double e = 1 + u(rng);
      for (int c = 0; c < d; ++c) row[std::size_t(c)] = e *= u(rng);  // decreasing, not convex
    }
    for (int total = heads; total <= heads * d; total += 3) {
      double best = 1e300;
      for (int code = 0; code < 256; ++code) {  // every (k_0..k_3) in [1, 4]^4
        int sum = 0;
        double e = 0;
        for (int h = 0, c = code; h < heads; ++h, c /= 4)
          sum += c % 4 + 1, e += err[std::size_t(h)][std::size_t(c % 4)];
        if (sum == total) best = std::min(best, e);
      }
      const auto k = llama2c::allocate_counts(err, d, total);
      double e = 0;
      int sum = 0;
      for (int h = 0; h < heads; ++h)
        sum += k[std::size_t(h)], e += err[std::size_t(h)][std::size_t(k[std::size_t(h)] - 1)];
      CAPTURE(trial, total);
      CHECK(sum == total);
      CHECK(e == Approx(best).epsilon(1e-12));
    }
  }
  REQUIRE_THROWS_WITH(
      llama2c::allocate_counts(std::vector<std::vector<double>>(2, std::vector<double>(4)), 4, 9),
      Contains("a budget of 9 dims for 2 heads"));
}

TEST_CASE("llama2c policy: a per-head threshold keeps the target mean count on its calibration queries",
          "[llama2c]") {
  // Two kinds of queries: energy fractions (0.5, 0.9, 1, 1) keep 1, 2 or 3 dims depending on tau;
  // (0.97, 0.99, 1, 1) keep 1 or 2. Means: tau 0.5 -> 1, 0.95 -> (3 + 1) / 2 = 2.
  const int d = 4;
  const std::vector<float> cum = {0.5f, 0.9f, 1.0f, 1.0f, 0.97f, 0.99f, 1.0f, 1.0f};
  CHECK(llama2c::mean_count(cum, d, 0.5) == 1.0);
  CHECK(llama2c::mean_count(cum, d, 0.95) == 2.0);
  CHECK(llama2c::mean_count(cum, d, 1.0) == 3.0);
  const double tau = llama2c::threshold_for(cum, d, 2.0);
  CHECK(llama2c::mean_count(cum, d, tau) == 2.0);
  CHECK(tau == Approx(0.97).margin(1e-6));  // the largest tau still keeping a mean of 2
  CHECK(llama2c::threshold_for(cum, d, 3.0) == 1.0);
}

TEST_CASE("llama2c policy: the error/dims trade-off gives the dims to the head whose error they remove",
          "[llama2c]") {
  // d = 2, one query per head, half the energy in each dim: a threshold <= 0.5 keeps 1 dim, above
  // keeps 2. Head 0 loses error 1 with its second dim, head 1 nothing: at a mean of 1.5 dims the
  // second dim goes to head 0.
  const int d = 2;
  const std::vector<float> cum = {0.5f, 1.0f}, err0 = {1.0f, 0.0f}, err1 = {0.0f, 0.0f};
  const auto taus = llama2c::lagrange_thresholds({&cum, &cum}, {&err0, &err1}, d, 1.5);
  REQUIRE(taus.size() == 2);
  CHECK(llama2c::mean_count(cum, d, taus[0]) == 2.0);
  CHECK(llama2c::mean_count(cum, d, taus[1]) == 1.0);
  const auto low = llama2c::lagrange_thresholds({&cum, &cum}, {&err0, &err1}, d, 1.0);
  CHECK(llama2c::mean_count(cum, d, low[0]) + llama2c::mean_count(cum, d, low[1]) == 2.0);
}

TEST_CASE("llama2c policy: files round-trip and truncated or corrupt files are rejected", "[llama2c]") {
  temp_dir dir;
  const tiny_model m;
  const int d = m.head_dim();
  llama2c::selection_policy p =
      policy_for(m, Eigen::MatrixXd::Identity(d, d) * 0.5, Eigen::MatrixXd::Identity(d, d) * 2.0);
  p.k[1] = 0;
  p.tau[1] = 0.875;
  p.weight[3] = 1.0 / 3.0;
  p.description = "test policy";
  const std::string path = dir.file("p.policy");
  p.save(path);
  const auto q = llama2c::selection_policy::load(path);
  CHECK(q.tq == p.tq);
  CHECK(q.tk == p.tk);
  CHECK(q.weight == p.weight);
  CHECK(q.k == p.k);
  CHECK(q.tau == p.tau);
  CHECK(q.description == "test policy");
  const std::vector<char> bytes = read_bytes(path);
  write_bytes(dir.file("short.policy"),
              std::vector<char>(bytes.begin(), bytes.begin() + std::ptrdiff_t(bytes.size() / 2)));
  CHECK_THROWS_WITH(llama2c::selection_policy::load(dir.file("short.policy")), Contains("truncated"));
  std::string text(bytes.begin(), bytes.end());
  write_bytes(dir.file("magic.policy"), std::vector<char>({'x', 'y', '\n'}));
  CHECK_THROWS_WITH(llama2c::selection_policy::load(dir.file("magic.policy")),
                    Contains("not an aqua_llama policy"));
  const std::string bad_k = text.substr(0, text.rfind('\n', text.size() - 2) + 1) + "9 1\n";
  write_bytes(dir.file("k.policy"), std::vector<char>(bad_k.begin(), bad_k.end()));
  CHECK_THROWS_WITH(llama2c::selection_policy::load(dir.file("k.policy")), Contains("k = 9"));
  const std::string extra = text + "1 1\n";
  write_bytes(dir.file("extra.policy"), std::vector<char>(extra.begin(), extra.end()));
  CHECK_THROWS_WITH(llama2c::selection_policy::load(dir.file("extra.policy")), Contains("trailing data"));
  const std::string huge = "aqua_llama_policy 1 5 8 4 100000\n";
  write_bytes(dir.file("huge.policy"), std::vector<char>(huge.begin(), huge.end()));
  CHECK_THROWS_WITH(llama2c::selection_policy::load(dir.file("huge.policy")), Contains("out of range"));
}
