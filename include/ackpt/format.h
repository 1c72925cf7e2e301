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
#include "ackpt/export.h"
#include "ackpt/state_dict.h"

namespace ackpt {

enum class Compression {
  kNone,  // plain safetensors: any safetensors reader opens the file
  kZstd,  // zstd seekable frames: `zstd -d` yields the plain safetensors stream
  // Seekable frames whose data frames byte-group every 2/4/8-byte element
  // into planes (sign/exponent bytes apart from mantissa bytes), each plane
  // stored raw or zstd/Huffman coded: smaller than kZstd on float tensors at
  // about its speed (docs/FORMAT.md section 14, docs/BENCHMARKS.md). Format
  // version 3: ackpt and python/ackpt_reader.py read it; `zstd -d` does not.
  kZstdByteGrouped,
  // Per data frame, stored / zstd / byte-grouped, whichever is smallest among
  // those a sample of the frame and the measured compression and write speeds
  // say cannot make the save slower than writing it uncompressed
  // (docs/FORMAT.md 14.5). Format version 3, like kZstdByteGrouped.
  kAuto,
};

// How a checkpoint file is encoded and committed. The base of EngineOptions
// (engine.h) and so of every checkpointer's arguments: each field is
// documented here once.
struct WriteOptions {
  // How the stream is stored: kZstd (seekable zstd frames), kNone (plain
  // safetensors), kZstdByteGrouped (float-aware: ~10 % smaller than kZstd on
  // fp32 and ~14 % on bf16 weights at the same or better speed, but format
  // version 3, which `zstd -d` and ackpt readers before it cannot read) or
  // kAuto (per frame, whatever a sample and the measured disk speed say
  // cannot make the save slower than writing uncompressed; also version 3).
  // docs/FORMAT.md 14, docs/BENCHMARKS.md. Default: kZstd, so every file
  // stays readable by any zstd decoder and by older ackpt readers.
  Compression compression = Compression::kZstd;
  // kZstd only. false: a data frame whose compression would not pay for
  // itself is stored instead (a zstd frame of raw blocks: still version 2,
  // still readable by `zstd -d`): once a save has measured this disk's
  // speed, each 4 MiB frame's sample (64 KiB, compressed once, ~1-2 % of
  // the frame's cost) says whether the CPU the writers would spend
  // compressing it, taken from the trainer's cores, is repaid by the write
  // time the smaller output saves (kAuto's rule without byte grouping,
  // docs/FORMAT.md 14.5). Float weights and Adam moments (zstd ratio
  // ~1.1) are then stored on any disk faster than ~40 MB/s; zeros and
  // other redundant state stay compressed. The first save, before a disk
  // speed is known, compresses every frame. true: compress every frame,
  // whatever it costs. Default: false, so the default save is never more
  // CPU-bound than an uncompressed one (docs/BENCHMARKS.md, issue 22 run).
  bool always_compress = false;
  // zstd level, 1 (fastest) .. 19; negative levels trade ratio for speed.
  // kZstdByteGrouped and kAuto use it for the planes they zstd-compress.
  // Higher levels cost CPU time on the writer threads. Default: 1.
  int zstd_level = 1;
  // Bytes of the logical stream per zstd frame; a partial read decompresses
  // whole frames, and each writer thread holds about four frames in memory
  // (two compressing, two being appended).
  // 64 KiB .. 1 GiB. Default: 4 MiB.
  size_t chunk_size = size_t{4} << 20;
  // Threads that hash, compress and write (the writer pool of an
  // asynchronous checkpointer; the calling thread and helpers for a
  // synchronous WriteStateDict). 0 = std::thread::hardware_concurrency().
  // Default: 0.
  int writer_threads = 0;
  // fsync the file and its directory before/after the rename. Turning this off
  // trades crash safety for speed (the rename is still atomic). Default: true.
  bool fsync = true;
  // With fsync on: every this many bytes appended, the file is asked to
  // start writing them to the device (WritableFile::StartWriteback:
  // sync_file_range on POSIX), so writeback overlaps compression and the
  // final fsync only flushes the tail; it also waits for the hint before the
  // previous one, which keeps about two of these per save dirty in the page
  // cache. Costs a syscall per hint; 0 leaves writeback to the kernel until
  // the fsync. Default: 8 MiB.
  uint64_t writeback_bytes = uint64_t{8} << 20;
  // Extra string entries for the header's __metadata__. Keys "format" and
  // "ackpt.*" are reserved. Default: none.
  std::map<std::string, std::string> metadata;
};

// What a write committed, and what it cost.
struct WriteResult {
  std::string path;             // where the file was committed
  bool compressed = false;      // zstd seekable frames (any compression but kNone)
  uint64_t tensor_bytes = 0;    // sum of tensor sizes
  uint64_t logical_bytes = 0;   // the plain safetensors stream
  uint64_t file_bytes = 0;      // on disk
  std::string header_xxh3;      // hex64 of the header checksum (docs/FORMAT.md 8.2)
  double hash_seconds = 0;      // per-tensor XXH3, wall (0 where the caller hashed first)
  double compress_seconds = 0;  // zstd / byte grouping, summed over threads
  double write_seconds = 0;     // compress + write + fsync + rename, wall
  double paced_seconds = 0;     // of write_seconds, spent pacing (EngineOptions::pacing_fraction)
};

// Serializes `state` and commits it atomically at `path`: a hidden temp file in
// the same directory is written, fsynced, closed and renamed over `path`, and
// the directory is fsynced. On failure the temp file is removed, `path` is
// untouched, and ackpt::Error names the call, path and errno text.
ACKPT_EXPORT WriteResult WriteStateDict(const StateDict& state, const std::string& path,
                                        const WriteOptions& options = {},
                                        Env* env = Env::Default());

// How a file is read, and the limits that keep a hostile or damaged file from
// costing more than it should: every size read from a file is checked against
// the file and these limits before anything is allocated for it. A file over
// a limit is rejected as corrupt (kCorruption), naming the limit.
struct ReadOptions {
  // Check every checksum (header, per-tensor XXH3, zstd frames) while reading.
  // Default: true.
  bool verify_checksums = true;
  // Threads for decompression and hashing; 0 = hardware concurrency.
  int threads = 0;
  // Largest JSON header accepted (the length N in the first 8 bytes). The
  // header is parsed as a stream, never as a DOM: Open() holds the N bytes
  // plus the decoded tensor list and metadata, a few times N at most.
  // Default: 100,000,000 (safetensors' own limit).
  uint64_t max_header_bytes = 100'000'000;
  // Most tensors one header may declare (each costs ~150 bytes in FileInfo).
  // Default: 1,048,576.
  uint64_t max_tensors = uint64_t{1} << 20;
  // Most zstd frames one seek table may list; the table is kept as stored,
  // ~13 bytes per frame. Default: 4,194,304 (16 TiB of stream at the default
  // 4 MiB chunk size, 256 GiB at the smallest, 64 KiB).
  uint64_t max_frames = uint64_t{1} << 22;
  // Deepest nesting accepted in the JSON header (objects and arrays) and in
  // the state tree (nodes, docs/FORMAT.md section 6). The format caps the
  // state tree at 256, so larger values only relax the header. Default: 256.
  int max_nesting_depth = 256;
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

// A tensor an incremental checkpoint does not hold (docs/FORMAT.md section
// 15): its bytes are those of the tensor of the same name in `file`, a
// checkpoint in the same directory that holds them itself (never another
// reference), with the same checksum. DecodeHeader fills name, file and
// xxh3; CheckpointReader::Open fills the rest from `file`'s header.
struct TensorReference {
  std::string name;  // flattened name, as in the state tree
  std::string file;  // base name of the file holding the bytes
  uint64_t xxh3 = 0;
  std::string dtype;  // from the holder
  at::ScalarType scalar_type = at::ScalarType::Undefined;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
};

struct FileInfo {
  std::string path;
  bool compressed = false;
  bool written_by_ackpt = false;                // carries ackpt's metadata (tree, checksums)
  int format_version = 0;                       // ackpt.version; 0 for foreign files
  uint64_t file_bytes = 0;                      // on disk
  uint64_t logical_bytes = 0;                   // the plain safetensors stream
  uint64_t header_bytes = 0;                    // 8-byte length + JSON + padding
  size_t num_frames = 0;                        // zstd frames (0 when uncompressed)
  std::vector<TensorInfo> tensors;              // in data order (the bytes this file holds)
  std::vector<TensorReference> references;      // incremental: tensors held by other files, by name
  std::map<std::string, std::string> metadata;  // __metadata__
  double compression_ratio() const {
    return file_bytes == 0 ? 1.0 : static_cast<double>(logical_bytes) / file_bytes;
  }
};

// Opens and validates a checkpoint file: every structural check (header
// length, JSON, dtypes, shapes, offsets, seek table) runs here, before any
// tensor data is trusted. Throws ackpt::Error (kCorruption, kNotFound,
// kUnsupported) with the path and what is wrong. An incremental checkpoint
// (docs/FORMAT.md section 15) also has each file its references name opened
// (header only) from the same directory and checked to hold the tensor with
// the referenced checksum (kCorruption naming both files otherwise); every
// read below then takes a referenced tensor from its holder, and Verify()
// checks the holders too.
class ACKPT_EXPORT CheckpointReader {
 public:
  static std::unique_ptr<CheckpointReader> Open(const std::string& path,
                                                const ReadOptions& options = {},
                                                Env* env = Env::Default());
  virtual ~CheckpointReader() = default;

