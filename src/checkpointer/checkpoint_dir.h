// CheckpointDir: the one owner of a checkpoint directory.
//
// It alone knows the file-name scheme (with file_names.cc), the checkpointer's
// metadata keys (metadata_keys.h), the ownership lock, temp-file hygiene and
// the in-memory catalog of what the directory holds: checkpoint files, model
// files and the manifests of distributed checkpoints (manifest.h). A writer opens it once:
// it locks the directory (a second writer gets kBusy naming the holder),
// removes temp files of writers that are gone, and scans the directory once;
// afterwards the catalog is updated on every commit and delete, so no save
// ever re-reads an existing file. Readers open it without the lock, delete
// nothing, and rescan when asked (Refresh), since a writer may be at work.
//
// Lineage: every checkpoint records its parent (the checkpoint its run saved
// or resumed from just before it) and a generation (1 + the highest in the
// directory when it was committed). The *head* is the readable checkpoint of
// the highest generation (files without one, written by format version 1,
// count as generation 0 and rank by index). "Newest first" means: the head's
// lineage (head, its parent, its parent's parent, ...), then every other
// checkpoint by generation, then index, highest first. After a rollback the
// new run's checkpoints are its head's lineage, so retention never deletes
// them in favour of the abandoned branch, and load() resumes them.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/retention.h"
#include "checkpointer/manifest.h"
#include "checkpointer/metadata_keys.h"

namespace spdlog {
class logger;
}

namespace ackpt {

struct CheckpointDirOptions {
  std::string dir;
  std::string prefix = "model";
  std::string ext = "safetensors";
  // true: create the directory, lock it, clean stale temp files; may delete.
  bool writer = false;
  std::shared_ptr<Env> env;                // required
  std::shared_ptr<spdlog::logger> logger;  // null: spdlog's default logger
};

class CheckpointDir {
 public:
  // The lock file in a writer's directory.
  static constexpr const char* kLockFileName = ".ackpt.lock";

  // Throws kBusy if another writer holds the directory's lock.
  static std::shared_ptr<CheckpointDir> Open(CheckpointDirOptions options);
  ~CheckpointDir();
  CheckpointDir(const CheckpointDir&) = delete;
  CheckpointDir& operator=(const CheckpointDir&) = delete;

  const std::string& dir() const { return o_.dir; }
  bool writer() const { return o_.writer; }
  std::string PathFor(FileKind kind, int64_t index, bool compressed) const;
  // "{dir}/{prefix}_{index}.manifest.json"
  std::string ManifestPath(int64_t index) const;

  // The metadata a save of `kind` carries from the start (kind, index, save
  // time, metrics, the retention policy in force).
  std::map<std::string, std::string> Metadata(FileKind kind, int64_t index,
                                              const std::map<std::string, double>& metrics,
                                              const RetentionPolicy& policy) const;
  // The lineage of the next checkpoint committed here: its parent (-1: a
  // new lineage) and generation. Called on the writer thread, in commit order.
  struct Lineage {
    int64_t parent = -1;
    uint64_t generation = 0;
  };
  Lineage NextLineage();
  // NextLineage() as metadata entries (ackpt.parent, ackpt.generation).
  void StampLineage(std::map<std::string, std::string>* metadata);
  // After a commit (no file is opened: the catalog learns from what was written).
  void RecordCommit(FileKind kind, int64_t index, const std::string& path, uint64_t file_bytes,
                    uint64_t logical_bytes, bool compressed,
                    const std::map<std::string, std::string>& metadata);
  // A distributed checkpoint's manifest was committed at `path`.
  void RecordManifest(const Manifest& manifest, const std::string& path);
  // load() resumed from this checkpoint of this directory: it becomes the
  // parent of the next save.
  void RecordResume(int64_t index);
  // Two tiers: the local tier's generations continue above the persistent
  // tier's, so that promoted copies (which carry the local stamp) keep
  // ranking newest there even after the local tier was wiped.
  uint64_t max_generation() const;
  void RaiseGeneration(uint64_t at_least);

  // Full checkpoints (files), newest first in the lineage order above.
  std::vector<CheckpointEntry> Checkpoints() const;
  // Distributed checkpoints (world_size > 0), newest first likewise.
  std::vector<CheckpointEntry> Manifests() const;
  // Model files, highest index first.
  std::vector<CheckpointEntry> Models() const;
  // Rescans the directory (readers; a writer's catalog is always current).
  void Refresh();

  // Writer only. Delete what the rules do not keep; return how many
  // checkpoints went. `kind`: kCheckpoint (files) or kPart (distributed
  // checkpoints: the manifest goes first, so the checkpoint stops existing
  // before its parts are removed).
  size_t ApplyRetention(const RetentionPolicy& policy, FileKind kind = FileKind::kCheckpoint);
  size_t ApplyModelRetention(int64_t keep_last);
  // Writer only. Part files of distributed checkpoints that never committed
  // (no manifest), for the indices `may_remove` accepts (those no save can
  // still be writing).
  void RemoveOrphanParts(const std::function<bool(int64_t)>& may_remove);
  // delete_existing_checkpoints: ackpt's own files of this prefix (checkpoints,
  // model files, temp files of writers that are gone).
  size_t DeleteOwnFiles();
  size_t temp_files_removed() const { return temp_files_removed_; }
  uint64_t files_deleted() const;

 private:
  explicit CheckpointDir(CheckpointDirOptions options);
  void Scan();
  size_t RemoveStaleTempFiles();
  bool IsOwnName(const std::string& name) const;
  void Delete(const CheckpointEntry& entry, std::vector<CheckpointEntry>* list);
  // A copy of one of the lists below, taken under mu_.
  std::vector<CheckpointEntry> CopyOf(const std::vector<CheckpointEntry>& list) const;

  const CheckpointDirOptions o_;
  std::shared_ptr<spdlog::logger> log_;
  std::unique_ptr<FileLock> lock_;
  mutable std::mutex mu_;
  std::vector<CheckpointEntry> checkpoints_;  // unordered; ordered on the way out
  std::vector<CheckpointEntry> models_;
  std::vector<CheckpointEntry> manifests_;
  uint64_t max_generation_ = 0;
  int64_t run_head_ = -1;  // parent of the next save; -1: a new lineage
  size_t temp_files_removed_ = 0;
  uint64_t files_deleted_ = 0;
};

// Reads one checkpoint's header into an entry (readable = false with the
// reason when it does not validate). The file must exist.
CheckpointEntry ReadCheckpointEntry(Env* env, const std::string& path, int64_t index);

}  // namespace ackpt
