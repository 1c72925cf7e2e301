// The byte-grouped frame codec (docs/FORMAT.md section 14). The automatic
// choice between storing, zstd and byte grouping (Compression::kAuto) is in
// format/auto_policy.h, the byte transposition in format/transpose.h.
//
// A float tensor looks like noise to zstd: its sign/exponent bytes are highly
// redundant while its low mantissa bytes are nearly random, and interleaved
// they hide each other. A byte-grouped frame regroups every element of size
// 2, 4 or 8 into planes (all first bytes, then all second bytes, ...) and
// codes each plane on its own: stored raw when it does not compress, else as
// one zstd frame (Huffman-only or zstd's full match finder, whichever the
// plane's statistics favour). Everything here works on one frame of the
// logical stream and is independent of the writer's and reader's plumbing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ackpt/format.h"
#include "format/flatten.h"

namespace ackpt {
namespace format {
namespace codec {

// Files that may hold byte-grouped frames are kByteGroupedFormatVersion and
// name the codec (kMetaCodec = kCodecByteGrouped) in __metadata__
// (format/constants.h).

// First 4 bytes of a byte-grouped frame: "AKBG" (41 4B 42 47). Not a zstd
// frame magic, not a skippable-frame magic, so `zstd -d` stops loudly.
inline constexpr uint32_t kGroupedFrameMagic = 0x47424B41;
inline constexpr uint8_t kGroupedFrameVersion = 1;
inline constexpr size_t kGroupedHeaderBytes = 10;  // magic, version, S, size
inline constexpr size_t kStreamDescriptorBytes = 5;
inline constexpr size_t kMaxStreams = 8 + 4 + 2 + 1;
enum StreamMode : uint8_t { kStreamRaw = 0, kStreamZstd = 1 };

// A tensor's bytes in the logical stream and its element size.
struct Span {
  uint64_t begin = 0;
  uint64_t end = 0;
  uint32_t elem_size = 1;
};
// Spans sorted by begin, disjoint (the tensors in data order).
using Layout = std::vector<Span>;

// A maximal run of one frame's bytes inside one tensor (elem_size of the
// tensor) or outside every tensor (elem_size 1). Grouped when elem_size is
// 2, 4 or 8.
struct Segment {
  uint64_t size = 0;
  uint32_t elem_size = 1;
};
// The segments of logical bytes [offset, offset + n), in order.
std::vector<Segment> SegmentsOf(const Layout& layout, uint64_t offset, uint64_t n);

// The decoded sizes of a frame's streams, in stream order (docs/FORMAT.md
// 14.2): for k = 8, 4, 2 with any whole k-byte element, k planes; then the
// rest (1-byte tensors, tails of k-segments) if not empty.
std::vector<uint64_t> StreamSizes(const std::vector<Segment>& segments);

// How a compressible plane is coded. kAdaptive picks per plane from its
// byte histogram; the others force one coder (benchmarks, tests).
enum class PlaneCoder { kAdaptive, kZstd, kHuffman, kRaw };

struct FrameStats {
  uint64_t raw_streams = 0, zstd_streams = 0, huffman_streams = 0;
  uint64_t plain_zstd_frames = 0;  // EncodeByteGroupedDataFrame's fallback
};

// Encodes the n bytes at `src` (one frame of the logical stream, cut into
// `segments`) as a byte-grouped frame into *out (replaced). zstd streams use
// `level`. Returns the low 32 bits of XXH64 of the n original bytes, also
// stored in the frame's last 4 bytes (what the seek table records).
uint32_t EncodeGroupedFrame(const uint8_t* src, size_t n, const std::vector<Segment>& segments,
                            int level, std::string* out, PlaneCoder coder = PlaneCoder::kAdaptive,
                            FrameStats* stats = nullptr);

// What kZstdByteGrouped writes for a data frame: a byte-grouped frame, or a
// plain zstd frame when the frame is mostly runs (sparse state: zstd alone
// is as small within a few percent of a tiny output, and faster).
uint32_t EncodeByteGroupedDataFrame(const uint8_t* src, size_t n,
                                    const std::vector<Segment>& segments, int level,
                                    std::string* out, FrameStats* stats = nullptr);

// True if `p` (at least 4 bytes) starts with kGroupedFrameMagic.
bool IsGroupedFrame(const void* p, size_t n);

// Decodes a byte-grouped frame of comp_size bytes whose n original bytes are
// cut into `segments` into dst[0, n). Every size in the frame is checked
// against the segments before anything is decoded; the frame's own checksum
// is verified unless `verify` is false (ReadOptions::verify_checksums).
// Throws kCorruption naming `what` (e.g. "'f': frame 3"). Returns the
// frame's stored checksum (low 32 bits of XXH64 of the original bytes).
uint32_t DecodeGroupedFrame(const uint8_t* comp, size_t comp_size,
                            const std::vector<Segment>& segments, uint8_t* dst, size_t n,
                            const std::string& what, bool verify = true);

// Plain zstd frame of src[0, n) at `level`, content size and checksum set
// (what Compression::kZstd writes). Returns its checksum.
uint32_t EncodeZstdFrame(const uint8_t* src, size_t n, int level, std::string* out);
// A zstd frame of raw (stored) blocks: any zstd decoder reads it; costs a
// copy and XXH64. Compression::kAuto's "none" inside the seekable container.
uint32_t EncodeStoredFrame(const uint8_t* src, size_t n, std::string* out);

// ---- writer integration -------------------------------------------------------
// The data layout of tensors about to be written (staging_offset their
// offset in the data section, which starts at byte header_bytes).
Layout LayoutOf(const std::vector<FlatTensor>& tensors, uint64_t header_bytes);
// True if `compression` writes frames through this codec (and so the file
// is format version 3, with ackpt.codec).
bool UsesCodec(Compression compression);
// Adds ackpt.codec and ackpt.version for such files.
void AddCodecMetadata(const WriteOptions& options, std::map<std::string, std::string>* internal);

// ---- reader integration -----------------------------------------------------------
// The data layout of an opened file (tensors in data order).
Layout LayoutOf(const FileInfo& info);
// Throws kUnsupported if a version-3 file names a codec this build lacks.
void CheckFileCodec(const FileInfo& info);

}  // namespace codec
}  // namespace format
}  // namespace ackpt
