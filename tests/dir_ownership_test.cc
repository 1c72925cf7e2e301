// One owner per checkpoint directory (issue 9): the lock, readers beside a
// writer in another process, lineage-aware retention after a rollback, the
// catalog (no file re-read per save), and the engine's shutdown lifetime.
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <thread>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "child_process.h"
#include "io/atomic_file.h"
#include "test_util.h"

#ifndef ACKPT_DIR_OWNER_WORKER
#error "ACKPT_DIR_OWNER_WORKER must name the worker binary"
#endif

extern char** environ;

namespace ackpt {
namespace {

using testing::ChildProcess;
using testing::ListDir;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

bool WaitForFile(const std::string& path, double timeout_seconds = 60) {
  const auto end = Clock::now() + std::chrono::duration<double>(timeout_seconds);
  while (!Env::Default()->FileExists(path)) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

DefaultCheckpointerArguments Args(const std::string& dir) {
  DefaultCheckpointerArguments a;
  a.save_dir = dir;
  a.model_state_save_dir = "";
  a.writer_threads = 1;
  a.log_level = "ERROR";
  return a;
}

Checkpoint Small(int64_t i) {
  Checkpoint c;
  c.module_interface_state.set("w",
                               testing::PatternTensor({32, 16}, at::kFloat, static_cast<int>(i)));
  c.trainer_state.set("index", i);
  return c;
}

TEST(DirOwnershipTest, SecondWriterRefusedReadersCoexistThenTakeOver) {
  TempDir dir;
  const std::string ckpt = dir.file("ckpt");
  ChildProcess writer({ACKPT_DIR_OWNER_WORKER, "write", ckpt, "2.0", dir.file("ready")});
  ASSERT_GT(writer.pid(), 0);
  ASSERT_TRUE(WaitForFile(dir.file("ready")));

  // A second writer is refused, with the directory and the holder's pid.
  try {
    DefaultCheckpointer second(Args(ckpt));
    FAIL() << "a second writer must be refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kBusy);
    const std::string msg = e.what();
    EXPECT_NE(msg.find(ckpt), std::string::npos) << msg;
    EXPECT_NE(msg.find("pid " + std::to_string(writer.pid())), std::string::npos) << msg;
  }

  // Readers (an evaluation job) come and go while the writer saves: they load
  // complete checkpoints and break none of its saves (the writer's exit code).
  int loads = 0;
  const auto end = Clock::now() + std::chrono::milliseconds(1200);
  while (Clock::now() < end) {
    auto r = Args(ckpt);
    r.checkpoint = false;
    DefaultCheckpointer reader(r);
    Checkpoint c = reader.load();
    if (c.empty()) continue;
    const int64_t i = c.trainer_state.at("index").to_int();
    EXPECT_TRUE(ExactlyEqual(c.module_interface_state, Small(i).module_interface_state) ||
                c.module_interface_state.contains("model"));
    ++loads;
    EXPECT_FALSE(reader.list_checkpoints().empty());
  }
  EXPECT_GT(loads, 0);
  EXPECT_EQ(writer.WaitOrKill(60), 0) << "the writer's saves failed while readers were active";

  // Once the owner is gone, another writer takes over and continues.
  DefaultCheckpointer next(Args(ckpt));
  EXPECT_FALSE(next.load().empty());
  next.save(Small(1000), 1000, true);
  EXPECT_EQ(next.list_checkpoints().front().index, 1000);
}

TEST(DirOwnershipTest, KilledOwnerReleasesTheLockAndItsTempFilesAreCleaned) {
  TempDir dir;
  const std::string ckpt = dir.file("ckpt");
  ChildProcess writer({ACKPT_DIR_OWNER_WORKER, "write", ckpt, "30", dir.file("ready")});
  ASSERT_TRUE(WaitForFile(dir.file("ready")));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string orphan = JoinPath(ckpt, "." + CheckpointFileName("model", 77, true) + ".tmp-" +
                                                std::to_string(writer.pid()) + "-0");
  testing::WriteFileBytes(orphan, "partial");
  writer.Signal(SIGKILL);
  EXPECT_EQ(writer.WaitOrKill(60), 128 + SIGKILL);
  DefaultCheckpointer next(Args(ckpt));  // the lock died with its holder
  EXPECT_GE(next.counters().temp_files_removed, 1u);
  for (const auto& name : ListDir(ckpt)) EXPECT_FALSE(IsTempFileName(name)) << name;
  EXPECT_FALSE(next.load().empty());
}

TEST(DirOwnershipTest, SameProcessSecondWriterIsRefusedToo) {
  TempDir dir;
  DefaultCheckpointer first(Args(dir.file("ckpt")));
  EXPECT_THROW(DefaultCheckpointer second(Args(dir.file("ckpt"))), Error);
  auto r = Args(dir.file("ckpt"));
  r.checkpoint = false;
  DefaultCheckpointer reader(r);  // readers take no lock
  EXPECT_TRUE(reader.load().empty());
}

std::vector<int64_t> Indices(const std::string& dir) {
  std::vector<int64_t> out;
  for (const auto& name : ListDir(dir)) {
    if (auto i = ParseCheckpointIndex(name, "model")) out.push_back(*i);
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(LineageTest, RollbackKeepsTheNewRunAndRetiresTheAbandonedBranch) {
  for (const bool compressed : {false, true}) {
    TempDir dir;
    const std::string ckpt = dir.file("ckpt");
    auto a = Args(ckpt);
    a.compression = compressed ? Compression::kZstd : Compression::kNone;
    {
      DefaultCheckpointer first(a);
      for (int64_t i : {100, 180, 190}) first.save(Small(i), i, true);
    }
    const std::string ext = compressed ? ".safetensors.zst" : ".safetensors";
    a.retention.keep_last = 2;
    a.load_filename = "model_100" + ext;
    {
      DefaultCheckpointer rolled(a);
      EXPECT_EQ(rolled.load().trainer_state.at("index").to_int(), 100);
      rolled.save(Small(110), 110, true);
      // The file just written survives the pass after its own commit.
      EXPECT_EQ(Indices(ckpt), (std::vector<int64_t>{100, 110}));
      rolled.save(Small(120), 120, true);
      EXPECT_EQ(Indices(ckpt), (std::vector<int64_t>{110, 120}));
      const auto listed = rolled.list_checkpoints();
      ASSERT_EQ(listed.size(), 2u);
      EXPECT_EQ(listed[0].index, 120);
      EXPECT_EQ(listed[0].parent, 110);
      EXPECT_EQ(listed[1].parent, 100);
      EXPECT_GT(listed[0].generation, listed[1].generation);
    }
    // A fresh process resumes the newest checkpoint of the current lineage.
    auto b = Args(ckpt);
    b.compression = a.compression;
    DefaultCheckpointer resumed(b);
    EXPECT_EQ(resumed.load().trainer_state.at("index").to_int(), 120);
  }
}

TEST(LineageTest, AbandonedBranchIsNotResumedAndCorruptHeadFallsBackToItsParent) {
  TempDir dir;
  const std::string ckpt = dir.file("ckpt");
  auto a = Args(ckpt);
  a.compression = Compression::kNone;
  {
    DefaultCheckpointer first(a);
    for (int64_t i : {100, 180, 190}) first.save(Small(i), i, true);
  }
  {
    auto b = a;
    b.load_filename = "model_100.safetensors";
    DefaultCheckpointer rolled(b);
    rolled.load();
    rolled.save(Small(110), 110, true);  // no retention: 180 and 190 stay
  }
  // Corrupt the head: load() goes to its parent (100), never to 190.
  const std::string head = JoinPath(ckpt, "model_110.safetensors");
  std::string bytes = testing::ReadFileBytes(head);
  bytes[bytes.size() - 1] ^= 0x5a;
  testing::WriteFileBytes(head, bytes);
  DefaultCheckpointer resumed(a);
  EXPECT_EQ(resumed.load().trainer_state.at("index").to_int(), 100);
}

// Counts opens of existing files for reading.
class CountingEnv : public EnvWrapper {
 public:
  CountingEnv() : EnvWrapper(Env::Default()) {}
  std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& p) override {
    ++opens;
    return EnvWrapper::NewRandomAccessFile(p);
  }
  std::atomic<int> opens{0};
};

TEST(CatalogTest, SavesOpenNoExistingFileWhateverTheNumberKept) {
  for (const int kept : {2, 200}) {
    TempDir dir;
    CountingEnv env;
    auto a = Args(dir.file("ckpt"));
    a.env = &env;
    a.retention.keep_last = kept;
    {
      DefaultCheckpointer fill(a);
      for (int i = 0; i < kept; ++i) fill.save(Small(i), i);
      fill.wait();
    }
    DefaultCheckpointer ck(a);  // one scan of `kept` headers at startup
    const int after_startup = env.opens.load();
    EXPECT_GE(after_startup, kept);
    for (int i = kept; i < kept + 20; ++i) ck.save(Small(i), i);
    ck.wait();
    EXPECT_EQ(env.opens.load(), after_startup) << "saves opened files with " << kept << " kept";
    EXPECT_EQ(Indices(dir.file("ckpt")).size(), static_cast<size_t>(kept));
    EXPECT_EQ(ck.list_checkpoints().front().index, kept + 19);
  }
}

// An Env whose writes block until released: a write stuck in the kernel.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  bool blocked = false;
};

class StuckEnv : public EnvWrapper {
 public:
  explicit StuckEnv(std::shared_ptr<Gate> gate)
      : EnvWrapper(Env::Default()), gate_(std::move(gate)) {}
  std::unique_ptr<WritableFile> NewWritableFile(const std::string& p) override {
    // Blocks here, with nothing of `this` touched after the wait: the test
    // frees this Env while the call is stuck.
    std::shared_ptr<Gate> gate = gate_;
    Env* target = this->target();
    std::unique_lock<std::mutex> lock(gate->mu);
    gate->blocked = true;
    gate->cv.notify_all();
    gate->cv.wait(lock, [&] { return gate->open; });
    return target->NewWritableFile(p);
  }

 private:
  std::shared_ptr<Gate> gate_;
};

TEST(LifetimeTest, StuckWritePastTheDrainTimeoutNeverTouchesTheFreedEnv) {
  TempDir dir;
  auto gate = std::make_shared<Gate>();
  std::atomic<int> callbacks{0};
  {
    auto env = std::make_unique<StuckEnv>(gate);
    auto a = Args(dir.file("ckpt"));
    a.env = env.get();
    a.drain_timeout_seconds = 0.2;
    a.retention.keep_last = 1;
    a.on_save = [&callbacks](const SaveStats&) { ++callbacks; };
    {
      DefaultCheckpointer ck(a);
      ck.save(Small(1), 1);
      ck.save(Small(2), 2);  // queued behind the stuck one
      std::unique_lock<std::mutex> lock(gate->mu);
      gate->cv.wait(lock, [&] { return gate->blocked; });
    }             // the destructor gives up after the drain timeout and returns
    env.reset();  // the caller frees its Env (ASan reports any later use)
  }
  const int before = callbacks.load();
  {
    std::lock_guard<std::mutex> lock(gate->mu);
    gate->open = true;
  }
  gate->cv.notify_all();
  // The released writer fails its save without touching the freed Env, the
  // logger or the checkpointer; on_save is no longer called.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(callbacks.load(), before);
  for (const auto& name : ListDir(dir.file("ckpt"))) {
    EXPECT_FALSE(ParseCheckpointIndex(name, "model").has_value()) << name;
  }
}

}  // namespace
}  // namespace ackpt
