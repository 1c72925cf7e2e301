// The checkpoint file format: round trips of every dtype, shape and layout,
// compression settings, partial reads, interoperability with plain
// safetensors and the zstd CLI, option validation, metadata and alignment.
#include "ackpt/format.h"

#include <ATen/ATen.h>
#include <zstd.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/error.h"
#include "format/checksum.h"
#include "format/constants.h"
#include "format/seekable.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::AllDtypes;
using testing::CatchError;
using testing::Contains;
using testing::TensorBytes;

using testing::FaultInjectionEnv;
using testing::ListDir;
using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::RunCommand;
using testing::SafetensorsBytes;
using testing::SampleState;
using testing::TempDir;
using testing::WriteFileBytes;

// ---- round trips under every storage configuration ---------------------------

struct Config {
  const char* name;
  Compression compression;
  int level;
  size_t chunk_size;
};

void PrintTo(const Config& c, std::ostream* os) { *os << c.name; }

class RoundTripTest : public ::testing::TestWithParam<Config> {
 protected:
  WriteOptions Options() const {
    WriteOptions o;
    o.compression = GetParam().compression;
    o.zstd_level = GetParam().level;
    o.chunk_size = GetParam().chunk_size;
    o.fsync = false;
    return o;
  }
  std::string Path(const std::string& stem) const {
    return dir_.file(stem + (GetParam().compression == Compression::kZstd ? ".safetensors.zst"
                                                                          : ".safetensors"));
  }

  // Writes, reads back (whole and tensor by tensor), verifies; returns the state read.
  StateDict RoundTrip(const StateDict& state, const std::string& stem = "ckpt") {
    const std::string path = Path(stem);
    const WriteResult w = WriteStateDict(state, path, Options());
    EXPECT_EQ(w.path, path);
    EXPECT_EQ(w.file_bytes, Env::Default()->GetFileSize(path));
    EXPECT_EQ(w.tensor_bytes, state.tensor_bytes());
    auto reader = CheckpointReader::Open(path);
    const FileInfo& info = reader->info();
    EXPECT_EQ(info.compressed, GetParam().compression == Compression::kZstd);
    EXPECT_TRUE(info.written_by_ackpt);
    EXPECT_EQ(info.file_bytes, w.file_bytes);
    EXPECT_EQ(info.logical_bytes, w.logical_bytes);
    EXPECT_EQ(info.tensors.size(), state.num_tensors());
    if (info.compressed) {
      const uint64_t chunk = GetParam().chunk_size;
      // Format version 2: the header region alone, then the data in chunks.
      const uint64_t data = info.logical_bytes - info.header_bytes;
      EXPECT_EQ(info.num_frames, 1 + (data + chunk - 1) / chunk);
    } else {
      EXPECT_EQ(info.num_frames, 0u);
      EXPECT_EQ(info.file_bytes, info.logical_bytes);
    }
    StateDict got = reader->ReadStateDict();
    std::string why;
    EXPECT_TRUE(ExactlyEqual(state, got, &why)) << why;
    reader->Verify();
    // Every tensor alone, through a fresh single-threaded reader.
    ReadOptions one_thread;
    one_thread.threads = 1;
    std::vector<std::string> names;
    for (const auto& t : info.tensors) names.push_back(t.name);
    const auto all = reader->ReadTensors(names);  // what ReadStateDict returned
    auto r1 = CheckpointReader::Open(path, one_thread);
    for (const auto& t : r1->info().tensors) {
      auto m = r1->ReadTensors({t.name});
      EXPECT_EQ(m.size(), 1u);
      EXPECT_EQ(m.at(t.name).scalar_type(), t.scalar_type);
      EXPECT_EQ(m.at(t.name).sizes().vec(), t.shape);
      EXPECT_EQ(TensorBytes(m.at(t.name)), TensorBytes(all.at(t.name))) << t.name;
    }
    // Without checksum verification the data is the same.
    ReadOptions no_verify;
    no_verify.verify_checksums = false;
    StateDict got2 = ReadStateDict(path, no_verify);
    EXPECT_TRUE(ExactlyEqual(state, got2, &why)) << why;
    return got;
  }

  TempDir dir_;
};

// XXH3 runs on AVX2 where the CPU has it and SSE2 otherwise; either must give
// the digests Python's xxhash gives (values from xxhash.xxh3_64_intdigest),
// one-shot or streamed in pieces of any size.
TEST(ChecksumTest, Xxh3MatchesTheReferenceOneShotAndStreamedInAnyPieces) {
  std::vector<uint8_t> b((size_t{3} << 20) | 12345);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 131 + 7);
  EXPECT_EQ(format::Xxh3(b.data(), 1000), 0x571d5cbfef44331bULL);
  EXPECT_EQ(format::Xxh3(b.data(), b.size()), 0x0bf79c87e39fa54dULL);
  for (size_t piece : {size_t{1} << 20, size_t{4097}, size_t{63}}) {
    format::Xxh3Stream s;
    for (size_t off = 0; off < b.size(); off += piece) {
      s.Update(b.data() + off, std::min(piece, b.size() - off));
    }
    EXPECT_EQ(s.Digest(), 0x0bf79c87e39fa54dULL) << piece;
  }
}

