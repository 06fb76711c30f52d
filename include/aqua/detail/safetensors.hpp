// safetensors container: reading with full validation, checked access to the tensors and metadata
// read, and writing.
//
// Layout: 8-byte little-endian header length N, N bytes of JSON (an object: per tensor
// {"dtype", "shape", "data_offsets": [begin, end]} with offsets relative to the data section,
// plus an optional "__metadata__" map of strings to strings), then the data section. The
// reader checks that N fits in the file, the JSON is well formed, every entry has a known dtype,
// a shape of non-negative integers and offsets inside the data section whose length matches
// dtype x shape, and that the tensors neither overlap nor leave holes (the format's own rules).
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/binary_io.hpp"

namespace aqua {
namespace detail {

/// Bytes per element of a safetensors dtype, 0 when unknown.
inline std::size_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, std::size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"I16", 2}, {"U16", 2}, {"F16", 2},
      {"BF16", 2}, {"I32", 4}, {"U32", 4}, {"F32", 4},     {"I64", 8},     {"U64", 8}, {"F64", 8}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

struct safetensors_entry {
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  // relative to the data section
};

struct safetensors_file {
  std::map<std::string, std::string> metadata;
  std::map<std::string, safetensors_entry> tensors;
  std::vector<unsigned char> data;  // the data section
};

/// The largest JSON header accepted (the reference implementation's limit).
constexpr std::uint64_t safetensors_max_header = 100'000'000;

/// Parses and validates safetensors bytes (a file or memory); the data section is copied out.
template <class = void>
inline safetensors_file read_safetensors(byte_source& in, const char* fn) {
  const std::string where = concat(fn, ": ", in.path());
  AQUA_CHECK(in.size() >= 8, where, ": the file has ", in.size(),
             " bytes, too short for the 8-byte header length of a safetensors file");
  unsigned char len_bytes[8];
  in.read(0, len_bytes, 8, "the header length");
  const std::uint64_t n = read_le_u64(len_bytes);
  AQUA_CHECK(n >= 2, where, ": the header length is ", n, "; a safetensors header is a JSON object");
  AQUA_CHECK(n <= safetensors_max_header, where, ": the header length ", n, " exceeds the limit of ",
             safetensors_max_header, " bytes");
  AQUA_CHECK(n <= in.size() - 8, where, ": the header length ", n, " runs past the end of the file (",
             in.size(), " bytes)");
  std::string text(static_cast<std::size_t>(n), '\0');
  in.read(8, &text[0], n, "the JSON header");
  AQUA_CHECK(text[0] == '{', where, ": the JSON header does not start with '{'");
  const nlohmann::json header = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  AQUA_CHECK(!header.is_discarded(), where, ": the ", n, "-byte header is not well-formed JSON");
  AQUA_CHECK(header.is_object(), where, ": the JSON header is not an object");

  safetensors_file file;
  const std::uint64_t data_size = in.size() - 8 - n;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& value = it.value();
    if (name == "__metadata__") {
      AQUA_CHECK(value.is_object(), where, ": __metadata__ is not an object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        AQUA_CHECK(m.value().is_string(), where, ": __metadata__ entry \"", m.key(), "\" is not a string");
        file.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tw = concat(where, ": tensor \"", name, "\"");
    AQUA_CHECK(value.is_object(), tw, " is not an object");
    AQUA_CHECK(value.size() == 3 && value.contains("dtype") && value.contains("shape") &&
                   value.contains("data_offsets"),
               tw, " must have exactly the keys dtype, shape and data_offsets");
    const nlohmann::json& dtype = value["dtype"];
    const nlohmann::json& shape = value["shape"];
    const nlohmann::json& offsets = value["data_offsets"];
    AQUA_CHECK(dtype.is_string(), tw, ": dtype is not a string");
    safetensors_entry e;
    e.dtype = dtype.get<std::string>();
    const std::size_t item = safetensors_dtype_size(e.dtype);
    AQUA_CHECK(item != 0, tw, ": unknown dtype \"", e.dtype, "\"");
    AQUA_CHECK(shape.is_array(), tw, ": shape is not an array");
    std::uint64_t bytes = item;
    for (const auto& s : shape) {
      AQUA_CHECK(s.is_number_unsigned(), tw, ": shape ", shape.dump(),
                 " holds a value that is not a non-negative integer");
      e.shape.push_back(s.get<std::uint64_t>());
      AQUA_CHECK(checked_mul(bytes, e.shape.back(), bytes), tw, ": shape ", shape.dump(),
                 " overflows 64 bits");
    }
    AQUA_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned() &&
                   offsets[1].is_number_unsigned(),
               tw, ": data_offsets must be two non-negative integers, got ", offsets.dump());
    e.begin = offsets[0].get<std::uint64_t>();
    e.end = offsets[1].get<std::uint64_t>();
    AQUA_CHECK(e.begin <= e.end, tw, ": data_offsets [", e.begin, ", ", e.end, "] are reversed");
    AQUA_CHECK(e.end <= data_size, tw, ": data_offsets [", e.begin, ", ", e.end,
               "] run past the end of the data section (", data_size, " bytes)");
    AQUA_CHECK(e.end - e.begin == bytes, tw, ": data_offsets [", e.begin, ", ", e.end, "] span ",
               e.end - e.begin, " bytes but dtype ", e.dtype, " and shape ", shape.dump(), " need ", bytes);
    file.tensors.emplace(name, std::move(e));
  }

