// The ackpt command-line tool: inspect, verify, export, ls (one and two
// tiers) and its exit codes.
#include <ATen/ATen.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ackpt/checkpointer.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "checkpointer/manifest.h"
#include "test_util.h"

namespace ackpt {
namespace {

using testing::Contains;

using testing::PatternTensor;
using testing::ReadFileBytes;
using testing::RunCommand;
using testing::SampleState;
using testing::TempDir;
using testing::WriteFileBytes;

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// Runs `ackpt ARGS`; returns the exit status, output (stdout + stderr) in *out.
int Cli(const std::string& args, std::string* out) {
  return RunCommand(std::string(ACKPT_CLI) + " " + args, out);
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    state_ = SampleState(1);
    state_.set("big", PatternTensor({100000}, at::kFloat, 3));
    state_.set("odd", StateDict{{"i16", PatternTensor({3, 0, 2}, at::kShort)},
                                {"scalar", PatternTensor({}, at::kDouble)}});
    WriteOptions plain;
    plain.compression = Compression::kNone;
    plain.fsync = false;
    plain.metadata = {{"epoch", "7"}};
    WriteStateDict(state_, plain_, plain);
    WriteOptions zstd = plain;
    zstd.compression = Compression::kZstd;
    zstd.chunk_size = 64 * 1024;
    WriteStateDict(state_, zst_, zstd);
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
  const std::string plain_ = dir_.file("ckpt_1.safetensors");
  const std::string zst_ = dir_.file("ckpt_2.safetensors.zst");
};

TEST_F(CliTest, InspectPrintsTensorsShapesAndRatio) {
  for (const std::string& path : {plain_, zst_}) {
    SCOPED_TRACE(path);
    std::string out;
    ASSERT_EQ(Cli("inspect " + Quote(path), &out), 0) << out;
    auto reader = CheckpointReader::Open(path);
    const FileInfo& info = reader->info();
    EXPECT_TRUE(Contains(out, path)) << out;
    for (const auto& t : info.tensors) {
      // One line per tensor: name, dtype, shape, bytes.
      const size_t line = out.find("  " + t.name + " ");
      ASSERT_NE(line, std::string::npos) << t.name << "\n" << out;
      const std::string text = out.substr(line, out.find('\n', line) - line);
      EXPECT_TRUE(Contains(text, " " + t.dtype + " ")) << text;
      std::string shape = "[";
      for (size_t i = 0; i < t.shape.size(); ++i)
        shape += (i ? ", " : "") + std::to_string(t.shape[i]);
      shape += "]";
      EXPECT_TRUE(Contains(text, shape)) << text;
      EXPECT_TRUE(Contains(text, std::to_string(t.nbytes()))) << text;
    }
    EXPECT_TRUE(Contains(out, "model/encoder.weight")) << out;
    EXPECT_TRUE(Contains(out, "BF16")) << out;
    EXPECT_TRUE(Contains(out, "[64, 32]")) << out;
    EXPECT_TRUE(Contains(out, "[3, 0, 2]")) << out;
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "ratio %.3f", info.compression_ratio());
    EXPECT_TRUE(Contains(out, ratio)) << ratio << "\n" << out;
    EXPECT_TRUE(Contains(out, "epoch: 7")) << out;
    if (info.compressed) {
      EXPECT_GT(info.compression_ratio(), 1.5);
      EXPECT_TRUE(Contains(out, "frames:      " + std::to_string(info.num_frames))) << out;
    } else {
      EXPECT_TRUE(Contains(out, "ratio 1.000")) << out;
    }
  }
}

TEST_F(CliTest, InspectJsonParsesAndMatchesTheFile) {
  for (const std::string& path : {plain_, zst_}) {
    SCOPED_TRACE(path);
    std::string out;
    // Option order does not matter.
    const std::string args =
        path == plain_ ? " inspect --json " + Quote(path) : " inspect " + Quote(path) + " --json";
    ASSERT_EQ(RunCommand(std::string(ACKPT_CLI) + args + " 2>/dev/null", &out), 0);
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(out)) << out;
    auto reader = CheckpointReader::Open(path);
    const FileInfo& info = reader->info();
    EXPECT_EQ(j["path"], path);
    EXPECT_EQ(j["compressed"], info.compressed);
    EXPECT_EQ(j["written_by_ackpt"], true);
    EXPECT_EQ(j["file_bytes"], ReadFileBytes(path).size());
    EXPECT_EQ(j["logical_bytes"], info.logical_bytes);
    EXPECT_EQ(j["header_bytes"], info.header_bytes);
    EXPECT_EQ(j["frames"], info.num_frames);
    EXPECT_NEAR(j["compression_ratio"].get<double>(),
                static_cast<double>(info.logical_bytes) / static_cast<double>(info.file_bytes),
                1e-9);
    ASSERT_TRUE(j["tensors"].is_array());
    ASSERT_EQ(j["tensors"].size(), state_.num_tensors());
    std::map<std::string, nlohmann::json> by_name;
    for (const auto& t : j["tensors"]) by_name[t["name"].get<std::string>()] = t;
    const auto& w = by_name.at("model/encoder.weight");
    EXPECT_EQ(w["dtype"], "F32");
    EXPECT_EQ(w["shape"], nlohmann::json::array({64, 32}));
    EXPECT_EQ(w["bytes"], 64 * 32 * 4);
    EXPECT_EQ(by_name.at("model/head.weight")["dtype"], "BF16");
    EXPECT_EQ(by_name.at("odd/i16")["shape"], nlohmann::json::array({3, 0, 2}));
    EXPECT_EQ(by_name.at("odd/scalar")["shape"], nlohmann::json::array());
    EXPECT_EQ(j["metadata"]["epoch"], "7");
    EXPECT_EQ(j["metadata"]["format"], "pt");
    EXPECT_EQ(j["metadata"]["ackpt.version"], std::to_string(info.format_version));
    EXPECT_TRUE(j["metadata"].contains("ackpt.tree"));
  }
}

