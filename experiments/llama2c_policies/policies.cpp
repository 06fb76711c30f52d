// aqua_llama_policies: selection policies past the paper's uniform rule for the llama2.c engine
// (examples/llama2c), an experiment rather than an example: fit a policy on calibration text with
// exact attention (--fit-policy OUT --budget K ...), or measure the perplexity of a text under one
// (--policy FILE). policy.hpp holds the policies and the fitting; experiment.sh and kjv64.sh the
// studies of docs/real-model.md and docs/real-model-kjv64.md.
//
//   aqua_llama_policies --ppl TEXT [--lines A-B] [--max-tokens N] [--windows W]
//       --fit-policy OUT --budget K [--basis B] [--weight W] [--alloc A] [--rule R]   fit
//       --policy FILE [--block B]                                                      evaluate
#include <aqua/config.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "llama2c/llama2c.hpp"
#include "policies_cli.hpp"
#include "policy.hpp"

#ifndef AQUA_LLAMA2C_REPO_ROOT
#define AQUA_LLAMA2C_REPO_ROOT ""
#endif

namespace {

using aqua_llama_policies_cli::options;

/// --fit-policy: two passes of exact attention over the calibration windows (moments, then errors
/// and energy fractions under the fitted bases), then counts or thresholds per head.
int fit_policy(const options& o, const llama2c::checkpoint& model,
               const std::vector<std::vector<int>>& windows) {
  const auto& c = model.cfg();
  const int layers = c.n_layers, hq = c.n_heads, hkv = c.n_kv_heads, d = c.head_dim(), heads = layers * hq;
  // The reference's 511-position rule: a window's last position predicts nothing, so its query
  // (and key) stay out of the calibration rows.
  auto run_windows = [&](llama2c::attention_backend& a) {
    llama2c::transformer engine(model, a);
    for (const auto& w : windows) {
      engine.reset();
      if (w.size() >= 2) engine.forward(w.data(), aqua::index_t(w.size()) - 1);
    }
  };
  llama2c::moment_collector moments(layers, hq, hkv, d);
  run_windows(moments);
  const auto basis = o.basis == "joint"            ? llama2c::basis_kind::joint
                     : o.basis == "joint-centered" ? llama2c::basis_kind::joint_centered
                     : o.basis == "queries"        ? llama2c::basis_kind::queries
                                                   : llama2c::basis_kind::identity;
  const auto weight = o.weight == "key-rms"   ? llama2c::weight_kind::key_rms
                      : o.weight == "key-std" ? llama2c::weight_kind::key_std
                                              : llama2c::weight_kind::none;
  llama2c::selection_policy p = llama2c::make_base_policy(moments, layers, hq, hkv, d, basis, weight);
  llama2c::error_collector errors(p, model, o.alloc != "uniform");
  run_windows(errors);

  std::vector<double> target(std::size_t(heads), o.budget);
  if (o.alloc == "dp") {
    std::vector<std::vector<double>> err(static_cast<std::size_t>(heads),
                                         std::vector<double>(static_cast<std::size_t>(d)));
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h)
        for (int k = 1; k <= d; ++k) err[p.head_at(l, h)][std::size_t(k - 1)] = errors.error(l, h, k);
    const auto counts = llama2c::allocate_counts(err, d, int(std::lround(o.budget * heads)));
    for (int i = 0; i < heads; ++i) target[std::size_t(i)] = counts[std::size_t(i)];
  }
  double predicted = 0, calibration_k = 0;
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < hq; ++h) {
      const std::size_t i = p.head_at(l, h);
      if (o.rule == "fixed") {
        p.k[i] = int(target[i]);
        predicted += errors.error(l, h, p.k[i]);
        calibration_k += p.k[i];
      } else if (o.rule == "energy-head") {
        p.k[i] = 0;
        p.tau[i] = llama2c::threshold_for(errors.energy(l, h), d, target[i]);
        calibration_k += llama2c::mean_count(errors.energy(l, h), d, p.tau[i]);
      }
    }
  if (o.alloc == "lagrange") {
    std::vector<const std::vector<float>*> cum, err;
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h)
        cum.push_back(&errors.energy(l, h)), err.push_back(&errors.query_errors(l, h));
    const auto taus = llama2c::lagrange_thresholds(cum, err, d, o.budget);
    calibration_k = 0;
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h) {
        const std::size_t i = p.head_at(l, h);
        p.k[i] = 0;
        p.tau[i] = taus[i];
        calibration_k += llama2c::mean_count(errors.energy(l, h), d, p.tau[i]);
      }
  }
  if (o.rule == "energy") {
    std::vector<float> pooled;
    for (int l = 0; l < layers; ++l)
      for (int h = 0; h < hq; ++h)
        pooled.insert(pooled.end(), errors.energy(l, h).begin(), errors.energy(l, h).end());
    const double tau = llama2c::threshold_for(pooled, d, o.budget);
    for (int i = 0; i < heads; ++i) p.k[std::size_t(i)] = 0, p.tau[std::size_t(i)] = tau;
    calibration_k = llama2c::mean_count(pooled, d, tau) * heads;
  }
  calibration_k /= heads;
  char buf[256];
  std::snprintf(buf, sizeof buf, "basis %s, weight %s, budget %g, alloc %s, rule %s, %zu calibration windows",
                o.basis.c_str(), o.weight.c_str(), o.budget, o.alloc.c_str(), o.rule.c_str(), windows.size());
  p.description = buf;
  p.save(o.fit_policy);
  std::printf("policy %s: %s; mean k on calibration %.3f\n", o.fit_policy.c_str(), buf, calibration_k);
  for (int l = 0; l < layers; ++l) {
    std::printf("layer %d:", l);
    for (int h = 0; h < hq; ++h) {
      const std::size_t i = p.head_at(l, h);
      if (p.k[i] > 0)
        std::printf(" k%d", p.k[i]);
      else
        std::printf(" tau%.4f(k%.2f)", p.tau[i], llama2c::mean_count(errors.energy(l, h), d, p.tau[i]));
    }
    std::printf("\n");
  }
  if (o.alloc == "dp" && o.rule == "fixed")
    std::printf("calibration residual error (sum over heads): %.6g\n", predicted);
  if (o.json)
    std::printf("{\"mode\": \"fit-policy\", \"policy\": %s, \"mean_k\": %.4f, \"windows\": %zu}\n",
                llama2c::json_string(o.fit_policy).c_str(), calibration_k, windows.size());
  return 0;
}

