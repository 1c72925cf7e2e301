// zstd seekable format seek table (facebook/zstd contrib/seekable_format).
#include "format/seekable.h"

#include <algorithm>
#include <cstring>

#include "ackpt/error.h"
#include "format/bytes.h"

namespace ackpt {
namespace format {

namespace {

void PutLE32(std::string* out, uint32_t v) {
  uint8_t b[4];
  StoreLE32(b, v);
  out->append(reinterpret_cast<const char*>(b), sizeof b);
}

[[noreturn]] void Bad(const RandomAccessFile& file, const std::string& what) {
  throw Error::Corruption("invalid zstd seek table in '" + file.path() + "': " + what);
}

}  // namespace

std::string EncodeSeekTable(const std::vector<FrameEntry>& frames) {
  std::string out;
  const uint32_t entries_bytes = static_cast<uint32_t>(frames.size() * 12);
  PutLE32(&out, kSeekableSkippableMagic);
  PutLE32(&out, entries_bytes + static_cast<uint32_t>(kSeekTableFooterSize));
  for (const auto& f : frames) {
    PutLE32(&out, f.compressed_size);
    PutLE32(&out, f.decompressed_size);
    PutLE32(&out, f.checksum);
  }
  PutLE32(&out, static_cast<uint32_t>(frames.size()));
  out.push_back(static_cast<char>(0x80));  // Checksum_Flag set, reserved bits zero
  PutLE32(&out, kSeekableFooterMagic);
  return out;
}

bool LooksCompressed(const RandomAccessFile& file) {
  if (file.Size() < 4) return false;
  uint8_t magic[4];
  file.Read(0, 4, magic);
  return LoadLE32(magic) == kZstdFrameMagic;
}

uint32_t SeekTable::Field(size_t i, int k) const {
  return LoadLE32(reinterpret_cast<const uint8_t*>(raw_.data()) + i * entry_size_ + 4 * k);
}

FrameEntry SeekTable::frame(size_t i) const {
  FrameEntry f;
  const size_t base = i / kOffsetStride;
  f.compressed_offset = compressed_offsets_[base];
  f.decompressed_offset = decompressed_offsets_[base];
  for (size_t k = base * kOffsetStride; k < i; ++k) {
    f.compressed_offset += Field(k, 0);
    f.decompressed_offset += Field(k, 1);
  }
  f.compressed_size = Field(i, 0);
  f.decompressed_size = Field(i, 1);
  f.checksum = has_checksums ? Field(i, 2) : 0;
  return f;
}

size_t SeekTable::FrameAt(uint64_t offset) const {
  if (offset >= logical_bytes) return num_frames_;
  // Last sampled frame starting at or before offset, then a short scan.
  const size_t base = static_cast<size_t>(
      std::upper_bound(decompressed_offsets_.begin(), decompressed_offsets_.end(), offset) -
      decompressed_offsets_.begin() - 1);
  size_t i = base * kOffsetStride;
  uint64_t pos = decompressed_offsets_[base];
  while (i < num_frames_ && pos + Field(i, 1) <= offset) pos += Field(i++, 1);
  return i;
}

SeekTable ReadSeekTable(const RandomAccessFile& file, uint64_t max_frames) {
  const uint64_t size = file.Size();
  if (size < 8 + kSeekTableFooterSize)
    Bad(file, "file of " + std::to_string(size) + " bytes is too small");
  uint8_t footer[kSeekTableFooterSize];
  file.Read(size - kSeekTableFooterSize, kSeekTableFooterSize, footer);
  if (LoadLE32(footer + 5) != kSeekableFooterMagic)
    Bad(file, "footer magic missing (truncated file?)");
  const uint32_t num_frames = LoadLE32(footer);
  const uint8_t descriptor = footer[4];
  if (descriptor & 0x7c) Bad(file, "reserved descriptor bits are set");
  if (num_frames > kMaxFrames || num_frames > max_frames) {
    Bad(file, "frame count " + std::to_string(num_frames) + " exceeds the limit of " +
                  std::to_string(std::min<uint64_t>(kMaxFrames, max_frames)) +
                  " (ReadOptions::max_frames)");
  }
  if (num_frames == 0) Bad(file, "no frames");
  SeekTable table;
  table.has_checksums = (descriptor & 0x80) != 0;
  table.entry_size_ = table.has_checksums ? 12 : 8;
  table.num_frames_ = num_frames;
  table.table_bytes = 8 + uint64_t{num_frames} * table.entry_size_ + kSeekTableFooterSize;
  // Checked against the file before the entries are read into memory.
  if (table.table_bytes > size)
    Bad(file, std::to_string(num_frames) + " frames do not fit in the file");
  uint8_t head[8];
  const uint64_t table_start = size - table.table_bytes;
  file.Read(table_start, 8, head);
  if (LoadLE32(head) != kSeekableSkippableMagic) Bad(file, "skippable frame magic missing");
  if (LoadLE32(head + 4) != table.table_bytes - 8)
    Bad(file, "skippable frame size does not match the frame count");
  table.raw_.resize(static_cast<size_t>(uint64_t{num_frames} * table.entry_size_));
  file.Read(table_start + 8, table.raw_.size(), table.raw_.data());
  table.compressed_offsets_.reserve(num_frames / SeekTable::kOffsetStride + 1);
  table.decompressed_offsets_.reserve(num_frames / SeekTable::kOffsetStride + 1);
  uint64_t compressed_offset = 0;
  uint64_t decompressed_offset = 0;
  for (uint32_t i = 0; i < num_frames; ++i) {
    if (i % SeekTable::kOffsetStride == 0) {
      table.compressed_offsets_.push_back(compressed_offset);
      table.decompressed_offsets_.push_back(decompressed_offset);
    }
    const uint32_t compressed_size = table.Field(i, 0);
    const uint32_t decompressed_size = table.Field(i, 1);
    if (compressed_size == 0) Bad(file, "frame " + std::to_string(i) + " has compressed size 0");
    if (decompressed_size > kMaxFrameDecompressedSize ||
        decompressed_size > uint64_t{compressed_size} * kMaxExpansion) {
      Bad(file, "frame " + std::to_string(i) + " claims an impossible decompressed size " +
                    std::to_string(decompressed_size));
    }
    compressed_offset += compressed_size;
    decompressed_offset += decompressed_size;
    // Checked as we go so a sum can never wrap.
    if (compressed_offset > table_start) break;
  }
  if (compressed_offset != table_start) {
    Bad(file, "frames add up to " +
                  std::string(compressed_offset > table_start ? "more than " : "") +
                  std::to_string(compressed_offset) + " bytes but " + std::to_string(table_start) +
                  " precede the seek table");
  }
  table.logical_bytes = decompressed_offset;
  return table;
}

}  // namespace format
}  // namespace ackpt
