// kaggle-lora CPU kernels: MLX primitives for the element-wise work of a BERT train step
// (GELU, softmax, LayerNorm, dropout; forward and backward) and for its attention (attention.h: heads
// read in place, small register-blocked GEMMs with the mask, softmax and dropout fused between them).
//
// Why: on MLX's CPU backend, element-wise ops run on one thread, and its JIT-compiled fused
// kernels are scalar loops (NaN-aware min/max/select do not vectorize) that MLX splits into
// several passes over memory. These primitives do the same math in one AVX pass per tensor,
// spread over the cores: with MKL on the BLAS's own OpenMP runtime (so the threads that just ran
// a GEMM pick the work up instead of spinning against it), else on plain std::threads. Math matches lora_tasks/models/ops.py:
// the rational erf (Eigen's coefficients) and exp as Taylor_7(x/256)^256.
//
// Built and loaded by lora_tasks/native/builder.py; CPU only (eval_gpu throws).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <string>
#include <stdexcept>
#include <thread>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

#ifdef KL_OPENMP
#include <omp.h>
#endif

#include "attention.h"
#include "bf16_gemm.h"
#include "native_math.h"
#include "bf16_weight_cache.h"
#include "worker_pool.h"
#include "lora_branch.h"

namespace nb = nanobind;
using namespace mlx::core;

