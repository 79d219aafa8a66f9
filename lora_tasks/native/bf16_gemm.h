// bf16 GEMM for a frozen base: C (M x N, fp32) = A (M x K, fp32, rounded to bf16) * B (K x N, bf16) [+ bias],
// products and sums in fp32. B is a stored weight W, read either as W^T (W is N x K: the forward of a
// linear layer) or as W (W is K x N: the input gradient of one).
//
// Why: MLX's own bf16 matmul on the CPU is a reference loop (~3 GFLOP/s), and MKL's bf16 GEMM does not
// use the bf16 dot-product instructions on AMD. On a CPU with AVX512-BF16, `vdpbf16ps` does 32
// multiply-adds per instruction, twice the fp32 FMA rate, on operands half the size.
//
// Structure: B is packed into NR-column panels of bf16 pairs along k (the operand layout of vdpbf16ps), once
// per frozen weight (bf16_weight_cache.h keeps it). The threads take blocks of rows of C (the columns when there
// are too few rows). Per block, per KC block of k, a thread converts MR rows of A at a time (fp32 -> bf16, round
// to nearest even) into a small buffer that stays in L1, and runs the MR x NR micro-kernel over it and the panels
// of B, whose KC slices stay in L2 for the whole block; the micro-kernel meanwhile prefetches the next rows of A.
// Edge tiles (M, N not multiples of MR, NR; odd K) compute into a scratch tile whose valid part is copied out.
//
// Two micro-kernels share this driver and the packing (bf16_microkernel.inc): AVX512-BF16 and a portable
// one (bf16 -> fp32 by a 16-bit shift, FMA) that runs anywhere. The choice is made at run time from cpuid
// and the OS's saved register state (xgetbv), never from compiler flags, so no path can raise SIGILL.

#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "cpu_features.h"

#ifdef KL_X86
#include <immintrin.h>
#endif