TEST_P(RoundTripTest, DtypesShapesValuesAndLayouts) {
  {
    SCOPED_TRACE("every dtype and shape");
    const std::vector<std::vector<int64_t>> shapes = {{},        {0},      {1},         {7},
                                                      {3, 0, 2}, {13, 17}, {2, 3, 5, 7}};
    StateDict state;
    int seed = 0;
    for (at::ScalarType dtype : AllDtypes()) {
      StateDict per_dtype;
      for (size_t i = 0; i < shapes.size(); ++i) {
        per_dtype.set("s" + std::to_string(i), PatternTensor(shapes[i], dtype, seed++));
      }
      state.set(DtypeName(dtype), per_dtype);
    }
    StateDict got = RoundTrip(state);
    // Spot-check dtypes and shapes explicitly (ExactlyEqual covers them too).
    EXPECT_EQ(got.at("BF16").dict().at("s3").tensor().scalar_type(), at::kBFloat16);
    EXPECT_EQ(got.at("I16").dict().at("s4").tensor().sizes().vec(),
              (std::vector<int64_t>{3, 0, 2}));
    EXPECT_EQ(got.at("F64").dict().at("s0").tensor().dim(), 0);

    // Special values survive bit-exactly.
    const double inf = std::numeric_limits<double>::infinity();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    at::Tensor f64 =
        at::tensor({nan, inf, -inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308}, at::kDouble);
    StateDict special;
    special.set("f64", f64);
    special.set("f32", f64.to(at::kFloat));
    special.set("f16", f64.to(at::kHalf));
    special.set("bf16", f64.to(at::kBFloat16));
    special.set("i64", at::tensor({std::numeric_limits<int64_t>::min(), int64_t{-1}, int64_t{0},
                                   std::numeric_limits<int64_t>::max()},
                                  at::kLong));
    special.set("i32", at::tensor({std::numeric_limits<int32_t>::min(),
                                   std::numeric_limits<int32_t>::max()},
                                  at::kInt));
    special.set("i8", at::tensor({-128, 127, 0}, at::kInt).to(at::kChar));
    special.set("u8", at::tensor({0, 255, 128}, at::kInt).to(at::kByte));
    special.set("bool", at::tensor({1, 0, 1, 1}, at::kInt).to(at::kBool));
    got = RoundTrip(special, "special");
    EXPECT_TRUE(std::isnan(got.at("f64").tensor()[0].item<double>()));
    EXPECT_TRUE(std::signbit(got.at("f32").tensor()[3].item<float>()));
    EXPECT_EQ(got.at("i64").tensor()[0].item<int64_t>(), std::numeric_limits<int64_t>::min());
  }
  {
    SCOPED_TRACE("non-contiguous inputs");
    at::Tensor base = PatternTensor({40, 30}, at::kFloat, 3);
    at::Tensor b64 = PatternTensor({20, 11}, at::kDouble, 4);
    StateDict state;
    state.set("transposed", base.t());
    state.set("row_step", base.slice(0, 1, 40, 3));
    state.set("col_step_t", base.slice(1, 0, 30, 2).t());
    state.set("narrow_offset", base.narrow(0, 5, 3));  // contiguous, non-zero storage offset
    state.set("expanded", base.narrow(0, 0, 1).expand({6, 30}));  // stride 0
    state.set("f64_step", b64.slice(1, 1, 11, 4));
    state.set(
        "channels_last",
        PatternTensor({2, 3, 4, 5}, at::kBFloat16, 5).contiguous(at::MemoryFormat::ChannelsLast));
    state.set("scalar_view", base[3][4]);
    ASSERT_FALSE(state.at("transposed").tensor().is_contiguous());
    ASSERT_FALSE(state.at("row_step").tensor().is_contiguous());
    ASSERT_FALSE(state.at("expanded").tensor().is_contiguous());
    const at::Tensor before = base.clone();
    StateDict got = RoundTrip(state);
    EXPECT_TRUE(at::equal(base, before)) << "writing must not modify the inputs";
    for (const auto& kv : state) {
      const at::Tensor& want = kv.second.tensor();
      const at::Tensor& have = got.at(kv.first).tensor();
      EXPECT_TRUE(have.is_contiguous()) << kv.first;
      EXPECT_EQ(have.sizes(), want.sizes()) << kv.first;
      EXPECT_EQ(TensorBytes(have), TensorBytes(want)) << kv.first;
    }
    // Independent value check for one of them.
    EXPECT_EQ(got.at("transposed").tensor()[7][2].item<float>(), base[2][7].item<float>());
    EXPECT_EQ(got.at("row_step").tensor()[2][5].item<float>(), base[7][5].item<float>());
  }
}

