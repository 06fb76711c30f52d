// The AQUA attention backend of the llama2.c engine: what an inference engine adds to use aqua.
//
// Per layer it keeps an aqua::kv_cache built from that layer's per-KV-head projection bases (a
// projection_set from aqua_calibrate, or the identity), so keys are stored already projected
// (k~ = k P, truncated to the first r dims when asked). `append` feeds the new keys and values to
// the layer's cache; `attend` runs aqua_decode for one new token (M = 1) and aqua_prefill for a
// block (M > 1). The engine's own dense cache is not read: AQUA reads only its projected keys.
//
// Selection: per_head (each query head keeps its own top-k dims, the paper's rule), group (one
// set per KV group from the summed magnitudes of the group's query heads) or tile (whole key tiles
// per KV group until k dims are covered). aqua_prefill treats group as per head, so a group-shared
// figure needs token-by-token decoding (M = 1).
//
// H2O eviction (optional, h2o_budget > 0): one aqua::h2o_policy per layer, fed with the
// probabilities of AQUA's own decode; after every decode step each KV head keeps its h2o_recent
// newest tokens and the h2o_budget - h2o_recent older ones with the largest accumulated attention
// (slack 0: H2O's per-step eviction), so every query attends over at most budget + 1 tokens (the
// kept ones and its own). Eviction is decode-only: a block of M > 1 queries is an error.
#pragma once

#include <aqua/attention.hpp>
#include <aqua/h2o.hpp>
#include <aqua/kv_cache.hpp>
#include <aqua/projection.hpp>
#include <aqua/select.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "transformer.hpp"

namespace llama2c {

struct aqua_attention_options {
  /// How many projected dims each query (or group) keeps: top_k(k) or energy(tau).
  aqua::selection_spec select = aqua::selection_spec::top_k(1);
  aqua::selection_mode mode = aqua::selection_mode::per_head;
  /// Static truncation: keep the first r projected dims of every key (0 = all d).
  index_t rank = 0;
  /// Projected dims per key tile (tile mode selects whole tiles); 0: aqua's default, or r when
  /// truncating.
  index_t tile_dims = 0;
  int threads = 1;
  /// H2O: tokens kept per KV head after each decode step (0: no eviction), and how many of them
  /// are the most recent (0 <= h2o_recent <= h2o_budget).
  index_t h2o_budget = 0;
  index_t h2o_recent = 0;
};

class aqua_attention final : public attention_backend {
public:
  /// One cache per layer of `projections` (layers x Hkv bases of dimension d).
  aqua_attention(const aqua::projection_set& projections, const aqua_attention_options& options)
      : options_(options) {
    constexpr const char* fn = "llama2c::aqua_attention";
    AQUA_CHECK(!projections.empty(), fn, ": the projection set is empty");
    const index_t d = projections.d();
    const index_t r = options.rank == 0 ? d : options.rank;
    AQUA_CHECK(r >= 1 && r <= d, fn, ": rank r = ", options.rank, " must lie in [1, d = ", d,
               "] (0 means d)");
    // Validates the spec against r candidates (the count itself is not needed here).
    {
      const std::vector<float> ones(static_cast<std::size_t>(r), 1.0f);
      aqua::select_count<float>(aqua::make_view(ones.data(), r), options.select);
    }
    aqua::kv_cache_options cache_options;
    // One tile of exactly r dims when truncating (the cache keeps whole tiles), else aqua's default;
    // or tile_dims when given (r must then be a multiple of it, or d).
    if (r < d) cache_options.tile_dims = r;
    if (options.tile_dims > 0) cache_options.tile_dims = options.tile_dims;
    cache_options.rank = r;
    for (index_t l = 0; l < projections.layers(); ++l) caches_.emplace_back(projections, l, cache_options);
    if (options.h2o_budget > 0) {
      aqua::h2o_options h;
      h.budget = options.h2o_budget;
      h.recent = options.h2o_recent;
      for (index_t l = 0; l < projections.layers(); ++l) policies_.emplace_back(projections.kv_heads(), h);
    } else {
      AQUA_CHECK(options.h2o_recent == 0, fn, ": h2o_recent = ", options.h2o_recent,
                 " needs an H2O budget (h2o_budget > 0)");
    }
    aqua_options_.mode = options.mode;
    aqua_options_.threads = options.threads;
    aqua_options_.workspace = &workspace_;
  }

