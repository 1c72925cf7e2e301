// pymarlin's Trainer, ModuleInterface and SingleProcess backend for LibTorch.
#include "ackpt/trainer.h"

#include <spdlog/spdlog.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim.h>
#include <torch/utils.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "util/logger.h"

namespace ackpt {

namespace {

constexpr const char* kLoggerName = "ackpt.trainer";

void Validate(const TrainerArguments& a) {
  auto bad = [](const std::string& what) {
    return Error::InvalidArgument("TrainerArguments." + what);
  };
  if (a.epochs < 0) throw bad("epochs must be >= 0, got " + std::to_string(a.epochs));
  if (a.max_train_steps_per_epoch < 0) throw bad("max_train_steps_per_epoch must be >= 0");
  if (a.max_val_steps_per_epoch < 0) throw bad("max_val_steps_per_epoch must be >= 0");
  if (a.gradient_accumulation < 1) {
    throw bad("gradient_accumulation must be >= 1, got " + std::to_string(a.gradient_accumulation));
  }
  if (a.clip_grads && !(a.max_grad_norm > 0))
    throw bad("max_grad_norm must be > 0 when clip_grads is set");
}

// Null entries are errors; so are types ackpt cannot capture, found here
// rather than at the first save, after an epoch of training.
void CheckRecipe(const OptimizersSchedulers& os) {
  for (const auto& o : os.optimizers) {
    if (!o) throw Error::InvalidArgument("get_optimizers_schedulers returned a null optimizer");
    OptimizerTypeName(*o);
  }
  for (const auto& s : os.schedulers) {
    if (!s) throw Error::InvalidArgument("get_optimizers_schedulers returned a null scheduler");
    s->get_state();
  }
}

// checkpointer.load(), reading tensors straight into the tensors that keep
// them: the tensors of module.get_state() (by default the parameters and
// buffers themselves) and the optimizers' state, created beforehand where
// LibTorch creates it lazily (CreateOptimizerState) and placed where
// Trainer::get_state() saves it. Tensors whose dtype or shape differ are read
// into fresh tensors and left to update_state(), which then finds the others
// already in place (LoadModuleState skips copying a tensor onto itself;
// RestoreOptimizer keeps its own tensors and takes the fresh ones over).
// The state created here is removed from the optimizers again once the load
// is done: the loaded checkpoint holds what was read into it until
// restore() hands it back, and what was not read is freed.
Checkpoint LoadInPlace(AbstractCheckpointer& checkpointer, ModuleInterface& module,
                       const std::vector<std::shared_ptr<torch::optim::Optimizer>>& optimizers,
                       spdlog::logger& logger) {
  LoadTargets targets;
  targets.into.module_interface_state = module.get_state();
  try {
    FlattenTensors(targets.into.module_interface_state);
  } catch (const Error& e) {
    // A state that cannot be flattened could not have been saved either.
    logger.debug("module state not loaded in place: {}", e.what());
    targets.into.module_interface_state.clear();
  }
  std::vector<std::vector<std::string>> created(optimizers.size());
  if (!optimizers.empty()) {
    List states;
    for (size_t i = 0; i < optimizers.size(); ++i) {
      torch::optim::Optimizer& o = *optimizers[i];
      std::set<std::string> before;
      for (const auto& kv : o.state()) before.insert(kv.first);
      CreateOptimizerState(o);
      for (const auto& kv : o.state()) {
        if (before.count(kv.first) == 0) created[i].push_back(kv.first);
      }
      states.emplace_back(CaptureOptimizer(o, module.module()));
    }
    targets.into.trainer_state.set("optimizers", std::move(states));
    try {
      FlattenTensors(targets.into.trainer_state);
    } catch (const Error& e) {
      logger.debug("optimizer state not loaded in place: {}", e.what());
      targets.into.trainer_state.clear();
    }
  }
  auto drop_created = [&] {
    for (size_t i = 0; i < optimizers.size(); ++i) {
      for (const auto& key : created[i]) optimizers[i]->state().erase(key);
    }
  };
  Checkpoint c;
  try {
    c = checkpointer.load(targets);
  } catch (...) {
    drop_created();
    throw;
  }
  drop_created();
  return c;
}

// Drops the optimizers' per-parameter state (now the optimizers' own, or not
// wanted) from a restored trainer state, keeping the rest.
void DropOptimizerState(StateDict* trainer_state) {
  Value* optimizers = trainer_state->find("optimizers");
  if (optimizers == nullptr || !optimizers->is_list()) return;
  for (Value& o : optimizers->list()) {
    if (o.is_dict() && o.dict().contains("state")) o.dict().set("state", StateDict());
  }
}

// An int the checkpoint recorded at `key` of `group`, or `fallback`.
int64_t Recorded(const StateDict& group, const char* key, int64_t fallback) {
  const Value* v = group.find(key);
  return v != nullptr && v->is_int() ? v->to_int() : fallback;
}

// Optimizers that evaluate the loss themselves, several times per step.
bool NeedsClosure(const torch::optim::Optimizer& o) {
  return dynamic_cast<const torch::optim::LBFGS*>(&o) != nullptr;
}

}  // namespace

// ---- ModuleInterface ----

ModuleInterface::ModuleInterface(std::shared_ptr<torch::nn::Module> module)
    : module_(std::move(module)) {
  if (!module_) throw Error::InvalidArgument("ModuleInterface needs a module, got null");
}

ModuleInterface::~ModuleInterface() = default;

int64_t ModuleInterface::num_val_batches(int64_t) { return 0; }

torch::Tensor ModuleInterface::val_step(int64_t, int64_t, int64_t) {
  throw Error::InvalidArgument("num_val_batches() > 0 but val_step() is not overridden");
}

void ModuleInterface::on_begin_train_epoch(int64_t, int64_t) {}
void ModuleInterface::on_end_backward(int64_t, const torch::Tensor&) {}
void ModuleInterface::on_end_train_step(int64_t, double) {}
void ModuleInterface::on_end_train_epoch(int64_t, int64_t, double) {}
void ModuleInterface::on_end_val_epoch(int64_t, int64_t, double) {}
void ModuleInterface::on_end_train(int64_t) {}

StateDict ModuleInterface::get_state() { return ModuleState(*module_); }

void ModuleInterface::update_state(const StateDict& state) {
  last_report_ = LoadModuleState(*module_, state, strict_);
  if (!last_report_.clean()) {
    if (auto logger = spdlog::get(kLoggerName)) {
      logger->warn("module state loaded leniently; skipped {}", last_report_.ToString());
    }
  }
}

// ---- SingleProcess ----

void SingleProcess::init(const TrainerBackendArguments& args) {
  if (args.module == nullptr)
    throw Error::InvalidArgument("TrainerBackendArguments.module is null");
  if (args.gradient_accumulation < 1) {
    throw Error::InvalidArgument("TrainerBackendArguments.gradient_accumulation must be >= 1");
  }
  args_ = args;
}

bool SingleProcess::stop_requested() const {
  return args_.stop_requested != nullptr && args_.stop_requested->load();
}

double SingleProcess::train_epoch(int64_t epoch) {
  if (args_.module == nullptr) throw Error::InvalidArgument("SingleProcess::init() was not called");
  ModuleInterface& m = *args_.module;
  const int64_t n = shard_batches(m.num_train_batches(epoch));
  const int64_t accumulation = args_.gradient_accumulation;
  int64_t steps = 0, in_step = 0, epoch_batches = 0;
  double step_sum = 0, epoch_sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = shard_batch(i);
    if (args_.max_train_steps_per_epoch > 0 && steps >= args_.max_train_steps_per_epoch) break;
    if (stop_requested()) break;
    torch::Tensor loss = m.train_step(global_step_completed_ + 1, epoch, b);
    step_epoch_ = epoch;
    step_batches_.push_back(b);
    if (!loss.defined() || loss.numel() != 1) {
      throw Error::InvalidArgument("train_step() must return a one-element loss tensor (epoch " +
                                   std::to_string(epoch) + ", batch " + std::to_string(b) + ")");
    }
    if (accumulation > 1) {
      (loss / static_cast<double>(accumulation)).backward();
    } else {
      loss.backward();
    }
    m.on_end_backward(global_step_completed_ + 1, loss);
    const double l = loss.item<double>();
    step_sum += l;
    epoch_sum += l;
    ++in_step;
    ++epoch_batches;
    ++batches_completed_;
    if (in_step == accumulation) {
      process_global_step(step_sum / static_cast<double>(in_step));
      ++steps;
      in_step = 0;
      step_sum = 0;
    }
  }
  if (in_step > 0) {
    if (stop_requested()) {
      m.module().zero_grad(/*set_to_none=*/true);  // drop the unfinished step
      step_batches_.clear();
    } else {
      process_global_step(step_sum / static_cast<double>(in_step));
    }
  }
  return epoch_batches > 0 ? epoch_sum / static_cast<double>(epoch_batches)
                           : std::numeric_limits<double>::quiet_NaN();
}

