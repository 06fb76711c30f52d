// NumPy .npy (format versions 1.0, 2.0 and 3.0): header parsing, reading the elements into C order
// and host byte order, and writing files.
//
// The header is a Python dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
// padded with spaces and ended by a newline. It is not JSON, so it gets its own small parser that
// accepts exactly what numpy writes (single or double quotes, True/False, tuples of non-negative
// integers with optional trailing commas and the 'L' suffix of old Python 2 files).
#pragma once

#include <cctype>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/binary_io.hpp"

namespace aqua {
namespace detail {

struct npy_header {
  bool little_endian = true;
  std::size_t item_size = 4;  // 4 (f4) or 8 (f8)
  bool fortran_order = false;
  std::vector<std::uint64_t> shape;
  std::uint64_t elements = 1;
  std::uint64_t data_offset = 0;  // bytes from the start of the file
};

class npy_dict_parser {
public:
  npy_dict_parser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  npy_header parse() {
    npy_header h;
    bool have_descr = false, have_order = false, have_shape = false;
    skip_space();
    expect('{');
    for (;;) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = parse_string();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        AQUA_CHECK(!have_descr, where_, ": the header has 'descr' twice");
        have_descr = true;
        parse_descr(parse_string(), h);
      } else if (key == "fortran_order") {
        AQUA_CHECK(!have_order, where_, ": the header has 'fortran_order' twice");
        have_order = true;
        h.fortran_order = parse_bool();
      } else if (key == "shape") {
        AQUA_CHECK(!have_shape, where_, ": the header has 'shape' twice");
        have_shape = true;
        h.shape = parse_shape();
      } else {
        fail(detail::concat("unexpected key '", key, "' (a .npy header has descr, fortran_order and shape)"));
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      AQUA_CHECK(peek() == '}', where_, ": expected ',' or '}' at offset ", pos_, " of the header");
    }
    expect('}');
    skip_space();
    AQUA_CHECK(pos_ == s_.size(), where_, ": unexpected text after the header dict at offset ", pos_);
    AQUA_CHECK(have_descr && have_order && have_shape, where_, ": the header lacks ",
               !have_descr   ? "'descr'"
               : !have_order ? "'fortran_order'"
                             : "'shape'");
    // As NumPy does, the extents other than zero must multiply to a representable count even
    // when a zero extent empties the array: every product of extents (strides included) a reader
    // of the array may form then fits an index_t.
    std::uint64_t span = 1;
    for (std::uint64_t e : h.shape)
      AQUA_CHECK(checked_mul(span, e == 0 ? 1 : e, span) &&
                     span <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
                 where_, ": the shape's extents multiply past 2^63 - 1");
    for (std::uint64_t e : h.shape) h.elements *= e;
    return h;
  }

private:
  [[noreturn]] void fail(const std::string& what) const { AQUA_THROW(where_, ": malformed header: ", what); }
  char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void skip_space() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  void expect(char c) {
    if (peek() != c) fail(detail::concat("expected '", c, "' at offset ", pos_));
    ++pos_;
  }
  std::string parse_string() {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail(detail::concat("expected a quoted string at offset ", pos_));
    ++pos_;
    const std::size_t start = pos_;
    while (pos_ < s_.size() && s_[pos_] != quote) ++pos_;
    if (pos_ >= s_.size()) fail("unterminated string");
    return s_.substr(start, pos_++ - start);
  }
  bool parse_bool() {
    if (s_.compare(pos_, 4, "True") == 0) {
      pos_ += 4;
      return true;
    }
    if (s_.compare(pos_, 5, "False") == 0) {
      pos_ += 5;
      return false;
    }
    fail(detail::concat("expected True or False for 'fortran_order' at offset ", pos_));
  }
  std::vector<std::uint64_t> parse_shape() {
    std::vector<std::uint64_t> shape;
    expect('(');
    for (;;) {
      skip_space();
      if (peek() == ')') break;
      if (!std::isdigit(static_cast<unsigned char>(peek())))
        fail(detail::concat("expected a non-negative integer in 'shape' at offset ", pos_));
      std::uint64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        const std::uint64_t digit = static_cast<std::uint64_t>(peek() - '0');
        if (!checked_mul(v, 10, v) || !checked_add(v, digit, v)) fail("a 'shape' entry overflows 64 bits");
        ++pos_;
      }
      if (peek() == 'L') ++pos_;
      shape.push_back(v);
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      skip_space();
      if (peek() != ')') fail(detail::concat("expected ',' or ')' in 'shape' at offset ", pos_));
    }
    expect(')');
    return shape;
  }
  void parse_descr(const std::string& d, npy_header& h) const {
    const bool known = d.size() == 3 && (d[0] == '<' || d[0] == '>' || d[0] == '=' || d[0] == '|') &&
                       d[1] == 'f' && (d[2] == '4' || d[2] == '8');
    AQUA_CHECK(known, where_, ": unsupported dtype '", d,
               "' (aqua reads float32 and float64: '<f4', '<f8', or big-endian '>f4', '>f8')");
    h.little_endian = d[0] == '<' || ((d[0] == '=' || d[0] == '|') && host_is_little_endian());
    h.item_size = d[2] == '4' ? 4 : 8;
  }

