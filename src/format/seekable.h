// The zstd seekable format's seek table (facebook/zstd
// contrib/seekable_format): the index of a compressed file's frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "format/constants.h"

namespace ackpt {
namespace format {

struct FrameEntry {
  uint64_t compressed_offset = 0;  // in the file
  uint32_t compressed_size = 0;
  uint64_t decompressed_offset = 0;  // in the logical stream
  uint32_t decompressed_size = 0;
  uint32_t checksum = 0;
};

// A validated seek table, stored compactly: the raw entries as in the file
// (8 or 12 bytes per frame) plus the frame offsets of every kOffsetStride-th
// frame, so millions of tiny frames cost about the table's own size.
class SeekTable {
 public:
  static constexpr size_t kOffsetStride = 16;

  bool has_checksums = false;
  uint64_t table_bytes = 0;  // skippable frame, footer included
  uint64_t logical_bytes = 0;

  size_t num_frames() const { return num_frames_; }
  // Entry i with its offsets (at most kOffsetStride - 1 additions).
  FrameEntry frame(size_t i) const;
  // The frame holding logical byte `offset` (num_frames() if past the end).
  size_t FrameAt(uint64_t offset) const;

 private:
  friend SeekTable ReadSeekTable(const RandomAccessFile&, uint64_t);
  uint32_t Field(size_t i, int k) const;
  size_t num_frames_ = 0;
  size_t entry_size_ = 12;
  std::string raw_;                             // the entries, as stored
  std::vector<uint64_t> compressed_offsets_;    // of frames 0, stride, 2*stride, ...
  std::vector<uint64_t> decompressed_offsets_;  // likewise
};

std::string EncodeSeekTable(const std::vector<FrameEntry>& frames);
// Reads and validates the seek table at the end of `file`; more than
// max_frames frames is corruption. Allocates only after the frame count is
// checked against the file size and max_frames.
SeekTable ReadSeekTable(const RandomAccessFile& file, uint64_t max_frames = kMaxFrames);
// True if the file starts with a zstd frame (a compressed checkpoint).
bool LooksCompressed(const RandomAccessFile& file);

}  // namespace format
}  // namespace ackpt