void SingleProcess::process_global_step(double mean_loss) {
  ModuleInterface& m = *args_.module;
  reduce_gradients();
  if (args_.clip_grads) {
    torch::nn::utils::clip_grad_norm_(m.module().parameters(), args_.max_grad_norm);
  }
  // The snapshot fence: an overlapped save()'s copy must finish before the
  // optimizer writes the parameters and its state.
  if (args_.checkpointer) args_.checkpointer->wait_snapshot();
  // LBFGS evaluates the loss itself (several times per step): its closure
  // runs the step's batches again, as the loop above did.
  const auto closure = [&]() -> torch::Tensor {
    m.module().zero_grad(/*set_to_none=*/true);
    torch::Tensor total;
    for (int64_t b : step_batches_) {
      torch::Tensor loss = m.train_step(global_step_completed_ + 1, step_epoch_, b);
      if (args_.gradient_accumulation > 1)
        loss = loss / static_cast<double>(args_.gradient_accumulation);
      loss.backward();
      total = total.defined() ? total + loss.detach() : loss.detach();
    }
    reduce_gradients();
    if (args_.clip_grads) {
      torch::nn::utils::clip_grad_norm_(m.module().parameters(), args_.max_grad_norm);
    }
    return total;
  };
  for (const auto& o : args_.optimizers) {
    if (NeedsClosure(*o)) {
      o->step(closure);
    } else {
      o->step();
    }
  }
  step_batches_.clear();
  // Reset gradients to none (not to zero), so that a resumed process, whose
  // gradients start undefined, accumulates exactly as an uninterrupted one.
  for (const auto& o : args_.optimizers) {
    for (auto& g : o->param_groups()) {
      for (auto& p : g.params()) {
        if (p.grad().defined()) p.mutable_grad() = torch::Tensor();
      }
    }
  }
  m.module().zero_grad(/*set_to_none=*/true);
  for (const auto& s : args_.schedulers) s->step();
  ++global_step_completed_;
  m.on_end_train_step(global_step_completed_, mean_loss);
}

