// Reusable host staging memory under a byte budget, handed out in fixed-size
// chunks: a ring that the snapshot copy fills and the writer empties.
#pragma once

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ackpt {
namespace engine {

// One chunk, owned by the pool, lent to one save at a time.
struct StagingChunk {
  uint8_t* data = nullptr;
  bool cuda_pinned = false;  // allocated through LibTorch's pinned-memory allocator
  bool locked = false;       // mlock succeeded
  at::Tensor pinned;         // owns the memory when cuda_pinned
};

struct StagingOptions {
  // Upper bound on the bytes of all chunks. 0: automatic, grown by
  // NoteStateBytes to min(2 x the largest state, a quarter of the memory the
  // process may use), and never below kMinAutoChunks chunks.
  uint64_t budget = 0;
  // Size of every chunk; a multiple of 64 bytes (StagingChunkBytes).
  uint64_t chunk_bytes = uint64_t{4} << 20;
  // Page-lock chunks (mlock) while the locked total stays within
  // RLIMIT_MEMLOCK; beyond it (or if mlock fails) chunks stay pageable and
  // `warn` is called once.
  bool pin = true;
  // Memory the process may use (0: physical memory, or the cgroup limit if
  // lower). Tests set it.
  uint64_t memory_bytes = 0;
  // Page-locking limit (0: RLIMIT_MEMLOCK, UINT64_MAX if unlimited). Tests set it.
  uint64_t memlock_limit = 0;
  std::function<void(const std::string&)> warn;
};

// The staging chunk size for frames of `frame_bytes` under `budget` (0 =
// automatic): one frame (so frames never straddle chunks), unless that is
// over the cap of 64 MiB or, with an explicit budget, an eighth of it (so
// even a small budget holds a ring of 8 chunks), or not a multiple of 64
// bytes; then the cap or the frame rounded down to 64 KiB; never below
// 64 KiB. Throws kInvalidArgument for a budget below two chunks of 64 KiB.
uint64_t StagingChunkBytes(uint64_t frame_bytes, uint64_t budget);

class StagingPool {
 public:
  static constexpr uint64_t kMinAutoChunks = 4;

  explicit StagingPool(StagingOptions options);
  ~StagingPool();  // every chunk must have been returned

  uint64_t chunk_bytes() const { return chunk_; }
  size_t ChunksFor(uint64_t bytes) const {
    return static_cast<size_t>((bytes + chunk_ - 1) / chunk_);
  }
  // With the automatic budget: grows it for a state of `bytes`.
  void NoteStateBytes(uint64_t bytes);

  // Appends `n` chunks to *out if that many are free or allocatable within
  // the budget right now; otherwise takes none. Never waits.
  bool TryAcquire(size_t n, bool cuda_pinned, std::vector<StagingChunk*>* out);
  // One chunk; if none is free, waits for one (*waited = true, counted in
  // chunk_waits()) or, with wait = false, returns null.
  StagingChunk* Acquire(bool cuda_pinned, bool wait, bool* waited = nullptr);
  void Release(StagingChunk* chunk);

  size_t budget_chunks() const;
  size_t chunks_in_use() const;
  size_t chunks_in_use_peak() const;
  uint64_t chunk_waits() const;
  uint64_t reserved() const;  // bytes allocated (in use + free)
  uint64_t peak() const;      // most bytes ever allocated at once
  uint64_t budget() const;
  uint64_t allocations() const;  // chunks allocated over the pool's life
  uint64_t locked_bytes() const;
  // The page-locking warning is given once per process; tests reset it.
  static void ResetMemlockWarningForTesting();

 private:
  // Takes a free chunk of the right kind, else allocates one within the
  // budget (freeing an idle one of the other kind to make room). Null if
  // neither is possible. Called with mu_ held; may unlock it to allocate.
  StagingChunk* TakeLocked(bool cuda_pinned, std::unique_lock<std::mutex>* lock);
  StagingChunk* Allocate(bool cuda_pinned);
  void Free(StagingChunk* chunk);
  size_t BudgetChunksLocked() const;

  const StagingOptions options_;
  const uint64_t chunk_;
  uint64_t memlock_limit_ = 0;
  uint64_t auto_cap_ = 0;  // the automatic budget never exceeds this
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t budget_ = 0;
  size_t allocated_ = 0;  // chunks allocated (in use + free) or being allocated
  size_t in_use_ = 0;
  size_t in_use_peak_ = 0;
  uint64_t peak_ = 0;
  uint64_t allocations_ = 0;
  uint64_t waits_ = 0;
  uint64_t locked_ = 0;
  std::vector<std::unique_ptr<StagingChunk>> all_;  // every allocated chunk
  std::vector<StagingChunk*> free_;
};

}  // namespace engine
}  // namespace ackpt
