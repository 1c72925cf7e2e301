// The demo with two tiers (issue 25): --local-dir for every checkpoint,
// --persist-every K for the ones also promoted to --save-dir.
//  - one process: the right files in each tier (promoted ones byte for byte
//    the local ones), --resume from the local tier, and from the persistent
//    tier once the local directory is gone;
//  - SIGKILL while a (rate-capped) promotion is copying: every file in
//    --save-dir still verifies (`ackpt verify`) and --resume works;
//  - 4 ranks, one local directory ("node") each: one rank SIGKILLed and its
//    directory deleted (a lost node); --resume on 4 ranks takes the newest
//    local checkpoint, rank 2's part from rank 3's replica, and trains on to
//    the very model of an uninterrupted run.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

#include "ackpt/env.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "child_process.h"
#include "io/atomic_file.h"  // IsTempFileName (white-box)
#include "test_util.h"

#ifndef ACKPT_DEMO
#error "ACKPT_DEMO must name the ackpt_demo binary"
#endif
#ifndef ACKPT_CLI
#error "ACKPT_CLI must name the ackpt tool"
#endif

namespace ackpt {
namespace {

using testing::ChildProcess;
using testing::ReadFileBytes;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The tiny model on one thread, keeping every checkpoint in --save-dir.
std::vector<std::string> DemoArgs(const std::string& save_dir, const std::string& local_dir,
                                  int64_t steps, int64_t every, std::vector<std::string> more) {
  std::vector<std::string> a{ACKPT_DEMO,
                             "--model-size",
                             "tiny",
                             "--steps",
                             std::to_string(steps),
                             "--checkpoint-every",
                             std::to_string(every),
                             "--save-dir",
                             save_dir,
                             "--keep-last",
                             "0",
                             "--threads",
                             "1",
                             "--local-dir",
                             local_dir};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

// The launcher's children (the ranks of --nproc).
std::vector<pid_t> Children(pid_t launcher) {
  std::vector<pid_t> out;
  std::ifstream in("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) +
                   "/children");
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

struct DemoRun {
  int rc = -1;
  std::string out;
  double val_loss = NAN;
};

// Runs the demo to its end; on a timeout kills the ranks, then the launcher.
DemoRun RunDemo(std::vector<std::string> args, const std::string& log, double timeout_seconds) {
  DemoRun r;
  ChildProcess demo(std::move(args), log);
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_seconds);
  while (!demo.Exited() && Clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (!demo.Exited()) {
    for (pid_t p : Children(demo.pid())) kill(p, SIGKILL);
    demo.Signal(SIGKILL);
  }
  r.rc = demo.WaitOrKill(10);
  r.out = ReadFileBytes(log);
  std::smatch m;
  if (std::regex_search(r.out, m, std::regex("training: +\\d+ steps in .*val_loss ([0-9.na]+)")))
    r.val_loss = std::stod(m[1]);
  return r;
}

bool Has(const std::string& out, const std::string& s) { return out.find(s) != std::string::npos; }

// Names in dir; none if it does not exist (yet).
std::vector<std::string> Names(const std::string& dir) {
  try {
    return testing::ListDir(dir);
  } catch (const Error&) {
    return {};
  }
}

// Checkpoint indices (single-process files) in dir, ascending.
std::vector<int64_t> Indices(const std::string& dir) {
  std::vector<int64_t> out;
  for (const auto& n : Names(dir))
    if (auto i = ParseCheckpointIndex(n, "model")) out.push_back(*i);
  std::sort(out.begin(), out.end());
  return out;
}
// Distributed manifests in dir, ascending.
std::vector<int64_t> Manifests(const std::string& dir) {
  std::vector<int64_t> out;
  for (const auto& n : Names(dir))
    if (auto i = ParseManifestIndex(n, "model")) out.push_back(*i);
  std::sort(out.begin(), out.end());
  return out;
}
std::vector<std::string> TempFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& n : Names(dir))
    if (IsTempFileName(n)) out.push_back(n);
  return out;
}

std::string Ckpt(int64_t i) { return CheckpointFileName("model", i, /*compressed=*/true); }

// Every non-hidden file of dir verifies: `ackpt verify` on the checkpoint
// files, parts and model files (every checksum), and `ackpt ls --verify`,
// which also reads the distributed manifests and verifies their parts.
void ExpectVerifies(const std::string& dir) {
  std::string files;
  int n = 0;
  for (const auto& name : Names(dir)) {
    if (name.empty() || name[0] == '.') continue;
    ++n;
    if (ParseManifestIndex(name, "model")) continue;  // not a safetensors file: ls below
    files += " '" + JoinPath(dir, name) + "'";
  }
  ASSERT_GT(n, 0) << dir;
  std::string out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " verify --quiet" + files, &out), 0)
      << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " ls --verify '" + dir + "'", &out), 0)
      << out;
  EXPECT_FALSE(Has(out, "unreadable")) << out;
}

