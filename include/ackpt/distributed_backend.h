// Data-parallel training over a c10d process group (pymarlin's DDP trainer
// backend): plugs into ackpt::Trainer unchanged, next to SingleProcess.
#pragma once

#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>

#include "ackpt/export.h"
#include "ackpt/trainer.h"

namespace ackpt {

// Runs SingleProcess's loop on this rank's shard of every epoch's batches
// (batch b belongs to rank b % world_size; every rank runs the same number,
// floor(n / world_size), so their collectives line up) and averages the
// gradients over the process group (one allreduce of all gradients, in a
// flat buffer) before clipping and stepping, so the replicated parameters
// and optimizer state stay identical on every rank. Its state adds the world
// size it ran with (update_state refuses another). Per-rank RNG and data
// position are rank-local: with DistributedCheckpointer mark only
// "module_interface_state" and "trainer_state/optimizers" replicated. A stop
// (Trainer::request_stop) must be requested on every rank for the same step.
class ACKPT_EXPORT DistributedBackend : public SingleProcess {
 public:
  explicit DistributedBackend(c10::intrusive_ptr<c10d::ProcessGroup> process_group);
  int rank() const { return rank_; }
  int world_size() const { return world_; }
  // {global_step_completed, batches_completed, world_size}
  StateDict get_state() override;
  void update_state(const StateDict& state) override;

 protected:
  int64_t shard_batches(int64_t n) const override { return n / world_; }
  int64_t shard_batch(int64_t i) const override { return i * world_ + rank_; }
  void reduce_gradients() override;

 private:
  c10::intrusive_ptr<c10d::ProcessGroup> pg_;
  int rank_ = 0;
  int world_ = 1;
};

}  // namespace ackpt
