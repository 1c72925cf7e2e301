// PreemptionGuard: signal handlers that only set a flag, and a timed final save.
#include "ackpt/preemption.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "ackpt/error.h"

namespace ackpt {

namespace {

// The handler may touch only lock-free atomics (a mutex, malloc or a logger
// could deadlock if the signal interrupts a thread holding their lock).
static_assert(std::atomic<int>::is_always_lock_free, "the signal flag must be lock-free");
static_assert(std::atomic<int64_t>::is_always_lock_free, "the request time must be lock-free");

std::atomic<int> g_signal{0};            // first signal received; 0: none
std::atomic<int64_t> g_request_ns{0};    // CLOCK_MONOTONIC of the first request; 0: none
std::atomic<bool> g_guard_alive{false};  // one guard per process

// clock_gettime is async-signal-safe (POSIX.1-2008, signal-safety(7)).
int64_t MonotonicNs() noexcept {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const int64_t ns = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  return ns > 0 ? ns : 1;  // 0 means "no request"
}

void RecordRequest(int sig) noexcept {
  int no_signal = 0;
  if (sig != 0) g_signal.compare_exchange_strong(no_signal, sig);
  int64_t none = 0;
  g_request_ns.compare_exchange_strong(none, MonotonicNs());
}

extern "C" void OnPreemptionSignal(int sig) {
  const int saved_errno = errno;  // the interrupted code may be about to read errno
  RecordRequest(sig);
  errno = saved_errno;
}

std::string SignalName(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGUSR1:
      return "SIGUSR1";
    case SIGUSR2:
      return "SIGUSR2";
    case SIGINT:
      return "SIGINT";
    case SIGHUP:
      return "SIGHUP";
    case SIGQUIT:
      return "SIGQUIT";
    case SIGXCPU:
      return "SIGXCPU";
    case 0:
      return "a request";
    default:
      return "signal " + std::to_string(sig);
  }
}

std::shared_ptr<spdlog::logger> DefaultLogger() {
  std::shared_ptr<spdlog::logger> logger = spdlog::get("ackpt");
  if (!logger) {
    try {
      logger = spdlog::stderr_color_mt("ackpt");
    } catch (const spdlog::spdlog_ex&) {
      logger = spdlog::get("ackpt");  // another thread created it first
    }
  }
  return logger;
}

}  // namespace

struct PreemptionGuard::Saved {
  std::vector<std::pair<int, struct sigaction>> actions;
};

PreemptionGuard::PreemptionGuard(PreemptionOptions options)
    : options_(std::move(options)), previous_(std::make_unique<Saved>()) {
  if (!(options_.grace_period_seconds > 0) || !std::isfinite(options_.grace_period_seconds)) {
    throw Error::InvalidArgument("PreemptionOptions.grace_period_seconds must be > 0, got " +
                                 std::to_string(options_.grace_period_seconds));
  }
  for (size_t i = 0; i < options_.signals.size(); ++i) {
    const int sig = options_.signals[i];
    if (sig <= 0 || sig >= NSIG || sig == SIGKILL || sig == SIGSTOP) {
      throw Error::InvalidArgument("PreemptionOptions.signals[" + std::to_string(i) +
                                   "] = " + std::to_string(sig) +
                                   " is not a catchable signal (SIGKILL and SIGSTOP cannot be)");
    }
    for (size_t j = 0; j < i; ++j) {
      if (options_.signals[j] == sig) {
        throw Error::InvalidArgument("PreemptionOptions.signals lists " + SignalName(sig) +
                                     " twice");
      }
    }
  }
  if (g_guard_alive.exchange(true)) {
    throw Error::InvalidArgument(
        "a PreemptionGuard is already alive in this process (signal handlers are process-wide)");
  }
  logger_ = options_.logger ? options_.logger : DefaultLogger();
  // A fresh guard starts unrequested, before its handlers can run.
  g_signal.store(0);
  g_request_ns.store(0);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = OnPreemptionSignal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (const int sig : options_.signals) {
    struct sigaction old;
    if (sigaction(sig, &sa, &old) != 0) {
      const int err = errno;
      for (auto it = previous_->actions.rbegin(); it != previous_->actions.rend(); ++it) {
        sigaction(it->first, &it->second, nullptr);
      }
      g_guard_alive.store(false);
      throw Error::InvalidArgument("PreemptionGuard: sigaction(" + SignalName(sig) +
                                   ") failed: " + std::strerror(err));
    }
    previous_->actions.emplace_back(sig, old);
  }
}

