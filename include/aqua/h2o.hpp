// H2O heavy-hitter eviction (Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative
// Inference of Large Language Models", 2023) driven by AQUA's own attention probabilities.
//
// One h2o_policy per layer; it keeps a token budget B per KV head: the W most recent tokens plus
// the B - W "heavy hitters", the older tokens with the largest accumulated attention.
//
// Accumulation rule (H2O's accumulated attention score). Every decode step, each stored token j
// of KV head h gains the probability it received at that step, summed over the g query heads of
// the group (GQA; MHA is g = 1):  score[h][j] += sum_{q in group(h)} p_q(j).  A token starts at 0
// when it enters the cache and accumulates from its first decode step on (including the step in
// which it is itself the newest token, when it was appended before that step's decode). Scores
// are accumulated in double. The probabilities are those AQUA decode computes anyway (its
// token_probs output), so eviction costs no second exact score pass; they are AQUA's approximate
// probabilities, which is the point (docs/design.md, "H2O eviction"). As in H2O, older tokens have had more
// steps to accumulate; the recent window protects the newest ones, which have not.
//
// Eviction. When the cache holds more than B + slack tokens, each KV head keeps its last W tokens
// and, among the rest, the B - W with the largest scores (ties: the older token is kept), and the
// cache is compacted per head with kv_cache::retain_per_head: token order is preserved and each
// kept token keeps its sequence position. Cached keys already carry their rotary embedding (RoPE
// is applied before the key enters the cache) and are stored projected; eviction moves them as
// they are and never re-rotates or re-projects them, so a kept token attends exactly as before.
// slack = 0 is H2O's one-token-per-step eviction; a larger slack lets the cache grow to B + slack
// before one compaction back to B (compaction reads the whole cache, so amortising it matters).
// After an eviction the cache's memory is released (shrink_to_fit) when its capacity exceeds
// twice the B + slack + 1 tokens it holds at most, keeping room for exactly those, so a long prompt
// evicted down to B frees its memory while the steady decode loop never reallocates.
//
// Memory: with the budget the cache holds at most B + slack + 1 tokens per KV head, and after an
// eviction its capacity is B + slack + 1 rounded up to whole blocks of kv_cache::block_tokens:
// per layer Hkv (r + d) e bytes per token (aqua::aqua_kv_bytes_per_token) times that, plus the
// r columns of P per KV head. With slack = 0 and B + 1 a multiple of 16 this is the cost model's
// kv_cache_bytes with token_budget = B + 1 (the new token is appended before the eviction).
#pragma once

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

#include "aqua/attention.hpp"
#include "aqua/config.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/kv_cache.hpp"
#include "aqua/select.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

struct h2o_options {
  /// B: tokens kept per KV head after an eviction (heavy hitters + recent window), >= 1.
  index_t budget = 0;
  /// W: the most recent W tokens are never evicted; 0 <= W <= B.
  index_t recent = 0;
  /// Eviction runs when the cache holds more than B + slack tokens (0: H2O's per-step eviction).
  index_t slack = 0;
  /// Release the cache's memory after an eviction when its capacity exceeds twice B + slack + 1.
  bool release_memory = true;
};

class h2o_policy {
public:
  /// A policy for one layer's cache with `kv_heads` KV heads.
  h2o_policy(index_t kv_heads, const h2o_options& options) : opt_(options), hkv_(kv_heads) {
    constexpr const char* fn = "aqua::h2o_policy";
    AQUA_CHECK(kv_heads >= 1, fn, ": kv_heads must be at least 1, got ", kv_heads);
    AQUA_CHECK(options.budget >= 1, fn, ": budget B must be at least 1, got ", options.budget);
    AQUA_CHECK(options.recent >= 0 && options.recent <= options.budget, fn,
               ": recent window W = ", options.recent, " must lie in [0, B = ", options.budget, "]");
    AQUA_CHECK(options.slack >= 0, fn, ": slack must be >= 0, got ", options.slack);
    scores_.resize(static_cast<std::size_t>(hkv_));
  }