  void append(int layer, index_t, aqua::tensor3_view<const float> keys,
              aqua::tensor3_view<const float> values) override {
    mutable_cache(layer).append(keys, values);
  }

  void attend(int layer, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float>,
              aqua::tensor3_view<const float>, aqua::tensor3_view<float> out) override {
    const aqua::kv_cache& c = cache(layer);
    if (options_.select.type == aqua::selection_spec::kind::energy) count_selected(c, q);
    if (q.extent(1) == 1) {
      aqua::matrix_view<const float> q1(q.data(), {q.extent(0), q.extent(2)}, {q.stride(0), q.stride(2)});
      aqua::matrix_view<float> out1(out.data(), {out.extent(0), out.extent(2)},
                                    {out.stride(0), out.stride(2)});
      if (policies_.empty()) {
        aqua::aqua_decode(q1, c, options_.select, out1, aqua_options_);
      } else {
        aqua::h2o_policy& p = policies_[static_cast<std::size_t>(layer)];
        p.decode(q1, c, options_.select, out1, aqua_options_);
        evicted_ += static_cast<double>(p.evict(mutable_cache(layer)));
      }
    } else {
      AQUA_CHECK(policies_.empty(),
                 "llama2c::aqua_attention: H2O eviction runs token by token, but a block of ", q.extent(1),
                 " queries was given (use block = 1)");
      aqua::aqua_prefill(q, c, options_.select, out, aqua_options_);
    }
  }

  void reset() override {
    for (auto& c : caches_) c.clear();
    for (auto& p : policies_) p.reset();
  }

  const char* name() const override { return "aqua"; }

  /// Mean number of dims selected per query head and token (energy selection only; for top_k it
  /// is k). Counted with the engine's rule: group mode sums the group's magnitudes and energies.
  double mean_selected() const { return queries_ == 0 ? 0.0 : selected_ / queries_; }

  const aqua::kv_cache& cache(int layer) const { return caches_[static_cast<std::size_t>(layer)]; }

  /// H2O: tokens evicted per KV head, summed over layers and steps since construction.
  double evicted_tokens() const { return evicted_; }

private:
  aqua::kv_cache& mutable_cache(int layer) { return caches_[static_cast<std::size_t>(layer)]; }

  // Energy selection keeps a data-dependent number of dims; count them for the report.
  void count_selected(const aqua::kv_cache& c, aqua::tensor3_view<const float> q) {
    const index_t hq = q.extent(0), m = q.extent(1), r = c.rank(), g = hq / c.kv_heads();
    const bool group = options_.mode != aqua::selection_mode::per_head && m == 1;
    std::vector<float> proj(static_cast<std::size_t>(r)), weight(proj.size()), energy(proj.size());
    for (index_t t = 0; t < m; ++t)
      for (index_t h0 = 0; h0 < hq; h0 += group ? g : 1) {
        std::fill(weight.begin(), weight.end(), 0.0f);
        std::fill(energy.begin(), energy.end(), 0.0f);
        for (index_t h = h0; h < h0 + (group ? g : 1); ++h) {
          c.project(h / g, &q(h, t, 0), q.stride(2), proj.data());
          for (std::size_t i = 0; i < proj.size(); ++i) {
            weight[i] += std::abs(proj[i]);
            energy[i] += proj[i] * proj[i];
          }
        }
        // The kernels' rule: rank by summed magnitudes, threshold the summed energies.
        const index_t n = aqua::select_count<float>(
            aqua::make_view(static_cast<const float*>(weight.data()), r),
            aqua::make_view(static_cast<const float*>(energy.data()), r), options_.select);
        selected_ += static_cast<double>(n) * (group ? g : 1);
        queries_ += group ? g : 1;
      }
  }

  aqua_attention_options options_;
  std::vector<aqua::kv_cache> caches_;
  aqua::aqua_options aqua_options_;
  aqua::aqua_workspace workspace_;
  std::vector<aqua::h2o_policy> policies_;  // one per layer when evicting
  double selected_ = 0, queries_ = 0, evicted_ = 0;
};

}  // namespace llama2c
