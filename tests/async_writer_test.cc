// The building blocks for custom checkpointers: WriteCheckpointFile /
// ReadCheckpointFile and AsyncWriter (async_writer.h).
#include "ackpt/async_writer.h"

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::FaultInjectionEnv;
using testing::Op;
using testing::PatternTensor;
using testing::TempDir;

Checkpoint Make(int seed) {
  Checkpoint c;
  c.module_interface_state.set("w", PatternTensor({64, 33}, at::kFloat, seed));
  c.trainer_state.set("optimizer",
                      StateDict{{"lr", 0.5}, {"m", PatternTensor({7}, at::kDouble, seed)}});
  c.trainer_backend_state.set("step", int64_t{seed});
  c.metrics["loss"] = 0.25 * seed;
  return c;
}

void ExpectSame(const Checkpoint& a, const Checkpoint& b) {
  std::string why;
  EXPECT_TRUE(ExactlyEqual(a.module_interface_state, b.module_interface_state, &why)) << why;
  EXPECT_TRUE(ExactlyEqual(a.trainer_state, b.trainer_state, &why)) << why;
  EXPECT_TRUE(ExactlyEqual(a.trainer_backend_state, b.trainer_backend_state, &why)) << why;
  EXPECT_EQ(a.metrics, b.metrics);
}

TEST(CheckpointFileTest, RoundTripWithMetricsAndClearErrors) {
  TempDir dir;
  for (auto comp : {Compression::kNone, Compression::kZstd}) {
    WriteOptions o;
    o.compression = comp;
    const std::string path =
        dir.file(comp == Compression::kZstd ? "c.safetensors.zst" : "c.safetensors");
    WriteCheckpointFile(Make(3), path, o);
    ExpectSame(ReadCheckpointFile(path), Make(3));
  }
  // A plain StateDict file is not a Checkpoint: its top level is not the three groups.
  WriteStateDict(StateDict{{"w", PatternTensor({4}, at::kFloat)}}, dir.file("plain.safetensors"));
  try {
    ReadCheckpointFile(dir.file("plain.safetensors"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kCorruption);
    EXPECT_NE(std::string(e.what()).find("plain.safetensors"), std::string::npos);
  }
}

TEST(AsyncWriterTest, WritesInTheBackgroundAndTheSnapshotIsPrivate) {
  TempDir dir;
  AsyncWriterOptions o;
  o.writer_threads = 2;
  o.log_level = "WARN";
  AsyncWriter writer(o);
  Checkpoint c = Make(1);
  const Checkpoint expected = Make(1);
  EXPECT_TRUE(writer.Write(c, dir.file("a.safetensors.zst"), 1));
  c.module_interface_state.at("w").tensor().fill_(-7);  // after Write(): not in the file
  writer.Wait();
  ExpectSame(ReadCheckpointFile(dir.file("a.safetensors.zst")), expected);
  // force = true: durable when it returns.
  EXPECT_TRUE(writer.Write(Make(2), dir.file("b.safetensors.zst"), 2, /*force=*/true));
  EXPECT_TRUE(Env::Default()->FileExists(dir.file("b.safetensors.zst")));
  EXPECT_EQ(writer.counters().saves_completed, 2u);
  StateDict model{{"w", PatternTensor({5, 5}, at::kBFloat16)}};
  writer.WriteStateDict(model, dir.file("model.safetensors"), 3, /*force=*/true);
  EXPECT_TRUE(ExactlyEqual(ReadStateDict(dir.file("model.safetensors")), model));
}

TEST(AsyncWriterTest, BackgroundErrorsAreStickyAndNameIndexAndPath) {
  TempDir dir;
  FaultInjectionEnv env;
  AsyncWriterOptions o;
  o.writer_threads = 1;
  o.log_level = "OFF";
  o.env = &env;
  AsyncWriter writer(o);
  env.FailOp(Op::kAppend, ENOSPC, /*count=*/1);
  writer.Write(Make(1), dir.file("x.safetensors.zst"), 41);
  try {
    writer.Wait();
    FAIL() << "the failed write must be raised";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kIOError);
    EXPECT_NE(std::string(e.what()).find("index 41"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("x.safetensors.zst"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(env.FileExists(dir.file("x.safetensors.zst")));
  writer.Write(Make(2), dir.file("y.safetensors.zst"), 42, /*force=*/true);  // later writes proceed
  ExpectSame(ReadCheckpointFile(dir.file("y.safetensors.zst")), Make(2));
}

TEST(AsyncWriterTest, BadOptionsAreArgumentErrors) {
  AsyncWriterOptions o;
  o.chunk_size = 10;
  EXPECT_THROW(AsyncWriter w(o), Error);
  o = AsyncWriterOptions();
  o.log_level = "LOUD";
  try {
    AsyncWriter w(o);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("AsyncWriterOptions.log_level"), std::string::npos);
  }
}

}  // namespace
}  // namespace ackpt
