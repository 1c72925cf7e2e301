// One rank of tiers_test's distributed runs: two tiers (a local directory per
// rank, the shared save_dir), peer replication over a Gloo transfer group,
// on a FileStore on 127.0.0.1.
//
//   tiers_worker --rank R --world W --store FILE --dir SAVE_DIR --local ROOT
//                [--steps N] [--persist-every K] [--force-last] [--resume]
//                [--kill-rank R --kill-at I] [--remove-persistent-at I] [--rank-local-only]
//
// The state at step s is a function of s and the rank, so a resumed rank
// checks what it loaded: replicated weights W(s) (written once across ranks)
// and a rank-local position. Local directories are ROOT/rank{r}. Prints
// "resumed I tier T restored X transferred B verified" (or "fresh", or
// "mismatch ..." and exits 4), then "counters ..." at the end; "error: ..."
// and exit 3 on a checkpoint error.
#include <signal.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <string>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>

#include "ackpt/distributed.h"
#include "ackpt/error.h"

namespace {

std::map<std::string, std::string> ParseArgs(int argc, char** argv) {
  std::map<std::string, std::string> a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0) continue;
    k = k.substr(2);
    if (k == "resume" || k == "force-last" || k == "rank-local-only") {
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

// 256 KiB of replicated weights: several transfer chunks of 64 KiB.
torch::Tensor Weights(int64_t step) {
  return torch::arange(256 * 256, torch::kFloat).reshape({256, 256}).add(step * 1000.0);
}
torch::Tensor Position(int rank, int64_t step) {
  return torch::full({8 + rank}, static_cast<double>(rank * 100000 + step), torch::kLong);
}

}  // namespace

int main(int argc, char** argv) {
  const auto a = ParseArgs(argc, argv);
  const int rank = static_cast<int>(Int(a, "rank", 0));
  const int world = static_cast<int>(Int(a, "world", 1));
  const int64_t steps = Int(a, "steps", 8);
  torch::set_num_threads(1);

  auto store = c10::make_intrusive<c10d::FileStore>(a.at("store"), world);
  auto opts = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(30));
  opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);

  ackpt::DistributedCheckpointerArguments args;
  args.checkpointer.save_dir = a.at("dir");
  args.checkpointer.model_state_save_dir = "";
  args.checkpointer.log_level = "WARN";
  args.checkpointer.writer_threads = 1;
  args.checkpointer.compression = ackpt::Compression::kNone;
  args.checkpointer.local_tier.dir = a.at("local") + "/rank{rank}";
  args.checkpointer.local_tier.persist_period = Int(a, "persist-every", 3);
  args.checkpointer.local_tier.retention.keep_last = 2;
  // Promotions queue rather than skip on a loaded machine: the tests check
  // which checkpoints reach save_dir.
  args.checkpointer.local_tier.max_pending_promotions = 16;
  args.process_group = pg;
  args.store = store;
  // --rank-local-only: nothing is replicated; every part is its rank's own.
  args.replicated = {"module_interface_state"};
  if (a.count("rank-local-only")) args.replicated.clear();
  args.commit_timeout_seconds = 20;
  args.transfer_hostname = "127.0.0.1";
  args.transfer_chunk_bytes = 64 << 10;

  try {
    ackpt::DistributedCheckpointer ck(args);
    int64_t start = 0;
    if (a.count("resume")) {
      ackpt::Checkpoint c = ck.load();
      if (c.empty()) {
        std::printf("fresh\n");
      } else {
        const ackpt::DistributedLoadInfo info = ck.last_load_info();
        const int64_t i = info.index;
        const bool ok = torch::equal(c.module_interface_state.at("w").tensor(), Weights(i)) &&
                        torch::equal(c.trainer_state.at("position").tensor(), Position(rank, i)) &&
                        c.trainer_state.at("step").to_int() == i;
        std::printf(
            "resumed %lld tier %s restored %d transferred %llu %s\n", static_cast<long long>(i),
            ackpt::TierName(info.tier), info.restored_from_replica ? 1 : 0,
            static_cast<unsigned long long>(info.bytes_transferred), ok ? "verified" : "mismatch");
        std::fflush(stdout);
        if (!ok) return 4;
        start = i + 1;
      }
    }
    for (int64_t s = start; s < steps; ++s) {
      ackpt::Checkpoint c;
      c.module_interface_state.set("w", Weights(s));
      c.trainer_state.set("position", Position(rank, s));
      c.trainer_state.set("step", s);
      const bool force = a.count("force-last") && s == steps - 1;
      ck.save(c, s, force);
      if (rank == 0 && s == Int(a, "remove-persistent-at", -1)) {
        ck.wait();
        // The shared file system goes away under the running job.
        std::system(("rm -rf '" + a.at("dir") + "'").c_str());
      }
      if (rank == Int(a, "kill-rank", -1) && s == Int(a, "kill-at", -1)) {
        ck.wait();
        std::fflush(stdout);
        ::kill(::getpid(), SIGKILL);
      }
    }
    ck.wait();
    const ackpt::CheckpointerCounters n = ck.counters();
    std::printf(
        "counters saves=%llu promoted=%llu promote_failed=%llu promote_skipped=%llu "
        "replicated=%llu replicate_failed=%llu error=[%s]\n",
        static_cast<unsigned long long>(n.saves_completed),
        static_cast<unsigned long long>(n.promotions_completed),
        static_cast<unsigned long long>(n.promotions_failed),
        static_cast<unsigned long long>(n.promotions_skipped),
        static_cast<unsigned long long>(n.replications_completed),
        static_cast<unsigned long long>(n.replications_failed), ck.promotion_error().c_str());
  } catch (const ackpt::Error& e) {
    std::printf("error: %s\n", e.what());
    std::fflush(stdout);
    return 3;
  }
  std::fflush(stdout);
  return 0;
}
