// An independent AQUA oracle: the approximation itself (projection, dimension selection, scores on
// the selected dims, softmax, values, token probabilities), written from the documented rules in
// double precision with plain loops and std::stable_sort. It shares no code with the library: it
// includes no aqua header, so a bug in the library's selection or kernels cannot leak into it.
//
// The rules it implements (docs/design.md "AQUA attention", attention.hpp, select.hpp):
//   q~ = scale * (q P),  k~ = stored_key(k P),  both over the first r projected dims (truncation).
//   Selection, per list of query heads (per_head: each head alone; group and tile: the g heads of
//   a KV group; prefill: per_head and tile each query alone, group the g heads' queries at one
//   position):
//     weight_i = sum_h |q~_h,i|, energy_i = sum_h q~_h,i^2, dims ranked by decreasing weight, equal
//     weights by lower index (a stable sort of 0..r-1);
//     top_k(k): the first k; fraction(f): the first ceil(f r) (at least 1); energy(tau): the
//     shortest prefix of the ranking whose energies reach tau * total.
//     tile: tiles of `tile` consecutive dims (the last may be narrower), tile energy = the sum of
//     the energies of its dims, tiles ranked by decreasing energy (ties: lower tile); fixed specs
//     take tiles in that order until the count of the spec is covered, energy specs the shortest
//     prefix of tiles whose energies reach tau * total. Scores then use every
//     dim of the tiles.
//   score_j = sum_{i in S} q~_i k~_j,i; p = softmax(score) over the visible tokens (causal
//   prefill: query i of M sees tokens 0 .. N - M + i); out = sum_j p_j stored_value(v_j).
//   token_probs[kv][j] = sum over the group's query heads of p_h,j (decode).
//
// Storage hook: stored_key maps each projected key element k~ (double) to what the cache stores,
// stored_value each raw value element. For a float cache both are the identity: it rounds k~ to
// float and stores v exactly, and that rounding is inside the float bound below. For a bf16 / f16
// cache they are round_to_format with the element type's parameters; the cache rounds its float
// projection, so the tests use bases whose float projection is exact (signed permutations), or a
// float rounding error could flip a 16-bit rounding.
//
// Float bound (what the kernels' float arithmetic may add, first order in u = 2^-24, gamma(m) =
// m u / (1 - m u), Higham's bound for a sum or dot product of m terms):
//   * q~ is a float GEMV q P (d terms) times scale: |dq~_i| <= gamma(d + 1) Q_i, Q_i = |scale| *
//     sum_c |q_c P_c,i|; k~ likewise (d terms): |dk~_j,i| <= gamma(d) K_j,i, K_j,i = sum_c |k_j,c
//     P_c,i|. The float score sums |S| products, and the softmax subtracts the row max in float
//     (one more rounding of a value at most 2 max_j A_j). Hence, with A_j = sum_{i in S} Q_i K_j,i,
//       |dscore_j| <= D = gamma(|S| + 2 d + 4) * max_j A_j.
//   * A logit perturbation of at most D moves p_j by at most p_j (e^{2D} - 1) (both the numerator
//     and the normaliser move), so out_c moves by at most (e^{2D} - 1) * sum_j p_j |v_j,c|.
//   * The float exp is within 4 ulp (Cephes polynomial, ~2 ulp, or libm), the probabilities or
//     the unnormalised output are one float product, and the value sum of N terms in float with
//     online rescaling (one float product per block of 16 tokens and per segment merge) stays
//     within gamma(2 N + 32) of sum_j p_j |v_j,c|.
//   So |out_c - oracle_c| <= [(e^{2D} - 1) + gamma(2 N + 32 + 8)] * sum_j p_j |v_j,c| + 1e-30.
//   Token probabilities: |dp_j| <= p_j [(e^{2D} - 1) + gamma(16)] per head, summed over the g heads
//   (plus gamma(g) for the float sum over heads).
// The bound holds when the kernel selects the same dims as the oracle. Selections near a tie (the
// weights at the boundary, or the energy prefix at the threshold, within float error) may go
// either way; `margin` reports how far the oracle's selections are from such a tie, relative to
// the largest weight (or to the total energy), and tests draw data until it is well clear of the
// float error of the weights (about gamma(d + 1)).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

