#include "engine/staging_pool.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "ackpt/error.h"

namespace ackpt {
namespace engine {

namespace {
// Capacities are rounded up so slightly different checkpoint sizes reuse the
// same buffers.
constexpr uint64_t kGranule = uint64_t{2} << 20;
uint64_t RoundUp(uint64_t n) {
  return (std::max<uint64_t>(n, 1) + kGranule - 1) / kGranule * kGranule;
}
}  // namespace

StagingLease::~StagingLease() { pool_->Release(buffer_); }

StagingPool::StagingPool(uint64_t budget, bool pin, std::function<void(const std::string&)> warn)
    : explicit_budget_(budget), pin_(pin), warn_(std::move(warn)), budget_(budget) {}

StagingPool::~StagingPool() {
  for (auto& b : free_) Free(b.get());
  for (auto& b : in_use_) Free(b.get());  // only reachable if a lease leaked
}

uint64_t StagingPool::reserved() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reserved_;
}
uint64_t StagingPool::peak() const {
  std::lock_guard<std::mutex> lock(mu_);
  return peak_;
}
uint64_t StagingPool::budget() const {
  std::lock_guard<std::mutex> lock(mu_);
  return budget_;
}
uint64_t StagingPool::allocations() const {
  std::lock_guard<std::mutex> lock(mu_);
  return allocations_;
}

StagingBuffer* StagingPool::Allocate(uint64_t capacity, bool cuda_pinned) {
  auto b = std::make_unique<StagingBuffer>();
  b->capacity = capacity;
  if (cuda_pinned) {
    b->pinned = at::empty({static_cast<int64_t>(capacity)},
                          at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    b->data = static_cast<uint8_t*>(b->pinned.data_ptr());
    b->cuda_pinned = true;
    b->locked = true;
  } else {
    // MAP_POPULATE faults the pages in now, once, instead of during a copy.
    void* p = ::mmap(nullptr, capacity, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED)
      throw Error::IO("mmap", "staging buffer of " + std::to_string(capacity) + " bytes", errno);
    b->data = static_cast<uint8_t*>(p);
    if (pin_) {
      if (::mlock(p, capacity) == 0) {
        b->locked = true;
      } else {
        const int err = errno;
        bool warn = false;
        {
          std::lock_guard<std::mutex> lock(mu_);
          warn = !warned_;
          warned_ = true;
        }
        if (warn && warn_) {
          warn_(std::string("cannot page-lock staging memory (mlock: ") + std::strerror(err) +
                "); using pageable memory. Raise RLIMIT_MEMLOCK or set pin_host_memory = false.");
        }
      }
    }
  }
  return b.release();
}

void StagingPool::Free(StagingBuffer* b) {
  if (b->cuda_pinned) {
    b->pinned = at::Tensor();
  } else if (b->data != nullptr) {
    ::munmap(b->data, b->capacity);  // also unlocks
  }
  b->data = nullptr;
}

std::unique_ptr<StagingLease> StagingPool::Acquire(uint64_t n, bool cuda_pinned, bool wait) {
  const uint64_t need = RoundUp(n);
  std::unique_lock<std::mutex> lock(mu_);
  if (explicit_budget_ == 0) {
    budget_ = std::max(budget_, 2 * need);
  } else if (need > explicit_budget_) {
    throw Error::InvalidArgument("a checkpoint needs " + std::to_string(n) + " bytes of staging (" +
                                 std::to_string(need) + " rounded) but staging_budget_bytes is " +
                                 std::to_string(explicit_budget_));
  }
  for (;;) {
    // 1. Reuse the smallest free buffer that fits.
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if ((*it)->cuda_pinned == cuda_pinned && (*it)->capacity >= need &&
          (best == free_.end() || (*it)->capacity < (*best)->capacity)) {
        best = it;
      }
    }
    if (best != free_.end()) {
      StagingBuffer* b = best->get();
      in_use_.push_back(std::move(*best));
      free_.erase(best);
      return std::make_unique<StagingLease>(this, b);
    }
    // 2. Make room by freeing idle buffers that do not fit, then allocate.
    uint64_t idle = 0;
    for (const auto& b : free_) idle += b->capacity;
    if (reserved_ - idle + need <= budget_) {
      while (reserved_ + need > budget_ && !free_.empty()) {
        auto largest = std::max_element(
            free_.begin(), free_.end(),
            [](const auto& a, const auto& b) { return a->capacity < b->capacity; });
        reserved_ -= (*largest)->capacity;
        Free(largest->get());
        free_.erase(largest);
      }
      reserved_ += need;
      peak_ = std::max(peak_, reserved_);
      ++allocations_;
      lock.unlock();
      StagingBuffer* b = nullptr;
      try {
        b = Allocate(need, cuda_pinned);
      } catch (...) {
        lock.lock();
        reserved_ -= need;
        cv_.notify_all();
        throw;
      }
      lock.lock();
      in_use_.emplace_back(b);
      return std::make_unique<StagingLease>(this, b);
    }
    // 3. Everything is in use by saves in flight.
    if (!wait) return nullptr;
    cv_.wait(lock);
  }
}

void StagingPool::Release(StagingBuffer* buffer) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::find_if(in_use_.begin(), in_use_.end(),
                         [&](const auto& b) { return b.get() == buffer; });
  if (it != in_use_.end()) {
    free_.push_back(std::move(*it));
    in_use_.erase(it);
  }
  cv_.notify_all();
}

}  // namespace engine
}  // namespace ackpt
