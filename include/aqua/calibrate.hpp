// Offline calibration: a streaming calibrator that turns post-RoPE query/key vectors into a
// projection set, and retention analysis of a projection set on held-out vectors.
//
// Calibrator. For every (layer, KV head) it accumulates G = X^T X in double precision, X being the
// stacked calibration vectors of that head (queries of the g query heads of the group, keys of the
// KV head, or both: calibrator_options::source). Memory is layers x Hkv x d^2 doubles whatever the
// number of vectors. finalize() takes the symmetric eigendecomposition G = V diag(S^2) V^T: V is the
// right singular basis of X and S its singular values, without ever holding X. Eigenpairs are sorted
// by decreasing eigenvalue; singular value = sqrt(max(eigenvalue, 0)); each column's sign is fixed so
// that its largest-magnitude entry (the first one on ties) is positive, which makes results
// reproducible. With centering, G - n mu mu^T (the scatter matrix about the mean) is decomposed.
//
// Thread safety. Every add_* call may run concurrently with other add_* calls, from any threads:
// each (layer, KV head) has its own lock, so calls for different heads proceed in parallel and
// calls for the same head are serialised (floating-point results then depend on the order of the
// batches, within rounding). The progress callback is called by the thread that made the add_*
// call, so concurrent adds call it concurrently. vectors(), vectors_seen(), gram(), finalize_head()
// and finalize() lock the heads they read and may run alongside adds (they see each head either
// before or after any one batch). merge(), reset(), assignment and destruction must not run
// concurrently with any other call on the same calibrator (or, for merge, on its argument).
//
// Retention analysis (retention_evaluator). For held-out queries and keys of the same dump, per
// query head, per KV head (its group pooled), per layer and overall, and for every k = 1..d:
//   topk[k-1]          mean over queries of the fraction of |q~|^2 kept by the k projected dims of
//                      largest |q~_i| (AQUA's selection rule);
//   prefix[k-1]        the same for the first k projected dims (static truncation);
//   score_rel_err[k-1] mean over queries of ||s~ - s||_2 / ||s||_2, s_j = q.k_j the exact scores
//                      against every (sampled) key of the KV head, s~_j = sum_{i in top-k} q~_i k~_{j,i}.
// Queries with zero norm (or whose exact scores are all zero) are left out of the respective means.
#pragma once

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <numeric>
#include <type_traits>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/gram.hpp"
#include "aqua/detail/parallel.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/executor.hpp"
#include "aqua/projection.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// What a progress callback is told.
struct calibration_progress {
  enum class stage_t { accumulate, finalize };
  stage_t stage = stage_t::accumulate;
  index_t layer = 0;
  /// The KV head updated or finalized; -1 when an add call covered every head of the layer.
  index_t kv_head = -1;
  /// Vectors added by this call (accumulate) or accumulated by the finalized head (finalize).
  std::uint64_t vectors = 0;
  /// Vectors accumulated over all heads so far.
  std::uint64_t total_vectors = 0;
  /// Finalize only: heads finished so far and heads in all.
  index_t heads_done = 0, heads_total = 0;
};

struct calibrator_options {
  calibration_source source = calibration_source::queries;
  /// Decompose the scatter about the per-head mean instead of X^T X. Off by default: attention
  /// scores are dot products, not covariances.
  bool center = false;
  /// Called after every add_* call that accumulated something and after every finalized head.
  std::function<void(const calibration_progress&)> progress;
};

