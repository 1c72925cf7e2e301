// ackpt: look at, check and convert checkpoint files.
//
//   ackpt inspect FILE [--json]             FILE: a checkpoint file, or a distributed
//                                           checkpoint's P_N.manifest.json (its global
//                                           tensors and every rank's boxes)
//   ackpt verify PATH... [--quiet]          exit 0 all good, 1 something corrupt, 2 usage
//   ackpt export FILE -o OUT.safetensors [--quiet]
//   ackpt ls DIR [--local-dir D]... [--json] [--verify] [--prefix P] [--ext E]
//                                           with --local-dir (two tiers; one per rank in
//                                           rank order, or one with {rank}): each index's
//                                           state in DIR (persistent) and the local tier,
//                                           and for a distributed checkpoint which local
//                                           directory holds each part (own or replica)
//   ackpt convert IN.pt -o OUT.safetensors[.zst] [--level L] [--none skip|error] [--quiet]
//   ackpt consolidate MANIFEST -o OUT.safetensors[.zst] [--level L] [--quiet]
//                                           one file of a distributed checkpoint's global
//                                           tensors (sharded ones assembled, replicated
//                                           ones; rank-local state omitted)
//
// Arguments are parsed by CLI11 (`ackpt --help`, `ackpt SUBCOMMAND --help`);
// every usage error exits with status 2. verify, export, convert and
// consolidate draw a progress bar on stderr when it is a terminal
// (progress.h), unless --quiet.
#include <fmt/format.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <ctime>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "ackpt/consolidate.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "ackpt/retention.h"
#include "checkpointer/manifest.h"
#include "checkpointer/metadata_keys.h"
#include "convert.h"
#include "progress.h"
#include "torch_file.h"

