// aqua_llama's command line (CLI11): its options, shared by the tool (main.cpp) and the
// argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp). Parsing checks every value and
// combination and the files named (readable inputs, writable outputs); check_against_model() then
// checks what depends on the model (context length, head dimension) from the checkpoint's header
// alone, before the weights, the tokenizer or the text are loaded. input_files finds the files
// that the flags leave to the data directory. aqua_llama_policies (experiments/llama2c_policies)
// builds its own options from these pieces.
#pragma once

#include "aqua_tools/cli.hpp"
#include "checkpoint.hpp"
#include "data_dir.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <utility>

namespace aqua_llama_cli {

struct options {
  std::string model, tokenizer, data_dir, prompt, ppl, lines, dump_qk;
  int steps = 256, max_tokens = 512, windows = 1, threads = 1, block = 0;
  bool json = false, generate = true;
  // AQUA attention (used when a projection is given or --identity).
  std::string projection, select = "per-head";
  bool identity = false;
  int k = 0, r = 0, tile = 0;
  double energy = 0;
  // H2O eviction under AQUA attention (aqua_attention.hpp): tokens kept per KV head, recent ones
  // among them (-1: half the budget, rounded down).
  int h2o_budget = 0, h2o_recent = -1;
  int first_line = 0, last_line = 0;  // --lines A-B
  // Given explicitly: then larger than the model's context is an error; the defaults (256 steps,
  // 512 tokens) are capped at the context of a smaller model.
  bool steps_given = false, max_tokens_given = false;
  bool aqua() const { return identity || !projection.empty(); }
};

constexpr int max_context = llama2c::checkpoint::max_seq_len;  // --steps, --max-tokens, --block
constexpr int max_dim = llama2c::checkpoint::max_dim;          // --k, --r, --tile

/// "A-B" with 1 <= A <= B.
inline bool parse_lines(const std::string& s, int& first, int& last) {
  const auto dash = s.find('-');
  return dash != std::string::npos && aqua_cli::internal::parse_integer(s.substr(0, dash), first) &&
         aqua_cli::internal::parse_integer(s.substr(dash + 1), last) && first >= 1 && first <= last;
}

/// --model, --tokenizer and --data-dir, the flags input_files resolves.
inline void add_input_options(CLI::App& app, std::string& model, std::string& tokenizer,
                              std::string& data_dir) {
  app.add_option("--model", model, "llama2.c checkpoint")->check(aqua_cli::readable_file());
  app.add_option("--tokenizer", tokenizer, "llama2.c tokenizer")->check(aqua_cli::readable_file());
  app.add_option("--data-dir", data_dir, "data directory (stories260K/, text/)")
      ->check(aqua_cli::readable_dir());
}

/// --ppl: a readable file, or a relative path that is missing here, which input_files::text()
/// looks for in the data directory once that is known.
inline CLI::Validator text_file() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        std::error_code ec;
        if (!v.empty() && !std::filesystem::exists(v, ec) && v[0] != '/') return "";  // data dir
        std::string path = v;
        return aqua_cli::readable_file()(path);
      },
      "TEXT_FILE", "text_file");
}

/// --lines: "A-B" with 1 <= A <= B.
inline CLI::Validator line_range() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        int a = 0, b = 0;
        return parse_lines(v, a, b) ? "" : "'" + v + "' is not A-B with 1 <= A <= B";
      },
      "A-B", "lines");
}

