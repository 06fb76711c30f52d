// Files: projection sets as safetensors, activation dumps as NumPy .npy.
//
// Projection file (safetensors). Tensors, for every layer l and KV head h:
//   layers.{l}.kv_heads.{h}.basis            F32 [d, d]  row-major; column j = projected dim j
//   layers.{l}.kv_heads.{h}.singular_values  F64 [d]     non-increasing
// __metadata__ (all values strings):
//   aqua.format = "projection_set", aqua.format_version = "1", aqua.layers, aqua.kv_heads, aqua.d,
//   aqua.group_size, aqua.source (queries | keys | queries_and_keys), aqua.centered (true | false),
//   aqua.vectors_seen; plus the set's own metadata under keys that do not start with "aqua.".
// load_projection_set validates the container (see detail/safetensors.hpp), the metadata, that
// exactly the expected tensors are there with the expected dtypes and shapes, that every basis
// is orthogonal within head_projection::orthogonality_tolerance and that every singular-value
// vector is finite, non-negative and non-increasing. Each failure throws aqua::error naming the
// file and the problem.
//
// .npy: read_npy reads format versions 1.0, 2.0 and 3.0 with dtype float32 or float64 in either
// byte order and C or Fortran order (Fortran data is reordered to C order, big-endian data is
// converted to the host order). Truncated files, trailing bytes, other dtypes and malformed
// headers throw. save_npy writes little-endian C-order version 1.0 files (2.0 if the header needs
// it), which numpy.load reads.
//
// load_projection_set, read_npy and read_npy_float also take the bytes of a file in memory
// (pointer + size): the same parser and checks; errors name "<memory: N bytes>" instead of a path.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/binary_io.hpp"
#include "aqua/detail/npy.hpp"
#include "aqua/detail/safetensors.hpp"
#include "aqua/detail/validate.hpp"
#include "aqua/eigen.hpp"
#include "aqua/projection.hpp"
#include "aqua/tensor_view.hpp"

