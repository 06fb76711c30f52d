// AQUA decode / prefill engines over the tiled cache (a detail::cache_layout). Public entry points
// (attention.hpp) validate; nothing here checks arguments.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <limits>
#include <vector>

#include "aqua/detail/aqua_kernels.hpp"
#include "aqua/detail/cache_layout.hpp"
#include "aqua/detail/parallel.hpp"
#include "aqua/detail/ranking.hpp"
#include "aqua/detail/simd.hpp"
#include "aqua/eigen.hpp"
#include "aqua/executor.hpp"
#include "aqua/selection_spec.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {
namespace detail {

/// What a call measured per phase (aqua::attention_profile is the public copy). Seconds are CPU
/// seconds of the worker threads where the platform reports them, summed over workers.
struct phase_times {
  double select_seconds = 0, score_seconds = 0, softmax_seconds = 0, value_seconds = 0;
  /// Decode: fraction of the key tiles (bytes) of the cache that the call read.
  double key_fraction_read = 0;
};

/// Model features applied to the scaled scores (the window, softcap, sinks and masks of
/// attention_options), as plain pointers and strides.
struct score_features {
  float softcap = 0;            // > 0: s -> softcap * tanh(s / softcap), before the mask is added
  index_t window = 0;           // > 0: the query at position p sees positions p - window + 1 .. p only
  const float* mask = nullptr;  // additive: query i's row at mask + i * mask_row, token j at j * mask_col
  index_t mask_row = 0, mask_col = 0;
  const float* sinks = nullptr;  // per query head h: sinks[h * sinks_stride] joins the normaliser
  index_t sinks_stride = 0;
  bool transforms_scores() const noexcept { return softcap > 0 || mask != nullptr || window > 0; }
  float sink(index_t h) const noexcept {
    return sinks ? sinks[h * sinks_stride] : -std::numeric_limits<float>::infinity();
  }
  /// The first position a query at position `position` sees.
  index_t first_visible(index_t position) const noexcept {
    return window > 0 ? std::max<index_t>(0, position - window + 1) : 0;
  }
};

/// Everything a decode call decided before touching the cache.
struct decode_plan {
  index_t hq = 0, hkv = 0, g = 0, d = 0, r = 0, n = 0, tile = 0;
  bool shared = true;  // one dim list per KV group (group, tile, dense) or one per head
  // lists: per group (shared) or per head; dims[list * r ...], counts[list]
  const std::int32_t* dims = nullptr;
  const index_t* counts = nullptr;
  const float* qsel = nullptr;  // [hq, r]: head h's scaled query at its list's dims
  score_features features;      // the decode query is at position n - 1
  /// Tokens before the window are not read: streams start at the block holding its first token.
  index_t stream_begin() const noexcept { return features.first_visible(n - 1) / kv_block * kv_block; }
};

/// One sequence of a decode call: its cache, its plan and where its results go.
struct planned_decode {
  cache_layout cache;
  decode_plan plan;
  matrix_view<float> out, token_probs, logits;
  vector_view<float> lse;
  bool keeps_logits() const noexcept { return token_probs.size() || logits.size(); }
};

/// Tokens [t0, t1) of KV head kv of sequence seq: what one worker decodes into partial results
/// (running max, normaliser, unnormalised output) that the call then merges.
struct decode_piece {
  index_t seq = 0, kv = 0, t0 = 0, t1 = 0;
};

/// The scratch behind aqua::aqua_workspace: per worker, and for the whole call.
struct engine_workspace {
  struct worker {
    std::vector<float> scores, acc, m, alpha, qsel, qblock, qinter, qunion;
    std::vector<double> l, energy;
    std::vector<double> token_mass;  // prefill: [Hkv, N] probabilities summed over this worker's rows
    std::vector<const unsigned char*> rows, prefetch_rows, rows_inter, union_rows;
    std::vector<float> values;  // prefill: 16-bit values widened for the P V product
    std::vector<char> row_used;
    std::vector<std::int32_t> dims, rank, query_dims;
    std::vector<index_t> counts, group_union;
    row_matrix<float> logits, proj;
    phase_times profile;
  };
  /// The arrays a decode_plan points into, one set per sequence of the call.
  struct plan_arrays {
    std::vector<float> qproj, qsel;
    std::vector<std::int32_t> dims;
    std::vector<index_t> counts;
  };
  std::vector<worker> workers;
  std::vector<plan_arrays> plans;
  std::vector<float> part_acc, part_m, logits, weight;
  std::vector<double> energy;  // squares of the projected queries, in double like select_top's
  std::vector<double> part_l, piece_weights;
  std::vector<float> prob_row;  // one head's token probabilities before they join token_probs
  std::vector<std::int32_t> rank;
  std::vector<index_t> first_piece, worker_piece, logits_offset;
  std::vector<decode_piece> pieces;
  std::vector<planned_decode> jobs;  // batched decode: one per sequence
  // Prefill query grouping (group_queries) with another ratio numerator, for tests and
  // measurements. Here, not a global, so forcing grouping off or on touches only the calls given
  // this workspace and cannot leak into other calls or threads.
  index_t prefill_union_override = 0;  // 0: the tuned constant; 1: never group
};

/// Profiles count CPU time of the calling thread where the platform has it, so phases measured on
/// a machine shared with other jobs leave out the time the thread was descheduled.
struct profile_clock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<profile_clock>;
  static constexpr bool is_steady = true;
  static time_point now() noexcept {
#if defined(CLOCK_THREAD_CPUTIME_ID)
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return time_point(duration(rep(ts.tv_sec) * 1000000000 + rep(ts.tv_nsec)));
#else
    return time_point(
        std::chrono::duration_cast<duration>(std::chrono::steady_clock::now().time_since_epoch()));
#endif
  }
};
inline double seconds_since(profile_clock::time_point t0) {
  return std::chrono::duration<double>(profile_clock::now() - t0).count();
}

/// The row of projected dim `dim` in key block 0 of KV head kv (16 elements of the key type).
inline const unsigned char* key_row(const cache_layout& cache, index_t kv, index_t dim) {
  const index_t tile = cache.tile_dims();
  return static_cast<const unsigned char*>(cache.key_tile_data(kv, dim / tile)) +
         (dim % tile) * kv_block * storage_bytes(cache.key_type());
}
/// Bytes from one key block to the next within a tile.
inline index_t key_block_bytes(const cache_layout& cache) {
  return cache.tile_dims() * kv_block * storage_bytes(cache.key_type());
}

