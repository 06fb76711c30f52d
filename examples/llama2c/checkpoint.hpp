// llama2.c checkpoint loader (the format of karpathy/llama2.c `run.c`, "version 0").
//
// Layout: a header of seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len), then float32 tensors in this order, each row-major [out, in]:
//   token embedding [vocab, dim], attention rmsnorm [L, dim], wq [L, dim, dim],
//   wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim], ffn rmsnorm [L, dim],
//   w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim], final rmsnorm [dim],
//   two legacy RoPE tables [seq_len, head_dim / 2] each (skipped: RoPE is computed),
//   and the classifier [vocab, dim] only when the header's vocab_size is negative.
// A positive vocab_size means the classifier shares the token embedding.
//
// The loader trusts nothing: every header value is range-checked, the expected file size is
// computed in checked 64-bit arithmetic and must match exactly, and every weight must be finite.
// load(path) reads the file and hands its bytes to load(data, size, name), the one parser (also
// what the fuzz target calls).
#pragma once

#include <aqua/config.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace llama2c {

/// Model hyper-parameters, as read from the header.
struct config {
  int dim = 0;         // residual stream width
  int hidden_dim = 0;  // SwiGLU inner width
  int n_layers = 0;
  int n_heads = 0;     // query heads
  int n_kv_heads = 0;  // key/value heads (GQA: n_heads is a multiple)
  int vocab_size = 0;  // always positive here; see shared_classifier
  int seq_len = 0;     // maximum context length
  bool shared_classifier = true;

  int head_dim() const { return dim / n_heads; }
  int kv_dim() const { return n_kv_heads * head_dim(); }
  int group_size() const { return n_heads / n_kv_heads; }
};

// The engine's own helpers (not aqua's API).
namespace internal {

/// The streamable arguments concatenated into one message string.
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

/// a * b + c on non-negative 64-bit counts; throws instead of wrapping.
inline std::uint64_t checked_mul_add(std::uint64_t a, std::uint64_t b, std::uint64_t c,
                                     const std::string& path) {
  constexpr std::uint64_t max = std::numeric_limits<std::uint64_t>::max();
  if (a != 0 && b > (max - c) / a)
    AQUA_THROW("llama2c checkpoint '", path, "': the header's sizes overflow 64-bit byte counts");
  return a * b + c;
}

/// Whole file as bytes; a missing or unreadable file is an error naming the path.
inline std::vector<char> read_file_bytes(const std::string& path, const char* what) {
  std::error_code ec;
  AQUA_CHECK(!std::filesystem::exists(path, ec) || std::filesystem::is_regular_file(path, ec), "llama2c ",
             what, " '", path, "': not a regular file");
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  AQUA_CHECK(in.good(), "llama2c ", what, " '", path, "': cannot open the file");
  const std::streamoff size = in.tellg();
  AQUA_CHECK(size >= 0, "llama2c ", what, " '", path, "': cannot determine the file size");
  std::vector<char> bytes(static_cast<std::size_t>(size));
  in.seekg(0);
  if (size > 0) in.read(bytes.data(), size);
  AQUA_CHECK(in.good() || (size == 0), "llama2c ", what, " '", path, "': read error");
  return bytes;
}

}  // namespace internal

/// A loaded checkpoint: the config and one float buffer the weight accessors point into.
class checkpoint {
public:
  /// Header limits: far above any llama2.c model, low enough that a corrupt header is reported
  /// as such rather than as an allocation failure.
  static constexpr int max_dim = 1 << 16;
  static constexpr int max_layers = 1 << 10;
  static constexpr int max_vocab = 1 << 22;
  static constexpr int max_seq_len = 1 << 20;
  static constexpr int header_bytes = 7 * 4;

  /// Reads and validates `path`; throws aqua::error naming the file and the problem.
  static checkpoint load(const std::string& path) {
    const std::vector<char> bytes = internal::read_file_bytes(path, "checkpoint");
    return load(bytes.data(), bytes.size(), path);
  }

  /// Only the header of the checkpoint at `path` (28 bytes read, validated as load() does): what a
  /// tool checks its flags against before loading the weights.
  static config read_config(const std::string& path) {
    std::error_code ec;
    AQUA_CHECK(!std::filesystem::is_directory(path, ec), "llama2c checkpoint '", path, "': is a directory");
    std::ifstream in(path, std::ios::binary);
    AQUA_CHECK(in.good(), "llama2c checkpoint '", path, "': cannot open the file");
    std::int32_t h[7];
    in.read(reinterpret_cast<char*>(h), sizeof h);
    AQUA_CHECK(in.gcount() == static_cast<std::streamsize>(sizeof h), "llama2c checkpoint '", path,
               "': the file is shorter than the ", header_bytes,
               "-byte header (truncated or not a checkpoint)");
    return parse_header(h, path);
  }

