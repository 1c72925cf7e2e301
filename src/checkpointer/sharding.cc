#include "checkpointer/sharding.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <limits>

#include "ackpt/error.h"
#include "checkpointer/checkpoint_file.h"

namespace ackpt {

std::string ShapeText(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

namespace {

// Scratch tensors for slabs only partly inside a target: at most this many
// bytes are held at once.
constexpr uint64_t kScratchBytes = uint64_t{64} << 20;

// The view of `t` (whose box starts at `origin`) covering [lo, hi).
at::Tensor View(at::Tensor t, const std::vector<int64_t>& origin, const std::vector<int64_t>& lo,
                const std::vector<int64_t>& hi) {
  for (size_t d = 0; d < lo.size(); ++d) {
    t = t.narrow(static_cast<int64_t>(d), lo[d] - origin[d], hi[d] - lo[d]);
  }
  return t;
}

}  // namespace

std::vector<std::string> SplitFlatName(const std::string& name) {
  std::vector<std::string> keys(1);
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    if (c == '/') {
      keys.emplace_back();
    } else if (c == '%' && name.compare(i, 3, "%2F") == 0) {
      keys.back() += '/';
      i += 2;
    } else if (c == '%' && name.compare(i, 3, "%25") == 0) {
      keys.back() += '%';
      i += 2;
    } else {
      keys.back() += c;
    }
  }
  return keys;
}

int64_t Volume(const std::vector<int64_t>& shape) {
  int64_t v = 1;
  for (int64_t d : shape) {
    if (d < 0 || (d > 0 && v > std::numeric_limits<int64_t>::max() / d))
      throw Error::InvalidArgument("shape " + ShapeText(shape) + " has no valid element count");
    v *= d;
  }
  return v;
}

std::vector<LocalShard> CheckLocalShards(const Checkpoint& checkpoint) {
  std::vector<LocalShard> out;
  if (checkpoint.shards.empty()) return out;
  const std::map<std::string, at::Tensor> tensors = FlattenTensors(CheckpointLayout(checkpoint));
  for (const auto& [name, box] : checkpoint.shards) {
    const std::string what = "Checkpoint.shards['" + name + "']";
    auto it = tensors.find(name);
    if (it == tensors.end())
      throw Error::InvalidArgument(what + " names no tensor of the checkpoint");
    const at::Tensor& t = it->second;
    const size_t dims = static_cast<size_t>(t.dim());
    if (box.global_shape.size() != dims || box.offsets.size() != dims) {
      throw Error::InvalidArgument(what + ": the tensor has " + std::to_string(dims) +
                                   " dimensions, the box offsets " + ShapeText(box.offsets) +
                                   " and global shape " + ShapeText(box.global_shape));
    }
    Volume(box.global_shape);
    for (size_t d = 0; d < dims; ++d) {
      if (box.offsets[d] < 0 ||
          box.offsets[d] + t.size(static_cast<int64_t>(d)) > box.global_shape[d]) {
        throw Error::InvalidArgument(what + ": the box at " + ShapeText(box.offsets) +
                                     " of shape " + ShapeText(t.sizes().vec()) +
                                     " is outside the global shape " + ShapeText(box.global_shape));
      }
    }
    out.push_back(LocalShard{name, t, box});
  }
  return out;
}

int64_t SlabRows(const std::vector<int64_t>& shape, size_t element_size) {
  if (shape.empty()) return 1;
  int64_t row = static_cast<int64_t>(element_size);
  for (size_t d = 1; d < shape.size(); ++d) row *= std::max<int64_t>(shape[d], 1);
  return std::max<int64_t>(1, static_cast<int64_t>(kShardSlabBytes) / std::max<int64_t>(row, 1));
}

ShardRecord RecordOf(const LocalShard& s) {
  ShardRecord r;
  r.name = s.name;
  r.dtype = DtypeName(s.tensor.scalar_type());
  r.global_shape = s.box.global_shape;
  r.offsets = s.box.offsets;
  r.shape = s.tensor.sizes().vec();
  r.slab_rows = SlabRows(r.shape, static_cast<size_t>(s.tensor.element_size()));
  return r;
}

int64_t NumSlabs(const ShardRecord& box) {
  if (box.shape.empty()) return 1;
  if (box.shape[0] == 0) return 0;
  return (box.shape[0] + box.slab_rows - 1) / box.slab_rows;
}

std::string SlabTensorName(const std::string& global_name, int64_t k) {
  return FlatTensorName({kPartSharded, global_name, std::to_string(k)});
}

std::vector<at::Tensor> Slabs(const at::Tensor& local, int64_t slab_rows) {
  if (local.dim() == 0) return {local};
  std::vector<at::Tensor> out;
  for (int64_t r = 0; r < local.size(0); r += slab_rows)
    out.push_back(local.narrow(0, r, std::min(slab_rows, local.size(0) - r)));
  return out;
}

std::map<std::string, GlobalTensor> GlobalLayout(const Manifest& m, Error::Code code,
                                                 const std::string& where) {
  auto fail = [&](const std::string& what) { throw Error(code, where + ": " + what); };
  std::map<std::string, GlobalTensor> out;
  for (size_t p = 0; p < m.parts.size(); ++p) {
    for (const ShardRecord& r : m.parts[p].shards) {
      const std::string rank = "rank " + std::to_string(p);
      GlobalTensor& g = out[r.name];
      if (g.boxes.empty()) {
        g.name = r.name;
        g.dtype = r.dtype;
        g.global_shape = r.global_shape;
      } else if (g.dtype != r.dtype || g.global_shape != r.global_shape) {
        const int first = g.boxes.front().part;
        fail("sharded tensor '" + r.name + "' is " + g.dtype + " " + ShapeText(g.global_shape) +
             " on rank " + std::to_string(first) + " but " + r.dtype + " " +
             ShapeText(r.global_shape) + " on " + rank);
      }
      const size_t dims = r.global_shape.size();
      if (r.offsets.size() != dims || r.shape.size() != dims || r.slab_rows < 1)
        fail("sharded tensor '" + r.name + "' on " + rank + " has a malformed box");
      try {
        Volume(r.global_shape);
        Volume(r.shape);
      } catch (const Error& e) {
        fail("sharded tensor '" + r.name + "' on " + rank + ": " + e.message());
      }
      for (size_t d = 0; d < dims; ++d) {
        if (r.offsets[d] < 0 || r.shape[d] > r.global_shape[d] - r.offsets[d]) {
          fail("sharded tensor '" + r.name + "': the box of " + rank + " at " +
               ShapeText(r.offsets) + " of shape " + ShapeText(r.shape) +
               " is outside the global shape " + ShapeText(r.global_shape));
        }
      }
      g.boxes.push_back(GlobalTensor::Box{static_cast<int>(p), &r});
    }
  }
  for (auto& [name, g] : out) {
    // Overlaps: sort by the first offset, then compare each box only with
    // those that start before it ends along dimension 0.
    std::vector<GlobalTensor::Box> b = g.boxes;
    const size_t dims = g.global_shape.size();
    auto lo0 = [&](const GlobalTensor::Box& x) { return dims ? x.record->offsets[0] : 0; };
    std::sort(b.begin(), b.end(), [&](const auto& x, const auto& y) { return lo0(x) < lo0(y); });
    int64_t volume = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      const ShardRecord& x = *b[i].record;
      volume += Volume(x.shape);
      if (Volume(x.shape) == 0) continue;
      for (size_t j = i + 1; j < b.size(); ++j) {
        const ShardRecord& y = *b[j].record;
        if (dims && y.offsets[0] >= x.offsets[0] + x.shape[0]) break;
        if (Volume(y.shape) == 0) continue;
        bool overlap = true;
        for (size_t d = 0; d < dims && overlap; ++d) {
          overlap =
              x.offsets[d] < y.offsets[d] + y.shape[d] && y.offsets[d] < x.offsets[d] + x.shape[d];
        }
        if (overlap) {
          fail("sharded tensor '" + name + "': the boxes of rank " + std::to_string(b[i].part) +
               " (at " + ShapeText(x.offsets) + ", shape " + ShapeText(x.shape) + ") and rank " +
               std::to_string(b[j].part) + " (at " + ShapeText(y.offsets) + ", shape " +
               ShapeText(y.shape) + ") overlap");
        }
      }
    }
    if (volume != Volume(g.global_shape)) {
      fail("sharded tensor '" + name + "': the boxes of all ranks cover " + std::to_string(volume) +
           " of its " + std::to_string(Volume(g.global_shape)) + " elements (global shape " +
           ShapeText(g.global_shape) + "); they must tile it without gaps");
    }
  }
  return out;
}

