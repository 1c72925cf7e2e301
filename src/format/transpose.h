// Byte transposition for the byte-grouped codec (docs/FORMAT.md 14.2): m
// elements of K bytes into K planes (plane j gets byte j of every element)
// and back.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ackpt {
namespace format {
namespace codec {

// True for the element sizes that are grouped: 2, 4 and 8.
inline bool Grouped(uint32_t elem_size) {
  return elem_size == 2 || elem_size == 4 || elem_size == 8;
}

// SSE2 where available (x86-64 baseline). k must be 2, 4 or 8
// (kInvalidArgument otherwise).
void Group(const uint8_t* src, size_t m, size_t k, uint8_t* const* planes);
void Ungroup(const uint8_t* const* planes, size_t m, size_t k, uint8_t* dst);

}  // namespace codec
}  // namespace format
}  // namespace ackpt
