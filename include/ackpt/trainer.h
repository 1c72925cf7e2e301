// pymarlin's trainer lifecycle for LibTorch, checkpointed by ackpt.
//
//   ModuleInterface  wraps a torch::nn::Module: the training recipe (steps,
//                    optimizers, schedulers, callbacks) and the module state.
//   TrainerBackend   runs the epochs (SingleProcess: one process, one device).
//   Trainer          ties them to a checkpointer, as pymarlin's Trainer does:
//
//     Trainer(module, args)       optimizers, schedulers = module.get_optimizers_schedulers()
//                                 checkpoint = checkpointer.load(targets)
//                                 module.update_state(checkpoint.module_interface_state)
//     restore() (by train())      trainer.update_state(checkpoint.trainer_state)
//                                 backend.init();
//                                 backend.update_state(checkpoint.trainer_backend_state)
//     train()                     for epoch in last_epoch + 1 .. epochs - 1:
//                                   train epoch, validate, save(checkpoint, epoch)
//                                 save(checkpoint, last_epoch, force = true)
//                                 save_model(module state, last_epoch)
//
// The Checkpoint passed to save() holds module.get_state() (parameters and
// buffers), trainer.get_state() (last_epoch, optimizers, schedulers, RNG) and
// backend.get_state() (global_step_completed, batches_completed). Override
// get_state() / update_state() on any of the three to change what is saved.
// The trainer's own state is applied by restore(), which train() calls first,
// not by the constructor: C++ calls no subclass override from a base class
// constructor, and this way a Trainer subclass's update_state() takes effect.
//
// Unlike pymarlin, the optimizers are built before the load, so that the
// load reads every tensor straight into the tensor that keeps it (`targets`:
// the module's get_state() and the optimizers' state, created beforehand
// where LibTorch creates it at the first step, CreateOptimizerState); the
// optimizers take the loaded tensors over in restore(). The state is thus
// held once: no fresh copy is read and copied again, and the Trainer keeps
// no second reference to it after restore() (checkpointed_states()'s
// optimizer state is emptied then).
//
// To drive the checkpointer from your own training loop instead, use
// torch_state.h (ModuleState, CaptureOptimizer, CaptureRngState and their
// Restore counterparts) with a DefaultCheckpointer directly (see README.md).
//
// This header includes LibTorch's nn/optim headers; ackpt/ackpt.h does not
// include it, so include "ackpt/trainer.h" where you use it.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ackpt/checkpointer.h"
#include "ackpt/export.h"
#include "ackpt/state_dict.h"
#include "ackpt/torch_state.h"

namespace spdlog {
class logger;
}

namespace ackpt {

// What ModuleInterface::get_optimizers_schedulers returns. Schedulers are
// stepped once per optimizer step, after the optimizers.
struct OptimizersSchedulers {
  std::vector<std::shared_ptr<torch::optim::Optimizer>> optimizers;
  std::vector<std::shared_ptr<Scheduler>> schedulers;
};

// The model and its training recipe (pymarlin's ModuleInterface). Subclass it:
// implement num_train_batches(), train_step() and get_optimizers_schedulers();
// override the validation methods and callbacks as needed.
//
// Batches are addressed by (epoch, batch index): the module loads or draws
// them itself. Draw random batches from LibTorch's generator (torch::randint,
// ...): the Trainer checkpoints its state, so a resumed run draws the same
// batches as an uninterrupted one.
class ACKPT_EXPORT ModuleInterface {
 public:
  explicit ModuleInterface(std::shared_ptr<torch::nn::Module> module);
  template <typename M>
  explicit ModuleInterface(torch::nn::ModuleHolder<M> module) : ModuleInterface(module.ptr()) {}
  virtual ~ModuleInterface();
  ModuleInterface(const ModuleInterface&) = delete;
  ModuleInterface& operator=(const ModuleInterface&) = delete;

  torch::nn::Module& module() const { return *module_; }
  const std::shared_ptr<torch::nn::Module>& module_ptr() const { return module_; }

