// Zeroed, aligned byte buffers for the benchmarks' own arrays (the bandwidth probe, the buffers an
// engine would own). Not part of the library: the cache allocates its arrays itself.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace aqua_examples {

struct aligned_free {
  std::size_t alignment = 64;
  void operator()(unsigned char* p) const noexcept { ::operator delete[](p, std::align_val_t(alignment)); }
};
using byte_buffer = std::unique_ptr<unsigned char[], aligned_free>;

/// `bytes` zeroed bytes, 64-byte aligned; with huge_pages (Linux) arrays of 2 MB or more are 2 MB
/// aligned and advised to use transparent huge pages before they are touched, as the cache does
/// with its own arrays, so a comparison against it is on the same page size.
inline byte_buffer zeroed_buffer(std::size_t bytes, bool huge_pages, const char* what) {
  if (bytes == 0) return byte_buffer();
  constexpr std::size_t huge = std::size_t(1) << 21;
  const std::size_t alignment = huge_pages && bytes >= huge ? huge : 64;
  auto* p = static_cast<unsigned char*>(::operator new[](bytes, std::align_val_t(alignment), std::nothrow));
  if (p == nullptr)
    throw std::runtime_error("cannot allocate " + std::to_string(bytes) + " bytes for " + what);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (alignment == huge) madvise(p, bytes / huge * huge, MADV_HUGEPAGE);
#endif
  std::memset(p, 0, bytes);
  return byte_buffer(p, aligned_free{alignment});
}

}  // namespace aqua_examples
