// python/ackpt_reader.py reads what the C++ side writes: every dtype, plain
// and zstd, a nested tree with every value kind; and it raises on damage.
// The values are handed to python/tests/check_reader.py as JSON (tensor
// bytes in hex, doubles as their bits), so Python compares exact bytes.
#include <ATen/ATen.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "ackpt/format.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::RunCommand;
using testing::TempDir;
using testing::WriteFileBytes;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

std::string Hex(const void* data, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string out;
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    out += d[p[i] >> 4];
    out += d[p[i] & 15];
  }
  return out;
}

nlohmann::json Describe(const Value& v);

// One-member object {tag: value}, built explicitly (nested brace lists are
// ambiguous between objects and arrays in nlohmann/json).
nlohmann::json Node(const char* tag, nlohmann::json value) {
  nlohmann::json j = nlohmann::json::object();
  j[tag] = std::move(value);
  return j;
}

nlohmann::json DescribeDict(const StateDict& d) {
  nlohmann::json items = nlohmann::json::array();
  for (const auto& item : d) {
    nlohmann::json pair = nlohmann::json::array();
    pair.push_back(item.first);
    pair.push_back(Describe(item.second));
    items.push_back(std::move(pair));
  }
  return Node("d", std::move(items));
}

nlohmann::json Describe(const Value& v) {
  switch (v.kind()) {
    case Value::Kind::kTensor: {
      const at::Tensor t = v.tensor().contiguous();
      nlohmann::json info = nlohmann::json::object();
      info["dtype"] = DtypeName(t.scalar_type());
      info["shape"] = t.sizes().vec();
      info["hex"] = Hex(t.data_ptr(), t.nbytes());
      return Node("T", std::move(info));
    }
    case Value::Kind::kInt:
      return Node("i", v.to_int());
    case Value::Kind::kDouble: {
      const double x = v.to_double();
      uint64_t bits;
      std::memcpy(&bits, &x, 8);
      char buf[17];
      std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(bits));
      return Node("f", std::string(buf));
    }
    case Value::Kind::kBool:
      return Node("b", v.to_bool());
    case Value::Kind::kString:
      return Node("s", v.str());
    case Value::Kind::kList: {
      nlohmann::json items = nlohmann::json::array();
      for (const auto& e : v.list()) items.push_back(Describe(e));
      return Node("l", std::move(items));
    }
    case Value::Kind::kDict:
      return DescribeDict(v.dict());
  }
  return nullptr;
}

// Every dtype ackpt writes, odd shapes, and every value kind in a nested tree.
StateDict AllKindsState() {
  StateDict dtypes;
  const std::pair<const char*, at::ScalarType> types[] = {
      {"bool", at::kBool}, {"u8", at::kByte},    {"i8", at::kChar},  {"i16", at::kShort},
      {"i32", at::kInt},   {"i64", at::kLong},   {"f16", at::kHalf}, {"bf16", at::kBFloat16},
      {"f32", at::kFloat}, {"f64", at::kDouble},
  };
  int seed = 0;
  for (const auto& [name, type] : types) {
    dtypes.set(name, PatternTensor({3, 5}, type, ++seed));
  }
  StateDict state = testing::SampleState(4);
  state.set("dtypes", dtypes);
  state.set("odd", StateDict{{"empty", PatternTensor({0, 4}, at::kFloat)},
                             {"scalar", PatternTensor({}, at::kDouble, 9)},
                             {"enc/w%", PatternTensor({2}, at::kBFloat16, 10)},
                             {"ünïcode ✓", PatternTensor({1}, at::kShort, 11)}});
  // Large enough for many 64 KiB frames, so tensors straddle frame borders.
  state.set("big", PatternTensor({150000}, at::kFloat, 12));
  state.set("scalars", List{int64_t{-(int64_t{1} << 62)}, 0.1, -0.0, std::nan(""), INFINITY,
                            -INFINITY, 5e-324, true, std::string("text \"quoted\"\n")});
  state.set("deep", List{List{StateDict{{"x", List{PatternTensor({2}, at::kLong, 13)}}}}});
  return state;
}

class PythonReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (RunCommand(std::string(ACKPT_TEST_PYTHON) + " -c 'import numpy, xxhash, zstandard'") != 0) {
      GTEST_SKIP() << ACKPT_TEST_PYTHON
                   << " lacks numpy, xxhash or zstandard (python3-numpy, python3-xxhash, "
                      "python3-zstandard)";
    }
    state_ = AllKindsState();
    WriteOptions plain;
    plain.compression = Compression::kNone;
    plain.fsync = false;
    plain.metadata = {{"epoch", "7"}};
    WriteStateDict(state_, plain_, plain);
    WriteOptions zstd = plain;
    zstd.compression = Compression::kZstd;
    zstd.chunk_size = 64 * 1024;
    WriteStateDict(state_, zst_, zstd);
    WriteOptions grouped = zstd;
    grouped.compression = Compression::kZstdByteGrouped;
    WriteStateDict(state_, grouped_, grouped);

    nlohmann::json expect;
    expect["tree"] = DescribeDict(state_);
    expect["metadata"] = {{"epoch", "7"}};
    std::vector<std::string> order;
    auto reader = CheckpointReader::Open(plain_);  // outlives the loop over its info
    for (const auto& t : reader->info().tensors) order.push_back(t.name);
    expect["data_order"] = order;
    WriteFileBytes(expect_, expect.dump());
  }

  int Check(const std::string& args, std::string* out) {
    return RunCommand(std::string(ACKPT_TEST_PYTHON) + " " +
                          Quote(std::string(ACKPT_SOURCE_DIR) + "/python/tests/check_reader.py") +
                          " " + args,
                      out);
  }

  // A copy of `src` at `dst` with the byte at `pos` (negative: from the end) flipped.
  void CorruptCopy(const std::string& src, const std::string& dst, int64_t pos) const {
    std::string b = ReadFileBytes(src);
    const size_t p = pos >= 0 ? static_cast<size_t>(pos) : b.size() - static_cast<size_t>(-pos);
    b[p] = static_cast<char>(b[p] ^ 0x01);
    WriteFileBytes(dst, b);
  }

  TempDir dir_;
  StateDict state_;
  const std::string plain_ = dir_.file("model_1.safetensors");
  const std::string zst_ = dir_.file("model_2.safetensors.zst");
  const std::string grouped_ = dir_.file("model_3.safetensors.zst");  // format version 3
  const std::string expect_ = dir_.file("expect.json");
};