namespace aqua {

/// The projection-file format version this library writes and reads.
constexpr int projection_format_version = 1;

/// Name of the basis / singular-value tensor of (layer, kv_head) in a projection file.
inline std::string projection_basis_name(index_t layer, index_t kv_head) {
  return detail::concat("layers.", layer, ".kv_heads.", kv_head, ".basis");
}
inline std::string projection_singular_values_name(index_t layer, index_t kv_head) {
  return detail::concat("layers.", layer, ".kv_heads.", kv_head, ".singular_values");
}

/// Writes `set` to `path` (replaced atomically). User metadata keys must not start with "aqua.".
template <class = void>
inline void save_projection_set(const std::string& path, const projection_set& set) {
  constexpr const char* fn = "aqua::save_projection_set";
  AQUA_CHECK(!set.empty(), fn, ": the projection set is empty (default-constructed)");
  std::map<std::string, std::string> meta;
  for (const auto& kv : set.metadata()) {
    AQUA_CHECK(kv.first.compare(0, 5, "aqua.") != 0, fn, ": metadata key \"", kv.first,
               "\" uses the reserved prefix \"aqua.\"");
    meta[kv.first] = kv.second;
  }
  meta["aqua.format"] = "projection_set";
  meta["aqua.format_version"] = std::to_string(projection_format_version);
  meta["aqua.layers"] = std::to_string(set.layers());
  meta["aqua.kv_heads"] = std::to_string(set.kv_heads());
  meta["aqua.d"] = std::to_string(set.d());
  meta["aqua.group_size"] = std::to_string(set.group_size());
  meta["aqua.source"] = to_string(set.source());
  meta["aqua.centered"] = set.centered() ? "true" : "false";
  meta["aqua.vectors_seen"] = std::to_string(set.vectors_seen());
  const auto d = static_cast<std::uint64_t>(set.d());
  std::vector<detail::safetensors_output> tensors;
  for (index_t l = 0; l < set.layers(); ++l)
    for (index_t h = 0; h < set.kv_heads(); ++h) {
      const head_projection& p = set.head(l, h);
      tensors.push_back({projection_basis_name(l, h), "F32", {d, d}, p.basis().data()});
      tensors.push_back({projection_singular_values_name(l, h), "F64", {d}, p.singular_values().data()});
    }
  detail::write_safetensors(path, meta, tensors, fn);
}

namespace detail {

/// The one implementation behind both load_projection_set overloads.
// Glue kept in io.hpp: it builds an aqua::projection_set, and detail/ cannot include projection.hpp.
template <class = void>
inline projection_set load_projection_set(byte_source& in) {
  constexpr const char* fn = "aqua::load_projection_set";
  const std::string where = detail::concat(fn, ": ", in.path());
  const detail::safetensors_file file = detail::read_safetensors(in, fn);
  const auto& meta = file.metadata;
  const auto get = [&](const std::string& key) -> const std::string& {
    const auto it = meta.find(key);
    AQUA_CHECK(it != meta.end(), where, ": metadata key \"", key,
               "\" is missing (is this a projection file written by aqua?)");
    return it->second;
  };
  AQUA_CHECK(get("aqua.format") == "projection_set", where, ": metadata aqua.format is \"",
             get("aqua.format"), "\", expected \"projection_set\"");
  AQUA_CHECK(get("aqua.format_version") == std::to_string(projection_format_version), where,
             ": unsupported format version \"", get("aqua.format_version"), "\" (this library reads version ",
             projection_format_version, ")");
  static const char* const known[] = {
      "aqua.format",     "aqua.format_version", "aqua.layers",   "aqua.kv_heads",    "aqua.d",
      "aqua.group_size", "aqua.source",         "aqua.centered", "aqua.vectors_seen"};
  for (const auto& kv : meta) {
    if (kv.first.compare(0, 5, "aqua.") != 0) continue;
    bool ok = false;
    for (const char* k : known) ok = ok || kv.first == k;
    AQUA_CHECK(ok, where, ": unknown reserved metadata key \"", kv.first, "\"");
  }
  const auto layers = static_cast<index_t>(detail::parse_metadata_uint(meta, "aqua.layers", where, 1u << 20));
  const auto kv_heads =
      static_cast<index_t>(detail::parse_metadata_uint(meta, "aqua.kv_heads", where, 1u << 20));
  const auto d = static_cast<index_t>(detail::parse_metadata_uint(meta, "aqua.d", where, 1u << 16));
  const auto group =
      static_cast<index_t>(detail::parse_metadata_uint(meta, "aqua.group_size", where, 1u << 20));
  const std::uint64_t seen = detail::parse_metadata_uint(meta, "aqua.vectors_seen", where, ~std::uint64_t{0});
  AQUA_CHECK(layers >= 1 && kv_heads >= 1 && d >= 1 && group >= 1, where,
             ": layers, kv_heads, d and group_size must be positive (got ", layers, ", ", kv_heads, ", ", d,
             ", ", group, ")");
  const std::string& src = get("aqua.source");
  AQUA_CHECK(src == "queries" || src == "keys" || src == "queries_and_keys", where,
             ": metadata aqua.source is \"", src, "\", expected queries, keys or queries_and_keys");
  const calibration_source source = parse_calibration_source(src);
  const std::string& centered = get("aqua.centered");
  AQUA_CHECK(centered == "true" || centered == "false", where, ": metadata aqua.centered is \"", centered,
             "\", expected true or false");

  // The tensor count is bounded by the file, so check it before trusting layers x kv_heads.
  const std::uint64_t expected =
      2 * static_cast<std::uint64_t>(layers) * static_cast<std::uint64_t>(kv_heads);
  if (file.tensors.size() != expected) {
    // Name the first missing tensor; the loop ends early because the file holds few tensors.
    for (index_t l = 0; l < layers; ++l)
      for (index_t h = 0; h < kv_heads; ++h) {
        AQUA_CHECK(file.tensors.count(projection_basis_name(l, h)), where, ": tensor \"",
                   projection_basis_name(l, h), "\" is missing");
        AQUA_CHECK(file.tensors.count(projection_singular_values_name(l, h)), where, ": tensor \"",
                   projection_singular_values_name(l, h), "\" is missing");
      }
    // Every expected tensor is there (so there are few of them): name an unexpected one.
    std::set<std::string> names;
    for (index_t l = 0; l < layers; ++l)
      for (index_t h = 0; h < kv_heads; ++h) {
        names.insert(projection_basis_name(l, h));
        names.insert(projection_singular_values_name(l, h));
      }
    for (const auto& t : file.tensors)
      AQUA_CHECK(names.count(t.first), where, ": unexpected tensor \"", t.first, "\" (", layers, " layers x ",
                 kv_heads, " KV heads expected)");
  }

  projection_set set(layers, kv_heads, d, group);
  const auto du = static_cast<std::uint64_t>(d);
  for (index_t l = 0; l < layers; ++l)
    for (index_t h = 0; h < kv_heads; ++h) {
      const std::string bname = projection_basis_name(l, h), sname = projection_singular_values_name(l, h);
      const safetensors_entry& b = require_tensor(file, bname, where);
      const safetensors_entry& s = require_tensor(file, sname, where);
      require_tensor_type(b, bname, "F32", {du, du}, where);
      require_tensor_type(s, sname, "F64", {du}, where);
      row_matrix<float> basis(d, d);
      copy_tensor_data(file, b, basis.data());
      Eigen::VectorXd sv(d);
      copy_tensor_data(file, s, sv.data());
      AQUA_CHECK(basis.allFinite(), where, ": tensor \"", bname, "\" holds a non-finite value");
      const double err = detail::orthogonality_error(basis);
      AQUA_CHECK(err <= head_projection::orthogonality_tolerance, where, ": tensor \"", bname,
                 "\" is not orthogonal: max |P^T P - I| = ", err, " exceeds ",
                 head_projection::orthogonality_tolerance);
      for (index_t j = 0; j < d; ++j) {
        AQUA_CHECK(std::isfinite(sv[j]) && sv[j] >= 0, where, ": tensor \"", sname, "\" entry ", j, " is ",
                   sv[j], "; singular values must be finite and non-negative");
        AQUA_CHECK(j == 0 || sv[j] <= sv[j - 1], where, ": tensor \"", sname, "\" increases at entry ", j,
                   " (", sv[j - 1], " then ", sv[j], "); singular values must not increase");
      }
      set.set_head(l, h, detail::make_head_projection_unchecked(std::move(basis), std::move(sv)));
    }
  set.set_source(source);
  set.set_centered(centered == "true");
  set.set_vectors_seen(seen);
  for (const auto& kv : meta)
    if (kv.first.compare(0, 5, "aqua.") != 0) set.metadata()[kv.first] = kv.second;
  return set;
}

}  // namespace detail

/// Reads and validates a projection file written by save_projection_set.
template <class = void>
inline projection_set load_projection_set(const std::string& path) {
  detail::byte_source in(path, "aqua::load_projection_set");
  return detail::load_projection_set(in);
}

/// The same from the bytes of such a file in memory (`size` bytes at `data`, not kept); errors
/// name the data "<memory: N bytes>".
template <class = void>
inline projection_set load_projection_set(const void* data, std::size_t size) {
  detail::byte_source in(data, size, detail::byte_source::memory_name(size), "aqua::load_projection_set");
  return detail::load_projection_set(in);
}

// ---------------------------------------------------------------------------------------------
// NumPy .npy

enum class npy_dtype { float32, float64 };

/// An array read from a .npy file: C-order data in host byte order, float32 or float64.
class npy_array {
public:
  npy_array() = default;
  npy_array(std::vector<index_t> shape, std::vector<float> data)
      : shape_(std::move(shape)), f32_(std::move(data)) {
    check_size("aqua::npy_array", f32_.size());
  }
  npy_array(std::vector<index_t> shape, std::vector<double> data)
      : dtype_(npy_dtype::float64), shape_(std::move(shape)), f64_(std::move(data)) {
    check_size("aqua::npy_array", f64_.size());
  }

