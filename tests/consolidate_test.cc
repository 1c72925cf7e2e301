// ConsolidateCheckpoint, DescribeManifest and `ackpt consolidate` / `ackpt
// inspect MANIFEST` (ackpt/consolidate.h) on distributed checkpoints built
// here without a DistributedCheckpointer: each rank's part file is written
// with the format writer in the part layout (distributed_layout.h's
// PartState, plus the slabs "sharded/<name>/<k>" of each box), and the
// manifest with EncodeManifest. Row, column and 2-D block shards, uneven
// last shards, a 0-d and an empty sharded tensor, escaped names, replicated
// tensors and scalars, rank-local state.
#include "ackpt/consolidate.h"

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>
#include <set>

#include "ackpt/format.h"
#include "checkpointer/checkpoint_file.h"
#include "checkpointer/distributed_layout.h"
#include "checkpointer/manifest.h"
#include "format/dtype.h"
#include "format/seekable.h"
#include "test_util.h"

#ifdef ACKPT_RESHARD_WORKER
#include "dist_launch.h"
#endif

namespace ackpt {
namespace {

using testing::CatchError;
using testing::Contains;
using testing::ReadFileBytes;
using testing::RunCommand;
using testing::TempDir;
using testing::TensorBytes;
using testing::WriteFileBytes;

constexpr int kWorld = 3;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// Distinct values (exact in the dtype for the sizes used here).
at::Tensor Distinct(std::vector<int64_t> shape, at::ScalarType dtype, int seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return at::arange(n, at::kLong).mul(3).add(seed).to(dtype).reshape(shape);
}

struct BoxSpec {
  int rank;
  std::vector<int64_t> offsets;
  std::vector<int64_t> shape;
};

struct ShardedSpec {
  std::string name;  // flattened, from the Checkpoint's root
  at::Tensor global;
  int64_t slab_rows;
  std::vector<BoxSpec> boxes;
};

at::Tensor BoxOf(const at::Tensor& global, const BoxSpec& b) {
  at::Tensor t = global;
  for (size_t d = 0; d < b.offsets.size(); ++d)
    t = t.narrow(static_cast<int64_t>(d), b.offsets[d], b.shape[d]);
  return t.contiguous();
}

std::vector<ShardedSpec> ShardedTensors() {
  std::vector<ShardedSpec> s;
  // Row shards, the last one shorter; slabs of 3 rows (the last shorter).
  s.push_back({"module_interface_state/emb.weight",
               Distinct({10, 4}, at::kFloat, 1),
               3,
               {{0, {0, 0}, {4, 4}}, {1, {4, 0}, {4, 4}}, {2, {8, 0}, {2, 4}}}});
  // Column shards.
  s.push_back({"module_interface_state/proj.weight",
               Distinct({6, 7}, at::kBFloat16, 2),
               4,
               {{0, {0, 0}, {6, 3}}, {1, {0, 3}, {6, 2}}, {2, {0, 5}, {6, 2}}}});
  // 2-D blocks.
  s.push_back({"trainer_state/optimizer/state/0/exp_avg",
               Distinct({5, 6}, at::kDouble, 3),
               2,
               {{0, {0, 0}, {3, 4}}, {1, {0, 4}, {3, 2}}, {2, {3, 0}, {2, 6}}}});
  // A 0-d tensor, whole on one rank.
  s.push_back({"trainer_state/scale", Distinct({}, at::kFloat, 4), 1, {{1, {}, {}}}});
  // Larger than a band at the smallest budget (1 MiB: bands of 448 KiB).
  s.push_back({"module_interface_state/big",
               Distinct({300, 1000}, at::kFloat, 5),
               37,
               {{0, {0, 0}, {110, 1000}}, {1, {110, 0}, {110, 1000}}, {2, {220, 0}, {80, 1000}}}});
  // A row (600 KB) larger than a band: cut along dimension 1 too.
  s.push_back({"module_interface_state/wide",
               Distinct({3, 150000}, at::kFloat, 6),
               1,
               {{0, {0, 0}, {3, 70000}}, {2, {0, 70000}, {3, 80000}}}});
  // Empty, and 1-D over two ranks.
  s.push_back(
      {"module_interface_state/empty", Distinct({0, 3}, at::kLong, 7), 1, {{0, {0, 0}, {0, 3}}}});
  s.push_back(
      {"trainer_state/ids", Distinct({7}, at::kLong, 8), 3, {{0, {0}, {4}}, {2, {4}, {3}}}});
  // A key with '/' in it (escaped "%2F").
  s.push_back({FlatTensorName({"module_interface_state", "odd/key"}),
               Distinct({5}, at::kShort, 9),
               2,
               {{2, {0}, {5}}}});
  return s;
}

const std::vector<std::string> kReplicatedPaths = {"module_interface_state/norm",
                                                   "trainer_state/ema"};

// What rank `rank` saved: replicated subtrees (the same on every rank) and
// rank-local state.
Checkpoint RankCheckpoint(int rank) {
  Checkpoint c;
  c.module_interface_state.set("norm", StateDict{{"weight", Distinct({8}, at::kFloat, 20)},
                                                 {"bias", Distinct({8}, at::kFloat, 21)}});
  c.trainer_state.set(
      "ema",
      StateDict{{"decay", 0.999},
                {"shadow", List{Distinct({3, 3}, at::kHalf, 22), Distinct({2}, at::kHalf, 23)}}});
  c.trainer_state.set("step", int64_t{7});
  c.trainer_backend_state.set("rng", Distinct({16}, at::kByte, 30 + rank));
  return c;
}

// The global tensors a consolidated file holds, by name.
std::map<std::string, at::Tensor> ExpectedTensors() {
  std::map<std::string, at::Tensor> out;
  for (const auto& s : ShardedTensors()) out.emplace(s.name, s.global);
  const Checkpoint c = RankCheckpoint(0);
  out.emplace("module_interface_state/norm/weight",
              c.module_interface_state.find("norm")->dict().find("weight")->tensor());
  out.emplace("module_interface_state/norm/bias",
              c.module_interface_state.find("norm")->dict().find("bias")->tensor());
  const List& shadow = c.trainer_state.find("ema")->dict().find("shadow")->list();
  out.emplace("trainer_state/ema/shadow/0", shadow[0].tensor());
  out.emplace("trainer_state/ema/shadow/1", shadow[1].tensor());
  return out;
}

uint64_t BytesOf(const at::Tensor& t) { return static_cast<uint64_t>(t.nbytes()); }

// Writes the parts and the manifest of checkpoint 5 ("ckpt_5.manifest.json")
// in `dir`; returns the manifest's path.
std::string BuildCheckpoint(const std::string& dir, bool compressed_parts) {
  Manifest m;
  m.index = 5;
  m.world_size = kWorld;
  m.time = 1.7e9;
  m.generation = 1;
  m.replicated = kReplicatedPaths;
  m.metrics = {{"loss", 0.25}};
  const std::vector<ShardedSpec> sharded = ShardedTensors();
  for (int r = 0; r < kWorld; ++r) {
    SplitCheckpoint split = SplitReplicated(RankCheckpoint(r), kReplicatedPaths);
    StateDict part = PartState(split, r, kWorld);
    StateDict slabs;
    Manifest::Part p;
    for (const auto& s : sharded) {
      for (const auto& b : s.boxes) {
        if (b.rank != r) continue;
        const at::Tensor box = BoxOf(s.global, b);
        List list;
        if (box.dim() == 0) {
          list.push_back(box);
        } else {
          for (int64_t row = 0; row < box.size(0); row += s.slab_rows)
            list.push_back(box.narrow(0, row, std::min(s.slab_rows, box.size(0) - row)));
        }
        slabs.set(s.name, std::move(list));
        p.shards.push_back(ShardRecord{s.name, DtypeName(s.global.scalar_type()),
                                       s.global.sizes().vec(), b.offsets, b.shape, s.slab_rows});
      }
    }
    part.set("sharded", std::move(slabs));
    WriteOptions w;
    w.fsync = false;
    w.compression = compressed_parts ? Compression::kZstd : Compression::kNone;
    w.chunk_size = 64 * 1024;
    p.file = "ckpt_5.rank" + std::to_string(r) + ".safetensors" + (compressed_parts ? ".zst" : "");
    const WriteResult res = WriteStateDict(part, JoinPath(dir, p.file), w);
    p.file_bytes = res.file_bytes;
    p.header_xxh3 = res.header_xxh3;
    p.has_local = split.has_local;
    m.parts.push_back(std::move(p));
  }
  const std::string path = JoinPath(dir, "ckpt_5.manifest.json");
  WriteFileBytes(path, EncodeManifest(m));
  return path;
}

bool HasTempFiles(const std::string& dir) {
  for (const auto& n : Env::Default()->GetChildren(dir))
    if (Contains(n, ".tmp-")) return true;
  return false;
}

// Checks `out` holds exactly the global tensors, byte for byte, and the
// replicated scalars, and none of the rank-local state.
void ExpectConsolidated(const std::string& out, bool compressed) {
  auto reader = CheckpointReader::Open(out);
  const FileInfo& info = reader->info();
  EXPECT_EQ(info.compressed, compressed);
  const std::map<std::string, at::Tensor> expected = ExpectedTensors();
  std::set<std::string> names;
  for (const auto& t : info.tensors) names.insert(t.name);
  std::set<std::string> want;
  for (const auto& kv : expected) want.insert(kv.first);
  EXPECT_EQ(names, want);
  reader->Verify();
  const StateDict state = reader->ReadStateDict();
  const std::map<std::string, at::Tensor> got = FlattenTensors(state);
  for (const auto& [name, t] : expected) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const at::Tensor& g = got.at(name);
    EXPECT_EQ(g.scalar_type(), t.scalar_type());
    EXPECT_EQ(g.sizes().vec(), t.sizes().vec());
    EXPECT_TRUE(TensorBytes(g) == TensorBytes(t));
  }
  // The replicated subtrees as saved (scalars, lists), the sharded tensors
  // at their paths; no rank-local state.
  const Value* ema = state.find("trainer_state")->dict().find("ema");
  ASSERT_NE(ema, nullptr);
  EXPECT_EQ(ema->dict().find("decay")->to_double(), 0.999);
  EXPECT_TRUE(ema->dict().find("shadow")->is_list());
  EXPECT_EQ(state.find("trainer_state")->dict().find("step"), nullptr);
  EXPECT_TRUE(state.find("trainer_backend_state")->dict().empty());
  EXPECT_NE(state.find("module_interface_state")->dict().find("odd/key"), nullptr);
  EXPECT_EQ(info.metadata.at("consolidated_from"), "ckpt_5.manifest.json");
  EXPECT_EQ(info.metadata.at("consolidated_index"), "5");
  EXPECT_EQ(info.metadata.at("consolidated_world_size"), "3");
  EXPECT_TRUE(Contains(info.metadata.at("consolidated_metrics"), "loss"));
}

class ConsolidateTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override { manifest_ = BuildCheckpoint(dir_.path(), GetParam()); }

