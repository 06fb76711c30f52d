// The SIMD attention kernels over the tiled key cache, written once against the vector
// vocabulary `ops` (vec_ops.hpp) and compiled once per ISA: aqua_kernels.hpp includes this file
// inside namespace aqua::detail::avx2 and aqua::detail::avx512, each time with `ops` and
// AQUA_KERNEL (the ISA's target attribute) defined. Deliberately no include guard.
//
// Keys K and values V are float, bf16 or f16 elements; rows are byte pointers and strides are in
// bytes, so one kernel serves every storage type, widening to float on load.
//
// Score kernel: for key blocks b (16 tokens each), scores[h][b*16 + lane] =
//   sum_s q[h][s] * key(rows[s] + b * block_bytes)[lane]
// where rows[s] points at the row of selected dim s in block 0 of its tile. HB query heads share
// one list of rows (group / tile selection: one read of a key row serves HB heads); NB blocks go
// at once so enough independent FMA chains hide latency.
//
// Value kernel: acc[h][c] = alpha[h] * acc[h][c] + sum_j p[h][j] * v[j][c], for HB heads that
// share the value rows (register blocked over a slice of W * NV columns).

using vec = typename ops::vec;

template <class T>
AQUA_KERNEL AQUA_ALWAYS_INLINE const T* typed(const unsigned char* p) {
  return reinterpret_cast<const T*>(p);
}

/// One line into L1, or into L2 (decode_stream_prefetch decides which).
AQUA_KERNEL AQUA_ALWAYS_INLINE void prefetch_line(const void* line, bool into_l2) {
  if (into_l2)
    _mm_prefetch(static_cast<const char*>(line), _MM_HINT_T1);
  else
    _mm_prefetch(static_cast<const char*>(line), _MM_HINT_T0);
}

/// Prefetch policy of the chunked value pass: the row `ahead` bytes later, one line per line
/// consumed, so the stream stays ahead without bursts that would fill the miss buffers.
struct row_ahead_prefetch {
  index_t ahead = 0;
  bool into_l2 = false;
  template <int Bytes>
  AQUA_KERNEL AQUA_ALWAYS_INLINE void token(const unsigned char* row, index_t) const {
#pragma GCC unroll 8
    for (int b = 0; b < Bytes; b += 64) prefetch_line(row + ahead + b, into_l2);
  }
};

/// Software prefetch for the fused decode. The lines a 16-token block consumes form one stream:
/// its selected key rows (one row of 16 keys per selected dim: a line for f32, half a line for
/// 16-bit keys), then its value rows. The prefetcher walks that stream a fixed number of lines
/// ahead of the kernel (decode_stream_prefetch: into L1 or L2) and issues one line for every line
/// consumed, in both the score and the value loop, so DRAM sees a steady request rate whatever the
/// split between key and value bytes.
/// Addresses are formed as integers: lines past the end of the cache are requested but never read
/// (a prefetch does not fault).
struct block_prefetcher {
  const unsigned char* const* rows = nullptr;  // the key rows of block 0
  index_t key_lines = 0;
  std::uintptr_t key_block_bytes = 0;
  index_t lines = 0;         // per block: key_lines + the value lines
  index_t pos = 0;           // line within the current block's stream
  std::uintptr_t koff = 0;   // bytes from block 0's key rows to the current block's
  std::uintptr_t vnext = 0;  // next value line (the value rows of all blocks are contiguous)
  bool into_l2 = false;

