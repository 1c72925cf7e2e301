// The commit of a distributed checkpoint through the c10d Store
// (docs/DISTRIBUTED.md, "Commit"): every rank's writer publishes its durable
// part; rank 0's writer waits for all of them (commit_timeout_seconds),
// writes the manifest atomically into the CheckpointDir it owns and
// announces the verdict; the other ranks' writers wait for it. Only the
// Store is used, never a process group, so the background never interleaves
// with the trainer's collectives. Held by shared_ptr by the save hooks that
// run it (background work holds what it uses).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <vector>

#include "checkpointer/checkpoint_dir.h"
#include "checkpointer/manifest.h"

namespace spdlog {
class logger;
}

namespace ackpt {

struct StoreCommitOptions {
  c10::intrusive_ptr<c10d::Store> store;
  std::string key_prefix;  // this checkpointer instance's keys: "{key_prefix}{seq}/..."
  int rank = 0;
  int world = 1;
  double timeout_seconds = 300;
  std::shared_ptr<CheckpointDir> dir;   // rank 0: where the manifest goes
  std::shared_ptr<Env> env;             // the engine's (detachable) Env
  std::vector<std::string> replicated;  // recorded in the manifest
  bool fsync = true;
  std::shared_ptr<spdlog::logger> logger;
  // Two tiers: rank 0's verdict carries the manifest, and every other rank
  // writes it into its own `dir` (its local tier), so each local tier lists
  // every committed checkpoint. Requires `dir` on every rank.
  bool copy_manifest = false;
};

class StoreCommit {
 public:
  explicit StoreCommit(StoreCommitOptions options) : o_(std::move(options)) {}

  // On the writer, once this rank's part of the `seq`-th save (checkpoint
  // `index`) is durable. Returns once the checkpoint is committed; throws
  // kTimedOut naming the ranks whose parts were missing, or rank 0's verdict.
  void Publish(uint64_t seq, int64_t index, const Manifest::Part& part,
               const std::map<std::string, double>& metrics);
  // This rank cannot publish its part of the `seq`-th save: the commit
  // fails on every rank with `why` at once, instead of at the timeout.
  void Abort(uint64_t seq, const std::string& why);

 private:
  std::string Key(uint64_t seq, const std::string& what) const;
  void AwaitVerdict(uint64_t seq, int64_t index, int64_t timeout_ms);
  void Commit(uint64_t seq, int64_t index, const std::map<std::string, double>& metrics);

  const StoreCommitOptions o_;
};

}  // namespace ackpt