  virtual const FileInfo& info() const = 0;
  // Every tensor the reads below return: the ones this file holds
  // (info().tensors) and, in an incremental checkpoint, the ones it
  // references (info().references), each with its dtype, shape and checksum
  // (a referenced one's begin/end are those in its holder).
  virtual const std::vector<TensorInfo>& all_tensors() const = 0;

  // Reads the whole state tree. Tensors are decompressed in parallel straight
  // into freshly allocated CPU tensors. Plain safetensors files written by
  // other tools load as a flat StateDict keyed by tensor name.
  virtual StateDict ReadStateDict() = 0;

  // Reads only the named tensors (names as in info().tensors), touching only
  // the bytes (or zstd frames) that hold them. Unknown names throw kNotFound.
  virtual std::map<std::string, at::Tensor> ReadTensors(const std::vector<std::string>& names) = 0;

  // ---- loading into tensors the caller holds -------------------------------
  // The bytes go straight into the destinations: no intermediate buffer and
  // no fresh allocation, so a resumed model is filled at about the speed of
  // the read (plain files) or of zstd (compressed ones). Each frame (or 1 MiB
  // block of a plain file) is decompressed (read) into place in parallel, and
  // each tensor's XXH3 is computed on its bytes as they land, not in a second
  // pass. Only the frames (bytes) holding the named tensors are read.
  //
  // Destinations must be dense (strided) tensors with exactly the file's
  // dtype and shape; otherwise kInvalidArgument names the tensor and both
  // dtypes and shapes ("checkpoint F32 [2, 3] vs destination F16 [3, 3]"),
  // before anything is read. Contiguous CPU tensors take the bytes directly;
  // any other (CUDA, non-contiguous, conjugate/negative views) is filled
  // through a contiguous CPU bounce tensor and Tensor::copy_, in batches of
  // at most 64 MiB, so memory stays bounded by the state plus 64 MiB. The
  // writes bump each destination's version counter; autograd is not
  // recorded (leaf parameters may be destinations).
  //
  // On an error found while reading (a checksum mismatch is found only as
  // the bytes land) the destinations may hold partly new data.