namespace aqua_oracle {

/// x rounded to a binary format of `significand_bits` significant bits (the implicit one
/// included) whose normal numbers start at 2^min_normal_exp, to nearest with ties to even
/// (std::nearbyint in the default rounding mode), subnormals kept, and infinity beyond
/// max_finite. bf16: (8, -126, 0x1.FEp127); f16: (11, -14, 65504).
inline double round_to_format(double x, int significand_bits, int min_normal_exp, double max_finite) {
  if (x == 0 || !std::isfinite(x)) return x;
  int e = 0;
  std::frexp(x, &e);  // 2^(e-1) <= |x| < 2^e
  const double quantum = std::ldexp(1.0, std::max(e - 1, min_normal_exp) - (significand_bits - 1));
  const double r = std::nearbyint(x / quantum) * quantum;
  return std::abs(r) > max_finite ? std::copysign(std::numeric_limits<double>::infinity(), x) : r;
}
inline double round_to_bf16(double x) {
  return round_to_format(x, 8, -126, 0x1.FEp127);
}
inline double round_to_f16(double x) {
  return round_to_format(x, 11, -14, 65504.0);
}

using index = std::ptrdiff_t;

enum class mode { per_head, group, tile };

struct spec {
  enum class kind { top_k, fraction, energy };
  kind type = kind::top_k;
  index k = 0;
  double value = 0;
  static spec top_k(index k) { return {kind::top_k, k, 0.0}; }
  static spec fraction(double f) { return {kind::fraction, 0, f}; }
  static spec energy(double tau) { return {kind::energy, 0, tau}; }
};

/// Raw inputs of one layer (all but the queries), as the caller hands them to the cache.
struct layer_inputs {
  index hq = 0, hkv = 0, d = 0, n = 0;
  const float* k = nullptr;  // [hkv, n, d], contiguous
  const float* v = nullptr;  // [hkv, n, d]
  /// basis(h, c, j) = P_h[c][j] (column j is projected dim j); empty: identity (keys and queries
  /// arrive in projected coordinates).
  std::function<double(index, index, index)> basis;
  /// Projected dims kept (r; 0 means d) and dims per tile.
  index rank = 0, tile = 16;
  /// Multiplies q.k; NaN means 1 / sqrt(d).
  double scale = std::numeric_limits<double>::quiet_NaN();
  /// Prefill only.
  bool causal = true;
  /// What the cache stores for a projected key element and for a raw value element (identity when
  /// empty).
  std::function<double(double)> stored_key, stored_value;
};

/// One query row's result.
struct row_result {
  std::vector<index> dims;  // the selected dims, ascending
  /// This row's selection margin (that of its list): +inf when its selection keeps everything.
  double margin = std::numeric_limits<double>::infinity();
  std::vector<double> out, tol;
  std::vector<double> probs, prob_tol;  // over the visible tokens
};

struct result {
  std::vector<row_result> rows;  // [hq * m]: head h, query i at h * m + i
  /// Decode: [hkv][n], the group-summed probabilities and their bounds.
  std::vector<std::vector<double>> token_probs, token_prob_tol;
  /// The smallest selection margin over all lists (+inf when every selection keeps everything).
  double margin = std::numeric_limits<double>::infinity();
  const row_result& row(index h, index i = 0, index m = 1) const { return rows[std::size_t(h * m + i)]; }
};

inline double gamma(double terms) {
  const double u = std::ldexp(1.0, -24);
  return terms * u / (1.0 - terms * u);
}

/// The count of dims a fixed spec asks for out of r.
inline index fixed_count(const spec& s, index r) {
  if (s.type == spec::kind::top_k) return std::min(s.k, r);
  const index c = index(std::ceil(s.value * double(r)));
  return std::max<index>(1, std::min(r, c));
}

/// The selection for one list of projected, scaled queries (rows of `qt`, r values each). Returns
/// the dims ascending and lowers `margin` to this selection's distance from a tie.
inline std::vector<index> select(const std::vector<std::vector<double>>& qt, index r, index tile,
                                 bool whole_tiles, const spec& s, double& margin) {
  std::vector<double> weight(std::size_t(r), 0.0), energy(std::size_t(r), 0.0);
  for (const auto& row : qt)
    for (index i = 0; i < r; ++i) {
      weight[std::size_t(i)] += std::abs(row[std::size_t(i)]);
      energy[std::size_t(i)] += row[std::size_t(i)] * row[std::size_t(i)];
    }
  // Candidates: dims, or tiles with their energies (the weight tiles are ranked by).
  const index cands = whole_tiles ? (r + tile - 1) / tile : r;
  std::vector<double> w(std::size_t(cands), 0.0), e(std::size_t(cands), 0.0);
  std::vector<index> width(std::size_t(cands), 1);
  for (index c = 0; c < cands; ++c) {
    if (!whole_tiles) {
      w[std::size_t(c)] = weight[std::size_t(c)];
      e[std::size_t(c)] = energy[std::size_t(c)];
      continue;
    }
    width[std::size_t(c)] = std::min(tile, r - c * tile);
    for (index i = c * tile; i < c * tile + width[std::size_t(c)]; ++i)
      e[std::size_t(c)] += energy[std::size_t(i)];
    w[std::size_t(c)] = e[std::size_t(c)];
  }
  std::vector<index> order(static_cast<std::size_t>(cands));
  std::iota(order.begin(), order.end(), index(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](index a, index b) { return w[std::size_t(a)] > w[std::size_t(b)]; });
  const double wmax = w[std::size_t(order[0])];
  double total = 0;
  for (double x : e) total += x;
  index taken = 0;
  if (s.type == spec::kind::energy) {
    const double target = s.value * total;
    double acc = 0;
    while (taken < cands) {
      const double before = acc;
      acc += e[std::size_t(order[std::size_t(taken++)])];
      if (acc >= target) {
        // Both sides of the threshold must be clear: the prefix before stays below it, this one above.
        if (total > 0) margin = std::min(margin, std::min(target - before, acc - target) / total);
        break;
      }
    }
  } else {
    const index want = fixed_count(s, r);
    index covered = 0;
    while (covered < want) covered += width[std::size_t(order[std::size_t(taken++)])];
  }
  if (taken < cands && wmax > 0)
    margin = std::min(
        margin,
        (w[std::size_t(order[std::size_t(taken - 1)])] - w[std::size_t(order[std::size_t(taken)])]) / wmax);
  std::vector<index> dims;
  for (index t = 0; t < taken; ++t) {
    const index c = order[std::size_t(t)];
    for (index i = 0; i < width[std::size_t(c)]; ++i) dims.push_back(whole_tiles ? c * tile + i : c);
  }
  std::sort(dims.begin(), dims.end());
  return dims;
}

/// The smallest selection margin the tests accept: twice the float error bound of a weight
/// relative to the largest (each |q~_i| is a float dot product of d terms, error gamma(d + 1)
/// sum_c |q_c P_c,i| <= gamma(d + 1) sqrt(d) |q| by Cauchy-Schwarz, against a largest weight of at
/// least |q~| / sqrt(d)), plus the scale's rounding: 2 gamma(d + 2) d.
inline double required_margin(index d) {
  return 2 * gamma(double(d + 2)) * double(d);
}

/// The oracle of one layer: keys projected (and mapped to what is stored) once, then any number of
/// runs over queries, modes and specs.
class oracle {
public:
  explicit oracle(const layer_inputs& in) : in_(in) {
    d_ = in.d;
    r_ = in.rank == 0 ? in.d : in.rank;
    n_ = in.n;
    g_ = in.hq / in.hkv;
    scale_ = std::isnan(in.scale) ? 1.0 / std::sqrt(double(d_)) : in.scale;
    basis_.assign(std::size_t(in.hkv * d_ * r_), 0.0);
    for (index h = 0; h < in.hkv; ++h)
      for (index c = 0; c < d_; ++c)
        for (index j = 0; j < r_; ++j)
          basis_[std::size_t((h * d_ + c) * r_ + j)] = in.basis ? in.basis(h, c, j) : (c == j ? 1.0 : 0.0);
    kt_.resize(std::size_t(in.hkv * n_ * r_));
    kabs_.resize(kt_.size());
    vs_.resize(std::size_t(in.hkv * n_ * d_));
    for (index h = 0; h < in.hkv; ++h)
      for (index j = 0; j < n_; ++j) {
        const float* kr = in.k + (h * n_ + j) * d_;
        project(h, kr, &kt_[std::size_t((h * n_ + j) * r_)], &kabs_[std::size_t((h * n_ + j) * r_)]);
        for (index i = 0; i < r_; ++i) {
          double& x = kt_[std::size_t((h * n_ + j) * r_ + i)];
          if (in.stored_key) x = in.stored_key(x);
        }
        for (index c = 0; c < d_; ++c) {
          const double x = double(in.v[(h * n_ + j) * d_ + c]);
          vs_[std::size_t((h * n_ + j) * d_ + c)] = in.stored_value ? in.stored_value(x) : x;
        }
      }
  }

