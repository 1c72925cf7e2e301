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
#include "ackpt/export.h"
#include "ackpt/retention.h"
#include "ackpt/state_dict.h"

namespace ackpt {

// The three state groups of pymarlin's Checkpoint, stored as three top-level
// groups of one file. An empty group round-trips as empty.
// Where a tensor of this rank's state sits in a larger, global tensor that
// the ranks of a distributed job hold in pieces (FSDP/ZeRO-style parameter
// and optimizer shards, tensor-parallel splits, sharded embedding tables):
// the local tensor is the box offsets .. offsets + local.sizes() of a global
// tensor of shape global_shape. Boxes are N-d (row, column, 2-D blocks, an
// uneven last shard). docs/DISTRIBUTED.md, "Sharded tensors".
struct ShardBox {
  std::vector<int64_t> offsets;       // the box's first index in each dimension
  std::vector<int64_t> global_shape;  // the whole tensor's shape
};

struct Checkpoint {
  StateDict module_interface_state;
  StateDict trainer_state;
  StateDict trainer_backend_state;
  // Metrics of this checkpoint (e.g. {"val_loss", 0.31}); stored in the file's
  // metadata so retention and best-by-metric survive restarts. Optional.
  std::map<std::string, double> metrics;
  // Sharded tensors, by flattened tensor name from the Checkpoint's root
  // (FlatTensorName of its path: "trainer_state/optimizer/state/0/exp_avg",
  // "module_interface_state/emb.weight"); that name is the global tensor's
  // name on every rank. Only DistributedCheckpointer saves them
  // (DefaultCheckpointer throws kInvalidArgument); save() checks each entry
  // against its tensor (kInvalidArgument naming it: not a tensor, wrong
  // rank, out of bounds, under a replicated path), and rank 0 checks the
  // boxes of all ranks together when it commits (docs/DISTRIBUTED.md). In
  // LoadTargets, an entry says which box of the global tensor the target
  // tensor wants. Optional; default empty.
  std::map<std::string, ShardBox> shards;

  bool empty() const {
    return module_interface_state.empty() && trainer_state.empty() && trainer_backend_state.empty();
  }
};

// What load() reads into: tensors the caller already holds (a model's
// parameters and buffers, an optimizer's state), placed at the paths where a
// saved Checkpoint holds them, e.g.
//   LoadTargets t;
//   t.into.module_interface_state = ackpt::ModuleState(*model);
//   ackpt::Checkpoint c = checkpointer.load(t);
// Every tensor the checkpoint holds at the same path with the same dtype and
// shape is read straight into the target (no second allocation; the returned
// Checkpoint holds that very tensor). Everything else loads into fresh
// tensors as load() would: targets the checkpoint lacks, or of another dtype
// or shape, are left alone (partial targets are fine), and non-tensor values
// in `into` are ignored. When a newer checkpoint fails to load after part of
// it had been read into the targets and an older one is loaded instead, the
// older one rewrites them; if it does not rewrite all of them (or nothing
// loads), load() throws kCorruption naming the targets that hold partly new
// bytes.
struct LoadTargets {
  Checkpoint into;
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
  // The same, reading tensors straight into `targets` (see LoadTargets).
  // The Trainer resumes through it. Default: load(), ignoring the targets
  // (a checkpointer that cannot load in place still resumes correctly: the
  // caller copies the loaded tensors).
  virtual Checkpoint load(const LoadTargets& targets) {
    (void)targets;
    return load();
  }
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

// The storage tier a checkpoint was saved in or loaded from (two tiers:
// DefaultCheckpointerArguments::local_tier, docs/TIERS.md).
enum class Tier {
  kNone,        // nothing was loaded
  kLocal,       // local_tier.dir (node-local; distributed: this rank's, or a peer's replica)
  kPersistent,  // save_dir
};
// "none", "local", "persistent".
ACKPT_EXPORT const char* TierName(Tier tier);

// The fast tier of a two-tier checkpointer (docs/TIERS.md). Every accepted
// save is written (encoded once) to `dir`; every persist_period-th index is
// then copied, byte for byte, to save_dir (the persistent tier) by one
// background promotion thread, which commits it there with the same protocol
// (temp file, fsync, rename, directory fsync; distributed: parts, then
// manifest). A slow or failing save_dir never blocks save(): promotions hold
// no staging memory (they read the committed local file in 4 MiB blocks),
// at most max_pending_promotions wait, and a due checkpoint that finds no
// room is skipped (counted, logged with its index). load() resumes the
// newest checkpoint complete in either tier.
struct LocalTierArguments {
  // Node-local directory (local NVMe, /dev/shm), created if missing and
  // owned (locked) like save_dir. Distributed: one per rank, seen only by
  // that rank; "{rank}" in it becomes the rank. Empty: one tier (save_dir
  // only), exactly as without this struct. Must not be save_dir. Default: "".
  std::string dir;
  // A checkpoint saved at index i is also promoted to save_dir when
  // i % persist_period == 0; save(force = true) always promotes and returns
  // once the promotion is done (or has failed: counters, promotion_error()).
  // Must be >= 1. Default: 1 (every checkpoint).
  int64_t persist_period = 1;
  // Retention of the local tier (retention.h), applied after every local
  // commit. DefaultCheckpointerArguments::retention governs save_dir and
  // counts only checkpoints save_dir holds, so it never deletes a
  // persistent copy because a newer checkpoint exists only locally.
  // Default: keep_last = 2.
  RetentionPolicy retention = DefaultLocalRetention();
  // Due promotions that may wait behind the one being copied. More costs
  // only open file handles (each waiting promotion holds its local file open,
  // so local retention cannot pull it away). Must be >= 0. Default: 1.
  int max_pending_promotions = 1;
  // Cap on the promotion copy rate in bytes per second, so it leaves the
  // shared file system's and the local disk's bandwidth to others; 0: no
  // cap. Default: 0.
  uint64_t promote_bytes_per_second = 0;
  // Scheduling of the promotion thread (engine.h). Default: kLow (nice 19).
  WriterPriority promote_priority = WriterPriority::kLow;

