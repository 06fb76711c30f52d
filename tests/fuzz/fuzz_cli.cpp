// The command-line tools' parsers (CLI11 setup, validators and the final cross-option checks of
// every tool, exactly as the tools run them): any argument vector gives a parsed configuration or
// a CLI::ParseError (usage error, or --help), never a crash or another exception. The first byte
// picks the tool, the rest is split at NUL bytes into arguments. Nothing runs after parsing; the
// validators only stat paths (no file is created).
#include "calibrate/calibrate_cli.hpp"
#include "calibrate/make_dump_cli.hpp"
#include "compare_cli.hpp"
#include "cost/cost_cli.hpp"
#include "decode_loop/decode_cli.hpp"
#include "llama2c/llama_cli.hpp"
#include "llama2c_policies/policies_cli.hpp"
#include "perf_report_cli.hpp"
#include "quickstart/quickstart_cli.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}
bool threads_ok(int t) {
  return t >= 1 && t <= aqua_cli::max_threads();
}

// What each tool relies on once parsing succeeded.
void check(const aqua_decode_cli::config& c) {
  require(c.n >= 1 && c.d >= 1 && c.hkv >= 1 && c.hq % c.hkv == 0 && threads_ok(c.threads));
  require(c.k >= 1 && c.k <= (c.rank == 0 ? c.d : c.rank) && c.warmup >= 0 && c.warmup < c.n);
  require(c.rank == 0 || c.rank == c.d || c.rank % c.tile == 0);
  require(c.budget >= 0 && c.recent >= 0 && c.recent <= std::max<aqua::index_t>(c.budget, 0) && c.slack >= 0);
  require(c.budget_fraction >= 0 && c.budget_fraction <= 1 && std::isfinite(c.spectrum) && c.spectrum > 0);
}
void check(const aqua_compare_cli::config& c) {
  require(!c.n.empty() && !c.k.empty() && !c.select.empty() && c.hq % c.hkv == 0 && threads_ok(c.threads));
  for (auto n : c.n) require(n >= 1);
  for (auto k : c.k) require(k >= 1 && k <= c.d);
  require(c.reps >= 1 && c.budget >= 0 && !(c.sweep && c.budget > 0) && c.sweep_min >= 16 &&
          c.sweep_min <= c.sweep_max && c.probe_bytes >= 65536 && std::isfinite(c.spectrum) &&
          c.spectrum > 0);
  require(c.baseline == "projected" || c.baseline == "plain" || (c.sweep && c.baseline == "reference"));
  if (!c.shards.empty())
    require(c.mode == "decode" && !c.sweep && c.budget == 0 && c.baseline == "projected");
  for (auto p : c.shards)
    for (auto n : c.n) require(p >= 1 && p <= n);
}
void check(const aqua_llama_cli::options& o) {
  require(threads_ok(o.threads) && o.max_tokens >= 2 && o.steps >= 0 && o.windows >= 0 && o.block >= 0);
  require(!(o.identity && !o.projection.empty()));
  if (o.aqua()) require((o.k >= 1) != (o.energy > 0) && o.energy <= 1);
  if (!o.aqua()) require(o.k == 0 && o.energy == 0 && o.r == 0 && o.tile == 0);
  require(o.lines.empty() || (o.first_line >= 1 && o.first_line <= o.last_line));
}
void check(const aqua_llama_policies_cli::options& o) {
  require(!o.ppl.empty() && o.max_tokens >= 2 && o.windows >= 0 && o.block >= 0);
  require(o.lines.empty() || (o.first_line >= 1 && o.first_line <= o.last_line));
  require(o.policy.empty() != o.fit_policy.empty());
  if (o.fit_policy.empty()) {
    require(o.budget == 0 && o.basis == "queries" && o.weight == "none" && o.alloc == "uniform" &&
            o.rule == "fixed");
  } else {
    require(std::isfinite(o.budget) && o.budget >= 1 && o.budget <= aqua_llama_cli::max_dim);
    require(o.alloc != "lagrange" || o.rule == "energy-head");
    require(!(o.rule == "energy" && o.alloc == "dp"));
    // fit_policy() takes the budget as every head's count here: it must be whole.
    require(!(o.rule == "fixed" && o.alloc == "uniform") || o.budget == std::floor(o.budget));
  }
}
void check(const aqua_calibrate_cli::options& o) {
  require(threads_ok(o.threads) && o.max_queries >= 0 && o.max_keys >= 0);
  require(o.projection.empty() ? (!o.dumps.empty() && !o.out.empty()) : (!o.eval.empty() && o.dumps.empty()));
}
void check(const aqua_make_dump_cli::options& o) {
  require(!o.dir.empty() && o.hq % o.hkv == 0 && o.rank <= o.d && o.layers >= 1 && o.rows >= 1);
}
void check(const aqua_cost_cli::options& o) {
  const auto& c = o.config;
  require(c.d >= 1 && c.k >= 1 && c.k <= (c.r == 0 ? c.d : c.r) && c.r <= c.d && c.hq % c.hkv == 0);
  require(!o.n || (std::isfinite(*o.n) && *o.n >= 1));
  require(c.union_spread >= 0 && c.union_spread <= 1 && c.elem_bytes > 0 && c.projection_elem_bytes >= 0);
}
void check(const aqua_perf_report_cli::options& o) {
  require(!o.markdown.empty() || !o.plot.empty());
  require(o.plot.empty() || !o.sweep.empty());
}
void check(const aqua_quickstart_cli::options& o) {
  require(o.hq >= 1 && o.hkv >= 1 && o.hq % o.hkv == 0 && o.d >= 1 && o.n >= 1 && o.k >= 1 && o.k <= o.d &&
          threads_ok(o.threads));
}

