// Retention rules, their persistence across restarts, and crash behaviour.
#include "ackpt/retention.h"

#include <unistd.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "format/open_files.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::FaultInjectionEnv;
using testing::ListDir;
using testing::Op;
using testing::PatternTensor;
using testing::TempDir;

// Synthetic entries, index i saved at time 1000 + 10 i, 100 bytes each.
std::vector<CheckpointEntry> Entries(int n) {
  std::vector<CheckpointEntry> v;
  for (int i = n - 1; i >= 0; --i) {
    CheckpointEntry e;
    e.index = i;
    e.path = "model_" + std::to_string(i) + ".safetensors";
    e.file_bytes = 100;
    e.save_time = 1000 + 10.0 * i;
    v.push_back(e);
  }
  return v;
}

std::vector<int64_t> Indices(const std::vector<CheckpointEntry>& v) {
  std::vector<int64_t> out;
  for (const auto& e : v) out.push_back(e.index);
  return out;
}

std::vector<int64_t> Kept(const std::vector<CheckpointEntry>& v) {
  std::vector<int64_t> out;
  for (const auto& e : v) {
    if (!e.kept_by.empty()) out.push_back(e.index);
  }
  return out;
}

TEST(RetentionRulesTest, DefaultKeepsEverything) {
  auto v = Entries(5);
  EXPECT_TRUE(EvaluateRetention(&v, {}).empty());
  EXPECT_EQ(v[0].kept_by, (std::vector<std::string>{"newest", "all"}));
  EXPECT_EQ(v[4].kept_by, (std::vector<std::string>{"all"}));
}

TEST(RetentionRulesTest, KeepLast) {
  auto v = Entries(6);
  RetentionPolicy p;
  p.keep_last = 2;
  EXPECT_EQ(Indices(EvaluateRetention(&v, p)), (std::vector<int64_t>{3, 2, 1, 0}));
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{5, 4}));
}

TEST(RetentionRulesTest, KeepEveryAlwaysKeepsNewest) {
  auto v = Entries(8);
  RetentionPolicy p;
  p.keep_every = 3;
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{7, 6, 3, 0}));  // 7 is the newest
}

TEST(RetentionRulesTest, KeepBestMinMaxAndMissingMetric) {
  auto v = Entries(6);
  const double loss[] = {0.9, 0.5, 0.7, 0.2, std::numeric_limits<double>::quiet_NaN(), 0.8};
  for (auto& e : v) {
    if (e.index != 2) e.metrics["val_loss"] = loss[e.index];  // 2 has no metric; 4 is NaN
  }
  RetentionPolicy p;
  p.keep_best = 2;
  p.best_metric = "val_loss";
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{5, 3, 1}));  // newest 5, best 3 (0.2) and 1 (0.5)
  p.best_mode_max = true;
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{5, 0}));  // 0.9 and 0.8 (index 5, also newest)
  // Asking for more than have the metric never keeps those without it.
  p.keep_best = 10;
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{5, 3, 1, 0}));
}

TEST(RetentionRulesTest, KeepTimeInterval) {
  auto v = Entries(10);  // every 10 s
  RetentionPolicy p;
  p.keep_time_interval_seconds = 25;
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{9, 6, 3, 0}));
}

TEST(RetentionRulesTest, MaxTotalBytes) {
  auto v = Entries(6);
  RetentionPolicy p;
  p.max_total_bytes = 350;
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{5, 4, 3}));
  p.max_total_bytes = 10;  // the newest is kept even when larger
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{5}));
}

TEST(RetentionRulesTest, CombinationKeepsTheUnion) {
  auto v = Entries(12);
  for (auto& e : v) e.metrics["acc"] = e.index == 2 ? 0.99 : 0.5;
  RetentionPolicy p;
  p.keep_last = 2;
  p.keep_every = 5;
  p.keep_best = 1;
  p.best_metric = "acc";
  p.best_mode_max = true;
  EvaluateRetention(&v, p);
  EXPECT_EQ(Kept(v), (std::vector<int64_t>{11, 10, 5, 2, 0}));
  EXPECT_EQ(v[1].kept_by, (std::vector<std::string>{"keep_last", "keep_every"}));
}

TEST(RetentionRulesTest, UnreadableFilesAreNeverDeleted) {
  auto v = Entries(4);
  v[0].readable = false;  // newest index is corrupt: the newest readable one is protected
  v[3].readable = false;
  RetentionPolicy p;
  p.keep_last = 1;
  EXPECT_EQ(Indices(EvaluateRetention(&v, p)), (std::vector<int64_t>{1}));
  EXPECT_EQ(v[1].kept_by, (std::vector<std::string>{"newest", "keep_last"}));
}

Checkpoint Small(int seed) {
  Checkpoint c;
  c.module_interface_state.set("w", PatternTensor({32, 32}, at::kFloat, seed));
  c.trainer_state.set("epoch", seed);
  return c;
}

