#include "checkpointer/checkpoint_dir.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <set>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "ackpt/format.h"
#include "format/header.h"
#include "format/open_files.h"
#include "io/atomic_file.h"
#include "io/process.h"

namespace ackpt {

namespace {

std::string HostName() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown host";
  return buf;
}

// Fills the fields that come from metadata: one parser for scans and commits.
void FillFromMetadata(const std::map<std::string, std::string>& metadata, CheckpointEntry* e) {
  e->save_time = ParseSaveTime(metadata);
  e->metrics = ParseMetrics(metadata);
  e->parent = ParseIndexEntry(metadata, kMetaParent, -1);
  e->generation = static_cast<uint64_t>(ParseIndexEntry(metadata, kMetaGeneration, 0));
  e->references = format::ReferencedFiles(metadata, e->path);
}

void ReplaceEntry(std::vector<CheckpointEntry>* list, CheckpointEntry e) {
  auto it = std::find_if(list->begin(), list->end(),
                         [&](const CheckpointEntry& x) { return x.index == e.index; });
  if (it != list->end()) {
    *it = std::move(e);
  } else {
    list->push_back(std::move(e));
  }
}

}  // namespace

CheckpointEntry ReadCheckpointEntry(Env* env, const std::string& path, int64_t index) {
  CheckpointEntry e;
  e.index = index;
  e.path = path;
  try {
    ReadOptions ro;
    ro.threads = 1;
    auto reader = CheckpointReader::Open(path, ro, env);
    const FileInfo& info = reader->info();
    e.compressed = info.compressed;
    e.file_bytes = info.file_bytes;
    e.logical_bytes = info.logical_bytes;
    FillFromMetadata(info.metadata, &e);
  } catch (const Error& err) {
    if (err.code() == Error::Code::kNotFound) throw;
    e.readable = false;
    e.error = err.message();
  }
  if (e.save_time == 0) {
    try {
      e.save_time = env->GetFileMTime(path);
      if (e.file_bytes == 0) e.file_bytes = env->GetFileSize(path);
    } catch (const Error&) {
    }
  }
  return e;
}

std::shared_ptr<CheckpointDir> CheckpointDir::Open(CheckpointDirOptions options) {
  if (!options.env) throw Error::InvalidArgument("CheckpointDir needs an Env");
  std::shared_ptr<CheckpointDir> d(new CheckpointDir(std::move(options)));
  if (d->o_.writer) {
    d->o_.env->CreateDirs(d->o_.dir);
    const std::string owner = "pid " + std::to_string(::getpid()) + " on " + HostName();
    try {
      d->lock_ = d->o_.env->LockFile(JoinPath(d->o_.dir, kLockFileName), owner);
    } catch (const Error& e) {
      if (e.code() != Error::Code::kBusy) throw;
      throw Error::Busy("checkpoint directory '" + d->o_.dir +
                        "' is owned by another writing checkpointer: " + e.message() +
                        ". Only one writer may own a directory; to only read it (evaluation, "
                        "inspection) set DefaultCheckpointerArguments.checkpoint = false");
    }
    d->temp_files_removed_ = d->RemoveStaleTempFiles();
  }
  d->Scan();
  return d;
}

CheckpointDir::CheckpointDir(CheckpointDirOptions options) : o_(std::move(options)) {
  log_ = o_.logger ? o_.logger : spdlog::default_logger();
}

CheckpointDir::~CheckpointDir() = default;

std::string CheckpointDir::PathFor(FileKind kind, int64_t index, bool compressed) const {
  const std::string prefix = kind == FileKind::kModel ? ModelFilePrefix(o_.prefix) : o_.prefix;
  return JoinPath(o_.dir, CheckpointFileName(prefix, index, compressed, o_.ext));
}

std::string CheckpointDir::ManifestPath(int64_t index) const {
  return JoinPath(o_.dir, ManifestFileName(o_.prefix, index));
}