  const h2o_options& options() const noexcept { return opt_; }
  index_t kv_heads() const noexcept { return hkv_; }
  /// Tokens per head the policy holds scores for (the cache's size at the last accumulate/evict).
  index_t tokens() const noexcept { return static_cast<index_t>(scores_[0].size()); }
  /// Accumulated score of stored token j of KV head h. Preconditions (asserted when assertions
  /// are on): head < kv_heads(), token < tokens(); score_at checks them.
  double score(index_t head, index_t token) const noexcept {
    AQUA_ASSERT(head >= 0 && head < hkv_ && token >= 0 && token < tokens());
    return scores_[static_cast<std::size_t>(head)][static_cast<std::size_t>(token)];
  }
  /// score() with its preconditions checked (aqua::error).
  double score_at(index_t head, index_t token) const {
    AQUA_CHECK(head >= 0 && head < hkv_ && token >= 0 && token < tokens(),
               "aqua::h2o_policy::score_at: (head ", head, ", token ", token, ") is outside [0, ", hkv_,
               ") x [0, ", tokens(), ")");
    return score(head, token);
  }
  /// Evictions performed and tokens evicted per head in total.
  index_t evictions() const noexcept { return evictions_; }
  index_t evicted_tokens() const noexcept { return evicted_; }

  /// Adds one decode step's probabilities, token_probs [Hkv, N] (aqua_decode's token_probs output),
  /// to the scores. N is the cache's current size: tokens appended since the last call enter with
  /// score 0 before this step's probability is added. N below the tracked count means the cache
  /// was compacted without this policy (aqua::error).
  void accumulate(matrix_view<const float> token_probs) {
    constexpr const char* fn = "aqua::h2o_policy::accumulate";
    detail::require_data(token_probs, fn, "token_probs");
    AQUA_CHECK(token_probs.extent(0) == hkv_, fn, ": token_probs has shape ",
               detail::shape_string(token_probs), " but the policy has Hkv = ", hkv_, " KV heads");
    const index_t n = token_probs.extent(1);
    AQUA_CHECK(n >= tokens(), fn, ": token_probs covers ", n, " tokens but the policy tracks ", tokens(),
               "; was the cache compacted behind the policy's back?");
    for (index_t h = 0; h < hkv_; ++h) {
      auto& s = scores_[static_cast<std::size_t>(h)];
      s.resize(static_cast<std::size_t>(n), 0.0);
      for (index_t j = 0; j < n; ++j)
        s[static_cast<std::size_t>(j)] += static_cast<double>(token_probs(h, j));
    }
  }

  /// One AQUA decode step that also feeds the policy: aqua_decode(q, cache, select, out, options)
  /// with its token probabilities written to the policy's buffer and accumulated.
  template <class = void>
  void decode(matrix_view<const float> q, const kv_cache& cache, const selection_spec& select,
              matrix_view<float> out, const aqua_options& options = {}) {
    AQUA_CHECK(cache.kv_heads() == hkv_, "aqua::h2o_policy::decode: the cache has ", cache.kv_heads(),
               " KV heads but the policy has ", hkv_);
    probs_.resize(static_cast<std::size_t>(hkv_ * cache.size()));
    auto probs = make_view(probs_.data(), hkv_, cache.size());
    aqua_decode(q, cache, select, out, options, probs);
    accumulate(matrix_view<const float>(probs));
  }

  /// AQUA prefill that seeds the policy: aqua_prefill(q, cache, select, out, options) with the
  /// probabilities of the last `last_queries` queries (0: all M) accumulated, as that many decode
  /// steps would, so evict() can run right after the prompt.
  template <class = void>
  void prefill(tensor3_view<const float> q, const kv_cache& cache, const selection_spec& select,
               tensor3_view<float> out, const aqua_options& options = {}, index_t last_queries = 0) {
    AQUA_CHECK(cache.kv_heads() == hkv_, "aqua::h2o_policy::prefill: the cache has ", cache.kv_heads(),
               " KV heads but the policy has ", hkv_);
    probs_.resize(static_cast<std::size_t>(hkv_ * cache.size()));
    auto probs = make_view(probs_.data(), hkv_, cache.size());
    aqua_prefill(q, cache, select, out, options, probs, last_queries);
    accumulate(matrix_view<const float>(probs));
  }

  /// Whether the next evict() would evict (the cache holds more than B + slack tokens).
  bool due(const kv_cache& cache) const noexcept { return cache.size() > opt_.budget + opt_.slack; }

