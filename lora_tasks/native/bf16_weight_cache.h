// Packed frozen weights kept between bf16 GEMM calls (bf16_gemm.h packs B into the micro-kernel's panels).
//
// Why: a frozen base weight is the same array on every step, in the forward (B = W^T) and in the input
// gradient (B = W), so packing it on every call re-reads and rewrites the whole weight for nothing.
//
// Why it is safe to key an entry by the weight's data pointer: the entry holds a reference to the weight's
// buffer (MLX's array::Data). While it does, the buffer can be neither freed (so no other array can get the
// same address) nor donated to an op's output (MLX writes into an input's buffer only when nothing else
// references it), so the bytes at that pointer cannot change. An entry whose buffer nobody but the cache
// references can never be asked for again and is dropped on the next call; past kMaxBytes the least
// recently used go.

#pragma once

#include <list>
#include <memory>
#include <mutex>

#include "bf16_gemm.h"

namespace kl_bf16 {

class PackedWeightCache {
 public:
  static constexpr size_t kMaxBytes = size_t(1) << 30;

  // The packed B of the weight at `ptr` (bf16, N x K if w_nk else K x N) whose buffer `owner` holds;
  // `pack()` makes it on a miss (outside the lock: other GEMMs go on meanwhile).
  template <class Pack>
  std::shared_ptr<const PackedB> get(const std::shared_ptr<void>& owner, const void* ptr, size_t N, size_t K, bool w_nk,
                                     const Kernel& kern, Pack&& pack) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      prune();
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->ptr == ptr && it->n == N && it->k == K && it->w_nk == w_nk && it->kern == &kern &&
            it->owner == owner) {
          entries_.splice(entries_.begin(), entries_, it);  // most recently used first
          return it->packed;
        }
      }
    }
    std::shared_ptr<const PackedB> packed = pack();
    std::lock_guard<std::mutex> lock(mu_);
    entries_.push_front(Entry{owner, ptr, N, K, w_nk, &kern, packed});
    bytes_ += packed->bytes();
    while (bytes_ > kMaxBytes && entries_.size() > 1) {
      bytes_ -= entries_.back().packed->bytes();
      entries_.pop_back();
    }
    return packed;
  }

  size_t entries() {
    std::lock_guard<std::mutex> lock(mu_);
    prune();
    return entries_.size();
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    entries_.clear();
    bytes_ = 0;
  }

 private:
  struct Entry {
    std::shared_ptr<void> owner;
    const void* ptr;
    size_t n, k;
    bool w_nk;
    const Kernel* kern;
    std::shared_ptr<const PackedB> packed;
  };

  // Drops the entries whose weight only the cache still references (one reference per entry of that weight:
  // its forward and input-gradient packings): nobody can pass that weight again.
  void prune() {
    for (auto it = entries_.begin(); it != entries_.end();) {
      long held = 0;
      for (const Entry& e : entries_) held += e.owner == it->owner;
      if (it->owner.use_count() <= held) {
        bytes_ -= it->packed->bytes();
        it = entries_.erase(it);
      } else {
        ++it;
      }
    }
  }

  std::mutex mu_;
  std::list<Entry> entries_;
  size_t bytes_ = 0;
};

inline PackedWeightCache& packed_weights() {
  static PackedWeightCache cache;
  return cache;
}

}  // namespace kl_bf16
