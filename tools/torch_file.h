// Reading files written by Python's torch.save(), without running any code.
//
// Why not torch::pickle_load: LibTorch 1.13's unpickler (Debian 12) rejects
// most real state dicts. It lacks the SETITEM and APPEND opcodes that
// Python's pickler emits for a one-item dict or list ("Unknown opcode for
// unpickling at 0x73"), and it fails on the OrderedDict with a `_metadata`
// attribute that every nn.Module.state_dict() is ("Expected GenericDict but
// got None"). So `ackpt convert` unpickles data.pkl itself with a small
// pickle machine that knows only the plain-data subset torch.save writes:
// dicts (OrderedDict too), lists, tuples, ints, floats, bools, strings, None
// and tensors (torch._utils._rebuild_tensor_v2 / _rebuild_parameter over
// storages read from the zip with LibTorch's PyTorchStreamReader). Like
// torch.load(weights_only=True) it never imports or calls anything: any other
// global becomes an opaque value that the conversion reports with its key
// path (e.g. "a numpy.core.multiarray._reconstruct object at 'stats/mean'").
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ackpt_cli {

struct PyObj;
using PyRef = std::shared_ptr<PyObj>;

// One unpickled Python value.
struct PyObj {
  enum class Kind {
    kNone,
    kBool,
    kInt,
    kFloat,
    kStr,
    kBytes,
    kList,
    kTuple,
    kDict,
    kTensor,
    kGlobal,   // a class or function reference, "module.name" in `str`
    kStorage,  // a torch storage: a 1-D tensor of its dtype in `tensor`
    kOpaque,   // something convert does not load; `str` says what
  };
  Kind kind = Kind::kNone;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string str;
  std::vector<PyRef> items;                      // list, tuple
  std::vector<std::pair<PyRef, PyRef>> entries;  // dict, in insertion order
  at::Tensor tensor;                             // tensor, storage
};

// "dict", "int", "a numpy.core.multiarray._reconstruct object", ...
std::string Describe(const PyObj& o);

// Reads a torch.save() file: the zip format Python writes by default
// (torch >= 1.6). Throws ackpt::Error naming the file: kNotFound (missing),
// kUnsupported (the legacy non-zip format, a pickle opcode outside the
// subset, a big-endian file), kCorruption (a damaged archive or pickle).
// `on_progress(done, total)` is called as tensor data is read.
PyRef LoadTorchFile(const std::string& path,
                    const std::function<void(uint64_t done, uint64_t total)>& on_progress);

}  // namespace ackpt_cli
