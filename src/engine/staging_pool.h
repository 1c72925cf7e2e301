// Reusable, page-aligned host staging memory under a byte budget.
#pragma once

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace ackpt {
namespace engine {

class StagingPool;

// One buffer, owned by the pool, lent to one save at a time.
struct StagingBuffer {
  uint8_t* data = nullptr;
  uint64_t capacity = 0;
  bool cuda_pinned = false;  // allocated through LibTorch's pinned-memory allocator
  bool locked = false;       // mlock succeeded
  at::Tensor pinned;         // owns the memory when cuda_pinned
};

// Returns its buffer to the pool when destroyed.
class StagingLease {
 public:
  StagingLease(StagingPool* pool, StagingBuffer* buffer) : pool_(pool), buffer_(buffer) {}
  ~StagingLease();
  StagingLease(const StagingLease&) = delete;
  StagingLease& operator=(const StagingLease&) = delete;
  uint8_t* data() const { return buffer_->data; }
  uint64_t capacity() const { return buffer_->capacity; }

 private:
  StagingPool* pool_;
  StagingBuffer* buffer_;
};

class StagingPool {
 public:
  // budget 0: twice the largest request seen so far. warn(msg) is called once
  // if page-locking is requested but refused by the system.
  StagingPool(uint64_t budget, bool pin, std::function<void(const std::string&)> warn);
  ~StagingPool();  // all leases must have been returned

  // A buffer of at least n bytes. With wait = false returns null instead of
  // blocking when the budget is exhausted by buffers in use. Throws
  // kInvalidArgument if n alone exceeds an explicit budget.
  std::unique_ptr<StagingLease> Acquire(uint64_t n, bool cuda_pinned, bool wait);

  uint64_t reserved() const;  // bytes allocated (in use + free)
  uint64_t peak() const;
  uint64_t budget() const;
  uint64_t allocations() const;  // buffers allocated over the pool's life

 private:
  friend class StagingLease;
  void Release(StagingBuffer* buffer);
  StagingBuffer* Allocate(uint64_t capacity, bool cuda_pinned);
  void Free(StagingBuffer* buffer);

  const uint64_t explicit_budget_;
  const bool pin_;
  std::function<void(const std::string&)> warn_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t budget_ = 0;
  uint64_t reserved_ = 0;
  uint64_t peak_ = 0;
  uint64_t allocations_ = 0;
  bool warned_ = false;
  std::vector<std::unique_ptr<StagingBuffer>> free_;
  std::vector<std::unique_ptr<StagingBuffer>> in_use_;
};

}  // namespace engine
}  // namespace ackpt
