// The byte-grouped codec (src/format/codec.h, transpose.h and auto_policy.h;
// docs/FORMAT.md section 14): transposition kernels against the scalar
// definition, frame round trips for every segment shape and plane coder,
// whole files of every dtype through WriteStateDict / the reader (full,
// partial, Verify, export), damaged and hostile frames, and kAuto's decision
// rule and model.
#include "format/codec.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <zstd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>

#include "ackpt/error.h"
#include "ackpt/format.h"
#include "format/auto_policy.h"
#include "format/transpose.h"
#include "test_util.h"

namespace ackpt {
namespace {

using format::codec::PlaneCoder;
using format::codec::Segment;
using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::TempDir;
using testing::WriteFileBytes;

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Float-like bytes: N(0, 0.02) fp32, so planes differ in compressibility.
std::vector<uint8_t> FloatBytes(size_t floats, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 0.02f);
  std::vector<uint8_t> v(floats * 4);
  for (size_t i = 0; i < floats; ++i) {
    const float f = nd(rng);
    std::memcpy(v.data() + 4 * i, &f, 4);
  }
  return v;
}

bool SameBytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return x.nbytes() == y.nbytes() &&
         (x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0);
}

TEST(CodecTest, GroupAndUngroupMatchTheScalarDefinition) {
  for (size_t k : {2, 4, 8}) {
    for (size_t m : {0, 1, 15, 16, 17, 31, 32, 33, 100, 1000, 4099}) {
      const std::vector<uint8_t> src = RandomBytes(m * k, static_cast<uint32_t>(m * 10 + k));
      std::vector<uint8_t> planes(m * k), back(m * k);
      std::vector<uint8_t*> p(k);
      for (size_t j = 0; j < k; ++j) p[j] = planes.data() + j * m;
      format::codec::Group(src.data(), m, k, p.data());
      for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j < k; ++j) {
          ASSERT_EQ(planes[j * m + i], src[i * k + j]) << "k " << k << " m " << m << " i " << i;
        }
      }
      std::vector<const uint8_t*> q(p.begin(), p.end());
      format::codec::Ungroup(q.data(), m, k, back.data());
      ASSERT_EQ(back, src) << "k " << k << " m " << m;
    }
  }
}

TEST(CodecTest, StreamsFollowTheSegments) {
  // 8-byte elements, then 4-byte ones with a 3-byte tail, 1-byte, 2-byte.
  const std::vector<Segment> segs = {{16, 8}, {43, 4}, {5, 1}, {6, 2}};
  const std::vector<uint64_t> want = {2, 2, 2, 2, 2, 2, 2, 2, 10, 10, 10, 10, 3, 3, 3 + 5};
  EXPECT_EQ(format::codec::StreamSizes(segs), want);
  EXPECT_TRUE(format::codec::StreamSizes({}).empty());
  EXPECT_EQ(format::codec::StreamSizes({{7, 1}}), std::vector<uint64_t>{7});
}

TEST(CodecTest, SegmentsOfCutsTensorsAtFrameBorders) {
  format::codec::Layout layout = {{100, 180, 4}, {180, 200, 2}, {200, 203, 1}, {203, 227, 8}};
  auto segs = format::codec::SegmentsOf(layout, 90, 100);  // [90, 190)
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_EQ(segs[0].size, 10u);
  EXPECT_EQ(segs[0].elem_size, 1u);  // before any tensor: header bytes
  EXPECT_EQ(segs[1].size, 80u);
  EXPECT_EQ(segs[1].elem_size, 4u);
  EXPECT_EQ(segs[2].size, 10u);
  EXPECT_EQ(segs[2].elem_size, 2u);
  segs = format::codec::SegmentsOf(layout, 195, 32);  // [195, 227)
  ASSERT_EQ(segs.size(), 3u);
  EXPECT_EQ(segs[0].size, 5u);
  EXPECT_EQ(segs[1].size, 3u);
  EXPECT_EQ(segs[1].elem_size, 1u);
  EXPECT_EQ(segs[2].size, 24u);
  EXPECT_EQ(segs[2].elem_size, 8u);
}