TEST_P(RoundTripTest, NestedStatesAndFrameBoundaries) {
  {
    SCOPED_TRACE("nested state, lists of dicts, empty containers");
    StateDict state = SampleState(7);
    state.set("scalars", StateDict{{"nan", std::numeric_limits<double>::quiet_NaN()},
                                   {"neg_zero", -0.0},
                                   {"inf", -std::numeric_limits<double>::infinity()},
                                   {"int_min", std::numeric_limits<int64_t>::min()},
                                   {"int_max", std::numeric_limits<int64_t>::max()},
                                   {"empty_string", std::string()},
                                   {"unicode", std::string("h\xc3\xa9llo \xe2\x9c\x93")},
                                   {"true", true}});
    // Keys that need escaping in flattened names must stay distinct.
    state.set("escapes", StateDict{{"a/b", PatternTensor({3}, at::kFloat, 1)},
                                   {"a%2Fb", PatternTensor({3}, at::kFloat, 2)},
                                   {"a", StateDict{{"b", PatternTensor({3}, at::kFloat, 3)}}},
                                   {"%", PatternTensor({1}, at::kInt, 4)}});
    state.set("lists", List{List{}, List{StateDict{}, List{PatternTensor({2, 2}, at::kShort, 5)}},
                            PatternTensor({4}, at::kHalf, 6), int64_t{3}, std::string("x")});
    state.set("empty_dict_in_list", List{StateDict{}, StateDict{}});
    StateDict got = RoundTrip(state);
    EXPECT_TRUE(got.at("empty_dict").dict().empty());
    EXPECT_TRUE(got.at("empty_list").list().empty());
    EXPECT_EQ(got.at("optimizer").dict().at("state").list().size(), 2u);
    EXPECT_EQ(got.at("scalars").dict().at("unicode").str(), "h\xc3\xa9llo \xe2\x9c\x93");

    // An empty state and one without tensors.
    StateDict empty;
    RoundTrip(empty, "empty");
    StateDict scalars{{"step", 5}, {"lr", 0.5}, {"tags", List{std::string("a"), std::string("b")}}};
    RoundTrip(scalars, "scalars");
    auto reader = CheckpointReader::Open(Path("scalars"));
    EXPECT_TRUE(reader->info().tensors.empty());
    EXPECT_EQ(reader->info().logical_bytes, reader->info().header_bytes);
  }
  {
    SCOPED_TRACE("tensors straddling frame boundaries");
    // Odd byte sizes so tensor boundaries land anywhere within a 64 KiB frame.
    StateDict state;
    state.set("u8", PatternTensor({100003}, at::kByte, 1));
    state.set("f32", PatternTensor({70001}, at::kFloat, 2));
    state.set("f64", PatternTensor({33331}, at::kDouble, 3));
    state.set("bf16", PatternTensor({65537}, at::kBFloat16, 4));
    state.set("bool", PatternTensor({99991}, at::kBool, 5));
    state.set("tiny", PatternTensor({3}, at::kChar, 6));
    // Incompressible bytes too, so frames are not all tiny.
    at::Tensor noise = at::randint(0, 256, {150001}, at::TensorOptions().dtype(at::kByte));
    state.set("noise", noise);
    RoundTrip(state);
    auto reader = CheckpointReader::Open(Path("ckpt"));
    if (GetParam().compression == Compression::kZstd &&
        GetParam().chunk_size == format::kMinChunkSize) {
      EXPECT_GE(reader->info().num_frames, 10u);
    }
    // Every tensor alone equals the original.
    for (const auto& kv : state) {
      auto m = reader->ReadTensors({kv.first});
      EXPECT_EQ(TensorBytes(m.at(kv.first)), TensorBytes(kv.second.tensor())) << kv.first;
    }
    // Several at once, in an order unrelated to the file's.
    auto m = reader->ReadTensors({"tiny", "noise", "u8", "tiny"});
    EXPECT_EQ(m.size(), 3u);
    EXPECT_EQ(TensorBytes(m.at("noise")), TensorBytes(noise));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Configs, RoundTripTest,
    ::testing::Values(Config{"plain", Compression::kNone, 1, size_t{4} << 20},
                      Config{"zstd1_default_chunk", Compression::kZstd, 1, size_t{4} << 20},
                      Config{"zstd1_64k", Compression::kZstd, 1, 64 * 1024},
                      Config{"zstd1_100001", Compression::kZstd, 1, 100001},
                      Config{"zstd3_64k", Compression::kZstd, 3, 64 * 1024},
                      Config{"zstd_neg5_64k", Compression::kZstd, -5, 64 * 1024}),
    [](const ::testing::TestParamInfo<Config>& info) { return std::string(info.param.name); });

// ---- unsupported input ----------------------------------------------------------

TEST(FormatTest, UnsupportedDtypeNamesTheTensorAndWritesNothing) {
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    TempDir dir;
    StateDict state = SampleState();
    state["model"].dict().set("rotary",
                              at::zeros({4}, at::TensorOptions().dtype(at::kComplexFloat)));
    WriteOptions o;
    o.compression = c;
    const std::string path = dir.file("c.safetensors");
    Error e = CatchError([&] { WriteStateDict(state, path, o); });
    EXPECT_EQ(e.code(), Error::Code::kUnsupported) << e.what();
    EXPECT_TRUE(Contains(e.what(), "model/rotary")) << e.what();
    EXPECT_TRUE(ListDir(dir.path()).empty());
  }
  EXPECT_EQ(CatchError([] { DtypeName(at::kComplexDouble); }).code(), Error::Code::kUnsupported);
  EXPECT_EQ(DtypeName(at::kBFloat16), "BF16");
  EXPECT_EQ(DtypeName(at::kBool), "BOOL");
}