namespace detail {

/// The most bytes of accumulation state (Gram matrices and sums) a calibrator allocates: 2^46,
/// like a cache array, so its size arithmetic never wraps before it is checked.
constexpr std::uint64_t max_calibration_bytes = std::uint64_t(1) << 46;

/// Per-thread conversion buffer (float or strided input -> padded double rows): no allocation per
/// batch once a thread has seen its largest block.
inline std::vector<double>& calibration_scratch() {
  thread_local std::vector<double> scratch;
  return scratch;
}

struct calibration_head {
  std::mutex lock;
  std::vector<double> gram;  // ld x ld, lower triangle of the leading d x d block
  std::vector<double> sum;   // d (for centering)
  std::uint64_t count = 0;
};

/// Every element finite, checked row by row with a loop the compiler vectorises (the generic
/// require_finite computes each offset from an index array, which costs as much as the rank
/// update it guards). Falls back to require_finite to build the message.
template <class T>
bool row_finite(const T* row, index_t cols) {
#if AQUA_DETAIL_GRAM_X86
  if constexpr (std::is_same<T, float>::value) {
    if (gram_simd_available()) return all_finite_avx2(row, cols);
  }
#endif
  bool ok = true;
  for (index_t c = 0; c < cols; ++c) ok &= std::isfinite(row[c]);
  return ok;
}

template <class T>
void require_finite_rows(const matrix_view<const T>& x, const char* fn, const char* name) {
  const index_t rows = x.extent(0), cols = x.extent(1), rs = x.stride(0), cs = x.stride(1);
  for (index_t r = 0; r < rows; ++r) {
    const T* row = x.data() + r * rs;
    bool ok = true;
    if (cs == 1) {
      ok = row_finite(row, cols);
    } else if (cols == 1) {
      ok = std::isfinite(row[0]);
    } else {
      for (index_t c = 0; c < cols; ++c) ok &= std::isfinite(row[c * cs]);
    }
    if (AQUA_UNLIKELY(!ok)) require_finite(x, fn, name);
  }
}
template <class T>
void require_finite_rows(const tensor3_view<const T>& x, const char* fn, const char* name) {
  for (index_t h = 0; h < x.extent(0); ++h) {
    const matrix_view<const T> m = x[h];
    const index_t rows = m.extent(0), cols = m.extent(1), rs = m.stride(0), cs = m.stride(1);
    for (index_t r = 0; r < rows; ++r) {
      const T* row = m.data() + r * rs;
      bool ok = true;
      if (cs == 1) {
        ok = row_finite(row, cols);
      } else {
        for (index_t c = 0; c < cols; ++c) ok &= std::isfinite(row[c * cs]);
      }
      if (AQUA_UNLIKELY(!ok)) require_finite(x, fn, name);
    }
  }
}

/// Largest-magnitude entry of each column positive (first such entry on ties).
template <class = void>
inline void fix_column_signs(Eigen::MatrixXd& v) {
  for (index_t j = 0; j < v.cols(); ++j) {
    index_t best = 0;
    for (index_t i = 1; i < v.rows(); ++i)
      if (std::abs(v(i, j)) > std::abs(v(best, j))) best = i;
    if (v(best, j) < 0) v.col(j) = -v.col(j);
  }
}

}  // namespace detail

/// Streaming per-(layer, KV head) calibrator. See the top of this header for the method and the
/// thread-safety promise.
class calibrator {
public:
  /// Rows converted to double and accumulated per kernel call.
  static constexpr index_t block_rows = 256;

  calibrator(index_t layers, index_t query_heads, index_t kv_heads, index_t d,
             calibrator_options options = {})
      : layers_(layers),
        query_heads_(query_heads),
        kv_heads_(kv_heads),
        d_(d),
        ld_(detail::gram_ld(d)),
        options_(std::move(options)) {
    constexpr const char* fn = "aqua::calibrator";
    AQUA_CHECK(layers >= 1, fn, ": layers must be at least 1, got ", layers);
    AQUA_CHECK(kv_heads >= 1, fn, ": kv_heads must be at least 1, got ", kv_heads);
    AQUA_CHECK(query_heads >= 1 && query_heads % kv_heads == 0, fn, ": query_heads (", query_heads,
               ") must be a positive multiple of kv_heads (", kv_heads, ")");
    AQUA_CHECK(d >= 1 && d <= 65536, fn, ": d must be in [1, 65536], got ", d);
    AQUA_CHECK(layers <= (index_t{1} << 40) / kv_heads, fn, ": layers (", layers, ") x kv_heads (", kv_heads,
               ") is too large");
    group_ = query_heads / kv_heads;
    // Gram matrix and sum per KV head, in double; checked against the same 2^46-byte limit as the
    // cache's arrays before anything is allocated.
    const std::uint64_t heads = static_cast<std::uint64_t>(layers * kv_heads);
    const std::uint64_t per_head =
        (static_cast<std::uint64_t>(ld_) * static_cast<std::uint64_t>(ld_) + static_cast<std::uint64_t>(d)) *
        sizeof(double);
    AQUA_CHECK(heads <= detail::max_calibration_bytes / per_head, fn, ": ", layers, " layers x ", kv_heads,
               " KV heads of ", per_head, " bytes (d = ", d, ") exceed the limit of 2^46 bytes of state");
    allocate_state(heads, per_head, fn);
  }

  index_t layers() const noexcept { return layers_; }
  index_t query_heads() const noexcept { return query_heads_; }
  index_t kv_heads() const noexcept { return kv_heads_; }
  index_t group_size() const noexcept { return group_; }
  index_t d() const noexcept { return d_; }
  const calibrator_options& options() const noexcept { return options_; }
  bool accepts_queries() const noexcept { return options_.source != calibration_source::keys; }
  bool accepts_keys() const noexcept { return options_.source != calibration_source::queries; }

