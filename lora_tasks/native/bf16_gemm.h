// bf16 GEMM for a frozen base: C (M x N, fp32) = A (M x K, fp32, rounded to bf16) * B (K x N, bf16) [+ bias],
// products and sums in fp32. B is a stored weight W, read either as W^T (W is N x K: the forward of a
// linear layer) or as W (W is K x N: the input gradient of one).
//
// Why: MLX's own bf16 matmul on the CPU is a reference loop (~3 GFLOP/s), and MKL's bf16 GEMM does not
// use the bf16 dot-product instructions on AMD. On a CPU with AVX512-BF16, `vdpbf16ps` does 32
// multiply-adds per instruction, twice the fp32 FMA rate, on operands half the size.
//
// Structure (BLIS-like): all of B is packed once into NR-column panels of bf16 pairs along k (the
// operand layout of vdpbf16ps); the (MC rows x NC columns) blocks of C are split over the threads, each
// packing its rows of A (fp32 -> bf16, round to nearest even) per KC block of k into MR-row panels;
// an MR x NR micro-kernel runs over them. Edge tiles (M, N not multiples of MR, NR; odd K) are zero-padded
// in the packs and computed into a scratch tile whose valid part is copied out.
//
// Two micro-kernels share this driver and the packing (bf16_microkernel.inc): AVX512-BF16 and a portable
// one (bf16 -> fp32 by a 16-bit shift, FMA) that runs anywhere. The choice is made at run time from cpuid
// and the OS's saved register state (xgetbv), never from compiler flags, so no path can raise SIGILL.

#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#define KL_X86 1
#include <cpuid.h>
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
// CPU features, from cpuid and xgetbv (what the CPU has and what the OS saves on a context switch).

struct CpuFeatures {
  bool avx2 = false, fma = false, avx512f = false, avx512_bf16 = false;
  bool os_avx = false;  // XCR0 saves YMM state
  bool os_zmm = false;  // XCR0 saves opmask and ZMM state
  bool avx512_bf16_usable() const { return avx512f && avx512_bf16 && os_avx && os_zmm; }
};

inline CpuFeatures detect_cpu() {
  CpuFeatures f;
#ifdef KL_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 1) return f;
  __cpuid(1, a, b, c, d);
  f.fma = (c >> 12) & 1u;
  bool osxsave = (c >> 27) & 1u;
  if (osxsave) {
    unsigned xcr0_lo = 0, xcr0_hi = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    f.os_avx = (xcr0_lo & 0x6u) == 0x6u;
    f.os_zmm = (xcr0_lo & 0xe6u) == 0xe6u;
  }
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  unsigned max_sub = a;
  f.avx2 = (b >> 5) & 1u;
  f.avx512f = (b >> 16) & 1u;
  if (max_sub >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = (a >> 5) & 1u;
  }
#endif
  return f;
}

inline const CpuFeatures& cpu() {
  static const CpuFeatures f = detect_cpu();
  return f;
}

// ---------------------------------------------------------------------------------------------
// Micro-kernels.

using TileFn = void (*)(size_t kpairs, const uint32_t* a, const uint32_t* b, float* c, size_t ldc, bool accumulate);

struct Kernel {
  const char* name;
  size_t mr, nr;
  TileFn tile;
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
#pragma GCC target("avx512f,avx512bf16")
namespace avx512 {
struct V {
  using Acc = __m512;
  using Bv = __m512bh;
  using Av = __m512bh;
  static constexpr size_t kLanes = 16;
  static Acc zero() { return _mm512_setzero_ps(); }
  static Bv load_b(const uint32_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static Av bcast_a(uint32_t w) { return (__m512bh)_mm512_set1_epi32(static_cast<int>(w)); }
  static Acc dot2(Acc c, Av a, Bv b) { return _mm512_dpbf16_ps(c, a, b); }
  static void store(float* p, Acc v) { _mm512_storeu_ps(p, v); }
  static void add_store(float* p, Acc v) { _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), v)); }
};
#include "bf16_microkernel.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

// 4 x 16 on AVX2: 8 accumulators + 4 widened B vectors + 2 widened A broadcasts fit 16 YMM registers.
inline const Kernel kPortable{"portable", 4, 16, &portable::tile<4, 2>};
#ifdef KL_X86
// 12 x 32 on AVX-512: 24 accumulators + 2 B vectors + 1 broadcast of the 32 ZMM registers.
inline const Kernel kAvx512Bf16{"avx512bf16", 12, 32, &avx512::tile<12, 2>};
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

struct Problem {
  size_t M, N, K;
  const float* a;     // M x K, row length lda
  size_t lda;
  const uint16_t* w;  // bf16 bits: N x K if w_nk (B = W^T), else K x N (B = W)
  bool w_nk;
  const float* bias;  // N values or null
  float* c;           // M x N, row length ldc
  size_t ldc;
};

