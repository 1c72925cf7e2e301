// Reading the logical stream of an opened checkpoint: a plain file's bytes
// as they are; a compressed file's frames, each checked against its seek
// table entry before anything is allocated for it, then decompressed (zstd
// or byte-grouped) and verified.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

#include "ackpt/env.h"
#include "ackpt/format.h"
#include "format/codec.h"
#include "format/seekable.h"

namespace ackpt {
namespace format {

class FrameReader {
 public:
  // `file`, `info` and `options` must outlive the reader. `info` is read at
  // each call, since the opener fills it in as it goes: `compressed` and the
  // seek table first, then the header (format_version) and the layout.
  FrameReader(const RandomAccessFile* file, const FileInfo* info, const ReadOptions* options)
      : file_(file), info_(info), options_(options) {}

  const SeekTable& table() const { return table_; }
  void set_table(SeekTable table) { table_ = std::move(table); }
  // Version 3: the tensors' spans, which cut its byte-grouped frames.
  void set_layout(codec::Layout layout) { layout_ = std::move(layout); }

  // Decompresses frame i and checks it; alloc(n) supplies the n-byte output
  // and is called only after the frame's size was validated against its
  // bytes. A frame that carries its content checksum (ackpt's always do) is
  // checked by zstd while it decodes, on the bytes it just wrote; the seek
  // table's copy is then compared with the frame's, so the output is not
  // hashed a second time. Frames without one are hashed here.
  void DecompressFrame(size_t i, const std::function<uint8_t*(uint64_t n)>& alloc) const;

  // Sets *out to logical bytes [0, want). Compressed: frames wholly inside are
  // decompressed (and checked) whole; of a frame that runs past `want` only
  // the needed prefix is stream-decompressed, reading its input in small
  // steps, so the header of a version-1 file costs about the header and
  // never the tensor data that shares its frame. `out` grows with the bytes
  // actually produced, not with what the file claims.
  void ReadPrefix(uint64_t want, std::string* out) const;

  // Frames [first, num_frames) in order: decompressed in parallel, a window
  // of 2 x threads at a time, then handed to consume(entry, bytes) on the
  // calling thread, one after another. Memory: one window of frames.
  void ForEachFrame(
      size_t first,
      const std::function<void(const FrameEntry&, const std::string&)>& consume) const;

  [[noreturn]] void Corrupt(const std::string& what) const;

 private:
  // Reads frame i's compressed bytes into this thread's buffer and checks
  // them against the seek table: the frame header's content size, the
  // frame's extent, and the most its blocks can decode to. Only then may a
  // caller allocate its output.
  const uint8_t* LoadFrame(size_t i, const FrameEntry& f) const;
  // Appends the first n bytes (n < the frame's size) of frame i to *out.
  void StreamPrefix(size_t i, const FrameEntry& f, uint64_t n, std::string* out) const;
  // A data frame of a version-3 file that starts with the byte-grouped magic
  // (before the header is decoded format_version is 0: frame 0 is zstd).
  bool GroupedFrame(size_t i, const uint8_t* comp, size_t n) const;

  const RandomAccessFile* file_;
  const FileInfo* info_;
  const ReadOptions* options_;
  SeekTable table_;
  codec::Layout layout_;
};

}  // namespace format
}  // namespace ackpt
