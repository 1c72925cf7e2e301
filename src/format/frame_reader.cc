// Frames of a compressed checkpoint, checked and decompressed
// (format/frame_reader.h).
#define ZSTD_STATIC_LINKING_ONLY  // ZSTD_decompressBound
#include "format/frame_reader.h"

#include <zstd.h>

#include <algorithm>
#include <vector>

#include "ackpt/error.h"
#include "format/bytes.h"
#include "format/checksum.h"
#include "format/constants.h"
#include "format/parallel.h"
#include "format/zstd_context.h"

namespace ackpt {
namespace format {

namespace {

// Bytes of compressed input fed per step when only a prefix of a frame is
// needed (the header of a version-1 file shares frame 0 with tensor data).
constexpr size_t kPrefixReadBlock = 64 * 1024;

}  // namespace

void FrameReader::Corrupt(const std::string& what) const {
  throw Error::Corruption("'" + info_->path + "': " + what);
}

const uint8_t* FrameReader::LoadFrame(size_t i, const FrameEntry& f) const {
  const std::string which = "frame " + std::to_string(i);
  uint8_t* comp = ThreadScratch(BufferUse::kCompressedFrame).Get(f.compressed_size);
  file_->Read(f.compressed_offset, f.compressed_size, comp);
  // Byte-grouped frames (format version 3, data frames only) are checked
  // by codec::DecodeGroupedFrame before it writes anything.
  if (GroupedFrame(i, comp, f.compressed_size)) return comp;
  const unsigned long long content = ZSTD_getFrameContentSize(comp, f.compressed_size);
  if (content == ZSTD_CONTENTSIZE_ERROR) Corrupt(which + " is not a zstd frame");
  if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != f.decompressed_size) {
    Corrupt(which + " holds " + std::to_string(content) + " bytes but the seek table says " +
            std::to_string(f.decompressed_size));
  }
  const size_t frame_size = ZSTD_findFrameCompressedSize(comp, f.compressed_size);
  if (ZSTD_isError(frame_size) || frame_size != f.compressed_size) {
    Corrupt(which + " does not span exactly its " + std::to_string(f.compressed_size) + " bytes");
  }
  const unsigned long long bound = ZSTD_decompressBound(comp, f.compressed_size);
  if (bound == ZSTD_CONTENTSIZE_ERROR || bound < f.decompressed_size) {
    Corrupt(which + " cannot hold the " + std::to_string(f.decompressed_size) +
            " bytes the seek table says");
  }
  return comp;
}

void FrameReader::DecompressFrame(size_t i,
                                  const std::function<uint8_t*(uint64_t n)>& alloc) const {
  const FrameEntry f = table_.frame(i);
  const uint8_t* comp = LoadFrame(i, f);
  uint8_t* dst = alloc(uint64_t{f.decompressed_size});
  const std::string which = "frame " + std::to_string(i);
  if (GroupedFrame(i, comp, f.compressed_size)) {
    const uint32_t sum = codec::DecodeGroupedFrame(
        comp, f.compressed_size,
        codec::SegmentsOf(layout_, f.decompressed_offset, f.decompressed_size), dst,
        f.decompressed_size, "'" + info_->path + "': " + which, options_->verify_checksums);
    if (options_->verify_checksums && table_.has_checksums && sum != f.checksum)
      Corrupt(which + " does not match its seek-table checksum");
    return;
  }
  ZSTD_DCtx* dctx = ThreadDCtx(options_->verify_checksums);
  const size_t r = ZSTD_decompressDCtx(dctx, dst, f.decompressed_size, comp, f.compressed_size);
  if (ZSTD_isError(r)) Corrupt(which + ": " + ZSTD_getErrorName(r));
  if (r != f.decompressed_size) Corrupt(which + " decompressed to the wrong size");
  if (!options_->verify_checksums || !table_.has_checksums) return;
  ZSTD_frameHeader header;
  const bool has_content_checksum = ZSTD_getFrameHeader(&header, comp, f.compressed_size) == 0 &&
                                    header.checksumFlag && f.compressed_size >= 4;
  uint32_t actual;
  if (has_content_checksum) {
    actual = LoadLE32(comp + f.compressed_size - 4);  // verified by zstd above
  } else {
    actual = FrameChecksum32(dst, r);
  }
  if (actual != f.checksum) Corrupt(which + " does not match its seek-table checksum");
}

void FrameReader::ReadPrefix(uint64_t want, std::string* out) const {
  out->clear();
  if (!info_->compressed) {
    out->resize(static_cast<size_t>(want));
    file_->Read(0, out->size(), out->data());
    return;
  }
  uint64_t done = 0;
  for (size_t i = 0; done < want; ++i) {
    if (i >= table_.num_frames()) Corrupt("stream ends inside the header");
    const FrameEntry f = table_.frame(i);
    if (f.decompressed_size <= want - done) {
      DecompressFrame(i, [&](uint64_t n) {
        out->resize(static_cast<size_t>(done + n));
        return reinterpret_cast<uint8_t*>(out->data() + done);
      });
      done += f.decompressed_size;
      continue;
    }
    StreamPrefix(i, f, want - done, out);
    done = want;
  }
}

void FrameReader::StreamPrefix(size_t i, const FrameEntry& f, uint64_t n, std::string* out) const {
  const std::string which = "frame " + std::to_string(i);
  const auto dctx = NewDCtx();
  std::string in;
  uint64_t fed = 0;  // compressed bytes read so far
  uint64_t got = 0;
  ZSTD_inBuffer ib{nullptr, 0, 0};
  while (got < n) {
    if (ib.pos == ib.size) {
      if (fed == f.compressed_size) Corrupt(which + " is truncated");
      in.resize(static_cast<size_t>(std::min<uint64_t>(kPrefixReadBlock, f.compressed_size - fed)));
      file_->Read(f.compressed_offset + fed, in.size(), in.data());
      if (fed == 0) {
        const unsigned long long content = ZSTD_getFrameContentSize(in.data(), in.size());
        if (content == ZSTD_CONTENTSIZE_ERROR) Corrupt(which + " is not a zstd frame");
        if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != f.decompressed_size) {
          Corrupt(which + " holds " + std::to_string(content) + " bytes but the seek table says " +
                  std::to_string(f.decompressed_size));
        }
      }
      fed += in.size();
      ib = ZSTD_inBuffer{in.data(), in.size(), 0};
    }
    // Grow with what was produced so far: a lying size costs nothing.
    const size_t base = out->size() - static_cast<size_t>(got);
    const uint64_t cap = std::min<uint64_t>(n, std::max<uint64_t>(2 * got, kPrefixReadBlock));
    out->resize(base + static_cast<size_t>(cap));
    ZSTD_outBuffer ob{out->data() + base, static_cast<size_t>(cap), static_cast<size_t>(got)};
    const size_t r = ZSTD_decompressStream(dctx.get(), &ob, &ib);
    if (ZSTD_isError(r)) Corrupt(which + ": " + ZSTD_getErrorName(r));
    got = ob.pos;
    out->resize(base + static_cast<size_t>(got));
    if (r == 0 && got < n) Corrupt(which + " ends before the seek table says");
  }
}

void FrameReader::ForEachFrame(
    size_t first_frame,
    const std::function<void(const FrameEntry&, const std::string&)>& consume) const {
  const size_t frames = table_.num_frames();
  if (first_frame >= frames) return;
  const size_t window = static_cast<size_t>(2 * ResolveThreads(options_->threads));
  std::vector<std::string> bufs(std::min(window, frames - first_frame));
  std::vector<FrameEntry> entries(bufs.size());
  for (size_t first = first_frame; first < frames; first += window) {
    const size_t count = std::min(window, frames - first);
    ParallelFor(count, options_->threads, [&](size_t j) {
      entries[j] = table_.frame(first + j);
      DecompressFrame(first + j, [&](uint64_t n) {
        bufs[j].resize(static_cast<size_t>(n));
        return reinterpret_cast<uint8_t*>(bufs[j].data());
      });
    });
    for (size_t j = 0; j < count; ++j) consume(entries[j], bufs[j]);
  }
}

bool FrameReader::GroupedFrame(size_t i, const uint8_t* comp, size_t n) const {
  return i > 0 && info_->format_version >= kByteGroupedFormatVersion &&
         codec::IsGroupedFrame(comp, n);
}

}  // namespace format
}  // namespace ackpt