  bool enabled() const { return !dir.empty(); }
  static RetentionPolicy DefaultLocalRetention() {
    RetentionPolicy r;
    r.keep_last = 2;
    return r;
  }
};

// Incremental checkpoints (docs/INCREMENTAL.md). A tensor whose storage,
// storage offset, shape, strides, dtype, device and version counter are all
// unchanged since this checkpointer last wrote it (on the lineage it saves
// or resumed) is neither copied into staging nor written again: the new
// checkpoint records a reference to the file that holds its bytes (always
// that file itself, never a chain) with its checksum (docs/FORMAT.md
// section 15). Frozen parameters and untouched optimizer state are what
// benefit. Retention keeps every file a kept checkpoint references; load()
// follows references with the same checksums, and a checkpoint whose
// referenced file is missing or damaged is invalid (resume falls back to
// the newest valid one). The first save after construction or load() is
// full.
//
// The version counter is what detects a change: LibTorch bumps it on every
// in-place operation, but not on writes through data_ptr(), through
// Tensor::data() or in InferenceMode (inference tensors are never
// referenced). Code that writes a tensor that way must use full_every or
// verify, or not enable incremental saves.
struct IncrementalArguments {
  // Reference unchanged tensors instead of writing them. Costs per save one
  // comparison per tensor; saves staging memory, copying, hashing,
  // compression and disk traffic for every unchanged byte, and keeps the
  // files holding them (bases) as long as a kept checkpoint references
  // them. Not with local_tier (kInvalidArgument). Default: false.
  bool enabled = false;
  // Every full_every-th save of this checkpointer (counted from its
  // construction or the last load()) writes every tensor, so no base lives
  // longer than full_every saves and retention can free old ones. 0: only the
  // first save is full. Must be >= 0. Default: 0.
  int64_t full_every = 0;
  // Hash every referenced tensor on the writer thread before the save
  // commits and compare it with the referenced checksum: a mismatch (a
  // write that bypassed the version counter) fails that save with
  // kCorruption naming the tensor, raised at the next save() or wait(), and
  // the next save is full. Costs one XXH3 pass (~10 GB/s per core) over the
  // referenced bytes per save, off the training thread; the caller's tensor
  // is read while training goes on, so a tensor changed in place during the
  // hash is not reported (its version counter moved). Default: false.
  bool verify = false;
};

// DefaultCheckpointer's arguments: pymarlin's DefaultCheckpointerArguments
// (the first block) plus ackpt's own. The engine's options (compression,
// threads, staging, overlap, priority, logging, Env, ...) are inherited from
// EngineOptions (engine.h) and WriteOptions (format.h), documented there.
struct DefaultCheckpointerArguments : EngineOptions {
  // ---- pymarlin's fields -------------------------------------------------
  // Master switch: false makes save() and save_model() do nothing (the
  // checkpointer then only reads: it takes no lock and deletes nothing).
  // Default: true.
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
  // Where save_model() writes "{file_prefix}_model_{index}.{file_ext}[.zst]"
  // (it may be save_dir itself). Empty disables save_model(). When it
  // differs from save_dir, the checkpointer takes its ownership lock at the
  // first save_model() (or at construction with delete_existing_checkpoints).
  // Default: "checkpoints".
  std::string model_state_save_dir = "checkpoints";
  // Directory to load from. Empty: resume from save_dir (see
  // resume_from_save_dir). Default: "".
  std::string load_dir;
  // File in load_dir (or save_dir) to load; takes precedence over any
  // search for the newest checkpoint, and a failure to read it is an error.
  // Default: "" (newest valid checkpoint).
  std::string load_filename;
  // File names are "{file_prefix}_{index}.{file_ext}", plus ".zst" when
  // compressed. Non-empty, no '/'. Default: "model".
  std::string file_prefix = "model";
  // Non-empty, no '/', not starting with '.'. Default: "safetensors".
  std::string file_ext = "safetensors";

