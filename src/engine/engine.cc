#include "engine/engine.h"

#include <spdlog/spdlog.h>

#include <asio/post.hpp>
#include <asio/strand.hpp>
#include <cstdio>
#include <thread>

#include "ackpt/error.h"
#include "format/auto_policy.h"
#include "format/flatten.h"
#include "format/parallel.h"
#include "format/writer.h"
#include "util/logger.h"

namespace ackpt {
namespace engine {

namespace {
using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
// Below this size the snapshot copy stays on the calling thread.
constexpr uint64_t kParallelCopyBytes = uint64_t{16} << 20;
// A streaming copy publishes at least every this many chunks, so the writer
// starts on the first bytes while the copy goes on.
constexpr size_t kStreamBatchChunks = 4;

StagingOptions StagingOptionsFor(const EngineOptions& o,
                                 const std::function<void(const std::string&)>& warn) {
  StagingOptions s;
  s.budget = o.staging_budget_bytes;
  s.chunk_bytes = StagingChunkBytes(o.chunk_size, o.staging_budget_bytes);
  s.pin = o.pin_host_memory;
  s.warn = warn;
  return s;
}

std::string MB(uint64_t n) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MB", n / 1e6);
  return buf;
}
}  // namespace

struct Engine::Job {
  uint64_t seq = 0;
  std::string path;
  std::vector<format::FlatTensor> tensors;  // in file order (PlanSnapshot)
  std::string tree_json;
  SaveHooks hooks;
  // The data section in staging chunks: the copy fills it, the writer
  // drains it. Destroyed (returning its chunks) only after the copy finished.
  std::unique_ptr<SnapshotStream> stream;
  // Did not fit the free staging budget at save(): the copy hashes the
  // caller's tensors first (the header holds the checksums and is written
  // before the ring can hold every byte), then streams.
  bool streaming = false;
  // Otherwise the copy hashes as it copies; the writer finishes what it
  // could not (CopyHashes).
  std::unique_ptr<CopyHashes> hashes;
  Clock::time_point start;
  SaveStats stats;
  // The moment save() was called (version counters, device events).
  SnapshotPoint point;
  // Guarded by State::mu: the checksums are in `tensors` (streaming), and
  // the copy has finished (and touches the job no more).
  bool hashed = false;
  bool copied = false;
  // Seconds to spread the write over (EngineOptions::pacing_fraction); 0: as fast as it can.
  double pace_seconds = 0;
};

struct Engine::State {
  State(const EngineOptions& o, EngineTestHooks hooks, std::shared_ptr<spdlog::logger> log,
        std::function<void(const std::string&)> warn)
      : options(o),
        test_hooks(std::move(hooks)),
        logger(std::move(log)),
        writers(format::ResolveThreads(o.writer_threads), "ackpt-writer", o.writer_priority, warn),
        strand(asio::make_strand(writers.pool())),
        staging(StagingOptionsFor(o, warn)) {
    const int copy_threads =
        o.snapshot_threads > 0 ? o.snapshot_threads : std::min(4, format::ResolveThreads(0));
    // Inside save() the calling thread copies too. An overlapped copy runs on
    // the pool alone, with as many threads as helped inside save(): the
    // caller's own share goes to its training step, and a copy thread more
    // than the idle cores only preempts the trainer (measured on 2 cores:
    // save() took ~9 ms instead of ~0.5 ms with 2 copy threads).
    const int pool_threads = o.overlap_snapshot ? std::max(1, copy_threads - 1) : copy_threads - 1;
    if (pool_threads > 0)
      copiers = std::make_unique<TaskPool>(pool_threads, "ackpt-copy", o.writer_priority, warn);
  }
  // Handlers still queued (for saves that kReplacePending dropped) touch this
  // state, so they must finish before any member is destroyed.
  ~State() {
    writers.pool().join();
    if (copiers) copiers->pool().join();
  }
  const EngineOptions options;
  const EngineTestHooks test_hooks;
  std::shared_ptr<DetachableEnv> env;  // options.env points at it
  const std::shared_ptr<spdlog::logger> logger;
  TaskPool writers;
  asio::strand<asio::thread_pool::executor_type> strand;
  std::unique_ptr<TaskPool> copiers;
  StagingPool staging;
  // kAuto's model of this engine's disk and codecs (every save feeds it).
  format::codec::AutoModel auto_model;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Job>> pending;  // queued, not started
  uint64_t submitted = 0;                    // last seq handed out
  uint64_t finished = 0;                     // every seq <= finished is done
  size_t in_flight = 0;                      // queued + writing
  size_t copying = 0;                        // snapshot copies not finished
  std::map<uint64_t, Error> failures;        // failed, not yet reported
  // Pacing: when Save() was last called, the average interval between its
  // calls (0 until there are two), and the callers waiting for the writers
  // (Wait(), forced saves, Drain()), which stop any pacing.
  Clock::time_point last_save_call{};
  double save_interval_seconds = 0;
  int waiters = 0;
  std::atomic<bool> cancel{false};
  EngineCounters counters;
  // Held while a callback (after_commit, on_save) runs; the destructor takes
  // it to turn callbacks off when it abandons stuck work.
  std::timed_mutex callback_mu;
  bool callbacks_enabled = true;  // guarded by callback_mu
};

// Counts a caller waiting for the writers (under State::mu) for as long as
// it waits, and wakes a pacing writer so it stops sleeping.
struct Engine::WaiterScope {
  explicit WaiterScope(State* s) : s(s) {
    ++s->waiters;
    s->cv.notify_all();
  }
  ~WaiterScope() { --s->waiters; }
  State* s;
};

void ValidateEngineOptions(const EngineOptions& o, const std::string& name) {
  if (o.writer_threads < 0)
    throw Error::InvalidArgument(name + ".writer_threads must be >= 0, got " +
                                 std::to_string(o.writer_threads));
  if (o.snapshot_threads < 0)
    throw Error::InvalidArgument(name + ".snapshot_threads must be >= 0, got " +
                                 std::to_string(o.snapshot_threads));
  if (!(o.drain_timeout_seconds >= 0))
    throw Error::InvalidArgument(name + ".drain_timeout_seconds must be >= 0");
  if (!(o.pacing_fraction >= 0 && o.pacing_fraction <= 1))
    throw Error::InvalidArgument(name + ".pacing_fraction must be in [0, 1], got " +
                                 std::to_string(o.pacing_fraction));
  format::ValidateWriteOptions(o);
}

Engine::Engine(const EngineOptions& options, const std::string& options_name,
               EngineTestHooks test_hooks) {
  ValidateEngineOptions(options, options_name);
  logger_ = ResolveLogger(options.log_level, options.logger, options_name + ".log_level");
  env_ = DetachableEnv::Create(options.env ? options.env : Env::Default());
  EngineOptions o = options;
  o.env = env_.get();  // the background sees the file system through env_
  o.logger = logger_;
  auto logger = logger_;
  state_ = new State(o, std::move(test_hooks), logger_,
                     [logger](const std::string& msg) { logger->warn("{}", msg); });
  state_->env = env_;
}

const EngineOptions& Engine::options() const { return state_->options; }

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
  // One snapshot copy at a time: a save is the implicit fence of the one before.
  WaitSnapshot();
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
  if (job->hooks.select) job->hooks.select(&job->tensors);
  bool any_device = false;
  const uint64_t bytes = PlanSnapshot(&job->tensors, &any_device);
  job->stats.bytes = bytes;
  job->point = RecordSnapshotPoint(job->tensors);
  const bool cuda_pinned = any_device && opts.pin_host_memory;
  s.staging.NoteStateBytes(bytes);
  job->stream = std::make_unique<SnapshotStream>(&s.staging, bytes, cuda_pinned);

