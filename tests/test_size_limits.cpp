// Sizes read from file headers: for every reader, a header that claims more data than the file
// holds, and a header whose sizes overflow 64 bits when multiplied, are errors that name the
// file; neither may turn into an allocation of the claimed (or wrapped) size.
#include <aqua/attention.hpp>
#include <aqua/io.hpp>
#include "../examples/llama2c/checkpoint.hpp"
#include "../examples/llama2c/tokenizer.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "file_support.hpp"

using aqua::index_t;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

using aqua_test::temp_dir;
using aqua_test::write_bytes;

std::string le(std::uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return s;
}

/// Version 1.0 .npy bytes with `dict` as the header (newline-terminated, unpadded) and `data`.
std::string npy(const std::string& dict, const std::string& data) {
  return std::string("\x93NUMPY\x01\x00", 8) + le(dict.size() + 1, 2) + dict + "\n" + data;
}

std::string safetensors(const std::string& json, const std::string& data) {
  return le(json.size(), 8) + json + data;
}

std::string i32s(std::initializer_list<std::int32_t> v) {
  std::string s;
  for (std::int32_t x : v) s += le(static_cast<std::uint32_t>(x), 4);
  return s;
}

}  // namespace

TEST_CASE(".npy: a shape that claims more data than the file holds is a truncation error",
          "[io][npy][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("big.npy");
  // 2^40 floats = 4 TiB: must be reported from the header, never allocated.
  write_bytes(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }",
                        std::string(8, '\0')));
  CHECK_THROWS_WITH(
      aqua::read_npy(path),
      Contains(path) && Contains("truncated: the shape needs 4398046511104 bytes of data but 8 remain"));
  // The header length itself (v2: 32-bit) may not run past the end either.
  write_bytes(path, std::string("\x93NUMPY\x02\x00", 8) + le(0xFFFFFFF0u, 4) + "{}");
  CHECK_THROWS_WITH(aqua::read_npy(path),
                    Contains(path) && Contains("header length 4294967280 runs past the end"));
}

TEST_CASE(".npy: element counts and byte counts that overflow 64 bits are errors", "[io][npy][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("overflow.npy");
  // 2^32 x 2^32 elements: the element count wraps to 0 in 64 bits.
  write_bytes(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", ""));
  CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains("extents multiply past 2^63 - 1"));
  // 2^62 elements fit, 2^62 x 8 bytes do not (it would wrap to 0 = the empty data section).
  write_bytes(path, npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }", ""));
  CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains("data size overflows 64 bits"));
  // As in NumPy, a zero extent does not excuse the others: their product would overflow the
  // strides of any view of the (empty) array.
  write_bytes(path,
              npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296), }", ""));
  CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains("extents multiply past 2^63 - 1"));
  write_bytes(path,
              npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 7, 1500000000000000000), }", ""));
  CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains("extents multiply past 2^63 - 1"));
  // Huge extents whose product fits are an empty array, and its views index without overflow.
  write_bytes(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 7), }", ""));
  const aqua::npy_array empty = aqua::read_npy(path);
  CHECK(empty.size() == 0);
  const auto v = empty.float_view<3>();
  CHECK(v.empty());
  CHECK(v.stride(0) == aqua::index_t{7} << 32);
}

TEST_CASE("npy_array rejects a shape whose element count overflows instead of wrapping to the data size",
          "[io][npy][size_limits]") {
  const aqua::index_t big = aqua::index_t{1} << 32;
  // 2^32 x 2^32 wraps to 0 in 64 bits, which an empty buffer would match.
  CHECK_THROWS_WITH(aqua::npy_array({big, big}, std::vector<float>{}),
                    Contains("aqua::npy_array") && Contains("multiply past 2^63 - 1"));
  CHECK_THROWS_WITH(aqua::npy_array({0, big, big}, std::vector<float>{}), Contains("multiply past 2^63 - 1"));
  CHECK_THROWS_WITH(aqua::npy_array({2, 3}, std::vector<double>(5)),
                    Contains("holds 6 elements but the data has 5"));
}

TEST_CASE("safetensors: shapes that overflow or claim more data than the file holds are errors",
          "[io][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("big.safetensors");
  // 2^62 x 8 F64 elements: bytes = 8 x 2^65, which wraps.
  write_bytes(
      path, safetensors(
                R"({"x": {"dtype": "F64", "shape": [4611686018427387904, 8], "data_offsets": [0, 0]}})", ""));
  CHECK_THROWS_WITH(aqua::load_projection_set(path), Contains(path) && Contains("overflows 64 bits"));
  // 2^40 F32 elements that fit 64 bits but not the 8-byte data section.
  write_bytes(
      path,
      safetensors(R"({"x": {"dtype": "F32", "shape": [1099511627776], "data_offsets": [0, 4398046511104]}})",
                  std::string(8, '\0')));
  CHECK_THROWS_WITH(aqua::load_projection_set(path),
                    Contains(path) && Contains("run past the end of the data section (8 bytes)"));
  // A header length near 2^64 neither wraps the bounds check nor allocates.
  write_bytes(path, le(~std::uint64_t{0} - 4, 8) + "{}");
  CHECK_THROWS_WITH(aqua::load_projection_set(path), Contains(path) && Contains("exceeds the limit"));
  write_bytes(path, le(99'999'999, 8) + "{}");
  CHECK_THROWS_WITH(aqua::load_projection_set(path),
                    Contains(path) && Contains("runs past the end of the file"));
}