namespace {

constexpr float kSqrt1_2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;
constexpr size_t kMinSplit = 1 << 15;  // below this a second thread costs more than it saves

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
// Threads: the BLAS's OpenMP pool when built with KL_OPENMP, else plain std::threads.

size_t thread_count() {
#ifdef KL_OPENMP
  return static_cast<size_t>(omp_get_max_threads());
#else
  static const size_t n = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  return n;
#endif
}

// Runs f(begin, end) over [0, n) in chunks that are multiples of `align` (a row length).
template <class F>
void parallel_for(size_t n, size_t align, F&& f) {
  size_t nt = thread_count();
  if (n < kMinSplit || nt <= 1) {
    f(size_t(0), n);
    return;
  }
  size_t units = (n + align - 1) / align;
  size_t chunk = ((units + nt - 1) / nt) * align;
#ifdef KL_OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(nt))
  for (long t = 0; t < static_cast<long>(nt); ++t) {
    size_t a = static_cast<size_t>(t) * chunk;
    size_t b = std::min(n, a + chunk);
    if (a < b) f(a, b);
  }
#else
  std::vector<std::thread> workers;
  for (size_t t = 1; t < nt; ++t) {
    size_t a = t * chunk;
    size_t b = std::min(n, a + chunk);
    if (a < b) workers.emplace_back([&f, a, b] { f(a, b); });
  }
  f(size_t(0), std::min(n, chunk));
  for (auto& w : workers) w.join();
#endif
}

// ---------------------------------------------------------------------------------------------
// Kernels over contiguous float32 ranges.

void gelu_fwd_range(const float* x, float* y, size_t a, size_t b) {
  for (size_t i = a; i < b; ++i) {
    float v = x[i];
    y[i] = 0.5f * v * (1.f + erf_rational(v * kSqrt1_2));
  }
}

void gelu_bwd_range(const float* x, const float* g, float* out, size_t a, size_t b) {
  for (size_t i = a; i < b; ++i) {
    float v = x[i];
    float cdf = 0.5f * (1.f + erf_rational(v * kSqrt1_2));
    float pdf = exp_nonpositive(-0.5f * v * v) * kInvSqrt2Pi;
    out[i] = g[i] * (cdf + v * pdf);
  }
}

void softmax_rows(const float* x, float* y, size_t first, size_t last, size_t L) {
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

void softmax_bwd_rows(const float* y, const float* g, float* out, size_t first, size_t last, size_t L) {
  for (size_t r = first; r < last; ++r) {
    const float* yr = y + r * L;
    const float* gr = g + r * L;
    float* o = out + r * L;
    float d = 0.f;
    for (size_t i = 0; i < L; ++i) d += yr[i] * gr[i];
    for (size_t i = 0; i < L; ++i) o[i] = yr[i] * (gr[i] - d);
  }
}

void dropout_range(const float* x, float* y, size_t a, size_t b, uint32_t seed, uint32_t threshold, float scale) {
  for (size_t i = a; i < b; ++i) {
    y[i] = mix(static_cast<uint32_t>(i), seed) >= threshold ? x[i] * scale : 0.f;
  }
}


void layer_norm_rows(const float* x, const float* w, const float* b, float* y, size_t first, size_t last, size_t H,
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
void layer_norm_bwd_rows(const float* x, const float* w, const float* g, float* dx, size_t first, size_t last,
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
void dropout_add_norm_rows(const float* h, const float* res, const float* w, const float* b, float* s, float* y,
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
void dropout_add_norm_bwd_rows(const float* s, const float* w, const float* g, float* ds, float* dh, size_t first,
                               size_t last, size_t H, uint32_t seed, uint32_t threshold, float scale, float eps) {
  layer_norm_bwd_rows(s, w, g, ds, first, last, H, eps);
  dropout_range(ds, dh, first * H, last * H, seed, threshold, scale);
}

// ---------------------------------------------------------------------------------------------
// Runs f(first, last) over [0, n) work units split evenly over the threads (units are big here).
template <class F>
void parallel_units(size_t n, F&& f) {
  size_t nt = std::min(thread_count(), n);
  if (nt <= 1) {
    f(size_t(0), n);
    return;
  }
  size_t chunk = (n + nt - 1) / nt;
#ifdef KL_OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(nt))
  for (long t = 0; t < static_cast<long>(nt); ++t) {
    size_t a = static_cast<size_t>(t) * chunk;
    if (a < n) f(a, std::min(n, a + chunk));
  }
#else
  std::vector<std::thread> workers;
  for (size_t t = 1; t < nt; ++t) {
    size_t a = t * chunk;
    if (a < n) workers.emplace_back([&f, a, n, chunk] { f(a, std::min(n, a + chunk)); });
  }
  f(size_t(0), std::min(n, chunk));
  for (auto& w : workers) w.join();
#endif
}

// ---------------------------------------------------------------------------------------------
// Primitives. Inputs arrive float32 and row-contiguous (the op functions below make them so).

class CpuUnary : public UnaryPrimitive {
 public:
  using UnaryPrimitive::UnaryPrimitive;
  void eval_gpu(const std::vector<array>&, array&) override {
    throw std::runtime_error("kaggle-lora native kernels run on the CPU stream only");
  }
  std::vector<Shape> output_shapes(const std::vector<array>& inputs) override { return {inputs[0].shape()}; }

 protected:
  // Allocates `out`; call before taking out.data<float>() for the work item.
  static array& allocate(array& out) {
    out.set_data(allocator::malloc(out.nbytes()));
    return out;
  }
  // Queues `work` on this primitive's CPU stream, after the work that produces its inputs.
  template <class W>
  void launch(const std::vector<array>& inputs, array& out, W&& work) {
    auto& enc = cpu::get_command_encoder(stream());
    for (auto& in : inputs) enc.set_input_array(in);
    enc.set_output_array(out);
    enc.dispatch(std::forward<W>(work));
  }
};

class GeluForward : public CpuUnary {
 public:
  using CpuUnary::CpuUnary;
  void eval_cpu(const std::vector<array>& in, array& out) override {
    launch(in, out, [x = in[0].data<float>(), y = allocate(out).data<float>(), n = out.size()] {
      parallel_for(n, 16, [&](size_t a, size_t b) { gelu_fwd_range(x, y, a, b); });
    });
  }
  const char* name() const override { return "KaggleLoraGeluForward"; }
  bool is_equivalent(const Primitive&) const override { return true; }
};

class GeluBackward : public CpuUnary {
 public:
  using CpuUnary::CpuUnary;
  void eval_cpu(const std::vector<array>& in, array& out) override {
    launch(in, out, [x = in[0].data<float>(), g = in[1].data<float>(), o = allocate(out).data<float>(), n = out.size()] {
      parallel_for(n, 16, [&](size_t a, size_t b) { gelu_bwd_range(x, g, o, a, b); });
    });
  }
  const char* name() const override { return "KaggleLoraGeluBackward"; }
  bool is_equivalent(const Primitive&) const override { return true; }
};

class SoftmaxForward : public CpuUnary {
 public:
  using CpuUnary::CpuUnary;
  void eval_cpu(const std::vector<array>& in, array& out) override {
    size_t L = in[0].shape(-1);
    launch(in, out, [x = in[0].data<float>(), y = allocate(out).data<float>(), n = out.size(), L] {
      parallel_for(n, L, [&](size_t a, size_t b) { softmax_rows(x, y, a / L, b / L, L); });
    });
  }
  const char* name() const override { return "KaggleLoraSoftmaxForward"; }
  bool is_equivalent(const Primitive&) const override { return true; }
};

class SoftmaxBackward : public CpuUnary {
 public:
  using CpuUnary::CpuUnary;
  void eval_cpu(const std::vector<array>& in, array& out) override {
    size_t L = in[0].shape(-1);
    launch(in, out, [y = in[0].data<float>(), g = in[1].data<float>(), o = allocate(out).data<float>(), n = out.size(), L] {
      parallel_for(n, L, [&](size_t a, size_t b) { softmax_bwd_rows(y, g, o, a / L, b / L, L); });
    });
  }
  const char* name() const override { return "KaggleLoraSoftmaxBackward"; }
  bool is_equivalent(const Primitive&) const override { return true; }
};


class LayerNormForward : public CpuUnary {
 public:
  LayerNormForward(Stream s, float eps) : CpuUnary(s), eps_(eps) {}
  void eval_cpu(const std::vector<array>& in, array& out) override {
    size_t H = in[0].shape(-1);
    launch(in, out, [x = in[0].data<float>(), w = in[1].data<float>(), b = in[2].data<float>(),
                     y = allocate(out).data<float>(), n = out.size(), H, eps = eps_] {
      parallel_for(n, H, [&](size_t a, size_t e) { layer_norm_rows(x, w, b, y, a / H, e / H, H, eps); });
    });
  }
  const char* name() const override { return "KaggleLoraLayerNormForward"; }
  bool is_equivalent(const Primitive& o) const override { return static_cast<const LayerNormForward&>(o).eps_ == eps_; }

 private:
  float eps_;
};

class LayerNormBackward : public CpuUnary {
 public:
  LayerNormBackward(Stream s, float eps) : CpuUnary(s), eps_(eps) {}
  void eval_cpu(const std::vector<array>& in, array& out) override {
    size_t H = in[0].shape(-1);
    launch(in, out, [x = in[0].data<float>(), w = in[1].data<float>(), g = in[2].data<float>(),
                     o = allocate(out).data<float>(), n = out.size(), H, eps = eps_] {
      parallel_for(n, H, [&](size_t a, size_t e) { layer_norm_bwd_rows(x, w, g, o, a / H, e / H, H, eps); });
    });
  }
  const char* name() const override { return "KaggleLoraLayerNormBackward"; }
  bool is_equivalent(const Primitive& o) const override { return static_cast<const LayerNormBackward&>(o).eps_ == eps_; }

 private:
  float eps_;
};

class Dropout : public CpuUnary {
 public:
  Dropout(Stream s, float p) : CpuUnary(s), p_(p) {}
  void eval_cpu(const std::vector<array>& in, array& out) override {
    double t = static_cast<double>(p_) * 4294967296.0;
    uint32_t threshold = t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
    float scale = p_ < 1.f ? 1.f / (1.f - p_) : 0.f;
    launch(in, out, [x = in[0].data<float>(), s = in[1].data<uint32_t>(), y = allocate(out).data<float>(), n = out.size(),
                     threshold, scale] {
      uint32_t seed = s[0];
      parallel_for(n, 16, [&](size_t a, size_t b) { dropout_range(x, y, a, b, seed, threshold, scale); });
    });
  }
  const char* name() const override { return "KaggleLoraDropout"; }
  bool is_equivalent(const Primitive& other) const override { return static_cast<const Dropout&>(other).p_ == p_; }

 private:
  float p_;
};


// parallel_units for the bf16 GEMM: on the persistent workers of worker_pool.h where there is no OpenMP pool.
template <class F>
void gemm_parallel(size_t n, F&& f) {
#ifndef KL_OPENMP
  const size_t nt = std::min(thread_count(), n);
  if (kl_pool::Pool* pool = nt > 1 ? kl_pool::pool(thread_count()) : nullptr) {
    const size_t chunk = (n + nt - 1) / nt;
    const std::function<void(size_t)> job = [&](size_t t) {
      if (t * chunk < n) f(t * chunk, std::min(n, (t + 1) * chunk));
    };
    if (pool->try_run(std::min(nt, pool->size()), job)) return;
  }
#endif
  parallel_units(n, f);
}

// bf16 GEMM of a frozen weight (bf16_gemm.h): inputs a (..., K) float32, w bf16 (N x K when w_nk,
// else K x N), optional bias (N) float32; output (..., N) float32.
class Bf16Matmul : public CpuUnary {
 public:
  Bf16Matmul(Stream s, bool w_nk, const kl_bf16::Kernel& kernel) : CpuUnary(s), w_nk_(w_nk), kernel_(&kernel) {}
  void eval_cpu(const std::vector<array>& in, array& out) override {
    const array& a = in[0];
    const array& w = in[1];
    size_t K = a.shape(-1), N = out.shape(-1), M = 1;
    for (int i = 0; i + 1 < a.ndim(); ++i) M *= static_cast<size_t>(a.shape(i));
    kl_bf16::Problem pr{M, N, K, a.data<float>(), K, in.size() > 2 ? in[2].data<float>() : nullptr,
                        allocate(out).data<float>(), N};
    launch(in, out, [pr, kernel = kernel_, w_nk = w_nk_, owner = std::shared_ptr<void>(w.data_shared_ptr()),
                     wp = w.data<uint16_t>()] {
      auto parallel = [](size_t n, auto&& f) { gemm_parallel(n, f); };
      auto packed = kl_bf16::packed_weights().get(owner, wp, pr.N, pr.K, w_nk, *kernel, [&] {
        return kl_bf16::pack_b(wp, w_nk, pr.N, pr.K, *kernel, parallel);
      });
      kl_bf16::gemm(*kernel, pr, *packed, thread_count(), parallel);
    });
  }
  std::vector<Shape> output_shapes(const std::vector<array>& in) override {
    Shape s = in[0].shape();
    s.back() = in[1].shape(w_nk_ ? 0 : 1);
    return {s};
  }
  const char* name() const override { return "KaggleLoraBf16Matmul"; }
  bool is_equivalent(const Primitive& o) const override {
    auto& b = static_cast<const Bf16Matmul&>(o);
    return b.w_nk_ == w_nk_ && b.kernel_ == kernel_;
  }

 private:
  bool w_nk_;
  const kl_bf16::Kernel* kernel_;
};

// Multi-output primitives for attention: inputs (batch, seq, heads*dim) float32.
class CpuMulti : public Primitive {
 public:
  using Primitive::Primitive;
  void eval_gpu(const std::vector<array>&, std::vector<array>&) override {
    throw std::runtime_error("kaggle-lora native kernels run on the CPU stream only");
  }

 protected:
  template <class W>
  void launch(const std::vector<array>& inputs, std::vector<array>& outputs, W&& work) {
    auto& enc = cpu::get_command_encoder(stream());
    for (auto& in : inputs) enc.set_input_array(in);
    for (auto& out : outputs) enc.set_output_array(out);
    enc.dispatch(std::forward<W>(work));
  }
  static float* allocate(array& out) {
    out.set_data(allocator::malloc(out.nbytes()));
    return out.data<float>();
  }
};

// Attention primitives share their parameters: head count, score scale, dropout probability.
class AttentionPrimitive : public CpuMulti {
 public:
  AttentionPrimitive(Stream s, size_t heads, float scale, float p) : CpuMulti(s), heads_(heads), scale_(scale), p_(p) {}
  bool is_equivalent(const Primitive& o) const override {
    auto* a = dynamic_cast<const AttentionPrimitive*>(&o);
    return a && std::string(a->name()) == name() && a->heads_ == heads_ && a->scale_ == scale_ && a->p_ == p_;
  }

 protected:
  kl_attn::Shape shape_of(const array& q) const {
    return {static_cast<size_t>(q.shape(0)), static_cast<size_t>(q.shape(1)), heads_,
            static_cast<size_t>(q.shape(2)) / heads_};
  }
  size_t heads_;
  float scale_, p_;
};

class AttentionForward : public AttentionPrimitive {
 public:
  using AttentionPrimitive::AttentionPrimitive;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& outs) override {
    float* out = allocate(outs[0]);
    float* probs = allocate(outs[1]);
    launch(in, outs, [sh = shape_of(in[0]), q = in[0].data<float>(), k = in[1].data<float>(), v = in[2].data<float>(),
                      m = in[3].data<float>(), seed = in[4].data<uint32_t>(), out, probs, scale = scale_, p = p_] {
      parallel_units(sh.B * sh.H, [&, sd = seed[0]](size_t a, size_t b) {
        kl_attn::forward_units(sh, q, k, v, m, scale, sd, p, probs, out, a, b);
      });
    });
  }
  const char* name() const override { return "KaggleLoraAttentionForward"; }
};

class AttentionBackward : public AttentionPrimitive {
 public:
  using AttentionPrimitive::AttentionPrimitive;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& outs) override {
    float* dq = allocate(outs[0]);
    float* dk = allocate(outs[1]);
    float* dv = allocate(outs[2]);
    launch(in, outs, [sh = shape_of(in[0]), q = in[0].data<float>(), k = in[1].data<float>(), v = in[2].data<float>(),
                      probs = in[3].data<float>(), g = in[4].data<float>(), seed = in[5].data<uint32_t>(), dq, dk,
                      dv, scale = scale_, p = p_] {
      parallel_units(sh.B * sh.H, [&, sd = seed[0]](size_t a, size_t b) {
        kl_attn::backward_units(sh, q, k, v, probs, g, scale, sd, p, dq, dk, dv, a, b);
      });
    });
  }
  const char* name() const override { return "KaggleLoraAttentionBackward"; }
};

// Dropout, residual add and LayerNorm in one pass: inputs h, res (n x H), w, b (H), seed (1,);
// outputs y = LayerNorm(dropout(h) + res) and s = dropout(h) + res.
class DropAddNormPrimitive : public CpuMulti {
 public:
  DropAddNormPrimitive(Stream s, float p, float eps) : CpuMulti(s), p_(p), eps_(eps) {}
  bool is_equivalent(const Primitive& o) const override {
    auto* a = dynamic_cast<const DropAddNormPrimitive*>(&o);
    return a && std::string(a->name()) == name() && a->p_ == p_ && a->eps_ == eps_;
  }

 protected:
  uint32_t threshold() const {
    double t = static_cast<double>(p_) * 4294967296.0;
    return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
  }
  float scale() const { return p_ < 1.f ? 1.f / (1.f - p_) : 0.f; }
  float p_, eps_;
};

class DropAddNormForward : public DropAddNormPrimitive {
 public:
  using DropAddNormPrimitive::DropAddNormPrimitive;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& outs) override {
    float* y = allocate(outs[0]);
    float* sum = allocate(outs[1]);
    size_t H = in[0].shape(-1);
    launch(in, outs, [h = in[0].data<float>(), res = in[1].data<float>(), w = in[2].data<float>(),
                      b = in[3].data<float>(), seed = in[4].data<uint32_t>(), y, sum, n = outs[0].size(), H,
                      th = threshold(), sc = scale(), eps = eps_] {
      uint32_t sd = seed[0];
      parallel_for(n, H, [&](size_t a, size_t e) {
        dropout_add_norm_rows(h, res, w, b, sum, y, a / H, e / H, H, sd, th, sc, eps);
      });
    });
  }
  const char* name() const override { return "KaggleLoraAddNormForward"; }
};

// Inputs s, w, g (the cotangent of y), seed; outputs ds (the residual's gradient) and dh.
class DropAddNormBackward : public DropAddNormPrimitive {
 public:
  using DropAddNormPrimitive::DropAddNormPrimitive;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& outs) override {
    float* ds = allocate(outs[0]);
    float* dh = allocate(outs[1]);
    size_t H = in[0].shape(-1);
    launch(in, outs, [sum = in[0].data<float>(), w = in[1].data<float>(), g = in[2].data<float>(),
                      seed = in[3].data<uint32_t>(), ds, dh, n = outs[0].size(), H, th = threshold(), sc = scale(),
                      eps = eps_] {
      uint32_t sd = seed[0];
      parallel_for(n, H, [&](size_t a, size_t e) {
        dropout_add_norm_bwd_rows(sum, w, g, ds, dh, a / H, e / H, H, sd, th, sc, eps);
      });
    });
  }
  const char* name() const override { return "KaggleLoraAddNormBackward"; }
};

// The LoRA branch (lora_branch.h). Forward: inputs x (n, in), a (r, in), b (out, r), y (n, out);
// outputs out = y + scale * (x a^T) b^T and xa = x a^T (n, r), which the backward reuses.
class LoraPrimitive : public CpuMulti {
 public:
  LoraPrimitive(Stream s, float scale) : CpuMulti(s), scale_(scale) {}
  bool is_equivalent(const Primitive& o) const override {
    auto* l = dynamic_cast<const LoraPrimitive*>(&o);
    return l && std::string(l->name()) == name() && l->scale_ == scale_;
  }

