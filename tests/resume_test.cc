// Exact resume across processes: N steps without interruption must equal k
// steps, a checkpoint, a fresh process resuming from the file, and N - k more
// steps -- bit for bit, parameters, buffers, optimizer and scheduler state and
// RNG, for every built-in optimizer, compressed and uncompressed (LBFGS, which
// steps through a closure, in the hand-written loop only).
#include <string>
#include <tuple>

#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "test_util.h"

#ifndef ACKPT_RESUME_WORKER
#error "ACKPT_RESUME_WORKER must name the resume worker binary"
#endif

namespace ackpt {
namespace {

using testing::ListDir;
using testing::RunCommand;
using testing::TempDir;

constexpr int kTotalSteps = 24;
constexpr int kFirstSteps = 12;  // 3 epochs of 4 steps, then resume

std::string Worker(const std::string& args, std::string* output = nullptr) {
  std::string out;
  const int rc = RunCommand(std::string(ACKPT_RESUME_WORKER) + " " + args, &out);
  if (output) *output = out;
  EXPECT_EQ(rc, 0) << args << "\n" << out;
  return out;
}

// (optimizer, compression, driver)
using Case = std::tuple<std::string, std::string, std::string>;

class ResumeTest : public ::testing::TestWithParam<Case> {};

TEST_P(ResumeTest, BitExactAfterResumeInAFreshProcess) {
  const auto& [optimizer, compression, driver] = GetParam();
  TempDir dir;
  const std::string common =
      "--optimizer " + optimizer + " --driver " + driver + " --compression " + compression;
  const std::string ckpt = dir.file("ckpt");

  Worker("--mode straight --steps " + std::to_string(kTotalSteps) + " " + common + " --out " +
         dir.file("straight.safetensors"));
  Worker("--mode part --steps " + std::to_string(kFirstSteps) + " " + common + " --dir " + ckpt);

  // The checkpoints are in the requested format.
  const bool zstd = compression == "zstd";
  const int64_t last_index = driver == "trainer" ? kFirstSteps / 4 - 1 : kFirstSteps;
  const std::string last = CheckpointFileName("model", last_index, zstd);
  const auto files = ListDir(ckpt);
  ASSERT_NE(std::find(files.begin(), files.end(), last), files.end()) << last;
  EXPECT_EQ(CheckpointReader::Open(JoinPath(ckpt, last))->info().compressed, zstd);

  const std::string out =
      Worker("--mode resume --steps " + std::to_string(kTotalSteps) + " " + common + " --dir " +
             ckpt + " --out " + dir.file("resumed.safetensors"));
  EXPECT_NE(out.find("resumed at step " + std::to_string(kFirstSteps)), std::string::npos) << out;

  const StateDict straight = ReadStateDict(dir.file("straight.safetensors"));
  const StateDict resumed = ReadStateDict(dir.file("resumed.safetensors"));
  EXPECT_EQ(straight.at("step").to_int(), kTotalSteps);
  EXPECT_EQ(straight.at("optimizer").dict().at("type").str(), optimizer);
  EXPECT_FALSE(straight.at("optimizer").dict().at("state").dict().empty());
  std::string why;
  EXPECT_TRUE(ExactlyEqual(straight, resumed, &why))
      << optimizer << "/" << compression << "/" << driver << ": " << why;
}

INSTANTIATE_TEST_SUITE_P(
    Trainer, ResumeTest,
    ::testing::Combine(::testing::Values("Adam", "AdamW", "SGD", "RMSprop", "Adagrad"),
                       ::testing::Values("none", "zstd"), ::testing::Values("trainer")),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

INSTANTIATE_TEST_SUITE_P(
    CustomLoop, ResumeTest,
    ::testing::Combine(::testing::Values("Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "LBFGS"),
                       ::testing::Values("none", "zstd"), ::testing::Values("loop")),
    [](const auto& info) { return std::get<0>(info.param) + "_" + std::get<1>(info.param); });

// The comparison is sensitive: resuming without restoring the RNG draws other
// batches and ends elsewhere.
TEST(ResumeControlTest, WithoutRngStateTheRunsDiverge) {
  TempDir dir;
  const std::string common = "--optimizer Adam --driver trainer --compression zstd";
  Worker("--mode straight --steps 24 " + common + " --out " + dir.file("straight.safetensors"));
  Worker("--mode part --steps 12 --no-rng " + common + " --dir " + dir.file("ckpt"));
  Worker("--mode resume --steps 24 --no-rng " + common + " --dir " + dir.file("ckpt") + " --out " +
         dir.file("resumed.safetensors"));
  StateDict a = ReadStateDict(dir.file("straight.safetensors"));
  StateDict b = ReadStateDict(dir.file("resumed.safetensors"));
  EXPECT_EQ(b.at("step").to_int(), 24);
  EXPECT_FALSE(ExactlyEqual(a.at("params").dict(), b.at("params").dict()));
}

}  // namespace
}  // namespace ackpt
