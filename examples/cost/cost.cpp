// aqua_cost: the analytic cost model (include/aqua/cost_model.hpp) from the command line.
//
//   aqua_cost                                   break-even table, d in {64,128,256}, k/d in {1/8..7/8}
//   aqua_cost --d 128 --k 96 --n 4096 --hq 32 --hkv 8      one configuration: FLOP and byte ratios
//   aqua_cost --json                            one JSON object per line (table rows or the configuration)
//   aqua_cost --plot speedup.svg                SVG plot of modelled decode speedup against N
//
// Run with --help for every option.
#include <aqua/cost_model.hpp>

#include "aqua_tools/svg_plot.hpp"
#include "cost/cost_cli.hpp"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using aqua_cost_cli::options;

const char* key_projection_name(aqua::key_projection_cost kp) {
  switch (kp) {
    case aqua::key_projection_cost::per_query:
      return "per_query";
    case aqua::key_projection_cost::per_new_key:
      return "per_new_key";
    case aqua::key_projection_cost::amortised:
      break;
  }
  return "amortised";
}

const char* sharing_name(aqua::selection_sharing s) {
  return s == aqua::selection_sharing::group_shared ? "group_shared" : "per_head";
}

std::string text_value(const std::optional<double>& n) {
  if (!n) return "never";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.1f", *n);
  return buffer;
}

std::string json_value(const std::optional<double>& n) {
  if (!n) return "null";
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.10g", *n);
  return buffer;
}

std::string json_number(double x) {
  return json_value(x);
}

std::string bytes_text(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, unit == 0 ? "%.0f %s" : "%.2f %s", bytes, units[unit]);
  return buffer;
}

std::string describe(const aqua::cost_config& c) {
  char buffer[512];
  std::snprintf(
      buffer, sizeof buffer,
      "Hq=%lld Hkv=%lld (g=%lld), T=%lld, e=%g B, e_P=%g B, key projection %s, selection %g FLOPs/dim, "
      "%s selection%s, values %s%s",
      static_cast<long long>(c.hq), static_cast<long long>(c.hkv), static_cast<long long>(c.hq / c.hkv),
      static_cast<long long>(c.tile), c.elem_bytes, c.projection_elem_bytes,
      key_projection_name(c.key_projection), c.selection_flops_per_dim, sharing_name(c.sharing),
      c.sharing == aqua::selection_sharing::per_head && c.hq != c.hkv
          ? (" (union spread " + std::to_string(c.union_spread).substr(0, 4) + ")").c_str()
          : "",
      c.include_values ? "counted" : "not counted",
      c.token_budget > 0 ? (", H2O budget " + std::to_string(c.token_budget)).c_str() : "");
  return buffer;
}

aqua::cost_config with_key_projection(aqua::cost_config c, aqua::key_projection_cost kp) {
  c.key_projection = kp;
  return c;
}

struct break_evens {
  std::optional<double> flops, amortised, per_query, per_new_key, prefill, bytes;
};

break_evens solve(const aqua::cost_config& c) {
  break_evens b;
  b.flops = aqua::break_even_decode_flops(c);
  b.amortised = aqua::break_even_decode_flops(with_key_projection(c, aqua::key_projection_cost::amortised));
  b.per_query = aqua::break_even_decode_flops(with_key_projection(c, aqua::key_projection_cost::per_query));
  b.per_new_key =
      aqua::break_even_decode_flops(with_key_projection(c, aqua::key_projection_cost::per_new_key));
  b.prefill = aqua::break_even_prefill_flops(c);
  b.bytes = aqua::break_even_decode_bytes(c);
  return b;
}

std::string json_config_fields(const aqua::cost_config& c) {
  std::string s = "\"d\":" + std::to_string(c.d) + ",\"k\":" + std::to_string(c.k) +
                  ",\"r\":" + std::to_string(c.r == 0 ? c.d : c.r) + ",\"hq\":" + std::to_string(c.hq) +
                  ",\"hkv\":" + std::to_string(c.hkv) + ",\"tile\":" + std::to_string(c.tile) +
                  ",\"elem_bytes\":" + json_number(c.elem_bytes) +
                  ",\"projection_elem_bytes\":" + json_number(c.projection_elem_bytes) +
                  ",\"key_projection\":\"" + key_projection_name(c.key_projection) + "\"" +
                  ",\"sharing\":\"" + sharing_name(c.sharing) + "\"" +
                  ",\"union_spread\":" + json_number(c.union_spread) +
                  ",\"selection_flops_per_dim\":" + json_number(c.selection_flops_per_dim) +
                  ",\"token_budget\":" + std::to_string(c.token_budget) +
                  ",\"include_values\":" + (c.include_values ? "true" : "false");
  return s;
}

