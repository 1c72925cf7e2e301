// The context README.md's C++ snippets run in (see extract_snippets.py): the
// names they use without declaring them, kept as small as the prose implies
// (a tiny model, an AdamW, a few hundred steps), and the driver that runs one
// snippet in a fresh directory.
#pragma once

#include <ackpt/ackpt.h>
#include <ackpt/distributed.h>
#include <ackpt/distributed_backend.h>
#include <ackpt/optimizer_registry.h>
#include <ackpt/preemption.h>
#include <ackpt/torch_state.h>
#include <ackpt/trainer.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>

#include "lion.h"  // examples/lion.h: the Lion of the optimizer-registry snippet

namespace readme {

struct NetImpl : torch::nn::Module {
  NetImpl()
      : fc1(register_module("fc1", torch::nn::Linear(8, 16))),
        fc2(register_module("fc2", torch::nn::Linear(16, 1))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return fc2->forward(torch::relu(fc1->forward(x)));
  }
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Net);

inline std::pair<torch::Tensor, torch::Tensor> next_batch() {
  torch::Tensor x = torch::randn({4, 8});
  return {x, x.sum(1, /*keepdim=*/true)};
}

inline torch::Tensor forward_and_loss(Net& model,
                                      const std::pair<torch::Tensor, torch::Tensor>& batch) {
  return torch::mse_loss(model->forward(batch.first), batch.second);
}

inline void train_one_step(Net& model, torch::optim::Optimizer& optimizer) {
  optimizer.zero_grad();
  forward_and_loss(model, next_batch()).backward();
  optimizer.step();
}

inline ackpt::Checkpoint MakeCheckpoint(Net& model, torch::optim::Optimizer& optimizer,
                                        int64_t step) {
  ackpt::Checkpoint c;
  c.module_interface_state = ackpt::ModuleState(*model);
  c.trainer_state.set("optimizer", ackpt::CaptureOptimizer(optimizer, *model));
  c.trainer_backend_state.set("step", step);
  return c;
}

// A scheduler of the user's own, as the scheduler-registry snippet has it.
class WarmupCosineLR : public torch::optim::LRScheduler {
 public:
  WarmupCosineLR(torch::optim::Optimizer& optimizer, int64_t warmup_steps, int64_t total_steps)
      : LRScheduler(optimizer), warmup_steps_(warmup_steps), total_steps_(total_steps) {}
  TORCH_ARG(int64_t, restarts) = 0;

 private:
  std::vector<double> get_lrs() override {
    std::vector<double> lrs = get_current_lrs();
    const double t = static_cast<double>(step_count_);
    const double scale =
        t < warmup_steps_ ? (t + 1) / warmup_steps_ : 0.5 * (1 + std::cos(M_PI * t / total_steps_));
    for (double& lr : lrs) lr *= scale;
    return lrs;
  }
  int64_t warmup_steps_, total_steps_;
};

template <typename... T>
void Unused(const T&...) {}

struct Snippet {
  const char* name;
  bool run;  // run by ctest (else compiled only)
  int (*fn)();
};

// readme_snippets --list: the snippets ctest runs; readme_snippets NAME: runs
// one in a fresh temporary directory (removed afterwards), exit code = the
// snippet's (0 unless it returns one), 1 with the message on an exception.
template <size_t N>
int Main(int argc, char** argv, const Snippet (&snippets)[N]) {
  if (argc == 2 && std::strcmp(argv[1], "--list") == 0) {
    for (const Snippet& s : snippets) {
      if (s.run) std::printf("%s\n", s.name);
    }
    return 0;
  }
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s --list | SNIPPET\n", argv[0]);
    return 2;
  }
  for (const Snippet& s : snippets) {
    if (std::strcmp(argv[1], s.name) != 0) continue;
    std::string dir = (std::filesystem::temp_directory_path() / "ackpt_readme_XXXXXX").string();
    if (mkdtemp(dir.data()) == nullptr) {
      std::perror("mkdtemp");
      return 1;
    }
    std::filesystem::current_path(dir);
    int rc = 1;
    try {
      torch::manual_seed(0);
      rc = s.fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s (README.md line %s) threw: %s\n", s.name, s.name + 8, e.what());
    }
    std::filesystem::current_path("/");
    std::filesystem::remove_all(dir);
    return rc;
  }
  std::fprintf(stderr, "no snippet named %s\n", argv[1]);
  return 2;
}

}  // namespace readme

// What every snippet may use: a model, its optimizer, a step counter, a
// checkpointer's arguments (save_dir "checkpoints"), make_checkpoint(step).
#define ACKPT_README_CONTEXT_BASE                                                                \
  readme::Net model;                                                                             \
  torch::optim::AdamW optimizer(model->parameters(), 1e-3);                                      \
  auto opt = std::make_shared<torch::optim::AdamW>(model->parameters(), 1e-3);                   \
  const int64_t total_steps = 300;                                                               \
  int64_t step = 0;                                                                              \
  ackpt::DefaultCheckpointerArguments args;                                                      \
  args.save_dir = "checkpoints";                                                                 \
  args.log_level = "WARN";                                                                       \
  auto make_checkpoint = [&](int64_t s) { return readme::MakeCheckpoint(model, optimizer, s); }; \
  readme::Unused(total_steps, step, opt, make_checkpoint);

// `checkpointer`: a DefaultCheckpointer on args, holding one checkpoint.
#define ACKPT_README_CONTEXT_CHECKPOINTER        \
  ackpt::DefaultCheckpointer checkpointer(args); \
  checkpointer.save(make_checkpoint(1), 1, /*force=*/true);

// `path`: a file holding {"model": the model's state}; `fc1`; `targets`.
#define ACKPT_README_CONTEXT_FILE                                                       \
  const std::string path = "model.safetensors";                                         \
  ackpt::WriteStateDict(ackpt::StateDict{{"model", ackpt::ModuleState(*model)}}, path); \
  auto fc1 = model->fc1;                                                                \
  ackpt::StateDict targets{{"model", ackpt::ModuleState(*model)}};                      \
  readme::Unused(fc1, targets);

// Compile-only names of the distributed snippet.
#define ACKPT_README_CONTEXT_DIST                 \
  c10::intrusive_ptr<c10d::ProcessGroup> pg;      \
  c10::intrusive_ptr<c10d::Store> store;          \
  std::shared_ptr<ackpt::ModuleInterface> module; \
  ackpt::TrainerArguments trainer_args;           \
  readme::Unused(pg, store, module, trainer_args);
