// DefaultCheckpointer: pymarlin's checkpointing policy on ackpt's engine and
// a CheckpointDir that owns save_dir.
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "ackpt/async_writer.h"
#include "ackpt/checkpointer.h"
#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "checkpointer/checkpoint_dir.h"
#include "checkpointer/checkpoint_file.h"
#include "checkpointer/guard.h"
#include "checkpointer/metadata_keys.h"
#include "engine/engine.h"
#include "util/logger.h"

namespace ackpt {

namespace {

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

std::shared_ptr<CheckpointDir> OpenDir(const std::string& dir,
                                       const DefaultCheckpointerArguments& a, bool writer,
                                       std::shared_ptr<Env> env,
                                       std::shared_ptr<spdlog::logger> logger) {
  CheckpointDirOptions o;
  o.dir = dir;
  o.prefix = a.file_prefix;
  o.ext = a.file_ext;
  o.writer = writer;
  o.env = std::move(env);
  o.logger = std::move(logger);
  return CheckpointDir::Open(std::move(o));
}

}  // namespace

class DefaultCheckpointer::Impl {
 public:
  explicit Impl(DefaultCheckpointerArguments a) : args(std::move(a)) {
    Validate(args);
    user_env = args.env ? args.env : Env::Default();
    logger = ResolveLogger(args.log_level, args.logger, "DefaultCheckpointerArguments.log_level");
    // The asynchronous engine, as any custom checkpointer gets it (async_writer.h).
    AsyncWriterOptions w = AsyncWriterOptionsFrom(args);
    w.env = user_env;
    w.logger = logger;
    writer = std::make_unique<AsyncWriter>(std::move(w));
    engine = &WriterEngine(*writer);
    // Background work (retention) goes through the engine's detachable Env.
    const std::shared_ptr<Env> env = engine->env();
    if (!args.save_dir.empty()) dir = OpenDir(args.save_dir, args, args.checkpoint, env, logger);
    // A separate model directory is owned (locked) only once save_model()
    // writes there, or delete_existing_checkpoints asks to clean it: several
    // checkpointers with their own save_dir but the default
    // model_state_save_dir must not refuse each other.
    if (args.checkpoint && !args.model_state_save_dir.empty()) {
      if (args.model_state_save_dir == args.save_dir) {
        model_dir = dir;
      } else if (args.delete_existing_checkpoints) {
        model_dir = OpenDir(args.model_state_save_dir, args, /*writer=*/true, env, logger);
      }
    }
    if (args.checkpoint && args.delete_existing_checkpoints) {
      dir->DeleteOwnFiles();
      if (model_dir && model_dir != dir) model_dir->DeleteOwnFiles();
    }
  }

  bool compressed() const { return args.compression != Compression::kNone; }

  // The catalog to read from: a writer's is always current; a reader rescans
  // because the owning writer may have committed or deleted since.
  std::shared_ptr<CheckpointDir> Catalog() {
    if (!dir) throw Error::InvalidArgument("DefaultCheckpointerArguments.save_dir is empty");
    dir->Refresh();
    return dir;
  }

  Checkpoint ReadCheckpoint(const std::string& path) {
    return Guard(Error::Code::kCorruption, "loading '" + path + "'", [&] {
      ReadOptions ro;
      ro.verify_checksums = args.verify_on_load;
      return ReadCheckpointFile(path, ro, user_env);
    });
  }

  void Loaded(const std::string& path, int64_t index, bool in_save_dir) {
    {
      std::lock_guard<std::mutex> lock(mu);
      last_loaded_path = path;
    }
    // The next save continues this checkpoint's lineage.
    if (in_save_dir && dir && index >= 0) dir->RecordResume(index);
  }

  // The first entry that loads; unreadable ones are skipped with a warning.
  // Returns false (and leaves *out alone) if none loads.
  bool LoadFirstValid(const std::vector<CheckpointEntry>& entries, bool in_save_dir,
                      Checkpoint* out) {
    for (const auto& e : entries) {
      try {
        *out = ReadCheckpoint(e.path);
        Loaded(e.path, e.index, in_save_dir);
        logger->info("loaded {}", e.path);
        return true;
      } catch (const Error& err) {
        logger->warn("skipping unreadable checkpoint {}: {}", e.path, err.what());
      }
    }
    return false;
  }

  Checkpoint LoadFirstValidOrThrow(const std::vector<CheckpointEntry>& entries,
                                   const std::string& what) {
    Checkpoint c;
    if (!LoadFirstValid(entries, /*in_save_dir=*/true, &c)) {
      throw Error::NotFound("no readable " + what + " in '" + args.save_dir + "'");
    }
    return c;
  }