// Panels [first, last) of B: panel j holds columns [j*NR, j*NR+NR), word (p, col) at j*KP*NR + p*NR + col,
// the pair (B[2p][n], B[2p+1][n]) of column n = j*NR + col; zero beyond K and N.
inline void pack_b(const Problem& pr, size_t NR, size_t KP, uint32_t* dst, size_t first, size_t last) {
  const size_t K = pr.K, N = pr.N;
  for (size_t j = first; j < last; ++j) {
    uint32_t* panel = dst + j * KP * NR;
    for (size_t col = 0; col < NR; ++col) {
      const size_t n = j * NR + col;
      if (n >= N) {
        for (size_t p = 0; p < KP; ++p) panel[p * NR + col] = 0;
      } else if (pr.w_nk) {  // B = W^T: a column of B is a row of W, its pairs adjacent in memory
        const uint16_t* src = pr.w + n * K;
        for (size_t p = 0; p < K / 2; ++p) std::memcpy(panel + p * NR + col, src + 2 * p, sizeof(uint32_t));
        if (K % 2) panel[(KP - 1) * NR + col] = src[K - 1];
      }
    }
    if (!pr.w_nk) {  // B = W: read along W's rows
      for (size_t p = 0; p < KP; ++p) {
        const uint16_t* lo = pr.w + 2 * p * N;
        const uint16_t* hi = 2 * p + 1 < K ? lo + N : nullptr;
        for (size_t col = 0; col < NR && j * NR + col < N; ++col) {
          const size_t n = j * NR + col;
          panel[p * NR + col] = static_cast<uint32_t>(lo[n]) | (hi ? static_cast<uint32_t>(hi[n]) << 16 : 0u);
        }
      }
    }
  }
}

// Rows [i0, i0 + mc) of A, all KP pairs of k, into MR-row panels: word (p, r) at panel*KP*MR + p*MR + r
// (a k block [p0, p0 + kc) of a panel is then the contiguous slice from p0*MR). `row` holds 2*KP values.
inline void pack_a(const Problem& pr, size_t MR, size_t i0, size_t mc, size_t KP, uint32_t* dst, uint16_t* row) {
  const size_t panels = ceil_div(mc, MR);
  row[2 * KP - 1] = 0;  // the pad of an odd K
  for (size_t ip = 0; ip < panels; ++ip) {
    uint32_t* panel = dst + ip * KP * MR;
    for (size_t r = 0; r < MR; ++r) {
      if (ip * MR + r >= mc) {
        for (size_t p = 0; p < KP; ++p) panel[p * MR + r] = 0;
        continue;
      }
      to_bf16_row(pr.a + (i0 + ip * MR + r) * pr.lda, pr.K, row);
      for (size_t p = 0; p < KP; ++p) std::memcpy(panel + p * MR + r, row + 2 * p, sizeof(uint32_t));
    }
  }
}

constexpr size_t kKC = 192;  // k pairs per block: an A panel (MR x 2KC bf16) and a B panel stay in L1/L2

// Runs the GEMM; `parallel(n, f)` calls f(first, last) over [0, n) split across threads.
template <class Parallel>
void gemm(const Kernel& kern, const Problem& pr, Parallel&& parallel) {
  const size_t M = pr.M, N = pr.N, K = pr.K, MR = kern.mr, NR = kern.nr;
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (size_t i = 0; i < M; ++i)
      for (size_t j = 0; j < N; ++j) pr.c[i * pr.ldc + j] = pr.bias ? pr.bias[j] : 0.f;
    return;
  }
  const size_t KP = ceil_div(K, 2), n_panels = ceil_div(N, NR);
  std::vector<uint32_t> bpack(n_panels * KP * NR);
  parallel(n_panels, [&](size_t a, size_t b) { pack_b(pr, NR, KP, bpack.data(), a, b); });

  const size_t MC = MR * 8, NC = NR * 8;  // a C block: the unit of work of one thread
  const size_t m_blocks = ceil_div(M, MC), n_blocks = ceil_div(N, NC);
  parallel(m_blocks * n_blocks, [&](size_t first, size_t last) {
    std::vector<uint32_t> apack(MC * KP);
    std::vector<uint16_t> row(2 * KP);
    std::vector<float> scratch(MR * NR);
    size_t packed = SIZE_MAX;  // the row block in apack: a thread's units run along N, so A is packed once per block
    for (size_t u = first; u < last; ++u) {
      const size_t ib = u / n_blocks, i0 = ib * MC, j0 = (u % n_blocks) * NC;
      const size_t mc = std::min(MC, M - i0), nc = std::min(NC, N - j0);
      if (packed != ib) {
        pack_a(pr, MR, i0, mc, KP, apack.data(), row.data());
        packed = ib;
      }
      for (size_t p0 = 0; p0 < KP; p0 += kKC) {
        const size_t kc = std::min(kKC, KP - p0);
        const bool acc = p0 > 0;
        for (size_t jr = 0; jr < nc; jr += NR) {
          const uint32_t* bp = bpack.data() + ((j0 + jr) / NR) * KP * NR + p0 * NR;
          const size_t nr = std::min(NR, nc - jr);
          for (size_t ir = 0; ir < mc; ir += MR) {
            const uint32_t* ap = apack.data() + (ir / MR) * KP * MR + p0 * MR;
            const size_t mr = std::min(MR, mc - ir);
            float* c = pr.c + (i0 + ir) * pr.ldc + j0 + jr;
            if (mr == MR && nr == NR) {
              kern.tile(kc, ap, bp, c, pr.ldc, acc);
              continue;
            }
            kern.tile(kc, ap, bp, scratch.data(), NR, false);
            for (size_t r = 0; r < mr; ++r)
              for (size_t j = 0; j < nr; ++j) c[r * pr.ldc + j] = (acc ? c[r * pr.ldc + j] : 0.f) + scratch[r * NR + j];
          }
        }
      }
      if (pr.bias)
        for (size_t i = i0; i < i0 + mc; ++i)
          for (size_t j = j0; j < j0 + nc; ++j) pr.c[i * pr.ldc + j] += pr.bias[j];
    }
  });
}

}  // namespace kl_bf16