  // Staging, under the backpressure policy. A save that fits the free budget
  // takes all its chunks now; one that does not streams through the ring.
  bool fits = job->stream->TryTakeAll();
  // Chunks held by earlier saves: what "the budget is full" means to kSkip
  // and kReplacePending (a state larger than the whole budget streams).
  const bool others_hold = !fits && s.staging.chunks_in_use() > 0;
  if (others_hold && !force && opts.backpressure == BackpressurePolicy::kSkip) {
    uint64_t skipped;
    size_t in_flight;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      skipped = ++s.counters.saves_skipped;
      in_flight = s.in_flight;
    }
    logger_->warn(
        "skipped save of index {} (staging budget full, {} saves in flight); {} skipped so far",
        index, in_flight, skipped);
    return false;
  }
  if (others_hold && !force && opts.backpressure == BackpressurePolicy::kReplacePending) {
    std::unique_ptr<Job> dropped;
    {
      std::lock_guard<std::mutex> lock(s.mu);
      if (!s.pending.empty() && !s.pending.back()->stats.forced && s.pending.back()->copied) {
        dropped = std::move(s.pending.back());
        s.pending.pop_back();
        ++s.counters.saves_replaced;
        --s.in_flight;
      }
    }
    if (dropped) {
      logger_->warn("save of index {} replaced the queued save of index {}", index,
                    dropped->stats.index);
      dropped.reset();  // returns its chunks
      {
        std::lock_guard<std::mutex> lock(s.mu);
        // The dropped save counts as finished for waiters once earlier ones are.
        s.cv.notify_all();
      }
      fits = job->stream->TryTakeAll();
    }
  }
  if (!fits) {
    job->streaming = true;
    const uint64_t budget = s.staging.budget();
    const uint64_t held = s.staging.chunks_in_use() * s.staging.chunk_bytes();
    const std::string why =
        bytes > budget
            ? "the state (" + MB(bytes) + ") is larger than the staging budget (" + MB(budget) + ")"
            : "earlier saves still hold " + MB(held) + " of the " + MB(budget) + " staging budget";
    logger_->info(
        "save of index {} streams through the staging ring in {} chunks of {}: {}; {} returns "
        "once its last chunk is copied",
        index, job->stream->num_chunks(), MB(s.staging.chunk_bytes()), why,
        opts.overlap_snapshot && !force ? "wait_snapshot()" : "save()");
  }

  if (!job->streaming) job->hashes = std::make_unique<CopyHashes>(job->tensors.size());

  // The job is queued before its copy, so the writer can drain a streaming
  // copy's chunks as they fill.
  const bool overlap = opts.overlap_snapshot && !force;
  job->stats.overlapped = overlap;
  Job* copy = job.get();
  uint64_t seq;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.submitted > 0) {
      const double since = Seconds(t0 - s.last_save_call);
      s.save_interval_seconds =
          s.save_interval_seconds > 0 ? 0.7 * s.save_interval_seconds + 0.3 * since : since;
    }
    s.last_save_call = t0;
    if (!force && !job->streaming)
      job->pace_seconds = opts.pacing_fraction * s.save_interval_seconds;
    seq = ++s.submitted;
    job->seq = seq;
    job->stats.queue_depth = s.in_flight;
    ++s.in_flight;
    ++s.copying;
    ++s.counters.saves_requested;
    if (job->streaming) ++s.counters.saves_streamed;
    if (overlap) job->stats.stall_seconds = Seconds(Clock::now() - t0);
    s.pending.push_back(std::move(job));
  }
  State* shared = state_;
  asio::post(s.strand, [shared] { RunNext(*shared); });
  // The job is freed only after its copy has finished (RunNext waits), so
  // `copy` outlives the copy.
  if (overlap) {
    asio::post(s.copiers->pool(), [shared, copy] { Copy(*shared, *copy, /*in_save=*/false); });
    return true;
  }
  const bool copied = Copy(s, *copy, /*in_save=*/true);  // `copy` may be gone once this returns
  if (!force && copied) return true;
  // Forced, or the copy failed (e.g. another thread modified a tensor inside
  // save()): wait for the writer and report.
  {
    std::unique_lock<std::mutex> lock(s.mu);
    WaiterScope waiting(&s);
    s.cv.wait(lock, [&] { return s.finished >= seq; });
  }
  RaiseBackgroundError();
  return true;
}