  // Fills destinations (flattened tensor name, as in info().tensors -> a
  // tensor). A name not in the file throws kNotFound.
  virtual void ReadInto(const std::map<std::string, at::Tensor>& destinations) = 0;
  // Fills every tensor of `destinations` in place, matched by its flattened
  // name in that StateDict (FlattenTensors); other values are ignored. E.g.
  // {"model": ModuleState(m), "optimizer": CaptureOptimizer(o, m)} fills a
  // module's parameters and an optimizer's existing state tensors.
  virtual void ReadInto(const StateDict& destinations) = 0;
  // ReadStateDict(), reading each tensor named in `destinations` into that
  // tensor (the returned StateDict holds it) and the rest into fresh
  // tensors. strict: a destination the file lacks throws kNotFound, one of
  // another dtype or shape kInvalidArgument; lenient (strict = false): such
  // destinations are left alone and the tensor is read into a fresh one.
  virtual StateDict ReadStateDictInto(const std::map<std::string, at::Tensor>& destinations,
                                      bool strict = true) = 0;

  // Checks every checksum in the file (and in the files its references name)
  // with memory bounded by a few frames; throws kCorruption naming the first
  // failure.
  virtual void Verify() = 0;

  // Writes the plain safetensors stream to out_path (atomically), after
  // checking every checksum. A version-3 (byte-grouped) file's export is the
  // version-2 stream of the same tensors and metadata (without ackpt.codec,
  // header checksum recomputed): what a kNone write would have produced. An
  // incremental checkpoint's export is standalone: the stream a full save of
  // the same state writes (every tensor, the same metadata without
  // ackpt.refs), each referenced tensor read from its holder.
  virtual void ExportSafetensors(const std::string& out_path, Env* env = Env::Default()) = 0;
};

// Every tensor of `state` by its flattened name, as a file written from
// `state` names it (docs/FORMAT.md section 7): {"model": {"w": t}} gives
// {"model/w": t}. The tensors are the state's own (shared, not copied).
// Throws kInvalidArgument where writing `state` would (empty keys, ...).
ACKPT_EXPORT std::map<std::string, at::Tensor> FlattenTensors(const StateDict& state);

// The flattened tensor name of a path of keys and list indices, e.g.
// {"optimizer", "state", "0"} -> "optimizer/state/0" (docs/FORMAT.md section
// 7). Keys are escaped so the mapping is one-to-one ('%' -> "%25", '/' ->
// "%2F"): {"a/b"} -> "a%2Fb".
ACKPT_EXPORT std::string FlatTensorName(const std::vector<std::string>& path);

// Convenience: CheckpointReader::Open(path)->ReadStateDict().
ACKPT_EXPORT StateDict ReadStateDict(const std::string& path, const ReadOptions& options = {},
                                     Env* env = Env::Default());

// The safetensors dtype name of a scalar type ("F32", ...); throws kUnsupported.
ACKPT_EXPORT std::string DtypeName(at::ScalarType type);

}  // namespace ackpt