TEST_F(CliTest, VerifyGoodFilesExitsZero) {
  std::string out;
  EXPECT_EQ(Cli("verify " + Quote(plain_), &out), 0) << out;
  EXPECT_TRUE(Contains(out, "OK") && Contains(out, plain_)) << out;
  EXPECT_EQ(Cli("verify " + Quote(plain_) + " " + Quote(zst_), &out), 0) << out;
  EXPECT_TRUE(Contains(out, "2 checked, 0 corrupt")) << out;
}

TEST_F(CliTest, VerifyCorruptFileExitsOneAndNamesIt) {
  // Flip a byte in the tensor data of the plain file (checksum), and one in a
  // compressed frame.
  const std::string bad_plain = dir_.file("bad_3.safetensors");
  CorruptCopy(plain_, bad_plain, -100);
  const std::string bad_zst = dir_.file("bad_4.safetensors.zst");
  CorruptCopy(zst_, bad_zst, 200);
  std::string out;
  EXPECT_EQ(Cli("verify " + Quote(bad_plain), &out), 1) << out;
  EXPECT_TRUE(Contains(out, "CORRUPT  " + bad_plain)) << out;
  EXPECT_TRUE(Contains(out, "checksum")) << out;
  // Mixed with good files: still 1, each file reported.
  EXPECT_EQ(Cli("verify " + Quote(plain_) + " " + Quote(bad_zst) + " " + Quote(zst_), &out), 1)
      << out;
  EXPECT_TRUE(Contains(out, "OK       " + plain_)) << out;
  EXPECT_TRUE(Contains(out, "OK       " + zst_)) << out;
  EXPECT_TRUE(Contains(out, "CORRUPT  " + bad_zst)) << out;
  EXPECT_TRUE(Contains(out, "3 checked, 1 corrupt")) << out;
  // A missing file and a non-checkpoint file are failures too.
  WriteFileBytes(dir_.file("junk.safetensors"), "not a checkpoint at all");
  EXPECT_EQ(Cli("verify " + Quote(dir_.file("missing.safetensors")) + " " +
                    Quote(dir_.file("junk.safetensors")),
                &out),
            1)
      << out;
  EXPECT_TRUE(Contains(out, "2 checked, 2 corrupt")) << out;
}

TEST_F(CliTest, VerifyDirectoryChecksEveryCheckpointInIt) {
  std::string out;
  // Non-checkpoint files and hidden temp files are skipped.
  WriteFileBytes(dir_.file("notes.txt"), "not a checkpoint");
  WriteFileBytes(dir_.file(".ckpt_9.safetensors.tmp-123-456"), "partial garbage");
  ASSERT_EQ(Cli("verify " + Quote(dir_.path()), &out), 0) << out;
  EXPECT_TRUE(Contains(out, "OK       " + plain_)) << out;
  EXPECT_TRUE(Contains(out, "OK       " + zst_)) << out;
  EXPECT_TRUE(Contains(out, "2 checked, 0 corrupt")) << out;
  EXPECT_FALSE(Contains(out, "notes.txt")) << out;
  EXPECT_FALSE(Contains(out, ".tmp-")) << out;
  // One corrupt checkpoint in the directory makes it fail and is named.
  const std::string bad = dir_.file("ckpt_3.safetensors.zst");
  CorruptCopy(zst_, bad, -20);  // inside the seek table entries
  EXPECT_EQ(Cli("verify " + Quote(dir_.path()), &out), 1) << out;
  EXPECT_TRUE(Contains(out, "CORRUPT  " + bad)) << out;
  EXPECT_TRUE(Contains(out, "3 checked, 1 corrupt")) << out;
}