TEST(CodecTest, FramesRoundTripForEveryCoder) {
  std::vector<uint8_t> frame = FloatBytes(20000, 1);        // 80000 bytes of fp32
  const std::vector<uint8_t> tail = RandomBytes(20011, 2);  // odd sizes: tails
  frame.insert(frame.end(), tail.begin(), tail.end());
  frame.insert(frame.end(), 30000, 0);  // runs of zeros
  const std::vector<Segment> segs = {{80000, 4}, {10001, 2}, {10010, 8}, {30000, 4}};
  for (PlaneCoder c :
       {PlaneCoder::kAdaptive, PlaneCoder::kZstd, PlaneCoder::kHuffman, PlaneCoder::kRaw}) {
    std::string enc;
    format::codec::FrameStats stats;
    const uint32_t sum =
        format::codec::EncodeGroupedFrame(frame.data(), frame.size(), segs, 1, &enc, c, &stats);
    EXPECT_TRUE(format::codec::IsGroupedFrame(enc.data(), enc.size()));
    std::vector<uint8_t> out(frame.size());
    EXPECT_EQ(format::codec::DecodeGroupedFrame(reinterpret_cast<const uint8_t*>(enc.data()),
                                                enc.size(), segs, out.data(), out.size(), "t"),
              sum);
    EXPECT_EQ(out, frame) << "coder " << static_cast<int>(c);
    if (c == PlaneCoder::kRaw) EXPECT_GT(enc.size(), frame.size());
    if (c == PlaneCoder::kAdaptive) {
      EXPECT_LT(enc.size(), frame.size());
      EXPECT_GT(stats.raw_streams, 0u);  // the random low mantissa bytes
    }
  }
  // An empty frame and a frame of ungrouped bytes only.
  std::string enc;
  format::codec::EncodeGroupedFrame(nullptr, 0, {}, 1, &enc);
  EXPECT_EQ(format::codec::DecodeGroupedFrame(reinterpret_cast<const uint8_t*>(enc.data()),
                                              enc.size(), {}, nullptr, 0, "t"),
            0x51d8e999u);  // XXH64 of nothing, low 32 bits
}

TEST(CodecTest, StoredFramesAreZstdFrames) {
  for (size_t n : {size_t{0}, size_t{5}, size_t{128 << 10}, size_t{300000}}) {
    const std::vector<uint8_t> src = RandomBytes(n, 3);
    std::string enc;
    format::codec::EncodeStoredFrame(src.data(), n, &enc);
    std::vector<uint8_t> out(n + 1);
    const size_t r = ZSTD_decompress(out.data(), out.size(), enc.data(), enc.size());
    ASSERT_FALSE(ZSTD_isError(r)) << ZSTD_getErrorName(r);
    ASSERT_EQ(r, n);
    out.resize(n);
    EXPECT_EQ(out, src);
  }
}

// Every dtype, odd shapes, tensors straddling frames; with the default
// chunk and with a chunk size that cuts elements apart.
StateDict EveryDtypeState() {
  at::manual_seed(17);
  StateDict s;
  const std::pair<const char*, at::ScalarType> types[] = {
      {"bool", at::kBool}, {"u8", at::kByte},    {"i8", at::kChar},  {"i16", at::kShort},
      {"i32", at::kInt},   {"i64", at::kLong},   {"f16", at::kHalf}, {"bf16", at::kBFloat16},
      {"f32", at::kFloat}, {"f64", at::kDouble},
  };
  int seed = 0;
  for (const auto& [name, type] : types) {
    s.set(std::string(name) + "_small", PatternTensor({3, 5}, type, ++seed));
    // Big enough to span several 64 KiB frames.
    at::Tensor big = at::randn({40000}, at::kDouble).mul(0.02).to(type);
    if (type == at::kBool) big = at::rand({40000}).gt(0.5);
    s.set(std::string(name) + "_big", big);
  }
  s.set("empty", PatternTensor({0, 3}, at::kFloat));
  s.set("scalar", PatternTensor({}, at::kDouble, 4));
  s.set("step", int64_t{12});
  return s;
}

void ExpectSameState(const StateDict& a, const StateDict& b) {
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [key, v] : a) {
    const Value& w = b.at(key);
    if (v.is_tensor()) {
      EXPECT_TRUE(SameBytes(v.tensor(), w.tensor())) << key;
    } else if (v.is_dict()) {
      ExpectSameState(v.dict(), w.dict());
    }
  }
}

class ByteGroupedFileTest : public ::testing::TestWithParam<size_t> {
 protected:
  WriteOptions Options() const {
    WriteOptions o;
    o.compression = Compression::kZstdByteGrouped;
    o.chunk_size = GetParam();
    o.fsync = false;
    o.metadata["run"] = "codec-test";
    return o;
  }
  TempDir dir_;
};