/// Selection of one query (or summed group) into ascending dims; returns the count.
/// `mode_tile` picks whole tiles by energy instead of single dims.
template <class = void>
inline index_t select_dims(const float* weight, const double* energy, index_t r, index_t tile, bool mode_tile,
                           const selection_spec& spec, std::int32_t* rank_scratch, std::int32_t* dims_out) {
  if (!mode_tile) return select_ranked_ascending(weight, energy, r, spec, rank_scratch, dims_out);
  const index_t tiles = (r + tile - 1) / tile;
  double tile_energy[1024];
  double* te = tile_energy;
  std::vector<double> big;
  if (tiles > 1024) {
    big.resize(static_cast<std::size_t>(tiles));
    te = big.data();
  }
  for (index_t t = 0; t < tiles; ++t) {
    double e = 0;
    for (index_t i = t * tile; i < std::min(r, (t + 1) * tile); ++i) e += energy[i];
    te[t] = e;
  }
  index_t chosen;
  if (spec.type == selection_spec::kind::energy) {
    chosen = select_ranked(te, te, tiles, spec, rank_scratch);
  } else {
    // Whole tiles in rank order until k dims are covered: ceil(k / tile) tiles would fall short
    // when the narrower last tile (r not a multiple of the width) ranks among them.
    const index_t want = selection_count(spec, r);
    select_ranked(te, te, tiles, selection_spec::top_k(tiles), rank_scratch);
    index_t covered = 0;
    for (chosen = 0; chosen < tiles && covered < want; ++chosen)
      covered += std::min(r, (rank_scratch[chosen] + index_t{1}) * tile) - rank_scratch[chosen] * tile;
  }
  std::sort(rank_scratch, rank_scratch + chosen);
  index_t count = 0;
  for (index_t c = 0; c < chosen; ++c)
    for (index_t i = rank_scratch[c] * tile; i < std::min(r, (rank_scratch[c] + 1) * tile); ++i)
      dims_out[count++] = static_cast<std::int32_t>(i);
  return count;
}

/// Projects and scales the queries, selects dims and gathers the selected query values.
/// `dense` uses every kept dim (exact attention over the cache).
/// `arrays` receives what the plan points to; `ws` lends the selection scratch.
template <class = void>
inline void plan_decode(const matrix_view<const float>& q, const cache_layout& cache,
                        const selection_spec& spec, selection_mode mode, bool dense, double scale,
                        const score_features& features, engine_workspace& ws,
                        engine_workspace::plan_arrays& arrays, decode_plan& p) {
  p.hq = q.extent(0);
  p.hkv = cache.kv_heads();
  p.g = p.hq / p.hkv;
  p.d = cache.head_dim();
  p.r = cache.rank();
  p.n = cache.size();
  p.tile = cache.tile_dims();
  p.shared = dense || mode != selection_mode::per_head;
  const index_t r = p.r;
  arrays.qproj.resize(static_cast<std::size_t>(p.hq * r));
  for (index_t h = 0; h < p.hq; ++h) {
    float* qp = arrays.qproj.data() + h * r;
    cache.project(h / p.g, q.data() + h * q.stride(0), q.stride(1), qp);
    for (index_t c = 0; c < r; ++c) qp[c] = static_cast<float>(qp[c] * scale);
  }
  const index_t lists = p.shared ? p.hkv : p.hq;
  arrays.dims.resize(static_cast<std::size_t>(lists * r));
  arrays.counts.resize(static_cast<std::size_t>(lists));
  ws.rank.resize(static_cast<std::size_t>(std::max<index_t>(r, 1)));
  ws.weight.resize(static_cast<std::size_t>(r));
  ws.energy.resize(static_cast<std::size_t>(r));
  for (index_t list = 0; list < lists; ++list) {
    std::int32_t* dl = arrays.dims.data() + list * r;
    if (dense) {
      for (index_t c = 0; c < r; ++c) dl[c] = static_cast<std::int32_t>(c);
      arrays.counts[static_cast<std::size_t>(list)] = r;
      continue;
    }
    const index_t h0 = p.shared ? list * p.g : list, hn = p.shared ? p.g : 1;
    std::fill(ws.weight.begin(), ws.weight.end(), 0.0f);
    std::fill(ws.energy.begin(), ws.energy.end(), 0.0);
    for (index_t h = h0; h < h0 + hn; ++h) {
      const float* qp = arrays.qproj.data() + h * r;
      for (index_t c = 0; c < r; ++c) {
        ws.weight[static_cast<std::size_t>(c)] += std::abs(qp[c]);
        ws.energy[static_cast<std::size_t>(c)] += double(qp[c]) * double(qp[c]);
      }
    }
    arrays.counts[static_cast<std::size_t>(list)] =
        select_dims(ws.weight.data(), ws.energy.data(), r, p.tile, mode == selection_mode::tile, spec,
                    ws.rank.data(), dl);
  }
  arrays.qsel.resize(static_cast<std::size_t>(p.hq * r));
  for (index_t h = 0; h < p.hq; ++h) {
    const index_t list = p.shared ? h / p.g : h;
    const std::int32_t* dl = arrays.dims.data() + list * r;
    for (index_t s = 0; s < arrays.counts[static_cast<std::size_t>(list)]; ++s)
      arrays.qsel[static_cast<std::size_t>(h * r + s)] =
          arrays.qproj[static_cast<std::size_t>(h * r + dl[s])];
  }
  p.dims = arrays.dims.data();
  p.counts = arrays.counts.data();
  p.qsel = arrays.qsel.data();
  p.features = features;
  if (features.window >= p.n) p.features.window = 0;  // a window over every token is none
}

/// Fraction of key tiles read: the union of the tiles holding selected dims, over all KV heads.
inline double key_fraction(const decode_plan& p) {
  index_t read = 0;
  const index_t tiles = (p.r + p.tile - 1) / p.tile;
  std::vector<char> touched(static_cast<std::size_t>(tiles));
  for (index_t kv = 0; kv < p.hkv; ++kv) {
    std::fill(touched.begin(), touched.end(), 0);
    const index_t l0 = p.shared ? kv : kv * p.g, ln = p.shared ? 1 : p.g;
    for (index_t list = l0; list < l0 + ln; ++list)
      for (index_t s = 0; s < p.counts[list]; ++s)
        touched[static_cast<std::size_t>(p.dims[list * p.r + s] / p.tile)] = 1;
    for (char t : touched) read += t;
  }
  return double(read) / double(tiles * p.hkv);
}