DefaultCheckpointerArguments Args(const TempDir& dir) {
  DefaultCheckpointerArguments a;
  a.save_dir = dir.file("ckpt");
  a.model_state_save_dir = dir.file("models");
  a.log_level = "ERROR";
  a.writer_threads = 2;
  return a;
}

std::vector<std::string> CheckpointFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& n : ListDir(dir)) {
    if (ParseCheckpointIndex(n, "model")) out.push_back(n);
  }
  return out;
}

TEST(RetentionTest, KeepLastDeletesOnlyAfterCommit) {
  TempDir dir;
  auto a = Args(dir);
  a.retention.keep_last = 2;
  a.compression = Compression::kNone;
  DefaultCheckpointer ck(a);
  for (int i = 0; i < 6; ++i) ck.save(Small(i), i);
  ck.wait();
  EXPECT_EQ(CheckpointFiles(dir.file("ckpt")),
            (std::vector<std::string>{"model_4.safetensors", "model_5.safetensors"}));
  EXPECT_EQ(ck.counters().files_deleted, 4u);
}

TEST(RetentionTest, BestByMetricSurvivesRestartBecauseMetricsLiveInTheFiles) {
  TempDir dir;
  auto a = Args(dir);
  a.retention.keep_last = 1;
  a.retention.keep_best = 1;
  a.retention.best_metric = "val_loss";
  {
    DefaultCheckpointer ck(a);
    for (int i = 0; i < 4; ++i) {
      Checkpoint c = Small(i);
      c.metrics["val_loss"] = i == 1 ? 0.1 : 1.0 + i;
      ck.save(c, i);
    }
  }
  {
    DefaultCheckpointer ck(a);  // a new process would see only the files
    for (int i = 4; i < 7; ++i) {
      Checkpoint c = Small(i);
      c.metrics["val_loss"] = 5.0;
      ck.save(c, i);
    }
    ck.wait();
    EXPECT_EQ(CheckpointFiles(dir.file("ckpt")),
              (std::vector<std::string>{"model_1.safetensors.zst", "model_6.safetensors.zst"}));
    Checkpoint best = ck.load_best("val_loss");
    EXPECT_EQ(best.trainer_state.at("epoch").to_int(), 1);
    EXPECT_EQ(ck.load_latest().trainer_state.at("epoch").to_int(), 6);
    EXPECT_EQ(ck.load_index(1).trainer_state.at("epoch").to_int(), 1);
    EXPECT_THROW(ck.load_index(3), Error);
    EXPECT_THROW(ck.load_best("accuracy"), Error);
    auto listed = ck.list_checkpoints();
    ASSERT_EQ(listed.size(), 2u);
    EXPECT_EQ(listed[0].kept_by, (std::vector<std::string>{"newest", "keep_last"}));
    EXPECT_EQ(listed[1].kept_by, (std::vector<std::string>{"keep_best"}));
    EXPECT_DOUBLE_EQ(listed[1].metrics.at("val_loss"), 0.1);
  }
}

TEST(RetentionTest, CrashBetweenCommitAndDeletionLeavesExtraFilesNeverMissingOnes) {
  TempDir dir;
  FaultInjectionEnv env;
  auto a = Args(dir);
  a.env = &env;
  a.retention.keep_last = 1;
  DefaultCheckpointer ck(a);
  ck.save(Small(0), 0, true);
  // Deletion fails, as if the process died right after the commit.
  env.FailOp(Op::kRemove, EIO);
  ck.save(Small(1), 1, true);  // no error for the user: the commit succeeded
  ck.save(Small(2), 2, true);
  EXPECT_EQ(CheckpointFiles(dir.file("ckpt")).size(), 3u);
  env.Clear();
  ck.save(Small(3), 3, true);  // the next commit's retention cleans up
  EXPECT_EQ(CheckpointFiles(dir.file("ckpt")),
            (std::vector<std::string>{"model_3.safetensors.zst"}));
  // And a restart after a crash mid-retention sees every kept file intact.
  auto r = Args(dir);
  r.checkpoint = false;  // `ck` still owns the directory: read it
  DefaultCheckpointer again(r);
  EXPECT_EQ(again.load().trainer_state.at("epoch").to_int(), 3);
}

TEST(RetentionTest, CheckpointBeingReadIsNotDeleted) {
  TempDir dir;
  auto a = Args(dir);
  a.retention.keep_last = 1;
  DefaultCheckpointer ck(a);
  ck.save(Small(0), 0, true);
  {
    auto reader = CheckpointReader::Open(dir.file("ckpt/model_0.safetensors.zst"));
    EXPECT_TRUE(IsOpenForReading(dir.file("ckpt/../ckpt/model_0.safetensors.zst")));
    ck.save(Small(1), 1, true);
    ck.save(Small(2), 2, true);
    EXPECT_EQ(CheckpointFiles(dir.file("ckpt")),
              (std::vector<std::string>{"model_0.safetensors.zst", "model_2.safetensors.zst"}));
    EXPECT_EQ(reader->ReadStateDict().at("trainer_state").dict().at("epoch").to_int(), 0);
  }
  ck.save(Small(3), 3, true);
  EXPECT_EQ(CheckpointFiles(dir.file("ckpt")),
            (std::vector<std::string>{"model_3.safetensors.zst"}));
}

