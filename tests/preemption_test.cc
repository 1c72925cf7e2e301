// PreemptionGuard: the handler only records the signal, previous handlers
// come back, the final save is forced and bounded by the grace period; and
// the demo, sent SIGTERM mid-run, saves the step it reached, exits with
// kPreemptedExitCode, and resumes to a result bit-identical to an
// uninterrupted run.
#include "ackpt/preemption.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <regex>
#include <thread>

#include "ackpt/checkpointer.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "child_process.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::ChildProcess;
using testing::ReadFileBytes;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

// Records what save() got.
class RecordingCheckpointer : public AbstractCheckpointer {
 public:
  void save(const Checkpoint& c, int64_t index, bool force) override {
    if (delay_seconds > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(delay_seconds));
    }
    saves.push_back({index, force, c.trainer_backend_state});
  }
  Checkpoint load() override { return {}; }
  struct Save {
    int64_t index;
    bool force;
    StateDict backend;
  };
  std::vector<Save> saves;
  double delay_seconds = 0;
};

Checkpoint StepCheckpoint(int64_t step) {
  Checkpoint c;
  c.trainer_backend_state.set("step", step);
  return c;
}

volatile sig_atomic_t g_previous_handler_calls = 0;
void PreviousHandler(int) { g_previous_handler_calls = g_previous_handler_calls + 1; }

TEST(PreemptionGuardTest, SignalSetsTheFlagAndSaveIsForced) {
  PreemptionGuard guard;
  EXPECT_FALSE(guard.requested());
  RecordingCheckpointer ckpt;
  int made = 0;
  auto make = [&] {
    ++made;
    return StepCheckpoint(7);
  };
  // Not requested: nothing is built or saved.
  EXPECT_FALSE(guard.SaveIfRequested(ckpt, make, 7));
  EXPECT_EQ(made, 0);
  EXPECT_TRUE(ckpt.saves.empty());

  ASSERT_EQ(raise(SIGTERM), 0);  // the process survives: the handler only records it
  EXPECT_TRUE(guard.requested());
  EXPECT_EQ(guard.signal_number(), SIGTERM);
  EXPECT_GE(guard.seconds_since_request(), 0.0);

  EXPECT_TRUE(guard.SaveIfRequested(ckpt, make, 7));
  ASSERT_EQ(ckpt.saves.size(), 1u);
  EXPECT_EQ(ckpt.saves[0].index, 7);
  EXPECT_TRUE(ckpt.saves[0].force);
  EXPECT_EQ(ckpt.saves[0].backend.at("step").to_int(), 7);
  EXPECT_TRUE(guard.saved());
  EXPECT_FALSE(guard.timed_out());
  // Later calls tell the caller to exit without saving again.
  EXPECT_TRUE(guard.SaveIfRequested(ckpt, make, 8));
  EXPECT_EQ(ckpt.saves.size(), 1u);
  EXPECT_EQ(made, 1);
  EXPECT_EQ(PreemptionGuard::exit_code(), kPreemptedExitCode);
  EXPECT_EQ(kPreemptedExitCode, 75);
}

TEST(PreemptionGuardTest, Sigusr1AndTheFirstSignalWins) {
  PreemptionGuard guard;
  ASSERT_EQ(raise(SIGUSR1), 0);
  ASSERT_EQ(raise(SIGTERM), 0);
  EXPECT_TRUE(guard.requested());
  EXPECT_EQ(guard.signal_number(), SIGUSR1);
}

