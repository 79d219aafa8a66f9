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
// This file holds the ops Python calls (they check shapes and build the graph) and the module; the primitives
// are in unary_primitives.h and multi_primitives.h, their kernels in elementwise.h, attention.h, bf16_gemm.h and
// lora_branch.h, the threads in threads.h. Built and loaded by lora_tasks/native/builder.py; CPU only (eval_gpu
// throws).

#include <optional>
#include <string>
#include <stdexcept>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "mlx/mlx.h"

#include "multi_primitives.h"
#include "unary_primitives.h"

namespace nb = nanobind;
using namespace mlx::core;

namespace {

using namespace kl_prim;  // the primitives (unary_primitives.h, multi_primitives.h)
using kl_threads::thread_count;

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
