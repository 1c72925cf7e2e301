#include "checkpointer/checkpointer_core.h"

#include <limits.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <vector>

#include "ackpt/error.h"
#include "checkpointer/metadata_keys.h"

namespace ackpt {

namespace {

constexpr const char* kArgs = "DefaultCheckpointerArguments";

// `path` made absolute and normalized lexically ("a/./b/../c/" -> "/cwd/a/c"),
// then resolved through symbolic links when it exists.
std::string CanonicalDir(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) != nullptr) return buf;
  std::string abs = path;
  if (abs.empty() || abs[0] != '/') {
    if (::getcwd(buf, sizeof buf) != nullptr) abs = std::string(buf) + "/" + abs;
  }
  std::vector<std::string> parts;
  size_t b = 0;
  while (b <= abs.size()) {
    size_t e = abs.find('/', b);
    if (e == std::string::npos) e = abs.size();
    const std::string p = abs.substr(b, e - b);
    if (p == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!p.empty() && p != ".") {
      parts.push_back(p);
    }
    b = e + 1;
  }
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

// Two spellings of one directory ("ck", "ck/", "./ck", "/abs/ck") must be
// one owner: a second CheckpointDir on it would find its own lock taken.
bool SameDirectory(const std::string& a, const std::string& b) {
  return a == b || CanonicalDir(a) == CanonicalDir(b);
}

}  // namespace

void ValidateCheckpointerArguments(const DefaultCheckpointerArguments& a) {
  const std::string n = kArgs;
  if (a.period <= 0) {
    throw Error::InvalidArgument(n + ".period must be >= 1, got " + std::to_string(a.period));
  }
  if (a.file_prefix.empty() || a.file_prefix.find('/') != std::string::npos) {
    throw Error::InvalidArgument(n + ".file_prefix '" + a.file_prefix +
                                 "' must be non-empty and contain no '/'");
  }
  if (a.file_ext.empty() || a.file_ext.find('/') != std::string::npos || a.file_ext[0] == '.') {
    throw Error::InvalidArgument(n + ".file_ext '" + a.file_ext +
                                 "' must be non-empty, contain no '/' and not start with '.'");
  }
  if (a.checkpoint && a.save_dir.empty()) throw Error::InvalidArgument(n + ".save_dir is empty");
  const RetentionPolicy& r = a.retention;
  if (r.keep_last < 0 || r.keep_every < 0 || r.keep_best < 0 || r.model_keep_last < 0 ||
      !(r.keep_time_interval_seconds >= 0)) {
    throw Error::InvalidArgument(n + ".retention: counts and intervals must be >= 0");
  }
  if (r.keep_best > 0 && r.best_metric.empty()) {
    throw Error::InvalidArgument(n + ".retention.keep_best needs best_metric");
  }
  const IncrementalArguments& inc = a.incremental;
  if (inc.full_every < 0) {
    throw Error::InvalidArgument(n + ".incremental.full_every must be >= 0, got " +
                                 std::to_string(inc.full_every));
  }
  if (inc.enabled && a.local_tier.enabled()) {
    throw Error::InvalidArgument(n +
                                 ".incremental with local_tier is not supported: a promoted "
                                 "checkpoint could reference a file only the local tier holds");
  }
  if (inc.enabled && a.backpressure == BackpressurePolicy::kReplacePending) {
    throw Error::InvalidArgument(
        n +
        ".incremental needs backpressure kBlock or kSkip: a save "
        "that kReplacePending drops may hold what the next one references");
  }
  const LocalTierArguments& t = a.local_tier;
  if (!t.enabled()) return;
  const RetentionPolicy& lr = t.retention;
  if (lr.keep_last < 0 || lr.keep_every < 0 || lr.keep_best < 0 ||
      !(lr.keep_time_interval_seconds >= 0)) {
    throw Error::InvalidArgument(n + ".local_tier.retention: counts and intervals must be >= 0");
  }
  if (lr.keep_best > 0 && lr.best_metric.empty()) {
    throw Error::InvalidArgument(n + ".local_tier.retention.keep_best needs best_metric");
  }
  if (t.persist_period <= 0) {
    throw Error::InvalidArgument(n + ".local_tier.persist_period must be >= 1, got " +
                                 std::to_string(t.persist_period));
  }
  if (t.max_pending_promotions < 0) {
    throw Error::InvalidArgument(n + ".local_tier.max_pending_promotions must be >= 0, got " +
                                 std::to_string(t.max_pending_promotions));
  }
  if (SameDirectory(LocalTierDir(t, 0), a.save_dir)) {
    throw Error::InvalidArgument(n + ".local_tier.dir '" + t.dir +
                                 "' is save_dir: the two tiers need two directories");
  }
}