  const std::string& s_;
  std::string where_;
  std::size_t pos_ = 0;
};

/// Reads and validates the preamble and header of .npy bytes (a file or memory).
template <class = void>
inline npy_header read_npy_header(byte_source& in, const char* fn) {
  const std::string where = concat(fn, ": ", in.path());
  unsigned char pre[12] = {};
  AQUA_CHECK(in.size() >= 10, where, ": the file has ", in.size(),
             " bytes, too short for a .npy preamble (magic, version, header length)");
  in.read(0, pre, in.size() >= 12 ? 12 : 10, "the preamble");
  static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  AQUA_CHECK(std::memcmp(pre, magic, 6) == 0, where,
             ": not a .npy file (the magic string \\x93NUMPY is missing)");
  const int major = pre[6], minor = pre[7];
  AQUA_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, where,
             ": unsupported .npy format version ", major, ".", minor, " (aqua reads 1.0, 2.0 and 3.0)");
  std::uint64_t header_len, header_start;
  if (major == 1) {
    header_len = read_le_u16(pre + 8);
    header_start = 10;
  } else {
    AQUA_CHECK(in.size() >= 12, where, ": the file has ", in.size(), " bytes, too short for a version ",
               major, " preamble");
    header_len = read_le_u32(pre + 8);
    header_start = 12;
  }
  AQUA_CHECK(header_start + header_len <= in.size(), where, ": the header length ", header_len,
             " runs past the end of the file (", in.size(), " bytes)");
  std::string text(static_cast<std::size_t>(header_len), '\0');
  in.read(header_start, &text[0], header_len, "the header");
  npy_header h = npy_dict_parser(text, where).parse();
  h.data_offset = header_start + header_len;
  std::uint64_t bytes;
  AQUA_CHECK(checked_mul(h.elements, h.item_size, bytes), where, ": the data size overflows 64 bits");
  const std::uint64_t available = in.size() - h.data_offset;
  AQUA_CHECK(bytes <= available, where, ": the file is truncated: the shape needs ", bytes,
             " bytes of data but ", available, " remain");
  AQUA_CHECK(bytes == available, where, ": ", available - bytes, " unexpected bytes follow the ", bytes,
             " bytes of data");
  return h;
}