  // ---- the recipe ----
  // Number of batches in training epoch `epoch`. The Trainer also calls
  // num_train_batches(0) once when it is built, to estimate the steps per epoch.
  virtual int64_t num_train_batches(int64_t epoch) = 0;
  // Forward pass on batch `batch` of `epoch`; returns the loss (one element,
  // requiring grad). The backend runs backward and the optimizer step.
  // global_step: the optimizer step this batch contributes to (1-based).
  virtual torch::Tensor train_step(int64_t global_step, int64_t epoch, int64_t batch) = 0;
  // Number of validation batches after epoch `epoch`. Default: 0 (no validation).
  virtual int64_t num_val_batches(int64_t epoch);
  // Loss of validation batch `batch` (run under NoGradGuard, module in eval()
  // mode). Default: throws (override it when num_val_batches() > 0).
  virtual torch::Tensor val_step(int64_t global_step, int64_t epoch, int64_t batch);
  // The optimizers and schedulers to train with, built over module()'s
  // parameters (pymarlin's get_optimizers_schedulers). Called once when the
  // Trainer is built, and again with the remaining epochs when
  // TrainerArguments::reset_optimizers_schedulers drops the saved ones.
  virtual OptimizersSchedulers get_optimizers_schedulers(int64_t estimated_global_steps_per_epoch,
                                                         int64_t epochs) = 0;

  // ---- callbacks (default: nothing) ----
  virtual void on_begin_train_epoch(int64_t global_step, int64_t epoch);
  virtual void on_end_backward(int64_t global_step, const torch::Tensor& loss);
  // After every optimizer step; loss: mean over the step's batches.
  virtual void on_end_train_step(int64_t global_step, double loss);
  // mean_loss: over the epoch's batches (NaN if there were none).
  virtual void on_end_train_epoch(int64_t global_step, int64_t epoch, double mean_loss);
  virtual void on_end_val_epoch(int64_t global_step, int64_t epoch, double mean_loss);
  virtual void on_end_train(int64_t global_step);

  // ---- state ----
  // Parameters and buffers by name (ModuleState()).
  virtual StateDict get_state();
  // Loads them in place (LoadModuleState()): strict by default, so a
  // missing, unexpected or shape-mismatched key throws ackpt::Error naming
  // every such key. Lenient (set_strict(false)): what matches is loaded, the
  // rest is skipped, logged and reported by last_load_report().
  virtual void update_state(const StateDict& state);
  void set_strict(bool strict) { strict_ = strict; }
  bool strict() const { return strict_; }
  const ModuleLoadReport& last_load_report() const { return last_report_; }

 private:
  std::shared_ptr<torch::nn::Module> module_;
  bool strict_ = true;
  ModuleLoadReport last_report_;
};

class TrainerBackend;

// What a backend needs to run epochs (pymarlin's TrainerBackendArguments).
struct TrainerBackendArguments {
  ModuleInterface* module = nullptr;
  std::vector<std::shared_ptr<torch::optim::Optimizer>> optimizers;
  std::vector<std::shared_ptr<Scheduler>> schedulers;
  int64_t max_train_steps_per_epoch = 0;  // 0 = no limit
  int64_t max_val_steps_per_epoch = 0;    // 0 = no limit
  int64_t gradient_accumulation = 1;
  bool clip_grads = true;
  double max_grad_norm = 1.0;
  // Set by Trainer::request_stop(); backends stop after the current batch.
  const std::atomic<bool>* stop_requested = nullptr;
  // Set by the Trainer: backends call its wait_snapshot() (the snapshot
  // fence) right before the optimizer step, the first in-place write to the
  // saved tensors. May be null.
  AbstractCheckpointer* checkpointer = nullptr;
};

// How epochs are run (pymarlin's TrainerBackend).
class ACKPT_EXPORT TrainerBackend {
 public:
  virtual ~TrainerBackend() = default;
  // Called by Trainer::restore() once the optimizers are final, before update_state().
  virtual void init(const TrainerBackendArguments& args) = 0;
  // Runs training epoch `epoch`; returns the mean loss over its batches (NaN
  // if none). Returns early, mid-epoch, when a stop is requested.
  virtual double train_epoch(int64_t epoch) = 0;
  // Runs validation after `epoch`; returns the mean loss (NaN if no batches).
  virtual double validate_epoch(int64_t epoch) = 0;
  virtual int64_t get_global_steps_completed() const = 0;
  virtual int64_t get_batches_completed() const = 0;
  virtual StateDict get_state() = 0;
  // An empty state (nothing loaded) leaves the backend as it is.
  virtual void update_state(const StateDict& state) = 0;
};

// One process: for each batch, train_step -> backward (scaled by
// 1 / gradient_accumulation); every gradient_accumulation batches (and at the
// end of an epoch) clip gradients, step every optimizer, reset the gradients
// (set to none), step every scheduler. An optimizer that needs a closure
// (LBFGS) steps with one that runs the step's batches again (train_step,
// backward, gradient reduction and clipping), as often as it asks. State: global_step_completed
// (optimizer steps) and batches_completed.
class ACKPT_EXPORT SingleProcess : public TrainerBackend {
 public:
  void init(const TrainerBackendArguments& args) override;
  double train_epoch(int64_t epoch) override;
  double validate_epoch(int64_t epoch) override;
  int64_t get_global_steps_completed() const override { return global_step_completed_; }
  int64_t get_batches_completed() const override { return batches_completed_; }
  // {global_step_completed, batches_completed}
  StateDict get_state() override;
  void update_state(const StateDict& state) override;