  /// The same from the bytes of a checkpoint file in memory (`size` bytes at `data`, copied);
  /// errors call them `name`. The file overload reads the file and calls this one.
  static checkpoint load(const void* data, std::size_t size, const std::string& name = "<memory>") {
    const std::string& path = name;
    AQUA_CHECK(data != nullptr || size == 0, "llama2c checkpoint '", path, "': data is null but size is ",
               size);
    const char* bytes = static_cast<const char*>(data);
    const auto file_size = static_cast<std::uint64_t>(size);
    AQUA_CHECK(file_size >= header_bytes, "llama2c checkpoint '", path, "': the file has ", file_size,
               " bytes, less than the ", header_bytes, "-byte header (truncated or not a checkpoint)");
    std::int32_t h[7];
    std::memcpy(h, bytes, sizeof h);

    checkpoint ck;
    ck.path_ = path;
    config& c = ck.cfg_;
    c = parse_header(h, path);

    const std::uint64_t expected = expected_file_size(c, path);
    AQUA_CHECK(file_size >= expected, "llama2c checkpoint '", path, "': truncated: the header (",
               header_string(c), ") needs ", expected, " bytes but the file has ", file_size);
    AQUA_CHECK(file_size == expected, "llama2c checkpoint '", path, "': the file has ", file_size,
               " bytes but the header (", header_string(c), ") needs exactly ", expected,
               " (trailing data, or a header that does not describe this file)");

    ck.weights_.resize(static_cast<std::size_t>((expected - header_bytes) / 4));
    std::memcpy(ck.weights_.data(), bytes + header_bytes, ck.weights_.size() * 4);
    for (std::size_t i = 0; i < ck.weights_.size(); ++i)
      AQUA_CHECK(std::isfinite(ck.weights_[i]), "llama2c checkpoint '", path, "': weight ", i,
                 " (byte offset ", header_bytes + 4 * i, ") is not finite (", ck.weights_[i],
                 "): corrupt file");
    ck.map_offsets();
    return ck;
  }

  /// Exact size in bytes of a checkpoint with this config (throws on overflow).
  static std::uint64_t expected_file_size(const config& c, const std::string& path = "") {
    std::uint64_t floats = 0;
    for (const auto& t : tensor_sizes(c)) floats = internal::checked_mul_add(t.first, t.second, floats, path);
    return internal::checked_mul_add(floats, 4, header_bytes, path);
  }

  const config& cfg() const { return cfg_; }
  const std::string& path() const { return path_; }

  // Row-major weights; `l` is the layer.
  const float* token_embedding() const { return at(off_.embedding); }
  const float* rms_att(int l) const { return at(off_.rms_att) + per_layer(l, cfg_.dim); }
  const float* wq(int l) const { return at(off_.wq) + per_layer(l, cfg_.dim, cfg_.dim); }
  const float* wk(int l) const { return at(off_.wk) + per_layer(l, cfg_.kv_dim(), cfg_.dim); }
  const float* wv(int l) const { return at(off_.wv) + per_layer(l, cfg_.kv_dim(), cfg_.dim); }
  const float* wo(int l) const { return at(off_.wo) + per_layer(l, cfg_.dim, cfg_.dim); }
  const float* rms_ffn(int l) const { return at(off_.rms_ffn) + per_layer(l, cfg_.dim); }
  const float* w1(int l) const { return at(off_.w1) + per_layer(l, cfg_.hidden_dim, cfg_.dim); }
  const float* w2(int l) const { return at(off_.w2) + per_layer(l, cfg_.dim, cfg_.hidden_dim); }
  const float* w3(int l) const { return at(off_.w3) + per_layer(l, cfg_.hidden_dim, cfg_.dim); }
  const float* rms_final() const { return at(off_.rms_final); }
  const float* classifier() const { return at(off_.classifier); }

private:
  struct offsets {
    std::size_t embedding = 0, rms_att = 0, wq = 0, wk = 0, wv = 0, wo = 0, rms_ffn = 0, w1 = 0, w2 = 0,
                w3 = 0, rms_final = 0, classifier = 0;
  };

  static std::string header_string(const config& c) {
    return internal::concat("dim=", c.dim, " hidden_dim=", c.hidden_dim, " n_layers=", c.n_layers,
                            " n_heads=", c.n_heads, " n_kv_heads=", c.n_kv_heads,
                            " vocab_size=", c.shared_classifier ? "" : "-", c.vocab_size,
                            " seq_len=", c.seq_len);
  }

