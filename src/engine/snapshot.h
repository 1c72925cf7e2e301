// Copying a flattened state into staging memory: the only work save() does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/task_pool.h"
#include "format/internal.h"

namespace ackpt {
namespace engine {

struct StagedTensor {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t offset = 0;  // in the staging buffer, 64-byte aligned
  uint64_t nbytes = 0;
};

// Validates every tensor (dense, supported dtype) and lays them out in one
// staging buffer. Returns the bytes needed; sets *any_cuda if a tensor lives
// on a non-CPU device.
uint64_t PlanSnapshot(const std::vector<format::FlatTensor>& flat,
                      std::vector<StagedTensor>* staged, bool* any_cuda);

// Copies each tensor into base + offset as contiguous bytes. Non-contiguous
// tensors are copied straight into place (no intermediate contiguous copy).
// The bytes of contiguous CPU tensors are split into one contiguous range per
// thread of `pool` (may be null) plus the caller. Device tensors are copied
// with non-blocking device-to-host copies on a side stream, which is
// synchronized before returning.
void CopySnapshot(const std::vector<format::FlatTensor>& flat,
                  const std::vector<StagedTensor>& staged, uint8_t* base, TaskPool* pool);

}  // namespace engine
}  // namespace ackpt
