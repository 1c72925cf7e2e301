// Each thread's zstd contexts and reusable scratch buffers: every frame the
// format compresses or decompresses (writer, reader, byte-grouped codec)
// goes through these, so a writer or reader thread allocates them once.
#pragma once

#include <zstd.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace ackpt {
namespace format {

// Throws kIOError naming `call` if rc is a zstd error code.
void CheckZstd(size_t rc, const char* call);

// This thread's compression context, reset and set up for one frame at
// `level` with its content size in the frame header and, if `checksum`,
// its content checksum (which the seek table reuses).
ZSTD_CCtx* ThreadFrameCCtx(int level, bool checksum);
// This thread's context for literals-only (Huffman) frames, set up once:
// level 1, explicit block delimiters, no checksum (a second context, since
// switching parameters on one would reset it). The caller resets the session.
ZSTD_CCtx* ThreadHuffmanCCtx();
// This thread's decompression context, set to check frame content checksums
// (or, verify_checksums false, to ignore them).
ZSTD_DCtx* ThreadDCtx(bool verify_checksums = true);

struct DCtxDeleter {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};
// A fresh decompression context of its own (a streaming decompression that
// must not share the thread's). Throws kIOError when out of memory.
std::unique_ptr<ZSTD_DCtx, DCtxDeleter> NewDCtx();

// A reusable, uninitialized byte buffer (std::string or std::vector would
// zero-fill it: one more pass over every byte of a frame).
class ThreadBuffer {
 public:
  // At least n bytes; earlier contents are lost when it grows.
  uint8_t* Get(size_t n);
  // Frees a buffer grown past 64 MiB by an unusually large frame.
  void Trim();

 private:
  std::unique_ptr<uint8_t[]> data_;
  size_t cap_ = 0;
};

// What a thread buffer is for: each use has its own, since some are live at
// once (a byte-grouped frame decodes its planes into kPlaneStreams, then into
// the kFrame buffer, from the kCompressedFrame bytes).
enum class BufferUse {
  kCompressedFrame,  // reader: a frame's compressed bytes
  kFrame,            // reader: a decompressed frame shared by several tensors
  kPlanes,           // codec: a frame grouped into planes before coding
  kPlaneStreams,     // codec: the decoded zstd streams of a frame
  kGather,           // writer: a frame's bytes gathered from several tensors
};
ThreadBuffer& ThreadScratch(BufferUse use);

}  // namespace format
}  // namespace ackpt