TEST(DemoTiersTest, LocalEveryCheckpointPersistentEveryThird) {
  TempDir dir;
  const auto t0 = Clock::now();
  const std::string save = dir.file("shared"), local = dir.file("local");
  const std::vector<std::string> tiers{"--persist-every", "3", "--local-keep", "4"};

  // Checkpoints at steps 2, 4, ..., 12; the local tier keeps the newest 4,
  // the persistent tier gets steps 6 and 12.
  const DemoRun first = RunDemo(DemoArgs(save, local, 12, 2, tiers), dir.file("first.log"), 60);
  ASSERT_EQ(first.rc, 0) << first.out;
  EXPECT_TRUE(Has(first.out, "two tiers: every checkpoint into " + local)) << first.out;
  EXPECT_EQ(Indices(local), (std::vector<int64_t>{6, 8, 10, 12}));
  EXPECT_EQ(Indices(save), (std::vector<int64_t>{6, 12}));
  EXPECT_TRUE(TempFiles(local).empty());
  EXPECT_TRUE(TempFiles(save).empty());
  // Promoted by copying the committed file: no second encode.
  for (int64_t i : {6, 12}) {
    const std::string a = ReadFileBytes(JoinPath(local, Ckpt(i)));
    EXPECT_FALSE(a.empty()) << i;
    EXPECT_TRUE(a == ReadFileBytes(JoinPath(save, Ckpt(i)))) << "step " << i << " differs";
  }
  EXPECT_TRUE(Has(first.out, "tiers:               promotions 2 completed, 0 skipped, 0 failed"))
      << first.out;
  ExpectVerifies(save);

  // The local tier holds the newest checkpoint: resumed from it.
  auto resume = DemoArgs(save, local, 16, 2, tiers);
  resume.push_back("--resume");
  const DemoRun second = RunDemo(resume, dir.file("second.log"), 60);
  ASSERT_EQ(second.rc, 0) << second.out;
  EXPECT_TRUE(Has(second.out, "resuming from checkpoint index 12 (step 12, " + local))
      << second.out;
  EXPECT_TRUE(Has(second.out, "resumed step 12 from the local tier")) << second.out;
  EXPECT_TRUE(Has(second.out, "training:            4 steps")) << second.out;
  EXPECT_EQ(Indices(local), (std::vector<int64_t>{10, 12, 14, 16}));

  // The node-local disk is gone: resumed from the newest persistent
  // checkpoint (12: steps 14 and 16 were not due), trains on, and the local
  // tier fills again.
  std::filesystem::remove_all(local);
  resume = DemoArgs(save, local, 18, 2, tiers);
  resume.push_back("--resume");
  const DemoRun third = RunDemo(resume, dir.file("third.log"), 60);
  ASSERT_EQ(third.rc, 0) << third.out;
  EXPECT_TRUE(Has(third.out, "resuming from checkpoint index 12 (step 12, " + save)) << third.out;
  EXPECT_TRUE(Has(third.out, "resumed step 12 from the persistent tier")) << third.out;
  EXPECT_TRUE(Has(third.out, "training:            6 steps")) << third.out;
  EXPECT_TRUE(std::isfinite(third.val_loss)) << third.out;
  EXPECT_FALSE(Has(third.out, "FAILED")) << third.out;
  EXPECT_EQ(Indices(local), (std::vector<int64_t>{14, 16, 18}));
  EXPECT_EQ(Indices(save), (std::vector<int64_t>{6, 12, 18}));
  std::printf("one process, three runs: %.1f s\n", Since(t0));
}