  /// Queries of every query head of `layer`: q [Hq, rows, d]. Query head h accumulates into KV
  /// head h / group_size(). Shapes are checked in any case; returns false (and reads no element)
  /// when the source excludes queries.
  template <class = void>
  bool add_queries(index_t layer, tensor3_view<const float> q) {
    return add3(layer, q, true, "add_queries");
  }
  template <class = void>
  bool add_queries(index_t layer, tensor3_view<const double> q) {
    return add3(layer, q, true, "add_queries");
  }
  /// Queries of one query head: q [rows, d].
  template <class = void>
  bool add_queries(index_t layer, index_t query_head, matrix_view<const float> q) {
    return add2(layer, query_head, q, true, "add_queries");
  }
  template <class = void>
  bool add_queries(index_t layer, index_t query_head, matrix_view<const double> q) {
    return add2(layer, query_head, q, true, "add_queries");
  }
  /// Keys of every KV head of `layer`: k [Hkv, rows, d]. Returns false when the source excludes keys.
  template <class = void>
  bool add_keys(index_t layer, tensor3_view<const float> k) {
    return add3(layer, k, false, "add_keys");
  }
  template <class = void>
  bool add_keys(index_t layer, tensor3_view<const double> k) {
    return add3(layer, k, false, "add_keys");
  }
  /// Keys of one KV head: k [rows, d].
  template <class = void>
  bool add_keys(index_t layer, index_t kv_head, matrix_view<const float> k) {
    return add2(layer, kv_head, k, false, "add_keys");
  }
  template <class = void>
  bool add_keys(index_t layer, index_t kv_head, matrix_view<const double> k) {
    return add2(layer, kv_head, k, false, "add_keys");
  }

  /// Vectors accumulated into one (layer, KV head).
  std::uint64_t vectors(index_t layer, index_t kv_head) const {
    auto& h = head_at(layer, kv_head, "aqua::calibrator::vectors");
    std::lock_guard<std::mutex> guard(h.lock);
    return h.count;
  }
  /// Vectors accumulated over all heads.
  std::uint64_t vectors_seen() const noexcept { return state_->total.load(); }

  /// The accumulated X^T X of one head (full symmetric d x d), uncentered.
  Eigen::MatrixXd gram(index_t layer, index_t kv_head) const {
    auto& h = head_at(layer, kv_head, "aqua::calibrator::gram");
    std::lock_guard<std::mutex> guard(h.lock);
    return full_gram(h);
  }

  /// The projection of one head from what it has accumulated so far. Throws when the head has
  /// received no vectors.
  // finalize_head and finalize are templates only so that Eigen's eigensolver is instantiated in
  // the translation units that finalize, not in every one that includes this header (it costs
  // each of them seconds of compile time). Call them as plain functions.
  template <class Scalar = double>
  head_projection finalize_head(index_t layer, index_t kv_head) const {
    constexpr const char* fn = "aqua::calibrator::finalize_head";
    auto& h = head_at(layer, kv_head, fn);
    Eigen::MatrixXd g;
    Eigen::VectorXd sum;
    std::uint64_t count;
    {
      std::lock_guard<std::mutex> guard(h.lock);
      count = h.count;
      AQUA_CHECK(count > 0, fn, ": layer ", layer, " KV head ", kv_head, " has received no vectors (source ",
                 to_string(options_.source), ")");
      g = full_gram(h);
      if (options_.center) sum = Eigen::Map<const Eigen::VectorXd>(h.sum.data(), d_);
    }
    if (options_.center) g -= sum * sum.transpose() / static_cast<double>(count);
    return decompose<Scalar>(g);
  }

  /// The projection set of every head, finalizing heads on `threads` workers (above 1: the shared
  /// pool of that size, as attention_options::threads). Throws when a head has received no
  /// vectors. The calibrator keeps its state: more vectors may follow.
  template <class Scalar = double>
  projection_set finalize(int threads = 1) const {
    return finalize_on<Scalar>(detail::resolve_executor(nullptr, threads, "aqua::calibrator::finalize"));
  }

