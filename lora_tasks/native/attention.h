// BERT's attention on the CPU, one (batch, head) pair at a time: probs = softmax(scale q k^T + mask),
// out = dropout(probs) v, and the backward (dq, dk, dv) from probs and the cotangent of out.
//
// Why not the BLAS: MLX's batched matmul needs q, k, v transposed to (batch, head, seq, dim) first
// (single-threaded copies, there and back, forward and backward), and then makes B*H tiny BLAS
// calls whose threading costs more than their math. Here q, k, v are read in place from
// (batch, seq, heads*dim), the work is split over (batch, head) pairs, and every operand of a pair
// stays in L1/L2. The mask, softmax and dropout are fused between the GEMMs, vectorized with GCC
// vector types (AVX-512 registers where the build has them, else AVX2), with explicit vector
// reductions: a plain scalar max/sum loop does not vectorize without -ffast-math.
//
// The GEMMs are register-blocked MR x NR micro-kernels (8 x 32 on AVX-512, 6 x 16 on AVX2: the
// library is built with -march=native for the machine it runs on, so the compiler's flags decide),
// reading B's rows in place when the head size fills the block, else from a zero-padded copy.
// fp32 only: bf16 products (vdpbf16ps) were tried and lost here, because at a head size of 32,
// rounding and pairing the operands for them costs as much as the multiply-adds they save.
//
// Pure C++ (no MLX): kernels.cpp wraps it in MLX primitives.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "native_math.h"

