// Internal pieces of the format layer, shared with the engine.
#pragma once

#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/format.h"
#include "ackpt/state_dict.h"
#include "io/atomic_file.h"

namespace ackpt {
namespace format {

// Version 2: in a compressed file the header region is alone in frame 0, so
// the header reads without decompressing tensor data. The reader accepts
// every version from kOldestReadableVersion to kNewestReadableVersion.
// Version 3 (docs/FORMAT.md section 14) is version 2 whose data frames may be
// byte-grouped; it is written only for kZstdByteGrouped / kAuto files, every
// other file stays kFormatVersion so older readers open it.
inline constexpr int kFormatVersion = 2;
inline constexpr int kNewestReadableVersion = 3;
inline constexpr int kOldestReadableVersion = 1;
// safetensors' own limit on the JSON header.
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;
// zstd seekable format limits (contrib/seekable_format/zstd_seekable.h).
inline constexpr uint64_t kMaxFrameDecompressedSize = 0x40000000;  // 1 GiB
inline constexpr uint32_t kMaxFrames = 0x8000000;
inline constexpr size_t kMinChunkSize = 64 * 1024;
// A zstd frame cannot expand by more than ~32768x (RLE blocks); anything
// claiming more is a lie, rejected before allocating.
inline constexpr uint64_t kMaxExpansion = 65536;

inline constexpr uint32_t kZstdFrameMagic = 0xFD2FB528;
inline constexpr uint32_t kSeekableSkippableMagic = 0x184D2A5E;
inline constexpr uint32_t kSeekableFooterMagic = 0x8F92EAB1;
inline constexpr size_t kSeekTableFooterSize = 9;

// Metadata keys.
inline constexpr const char* kMetaFormat = "format";
inline constexpr const char* kMetaVersion = "ackpt.version";
inline constexpr const char* kMetaTree = "ackpt.tree";
inline constexpr const char* kMetaChecksums = "ackpt.xxh3";
inline constexpr const char* kMetaHeaderChecksum = "ackpt.header_xxh3";

// ---- parallelism -----------------------------------------------------------
// Runs fn(0..n-1), each index once, on up to `threads` threads (the caller is
// one of them). Rethrows the first exception after all started work is done.
using ParallelForFn = std::function<void(size_t n, const std::function<void(size_t)>& fn)>;
void ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn);
int ResolveThreads(int threads);

// ---- dtypes ------------------------------------------------------------------
// Throws kUnsupported naming `what` (usually the tensor) for unsupported types.
std::string DtypeToName(at::ScalarType type, const std::string& what);
// Returns false for names this LibTorch cannot represent.
bool DtypeFromName(const std::string& name, at::ScalarType* type);
size_t DtypeSize(at::ScalarType type);

// ---- state tree ---------------------------------------------------------------
// One tensor of a checkpoint, from flattening to encoding: Flatten fills name
// and tensor; the snapshot (engine) or PrepareContiguous (synchronous writer)
// fills dtype, shape, nbytes and data; the encoder fills xxh3.
struct FlatTensor {
  std::string name;
  at::Tensor tensor;  // the caller's tensor; dropped once its bytes are staged
  at::ScalarType dtype = at::ScalarType::Undefined;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  uint64_t staging_offset = 0;  // offset of its bytes in the data section (file order)
  const void* data = nullptr;   // contiguous CPU bytes, valid until encoded
  uint64_t xxh3 = 0;
};
// Splits a StateDict into its tensors (with unique flattened names, in tree
// order) and a JSON tree (docs/FORMAT.md, "ackpt.tree") holding everything
// else. Throws kInvalidArgument for empty keys or reserved names.
void Flatten(const StateDict& state, std::vector<FlatTensor>* tensors, std::string* tree_json);
// Rebuilds the tree; `tensors` supplies each tensor. Throws kCorruption on a
// malformed tree, a node deeper than min(max_depth, 256), or a tensor
// referenced twice or not at all. Parses as a stream: no JSON DOM is built.
StateDict Unflatten(const std::string& tree_json, const std::map<std::string, at::Tensor>& tensors,
                    const std::string& path_for_errors, int max_depth = 256);
std::string EscapeKey(const std::string& key);

// ---- header ---------------------------------------------------------------------
// Orders tensors for the file: by element size, largest first (stable), so
// every tensor is aligned to its element size when the data start is 8-aligned.
void SortForAlignment(std::vector<FlatTensor>* tensors);
// The complete header region: 8-byte length, compact JSON, space padding to a
// multiple of 8, with ackpt's metadata and header checksum filled in.
// internal_metadata: extra "ackpt.*" entries from ackpt's own layers.
std::string EncodeHeader(const std::vector<FlatTensor>& tensors, const std::string& tree_json,
                         const std::map<std::string, std::string>& user_metadata,
                         const std::map<std::string, std::string>& internal_metadata = {});
// Parses and validates the JSON header of a stream whose data section is
// data_bytes long; `header_region` is the full region (length prefix included).
// Streams the JSON (SAX) into `info`, so memory stays a small multiple of the
// header size; options' limits (tensors, nesting) apply. Throws kCorruption
// (kUnsupported for a dtype or format version this build cannot read).
void DecodeHeader(const std::string& header_region, uint64_t data_bytes, const std::string& path,
                  FileInfo* info, const ReadOptions& options = {});
// Throws kInvalidArgument for limits that are zero or negative.
void ValidateReadOptions(const ReadOptions& options);
uint64_t Xxh3(const void* data, size_t n);
std::string Hex64(uint64_t v);

// ---- zstd seekable ---------------------------------------------------------------
struct FrameEntry {
  uint64_t compressed_offset = 0;  // in the file
  uint32_t compressed_size = 0;
  uint64_t decompressed_offset = 0;  // in the logical stream
  uint32_t decompressed_size = 0;
  uint32_t checksum = 0;
};
// A validated seek table, stored compactly: the raw entries as in the file
// (8 or 12 bytes per frame) plus the frame offsets of every kOffsetStride-th
// frame, so millions of tiny frames cost about the table's own size.
class SeekTable {
 public:
  static constexpr size_t kOffsetStride = 16;

