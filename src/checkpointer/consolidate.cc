// ConsolidateCheckpoint and DescribeManifest (ackpt/consolidate.h): a
// distributed checkpoint's global tensors, assembled from the parts
// (sharding.h's layout, distributed_layout.h's replicated tensors), streamed
// in bands through the format's one encoder (format/writer.h).
#include "ackpt/consolidate.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <deque>
#include <unordered_map>

#include "ackpt/error.h"
#include "checkpointer/checkpoint_file.h"
#include "checkpointer/distributed_layout.h"
#include "checkpointer/guard.h"
#include "checkpointer/manifest.h"
#include "checkpointer/metadata_keys.h"
#include "checkpointer/sharding.h"
#include "format/auto_policy.h"
#include "format/checksum.h"
#include "format/constants.h"
#include "format/data_source.h"
#include "format/dtype.h"
#include "format/flatten.h"
#include "format/header.h"
#include "format/parallel.h"
#include "format/writer.h"

namespace ackpt {

namespace {

constexpr uint64_t kMinBudget = uint64_t{1} << 20;
constexpr uint64_t kMaxFrame = uint64_t{4} << 20;
constexpr uint64_t kMinFrame = uint64_t{64} << 10;

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// A distributed checkpoint opened for reading: the manifest, its checked
// shard layout, a reader per part (headers only), and where each
// replicated tensor is.
struct Opened {
  std::string path;
  Manifest manifest;
  std::map<std::string, GlobalTensor> layout;  // points into manifest
  std::vector<std::unique_ptr<CheckpointReader>> owned;
  std::vector<CheckpointReader*> readers;  // by part
  struct Replicated {
    std::string saved_name;  // as part 0 lists it
    std::string name;        // from the Checkpoint's root
    int part = 0;
    const TensorInfo* info = nullptr;  // in readers[part]
  };
  std::vector<Replicated> replicated;  // in saved order
  std::string replicated_tree;
  std::string part0_path;
};

std::unique_ptr<Opened> Open(const std::string& manifest_path, Env* env, int threads) {
  auto o = std::make_unique<Opened>();
  o->path = manifest_path;
  o->manifest = ReadManifest(env, manifest_path);
  const Manifest& m = o->manifest;
  o->layout = GlobalLayout(m, Error::Code::kCorruption, "manifest '" + manifest_path + "'");
  const std::string dir = DirName(manifest_path);
  ReadOptions ro;
  ro.threads = threads;
  for (size_t r = 0; r < m.parts.size(); ++r) {
    const Manifest::Part& p = m.parts[r];
    const std::string part = JoinPath(dir, p.file);
    const std::string which = "part " + std::to_string(r) + " '" + part + "'";
    if (!env->FileExists(part)) throw Error::Corruption(which + " is missing");
    std::unique_ptr<CheckpointReader> reader;
    try {
      reader = CheckpointReader::Open(part, ro, env);
    } catch (const Error& e) {
      throw Error(e.code() == Error::Code::kNotFound ? Error::Code::kCorruption : e.code(),
                  which + ": " + e.message());
    }
    const FileInfo& info = reader->info();
    if (info.file_bytes != p.file_bytes) {
      throw Error::Corruption(which + " has " + std::to_string(info.file_bytes) +
                              " bytes; the manifest says " + std::to_string(p.file_bytes));
    }
    const auto h = info.metadata.find(format::kMetaHeaderChecksum);
    if (h == info.metadata.end() || h->second != p.header_xxh3)
      throw Error::Corruption(which + " is not the part the manifest committed (header checksum)");
    o->readers.push_back(reader.get());
    o->owned.push_back(std::move(reader));
  }
  if (o->readers.empty()) throw Error::Corruption("manifest '" + manifest_path + "' has no parts");
  o->part0_path = o->readers[0]->info().path;

  // Every slab each box needs is in its part, of the box's dtype and shape.
  std::vector<std::unordered_map<std::string, const TensorInfo*>> by_part(o->readers.size());
  for (size_t r = 0; r < o->readers.size(); ++r) {
    for (const auto& t : o->readers[r]->all_tensors()) by_part[r].emplace(t.name, &t);
  }
  for (const auto& [name, g] : o->layout) {
    for (const GlobalTensor::Box& box : g.boxes) {
      const ShardRecord& r = *box.record;
      const FileInfo& info = o->readers[static_cast<size_t>(box.part)]->info();
      const auto& by_name = by_part[static_cast<size_t>(box.part)];
      const int64_t slabs = NumSlabs(r);
      for (int64_t k = 0; k < slabs; ++k) {
        const std::string slab = SlabTensorName(name, k);
        auto it = by_name.find(slab);
        std::vector<int64_t> shape = r.shape;
        if (!shape.empty()) shape[0] = std::min(r.slab_rows, r.shape[0] - k * r.slab_rows);
        if (it == by_name.end()) {
          throw Error::Corruption("'" + info.path + "' lacks slab " + std::to_string(k) +
                                  " of sharded tensor '" + name + "' ('" + slab + "')");
        }
        if (it->second->dtype != r.dtype || it->second->shape != shape) {
          throw Error::Corruption("'" + info.path + "': slab '" + slab + "' is " +
                                  it->second->dtype + " " + ShapeText(it->second->shape) +
                                  "; the manifest's box says " + r.dtype + " " + ShapeText(shape));
        }
      }
    }
  }

  // Part 0 names the replicated tensors and holds their tree; each is in
  // whichever part owns it.
  std::vector<std::string> names;
  {
    const StateDict scalars = PartScalars(*o->readers[0]);
    if (const Value* n = scalars.find(kPartReplicatedNames))
      for (const auto& v : n->list()) names.push_back(v.str());
    if (const Value* t = scalars.find(kPartReplicatedTree)) o->replicated_tree = t->str();
  }
  if (!names.empty() && o->replicated_tree.empty())
    throw Error::Corruption("'" + o->part0_path + "' names replicated tensors but has no tree");
  o->replicated.resize(names.size());
  std::vector<bool> found(names.size(), false);
  for (size_t r = 0; r < o->readers.size(); ++r) {
    const FileInfo& info = o->readers[r]->info();
    for (const auto& t : o->readers[r]->all_tensors()) {
      const int64_t i = ReplicatedTensorIndex(t.name);
      if (i < 0) continue;
      if (static_cast<size_t>(i) >= names.size()) {
        throw Error::Corruption("'" + info.path + "' holds replicated tensor " + std::to_string(i) +
                                " of " + std::to_string(names.size()));
      }
      const size_t k = static_cast<size_t>(i);
      if (found[k]) continue;
      found[k] = true;
      if (!t.has_checksum)
        throw Error::Corruption("'" + info.path + "': tensor '" + t.name + "' has no checksum");
      o->replicated[k] =
          Opened::Replicated{names[k], ReplicatedRootName(names[k]), static_cast<int>(r), &t};
    }
  }
  for (size_t k = 0; k < names.size(); ++k) {
    if (!found[k]) throw Error::Corruption("replicated tensor '" + names[k] + "' is in no part");
  }
  return o;
}

// What one tensor of the output is made of.
struct Source {
  const GlobalTensor* sharded = nullptr;           // a sharded tensor, or
  const Opened::Replicated* replicated = nullptr;  // a replicated one
};

// One band of the output's data section: box `offsets` .. + `shape` of
// output tensor `tensor`, bytes [begin, begin + bytes).
struct Band {
  size_t tensor = 0;
  std::vector<int64_t> offsets;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t bytes = 0;
};

// Cuts a tensor of `shape` into boxes that are contiguous in its row-major
// bytes and at most `band` bytes each (one element at least): runs of rows
// along dimension 0, or, where one row is larger than `band`, runs along the
// first dimension whose slices fit, one index of the dimensions before it
// at a time. Calls fn(offsets, extent, bytes) in byte order.
void CutBands(const std::vector<int64_t>& shape, uint64_t elem, uint64_t band,
              const std::function<void(const std::vector<int64_t>&, const std::vector<int64_t>&,
                                       uint64_t)>& fn) {
  const size_t n = shape.size();
  if (n == 0) {
    fn({}, {}, elem);
    return;
  }
  for (int64_t s : shape)
    if (s == 0) return;
  std::vector<uint64_t> inner(n);  // bytes of one index of dimension d
  inner[n - 1] = elem;
  for (size_t d = n - 1; d > 0; --d) inner[d - 1] = inner[d] * static_cast<uint64_t>(shape[d]);
  size_t d = 0;
  while (inner[d] > band && d + 1 < n) ++d;
  const int64_t step = static_cast<int64_t>(
      std::max<uint64_t>(1, std::min<uint64_t>(static_cast<uint64_t>(shape[d]), band / inner[d])));
  std::vector<int64_t> offsets(n, 0), extent = shape;
  for (size_t p = 0; p < d; ++p) extent[p] = 1;
  for (;;) {
    for (int64_t j = 0; j < shape[d]; j += step) {
      offsets[d] = j;
      extent[d] = std::min(step, shape[d] - j);
      fn(offsets, extent, inner[d] * static_cast<uint64_t>(extent[d]));
    }
    offsets[d] = 0;
    size_t p = d;
    while (p > 0 && ++offsets[p - 1] == shape[p - 1]) offsets[--p] = 0;
    if (p == 0) return;
  }
}

// The output's data section, assembled band by band as the encoder asks
// for it and dropped once written: at most the bands covering
// [released, requested) plus one are held.
class BandSource final : public format::DataSource {
 public:
  using Produce = std::function<at::Tensor(size_t band)>;
  BandSource(uint64_t size, const std::vector<Band>* bands, Produce produce)
      : DataSource(size), bands_(*bands), produce_(std::move(produce)) {}

