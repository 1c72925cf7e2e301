// A Checkpoint as one file: its layout, the synchronous write and read, and
// reading into tensors the caller holds.
#include "checkpointer/checkpoint_file.h"

#include <algorithm>

#include "ackpt/async_writer.h"
#include "ackpt/error.h"
#include "checkpointer/metadata_keys.h"
#include "format/writer.h"

namespace ackpt {

bool IsStateGroup(const std::string& name) {
  return std::find(std::begin(kStateGroups), std::end(kStateGroups), name) !=
         std::end(kStateGroups);
}

StateDict CheckpointLayout(const Checkpoint& c) {
  StateDict root;
  root.set(kStateGroups[0], c.module_interface_state);
  root.set(kStateGroups[1], c.trainer_state);
  root.set(kStateGroups[2], c.trainer_backend_state);
  return root;
}

Checkpoint CheckpointFromLayout(StateDict root, const std::string& path) {
  Checkpoint c;
  StateDict* groups[] = {&c.module_interface_state, &c.trainer_state, &c.trainer_backend_state};
  for (auto& kv : root) {
    if (!kv.second.is_dict()) {
      throw Error::Corruption("'" + path + "': top-level entry '" + kv.first +
                              "' is not a state group");
    }
    auto it = std::find(std::begin(kStateGroups), std::end(kStateGroups), kv.first);
    if (it == std::end(kStateGroups)) {
      throw Error::Corruption("'" + path + "' has an unknown top-level group '" + kv.first + "'");
    }
    *groups[it - std::begin(kStateGroups)] = std::move(kv.second.dict());
  }
  return c;
}

std::map<std::string, at::Tensor> TargetTensors(const LoadTargets& targets) {
  if (targets.into.empty()) return {};
  return FlattenTensors(CheckpointLayout(targets.into));
}

std::vector<std::string> MatchingTargets(const CheckpointReader& reader,
                                         const std::map<std::string, at::Tensor>& destinations) {
  std::vector<std::string> out;
  if (destinations.empty()) return out;
  for (const TensorInfo& t : reader.all_tensors()) {
    auto it = destinations.find(t.name);
    if (it == destinations.end()) continue;
    const at::Tensor& d = it->second;
    if (d.defined() && d.layout() == at::kStrided && d.scalar_type() == t.scalar_type &&
        d.sizes() == at::IntArrayRef(t.shape)) {
      out.push_back(t.name);
    }
  }
  return out;
}

void DamagedTargets::Failed(const std::vector<std::string>& names) {
  names_.insert(names.begin(), names.end());
}

void DamagedTargets::Succeeded(const std::vector<std::string>& names) {
  for (const auto& n : names) names_.erase(n);
}

void DamagedTargets::ThrowIfAny() const {
  if (names_.empty()) return;
  std::string list;
  size_t i = 0;
  for (const auto& n : names_) {
    if (i == 5) {
      list += ", ... (" + std::to_string(names_.size()) + " in all)";
      break;
    }
    list += (i++ ? ", " : "") + n;
  }
  throw Error::Corruption(
      "a checkpoint failed to load after part of it had been read into the load targets (see the "
      "warnings above), and no checkpoint loaded after it rewrote these tensors: " +
      list +
      ". They no longer hold their earlier values; rebuild them and retry, or remove the "
      "damaged checkpoint");
}

Checkpoint ReadCheckpointInto(const std::string& path, const ReadOptions& options, Env* env,
                              const std::map<std::string, at::Tensor>& targets,
                              DamagedTargets* damage) {
  auto reader = CheckpointReader::Open(path, options, env);
  const auto& meta = reader->info().metadata;
  auto kind = meta.find(kMetaKind);
  if (kind != meta.end() && kind->second != "checkpoint") {
    throw Error::InvalidArgument("'" + path + "' is a " + kind->second +
                                 " file, not a full checkpoint");
  }
  const std::vector<std::string> written = MatchingTargets(*reader, targets);
  StateDict root;
  try {
    root = targets.empty() ? reader->ReadStateDict()
                           : reader->ReadStateDictInto(targets, /*strict=*/false);
  } catch (...) {
    if (damage) damage->Failed(written);
    throw;
  }
  if (damage) damage->Succeeded(written);
  Checkpoint c = CheckpointFromLayout(std::move(root), path);
  c.metrics = ParseMetrics(meta);
  return c;
}

WriteResult WriteCheckpointFile(const Checkpoint& checkpoint, const std::string& path,
                                const WriteOptions& options, Env* env) {
  return format::WriteStateDictSync(CheckpointLayout(checkpoint), path, options,
                                    BaseMetadata(FileKind::kCheckpoint, 0, checkpoint.metrics),
                                    env);
}

Checkpoint ReadCheckpointFile(const std::string& path, const ReadOptions& options, Env* env,
                              const LoadTargets& targets) {
  return ReadCheckpointInto(path, options, env, TargetTensors(targets), nullptr);
}

}  // namespace ackpt
