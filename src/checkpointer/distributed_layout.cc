#include "checkpointer/distributed_layout.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "ackpt/error.h"
#include "checkpointer/checkpoint_file.h"
#include "format/constants.h"
#include "format/flatten.h"

namespace ackpt {

namespace {

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= path.size()) {
    size_t e = path.find('/', b);
    if (e == std::string::npos) e = path.size();
    out.push_back(path.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// Removes the subtree at `path` from root and returns it; null if absent.
std::unique_ptr<Value> TakeSubtree(StateDict* root, const std::vector<std::string>& path) {
  StateDict* d = root;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    Value* v = d->find(path[i]);
    if (v == nullptr || !v->is_dict()) return nullptr;
    d = &v->dict();
  }
  Value* v = d->find(path.back());
  if (v == nullptr) return nullptr;
  auto out = std::make_unique<Value>(std::move(*v));
  d->erase(path.back());
  return out;
}

void PutSubtree(StateDict* root, const std::vector<std::string>& path, Value v) {
  StateDict* d = root;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    Value* child = d->find(path[i]);
    if (child == nullptr || !child->is_dict()) {
      d->set(path[i], StateDict());
      child = d->find(path[i]);
    }
    d = &child->dict();
  }
  d->set(path.back(), std::move(v));
}

bool HasContent(const StateDict& d) {
  for (const auto& kv : d) {
    if (!kv.second.is_dict() || HasContent(kv.second.dict())) return true;
  }
  return false;
}

uint64_t Bytes(const at::Tensor& t) { return static_cast<uint64_t>(t.numel()) * t.element_size(); }

const std::string kReplicatedPrefix = std::string(kPartReplicated) + "/";

}  // namespace

void ValidateReplicatedPaths(const std::vector<std::string>& paths) {
  for (const auto& p : paths) {
    const auto parts = SplitPath(p);
    if (p.empty() || !IsStateGroup(parts[0]) ||
        std::find(parts.begin(), parts.end(), "") != parts.end()) {
      throw Error::InvalidArgument("DistributedCheckpointerArguments.replicated: '" + p +
                                   "' is not a path under module_interface_state, trainer_state "
                                   "or trainer_backend_state");
    }
  }
}

SplitCheckpoint SplitReplicated(const Checkpoint& checkpoint,
                                const std::vector<std::string>& replicated_paths) {
  SplitCheckpoint out;
  out.local = CheckpointLayout(checkpoint);
  StateDict replicated;
  for (const auto& p : replicated_paths) {
    if (auto v = TakeSubtree(&out.local, SplitPath(p))) replicated.set(p, std::move(*v));
  }
  out.has_local = HasContent(out.local);
  std::vector<format::FlatTensor> flat;
  format::Flatten(replicated, &flat, &out.tree);
  for (auto& f : flat) {
    out.names.push_back(std::move(f.name));
    out.tensors.push_back(std::move(f.tensor));
  }
  return out;
}

std::vector<int> AssignOwners(const SplitCheckpoint& split, int world) {
  const std::vector<at::Tensor>& tensors = split.tensors;
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const uint64_t x = Bytes(tensors[a]), y = Bytes(tensors[b]);
    return x != y ? x > y : split.names[a] < split.names[b];
  });
  std::vector<uint64_t> load(static_cast<size_t>(world), 0);
  std::vector<int> owner(tensors.size(), 0);
  for (size_t i : order) {
    const auto it = std::min_element(load.begin(), load.end());
    owner[i] = static_cast<int>(it - load.begin());
    *it += Bytes(tensors[i]);
  }
  return owner;
}

std::string ReplicatedTensorName(size_t i) { return kReplicatedPrefix + std::to_string(i); }

int64_t ReplicatedTensorIndex(const std::string& name) {
  if (name.rfind(kReplicatedPrefix, 0) != 0 || name.size() == kReplicatedPrefix.size()) return -1;
  int64_t i = 0;
  for (size_t k = kReplicatedPrefix.size(); k < name.size(); ++k) {
    if (name[k] < '0' || name[k] > '9' || i > (INT64_MAX - 9) / 10) return -1;
    i = i * 10 + (name[k] - '0');
  }
  return i;
}

StateDict PartState(const SplitCheckpoint& split, int rank, int world) {
  const std::vector<int> owner = AssignOwners(split, world);
  StateDict part;
  part.set(kPartLocal, split.local);
  StateDict mine;
  for (size_t i = 0; i < split.tensors.size(); ++i) {
    if (owner[i] == rank) mine.set(std::to_string(i), split.tensors[i]);
  }
  part.set(kPartReplicated, std::move(mine));
  if (rank == 0 && !split.names.empty()) {
    List names;
    for (const auto& n : split.names) names.push_back(n);
    part.set(kPartReplicatedNames, std::move(names));
    part.set(kPartReplicatedTree, split.tree);
  }
  return part;
}

PartTargets MapPartTargets(const LoadTargets& targets,
                           const std::vector<std::string>& replicated_paths) {
  PartTargets out;
  if (targets.into.empty()) return out;
  SplitCheckpoint split = SplitReplicated(targets.into, replicated_paths);
  for (auto& kv : FlattenTensors(split.local)) {
    out.local.emplace(std::string(kPartLocal) + "/" + kv.first, std::move(kv.second));
  }
  for (size_t i = 0; i < split.names.size(); ++i) {
    out.replicated.emplace(split.names[i], split.tensors[i]);
  }
  return out;
}

StateDict PartScalars(const CheckpointReader& reader) {
  const FileInfo& info = reader.info();
  const at::Tensor placeholder = at::empty({0});
  std::map<std::string, at::Tensor> placeholders;
  for (const auto& t : reader.all_tensors()) placeholders.emplace(t.name, placeholder);
  auto tree = info.metadata.find(format::kMetaTree);
  if (tree == info.metadata.end())
    throw Error::Corruption("'" + info.path + "' is not a part written by ackpt");
  return format::Unflatten(tree->second, placeholders, info.path);
}

Checkpoint JoinReplicated(StateDict local, const std::string& tree,
                          const std::map<std::string, at::Tensor>& by_name,
                          const std::string& path) {
  StateDict root;
  for (const char* g : kStateGroups) root.set(g, StateDict());
  for (auto& kv : local) root.set(kv.first, std::move(kv.second));
  if (!tree.empty()) {
    StateDict rep = format::Unflatten(tree, by_name, path);
    for (auto& kv : rep) PutSubtree(&root, SplitPath(kv.first), std::move(kv.second));
  }
  return CheckpointFromLayout(std::move(root), path);
}

}  // namespace ackpt
