// How a Checkpoint is laid out in a file: its three state groups as the
// top-level entries of one StateDict (docs/FORMAT.md, "The state tree"), and
// how a file is read into the tensors a caller already holds (LoadTargets).
// The one place that knows the group names: WriteCheckpointFile,
// ReadCheckpointFile, AsyncWriter and both checkpointers go through these.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "ackpt/checkpointer.h"
#include "ackpt/format.h"

namespace ackpt {

// The top-level groups of a checkpoint file, in file order.
inline constexpr const char* kStateGroups[] = {"module_interface_state", "trainer_state",
                                               "trainer_backend_state"};
bool IsStateGroup(const std::string& name);

StateDict CheckpointLayout(const Checkpoint& checkpoint);
// Throws kCorruption naming `path` for anything but the three groups.
Checkpoint CheckpointFromLayout(StateDict root, const std::string& path);

// The tensors of `targets` by the flattened name a checkpoint file gives
// them ("module_interface_state/fc.weight"), as FlattenTensors does.
std::map<std::string, at::Tensor> TargetTensors(const LoadTargets& targets);

// The names in `destinations` (keyed by tensor name in the file) whose
// tensor `reader` reads (held or referenced) with the same dtype and shape,
// the destination being dense: the tensors a lenient
// ReadStateDictInto(destinations) writes.
std::vector<std::string> MatchingTargets(const CheckpointReader& reader,
                                         const std::map<std::string, at::Tensor>& destinations);

// Which targets may hold partly new bytes: a read into them that failed
// (checksums are checked as the bytes land) leaves them so until a later
// read that succeeds rewrites them.
class DamagedTargets {
 public:
  void Failed(const std::vector<std::string>& names);
  void Succeeded(const std::vector<std::string>& names);
  bool empty() const { return names_.empty(); }
  size_t size() const { return names_.size(); }
  // Throws kCorruption naming the damaged targets (the first few) if any.
  void ThrowIfAny() const;

 private:
  std::set<std::string> names_;
};

// Reads the Checkpoint file at `path` (kind checked: kInvalidArgument for a
// model-only file), each tensor of `targets` that fits read straight into
// it; `damage` (if given) learns which targets the read wrote or, when it
// threw, may have written.
Checkpoint ReadCheckpointInto(const std::string& path, const ReadOptions& options, Env* env,
                              const std::map<std::string, at::Tensor>& targets,
                              DamagedTargets* damage);

}  // namespace ackpt