/// Builds a version 1.0 (or 2.0 when the header does not fit 65535 bytes) preamble and header
/// for little-endian C-order data, padded so the data starts at a multiple of 64 bytes.
inline std::string make_npy_header(const std::vector<std::uint64_t>& shape, std::size_t item_size) {
  std::string dict =
      std::string("{'descr': '<f") + (item_size == 4 ? "4" : "8") + "', 'fortran_order': False, 'shape': (";
  for (std::size_t i = 0; i < shape.size(); ++i) dict += (i ? ", " : "") + std::to_string(shape[i]);
  if (shape.size() == 1) dict += ",";  // Python's one-element tuple
  dict += "), }";
  for (int version = 1; version <= 2; ++version) {
    const std::size_t pre = version == 1 ? 10 : 12;
    std::size_t total = pre + dict.size() + 1;  // + the newline
    total = (total + 63) / 64 * 64;
    const std::size_t header_len = total - pre;
    if (version == 1 && header_len > 65535) continue;
    std::string out("\x93NUMPY", 6);
    out.push_back(static_cast<char>(version));
    out.push_back('\0');
    append_le(out, header_len, version == 1 ? 2 : 4);
    out += dict;
    out.append(header_len - dict.size() - 1, ' ');
    out.push_back('\n');
    return out;
  }
  AQUA_THROW("aqua::save_npy: the header does not fit a .npy file");
}

/// The header's shape as index_t extents; `fn` names the caller in errors.
inline std::vector<index_t> npy_shape(const byte_source& in, const npy_header& h, const char* fn) {
  std::vector<index_t> shape;
  for (std::uint64_t e : h.shape) {
    AQUA_CHECK(e <= static_cast<std::uint64_t>(std::numeric_limits<index_t>::max()), fn, ": ", in.path(),
               ": extent ", e, " is too large");
    shape.push_back(static_cast<index_t>(e));
  }
  return shape;
}

/// Reorders Fortran-order elements (first index fastest) to C order (last index fastest).
template <class T>
std::vector<T> fortran_to_c(const std::vector<T>& f, const std::vector<index_t>& shape) {
  std::vector<T> c(f.size());
  if (f.empty()) return c;
  const std::size_t rank = shape.size();
  std::vector<index_t> idx(rank, 0), fstride(rank, 1);
  for (std::size_t i = 1; i < rank; ++i) fstride[i] = fstride[i - 1] * shape[i - 1];
  for (std::size_t out = 0; out < c.size(); ++out) {
    index_t src = 0;
    for (std::size_t i = 0; i < rank; ++i) src += idx[i] * fstride[i];
    c[out] = f[static_cast<std::size_t>(src)];
    for (std::size_t i = rank; i-- > 0;) {
      if (++idx[i] < shape[i]) break;
      idx[i] = 0;
    }
  }
  return c;
}

/// The elements (T: float for f4, double for f8) in C order and host byte order.
template <class T>
std::vector<T> read_npy_elements(byte_source& in, const npy_header& h, const std::vector<index_t>& shape) {
  std::vector<T> data(static_cast<std::size_t>(h.elements));
  in.read(h.data_offset, data.data(), h.elements * sizeof(T), "the array data");
  to_host_order(data.data(), h.elements, sizeof(T), h.little_endian);
  if (h.fortran_order && shape.size() > 1) data = fortran_to_c(data, shape);
  return data;
}

/// Writes `data` (C order, shape `shape`, T float or double) to `path` as a little-endian .npy file
/// (replaced atomically); `fn` names the caller in errors.
template <class T>
void write_npy(const std::string& path, const T* data, const std::vector<index_t>& shape, const char* fn) {
  std::vector<std::uint64_t> ushape;
  std::uint64_t count = 1, bytes;
  for (index_t e : shape) {
    AQUA_CHECK(e >= 0, fn, ": ", path, ": negative extent ", e);
    ushape.push_back(static_cast<std::uint64_t>(e));
    AQUA_CHECK(checked_mul(count, ushape.back(), count), fn, ": ", path, ": the element count overflows");
  }
  AQUA_CHECK(checked_mul(count, sizeof(T), bytes), fn, ": ", path, ": the data size overflows");
  AQUA_CHECK(data != nullptr || count == 0, fn, ": ", path, ": data is null but the shape has ", count,
             " elements");
  std::string out = make_npy_header(ushape, sizeof(T));
  append_le_array(out, data, count, sizeof(T));
  write_file_atomically(path, out, fn);
}

}  // namespace detail
}  // namespace aqua
