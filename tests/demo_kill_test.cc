// The training demo killed while a save is in flight (SIGKILL) or stopped with
// Ctrl-C (SIGINT), then run again with --resume: it must continue from the
// newest complete checkpoint, with no error, no temp file left behind and
// every checkpoint file intact.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <regex>
#include <thread>

#include "ackpt/env.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "child_process.h"
#include "io/atomic_file.h"  // IsTempFileName, TempFileTarget (white-box)
#include "test_util.h"

#ifndef ACKPT_DEMO
#error "ACKPT_DEMO must name the ackpt_demo binary"
#endif

namespace ackpt {
namespace {

using testing::ChildProcess;
using testing::ReadFileBytes;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

// The demo on a model small enough for a test, saving every 5 steps.
std::vector<std::string> DemoArgs(const std::string& save_dir, int64_t steps) {
  return {ACKPT_DEMO,
          "--model-size",
          "tiny",
          "--steps",
          std::to_string(steps),
          "--checkpoint-every",
          "5",
          "--save-dir",
          save_dir,
          "--keep-last",
          "0",
          "--threads",
          "1"};
}

// Runs a process with stdout and stderr going to `log`; its exit status, 128
// + signal, or -1 after `timeout_seconds` (then it is killed).
int RunChild(const std::vector<std::string>& args, const std::string& log, double timeout_seconds) {
  return ChildProcess(args, log).WaitOrKill(timeout_seconds);
}

struct DirState {
  std::vector<std::pair<int64_t, std::string>> checkpoints;  // newest first
  std::vector<std::string> temp_files;
};

DirState Scan(const std::string& dir) {
  DirState s;
  std::vector<std::string> names;
  try {
    names = Env::Default()->GetChildren(dir);
  } catch (const Error&) {
    return s;
  }
  for (const auto& n : names) {
    if (IsTempFileName(n)) s.temp_files.push_back(n);
    if (auto i = ParseCheckpointIndex(n, "model")) s.checkpoints.emplace_back(*i, JoinPath(dir, n));
  }
  std::sort(s.checkpoints.begin(), s.checkpoints.end(), std::greater<>());
  return s;
}

// A temp file of a full checkpoint (not of the model-only file) is being written.
bool CheckpointInFlight(const DirState& s) {
  for (const auto& t : s.temp_files) {
    auto target = TempFileTarget(t);
    if (target && ParseCheckpointIndex(*target, "model")) return true;
  }
  return false;
}

// Every checkpoint in dir opens and passes every checksum.
void ExpectAllIntact(const std::string& dir) {
  for (const auto& name : Env::Default()->GetChildren(dir)) {
    if (IsTempFileName(name)) {
      ADD_FAILURE() << "temp file left behind: " << name;
      continue;
    }
    // Checkpoints and model files; the directory also holds ackpt's own
    // bookkeeping (e.g. its lock file), which is not a checkpoint.
    if (!ParseCheckpointIndex(name, "model") &&
        !ParseCheckpointIndex(name, ModelFilePrefix("model")))
      continue;
    const std::string path = JoinPath(dir, name);
    EXPECT_NO_THROW(CheckpointReader::Open(path)->Verify()) << path;
  }
}

std::optional<int64_t> ParseResumeIndex(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m,
                         std::regex("resuming from checkpoint index (\\d+) \\(step (\\d+)"))) {
    return std::nullopt;
  }
  return std::stoll(m[1]);
}

