// aqua_calibrate's command line (CLI11): its options, shared by the tool (calibrate.cpp) and the
// argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp). Parsing checks every value, the input
// directories and files for existence and the output file for writability, before any dump is read.
#pragma once

#include <aqua/calibrate.hpp>

#include "aqua_tools/cli.hpp"

#include <string>

namespace aqua_calibrate_cli {

using aqua::index_t;

struct options {
  std::string dumps, out, projection, eval, model;
  aqua::calibration_source source = aqua::calibration_source::queries;
  bool center = false, json = false;
  int threads = 1;
  index_t max_queries = 512, max_keys = 1024;
};

/// The options of aqua_calibrate into `app`, parsed into `o`.
inline void add_options(CLI::App& app, options& o) {
  aqua_cli::configure(app);
  app.description(
      "aqua_calibrate: per-head projections from activation dumps (--dumps DIR --out FILE.safetensors), and "
      "their retention figures; or the retention of an existing projection file (--projection FILE --eval "
      "DIR). A dump directory holds q_layer{l}.npy [Hq, rows, d] and k_layer{l}.npy [Hkv, rows, d], l = 0, "
      "1, ... (float32 or float64). Progress goes to stderr.");
  auto* dumps =
      app.add_option("--dumps", o.dumps, "calibrate on the dumps in DIR")->check(aqua_cli::readable_dir());
  auto* out = app.add_option("--out", o.out, "write the projection set to FILE.safetensors")
                  ->check(aqua_cli::writable_file());
  auto* projection =
      app.add_option("--projection", o.projection, "evaluate this projection file (with --eval)")
          ->check(aqua_cli::readable_file());
  projection->excludes(dumps)->excludes(out);
  app.add_option("--eval", o.eval, "also report retention on the held-out dumps in DIR")
      ->check(aqua_cli::readable_dir());
  app.add_option_function<std::string>(
         "--source", [&o](const std::string& v) { o.source = aqua::parse_calibration_source(v); },
         "vectors that calibrate each KV head: queries (its g query heads stacked), keys or queries_and_keys "
         "[default: queries]")
      ->check(CLI::IsMember({"queries", "keys", "queries_and_keys"}));
  app.add_flag("--center", o.center, "decompose the covariance about the mean instead of X^T X");
  app.add_flag("--json", o.json,
               "one JSON object per line (dataset, layer, kv_head, k, retention_topk, retention_prefix, "
               "score_rel_err, queries) instead of tables");
  aqua_cli::threads(app, o.threads);
  aqua_cli::integer<index_t>(app, "--max-queries", o.max_queries, 0, 1000000000,
                             "queries per query head and layer used for retention (0: all)");
  aqua_cli::integer<index_t>(app, "--max-keys", o.max_keys, 0, 1000000000,
                             "keys per KV head and layer scored against each query (0: all)");
  app.add_option("--model", o.model, "stored in the projection file's metadata as \"model\"");
  app.callback([&o] {
    if (!o.projection.empty()) {
      if (o.eval.empty()) throw aqua_cli::usage_error("--projection needs --eval DIR");
    } else {
      if (o.dumps.empty())
        throw aqua_cli::usage_error("--dumps DIR is required (or --projection FILE --eval DIR)");
      if (o.out.empty()) throw aqua_cli::usage_error("--out FILE.safetensors is required with --dumps");
    }
  });
}

}  // namespace aqua_calibrate_cli
