// Interoperability with an independent reader: tests/interop/read_safetensors.py
// parses ackpt's files with nothing but struct, json, torch, xxhash (and
// zstandard), following docs/FORMAT.md, and writes a foreign safetensors file
// that ackpt must load.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "ackpt/state_dict.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::RunCommand;
using testing::TempDir;
using testing::WriteFileBytes;

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string ScriptCommand(const std::string& args) {
  return std::string(ACKPT_TEST_PYTHON) + " " +
         ShellQuote(std::string(ACKPT_SOURCE_DIR) + "/tests/interop/read_safetensors.py") + " " +
         args;
}

// Skips the test when the interpreter or its modules (Debian: python3-torch,
// python3-numpy, python3-xxhash) are missing; zstandard is optional.
#define REQUIRE_PYTHON_MODULES()                                                                   \
  do {                                                                                             \
    std::string out_;                                                                              \
    if (RunCommand(std::string(ACKPT_TEST_PYTHON) + " -c 'import torch, numpy, xxhash'", &out_) != \
        0) {                                                                                       \
      GTEST_SKIP() << ACKPT_TEST_PYTHON << " cannot import torch, numpy and xxhash: " << out_;     \
    }                                                                                              \
  } while (0)

// Runs the script; returns its exit status and leaves its output in *out.
int RunScript(const std::string& args, std::string* out) {
  return RunCommand(ScriptCommand(args), out);
}

// The state read_safetensors.py's expected_pattern_state() describes, item for item.
StateDict PatternState() {
  StateDict model;
  model.set("f32", PatternTensor({4, 5}, at::kFloat, 1));
  model.set("f64", PatternTensor({3}, at::kDouble, 2));
  model.set("f16", PatternTensor({2, 3}, at::kHalf, 3));
  model.set("bf16", PatternTensor({7}, at::kBFloat16, 4));
  model.set("i64", PatternTensor({2, 2}, at::kLong, 5));
  model.set("i32", PatternTensor({5}, at::kInt, 6));
  model.set("i16", PatternTensor({3, 1}, at::kShort, 7));
  model.set("i8", PatternTensor({9}, at::kChar, 8));
  model.set("u8", PatternTensor({4, 4}, at::kByte, 9));
  model.set("bool", PatternTensor({10}, at::kBool, 10));
  model.set("scalar", PatternTensor({}, at::kFloat, 11));       // 0-dim
  model.set("empty", PatternTensor({0, 3}, at::kFloat, 12));    // zero elements
  model.set("big", PatternTensor({300, 257}, at::kFloat, 13));  // spans several 64 KiB frames
  model.set("na\xc3\xafve", PatternTensor({2, 2}, at::kBFloat16, 14));

  StateDict optimizer;
  optimizer.set("step", int64_t{1234});
  optimizer.set("lr", 3e-4);
  optimizer.set("neg", int64_t{-7});
  optimizer.set("max", std::numeric_limits<int64_t>::max());
  optimizer.set("min", std::numeric_limits<int64_t>::min());
  optimizer.set("amsgrad", true);
  optimizer.set("off", false);
  optimizer.set("name", std::string("adam \"\xc3\xbc\" \\ \n\t"));
  optimizer.set("nan", std::numeric_limits<double>::quiet_NaN());
  optimizer.set("inf", std::numeric_limits<double>::infinity());
  optimizer.set("ninf", -std::numeric_limits<double>::infinity());
  optimizer.set("neg_zero", -0.0);
  optimizer.set("whole", 2.0);
  optimizer.set("third", 1.0 / 3.0);
  optimizer.set("sum", 0.1 + 0.2);
  optimizer.set("denormal", std::numeric_limits<double>::denorm_min());
  optimizer.set("huge", 1e300);
  optimizer.set("betas", List{0.9, 0.999});
  optimizer.set("state", List{StateDict{{"exp_avg", PatternTensor({4, 5}, at::kFloat, 16)},
                                        {"step", int64_t{3}}},
                              StateDict{}});

  StateDict state;
  state.set("model", model);
  state.set("weird/key%", PatternTensor({2}, at::kInt, 15));
  state.set("optimizer", optimizer);
  state.set("empty_dict", StateDict{});
  state.set("empty_list", List{});
  return state;
}

