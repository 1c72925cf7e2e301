// The POSIX Env, the commit protocol and its failure paths.
#include "ackpt/env.h"

#include <cerrno>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "io/atomic_file.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::FaultInjectionEnv;
using testing::ListDir;
using testing::Op;
using testing::SampleState;
using testing::TempDir;

TEST(PosixEnvTest, WriteReadRenameList) {
  TempDir dir;
  Env* env = Env::Default();
  env->CreateDirs(dir.file("a/b"));
  auto f = env->NewWritableFile(dir.file("a/b/x"));
  f->Append("hello", 5);
  f->Sync();
  f->Close();
  f->Close();                                                    // idempotent
  EXPECT_THROW(env->NewWritableFile(dir.file("a/b/x")), Error);  // O_EXCL
  env->RenameFile(dir.file("a/b/x"), dir.file("a/b/y"));
  env->SyncDir(dir.file("a/b"));
  EXPECT_EQ(ListDir(dir.file("a/b")), std::vector<std::string>{"y"});
  auto r = env->NewRandomAccessFile(dir.file("a/b/y"));
  char buf[5];
  r->Read(0, 5, buf);
  EXPECT_EQ(std::string(buf, 5), "hello");
  try {
    r->Read(3, 5, buf);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kCorruption);
    EXPECT_NE(std::string(e.what()).find("unexpected end of file"), std::string::npos);
  }
  EXPECT_EQ(env->GetFileSize(dir.file("a/b/y")), 5u);
  env->RemoveFile(dir.file("a/b/y"));
  EXPECT_FALSE(env->FileExists(dir.file("a/b/y")));
  try {
    env->NewRandomAccessFile(dir.file("missing"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kNotFound);
  }
}

TEST(PosixEnvTest, IoErrorNamesCallPathAndErrno) {
  try {
    Env::Default()->NewWritableFile("/nonexistent-dir/x");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kIOError);
    EXPECT_NE(std::string(e.what()).find("open '/nonexistent-dir/x': No such file or directory"),
              std::string::npos)
        << e.what();
  }
}

TEST(PathTest, Helpers) {
  EXPECT_EQ(DirName("a/b/c"), "a/b");
  EXPECT_EQ(DirName("c"), ".");
  EXPECT_EQ(DirName("/c"), "/");
  EXPECT_EQ(BaseName("a/b/c"), "c");
  EXPECT_EQ(JoinPath("a/", "b"), "a/b");
  EXPECT_EQ(JoinPath(".", "b"), "b");
}

TEST(FileNamesTest, ExactPatternOnly) {
  EXPECT_EQ(CheckpointFileName("model", 12, false), "model_12.safetensors");
  EXPECT_EQ(CheckpointFileName("model", 0, true), "model_0.safetensors.zst");
  EXPECT_THROW(CheckpointFileName("", 1, false), Error);
  EXPECT_THROW(CheckpointFileName("a/b", 1, false), Error);
  EXPECT_THROW(CheckpointFileName("m", -1, false), Error);
  EXPECT_EQ(ParseCheckpointIndex("model_12.safetensors", "model"), 12);
  EXPECT_EQ(ParseCheckpointIndex("/runs/exp_2024_v3/model_7.safetensors.zst", "model"), 7);
  EXPECT_EQ(ParseCheckpointIndex("model_0.safetensors", "model"), 0);
  for (const char* bad :
       {"model_.safetensors", "model_1a.safetensors", "model_-1.safetensors",
        "model_01.safetensors", "model_1.safetensors.tmp", "xmodel_1.safetensors", "model_1.pt",
        "model_model_1.safetensors", "model_99999999999999999999.safetensors",
        ".model_1.safetensors.tmp-12-3", "model_1.safetensors.zst.bak"}) {
    EXPECT_FALSE(ParseCheckpointIndex(bad, "model").has_value()) << bad;
  }
  // A prefix that itself ends in digits and underscores.
  EXPECT_EQ(ParseCheckpointIndex("run_2_5.safetensors", "run_2"), 5);
  EXPECT_FALSE(ParseCheckpointIndex("run_2_5.safetensors", "run").has_value());
}

TEST(FileNamesTest, TempNames) {
  const std::string t = TempFileName("dir/model_3.safetensors");
  EXPECT_EQ(t.rfind(".model_3.safetensors.tmp-", 0), 0u) << t;
  EXPECT_TRUE(IsTempFileName(t));
  EXPECT_NE(TempFileName("x"), TempFileName("x"));
  EXPECT_FALSE(IsTempFileName("model_3.safetensors"));
  EXPECT_FALSE(IsTempFileName(".model_3.safetensors.tmp-x-1"));
  EXPECT_FALSE(IsTempFileName(".hidden"));
}