std::string LocalTierDir(const LocalTierArguments& tier, int rank) {
  std::string d = tier.dir;
  const std::string key = "{rank}";
  for (size_t at = d.find(key); at != std::string::npos; at = d.find(key, at)) {
    d.replace(at, key.size(), std::to_string(rank));
  }
  return d;
}

CheckpointerCore::CheckpointerCore(DefaultCheckpointerArguments a, bool owns_save_dir, int rank)
    : args_(std::move(a)) {
  ValidateCheckpointerArguments(args_);
  env_ = args_.env ? args_.env : Env::Default();
  engine_ = std::make_unique<engine::Engine>(args_, kArgs);
  if (args_.incremental.enabled)
    incremental_ = std::make_shared<IncrementalTracker>(args_.incremental);
  if (args_.save_dir.empty()) return;
  const bool writer = args_.checkpoint && owns_save_dir;
  if (owns_save_dir) {
    dir_ = OpenDir(args_.save_dir, writer);
  } else if (args_.checkpoint) {
    engine_->env()->CreateDirs(args_.save_dir);
  }
  if (args_.local_tier.enabled()) {
    local_ = OpenDir(LocalTierDir(args_.local_tier, rank), /*writer=*/args_.checkpoint);
    if (dir_) local_->RaiseGeneration(dir_->max_generation());
    if (args_.checkpoint) {
      PromoterOptions po;
      po.env = engine_->env();
      po.logger = engine_->logger();
      po.max_pending = args_.local_tier.max_pending_promotions;
      po.bytes_per_second = args_.local_tier.promote_bytes_per_second;
      po.priority = args_.local_tier.promote_priority;
      po.fsync = args_.fsync;
      promoter_ = std::make_shared<Promoter>(std::move(po));
    }
  }
  // A separate model directory is owned (locked) only once save_model()
  // writes there, or delete_existing_checkpoints asks to clean it: several
  // checkpointers with their own save_dir but the default
  // model_state_save_dir must not refuse each other.
  if (writer && !args_.model_state_save_dir.empty()) {
    if (SameDirectory(args_.model_state_save_dir, args_.save_dir)) {
      model_dir_ = dir_;
    } else if (args_.delete_existing_checkpoints) {
      model_dir_ = OpenDir(args_.model_state_save_dir, /*writer=*/true);
    }
  }
  if (writer && args_.delete_existing_checkpoints) {
    dir_->DeleteOwnFiles();
    if (model_dir_ && model_dir_ != dir_) model_dir_->DeleteOwnFiles();
  }
  if (local_ && args_.checkpoint && args_.delete_existing_checkpoints) local_->DeleteOwnFiles();
}

CheckpointerCore::~CheckpointerCore() {
  std::shared_ptr<spdlog::logger> log = engine_->logger();
  engine_.reset();
  // Promotions the engine's last commits queued get the same drain budget.
  if (promoter_ && !promoter_->Drain(args_.drain_timeout_seconds)) {
    log->warn(
        "promotions still running after drain_timeout_seconds ({} s) are abandoned; "
        "their local checkpoints stay",
        args_.drain_timeout_seconds);
  }
}

std::shared_ptr<CheckpointDir> CheckpointerCore::OpenDir(const std::string& dir,
                                                         bool writer) const {
  CheckpointDirOptions o;
  o.dir = dir;
  o.prefix = args_.file_prefix;
  o.ext = args_.file_ext;
  o.writer = writer;
  // Background work (retention) goes through the engine's detachable Env.
  o.env = engine_->env();
  o.logger = engine_->logger();
  return CheckpointDir::Open(std::move(o));
}

std::shared_ptr<CheckpointDir> CheckpointerCore::Catalog() {
  if (args_.save_dir.empty())
    throw Error::InvalidArgument(std::string(kArgs) + ".save_dir is empty");
  if (!dir_) return OpenDir(args_.save_dir, /*writer=*/false);
  dir_->Refresh();
  return dir_;
}

bool CheckpointerCore::ShouldSave(int64_t index, bool force) const {
  if (!args_.checkpoint) return false;
  if (!force && index % args_.period != 0) return false;
  if (index < 0)
    throw Error::InvalidArgument("checkpoint index " + std::to_string(index) + " is negative");
  return true;
}

