// Types of ackpt's asynchronous save engine that its users see: how save()
// behaves when staging memory is full, what one save measured, and counters.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

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
  uint64_t bytes = 0;             // tensor bytes
  uint64_t file_bytes = 0;        // bytes on disk
  bool overlapped = false;        // the snapshot was copied after save() returned
  double stall_seconds = 0;       // time inside save(), backpressure waits included
  double snapshot_seconds = 0;    // copying tensors into staging
  double hash_seconds = 0;        // per-tensor XXH3, wall
  double compress_seconds = 0;    // zstd, summed over threads
  double write_seconds = 0;       // compress+write+fsync+rename, wall
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
