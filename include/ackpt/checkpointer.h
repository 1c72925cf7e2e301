// The pymarlin-style checkpointer API, asynchronous underneath.
//
// A trainer calls load() once when it is built, save() after every epoch,
// save(..., force = true) after training and save_model() at the end.
// DefaultCheckpointer::save() only copies the state into reusable host
// staging memory and returns; hashing, zstd compression, writing, fsync and
// the atomic rename run on a background writer pool.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ackpt/engine.h"
#include "ackpt/env.h"
#include "ackpt/export.h"
#include "ackpt/format.h"
#include "ackpt/retention.h"
#include "ackpt/state_dict.h"

namespace spdlog {
class logger;
}

namespace ackpt {

// The three state groups of pymarlin's Checkpoint, stored as three top-level
// groups of one file. An empty group round-trips as empty.
struct Checkpoint {
  StateDict module_interface_state;
  StateDict trainer_state;
  StateDict trainer_backend_state;
  // Metrics of this checkpoint (e.g. {"val_loss", 0.31}); stored in the file's
  // metadata so retention and best-by-metric survive restarts. Optional.
  std::map<std::string, double> metrics;

  bool empty() const {
    return module_interface_state.empty() && trainer_state.empty() && trainer_backend_state.empty();
  }
};

class ACKPT_EXPORT AbstractCheckpointer {
 public:
  virtual ~AbstractCheckpointer() = default;
  // Saves `checkpoint` under `index` when the policy says so; force = true
  // saves regardless of the policy and returns only once it is durable.
  virtual void save(const Checkpoint& checkpoint, int64_t index, bool force = false) = 0;
  // Saves only the model's state (called once at the end of training).
  // Default: does nothing.
  virtual void save_model(const StateDict& model_state, int64_t index) {
    (void)model_state;
    (void)index;
  }
  // Returns the checkpoint to resume from, or an empty Checkpoint.
  virtual Checkpoint load() = 0;
  // Returns once every earlier save is durable (asynchronous checkpointers
  // override it). Default: nothing to wait for.
  virtual void wait() {}
  // The snapshot fence: returns once every earlier save has finished copying
  // the state, so the caller may modify the saved tensors. Call it before the
  // first in-place update after save() (e.g. right before optimizer.step());
  // the Trainer does. Only checkpointers that copy after save() returns
  // (overlap_snapshot) wait here. Default: nothing to wait for.
  virtual void wait_snapshot() {}
};

struct DefaultCheckpointerArguments {
  // ---- pymarlin's fields -------------------------------------------------
  // Master switch: false makes save() and save_model() do nothing. Default: true.
  bool checkpoint = true;
  // On construction, remove the files in save_dir and model_state_save_dir
  // that match ackpt's own name patterns (checkpoints, model files, temp
  // files); nothing else is touched. Default: false.
  bool delete_existing_checkpoints = false;
  // save(state, index) writes when index % period == 0 (or force). Must be
  // >= 1. Default: 1.
  int64_t period = 1;
  // Where checkpoints are written (created if missing). Default: "checkpoints".
  std::string save_dir = "checkpoints";
  // Where save_model() writes "{file_prefix}_model_{index}.{file_ext}[.zst]".
  // Empty disables save_model(). When it differs from save_dir, the
  // checkpointer takes its ownership lock at the first save_model() (or at
  // construction with delete_existing_checkpoints). Default: "checkpoints".
  std::string model_state_save_dir = "checkpoints";
  // Directory to load from. Empty: resume from save_dir (see
  // resume_from_save_dir). Default: "".
  std::string load_dir;
  // File in load_dir (or save_dir) to load; takes precedence over any
  // search for the newest checkpoint, and a failure to read it is an error.
  // Default: "" (newest valid checkpoint).
  std::string load_filename;
  // File names are "{file_prefix}_{index}.{file_ext}", plus ".zst" when
  // compressed. Default: "model".
  std::string file_prefix = "model";
  // Default: "safetensors".
  std::string file_ext = "safetensors";
  // spdlog level name for the "ackpt" logger: TRACE, DEBUG, INFO, WARN,
  // ERROR, CRITICAL, OFF (case-insensitive). Default: "INFO".
  std::string log_level = "INFO";