// Resumes in `dir` and checks the run continues from `expected_index`.
void ResumeAndCheck(const TempDir& dir, const std::string& save_dir, int64_t expected_index) {
  const int64_t steps = expected_index + 10;
  auto args = DemoArgs(save_dir, steps);
  args.push_back("--resume");
  const std::string log = dir.file("resume.log");
  const int rc = RunChild(args, log, 300);
  const std::string out = ReadFileBytes(log);
  ASSERT_EQ(rc, 0) << out;
  const auto index = ParseResumeIndex(out);
  ASSERT_TRUE(index.has_value()) << out;
  EXPECT_EQ(*index, expected_index) << out;
  EXPECT_NE(out.find("training:            10 steps"), std::string::npos) << out;
  EXPECT_EQ(out.find("FAILED"), std::string::npos) << out;

  const DirState after = Scan(save_dir);
  EXPECT_TRUE(after.temp_files.empty());
  ASSERT_FALSE(after.checkpoints.empty());
  EXPECT_EQ(after.checkpoints.front().first, steps);  // the resumed run reached the end
  ExpectAllIntact(save_dir);
}

TEST(DemoKillTest, SigkillDuringSaveThenResume) {
  TempDir dir;
  const std::string save_dir = dir.file("ckpt");
  // Attempts: the kill must land while a checkpoint's temp file exists; if the
  // save finished between seeing the temp file and the kill, try again.
  bool caught = false;
  DirState killed;
  std::string out;
  for (int attempt = 0; attempt < 5 && !caught; ++attempt) {
    const std::string log = dir.file("run.log");
    ChildProcess demo(DemoArgs(save_dir, 100000), log);
    ASSERT_TRUE(demo.started());
    const auto deadline = Clock::now() + std::chrono::seconds(120);
    bool seen_complete = false;
    while (Clock::now() < deadline) {
      const DirState s = Scan(save_dir);
      // Wait for one complete checkpoint, then for the next save to be in flight.
      seen_complete = seen_complete || !s.checkpoints.empty();
      if (seen_complete && CheckpointInFlight(s)) break;
      if (demo.Exited()) FAIL() << "the demo exited early:\n" << ReadFileBytes(log);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    demo.Signal(SIGKILL);
    EXPECT_EQ(demo.WaitOrKill(60), 128 + SIGKILL);
    out = ReadFileBytes(log);
    killed = Scan(save_dir);
    caught = CheckpointInFlight(killed);
  }
  ASSERT_TRUE(caught) << "never caught a save in flight:\n" << out;
  ASSERT_FALSE(killed.checkpoints.empty()) << out;
  const int64_t newest = killed.checkpoints.front().first;
  // The complete files are intact; the partial one never got its final name.
  for (const auto& c : killed.checkpoints)
    EXPECT_NO_THROW(CheckpointReader::Open(c.second)->Verify()) << c.second;

  ResumeAndCheck(dir, save_dir, newest);
}

TEST(DemoKillTest, CtrlCDrainsThenResume) {
  TempDir dir;
  const std::string save_dir = dir.file("ckpt");
  const std::string log = dir.file("run.log");
  ChildProcess demo(DemoArgs(save_dir, 100000), log);
  ASSERT_TRUE(demo.started());
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (Clock::now() < deadline && Scan(save_dir).checkpoints.size() < 2) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  demo.Signal(SIGINT);
  const int rc = demo.WaitOrKill(120);
  const std::string out = ReadFileBytes(log);
  EXPECT_EQ(rc, 130) << out;  // interrupted, after draining
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("newest checkpoint: step (\\d+)"))) << out;
  const int64_t newest = std::stoll(m[1]);
  const DirState s = Scan(save_dir);
  EXPECT_TRUE(s.temp_files.empty());
  ASSERT_FALSE(s.checkpoints.empty());
  EXPECT_EQ(s.checkpoints.front().first, newest);
  ExpectAllIntact(save_dir);

  ResumeAndCheck(dir, save_dir, newest);
}