double SingleProcess::validate_epoch(int64_t epoch) {
  if (args_.module == nullptr) throw Error::InvalidArgument("SingleProcess::init() was not called");
  ModuleInterface& m = *args_.module;
  int64_t n = m.num_val_batches(epoch);
  if (args_.max_val_steps_per_epoch > 0) n = std::min(n, args_.max_val_steps_per_epoch);
  if (n <= 0) return std::numeric_limits<double>::quiet_NaN();
  torch::NoGradGuard no_grad;
  double sum = 0;
  for (int64_t b = 0; b < n; ++b) {
    torch::Tensor loss = m.val_step(global_step_completed_, epoch, b);
    if (!loss.defined() || loss.numel() != 1) {
      throw Error::InvalidArgument("val_step() must return a one-element loss tensor");
    }
    sum += loss.item<double>();
  }
  return sum / static_cast<double>(n);
}

StateDict SingleProcess::get_state() {
  return StateDict{{"global_step_completed", global_step_completed_},
                   {"batches_completed", batches_completed_}};
}

void SingleProcess::update_state(const StateDict& state) {
  if (state.empty()) return;
  const std::string w = "trainer_backend_state";
  const int64_t steps = state.get_int("global_step_completed", w);
  const int64_t batches = state.get_int("batches_completed", w);
  global_step_completed_ = steps;
  batches_completed_ = batches;
}

// ---- Trainer ----