 protected:
  static kl_lora::Shape shape_of(const array& x, const array& a, const array& b) {
    return {static_cast<size_t>(x.shape(0)), static_cast<size_t>(x.shape(1)), static_cast<size_t>(b.shape(0)),
            static_cast<size_t>(a.shape(0))};
  }
  // One thread below this many multiply-adds: waking a second one costs more than it saves.
  static size_t threads_for(const kl_lora::Shape& sh) {
    size_t work = sh.n * (sh.in + sh.out) * sh.r;
    return work < (size_t(1) << 18) ? 1 : std::max<size_t>(1, std::min(thread_count(), sh.n));
  }
  float scale_;
};

class LoraForward : public LoraPrimitive {
 public:
  using LoraPrimitive::LoraPrimitive;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& outs) override {
    float* out = allocate(outs[0]);
    float* xa = allocate(outs[1]);
    launch(in, outs, [sh = shape_of(in[0], in[1], in[2]), x = in[0].data<float>(), a = in[1].data<float>(),
                      b = in[2].data<float>(), y = in[3].data<float>(), out, xa, scale = scale_] {
      std::vector<float> bt = kl_lora::transpose_b(b, sh);
      auto rows = [&](size_t first, size_t last) {
        kl_lora::forward_rows(sh, x, a, bt.data(), y, scale, xa, out, first, last);
      };
      if (threads_for(sh) <= 1)
        rows(0, sh.n);
      else
        parallel_units(sh.n, rows);
    });
  }
  const char* name() const override { return "KaggleLoraLoraForward"; }
};

