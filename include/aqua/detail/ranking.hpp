// The ranking kernels behind select.hpp and the AQUA engines: candidates ranked by decreasing
// weight (ties by lower index), cut where a selection_spec says.
//
// No allocation: the caller's index buffer must hold n entries; the first `count` entries are the
// selection (the rest is scratch). Built for n <= 512 (head dims, tile counts): each value becomes
// an integer key ordered like it (float bits, sign folded), the k-th key is found by bisection on
// the key value with branch-free counts, and the k keys above it are ranked by counting, for each,
// the keys before it: no data-dependent branches, vector compares (AVX2 when the CPU has it, else
// loops the compiler vectorises). Energy specs rank in runs of 32 and stop at the run that reaches
// the threshold. Larger n, and weight types other than float / double, use a comparison sort.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include "aqua/config.hpp"
#include "aqua/detail/simd.hpp"
#include "aqua/selection_spec.hpp"

namespace aqua {
namespace detail {

/// Validates `spec` for `n` candidates (fixed k must lie in [1, n]).
inline void validate_selection(const selection_spec& spec, index_t n, const char* fn) {
  switch (spec.type) {
    case selection_spec::kind::top_k:
      AQUA_CHECK(spec.k >= 1 && spec.k <= n, fn, ": k = ", spec.k, " must lie in [1, ", n,
                 "] (the number of selectable projected dimensions)");
      break;
    case selection_spec::kind::fraction:
      AQUA_CHECK(spec.value > 0.0 && spec.value <= 1.0, fn, ": selection fraction ", spec.value,
                 " must lie in (0, 1]");
      break;
    case selection_spec::kind::energy:
      AQUA_CHECK(spec.value > 0.0 && spec.value <= 1.0, fn, ": energy threshold tau = ", spec.value,
                 " must lie in (0, 1]");
      break;
  }
}

/// The number of dimensions a fixed-size spec keeps out of n (energy specs: n, an upper bound).
inline index_t selection_count(const selection_spec& spec, index_t n) {
  switch (spec.type) {
    case selection_spec::kind::top_k:
      return std::min(spec.k, n);
    case selection_spec::kind::fraction:
      return std::max<index_t>(
          1, std::min<index_t>(n, static_cast<index_t>(std::ceil(spec.value * double(n) - 1e-9))));
    case selection_spec::kind::energy:
      return n;
  }
  return n;
}

/// The energy rule's cut, shared by every path that ranks: adds energy_of_rank(c) to acc for the
/// ranked entries c = from, .., to - 1 and returns c + 1 at the first where acc reaches tau of
/// `total`, or 0 if none does (acc then carries on to the next run).
template <class EnergyOfRank>
index_t energy_cut(double tau, double total, index_t from, index_t to, double& acc,
                   EnergyOfRank energy_of_rank) {
  const double target = tau * total;
  for (index_t c = from; c < to; ++c) {
    acc += energy_of_rank(c);
    // Relative slack so tau = 1 stops at the last non-zero dimension despite rounding.
    if (acc >= target * (1.0 - 1e-12)) return c + 1;
  }
  return 0;
}

/// Signed integer image of a finite float / double that orders like the value (a < b iff
/// key(a) < key(b)), with -0.0 and +0.0 sharing key 0: they compare equal, so they must tie. One
/// integer compare then replaces the float compare, and compares of 8 keys vectorise.
inline std::int32_t order_key(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof(b));
  const std::int32_t mag = static_cast<std::int32_t>(b & 0x7fffffffu);
  return (b >> 31) ? -mag : mag;
}
inline std::int64_t order_key(double x) {
  std::uint64_t b;
  std::memcpy(&b, &x, sizeof(b));
  const std::int64_t mag = static_cast<std::int64_t>(b & 0x7fffffffffffffffull);
  return (b >> 63) ? -mag : mag;
}

/// Candidates beyond this go the comparison-sort way (the key buffers live on the stack).
constexpr index_t ranked_fast_max = 512;
/// Key arrays are processed in blocks of this many lanes, padded with key_floor.
constexpr index_t key_block = 8;
/// The largest run of the ranking ordered at once (rank counting costs m^2 / key_block blocks).
constexpr index_t rank_chunk_max = 64;

/// Below the key of every finite value (whose magnitude bits are at most 0x7f7fffff...), so
/// padding never counts as greater than a threshold and key - 1 never overflows.
template <class K>
constexpr K key_floor() {
  return std::numeric_limits<K>::min();
}

inline index_t round_up_to_block(index_t n) {
  return (n + key_block - 1) / key_block * key_block;
}

/// #{j < n : key[j] > t} over a padded key array. The lane loop is written so that compilers
/// vectorise it at -O2 (SSE2, NEON) where the AVX2 version does not apply.
template <class K>
index_t count_greater(const K* key, index_t n, K t) {
  using C = std::make_unsigned_t<K>;
  C acc[key_block] = {};
  for (index_t j = 0; j < round_up_to_block(n); j += key_block)
    for (index_t l = 0; l < key_block; ++l) acc[l] -= C(0) - C(key[j + l] > t);
  C sum = 0;
  for (index_t l = 0; l < key_block; ++l) sum += acc[l];
  return index_t(sum);
}

/// Place of each of the m keys (padded) in the ranking (decreasing key, equal keys by lower
/// position): place[a] = #{b : key[b] > key[a]} + #{b < a : key[b] == key[a]}. Blocks before a's
/// own count key >= x as key > x - 1 (x is above the floor, so x - 1 does not wrap).
template <class K>
void rank_places(const K* key, index_t m, std::int32_t* place) {
  using C = std::make_unsigned_t<K>;
  for (index_t a = 0; a < m; ++a) {
    const K x = key[a];
    const index_t own = a / key_block * key_block;
    C acc[key_block] = {};
    for (index_t j = 0; j < own; j += key_block)
      for (index_t l = 0; l < key_block; ++l) acc[l] -= C(0) - C(key[j + l] > x - 1);
    for (index_t l = 0; l < key_block; ++l) acc[l] -= C(0) - C(key[own + l] > x - K(own + l < a));
    for (index_t j = own + key_block; j < round_up_to_block(m); j += key_block)
      for (index_t l = 0; l < key_block; ++l) acc[l] -= C(0) - C(key[j + l] > x);
    C sum = 0;
    for (index_t l = 0; l < key_block; ++l) sum += acc[l];
    place[a] = static_cast<std::int32_t>(sum);
  }
}

#if AQUA_HAS_X86_SIMD
AQUA_TARGET_AVX2 inline index_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

/// count_greater over a padded array (padding = key_floor, never greater).
AQUA_TARGET_AVX2 inline index_t count_greater_avx2(const std::int32_t* key, index_t padded, std::int32_t t) {
  const __m256i tv = _mm256_set1_epi32(t);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
  index_t j = 0;
  for (; j + 2 * key_block <= padded; j += 2 * key_block) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + j));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + j + key_block));
    acc0 = _mm256_sub_epi32(acc0, _mm256_cmpgt_epi32(a, tv));
    acc1 = _mm256_sub_epi32(acc1, _mm256_cmpgt_epi32(b, tv));
  }
  if (j < padded)
    acc0 = _mm256_sub_epi32(
        acc0, _mm256_cmpgt_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + j)), tv));
  return hsum_epi32(_mm256_add_epi32(acc0, acc1));
}

