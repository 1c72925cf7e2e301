// Capturing the LibTorch state that has no StateDict of its own: module
// parameters and buffers, optimizer state, LR schedulers and the random
// number generators. Everything is captured into an ackpt::StateDict (so it
// can go into a Checkpoint) and restored into freshly built objects.
//
// Optimizer state is keyed by parameter NAME (as in module->named_parameters()),
// never by tensor address: LibTorch keys an optimizer's state by the address of
// each parameter's TensorImpl, which is meaningless in another process.
//
// The captured StateDicts share tensor storage with the live objects (a
// checkpointer's save() snapshots the bytes before it returns); restoring
// copies by default, so restored objects do not share storage with the
// StateDict (RestoreOptimizer's RestoreMode::kAdopt takes the tensors over
// instead, for a state just loaded that nothing else holds).
//
// Optimizer and scheduler types are described to ackpt in a registry
// (optimizer_registry.h): LibTorch's are built in, register your own there.
//
// This header pulls in LibTorch's nn/optim headers, not <torch/torch.h>.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/schedulers/lr_scheduler.h>
#include <torch/ordered_dict.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ackpt/export.h"
#include "ackpt/optimizer_registry.h"
#include "ackpt/state_dict.h"

namespace ackpt {

using NamedTensors = torch::OrderedDict<std::string, torch::Tensor>;

// ---- Module parameters and buffers ------------------------------------------

// The module's parameters, then its buffers, by their dotted names (as in
// named_parameters() / named_buffers()), detached; they share storage with
// the module.
ACKPT_EXPORT StateDict ModuleState(const torch::nn::Module& module);

// What LoadModuleState found.
struct ACKPT_EXPORT ModuleLoadReport {
  std::vector<std::string> missing;     // in the module, not in the state
  std::vector<std::string> unexpected;  // in the state, not in the module
  std::vector<std::string>
      mismatched;                   // "name: checkpoint [2, 3] vs module [3, 3]" (or not a tensor)
  std::vector<std::string> loaded;  // copied into the module
  bool clean() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  // "missing: a, b; unexpected: c; shape mismatch: d: checkpoint [2] vs module [3]"; "" when clean.
  std::string ToString() const;
};

// Copies `state` (from ModuleState, possibly loaded from a file) into the
// module's parameters and buffers in place, so optimizers holding them stay
// valid; dtype and device are converted as Tensor::copy_ does.
// strict = true: any missing, unexpected or shape-mismatched key throws
// ackpt::Error (kInvalidArgument) listing all of them, and nothing is modified.
// strict = false (lenient): what matches is loaded, the rest is skipped and
// reported.
ACKPT_EXPORT ModuleLoadReport LoadModuleState(torch::nn::Module& module, const StateDict& state,
                                              bool strict = true);

// ---- Optimizers ---------------------------------------------------------------

// The name the optimizer's type is registered under ("Adam", "AdamW", "SGD",
// "RMSprop", "Adagrad", "LBFGS" or one of yours). An unregistered type throws
// ackpt::Error (kUnsupported) naming it and showing how to register it.
ACKPT_EXPORT std::string OptimizerTypeName(const torch::optim::Optimizer& optimizer);

// Captures the optimizer's param groups (hyper-parameters and the names of
// their parameters) and per-parameter state, as its registered description
// lists them (optimizer_registry.h):
//   type:          the registered name
//   param_groups:  [ {params: [names...], lr, betas: [b1, b2], eps, ...}, ... ]
//   state:         { name: {step, exp_avg, exp_avg_sq, [max_exp_avg_sq]} }   Adam, AdamW
//                  { name: {[momentum_buffer]} }                             SGD
//                  { name: {step, square_avg, [momentum_buffer], [grad_avg]} }  RMSprop
//                  { name: {step, sum} }                                     Adagrad
//                  { first name: {func_evals, n_iter, t, prev_loss, [d], [H_diag],
//                                 [prev_flat_grad], old_dirs: [...], old_stps: [...],
//                                 ro: [...]} }                              LBFGS
// `named_parameters` names the parameters (module.named_parameters()); a
// parameter of the optimizer that is not among them throws kInvalidArgument.
// An unregistered optimizer type throws kUnsupported (see OptimizerTypeName),
// so a Trainer or a save fails before a checkpoint that could not be resumed
// is written.
ACKPT_EXPORT StateDict CaptureOptimizer(const torch::optim::Optimizer& optimizer,
                                        const NamedTensors& named_parameters);
ACKPT_EXPORT StateDict CaptureOptimizer(const torch::optim::Optimizer& optimizer,
                                        const torch::nn::Module& module);

// How RestoreOptimizer treats the state's tensors.
enum class RestoreMode {
  // Copies them onto each parameter's device; the optimizer shares no
  // storage with the state afterwards.
  kCopy,
  // Takes them over as the optimizer's own where they already are on the
  // parameter's device (no copy, no allocation): the optimizer then writes
  // into them. For a state that nothing else uses, e.g. one just loaded from
  // a checkpoint; never for one captured from a live optimizer.
  kAdopt,
};

// Restores CaptureOptimizer's output into `optimizer`, typically freshly built
// over a freshly built module: hyper-parameters of every param group and the
// per-parameter state, matched by name. The state tensors are copied onto
// each parameter's device (or taken over: `mode`). In either mode a saved
// tensor that already is one of the optimizer's own state tensors (a load
// read it in place: ReadInto, load(targets) with CaptureOptimizer(optimizer)
// as targets) is kept as it is, not copied. The optimizer's state of the
// listed param groups is replaced: parameters the checkpoint holds no state
// for end up with none. Everything is checked before anything changes;
// ackpt::Error (kInvalidArgument) names the problem: an optimizer type
// mismatch (naming both types), a different number of param groups, a
// parameter name that is missing from or unknown to a group, a state tensor
// whose shape differs from its parameter's, a missing, mistyped or unknown
// field.
ACKPT_EXPORT void RestoreOptimizer(torch::optim::Optimizer& optimizer,
                                   const NamedTensors& named_parameters, const StateDict& state,
                                   RestoreMode mode = RestoreMode::kCopy);
ACKPT_EXPORT void RestoreOptimizer(torch::optim::Optimizer& optimizer,
                                   const torch::nn::Module& module, const StateDict& state,
                                   RestoreMode mode = RestoreMode::kCopy);

// Creates the per-parameter state LibTorch creates lazily at the first
// step, as the optimizer's registered description knows it (zeros of each
// parameter's dtype, on its device; for parameters requiring grad that have
// none yet): Adam and AdamW exp_avg, exp_avg_sq [, max_exp_avg_sq]; SGD
// momentum_buffer (momentum != 0); RMSprop square_avg [, momentum_buffer,
// grad_avg]; LBFGS d, prev_flat_grad and H_diag (its history depends on the
// run, so it is not created); Adagrad creates its state when it is built.
// A resume calls it before it loads, so that CaptureOptimizer(optimizer) can
// be the load's targets and the checkpoint's tensors land in the tensors the
// optimizer keeps; then RestoreOptimizer replaces the state by the
// checkpoint's (the Trainer does this). Do not step an optimizer with state
// created this way and not restored: SGD's first step, for one, differs
// when a momentum buffer exists. Types registered without create_state are
// left alone. Throws kUnsupported for an unregistered type.
ACKPT_EXPORT void CreateOptimizerState(torch::optim::Optimizer& optimizer);

// ---- LR schedulers --------------------------------------------------------------

// A learning-rate scheduler whose state can be checkpointed. Implement it for
// schedulers that do not derive from torch::optim::LRScheduler;
// TorchScheduler adapts those that do (StepLR, registered ones of yours).
class ACKPT_EXPORT Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Advances the schedule by one optimizer step.
  virtual void step() = 0;
  virtual StateDict get_state() const = 0;
  virtual void update_state(const StateDict& state) = 0;
};

