// Issue 22 item 4 — peak RSS when a Trainer resumes with AdamW: the module
// and the optimizer state are read into the tensors that keep them, so the
// process should peak at the live state (parameters + AdamW's two moments)
// plus bounded buffers, not at twice the state.
//
// Three fresh child processes (this program re-executed with --child), so
// every peak belongs to one of them:
//   train   a module of --size bytes of fp32 parameters (8 tensors), AdamW,
//           one Trainer epoch of one step: checkpoint_0 with the optimizer
//           state, saved with the given compression. Then the same module
//           and optimizer with torch::save (+ fsync): the baseline's files.
//   ackpt   a fresh module and Trainer(module, args) over the same save_dir:
//           the constructor loads the checkpoint in place (optimizer state
//           created first, CreateOptimizerState), restore() hands it over.
//   torch   a fresh module and AdamW, torch::load of both files: what a
//           LibTorch user resuming from torch::save would do.
// In each resuming child, peak = VmHWM after the resume, reset
// (/proc/self/clear_refs) just before the module is built; live = the bytes
// of the module's parameters and of every tensor in the optimizer's state
// once resumed; extra = peak - RSS before the module - live. The target
// (issue 22): extra <= 64 MiB.
//
//   ackpt_bench_resume [--size 1G] [--compression zstd|none] [--dir DIR]
//                      [--json FILE] [--quick]
#include "ackpt/trainer.h"
#include "bench_common.h"

using namespace bench;

namespace {

constexpr int kPieces = 8;

// kPieces fp32 parameters of about `bytes` in all.
struct Params : torch::nn::Module {
  explicit Params(uint64_t bytes) {
    const int64_t per = static_cast<int64_t>(bytes / 4 / kPieces);
    for (int i = 0; i < kPieces; ++i)
      register_parameter("p" + std::to_string(i), torch::randn({per}).mul_(0.02));
  }
};

class Module : public ackpt::ModuleInterface {
 public:
  explicit Module(std::shared_ptr<Params> p) : ModuleInterface(p), params_(std::move(p)) {}
  int64_t num_train_batches(int64_t) override { return 1; }
  torch::Tensor train_step(int64_t, int64_t, int64_t) override {
    torch::Tensor loss = torch::zeros({});
    for (const auto& p : params_->parameters()) loss = loss + p.square().sum().mul(1e-3);
    return loss;
  }
  ackpt::OptimizersSchedulers get_optimizers_schedulers(int64_t, int64_t) override {
    return {{MakeOptimizer(*params_)}, {}};
  }
  static std::shared_ptr<torch::optim::AdamW> MakeOptimizer(Params& p) {
    return std::make_shared<torch::optim::AdamW>(p.parameters(), torch::optim::AdamWOptions(1e-3));
  }

 private:
  std::shared_ptr<Params> params_;
};

ackpt::TrainerArguments TrainerArgs(const std::string& dir, ackpt::Compression compression) {
  ackpt::TrainerArguments a;
  a.epochs = 1;
  a.log_level = "WARN";
  a.clip_grads = false;
  a.checkpoint_rng = false;
  a.checkpointer_args.save_dir = dir + "/ckpt";
  a.checkpointer_args.model_state_save_dir = "";
  a.checkpointer_args.compression = compression;
  a.checkpointer_args.log_level = "WARN";
  return a;
}

uint64_t TensorBytes(const torch::nn::Module& m, const torch::optim::Optimizer& opt) {
  uint64_t n = 0;
  for (const auto& p : m.parameters()) n += p.nbytes();
  for (const auto& kv : ackpt::FlattenTensors(ackpt::CaptureOptimizer(opt, m)))
    n += kv.second.nbytes();
  return n;
}

json TrainChild(uint64_t size, const std::string& dir, ackpt::Compression compression) {
  auto params = std::make_shared<Params>(size);
  auto module = std::make_shared<Module>(params);
  ackpt::Trainer trainer(module, TrainerArgs(dir, compression));
  trainer.train();  // one step, checkpoint_0 (durable when train() returns)
  // The baseline's files: the same module and optimizer through torch::save.
  const std::string m = dir + "/module.pt", o = dir + "/optimizer.pt";
  torch::save(std::static_pointer_cast<torch::nn::Module>(params), m);
  torch::save(*trainer.optimizers()[0], o);
  FsyncPath(m);
  FsyncPath(o);
  json r;
  r["state_bytes"] = TensorBytes(*params, *trainer.optimizers()[0]);
  r["torch_bytes"] = FileSize(m) + FileSize(o);
  return r;
}

// Builds the module, resumes and measures; `resume` loads into the module it
// is given and returns the optimizer it resumed (its caller keeps whatever
// else it needs alive).
json ResumeChild(uint64_t size, const std::function<std::shared_ptr<torch::optim::Optimizer>(
                                    std::shared_ptr<Params>)>& resume) {
  const bool reset = ResetPeakRss();
  const uint64_t before = RssBytes();
  const auto t0 = Clock::now();
  auto params = std::make_shared<Params>(size);
  auto opt = resume(params);
  const double seconds = Since(t0);
  const uint64_t peak = PeakRssBytes(), live = TensorBytes(*params, *opt);
  json r;
  r["peak_reset"] = reset;
  r["before_bytes"] = before;
  r["peak_bytes"] = peak;
  r["live_bytes"] = live;
  r["after_bytes"] = RssBytes();
  r["extra_bytes"] = peak > before + live ? peak - before - live : 0;
  r["seconds"] = seconds;  // module built + resumed
  return r;
}

json AckptChild(uint64_t size, const std::string& dir, ackpt::Compression compression) {
  std::shared_ptr<ackpt::Trainer> trainer;
  return ResumeChild(size, [&](std::shared_ptr<Params> params) {
    auto module = std::make_shared<Module>(params);
    trainer = std::make_shared<ackpt::Trainer>(module, TrainerArgs(dir, compression));
    trainer->restore();
    if (trainer->last_epoch() != 0)
      throw std::runtime_error("the Trainer did not resume from checkpoint 0");
    return trainer->optimizers()[0];
  });
}

json TorchChild(uint64_t size, const std::string& dir) {
  return ResumeChild(size, [&](std::shared_ptr<Params> params) {
    auto base = std::static_pointer_cast<torch::nn::Module>(params);
    torch::load(base, dir + "/module.pt");
    auto opt = Module::MakeOptimizer(*params);
    torch::load(*opt, dir + "/optimizer.pt");
    return std::static_pointer_cast<torch::optim::Optimizer>(opt);
  });
}

}  // namespace

