// aqua_perf_report: turns aqua_compare --json output into markdown tables (docs/performance.md)
// and an SVG plot of measured decode speedup against N beside the cost model's curve.
//
//   aqua_perf_report --table decode.jsonl [--sweep sweep.jsonl] --markdown report.md [--plot speedup.svg]
// Exit status: 0 success (also --help), 1 an input that fails to read or parse, an output that fails to
// write; 2 bad usage (flags, a missing input file, an output that cannot be written).
//
// --table: lines of `aqua_compare --mode decode --json` (any mix of N, k, select, threads);
// --sweep: lines of `aqua_compare --sweep-break-even --json`. Both may be given more than once.
// The markdown holds the decode table (with the fraction of the measured memory bandwidth each side
// reached) and the break-even table (measured against modelled N*); the plot has one panel per
// thread count, measured speedup (solid, dots) and the model's byte ratio (dashed) per k and mode.
#include <aqua/cost_model.hpp>

#include "aqua_tools/svg_plot.hpp"
#include "perf_report_cli.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace {

using json = nlohmann::json;
namespace svg = aqua_examples::svg;

std::vector<json> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<json> out;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (line.empty() || line[0] != '{') continue;  // aqua_compare prints only JSON with --json; be lenient
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      throw std::runtime_error(path + ":" + std::to_string(number) + ": " + e.what());
    }
  }
  return out;
}

std::string fmt(const char* f, double x) {
  char b[64];
  std::snprintf(b, sizeof b, f, x);
  return b;
}

std::string n_text(long long n) {
  return n % 1024 == 0 ? std::to_string(n / 1024) + "k" : std::to_string(n);
}

std::string opt_number(const json& j, const char* key, const char* f) {
  if (!j.contains(key) || j[key].is_null()) return "never";
  return fmt(f, j[key].get<double>());
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.empty() ? 0.0 : v.size() % 2 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

/// "1.27" for one run, "1.27 (1.21-1.29)" for the median and range over several.
std::string median_range(const std::vector<double>& v, const char* f) {
  if (v.empty()) return "-";
  std::string out = fmt(f, median_of(v));
  if (v.size() > 1) {
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    out += " (" + fmt(f, *lo) + "–" + fmt(f, *hi) + ")";
  }
  return out;
}

std::vector<double> field(const std::vector<json>& rows, const char* key) {
  std::vector<double> v;
  for (const auto& r : rows) v.push_back(r[key].get<double>());
  return v;
}

/// "f32", "bf16", ... or "bf16 / f16" when keys and values differ (rows before 16-bit storage: f32).
std::string storage_of(const json& r) {
  const std::string k = r.value("key_type", std::string("f32")),
                    v = r.value("value_type", std::string("f32"));
  return k == v ? k : k + " / " + v;
}

/// One row per (threads, storage, select, k), one column per N: the speedup (median and range over
/// the runs given), then time and bandwidth at the largest N.
void write_decode_table(std::FILE* f, const std::vector<json>& rows) {
  using key = std::tuple<int, std::string, std::string, long long>;
  std::map<key, std::map<long long, std::vector<json>>> cells;
  std::set<long long> ns;
  std::map<int, std::vector<double>> bandwidth;
  std::size_t runs = 1;
  for (const auto& r : rows) {
    const long long n = r["n"].get<long long>();
    auto& cell = cells[{r["threads"].get<int>(), storage_of(r), r["select"].get<std::string>(),
                        r["k"].get<long long>()}][n];
    cell.push_back(r);
    runs = std::max(runs, cell.size());
    ns.insert(n);
  }
  for (const auto& r : rows) bandwidth[r["threads"].get<int>()].push_back(r["bandwidth_gbps"].get<double>());
  const long long n_max = *ns.rbegin();
  if (rows.front().contains("isa"))
    std::fprintf(f, "Kernels: %s.\n\n", rows.front()["isa"].get<std::string>().c_str());
  std::fprintf(f, "| threads | storage | select | k |");
  for (long long n : ns) std::fprintf(f, " speedup, N = %s |", n_text(n).c_str());
  std::fprintf(f,
               " dense / AQUA ms, N = %s | dense GB/s (%% of bw) | AQUA GB/s (%% of bw) | key bytes read | "
               "rel. error | storage error |\n",
               n_text(n_max).c_str());
  std::fprintf(f, "|---:|:---|:---|---:|");
  for (std::size_t i = 0; i < ns.size(); ++i) std::fprintf(f, "---:|");
  std::fprintf(f, "---:|---:|---:|---:|---:|---:|\n");
  for (const auto& [k, by_n] : cells) {
    std::fprintf(f, "| %d | %s | %s | %lld |", std::get<0>(k), std::get<1>(k).c_str(), std::get<2>(k).c_str(),
                 std::get<3>(k));
    for (long long n : ns) {
      const auto it = by_n.find(n);
      std::fprintf(f, " %s |",
                   it == by_n.end() ? "-" : median_range(field(it->second, "speedup"), "%.2f").c_str());
    }
    const auto it = by_n.find(n_max);
    if (it == by_n.end()) {
      std::fprintf(f, " - | - | - | - | - | - |\n");
      continue;
    }
    const auto& last = it->second;
    const double bw = median_of(field(last, "bandwidth_gbps"));
    const double dg = median_of(field(last, "dense_gbps")), ag = median_of(field(last, "aqua_gbps"));
    std::string storage_err = "-";
    if (last.front().contains("storage_err")) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.2g", median_of(field(last, "storage_err")));
      storage_err = buf;
    }
    std::fprintf(f, " %.2f / %.2f | %.1f (%.0f %%) | %.1f (%.0f %%) | %.0f %% | %.2g | %s |\n",
                 median_of(field(last, "dense_ms")), median_of(field(last, "aqua_ms")), dg, 100 * dg / bw, ag,
                 100 * ag / bw, 100 * median_of(field(last, "key_fraction_read")),
                 median_of(field(last, "rel_err")), storage_err.c_str());
  }
  std::fprintf(f,
               "\nSpeedup: dense time / AQUA time, median of interleaved pairs%s. Memory-read bandwidth (bw) "
               "measured by aqua_compare:",
               runs > 1 ? (", median (range) over " + std::to_string(runs) + " runs").c_str() : "");
  for (const auto& [t, b] : bandwidth)
    std::fprintf(f, " %s GB/s with %d thread%s;", median_range(b, "%.1f").c_str(), t, t == 1 ? "" : "s");
  std::fprintf(
      f,
      " GB/s columns: bytes each side must read (AQUA: the key tiles it read, all values) per second. "
      "Storage error: dense attention over this storage against dense over f32, relative.\n");
}