  /// The stream of a fused decode (fused_args a) over blocks from first_block on.
  AQUA_KERNEL AQUA_ALWAYS_INLINE void start_decode(const fused_args& a, index_t first_block,
                                                   index_t value_block_bytes) {
    rows = a.prefetch_rows ? a.prefetch_rows : a.rows;
    key_lines = a.prefetch_rows ? a.prefetch_count : a.ns;
    key_block_bytes = static_cast<std::uintptr_t>(a.block_bytes);
    lines = key_lines + std::max<index_t>(1, value_block_bytes / 64);
    const stream_prefetch sp = decode_stream_prefetch();
    into_l2 = sp.into_l2;
    const index_t lead = sp.lead_lines;
    const index_t block = first_block + lead / lines;
    pos = lead % lines;
    koff = static_cast<std::uintptr_t>(block) * key_block_bytes;
    vnext = reinterpret_cast<std::uintptr_t>(a.values) +
            static_cast<std::uintptr_t>(block * value_block_bytes) +
            static_cast<std::uintptr_t>(pos > key_lines ? pos - key_lines : 0) * 64;
  }
  /// The value pass consumed `Bytes` of token j's row (one step per 64 bytes; a slice narrower
  /// than a line steps on every (64 / Bytes)-th token).
  template <int Bytes>
  AQUA_KERNEL AQUA_ALWAYS_INLINE void token(const unsigned char*, index_t j) {
    if constexpr (Bytes >= 64) {
#pragma GCC unroll 8
      for (int u = 0; u < Bytes / 64; ++u) step();
    } else {
      if ((j & (64 / Bytes - 1)) == 0) step();
    }
  }
  AQUA_KERNEL AQUA_ALWAYS_INLINE void step() {
    std::uintptr_t line;
    if (pos < key_lines) {
      line = reinterpret_cast<std::uintptr_t>(rows[pos]) + koff;
    } else {
      line = vnext;
      vnext += 64;
    }
    prefetch_line(reinterpret_cast<const void*>(line), into_l2);
    if (++pos == lines) {
      pos = 0;
      koff += key_block_bytes;
    }
  }
};

/// acc[h][c..c + W NV) += sum_j p[h][j] v[j][c..c + W NV) for HB heads: W NV columns of the HB
/// heads in registers while the cnt rows stream by; `pf.token<bytes>(row, j)` issues the prefetch
/// for each row consumed.
template <int HB, int NV, class V, class Prefetch>
AQUA_KERNEL AQUA_ALWAYS_INLINE void value_slice(const V* v, index_t d, index_t cnt, const float* p,
                                                index_t p_stride, float* acc, index_t acc_stride,
                                                Prefetch& pf) {
  constexpr int W = ops::W;
  vec a[HB][NV];
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) a[h][u] = ops::load(acc + h * acc_stride + W * u);
  for (index_t j = 0; j < cnt; ++j) {
    const V* row = v + j * d;
    pf.template token<int(NV * W * sizeof(V))>(reinterpret_cast<const unsigned char*>(row), j);
    vec vr[NV];
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) vr[u] = ops::load(row + W * u);
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h) {
      const vec pb = ops::broadcast(p + h * p_stride + j);
#pragma GCC unroll 16
      for (int u = 0; u < NV; ++u) a[h][u] = ops::fmadd(pb, vr[u], a[h][u]);
    }
  }
#pragma GCC unroll 16
  for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
    for (int u = 0; u < NV; ++u) ops::store(acc + h * acc_stride + W * u, a[h][u]);
}

/// Chunked value pass over rows `ld` elements apart (d in the cache). Tokens go in groups of 16 rows: all
/// column slices of a group are done before the next group, so the value rows stream sequentially through
/// memory instead of being swept once per slice; the accumulators round-trip through L1 per group. d % W ==
/// 0.
/// Requests rows [j, j + count) of `side` (those that exist) into L2.
AQUA_KERNEL AQUA_ALWAYS_INLINE void prefetch_rows_l2(const rows_l2_prefetch& side, index_t j, index_t count) {
  const index_t end = std::min(j + count, side.rows);
  for (; j < end; ++j) {
    const char* row = reinterpret_cast<const char*>(side.base + j * side.stride);
    for (index_t b = 0; b < side.bytes; b += 64) _mm_prefetch(row + b, _MM_HINT_T1);
  }
}

