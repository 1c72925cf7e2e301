// Resharding: checkpoints saved by N ranks load on M ranks (4 -> 2, 2 -> 3,
// 3 -> 1, 1 -> 4), plain and zstd parts, row, column, 2-D and uneven boxes,
// a target spanning three saved boxes, a replicated tensor loaded as shards,
// rank-local state by each rule, bytes read per rank bounded, a corrupt part
// falling back on every rank, bad layouts refused. The checks run in the
// ranks (tests/reshard_worker.cc); every launch is bounded in time and kills
// every process it started.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/file_names.h"
#include "dist_launch.h"
#include "test_util.h"

#ifndef ACKPT_RESHARD_WORKER
#error "ACKPT_RESHARD_WORKER must name the worker binary"
#endif

namespace ackpt {
namespace {

using testing::Launch;
using testing::TempDir;

Launch RunRanks(const TempDir& tmp, int world, const std::string& dir,
                std::vector<std::string> args, const std::string& name) {
  return testing::LaunchRanks(ACKPT_RESHARD_WORKER, tmp, world, dir, std::move(args), name, 150);
}

void ExpectAllOk(const Launch& l, const std::string& what) {
  for (size_t r = 0; r < l.status.size(); ++r)
    EXPECT_EQ(l.status[r], 0) << what << " rank " << r << ":\n" << l.out[r];
}

struct Resize {
  int saved, loaded;
  const char* compression;
};

class ReshardTest : public ::testing::TestWithParam<Resize> {};

TEST_P(ReshardTest, EveryBoxLoadsByteEqualReadingOnlyItsSlabs) {
  const Resize p = GetParam();
  TempDir tmp;
  const std::string dir = tmp.file("ckpt");
  ExpectAllOk(
      RunRanks(tmp, p.saved, dir, {"--mode", "save", "--compression", p.compression}, "save"),
      "save");
  ExpectAllOk(RunRanks(tmp, p.loaded, dir,
                       {"--mode", "load", "--saved-world", std::to_string(p.saved), "--compression",
                        p.compression},
                       "load"),
              "load");
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, ReshardTest,
                         ::testing::Values(Resize{4, 2, "none"}, Resize{2, 3, "zstd"},
                                           Resize{3, 1, "none"}, Resize{1, 4, "zstd"}),
                         [](const auto& info) {
                           return std::to_string(info.param.saved) + "to" +
                                  std::to_string(info.param.loaded) + info.param.compression;
                         });

TEST(ReshardRules, SameWorldSizeLoadsOwnBoxesAndLocalState) {
  TempDir tmp;
  const std::string dir = tmp.file("ckpt");
  ExpectAllOk(RunRanks(tmp, 2, dir, {"--mode", "save", "--compression", "none"}, "save"), "save");
  ExpectAllOk(
      RunRanks(tmp, 2, dir, {"--mode", "load", "--rule", "error", "--plain-target"}, "load"),
      "load");
}

TEST(ReshardRules, RankLocalStateFollowsTheChosenRule) {
  TempDir tmp;
  const std::string dir = tmp.file("ckpt");
  ExpectAllOk(
      RunRanks(tmp, 3, dir, {"--mode", "save", "--compression", "none", "--steps", "1"}, "save"),
      "save");
  for (const char* rule : {"error", "empty", "modulo"}) {
    const Launch l = RunRanks(
        tmp, 2, dir, {"--mode", "load", "--saved-world", "3", "--steps", "1", "--rule", rule},
        std::string("load-") + rule);
    ExpectAllOk(l, rule);
    if (std::string(rule) == "error") {
      for (const auto& out : l.out) EXPECT_NE(out.find("refused"), std::string::npos) << out;
    }
  }
}

TEST(ReshardRules, ACorruptPartMakesEveryRankFallBackToTheSameOlderCheckpoint) {
  TempDir tmp;
  const std::string dir = tmp.file("ckpt");
  ExpectAllOk(RunRanks(tmp, 4, dir, {"--mode", "save", "--compression", "none"}, "save"), "save");
  // Flip a byte in the middle of rank 1's part of checkpoint 2 (slab data).
  const std::string part = JoinPath(dir, PartFileName("model", 2, 1, false));
  std::string bytes = testing::ReadFileBytes(part);
  ASSERT_GT(bytes.size(), 1000u);
  bytes[bytes.size() / 2] ^= 0x5a;
  testing::WriteFileBytes(part, bytes);
  ExpectAllOk(RunRanks(tmp, 2, dir, {"--mode", "load", "--saved-world", "4", "--expect-index", "1"},
                       "load"),
              "load");
}

TEST(ReshardRules, AManifestWhoseBoxesDoNotMatchItsPartsIsSkippedByEveryRank) {
  TempDir tmp;
  const std::string dir = tmp.file("ckpt");
  ExpectAllOk(RunRanks(tmp, 2, dir, {"--mode", "save", "--compression", "zstd"}, "save"), "save");
  // Checkpoint 2's manifest now claims rank 1's box of "big" has one row
  // fewer and its slabs one row more: the layout no longer tiles the tensor.
  const std::string manifest = JoinPath(dir, ManifestFileName("model", 2));
  std::string text = testing::ReadFileBytes(manifest);
  const std::string from = "\"slab_rows\": 256";
  const size_t at = text.rfind(from);
  ASSERT_NE(at, std::string::npos) << text;
  text.replace(at, from.size(), "\"slab_rows\": 257");
  testing::WriteFileBytes(manifest, text);
  ExpectAllOk(RunRanks(tmp, 3, dir,
                       {"--mode", "load", "--saved-world", "2", "--expect-index", "1",
                        "--compression", "zstd"},
                       "load"),
              "load");
}

TEST(ReshardRules, PartsStayOrdinaryFilesForVerifyAndThePythonReader) {
  TempDir tmp;
  const std::string dir = tmp.file("ckpt");
  ExpectAllOk(
      RunRanks(tmp, 2, dir, {"--mode", "save", "--compression", "zstd", "--steps", "1"}, "save"),
      "save");
  std::string out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " verify " + dir, &out), 0) << out;
  if (testing::RunCommand(std::string(ACKPT_TEST_PYTHON) +
                          " -c 'import numpy, xxhash, zstandard' 2>/dev/null") != 0) {
    GTEST_SKIP() << "the Python reader needs numpy, xxhash and zstandard";
  }
  const std::string reader = std::string(ACKPT_SOURCE_DIR) + "/python/ackpt_reader.py";
  for (int r = 0; r < 2; ++r) {
    const std::string part = JoinPath(dir, PartFileName("model", 1, r, true));
    EXPECT_EQ(testing::RunCommand(
                  std::string(ACKPT_TEST_PYTHON) + " " + reader + " --verify " + part, &out),
              0)
        << out;
    EXPECT_NE(out.find("checksums OK"), std::string::npos) << out;
    EXPECT_NE(out.find("sharded/module_interface_state%2Fbig/0"), std::string::npos) << out;
  }
}

