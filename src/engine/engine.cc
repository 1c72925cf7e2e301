#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <asio/post.hpp>
#include <asio/strand.hpp>
#include <thread>

#include "ackpt/error.h"
#include "format/internal.h"

namespace ackpt {
namespace engine {

namespace {
using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
// Below this size the snapshot copy stays on the calling thread.
constexpr uint64_t kParallelCopyBytes = uint64_t{16} << 20;
}  // namespace

struct Engine::Job {
  uint64_t seq = 0;
  std::string path;
  std::vector<format::FlatTensor> tensors;
  std::string tree_json;
  SaveHooks hooks;
  std::unique_ptr<StagingLease> staging;
  Clock::time_point start;
  SaveStats stats;
};

struct Engine::State {
  State(const EngineOptions& o, std::shared_ptr<spdlog::logger> log,
        std::function<void(const std::string&)> warn)
      : options(o),
        logger(std::move(log)),
        writers(format::ResolveThreads(o.writer_threads)),
        strand(asio::make_strand(writers.pool())),
        staging(o.staging_budget_bytes, o.pin_host_memory, std::move(warn)) {
    const int copy_threads =
        o.snapshot_threads > 0 ? o.snapshot_threads : std::min(4, format::ResolveThreads(0));
    if (copy_threads > 1) copiers = std::make_unique<TaskPool>(copy_threads - 1);
  }
  // Handlers still queued (for saves that kReplacePending dropped) touch this
  // state, so they must finish before any member is destroyed.
  ~State() { writers.pool().join(); }
  const EngineOptions options;
  std::shared_ptr<DetachableEnv> env;  // options.env points at it
  const std::shared_ptr<spdlog::logger> logger;
  TaskPool writers;
  asio::strand<asio::thread_pool::executor_type> strand;
  std::unique_ptr<TaskPool> copiers;
  StagingPool staging;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Job>> pending;  // queued, not started
  uint64_t submitted = 0;                    // last seq handed out
  uint64_t finished = 0;                     // every seq <= finished is done
  size_t in_flight = 0;                      // queued + writing
  std::map<uint64_t, Error> failures;        // failed, not yet reported
  std::atomic<bool> cancel{false};
  EngineCounters counters;
  // Held while a callback (after_commit, on_save) runs; the destructor takes
  // it to turn callbacks off when it abandons stuck work.
  std::timed_mutex callback_mu;
  bool callbacks_enabled = true;  // guarded by callback_mu
};

Engine::Engine(EngineOptions options) {
  env_ = DetachableEnv::Create(options.env ? options.env : Env::Default());
  options.env = env_.get();
  logger_ = options.logger ? options.logger : spdlog::default_logger();
  format::ValidateWriteOptions(options.write);
  auto logger = logger_;
  state_ =
      new State(options, logger_, [logger](const std::string& msg) { logger->warn("{}", msg); });
  state_->env = env_;
}

Engine::~Engine() {
  bool drained = false;
  try {
    drained = Drain(state_->options.drain_timeout_seconds);
  } catch (...) {
  }
  if (!drained) {
    state_->cancel.store(true);
    bool stopped = false;
    try {
      stopped = Drain(5.0);
      logger_->error("saves still pending after the {} s drain timeout were abandoned",
                     state_->options.drain_timeout_seconds);
    } catch (...) {
    }
    if (!stopped) {
      // A write is stuck (e.g. in the kernel). Leak the pool rather than hang,
      // and cut the background off from everything the caller owns.
      if (state_->callback_mu.try_lock_for(std::chrono::seconds(1))) {
        state_->callbacks_enabled = false;
        state_->callback_mu.unlock();
      }
      if (!env_->Detach(1.0)) {
        try {
          logger_->error("a file-system call was still in progress when the save engine shut down");
        } catch (...) {
        }
      }
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    for (auto& f : state_->failures) {
      try {
        logger_->error("unreported background error at shutdown: {}", f.second.what());
      } catch (...) {
      }
    }
  }
  delete state_;
}

void Engine::RaiseBackgroundError() {
  std::lock_guard<std::mutex> lock(state_->mu);
  if (state_->failures.empty()) return;
  Error first = state_->failures.begin()->second;
  std::string msg;
  for (const auto& f : state_->failures) {
    if (!msg.empty()) msg += "; ";
    msg += f.second.message();
  }
  state_->failures.clear();
  throw Error(first.code(), msg);
}

bool Engine::Save(const StateDict& state, int64_t index, const std::string& path, bool force,
                  SaveHooks hooks) {
  const auto t0 = Clock::now();
  RaiseBackgroundError();
  State& s = *state_;
  const EngineOptions& opts = s.options;
  auto job = std::make_unique<Job>();
  job->start = t0;
  job->path = path;
  job->hooks = std::move(hooks);
  job->stats.index = index;
  job->stats.path = path;
  job->stats.forced = force;

  format::Flatten(state, &job->tensors, &job->tree_json);
  bool any_device = false;
  const uint64_t bytes = PlanSnapshot(&job->tensors, &any_device);
  for (const auto& t : job->tensors) job->stats.bytes += t.nbytes;
  const bool cuda_pinned = any_device && opts.pin_host_memory;

  // Staging memory, under the backpressure policy.
  const bool block = force || opts.backpressure == BackpressurePolicy::kBlock;
  job->staging = s.staging.Acquire(bytes, cuda_pinned, /*wait=*/block);
  if (!job->staging && opts.backpressure == BackpressurePolicy::kSkip) {
    uint64_t skipped;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      skipped = ++s.counters.saves_skipped;
    }
    logger_->warn(
        "skipped save of index {} (staging budget full, {} saves in flight); {} skipped so far",
        index, s.in_flight, skipped);
    return false;
  }
  if (!job->staging) {  // kReplacePending
    std::unique_ptr<Job> dropped;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (!s.pending.empty() && !s.pending.back()->stats.forced) {
        dropped = std::move(s.pending.back());
        s.pending.pop_back();
        ++s.counters.saves_replaced;
        --s.in_flight;
      }
    }
    if (dropped) {
      logger_->warn("save of index {} replaced the queued save of index {}", index,
                    dropped->stats.index);
      dropped.reset();  // returns its staging
      std::lock_guard<std::mutex> lock(s.mu);
      // The dropped save counts as finished for waiters once earlier ones are.
      s.cv.notify_all();
    }
    job->staging = s.staging.Acquire(bytes, cuda_pinned, /*wait=*/true);
  }