TEST_F(CliTest, UsageErrorsExitTwo) {
  std::string out;
  EXPECT_EQ(Cli("", &out), 2) << out;
  EXPECT_TRUE(Contains(out, "Usage: ackpt")) << out;
  EXPECT_EQ(Cli("frobnicate " + Quote(plain_), &out), 2) << out;
  EXPECT_TRUE(Contains(out, "unknown command 'frobnicate'")) << out;
  EXPECT_EQ(Cli("inspect --bogus " + Quote(plain_), &out), 2) << out;
  EXPECT_EQ(Cli("verify --bogus " + Quote(plain_), &out), 2) << out;
  EXPECT_EQ(Cli("export " + Quote(zst_), &out), 2) << out;  // no -o
  EXPECT_TRUE(Contains(out, "-o")) << out;
  EXPECT_EQ(Cli("export " + Quote(zst_) + " -o", &out), 2) << out;  // -o without a name
  EXPECT_EQ(Cli("export " + Quote(zst_) + " --bogus -o " + Quote(dir_.file("x.safetensors")), &out),
            2)
      << out;
  EXPECT_FALSE(Env::Default()->FileExists(dir_.file("x.safetensors")));
  EXPECT_EQ(Cli("ls " + Quote(dir_.file("no-such-dir")), &out), 2) << out;
  EXPECT_TRUE(Contains(out, "no-such-dir")) << out;
  EXPECT_EQ(Cli("convert " + Quote(plain_) + " -o x.safetensors --level 99", &out), 2) << out;
  EXPECT_TRUE(Contains(out, "--level")) << out;
  EXPECT_EQ(Cli("convert " + Quote(plain_) + " -o x.safetensors --none maybe", &out), 2) << out;
  EXPECT_TRUE(Contains(out, "--none")) << out;
  EXPECT_EQ(Cli("--help", &out), 0) << out;
  for (const char* cmd : {"inspect", "verify", "export", "ls", "convert"})
    EXPECT_TRUE(Contains(out, cmd)) << cmd << "\n" << out;
  EXPECT_EQ(Cli("convert --help", &out), 0) << out;
  EXPECT_TRUE(Contains(out, "--output") && Contains(out, "--level") && Contains(out, "--quiet"))
      << out;
}

// Runs `ackpt ARGS` on a pseudo-terminal (util-linux `script`), so stderr is
// a TTY; returns the exit status and the raw terminal output.
int CliOnTty(const std::string& args, std::string* out) {
  return RunCommand("script -qfec " + Quote(std::string(ACKPT_CLI) + " " + args) + " /dev/null",
                    out);
}

bool HaveScript() { return RunCommand("command -v script >/dev/null") == 0; }

TEST_F(CliTest, ProgressBarOnATerminalOnly) {
  if (!HaveScript()) GTEST_SKIP() << "util-linux 'script' is not installed";
  const std::string exported = dir_.file("tty.safetensors");
  for (const std::string& args :
       {"verify " + Quote(zst_), "export " + Quote(zst_) + " -o " + Quote(exported)}) {
    SCOPED_TRACE(args);
    std::string out;
    // On a terminal: a bar with a percentage and bytes per second on stderr,
    // cleared before the result line.
    ASSERT_EQ(CliOnTty(args, &out), 0) << out;
    EXPECT_TRUE(Contains(out, "100%")) << out;
    EXPECT_TRUE(Contains(out, "/s")) << out;
    EXPECT_TRUE(Contains(out, "\r\033[K")) << out;
    // --quiet on a terminal, or no terminal: no bar at all.
    ASSERT_EQ(CliOnTty(args + " --quiet", &out), 0) << out;
    EXPECT_FALSE(Contains(out, "%")) << out;
    EXPECT_FALSE(Contains(out, "\033[K")) << out;
    ASSERT_EQ(Cli(args, &out), 0) << out;
    EXPECT_FALSE(Contains(out, "%") || Contains(out, "\r")) << out;
  }
  EXPECT_TRUE(ReadFileBytes(exported) == ReadFileBytes(plain_));
}

