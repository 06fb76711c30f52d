// aqua::bf16 and aqua::f16: round to nearest even from float, exact widening, Inf / NaN /
// subnormals kept. Expected bit patterns are worked out by hand from the formats; the bulk checks
// use properties (nearest representable, round trip) and, where the CPU has them, the hardware
// conversions (F16C, AVX512_BF16) as independent oracles.
#include <aqua/float16.hpp>

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <utility>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AQUA_TEST_X86 1
#endif

namespace {

float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
std::uint32_t to_bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
std::uint16_t bf(float x) {
  return aqua::bf16(x).bits;
}
std::uint16_t hf(float x) {
  return aqua::f16(x).bits;
}

/// Whether `chosen` (a 16-bit pattern of Format) is a nearest representable value of x, and the
/// even one on a tie: checked against the neighbouring patterns, in double.
template <class Format>
bool is_nearest_even(float x, std::uint16_t chosen) {
  const double target = x;
  const double c = static_cast<double>(static_cast<float>(Format::from_bits(chosen)));
  for (int step : {-1, 1}) {
    const std::uint16_t other = static_cast<std::uint16_t>(chosen + step);
    const float of = static_cast<float>(Format::from_bits(other));
    if (std::isnan(of) || std::isinf(of)) continue;
    if (((other ^ chosen) & 0x8000u) != 0) continue;  // crossed the sign: the other side is -0 / +0
    const double dc = std::abs(c - target), dn = std::abs(static_cast<double>(of) - target);
    if (dn < dc) return false;
    if (dn == dc && (chosen & 1u)) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("bf16 rounds to nearest with ties to even", "[float16]") {
  // bf16 keeps 7 fraction bits: near 1 its spacing is 2^-7, so 2^-8 is the halfway point.
  CHECK(bf(1.0f) == 0x3F80);
  CHECK(bf(1.0f + 0x1p-8f) == 0x3F80);             // tie, 0x3F80 even
  CHECK(bf(1.0f + 3 * 0x1p-8f) == 0x3F82);         // tie between 0x3F81 (odd) and 0x3F82
  CHECK(bf(1.0f + 0x1p-8f + 0x1p-20f) == 0x3F81);  // just above the tie
  CHECK(bf(-2.0f) == 0xC000);
  CHECK(bf(0.0f) == 0x0000);
  CHECK(bf(-0.0f) == 0x8000);
}

TEST_CASE("bf16 keeps infinities, NaN and subnormals and overflows to infinity", "[float16]") {
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(bf(inf) == 0x7F80);
  CHECK(bf(-inf) == 0xFF80);
  CHECK(bf(std::numeric_limits<float>::max()) == 0x7F80);  // beyond (2 - 2^-8) 2^127: rounds up
  CHECK(bf(from_bits(0x7F7F7FFFu)) == 0x7F7F);             // just below the halfway point
  CHECK(std::isnan(static_cast<float>(aqua::bf16(std::nanf("")))));
  // A NaN whose payload sits only in the dropped bits must not round into infinity.
  CHECK(std::isnan(static_cast<float>(aqua::bf16(from_bits(0x7F800001u)))));
  CHECK(std::isnan(static_cast<float>(aqua::bf16(from_bits(0xFF800001u)))));
  // Subnormals: 0x00010000 is a bf16 subnormal exactly; halfway cases tie to even.
  CHECK(bf(from_bits(0x00010000u)) == 0x0001);
  CHECK(bf(from_bits(0x00008000u)) == 0x0000);
  CHECK(bf(from_bits(0x00018000u)) == 0x0002);
  CHECK(bf(from_bits(0x00000001u)) == 0x0000);
}

TEST_CASE("f16 rounds to nearest with ties to even over its whole range", "[float16]") {
  CHECK(hf(1.0f) == 0x3C00);
  CHECK(hf(1.0f + 0x1p-11f) == 0x3C00);      // tie (spacing 2^-10 near 1)
  CHECK(hf(1.0f + 3 * 0x1p-11f) == 0x3C02);  // tie between 0x3C01 and 0x3C02
  CHECK(hf(-2.5f) == 0xC100);
  CHECK(hf(65504.0f) == 0x7BFF);  // the largest finite f16
  CHECK(hf(65519.0f) == 0x7BFF);  // below the halfway point 65520
  CHECK(hf(65520.0f) == 0x7C00);  // the tie goes to the even pattern, which is infinity
  CHECK(hf(1e6f) == 0x7C00);
  CHECK(hf(-1e6f) == 0xFC00);
  CHECK(hf(0x1p-14f) == 0x0400);      // smallest normal
  CHECK(hf(0x1p-24f) == 0x0001);      // smallest subnormal
  CHECK(hf(0x1p-25f) == 0x0000);      // tie with zero: zero is even
  CHECK(hf(3 * 0x1p-25f) == 0x0002);  // tie between 0x0001 and 0x0002
  CHECK(hf(0x1p-25f * 1.0001f) == 0x0001);
  CHECK(hf(1023 * 0x1p-24f) == 0x03FF);  // largest subnormal
  CHECK(hf(from_bits(0x00000001u)) == 0x0000);
  CHECK(hf(-0.0f) == 0x8000);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(hf(inf) == 0x7C00);
  CHECK(hf(-inf) == 0xFC00);
  CHECK(std::isnan(static_cast<float>(aqua::f16(std::nanf("")))));
  CHECK(std::isnan(static_cast<float>(aqua::f16(from_bits(0x7F800001u)))));
}

TEST_CASE("widening is exact: every 16-bit pattern round-trips through float", "[float16]") {
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float x = static_cast<float>(aqua::bf16::from_bits(bits));
    const float y = static_cast<float>(aqua::f16::from_bits(bits));
    if (std::isnan(x)) {
      CHECK(std::isnan(static_cast<float>(aqua::bf16(x))));
    } else if (aqua::bf16(x).bits != bits) {
      FAIL("bf16 pattern " << b << " does not round-trip");
    }
    if (std::isnan(y)) {
      CHECK(std::isnan(static_cast<float>(aqua::f16(y))));
    } else if (aqua::f16(y).bits != bits) {
      FAIL("f16 pattern " << b << " does not round-trip");
    }
  }
  // f16 subnormals widen to the values their definition gives: m * 2^-24.
  CHECK(static_cast<float>(aqua::f16::from_bits(0x0001)) == 0x1p-24f);
  CHECK(static_cast<float>(aqua::f16::from_bits(0x03FF)) == 1023 * 0x1p-24f);
  CHECK(static_cast<float>(aqua::f16::from_bits(0x8200)) == -512 * 0x1p-24f);
}

TEST_CASE("random floats convert to the nearest representable value, ties to even", "[float16]") {
  std::mt19937 rng(7);
  std::uniform_int_distribution<std::uint32_t> bits;
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    // Random bit patterns cover every exponent; keep the f16 range for f16.
    const float x = from_bits(bits(rng));
    if (!std::isfinite(x)) continue;
    if (!is_nearest_even<aqua::bf16>(x, bf(x)) && std::isfinite(static_cast<float>(aqua::bf16(x))))
      FAIL("bf16(" << x << ") = " << bf(x) << " is not the nearest even");
    const float y = std::ldexp(std::abs(x) / std::ldexp(1.0f, std::ilogb(x) + 1), int(rng() % 40) - 25) *
                    (x < 0 ? -1.0f : 1.0f);
    if (std::abs(y) < 65504.0f && !is_nearest_even<aqua::f16>(y, hf(y)))
      FAIL("f16(" << y << ") = " << hf(y) << " is not the nearest even");
    ++checked;
  }
  CHECK(checked > 190000);
}

#if defined(AQUA_TEST_X86)
namespace {
__attribute__((target("f16c"))) std::uint16_t hardware_f16(float x) {
  return static_cast<std::uint16_t>(
      _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT), 0));
}
}  // namespace