TEST(FormatTest, OverwritesAnExistingCheckpointAtomically) {
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    TempDir dir;
    const std::string path = dir.file("o.safetensors");
    WriteOptions o;
    o.compression = c;
    WriteStateDict(SampleState(1), path, o);
    WriteStateDict(SampleState(2), path, o);
    StateDict got = ReadStateDict(path);
    EXPECT_TRUE(ExactlyEqual(got, SampleState(2)));
    EXPECT_FALSE(ExactlyEqual(got, SampleState(1)));
    // No temp files are left next to it.
    EXPECT_EQ(ListDir(dir.path()), std::vector<std::string>{"o.safetensors"});
  }
}

// ---- plain safetensors written by other tools ----------------------------------------

TEST(FormatTest, ForeignSafetensorsLoadsAsFlatStateDict) {
  TempDir dir;
  // Data order differs from the JSON key order; the F32 tensor is misaligned
  // (starts at data offset 3), which safetensors permits.
  std::string data;
  const uint8_t u8[3] = {1, 2, 250};
  const float f32[2] = {1.5f, -2.25f};
  const int16_t i16[3] = {-7, 300, 32767};
  data.append(reinterpret_cast<const char*>(u8), 3);
  data.append(reinterpret_cast<const char*>(f32), 8);
  data.append(reinterpret_cast<const char*>(i16), 6);
  const std::string header =
      R"({"z.bytes":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
      R"("model.layers.0/weight":{"dtype":"F32","shape":[2,1],"data_offsets":[3,11]},)"
      R"("a":{"dtype":"I16","shape":[3],"data_offsets":[11,17]},)"
      R"("empty":{"dtype":"F64","shape":[0,4],"data_offsets":[17,17]},)"
      R"("__metadata__":{"format":"pt","source":"hand-written"}})";
  for (size_t align : {size_t{1}, size_t{8}}) {
    const std::string path = dir.file("foreign" + std::to_string(align) + ".safetensors");
    WriteFileBytes(path, SafetensorsBytes(header, data, align));
    auto reader = CheckpointReader::Open(path);
    const FileInfo& info = reader->info();
    EXPECT_FALSE(info.written_by_ackpt);
    EXPECT_FALSE(info.compressed);
    EXPECT_EQ(info.metadata.at("source"), "hand-written");
    ASSERT_EQ(info.tensors.size(), 4u);
    EXPECT_EQ(info.tensors[0].name, "z.bytes");  // data order
    for (const auto& t : info.tensors) EXPECT_FALSE(t.has_checksum);
    StateDict got = reader->ReadStateDict();
    ASSERT_EQ(got.size(), 4u);
    EXPECT_EQ(TensorBytes(got.at("z.bytes").tensor()),
              std::string(reinterpret_cast<const char*>(u8), 3));
    const at::Tensor w = got.at("model.layers.0/weight").tensor();
    EXPECT_EQ(w.scalar_type(), at::kFloat);
    EXPECT_EQ(w.sizes().vec(), (std::vector<int64_t>{2, 1}));
    EXPECT_EQ(w[0][0].item<float>(), 1.5f);
    EXPECT_EQ(w[1][0].item<float>(), -2.25f);
    EXPECT_EQ(got.at("a").tensor()[2].item<int16_t>(), 32767);
    EXPECT_EQ(got.at("empty").tensor().sizes().vec(), (std::vector<int64_t>{0, 4}));
    reader->Verify();  // nothing to check, must not throw
  }
  // No __metadata__ at all, and an empty file of tensors.
  const std::string path = dir.file("bare.safetensors");
  WriteFileBytes(path, SafetensorsBytes("{}", "", 1));
  EXPECT_TRUE(ReadStateDict(path).empty());
}

