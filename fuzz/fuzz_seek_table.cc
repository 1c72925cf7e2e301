// The zstd seek-table decoder (ReadSeekTable) and the compact table's lookups.
// Input: a whole file.
#include <string>

#include "format/seekable.h"
#include "fuzz_util.h"
#include "mem_env.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = std::make_shared<const std::string>(reinterpret_cast<const char*>(data), size);
  ackpt::testing::StringFile file("fuzz.zst", bytes);
  ackpt::fuzz::ExpectOnlyAckptErrors([&] {
    const ackpt::format::SeekTable t = ackpt::format::ReadSeekTable(file, 1 << 16);
    uint64_t c = 0, d = 0;
    for (size_t i = 0; i < t.num_frames(); ++i) {
      const ackpt::format::FrameEntry f = t.frame(i);
      ackpt::fuzz::Check(f.compressed_offset == c && f.decompressed_offset == d, "frame offsets");
      ackpt::fuzz::Check(f.compressed_size > 0, "non-empty frames");
      if (f.decompressed_size > 0) {
        ackpt::fuzz::Check(t.FrameAt(f.decompressed_offset) == i, "FrameAt(start)");
        ackpt::fuzz::Check(t.FrameAt(f.decompressed_offset + f.decompressed_size - 1) == i,
                           "FrameAt(end)");
      }
      c += f.compressed_size;
      d += f.decompressed_size;
    }
    ackpt::fuzz::Check(c + t.table_bytes == size, "frames tile the file");
    ackpt::fuzz::Check(d == t.logical_bytes, "logical size");
    ackpt::fuzz::Check(t.FrameAt(d) == t.num_frames(), "FrameAt(past the end)");
  });
  return 0;
}
