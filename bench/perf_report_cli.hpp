// aqua_perf_report's command line (CLI11), shared by the tool (perf_report.cpp) and the
// argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp).
#pragma once

#include "aqua_tools/cli.hpp"

#include <string>
#include <vector>

namespace aqua_perf_report_cli {

struct options {
  std::vector<std::string> table, sweep;
  std::string markdown, plot;
};

/// The options of aqua_perf_report into `app`, parsed into `o`.
inline void add_options(CLI::App& app, options& o) {
  aqua_cli::configure(app);
  app.description(
      "aqua_perf_report: turns aqua_compare --json output into markdown performance tables "
      "(docs/performance.md) and an SVG plot of measured decode speedup against N beside the cost "
      "model's curve.");
  aqua_cli::file_list(app, "--table", o.table, "lines of aqua_compare --mode decode --json (repeatable)");
  aqua_cli::file_list(app, "--sweep", o.sweep,
                      "lines of aqua_compare --sweep-break-even --json (repeatable)");
  app.add_option("--markdown", o.markdown, "write the tables to OUT.md")->check(aqua_cli::writable_file());
  app.add_option("--plot", o.plot, "write the plot to OUT.svg (needs --sweep)")
      ->check(aqua_cli::writable_file());
  app.callback([&o] {
    if (o.markdown.empty() && o.plot.empty())
      throw aqua_cli::usage_error("nothing to write: give --markdown and/or --plot");
    if (!o.plot.empty() && o.sweep.empty()) throw aqua_cli::usage_error("--plot needs --sweep FILE.jsonl");
  });
}

}  // namespace aqua_perf_report_cli
