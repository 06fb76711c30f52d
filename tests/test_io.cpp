#include <aqua/eigen.hpp>
#include <aqua/io.hpp>
#include "../examples/llama2c/checkpoint.hpp"
#include "../examples/llama2c/tokenizer.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "file_support.hpp"
#include "test_support.hpp"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

using aqua::index_t;
using Catch::Matchers::Contains;
namespace fs = std::filesystem;

namespace {

using aqua_test::read_bytes;
using aqua_test::temp_dir;
using aqua_test::write_bytes;

std::string le64(std::uint64_t v) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(char((v >> (8 * i)) & 0xFF));
  return s;
}
template <class T>
std::string raw(const std::vector<T>& v) {  // host is little-endian on every CI machine we run
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

/// A safetensors file written by hand, independent of aqua's writer.
void write_safetensors(const std::string& path, const std::string& header, const std::string& data) {
  write_bytes(path, le64(header.size()) + header + data);
}

/// A valid one-layer, one-head, d = 2 projection file: header JSON object and data bytes.
struct tiny_file {
  nlohmann::json header;
  std::string data;
  tiny_file() {
    header["__metadata__"] = {{"aqua.format", "projection_set"},
                              {"aqua.format_version", "1"},
                              {"aqua.layers", "1"},
                              {"aqua.kv_heads", "1"},
                              {"aqua.d", "2"},
                              {"aqua.group_size", "1"},
                              {"aqua.source", "queries"},
                              {"aqua.centered", "false"},
                              {"aqua.vectors_seen", "10"}};
    header["layers.0.kv_heads.0.basis"] = {{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}};
    header["layers.0.kv_heads.0.singular_values"] = {
        {"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {16, 32}}};
    data = raw(std::vector<float>{0, 1, 1, 0}) + raw(std::vector<double>{2, 1});
  }
  void write(const std::string& path) const { write_safetensors(path, header.dump(), data); }
};

}  // namespace

TEST_CASE("a projection set survives a safetensors round trip bit for bit", "[io]") {
  temp_dir dir;
  auto set = aqua::projection_set::random_orthogonal(3, 2, 16, 4, 77);
  // Calibrated-looking singular values with awkward bits.
  for (index_t l = 0; l < 3; ++l)
    for (index_t h = 0; h < 2; ++h) {
      Eigen::VectorXd sv(16);
      for (index_t j = 0; j < 16; ++j) sv[j] = std::exp(-0.3 * double(j)) * (1.0 + 1e-13 * double(l + h));
      set.set_head(l, h, aqua::head_projection(set.head(l, h).basis(), sv));
    }
  set.set_source(aqua::calibration_source::queries_and_keys);
  set.set_centered(true);
  set.set_vectors_seen(123456789012ull);
  set.metadata()["model"] = "stories260K";
  set.metadata()["dataset"] = "en_pud \"quoted\" \u00e9";
  const std::string path = dir.file("p.safetensors");
  aqua::save_projection_set(path, set);
  const auto back = aqua::load_projection_set(path);
  CHECK(back.layers() == 3);
  CHECK(back.kv_heads() == 2);
  CHECK(back.d() == 16);
  CHECK(back.group_size() == 4);
  CHECK(back.source() == aqua::calibration_source::queries_and_keys);
  CHECK(back.centered());
  CHECK(back.vectors_seen() == 123456789012ull);
  CHECK(back.metadata() == set.metadata());
  for (index_t l = 0; l < 3; ++l)
    for (index_t h = 0; h < 2; ++h) {
      CHECK(std::memcmp(back.head(l, h).basis().data(), set.head(l, h).basis().data(), 16 * 16 * 4) == 0);
      CHECK(std::memcmp(back.head(l, h).singular_values().data(), set.head(l, h).singular_values().data(),
                        16 * 8) == 0);
    }
  // Saving what was loaded reproduces the file byte for byte.
  aqua::save_projection_set(dir.file("q.safetensors"), back);
  CHECK(read_bytes(path) == read_bytes(dir.file("q.safetensors")));
}

TEST_CASE("the projection file follows the safetensors byte layout", "[io]") {
  temp_dir dir;
  aqua::projection_set set(1, 1, 2, 1);
  aqua::row_matrix<float> basis(2, 2);
  basis << 0, 1, 1, 0;  // a permutation: orthogonal, with recognisable bytes
  set.set_head(0, 0, aqua::head_projection(basis, Eigen::Vector2d(2.0, 1.0)));
  set.set_vectors_seen(10);
  const std::string path = dir.file("tiny.safetensors");
  aqua::save_projection_set(path, set);
  const std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() >= 8);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[std::size_t(i)]);
  REQUIRE(8 + n + 32 == bytes.size());  // header length, header, 16 + 16 data bytes
  CHECK((8 + n) % 8 == 0);              // data section aligned
  const std::string header = bytes.substr(8, n);
  CHECK(header.front() == '{');
  const auto j = nlohmann::json::parse(header);
  CHECK(j["__metadata__"]["aqua.format"] == "projection_set");
  CHECK(j["__metadata__"]["aqua.format_version"] == "1");
  CHECK(j["__metadata__"]["aqua.d"] == "2");
  CHECK(j["__metadata__"]["aqua.layers"] == "1");
  CHECK(j["__metadata__"]["aqua.kv_heads"] == "1");
  CHECK(j["__metadata__"]["aqua.group_size"] == "1");
  CHECK(j["__metadata__"]["aqua.source"] == "queries");
  CHECK(j["__metadata__"]["aqua.centered"] == "false");
  CHECK(j["__metadata__"]["aqua.vectors_seen"] == "10");
  CHECK(j["layers.0.kv_heads.0.basis"] ==
        nlohmann::json({{"dtype", "F32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}}));
  CHECK(j["layers.0.kv_heads.0.singular_values"] ==
        nlohmann::json({{"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {16, 32}}}));
  // Little-endian IEEE bytes: float 0, 1, 1, 0 then double 2, 1.
  const std::string data = bytes.substr(8 + n);
  const std::string expected =
      std::string("\x00\x00\x00\x00\x00\x00\x80\x3f\x00\x00\x80\x3f\x00\x00\x00\x00", 16) +
      std::string("\x00\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\xf0\x3f", 16);
  CHECK(data == expected);
  // And a file written by hand with this layout loads.
  tiny_file hand;
  hand.write(dir.file("hand.safetensors"));
  const auto loaded = aqua::load_projection_set(dir.file("hand.safetensors"));
  CHECK(loaded.head(0, 0).basis() == basis);
  CHECK(loaded.head(0, 0).singular_values() == Eigen::Vector2d(2.0, 1.0));
}

TEST_CASE("every corrupt projection file throws a message naming the file and the problem", "[io]") {
  temp_dir dir;
  const std::string path = dir.file("bad.safetensors");
  auto expect_error = [&](const std::string& what) {
    INFO("expecting: " << what);
    CHECK_THROWS_WITH(aqua::load_projection_set(path), Contains(path) && Contains(what));
  };
  auto with = [&](auto mutate) {
    tiny_file f;
    mutate(f);
    f.write(path);
  };

  write_bytes(path, "abc");
  expect_error("too short for the 8-byte header length");
  write_bytes(path, le64(1000) + "{}");
  expect_error("header length 1000 runs past the end of the file");
  write_safetensors(path, "{\"a\": [1, 2", "");
  expect_error("not well-formed JSON");
  write_safetensors(path, "[1, 2, 3]", "");
  expect_error("does not start with '{'");
  CHECK_THROWS_WITH(aqua::load_projection_set(dir.file("missing.safetensors")), Contains("cannot open"));

  with([](tiny_file& f) { f.header["layers.0.kv_heads.0.basis"]["dtype"] = "F16"; });
  expect_error("span 16 bytes but dtype F16 and shape [2,2] need 8");
  with([](tiny_file& f) {  // consistent sizes but the wrong dtype
    f.header["layers.0.kv_heads.0.basis"] = {{"dtype", "I32"}, {"shape", {2, 2}}, {"data_offsets", {0, 16}}};
  });
  expect_error("has dtype I32, expected F32");
  with([](tiny_file& f) { f.header["layers.0.kv_heads.0.basis"]["dtype"] = "Q7"; });
  expect_error("unknown dtype \"Q7\"");
  with([](tiny_file& f) { f.header["layers.0.kv_heads.0.basis"]["shape"] = {4}; });
  expect_error("has shape [4], expected [2, 2]");
  with([](tiny_file& f) { f.header["layers.0.kv_heads.0.basis"]["shape"] = {2, -2}; });
  expect_error("not a non-negative integer");
  with([](tiny_file& f) { f.header["layers.0.kv_heads.0.singular_values"]["data_offsets"] = {16, 48}; });
  expect_error("run past the end of the data section (32 bytes)");
  with([](tiny_file& f) {
    f.header["layers.0.kv_heads.0.singular_values"]["data_offsets"] = {8, 24};
    f.header["layers.0.kv_heads.0.basis"]["data_offsets"] = {0, 16};
  });
  expect_error("overlaps tensor \"layers.0.kv_heads.0.basis\"");
  with([](tiny_file& f) {
    f.header["layers.0.kv_heads.0.singular_values"]["data_offsets"] = {24, 40};
    f.data += std::string(8, '\0');
  });
  expect_error("has a hole: bytes [16, 24)");
  with([](tiny_file& f) { f.data += std::string(8, '\0'); });
  expect_error("8 bytes after the last tensor");
  with([](tiny_file& f) { f.header["layers.0.kv_heads.0.basis"]["data_offsets"] = {16, 0}; });
  expect_error("are reversed");
  with([](tiny_file& f) { f.header["layers.0.kv_heads.0.basis"].erase("shape"); });
  expect_error("exactly the keys dtype, shape and data_offsets");
  with([](tiny_file& f) { f.data.replace(0, 4, raw(std::vector<float>{0.5f})); });
  expect_error("is not orthogonal");
  with([](tiny_file& f) { f.data.replace(16, 16, raw(std::vector<double>{1, 2})); });
  expect_error("singular values must not increase");
  with([](tiny_file& f) { f.data.replace(16, 8, raw(std::vector<double>{std::nan("")})); });
  expect_error("finite and non-negative");
  with([](tiny_file& f) {
    f.header.erase("layers.0.kv_heads.0.singular_values");
    f.header["layers.0.kv_heads.0.extra"] = {{"dtype", "F64"}, {"shape", {2}}, {"data_offsets", {16, 32}}};
  });
  expect_error("tensor \"layers.0.kv_heads.0.singular_values\" is missing");
  with([](tiny_file& f) {
    f.header["layers.0.kv_heads.0.extra"] = {{"dtype", "U8"}, {"shape", {1}}, {"data_offsets", {32, 33}}};
    f.data += "x";
  });
  expect_error("unexpected tensor \"layers.0.kv_heads.0.extra\"");
  with([](tiny_file& f) { f.header["__metadata__"].erase("aqua.d"); });
  expect_error("metadata key \"aqua.d\" is missing");
  with([](tiny_file& f) { f.header["__metadata__"]["aqua.format_version"] = "2"; });
  expect_error("unsupported format version \"2\"");
  with([](tiny_file& f) { f.header["__metadata__"]["aqua.d"] = "two"; });
  expect_error("not a non-negative integer");
  with([](tiny_file& f) { f.header["__metadata__"]["aqua.source"] = "values"; });
  expect_error("aqua.source is \"values\"");
  with([](tiny_file& f) { f.header["__metadata__"]["aqua.layers"] = "2"; });
  expect_error("tensor \"layers.1.kv_heads.0.basis\" is missing");
  with([](tiny_file& f) { f.header["__metadata__"]["aqua.layers"] = "99999999999"; });
  expect_error("more than the maximum");
  with([](tiny_file& f) { f.header["__metadata__"]["aqua.d"] = "3"; });
  expect_error("has shape [2, 2], expected [3, 3]");
  with([](tiny_file& f) { f.header["__metadata__"]["aqua.shiny"] = "yes"; });
  expect_error("unknown reserved metadata key \"aqua.shiny\"");
  with([](tiny_file& f) { f.header["__metadata__"]["model"] = 5; });
  expect_error("__metadata__ entry \"model\" is not a string");
  // Truncated data section: the header promises 32 bytes that are not there.
  {
    tiny_file f;
    write_safetensors(path, f.header.dump(), f.data.substr(0, 20));
    expect_error("run past the end of the data section (20 bytes)");
  }
}

TEST_CASE("saving rejects reserved metadata keys and empty sets", "[io]") {
  temp_dir dir;
  auto set = aqua::projection_set::identity(1, 1, 2);
  set.metadata()["aqua.d"] = "7";
  CHECK_THROWS_WITH(aqua::save_projection_set(dir.file("x.safetensors"), set), Contains("reserved prefix"));
  CHECK_THROWS_WITH(aqua::save_projection_set(dir.file("x.safetensors"), aqua::projection_set()),
                    Contains("empty"));
  CHECK_THROWS_WITH(aqua::save_projection_set(dir.file("no/such/dir/x.safetensors"),
                                              aqua::projection_set::identity(1, 1, 2)),
                    Contains("cannot create"));
}

// ------------------------------------------------------------------------------------------------
// .npy

namespace {

/// A .npy file built by hand: version, dict text, data bytes.
std::string npy_bytes(int major, const std::string& dict, const std::string& data) {
  std::string header = dict;
  const std::size_t pre = major == 1 ? 10 : 12;
  while ((pre + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::string out = std::string("\x93NUMPY", 6) + char(major) + '\0';
  const std::size_t len = header.size();
  out += char(len & 0xFF);
  out += char((len >> 8) & 0xFF);
  if (major != 1) {
    out += char((len >> 16) & 0xFF);
    out += char((len >> 24) & 0xFF);
  }
  return out + header + data;
}

std::string big_endian(std::string little, std::size_t item) {
  for (std::size_t i = 0; i < little.size(); i += item)
    std::reverse(little.begin() + long(i), little.begin() + long(i + item));
  return little;
}

}  // namespace

TEST_CASE(".npy versions 1, 2 and 3 load with their shapes and values", "[io][npy]") {
  temp_dir dir;
  const std::vector<float> values = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  for (int major : {1, 2, 3}) {
    const std::string path = dir.file("v" + std::to_string(major) + ".npy");
    write_bytes(path, npy_bytes(major, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 2), }",
                                raw(values)));
    const auto a = aqua::read_npy(path);
    CHECK(a.dtype() == aqua::npy_dtype::float32);
    CHECK(a.shape() == std::vector<index_t>{2, 3, 2});
    CHECK(a.float_data() == values);
    const auto v = a.float_view<3>();
    CHECK(v(1, 2, 1) == 12.0f);
    CHECK(v(0, 1, 0) == 3.0f);
  }
}

TEST_CASE(".npy float64, big-endian and Fortran-order files load in C order", "[io][npy]") {
  temp_dir dir;
  const std::string path = dir.file("a.npy");
  const std::vector<double> d64 = {0.5, -1.25, 3e300, 4};
  write_bytes(path,
              npy_bytes(1, "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (4,)}", raw(d64)));
  auto a = aqua::read_npy(path);
  CHECK(a.dtype() == aqua::npy_dtype::float64);
  CHECK(a.double_data() == d64);
  CHECK_THROWS_WITH(a.float_data(), Contains("float64"));
  CHECK(a.to_float() == std::vector<float>{0.5f, -1.25f, float(3e300), 4.0f});
  CHECK(a.convert_to_float().dtype() == aqua::npy_dtype::float32);

  const std::vector<float> f = {1.5f, 2.5f, -3.5f};
  write_bytes(
      path, npy_bytes(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3,), }", big_endian(raw(f), 4)));
  CHECK(aqua::read_npy(path).float_data() == f);
  write_bytes(path, npy_bytes(1, "{'descr': '>f8', 'fortran_order': False, 'shape': (4,), }",
                              big_endian(raw(d64), 8)));
  CHECK(aqua::read_npy(path).double_data() == d64);

  // Fortran order: element (i, j) of a 2 x 3 array is stored at i + 2 j.
  const std::vector<float> fortran = {0, 10, 1, 11, 2, 12};
  write_bytes(path, npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", raw(fortran)));
  CHECK(aqua::read_npy(path).float_data() == std::vector<float>{0, 1, 2, 10, 11, 12});
  // And in 3-D: (i, j, k) at i + 2 j + 4 k for shape (2, 2, 2).
  const std::vector<float> f3 = {0, 100, 10, 110, 1, 101, 11, 111};
  write_bytes(path, npy_bytes(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2, 2), }", raw(f3)));
  CHECK(aqua::read_npy(path).float_data() == std::vector<float>{0, 1, 10, 11, 100, 101, 110, 111});
}

TEST_CASE("corrupt or unsupported .npy files throw, never reading past the end", "[io][npy]") {
  temp_dir dir;
  const std::string path = dir.file("bad.npy");
  const std::string ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const std::string data = raw(std::vector<float>(6, 1.0f));
  auto expect_error = [&](const std::string& bytes, const std::string& what) {
    write_bytes(path, bytes);
    INFO("expecting: " << what);
    CHECK_THROWS_WITH(aqua::read_npy(path), Contains(path) && Contains(what));
  };
  expect_error(npy_bytes(1, ok_dict, data.substr(0, 20)),
               "truncated: the shape needs 24 bytes of data but 20 remain");
  expect_error(npy_bytes(1, ok_dict, data + "xx"), "2 unexpected bytes follow");
  expect_error("\x93NUMPY", "too short for a .npy preamble");
  expect_error("PK\x03\x04 this is a zip file", "not a .npy file");
  expect_error(npy_bytes(4, ok_dict, data), "unsupported .npy format version 4.0");
  expect_error(npy_bytes(1, ok_dict, data).substr(0, 40), "runs past the end of the file");
  expect_error(npy_bytes(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", data),
               "unsupported dtype '<i4'");
  expect_error(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, }", data), "lacks 'shape'");
  expect_error(npy_bytes(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2, 3), }", data),
               "expected True or False");
  expect_error(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", data),
               "expected a non-negative integer");
  expect_error(
      npy_bytes(
          1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999, 99999999999), }",
          data),
      "extents multiply past 2^63 - 1");
  expect_error(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", data),
               "unexpected key 'x'");
  expect_error(npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)", data),
               "expected ',' or '}'");
  CHECK_THROWS_WITH(aqua::read_npy(dir.file("nope.npy")), Contains("cannot open"));
  CHECK_THROWS_WITH(aqua::read_npy(dir.path.string()), Contains(dir.path.string()));
}

TEST_CASE("save_npy writes a version 1 little-endian C-order file that read_npy loads back", "[io][npy]") {
  temp_dir dir;
  const std::string path = dir.file("out.npy");
  std::vector<float> v(2 * 3 * 4);
  aqua_test::fill_normal(v, 9);
  aqua::save_npy(path, v.data(), {2, 3, 4});
  const std::string bytes = read_bytes(path);
  REQUIRE(bytes.size() > 10);
  CHECK(bytes.substr(0, 8) == std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t len = std::size_t(static_cast<unsigned char>(bytes[8])) |
                          (std::size_t(static_cast<unsigned char>(bytes[9])) << 8);
  CHECK((10 + len) % 64 == 0);
  const std::string header = bytes.substr(10, len);
  CHECK(header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }", 0) == 0);
  CHECK(header.back() == '\n');
  CHECK(bytes.substr(10 + len) == raw(v));
  const auto back = aqua::read_npy(path);
  CHECK(back.shape() == std::vector<index_t>{2, 3, 4});
  CHECK(back.float_data() == v);

  // One-dimensional shapes are Python one-element tuples; double data is '<f8'.
  const std::vector<double> d = {1, 2, 3};
  aqua::save_npy(path, d.data(), {3});
  CHECK(read_bytes(path).find("'descr': '<f8', 'fortran_order': False, 'shape': (3,), }") !=
        std::string::npos);
  CHECK(aqua::read_npy(path).double_data() == d);

  // A strided view is written in logical C order.
  std::vector<float> buf = {1, 2, 99, 3, 4, 99};
  aqua::save_npy(path, aqua::matrix_view<const float>(buf.data(), {2, 2}, {3, 1}));
  CHECK(aqua::read_npy(path).float_data() == std::vector<float>{1, 2, 3, 4});
  CHECK_THROWS_WITH(aqua::save_npy(path, static_cast<const float*>(nullptr), {2}), Contains("data is null"));
}

TEST_CASE("npy arrays hand out views of the rank asked for and refuse others", "[io][npy]") {
  aqua::npy_array a({2, 3}, std::vector<float>{1, 2, 3, 4, 5, 6});
  CHECK(a.float_view<2>()(1, 0) == 4.0f);
  CHECK_THROWS_WITH(a.float_view<3>(), Contains("shape [2, 3] (rank 2) but a rank-3 view"));
  CHECK_THROWS_WITH(a.double_view<2>(), Contains("float32"));
  CHECK_THROWS_WITH(aqua::npy_array({2, 2}, std::vector<float>{1}),
                    Contains("holds 4 elements but the data has 1"));
}

// ---------------------------------------------------------------------------------------------
// In-memory overloads: the same parser as the files (the file overloads wrap it), so the same
// bytes give the same object, and corrupt bytes the same error, naming the memory instead of a path.

namespace {

std::string le32(std::uint32_t v) {
  std::string s;
  for (int i = 0; i < 4; ++i) s.push_back(char((v >> (8 * i)) & 0xFF));
  return s;
}

}  // namespace

TEST_CASE("projection sets and .npy arrays load from bytes in memory exactly as from the file",
          "[io][memory]") {
  temp_dir dir;
  const auto set = aqua::projection_set::random_orthogonal(2, 3, 8, 2, 5);
  const std::string path = dir.file("p.safetensors");
  aqua::save_projection_set(path, set);
  const std::string bytes = read_bytes(path);
  const auto from_file = aqua::load_projection_set(path);
  const auto from_memory = aqua::load_projection_set(bytes.data(), bytes.size());
  REQUIRE(from_memory.layers() == 2);
  REQUIRE(from_memory.kv_heads() == 3);
  CHECK(from_memory.metadata() == from_file.metadata());
  CHECK(from_memory.vectors_seen() == from_file.vectors_seen());
  for (index_t l = 0; l < 2; ++l)
    for (index_t h = 0; h < 3; ++h) {
      CHECK(from_memory.head(l, h).basis() == from_file.head(l, h).basis());
      CHECK(from_memory.head(l, h).singular_values() == from_file.head(l, h).singular_values());
    }

  const std::vector<double> values = {1.5, -2.25, 3, 4, 5, 6};
  const std::string npy_path = dir.file("a.npy");
  aqua::save_npy(npy_path, values.data(), {3, 2});
  const std::string npy_bytes = read_bytes(npy_path);
  const auto a = aqua::read_npy(npy_bytes.data(), npy_bytes.size());
  CHECK(a.shape() == std::vector<index_t>{3, 2});
  CHECK(a.double_data() == values);
  const auto f = aqua::read_npy_float(npy_bytes.data(), npy_bytes.size());
  CHECK(f.float_data() == std::vector<float>(values.begin(), values.end()));
}

TEST_CASE("corrupt bytes in memory give the file loaders' errors, naming the memory", "[io][memory]") {
  temp_dir dir;
  const auto set = aqua::projection_set::random_orthogonal(1, 1, 4, 1, 9);
  const std::string path = dir.file("p.safetensors");
  aqua::save_projection_set(path, set);
  const std::string bytes = read_bytes(path);
  // Truncated by one byte: the same check fires for the file and for the memory.
  const std::string cut = bytes.substr(0, bytes.size() - 1);
  write_bytes(path, cut);
  CHECK_THROWS_WITH(aqua::load_projection_set(path), Contains(path) && Contains("data_offsets"));
  CHECK_THROWS_WITH(
      aqua::load_projection_set(cut.data(), cut.size()),
      Contains("aqua::load_projection_set: <memory: " + std::to_string(cut.size()) + " bytes>") &&
          Contains("data_offsets"));
  CHECK_THROWS_WITH(aqua::load_projection_set(nullptr, 0),
                    Contains("<memory: 0 bytes>") && Contains("too short"));
  CHECK_THROWS_WITH(aqua::load_projection_set(nullptr, 16), Contains("data is null but size is 16"));

  const std::string npy =
      npy_bytes(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", std::string(8, '\0'));
  CHECK_THROWS_WITH(aqua::read_npy(npy.data(), npy.size()),
                    Contains("aqua::read_npy: <memory: ") &&
                        Contains("truncated: the shape needs 12 bytes of data but 8 remain"));
  CHECK_THROWS_WITH(aqua::read_npy(npy.data(), 5), Contains("too short for a .npy preamble"));
  CHECK_THROWS_WITH(aqua::read_npy(nullptr, 3),
                    Contains("aqua::read_npy") && Contains("data is null but size is 3"));
}

TEST_CASE("llama2c checkpoints and tokenizers load from bytes in memory exactly as from the file",
          "[llama2c][memory]") {
  temp_dir dir;
  // dim 4, hidden 8, 1 layer, 2 heads, 1 KV head, vocab 5 (shared classifier), seq_len 3.
  llama2c::config c;
  c.dim = 4;
  c.hidden_dim = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.vocab_size = 5;
  c.seq_len = 3;
  const std::uint64_t size = llama2c::checkpoint::expected_file_size(c);
  std::string ck_bytes;
  for (std::int32_t x : {4, 8, 1, 2, 1, 5, 3}) ck_bytes += le32(static_cast<std::uint32_t>(x));
  for (std::uint64_t i = 0; ck_bytes.size() < size; ++i) {
    const float w = 0.01f * float(i);
    ck_bytes += raw(std::vector<float>{w});
  }
  const std::string ck_path = dir.file("model.bin");
  write_bytes(ck_path, ck_bytes);
  const auto from_file = llama2c::checkpoint::load(ck_path);
  const auto from_memory = llama2c::checkpoint::load(ck_bytes.data(), ck_bytes.size());
  CHECK(from_memory.path() == "<memory>");
  CHECK(from_memory.cfg().kv_dim() == from_file.cfg().kv_dim());
  CHECK(std::memcmp(from_memory.token_embedding(), from_file.token_embedding(), 5 * 4 * sizeof(float)) == 0);
  CHECK(std::memcmp(from_memory.w3(0), from_file.w3(0), 8 * 4 * sizeof(float)) == 0);
  CHECK(std::memcmp(from_memory.rms_final(), from_file.rms_final(), 4 * sizeof(float)) == 0);
  CHECK_THROWS_WITH(llama2c::checkpoint::load(ck_bytes.data(), ck_bytes.size() - 4, "model in RAM"),
                    Contains("llama2c checkpoint 'model in RAM': truncated"));
  CHECK_THROWS_WITH(llama2c::checkpoint::load(nullptr, 0),
                    Contains("'<memory>'") && Contains("less than the 28-byte header"));
  CHECK_THROWS_WITH(llama2c::checkpoint::load(nullptr, 28), Contains("data is null but size is 28"));

  const char* pieces[] = {"<unk>", "<s>", "</s>", " ", "a"};
  std::string tok_bytes = le32(5);
  for (int i = 0; i < 5; ++i) {
    tok_bytes += raw(std::vector<float>{float(-i)});
    tok_bytes += le32(static_cast<std::uint32_t>(std::strlen(pieces[i])));
    tok_bytes += pieces[i];
  }
  const std::string tok_path = dir.file("tok.bin");
  write_bytes(tok_path, tok_bytes);
  const auto tf = llama2c::tokenizer::load(tok_path, 5);
  const auto tm = llama2c::tokenizer::load(tok_bytes.data(), tok_bytes.size(), 5);
  for (int i = 0; i < 5; ++i) {
    CHECK(tm.piece(i) == pieces[i]);
    CHECK(tm.piece(i) == tf.piece(i));
    CHECK(tm.score(i) == tf.score(i));
  }
  CHECK(tm.encode("a", true, false) == tf.encode("a", true, false));
  CHECK_THROWS_WITH(llama2c::tokenizer::load(tok_bytes.data(), tok_bytes.size(), 6),
                    Contains("llama2c tokenizer '<memory>': truncated"));
  CHECK_THROWS_WITH(llama2c::tokenizer::load(tok_bytes.data(), tok_bytes.size(), 2), Contains("at least"));
  CHECK_THROWS_WITH(llama2c::tokenizer::load(nullptr, 9, 5), Contains("data is null but size is 9"));
}