// A torch::optim::LRScheduler's state, as its registered description lists
// it (optimizer_registry.h): the number of step() calls, which LibTorch keeps
// in a protected member, and any fields registered with the type. The
// learning rates themselves live in the optimizer's param groups and are
// restored with the optimizer.
//   {type: "StepLR", step_count: 7}
// An unregistered scheduler type throws ackpt::Error (kUnsupported) naming it
// and showing how to register it.
ACKPT_EXPORT StateDict CaptureScheduler(const torch::optim::LRScheduler& scheduler);
// Throws kInvalidArgument on a type mismatch (naming both types) or a
// malformed state; checks everything before it changes the scheduler.
ACKPT_EXPORT void RestoreScheduler(torch::optim::LRScheduler& scheduler, const StateDict& state);
// The name the scheduler's type is registered under ("StepLR", ...); throws
// kUnsupported like CaptureScheduler for an unregistered type.
ACKPT_EXPORT std::string SchedulerTypeName(const torch::optim::LRScheduler& scheduler);

// Adapts a LibTorch scheduler to ackpt::Scheduler.
class ACKPT_EXPORT TorchScheduler : public Scheduler {
 public:
  explicit TorchScheduler(std::shared_ptr<torch::optim::LRScheduler> scheduler);
  void step() override;
  StateDict get_state() const override;
  void update_state(const StateDict& state) override;
  torch::optim::LRScheduler& scheduler() const { return *scheduler_; }

 private:
  std::shared_ptr<torch::optim::LRScheduler> scheduler_;
};

// Builds a LibTorch scheduler and wraps it:
//   auto s = ackpt::MakeScheduler<torch::optim::StepLR>(*optimizer, 10, 0.5);
// The optimizer must outlive the scheduler.
template <typename S, typename... Args>
std::shared_ptr<Scheduler> MakeScheduler(Args&&... args) {
  return std::make_shared<TorchScheduler>(std::make_shared<S>(std::forward<Args>(args)...));
}

// ---- Random number generators -------------------------------------------------

// {cpu: uint8 tensor [, cuda: [one uint8 tensor per device]]}: the default CPU
// generator's state and, where CUDA is available, every device's.
ACKPT_EXPORT StateDict CaptureRngState();
// Restores CaptureRngState's output. CUDA states are restored for the devices
// present in both; they are ignored where CUDA is not available. A malformed
// state throws kInvalidArgument.
ACKPT_EXPORT void RestoreRngState(const StateDict& state);

}  // namespace ackpt
