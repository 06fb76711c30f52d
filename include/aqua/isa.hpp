// Which instruction set aqua's kernels run: one CPU probe for the whole library and one
// process-wide cap on it; and where the decode kernels prefetch their stream, the one tuning
// choice that differs between CPU vendors.
//
// aqua is compiled without -march flags: each kernel exists for AVX-512, AVX2 and portable C++,
// the SIMD ones under target attributes, and every call dispatches on active_isa(). All paths
// compute the same attention (the AVX-512 and AVX2 cache kernels agree bit for bit; the portable
// ones to float rounding). Capping is for comparing paths (tests, benchmarks) and for hosts where
// a narrower ISA is faster or required (for example to keep AVX-512 frequency licences off).
#pragma once

#include <atomic>
#include <cstdint>

// x86 with GCC or Clang: the target attributes and CPU builtins the SIMD kernels are written with.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define AQUA_HAS_X86_SIMD 1
#include <cpuid.h>
#else
#define AQUA_HAS_X86_SIMD 0
#endif

namespace aqua {

namespace detail {
#if AQUA_HAS_X86_SIMD
/// F16C (CPUID leaf 1, ECX bit 29) read directly: Clang's __builtin_cpu_supports has no "f16c".
inline bool cpu_has_f16c() noexcept {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
}
#endif
}  // namespace detail

/// Instruction sets the kernels are written for, narrowest first.
enum class isa : std::uint8_t {
  portable = 0,  ///< plain C++, any CPU
  avx2 = 1,      ///< AVX2 + FMA + F16C (Haswell, Zen 1 and later)
  avx512 = 2,    ///< AVX-512F on top of the AVX2 set (Skylake-SP, Zen 4 and later)
};

/// "portable", "avx2" or "avx512".
inline const char* isa_name(isa i) noexcept {
  return i == isa::avx512 ? "avx512" : i == isa::avx2 ? "avx2" : "portable";
}

/// The widest ISA this CPU, its operating system (the AVX register state, which the compiler's
/// CPU probe checks) and this compiler support; portable off x86 or without GCC / Clang.
inline isa supported_isa() noexcept {
#if AQUA_HAS_X86_SIMD
  static const isa probed = [] {
    __builtin_cpu_init();  // the probe may run before main, from a static initialiser
    const bool avx2 =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && detail::cpu_has_f16c();
    if (!avx2) return isa::portable;
    return __builtin_cpu_supports("avx512f") ? isa::avx512 : isa::avx2;
  }();
  return probed;
#else
  return isa::portable;
#endif
}

namespace detail {
inline std::atomic<std::uint8_t>& isa_cap() noexcept {
  static std::atomic<std::uint8_t> cap{static_cast<std::uint8_t>(isa::avx512)};
  return cap;
}
}  // namespace detail

/// The cap set by set_max_isa (avx512, i.e. none, until then).
inline isa max_isa() noexcept {
  return static_cast<isa>(detail::isa_cap().load(std::memory_order_relaxed));
}

/// The ISA the kernels dispatch to: the narrower of supported_isa() and max_isa().
inline isa active_isa() noexcept {
  const isa s = supported_isa(), cap = max_isa();
  return static_cast<std::uint8_t>(cap) < static_cast<std::uint8_t>(s) ? cap : s;
}

/// Caps the kernels at `cap` for the whole process and returns the previous cap; a cap wider than
/// supported_isa() selects supported_isa(). Set it before starting kernel calls: a call running on
/// another thread while the cap changes stays correct but may mix paths, so its result agrees with
/// either path to float rounding rather than bit for bit.
inline isa set_max_isa(isa cap) noexcept {
  return static_cast<isa>(
      detail::isa_cap().exchange(static_cast<std::uint8_t>(cap), std::memory_order_relaxed));
}

/// Where the decode kernels' software prefetch puts the key and value lines ahead of the kernel.
/// Memory-bound decode reaches the read bandwidth only when enough lines are in flight, and the
/// cache level that tracks them differs between vendors: on the Intel hosts measured, lines
/// requested into L1 a short distance ahead (192 lines, 12 KB) reached the bandwidth; on AMD Zen 4
/// the L1 requests held decode to a third of it, and lines requested into L2 further ahead
/// (768 lines, 48 KB) reach it (docs/performance.md has the measurements). Results never depend on
/// it; only the speed does.
enum class decode_prefetch : std::uint8_t {
  automatic = 0,  ///< l2 on AMD CPUs, l1 elsewhere
  l1 = 1,         ///< 192 lines ahead into L1
  l2 = 2,         ///< 768 lines ahead into L2
};

/// "automatic", "l1" or "l2".
inline const char* decode_prefetch_name(decode_prefetch p) noexcept {
  return p == decode_prefetch::l1 ? "l1" : p == decode_prefetch::l2 ? "l2" : "automatic";
}

namespace detail {
inline std::atomic<std::uint8_t>& decode_prefetch_choice() noexcept {
  static std::atomic<std::uint8_t> choice{static_cast<std::uint8_t>(decode_prefetch::automatic)};
  return choice;
}
inline bool cpu_is_amd() noexcept {
#if AQUA_HAS_X86_SIMD
  static const bool amd = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") != 0;
  }();
  return amd;
#else
  return false;
#endif
}
}  // namespace detail

/// The prefetch the decode kernels use: l1 or l2 (automatic resolved for this CPU).
inline decode_prefetch active_decode_prefetch() noexcept {
  const auto chosen =
      static_cast<decode_prefetch>(detail::decode_prefetch_choice().load(std::memory_order_relaxed));
  if (chosen != decode_prefetch::automatic) return chosen;
  return detail::cpu_is_amd() ? decode_prefetch::l2 : decode_prefetch::l1;
}

/// Sets the decode prefetch for the whole process (automatic until then) and returns the previous
/// setting. Safe to call while kernels run (they read it once per call).
inline decode_prefetch set_decode_prefetch(decode_prefetch p) noexcept {
  return static_cast<decode_prefetch>(
      detail::decode_prefetch_choice().exchange(static_cast<std::uint8_t>(p), std::memory_order_relaxed));
}

}  // namespace aqua