// Each step of the commit protocol fails in turn: the error names the call,
// the temp file is gone, and the final name still holds the previous file.
TEST(CommitProtocolTest, EveryFailingStepLeavesNoTempAndKeepsOldFile) {
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    for (Op op : {Op::kOpenWrite, Op::kAppend, Op::kSync, Op::kClose, Op::kRename}) {
      TempDir dir;
      FaultInjectionEnv env;
      WriteOptions options;
      options.compression = compression;
      const std::string path =
          dir.file(CheckpointFileName("m", 1, compression == Compression::kZstd));
      // Random floats: some pages even compressed, so there is something to hint.
      auto state = [](int seed) {
        StateDict s = SampleState(seed);
        s.set("noise", at::randn({16384}, at::TensorOptions().dtype(at::kFloat)).add(seed));
        return s;
      };
      WriteStateDict(state(1), path, options, &env);
      const std::string before = testing::ReadFileBytes(path);
      env.FailOp(op, op == Op::kAppend ? ENOSPC : EIO);
      try {
        WriteStateDict(state(2), path, options, &env);
        ADD_FAILURE() << "no error for " << testing::OpName(op);
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), Error::Code::kIOError);
        const std::string msg = e.what();
        EXPECT_NE(msg.find(std::string(testing::OpName(op)) + " '"), std::string::npos) << msg;
        EXPECT_NE(msg.find(op == Op::kAppend ? "No space left on device" : "Input/output error"),
                  std::string::npos)
            << msg;
      }
      env.Clear();
      EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{BaseName(path)})
          << testing::OpName(op);
      EXPECT_EQ(testing::ReadFileBytes(path), before) << testing::OpName(op);
    }
  }
}

TEST(CommitProtocolTest, SyncsFileThenDirectoryAndHonoursFsyncOff) {
  TempDir dir;
  FaultInjectionEnv env;
  std::vector<std::string> order;
  std::mutex mu;
  env.SetHook([&](Op op, const std::string&) {
    std::lock_guard<std::mutex> lock(mu);
    if (op == Op::kSync || op == Op::kClose || op == Op::kRename || op == Op::kSyncDir) {
      order.push_back(testing::OpName(op));
    }
  });
  WriteStateDict(SampleState(), dir.file("m_1.safetensors.zst"), {}, &env);
  EXPECT_EQ(order, (std::vector<std::string>{"fdatasync", "close", "rename", "fsync"}));
  order.clear();
  WriteOptions no_sync;
  no_sync.fsync = false;
  WriteStateDict(SampleState(), dir.file("m_2.safetensors.zst"), no_sync, &env);
  EXPECT_EQ(order, (std::vector<std::string>{"close", "rename"}));
}

TEST(CommitProtocolTest, DirectoryFsyncFailureIsReportedAfterRename) {
  TempDir dir;
  FaultInjectionEnv env;
  env.FailOp(Op::kSyncDir, EIO);
  const std::string path = dir.file("m_1.safetensors");
  EXPECT_THROW(WriteStateDict(SampleState(), path, {}, &env), Error);
  // The rename happened, so the final name holds a complete file.
  env.Clear();
  EXPECT_TRUE(ExactlyEqual(ReadStateDict(path), SampleState()));
  EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"m_1.safetensors"});
}

// A failing writeback hint fails the save with an error naming the call, and
// the previous file stays; a Sync failing after hints were made fails it too.
TEST(CommitProtocolTest, WritebackHintFailureFailsTheSaveAndKeepsOldFile) {
  for (auto compression : {Compression::kNone, Compression::kZstd}) {
    for (Op op : {Op::kStartWriteback, Op::kSync}) {
      TempDir dir;
      FaultInjectionEnv env;
      WriteOptions options;
      options.compression = compression;
      options.writeback_bytes = 1024;
      const std::string path =
          dir.file(CheckpointFileName("m", 1, compression == Compression::kZstd));
      // Random floats: some pages even compressed, so there is something to hint.
      auto state = [](int seed) {
        StateDict s = SampleState(seed);
        s.set("noise", at::randn({16384}, at::TensorOptions().dtype(at::kFloat)).add(seed));
        return s;
      };
      WriteStateDict(state(1), path, options, &env);
      EXPECT_GT(env.calls(Op::kStartWriteback), 0);
      const std::string before = testing::ReadFileBytes(path);
      env.FailOp(op, EIO);
      try {
        WriteStateDict(state(2), path, options, &env);
        ADD_FAILURE() << "no error for " << testing::OpName(op);
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), Error::Code::kIOError);
        EXPECT_NE(std::string(e.what()).find(std::string(testing::OpName(op)) + " '"),
                  std::string::npos)
            << e.what();
      }
      env.Clear();
      EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{BaseName(path)});
      EXPECT_EQ(testing::ReadFileBytes(path), before);
    }
  }
}

}  // namespace
}  // namespace ackpt