/// rank_places, eight items a at a time against one broadcast key b per step: items b in blocks
/// before the eight count when key[b] >= key[a] (key[b] > key[a] - 1), items after when
/// key[b] > key[a], items of the same block lane by lane.
AQUA_TARGET_AVX2 inline void rank_places_avx2(const std::int32_t* key, index_t m, std::int32_t* place) {
  const index_t padded = round_up_to_block(m);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), one = _mm256_set1_epi32(1);
  alignas(32) std::int32_t lanes[key_block];
  for (index_t a = 0; a < padded; a += key_block) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(key + a));
    const __m256i x_minus_1 = _mm256_sub_epi32(x, one);
    __m256i acc = _mm256_setzero_si256();
    for (index_t b = 0; b < a; ++b)
      acc = _mm256_sub_epi32(acc, _mm256_cmpgt_epi32(_mm256_set1_epi32(key[b]), x_minus_1));
    for (index_t l = 0; l < key_block; ++l) {
      // lanes after l (a + l comes before them) count >=, lanes up to l count >
      const __m256i after = _mm256_cmpgt_epi32(lane, _mm256_set1_epi32(static_cast<int>(l)));
      acc = _mm256_sub_epi32(acc,
                             _mm256_cmpgt_epi32(_mm256_set1_epi32(key[a + l]), _mm256_add_epi32(x, after)));
    }
    for (index_t b = a + key_block; b < m; ++b)
      acc = _mm256_sub_epi32(acc, _mm256_cmpgt_epi32(_mm256_set1_epi32(key[b]), x));
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
    for (index_t l = 0; l < key_block && a + l < m; ++l) place[a + l] = lanes[l];
  }
}
#endif

