// Reading tensors' bytes straight into memory the caller holds: one pass
// over the plain bytes or the frames that hold them, in parallel, each
// tensor's XXH3 computed on its bytes as they land.
#pragma once

#include <cstdint>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/format.h"
#include "format/frame_reader.h"

namespace ackpt {
namespace format {

// The destination of one tensor to read, with bytes [0, nbytes) contiguous on the CPU.
struct Target {
  const TensorInfo* info;
  uint8_t* data;
};

// Reads every target's bytes into place in one pass, in parallel, and (with
// options.verify_checksums) checks each tensor's XXH3 on the bytes as they
// land: a plain file in 1 MiB preads, a compressed one only the frames that
// hold targets, each decompressed straight into its tensor when it lies
// inside one. Throws kCorruption naming the tensor or frame.
void ReadTargets(std::vector<Target> targets, const RandomAccessFile& file, const FileInfo& info,
                 const FrameReader& frames, const ReadOptions& options);

}  // namespace format
}  // namespace ackpt
