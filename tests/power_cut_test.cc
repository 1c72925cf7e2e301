// Power loss at any point of a sequence of saves: after the "reboot" (unsynced
// data and directory entries dropped, tests/fault_env.h), a fresh
// checkpointer must load the newest checkpoint whose commit was acknowledged
// before the cut (save(force = true) or wait() returned), bit-exact, or a
// newer complete one; never a partial file.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <set>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "fault_env.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::PatternTensor;
using testing::PowerCutEnv;
using testing::TempDir;

constexpr int64_t kSaves = 6;

Checkpoint StateFor(int64_t index) {
  Checkpoint c;
  c.module_interface_state.set("w", PatternTensor({160, 256}, at::kFloat, static_cast<int>(index)));
  c.module_interface_state.set("b", PatternTensor({300}, at::kBFloat16, static_cast<int>(index)));
  // Incompressible bytes, so compressed files span several frames.
  at::Tensor noise = at::empty({90000}, at::kByte);
  uint32_t x = 2654435761u * static_cast<uint32_t>(index + 1);
  auto* p = noise.data_ptr<uint8_t>();
  for (int64_t i = 0; i < noise.numel(); ++i) {
    x = x * 1664525u + 1013904223u;
    p[i] = static_cast<uint8_t>(x >> 24);
  }
  c.module_interface_state.set("noise", noise);
  c.trainer_backend_state.set("index", index);
  return c;
}

DefaultCheckpointerArguments Args(const std::string& dir, Compression compression, Env* env) {
  DefaultCheckpointerArguments a;
  a.save_dir = dir;
  a.model_state_save_dir = "";
  a.compression = compression;
  a.chunk_size = 64 * 1024;
  a.writer_threads = 1;
  a.pin_host_memory = false;
  a.log_level = "OFF";
  a.retention.keep_last = 2;  // deletions must survive power loss too
  a.env = env;
  return a;
}

// Runs the save sequence until the power fails; returns the newest index
// whose commit was acknowledged (-1 if none).
int64_t RunSaves(const std::string& dir, Compression compression, PowerCutEnv* env) {
  int64_t acked = -1;
  try {
    DefaultCheckpointer c(Args(dir, compression, env));
    for (int64_t i = 1; i <= kSaves; ++i) {
      const bool force = i % 2 == 0;
      c.save(StateFor(i), i, force);
      if (force) acked = i;
      if (i == 3 || i == 5) {
        c.wait();
        acked = i;
      }
    }
    c.wait();
    acked = kSaves;
  } catch (const Error&) {
    // The power is gone: nothing after this point can be acknowledged.
  }
  return acked;
}

void CheckAfterReboot(const std::string& dir, Compression compression, int64_t acked,
                      const std::string& where) {
  DefaultCheckpointer fresh(Args(dir, compression, nullptr));
  Checkpoint got;
  ASSERT_NO_THROW(got = fresh.load()) << where;
  if (acked < 0 && got.empty()) return;
  ASSERT_FALSE(got.empty()) << where << ": acknowledged save " << acked << " was lost";
  ASSERT_TRUE(got.trainer_backend_state.contains("index")) << where;
  const int64_t index = got.trainer_backend_state.at("index").to_int();
  EXPECT_GE(index, acked) << where << ": loaded an older checkpoint than the acknowledged one ("
                          << fresh.last_loaded_path() << ")";
  const Checkpoint want = StateFor(index);
  std::string why;
  EXPECT_TRUE(ExactlyEqual(want.module_interface_state, got.module_interface_state, &why))
      << where << ": checkpoint " << index << " differs: " << why;
}

double BudgetSeconds() {
  const char* s = std::getenv("ACKPT_POWER_CUT_SECONDS");
  return s && *s ? std::atof(s) : 20.0;
}

class PowerCutTest : public ::testing::TestWithParam<Compression> {};

