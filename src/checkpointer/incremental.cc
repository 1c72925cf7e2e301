// Incremental saves: Select, Stamp and Held (incremental.h).
#include "checkpointer/incremental.h"

#include <ATen/ATen.h>

#include <set>

#include "ackpt/error.h"
#include "format/checksum.h"
#include "format/constants.h"
#include "format/header.h"

namespace ackpt {

namespace {
// The version counter without a dispatcher call (Tensor::_version() is an
// operator); callers checked that the tensor is not an inference tensor.
int64_t VersionOf(const at::Tensor& t) {
  return static_cast<int64_t>(t.unsafeGetTensorImpl()->version_counter().current_version());
}
}  // namespace

// A tensor as it was when a save wrote it: the same storage (held weakly,
// so a freed storage's address is never mistaken for it), offset, shape,
// strides, dtype, device and version counter mean the same bytes.
struct IncrementalSave::Written {
  explicit Written(const at::Tensor& t)
      : storage(t.storage().getWeakStorageImpl()),
        data(t.data_ptr()),
        storage_offset(t.storage_offset()),
        sizes(t.sizes().vec()),
        strides(t.strides().vec()),
        dtype(t.scalar_type()),
        device(t.device()),
        version(VersionOf(t)),
        conj(t.is_conj()),
        neg(t.is_neg()) {}

  bool Same(const at::Tensor& t) const {
    // The weak pointer keeps the StorageImpl object (not its memory) alive,
    // so no other storage can have its address while it is held.
    return !storage.expired() &&
           t.storage().unsafeGetStorageImpl() == storage._unsafe_get_target() &&
           t.data_ptr() == data && t.storage_offset() == storage_offset && t.sizes() == sizes &&
           t.strides() == strides && t.scalar_type() == dtype && t.device() == device &&
           VersionOf(t) == version && t.is_conj() == conj && t.is_neg() == neg;
  }

  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data;
  int64_t storage_offset;
  std::vector<int64_t> sizes, strides;
  at::ScalarType dtype;
  c10::Device device;
  int64_t version;
  bool conj, neg;
  std::shared_ptr<HolderRecord> holder;
};

namespace {

// Only dense tensors with a version counter can be tracked.
bool Trackable(const at::Tensor& t) {
  return t.defined() && t.layout() == at::kStrided && !t.is_inference() && t.has_storage();
}

uint64_t HashOf(const at::Tensor& caller) {
  at::Tensor t = caller.resolve_conj().resolve_neg();
  if (!t.device().is_cpu()) t = t.cpu();
  t = t.contiguous();
  return format::Xxh3(t.data_ptr(), t.nbytes());
}

}  // namespace

std::shared_ptr<IncrementalSave> IncrementalTracker::Select(
    std::vector<format::FlatTensor>* tensors, const std::string& path) {
  auto save = std::make_shared<IncrementalSave>();
  save->self_ = std::make_shared<HolderRecord>();
  save->self_->path = path;
  save->verify_ = args_.verify;
  std::lock_guard<std::mutex> lock(mu_);
  const bool full = reset_ || (args_.full_every > 0 && saves_ % args_.full_every == 0);
  std::vector<format::FlatTensor> kept;
  kept.reserve(tensors->size());
  for (format::FlatTensor& f : *tensors) {
    const bool trackable = Trackable(f.tensor);
    if (!full && trackable) {
      auto it = entries_.find(f.name);
      // A save to the same path replaces the holder: write it again.
      if (it != entries_.end() && it->second->Same(f.tensor) && it->second->holder->path != path) {
        IncrementalSave::Ref ref;
        ref.name = f.name;
        ref.holder = it->second->holder;
        if (args_.verify) {
          ref.tensor = f.tensor;
          ref.version = VersionOf(f.tensor);
        }
        save->referenced_bytes_ += f.tensor.nbytes();
        save->refs_.push_back(std::move(ref));
        save->written_.emplace_back(f.name, it->second);
        continue;
      }
    }
    if (trackable) {
      auto w = std::make_shared<IncrementalSave::Written>(f.tensor);
      w->holder = save->self_;
      save->written_.emplace_back(f.name, std::move(w));
    }
    kept.push_back(std::move(f));
  }
  *tensors = std::move(kept);
  return save;
}

void IncrementalTracker::Accepted(const IncrementalSave& save) {
  std::lock_guard<std::mutex> lock(mu_);
  // Exactly this save's tensors: one that left the state is not referenced
  // again (its holder may go once nothing kept references it).
  entries_.clear();
  for (const auto& kv : save.written_) entries_.insert(kv);
  reset_ = false;
  ++saves_;
}

void IncrementalTracker::Reset() {
  std::lock_guard<std::mutex> lock(mu_);
  entries_.clear();
  reset_ = true;
  saves_ = 0;
}

void IncrementalSave::Stamp(Env* env, std::map<std::string, std::string>* metadata) const {
  if (refs_.empty()) return;
  std::vector<TensorReference> out;
  out.reserve(refs_.size());
  std::set<const HolderRecord*> present;
  for (const Ref& r : refs_) {
    TensorReference t;
    t.name = r.name;
    t.file = BaseName(r.holder->path);
    {
      std::lock_guard<std::mutex> lock(r.holder->mu);
      auto it = r.holder->xxh3.find(r.name);
      if (!r.holder->durable || it == r.holder->xxh3.end()) {
        throw Error(Error::Code::kIOError,
                    "tensor '" + r.name + "' would be referenced from '" + r.holder->path +
                        "', whose save did not commit; the next save writes every tensor");
      }
      t.xxh3 = it->second;
    }
    if (present.insert(r.holder.get()).second && !env->FileExists(r.holder->path)) {
      throw Error::NotFound("tensor '" + r.name + "' would be referenced from '" + r.holder->path +
                            "', which no longer exists; the next save writes every tensor");
    }
    if (verify_) {
      const uint64_t now = HashOf(r.tensor);
      if (now != t.xxh3 && VersionOf(r.tensor) == r.version) {
        throw Error::Corruption(
            "incremental.verify: tensor '" + r.name + "' holds bytes (xxh3 " + format::Hex64(now) +
            ") other than those saved in '" + r.holder->path + "' (" + format::Hex64(t.xxh3) +
            ") although its version counter did not move: it was written without LibTorch "
            "seeing it (data_ptr(), Tensor::data()); the save is discarded and the next one "
            "writes every tensor");
      }
    }
    out.push_back(std::move(t));
  }
  (*metadata)[format::kMetaReferences] = format::EncodeReferences(out);
}

void IncrementalSave::Held(const std::vector<format::FlatTensor>& tensors) const {
  std::lock_guard<std::mutex> lock(self_->mu);
  for (const auto& t : tensors) self_->xxh3[t.name] = t.xxh3;
  self_->durable = true;
}

}  // namespace ackpt
