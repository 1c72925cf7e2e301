// DefaultCheckpointer: pymarlin's checkpointing policy on ackpt's engine.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "checkpointer/metadata_keys.h"
#include "engine/engine.h"

namespace ackpt {

namespace {

constexpr const char* kGroupModule = "module_interface_state";
constexpr const char* kGroupTrainer = "trainer_state";
constexpr const char* kGroupBackend = "trainer_backend_state";

std::shared_ptr<spdlog::logger> GetLogger(const DefaultCheckpointerArguments& args) {
  std::string level = args.log_level;
  std::transform(level.begin(), level.end(), level.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  if (level == "warning") level = "warn";
  if (level == "critical" || level == "fatal") level = "critical";
  static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
  if (std::find(std::begin(kLevels), std::end(kLevels), level) == std::end(kLevels)) {
    throw Error::InvalidArgument("log_level '" + args.log_level +
                                 "' is not one of TRACE, DEBUG, INFO, WARN, ERROR, CRITICAL, OFF");
  }
  std::shared_ptr<spdlog::logger> logger = args.logger;
  if (!logger) {
    logger = spdlog::get("ackpt");
    if (!logger) {
      try {
        logger = spdlog::stderr_color_mt("ackpt");
      } catch (const spdlog::spdlog_ex&) {
        logger = spdlog::get("ackpt");  // another thread created it first
      }
    }
  }
  logger->set_level(spdlog::level::from_str(level));
  return logger;
}

void Validate(const DefaultCheckpointerArguments& a) {
  if (a.period <= 0) {
    throw Error::InvalidArgument("DefaultCheckpointerArguments.period must be >= 1, got " +
                                 std::to_string(a.period));
  }
  if (a.file_prefix.empty() || a.file_prefix.find('/') != std::string::npos) {
    throw Error::InvalidArgument("DefaultCheckpointerArguments.file_prefix '" + a.file_prefix +
                                 "' must be non-empty and contain no '/'");
  }
  if (a.file_ext.empty() || a.file_ext.find('/') != std::string::npos || a.file_ext[0] == '.') {
    throw Error::InvalidArgument("DefaultCheckpointerArguments.file_ext '" + a.file_ext +
                                 "' must be non-empty, contain no '/' and not start with '.'");
  }
  if (a.checkpoint && a.save_dir.empty()) {
    throw Error::InvalidArgument("DefaultCheckpointerArguments.save_dir is empty");
  }
  if (a.writer_threads < 0 || a.snapshot_threads < 0) {
    throw Error::InvalidArgument(
        "DefaultCheckpointerArguments.writer_threads/snapshot_threads must be >= 0");
  }
  const RetentionPolicy& r = a.retention;
  if (r.keep_last < 0 || r.keep_every < 0 || r.keep_best < 0 || r.model_keep_last < 0 ||
      !(r.keep_time_interval_seconds >= 0)) {
    throw Error::InvalidArgument(
        "DefaultCheckpointerArguments.retention: counts and intervals must be >= 0");
  }
  if (r.keep_best > 0 && r.best_metric.empty()) {
    throw Error::InvalidArgument(
        "DefaultCheckpointerArguments.retention.keep_best needs best_metric");
  }
  if (!(a.drain_timeout_seconds >= 0)) {
    throw Error::InvalidArgument("DefaultCheckpointerArguments.drain_timeout_seconds must be >= 0");
  }
}

// True for file names ackpt writes for this prefix/ext: checkpoints and model files.
bool IsOwnFinalName(const std::string& name, const std::string& prefix, const std::string& ext) {
  return ParseCheckpointIndex(name, prefix, ext).has_value() ||
         ParseCheckpointIndex(name, ModelFilePrefix(prefix), ext).has_value();
}

// Removes ackpt's own files (checkpoints, model files, temp files) from dir.
void DeleteOwnFiles(Env* env, const std::string& dir, const std::string& prefix,
                    const std::string& ext, spdlog::logger& log) {
  const std::vector<std::string> names = GetChildrenIfExists(env, dir);
  size_t removed = 0;
  for (const auto& name : names) {
    auto target = TempFileTarget(name);
    const bool ours =
        IsOwnFinalName(name, prefix, ext) || (target && IsOwnFinalName(*target, prefix, ext));
    if (!ours) continue;
    env->RemoveFile(JoinPath(dir, name));
    ++removed;
  }
  if (removed) log.info("delete_existing_checkpoints removed {} files from {}", removed, dir);
}

// Startup hygiene: temp files a crash left behind, by exact pattern only.
size_t RemoveStaleTempFiles(Env* env, const std::string& dir, const std::string& prefix,
                            const std::string& ext, spdlog::logger& log) {
  const std::vector<std::string> names = GetChildrenIfExists(env, dir);
  size_t removed = 0;
  for (const auto& name : names) {
    auto target = TempFileTarget(name);
    if (!target || !IsOwnFinalName(*target, prefix, ext)) continue;
    try {
      env->RemoveFile(JoinPath(dir, name));
      ++removed;
    } catch (const Error& e) {
      log.warn("could not remove stale temp file: {}", e.message());
    }
  }
  if (removed) log.info("removed {} stale temp files from {}", removed, dir);
  return removed;
}

std::string FormatTime(double t) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6f", t);
  return buf;
}

double WallNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

class DefaultCheckpointer::Impl {
 public:
  explicit Impl(DefaultCheckpointerArguments a) : args(std::move(a)) {
    Validate(args);
    env = args.env ? args.env : Env::Default();
    logger = GetLogger(args);
    if (args.checkpoint) {
      env->CreateDirs(args.save_dir);
      const bool separate_model_dir =
          !args.model_state_save_dir.empty() && args.model_state_save_dir != args.save_dir;
      if (args.delete_existing_checkpoints) {
        DeleteOwnFiles(env, args.save_dir, args.file_prefix, args.file_ext, *logger);
        if (separate_model_dir)
          DeleteOwnFiles(env, args.model_state_save_dir, args.file_prefix, args.file_ext, *logger);
      }
      temp_files_removed +=
          RemoveStaleTempFiles(env, args.save_dir, args.file_prefix, args.file_ext, *logger);
      if (separate_model_dir) {
        temp_files_removed += RemoveStaleTempFiles(env, args.model_state_save_dir, args.file_prefix,
                                                   args.file_ext, *logger);
      }
    }
    engine::EngineOptions o;
    o.write.compression = args.compression;
    o.write.zstd_level = args.zstd_level;
    o.write.chunk_size = args.chunk_size;
    o.write.threads = args.writer_threads;
    o.write.fsync = args.fsync;
    o.write.metadata = args.metadata;
    o.writer_threads = args.writer_threads;
    o.snapshot_threads = args.snapshot_threads;
    o.staging_budget_bytes = args.staging_budget_bytes;
    o.pin_host_memory = args.pin_host_memory;
    o.backpressure = args.backpressure;
    o.drain_timeout_seconds = args.drain_timeout_seconds;
    o.env = env;
    o.logger = logger;
    o.on_save = args.on_save;
    engine = std::make_unique<engine::Engine>(std::move(o));
  }