  npy_dtype dtype() const noexcept { return dtype_; }
  const std::vector<index_t>& shape() const noexcept { return shape_; }
  int rank() const noexcept { return static_cast<int>(shape_.size()); }
  index_t extent(int dim) const { return shape_.at(static_cast<std::size_t>(dim)); }
  index_t size() const noexcept {
    return static_cast<index_t>(dtype_ == npy_dtype::float32 ? f32_.size() : f64_.size());
  }
  /// "[2, 3, 4]".
  std::string shape_string() const {
    std::string s = "[";
    for (std::size_t i = 0; i < shape_.size(); ++i) s += (i ? ", " : "") + std::to_string(shape_[i]);
    return s + "]";
  }

  /// The elements; throws unless the dtype matches.
  const std::vector<float>& float_data() const {
    AQUA_CHECK(dtype_ == npy_dtype::float32,
               "aqua::npy_array::float_data: the array holds float64 (use to_float)");
    return f32_;
  }
  const std::vector<double>& double_data() const {
    AQUA_CHECK(dtype_ == npy_dtype::float64, "aqua::npy_array::double_data: the array holds float32");
    return f64_;
  }
  /// The elements as float, converted from float64 when needed.
  std::vector<float> to_float() const {
    if (dtype_ == npy_dtype::float32) return f32_;
    return std::vector<float>(f64_.begin(), f64_.end());
  }
  /// Converts the array to float32 in place (no-op when it already is).
  npy_array& convert_to_float() {
    if (dtype_ == npy_dtype::float64) {
      f32_.assign(f64_.begin(), f64_.end());
      std::vector<double>().swap(f64_);
      dtype_ = npy_dtype::float32;
    }
    return *this;
  }

