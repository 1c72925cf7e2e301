// DistributedCheckpointer: per-rank parts (distributed_layout.h), a
// two-phase commit through the c10d Store (store_commit.h), a manifest that
// makes a checkpoint exist (manifest.h), collective load. The core
// (checkpointer_core.h) is DefaultCheckpointer's; rank 0 owns save_dir.
// docs/DISTRIBUTED.md describes the protocol.
#include "ackpt/distributed.h"

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "checkpointer/checkpointer_core.h"
#include "checkpointer/distributed_layout.h"
#include "checkpointer/guard.h"
#include "checkpointer/manifest.h"
#include "checkpointer/metadata_keys.h"
#include "checkpointer/store_commit.h"
#include "format/constants.h"
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

// The scalars of a part file's state tree (its tensors are not read).
StateDict Scalars(const CheckpointReader& reader) {
  const FileInfo& info = reader.info();
  const at::Tensor placeholder = at::empty({0});
  std::map<std::string, at::Tensor> placeholders;
  for (const auto& t : info.tensors) placeholders.emplace(t.name, placeholder);
  auto tree = info.metadata.find(format::kMetaTree);
  if (tree == info.metadata.end())
    throw Error::Corruption("'" + info.path + "' is not a part written by ackpt");
  return format::Unflatten(tree->second, placeholders, info.path);
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
  // error, may have been) written.
  Checkpoint LoadIndex(int64_t index, const LoadTargets& targets, DamagedTargets* damage) {
    const std::string path = ManifestPath(index);
    const Manifest m = ReadManifest(core.env(), path);
    if (m.world_size != world && m.any_local()) {
      throw Error::InvalidArgument("distributed checkpoint " + std::to_string(index) +
                                   " was saved by " + std::to_string(m.world_size) +
                                   " ranks and has rank-local state; it cannot be loaded by " +
                                   std::to_string(world) +
                                   " ranks (only replicated state moves across world sizes)");
    }
    const ReadOptions ro = core.LoadReadOptions();
    std::vector<std::unique_ptr<CheckpointReader>> readers;
    for (const auto& p : m.parts)
      readers.push_back(CheckpointReader::Open(JoinPath(base().save_dir, p.file), ro, core.env()));
    // Part 0 names the replicated tensors and holds their tree.
    std::vector<std::string> names;
    std::string tree;
    {
      const StateDict scalars = Scalars(*readers[0]);
      if (const Value* n = scalars.find(kPartReplicatedNames))
        for (const auto& v : n->list()) names.push_back(v.str());
      if (const Value* t = scalars.find(kPartReplicatedTree)) tree = t->str();
    }
    const PartTargets to =
        MapPartTargets(targets, m.replicated.empty() ? args.replicated : m.replicated);
    std::map<std::string, at::Tensor> by_name;  // replicated flattened name -> tensor
    StateDict local;
    for (size_t r = 0; r < readers.size(); ++r) {
      CheckpointReader& reader = *readers[r];
      const bool own = static_cast<int>(r) == rank && m.world_size == world;
      std::map<std::string, at::Tensor> dests;  // part-file name -> target
      std::vector<std::string> replicated;      // part-file names of replicated tensors
      for (const auto& t : reader.info().tensors) {
        const int64_t i = ReplicatedTensorIndex(t.name);
        if (i < 0) {
          if (own && to.local.count(t.name)) dests.emplace(t.name, to.local.at(t.name));
          continue;
        }
        if (static_cast<size_t>(i) >= names.size())
          throw Error::Corruption("'" + reader.info().path + "' holds replicated tensor " +
                                  std::to_string(i) + " of " + std::to_string(names.size()));
        replicated.push_back(t.name);
        auto target = to.replicated.find(names[static_cast<size_t>(i)]);
        if (target != to.replicated.end()) dests.emplace(t.name, target->second);
      }
      const std::vector<std::string> written = MatchingTargets(reader.info(), dests);
      try {
        std::map<std::string, at::Tensor> got;
        if (own) {
          // The own part whole: its local state and the replicated tensors it holds.
          StateDict whole = reader.ReadStateDictInto(dests, /*strict=*/false);
          if (Value* l = whole.find(kPartLocal)) local = std::move(l->dict());
          got = FlattenTensors(whole);
        } else {
          // Another rank's part: only its replicated tensors, only their frames.
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
          got = reader.ReadTensors(fresh);
          for (auto& kv : into) got.emplace(kv.first, kv.second);
        }
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
    Checkpoint c = JoinReplicated(std::move(local), tree, by_name, path);
    c.metrics = m.metrics;
    return c;
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
    const SplitCheckpoint split = SplitReplicated(checkpoint, im.args.replicated);
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
    hooks.publish = [commit, seq, index, has_local, metrics](const WriteResult& w,
                                                             const engine::Metadata&) {
      Guard(Error::Code::kIOError, "committing distributed checkpoint " + std::to_string(index),
            [&] {
              Manifest::Part part;
              part.file = BaseName(w.path);
              part.file_bytes = w.file_bytes;
              part.header_xxh3 = w.header_xxh3;
              part.has_local = has_local;
              commit->Publish(seq, index, part, metrics);
            });
    };
    if (im.owner()) {
      std::shared_ptr<CheckpointDir> dir = core.dir();
      const RetentionPolicy policy = im.base().retention;
      hooks.after_commit = [dir, policy, index](const WriteResult&, const engine::Metadata&) {
        dir->ApplyRetention(policy, FileKind::kPart);
        dir->RemoveOrphanParts([index](int64_t i) { return i < index; });
      };
    }
    core.engine().Save(PartState(split, im.rank, im.world), index, path, force, std::move(hooks));
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
            result = im.LoadIndex(index, targets, &damage);
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
