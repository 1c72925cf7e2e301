// The checksums of the format: XXH3-64 (seed 0) per tensor and of the header,
// written as 16 hex digits; the low 32 bits of XXH64 (seed 0) per zstd frame
// (what a zstd frame's content checksum and the seek table hold).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ackpt {
namespace format {

uint64_t Xxh3(const void* data, size_t n);
// 16 lowercase hex digits.
std::string Hex64(uint64_t v);
// The low 32 bits of XXH64 (seed 0) of data[0, n).
uint32_t FrameChecksum32(const void* data, size_t n);

// Incremental XXH3-64 (seed 0): the same value as Xxh3() over the
// concatenated updates.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void Update(const void* data, size_t n);
  uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t
};

}  // namespace format
}  // namespace ackpt
