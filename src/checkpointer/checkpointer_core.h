// What every checkpointer is built on (DefaultCheckpointer and
// DistributedCheckpointer): the validated arguments, the logger, the save
// engine, the period/index gate of save(), the directory it owns (the
// CheckpointDir of save_dir: names, catalog, lineage, retention), the model
// directory and save_model(), and the load bookkeeping. Each checkpointer adds
// only its own policy: where a save goes and how load() finds what to read.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ackpt/checkpointer.h"
#include "checkpointer/checkpoint_dir.h"
#include "checkpointer/checkpoint_file.h"
#include "checkpointer/incremental.h"
#include "checkpointer/promoter.h"
#include "engine/engine.h"

namespace ackpt {

// Throws kInvalidArgument naming "DefaultCheckpointerArguments.<field>" for
// arguments no checkpointer accepts (the engine's own fields are checked by
// the engine, under the same name).
void ValidateCheckpointerArguments(const DefaultCheckpointerArguments& args);

// local_tier.dir with "{rank}" replaced by `rank`.
std::string LocalTierDir(const LocalTierArguments& tier, int rank);

// load()'s candidates of two tiers, each list newest first in its own
// (lineage) order: merged by index, higher first, the local one first at
// equal index (the persistent copy of the same checkpoint stays as its
// fallback). T has an `index`.
template <typename T>
std::vector<T> MergeTiers(std::vector<T> local, std::vector<T> persistent) {
  std::vector<T> out;
  out.reserve(local.size() + persistent.size());
  size_t i = 0, j = 0;
  while (i < local.size() || j < persistent.size()) {
    if (j == persistent.size() || (i < local.size() && local[i].index >= persistent[j].index)) {
      out.push_back(std::move(local[i++]));
    } else {
      out.push_back(std::move(persistent[j++]));
    }
  }
  return out;
}

// One save's incremental plan, filled inside engine.Save() (AddIncrementalHooks).
struct IncrementalBox {
  std::shared_ptr<IncrementalSave> plan;
};

class CheckpointerCore {
 public:
  // Validates `args`, builds the engine and, when `owns_save_dir`, opens
  // save_dir as its one writer (the lock, temp hygiene, and
  // delete_existing_checkpoints); otherwise save_dir is only created. With
  // two tiers (local_tier), every process opens its local directory
  // ("{rank}" replaced by `rank`) as its writer and starts the promoter.
  CheckpointerCore(DefaultCheckpointerArguments args, bool owns_save_dir, int rank = 0);
  // The engine drains (and goes) first: its threads use the directories.
  ~CheckpointerCore();
  CheckpointerCore(const CheckpointerCore&) = delete;
  CheckpointerCore& operator=(const CheckpointerCore&) = delete;

  const DefaultCheckpointerArguments& args() const { return args_; }
  spdlog::logger& log() const { return *engine_->logger(); }
  engine::Engine& engine() { return *engine_; }
  // The caller's Env, for foreground reads.
  Env* env() const { return env_; }
  bool compressed() const { return args_.compression != Compression::kNone; }
  // save_dir's CheckpointDir when this process owns it, else null.
  const std::shared_ptr<CheckpointDir>& dir() const { return dir_; }
  // Two tiers: the local tier's CheckpointDir (this process always owns
  // it), and the promoter; null with one tier.
  const std::shared_ptr<CheckpointDir>& local() const { return local_; }
  const std::shared_ptr<Promoter>& promoter() const { return promoter_; }
  // The directory saves are written to: the local tier's, else save_dir.
  std::string write_dir() const { return local_ ? local_->dir() : args_.save_dir; }
  // Which tier a path load() read is in.
  Tier TierOf(const std::string& path) const;
  // Two tiers: whether the save of `index` is promoted.
  bool PromotionDue(int64_t index, bool force) const;
  // save_dir's CheckpointDir, opened for reading when this process does not
  // own it (a reader rescans: the owning writer may have committed since).
  std::shared_ptr<CheckpointDir> Catalog();
  // A CheckpointDir of `dir` with this checkpointer's names (writer: take
  // its lock; else only read it, e.g. load_dir).
  std::shared_ptr<CheckpointDir> OpenDir(const std::string& dir, bool writer) const;