engine::SaveHooks CheckpointerCore::CheckpointFileHooks(
    int64_t index, const std::map<std::string, double>& metrics, bool force, uint64_t seq) const {
  engine::SaveHooks hooks;
  std::shared_ptr<CheckpointDir> dir = local_ ? local_ : dir_;
  hooks.metadata = dir->Metadata(FileKind::kCheckpoint, index, metrics, args_.retention);
  hooks.stamp = [dir](engine::Metadata* m) { dir->StampLineage(m); };
  const RetentionPolicy policy = local_ ? args_.local_tier.retention : args_.retention;
  if (!local_ || !PromotionDue(index, force)) {
    hooks.after_commit = [dir, policy, index](const WriteResult& w, const engine::Metadata& m) {
      dir->RecordCommit(FileKind::kCheckpoint, index, w.path, w.file_bytes, w.logical_bytes,
                        w.compressed, m);
      dir->ApplyRetention(policy);
    };
    return hooks;
  }
  std::shared_ptr<CheckpointDir> persistent = dir_;
  std::shared_ptr<Promoter> promoter = promoter_;
  std::shared_ptr<Env> env = engine_->env();
  const RetentionPolicy persistent_policy = args_.retention;
  hooks.after_commit = [=](const WriteResult& w, const engine::Metadata& m) {
    dir->RecordCommit(FileKind::kCheckpoint, index, w.path, w.file_bytes, w.logical_bytes,
                      w.compressed, m);
    try {
      PromotionJob job;
      job.index = index;
      job.seq = seq;
      job.force = force;
      // Opened before local retention runs: the copy reads this very file.
      job.source = env->NewRandomAccessFile(w.path);
      job.dest_path = persistent->PathFor(FileKind::kCheckpoint, index, w.compressed);
      const std::string dest = job.dest_path;
      job.commit = [persistent, persistent_policy, index, dest, w, m](uint64_t) {
        persistent->RecordCommit(FileKind::kCheckpoint, index, dest, w.file_bytes, w.logical_bytes,
                                 w.compressed, m);
        persistent->ApplyRetention(persistent_policy);
      };
      if (!promoter->Offer(std::move(job))) {
        promoter->Skipped(index,
                          "promotions are behind (local_tier.max_pending_promotions waiting)");
      }
    } catch (const std::exception& e) {
      promoter->Skipped(index, e.what());  // counted; local retention still runs
    }
    dir->ApplyRetention(policy);
  };
  return hooks;
}

bool CheckpointerCore::Save(const StateDict& state, int64_t index, const std::string& path,
                            bool force, engine::SaveHooks hooks) {
  const std::shared_ptr<IncrementalBox> incremental = AddIncrementalHooks(path, &hooks);
  bool accepted = false;
  try {
    accepted = engine_->Save(state, index, path, force, std::move(hooks));
  } catch (...) {
    IncrementalSaveDone(incremental, false);
    throw;
  }
  IncrementalSaveDone(incremental, accepted);
  return accepted;
}

std::shared_ptr<IncrementalBox> CheckpointerCore::AddIncrementalHooks(const std::string& path,
                                                                      engine::SaveHooks* hooks) {
  if (!incremental_) return nullptr;
  // A save that failed may hold what the tracker would reference.
  const uint64_t failed = engine_->counters().saves_failed;
  if (failed != failures_seen_) {
    failures_seen_ = failed;
    incremental_->Reset();
  }
  auto box = std::make_shared<IncrementalBox>();
  std::shared_ptr<IncrementalTracker> tracker = incremental_;
  // select runs inside engine.Save() on this thread, before the job reaches
  // the writer, so stamp and held find the plan in the box.
  hooks->select = [tracker, box, path](std::vector<format::FlatTensor>* tensors) {
    box->plan = tracker->Select(tensors, path);
  };
  std::function<void(engine::Metadata*)> stamp = std::move(hooks->stamp);
  std::shared_ptr<Env> env = engine_->env();
  hooks->stamp = [stamp, box, env](engine::Metadata* m) {
    if (stamp) stamp(m);
    box->plan->Stamp(env.get(), m);
  };
  hooks->held = [box](const std::vector<format::FlatTensor>& tensors) { box->plan->Held(tensors); };
  return box;
}

void CheckpointerCore::IncrementalSaveDone(const std::shared_ptr<IncrementalBox>& box,
                                           bool accepted) {
  if (!box) return;
  if (!accepted || !box->plan) {
    incremental_->Reset();
    return;
  }
  incremental_->Accepted(*box->plan);
  tensors_referenced_ += box->plan->referenced_tensors();
  bytes_referenced_ += box->plan->referenced_bytes();
}