// Backward: inputs x, a, b, xa, g (the cotangent of out, n x out); outputs dx (n, in), da (r, in), db (out, r).
class LoraBackward : public LoraPrimitive {
 public:
  using LoraPrimitive::LoraPrimitive;
  void eval_cpu(const std::vector<array>& in, std::vector<array>& outs) override {
    float* dx = allocate(outs[0]);
    float* da = allocate(outs[1]);
    float* db = allocate(outs[2]);
    launch(in, outs, [sh = shape_of(in[0], in[1], in[2]), x = in[0].data<float>(), a = in[1].data<float>(),
                      b = in[2].data<float>(), xa = in[3].data<float>(), g = in[4].data<float>(), dx, da, db,
                      scale = scale_] {
      std::vector<float> bt = kl_lora::transpose_b(b, sh);
      size_t nt = threads_for(sh), chunk = (sh.n + nt - 1) / nt;
      std::vector<float> da_parts(nt * sh.r * sh.in, 0.f), dbt_parts(nt * sh.r * sh.out, 0.f);
      auto part = [&](size_t t) {
        size_t first = t * chunk, last = std::min(sh.n, first + chunk);
        if (first < last)
          kl_lora::backward_rows(sh, x, a, bt.data(), xa, g, scale, dx, da_parts.data() + t * sh.r * sh.in,
                                 dbt_parts.data() + t * sh.r * sh.out, first, last);
      };
      if (nt <= 1)
        part(0);
      else
        parallel_units(nt, [&](size_t t0, size_t t1) {
          for (size_t t = t0; t < t1; ++t) part(t);
        });
      std::copy(da_parts.begin(), da_parts.begin() + sh.r * sh.in, da);
      for (size_t t = 1; t < nt; ++t)
        for (size_t q = 0; q < sh.r * sh.in; ++q) da[q] += da_parts[t * sh.r * sh.in + q];
      for (size_t j = 0; j < sh.out; ++j)
        for (size_t k = 0; k < sh.r; ++k) {
          float sum = 0.f;
          for (size_t t = 0; t < nt; ++t) sum += dbt_parts[t * sh.r * sh.out + k * sh.out + j];
          db[j * sh.r + k] = sum;
        }
    });
  }
  const char* name() const override { return "KaggleLoraLoraBackward"; }
};

