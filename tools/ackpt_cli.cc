// ackpt: look at, check and convert checkpoint files.
//
//   ackpt inspect FILE [--json]
//   ackpt verify PATH...            exit 0 all good, 1 something corrupt, 2 usage
//   ackpt export FILE -o OUT.safetensors
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "ackpt/retention.h"
#include "checkpointer/metadata_keys.h"

namespace {

constexpr int kExitOk = 0;
constexpr int kExitCorrupt = 1;
constexpr int kExitUsage = 2;

void Usage(std::ostream& os) {
  os << "usage:\n"
        "  ackpt inspect FILE [--json]           tensors, metadata, compression ratio\n"
        "  ackpt verify PATH...                  check every checksum (a directory: its "
        "checkpoints)\n"
        "  ackpt export FILE -o OUT.safetensors  write the plain safetensors stream\n"
        "  ackpt ls DIR [--json] [--verify] [--prefix P] [--ext E]\n"
        "                                        checkpoints with index, time, size, ratio, "
        "metrics,\n"
        "                                        and the retention rule keeping each\n"
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
      j["tensors"].push_back(
          {{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"bytes", t.nbytes()}});
    }
    j["metadata"] = info.metadata;
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  uint64_t tensor_bytes = 0;
  for (const auto& t : info.tensors) tensor_bytes += t.nbytes();
  std::printf("file:        %s\n", info.path.c_str());
  std::printf("format:      %s%s\n",
              info.compressed ? "safetensors in zstd seekable frames" : "safetensors",
              info.written_by_ackpt ? " (ackpt)" : "");
  std::printf("size:        %llu bytes on disk, %llu bytes uncompressed (ratio %.3f)\n",
              static_cast<unsigned long long>(info.file_bytes),
              static_cast<unsigned long long>(info.logical_bytes), info.compression_ratio());
  if (info.compressed) std::printf("frames:      %zu\n", info.num_frames);
  std::printf("tensors:     %zu, %llu bytes\n", info.tensors.size(),
              static_cast<unsigned long long>(tensor_bytes));
  for (const auto& t : info.tensors) {
    std::printf("  %-48s %-5s %-20s %llu\n", t.name.c_str(), t.dtype.c_str(),
                ShapeString(t.shape).c_str(), static_cast<unsigned long long>(t.nbytes()));
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

std::string UtcTime(double t) {
  if (t <= 0) return "-";
  std::time_t secs = static_cast<std::time_t>(t);
  std::tm tm;
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

int List(const std::vector<std::string>& args) {
  std::string dir, prefix = "model", ext = "safetensors";
  bool as_json = false, verify = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--json") {
      as_json = true;
    } else if (a == "--verify") {
      verify = true;
    } else if ((a == "--prefix" || a == "--ext") && i + 1 < args.size()) {
      (a == "--prefix" ? prefix : ext) = args[++i];
    } else if (dir.empty() && a.rfind("--", 0) != 0) {
      dir = a;
    } else {
      std::cerr << "ackpt ls: unexpected argument '" << a << "'\n";
      return kExitUsage;
    }
  }
  if (dir.empty()) {
    std::cerr << "ackpt ls: missing DIR\n";
    return kExitUsage;
  }
  if (!IsDirectory(dir)) {
    std::cerr << "ackpt ls: '" << dir << "' is not a directory\n";
    return kExitUsage;
  }
  std::vector<ackpt::CheckpointEntry> entries =
      ackpt::ListCheckpointEntries(ackpt::Env::Default(), dir, prefix, ext);
  // The policy in force is the one recorded in the newest readable checkpoint.
  ackpt::RetentionPolicy policy;
  bool have_policy = false;
  for (const auto& e : entries) {
    if (!e.readable) continue;
    try {
      have_policy =
          ackpt::ParseRetention(ackpt::CheckpointReader::Open(e.path)->info().metadata, &policy);
    } catch (const ackpt::Error&) {
    }
    break;
  }
  ackpt::EvaluateRetention(&entries, policy);
  std::vector<std::string> status(entries.size(), "-");
  int bad = 0;
  if (verify) {
    for (size_t i = 0; i < entries.size(); ++i) {
      try {
        ackpt::CheckpointReader::Open(entries[i].path)->Verify();
        status[i] = "ok";
      } catch (const ackpt::Error& e) {
        status[i] = "CORRUPT";
        ++bad;
      }
    }
  }
  auto join = [](const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
    return s.empty() ? std::string("(deleted at next save)") : s;
  };
  if (as_json) {
    nlohmann::ordered_json j;
    j["dir"] = dir;
    j["retention"] = have_policy ? nlohmann::json::parse(ackpt::EncodeRetention(policy))
                                 : nlohmann::json::object();
    j["checkpoints"] = nlohmann::ordered_json::array();
    for (size_t i = 0; i < entries.size(); ++i) {
      const auto& e = entries[i];
      nlohmann::ordered_json c{
          {"index", e.index},           {"path", e.path},
          {"time", e.save_time},        {"time_utc", UtcTime(e.save_time)},
          {"file_bytes", e.file_bytes}, {"compression_ratio", e.compression_ratio()},
          {"readable", e.readable},     {"kept_by", e.kept_by}};
      nlohmann::ordered_json m = nlohmann::ordered_json::object();
      for (const auto& kv : e.metrics) {
        if (std::isfinite(kv.second)) {
          m[kv.first] = kv.second;
        } else {
          m[kv.first] = nullptr;
        }
      }
      c["metrics"] = m;
      if (!e.readable) c["error"] = e.error;
      if (verify) c["verified"] = status[i] == "ok";
      j["checkpoints"].push_back(c);
    }
    std::cout << j.dump(2) << "\n";
    return bad ? kExitCorrupt : kExitOk;
  }
  std::printf("%-8s %-21s %12s %7s %-8s %-28s %s\n", "INDEX", "SAVED (UTC)", "BYTES", "RATIO",
              "VERIFY", "METRICS", "KEPT BY");
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    std::string metrics;
    for (const auto& kv : e.metrics) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%s%s=%.4g", metrics.empty() ? "" : " ", kv.first.c_str(),
                    kv.second);
      metrics += buf;
    }
    std::printf("%-8lld %-21s %12llu %7.3f %-8s %-28s %s\n", static_cast<long long>(e.index),
                UtcTime(e.save_time).c_str(), static_cast<unsigned long long>(e.file_bytes),
                e.compression_ratio(), status[i].c_str(), metrics.empty() ? "-" : metrics.c_str(),
                join(e.kept_by).c_str());
    if (!e.readable) std::printf("         unreadable: %s\n", e.error.c_str());
  }
  std::printf("%zu checkpoints in %s; retention: %s\n", entries.size(), dir.c_str(),
              have_policy ? ackpt::EncodeRetention(policy).c_str() : "keep all");
  return bad ? kExitCorrupt : kExitOk;
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
    if (cmd == "ls") return List(args);
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