int main(int argc, char** argv) {
  Args a(argc, argv,
         "usage: ackpt_bench_resume [--size 1G] [--compression zstd|none] [--dir DIR] "
         "[--json FILE] [--quick]\n"
         "Peak RSS of a Trainer resuming AdamW from ackpt against torch::load, in fresh child "
         "processes.",
         {"quick"});
  const bool quick = a.Flag("quick");
  const std::string child = a.Str("child", "");
  const uint64_t size = ParseBytes(a.Str("size", quick ? "16M" : "1G"));
  const std::string comp = a.Str("compression", "zstd");
  const std::string dir = a.Str("dir", DiskBenchDir("resume"));
  const std::string json_out = a.Str("json", "");
  const std::string child_out = a.Str("out", "");
  a.Done();
  if (comp != "zstd" && comp != "none") {
    std::fprintf(stderr, "--compression must be zstd or none\n");
    return 2;
  }
  const ackpt::Compression compression =
      comp == "zstd" ? ackpt::Compression::kZstd : ackpt::Compression::kNone;

  if (!child.empty()) {
    torch::ones({16}).sum();  // LibTorch initialized before any RSS baseline
    json r;
    try {
      if (child == "train")
        r = TrainChild(size, dir, compression);
      else if (child == "ackpt")
        r = AckptChild(size, dir, compression);
      else if (child == "torch")
        r = TorchChild(size, dir);
      else
        throw std::invalid_argument("unknown --child " + child);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child %s: %s\n", child.c_str(), e.what());
      return 1;
    }
    WriteJson(child_out, r);
    return 0;
  }

  FreshDir(dir);
  const std::string self = SelfExe();
  json j = RunInfo("resume", quick);
  j["param_bytes"] = size;
  j["compression"] = comp;
  j["target_extra_bytes"] = 64 << 20;
  std::printf("resume: %s of fp32 parameters + AdamW, compression %s, dir %s\n",
              SizeLabel(size).c_str(), comp.c_str(), dir.c_str());
  std::fflush(stdout);  // before the children's output
  int rc = 0;
  for (const std::string mode : {"train", "ackpt", "torch"}) {
    const std::string out = dir + "/" + mode + ".json";
    j[mode] = RunChild({self, "--child", mode, "--size", std::to_string(size), "--compression",
                        comp, "--dir", dir, "--out", out},
                       out);
    if (j[mode].contains("error")) {
      std::printf("  %s child failed: %s\n", mode.c_str(),
                  j[mode]["error"].get<std::string>().c_str());
      rc = 1;
      if (mode == "train") break;
      continue;
    }
    if (mode != "train") {
      const json& m = j[mode];
      std::printf(
          "  %-5s live %.0f MiB, peak above the process before the module %.0f MiB: "
          "extra %.0f MiB, %.2f s\n",
          mode.c_str(), m["live_bytes"].get<double>() / 1048576.0,
          (m["peak_bytes"].get<double>() - m["before_bytes"].get<double>()) / 1048576.0,
          m["extra_bytes"].get<double>() / 1048576.0, m["seconds"].get<double>());
    }
    std::fflush(stdout);
  }
  WriteJson(json_out, j);
  RemoveTree(dir);
  return rc;
}