TEST_P(ByteGroupedFileTest, RoundTripsPartialLoadsVerifiesAndExports) {
  const StateDict state = EveryDtypeState();
  const std::string path = dir_.file("g.safetensors.zst");
  const WriteResult w = WriteStateDict(state, path, Options());
  auto reader = CheckpointReader::Open(path);
  const FileInfo& info = reader->info();
  EXPECT_TRUE(info.compressed);
  EXPECT_EQ(info.format_version, 3);
  EXPECT_EQ(info.metadata.at("ackpt.version"), "3");
  EXPECT_EQ(info.metadata.at("ackpt.codec"), "bytegroup1");
  EXPECT_GT(info.num_frames, GetParam() < (1u << 20) ? 5u : 1u);
  EXPECT_EQ(w.file_bytes, info.file_bytes);
  ExpectSameState(reader->ReadStateDict(), state);
  // Partial loads: each tensor alone, through only its frames.
  for (const auto& t : info.tensors) {
    auto one = reader->ReadTensors({t.name});
    const std::string key = t.name;
    ASSERT_TRUE(state.contains(key)) << key;
    EXPECT_TRUE(SameBytes(one.at(t.name), state.at(key).tensor())) << key;
  }
  reader->Verify();
  // Export writes the plain stream: any safetensors reader, same tensors.
  const std::string plain = dir_.file("g.safetensors");
  reader->ExportSafetensors(plain);
  auto exported = CheckpointReader::Open(plain);
  EXPECT_FALSE(exported->info().compressed);
  ExpectSameState(exported->ReadStateDict(), state);
  // It holds no byte-grouped frame, so it is the version-2 stream: readers of
  // versions 1-2 open it. Byte for byte what a plain write of the state gives
  // (user metadata kept, header checksum recomputed).
  EXPECT_EQ(exported->info().format_version, 2);
  EXPECT_EQ(exported->info().metadata.count("ackpt.codec"), 0u);
  EXPECT_EQ(exported->info().metadata.at("run"), "codec-test");
  exported->Verify();
  WriteOptions none = Options();
  none.compression = Compression::kNone;
  WriteStateDict(state, dir_.file("none.safetensors"), none);
  EXPECT_EQ(ReadFileBytes(plain), ReadFileBytes(dir_.file("none.safetensors")));
  // Never larger than plain zstd (up to the header's extra codec key): with
  // one 4 MiB frame this state, mostly zeros cast to integers, stays a plain
  // zstd frame (docs/FORMAT.md 14.5); cut finer, its float frames group.
  WriteOptions z = Options();
  z.compression = Compression::kZstd;
  const WriteResult wz = WriteStateDict(state, dir_.file("z.safetensors.zst"), z);
  EXPECT_LE(w.file_bytes, wz.file_bytes + 64);
  if (GetParam() < (1u << 20)) EXPECT_LT(w.file_bytes, wz.file_bytes);
  EXPECT_EQ(CheckpointReader::Open(dir_.file("z.safetensors.zst"))->info().format_version, 2);
}

INSTANTIATE_TEST_SUITE_P(ChunkSizes, ByteGroupedFileTest,
                         ::testing::Values(size_t{64} << 10, (size_t{64} << 10) + 3,
                                           size_t{4} << 20));

TEST(ByteGroupedDamageTest, EveryFlippedByteIsDetectedOrHarmless) {
  TempDir dir;
  StateDict s;
  s.set("w", at::randn({3000}).mul(0.02));
  s.set("h", at::randn({2000}).to(at::kBFloat16));
  s.set("i", PatternTensor({300}, at::kLong, 3));
  s.set("b", PatternTensor({77}, at::kByte, 4));
  WriteOptions o;
  o.compression = Compression::kZstdByteGrouped;
  o.chunk_size = 64 << 10;
  o.fsync = false;
  const std::string path = dir.file("d.safetensors.zst");
  WriteStateDict(s, path, o);
  const std::string good = ReadFileBytes(path);
  // Every byte: the header frame, the byte-grouped data frame, the seek table.
  size_t detected = 0, harmless = 0;
  const std::string bad = dir.file("bad.safetensors.zst");
  for (size_t pos = 0; pos < good.size(); ++pos) {
    std::string b = good;
    b[pos] = static_cast<char>(b[pos] ^ 0x10);
    WriteFileBytes(bad, b);
    try {
      StateDict got = ReadStateDict(bad);
      ExpectSameState(got, s);  // a flip that decodes must decode to the same data
      ++harmless;
    } catch (const Error&) {
      ++detected;
    }
  }
  EXPECT_GT(detected, good.size() * 9 / 10) << "harmless " << harmless;
}

