// The llama2.c forward pass (RMSNorm, RoPE on adjacent pairs, GQA attention, SwiGLU FFN, final
// RMSNorm, classifier) with attention delegated to aqua.
//
// The engine owns its buffers and its KV cache, token-major like most engines: per layer
// [seq_len, kv_dim] for keys and for values. It never copies them for aqua: attention receives
// strided views over them (queries [Hq, M, d] over the [M, dim] query buffer, keys and values
// [Hkv, N, d] over the cache). The attention computation itself sits behind `attention_backend`,
// so exact dense attention and AQUA are interchangeable without touching the model code.
#pragma once

#include <aqua/attention.hpp>
#include <aqua/tensor_view.hpp>

#include <Eigen/Core>

#include <cmath>
#include <functional>
#include <vector>

#include "checkpoint.hpp"

namespace llama2c {

using aqua::index_t;

/// How the engine asks for attention. Per layer and per forward call, the engine first hands the
/// keys and values of the new positions to `append` (after they are written to its own cache),
/// then asks `attend` for the outputs of the new queries.
class attention_backend {
public:
  virtual ~attention_backend() = default;

  /// New post-RoPE keys and values [Hkv, M, d] at positions first_position .. first_position+M-1.
  /// A backend with a cache of its own (AQUA's projected keys) ingests them here; the default
  /// ignores them, since the engine's cache already holds them.
  virtual void append(int /*layer*/, index_t /*first_position*/, aqua::tensor3_view<const float> /*keys*/,
                      aqua::tensor3_view<const float> /*values*/) {}

  /// Causal attention of the queries q [Hq, M, d] (positions N-M .. N-1) over the engine's cache
  /// k, v [Hkv, N, d]; writes out [Hq, M, d].
  virtual void attend(int layer, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float> k,
                      aqua::tensor3_view<const float> v, aqua::tensor3_view<float> out) = 0;

  /// Forget every cached position (a new sequence starts).
  virtual void reset() {}

  virtual const char* name() const = 0;
};

/// Exact attention: aqua::dense_decode for one new token, aqua::dense_prefill for a block.
class dense_attention final : public attention_backend {
public:
  explicit dense_attention(int threads = 1) { options_.threads = threads; }

  void attend(int, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float> k,
              aqua::tensor3_view<const float> v, aqua::tensor3_view<float> out) override {
    if (q.extent(1) == 1) {
      // Decode: drop the M = 1 axis; the views keep the engine's strides.
      aqua::matrix_view<const float> q1(q.data(), {q.extent(0), q.extent(2)}, {q.stride(0), q.stride(2)});
      aqua::matrix_view<float> out1(out.data(), {out.extent(0), out.extent(2)},
                                    {out.stride(0), out.stride(2)});
      aqua::dense_decode<float>(q1, k, v, out1, options_);
    } else {
      aqua::dense_prefill<float>(q, k, v, out, options_);
    }
  }

  const char* name() const override { return "dense"; }

private:
  aqua::attention_options options_;  // scale 1/sqrt(d), causal
};

/// Called per layer with the post-RoPE queries [Hq, M, d] and keys [Hkv, M, d] of the new positions.
using qk_observer = std::function<void(int layer, index_t first_position, aqua::tensor3_view<const float> q,
                                       aqua::tensor3_view<const float> k)>;

class transformer {
public:
  /// `max_block` bounds the tokens of one forward call (default: the whole context).
  transformer(const checkpoint& model, attention_backend& attention, int max_block = 0)
      : w_(model), attention_(attention), c_(model.cfg()) {
    const index_t block = max_block > 0 ? max_block : c_.seq_len;
    max_block_ = block;
    x_.resize(block, c_.dim);
    xb_.resize(block, c_.dim);
    q_.resize(block, c_.dim);
    att_.resize(block, c_.dim);
    hb_.resize(block, c_.hidden_dim);
    hb2_.resize(block, c_.hidden_dim);
    logits_.resize(block, c_.vocab_size);
    const std::size_t cache = static_cast<std::size_t>(c_.n_layers) * c_.seq_len * c_.kv_dim();
    key_cache_.assign(cache, 0.0f);
    value_cache_.assign(cache, 0.0f);
    build_rope_table();
  }