bool CheckpointerCore::PromotionDue(int64_t index, bool force) const {
  return local_ && (force || index % args_.local_tier.persist_period == 0);
}

void CheckpointerCore::WaitPromotion(uint64_t seq) {
  if (promoter_) promoter_->WaitFor(seq);
}

void CheckpointerCore::WaitPromotions() {
  if (promoter_) promoter_->Drain(1e9);
}

Tier CheckpointerCore::TierOf(const std::string& path) const {
  if (local_) {
    const std::string& d = local_->dir();
    if (path.size() > d.size() && path.compare(0, d.size(), d) == 0 && path[d.size()] == '/' &&
        path.find('/', d.size() + 1) == std::string::npos)
      return Tier::kLocal;
  }
  return Tier::kPersistent;
}

std::vector<CheckpointEntry> CheckpointerCore::LoadCandidates() {
  std::vector<CheckpointEntry> persistent = Catalog()->Checkpoints();
  if (!local_) return persistent;
  if (!local_->writer()) local_->Refresh();
  return MergeTiers(local_->Checkpoints(), std::move(persistent));
}

void CheckpointerCore::SaveModel(const StateDict& model_state, int64_t index) {
  if (!args_.checkpoint || args_.model_state_save_dir.empty()) return;
  if (index < 0)
    throw Error::InvalidArgument("model index " + std::to_string(index) + " is negative");
  if (!model_dir_) model_dir_ = OpenDir(args_.model_state_save_dir, /*writer=*/true);
  std::shared_ptr<CheckpointDir> dir = model_dir_;
  engine::SaveHooks hooks;
  hooks.metadata = dir->Metadata(FileKind::kModel, index, {}, args_.retention);
  const int64_t keep = args_.retention.model_keep_last;
  hooks.after_commit = [dir, keep, index](const WriteResult& w, const engine::Metadata& m) {
    dir->RecordCommit(FileKind::kModel, index, w.path, w.file_bytes, w.logical_bytes, w.compressed,
                      m);
    dir->ApplyModelRetention(keep);
  };
  // Synchronous, as in pymarlin: it is the last thing a training run does.
  engine_->Save(model_state, index, dir->PathFor(FileKind::kModel, index, compressed()),
                /*force=*/true, std::move(hooks));
}

void CheckpointerCore::Drain() { engine_->Drain(args_.drain_timeout_seconds); }

ReadOptions CheckpointerCore::LoadReadOptions() const {
  ReadOptions ro;
  ro.verify_checksums = args_.verify_on_load;
  return ro;
}

void CheckpointerCore::Loaded(const std::string& path, int64_t index, bool in_save_dir) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    last_loaded_path_ = path;
    last_loaded_tier_ = path.empty() ? Tier::kNone : TierOf(path);
  }
  // The loaded tensors are not the ones the tracker saw written.
  if (incremental_) incremental_->Reset();
  if (!in_save_dir || index < 0) return;
  // Both tiers continue the lineage of what was resumed: the next save's
  // parent is this checkpoint, in whichever tier it lands.
  if (dir_) dir_->RecordResume(index);
  if (local_) local_->RecordResume(index);
}

Tier CheckpointerCore::last_loaded_tier() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_loaded_tier_;
}

std::string CheckpointerCore::promotion_error() const {
  return promoter_ ? promoter_->last_error() : std::string();
}

void CheckpointerCore::Saved(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  last_saved_path_ = path;
}

std::string CheckpointerCore::last_saved_path() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_saved_path_;
}

std::string CheckpointerCore::last_loaded_path() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_loaded_path_;
}

CheckpointerCounters CheckpointerCore::counters() const {
  CheckpointerCounters c;
  static_cast<EngineCounters&>(c) = engine_->counters();
  for (const auto& d : {dir_, model_dir_ == dir_ ? nullptr : model_dir_, local_}) {
    if (!d) continue;
    c.files_deleted += d->files_deleted();
    c.temp_files_removed += d->temp_files_removed();
  }
  c.tensors_referenced = tensors_referenced_.load();
  c.bytes_referenced = bytes_referenced_.load();
  if (promoter_) {
    const PromoterCounters p = promoter_->counters();
    c.promotions_completed = p.completed;
    c.promotions_skipped = p.skipped;
    c.promotions_failed = p.failed;
    c.bytes_promoted = p.bytes;
  }
  return c;
}

}  // namespace ackpt
