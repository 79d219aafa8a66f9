// Element math shared by the native kernels, written once for a float and for GCC vector types
// (`vector_size`), so the vectorized loops and their scalar tails compute the same numbers.
//
// exp(x) for x <= 0 as Taylor_7(x/256)^256 (multiply-adds only, the same as lora_tasks/models/ops.py),
// and the dropout hash: lowbias32 (Chris Wellons) of the element index and a per-call seed, so a
// dropout mask is a pure function of (seed, index) and the backward regenerates it.

#pragma once

#include <cstdint>
#include <type_traits>

namespace kl_math {

// max(x, lo) lane by lane (a NaN x stays NaN, as in the scalar `x < lo ? lo : x`).
template <class T>
inline T at_least(T x, float lo) {
  if constexpr (std::is_same_v<T, float>) {
    return x < lo ? lo : x;
  } else {
    T l = lo - T{};
    return x < l ? l : x;
  }
}

template <class T>
inline T exp_nonpositive(T x) {
  x = at_least(x, -80.f);
  x *= (1.f / 256.f);
  T p = x * (1.f / 5040.f) + (1.f / 720.f);
  p = p * x + (1.f / 120.f);
  p = p * x + (1.f / 24.f);
  p = p * x + (1.f / 6.f);
  p = p * x + 0.5f;
  p = p * x + 1.f;
  p = p * x + 1.f;
  for (int i = 0; i < 8; ++i) p = p * p;
  return p;
}

template <class U>
inline U mix(U i, uint32_t seed) {
  U h = i * 0x9E3779B9u + seed;
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

}  // namespace kl_math