  const config& cfg() const { return c_; }
  /// Positions held in the cache.
  index_t position() const { return position_; }
  void reset() {
    position_ = 0;
    attention_.reset();
  }
  void set_qk_observer(qk_observer observer) { observer_ = std::move(observer); }

  /// Runs `count` tokens at positions position() .. position()+count-1, appends them to the
  /// cache and returns their next-token logits [count, vocab] (valid until the next call).
  aqua::matrix_view<const float> forward(const int* tokens, index_t count) {
    AQUA_CHECK(count >= 1 && count <= max_block_, "llama2c::transformer::forward: ", count,
               " tokens in one call; the engine was built for 1 .. ", max_block_);
    AQUA_CHECK(position_ + count <= c_.seq_len, "llama2c::transformer::forward: positions ", position_,
               " .. ", position_ + count - 1, " exceed the model's context of ", c_.seq_len, " tokens");
    for (index_t i = 0; i < count; ++i)
      AQUA_CHECK(tokens[i] >= 0 && tokens[i] < c_.vocab_size, "llama2c::transformer::forward: token ",
                 tokens[i], " is outside the vocabulary [0, ", c_.vocab_size, ")");

    const index_t m = count, dim = c_.dim, kv_dim = c_.kv_dim();
    auto x = x_.topRows(m), xb = xb_.topRows(m), q = q_.topRows(m), att = att_.topRows(m);
    auto hb = hb_.topRows(m), hb2 = hb2_.topRows(m);
    for (index_t i = 0; i < m; ++i) x.row(i) = weights(w_.token_embedding() + tokens[i] * dim, 1, dim);

    for (int l = 0; l < c_.n_layers; ++l) {
      // Attention block. New keys and values go straight into this layer's cache rows.
      float* k_cache = layer_cache(key_cache_, l);
      float* v_cache = layer_cache(value_cache_, l);
      map_rows k_new(k_cache + position_ * kv_dim, m, kv_dim), v_new(v_cache + position_ * kv_dim, m, kv_dim);
      rmsnorm(xb, x, w_.rms_att(l));
      q.noalias() = xb * weights(w_.wq(l), dim, dim).transpose();
      k_new.noalias() = xb * weights(w_.wk(l), kv_dim, dim).transpose();
      v_new.noalias() = xb * weights(w_.wv(l), kv_dim, dim).transpose();
      apply_rope(q.data(), m, dim);
      apply_rope(k_cache + position_ * kv_dim, m, kv_dim);

      const auto q_view = heads_view(q_.data(), c_.n_heads, m);
      const auto k_new_view = heads_view(k_cache + position_ * kv_dim, c_.n_kv_heads, m);
      const auto v_new_view = heads_view(v_cache + position_ * kv_dim, c_.n_kv_heads, m);
      if (observer_) observer_(l, position_, q_view, k_new_view);
      attention_.append(l, position_, k_new_view, v_new_view);
      attention_.attend(l, q_view, heads_view(k_cache, c_.n_kv_heads, position_ + m),
                        heads_view(v_cache, c_.n_kv_heads, position_ + m),
                        heads_view(att_.data(), c_.n_heads, m));
      x.noalias() += att * weights(w_.wo(l), dim, dim).transpose();

      // SwiGLU feed-forward: w2(silu(w1 x) * w3 x).
      rmsnorm(xb, x, w_.rms_ffn(l));
      hb.noalias() = xb * weights(w_.w1(l), c_.hidden_dim, dim).transpose();
      hb2.noalias() = xb * weights(w_.w3(l), c_.hidden_dim, dim).transpose();
      hb.array() = hb.array() / (1.0f + (-hb.array()).exp()) * hb2.array();
      x.noalias() += hb * weights(w_.w2(l), dim, c_.hidden_dim).transpose();
    }
    rmsnorm(xb, x, w_.rms_final());
    logits_.topRows(m).noalias() = xb * weights(w_.classifier(), c_.vocab_size, dim).transpose();
    position_ += m;
    return aqua::matrix_view<const float>(logits_.data(), {m, static_cast<index_t>(c_.vocab_size)});
  }

private:
  using matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using map_rows = Eigen::Map<matrix>;
  using const_map = Eigen::Map<const matrix>;

