// MLX primitives with one output: GELU, softmax, LayerNorm and dropout (elementwise.h's kernels spread over
// the threads) and the bf16 GEMM of a frozen weight (bf16_gemm.h). CPU only: eval_gpu throws.

#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

#include "bf16_gemm.h"
#include "bf16_weight_cache.h"
#include "elementwise.h"
#include "threads.h"

namespace kl_prim {

using namespace mlx::core;
using namespace kl_elem;
using kl_threads::gemm_parallel;
using kl_threads::parallel_for;
using kl_threads::parallel_units;
using kl_threads::thread_count;

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

}  // namespace kl_prim