  std::string PartPath(int r) const {
    return dir_.file("ckpt_5.rank" + std::to_string(r) + ".safetensors" +
                     (GetParam() ? ".zst" : ""));
  }
  void FlipByte(const std::string& path, uint64_t pos) const {
    std::string b = ReadFileBytes(path);
    b[pos] = static_cast<char>(b[pos] ^ 0x5a);
    WriteFileBytes(path, b);
  }

  TempDir dir_;
  std::string manifest_;
};

TEST_P(ConsolidateTest, WritesEveryGlobalTensorWholePlainAndZstd) {
  uint64_t sharded = 0, replicated = 0;
  for (const auto& s : ShardedTensors()) sharded += BytesOf(s.global);
  for (const auto& kv : ExpectedTensors()) replicated += BytesOf(kv.second);
  replicated -= sharded;
  for (const uint64_t budget : {uint64_t{1} << 20, uint64_t{64} << 20}) {
    for (const std::string ext : {".safetensors", ".safetensors.zst"}) {
      SCOPED_TRACE(std::to_string(budget) + ext);
      const std::string out = dir_.file("whole_" + std::to_string(budget) + ext);
      ConsolidateOptions o;
      o.memory_budget_bytes = budget;
      o.fsync = false;
      std::vector<std::pair<uint64_t, uint64_t>> calls;
      o.progress = [&](uint64_t done, uint64_t total) { calls.emplace_back(done, total); };
      ConsolidateCheckpoint(manifest_, out, o);
      ExpectConsolidated(out, ext == ".safetensors.zst");
      // Progress: monotone, ending at the total; at 1 MiB the sharded
      // tensors (3 MB) are assembled twice (checksum, then write), at 64 MiB once.
      ASSERT_FALSE(calls.empty());
      const uint64_t total = (budget == (uint64_t{1} << 20) ? 2 : 1) * sharded + replicated;
      EXPECT_EQ(calls.back(), std::make_pair(total, total));
      for (size_t i = 1; i < calls.size(); ++i) {
        EXPECT_LE(calls[i - 1].first, calls[i].first);
        EXPECT_EQ(calls[i].second, total);
      }
    }
  }
  EXPECT_FALSE(HasTempFiles(dir_.path()));
}

