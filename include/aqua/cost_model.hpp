// Analytic cost model of dense and AQUA attention: FLOPs and bytes read per decode step and per
// prefill, the context length at which AQUA becomes cheaper (break-even N*), and KV-cache footprint.
//
// Everything is constexpr: a model of what the kernels do, not a measurement of them. The measured
// break-even is held against these numbers elsewhere (bench/, docs/performance.md).
//
// Notation (cost_config): head dim d, kept dims k, stored projected key dims r (truncation, r <= d),
// query heads Hq, KV heads Hkv, group g = Hq / Hkv, element size e (bytes per cached K/V element),
// projection element size e_P, tile size T (the cache stores projected keys as tiles of T consecutive
// dims, and reads whole tiles), context length N (tokens visible to the query; with an H2O budget B,
// N_eff = min(N, B) tokens are kept and read, by dense and AQUA alike).
//
// Counting conventions. One multiply-add is 2 FLOPs. Softmax (N exponentials per head, the same for
// both methods) is not counted; neither are the query read and output write (Hq*d elements, the same
// for both). Per decode step, over all heads of one layer:
//
//   dense FLOPs  = Hq * (2 N_eff d  [scores]  + 2 N_eff d  [values, if include_values])
//   AQUA  FLOPs  = Hq * (2 d r  [q~ = qP]  + s d  [selection]  + 2 N_eff k  [scores]
//                        + 2 N_eff d  [values, if include_values])
//                  + key projection: amortised 0 | per_query Hq 2 d r | per_new_key Hkv 2 d r
//   dense bytes  = Hkv * 2 N_eff d e                            (every key and value, once per KV head)
//   AQUA  bytes  = Hkv * (N_eff D e  [projected key tiles]  + N_eff d e  [values]  + d r e_P  [P])
//
// P is d x r: a truncated cache stores (and projects onto) only the first r columns, so projecting a
// query or a key costs d r multiply-adds and P is d r elements (r = d without truncation).
//
// where D = key_dims_read(c) is the number of projected key dims whose tiles a decode step reads:
//   u = k                                           (group_shared selection: one S serves the group)
//   u = k + union_spread * (min(r, g k) - k)        (per_head selection: the union of g sets; spread 1
//                                                    is the bound min(r, g k), spread 0 full overlap)
//   D = min(r, ceil(u / T) T)                       (whole tiles, the selected dims assumed packed into
//                                                    the leading tiles: dims are ordered by energy)
//
// Break-even (decode, FLOPs) with s = 0: N* = d r / (d - k) with the key projection amortised and
// 2 d r / (d - k) counted per query (r = d = 128, k = 96: 512 and 1024); in general
// N* = (2 d r + s d + key projection per query head) / (2 (d - k)). Break-even (decode, bytes):
// N* = d r e_P / ((d - D) e). Prefill of a whole prompt (M = N, causal), key projection amortised:
// N* = 2 d r / (d - k) - 1. The break_even_* functions solve numerically on the cost functions
// themselves (so every term of the model counts, including the H2O budget, under which N* exists only
// if it is below the budget); the *_closed_form functions give the formulas above for checking.
//
// KV-cache bytes per token, per layer: dense 2 Hkv d e; AQUA Hkv (r + d) e (the projected keys replace
// the keys, so r = d costs the same as dense, and truncation cuts the key half to r/d); plus Hkv d r e_P
// per layer for the projections. An H2O budget B keeps min(N, B) tokens.
#pragma once

#include <cstdint>
#include <optional>

#include "aqua/config.hpp"

