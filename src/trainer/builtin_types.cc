// LibTorch's optimizers and schedulers, described to ackpt through the same
// public registration users call for their own types.
#include <c10/util/C++17.h>
#include <torch/optim.h>

#include <memory>
#include <string>

#include "ackpt/optimizer_registry.h"
#include "trainer/internal.h"

namespace ackpt {

namespace {

namespace optim = torch::optim;

// Adam and AdamW have the same fields but distinct option and state types.
template <typename Options>
Fields<Options> AdamOptionFields() {
  return {ACKPT_ARG(lr), ACKPT_ARG(betas), ACKPT_ARG(eps), ACKPT_ARG(weight_decay),
          ACKPT_ARG(amsgrad)};
}

template <typename State>
Fields<State> AdamStateFields() {
  return {ACKPT_ARG(step), ACKPT_ARG(exp_avg), ACKPT_ARG(exp_avg_sq),
          ACKPT_ARG(max_exp_avg_sq).optional()};  // amsgrad only
}

// The key LibTorch's optimizers use in state(): the parameter's TensorImpl address.
std::string Key(const at::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

at::Tensor Zeros(const at::Tensor& p) { return torch::zeros_like(p, at::MemoryFormat::Preserve); }

// Calls make(options, param) for every parameter requiring grad that has no
// state yet, and installs what it returns (null: no state), as the
// optimizer's first step would.
template <typename Options, typename State, typename Make>
void CreateMissing(optim::Optimizer& o, Make make) {
  for (auto& group : o.param_groups()) {
    const auto& options = static_cast<const Options&>(group.options());
    for (const auto& p : group.params()) {
      if (!p.requires_grad() || o.state().count(Key(p)) != 0) continue;
      std::unique_ptr<State> s = make(options, p);
      if (s) o.state()[Key(p)] = std::move(s);
    }
  }
}

// Adam's and AdamW's first step.
template <typename Optimizer, typename Options, typename State>
void CreateAdamState(Optimizer& o) {
  CreateMissing<Options, State>(o, [](const Options& options, const at::Tensor& p) {
    auto s = std::make_unique<State>();
    s->step(0);
    s->exp_avg(Zeros(p));
    s->exp_avg_sq(Zeros(p));
    if (options.amsgrad()) s->max_exp_avg_sq(Zeros(p));
    return s;
  });
}

void CreateSgdState(optim::SGD& o) {
  using S = optim::SGDParamState;
  CreateMissing<optim::SGDOptions, S>(o, [](const optim::SGDOptions& options, const at::Tensor& p) {
    if (options.momentum() == 0) return std::unique_ptr<S>();
    auto s = std::make_unique<S>();
    s->momentum_buffer(Zeros(p));
    return s;
  });
}

void CreateRmspropState(optim::RMSprop& o) {
  using S = optim::RMSpropParamState;
  CreateMissing<optim::RMSpropOptions, S>(
      o, [](const optim::RMSpropOptions& options, const at::Tensor& p) {
        auto s = std::make_unique<S>();
        s->step(0);
        s->square_avg(Zeros(p));
        if (options.momentum() > 0) s->momentum_buffer(Zeros(p));
        if (options.centered()) s->grad_avg(Zeros(p));
        return s;
      });
}

// LBFGS keeps one state, under its first parameter, with flat buffers over
// all parameters' elements. Its history (old_dirs, old_stps, ro) grows with
// the run, so its length is unknown here: it loads into fresh tensors.
void CreateLbfgsState(optim::LBFGS& o) {
  if (o.param_groups().empty() || o.param_groups()[0].params().empty()) return;
  const auto& params = o.param_groups()[0].params();
  const at::Tensor& first = params[0];
  if (o.state().count(Key(first)) != 0) return;
  int64_t n = 0;
  for (const auto& p : params) n += p.numel();
  const auto opts = first.options();
  auto s = std::make_unique<optim::LBFGSParamState>();
  s->func_evals(0);
  s->n_iter(0);
  s->t(0);
  s->prev_loss(0);
  s->d(torch::zeros({n}, opts));
  s->prev_flat_grad(torch::zeros({n}, opts));
  s->H_diag(torch::zeros({}, opts));
  o.state()[Key(first)] = std::move(s);
}

}  // namespace

void RegisterBuiltinTypes() {
  RegisterOptimizer<optim::Adam, optim::AdamOptions, optim::AdamParamState>(
      "Adam", AdamOptionFields<optim::AdamOptions>(), AdamStateFields<optim::AdamParamState>(),
      CreateAdamState<optim::Adam, optim::AdamOptions, optim::AdamParamState>);
  RegisterOptimizer<optim::AdamW, optim::AdamWOptions, optim::AdamWParamState>(
      "AdamW", AdamOptionFields<optim::AdamWOptions>(), AdamStateFields<optim::AdamWParamState>(),
      CreateAdamState<optim::AdamW, optim::AdamWOptions, optim::AdamWParamState>);
  RegisterOptimizer<optim::SGD, optim::SGDOptions, optim::SGDParamState>(
      "SGD",
      {ACKPT_ARG(lr), ACKPT_ARG(momentum), ACKPT_ARG(dampening), ACKPT_ARG(weight_decay),
       ACKPT_ARG(nesterov)},
      {ACKPT_ARG(momentum_buffer).optional()},  // momentum only
      CreateSgdState);
  RegisterOptimizer<optim::RMSprop, optim::RMSpropOptions, optim::RMSpropParamState>(
      "RMSprop",
      {ACKPT_ARG(lr), ACKPT_ARG(alpha), ACKPT_ARG(eps), ACKPT_ARG(weight_decay),
       ACKPT_ARG(momentum), ACKPT_ARG(centered)},
      {ACKPT_ARG(step), ACKPT_ARG(square_avg),
       ACKPT_ARG(momentum_buffer).optional(),  // momentum only
       ACKPT_ARG(grad_avg).optional()},        // centered only
      CreateRmspropState);
  RegisterOptimizer<optim::Adagrad, optim::AdagradOptions, optim::AdagradParamState>(
      "Adagrad",
      {ACKPT_ARG(lr), ACKPT_ARG(lr_decay), ACKPT_ARG(weight_decay),
       ACKPT_ARG(initial_accumulator_value), ACKPT_ARG(eps)},
      {ACKPT_ARG(step), ACKPT_ARG(sum)});  // built with its state: nothing to create
  // LBFGS keeps one state for all its parameters, under the first one: flat
  // buffers over every parameter's elements, left undefined when the first
  // step already met the gradient tolerance. Its `al` is scratch space that
  // each step overwrites before reading, so it is not checkpointed.
  RegisterOptimizer<optim::LBFGS, optim::LBFGSOptions, optim::LBFGSParamState>(
      "LBFGS",
      {ACKPT_ARG(lr), ACKPT_ARG(max_iter), ACKPT_ARG(max_eval), ACKPT_ARG(tolerance_grad),
       ACKPT_ARG(tolerance_change), ACKPT_ARG(history_size), ACKPT_ARG(line_search_fn)},
      {ACKPT_ARG(func_evals), ACKPT_ARG(n_iter), ACKPT_ARG(t), ACKPT_ARG(prev_loss),
       ACKPT_ARG(d).optional().any_shape(), ACKPT_ARG(H_diag).optional().any_shape(),
       ACKPT_ARG(prev_flat_grad).optional().any_shape(), ACKPT_ARG(old_dirs).any_shape(),
       ACKPT_ARG(old_stps).any_shape(), ACKPT_ARG(ro).any_shape()},
      CreateLbfgsState);

  // step_size and gamma are constructor arguments; the step count is all there is.
  RegisterScheduler<optim::StepLR>("StepLR");
}

}  // namespace ackpt