  const auto t1 = Clock::now();
  CopySnapshot(&job->tensors, job->staging->data(),
               bytes >= kParallelCopyBytes ? s.copiers.get() : nullptr);
  const auto t2 = Clock::now();
  job->stats.snapshot_seconds = Seconds(t2 - t1);

  uint64_t seq;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    seq = ++s.submitted;
    job->seq = seq;
    job->stats.queue_depth = s.in_flight;
    ++s.in_flight;
    ++s.counters.saves_requested;
    job->stats.stall_seconds = Seconds(Clock::now() - t0);
    s.pending.push_back(std::move(job));
  }
  State* shared = state_;
  asio::post(s.strand, [shared] { RunNext(*shared); });
  if (!force) return true;

  std::unique_lock<std::mutex> lock(s.mu);
  s.cv.wait(lock, [&] { return s.finished >= seq; });
  lock.unlock();
  RaiseBackgroundError();
  return true;
}

void Engine::RunNext(State& s) {
  std::unique_ptr<Job> job;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.pending.empty()) return;  // it was replaced
    job = std::move(s.pending.front());
    s.pending.pop_front();
  }
  CommitInfo commit;
  Process(s, *job, &commit);
  job->staging.reset();
  {
    std::lock_guard<std::timed_mutex> lock(s.callback_mu);
    if (s.callbacks_enabled) {
      if (job->stats.ok && job->hooks.after_commit) {
        try {
          job->hooks.after_commit(commit);
        } catch (const std::exception& e) {
          s.logger->error("after saving index {}: {}", job->stats.index, e.what());
        }
      }
      if (s.options.on_save) {
        try {
          s.options.on_save(job->stats);
        } catch (const std::exception& e) {
          s.logger->error("on_save callback threw: {}", e.what());
        } catch (...) {
          s.logger->error("on_save callback threw");
        }
      }
    }
  }
  // Last touch of `s`: once in_flight drops, the destructor may free it.
  std::lock_guard<std::mutex> lock(s.mu);
  if (job->stats.ok) {
    ++s.counters.saves_completed;
  } else {
    ++s.counters.saves_failed;
  }
  // Saves run in seq order; replaced seqs in between are skipped over.
  s.finished = job->seq;
  --s.in_flight;
  s.cv.notify_all();
}