  static config parse_header(const std::int32_t (&h)[7], const std::string& path) {
    config c;
    c.dim = h[0];
    c.hidden_dim = h[1];
    c.n_layers = h[2];
    c.n_heads = h[3];
    c.n_kv_heads = h[4];
    c.shared_classifier = h[5] > 0;
    // The sign of vocab_size only selects the classifier; 64-bit so that INT_MIN has a magnitude.
    const std::int64_t vocab = h[5] < 0 ? -static_cast<std::int64_t>(h[5]) : h[5];
    check_range(vocab, 1, max_vocab, "|vocab_size|", path);
    c.vocab_size = static_cast<int>(vocab);
    c.seq_len = h[6];
    validate_header(c, path);
    return c;
  }

  static void check_range(std::int64_t value, std::int64_t lo, std::int64_t hi, const char* name,
                          const std::string& path) {
    AQUA_CHECK(value >= lo && value <= hi, "llama2c checkpoint '", path, "': header field ", name, " = ",
               value, " is outside [", lo, ", ", hi, "] (corrupt header or not a llama2.c checkpoint)");
  }

  static void validate_header(const config& c, const std::string& path) {
    check_range(c.dim, 1, max_dim, "dim", path);
    check_range(c.hidden_dim, 1, 16 * static_cast<std::int64_t>(max_dim), "hidden_dim", path);
    check_range(c.n_layers, 1, max_layers, "n_layers", path);
    check_range(c.n_heads, 1, c.dim, "n_heads", path);
    check_range(c.n_kv_heads, 1, c.n_heads, "n_kv_heads", path);
    check_range(c.seq_len, 1, max_seq_len, "seq_len", path);
    AQUA_CHECK(c.dim % c.n_heads == 0, "llama2c checkpoint '", path, "': n_heads = ", c.n_heads,
               " does not divide dim = ", c.dim);
    AQUA_CHECK(c.n_heads % c.n_kv_heads == 0, "llama2c checkpoint '", path, "': n_kv_heads = ", c.n_kv_heads,
               " does not divide n_heads = ", c.n_heads, " (GQA needs whole groups)");
    AQUA_CHECK(c.head_dim() % 2 == 0, "llama2c checkpoint '", path,
               "': head_dim = dim / n_heads = ", c.head_dim(), " is odd; RoPE rotates pairs of dimensions");
  }

  /// (count, elements) per tensor in file order; the RoPE tables are counted, then skipped.
  static std::vector<std::pair<std::uint64_t, std::uint64_t>> tensor_sizes(const config& c) {
    const std::uint64_t dim = c.dim, hidden = c.hidden_dim, layers = c.n_layers, vocab = c.vocab_size,
                        kv_dim = static_cast<std::uint64_t>(c.kv_dim()), seq = c.seq_len,
                        half_head = static_cast<std::uint64_t>(c.head_dim() / 2);
    std::vector<std::pair<std::uint64_t, std::uint64_t>> t = {{vocab, dim},
                                                              {layers, dim},
                                                              {layers, dim * dim},
                                                              {layers, kv_dim * dim},
                                                              {layers, kv_dim * dim},
                                                              {layers, dim * dim},
                                                              {layers, dim},
                                                              {layers, hidden * dim},
                                                              {layers, hidden * dim},
                                                              {layers, hidden * dim},
                                                              {1, dim},
                                                              {2 * seq, half_head}};
    if (!c.shared_classifier) t.emplace_back(vocab, dim);
    return t;
  }

  void map_offsets() {
    const auto sizes = tensor_sizes(cfg_);
    // Same order as tensor_sizes(); nullptr marks the skipped RoPE tables.
    std::size_t* slots[] = {&off_.embedding, &off_.rms_att, &off_.wq,        &off_.wk, &off_.wv,
                            &off_.wo,        &off_.rms_ffn, &off_.w1,        &off_.w2, &off_.w3,
                            &off_.rms_final, nullptr,       &off_.classifier};
    std::size_t pos = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      if (slots[i] != nullptr) *slots[i] = pos;
      pos += static_cast<std::size_t>(sizes[i].first * sizes[i].second);
    }
    if (cfg_.shared_classifier) off_.classifier = off_.embedding;
  }

  std::size_t per_layer(int l, std::size_t rows, std::size_t cols = 1) const {
    return static_cast<std::size_t>(l) * rows * cols;
  }
  const float* at(std::size_t offset) const { return weights_.data() + offset; }

  config cfg_;
  std::string path_;
  std::vector<float> weights_;
  offsets off_;
};

}  // namespace llama2c
