// Minimal .npy (format version 1.0) writer for float32 C-order arrays, used by --dump-qk.
// Temporary: the calibration work adds aqua::save_npy to include/aqua/io.hpp; once that is on
// main this file goes and the dump calls aqua::save_npy instead.
#pragma once

#include <aqua/config.hpp>
#include <aqua/tensor_view.hpp>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace llama2c {

/// Writes `data` (float32, C order, little-endian) with the given shape to `path`.
inline void write_npy(const std::string& path, const float* data, const std::vector<aqua::index_t>& shape) {
  const std::uint32_t probe = 1;
  unsigned char first_byte;
  std::memcpy(&first_byte, &probe, 1);
  AQUA_CHECK(first_byte == 1, "llama2c::write_npy: big-endian hosts are not supported");
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  std::size_t count = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    AQUA_CHECK(shape[i] >= 0, "llama2c::write_npy: negative extent ", shape[i], " for '", path, "'");
    dict += std::to_string(shape[i]) + (shape.size() == 1 || i + 1 < shape.size() ? "," : "");
    if (i + 1 < shape.size()) dict += ' ';
    count *= static_cast<std::size_t>(shape[i]);
  }
  dict += "), }";
  // Magic (6) + version (2) + header length (2) + dict + padding + '\n' is a multiple of 64.
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  AQUA_CHECK(dict.size() <= 65535, "llama2c::write_npy: header too long for format 1.0");

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  AQUA_CHECK(out.good(), "llama2c::write_npy: cannot create '", path, "'");
  const char magic[] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  out.write(magic, sizeof magic);
  const auto header_len = static_cast<std::uint16_t>(dict.size());
  const char len_bytes[] = {static_cast<char>(header_len & 0xFF), static_cast<char>(header_len >> 8)};
  out.write(len_bytes, 2);
  out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(count * sizeof(float)));
  AQUA_CHECK(out.good(), "llama2c::write_npy: write error on '", path, "'");
}

/// Collects the post-RoPE queries and keys of every layer and writes them as
/// q_layer{l}.npy [Hq, rows, d] and k_layer{l}.npy [Hkv, rows, d] (the aqua_calibrate layout).
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

  void write_heads(const std::string& path, const std::vector<float>& store, aqua::index_t heads,
                   aqua::index_t rows) const {
    std::vector<float> out(store.size());
    for (aqua::index_t r = 0; r < rows; ++r)
      for (aqua::index_t h = 0; h < heads; ++h)
        for (aqua::index_t c = 0; c < d_; ++c)
          out[static_cast<std::size_t>((h * rows + r) * d_ + c)] =
              store[static_cast<std::size_t>((r * heads + h) * d_ + c)];
    write_npy(path, out.data(), {heads, rows, d_});
  }

  aqua::index_t hq_, hkv_, d_;
  std::vector<std::vector<float>> q_, k_;
};

}  // namespace llama2c
