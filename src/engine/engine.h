// The asynchronous save engine: snapshot into staging, then hash, compress,
// write, fsync and rename on a writer pool, one save after another in
// submission order.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "ackpt/engine.h"
#include "ackpt/format.h"
#include "engine/snapshot.h"
#include "engine/staging_pool.h"
#include "engine/task_pool.h"
#include "io/detachable_env.h"

namespace spdlog {
class logger;
}

namespace ackpt {
namespace format {
namespace codec {
class AutoModel;
}
}  // namespace format
namespace engine {

// Test-only hooks (not options a user sets).
class SnapshotStream;

struct EngineTestHooks {
  // Runs on the copying thread right before a snapshot copy starts, with the
  // save's index (lets a test act inside the overlap window).
  std::function<void(int64_t)> before_copy;
  // Runs on the copying thread once the copy finished, before the writer
  // reads the staged bytes (lets a test damage staging after the checksums).
  std::function<void(int64_t, SnapshotStream*)> after_copy;
};

// The internal "ackpt.*" metadata entries a file was written with.
using Metadata = std::map<std::string, std::string>;
// Called with what a durable save wrote (the file) and its internal metadata.
using CommitHook = std::function<void(const WriteResult& written, const Metadata& metadata)>;

struct SaveHooks {
  // Internal "ackpt.*" metadata entries for the header.
  Metadata metadata;
  // Runs on the writer, in commit order, right before the header is encoded:
  // may add entries that depend on the saves before it (lineage).
  std::function<void(Metadata*)> stamp;
  // Runs on the caller's thread inside Save(), after the state is flattened
  // (tensors in tree order) and before anything is staged or hashed: it may
  // remove tensors this save must not write (an incremental save references
  // them; the tree still names them). Its exceptions leave Save().
  std::function<void(std::vector<format::FlatTensor>*)> select;
  // Runs on the writer once the save is durable and published (committed),
  // before after_commit, with the tensors the file holds (checksums filled).
  // Same lifetime rule as after_commit.
  std::function<void(const std::vector<format::FlatTensor>&)> held;
  // Runs on the writer right after the save is durable, before after_commit;
  // an exception fails the save like a write error (sticky, raised at the
  // next Save()/Wait()). For commits that need more than this file (the
  // distributed manifest). Same lifetime rule as after_commit.
  CommitHook publish;
  // Runs on the writer right after the save is durable. It must hold (by
  // shared_ptr) everything it touches: it may run after the Engine is gone
  // when a stuck write was abandoned. Its errors are logged, not raised.
  CommitHook after_commit;
};

class Engine {
 public:
  // Validates `options` (kInvalidArgument naming "<options_name>.<field>",
  // e.g. "DefaultCheckpointerArguments.writer_threads") and resolves the
  // logger (options.logger, else the "ackpt" logger at options.log_level).
  explicit Engine(const EngineOptions& options, const std::string& options_name = "EngineOptions",
                  EngineTestHooks test_hooks = {});
  // Drains within drain_timeout_seconds; never throws. If a write is still
  // stuck then, the file system is detached (nothing the background does
  // afterwards touches the caller's Env), on_save is no longer called, and
  // the stuck work is left to finish or fail on its own.
  ~Engine();

  // Raises a pending background error (and then does nothing). Otherwise
  // snapshots `state`, queues it for `path` and returns; with force, returns
  // once it and every earlier save are durable. Returns false if kSkip
  // dropped the save.
  bool Save(const StateDict& state, int64_t index, const std::string& path, bool force,
            SaveHooks hooks);
  // Returns once the snapshot copy of every earlier save is complete (the
  // caller may then modify the saved tensors). Does not raise background
  // errors (save() and Wait() do). Without overlap_snapshot, returns at once.
  void WaitSnapshot();
  // Waits until every queued save is finished, then raises a pending error.
  void Wait();
  // Waits without raising; returns false on timeout.
  bool Drain(double timeout_seconds);
  // Throws the pending background error, if any, and clears it.
  void RaiseBackgroundError();

  EngineCounters counters() const;
  // Linux thread ids of the writer and copy threads (tests check their priority).
  std::vector<int> writer_thread_ids() const;
  std::vector<int> copy_thread_ids() const;
  // kAuto's model of this engine's saves (tests set its disk speed).
  format::codec::AutoModel& auto_model();
  // The file system as the background sees it: detached at shutdown if a
  // write is stuck. Layers above use it for their background work too.
  std::shared_ptr<Env> env() const { return env_; }
  // The logger the engine and the layers above it log to.
  const std::shared_ptr<spdlog::logger>& logger() const { return logger_; }
  const EngineOptions& options() const;

 private:
  struct Job;
  struct State;
  struct WaiterScope;
  // The pace of job's write (EngineOptions::pacing_fraction); null: unpaced.
  static std::function<void(uint64_t, uint64_t)> Pacer(State& s, Job& job);
  static void RunNext(State& s);
  static void Process(State& s, Job& job, WriteResult* written, Metadata* metadata);
  // Copies job's snapshot (hashing the sources first for a streaming save);
  // in_save: on the caller's thread inside Save(). Returns false if it failed.
  static bool Copy(State& s, Job& job, bool in_save);

  // Everything the writer threads touch lives here, heap-allocated, so an
  // abandoned drain can leak it instead of joining a thread stuck in the kernel.
  State* state_;
  std::shared_ptr<DetachableEnv> env_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace engine
}  // namespace ackpt
