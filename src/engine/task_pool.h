// A fixed pool of threads on standalone Asio, with a fork-join helper that
// is safe to call from the pool's own threads.
#pragma once

#include <asio/post.hpp>
#include <asio/thread_pool.hpp>
#include <cstddef>
#include <functional>

namespace ackpt {
namespace engine {

class TaskPool {
 public:
  explicit TaskPool(int threads);
  ~TaskPool();  // joins
  TaskPool(const TaskPool&) = delete;
  TaskPool& operator=(const TaskPool&) = delete;

  int threads() const { return threads_; }
  asio::thread_pool& pool() { return pool_; }

  // Runs fn(0..n-1), each index once. The caller takes part, so a task on
  // this pool may call ParallelFor without deadlocking even when every pool
  // thread is busy: helpers that start late find no work and return.
  // Rethrows the first exception after all claimed work has finished.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

 private:
  int threads_;
  asio::thread_pool pool_;
};

}  // namespace engine
}  // namespace ackpt