TEST_F(PythonReaderTest, ReadsEveryValueOfPlainAndCompressedFiles) {
  ASSERT_GT(CheckpointReader::Open(zst_)->info().num_frames, 4u);
  std::string out;
  ASSERT_EQ(Check("check " + Quote(expect_) + " " + Quote(plain_) + " " + Quote(zst_), &out), 0)
      << out;
  EXPECT_NE(out.find("OK " + plain_), std::string::npos) << out;
  EXPECT_NE(out.find("OK " + zst_), std::string::npos) << out;
}

TEST_F(PythonReaderTest, ReadsByteGroupedFiles) {
  ASSERT_EQ(CheckpointReader::Open(grouped_)->info().format_version, 3);
  std::string out;
  ASSERT_EQ(Check("check " + Quote(expect_) + " " + Quote(grouped_), &out), 0) << out;
  EXPECT_NE(out.find("OK " + grouped_), std::string::npos) << out;
  EXPECT_NE(out.find("byte-grouped frames: "), std::string::npos) << out;
  // Damage inside a byte-grouped frame (the middle of the file) and in its
  // last frame is detected by the Python reader too.
  const std::string b = ReadFileBytes(grouped_);
  std::string args = "corrupt";
  for (int64_t pos :
       {static_cast<int64_t>(b.size() / 2), static_cast<int64_t>(b.size() / 3), int64_t{-60}}) {
    const std::string bad = dir_.file("badg_" + std::to_string(pos) + ".safetensors.zst");
    CorruptCopy(grouped_, bad, pos);
    args += " " + Quote(bad);
  }
  EXPECT_EQ(Check(args, &out), 0) << out;
}

TEST_F(PythonReaderTest, DamageRaisesCorruptionError) {
  const FileInfo info = CheckpointReader::Open(plain_)->info();
  std::vector<std::string> bad;
  auto add = [&](const std::string& src, int64_t pos) {
    bad.push_back(dir_.file("bad_" + std::to_string(bad.size()) +
                            (src == zst_ ? ".safetensors.zst" : ".safetensors")));
    CorruptCopy(src, bad.back(), pos);
  };
  add(plain_, -100);  // tensor data: XXH3-64
  // A metadata value in the header ("7" -> "6"): still valid JSON, so only
  // the header checksum can tell.
  const size_t epoch = ReadFileBytes(plain_).find("\"epoch\":\"7\"");
  ASSERT_NE(epoch, std::string::npos);
  add(plain_, static_cast<int64_t>(epoch + 9));
  add(plain_, 3);                                                      // the header length
  add(zst_, 200);                                                      // inside the first frame
  add(zst_, -(static_cast<int64_t>(ReadFileBytes(zst_).size()) / 2));  // a middle frame
  add(zst_, -20);                                                      // the seek table
  // Truncated files.
  bad.push_back(dir_.file("cut.safetensors"));
  WriteFileBytes(bad.back(), ReadFileBytes(plain_).substr(0, info.logical_bytes - 7));
  bad.push_back(dir_.file("cut.safetensors.zst"));
  const std::string z = ReadFileBytes(zst_);
  WriteFileBytes(bad.back(), z.substr(0, z.size() - 30));
  std::string args = "corrupt";
  for (const auto& b : bad) args += " " + Quote(b);
  std::string out;
  EXPECT_EQ(Check(args, &out), 0) << out;
  size_t raised = 0;
  for (size_t p = out.find("RAISED"); p != std::string::npos; p = out.find("RAISED", p + 1))
    ++raised;
  EXPECT_EQ(raised, bad.size()) << out;
  EXPECT_NE(out.find("checksum mismatch in tensor"), std::string::npos) << out;
  EXPECT_NE(out.find("header checksum mismatch"), std::string::npos) << out;
}

TEST_F(PythonReaderTest, CommandLineListsAndVerifies) {
  std::string out;
  const std::string reader = std::string(ACKPT_SOURCE_DIR) + "/python/ackpt_reader.py";
  ASSERT_EQ(
      RunCommand(std::string(ACKPT_TEST_PYTHON) + " " + Quote(reader) + " --verify " + Quote(zst_),
                 &out),
      0)
      << out;
  EXPECT_NE(out.find("checksums OK"), std::string::npos) << out;
  EXPECT_NE(out.find("dtypes/bf16"), std::string::npos) << out;
  CorruptCopy(zst_, dir_.file("bad.safetensors.zst"), 300);
  EXPECT_EQ(RunCommand(std::string(ACKPT_TEST_PYTHON) + " " + Quote(reader) + " --verify " +
                           Quote(dir_.file("bad.safetensors.zst")),
                       &out),
            1)
      << out;
  EXPECT_NE(out.find("ERROR"), std::string::npos) << out;
}

}  // namespace
}  // namespace ackpt