  bool has_checksums = false;
  uint64_t table_bytes = 0;  // skippable frame, footer included
  uint64_t logical_bytes = 0;

  size_t num_frames() const { return num_frames_; }
  // Entry i with its offsets (at most kOffsetStride - 1 additions).
  FrameEntry frame(size_t i) const;
  // The frame holding logical byte `offset` (num_frames() if past the end).
  size_t FrameAt(uint64_t offset) const;

 private:
  friend SeekTable ReadSeekTable(const RandomAccessFile&, uint64_t);
  uint32_t Field(size_t i, int k) const;
  size_t num_frames_ = 0;
  size_t entry_size_ = 12;
  std::string raw_;                             // the entries, as stored
  std::vector<uint64_t> compressed_offsets_;    // of frames 0, stride, 2*stride, ...
  std::vector<uint64_t> decompressed_offsets_;  // likewise
};
std::string EncodeSeekTable(const std::vector<FrameEntry>& frames);
// Reads and validates the seek table at the end of `file`; more than
// max_frames frames is corruption. Allocates only after the frame count is
// checked against the file size and max_frames.
SeekTable ReadSeekTable(const RandomAccessFile& file, uint64_t max_frames = kMaxFrames);
bool LooksCompressed(const RandomAccessFile& file);

// ---- the one encode path -----------------------------------------------------------
// The data section of a checkpoint (every tensor's bytes, packed in file
// order: FlatTensor::staging_offset is a tensor's offset in it), as its
// producer delivers it. The encoder reads it front to back, once.
class DataSource {
 public:
  virtual ~DataSource() = default;
  uint64_t size() const { return size_; }
  // Blocks until bytes [0, end) are available; returns how many are (>= end).
  // Throws the producer's error if it failed.
  virtual uint64_t WaitFor(uint64_t end) = 0;
  // Calls fn(ptr, len) for the pieces of [offset, offset + n), in order; the
  // bytes must be available.
  virtual void Visit(uint64_t offset, uint64_t n,
                     const std::function<void(const void*, size_t)>& fn) const = 0;
  // Bytes before `end` will not be read again (a ring may reuse their memory).
  virtual void Release(uint64_t end) { (void)end; }
  // The most bytes the source can surely hold unreleased at once: a
  // consumer that waits for more before releasing would wait forever (a
  // frame larger than a staging ring is compressed as it streams in).
  virtual uint64_t capacity() const { return UINT64_MAX; }

 protected:
  explicit DataSource(uint64_t size) : size_(size) {}