  uint64_t WaitFor(uint64_t end) override {
    while (produced_ < end) {
      if (next_ >= bands_.size())
        throw Error::Corruption("the assembled data ended before the header's tensors");
      const Band& b = bands_[next_];
      at::Tensor t = produce_(next_);
      held_.push_back(Held{b.begin, b.begin + b.bytes, std::move(t)});
      produced_ = b.begin + b.bytes;
      ++next_;
    }
    return produced_;
  }

  void Visit(uint64_t offset, uint64_t n,
             const std::function<void(const void*, size_t)>& fn) const override {
    const uint64_t end = offset + n;
    for (const Held& h : held_) {
      if (h.end <= offset) continue;
      if (h.begin >= end) break;
      const uint64_t b = std::max(offset, h.begin), e = std::min(end, h.end);
      fn(static_cast<const uint8_t*>(h.tensor.data_ptr()) + (b - h.begin),
         static_cast<size_t>(e - b));
    }
  }

  void Release(uint64_t end) override {
    while (!held_.empty() && held_.front().end <= end) held_.pop_front();
  }

 private:
  struct Held {
    uint64_t begin, end;
    at::Tensor tensor;  // contiguous CPU
  };
  const std::vector<Band>& bands_;
  Produce produce_;
  std::deque<Held> held_;
  size_t next_ = 0;
  uint64_t produced_ = 0;
};

Compression OutputCompression(const std::string& out_path, const ConsolidateOptions& o) {
  const bool zst = EndsWith(out_path, ".zst");
  if (!o.compression) return zst ? Compression::kZstd : Compression::kNone;
  const Compression c = *o.compression;
  if (c != Compression::kNone && c != Compression::kZstd)
    throw Error::Unsupported(
        "ConsolidateOptions.compression: only kNone and kZstd are written by consolidate");
  if ((c == Compression::kZstd) != zst) {
    throw Error::InvalidArgument("ConsolidateOptions.compression is " +
                                 std::string(c == Compression::kZstd ? "kZstd" : "kNone") +
                                 " but the output '" + out_path + "' " +
                                 (zst ? "ends" : "does not end") + " in .zst");
  }
  return c;
}

// Puts `t` at the path of flattened name `name` in `root`, creating dicts.
void PutSharded(StateDict* root, const std::string& name, const at::Tensor& t) {
  const std::vector<std::string> keys = SplitFlatName(name);
  if (std::find(keys.begin(), keys.end(), "") != keys.end())
    throw Error::Corruption("sharded tensor name '" + name + "' has an empty key");
  StateDict* d = root;
  for (size_t i = 0; i + 1 < keys.size(); ++i) {
    Value* child = d->find(keys[i]);
    if (child == nullptr) {
      d->set(keys[i], StateDict());
      child = d->find(keys[i]);
    }
    if (!child->is_dict()) {
      throw Error::Corruption(
          "sharded tensor '" + name + "' lies under '" +
          FlatTensorName(std::vector<std::string>(keys.begin(), keys.begin() + i + 1)) +
          "', which the replicated state holds as a value, not a dict");
    }
    d = &child->dict();
  }
  if (d->find(keys.back()) != nullptr)
    throw Error::Corruption("sharded tensor '" + name + "' is also in the replicated state");
  d->set(keys.back(), t);
}

void Consolidate(const std::string& manifest_path, const std::string& out_path,
                 const ConsolidateOptions& options) {
  Env* env = options.env != nullptr ? options.env : Env::Default();
  if (options.memory_budget_bytes < kMinBudget) {
    throw Error::InvalidArgument("ConsolidateOptions.memory_budget_bytes " +
                                 std::to_string(options.memory_budget_bytes) + " is below 1 MiB");
  }
  WriteOptions w;
  w.compression = OutputCompression(out_path, options);
  w.zstd_level = options.zstd_level;
  const uint64_t budget = options.memory_budget_bytes;
  const uint64_t frame = std::clamp(budget / 8, kMinFrame, kMaxFrame);
  const uint64_t band = (budget - frame) / 2;
  w.chunk_size = static_cast<size_t>(frame);
  w.writer_threads = options.threads;
  w.fsync = options.fsync;
  format::ValidateWriteOptions(w);

  const std::unique_ptr<Opened> opened = Open(manifest_path, env, options.threads);
  const Opened& o = *opened;
  w.metadata["consolidated_from"] = BaseName(manifest_path);
  w.metadata["consolidated_index"] = std::to_string(o.manifest.index);
  w.metadata["consolidated_world_size"] = std::to_string(o.manifest.world_size);
  if (!o.manifest.metrics.empty())
    w.metadata["consolidated_metrics"] = EncodeMetrics(o.manifest.metrics);

  // The output's state tree: the replicated subtrees as saved, with a
  // placeholder per tensor, and the sharded tensors at their paths; each
  // placeholder (by identity) says where its bytes come from.
  std::unordered_map<const void*, Source> sources;
  StateDict root;
  for (const char* g : kStateGroups) root.set(g, StateDict());
  if (!o.replicated.empty()) {
    std::map<std::string, at::Tensor> placeholders;
    for (const auto& r : o.replicated) {
      at::Tensor p = at::empty({0});
      sources[p.unsafeGetTensorImpl()].replicated = &r;
      placeholders.emplace(r.saved_name, p);
    }
    root = CheckpointLayout(
        JoinReplicated(StateDict(), o.replicated_tree, placeholders, o.part0_path));
  }
  for (const auto& [name, g] : o.layout) {
    at::Tensor p = at::empty({0});
    sources[p.unsafeGetTensorImpl()].sharded = &g;
    PutSharded(&root, name, p);
  }
  std::vector<format::FlatTensor> tensors;
  std::string tree;
  format::Flatten(root, &tensors, &tree);
  std::vector<Source> of;  // by output tensor, after sorting
  for (auto& t : tensors) {
    const Source& s = sources.at(t.tensor.unsafeGetTensorImpl());
    if (s.sharded != nullptr) {
      if (!format::DtypeFromName(s.sharded->dtype, &t.dtype))
        throw Error::Unsupported("sharded tensor '" + t.name + "' has dtype " + s.sharded->dtype);
      t.shape = s.sharded->global_shape;
    } else {
      t.dtype = s.replicated->info->scalar_type;
      t.shape = s.replicated->info->shape;
    }
    const uint64_t elem = format::DtypeSize(t.dtype);
    const uint64_t numel = static_cast<uint64_t>(Volume(t.shape));
    if (numel > UINT64_MAX / elem) throw Error::Corruption("tensor '" + t.name + "' is too large");
    t.nbytes = numel * elem;
  }
  format::SortForAlignment(&tensors);
  uint64_t offset = 0, sharded_bytes = 0, replicated_bytes = 0;
  std::vector<Band> bands;
  for (size_t i = 0; i < tensors.size(); ++i) {
    format::FlatTensor& t = tensors[i];
    t.staging_offset = offset;
    of.push_back(sources.at(t.tensor.unsafeGetTensorImpl()));
    t.tensor = at::Tensor();
    if (of.back().sharded != nullptr) {
      sharded_bytes += t.nbytes;
      CutBands(t.shape, format::DtypeSize(t.dtype), band,
               [&](const std::vector<int64_t>& off, const std::vector<int64_t>& ext, uint64_t n) {
                 bands.push_back(Band{i, off, ext, offset, n});
                 offset += n;
               });
    } else {
      replicated_bytes += t.nbytes;
      t.xxh3 = of.back().replicated->info->xxh3;  // the part's checksum of the same bytes
      if (t.nbytes > 0) bands.push_back(Band{i, {}, t.shape, offset, t.nbytes});
      offset += t.nbytes;
    }
    if (offset != t.staging_offset + t.nbytes)
      throw Error::Corruption("tensor '" + t.name + "': its bands do not cover it");
  }

  // Assembles band b (a fresh contiguous CPU tensor). One slab index per
  // part for all bands.
  SlabIndex slab_index;
  auto assemble = [&](size_t b) -> at::Tensor {
    const Band& band_b = bands[b];
    const format::FlatTensor& t = tensors[band_b.tensor];
    const Source& s = of[band_b.tensor];
    if (s.sharded != nullptr) {
      at::Tensor out = at::empty(band_b.shape, at::TensorOptions().dtype(t.dtype));
      ReadBox(*s.sharded, out, band_b.offsets, o.readers, &slab_index);
      return out;
    }
    const Opened::Replicated& r = *s.replicated;
    CheckpointReader& reader = *o.readers[static_cast<size_t>(r.part)];
    at::Tensor got = reader.ReadTensors({r.info->name}).at(r.info->name);
    if (!got.is_contiguous() || static_cast<uint64_t>(got.nbytes()) != band_b.bytes)
      throw Error::Corruption("replicated tensor '" + r.name + "' read back malformed");
    return got;
  };

  const bool keep = sharded_bytes <= band;  // assemble the sharded tensors once
  const uint64_t total = (keep ? sharded_bytes : 2 * sharded_bytes) + replicated_bytes;
  uint64_t done = 0;
  auto advance = [&](uint64_t n) {
    done += n;
    if (options.progress) options.progress(done, total);
  };
  // Pass 1: the sharded tensors' checksums, which the header holds.
  std::map<size_t, at::Tensor> kept;
  {
    size_t b = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (of[i].sharded == nullptr) continue;
      format::Xxh3Stream h;
      for (; b < bands.size() && bands[b].tensor < i; ++b) {
      }
      for (; b < bands.size() && bands[b].tensor == i; ++b) {
        at::Tensor t = assemble(b);
        h.Update(t.data_ptr(), bands[b].bytes);
        advance(bands[b].bytes);
        if (keep) kept.emplace(b, std::move(t));
      }
      tensors[i].xxh3 = h.Digest();
    }
  }
  // Pass 2: the file, band by band.
  BandSource source(offset, &bands, [&](size_t b) {
    auto it = kept.find(b);
    if (it != kept.end()) {
      at::Tensor t = std::move(it->second);
      kept.erase(it);
      return t;
    }
    at::Tensor t = assemble(b);
    advance(bands[b].bytes);
    return t;
  });
  const int threads = options.threads;
  format::EncodeStreamAndCommit(
      tensors, tree, w, {}, out_path, env, &source,
      [threads](size_t n, const std::function<void(size_t)>& fn) {
        format::ParallelFor(n, threads, fn);
      },
      &format::codec::DefaultAutoModel());
  if (options.progress && done != total) options.progress(total, total);
  if (options.progress && total == 0) options.progress(0, 0);
}

}  // namespace