namespace aqua {

/// How the per-key projection k~ = k P (d r multiply-adds per key and KV head; d^2 untruncated) is charged.
enum class key_projection_cost {
  /// Not charged to attention: each key is projected once when it enters the cache and serves every
  /// later query (the paper's d^2 / (d - k) break-even).
  amortised,
  /// d^2 multiply-adds per query head per step (the paper's 2 d^2 / (d - k) break-even).
  per_query,
  /// What decode actually pays: one new key per KV head per step, d^2 multiply-adds each, shared by
  /// the g query heads of the group ((1 + 1/g) d^2 / (d - k) break-even).
  per_new_key,
};

/// Whether each query head selects its own dims or one selection serves a GQA group.
enum class selection_sharing {
  /// Each query head selects its own k dims; a decode step reads the tiles of their union.
  per_head,
  /// One set of k dims (e.g. from summed magnitudes) serves the whole group: k dims are read.
  group_shared,
};

/// Named values of cost_config::union_spread (per-head selection under GQA).
inline constexpr double union_spread_identical = 0.0;  ///< the g heads select the same dims
inline constexpr double union_spread_disjoint = 1.0;   ///< the bound: union = min(r, g k) dims

/// Named values of cost_config::selection_flops_per_dim.
inline constexpr double selection_flops_free = 0.0;  ///< the paper's model (selection not counted)
/// |q~_i| and an introselect over d magnitudes: about 4 operations per dim (an estimate, not measured).
inline constexpr double selection_flops_topk = 4.0;

/// Tile size the model assumes by default (DESIGN: tiles of 16 or 32 projected dims).
inline constexpr std::int64_t default_tile_dims = 32;

/// Break-even searches give up beyond this context length (about 10^12 tokens): AQUA that is not
/// cheaper by then is reported as never breaking even.
inline constexpr double break_even_search_limit = 1099511627776.0;  // 2^40

/// One attention configuration. Defaults: MHA with one head, d = 128, k = d (exact), no truncation,
/// fp32 cache and projection, T = 32, key projection amortised, selection free, values counted.
struct cost_config {
  std::int64_t d = 128;                   ///< head dimension
  std::int64_t k = 128;                   ///< kept (selected) projected dims per query, 1..r
  std::int64_t r = 0;                     ///< stored projected key dims (truncation); 0 means d
  std::int64_t hq = 1;                    ///< query heads
  std::int64_t hkv = 1;                   ///< KV heads; hq must be a multiple of hkv
  std::int64_t tile = default_tile_dims;  ///< T: projected dims per key tile (reads are whole tiles)
  double elem_bytes = 4.0;                ///< bytes per cached key/value element
  double projection_elem_bytes = 4.0;     ///< bytes per element of P (0: P assumed cache-resident)
  key_projection_cost key_projection = key_projection_cost::amortised;
  selection_sharing sharing = selection_sharing::per_head;
  double union_spread = union_spread_disjoint;            ///< in [0, 1], per_head selection only
  double selection_flops_per_dim = selection_flops_free;  ///< s: selection FLOPs per dim per query head
  std::int64_t token_budget = 0;  ///< H2O budget B (tokens kept per sequence); 0 means no eviction
  bool include_values = true;     ///< count the value aggregation (2 N d FLOPs per head; same for both)
};

/// FLOPs and bytes of one attention call, over all heads of one layer, with the terms apart.
struct attention_cost {
  double projection_flops = 0;  ///< query projection plus charged key projection (AQUA only)
  double selection_flops = 0;   ///< top-k selection (AQUA only)
  double score_flops = 0;       ///< q.k over the kept dims
  double value_flops = 0;       ///< sum_j p_j v_j (0 unless include_values)
  double key_bytes = 0;         ///< keys (dense) or projected key tiles (AQUA) read
  double value_bytes = 0;       ///< values read
  double projection_bytes = 0;  ///< P read, once per KV head (AQUA only)