std::string json_break_even_fields(const aqua::cost_config& c, const break_evens& b) {
  return ",\"key_dims_read\":" + json_number(aqua::key_dims_read(c)) +
         ",\"break_even_flops\":" + json_value(b.flops) +
         ",\"break_even_flops_amortised\":" + json_value(b.amortised) +
         ",\"break_even_flops_per_query\":" + json_value(b.per_query) +
         ",\"break_even_flops_per_new_key\":" + json_value(b.per_new_key) +
         ",\"break_even_prefill_flops\":" + json_value(b.prefill) +
         ",\"break_even_bytes\":" + json_value(b.bytes);
}

void print_table(const options& o) {
  const std::vector<std::int64_t> dims =
      o.d_given ? std::vector<std::int64_t>{o.config.d} : std::vector<std::int64_t>{64, 128, 256};
  if (!o.json) {
    std::printf("Modelled break-even context length N* in tokens: AQUA is cheaper for N > N*.\n");
    std::printf("Assumptions: %s.\n", describe(o.config).c_str());
    std::printf(
        "Decode columns are per step; prefill is a whole causal prompt (M = N), key projection as "
        "above.\n\n");
    std::printf(
        "|   d |   k | k/d | decode FLOPs, amortised | decode FLOPs, per query | decode FLOPs, per new key "
        "| prefill FLOPs | key dims read | decode bytes |\n");
    std::printf(
        "|----:|----:|:---:|------------------------:|------------------------:|--------------------------:"
        "|--------------:|--------------:|-------------:|\n");
  }
  for (std::int64_t d : dims)
    for (std::int64_t eighth = 1; eighth <= 7; ++eighth) {
      aqua::cost_config c = o.config;
      c.d = d;
      c.k = std::max<std::int64_t>(1, d * eighth / 8);
      c.r = 0;
      const break_evens b = solve(c);
      if (o.json) {
        std::printf("{%s%s}\n", json_config_fields(c).c_str(), json_break_even_fields(c, b).c_str());
      } else {
        std::printf("| %3lld | %3lld | %lld/8 | %23s | %23s | %25s | %13s | %13.0f | %12s |\n",
                    static_cast<long long>(d), static_cast<long long>(c.k), static_cast<long long>(eighth),
                    text_value(b.amortised).c_str(), text_value(b.per_query).c_str(),
                    text_value(b.per_new_key).c_str(), text_value(b.prefill).c_str(), aqua::key_dims_read(c),
                    text_value(b.bytes).c_str());
      }
    }
}

