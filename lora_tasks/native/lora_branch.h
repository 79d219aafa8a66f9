// The LoRA branch as one pass over the rows: out = y + scale * (x A^T) B^T, and its backward.
//
// Why: with rank r = 4..16, the branch is four skinny GEMMs forward and backward (n x in @ in x r,
// n x r @ r x out, and their transposes) plus an add; a BLAS runs each as its own threaded call at a
// fraction of its speed, and the add is another pass over the output. Here each row of x (and of the
// cotangent) is read once while it is in L1: its r projections, then its output row; backward, its
// input-gradient row and its share of dA and dB. Threads take blocks of rows; dA and dB are summed
// per thread and reduced at the end.
//
// Shapes (float32, row-contiguous): x (n, in), a (r, in), b (out, r), y (n, out); xa (n, r) is
// x A^T, kept by the forward for the backward.

#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace kl_lora {

struct Shape {
  size_t n, in, out, r;
};

// sum_p u[p] * v[p], 8 independent partial sums so the compiler vectorizes without reassociating.
inline float dot(const float* u, const float* v, size_t len) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t p = 0;
  for (; p + 8 <= len; p += 8)
    for (size_t l = 0; l < 8; ++l) acc[l] += u[p + l] * v[p + l];
  float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; p < len; ++p) s += u[p] * v[p];
  return s;
}

// dst[j] += c * src[j]
inline void axpy(float c, const float* src, float* dst, size_t len) {
  for (size_t j = 0; j < len; ++j) dst[j] += c * src[j];
}

// bt (r, out) = b^T: the output rows are then sums of contiguous rows of bt.
inline std::vector<float> transpose_b(const float* b, const Shape& s) {
  std::vector<float> bt(s.r * s.out);
  for (size_t j = 0; j < s.out; ++j)
    for (size_t k = 0; k < s.r; ++k) bt[k * s.out + j] = b[j * s.r + k];
  return bt;
}

// Rows [first, last): xa = x a^T; out = y + scale * xa bt.
inline void forward_rows(const Shape& s, const float* x, const float* a, const float* bt, const float* y, float scale,
                         float* xa, float* out, size_t first, size_t last) {
  for (size_t i = first; i < last; ++i) {
    const float* xi = x + i * s.in;
    float* xai = xa + i * s.r;
    float* oi = out + i * s.out;
    for (size_t k = 0; k < s.r; ++k) xai[k] = dot(xi, a + k * s.in, s.in);
    std::copy(y + i * s.out, y + (i + 1) * s.out, oi);
    for (size_t k = 0; k < s.r; ++k) axpy(scale * xai[k], bt + k * s.out, oi, s.out);
  }
}

// Rows [first, last) of the backward, given g = d out: gb = scale * g b (per row, r values);
// dx = gb a; dA += gb^T x and dB^T += scale * xa^T g into this thread's partial sums
// da_part (r, in) and dbt_part (r, out).
inline void backward_rows(const Shape& s, const float* x, const float* a, const float* bt, const float* xa,
                          const float* g, float scale, float* dx, float* da_part, float* dbt_part, size_t first,
                          size_t last) {
  std::vector<float> gb(s.r);
  for (size_t i = first; i < last; ++i) {
    const float* xi = x + i * s.in;
    const float* gi = g + i * s.out;
    const float* xai = xa + i * s.r;
    float* dxi = dx + i * s.in;
    for (size_t k = 0; k < s.r; ++k) gb[k] = scale * dot(gi, bt + k * s.out, s.out);
    std::fill(dxi, dxi + s.in, 0.f);
    for (size_t k = 0; k < s.r; ++k) {
      axpy(gb[k], a + k * s.in, dxi, s.in);
      axpy(gb[k], xi, da_part + k * s.in, s.in);
      axpy(scale * xai[k], gi, dbt_part + k * s.out, s.out);
    }
  }
}

}  // namespace kl_lora
