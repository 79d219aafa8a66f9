// MLX primitives with several outputs: attention (attention.h), dropout + residual add + LayerNorm
// (elementwise.h) and the LoRA branch (lora_branch.h), forward and backward. CPU only: eval_gpu throws.

#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/mlx.h"
#include "mlx/primitives.h"

#include "attention.h"
#include "elementwise.h"
#include "lora_branch.h"
#include "threads.h"

namespace kl_prim {

using namespace mlx::core;
using namespace kl_elem;
using kl_threads::parallel_for;
using kl_threads::parallel_units;
using kl_threads::thread_count;

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

}  // namespace kl_prim
