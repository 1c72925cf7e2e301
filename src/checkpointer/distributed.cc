// DistributedCheckpointer: per-rank parts (distributed_layout.h), a
// two-phase commit through the c10d Store (store_commit.h), a manifest that
// makes a checkpoint exist (manifest.h), collective load. The core
// (checkpointer_core.h) is DefaultCheckpointer's; rank 0 owns save_dir.
// docs/DISTRIBUTED.md describes the protocol.
#include "ackpt/distributed.h"

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <set>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "checkpointer/checkpointer_core.h"
#include "checkpointer/distributed_layout.h"
#include "checkpointer/guard.h"
#include "checkpointer/manifest.h"
#include "checkpointer/metadata_keys.h"
#include "checkpointer/sharding.h"
#include "checkpointer/store_commit.h"
#include "format/constants.h"
#include "format/dtype.h"
#include "format/flatten.h"

namespace ackpt {

namespace {

const DistributedCheckpointerArguments& Validated(const DistributedCheckpointerArguments& a) {
  const std::string n = "DistributedCheckpointerArguments";
  if (!a.process_group) throw Error::InvalidArgument(n + ".process_group is null");
  if (!a.store) throw Error::InvalidArgument(n + ".store is null");
  if (a.checkpointer.save_dir.empty())
    throw Error::InvalidArgument(n + ".checkpointer.save_dir is empty");
  if (a.checkpointer.backpressure != BackpressurePolicy::kBlock) {
    throw Error::InvalidArgument(n +
                                 ".checkpointer.backpressure must be kBlock: a save dropped on "
                                 "one rank could never commit");
  }
  if (!(a.commit_timeout_seconds > 0))
    throw Error::InvalidArgument(n + ".commit_timeout_seconds must be > 0");
  ValidateReplicatedPaths(a.replicated);
  return a;
}

// Whether saved box `r` overlaps the box at `offsets` of `shape`.
bool Overlaps(const ShardRecord& r, const std::vector<int64_t>& offsets,
              const std::vector<int64_t>& shape) {
  for (size_t d = 0; d < offsets.size() && d < r.offsets.size(); ++d) {
    if (!(r.offsets[d] < offsets[d] + shape[d] && offsets[d] < r.offsets[d] + r.shape[d]))
      return false;
  }
  return true;
}

}  // namespace

class DistributedCheckpointer::Impl {
 public:
  explicit Impl(DistributedCheckpointerArguments a)
      : args(Validated(a)),
        rank(args.process_group->getRank()),
        world(args.process_group->getSize()),
        core(args.checkpointer, /*owns_save_dir=*/rank == 0) {
    const DefaultCheckpointerArguments& base = core.args();
    // This instance's key space in the Store: every rank counts its own
    // checkpointers of this prefix, so the k-th one on each rank gets the same
    // number however the ranks' constructions interleave in time (a second
    // checkpointer, or a later job on the same Store, never reads stale keys).
    const int64_t ticket =
        args.store->add("ackpt/" + base.file_prefix + "/instances/rank" + std::to_string(rank), 1);
    StoreCommitOptions o;
    o.store = args.store;
    o.key_prefix = "ackpt/" + base.file_prefix + "/" + std::to_string(ticket - 1) + "/";
    o.rank = rank;
    o.world = world;
    o.timeout_seconds = args.commit_timeout_seconds;
    o.dir = core.dir();
    o.env = core.engine().env();
    o.replicated = args.replicated;
    o.fsync = base.fsync;
    o.logger = core.engine().logger();
    commit = std::make_shared<StoreCommit>(std::move(o));
  }

  const DefaultCheckpointerArguments& base() const { return core.args(); }
  bool owner() const { return core.dir() && core.dir()->writer(); }

  int64_t Broadcast(int64_t v) {
    std::vector<at::Tensor> t{at::full({1}, v, at::kLong)};
    args.process_group->broadcast(t)->wait();
    return t[0].item<int64_t>();
  }
  int64_t AllreduceSum(int64_t v) {
    std::vector<at::Tensor> t{at::full({1}, v, at::kLong)};
    args.process_group->allreduce(t)->wait();
    return t[0].item<int64_t>();
  }

