// ackpt's asynchronous save engine as its users see it: its options
// (EngineOptions, which every checkpointer's arguments extend), how save()
// behaves when staging memory is full, what one save measured, and counters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ackpt/env.h"
#include "ackpt/format.h"

namespace spdlog {
class logger;
}

namespace ackpt {

// What save() does when the staging budget is full because earlier saves
// are still being written.
enum class BackpressurePolicy {
  kBlock,           // wait for staging memory; the wait counts as stall (default)
  kSkip,            // drop this (non-forced) save, warn, count it in skipped
  kReplacePending,  // drop a queued save that has not started writing and take
                    // its staging; if none is queued, block
};

// Scheduling of ackpt's background threads (writers, and the snapshot copy
// threads). Lower priority leaves more CPU to training when every core is
// busy, at the price of later durability: the background work finishes only
// in the CPU time training leaves idle, so saves stay in flight longer and
// the staging budget fills (backpressure) sooner.
enum class WriterPriority {
  kNormal,  // the process's own scheduling (default)
  kLow,     // nice 19: still gets a small share of a busy CPU (~1.5 % against a nice-0 thread)
  kIdle,    // SCHED_IDLE: runs only when a CPU would otherwise be idle
};

// Measurements of one save, delivered to DefaultCheckpointerArguments::on_save
// after the file is durable (or the save failed).
struct SaveStats {
  int64_t index = 0;
  std::string path;
  bool forced = false;
  bool ok = true;  // false: `error` says why; the file was not written
  std::string error;
  uint64_t bytes = 0;           // tensor bytes
  uint64_t file_bytes = 0;      // bytes on disk
  bool overlapped = false;      // the snapshot was copied after save() returned
  double stall_seconds = 0;     // time inside save(), backpressure waits included
  double snapshot_seconds = 0;  // copying tensors into staging
  double hash_seconds = 0;      // per-tensor XXH3 the copy left to the writer, wall
  // Tensor bytes hashed by the writer rather than by the copy while they were
  // in cache: tensors split between copy threads (from the split on), strided
  // or on a device, and every byte of a save that streams through the ring.
  uint64_t late_hash_bytes = 0;
  double compress_seconds = 0;    // zstd, summed over threads
  double write_seconds = 0;       // compress+write+fsync+rename, wall
  double paced_seconds = 0;       // of write_seconds, slept to pace (pacing_fraction)
  double end_to_end_seconds = 0;  // save() entry to durable
  size_t queue_depth = 0;         // saves queued or writing when this one was enqueued
  // Staging ring: this save's chunks, the most chunks in use at once so far
  // (all saves), how often its copy waited for a writer to free a chunk, and
  // the bytes copied into chunks it had to wait for (0 when the state fit the
  // free budget).
  size_t staging_chunks = 0;
  size_t staging_chunks_peak = 0;
  uint64_t chunk_waits = 0;
  uint64_t streamed_bytes = 0;
  uint64_t skipped_total = 0;   // saves dropped by kSkip so far
  uint64_t replaced_total = 0;  // saves dropped by kReplacePending so far
};

// The options of the asynchronous save engine, documented once: the engine
// under AsyncWriter, DefaultCheckpointer and DistributedCheckpointer. Their
// arguments extend it (DefaultCheckpointerArguments derives from it), and
// WriteOptions, its base, says how each file is encoded.
struct EngineOptions : WriteOptions {
  // Threads copying tensors into staging inside save(); 0 = up to 4 for
  // states over 16 MiB. Default: 0.
  int snapshot_threads = 0;
  // Upper bound on host staging memory (bytes), shared by all saves queued
  // or being written. Staging is a ring of fixed-size chunks (one zstd frame,
  // chunk_size, up to 64 MiB; at most an eighth of an explicit budget, at
  // least 64 KiB), allocated once and reused: save() copies the state into
  // chunks, the writers hash, compress and write a chunk and return it.
  // A state that fits the free budget is copied at memcpy speed and save()
  // returns. One that does not (larger than the budget, or earlier saves
  // still hold chunks) streams: its checksums are computed from the live
  // tensors first (the header, written first, holds them), then save()
  // copies chunk by chunk into chunks the writers free, and returns once the
  // last chunk is copied, so its stall grows to about the time to write the
  // bytes that did not fit (logged once at info level, with the reason;
  // SaveStats::streamed_bytes). With overlap_snapshot, wait_snapshot() takes
  // that wait instead. Any budget of at least two 64 KiB chunks works.
  // 0 = automatic: twice the largest checkpoint seen so far (one being
  // written, one being staged, so neither waits), but at most a quarter of
  // the memory the process may use (physical memory, or the cgroup limit if
  // lower): the live state and the trainer's own memory need the rest; a
  // larger state streams. Default: 0.
  uint64_t staging_budget_bytes = 0;
  // Page-lock staging chunks (mlock; pinned CUDA host memory when saving
  // CUDA tensors, allocated once and reused), up to RLIMIT_MEMLOCK: beyond
  // it, or when the system refuses, chunks stay pageable, with one warning
  // per process that names the fix. Default: true.
  bool pin_host_memory = true;
  // What a save does when the staging budget is full. Forced saves always
  // block. Default: kBlock.
  BackpressurePolicy backpressure = BackpressurePolicy::kBlock;
  // Overlapped snapshot. false: save() returns once the state is copied into
  // staging (a stall of about one memcpy of the state). true: save() only
  // plans the snapshot (records each tensor's version counter and, for CUDA
  // tensors, an event on the current stream) and returns; copy threads fill
  // staging while the caller runs the next forward/backward pass, which only
  // read the parameters. The caller must call wait_snapshot() before it
  // modifies any saved tensor (the optimizer step); the Trainer does. A tensor
  // modified in place before its copy finished is detected by its version
  // counter and fails that save with an ackpt::Error naming the tensor,
  // raised at the next save()/wait() like other background errors; no file is
  // written. Not detected: writes that bypass autograd's version counter
  // (through data_ptr(), .data() / variable_data() aliases or inference
  // tensors). Cost: the copy (plus its snapshot_threads) competes with the
  // training step for CPU and memory bandwidth, and the copy of the next
  // save waits for this one. Forced saves copy inside save(). Default: false.
  bool overlap_snapshot = false;
  // Scheduling of the background writer and snapshot copy threads (see
  // WriterPriority): kLow (nice 19) or kIdle (SCHED_IDLE) leave the CPU to
  // training when every core is busy, but the background work then runs
  // only in the time training leaves over, so saves become durable later
  // and the staging budget fills (backpressure) sooner; a forced save or
  // wait() may take much longer under load. Default: kNormal.
  WriterPriority writer_priority = WriterPriority::kNormal;
  // Pacing: spread each save's background work (compress, write) over this
  // fraction of the interval between save() calls (an average of the last
  // few), so the writers take a steady trickle of CPU and I/O from training
  // instead of a burst right after save(); between frame windows they sleep
  // until the share of the file written matches the share of that time
  // passed. Never paced: the first save, forced saves, a save that streams
  // through the staging ring (the trainer's copy would wait for it), and a
  // save while anything waits for the writers (wait(), a forced save, the
  // destructor) or another save is queued behind it: those cut the sleep
  // short. Costs: a save becomes durable later (by up to the fraction of
  // the interval), and its staging stays held that long. SaveStats::
  // paced_seconds says how long a save slept. 0 (off) .. 1. Default: 0.
  double pacing_fraction = 0;
  // How long the destructor waits for queued saves before abandoning them
  // (logged as an error). Must be >= 0. Default: 600 s.
  double drain_timeout_seconds = 600;
  // Called on a writer thread after each save finishes (success or not).
  // Must not call back into the checkpointer or writer. Default: none.
  std::function<void(const SaveStats&)> on_save;
  // spdlog level name for the "ackpt" logger: TRACE, DEBUG, INFO, WARN,
  // ERROR, CRITICAL, OFF (case-insensitive). Default: "INFO".
  std::string log_level = "INFO";
  // Logger to use instead of the "ackpt" logger. Default: null.
  std::shared_ptr<spdlog::logger> logger;
  // File-system seam; null = Env::Default(). Must outlive the checkpointer
  // (or writer). Default: null.
  Env* env = nullptr;
};

// Counters of the save engine over its lifetime.
struct EngineCounters {
  uint64_t saves_requested = 0;  // save() calls that passed the period check
  uint64_t saves_completed = 0;  // durable
  uint64_t saves_failed = 0;
  uint64_t saves_skipped = 0;   // kSkip
  uint64_t saves_replaced = 0;  // kReplacePending
  uint64_t saves_torn = 0;      // failed: a tensor was modified before its snapshot copy finished
  uint64_t staging_bytes_reserved = 0;  // current staging memory held
  uint64_t staging_bytes_peak = 0;
  uint64_t staging_budget_bytes = 0;
  uint64_t staging_chunk_bytes = 0;    // size of every staging chunk
  uint64_t staging_chunks_in_use = 0;  // lent to saves being copied or written
  uint64_t staging_chunks_peak = 0;    // most in use at once
  uint64_t staging_chunk_waits = 0;    // times a copy waited for a free chunk
  uint64_t saves_streamed = 0;         // saves that did not fit the free budget and streamed
  uint64_t streamed_bytes = 0;         // bytes those copied into chunks they had to wait for
};

}  // namespace ackpt