TEST(RetentionTest, StartupRemovesOnlyOwnStaleTempFiles) {
  TempDir dir;
  Env::Default()->CreateDirs(dir.file("ckpt"));
  // Writers that are gone (no such pid; this process, which now owns the
  // directory) lose their temp files; a running process keeps its own
  // (it may be writing with WriteStateDict, which takes no lock).
  const std::string gone = std::to_string(999999999);
  const std::string self = std::to_string(::getpid());
  const std::string alive = std::to_string(::getppid());
  const std::vector<std::string> names{".model_3.safetensors.zst.tmp-" + gone + "-0",
                                       ".model_model_1.safetensors.tmp-" + self + "-7",
                                       ".model_4.safetensors.tmp-" + alive + "-2",
                                       ".other_3.safetensors.tmp-1-1",
                                       ".model_3.safetensors.zst.tmp-x-1",
                                       "model_3.safetensors.zst.tmp-1-1",
                                       "notes.txt"};
  for (const auto& n : names) testing::WriteFileBytes(dir.file("ckpt/") + n, "partial");
  auto a = Args(dir);
  DefaultCheckpointer ck(a);
  EXPECT_EQ(ck.counters().temp_files_removed, 2u);
  EXPECT_EQ(ListDir(dir.file("ckpt")),
            (std::vector<std::string>{".model_3.safetensors.zst.tmp-x-1", names[2],
                                      ".other_3.safetensors.tmp-1-1",
                                      "model_3.safetensors.zst.tmp-1-1", "notes.txt"}));
}

TEST(RetentionTest, ModelFilesFollowTheirOwnKeepLast) {
  TempDir dir;
  auto a = Args(dir);
  a.retention.model_keep_last = 2;
  a.retention.keep_last = 1;
  DefaultCheckpointer ck(a);
  for (int i = 0; i < 4; ++i) {
    ck.save(Small(i), i);
    ck.save_model(Small(i).module_interface_state, i);
  }
  ck.wait();
  EXPECT_EQ(
      ListDir(dir.file("models")),
      (std::vector<std::string>{"model_model_2.safetensors.zst", "model_model_3.safetensors.zst"}));
  EXPECT_EQ(CheckpointFiles(dir.file("ckpt")),
            (std::vector<std::string>{"model_3.safetensors.zst"}));
}

TEST(RetentionTest, InvalidPolicyIsAnArgumentError) {
  TempDir dir;
  auto a = Args(dir);
  a.retention.keep_best = 2;  // no metric
  EXPECT_THROW(DefaultCheckpointer{a}, Error);
  a.retention.best_metric = "loss";
  a.retention.keep_last = -1;
  EXPECT_THROW(DefaultCheckpointer{a}, Error);
}

TEST(RetentionTest, CliLsShowsWhatIsKeptAndWhy) {
  TempDir dir;
  auto a = Args(dir);
  a.retention.keep_last = 2;
  a.retention.keep_best = 1;
  a.retention.best_metric = "val_loss";
  {
    DefaultCheckpointer ck(a);
    for (int i = 0; i < 5; ++i) {
      Checkpoint c = Small(i);
      c.metrics["val_loss"] = i == 0 ? 0.01 : 1.0;
      ck.save(c, i);
    }
  }
  std::string out;
  ASSERT_EQ(testing::RunCommand(
                std::string(ACKPT_CLI) + " ls " + dir.file("ckpt") + " --json --verify", &out),
            0)
      << out;
  auto j = nlohmann::json::parse(out);
  ASSERT_EQ(j["checkpoints"].size(), 3u);
  EXPECT_EQ(j["checkpoints"][0]["index"], 4);
  EXPECT_EQ(j["checkpoints"][0]["kept_by"], nlohmann::json({"newest", "keep_last"}));
  EXPECT_EQ(j["checkpoints"][2]["index"], 0);
  EXPECT_EQ(j["checkpoints"][2]["kept_by"], nlohmann::json({"keep_best"}));
  EXPECT_DOUBLE_EQ(j["checkpoints"][2]["metrics"]["val_loss"].get<double>(), 0.01);
  EXPECT_EQ(j["checkpoints"][1]["verified"], true);
  EXPECT_EQ(j["retention"]["keep_last"], 2);
  ASSERT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " ls " + dir.file("ckpt"), &out), 0)
      << out;
  EXPECT_NE(out.find("keep_best"), std::string::npos) << out;
  EXPECT_NE(out.find("val_loss=0.01"), std::string::npos) << out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " ls", &out), 2);
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " ls " + dir.file("nope"), &out), 2);
}

}  // namespace
}  // namespace ackpt