TEST_CASE(
    "projection metadata that promises more heads than the file holds is an error before any allocation",
    "[io][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("heads.safetensors");
  // 2^20 layers x 2^20 KV heads (the maxima) would be 2^41 tensors: the file holds none.
  write_bytes(path,
              safetensors(R"({"__metadata__": {"aqua.format": "projection_set", "aqua.format_version": "1",
      "aqua.layers": "1048576", "aqua.kv_heads": "1048576", "aqua.d": "65536", "aqua.group_size": "1",
      "aqua.source": "keys", "aqua.centered": "false", "aqua.vectors_seen": "0"}})",
                          ""));
  CHECK_THROWS_WITH(aqua::load_projection_set(path),
                    Contains(path) && Contains("tensor \"layers.0.kv_heads.0.basis\" is missing"));
}

TEST_CASE("llama2c checkpoint: the largest header the limits allow on a tiny file is a truncation error",
          "[llama2c][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("big.bin");
  using ck = llama2c::checkpoint;
  write_bytes(path,
              i32s({ck::max_dim, 16 * ck::max_dim, ck::max_layers, 2, 2, -ck::max_vocab, ck::max_seq_len}) +
                  std::string(64, '\0'));
  CHECK_THROWS_WITH(ck::load(path), Contains(path) && Contains("truncated") && Contains("the file has 92"));
}

TEST_CASE("llama2c checkpoint: expected_file_size throws on 64-bit overflow instead of wrapping",
          "[llama2c][size_limits]") {
  llama2c::config c;
  c.dim = c.hidden_dim = c.n_layers = c.vocab_size = c.seq_len = std::numeric_limits<std::int32_t>::max() - 1;
  c.n_heads = c.n_kv_heads = 1;  // kv_dim = dim: stays in int
  // layers x dim x dim is about 2^93.
  CHECK_THROWS_WITH(llama2c::checkpoint::expected_file_size(c, "x.bin"),
                    Contains("x.bin") && Contains("overflow"));
}

TEST_CASE(
    "llama2c tokenizer: a vocab_size the file cannot hold is a truncation error before sizing any table",
    "[llama2c][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("tok.bin");
  write_bytes(path, i32s({8}) + i32s({0, 1}) + "a");  // one token
  CHECK_THROWS_WITH(llama2c::tokenizer::load(path, 1 << 22), Contains(path) && Contains("truncated") &&
                                                                 Contains("vocab_size is 4194304") &&
                                                                 Contains("needs at least 33554436 bytes"));
  CHECK_THROWS_WITH(llama2c::tokenizer::load(path, std::numeric_limits<int>::max()),
                    Contains(path) && Contains("truncated"));
}

namespace {

// The long-context case: N = 2^22 + 1 tokens of d = 128 floats is 2^31 + 512 bytes per array, so a
// 32-bit byte offset (or a 32-bit element offset in a strided [N, 2d] buffer) would wrap. Head h of
// 4 query heads attends to exactly one token t_h (key t_h = 10 e_h, q_h = 10 e_h, scale 1: logit
// 100 against 0 everywhere else, so every other weight is e^-100, below float's smallest normal
// relative to 1), and the values are small integers: the exact output is the value row of t_h.
constexpr index_t big_n = (index_t{1} << 22) + 1, big_d = 128, big_hq = 4;
constexpr index_t big_targets[big_hq] = {0, index_t{1} << 21, (index_t{1} << 22) - 1, index_t{1} << 22};

float big_value(index_t j, index_t c) {
  return float((j * 37 + c * 11) % 4093) - 2046.0f;
}
float big_key(index_t j, index_t c) {
  for (index_t h = 0; h < big_hq; ++h)
    if (j == big_targets[h] && c == h) return 10.0f;
  return 0.0f;
}

std::vector<float> big_queries(index_t rows) {
  std::vector<float> q(static_cast<std::size_t>(big_hq * rows * big_d), 0.0f);
  for (index_t h = 0; h < big_hq; ++h)
    for (index_t i = 0; i < rows; ++i) q[static_cast<std::size_t>((h * rows + i) * big_d + h)] = 10.0f;
  return q;
}

// Every output row h equals the value row of big_targets[h], exactly.
void check_one_hot(const std::vector<float>& out, index_t rows, index_t row) {
  for (index_t h = 0; h < big_hq; ++h) {
    index_t wrong = 0;
    for (index_t c = 0; c < big_d; ++c)
      wrong += out[static_cast<std::size_t>((h * rows + row) * big_d + c)] != big_value(big_targets[h], c);
    CAPTURE(h, big_targets[h], row);
    CHECK(wrong == 0);
  }
}

}  // namespace

