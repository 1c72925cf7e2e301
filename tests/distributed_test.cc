// Distributed checkpointing with 4 ranks on 127.0.0.1 (Gloo over a
// FileStore): bit-exact resume, kill -9 of a rank during a save, a crash
// between the last part and the manifest, a corrupt part, replicated bytes
// written once, failures surfacing on every rank, world-size checks. Every
// launch is bounded in time and kills every process it started.
#include "ackpt/distributed.h"

#include <signal.h>

#include <chrono>
#include <set>
#include <thread>

#include "ackpt/consolidate.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "child_process.h"
#include "dist_launch.h"
#include "test_util.h"

#ifndef ACKPT_DIST_WORKER
#error "ACKPT_DIST_WORKER must name the worker binary"
#endif

namespace ackpt {
namespace {

using testing::ChildProcess;
using testing::Launch;
using testing::ReadFileBytes;
using testing::TempDir;
using Clock = std::chrono::steady_clock;
constexpr int kWorld = 4;

Launch LaunchRanks(const TempDir& tmp, int world, const std::string& dir,
                   std::vector<std::string> common, const std::string& name,
                   double timeout_seconds = 120) {
  return testing::LaunchRanks(ACKPT_DIST_WORKER, tmp, world, dir, std::move(common), name,
                              timeout_seconds);
}

std::vector<std::string> Args(int steps, const std::string& compression,
                              std::vector<std::string> extra = {}) {
  std::vector<std::string> a{"--steps", std::to_string(steps), "--save-every",
                             "4",       "--compression",       compression};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

void ExpectAllOk(const Launch& l, const std::string& what) {
  for (size_t r = 0; r < l.status.size(); ++r)
    EXPECT_EQ(l.status[r], 0) << what << " rank " << r << ":\n" << l.out[r];
}

bool HasManifest(const std::string& dir, int64_t index) {
  return Env::Default()->FileExists(JoinPath(dir, ManifestFileName("model", index)));
}

// The reference: 12 steps without interruption, every rank's final state.
// Made on first use, once per process (ctest runs each test in its own
// process, and only the resume tests need it).
class DistributedTest : public ::testing::Test {
 protected:
  static const TempDir& Reference() {
    if (ref_ == nullptr) {
      ref_ = new TempDir();
      auto l = LaunchRanks(*ref_, kWorld, ref_->file("straight"),
                           Args(12, "zstd", {"--out", "{out}"}), "straight");
      ExpectAllOk(l, "straight run");
    }
    return *ref_;
  }
  static void TearDownTestSuite() {
    delete ref_;
    ref_ = nullptr;
  }
  void ExpectResumedExactly(const std::string& name, int64_t from, const Launch& l) {
    const TempDir& ref = Reference();
    for (int r = 0; r < kWorld; ++r) {
      EXPECT_NE(l.out[static_cast<size_t>(r)].find("resumed " + std::to_string(from)),
                std::string::npos)
          << name << " rank " << r << ":\n"
          << l.out[static_cast<size_t>(r)];
      EXPECT_EQ(ReadFileBytes(tmp_.file(name + "-" + std::to_string(r) + ".out")),
                ReadFileBytes(ref.file("straight-" + std::to_string(r) + ".out")))
          << name << ": rank " << r << " differs from the uninterrupted run";
    }
  }
  static TempDir* ref_;
  TempDir tmp_;
};
TempDir* DistributedTest::ref_ = nullptr;

TEST_F(DistributedTest, FourRanksResumeBitExactAndReplicatedBytesAreWrittenOnce) {
  for (const std::string comp : {"zstd", "none"}) {
    const std::string dir = tmp_.file("ckpt-" + comp);
    ExpectAllOk(LaunchRanks(tmp_, kWorld, dir, Args(8, comp), "part-" + comp), "part run");
    EXPECT_TRUE(HasManifest(dir, 4));
    EXPECT_TRUE(HasManifest(dir, 8));
    // Replicated tensors (w, b, momentum) are each in exactly one part, and
    // not all in rank 0's; every part has its rank-local state.
    std::map<std::string, int> seen;
    std::set<int> writers;
    for (int r = 0; r < kWorld; ++r) {
      auto reader =
          CheckpointReader::Open(JoinPath(dir, PartFileName("model", 8, r, comp == "zstd")));
      bool has_shard = false;
      for (const auto& t : reader->info().tensors) {
        if (t.name.rfind("replicated/", 0) == 0) {
          ++seen[t.name];
          writers.insert(r);
        }
        has_shard = has_shard || t.name.find("shard") != std::string::npos;
      }
      EXPECT_TRUE(has_shard) << "rank " << r;
    }
    EXPECT_EQ(seen.size(), 3u);
    for (const auto& kv : seen) EXPECT_EQ(kv.second, 1) << kv.first;
    EXPECT_GE(writers.size(), 3u);
    const std::string name = "resume-" + comp;
    auto l = LaunchRanks(tmp_, kWorld, dir, Args(12, comp, {"--resume", "--out", "{out}"}), name);
    ExpectAllOk(l, name);
    ExpectResumedExactly(name, 8, l);
  }
}

TEST_F(DistributedTest, KillingOneRankDuringASaveLeavesNoManifestAndAllResumeThePrevious) {
  const std::string dir = tmp_.file("ckpt");
  auto l = LaunchRanks(tmp_, kWorld, dir,
                       Args(12, "zstd", {"--die-at-save", "8", "--die-rank", "2"}), "killed");
  EXPECT_EQ(l.status[2], 128 + SIGKILL) << l.out[2];
  EXPECT_TRUE(HasManifest(dir, 4));
  EXPECT_FALSE(HasManifest(dir, 8));
  auto r = LaunchRanks(tmp_, kWorld, dir, Args(12, "zstd", {"--resume", "--out", "{out}"}),
                       "after-kill");
  ExpectAllOk(r, "resume after kill");
  ExpectResumedExactly("after-kill", 4, r);
}

TEST_F(DistributedTest, CrashBetweenTheLastPartAndTheManifestRenameCommitsNothing) {
  const std::string dir = tmp_.file("ckpt");
  auto l =
      LaunchRanks(tmp_, kWorld, dir, Args(12, "zstd", {"--die-before-manifest", "8"}), "crash");
  EXPECT_EQ(l.status[0], 128 + SIGKILL) << l.out[0];
  EXPECT_FALSE(HasManifest(dir, 8));
  for (int r = 0; r < kWorld; ++r)  // every part of 8 was durable, yet 8 does not exist
    EXPECT_TRUE(Env::Default()->FileExists(JoinPath(dir, PartFileName("model", 8, r, true)))) << r;
  auto res = LaunchRanks(tmp_, kWorld, dir, Args(12, "zstd", {"--resume", "--out", "{out}"}),
                         "after-crash");
  ExpectAllOk(res, "resume after crash");
  ExpectResumedExactly("after-crash", 4, res);
  // The orphaned parts of 8 were cleaned up at load.
  EXPECT_FALSE(Env::Default()->FileExists(JoinPath(dir, PartFileName("model", 8, 1, true))) &&
               !HasManifest(dir, 8));
}

TEST_F(DistributedTest, ACorruptPartMakesEveryRankFallBackToTheSameOlderCheckpoint) {
  const std::string dir = tmp_.file("ckpt");
  ExpectAllOk(LaunchRanks(tmp_, kWorld, dir, Args(8, "none"), "part"), "part run");
  // Flip a byte of tensor data in rank 2's part of 8: only rank 2 notices, on read.
  const std::string victim = JoinPath(dir, PartFileName("model", 8, 2, false));
  std::string bytes = ReadFileBytes(victim);
  bytes[bytes.size() - 3] ^= 0x40;
  testing::WriteFileBytes(victim, bytes);
  auto r = LaunchRanks(tmp_, kWorld, dir, Args(12, "none", {"--resume", "--out", "{out}"}),
                       "after-corrupt");
  ExpectAllOk(r, "resume after corruption");
  ExpectResumedExactly("after-corrupt", 4, r);
}

TEST_F(DistributedTest, ARanksFailureSurfacesOnEveryRank) {
  const std::string dir = tmp_.file("ckpt");
  auto l = LaunchRanks(
      tmp_, kWorld, dir,
      Args(12, "zstd", {"--fail-write-at", "8", "--fail-rank", "2", "--commit-timeout", "3"}),
      "failing");
  for (int r = 0; r < kWorld; ++r) {
    const std::string& out = l.out[static_cast<size_t>(r)];
    EXPECT_EQ(l.status[static_cast<size_t>(r)], 3) << "rank " << r << ":\n" << out;
    EXPECT_NE(out.find("error:"), std::string::npos) << out;
    EXPECT_NE(out.find(" 8"), std::string::npos) << out;
    if (r != 2) EXPECT_NE(out.find("rank(s) 2"), std::string::npos) << "rank " << r << ":\n" << out;
  }
  EXPECT_FALSE(HasManifest(dir, 8));
  EXPECT_TRUE(HasManifest(dir, 4));
}

TEST_F(DistributedTest, CheckpointersConstructedOutOfStepStillShareTheirKeys) {
  // Two checkpointers with the same prefix on every rank; rank 1 constructs
  // them well after the others constructed both. The k-th checkpointer of
  // each rank must still meet the k-th of the others in the Store.
  const std::string dir = tmp_.file("ckpt"), second = tmp_.file("ckpt2");
  auto l = LaunchRanks(tmp_, kWorld, dir,
                       Args(8, "zstd",
                            {"--second-dir", second, "--construct-delay-rank", "1",
                             "--construct-delay-ms", "1500", "--commit-timeout", "20"}),
                       "out-of-step");
  ExpectAllOk(l, "out-of-step construction");
  for (const std::string& d : {dir, second}) {
    EXPECT_TRUE(HasManifest(d, 4)) << d;
    EXPECT_TRUE(HasManifest(d, 8)) << d;
  }
}

TEST_F(DistributedTest, RankLocalStateNeedsTheSameWorldSize) {
  const std::string dir = tmp_.file("ckpt");
  ExpectAllOk(LaunchRanks(tmp_, kWorld, dir, Args(4, "zstd"), "part"), "part run");
  auto l = LaunchRanks(tmp_, 2, dir, Args(8, "zstd", {"--resume"}), "two-ranks");
  for (int r = 0; r < 2; ++r) {
    const std::string& out = l.out[static_cast<size_t>(r)];
    EXPECT_EQ(l.status[static_cast<size_t>(r)], 3) << out;
    EXPECT_NE(out.find("saved by 4 ranks"), std::string::npos) << out;
    EXPECT_NE(out.find("by 2 ranks"), std::string::npos) << out;
  }
}

// Incremental distributed saves: each rank's part references its own earlier
// part for what did not change (a frozen replicated tensor, a frozen
// rank-local one); retention keeps the referenced checkpoint; the job
// resumes bit-exact from an incremental checkpoint.
TEST_F(DistributedTest, IncrementalPartsReferenceTheirOwnRanksEarlierPart) {
  const std::string dir = tmp_.file("ckpt-incremental");
  ExpectAllOk(LaunchRanks(tmp_, kWorld, dir,
                          Args(12, "none", {"--incremental", "--keep-last", "1"}), "inc"),
              "incremental run");
  // keep_last = 1: 12 stays, 4 stays as its base, 8 went.
  EXPECT_TRUE(HasManifest(dir, 12));
  EXPECT_TRUE(HasManifest(dir, 4));
  EXPECT_FALSE(HasManifest(dir, 8));
  std::set<std::string> referenced;
  for (int r = 0; r < kWorld; ++r) {
    auto reader = CheckpointReader::Open(JoinPath(dir, PartFileName("model", 12, r, false)));
    for (const auto& ref : reader->info().references) {
      EXPECT_EQ(ref.file, PartFileName("model", 4, r, false)) << ref.name;
      referenced.insert(ref.name);
    }
    for (const auto& t : reader->info().tensors) {
      EXPECT_EQ(t.name.find("table"), std::string::npos) << "rank " << r << " wrote " << t.name;
    }
    reader->Verify();
  }
  // The frozen replicated tensor (in one rank's part) and every rank's table.
  EXPECT_GE(referenced.size(), 2u);
  const std::vector<CheckpointEntry> entries = ListCheckpointEntries(Env::Default(), dir, "model");
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0].index, 12);
  EXPECT_EQ(entries[0].references.size(), static_cast<size_t>(kWorld));
  // consolidate follows the references into one standalone file.
  const std::string one = tmp_.file("inc-12.safetensors");
  ConsolidateCheckpoint(JoinPath(dir, ManifestFileName("model", 12)), one);
  {
    auto reader = CheckpointReader::Open(one);
    EXPECT_TRUE(reader->info().references.empty());
    bool has_frozen = false;
    for (const auto& t : reader->info().tensors)
      has_frozen = has_frozen || t.name == "module_interface_state/frozen";
    EXPECT_TRUE(has_frozen);
    reader->Verify();
  }
  // Resumed from 12 and run to 16: the same state as 16 steps straight.
  auto straight =
      LaunchRanks(tmp_, kWorld, tmp_.file("inc-straight"),
                  Args(16, "none", {"--incremental", "--out", "{out}"}), "inc-straight");
  ExpectAllOk(straight, "straight incremental run");
  auto l =
      LaunchRanks(tmp_, kWorld, dir,
                  Args(16, "none", {"--incremental", "--resume", "--out", "{out}"}), "inc-res");
  ExpectAllOk(l, "incremental resume");
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_NE(l.out[static_cast<size_t>(r)].find("resumed 12"), std::string::npos)
        << l.out[static_cast<size_t>(r)];
    EXPECT_EQ(ReadFileBytes(tmp_.file("inc-res-" + std::to_string(r) + ".out")),
              ReadFileBytes(tmp_.file("inc-straight-" + std::to_string(r) + ".out")))
        << "rank " << r;
  }
}

}  // namespace
}  // namespace ackpt