TEST(ReshardRules, SavingAnIndexAgainWithFewerRanksLeavesNoStalePart) {
  TempDir tmp;
  const std::string dir = tmp.file("ckpt");
  ExpectAllOk(RunRanks(tmp, 3, dir, {"--mode", "save", "--compression", "none"}, "save3"), "save3");
  ASSERT_TRUE(Env::Default()->FileExists(JoinPath(dir, PartFileName("model", 2, 2, false))));
  ExpectAllOk(RunRanks(tmp, 2, dir, {"--mode", "save", "--compression", "none"}, "save2"), "save2");
  for (int64_t index : {1, 2}) {
    EXPECT_TRUE(Env::Default()->FileExists(JoinPath(dir, PartFileName("model", index, 1, false))));
    EXPECT_FALSE(Env::Default()->FileExists(JoinPath(dir, PartFileName("model", index, 2, false))))
        << "index " << index;
  }
  ExpectAllOk(RunRanks(tmp, 2, dir, {"--mode", "load", "--saved-world", "2"}, "load"), "load");
}

TEST(ReshardRules, BadLayoutsAreRefusedOnEveryRank) {
  TempDir tmp;
  ExpectAllOk(RunRanks(tmp, 2, tmp.file("ckpt"), {"--mode", "bad", "--compression", "none"}, "bad"),
              "bad");
}

}  // namespace
}  // namespace ackpt