/// The float-key (int32) versions: AVX2 when the CPU has it, over the padded arrays.
inline index_t count_greater(const std::int32_t* key, index_t n, std::int32_t t) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) return count_greater_avx2(key, round_up_to_block(n), t);
#endif
  return count_greater<std::int32_t>(key, n, t);
}
inline void rank_places(const std::int32_t* key, index_t m, std::int32_t* place) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) return rank_places_avx2(key, m, place);
#endif
  rank_places<std::int32_t>(key, m, place);
}

/// Items (key, pos) of a ranking list: keys padded with key_floor to a block multiple.
template <class K>
struct rank_list {
  K* key;
  std::int32_t* pos;
  index_t size;
};

/// Splits `from` three ways by key, each part keeping the list order: key > hi to `above`,
/// key in (lo, hi] to `between`, key <= lo to `below` (which may be `from` itself: compaction in
/// place). The sizes are set. Branch-free. Without keep_below, `below` may be left unwritten (its
/// size then means nothing).
template <class K>
void partition3(rank_list<K> from, K lo, K hi, rank_list<K>& above, rank_list<K>& between,
                rank_list<K>& below, bool /*keep_below*/) {
  index_t a = 0, b = 0, c = 0;
  for (index_t j = 0; j < from.size; ++j) {
    const K x = from.key[j];
    const std::int32_t p = from.pos[j];
    const bool is_above = x > hi, is_between = (x > lo) & !is_above;
    above.key[a] = x;
    above.pos[a] = p;
    between.key[b] = x;
    between.pos[b] = p;
    below.key[c] = x;
    below.pos[c] = p;
    a += index_t(is_above);
    b += index_t(is_between);
    c += index_t(!is_above & !is_between);
  }
  above.size = a;
  between.size = b;
  below.size = c;
}

#if AQUA_HAS_X86_SIMD
/// For each 8-bit lane mask, the positions of its set bits in order, one per nibble: the
/// permutation that packs the selected lanes to the front.
struct pack_table {
  std::uint32_t nibbles[256];
};
constexpr pack_table make_pack_table() {
  pack_table t{};
  for (std::uint32_t mask = 0; mask < 256; ++mask) {
    std::uint32_t e = 0, at = 0;
    for (std::uint32_t lane = 0; lane < 8; ++lane)
      if ((mask >> lane) & 1u) e |= lane << (4 * at++);
    t.nibbles[mask] = e;
  }
  return t;
}
inline constexpr pack_table pack_lanes = make_pack_table();

/// Stores the lanes of (k, p) selected by `mask` packed at (key + at, pos + at) (8 lanes written;
/// the destination has room) and returns the new end.
AQUA_TARGET_AVX2 inline index_t store_packed(__m256i k, __m256i p, int mask, std::int32_t* key,
                                             std::int32_t* pos, index_t at) {
  const __m256i perm =
      _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(pack_lanes.nibbles[mask])),
                                         _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                       _mm256_set1_epi32(7));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(key + at), _mm256_permutevar8x32_epi32(k, perm));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(pos + at), _mm256_permutevar8x32_epi32(p, perm));
  return at + __builtin_popcount(static_cast<unsigned>(mask));
}

/// partition3 for float keys, 8 items per step. Every destination needs 8 entries of slack past
/// its final size (in-place `below` writes stay behind the reads).
AQUA_TARGET_AVX2 inline void partition3_avx2(rank_list<std::int32_t> from, std::int32_t lo, std::int32_t hi,
                                             rank_list<std::int32_t>& above, rank_list<std::int32_t>& between,
                                             rank_list<std::int32_t>& below, bool keep_below) {
  const __m256i lo_v = _mm256_set1_epi32(lo), hi_v = _mm256_set1_epi32(hi);
  index_t a = 0, b = 0, c = 0;
  for (index_t j = 0; j < from.size; j += key_block) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from.key + j));
    const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(from.pos + j));
    const int is_above = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(k, hi_v)));
    const int above_lo = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(k, lo_v)));
    const int valid = from.size - j >= key_block ? 0xff : (1 << (from.size - j)) - 1;
    a = store_packed(k, p, is_above, above.key, above.pos, a);
    b = store_packed(k, p, above_lo & ~is_above, between.key, between.pos, b);
    if (keep_below) c = store_packed(k, p, ~above_lo & valid, below.key, below.pos, c);
  }
  above.size = a;
  between.size = b;
  below.size = c;
}

