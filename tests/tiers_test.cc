// Two tiers, single process (docs/TIERS.md): every save to the local tier,
// every persist_period-th promoted byte for byte to save_dir in the
// background; load() resumes the newest checkpoint complete in either tier.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::ListDir;
using testing::ReadFileBytes;
using testing::SampleState;
using testing::TempDir;
using testing::WriteFileBytes;

Checkpoint MakeCheckpoint(int seed) {
  Checkpoint c;
  c.module_interface_state = SampleState(seed).at("model").dict();
  c.trainer_state = StateDict{{"epoch", seed}};
  return c;
}

// Forwards to the POSIX Env; calls on files under `prefix` (the persistent
// tier) can be held at a gate or made to fail, the rest pass untouched.
class TierEnv : public EnvWrapper {
 public:
  explicit TierEnv(std::string prefix) : EnvWrapper(Env::Default()), prefix_(std::move(prefix)) {}

  void Hold() {
    std::lock_guard<std::mutex> l(mu_);
    held_ = true;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> l(mu_);
      held_ = false;
    }
    cv_.notify_all();
  }
  // Fail every write under the prefix (a shared file system that is down),
  // or only the n-th append from now (a copy that dies half-way).
  void FailWrites(bool on) {
    std::lock_guard<std::mutex> l(mu_);
    fail_ = on;
  }
  void FailAppendAfter(int n) {
    std::lock_guard<std::mutex> l(mu_);
    fail_append_after_ = n;
  }
  int held_calls() const { return held_calls_; }

  std::unique_ptr<WritableFile> NewWritableFile(const std::string& path) override {
    Gate(path);
    auto f = EnvWrapper::NewWritableFile(path);
    if (!Under(path)) return f;
    return std::make_unique<File>(this, std::move(f));
  }
  void RenameFile(const std::string& from, const std::string& to) override {
    Gate(to);
    EnvWrapper::RenameFile(from, to);
  }

 private:
  class File : public WritableFile {
   public:
    File(TierEnv* env, std::unique_ptr<WritableFile> base) : env_(env), base_(std::move(base)) {}
    void Append(const void* data, size_t n) override {
      env_->Gate(base_->path());
      env_->MaybeFailAppend(base_->path());
      base_->Append(data, n);
    }
    void Sync() override { base_->Sync(); }
    void Close() override { base_->Close(); }
    const std::string& path() const override { return base_->path(); }

   private:
    TierEnv* env_;
    std::unique_ptr<WritableFile> base_;
  };

  bool Under(const std::string& path) const { return path.rfind(prefix_ + "/", 0) == 0; }
  void Gate(const std::string& path) {
    if (!Under(path)) return;
    std::unique_lock<std::mutex> l(mu_);
    if (held_) ++held_calls_;
    cv_.wait(l, [&] { return !held_; });
    if (fail_) throw Error::IO("write", path, EIO);
  }
  void MaybeFailAppend(const std::string& path) {
    std::lock_guard<std::mutex> l(mu_);
    if (fail_append_after_ > 0 && --fail_append_after_ == 0) throw Error::IO("write", path, EIO);
  }

  const std::string prefix_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  bool fail_ = false;
  int fail_append_after_ = 0;
  std::atomic<int> held_calls_{0};
};

struct Tiers {
  TempDir tmp;
  std::string persistent = tmp.file("persistent");
  std::string local = tmp.file("local");

  DefaultCheckpointerArguments Args(int64_t persist_period = 3) const {
    DefaultCheckpointerArguments a;
    a.save_dir = persistent;
    a.model_state_save_dir = persistent;
    a.writer_threads = 2;
    a.compression = Compression::kNone;
    a.local_tier.dir = local;
    a.local_tier.persist_period = persist_period;
    // A loaded machine may leave the nice-19 promotion thread without a
    // core for a while: let due promotions queue (skipping has its own test).
    a.local_tier.max_pending_promotions = 16;
    return a;
  }
  std::string LocalFile(int64_t i, bool zst = false) const {
    return local + "/" + CheckpointFileName("model", i, zst);
  }
  std::string PersistentFile(int64_t i, bool zst = false) const {
    return persistent + "/" + CheckpointFileName("model", i, zst);
  }
};