void ConsolidateCheckpoint(const std::string& manifest_path, const std::string& out_path,
                           const ConsolidateOptions& options) {
  const std::string what = "consolidating '" + manifest_path + "' into '" + out_path + "'";
  Guard(Error::Code::kCorruption, what, [&] {
    try {
      Consolidate(manifest_path, out_path, options);
    } catch (const Error& e) {
      throw Error(e.code(), what + ": " + e.message());
    }
  });
}

ManifestInfo DescribeManifest(const std::string& manifest_path, Env* env) {
  const std::string what = "describing '" + manifest_path + "'";
  return Guard(Error::Code::kCorruption, what, [&] {
    try {
      const std::unique_ptr<Opened> opened =
          Open(manifest_path, env != nullptr ? env : Env::Default(), 1);
      const Opened& o = *opened;
      const Manifest& m = o.manifest;
      ManifestInfo info;
      info.path = manifest_path;
      info.index = m.index;
      info.world_size = m.world_size;
      info.time = m.time;
      info.parent = m.parent;
      info.metrics = m.metrics;
      info.replicated_paths = m.replicated;
      for (size_t r = 0; r < m.parts.size(); ++r) {
        info.parts.push_back(ManifestInfo::Part{static_cast<int>(r), m.parts[r].file,
                                                m.parts[r].file_bytes, m.parts[r].has_local});
      }
      for (const auto& r : o.replicated) {
        info.replicated.push_back(
            ManifestInfo::ReplicatedTensor{r.name, r.info->dtype, r.info->shape, r.part});
      }
      for (const auto& [name, g] : o.layout) {
        ManifestInfo::ShardedTensor s{name, g.dtype, g.global_shape, {}};
        for (const auto& b : g.boxes)
          s.boxes.push_back(ManifestInfo::Box{b.part, b.record->offsets, b.record->shape});
        info.sharded.push_back(std::move(s));
      }
      return info;
    } catch (const Error& e) {
      throw Error(e.code(), what + ": " + e.message());
    }
  });
}

}  // namespace ackpt
