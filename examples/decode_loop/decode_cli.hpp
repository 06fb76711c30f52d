// aqua_decode's command line (CLI11): its configuration and options, shared by the tool
// (decode_loop.cpp) and the argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp). Every value
// and combination is checked here, before the synthetic layer is built.
#pragma once

#include <aqua/config.hpp>

#include "aqua_tools/cli.hpp"

#include <algorithm>
#include <string>

namespace aqua_decode_cli {

using aqua::index_t;

struct config {
  index_t n = 8192, steps = 128, interval = 16, hq = 32, hkv = 8, d = 128, k = 64, rank = 0, tile = 32;
  index_t budget = 0, recent = -1, slack = -1, warmup = 32;
  double budget_fraction = 0, spectrum = 32, amplitude = 2.7, query_noise = 0.5;
  std::string select = "group";
  int threads = 1;
  unsigned seed = 1;
  bool cpu_clock = false, json = false, sweep_rank = false;
};

constexpr index_t max_tokens = index_t(1) << 24;  // --n, --steps, --budget, ...
constexpr index_t max_dim = 4096;                 // --d, --k, --rank, --tile
constexpr index_t max_heads = 1024;               // --hq, --hkv

inline std::string str(index_t v) {
  return std::to_string(v);
}

/// The options of aqua_decode into `app`, parsed into `c`; the final callback checks the
/// combinations and derives budget, recent and slack.
inline void add_options(CLI::App& app, config& c) {
  aqua_cli::configure(app);
  app.description(
      "aqua_decode: a decode loop with AQUA selection and H2O eviction against exact full attention, on a "
      "synthetic layer (or --sweep-rank: static key truncation).");
  aqua_cli::integer<index_t>(app, "--n", c.n, 1, max_tokens, "prompt tokens N");
  aqua_cli::integer<index_t>(app, "--steps", c.steps, 0, max_tokens, "decode steps after the prompt");
  aqua_cli::integer<index_t>(app, "--interval", c.interval, 1, max_tokens, "steps per printed interval");
  aqua_cli::integer<index_t>(app, "--hq", c.hq, 1, max_heads, "query heads (a multiple of --hkv)");
  aqua_cli::integer<index_t>(app, "--hkv", c.hkv, 1, max_heads, "KV heads");
  aqua_cli::integer<index_t>(app, "--d", c.d, 1, max_dim, "head dimension d");
  aqua_cli::integer<index_t>(app, "--k", c.k, 1, max_dim, "selected dims k, in [1, r] (r: --rank, or d)");
  auto* rank = aqua_cli::integer<index_t>(app, "--rank", c.rank, 0, max_dim,
                                          "static key truncation r (0: r = d); a multiple of --tile, or d");
  aqua_cli::integer<index_t>(app, "--tile", c.tile, 1, max_dim, "projected dims per key tile");
  auto* budget = aqua_cli::integer<index_t>(app, "--budget", c.budget, 0, max_tokens,
                                            "H2O token budget per KV head (0: no eviction)");
  auto* fraction = aqua_cli::real(app, "--budget-fraction", c.budget_fraction, 0, 1,
                                  "H2O budget as a fraction of N, in (0, 1]", true, false);
  budget->excludes(fraction);
  auto* recent = aqua_cli::integer<index_t>(app, "--recent", c.recent, 0, max_tokens,
                                            "recent tokens kept, at most the budget [default: budget / 2]");
  auto* slack =
      aqua_cli::integer<index_t>(app, "--slack", c.slack, 0, max_tokens,
                                 "tokens over budget before an eviction [default: max(16, budget / 64)]");
  fraction->default_str("");
  recent->default_str("");
  slack->default_str("");
  aqua_cli::integer<index_t>(app, "--warmup", c.warmup, 0, max_tokens,
                             "prompt tokens run as decode steps before the first eviction, in [0, N)");
  aqua_cli::choice(app, "--select", c.select, {"group", "per-head", "tile"}, "selection mode");
  aqua_cli::threads(app, c.threads);
  aqua_cli::real(app, "--spectrum", c.spectrum, 0, 1e9, "TAU of the spectrum A exp(-i / TAU)", true);
  aqua_cli::real(app, "--amplitude", c.amplitude, 0, 1000, "A of the spectrum", true);
  aqua_cli::real(app, "--query-noise", c.query_noise, 0, 1000,
                 "fresh noise per step around each head's mean");
  aqua_cli::integer<unsigned>(app, "--seed", c.seed, 0, 4294967295u, "random seed");
  app.add_option_function<std::string>(
         "--clock", [&c](const std::string& v) { c.cpu_clock = v == "cpu"; },
         "wall, or cpu: process CPU time / threads [default: wall]")
      ->check(CLI::IsMember({"wall", "cpu"}));
  app.add_flag("--json", c.json, "one JSON line per interval");
  auto* sweep =
      app.add_flag("--sweep-rank", c.sweep_rank, "report static key truncation for r = d/4, d/2, 3d/4, d");
  sweep->excludes(budget)->excludes(fraction)->excludes(rank);
  app.callback([&c, recent, slack] {
    if (c.hq % c.hkv != 0)
      throw aqua_cli::usage_error("--hq " + str(c.hq) + " must be a multiple of --hkv " + str(c.hkv));
    if (c.warmup >= c.n)
      throw aqua_cli::usage_error("--warmup " + str(c.warmup) + " must lie in [0, N) (N = --n " + str(c.n) +
                                  ")");
    if (c.rank > c.d)
      throw aqua_cli::usage_error("--rank " + str(c.rank) + " is larger than --d " + str(c.d));
    if (c.rank != 0 && c.rank != c.d && c.rank % c.tile != 0)
      throw aqua_cli::usage_error("--rank " + str(c.rank) + " must be a multiple of --tile " + str(c.tile) +
                                  ", or d");
    const index_t r = c.rank == 0 ? c.d : c.rank;
    if (c.k > r)
      throw aqua_cli::usage_error("--k " + str(c.k) + " is larger than " +
                                  (c.rank == 0 ? "--d " + str(c.d) : "--rank " + str(c.rank)));
    if (c.sweep_rank && c.d < 4) throw aqua_cli::usage_error("--sweep-rank needs --d of at least 4");
    if (c.budget_fraction > 0) c.budget = std::max<index_t>(1, index_t(c.budget_fraction * double(c.n)));
    if (c.budget == 0 && (recent->count() > 0 || slack->count() > 0))
      throw aqua_cli::usage_error("--recent and --slack need --budget or --budget-fraction");
    if (recent->count() > 0 && c.recent > c.budget)
      throw aqua_cli::usage_error("--recent " + str(c.recent) + " is larger than the budget " +
                                  str(c.budget));
    if (recent->count() == 0) c.recent = c.budget / 2;  // H2O's split: half heavy hitters, half recent
    if (slack->count() == 0) c.slack = c.budget > 0 ? std::max<index_t>(16, c.budget / 64) : 0;
    // Memory: the AQUA cache, the full dense cache and the layer's raw keys and values (float).
    const double tokens = double(c.n) + double(c.steps);
    aqua_cli::check_memory(
        24.0 * double(c.hkv) * tokens * double(c.d),
        "--n " + str(c.n) + " + --steps " + str(c.steps) + " with --hkv " + str(c.hkv) + ", --d " + str(c.d));
  });
}

}  // namespace aqua_decode_cli
