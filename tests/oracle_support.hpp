// The bridge between the library's types and the independent AQUA oracle (aqua_oracle.hpp): the
// oracle inputs of a random layer, queries drawn clear of selection ties, and NaN-safe comparison
// of the library's float outputs with the oracle's double results within its stated bound.
#pragma once

#include <aqua/attention.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "aqua_oracle.hpp"
#include "kernel_support.hpp"
#include "test_support.hpp"

namespace aqua_test {

inline aqua_oracle::mode oracle_mode(aqua::selection_mode m) {
  return m == aqua::selection_mode::per_head ? aqua_oracle::mode::per_head
         : m == aqua::selection_mode::group  ? aqua_oracle::mode::group
                                             : aqua_oracle::mode::tile;
}

inline aqua_oracle::spec oracle_spec(const aqua::selection_spec& s) {
  switch (s.type) {
    case aqua::selection_spec::kind::top_k:
      return aqua_oracle::spec::top_k(s.k);
    case aqua::selection_spec::kind::fraction:
      return aqua_oracle::spec::fraction(s.value);
    case aqua::selection_spec::kind::energy:
      break;
  }
  return aqua_oracle::spec::energy(s.value);
}

inline std::string spec_name(const aqua::selection_spec& s) {
  std::ostringstream o;
  if (s.type == aqua::selection_spec::kind::top_k) o << "top_k(" << s.k << ")";
  if (s.type == aqua::selection_spec::kind::fraction) o << "fraction(" << s.value << ")";
  if (s.type == aqua::selection_spec::kind::energy) o << "energy(" << s.value << ")";
  return o.str();
}

/// A key and a value storage type, for the 16-bit oracle cases.
struct storage_pair {
  aqua::storage_type key, value;
};

/// `opt` storing keys and values as `types`, with signed-permutation bases: their float projection
/// is exact, so the cache rounds exactly the numbers the oracle rounds.
inline random_layer::options with_storage(random_layer::options opt, storage_pair types) {
  opt.key_type = types.key;
  opt.value_type = types.value;
  opt.permutation_bases = true;
  return opt;
}

/// The oracle's inputs for a random_layer: its raw keys, values and bases as handed to the cache
/// (identity when the layer is unprojected), the cache's rank and tile width.
inline aqua_oracle::layer_inputs oracle_inputs(const random_layer& L) {
  aqua_oracle::layer_inputs in;
  in.hq = L.hq;
  in.hkv = L.hkv;
  in.d = L.d;
  in.n = L.n;
  in.k = L.k.data();
  in.v = L.v.data();
  in.rank = L.cache.rank();
  in.tile = L.cache.tile_dims();
  const auto rounding = [](aqua::storage_type t) -> std::function<double(double)> {
    if (t == aqua::storage_type::bf16) return aqua_oracle::round_to_bf16;
    if (t == aqua::storage_type::f16) return aqua_oracle::round_to_f16;
    return nullptr;
  };
  in.stored_key = rounding(L.key_type);
  in.stored_value = rounding(L.value_type);
  if (!L.bases.empty()) {
    const auto* bases = &L.bases;
    in.basis = [bases](index_t h, index_t c, index_t j) { return double((*bases)[std::size_t(h)](c, j)); };
  }
  return in;
}

/// Decode queries q [hq, d] drawn N(0, 1) from seeds seed, seed + 7919, ... (keep them apart from
/// the layer's basis seeds: a query drawn from a basis's seed lies in its leading dims) until every selection
/// the oracle makes for (mode, spec) is clear of ties by aqua_oracle::required_margin(d) (the float kernels
/// may break a tie either way; data near one tests nothing). Returns the oracle's result.
inline aqua_oracle::result clear_decode_queries(const aqua_oracle::oracle& o, std::vector<float>& q,
                                                index_t d, unsigned seed, aqua::selection_mode mode,
                                                const aqua::selection_spec& spec) {
  for (unsigned attempt = 0; attempt < 200; ++attempt) {
    fill_normal(q, seed + 7919 * attempt);
    auto res = o.decode(q.data(), oracle_mode(mode), oracle_spec(spec));
    if (res.margin >= aqua_oracle::required_margin(d)) return res;
  }
  FAIL("no query draw clear of selection ties in 200 attempts");
  return {};
}

/// Outcome of holding float outputs against the oracle: how many values lie outside the bound
/// (a NaN or infinite value always does) and where the first one is.
struct bound_report {
  index_t checked = 0, outside = 0;
  double worst_ratio = 0;  // max |got - want| / tol, NaN once any value was NaN
  std::string first;

  void add(double got, double want, double tol, const char* what, index_t a, index_t b) {
    ++checked;
    const double diff = std::abs(got - want);
    worst_ratio = max_or_nan(worst_ratio, diff / tol);
    if (!(diff <= tol)) {  // NaN-safe: a NaN difference is outside
      if (outside++ == 0) {
        std::ostringstream o;
        o.precision(9);
        o << what << "[" << a << ", " << b << "] = " << got << ", oracle " << want << ", bound " << tol;
        first = o.str();
      }
    }
  }
  std::string summary() const {
    std::ostringstream o;
    o << outside << " of " << checked << " outside the bound; worst |diff| / bound " << worst_ratio
      << (first.empty() ? "" : "; first: ") << first;
    return o.str();
  }
};

/// out [hq * m, d] (row h * m + i) against the oracle rows; rows whose selection margin is below
/// required_margin(d) are left out (counted in `ambiguous`).
inline void compare_rows(bound_report& rep, const std::vector<float>& out, const aqua_oracle::result& res,
                         index_t d, index_t* ambiguous = nullptr) {
  for (std::size_t row = 0; row < res.rows.size(); ++row) {
    const auto& rr = res.rows[row];
    if (rr.margin < aqua_oracle::required_margin(d)) {
      if (ambiguous) ++*ambiguous;
      continue;
    }
    for (index_t c = 0; c < d; ++c)
      rep.add(double(out[row * std::size_t(d) + std::size_t(c)]), rr.out[std::size_t(c)],
              rr.tol[std::size_t(c)], "out", index_t(row), c);
  }
}

/// token_probs [hkv, n] against the oracle's group-summed probabilities.
inline void compare_token_probs(bound_report& rep, const std::vector<float>& probs,
                                const aqua_oracle::result& res, index_t n) {
  for (std::size_t kv = 0; kv < res.token_probs.size(); ++kv)
    for (index_t j = 0; j < n; ++j)
      rep.add(double(probs[kv * std::size_t(n) + std::size_t(j)]), res.token_probs[kv][std::size_t(j)],
              res.token_prob_tol[kv][std::size_t(j)] + 1e-30, "token_probs", index_t(kv), j);
}

/// The largest |a - b| / tol over two oracle results' outputs: how far apart two rules are in units
/// of the bound (a test of the oracle's power to tell them apart).
inline double oracle_distance(const aqua_oracle::result& a, const aqua_oracle::result& b) {
  double worst = 0;
  for (std::size_t row = 0; row < a.rows.size(); ++row)
    for (std::size_t c = 0; c < a.rows[row].out.size(); ++c)
      worst = max_or_nan(worst, std::abs(a.rows[row].out[c] - b.rows[row].out[c]) / a.rows[row].tol[c]);
  return worst;
}

}  // namespace aqua_test