  constexpr double flops() const { return projection_flops + selection_flops + score_flops + value_flops; }
  constexpr double bytes() const { return key_bytes + value_bytes + projection_bytes; }
};

/// KV-cache footprint of one layer for a context of N tokens (H2O budget applied when set).
struct kv_cache_footprint {
  double tokens_kept = 0;       ///< min(N, B), or N without a budget
  double dense_bytes = 0;       ///< 2 Hkv d e per token kept
  double aqua_bytes = 0;        ///< Hkv (r + d) e per token kept (projected keys + values)
  double projection_bytes = 0;  ///< Hkv d r e_P: the layer's (truncated) projections, independent of N
};

namespace detail {

constexpr double cost_min(double a, double b) {
  return a < b ? a : b;
}

/// ceil for the non-negative, modest values the model uses (constexpr, unlike std::ceil).
constexpr double cost_ceil(double x) {
  const auto truncated = static_cast<double>(static_cast<std::int64_t>(x));
  return truncated < x ? truncated + 1 : truncated;
}

constexpr bool cost_finite_nonnegative(double x) {
  return x >= 0 && x <= 1.7976931348623157e308;
}

/// Validates every field; `fn` names the public entry point in the message.
constexpr void check_cost_config(const cost_config& c, const char* fn) {
  AQUA_CHECK(c.d >= 1, fn, ": d = ", c.d, " must be at least 1");
  AQUA_CHECK(c.r >= 0 && c.r <= c.d, fn, ": r = ", c.r, " must be in [0, d = ", c.d, "] (0 means d)");
  const std::int64_t stored = c.r == 0 ? c.d : c.r;
  AQUA_CHECK(c.k >= 1 && c.k <= stored, fn, ": k = ", c.k, " must be in [1, ", stored,
             "] (the stored projected dims, r or d)");
  AQUA_CHECK(c.hq >= 1, fn, ": hq = ", c.hq, " must be at least 1");
  AQUA_CHECK(c.hkv >= 1, fn, ": hkv = ", c.hkv, " must be at least 1");
  AQUA_CHECK(c.hq % c.hkv == 0, fn, ": hq = ", c.hq, " must be a multiple of hkv = ", c.hkv);
  AQUA_CHECK(c.tile >= 1, fn, ": tile = ", c.tile, " must be at least 1");
  AQUA_CHECK(c.elem_bytes > 0 && cost_finite_nonnegative(c.elem_bytes), fn, ": elem_bytes = ", c.elem_bytes,
             " must be positive and finite");
  AQUA_CHECK(cost_finite_nonnegative(c.projection_elem_bytes), fn,
             ": projection_elem_bytes = ", c.projection_elem_bytes, " must be non-negative and finite");
  AQUA_CHECK(c.union_spread >= 0 && c.union_spread <= 1, fn, ": union_spread = ", c.union_spread,
             " must be in [0, 1]");
  AQUA_CHECK(cost_finite_nonnegative(c.selection_flops_per_dim), fn,
             ": selection_flops_per_dim = ", c.selection_flops_per_dim, " must be non-negative and finite");
  AQUA_CHECK(c.token_budget >= 0, fn, ": token_budget = ", c.token_budget, " must be non-negative (0: none)");
  AQUA_CHECK(c.key_projection == key_projection_cost::amortised ||
                 c.key_projection == key_projection_cost::per_query ||
                 c.key_projection == key_projection_cost::per_new_key,
             fn, ": key_projection = ", static_cast<int>(c.key_projection), " is not a key_projection_cost");
  AQUA_CHECK(c.sharing == selection_sharing::per_head || c.sharing == selection_sharing::group_shared, fn,
             ": sharing = ", static_cast<int>(c.sharing), " is not a selection_sharing");
}

constexpr void check_length(double n, const char* fn, const char* name) {
  AQUA_CHECK(cost_finite_nonnegative(n), fn, ": ", name, " = ", n, " must be non-negative and finite");
}

constexpr double stored_dims(const cost_config& c) {
  return static_cast<double>(c.r == 0 ? c.d : c.r);
}

constexpr double effective_tokens(const cost_config& c, double n) {
  return c.token_budget > 0 ? cost_min(n, static_cast<double>(c.token_budget)) : n;
}

/// FLOPs of projecting one vector onto the stored dims: 2 d r (P is d x r under truncation).
constexpr double projection_flops_per_vector(const cost_config& c) {
  return 2.0 * double(c.d) * stored_dims(c);
}

/// Key-projection FLOPs per step (decode) or per new token (prefill), over the layer.
constexpr double key_projection_flops(const cost_config& c) {
  const double dd = projection_flops_per_vector(c);
  switch (c.key_projection) {
    case key_projection_cost::per_query:
      return double(c.hq) * dd;
    case key_projection_cost::per_new_key:
      return double(c.hkv) * dd;
    case key_projection_cost::amortised:
      break;
  }
  return 0.0;
}

constexpr double key_dims_read_unchecked(const cost_config& c) {
  const double stored = stored_dims(c), k = double(c.k), g = double(c.hq / c.hkv);
  const double selected =
      c.sharing == selection_sharing::group_shared ? k : k + c.union_spread * (cost_min(stored, g * k) - k);
  const double tile = double(c.tile);
  return cost_min(stored, cost_ceil(selected / tile) * tile);
}

constexpr attention_cost dense_decode_unchecked(const cost_config& c, double n) {
  const double tokens = effective_tokens(c, n), d = double(c.d);
  attention_cost cost;
  cost.score_flops = double(c.hq) * 2.0 * tokens * d;
  cost.value_flops = c.include_values ? cost.score_flops : 0.0;
  cost.key_bytes = double(c.hkv) * tokens * d * c.elem_bytes;
  cost.value_bytes = cost.key_bytes;
  return cost;
}

constexpr attention_cost aqua_decode_unchecked(const cost_config& c, double n) {
  const double tokens = effective_tokens(c, n), d = double(c.d), hq = double(c.hq), hkv = double(c.hkv);
  attention_cost cost;
  cost.projection_flops = hq * projection_flops_per_vector(c) + key_projection_flops(c);
  cost.selection_flops = hq * c.selection_flops_per_dim * d;
  cost.score_flops = hq * 2.0 * tokens * double(c.k);
  cost.value_flops = c.include_values ? hq * 2.0 * tokens * d : 0.0;
  cost.key_bytes = hkv * tokens * key_dims_read_unchecked(c) * c.elem_bytes;
  cost.value_bytes = hkv * tokens * d * c.elem_bytes;
  cost.projection_bytes = hkv * d * stored_dims(c) * c.projection_elem_bytes;
  return cost;
}

/// Query-key pairs of a prefill of m new queries over a context of n tokens (the m included).
constexpr double prefill_pairs(double n, double m, bool causal) {
  return causal ? m * (n - m) + m * (m + 1) / 2 : m * n;
}

constexpr attention_cost dense_prefill_unchecked(const cost_config& c, double n, double m, bool causal) {
  const double pairs = prefill_pairs(n, m, causal), d = double(c.d);
  attention_cost cost;
  cost.score_flops = double(c.hq) * 2.0 * pairs * d;
  cost.value_flops = c.include_values ? cost.score_flops : 0.0;
  cost.key_bytes = double(c.hkv) * n * d * c.elem_bytes;
  cost.value_bytes = cost.key_bytes;
  return cost;
}

constexpr attention_cost aqua_prefill_unchecked(const cost_config& c, double n, double m, bool causal) {
  const double pairs = prefill_pairs(n, m, causal), d = double(c.d), hq = double(c.hq), hkv = double(c.hkv);
  attention_cost cost;
  cost.projection_flops = m * (hq * projection_flops_per_vector(c) + key_projection_flops(c));
  cost.selection_flops = m * hq * c.selection_flops_per_dim * d;
  cost.score_flops = hq * 2.0 * pairs * double(c.k);
  cost.value_flops = c.include_values ? hq * 2.0 * pairs * d : 0.0;
  // Many queries select different dims: over a prefill every stored tile is read.
  cost.key_bytes = hkv * n * stored_dims(c) * c.elem_bytes;
  cost.value_bytes = hkv * n * d * c.elem_bytes;
  cost.projection_bytes = hkv * d * stored_dims(c) * c.projection_elem_bytes;
  return cost;
}

/// Smallest N > 0 from which `aqua_minus_dense(N) < 0` (AQUA strictly cheaper), assuming one sign
/// change from >= 0 to < 0 (true of every cost difference in this model). Doubling then bisection.
template <class Difference>
constexpr std::optional<double> solve_break_even(Difference aqua_minus_dense) {
  double hi = 1;
  while (!(aqua_minus_dense(hi) < 0)) {
    if (hi >= break_even_search_limit) return std::nullopt;
    hi *= 2;
  }
  double lo = hi == 1 ? 0.0 : hi / 2;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; ++i) {
    const double mid = lo + (hi - lo) / 2;
    if (aqua_minus_dense(mid) < 0)
      hi = mid;
    else
      lo = mid;
  }
  return hi;
}

}  // namespace detail

