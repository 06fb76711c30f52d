// aqua_perf_report: turns aqua_compare --json output into the README's performance tables (markdown)
// and an SVG plot of measured decode speedup against N beside the cost model's curve.
//
//   aqua_perf_report --table decode.jsonl [--sweep sweep.jsonl] --markdown report.md [--plot speedup.svg]
//
// --table: lines of `aqua_compare --mode decode --json` (any mix of N, k, select, threads);
// --sweep: lines of `aqua_compare --sweep-break-even --json`. Both may be given more than once.
// The markdown holds the decode table (with the fraction of the measured memory bandwidth each side
// reached) and the break-even table (measured against modelled N*); the plot has one panel per
// thread count, measured speedup (solid, dots) and the model's byte ratio (dashed) per k and mode.
#include <aqua/cost_model.hpp>

#include "common/svg_plot.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

namespace {

using json = nlohmann::json;
namespace svg = aqua_examples::svg;

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "aqua_perf_report: %s\nusage: aqua_perf_report --table FILE.jsonl [--table ..] [--sweep FILE.jsonl ..] "
               "--markdown OUT.md [--plot OUT.svg]\n",
               msg.c_str());
  std::exit(2);
}

std::vector<json> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) usage("cannot read " + path);
  std::vector<json> out;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line[0] != '{') continue;  // aqua_compare prints only JSON with --json; be lenient
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      usage(path + ":" + std::to_string(number) + ": " + e.what());
    }
  }
  return out;
}

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}

std::string n_text(long long n) { return n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n); }

std::string opt_number(const json& j, const char* key, const char* f) {
  if (!j.contains(key) || j[key].is_null()) return "never";
  return fmt(f, j[key].get<double>());
}

void write_decode_table(std::FILE* f, std::vector<json> rows) {
  std::sort(rows.begin(), rows.end(), [](const json& a, const json& b) {
    return std::make_tuple(a["threads"].get<int>(), a["select"].get<std::string>(), a["k"].get<long long>(),
                           a["n"].get<long long>()) < std::make_tuple(b["threads"].get<int>(),
                                                                      b["select"].get<std::string>(),
                                                                      b["k"].get<long long>(), b["n"].get<long long>());
  });
  std::fprintf(f,
               "| threads | select | k | N | dense ms | AQUA ms | speedup | dense GB/s (%% of bw) | AQUA GB/s (%% of bw) "
               "| key bytes read | rel. error |\n");
  std::fprintf(f, "|---:|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& r : rows) {
    const double bw = r["bandwidth_gbps"].get<double>();
    const double dg = r["dense_gbps"].get<double>(), ag = r["aqua_gbps"].get<double>();
    std::fprintf(f, "| %d | %s | %lld | %s | %.3f | %.3f | **%.2f** | %.1f (%.0f %%) | %.1f (%.0f %%) | %.0f %% | %.2g |\n",
                 r["threads"].get<int>(), r["select"].get<std::string>().c_str(), r["k"].get<long long>(),
                 n_text(r["n"].get<long long>()).c_str(), r["dense_ms"].get<double>(), r["aqua_ms"].get<double>(),
                 r["speedup"].get<double>(), dg, 100 * dg / bw, ag, 100 * ag / bw,
                 100 * r["key_fraction_read"].get<double>(), r["rel_err"].get<double>());
  }
  std::set<std::pair<int, double>> bws;
  for (const auto& r : rows) bws.insert({r["threads"].get<int>(), r["bandwidth_gbps"].get<double>()});
  std::fprintf(f, "\nMeasured memory-read bandwidth (bw):");
  for (const auto& [t, b] : bws) std::fprintf(f, " %.1f GB/s with %d thread%s;", b, t, t == 1 ? "" : "s");
  std::fprintf(f, " GB/s columns: bytes each side must read (AQUA: the key tiles it read, all values) per second.\n");
}

