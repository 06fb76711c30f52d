// 16-bit storage types for KV caches: bfloat16 and IEEE binary16.
//
// Both are storage formats only: aqua computes in float. Conversion from float rounds to nearest,
// ties to even (the IEEE default, what llama.cpp, PyTorch and the F16C / AVX512_BF16 instructions
// do for normal numbers); widening back to float is exact. Infinities keep their sign, NaN stays
// NaN (quieted), values beyond a format's range round to infinity, and subnormal results are kept
// (never flushed to zero), so the conversion does not depend on the caller's MXCSR (FTZ / DAZ).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace aqua {

/// How a kv_cache stores keys or values.
enum class storage_type : std::uint8_t {
  f32,   ///< IEEE binary32 (4 bytes)
  bf16,  ///< bfloat16: binary32's exponent, 8 significant bits (2 bytes)
  f16,   ///< IEEE binary16: 5-bit exponent, 11 significant bits, max 65504 (2 bytes)
};

/// Bytes of one element.
constexpr int storage_bytes(storage_type t) noexcept {
  return t == storage_type::f32 ? 4 : 2;
}

/// "f32", "bf16" or "f16".
constexpr const char* storage_name(storage_type t) noexcept {
  return t == storage_type::f32 ? "f32" : t == storage_type::bf16 ? "bf16" : "f16";
}

namespace detail {

inline std::uint32_t float_bits(float x) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) noexcept {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

inline std::uint16_t float_to_bf16_bits(float x) noexcept {
  const std::uint32_t u = float_bits(x);
  // NaN: keep the sign and the top payload bits, force the quiet bit (rounding could carry a NaN
  // with a low payload into infinity).
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  // Round to nearest even on the 16 dropped bits; a carry into the exponent is the correct result
  // (the largest finite floats round to infinity).
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(std::uint16_t b) noexcept {
  return bits_float(static_cast<std::uint32_t>(b) << 16);
}

inline std::uint16_t float_to_f16_bits(float x) noexcept {
  std::uint32_t u = float_bits(x);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  std::uint32_t h;
  if (u >= 0x47800000u) {
    // |x| >= 65536 (beyond the rounding boundary of 65504), infinity or NaN.
    h = u > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (u < 0x38800000u) {
    // |x| < 2^-14: a binary16 subnormal or zero. Integer rounding of the significand shifted into
    // the subnormal grid (units of 2^-24), ties to even; no floating-point operation, so no MXCSR
    // dependence.
    const std::uint32_t exp = u >> 23;
    if (exp < 102) {
      h = 0;  // below half the smallest subnormal (2^-25), including float subnormals
    } else {
      const std::uint32_t mant = (u & 0x7fffffu) | 0x800000u;
      const std::uint32_t shift = 126 - exp;  // 14..24: value = mant * 2^(exp - 150), grid 2^-24
      const std::uint32_t q = mant >> shift, rest = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
      h = q + ((rest > half || (rest == half && (q & 1u))) ? 1u : 0u);
    }
  } else {
    // Normal: rebias the exponent and round the 13 dropped bits to nearest even; a carry out of
    // the significand steps the exponent (up to infinity for 65520 and beyond).
    const std::uint32_t odd = (u >> 13) & 1u;
    h = (u - 0x38000000u + 0xfffu + odd) >> 13;
  }
  return static_cast<std::uint16_t>(h | sign);
}
inline float f16_bits_to_float(std::uint16_t b) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(b & 0x8000u) << 16;
  const std::uint32_t exp = (b >> 10) & 0x1fu, mant = b & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (mant << 13));  // Inf, NaN (payload kept)
  if (exp != 0) return bits_float(sign | ((exp + 112) << 23) | (mant << 13));
  if (mant == 0) return bits_float(sign);
  // Subnormal: normalise the significand (exact: float has the range and the bits).
  int e = 113;
  std::uint32_t m = mant;
  while (!(m & 0x400u)) {
    m <<= 1;
    --e;
  }
  return bits_float(sign | (static_cast<std::uint32_t>(e) << 23) | ((m & 0x3ffu) << 13));
}

}  // namespace detail

struct bf16;
struct f16;

namespace detail {

/// The storage_type of an element type (float, bf16, f16); other types do not compile.
template <class T>
struct storage_of;
template <>
struct storage_of<float> {
  static constexpr storage_type value = storage_type::f32;
};
template <>
struct storage_of<bf16> {
  static constexpr storage_type value = storage_type::bf16;
};
template <>
struct storage_of<f16> {
  static constexpr storage_type value = storage_type::f16;
};
/// Stores float x as storage type t at element i of a typed array.
inline void store_element(unsigned char* base, storage_type t, std::int64_t i, float x) noexcept {
  if (t == storage_type::f32) {
    std::memcpy(base + i * 4, &x, 4);
  } else {
    const std::uint16_t b = t == storage_type::bf16 ? float_to_bf16_bits(x) : float_to_f16_bits(x);
    std::memcpy(base + i * 2, &b, 2);
  }
}
inline float load_element(const unsigned char* base, storage_type t, std::int64_t i) noexcept {
  if (t == storage_type::f32) {
    float x;
    std::memcpy(&x, base + i * 4, 4);
    return x;
  }
  std::uint16_t b;
  std::memcpy(&b, base + i * 2, 2);
  return t == storage_type::bf16 ? bf16_bits_to_float(b) : f16_bits_to_float(b);
}

template <class T>
constexpr bool is_storage16 = std::is_same<T, bf16>::value || std::is_same<T, f16>::value;
template <class T>
constexpr bool is_storage_element = std::is_same<T, float>::value || is_storage16<T>;

}  // namespace detail

/// bfloat16 storage element. Construction from float rounds to nearest even; widening is exact.
struct bf16 {
  std::uint16_t bits = 0;
  bf16() = default;
  explicit bf16(float x) noexcept : bits(detail::float_to_bf16_bits(x)) {}
  explicit operator float() const noexcept { return detail::bf16_bits_to_float(bits); }
  static bf16 from_bits(std::uint16_t b) noexcept {
    bf16 v;
    v.bits = b;
    return v;
  }
  static constexpr storage_type type = storage_type::bf16;
};

/// IEEE binary16 storage element. Construction from float rounds to nearest even (finite values
/// beyond 65504 round to infinity at 65520); widening is exact.
struct f16 {
  std::uint16_t bits = 0;
  f16() = default;
  explicit f16(float x) noexcept : bits(detail::float_to_f16_bits(x)) {}
  explicit operator float() const noexcept { return detail::f16_bits_to_float(bits); }
  static f16 from_bits(std::uint16_t b) noexcept {
    f16 v;
    v.bits = b;
    return v;
  }
  static constexpr storage_type type = storage_type::f16;
};

static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2, "16-bit storage types must be 2 bytes");

/// The float that x becomes when stored as `t` (x itself for f32).
inline float round_to_storage(float x, storage_type t) noexcept {
  return t == storage_type::f32 ? x : t == storage_type::bf16 ? float(bf16(x)) : float(f16(x));
}

/// Calls f(T{}) with T the element type of storage type t (float, bf16 or f16) and returns what
/// it returns: one generic lambda then serves all three (a switch an engine would otherwise write).
template <class F>
decltype(auto) visit_storage(storage_type t, F&& f) {
  switch (t) {
    case storage_type::bf16:
      return f(bf16{});
    case storage_type::f16:
      return f(f16{});
    default:
      return f(float{});
  }
}

}  // namespace aqua
