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

namespace ackpt {
namespace format {

inline constexpr int kFormatVersion = 1;
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
struct FlatTensor {
  std::string name;
  at::Tensor tensor;
};
// Splits a StateDict into its tensors (with unique flattened names, in tree
// order) and a JSON tree (docs/FORMAT.md, "ackpt.tree") holding everything
// else. Throws kInvalidArgument for empty keys or reserved names.
void Flatten(const StateDict& state, std::vector<FlatTensor>* tensors, std::string* tree_json);
// Rebuilds the tree; tensor_for(name) supplies each tensor. Throws kCorruption
// on a malformed tree or a tensor referenced twice or not at all.
StateDict Unflatten(const std::string& tree_json, const std::map<std::string, at::Tensor>& tensors,
                    const std::string& path_for_errors);
std::string EscapeKey(const std::string& key);

// ---- header ---------------------------------------------------------------------
struct SerializedTensor {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // contiguous CPU bytes, valid until written
  uint64_t nbytes = 0;
  uint64_t xxh3 = 0;
};
// Orders tensors for the file: by element size, largest first (stable), so
// every tensor is aligned to its element size when the data start is 8-aligned.
void SortForAlignment(std::vector<SerializedTensor>* tensors);
// The complete header region: 8-byte length, compact JSON, space padding to a
// multiple of 8, with ackpt's metadata and header checksum filled in.
// internal_metadata: extra "ackpt.*" entries from ackpt's own layers.
std::string EncodeHeader(const std::vector<SerializedTensor>& tensors, const std::string& tree_json,
                         const std::map<std::string, std::string>& user_metadata,
                         const std::map<std::string, std::string>& internal_metadata = {});
// Parses and validates the JSON header of a stream whose data section is
// data_bytes long; `header_region` is the full region (length prefix included).
void DecodeHeader(const std::string& header_region, uint64_t data_bytes, const std::string& path,
                  FileInfo* info);
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
struct SeekTable {
  bool has_checksums = false;
  std::vector<FrameEntry> frames;
  uint64_t table_bytes = 0;  // skippable frame, footer included
  uint64_t logical_bytes = 0;
};
std::string EncodeSeekTable(const std::vector<FrameEntry>& frames);
// Reads and validates the seek table at the end of `file`.
SeekTable ReadSeekTable(const RandomAccessFile& file);
bool LooksCompressed(const RandomAccessFile& file);

// ---- the logical stream ---------------------------------------------------------
// The byte stream of a checkpoint as a list of pieces in memory: the header
// region followed by each tensor's bytes.
class LogicalStream {
 public:
  void Add(const void* data, uint64_t n);
  uint64_t size() const { return size_; }
  // Calls fn(ptr, len) for the pieces covering [offset, offset + n).
  void Visit(uint64_t offset, uint64_t n, const std::function<void(const void*, size_t)>& fn) const;

 private:
  struct Piece {
    const uint8_t* data;
    uint64_t offset;
    uint64_t size;
  };
  std::vector<Piece> pieces_;
  uint64_t size_ = 0;
};

// The commit protocol: body(file) writes a hidden temp file next to `path`;
// then fsync (if asked), close, rename over `path`, fsync the directory. On
// failure the temp file is removed and the error rethrown; `path` is untouched.
void AtomicWrite(Env* env, const std::string& path, bool fsync,
                 const std::function<void(WritableFile*)>& body);

struct CommitStats {
  uint64_t file_bytes = 0;
  double compress_seconds = 0;  // summed over threads
  double write_seconds = 0;     // write + fsync + rename, wall
};
// Writes `stream` (compressed per options) to a temp file next to `path`,
// fsyncs, closes, renames and fsyncs the directory. parallel_for runs the
// compression tasks. On failure the temp file is removed and the error rethrown.
// A set *cancel aborts between frames with kTimedOut.
CommitStats CommitStream(const LogicalStream& stream, const std::string& path,
                         const WriteOptions& options, Env* env, const ParallelForFn& parallel_for,
                         const std::atomic<bool>* cancel = nullptr);
// Throws kInvalidArgument for out-of-range chunk size or zstd level.
void ValidateWriteOptions(const WriteOptions& options);

// Copies or converts each tensor to contiguous CPU memory and hashes it.
// `keep_alive` holds the contiguous tensors the SerializedTensors point into.
void SerializeTensors(const std::vector<FlatTensor>& flat, int threads,
                      std::vector<SerializedTensor>* out, std::vector<at::Tensor>* keep_alive);

}  // namespace format
}  // namespace ackpt