  /// finalize on the caller's executor.
  template <class Scalar = double>
  projection_set finalize(executor& exec) const {
    return finalize_on<Scalar>(detail::resolve_executor(&exec, 1, "aqua::calibrator::finalize"));
  }

private:
  template <class Scalar>
  projection_set finalize_on(executor& exec) const {
    constexpr const char* fn = "aqua::calibrator::finalize";
    for (index_t l = 0; l < layers_; ++l)
      for (index_t h = 0; h < kv_heads_; ++h)
        AQUA_CHECK(vectors(l, h) > 0, fn, ": layer ", l, " KV head ", h, " has received no vectors (source ",
                   to_string(options_.source), ")");
    projection_set set(layers_, kv_heads_, d_, group_);
    const index_t total = layers_ * kv_heads_;
    std::mutex progress_lock;
    index_t done = 0;
    detail::parallel_for(total, exec, [&](index_t begin, index_t end, int) {
      for (index_t i = begin; i < end; ++i) {
        const index_t l = i / kv_heads_, h = i % kv_heads_;
        head_projection p = finalize_head<Scalar>(l, h);
        std::lock_guard<std::mutex> guard(progress_lock);
        set.set_head(l, h, std::move(p));
        ++done;
        if (options_.progress) {
          calibration_progress info;
          info.stage = calibration_progress::stage_t::finalize;
          info.layer = l;
          info.kv_head = h;
          info.vectors = vectors(l, h);
          info.total_vectors = vectors_seen();
          info.heads_done = done;
          info.heads_total = total;
          options_.progress(info);
        }
      }
    });
    set.set_source(options_.source);
    set.set_centered(options_.center);
    set.set_vectors_seen(vectors_seen());
    return set;
  }

public:
  /// Adds another calibrator's accumulated state (same shape, source and centering): calibrate
  /// shards separately, then merge. Not thread-safe (see the top of this header).
  template <class = void>
  void merge(const calibrator& other) {
    constexpr const char* fn = "aqua::calibrator::merge";
    AQUA_CHECK(&other != this, fn, ": cannot merge a calibrator into itself");
    AQUA_CHECK(other.layers_ == layers_ && other.query_heads_ == query_heads_ &&
                   other.kv_heads_ == kv_heads_ && other.d_ == d_,
               fn, ": shapes differ (layers ", layers_, " vs ", other.layers_, ", query heads ", query_heads_,
               " vs ", other.query_heads_, ", KV heads ", kv_heads_, " vs ", other.kv_heads_, ", d ", d_,
               " vs ", other.d_, ")");
    AQUA_CHECK(other.options_.source == options_.source && other.options_.center == options_.center, fn,
               ": source/centering differ (", to_string(options_.source), "/", options_.center, " vs ",
               to_string(other.options_.source), "/", other.options_.center, ")");
    for (std::size_t i = 0; i < state_->heads.size(); ++i) {
      auto& mine = state_->heads[i];
      const auto& theirs = other.state_->heads[i];
      for (std::size_t j = 0; j < mine.gram.size(); ++j) mine.gram[j] += theirs.gram[j];
      for (std::size_t j = 0; j < mine.sum.size(); ++j) mine.sum[j] += theirs.sum[j];
      mine.count += theirs.count;
    }
    state_->total += other.state_->total.load();
  }

  /// Forgets everything accumulated. Not thread-safe.
  void reset() {
    for (auto& h : state_->heads) {
      std::fill(h.gram.begin(), h.gram.end(), 0.0);
      std::fill(h.sum.begin(), h.sum.end(), 0.0);
      h.count = 0;
    }
    state_->total = 0;
  }

private:
  struct shared_state {
    explicit shared_state(std::size_t n) : heads(n) {}
    std::vector<detail::calibration_head> heads;
    std::atomic<std::uint64_t> total{0};
  };

  // Refused memory is an aqua::error naming the bytes, as for a cache array.
  void allocate_state(std::uint64_t heads, std::uint64_t per_head, const char* fn) {
#if AQUA_HAS_EXCEPTIONS
    try {
      allocate_heads(heads);
    } catch (const std::bad_alloc&) {
      AQUA_THROW(fn, ": cannot allocate ", heads * per_head, " bytes for the Gram matrices of ", heads,
                 " KV heads (d = ", d_, ")");
    }
#else
    (void)per_head;
    (void)fn;
    allocate_heads(heads);
#endif
  }
  void allocate_heads(std::uint64_t heads) {
    state_ = std::make_unique<shared_state>(static_cast<std::size_t>(heads));
    for (auto& h : state_->heads) allocate(h);
  }

  void allocate(detail::calibration_head& h) const {
    h.gram.assign(static_cast<std::size_t>(ld_ * ld_), 0.0);
    h.sum.assign(static_cast<std::size_t>(d_), 0.0);
  }

  detail::calibration_head& head_at(index_t layer, index_t kv_head, const char* fn) const {
    AQUA_CHECK(layer >= 0 && layer < layers_, fn, ": layer ", layer, " is outside [0, ", layers_, ")");
    AQUA_CHECK(kv_head >= 0 && kv_head < kv_heads_, fn, ": KV head ", kv_head, " is outside [0, ", kv_heads_,
               ")");
    return state_->heads[static_cast<std::size_t>(layer * kv_heads_ + kv_head)];
  }