void write_break_even_table(std::FILE* f, std::vector<json> rows) {
  std::sort(rows.begin(), rows.end(), [](const json& a, const json& b) {
    return std::make_tuple(a["threads"].get<int>(), a["baseline"].get<std::string>(), a["select"].get<std::string>(),
                           -a["k"].get<long long>()) < std::make_tuple(b["threads"].get<int>(),
                                                                       b["baseline"].get<std::string>(),
                                                                       b["select"].get<std::string>(),
                                                                       -b["k"].get<long long>());
  });
  std::fprintf(f,
               "| threads | dense baseline | select | k | measured N* (last loss) | model N*, FLOPs | model N*, bytes "
               "| key bytes read (model) | speedup at the largest N |\n");
  std::fprintf(f, "|---:|:---|:---|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& r : rows) {
    const auto& pts = r["points"];
    const std::string measured = r["measured_break_even"].is_null()
                                     ? std::string("not within the sweep")
                                     : std::to_string(r["measured_break_even"].get<long long>());
    const long long last_loss = r["last_loss_n"].get<long long>();
    std::fprintf(f, "| %d | %s | %s | %lld | **%s** (%s) | %s | %s | %.0f %% (%.0f %%) | %.2f at %s |\n",
                 r["threads"].get<int>(), r["baseline"].get<std::string>().c_str(), r["select"].get<std::string>().c_str(),
                 r["k"].get<long long>(), measured.c_str(), last_loss > 0 ? std::to_string(last_loss).c_str() : "none",
                 opt_number(r, "model_break_even_flops", "%.0f").c_str(),
                 opt_number(r, "model_break_even_bytes", "%.0f").c_str(), 100 * r["key_fraction_read"].get<double>(),
                 100 * r["model_key_fraction"].get<double>(), pts.empty() ? 0.0 : pts.back()["speedup"].get<double>(),
                 pts.empty() ? "-" : n_text(pts.back()["n"].get<long long>()).c_str());
  }
}

aqua::cost_config model_of(const json& r) {
  aqua::cost_config c;
  c.d = r["d"].get<long long>();
  c.k = r["k"].get<long long>();
  c.hq = r["hq"].get<long long>();
  c.hkv = r["hkv"].get<long long>();
  c.tile = r["tile"].get<long long>();
  c.sharing = r["model_sharing"].get<std::string>() == "per_head" ? aqua::selection_sharing::per_head
                                                                   : aqua::selection_sharing::group_shared;
  c.projection_elem_bytes = r["model_projection_elem_bytes"].get<double>();
  return c;
}

