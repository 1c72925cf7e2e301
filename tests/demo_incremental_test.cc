// The demo's fine-tuning mode (issue 26): --freeze-embeddings freezes the
// embedding tables, --incremental references what did not change.
//  - full vs incremental: the same run writes the whole state every time, or
//    the frozen tables once and only the trained tensors after;
//  - SIGKILL at random moments of a run that saves incrementally every other
//    step: every file still verifies (references included), --resume works,
//    and the resumed run ends on the very model of an uninterrupted one.
#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <regex>
#include <thread>

#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "child_process.h"
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

std::vector<std::string> DemoArgs(const std::string& save_dir, int64_t steps, int64_t every,
                                  std::vector<std::string> more) {
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
                             "2",
                             "--threads",
                             "1",
                             "--no-preemption",
                             "--freeze-embeddings",
                             "--decay-step",
                             "40"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

struct DemoRun {
  int rc = -1;
  std::string out;
  double val_loss = NAN;
};

// Runs the demo; kill_after_seconds >= 0 SIGKILLs it that long after the
// first save of this run was durable.
DemoRun RunDemo(std::vector<std::string> args, const std::string& log, double timeout_seconds,
                double kill_after_seconds = -1) {
  DemoRun r;
  ChildProcess demo(std::move(args), log);
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_seconds);
  Clock::time_point seen{};
  while (!demo.Exited() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    if (kill_after_seconds < 0) continue;
    if (seen == Clock::time_point{}) {
      if (ReadFileBytes(log).find("durable model_") != std::string::npos) seen = Clock::now();
    } else if (Clock::now() - seen > std::chrono::duration<double>(kill_after_seconds)) {
      demo.Signal(SIGKILL);
      break;
    }
  }
  if (!demo.Exited() && kill_after_seconds < 0) demo.Signal(SIGKILL);
  r.rc = demo.WaitOrKill(10);
  r.out = ReadFileBytes(log);
  std::smatch m;
  if (std::regex_search(r.out, m, std::regex("training: +\\d+ steps in .*val_loss ([0-9.na]+)")))
    r.val_loss = std::stod(m[1]);
  return r;
}

// "durable model_N...: A -> B" lines: the file bytes (B) of each checkpoint, by step.
std::map<int64_t, double> FileMegabytes(const std::string& out) {
  std::map<int64_t, double> mb;
  const std::regex line(
      "durable model_(\\d+)\\.safetensors\\.zst: [0-9.]+ [kM]B -> ([0-9.]+) ([kM])B");
  for (auto it = std::sregex_iterator(out.begin(), out.end(), line); it != std::sregex_iterator();
       ++it) {
    const double v = std::stod((*it)[2]);
    mb[std::stoll((*it)[1])] = (*it)[3] == "k" ? v / 1e3 : v;
  }
  return mb;
}

void ExpectEveryFileVerifies(const std::string& dir) {
  std::string files;
  for (const auto& name : testing::ListDir(dir)) {
    if (!name.empty() && name[0] != '.') files += " '" + JoinPath(dir, name) + "'";
  }
  ASSERT_FALSE(files.empty());
  std::string out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " verify --quiet" + files, &out), 0)
      << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " ls --verify '" + dir + "'", &out), 0)
      << out;
  EXPECT_EQ(out.find("unreadable"), std::string::npos) << out;
}

TEST(DemoIncrementalTest, FineTuningWritesTheFrozenTablesOnce) {
  TempDir dir;
  const DemoRun full = RunDemo(DemoArgs(dir.file("full"), 8, 2, {}), dir.file("full.log"), 120);
  ASSERT_EQ(full.rc, 0) << full.out;
  const DemoRun inc =
      RunDemo(DemoArgs(dir.file("inc"), 8, 2, {"--incremental"}), dir.file("inc.log"), 120);
  ASSERT_EQ(inc.rc, 0) << inc.out;
  EXPECT_NE(inc.out.find("embeddings frozen"), std::string::npos) << inc.out;
  EXPECT_NE(inc.out.find("incremental checkpoints"), std::string::npos) << inc.out;
  const auto f = FileMegabytes(full.out), i = FileMegabytes(inc.out);
  ASSERT_EQ(f.size(), 4u) << full.out;
  ASSERT_EQ(i.size(), 4u) << inc.out;
  // The first save is full either way; later incremental ones hold the
  // trained tensors only (< 10 % of the bytes here: 99 % of the
  // parameters are frozen).
  EXPECT_NEAR(i.at(2), f.at(2), 0.1 * f.at(2));
  for (int64_t s : {4, 6, 8}) {
    EXPECT_GT(f.at(s), 0.9 * f.at(2)) << s;
    EXPECT_LT(i.at(s), 0.1 * f.at(2)) << "step " << s << "\n" << inc.out;
  }
  EXPECT_NE(inc.out.find("referenced instead of copied and written"), std::string::npos);
  // The same training either way.
  EXPECT_EQ(full.val_loss, inc.val_loss);
  ExpectEveryFileVerifies(dir.file("inc"));
  // keep_last 2 kept steps 6 and 8, and 2 (their base).
  std::string out;
  ASSERT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " ls '" + dir.file("inc") + "'", &out), 0);
  EXPECT_NE(out.find("base of: 8, 6"), std::string::npos) << out;
}

TEST(DemoIncrementalTest, KillDuringIncrementalSavesThenResumeExactly) {
  TempDir dir;
  const int64_t steps = 60;
  const DemoRun straight = RunDemo(DemoArgs(dir.file("straight"), steps, 2, {"--incremental"}),
                                   dir.file("straight.log"), 180);
  ASSERT_EQ(straight.rc, 0) << straight.out;
  const std::string save = dir.file("killed");
  const DemoRun killed =
      RunDemo(DemoArgs(save, steps, 2, {"--incremental"}), dir.file("killed.log"), 180, 0.05);
  ASSERT_NE(killed.rc, 0) << killed.out;  // killed while saving every other step
  ExpectEveryFileVerifies(save);
  // Resumed, killed again, then resumed to the end.
  const std::vector<std::string> resume = DemoArgs(save, steps, 2, {"--incremental", "--resume"});
  const DemoRun killed2 = RunDemo(resume, dir.file("killed2.log"), 180, 0.08);
  ASSERT_NE(killed2.rc, 0) << killed2.out;
  EXPECT_NE(killed2.out.find("resuming from checkpoint index"), std::string::npos) << killed2.out;
  ExpectEveryFileVerifies(save);
  const DemoRun end = RunDemo(resume, dir.file("end.log"), 180);
  ASSERT_EQ(end.rc, 0) << end.out;
  EXPECT_NE(end.out.find("resuming from checkpoint index"), std::string::npos) << end.out;
  // Bit-exact: the uninterrupted run's final validation loss.
  EXPECT_EQ(end.val_loss, straight.val_loss) << end.out;
  ExpectEveryFileVerifies(save);
}

}  // namespace
}  // namespace ackpt