TEST_F(CliTest, ProgressDoesNotChangeVerifyResults) {
  if (!HaveScript()) GTEST_SKIP() << "util-linux 'script' is not installed";
  const std::string bad = dir_.file("bad_5.safetensors.zst");
  CorruptCopy(zst_, bad, 200);
  std::string tty, pipe;
  EXPECT_EQ(CliOnTty("verify " + Quote(zst_) + " " + Quote(bad), &tty), 1) << tty;
  EXPECT_EQ(Cli("verify " + Quote(zst_) + " " + Quote(bad), &pipe), 1) << pipe;
  EXPECT_TRUE(Contains(tty, "CORRUPT  " + bad)) << tty;
  EXPECT_TRUE(Contains(tty, "2 checked, 1 corrupt")) << tty;
  EXPECT_TRUE(Contains(pipe, "2 checked, 1 corrupt")) << pipe;
}

TEST_F(CliTest, InspectOfUnreadableFileExitsOne) {
  std::string out;
  EXPECT_EQ(Cli("inspect " + Quote(dir_.file("missing.safetensors")), &out), 1) << out;
  EXPECT_TRUE(Contains(out, "missing.safetensors")) << out;
}

TEST_F(CliTest, ExportWritesThePlainSafetensorsStream) {
  const std::string out_path = dir_.file("exported.safetensors");
  std::string out;
  ASSERT_EQ(Cli("export " + Quote(zst_) + " -o " + Quote(out_path), &out), 0) << out;
  EXPECT_TRUE(Contains(out, out_path)) << out;
  EXPECT_TRUE(ReadFileBytes(out_path) == ReadFileBytes(plain_))
      << "export differs from the plain checkpoint";
  std::string why;
  EXPECT_TRUE(ExactlyEqual(ReadStateDict(out_path), state_, &why)) << why;
  EXPECT_FALSE(CheckpointReader::Open(out_path)->info().compressed);
  // --output spelling, and -o before FILE.
  const std::string out2 = dir_.file("exported2.safetensors");
  ASSERT_EQ(Cli("export --output " + Quote(out2) + " " + Quote(zst_), &out), 0) << out;
  EXPECT_TRUE(ReadFileBytes(out2) == ReadFileBytes(plain_));
  // The exported file verifies.
  EXPECT_EQ(Cli("verify " + Quote(out_path), &out), 0) << out;
}

TEST_F(CliTest, ExportOfCorruptFileFailsAndWritesNothing) {
  const std::string bad = dir_.file("bad.safetensors.zst");
  CorruptCopy(zst_, bad, 300);
  const std::string out_path = dir_.file("out.safetensors");
  std::string out;
  EXPECT_EQ(Cli("export " + Quote(bad) + " -o " + Quote(out_path), &out), 1) << out;
  EXPECT_FALSE(Env::Default()->FileExists(out_path));
  // No temp file left behind either.
  for (const auto& name : testing::ListDir(dir_.path()))
    EXPECT_FALSE(Contains(name, ".tmp-")) << name;
}

// ---- ls with two tiers (--local-dir) ----

// The whitespace-separated fields of the table row of `index` (the line that
// starts with it); empty if there is none.
std::vector<std::string> RowFields(const std::string& out, int64_t index) {
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream fields(line);
    std::vector<std::string> f;
    for (std::string w; fields >> w;) f.push_back(w);
    if (!f.empty() && f[0] == std::to_string(index) && line[0] != ' ') return f;
  }
  return {};
}

// The JSON object of checkpoint `index` in `ls --json` output.
nlohmann::json JsonRow(const nlohmann::json& j, int64_t index) {
  for (const auto& c : j["checkpoints"])
    if (c["index"] == index) return c;
  return nullptr;
}

void CopyFile(const std::string& from, const std::string& to) {
  WriteFileBytes(to, ReadFileBytes(from));
}

// The file name of checkpoint `index` in `dir` ("model_4.safetensors[.zst]").
std::string FileOf(const std::string& dir, int64_t index) {
  for (const auto& n : testing::ListDir(dir))
    if (ParseCheckpointIndex(n, "model") == index) return n;
  return "";
}

// Fields 0..6 of a two-tier row: INDEX SAVED BYTES RATIO VERIFY PERSISTENT LOCAL.
constexpr size_t kVerify = 4, kPersistent = 5, kLocal = 6;

