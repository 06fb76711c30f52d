// aqua_quickstart's command line (CLI11), shared by the example (quickstart.cpp) and the
// argument-vector fuzz target (tests/fuzz/fuzz_cli.cpp).
#pragma once

#include "aqua_tools/cli.hpp"

#include <string>

namespace aqua_quickstart_cli {

struct options {
  long hq = 32, hkv = 8, d = 128, n = 4096, k = 32;
  int threads = 1;
};

/// The options of aqua_quickstart into `app`, parsed into `o`.
inline void add_options(CLI::App& app, options& o) {
  aqua_cli::configure(app);
  app.description(
      "aqua_quickstart: AQUA end to end on generated data (calibrated projection, cache, decode) and its "
      "error "
      "against exact dense attention.");
  aqua_cli::integer(app, "--hq", o.hq, 1L, 1024L, "query heads (a multiple of --hkv)");
  aqua_cli::integer(app, "--hkv", o.hkv, 1L, 1024L, "KV heads");
  aqua_cli::integer(app, "--d", o.d, 1L, 4096L, "head dimension");
  aqua_cli::integer(app, "--n", o.n, 1L, 1L << 24, "cached tokens N");
  aqua_cli::integer(app, "--k", o.k, 1L, 4096L, "dims AQUA keeps per query head (at most --d)");
  aqua_cli::threads(app, o.threads);
  app.callback([&o] {
    if (o.hq % o.hkv != 0)
      throw aqua_cli::usage_error("--hq " + std::to_string(o.hq) + " must be a multiple of --hkv " +
                                  std::to_string(o.hkv));
    if (o.k > o.d)
      throw aqua_cli::usage_error("--k " + std::to_string(o.k) + " exceeds --d " + std::to_string(o.d));
    aqua_cli::check_memory(8.0 * double(o.n) * double(o.hkv) * double(o.d),
                           "--n " + std::to_string(o.n) + " with --hkv " + std::to_string(o.hkv) + ", --d " +
                               std::to_string(o.d));
  });
}

}  // namespace aqua_quickstart_cli