  bool compressed() const { return args.compression == Compression::kZstd; }

  std::map<std::string, std::string> Metadata(const char* kind, int64_t index,
                                              const std::map<std::string, double>& metrics) const {
    std::map<std::string, std::string> m{
        {kMetaKind, kind}, {kMetaIndex, std::to_string(index)}, {kMetaTime, FormatTime(WallNow())}};
    if (!metrics.empty()) m[kMetaMetrics] = EncodeMetrics(metrics);
    if (args.retention.any_rule() || args.retention.model_keep_last > 0) {
      m[kMetaRetention] = EncodeRetention(args.retention);
    }
    return m;
  }

  // Runs on the writer pool after a checkpoint is durable.
  void ApplyRetention() {
    if (!args.retention.any_rule()) return;
    std::vector<CheckpointEntry> entries =
        ListCheckpointEntries(env, args.save_dir, args.file_prefix, args.file_ext);
    for (const auto& doomed : EvaluateRetention(&entries, args.retention)) Delete(doomed.path);
  }

  void ApplyModelRetention() {
    if (args.retention.model_keep_last <= 0) return;
    const auto models = DefaultCheckpointer::ListCheckpoints(
        env, args.model_state_save_dir, ModelFilePrefix(args.file_prefix), args.file_ext);
    for (size_t i = static_cast<size_t>(args.retention.model_keep_last); i < models.size(); ++i) {
      Delete(models[i].second);
    }
  }

  void Delete(const std::string& path) {
    if (IsOpenForReading(path)) {
      logger->info("retention: keeping {} while it is being read", path);
      return;
    }
    try {
      env->RemoveFile(path);
      ++files_deleted;
      logger->info("retention: deleted {}", path);
    } catch (const Error& e) {
      if (e.code() != Error::Code::kNotFound) logger->error("retention: {}", e.message());
    }
  }