  /// Decode (one query per head, q [hq, d]): selection lists per mode, token probabilities.
  result decode(const float* q, mode md, const spec& s) const { return run(q, 1, md, s, true); }
  /// Prefill of the last m positions (q [hq, m, d]): one selection per query (group mode: per KV
  /// group and position), causal as in the inputs.
  result prefill(const float* q, index m, mode md, const spec& s) const { return run(q, m, md, s, false); }

private:
  void project(index h, const float* x, double* out, double* mag) const {
    for (index j = 0; j < r_; ++j) {
      double acc = 0, a = 0;
      for (index c = 0; c < d_; ++c) {
        const double t = double(x[c]) * basis_[std::size_t((h * d_ + c) * r_ + j)];
        acc += t;
        a += std::abs(t);
      }
      out[j] = acc;
      mag[j] = a;
    }
  }

  result run(const float* q, index m, mode md, const spec& s, bool decode) const {
    const index hq = in_.hq, hkv = in_.hkv, d = d_, r = r_, n = n_, g = g_;
    // Projected, scaled queries and the magnitudes Q_i of their float error bound.
    std::vector<std::vector<double>> qt(std::size_t(hq * m), std::vector<double>(std::size_t(r))), qabs = qt;
    for (index h = 0; h < hq; ++h)
      for (index i = 0; i < m; ++i) {
        const std::size_t row = std::size_t(h * m + i);
        project(h / g, q + (h * m + i) * d, qt[row].data(), qabs[row].data());
        for (index j = 0; j < r; ++j) {
          qt[row][std::size_t(j)] *= scale_;
          qabs[row][std::size_t(j)] *= std::abs(scale_);
        }
      }
    result res;
    res.rows.resize(std::size_t(hq * m));
    const bool whole_tiles = md == mode::tile;
    const bool shared = decode ? md != mode::per_head : md == mode::group;
    if (shared) {
      for (index kv = 0; kv < hkv; ++kv)
        for (index i = 0; i < m; ++i) {
          double margin = std::numeric_limits<double>::infinity();
          std::vector<std::vector<double>> group;
          for (index h = kv * g; h < (kv + 1) * g; ++h) group.push_back(qt[std::size_t(h * m + i)]);
          const auto dims = select(group, r, in_.tile, whole_tiles, s, margin);
          for (index h = kv * g; h < (kv + 1) * g; ++h) {
            res.rows[std::size_t(h * m + i)].dims = dims;
            res.rows[std::size_t(h * m + i)].margin = margin;
          }
        }
    } else {
      for (index row = 0; row < hq * m; ++row) {
        auto& rr = res.rows[std::size_t(row)];
        rr.dims = select({qt[std::size_t(row)]}, r, in_.tile, whole_tiles, s, rr.margin);
      }
    }
    for (const auto& rr : res.rows) res.margin = std::min(res.margin, rr.margin);
    if (decode) {
      res.token_probs.assign(std::size_t(hkv), std::vector<double>(std::size_t(n), 0.0));
      res.token_prob_tol = res.token_probs;
    }
    for (index h = 0; h < hq; ++h)
      for (index i = 0; i < m; ++i) {
        row_result& rr = res.rows[std::size_t(h * m + i)];
        const auto& qh = qt[std::size_t(h * m + i)];
        const auto& qa = qabs[std::size_t(h * m + i)];
        const index kv = h / g;
        const index visible = (!decode && in_.causal) ? n - m + i + 1 : n;
        std::vector<double> score(static_cast<std::size_t>(visible));
        double mx = -std::numeric_limits<double>::infinity(), amax = 0;
        for (index j = 0; j < visible; ++j) {
          double sc = 0, a = 0;
          for (index dim : rr.dims) {
            sc += qh[std::size_t(dim)] * kt_[std::size_t((kv * n + j) * r + dim)];
            a += qa[std::size_t(dim)] * kabs_[std::size_t((kv * n + j) * r + dim)];
          }
          score[std::size_t(j)] = sc;
          mx = std::max(mx, sc);
          amax = std::max(amax, a);
        }
        const double dscore = gamma(double(rr.dims.size()) + 2.0 * double(d) + 4) * amax;
        const double spread = std::expm1(2 * dscore);
        double sum = 0;
        for (double& x : score) sum += (x = std::exp(x - mx));
        rr.probs.resize(std::size_t(visible));
        rr.prob_tol.resize(std::size_t(visible));
        rr.out.assign(std::size_t(d), 0.0);
        rr.tol.assign(std::size_t(d), 0.0);
        for (index j = 0; j < visible; ++j) {
          const double p = score[std::size_t(j)] / sum;
          rr.probs[std::size_t(j)] = p;
          rr.prob_tol[std::size_t(j)] = p * (spread + gamma(16));
          for (index c = 0; c < d; ++c) {
            const double v = vs_[std::size_t((kv * n + j) * d + c)];
            rr.out[std::size_t(c)] += p * v;
            rr.tol[std::size_t(c)] += p * std::abs(v);
          }
          if (decode) {
            res.token_probs[std::size_t(kv)][std::size_t(j)] += p;
            res.token_prob_tol[std::size_t(kv)][std::size_t(j)] += p * (spread + gamma(16 + double(g)));
          }
        }
        for (double& t : rr.tol) t = t * (spread + gamma(2.0 * double(visible) + 40)) + 1e-30;
      }
    return res;
  }

  layer_inputs in_;
  index d_ = 0, r_ = 0, n_ = 0, g_ = 1;
  double scale_ = 0;
  std::vector<double> basis_, kt_, kabs_, vs_;
};

}  // namespace aqua_oracle