TEST(PreemptionGuardTest, RestoresThePreviousHandlers) {
  struct sigaction mine {
  }, old_term{}, old_usr2{};
  mine.sa_handler = PreviousHandler;
  sigemptyset(&mine.sa_mask);
  ASSERT_EQ(sigaction(SIGTERM, &mine, &old_term), 0);
  ASSERT_EQ(sigaction(SIGUSR2, &mine, &old_usr2), 0);
  g_previous_handler_calls = 0;
  {
    PreemptionOptions o;
    o.signals = {SIGTERM, SIGUSR2};  // a configurable set
    PreemptionGuard guard(o);
    ASSERT_EQ(raise(SIGUSR2), 0);
    EXPECT_TRUE(guard.requested());
    EXPECT_EQ(guard.signal_number(), SIGUSR2);
    EXPECT_EQ(g_previous_handler_calls, 0);  // the guard took it
  }
  ASSERT_EQ(raise(SIGTERM), 0);
  ASSERT_EQ(raise(SIGUSR2), 0);
  EXPECT_EQ(g_previous_handler_calls, 2);  // back to the previous handler
  // A new guard starts unrequested.
  {
    PreemptionGuard guard;
    EXPECT_FALSE(guard.requested());
    EXPECT_EQ(guard.signal_number(), 0);
  }
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGUSR2, &old_usr2, nullptr);
}

TEST(PreemptionGuardTest, BadOptionsAndASecondGuardAreErrors) {
  auto expect_invalid = [](PreemptionOptions o, const std::string& what) {
    try {
      PreemptionGuard g(o);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
      EXPECT_NE(e.message().find(what), std::string::npos) << e.what();
    }
  };
  PreemptionOptions o;
  o.grace_period_seconds = 0;
  expect_invalid(o, "grace_period_seconds");
  o = PreemptionOptions();
  o.signals = {SIGTERM, SIGKILL};
  expect_invalid(o, "signals[1]");
  o.signals = {SIGTERM, SIGTERM};
  expect_invalid(o, "twice");
  PreemptionGuard first;
  expect_invalid(PreemptionOptions(), "already alive");
}

TEST(PreemptionGuardTest, ProgrammaticRequestAndSaveErrorsPropagate) {
  PreemptionGuard guard;
  guard.request();
  EXPECT_TRUE(guard.requested());
  EXPECT_EQ(guard.signal_number(), 0);
  EXPECT_THROW(guard.SaveIfRequested([] { throw Error::IO("write", "/x", ENOSPC); }), Error);
  EXPECT_FALSE(guard.saved());
  // The failure is not remembered as a save: a retry saves.
  int calls = 0;
  EXPECT_TRUE(guard.SaveIfRequested([&] { ++calls; }));
  EXPECT_EQ(calls, 1);
}

TEST(PreemptionGuardTest, SaveOverTheGracePeriodIsReportedWhenNotExiting) {
  PreemptionOptions o;
  o.grace_period_seconds = 0.05;
  o.exit_on_timeout = false;
  PreemptionGuard guard(o);
  guard.request(SIGTERM);
  RecordingCheckpointer ckpt;
  ckpt.delay_seconds = 0.3;
  EXPECT_TRUE(guard.SaveIfRequested(
      ckpt, [] { return StepCheckpoint(3); }, 3));
  EXPECT_TRUE(guard.timed_out());
  EXPECT_TRUE(guard.saved());
  EXPECT_GE(guard.save_seconds(), 0.25);
  ASSERT_EQ(ckpt.saves.size(), 1u);  // it still finished
}

TEST(PreemptionGuardTest, SaveOverTheGracePeriodExitsWithTheTimeoutCode) {
  // In a child: exit_on_timeout ends the process.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    PreemptionOptions o;
    o.grace_period_seconds = 0.1;
    PreemptionGuard guard(o);
    raise(SIGTERM);
    guard.SaveIfRequested([] { std::this_thread::sleep_for(std::chrono::seconds(30)); });
    _exit(0);
  }
  int status = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      FAIL() << "the child did not exit at the end of the grace period";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), kPreemptionTimeoutExitCode);
}

#ifdef ACKPT_DEMO

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
          "1",
          "--compression",
          "none"};
}

int RunDemo(const std::vector<std::string>& args, const std::string& log) {
  return ChildProcess(args, log).WaitOrKill(300);
}