TEST_P(PowerCutTest, NewestAcknowledgedCheckpointSurvivesEveryCut) {
  const Compression compression = GetParam();
  // Count the mutating calls of an uninterrupted run.
  int64_t total = 0;
  {
    TempDir dir;
    PowerCutEnv env;
    env.CutAfter(-1);
    ASSERT_EQ(RunSaves(dir.path(), compression, &env), kSaves);
    total = env.ops();
    env.DropUnsyncedData();
    CheckAfterReboot(dir.path(), compression, kSaves, "no cut");
  }
  ASSERT_GT(total, 20);

  // Each scenario is a cut point and what the "disk" kept of the unsynced
  // state: leveldb's model (drop all unsynced data and directory entries),
  // plus some or all unsynced data surviving, with or without the unsynced
  // directory entries. Scenarios run in a seeded random order until at least
  // 300 ran and the time budget is spent (ACKPT_POWER_CUT_SECONDS, both
  // layouts together), so CI stays bounded.
  struct Scenario {
    int64_t cut;
    PowerCutEnv::Unsynced data;
    bool keep_dir_ops;
  };
  std::vector<Scenario> scenarios;
  for (int64_t k = 0; k <= total; ++k) {
    for (auto data : {PowerCutEnv::Unsynced::kDropAll, PowerCutEnv::Unsynced::kKeepSome,
                      PowerCutEnv::Unsynced::kKeepAll}) {
      for (bool keep_dir_ops : {false, true}) scenarios.push_back({k, data, keep_dir_ops});
    }
  }
  std::mt19937_64 rng(20240611 + static_cast<int>(compression));
  std::shuffle(scenarios.begin(), scenarios.end(), rng);
  const auto t0 = std::chrono::steady_clock::now();
  const double budget = BudgetSeconds() / 2;
  const int min_runs = 300;
  int runs = 0;
  std::map<int64_t, int> acked_histogram;
  std::set<int64_t> cut_points;
  for (const Scenario& sc : scenarios) {
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (runs >= min_runs && elapsed > budget) break;
    TempDir dir;
    PowerCutEnv env;
    env.CutAfter(sc.cut);
    const int64_t acked = RunSaves(dir.path(), compression, &env);
    env.DropUnsyncedData(sc.data, sc.keep_dir_ops, rng());
    const std::string where = "cut after " + std::to_string(sc.cut) + " of " +
                              std::to_string(total) + " calls, unsynced data " +
                              std::to_string(static_cast<int>(sc.data)) +
                              (sc.keep_dir_ops ? ", dir entries kept" : "") + " (acknowledged " +
                              std::to_string(acked) + ")";
    CheckAfterReboot(dir.path(), compression, acked, where);
    if (::testing::Test::HasFailure()) break;
    ++acked_histogram[acked];
    cut_points.insert(sc.cut);
    ++runs;
  }
  EXPECT_GE(runs, std::min<int64_t>(min_runs, static_cast<int64_t>(scenarios.size())));
  // The cuts must land before, inside and after the sequence's commits.
  EXPECT_GE(acked_histogram.size(), 4u);
  std::string summary;
  for (const auto& kv : acked_histogram)
    summary += " " + std::to_string(kv.first) + ":" + std::to_string(kv.second);
  std::printf("%d scenarios over %zu of %lld cut points; acknowledged index -> runs:%s\n", runs,
              cut_points.size(), static_cast<long long>(total + 1), summary.c_str());
}

INSTANTIATE_TEST_SUITE_P(Layouts, PowerCutTest,
                         ::testing::Values(Compression::kNone, Compression::kZstd),
                         [](const ::testing::TestParamInfo<Compression>& i) {
                           return i.param == Compression::kNone ? "Plain" : "Zstd";
                         });

// The model itself: unsynced tails and directory entries really vanish.
TEST(PowerCutEnvTest, DropsExactlyWhatWasNotSynced) {
  TempDir dir;
  PowerCutEnv env;
  const std::string a = dir.file("a"), b = dir.file("b"), c = dir.file("c");
  auto fa = env.NewWritableFile(a);
  fa->Append("hello", 5);
  fa->Sync();
  fa->Append("world", 5);
  fa->Close();
  env.SyncDir(dir.path());  // a exists durably, 5 bytes of it
  auto fb = env.NewWritableFile(b);
  fb->Append("x", 1);
  fb->Sync();
  fb->Close();
  env.RenameFile(b, c);  // not made durable
  env.RemoveFile(a);     // not durable: a comes back
  env.DropUnsyncedData();
  EXPECT_EQ(testing::ReadFileBytes(a), "hello");
  EXPECT_FALSE(Env::Default()->FileExists(b));  // created without a SyncDir
  EXPECT_FALSE(Env::Default()->FileExists(c));
}

TEST(PowerCutEnvTest, NothingChangesOnceThePowerIsGone) {
  TempDir dir;
  PowerCutEnv env;
  env.CutAfter(2);
  auto f = env.NewWritableFile(dir.file("a"));
  f->Append("12", 2);
  EXPECT_THROW(f->Append("34", 2), Error);
  EXPECT_THROW(env.SyncDir(dir.path()), Error);
  EXPECT_TRUE(env.dead());
  f->Close();
  EXPECT_EQ(testing::ReadFileBytes(dir.file("a")), "12");
}

}  // namespace
}  // namespace ackpt