TEST_P(ConsolidateTest, CompressionFollowsTheNameOrTheOption) {
  ConsolidateOptions o;
  o.fsync = false;
  o.compression = Compression::kZstd;
  o.zstd_level = 5;
  ConsolidateCheckpoint(manifest_, dir_.file("c.safetensors.zst"), o);
  ExpectConsolidated(dir_.file("c.safetensors.zst"), true);
  EXPECT_EQ(
      CatchError([&] { ConsolidateCheckpoint(manifest_, dir_.file("c.safetensors"), o); }).code(),
      Error::Code::kInvalidArgument);
  o.compression = Compression::kNone;
  EXPECT_EQ(CatchError([&] {
              ConsolidateCheckpoint(manifest_, dir_.file("d.safetensors.zst"), o);
            }).code(),
            Error::Code::kInvalidArgument);
  o.compression = Compression::kZstdByteGrouped;
  EXPECT_EQ(CatchError([&] {
              ConsolidateCheckpoint(manifest_, dir_.file("e.safetensors.zst"), o);
            }).code(),
            Error::Code::kUnsupported);
  o.compression.reset();
  o.memory_budget_bytes = 1000;
  const Error e =
      CatchError([&] { ConsolidateCheckpoint(manifest_, dir_.file("f.safetensors"), o); });
  EXPECT_EQ(e.code(), Error::Code::kInvalidArgument);
  EXPECT_TRUE(Contains(e.message(), "memory_budget_bytes")) << e.message();
  for (const char* f : {"c.safetensors", "d.safetensors.zst", "e.safetensors.zst", "f.safetensors"})
    EXPECT_FALSE(Env::Default()->FileExists(dir_.file(f))) << f;
}

