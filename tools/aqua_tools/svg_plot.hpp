// A small SVG line-plot writer shared by aqua_cost and aqua_perf_report (not part of the library):
// panels with a log2 context-length axis and a linear speedup axis, grid, curves, markers, a
// dashed reference line and a legend. Plain fprintf into an open file.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace aqua_examples::svg {

/// Colour-blind-safe palette (Okabe-Ito), cycled by curve index.
inline const std::vector<const char*>& palette() {
  static const std::vector<const char*> colors = {"#0072B2", "#E69F00", "#009E73", "#D55E00",
                                                  "#CC79A7", "#56B4E9", "#000000"};
  return colors;
}

inline const char* color(std::size_t i) {
  return palette()[i % palette().size()];
}

/// A plotting area: x is log2(N) between log_n_min and log_n_max, y is linear in [0, y_max].
struct panel {
  double x, y, width, height;  // plotting area in SVG units
  double log_n_min, log_n_max, y_max;
  double px(double n) const { return x + (std::log2(n) - log_n_min) / (log_n_max - log_n_min) * width; }
  double py(double value) const { return y + height - value / y_max * height; }
  bool contains_n(double n) const {
    const double l = std::log2(std::max(n, 1e-300));
    return l >= log_n_min - 1e-9 && l <= log_n_max + 1e-9;
  }
};

/// 512, 4k, 1M.
inline std::string n_label(double n) {
  char buffer[32];
  if (n >= 1024 * 1024)
    std::snprintf(buffer, sizeof buffer, "%gM", n / (1024 * 1024));
  else if (n >= 1024)
    std::snprintf(buffer, sizeof buffer, "%gk", n / 1024);
  else
    std::snprintf(buffer, sizeof buffer, "%g", n);
  return buffer;
}

/// A 1-2-2.5-5 tick step giving about six ticks over `range`.
inline double nice_step(double range) {
  const double raw = range / 6, magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * magnitude >= raw) return m * magnitude;
  return 10 * magnitude;
}

/// A y range from 0 to a tick step above `highest`, and that step.
inline std::pair<double, double> y_axis_for(double highest) {
  const double step = nice_step(highest * 1.1);
  return {std::ceil(highest * 1.08 / step) * step, step};
}

inline const char* dash_attribute(bool dashed) {
  return dashed ? " stroke-dasharray=\"7,4\"" : "";
}

/// XML prologue, the <svg> element with a white background, a title and a subtitle line.
inline void begin_document(std::FILE* f, double width, double height, const std::string& title,
                           const std::string& subtitle) {
  std::fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
  std::fprintf(
      f,
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n",
      width, height, width, height);
  std::fprintf(f, "<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n");
  std::fprintf(
      f, "<text x=\"%.1f\" y=\"28\" text-anchor=\"middle\" font-size=\"18\" font-weight=\"bold\">%s</text>\n",
      width / 2, title.c_str());
  if (!subtitle.empty())
    std::fprintf(
        f, "<text x=\"%.1f\" y=\"48\" text-anchor=\"middle\" font-size=\"12\" fill=\"#555\">%s</text>\n",
        width / 2, subtitle.c_str());
}

/// A centred grey note line (e.g. provenance) at height y.
inline void note(std::FILE* f, double x, double y, const std::string& text) {
  std::fprintf(
      f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\" fill=\"#666\">%s</text>\n", x,
      y, text.c_str());
}

inline void end_document(std::FILE* f) {
  std::fprintf(f, "</svg>\n");
}

/// Grid, ticks (every power of two on x, labelled every other; y every `y_step`, suffixed with
/// `y_suffix`), frame, panel title and subtitle, axis labels.
inline void draw_axes(std::FILE* f, const panel& p, const std::string& title, const std::string& subtitle,
                      const std::string& x_label, const std::string& y_label, double y_step,
                      const char* y_suffix = "×") {
  std::fprintf(f, "<g font-size=\"12\" fill=\"#333\">\n");
  for (double tick = 0; tick <= p.y_max + 1e-9; tick += y_step) {
    const double ty = p.py(tick);
    std::fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#e3e3e3\"/>\n", p.x, ty,
                 p.x + p.width, ty);
    std::fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%g%s</text>\n", p.x - 6, ty + 4, tick,
                 y_suffix);
  }
  for (double e = std::ceil(p.log_n_min); e <= p.log_n_max + 1e-9; e += 1) {
    const double n = std::pow(2.0, e), tx = p.px(n);
    const bool major = static_cast<long long>(e) % 2 == 0;
    std::fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\"/>\n", tx, p.y, tx,
                 p.y + p.height, major ? "#e3e3e3" : "#f2f2f2");
    std::fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", tx,
                 p.y + p.height, tx, p.y + p.height + (major ? 5 : 3));
    if (major)
      std::fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", tx,
                   p.y + p.height + 18, n_label(n).c_str());
  }
  std::fprintf(f, "</g>\n");
  std::fprintf(f,
               "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#333\"/>\n",
               p.x, p.y, p.width, p.height);
  std::fprintf(
      f,
      "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"15\" font-weight=\"bold\">%s</text>\n",
      p.x + p.width / 2, p.y - 26, title.c_str());
  std::fprintf(
      f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"12\" fill=\"#555\">%s</text>\n",
      p.x + p.width / 2, p.y - 10, subtitle.c_str());
  std::fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\">%s</text>\n",
               p.x + p.width / 2, p.y + p.height + 40, x_label.c_str());
  std::fprintf(f,
               "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\" "
               "font-size=\"13\">%s</text>\n",
               p.x - 44, p.y + p.height / 2, y_label.c_str());
}

