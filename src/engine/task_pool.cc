#include "engine/task_pool.h"

#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>

namespace ackpt {
namespace engine {

TaskPool::TaskPool(int threads) : threads_(threads), pool_(static_cast<size_t>(threads)) {}

TaskPool::~TaskPool() { pool_.join(); }

namespace {
struct ForState {
  explicit ForState(size_t n, const std::function<void(size_t)>& f) : total(n), fn(f) {}
  const size_t total;
  std::function<void(size_t)> fn;
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::condition_variable cv;
  size_t done = 0;  // indices finished (run or abandoned after a failure)
  std::exception_ptr error;

  // Claims and runs indices until none are left.
  void Work() {
    for (;;) {
      size_t i = next.fetch_add(1);
      if (i >= total) return;
      std::exception_ptr err;
      bool skip;
      {
        std::lock_guard<std::mutex> lock(mu);
        skip = error != nullptr;
      }
      if (!skip) {
        try {
          fn(i);
        } catch (...) {
          err = std::current_exception();
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      if (err && !error) error = err;
      if (++done == total) cv.notify_all();
    }
  }
};
}  // namespace

void TaskPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (n == 1) {
    fn(0);
    return;
  }
  auto state = std::make_shared<ForState>(n, fn);
  const size_t helpers = std::min<size_t>(n - 1, static_cast<size_t>(threads_));
  for (size_t h = 0; h < helpers; ++h) {
    asio::post(pool_, [state] { state->Work(); });
  }
  state->Work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done == state->total; });
  if (state->error) std::rethrow_exception(state->error);
}

}  // namespace engine
}  // namespace ackpt
