// The ackpt command-line tool: inspect, verify, export and its exit codes.
#include <ATen/ATen.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "ackpt/format.h"
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

}  // namespace
}  // namespace ackpt