namespace kl_bf16 {

// fp32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN. Branch-free, so loops over it vectorize.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  uint32_t nan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

inline void to_bf16_row(const float* src, size_t n, uint16_t* dst) {
  for (size_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels.

// k pairs per block. An A micro-panel holds MR rows of one block, row r's pair p at a[r * stride + p], the stride a
// template argument of the micro-kernel: a fixed row stride makes every broadcast address a constant offset from one
// pointer. Two strides: kKC, the block of a long K (its slices of B's panels stay in L2 in groups, gemm_block), and
// kKCWhole, the longest K taken as one block.
constexpr size_t kKC = 192;
constexpr size_t kKCWhole = 768;

// k pairs per block for K's `kp` pairs. Up to kKCWhole pairs, one block: each tile of C is then written once instead
// of once per block (written, then added to), and each row of A is converted once. Longer (BERT-base's FFN down: 1536
// pairs), blocks of kKC: with blocks of kKCWhole, one group held only 2 of B's panels, and A's rows were converted
// once per group.
inline size_t k_block(size_t kp) { return kp <= kKCWhole ? kp : kKC; }

using TileFn = void (*)(size_t kpairs, const uint32_t* a, const uint32_t* b, float* c, size_t ldc, bool accumulate,
                        const char* pf, size_t pf_lines);
using ConvertFn = void (*)(const float* src, size_t n, uint16_t* dst);

struct Kernel {
  const char* name;
  size_t mr, nr;
  TileFn tile;        // A's rows kKC pairs apart
  TileFn tile_whole;  // A's rows kKCWhole pairs apart
  ConvertFn convert;  // fp32 -> bf16 (round to nearest even) of one row segment of A
};

namespace portable {
typedef float f8 __attribute__((vector_size(32)));
typedef uint32_t u8 __attribute__((vector_size(32)));
struct Pair {
  f8 even, odd;
};
// bf16 -> fp32 is exact: the bf16 bits are the high half of the float.
inline Pair widen(u8 w) { return {(f8)(w << 16), (f8)(w & 0xffff0000u)}; }
struct V {
  using Acc = f8;
  using Bv = Pair;
  using Av = Pair;
  static constexpr size_t kLanes = 8;
  static Acc zero() { return f8{}; }
  static Bv load_b(const uint32_t* p) {
    u8 w;
    std::memcpy(&w, p, sizeof(w));
    return widen(w);
  }
  static Av bcast_a(uint32_t w) { return widen(u8{} + w); }
  static Acc dot2(Acc c, const Av& a, const Bv& b) { return c + a.even * b.even + a.odd * b.odd; }
  static void store(float* p, Acc v) { std::memcpy(p, &v, sizeof(v)); }
  static void add_store(float* p, Acc v) {
    Acc o;
    std::memcpy(&o, p, sizeof(o));
    o += v;
    std::memcpy(p, &o, sizeof(o));
  }
};
#include "bf16_microkernel.inc"
}  // namespace portable

#ifdef KL_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")
namespace avx512 {
struct V {
  using Acc = __m512;
  using Bv = __m512bh;
  using Av = __m512bh;
  static constexpr size_t kLanes = 16;
  static Acc zero() { return _mm512_setzero_ps(); }
  static Bv load_b(const uint32_t* p) { return (__m512bh)_mm512_load_si512(p); }  // panels are 64-byte aligned
  static Av bcast_a(uint32_t w) { return (__m512bh)_mm512_set1_epi32(static_cast<int>(w)); }
  static Acc dot2(Acc c, Av a, Bv b) { return _mm512_dpbf16_ps(c, a, b); }
  static void store(float* p, Acc v) { _mm512_storeu_ps(p, v); }
  static void add_store(float* p, Acc v) { _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), v)); }
};
#include "bf16_microkernel.inc"

// vcvtne2ps2bf16 rounds two fp32 vectors to nearest even into one bf16 vector, so converting A costs one
// instruction per 32 values. Like vdpbf16ps, which consumes the result, it treats denormals as zero.
inline void convert(const float* src, size_t n, uint16_t* dst) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512(dst + i, (__m512i)v);
  }
  if (i < n) {
    const size_t rest = n - i;
    const __mmask16 lo = static_cast<__mmask16>(rest >= 16 ? 0xffffu : (1u << rest) - 1u);
    const __mmask16 hi = static_cast<__mmask16>(rest <= 16 ? 0u : (1u << (rest - 16)) - 1u);
    __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + i + 16), _mm512_maskz_loadu_ps(lo, src + i));
    _mm512_mask_storeu_epi16(dst + i, static_cast<__mmask32>((uint64_t(1) << rest) - 1u), (__m512i)v);
  }
}
}  // namespace avx512
#pragma GCC pop_options
#endif

// 4 x 16 on AVX2: 8 accumulators + 4 widened B vectors + 2 widened A broadcasts fit 16 YMM registers.
inline const Kernel kPortable{"portable", 4, 16, &portable::tile<4, 2, kKC>, &portable::tile<4, 2, kKCWhole>,
                               &to_bf16_row};
#ifdef KL_X86
// 8 x 48 on AVX-512: 24 accumulators + 3 B vectors + 1 broadcast of the 32 ZMM registers. Every shape from
// 6 x 64 to 14 x 32 runs at the same rate from L1 and from L2; 8 x 48 lost least to the conversion of A
// (fewer rows of A per tile) at the model's widths (multiples of 48: 384, 768, 1536, 3072).
inline const Kernel kAvx512Bf16{"avx512bf16", 8, 48, &avx512::tile<8, 3, kKC>, &avx512::tile<8, 3, kKCWhole>,
                                 &avx512::convert};
#endif