TEST(DemoPreemptionTest, SigtermSavesTheStepReachedAndResumesBitExact) {
  constexpr int64_t kSteps = 40;
  TempDir dir;

  // The reference: an uninterrupted run.
  const std::string straight = dir.file("straight");
  ASSERT_EQ(RunDemo(DemoArgs(straight, kSteps), dir.file("straight.log")), 0)
      << ReadFileBytes(dir.file("straight.log"));

  // The same run, sent SIGTERM once its first checkpoint exists (mid-run,
  // usually inside a window: the demo saves every 5 steps).
  const std::string preempted = dir.file("preempted");
  const std::string log = dir.file("preempted.log");
  ChildProcess demo(DemoArgs(preempted, kSteps), log);
  ASSERT_TRUE(demo.started());
  const std::string first = JoinPath(preempted, CheckpointFileName("model", 5, false));
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (!Env::Default()->FileExists(first) && Clock::now() < deadline) {
    ASSERT_FALSE(demo.Exited()) << "the demo exited early:\n" << ReadFileBytes(log);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(Env::Default()->FileExists(first)) << ReadFileBytes(log);
  demo.Signal(SIGTERM);
  const int rc = demo.WaitOrKill(120);
  const std::string out = ReadFileBytes(log);
  ASSERT_EQ(rc, kPreemptedExitCode) << out;

  // It names the step it reached, and that step's checkpoint is on disk and intact.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(out, m, std::regex("preempted by SIGTERM at step (\\d+)"))) << out;
  const int64_t step = std::stoll(m[1]);
  EXPECT_GE(step, 5);
  ASSERT_LT(step, kSteps) << "the run finished before the signal; make it longer\n" << out;
  const std::string saved = JoinPath(preempted, CheckpointFileName("model", step, false));
  ASSERT_TRUE(Env::Default()->FileExists(saved)) << out;
  EXPECT_NO_THROW(CheckpointReader::Open(saved)->Verify());
  const StateDict at_step = ReadStateDict(saved);
  EXPECT_EQ(at_step.at("trainer_backend_state").dict().at("global_step_completed").to_int(), step);
  for (const auto& name : Env::Default()->GetChildren(preempted))
    EXPECT_EQ(name.find(".tmp-"), std::string::npos) << "temp file left: " << name;

  // Resume: it continues from that checkpoint and ends where the straight run did.
  auto resume = DemoArgs(preempted, kSteps);
  resume.push_back("--resume");
  ASSERT_EQ(RunDemo(resume, dir.file("resume.log")), 0) << ReadFileBytes(dir.file("resume.log"));
  const std::string resumed_out = ReadFileBytes(dir.file("resume.log"));
  EXPECT_NE(resumed_out.find("resuming from checkpoint index " + std::to_string(step) + " (step " +
                             std::to_string(step)),
            std::string::npos)
      << resumed_out;
  EXPECT_NE(resumed_out.find("training:            " + std::to_string(kSteps - step) + " steps"),
            std::string::npos)
      << resumed_out;

  // Bit-exact: the final checkpoint (model, AdamW, StepLR, RNG, counters) and
  // the model file of both runs are identical.
  for (const std::string name : {CheckpointFileName("model", kSteps, false),
                                 CheckpointFileName("model_model", kSteps, false)}) {
    SCOPED_TRACE(name);
    const StateDict a = ReadStateDict(JoinPath(straight, name));
    const StateDict b = ReadStateDict(JoinPath(preempted, name));
    std::string why;
    EXPECT_TRUE(ExactlyEqual(a, b, &why)) << why;
  }
}

TEST(DemoPreemptionTest, NoPreemptionFlagKeepsCtrlCBehaviourForSigterm) {
  TempDir dir;
  const std::string save_dir = dir.file("ckpt");
  const std::string log = dir.file("run.log");
  auto args = DemoArgs(save_dir, 100000);
  args.push_back("--no-preemption");
  ChildProcess demo(args, log);
  ASSERT_TRUE(demo.started());
  const std::string first = JoinPath(save_dir, CheckpointFileName("model", 5, false));
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  while (!Env::Default()->FileExists(first) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  demo.Signal(SIGTERM);
  const int rc = demo.WaitOrKill(120);
  EXPECT_EQ(rc, 130) << ReadFileBytes(log);  // drained, like Ctrl-C
}

#endif  // ACKPT_DEMO

}  // namespace
}  // namespace ackpt
