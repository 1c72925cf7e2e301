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

#include "ackpt/checkpointer.h"
#include "engine/snapshot.h"
#include "engine/staging_pool.h"
#include "engine/task_pool.h"

namespace ackpt {
namespace engine {

struct EngineOptions {
  WriteOptions write;  // compression, level, chunk size, fsync, user metadata
  int writer_threads = 0;
  int snapshot_threads = 0;
  uint64_t staging_budget_bytes = 0;
  bool pin_host_memory = true;
  BackpressurePolicy backpressure = BackpressurePolicy::kBlock;
  double drain_timeout_seconds = 600;
  Env* env = nullptr;
  std::shared_ptr<spdlog::logger> logger;
  std::function<void(const SaveStats&)> on_save;
};

class Engine {
 public:
  explicit Engine(EngineOptions options);
  // Drains within drain_timeout_seconds; never throws.
  ~Engine();

  // Raises a pending background error (and then does nothing). Otherwise
  // snapshots `state`, queues it for `path` and returns; with force, returns
  // once it and every earlier save are durable. Returns false if kSkip
  // dropped the save. after_commit (optional) runs on the writer pool right
  // after this save is durable (retention); its errors are logged, not raised.
  bool Save(const StateDict& state, int64_t index, const std::string& path, bool force,
            const std::map<std::string, std::string>& internal_metadata,
            std::function<void()> after_commit = nullptr);
  // Waits until every queued save is finished, then raises a pending error.
  void Wait();
  // Waits without raising; returns false on timeout.
  bool Drain(double timeout_seconds);
  // Throws the pending background error, if any, and clears it.
  void RaiseBackgroundError();

  CheckpointerCounters counters() const;
  spdlog::logger& logger() const { return *logger_; }

 private:
  struct Job;
  struct State;
  static void RunNext(State& s);
  static void Process(State& s, Job& job);

  // Everything the writer threads touch lives here, heap-allocated, so an
  // abandoned drain can leak it instead of joining a thread stuck in the kernel.
  State* state_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace engine
}  // namespace ackpt