  Checkpoint LoadFirstValid(const std::vector<std::string>& paths, const std::string& what) {
    for (const auto& path : paths) {
      try {
        Checkpoint c = ReadCheckpoint(path);
        std::lock_guard<std::mutex> lock(mu);
        last_loaded_path = path;
        logger->info("loaded {}", path);
        return c;
      } catch (const Error& e) {
        logger->warn("skipping unreadable checkpoint {}: {}", path, e.what());
      }
    }
    throw Error::NotFound("no readable " + what + " in '" + args.save_dir + "'");
  }

  Checkpoint ReadCheckpoint(const std::string& path) {
    ReadOptions ro;
    ro.verify_checksums = args.verify_on_load;
    auto reader = CheckpointReader::Open(path, ro, env);
    auto kind = reader->info().metadata.find(kMetaKind);
    if (kind != reader->info().metadata.end() && kind->second != "checkpoint") {
      throw Error::InvalidArgument("'" + path + "' is a " + kind->second +
                                   " file, not a full checkpoint");
    }
    StateDict root = reader->ReadStateDict();
    Checkpoint c;
    for (auto& kv : root) {
      if (kv.first == kGroupModule) {
        c.module_interface_state = kv.second.dict();
      } else if (kv.first == kGroupTrainer) {
        c.trainer_state = kv.second.dict();
      } else if (kv.first == kGroupBackend) {
        c.trainer_backend_state = kv.second.dict();
      } else {
        throw Error::Corruption("'" + path + "' has an unknown top-level group '" + kv.first + "'");
      }
    }
    return c;
  }

  DefaultCheckpointerArguments args;
  Env* env = nullptr;
  std::shared_ptr<spdlog::logger> logger;
  std::unique_ptr<engine::Engine> engine;
  mutable std::mutex mu;
  std::string last_saved_path;
  std::string last_loaded_path;
  std::atomic<uint64_t> files_deleted{0};
  uint64_t temp_files_removed = 0;
};

DefaultCheckpointer::DefaultCheckpointer(DefaultCheckpointerArguments args)
    : impl_(std::make_unique<Impl>(std::move(args))) {}

DefaultCheckpointer::~DefaultCheckpointer() = default;

void DefaultCheckpointer::save(const Checkpoint& checkpoint, int64_t index, bool force) {
  Impl& im = *impl_;
  if (!im.args.checkpoint) return;
  if (!force && index % im.args.period != 0) return;
  if (index < 0)
    throw Error::InvalidArgument("checkpoint index " + std::to_string(index) + " is negative");
  const std::string path =
      JoinPath(im.args.save_dir,
               CheckpointFileName(im.args.file_prefix, index, im.compressed(), im.args.file_ext));
  StateDict root;
  root.set(kGroupModule, checkpoint.module_interface_state);
  root.set(kGroupTrainer, checkpoint.trainer_state);
  root.set(kGroupBackend, checkpoint.trainer_backend_state);
  Impl* impl = impl_.get();
  if (im.engine->Save(root, index, path, force,
                      im.Metadata("checkpoint", index, checkpoint.metrics),
                      [impl] { impl->ApplyRetention(); })) {
    std::lock_guard<std::mutex> lock(im.mu);
    im.last_saved_path = path;
  }
}

void DefaultCheckpointer::save_model(const StateDict& model_state, int64_t index) {
  Impl& im = *impl_;
  if (!im.args.checkpoint || im.args.model_state_save_dir.empty()) return;
  if (index < 0)
    throw Error::InvalidArgument("model index " + std::to_string(index) + " is negative");
  im.env->CreateDirs(im.args.model_state_save_dir);
  const std::string path = JoinPath(im.args.model_state_save_dir,
                                    CheckpointFileName(ModelFilePrefix(im.args.file_prefix), index,
                                                       im.compressed(), im.args.file_ext));
  // Synchronous, as in pymarlin: it is the last thing a training run does.
  Impl* impl = impl_.get();
  im.engine->Save(model_state, index, path, /*force=*/true, im.Metadata("model", index, {}),
                  [impl] { impl->ApplyModelRetention(); });
}

Checkpoint DefaultCheckpointer::load() {
  Impl& im = *impl_;
  im.engine->Drain(im.args.drain_timeout_seconds);  // never read a file still being written
  auto loaded = [&](const std::string& path, Checkpoint c) {
    std::lock_guard<std::mutex> lock(im.mu);
    im.last_loaded_path = path;
    im.logger->info("loaded {}", path);
    return c;
  };
  if (!im.args.load_filename.empty()) {
    const std::string dir = im.args.load_dir.empty() ? im.args.save_dir : im.args.load_dir;
    const std::string path = JoinPath(dir, im.args.load_filename);
    return loaded(path, im.ReadCheckpoint(path));
  }
  std::string dir;
  if (!im.args.load_dir.empty()) {
    dir = im.args.load_dir;
  } else if (im.args.resume_from_save_dir && !im.args.save_dir.empty()) {
    dir = im.args.save_dir;
  } else {
    return Checkpoint();
  }
  const auto candidates = ListCheckpoints(im.env, dir, im.args.file_prefix, im.args.file_ext);
  for (const auto& c : candidates) {
    try {
      return loaded(c.second, im.ReadCheckpoint(c.second));
    } catch (const Error& e) {
      im.logger->warn("skipping unreadable checkpoint {}: {}", c.second, e.what());
    }
  }
  if (!candidates.empty()) im.logger->warn("no valid checkpoint in {}; starting fresh", dir);
  return Checkpoint();
}

void DefaultCheckpointer::wait() { impl_->engine->Wait(); }

std::string DefaultCheckpointer::last_saved_path() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->last_saved_path;
}

std::string DefaultCheckpointer::last_loaded_path() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->last_loaded_path;
}