void write_plot(const std::string& path, const std::vector<json>& sweeps) {
  std::map<int, std::vector<json>> by_threads;
  for (const auto& r : sweeps) by_threads[r["threads"].get<int>()].push_back(r);
  if (by_threads.empty()) usage("--plot needs --sweep data");
  double n_min = 1e300, n_max = 0, highest = 1;
  for (const auto& r : sweeps)
    for (const auto& p : r["points"]) {
      const double n = p["n"].get<double>();
      n_min = std::min(n_min, n);
      n_max = std::max(n_max, n);
      highest = std::max(highest, p["speedup"].get<double>());
    }
  for (const auto& r : sweeps) highest = std::max(highest, aqua::decode_byte_ratio(model_of(r), n_max));
  const double log_n_min = std::floor(std::log2(n_min)), log_n_max = std::ceil(std::log2(n_max));
  const auto [y_max, y_step] = svg::y_axis_for(highest);

  const double panel_w = 460, panel_h = 360, gap = 110, left = 80;
  const double width = left + double(by_threads.size()) * panel_w + double(by_threads.size() - 1) * gap + 40;
  std::size_t most_rows = 0;
  for (const auto& entry : by_threads) most_rows = std::max(most_rows, entry.second.size());
  // Legends sit under the panels, so they never hide a curve.
  const double height = 110 + panel_h + 56 + svg::legend_height(2 * most_rows) + 50;
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) usage("cannot write " + path);
  const json& first = sweeps.front();
  char subtitle[256];
  std::snprintf(subtitle, sizeof subtitle,
                "d = %lld, Hq = %lld, Hkv = %lld, tiles of %lld dims, fp32; dense baseline: %s; %s clock; median of "
                "interleaved pairs",
                first["d"].get<long long>(), first["hq"].get<long long>(), first["hkv"].get<long long>(),
                first["tile"].get<long long>(), first["baseline"].get<std::string>().c_str(),
                first["clock"].get<std::string>().c_str());
  svg::begin_document(f, width, height, "AQUA decode: measured speedup over dense against N, beside the cost model",
                      subtitle);
  double x = left;
  for (const auto& [threads, rows] : by_threads) {
    const svg::panel p{x, 110, panel_w, panel_h, log_n_min, log_n_max, y_max};
    char title[64];
    std::snprintf(title, sizeof title, "%d thread%s", threads, threads == 1 ? "" : "s");
    svg::draw_axes(f, p, title, "solid: measured (dots: measured N); dashed: modelled bytes ratio",
                   "context length N (tokens, log scale)", "speedup, dense / AQUA", y_step);
    svg::draw_reference_line(f, p, 1, "1× (break-even)");
    std::vector<svg::legend_entry> legend;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& r = rows[i];
      const auto model = model_of(r);
      svg::draw_curve(f, p, svg::sample_curve(p, [&](double n) { return aqua::decode_byte_ratio(model, n); }),
                      svg::color(i), true, 1.6);
      std::vector<std::pair<double, double>> measured;
      for (const auto& pt : r["points"]) measured.emplace_back(pt["n"].get<double>(), pt["speedup"].get<double>());
      svg::draw_curve(f, p, measured, svg::color(i), false, 2.4);
      for (const auto& [n, s] : measured) svg::draw_marker(f, p, n, s, svg::color(i), false, 3);
      if (!r["measured_break_even"].is_null())
        svg::draw_marker(f, p, r["measured_break_even"].get<double>(), 1, svg::color(i), true, 5);
      const std::string measured_be =
          r["measured_break_even"].is_null() ? "none" : std::to_string(r["measured_break_even"].get<long long>());
      legend.push_back({"k = " + std::to_string(r["k"].get<long long>()) + " " + r["select"].get<std::string>() +
                            ": measured N* " + measured_be,
                        svg::color(i), false, true});
      legend.push_back({"model (bytes), N* = " + opt_number(r, "model_break_even_bytes", "%.0f"), svg::color(i), true,
                        false});
    }
    svg::draw_legend(f, p, legend, panel_w, svg::corner::below);
    x += panel_w + gap;
  }
  svg::note(f, width / 2, height - 30,
            "Rings on the 1× line: measured break-even (smallest measured N from which AQUA is faster at every larger "
            "measured N).");
  svg::note(f, width / 2, height - 14,
            "Generated by bench/performance_report.sh (aqua_compare --sweep-break-even --json, aqua_perf_report); "
            "model: include/aqua/cost_model.hpp.");
  svg::end_document(f);
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<json> table, sweeps;
  std::string markdown, plot;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value after " + a);
      return argv[++i];
    };
    if (a == "--table") {
      for (auto& j : read_lines(next())) table.push_back(std::move(j));
    } else if (a == "--sweep") {
      for (auto& j : read_lines(next())) sweeps.push_back(std::move(j));
    } else if (a == "--markdown") {
      markdown = next();
    } else if (a == "--plot") {
      plot = next();
    } else if (a == "--help" || a == "-h") {
      usage("help");
    } else {
      usage("unknown flag " + a);
    }
  }
  if (markdown.empty() && plot.empty()) usage("nothing to write: give --markdown and/or --plot");
  try {
    if (!markdown.empty()) {
      std::FILE* f = std::fopen(markdown.c_str(), "w");
      if (!f) usage("cannot write " + markdown);
      if (!table.empty()) {
        std::fprintf(f, "#### Decode, dense against AQUA\n\n");
        write_decode_table(f, table);
      }
      if (!sweeps.empty()) {
        std::fprintf(f, "\n#### Break-even, measured against modelled\n\n");
        write_break_even_table(f, sweeps);
      }
      std::fclose(f);
    }
    if (!plot.empty()) write_plot(plot, sweeps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "aqua_perf_report: %s\n", e.what());
    return 1;
  }
  return 0;
}
