// --dump-qk: collects the post-RoPE queries and keys of every layer and writes them with
// aqua::save_npy in the layout aqua_calibrate --dumps reads.
#pragma once

#include <aqua/io.hpp>
#include <aqua/tensor_view.hpp>

#include <string>
#include <vector>

namespace llama2c {

/// Writes q_layer{l}.npy [Hq, rows, d] and k_layer{l}.npy [Hkv, rows, d].
class qk_dump {
public:
  qk_dump(int layers, int hq, int hkv, int d)
      : hq_(hq),
        hkv_(hkv),
        d_(d),
        q_(static_cast<std::size_t>(layers)),
        k_(static_cast<std::size_t>(layers)) {}

  /// Appends the rows of one forward call (views [H, M, d]).
  void add(int layer, aqua::tensor3_view<const float> q, aqua::tensor3_view<const float> k) {
    append(q_[static_cast<std::size_t>(layer)], q);
    append(k_[static_cast<std::size_t>(layer)], k);
  }

  /// Writes the files; returns the number of rows per head.
  aqua::index_t write(const std::string& dir) const {
    aqua::index_t rows = 0;
    for (std::size_t l = 0; l < q_.size(); ++l) {
      rows = static_cast<aqua::index_t>(q_[l].size()) / (hq_ * d_);
      write_heads(dir + "/q_layer" + std::to_string(l) + ".npy", q_[l], hq_, rows);
      write_heads(dir + "/k_layer" + std::to_string(l) + ".npy", k_[l], hkv_, rows);
    }
    return rows;
  }

private:
  // Storage is token-major [rows, H, d], the order rows arrive in.
  static void append(std::vector<float>& store, aqua::tensor3_view<const float> t) {
    for (aqua::index_t r = 0; r < t.extent(1); ++r)
      for (aqua::index_t h = 0; h < t.extent(0); ++h)
        for (aqua::index_t c = 0; c < t.extent(2); ++c) store.push_back(t(h, r, c));
  }

  // A head-major [H, rows, d] view over the token-major store; save_npy packs it in C order.
  void write_heads(const std::string& path, const std::vector<float>& store, aqua::index_t heads,
                   aqua::index_t rows) const {
    const aqua::tensor3_view<const float> view(store.data(), {heads, rows, d_}, {d_, heads * d_, 1});
    aqua::save_npy(path, view);
  }

  aqua::index_t hq_, hkv_, d_;
  std::vector<std::vector<float>> q_, k_;
};

}  // namespace llama2c
