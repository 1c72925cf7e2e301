#include "engine/staging_pool.h"

#include <ATen/ATen.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>

#include "ackpt/error.h"

namespace ackpt {
namespace engine {

namespace {
constexpr uint64_t kMinChunk = uint64_t{64} << 10;
constexpr uint64_t kMaxChunk = uint64_t{64} << 20;
constexpr uint64_t kChunksInExplicitBudget = 8;

std::string MiB(uint64_t n) { return std::to_string((n + (1 << 19)) >> 20) + " MiB"; }

// Physical memory, or the cgroup (v2, then v1) limit when it is lower:
// in a container the host's memory is not the process's to take.
uint64_t UsableMemory() {
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGE_SIZE);
  uint64_t mem = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)
                                       : uint64_t{8} << 30;
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    uint64_t limit = 0;
    if (in >> limit && limit > 0) mem = std::min(mem, limit);  // "max" does not parse
  }
  return mem;
}

// One warning per process: every checkpointer (and every rank's) hits the
// same limit, and one line with the fix says all there is to say.
std::atomic<bool> g_memlock_warned{false};

// The exact fix for a page-locking limit of `limit` bytes when `want` are needed.
std::string MemlockFix(uint64_t want) {
  const uint64_t kib = (want + 1023) / 1024;
  return "To page-lock all of it, raise RLIMIT_MEMLOCK to at least " + std::to_string(kib) +
         " KiB before training starts: `ulimit -l " + std::to_string(kib) +
         "` (or `ulimit -l unlimited`) in the shell that launches it, `LimitMEMLOCK=infinity` "
         "in a systemd unit, `--ulimit memlock=-1` for `docker run`, or a `memlock` line in "
         "/etc/security/limits.conf; or set pin_host_memory = false to use pageable staging "
         "(this warning is shown once per process)";
}

uint64_t MemlockLimit() {
  rlimit r{};
  if (::getrlimit(RLIMIT_MEMLOCK, &r) != 0 || r.rlim_cur == RLIM_INFINITY)
    return std::numeric_limits<uint64_t>::max();
  return static_cast<uint64_t>(r.rlim_cur);
}
}  // namespace

uint64_t StagingChunkBytes(uint64_t frame_bytes, uint64_t budget) {
  if (budget != 0 && budget < 2 * kMinChunk) {
    throw Error::InvalidArgument("staging_budget_bytes " + std::to_string(budget) +
                                 " is below the minimum of two 64 KiB staging chunks (131072)");
  }
  uint64_t cap = kMaxChunk;
  if (budget != 0) cap = std::min(cap, std::max(kMinChunk, budget / kChunksInExplicitBudget));
  // One frame per chunk: a frame never straddles two chunks, so it
  // compresses straight from staging.
  if (frame_bytes >= kMinChunk && frame_bytes % 64 == 0 && frame_bytes <= cap) return frame_bytes;
  const uint64_t c = std::min(std::max(frame_bytes, kMinChunk), cap);
  return std::max(kMinChunk, c / kMinChunk * kMinChunk);
}

StagingPool::StagingPool(StagingOptions options)
    : options_(std::move(options)), chunk_(options_.chunk_bytes) {
  if (chunk_ == 0 || chunk_ % 64 != 0)
    throw Error::InvalidArgument("staging chunk size must be a positive multiple of 64 bytes");
  memlock_limit_ = options_.memlock_limit ? options_.memlock_limit : MemlockLimit();
  const uint64_t memory = options_.memory_bytes ? options_.memory_bytes : UsableMemory();
  // A quarter of memory: the live state, the trainer's own working memory and
  // the page cache the writer fills need the rest.
  auto_cap_ = std::max(memory / 4, kMinAutoChunks * chunk_);
  budget_ = options_.budget;
  if (budget_ == 0) budget_ = kMinAutoChunks * chunk_;
}

StagingPool::~StagingPool() {
  for (auto& c : all_) Free(c.get());
}

void StagingPool::NoteStateBytes(uint64_t bytes) {
  if (options_.budget != 0) return;
  // Room for two states: one being written while the next is staged.
  const uint64_t want = std::min(2 * ChunksFor(bytes) * chunk_, auto_cap_ / chunk_ * chunk_);
  std::lock_guard<std::mutex> lock(mu_);
  if (want > budget_) {
    budget_ = want;
    cv_.notify_all();
  }
}

size_t StagingPool::BudgetChunksLocked() const {
  return static_cast<size_t>(std::max<uint64_t>(2, budget_ / chunk_));
}

size_t StagingPool::budget_chunks() const {
  std::lock_guard<std::mutex> lock(mu_);
  return BudgetChunksLocked();
}
size_t StagingPool::chunks_in_use() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_;
}
size_t StagingPool::chunks_in_use_peak() const {
  std::lock_guard<std::mutex> lock(mu_);
  return in_use_peak_;
}
uint64_t StagingPool::chunk_waits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waits_;
}
uint64_t StagingPool::reserved() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocated_ * chunk_;
}
uint64_t StagingPool::peak() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}
uint64_t StagingPool::budget() const {
  std::lock_guard<std::mutex> lock(mu_);
  return BudgetChunksLocked() * chunk_;
}
uint64_t StagingPool::allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocations_;
}
uint64_t StagingPool::locked_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return locked_;
}

