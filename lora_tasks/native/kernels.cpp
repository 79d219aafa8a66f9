// kaggle-lora CPU kernels: MLX primitives for the element-wise work of a BERT train step
// (GELU, softmax, LayerNorm, dropout; forward and backward).
//
// Why: on MLX's CPU backend, element-wise ops run on one thread, and its JIT-compiled fused
// kernels are scalar loops (NaN-aware min/max/select do not vectorize) that MLX splits into
// several passes over memory. These primitives do the same math in one AVX pass per tensor,
// spread over the cores: with MKL on the BLAS's own OpenMP runtime (so the threads that just ran
// a GEMM pick the work up instead of spinning against it), else on plain std::threads. Math matches lora_tasks/models/ops.py:
// the rational erf (Eigen's coefficients) and exp as Taylor_7(x/256)^256.
//
// Built and loaded by lora_tasks/native/builder.py; CPU only (eval_gpu throws).

#include <cmath>
#include <cstdint>
#include <string>
#include <stdexcept>
#include <thread>
#include <vector>

#include <nanobind/nanobind.h>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

#ifdef KL_OPENMP
#include <omp.h>
#endif

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

inline float exp_nonpositive(float x) {
  x = x < -80.f ? -80.f : x;
  x *= (1.f / 256.f);
  float p = x * (1.f / 5040.f) + (1.f / 720.f);
  p = p * x + (1.f / 120.f);
  p = p * x + (1.f / 24.f);
  p = p * x + (1.f / 6.f);
  p = p * x + 0.5f;
  p = p * x + 1.f;
  p = p * x + 1.f;
  for (int i = 0; i < 8; ++i) p = p * p;
  return p;
}

// lowbias32 (Chris Wellons) of the element index and a per-call seed: the dropout mask is a pure
// function of (seed, index), so backward regenerates it instead of keeping it in memory.
inline uint32_t mix(uint32_t i, uint32_t seed) {
  uint32_t h = i * 0x9E3779B9u + seed;
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

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
  m.def("threads", &thread_count);
#ifdef KL_OPENMP
  m.attr("threading") = "openmp";
#else
  m.attr("threading") = "std::thread";
#endif
}
