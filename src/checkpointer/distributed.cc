// DistributedCheckpointer: per-rank parts (distributed_layout.h), a
// two-phase commit through the c10d Store (store_commit.h), a manifest that
// makes a checkpoint exist (manifest.h), collective load. The core
// (checkpointer_core.h) is DefaultCheckpointer's; rank 0 owns save_dir.
// docs/DISTRIBUTED.md describes the protocol.
#include "ackpt/distributed.h"

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "checkpointer/checkpointer_core.h"
#include "checkpointer/distributed_layout.h"
#include "checkpointer/guard.h"
#include "checkpointer/manifest.h"
#include "checkpointer/metadata_keys.h"
#include "checkpointer/peer_transfer.h"
#include "checkpointer/sharding.h"
#include "checkpointer/store_commit.h"
#include "format/constants.h"
#include "format/dtype.h"
#include "format/flatten.h"
#include "format/header.h"

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
  if (a.replica_offset < 0) {
    throw Error::InvalidArgument(n + ".replica_offset must be >= 0, got " +
                                 std::to_string(a.replica_offset));
  }
  if (a.ranks_per_node < 1) {
    throw Error::InvalidArgument(n + ".ranks_per_node must be >= 1, got " +
                                 std::to_string(a.ranks_per_node));
  }
  if (a.transfer_chunk_bytes < 4096) {
    throw Error::InvalidArgument(n + ".transfer_chunk_bytes must be >= 4096, got " +
                                 std::to_string(a.transfer_chunk_bytes));
  }
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

// Tags of the transfer group's messages: saves use their sequence number,
// load() its own range above them.
constexpr int kLoadTagBase = 1 << 20;
int SaveTag(uint64_t seq) { return static_cast<int>(seq % kLoadTagBase); }

// Two tiers: what peer replication and local restores share with the save
// hooks (held by shared_ptr: background work holds what it uses).
struct TierLink {
  c10::intrusive_ptr<c10d::Store> store;
  std::string key_prefix;  // this instance's Store keys
  int rank = 0;
  int world = 1;
  int send_to = -1;    // the peer that keeps this rank's replica; -1: no replication
  int recv_from = -1;  // the rank whose replica this rank keeps
  std::string hostname;
  double timeout_seconds = 300;
  size_t chunk_bytes = 16 << 20;
  bool fsync = true;
  std::shared_ptr<Env> env;
  std::shared_ptr<spdlog::logger> logger;
  c10::intrusive_ptr<c10d::ProcessGroup> given;  // the caller's transfer group, if any

  std::mutex mu;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::atomic<uint64_t> replicated{0}, failed{0}, bytes{0};

  // The transfer group, created at first use (every rank reaches its first
  // save or load together).
  c10::intrusive_ptr<c10d::ProcessGroup> Group() {
    std::lock_guard<std::mutex> lock(mu);
    if (!group) {
      group = given ? given
                    : CreateCheckpointGroup(store, key_prefix + "transfer/", rank, world, hostname,
                                            timeout_seconds);
    }
    return group;
  }
  PeerTransferOptions Options() {
    PeerTransferOptions o;
    o.group = Group();
    o.env = env.get();
    o.chunk_bytes = chunk_bytes;
    o.fsync = fsync;
    o.timeout_seconds = timeout_seconds;
    return o;
  }
  // Sends this rank's durable part to send_to and keeps recv_from's at
  // replica_path. A failure is counted and logged: the checkpoint commits
  // without that replica (the peer that failed is usually gone anyway).
  void Replicate(uint64_t seq, int64_t index, const std::string& part_path,
                 const std::string& replica_path) {
    try {
      const uint64_t got =
          ExchangeFiles(Options(), part_path, send_to, replica_path, recv_from, SaveTag(seq));
      ++replicated;
      bytes += got;
    } catch (const std::exception& e) {
      ++failed;
      logger->error("replication of checkpoint {} (rank {} -> {}, {} -> {}) failed: {}", index,
                    rank, send_to, recv_from, rank, e.what());
    }
  }
  std::string GoKey(uint64_t seq) const { return key_prefix + "promote-go/" + std::to_string(seq); }
};

}  // namespace

