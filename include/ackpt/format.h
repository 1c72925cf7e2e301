// Reading and writing ackpt checkpoint files (docs/FORMAT.md is the spec).
//
// A checkpoint file is a safetensors stream (8-byte header length, JSON
// header, tensor bytes), optionally cut into independent zstd frames followed
// by a zstd seekable-format seek table. These functions are synchronous; the
// asynchronous checkpointer (checkpointer.h) builds on the same code.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/state_dict.h"

namespace ackpt {

enum class Compression {
  kNone,  // plain safetensors: any safetensors reader opens the file
  kZstd,  // zstd seekable frames: `zstd -d` yields the plain safetensors stream
};

struct WriteOptions {
  // How the stream is stored. Default: kZstd.
  Compression compression = Compression::kZstd;
  // zstd level, 1 (fastest) .. 19; negative levels trade ratio for speed.
  // Higher levels cost CPU time on the writer threads. Default: 1.
  int zstd_level = 1;
  // Bytes of the logical stream per zstd frame; a partial read decompresses
  // whole frames, and each writer thread holds about two frames in memory.
  // 64 KiB .. 1 GiB. Default: 4 MiB.
  size_t chunk_size = size_t{4} << 20;
  // Threads used for hashing and compression; 0 = std::thread::hardware_concurrency().
  int threads = 0;
  // fsync the file and its directory before/after the rename. Turning this off
  // trades crash safety for speed (the rename is still atomic). Default: true.
  bool fsync = true;
  // Extra string entries for the header's __metadata__. Keys "format" and
  // "ackpt.*" are reserved.
  std::map<std::string, std::string> metadata;
};

struct WriteResult {
  std::string path;
  uint64_t tensor_bytes = 0;   // sum of tensor sizes
  uint64_t logical_bytes = 0;  // the plain safetensors stream
  uint64_t file_bytes = 0;     // on disk
};

// Serializes `state` and commits it atomically at `path`: a hidden temp file in
// the same directory is written, fsynced, closed and renamed over `path`, and
// the directory is fsynced. On failure the temp file is removed, `path` is
// untouched, and ackpt::Error names the call, path and errno text.
WriteResult WriteStateDict(const StateDict& state, const std::string& path,
                           const WriteOptions& options = {}, Env* env = Env::Default());

struct ReadOptions {
  // Check every checksum (header, per-tensor XXH3, zstd frames) while reading.
  // Default: true.
  bool verify_checksums = true;
  // Threads for decompression and hashing; 0 = hardware concurrency.
  int threads = 0;
};

struct TensorInfo {
  std::string name;   // flattened name, e.g. "optimizer/state/0/exp_avg"
  std::string dtype;  // safetensors dtype name, e.g. "F32"
  at::ScalarType scalar_type;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // data_offsets, relative to the start of the tensor data
  uint64_t end = 0;
  bool has_checksum = false;
  uint64_t xxh3 = 0;
  uint64_t nbytes() const { return end - begin; }
};

struct FileInfo {
  std::string path;
  bool compressed = false;
  bool written_by_ackpt = false;                // carries ackpt's metadata (tree, checksums)
  uint64_t file_bytes = 0;                      // on disk
  uint64_t logical_bytes = 0;                   // the plain safetensors stream
  uint64_t header_bytes = 0;                    // 8-byte length + JSON + padding
  size_t num_frames = 0;                        // zstd frames (0 when uncompressed)
  std::vector<TensorInfo> tensors;              // in data order
  std::map<std::string, std::string> metadata;  // __metadata__
  double compression_ratio() const {
    return file_bytes == 0 ? 1.0 : static_cast<double>(logical_bytes) / file_bytes;
  }
};

// Opens and validates a checkpoint file: every structural check (header
// length, JSON, dtypes, shapes, offsets, seek table) runs here, before any
// tensor data is trusted. Throws ackpt::Error (kCorruption, kNotFound,
// kUnsupported) with the path and what is wrong.
class CheckpointReader {
 public:
  static std::unique_ptr<CheckpointReader> Open(const std::string& path,
                                                const ReadOptions& options = {},
                                                Env* env = Env::Default());
  virtual ~CheckpointReader() = default;

  virtual const FileInfo& info() const = 0;

  // Reads the whole state tree. Tensors are decompressed in parallel straight
  // into freshly allocated CPU tensors. Plain safetensors files written by
  // other tools load as a flat StateDict keyed by tensor name.
  virtual StateDict ReadStateDict() = 0;

  // Reads only the named tensors (names as in info().tensors), touching only
  // the bytes (or zstd frames) that hold them. Unknown names throw kNotFound.
  virtual std::map<std::string, at::Tensor> ReadTensors(const std::vector<std::string>& names) = 0;

  // Checks every checksum in the file with memory bounded by a few frames;
  // throws kCorruption naming the first failure.
  virtual void Verify() = 0;

  // Writes the plain safetensors stream to out_path (atomically).
  virtual void ExportSafetensors(const std::string& out_path, Env* env = Env::Default()) = 0;
};

// Convenience: CheckpointReader::Open(path)->ReadStateDict().
StateDict ReadStateDict(const std::string& path, const ReadOptions& options = {},
                        Env* env = Env::Default());

// True while a CheckpointReader in this process has `path` open (retention
// never deletes such a file).
bool IsOpenForReading(const std::string& path);

// The safetensors dtype name of a scalar type ("F32", ...); throws kUnsupported.
std::string DtypeName(at::ScalarType type);

// The flattened tensor name of a path of keys and list indices, e.g.
// {"optimizer", "state", "0"} -> "optimizer/state/0". Keys are escaped so the
// mapping is one-to-one ('%' -> "%25", '/' -> "%2F").
std::string FlatTensorName(const std::vector<std::string>& path);

}  // namespace ackpt