TEST_P(ConsolidateTest, PythonReaderReadsThePlainOutput) {
  if (RunCommand(std::string(ACKPT_TEST_PYTHON) + " -c 'import numpy, xxhash, zstandard'") != 0)
    GTEST_SKIP() << ACKPT_TEST_PYTHON << " lacks numpy, xxhash or zstandard";
  const std::string out = dir_.file("py.safetensors");
  ConsolidateOptions o;
  o.fsync = false;
  o.memory_budget_bytes = uint64_t{1} << 20;
  ConsolidateCheckpoint(manifest_, out, o);
  const std::string script = dir_.file("read.py");
  WriteFileBytes(script,
                 "import json, sys\n"
                 "sys.path.insert(0, sys.argv[1])\n"
                 "import ackpt_reader\n"
                 "with ackpt_reader.open(sys.argv[2]) as ck:\n"
                 "    ck.verify()\n"
                 "    out = {}\n"
                 "    for n in ck.names:\n"
                 "        t = ck.tensor(n)\n"
                 "        out[n] = {'shape': list(t.shape), 'hex': t.tobytes().hex()}\n"
                 "    print(json.dumps(out))\n");
  std::string stdout_text;
  ASSERT_EQ(RunCommand(std::string(ACKPT_TEST_PYTHON) + " " + Quote(script) + " " +
                           Quote(std::string(ACKPT_SOURCE_DIR) + "/python") + " " + Quote(out) +
                           " 2>/dev/null",
                       &stdout_text),
            0)
      << stdout_text;
  const nlohmann::json j = nlohmann::json::parse(stdout_text);
  const std::map<std::string, at::Tensor> expected = ExpectedTensors();
  EXPECT_EQ(j.size(), expected.size());
  for (const auto& [name, t] : expected) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(j.contains(name));
    EXPECT_EQ(j[name]["shape"].get<std::vector<int64_t>>(), t.sizes().vec());
    const std::string bytes = TensorBytes(t);
    std::string hex;
    static const char* d = "0123456789abcdef";
    for (unsigned char c : bytes) {
      hex += d[c >> 4];
      hex += d[c & 15];
    }
    EXPECT_TRUE(j[name]["hex"].get<std::string>() == hex);
  }
}