/// The options of aqua_llama into `app`, parsed into `o`.
inline void add_options(CLI::App& app, options& o) {
  aqua_cli::configure(app);
  app.description(
      "aqua_llama: a llama2.c inference engine whose attention runs in aqua: greedy generation (default) or "
      "perplexity (--ppl), with exact attention or AQUA (--projection FILE or --identity with --k or "
      "--energy). Without --model/--tokenizer it loads stories260K from the data directory (--data-dir, "
      "$AQUA_DATA_DIR, ../shared/data).");
  add_input_options(app, o.model, o.tokenizer, o.data_dir);
  aqua_cli::threads(app, o.threads);
  app.add_flag("--json", o.json, "a JSON line with the result");
  auto* prompt = app.add_option("--prompt", o.prompt, "generation: the prompt");
  auto* steps =
      aqua_cli::integer(app, "--steps", o.steps, 0, max_context,
                        "generation: tokens to generate, at most the context (0: the whole context)");
  auto* ppl = app.add_option("--ppl", o.ppl,
                             "perplexity of TEXT_FILE (a relative path missing here is looked up in the data "
                             "directory)")
                  ->check(text_file());
  auto* lines = app.add_option("--lines", o.lines, "perplexity: lines A-B of the file, joined by spaces")
                    ->check(line_range());
  auto* max_tokens = aqua_cli::integer(app, "--max-tokens", o.max_tokens, 2, max_context,
                                       "perplexity: tokens per window (BOS included), at most the context");
  auto* windows = aqua_cli::integer(app, "--windows", o.windows, 0, 1 << 24,
                                    "perplexity: consecutive windows of --max-tokens (0: all)");
  auto* block =
      aqua_cli::integer(app, "--block", o.block, 0, max_context,
                        "perplexity in forward calls of B tokens (1: token by token; 0: all at once)");
  auto* dump = app.add_option("--dump-qk", o.dump_qk, "perplexity: write q_layer*.npy / k_layer*.npy to DIR")
                   ->check(aqua_cli::writable_dir());
  auto* projection = app.add_option("--projection", o.projection,
                                    "AQUA attention with the per-head bases of an aqua_calibrate file")
                         ->check(aqua_cli::readable_file());
  auto* identity =
      app.add_flag("--identity", o.identity, "AQUA attention with identity bases (no calibration)");
  identity->excludes(projection);
  auto* k = aqua_cli::integer(app, "--k", o.k, 1, max_dim, "AQUA: projected dims kept per query, in [1, r]");
  k->default_str("");
  auto* energy =
      aqua_cli::real(app, "--energy", o.energy, 0, 1,
                     "AQUA: keep the fewest dims holding TAU of the query's energy, in (0, 1]", true);
  energy->default_str("");
  k->excludes(energy);
  auto* select =
      aqua_cli::choice(app, "--select", o.select, {"per-head", "group", "tile"},
                       "AQUA: per-head, group (one set per KV group; decode only, so perplexity runs "
                       "token by token) or tile (whole tiles per KV group)");
  auto* r = aqua_cli::integer(app, "--r", o.r, 0, max_dim,
                              "AQUA: keep only the first R projected dims of every key (0: all)");
  auto* tile =
      aqua_cli::integer(app, "--tile", o.tile, 0, max_dim,
                        "AQUA: projected dims per key tile (0: aqua's default, or R when truncating)");
  auto* h2o_budget =
      aqua_cli::integer(app, "--h2o-budget", o.h2o_budget, 1, max_context,
                        "AQUA: H2O eviction keeping B tokens per KV head after every decode step (token by "
                        "token)");
  h2o_budget->default_str("");
  auto* h2o_recent = aqua_cli::integer(app, "--h2o-recent", o.h2o_recent, 0, max_context,
                                       "H2O: the W most recent of the B tokens, in [0, B] (default B / 2)");
  h2o_recent->default_str("");
  app.callback([&o, prompt, steps, ppl, lines, max_tokens, windows, block, dump, k, energy, select, r, tile,
                h2o_budget, h2o_recent] {
    using aqua_cli::usage_error;
    o.generate = ppl->count() == 0;
    o.steps_given = steps->count() > 0;
    o.max_tokens_given = max_tokens->count() > 0;
    if (o.generate) {
      for (const auto* opt : {lines, max_tokens, windows, block, dump})
        if (opt->count() > 0) throw usage_error(opt->get_name() + " needs --ppl");
    } else {
      for (const auto* opt : {prompt, steps})
        if (opt->count() > 0)
          throw usage_error(opt->get_name() + " is for generation; it does not go with --ppl");
    }
    if (!o.lines.empty()) parse_lines(o.lines, o.first_line, o.last_line);
    if (o.aqua()) {
      if (k->count() == 0 && energy->count() == 0)
        throw usage_error("AQUA attention (--projection or --identity) needs --k K or --energy TAU");
    } else {
      for (const auto* opt : {k, energy, select, r, tile, h2o_budget})
        if (opt->count() > 0) throw usage_error(opt->get_name() + " needs --projection FILE or --identity");
    }
    if (h2o_budget->count() == 0) {
      if (h2o_recent->count() > 0) throw usage_error("--h2o-recent needs --h2o-budget");
    } else {
      if (o.h2o_recent < 0) o.h2o_recent = o.h2o_budget / 2;
      if (o.h2o_recent > o.h2o_budget)
        throw usage_error("--h2o-recent " + std::to_string(o.h2o_recent) + " exceeds --h2o-budget " +
                          std::to_string(o.h2o_budget));
      if (o.block > 1)
        throw usage_error("--h2o-budget evicts after every decode step: it needs --block 1 (or none), got " +
                          std::to_string(o.block));
      if (o.generate && prompt->count() > 0)
        throw usage_error("--h2o-budget runs token by token: it does not go with --prompt (a prefill)");
    }
    if (tile->count() > 0 && o.select != "tile") throw usage_error("--tile needs --select tile");
    if (o.r > 0 && o.tile > 0 && o.r % o.tile != 0)
      throw usage_error("--r " + std::to_string(o.r) + " must be a multiple of --tile " +
                        std::to_string(o.tile));
  });
}

