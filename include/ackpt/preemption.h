// Preemption: save a final checkpoint when the cluster asks the job to leave.
//
// Schedulers (Slurm, Kubernetes, cloud spot instances) send SIGTERM, or a
// configured signal such as SIGUSR1, some time before they kill a job. A
// PreemptionGuard installs handlers for those signals that only record that
// one arrived (async-signal-safe: a lock-free atomic store, nothing else);
// the training loop asks between steps and, once preempted, saves with
// force = true within a grace period and exits with kPreemptedExitCode:
//
//   ackpt::PreemptionGuard guard;                      // SIGTERM, SIGUSR1; 60 s grace
//   for (int64_t step = start; step < total; ++step) {
//     train_one_step();
//     if (guard.SaveIfRequested(checkpointer, [&] { return MakeCheckpoint(step + 1); },
//                               step + 1)) {
//       return ackpt::kPreemptedExitCode;             // the checkpoint is durable
//     }
//   }
//
// With ackpt::Trainer, call trainer.request_stop() once guard.requested() is
// true (e.g. from ModuleInterface::on_end_train_step), and after train()
// returns save through SaveIfRequested (examples/train_demo.cc does this).
//
// Opt-in: nothing is installed unless a PreemptionGuard is constructed. The
// previous handlers are restored when it is destroyed. Only one guard may be
// alive in a process at a time (signal dispositions are process-wide).
#pragma once

#include <csignal>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "ackpt/checkpointer.h"
#include "ackpt/export.h"

namespace spdlog {
class logger;
}

namespace ackpt {

// The exit status of a run that was preempted and whose final checkpoint is
// durable: 75, EX_TEMPFAIL of <sysexits.h> ("temporary failure; the user is
// invited to retry"). It differs from 0 (finished), 1 (error), 2 (usage
// error) and 128 + N (killed by signal N, e.g. 137 for SIGKILL, 143 for an
// unhandled SIGTERM), so a job script can requeue exactly these runs and
// resume them from the checkpoint.
inline constexpr int kPreemptedExitCode = 75;

// The exit status used when the final checkpoint was not durable within the
// grace period and PreemptionOptions::exit_on_timeout is set: the process
// ends at once (std::_Exit) and the resume point is the previous durable
// checkpoint (the unfinished file is a hidden temp file that is never read
// as a checkpoint and is removed by the next checkpointer in that directory).
inline constexpr int kPreemptionTimeoutExitCode = 76;

struct PreemptionOptions {
  // Signals that request preemption. Each must be a catchable signal
  // (not SIGKILL or SIGSTOP), given at most once. Default: {SIGTERM, SIGUSR1}.
  std::vector<int> signals = {SIGTERM, SIGUSR1};
  // Seconds, counted from the arrival of the first signal, within which the
  // final checkpoint must be durable. Set it below the scheduler's kill delay
  // (Slurm's KillWait, Kubernetes' terminationGracePeriodSeconds) minus the
  // time one training step takes. Must be > 0. Default: 60.
  double grace_period_seconds = 60;
  // When the save is not durable within the grace period: true ends the
  // process with std::_Exit(kPreemptionTimeoutExitCode) the moment the period
  // runs out (the scheduler would kill it soon anyway, and ending it
  // ourselves gives a distinct exit status); false logs an error, lets the
  // save finish, and SaveIfRequested() returns true with timed_out() set.
  // Default: true.
  bool exit_on_timeout = true;
  // Logger for the preemption messages; null: the "ackpt" logger. Default: null.
  std::shared_ptr<spdlog::logger> logger;
};

class ACKPT_EXPORT PreemptionGuard {
 public:
  // Validates the options (throws Error kInvalidArgument naming the field)
  // and installs the handlers with sigaction (SA_RESTART, so interrupted
  // system calls in the training loop are restarted). Throws
  // kInvalidArgument if another PreemptionGuard is alive.
  explicit PreemptionGuard(PreemptionOptions options = {});
  // Restores the handlers that were installed before. A signal that arrives
  // after this goes to those handlers (by default: termination).
  ~PreemptionGuard();
  PreemptionGuard(const PreemptionGuard&) = delete;
  PreemptionGuard& operator=(const PreemptionGuard&) = delete;

  // True once one of the signals arrived (or request() was called). Cheap:
  // one atomic load, meant to be called after every step.
  bool requested() const noexcept;
  // The first signal that arrived; 0 if none, or if request() was called
  // without one.
  int signal_number() const noexcept;
  // Marks preemption as requested without a signal (e.g. when a scheduler
  // API announces it); the grace period starts now. Idempotent.
  void request(int signal_number = 0) noexcept;
  // Seconds since the request; 0 before any.
  double seconds_since_request() const noexcept;

  // Call between steps. If preemption was not requested, returns false at
  // once and calls nothing. Otherwise calls make_checkpoint() and
  // checkpointer.save(checkpoint, index, /*force=*/true), which returns once
  // the checkpoint (and every earlier save) is durable, and returns true:
  // the caller should stop training and exit with exit_code(). Errors from
  // make_checkpoint() or save() propagate. See
  // PreemptionOptions::exit_on_timeout for a save that outlasts the grace
  // period. After one successful save, later calls return true without
  // saving again.
  bool SaveIfRequested(AbstractCheckpointer& checkpointer,
                       const std::function<Checkpoint()>& make_checkpoint, int64_t index);
  // The same with a caller-supplied save action, which must make the
  // checkpoint durable before it returns (e.g. a save with force = true).
  bool SaveIfRequested(const std::function<void()>& save);

  // True when a save through SaveIfRequested() has completed.
  bool saved() const noexcept { return saved_; }
  // Seconds the completed save took; 0 before it.
  double save_seconds() const noexcept { return save_seconds_; }
  // True when that save outlasted the grace period (exit_on_timeout = false).
  bool timed_out() const noexcept { return timed_out_; }
  // The status a preempted run should exit with: kPreemptedExitCode.
  static constexpr int exit_code() noexcept { return kPreemptedExitCode; }
  const PreemptionOptions& options() const noexcept { return options_; }

 private:
  struct Saved;  // the previous dispositions (struct sigaction), per signal

  PreemptionOptions options_;
  std::unique_ptr<Saved> previous_;
  std::shared_ptr<spdlog::logger> logger_;
  bool saved_ = false;
  bool timed_out_ = false;
  double save_seconds_ = 0;
};

}  // namespace ackpt