/// s[j] = cap * tanh(s[j] / cap) for finite scores, through the vectorised exp:
/// tanh(|x|) = (1 - e^(-2|x|)) / (1 + e^(-2|x|)); its absolute error is a few float roundings of
/// cap, as small as the rounding of a logit of that size.
inline void softcap_in_place(float* s, index_t n, float cap) {
  constexpr index_t piece = 128;
  const float minus_two_over_cap = -2.0f / cap;
  float e[piece];
  for (index_t j0 = 0; j0 < n; j0 += piece) {
    const index_t cnt = std::min(piece, n - j0);
    for (index_t j = 0; j < cnt; ++j) e[j] = std::abs(s[j0 + j]) * minus_two_over_cap;
    exp_shift_sum(e, cnt, 0.0f);
    for (index_t j = 0; j < cnt; ++j)
      s[j0 + j] = std::copysign(cap * ((1.0f - e[j]) / (1.0f + e[j])), s[j0 + j]);
  }
}

/// The features on the scores s[0..cnt) of tokens t .. t + cnt of a query at `position` whose mask
/// row starts at mask_row (null: no mask): softcap, then the additive mask, then the window.
inline void apply_score_features(const score_features& f, const float* mask_row, index_t position, index_t t,
                                 index_t cnt, float* s) {
  if (f.softcap > 0) softcap_in_place(s, cnt, f.softcap);
  if (mask_row)
    for (index_t j = 0; j < cnt; ++j) s[j] += mask_row[(t + j) * f.mask_col];
  const index_t first = f.first_visible(position);
  for (index_t j = 0; j < std::min(cnt, first - t); ++j) s[j] = -std::numeric_limits<float>::infinity();
}

/// One KV head over tokens [t0, t1) (t0 a multiple of 16): partial results (running max m,
/// normaliser l, unnormalised output acc) for the group's g heads. With AVX2 and equal-size
/// selections the fused kernel runs score, online softmax and value per 16-token block (its
/// profile time is reported as score time); otherwise scores, softmax and values go per chunk of
/// decode_chunk tokens.
template <class = void>
inline void decode_range(const cache_layout& cache, const decode_plan& p, index_t kv, index_t t0, index_t t1,
                         engine_workspace::worker& w, float* acc, float* m, double* l, float* logits_out,
                         phase_times* prof) {
  const index_t g = p.g, r = p.r, d = p.d, C = decode_chunk, bs = key_block_bytes(cache);
  const storage_type kt = cache.key_type(), vt = cache.value_type();
  const index_t lists = p.shared ? 1 : g;
  w.rows.resize(static_cast<std::size_t>(lists * r));
  w.scores.resize(static_cast<std::size_t>(g * C));
  w.alpha.resize(static_cast<std::size_t>(g));
  for (index_t li = 0; li < lists; ++li) {
    const index_t list = p.shared ? kv : kv * g + li;
    for (index_t s = 0; s < p.counts[list]; ++s) {
      const std::int32_t dim = p.dims[list * r + s];
      w.rows[static_cast<std::size_t>(li * r + s)] = key_row(cache, kv, dim);
    }
  }
  for (index_t h = 0; h < g; ++h) {
    m[h] = -std::numeric_limits<float>::infinity();
    l[h] = 0;
  }
  std::fill(acc, acc + g * d, 0.0f);
  const auto* values = static_cast<const unsigned char*>(cache.values_data(kv));
  const index_t value_row_bytes = d * storage_bytes(vt);
  const float* qsel = p.qsel + kv * g * r;
  float* scores = w.scores.data();
  float* alpha = w.alpha.data();
  bool equal = true;
  if (!p.shared)
    for (index_t h = 1; h < g; ++h) equal = equal && p.counts[kv * g + h] == p.counts[kv * g];
  // The fused kernel has no place for score features: with them every selection takes the chunked path.
  if (equal && !p.features.transforms_scores()) {
    fused_args fa;
    fa.rows = w.rows.data();
    fa.ns = p.counts[p.shared ? kv : kv * g];
    fa.block_bytes = bs;
    fa.values = values;
    fa.d = d;
    fa.valid_end = t1;
    fa.logits_stride = p.n;
    auto t_start = prof ? profile_clock::now() : profile_clock::time_point();
    bool done = true;
    if (!p.shared) {
      w.prefetch_rows.resize(static_cast<std::size_t>(r));
      w.row_used.resize(static_cast<std::size_t>(r));
    }
    for (index_t hb = 0; hb < g && done; hb += 4) {
      const index_t hn = std::min<index_t>(4, g - hb);
      w.qinter.resize(static_cast<std::size_t>(hn * fa.ns));
      for (index_t s = 0; s < fa.ns; ++s)
        for (index_t h = 0; h < hn; ++h)
          w.qinter[static_cast<std::size_t>(s * hn + h)] = qsel[(hb + h) * r + s];
      fa.q = w.qinter.data();
      fa.rows = w.rows.data();
      if (!p.shared) {
        // The distinct rows of these heads' selections, for the kernel's prefetch.
        std::fill(w.row_used.begin(), w.row_used.end(), char(0));
        for (index_t h = hb; h < hb + hn; ++h)
          for (index_t s = 0; s < fa.ns; ++s)
            w.row_used[static_cast<std::size_t>(p.dims[(kv * g + h) * r + s])] = 1;
        index_t distinct = 0;
        for (index_t dim = 0; dim < r; ++dim)
          if (w.row_used[static_cast<std::size_t>(dim)])
            w.prefetch_rows[static_cast<std::size_t>(distinct++)] = key_row(cache, kv, dim);
        fa.prefetch_rows = w.prefetch_rows.data();
        fa.prefetch_count = distinct;
        // The heads' rows interleaved like their queries.
        w.rows_inter.resize(static_cast<std::size_t>(hn * fa.ns));
        for (index_t s = 0; s < fa.ns; ++s)
          for (index_t h = 0; h < hn; ++h)
            w.rows_inter[static_cast<std::size_t>(s * hn + h)] =
                w.rows[static_cast<std::size_t>((hb + h) * r + s)];
        fa.rows = w.rows_inter.data();
      }
      fa.logits = logits_out ? logits_out + (kv * g + hb) * p.n : nullptr;
      done = fused_decode(static_cast<int>(hn), !p.shared, fa, kt, vt, t0 / kv_block,
                          (t1 + kv_block - 1) / kv_block, m + hb, l + hb, acc + hb * d, d);
    }
    if (done) {
      if (prof) prof->score_seconds += seconds_since(t_start);
      return;
    }
  }
  for (index_t t = t0; t < t1; t += C) {
    const index_t cnt = std::min(C, t1 - t), nb = (cnt + kv_block - 1) / kv_block, b0 = t / kv_block;
    auto t_start = prof ? profile_clock::now() : profile_clock::time_point();
    const side_prefetch side{reinterpret_cast<const char*>(values + t * value_row_bytes),
                             kv_block * value_row_bytes};
    if (p.shared) {
      const index_t ns = p.counts[kv];
      for (index_t hb = 0; hb < g; hb += 4)
        score_dispatch(static_cast<int>(std::min<index_t>(4, g - hb)), kt, w.rows.data(), ns, qsel + hb * r,
                       r, bs, b0, nb, scores + hb * C, C, true, hb == 0 ? side : side_prefetch{});
    } else {
      // Fixed-size selections have equal counts: the heads are scored together, each on its own
      // rows. Energy selections may differ per head: one head at a time.
      if (equal) {
        for (index_t hb = 0; hb < g; hb += 4)
          score_lists_dispatch(static_cast<int>(std::min<index_t>(4, g - hb)), kt, w.rows.data() + hb * r, r,
                               p.counts[kv * g], qsel + hb * r, r, bs, b0, nb, scores + hb * C, C,
                               hb == 0 ? side : side_prefetch{});
      } else {
        for (index_t h = 0; h < g; ++h)
          score_dispatch(1, kt, w.rows.data() + h * r, p.counts[kv * g + h], qsel + h * r, r, bs, b0, nb,
                         scores + h * C, C, true);
      }
    }
    auto t_soft = prof ? profile_clock::now() : profile_clock::time_point();
    for (index_t h = 0; h < g; ++h) {
      float* s = scores + h * C;
      if (p.features.transforms_scores())
        apply_score_features(p.features, p.features.mask, p.n - 1, t, cnt, s);
      if (logits_out)
        std::memcpy(logits_out + (kv * g + h) * p.n + t, s, static_cast<std::size_t>(cnt) * sizeof(float));
      const float mn = std::max(m[h], row_max(s, cnt));
      if (mn == -std::numeric_limits<float>::infinity()) {
        // Every score so far is masked: this chunk adds nothing (zero probabilities).
        std::fill(s, s + cnt, 0.0f);
        alpha[h] = 1.0f;
        continue;
      }
      alpha[h] = m[h] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(m[h] - mn);
      const double sum = exp_shift_sum(s, cnt, mn);
      l[h] = l[h] * alpha[h] + sum;
      m[h] = mn;
    }
    auto t_value = prof ? profile_clock::now() : profile_clock::time_point();
    for (index_t hb = 0; hb < g; hb += 4)
      value_dispatch(static_cast<int>(std::min<index_t>(4, g - hb)), vt, values + t * value_row_bytes, d, cnt,
                     scores + hb * C, C, acc + hb * d, d, alpha + hb);
    if (prof) {
      prof->score_seconds += std::chrono::duration<double>(t_soft - t_start).count();
      prof->softmax_seconds += std::chrono::duration<double>(t_value - t_soft).count();
      prof->value_seconds += seconds_since(t_value);
    }
  }
}