/// Keys of float weights (order_key, 8 at a time) with positions 0..n-1; returns the smallest and
/// largest key.
AQUA_TARGET_AVX2 inline std::pair<std::int32_t, std::int32_t> float_keys_avx2(const float* w, index_t n,
                                                                              std::int32_t* key,
                                                                              std::int32_t* pos) {
  const __m256i magnitude = _mm256_set1_epi32(0x7fffffff), step = _mm256_set1_epi32(key_block);
  __m256i p = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i lo = _mm256_set1_epi32(std::numeric_limits<std::int32_t>::max()),
          hi = _mm256_set1_epi32(key_floor<std::int32_t>());
  index_t i = 0;
  for (; i + key_block <= n; i += key_block) {
    const __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(w + i));
    const __m256i sign = _mm256_srai_epi32(bits, 31);
    const __m256i k = _mm256_sub_epi32(_mm256_xor_si256(_mm256_and_si256(bits, magnitude), sign), sign);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(key + i), k);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pos + i), p);
    p = _mm256_add_epi32(p, step);
    lo = _mm256_min_epi32(lo, k);
    hi = _mm256_max_epi32(hi, k);
  }
  alignas(32) std::int32_t lo_lanes[key_block], hi_lanes[key_block];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lo_lanes), lo);
  _mm256_store_si256(reinterpret_cast<__m256i*>(hi_lanes), hi);
  std::int32_t kmin = lo_lanes[0], kmax = hi_lanes[0];
  for (index_t l = 1; l < key_block; ++l) {
    kmin = std::min(kmin, lo_lanes[l]);
    kmax = std::max(kmax, hi_lanes[l]);
  }
  for (; i < n; ++i) {
    key[i] = order_key(w[i]);
    pos[i] = static_cast<std::int32_t>(i);
    kmin = std::min(kmin, key[i]);
    kmax = std::max(kmax, key[i]);
  }
  return {kmin, kmax};
}
#endif

inline void partition3(rank_list<std::int32_t> from, std::int32_t lo, std::int32_t hi,
                       rank_list<std::int32_t>& above, rank_list<std::int32_t>& between,
                       rank_list<std::int32_t>& below, bool keep_below) {
#if AQUA_HAS_X86_SIMD
  if (has_avx2_fma()) return partition3_avx2(from, lo, hi, above, between, below, keep_below);
#endif
  partition3<std::int32_t>(from, lo, hi, above, between, below, keep_below);
}

#if AQUA_HAS_X86_SIMD
/// |x| and x * x (squared in double) of n contiguous floats, 8 at a time; returns whether all are
/// finite.
AQUA_TARGET_AVX2 inline bool magnitudes_avx2(const float* x, index_t n, float* mag, double* sq) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 largest = _mm256_set1_ps(std::numeric_limits<float>::max());
  __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  index_t i = 0;
  for (; i + key_block <= n; i += key_block) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 a = _mm256_and_ps(v, abs_mask);
    _mm256_storeu_ps(mag + i, a);
    const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                  hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
    _mm256_storeu_pd(sq + i, _mm256_mul_pd(lo, lo));
    _mm256_storeu_pd(sq + i + 4, _mm256_mul_pd(hi, hi));
    finite = _mm256_and_ps(finite, _mm256_cmp_ps(a, largest, _CMP_LE_OQ));  // false for inf, NaN
  }
  bool ok = _mm256_movemask_ps(finite) == 0xff;
  for (; i < n; ++i) {
    mag[i] = std::abs(x[i]);
    sq[i] = double(x[i]) * double(x[i]);
    ok &= mag[i] <= std::numeric_limits<float>::max();
  }
  return ok;
}
#endif

/// |x| and x * x of n values x[i * step], the squares in double (a float square can underflow,
/// overflow or round where the double one does not, and every selection path must agree); returns
/// whether all are finite (|x| <= max fails for inf and NaN).
template <class T>
bool magnitudes(const T* x, index_t step, index_t n, T* mag, double* sq) {
#if AQUA_HAS_X86_SIMD
  if constexpr (std::is_same<T, float>::value) {
    if (step == 1 && has_avx2_fma()) return magnitudes_avx2(x, n, mag, sq);
  }
#endif
  bool finite = true;
  for (index_t i = 0; i < n; ++i) {
    const T xi = x[i * step];
    mag[i] = std::abs(xi);
    sq[i] = double(xi) * double(xi);
    finite &= mag[i] <= std::numeric_limits<T>::max();
  }
  return finite;
}

