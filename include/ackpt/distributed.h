// Distributed checkpointing over torch.distributed's C++ engine (c10d).
//
// Every rank calls save(checkpoint, index) with its own Checkpoint. Each rank
// writes its part as an ordinary ackpt file (temp, fsync, rename, directory
// fsync): its rank-local state plus its share of the replicated tensors,
// which are written once, spread across ranks by size. When its part is
// durable, a rank's writer publishes it through the c10d Store; rank 0's
// writer waits for every part (commit_timeout_seconds) and then writes the
// manifest "{prefix}_{index}.manifest.json" atomically. A checkpoint exists
// if and only if its manifest exists. The background threads use only the
// Store, never the process group, so they cannot interleave with the
// trainer's collectives. load() is collective and runs in the foreground.
// docs/DISTRIBUTED.md has the protocol, its failure cases and the scale story.
#pragma once

#include <memory>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <vector>

#include "ackpt/checkpointer.h"
#include "ackpt/export.h"

namespace ackpt {

// What a rank's load() does with rank-local state (everything that is
// neither replicated nor a sharded tensor: RNG, data position) when the
// checkpoint was saved by another number of ranks.
enum class LocalStateOnResize {
  kError,           // throw kInvalidArgument naming both world sizes
  kFromRankModulo,  // rank r takes the state saved by rank r mod saved_world_size
  kEmpty,           // start without it (sharded and replicated state still load)
};

// What the last successful load() read (DistributedCheckpointer::last_load_info).
struct DistributedLoadInfo {
  std::string manifest;               // the manifest resumed from; "" if nothing was loaded
  int64_t index = -1;                 // its index
  int saved_world_size = 0;           // the world size that saved it
  int local_state_from_rank = -1;     // whose rank-local state this rank got; -1: none
  uint64_t sharded_bytes_read = 0;    // bytes of saved shard slabs this rank read
  uint64_t sharded_bytes_needed = 0;  // bytes of the boxes this rank asked for
  // Two tiers: where the checkpoint was found (kPersistent with one tier).
  Tier tier = Tier::kNone;
  // kLocal: for each saved rank's part, the rank whose local tier held it
  // (the rank itself, or the peer holding its replica).
  std::vector<int> part_holders;
  // kLocal: this rank's own part came from its peer's replica (its local
  // tier had lost it) and was copied back into its local tier.
  bool restored_from_replica = false;
  // kLocal: bytes of part files this rank received from other ranks' local
  // tiers to load (its own part copied back, and the parts holding
  // replicated tensors or boxes it reads).
  uint64_t bytes_transferred = 0;
};

struct DistributedCheckpointerArguments {
  // Directory, names, compression, period, retention, threads, staging, ...
  // as for DefaultCheckpointer, validated the same way (the same errors).
  // save_dir must be one directory that every rank sees (a shared file
  // system). Only rank 0 owns it (lock, retention, cleanup) and writes
  // save_model()'s file into model_state_save_dir; backpressure must be
  // kBlock, since a save dropped on one rank could never commit.
  // Default: DefaultCheckpointer's.
  DefaultCheckpointerArguments checkpointer;
  // The training process group. Used only by load(), which is collective,
  // and only on the calling thread. Required.
  c10::intrusive_ptr<c10d::ProcessGroup> process_group;
  // The rendezvous Store (FileStore, TCPStore, or one wrapped in a
  // PrefixStore). The background writers publish and commit through it under
  // keys "ackpt/{prefix}/{index}/...". Required.
  c10::intrusive_ptr<c10d::Store> store;
  // Subtrees of the Checkpoint that are identical on every rank, as paths of
  // keys from the top-level group: "module_interface_state" (DDP parameters),
  // "trainer_state/optimizer". Their tensors are written once across ranks;
  // everything else is rank-local (RNG, data position, shards). A listed path
  // missing from a Checkpoint is skipped. Default: {"module_interface_state"}.
  std::vector<std::string> replicated = {"module_interface_state"};
  // How long rank 0's writer waits for every rank's part, and the other
  // ranks for rank 0's verdict, before the save fails on every rank. Must
  // cover the slowest rank's write. Default: 300 s.
  double commit_timeout_seconds = 300;
  // What load() does with rank-local state saved by another world size
  // (see LocalStateOnResize). Sharded and replicated tensors load on any
  // world size regardless. Default: kError.
  LocalStateOnResize local_state_on_resize = LocalStateOnResize::kError;