bool Engine::Copy(State& s, Job& job, bool in_save) {
  const auto t0 = Clock::now();
  std::exception_ptr error;
  bool torn = false;
  TaskPool* pool = job.stats.bytes >= kParallelCopyBytes || !in_save ? s.copiers.get() : nullptr;
  try {
    if (s.test_hooks.before_copy) s.test_hooks.before_copy(job.stats.index);
    if (job.streaming) {
      const std::vector<uint8_t*> bounce = job.stream->Take(0, 1);
      HashSources(&job.tensors, bounce.empty() ? nullptr : bounce[0], job.stream->chunk_bytes(),
                  pool);
      std::lock_guard<std::mutex> lock(s.mu);
      job.stats.hash_seconds = Seconds(Clock::now() - t0);
      job.stats.late_hash_bytes = job.stats.bytes;  // a pass of its own over the sources
      job.hashed = true;
      s.cv.notify_all();
    }
    CopySnapshot(&job.tensors, job.stream.get(), pool, &job.point,
                 job.streaming ? kStreamBatchChunks : 0, job.hashes.get());
    if (s.test_hooks.after_copy) s.test_hooks.after_copy(job.stats.index, job.stream.get());
  } catch (const TornSnapshot&) {
    torn = true;
    error = std::current_exception();
  } catch (...) {
    error = std::current_exception();
  }
  if (error) job.stream->Fail(error);
  // Last touch of `job`: once `copied` is set its writer may free it.
  std::lock_guard<std::mutex> lock(s.mu);
  job.stats.snapshot_seconds = Seconds(Clock::now() - t0);
  job.stats.streamed_bytes = job.stream->streamed_bytes();
  job.stats.chunk_waits = job.stream->chunk_waits();
  job.stats.staging_chunks = job.stream->num_chunks();
  job.stats.staging_chunks_peak = s.staging.chunks_in_use_peak();
  if (in_save) job.stats.stall_seconds = Seconds(Clock::now() - job.start);
  s.counters.streamed_bytes += job.stats.streamed_bytes;
  job.copied = true;
  if (torn) ++s.counters.saves_torn;
  --s.copying;
  s.cv.notify_all();
  return error == nullptr;
}

