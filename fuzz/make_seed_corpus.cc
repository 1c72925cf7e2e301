// Writes the committed seed corpus (fuzz/corpus/): small valid files of every
// dtype, plain and compressed (format version 2 layout), and the pieces the
// decoder targets take. Run from the repository root after a format change:
//   build-fuzz/fuzz/make_seed_corpus fuzz/corpus
#include <ATen/ATen.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "ackpt/format.h"
#include "format/header.h"
#include "test_util.h"
#include "zstd_layout.h"

namespace {

void Put(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

std::string Le32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[static_cast<size_t>(i)] = static_cast<char>(v >> (8 * i));
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  const std::string root = argv[1];
  for (const char* d : {"header", "seek_table", "tree", "reader"})
    ackpt::Env::Default()->CreateDirs(root + "/" + d);
  ackpt::testing::TempDir tmp;
  const std::vector<std::pair<std::string, at::ScalarType>> dtypes = {
      {"bool", at::kBool}, {"u8", at::kByte},   {"i8", at::kChar},  {"i16", at::kShort},
      {"i32", at::kInt},   {"i64", at::kLong},  {"f16", at::kHalf}, {"bf16", at::kBFloat16},
      {"f32", at::kFloat}, {"f64", at::kDouble}};
  for (const auto& [name, dtype] : dtypes) {
    ackpt::StateDict s;
    s.set("t", ackpt::testing::PatternTensor({3, 2}, dtype));
    s.set("empty", ackpt::testing::PatternTensor({0, 2}, dtype));
    s.set("step", int64_t{7});
    s.set("nested", ackpt::StateDict{{"lr", 0.5}, {"l", ackpt::List{true, "x"}}});
    ackpt::WriteOptions o;
    o.compression = ackpt::Compression::kNone;
    o.fsync = false;
    const std::string plain_path = tmp.file(name);
    ackpt::WriteStateDict(s, plain_path, o);
    const std::string plain = ackpt::testing::ReadFileBytes(plain_path);
    Put(root + "/reader/" + name + ".safetensors", plain);
    // Tiny chunks so the compressed seed has several data frames.
    Put(root + "/reader/" + name + ".safetensors.zst", ackpt::testing::CompressV2(plain, 8));
    Put(root + "/seek_table/" + name + ".zst", ackpt::testing::CompressV2(plain, 8));
    const uint64_t region = ackpt::testing::HeaderRegionSize(plain);
    Put(root + "/header/" + name + ".json",
        Le32(static_cast<uint32_t>(plain.size() - region)) + plain.substr(8, region - 8));
    ackpt::FileInfo info;
    ackpt::format::DecodeHeader(plain.substr(0, region), plain.size() - region, name, &info);
    Put(root + "/tree/" + name + ".json", info.metadata.at("ackpt.tree"));
  }
  std::puts("ok");
  return 0;
}
