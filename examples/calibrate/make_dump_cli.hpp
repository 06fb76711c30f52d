// aqua_make_synthetic_dump's command line (CLI11), shared by the tool (make_synthetic_dump.cpp)
// and the argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp).
#pragma once

#include "aqua_tools/cli.hpp"

#include <string>

namespace aqua_make_dump_cli {

struct options {
  std::string dir;
  long layers = 2, hq = 4, hkv = 2, rows = 256, d = 32, rank = 4;
  unsigned seed = 1;
};

/// The options of aqua_make_synthetic_dump into `app`, parsed into `o`.
inline void add_options(CLI::App& app, options& o) {
  aqua_cli::configure(app);
  app.description(
      "aqua_make_synthetic_dump: writes a synthetic activation dump in the layout aqua_calibrate reads, "
      "DIR/q_layer{l}.npy [Hq, rows, d] and DIR/k_layer{l}.npy [Hkv, rows, d], with a planted low-rank "
      "subspace per layer and KV head.");
  app.add_option("DIR", o.dir, "output directory (created if missing)")
      ->required()
      ->check(aqua_cli::writable_dir());
  aqua_cli::integer(app, "--layers", o.layers, 1L, 1024L, "layers");
  aqua_cli::integer(app, "--query-heads", o.hq, 1L, 1024L, "query heads (a multiple of --kv-heads)");
  aqua_cli::integer(app, "--kv-heads", o.hkv, 1L, 1024L, "KV heads");
  aqua_cli::integer(app, "--rows", o.rows, 1L, 1L << 20, "rows (tokens) per head");
  aqua_cli::integer(app, "--d", o.d, 1L, 4096L, "head dimension d");
  aqua_cli::integer(app, "--rank", o.rank, 1L, 4096L, "rank of the planted subspace, at most d");
  aqua_cli::integer(app, "--seed", o.seed, 0u, 4294967295u, "random seed of the samples");
  app.callback([&o] {
    if (o.hq % o.hkv != 0)
      throw aqua_cli::usage_error("--query-heads " + std::to_string(o.hq) +
                                  " must be a multiple of --kv-heads " + std::to_string(o.hkv));
    if (o.rank > o.d)
      throw aqua_cli::usage_error("--rank " + std::to_string(o.rank) + " is larger than --d " +
                                  std::to_string(o.d));
    // One layer's q and k in memory at a time (float), and as much again on disk per layer.
    aqua_cli::check_memory(4.0 * double(o.hq + o.hkv) * double(o.rows) * double(o.d),
                           "--query-heads " + std::to_string(o.hq) + " with --rows " +
                               std::to_string(o.rows) + ", --d " + std::to_string(o.d));
  });
}

}  // namespace aqua_make_dump_cli