  // The format forbids overlapping tensors and holes: sorted by offset they tile the data section.
  std::vector<std::pair<const std::string*, const safetensors_entry*>> order;
  for (const auto& t : file.tensors) order.emplace_back(&t.first, &t.second);
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second->begin != b.second->begin ? a.second->begin < b.second->begin
                                              : a.second->end < b.second->end;
  });
  std::uint64_t cursor = 0;
  const std::string* previous = nullptr;
  for (const auto& t : order) {
    AQUA_CHECK(t.second->begin >= cursor, where, ": tensor \"", *t.first, "\" (bytes [", t.second->begin,
               ", ", t.second->end, ")) overlaps tensor \"", previous ? *previous : std::string(),
               "\" (ends at ", cursor, ")");
    AQUA_CHECK(t.second->begin == cursor, where, ": the data section has a hole: bytes [", cursor, ", ",
               t.second->begin, ") belong to no tensor");
    cursor = t.second->end;
    previous = t.first;
  }
  AQUA_CHECK(cursor == data_size, where, ": the data section has ", data_size - cursor,
             " bytes after the last tensor that belong to no tensor");

  file.data.resize(static_cast<std::size_t>(data_size));
  in.read(8 + n, file.data.data(), data_size, "the data section");
  return file;
}

/// A shape as "[2, 3]".
inline std::string concat_shape(const std::vector<std::uint64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// Metadata `key` as a decimal integer no larger than `max_value`; errors start with `where`.
inline std::uint64_t parse_metadata_uint(const std::map<std::string, std::string>& meta,
                                         const std::string& key, const std::string& where,
                                         std::uint64_t max_value) {
  const auto it = meta.find(key);
  AQUA_CHECK(it != meta.end(), where, ": metadata key \"", key, "\" is missing");
  const std::string& s = it->second;
  AQUA_CHECK(!s.empty() && s.size() <= 19 && s.find_first_not_of("0123456789") == std::string::npos, where,
             ": metadata \"", key, "\" is \"", s, "\", not a non-negative integer");
  const std::uint64_t v = std::stoull(s);
  AQUA_CHECK(v <= max_value, where, ": metadata \"", key, "\" is ", v, ", more than the maximum ", max_value);
  return v;
}

/// Tensor `name` of the file, which must be there.
inline const safetensors_entry& require_tensor(const safetensors_file& file, const std::string& name,
                                               const std::string& where) {
  const auto it = file.tensors.find(name);
  AQUA_CHECK(it != file.tensors.end(), where, ": tensor \"", name, "\" is missing");
  return it->second;
}

/// Tensor `name` (entry `e`) must have `dtype` and `shape`.
inline void require_tensor_type(const safetensors_entry& e, const std::string& name, const std::string& dtype,
                                const std::vector<std::uint64_t>& shape, const std::string& where) {
  AQUA_CHECK(e.dtype == dtype, where, ": tensor \"", name, "\" has dtype ", e.dtype, ", expected ", dtype);
  AQUA_CHECK(e.shape == shape, where, ": tensor \"", name, "\" has shape ", concat_shape(e.shape),
             ", expected ", concat_shape(shape));
}

/// Copies the elements of tensor `e` (stored little-endian) to `dst`, in host byte order.
inline void copy_tensor_data(const safetensors_file& file, const safetensors_entry& e, void* dst) {
  const std::uint64_t bytes = e.end - e.begin;
  if (bytes == 0) return;
  const std::size_t item = safetensors_dtype_size(e.dtype);
  std::memcpy(dst, file.data.data() + e.begin, static_cast<std::size_t>(bytes));
  to_host_order(dst, bytes / item, item, true);
}

/// One tensor to write: raw host-order elements of `dtype` (F32 or F64).
struct safetensors_output {
  std::string name, dtype;
  std::vector<std::uint64_t> shape;
  const void* data = nullptr;
};

/// Writes the tensors in the given order, header padded with spaces so the data section starts at
/// a multiple of 8 bytes.
template <class = void>
inline void write_safetensors(const std::string& path, const std::map<std::string, std::string>& metadata,
                              const std::vector<safetensors_output>& tensors, const char* fn) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  std::vector<std::uint64_t> counts;
  for (const auto& t : tensors) {
    const std::size_t item = safetensors_dtype_size(t.dtype);
    AQUA_ASSERT(item != 0);
    AQUA_CHECK(!header.contains(t.name), fn, ": duplicate tensor name \"", t.name, "\"");
    std::uint64_t count = 1, bytes;
    for (std::uint64_t s : t.shape) AQUA_CHECK(checked_mul(count, s, count), fn, ": tensor size overflows");
    AQUA_CHECK(checked_mul(count, item, bytes), fn, ": tensor size overflows");
    header[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    counts.push_back(count);
  }
  std::string json = header.dump();
  json.append((8 - (8 + json.size()) % 8) % 8, ' ');
  std::string out;
  out.reserve(static_cast<std::size_t>(8 + json.size() + offset));
  append_le(out, json.size(), 8);
  out += json;
  for (std::size_t i = 0; i < tensors.size(); ++i)
    append_le_array(out, tensors[i].data, counts[i], safetensors_dtype_size(tensors[i].dtype));
  write_file_atomically(path, out, fn);
}

}  // namespace detail
}  // namespace aqua