  /// The tokens head h keeps out of the first n tracked ones when evicting down to B: increasing
  /// indices, the last W of [0, n) and the B - W highest scores among the others. n <= tokens()
  /// (tokens beyond tokens() have no score yet and count as 0).
  std::vector<index_t> keep_set(index_t head, index_t n) const {
    constexpr const char* fn = "aqua::h2o_policy::keep_set";
    AQUA_CHECK(head >= 0 && head < hkv_, fn, ": head ", head, " is outside [0, ", hkv_, ")");
    AQUA_CHECK(n >= 0, fn, ": n must be >= 0, got ", n);
    std::vector<index_t> keep;
    select_keep(head, n, keep);
    return keep;
  }

  /// Evicts when due: every KV head keeps keep_set(h, N) (B tokens) and the cache is compacted per
  /// head. Returns the tokens evicted per head (0 when not due).
  index_t evict(kv_cache& cache) {
    constexpr const char* fn = "aqua::h2o_policy::evict";
    AQUA_CHECK(cache.kv_heads() == hkv_, fn, ": the cache has ", cache.kv_heads(),
               " KV heads but the policy has ", hkv_);
    const index_t n = cache.size();
    AQUA_CHECK(n >= tokens(), fn, ": the cache holds ", n, " tokens but the policy tracks ", tokens(),
               "; was the cache compacted behind the policy's back?");
    if (!due(cache)) return 0;
    const index_t b = opt_.budget;
    keep_.resize(static_cast<std::size_t>(hkv_ * b));
    std::vector<index_t> row;
    for (index_t h = 0; h < hkv_; ++h) {
      select_keep(h, n, row);
      std::copy(row.begin(), row.end(), keep_.begin() + h * b);
      auto& s = scores_[static_cast<std::size_t>(h)];
      s.resize(static_cast<std::size_t>(n), 0.0);
      for (index_t i = 0; i < b; ++i)
        s[static_cast<std::size_t>(i)] = s[static_cast<std::size_t>(row[std::size_t(i)])];
      s.resize(static_cast<std::size_t>(b));
    }
    cache.retain_per_head(make_view(static_cast<const index_t*>(keep_.data()), hkv_, b));
    // The cache grows to B + slack + 1 tokens before the next eviction: keep room for exactly that.
    const index_t needed = b + opt_.slack + 1;
    if (opt_.release_memory && cache.capacity() > 2 * needed) cache.shrink_to_fit(needed);
    ++evictions_;
    evicted_ += n - b;
    return n - b;
  }

  /// Forgets every score (for a new sequence, after cache.clear()).
  void reset() {
    for (auto& s : scores_) s.clear();
    evictions_ = evicted_ = 0;
  }

private:
  void select_keep(index_t head, index_t n, std::vector<index_t>& keep) const {
    const index_t b = std::min(opt_.budget, n);
    const index_t w = std::min(opt_.recent, b);
    const index_t older = n - w, heavy = b - w;
    const auto& s = scores_[static_cast<std::size_t>(head)];
    const index_t scored = static_cast<index_t>(s.size());
    auto score_of = [&](index_t j) { return j < scored ? s[static_cast<std::size_t>(j)] : 0.0; };
    keep.resize(static_cast<std::size_t>(older));
    std::iota(keep.begin(), keep.end(), index_t{0});
    if (heavy < older) {
      auto by_score = [&](index_t a, index_t c) {
        const double sa = score_of(a), sc = score_of(c);
        return sa > sc || (sa == sc && a < c);
      };
      std::nth_element(keep.begin(), keep.begin() + heavy, keep.end(), by_score);
      keep.resize(static_cast<std::size_t>(heavy));
      std::sort(keep.begin(), keep.end());
    }
    for (index_t j = older; j < n; ++j) keep.push_back(j);
  }

  h2o_options opt_;
  index_t hkv_ = 0;
  index_t evictions_ = 0, evicted_ = 0;
  std::vector<std::vector<double>> scores_;  // [Hkv][tokens]
  std::vector<float> probs_;                 // decode()'s token_probs buffer [Hkv, N]
  std::vector<index_t> keep_;                // evict()'s keep rows [Hkv, B]
};

}  // namespace aqua