namespace kl_attn {

struct Shape {
  size_t B, S, H, D;
  size_t HD() const { return H * D; }
};

inline size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

inline uint32_t dropout_threshold(float p) {
  double t = static_cast<double>(p) * 4294967296.0;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// ---------------------------------------------------------------------------------------------
// Vector types: one register of floats, and of uint32 lanes for the dropout hash.

#ifdef __AVX512F__
typedef float vf __attribute__((vector_size(64)));
constexpr size_t kMR = 8;  // 8 x 32: 16 accumulators of the 32 ZMM registers
#else
typedef float vf __attribute__((vector_size(32)));
constexpr size_t kMR = 6;  // 6 x 16: 12 accumulators of the 16 YMM registers (BLIS's AVX2 shape)
#endif
typedef uint32_t vu __attribute__((vector_size(sizeof(vf))));
constexpr size_t kL = sizeof(vf) / sizeof(float);
constexpr size_t kNR = 2 * kL;

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void storev(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline vf splat(float x) { return x - vf{}; }  // x - 0 is x exactly: one broadcast
inline float hsum(vf v) {
  float s = 0.f;
  for (size_t l = 0; l < kL; ++l) s += v[l];
  return s;
}
inline float hmax(vf v) {
  float m = v[0];
  for (size_t l = 1; l < kL; ++l) m = v[l] > m ? v[l] : m;
  return m;
}
inline vu iota() {
  vu v;
  for (size_t l = 0; l < kL; ++l) v[l] = static_cast<uint32_t>(l);
  return v;
}

// ---------------------------------------------------------------------------------------------
// fp32 GEMM: C[i, j] = alpha * sum_p A(i, p) * B[p, j] for i < M, j < N, p < K, where A(i, p) is
// A[i * a_row + p * a_col] (so A may be transposed) and B is row-major with row length ldb, its
// columns read up to round_up(N, kNR) (so padded with zeros, or N a multiple of kNR); C has row
// length ldc >= round_up(N, kNR) or N is a multiple of kNR.

template <size_t MR>
inline void micro_kernel(size_t K, const float* A, size_t a_row, size_t a_col, const float* B, size_t ldb, float* C,
                         size_t ldc, float alpha) {
  vf acc0[MR], acc1[MR];
  for (size_t r = 0; r < MR; ++r) acc0[r] = acc1[r] = vf{};
  for (size_t p = 0; p < K; ++p) {
    vf b0 = loadv(B + p * ldb), b1 = loadv(B + p * ldb + kL);
    const float* a = A + p * a_col;
    for (size_t r = 0; r < MR; ++r) {
      vf ar = splat(a[r * a_row]);
      acc0[r] += ar * b0;
      acc1[r] += ar * b1;
    }
  }
  for (size_t r = 0; r < MR; ++r) {
    storev(C + r * ldc, acc0[r] * alpha);
    storev(C + r * ldc + kL, acc1[r] * alpha);
  }
}

// The last M % kMR rows of a column panel.
template <size_t R>
inline void micro_tail(size_t rows, size_t K, const float* A, size_t a_row, size_t a_col, const float* B, size_t ldb,
                       float* C, size_t ldc, float alpha) {
  if constexpr (R > 0) {
    if (rows == R)
      micro_kernel<R>(K, A, a_row, a_col, B, ldb, C, ldc, alpha);
    else
      micro_tail<R - 1>(rows, K, A, a_row, a_col, B, ldb, C, ldc, alpha);
  }
}

inline void small_gemm(size_t M, size_t N, size_t K, const float* A, size_t a_row, size_t a_col, const float* B,
                       size_t ldb, float* C, size_t ldc, float alpha) {
  for (size_t j = 0; j < N; j += kNR) {
    size_t i = 0;
    for (; i + kMR <= M; i += kMR)
      micro_kernel<kMR>(K, A + i * a_row, a_row, a_col, B + j, ldb, C + i * ldc + j, ldc, alpha);
    micro_tail<kMR - 1>(M - i, K, A + i * a_row, a_row, a_col, B + j, ldb, C + i * ldc + j, ldc, alpha);
  }
}

// dst[p, j] = src[p * ld + j] for p < rows, j < cols; zero up to the padded row length.
inline void pack_rows(const float* src, size_t ld, size_t rows, size_t cols, float* dst, size_t dst_ld) {
  for (size_t p = 0; p < rows; ++p) {
    std::memcpy(dst + p * dst_ld, src + p * ld, cols * sizeof(float));
    std::fill(dst + p * dst_ld + cols, dst + (p + 1) * dst_ld, 0.f);
  }
}

// dst[p, j] = src[j * ld + p] (a transpose) for p < rows, j < cols; zero-padded likewise.
inline void pack_cols(const float* src, size_t ld, size_t rows, size_t cols, float* dst, size_t dst_ld) {
  for (size_t j = 0; j < cols; ++j)
    for (size_t p = 0; p < rows; ++p) dst[p * dst_ld + j] = src[j * ld + p];
  for (size_t p = 0; p < rows; ++p) std::fill(dst + p * dst_ld + cols, dst + (p + 1) * dst_ld, 0.f);
}

// ---------------------------------------------------------------------------------------------
// The fused element-wise rows.

// pr[j] = softmax(t[j] + mask[j]) over j < S.
inline void softmax_row(const float* t, const float* mask, size_t S, float* pr) {
  vf mv = splat(-INFINITY);
  float m = -INFINITY;
  size_t j = 0;
  for (; j + kL <= S; j += kL) {
    vf x = loadv(t + j) + loadv(mask + j);
    storev(pr + j, x);
    mv = x > mv ? x : mv;
  }
  for (; j < S; ++j) {
    pr[j] = t[j] + mask[j];
    m = pr[j] > m ? pr[j] : m;
  }
  m = std::max(m, hmax(mv));
  vf sv{};
  float sum = 0.f;
  for (j = 0; j + kL <= S; j += kL) {
    vf e = kl_math::exp_nonpositive(loadv(pr + j) - m);
    storev(pr + j, e);
    sv += e;
  }
  for (; j < S; ++j) {
    pr[j] = kl_math::exp_nonpositive(pr[j] - m);
    sum += pr[j];
  }
  const float inv = 1.f / (sum + hsum(sv));
  for (j = 0; j + kL <= S; j += kL) storev(pr + j, loadv(pr + j) * inv);
  for (; j < S; ++j) pr[j] *= inv;
}

// The dropout of one row: out[j] = x[j] * keep where the hash of (seed, first + j) keeps it, else 0.
struct Dropout {
  uint32_t seed, threshold;
  float keep;
  void row(const float* x, size_t n, uint32_t first, float* out) const {
    const vu lanes = iota();
    size_t j = 0;
    for (; j + kL <= n; j += kL) {
      vu h = kl_math::mix(lanes + (first + static_cast<uint32_t>(j)), seed);
      storev(out + j, h >= threshold ? loadv(x + j) * keep : vf{});
    }
    for (; j < n; ++j) out[j] = kl_math::mix(first + static_cast<uint32_t>(j), seed) >= threshold ? x[j] * keep : 0.f;
  }
};

// ds[j] = alpha * P[j] * (dp[j] - sum_j dp[j] P[j]): the softmax backward of one row (dp already dropped).
inline void softmax_bwd_row(const float* dp, const float* pr, size_t S, float alpha, float* ds) {
  vf dv{};
  float dot = 0.f;
  size_t j = 0;
  for (; j + kL <= S; j += kL) dv += loadv(dp + j) * loadv(pr + j);
  for (; j < S; ++j) dot += dp[j] * pr[j];
  dot += hsum(dv);
  for (j = 0; j + kL <= S; j += kL) storev(ds + j, loadv(pr + j) * (loadv(dp + j) - dot) * alpha);
  for (; j < S; ++j) ds[j] = pr[j] * (dp[j] - dot) * alpha;
}

// ---------------------------------------------------------------------------------------------
// The units of work: (batch, head) pairs [first, last). Scratch is allocated once per call (a
// thread's share of the pairs) and reused over its pairs.

// dst (M x D, row length ld) = the valid part of tile (row length tile_ld).
inline void copy_out(const float* tile, size_t tile_ld, size_t M, size_t D, float* dst, size_t ld) {
  for (size_t i = 0; i < M; ++i) std::memcpy(dst + i * ld, tile + i * tile_ld, D * sizeof(float));
}

// dst (S x D, row length ld) = A (S x S; A(i, p) = A[i * a_row + p * a_col]) @ src (S x D, row length ld).
// When D is a multiple of kNR the micro-kernel reads src's rows in place; else through `packed` and
// `tile` (S x round_up(D, kNR) each), zero-padded.
inline void gemm_sd(size_t S, size_t D, const float* A, size_t a_row, size_t a_col, const float* src, float* dst,
                    size_t ld, float* packed, float* tile) {
  const size_t Dp = round_up(D, kNR);
  if (Dp == D) {
    small_gemm(S, D, S, A, a_row, a_col, src, ld, dst, ld, 1.f);
    return;
  }
  pack_rows(src, ld, S, D, packed, Dp);
  small_gemm(S, D, S, A, a_row, a_col, packed, Dp, tile, Dp, 1.f);
  copy_out(tile, Dp, S, D, dst, ld);
}

inline Dropout dropout_for(uint32_t seed, float p) {
  return {seed, dropout_threshold(p), p > 0.f ? 1.f / (1.f - p) : 1.f};
}

// probs = softmax(scale q k^T + mask) (kept for the backward), out = dropout(probs) v. The dropout
// mask hashes (seed, index into probs).
inline void forward_units(const Shape& sh, const float* q, const float* k, const float* v, const float* mask,
                          float scale, uint32_t seed, float p_drop, float* probs, float* out, size_t first,
                          size_t last) {
  const size_t S = sh.S, D = sh.D, HD = sh.HD();
  const size_t Sp = round_up(S, kNR), Dp = round_up(D, kNR);
  const Dropout drop = dropout_for(seed, p_drop);
  std::vector<float> tile(S * std::max(Sp, Dp)), packed(std::max(D * Sp, S * Dp)), pd(p_drop > 0.f ? S * S : 0);
  for (size_t u = first; u < last; ++u) {
    const size_t b = u / sh.H, h = u % sh.H;
    const size_t off = b * S * HD + h * D;
    float* P = probs + u * S * S;
    pack_cols(k + off, HD, D, S, packed.data(), Sp);  // k^T: D x S
    small_gemm(S, S, D, q + off, HD, 1, packed.data(), Sp, tile.data(), Sp, scale);
    for (size_t i = 0; i < S; ++i) softmax_row(tile.data() + i * Sp, mask + b * S, S, P + i * S);
    const float* Pd = P;
    if (p_drop > 0.f) {
      const uint32_t base = static_cast<uint32_t>(u * S * S);
      for (size_t i = 0; i < S; ++i) drop.row(P + i * S, S, base + static_cast<uint32_t>(i * S), pd.data() + i * S);
      Pd = pd.data();
    }
    gemm_sd(S, D, Pd, S, 1, v + off, out + off, HD, packed.data(), tile.data());
  }
}

// dq, dk, dv from the forward's probs and the cotangent g of out.
inline void backward_units(const Shape& sh, const float* q, const float* k, const float* v, const float* probs,
                           const float* g, float scale, uint32_t seed, float p_drop, float* dq, float* dk, float* dv,
                           size_t first, size_t last) {
  const size_t S = sh.S, D = sh.D, HD = sh.HD();
  const size_t Sp = round_up(S, kNR), Dp = round_up(D, kNR);
  const Dropout drop = dropout_for(seed, p_drop);
  std::vector<float> tile(S * std::max(Sp, Dp)), packed(std::max(D * Sp, S * Dp)), pd(S * S), ds(S * S);
  for (size_t u = first; u < last; ++u) {
    const size_t b = u / sh.H, h = u % sh.H;
    const size_t off = b * S * HD + h * D;
    const float* P = probs + u * S * S;
    const uint32_t base = static_cast<uint32_t>(u * S * S);
    const float* Pd = P;
    if (p_drop > 0.f) {
      for (size_t i = 0; i < S; ++i) drop.row(P + i * S, S, base + static_cast<uint32_t>(i * S), pd.data() + i * S);
      Pd = pd.data();
    }
    gemm_sd(S, D, Pd, 1, S, g + off, dv + off, HD, packed.data(), tile.data());  // dv = Pd^T g
    // dPd = g v^T (S x S)
    pack_cols(v + off, HD, D, S, packed.data(), Sp);
    small_gemm(S, S, D, g + off, HD, 1, packed.data(), Sp, tile.data(), Sp, 1.f);
    // dS = scale * P * (dP - rowsum(dP * P)), dP = dPd through the dropout mask (pd is free again)
    for (size_t i = 0; i < S; ++i) {
      const float* dp = tile.data() + i * Sp;
      if (p_drop > 0.f) {
        drop.row(dp, S, base + static_cast<uint32_t>(i * S), pd.data() + i * S);
        dp = pd.data() + i * S;
      }
      softmax_bwd_row(dp, P + i * S, S, scale, ds.data() + i * S);
    }
    gemm_sd(S, D, ds.data(), S, 1, k + off, dq + off, HD, packed.data(), tile.data());  // dq = dS k
    gemm_sd(S, D, ds.data(), 1, S, q + off, dk + off, HD, packed.data(), tile.data());  // dk = dS^T q
  }
}

}  // namespace kl_attn
