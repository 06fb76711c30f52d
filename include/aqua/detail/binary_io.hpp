// Byte-level helpers for aqua's file formats: checked 64-bit size arithmetic, little-endian
// encoding on any host, checked reads from a file or from memory that never go past the end, atomic
// writes.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "aqua/config.hpp"

namespace aqua {
namespace detail {

/// a * b, or false when it does not fit in 64 bits.
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}
inline bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) noexcept {
  if (b > std::numeric_limits<std::uint64_t>::max() - a) return false;
  out = a + b;
  return true;
}

inline bool host_is_little_endian() noexcept {
  const std::uint16_t probe = 1;
  unsigned char first;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

/// Reverses the bytes of each of `count` elements of `size` bytes, in place.
inline void swap_bytes(void* data, std::uint64_t count, std::size_t size) noexcept {
  auto* p = static_cast<unsigned char*>(data);
  for (std::uint64_t i = 0; i < count; ++i, p += size)
    for (std::size_t a = 0, b = size - 1; a < b; ++a, --b) {
      const unsigned char t = p[a];
      p[a] = p[b];
      p[b] = t;
    }
}

/// Converts elements stored with the given byte order to the host's, in place.
inline void to_host_order(void* data, std::uint64_t count, std::size_t size, bool stored_little) noexcept {
  if (size > 1 && stored_little != host_is_little_endian()) swap_bytes(data, count, size);
}

inline std::uint64_t read_le_u64(const unsigned char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
inline std::uint32_t read_le_u32(const unsigned char* p) noexcept {
  return std::uint32_t(p[0]) | (std::uint32_t(p[1]) << 8) | (std::uint32_t(p[2]) << 16) |
         (std::uint32_t(p[3]) << 24);
}
inline std::uint16_t read_le_u16(const unsigned char* p) noexcept {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
inline void append_le(std::string& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

/// Appends `count` elements of `size` bytes as little-endian bytes.
inline void append_le_array(std::string& out, const void* data, std::uint64_t count, std::size_t size) {
  const std::size_t start = out.size();
  out.append(static_cast<const char*>(data), static_cast<std::size_t>(count * size));
  if (size > 1 && !host_is_little_endian()) swap_bytes(&out[start], count, size);
}

/// Bytes to parse, from a file or from caller memory, read with checks: every read says how many
/// bytes it needs and fails with a message naming the source when they are not there. The parsers
/// take a byte_source, so the file and the in-memory loaders share one implementation; a file is
/// read piece by piece as it is parsed, never copied whole into memory first.
class byte_source {
public:
  /// The file at `path`.
  byte_source(const std::string& path, const char* fn) : name_(path), fn_(fn) {
    std::error_code ec;
    AQUA_CHECK(!std::filesystem::is_directory(path, ec), fn_, ": ", name_, " is a directory, not a file");
    in_.open(path, std::ios::binary);
    AQUA_CHECK(in_.is_open(), fn_, ": cannot open ", name_);
    in_.seekg(0, std::ios::end);
    const std::streamoff end = in_.tellg();
    AQUA_CHECK(in_.good() && end >= 0, fn_, ": cannot determine the size of ", name_,
               " (is it a regular file?)");
    size_ = static_cast<std::uint64_t>(end);
    in_.seekg(0, std::ios::beg);
  }
  /// `size` bytes at `data` (not copied; they must outlive the source). Messages call them `name`.
  byte_source(const void* data, std::uint64_t size, std::string name, const char* fn)
      : name_(std::move(name)),
        fn_(fn),
        memory_(static_cast<const unsigned char*>(data)),
        in_memory_(true),
        size_(size) {
    AQUA_CHECK(data != nullptr || size == 0, fn_, ": ", name_, ": data is null but size is ", size);
  }
  /// The name of an in-memory source: "<memory: N bytes>".
  static std::string memory_name(std::uint64_t size) { return concat("<memory: ", size, " bytes>"); }

  std::uint64_t size() const noexcept { return size_; }
  /// The file's path, or the name given to the memory.
  const std::string& path() const noexcept { return name_; }

  /// Reads bytes [offset, offset + count) into dst; `what` names the part of the data for errors.
  void read(std::uint64_t offset, void* dst, std::uint64_t count, const char* what) {
    std::uint64_t end;
    AQUA_CHECK(checked_add(offset, count, end) && end <= size_, fn_, ": ", name_, " is truncated: ", what,
               " needs bytes [", offset, ", ", offset + count, ") but the ",
               in_memory_ ? "data has " : "file has ", size_, " bytes");
    if (count == 0) return;
    if (in_memory_) {
      std::memcpy(dst, memory_ + offset, static_cast<std::size_t>(count));
      return;
    }
    in_.seekg(static_cast<std::streamoff>(offset), std::ios::beg);
    char* p = static_cast<char*>(dst);
    std::uint64_t left = count;
    while (left > 0) {
      const std::uint64_t chunk = std::min<std::uint64_t>(left, std::uint64_t{1} << 30);
      in_.read(p, static_cast<std::streamsize>(chunk));
      AQUA_CHECK(static_cast<std::uint64_t>(in_.gcount()) == chunk, fn_, ": reading ", what, " from ", name_,
                 " failed after ", count - left + static_cast<std::uint64_t>(in_.gcount()), " of ", count,
                 " bytes");
      p += chunk;
      left -= chunk;
    }
  }

private:
  std::string name_;
  const char* fn_;
  const unsigned char* memory_ = nullptr;
  bool in_memory_ = false;
  std::ifstream in_;
  std::uint64_t size_ = 0;
};

/// Writes `bytes` to `path` through a temporary file renamed into place, so a failed write never
/// leaves a half-written file under the final name.
inline void write_file_atomically(const std::string& path, const std::string& bytes, const char* fn) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    AQUA_CHECK(out.is_open(), fn, ": cannot create ", tmp);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out.good()) {
      out.close();
      std::remove(tmp.c_str());
      AQUA_THROW(fn, ": writing ", bytes.size(), " bytes to ", tmp, " failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    AQUA_THROW(fn, ": cannot rename ", tmp, " to ", path, ": ", std::generic_category().message(err));
  }
}

}  // namespace detail
}  // namespace aqua
