// Element-wise kernels of a BERT train step over contiguous float32 ranges and rows: GELU, softmax,
// LayerNorm, dropout (forward and backward), and dropout + residual add + LayerNorm in one pass. Math
// matches lora_tasks/models/ops.py: the rational erf (Eigen's coefficients) and exp as Taylor_7(x/256)^256.

#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "native_math.h"

namespace kl_elem {

constexpr float kSqrt1_2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

// ---------------------------------------------------------------------------------------------
// Scalar math, written so that GCC vectorizes the loops that call it (-O3 -fno-trapping-math).

inline float erf_rational(float x) {
  x = x < -4.f ? -4.f : x;
  x = x > 4.f ? 4.f : x;
  float x2 = x * x;
  float p = x2 * -2.72614225801306e-10f + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = x2 * -1.45660718464996e-05f + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}

using kl_math::exp_nonpositive;  // exp(x) for x <= 0 and the dropout hash: native_math.h
using kl_math::mix;

// ---------------------------------------------------------------------------------------------
// Kernels over contiguous float32 ranges.

inline void gelu_fwd_range(const float* x, float* y, size_t a, size_t b) {
  for (size_t i = a; i < b; ++i) {
    float v = x[i];
    y[i] = 0.5f * v * (1.f + erf_rational(v * kSqrt1_2));
  }
}

inline void gelu_bwd_range(const float* x, const float* g, float* out, size_t a, size_t b) {
  for (size_t i = a; i < b; ++i) {
    float v = x[i];
    float cdf = 0.5f * (1.f + erf_rational(v * kSqrt1_2));
    float pdf = exp_nonpositive(-0.5f * v * v) * kInvSqrt2Pi;
    out[i] = g[i] * (cdf + v * pdf);
  }
}

inline void softmax_rows(const float* x, float* y, size_t first, size_t last, size_t L) {
  for (size_t r = first; r < last; ++r) {
    const float* xr = x + r * L;
    float* yr = y + r * L;
    float m = xr[0];
    for (size_t i = 1; i < L; ++i) m = xr[i] > m ? xr[i] : m;
    float s = 0.f;
    for (size_t i = 0; i < L; ++i) {
      float e = exp_nonpositive(xr[i] - m);
      yr[i] = e;
      s += e;
    }
    float inv = 1.f / s;
    for (size_t i = 0; i < L; ++i) yr[i] *= inv;
  }
}

inline void softmax_bwd_rows(const float* y, const float* g, float* out, size_t first, size_t last, size_t L) {
  for (size_t r = first; r < last; ++r) {
    const float* yr = y + r * L;
    const float* gr = g + r * L;
    float* o = out + r * L;
    float d = 0.f;
    for (size_t i = 0; i < L; ++i) d += yr[i] * gr[i];
    for (size_t i = 0; i < L; ++i) o[i] = yr[i] * (gr[i] - d);
  }
}

inline void dropout_range(const float* x, float* y, size_t a, size_t b, uint32_t seed, uint32_t threshold, float scale) {
  for (size_t i = a; i < b; ++i) {
    y[i] = mix(static_cast<uint32_t>(i), seed) >= threshold ? x[i] * scale : 0.f;
  }
}


inline void layer_norm_rows(const float* x, const float* w, const float* b, float* y, size_t first, size_t last, size_t H,
                     float eps) {
  for (size_t r = first; r < last; ++r) {
    const float* xr = x + r * H;
    float* yr = y + r * H;
    float mean = 0.f;
    for (size_t i = 0; i < H; ++i) mean += xr[i];
    mean /= static_cast<float>(H);
    float var = 0.f;
    for (size_t i = 0; i < H; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    float rstd = 1.f / std::sqrt(var / static_cast<float>(H) + eps);
    for (size_t i = 0; i < H; ++i) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
  }
}

// dx of LayerNorm for frozen or trained weights (dw, db are reductions left to MLX, computed only if used).
inline void layer_norm_bwd_rows(const float* x, const float* w, const float* g, float* dx, size_t first, size_t last,
                         size_t H, float eps) {
  const float inv_h = 1.f / static_cast<float>(H);
  for (size_t r = first; r < last; ++r) {
    const float* xr = x + r * H;
    const float* gr = g + r * H;
    float* o = dx + r * H;
    float mean = 0.f;
    for (size_t i = 0; i < H; ++i) mean += xr[i];
    mean *= inv_h;
    float var = 0.f;
    for (size_t i = 0; i < H; ++i) var += (xr[i] - mean) * (xr[i] - mean);
    float rstd = 1.f / std::sqrt(var * inv_h + eps);
    float c1 = 0.f, c2 = 0.f;
    for (size_t i = 0; i < H; ++i) {
      float gw = gr[i] * w[i];
      c1 += gw * (xr[i] - mean);
      c2 += gw;
    }
    c1 *= rstd * inv_h;
    c2 *= inv_h;
    for (size_t i = 0; i < H; ++i) {
      float xhat = (xr[i] - mean) * rstd;
      o[i] = rstd * (gr[i] * w[i] - c2 - xhat * c1);
    }
  }
}

// y = LayerNorm(dropout(h) + res) per row, keeping s = dropout(h) + res for the backward. The dropout
// mask is dropout_range's (a hash of the flat index and the seed), so this equals the three ops apart.
inline void dropout_add_norm_rows(const float* h, const float* res, const float* w, const float* b, float* s, float* y,
                           size_t first, size_t last, size_t H, uint32_t seed, uint32_t threshold, float scale,
                           float eps) {
  for (size_t r = first; r < last; ++r) {
    const float* hr = h + r * H;
    const float* rr = res + r * H;
    float* sr = s + r * H;
    for (size_t i = 0; i < H; ++i) {
      size_t flat = r * H + i;
      float d = mix(static_cast<uint32_t>(flat), seed) >= threshold ? hr[i] * scale : 0.f;
      sr[i] = d + rr[i];
    }
  }
  layer_norm_rows(s, w, b, y, first, last, H, eps);
}

// The backward of dropout_add_norm_rows: ds = LayerNorm's dx (the residual's gradient) and
// dh = ds through the same dropout mask.
inline void dropout_add_norm_bwd_rows(const float* s, const float* w, const float* g, float* ds, float* dh, size_t first,
                               size_t last, size_t H, uint32_t seed, uint32_t threshold, float scale, float eps) {
  layer_norm_bwd_rows(s, w, g, ds, first, last, H, eps);
  dropout_range(ds, dh, first * H, last * H, seed, threshold, scale);
}

}  // namespace kl_elem