Trainer::Trainer(std::shared_ptr<ModuleInterface> module, TrainerArguments args,
                 std::shared_ptr<TrainerBackend> backend,
                 std::shared_ptr<AbstractCheckpointer> checkpointer)
    : args_(std::move(args)),
      module_(std::move(module)),
      checkpointer_(std::move(checkpointer)),
      backend_(std::move(backend)) {
  if (!module_) throw Error::InvalidArgument("Trainer needs a ModuleInterface, got null");
  Validate(args_);
  logger_ = ResolveLogger(args_.log_level, args_.logger, "TrainerArguments.log_level", kLoggerName);
  if (!checkpointer_)
    checkpointer_ = std::make_shared<DefaultCheckpointer>(args_.checkpointer_args);
  if (!backend_) backend_ = std::make_shared<SingleProcess>();

  // pymarlin's order, except that the optimizers and schedulers are built
  // first, so that their state loads in place: optimizers/schedulers, load,
  // module state; then, in restore(), trainer state (which restores them),
  // backend init, backend state.
  const int64_t batches = module_->num_train_batches(0);
  estimated_global_steps_per_epoch_ =
      (batches + args_.gradient_accumulation - 1) / args_.gradient_accumulation;
  if (args_.max_train_steps_per_epoch > 0) {
    estimated_global_steps_per_epoch_ =
        std::min(estimated_global_steps_per_epoch_, args_.max_train_steps_per_epoch);
  }
  OptimizersSchedulers os =
      module_->get_optimizers_schedulers(estimated_global_steps_per_epoch_, args_.epochs);
  CheckRecipe(os);
  optimizers_ = std::move(os.optimizers);
  schedulers_ = std::move(os.schedulers);
  // Unless they are to start afresh, in which case their saved state is not wanted.
  static const std::vector<std::shared_ptr<torch::optim::Optimizer>> kNone;
  checkpointed_states_ = LoadInPlace(
      *checkpointer_, *module_, args_.reset_optimizers_schedulers ? kNone : optimizers_, *logger_);
  if (!checkpointed_states_.module_interface_state.empty()) {
    module_->update_state(checkpointed_states_.module_interface_state);
  }
}

void Trainer::restore() {
  if (restored_) return;
  // Set first: an update_state() override may call what calls restore().
  restored_ = true;
  try {
    update_state(checkpointed_states_.trainer_state);
    // After update_state, which may have rebuilt the optimizers (reset_optimizers_schedulers).
    backend_->init(backend_args());
    backend_->update_state(checkpointed_states_.trainer_backend_state);
  } catch (...) {
    restored_ = false;  // a later train() fails the same way instead of training half-restored
    throw;
  }
  // The optimizers hold their state now (the very tensors loaded): keep no
  // second reference, and no copy at all when they were reset.
  DropOptimizerState(&checkpointed_states_.trainer_state);
  if (!checkpointed_states_.empty()) {
    logger_->info("resumed after epoch {} (global step {})", last_epoch_, global_steps_finished());
  }
}

Trainer::~Trainer() = default;

TrainerBackendArguments Trainer::backend_args() {
  TrainerBackendArguments ba;
  ba.module = module_.get();
  ba.optimizers = optimizers_;
  ba.schedulers = schedulers_;
  ba.max_train_steps_per_epoch = args_.max_train_steps_per_epoch;
  ba.max_val_steps_per_epoch = args_.max_val_steps_per_epoch;
  ba.gradient_accumulation = args_.gradient_accumulation;
  ba.clip_grads = args_.clip_grads;
  ba.max_grad_norm = args_.max_grad_norm;
  ba.stop_requested = &stop_;
  ba.checkpointer = checkpointer_.get();
  return ba;
}

int64_t Trainer::last_epoch() const {
  if (restored_) return last_epoch_;
  return Recorded(checkpointed_states_.trainer_state, "last_epoch", last_epoch_);
}

int64_t Trainer::global_steps_finished() const {
  if (restored_) return backend_->get_global_steps_completed();
  return Recorded(checkpointed_states_.trainer_backend_state, "global_step_completed",
                  backend_->get_global_steps_completed());
}

StateDict Trainer::get_state() {
  StateDict state;
  state.set("last_epoch", last_epoch_);
  List optimizers;
  for (const auto& o : optimizers_)
    optimizers.emplace_back(CaptureOptimizer(*o, module_->module()));
  List schedulers;
  for (const auto& s : schedulers_) schedulers.emplace_back(s->get_state());
  state.set("optimizers", std::move(optimizers));
  state.set("schedulers", std::move(schedulers));
  if (args_.checkpoint_rng) state.set("rng", CaptureRngState());
  return state;
}