/// A dashed horizontal line at `value` with a label at its left end.
inline void draw_reference_line(std::FILE* f, const panel& p, double value, const std::string& label) {
  std::fprintf(f,
               "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#000\" stroke-width=\"1.2\" "
               "stroke-dasharray=\"6,4\"/>\n",
               p.x, p.py(value), p.x + p.width, p.py(value));
  std::fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"#000\">%s</text>\n", p.x + 6,
               p.py(value) - 6, label.c_str());
}

/// A polyline through (N, value) points (values above the axis are clipped to its top).
inline void draw_curve(std::FILE* f, const panel& p, const std::vector<std::pair<double, double>>& points,
                       const char* stroke, bool dashed, double width = 2.4) {
  std::fprintf(
      f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%.1f\" stroke-linejoin=\"round\"%s points=\"",
      stroke, width, dash_attribute(dashed));
  for (const auto& pt : points)
    if (p.contains_n(pt.first))
      std::fprintf(f, "%.1f,%.1f ", p.px(pt.first), p.py(std::min(pt.second, p.y_max)));
  std::fprintf(f, "\"/>\n");
}

/// Samples `curve(N)` at `samples` + 1 points evenly in log N across the panel.
template <class Curve>
std::vector<std::pair<double, double>> sample_curve(const panel& p, Curve&& curve, int samples = 240) {
  std::vector<std::pair<double, double>> points;
  for (int s = 0; s <= samples; ++s) {
    const double n = std::pow(2.0, p.log_n_min + (p.log_n_max - p.log_n_min) * s / samples);
    points.emplace_back(n, curve(n));
  }
  return points;
}

/// A filled circle at (N, value), white rim; `hollow` draws a ring instead.
inline void draw_marker(std::FILE* f, const panel& p, double n, double value, const char* fill,
                        bool hollow = false, double radius = 4) {
  if (!p.contains_n(n)) return;
  if (hollow)
    std::fprintf(
        f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"#fff\" stroke=\"%s\" stroke-width=\"2\"/>\n",
        p.px(n), p.py(std::min(value, p.y_max)), radius, fill);
  else
    std::fprintf(
        f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" stroke=\"#fff\" stroke-width=\"1\"/>\n",
        p.px(n), p.py(std::min(value, p.y_max)), radius, fill);
}

/// Height of a legend box of `entries` rows.
inline double legend_height(std::size_t entries) {
  return 18 * double(entries) + 12;
}

struct legend_entry {
  std::string label;
  const char* color;
  bool dashed = false;
  bool marker = false;  // a dot on the line sample (measured points)
};

/// Where a legend goes: inside the panel (a corner) or under it, below the x-axis label.
enum class corner { bottom_right, top_left, below };

/// A legend box in a corner of the panel (bottom right by default).
inline void draw_legend(std::FILE* f, const panel& p, const std::vector<legend_entry>& entries,
                        double box_w = 220, corner where = corner::bottom_right) {
  const double row = 18, box_h = legend_height(entries.size());
  const bool top_left = where == corner::top_left, below = where == corner::below;
  const double lx = below ? p.x : top_left ? p.x + 10 : p.x + p.width - box_w - 10;
  const double ly = below ? p.y + p.height + 56 : top_left ? p.y + 10 : p.y + p.height - box_h - 10;
  std::fprintf(
      f,
      "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#fff\" fill-opacity=\"0.9\" "
      "stroke=\"#bbb\"/>\n",
      lx, ly, box_w, box_h);
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const double y = ly + 15 + row * double(i);
    const auto& e = entries[i];
    std::fprintf(
        f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"3\"%s/>\n",
        lx + 8, y, lx + 32, y, e.color, dash_attribute(e.dashed));
    if (e.marker)
      std::fprintf(
          f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\" stroke=\"#fff\" stroke-width=\"1\"/>\n",
          lx + 20, y, e.color);
    std::fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">%s</text>\n", lx + 38, y + 4,
                 e.label.c_str());
  }
}

}  // namespace aqua_examples::svg
