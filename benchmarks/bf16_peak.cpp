// The machine's ceiling for bf16 GEMMs: vdpbf16ps on registers only (24 independent accumulators, no memory),
// on one thread and then on `threads` at once. Printed as JSON: {"one": GFLOP/s, "all": GFLOP/s}.
// Built and run by bf16_gemm.py where the CPU has avx512_bf16; a GEMM at this rate wastes no cycle.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

static double seconds_for(long iters) {
  __m512 acc[24];
  for (auto& a : acc) a = _mm512_setzero_ps();
  __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = a;
  const auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 24
    for (auto& c : acc) c = _mm512_dpbf16_ps(c, a, b);
    __asm__ volatile("" : "+v"(a));  // keeps the loop from being folded
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  float sum = 0;
  for (auto& c : acc) sum += _mm512_reduce_add_ps(c);
  if (sum == 1.2345f) std::puts("");  // uses the result
  return s;
}

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  const long iters = 20000000;
  const double flops = iters * 24 * 64.0;  // 16 lanes x 2 products x 2 flops per vdpbf16ps
  const double one = flops / seconds_for(iters) / 1e9;
  std::vector<double> secs(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { secs[t] = seconds_for(iters); });
  for (auto& t : pool) t.join();
  std::printf("{\"one\": %.1f, \"all\": %.1f}\n", one, threads * flops / *std::max_element(secs.begin(), secs.end()) / 1e9);
}