/// Query head h of a planned decode in double precision, probabilities normalised before the
/// values are summed: the slow path for the rare head whose float value accumulator overflowed.
template <class = void>
inline void decode_head_double(const cache_layout& cache, const decode_plan& p, index_t h, float* o,
                               index_t o_stride) {
  const index_t kv = h / p.g, n = p.n, d = p.d, r = p.r;
  const index_t list = p.shared ? kv : h;
  const index_t ns = p.counts[list];
  const std::int32_t* dims = p.dims + list * r;
  const float* qh = p.qsel + h * r;
  std::vector<double> sc(static_cast<std::size_t>(n), 0.0);
  for (index_t s = 0; s < ns; ++s)
    for (index_t j = 0; j < n; ++j)
      sc[static_cast<std::size_t>(j)] += double(qh[s]) * cache.key(kv, j, dims[s]);
  const score_features& f = p.features;
  const index_t first = f.first_visible(n - 1);
  for (index_t j = 0; j < n; ++j) {
    double& x = sc[static_cast<std::size_t>(j)];
    if (f.softcap > 0) x = f.softcap * std::tanh(x / f.softcap);
    if (f.mask) x += f.mask[j * f.mask_col];
    if (j < first) x = -std::numeric_limits<double>::infinity();
  }
  const double mx = std::max(*std::max_element(sc.begin(), sc.end()), double(f.sink(h)));
  double total = std::exp(double(f.sink(h)) - mx);
  for (double& x : sc) total += (x = std::exp(x - mx));
  std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
  for (index_t j = 0; j < n; ++j) {
    const double w = sc[static_cast<std::size_t>(j)] / total;
    for (index_t c = 0; c < d; ++c) acc[static_cast<std::size_t>(c)] += w * cache.value(kv, j, c);
  }
  for (index_t c = 0; c < d; ++c) o[c * o_stride] = static_cast<float>(acc[static_cast<std::size_t>(c)]);
}

