// What the CPU has and what the OS saves on a context switch, from cpuid and xgetbv: the bf16 GEMM picks its
// micro-kernel from it at run time (bf16_gemm.h), and the extension reports it (kernels.cpp's cpu_features).
// Why cpuid and not compiler flags: a kernel built for the build machine's flags could raise SIGILL on another
// CPU, and an OS that does not save ZMM state makes AVX-512 unusable whatever the CPU has.

#pragma once

#if defined(__x86_64__) || defined(__i386__)
#define KL_X86 1
#include <cpuid.h>
#endif

namespace kl_bf16 {

struct CpuFeatures {
  bool avx2 = false, fma = false, avx512f = false, avx512_bf16 = false;
  bool os_avx = false;  // XCR0 saves YMM state
  bool os_zmm = false;  // XCR0 saves opmask and ZMM state
  bool avx512_bf16_usable() const { return avx512f && avx512_bf16 && os_avx && os_zmm; }
};

inline CpuFeatures detect_cpu() {
  CpuFeatures f;
#ifdef KL_X86
  unsigned a = 0, b = 0, c = 0, d = 0;
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 1) return f;
  __cpuid(1, a, b, c, d);
  f.fma = (c >> 12) & 1u;
  bool osxsave = (c >> 27) & 1u;
  if (osxsave) {
    unsigned xcr0_lo = 0, xcr0_hi = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    f.os_avx = (xcr0_lo & 0x6u) == 0x6u;
    f.os_zmm = (xcr0_lo & 0xe6u) == 0xe6u;
  }
  if (max_leaf < 7) return f;
  __cpuid_count(7, 0, a, b, c, d);
  unsigned max_sub = a;
  f.avx2 = (b >> 5) & 1u;
  f.avx512f = (b >> 16) & 1u;
  if (max_sub >= 1) {
    __cpuid_count(7, 1, a, b, c, d);
    f.avx512_bf16 = (a >> 5) & 1u;
  }
#endif
  return f;
}

inline const CpuFeatures& cpu() {
  static const CpuFeatures f = detect_cpu();
  return f;
}

}  // namespace kl_bf16