  // The gate of save(index, force): false when checkpointing is off or the
  // index is not due (index % period); throws kInvalidArgument for a
  // negative index.
  bool ShouldSave(int64_t index, bool force) const;
  // Hooks that commit a checkpoint file into dir() (two tiers: local()):
  // its metadata, the lineage stamp, and the catalog update and retention
  // after the commit; with two tiers, the promotion of a due one (`seq`:
  // the save's number, for WaitPromotion).
  engine::SaveHooks CheckpointFileHooks(int64_t index, const std::map<std::string, double>& metrics,
                                        bool force = false, uint64_t seq = 0) const;
  // engine().Save(state, index, path, force, hooks), with incremental saves
  // (args.incremental) added: the selection of unchanged tensors, their
  // references in the header, the record of what the file holds, and the
  // tracker's bookkeeping after. Returns false if kSkip dropped the save.
  bool Save(const StateDict& state, int64_t index, const std::string& path, bool force,
            engine::SaveHooks hooks);
  // Two tiers: returns once the promotion of save `seq` is done (or failed).
  void WaitPromotion(uint64_t seq);
  // Two tiers: returns once every promotion queued so far is done.
  void WaitPromotions();
  // The newest-first candidates of load(): save_dir's checkpoints, merged
  // with the local tier's (by index, the local copy first at equal index).
  std::vector<CheckpointEntry> LoadCandidates();
  // save_model(): model_state to "{prefix}_model_{index}" in
  // model_state_save_dir, durable when it returns; model retention after.
  void SaveModel(const StateDict& model_state, int64_t index);
  // Waits (drain_timeout_seconds) for pending saves: load() never reads a
  // file still being written.
  void Drain();

  ReadOptions LoadReadOptions() const;
  // load() read `path` (index -1: unknown); when it is in save_dir (or the
  // local tier), the next save continues its lineage.
  void Loaded(const std::string& path, int64_t index, bool in_save_dir);
  Tier last_loaded_tier() const;
  std::string promotion_error() const;
  void Saved(const std::string& path);
  std::string last_saved_path() const;
  std::string last_loaded_path() const;
  CheckpointerCounters counters() const;

 private:
  DefaultCheckpointerArguments args_;
  Env* env_ = nullptr;
  // Declared before the engine so that the engine (and its drain) goes first.
  std::shared_ptr<CheckpointDir> dir_;        // save_dir, when owned
  std::shared_ptr<CheckpointDir> model_dir_;  // model_state_save_dir (may be dir_)
  std::shared_ptr<CheckpointDir> local_;      // two tiers: local_tier.dir
  std::shared_ptr<Promoter> promoter_;        // two tiers; outlives the engine's hooks
  std::unique_ptr<engine::Engine> engine_;
  // Incremental saves: adds to `hooks` what Save() describes; `path` is the
  // file the save writes. Returns null when off. IncrementalSaveDone after
  // engine.Save() (accepted: it returned true; false when it skipped the
  // save or threw).
  std::shared_ptr<IncrementalBox> AddIncrementalHooks(const std::string& path,
                                                      engine::SaveHooks* hooks);
  void IncrementalSaveDone(const std::shared_ptr<IncrementalBox>& box, bool accepted);

  std::shared_ptr<IncrementalTracker> incremental_;  // args.incremental.enabled
  uint64_t failures_seen_ = 0;                       // engine saves_failed, for the tracker
  std::atomic<uint64_t> tensors_referenced_{0};
  std::atomic<uint64_t> bytes_referenced_{0};
  mutable std::mutex mu_;
  std::string last_saved_path_;
  std::string last_loaded_path_;
  Tier last_loaded_tier_ = Tier::kNone;
};

}  // namespace ackpt