 protected:
  void process_global_step(double mean_loss);
  const TrainerBackendArguments& args() const { return args_; }
  bool stop_requested() const;
  // Hooks for data-parallel backends (DistributedBackend). The batches of an
  // epoch of n this process runs: shard_batches(n) of them, the i-th being
  // batch shard_batch(i). Default: all n, in order.
  virtual int64_t shard_batches(int64_t n) const { return n; }
  virtual int64_t shard_batch(int64_t i) const { return i; }
  // Called before gradients are clipped and the optimizers step. Default: nothing.
  virtual void reduce_gradients() {}

  int64_t global_step_completed_ = 0;
  int64_t batches_completed_ = 0;

 private:
  TrainerBackendArguments args_;
  // The batches of the optimizer step in progress (an LBFGS closure runs
  // them again).
  int64_t step_epoch_ = 0;
  std::vector<int64_t> step_batches_;
};

// pymarlin's TrainerArguments, minus what LibTorch C++ does not need.
struct TrainerArguments {
  // Epochs to train in total (a resumed run trains the remaining ones). Default: 1.
  int64_t epochs = 1;
  // Cap on optimizer steps per epoch; 0 = run every batch. Default: 0.
  int64_t max_train_steps_per_epoch = 0;
  // Cap on validation batches per epoch; 0 = every batch. Default: 0.
  int64_t max_val_steps_per_epoch = 0;
  // Batches per optimizer step. Must be >= 1. Default: 1.
  int64_t gradient_accumulation = 1;
  // Clip the gradients' global norm to max_grad_norm before each step. Default: true.
  bool clip_grads = true;
  double max_grad_norm = 1.0;
  // Do not restore optimizer and scheduler state from the checkpoint; build
  // fresh ones for the remaining epochs instead. Default: false.
  bool reset_optimizers_schedulers = false;
  // Checkpoint and restore the CPU (and CUDA) random generators. Default: true.
  bool checkpoint_rng = true;
  // Used to build a DefaultCheckpointer when the Trainer is given none.
  DefaultCheckpointerArguments checkpointer_args;
  // spdlog level of the "ackpt.trainer" logger (or of `logger`): TRACE,
  // DEBUG, INFO, WARN, ERROR, CRITICAL or OFF, in any case. Default: "INFO".
  std::string log_level = "INFO";
  // Logger to use instead of "ackpt.trainer". Default: null.
  std::shared_ptr<spdlog::logger> logger;
};

// pymarlin's Trainer. Not thread-safe, except request_stop().
class ACKPT_EXPORT Trainer {
 public:
  // Builds the checkpointer (DefaultCheckpointer(args.checkpointer_args) if
  // null) and the backend (SingleProcess if null), builds the optimizers and
  // schedulers (get_optimizers_schedulers), checking that ackpt can capture
  // their types (optimizer_registry.h), so an unregistered one fails here
  // and not at the first save, calls checkpointer->load() reading the module
  // and the optimizers' state in place (unless reset_optimizers_schedulers),
  // and restores the module from it. The rest of the checkpoint is applied
  // by restore().
  Trainer(std::shared_ptr<ModuleInterface> module, TrainerArguments args,
          std::shared_ptr<TrainerBackend> backend = nullptr,
          std::shared_ptr<AbstractCheckpointer> checkpointer = nullptr);
  virtual ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Applies the loaded checkpoint's trainer state through update_state()
  // (virtual: a subclass's override takes effect), then initializes the
  // backend and applies the backend state: pymarlin's order. Runs once;
  // later calls do nothing. train(), validate(), save_checkpoint() and
  // save_model_checkpoint() call it first; call it yourself to apply a
  // resumed run's state before train().
  void restore();
  bool restored() const { return restored_; }

