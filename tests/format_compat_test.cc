// Format versions: files written by format version 1 (tests/data/v1/, made by
// generate_v1.cc) still load bit-exact, and reading the header of a version-2
// compressed file decompresses no tensor frame (issue 9, item 4).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/format.h"
#include "format/constants.h"
#include "format/seekable.h"
#include "mem_env.h"
#include "test_util.h"
#include "zstd_layout.h"

namespace ackpt {
namespace {

using testing::FaultInjectionEnv;
using testing::ReadFileBytes;
using testing::TempDir;

const std::string kV1 = std::string(ACKPT_SOURCE_DIR) + "/tests/data/v1";

// Exactly the state of tests/data/v1/generate_v1.cc.
StateDict FixtureState() {
  StateDict s;
  s.set("w_f32", at::arange(0, 40000, at::kFloat).mul(0.001).reshape({200, 200}));
  s.set("w_f64", at::arange(0, 3000, at::kDouble).mul(0.5).reshape({30, 100}));
  s.set("w_bf16", at::arange(0, 5000, at::kFloat).mul(0.01).to(at::kBFloat16));
  s.set("w_f16", at::arange(0, 5000, at::kFloat).mul(0.01).to(at::kHalf).reshape({50, 100}));
  s.set("idx_i64", at::arange(0, 777, at::kLong));
  s.set("mask_bool", at::arange(0, 99, at::kInt).remainder(3).eq(0));
  s.set("bytes_u8", at::arange(0, 256, at::kInt).to(at::kByte));
  s.set("scalar", at::scalar_tensor(3.5, at::kFloat));
  s.set("empty", at::empty({0, 4}, at::kFloat));
  StateDict nested{{"step", 42}, {"lr", 0.125}, {"name", "v1-fixture"}, {"flag", true}};
  nested.set("list", List{Value(1), Value("two"), Value(at::ones({3}))});
  s.set("trainer", nested);
  return s;
}

uint64_t BytesRead(const FaultInjectionEnv& env) {
  uint64_t n = 0;
  for (const auto& r : env.reads()) n += r.length;
  return n;
}

TEST(FormatCompatTest, Version1FilesLoadBitExact) {
  const StateDict want = FixtureState();
  for (const char* name : {"state_v1.safetensors", "state_v1.safetensors.zst"}) {
    SCOPED_TRACE(name);
    const std::string path = kV1 + "/" + name;
    auto reader = CheckpointReader::Open(path);
    EXPECT_EQ(reader->info().format_version, 1);
    std::string why;
    EXPECT_TRUE(ExactlyEqual(want, reader->ReadStateDict(), &why)) << why;
    EXPECT_NO_THROW(reader->Verify());
  }
}

TEST(FormatCompatTest, Version1CompressedHeaderReadsOnlyAPrefixOfFrame0) {
  const std::string path = kV1 + "/state_v1.safetensors.zst";
  FaultInjectionEnv env;
  auto reader = CheckpointReader::Open(path, {}, &env);
  const auto& info = reader->info();
  ASSERT_GT(info.num_frames, 2u);
  const auto table = format::ReadSeekTable(*Env::Default()->NewRandomAccessFile(path));
  ASSERT_GT(table.frame(0).decompressed_size, info.header_bytes) << "frame 0 shares the data";
  // The header needs a prefix of frame 0: at most two 64 KiB input steps
  // (length, then header) plus the seek table, never the other frames.
  EXPECT_LE(BytesRead(env), table.table_bytes + 64 + 2 * table.frame(0).compressed_size);
  const uint64_t frame1 = table.frame(1).compressed_offset;
  for (const auto& r : env.reads()) {
    EXPECT_TRUE(r.offset + r.length <= frame1 || r.offset >= info.file_bytes - table.table_bytes)
        << "read [" << r.offset << ", +" << r.length << ") touches tensor frames";
  }
}

TEST(FormatCompatTest, Version1CheckpointsLoadThroughTheCheckpointerAndTheCli) {
  TempDir dir;
  for (const char* name : {"model_10.safetensors.zst", "model_20.safetensors.zst"}) {
    ASSERT_EQ(testing::RunCommand("cp '" + kV1 + "/" + name + "' '" + dir.path() + "/'"), 0);
  }
  DefaultCheckpointerArguments a;
  a.save_dir = dir.path();
  a.model_state_save_dir = "";
  a.checkpoint = false;
  a.pin_host_memory = false;
  a.log_level = "OFF";
  DefaultCheckpointer c(a);
  for (int64_t i : {10, 20}) {
    SCOPED_TRACE(i);
    Checkpoint got = c.load_index(i);
    std::string why;
    EXPECT_TRUE(ExactlyEqual(FixtureState(), got.module_interface_state, &why)) << why;
    EXPECT_EQ(got.trainer_backend_state.at("step").to_int(), i);
    // The catalog metadata of version 1 reads too (metrics drive best-by-metric).
    const std::string file = dir.file("model_" + std::to_string(i) + ".safetensors.zst");
    const auto md = CheckpointReader::Open(file)->info().metadata;
    ASSERT_TRUE(md.count("ackpt.metrics"));
    EXPECT_EQ(nlohmann::json::parse(md.at("ackpt.metrics")).at("val_loss").get<double>(), 1.0 / i);
    EXPECT_EQ(md.at("ackpt.index"), std::to_string(i));
  }
  Checkpoint latest = c.load();
  EXPECT_EQ(latest.trainer_backend_state.at("step").to_int(), 20);
  Checkpoint best = c.load_best("val_loss");  // 1/20 < 1/10
  EXPECT_EQ(best.trainer_backend_state.at("step").to_int(), 20);
  for (const char* name : {"model_10.safetensors.zst", "model_20.safetensors.zst"}) {
    std::string out;
    EXPECT_EQ(
        testing::RunCommand(std::string(ACKPT_CLI) + " verify '" + dir.file(name) + "'", &out), 0)
        << out;
  }
  std::string out;
  EXPECT_EQ(testing::RunCommand(std::string(ACKPT_CLI) + " verify '" + kV1 +
                                    "/state_v1.safetensors' '" + kV1 + "/state_v1.safetensors.zst'",
                                &out),
            0)
      << out;
}

// A big multi-frame version-2 file: Open reads the seek table and frame 0
// (the header region) and nothing of the tensor frames.
void ExpectHeaderOnlyOpen(const std::string& path) {
  const auto table = format::ReadSeekTable(*Env::Default()->NewRandomAccessFile(path));
  ASSERT_GT(table.num_frames(), 20u);
  FaultInjectionEnv env;
  auto reader = CheckpointReader::Open(path, {}, &env);
  EXPECT_EQ(reader->info().format_version, format::kFormatVersion);
  EXPECT_EQ(table.frame(0).decompressed_size, reader->info().header_bytes);
  const uint64_t table_start = reader->info().file_bytes - table.table_bytes;
  const uint64_t frame1 = table.frame(1).compressed_offset;
  for (const auto& r : env.reads()) {
    EXPECT_TRUE(r.offset + r.length <= frame1 || r.offset >= table_start)
        << "read [" << r.offset << ", +" << r.length << ") touches tensor frames";
  }
  // Frame 0 at most twice (its first bytes give the length) and the table.
  EXPECT_LE(BytesRead(env), 2 * table.frame(0).compressed_size + table.table_bytes + 64);
  EXPECT_LT(BytesRead(env), reader->info().file_bytes / 20);
  // ... and the data still reads.
  EXPECT_NO_THROW(reader->Verify());
}

StateDict BigState() {
  StateDict s;
  for (int i = 0; i < 8; ++i) s.set("t" + std::to_string(i), at::randn({200000}, at::kFloat));
  s.set("meta", StateDict{{"step", 5}});
  return s;
}

TEST(FormatCompatTest, HeaderOfACompressedFileReadsNoTensorFrame) {
  TempDir dir;
  const StateDict state = BigState();
  WriteOptions o;
  o.fsync = false;
  o.compression = Compression::kNone;
  WriteStateDict(state, dir.file("plain"), o);
  // The layout itself, built independently of the writer ...
  testing::WriteFileBytes(dir.file("v2.zst"),
                          testing::CompressV2(ReadFileBytes(dir.file("plain")), 64 * 1024));
  ExpectHeaderOnlyOpen(dir.file("v2.zst"));
  // ... and as the writer produces it.
  o.compression = Compression::kZstd;
  o.chunk_size = 64 * 1024;
  WriteStateDict(state, dir.file("w.zst"), o);
  ExpectHeaderOnlyOpen(dir.file("w.zst"));
  std::string why;
  EXPECT_TRUE(ExactlyEqual(state, ReadStateDict(dir.file("w.zst")), &why)) << why;
}

TEST(FormatCompatTest, Version2FileWithoutTheHeaderFrameIsCorruption) {
  TempDir dir;
  WriteOptions o;
  o.fsync = false;
  o.compression = Compression::kNone;
  WriteStateDict(BigState(), dir.file("plain"), o);
  const std::string plain = ReadFileBytes(dir.file("plain"));
  const uint64_t region = testing::HeaderRegionSize(plain);
  for (const auto& [what, bytes] : {
           std::pair<std::string, std::string>{"v1 layout", testing::CompressV1(plain, 64 * 1024)},
           {"header frame too short", testing::CompressAt(plain, {region - 8, region + 5000})},
           {"header frame too long", testing::CompressAt(plain, {region + 8})},
       }) {
    SCOPED_TRACE(what);
    testing::MemEnv env;
    env.Put("/mem/x", bytes);
    try {
      CheckpointReader::Open("/mem/x", {}, &env);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Error::Code::kCorruption);
      EXPECT_NE(std::string(e.what()).find("first zstd frame"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace ackpt
