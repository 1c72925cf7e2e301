// Checkpointing an optimizer ackpt has never heard of.
//
// Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")
// is written in lion.h as a torch::optim::Optimizer, the way LibTorch's own are:
// hyper-parameters in an options class, per-parameter state in a param state
// class, both declared with TORCH_ARG. One call to ackpt::RegisterOptimizer
// lists those fields; from then on CaptureOptimizer / RestoreOptimizer (and
// the Trainer) handle Lion like Adam.
//
// The example trains a small regression model for 30 steps without
// interruption, then again for 15 steps with asynchronous checkpoints every 5,
// throws everything away, resumes from the newest checkpoint into freshly
// built objects and trains the remaining 15 steps. Parameters and optimizer
// state must match the uninterrupted run bit for bit, with and without
// compression; the exit status says whether they do.
//
//   ackpt_example_custom_optimizer [DIR]   (default: a fresh directory under /tmp)
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "ackpt/ackpt.h"
#include "ackpt/optimizer_registry.h"
#include "ackpt/torch_state.h"
#include "lion.h"

namespace {

// Once, before the first capture or restore. The name is what checkpoints
// record as the optimizer type: keep it stable.
void RegisterLion() {
  ackpt::RegisterOptimizer<Lion, LionOptions, LionParamState>(
      "Lion", {ACKPT_ARG(lr), ACKPT_ARG(betas), ACKPT_ARG(weight_decay)},
      {ACKPT_ARG(step), ACKPT_ARG(exp_avg)});
}

// ---- a training loop checkpointed with ackpt ---------------------------------------

constexpr int64_t kTotalSteps = 30;
constexpr int64_t kInterruptAt = 15;
constexpr int64_t kEvery = 5;

struct Run {
  torch::nn::Sequential net{torch::nn::Linear(8, 32), torch::nn::Tanh(), torch::nn::Linear(32, 1)};
  Lion opt{net->parameters(), LionOptions(3e-3).weight_decay(0.1)};
  std::shared_ptr<ackpt::Scheduler> sched =
      ackpt::MakeScheduler<torch::optim::StepLR>(opt, 10, 0.5);
  int64_t step = 0;

  ackpt::Checkpoint Capture() const {
    ackpt::Checkpoint c;
    c.module_interface_state = ackpt::ModuleState(*net);
    c.trainer_state.set("optimizer", ackpt::CaptureOptimizer(opt, *net));
    c.trainer_state.set("scheduler", sched->get_state());
    c.trainer_state.set("rng", ackpt::CaptureRngState());
    c.trainer_backend_state.set("step", step);
    return c;
  }

  void Restore(const ackpt::Checkpoint& c) {
    ackpt::LoadModuleState(*net, c.module_interface_state);
    ackpt::RestoreOptimizer(opt, *net, c.trainer_state.at("optimizer").dict());
    sched->update_state(c.trainer_state.at("scheduler").dict());
    ackpt::RestoreRngState(c.trainer_state.at("rng").dict());
    step = c.trainer_backend_state.at("step").to_int();
  }

  // Trains until step `until`, saving every kEvery steps when given a checkpointer.
  void Train(int64_t until, ackpt::DefaultCheckpointer* checkpointer) {
    while (step < until) {
      torch::Tensor x = torch::randn({16, 8});  // the RNG is checkpointed: same batches
      torch::Tensor loss = torch::mse_loss(net->forward(x), x.sum(1, true).sin());
      loss.backward();
      opt.step();
      net->zero_grad(/*set_to_none=*/true);
      sched->step();
      ++step;
      if (checkpointer && step % kEvery == 0) checkpointer->save(Capture(), step);
    }
  }
};

bool ResumesBitExact(const std::string& dir, ackpt::Compression compression) {
  torch::manual_seed(7);
  Run straight;
  straight.Train(kTotalSteps, nullptr);

  ackpt::DefaultCheckpointerArguments args;
  args.save_dir = dir;
  args.compression = compression;
  args.log_level = "WARN";
  {
    torch::manual_seed(7);
    Run first;
    ackpt::DefaultCheckpointer checkpointer(args);
    first.Train(kInterruptAt, &checkpointer);
  }  // "interrupted": the checkpointer's destructor drains the pending saves

  torch::manual_seed(123);  // a new process starts from other weights
  Run resumed;
  ackpt::DefaultCheckpointer checkpointer(args);
  const ackpt::Checkpoint c = checkpointer.load();
  if (c.empty()) {
    std::fprintf(stderr, "no checkpoint found in %s\n", dir.c_str());
    return false;
  }
  resumed.Restore(c);
  std::printf("  resumed at step %lld from %s\n", static_cast<long long>(resumed.step),
              checkpointer.last_loaded_path().c_str());
  resumed.Train(kTotalSteps, &checkpointer);
  checkpointer.wait();

  std::string why;
  const bool same = ackpt::ExactlyEqual(straight.Capture().module_interface_state,
                                        resumed.Capture().module_interface_state, &why) &&
                    ackpt::ExactlyEqual(ackpt::CaptureOptimizer(straight.opt, *straight.net),
                                        ackpt::CaptureOptimizer(resumed.opt, *resumed.net), &why);
  if (!same) std::fprintf(stderr, "  differs from the uninterrupted run at %s\n", why.c_str());
  return same;
}

}  // namespace

int main(int argc, char** argv) {
  std::string root;
  if (argc > 1) {
    root = argv[1];
  } else {
    char tmpl[] = "/tmp/ackpt-custom-optimizer-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) {
      std::perror("mkdtemp");
      return 1;
    }
    root = tmpl;
  }
  try {
    torch::set_num_threads(1);  // deterministic reductions
    RegisterLion();
    bool ok = true;
    for (auto [compression, name] : {std::make_pair(ackpt::Compression::kNone, "none"),
                                     std::make_pair(ackpt::Compression::kZstd, "zstd")}) {
      std::printf("Lion, compression %s:\n", name);
      const bool same = ResumesBitExact(root + "/" + name, compression);
      std::printf("  %s\n", same ? "bit-exact after resume" : "NOT bit-exact after resume");
      ok = ok && same;
    }
    if (argc <= 1) std::filesystem::remove_all(root);
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "custom_optimizer: %s\n", e.what());
    return 1;
  }
}