  Eigen::MatrixXd full_gram(const detail::calibration_head& h) const {
    Eigen::MatrixXd g(d_, d_);
    for (index_t i = 0; i < d_; ++i)
      for (index_t j = 0; j <= i; ++j) g(i, j) = g(j, i) = h.gram[static_cast<std::size_t>(i * ld_ + j)];
    return g;
  }

  template <class Scalar>
  head_projection decompose(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& g) const {
    using matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
    Eigen::SelfAdjointEigenSolver<matrix> solver(g, Eigen::ComputeEigenvectors);
    AQUA_CHECK(solver.info() == Eigen::Success,
               "aqua::calibrator::finalize: the eigendecomposition did not converge");
    // Eigen returns ascending eigenvalues; projected dimension 0 is the largest.
    Eigen::MatrixXd v = solver.eigenvectors().rowwise().reverse().template cast<double>();
    Eigen::VectorXd s = solver.eigenvalues().reverse().template cast<double>();
    for (index_t j = 0; j < d_; ++j) s[j] = std::sqrt(std::max(s[j], 0.0));
    detail::fix_column_signs(v);
    // Eigenvectors of a symmetric matrix are orthonormal to rounding; skip the d^3 re-check.
    return detail::make_head_projection_unchecked(v.cast<float>(), s);
  }

  std::string shape3(index_t heads, const char* what) const {
    return detail::concat("[", heads, " (", what, "), rows, ", d_, "]");
  }

  template <class T>
  bool add3(index_t layer, const tensor3_view<const T>& x, bool queries, const char* name) {
    const std::string fn = std::string("aqua::calibrator::") + name;
    const index_t heads = queries ? query_heads_ : kv_heads_;
    AQUA_CHECK(layer >= 0 && layer < layers_, fn, ": layer ", layer, " is outside [0, ", layers_, ")");
    detail::require_data(x, fn.c_str(), queries ? "q" : "k");
    AQUA_CHECK(x.extent(0) == heads && x.extent(2) == d_, fn, ": ", queries ? "q" : "k", " has shape ",
               detail::shape_string(x), " but must be ", shape3(heads, queries ? "query heads" : "KV heads"));
    if (!(queries ? accepts_queries() : accepts_keys())) return false;
    detail::require_finite_rows(x, fn.c_str(), queries ? "q" : "k");
    const index_t rows = x.extent(1);
    if (rows == 0) return true;
    for (index_t h = 0; h < heads; ++h) accumulate(layer, queries ? h / group_ : h, x[h]);
    report(layer, -1, static_cast<std::uint64_t>(heads * rows));
    return true;
  }

  template <class T>
  bool add2(index_t layer, index_t head, const matrix_view<const T>& x, bool queries, const char* name) {
    const std::string fn = std::string("aqua::calibrator::") + name;
    const index_t heads = queries ? query_heads_ : kv_heads_;
    AQUA_CHECK(layer >= 0 && layer < layers_, fn, ": layer ", layer, " is outside [0, ", layers_, ")");
    AQUA_CHECK(head >= 0 && head < heads, fn, ": ", queries ? "query head " : "KV head ", head,
               " is outside [0, ", heads, ")");
    detail::require_data(x, fn.c_str(), queries ? "q" : "k");
    detail::require_extent(x, 1, d_, fn.c_str(), queries ? "q" : "k", "row length (the calibrator's d)");
    if (!(queries ? accepts_queries() : accepts_keys())) return false;
    detail::require_finite_rows(x, fn.c_str(), queries ? "q" : "k");
    if (x.extent(0) == 0) return true;
    const index_t kv = queries ? head / group_ : head;
    accumulate(layer, kv, x);
    report(layer, kv, static_cast<std::uint64_t>(x.extent(0)));
    return true;
  }