/// Projected key dims (per KV head) whose tiles one decode step reads: D in the header comment.
constexpr double key_dims_read(const cost_config& c) {
  detail::check_cost_config(c, "aqua::key_dims_read");
  return detail::key_dims_read_unchecked(c);
}

/// Dense decode of one step (one query per head) over n tokens, all heads of one layer.
constexpr attention_cost dense_decode_cost(const cost_config& c, double n) {
  detail::check_cost_config(c, "aqua::dense_decode_cost");
  detail::check_length(n, "aqua::dense_decode_cost", "n");
  return detail::dense_decode_unchecked(c, n);
}

/// AQUA decode of one step over n tokens, all heads of one layer.
constexpr attention_cost aqua_decode_cost(const cost_config& c, double n) {
  detail::check_cost_config(c, "aqua::aqua_decode_cost");
  detail::check_length(n, "aqua::aqua_decode_cost", "n");
  return detail::aqua_decode_unchecked(c, n);
}

/// Dense prefill of m new queries per head over a context of n tokens (the m included, n >= m).
constexpr attention_cost dense_prefill_cost(const cost_config& c, double n, double m, bool causal = true) {
  detail::check_cost_config(c, "aqua::dense_prefill_cost");
  detail::check_length(n, "aqua::dense_prefill_cost", "n");
  detail::check_length(m, "aqua::dense_prefill_cost", "m");
  AQUA_CHECK(m <= n, "aqua::dense_prefill_cost: m = ", m, " new queries exceed the context n = ", n);
  return detail::dense_prefill_unchecked(c, n, m, causal);
}