  // Trains epochs last_epoch() + 1 .. epochs - 1: each is trained, validated
  // and saved with save(checkpoint, epoch). Then saves once more with
  // force = true (durable when it returns) and calls save_model(). After a
  // request_stop() it returns after the current batch without saving the
  // unfinished epoch, once every earlier save is durable.
  virtual void train();
  // Runs validation after `epoch`; returns the mean loss (NaN if no batches).
  virtual double validate(int64_t epoch);

  // pymarlin's save_checkpoint / save_model_checkpoint.
  void save_checkpoint(bool force = false);
  void save_model_checkpoint();

  // {last_epoch, optimizers: [...], schedulers: [...], rng: {...}}.
  virtual StateDict get_state();
  // Restores last_epoch, then (unless reset_optimizers_schedulers) the
  // optimizers and schedulers, and the RNG. Empty state: nothing changes.
  // Given checkpointed_states().trainer_state itself (as restore() does),
  // the optimizers take its tensors over (RestoreMode::kAdopt); any other
  // state is copied.
  virtual void update_state(const StateDict& state);

  // Asks train() to stop after the current batch. Async-signal-safe: a
  // SIGINT handler may call it.
  void request_stop() noexcept { stop_.store(true); }
  bool stop_requested() const noexcept { return stop_.load(); }
  // True when the last train() returned because of request_stop().
  bool interrupted() const { return interrupted_; }

  // The last finished epoch (-1: none) and optimizer steps. Right after
  // construction, before restore() applies the checkpoint, they read what
  // the loaded checkpoint recorded (its trainer state's last_epoch and its
  // backend state's global_step_completed), so a resumed run reports where
  // it resumes from at once.
  int64_t last_epoch() const;
  int64_t global_steps_finished() const;
  // The checkpoint load() returned at construction (empty if none). Once
  // restore() has applied it, its optimizers' per-parameter state is empty:
  // the optimizers hold those tensors (or, when reset, they are freed).
  const Checkpoint& checkpointed_states() const { return checkpointed_states_; }
  // Metrics stored with the next save: "train_loss" and, when validation ran, "val_loss".
  const std::map<std::string, double>& metrics() const { return metrics_; }
  const TrainerArguments& args() const { return args_; }
  ModuleInterface& module() const { return *module_; }
  TrainerBackend& trainer_backend() const { return *backend_; }
  AbstractCheckpointer& checkpointer() const { return *checkpointer_; }
  const std::vector<std::shared_ptr<torch::optim::Optimizer>>& optimizers() const {
    return optimizers_;
  }
  const std::vector<std::shared_ptr<Scheduler>>& schedulers() const { return schedulers_; }

 protected:
  // Kept for subclasses written before restore() existed: the same as restore().
  void restore_trainer_state() { restore(); }
  // Waits for every pending save to be durable (checkpointer().wait()).
  void wait_for_saves();

  int64_t last_epoch_ = -1;
  std::map<std::string, double> metrics_;

 private:
  TrainerBackendArguments backend_args();

  std::shared_ptr<spdlog::logger> logger_;
  TrainerArguments args_;
  std::shared_ptr<ModuleInterface> module_;
  std::shared_ptr<AbstractCheckpointer> checkpointer_;
  std::shared_ptr<TrainerBackend> backend_;
  std::vector<std::shared_ptr<torch::optim::Optimizer>> optimizers_;
  std::vector<std::shared_ptr<Scheduler>> schedulers_;
  Checkpoint checkpointed_states_;
  int64_t estimated_global_steps_per_epoch_ = 0;
  std::atomic<bool> stop_{false};
  bool interrupted_ = false;
  bool restored_ = false;
};

}  // namespace ackpt