TEST(ByteGroupedDamageTest, HostileFramesFailCleanly) {
  const std::vector<uint8_t> frame = FloatBytes(5000, 9);
  const std::vector<Segment> segs = {{20000, 4}};
  std::string enc;
  format::codec::EncodeGroupedFrame(frame.data(), frame.size(), segs, 1, &enc);
  std::vector<uint8_t> out(frame.size());
  auto decode = [&](const std::string& e, size_t n = 20000) {
    format::codec::DecodeGroupedFrame(reinterpret_cast<const uint8_t*>(e.data()), e.size(), segs,
                                      out.data(), n, "'x': frame 1");
  };
  auto expect_corrupt = [&](const std::string& e, const char* what) {
    try {
      decode(e);
      ADD_FAILURE() << what << ": no error";
    } catch (const Error& err) {
      EXPECT_EQ(err.code(), Error::Code::kCorruption) << what << ": " << err.what();
      EXPECT_NE(std::string(err.what()).find("frame 1"), std::string::npos) << err.what();
    }
  };
  expect_corrupt(enc.substr(0, 9), "too short");
  expect_corrupt(enc.substr(0, enc.size() - 1), "truncated");
  expect_corrupt(enc + "x", "trailing byte");
  std::string e = enc;
  e[5] = 3;  // stream count
  expect_corrupt(e, "stream count");
  e = enc;
  e[6] ^= 1;  // declared size
  expect_corrupt(e, "declared size");
  e = enc;
  e[10] = 7;  // unknown mode of stream 0
  expect_corrupt(e, "unknown mode");
  e = enc;
  e[11] = e[12] = e[13] = e[14] = static_cast<char>(0xff);  // stream 0 claims 4 GiB
  expect_corrupt(e, "huge stream");
  // Every stream switched to raw (sizes no longer match) or to zstd (not a
  // zstd frame): rejected before decoding.
  for (size_t s = 0; s < 4; ++s) {
    e = enc;
    e[10 + 5 * s] = static_cast<char>(e[10 + 5 * s] ^ 1);
    expect_corrupt(e, "flipped mode");
  }
  e = enc;
  e[e.size() - 2] ^= 4;  // the frame checksum
  expect_corrupt(e, "checksum");
  e = enc;
  e[4] = 9;  // a future frame version
  EXPECT_THROW(decode(e), Error);
  // The same frame read with other segments (a lying header) fails too.
  EXPECT_THROW(format::codec::DecodeGroupedFrame(reinterpret_cast<const uint8_t*>(enc.data()),
                                                 enc.size(), {{20000, 2}}, out.data(), 20000, "x"),
               Error);
}

TEST(ByteGroupedDamageTest, VersionAndCodecAreChecked) {
  FileInfo info;
  info.path = "f";
  info.format_version = 3;
  info.metadata["ackpt.codec"] = "bytegroup1";
  EXPECT_NO_THROW(format::codec::CheckFileCodec(info));
  info.metadata["ackpt.codec"] = "bytegroup2";
  try {
    format::codec::CheckFileCodec(info);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Error::Code::kUnsupported);
  }
  info.metadata.erase("ackpt.codec");
  EXPECT_THROW(format::codec::CheckFileCodec(info), Error);
  info.format_version = 2;  // a version-2 file has no codec key
  EXPECT_NO_THROW(format::codec::CheckFileCodec(info));
}