TEST_P(ConsolidateTest, CorruptOrMissingPartIsAClearErrorAndWritesNothing) {
  const std::string out = dir_.file("out.safetensors");
  ConsolidateOptions o;
  o.fsync = false;
  // A damaged slab (found while the checksums are computed, before the
  // output is opened) and a damaged replicated tensor (found while the
  // output is being written): kCorruption naming the part; no output, no
  // temp file, an existing output untouched.
  const std::vector<std::string> victims = {
      FlatTensorName({"sharded", "module_interface_state/big", "1"}), ReplicatedTensorName(0)};
  for (const auto& victim : victims) {
    SCOPED_TRACE(victim);
    TempDir copy;
    const std::string m = BuildCheckpoint(copy.path(), GetParam());
    std::string part;
    uint64_t pos = 0;
    for (int r = 0; r < kWorld && part.empty(); ++r) {
      const std::string p = copy.file("ckpt_5.rank" + std::to_string(r) + ".safetensors" +
                                      (GetParam() ? ".zst" : ""));
      auto reader = CheckpointReader::Open(p);
      const FileInfo& info = reader->info();
      for (const auto& t : info.tensors) {
        if (t.name != victim) continue;
        part = p;
        // A byte in the middle of the tensor; compressed: in the middle of
        // the frame holding that byte.
        pos = info.header_bytes + t.begin + t.nbytes() / 2;
        if (info.compressed) {
          auto file = Env::Default()->NewRandomAccessFile(p);
          const format::SeekTable table = format::ReadSeekTable(*file);
          const format::FrameEntry f = table.frame(table.FrameAt(pos));
          pos = f.compressed_offset + f.compressed_size / 2;
        }
      }
    }
    ASSERT_FALSE(part.empty());
    FlipByte(part, pos);
    const std::string out2 = copy.file("out.safetensors");
    WriteFileBytes(out2, "old");
    const Error e = CatchError([&] { ConsolidateCheckpoint(m, out2, o); });
    EXPECT_EQ(e.code(), Error::Code::kCorruption) << e.what();
    EXPECT_TRUE(Contains(e.message(), BaseName(part))) << e.message();
    EXPECT_TRUE(Contains(e.message(), "ckpt_5.manifest.json")) << e.message();
    EXPECT_EQ(ReadFileBytes(out2), "old");
    EXPECT_FALSE(HasTempFiles(copy.path()));
  }
  // A missing part.
  ASSERT_EQ(std::remove(PartPath(1).c_str()), 0);
  Error e = CatchError([&] { ConsolidateCheckpoint(manifest_, out, o); });
  EXPECT_EQ(e.code(), Error::Code::kCorruption);
  EXPECT_TRUE(Contains(e.message(), "part 1")) << e.message();
  EXPECT_TRUE(Contains(e.message(), "missing")) << e.message();
  EXPECT_FALSE(Env::Default()->FileExists(out));
  // A part that is not the one the manifest committed.
  WriteFileBytes(PartPath(1), ReadFileBytes(PartPath(2)));
  e = CatchError([&] { ConsolidateCheckpoint(manifest_, out, o); });
  EXPECT_EQ(e.code(), Error::Code::kCorruption);
  EXPECT_TRUE(Contains(e.message(), BaseName(PartPath(1)))) << e.message();
  EXPECT_FALSE(Env::Default()->FileExists(out));
  // No manifest.
  EXPECT_EQ(
      CatchError([&] { ConsolidateCheckpoint(dir_.file("ckpt_9.manifest.json"), out, o); }).code(),
      Error::Code::kNotFound);
  EXPECT_FALSE(HasTempFiles(dir_.path()));
}