// ---------------------------------------------------------------------------------------------
// Ops: the graph-building functions Python calls. The result is float32.

Stream cpu_stream() { return default_stream(Device::cpu); }

array f32(const array& a, const Stream& s) { return contiguous(astype(a, float32, s), false, s); }

array gelu_forward(const array& x) {
  auto s = cpu_stream();
  return array(x.shape(), float32, std::make_shared<GeluForward>(s), {f32(x, s)});
}

array gelu_backward(const array& x, const array& cotangent) {
  auto s = cpu_stream();
  if (x.shape() != cotangent.shape()) throw std::invalid_argument("gelu_backward: x and cotangent differ in shape");
  return array(x.shape(), float32, std::make_shared<GeluBackward>(s), {f32(x, s), f32(cotangent, s)});
}

array softmax_forward(const array& x) {
  auto s = cpu_stream();
  if (x.ndim() == 0 || x.shape(-1) == 0) throw std::invalid_argument("softmax_forward: needs a non-empty last axis");
  return array(x.shape(), float32, std::make_shared<SoftmaxForward>(s), {f32(x, s)});
}

array softmax_backward(const array& y, const array& cotangent) {
  auto s = cpu_stream();
  if (y.shape() != cotangent.shape()) throw std::invalid_argument("softmax_backward: y and cotangent differ in shape");
  return array(y.shape(), float32, std::make_shared<SoftmaxBackward>(s), {f32(y, s), f32(cotangent, s)});
}


