// One rank of a small data-parallel training run for distributed_test:
// replicated weights and momentum (averaged gradients over Gloo), rank-local
// RNG, data position and a rank-local shard, checkpointed through
// ackpt::DistributedCheckpointer on a FileStore on 127.0.0.1.
//
//   dist_worker --rank R --world W --store FILE --dir DIR --steps N
//               [--save-every K] [--resume] [--out FILE] [--compression none|zstd]
//               [--commit-timeout S] [--die-at-save I --die-rank R]
//               [--die-before-manifest I] [--fail-write-at I --fail-rank R]
//               [--second-dir DIR2] [--construct-delay-rank R --construct-delay-ms M]
// [--incremental] [--keep-last N]
// --incremental saves incrementally, with a frozen replicated tensor and a
// frozen rank-local one in the state (both in --out);
// --second-dir saves every checkpoint through a second checkpointer with the
// same prefix too; --construct-delay-* makes rank R construct them late.
// Prints "resumed I" (or "fresh") after load(), and "error: ..." on a
// checkpoint error (exit 3). --out dumps the final state (plain safetensors).
#include <ATen/CPUGeneratorImpl.h>
#include <signal.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "ackpt/distributed.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"

namespace {

std::map<std::string, std::string> ParseArgs(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0) continue;
    k = k.substr(2);
    if (k == "resume" || k == "incremental") {
      a[k] = "1";
    } else if (i + 1 < argc) {
      a[k] = argv[++i];
    }
  }
  return a;
}

int64_t Int(const std::map<std::string, std::string>& a, const std::string& k, int64_t def) {
  auto it = a.find(k);
  return it == a.end() ? def : std::stoll(it->second);
}

// Test hooks on the file system: die (SIGKILL) or fail a write at a given save.
class HookEnv : public ackpt::EnvWrapper {
 public:
  HookEnv() : EnvWrapper(ackpt::Env::Default()) {}
  std::string die_before_manifest;  // a manifest path: SIGKILL before its rename
  std::string fail_write_of;        // a part name prefix: its writes fail with EIO
  void RenameFile(const std::string& from, const std::string& to) override {
    if (!die_before_manifest.empty() && to == die_before_manifest) ::kill(::getpid(), SIGKILL);
    EnvWrapper::RenameFile(from, to);
  }
  std::unique_ptr<ackpt::WritableFile> NewWritableFile(const std::string& p) override {
    if (!fail_write_of.empty() && p.find(fail_write_of) != std::string::npos)
      throw ackpt::Error::IO("open", p, EIO);
    return EnvWrapper::NewWritableFile(p);
  }
};

}  // namespace

