// Trainer lifecycle (pymarlin's order), resume, stop, overrides, and a custom
// training loop driving the checkpointer directly.
#include "ackpt/trainer.h"

#include <torch/torch.h>

#include <cmath>
#include <optional>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::ListDir;
using testing::TempDir;

using Log = std::vector<std::string>;

struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(int64_t hidden = 16) {
    fc1 = register_module("fc1", torch::nn::Linear(4, hidden));
    drop = register_module("drop", torch::nn::Dropout(0.2));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(drop(torch::tanh(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(Mlp);

// A scheduler that records update_state() calls.
class RecordingScheduler : public Scheduler {
 public:
  RecordingScheduler(std::shared_ptr<Scheduler> inner, Log* log)
      : inner_(std::move(inner)), log_(log) {}
  void step() override { inner_->step(); }
  StateDict get_state() const override { return inner_->get_state(); }
  void update_state(const StateDict& s) override {
    log_->push_back("scheduler.update_state");
    inner_->update_state(s);
  }

 private:
  std::shared_ptr<Scheduler> inner_;
  Log* log_;
};

// Subclasses ackpt has no registration for (the registry matches exact types).
class MyAdam : public torch::optim::Adam {
 public:
  using Adam::Adam;
};
class MyStepLR : public torch::optim::StepLR {
 public:
  using StepLR::StepLR;
};

// Regression on random data drawn from LibTorch's generator.
class Regression : public ModuleInterface {
 public:
  explicit Regression(Log* log = nullptr, int64_t batches = 4, int64_t hidden = 16)
      : Regression(Mlp(hidden), log, batches) {}
  Regression(Mlp mlp, Log* log, int64_t batches)
      : ModuleInterface(mlp), mlp_(mlp), log_(log), batches_(batches) {
    val_x_ = torch::linspace(-1, 1, 32).reshape({8, 4});
    val_y_ = val_x_.sum(1, true);
  }

  int64_t num_train_batches(int64_t) override { return batches_; }
  torch::Tensor train_step(int64_t, int64_t epoch, int64_t batch) override {
    if (stop_at_ && epoch == stop_at_->first && batch == stop_at_->second) trainer_->request_stop();
    torch::Tensor x = torch::randn({8, 4});
    return torch::mse_loss(mlp_->forward(x), x.sum(1, true));
  }
  int64_t num_val_batches(int64_t) override { return 2; }
  torch::Tensor val_step(int64_t, int64_t, int64_t) override {
    return torch::mse_loss(mlp_->forward(val_x_), val_y_);
  }
  OptimizersSchedulers get_optimizers_schedulers(int64_t steps_per_epoch, int64_t epochs) override {
    if (log_)
      log_->push_back("get_optimizers_schedulers(" + std::to_string(steps_per_epoch) + ", " +
                      std::to_string(epochs) + ")");
    OptimizersSchedulers os;
    std::shared_ptr<torch::optim::Optimizer> opt;
    if (unregistered_optimizer_) {
      opt = std::make_shared<MyAdam>(mlp_->parameters(), torch::optim::AdamOptions(1e-2));
    } else {
      opt =
          std::make_shared<torch::optim::Adam>(mlp_->parameters(), torch::optim::AdamOptions(1e-2));
    }
    os.optimizers.push_back(opt);
    for (int i = 1; i < num_optimizers_; ++i) {
      os.optimizers.push_back(
          std::make_shared<torch::optim::SGD>(mlp_->parameters(), torch::optim::SGDOptions(0.1)));
    }
    std::shared_ptr<Scheduler> s = unregistered_scheduler_
                                       ? MakeScheduler<MyStepLR>(*opt, 3, 0.5)
                                       : MakeScheduler<torch::optim::StepLR>(*opt, 3, 0.5);
    if (log_) s = std::make_shared<RecordingScheduler>(s, log_);
    os.schedulers.push_back(s);
    return os;
  }
  void on_begin_train_epoch(int64_t, int64_t epoch) override {
    if (log_) log_->push_back("begin_epoch " + std::to_string(epoch));
  }
  void on_end_train(int64_t step) override {
    if (log_) log_->push_back("end_train " + std::to_string(step));
  }
  void update_state(const StateDict& state) override {
    if (log_) log_->push_back("module.update_state");
    ModuleInterface::update_state(state);
  }

  Mlp mlp_;
  Log* log_;
  int64_t batches_;
  int num_optimizers_ = 1;
  bool unregistered_optimizer_ = false;
  bool unregistered_scheduler_ = false;
  std::optional<std::pair<int64_t, int64_t>> stop_at_;
  Trainer* trainer_ = nullptr;
  torch::Tensor val_x_, val_y_;
};

class RecordingBackend : public SingleProcess {
 public:
  explicit RecordingBackend(Log* log) : log_(log) {}
  void init(const TrainerBackendArguments& args) override {
    log_->push_back("backend.init");
    SingleProcess::init(args);
  }
  void update_state(const StateDict& state) override {
    log_->push_back(state.empty() ? "backend.update_state(empty)" : "backend.update_state");
    SingleProcess::update_state(state);
  }

 private:
  Log* log_;
};

// Records every call; load() returns a preset checkpoint.
class RecordingCheckpointer : public AbstractCheckpointer {
 public:
  explicit RecordingCheckpointer(Log* log, Checkpoint to_load = {})
      : log_(log), to_load_(std::move(to_load)) {}
  void save(const Checkpoint& c, int64_t index, bool force) override {
    log_->push_back("save " + std::to_string(index) + (force ? " force" : ""));
    saved.push_back(c);
  }
  void save_model(const StateDict& s, int64_t index) override {
    log_->push_back("save_model " + std::to_string(index));
    model = s;
  }
  Checkpoint load() override {
    log_->push_back("load");
    return to_load_;
  }
  std::vector<Checkpoint> saved;
  StateDict model;

 private:
  Log* log_;
  Checkpoint to_load_;
};

TrainerArguments Args(const TempDir& dir, int64_t epochs) {
  TrainerArguments a;
  a.epochs = epochs;
  a.log_level = "WARN";
  a.checkpointer_args.save_dir = dir.file("ckpt");
  a.checkpointer_args.model_state_save_dir = dir.file("ckpt");
  a.checkpointer_args.writer_threads = 2;
  a.checkpointer_args.log_level = "WARN";
  return a;
}

StateDict Params(const ModuleInterface& m) { return ModuleState(m.module()); }

// Trains `epochs` epochs from scratch (seeded) in `dir`, or resumes there.
std::shared_ptr<Regression> TrainRun(const TempDir& dir, int64_t epochs) {
  torch::manual_seed(0);
  auto m = std::make_shared<Regression>();
  Trainer t(m, Args(dir, epochs));
  t.train();
  return m;
}

TEST(TrainerTest, LifecycleInPymarlinOrder) {
  TempDir dir;
  TrainRun(dir, 2);
  DefaultCheckpointerArguments ca = Args(dir, 2).checkpointer_args;
  Checkpoint saved = DefaultCheckpointer(ca).load();
  ASSERT_FALSE(saved.empty());

  Log log;
  torch::manual_seed(0);
  auto m = std::make_shared<Regression>(&log);
  auto ck = std::make_shared<RecordingCheckpointer>(&log, saved);
  Trainer t(m, Args(dir, 4), std::make_shared<RecordingBackend>(&log), ck);
  // The optimizers come first, so that their state loads in place.
  EXPECT_EQ(log, (Log{"get_optimizers_schedulers(4, 4)", "load", "module.update_state"}));
  EXPECT_FALSE(t.restored());
  // Before restore() the accessors report what the loaded checkpoint recorded.
  EXPECT_EQ(t.last_epoch(), 1);
  EXPECT_EQ(t.global_steps_finished(), 8);
  t.restore();  // what train() does first
  EXPECT_EQ(log, (Log{"get_optimizers_schedulers(4, 4)", "load", "module.update_state",
                      "scheduler.update_state", "backend.init", "backend.update_state"}));
  EXPECT_EQ(t.last_epoch(), 1);
  EXPECT_EQ(t.global_steps_finished(), 8);
  log.clear();
  t.train();
  EXPECT_EQ(log, (Log{"begin_epoch 2", "save 2", "begin_epoch 3", "save 3", "save 3 force",
                      "save_model 3", "end_train 16"}));

  // What the Trainer saves: pymarlin's three groups plus metrics.
  const Checkpoint& c = ck->saved.back();
  EXPECT_EQ(c.trainer_state.at("last_epoch").to_int(), 3);
  EXPECT_EQ(c.trainer_state.at("optimizers").list().size(), 1u);
  EXPECT_EQ(c.trainer_state.at("optimizers").list()[0].dict().at("type").str(), "Adam");
  EXPECT_EQ(c.trainer_state.at("schedulers").list()[0].dict().at("step_count").to_int(), 16);
  EXPECT_TRUE(c.trainer_state.at("rng").dict().contains("cpu"));
  EXPECT_EQ(c.trainer_backend_state.at("global_step_completed").to_int(), 16);
  EXPECT_EQ(c.trainer_backend_state.at("batches_completed").to_int(), 16);
  EXPECT_TRUE(c.module_interface_state.contains("fc1.weight"));
  EXPECT_TRUE(c.metrics.count("train_loss"));
  EXPECT_TRUE(c.metrics.count("val_loss"));
  EXPECT_TRUE(ExactlyEqual(ck->model, Params(*m)));
}

TEST(TrainerTest, FreshStartRestoresNothing) {
  Log log;
  TempDir dir;
  auto m = std::make_shared<Regression>(&log);
  auto ck = std::make_shared<RecordingCheckpointer>(&log);
  Trainer t(m, Args(dir, 1), std::make_shared<RecordingBackend>(&log), ck);
  t.restore();
  EXPECT_EQ(log, (Log{"get_optimizers_schedulers(4, 1)", "load", "backend.init",
                      "backend.update_state(empty)"}));
  EXPECT_EQ(t.last_epoch(), -1);
  EXPECT_EQ(t.global_steps_finished(), 0);
  EXPECT_TRUE(t.checkpointed_states().empty());
}

TEST(TrainerTest, ResumeContinuesExactlyWhereItStopped) {
  TempDir straight_dir, dir;
  auto straight = TrainRun(straight_dir, 4);

  TrainRun(dir, 2);
  EXPECT_EQ(ListDir(dir.file("ckpt")),
            (std::vector<std::string>{"model_0.safetensors.zst", "model_1.safetensors.zst",
                                      "model_model_1.safetensors.zst"}));
  Log log;
  torch::manual_seed(0);
  auto m = std::make_shared<Regression>(&log);
  Trainer t(m, Args(dir, 4));
  t.restore();
  EXPECT_EQ(t.last_epoch(), 1);
  EXPECT_EQ(t.global_steps_finished(), 8);
  t.train();
  EXPECT_EQ(t.global_steps_finished(), 16);
  int begun = 0;
  for (const auto& e : log) begun += e.rfind("begin_epoch", 0) == 0;
  EXPECT_EQ(begun, 2);  // epochs 2 and 3 only
  std::string why;
  EXPECT_TRUE(ExactlyEqual(Params(*straight), Params(*m), &why)) << why;

  // Validation metrics are stored with every checkpoint. (A reader: the
  // Trainer's checkpointer still owns the directory.)
  DefaultCheckpointerArguments reader = Args(dir, 4).checkpointer_args;
  reader.checkpoint = false;
  DefaultCheckpointer ck(reader);
  auto entries = ck.list_checkpoints();
  ASSERT_EQ(entries.size(), 4u);
  for (const auto& e : entries) {
    EXPECT_TRUE(e.metrics.count("val_loss")) << e.path;
    EXPECT_TRUE(std::isfinite(e.metrics.at("val_loss")));
  }
  EXPECT_NO_THROW(ck.load_best("val_loss"));
}

// The optimizer state is read into the tensors the optimizer then keeps
// (created before the load), and the Trainer keeps no second reference.
TEST(TrainerTest, OptimizerStateLoadsInPlaceAndIsHeldOnce) {
  TempDir dir;
  TrainRun(dir, 2);
  torch::manual_seed(0);
  auto m = std::make_shared<Regression>();
  Trainer t(m, Args(dir, 4));
  EXPECT_TRUE(t.optimizers()[0]->state().empty()) << "created state is removed after the load";
  const StateDict& loaded =
      t.checkpointed_states().trainer_state.at("optimizers").list()[0].dict().at("state").dict();
  std::map<std::string, void*> read;
  for (const auto& kv : FlattenTensors(loaded)) read[kv.first] = kv.second.data_ptr();
  ASSERT_FALSE(read.empty());
  t.restore();
  std::map<std::string, void*> held;
  for (const auto& kv :
       FlattenTensors(CaptureOptimizer(*t.optimizers()[0], m->module()).at("state").dict()))
    held[kv.first] = kv.second.data_ptr();
  EXPECT_EQ(held, read);  // the loaded tensors themselves, not copies
  EXPECT_TRUE(t.checkpointed_states()
                  .trainer_state.at("optimizers")
                  .list()[0]
                  .dict()
                  .at("state")
                  .dict()
                  .empty());
  t.train();
  EXPECT_EQ(t.global_steps_finished(), 16);
}

TEST(TrainerTest, ResetOptimizersSchedulersStartsThemAfresh) {
  TempDir dir;
  TrainRun(dir, 2);
  Log log;
  torch::manual_seed(0);
  auto m = std::make_shared<Regression>(&log);
  TrainerArguments a = Args(dir, 5);
  a.reset_optimizers_schedulers = true;
  {
    Trainer t(m, a);
    t.restore();
    EXPECT_EQ(log, (Log{"get_optimizers_schedulers(4, 5)", "module.update_state",
                        "get_optimizers_schedulers(4, 3)"}));
    EXPECT_EQ(t.last_epoch(), 1);
    EXPECT_TRUE(t.optimizers()[0]->state().empty());
    EXPECT_EQ(t.schedulers()[0]->get_state().at("step_count").to_int(), 0);
    t.train();
    EXPECT_EQ(t.global_steps_finished(), 20);
  }  // releases the directory for the next writer

  // Without the reset, the optimizer state saved by that run is restored:
  // 12 Adam steps since the reset.
  Log log2;
  torch::manual_seed(0);
  auto m2 = std::make_shared<Regression>(&log2);
  Trainer t2(m2, Args(dir, 5));
  t2.restore();
  StateDict opt = CaptureOptimizer(*t2.optimizers()[0], m2->module());
  EXPECT_EQ(opt.at("state").dict().at("fc1.weight").dict().at("step").to_int(), 12);
}

TEST(TrainerTest, MismatchedOptimizerCountIsAClearError) {
  TempDir dir;
  TrainRun(dir, 1);
  auto m = std::make_shared<Regression>();
  m->num_optimizers_ = 2;
  Trainer t(m, Args(dir, 2));
  for (int attempt = 0; attempt < 2; ++attempt) {  // a second train() does not train half-restored
    try {
      t.train();
      ADD_FAILURE();
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(
                    "the checkpoint holds 1 optimizer states but the module built 2"),
                std::string::npos)
          << e.what();
    }
  }
  EXPECT_FALSE(t.restored());
}

TEST(TrainerTest, StrictAndLenientModuleState) {
  TempDir dir;
  TrainRun(dir, 1);
  // A wider hidden layer: every fc tensor but fc2.bias changes shape.
  auto wide = std::make_shared<Regression>(nullptr, 4, 32);
  try {
    Trainer t(wide, Args(dir, 2));
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("fc1.weight: checkpoint [16, 4] vs module [32, 4]"),
              std::string::npos)
        << e.what();
  }
  auto lenient = std::make_shared<Regression>(nullptr, 4, 32);
  lenient->set_strict(false);
  TrainerArguments a = Args(dir, 2);
  a.reset_optimizers_schedulers = true;  // the saved Adam state has the old shapes too
  Trainer t(lenient, a);
  EXPECT_EQ(lenient->last_load_report().loaded, std::vector<std::string>{"fc2.bias"});
  EXPECT_EQ(lenient->last_load_report().mismatched.size(), 3u);
}

TEST(TrainerTest, GradientAccumulationAndStepCap) {
  TempDir dir;
  auto m = std::make_shared<Regression>(nullptr, 6);
  TrainerArguments a = Args(dir, 1);
  a.gradient_accumulation = 2;
  a.checkpointer_args.checkpoint = false;
  Trainer t(m, a);
  t.train();
  EXPECT_EQ(t.trainer_backend().get_global_steps_completed(), 3);
  EXPECT_EQ(t.trainer_backend().get_batches_completed(), 6);

  auto m2 = std::make_shared<Regression>(nullptr, 7);
  a.epochs = 2;
  a.max_train_steps_per_epoch = 2;
  Trainer t2(m2, a);
  t2.train();
  EXPECT_EQ(t2.trainer_backend().get_global_steps_completed(), 4);
  EXPECT_EQ(t2.trainer_backend().get_batches_completed(), 8);
}

TEST(TrainerTest, RequestStopDrainsAndKeepsTheLastFullEpoch) {
  TempDir dir;
  torch::manual_seed(0);
  auto m = std::make_shared<Regression>();
  m->stop_at_ = std::make_pair(int64_t{1}, int64_t{2});
  {
    Trainer t(m, Args(dir, 4));
    m->trainer_ = &t;
    t.train();
    EXPECT_TRUE(t.interrupted());
    EXPECT_EQ(t.last_epoch(), 0);
    EXPECT_EQ(t.global_steps_finished(), 7);  // 4 + epoch 1's batches up to the stop
    // Every save made before the stop is durable when train() returns.
    EXPECT_EQ(ListDir(dir.file("ckpt")), std::vector<std::string>{"model_0.safetensors.zst"});
  }
  auto m2 = std::make_shared<Regression>();
  Trainer t2(m2, Args(dir, 4));
  t2.restore();
  EXPECT_EQ(t2.last_epoch(), 0);
  EXPECT_EQ(t2.global_steps_finished(), 4);
  t2.train();
  EXPECT_FALSE(t2.interrupted());
  EXPECT_EQ(t2.global_steps_finished(), 16);
}

// A Trainer subclass adding its own state, as pymarlin users override
// get_state/update_state: nothing but the overrides (no call to restore()).
class BestTrainer : public Trainer {
 public:
  BestTrainer(std::shared_ptr<ModuleInterface> m, TrainerArguments a)
      : Trainer(std::move(m), std::move(a)) {}
  StateDict get_state() override {
    StateDict s = Trainer::get_state();
    s.set("best_val_loss", best);
    return s;
  }
  void update_state(const StateDict& s) override {
    ++update_state_calls;
    Trainer::update_state(s);
    if (const Value* v = s.find("best_val_loss")) loaded_best = best = v->to_double();
  }
  double validate(int64_t epoch) override {
    const double l = Trainer::validate(epoch);
    best = std::min(best, l);
    return l;
  }
  double best = 1e9;
  std::optional<double> loaded_best;
  int update_state_calls = 0;
};

TEST(TrainerTest, OverriddenUpdateStateTakesEffectOnResume) {
  TempDir dir;
  double best = 0;
  {
    torch::manual_seed(0);
    BestTrainer t(std::make_shared<Regression>(), Args(dir, 2));
    t.train();
    best = t.best;
    EXPECT_LT(best, 1e9);
    EXPECT_FALSE(t.loaded_best);  // fresh start: nothing to load
  }
  {
    // train() alone applies the override before the first epoch.
    BestTrainer t(std::make_shared<Regression>(), Args(dir, 3));
    EXPECT_FALSE(t.loaded_best);  // not in the constructor: C++ would call the base version
    t.train();
    ASSERT_TRUE(t.loaded_best);
    EXPECT_EQ(*t.loaded_best, best);
    EXPECT_LE(t.best, best);
    EXPECT_EQ(t.update_state_calls, 1);
    best = t.best;
  }
  // restore() applies it earlier, once.
  BestTrainer t(std::make_shared<Regression>(), Args(dir, 3));
  t.restore();
  t.restore();
  EXPECT_EQ(t.update_state_calls, 1);
  ASSERT_TRUE(t.loaded_best);
  EXPECT_EQ(*t.loaded_best, best);
  EXPECT_EQ(t.last_epoch(), 2);
}

// Types ackpt cannot capture fail when the Trainer is built, before an epoch
// of training is spent on a run that could not be checkpointed.
TEST(TrainerTest, UnregisteredTypesFailAtConstruction) {
  TempDir dir;
  auto construction_error = [&](bool optimizer, bool scheduler) {
    auto m = std::make_shared<Regression>();
    m->unregistered_optimizer_ = optimizer;
    m->unregistered_scheduler_ = scheduler;
    try {
      Trainer t(m, Args(dir, 1));
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Error::Code::kUnsupported);
      return std::string(e.what());
    }
    ADD_FAILURE() << "no error";
    return std::string();
  };
  const std::string opt = construction_error(true, false);
  EXPECT_NE(opt.find("MyAdam is not registered"), std::string::npos) << opt;
  EXPECT_NE(opt.find("ackpt::RegisterOptimizer<"), std::string::npos) << opt;
  const std::string sched = construction_error(false, true);
  EXPECT_NE(sched.find("MyStepLR is not registered"), std::string::npos) << sched;
  EXPECT_NE(sched.find("ackpt::RegisterScheduler<"), std::string::npos) << sched;
}

TEST(TrainerTest, InvalidArgumentsNameTheField) {
  TempDir dir;
  auto m = std::make_shared<Regression>();
  TrainerArguments a = Args(dir, -1);
  EXPECT_THROW((Trainer{m, a}), Error);
  a = Args(dir, 1);
  a.gradient_accumulation = 0;
  try {
    Trainer t(m, a);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TrainerArguments.gradient_accumulation must be >= 1"),
              std::string::npos);
  }
  a = Args(dir, 1);
  a.log_level = "LOUD";
  EXPECT_THROW((Trainer{m, a}), Error);
  EXPECT_THROW((Trainer{nullptr, Args(dir, 1)}), Error);
}