TEST(DemoKillTest, BadFlagsAreClearErrors) {
  TempDir dir;
  std::string out;
  // Usage errors (CLI11): exit 2, naming the option and the bad value.
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --compression lz4", &out), 2);
  EXPECT_NE(out.find("--compression: lz4 not in {none,zstd}"), std::string::npos) << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --steps -3", &out), 2);
  EXPECT_NE(out.find("--steps: needs an integer >= 1, got '-3'"), std::string::npos) << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --steps 12x", &out), 2);
  EXPECT_NE(out.find("--steps: needs an integer >= 1, got '12x'"), std::string::npos) << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --grace-period 0", &out), 2);
  EXPECT_NE(out.find("--grace-period: needs a number of seconds > 0"), std::string::npos) << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --bogus", &out), 2);
  EXPECT_NE(out.find("--bogus"), std::string::npos) << out;
  // --help documents every flag, preemption included, and exits 0.
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_DEMO) + " --help", &out), 0);
  for (const char* flag :
       {"--steps", "--checkpoint-every", "--save-dir", "--compression", "--level", "--model-size",
        "--resume", "--sync", "--corpus", "--threads", "--writer-threads", "--log-every",
        "--keep-last", "--seed", "--no-preemption", "--grace-period", "SIGTERM", "75"}) {
    EXPECT_NE(out.find(flag), std::string::npos) << flag << "\n" << out;
  }
  EXPECT_EQ(
      testing::RunCommand(std::string(ACKPT_DEMO) + " --corpus " + dir.file("missing.txt"), &out),
      1);
  EXPECT_NE(out.find("cannot read corpus file"), std::string::npos) << out;
}

}  // namespace
}  // namespace ackpt

namespace ackpt {
namespace {

// The children (ranks) of the --nproc launcher.
std::vector<pid_t> Children(pid_t launcher) {
  std::vector<pid_t> out;
  std::ifstream in("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) +
                   "/children");
  pid_t p;
  while (in >> p) out.push_back(p);
  return out;
}

// --nproc 4: kill -9 one rank after a checkpoint has committed; the launcher
// ends the others; --resume continues from a committed checkpoint and the
// final model equals that of an uninterrupted 4-rank run, bit for bit.
TEST(DemoKillTest, FourRanksOneKilledThenAllResumeExactly) {
  TempDir dir;
  auto args = [&](const std::string& save_dir) {
    auto a = DemoArgs(save_dir, 20);
    for (const char* x : {"--nproc", "4"}) a.push_back(x);  // every 5 steps (DemoArgs)
    return a;
  };
  const std::string straight = dir.file("straight");
  ASSERT_EQ(RunChild(args(straight), dir.file("straight.log"), 300), 0)
      << ReadFileBytes(dir.file("straight.log"));

  const std::string ckpt = dir.file("ckpt");
  ChildProcess launcher(args(ckpt), dir.file("killed.log"));
  const auto deadline = Clock::now() + std::chrono::seconds(240);
  while (!Env::Default()->FileExists(JoinPath(ckpt, ManifestFileName("model", 5))) &&
         Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::vector<pid_t> ranks = Children(launcher.pid());
  ASSERT_EQ(ranks.size(), 4u) << ReadFileBytes(dir.file("killed.log"));
  kill(ranks[2], SIGKILL);
  const int rc = launcher.WaitOrKill(120);
  EXPECT_NE(rc, 0) << ReadFileBytes(dir.file("killed.log"));

  auto resume = args(ckpt);
  resume.push_back("--resume");
  ASSERT_EQ(RunChild(resume, dir.file("resume.log"), 300), 0)
      << ReadFileBytes(dir.file("resume.log"));
  const std::string out = ReadFileBytes(dir.file("resume.log"));
  const auto index = ParseResumeIndex(out);
  ASSERT_TRUE(index.has_value()) << out;
  EXPECT_GE(*index, 5) << out;
  EXPECT_NE(out.find("== per rank =="), std::string::npos) << out;
  const std::string model = CheckpointFileName(ModelFilePrefix("model"), 20, true);
  std::string why;
  EXPECT_TRUE(ExactlyEqual(ReadStateDict(JoinPath(ckpt, model)),
                           ReadStateDict(JoinPath(straight, model)), &why))
      << why;
}

}  // namespace
}  // namespace ackpt