uint64_t ReadBox(const GlobalTensor& g, const at::Tensor& target,
                 const std::vector<int64_t>& offsets, const std::vector<CheckpointReader*>& readers,
                 SlabIndex* index) {
  SlabIndex local_index;
  if (index == nullptr) index = &local_index;
  const size_t dims = g.global_shape.size();
  std::vector<int64_t> t_hi(dims);
  for (size_t d = 0; d < dims; ++d) t_hi[d] = offsets[d] + target.size(static_cast<int64_t>(d));
  at::NoGradGuard no_grad;
  uint64_t bytes_read = 0;
  at::Tensor scratch;  // bytes, for the slabs read beside the target
  for (const GlobalTensor::Box& box : g.boxes) {
    const ShardRecord& r = *box.record;
    std::vector<int64_t> lo(dims), hi(dims);
    bool empty = false;
    for (size_t d = 0; d < dims; ++d) {
      lo[d] = std::max(offsets[d], r.offsets[d]);
      hi[d] = std::min(t_hi[d], r.offsets[d] + r.shape[d]);
      empty = empty || lo[d] >= hi[d];
    }
    if (empty) continue;
    if (box.part < 0 || static_cast<size_t>(box.part) >= readers.size() || !readers[box.part])
      throw Error::Corruption("sharded tensor '" + g.name + "': no reader for part " +
                              std::to_string(box.part));
    CheckpointReader& reader = *readers[static_cast<size_t>(box.part)];
    auto [cached, fresh] = index->by_reader.try_emplace(&reader);
    std::map<std::string, const TensorInfo*>& in_part = cached->second;
    if (fresh) {
      for (const TensorInfo& t : reader.all_tensors()) {
        if (t.name.rfind(kPartSharded, 0) == 0) in_part.emplace(t.name, &t);
      }
    }
    // Slabs overlapping rows [lo0, hi0) of the box.
    int64_t first = 0, last = 0;
    if (dims) {
      first = (lo[0] - r.offsets[0]) / r.slab_rows;
      last = (hi[0] - 1 - r.offsets[0]) / r.slab_rows;
    }
    std::map<std::string, at::Tensor> direct;
    struct Partial {
      std::string name;
      std::vector<int64_t> origin, lo, hi;  // the slab's first index; the overlap
      std::vector<int64_t> shape;           // the slab's
      int64_t bytes = 0;
    };
    std::vector<Partial> partial;
    uint64_t partial_bytes = 0;
    // Slabs that cannot be read in place are read into one scratch buffer,
    // reused for every batch and box of this call (a fresh tensor per batch
    // costs its page faults on every load), then copied into the target.
    auto flush = [&] {
      if (partial.empty()) return;
      if (!scratch.defined() || static_cast<uint64_t>(scratch.numel()) < partial_bytes)
        scratch = at::empty({static_cast<int64_t>(partial_bytes)}, at::kByte);
      std::map<std::string, at::Tensor> into;
      std::vector<at::Tensor> slabs;
      int64_t at = 0;
      for (const auto& p : partial) {
        at::Tensor slab = scratch.narrow(0, at, p.bytes).view(target.scalar_type()).view(p.shape);
        at += p.bytes;
        into.emplace(p.name, slab);
        slabs.push_back(slab);
      }
      reader.ReadInto(into);
      for (size_t i = 0; i < partial.size(); ++i) {
        const Partial& p = partial[i];
        View(target, offsets, p.lo, p.hi).copy_(View(slabs[i], p.origin, p.lo, p.hi));
      }
      partial.clear();
      partial_bytes = 0;
    };
    const int64_t elem = static_cast<int64_t>(target.element_size());
    for (int64_t k = first; k <= last; ++k) {
      std::vector<int64_t> s_lo = r.offsets, s_hi(dims);
      for (size_t d = 0; d < dims; ++d) s_hi[d] = r.offsets[d] + r.shape[d];
      if (dims) {
        s_lo[0] = r.offsets[0] + k * r.slab_rows;
        s_hi[0] = std::min(s_hi[0], s_lo[0] + r.slab_rows);
      }
      std::vector<int64_t> o_lo(dims), o_hi(dims);
      bool whole = true;
      for (size_t d = 0; d < dims; ++d) {
        o_lo[d] = std::max(lo[d], s_lo[d]);
        o_hi[d] = std::min(hi[d], s_hi[d]);
        whole = whole && o_lo[d] == s_lo[d] && o_hi[d] == s_hi[d];
      }
      const std::string name = SlabTensorName(g.name, k);
      uint64_t slab_bytes = static_cast<uint64_t>(elem);
      std::vector<int64_t> slab_shape(dims);
      for (size_t d = 0; d < dims; ++d) {
        slab_shape[d] = s_hi[d] - s_lo[d];
        slab_bytes *= static_cast<uint64_t>(slab_shape[d]);
      }
      // The manifest and the part must agree before a byte is read: a
      // mismatch is a damaged checkpoint (the load falls back), not a bad target.
      auto info = in_part.find(name);
      if (info == in_part.end() || info->second->shape != slab_shape ||
          info->second->dtype != g.dtype) {
        throw Error::Corruption("'" + reader.info().path + "' does not hold slab " +
                                std::to_string(k) + " of sharded tensor '" + g.name + "' as " +
                                g.dtype + " " + ShapeText(slab_shape) + " (the manifest's box at " +
                                ShapeText(r.offsets) + ")");
      }
      bytes_read += slab_bytes;
      at::Tensor in_place = whole ? View(target, offsets, o_lo, o_hi) : at::Tensor();
      if (whole && in_place.is_contiguous()) {
        direct.emplace(name, in_place);
      } else {
        if (partial_bytes + slab_bytes > kScratchBytes) flush();
        partial.push_back(
            Partial{name, s_lo, o_lo, o_hi, slab_shape, static_cast<int64_t>(slab_bytes)});
        partial_bytes += slab_bytes;
      }
    }
    if (!direct.empty()) reader.ReadInto(direct);
    flush();
  }
  return bytes_read;
}

