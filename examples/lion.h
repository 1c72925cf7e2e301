// Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"),
// written as a torch::optim::Optimizer the way LibTorch's own are:
// hyper-parameters in an options class, per-parameter state in a param state
// class, both declared with TORCH_ARG. custom_optimizer.cc registers it with
// ackpt; README.md's optimizer-registry snippet is compiled against it.
#pragma once

#include <torch/torch.h>

#include <tuple>
#include <utility>
#include <vector>

struct LionOptions : torch::optim::OptimizerCloneableOptions<LionOptions> {
  explicit LionOptions(double lr = 1e-4) : lr_(lr) {}
  TORCH_ARG(double, lr);
  using Betas = std::tuple<double, double>;
  TORCH_ARG(Betas, betas) = std::make_tuple(0.9, 0.99);
  TORCH_ARG(double, weight_decay) = 0.0;

 public:
  // LR schedulers read and write the learning rate through these.
  double get_lr() const override { return lr(); }
  void set_lr(const double lr) override { this->lr(lr); }
};

struct LionParamState : torch::optim::OptimizerCloneableParamState<LionParamState> {
  TORCH_ARG(int64_t, step) = 0;
  TORCH_ARG(torch::Tensor, exp_avg);
};

class Lion : public torch::optim::Optimizer {
 public:
  Lion(std::vector<torch::Tensor> params, LionOptions options)
      : Optimizer({torch::optim::OptimizerParamGroup(std::move(params))},
                  std::make_unique<LionOptions>(options)) {}

  torch::Tensor step(LossClosure closure = nullptr) override {
    torch::NoGradGuard no_grad;
    torch::Tensor loss;
    if (closure) {
      torch::AutoGradMode enable_grad(true);
      loss = closure();
    }
    for (auto& group : param_groups_) {
      const auto& o = static_cast<const LionOptions&>(group.options());
      const auto [beta1, beta2] = o.betas();
      for (auto& p : group.params()) {
        if (!p.grad().defined()) continue;
        // LibTorch keys optimizer state by the parameter's TensorImpl address.
        auto& slot = state_[c10::guts::to_string(p.unsafeGetTensorImpl())];
        if (!slot) {
          auto fresh = std::make_unique<LionParamState>();
          fresh->exp_avg(torch::zeros_like(p));
          slot = std::move(fresh);
        }
        auto& s = static_cast<LionParamState&>(*slot);
        s.step(s.step() + 1);
        const torch::Tensor& g = p.grad();
        torch::Tensor update = (s.exp_avg() * beta1 + g * (1 - beta1)).sign_();
        p.mul_(1 - o.lr() * o.weight_decay()).add_(update, -o.lr());
        s.exp_avg().mul_(beta2).add_(g, 1 - beta2);
      }
    }
    return loss;
  }
};