TEST_CASE("attention over N = 2^22 + 1 tokens at d = 128 (over 2^31 bytes per array) indexes in 64 bits",
          "[.slow][size_limits][aqua][threads]") {
  const auto q = big_queries(1);
  auto qv = aqua::make_view(q.data(), big_hq, big_d);
  {
    // Dense decode on strided views of one interleaved [N, 2d] buffer (4 GiB): keys are columns
    // [0, d), values [d, 2d); the last token starts at element 2^30, byte 2^32.
    std::vector<float> kv(static_cast<std::size_t>(big_n * 2 * big_d));
    for (index_t j = 0; j < big_n; ++j)
      for (index_t c = 0; c < big_d; ++c) {
        kv[static_cast<std::size_t>(j * 2 * big_d + c)] = big_key(j, c);
        kv[static_cast<std::size_t>(j * 2 * big_d + big_d + c)] = big_value(j, c);
      }
    const aqua::tensor3_view<const float> k(kv.data(), {1, big_n, big_d}, {big_n * 2 * big_d, 2 * big_d, 1});
    const aqua::tensor3_view<const float> v(kv.data() + big_d, {1, big_n, big_d},
                                            {big_n * 2 * big_d, 2 * big_d, 1});
    std::vector<float> out(static_cast<std::size_t>(big_hq * big_d), -1.0f);
    aqua::attention_options opt;
    opt.scale = 1.0;
    opt.threads = 2;
    aqua::dense_decode<float>(qv, k, v, aqua::make_view(out.data(), big_hq, big_d), opt);
    check_one_hot(out, 1, 0);
  }
  // AQUA decode, dense decode and prefill over a kv_cache holding the same tokens (2 GiB of key
  // tiles, 2 GiB of values), appended in batches.
  aqua::kv_cache_options copt;
  copt.capacity = big_n;
  aqua::kv_cache cache(1, big_d, copt);
  const index_t batch = index_t{1} << 16;
  std::vector<float> kb(static_cast<std::size_t>(batch * big_d)), vb(kb.size());
  for (index_t j0 = 0; j0 < big_n; j0 += batch) {
    const index_t count = std::min(batch, big_n - j0);
    for (index_t j = 0; j < count; ++j)
      for (index_t c = 0; c < big_d; ++c) {
        kb[static_cast<std::size_t>(j * big_d + c)] = big_key(j0 + j, c);
        vb[static_cast<std::size_t>(j * big_d + c)] = big_value(j0 + j, c);
      }
    cache.append(aqua::make_view(static_cast<const float*>(kb.data()), 1, count, big_d),
                 aqua::make_view(static_cast<const float*>(vb.data()), 1, count, big_d));
  }
  REQUIRE(cache.size() == big_n);
  CHECK(cache.key(0, big_n - 1, 3) == 10.0f);
  CHECK(cache.value(0, big_n - 1, 5) == big_value(big_n - 1, 5));
  std::vector<float> probs(static_cast<std::size_t>(big_n));
  for (auto mode :
       {aqua::selection_mode::per_head, aqua::selection_mode::group, aqua::selection_mode::tile}) {
    for (int threads : {1, 2}) {
      CAPTURE(int(mode), threads);
      std::vector<float> out(static_cast<std::size_t>(big_hq * big_d), -1.0f);
      aqua::aqua_options opt;
      opt.mode = mode;
      opt.scale = 1.0;
      opt.threads = threads;
      aqua::aqua_decode(qv, cache, 4, aqua::make_view(out.data(), big_hq, big_d), opt,
                        aqua::make_view(probs.data(), 1, big_n));
      check_one_hot(out, 1, 0);
      // The group's probabilities: 1 at each target (one head each), 0 elsewhere.
      double total = 0;
      for (float p : probs) total += p;
      CHECK(total == Approx(4.0).epsilon(1e-6));
      for (index_t h = 0; h < big_hq; ++h) CHECK(probs[static_cast<std::size_t>(big_targets[h])] == 1.0f);
    }
  }
  std::vector<float> dense(static_cast<std::size_t>(big_hq * big_d));
  aqua::attention_options dopt;
  dopt.scale = 1.0;
  dopt.threads = 2;
  aqua::dense_decode(qv, cache, aqua::make_view(dense.data(), big_hq, big_d), dopt);
  check_one_hot(dense, 1, 0);
  // Prefill of the last 2 positions: row 1 sees every token; row 0 misses token N - 1 (head 3's
  // target), so only heads 0..2 are one-hot there.
  const auto qp = big_queries(2);
  std::vector<float> op(qp.size(), -1.0f);
  aqua::aqua_options popt;
  popt.scale = 1.0;
  popt.threads = 2;
  aqua::aqua_prefill(aqua::make_view(qp.data(), big_hq, 2, big_d), cache, aqua::selection_spec::top_k(4),
                     aqua::make_view(op.data(), big_hq, 2, big_d), popt);
  check_one_hot(op, 2, 1);
  for (index_t h = 0; h < 3; ++h)
    for (index_t c = 0; c < big_d; ++c)
      CHECK(op[static_cast<std::size_t>((h * 2 + 0) * big_d + c)] == big_value(big_targets[h], c));
}