TEST(CliLsTwoTiersTest, SingleProcessUnionOfBothTiers) {
  TempDir t;
  const std::string save_dir = t.file("ckpt"), local = t.file("local");
  {
    DefaultCheckpointerArguments a;
    a.save_dir = save_dir;
    a.model_state_save_dir = t.file("models");
    a.log_level = "ERROR";
    a.retention.keep_last = 3;
    DefaultCheckpointer ck(a);
    for (int i = 1; i <= 5; ++i) {
      Checkpoint c;
      c.module_interface_state.set("w", PatternTensor({32, 32}, at::kFloat, i));
      c.metrics["loss"] = 1.0 / i;
      ck.save(c, i);
    }
  }
  // save_dir keeps 3, 4, 5. The local tier holds 4 and 5 (byte-identical
  // copies, as promotion makes them); 5 was never promoted (only local), 3
  // has left the local tier (only persistent), and a torn local 6 does not read.
  Env::Default()->CreateDirs(local);
  for (int i : {4, 5})
    CopyFile(JoinPath(save_dir, FileOf(save_dir, i)), JoinPath(local, FileOf(save_dir, i)));
  const std::string five = FileOf(save_dir, 5);
  Env::Default()->RemoveFile(JoinPath(save_dir, five));
  WriteFileBytes(JoinPath(local, "model_6.safetensors"), "torn: not a checkpoint");

  std::string out;
  // One tier: as before, save_dir alone.
  ASSERT_EQ(Cli("ls " + Quote(save_dir), &out), 0) << out;
  EXPECT_FALSE(Contains(out, "PERSISTENT")) << out;
  EXPECT_TRUE(RowFields(out, 5).empty() && RowFields(out, 6).empty()) << out;
  EXPECT_TRUE(Contains(out, "2 checkpoints in " + save_dir)) << out;

  ASSERT_EQ(Cli("ls " + Quote(save_dir) + " --local-dir " + Quote(local), &out), 0) << out;
  EXPECT_TRUE(Contains(out, "PERSISTENT") && Contains(out, "LOCAL")) << out;
  auto row6 = RowFields(out, 6), row5 = RowFields(out, 5), row4 = RowFields(out, 4),
       row3 = RowFields(out, 3);
  ASSERT_GT(row6.size(), kLocal) << out;
  ASSERT_GT(row5.size(), kLocal) << out;
  ASSERT_GT(row4.size(), kLocal) << out;
  ASSERT_GT(row3.size(), kLocal) << out;
  EXPECT_EQ(row6[kPersistent], "-");
  EXPECT_EQ(row6[kLocal], "incomplete");
  EXPECT_TRUE(Contains(out, "local unreadable:")) << out;
  EXPECT_EQ(row5[kPersistent], "-");
  EXPECT_EQ(row5[kLocal], "complete");
  EXPECT_TRUE(Contains(out, "- (local only)")) << out;
  EXPECT_EQ(row4[kPersistent], "complete");
  EXPECT_EQ(row4[kLocal], "complete");
  EXPECT_TRUE(Contains(out, "newest,keep_last")) << out;  // retention marks of save_dir
  EXPECT_EQ(row3[kPersistent], "complete");
  EXPECT_EQ(row3[kLocal], "-");
  EXPECT_TRUE(RowFields(out, 2).empty()) << out;  // deleted by retention, in no tier
  // Newest first: 5 (saved last) before 4 before 3.
  EXPECT_LT(out.find("\n5 "), out.find("\n4 ")) << out;
  EXPECT_LT(out.find("\n4 "), out.find("\n3 ")) << out;
  EXPECT_TRUE(
      Contains(out, "2 complete in " + save_dir + " (persistent), 2 complete in the local tier"))
      << out;

  ASSERT_EQ(Cli("ls " + Quote(save_dir) + " --local-dir " + Quote(local) + " --json", &out), 0)
      << out;
  nlohmann::json j;
  ASSERT_NO_THROW(j = nlohmann::json::parse(out)) << out;
  EXPECT_EQ(j["dir"], save_dir);
  ASSERT_EQ(j["local_dirs"].size(), 1u);
  EXPECT_EQ(j["local_dirs"][0]["dir"], local);
  EXPECT_EQ(j["retention"]["keep_last"], 3);
  ASSERT_EQ(j["checkpoints"].size(), 4u);
  const auto c5 = JsonRow(j, 5), c4 = JsonRow(j, 4), c3 = JsonRow(j, 3), c6 = JsonRow(j, 6);
  EXPECT_EQ(c5["tiers"]["persistent"]["status"], "absent");
  EXPECT_EQ(c5["tiers"]["local"]["status"], "complete");
  EXPECT_EQ(c5["tiers"]["local"]["path"], JoinPath(local, five));
  EXPECT_TRUE(c5["kept_by"].is_null());
  EXPECT_DOUBLE_EQ(c5["metrics"]["loss"].get<double>(), 0.2);
  EXPECT_EQ(c4["tiers"]["persistent"]["status"], "complete");
  EXPECT_EQ(c4["tiers"]["persistent"]["kept_by"], nlohmann::json({"newest", "keep_last"}));
  EXPECT_EQ(c4["kept_by"], nlohmann::json({"newest", "keep_last"}));
  EXPECT_EQ(c4["tiers"]["local"]["status"], "complete");
  EXPECT_EQ(c3["tiers"]["persistent"]["status"], "complete");
  EXPECT_EQ(c3["tiers"]["local"]["status"], "absent");
  EXPECT_EQ(c6["tiers"]["local"]["status"], "incomplete");
  EXPECT_TRUE(c6["tiers"]["local"].contains("error"));

  // --verify checks both tiers' copies: the torn local file is corrupt (1).
  ASSERT_EQ(Cli("ls " + Quote(save_dir) + " --local-dir " + Quote(local) + " --verify", &out), 1)
      << out;
  Env::Default()->RemoveFile(JoinPath(local, "model_6.safetensors"));
  ASSERT_EQ(Cli("ls " + Quote(save_dir) + " --local-dir " + Quote(local) + " --verify", &out), 0)
      << out;
  EXPECT_EQ(RowFields(out, 5)[kVerify], "ok") << out;
  EXPECT_EQ(RowFields(out, 4)[kVerify], "ok") << out;
  // A flipped byte in the local copy of 4: corrupt there, and named.
  std::string bytes = ReadFileBytes(JoinPath(local, FileOf(local, 4)));
  bytes[bytes.size() - 100] ^= 0x01;
  WriteFileBytes(JoinPath(local, FileOf(local, 4)), bytes);
  ASSERT_EQ(
      Cli("ls " + Quote(save_dir) + " --local-dir " + Quote(local) + " --verify --json", &out), 1)
      << out;
  j = nlohmann::json::parse(out);
  EXPECT_EQ(JsonRow(j, 4)["tiers"]["persistent"]["verified"], true);
  EXPECT_EQ(JsonRow(j, 4)["tiers"]["local"]["verified"], false);
  EXPECT_EQ(JsonRow(j, 4)["verified"], false);
  EXPECT_EQ(JsonRow(j, 5)["verified"], true);
}