template <int HB, int NV, class V>
AQUA_KERNEL void value_chunk(const V* v, index_t d, index_t cnt, const float* p, index_t p_stride, float* acc,
                             index_t acc_stride, const float* alpha, index_t ld,
                             const rows_l2_prefetch& side) {
  constexpr int W = ops::W;
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) {
    const vec al = ops::set1(alpha[h]);
    float* a = acc + h * acc_stride;
    for (index_t c = 0; c < d; c += W) ops::store(a + c, ops::mul(al, ops::load(a + c)));
  }
  constexpr index_t group = 16;
  const stream_prefetch sp = decode_stream_prefetch();
  // Into L2 the stream runs its full lead ahead; into L1 a few rows, which the L1 holds.
  const index_t row_bytes = ld * index_t(sizeof(V));
  row_ahead_prefetch pf{sp.into_l2 ? prefetch_rows_ahead(row_bytes, sp.lead_lines) * row_bytes
                                   : decode_value_prefetch_tokens * row_bytes,
                        sp.into_l2};
  for (index_t j0 = 0; j0 < cnt; j0 += group) {
    const index_t jn = std::min(group, cnt - j0);
    const V* vg = v + j0 * ld;
    const float* pg = p + j0;
    index_t c = 0;
    for (; c + W * NV <= d; c += W * NV)
      value_slice<HB, NV>(vg + c, ld, jn, pg, p_stride, acc + c, acc_stride, pf);
    for (; c < d; c += W) value_slice<HB, 1>(vg + c, ld, jn, pg, p_stride, acc + c, acc_stride, pf);
    if (side.base) prefetch_rows_l2(side, j0, jn);
  }
}

/// Scores of HB heads sharing one row list, NB blocks at once; the remaining blocks go with half
/// as many at once (down to 1), so a short tail keeps several independent FMA chains.
template <int HB, int NB, bool Prefetch, class K>
AQUA_KERNEL void score_blocks(const unsigned char* const* rows, index_t ns, const float* q, index_t q_stride,
                              index_t block_bytes, index_t b0, index_t nb, float* scores,
                              index_t score_stride, side_prefetch side) {
  constexpr int W = ops::W, BV = ops::BV;
  const index_t ahead = decode_key_prefetch_blocks * block_bytes;
  const index_t per_s = side.base ? (side.step / 64 + ns - 1) / ns : 0;
  index_t b = 0;
  for (; b + NB <= nb; b += NB) {
    vec acc[HB][NB][BV];
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
      for (int u = 0; u < NB; ++u)
#pragma GCC unroll 2
        for (int i = 0; i < BV; ++i) acc[h][u][i] = ops::zero();
    const index_t off = (b0 + b) * block_bytes;
    const char* sp = Prefetch && side.base ? side.base + b * side.step : nullptr;
    const char* send = Prefetch && side.base ? sp + NB * side.step : nullptr;
    for (index_t s = 0; s < ns; ++s) {
      const unsigned char* r = rows[s] + off;
      if (Prefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(r + ahead), _MM_HINT_T0);
        for (index_t u = 0; u < NB * per_s && sp < send; ++u, sp += 64) _mm_prefetch(sp, _MM_HINT_T0);
      }
      vec kr[NB][BV];
#pragma GCC unroll 16
      for (int u = 0; u < NB; ++u)
#pragma GCC unroll 2
        for (int i = 0; i < BV; ++i) kr[u][i] = ops::load(typed<K>(r + u * block_bytes) + i * W);
#pragma GCC unroll 16
      for (int h = 0; h < HB; ++h) {
        const vec qb = ops::broadcast(q + h * q_stride + s);
#pragma GCC unroll 16
        for (int u = 0; u < NB; ++u)
#pragma GCC unroll 2
          for (int i = 0; i < BV; ++i) acc[h][u][i] = ops::fmadd(qb, kr[u][i], acc[h][u][i]);
      }
    }
#pragma GCC unroll 16
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 16
      for (int u = 0; u < NB; ++u)
#pragma GCC unroll 2
        for (int i = 0; i < BV; ++i)
          ops::store(scores + h * score_stride + (b + u) * kv_block + i * W, acc[h][u][i]);
  }
  if constexpr (NB > 1) {
    if (b < nb)
      score_blocks<HB, NB / 2, Prefetch, K>(
          rows, ns, q, q_stride, block_bytes, b0 + b, nb - b, scores + b * kv_block, score_stride,
          side.base ? side_prefetch{side.base + b * side.step, side.step} : side_prefetch{});
  }
}