bool CheckpointDir::IsOwnName(const std::string& name) const {
  return ParseCheckpointIndex(name, o_.prefix, o_.ext).has_value() ||
         ParseCheckpointIndex(name, ModelFilePrefix(o_.prefix), o_.ext).has_value() ||
         ParsePartFileName(name, o_.prefix, o_.ext).has_value() ||
         ParseManifestIndex(name, o_.prefix).has_value();
}

size_t CheckpointDir::RemoveStaleTempFiles() {
  size_t removed = 0;
  const int64_t self = ::getpid();
  for (const auto& name : GetChildrenIfExists(o_.env.get(), o_.dir)) {
    auto target = TempFileTarget(name);
    if (!target || !IsOwnName(*target)) continue;
    // The lock makes this process the directory's only writer, so a temp
    // file is stale unless its writer still runs (a process that does not
    // take the lock, such as WriteStateDict called directly).
    const auto pid = TempFileWriterPid(name);
    if (pid && *pid != self && ProcessExists(*pid)) {
      log_->info("leaving temp file {} of running process {}", name, *pid);
      continue;
    }
    try {
      o_.env->RemoveFile(JoinPath(o_.dir, name));
      ++removed;
    } catch (const Error& e) {
      log_->warn("could not remove stale temp file: {}", e.message());
    }
  }
  if (removed) log_->info("removed {} stale temp files from {}", removed, o_.dir);
  return removed;
}