  // Rank 0: the manifest and every part's header check out.
  bool Plausible(const Manifest& m, const std::string& path) {
    for (const auto& p : m.parts) {
      const std::string part = JoinPath(base().save_dir, p.file);
      try {
        ReadOptions ro;
        ro.threads = 1;
        auto reader = CheckpointReader::Open(part, ro, core.env());
        if (reader->info().file_bytes != p.file_bytes) {
          throw Error::Corruption("'" + part + "' has " +
                                  std::to_string(reader->info().file_bytes) +
                                  " bytes, the manifest says " + std::to_string(p.file_bytes));
        }
        const auto h = reader->info().metadata.find(format::kMetaHeaderChecksum);
        if (h == reader->info().metadata.end() || h->second != p.header_xxh3)
          throw Error::Corruption("'" + part + "' is not the part " + path + " committed");
      } catch (const Error& e) {
        core.log().warn("skipping distributed checkpoint {}: {}", m.index, e.message());
        return false;
      }
    }
    return true;
  }

  // Reads this rank's share of checkpoint `index`, tensors of `targets`
  // straight into them; `damage` learns which targets were (or, on an
  // error, may have been) written; `info` what was read.
  Checkpoint LoadIndex(int64_t index, const LoadTargets& targets, DamagedTargets* damage,
                       DistributedLoadInfo* info) {
    const std::string path = ManifestPath(index);
    const Manifest m = ReadManifest(core.env(), path);
    const std::map<std::string, GlobalTensor> layout =
        GlobalLayout(m, Error::Code::kCorruption, path);
    const bool resized = m.world_size != world;
    // Whose part the rank-local state (and the tree that places the sharded
    // tensors) comes from; -1: none.
    int local_src = rank;
    if (resized) {
      local_src = rank % m.world_size;
      if (m.any_local()) {
        switch (args.local_state_on_resize) {
          case LocalStateOnResize::kError:
            throw Error::InvalidArgument(
                "distributed checkpoint " + std::to_string(index) + " was saved by " +
                std::to_string(m.world_size) +
                " ranks and has rank-local state; it cannot be "
                "loaded by " +
                std::to_string(world) +
                " ranks unless local_state_on_resize says what to do with it (only replicated "
                "and sharded state moves across world sizes by default)");
          case LocalStateOnResize::kFromRankModulo:
            break;
          case LocalStateOnResize::kEmpty:
            local_src = -1;
            break;
        }
      }
    }
    info->manifest = path;
    info->index = index;
    info->saved_world_size = m.world_size;
    info->local_state_from_rank = m.any_local() ? local_src : -1;
    info->sharded_bytes_read = 0;
    info->sharded_bytes_needed = 0;

    const ReadOptions ro = core.LoadReadOptions();
    // Parts are opened when first needed: a rank reads the headers of the
    // parts it reads from, not of all of them.
    std::vector<std::unique_ptr<CheckpointReader>> readers(m.parts.size());
    auto reader_of = [&](size_t p) -> CheckpointReader& {
      if (!readers[p])
        readers[p] =
            CheckpointReader::Open(JoinPath(base().save_dir, m.parts[p].file), ro, core.env());
      return *readers[p];
    };
    // Part 0 names the replicated tensors and holds their tree.
    std::vector<std::string> names;
    std::string tree;
    {
      const StateDict scalars = PartScalars(reader_of(0));
      if (const Value* n = scalars.find(kPartReplicatedNames))
        for (const auto& v : n->list()) names.push_back(v.str());
      if (const Value* t = scalars.find(kPartReplicatedTree)) tree = t->str();
    }
    const std::vector<std::string>& saved_replicated =
        m.replicated.empty() ? args.replicated : m.replicated;

    // Sharded targets: the listed boxes, and a plain target at the name of a
    // sharded global tensor (the whole box).
    struct BoxTarget {
      std::string name;
      at::Tensor tensor;
      std::vector<int64_t> offsets;
      std::vector<int64_t> global_shape;
    };
    std::vector<BoxTarget> boxes;
    std::set<std::string> boxed;
    for (LocalShard& sh : CheckLocalShards(targets.into)) {
      boxed.insert(sh.name);
      boxes.push_back({sh.name, sh.tensor, sh.box.offsets, sh.box.global_shape});
    }
    const std::map<std::string, at::Tensor> flat_targets =
        targets.into.empty() ? std::map<std::string, at::Tensor>{}
                             : FlattenTensors(CheckpointLayout(targets.into));
    for (const auto& [name, g] : layout) {
      if (boxed.count(name)) continue;
      auto t = flat_targets.find(name);
      if (t != flat_targets.end() && t->second.sizes().vec() == g.global_shape) {
        boxed.insert(name);
        boxes.push_back(
            {name, t->second, std::vector<int64_t>(g.global_shape.size(), 0), g.global_shape});
      }
    }
    PartTargets to = MapPartTargets(targets, saved_replicated);
    for (const auto& name : boxed) {
      to.local.erase(std::string(kPartLocal) + "/" + name);
      const std::string r = ReplicatedNameOf(name, saved_replicated);
      if (!r.empty()) to.replicated.erase(r);
    }

    StateDict local;
    if (local_src >= 0)
      local = ReadLocal(reader_of(static_cast<size_t>(local_src)), to.local, damage);

    // The replicated tensors, each from the part that holds it, only its frames.
    std::map<std::string, at::Tensor> by_name;  // replicated flattened name -> tensor
    for (size_t r = 0; r < m.parts.size() && !names.empty(); ++r) {
      CheckpointReader& reader = reader_of(r);
      std::map<std::string, at::Tensor> dests;  // part-file name -> target
      std::vector<std::string> replicated;      // part-file names of replicated tensors
      for (const auto& t : reader.info().tensors) {
        const int64_t i = ReplicatedTensorIndex(t.name);
        if (i < 0) continue;
        if (static_cast<size_t>(i) >= names.size())
          throw Error::Corruption("'" + reader.info().path + "' holds replicated tensor " +
                                  std::to_string(i) + " of " + std::to_string(names.size()));
        replicated.push_back(t.name);
        auto target = to.replicated.find(names[static_cast<size_t>(i)]);
        if (target != to.replicated.end()) dests.emplace(t.name, target->second);
      }
      if (replicated.empty()) continue;
      const std::vector<std::string> written = MatchingTargets(reader.info(), dests);
      try {
        std::map<std::string, at::Tensor> into;
        std::vector<std::string> fresh;
        for (const auto& n : replicated) {
          if (std::find(written.begin(), written.end(), n) != written.end()) {
            into.emplace(n, dests.at(n));
          } else {
            fresh.push_back(n);
          }
        }
        if (!into.empty()) reader.ReadInto(into);
        std::map<std::string, at::Tensor> got = reader.ReadTensors(fresh);
        for (auto& kv : into) got.emplace(kv.first, kv.second);
        for (const auto& n : replicated) {
          by_name[names[static_cast<size_t>(ReplicatedTensorIndex(n))]] = got.at(n);
        }
      } catch (...) {
        if (damage) damage->Failed(written);
        throw;
      }
      if (damage) damage->Succeeded(written);
    }
    for (const auto& n : names) {
      if (!by_name.count(n))
        throw Error::Corruption("replicated tensor '" + n + "' of checkpoint " +
                                std::to_string(index) + " is in no part");
    }

    // Sharded global tensors nobody asked a box of: this rank's own box on
    // the same world size, else the whole tensor.
    for (const auto& [name, g] : layout) {
      if (boxed.count(name)) continue;
      at::ScalarType type;
      if (!format::DtypeFromName(g.dtype, &type))
        throw Error::Corruption("'" + path + "': sharded tensor '" + name + "' has dtype " +
                                g.dtype);
      std::vector<int64_t> offsets(g.global_shape.size(), 0), shape = g.global_shape;
      if (!resized) {
        for (const auto& b : g.boxes) {
          if (b.part == rank) {
            offsets = b.record->offsets;
            shape = b.record->shape;
          }
        }
      }
      // Allocate only what the parts can hold: each box read must fit in
      // its part's tensor data, as the part's validated header declares it.
      for (const auto& b : g.boxes) {
        if (!Overlaps(*b.record, offsets, shape)) continue;
        const uint64_t bytes =
            static_cast<uint64_t>(Volume(b.record->shape)) * format::DtypeSize(type);
        CheckpointReader& part = reader_of(static_cast<size_t>(b.part));
        if (bytes > part.info().logical_bytes) {
          throw Error::Corruption("'" + part.info().path + "' is too small for its box of '" +
                                  name + "' that the manifest lists");
        }
      }
      boxes.push_back(
          {name, at::empty(shape, at::TensorOptions().dtype(type)), offsets, g.global_shape});
    }

    Checkpoint c = JoinReplicated(std::move(local), tree, by_name, path);
    StateDict root = CheckpointLayout(c);
    for (const BoxTarget& b : boxes) {
      const std::string what = "sharded tensor '" + b.name + "'";
      uint64_t needed = static_cast<uint64_t>(b.tensor.numel()) * b.tensor.element_size();
      auto g = layout.find(b.name);
      const std::string rep = ReplicatedNameOf(b.name, saved_replicated);
      const bool from_replicated = g == layout.end() && !rep.empty() && by_name.count(rep);
      if (g == layout.end() && !from_replicated) continue;  // the checkpoint lacks it
      const at::Tensor source_whole = from_replicated ? by_name.at(rep) : at::Tensor();
      const std::string dtype =
          from_replicated ? DtypeName(source_whole.scalar_type()) : g->second.dtype;
      const std::vector<int64_t> global =
          from_replicated ? source_whole.sizes().vec() : g->second.global_shape;
      if (DtypeName(b.tensor.scalar_type()) != dtype || global != b.global_shape) {
        throw Error::InvalidArgument(what + " of checkpoint " + std::to_string(index) + " is " +
                                     dtype + " of global shape " + ShapeText(global) +
                                     "; the target is " + DtypeName(b.tensor.scalar_type()) +
                                     " of global shape " + ShapeText(b.global_shape));
      }
      try {
        if (from_replicated) {
          CopyBox(source_whole, b.tensor, b.offsets);
        } else {
          std::vector<CheckpointReader*> parts(m.parts.size(), nullptr);
          for (const auto& box : g->second.boxes) {
            if (Overlaps(*box.record, b.offsets, b.tensor.sizes().vec()))
              parts[static_cast<size_t>(box.part)] = &reader_of(static_cast<size_t>(box.part));
          }
          info->sharded_bytes_read += ReadBox(g->second, b.tensor, b.offsets, parts);
          info->sharded_bytes_needed += needed;
        }
      } catch (...) {
        if (damage && flat_targets.count(b.name)) damage->Failed({b.name});
        throw;
      }
      if (damage && flat_targets.count(b.name)) damage->Succeeded({b.name});
      PutAtFlatName(&root, b.name, b.tensor);
      c.shards[b.name] = ShardBox{b.offsets, b.global_shape};
    }
    std::map<std::string, ShardBox> shards = std::move(c.shards);
    c = CheckpointFromLayout(std::move(root), path);
    c.shards = std::move(shards);
    c.metrics = m.metrics;
    return c;
  }

