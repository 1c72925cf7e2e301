// Which checkpoints to keep, and what is on disk.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ackpt/env.h"

namespace ackpt {

// Retention rules for full checkpoints in save_dir. A checkpoint is deleted
// only when no active rule keeps it; with every rule off (the default) all
// checkpoints are kept, as in pymarlin. The newest committed checkpoint is
// never deleted, nor one that this process has open for reading. Deletion
// runs on the writer pool after a newer checkpoint is committed, never
// before, so a crash can leave extra files but never lose a kept one.
struct RetentionPolicy {
  // Keep the N most recent checkpoints (by index). 0 = rule off. Default: 0.
  int64_t keep_last = 0;
  // Keep, for good, checkpoints whose index is a multiple of K. 0 = off. Default: 0.
  int64_t keep_every = 0;
  // Keep the K best checkpoints by `best_metric` (a key of Checkpoint::metrics).
  // Checkpoints without that metric, or with a NaN value, rank below every
  // checkpoint that has it and are never kept by this rule. 0 = off. Default: 0.
  int64_t keep_best = 0;
  // The metric keep_best ranks by, e.g. "val_loss". Required when keep_best > 0.
  std::string best_metric;
  // true: larger is better (accuracy); false: smaller is better (loss). Default: false.
  bool best_mode_max = false;
  // Keep at least one checkpoint per T seconds of wall time: walking from the
  // oldest, a checkpoint is kept when it was saved at least T seconds after the
  // previous one this rule kept (the oldest is always kept). Times are the
  // save() wall-clock times stored in each file. 0 = off. Default: 0.
  double keep_time_interval_seconds = 0;
  // Keep the most recent checkpoints whose sizes on disk add up to at most
  // this many bytes (the newest is kept even if larger). Other rules may keep
  // more, so this bounds only what this rule keeps. 0 = off. Default: 0.
  uint64_t max_total_bytes = 0;
  // Keep the N most recent model-only files (save_model) in
  // model_state_save_dir. 0 = keep all. Default: 0.
  int64_t model_keep_last = 0;

  bool any_rule() const {
    return keep_last > 0 || keep_every > 0 || keep_best > 0 || keep_time_interval_seconds > 0 ||
           max_total_bytes > 0;
  }
};

// One checkpoint file on disk, as far as its header tells.
struct CheckpointEntry {
  int64_t index = 0;
  std::string path;
  uint64_t file_bytes = 0;
  uint64_t logical_bytes = 0;
  double save_time = 0;  // seconds since the epoch, from the file (mtime if absent)
  std::map<std::string, double> metrics;
  bool readable = true;  // false: the header failed validation (`error` says why)
  std::string error;
  std::vector<std::string> kept_by;  // filled by EvaluateRetention
  double compression_ratio() const {
    return file_bytes ? static_cast<double>(logical_bytes) / file_bytes : 1.0;
  }
};

// Lists the checkpoints "{prefix}_{index}.{ext}[.zst]" in dir, newest index
// first, reading only each file's header. A missing directory yields none.
std::vector<CheckpointEntry> ListCheckpointEntries(Env* env, const std::string& dir,
                                                   const std::string& prefix,
                                                   const std::string& ext = "safetensors");

// Fills kept_by for every entry (names of the rules keeping it: "newest",
// "keep_last", "keep_every", "keep_best", "keep_time_interval",
// "max_total_bytes", "open", "all" when no rule is active, "unreadable") and
// returns the entries no rule keeps. Unreadable files are never deleted.
std::vector<CheckpointEntry> EvaluateRetention(std::vector<CheckpointEntry>* entries,
                                               const RetentionPolicy& policy);

}  // namespace ackpt
