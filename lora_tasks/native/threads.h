// Threads for the native kernels: the BLAS's OpenMP pool when built with KL_OPENMP (so the threads that just
// ran a GEMM pick the work up instead of spinning against it), else plain std::threads, and for the bf16 GEMM
// the persistent workers of worker_pool.h.

#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <thread>
#include <vector>

#ifdef KL_OPENMP
#include <omp.h>
#endif

#include "worker_pool.h"

namespace kl_threads {

constexpr size_t kMinSplit = 1 << 15;  // below this a second thread costs more than it saves

// ---------------------------------------------------------------------------------------------
// Threads: the BLAS's OpenMP pool when built with KL_OPENMP, else plain std::threads.

inline size_t thread_count() {
#ifdef KL_OPENMP
  return static_cast<size_t>(omp_get_max_threads());
#else
  static const size_t n = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  return n;
#endif
}

// Runs f(begin, end) over [0, n) in chunks that are multiples of `align` (a row length).
template <class F>
inline void parallel_for(size_t n, size_t align, F&& f) {
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
// Runs f(first, last) over [0, n) work units split evenly over the threads (units are big here).
template <class F>
inline void parallel_units(size_t n, F&& f) {
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

// parallel_units for the bf16 GEMM: on the persistent workers of worker_pool.h where there is no OpenMP pool.
template <class F>
inline void gemm_parallel(size_t n, F&& f) {
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

}  // namespace kl_threads