  DefaultCheckpointerArguments args;
  Env* user_env = nullptr;
  std::shared_ptr<spdlog::logger> logger;
  // Declared before the engine so that the engine (and its drain) goes first.
  std::shared_ptr<CheckpointDir> dir;        // save_dir; null if save_dir is empty
  std::shared_ptr<CheckpointDir> model_dir;  // model_state_save_dir (may be `dir`)
  std::unique_ptr<AsyncWriter> writer;
  engine::Engine* engine = nullptr;  // writer's
  mutable std::mutex mu;
  std::string last_saved_path;
  std::string last_loaded_path;
};

DefaultCheckpointer::DefaultCheckpointer(DefaultCheckpointerArguments args)
    : impl_(Guard(Error::Code::kInvalidArgument, "creating the checkpointer",
                  [&] { return std::make_unique<Impl>(std::move(args)); })) {}

DefaultCheckpointer::~DefaultCheckpointer() = default;

void DefaultCheckpointer::save(const Checkpoint& checkpoint, int64_t index, bool force) {
  Impl& im = *impl_;
  if (!im.args.checkpoint) return;
  if (!force && index % im.args.period != 0) return;
  if (index < 0)
    throw Error::InvalidArgument("checkpoint index " + std::to_string(index) + " is negative");
  Guard(Error::Code::kInvalidArgument, "save of index " + std::to_string(index), [&] {
    const std::string path = im.dir->PathFor(FileKind::kCheckpoint, index, im.compressed());
    StateDict root = CheckpointLayout(checkpoint);
    engine::SaveHooks hooks;
    hooks.metadata =
        im.dir->Metadata(FileKind::kCheckpoint, index, checkpoint.metrics, im.args.retention);
    std::shared_ptr<CheckpointDir> dir = im.dir;
    hooks.stamp = [dir](std::map<std::string, std::string>* m) { dir->StampLineage(m); };
    const RetentionPolicy policy = im.args.retention;
    hooks.after_commit = [dir, policy](const engine::CommitInfo& c) {
      dir->RecordCommit(FileKind::kCheckpoint, c.index, c.path, c.file_bytes, c.logical_bytes,
                        c.compressed, c.metadata);
      dir->ApplyRetention(policy);
    };
    if (im.engine->Save(root, index, path, force, std::move(hooks))) {
      std::lock_guard<std::mutex> lock(im.mu);
      im.last_saved_path = path;
    }
  });
}

void DefaultCheckpointer::save_model(const StateDict& model_state, int64_t index) {
  Impl& im = *impl_;
  if (!im.args.checkpoint || im.args.model_state_save_dir.empty()) return;
  if (index < 0)
    throw Error::InvalidArgument("model index " + std::to_string(index) + " is negative");
  Guard(Error::Code::kInvalidArgument, "save_model of index " + std::to_string(index), [&] {
    if (!im.model_dir) {
      im.model_dir = OpenDir(im.args.model_state_save_dir, im.args, /*writer=*/true,
                             im.engine->env(), im.logger);
    }
    std::shared_ptr<CheckpointDir> dir = im.model_dir;
    const std::string path = dir->PathFor(FileKind::kModel, index, im.compressed());
    engine::SaveHooks hooks;
    hooks.metadata = dir->Metadata(FileKind::kModel, index, {}, im.args.retention);
    const int64_t keep = im.args.retention.model_keep_last;
    hooks.after_commit = [dir, keep](const engine::CommitInfo& c) {
      dir->RecordCommit(FileKind::kModel, c.index, c.path, c.file_bytes, c.logical_bytes,
                        c.compressed, c.metadata);
      dir->ApplyModelRetention(keep);
    };
    // Synchronous, as in pymarlin: it is the last thing a training run does.
    im.engine->Save(model_state, index, path, /*force=*/true, std::move(hooks));
  });
}

Checkpoint DefaultCheckpointer::load() {
  Impl& im = *impl_;
  im.engine->Drain(im.args.drain_timeout_seconds);  // never read a file still being written
  if (!im.args.load_filename.empty()) {
    const std::string dir = im.args.load_dir.empty() ? im.args.save_dir : im.args.load_dir;
    const std::string path = JoinPath(dir, im.args.load_filename);
    if (!im.user_env->FileExists(path)) {
      throw Error::NotFound("load_filename '" + im.args.load_filename + "' does not exist in '" +
                            dir + "'");
    }
    Checkpoint c = im.ReadCheckpoint(path);
    const auto index =
        ParseCheckpointIndex(im.args.load_filename, im.args.file_prefix, im.args.file_ext);
    im.Loaded(path, index ? *index : -1, dir == im.args.save_dir);
    im.logger->info("resuming from {} (load_filename)", path);
    return c;
  }
  if (!im.args.load_dir.empty()) {
    const std::string& d = im.args.load_dir;
    if (!im.user_env->FileExists(d)) {
      throw Error::NotFound("load_dir '" + d + "' does not exist");
    }
    auto catalog = OpenDir(d, im.args, /*writer=*/false, im.engine->env(), im.logger);
    const auto entries = catalog->Checkpoints();
    Checkpoint c;
    if (!im.LoadFirstValid(entries, d == im.args.save_dir, &c)) {
      throw Error::NotFound("no readable checkpoint named '" + im.args.file_prefix + "_{index}." +
                            im.args.file_ext + "[.zst]' in load_dir '" + d + "' (" +
                            std::to_string(entries.size()) + " candidates)");
    }
    im.logger->info("resuming from {} (load_dir)", im.last_loaded_path);
    return c;
  }
  if (!im.args.resume_from_save_dir || !im.dir) return Checkpoint();
  const auto entries = im.Catalog()->Checkpoints();
  Checkpoint c;
  if (im.LoadFirstValid(entries, /*in_save_dir=*/true, &c)) {
    im.logger->info("resuming from {} (newest valid checkpoint in save_dir)", last_loaded_path());
    return c;
  }
  if (entries.empty()) {
    im.logger->info("no checkpoint in {}; starting fresh", im.args.save_dir);
  } else {
    im.logger->warn("no valid checkpoint among {} in {}; starting fresh", entries.size(),
                    im.args.save_dir);
  }
  return Checkpoint();
}

void DefaultCheckpointer::wait() { impl_->engine->Wait(); }

void DefaultCheckpointer::wait_snapshot() { impl_->engine->WaitSnapshot(); }

std::string DefaultCheckpointer::last_saved_path() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->last_saved_path;
}

