#include "engine/task_pool.h"

#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>

namespace ackpt {
namespace engine {

std::string SetCurrentThreadPriority(WriterPriority priority) {
  switch (priority) {
    case WriterPriority::kNormal:
      return "";
    case WriterPriority::kLow: {
      // On Linux the nice value is per thread: PRIO_PROCESS with a thread id
      // changes only that thread. Raising it needs no privilege.
      const pid_t tid = static_cast<pid_t>(::syscall(SYS_gettid));
      if (::setpriority(PRIO_PROCESS, static_cast<id_t>(tid), 19) != 0)
        return std::string("setpriority(nice 19): ") + std::strerror(errno);
      return "";
    }
    case WriterPriority::kIdle: {
      sched_param param{};
      param.sched_priority = 0;
      const int rc = ::pthread_setschedparam(::pthread_self(), SCHED_IDLE, &param);
      if (rc != 0) return std::string("pthread_setschedparam(SCHED_IDLE): ") + std::strerror(rc);
      return "";
    }
  }
  return "unknown priority";
}

TaskPool::TaskPool(int threads, const std::string& name, WriterPriority priority,
                   const std::function<void(const std::string&)>& warn)
    : threads_(threads), pool_(static_cast<size_t>(threads)) {
  // One setup task per thread. Each blocks until all have started, so no
  // thread can run two of them: every thread is named and prioritized exactly
  // once, before any real work is posted.
  struct Setup {
    std::mutex mu;
    std::condition_variable cv;
    int arrived = 0;
    std::vector<int> tids;
    std::string error;
  };
  auto setup = std::make_shared<Setup>();
  const std::string thread_name = name.substr(0, 15);
  for (int i = 0; i < threads; ++i) {
    asio::post(pool_, [setup, threads, thread_name, priority] {
      ::pthread_setname_np(::pthread_self(), thread_name.c_str());
      const std::string err = SetCurrentThreadPriority(priority);
      std::unique_lock<std::mutex> lock(setup->mu);
      setup->tids.push_back(static_cast<int>(::syscall(SYS_gettid)));
      if (!err.empty() && setup->error.empty()) setup->error = err;
      if (++setup->arrived == threads) setup->cv.notify_all();
      setup->cv.wait(lock, [&] { return setup->arrived == threads; });
    });
  }
  std::unique_lock<std::mutex> lock(setup->mu);
  setup->cv.wait(lock, [&] { return setup->arrived == threads; });
  tids_ = setup->tids;
  if (!setup->error.empty() && warn) {
    warn("cannot lower the priority of the " + thread_name + " threads (" + setup->error +
         "); they run at normal priority");
  }
}

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