/// The checks that depend on the model, from its header alone (throws aqua_cli::usage_error).
inline void check_against_model(const options& o, const llama2c::config& c) {
  const auto over = [](const std::string& flag, double value, const std::string& limit) {
    return aqua_cli::usage_error(flag + " " + aqua_cli::internal::real_text(value) + " exceeds the model's " +
                                 limit);
  };
  const int d = c.head_dim();
  const std::string context = "context of " + std::to_string(c.seq_len) + " tokens";
  const std::string head_dim = "head dimension " + std::to_string(d);
  if (o.steps_given && o.steps > c.seq_len) throw over("--steps", o.steps, context);
  if (o.max_tokens_given && o.max_tokens > c.seq_len) throw over("--max-tokens", o.max_tokens, context);
  if (o.block > c.seq_len) throw over("--block", o.block, context);
  if (o.h2o_budget > c.seq_len) throw over("--h2o-budget", o.h2o_budget, context);
  if (o.r > d) throw over("--r", o.r, head_dim);
  if (o.tile > d) throw over("--tile", o.tile, head_dim);
  if (o.k > d) throw over("--k", o.k, head_dim);
  if (o.r > 0 && o.k > o.r)
    throw aqua_cli::usage_error("--k " + std::to_string(o.k) + " is larger than --r " + std::to_string(o.r));
}

/// The model, tokenizer and text a llama2.c tool reads: the flags' paths, else stories260K and the
/// text in the data directory (--data-dir, $AQUA_DATA_DIR, ../shared/data from the current
/// directory or from `repo_root`). Each path is resolved when the tool asks for it, so that what
/// the tool checks first (the model's header, the text) fails before a later file's lookup does.
class input_files {
public:
  /// A --data-dir or $AQUA_DATA_DIR that is no directory is an error. The messages do not name the
  /// tool: aqua_cli::run prefixes every error with it.
  input_files(const std::string& data_dir_flag, const std::string& repo_root)
      : data_dir_(llama2c::resolve_data_dir(data_dir_flag, repo_root)) {}

  std::string model(const std::string& flag) const { return in_stories260k(flag, "stories260K.bin"); }
  std::string tokenizer(const std::string& flag) const { return in_stories260k(flag, "tok512.bin"); }

  /// --ppl: the parser let a relative path that is missing here through for the data directory, so
  /// only now can a missing or unreadable text be the usage error it is.
  std::string text(const std::string& flag) const {
    const std::string path = llama2c::in_data_dir(flag, data_dir_);
    std::string checked = path;  // a CLI11 validator may rewrite its argument
    const std::string problem = aqua_cli::readable_file()(checked);
    if (!problem.empty()) throw aqua_cli::usage_error("--ppl: " + problem);
    return path;
  }

private:
  std::string in_stories260k(const std::string& flag, const char* file) const {
    if (!flag.empty()) return flag;
    AQUA_CHECK(!data_dir_.empty(),
               "no --model/--tokenizer given and no data directory found (use --data-dir or AQUA_DATA_DIR)");
    return data_dir_ + "/stories260K/" + file;
  }

  std::string data_dir_;  // empty when none was found
};

}  // namespace aqua_llama_cli