namespace {

using ackpt_cli::HumanBytes;
using ackpt_cli::ProgressBar;
using ackpt_cli::ShowProgress;

constexpr int kExitOk = 0;
constexpr int kExitCorrupt = 1;
constexpr int kExitUsage = 2;

std::string ShapeString(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::string BaseName(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// ackpt's hidden temp files (docs/FORMAT.md section 2): ".{name}.tmp-{pid}-{n}".
// A crash can leave one behind; it is never a checkpoint.
bool IsTempFileName(const std::string& name) {
  const size_t tmp = name.rfind(".tmp-");
  if (name.empty() || name[0] != '.' || tmp == std::string::npos || tmp < 2) return false;
  const std::string rest = name.substr(tmp + 5);
  const size_t dash = rest.find('-');
  auto digits = [](const std::string& s) {
    return !s.empty() &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  return dash != std::string::npos && digits(rest.substr(0, dash)) && digits(rest.substr(dash + 1));
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// ---- inspect ----

bool IsManifestPath(const std::string& path);
int InspectManifest(const std::string& path, bool as_json);

int Inspect(const std::string& file, bool as_json) {
  if (IsManifestPath(file)) return InspectManifest(file, as_json);
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
    // Incremental: tensors whose bytes another file holds.
    j["references"] = nlohmann::ordered_json::array();
    for (const auto& r : info.references) {
      j["references"].push_back({{"name", r.name},
                                 {"dtype", r.dtype},
                                 {"shape", r.shape},
                                 {"bytes", r.nbytes},
                                 {"file", r.file}});
    }
    j["metadata"] = info.metadata;
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  uint64_t tensor_bytes = 0;
  for (const auto& t : info.tensors) tensor_bytes += t.nbytes();
  uint64_t referenced_bytes = 0;
  for (const auto& r : info.references) referenced_bytes += r.nbytes;
  fmt::print("file:        {}\n", info.path);
  fmt::print("format:      {}{}\n",
             info.compressed ? "safetensors in zstd seekable frames" : "safetensors",
             info.written_by_ackpt ? " (ackpt)" : "");
  fmt::print("size:        {} bytes on disk, {} bytes uncompressed (ratio {:.3f})\n",
             info.file_bytes, info.logical_bytes, info.compression_ratio());
  if (info.compressed) fmt::print("frames:      {}\n", info.num_frames);
  fmt::print("tensors:     {}, {} bytes\n", info.tensors.size(), tensor_bytes);
  for (const auto& t : info.tensors) {
    fmt::print("  {:<48} {:<5} {:<20} {}\n", t.name, t.dtype, ShapeString(t.shape), t.nbytes());
  }
  if (!info.references.empty()) {
    fmt::print("references:  {}, {} bytes held by other files (incremental checkpoint)\n",
               info.references.size(), referenced_bytes);
    for (const auto& r : info.references) {
      fmt::print("  {:<48} {:<5} {:<20} {} in {}\n", r.name, r.dtype, ShapeString(r.shape),
                 r.nbytes, r.file);
    }
  }
  fmt::print("metadata:\n");
  for (const auto& kv : info.metadata) {
    const std::string v = kv.second.size() > 200 ? kv.second.substr(0, 200) + "..." : kv.second;
    fmt::print("  {}: {}\n", kv.first, v);
  }
  return kExitOk;
}

// ---- inspect MANIFEST ----

bool IsManifestPath(const std::string& path) {
  const std::string suffix = ".manifest.json";
  return path.size() >= suffix.size() &&
         path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string UtcTime(double t);

int InspectManifest(const std::string& path, bool as_json) {
  const ackpt::ManifestInfo info = ackpt::DescribeManifest(path);
  uint64_t part_bytes = 0;
  for (const auto& p : info.parts) part_bytes += p.file_bytes;
  if (as_json) {
    nlohmann::ordered_json j;
    j["path"] = info.path;
    j["kind"] = "distributed";
    j["index"] = info.index;
    j["world_size"] = info.world_size;
    j["time"] = info.time;
    j["time_utc"] = UtcTime(info.time);
    if (info.parent >= 0) j["parent"] = info.parent;
    nlohmann::ordered_json metrics = nlohmann::ordered_json::object();
    for (const auto& kv : info.metrics) {
      if (std::isfinite(kv.second)) {
        metrics[kv.first] = kv.second;
      } else {
        metrics[kv.first] = nullptr;
      }
    }
    j["metrics"] = metrics;
    j["file_bytes"] = part_bytes;
    j["parts"] = nlohmann::ordered_json::array();
    for (const auto& p : info.parts) {
      j["parts"].push_back({{"rank", p.rank},
                            {"file", p.file},
                            {"file_bytes", p.file_bytes},
                            {"has_local", p.has_local}});
    }
    j["replicated_paths"] = info.replicated_paths;
    j["replicated"] = nlohmann::ordered_json::array();
    for (const auto& t : info.replicated) {
      j["replicated"].push_back(
          {{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}, {"rank", t.rank}});
    }
    j["sharded"] = nlohmann::ordered_json::array();
    for (const auto& t : info.sharded) {
      nlohmann::ordered_json boxes = nlohmann::ordered_json::array();
      for (const auto& b : t.boxes)
        boxes.push_back({{"rank", b.rank}, {"offsets", b.offsets}, {"shape", b.shape}});
      j["sharded"].push_back({{"name", t.name},
                              {"dtype", t.dtype},
                              {"global_shape", t.global_shape},
                              {"boxes", std::move(boxes)}});
    }
    std::cout << j.dump(2) << "\n";
    return kExitOk;
  }
  fmt::print("manifest:    {}\n", info.path);
  fmt::print("format:      distributed checkpoint, index {}, world size {}\n", info.index,
             info.world_size);
  fmt::print("saved:       {}\n", UtcTime(info.time));
  if (info.parent >= 0) fmt::print("parent:      {}\n", info.parent);
  if (!info.metrics.empty()) {
    std::vector<std::string> m;
    for (const auto& kv : info.metrics) m.push_back(fmt::format("{}={:.6g}", kv.first, kv.second));
    fmt::print("metrics:     {}\n", fmt::join(m, " "));
  }
  fmt::print("parts:       {}, {} bytes on disk\n", info.parts.size(), part_bytes);
  for (const auto& p : info.parts) {
    fmt::print("  rank {:<4} {:<48} {:>12} bytes{}\n", p.rank, p.file, p.file_bytes,
               p.has_local ? "  (rank-local state)" : "");
  }
  fmt::print("replicated:  {} tensors{}\n", info.replicated.size(),
             info.replicated_paths.empty()
                 ? std::string()
                 : fmt::format(" under {}", fmt::join(info.replicated_paths, ", ")));
  for (const auto& t : info.replicated) {
    fmt::print("  {:<48} {:<5} {:<20} rank {}\n", t.name, t.dtype, ShapeString(t.shape), t.rank);
  }
  fmt::print("sharded:     {} tensors\n", info.sharded.size());
  for (const auto& t : info.sharded) {
    fmt::print("  {:<48} {:<5} {:<20} {} box{}\n", t.name, t.dtype, ShapeString(t.global_shape),
               t.boxes.size(), t.boxes.size() == 1 ? "" : "es");
    for (const auto& b : t.boxes) {
      fmt::print("    rank {:<4} at {:<16} shape {}\n", b.rank, ShapeString(b.offsets),
                 ShapeString(b.shape));
    }
  }
  return kExitOk;
}

// ---- verify ----

int Verify(const std::vector<std::string>& paths, bool quiet) {
  std::vector<std::string> files;
  for (const auto& a : paths) {
    if (IsDirectory(a)) {
      std::vector<std::string> names = ackpt::Env::Default()->GetChildren(a);
      std::sort(names.begin(), names.end());
      for (const auto& n : names) {
        const bool plain = n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0;
        const bool zst = n.size() > 16 && n.compare(n.size() - 16, 16, ".safetensors.zst") == 0;
        if ((plain || zst) && !IsTempFileName(n)) files.push_back(ackpt::JoinPath(a, n));
      }
    } else {
      files.push_back(a);
    }
  }
  const bool progress = ShowProgress(quiet);
  int bad = 0;
  for (const auto& f : files) {
    std::string error;
    try {
      auto reader = ackpt::CheckpointReader::Open(f);
      // Verify() reads every byte after the header once.
      ProgressBar bar(
          progress, "verify " + BaseName(f),
          reader->info().file_bytes -
              std::min(reader->info().file_bytes,
                       reader->info().compressed ? uint64_t{0} : reader->info().header_bytes));
      bar.TrackProcessIo();
      reader->Verify();
    } catch (const ackpt::Error& e) {
      error = e.what();
    }
    if (error.empty()) {
      fmt::print("OK       {}\n", f);
    } else {
      ++bad;
      fmt::print("CORRUPT  {}: {}\n", f, error);
    }
    std::fflush(stdout);
  }
  fmt::print("{} checked, {} corrupt\n", files.size(), bad);
  return bad ? kExitCorrupt : kExitOk;
}

// ---- export ----

int Export(const std::string& in, const std::string& out, bool quiet) {
  auto reader = ackpt::CheckpointReader::Open(in);
  const ackpt::FileInfo& info = reader->info();
  {
    // ExportSafetensors verifies (reads the file once) and then writes the
    // plain stream (reads it again, writes logical_bytes).
    ProgressBar bar(ShowProgress(quiet), "export " + BaseName(in),
                    2 * info.file_bytes + info.logical_bytes);
    bar.TrackProcessIo();
    reader->ExportSafetensors(out);
  }
  fmt::print("wrote {} ({} bytes)\n", out, info.logical_bytes);
  return kExitOk;
}

// ---- ls ----

std::string UtcTime(double t) {
  if (t <= 0) return "-";
  std::time_t secs = static_cast<std::time_t>(t);
  std::tm tm;
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The policy in force is the one recorded in the newest readable checkpoint
// file (manifests record no policy). Returns whether one was found.
bool PolicyInForce(const std::vector<ackpt::CheckpointEntry>& entries,
                   ackpt::RetentionPolicy* policy) {
  for (const auto& e : entries) {
    if (!e.readable || e.world_size > 0) continue;
    try {
      return ackpt::ParseRetention(ackpt::CheckpointReader::Open(e.path)->info().metadata, policy);
    } catch (const ackpt::Error&) {
    }
    return false;
  }
  return false;
}

// Checks every checksum of `files`; false at the first corrupt or unreadable one.
bool VerifyFiles(const std::vector<std::string>& files) {
  try {
    for (const auto& f : files) ackpt::CheckpointReader::Open(f)->Verify();
    return true;
  } catch (const std::exception&) {  // ackpt::Error, or bad_alloc on a wild header
    return false;
  }
}

// The files of an entry of `dir`: itself, or a distributed checkpoint's parts.
std::vector<std::string> EntryFiles(const std::string& dir, const ackpt::CheckpointEntry& e) {
  if (e.world_size == 0) return {e.path};
  std::vector<std::string> files;
  for (const auto& p : e.parts) files.push_back(ackpt::JoinPath(dir, p));
  return files;
}

nlohmann::ordered_json MetricsJson(const std::map<std::string, double>& metrics) {
  nlohmann::ordered_json m = nlohmann::ordered_json::object();
  for (const auto& kv : metrics) {
    if (std::isfinite(kv.second)) {
      m[kv.first] = kv.second;
    } else {
      m[kv.first] = nullptr;
    }
  }
  return m;
}

std::string MetricsText(const std::map<std::string, double>& metrics) {
  std::vector<std::string> m;
  for (const auto& kv : metrics) m.push_back(fmt::format("{}={:.4g}", kv.first, kv.second));
  return m.empty() ? std::string("-") : fmt::format("{}", fmt::join(m, " "));
}

std::string KeptByText(const std::vector<std::string>& v) {
  return v.empty() ? std::string("(deleted at next save)") : fmt::format("{}", fmt::join(v, ","));
}

// Incremental: the indices of the listed checkpoints that reference a file of `e`.
std::vector<int64_t> BaseOf(const std::vector<ackpt::CheckpointEntry>& entries,
                            const ackpt::CheckpointEntry& e) {
  const std::vector<std::string> files = e.files();
  std::vector<int64_t> out;
  for (const auto& d : entries) {
    for (const auto& f : d.references) {
      if (std::find(files.begin(), files.end(), f) != files.end()) {
        out.push_back(d.index);
        break;
      }
    }
  }
  return out;
}

// One tier: save_dir alone, as before two tiers existed.
int List(const std::string& dir, const std::string& prefix, const std::string& ext, bool as_json,
         bool verify) {
  std::vector<ackpt::CheckpointEntry> entries =
      ackpt::ListCheckpointEntries(ackpt::Env::Default(), dir, prefix, ext);
  ackpt::RetentionPolicy policy;
  const bool have_policy = PolicyInForce(entries, &policy);
  ackpt::EvaluateRetention(&entries, policy);
  std::vector<std::string> status(entries.size(), "-");
  int bad = 0;
  if (verify) {
    for (size_t i = 0; i < entries.size(); ++i) {
      // A distributed checkpoint verifies part by part.
      status[i] = VerifyFiles(EntryFiles(dir, entries[i])) ? "ok" : "CORRUPT";
      if (status[i] != "ok") ++bad;
    }
  }
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
      if (e.world_size > 0) {
        c["world_size"] = e.world_size;
        c["parts"] = e.parts;
      }
      c["references"] = e.references;
      c["base_of"] = BaseOf(entries, e);
      c["metrics"] = MetricsJson(e.metrics);
      if (!e.readable) c["error"] = e.error;
      if (verify) c["verified"] = status[i] == "ok";
      j["checkpoints"].push_back(c);
    }
    std::cout << j.dump(2) << "\n";
    return bad ? kExitCorrupt : kExitOk;
  }
  fmt::print("{:<8} {:<21} {:>12} {:>7} {:<8} {:<28} {}\n", "INDEX", "SAVED (UTC)", "BYTES",
             "RATIO", "VERIFY", "METRICS", "KEPT BY");
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    fmt::print("{:<8} {:<21} {:>12} {:>7.3f} {:<8} {:<28} {}\n", e.index, UtcTime(e.save_time),
               e.file_bytes, e.compression_ratio(), status[i], MetricsText(e.metrics),
               KeptByText(e.kept_by));
    if (!e.readable) fmt::print("         unreadable: {}\n", e.error);
    if (e.world_size > 0)
      fmt::print("         distributed: {} ({} parts)\n", ackpt::BaseName(e.path), e.parts.size());
    if (!e.references.empty())
      fmt::print("         references: {}\n", fmt::join(e.references, ", "));
    const std::vector<int64_t> base_of = BaseOf(entries, e);
    if (!base_of.empty()) fmt::print("         base of: {}\n", fmt::join(base_of, ", "));
  }
  fmt::print("{} checkpoints in {}; retention: {}\n", entries.size(), dir,
             have_policy ? ackpt::EncodeRetention(policy) : std::string("keep all"));
  return bad ? kExitCorrupt : kExitOk;
}

// ---- ls with two tiers (--local-dir) ----
//
// The local tier is one directory per rank (single process: one); the i-th
// local directory, after "{rank}" is expanded, is rank i's. A distributed
// checkpoint is complete locally when some local directory holds its
// manifest and every part it lists is in at least one local directory with
// the manifest's file_bytes: rank r's own directory, or the replica that
// rank (r + k) % N keeps under the same name. A single-file checkpoint is
// complete locally when a local directory holds it and its header reads.
// The persistent tier (save_dir) is complete as the one-tier listing says
// (listed and readable); only it has retention marks.

constexpr const char* kRankToken = "{rank}";
constexpr int kMaxLocalRanks = 1 << 16;

std::string ExpandRank(const std::string& pattern, int rank) {
  std::string out = pattern;
  const std::string r = std::to_string(rank);
  for (size_t at = out.find(kRankToken); at != std::string::npos;
       at = out.find(kRankToken, at + r.size()))
    out.replace(at, std::string(kRankToken).size(), r);
  return out;
}

int MaxWorldSize(const std::vector<ackpt::CheckpointEntry>& entries) {
  int w = 0;
  for (const auto& e : entries) w = std::max(w, e.world_size);
  return w;
}

// The local directories, by rank. A pattern with "{rank}" stands for ranks
// 0 .. n-1, n the largest of: the world size of any manifest in save_dir or
// in the directories expanded so far, and one past the last rank whose
// directory exists (so a deleted rank's directory still shows, as missing,
// whenever some manifest names that many ranks). A pattern must be the only
// --local-dir: otherwise ranks would be ambiguous.
std::vector<std::string> LocalDirs(const std::vector<std::string>& specs, int persistent_world,
                                   const std::string& prefix, const std::string& ext) {
  const bool pattern = std::any_of(specs.begin(), specs.end(), [](const std::string& s) {
    return s.find(kRankToken) != std::string::npos;
  });
  if (!pattern) return specs;
  if (specs.size() != 1)
    throw ackpt::Error::InvalidArgument(
        "ls: a --local-dir with {rank} must be the only --local-dir (its expansions are the "
        "ranks' directories, in rank order)");
  std::vector<std::string> dirs;
  int want = std::max(persistent_world, 1);
  for (;;) {
    while (static_cast<int>(dirs.size()) < want) {
      dirs.push_back(ExpandRank(specs[0], static_cast<int>(dirs.size())));
    }
    while (IsDirectory(ExpandRank(specs[0], static_cast<int>(dirs.size())))) {
      dirs.push_back(ExpandRank(specs[0], static_cast<int>(dirs.size())));
    }
    int world = 0;
    for (const auto& d : dirs) {
      world = std::max(
          world, MaxWorldSize(ackpt::ListCheckpointEntries(ackpt::Env::Default(), d, prefix, ext)));
    }
    if (world <= static_cast<int>(dirs.size())) return dirs;
    // A manifest's world size is bounded by its parts (ReadManifest), but a
    // hostile one could still ask for millions of directories.
    if (world > kMaxLocalRanks)
      throw ackpt::Error::InvalidArgument(
          fmt::format("ls: a manifest under '{}' names {} ranks; expanding {{rank}} stops at {}",
                      specs[0], world, kMaxLocalRanks));
    want = world;
  }
}

enum class TierStatus { kAbsent, kComplete, kIncomplete };

const char* TierStatusName(TierStatus s) {
  switch (s) {
    case TierStatus::kComplete:
      return "complete";
    case TierStatus::kIncomplete:
      return "incomplete";
    case TierStatus::kAbsent:
      break;
  }
  return "absent";
}

// A part of a distributed checkpoint as the local tier holds it.
struct LocalPart {
  int rank = 0;
  std::string file;
  uint64_t file_bytes = 0;
  std::vector<size_t> dirs;        // local directories holding it at the right size
  std::vector<size_t> wrong_size;  // local directories holding a file of another size
};

struct TierView {
  TierStatus status = TierStatus::kAbsent;
  ackpt::CheckpointEntry entry;  // the copy shown (for local: the manifest or file chosen)
  size_t dir = 0;                // local: the directory of `entry`
  std::string error;             // incomplete: why
  std::vector<LocalPart> parts;  // local, distributed
  std::string verify = "-";      // "-", "ok", "CORRUPT"
};

struct Row {
  int64_t index = 0;
  bool distributed = false;
  TierView persistent, local;
  const ackpt::CheckpointEntry& shown() const {
    return persistent.status != TierStatus::kAbsent ? persistent.entry : local.entry;
  }
};

// Where each part of the manifest `e` is found among the local directories.
std::vector<LocalPart> FindLocalParts(const ackpt::CheckpointEntry& e,
                                      const std::vector<std::string>& dirs) {
  ackpt::Env* env = ackpt::Env::Default();
  const ackpt::Manifest m = ackpt::ReadManifest(env, e.path);
  std::vector<LocalPart> parts;
  for (size_t r = 0; r < m.parts.size(); ++r) {
    LocalPart p;
    p.rank = static_cast<int>(r);
    p.file = m.parts[r].file;
    p.file_bytes = m.parts[r].file_bytes;
    for (size_t d = 0; d < dirs.size(); ++d) {
      const std::string path = ackpt::JoinPath(dirs[d], p.file);
      try {
        if (!env->FileExists(path)) continue;
        (env->GetFileSize(path) == p.file_bytes ? p.dirs : p.wrong_size).push_back(d);
      } catch (const ackpt::Error&) {
        // Removed meanwhile, or unreadable: not there.
      }
    }
    // The rank's own copy first, then the replicas.
    std::stable_partition(p.dirs.begin(), p.dirs.end(),
                          [&](size_t d) { return static_cast<int>(d) == p.rank; });
    parts.push_back(std::move(p));
  }
  return parts;
}

std::string MissingPartsText(const std::vector<LocalPart>& parts) {
  std::vector<std::string> missing;
  for (const auto& p : parts) {
    if (p.dirs.empty())
      missing.push_back(fmt::format("{} (rank {}{})", p.file, p.rank,
                                    p.wrong_size.empty() ? "" : ", wrong size"));
  }
  return fmt::format("{}", fmt::join(missing, ", "));
}

// The local view of checkpoint `index`: among its copies (one per local
// directory that lists it), the first complete one, else the first.
TierView LocalView(const std::vector<std::pair<size_t, ackpt::CheckpointEntry>>& copies,
                   const std::vector<std::string>& dirs) {
  TierView first;
  for (size_t c = 0; c < copies.size(); ++c) {
    TierView v;
    v.dir = copies[c].first;
    v.entry = copies[c].second;
    if (v.entry.world_size == 0) {
      v.status = v.entry.readable ? TierStatus::kComplete : TierStatus::kIncomplete;
      v.error = v.entry.error;
    } else {
      try {
        v.parts = FindLocalParts(v.entry, dirs);
        const bool all = std::all_of(v.parts.begin(), v.parts.end(),
                                     [](const LocalPart& p) { return !p.dirs.empty(); });
        v.status = all ? TierStatus::kComplete : TierStatus::kIncomplete;
        if (!all) v.error = "missing " + MissingPartsText(v.parts);
      } catch (const ackpt::Error& e) {
        v.status = TierStatus::kIncomplete;
        v.error = e.what();
      }
    }
    if (v.status == TierStatus::kComplete) return v;
    if (c == 0) first = std::move(v);
  }
  return first;
}

// "0:own+r1 1:r0 2:MISSING": per part, the local directories holding it
// (own: the rank's own directory; rN: rank N's directory, a replica).
std::string PartsText(const TierView& v) {
  std::vector<std::string> out;
  for (const auto& p : v.parts) {
    std::vector<std::string> where;
    for (size_t d : p.dirs)
      where.push_back(static_cast<int>(d) == p.rank ? std::string("own") : fmt::format("r{}", d));
    out.push_back(fmt::format(
        "{}:{}", p.rank,
        where.empty() ? std::string("MISSING") : fmt::format("{}", fmt::join(where, "+"))));
  }
  return fmt::format("{}", fmt::join(out, " "));
}

// Verifies the local copies: the file (an unreadable one is corrupt, as in
// save_dir), or each part in every local directory holding it. A missing part
// is not corrupt (the status says incomplete): "-" unless a present copy fails.
std::string VerifyLocal(const TierView& v, const std::vector<std::string>& dirs) {
  if (v.status == TierStatus::kAbsent) return "-";
  std::vector<std::string> files;
  if (v.entry.world_size == 0) {
    files.push_back(v.entry.path);
  } else {
    for (const auto& p : v.parts)
      for (size_t d : p.dirs) files.push_back(ackpt::JoinPath(dirs[d], p.file));
  }
  if (!VerifyFiles(files)) return "CORRUPT";
  return v.status == TierStatus::kComplete ? "ok" : "-";
}

int ListTwoTiers(const std::string& dir, const std::vector<std::string>& local_specs,
                 const std::string& prefix, const std::string& ext, bool as_json, bool verify) {
  ackpt::Env* env = ackpt::Env::Default();
  std::vector<ackpt::CheckpointEntry> persistent =
      ackpt::ListCheckpointEntries(env, dir, prefix, ext);
  ackpt::RetentionPolicy policy;
  const bool have_policy = PolicyInForce(persistent, &policy);
  ackpt::EvaluateRetention(&persistent, policy);
  const std::vector<std::string> dirs =
      LocalDirs(local_specs, MaxWorldSize(persistent), prefix, ext);

  // One row per checkpoint: (index, distributed or not), the union of both tiers.
  std::map<std::pair<int64_t, bool>, Row> rows;
  auto row = [&](const ackpt::CheckpointEntry& e) -> Row& {
    Row& r = rows[{e.index, e.world_size > 0}];
    r.index = e.index;
    r.distributed = e.world_size > 0;
    return r;
  };
  for (const auto& e : persistent) {
    Row& r = row(e);
    if (r.persistent.status != TierStatus::kAbsent) continue;  // listed once per index
    r.persistent.entry = e;
    r.persistent.status = e.readable ? TierStatus::kComplete : TierStatus::kIncomplete;
    r.persistent.error = e.error;
  }
  std::map<std::pair<int64_t, bool>, std::vector<std::pair<size_t, ackpt::CheckpointEntry>>>
      local_copies;
  std::vector<bool> dir_exists(dirs.size());
  for (size_t d = 0; d < dirs.size(); ++d) {
    dir_exists[d] = IsDirectory(dirs[d]);
    for (auto& e : ackpt::ListCheckpointEntries(env, dirs[d], prefix, ext)) {
      row(e);
      local_copies[{e.index, e.world_size > 0}].emplace_back(d, std::move(e));
    }
  }
  for (auto& [key, copies] : local_copies) rows[key].local = LocalView(copies, dirs);

  std::vector<Row> ordered;
  for (auto& kv : rows) ordered.push_back(std::move(kv.second));
  // Newest first by save time: generations are per directory, so they do not
  // order checkpoints across tiers; a promoted copy has its local twin's time.
  std::stable_sort(ordered.begin(), ordered.end(), [](const Row& a, const Row& b) {
    if (a.shown().save_time != b.shown().save_time)
      return a.shown().save_time > b.shown().save_time;
    return a.index > b.index;
  });

  int bad = 0;
  if (verify) {
    for (auto& r : ordered) {
      if (r.persistent.status != TierStatus::kAbsent)
        r.persistent.verify = VerifyFiles(EntryFiles(dir, r.persistent.entry)) ? "ok" : "CORRUPT";
      r.local.verify = VerifyLocal(r.local, dirs);
      if (r.persistent.verify == "CORRUPT" || r.local.verify == "CORRUPT") ++bad;
    }
  }
  auto verify_text = [](const Row& r) {
    if (r.persistent.verify == "CORRUPT" || r.local.verify == "CORRUPT")
      return std::string("CORRUPT");
    if (r.persistent.verify == "ok" || r.local.verify == "ok") return std::string("ok");
    return std::string("-");
  };
  size_t complete_persistent = 0, complete_local = 0;
  for (const auto& r : ordered) {
    complete_persistent += r.persistent.status == TierStatus::kComplete;
    complete_local += r.local.status == TierStatus::kComplete;
  }

  if (as_json) {
    nlohmann::ordered_json j;
    j["dir"] = dir;
    j["local_dirs"] = nlohmann::ordered_json::array();
    for (size_t d = 0; d < dirs.size(); ++d)
      j["local_dirs"].push_back({{"rank", d}, {"dir", dirs[d]}, {"exists", bool(dir_exists[d])}});
    j["retention"] = have_policy ? nlohmann::json::parse(ackpt::EncodeRetention(policy))
                                 : nlohmann::json::object();
    j["checkpoints"] = nlohmann::ordered_json::array();
    for (const auto& r : ordered) {
      const auto& e = r.shown();
      nlohmann::ordered_json c{
          {"index", r.index},           {"path", e.path},
          {"time", e.save_time},        {"time_utc", UtcTime(e.save_time)},
          {"file_bytes", e.file_bytes}, {"compression_ratio", e.compression_ratio()},
          {"readable", e.readable}};
      // Retention marks belong to save_dir: none for a checkpoint only local.
      c["kept_by"] = r.persistent.status != TierStatus::kAbsent
                         ? nlohmann::ordered_json(r.persistent.entry.kept_by)
                         : nlohmann::ordered_json(nullptr);
      if (e.world_size > 0) {
        c["world_size"] = e.world_size;
        c["parts"] = e.parts;
      }
      c["metrics"] = MetricsJson(e.metrics);
      if (!e.readable) c["error"] = e.error;
      // verified: true all checked copies are good, false one is corrupt,
      // null nothing could be checked (incomplete: missing parts).
      auto verified = [](const std::string& v) {
        return v == "-" ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(v == "ok");
      };
      if (verify) c["verified"] = verified(verify_text(r));

      nlohmann::ordered_json p{{"status", TierStatusName(r.persistent.status)}};
      if (r.persistent.status != TierStatus::kAbsent) {
        p["path"] = r.persistent.entry.path;
        p["kept_by"] = r.persistent.entry.kept_by;
        if (!r.persistent.error.empty()) p["error"] = r.persistent.error;
        if (verify) p["verified"] = verified(r.persistent.verify);
      }
      nlohmann::ordered_json l{{"status", TierStatusName(r.local.status)}};
      if (r.local.status != TierStatus::kAbsent) {
        l["path"] = r.local.entry.path;
        l["dir"] = dirs[r.local.dir];
        if (!r.local.error.empty()) l["error"] = r.local.error;
        if (r.distributed) {
          nlohmann::ordered_json parts = nlohmann::ordered_json::array();
          nlohmann::ordered_json missing = nlohmann::ordered_json::array();
          for (const auto& part : r.local.parts) {
            nlohmann::ordered_json where = nlohmann::ordered_json::array();
            for (size_t d : part.dirs) {
              where.push_back({{"rank", d},
                               {"dir", dirs[d]},
                               {"role", static_cast<int>(d) == part.rank ? "own" : "replica"}});
            }
            parts.push_back({{"rank", part.rank},
                             {"file", part.file},
                             {"file_bytes", part.file_bytes},
                             {"present", !part.dirs.empty()},
                             {"locations", std::move(where)}});
            if (part.dirs.empty()) missing.push_back(part.file);
          }
          l["parts"] = std::move(parts);
          l["missing"] = std::move(missing);
        }
        if (verify) l["verified"] = verified(r.local.verify);
      }
      c["tiers"] = {{"persistent", std::move(p)}, {"local", std::move(l)}};
      j["checkpoints"].push_back(c);
    }
    std::cout << j.dump(2) << "\n";
    return bad ? kExitCorrupt : kExitOk;
  }

  auto status_text = [](TierStatus s) {
    return s == TierStatus::kAbsent ? std::string("-") : std::string(TierStatusName(s));
  };
  fmt::print("{:<8} {:<21} {:>12} {:>7} {:<8} {:<10} {:<10} {:<28} {}\n", "INDEX", "SAVED (UTC)",
             "BYTES", "RATIO", "VERIFY", "PERSISTENT", "LOCAL", "METRICS", "KEPT BY");
  for (const auto& r : ordered) {
    const auto& e = r.shown();
    fmt::print("{:<8} {:<21} {:>12} {:>7.3f} {:<8} {:<10} {:<10} {:<28} {}\n", r.index,
               UtcTime(e.save_time), e.file_bytes, e.compression_ratio(), verify_text(r),
               status_text(r.persistent.status), status_text(r.local.status),
               MetricsText(e.metrics),
               r.persistent.status != TierStatus::kAbsent ? KeptByText(r.persistent.entry.kept_by)
                                                          : std::string("- (local only)"));
    if (r.persistent.status == TierStatus::kIncomplete)
      fmt::print("         persistent unreadable: {}\n", r.persistent.error);
    if (r.distributed)
      fmt::print("         distributed: {} ({} parts)\n", ackpt::BaseName(e.path), e.parts.size());
    if (r.local.status != TierStatus::kAbsent && r.distributed && !r.local.parts.empty())
      fmt::print("         local parts: {}\n", PartsText(r.local));
    if (r.local.status == TierStatus::kIncomplete)
      fmt::print("         local {}: {}\n", r.distributed ? "incomplete" : "unreadable",
                 r.local.error);
    if (verify && (r.persistent.verify == "CORRUPT" || r.local.verify == "CORRUPT")) {
      fmt::print("         corrupt in: {}{}\n",
                 r.persistent.verify == "CORRUPT" ? "persistent " : "",
                 r.local.verify == "CORRUPT" ? "local" : "");
    }
  }
  std::vector<std::string> dir_text;
  for (size_t d = 0; d < dirs.size(); ++d)
    dir_text.push_back(fmt::format("r{}={}{}", d, dirs[d], dir_exists[d] ? "" : " (missing)"));
  fmt::print("{} checkpoints: {} complete in {} (persistent), {} complete in the local tier ({})\n",
             ordered.size(), complete_persistent, dir, complete_local, fmt::join(dir_text, ", "));
  fmt::print("retention (persistent): {}\n",
             have_policy ? ackpt::EncodeRetention(policy) : std::string("keep all"));
  return bad ? kExitCorrupt : kExitOk;
}

// ---- convert ----

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int Convert(const std::string& in, const std::string& out, int level,
            const ackpt_cli::ConvertOptions& options, bool quiet) {
  ackpt_cli::PyRef root;
  {
    struct stat st;
    const uint64_t in_bytes = ::stat(in.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
    ProgressBar bar(ShowProgress(quiet), "read " + BaseName(in), in_bytes);
    root = ackpt_cli::LoadTorchFile(in, [&](uint64_t done, uint64_t) { bar.Set(done); });
  }
  std::vector<std::string> dropped;
  ackpt::StateDict state = ackpt_cli::StateDictFromPickle(*root, options, &dropped);
  root.reset();  // the StateDict shares the tensors; drop the rest

  ackpt::WriteOptions w;
  w.compression = EndsWith(out, ".zst") ? ackpt::Compression::kZstd : ackpt::Compression::kNone;
  w.zstd_level = level;
  w.metadata["converted_from"] = BaseName(in);
  ackpt::WriteResult result;
  {
    // WriteStateDict has no progress hook: count the bytes this process
    // writes. Plain files are about tensor_bytes long; compressed ones are
    // smaller by an unknown ratio, so their bar shows bytes and rate only.
    ProgressBar bar(ShowProgress(quiet), "write " + BaseName(out),
                    w.compression == ackpt::Compression::kNone ? state.tensor_bytes() : 0);
    bar.TrackProcessIo();
    result = ackpt::WriteStateDict(state, out, w);
  }
  fmt::print("wrote {}: {} tensors, {} of tensor data, {} on disk{}\n", out, state.num_tensors(),
             HumanBytes(static_cast<double>(result.tensor_bytes)),
             HumanBytes(static_cast<double>(result.file_bytes)),
             w.compression == ackpt::Compression::kZstd
                 ? fmt::format(" (zstd level {}, ratio {:.2f})", level,
                               result.file_bytes ? static_cast<double>(result.logical_bytes) /
                                                       static_cast<double>(result.file_bytes)
                                                 : 1.0)
                 : std::string());
  if (!dropped.empty()) {
    fmt::print("dropped {} None value{} (--none skip): {}\n", dropped.size(),
               dropped.size() == 1 ? "" : "s", fmt::join(dropped, ", "));
  }
  return kExitOk;
}

// ---- consolidate ----

int Consolidate(const std::string& manifest, const std::string& out, int level, bool quiet) {
  ackpt::ConsolidateOptions o;
  o.zstd_level = level;
  {
    // Bytes of tensor data assembled (each sharded tensor twice when it does
    // not fit the buffer: once for its checksum, once to write it).
    ProgressBar bar(ShowProgress(quiet), "consolidate " + BaseName(manifest), 0);
    bool started = false;
    o.progress = [&](uint64_t done, uint64_t total) {
      if (!started) {
        bar.Phase("consolidate " + BaseName(manifest), total);
        started = true;
      }
      bar.Set(done);
    };
    ackpt::ConsolidateCheckpoint(manifest, out, o);
  }
  auto reader = ackpt::CheckpointReader::Open(out);
  const ackpt::FileInfo& info = reader->info();
  uint64_t tensor_bytes = 0;
  for (const auto& t : info.tensors) tensor_bytes += t.nbytes();
  fmt::print("wrote {}: {} tensors, {} of tensor data, {} on disk{}\n", out, info.tensors.size(),
             HumanBytes(static_cast<double>(tensor_bytes)),
             HumanBytes(static_cast<double>(info.file_bytes)),
             info.compressed
                 ? fmt::format(" (zstd level {}, ratio {:.2f})", level, info.compression_ratio())
                 : std::string());
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ackpt: look at, check and convert ackpt checkpoint files", "ackpt"};
  app.footer(
      "exit status: 0 ok, 1 corrupt or unreadable, 2 usage error.\n"
      "verify, export, convert and consolidate draw a progress bar on stderr when it is a "
      "terminal.");
  app.require_subcommand(1);

  std::string file, out, dir, prefix = "model", ext = "safetensors", none = "skip";
  std::vector<std::string> paths, local_dirs;
  bool as_json = false, verify = false, quiet = false;
  int level = 1;

  CLI::App* inspect = app.add_subcommand(
      "inspect", "tensors, metadata, compression ratio; of a manifest: global tensors and boxes");
  inspect
      ->add_option("FILE", file,
                   "checkpoint file (plain or .zst), or a distributed checkpoint's "
                   "P_N.manifest.json")
      ->required();
  inspect->add_flag("--json", as_json, "print JSON");

  CLI::App* verify_cmd =
      app.add_subcommand("verify", "check every checksum (a directory: its checkpoints)");
  verify_cmd->add_option("PATH", paths, "checkpoint files or directories")->required();
  verify_cmd->add_flag("-q,--quiet", quiet, "no progress bar");

  CLI::App* export_cmd = app.add_subcommand("export", "write the plain safetensors stream");
  export_cmd->add_option("FILE", file, "checkpoint file")->required();
  export_cmd->add_option("-o,--output", out, "output file (written atomically)")->required();
  export_cmd->add_flag("-q,--quiet", quiet, "no progress bar");

  CLI::App* ls = app.add_subcommand(
      "ls",
      "checkpoints with index, time, size, ratio, metrics, and the retention rule keeping each");
  ls->add_option("DIR", dir, "checkpoint directory")->required()->check(CLI::ExistingDirectory);
  ls->add_flag("--json", as_json, "print JSON");
  ls->add_flag("--verify", verify, "also check every checksum");
  ls->add_option("--prefix", prefix, "file name prefix")->capture_default_str();
  ls->add_option("--ext", ext, "file extension, without the dot")->capture_default_str();
  ls->add_option("--local-dir", local_dirs,
                 "a rank's local-tier directory (two tiers; repeat in rank order, or once with "
                 "{rank}, expanded to rank 0 .. the world size of the manifests or the last "
                 "existing directory); adds the PERSISTENT and LOCAL columns")
      ->allow_extra_args(false);  // one directory per --local-dir: DIR is never swallowed

  CLI::App* convert = app.add_subcommand(
      "convert",
      "turn a torch.save()d state dict into an ackpt checkpoint (compressed if OUT ends in .zst)");
  convert->add_option("IN", file, "file written by Python torch.save (default zip format)")
      ->required();
  convert->add_option("-o,--output", out, "OUT.safetensors or OUT.safetensors.zst")->required();
  convert->add_option("--level", level, "zstd level for a .zst output")
      ->capture_default_str()
      ->check(CLI::Range(-7, 22));
  convert
      ->add_option("--none", none,
                   "None values in dicts: skip (drop, and list them) or error; None in a "
                   "list is always an error")
      ->capture_default_str()
      ->check(CLI::IsMember({"skip", "error"}));
  convert->add_flag("-q,--quiet", quiet, "no progress bar");

  CLI::App* consolidate = app.add_subcommand(
      "consolidate",
      "one safetensors file of a distributed checkpoint's global tensors: sharded tensors "
      "assembled from every rank's boxes, replicated tensors (rank-local state is omitted); "
      "compressed if OUT ends in .zst");
  consolidate->add_option("MANIFEST", file, "the checkpoint's P_N.manifest.json")->required();
  consolidate
      ->add_option("-o,--output", out,
                   "OUT.safetensors or OUT.safetensors.zst (written "
                   "atomically)")
      ->required();
  consolidate->add_option("--level", level, "zstd level for a .zst output")
      ->capture_default_str()
      ->check(CLI::Range(-7, 22));
  consolidate->add_flag("-q,--quiet", quiet, "no progress bar");

  if (argc < 2) {
    std::cerr << app.help();
    return kExitUsage;
  }
  // CLI11 would only say "a subcommand is required": name the unknown one.
  const std::string first = argv[1];
  const auto subcommands = app.get_subcommands([](CLI::App*) { return true; });
  if (first.rfind("-", 0) != 0 &&
      std::none_of(subcommands.begin(), subcommands.end(),
                   [&](CLI::App* sub) { return sub->check_name(first); })) {
    std::cerr << "ackpt: unknown command '" << first << "'\n" << app.help();
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Help (exit 0) goes to stdout; every parse error is a usage error.
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }

  try {
    if (*inspect) return Inspect(file, as_json);
    if (*verify_cmd) return Verify(paths, quiet);
    if (*export_cmd) return Export(file, out, quiet);
    if (*ls) {
      return local_dirs.empty() ? List(dir, prefix, ext, as_json, verify)
                                : ListTwoTiers(dir, local_dirs, prefix, ext, as_json, verify);
    }
    if (*consolidate) return Consolidate(file, out, level, quiet);
    if (*convert) {
      ackpt_cli::ConvertOptions options;
      options.none = none;
      return Convert(file, out, level, options, quiet);
    }
  } catch (const ackpt::Error& e) {
    std::cerr << e.what() << "\n";
    return e.code() == ackpt::Error::Code::kInvalidArgument ? kExitUsage : kExitCorrupt;
  } catch (const std::exception& e) {
    std::cerr << "ackpt: " << e.what() << "\n";
    return kExitCorrupt;
  }
  return kExitUsage;  // unreachable: require_subcommand(1)
}