CheckpointerCounters DefaultCheckpointer::counters() const {
  CheckpointerCounters c = impl_->engine->counters();
  c.files_deleted = impl_->files_deleted.load();
  c.temp_files_removed = impl_->temp_files_removed;
  return c;
}

Checkpoint DefaultCheckpointer::load_latest() {
  impl_->engine->Drain(impl_->args.drain_timeout_seconds);
  std::vector<std::string> paths;
  for (const auto& c : ListCheckpoints(impl_->env, impl_->args.save_dir, impl_->args.file_prefix,
                                       impl_->args.file_ext)) {
    paths.push_back(c.second);
  }
  return impl_->LoadFirstValid(paths, "checkpoint");
}

Checkpoint DefaultCheckpointer::load_index(int64_t index) {
  impl_->engine->Drain(impl_->args.drain_timeout_seconds);
  std::vector<std::string> paths;
  for (const auto& c : ListCheckpoints(impl_->env, impl_->args.save_dir, impl_->args.file_prefix,
                                       impl_->args.file_ext)) {
    if (c.first == index) paths.push_back(c.second);
  }
  return impl_->LoadFirstValid(paths, "checkpoint with index " + std::to_string(index));
}

Checkpoint DefaultCheckpointer::load_best(const std::string& metric, bool mode_max) {
  impl_->engine->Drain(impl_->args.drain_timeout_seconds);
  std::vector<CheckpointEntry> entries = ListCheckpointEntries(
      impl_->env, impl_->args.save_dir, impl_->args.file_prefix, impl_->args.file_ext);
  std::vector<const CheckpointEntry*> ranked;
  for (const auto& e : entries) {
    auto m = e.metrics.find(metric);
    if (e.readable && m != e.metrics.end() && !std::isnan(m->second)) ranked.push_back(&e);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](const CheckpointEntry* a, const CheckpointEntry* b) {
                     const double x = a->metrics.at(metric), y = b->metrics.at(metric);
                     return mode_max ? x > y : x < y;
                   });
  std::vector<std::string> paths;
  for (const auto* e : ranked) paths.push_back(e->path);
  return impl_->LoadFirstValid(paths, "checkpoint with metric '" + metric + "'");
}

std::vector<CheckpointEntry> DefaultCheckpointer::list_checkpoints() const {
  std::vector<CheckpointEntry> entries = ListCheckpointEntries(
      impl_->env, impl_->args.save_dir, impl_->args.file_prefix, impl_->args.file_ext);
  EvaluateRetention(&entries, impl_->args.retention);
  return entries;
}

const DefaultCheckpointerArguments& DefaultCheckpointer::args() const { return impl_->args; }

std::vector<std::pair<int64_t, std::string>> DefaultCheckpointer::ListCheckpoints(
    Env* env, const std::string& dir, const std::string& prefix, const std::string& ext) {
  std::vector<std::pair<int64_t, std::string>> out;
  const std::vector<std::string> names = GetChildrenIfExists(env, dir);
  for (const auto& name : names) {
    if (auto index = ParseCheckpointIndex(name, prefix, ext))
      out.emplace_back(*index, JoinPath(dir, name));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second > b.second;
  });
  return out;
}

}  // namespace ackpt
