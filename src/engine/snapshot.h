// The snapshot: copying a flattened state into staging chunks, the only work
// save() does (or, with an overlapped snapshot, its copy threads do).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Event.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ackpt/error.h"
#include "engine/staging_pool.h"
#include "engine/task_pool.h"
#include "format/data_source.h"
#include "format/flatten.h"

namespace ackpt {
namespace engine {

// Validates every tensor (dense, supported dtype), fills its description,
// puts the tensors in file order (format::SortForAlignment) and lays out the
// data section: staging_offset is each tensor's offset in it, packed as in
// the file. Returns the data section's size; sets *any_cuda if a tensor lives
// on a non-CPU device.
uint64_t PlanSnapshot(std::vector<format::FlatTensor>* tensors, bool* any_cuda);

// Thrown when a tensor was modified before its copy finished.
class TornSnapshot : public Error {
 public:
  using Error::Error;
};

// What the copy needs to know about the moment save() was called, recorded on
// the caller's thread: each tensor's version counter (every in-place
// operation bumps it), and per device an event on the caller's current stream
// (the copy must see the work that produced the state, and nothing after it).
struct SnapshotPoint {
  std::vector<int64_t> versions;  // per tensor; -1 = not tracked (inference tensors)
  std::vector<std::pair<c10::Device, std::shared_ptr<c10::Event>>> ready;
};
SnapshotPoint RecordSnapshotPoint(const std::vector<format::FlatTensor>& tensors);

// The data section of one save in staging chunks: chunk k holds bytes
// [k * chunk, (k + 1) * chunk). The copy (producer) takes chunks from the
// pool and publishes the bytes it has filled, in order; the writer
// (consumer, through format::DataSource) reads published bytes and releases
// them, which returns their chunks to the pool for the copy to continue in.
class SnapshotStream : public format::DataSource {
 public:
  SnapshotStream(StagingPool* pool, uint64_t bytes, bool cuda_pinned);
  // Returns every chunk still held. The producer must have finished.
  ~SnapshotStream() override;

  size_t num_chunks() const { return chunks_.size(); }
  uint64_t chunk_bytes() const { return chunk_; }

  // ---- producer ----
  // Takes all chunks at once if the pool has them free now (never waits).
  bool TryTakeAll();
  // Makes sure chunks [first, first + k) are held for some k >= 1 (at most
  // max_chunks) and returns their base pointers: chunks already held (all of
  // them after TryTakeAll), else one taken from the pool, waiting for a
  // writer to free one if need be, plus any more that are free right now.
  // Throws the consumer's error if it gave up.
  std::vector<uint8_t*> Take(size_t first, size_t max_chunks);
  // Bytes [0, end) are complete.
  void Publish(uint64_t end);
  // The copy failed: the consumer's next wait throws `error`.
  void Fail(std::exception_ptr error);
  // Bytes copied into chunks the producer had to wait for.
  uint64_t streamed_bytes() const;
  uint64_t chunk_waits() const;

  // ---- consumer (format::DataSource) ----
  uint64_t WaitFor(uint64_t end) override;
  void Visit(uint64_t offset, uint64_t n,
             const std::function<void(const void*, size_t)>& fn) const override;
  void Release(uint64_t end) override;
  // What the ring surely holds at once: the budget less two chunks (a
  // range that is not chunk-aligned touches one more at either end).
  uint64_t capacity() const override;
  // The consumer gives up (its write failed): published chunks go back to
  // the pool now, and the producer's next Take throws `why`.
  void Abort(std::exception_ptr why);
  // Test hook: the staged byte at `offset` (published, not yet released).
  uint8_t* MutableByteForTesting(uint64_t offset);

 private:
  StagingPool* const pool_;
  const uint64_t chunk_;
  const bool cuda_pinned_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<StagingChunk*> chunks_;  // null: not taken yet, or released
  uint64_t published_ = 0;
  size_t released_ = 0;  // chunks below this were given back
  std::exception_ptr producer_error_;
  std::exception_ptr consumer_error_;
  uint64_t streamed_ = 0;
  uint64_t waits_ = 0;
};

// Hashes every tensor (XXH3-64, into its xxh3) straight from the caller's
// tensors, for a save that streams: its header, which holds the checksums,
// is written before the ring can hold all the bytes. Contiguous CPU tensors
// are hashed in place, in parallel on `pool` (may be null); others (strided,
// device) are copied piece by piece through `bounce` (chunk_bytes) first.
void HashSources(std::vector<format::FlatTensor>* tensors, uint8_t* bounce, uint64_t chunk_bytes,
                 TaskPool* pool);

// The per-tensor checksums (XXH3-64) a copy computes as it goes: each copy
// thread hashes the bytes it just copied, block by block while they are still
// in its cache, so the state is read once. A tensor split between two copy
// threads is hashed that way up to the split (XXH3 cannot join partial
// hashes); Finish hashes the rest from staging, as it does strided and device
// tensors, whose bytes land through LibTorch copies.
class CopyHashes {
 public:
  explicit CopyHashes(size_t tensors);
  ~CopyHashes();
  CopyHashes(const CopyHashes&) = delete;
  CopyHashes& operator=(const CopyHashes&) = delete;

  // Tensor i's bytes [at, at + n) were just copied to `p`; hashed if they
  // continue the hashed prefix (only the thread that owns the prefix calls).
  void Copied(size_t i, uint64_t at, const uint8_t* p, size_t n);
  // The end of tensor i's hashed prefix, in tensor bytes.
  uint64_t hashed(size_t i) const;
  // Sets every tensor's xxh3, hashing from `source` (published, not yet
  // released) what the copy did not. Returns those bytes.
  uint64_t Finish(
      std::vector<format::FlatTensor>* tensors, const format::DataSource& source,
      const std::function<void(size_t, const std::function<void(size_t)>&)>& parallel_for);

 private:
  struct Slot;
  std::vector<Slot> slots_;
};

// Copies the data section into `stream`, chunk by chunk in order: the bytes
// of contiguous CPU tensors in one contiguous range per thread of `pool` (may
// be null) plus the caller; non-contiguous tensors straight into place (no
// intermediate contiguous copy); device tensors with non-blocking
// device-to-host copies on a side stream, with one event per batch of chunks
// waited on before the batch is published. With `point`, each tensor's
// version counter is checked once its last byte is copied (before that byte
// is published): a tensor modified since save() makes it throw TornSnapshot
// (kInvalidArgument) naming the tensor. `max_batch` bounds the chunks copied
// before publishing (0: no bound). With `hashes`, each thread hashes what it
// copies (CopyHashes). Afterwards, or when it throws, no tensor refers to the
// caller's tensor any more.
void CopySnapshot(std::vector<format::FlatTensor>* tensors, SnapshotStream* stream, TaskPool* pool,
                  const SnapshotPoint* point, size_t max_batch, CopyHashes* hashes = nullptr);

}  // namespace engine
}  // namespace ackpt