TEST(InteropTest, PythonReadsEveryDtypeAndTheStateTree) {
  REQUIRE_PYTHON_MODULES();
  TempDir dir;
  const StateDict state = PatternState();
  WriteOptions plain;
  plain.compression = Compression::kNone;
  plain.metadata["epoch"] = "3";
  plain.metadata["best metric"] = "0.25";
  const std::string plain_path = dir.file("ckpt_7.safetensors");
  WriteStateDict(state, plain_path, plain);

  WriteOptions zstd = plain;
  zstd.compression = Compression::kZstd;
  zstd.chunk_size = 64 * 1024;
  zstd.writer_threads = 3;
  const std::string zst_path = dir.file("ckpt_7.safetensors.zst");
  WriteStateDict(state, zst_path, zstd);
  ASSERT_GT(CheckpointReader::Open(zst_path)->info().num_frames, 2u);

  std::string out;
  const int rc = RunScript("check " + ShellQuote(plain_path) + " --expect pattern --zst " +
                               ShellQuote(zst_path) + " --chunk-size 65536",
                           &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("values as expected"), std::string::npos) << out;

  // And ackpt itself reads back what it wrote, from both files.
  for (const auto& path : {plain_path, zst_path}) {
    std::string why;
    EXPECT_TRUE(ExactlyEqual(ReadStateDict(path), state, &why)) << path << ": " << why;
  }
}

TEST(InteropTest, PythonCheckerRejectsCorruptFiles) {
  REQUIRE_PYTHON_MODULES();
  TempDir dir;
  WriteOptions plain;
  plain.compression = Compression::kNone;
  const std::string path = dir.file("good.safetensors");
  WriteStateDict(PatternState(), path, plain);
  const std::string good = ReadFileBytes(path);
  std::string out;
  ASSERT_EQ(RunScript("check " + ShellQuote(path) + " --expect pattern", &out), 0) << out;

  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(good[static_cast<size_t>(i)]);

  struct Case {
    const char* what;
    size_t offset;
    const char* expected_message;
  };
  const Case cases[] = {
      {"last tensor byte", good.size() - 1, "XXH3-64"},
      {"first tensor byte", 8 + n, "XXH3-64"},
      {"a header byte (inside ackpt.tree)", good.find("amsgrad"), "header checksum mismatch"},
  };
  for (const auto& c : cases) {
    ASSERT_LT(c.offset, good.size()) << c.what;
    std::string bad = good;
    bad[c.offset] = static_cast<char>(bad[c.offset] ^ 0x01);
    const std::string bad_path = dir.file("bad.safetensors");
    WriteFileBytes(bad_path, bad);
    EXPECT_EQ(RunScript("check " + ShellQuote(bad_path), &out), 1) << c.what << ":\n" << out;
    EXPECT_NE(out.find(c.expected_message), std::string::npos) << c.what << ":\n" << out;
    // ackpt agrees the file is corrupt.
    EXPECT_THROW(ReadStateDict(bad_path), Error) << c.what;
  }
  // Truncation.
  WriteFileBytes(dir.file("short.safetensors"), good.substr(0, good.size() - 3));
  EXPECT_EQ(RunScript("check " + ShellQuote(dir.file("short.safetensors")), &out), 1) << out;
}

// A user metadata key that ends in "ackpt.header_xxh3 (with a literal quote)
// and a value of sixteen zeros makes the JSON contain the exact byte string
// of the checksum placeholder before the real field; the writer must fill in
// the real one (the last occurrence), and independent readers must agree.
TEST(InteropTest, HeaderChecksumWithAKeyThatMimicsTheField) {
  REQUIRE_PYTHON_MODULES();
  TempDir dir;
  StateDict state{{"w", PatternTensor({3}, at::kFloat, 1)}};
  WriteOptions plain;
  plain.compression = Compression::kNone;
  plain.metadata["\"ackpt.header_xxh3"] = "0000000000000000";
  const std::string path = dir.file("mimic.safetensors");
  WriteStateDict(state, path, plain);

  auto reader = CheckpointReader::Open(path);
  EXPECT_EQ(reader->info().metadata.at("\"ackpt.header_xxh3"), "0000000000000000");
  std::string why;
  EXPECT_TRUE(ExactlyEqual(reader->ReadStateDict(), state, &why)) << why;
  std::string out;
  EXPECT_EQ(RunScript("check " + ShellQuote(path), &out), 0) << out;
}