template <class Options, class Add>
void parse_with(const char* name, Add add, const std::vector<std::string>& args) {
  // One App per tool, built once (building it costs more than parsing): CLI::App::parse clears
  // the previous results itself, and the options return to their defaults here, in place (the
  // App holds references to them). Each run therefore sees what a fresh tool process sees.
  static Options o;
  static CLI::App* app = [&] {
    auto* a = new CLI::App{"", name};
    add(*a, o);
    return a;
  }();
  o = Options{};
  std::vector<const char*> argv{name};
  for (const auto& a : args) argv.push_back(a.c_str());
  try {
    app->parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::ParseError&) {
    return;  // a usage error (exit 2) or --help (exit 0)
  }
  check(o);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > 4096) return 0;
  std::vector<std::string> args(1);
  for (std::size_t i = 1; i < size && args.size() <= 64; ++i) {
    if (data[i] == 0)
      args.emplace_back();
    else
      args.back().push_back(static_cast<char>(data[i]));
  }
  if (size == 1) args.clear();
  // A tool added later takes the next value, so every seed (first byte: the tool's index in
  // make_cli_corpus.py) keeps its tool.
  switch (data[0] % 9) {
    case 0:
      parse_with<aqua_decode_cli::config>("aqua_decode", aqua_decode_cli::add_options, args);
      break;
    case 1:
      parse_with<aqua_compare_cli::config>("aqua_compare", aqua_compare_cli::add_options, args);
      break;
    case 2:
      parse_with<aqua_llama_cli::options>("aqua_llama", aqua_llama_cli::add_options, args);
      break;
    case 3:
      parse_with<aqua_calibrate_cli::options>("aqua_calibrate", aqua_calibrate_cli::add_options, args);
      break;
    case 4:
      parse_with<aqua_make_dump_cli::options>("aqua_make_synthetic_dump", aqua_make_dump_cli::add_options,
                                              args);
      break;
    case 5:
      parse_with<aqua_cost_cli::options>("aqua_cost", aqua_cost_cli::add_options, args);
      break;
    case 6:
      parse_with<aqua_perf_report_cli::options>("aqua_perf_report", aqua_perf_report_cli::add_options, args);
      break;
    case 7:
      parse_with<aqua_quickstart_cli::options>("aqua_quickstart", aqua_quickstart_cli::add_options, args);
      break;
    default:
      parse_with<aqua_llama_policies_cli::options>("aqua_llama_policies",
                                                   aqua_llama_policies_cli::add_options, args);
      break;
  }
  return 0;
}