std::set<int64_t> Indices(const std::vector<CheckpointEntry>& entries) {
  std::set<int64_t> s;
  for (const auto& e : entries) s.insert(e.index);
  return s;
}

std::set<int64_t> FilesIn(const std::string& dir) {
  std::set<int64_t> s;
  for (const auto& name : ListDir(dir)) {
    auto i = ParseCheckpointIndex(name, "model");
    if (i) s.insert(*i);
  }
  return s;
}

TEST(TiersTest, LocalEveryStepPersistentEveryThirdWithIdenticalBytes) {
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    SCOPED_TRACE(c == Compression::kNone ? "plain" : "zstd");
    Tiers t;
    DefaultCheckpointerArguments a = t.Args(3);
    a.compression = c;
    a.local_tier.retention.keep_last = 2;
    {
      DefaultCheckpointer ck(a);
      for (int i = 0; i < 8; ++i) ck.save(MakeCheckpoint(i), i);
      ck.wait();
      const CheckpointerCounters n = ck.counters();
      EXPECT_EQ(n.saves_completed, 8u);
      EXPECT_EQ(n.promotions_completed, 3u);  // 0, 3, 6
      EXPECT_EQ(n.promotions_skipped + n.promotions_failed, 0u);
      EXPECT_EQ(Indices(ck.list_local_checkpoints()), (std::set<int64_t>{6, 7}));
      EXPECT_EQ(Indices(ck.list_checkpoints()), (std::set<int64_t>{0, 3, 6}));
      EXPECT_EQ(ck.promotion_error(), "");
    }
    const bool zst = c != Compression::kNone;
    EXPECT_EQ(FilesIn(t.local), (std::set<int64_t>{6, 7}));
    EXPECT_EQ(FilesIn(t.persistent), (std::set<int64_t>{0, 3, 6}));
    // Promotion copies the committed file: no re-encode, no second snapshot.
    const std::string local6 = ReadFileBytes(t.LocalFile(6, zst));
    ASSERT_FALSE(local6.empty());
    EXPECT_TRUE(local6 == ReadFileBytes(t.PersistentFile(6, zst)));
    // The promoted copy is a complete, verifiable checkpoint on its own.
    auto r = CheckpointReader::Open(t.PersistentFile(3, zst));
    EXPECT_NO_THROW(r->ReadStateDict());
  }
}

TEST(TiersTest, LoadResumesTheNewestInEitherTier) {
  Tiers t;
  {
    DefaultCheckpointer ck(t.Args(3));
    for (int i = 0; i < 8; ++i) ck.save(MakeCheckpoint(i), i);
    ck.wait();
  }
  {
    DefaultCheckpointer ck(t.Args(3));
    Checkpoint c = ck.load();
    EXPECT_EQ(c.trainer_state.at("epoch").to_int(), 7);
    EXPECT_EQ(ck.last_loaded_tier(), Tier::kLocal);
    EXPECT_EQ(ck.last_loaded_path(), t.LocalFile(7));
  }
  // The local copy of 7 is corrupt and 6's is gone: 6 from the persistent tier.
  std::string bytes = ReadFileBytes(t.LocalFile(7));
  bytes[bytes.size() / 2] ^= 0x5a;
  WriteFileBytes(t.LocalFile(7), bytes);
  std::remove(t.LocalFile(6).c_str());
  {
    DefaultCheckpointer ck(t.Args(3));
    Checkpoint c = ck.load();
    EXPECT_EQ(c.trainer_state.at("epoch").to_int(), 6);
    EXPECT_EQ(ck.last_loaded_tier(), Tier::kPersistent);
    EXPECT_EQ(ck.last_loaded_path(), t.PersistentFile(6));
  }
}