/// Keys and positions of the n weights; returns the smallest and largest key.
template <class W, class K>
std::pair<K, K> weight_keys(const W* w, index_t n, K* key, std::int32_t* pos) {
#if AQUA_HAS_X86_SIMD
  if constexpr (std::is_same<W, float>::value) {
    if (has_avx2_fma()) return float_keys_avx2(w, n, key, pos);
  }
#endif
  K kmin = order_key(w[0]), kmax = kmin;
  for (index_t i = 0; i < n; ++i) {
    key[i] = order_key(w[i]);
    pos[i] = static_cast<std::int32_t>(i);
    kmin = std::min(kmin, key[i]);
    kmax = std::max(kmax, key[i]);
  }
  return {kmin, kmax};
}

inline void pad_keys(rank_list<std::int32_t> l) {
  for (index_t j = l.size; j < round_up_to_block(l.size); ++j) l.key[j] = key_floor<std::int32_t>();
}
inline void pad_keys(rank_list<std::int64_t> l) {
  for (index_t j = l.size; j < round_up_to_block(l.size); ++j) l.key[j] = key_floor<std::int64_t>();
}

/// Writes the ranking of the m items of `run` (equal keys listed in increasing pos; padded) to
/// out[0..m).
template <class K, class I>
void rank_sort(rank_list<K> run, I* out) {
  std::int32_t place[rank_chunk_max];
  rank_places(run.key, run.size, place);
  for (index_t a = 0; a < run.size; ++a) out[place[a]] = static_cast<I>(run.pos[a]);
}

/// Moves the m items ranked first in `rest` (largest key, equal keys by lower pos) to `run` and
/// compacts the others in place, both padded. Every key of `rest` lies in (lo, hi]; 1 <= m <
/// rest.size. Returns the smallest key moved (every key left in `rest` is at most that).
///
/// Bisection on the key value narrows (lo, hi] until it holds the m-th key and at most a few
/// others, counting keys above a candidate without branches; one partition pass then takes the
/// keys above hi, and the few in (lo, hi] are ranked directly. Equal keys go by lower pos.
template <class K>
K take_top(rank_list<K>& rest, index_t m, K lo, K hi, rank_list<K>& run, rank_list<K>& between,
           bool keep_rest) {
  using U = std::make_unsigned_t<K>;
  constexpr index_t between_max = 8;
  index_t c_lo = rest.size, c_hi = 0;  // #{key > lo}, #{key > hi}: c_lo >= m > c_hi
  while (c_lo - c_hi > between_max && U(hi) - U(lo) > 1) {
    const K mid = K(U(lo) + (U(hi) - U(lo)) / 2);
    const index_t c = count_greater(rest.key, rest.size, mid);
    if (c >= m) {
      lo = mid;
      c_lo = c;
    } else {
      hi = mid;
      c_hi = c;
    }
  }
  partition3(rest, lo, hi, run, between, rest, keep_rest);
  const index_t need = m - run.size;  // from (lo, hi], where the m-th key lies
  // Places within (lo, hi]: all keys equal (the lowest positions first), or at most between_max.
  const bool all_equal = U(hi) - U(lo) == 1;
  std::int32_t place[between_max];
  if (!all_equal) {
    pad_keys(between);
    rank_places(between.key, between.size, place);
  }
  K t = hi;
  for (index_t b = 0; b < between.size; ++b) {
    const bool in = (all_equal ? b : index_t(place[b])) < need;
    if (!in && !keep_rest) continue;
    rank_list<K>& to = in ? run : rest;
    to.key[to.size] = between.key[b];
    to.pos[to.size] = between.pos[b];
    ++to.size;
    if (in) t = std::min(t, between.key[b]);
  }
  pad_keys(run);
  if (keep_rest) pad_keys(rest);
  return t;
}

