// The LoRA branch as one pass over the rows: out = y + scale * (x A^T) B^T, and its backward.
//
// Why: with rank r = 4..16, the branch is four skinny GEMMs forward and backward (n x in @ in x r,
// n x r @ r x out, and their transposes) plus an add; a BLAS runs each as its own threaded call at a
// fraction of its speed, and the add is another pass over the output. Here blocks of kRB rows of x
// (and of the cotangent) are read once while they are in L1: their r projections (16-wide partial
// sums in registers, each load of A serving the whole block), then their output rows; backward,
// their input-gradient rows and their share of dA and dB (rank-r updates summed over the block).
// Threads take ranges of rows; dA and dB are summed per thread and reduced at the end.
//
// Shapes (float32, row-contiguous): x (n, in), a (r, in), b (out, r), y (n, out); xa (n, r) is
// x A^T, kept by the forward for the backward.

#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

namespace kl_lora {

struct Shape {
  size_t n, in, out, r;
};

typedef float v16 __attribute__((vector_size(64)));

inline v16 load16(const float* p) {
  v16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
inline void store16(float* p, v16 v) { __builtin_memcpy(p, &v, sizeof(v)); }
inline float hsum(v16 v) {
  float s = 0.f;
  for (int l = 0; l < 16; ++l) s += v[l];
  return s;
}

constexpr size_t kRB = 4;  // rows per block: each load of A (or B^T) serves this many rows

// dst[i * ld_dst + k0 + k] = sum_p src[i * len + p] * w[(k0 + k) * len + p] for rows i < rows <= kRB and
// k < KB: the rows' projections on KB rows of w, with 16-wide partial sums in registers.
template <size_t KB>
inline void project_block(const float* src, size_t rows, size_t len, const float* w, size_t k0, float* dst,
                          size_t ld_dst, float scale) {
  v16 acc[kRB][KB];
  for (size_t i = 0; i < kRB; ++i)
    for (size_t k = 0; k < KB; ++k) acc[i][k] = v16{};
  size_t p = 0;
  for (; p + 16 <= len; p += 16) {
    v16 xv[kRB];
    for (size_t i = 0; i < kRB; ++i) xv[i] = i < rows ? load16(src + i * len + p) : v16{};
    for (size_t k = 0; k < KB; ++k) {
      v16 wv = load16(w + (k0 + k) * len + p);
      for (size_t i = 0; i < kRB; ++i) acc[i][k] += xv[i] * wv;
    }
  }
  for (size_t i = 0; i < rows; ++i)
    for (size_t k = 0; k < KB; ++k) {
      float s = hsum(acc[i][k]);
      for (size_t q = p; q < len; ++q) s += src[i * len + q] * w[(k0 + k) * len + q];
      dst[i * ld_dst + k0 + k] = scale * s;
    }
}

// dst (rows x r, row length r) = scale * src (rows x len) w^T, w (r x len), rows <= kRB.
inline void project(const float* src, size_t rows, size_t len, const float* w, size_t r, float* dst, float scale) {
  size_t k0 = 0;
  for (; k0 + 4 <= r; k0 += 4) project_block<4>(src, rows, len, w, k0, dst, r, scale);
  for (; k0 < r; ++k0) project_block<1>(src, rows, len, w, k0, dst, r, scale);
}

// out[i, :] = (y ? y[i, :] : 0) + sum_k c[i * r + k] * w[k, :] for rows i < rows <= kRB; w (r x len).
inline void combine(const float* c, size_t rows, size_t r, const float* w, size_t len, const float* y, float* out) {
  size_t j = 0;
  for (; j + 16 <= len; j += 16) {
    v16 o[kRB];
    for (size_t i = 0; i < rows; ++i) o[i] = y ? load16(y + i * len + j) : v16{};
    for (size_t k = 0; k < r; ++k) {
      v16 wv = load16(w + k * len + j);
      for (size_t i = 0; i < rows; ++i) o[i] += c[i * r + k] * wv;
    }
    for (size_t i = 0; i < rows; ++i) store16(out + i * len + j, o[i]);
  }
  for (; j < len; ++j)
    for (size_t i = 0; i < rows; ++i) {
      float o = y ? y[i * len + j] : 0.f;
      for (size_t k = 0; k < r; ++k) o += c[i * r + k] * w[k * len + j];
      out[i * len + j] = o;
    }
}

// acc[k, :] += sum_i c[i * r + k] * src[i, :] for k < r, rows i < rows <= kRB: a rank-r update
// summed over a block of rows, so each partial-sum row is loaded and stored once per block.
inline void accumulate(const float* c, size_t rows, size_t r, const float* src, size_t len, float* acc) {
  for (size_t k = 0; k < r; ++k) {
    float* ak = acc + k * len;
    size_t j = 0;
    for (; j + 16 <= len; j += 16) {
      v16 s = load16(ak + j);
      for (size_t i = 0; i < rows; ++i) s += c[i * r + k] * load16(src + i * len + j);
      store16(ak + j, s);
    }
    for (; j < len; ++j)
      for (size_t i = 0; i < rows; ++i) ak[j] += c[i * r + k] * src[i * len + j];
  }
}

// bt (r, out) = b^T: the output rows are then sums of contiguous rows of bt.
inline std::vector<float> transpose_b(const float* b, const Shape& s) {
  std::vector<float> bt(s.r * s.out);
  for (size_t j = 0; j < s.out; ++j)
    for (size_t k = 0; k < s.r; ++k) bt[k * s.out + j] = b[j * s.r + k];
  return bt;
}

// Rows [first, last): xa = x a^T; out = y + scale * xa bt. Blocks of kRB rows.
inline void forward_rows(const Shape& s, const float* x, const float* a, const float* bt, const float* y, float scale,
                         float* xa, float* out, size_t first, size_t last) {
  std::vector<float> c(kRB * s.r);
  for (size_t i = first; i < last; i += kRB) {
    size_t rows = std::min(kRB, last - i);
    project(x + i * s.in, rows, s.in, a, s.r, xa + i * s.r, 1.f);
    for (size_t q = 0; q < rows * s.r; ++q) c[q] = scale * xa[i * s.r + q];
    combine(c.data(), rows, s.r, bt, s.out, y + i * s.out, out + i * s.out);
  }
}

// Rows [first, last) of the backward, given g = d out: gb = scale * g b (per row, r values);
// dx = gb a; dA += gb^T x and dB^T += scale * xa^T g into this thread's partial sums
// da_part (r, in) and dbt_part (r, out).
inline void backward_rows(const Shape& s, const float* x, const float* a, const float* bt, const float* xa,
                          const float* g, float scale, float* dx, float* da_part, float* dbt_part, size_t first,
                          size_t last) {
  std::vector<float> gb(kRB * s.r), sxa(kRB * s.r);
  for (size_t i = first; i < last; i += kRB) {
    size_t rows = std::min(kRB, last - i);
    project(g + i * s.out, rows, s.out, bt, s.r, gb.data(), scale);
    combine(gb.data(), rows, s.r, a, s.in, nullptr, dx + i * s.in);
    accumulate(gb.data(), rows, s.r, x + i * s.in, s.in, da_part);
    for (size_t q = 0; q < rows * s.r; ++q) sxa[q] = scale * xa[i * s.r + q];
    accumulate(sxa.data(), rows, s.r, g + i * s.out, s.out, dbt_part);
  }
}

}  // namespace kl_lora