TEST(TiersTest, LostLocalDiskResumesFromPersistentAndPromotionsStayNewest) {
  Tiers t;
  {
    DefaultCheckpointer ck(t.Args(3));
    for (int i = 0; i < 8; ++i) ck.save(MakeCheckpoint(i), i);
    ck.wait();
  }
  std::system(("rm -rf '" + t.local + "'").c_str());  // the node's disk is gone
  {
    DefaultCheckpointer ck(t.Args(3));
    Checkpoint c = ck.load();
    EXPECT_EQ(c.trainer_state.at("epoch").to_int(), 6);
    EXPECT_EQ(ck.last_loaded_tier(), Tier::kPersistent);
    for (int i = 7; i < 10; ++i) ck.save(MakeCheckpoint(100 + i), i);
    ck.wait();
    // The wiped local tier's new checkpoints continue above the persistent
    // tier's generations: the promoted 9 is the persistent head.
    const auto persistent = ck.list_checkpoints();
    ASSERT_FALSE(persistent.empty());
    EXPECT_EQ(persistent.front().index, 9);
    EXPECT_EQ(persistent.front().parent, 8);
  }
  std::system(("rm -rf '" + t.local + "'").c_str());
  DefaultCheckpointer ck(t.Args(3));
  EXPECT_EQ(ck.load().trainer_state.at("epoch").to_int(), 109);
}

TEST(TiersTest, PersistentRetentionCountsOnlyWhatThePersistentTierHolds) {
  Tiers t;
  DefaultCheckpointerArguments a = t.Args(3);
  a.retention.keep_last = 1;
  a.local_tier.retention.keep_last = 1;
  DefaultCheckpointer ck(a);
  for (int i = 0; i < 5; ++i) ck.save(MakeCheckpoint(i), i);
  ck.wait();
  // 4 is newer but only local (and will be retired there): 3 stays the
  // persistent tier's newest and only copy.
  EXPECT_EQ(FilesIn(t.local), (std::set<int64_t>{4}));
  EXPECT_EQ(FilesIn(t.persistent), (std::set<int64_t>{3}));
}

TEST(TiersTest, ForcedSaveIsPromotedAndDurableInBothTiersWhenItReturns) {
  Tiers t;
  DefaultCheckpointer ck(t.Args(100));
  ck.save(MakeCheckpoint(1), 1);
  ck.save(MakeCheckpoint(5), 5, /*force=*/true);
  EXPECT_TRUE(FilesIn(t.persistent).count(5));
  EXPECT_TRUE(FilesIn(t.local).count(5));
  EXPECT_FALSE(FilesIn(t.persistent).count(1));
}

TEST(TiersTest, SlowPersistentTierNeverBlocksSaveAndBehindPromotionsAreSkippedAndCounted) {
  Tiers t;
  TierEnv env(t.persistent);
  DefaultCheckpointerArguments a = t.Args(1);
  a.env = &env;
  a.local_tier.max_pending_promotions = 1;
  a.local_tier.retention.keep_last = 0;  // keep every local checkpoint
  DefaultCheckpointer ck(a);
  env.Hold();  // the shared file system stops answering
  std::atomic<int> committed{0};
  for (int i = 0; i < 6; ++i) ck.save(MakeCheckpoint(i), i);
  // Every save commits locally while the persistent tier is stuck: if a
  // save() or a local commit waited for a promotion, this would never end.
  for (int tries = 0; tries < 3000 && ck.list_local_checkpoints().size() < 6; ++tries)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(ck.list_local_checkpoints().size(), 6u);
  EXPECT_GE(env.held_calls(), 1);
  env.Release();
  ck.wait();
  const CheckpointerCounters n = ck.counters();
  // One in the copy, one waiting; the other four were skipped, and counted.
  EXPECT_EQ(n.promotions_completed, 2u);
  EXPECT_EQ(n.promotions_skipped, 4u);
  EXPECT_EQ(FilesIn(t.persistent).size(), 2u);
  (void)committed;
}