/// Cuts the call's work into pieces: the (sequence, KV head) token streams (from the window's
/// first block to the end) laid end to end in chunks of decode_chunk tokens, divided into `workers` runs of
/// near-equal chunk counts, so a batch of short or unequal sequences keeps every worker busy and a stream is
/// split only where a run ends. Pieces are in stream order: stream i's are [first_piece[i], first_piece[i +
/// 1]), worker w's [worker_piece[w], worker_piece[w + 1]). Returns the number of workers.
template <class = void>
inline int plan_pieces(const planned_decode* seqs, index_t count, int threads, engine_workspace& ws) {
  const index_t chunk = decode_chunk;
  index_t streams = 0, total = 0;
  for (index_t s = 0; s < count; ++s) {
    streams += seqs[s].plan.hkv;
    total += seqs[s].plan.hkv * ((seqs[s].plan.n - seqs[s].plan.stream_begin() + chunk - 1) / chunk);
  }
  const index_t workers = std::max<index_t>(1, std::min<index_t>(threads, total));
  auto boundary = [&](index_t w) { return total * w / workers; };
  ws.pieces.clear();
  ws.first_piece.resize(static_cast<std::size_t>(streams + 1));
  ws.worker_piece.resize(static_cast<std::size_t>(workers + 1));
  ws.worker_piece[0] = 0;
  index_t cursor = 0, w = 0, stream = 0;
  for (index_t s = 0; s < count; ++s) {
    const index_t n = seqs[s].plan.n, begin = seqs[s].plan.stream_begin();
    const index_t chunks = (n - begin + chunk - 1) / chunk;
    for (index_t kv = 0; kv < seqs[s].plan.hkv; ++kv, ++stream) {
      ws.first_piece[static_cast<std::size_t>(stream)] = static_cast<index_t>(ws.pieces.size());
      for (index_t at = cursor; at < cursor + chunks;) {
        while (boundary(w + 1) <= at)
          ws.worker_piece[static_cast<std::size_t>(++w)] = index_t(ws.pieces.size());
        const index_t end = std::min(cursor + chunks, boundary(w + 1));
        ws.pieces.push_back(
            decode_piece{s, kv, begin + (at - cursor) * chunk, std::min(n, begin + (end - cursor) * chunk)});
        at = end;
      }
      cursor += chunks;
    }
  }
  ws.first_piece[static_cast<std::size_t>(streams)] = static_cast<index_t>(ws.pieces.size());
  while (w < workers) ws.worker_piece[static_cast<std::size_t>(++w)] = index_t(ws.pieces.size());
  return static_cast<int>(workers);
}

/// Merges the pieces of sequence `seq` (its streams start at first_stream) into its outputs: per
/// query head the maximum, the rescaled normalisers and partial outputs; the log-sum-exp and the
/// token probabilities when asked for.
template <class = void>
inline void merge_pieces(const planned_decode& sq, index_t first_stream, index_t part_stride,
                         index_t head_stride, const float* logits, engine_workspace& ws) {
  const decode_plan& p = sq.plan;
  const index_t g = p.g, d = p.d, n = p.n;
  const matrix_view<float>& out = sq.out;
  for (index_t h = 0; h < p.hq; ++h) {
    const index_t kv = h / g, hh = h % g, stream = first_stream + kv;
    const index_t pb = ws.first_piece[static_cast<std::size_t>(stream)];
    const index_t pe = ws.first_piece[static_cast<std::size_t>(stream + 1)];
    auto part_m = [&](index_t piece) {
      return ws.part_m[static_cast<std::size_t>(piece * head_stride + hh)];
    };
    auto part_acc = [&](index_t piece) { return ws.part_acc.data() + piece * part_stride + hh * d; };
    // An attention sink joins the normaliser as one more logit, with no value.
    const float sink = p.features.sink(h);
    float mx = sink;
    for (index_t pc = pb; pc < pe; ++pc) mx = std::max(mx, part_m(pc));
    const bool any = mx > -std::numeric_limits<float>::infinity();
    double total = any ? std::exp(double(sink) - double(mx)) : 0.0;
    float* o = out.data() + h * out.stride(0);
    for (index_t c = 0; c < d; ++c) o[c * out.stride(1)] = 0.0f;
    ws.piece_weights.resize(static_cast<std::size_t>(pe - pb));
    for (index_t pc = pb; pc < pe; ++pc) {
      const float ms = part_m(pc);
      const double wgt =
          ms == -std::numeric_limits<float>::infinity() ? 0.0 : std::exp(double(ms) - double(mx));
      ws.piece_weights[static_cast<std::size_t>(pc - pb)] = wgt;
      total += wgt * ws.part_l[static_cast<std::size_t>(pc * head_stride + hh)];
    }
    if (sq.lse.size()) sq.lse.data()[h * sq.lse.stride(0)] = log_sum_exp(mx, total);
    bool acc_finite = true;
    for (index_t pc = pb; pc < pe; ++pc) {
      const float* a = part_acc(pc);
      for (index_t c = 0; c < d; ++c) acc_finite = acc_finite && std::isfinite(a[c]);
    }
    if (!any) {
      // Every token masked and no sink: the output stays zero.
    } else if (!acc_finite && std::isfinite(mx)) {
      // Finite logits but a non-finite float accumulator: the unnormalised value sum overflowed
      // (values near FLT_MAX; the exact output is a weighted mean, within range). Redo this head
      // in double, off the hot path.
      decode_head_double(sq.cache, p, h, o, out.stride(1));
    } else {
      for (index_t pc = pb; pc < pe; ++pc) {
        const float f = static_cast<float>(ws.piece_weights[static_cast<std::size_t>(pc - pb)] / total);
        const float* a = part_acc(pc);
        for (index_t c = 0; c < d; ++c) o[c * out.stride(1)] += f * a[c];
      }
    }
    if (sq.logits.size()) {
      // The scores as the kernels computed them; tokens before the window's first block were
      // not read: -inf, like the masked ones.
      const index_t b = p.stream_begin();
      float* dst = sq.logits.data() + h * sq.logits.stride(0);
      const index_t ds = sq.logits.stride(1);
      for (index_t j = 0; j < n; ++j)
        dst[j * ds] = j < b ? -std::numeric_limits<float>::infinity() : logits[h * n + j];
    }
    if (sq.token_probs.size()) {
      // Probabilities of this head, added into its KV head's row of token_probs. The exponentials
      // go through the vectorised exp on a copy (the logits stay for callers that rank them):
      // a scalar double exp per token cost more than the whole decode at H2O budgets.
      // Tokens before the window's first block were not read (their logits are not written):
      // probability zero, like the masked ones.
      float* dst = sq.token_probs.data() + kv * sq.token_probs.stride(0);
      const index_t ds = sq.token_probs.stride(1), b = p.stream_begin();
      if (hh == 0)
        for (index_t j = 0; j < n; ++j) dst[j * ds] = 0.0f;
      if (any) {
        std::copy(logits + h * n + b, logits + (h + 1) * n, ws.prob_row.begin());
        exp_shift_sum(ws.prob_row.data(), n - b, mx);
        const float inv = static_cast<float>(1.0 / total);
        const float* pr = ws.prob_row.data();
        if (ds == 1) {
          for (index_t j = b; j < n; ++j) dst[j] += pr[j - b] * inv;
        } else {
          for (index_t j = b; j < n; ++j) dst[j * ds] += pr[j - b] * inv;
        }
      }
    }
  }
}