// The kernel for `request` ("auto", "portable", "avx512bf16"); throws if the CPU cannot run the one asked for.
inline const Kernel& select_kernel(const std::string& request) {
  if (request == "portable") return kPortable;
  if (request == "auto" || request == "avx512bf16") {
#ifdef KL_X86
    if (cpu().avx512_bf16_usable()) return kAvx512Bf16;
#endif
    if (request == "auto") return kPortable;
    throw std::invalid_argument(
        "bf16 kernel 'avx512bf16' requested, but this CPU (or its OS) lacks AVX512F/AVX512_BF16/ZMM state; use 'auto' "
        "or 'portable'");
  }
  throw std::invalid_argument("bf16 kernel must be 'auto', 'portable' or 'avx512bf16', got '" + request + "'");
}

// ---------------------------------------------------------------------------------------------
// Packing and the driver.

inline size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

// 64-byte aligned words: a vector load of a B panel then never straddles two cache lines.
class AlignedWords {
 public:
  explicit AlignedWords(size_t count)
      : p_(static_cast<uint32_t*>(std::aligned_alloc(64, ceil_div(std::max<size_t>(count, 1) * 4, 64) * 64))) {
    if (!p_) throw std::bad_alloc();
  }
  uint32_t* data() const { return p_.get(); }