void Engine::Process(State& s, Job& job, CommitInfo* commit) {
  const EngineOptions& opts = s.options;
  spdlog::logger& log = *s.logger;
  try {
    if (s.cancel.load()) throw Error::TimedOut("abandoned at shutdown before it started");
    std::map<std::string, std::string> metadata = job.hooks.metadata;
    if (job.hooks.stamp) job.hooks.stamp(&metadata);
    TaskPool& pool = s.writers;
    const format::EncodeResult r = format::EncodeAndCommit(
        &job.tensors, job.tree_json, opts.write, metadata, job.path, opts.env,
        [&pool](size_t n, const std::function<void(size_t)>& fn) { pool.ParallelFor(n, fn); },
        &s.cancel);
    commit->index = job.stats.index;
    commit->path = job.path;
    commit->compressed = opts.write.compression != Compression::kNone;
    commit->tensor_bytes = r.tensor_bytes;
    commit->logical_bytes = r.logical_bytes;
    commit->file_bytes = r.file_bytes;
    commit->header_xxh3 = r.header_xxh3;
    commit->metadata = std::move(metadata);
    job.stats.hash_seconds = r.hash_seconds;
    job.stats.file_bytes = r.file_bytes;
    job.stats.compress_seconds = r.compress_seconds;
    job.stats.write_seconds = r.write_seconds;
    job.stats.end_to_end_seconds = Seconds(Clock::now() - job.start);
    {
      std::lock_guard<std::mutex> lock(s.mu);
      job.stats.skipped_total = s.counters.saves_skipped;
      job.stats.replaced_total = s.counters.saves_replaced;
    }
    log.info(
        "saved index {} to {} ({:.1f} MB, ratio {:.3f}; stall {:.1f} ms, write {:.1f} ms, "
        "end-to-end {:.1f} ms)",
        job.stats.index, job.path, job.stats.bytes / 1e6,
        job.stats.file_bytes ? static_cast<double>(r.logical_bytes) / job.stats.file_bytes : 1.0,
        job.stats.stall_seconds * 1e3, job.stats.write_seconds * 1e3,
        job.stats.end_to_end_seconds * 1e3);
  } catch (const std::exception& e) {
    const auto* ackpt_error = dynamic_cast<const Error*>(&e);
    const Error::Code code = ackpt_error ? ackpt_error->code() : Error::Code::kIOError;
    const std::string cause = ackpt_error ? ackpt_error->message() : e.what();
    Error err(code, "background save of index " + std::to_string(job.stats.index) + " to '" +
                        job.path + "' failed: " + cause);
    job.stats.ok = false;
    job.stats.error = err.what();
    job.stats.end_to_end_seconds = Seconds(Clock::now() - job.start);
    log.error("{}", err.what());
    std::lock_guard<std::mutex> lock(s.mu);
    s.failures.emplace(job.seq, err);
  }
}

bool Engine::Drain(double timeout_seconds) {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(std::max(0.0, timeout_seconds)));
  return s.cv.wait_until(lock, deadline, [&] { return s.in_flight == 0; });
}

void Engine::Wait() {
  State& s = *state_;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait(lock, [&] { return s.in_flight == 0; });
  }
  RaiseBackgroundError();
}

EngineCounters Engine::counters() const {
  EngineCounters c;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    c = state_->counters;
  }
  c.staging_bytes_reserved = state_->staging.reserved();
  c.staging_bytes_peak = state_->staging.peak();
  c.staging_budget_bytes = state_->staging.budget();
  return c;
}

}  // namespace engine
}  // namespace ackpt