void print_configuration(const options& o) {
  const aqua::cost_config& c = o.config;
  const double n = o.n.value_or(4096);
  const auto dense = aqua::dense_decode_cost(c, n), fast = aqua::aqua_decode_cost(c, n);
  const auto pre_dense = aqua::dense_prefill_cost(c, n, n), pre_fast = aqua::aqua_prefill_cost(c, n, n);
  const auto cache = aqua::kv_cache_bytes(c, n);
  const break_evens b = solve(c);
  const double flop_ratio = dense.flops() / fast.flops(), byte_ratio = dense.bytes() / fast.bytes();
  const double prefill_ratio = pre_dense.flops() / pre_fast.flops();
  if (o.json) {
    std::printf(
        "{%s,\"n\":%s%s,\"dense_flops\":%s,\"aqua_flops\":%s,\"flop_ratio\":%s,\"dense_bytes\":%s,"
        "\"aqua_bytes\":%s,\"byte_ratio\":%s,\"prefill_flop_ratio\":%s,\"kv_tokens_kept\":%s,"
        "\"kv_dense_bytes\":%s,\"kv_aqua_bytes\":%s,\"kv_projection_bytes\":%s,"
        "\"kv_dense_bytes_per_token\":%s,\"kv_aqua_bytes_per_token\":%s}\n",
        json_config_fields(c).c_str(), json_number(n).c_str(), json_break_even_fields(c, b).c_str(),
        json_number(dense.flops()).c_str(), json_number(fast.flops()).c_str(),
        json_number(flop_ratio).c_str(), json_number(dense.bytes()).c_str(),
        json_number(fast.bytes()).c_str(), json_number(byte_ratio).c_str(),
        json_number(prefill_ratio).c_str(), json_number(cache.tokens_kept).c_str(),
        json_number(cache.dense_bytes).c_str(), json_number(cache.aqua_bytes).c_str(),
        json_number(cache.projection_bytes).c_str(), json_number(aqua::dense_kv_bytes_per_token(c)).c_str(),
        json_number(aqua::aqua_kv_bytes_per_token(c)).c_str());
    return;
  }
  const double stored = double(c.r == 0 ? c.d : c.r);
  std::printf("d = %lld, k = %lld (k/d = %.3f), r = %.0f, N = %.0f\n", static_cast<long long>(c.d),
              static_cast<long long>(c.k), double(c.k) / double(c.d), stored, n);
  std::printf("Assumptions: %s.\n\n", describe(c).c_str());
  std::printf("One decode step, one layer, all heads:\n");
  std::printf("  %-34s %14s %14s %10s\n", "", "dense", "AQUA", "dense/AQUA");
  std::printf("  %-34s %14.4g %14.4g %10.3f\n", "FLOPs", dense.flops(), fast.flops(), flop_ratio);
  std::printf("  %-34s %14.4g %14.4g %10.3f\n", "  scores", dense.score_flops, fast.score_flops,
              dense.score_flops / fast.score_flops);
  std::printf("  %-34s %14.4g %14.4g\n", "  projections + selection", 0.0,
              fast.projection_flops + fast.selection_flops);
  std::printf("  %-34s %14s %14s %10.3f\n", "bytes read", bytes_text(dense.bytes()).c_str(),
              bytes_text(fast.bytes()).c_str(), byte_ratio);
  std::printf("  %-34s %14s %14s\n", "  keys / projected key tiles", bytes_text(dense.key_bytes).c_str(),
              bytes_text(fast.key_bytes).c_str());
  std::printf("  %-34s %14s %14s\n", "  values", bytes_text(dense.value_bytes).c_str(),
              bytes_text(fast.value_bytes).c_str());
  std::printf("  %-34s %14s %14s\n", "  projection P", "-", bytes_text(fast.projection_bytes).c_str());
  std::printf("  key dims read per KV head: %.0f of %.0f stored\n\n", aqua::key_dims_read(c), stored);
  std::printf("Whole causal prefill of N tokens: FLOPs dense/AQUA = %.3f\n\n", prefill_ratio);
  std::printf("Break-even N* (AQUA cheaper for N > N*):\n");
  std::printf("  decode FLOPs, key projection %-12s %s\n", key_projection_name(c.key_projection),
              text_value(b.flops).c_str());
  std::printf("  decode FLOPs, amortised / per query / per new key: %s / %s / %s\n",
              text_value(b.amortised).c_str(), text_value(b.per_query).c_str(),
              text_value(b.per_new_key).c_str());
  std::printf("  prefill FLOPs (M = N):                  %s\n", text_value(b.prefill).c_str());
  std::printf("  decode bytes:                           %s\n\n", text_value(b.bytes).c_str());
  std::printf(
      "KV cache, one layer: dense %s/token, AQUA %s/token (r = %.0f); for N = %.0f (%.0f kept): dense %s, "
      "AQUA %s, plus %s of projections\n",
      bytes_text(aqua::dense_kv_bytes_per_token(c)).c_str(),
      bytes_text(aqua::aqua_kv_bytes_per_token(c)).c_str(), stored, n, cache.tokens_kept,
      bytes_text(cache.dense_bytes).c_str(), bytes_text(cache.aqua_bytes).c_str(),
      bytes_text(cache.projection_bytes).c_str());
}

// ----------------------------------------------------------------------------------------------
// SVG plot: modelled decode speedup (dense / AQUA) against N on a log axis, FLOPs and bytes side by side.

namespace svg = aqua_examples::svg;

void draw_panel(std::FILE* f, const svg::panel& p, const std::string& title, const std::string& subtitle,
                const std::vector<aqua::cost_config>& configs, bool bytes, double y_step) {
  svg::draw_axes(f, p, title, subtitle, "context length N (tokens, log scale)",
                 "modelled speedup, dense / AQUA", y_step);
  // Top left of the line: at small N every curve is well below 1x, so the label stays clear.
  svg::draw_reference_line(f, p, 1, "1× (break-even)");
  // Curves, and a dot where each crosses 1x. Alternate solid and dashed strokes: curves that
  // coincide (same tiles read) stay visible.
  for (std::size_t i = 0; i < configs.size(); ++i) {
    const auto& c = configs[i];
    svg::draw_curve(
        f, p,
        svg::sample_curve(
            p,
            [&](double n) { return bytes ? aqua::decode_byte_ratio(c, n) : aqua::decode_flop_ratio(c, n); }),
        svg::color(i), i % 2 == 1);
    const auto crossing = bytes ? aqua::break_even_decode_bytes(c) : aqua::break_even_decode_flops(c);
    if (crossing) svg::draw_marker(f, p, std::max(*crossing, 1.0), 1, svg::color(i));
  }
}

