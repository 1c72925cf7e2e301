// Which checkpoints to keep, and what is on disk.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/export.h"

namespace ackpt {

// Retention rules for full checkpoints in save_dir. A checkpoint is deleted
// only when no active rule keeps it; with every rule off (the default) all
// checkpoints are kept, as in pymarlin. The newest committed checkpoint is
// never deleted, nor one that this process has open for reading. Deletion
// runs on the writer pool after a newer checkpoint is committed, never
// before, so a crash can leave extra files but never lose a kept one. Only
// the process that owns save_dir (the writing checkpointer holding its lock)
// ever deletes; it decides from its in-memory catalog, without opening files.
//
// "Newest" and "most recent" follow lineage, not the index alone. Every
// checkpoint records its parent: the checkpoint saved (or resumed from) just
// before it in the same run. The newest checkpoint is the one committed last
// (highest "generation"); the order is its lineage (it, its parent, that one's
// parent, ...) followed by every other checkpoint, most recently committed
// first (files without lineage, from format version 1, by index). So after a
// rollback (resume from 100 while 180 and 190 exist, then save 110, 120),
// the new run's checkpoints are the newest and are never deleted by the pass
// after their own commit; the abandoned branch (180, 190) is older than
// them and is retired by the rules like any other checkpoint; load()
// resumes 120.
struct ACKPT_EXPORT RetentionPolicy {
  // Keep the N most recent checkpoints (in the lineage order above). 0 = rule
  // off. Default: 0.
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

// One checkpoint on disk, as far as its header (or manifest) tells: a file,
// or a distributed checkpoint (world_size > 0), whose path is its manifest.
struct CheckpointEntry {
  int64_t index = 0;
  std::string path;
  int world_size = 0;              // distributed: the ranks that wrote it; 0: one file
  std::vector<std::string> parts;  // distributed: its part files (manifest's directory), by rank
  bool compressed = false;
  uint64_t file_bytes = 0;  // on disk (distributed: all parts)
  uint64_t logical_bytes = 0;
  int64_t parent = -1;      // index of the checkpoint before it in its run; -1: none or unknown
  uint64_t generation = 0;  // commit order in the directory (1, 2, ...); 0: unknown (format v1)
  double save_time = 0;     // seconds since the epoch, from the file (mtime if absent)
  std::map<std::string, double> metrics;
  bool readable = true;  // false: the header failed validation (`error` says why)
  std::string error;
  // Incremental: base names of the files (in the same directory) holding
  // tensors this checkpoint references (distributed: those of its parts).
  std::vector<std::string> references;
  std::vector<std::string> kept_by;  // filled by EvaluateRetention
  double compression_ratio() const {
    return file_bytes ? static_cast<double>(logical_bytes) / file_bytes : 1.0;
  }
  // Base names of the files it is stored in: its file, or its parts.
  std::vector<std::string> files() const {
    return world_size > 0 ? parts : std::vector<std::string>{BaseName(path)};
  }
};

// Lists the checkpoints in dir, newest first (the lineage order above): the
// files "{prefix}_{index}.{ext}[.zst]" (reading only each header) and the
// distributed checkpoints "{prefix}_{index}.manifest.json" (reading only the
// manifests; world_size > 0). Takes no lock and deletes nothing. A missing
// directory yields none.
ACKPT_EXPORT std::vector<CheckpointEntry> ListCheckpointEntries(
    Env* env, const std::string& dir, const std::string& prefix,
    const std::string& ext = "safetensors");

// Sorts entries newest first, in the lineage order described above.
ACKPT_EXPORT void SortNewestFirst(std::vector<CheckpointEntry>* entries);

// Sorts the entries newest first (SortNewestFirst), fills kept_by for every entry (names of the
// rules keeping it: "newest", "keep_last", "keep_every", "keep_best", "keep_time_interval",
// "max_total_bytes", "open", "all" when no rule is active, "unreadable",
// "base" for a file a kept checkpoint references) and returns the entries no
// rule keeps, each before the files it references. Unreadable files are never
// deleted.
ACKPT_EXPORT std::vector<CheckpointEntry> EvaluateRetention(std::vector<CheckpointEntry>* entries,
                                                            const RetentionPolicy& policy);

}  // namespace ackpt
