// aqua_cost's command line (CLI11): its options, shared by the tool (cost.cpp) and the
// argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp). --plot is checked for writability before
// the table is printed.
#pragma once

#include <aqua/cost_model.hpp>

#include "aqua_tools/cli.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace aqua_cost_cli {

struct options {
  aqua::cost_config config;
  bool d_given = false, k_given = false;
  std::optional<double> n;
  bool json = false;
  std::string plot;
};

constexpr std::int64_t max_dim = 1 << 16;       // --d, --k, --r, --tile
constexpr std::int64_t max_heads = 1 << 16;     // --hq, --hkv
constexpr std::int64_t max_tokens = 1LL << 40;  // --budget

/// The options of aqua_cost into `app`, parsed into `o`.
inline void add_options(CLI::App& app, options& o) {
  aqua_cli::configure(app);
  app.description(
      "aqua_cost: modelled FLOPs, bytes and break-even context length of AQUA against dense attention "
      "(include/aqua/cost_model.hpp). Without --k or --n: the break-even table for d in {64,128,256} (or "
      "--d) and k/d in {1/8..7/8}. With --k or --n: one configuration (default N = 4096), its costs, ratios "
      "and break-even.");
  auto& c = o.config;
  auto* d = aqua_cli::integer<std::int64_t>(app, "--d", c.d, 1, max_dim, "head dimension");
  auto* k = aqua_cli::integer<std::int64_t>(app, "--k", c.k, 1, max_dim,
                                            "kept projected dims per query [default: r]");
  k->default_str("");
  auto* r = aqua_cli::integer<std::int64_t>(app, "--r", c.r, 1, max_dim,
                                            "stored projected key dims, truncation [default: d]");
  r->default_str("");
  app.add_option_function<double>(
         "--n", [&o](double v) { o.n = v; }, "context length for the ratios [default: 4096]")
      ->check(aqua_cli::real_in(1, 1e15));
  aqua_cli::integer<std::int64_t>(app, "--hq", c.hq, 1, max_heads, "query heads (a multiple of --hkv)");
  aqua_cli::integer<std::int64_t>(app, "--hkv", c.hkv, 1, max_heads, "KV heads");
  aqua_cli::integer<std::int64_t>(app, "--tile", c.tile, 1, max_dim,
                                  "projected dims per key tile; reads are whole tiles");
  aqua_cli::real(app, "--elem-bytes", c.elem_bytes, 0, 64, "bytes per cached key/value element (2 for fp16)",
                 true);
  aqua_cli::real(app, "--proj-bytes", c.projection_elem_bytes, 0, 64,
                 "bytes per element of the projection P (0: P stays in cache)");
  auto* amortised = app.add_flag_callback(
      "--amortised", [&c] { c.key_projection = aqua::key_projection_cost::amortised; },
      "key projection not charged: done once per key at cache insertion (default)");
  auto* per_query = app.add_flag_callback(
      "--per-query", [&c] { c.key_projection = aqua::key_projection_cost::per_query; },
      "key projection charged d^2 per query head (the paper's 2 d^2/(d-k))");
  auto* per_new_key = app.add_flag_callback(
      "--per-new-key", [&c] { c.key_projection = aqua::key_projection_cost::per_new_key; },
      "key projection charged d^2 per KV head per step (what decode pays)");
  amortised->excludes(per_query)->excludes(per_new_key);
  per_query->excludes(per_new_key);
  app.add_flag_callback(
      "--group-shared", [&c] { c.sharing = aqua::selection_sharing::group_shared; },
      "one selection per GQA group (default: per head, reading the union)");
  aqua_cli::real(app, "--union-spread", c.union_spread, 0, 1,
                 "per-head union = k + S (min(r, g k) - k), S in [0, 1] (1: the bound)");
  app.add_option_function<std::string>(
         "--selection-flops",
         [&c](const std::string& v) {
           c.selection_flops_per_dim =
               v == "topk" ? aqua::selection_flops_topk : std::strtod(v.c_str(), nullptr);
         },
         "selection FLOPs per dim per query head, or topk [default: 0]")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            if (v == "topk") return "";
            return aqua_cli::real_in(0, 1e6)(v);
          },
          "S|topk", "selection_flops"));
  aqua_cli::integer<std::int64_t>(app, "--budget", c.token_budget, 0, max_tokens,
                                  "H2O token budget: at most B tokens kept and read (0: none)");
  app.add_flag_callback(
      "--no-values", [&c] { c.include_values = false; },
      "leave the value aggregation (same for both) out of the FLOPs");
  app.add_flag("--json", o.json, "one JSON object per line instead of text");
  app.add_option("--plot", o.plot, "also write an SVG plot of modelled decode speedup against N")
      ->check(aqua_cli::writable_file());
  app.callback([&o, d, k, r] {
    auto& cfg = o.config;
    o.d_given = d->count() > 0;
    o.k_given = k->count() > 0;
    if (r->count() == 0) cfg.r = 0;
    if (cfg.r > cfg.d)
      throw aqua_cli::usage_error("--r " + std::to_string(cfg.r) + " is larger than --d " +
                                  std::to_string(cfg.d));
    const std::int64_t stored = cfg.r == 0 ? cfg.d : cfg.r;
    if (!o.k_given) cfg.k = stored;  // k defaults to every stored dim (was d even with --r < d)
    if (o.k_given && cfg.k > stored)
      throw aqua_cli::usage_error("--k " + std::to_string(cfg.k) + " is larger than " +
                                  (cfg.r == 0 ? "--d " : "--r ") + std::to_string(stored));
    if (cfg.hq % cfg.hkv != 0)
      throw aqua_cli::usage_error("--hq " + std::to_string(cfg.hq) + " must be a multiple of --hkv " +
                                  std::to_string(cfg.hkv));
  });
}

}  // namespace aqua_cost_cli