/// Per-head selection: HB heads with their own row lists of equal length ns (list h starts at
/// rows + h * list_stride), scored together so HB independent FMA chains hide latency.
template <int HB, class K>
AQUA_KERNEL void score_lists(const unsigned char* const* rows, index_t list_stride, index_t ns,
                             const float* q, index_t q_stride, index_t block_bytes, index_t b0, index_t nb,
                             float* scores, index_t score_stride, side_prefetch side) {
  constexpr int W = ops::W, BV = ops::BV;
  const index_t ahead = decode_key_prefetch_blocks * block_bytes;
  const index_t per_s = side.base ? (side.step / 64 + ns - 1) / ns : 0;
  for (index_t b = 0; b < nb; ++b) {
    vec acc[HB][BV];
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 2
      for (int i = 0; i < BV; ++i) acc[h][i] = ops::zero();
    const index_t off = (b0 + b) * block_bytes;
    const char* sp = side.base ? side.base + b * side.step : nullptr;
    const char* send = side.base ? sp + side.step : nullptr;
    for (index_t s = 0; s < ns; ++s) {
      for (index_t u = 0; u < per_s && sp < send; ++u, sp += 64) _mm_prefetch(sp, _MM_HINT_T0);
#pragma GCC unroll 8
      for (int h = 0; h < HB; ++h) {
        const unsigned char* r = rows[h * list_stride + s] + off;
        _mm_prefetch(reinterpret_cast<const char*>(r + ahead), _MM_HINT_T0);
        const vec qb = ops::broadcast(q + h * q_stride + s);
#pragma GCC unroll 2
        for (int i = 0; i < BV; ++i) acc[h][i] = ops::fmadd(qb, ops::load(typed<K>(r) + i * W), acc[h][i]);
      }
    }
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 2
      for (int i = 0; i < BV; ++i) ops::store(scores + h * score_stride + b * kv_block + i * W, acc[h][i]);
  }
}

/// A head's running max rises to bm: its normaliser (with the block sums not yet folded in) and
/// its unnormalised output are rescaled by e^(m - bm).
AQUA_KERNEL AQUA_ALWAYS_INLINE void raise_max(float& m, double& l, __m256d& lsum, float bm, float* acc,
                                              index_t d) {
  const float alpha = m == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(m - bm);
  l = (l + hsum256_pd(lsum)) * alpha;
  lsum = _mm256_setzero_pd();
  const vec al = ops::set1(alpha);
  for (index_t c = 0; c < d; c += ops::W) ops::store(acc + c, ops::mul(al, ops::load(acc + c)));
  m = bm;
}

/// lsum += the 8 floats of ps (a block's probabilities folded from 16 lanes), widened to double.
AQUA_KERNEL AQUA_ALWAYS_INLINE void add_block_sum(__m256d& lsum, __m256 ps) {
  lsum = _mm256_add_pd(lsum, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(ps)),
                                           _mm256_cvtps_pd(_mm256_extractf128_ps(ps, 1))));
}