StagingChunk* StagingPool::Allocate(bool cuda_pinned) {
  auto c = std::make_unique<StagingChunk>();
  if (cuda_pinned) {
    // Pinned once and reused: never a cudaHostAlloc per save.
    c->pinned = at::empty({static_cast<int64_t>(chunk_)},
                          at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    c->data = static_cast<uint8_t*>(c->pinned.data_ptr());
    c->cuda_pinned = true;
    c->locked = true;
    return c.release();
  }
  // MAP_POPULATE faults the pages in now, once, instead of during a copy.
  void* p = ::mmap(nullptr, chunk_, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED)
    throw Error::IO("mmap", "staging chunk of " + std::to_string(chunk_) + " bytes", errno);
  c->data = static_cast<uint8_t*>(p);
  if (!options_.pin) return c.release();
  std::string why;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (locked_ + chunk_ <= memlock_limit_) {
      locked_ += chunk_;  // claimed before mlock, so concurrent allocations stay within the limit
      c->locked = true;
    } else if (!g_memlock_warned.exchange(true)) {
      why = "page-locking staging memory stops at RLIMIT_MEMLOCK (" + MiB(memlock_limit_) +
            "): " + MiB(locked_) + " are locked, further staging chunks stay pageable. " +
            MemlockFix(std::max(budget_, locked_ + chunk_));
    }
  }
  if (c->locked && ::mlock(p, chunk_) != 0) {
    const int err = errno;
    std::lock_guard<std::mutex> lock(mu_);
    locked_ -= chunk_;
    c->locked = false;
    if (!g_memlock_warned.exchange(true)) {
      why = std::string("cannot page-lock staging memory (mlock: ") + std::strerror(err) +
            "); using pageable memory. " + MemlockFix(std::max(budget_, locked_ + chunk_));
    }
  }
  if (!why.empty() && options_.warn) options_.warn(why);
  return c.release();
}

void StagingPool::ResetMemlockWarningForTesting() { g_memlock_warned.store(false); }

void StagingPool::Free(StagingChunk* c) {
  if (c->cuda_pinned) {
    c->pinned = at::Tensor();
  } else if (c->data != nullptr) {
    ::munmap(c->data, chunk_);  // also unlocks
    if (c->locked) {
      std::lock_guard<std::mutex> lock(mu_);
      locked_ -= chunk_;
    }
  }
  c->data = nullptr;
}

StagingChunk* StagingPool::TakeLocked(bool cuda_pinned, std::unique_lock<std::mutex>* lock) {
  auto it = std::find_if(free_.begin(), free_.end(),
                         [&](StagingChunk* c) { return c->cuda_pinned == cuda_pinned; });
  if (it == free_.end() && allocated_ >= BudgetChunksLocked()) {
    // Make room: an idle chunk of the other kind goes.
    auto other = std::find_if(free_.begin(), free_.end(),
                              [&](StagingChunk* c) { return c->cuda_pinned != cuda_pinned; });
    if (other == free_.end()) return nullptr;
    StagingChunk* victim = *other;
    free_.erase(other);
    --allocated_;
    auto owned =
        std::find_if(all_.begin(), all_.end(), [&](const auto& p) { return p.get() == victim; });
    std::unique_ptr<StagingChunk> gone = std::move(*owned);
    all_.erase(owned);
    lock->unlock();
    Free(gone.get());
    lock->lock();
    return TakeLocked(cuda_pinned, lock);
  }
  StagingChunk* c = nullptr;
  if (it != free_.end()) {
    c = *it;
    free_.erase(it);
  } else {
    ++allocated_;  // claimed before allocating outside the lock
    peak_ = std::max<uint64_t>(peak_, allocated_ * chunk_);
    ++allocations_;
    lock->unlock();
    try {
      c = Allocate(cuda_pinned);
    } catch (...) {
      lock->lock();
      --allocated_;
      cv_.notify_all();
      throw;
    }
    lock->lock();
    all_.emplace_back(c);
  }
  ++in_use_;
  in_use_peak_ = std::max(in_use_peak_, in_use_);
  return c;
}

bool StagingPool::TryAcquire(size_t n, bool cuda_pinned, std::vector<StagingChunk*>* out) {
  std::unique_lock<std::mutex> lock(mu_);
  size_t matching = 0;
  for (StagingChunk* c : free_) matching += c->cuda_pinned == cuda_pinned;
  const size_t room = BudgetChunksLocked() - std::min(BudgetChunksLocked(), allocated_);
  // Idle chunks of the other kind can be freed to make room.
  const size_t other = free_.size() - matching;
  if (matching + room + other < n) return false;
  for (size_t i = 0; i < n; ++i) {
    StagingChunk* c = TakeLocked(cuda_pinned, &lock);
    if (c == nullptr) {  // cannot happen with the count above; undo to keep all-or-nothing
      for (size_t j = out->size() - i; j < out->size(); ++j) free_.push_back((*out)[j]);
      in_use_ -= i;
      out->resize(out->size() - i);
      cv_.notify_all();
      return false;
    }
    out->push_back(c);
  }
  return true;
}

StagingChunk* StagingPool::Acquire(bool cuda_pinned, bool wait, bool* waited) {
  std::unique_lock<std::mutex> lock(mu_);
  bool counted = false;
  for (;;) {
    if (StagingChunk* c = TakeLocked(cuda_pinned, &lock)) {
      if (waited) *waited = counted;
      return c;
    }
    if (!wait) return nullptr;
    if (!counted) {
      ++waits_;
      counted = true;
    }
    cv_.wait(lock);
  }
}

void StagingPool::Release(StagingChunk* chunk) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(chunk);
  --in_use_;
  cv_.notify_all();
}

}  // namespace engine
}  // namespace ackpt
