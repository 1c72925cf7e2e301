// The format's fixed numbers: versions, limits, magics and ackpt's own
// metadata keys (docs/FORMAT.md is the spec they come from).
#pragma once

#include <cstddef>
#include <cstdint>

namespace ackpt {
namespace format {

// ---- versions ------------------------------------------------------------------
// Version 2: in a compressed file the header region is alone in frame 0, so
// the header reads without decompressing tensor data. Version 3
// (docs/FORMAT.md section 14) is version 2 whose data frames may be
// byte-grouped; it is written only for kZstdByteGrouped / kAuto files, every
// other file stays kFormatVersion so older readers open it. The reader
// accepts every version from kOldestReadableVersion to kNewestReadableVersion.
inline constexpr int kFormatVersion = 2;
inline constexpr int kByteGroupedFormatVersion = 3;
inline constexpr int kNewestReadableVersion = kByteGroupedFormatVersion;
inline constexpr int kOldestReadableVersion = 1;

// ---- limits --------------------------------------------------------------------
// safetensors' own limit on the JSON header.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// Deepest node of the state tree (docs/FORMAT.md section 6), leaves included.
inline constexpr int kMaxTreeDepth = 256;
// zstd seekable format limits (contrib/seekable_format/zstd_seekable.h).
inline constexpr uint64_t kMaxFrameDecompressedSize = 0x40000000;  // 1 GiB
inline constexpr uint32_t kMaxFrames = 0x8000000;
inline constexpr size_t kMinChunkSize = 64 * 1024;
// A zstd frame cannot expand by more than ~32768x (RLE blocks); anything
// claiming more is a lie, rejected before allocating.
inline constexpr uint64_t kMaxExpansion = 65536;

// ---- magics --------------------------------------------------------------------
inline constexpr uint32_t kZstdFrameMagic = 0xFD2FB528;
inline constexpr uint32_t kSeekableSkippableMagic = 0x184D2A5E;
inline constexpr uint32_t kSeekableFooterMagic = 0x8F92EAB1;
inline constexpr size_t kSeekTableFooterSize = 9;

// ---- metadata keys ---------------------------------------------------------------
inline constexpr const char* kMetaFormat = "format";
inline constexpr const char* kMetaVersion = "ackpt.version";
inline constexpr const char* kMetaTree = "ackpt.tree";
inline constexpr const char* kMetaChecksums = "ackpt.xxh3";
inline constexpr const char* kMetaHeaderChecksum = "ackpt.header_xxh3";
// Version-3 files name the codec of their data frames (readers of versions
// 1-2 refuse them instead of misreading a frame).
inline constexpr const char* kMetaCodec = "ackpt.codec";
inline constexpr const char* kCodecByteGrouped = "bytegroup1";
// Incremental checkpoints: the tensors held by other files, {file: {name:
// hex64}} (docs/FORMAT.md section 15).
inline constexpr const char* kMetaReferences = "ackpt.refs";

}  // namespace format
}  // namespace ackpt