void Trainer::update_state(const StateDict& state) {
  if (state.empty()) return;
  const std::string w = "trainer_state";
  last_epoch_ = state.get_int("last_epoch", w);
  if (args_.reset_optimizers_schedulers) {
    logger_->info("optimizers and schedulers reset, not loaded from the checkpoint");
    const int64_t remaining = args_.epochs - last_epoch_ - 1;
    if (remaining > 0) {
      OptimizersSchedulers os =
          module_->get_optimizers_schedulers(estimated_global_steps_per_epoch_, remaining);
      CheckRecipe(os);
      optimizers_ = std::move(os.optimizers);
      schedulers_ = std::move(os.schedulers);
    }
  } else {
    const List& optimizers = state.get_list("optimizers", w);
    const List& schedulers = state.get_list("schedulers", w);
    if (optimizers.size() != optimizers_.size()) {
      throw Error::InvalidArgument(
          "the checkpoint holds " + std::to_string(optimizers.size()) +
          " optimizer states but the module built " + std::to_string(optimizers_.size()) +
          " optimizers (set reset_optimizers_schedulers to start them afresh)");
    }
    if (schedulers.size() != schedulers_.size()) {
      throw Error::InvalidArgument(
          "the checkpoint holds " + std::to_string(schedulers.size()) +
          " scheduler states but the module built " + std::to_string(schedulers_.size()) +
          " schedulers (set reset_optimizers_schedulers to start them afresh)");
    }
    // The Trainer's own loaded checkpoint is handed over to the optimizers
    // (restore() drops it afterwards); any other state is copied.
    const RestoreMode mode =
        &state == &checkpointed_states_.trainer_state ? RestoreMode::kAdopt : RestoreMode::kCopy;
    for (size_t i = 0; i < optimizers.size(); ++i) {
      RestoreOptimizer(*optimizers_[i], module_->module(),
                       optimizers[i].dict(w + ".optimizers[" + std::to_string(i) + "]"), mode);
    }
    for (size_t i = 0; i < schedulers.size(); ++i) {
      schedulers_[i]->update_state(
          schedulers[i].dict(w + ".schedulers[" + std::to_string(i) + "]"));
    }
  }
  if (args_.checkpoint_rng) {
    if (const Value* rng = state.find("rng")) RestoreRngState(rng->dict(w + ".rng"));
  }
}

double Trainer::validate(int64_t epoch) {
  restore();
  if (module_->num_val_batches(epoch) <= 0) return std::numeric_limits<double>::quiet_NaN();
  torch::nn::Module& m = module_->module();
  const bool was_training = m.is_training();
  m.eval();
  double loss;
  try {
    loss = backend_->validate_epoch(epoch);
  } catch (...) {
    if (was_training) m.train();
    throw;
  }
  if (was_training) m.train();
  module_->on_end_val_epoch(global_steps_finished(), epoch, loss);
  return loss;
}

void Trainer::train() {
  restore();
  interrupted_ = false;
  for (int64_t epoch = last_epoch_ + 1; epoch < args_.epochs; ++epoch) {
    if (stop_requested()) {
      interrupted_ = true;
      break;
    }
    logger_->info("training epoch {}", epoch);
    module_->on_begin_train_epoch(global_steps_finished(), epoch);
    module_->module().train();
    const double train_loss = backend_->train_epoch(epoch);
    if (stop_requested()) {
      interrupted_ = true;
      break;
    }
    const double val_loss = validate(epoch);
    module_->on_end_train_epoch(global_steps_finished(), epoch, train_loss);
    last_epoch_ = epoch;
    metrics_.clear();
    if (!std::isnan(train_loss)) metrics_["train_loss"] = train_loss;
    if (!std::isnan(val_loss)) metrics_["val_loss"] = val_loss;
    save_checkpoint();
  }
  if (interrupted_) {
    logger_->info("stopped before finishing epoch {}; waiting for pending saves", last_epoch_ + 1);
    wait_for_saves();
    return;
  }
  if (last_epoch_ >= 0) {
    save_checkpoint(/*force=*/true);
    save_model_checkpoint();
  } else {
    logger_->warn("no epoch to train (epochs = {}); nothing saved", args_.epochs);
  }
  module_->on_end_train(global_steps_finished());
  logger_->info("finished training after epoch {} (global step {})", last_epoch_,
                global_steps_finished());
}

void Trainer::save_checkpoint(bool force) {
  restore();
  if (last_epoch_ < 0) {
    throw Error::InvalidArgument("save_checkpoint() before any epoch finished (last_epoch = -1)");
  }
  Checkpoint c;
  c.module_interface_state = module_->get_state();
  c.trainer_state = get_state();
  c.trainer_backend_state = backend_->get_state();
  c.metrics = metrics_;
  checkpointer_->save(c, last_epoch_, force);
}

void Trainer::save_model_checkpoint() {
  restore();
  if (last_epoch_ < 0) {
    throw Error::InvalidArgument(
        "save_model_checkpoint() before any epoch finished (last_epoch = -1)");
  }
  checkpointer_->save_model(module_->get_state(), last_epoch_);
}

void Trainer::wait_for_saves() { checkpointer_->wait(); }

}  // namespace ackpt
