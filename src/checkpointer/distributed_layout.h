// What each rank's part file of a distributed checkpoint holds
// (docs/DISTRIBUTED.md, "Part files"): the rank's local state under "local",
// its share of the replicated tensors under "replicated/<i>" (i: the tensor's
// position among all replicated tensors), and, in rank 0's part only, the
// names of the replicated tensors and their state tree. The one place that
// knows the part layout, for save and load.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <vector>

#include "ackpt/checkpointer.h"
#include "ackpt/format.h"

namespace ackpt {

inline constexpr const char* kPartLocal = "local";
inline constexpr const char* kPartReplicated = "replicated";
inline constexpr const char* kPartReplicatedNames = "replicated_names";  // rank 0's part only
inline constexpr const char* kPartReplicatedTree = "replicated_tree";    // rank 0's part only

// Throws kInvalidArgument naming the path unless every path is a
// '/'-separated path of keys under one of the three state groups.
void ValidateReplicatedPaths(const std::vector<std::string>& paths);

// A checkpoint split into rank-local state and replicated tensors.
struct SplitCheckpoint {
  StateDict local;                  // the Checkpoint's layout without the replicated subtrees
  bool has_local = false;           // local holds anything but empty groups
  std::vector<std::string> names;   // the replicated tensors' flattened names, in order
  std::vector<at::Tensor> tensors;  // and the tensors
  std::string tree;                 // the replicated state tree (format's ackpt.tree JSON)
};
SplitCheckpoint SplitReplicated(const Checkpoint& checkpoint,
                                const std::vector<std::string>& replicated_paths);

// Which rank writes each replicated tensor: largest first, each to the rank
// with the fewest bytes so far (ties: lowest rank). Every rank computes the
// same assignment from the same names and sizes, without communicating
// (ties: by name).
std::vector<int> AssignOwners(const SplitCheckpoint& split, int world);

// The StateDict rank `rank` of `world` writes for `split`.
StateDict PartState(const SplitCheckpoint& split, int rank, int world);

// The name of replicated tensor i in a part file.
std::string ReplicatedTensorName(size_t i);
// i for a part file's tensor name of a replicated tensor; -1 for others.
int64_t ReplicatedTensorIndex(const std::string& name);

// Load targets by part-file tensor name: the local ones ("local/...") and,
// for each replicated tensor name of the saved checkpoint, its target.
struct PartTargets {
  std::map<std::string, at::Tensor> local;       // part-file name ("local/...") -> target
  std::map<std::string, at::Tensor> replicated;  // replicated flattened name -> target
};
PartTargets MapPartTargets(const LoadTargets& targets,
                           const std::vector<std::string>& replicated_paths);

// The scalars of a part file's state tree (its tensors are not read: empty
// placeholders stand in). Throws kCorruption for a file ackpt did not write
// as a part.
StateDict PartScalars(const CheckpointReader& reader);

// Rebuilds the Checkpoint from the local root and the replicated tensors
// (`tree` and `by_name`, as saved). Throws kCorruption naming `path`.
Checkpoint JoinReplicated(StateDict local, const std::string& tree,
                          const std::map<std::string, at::Tensor>& by_name,
                          const std::string& path);

}  // namespace ackpt
