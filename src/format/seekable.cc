// zstd seekable format seek table (facebook/zstd contrib/seekable_format).
#include <cstring>

#include "ackpt/error.h"
#include "format/internal.h"

namespace ackpt {
namespace format {

namespace {

void PutLE32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetLE32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
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
  return GetLE32(magic) == kZstdFrameMagic;
}

SeekTable ReadSeekTable(const RandomAccessFile& file) {
  const uint64_t size = file.Size();
  if (size < 8 + kSeekTableFooterSize)
    Bad(file, "file of " + std::to_string(size) + " bytes is too small");
  uint8_t footer[kSeekTableFooterSize];
  file.Read(size - kSeekTableFooterSize, kSeekTableFooterSize, footer);
  if (GetLE32(footer + 5) != kSeekableFooterMagic)
    Bad(file, "footer magic missing (truncated file?)");
  const uint32_t num_frames = GetLE32(footer);
  const uint8_t descriptor = footer[4];
  if (descriptor & 0x7c) Bad(file, "reserved descriptor bits are set");
  if (num_frames > kMaxFrames)
    Bad(file, "frame count " + std::to_string(num_frames) + " exceeds the limit");
  SeekTable table;
  table.has_checksums = (descriptor & 0x80) != 0;
  const uint64_t entry_size = table.has_checksums ? 12 : 8;
  table.table_bytes = 8 + uint64_t{num_frames} * entry_size + kSeekTableFooterSize;
  if (table.table_bytes > size)
    Bad(file, std::to_string(num_frames) + " frames do not fit in the file");
  std::string raw(table.table_bytes - kSeekTableFooterSize, '\0');
  file.Read(size - table.table_bytes, raw.size(), raw.data());
  const auto* p = reinterpret_cast<const uint8_t*>(raw.data());
  if (GetLE32(p) != kSeekableSkippableMagic) Bad(file, "skippable frame magic missing");
  if (GetLE32(p + 4) != table.table_bytes - 8)
    Bad(file, "skippable frame size does not match the frame count");
  p += 8;
  uint64_t compressed_offset = 0;
  uint64_t decompressed_offset = 0;
  table.frames.resize(num_frames);
  for (uint32_t i = 0; i < num_frames; ++i, p += entry_size) {
    FrameEntry& f = table.frames[i];
    f.compressed_offset = compressed_offset;
    f.decompressed_offset = decompressed_offset;
    f.compressed_size = GetLE32(p);
    f.decompressed_size = GetLE32(p + 4);
    f.checksum = table.has_checksums ? GetLE32(p + 8) : 0;
    const std::string which = "frame " + std::to_string(i);
    if (f.compressed_size == 0) Bad(file, which + " has compressed size 0");
    if (f.decompressed_size > kMaxFrameDecompressedSize ||
        f.decompressed_size > uint64_t{f.compressed_size} * kMaxExpansion) {
      Bad(file,
          which + " claims an impossible decompressed size " + std::to_string(f.decompressed_size));
    }
    compressed_offset += f.compressed_size;
    decompressed_offset += f.decompressed_size;
  }
  if (compressed_offset != size - table.table_bytes) {
    Bad(file, "frames add up to " + std::to_string(compressed_offset) + " bytes but " +
                  std::to_string(size - table.table_bytes) + " precede the seek table");
  }
  table.logical_bytes = decompressed_offset;
  return table;
}

}  // namespace format
}  // namespace ackpt
