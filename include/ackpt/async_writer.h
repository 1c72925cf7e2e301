// Building blocks for writing your own checkpointer (pymarlin's central
// example: subclass AbstractCheckpointer and decide when and where to save).
//
// WriteCheckpointFile / ReadCheckpointFile store a Checkpoint (its three
// state groups and metrics) as one ackpt file, synchronously. AsyncWriter is
// the asynchronous engine DefaultCheckpointer runs on, without its policy:
// Write() copies the Checkpoint into reusable staging memory and returns; a
// writer pool hashes, compresses, writes, fsyncs and renames it at the path
// you give, with the same force / wait / backpressure / sticky-error
// semantics as DefaultCheckpointer (examples/custom_checkpointer.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "ackpt/checkpointer.h"
#include "ackpt/export.h"

namespace ackpt {

namespace engine {
class Engine;
}

// Writes `checkpoint` atomically at `path` (WriteStateDict's commit protocol).
ACKPT_EXPORT WriteResult WriteCheckpointFile(const Checkpoint& checkpoint, const std::string& path,
                                             const WriteOptions& options = {},
                                             Env* env = Env::Default());
// Reads a file written by WriteCheckpointFile, AsyncWriter or
// DefaultCheckpointer. Throws kInvalidArgument for a model-only file,
// kCorruption for a file that is not a Checkpoint.
ACKPT_EXPORT Checkpoint ReadCheckpointFile(const std::string& path, const ReadOptions& options = {},
                                           Env* env = Env::Default());

struct AsyncWriterOptions {
  // kNone, kZstd (default). As DefaultCheckpointerArguments::compression.
  Compression compression = Compression::kZstd;
  // zstd level; higher costs writer CPU time. Default: 1.
  int zstd_level = 1;
  // Logical bytes per zstd frame (64 KiB .. 1 GiB). Default: 4 MiB.
  size_t chunk_size = size_t{4} << 20;
  // Background threads; 0 = hardware concurrency. Default: 0.
  int writer_threads = 0;
  // Threads copying tensors into staging; 0 = up to 4 for states over 16 MiB. Default: 0.
  int snapshot_threads = 0;
  // Upper bound on staging memory; 0 = twice the largest checkpoint seen. Default: 0.
  uint64_t staging_budget_bytes = 0;
  // Page-lock staging memory. Default: true.
  bool pin_host_memory = true;
  // When the staging budget is full. Forced writes always block. Default: kBlock.
  BackpressurePolicy backpressure = BackpressurePolicy::kBlock;
  // As DefaultCheckpointerArguments::overlap_snapshot (then call
  // WaitSnapshot() before modifying the saved tensors). Default: false.
  bool overlap_snapshot = false;
  // As DefaultCheckpointerArguments::writer_priority. Default: kNormal.
  WriterPriority writer_priority = WriterPriority::kNormal;
  // fsync files and directories. Default: true.
  bool fsync = true;
  // How long the destructor waits for queued writes. Default: 600 s.
  double drain_timeout_seconds = 600;
  // Extra __metadata__ entries of every file. Default: none.
  std::map<std::string, std::string> metadata;
  // Called on a writer thread after each write finishes (success or not).
  // Must not call back into the writer. Default: none.
  std::function<void(const SaveStats&)> on_save;
  // spdlog level of the "ackpt" logger. Default: "INFO".
  std::string log_level = "INFO";
  // Logger to use instead of "ackpt". Default: null.
  std::shared_ptr<spdlog::logger> logger;
  // File-system seam; null = Env::Default(). Default: null.
  Env* env = nullptr;
};

// The engine fields of DefaultCheckpointer's arguments.
ACKPT_EXPORT AsyncWriterOptions AsyncWriterOptionsFrom(const DefaultCheckpointerArguments& args);

class ACKPT_EXPORT AsyncWriter {
 public:
  // Validates the options (kInvalidArgument naming the field).
  explicit AsyncWriter(AsyncWriterOptions options);
  // Drains pending writes within drain_timeout_seconds; never throws.
  ~AsyncWriter();
  AsyncWriter(const AsyncWriter&) = delete;
  AsyncWriter& operator=(const AsyncWriter&) = delete;

  // Raises a pending background error first (and then writes nothing).
  // Snapshots `checkpoint`, queues it for `path` (written atomically; its
  // directory must exist) and returns; force = true returns once it and every
  // earlier write are durable. `index` names the write in errors and
  // SaveStats. Returns false if kSkip dropped it. Writes complete in order.
  bool Write(const Checkpoint& checkpoint, const std::string& path, int64_t index,
             bool force = false);
  // The same for a plain StateDict (ReadStateDict reads it back).
  bool WriteStateDict(const StateDict& state, const std::string& path, int64_t index,
                      bool force = false);
  // Returns once every write so far is durable; raises a background error.
  void Wait();
  // With overlap_snapshot: returns once the last Write()'s copy is complete.
  void WaitSnapshot();
  EngineCounters counters() const;

 private:
  friend engine::Engine& WriterEngine(AsyncWriter& writer);
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ackpt