TEST(AutoTest, DecisionRule) {
  using format::codec::AutoChoice;
  format::codec::AutoEstimate e;
  e.threads = 2;
  e.zstd_ratio = 1.08;
  e.grouped_ratio = 1.18;
  e.zstd_bytes_per_s = 500e6;
  e.grouped_bytes_per_s = 600e6;
  e.disk_bytes_per_s = 0;  // unknown: store
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kStore);
  // 200 MB/s: compressing at 500 MB/s to save 8 % of the writes costs
  // more than it saves.
  e.disk_bytes_per_s = 200e6;
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kStore);
  // 50 MB/s: grouping pays (2 ms of CPU per MB against 2.5 ms of device
  // time saved), zstd does not (2 ms against 1.5 ms): the smaller output.
  e.disk_bytes_per_s = 50e6;
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kGrouped);
  e.grouped_ratio = 1.05;  // now neither pays at 50 MB/s...
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kStore);
  e.disk_bytes_per_s = 30e6;  // ...and at 30 MB/s only zstd does
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kZstd);
  // The CPU is the trainer's: more writer threads would finish sooner (8 x
  // 500 MB/s against an 80 MB/s disk persists faster compressed) but spend
  // more CPU than the device time they save, so kAuto stores.
  e.threads = 8;
  e.zstd_ratio = 1.08;
  e.grouped_ratio = 1.0;
  e.disk_bytes_per_s = 80e6;
  EXPECT_LT(1 / (e.threads * e.zstd_bytes_per_s) + 1 / (e.zstd_ratio * e.disk_bytes_per_s),
            1 / e.disk_bytes_per_s);
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kStore);
  e.threads = 2;
  e.disk_bytes_per_s = 5e9;  // fast disk: compressing costs more than it saves
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kStore);
  e.disk_bytes_per_s = 50e6;
  e.zstd_ratio = e.grouped_ratio = 1.0;  // incompressible
  EXPECT_EQ(format::codec::Decide(e), AutoChoice::kStore);
}

TEST(AutoTest, WritesReadableFilesWhateverItChooses) {
  TempDir dir;
  StateDict s;
  s.set("w", at::randn({300000}).mul(0.02));
  s.set("z", at::zeros({200000}));
  s.set("h", at::randn({100000}).to(at::kBFloat16));
  WriteOptions o;
  o.compression = Compression::kAuto;
  o.chunk_size = 256 << 10;
  o.fsync = false;
  o.writer_threads = 1;
  const std::pair<double, format::codec::AutoChoice> cases[] = {
      {1e12, format::codec::AutoChoice::kStore},   // "disk" faster than any codec
      {2e6, format::codec::AutoChoice::kGrouped},  // slow disk: compress (the last frame: bf16)
  };
  for (const auto& [speed, expect] : cases) {
    format::codec::DefaultAutoModel().SetDiskSpeedForTesting(speed);
    const std::string path = dir.file("a.safetensors.zst");
    const WriteResult w = WriteStateDict(s, path, o);
    format::codec::AutoChoice got;
    const auto est = format::codec::DefaultAutoModel().LastEstimateForTesting(&got);
    EXPECT_EQ(got, expect) << "disk " << speed << " ratios " << est.zstd_ratio << " "
                           << est.grouped_ratio;
    auto r = CheckpointReader::Open(path);
    EXPECT_EQ(r->info().format_version, 3);
    ExpectSameState(r->ReadStateDict(), s);
    r->Verify();
    if (expect == format::codec::AutoChoice::kStore) EXPECT_GT(w.file_bytes, w.logical_bytes);
    if (expect != format::codec::AutoChoice::kStore) EXPECT_LT(w.file_bytes, w.logical_bytes);
  }
  format::codec::DefaultAutoModel().SetDiskSpeedForTesting(0);
}

