// Builds compressed checkpoint files from a plain (logical) stream without
// the writer, so reader tests pin each layout down independently of it.
#pragma once

#define XXH_INLINE_ALL
#include <xxhash.h>
#include <zstd.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "format/seekable.h"

namespace ackpt {
namespace testing {

// One zstd frame with content size and checksum, as ackpt writes them.
inline std::string ZstdFrame(const std::string& bytes, int level = 1) {
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
  std::string out(ZSTD_compressBound(bytes.size()), '\0');
  const size_t n = ZSTD_compress2(cctx, out.data(), out.size(), bytes.data(), bytes.size());
  ZSTD_freeCCtx(cctx);
  if (ZSTD_isError(n)) throw std::runtime_error(ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

// The stream cut at `cuts` (logical offsets, ascending, excluding 0 and the
// end), each piece one frame, followed by the seek table.
inline std::string CompressAt(const std::string& plain, std::vector<uint64_t> cuts) {
  cuts.push_back(plain.size());
  std::string file;
  std::vector<format::FrameEntry> entries;
  uint64_t begin = 0;
  for (uint64_t end : cuts) {
    if (end <= begin) continue;
    const std::string piece = plain.substr(begin, end - begin);
    const std::string frame = ZstdFrame(piece);
    format::FrameEntry e;
    e.compressed_size = static_cast<uint32_t>(frame.size());
    e.decompressed_size = static_cast<uint32_t>(piece.size());
    e.checksum = static_cast<uint32_t>(XXH64(piece.data(), piece.size(), 0) & 0xffffffffu);
    entries.push_back(e);
    file += frame;
    begin = end;
  }
  return file + format::EncodeSeekTable(entries);
}

// Bytes of the header region of a plain stream (8 + N).
inline uint64_t HeaderRegionSize(const std::string& plain) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(plain[static_cast<size_t>(i)]);
  return 8 + n;
}

// Format version 2: the header region alone in frame 0, then frames of up to
// `chunk` bytes starting at the data section.
inline std::string CompressV2(const std::string& plain, uint64_t chunk) {
  std::vector<uint64_t> cuts;
  for (uint64_t off = HeaderRegionSize(plain); off < plain.size(); off += chunk)
    cuts.push_back(off);
  return CompressAt(plain, cuts);
}

// Format version 1: frames of `chunk` bytes from the start, ignoring the header.
inline std::string CompressV1(const std::string& plain, uint64_t chunk) {
  std::vector<uint64_t> cuts;
  for (uint64_t off = chunk; off < plain.size(); off += chunk) cuts.push_back(off);
  return CompressAt(plain, cuts);
}

}  // namespace testing
}  // namespace ackpt