void check_norm(const array& x, const array& w, const char* who) {
  if (x.ndim() == 0 || w.ndim() != 1 || w.shape(0) != x.shape(-1))
    throw std::invalid_argument(std::string(who) + ": weight must be 1-D with the size of x's last axis");
}

array layer_norm_forward(const array& x, const array& w, const array& b, float eps) {
  auto s = cpu_stream();
  check_norm(x, w, "layer_norm_forward");
  if (b.shape() != w.shape()) throw std::invalid_argument("layer_norm_forward: bias and weight differ in shape");
  return array(x.shape(), float32, std::make_shared<LayerNormForward>(s, eps), {f32(x, s), f32(w, s), f32(b, s)});
}

array layer_norm_backward(const array& x, const array& w, const array& cotangent, float eps) {
  auto s = cpu_stream();
  check_norm(x, w, "layer_norm_backward");
  if (x.shape() != cotangent.shape()) throw std::invalid_argument("layer_norm_backward: x and cotangent differ in shape");
  return array(x.shape(), float32, std::make_shared<LayerNormBackward>(s, eps), {f32(x, s), f32(w, s), f32(cotangent, s)});
}

array dropout(const array& x, const array& seed, float p) {
  auto s = cpu_stream();
  if (!(p >= 0.f && p < 1.f)) throw std::invalid_argument("dropout: p must be in [0, 1)");
  if (seed.size() != 1) throw std::invalid_argument("dropout: seed must hold one uint32");
  return array(x.shape(), float32, std::make_shared<Dropout>(s, p),
               {f32(x, s), contiguous(astype(seed, uint32, s), false, s)});
}