  // The rank-local state of a part: its "local" tree, the tensors of
  // `dests` read into them, the others (except sharded placeholders, which
  // are empty) into fresh tensors; slabs and replicated tensors untouched.
  StateDict ReadLocal(CheckpointReader& reader, const std::map<std::string, at::Tensor>& dests,
                      DamagedTargets* damage) {
    const std::string prefix = std::string(kPartLocal) + "/";
    std::map<std::string, at::Tensor> into;
    std::vector<std::string> fresh;
    const std::vector<std::string> written = MatchingTargets(reader.info(), dests);
    for (const auto& t : reader.info().tensors) {
      if (t.name.rfind(prefix, 0) != 0) continue;
      if (std::find(written.begin(), written.end(), t.name) != written.end()) {
        into.emplace(t.name, dests.at(t.name));
      } else {
        fresh.push_back(t.name);
      }
    }
    std::map<std::string, at::Tensor> got;
    try {
      if (!into.empty()) reader.ReadInto(into);
      got = reader.ReadTensors(fresh);
    } catch (...) {
      if (damage) damage->Failed(written);
      throw;
    }
    if (damage) damage->Succeeded(written);
    for (auto& kv : into) got.emplace(kv.first, kv.second);
    const at::Tensor placeholder = at::empty({0});
    for (const auto& t : reader.info().tensors) got.emplace(t.name, placeholder);
    auto tree = reader.info().metadata.find(format::kMetaTree);
    if (tree == reader.info().metadata.end())
      throw Error::Corruption("'" + reader.info().path + "' is not a part written by ackpt");
    StateDict whole = format::Unflatten(tree->second, got, reader.info().path);
    Value* l = whole.find(kPartLocal);
    return l && l->is_dict() ? std::move(l->dict()) : StateDict();
  }