// ---- partial reads -----------------------------------------------------------------

class PartialReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 6; ++i) {
      // ~1 MiB each; half incompressible so frames have realistic sizes.
      at::Tensor t =
          i % 2 ? at::randn({262144}, at::kFloat) : PatternTensor({262144}, at::kFloat, i);
      state_.set("t" + std::to_string(i), t);
    }
    state_.set("small", PatternTensor({5}, at::kInt, 9));
  }

  // The frames whose logical range overlaps [begin, end).
  static std::set<size_t> Overlapping(const format::SeekTable& table, uint64_t begin,
                                      uint64_t end) {
    std::set<size_t> out;
    for (size_t i = 0; i < table.num_frames(); ++i) {
      const auto f = table.frame(i);
      if (f.decompressed_offset < end && begin < f.decompressed_offset + f.decompressed_size)
        out.insert(i);
    }
    return out;
  }

  TempDir dir_;
  StateDict state_;
};

TEST_F(PartialReadTest, CompressedReadTouchesOnlyTheFramesOfTheTensor) {
  const std::string path = dir_.file("p.safetensors.zst");
  WriteOptions o;
  o.chunk_size = 64 * 1024;
  o.fsync = false;
  WriteStateDict(state_, path, o);
  const format::SeekTable table = format::ReadSeekTable(*Env::Default()->NewRandomAccessFile(path));
  ASSERT_GT(table.num_frames(), 90u);

  FaultInjectionEnv env;
  auto reader = CheckpointReader::Open(path, {}, &env);
  const uint64_t hb = reader->info().header_bytes;
  std::map<std::string, TensorInfo> by_name;
  for (const auto& t : reader->info().tensors) by_name[t.name] = t;

  for (const std::vector<std::string>& names :
       {std::vector<std::string>{"t3"}, {"t0"}, {"small"}, {"t1", "t4"}}) {
    SCOPED_TRACE(names[0]);
    env.ClearReads();
    auto got = reader->ReadTensors(names);
    ASSERT_EQ(got.size(), names.size());
    std::set<size_t> wanted;
    for (const auto& n : names) {
      EXPECT_EQ(TensorBytes(got.at(n)), TensorBytes(state_.at(n).tensor())) << n;
      const TensorInfo& t = by_name.at(n);
      auto f = Overlapping(table, hb + t.begin, hb + t.end);
      wanted.insert(f.begin(), f.end());
    }
    // Each read is exactly one wanted frame; every wanted frame is read once.
    std::multiset<size_t> read_frames;
    uint64_t bytes_read = 0;
    for (const auto& r : env.reads()) {
      EXPECT_EQ(r.path, path);
      bytes_read += r.length;
      size_t match = table.num_frames();
      for (size_t i = 0; i < table.num_frames(); ++i) {
        if (table.frame(i).compressed_offset == r.offset &&
            table.frame(i).compressed_size == r.length) {
          match = i;
        }
      }
      ASSERT_LT(match, table.num_frames())
          << "read of " << r.length << " bytes at " << r.offset << " is not a whole frame";
      EXPECT_TRUE(wanted.count(match)) << "frame " << match << " does not overlap the tensors read";
      read_frames.insert(match);
    }
    EXPECT_EQ(std::set<size_t>(read_frames.begin(), read_frames.end()), wanted);
    EXPECT_EQ(read_frames.size(), wanted.size()) << "a frame was read twice";
    EXPECT_LT(bytes_read, reader->info().file_bytes / 2);
  }
}

TEST_F(PartialReadTest, PlainReadTouchesOnlyTheTensorBytes) {
  const std::string path = dir_.file("p.safetensors");
  WriteOptions o;
  o.compression = Compression::kNone;
  o.fsync = false;
  WriteStateDict(state_, path, o);
  FaultInjectionEnv env;
  auto reader = CheckpointReader::Open(path, {}, &env);
  const uint64_t hb = reader->info().header_bytes;
  for (const auto& t : reader->info().tensors) {
    SCOPED_TRACE(t.name);
    env.ClearReads();
    auto got = reader->ReadTensors({t.name});
    EXPECT_EQ(TensorBytes(got.at(t.name)), TensorBytes(state_.at(t.name).tensor()));
    uint64_t total = 0;
    for (const auto& r : env.reads()) {
      EXPECT_GE(r.offset, hb + t.begin);
      EXPECT_LE(r.offset + r.length, hb + t.end);
      total += r.length;
    }
    EXPECT_EQ(total, t.nbytes());
  }
}