// kZstd's default (always_compress = false): a data frame whose compression
// would not pay at the measured disk speed is stored as raw zstd blocks, so
// the file stays version 2 and any zstd decoder still reads all of it.
TEST(AdaptiveZstdTest, StoresFramesThatDoNotPayAndStaysReadableByZstd) {
  TempDir dir;
  StateDict s;
  s.set("w", at::randn({300000}).mul(0.02));
  s.set("z", at::zeros({200000}));
  WriteOptions o;  // kZstd, always_compress = false: the defaults
  ASSERT_EQ(o.compression, Compression::kZstd);
  ASSERT_FALSE(o.always_compress);
  o.chunk_size = 256 << 10;
  o.fsync = false;
  o.writer_threads = 1;
  struct Case {
    double disk;
    bool always;
    bool expect_stored;  // every data frame stored
  };
  const Case cases[] = {
      {1e12, false, true},    // "disk" faster than any codec: nothing pays
      {100e3, false, false},  // slow disk: compressing pays even on floats
      {1e12, true, false},    // always_compress: compress whatever it costs
  };
  auto& model = format::codec::DefaultAutoModel();
  for (const Case& c : cases) {
    SCOPED_TRACE("disk " + std::to_string(c.disk) + (c.always ? " always" : ""));
    model.SetDiskSpeedForTesting(c.disk);
    o.always_compress = c.always;
    const std::string path = dir.file("a.safetensors.zst");
    const WriteResult w = WriteStateDict(s, path, o);
    auto r = CheckpointReader::Open(path);
    EXPECT_EQ(r->info().format_version, 2);
    ExpectSameState(r->ReadStateDict(), s);
    r->Verify();
    if (c.expect_stored) {
      EXPECT_GT(w.file_bytes, w.logical_bytes);
      EXPECT_LT(w.file_bytes, w.logical_bytes + w.logical_bytes / 100);  // headers + seek table
    } else {
      EXPECT_LT(w.file_bytes, w.logical_bytes * 3 / 4);  // the zeros compressed at least
    }
    // Any zstd decoder: the frames (skipping the seek table's skippable
    // frame) decode to the plain safetensors stream, which opens as such.
    const std::string file = ReadFileBytes(path);
    std::string plain(w.logical_bytes + 1, '\0');
    const size_t n = ZSTD_decompress(plain.data(), plain.size(), file.data(), file.size());
    ASSERT_FALSE(ZSTD_isError(n)) << ZSTD_getErrorName(n);
    ASSERT_EQ(n, w.logical_bytes);
    plain.resize(n);
    WriteFileBytes(dir.file("plain.safetensors"), plain);
    ExpectSameState(ReadStateDict(dir.file("plain.safetensors")), s);
  }
  // The choice is per frame: on a disk where compressing zeros repays its
  // CPU but compressing fp32 noise does not, the zeros are compressed and
  // the floats stored.
  model.SetDiskSpeedForTesting(0);
  std::string sample;
  const std::vector<uint8_t> zeros(256 << 10, 0);
  const std::vector<uint8_t> floats = FloatBytes(64 << 10, 5);
  // Per-thread speeds of this machine (and build: sanitizers are slow).
  auto speed = [&](const std::vector<uint8_t>& v) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 4; ++i) format::codec::EncodeZstdFrame(v.data(), v.size(), 1, &sample);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 4.0 * static_cast<double>(v.size()) / std::max(t, 1e-9);
  };
  // The disk speed below which compressing pays (1/s <= (1 - 1/r)/D).
  auto break_even = [&](const std::vector<uint8_t>& v) {
    const double s = speed(v);
    format::codec::EncodeZstdFrame(v.data(), v.size(), 1, &sample);
    return s * (1 - static_cast<double>(sample.size()) / v.size());
  };
  const double zeros_pay_below = break_even(zeros), floats_pay_below = break_even(floats);
  ASSERT_GT(zeros_pay_below, 16 * floats_pay_below);
  const double disk = std::sqrt(zeros_pay_below * floats_pay_below);
  o.always_compress = false;
  format::codec::AutoModel local, local_floats;  // each learns its own codec speed
  local.SetDiskSpeedForTesting(disk);
  local_floats.SetDiskSpeedForTesting(disk);
  format::codec::AutoChoice choice;
  std::string out;
  const std::vector<format::codec::Segment> zseg{{zeros.size(), 4}}, fseg{{floats.size(), 4}};
  local.EncodeFrame(zeros.data(), zeros.size(), zseg, o, &out,
                    format::codec::AutoCandidates::kStoreZstd);
  local.LastEstimateForTesting(&choice);
  EXPECT_EQ(choice, format::codec::AutoChoice::kZstd);
  EXPECT_LT(out.size(), zeros.size() / 100);
  local_floats.EncodeFrame(floats.data(), floats.size(), fseg, o, &out,
                           format::codec::AutoCandidates::kStoreZstd);
  local_floats.LastEstimateForTesting(&choice);
  EXPECT_EQ(choice, format::codec::AutoChoice::kStore);
  EXPECT_GT(out.size(), floats.size());
  // Before any disk speed is known, kZstd compresses (kAuto stores).
  format::codec::AutoModel fresh;
  fresh.EncodeFrame(floats.data(), floats.size(), fseg, o, &out,
                    format::codec::AutoCandidates::kStoreZstd);
  fresh.LastEstimateForTesting(&choice);
  EXPECT_EQ(choice, format::codec::AutoChoice::kZstd);
  EXPECT_LT(out.size(), floats.size());
  fresh.EncodeFrame(floats.data(), floats.size(), fseg, o, &out);
  fresh.LastEstimateForTesting(&choice);
  EXPECT_EQ(choice, format::codec::AutoChoice::kStore);
}

}  // namespace
}  // namespace ackpt