  static const_map weights(const float* data, index_t rows, index_t cols) {
    return const_map(data, rows, cols);
  }

  float* layer_cache(std::vector<float>& cache, int layer) {
    return cache.data() + static_cast<std::size_t>(layer) * c_.seq_len * c_.kv_dim();
  }

  /// [heads, rows, d] view of a token-major [rows, heads * d] buffer: no copy, just strides.
  aqua::tensor3_view<float> heads_view(float* data, index_t heads, index_t rows) const {
    const index_t d = c_.head_dim();
    return aqua::tensor3_view<float>(data, {heads, rows, d}, {d, heads * d, 1});
  }

  /// out = weight * x / sqrt(mean(x^2) + 1e-5), row by row.
  template <class Out, class In>
  static void rmsnorm(Out&& out, const In& x, const float* weight) {
    const auto w = Eigen::Map<const Eigen::RowVectorXf>(weight, x.cols());
    for (index_t i = 0; i < x.rows(); ++i) {
      const float ss = x.row(i).squaredNorm() / static_cast<float>(x.cols()) + 1e-5f;
      out.row(i) = x.row(i).cwiseProduct(w) * (1.0f / std::sqrt(ss));
    }
  }

  /// llama2.c's RoPE: within each head, dims (2i, 2i+1) rotate by pos * 10000^(-2i / head_dim),
  /// the angle computed in float exactly as run.c does.
  void build_rope_table() {
    const int half = c_.head_dim() / 2;
    rope_cos_.resize(static_cast<std::size_t>(c_.seq_len) * half);
    rope_sin_.resize(rope_cos_.size());
    for (int pos = 0; pos < c_.seq_len; ++pos)
      for (int i = 0; i < half; ++i) {
        const float freq =
            1.0f / std::pow(10000.0f, static_cast<float>(2 * i) / static_cast<float>(c_.head_dim()));
        const float angle = static_cast<float>(pos) * freq;
        rope_cos_[static_cast<std::size_t>(pos) * half + i] = std::cos(angle);
        rope_sin_[static_cast<std::size_t>(pos) * half + i] = std::sin(angle);
      }
  }

  /// Rotates the rows of a token-major [m, width] buffer at positions position_ .. position_+m-1.
  void apply_rope(float* rows, index_t m, index_t width) const {
    const index_t half = c_.head_dim() / 2;
    for (index_t r = 0; r < m; ++r) {
      const float* cs = rope_cos_.data() + (position_ + r) * half;
      const float* sn = rope_sin_.data() + (position_ + r) * half;
      float* v = rows + r * width;
      for (index_t j = 0; j < width; j += 2) {
        const index_t i = (j % c_.head_dim()) / 2;
        const float v0 = v[j], v1 = v[j + 1];
        v[j] = v0 * cs[i] - v1 * sn[i];
        v[j + 1] = v0 * sn[i] + v1 * cs[i];
      }
    }
  }

  const checkpoint& w_;
  attention_backend& attention_;
  config c_;
  index_t max_block_ = 0;
  index_t position_ = 0;
  qk_observer observer_;
  matrix x_, xb_, q_, att_, hb_, hb2_, logits_;
  std::vector<float> key_cache_, value_cache_;
  std::vector<float> rope_cos_, rope_sin_;
};

}  // namespace llama2c