 private:
  struct Free {
    void operator()(uint32_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint32_t[], Free> p_;
};

// B (K x N) packed for one kernel: panel j holds columns [j*NR, j*NR+NR) over all KP pairs of k, word (p, col)
// at j*KP*NR + p*NR + col = the pair (B[2p][n], B[2p+1][n]) of column n = j*NR + col; zero beyond K and N.
// A frozen weight is packed once and reused across calls (kernels.cpp keeps it).
struct PackedB {
  size_t N, K, KP, NR;
  AlignedWords words;
  PackedB(size_t n, size_t k, size_t nr) : N(n), K(k), KP(ceil_div(k, 2)), NR(nr), words(panels() * KP * nr) {}
  size_t panels() const { return ceil_div(N, NR); }
  size_t bytes() const { return panels() * KP * NR * sizeof(uint32_t); }
  const uint32_t* panel(size_t j) const { return words.data() + j * KP * NR; }
};

// Packs w (bf16 bits: N x K if w_nk, so B = W^T; else K x N, B = W); `parallel(n, f)` splits the panels.
template <class Parallel>
std::shared_ptr<PackedB> pack_b(const uint16_t* w, bool w_nk, size_t N, size_t K, const Kernel& kern,
                                Parallel&& parallel) {
  auto packed = std::make_shared<PackedB>(N, K, kern.nr);
  const size_t NR = kern.nr, KP = packed->KP;
  parallel(packed->panels(), [&](size_t first, size_t last) {
    for (size_t j = first; j < last; ++j) {
      uint32_t* panel = packed->words.data() + j * KP * NR;
      for (size_t col = 0; col < NR; ++col) {
        const size_t n = j * NR + col;
        if (n >= N) {
          for (size_t p = 0; p < KP; ++p) panel[p * NR + col] = 0;
        } else if (w_nk) {  // B = W^T: a column of B is a row of W, its pairs adjacent in memory
          const uint16_t* src = w + n * K;
          for (size_t p = 0; p < K / 2; ++p) std::memcpy(panel + p * NR + col, src + 2 * p, sizeof(uint32_t));
          if (K % 2) panel[(KP - 1) * NR + col] = src[K - 1];
        }
      }
      if (!w_nk) {  // B = W: read along W's rows
        for (size_t p = 0; p < KP; ++p) {
          const uint16_t* lo = w + 2 * p * N;
          const uint16_t* hi = 2 * p + 1 < K ? lo + N : nullptr;
          for (size_t col = 0; col < NR && j * NR + col < N; ++col) {
            const size_t n = j * NR + col;
            panel[p * NR + col] = static_cast<uint32_t>(lo[n]) | (hi ? static_cast<uint32_t>(hi[n]) << 16 : 0u);
          }
        }
      }
    }
  });
  return packed;
}

struct Problem {
  size_t M, N, K;
  const float* a;     // M x K, row length lda
  size_t lda;
  const float* bias;  // N values or null
  float* c;           // M x N, row length ldc
  size_t ldc;
};

// Goto-style blocking, so that a long K does not take B from L3 once per micro-panel of A: per block of at most kMC
// rows (its C stays in L2 while the k blocks add into it), per group of B panels (one k block of the group's panels
// stays in L2, shared by the block's micro-panels), per KC block of k, each MR-row micro-panel of A is converted into
// a small buffer that stays in L1, and the micro-kernel runs it over the group's panels.
constexpr size_t kMC = 64;                          // rows of A per block (a multiple of every kernel's MR)
constexpr size_t kGroupBytes = size_t(384) << 10;  // one k block of a group's panels of B

inline void prefetch_tile(const float* c, size_t ldc, size_t rows, size_t cols) {
  for (size_t r = 0; r < rows; ++r)
    for (size_t col = 0; col < cols; col += 16) __builtin_prefetch(c + r * ldc + col, 1, 3);
}

// Rows [m0, m1) (at most kMC) x panels [j0, j1) of C. The first k block writes a tile, later ones add to it; the
// bias is added once, after the last. Edge tiles (mr < MR or nr < NR) go through a scratch tile.
inline void gemm_block(const Kernel& kern, const Problem& pr, const PackedB& b, size_t m0, size_t m1, size_t j0,
                       size_t j1) {
  const size_t MR = kern.mr, NR = kern.nr, KP = b.KP, K = pr.K, N = pr.N;
  // the panels in groups of equal size, so that a k block's C and B stay in L2 for the next k block; with a single
  // k block there is nothing to keep, and each group would convert the rows of A again: one group
  const size_t kb = k_block(KP);
  const size_t most = KP <= kb ? j1 - j0 : std::max<size_t>(1, kGroupBytes / (kb * NR * sizeof(uint32_t)));
  const size_t group = ceil_div(j1 - j0, ceil_div(j1 - j0, most));
  const size_t stride = kb > kKC ? kKCWhole : kKC;
  const TileFn tile = kb > kKC ? kern.tile_whole : kern.tile;
  AlignedWords apanel(MR * stride);
  std::memset(apanel.data(), 0, MR * stride * sizeof(uint32_t));  // rows past an edge tile's last are never stored
  uint16_t* ah = reinterpret_cast<uint16_t*>(apanel.data());
  std::vector<float> scratch(MR * NR);
  for (size_t jb = j0; jb < j1; jb += group) {
    const size_t je = std::min(j1, jb + group), tiles = je - jb;
    for (size_t p0 = 0; p0 < KP; p0 += kb) {
      const size_t kc = std::min(kb, KP - p0), k0 = 2 * p0, kn = std::min(K, 2 * (p0 + kc)) - k0;
      for (size_t i0 = m0; i0 < m1; i0 += MR) {
        const size_t mr = std::min(MR, m1 - i0);
        for (size_t r = 0; r < mr; ++r) {
          kern.convert(pr.a + (i0 + r) * pr.lda + k0, kn, ah + r * 2 * stride);
          if (kn % 2) ah[r * 2 * stride + kn] = 0;  // the pad of an odd K
        }
        // the segments of A that the next micro-panel converts (after this block's last, the next k block's, the
        // next group's, or past m1 the next chunk's, which this thread likely takes next): tile t prefetches its
        // share of them, spread over its k loop
        size_t ni = i0 + MR, nk = k0;
        if (ni >= m1) {
          ni = m0;
          nk = k0 + 2 * kb;
          if (nk >= K) {
            nk = 0;
            ni = je < j1 ? m0 : m1;
          }
        }
        const size_t nrows = ni < pr.M ? std::min(MR, pr.M - ni) : 0;
        const size_t seg_lines = ceil_div(std::min(K - nk, 2 * kb) * sizeof(float), 64);
        for (size_t j = jb; j < je; ++j) {
          const size_t t = j - jb, r_lo = t * nrows / tiles, r_hi = (t + 1) * nrows / tiles;
          const char* pf = reinterpret_cast<const char*>(pr.a + (ni + r_lo) * pr.lda + nk);
          for (size_t r = r_lo + 1; r < r_hi; ++r)  // more rows than tiles: the extra rows' lines at once
            for (size_t l = 0; l < seg_lines; ++l)
              __builtin_prefetch(pf + (r - r_lo) * pr.lda * sizeof(float) + 64 * l, 0, 3);
          const size_t pf_lines = r_lo < r_hi ? seg_lines : 0;
          // the next tile's rows of C, for writing: its stores then hit the cache instead of stalling on memory
          if (j + 1 < je) prefetch_tile(pr.c + i0 * pr.ldc + (j + 1) * NR, pr.ldc, mr, NR);
          const uint32_t* bp = b.panel(j) + p0 * NR;
          float* c = pr.c + i0 * pr.ldc + j * NR;
          const size_t nr = std::min(NR, N - j * NR);
          if (mr == MR && nr == NR) {
            tile(kc, apanel.data(), bp, c, pr.ldc, p0 > 0, pf, pf_lines);
          } else {
            tile(kc, apanel.data(), bp, scratch.data(), NR, false, pf, pf_lines);
            for (size_t r = 0; r < mr; ++r)
              for (size_t col = 0; col < nr; ++col)
                c[r * pr.ldc + col] = (p0 > 0 ? c[r * pr.ldc + col] : 0.f) + scratch[r * NR + col];
          }
        }
      }
    }
  }
  if (pr.bias)
    for (size_t i = m0; i < m1; ++i)
      for (size_t n = j0 * NR; n < std::min(N, j1 * NR); ++n) pr.c[i * pr.ldc + n] += pr.bias[n];
}

// Runs C = A B [+ bias] on `threads` threads; `parallel(n, f)` calls f(first, last) over [0, n) split across them.
template <class Parallel>
void gemm(const Kernel& kern, const Problem& pr, const PackedB& b, size_t threads, Parallel&& parallel) {
  const size_t M = pr.M, N = pr.N;
  if (b.N != N || b.K != pr.K || b.NR != kern.nr)
    throw std::logic_error("bf16 gemm: the packed B does not fit the problem (a bug in the caller)");
  if (M == 0 || N == 0) return;
  if (pr.K == 0) {
    for (size_t i = 0; i < M; ++i)
      for (size_t j = 0; j < N; ++j) pr.c[i * pr.ldc + j] = pr.bias ? pr.bias[j] : 0.f;
    return;
  }
  const size_t n_panels = b.panels(), m_panels = ceil_div(M, kern.mr);
  // Split M when each thread gets a few micro-panels: each converts only its rows of A. Else (few rows) split N.
  const bool split_m = m_panels >= 2 * threads || n_panels < threads;
  if (!split_m) {
    parallel(n_panels, [&](size_t first, size_t last) {
      for (size_t m0 = 0; m0 < M; m0 += kMC) gemm_block(kern, pr, b, m0, std::min(M, m0 + kMC), first, last);
    });
  } else {
    // Rows in chunks that the threads take from a shared counter: a thread slowed down by other load on its core
    // then leaves its remaining chunks to the others instead of holding up the call. A chunk is a block of kMC rows
    // while many are left, then shrinks towards one micro-panel (half of what is left per thread): the threads
    // then finish within a micro-panel of each other, though the workers start a wake-up later than the caller.
    const size_t most = std::max<size_t>(1, kMC / kern.mr);
    std::atomic<size_t> next{0};
    parallel(std::min(threads, m_panels), [&](size_t, size_t) {
      size_t first = next.load(std::memory_order_relaxed), take = 0;
      for (;;) {
        do {
          if (first >= m_panels) return;
          take = std::clamp<size_t>((m_panels - first) / (2 * threads), 1, most);
        } while (!next.compare_exchange_weak(first, first + take, std::memory_order_relaxed));
        gemm_block(kern, pr, b, first * kern.mr, std::min(M, (first + take) * kern.mr), 0, n_panels);
        first = next.load(std::memory_order_relaxed);
      }
    });
  }
}

}  // namespace kl_bf16