  // ---- ackpt's fields -------------------------------------------------------
  // kZstd (seekable zstd frames), kNone (plain safetensors),
  // kZstdByteGrouped (float-aware: ~10 % smaller than kZstd on fp32 and ~14 %
  // on bf16 weights at the same or better speed, but format version 3, which
  // `zstd -d` and ackpt readers before it cannot read) or kAuto (per frame,
  // whatever a sample and the measured disk speed say cannot make the save
  // slower than writing uncompressed; also version 3). docs/FORMAT.md 14,
  // docs/BENCHMARKS.md. Default: kZstd, so every file stays readable by any
  // zstd decoder and by older ackpt readers.
  Compression compression = Compression::kZstd;
  // zstd level; higher costs writer CPU time. Default: 1.
  int zstd_level = 1;
  // Logical bytes per zstd frame (64 KiB .. 1 GiB). Default: 4 MiB.
  size_t chunk_size = size_t{4} << 20;
  // Background threads hashing, compressing and writing. 0 = hardware
  // concurrency. Default: 0.
  int writer_threads = 0;
  // Threads copying tensors into staging inside save(); 0 = up to 4 for
  // states over 16 MiB. Default: 0.
  int snapshot_threads = 0;
  // Upper bound on host staging memory (bytes), shared by all saves queued
  // or being written. Staging is a ring of fixed-size chunks (one zstd frame,
  // chunk_size, up to 64 MiB; at most an eighth of an explicit budget, at
  // least 64 KiB), allocated once and reused: save() copies the state into
  // chunks, the writers hash, compress and write a chunk and return it.
  // A state that fits the free budget is copied at memcpy speed and save()
  // returns. One that does not (larger than the budget, or earlier saves
  // still hold chunks) streams: its checksums are computed from the live
  // tensors first (the header, written first, holds them), then save()
  // copies chunk by chunk into chunks the writers free, and returns once the
  // last chunk is copied, so its stall grows to about the time to write the
  // bytes that did not fit (logged once at info level, with the reason;
  // SaveStats::streamed_bytes). With overlap_snapshot, wait_snapshot() takes
  // that wait instead. Any budget of at least two 64 KiB chunks works.
  // 0 = automatic: twice the largest checkpoint seen so far (one being
  // written, one being staged, so neither waits), but at most a quarter of
  // the memory the process may use (physical memory, or the cgroup limit if
  // lower): the live state and the trainer's own memory need the rest; a
  // larger state streams. Default: 0.
  uint64_t staging_budget_bytes = 0;
  // Page-lock staging chunks (mlock; pinned CUDA host memory when saving
  // CUDA tensors, allocated once and reused), up to RLIMIT_MEMLOCK: beyond
  // it, or when the system refuses, chunks stay pageable, with one warning.
  // Default: true.
  bool pin_host_memory = true;
  // What a save does when the staging budget is full. Forced saves always
  // block. Default: kBlock.
  BackpressurePolicy backpressure = BackpressurePolicy::kBlock;
  // Overlapped snapshot. false: save() returns once the state is copied into
  // staging (a stall of about one memcpy of the state). true: save() only
  // plans the snapshot (records each tensor's version counter and, for CUDA
  // tensors, an event on the current stream) and returns; copy threads fill
  // staging while the caller runs the next forward/backward pass, which only
  // read the parameters. The caller must call wait_snapshot() before it
  // modifies any saved tensor (the optimizer step); the Trainer does. A tensor
  // modified in place before its copy finished is detected by its version
  // counter and fails that save with an ackpt::Error naming the tensor,
  // raised at the next save()/wait() like other background errors; no file is
  // written. Not detected: writes that bypass autograd's version counter
  // (through data_ptr(), .data() / variable_data() aliases or inference
  // tensors). Cost: the copy (plus its snapshot_threads) competes with the
  // training step for CPU and memory bandwidth, and the copy of the next
  // save waits for this one. Forced saves copy inside save(). Default: false.
  bool overlap_snapshot = false;
  // Scheduling of the background writer and snapshot copy threads (see
  // WriterPriority in engine.h): kLow (nice 19) or kIdle (SCHED_IDLE) leave
  // the CPU to training when every core is busy, but the background work then
  // runs only in the time training leaves over, so saves become durable later
  // and the staging budget fills (backpressure) sooner; a forced save or
  // wait() may take much longer under load. Default: kNormal.
  WriterPriority writer_priority = WriterPriority::kNormal;
  // fsync files and directories. false trades crash durability for speed;
  // the rename stays atomic. Default: true.
  bool fsync = true;
  // When neither load_dir nor load_filename is set, load() resumes from the
  // newest valid checkpoint in save_dir (a corrupt newer file is skipped
  // with a warning). Default: true.
  bool resume_from_save_dir = true;
  // Verify checksums when loading. Default: true.
  bool verify_on_load = true;
  // How long the destructor waits for queued saves before abandoning them
  // (logged as an error). Default: 600 s.
  double drain_timeout_seconds = 600;
  // Which checkpoints to keep (retention.h). Default: keep everything.
  RetentionPolicy retention;
  // Extra __metadata__ entries written into every checkpoint. Default: none.
  std::map<std::string, std::string> metadata;
  // Called on a writer thread after each save finishes (success or not).
  // Must not call back into the checkpointer. Default: none.
  std::function<void(const SaveStats&)> on_save;
  // Logger to use instead of the "ackpt" logger. Default: null.
  std::shared_ptr<spdlog::logger> logger;
  // File-system seam; null = Env::Default(). Must outlive the checkpointer.
  Env* env = nullptr;
};

// Counters over the checkpointer's lifetime: the engine's, plus its own.
struct CheckpointerCounters : EngineCounters {
  uint64_t files_deleted = 0;       // by retention
  uint64_t temp_files_removed = 0;  // stale temp files cleaned at startup
};

class ACKPT_EXPORT DefaultCheckpointer : public AbstractCheckpointer {
 public:
  // Validates the arguments (throws kInvalidArgument naming the field),
  // creates save_dir, and applies delete_existing_checkpoints.
  explicit DefaultCheckpointer(DefaultCheckpointerArguments args);
  // Drains pending saves within drain_timeout_seconds; never throws.
  ~DefaultCheckpointer() override;
  DefaultCheckpointer(const DefaultCheckpointer&) = delete;
  DefaultCheckpointer& operator=(const DefaultCheckpointer&) = delete;