class DistributedCheckpointer::Impl {
 public:
  explicit Impl(DistributedCheckpointerArguments a)
      : args(Validated(a)),
        rank(args.process_group->getRank()),
        world(args.process_group->getSize()),
        core(args.checkpointer, /*owns_save_dir=*/rank == 0, rank) {
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
    o.dir = core.local() ? core.local() : core.dir();
    o.env = core.engine().env();
    o.replicated = args.replicated;
    o.fsync = base.fsync;
    o.logger = core.engine().logger();
    o.copy_manifest = core.local() != nullptr;
    if (core.local()) {
      // The promotion's commit into save_dir: the same protocol, its own keys.
      StoreCommitOptions p = o;
      p.key_prefix = o.key_prefix + "promote/";
      p.dir = core.dir();
      p.copy_manifest = false;
      promote_commit = std::make_shared<StoreCommit>(std::move(p));
      link = std::make_shared<TierLink>();
      link->store = args.store;
      link->key_prefix = o.key_prefix;
      link->rank = rank;
      link->world = world;
      const int k = (args.replica_offset > 0 ? args.replica_offset : args.ranks_per_node) % world;
      if (k != 0) {
        link->send_to = (rank + k) % world;
        link->recv_from = (rank - k + world) % world;
      }
      link->hostname = args.transfer_hostname;
      link->timeout_seconds = args.commit_timeout_seconds;
      link->chunk_bytes = args.transfer_chunk_bytes;
      link->fsync = base.fsync;
      link->env = core.engine().env();
      link->logger = core.engine().logger();
      link->given = args.transfer_group;
    }
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

  // Two tiers, after this rank's part of the `seq`-th save is committed in
  // the local tier: queue its promotion when due (rank 0 decides whether it
  // goes, so that every rank promotes the same checkpoints), then local
  // retention. Runs on the writer; holds what it uses.
  engine::CommitHook LocalTierAfterCommit(
      uint64_t seq, int64_t index, bool force, const std::map<std::string, double>& metrics,
      const std::function<Manifest::Part(const WriteResult&)>& part_of) {
    std::shared_ptr<CheckpointDir> local = core.local();
    const RetentionPolicy local_policy = base().local_tier.retention;
    const bool due = core.PromotionDue(index, force);
    std::shared_ptr<Promoter> promoter = core.promoter();
    std::shared_ptr<StoreCommit> promote = promote_commit;
    std::shared_ptr<TierLink> l = link;
    std::shared_ptr<CheckpointDir> persistent = core.dir();  // rank 0 only
    const RetentionPolicy persistent_policy = base().retention;
    const std::string save_dir = base().save_dir;
    const int r = rank;
    const double timeout = args.commit_timeout_seconds;
    return [=](const WriteResult& w, const engine::Metadata&) {
      if (due) {
        bool queued = false;
        try {
          const Manifest::Part part = part_of(w);
          PromotionJob job;
          job.index = index;
          job.seq = seq;
          job.force = force;
          // The other ranks follow rank 0's decision, never their own queue.
          job.follow = r != 0;
          job.source = l->env->NewRandomAccessFile(w.path);
          job.dest_path = JoinPath(save_dir, part.file);
          if (r != 0) {
            job.go = [l, seq, index, timeout] {
              const std::string key = l->GoKey(seq);
              try {
                l->store->wait({key}, std::chrono::milliseconds(
                                          static_cast<int64_t>(2 * timeout * 1000) + 10000));
              } catch (const c10::Error&) {
                throw Error::TimedOut("promotion of checkpoint " + std::to_string(index) +
                                      ": no decision from rank 0 (is it alive?)");
              }
              const auto v = l->store->get(key);
              // The last follower to read the decision removes it.
              if (l->store->add(key + "/read", 1) == l->world - 1) {
                l->store->deleteKey(key);
                l->store->deleteKey(key + "/read");
              }
              return !v.empty() && v[0] == '1';
            };
          }
          job.commit = [promote, seq, index, part, metrics, persistent,
                        persistent_policy](uint64_t) {
            promote->Publish(seq, index, part, metrics);
            if (persistent && persistent->writer()) {
              persistent->ApplyRetention(persistent_policy, FileKind::kPart);
              persistent->RemoveOrphanParts([index](int64_t i) { return i <= index; });
            }
          };
          job.failed = [promote, seq](const std::string& why) {
            try {
              promote->Abort(seq, why);
            } catch (...) {
            }
          };
          queued = promoter->Offer(std::move(job));
          if (r == 0 && !queued) {
            promoter->Skipped(index,
                              "promotions are behind (local_tier.max_pending_promotions waiting)");
          }
        } catch (const std::exception& e) {
          promoter->Skipped(index, e.what());
        }
        // Rank 0 always announces its decision: the other ranks wait for it.
        if (r == 0 && l->world > 1) {
          const std::string go = queued ? "1" : "0";
          l->store->set(l->GoKey(seq), std::vector<uint8_t>(go.begin(), go.end()));
        }
      }
      local->ApplyRetention(local_policy, FileKind::kPart);
      // Older indices' parts (and replicas) that never committed.
      local->RemoveOrphanParts([index](int64_t i) { return i <= index; });
    };
  }

  // Reads this rank's share of checkpoint `index`, tensors of `targets`
  // straight into them; `damage` learns which targets were (or, on an
  // error, may have been) written; `info` what was read.
  Checkpoint LoadIndex(int64_t index, const std::string& dir, const LoadTargets& targets,
                       DamagedTargets* damage, DistributedLoadInfo* info) {
    const std::string path = JoinPath(dir, ManifestFileName(base().file_prefix, index));
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
    info->tier = core.TierOf(path);

    const ReadOptions ro = core.LoadReadOptions();
    // Parts are opened when first needed: a rank reads the headers of the
    // parts it reads from, not of all of them.
    std::vector<std::unique_ptr<CheckpointReader>> readers(m.parts.size());
    auto reader_of = [&](size_t p) -> CheckpointReader& {
      if (!readers[p])
        readers[p] = CheckpointReader::Open(JoinPath(dir, m.parts[p].file), ro, core.env());
      return *readers[p];
    };
    // Part 0 names the replicated tensors and holds their tree.
    std::vector<std::string> names;
    std::string tree;
    // Restoring from the local tier, a rank lacks part 0 only when it holds
    // no replicated subtree (FetchLocal).
    if (info->tier != Tier::kLocal || core.env()->FileExists(JoinPath(dir, m.parts[0].file))) {
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
      // Restoring from the local tier, a rank holds only the parts it reads
      // from (FetchLocal); one it lacks holds no replicated tensor, else the
      // check below finds that tensor in no part.
      if (info->tier == Tier::kLocal && !core.env()->FileExists(JoinPath(dir, m.parts[r].file)))
        continue;
      CheckpointReader& reader = reader_of(r);
      std::map<std::string, at::Tensor> dests;  // part-file name -> target
      std::vector<std::string> replicated;      // part-file names of replicated tensors
      for (const auto& t : reader.all_tensors()) {
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
      const std::vector<std::string> written = MatchingTargets(reader, dests);
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
    const std::vector<std::string> written = MatchingTargets(reader, dests);
    for (const auto& t : reader.all_tensors()) {
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
    for (const auto& t : reader.all_tensors()) got.emplace(t.name, placeholder);
    auto tree = reader.info().metadata.find(format::kMetaTree);
    if (tree == reader.info().metadata.end())
      throw Error::Corruption("'" + reader.info().path + "' is not a part written by ackpt");
    StateDict whole = format::Unflatten(tree->second, got, reader.info().path);
    Value* l = whole.find(kPartLocal);
    return l && l->is_dict() ? std::move(l->dict()) : StateDict();
  }

  // ---- Two tiers: restoring from the local tiers -------------------------
  // A checkpoint load() may propose: its tier and index and, for the local
  // tier, which rank holds its manifest and each saved rank's part.
  struct Candidate {
    Tier tier = Tier::kNone;
    int64_t index = -1;
    std::string path;  // persistent: its manifest
    int64_t manifest_holder = -1;
    std::vector<int64_t> holders;
    std::vector<int64_t> shared;  // 1: other ranks read from this part
    std::vector<int64_t> Encode() const {
      std::vector<int64_t> v{static_cast<int64_t>(tier), index, manifest_holder};
      v.insert(v.end(), holders.begin(), holders.end());
      v.insert(v.end(), shared.begin(), shared.end());
      return v;
    }
  };

  std::string LoadKey(uint64_t load_no, const std::string& what) const {
    return link->key_prefix + "load/" + std::to_string(load_no) + "/" + what;
  }

  // What this rank's local tier holds, for rank 0: every manifest (index,
  // generation, world size) and every part file of the right size.
  void PublishHoldings(uint64_t load_no) {
    nlohmann::json h = {{"m", nlohmann::json::array()},
                        {"p", nlohmann::json::array()},
                        {"s", nlohmann::json::array()}};
    Env* env = core.env();
    for (const auto& e : core.local()->Manifests()) {
      try {
        const Manifest m = ReadManifest(env, e.path);
        h["m"].push_back({m.index, m.generation, m.world_size});
        for (size_t p = 0; p < m.parts.size(); ++p) {
          const std::string f = JoinPath(core.local()->dir(), m.parts[p].file);
          if (!env->FileExists(f) || env->GetFileSize(f) != m.parts[p].file_bytes) continue;
          // Whether other ranks read from this part (replicated tensors or
          // boxes), or only its own rank (rank-local state): only its header.
          bool shared = !m.parts[p].shards.empty();
          try {
            ReadOptions ro;
            ro.threads = 1;
            const std::unique_ptr<CheckpointReader> reader = CheckpointReader::Open(f, ro, env);
            for (const auto& t : reader->all_tensors())
              shared = shared || ReplicatedTensorIndex(t.name) >= 0;
            // Part 0 also holds the replicated subtrees (names, scalars).
            if (p == 0 && !shared) {
              const StateDict scalars = PartScalars(*reader);
              const Value* t = scalars.find(kPartReplicatedTree);
              shared = t != nullptr && !t->str().empty();
            }
          } catch (const Error& err) {
            core.log().warn("local tier: not offering {}: {}", f, err.message());
            continue;  // a damaged part is not a copy to restore from
          }
          h["p"].push_back({m.index, p});
          if (shared) h["s"].push_back({m.index, p});
        }
      } catch (const Error& err) {
        core.log().warn("local tier: skipping {}: {}", e.path, err.message());
      }
    }
    const std::string text = h.dump();
    args.store->set(LoadKey(load_no, "holdings/" + std::to_string(rank)),
                    std::vector<uint8_t>(text.begin(), text.end()));
  }

  // Rank 0: the local checkpoints whose manifest and every part some rank
  // holds, newest first (by generation, then index).
  std::vector<Candidate> LocalCandidates(uint64_t load_no) {
    std::vector<std::string> keys;
    for (int r = 0; r < world; ++r)
      keys.push_back(LoadKey(load_no, "holdings/" + std::to_string(r)));
    try {
      args.store->wait(keys, std::chrono::milliseconds(
                                 static_cast<int64_t>(args.commit_timeout_seconds * 1000)));
    } catch (const c10::Error&) {
      core.log().error(
          "local tier: not every rank reported what its local tier holds within {} s; "
          "resuming from the persistent tier only",
          args.commit_timeout_seconds);
      return {};
    }
    struct Seen {
      uint64_t generation = 0;
      int world_size = 0;
      int64_t manifest_holder = -1;
      std::map<int64_t, std::vector<int64_t>> part_holders;  // saved rank -> ranks holding it
      std::set<int64_t> shared;  // saved ranks whose parts other ranks read from
    };
    std::map<int64_t, Seen> seen;
    for (int r = 0; r < world; ++r) {
      const auto bytes = args.store->get(keys[static_cast<size_t>(r)]);
      args.store->deleteKey(keys[static_cast<size_t>(r)]);
      try {
        const nlohmann::json h = nlohmann::json::parse(bytes.begin(), bytes.end());
        for (const auto& m : h.at("m")) {
          Seen& x = seen[m.at(0).get<int64_t>()];
          x.generation = std::max(x.generation, m.at(1).get<uint64_t>());
          x.world_size = m.at(2).get<int>();
          if (x.manifest_holder < 0) x.manifest_holder = r;
        }
        for (const auto& p : h.at("p")) {
          seen[p.at(0).get<int64_t>()].part_holders[p.at(1).get<int64_t>()].push_back(r);
        }
        for (const auto& p : h.at("s"))
          seen[p.at(0).get<int64_t>()].shared.insert(p.at(1).get<int64_t>());
      } catch (const std::exception& e) {
        core.log().warn("local tier: rank {} reported an unreadable list: {}", r, e.what());
      }
    }
    // New local checkpoints rank above every manifest any rank still holds,
    // also when rank 0's own local tier was wiped (its catalog starts empty).
    uint64_t newest = 0;
    for (const auto& kv : seen) newest = std::max(newest, kv.second.generation);
    core.local()->RaiseGeneration(newest);
    std::vector<std::pair<uint64_t, Candidate>> found;
    for (const auto& [index, x] : seen) {
      if (x.manifest_holder < 0 || x.world_size <= 0) continue;
      Candidate c;
      c.tier = Tier::kLocal;
      c.index = index;
      c.manifest_holder = x.manifest_holder;
      for (int64_t p = 0; p < x.world_size; ++p) {
        auto it = x.part_holders.find(p);
        if (it == x.part_holders.end()) break;
        // Its own rank if it still has it, else the first peer with a replica.
        const auto& hs = it->second;
        c.holders.push_back(std::find(hs.begin(), hs.end(), p) != hs.end() ? p : hs.front());
      }
      for (int64_t p = 0; p < x.world_size; ++p) c.shared.push_back(x.shared.count(p) ? 1 : 0);
      if (static_cast<int>(c.holders.size()) != x.world_size) {
        core.log().info("local tier: checkpoint {} is incomplete (part {} is on no rank)", index,
                        c.holders.size());
        continue;
      }
      found.emplace_back(x.generation, std::move(c));
    }
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second.index > b.second.index;
    });
    std::vector<Candidate> out;
    for (auto& f : found) out.push_back(std::move(f.second));
    return out;
  }

  // Rank 0: every candidate of load(), newest first: the local tier's and
  // save_dir's merged by index (the local copy first at equal index).
  std::vector<Candidate> Candidates(uint64_t load_no) {
    std::vector<Candidate> persistent;
    for (const auto& e : core.Catalog()->Manifests()) {
      Candidate c;
      c.tier = Tier::kPersistent;
      c.index = e.index;
      c.path = e.path;
      persistent.push_back(std::move(c));
    }
    if (!core.local()) return persistent;
    return MergeTiers(LocalCandidates(load_no), std::move(persistent));
  }

  // Collective, for a local candidate: the manifest to every rank that lacks
  // it, and each part to every rank that lacks it and reads from it (its own
  // rank; every rank for a part holding replicated tensors or boxes), from
  // the rank rank 0 named (its own rank, or the peer holding its replica). A rank's own
  // part comes back into its local tier for good, as does the replica it
  // keeps; the other parts it received are listed in `fetched` (removed
  // after the load).
  void FetchLocal(int64_t index, const std::vector<int64_t>& proposal, DistributedLoadInfo* info,
                  std::vector<std::string>* fetched) {
    Env* env = core.env();
    const std::string ldir = core.local()->dir();
    const std::string mpath = JoinPath(ldir, ManifestFileName(base().file_prefix, index));
    const PeerTransferOptions o = link->Options();
    const bool have_manifest = env->FileExists(mpath);
    info->bytes_transferred +=
        ShareFile(o, static_cast<int>(proposal[2]), mpath, !have_manifest, mpath, NextLoadTag());
    const Manifest m = ReadManifest(env, mpath);
    if (!have_manifest) core.local()->RecordManifest(m, mpath);
    const size_t n = (proposal.size() - 3) / 2;
    if (m.parts.size() != n) {
      throw Error::Corruption("'" + mpath + "' lists " + std::to_string(m.parts.size()) +
                              " parts; rank 0 found " + std::to_string(n));
    }
    info->part_holders.clear();
    for (size_t p = 0; p < n; ++p) {
      const int holder = static_cast<int>(proposal[3 + p]);
      info->part_holders.push_back(holder);
      const std::string f = JoinPath(ldir, m.parts[p].file);
      const bool have = env->FileExists(f) && env->GetFileSize(f) == m.parts[p].file_bytes;
      // This rank reads its own part (or, resized, rank r mod N's), the
      // parts others read from, and keeps the replica it is the holder of.
      const int own = rank % m.world_size;
      const bool wanted = static_cast<int>(p) == own || static_cast<int>(p) == link->recv_from ||
                          proposal[3 + n + p] != 0;
      const uint64_t got = ShareFile(o, holder, f, !have && wanted, f, NextLoadTag());
      if (have || !wanted) continue;
      info->bytes_transferred += got;
      if (static_cast<int>(p) == rank) {
        info->restored_from_replica = true;
        core.log().info("restored this rank's part of checkpoint {} from rank {}'s replica", index,
                        holder);
      } else if (static_cast<int>(p) != link->recv_from) {
        fetched->push_back(f);
      }
    }
  }
  // Tags of one restore attempt: every rank counts the same attempts (rank
  // 0's proposals), so a rank that failed half-way through one attempt
  // still uses the same tags as the others in the next.
  int NextLoadTag() { return next_load_tag++; }

  std::vector<int64_t> BroadcastVector(std::vector<int64_t> v) {
    const int64_t n = Broadcast(static_cast<int64_t>(v.size()));
    std::vector<at::Tensor> t{rank == 0 ? at::tensor(v, at::kLong) : at::empty({n}, at::kLong)};
    args.process_group->broadcast(t)->wait();
    const int64_t* d = t[0].data_ptr<int64_t>();
    return std::vector<int64_t>(d, d + n);
  }

  DistributedCheckpointerArguments args;
  int rank = 0;
  int world = 1;
  CheckpointerCore core;
  std::shared_ptr<StoreCommit> commit;
  std::shared_ptr<StoreCommit> promote_commit;  // two tiers
  std::shared_ptr<TierLink> link;               // two tiers
  uint64_t seq = 0;            // saves accepted by this instance: the same on every rank
  uint64_t loads = 0;          // load() calls: the same on every rank
  uint64_t load_attempts = 0;  // local-tier restore attempts: the same on every rank
  int next_load_tag = 0;
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
        core.write_dir(),
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
    auto part_of = [has_local, records](const WriteResult& w, const engine::Metadata& metadata) {
      Manifest::Part part;
      part.references = format::ReferencedFiles(metadata, w.path);
      part.file = BaseName(w.path);
      part.file_bytes = w.file_bytes;
      part.header_xxh3 = w.header_xxh3;
      part.has_local = has_local;
      part.shards = records;
      return part;
    };
    std::shared_ptr<TierLink> link = im.link;
    const std::string replica_path =
        link && link->recv_from >= 0
            ? JoinPath(core.write_dir(), PartFileName(im.base().file_prefix, index, link->recv_from,
                                                      core.compressed(), im.base().file_ext))
            : std::string();
    hooks.publish = [commit, seq, index, metrics, part_of, link, replica_path](
                        const WriteResult& w, const engine::Metadata& metadata) {
      // The replica first: once the manifest exists, the peer holds a copy.
      if (link && link->send_to >= 0) link->Replicate(seq, index, w.path, replica_path);
      Guard(Error::Code::kIOError, "committing distributed checkpoint " + std::to_string(index),
            [&] { commit->Publish(seq, index, part_of(w, metadata), metrics); });
    };
    if (core.local()) {
      // (No references with two tiers: ValidateCheckpointerArguments.)
      hooks.after_commit = im.LocalTierAfterCommit(
          seq, index, force, metrics, [part_of](const WriteResult& w) { return part_of(w, {}); });
    } else if (im.owner()) {
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
    core.Save(std::move(part_state), index, path, force, std::move(hooks));
    core.Saved(path);
    // A forced save is committed in both tiers when it returns.
    if (force) core.WaitPromotion(seq);
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
        const uint64_t load_no = im.loads++;
        // Two tiers: every rank tells rank 0 what its local tier holds.
        if (core.local()) im.PublishHoldings(load_no);
        std::vector<Impl::Candidate> candidates;
        if (im.rank == 0) {
          candidates = im.Candidates(load_no);
          // Nothing is being written now: parts that never committed can go.
          if (im.owner()) core.dir()->RemoveOrphanParts([](int64_t) { return true; });
        }
        DamagedTargets damage;
        DistributedLoadInfo info;
        Checkpoint result;
        size_t next = 0;
        for (;;) {
          std::vector<int64_t> proposal{-1};
          if (im.rank == 0) {
            for (; next < candidates.size(); ++next) {
              const Impl::Candidate& c = candidates[next];
              if (c.tier == Tier::kLocal) break;  // its parts are checked as they load
              Manifest m;
              try {
                m = ReadManifest(core.env(), c.path);
              } catch (const Error& err) {
                core.log().warn("skipping {}: {}", c.path, err.message());
                continue;
              }
              if (im.Plausible(m, c.path)) break;
            }
            if (next < candidates.size()) proposal = candidates[next++].Encode();
          }
          proposal = im.BroadcastVector(proposal);
          if (proposal[0] < 0) {
            core.log().info("no distributed checkpoint in {}{}; starting fresh", im.base().save_dir,
                            core.local() ? " or the local tiers" : "");
            break;
          }
          const Tier tier = static_cast<Tier>(proposal[0]);
          const int64_t index = proposal[1];
          const std::string dir = tier == Tier::kLocal ? core.local()->dir() : im.base().save_dir;
          std::string why;
          bool world_mismatch = false;
          std::vector<std::string> fetched;
          info = DistributedLoadInfo();
          try {
            if (tier == Tier::kLocal) {
              // Disjoint tag ranges per attempt: one tag for the manifest, one per part.
              im.next_load_tag =
                  kLoadTagBase + static_cast<int>((im.load_attempts++ % 256) *
                                                  static_cast<uint64_t>(proposal.size()));
              im.FetchLocal(index, proposal, &info, &fetched);
            }
            const DistributedLoadInfo transfer = info;
            result = im.LoadIndex(index, dir, targets, &damage, &info);
            info.part_holders = transfer.part_holders;
            info.restored_from_replica = transfer.restored_from_replica;
            info.bytes_transferred = transfer.bytes_transferred;
          } catch (const Error& e) {
            why = e.message();
            world_mismatch = e.code() == Error::Code::kInvalidArgument;
          } catch (const std::exception& e) {
            why = e.what();
          }
          // Parts received only to read replicated tensors and boxes from.
          for (const auto& f : fetched) {
            try {
              core.env()->RemoveFile(f);
            } catch (const Error& e) {
              core.log().warn("{}", e.message());
            }
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
            im.last_loaded_manifest = JoinPath(dir, ManifestFileName(im.base().file_prefix, index));
            im.last_load = info;
            core.Loaded(im.last_loaded_manifest, index, /*in_save_dir=*/true);
            core.log().info("rank {} resumed distributed checkpoint {} from the {} tier", im.rank,
                            index, TierName(tier));
            break;
          }
          if (!why.empty())
            core.log().warn("distributed checkpoint {} ({} tier) on rank {}: {}", index,
                            TierName(tier), im.rank, why);
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

void DistributedCheckpointer::wait() {
  impl_->core.engine().Wait();
  impl_->core.WaitPromotions();
}

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

CheckpointerCounters DistributedCheckpointer::counters() const {
  CheckpointerCounters c = impl_->core.counters();
  if (const auto& l = impl_->link) {
    c.replications_completed = l->replicated;
    c.replications_failed = l->failed;
    c.bytes_replicated = l->bytes;
  }
  return c;
}

std::vector<CheckpointEntry> DistributedCheckpointer::list_local_checkpoints() const {
  const std::shared_ptr<CheckpointDir>& local = impl_->core.local();
  if (!local) return {};
  std::vector<CheckpointEntry> entries = local->Manifests();
  EvaluateRetention(&entries, impl_->base().local_tier.retention);
  return entries;
}

std::string DistributedCheckpointer::promotion_error() const {
  return impl_->core.promotion_error();
}

std::string DistributedCheckpointer::local_dir() const {
  const std::shared_ptr<CheckpointDir>& local = impl_->core.local();
  return local ? local->dir() : std::string();
}

}  // namespace ackpt