void CheckpointDir::Scan() {
  std::vector<CheckpointEntry> checkpoints, models, manifests;
  const std::string model_prefix = ModelFilePrefix(o_.prefix);
  for (const auto& name : GetChildrenIfExists(o_.env.get(), o_.dir)) {
    const std::string path = JoinPath(o_.dir, name);
    if (auto index = ParseManifestIndex(name, o_.prefix)) {
      try {
        CheckpointEntry e = ManifestCatalogEntry(ReadManifest(o_.env.get(), path), path);
        e.index = *index;
        manifests.push_back(std::move(e));
      } catch (const Error& e) {
        if (e.code() != Error::Code::kNotFound)
          log_->warn("ignoring unreadable manifest {}: {}", path, e.message());
      }
      continue;
    }
    const bool is_model = !ParseCheckpointIndex(name, o_.prefix, o_.ext).has_value();
    auto index = is_model ? ParseCheckpointIndex(name, model_prefix, o_.ext)
                          : ParseCheckpointIndex(name, o_.prefix, o_.ext);
    if (!index) continue;
    try {
      CheckpointEntry e = ReadCheckpointEntry(o_.env.get(), path, *index);
      (is_model ? models : checkpoints).push_back(std::move(e));
    } catch (const Error&) {
      // Deleted meanwhile (kNotFound): not there.
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  checkpoints_ = std::move(checkpoints);
  models_ = std::move(models);
  manifests_ = std::move(manifests);
  for (const auto* list : {&checkpoints_, &manifests_}) {
    for (const auto& e : *list) max_generation_ = std::max(max_generation_, e.generation);
  }
}

void CheckpointDir::Refresh() {
  if (!o_.writer) Scan();
}

std::map<std::string, std::string> CheckpointDir::Metadata(
    FileKind kind, int64_t index, const std::map<std::string, double>& metrics,
    const RetentionPolicy& policy) const {
  auto m = BaseMetadata(kind, index, metrics);
  if (policy.any_rule() || policy.model_keep_last > 0) m[kMetaRetention] = EncodeRetention(policy);
  return m;
}

CheckpointDir::Lineage CheckpointDir::NextLineage() {
  std::lock_guard<std::mutex> lock(mu_);
  return Lineage{run_head_, ++max_generation_};
}

void CheckpointDir::StampLineage(std::map<std::string, std::string>* metadata) {
  const Lineage l = NextLineage();
  if (l.parent >= 0) (*metadata)[kMetaParent] = std::to_string(l.parent);
  (*metadata)[kMetaGeneration] = std::to_string(l.generation);
}

void CheckpointDir::RecordCommit(FileKind kind, int64_t index, const std::string& path,
                                 uint64_t file_bytes, uint64_t logical_bytes, bool compressed,
                                 const std::map<std::string, std::string>& metadata) {
  CheckpointEntry e;
  e.index = index;
  e.path = path;
  e.compressed = compressed;
  e.file_bytes = file_bytes;
  e.logical_bytes = logical_bytes;
  FillFromMetadata(metadata, &e);
  std::lock_guard<std::mutex> lock(mu_);
  if (kind == FileKind::kModel) {
    ReplaceEntry(&models_, std::move(e));
    return;
  }
  // Another file of the same index (the other compression) is replaced in
  // the catalog; on disk it stays until retention or the user removes it.
  max_generation_ = std::max(max_generation_, e.generation);
  run_head_ = index;
  auto other =
      std::find_if(checkpoints_.begin(), checkpoints_.end(),
                   [&](const CheckpointEntry& x) { return x.index == index && x.path != path; });
  if (other != checkpoints_.end()) {
    log_->warn("{} replaces {} in the catalog (same index)", path, other->path);
    checkpoints_.erase(other);
  }
  ReplaceEntry(&checkpoints_, std::move(e));
}

void CheckpointDir::RecordManifest(const Manifest& manifest, const std::string& path) {
  CheckpointEntry e = ManifestCatalogEntry(manifest, path);
  std::lock_guard<std::mutex> lock(mu_);
  max_generation_ = std::max(max_generation_, e.generation);
  run_head_ = e.index;
  ReplaceEntry(&manifests_, std::move(e));
}

void CheckpointDir::RecordResume(int64_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  run_head_ = index;
}

uint64_t CheckpointDir::max_generation() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_generation_;
}

void CheckpointDir::RaiseGeneration(uint64_t at_least) {
  std::lock_guard<std::mutex> lock(mu_);
  max_generation_ = std::max(max_generation_, at_least);
}

std::vector<CheckpointEntry> CheckpointDir::CopyOf(const std::vector<CheckpointEntry>& list) const {
  std::lock_guard<std::mutex> lock(mu_);
  return list;
}

std::vector<CheckpointEntry> CheckpointDir::Checkpoints() const {
  std::vector<CheckpointEntry> out = CopyOf(checkpoints_);
  SortNewestFirst(&out);
  return out;
}

std::vector<CheckpointEntry> CheckpointDir::Manifests() const {
  std::vector<CheckpointEntry> out = CopyOf(manifests_);
  SortNewestFirst(&out);
  return out;
}

std::vector<CheckpointEntry> CheckpointDir::Models() const {
  std::vector<CheckpointEntry> out = CopyOf(models_);
  std::sort(out.begin(), out.end(),
            [](const CheckpointEntry& a, const CheckpointEntry& b) { return a.index > b.index; });
  return out;
}

uint64_t CheckpointDir::files_deleted() const {
  std::lock_guard<std::mutex> lock(mu_);
  return files_deleted_;
}

void CheckpointDir::Delete(const CheckpointEntry& entry, std::vector<CheckpointEntry>* list) {
  if (!o_.writer) throw Error::InvalidArgument("a reader of '" + o_.dir + "' deletes nothing");
  std::vector<std::string> files{entry.path};
  for (const auto& p : entry.parts) files.push_back(JoinPath(o_.dir, p));
  for (const auto& f : files) {
    if (IsOpenForReading(f)) {
      log_->info("retention: keeping {} while {} is being read", entry.path, f);
      return;
    }
  }
  try {
    // A manifest goes first (and durably): the checkpoint stops existing
    // before its parts are removed, so a crash in between leaves only
    // orphan parts, which RemoveOrphanParts collects.
    o_.env->RemoveFile(entry.path);
    if (!entry.parts.empty()) o_.env->SyncDir(o_.dir);
    log_->info("retention: deleted {}", entry.path);
  } catch (const Error& e) {
    if (e.code() != Error::Code::kNotFound) {
      log_->error("retention: {}", e.message());
      return;
    }
  }
  for (size_t i = 1; i < files.size(); ++i) {
    try {
      o_.env->RemoveFile(files[i]);
    } catch (const Error& e) {
      if (e.code() != Error::Code::kNotFound) log_->warn("retention: {}", e.message());
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  ++files_deleted_;
  list->erase(std::remove_if(list->begin(), list->end(),
                             [&](const CheckpointEntry& x) { return x.path == entry.path; }),
              list->end());
}

size_t CheckpointDir::ApplyRetention(const RetentionPolicy& policy, FileKind kind) {
  if (!policy.any_rule()) return 0;
  const bool parts = kind == FileKind::kPart;
  std::vector<CheckpointEntry> entries = parts ? Manifests() : Checkpoints();
  size_t deleted = 0;
  for (const auto& doomed : EvaluateRetention(&entries, policy)) {
    const uint64_t before = files_deleted();
    Delete(doomed, parts ? &manifests_ : &checkpoints_);
    deleted += files_deleted() - before;
  }
  return deleted;
}

void CheckpointDir::RemoveOrphanParts(const std::function<bool(int64_t)>& may_remove) {
  if (!o_.writer) throw Error::InvalidArgument("a reader of '" + o_.dir + "' deletes nothing");
  for (const auto& name : GetChildrenIfExists(o_.env.get(), o_.dir)) {
    auto part = ParsePartFileName(name, o_.prefix, o_.ext);
    if (!part || !may_remove(part->first)) continue;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // A part is committed only if its index's manifest lists it: a part of
      // an index saved again by fewer ranks is not, and goes too.
      const bool committed =
          std::any_of(manifests_.begin(), manifests_.end(), [&](const CheckpointEntry& e) {
            return e.index == part->first &&
                   std::find(e.parts.begin(), e.parts.end(), name) != e.parts.end();
          });
      if (committed) continue;
    }
    try {
      o_.env->RemoveFile(JoinPath(o_.dir, name));
      log_->info("removed part {} of a checkpoint that never committed", name);
    } catch (const Error& e) {
      if (e.code() != Error::Code::kNotFound) log_->warn("{}", e.message());
    }
  }
}

size_t CheckpointDir::ApplyModelRetention(int64_t keep_last) {
  if (keep_last <= 0) return 0;
  const std::vector<CheckpointEntry> models = Models();
  size_t deleted = 0;
  for (size_t i = static_cast<size_t>(keep_last); i < models.size(); ++i) {
    const uint64_t before = files_deleted();
    Delete(models[i], &models_);
    deleted += files_deleted() - before;
  }
  return deleted;
}

size_t CheckpointDir::DeleteOwnFiles() {
  if (!o_.writer) throw Error::InvalidArgument("a reader of '" + o_.dir + "' deletes nothing");
  size_t removed = 0;
  for (const auto& name : GetChildrenIfExists(o_.env.get(), o_.dir)) {
    auto target = TempFileTarget(name);
    if (!IsOwnName(name) && !(target && IsOwnName(*target))) continue;
    try {
      o_.env->RemoveFile(JoinPath(o_.dir, name));
      ++removed;
    } catch (const Error& e) {
      if (e.code() != Error::Code::kNotFound) throw;
    }
  }
  if (removed) log_->info("delete_existing_checkpoints removed {} files from {}", removed, o_.dir);
  std::lock_guard<std::mutex> lock(mu_);
  checkpoints_.clear();
  models_.clear();
  manifests_.clear();
  return removed;
}

std::vector<CheckpointEntry> ListCheckpointEntries(Env* env, const std::string& dir,
                                                   const std::string& prefix,
                                                   const std::string& ext) {
  CheckpointDirOptions o;
  o.dir = dir;
  o.prefix = prefix;
  o.ext = ext;
  o.writer = false;
  o.env = std::shared_ptr<Env>(env, [](Env*) {});  // borrowed
  auto d = CheckpointDir::Open(std::move(o));
  std::vector<CheckpointEntry> out = d->Checkpoints();
  for (auto& e : d->Manifests()) out.push_back(std::move(e));
  SortNewestFirst(&out);
  return out;
}

}  // namespace ackpt