 private:
  uint64_t size_;
};

// The data section of tensors whose `data` point at their contiguous bytes;
// sets each tensor's staging_offset (packed, in the vector's order).
class MemorySource : public DataSource {
 public:
  explicit MemorySource(std::vector<FlatTensor>* tensors);
  uint64_t WaitFor(uint64_t end) override;
  void Visit(uint64_t offset, uint64_t n,
             const std::function<void(const void*, size_t)>& fn) const override;

 private:
  std::vector<std::pair<const uint8_t*, uint64_t>> pieces_;  // data, offset
  std::vector<uint64_t> ends_;
};

// Incremental XXH3-64 (seed 0): the same value as Xxh3() over the
// concatenated updates.
class Xxh3Stream {
 public:
  Xxh3Stream();
  ~Xxh3Stream();
  Xxh3Stream(const Xxh3Stream&) = delete;
  Xxh3Stream& operator=(const Xxh3Stream&) = delete;
  void Update(const void* data, size_t n);
  uint64_t Digest() const;

 private:
  void* state_;  // XXH3_state_t
};

// Fills every tensor's xxh3 from its bytes in `source` (waiting for them),
// in parallel across tensors.
void HashTensors(std::vector<FlatTensor>* tensors, DataSource* source,
                 const ParallelForFn& parallel_for);

struct EncodeResult {
  uint64_t tensor_bytes = 0;
  uint64_t logical_bytes = 0;   // the plain safetensors stream
  uint64_t file_bytes = 0;      // on disk
  std::string header_xxh3;      // hex64 of the header checksum (docs/FORMAT.md 8.2)
  double hash_seconds = 0;      // per-tensor XXH3, wall
  double compress_seconds = 0;  // zstd, summed over threads
  double write_seconds = 0;     // compress + write + fsync + rename, wall
};
// Encodes the header of `tensors` (in file order, staging_offset their
// offset in the data section, xxh3 filled) and commits header + data section
// at `path`, pulling the data from `source` front to back and releasing it as
// it is written: zstd frames when asked (the header region alone in the
// first frame, then data frames of chunk_size; frames compress in parallel
// over whatever the source has made available), else the plain stream. On
// failure (the source's too) the temp file is removed and the error
// rethrown; `path` is untouched. A set *cancel aborts between frames with
// kTimedOut.
EncodeResult EncodeStreamAndCommit(const std::vector<FlatTensor>& tensors,
                                   const std::string& tree_json, const WriteOptions& options,
                                   const std::map<std::string, std::string>& internal_metadata,
                                   const std::string& path, Env* env, DataSource* source,
                                   const ParallelForFn& parallel_for,
                                   const std::atomic<bool>* cancel = nullptr);
// For tensors in memory: orders them for alignment, hashes them (in
// parallel) and commits them through EncodeStreamAndCommit. Every tensor's
// `data` must point at its contiguous bytes until this returns.
EncodeResult EncodeAndCommit(std::vector<FlatTensor>* tensors, const std::string& tree_json,
                             const WriteOptions& options,
                             const std::map<std::string, std::string>& internal_metadata,
                             const std::string& path, Env* env, const ParallelForFn& parallel_for,
                             const std::atomic<bool>* cancel = nullptr);
// Throws kInvalidArgument for out-of-range chunk size or zstd level.
void ValidateWriteOptions(const WriteOptions& options);
// The synchronous writer (WriteStateDict, WriteCheckpointFile): flatten,
// contiguous copies where needed, EncodeAndCommit on the calling threads.
WriteResult WriteStateDictSync(const StateDict& state, const std::string& path,
                               const WriteOptions& options,
                               const std::map<std::string, std::string>& internal_metadata,
                               Env* env);

// Checks every tensor (dense, supported dtype) and fills dtype, shape and
// nbytes from it. Throws kUnsupported naming the tensor.
void DescribeTensors(std::vector<FlatTensor>* tensors);
// For the synchronous writer: points each tensor's `data` at contiguous CPU
// bytes, copying (into `keep_alive`) only tensors that are not already so.
void PrepareContiguous(std::vector<FlatTensor>* tensors, std::vector<at::Tensor>* keep_alive);

}  // namespace format

// The flattened tensor name of a path of keys and list indices, e.g.
// {"optimizer", "state", "0"} -> "optimizer/state/0". Keys are escaped so the
// mapping is one-to-one ('%' -> "%25", '/' -> "%2F").
std::string FlatTensorName(const std::vector<std::string>& path);

// True while a CheckpointReader in this process has `path` open (retention
// never deletes such a file).
bool IsOpenForReading(const std::string& path);

}  // namespace ackpt