  // Raises a pending background error first (that save() then does nothing).
  void save(const Checkpoint& checkpoint, int64_t index, bool force = false) override;
  void save_model(const StateDict& model_state, int64_t index) override;
  Checkpoint load() override;
  // Returns once every save so far is durable; raises a background error.
  void wait() override;
  // Returns once the snapshot of every save so far is copied (returns at
  // once without overlap_snapshot). Does not raise background errors: save()
  // and wait() do.
  void wait_snapshot() override;

  // Loading helpers; each throws kNotFound if there is no such readable
  // checkpoint in save_dir.
  Checkpoint load_latest();              // newest valid (skipping corrupt ones)
  Checkpoint load_index(int64_t index);  // exactly this index
  // Best by a metric stored with save() (Checkpoint::metrics); mode_max:
  // larger is better. Corrupt files are skipped with a warning.
  Checkpoint load_best(const std::string& metric, bool mode_max = false);
  // The checkpoints in save_dir, newest first, with the rules keeping each
  // (see EvaluateRetention). Reads only headers.
  std::vector<CheckpointEntry> list_checkpoints() const;

  // The path the last accepted save() writes (or wrote); "" before any.
  std::string last_saved_path() const;
  // The file load() read; "" if it returned an empty Checkpoint.
  std::string last_loaded_path() const;
  CheckpointerCounters counters() const;
  const DefaultCheckpointerArguments& args() const;

  // Paths of the checkpoint files in `dir` for `prefix`/`ext`, newest index first.
  static std::vector<std::pair<int64_t, std::string>> ListCheckpoints(Env* env,
                                                                      const std::string& dir,
                                                                      const std::string& prefix,
                                                                      const std::string& ext);

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ackpt
