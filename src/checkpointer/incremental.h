// Incremental saves (IncrementalArguments, docs/INCREMENTAL.md): which
// tensors of a save are unchanged since this checkpointer last wrote them,
// and the references (docs/FORMAT.md section 15) that replace them.
//
// A save runs in three places: Select on the caller's thread inside save()
// decides what is referenced; Stamp on the writer, in commit order right
// before the header is encoded, writes the references (by then every
// earlier save has finished, so the holders' checksums are known); Held on
// the writer once the file is durable records the checksums of the tensors
// it holds, for the saves after it.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ackpt/checkpointer.h"
#include "ackpt/env.h"
#include "format/flatten.h"

namespace ackpt {

// The file of one save, as a holder of the tensors it writes.
struct HolderRecord {
  std::string path;
  std::mutex mu;
  bool durable = false;                  // guarded by mu
  std::map<std::string, uint64_t> xxh3;  // guarded by mu; of the tensors it holds
};

// One save's references, from Select to Stamp.
class IncrementalSave {
 public:
  // Writer, in commit order, before the header: adds ackpt.refs to
  // `metadata` (nothing when no tensor is referenced) and, with verify,
  // hashes every referenced tensor. Throws (the save fails) when a holder's
  // save did not commit, its file is gone, or verify finds other bytes.
  void Stamp(Env* env, std::map<std::string, std::string>* metadata) const;
  // Writer, once the file is durable: the checksums of the tensors it holds.
  void Held(const std::vector<format::FlatTensor>& tensors) const;

  uint64_t referenced_tensors() const { return refs_.size(); }
  uint64_t referenced_bytes() const { return referenced_bytes_; }

 private:
  friend class IncrementalTracker;
  struct Ref {
    std::string name;
    std::shared_ptr<HolderRecord> holder;
    at::Tensor tensor;  // verify only: the caller's tensor, hashed on the writer
    int64_t version = -1;
  };
  std::vector<Ref> refs_;
  std::shared_ptr<HolderRecord> self_;
  uint64_t referenced_bytes_ = 0;
  bool verify_ = false;
  // Select's changes to the tracker, applied once the engine accepted the save.
  struct Written;
  std::vector<std::pair<std::string, std::shared_ptr<Written>>> written_;
};

class IncrementalTracker {
 public:
  explicit IncrementalTracker(IncrementalArguments args) : args_(args) {}

  // Caller's thread, inside save(): removes from *tensors the ones unchanged
  // since they were written (a full save, see full_every, removes none) and
  // returns this save's plan; `path` is the file it writes.
  std::shared_ptr<IncrementalSave> Select(std::vector<format::FlatTensor>* tensors,
                                          const std::string& path);
  // The engine accepted the save: later saves may reference what it writes.
  void Accepted(const IncrementalSave& save);
  // The next save writes every tensor (after load(), a failed or skipped
  // save, or a failed reference).
  void Reset();

 private:
  struct Entry;
  const IncrementalArguments args_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<IncrementalSave::Written>> entries_;
  int64_t saves_ = 0;  // accepted since the last reset
  bool reset_ = true;
};

}  // namespace ackpt