TEST_P(ConsolidateTest, DescribeManifestListsPartsReplicatedAndBoxes) {
  const ManifestInfo info = DescribeManifest(manifest_);
  EXPECT_EQ(info.index, 5);
  EXPECT_EQ(info.world_size, kWorld);
  EXPECT_EQ(info.replicated_paths, kReplicatedPaths);
  EXPECT_EQ(info.metrics.at("loss"), 0.25);
  ASSERT_EQ(info.parts.size(), 3u);
  for (int r = 0; r < kWorld; ++r) {
    EXPECT_EQ(info.parts[r].rank, r);
    EXPECT_EQ(info.parts[r].file, BaseName(PartPath(r)));
    EXPECT_EQ(info.parts[r].file_bytes, Env::Default()->GetFileSize(PartPath(r)));
    EXPECT_TRUE(info.parts[r].has_local);
  }
  std::set<std::string> replicated;
  for (const auto& t : info.replicated) replicated.insert(t.name);
  EXPECT_EQ(replicated,
            (std::set<std::string>{"module_interface_state/norm/weight",
                                   "module_interface_state/norm/bias", "trainer_state/ema/shadow/0",
                                   "trainer_state/ema/shadow/1"}));
  for (const auto& t : info.replicated) {
    if (t.name == "trainer_state/ema/shadow/0") {
      EXPECT_EQ(t.dtype, "F16");
      EXPECT_EQ(t.shape, (std::vector<int64_t>{3, 3}));
    }
  }
  const std::vector<ShardedSpec> specs = ShardedTensors();
  ASSERT_EQ(info.sharded.size(), specs.size());
  for (const auto& s : specs) {
    SCOPED_TRACE(s.name);
    auto it = std::find_if(info.sharded.begin(), info.sharded.end(),
                           [&](const ManifestInfo::ShardedTensor& t) { return t.name == s.name; });
    ASSERT_NE(it, info.sharded.end());
    EXPECT_EQ(it->dtype, DtypeName(s.global.scalar_type()));
    EXPECT_EQ(it->global_shape, s.global.sizes().vec());
    ASSERT_EQ(it->boxes.size(), s.boxes.size());
    for (size_t i = 0; i < s.boxes.size(); ++i) {
      EXPECT_EQ(it->boxes[i].rank, s.boxes[i].rank);
      EXPECT_EQ(it->boxes[i].offsets, s.boxes[i].offsets);
      EXPECT_EQ(it->boxes[i].shape, s.boxes[i].shape);
    }
  }
}

TEST_P(ConsolidateTest, BadLayoutIsCorruption) {
  // A box that overlaps another one: the manifest's layout is checked.
  Manifest m = ReadManifest(Env::Default(), manifest_);
  for (auto& r : m.parts[1].shards) {
    if (r.name == "module_interface_state/emb.weight") r.offsets[0] = 3;
  }
  WriteFileBytes(manifest_, EncodeManifest(m));
  const Error e = CatchError([&] { DescribeManifest(manifest_); });
  EXPECT_EQ(e.code(), Error::Code::kCorruption);
  EXPECT_TRUE(Contains(e.message(), "emb.weight")) << e.message();
  const Error c = CatchError(
      [&] { ConsolidateCheckpoint(manifest_, dir_.file("x.safetensors"), ConsolidateOptions{}); });
  EXPECT_EQ(c.code(), Error::Code::kCorruption);
  EXPECT_FALSE(Env::Default()->FileExists(dir_.file("x.safetensors")));
}

// ---- the command-line tool ----

int Cli(const std::string& args, std::string* out) {
  return RunCommand(std::string(ACKPT_CLI) + " " + args, out);
}