void check_attention(const array& q, const array& k, const array& v, size_t heads, const char* who) {
  if (q.ndim() != 3 || k.shape() != q.shape() || v.shape() != q.shape())
    throw std::invalid_argument(std::string(who) + ": q, k, v must share one (batch, seq, heads*dim) shape");
  if (heads == 0 || q.shape(2) % heads != 0)
    throw std::invalid_argument(std::string(who) + ": heads must divide the last axis of q");
}

// Returns [out (batch, seq, heads*dim), probs (batch, heads, seq, seq)]; mask is additive (batch, seq).
std::vector<array> attention_forward(const array& q, const array& k, const array& v, const array& mask,
                                     const array& seed, size_t heads, float scale, float p) {
  auto s = cpu_stream();
  check_attention(q, k, v, heads, "attention_forward");
  if (mask.shape() != Shape{q.shape(0), q.shape(1)})
    throw std::invalid_argument("attention_forward: mask must be additive with shape (batch, seq)");
  if (!(p >= 0.f && p < 1.f)) throw std::invalid_argument("attention_forward: p must be in [0, 1)");
  int B = q.shape(0), S = q.shape(1);
  auto prim = std::make_shared<AttentionForward>(s, heads, scale, p);
  return array::make_arrays({q.shape(), Shape{B, static_cast<int>(heads), S, S}}, {float32, float32}, prim,
                            {f32(q, s), f32(k, s), f32(v, s), f32(mask, s), contiguous(astype(seed, uint32, s), false, s)});
}

// Returns [dq, dk, dv] from the forward's probs and the cotangent of out.
std::vector<array> attention_backward(const array& q, const array& k, const array& v, const array& probs,
                                      const array& cotangent, const array& seed, size_t heads, float scale, float p) {
  auto s = cpu_stream();
  check_attention(q, k, v, heads, "attention_backward");
  if (cotangent.shape() != q.shape())
    throw std::invalid_argument("attention_backward: cotangent must have q's shape");
  auto prim = std::make_shared<AttentionBackward>(s, heads, scale, p);
  return array::make_arrays({q.shape(), q.shape(), q.shape()}, {float32, float32, float32}, prim,
                            {f32(q, s), f32(k, s), f32(v, s), f32(probs, s), f32(cotangent, s),
                             contiguous(astype(seed, uint32, s), false, s)});
}


// a @ w.T (transpose_w, w: N x K) or a @ w (w: K x N) [+ bias], w rounded to bf16, a rounded to bf16 inside,
// fp32 accumulation and output. `kernel`: "auto" (AVX512-BF16 when the CPU has it), "portable", "avx512bf16".
array bf16_matmul(const array& a, const array& w, const std::optional<array>& bias, bool transpose_w,
                  const std::string& kernel) {
  auto s = cpu_stream();
  const kl_bf16::Kernel& kern = kl_bf16::select_kernel(kernel);
  if (a.ndim() < 1 || w.ndim() != 2) throw std::invalid_argument("bf16_matmul: a needs >= 1 axis and w exactly 2");
  int K = transpose_w ? w.shape(1) : w.shape(0), N = transpose_w ? w.shape(0) : w.shape(1);
  if (a.shape(-1) != K)
    throw std::invalid_argument("bf16_matmul: a's last axis (" + std::to_string(a.shape(-1)) + ") must equal w's " +
                                (transpose_w ? "second" : "first") + " axis (" + std::to_string(K) + ")");
  std::vector<array> inputs{f32(a, s), contiguous(astype(w, bfloat16, s), false, s)};
  if (bias) {
    if (bias->shape() != Shape{N})
      throw std::invalid_argument("bf16_matmul: bias must have shape (" + std::to_string(N) + ",)");
    inputs.push_back(f32(*bias, s));
  }
  Shape out = a.shape();
  out.back() = N;
  return array(out, float32, std::make_shared<Bf16Matmul>(s, transpose_w, kern), std::move(inputs));
}

void check_lora(const array& x, const array& a, const array& b, const char* who) {
  if (x.ndim() != 2 || a.ndim() != 2 || b.ndim() != 2 || a.shape(1) != x.shape(1) || b.shape(1) != a.shape(0))
    throw std::invalid_argument(std::string(who) + ": expected x (n, in), a (r, in), b (out, r)");
}

// [out, xa]: out = y + scale * (x a^T) b^T, xa = x a^T.
std::vector<array> lora_forward(const array& x, const array& a, const array& b, const array& y, float scale) {
  auto s = cpu_stream();
  check_lora(x, a, b, "lora_forward");
  if (y.shape() != Shape{x.shape(0), b.shape(0)}) throw std::invalid_argument("lora_forward: y must be (n, out)");
  auto prim = std::make_shared<LoraForward>(s, scale);
  return array::make_arrays({y.shape(), Shape{x.shape(0), a.shape(0)}}, {float32, float32}, prim,
                            {f32(x, s), f32(a, s), f32(b, s), f32(y, s)});
}