std::string DefaultCheckpointer::last_loaded_path() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->last_loaded_path;
}

CheckpointerCounters DefaultCheckpointer::counters() const {
  CheckpointerCounters c;
  static_cast<EngineCounters&>(c) = impl_->engine->counters();
  for (const auto& d : {impl_->dir, impl_->model_dir}) {
    if (!d || (d == impl_->model_dir && impl_->model_dir == impl_->dir)) continue;
    c.files_deleted += d->files_deleted();
    c.temp_files_removed += d->temp_files_removed();
  }
  if (impl_->dir && impl_->model_dir == impl_->dir) {  // one directory, counted once
    c.files_deleted += impl_->dir->files_deleted();
    c.temp_files_removed += impl_->dir->temp_files_removed();
  }
  return c;
}

Checkpoint DefaultCheckpointer::load_latest() {
  impl_->engine->Drain(impl_->args.drain_timeout_seconds);
  return impl_->LoadFirstValidOrThrow(impl_->Catalog()->Checkpoints(), "checkpoint");
}

Checkpoint DefaultCheckpointer::load_index(int64_t index) {
  impl_->engine->Drain(impl_->args.drain_timeout_seconds);
  std::vector<CheckpointEntry> match;
  for (const auto& e : impl_->Catalog()->Checkpoints()) {
    if (e.index == index) match.push_back(e);
  }
  return impl_->LoadFirstValidOrThrow(match, "checkpoint with index " + std::to_string(index));
}

Checkpoint DefaultCheckpointer::load_best(const std::string& metric, bool mode_max) {
  impl_->engine->Drain(impl_->args.drain_timeout_seconds);
  std::vector<CheckpointEntry> ranked;
  for (const auto& e : impl_->Catalog()->Checkpoints()) {
    auto m = e.metrics.find(metric);
    if (e.readable && m != e.metrics.end() && !std::isnan(m->second)) ranked.push_back(e);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](const CheckpointEntry& a, const CheckpointEntry& b) {
                     const double x = a.metrics.at(metric), y = b.metrics.at(metric);
                     return mode_max ? x > y : x < y;
                   });
  return impl_->LoadFirstValidOrThrow(ranked, "checkpoint with metric '" + metric + "'");
}

std::vector<CheckpointEntry> DefaultCheckpointer::list_checkpoints() const {
  std::vector<CheckpointEntry> entries = impl_->Catalog()->Checkpoints();
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
