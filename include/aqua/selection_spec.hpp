// Which projected dimensions a query reads: how many (selection_spec) and over which heads one
// choice is shared (selection_mode). Vocabulary of select.hpp and of the AQUA entry points.
#pragma once

#include "aqua/config.hpp"

namespace aqua {

/// How many projected dimensions a query keeps.
struct selection_spec {
  enum class kind { top_k, fraction, energy };
  kind type = kind::top_k;
  index_t k = 0;       // top_k
  double value = 0.0;  // fraction f or energy tau

  static selection_spec top_k(index_t k) { return {kind::top_k, k, 0.0}; }
  static selection_spec fraction(double f) { return {kind::fraction, 0, f}; }
  static selection_spec energy(double tau) { return {kind::energy, 0, tau}; }
};

/// Which projected dimensions a query head reads.
enum class selection_mode {
  /// Every query head selects its own top-k dims (the paper's rule).
  per_head,
  /// One set per KV group, by summed magnitude over the group's query heads: one read of the
  /// selected key rows serves all g heads.
  group,
  /// Whole tiles, chosen per KV group by summed query energy until k dims are covered; scores use
  /// every dim of the chosen tiles.
  tile,
};

}  // namespace aqua