TEST(TiersTest, PersistentTierDownKeepsLocalSavesWorkingAndReportsTheError) {
  Tiers t;
  TierEnv env(t.persistent);
  DefaultCheckpointerArguments a = t.Args(1);
  a.env = &env;
  DefaultCheckpointer ck(a);
  env.FailWrites(true);
  for (int i = 0; i < 3; ++i) ck.save(MakeCheckpoint(i), i);
  EXPECT_NO_THROW(ck.save(MakeCheckpoint(3), 3, /*force=*/true));
  EXPECT_NO_THROW(ck.wait());
  const CheckpointerCounters n = ck.counters();
  EXPECT_EQ(n.saves_completed, 4u);
  EXPECT_GE(n.promotions_failed, 1u);
  EXPECT_EQ(n.promotions_completed, 0u);
  EXPECT_TRUE(testing::Contains(ck.promotion_error(), t.persistent)) << ck.promotion_error();
  EXPECT_TRUE(FilesIn(t.persistent).empty());
  EXPECT_TRUE(ListDir(t.persistent).empty());  // no temp file left
  // The shared file system is back: promotions resume.
  env.FailWrites(false);
  ck.save(MakeCheckpoint(4), 4, /*force=*/true);
  EXPECT_EQ(FilesIn(t.persistent), (std::set<int64_t>{4}));
  EXPECT_EQ(ck.counters().promotions_completed, 1u);
}

TEST(TiersTest, ACopyThatDiesHalfWayLeavesThePersistentTierConsistent) {
  Tiers t;
  TierEnv env(t.persistent);
  DefaultCheckpointerArguments a = t.Args(1);
  a.env = &env;
  Checkpoint big = MakeCheckpoint(1);
  big.module_interface_state.set("big", at::rand({3 << 20}));  // 12 MiB: several copy blocks
  {
    DefaultCheckpointer ck(a);
    ck.save(big, 0, /*force=*/true);
    env.FailAppendAfter(2);
    ck.save(big, 1, /*force=*/true);
    EXPECT_EQ(ck.counters().promotions_failed, 1u);
  }
  EXPECT_EQ(FilesIn(t.persistent), (std::set<int64_t>{0}));
  for (const auto& name : ListDir(t.persistent)) EXPECT_NE(name[0], '.') << name;
  // Only the local tier has 1; a lost local disk then resumes 0.
  std::system(("rm -rf '" + t.local + "'").c_str());
  DefaultCheckpointer ck(t.Args(1));
  ck.load();
  EXPECT_EQ(ck.last_loaded_path(), t.PersistentFile(0));
}

TEST(TiersTest, InvalidTierArgumentsNameTheField) {
  Tiers t;
  DefaultCheckpointerArguments a = t.Args(0);
  Error e = testing::CatchError([&] { DefaultCheckpointer ck(a); });
  EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
  EXPECT_TRUE(testing::Contains(e.what(), "local_tier.persist_period")) << e.what();
  a = t.Args(1);
  a.local_tier.dir = t.persistent + "/";
  e = testing::CatchError([&] { DefaultCheckpointer ck(a); });
  EXPECT_TRUE(testing::Contains(e.what(), "local_tier.dir")) << e.what();
  a = t.Args(1);
  a.local_tier.max_pending_promotions = -1;
  e = testing::CatchError([&] { DefaultCheckpointer ck(a); });
  EXPECT_TRUE(testing::Contains(e.what(), "max_pending_promotions")) << e.what();
}

TEST(TiersTest, OneTierIsUnchanged) {
  TempDir tmp;
  DefaultCheckpointerArguments a;
  a.save_dir = tmp.file("ck");
  a.model_state_save_dir = a.save_dir;
  DefaultCheckpointer ck(a);
  ck.save(MakeCheckpoint(1), 1, true);
  EXPECT_TRUE(ck.list_local_checkpoints().empty());
  ck.load();
  EXPECT_EQ(ck.last_loaded_tier(), Tier::kPersistent);
  EXPECT_EQ(ck.counters().promotions_completed, 0u);
}

}  // namespace
}  // namespace ackpt