  std::string ManifestPath(int64_t index) const {
    return JoinPath(base().save_dir, ManifestFileName(base().file_prefix, index));
  }

  DistributedCheckpointerArguments args;
  int rank = 0;
  int world = 1;
  CheckpointerCore core;
  std::shared_ptr<StoreCommit> commit;
  uint64_t seq = 0;  // saves accepted by this instance: the same on every rank
  std::string last_loaded_manifest;
  DistributedLoadInfo last_load;
};

DistributedCheckpointer::DistributedCheckpointer(DistributedCheckpointerArguments args)
    : impl_(Guard(Error::Code::kInvalidArgument, "creating the distributed checkpointer",
                  [&] { return std::make_unique<Impl>(std::move(args)); })) {}

DistributedCheckpointer::~DistributedCheckpointer() = default;

int DistributedCheckpointer::rank() const { return impl_->rank; }
int DistributedCheckpointer::world_size() const { return impl_->world; }

void DistributedCheckpointer::save(const Checkpoint& checkpoint, int64_t index, bool force) {
  Impl& im = *impl_;
  CheckpointerCore& core = im.core;
  if (!core.ShouldSave(index, force)) return;
  Guard(Error::Code::kInvalidArgument, "distributed save of index " + std::to_string(index), [&] {
    const std::vector<LocalShard> shards = CheckLocalShards(checkpoint);
    SplitCheckpoint split = SplitReplicated(checkpoint, im.args.replicated);
    // A sharded tensor is stored as slabs under "sharded/"; its place in the
    // local tree keeps an empty tensor of its dtype, so the tree (lists
    // included) comes back as it was.
    std::map<std::string, at::Tensor> placeholders;
    StateDict slabs;
    std::vector<ShardRecord> records;
    for (const LocalShard& sh : shards) {
      if (!ReplicatedNameOf(sh.name, im.args.replicated).empty()) {
        throw Error::InvalidArgument("Checkpoint.shards['" + sh.name +
                                     "'] is under a replicated path: a sharded tensor is "
                                     "neither replicated nor rank-local");
      }
      const at::Tensor empty = at::empty({0}, sh.tensor.options().device(at::kCPU));
      ReplaceAtFlatName(&split.local, sh.name, empty);
      placeholders.emplace(sh.name, empty);
      records.push_back(RecordOf(sh));
      List list;
      for (auto& slab : Slabs(sh.tensor, records.back().slab_rows)) list.push_back(slab);
      slabs.set(sh.name, std::move(list));
    }
    if (!shards.empty()) split.has_local = HasLeafOtherThan(split.local, placeholders);
    StateDict part_state = PartState(split, im.rank, im.world);
    if (!shards.empty()) part_state.set(kPartSharded, std::move(slabs));
    const std::string path = JoinPath(
        im.base().save_dir,
        PartFileName(im.base().file_prefix, index, im.rank, core.compressed(), im.base().file_ext));
    engine::SaveHooks hooks;
    hooks.metadata = {{kMetaKind, KindName(FileKind::kPart)},
                      {kMetaIndex, std::to_string(index)},
                      {kMetaRank, std::to_string(im.rank)},
                      {kMetaWorldSize, std::to_string(im.world)}};
    const uint64_t seq = im.seq++;
    std::shared_ptr<StoreCommit> commit = im.commit;
    const bool has_local = split.has_local;
    const std::map<std::string, double> metrics = checkpoint.metrics;
    hooks.publish = [commit, seq, index, has_local, metrics, records](const WriteResult& w,
                                                                      const engine::Metadata&) {
      Guard(Error::Code::kIOError, "committing distributed checkpoint " + std::to_string(index),
            [&] {
              Manifest::Part part;
              part.file = BaseName(w.path);
              part.file_bytes = w.file_bytes;
              part.header_xxh3 = w.header_xxh3;
              part.has_local = has_local;
              part.shards = records;
              commit->Publish(seq, index, part, metrics);
            });
    };
    if (im.owner()) {
      std::shared_ptr<CheckpointDir> dir = core.dir();
      const RetentionPolicy policy = im.base().retention;
      hooks.after_commit = [dir, policy, index](const WriteResult&, const engine::Metadata&) {
        dir->ApplyRetention(policy, FileKind::kPart);
        // Older indices' parts that never committed, and parts of this index
        // left by an earlier save of it with more ranks (all of this save's
        // parts are in its manifest).
        dir->RemoveOrphanParts([index](int64_t i) { return i <= index; });
      };
    }
    core.engine().Save(std::move(part_state), index, path, force, std::move(hooks));
    core.Saved(path);
  });
}

void DistributedCheckpointer::save_model(const StateDict& model_state, int64_t index) {
  if (impl_->rank != 0) return;
  Guard(Error::Code::kInvalidArgument, "save_model of index " + std::to_string(index),
        [&] { impl_->core.SaveModel(model_state, index); });
}

Checkpoint DistributedCheckpointer::load() { return load(LoadTargets{}); }

Checkpoint DistributedCheckpointer::load(const LoadTargets& targets) {
  Impl& im = *impl_;
  CheckpointerCore& core = im.core;
  core.Drain();
  return Guard(
      Error::Code::kCorruption, "distributed load on rank " + std::to_string(im.rank), [&] {
        std::vector<CheckpointEntry> candidates;
        if (im.rank == 0) {
          candidates = core.Catalog()->Manifests();
          // Nothing is being written now: parts that never committed can go.
          if (im.owner()) core.dir()->RemoveOrphanParts([](int64_t) { return true; });
        }
        DamagedTargets damage;
        DistributedLoadInfo info;
        Checkpoint result;
        size_t next = 0;
        for (;;) {
          int64_t proposal = -1;
          if (im.rank == 0) {
            for (; next < candidates.size(); ++next) {
              const auto& e = candidates[next];
              Manifest m;
              try {
                m = ReadManifest(core.env(), e.path);
              } catch (const Error& err) {
                core.log().warn("skipping {}: {}", e.path, err.message());
                continue;
              }
              if (im.Plausible(m, e.path)) break;
            }
            if (next < candidates.size()) proposal = candidates[next++].index;
          }
          const int64_t index = im.Broadcast(proposal);
          if (index < 0) {
            core.log().info("no distributed checkpoint in {}; starting fresh", im.base().save_dir);
            break;
          }
          std::string why;
          bool world_mismatch = false;
          try {
            result = im.LoadIndex(index, targets, &damage, &info);
          } catch (const Error& e) {
            why = e.message();
            world_mismatch = e.code() == Error::Code::kInvalidArgument;
          }
          // Every rank learns whether every rank could read its share.
          const int64_t bad = im.AllreduceSum(why.empty() ? 0 : 1);
          const int64_t mismatched = im.AllreduceSum(world_mismatch ? 1 : 0);
          if (mismatched > 0) {
            throw Error::InvalidArgument(why.empty()
                                             ? "distributed checkpoint " + std::to_string(index) +
                                                   " was saved with another world size"
                                             : why);
          }
          if (bad == 0) {
            im.last_loaded_manifest = im.ManifestPath(index);
            im.last_load = info;
            core.Loaded(im.last_loaded_manifest, index, /*in_save_dir=*/true);
            core.log().info("rank {} resumed distributed checkpoint {}", im.rank, index);
            break;
          }
          if (!why.empty())
            core.log().warn("distributed checkpoint {} on rank {}: {}", index, im.rank, why);
          result = Checkpoint();
        }
        // Targets left partly overwritten on any rank fail the load on every rank.
        if (im.AllreduceSum(damage.empty() ? 0 : 1) > 0) {
          damage.ThrowIfAny();
          throw Error::Corruption(
              "a failed load left another rank's load targets partly overwritten");
        }
        return result;
      });
}

void DistributedCheckpointer::wait() { impl_->core.engine().Wait(); }

void DistributedCheckpointer::wait_snapshot() { impl_->core.engine().WaitSnapshot(); }

std::string DistributedCheckpointer::last_loaded_manifest() const {
  return impl_->last_loaded_manifest;
}

DistributedLoadInfo DistributedCheckpointer::last_load_info() const { return impl_->last_load; }

std::vector<CheckpointEntry> DistributedCheckpointer::list_checkpoints() const {
  std::vector<CheckpointEntry> entries = impl_->core.Catalog()->Manifests();
  EvaluateRetention(&entries, impl_->base().retention);
  return entries;
}

const DistributedCheckpointerArguments& DistributedCheckpointer::args() const {
  return impl_->args;
}

CheckpointerCounters DistributedCheckpointer::counters() const { return impl_->core.counters(); }

}  // namespace ackpt
