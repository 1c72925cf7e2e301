// DefaultCheckpointer: pymarlin's checkpointing policy on the checkpointer
// core (engine, save_dir's CheckpointDir, lineage, retention).
#include "ackpt/checkpointer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "ackpt/error.h"
#include "ackpt/file_names.h"
#include "checkpointer/checkpointer_core.h"
#include "checkpointer/guard.h"

namespace ackpt {

const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kNone:
      return "none";
    case Tier::kLocal:
      return "local";
    case Tier::kPersistent:
      return "persistent";
  }
  return "unknown";
}

class DefaultCheckpointer::Impl {
 public:
  explicit Impl(DefaultCheckpointerArguments a) : core(std::move(a), /*owns_save_dir=*/true) {}

  const DefaultCheckpointerArguments& args() const { return core.args(); }

  Checkpoint Read(const std::string& path, const LoadTargets& targets, DamagedTargets* damage) {
    return Guard(Error::Code::kCorruption, "loading '" + path + "'", [&] {
      return ReadCheckpointInto(path, core.LoadReadOptions(), core.env(), TargetTensors(targets),
                                damage);
    });
  }

  // The first entry that loads (in order); unreadable ones are skipped, each
  // with a warning naming it and why. Returns false (and leaves *out alone)
  // if none loads. Throws kCorruption if a failed read left targets partly
  // overwritten and the one that loaded did not rewrite them.
  bool LoadFirstValid(const std::vector<CheckpointEntry>& entries, bool in_save_dir,
                      const LoadTargets& targets, Checkpoint* out) {
    DamagedTargets damage;
    bool loaded = false;
    // The catalog knows some files are unreadable from their headers alone
    // (e.g. truncated): they rank by what is readable of them, possibly below
    // the one that loads, so name each before loading anything.
    for (const auto& e : entries) {
      if (!e.readable) core.log().warn("skipping unreadable checkpoint {}: {}", e.path, e.error);
    }
    for (const auto& e : entries) {
      if (!e.readable) continue;
      try {
        *out = Read(e.path, targets, &damage);
        core.Loaded(e.path, e.index, in_save_dir);
        core.log().info("loaded {}", e.path);
        loaded = true;
        break;
      } catch (const Error& err) {
        core.log().warn("skipping unreadable checkpoint {}: {}", e.path, err.what());
      }
    }
    damage.ThrowIfAny();
    return loaded;
  }

  Checkpoint LoadFirstValidOrThrow(const std::vector<CheckpointEntry>& entries,
                                   const std::string& what, const LoadTargets& targets) {
    Checkpoint c;
    if (!LoadFirstValid(entries, /*in_save_dir=*/true, targets, &c)) {
      throw Error::NotFound("no readable " + what + " in '" + args().save_dir + "'" +
                            (core.local() ? " or '" + core.local()->dir() + "'" : ""));
    }
    return c;
  }

  CheckpointerCore core;
  uint64_t seq = 0;  // saves accepted, for waiting on a forced save's promotion
};

DefaultCheckpointer::DefaultCheckpointer(DefaultCheckpointerArguments args)
    : impl_(Guard(Error::Code::kInvalidArgument, "creating the checkpointer",
                  [&] { return std::make_unique<Impl>(std::move(args)); })) {}

DefaultCheckpointer::~DefaultCheckpointer() = default;

void DefaultCheckpointer::save(const Checkpoint& checkpoint, int64_t index, bool force) {
  CheckpointerCore& core = impl_->core;
  if (!core.ShouldSave(index, force)) return;
  Guard(Error::Code::kInvalidArgument, "save of index " + std::to_string(index), [&] {
    if (!checkpoint.shards.empty()) {
      throw Error::InvalidArgument("Checkpoint.shards names " +
                                   std::to_string(checkpoint.shards.size()) +
                                   " sharded tensor(s) ('" + checkpoint.shards.begin()->first +
                                   "', ...): only DistributedCheckpointer saves sharded tensors");
    }
    const std::shared_ptr<CheckpointDir>& dir = core.local() ? core.local() : core.dir();
    const std::string path = dir->PathFor(FileKind::kCheckpoint, index, core.compressed());
    const uint64_t seq = impl_->seq++;
    if (core.Save(CheckpointLayout(checkpoint), index, path, force,
                  core.CheckpointFileHooks(index, checkpoint.metrics, force, seq))) {
      core.Saved(path);
      // A forced save is durable in both tiers when it returns.
      if (force) core.WaitPromotion(seq);
    }
  });
}

void DefaultCheckpointer::save_model(const StateDict& model_state, int64_t index) {
  Guard(Error::Code::kInvalidArgument, "save_model of index " + std::to_string(index),
        [&] { impl_->core.SaveModel(model_state, index); });
}

Checkpoint DefaultCheckpointer::load() { return load(LoadTargets{}); }