TEST_F(PartialReadTest, UnknownNamesAreNotFound) {
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    const std::string path =
        dir_.file(c == Compression::kZstd ? "n.safetensors.zst" : "n.safetensors");
    WriteOptions o;
    o.compression = c;
    o.fsync = false;
    WriteStateDict(SampleState(), path, o);
    auto reader = CheckpointReader::Open(path);
    Error e = CatchError([&] { reader->ReadTensors({"model/no_such_tensor"}); });
    EXPECT_EQ(e.code(), Error::Code::kNotFound);
    EXPECT_TRUE(Contains(e.what(), "model/no_such_tensor")) << e.what();
    e = CatchError([&] { reader->ReadTensors({"model/encoder.weight", "missing"}); });
    EXPECT_EQ(e.code(), Error::Code::kNotFound);
    // Names are flattened names, not tree keys.
    EXPECT_EQ(CatchError([&] { reader->ReadTensors({"model"}); }).code(), Error::Code::kNotFound);
    auto ok = reader->ReadTensors({"model/encoder.weight"});
    EXPECT_EQ(TensorBytes(ok.at("model/encoder.weight")),
              TensorBytes(SampleState().at("model").dict().at("encoder.weight").tensor()));
    EXPECT_TRUE(reader->ReadTensors({}).empty());
  }
}

// ---- interoperability: zstd CLI, export ----------------------------------------------

class PlainVsCompressedTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = SampleState(3);
    state_.set("big", PatternTensor({100000}, at::kFloat, 11));
    state_.set("noise", at::randn({30011}, at::kDouble));
    WriteOptions plain;
    plain.compression = Compression::kNone;
    plain.fsync = false;
    plain.metadata = {{"epoch", "4"}};
    WriteStateDict(state_, plain_path_, plain);
    WriteOptions zstd = plain;
    zstd.compression = Compression::kZstd;
    zstd.chunk_size = 64 * 1024;
    WriteStateDict(state_, zst_path_, zstd);
  }
  TempDir dir_;
  StateDict state_;
  const std::string plain_path_ = dir_.file("x.safetensors");
  const std::string zst_path_ = dir_.file("x.safetensors.zst");
};

TEST_F(PlainVsCompressedTest, ZstdCliDecompressesToThePlainFile) {
  ASSERT_GT(CheckpointReader::Open(zst_path_)->info().num_frames, 5u);
  const std::string out = dir_.file("cli.safetensors");
  std::string log;
  ASSERT_EQ(RunCommand("zstd -d -q -c '" + zst_path_ + "' > '" + out + "'", &log), 0) << log;
  const std::string plain = ReadFileBytes(plain_path_);
  ASSERT_FALSE(plain.empty());
  EXPECT_TRUE(ReadFileBytes(out) == plain) << "zstd -d output differs from the plain checkpoint";
  // The zstd CLI also checks every frame's content checksum.
  EXPECT_EQ(RunCommand("zstd -t -q '" + zst_path_ + "'", &log), 0) << log;
}

TEST_F(PlainVsCompressedTest, ExportOfCompressedFileEqualsPlainFile) {
  {
    SCOPED_TRACE("export");
    const std::string plain = ReadFileBytes(plain_path_);
    const std::string out1 = dir_.file("export1.safetensors");
    CheckpointReader::Open(zst_path_)->ExportSafetensors(out1);
    EXPECT_TRUE(ReadFileBytes(out1) == plain);
    const std::string out2 = dir_.file("export2.safetensors");
    CheckpointReader::Open(plain_path_)->ExportSafetensors(out2);
    EXPECT_TRUE(ReadFileBytes(out2) == plain);
    std::string why;
    EXPECT_TRUE(ExactlyEqual(ReadStateDict(out1), state_, &why)) << why;
    auto info = CheckpointReader::Open(out1)->info();
    EXPECT_FALSE(info.compressed);
    EXPECT_EQ(info.metadata.at("epoch"), "4");
  }
  {
    SCOPED_TRACE("same stream");
    auto a = CheckpointReader::Open(plain_path_);
    auto b = CheckpointReader::Open(zst_path_);
    EXPECT_EQ(a->info().logical_bytes, b->info().logical_bytes);
    EXPECT_EQ(a->info().header_bytes, b->info().header_bytes);
    EXPECT_EQ(a->info().metadata, b->info().metadata);
    ASSERT_EQ(a->info().tensors.size(), b->info().tensors.size());
    for (size_t i = 0; i < a->info().tensors.size(); ++i) {
      EXPECT_EQ(a->info().tensors[i].name, b->info().tensors[i].name);
      EXPECT_EQ(a->info().tensors[i].begin, b->info().tensors[i].begin);
      EXPECT_EQ(a->info().tensors[i].xxh3, b->info().tensors[i].xxh3);
    }
    EXPECT_LT(b->info().file_bytes, a->info().file_bytes);
    EXPECT_GT(b->info().compression_ratio(), 1.0);
    EXPECT_DOUBLE_EQ(a->info().compression_ratio(), 1.0);
  }
}

