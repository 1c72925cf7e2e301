// Promotion to the persistent tier (docs/TIERS.md): one background thread
// copies committed local checkpoint files, byte for byte, into save_dir and
// runs each job's commit step (the catalog and retention for a file; the
// store commit of a distributed part). The copy is atomic (temp, fsync,
// rename, directory fsync) through the Env seam, bounded in memory (one
// 4 MiB block), optionally rate-capped, and at the thread priority asked.
//
// Backpressure: at most max_pending jobs wait behind the one being copied;
// Offer() of a job that finds no room returns false (the caller counts it
// as skipped), unless it is a forced one, which waits for room. Nothing here
// ever waits for the persistent tier on the caller's thread except Offer()
// of a forced job and WaitFor().
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "ackpt/engine.h"
#include "ackpt/env.h"

namespace spdlog {
class logger;
}

namespace ackpt {

struct PromotionJob {
  int64_t index = 0;
  uint64_t seq = 0;  // the save's sequence number, for WaitFor()
  // The committed local file, opened when the job is offered: local
  // retention may remove its name meanwhile, the open file stays readable.
  std::shared_ptr<RandomAccessFile> source;
  std::string dest_path;  // in the persistent tier
  bool force = false;     // never skipped: Offer() waits for room
  // Queued whatever the room, without waiting: the decision is go()'s
  // (distributed ranks other than 0 follow rank 0's). Default: false.
  bool follow = false;
  // Before the copy, on the promotion thread: false skips the job (counted
  // as skipped), e.g. when rank 0 decided not to promote this index. May
  // throw (counted as failed). Optional.
  std::function<bool()> go;
  // After the copy is durable at dest_path: commit it in the persistent
  // tier (catalog and retention, or the distributed store commit). A throw
  // counts as a failed promotion.
  std::function<void(uint64_t bytes)> commit;
  // After a failure (copy or commit), with the error, on the promotion
  // thread: e.g. tell the other ranks. Optional; must not throw.
  std::function<void(const std::string& why)> failed;
};

struct PromoterOptions {
  std::shared_ptr<Env> env;
  std::shared_ptr<spdlog::logger> logger;
  int max_pending = 1;
  uint64_t bytes_per_second = 0;  // 0: no cap
  WriterPriority priority = WriterPriority::kLow;
  bool fsync = true;
};

struct PromoterCounters {
  uint64_t completed = 0;
  uint64_t skipped = 0;
  uint64_t failed = 0;
  uint64_t bytes = 0;
};

class Promoter {
 public:
  explicit Promoter(PromoterOptions options);
  // Finishes the job being copied and drops the waiting ones (their local
  // checkpoints stay); a copy still running after drain_seconds is
  // abandoned between two blocks (its temp file removed).
  ~Promoter();
  Promoter(const Promoter&) = delete;
  Promoter& operator=(const Promoter&) = delete;

  // Queues `job`. Returns false when max_pending jobs are already waiting
  // and the job is not forced (the caller counts it with Skipped()); a
  // forced job waits for room.
  bool Offer(PromotionJob job);
  // A due promotion that was not offered (no room, or decided elsewhere).
  void Skipped(int64_t index, const std::string& why);
  // Returns once no job with this seq is waiting or being copied.
  void WaitFor(uint64_t seq);
  // Returns once nothing is waiting or being copied, or after
  // timeout_seconds (false).
  bool Drain(double timeout_seconds);
  // True when nothing is waiting or being copied.
  bool Idle() const;
  PromoterCounters counters() const;
  std::string last_error() const;

 private:
  struct State;

  const PromoterOptions o_;
  std::shared_ptr<State> st_;
};

}  // namespace ackpt