/// select_ranked for float / double weights, n <= ranked_fast_max: the ranking is produced in runs
/// of at most rank_chunk_max places (take the top off the unranked items, then rank-count the
/// run), so fixed counts cost O(n log range + k^2) and energy specs stop after the run that
/// reaches the threshold.
template <class W, class E, class I>
index_t select_ranked_fast(const W* weight, const E* energy, index_t n, const selection_spec& spec, I* idx) {
  using K = decltype(order_key(W{}));
  // Slack past every list end: the vector partition writes whole blocks.
  constexpr index_t slack = 2 * key_block;
  K key[ranked_fast_max + slack], run_key[rank_chunk_max + slack], between_key[ranked_fast_max + slack];
  std::int32_t pos[ranked_fast_max + slack], run_pos[rank_chunk_max + slack],
      between_pos[ranked_fast_max + slack];
  rank_list<K> rest{key, pos, n}, run{run_key, run_pos, 0}, between{between_key, between_pos, 0};
  const auto range = weight_keys(weight, n, key, pos);
  pad_keys(rest);
  const K lo = range.first - 1;  // below every key
  K hi = range.second;           // at least every key not yet ranked
  index_t done = 0, last = n;    // places [done, last) may still be asked for
  // Ranks places [done, done + m) from the unranked items.
  auto next_run = [&](index_t m) {
    if (m == rest.size) {
      rank_sort(rest, idx + done);
    } else {
      hi = take_top(rest, m, lo, hi, run, between, done + m < last);
      rank_sort(run, idx + done);
    }
    done += m;
  };
  if (spec.type != selection_spec::kind::energy) {
    const index_t count = selection_count(spec, n);
    last = count;
    while (done < count) next_run(std::min(rank_chunk_max, count - done));
    return count;
  }
  double total = 0;
  for (index_t i = 0; i < n; ++i) total += static_cast<double>(energy[i]);
  // The count is known only once the prefix sum reaches the target: rank run by run and scan
  // each, summing in rank order as a full ranking would.
  double acc = 0;
  while (done < n) {
    const index_t from = done;
    next_run(std::min(rank_chunk_max / 2, n - done));
    if (const index_t count = energy_cut(spec.value, total, from, done, acc,
                                         [&](index_t c) { return static_cast<double>(energy[idx[c]]); }))
      return count;
  }
  return n;
}

/// Ranks candidates 0..n-1 by `weight` (descending, ties by lower index) into `idx` and returns how
/// many the spec keeps; the first that-many entries of idx are the selection, in rank order (the
/// rest of idx is unspecified). For energy specs `energy[i]` (>= 0) is what the threshold sums;
/// the order still follows `weight`. No checks: callers validate; weights must not be NaN.
template <class W, class E, class I>
index_t select_ranked(const W* weight, const E* energy, index_t n, const selection_spec& spec, I* idx) {
  if constexpr (std::is_same<W, float>::value || std::is_same<W, double>::value) {
    if (n >= 1 && n <= ranked_fast_max) return select_ranked_fast(weight, energy, n, spec, idx);
  }
  for (index_t i = 0; i < n; ++i) idx[i] = static_cast<I>(i);
  auto before = [weight](I a, I b) { return weight[a] > weight[b] || (weight[a] == weight[b] && a < b); };
  if (spec.type != selection_spec::kind::energy) {
    const index_t count = selection_count(spec, n);
    if (count < n)
      std::partial_sort(idx, idx + count, idx + n, before);
    else
      std::sort(idx, idx + n, before);
    return count;
  }
  std::sort(idx, idx + n, before);
  double total = 0, acc = 0;
  for (index_t i = 0; i < n; ++i) total += static_cast<double>(energy[i]);
  const index_t count = energy_cut(spec.value, total, 0, n, acc,
                                   [&](index_t c) { return static_cast<double>(energy[idx[c]]); });
  return count ? count : n;
}

/// The selection of select_ranked in increasing index order, the form the kernels' dimension lists
/// take: out[0..count) (room for n), rank_scratch holds n entries. Returns count. Marks the chosen
/// indices and reads them back in order: O(n), no sort.
template <class W, class E>
index_t select_ranked_ascending(const W* weight, const E* energy, index_t n, const selection_spec& spec,
                                std::int32_t* rank_scratch, std::int32_t* out) {
  const index_t count = select_ranked(weight, energy, n, spec, rank_scratch);
  if (n > ranked_fast_max) {
    std::copy(rank_scratch, rank_scratch + count, out);
    std::sort(out, out + count);
    return count;
  }
  unsigned char chosen[ranked_fast_max] = {};
  for (index_t c = 0; c < count; ++c) chosen[rank_scratch[c]] = 1;
  index_t at = 0;
  for (index_t i = 0; i < n; ++i) {
    out[at] = static_cast<std::int32_t>(i);
    at += chosen[i];
  }
  return count;
}

}  // namespace detail
}  // namespace aqua