  template <class T>
  void accumulate(index_t layer, index_t kv_head, const matrix_view<const T>& x) {
    auto& h = state_->heads[static_cast<std::size_t>(layer * kv_heads_ + kv_head)];
    const index_t rows = x.extent(0);
    const index_t block = std::min(rows, block_rows);
    std::vector<double>& scratch = detail::calibration_scratch();
    if (scratch.size() < static_cast<std::size_t>(block * ld_))
      scratch.resize(static_cast<std::size_t>(block * ld_));
    const index_t rs = x.stride(0), cs = x.stride(1);
    std::lock_guard<std::mutex> guard(h.lock);
    double* AQUA_RESTRICT sum = h.sum.data();
    // GCC -O2 does not vectorise the conversion loop below (unknown trip count); it would cost a
    // quarter of the rank update at d = 128.
    const bool simd_widen = cs == 1 && detail::gram_simd_available();
    for (index_t r0 = 0; r0 < rows; r0 += block) {
      const index_t n = std::min(block, rows - r0);
#if AQUA_DETAIL_GRAM_X86
      if constexpr (std::is_same<T, float>::value) {
        if (simd_widen) {
          detail::widen_rows_avx2(x.data() + r0 * rs, n, d_, rs, ld_, scratch.data(), sum);
          detail::gram_update(scratch.data(), n, d_, ld_, h.gram.data());
          continue;
        }
      }
#endif
      (void)simd_widen;
      for (index_t r = 0; r < n; ++r) {
        const T* AQUA_RESTRICT src = x.data() + (r0 + r) * rs;
        double* AQUA_RESTRICT dst = scratch.data() + r * ld_;
        if (cs == 1) {
          for (index_t c = 0; c < d_; ++c) dst[c] = static_cast<double>(src[c]);
        } else {
          for (index_t c = 0; c < d_; ++c) dst[c] = static_cast<double>(src[c * cs]);
        }
        for (index_t c = d_; c < ld_; ++c) dst[c] = 0.0;
        for (index_t c = 0; c < d_; ++c) sum[c] += dst[c];
      }
      detail::gram_update(scratch.data(), n, d_, ld_, h.gram.data());
    }
    h.count += static_cast<std::uint64_t>(rows);
  }

  void report(index_t layer, index_t kv_head, std::uint64_t added) {
    const std::uint64_t total = (state_->total += added);
    if (!options_.progress) return;
    calibration_progress info;
    info.stage = calibration_progress::stage_t::accumulate;
    info.layer = layer;
    info.kv_head = kv_head;
    info.vectors = added;
    info.total_vectors = total;
    options_.progress(info);
  }

  index_t layers_, query_heads_, kv_heads_, d_, ld_, group_ = 1;
  calibrator_options options_;
  std::unique_ptr<shared_state> state_;
};

// ---------------------------------------------------------------------------------------------
// Retention analysis

/// Curves indexed by k - 1 (k = 1..d kept dimensions).
struct retention_curve {
  std::vector<double> topk;           ///< fraction of query energy in the top-k |q~_i| dims
  std::vector<double> prefix;         ///< fraction of query energy in the first k dims
  std::vector<double> score_rel_err;  ///< mean ||s~ - s|| / ||s|| with the top-k dims
  std::uint64_t queries = 0;          ///< queries averaged in topk / prefix
  std::uint64_t scored_queries = 0;   ///< queries averaged in score_rel_err
  std::uint64_t keys = 0;             ///< keys each query was scored against (summed over heads)

  /// Values at k (1..d).
  double topk_at(index_t k) const { return topk.at(static_cast<std::size_t>(k - 1)); }
  double prefix_at(index_t k) const { return prefix.at(static_cast<std::size_t>(k - 1)); }
  double score_rel_err_at(index_t k) const { return score_rel_err.at(static_cast<std::size_t>(k - 1)); }
};

struct retention_options {
  /// Queries per query head and keys per KV head taken from each add_layer call, evenly spaced
  /// (0: all). The score error costs queries x keys x d per head.
  index_t max_queries = 0;
  index_t max_keys = 0;
  /// Workers for add_layer (over query heads), as attention_options::threads. Results do not
  /// depend on it.
  int threads = 1;
  /// The engine's own threads (see aqua/executor.hpp); then `threads` must stay 1.
  executor* exec = nullptr;
};