  // ---- ackpt's fields -------------------------------------------------------
  // When neither load_dir nor load_filename is set, load() resumes from the
  // newest valid checkpoint in save_dir (a corrupt newer file is skipped
  // with a warning naming it and why). Default: true.
  bool resume_from_save_dir = true;
  // Verify checksums when loading. Default: true.
  bool verify_on_load = true;
  // Which checkpoints to keep (retention.h), in save_dir. Default: keep
  // everything.
  RetentionPolicy retention;
  // Two tiers: save to a node-local directory first and promote every
  // persist_period-th checkpoint to save_dir in the background (see
  // LocalTierArguments). Default: off (one tier, save_dir).
  LocalTierArguments local_tier;
  // Incremental checkpoints: reference tensors unchanged since they were
  // last written (see IncrementalArguments). Default: off (every save is
  // full).
  IncrementalArguments incremental;
};

// Counters over the checkpointer's lifetime: the engine's, plus its own.
struct CheckpointerCounters : EngineCounters {
  uint64_t files_deleted = 0;       // by retention
  uint64_t temp_files_removed = 0;  // stale temp files cleaned at startup
  // Two tiers (local_tier): checkpoints copied to save_dir, due ones not
  // copied because promotions were behind, copies that failed (the local
  // checkpoint stays), and the bytes copied.
  uint64_t promotions_completed = 0;
  uint64_t promotions_skipped = 0;
  uint64_t promotions_failed = 0;
  uint64_t bytes_promoted = 0;
  // Distributed with two tiers: parts sent to and received from the peer,
  // exchanges that failed (the checkpoint commits without that replica),
  // and the bytes received.
  uint64_t replications_completed = 0;
  uint64_t replications_failed = 0;
  uint64_t bytes_replicated = 0;
  // Incremental saves: tensors referenced instead of written, and their
  // bytes (neither staged nor written), over all saves.
  uint64_t tensors_referenced = 0;
  uint64_t bytes_referenced = 0;
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
  Checkpoint load(const LoadTargets& targets) override;
  // Returns once every save so far is durable (two tiers: and every
  // promotion queued so far is done or has failed); raises a background
  // error (a failed promotion is not one: counters, promotion_error()).
  void wait() override;
  // Returns once the snapshot of every save so far is copied (returns at
  // once without overlap_snapshot). Does not raise background errors: save()
  // and wait() do.
  void wait_snapshot() override;

  // Loading helpers; each throws kNotFound if there is no such readable
  // checkpoint in save_dir (two tiers: in either tier, the local copy first),
  // and reads into `targets` as load() does.
  // Newest valid (skipping corrupt ones with a warning).
  Checkpoint load_latest(const LoadTargets& targets = {});
  // Exactly this index.
  Checkpoint load_index(int64_t index, const LoadTargets& targets = {});
  // Best by a metric stored with save() (Checkpoint::metrics); mode_max:
  // larger is better. Corrupt files are skipped with a warning.
  Checkpoint load_best(const std::string& metric, bool mode_max = false,
                       const LoadTargets& targets = {});
  // The checkpoints in save_dir (the persistent tier), newest first, with the
  // rules keeping each (see EvaluateRetention). Reads only headers.
  std::vector<CheckpointEntry> list_checkpoints() const;

  // The path the last accepted save() writes (or wrote); "" before any.
  std::string last_saved_path() const;
  // The file load() read; "" if it returned an empty Checkpoint.
  std::string last_loaded_path() const;
  // The tier that file was in (kNone if nothing was loaded; kPersistent
  // with one tier).
  Tier last_loaded_tier() const;
  // Two tiers: why the last failed promotion failed; "" if none has.
  std::string promotion_error() const;
  // Two tiers: the checkpoints in local_tier.dir, newest first, with the
  // local retention rules keeping each. Empty with one tier.
  std::vector<CheckpointEntry> list_local_checkpoints() const;
  CheckpointerCounters counters() const;
  const DefaultCheckpointerArguments& args() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ackpt
