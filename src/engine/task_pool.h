// A fixed pool of threads on standalone Asio, with a fork-join helper that
// is safe to call from the pool's own threads.
#pragma once

#include <asio/post.hpp>
#include <asio/thread_pool.hpp>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "ackpt/engine.h"

namespace ackpt {
namespace engine {

class TaskPool {
 public:
  // Starts `threads` threads, each named `name` (visible in top -H, ps -L and
  // /proc/self/task/*/comm; at most 15 characters) and scheduled at
  // `priority`. A priority the system refuses is reported once through
  // warn (may be null) and the thread keeps running at normal priority.
  explicit TaskPool(int threads, const std::string& name = "ackpt",
                    WriterPriority priority = WriterPriority::kNormal,
                    const std::function<void(const std::string&)>& warn = nullptr);
  ~TaskPool();  // joins
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  int threads() const { return threads_; }
  asio::thread_pool& pool() { return pool_; }
  // Linux thread ids (gettid) of the pool's threads.
  const std::vector<int>& thread_ids() const { return tids_; }

  // Runs fn(0..n-1), each index once. The caller takes part, so a task on
  // this pool may call ParallelFor without deadlocking even when every pool
  // thread is busy: helpers that start late find no work and return.
  // Rethrows the first exception after all claimed work has finished.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

 private:
  int threads_;
  asio::thread_pool pool_;
  std::vector<int> tids_;
};

// Applies `priority` to the calling thread. Returns "" or why it failed.
std::string SetCurrentThreadPriority(WriterPriority priority);

}  // namespace engine
}  // namespace ackpt
