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
// DefaultCheckpointer, reading tensors straight into `targets` where they
// fit (LoadTargets, checkpointer.h). Throws kInvalidArgument for a
// model-only file, kCorruption for a file that is not a Checkpoint.
ACKPT_EXPORT Checkpoint ReadCheckpointFile(const std::string& path, const ReadOptions& options = {},
                                           Env* env = Env::Default(),
                                           const LoadTargets& targets = {});

// AsyncWriter's options are the engine's (engine.h). A
// DefaultCheckpointerArguments is one too: AsyncWriter writer(args) runs
// with the same engine settings as a DefaultCheckpointer(args).
using AsyncWriterOptions = EngineOptions;

class ACKPT_EXPORT AsyncWriter {
 public:
  // Validates the options (kInvalidArgument naming the field).
  explicit AsyncWriter(const AsyncWriterOptions& options);
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
  std::unique_ptr<engine::Engine> engine_;
};

}  // namespace ackpt