/// Fused decode over whole 16-token blocks [b_begin, b_end) of one KV head, for HB query heads:
/// per block the HB x 16 scores stay in registers, the online softmax updates in place, and the
/// value rows of the same 16 tokens are accumulated at once, so keys and values are consumed as
/// one stream that block_prefetcher keeps decode_prefetch_lead_lines ahead of the kernel.
/// Lists: head h reads its own rows, interleaved like q (row s of head h at rows[s * HB + h]),
/// else all HB heads share one list.
/// State per head: running max m, normaliser l (double) and unnormalised output acc (d floats).
/// Softmax per block: a head is rescaled only when a score exceeds its running max (a compare and
/// a mask test in the common case), and the block's probabilities are summed into per-head double
/// vectors that reach l at the next rescale or at the end. d % W == 0.
template <int HB, bool Lists, class K, class V>
AQUA_KERNEL void fused_decode(const fused_args& a, index_t b_begin, index_t b_end, float* m, double* l,
                              float* acc, index_t acc_stride) {
  constexpr int W = ops::W, BV = ops::BV, NV = ops::value_vectors(HB);
  const index_t d = a.d, ns = a.ns, bs = a.block_bytes;
  const V* values = typed<V>(a.values);
  block_prefetcher pf;
  pf.start_decode(a, b_begin, kv_block * d * index_t(sizeof(V)));
  index_t spread = 0;  // per-head lists: the distinct rows' steps spread over the ns iterations
  alignas(64) float pbuf[HB][kv_block];
  __m256d lsum[HB];
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) lsum[h] = _mm256_setzero_pd();
  for (index_t b = b_begin; b < b_end; ++b) {
    const index_t off = b * bs, t0 = b * kv_block;
    vec sc[HB][BV];
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h)
#pragma GCC unroll 2
      for (int i = 0; i < BV; ++i) sc[h][i] = ops::zero();
    for (index_t s = 0; s < ns; ++s) {
      const float* qs = a.q + s * HB;
      if (Lists) {
        const unsigned char* const* rs = a.rows + s * HB;
        for (spread += pf.key_lines; spread >= ns; spread -= ns) pf.step();
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h) {
          const K* r = typed<K>(rs[h] + off);
          const vec qb = ops::broadcast(qs + h);
#pragma GCC unroll 2
          for (int i = 0; i < BV; ++i) sc[h][i] = ops::fmadd(qb, ops::load(r + i * W), sc[h][i]);
        }
      } else {
        pf.step();
        const K* r = typed<K>(a.rows[s] + off);
        vec kr[BV];
#pragma GCC unroll 2
        for (int i = 0; i < BV; ++i) kr[i] = ops::load(r + i * W);
#pragma GCC unroll 4
        for (int h = 0; h < HB; ++h) {
          const vec qb = ops::broadcast(qs + h);
#pragma GCC unroll 2
          for (int i = 0; i < BV; ++i) sc[h][i] = ops::fmadd(qb, kr[i], sc[h][i]);
        }
      }
    }
    const index_t jn = std::min<index_t>(kv_block, a.valid_end - t0);
    if (a.logits) {
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) {
        alignas(64) float tmp[kv_block];
#pragma GCC unroll 2
        for (int i = 0; i < BV; ++i) ops::store(tmp + i * W, sc[h][i]);
        std::memcpy(a.logits + h * a.logits_stride + t0, tmp, static_cast<std::size_t>(jn) * sizeof(float));
      }
    }
    if (jn < kv_block) {
      // Lanes past the last token: -inf scores, zero probabilities.
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h)
#pragma GCC unroll 2
        for (int i = 0; i < BV; ++i) sc[h][i] = ops::mask_tail(sc[h][i], i * W, static_cast<int>(jn));
    }
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) {
      vec mv = ops::set1(m[h]);
      vec bmax = sc[h][0];
#pragma GCC unroll 2
      for (int i = 1; i < BV; ++i) bmax = ops::max(bmax, sc[h][i]);
      if (AQUA_UNLIKELY(ops::any_greater(bmax, mv))) {
        // The running max rises (often in the first blocks, rarely later): rescale this head.
        raise_max(m[h], l[h], lsum[h], ops::hmax(bmax), acc + h * acc_stride, d);
        mv = ops::set1(m[h]);
      }
      vec p[BV];
#pragma GCC unroll 2
      for (int i = 0; i < BV; ++i) {
        p[i] = ops::exp(ops::sub(sc[h][i], mv));
        ops::store(pbuf[h] + i * W, p[i]);
      }
      add_block_sum(lsum[h], ops::fold8(p));
    }
    const V* vb = values + t0 * d;
    index_t c = 0;
    for (; c + W * NV <= d; c += W * NV)
      value_slice<HB, NV>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, pf);
    for (; c < d; c += W) value_slice<HB, 1>(vb + c, d, jn, &pbuf[0][0], kv_block, acc + c, acc_stride, pf);
  }