/// Runs the planned decode of `count` sequences: the pieces of plan_pieces run on the workers,
/// then each sequence's pieces are merged exactly. Logits are kept (ws.logits at
/// ws.logits_offset[s]) for the sequences that asked for token probabilities or logits.
template <class = void>
inline void run_decode(const planned_decode* seqs, index_t count, executor& exec, engine_workspace& ws,
                       phase_times* prof) {
  const int workers = plan_pieces(seqs, count, exec.workers(), ws);
  if (static_cast<int>(ws.workers.size()) < workers) ws.workers.resize(static_cast<std::size_t>(workers));
  for (int wi = 0; wi < workers; ++wi) ws.workers[static_cast<std::size_t>(wi)].profile = phase_times{};
  index_t part_stride = 0, group_max = 0, logits_size = 0, longest = 0;
  ws.logits_offset.resize(static_cast<std::size_t>(count));
  for (index_t s = 0; s < count; ++s) {
    const decode_plan& p = seqs[s].plan;
    part_stride = std::max(part_stride, p.g * p.d);
    group_max = std::max(group_max, p.g);
    ws.logits_offset[static_cast<std::size_t>(s)] = seqs[s].keeps_logits() ? logits_size : -1;
    if (seqs[s].keeps_logits()) {
      logits_size += p.hq * p.n;
      longest = std::max(longest, p.n);
    }
  }
  const index_t pieces = static_cast<index_t>(ws.pieces.size());
  ws.part_acc.resize(static_cast<std::size_t>(pieces * part_stride));
  ws.part_m.resize(static_cast<std::size_t>(pieces * group_max));
  ws.part_l.resize(static_cast<std::size_t>(pieces * group_max));
  ws.logits.resize(static_cast<std::size_t>(logits_size));
  ws.prob_row.resize(static_cast<std::size_t>(longest));
  auto logits_of = [&](index_t s) {
    const index_t at = ws.logits_offset[static_cast<std::size_t>(s)];
    return at < 0 ? nullptr : ws.logits.data() + at;
  };
  parallel_for(workers, exec, [&](index_t begin, index_t end, int wi) {
    auto& w = ws.workers[static_cast<std::size_t>(wi)];
    for (index_t run = begin; run < end; ++run)
      for (index_t pc = ws.worker_piece[static_cast<std::size_t>(run)];
           pc < ws.worker_piece[static_cast<std::size_t>(run + 1)]; ++pc) {
        const decode_piece& piece = ws.pieces[static_cast<std::size_t>(pc)];
        const planned_decode& sq = seqs[piece.seq];
        decode_range(sq.cache, sq.plan, piece.kv, piece.t0, piece.t1, w,
                     ws.part_acc.data() + pc * part_stride, ws.part_m.data() + pc * group_max,
                     ws.part_l.data() + pc * group_max, logits_of(piece.seq), prof ? &w.profile : nullptr);
      }
  });
  index_t first_stream = 0;
  for (index_t s = 0; s < count; ++s) {
    merge_pieces(seqs[s], first_stream, part_stride, group_max, logits_of(s), ws);
    first_stream += seqs[s].plan.hkv;
  }
  if (prof) {
    *prof = phase_times{};
    for (int wi = 0; wi < workers; ++wi) {
      const auto& wp = ws.workers[static_cast<std::size_t>(wi)].profile;
      prof->score_seconds += wp.score_seconds;
      prof->softmax_seconds += wp.softmax_seconds;
      prof->value_seconds += wp.value_seconds;
    }
    // Key bytes read over key bytes held, summed over the sequences (a window reads its tokens only).
    double read = 0, held = 0;
    for (index_t s = 0; s < count; ++s) {
      const decode_plan& p = seqs[s].plan;
      read += key_fraction(p) * double(p.hkv) * double(p.n - p.stream_begin());
      held += double(p.hkv) * double(p.n);
    }
    prof->key_fraction_read = held > 0 ? read / held : 0.0;
  }
}

/// Prefill scoring in groups of up to 4 consecutive queries: when the union of their selected dims
/// is no larger than prefill_union_ratio allows (neighbouring queries often pick the same tiles),
/// the group is scored as 4 heads sharing the union's rows, each query's weights zero on the dims
/// it did not select. One read of a key row then serves 4 queries. The union ascends like
/// every selection, so each score sums the same products in the same order (the zeros add exact
/// zeros): the result equals scoring each query alone. Group gi holds queries [4 gi, 4 gi + 4) of
/// the block; w.group_union[gi] is its union size, 0 where its queries are scored alone. The union
/// rows and weights of the group whose first query is i are at w.union_rows / w.qunion + i * r
/// (weights [query][dim of the union]). Returns the number of groups. `ratio_override` > 0
/// replaces the ratio's numerator (engine_workspace::prefill_union_override).
template <class = void>
inline index_t group_queries(engine_workspace::worker& w, index_t ratio_override, index_t rows, index_t r,
                             const cache_layout& cache, index_t kv) {
  const index_t ratio_num = ratio_override > 0 ? ratio_override : prefill_union_ratio_num;
  w.group_union.assign(static_cast<std::size_t>((rows + 3) / 4), 0);
  w.union_rows.resize(static_cast<std::size_t>(rows * r));
  w.qunion.resize(static_cast<std::size_t>(rows * r));
  w.row_used.resize(static_cast<std::size_t>(r));
  const index_t groups = (rows + 3) / 4;
  for (index_t gi = 0; gi < groups; ++gi) {
    const index_t i = 4 * gi, hn = std::min<index_t>(4, rows - i);
    if (hn < 2) continue;
    std::fill(w.row_used.begin(), w.row_used.end(), char(0));
    index_t selected = 0;
    for (index_t h = 0; h < hn; ++h) {
      const index_t cnt = w.counts[static_cast<std::size_t>(i + h)];
      selected += cnt;
      for (index_t s = 0; s < cnt; ++s)
        w.row_used[static_cast<std::size_t>(w.query_dims[static_cast<std::size_t>((i + h) * r + s)])] = 1;
    }
    index_t nu = 0;
    for (index_t dim = 0; dim < r; ++dim) nu += w.row_used[static_cast<std::size_t>(dim)];
    if (nu * hn * prefill_union_ratio_den > ratio_num * selected) continue;
    w.group_union[static_cast<std::size_t>(gi)] = nu;
    // Union rows ascending (its dims in w.rank); weights of query h at qunion[i * r + h * nu + u],
    // zero where h did not select.
    const unsigned char** urows = w.union_rows.data() + i * r;
    std::int32_t* udims = w.rank.data();
    float* qu = w.qunion.data() + i * r;
    std::fill(qu, qu + hn * nu, 0.0f);
    for (index_t dim = 0, u = 0; dim < r; ++dim) {
      if (!w.row_used[static_cast<std::size_t>(dim)]) continue;
      udims[u] = static_cast<std::int32_t>(dim);
      urows[u++] = key_row(cache, kv, dim);
    }
    for (index_t h = 0; h < hn; ++h) {
      const index_t cnt = w.counts[static_cast<std::size_t>(i + h)];
      for (index_t s = 0, at = 0; s < cnt; ++s, ++at) {  // both lists ascend
        const std::int32_t dim = w.query_dims[static_cast<std::size_t>((i + h) * r + s)];
        while (udims[at] != dim) ++at;
        qu[h * nu + at] = w.qsel[static_cast<std::size_t>((i + h) * r + s)];
      }
    }
  }
  return groups;
}

