// Sizes read from file headers: for every reader, a header that claims more data than the file
// holds, and a header whose sizes overflow 64 bits when multiplied, are errors that name the
// file; neither may turn into an allocation of the claimed (or wrapped) size.
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

using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("aqua_size_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

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
  write_bytes(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }", std::string(8, '\0')));
  CHECK_THROWS_WITH(aqua::read_npy(path),
                    Contains(path) && Contains("truncated: the shape needs 4398046511104 bytes of data but 8 remain"));
  // The header length itself (v2: 32-bit) may not run past the end either.
  write_bytes(path, std::string("\x93NUMPY\x02\x00", 8) + le(0xFFFFFFF0u, 4) + "{}");
  CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains("header length 4294967280 runs past the end"));
}

TEST_CASE(".npy: element counts and byte counts that overflow 64 bits are errors", "[io][npy][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("overflow.npy");
  // 2^32 x 2^32 elements: the element count wraps to 0 in 64 bits.
  write_bytes(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", ""));
  CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains("element count overflows 64 bits"));
  // 2^62 elements fit, 2^62 x 8 bytes do not (it would wrap to 0 = the empty data section).
  write_bytes(path, npy("{'descr': '<f8', 'fortran_order': False, 'shape': (4611686018427387904,), }", ""));
  CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains("data size overflows 64 bits"));
  // A zero extent makes the product 0 whatever the others are: an empty array, not an error.
  write_bytes(path, npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4294967296, 4294967296), }", ""));
  CHECK(aqua::read_npy(path).size() == 0);
}

TEST_CASE("npy_array rejects a shape whose element count overflows instead of wrapping to the data size",
          "[io][npy][size_limits]") {
  const aqua::index_t big = aqua::index_t{1} << 32;
  // 2^32 x 2^32 wraps to 0 in 64 bits, which an empty buffer would match.
  CHECK_THROWS_WITH(aqua::npy_array({big, big}, std::vector<float>{}),
                    Contains("aqua::npy_array") && Contains("more elements than 64 bits count"));
  CHECK_THROWS_WITH(aqua::npy_array({2, 3}, std::vector<double>(5)), Contains("holds 6 elements but the data has 5"));
}

TEST_CASE("safetensors: shapes that overflow or claim more data than the file holds are errors",
          "[io][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("big.safetensors");
  // 2^62 x 8 F64 elements: bytes = 8 x 2^65, which wraps.
  write_bytes(path, safetensors(R"({"x": {"dtype": "F64", "shape": [4611686018427387904, 8], "data_offsets": [0, 0]}})", ""));
  CHECK_THROWS_WITH(aqua::load_projection_set(path), Contains(path) && Contains("overflows 64 bits"));
  // 2^40 F32 elements that fit 64 bits but not the 8-byte data section.
  write_bytes(path, safetensors(R"({"x": {"dtype": "F32", "shape": [1099511627776], "data_offsets": [0, 4398046511104]}})",
                                std::string(8, '\0')));
  CHECK_THROWS_WITH(aqua::load_projection_set(path),
                    Contains(path) && Contains("run past the end of the data section (8 bytes)"));
  // A header length near 2^64 neither wraps the bounds check nor allocates.
  write_bytes(path, le(~std::uint64_t{0} - 4, 8) + "{}");
  CHECK_THROWS_WITH(aqua::load_projection_set(path), Contains(path) && Contains("exceeds the limit"));
  write_bytes(path, le(99'999'999, 8) + "{}");
  CHECK_THROWS_WITH(aqua::load_projection_set(path), Contains(path) && Contains("runs past the end of the file"));
}

TEST_CASE("projection metadata that promises more heads than the file holds is an error before any allocation",
          "[io][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("heads.safetensors");
  // 2^20 layers x 2^20 KV heads (the maxima) would be 2^41 tensors: the file holds none.
  write_bytes(path, safetensors(R"({"__metadata__": {"aqua.format": "projection_set", "aqua.format_version": "1",
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
  write_bytes(path, i32s({ck::max_dim, 16 * ck::max_dim, ck::max_layers, 2, 2, -ck::max_vocab, ck::max_seq_len}) +
                        std::string(64, '\0'));
  CHECK_THROWS_WITH(ck::load(path), Contains(path) && Contains("truncated") && Contains("the file has 92"));
}

TEST_CASE("llama2c checkpoint: expected_file_size throws on 64-bit overflow instead of wrapping",
          "[llama2c][size_limits]") {
  llama2c::config c;
  c.dim = c.hidden_dim = c.n_layers = c.vocab_size = c.seq_len = std::numeric_limits<std::int32_t>::max() - 1;
  c.n_heads = c.n_kv_heads = 1;  // kv_dim = dim: stays in int
  // layers x dim x dim is about 2^93.
  CHECK_THROWS_WITH(llama2c::checkpoint::expected_file_size(c, "x.bin"), Contains("x.bin") && Contains("overflow"));
}

TEST_CASE("llama2c tokenizer: a vocab_size the file cannot hold is a truncation error before sizing any table",
          "[llama2c][size_limits]") {
  temp_dir dir;
  const std::string path = dir.file("tok.bin");
  write_bytes(path, i32s({8}) + i32s({0, 1}) + "a");  // one token
  CHECK_THROWS_WITH(llama2c::tokenizer::load(path, 1 << 22),
                    Contains(path) && Contains("truncated") && Contains("vocab_size is 4194304") &&
                        Contains("needs at least 33554436 bytes"));
  CHECK_THROWS_WITH(llama2c::tokenizer::load(path, std::numeric_limits<int>::max()),
                    Contains(path) && Contains("truncated"));
}
