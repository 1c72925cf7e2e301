#include "ackpt/distributed_backend.h"

#include <torch/torch.h>

#include "ackpt/error.h"

namespace ackpt {

DistributedBackend::DistributedBackend(c10::intrusive_ptr<c10d::ProcessGroup> process_group)
    : pg_(std::move(process_group)) {
  if (!pg_) throw Error::InvalidArgument("DistributedBackend needs a process group, got null");
  rank_ = pg_->getRank();
  world_ = pg_->getSize();
}

void DistributedBackend::reduce_gradients() {
  // Every parameter takes part, with zeros where it has no gradient, so the
  // flat buffer has the same layout on every rank.
  std::vector<torch::Tensor> params;
  for (const auto& p : args().module->module().parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }
  if (params.empty()) return;
  std::vector<torch::Tensor> grads;
  grads.reserve(params.size());
  for (const auto& p : params) {
    grads.push_back(p.grad().defined() ? p.grad().reshape({-1})
                                       : torch::zeros({p.numel()}, p.options()));
  }
  std::vector<torch::Tensor> flat{torch::cat(grads)};
  pg_->allreduce(flat)->wait();
  flat[0].div_(world_);
  int64_t offset = 0;
  for (auto& p : params) {
    torch::Tensor g = flat[0].narrow(0, offset, p.numel()).view_as(p);
    offset += p.numel();
    if (p.grad().defined()) {
      p.mutable_grad().copy_(g);
    } else {
      p.mutable_grad() = g.clone();
    }
  }
}

StateDict DistributedBackend::get_state() {
  StateDict s = SingleProcess::get_state();
  s.set("world_size", static_cast<int64_t>(world_));
  return s;
}

void DistributedBackend::update_state(const StateDict& state) {
  if (state.empty()) return;
  if (const Value* w = state.find("world_size")) {
    if (w->to_int() != world_) {
      throw Error::InvalidArgument("the checkpoint's trainer backend ran on " +
                                   std::to_string(w->to_int()) + " ranks, this one on " +
                                   std::to_string(world_));
    }
  }
  SingleProcess::update_state(state);
}

}  // namespace ackpt