// ---- options ---------------------------------------------------------------------

TEST(FormatTest, OutOfRangeOptionsAreInvalidArguments) {
  TempDir dir;
  const std::string path = dir.file("o.safetensors.zst");
  const StateDict state = SampleState();
  auto expect_invalid = [&](WriteOptions o, const std::string& what) {
    SCOPED_TRACE(what);
    Error e = CatchError([&] { WriteStateDict(state, path, o); });
    EXPECT_EQ(e.code(), Error::Code::kInvalidArgument) << e.what();
    EXPECT_TRUE(ListDir(dir.path()).empty()) << "nothing may be left behind";
  };
  WriteOptions o;
  o.chunk_size = 64 * 1024 - 1;
  expect_invalid(o, "chunk 64 KiB - 1");
  o.chunk_size = 0;
  expect_invalid(o, "chunk 0");
  o.chunk_size = (size_t{1} << 30) + 1;
  expect_invalid(o, "chunk 1 GiB + 1");
  o = WriteOptions();
  o.zstd_level = ZSTD_maxCLevel() + 1;
  expect_invalid(o, "level max + 1");
  o.zstd_level = ZSTD_minCLevel() - 1;
  expect_invalid(o, "level min - 1");
  // The boundaries themselves are accepted.
  o = WriteOptions();
  o.fsync = false;
  o.chunk_size = 64 * 1024;
  o.zstd_level = ZSTD_maxCLevel();
  WriteStateDict(state, path, o);
  o.zstd_level = ZSTD_minCLevel();
  WriteStateDict(state, path, o);
  EXPECT_TRUE(ExactlyEqual(ReadStateDict(path), state));
}

TEST(FormatTest, ReservedMetadataKeysAreRejectedCustomKeysKept) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  const StateDict state = SampleState();
  for (const char* key :
       {"format", "ackpt.x", "ackpt.version", "ackpt.tree", "ackpt.header_xxh3"}) {
    WriteOptions o;
    o.metadata = {{key, "v"}};
    Error e = CatchError([&] { WriteStateDict(state, path, o); });
    EXPECT_EQ(e.code(), Error::Code::kInvalidArgument) << key;
    EXPECT_TRUE(Contains(e.what(), key)) << e.what();
    EXPECT_FALSE(Env::Default()->FileExists(path));
  }
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    WriteOptions o;
    o.compression = c;
    o.fsync = false;
    o.metadata = {{"epoch", "12"},
                  {"ackptx", "not reserved"},
                  {"note", "quote \" backslash \\ newline \n unicode \xc3\xa9"},
                  {"empty", ""},
                  // Contains the header-checksum field pattern once escaped.
                  {"x\"ackpt.header_xxh3", "0000000000000000"}};
    WriteStateDict(state, path, o);
    auto reader = CheckpointReader::Open(path);
    const auto& md = reader->info().metadata;
    for (const auto& kv : o.metadata) {
      ASSERT_TRUE(md.count(kv.first)) << kv.first;
      EXPECT_EQ(md.at(kv.first), kv.second);
    }
    EXPECT_EQ(md.at("format"), "pt");
    EXPECT_EQ(md.at("ackpt.version"), std::to_string(format::kFormatVersion));
    EXPECT_TRUE(md.count("ackpt.tree"));
    EXPECT_TRUE(md.count("ackpt.xxh3"));
    EXPECT_TRUE(md.count("ackpt.header_xxh3"));
    EXPECT_TRUE(ExactlyEqual(reader->ReadStateDict(), state));
  }
}

// ---- layout ----------------------------------------------------------------------