// A two-rank distributed layout written by hand: each part a real checkpoint
// file, the manifest encoded by manifest.h.
class CliLsDistributedTest : public ::testing::Test {
 protected:
  static constexpr int kWorld = 2;

  void SetUp() override {
    Env::Default()->CreateDirs(save_dir_);
    Env::Default()->CreateDirs(staging_);
    for (int r = 0; r < kWorld; ++r) Env::Default()->CreateDirs(LocalDir(r));
  }

  std::string LocalDir(int r) const { return t_.file("local/rank" + std::to_string(r)); }
  std::string Pattern() const { return t_.file("local/rank{rank}"); }
  static std::string Part(int64_t index, int r) { return PartFileName("ckpt", index, r, false); }

  // Writes checkpoint `index` (parts and manifest) into staging_.
  void Build(int64_t index) {
    Manifest m;
    m.index = index;
    m.world_size = kWorld;
    m.time = 1.7e9 + static_cast<double>(index);
    m.generation = static_cast<uint64_t>(index);
    m.metrics = {{"loss", 0.5}};
    for (int r = 0; r < kWorld; ++r) {
      WriteOptions w;
      w.fsync = false;
      w.compression = Compression::kNone;
      const WriteResult res = WriteStateDict(SampleState(static_cast<int>(index) * 10 + r),
                                             JoinPath(staging_, Part(index, r)), w);
      Manifest::Part p;
      p.file = Part(index, r);
      p.file_bytes = res.file_bytes;
      p.header_xxh3 = res.header_xxh3;
      m.parts.push_back(std::move(p));
    }
    WriteFileBytes(JoinPath(staging_, ManifestFileName("ckpt", index)), EncodeManifest(m));
  }
  // save_dir gets the manifest and every part.
  void Persist(int64_t index) const {
    for (const std::string& f : {ManifestFileName("ckpt", index), Part(index, 0), Part(index, 1)})
      CopyFile(JoinPath(staging_, f), JoinPath(save_dir_, f));
  }
  // Rank r's local dir gets the manifest, its own part, and the replica of
  // the part of rank q with (q + 1) % N == r.
  void Local(int64_t index) const {
    for (int r = 0; r < kWorld; ++r) {
      const int q = (r + kWorld - 1) % kWorld;
      for (const std::string& f : {ManifestFileName("ckpt", index), Part(index, r), Part(index, q)})
        CopyFile(JoinPath(staging_, f), JoinPath(LocalDir(r), f));
    }
  }