#pragma GCC unroll 4
  for (int h = 0; h < HB; ++h) l[h] += hsum256_pd(lsum[h]);
}

/// Scores of HN query heads (scaled rows q + h * d) against 4 token-major key rows: the 4 x HN dot
/// products accumulate in W lanes as independent FMA chains, then reduce 4 at a time (hsum4).
template <int HN, class K>
AQUA_KERNEL AQUA_ALWAYS_INLINE void score_four_rows(const K* r, index_t ld, const float* q, index_t d,
                                                    float* scores, index_t score_stride) {
  constexpr int W = ops::W;
  vec a[HN][4];
#pragma GCC unroll 4
  for (int h = 0; h < HN; ++h)
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) a[h][t] = ops::zero();
  for (index_t c = 0; c < d; c += W) {
    vec k[4];
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) k[t] = ops::load(r + t * ld + c);
#pragma GCC unroll 4
    for (int h = 0; h < HN; ++h) {
      const vec qh = ops::load(q + h * d + c);
#pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) a[h][t] = ops::fmadd(qh, k[t], a[h][t]);
    }
  }
#pragma GCC unroll 4
  for (int h = 0; h < HN; ++h)
    _mm_storeu_ps(scores + h * score_stride, ops::hsum4(a[h][0], a[h][1], a[h][2], a[h][3]));
}

/// Scores of HB query heads against `count` token-major key rows (`ld` elements apart, unit inner
/// stride: an engine's own K buffer), scores[h * score_stride + j] = q_h . k_j. Rows go 4 at a
/// time; the heads share the key loads (the 512-bit registers hold all HB x 4 accumulators, AVX2
/// takes the heads in pairs and reloads the 4 rows from L1). Each dot product is summed in W
/// lanes, then across them (the lane order differs between ISAs: not bitwise equal across them).
/// d % W == 0.
template <int HB, class K>
AQUA_KERNEL void score_token_rows(const K* keys, index_t ld, index_t count, const float* q, index_t d,
                                  float* scores, index_t score_stride, const rows_l2_prefetch& side) {
  constexpr int W = ops::W;
  constexpr int HG = W == 16 ? HB : (HB < 2 ? HB : 2);  // heads per pass over the 4 rows
  const index_t row_bytes = d * index_t(sizeof(K));
  const stream_prefetch sp = decode_stream_prefetch();
  const index_t ahead = prefetch_rows_ahead(ld * index_t(sizeof(K)), sp.lead_lines) * ld;
  index_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const K* r = keys + j * ld;
    // One line per line consumed, `ahead` rows on (a prefetch past the buffer never faults).
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t)
      for (index_t b = 0; b < row_bytes; b += 64)
        prefetch_line(reinterpret_cast<const char*>(r + (t * ld + ahead)) + b, sp.into_l2);
    if (side.base) prefetch_rows_l2(side, j, 4);
    int h = 0;
    for (; h + HG <= HB; h += HG)
      score_four_rows<HG>(r, ld, q + h * d, d, scores + h * score_stride + j, score_stride);
    if constexpr (HB % HG != 0)
      score_four_rows<HB % HG>(r, ld, q + h * d, d, scores + h * score_stride + j, score_stride);
  }
  for (; j < count; ++j) {
    const K* r0 = keys + j * ld;
    vec a0[HB];
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) a0[h] = ops::zero();
    for (index_t c = 0; c < d; c += W) {
      const vec k0 = ops::load(r0 + c);
#pragma GCC unroll 4
      for (int h = 0; h < HB; ++h) a0[h] = ops::fmadd(ops::load(q + h * d + c), k0, a0[h]);
    }
#pragma GCC unroll 4
    for (int h = 0; h < HB; ++h) scores[h * score_stride + j] = ops::hsum(a0[h]);
  }
}