TEST_P(ConsolidateTest, CliConsolidatesPlainAndZstd) {
  for (const std::string ext : {".safetensors", ".safetensors.zst"}) {
    SCOPED_TRACE(ext);
    const std::string out = dir_.file("cli" + ext);
    std::string text;
    ASSERT_EQ(
        Cli("consolidate " + Quote(manifest_) + " -o " + Quote(out) + " --level 3 --quiet", &text),
        0)
        << text;
    EXPECT_TRUE(Contains(text, "wrote " + out)) << text;
    EXPECT_TRUE(Contains(text, std::to_string(ExpectedTensors().size()) + " tensors")) << text;
    ExpectConsolidated(out, ext == ".safetensors.zst");
  }
  // A damaged part: exit 1, the error names it, no output.
  std::string b = ReadFileBytes(PartPath(2));
  b[b.size() / 2] = static_cast<char>(b[b.size() / 2] ^ 0x5a);
  WriteFileBytes(PartPath(2), b);
  std::string text;
  const std::string out = dir_.file("bad.safetensors");
  EXPECT_EQ(Cli("consolidate " + Quote(manifest_) + " -o " + Quote(out) + " --quiet", &text), 1)
      << text;
  EXPECT_TRUE(Contains(text, BaseName(PartPath(2)))) << text;
  EXPECT_FALSE(Env::Default()->FileExists(out));
  // Usage errors exit 2.
  EXPECT_EQ(Cli("consolidate " + Quote(manifest_), &text), 2) << text;
}

TEST_P(ConsolidateTest, CliInspectsAManifest) {
  std::string text;
  ASSERT_EQ(Cli("inspect " + Quote(manifest_), &text), 0) << text;
  EXPECT_TRUE(Contains(text, "index 5, world size 3")) << text;
  EXPECT_TRUE(Contains(text, BaseName(PartPath(2)))) << text;
  EXPECT_TRUE(Contains(text, "module_interface_state/norm/weight")) << text;
  EXPECT_TRUE(Contains(text, "trainer_state/optimizer/state/0/exp_avg")) << text;
  EXPECT_TRUE(Contains(text, "[5, 6]")) << text;
  EXPECT_TRUE(Contains(text, "3 boxes")) << text;
  // Each box: rank, offsets, shape.
  EXPECT_TRUE(Contains(text, "rank 2    at [3, 0]")) << text;
  EXPECT_TRUE(Contains(text, "shape [2, 6]")) << text;

  ASSERT_EQ(
      RunCommand(std::string(ACKPT_CLI) + " inspect --json " + Quote(manifest_) + " 2>/dev/null",
                 &text),
      0);
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(text)) << text;
  EXPECT_EQ(j["kind"], "distributed");
  EXPECT_EQ(j["index"], 5);
  EXPECT_EQ(j["world_size"], 3);
  EXPECT_EQ(j["parts"].size(), 3u);
  EXPECT_EQ(j["replicated"].size(), 4u);
  EXPECT_EQ(j["sharded"].size(), ShardedTensors().size());
  bool seen = false;
  for (const auto& t : j["sharded"]) {
    if (t["name"] != "module_interface_state/proj.weight") continue;
    seen = true;
    EXPECT_EQ(t["dtype"], "BF16");
    EXPECT_EQ(t["global_shape"], nlohmann::json({6, 7}));
    ASSERT_EQ(t["boxes"].size(), 3u);
    EXPECT_EQ(t["boxes"][1]["rank"], 1);
    EXPECT_EQ(t["boxes"][1]["offsets"], nlohmann::json({0, 3}));
    EXPECT_EQ(t["boxes"][1]["shape"], nlohmann::json({6, 2}));
  }
  EXPECT_TRUE(seen) << text;
  // A plain checkpoint file still inspects as before.
  ASSERT_EQ(Cli("inspect " + Quote(PartPath(0)), &text), 0) << text;
  EXPECT_TRUE(Contains(text, "tensors:")) << text;
}