std::string legend_label(const aqua::cost_config& c, bool bytes) {
  char buffer[160];
  const auto crossing = bytes ? aqua::break_even_decode_bytes(c) : aqua::break_even_decode_flops(c);
  std::string be = crossing ? "N* = " + text_value(crossing) : "never breaks even";
  if (crossing && *crossing >= 10) {
    char tmp[32];
    std::snprintf(tmp, sizeof tmp, "N* = %.0f", *crossing);
    be = tmp;
  }
  std::snprintf(buffer, sizeof buffer, "k = %lld (%s)", static_cast<long long>(c.k), be.c_str());
  return buffer;
}

void draw_legend(std::FILE* f, const svg::panel& p, const std::vector<aqua::cost_config>& configs,
                 bool bytes) {
  // Bottom right: every curve is below 1x at small N and above it (or flat at 1x) at large N.
  std::vector<svg::legend_entry> entries;
  for (std::size_t i = 0; i < configs.size(); ++i)
    entries.push_back({legend_label(configs[i], bytes), svg::color(i), i % 2 == 1, false});
  svg::draw_legend(f, p, entries);
}

void write_plot(const options& o) {
  const aqua::cost_config& base = o.config;
  std::vector<std::int64_t> ks;
  for (std::int64_t eighth : {1, 2, 4, 6, 7}) ks.push_back(std::max<std::int64_t>(1, base.d * eighth / 8));
  if (o.k_given && base.k < base.d && std::find(ks.begin(), ks.end(), base.k) == ks.end())
    ks.push_back(base.k);
  std::sort(ks.begin(), ks.end());
  ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
  const std::int64_t stored = base.r == 0 ? base.d : base.r;
  std::vector<aqua::cost_config> configs;
  for (std::int64_t k : ks)
    if (k <= stored) {
      aqua::cost_config c = base;
      c.k = k;
      configs.push_back(c);
    }
  const double log_n_min = 4, log_n_max = o.n ? std::max(17.0, std::ceil(std::log2(*o.n))) : 17;
  const double n_max = std::pow(2.0, log_n_max);
  double highest = 1;
  for (const auto& c : configs)
    highest = std::max({highest, aqua::decode_flop_ratio(c, n_max), aqua::decode_byte_ratio(c, n_max)});
  const auto [y_max, y_step] = svg::y_axis_for(highest);

  std::FILE* f = std::fopen(o.plot.c_str(), "w");
  if (!f) throw std::runtime_error("cannot write '" + o.plot + "': " + std::strerror(errno));
  const double width = 1100, height = 560;
  char title[256];
  std::snprintf(title, sizeof title,
                "aqua cost model: modelled decode speedup of AQUA over dense attention, d = %lld%s",
                static_cast<long long>(base.d),
                stored < base.d ? (", r = " + std::to_string(stored)).c_str() : "");
  svg::begin_document(f, width, height, title, describe(base));

  const svg::panel left{80, 110, 440, 360, log_n_min, log_n_max, y_max};
  const svg::panel right{630, 110, 440, 360, log_n_min, log_n_max, y_max};
  char flop_subtitle[160], byte_subtitle[160];
  std::snprintf(flop_subtitle, sizeof flop_subtitle, "key projection %s%s",
                key_projection_name(base.key_projection),
                base.include_values ? ", values counted (limit 2d/(d+k))" : ", scores only");
  std::snprintf(byte_subtitle, sizeof byte_subtitle,
                "whole %lld-dim tiles, e = %g B, P read each step (e_P = %g B)",
                static_cast<long long>(base.tile), base.elem_bytes, base.projection_elem_bytes);
  draw_panel(f, left, "FLOPs per decode step", flop_subtitle, configs, false, y_step);
  draw_panel(f, right, "Bytes read per decode step", byte_subtitle, configs, true, y_step);
  draw_legend(f, left, configs, false);
  draw_legend(f, right, configs, true);
  svg::note(
      f, width / 2, height - 14,
      "Dots mark the break-even length N*; generated by aqua_cost from include/aqua/cost_model.hpp (a model, "
      "not a measurement).");
  svg::end_document(f);
  const bool written = !std::ferror(f);
  if (std::fclose(f) != 0 || !written) throw std::runtime_error("cannot write '" + o.plot + "'");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_cost"};
  options o;
  aqua_cost_cli::add_options(app, o);
  return aqua_cli::run(app, argc, argv, [&] {
    if (o.k_given || o.n)
      print_configuration(o);
    else
      print_table(o);
    if (!o.plot.empty()) {
      write_plot(o);
      if (!o.json) std::printf("\nwrote %s\n", o.plot.c_str());
    }
    return 0;
  });
}
