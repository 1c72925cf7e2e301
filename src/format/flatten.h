// A StateDict as the format stores it: named tensors (FlatTensor, one per
// tensor from flattening to encoding) plus a JSON tree of everything else
// (docs/FORMAT.md, "The state tree").
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ackpt/state_dict.h"
#include "format/constants.h"

namespace ackpt {
namespace format {

// One tensor of a checkpoint, from flattening to encoding: Flatten fills name
// and tensor; the snapshot (engine) or PrepareContiguous (synchronous writer)
// fills dtype, shape, nbytes and data; the encoder fills xxh3.
struct FlatTensor {
  std::string name;
  at::Tensor tensor;  // the caller's tensor; dropped once its bytes are staged
  at::ScalarType dtype = at::ScalarType::Undefined;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  uint64_t staging_offset = 0;  // offset of its bytes in the data section (file order)
  const void* data = nullptr;   // contiguous CPU bytes, valid until encoded
  uint64_t xxh3 = 0;
};

// Splits a StateDict into its tensors (with unique flattened names, in tree
// order) and a JSON tree (docs/FORMAT.md, "ackpt.tree") holding everything
// else. Throws kInvalidArgument for empty keys or reserved names.
void Flatten(const StateDict& state, std::vector<FlatTensor>* tensors, std::string* tree_json);
// Rebuilds the tree; `tensors` supplies each tensor. Throws kCorruption on a
// malformed tree, a node deeper than min(max_depth, kMaxTreeDepth), or a
// tensor referenced twice or not at all. Parses as a stream: no JSON DOM is
// built.
StateDict Unflatten(const std::string& tree_json, const std::map<std::string, at::Tensor>& tensors,
                    const std::string& path_for_errors, int max_depth = kMaxTreeDepth);
// One key as a component of a flattened name: '%' -> "%25", '/' -> "%2F"
// (FlatTensorName in ackpt/format.h joins them).
std::string EscapeKey(const std::string& key);

}  // namespace format
}  // namespace ackpt