/// AQUA prefill of m new queries per head over a context of n tokens (the m included, n >= m).
/// Key bytes assume every stored tile is read (many queries, many different selections).
constexpr attention_cost aqua_prefill_cost(const cost_config& c, double n, double m, bool causal = true) {
  detail::check_cost_config(c, "aqua::aqua_prefill_cost");
  detail::check_length(n, "aqua::aqua_prefill_cost", "n");
  detail::check_length(m, "aqua::aqua_prefill_cost", "m");
  AQUA_CHECK(m <= n, "aqua::aqua_prefill_cost: m = ", m, " new queries exceed the context n = ", n);
  return detail::aqua_prefill_unchecked(c, n, m, causal);
}

/// Modelled decode speedup in FLOPs at n tokens: dense FLOPs / AQUA FLOPs (> 1: AQUA cheaper).
constexpr double decode_flop_ratio(const cost_config& c, double n) {
  return dense_decode_cost(c, n).flops() / aqua_decode_cost(c, n).flops();
}

/// Modelled decode speedup in bytes read at n tokens: dense bytes / AQUA bytes.
constexpr double decode_byte_ratio(const cost_config& c, double n) {
  return dense_decode_cost(c, n).bytes() / aqua_decode_cost(c, n).bytes();
}

/// Decode break-even in FLOPs: the context length from which AQUA needs fewer FLOPs than dense;
/// std::nullopt when it never does (k = d, or an H2O budget below the crossing).
constexpr std::optional<double> break_even_decode_flops(const cost_config& c) {
  detail::check_cost_config(c, "aqua::break_even_decode_flops");
  return detail::solve_break_even([&c](double n) {
    return detail::aqua_decode_unchecked(c, n).flops() - detail::dense_decode_unchecked(c, n).flops();
  });
}

/// Decode break-even in bytes read; std::nullopt when AQUA never reads fewer bytes (D = d, e.g. k = d,
/// or tiles as wide as d, or a per-head union covering every dim).
constexpr std::optional<double> break_even_decode_bytes(const cost_config& c) {
  detail::check_cost_config(c, "aqua::break_even_decode_bytes");
  return detail::solve_break_even([&c](double n) {
    return detail::aqua_decode_unchecked(c, n).bytes() - detail::dense_decode_unchecked(c, n).bytes();
  });
}

/// Prefill break-even in FLOPs for a whole causal prompt (m = n): the prompt length from which AQUA
/// prefill needs fewer FLOPs. The H2O budget does not apply to prefill.
constexpr std::optional<double> break_even_prefill_flops(const cost_config& c) {
  detail::check_cost_config(c, "aqua::break_even_prefill_flops");
  return detail::solve_break_even([&c](double n) {
    return detail::aqua_prefill_unchecked(c, n, n, true).flops() -
           detail::dense_prefill_unchecked(c, n, n, true).flops();
  });
}