namespace detail {

struct retention_sums {
  std::vector<double> topk, prefix, err;
  std::uint64_t queries = 0, scored = 0, keys = 0;
  void init(index_t d) {
    topk.assign(static_cast<std::size_t>(d), 0.0);
    prefix.assign(static_cast<std::size_t>(d), 0.0);
    err.assign(static_cast<std::size_t>(d), 0.0);
  }
  void add(const retention_sums& o) {
    for (std::size_t i = 0; i < topk.size(); ++i) {
      topk[i] += o.topk[i];
      prefix[i] += o.prefix[i];
      err[i] += o.err[i];
    }
    queries += o.queries;
    scored += o.scored;
    keys += o.keys;
  }
  retention_curve curve() const {
    retention_curve c;
    const std::size_t d = topk.size();
    c.topk.resize(d);
    c.prefix.resize(d);
    c.score_rel_err.resize(d);
    const double nq = static_cast<double>(queries), ns = static_cast<double>(scored);
    for (std::size_t i = 0; i < d; ++i) {
      c.topk[i] = queries ? topk[i] / nq : 0.0;
      c.prefix[i] = queries ? prefix[i] / nq : 0.0;
      c.score_rel_err[i] = scored ? err[i] / ns : 0.0;
    }
    c.queries = queries;
    c.scored_queries = scored;
    c.keys = keys;
    return c;
  }
};

/// Evenly spaced row indices: `take` of `rows` (all when take is 0 or >= rows).
inline std::vector<index_t> sample_rows(index_t rows, index_t take) {
  if (take <= 0 || take >= rows) take = rows;
  std::vector<index_t> idx(static_cast<std::size_t>(take));
  for (index_t i = 0; i < take; ++i) idx[static_cast<std::size_t>(i)] = i * rows / take;
  return idx;
}

template <class = void>
inline Eigen::MatrixXd gather_rows(const matrix_view<const float>& x, const std::vector<index_t>& rows) {
  Eigen::MatrixXd out(static_cast<index_t>(rows.size()), x.extent(1));
  for (std::size_t r = 0; r < rows.size(); ++r)
    for (index_t c = 0; c < x.extent(1); ++c)
      out(static_cast<index_t>(r), c) = static_cast<double>(x(rows[r], c));
  return out;
}

}  // namespace detail

/// Accumulates retention figures of a projection set over held-out dumps, layer by layer.
class retention_evaluator {
public:
  explicit retention_evaluator(projection_set set, retention_options options = {})
      : set_(std::move(set)), options_(options) {
    constexpr const char* fn = "aqua::retention_evaluator";
    AQUA_CHECK(!set_.empty(), fn, ": the projection set is empty");
    detail::resolve_executor(options_.exec, options_.threads, fn);
    sums_.resize(static_cast<std::size_t>(set_.layers() * set_.query_heads()));
    for (auto& s : sums_) s.init(set_.d());
    layer_seen_.assign(static_cast<std::size_t>(set_.layers()), false);
  }

  const projection_set& projections() const noexcept { return set_; }

  /// Held-out vectors of one layer: q [Hq, rows_q, d], k [Hkv, rows_k, d] (same dump: queries are
  /// scored against the keys of their KV head). May be called several times per layer.
  template <class = void>
  void add_layer(index_t layer, tensor3_view<const float> q, tensor3_view<const float> k) {
    constexpr const char* fn = "aqua::retention_evaluator::add_layer";
    AQUA_CHECK(layer >= 0 && layer < set_.layers(), fn, ": layer ", layer, " is outside [0, ", set_.layers(),
               ")");
    detail::require_data(q, fn, "q");
    detail::require_data(k, fn, "k");
    const index_t d = set_.d(), hq = set_.query_heads(), hkv = set_.kv_heads();
    AQUA_CHECK(q.extent(0) == hq && q.extent(2) == d, fn, ": q has shape ", detail::shape_string(q),
               " but the projection set needs [", hq, " (query heads), rows, ", d, "]");
    AQUA_CHECK(k.extent(0) == hkv && k.extent(2) == d, fn, ": k has shape ", detail::shape_string(k),
               " but the projection set needs [", hkv, " (KV heads), rows, ", d, "]");
    detail::require_finite(q, fn, "q");
    detail::require_finite(k, fn, "k");
    const auto qrows = detail::sample_rows(q.extent(1), options_.max_queries);
    const auto krows = detail::sample_rows(k.extent(1), options_.max_keys);
    std::vector<detail::retention_sums> part(static_cast<std::size_t>(hq));
    for (auto& p : part) p.init(d);
    executor& exec = detail::resolve_executor(options_.exec, options_.threads, fn);
    detail::parallel_for(hq, exec, [&](index_t begin, index_t end, int) {
      std::vector<index_t> order(static_cast<std::size_t>(d));
      Eigen::VectorXd e;
      for (index_t h = begin; h < end; ++h) {
        const index_t kv = h / set_.group_size();
        const Eigen::MatrixXd p = set_.head(layer, kv).basis().cast<double>();
        const Eigen::MatrixXd qx = detail::gather_rows(q[h], qrows);
        const Eigen::MatrixXd kx = detail::gather_rows(k[kv], krows);
        const Eigen::MatrixXd qp = qx * p;
        // Projected keys transposed: row i = projected dim i of every key, contiguous.
        const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> kpt =
            (kx * p).transpose();
        const Eigen::MatrixXd exact = qx * kx.transpose();  // from the unprojected vectors
        score_head(qp, kpt, exact, order, e, part[static_cast<std::size_t>(h)]);
        part[static_cast<std::size_t>(h)].keys += static_cast<std::uint64_t>(krows.size());
      }
    });
    for (index_t h = 0; h < hq; ++h)
      sums_[static_cast<std::size_t>(layer * hq + h)].add(part[static_cast<std::size_t>(h)]);
    layer_seen_[static_cast<std::size_t>(layer)] = true;
  }