  // ---- Two tiers (checkpointer.local_tier; docs/TIERS.md) -----------------
  // Every rank writes its part into its own local_tier.dir; rank 0's verdict
  // carries the manifest, which every rank writes next to its part, so each
  // local tier lists every committed checkpoint. Promotion copies each
  // rank's part to save_dir and rank 0 commits a manifest there.
  //
  // Peer replication: rank r's part of every local checkpoint is also sent
  // to rank (r + replica_offset) % world, which keeps it in its local tier,
  // so losing one node (its processes and its disk) loses no local
  // checkpoint. Costs per save: one more part's bytes received and written
  // by every rank, sent over transfer_group, 2 x transfer_chunk_bytes of
  // memory per rank. 0: ranks_per_node (the same local rank on the next
  // node); a value that is a multiple of world (or world == 1): no
  // replication. Must be >= 0. Default: 0.
  int replica_offset = 0;
  // Ranks per node, to place replicas on another node when replica_offset
  // is 0. Must be >= 1. Default: 1.
  int ranks_per_node = 1;
  // The process group for replication and for the transfers of a restore
  // from the local tier; never the training group, so background transfers
  // cannot interleave with the trainer's collectives. Null: the
  // checkpointer creates a Gloo group (its own threads) over `store`, at
  // its first save or load (all ranks reach it together). Default: null.
  c10::intrusive_ptr<c10d::ProcessGroup> transfer_group;
  // The address the created Gloo group binds to ("" = this host's name, as
  // Gloo's default device). Default: "".
  std::string transfer_hostname;
  // Bytes per transfer message: the memory a transfer holds (one send and
  // one receive buffer). Must be >= 4096. Default: 16 MiB.
  size_t transfer_chunk_bytes = size_t{16} << 20;
};

class ACKPT_EXPORT DistributedCheckpointer : public AbstractCheckpointer {
 public:
  // Validates the arguments (kInvalidArgument naming the field). Not
  // collective, and the ranks need not construct at the same time, but every
  // rank must construct the same sequence of checkpointers: the k-th one
  // with a given file_prefix on each rank shares its Store keys with the
  // k-th on the others. Rank 0 takes the ownership lock of save_dir (kBusy
  // if another writer holds it).
  explicit DistributedCheckpointer(DistributedCheckpointerArguments args);
  // Drains pending saves within drain_timeout_seconds; never throws.
  ~DistributedCheckpointer() override;
  DistributedCheckpointer(const DistributedCheckpointer&) = delete;
  DistributedCheckpointer& operator=(const DistributedCheckpointer&) = delete;

  // Every rank calls it with the same index. Raises a pending background
  // error first, naming the index and, for a commit that timed out, the
  // ranks whose parts were missing. force = true returns once the manifest
  // is durable (on every rank; two tiers: in both tiers, or once the
  // promotion has failed).
  void save(const Checkpoint& checkpoint, int64_t index, bool force = false) override;
  // Rank 0 writes "{prefix}_model_{index}" from its (replicated) model state;
  // the other ranks do nothing.
  void save_model(const StateDict& model_state, int64_t index) override;
  // Collective: every rank must call it. The ranks agree on the newest
  // checkpoint whose manifest and parts all verify (rank 0 decides and
  // broadcasts over the process group); each rank reads its rank-local state
  // and every replicated tensor, wherever it was written. A checkpoint whose
  // part fails on any rank is skipped by all. Replicated and sharded state
  // loads on any world size; rank-local state saved by another world size
  // follows local_state_on_resize (by default kInvalidArgument naming both
  // sizes). Without a target, a sharded tensor loads as the box this rank
  // saved when the world size is the same (Checkpoint::shards says which),
  // else whole (offsets 0). Returns an empty Checkpoint when nothing is there.
  Checkpoint load() override;
  // The same, reading tensors straight into `targets` (LoadTargets,
  // checkpointer.h): local ones from this rank's part, replicated ones from
  // whichever part holds them. A target listed in targets.into.shards
  // receives its box of the global tensor of that name, assembled from the
  // overlapping saved boxes (or cut from a replicated tensor of that name);
  // only the saved slabs (about 1 MiB each) that overlap it are read. A
  // target not listed there, at the name of a sharded global tensor, gets
  // the whole tensor. Collective like load().
  Checkpoint load(const LoadTargets& targets) override;
  // Returns once every save so far is committed (manifest durable; two
  // tiers: and every promotion queued so far on this rank is done or has
  // failed); raises a pending background error (a failed promotion is not
  // one: counters, promotion_error()).
  void wait() override;
  // The snapshot fence (overlap_snapshot): returns once this rank's copy of
  // every save so far is complete. Not collective.
  void wait_snapshot() override;

  int rank() const;
  int world_size() const;
  // The manifest load() resumed from; "" if none.
  std::string last_loaded_manifest() const;
  // What the last load() read: the checkpoint, the world size that saved it,
  // whose rank-local state this rank took, and the shard bytes it read.
  DistributedLoadInfo last_load_info() const;
  // Committed distributed checkpoints in save_dir, newest first, with the
  // rules keeping each (EvaluateRetention); world_size and parts filled.
  // Reads manifests only.
  std::vector<CheckpointEntry> list_checkpoints() const;
  const DistributedCheckpointerArguments& args() const;
  CheckpointerCounters counters() const;
  // Two tiers: committed checkpoints in this rank's local_tier.dir, newest
  // first, with the local retention rules keeping each (parts: every part
  // its manifest lists; this rank's local tier holds its own and the
  // replica of rank (rank - replica offset) mod world).
  std::vector<CheckpointEntry> list_local_checkpoints() const;
  // Two tiers: why the last failed promotion failed; "" if none has.
  std::string promotion_error() const;
  // The local tier directory of this rank ("{rank}" substituted); "" with one tier.
  std::string local_dir() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ackpt