TEST(DemoTiersTest, SigkillDuringPromotionLeavesPersistentTierConsistent) {
  TempDir dir;
  const auto t0 = Clock::now();
  const std::string save = dir.file("shared"), local = dir.file("local");
  // Every checkpoint promoted, at 4 MiB/s: a promotion of the tiny model's
  // checkpoint takes seconds, so one is in flight most of the time.
  const std::vector<std::string> tiers{"--persist-every", "1", "--promote-mib-per-s", "4"};
  bool caught = false;
  std::string out;
  for (int attempt = 0; attempt < 3 && !caught; ++attempt) {
    const std::string log = dir.file("run.log");
    ChildProcess demo(DemoArgs(save, local, 100000, 5, tiers), log);
    ASSERT_TRUE(demo.started());
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    // One promotion complete, then the next one copying (its temp file).
    while (Clock::now() < deadline && !(Indices(save).size() >= 1 && !TempFiles(save).empty())) {
      if (demo.Exited()) FAIL() << "the demo exited early:\n" << ReadFileBytes(log);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    demo.Signal(SIGKILL);
    EXPECT_EQ(demo.WaitOrKill(60), 128 + SIGKILL);
    out = ReadFileBytes(log);
    caught = !Indices(save).empty() && !TempFiles(save).empty();
  }
  ASSERT_TRUE(caught) << "never caught a promotion in flight:\n" << out;
  // The half-copied file never got its name; every named file verifies.
  ExpectVerifies(save);
  std::vector<int64_t> all = Indices(local);
  for (int64_t i : Indices(save)) all.push_back(i);
  const int64_t newest = *std::max_element(all.begin(), all.end());

  auto resume = DemoArgs(save, local, newest + 5, 5, tiers);
  resume.push_back("--resume");
  const DemoRun r = RunDemo(resume, dir.file("resume.log"), 60);
  ASSERT_EQ(r.rc, 0) << r.out;
  EXPECT_TRUE(Has(r.out, "resuming from checkpoint index " + std::to_string(newest) + " "))
      << r.out;
  EXPECT_TRUE(Has(r.out, "training:            5 steps")) << r.out;
  EXPECT_FALSE(Has(r.out, "FAILED")) << r.out;
  // The stale temp file is cleaned up when the resumed run opens save_dir,
  // and its last checkpoint (forced, at the end) reached the persistent tier.
  EXPECT_TRUE(TempFiles(save).empty());
  EXPECT_EQ(Indices(save).back(), newest + 5);
  ExpectVerifies(save);
  std::printf("killed during promotion, resumed at step %lld: %.1f s\n",
              static_cast<long long>(newest), Since(t0));
}

TEST(DemoTiersTest, FourRanksLostNodeResumesFromPeerReplica) {
  TempDir dir;
  const auto t0 = Clock::now();
  constexpr int64_t kSteps = 8, kEvery = 2;
  // Checkpoints at 2, 4, 6, 8; the persistent tier gets only 8 (the 4th):
  // resuming at 4 is possible from the local tiers only.
  const std::vector<std::string> ranks{"--nproc", "4", "--persist-every", "4"};

  const std::string straight_save = dir.file("straight"), straight_local = dir.file("straight_l");
  const DemoRun straight = RunDemo(DemoArgs(straight_save, straight_local, kSteps, kEvery, ranks),
                                   dir.file("straight.log"), 60);
  ASSERT_EQ(straight.rc, 0) << straight.out;

  // Rank 2 dies after step 5 (checkpoint 4 durable everywhere); the
  // launcher then ends the other ranks, and rank 2's "node" is lost: its
  // local directory goes too.
  const std::string save = dir.file("shared"), local = dir.file("local");
  auto die = DemoArgs(save, local, kSteps, kEvery, ranks);
  for (const char* a : {"--die-rank", "2", "--die-at-step", "5"}) die.push_back(a);
  const DemoRun killed = RunDemo(die, dir.file("killed.log"), 60);
  ASSERT_NE(killed.rc, 0) << killed.out;
  EXPECT_TRUE(Has(ReadFileBytes(JoinPath(save, ".demo-rank2.log")),
                  "rank 2: --die-at-step 5: saves so far are durable; SIGKILL"));
  EXPECT_TRUE(Manifests(save).empty());  // nothing was due for promotion yet
  for (int r = 0; r < 4; ++r) {
    const std::vector<int64_t> m = Manifests(JoinPath(local, "rank" + std::to_string(r)));
    ASSERT_FALSE(m.empty()) << r;
    EXPECT_EQ(m.back(), 4) << "rank " << r;
  }
  std::filesystem::remove_all(JoinPath(local, "rank2"));

  auto again = DemoArgs(save, local, kSteps, kEvery, ranks);
  again.push_back("--resume");
  const DemoRun resumed = RunDemo(again, dir.file("resumed.log"), 60);
  ASSERT_EQ(resumed.rc, 0) << resumed.out;
  EXPECT_TRUE(Has(resumed.out, "resuming from checkpoint index 4 (step 4, " + local + "/rank0"))
      << resumed.out;
  EXPECT_TRUE(Has(resumed.out,
                  "local tier: part of rank 0: own, part of rank 1: own, part of rank 2: rank 3's "
                  "replica, part of rank 3: own"))
      << resumed.out;
  // Each rank's own line (ranks 1..3 log to save_dir), and the launcher's
  // per-rank summary.
  for (int r = 0; r < 4; ++r) {
    const std::string rank_out =
        r == 0 ? resumed.out
               : ReadFileBytes(JoinPath(save, ".demo-rank" + std::to_string(r) + ".log"));
    const std::string line = "rank " + std::to_string(r) + ": resumed step 4 from the local tier" +
                             (r == 2 ? "; part restored from rank 3's replica (" : "\n");
    EXPECT_TRUE(Has(rank_out, line)) << "expected '" << line << "' in:\n" << rank_out;
  }
  EXPECT_TRUE(std::regex_search(resumed.out,
                                std::regex("\nrank 2: promotions [^\n]*; resumed step 4 from the "
                                           "local tier; part restored from rank 3's replica \\(")))
      << resumed.out;
  EXPECT_TRUE(Has(resumed.out, "training:            4 steps")) << resumed.out;
  EXPECT_FALSE(Has(resumed.out, "FAILED")) << resumed.out;
  // Rank 2's part is back in its (new) local directory.
  EXPECT_FALSE(Manifests(JoinPath(local, "rank2")).empty());
  // Trained on exactly as if nothing had happened: the final model, bit for
  // bit, and the same validation loss.
  const std::string model = CheckpointFileName(ModelFilePrefix("model"), kSteps, true);
  std::string why;
  EXPECT_TRUE(ExactlyEqual(ReadStateDict(JoinPath(save, model)),
                           ReadStateDict(JoinPath(straight_save, model)), &why))
      << why;
  EXPECT_EQ(resumed.val_loss, straight.val_loss) << resumed.out << "\n" << straight.out;
  EXPECT_EQ(Manifests(save), (std::vector<int64_t>{kSteps}));
  ExpectVerifies(save);
  std::printf("4 ranks, lost node, resumed from the replica: %.1f s\n", Since(t0));
}

TEST(DemoTiersTest, TierFlagsNeedLocalDir) {
  std::string out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --persist-every 3", &out), 2);
  EXPECT_TRUE(Has(out, "--persist-every: needs --local-dir")) << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --help", &out), 0);
  for (const char* flag : {"--local-dir", "--persist-every", "--local-keep", "--promote-mib-per-s"})
    EXPECT_TRUE(Has(out, flag)) << flag << "\n" << out;
}

}  // namespace
}  // namespace ackpt
