// Copying a flattened state into staging memory: the only work save() does.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/task_pool.h"
#include "format/internal.h"

namespace ackpt {
namespace engine {

// Validates every tensor (dense, supported dtype), fills its description and
// lays the tensors out in one staging buffer (staging_offset, 64-byte
// aligned). Returns the bytes needed; sets *any_cuda if a tensor lives on a
// non-CPU device.
uint64_t PlanSnapshot(std::vector<format::FlatTensor>* tensors, bool* any_cuda);

// Copies each tensor into base + offset as contiguous bytes. Non-contiguous
// tensors are copied straight into place (no intermediate contiguous copy).
// The bytes of contiguous CPU tensors are split into one contiguous range per
// thread of `pool` (may be null) plus the caller. Device tensors are copied
// with non-blocking device-to-host copies on a side stream, which is
// synchronized before returning.
// Afterwards each tensor's `data` points into the staging buffer and its
// reference to the caller's tensor is dropped.
void CopySnapshot(std::vector<format::FlatTensor>* tensors, uint8_t* base, TaskPool* pool);

}  // namespace engine
}  // namespace ackpt
