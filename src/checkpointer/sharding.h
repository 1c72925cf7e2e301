// Sharded tensors in a distributed checkpoint (docs/DISTRIBUTED.md,
// "Sharded tensors"): how a rank's box of a global tensor is stored in its
// part (slabs of rows, "sharded/<name>/<k>"), the global layout the manifest
// records, and the overlap arithmetic that lets a rank of any world size read
// only the slabs its target box needs. The one place that knows the slab
// layout, for save, load and the tools.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/format.h"
#include "checkpointer/manifest.h"

namespace ackpt {

inline constexpr const char* kPartSharded = "sharded";
// Target size of one stored slab: a partial read of a box costs at most one
// slab at each end of the overlap (about one zstd frame at the default
// read unit of a plain file, 1 MiB). Default: 1 MiB.
inline constexpr uint64_t kShardSlabBytes = uint64_t{1} << 20;

// The key path of a flattened tensor name (the inverse of FlatTensorName:
// "a%2Fb/c" -> {"a/b", "c"}).
std::vector<std::string> SplitFlatName(const std::string& name);

// Each entry of checkpoint.shards checked against the tensor it names
// (kInvalidArgument naming the entry: no such tensor, rank or bounds wrong),
// with that tensor.
struct LocalShard {
  std::string name;
  at::Tensor tensor;
  ShardBox box;
};
std::vector<LocalShard> CheckLocalShards(const Checkpoint& checkpoint);

// Rows per slab for a box of `shape` (>= 1; 1 for 0-d boxes), and the record
// of a box saved by this rank.
int64_t SlabRows(const std::vector<int64_t>& shape, size_t element_size);
ShardRecord RecordOf(const LocalShard& shard);
// The number of slabs of a saved box and the part-file tensor name of slab k.
int64_t NumSlabs(const ShardRecord& box);
std::string SlabTensorName(const std::string& global_name, int64_t k);
// The slabs of a local shard, as views of its tensor (in order).
std::vector<at::Tensor> Slabs(const at::Tensor& local, int64_t slab_rows);

// Every rank's boxes of one global tensor.
struct GlobalTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> global_shape;
  struct Box {
    int part = 0;  // the rank whose part file holds it
    const ShardRecord* record = nullptr;
  };
  std::vector<Box> boxes;
};
// The global layout of a manifest's sharded tensors, checked: per tensor one
// dtype and global shape on every rank, every box inside it, no two boxes
// overlapping, and together covering it exactly (no gaps). Throws an Error
// with `code` naming the tensor and the ranks (kInvalidArgument when rank 0
// checks a save, kCorruption when a load reads a manifest).
std::map<std::string, GlobalTensor> GlobalLayout(const Manifest& manifest, Error::Code code,
                                                 const std::string& where);

// "[2, 3]".
std::string ShapeText(const std::vector<int64_t>& shape);
// The number of elements of a shape (kInvalidArgument past int64).
int64_t Volume(const std::vector<int64_t>& shape);

// Fills `target`, the box `offsets` .. offsets + target.sizes() of global
// tensor `g`, from the saved slabs that overlap it: a slab wholly inside the
// box whose place in `target` is contiguous is read straight into it, the
// others into one scratch buffer (at most 64 MiB of slabs at a time, reused
// for every batch and box of the call) whose overlap is copied in.
// readers[part] reads part `part`. Returns the slab bytes read.
// `index` (optional) keeps each part's slab lookup table between calls, for
// a caller that reads many boxes from the same readers (consolidate's bands);
// it must not outlive them.
struct SlabIndex {
  std::map<const CheckpointReader*, std::map<std::string, const TensorInfo*>> by_reader;
};
uint64_t ReadBox(const GlobalTensor& g, const at::Tensor& target,
                 const std::vector<int64_t>& offsets, const std::vector<CheckpointReader*>& readers,
                 SlabIndex* index = nullptr);

// The tensor at flattened name `name` of `root` (through dicts and list
// indices) replaced by `t`; false if there is none.
bool ReplaceAtFlatName(StateDict* root, const std::string& name, const at::Tensor& t);
// Sets `t` at flattened name `name`, replacing what is there or creating
// the nested StateDicts on the way.
void PutAtFlatName(StateDict* root, const std::string& name, const at::Tensor& t);
// Whether `root` holds any leaf other than the tensors named in `except`.
bool HasLeafOtherThan(const StateDict& root, const std::map<std::string, at::Tensor>& except);
// The replicated-tensor name (as distributed_layout.h's SplitReplicated
// names it) of the tensor at flattened name `name`, or "" if it is under
// none of the replicated paths.
std::string ReplicatedNameOf(const std::string& name, const std::vector<std::string>& paths);

// A replicated tensor's name from the Checkpoint's root: its saved name is
// relative to a StateDict keyed by the replicated path
// ("trainer_state%2Foptimizer/state/0/m" -> "trainer_state/optimizer/state/0/m").
std::string ReplicatedRootName(const std::string& replicated_name);

// Copies box `offsets` .. offsets + target.sizes() of the whole tensor
// `whole` into target (a replicated tensor loaded into a sharded target).
void CopyBox(const at::Tensor& whole, const at::Tensor& target,
             const std::vector<int64_t>& offsets);

}  // namespace ackpt
