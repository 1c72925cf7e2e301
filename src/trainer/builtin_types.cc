// LibTorch's optimizers and schedulers, described to ackpt through the same
// public registration users call for their own types.
#include <torch/optim.h>

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

}  // namespace

void RegisterBuiltinTypes() {
  RegisterOptimizer<optim::Adam, optim::AdamOptions, optim::AdamParamState>(
      "Adam", AdamOptionFields<optim::AdamOptions>(), AdamStateFields<optim::AdamParamState>());
  RegisterOptimizer<optim::AdamW, optim::AdamWOptions, optim::AdamWParamState>(
      "AdamW", AdamOptionFields<optim::AdamWOptions>(), AdamStateFields<optim::AdamWParamState>());
  RegisterOptimizer<optim::SGD, optim::SGDOptions, optim::SGDParamState>(
      "SGD",
      {ACKPT_ARG(lr), ACKPT_ARG(momentum), ACKPT_ARG(dampening), ACKPT_ARG(weight_decay),
       ACKPT_ARG(nesterov)},
      {ACKPT_ARG(momentum_buffer).optional()});  // momentum only
  RegisterOptimizer<optim::RMSprop, optim::RMSpropOptions, optim::RMSpropParamState>(
      "RMSprop",
      {ACKPT_ARG(lr), ACKPT_ARG(alpha), ACKPT_ARG(eps), ACKPT_ARG(weight_decay),
       ACKPT_ARG(momentum), ACKPT_ARG(centered)},
      {ACKPT_ARG(step), ACKPT_ARG(square_avg),
       ACKPT_ARG(momentum_buffer).optional(),  // momentum only
       ACKPT_ARG(grad_avg).optional()});       // centered only
  RegisterOptimizer<optim::Adagrad, optim::AdagradOptions, optim::AdagradParamState>(
      "Adagrad",
      {ACKPT_ARG(lr), ACKPT_ARG(lr_decay), ACKPT_ARG(weight_decay),
       ACKPT_ARG(initial_accumulator_value), ACKPT_ARG(eps)},
      {ACKPT_ARG(step), ACKPT_ARG(sum)});
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
       ACKPT_ARG(old_stps).any_shape(), ACKPT_ARG(ro).any_shape()});

  // step_size and gamma are constructor arguments; the step count is all there is.
  RegisterScheduler<optim::StepLR>("StepLR");
}

}  // namespace ackpt