/// --policy: perplexity of the windows under the policy.
int evaluate_policy(const options& o, const llama2c::checkpoint& model,
                    const std::vector<std::vector<int>>& windows, const std::string& text_path) {
  const auto& c = model.cfg();
  llama2c::selection_policy p = llama2c::selection_policy::load(o.policy);
  AQUA_CHECK(
      p.layers == c.n_layers && p.q_heads == c.n_heads && p.kv_heads == c.n_kv_heads && p.d == c.head_dim(),
      "the policy '", o.policy, "' is for ", p.layers, " layers, ", p.q_heads, "/", p.kv_heads,
      " heads, d = ", p.d, " but the model has ", c.n_layers, ", ", c.n_heads, "/", c.n_kv_heads, ", ",
      c.head_dim());
  llama2c::policy_attention attention(p, c.seq_len);
  llama2c::transformer engine(model, attention);
  const auto start = std::chrono::steady_clock::now();
  const llama2c::perplexity_result r = llama2c::perplexity(engine, windows, o.block);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  llama2c::print_perplexity(r, windows.size(), attention.name(), text_path, o.lines, s);
  std::printf("policy: %s, mean k %.4f\n", o.policy.c_str(), attention.mean_selected());
  if (o.json)
    std::printf(
        "{\"mode\": \"perplexity\", \"attention\": \"%s\", \"perplexity\": %.6f, \"mean_nll\": %.8f, "
        "\"tokens\": %d, \"predicted\": %d, \"windows\": %zu, \"text_file\": %s, \"lines\": %s, "
        "\"mean_k\": %.4f, \"block\": %d}\n",
        attention.name(), r.perplexity, r.mean_nll, r.tokens, r.predicted, windows.size(),
        llama2c::json_string(text_path).c_str(), llama2c::json_string(o.lines).c_str(),
        attention.mean_selected(), o.block);
  return 0;
}

int run(const options& o) {
  const aqua_llama_cli::input_files inputs(o.data_dir, AQUA_LLAMA2C_REPO_ROOT);
  const std::string model_path = inputs.model(o.model);
  aqua_llama_policies_cli::check_against_model(o, llama2c::checkpoint::read_config(model_path));
  const std::string text_path = inputs.text(o.ppl);
  const llama2c::checkpoint model = llama2c::checkpoint::load(model_path);
  const llama2c::tokenizer tok =
      llama2c::tokenizer::load(inputs.tokenizer(o.tokenizer), model.cfg().vocab_size);
  const auto& c = model.cfg();
  const std::string text = llama2c::read_text(text_path, o.first_line, o.last_line);
  const auto windows = llama2c::perplexity_windows(tok, text, std::min(o.max_tokens, c.seq_len), o.windows);
  if (!o.fit_policy.empty()) return fit_policy(o, model, windows);
  return evaluate_policy(o, model, windows, text_path);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_llama_policies"};
  options o;
  aqua_llama_policies_cli::add_options(app, o);
  return aqua_cli::run(app, argc, argv, [&] { return run(o); });
}