namespace {

std::vector<std::string> SplitSlashes(const std::string& path) {
  std::vector<std::string> out(1);
  for (char c : path) {
    if (c == '/') {
      out.emplace_back();
    } else {
      out.back() += c;
    }
  }
  return out;
}

// The value at `keys` (dict keys, or decimal list indices); null if absent.
Value* Find(StateDict* root, const std::vector<std::string>& keys) {
  Value* v = root->find(keys[0]);
  for (size_t i = 1; v != nullptr && i < keys.size(); ++i) {
    if (v->is_dict()) {
      v = v->dict().find(keys[i]);
    } else if (v->is_list()) {
      const std::string& k = keys[i];
      if (k.empty() || k.size() > 18 || k.find_first_not_of("0123456789") != std::string::npos)
        return nullptr;
      const size_t j = std::stoull(k);
      v = j < v->list().size() ? &v->list()[j] : nullptr;
    } else {
      return nullptr;
    }
  }
  return v;
}

bool HasLeaf(const Value& v, const std::string& name,
             const std::map<std::string, at::Tensor>& except) {
  if (v.is_dict()) {
    for (const auto& kv : v.dict()) {
      if (HasLeaf(kv.second, name + "/" + FlatTensorName({kv.first}), except)) return true;
    }
    return false;
  }
  if (v.is_list()) {
    for (size_t i = 0; i < v.list().size(); ++i) {
      if (HasLeaf(v.list()[i], name + "/" + std::to_string(i), except)) return true;
    }
    return false;
  }
  return !(v.is_tensor() && except.count(name));
}

}  // namespace

