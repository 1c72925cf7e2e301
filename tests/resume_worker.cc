// Helper process for resume_test: trains a small model and checkpoints it, so
// the test can compare an uninterrupted run with one that is torn down and
// resumed from the file in a fresh process.
//
//   ackpt_resume_worker --mode straight|part|resume
//                       --optimizer Adam|AdamW|SGD|RMSprop|Adagrad|LBFGS
//                       --driver trainer|loop --steps N [--dir DIR] [--compression none|zstd]
//                       [--out FILE] [--no-rng]
//
//   straight  trains N steps and writes the final state to --out
//   part      trains N steps, checkpointing into --dir (asynchronously, then
//             force = true at the end), and exits
//   resume    resumes from the newest checkpoint in --dir, continues to N
//             steps and writes the final state to --out
//
// The final state holds the parameters and buffers, the optimizer state
// (CaptureOptimizer), the scheduler state, the RNG state and the step count.
// LBFGS needs the loop driver: it evaluates the loss several times per step
// through a closure, which the Trainer's SingleProcess backend does not pass.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "ackpt/ackpt.h"
#include "ackpt/trainer.h"

namespace {

constexpr int64_t kStepsPerEpoch = 4;

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(8, 32));
    bn = register_module("bn", torch::nn::BatchNorm1d(32));
    drop = register_module("drop", torch::nn::Dropout(0.1));
    fc2 = register_module("fc2", torch::nn::Linear(32, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc2(drop(torch::relu(bn(fc1(x))))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(Net);

// A batch drawn from LibTorch's generator, so the RNG state matters.
torch::Tensor Batch() { return torch::randn({16, 8}); }

torch::Tensor Loss(Net& net, const torch::Tensor& x) {
  return torch::mse_loss(net->forward(x), torch::sin(x.sum(1, true)));
}

std::shared_ptr<torch::optim::Optimizer> MakeOptimizer(const std::string& type, Net& net) {
  if (type == "Adam") {  // two param groups
    std::vector<torch::Tensor> weights, rest;
    for (const auto& p : net->named_parameters()) {
      (p.key().find("weight") != std::string::npos ? weights : rest).push_back(p.value());
    }
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(weights, std::make_unique<torch::optim::AdamOptions>(
                                     torch::optim::AdamOptions(1e-2).weight_decay(1e-4)));
    groups.emplace_back(
        rest, std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(5e-3)));
    return std::make_shared<torch::optim::Adam>(groups, torch::optim::AdamOptions(1e-2));
  }
  if (type == "AdamW") {
    return std::make_shared<torch::optim::AdamW>(net->parameters(),
                                                 torch::optim::AdamWOptions(1e-2).amsgrad(true));
  }
  if (type == "SGD") {
    return std::make_shared<torch::optim::SGD>(
        net->parameters(), torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true));
  }
  if (type == "RMSprop") {
    return std::make_shared<torch::optim::RMSprop>(
        net->parameters(), torch::optim::RMSpropOptions(1e-3).momentum(0.5).centered(true));
  }
  if (type == "Adagrad") {
    return std::make_shared<torch::optim::Adagrad>(
        net->parameters(), torch::optim::AdagradOptions(0.05).lr_decay(1e-3));
  }
  if (type == "LBFGS") {  // a history short enough to fill and roll over
    return std::make_shared<torch::optim::LBFGS>(
        net->parameters(), torch::optim::LBFGSOptions(0.05).max_iter(3).history_size(4));
  }
  throw std::runtime_error("unknown optimizer '" + type + "'");
}

struct Options {
  std::string mode, optimizer, driver = "trainer", dir, out, compression = "zstd";
  int64_t steps = 0;
  bool rng = true;
};

ackpt::DefaultCheckpointerArguments CheckpointerArgs(const Options& o) {
  ackpt::DefaultCheckpointerArguments a;
  a.save_dir = o.dir;
  a.model_state_save_dir = o.dir;
  a.compression = o.compression == "none" ? ackpt::Compression::kNone : ackpt::Compression::kZstd;
  a.writer_threads = 2;
  a.log_level = "WARN";
  return a;
}

void Dump(const std::string& path, Net& net, torch::optim::Optimizer& opt, ackpt::Scheduler& sched,
          int64_t step) {
  ackpt::StateDict d;
  d.set("params", ackpt::ModuleState(*net));
  d.set("optimizer", ackpt::CaptureOptimizer(opt, *net));
  d.set("scheduler", sched.get_state());
  d.set("rng", ackpt::CaptureRngState());
  d.set("step", step);
  ackpt::WriteOptions wo;
  wo.compression = ackpt::Compression::kNone;
  ackpt::WriteStateDict(d, path, wo);
}

// ---- driver 1: the Trainer ----

class Module : public ackpt::ModuleInterface {
 public:
  Module(Net net, std::string optimizer)
      : ModuleInterface(net), net_(net), optimizer_(std::move(optimizer)) {}
  int64_t num_train_batches(int64_t) override { return kStepsPerEpoch; }
  torch::Tensor train_step(int64_t, int64_t, int64_t) override { return Loss(net_, Batch()); }
  ackpt::OptimizersSchedulers get_optimizers_schedulers(int64_t, int64_t) override {
    auto opt = MakeOptimizer(optimizer_, net_);
    return {{opt}, {ackpt::MakeScheduler<torch::optim::StepLR>(*opt, 5, 0.7)}};
  }
  Net net_;
  std::string optimizer_;
};

int RunTrainer(const Options& o) {
  auto module = std::make_shared<Module>(Net(), o.optimizer);
  ackpt::TrainerArguments args;
  args.epochs = o.steps / kStepsPerEpoch;
  args.log_level = "WARN";
  args.checkpoint_rng = o.rng;
  args.checkpointer_args = CheckpointerArgs(o);
  if (o.mode == "straight") args.checkpointer_args.checkpoint = false;
  if (o.mode != "resume") args.checkpointer_args.resume_from_save_dir = false;
  ackpt::Trainer trainer(module, args);
  trainer.restore();  // train() would, but the resumed step is printed first
  if (o.mode == "resume") {
    std::printf("resumed at step %lld\n", static_cast<long long>(trainer.global_steps_finished()));
  }
  trainer.train();
  if (!o.out.empty()) {
    Dump(o.out, module->net_, *trainer.optimizers()[0], *trainer.schedulers()[0],
         trainer.global_steps_finished());
  }
  return 0;
}

// ---- driver 2: a hand-written loop driving the checkpointer ----

int RunLoop(const Options& o) {
  Net net;
  auto opt = MakeOptimizer(o.optimizer, net);
  auto sched = ackpt::MakeScheduler<torch::optim::StepLR>(*opt, 5, 0.7);
  int64_t step = 0;
  std::unique_ptr<ackpt::DefaultCheckpointer> ck;
  if (o.mode != "straight") ck = std::make_unique<ackpt::DefaultCheckpointer>(CheckpointerArgs(o));
  auto checkpoint = [&] {
    ackpt::Checkpoint c;
    c.module_interface_state = ackpt::ModuleState(*net);
    c.trainer_state.set("optimizer", ackpt::CaptureOptimizer(*opt, *net));
    c.trainer_state.set("scheduler", sched->get_state());
    if (o.rng) c.trainer_state.set("rng", ackpt::CaptureRngState());
    c.trainer_backend_state.set("step", step);
    return c;
  };
  if (o.mode == "resume") {
    ackpt::Checkpoint c = ck->load();
    if (c.empty()) throw std::runtime_error("nothing to resume from in " + o.dir);
    ackpt::LoadModuleState(*net, c.module_interface_state);
    ackpt::RestoreOptimizer(*opt, *net, c.trainer_state.at("optimizer").dict());
    sched->update_state(c.trainer_state.at("scheduler").dict());
    if (o.rng) ackpt::RestoreRngState(c.trainer_state.at("rng").dict());
    step = c.trainer_backend_state.at("step").to_int();
    std::printf("resumed at step %lld\n", static_cast<long long>(step));
  }
  net->train();
  while (step < o.steps) {
    const torch::Tensor x = Batch();
    // Through a closure, which LBFGS calls several times and the others once.
    opt->step([&] {
      net->zero_grad(/*set_to_none=*/true);
      torch::Tensor loss = Loss(net, x);
      loss.backward();
      return loss;
    });
    net->zero_grad(/*set_to_none=*/true);
    sched->step();
    ++step;
    if (ck && step % kStepsPerEpoch == 0) ck->save(checkpoint(), step);
  }
  if (ck) ck->save(checkpoint(), step, /*force=*/true);
  if (!o.out.empty()) Dump(o.out, net, *opt, *sched, step);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
      return argv[++i];
    };
    if (a == "--mode")
      o.mode = next();
    else if (a == "--optimizer")
      o.optimizer = next();
    else if (a == "--driver")
      o.driver = next();
    else if (a == "--steps")
      o.steps = std::stoll(next());
    else if (a == "--dir")
      o.dir = next();
    else if (a == "--out")
      o.out = next();
    else if (a == "--compression")
      o.compression = next();
    else if (a == "--no-rng")
      o.rng = false;
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if ((o.mode != "straight" && o.mode != "part" && o.mode != "resume") || o.steps <= 0 ||
      o.steps % kStepsPerEpoch != 0 || (o.mode != "straight" && o.dir.empty())) {
    std::fprintf(stderr, "usage: see the top of resume_worker.cc\n");
    return 2;
  }
  try {
    // Deterministic: one thread, one seed (model init and data).
    torch::set_num_threads(1);
    torch::manual_seed(1234);
    if (o.driver == "trainer") return RunTrainer(o);
    if (o.driver == "loop") return RunLoop(o);
    std::fprintf(stderr, "unknown driver %s\n", o.driver.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "resume_worker: %s\n", e.what());
    return 1;
  }
}
