// ackpt: look at, check and convert checkpoint files.
//
//   ackpt inspect FILE [--json]
//   ackpt verify PATH...            exit 0 all good, 1 something corrupt, 2 usage
//   ackpt export FILE -o OUT.safetensors
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitCorrupt = 1;
constexpr int kExitUsage = 2;

void Usage(std::ostream& os) {
  os << "usage:\n"
        "  ackpt inspect FILE [--json]           tensors, metadata, compression ratio\n"
        "  ackpt verify PATH...                  check every checksum (a directory: its checkpoints)\n"
        "  ackpt export FILE -o OUT.safetensors  write the plain safetensors stream\n"
        "exit status: 0 ok, 1 corrupt or unreadable, 2 usage error\n";
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int Inspect(const std::vector<std::string>& args) {
  std::string file;
  bool as_json = false;
  for (const auto& a : args) {
    if (a == "--json") {
      as_json = true;
    } else if (file.empty() && a.rfind("--", 0) != 0) {
      file = a;
    } else {
      std::cerr << "ackpt inspect: unexpected argument '" << a << "'\n";
      return kExitUsage;
    }
  }
  if (file.empty()) {
    std::cerr << "ackpt inspect: missing FILE\n";
    return kExitUsage;
  }
  auto reader = ackpt::CheckpointReader::Open(file);
  const ackpt::FileInfo& info = reader->info();
  if (as_json) {
    nlohmann::ordered_json j;
    j["path"] = info.path;
    j["compressed"] = info.compressed;
    j["written_by_ackpt"] = info.written_by_ackpt;
    j["file_bytes"] = info.file_bytes;
    j["logical_bytes"] = info.logical_bytes;
    j["header_bytes"] = info.header_bytes;
    j["frames"] = info.num_frames;
    j["compression_ratio"] = info.compression_ratio();
    j["tensors"] = nlohmann::ordered_json::array();
    for (const auto& t : info.tensors) {
      j["tensors"].push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"bytes", t.nbytes()}});
    }
    j["metadata"] = info.metadata;
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  uint64_t tensor_bytes = 0;
  for (const auto& t : info.tensors) tensor_bytes += t.nbytes();
  std::printf("file:        %s\n", info.path.c_str());
  std::printf("format:      %s%s\n", info.compressed ? "safetensors in zstd seekable frames" : "safetensors",
              info.written_by_ackpt ? " (ackpt)" : "");
  std::printf("size:        %llu bytes on disk, %llu bytes uncompressed (ratio %.3f)\n",
              static_cast<unsigned long long>(info.file_bytes), static_cast<unsigned long long>(info.logical_bytes),
              info.compression_ratio());
  if (info.compressed) std::printf("frames:      %zu\n", info.num_frames);
  std::printf("tensors:     %zu, %llu bytes\n", info.tensors.size(), static_cast<unsigned long long>(tensor_bytes));
  for (const auto& t : info.tensors) {
    std::printf("  %-48s %-5s %-20s %llu\n", t.name.c_str(), t.dtype.c_str(), ShapeString(t.shape).c_str(),
                static_cast<unsigned long long>(t.nbytes()));
  }
  std::printf("metadata:\n");
  for (const auto& kv : info.metadata) {
    std::string v = kv.second.size() > 200 ? kv.second.substr(0, 200) + "..." : kv.second;
    std::printf("  %s: %s\n", kv.first.c_str(), v.c_str());
  }
  return kExitOk;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int Verify(const std::vector<std::string>& args) {
  if (args.empty()) {
    std::cerr << "ackpt verify: missing PATH\n";
    return kExitUsage;
  }
  std::vector<std::string> files;
  for (const auto& a : args) {
    if (a.rfind("--", 0) == 0) {
      std::cerr << "ackpt verify: unknown option '" << a << "'\n";
      return kExitUsage;
    }
    if (IsDirectory(a)) {
      std::vector<std::string> names = ackpt::Env::Default()->GetChildren(a);
      std::sort(names.begin(), names.end());
      for (const auto& n : names) {
        const bool plain = n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0;
        const bool zst = n.size() > 16 && n.compare(n.size() - 16, 16, ".safetensors.zst") == 0;
        if ((plain || zst) && !ackpt::IsTempFileName(n)) files.push_back(ackpt::JoinPath(a, n));
      }
    } else {
      files.push_back(a);
    }
  }
  int bad = 0;
  for (const auto& f : files) {
    try {
      auto reader = ackpt::CheckpointReader::Open(f);
      reader->Verify();
      std::printf("OK       %s\n", f.c_str());
    } catch (const ackpt::Error& e) {
      ++bad;
      std::printf("CORRUPT  %s: %s\n", f.c_str(), e.what());
    }
  }
  std::printf("%zu checked, %d corrupt\n", files.size(), bad);
  return bad ? kExitCorrupt : kExitOk;
}

int Export(const std::vector<std::string>& args) {
  std::string in, out;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "-o" || args[i] == "--output") {
      if (i + 1 >= args.size()) {
        std::cerr << "ackpt export: -o needs a file name\n";
        return kExitUsage;
      }
      out = args[++i];
    } else if (in.empty() && args[i].rfind("-", 0) != 0) {
      in = args[i];
    } else {
      std::cerr << "ackpt export: unexpected argument '" << args[i] << "'\n";
      return kExitUsage;
    }
  }
  if (in.empty() || out.empty()) {
    std::cerr << "ackpt export: need FILE and -o OUT\n";
    return kExitUsage;
  }
  auto reader = ackpt::CheckpointReader::Open(in);
  reader->ExportSafetensors(out);
  std::printf("wrote %s (%llu bytes)\n", out.c_str(),
              static_cast<unsigned long long>(reader->info().logical_bytes));
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(std::cerr);
    return kExitUsage;
  }
  const std::string cmd = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    Usage(std::cout);
    return kExitOk;
  }
  try {
    if (cmd == "inspect") return Inspect(args);
    if (cmd == "verify") return Verify(args);
    if (cmd == "export") return Export(args);
  } catch (const ackpt::Error& e) {
    std::cerr << e.what() << "\n";
    return e.code() == ackpt::Error::Code::kInvalidArgument ? kExitUsage : kExitCorrupt;
  } catch (const std::exception& e) {
    std::cerr << "ackpt: " << e.what() << "\n";
    return kExitCorrupt;
  }
  std::cerr << "ackpt: unknown command '" << cmd << "'\n";
  Usage(std::cerr);
  return kExitUsage;
}