int main(int argc, char** argv) {
  const auto a = ParseArgs(argc, argv);
  const int rank = static_cast<int>(Int(a, "rank", 0));
  const int world = static_cast<int>(Int(a, "world", 1));
  const int64_t steps = Int(a, "steps", 12);
  const int64_t save_every = Int(a, "save-every", 4);
  const std::string dir = a.at("dir");
  torch::set_num_threads(1);

  auto store = c10::make_intrusive<c10d::FileStore>(a.at("store"), world);
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(20));
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);

  HookEnv env;
  if (Int(a, "die-before-manifest", -1) >= 0 && rank == 0) {
    env.die_before_manifest =
        ackpt::JoinPath(dir, ackpt::ManifestFileName("model", Int(a, "die-before-manifest", -1)));
  }
  if (Int(a, "fail-write-at", -1) >= 0 && rank == Int(a, "fail-rank", -1)) {
    env.fail_write_of = "model_" + std::to_string(Int(a, "fail-write-at", -1)) + ".rank";
  }
  ackpt::DistributedCheckpointerArguments args;
  args.checkpointer.save_dir = dir;
  args.checkpointer.model_state_save_dir = "";
  args.checkpointer.log_level = "WARN";
  args.checkpointer.writer_threads = 1;
  args.checkpointer.chunk_size = 64 << 10;
  args.checkpointer.env = &env;
  args.checkpointer.compression = a.count("compression") && a.at("compression") == "none"
                                      ? ackpt::Compression::kNone
                                      : ackpt::Compression::kZstd;
  args.checkpointer.retention.keep_last = static_cast<int64_t>(Int(a, "keep-last", 0));
  const bool incremental = a.count("incremental") > 0;
  args.checkpointer.incremental.enabled = incremental;
  args.process_group = pg;
  args.store = store;
  args.replicated = {"module_interface_state", "trainer_state/optimizer"};
  args.commit_timeout_seconds = static_cast<double>(Int(a, "commit-timeout", 30));

  // The run's state.
  torch::Tensor w = torch::arange(64 * 64, torch::kFloat).reshape({64, 64}).mul(1e-4);
  torch::Tensor b = torch::zeros({64});
  torch::Tensor momentum = torch::zeros({64, 64});
  torch::Tensor shard = torch::zeros({16 + rank});  // rank-local, of a rank-dependent size
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1000 + rank);
  int64_t step = 0;
  // --incremental: never modified after construction (referenced from then on).
  torch::Tensor frozen = torch::arange(128 * 64, torch::kFloat).reshape({128, 64}).mul(1e-3);
  torch::Tensor table = torch::full({32, 16}, static_cast<float>(rank));

  try {
    if (rank == Int(a, "construct-delay-rank", -1)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(Int(a, "construct-delay-ms", 0)));
    }
    ackpt::DistributedCheckpointer ck(args);
    std::unique_ptr<ackpt::DistributedCheckpointer> second;
    if (a.count("second-dir")) {
      ackpt::DistributedCheckpointerArguments second_args = args;
      second_args.checkpointer.save_dir = a.at("second-dir");
      second = std::make_unique<ackpt::DistributedCheckpointer>(second_args);
    }
    if (a.count("resume")) {
      ackpt::Checkpoint c = ck.load();
      if (c.empty()) {
        std::printf("fresh\n");
      } else {
        w.copy_(c.module_interface_state.at("w").tensor());
        b.copy_(c.module_interface_state.at("b").tensor());
        momentum.copy_(c.trainer_state.at("optimizer").dict().at("momentum").tensor());
        gen.set_state(c.trainer_state.at("rng").tensor());
        step = c.trainer_backend_state.at("step").to_int();
        shard.copy_(c.trainer_backend_state.at("shard").tensor());
        if (incremental) {
          frozen.copy_(c.module_interface_state.at("frozen").tensor());
          table.copy_(c.trainer_backend_state.at("table").tensor());
        }
        std::printf("resumed %lld\n", static_cast<long long>(step));
      }
      std::fflush(stdout);
    }
    while (step < steps) {
      torch::Tensor x = torch::randn({32, 64}, gen);
      torch::Tensor grad = x.t().mm(x).div(32).mul(1e-3).sub(w.mul(1e-2));
      std::vector<torch::Tensor> g{grad};
      pg->allreduce(g)->wait();  // the trainer's own collective, while saves run
      grad = g[0].div(world);
      momentum.mul_(0.9).add_(grad);
      w.sub_(momentum.mul(0.1));
      b.add_(x.mean(0).mul(1e-3));
      std::vector<torch::Tensor> bb{b};
      pg->allreduce(bb)->wait();
      b.div_(world);
      shard.add_(x.narrow(1, 0, shard.size(0)).mean(0));
      ++step;
      if (step % save_every == 0) {
        ackpt::Checkpoint c;
        c.module_interface_state.set("w", w);
        c.module_interface_state.set("b", b);
        c.trainer_state.set("optimizer", ackpt::StateDict{{"momentum", momentum}, {"lr", 0.1}});
        c.trainer_state.set("rng", gen.get_state());
        c.trainer_backend_state.set("step", step);
        c.trainer_backend_state.set("shard", shard);
        if (incremental) {
          c.module_interface_state.set("frozen", frozen);
          c.trainer_backend_state.set("table", table);
        }
        ck.save(c, step);
        if (second) second->save(c, step);
        if (step == Int(a, "die-at-save", -1) && rank == Int(a, "die-rank", -1)) {
          ::kill(::getpid(), SIGKILL);  // while its part is being written
        }
      }
    }
    ck.wait();
    if (second) second->wait();
  } catch (const ackpt::Error& e) {
    std::printf("error: %s\n", e.what());
    std::fflush(stdout);
    return 3;
  }
  if (a.count("out")) {
    ackpt::StateDict out{
        {"w", w},      {"b", b}, {"momentum", momentum}, {"shard", shard}, {"rng", gen.get_state()},
        {"step", step}};
    if (incremental) {
      out.set("frozen", frozen);
      out.set("table", table);
    }
    ackpt::WriteOptions o;
    o.compression = ackpt::Compression::kNone;
    ackpt::WriteStateDict(out, a.at("out"), o);
  }
  return 0;
}