  /// Figures of one query head.
  retention_curve query_head(index_t layer, index_t query_head) const {
    check_layer(layer, "aqua::retention_evaluator::query_head");
    AQUA_CHECK(query_head >= 0 && query_head < set_.query_heads(),
               "aqua::retention_evaluator::query_head: query head ", query_head, " is outside [0, ",
               set_.query_heads(), ")");
    return sums_[static_cast<std::size_t>(layer * set_.query_heads() + query_head)].curve();
  }
  /// Figures of one KV head: the queries of its group pooled.
  retention_curve head(index_t layer, index_t kv_head) const {
    check_layer(layer, "aqua::retention_evaluator::head");
    AQUA_CHECK(kv_head >= 0 && kv_head < set_.kv_heads(), "aqua::retention_evaluator::head: KV head ",
               kv_head, " is outside [0, ", set_.kv_heads(), ")");
    detail::retention_sums s;
    s.init(set_.d());
    for (index_t g = 0; g < set_.group_size(); ++g)
      s.add(sums_[static_cast<std::size_t>(layer * set_.query_heads() + kv_head * set_.group_size() + g)]);
    return s.curve();
  }
  /// Figures of one layer: all its queries pooled.
  retention_curve layer(index_t layer) const {
    check_layer(layer, "aqua::retention_evaluator::layer");
    detail::retention_sums s;
    s.init(set_.d());
    for (index_t h = 0; h < set_.query_heads(); ++h)
      s.add(sums_[static_cast<std::size_t>(layer * set_.query_heads() + h)]);
    return s.curve();
  }
  /// Figures over every query of every layer added so far.
  retention_curve overall() const {
    detail::retention_sums s;
    s.init(set_.d());
    for (const auto& x : sums_) s.add(x);
    return s.curve();
  }
  /// True once add_layer has been called for `layer`.
  bool has_layer(index_t layer) const {
    check_layer(layer, "aqua::retention_evaluator::has_layer");
    return layer_seen_[static_cast<std::size_t>(layer)];
  }

private:
  void check_layer(index_t layer, const char* fn) const {
    AQUA_CHECK(layer >= 0 && layer < set_.layers(), fn, ": layer ", layer, " is outside [0, ", set_.layers(),
               ")");
  }

  template <class = void>
  static void score_head(const Eigen::MatrixXd& qp,
                         const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>& kpt,
                         const Eigen::MatrixXd& exact, std::vector<index_t>& order, Eigen::VectorXd& e,
                         detail::retention_sums& out) {
    const index_t d = qp.cols(), nk = kpt.cols();
    for (index_t r = 0; r < qp.rows(); ++r) {
      std::iota(order.begin(), order.end(), index_t{0});
      std::stable_sort(order.begin(), order.end(),
                       [&](index_t a, index_t b) { return std::abs(qp(r, a)) > std::abs(qp(r, b)); });
      double total_sorted = 0, total_prefix = 0;
      for (index_t i = 0; i < d; ++i) {
        total_sorted += qp(r, order[static_cast<std::size_t>(i)]) * qp(r, order[static_cast<std::size_t>(i)]);
        total_prefix += qp(r, i) * qp(r, i);
      }
      if (total_sorted > 0) {
        // Each ratio's denominator is the sum in its own order, so k = d gives exactly 1 and the
        // running sums of non-negative terms never decrease.
        double run_sorted = 0, run_prefix = 0;
        for (index_t i = 0; i < d; ++i) {
          const double v = qp(r, order[static_cast<std::size_t>(i)]);
          run_sorted += v * v;
          run_prefix += qp(r, i) * qp(r, i);
          out.topk[static_cast<std::size_t>(i)] += run_sorted / total_sorted;
          out.prefix[static_cast<std::size_t>(i)] += run_prefix / total_prefix;
        }
        ++out.queries;
      }
      if (nk == 0) continue;
      const double ref = exact.row(r).norm();
      if (!(ref > 0)) continue;
      e = -exact.row(r).transpose();
      for (index_t i = 0; i < d; ++i) {
        const index_t dim = order[static_cast<std::size_t>(i)];
        e.noalias() += qp(r, dim) * kpt.row(dim).transpose();
        out.err[static_cast<std::size_t>(i)] += e.norm() / ref;
      }
      ++out.scored;
    }
  }

  projection_set set_;
  retention_options options_;
  std::vector<detail::retention_sums> sums_;
  std::vector<bool> layer_seen_;
};

}  // namespace aqua
