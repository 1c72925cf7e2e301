// Two tiers, four Gloo ranks on 127.0.0.1 (docs/TIERS.md): a local directory
// per rank ("node"), peer replication r -> r+1, promotion to the shared
// save_dir every 3rd step; lost nodes, a shared file system that goes away.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "ackpt/file_names.h"
#include "dist_launch.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::Contains;
using testing::Launch;
using testing::ListDir;
using testing::TempDir;

constexpr int kWorld = 4;

class TiersDistTest : public ::testing::Test {
 protected:
  std::string persistent() const { return tmp_.file("persistent"); }
  std::string local_root() const { return tmp_.file("local"); }
  std::string local(int r) const { return local_root() + "/rank" + std::to_string(r); }

  Launch Run(std::vector<std::string> extra, const std::string& name) {
    std::vector<std::string> args{"--local", local_root()};
    args.insert(args.end(), extra.begin(), extra.end());
    return testing::LaunchRanks(ACKPT_TIERS_WORKER, tmp_, kWorld, persistent(), args, name, 120);
  }
  static void ExpectAllOk(const Launch& l) {
    for (int r = 0; r < kWorld; ++r) {
      EXPECT_EQ(l.status[static_cast<size_t>(r)], 0) << "rank " << r << ":\n" << l.out[r];
    }
  }
  // Manifest indices and part files (index, rank) in a directory.
  static std::set<int64_t> Manifests(const std::string& dir) {
    std::set<int64_t> s;
    for (const auto& n : ListDir(dir))
      if (auto i = ParseManifestIndex(n, "model")) s.insert(*i);
    return s;
  }
  static std::set<std::pair<int64_t, int>> Parts(const std::string& dir) {
    std::set<std::pair<int64_t, int>> s;
    for (const auto& n : ListDir(dir))
      if (auto p = ParsePartFileName(n, "model")) s.insert(*p);
    return s;
  }
  void Remove(const std::string& dir) { std::system(("rm -rf '" + dir + "'").c_str()); }

  TempDir tmp_;
};

TEST_F(TiersDistTest, EachRankKeepsItsPartAndItsPeersReplicaAndEveryThirdIsPromoted) {
  ExpectAllOk(Run({"--steps", "8"}, "run"));
  // Persistent: 0, 3, 6, each with four parts (written once, by promotion).
  EXPECT_EQ(Manifests(persistent()), (std::set<int64_t>{0, 3, 6}));
  EXPECT_EQ(Parts(persistent()).size(), 12u);
  for (int r = 0; r < kWorld; ++r) {
    SCOPED_TRACE("rank " + std::to_string(r));
    // Local keep_last 2: the manifests of 6 and 7, this rank's parts and the
    // replica of rank r-1's.
    const int from = (r + kWorld - 1) % kWorld;
    EXPECT_EQ(Manifests(local(r)), (std::set<int64_t>{6, 7}));
    EXPECT_EQ(Parts(local(r)),
              (std::set<std::pair<int64_t, int>>{{6, r}, {7, r}, {6, from}, {7, from}}));
    // The replica is the peer's part, byte for byte.
    const std::string name = PartFileName("model", 7, from, false);
    EXPECT_EQ(testing::ReadFileBytes(local(r) + "/" + name),
              testing::ReadFileBytes(local(from) + "/" + name));
  }
  // A promoted part is the local part, byte for byte.
  const std::string p6 = PartFileName("model", 6, 2, false);
  EXPECT_EQ(testing::ReadFileBytes(persistent() + "/" + p6),
            testing::ReadFileBytes(local(2) + "/" + p6));

  // `ackpt ls` sees both tiers as the checkpointer wrote them: 7 only
  // local, 6 in both, 3 only persistent; after a lost node, still complete.
  Remove(local(1));
  std::string out;
  ASSERT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " ls --json " + persistent() +
                                    " --local-dir '" + local_root() + "/rank{rank}' 2>/dev/null",
                                &out),
            0)
      << out;
  const nlohmann::json ls = nlohmann::json::parse(out);
  std::map<int64_t, std::pair<std::string, std::string>> tiers;  // index -> (persistent, local)
  for (const auto& c : ls.at("checkpoints")) {
    tiers[c.at("index").get<int64_t>()] = {c.at("tiers").at("persistent").at("status"),
                                           c.at("tiers").at("local").at("status")};
  }
  EXPECT_EQ(tiers[7], std::make_pair(std::string("absent"), std::string("complete"))) << out;
  EXPECT_EQ(tiers[6], std::make_pair(std::string("complete"), std::string("complete"))) << out;
  EXPECT_EQ(tiers[3], std::make_pair(std::string("complete"), std::string("absent"))) << out;
}