Checkpoint DefaultCheckpointer::load(const LoadTargets& targets) {
  Impl& im = *impl_;
  CheckpointerCore& core = im.core;
  const DefaultCheckpointerArguments& a = im.args();
  core.Drain();
  if (!a.load_filename.empty()) {
    const std::string dir = a.load_dir.empty() ? a.save_dir : a.load_dir;
    const std::string path = JoinPath(dir, a.load_filename);
    if (!core.env()->FileExists(path)) {
      throw Error::NotFound("load_filename '" + a.load_filename + "' does not exist in '" + dir +
                            "'");
    }
    // One file, no fallback: a failed read raises, naming it.
    Checkpoint c = im.Read(path, targets, /*damage=*/nullptr);
    const auto index = ParseCheckpointIndex(a.load_filename, a.file_prefix, a.file_ext);
    core.Loaded(path, index ? *index : -1, dir == a.save_dir);
    core.log().info("resuming from {} (load_filename)", path);
    return c;
  }
  if (!a.load_dir.empty()) {
    const std::string& d = a.load_dir;
    if (!core.env()->FileExists(d)) throw Error::NotFound("load_dir '" + d + "' does not exist");
    const auto entries = core.OpenDir(d, /*writer=*/false)->Checkpoints();
    Checkpoint c;
    if (!im.LoadFirstValid(entries, d == a.save_dir, targets, &c)) {
      throw Error::NotFound("no readable checkpoint named '" + a.file_prefix + "_{index}." +
                            a.file_ext + "[.zst]' in load_dir '" + d + "' (" +
                            std::to_string(entries.size()) + " candidates)");
    }
    core.log().info("resuming from {} (load_dir)", core.last_loaded_path());
    return c;
  }
  if (!a.resume_from_save_dir || a.save_dir.empty()) return Checkpoint();
  const auto entries = core.LoadCandidates();
  Checkpoint c;
  if (im.LoadFirstValid(entries, /*in_save_dir=*/true, targets, &c)) {
    core.log().info("resuming from {} (newest valid checkpoint in save_dir)",
                    core.last_loaded_path());
    return c;
  }
  if (entries.empty()) {
    core.log().info("no checkpoint in {}; starting fresh", a.save_dir);
  } else {
    core.log().warn("no valid checkpoint among {} in {}; starting fresh", entries.size(),
                    a.save_dir);
  }
  return Checkpoint();
}

void DefaultCheckpointer::wait() {
  impl_->core.engine().Wait();
  impl_->core.WaitPromotions();
}

void DefaultCheckpointer::wait_snapshot() { impl_->core.engine().WaitSnapshot(); }

std::string DefaultCheckpointer::last_saved_path() const { return impl_->core.last_saved_path(); }

std::string DefaultCheckpointer::last_loaded_path() const { return impl_->core.last_loaded_path(); }

Tier DefaultCheckpointer::last_loaded_tier() const { return impl_->core.last_loaded_tier(); }

std::string DefaultCheckpointer::promotion_error() const { return impl_->core.promotion_error(); }

std::vector<CheckpointEntry> DefaultCheckpointer::list_local_checkpoints() const {
  const std::shared_ptr<CheckpointDir>& local = impl_->core.local();
  if (!local) return {};
  std::vector<CheckpointEntry> entries = local->Checkpoints();
  EvaluateRetention(&entries, impl_->args().local_tier.retention);
  return entries;
}

CheckpointerCounters DefaultCheckpointer::counters() const { return impl_->core.counters(); }

Checkpoint DefaultCheckpointer::load_latest(const LoadTargets& targets) {
  impl_->core.Drain();
  return impl_->LoadFirstValidOrThrow(impl_->core.LoadCandidates(), "checkpoint", targets);
}

Checkpoint DefaultCheckpointer::load_index(int64_t index, const LoadTargets& targets) {
  impl_->core.Drain();
  std::vector<CheckpointEntry> match;
  for (const auto& e : impl_->core.LoadCandidates()) {
    if (e.index == index) match.push_back(e);
  }
  return impl_->LoadFirstValidOrThrow(match, "checkpoint with index " + std::to_string(index),
                                      targets);
}

Checkpoint DefaultCheckpointer::load_best(const std::string& metric, bool mode_max,
                                          const LoadTargets& targets) {
  impl_->core.Drain();
  std::vector<CheckpointEntry> ranked;
  for (const auto& e : impl_->core.LoadCandidates()) {
    auto m = e.metrics.find(metric);
    if (e.readable && m != e.metrics.end() && !std::isnan(m->second)) ranked.push_back(e);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](const CheckpointEntry& a, const CheckpointEntry& b) {
                     const double x = a.metrics.at(metric), y = b.metrics.at(metric);
                     return mode_max ? x > y : x < y;
                   });
  return impl_->LoadFirstValidOrThrow(ranked, "checkpoint with metric '" + metric + "'", targets);
}

std::vector<CheckpointEntry> DefaultCheckpointer::list_checkpoints() const {
  std::vector<CheckpointEntry> entries = impl_->core.Catalog()->Checkpoints();
  EvaluateRetention(&entries, impl_->args().retention);
  return entries;
}

const DefaultCheckpointerArguments& DefaultCheckpointer::args() const { return impl_->args(); }

}  // namespace ackpt