PreemptionGuard::~PreemptionGuard() {
  // Restore in reverse order, so a signal listed twice would end as before.
  for (auto it = previous_->actions.rbegin(); it != previous_->actions.rend(); ++it) {
    sigaction(it->first, &it->second, nullptr);
  }
  g_guard_alive.store(false);
}

bool PreemptionGuard::requested() const noexcept { return g_request_ns.load() != 0; }

int PreemptionGuard::signal_number() const noexcept { return g_signal.load(); }

void PreemptionGuard::request(int signal_number) noexcept { RecordRequest(signal_number); }

double PreemptionGuard::seconds_since_request() const noexcept {
  const int64_t t = g_request_ns.load();
  return t == 0 ? 0.0 : static_cast<double>(MonotonicNs() - t) / 1e9;
}

bool PreemptionGuard::SaveIfRequested(AbstractCheckpointer& checkpointer,
                                      const std::function<Checkpoint()>& make_checkpoint,
                                      int64_t index) {
  if (!requested()) return false;
  if (saved_) return true;
  return SaveIfRequested([&] { checkpointer.save(make_checkpoint(), index, /*force=*/true); });
}

bool PreemptionGuard::SaveIfRequested(const std::function<void()>& save) {
  if (!requested()) return false;
  if (saved_) return true;
  const double grace = options_.grace_period_seconds;
  const int64_t deadline_ns =
      g_request_ns.load() + static_cast<int64_t>(std::min(grace, 1e9) * 1e9);
  const std::string why = SignalName(signal_number());
  logger_->warn(
      "preempted by {}: saving a final checkpoint (force = true), {:.1f} s of the {} s "
      "grace period left",
      why, std::max(0.0, grace - seconds_since_request()), grace);

  // The save runs on this (the training) thread, where the caller's LibTorch
  // state lives; a watchdog thread enforces the deadline.
  std::mutex mu;
  std::condition_variable cv;
  bool done = false, expired = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    while (!done) {
      const int64_t now = MonotonicNs();
      if (now >= deadline_ns) {
        expired = true;
        break;
      }
      cv.wait_for(lock, std::chrono::nanoseconds(deadline_ns - now));
    }
    if (!expired) return;
    if (options_.exit_on_timeout) {
      logger_->error(
          "preempted by {}: the final checkpoint was not durable within the {} s grace period; "
          "exiting with status {} (resume from the previous checkpoint)",
          why, grace, kPreemptionTimeoutExitCode);
      logger_->flush();
      std::_Exit(kPreemptionTimeoutExitCode);
    }
    logger_->error(
        "preempted by {}: the final checkpoint is not durable after the {} s grace period; "
        "still waiting for it",
        why, grace);
  });
  auto finish = [&] {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
    watchdog.join();
  };
  const int64_t start = MonotonicNs();
  try {
    save();
  } catch (...) {
    finish();
    throw;
  }
  finish();
  save_seconds_ = static_cast<double>(MonotonicNs() - start) / 1e9;
  timed_out_ = expired;
  saved_ = true;
  logger_->warn("preempted by {}: final checkpoint durable after {:.2f} s; exit with status {}",
                why, save_seconds_, kPreemptedExitCode);
  return true;
}

}  // namespace ackpt
