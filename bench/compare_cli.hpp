// aqua_compare's command line (CLI11): its configuration and options, shared by the tool
// (bench/aqua_compare.cpp) and the argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp).
// Every value and combination is checked here, before the bandwidth probe runs.
#pragma once

#include <aqua/config.hpp>
#include <aqua/float16.hpp>

#include "aqua_tools/cli.hpp"

#include <cstddef>
#include <string>
#include <vector>

namespace aqua_compare_cli {

using aqua::index_t;

struct config {
  std::string mode = "decode";
  std::vector<index_t> n = {32768};
  index_t m = 0;  // prefill queries; 0 means M = N
  index_t d = 128, hq = 32, hkv = 8, tile = 32;
  std::vector<index_t> k = {32, 64, 96};
  int threads = 1, reps = 10;
  std::vector<std::string> select = {"per-head", "group", "tile"};
  double spectrum = 32;
  bool json = false;
  bool cpu_clock = false;     // --clock cpu: process CPU time / threads (robust on a shared machine)
  bool random_basis = false;  // --basis random: queries and keys rotated by a random basis per KV head
  index_t budget = 0;         // --budget: H2O token budget of the AQUA side (decode); 0: no eviction
  // --shards (decode): shard counts P; each configuration times P shards and their merge against
  // one call over the whole cache. Empty: the usual dense-vs-AQUA table.
  std::vector<index_t> shards;
  // --batch (decode): S sequences of N tokens each, in their own caches, decoded by one batched
  // call (dense_decode_batch against aqua_decode_batch). 1: one sequence, the single-sequence calls.
  index_t batch = 1;
  // --window, --softcap (decode): model features both sides apply (attention_options)
  index_t window = 0;
  double softcap = 0;
  bool sweep = false;  // --sweep-break-even
  index_t sweep_min = 64, sweep_max = 32768;
  // --isa: which kernels run, auto (the widest the CPU has: AVX-512, AVX2, portable), avx2, portable
  std::string isa = "auto";
  // --prefetch: where the decode kernels prefetch (aqua::decode_prefetch): auto, l1 or l2
  std::string prefetch = "auto";
  std::size_t probe_bytes = std::size_t(1) << 30;  // --probe-bytes: buffer of the bandwidth probe
  // --kv-type (both), --key-type, --value-type: how the caches store keys and values
  aqua::storage_type key_type = aqua::storage_type::f32, value_type = aqua::storage_type::f32;
  std::string layout = "interleaved";  // --layout (views mode): the engine buffers' layout
  bool engine_huge_pages = true;       // --engine-pages (views mode): huge or 4k
  std::string
      baseline;  // --baseline: projected | plain | reference (sweep only); default plain (sweep), projected
};

constexpr index_t max_tokens = index_t(1) << 24;  // --n, --m, --budget, --sweep-n
constexpr index_t max_dim = 4096;                 // --d, --k, --tile
constexpr index_t max_heads = 1024;               // --hq, --hkv
constexpr index_t max_batch = 4096;               // --batch

namespace internal {

inline aqua::storage_type storage_of(const std::string& name) {
  return name == "bf16"  ? aqua::storage_type::bf16
         : name == "f16" ? aqua::storage_type::f16
                         : aqua::storage_type::f32;
}

/// "64K", "16M", "1G", "65536": bytes in [64 KiB, 16 GiB].
inline bool parse_bytes(const std::string& s, std::size_t& out) {
  if (s.empty()) return false;
  const char unit = s.back();
  const std::size_t scale = unit == 'K' ? 1u << 10 : unit == 'M' ? 1u << 20 : unit == 'G' ? 1u << 30 : 1;
  const std::string digits = scale == 1 ? s : s.substr(0, s.size() - 1);
  std::size_t v = 0;
  if (!aqua_cli::internal::parse_integer(digits, v) || v > (std::size_t(1) << 34) / scale) return false;
  out = v * scale;
  return out >= 65536 && out <= (std::size_t(1) << 34);
}

/// "MIN:MAX" with 16 <= MIN <= MAX <= max_tokens.
inline bool parse_sweep_n(const std::string& s, index_t& lo, index_t& hi) {
  const auto colon = s.find(':');
  if (colon == std::string::npos) return false;
  return aqua_cli::internal::parse_integer(s.substr(0, colon), lo) &&
         aqua_cli::internal::parse_integer(s.substr(colon + 1), hi) && lo >= 16 && lo <= hi &&
         hi <= max_tokens;
}

}  // namespace internal

/// The options of aqua_compare into `app`, parsed into `c`; the final callback checks the
/// combinations and fills the defaults that depend on --sweep-break-even.
inline void add_options(CLI::App& app, config& c) {
  aqua_cli::configure(app);
  app.description(
      "aqua_compare: dense vs AQUA attention side by side on identical synthetic data (decode and prefill "
      "tables, or --sweep-break-even). Measures the memory-read bandwidth first.");
  aqua_cli::choice(app, "--mode", c.mode, {"decode", "prefill", "views"},
                   "what to compare (views: dense decode over engine buffers against dense over the cache)");
  aqua_cli::integer_list<index_t>(app, "--n", c.n, 1, max_tokens, "cache tokens N, one run per value");
  aqua_cli::integer<index_t>(app, "--m", c.m, 0, max_tokens, "prefill queries M (0: M = N)");
  aqua_cli::integer<index_t>(app, "--d", c.d, 1, max_dim, "head dimension d");
  auto* k = aqua_cli::integer_list<index_t>(app, "--k", c.k, 1, max_dim,
                                            "selected dims k, each in [1, d] (sweep default: 96,32)");
  aqua_cli::integer<index_t>(app, "--hq", c.hq, 1, max_heads, "query heads (a multiple of --hkv)");
  aqua_cli::integer<index_t>(app, "--hkv", c.hkv, 1, max_heads, "KV heads");
  aqua_cli::integer<index_t>(app, "--tile", c.tile, 1, max_dim, "projected dims per key tile");
  aqua_cli::threads(app, c.threads);
  auto* select = aqua_cli::choice_list(app, "--select", c.select, {"per-head", "group", "tile"},
                                       "selection modes (sweep default: tile)");
  aqua_cli::real(app, "--spectrum", c.spectrum, 0, 1e9, "TAU of the key spectrum exp(-i / TAU)", true);
  auto* reps =
      aqua_cli::integer<int>(app, "--reps", c.reps, 1, 100000, "interleaved pairs (sweep default: 15)");
  app.add_flag("--json", c.json, "one JSON line per configuration");
  app.add_option_function<std::string>(
         "--clock", [&c](const std::string& v) { c.cpu_clock = v == "cpu"; },
         "wall, or cpu: process CPU time / threads (leaves out descheduled time) [default: wall]")
      ->check(CLI::IsMember({"wall", "cpu"}));
  app.add_option_function<std::string>(
         "--basis", [&c](const std::string& v) { c.random_basis = v == "random"; },
         "identity (keys already projected) or random (a random orthogonal basis per KV head) "
         "[default: identity]")
      ->check(CLI::IsMember({"identity", "random"}));
  auto* baseline = app.add_option("--baseline", c.baseline,
                                  "dense side: projected (decode default), plain (sweep default), reference "
                                  "(sweep only)")
                       ->check(CLI::IsMember({"projected", "plain", "reference"}));
  auto* budget = aqua_cli::integer<index_t>(app, "--budget", c.budget, 0, max_tokens,
                                            "H2O token budget of the AQUA side (0: none)");
  app.add_option_function<std::string>(
         "--isa", [&c](const std::string& v) { c.isa = v; },
         "kernels: auto (the widest the CPU has), avx512, avx2 or portable; a cap, as aqua::set_max_isa "
         "[default: auto]")
      ->check(CLI::IsMember({"auto", "avx512", "avx2", "portable"}));
  app.add_option_function<std::string>(
         "--prefetch", [&c](const std::string& v) { c.prefetch = v; },
         "decode prefetch: auto (l2 on AMD, l1 elsewhere), l1 or l2, as aqua::set_decode_prefetch "
         "[default: auto]")
      ->check(CLI::IsMember({"auto", "l1", "l2"}));
  app.add_option_function<std::string>(
         "--probe-bytes", [&c](const std::string& v) { internal::parse_bytes(v, c.probe_bytes); },
         "buffer of the bandwidth probe, 64K to 16G (K, M, G suffixes) [default: 1G]")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            std::size_t b = 0;
            return internal::parse_bytes(v, b)
                       ? ""
                       : "'" + v + "' is not a size in 64K..16G (a number with an optional K, M or G suffix)";
          },
          "BYTES", "bytes"));
  auto* kv_type =
      app.add_option_function<std::string>(
             "--kv-type", [&c](const std::string& v) { c.key_type = c.value_type = internal::storage_of(v); },
             "storage of keys and values: f32, bf16 or f16 [default: f32]")
          ->check(CLI::IsMember({"f32", "bf16", "f16"}));
  app.add_option_function<std::string>(
         "--key-type", [&c](const std::string& v) { c.key_type = internal::storage_of(v); },
         "storage of the keys alone: f32, bf16 or f16")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->excludes(kv_type);
  app.add_option_function<std::string>(
         "--value-type", [&c](const std::string& v) { c.value_type = internal::storage_of(v); },
         "storage of the values alone: f32, bf16 or f16")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->excludes(kv_type);
  aqua_cli::choice(app, "--layout", c.layout, {"interleaved", "head-major"},
                   "views mode: engine buffers [N][Hkv][d] (interleaved, llama.cpp) or [Hkv][N][d]");
  app.add_option_function<std::string>(
         "--engine-pages", [&c](const std::string& v) { c.engine_huge_pages = v == "huge"; },
         "views mode: the engine buffers in transparent huge pages like the cache (huge) or in 4 KB pages "
         "(4k) [default: huge]")
      ->check(CLI::IsMember({"huge", "4k"}));
  auto* sweep =
      app.add_flag("--sweep-break-even", c.sweep, "measure the break-even N for each k and selection");
  app.add_option_function<std::string>(
         "--sweep-n", [&c](const std::string& v) { internal::parse_sweep_n(v, c.sweep_min, c.sweep_max); },
         "MIN:MAX of the sweep, doubling [default: 64:32768]")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            index_t lo = 0, hi = 0;
            return internal::parse_sweep_n(v, lo, hi)
                       ? ""
                       : "'" + v + "' is not MIN:MAX with 16 <= MIN <= MAX <= " + std::to_string(max_tokens);
          },
          "MIN:MAX", "sweep_n"));
  auto* shards = aqua_cli::integer_list<index_t>(
      app, "--shards", c.shards, 1, max_tokens,
      "decode: P contiguous shards of the cache attended one after another and merged, against one call "
      "over the whole cache, dense and AQUA (one run per value, P <= N)");
  auto* batch = aqua_cli::integer<index_t>(
      app, "--batch", c.batch, 1, max_batch,
      "decode: S sequences of N tokens, each in its own cache, in one batched call (dense_decode_batch "
      "against aqua_decode_batch)");
  aqua_cli::integer<index_t>(app, "--window", c.window, 0, max_tokens,
                             "decode: a sliding window of the last W tokens on both sides (0: none)");
  aqua_cli::real(app, "--softcap", c.softcap, 0, 1e30,
                 "decode: logit soft-capping cap * tanh(s / cap) on both sides (0: off)");
  budget->excludes(sweep);
  shards->excludes(sweep);
  shards->excludes(budget);
  batch->excludes(sweep);
  batch->excludes(budget);
  batch->excludes(shards);
  app.callback([&c, k, select, reps, baseline] {
    const bool baseline_given = baseline->count() > 0;
    if (c.sweep) {
      if (k->count() == 0) c.k = {96, 32};
      if (select->count() == 0) c.select = {"tile"};
      if (reps->count() == 0) c.reps = 15;
      if (!baseline_given) c.baseline = "plain";
    } else {
      if (!baseline_given) c.baseline = "projected";
      if (c.baseline == "reference")
        throw aqua_cli::usage_error("--baseline reference is a --sweep-break-even option");
      if (baseline_given && c.mode != "decode")
        throw aqua_cli::usage_error("--baseline takes effect in decode mode only");
    }
    if (!c.shards.empty()) {
      if (c.mode != "decode") throw aqua_cli::usage_error("--shards takes effect in decode mode only");
      // The sharded and the whole side read the same caches, the dense side included.
      if (c.baseline != "projected")
        throw aqua_cli::usage_error("--shards compares on AQUA's own caches: --baseline " + c.baseline +
                                    " does not apply");
      for (index_t p : c.shards)
        for (index_t n : c.n)
          if (p > n)
            throw aqua_cli::usage_error("--shards " + std::to_string(p) + " is larger than --n " +
                                        std::to_string(n) + " (every shard holds at least one token)");
    }
    if ((c.window > 0 || c.softcap > 0) &&
        (c.mode != "decode" || c.sweep || !c.shards.empty() || c.budget > 0))
      throw aqua_cli::usage_error(
          "--window and --softcap take effect in decode mode only, without --budget, --shards and "
          "--sweep-break-even");
    if (c.batch > 1) {
      if (c.mode != "decode") throw aqua_cli::usage_error("--batch takes effect in decode mode only");
      // Both sides read the same caches, as in --shards.
      if (c.baseline != "projected")
        throw aqua_cli::usage_error("--batch compares on AQUA's own caches: --baseline " + c.baseline +
                                    " does not apply");
    }
    if (c.hq % c.hkv != 0)
      throw aqua_cli::usage_error("--hq " + std::to_string(c.hq) + " must be a multiple of --hkv " +
                                  std::to_string(c.hkv));
    for (index_t v : c.k)
      if (v > c.d)
        throw aqua_cli::usage_error("--k " + std::to_string(v) + " is larger than --d " +
                                    std::to_string(c.d));
    // Memory: keys and values (float) of the largest N in up to three caches (AQUA, plain, budget).
    index_t n_max = c.sweep ? c.sweep_max : 0;
    for (index_t v : c.n) n_max = std::max(n_max, v);
    // Prefill adds the queries and both outputs [Hq, M, d]; the probe its buffer.
    const double tokens = double(n_max) * double(c.d);
    aqua_cli::check_memory(
        24.0 * double(c.hkv) * tokens * double(c.batch) +
            (c.mode == "prefill" ? 12.0 * double(c.hq) * tokens : 0.0) + double(c.probe_bytes),
        "--n " + std::to_string(n_max) + " with --hkv " + std::to_string(c.hkv) + ", --d " +
            std::to_string(c.d) + (c.batch > 1 ? ", --batch " + std::to_string(c.batch) : std::string()));
  });
}

}  // namespace aqua_compare_cli