TEST_CASE("f16 conversion agrees with the F16C instruction on every float class", "[float16]") {
  if (!__builtin_cpu_supports("f16c")) {
    WARN("no F16C on this CPU: the hardware comparison is skipped");
    return;
  }
  std::mt19937 rng(11);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 500000; ++i) {
    const float x = from_bits(bits(rng));
    if (std::isnan(x)) continue;  // both give a NaN, payloads may differ
    const std::uint16_t want = hardware_f16(x), got = hf(x);
    if (want != got)
      FAIL("f16(" << x << " = 0x" << std::hex << to_bits(x) << ") = " << got << ", F16C " << want);
  }
  // Near the subnormal and overflow boundaries, densely.
  for (std::uint32_t u = 0x33000000u; u < 0x38900000u; u += 97) {
    if (hardware_f16(from_bits(u)) != hf(from_bits(u))) FAIL("subnormal range: 0x" << std::hex << u);
  }
  for (std::uint32_t u = 0x477F0000u; u < 0x47810000u; u += 3) {
    if (hardware_f16(from_bits(u)) != hf(from_bits(u))) FAIL("overflow range: 0x" << std::hex << u);
  }
}
#endif

TEST_CASE("round_to_storage applies the storage type's rounding", "[float16]") {
  const float x = 1.0f + 3 * 0x1p-11f + 3 * 0x1p-8f;
  CHECK(aqua::round_to_storage(x, aqua::storage_type::f32) == x);
  CHECK(aqua::round_to_storage(x, aqua::storage_type::bf16) == static_cast<float>(aqua::bf16(x)));
  CHECK(aqua::round_to_storage(x, aqua::storage_type::f16) == static_cast<float>(aqua::f16(x)));
  CHECK(aqua::storage_bytes(aqua::storage_type::f32) == 4);
  CHECK(aqua::storage_bytes(aqua::storage_type::bf16) == 2);
  CHECK(std::string(aqua::storage_name(aqua::storage_type::f16)) == "f16");
}

