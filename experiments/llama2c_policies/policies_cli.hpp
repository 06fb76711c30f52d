// aqua_llama_policies' command line (CLI11): perplexity of a llama2.c model on a text under a
// selection policy (--policy FILE), or the fitting of one on the text (--fit-policy OUT). The
// model, data and window flags mean what they mean for aqua_llama (examples/llama2c).
#pragma once

#include "aqua_tools/cli.hpp"
#include "llama2c/checkpoint.hpp"
#include "llama2c/llama_cli.hpp"

#include <cmath>
#include <string>

namespace aqua_llama_policies_cli {

struct options {
  std::string model, tokenizer, data_dir, ppl, lines;
  int max_tokens = 512, windows = 1, block = 0;  // one thread: policy_attention is scalar
  int first_line = 0, last_line = 0;             // --lines A-B
  bool json = false, max_tokens_given = false;
  // Evaluate a policy, or fit one on the --ppl text.
  std::string policy, fit_policy, basis = "queries", weight = "none", alloc = "uniform", rule = "fixed";
  double budget = 0;
};

/// The options of aqua_llama_policies into `app`, parsed into `o`.
inline void add_options(CLI::App& app, options& o) {
  using aqua_llama_cli::max_context;
  using aqua_llama_cli::max_dim;
  aqua_cli::configure(app);
  app.description(
      "aqua_llama_policies: selection policies for the llama2.c engine (experiments/llama2c_policies): the "
      "perplexity of --ppl TEXT under --policy FILE, or --fit-policy OUT fitted on that text with exact "
      "attention. Without --model/--tokenizer it loads stories260K from the data directory.");
  aqua_llama_cli::add_input_options(app, o.model, o.tokenizer, o.data_dir);
  app.add_flag("--json", o.json, "a JSON line with the result");
  app.add_option("--ppl", o.ppl,
                 "TEXT_FILE (a relative path missing here is looked up in the data directory)")
      ->required()
      ->check(aqua_llama_cli::text_file());
  app.add_option("--lines", o.lines, "lines A-B of the file, joined by spaces")
      ->check(aqua_llama_cli::line_range());
  auto* max_tokens = aqua_cli::integer(app, "--max-tokens", o.max_tokens, 2, max_context,
                                       "tokens per window (BOS included), at most the context");
  aqua_cli::integer(app, "--windows", o.windows, 0, 1 << 24, "consecutive windows of --max-tokens (0: all)");
  aqua_cli::integer(app, "--block", o.block, 0, max_context,
                    "--policy: forward calls of B tokens (1: token by token; 0: all at once)");
  auto* policy = app.add_option("--policy", o.policy, "attention under a policy written by --fit-policy")
                     ->check(aqua_cli::readable_file());
  auto* fit = app.add_option("--fit-policy", o.fit_policy,
                             "fit a selection policy on the --ppl text (exact attention) and write it to OUT")
                  ->check(aqua_cli::writable_file());
  policy->excludes(fit);
  auto* basis = aqua_cli::choice(app, "--basis", o.basis, {"identity", "queries", "joint", "joint-centered"},
                                 "--fit-policy: basis of the projection");
  auto* weight = aqua_cli::choice(app, "--weight", o.weight, {"none", "key-rms", "key-std"},
                                  "--fit-policy: weight of the selection score");
  auto* budget =
      aqua_cli::real(app, "--budget", o.budget, 1, max_dim, "--fit-policy: mean dims per query head");
  budget->default_str("");
  auto* alloc = aqua_cli::choice(app, "--alloc", o.alloc, {"uniform", "dp", "lagrange"},
                                 "--fit-policy: allocation of the budget over heads");
  auto* rule = aqua_cli::choice(app, "--rule", o.rule, {"fixed", "energy", "energy-head"},
                                "--fit-policy: fixed counts, one energy threshold or one per head");
  app.callback([&o, max_tokens, policy, fit, basis, weight, budget, alloc, rule] {
    using aqua_cli::usage_error;
    o.max_tokens_given = max_tokens->count() > 0;
    if (!o.lines.empty()) aqua_llama_cli::parse_lines(o.lines, o.first_line, o.last_line);
    if (policy->count() == 0 && fit->count() == 0)
      throw usage_error("needs --policy FILE or --fit-policy OUT");
    if (fit->count() == 0) {
      for (const auto* opt : {basis, weight, budget, alloc, rule})
        if (opt->count() > 0) throw usage_error(opt->get_name() + " needs --fit-policy");
    } else {
      if (budget->count() == 0) throw usage_error("--fit-policy needs --budget K");
      if (o.alloc == "lagrange" && o.rule != "energy-head")
        throw usage_error("--alloc lagrange needs --rule energy-head");
      if (o.rule == "energy" && o.alloc == "dp")
        throw usage_error(
            "--rule energy (one threshold) has no per-head budget; use energy-head with --alloc dp");
      if (o.rule == "fixed" && o.alloc == "uniform" && o.budget != std::floor(o.budget))
        throw usage_error("--rule fixed with --alloc uniform needs a whole --budget, got " +
                          aqua_cli::internal::real_text(o.budget));
    }
  });
}

/// The checks that depend on the model, from its header alone (throws aqua_cli::usage_error).
inline void check_against_model(const options& o, const llama2c::config& c) {
  const auto over = [](const std::string& flag, double value, const std::string& limit) {
    return aqua_cli::usage_error(flag + " " + aqua_cli::internal::real_text(value) + " exceeds the model's " +
                                 limit);
  };
  const std::string context = "context of " + std::to_string(c.seq_len) + " tokens";
  if (o.max_tokens_given && o.max_tokens > c.seq_len) throw over("--max-tokens", o.max_tokens, context);
  if (o.block > c.seq_len) throw over("--block", o.block, context);
  if (!o.fit_policy.empty() && o.budget > c.head_dim())
    throw over("--budget", o.budget, "head dimension " + std::to_string(c.head_dim()));
}

}  // namespace aqua_llama_policies_cli