/// The paper's decode break-even with selection free and no H2O budget:
/// d^2/(d-k) amortised, 2 d^2/(d-k) per query, (1 + 1/g) d^2/(d-k) per new key; nullopt for k = d.
/// With truncation to r stored dims (r = 0 means d) the projections are d x r: d^2 becomes d r.
constexpr std::optional<double> break_even_flops_closed_form(std::int64_t d, std::int64_t k,
                                                             key_projection_cost key_projection,
                                                             std::int64_t group = 1, std::int64_t r = 0) {
  AQUA_CHECK(d >= 1, "aqua::break_even_flops_closed_form: d = ", d, " must be at least 1");
  AQUA_CHECK(r >= 0 && r <= d, "aqua::break_even_flops_closed_form: r = ", r, " must be in [0, d = ", d, "]");
  const std::int64_t stored = r == 0 ? d : r;
  AQUA_CHECK(k >= 1 && k <= stored, "aqua::break_even_flops_closed_form: k = ", k, " must be in [1, ",
             r == 0 ? "d = " : "r = ", stored, "]");
  AQUA_CHECK(group >= 1, "aqua::break_even_flops_closed_form: group = ", group, " must be at least 1");
  if (k == d) return std::nullopt;
  const double base = double(d) * double(stored) / double(d - k);
  switch (key_projection) {
    case key_projection_cost::per_query:
      return 2.0 * base;
    case key_projection_cost::per_new_key:
      return (1.0 + 1.0 / double(group)) * base;
    case key_projection_cost::amortised:
      break;
  }
  return base;
}

/// Decode break-even in bytes: d r e_P / ((d - D) e), D = key_dims_read(c), without an H2O budget.
constexpr std::optional<double> break_even_bytes_closed_form(const cost_config& c) {
  detail::check_cost_config(c, "aqua::break_even_bytes_closed_form");
  const double d = double(c.d), saved = d - detail::key_dims_read_unchecked(c);
  if (saved <= 0) return std::nullopt;
  return d * detail::stored_dims(c) * c.projection_elem_bytes / (saved * c.elem_bytes);
}

/// Whole-prompt causal prefill break-even, key projection amortised, selection free:
/// 2 d^2/(d-k) - 1 (from d^2 N = (d-k) N (N+1)/2); nullopt for k = d.
constexpr std::optional<double> break_even_prefill_flops_closed_form(std::int64_t d, std::int64_t k) {
  const auto decode = break_even_flops_closed_form(d, k, key_projection_cost::amortised);
  if (!decode) return std::nullopt;
  return 2.0 * *decode - 1.0;
}

/// KV-cache footprint of one layer holding a context of n tokens (budget applied when set).
constexpr kv_cache_footprint kv_cache_bytes(const cost_config& c, double n) {
  detail::check_cost_config(c, "aqua::kv_cache_bytes");
  detail::check_length(n, "aqua::kv_cache_bytes", "n");
  kv_cache_footprint f;
  const double hkv = double(c.hkv), d = double(c.d);
  f.tokens_kept = detail::effective_tokens(c, n);
  f.dense_bytes = f.tokens_kept * 2.0 * hkv * d * c.elem_bytes;
  f.aqua_bytes = f.tokens_kept * hkv * (detail::stored_dims(c) + d) * c.elem_bytes;
  f.projection_bytes = hkv * d * detail::stored_dims(c) * c.projection_elem_bytes;
  return f;
}

/// KV-cache bytes per cached token of one layer: dense 2 Hkv d e.
constexpr double dense_kv_bytes_per_token(const cost_config& c) {
  detail::check_cost_config(c, "aqua::dense_kv_bytes_per_token");
  return 2.0 * double(c.hkv) * double(c.d) * c.elem_bytes;
}

/// KV-cache bytes per cached token of one layer with AQUA: Hkv (r + d) e (= dense when r = d).
constexpr double aqua_kv_bytes_per_token(const cost_config& c) {
  detail::check_cost_config(c, "aqua::aqua_kv_bytes_per_token");
  return double(c.hkv) * (detail::stored_dims(c) + double(c.d)) * c.elem_bytes;
}

}  // namespace aqua