/// One row per (threads, baseline, select, k): measured break-even (median and range over runs)
/// against the model's.
void write_break_even_table(std::FILE* f, const std::vector<json>& rows) {
  using key = std::tuple<int, std::string, std::string, long long>;
  std::map<key, std::vector<json>> groups;
  for (const auto& r : rows)
    groups[{r["threads"].get<int>(), r["baseline"].get<std::string>(), r["select"].get<std::string>(),
            -r["k"].get<long long>()}]
        .push_back(r);
  std::fprintf(f,
               "| threads | dense baseline | select | k | measured N* | model N*, FLOPs | model N*, bytes "
               "| key bytes read (model) | speedup at the largest N | runs |\n");
  std::fprintf(f, "|---:|:---|:---|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const auto& [k, group] : groups) {
    std::vector<double> measured, last_speedup;
    std::size_t never = 0;
    for (const auto& r : group) {
      if (r["measured_break_even"].is_null())
        ++never;
      else
        measured.push_back(r["measured_break_even"].get<double>());
      if (!r["points"].empty()) last_speedup.push_back(r["points"].back()["speedup"].get<double>());
    }
    std::string m = measured.empty() ? std::string("not within the sweep") : median_range(measured, "%.0f");
    if (never > 0 && !measured.empty()) m += ", " + std::to_string(never) + " run(s) not within the sweep";
    const json& r = group.front();
    const auto& pts = r["points"];
    std::fprintf(f, "| %d | %s | %s | %lld | **%s** | %s | %s | %.0f %% (%.0f %%) | %s at %s | %zu |\n",
                 std::get<0>(k), std::get<1>(k).c_str(), std::get<2>(k).c_str(), -std::get<3>(k), m.c_str(),
                 opt_number(r, "model_break_even_flops", "%.0f").c_str(),
                 opt_number(r, "model_break_even_bytes", "%.0f").c_str(),
                 100 * median_of(field(group, "key_fraction_read")),
                 100 * r["model_key_fraction"].get<double>(), median_range(last_speedup, "%.2f").c_str(),
                 pts.empty() ? "-" : n_text(pts.back()["n"].get<long long>()).c_str(), group.size());
  }
  std::fprintf(
      f,
      "\nMeasured N*: the smallest measured N from which AQUA was faster (median of interleaved pairs) at "
      "every larger measured N (doubling from the smallest N, plus three points between the last loss "
      "and the next).\n");
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

/// Several runs of one configuration as one: the median speedup at each measured N (refinement
/// points differ between runs), and the break-even recomputed from those medians.
std::vector<json> merge_runs(const std::vector<json>& sweeps) {
  using key = std::tuple<int, std::string, std::string, long long>;
  std::map<key, std::vector<json>> groups;
  for (const auto& r : sweeps)
    groups[{r["threads"].get<int>(), r["baseline"].get<std::string>(), r["select"].get<std::string>(),
            -r["k"].get<long long>()}]
        .push_back(r);
  std::vector<json> merged;
  for (const auto& entry : groups) {
    const auto& group = entry.second;
    std::map<long long, std::vector<double>> by_n;
    for (const auto& r : group)
      for (const auto& p : r["points"]) by_n[p["n"].get<long long>()].push_back(p["speedup"].get<double>());
    json m = group.front();
    m["points"] = json::array();
    std::optional<long long> win;
    for (const auto& [n, v] : by_n) {
      const double s = median_of(v);
      m["points"].push_back({{"n", n}, {"speedup", s}});
      if (s > 1.0) {
        if (!win) win = n;
      } else {
        win.reset();
      }
    }
    m["measured_break_even"] = win ? json(*win) : json(nullptr);
    m["runs"] = group.size();
    merged.push_back(m);
  }
  return merged;
}

void write_plot(const std::string& path, const std::vector<json>& all_runs) {
  const std::vector<json> sweeps = merge_runs(all_runs);
  std::map<int, std::vector<json>> by_threads;
  for (const auto& r : sweeps) by_threads[r["threads"].get<int>()].push_back(r);
  if (by_threads.empty()) throw std::runtime_error("--plot: the --sweep files hold no break-even lines");
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
  if (!f) throw std::runtime_error("cannot write " + path + ": " + std::strerror(errno));
  const json& first = sweeps.front();
  char subtitle[256];
  std::snprintf(
      subtitle, sizeof subtitle,
      "d = %lld, Hq = %lld, Hkv = %lld, tiles of %lld dims, fp32; dense baseline: %s; %s clock; median of "
      "interleaved pairs",
      first["d"].get<long long>(), first["hq"].get<long long>(), first["hkv"].get<long long>(),
      first["tile"].get<long long>(), first["baseline"].get<std::string>().c_str(),
      first["clock"].get<std::string>().c_str());
  svg::begin_document(f, width, height,
                      "AQUA decode: measured speedup over dense against N, beside the cost model", subtitle);
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
      for (const auto& pt : r["points"])
        measured.emplace_back(pt["n"].get<double>(), pt["speedup"].get<double>());
      svg::draw_curve(f, p, measured, svg::color(i), false, 2.4);
      for (const auto& [n, s] : measured) svg::draw_marker(f, p, n, s, svg::color(i), false, 3);
      if (!r["measured_break_even"].is_null())
        svg::draw_marker(f, p, r["measured_break_even"].get<double>(), 1, svg::color(i), true, 5);
      const std::string measured_be = r["measured_break_even"].is_null()
                                          ? "none"
                                          : std::to_string(r["measured_break_even"].get<long long>());
      const auto runs = r["runs"].get<std::size_t>();
      legend.push_back({"k = " + std::to_string(r["k"].get<long long>()) + " " +
                            r["select"].get<std::string>() + ": measured" +
                            (runs > 1 ? " (median of " + std::to_string(runs) + " runs)" : "") + ", N* " +
                            measured_be,
                        svg::color(i), false, true});
      legend.push_back({"model (bytes), N* = " + opt_number(r, "model_break_even_bytes", "%.0f"),
                        svg::color(i), true, false});
    }
    svg::draw_legend(f, p, legend, panel_w, svg::corner::below);
    x += panel_w + gap;
  }
  svg::note(
      f, width / 2, height - 30,
      "Rings on the 1× line: measured break-even of the (median) curve: the smallest measured N from which "
      "AQUA is faster at every larger measured N.");
  svg::note(
      f, width / 2, height - 14,
      "Generated by bench/performance_report.sh (aqua_compare --sweep-break-even --json, aqua_perf_report); "
      "model: include/aqua/cost_model.hpp.");
  svg::end_document(f);
  const bool written = !std::ferror(f);
  if (std::fclose(f) != 0 || !written) throw std::runtime_error("cannot write " + path);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"", "aqua_perf_report"};
  aqua_perf_report_cli::options o;
  aqua_perf_report_cli::add_options(app, o);
  return aqua_cli::run(app, argc, argv, [&] {
    std::vector<json> table, sweeps;
    for (const auto& path : o.table)
      for (auto& j : read_lines(path)) table.push_back(std::move(j));
    for (const auto& path : o.sweep)
      for (auto& j : read_lines(path)) sweeps.push_back(std::move(j));
    if (!o.markdown.empty()) {
      std::FILE* f = std::fopen(o.markdown.c_str(), "w");
      if (!f) throw std::runtime_error("cannot write " + o.markdown + ": " + std::strerror(errno));
      if (!table.empty()) {
        std::fprintf(f, "#### Decode, dense against AQUA\n\n");
        write_decode_table(f, table);
      }
      if (!sweeps.empty()) {
        std::fprintf(f, "\n#### Break-even, measured against modelled\n\n");
        write_break_even_table(f, sweeps);
      }
      const bool written = !std::ferror(f);
      if (std::fclose(f) != 0 || !written) throw std::runtime_error("cannot write " + o.markdown);
    }
    if (!o.plot.empty()) write_plot(o.plot, sweeps);
    return 0;
  });
}