  /// Contiguous view of the data with `Rank` dimensions; throws unless rank and dtype match.
  template <int Rank>
  tensor_view<const float, Rank> float_view() const {
    return view_impl<Rank>(float_data().data(), "float_view");
  }
  template <int Rank>
  tensor_view<const double, Rank> double_view() const {
    return view_impl<Rank>(double_data().data(), "double_view");
  }

private:
  void check_size(const char* fn, std::size_t n) const {
    // Checked: a wrapped product could match a small buffer and hand out views past its end.
    std::uint64_t span = 1;  // the product of the extents other than zero, as in the reader
    for (index_t e : shape_) {
      AQUA_CHECK(e >= 0, fn, ": negative extent ", e);
      AQUA_CHECK(detail::checked_mul(span, e == 0 ? 1 : static_cast<std::uint64_t>(e), span) &&
                     span <= static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()),
                 fn, ": the extents of shape ", shape_string(), " multiply past 2^63 - 1");
    }
    std::uint64_t expect = 1;
    for (index_t e : shape_) expect *= static_cast<std::uint64_t>(e);
    AQUA_CHECK(expect == static_cast<std::uint64_t>(n), fn, ": shape ", shape_string(), " holds ", expect,
               " elements but the data has ", n);
  }
  template <int Rank, class T>
  tensor_view<const T, Rank> view_impl(const T* data, const char* what) const {
    AQUA_CHECK(rank() == Rank, "aqua::npy_array::", what, ": the array has shape ", shape_string(), " (rank ",
               rank(), ") but a rank-", Rank, " view was asked for");
    std::array<index_t, Rank> e{};
    for (int i = 0; i < Rank; ++i) e[static_cast<std::size_t>(i)] = shape_[static_cast<std::size_t>(i)];
    return tensor_view<const T, Rank>(data, e);
  }

  npy_dtype dtype_ = npy_dtype::float32;
  std::vector<index_t> shape_;
  std::vector<float> f32_;
  std::vector<double> f64_;
};

namespace detail {

/// The one implementation behind both read_npy overloads.
// Glue kept in io.hpp: it builds the public npy_array (the parsing is detail/npy.hpp's).
template <class = void>
inline npy_array read_npy(byte_source& in) {
  constexpr const char* fn = "aqua::read_npy";
  const npy_header h = read_npy_header(in, fn);
  const std::vector<index_t> shape = npy_shape(in, h, fn);
  if (h.item_size == 4) return npy_array(shape, read_npy_elements<float>(in, h, shape));
  return npy_array(shape, read_npy_elements<double>(in, h, shape));
}

}  // namespace detail

/// Reads a .npy file (see the top of this header for what is accepted).
template <class = void>
inline npy_array read_npy(const std::string& path) {
  detail::byte_source in(path, "aqua::read_npy");
  return detail::read_npy(in);
}

/// The same from the bytes of a .npy file in memory (`size` bytes at `data`, not kept); errors
/// name the data "<memory: N bytes>".
template <class = void>
inline npy_array read_npy(const void* data, std::size_t size) {
  detail::byte_source in(data, size, detail::byte_source::memory_name(size), "aqua::read_npy");
  return detail::read_npy(in);
}

/// Reads a .npy file and converts it to float32.
template <class = void>
inline npy_array read_npy_float(const std::string& path) {
  npy_array a = read_npy(path);
  a.convert_to_float();
  return a;
}
/// The same from .npy bytes in memory.
template <class = void>
inline npy_array read_npy_float(const void* data, std::size_t size) {
  npy_array a = read_npy(data, size);
  a.convert_to_float();
  return a;
}

/// Writes `data` (C order, shape `shape`) as a little-endian float32 .npy file.
inline void save_npy(const std::string& path, const float* data, const std::vector<index_t>& shape) {
  detail::write_npy(path, data, shape, "aqua::save_npy");
}
/// Writes `data` as a little-endian float64 .npy file.
inline void save_npy(const std::string& path, const double* data, const std::vector<index_t>& shape) {
  detail::write_npy(path, data, shape, "aqua::save_npy");
}
/// Writes a (possibly strided) view as a C-order .npy file.
template <class T, int Rank>
void save_npy(const std::string& path, const tensor_view<T, Rank>& view) {
  using value = std::remove_cv_t<T>;
  static_assert(std::is_same<value, float>::value || std::is_same<value, double>::value,
                "aqua::save_npy: views of float or double only");
  detail::require_data(view, "aqua::save_npy", "view");
  std::vector<index_t> shape(view.extents().begin(), view.extents().end());
  if (view.is_contiguous()) {
    save_npy(path, static_cast<const value*>(view.data()), shape);
    return;
  }
  std::vector<value> packed;
  packed.reserve(static_cast<std::size_t>(view.size()));
  std::array<index_t, Rank> idx{};
  for (index_t n = 0; n < view.size(); ++n) {
    index_t offset = 0;
    for (int i = 0; i < Rank; ++i) offset += idx[static_cast<std::size_t>(i)] * view.stride(i);
    packed.push_back(view.data()[offset]);
    for (int i = Rank - 1; i >= 0; --i) {
      if (++idx[static_cast<std::size_t>(i)] < view.extent(i)) break;
      idx[static_cast<std::size_t>(i)] = 0;
    }
  }
  save_npy(path, static_cast<const value*>(packed.data()), shape);
}

}  // namespace aqua
