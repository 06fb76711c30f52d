// Error type, error macros and portability helpers shared by every aqua header.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
#define AQUA_HAS_EXCEPTIONS 1
#else
#define AQUA_HAS_EXCEPTIONS 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define AQUA_RESTRICT __restrict__
#define AQUA_LIKELY(x) __builtin_expect(!!(x), 1)
#define AQUA_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define AQUA_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define AQUA_RESTRICT __restrict
#define AQUA_LIKELY(x) (x)
#define AQUA_UNLIKELY(x) (x)
#define AQUA_ALWAYS_INLINE __forceinline
#else
#define AQUA_RESTRICT
#define AQUA_LIKELY(x) (x)
#define AQUA_UNLIKELY(x) (x)
#define AQUA_ALWAYS_INLINE inline
#endif

namespace aqua {

/// Signed index type for extents, strides and loop counters (64-bit: caches exceed 2^31 elements).
using index_t = std::int64_t;

/// The one exception type aqua throws. Messages name the function, the argument and the
/// offending values, e.g. "aqua::dense_decode: k has head dim 64 but q has 128".
class error : public std::invalid_argument {
public:
  explicit error(const std::string& what) : std::invalid_argument(what) {}
};

namespace detail {

inline void append_all(std::ostringstream&) {}
template <class First, class... Rest>
void append_all(std::ostringstream& os, First&& first, Rest&&... rest) {
  os << std::forward<First>(first);
  append_all(os, std::forward<Rest>(rest)...);
}

/// Concatenates the streamable arguments into one message string.
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  append_all(os, std::forward<Args>(args)...);
  return os.str();
}

[[noreturn]] inline void raise(const std::string& message) {
#if AQUA_HAS_EXCEPTIONS
  throw ::aqua::error(message);
#else
  // Without exceptions there is no way to hand the error back: say what went wrong and stop.
  std::fprintf(stderr, "aqua::error: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
#endif
}

}  // namespace detail
}  // namespace aqua

/// Throws aqua::error (or prints and aborts under -fno-exceptions) with the streamed arguments.
#define AQUA_THROW(...) ::aqua::detail::raise(::aqua::detail::concat(__VA_ARGS__))

/// Validates a precondition at an API boundary; the message arguments are only evaluated on failure.
#define AQUA_CHECK(condition, ...)                            \
  do {                                                        \
    if (AQUA_UNLIKELY(!(condition))) AQUA_THROW(__VA_ARGS__); \
  } while (0)

/// Internal invariant: compiled out with NDEBUG unless AQUA_ENABLE_ASSERTS is defined.
#if !defined(NDEBUG) || defined(AQUA_ENABLE_ASSERTS)
#define AQUA_ASSERT(condition)                                                                             \
  do {                                                                                                     \
    if (AQUA_UNLIKELY(!(condition))) {                                                                     \
      std::fprintf(stderr, "%s:%d: aqua internal assertion failed: %s\n", __FILE__, __LINE__, #condition); \
      std::abort();                                                                                        \
    }                                                                                                      \
  } while (0)
#else
#define AQUA_ASSERT(condition) ((void)0)
#endif
