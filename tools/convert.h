// `ackpt convert`: a torch.save()d state dict -> an ackpt checkpoint file.
#pragma once

#include <string>
#include <vector>

#include "ackpt/state_dict.h"
#include "torch_file.h"

namespace ackpt_cli {

struct ConvertOptions {
  // What to do with Python None values, which a StateDict cannot hold
  // (optimizer state dicts carry some, e.g. param_groups/0/foreach):
  // "skip" drops a None dict value and reports its path; "error" refuses.
  // A None inside a list or tuple is always an error (dropping it would
  // shift the positions of the elements after it). Default: "skip".
  std::string none = "skip";
};

// Converts the unpickled root of a torch.save()d file into a StateDict. The
// root must be a dict. Dict keys must be strings or ints (int keys, e.g. the
// parameter ids of an optimizer's "state", become decimal strings; a key may
// not be empty). Values may be tensors (of a dtype ackpt stores: see
// docs/FORMAT.md section 4), ints, floats, bools, strings, None (see
// ConvertOptions::none), lists, tuples (stored as lists) and dicts. Anything
// else throws ackpt::Error (kUnsupported) naming the key path in ackpt's
// tensor-name form, e.g. "optimizer/state/0/step". `dropped` receives the
// paths of skipped None values.
ackpt::StateDict StateDictFromPickle(const PyObj& root, const ConvertOptions& options,
                                     std::vector<std::string>* dropped);

}  // namespace ackpt_cli