  int Ls(const std::string& extra, std::string* out) const {
    return Cli("ls " + Quote(save_dir_) + " --prefix ckpt " + extra, out);
  }

  TempDir t_;
  const std::string save_dir_ = t_.file("ckpt");
  const std::string staging_ = t_.file("staging");
};

TEST_F(CliLsDistributedTest, ShowsWhichLocalDirHoldsEachPart) {
  Build(6);
  Build(7);
  Build(8);
  Persist(6);  // only persistent
  Persist(7);  // both tiers
  Local(7);
  Local(8);  // only local
  const std::string pattern = "--local-dir " + Quote(Pattern());
  std::string out;
  ASSERT_EQ(Ls(pattern, &out), 0) << out;
  auto r8 = RowFields(out, 8), r7 = RowFields(out, 7), r6 = RowFields(out, 6);
  ASSERT_GT(r8.size(), kLocal) << out;
  ASSERT_GT(r7.size(), kLocal) << out;
  ASSERT_GT(r6.size(), kLocal) << out;
  EXPECT_EQ(r8[kPersistent], "-");
  EXPECT_EQ(r8[kLocal], "complete");
  EXPECT_EQ(r7[kPersistent], "complete");
  EXPECT_EQ(r7[kLocal], "complete");
  EXPECT_EQ(r6[kPersistent], "complete");
  EXPECT_EQ(r6[kLocal], "-");
  // Every part: in its own rank's directory and as the peer's replica.
  EXPECT_TRUE(Contains(out, "local parts: 0:own+r1 1:own+r0")) << out;
  EXPECT_TRUE(Contains(out, "r0=" + LocalDir(0) + ", r1=" + LocalDir(1))) << out;
  // The same dirs given one by one, in rank order, read the same.
  std::string listed;
  ASSERT_EQ(Ls("--local-dir " + Quote(LocalDir(0)) + " --local-dir " + Quote(LocalDir(1)), &listed),
            0)
      << listed;
  EXPECT_EQ(listed, out);

  ASSERT_EQ(Ls(pattern + " --json --verify", &out), 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  ASSERT_EQ(j["local_dirs"].size(), 2u);
  EXPECT_EQ(j["local_dirs"][1]["dir"], LocalDir(1));
  EXPECT_EQ(j["local_dirs"][1]["exists"], true);
  auto l8 = JsonRow(j, 8)["tiers"]["local"];
  EXPECT_EQ(l8["status"], "complete");
  EXPECT_EQ(l8["verified"], true);
  EXPECT_EQ(l8["missing"], nlohmann::json::array());
  ASSERT_EQ(l8["parts"].size(), 2u);
  EXPECT_EQ(l8["parts"][1]["file"], Part(8, 1));
  EXPECT_EQ(l8["parts"][1]["file_bytes"], ReadFileBytes(JoinPath(staging_, Part(8, 1))).size());
  ASSERT_EQ(l8["parts"][1]["locations"].size(), 2u);
  EXPECT_EQ(l8["parts"][1]["locations"][0]["rank"], 1);
  EXPECT_EQ(l8["parts"][1]["locations"][0]["role"], "own");
  EXPECT_EQ(l8["parts"][1]["locations"][1]["rank"], 0);
  EXPECT_EQ(l8["parts"][1]["locations"][1]["role"], "replica");
  EXPECT_EQ(JsonRow(j, 8)["tiers"]["persistent"]["status"], "absent");
  EXPECT_EQ(JsonRow(j, 8)["world_size"], 2);
  EXPECT_EQ(JsonRow(j, 6)["tiers"]["local"]["status"], "absent");
  EXPECT_EQ(JsonRow(j, 7)["tiers"]["persistent"]["verified"], true);

  // Rank 1's local dir is gone (its node died): still complete, rank 1's part
  // from the replica in rank 0's dir. The pattern still names rank 1's dir
  // (the manifests say two ranks), as missing.
  ASSERT_EQ(testing::RunCommand("rm -rf " + Quote(LocalDir(1))), 0);
  ASSERT_EQ(Ls(pattern, &out), 0) << out;
  r8 = RowFields(out, 8);
  ASSERT_GT(r8.size(), kLocal) << out;
  EXPECT_EQ(r8[kLocal], "complete") << out;
  EXPECT_TRUE(Contains(out, "local parts: 0:own 1:r0")) << out;
  EXPECT_TRUE(Contains(out, "r1=" + LocalDir(1) + " (missing)")) << out;

  // And the replica of rank 1's part is gone too: incomplete, naming it.
  Env::Default()->RemoveFile(JoinPath(LocalDir(0), Part(8, 1)));
  ASSERT_EQ(Ls(pattern, &out), 0) << out;
  r8 = RowFields(out, 8);
  ASSERT_GT(r8.size(), kLocal) << out;
  EXPECT_EQ(r8[kLocal], "incomplete") << out;
  EXPECT_TRUE(Contains(out, "local parts: 0:own 1:MISSING")) << out;
  EXPECT_TRUE(Contains(out, "local incomplete: missing " + Part(8, 1) + " (rank 1)")) << out;
  EXPECT_EQ(RowFields(out, 7)[kPersistent], "complete") << out;
  ASSERT_EQ(Ls(pattern + " --json --verify", &out), 0) << out;  // missing is not corrupt
  j = nlohmann::json::parse(out);
  l8 = JsonRow(j, 8)["tiers"]["local"];
  EXPECT_EQ(l8["status"], "incomplete");
  EXPECT_EQ(l8["missing"], nlohmann::json({Part(8, 1)}));
  EXPECT_EQ(l8["parts"][1]["present"], false);
  EXPECT_EQ(l8["parts"][0]["locations"][0]["role"], "own");
  EXPECT_EQ(j["local_dirs"][1]["exists"], false);
  EXPECT_TRUE(l8["verified"].is_null());  // not corrupt, but nothing whole to check
  EXPECT_EQ(JsonRow(j, 7)["tiers"]["local"]["verified"], true);

  // A replica of the wrong size (torn copy) does not count.
  WriteFileBytes(JoinPath(LocalDir(0), Part(8, 1)), "short");
  ASSERT_EQ(Ls(pattern, &out), 0) << out;
  EXPECT_TRUE(Contains(out, "missing " + Part(8, 1) + " (rank 1, wrong size)")) << out;
}

TEST_F(CliLsDistributedTest, RankPatternFindsExistingDirsWithoutManifests) {
  // Nothing in save_dir says how many ranks: the pattern covers the rank
  // directories that exist (rank 0, 1, and 2 here).
  Env::Default()->CreateDirs(t_.file("local/rank2"));
  Build(3);
  Local(3);
  std::string out;
  ASSERT_EQ(Ls("--local-dir " + Quote(Pattern()) + " --json", &out), 0) << out;
  nlohmann::json j = nlohmann::json::parse(out);
  ASSERT_EQ(j["local_dirs"].size(), 3u) << out;
  EXPECT_EQ(j["local_dirs"][2]["dir"], t_.file("local/rank2"));
  EXPECT_EQ(JsonRow(j, 3)["tiers"]["local"]["status"], "complete");
  // Rank 0's dir gone and save_dir empty: rank 1's manifest still gives the
  // world size, so both ranks are listed (rank 0's as missing).
  ASSERT_EQ(
      testing::RunCommand("rm -rf " + Quote(LocalDir(0)) + " " + Quote(t_.file("local/rank2"))), 0);
  ASSERT_EQ(Ls("--local-dir " + Quote(Pattern()), &out), 0) << out;
  EXPECT_TRUE(Contains(out, "r0=" + LocalDir(0) + " (missing), r1=" + LocalDir(1))) << out;
  EXPECT_TRUE(Contains(out, "local parts: 0:r1 1:own")) << out;
  // A pattern must stand alone; an unknown option is a usage error.
  EXPECT_EQ(Ls("--local-dir " + Quote(Pattern()) + " --local-dir " + Quote(LocalDir(1)), &out), 2)
      << out;
  EXPECT_TRUE(Contains(out, "{rank}")) << out;
  EXPECT_EQ(Ls("--local-dir", &out), 2) << out;
}

}  // namespace
}  // namespace ackpt