/// Which value rows a prefill worker holds widened to float (16-bit values): the first `count`
/// rows of KV head `head`. A worker's items run head by head with growing visible counts, so each
/// row is widened once per head.
struct widened_rows {
  index_t head = -1, count = 0;
};
template <class = void>
inline const float* widened_values(const cache_layout& cache, index_t kv, index_t rows,
                                   engine_workspace::worker& w, widened_rows& state) {
  if (cache.value_type() == storage_type::f32) return static_cast<const float*>(cache.values_data(kv));
  const index_t d = cache.head_dim();
  if (state.head != kv) state = widened_rows{kv, 0};
  if (rows > state.count) {
    w.values.resize(static_cast<std::size_t>(cache.size() * d));
    const auto* src = static_cast<const unsigned char*>(cache.values_data(kv));
    for (index_t i = state.count * d; i < rows * d; ++i)
      w.values[static_cast<std::size_t>(i)] = load_element(src, cache.value_type(), i);
    state.count = rows;
  }
  return w.values.data();
}

/// AQUA causal / full prefill: per (query head, block of query rows) a selection per query (group
/// mode: per (KV group, block), one selection per query position shared by the group's heads,
/// from their summed magnitudes as in decode), scores over the tiles, softmax, then P V by Eigen
/// GEMM on the token-major values.
template <class = void>
inline void run_prefill(const tensor3_view<const float>& q, const cache_layout& cache,
                        const selection_spec& spec, selection_mode mode, bool causal, double scale,
                        executor& exec, engine_workspace& ws, const tensor3_view<float>& out,
                        phase_times* prof, const matrix_view<float>& lse,
                        const matrix_view<float>& token_probs, index_t first_counted_query,
                        const score_features& features) {
  const int threads = exec.workers();
  const index_t hq = q.extent(0), m = q.extent(1), d = q.extent(2), g = hq / cache.kv_heads();
  const index_t n = cache.size(), r = cache.rank(), tile = cache.tile_dims(), bs = key_block_bytes(cache);
  const storage_type kt = cache.key_type();
  const bool tile_mode = mode == selection_mode::tile, shared = mode == selection_mode::group;
  const index_t heads_per_item = shared ? g : 1;
  constexpr index_t block_rows = 64;
  const index_t key_chunk_blocks = prefill_key_blocks;
  const index_t blocks_per_head = (m + block_rows - 1) / block_rows;
  const index_t items = hq / heads_per_item * blocks_per_head;
  const int workers = static_cast<int>(std::max<index_t>(1, std::min<index_t>(threads, items)));
  if (static_cast<int>(ws.workers.size()) < workers) ws.workers.resize(static_cast<std::size_t>(workers));
  for (int wi = 0; wi < workers; ++wi) ws.workers[static_cast<std::size_t>(wi)].profile = phase_times{};
  parallel_for(items, exec, [&](index_t begin, index_t end, int wi) {
    auto& w = ws.workers[static_cast<std::size_t>(wi)];
    phase_times* wp = prof ? &w.profile : nullptr;
    widened_rows widened;
    w.qsel.resize(static_cast<std::size_t>(block_rows * r));
    w.rows.resize(static_cast<std::size_t>(block_rows * r));
    w.dims.resize(static_cast<std::size_t>(shared ? block_rows * r : r));
    w.rank.resize(static_cast<std::size_t>(r));
    w.counts.resize(static_cast<std::size_t>(block_rows));
    w.query_dims.resize(static_cast<std::size_t>(block_rows * r));
    w.m.resize(static_cast<std::size_t>(r));  // |q| weights
    w.energy.resize(static_cast<std::size_t>(r));
    if (token_probs.size()) w.token_mass.assign(static_cast<std::size_t>(cache.kv_heads() * n), 0.0);
    for (index_t item = begin; item < end; ++item) {
      const index_t h0 = item / blocks_per_head * heads_per_item, kv = h0 / g;
      const index_t i0 = (item % blocks_per_head) * block_rows, rows = std::min(block_rows, m - i0);
      const index_t first_position = n - m + i0;
      const index_t visible = causal ? first_position + rows : n;
      auto t_project = wp ? profile_clock::now() : profile_clock::time_point();
      // Project the block's queries of every head of the item (GEMM with the cache's basis) and
      // fold in the scale; head h0 + hi has rows [hi * rows, (hi + 1) * rows).
      w.proj.resize(heads_per_item * rows, r);
      for (index_t hi = 0; hi < heads_per_item; ++hi) {
        auto q_rows = as_eigen(matrix_view<const float>(q.data() + (h0 + hi) * q.stride(0) + i0 * q.stride(1),
                                                        {rows, d}, {q.stride(1), q.stride(2)}));
        auto proj_rows = w.proj.middleRows(hi * rows, rows);
        if (const auto* basis = cache.projection(kv)) {
          proj_rows.noalias() = q_rows * (*basis);
          proj_rows *= static_cast<float>(scale);
        } else {
          proj_rows = q_rows.leftCols(r) * static_cast<float>(scale);
        }
      }
      // Selects the dims of query i from the weights and energies summed over heads [hb, he) of
      // the item, into w.dims + at (ascending); returns the count.
      auto select_query = [&](index_t i, index_t hb, index_t he, std::int32_t* at) {
        std::fill(w.m.begin(), w.m.end(), 0.0f);
        std::fill(w.energy.begin(), w.energy.end(), 0.0);
        for (index_t hi = hb; hi < he; ++hi) {
          const float* qp = w.proj.row(hi * rows + i).data();
          for (index_t c = 0; c < r; ++c) {
            w.m[static_cast<std::size_t>(c)] += std::abs(qp[c]);
            w.energy[static_cast<std::size_t>(c)] += double(qp[c]) * double(qp[c]);
          }
        }
        return select_dims(w.m.data(), w.energy.data(), r, tile, tile_mode, spec, w.rank.data(), at);
      };
      if (shared)
        for (index_t i = 0; i < rows; ++i)
          w.counts[static_cast<std::size_t>(i)] = select_query(i, 0, heads_per_item, w.dims.data() + i * r);
      const double project_seconds = wp ? seconds_since(t_project) : 0.0;
      for (index_t hi = 0; hi < heads_per_item; ++hi) {
        const index_t head = h0 + hi;
        auto t_sel = wp ? profile_clock::now() : profile_clock::time_point();
        for (index_t i = 0; i < rows; ++i) {
          const float* qp = w.proj.row(hi * rows + i).data();
          const std::int32_t* dims = shared ? w.dims.data() + i * r : w.dims.data();
          if (!shared) w.counts[static_cast<std::size_t>(i)] = select_query(i, hi, hi + 1, w.dims.data());
          const index_t cnt = w.counts[static_cast<std::size_t>(i)];
          for (index_t s = 0; s < cnt; ++s) {
            const std::int32_t dim = dims[s];
            w.query_dims[static_cast<std::size_t>(i * r + s)] = dim;
            w.qsel[static_cast<std::size_t>(i * r + s)] = qp[dim];
            w.rows[static_cast<std::size_t>(i * r + s)] = key_row(cache, kv, dim);
          }
        }
        auto t_score = wp ? profile_clock::now() : profile_clock::time_point();
        const index_t padded = (visible + kv_block - 1) / kv_block * kv_block;
        w.logits.resize(rows, padded);
        const index_t groups = group_queries(w, ws.prefill_union_override, rows, r, cache, kv);
        // Key chunks outer, queries inner: a chunk's tiles stay in L2 while every query reads it.
        for (index_t kc = 0; kc < visible; kc += key_chunk_blocks * kv_block) {
          for (index_t gi = 0; gi < groups; ++gi) {
            const index_t i = 4 * gi, hn = std::min<index_t>(4, rows - i);
            const index_t nu = w.group_union[static_cast<std::size_t>(gi)];
            if (nu > 0) {
              // The group's last query sees the most keys; the others' extra scores are masked below.
              const index_t vis_g = causal ? first_position + i + hn : n;
              if (kc >= vis_g) continue;
              const index_t nb = std::min(key_chunk_blocks, (vis_g - kc + kv_block - 1) / kv_block);
              score_dispatch(static_cast<int>(hn), kt, w.union_rows.data() + i * r, nu,
                             w.qunion.data() + i * r, nu, bs, kc / kv_block, nb, w.logits.row(i).data() + kc,
                             w.logits.cols());
              continue;
            }
            for (index_t q_i = i; q_i < i + hn; ++q_i) {
              const index_t vis_i = causal ? first_position + q_i + 1 : n;
              if (kc >= vis_i) continue;
              const index_t nb = std::min(key_chunk_blocks, (vis_i - kc + kv_block - 1) / kv_block);
              score_dispatch(1, kt, w.rows.data() + q_i * r, w.counts[static_cast<std::size_t>(q_i)],
                             w.qsel.data() + q_i * r, r, bs, kc / kv_block, nb, w.logits.row(q_i).data() + kc,
                             0);
            }
          }
        }
        auto t_soft = wp ? profile_clock::now() : profile_clock::time_point();
        for (index_t i = 0; i < rows; ++i) {
          float* row = w.logits.row(i).data();
          const index_t vis_i = causal ? first_position + i + 1 : n;
          if (features.transforms_scores())
            apply_score_features(features,
                                 features.mask ? features.mask + (i0 + i) * features.mask_row : nullptr,
                                 first_position + i, 0, vis_i, row);
          for (index_t j = vis_i; j < visible; ++j) row[j] = -std::numeric_limits<float>::infinity();
          softmax_inplace_fast(
              row, visible,
              lse.size() ? lse.data() + head * lse.stride(0) + (i0 + i) * lse.stride(1) : nullptr,
              features.sink(head));
          if (token_probs.size() && i0 + i >= first_counted_query) {
            double* mass = w.token_mass.data() + kv * n;
            for (index_t j = 0; j < vis_i; ++j) mass[j] += row[j];
          }
        }
        auto t_value = wp ? profile_clock::now() : profile_clock::time_point();
        Eigen::Map<const row_matrix<float>> v_rows(widened_values(cache, kv, visible, w, widened), visible,
                                                   d);
        auto out_rows = as_eigen(matrix_view<float>(out.data() + head * out.stride(0) + i0 * out.stride(1),
                                                    {rows, d}, {out.stride(1), out.stride(2)}));
        out_rows.noalias() = w.logits.leftCols(visible) * v_rows;
        if (wp) {
          wp->select_seconds +=
              std::chrono::duration<double>(t_score - t_sel).count() + (hi == 0 ? project_seconds : 0.0);
          wp->score_seconds += std::chrono::duration<double>(t_soft - t_score).count();
          wp->softmax_seconds += std::chrono::duration<double>(t_value - t_soft).count();
          wp->value_seconds += seconds_since(t_value);
        }
      }
    }
  });
  if (token_probs.size()) {
    // Each worker summed its own items' probabilities; the workers of this call ([0, workers))
    // add up in worker order, so the result does not depend on timing.
    for (index_t kv = 0; kv < cache.kv_heads(); ++kv)
      for (index_t j = 0; j < n; ++j) {
        double total = 0;
        for (int wi = 0; wi < workers; ++wi)
          total += ws.workers[static_cast<std::size_t>(wi)].token_mass[static_cast<std::size_t>(kv * n + j)];
        token_probs.data()[kv * token_probs.stride(0) + j * token_probs.stride(1)] =
            static_cast<float>(total);
      }
  }
  if (prof) {
    *prof = phase_times{};
    for (int wi = 0; wi < workers; ++wi) {
      const auto& wp = ws.workers[static_cast<std::size_t>(wi)].profile;
      prof->select_seconds += wp.select_seconds;
      prof->score_seconds += wp.score_seconds;
      prof->softmax_seconds += wp.softmax_seconds;
      prof->value_seconds += wp.value_seconds;
    }
  }
}

}  // namespace detail
}  // namespace aqua