// [dx, da, db] from the forward's xa and the cotangent g of out.
std::vector<array> lora_backward(const array& x, const array& a, const array& b, const array& xa, const array& g,
                                 float scale) {
  auto s = cpu_stream();
  check_lora(x, a, b, "lora_backward");
  if (g.shape() != Shape{x.shape(0), b.shape(0)} || xa.shape() != Shape{x.shape(0), a.shape(0)})
    throw std::invalid_argument("lora_backward: g must be (n, out) and xa (n, r)");
  auto prim = std::make_shared<LoraBackward>(s, scale);
  return array::make_arrays({x.shape(), a.shape(), b.shape()}, {float32, float32, float32}, prim,
                            {f32(x, s), f32(a, s), f32(b, s), f32(xa, s), f32(g, s)});
}

// [y, s]: y = LayerNorm(dropout(h) + res; w, b, eps), s = dropout(h) + res (kept for the backward).
std::vector<array> add_norm_forward(const array& h, const array& res, const array& w, const array& b,
                                    const array& seed, float p, float eps) {
  auto s = cpu_stream();
  if (h.shape() != res.shape()) throw std::invalid_argument("add_norm_forward: h and res differ in shape");
  check_norm(h, w, "add_norm_forward");
  if (!(p >= 0.f && p < 1.f)) throw std::invalid_argument("add_norm_forward: p must be in [0, 1)");
  auto prim = std::make_shared<DropAddNormForward>(s, p, eps);
  return array::make_arrays({h.shape(), h.shape()}, {float32, float32}, prim,
                            {f32(h, s), f32(res, s), f32(w, s), f32(b, s), contiguous(astype(seed, uint32, s), false, s)});
}

// [ds, dh] from the forward's s and the cotangent g of y.
std::vector<array> add_norm_backward(const array& sum, const array& w, const array& g, const array& seed, float p,
                                     float eps) {
  auto s = cpu_stream();
  if (sum.shape() != g.shape()) throw std::invalid_argument("add_norm_backward: s and g differ in shape");
  check_norm(sum, w, "add_norm_backward");
  auto prim = std::make_shared<DropAddNormBackward>(s, p, eps);
  return array::make_arrays({sum.shape(), sum.shape()}, {float32, float32}, prim,
                            {f32(sum, s), f32(w, s), f32(g, s), contiguous(astype(seed, uint32, s), false, s)});
}

// The attention GEMMs' register block (MR x NR): "8x32" where the build has AVX-512, else "6x16".
std::string attention_block() { return std::to_string(kl_attn::kMR) + "x" + std::to_string(kl_attn::kNR); }

std::string bf16_kernel() { return kl_bf16::select_kernel("auto").name; }

// How many packed weights the bf16 GEMM keeps (bf16_weight_cache.h); clear() drops them all.
size_t bf16_packed_weights(bool clear) {
  if (clear) kl_bf16::packed_weights().clear();
  return kl_bf16::packed_weights().entries();
}

nb::dict cpu_features() {
  const auto& f = kl_bf16::cpu();
  nb::dict d;
  d["avx2"] = f.avx2;
  d["fma"] = f.fma;
  d["avx512f"] = f.avx512f;
  d["avx512_bf16"] = f.avx512_bf16;
  d["os_avx"] = f.os_avx;
  d["os_zmm"] = f.os_zmm;
  return d;
}

}  // namespace

NB_MODULE(KL_MODULE_NAME, m) {
  nb::module_::import_("mlx.core");  // registers mlx.core.array with nanobind (domain "mlx")
  m.def("gelu_forward", &gelu_forward);
  m.def("gelu_backward", &gelu_backward);
  m.def("softmax_forward", &softmax_forward);
  m.def("softmax_backward", &softmax_backward);
  m.def("layer_norm_forward", &layer_norm_forward);
  m.def("layer_norm_backward", &layer_norm_backward);
  m.def("dropout", &dropout);
  m.def("attention_forward", &attention_forward);
  m.def("attention_backward", &attention_backward);
  m.def("bf16_matmul", &bf16_matmul, nb::arg("a"), nb::arg("w"), nb::arg("bias").none() = nb::none(),
        nb::arg("transpose_w") = true, nb::arg("kernel") = "auto");
  m.def("bf16_kernel", &bf16_kernel);
  m.def("attention_block", &attention_block);
  m.def("bf16_packed_weights", &bf16_packed_weights, nb::arg("clear") = false);
  m.def("lora_forward", &lora_forward);
  m.def("lora_backward", &lora_backward);
  m.def("add_norm_forward", &add_norm_forward);
  m.def("add_norm_backward", &add_norm_backward);
  m.def("cpu_features", &cpu_features);
  m.def("threads", &thread_count);
#ifdef KL_OPENMP
  m.attr("threading") = "openmp";
#else
  m.attr("threading") = "std::thread";
#endif
}