bool ReplaceAtFlatName(StateDict* root, const std::string& name, const at::Tensor& t) {
  Value* v = Find(root, SplitFlatName(name));
  if (v == nullptr || !v->is_tensor()) return false;
  *v = Value(t);
  return true;
}

void PutAtFlatName(StateDict* root, const std::string& name, const at::Tensor& t) {
  if (ReplaceAtFlatName(root, name, t)) return;
  const std::vector<std::string> keys = SplitFlatName(name);
  StateDict* d = root;
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    Value* child = d->find(keys[i]);
    if (child == nullptr || !child->is_dict()) {
      d->set(keys[i], StateDict());
      child = d->find(keys[i]);
    }
    d = &child->dict();
  }
  d->set(keys.back(), t);
}

bool HasLeafOtherThan(const StateDict& root, const std::map<std::string, at::Tensor>& except) {
  for (const auto& kv : root) {
    if (HasLeaf(kv.second, FlatTensorName({kv.first}), except)) return true;
  }
  return false;
}

std::string ReplicatedNameOf(const std::string& name, const std::vector<std::string>& paths) {
  const std::vector<std::string> keys = SplitFlatName(name);
  for (const auto& p : paths) {
    const std::vector<std::string> pk = SplitSlashes(p);
    if (pk.size() > keys.size() || !std::equal(pk.begin(), pk.end(), keys.begin())) continue;
    std::vector<std::string> rest{p};
    rest.insert(rest.end(), keys.begin() + static_cast<std::ptrdiff_t>(pk.size()), keys.end());
    return FlatTensorName(rest);
  }
  return "";
}

std::string ReplicatedRootName(const std::string& replicated_name) {
  const std::vector<std::string> keys = SplitFlatName(replicated_name);
  std::vector<std::string> path = SplitSlashes(keys[0]);
  path.insert(path.end(), keys.begin() + 1, keys.end());
  return FlatTensorName(path);
}

void CopyBox(const at::Tensor& whole, const at::Tensor& target,
             const std::vector<int64_t>& offsets) {
  at::NoGradGuard no_grad;
  std::vector<int64_t> hi(offsets.size()), origin(offsets.size(), 0);
  for (size_t d = 0; d < offsets.size(); ++d)
    hi[d] = offsets[d] + target.size(static_cast<int64_t>(d));
  target.copy_(View(whole, origin, offsets, hi));
}

}  // namespace ackpt