TEST_F(TiersDistTest, ALostNodeResumesFromThePeerReplicaAndTwoLostNodesFromThePersistentTier) {
  // Rank 2 dies (kill -9) after step 7 committed; the launcher kills the rest.
  const Launch crash = Run({"--steps", "10", "--kill-rank", "2", "--kill-at", "7"}, "crash");
  EXPECT_EQ(crash.status[2], 128 + SIGKILL);
  // ... and its node's disk is gone with it.
  Remove(local(2));
  const Launch one = Run({"--steps", "8", "--resume"}, "one-lost");
  ExpectAllOk(one);
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_TRUE(
        Contains(one.out[r], "resumed 7 tier local restored " + std::string(r == 2 ? "1" : "0")))
        << "rank " << r << ":\n"
        << one.out[r];
    EXPECT_TRUE(Contains(one.out[r], "verified")) << one.out[r];
  }
  // Rank 2's part came back into its local tier, and it holds rank 1's replica again.
  EXPECT_TRUE(Parts(local(2)).count({7, 2}));
  EXPECT_TRUE(Parts(local(2)).count({7, 1}));
  EXPECT_TRUE(Manifests(local(2)).count(7));

  // Now rank 2 and its peer (rank 3, which keeps rank 2's replica) are lost:
  // no local copy of rank 2's part is left; the persistent tier has 6.
  Remove(local(2));
  Remove(local(3));
  const Launch two = Run({"--steps", "7", "--resume"}, "two-lost");
  ExpectAllOk(two);
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_TRUE(Contains(two.out[r], "resumed 6 tier persistent")) << "rank " << r << ":\n"
                                                                   << two.out[r];
    EXPECT_TRUE(Contains(two.out[r], "verified")) << two.out[r];
  }
}

TEST_F(TiersDistTest, ALostNodeWithOnlyRankLocalStateMovesOnlyItsOwnParts) {
  const Launch crash =
      Run({"--steps", "10", "--kill-rank", "2", "--kill-at", "7", "--rank-local-only"}, "crash");
  EXPECT_EQ(crash.status[2], 128 + SIGKILL);
  Remove(local(2));
  const Launch one = Run({"--steps", "8", "--resume", "--rank-local-only"}, "one-lost");
  ExpectAllOk(one);
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_TRUE(Contains(one.out[r], "resumed 7 tier local")) << "rank " << r << ":\n"
                                                              << one.out[r];
    EXPECT_TRUE(Contains(one.out[r], "verified")) << one.out[r];
  }
  // Each surviving rank reads only its own part, which it holds: nothing
  // moves to it. Rank 2 gets its part back, and the replica it keeps.
  for (int r : {0, 1, 3}) {
    EXPECT_TRUE(Contains(one.out[r], "restored 0 transferred 0 verified")) << "rank " << r << ":\n"
                                                                           << one.out[r];
  }
  EXPECT_TRUE(Contains(one.out[2], "restored 1 transferred ")) << one.out[2];
  EXPECT_FALSE(Contains(one.out[2], "transferred 0 ")) << one.out[2];
  EXPECT_TRUE(Parts(local(2)).count({7, 2}));
  EXPECT_TRUE(Parts(local(2)).count({7, 1}));
}

TEST_F(TiersDistTest, SharedFileSystemGoneKeepsLocalSavesWorkingAndReportsTheError) {
  const Launch l = Run({"--steps", "8", "--remove-persistent-at", "2"}, "nofs");
  ExpectAllOk(l);
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_TRUE(Contains(l.out[r], "counters saves=8 ")) << "rank " << r << ":\n" << l.out[r];
    EXPECT_FALSE(Contains(l.out[r], "promote_failed=0 ")) << l.out[r];
  }
  EXPECT_EQ(Manifests(local(0)), (std::set<int64_t>{6, 7}));
  const Launch back = Run({"--steps", "8", "--resume"}, "nofs-resume");
  ExpectAllOk(back);
  for (int r = 0; r < kWorld; ++r)
    EXPECT_TRUE(Contains(back.out[r], "resumed 7 tier local")) << back.out[r];
}

}  // namespace
}  // namespace ackpt