#ifdef ACKPT_RESHARD_WORKER
// A checkpoint saved by DistributedCheckpointer itself (3 ranks of
// tests/reshard_worker.cc: row, column, 2-D block and uneven boxes in real
// 1 MiB slabs, a 25 MB tensor, a replicated tensor, rank-local state),
// consolidated at the smallest budget; each global tensor is checked
// against the boxes pasted together here from the parts' slabs, and the
// replicated one against its part's copy.
TEST(ConsolidateSavedCheckpoint, MatchesTheBoxesDistributedCheckpointerSaved) {
  for (const std::string compression : {"zstd", "none"}) {
    SCOPED_TRACE(compression);
    TempDir tmp;
    const std::string dir = tmp.file("ckpt");
    const testing::Launch l =
        testing::LaunchRanks(ACKPT_RESHARD_WORKER, tmp, 3, dir,
                             {"--mode", "save", "--compression", compression}, "save", 150);
    for (size_t r = 0; r < l.status.size(); ++r) ASSERT_EQ(l.status[r], 0) << l.out[r];
    std::string manifest;
    for (const auto& n : Env::Default()->GetChildren(dir))
      if (n.size() > 16 && n.compare(n.size() - 16, 16, "_2.manifest.json") == 0)
        manifest = JoinPath(dir, n);
    ASSERT_FALSE(manifest.empty());
    const std::string out = tmp.file("all.safetensors.zst");
    ConsolidateOptions o;
    o.fsync = false;
    o.memory_budget_bytes = uint64_t{1} << 20;
    ConsolidateCheckpoint(manifest, out, o);

    const ManifestInfo info = DescribeManifest(manifest);
    ASSERT_FALSE(info.sharded.empty());
    std::vector<std::unique_ptr<CheckpointReader>> parts;
    for (const auto& p : info.parts) parts.push_back(CheckpointReader::Open(JoinPath(dir, p.file)));
    auto reader = CheckpointReader::Open(out);
    std::set<std::string> names;
    for (const auto& t : reader->info().tensors) names.insert(t.name);
    EXPECT_EQ(names.size(), info.sharded.size() + info.replicated.size());
    uint64_t bytes = 0;
    for (const auto& g : info.sharded) {
      SCOPED_TRACE(g.name);
      at::ScalarType type;
      ASSERT_TRUE(format::DtypeFromName(g.dtype, &type));
      at::Tensor want = at::empty(g.global_shape, at::TensorOptions().dtype(type));
      const Manifest m = ReadManifest(Env::Default(), manifest);
      for (const auto& b : g.boxes) {
        int64_t slab_rows = 1;
        for (const auto& r : m.parts[b.rank].shards)
          if (r.name == g.name && r.offsets == b.offsets) slab_rows = r.slab_rows;
        at::Tensor box = want;
        for (size_t d = 0; d < b.offsets.size(); ++d)
          box = box.narrow(static_cast<int64_t>(d), b.offsets[d], b.shape[d]);
        const int64_t rows = b.shape.empty() ? 1 : b.shape[0];
        for (int64_t k = 0; k * slab_rows < rows; ++k) {
          const std::string slab = FlatTensorName({"sharded", g.name, std::to_string(k)});
          const at::Tensor t = parts[b.rank]->ReadTensors({slab}).at(slab);
          if (b.shape.empty()) {
            box.copy_(t);
          } else {
            box.narrow(0, k * slab_rows, t.size(0)).copy_(t);
          }
        }
      }
      const at::Tensor got = reader->ReadTensors({g.name}).at(g.name);
      EXPECT_TRUE(TensorBytes(got) == TensorBytes(want));
      bytes += static_cast<uint64_t>(got.nbytes());
    }
    EXPECT_GT(bytes, uint64_t{24} << 20);  // the 25 MB tensor, in 1 MiB slabs
    ASSERT_EQ(info.replicated.size(), 1u);
    EXPECT_EQ(info.replicated[0].name, "module_interface_state/dense/w");
    const std::string part_name = ReplicatedTensorName(0);
    const at::Tensor saved = parts[info.replicated[0].rank]->ReadTensors({part_name}).at(part_name);
    const at::Tensor got = reader->ReadTensors({"module_interface_state/dense/w"})
                               .at("module_interface_state/dense/w");
    EXPECT_TRUE(TensorBytes(got) == TensorBytes(saved));
    // Rank-local state (data_position, local_t, step) is not in it.
    for (const auto& n : names) EXPECT_FALSE(Contains(n, "local_t")) << n;
  }
}
#endif

INSTANTIATE_TEST_SUITE_P(Parts, ConsolidateTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "ZstdParts" : "PlainParts";
                         });

}  // namespace
}  // namespace ackpt