void Engine::RunNext(State& s) {
  std::unique_ptr<Job> job;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.pending.empty()) return;  // it was replaced
    job = std::move(s.pending.front());
    s.pending.pop_front();
  }
  WriteResult written;
  Metadata metadata;
  Process(s, *job, &written, &metadata);
  {
    // The copy may still run after a failed write (it stops at its next chunk).
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait(lock, [&] { return job->copied; });
  }
  job->stream.reset();  // the chunks it still holds go back
  {
    std::lock_guard<std::timed_mutex> lock(s.callback_mu);
    if (s.callbacks_enabled) {
      if (job->stats.ok && job->hooks.after_commit) {
        try {
          job->hooks.after_commit(written, metadata);
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

// The pace of job's write: between windows, sleeps until the share of the
// pace interval passed matches the share of the bytes handled, unless
// something waits for the writers, another save is queued or the engine
// shuts down.
std::function<void(uint64_t, uint64_t)> Engine::Pacer(State& s, Job& job) {
  if (!(job.pace_seconds > 0)) return nullptr;
  const auto begin = Clock::now();
  const double pace = job.pace_seconds;
  return [&s, begin, pace](uint64_t done, uint64_t total) {
    if (total == 0) return;
    const auto due =
        begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                    pace * static_cast<double>(done) / static_cast<double>(total)));
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait_until(lock, due,
                    [&] { return s.waiters > 0 || !s.pending.empty() || s.cancel.load(); });
  };
}

void Engine::Process(State& s, Job& job, WriteResult* written, Metadata* metadata_out) {
  const EngineOptions& opts = s.options;
  spdlog::logger& log = *s.logger;
  try {
    if (s.cancel.load()) throw Error::TimedOut("abandoned at shutdown before it started");
    Metadata metadata = job.hooks.metadata;
    if (job.hooks.stamp) job.hooks.stamp(&metadata);
    TaskPool& pool = s.writers;
    const format::ParallelForFn parallel_for =
        [&pool](size_t n, const std::function<void(size_t)>& fn) { pool.ParallelFor(n, fn); };
    // The header holds every tensor's checksum and goes first.
    if (job.streaming) {
      bool hashed;
      {
        std::unique_lock<std::mutex> lock(s.mu);
        s.cv.wait(lock, [&] { return job.hashed || job.copied; });
        hashed = job.hashed;
      }
      if (!hashed) job.stream->WaitFor(job.stream->size());  // throws the copy's error
    } else {
      // The copy hashed what it copied; hash the rest (tensors split between
      // copy threads, strided and device tensors) in staging, in parallel.
      {
        std::unique_lock<std::mutex> lock(s.mu);
        s.cv.wait(lock, [&] { return job.copied; });
      }
      job.stream->WaitFor(job.stream->size());  // throws the copy's error
      const auto h0 = Clock::now();
      job.stats.late_hash_bytes = job.hashes->Finish(&job.tensors, *job.stream, parallel_for);
      job.stats.hash_seconds = Seconds(Clock::now() - h0);
    }
    const WriteResult r = format::EncodeStreamAndCommit(
        job.tensors, job.tree_json, opts, metadata, job.path, opts.env, job.stream.get(),
        parallel_for, &s.auto_model, &s.cancel, Pacer(s, job));
    {
      // The copy has published its last byte; let it finish its bookkeeping.
      std::unique_lock<std::mutex> lock(s.mu);
      s.cv.wait(lock, [&] { return job.copied; });
    }
    written->path = job.path;
    written->compressed = opts.compression != Compression::kNone;
    written->tensor_bytes = r.tensor_bytes;
    written->logical_bytes = r.logical_bytes;
    written->file_bytes = r.file_bytes;
    written->header_xxh3 = r.header_xxh3;
    *metadata_out = std::move(metadata);
    if (job.hooks.publish) job.hooks.publish(*written, *metadata_out);
    if (job.hooks.held) job.hooks.held(job.tensors);
    job.stats.file_bytes = r.file_bytes;
    job.stats.compress_seconds = r.compress_seconds;
    job.stats.write_seconds = r.write_seconds;
    job.stats.paced_seconds = r.paced_seconds;
    job.stats.end_to_end_seconds = Seconds(Clock::now() - job.start);
    {
      std::lock_guard<std::mutex> lock(s.mu);
      job.stats.skipped_total = s.counters.saves_skipped;
      job.stats.replaced_total = s.counters.saves_replaced;
    }
    log.info(
        "saved index {} to {} ({:.1f} MB, ratio {:.3f}; stall {:.1f} ms, write {:.1f} ms, "
        "end-to-end {:.1f} ms; staging {} chunks, peak {} in use, {} streamed after {} waits for "
        "a free chunk)",
        job.stats.index, job.path, job.stats.bytes / 1e6,
        job.stats.file_bytes ? static_cast<double>(r.logical_bytes) / job.stats.file_bytes : 1.0,
        job.stats.stall_seconds * 1e3, job.stats.write_seconds * 1e3,
        job.stats.end_to_end_seconds * 1e3, job.stats.staging_chunks, job.stats.staging_chunks_peak,
        MB(job.stats.streamed_bytes), job.stats.chunk_waits);
  } catch (const std::exception& e) {
    // The copy may still be filling chunks: stop it, and give back what the
    // writer holds.
    job.stream->Abort(std::current_exception());
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
  WaiterScope waiting(&s);
  const auto deadline =
      Clock::now() + std::chrono::duration_cast<Clock::duration>(
                         std::chrono::duration<double>(std::max(0.0, timeout_seconds)));
  return s.cv.wait_until(lock, deadline, [&] { return s.in_flight == 0; });
}

void Engine::WaitSnapshot() {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mu);
  s.cv.wait(lock, [&] { return s.copying == 0; });
}

format::codec::AutoModel& Engine::auto_model() { return state_->auto_model; }

std::vector<int> Engine::writer_thread_ids() const { return state_->writers.thread_ids(); }

std::vector<int> Engine::copy_thread_ids() const {
  return state_->copiers ? state_->copiers->thread_ids() : std::vector<int>();
}

void Engine::Wait() {
  State& s = *state_;
  {
    std::unique_lock<std::mutex> lock(s.mu);
    WaiterScope waiting(&s);
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
  const StagingPool& p = state_->staging;
  c.staging_bytes_reserved = p.reserved();
  c.staging_bytes_peak = p.peak();
  c.staging_budget_bytes = p.budget();
  c.staging_chunk_bytes = p.chunk_bytes();
  c.staging_chunks_in_use = p.chunks_in_use();
  c.staging_chunks_peak = p.chunks_in_use_peak();
  c.staging_chunk_waits = p.chunk_waits();
  return c;
}

}  // namespace engine
}  // namespace ackpt
