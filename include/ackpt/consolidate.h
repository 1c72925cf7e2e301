// Turning a distributed checkpoint into one ordinary file, and describing one.
//
// A distributed checkpoint (distributed.h) is a manifest "P_N.manifest.json"
// and one part file per rank. ConsolidateCheckpoint reads them and writes ONE
// safetensors file (plain, or ackpt's zstd seekable frames) holding every
// global tensor whole: each sharded tensor assembled from the boxes of all
// ranks, and each replicated tensor. Any safetensors reader (the Python
// `safetensors` package, python/ackpt_reader.py, CheckpointReader) opens it;
// no world size or sharding spec is needed to read it. docs/DISTRIBUTED.md,
// "Consolidate and inspect".
//
// What is kept and what is not:
//   - Tensors are named by their flattened name from the Checkpoint's root,
//     as a DefaultCheckpointer file names them
//     ("module_interface_state/fc.weight", "trainer_state/optimizer/state/0/m").
//     The file's state tree holds the replicated subtrees as saved (their
//     ints, floats, strings, lists too) with the sharded tensors placed at
//     their paths, so ReadStateDict() gives the nested state.
//   - Rank-local state (everything neither replicated nor sharded: RNG
//     states, data-loader positions, per-rank scalars) is omitted: there is
//     one copy per rank and no single right one. Metrics are recorded in the
//     output's metadata ("consolidated_metrics").
//
// Memory is bounded by ConsolidateOptions::memory_budget_bytes (see there):
// each global tensor is assembled and written in bands, never whole.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/export.h"
#include "ackpt/format.h"

namespace ackpt {

struct ConsolidateOptions {
  // How the output is stored: Compression::kNone (plain safetensors) or
  // Compression::kZstd (ackpt's zstd seekable frames; `zstd -d` gives the
  // plain stream). Unset: chosen by the output name, kZstd if it ends in
  // ".zst", else kNone. A set value that contradicts the name (kNone for
  // "x.safetensors.zst", kZstd for "x.safetensors") throws kInvalidArgument;
  // the other Compression values throw kUnsupported. Default: unset.
  std::optional<Compression> compression;
  // zstd level for kZstd output, as WriteOptions::zstd_level (1 fastest ..
  // 19; negative: faster, larger). Higher levels cost CPU time. Default: 1.
  int zstd_level = 1;
  // Bytes of assembled tensor data held at once (the streaming buffer).
  // Each global tensor is assembled in bands of rows along dimension 0 (a
  // row larger than a band is cut along the next dimensions) of at most
  // band = (budget - frame) / 2 bytes, written and dropped; frame, the zstd
  // frame size (and the plain write size), is budget / 8 clamped to
  // 64 KiB .. 4 MiB. At most two bands and a frame are held: peak memory is
  // about the budget for plain output and about twice it for kZstd (the
  // compressed frames in flight), plus:
  //   - reading a band: a saved slab only partly inside it is read whole
  //     into scratch (sharding.h's ReadBox: slabs are about 1 MiB, at most
  //     64 MiB of them at a time; a slab is one row of its box when that row
  //     is larger, and is then read again for every band that cuts it);
  //   - a replicated tensor is read whole (it is one tensor in its part),
  //     so one larger than a band raises the peak to about its size;
  //   - the parts' headers (CheckpointReader, a few hundred bytes a tensor).
  // A smaller budget costs more, smaller reads. At least 1 MiB (else
  // kInvalidArgument). Default: 64 MiB.
  uint64_t memory_budget_bytes = uint64_t{64} << 20;
  // Called on the calling thread as the work advances, with bytes of tensor
  // data assembled so far and the total to assemble. The total counts each
  // sharded tensor twice (it is assembled once to compute its checksum,
  // which the header at the front of the file holds, and once to write it)
  // unless all sharded tensors fit in one band (then they are assembled
  // once and kept), and each replicated tensor once (its checksum is the
  // part's). Called at least once, with done == total, on success.
  // Default: none.
  std::function<void(uint64_t done, uint64_t total)> progress;
  // Threads for decompressing the parts and compressing the output;
  // 0 = std::thread::hardware_concurrency(). Default: 0.
  int threads = 0;
  // fsync the output and its directory (the commit is atomic either way:
  // temp file, rename). Default: true.
  bool fsync = true;
  // Where files are read and written. Default: Env::Default().
  Env* env = Env::Default();
};

// Writes the consolidated file of the distributed checkpoint whose manifest
// is `manifest_path` at `out_path`, atomically (a hidden temp file next to
// it, fsynced, renamed; on any error it is removed and `out_path` is left
// as it was). Every part is checked against the manifest (size, header
// checksum) and every tensor checksum as its bytes are read. Throws
// ackpt::Error naming the manifest and the part: kNotFound (no manifest),
// kCorruption (a part missing, not the one the manifest committed, or
// damaged; a malformed manifest or shard layout), kInvalidArgument /
// kUnsupported (options), kIOError (writing).
ACKPT_EXPORT void ConsolidateCheckpoint(const std::string& manifest_path,
                                        const std::string& out_path,
                                        const ConsolidateOptions& options = {});

// What a distributed checkpoint holds, from its manifest and the headers of
// its parts (no tensor data is read).
struct ManifestInfo {
  std::string path;  // the manifest
  int64_t index = 0;
  int world_size = 0;
  double time = 0;  // commit wall time, seconds since the epoch
  int64_t parent = -1;
  std::map<std::string, double> metrics;
  std::vector<std::string> replicated_paths;  // the replicated paths in force at save()
  struct Part {
    int rank = 0;
    std::string file;  // in the manifest's directory
    uint64_t file_bytes = 0;
    bool has_local = false;  // holds rank-local state
  };
  std::vector<Part> parts;  // by rank
  struct ReplicatedTensor {
    std::string name;  // flattened name from the Checkpoint's root
    std::string dtype;
    std::vector<int64_t> shape;
    int rank = 0;  // the part that holds it
  };
  std::vector<ReplicatedTensor> replicated;  // in saved order
  struct Box {
    int rank = 0;
    std::vector<int64_t> offsets;
    std::vector<int64_t> shape;
  };
  struct ShardedTensor {
    std::string name;  // flattened name from the Checkpoint's root
    std::string dtype;
    std::vector<int64_t> global_shape;
    std::vector<Box> boxes;  // by rank, in saved order
  };
  std::vector<ShardedTensor> sharded;  // by name
};

// Reads the manifest and opens every part's header; checks the parts
// against the manifest and the shard layout (boxes inside, no overlaps, no
// gaps). Throws as ConsolidateCheckpoint does.
ACKPT_EXPORT ManifestInfo DescribeManifest(const std::string& manifest_path,
                                           Env* env = Env::Default());

}  // namespace ackpt