// Every node of a tree the writer accepts must be within the reader's depth limit.
TEST(InteropTest, WriterNeverWritesATreeTooDeepForTheReader) {
  TempDir dir;
  // `dicts` nested dicts; the innermost holds {"leaf": leaf}, so leaf sits at
  // depth `dicts` (the root dict is depth 0, each child one deeper).
  auto nested = [](int dicts, const Value& leaf) {
    StateDict inner{{"leaf", leaf}};
    for (int i = 1; i < dicts; ++i) inner = StateDict{{"k", inner}};
    return inner;
  };
  const int kLimit = 256;  // the reader's limit on any node's depth
  for (const Value& leaf : {Value(int64_t{1}), Value(at::ones({2})), Value(List{})}) {
    const StateDict ok = nested(kLimit, leaf);
    WriteStateDict(ok, dir.file("ok.safetensors"));
    std::string why;
    EXPECT_TRUE(ExactlyEqual(ReadStateDict(dir.file("ok.safetensors")), ok, &why)) << why;
    // One more level: refused when writing, not discovered when loading.
    try {
      WriteStateDict(nested(kLimit + 1, leaf), dir.file("deep.safetensors"));
      FAIL() << "a tree the reader rejects was written";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Error::Code::kInvalidArgument) << e.what();
    }
  }
  // A list's elements are one level deeper than the list.
  EXPECT_NO_THROW(
      WriteStateDict(nested(kLimit - 1, List{int64_t{1}}), dir.file("list_ok.safetensors")));
  EXPECT_THROW(WriteStateDict(nested(kLimit, List{int64_t{1}}), dir.file("list_deep.safetensors")),
               Error);
  EXPECT_NO_THROW(ReadStateDict(dir.file("list_ok.safetensors")));
}

// The tensors read_safetensors.py's foreign_tensors() writes, in data order.
struct ForeignTensor {
  const char* name;
  std::vector<int64_t> shape;
  at::ScalarType dtype;
  int seed;
};

TEST(InteropTest, AckptReadsASafetensorsFileWrittenByPython) {
  REQUIRE_PYTHON_MODULES();
  TempDir dir;
  const std::string path = dir.file("foreign.safetensors");
  std::string out;
  ASSERT_EQ(RunScript("write " + ShellQuote(path), &out), 0) << out;

  const std::vector<ForeignTensor> expected = {
      {"mask", {3}, at::kBool, 21},
      {"embed.weight", {4, 3}, at::kFloat, 22},
      {"layers.0/attn.bias", {5}, at::kBFloat16, 23},
      {"step", {}, at::kLong, 24},
      {"ids", {2, 3}, at::kInt, 25},
      {"half", {3}, at::kHalf, 26},
      {"double", {2}, at::kDouble, 27},
      {"small", {6}, at::kChar, 28},
      {"short", {2}, at::kShort, 29},
      {"bytes", {4}, at::kByte, 30},
      {"nothing", {2, 0}, at::kFloat, 31},
  };

  auto reader = CheckpointReader::Open(path);
  const FileInfo& info = reader->info();
  EXPECT_FALSE(info.written_by_ackpt);
  EXPECT_FALSE(info.compressed);
  EXPECT_EQ(info.metadata.at("source"), "read_safetensors.py");
  reader->Verify();  // no checksums to check, but must not throw

  const StateDict loaded = reader->ReadStateDict();
  ASSERT_EQ(loaded.size(), expected.size() + 1);
  size_t i = 0;
  for (const auto& item : loaded) {  // a flat StateDict in data order
    if (i == expected.size()) {
      EXPECT_EQ(item.first, "special");
      break;
    }
    const ForeignTensor& e = expected[i++];
    EXPECT_EQ(item.first, e.name);
    ASSERT_TRUE(item.second.is_tensor()) << e.name;
    const at::Tensor& t = item.second.tensor();
    EXPECT_EQ(t.scalar_type(), e.dtype) << e.name;
    EXPECT_EQ(t.sizes().vec(), e.shape) << e.name;
    EXPECT_TRUE(t.equal(PatternTensor(e.shape, e.dtype, e.seed))) << e.name << ": " << t;
  }
  // Bit patterns of [0.5, -0.0, inf, -inf, nan] as torch writes them.
  const at::Tensor special = loaded.at("special").tensor();
  ASSERT_EQ(special.scalar_type(), at::kFloat);
  ASSERT_EQ(special.numel(), 5);
  const uint32_t bits[] = {0x3f000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u};
  EXPECT_EQ(std::memcmp(special.data_ptr(), bits, sizeof bits), 0) << special;

  // Partial reads by name work on foreign files too.
  auto some = reader->ReadTensors({"layers.0/attn.bias", "nothing"});
  EXPECT_TRUE(some.at("layers.0/attn.bias").equal(PatternTensor({5}, at::kBFloat16, 23)));
  EXPECT_EQ(some.at("nothing").numel(), 0);

  // Saved again by ackpt, the same tensors (names with '/' now escaped) pass
  // the independent checker.
  WriteOptions plain;
  plain.compression = Compression::kNone;
  const std::string again = dir.file("again.safetensors");
  WriteStateDict(loaded, again, plain);
  auto reread = CheckpointReader::Open(again);
  bool escaped = false;
  for (const auto& t : reread->info().tensors) escaped |= t.name == "layers.0%2Fattn.bias";
  EXPECT_TRUE(escaped);
  ASSERT_EQ(RunScript("check " + ShellQuote(again), &out), 0) << out;
}

}  // namespace
}  // namespace ackpt
