// Persistent worker threads for the bf16 GEMM where there is no OpenMP pool (threads.h's std::thread path).
//
// Why: a thread spawned per call is placed by the scheduler when it starts, and while the other core's recent
// load still counts as busy (just after the process or another one ran there), it lands on the caller's core:
// both halves of the GEMM then share one core for the whole call. A worker that lives across calls is moved
// to the idle core once and stays there, and a call costs a wake-up instead of a thread creation. Both sides of a
// call spin for up to kSpinMicros before sleeping on the condition variable: the caller for the workers' last rows,
// a worker for the next call. A train step's GEMMs come in bursts, and waking a sleeping worker (a halted vCPU on a
// VM) cost the bf16 GEMM a few percent at MiniLM's shapes, as much as the gap to oneDNN, whose OpenMP threads spin
// between calls. Only briefly: the cores are shared with the rest of the step and with other processes, and a
// worker that finds no call within kSpinMicros sleeps.
//
// A forked child does not inherit the workers: after fork() the pool is never used again in that process
// (callers fall back to spawning threads).

#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>

namespace kl_pool {

class Pool {
 public:
  explicit Pool(size_t workers) : workers_(workers) {
    for (size_t i = 0; i < workers; ++i) std::thread([this, i] { loop(i + 1); }).detach();  // live until exit
  }
  size_t size() const { return workers_ + 1; }

  // Runs job(t) for t in [0, n), t = 0 on the calling thread; n <= size(). Returns false, running nothing, when
  // another call is using the pool (the caller then uses threads of its own).
  bool try_run(size_t n, const std::function<void(size_t)>& job) {
    std::unique_lock<std::mutex> busy(run_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = &job;
      n_ = n;
      pending_ = n - 1;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    job(0);
    // The bf16 GEMM shares out its rows so that the threads end within a few microseconds of each other, less than
    // a wake-up from the condition variable takes: wait for the workers spinning, for a while, before sleeping.
    spin_while([&] { return pending_.load(std::memory_order_acquire) != 0; });
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    job_ = nullptr;
    return true;
  }

 private:
  void loop(size_t t) {
    size_t seen = 0;
    for (;;) {
      const std::function<void(size_t)>* job = nullptr;
      spin_while([&] { return generation_.load(std::memory_order_acquire) == seen; });
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        seen = generation_.load(std::memory_order_acquire);
        if (t >= n_) continue;  // not needed by this call
        job = job_;
      }
      (*job)(t);
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  static constexpr int kSpinMicros = 100;
  // Spins while `waiting()` holds, for at most kSpinMicros.
  template <class Waiting>
  static void spin_while(Waiting&& waiting) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
    while (waiting() && std::chrono::steady_clock::now() < until) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  }

  size_t workers_;
  std::mutex run_mu_, mu_;
  std::condition_variable wake_, done_;
  const std::function<void(size_t)>* job_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> generation_{0};  // calls so far; written under mu_, read without it by a spinning worker
  std::atomic<size_t> pending_{0};  // workers still running the job; read without the lock while the caller spins
};

inline std::atomic<bool>& forked() {
  static std::atomic<bool> f{false};
  return f;
}

// The process's pool of `threads` - 1 workers, made on first use; null in a forked child.
inline Pool* pool(size_t threads) {
  static Pool* p = [threads] {
    pthread_atfork(nullptr, nullptr, [] { forked() = true; });
    return threads > 1 ? new Pool(threads - 1) : nullptr;  // never deleted: the workers run until exit
  }();
  return forked() ? nullptr : p;
}

}  // namespace kl_pool