TEST(FormatTest, HeaderAndTensorDataAreAligned) {
  TempDir dir;
  // Insertion order that would misalign everything if written as is.
  StateDict state;
  state.set("bool3", PatternTensor({3}, at::kBool));
  state.set("u8_5", PatternTensor({5}, at::kByte));
  state.set("f64_3", PatternTensor({3}, at::kDouble));
  state.set("i16_3", PatternTensor({3}, at::kShort));
  state.set("f16_1", PatternTensor({1}, at::kHalf));
  state.set("i32_7", PatternTensor({7}, at::kInt));
  state.set("bf16_5", PatternTensor({5}, at::kBFloat16));
  state.set("i64_1", PatternTensor({1}, at::kLong));
  state.set("f32_3", PatternTensor({3}, at::kFloat));
  state.set("i8_1", PatternTensor({1}, at::kChar));
  state.set("f64_0", PatternTensor({0}, at::kDouble));
  state.set("f64_s", PatternTensor({}, at::kDouble));
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    WriteOptions o;
    o.compression = c;
    o.fsync = false;
    const std::string path =
        dir.file(c == Compression::kZstd ? "a.safetensors.zst" : "a.safetensors");
    WriteStateDict(state, path, o);
    auto reader = CheckpointReader::Open(path);
    const FileInfo& info = reader->info();
    EXPECT_EQ(info.header_bytes % 8, 0u);
    for (const auto& t : info.tensors) {
      const uint64_t esize = at::elementSize(t.scalar_type);
      EXPECT_EQ((info.header_bytes + t.begin) % esize, 0u) << t.name << " at " << t.begin;
    }
  }
  // Independent check of the plain layout: parse the bytes ourselves.
  const std::string bytes = ReadFileBytes(dir.file("a.safetensors"));
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
  ASSERT_LE(8 + n, bytes.size());
  EXPECT_EQ((8 + n) % 8, 0u);
  const std::string text = bytes.substr(8, n);
  const size_t json_end = text.find_last_not_of(' ') + 1;
  EXPECT_EQ(text.size(), (json_end + 7) / 8 * 8) << "space padding must be minimal";
  nlohmann::json h = nlohmann::json::parse(text);
  ASSERT_TRUE(h.contains("__metadata__"));
  size_t tensors = 0;
  uint64_t covered = 0;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    ++tensors;
    const uint64_t b = it.value()["data_offsets"][0], e = it.value()["data_offsets"][1];
    covered += e - b;
    const at::Tensor& want = state.at(it.key()).tensor();
    EXPECT_EQ(it.value()["dtype"].get<std::string>(), DtypeName(want.scalar_type()));
    EXPECT_EQ(it.value()["shape"].get<std::vector<int64_t>>(), want.sizes().vec());
    EXPECT_EQ(bytes.substr(8 + n + b, e - b), TensorBytes(want)) << it.key();
    EXPECT_EQ((8 + n + b) % want.element_size(), 0u) << it.key();
  }
  EXPECT_EQ(tensors, state.size());
  EXPECT_EQ(8 + n + covered, bytes.size());
  // The per-tensor checksums are XXH3-64 of the bytes, as hex.
  nlohmann::json sums = nlohmann::json::parse(h["__metadata__"]["ackpt.xxh3"].get<std::string>());
  const at::Tensor& i32 = state.at("i32_7").tensor();
  EXPECT_EQ(sums["i32_7"].get<std::string>(),
            format::Hex64(format::Xxh3(i32.data_ptr(), i32.nbytes())));
}

TEST(FormatTest, ReadOptionsThreadCountsAgree) {
  TempDir dir;
  StateDict state = SampleState(5);
  state.set("big", at::randn({200003}, at::kFloat));
  WriteOptions o;
  o.chunk_size = 64 * 1024;
  o.writer_threads = 3;
  o.fsync = false;
  const std::string path = dir.file("t.safetensors.zst");
  WriteStateDict(state, path, o);
  for (int threads : {1, 2, 7}) {
    ReadOptions r;
    r.threads = threads;
    std::string why;
    EXPECT_TRUE(ExactlyEqual(ReadStateDict(path, r), state, &why)) << threads << ": " << why;
    CheckpointReader::Open(path, r)->Verify();
  }
}

TEST(FormatTest, MissingFileIsNotFound) {
  TempDir dir;
  Error e = CatchError([&] { CheckpointReader::Open(dir.file("nope.safetensors")); });
  EXPECT_EQ(e.code(), Error::Code::kNotFound);
  EXPECT_TRUE(Contains(e.what(), "nope.safetensors")) << e.what();
}

// kZstd files stay format version 2 (older readers open them); only the
// byte-grouped modes write version 3 and name their codec.
TEST(FormatTest, CompressionModesAndFormatVersions) {
  TempDir dir;
  const StateDict state = SampleState(3);
  const std::pair<Compression, int> modes[] = {{Compression::kNone, 2},
                                               {Compression::kZstd, 2},
                                               {Compression::kZstdByteGrouped, 3},
                                               {Compression::kAuto, 3}};
  for (const auto& [mode, version] : modes) {
    WriteOptions o;
    o.compression = mode;
    o.fsync = false;
    const std::string path = dir.file("m" + std::to_string(static_cast<int>(mode)));
    WriteStateDict(state, path, o);
    auto reader = CheckpointReader::Open(path);
    EXPECT_EQ(reader->info().format_version, version);
    EXPECT_EQ(reader->info().compressed, mode != Compression::kNone);
    EXPECT_EQ(reader->info().metadata.count("ackpt.codec"), version == 3 ? 1u : 0u);
    const StateDict back = reader->ReadStateDict();
    EXPECT_TRUE(at::equal(back.at("model").dict().at("encoder.weight").tensor(),
                          state.at("model").dict().at("encoder.weight").tensor()));
    EXPECT_TRUE(at::equal(back.at("model").dict().at("head.weight").tensor(),
                          state.at("model").dict().at("head.weight").tensor()));
  }
}

}  // namespace
}  // namespace ackpt
