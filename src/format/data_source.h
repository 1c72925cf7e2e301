// Where the encoder pulls a checkpoint's data section from: the interface
// (the engine's staging ring implements it) and the in-memory source of the
// synchronous writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "format/flatten.h"

namespace ackpt {
namespace format {

// The data section of a checkpoint (every tensor's bytes, packed in file
// order: FlatTensor::staging_offset is a tensor's offset in it), as its
// producer delivers it. The encoder reads it front to back, once.
class DataSource {
 public:
  virtual ~DataSource() = default;
  uint64_t size() const { return size_; }
  // Blocks until bytes [0, end) are available; returns how many are (>= end).
  // Throws the producer's error if it failed.
  virtual uint64_t WaitFor(uint64_t end) = 0;
  // Calls fn(ptr, len) for the pieces of [offset, offset + n), in order; the
  // bytes must be available.
  virtual void Visit(uint64_t offset, uint64_t n,
                     const std::function<void(const void*, size_t)>& fn) const = 0;
  // Bytes before `end` will not be read again (a ring may reuse their memory).
  virtual void Release(uint64_t end) { (void)end; }
  // The most bytes the source can surely hold unreleased at once: a
  // consumer that waits for more before releasing would wait forever (a
  // frame larger than a staging ring is compressed as it streams in).
  virtual uint64_t capacity() const { return UINT64_MAX; }

 protected:
  explicit DataSource(uint64_t size) : size_(size) {}

 private:
  uint64_t size_;
};

// The data section of tensors whose `data` point at their contiguous bytes;
// sets each tensor's staging_offset (packed, in the vector's order).
class MemorySource : public DataSource {
 public:
  explicit MemorySource(std::vector<FlatTensor>* tensors);
  uint64_t WaitFor(uint64_t end) override;
  void Visit(uint64_t offset, uint64_t n,
             const std::function<void(const void*, size_t)>& fn) const override;

 private:
  std::vector<std::pair<const uint8_t*, uint64_t>> pieces_;  // data, offset
  std::vector<uint64_t> ends_;
};

}  // namespace format
}  // namespace ackpt