TEST_CASE("visit_storage calls the lambda with the element type of each storage type", "[float16]") {
  auto size_and_type = [](auto tag) {
    using T = decltype(tag);
    return std::make_pair(sizeof(T), std::is_same<T, float>::value        ? aqua::storage_type::f32
                                     : std::is_same<T, aqua::bf16>::value ? aqua::storage_type::bf16
                                                                          : aqua::storage_type::f16);
  };
  for (auto t : {aqua::storage_type::f32, aqua::storage_type::bf16, aqua::storage_type::f16}) {
    const auto seen = aqua::visit_storage(t, size_and_type);
    CHECK(seen.first == std::size_t(aqua::storage_bytes(t)));
    CHECK(seen.second == t);
  }
}

#include "aqua_oracle.hpp"

TEST_CASE("the oracle's double rounding agrees with bf16 and f16 on every float class", "[float16][oracle]") {
  // Two independent roundings (aqua's integer arithmetic, the oracle's scaled std::nearbyint in
  // double) that the 16-bit oracle tests rely on being the same function.
  std::mt19937 rng(13);
  std::uniform_int_distribution<std::uint32_t> bits;
  auto check = [](float x) {
    if (std::isnan(x)) return;
    const double b = aqua_oracle::round_to_bf16(x), h = aqua_oracle::round_to_f16(x);
    if (b != double(static_cast<float>(aqua::bf16(x))))
      FAIL("bf16: 0x" << std::hex << to_bits(x) << " oracle " << b << ", aqua "
                      << static_cast<float>(aqua::bf16(x)));
    if (h != double(static_cast<float>(aqua::f16(x))))
      FAIL("f16: 0x" << std::hex << to_bits(x) << " oracle " << h << ", aqua "
                     << static_cast<float>(aqua::f16(x)));
  };
  for (int i = 0; i < 300000; ++i) check(from_bits(bits(rng)));
  for (std::uint32_t u = 0x33000000u; u < 0x38900000u; u += 97) check(from_bits(u));     // f16 subnormals
  for (std::uint32_t u = 0x477F0000u; u < 0x47810000u; u += 3) check(from_bits(u));      // f16 overflow
  for (std::uint32_t u = 0x7F7F0000u; u <= 0x7F7FFFFFu; u += 7) check(from_bits(u));     // bf16 overflow
  for (std::uint32_t u = 0; u < 0x00020000u; u += 5) check(from_bits(u | 0x80000000u));  // float subnormals
}