// The README's "your own loop" pattern: no Trainer, the checkpointer and the
// torch_state helpers only.
struct Loop {
  Mlp net{16};
  std::unique_ptr<torch::optim::AdamW> opt;
  std::shared_ptr<Scheduler> sched;
  int64_t step = 0;
  Loop() {
    opt =
        std::make_unique<torch::optim::AdamW>(net->parameters(), torch::optim::AdamWOptions(1e-2));
    sched = MakeScheduler<torch::optim::StepLR>(*opt, 5, 0.5);
  }
  void Train(int64_t until, DefaultCheckpointer* ck, int64_t every) {
    for (; step < until;) {
      torch::Tensor x = torch::randn({8, 4});
      torch::Tensor loss = torch::mse_loss(net->forward(x), x.sum(1, true));
      loss.backward();
      opt->step();
      net->zero_grad(/*set_to_none=*/true);
      sched->step();
      ++step;
      if (ck && step % every == 0) {
        Checkpoint c;
        c.module_interface_state = ModuleState(*net);
        c.trainer_state = StateDict{{"optimizer", CaptureOptimizer(*opt, *net)},
                                    {"scheduler", sched->get_state()},
                                    {"rng", CaptureRngState()}};
        c.trainer_backend_state = StateDict{{"step", step}};
        ck->save(c, step);  // asynchronous: returns after the snapshot
      }
    }
  }
  void Restore(const Checkpoint& c) {
    LoadModuleState(*net, c.module_interface_state);
    RestoreOptimizer(*opt, *net, c.trainer_state.at("optimizer").dict());
    sched->update_state(c.trainer_state.at("scheduler").dict());
    RestoreRngState(c.trainer_state.at("rng").dict());
    step = c.trainer_backend_state.at("step").to_int();
  }
};

TEST(CustomLoopTest, DrivesTheCheckpointerDirectly) {
  TempDir dir;
  torch::manual_seed(0);
  Loop straight;
  straight.Train(20, nullptr, 0);

  DefaultCheckpointerArguments ca = Args(dir, 1).checkpointer_args;
  {
    torch::manual_seed(0);
    Loop first;
    DefaultCheckpointer ck(ca);
    first.Train(12, &ck, 4);  // saves 4, 8, 12; the destructor drains
  }
  torch::manual_seed(123);  // a different process would start elsewhere too
  Loop resumed;
  DefaultCheckpointer ck(ca);
  Checkpoint c = ck.load();
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(ck.last_loaded_path(), JoinPath(ca.save_dir, "model_12.safetensors.zst"));
  resumed.Restore(c);
  resumed.Train(20, &ck, 4);
  std::string why;
  EXPECT_TRUE(ExactlyEqual(ModuleState(*straight.net), ModuleState(*resumed.net), &why)) << why;
  EXPECT_TRUE(ExactlyEqual(CaptureOptimizer(*straight.opt, *straight.net),
                           CaptureOptimizer(*resumed.opt, *resumed.net), &why))
      << why;
}

}  // namespace
}  // namespace ackpt
