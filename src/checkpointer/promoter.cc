#include "checkpointer/promoter.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include "ackpt/error.h"
#include "engine/task_pool.h"
#include "io/atomic_file.h"

namespace ackpt {

namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kCopyBlockBytes = size_t{4} << 20;

}  // namespace

// Everything the promotion thread touches: held by shared_ptr, so a thread
// left behind by a destructor that could not wait for it never touches the
// Promoter.
struct Promoter::State {
  PromoterOptions o;
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<PromotionJob> waiting;
  bool busy = false;  // a job is being copied
  uint64_t busy_seq = 0;
  bool closing = false;  // no new jobs; the thread exits when idle
  bool abort = false;    // the copy in progress stops at its next block
  bool exited = false;
  PromoterCounters counters;
  std::string last_error;

  spdlog::logger& log() const { return o.logger ? *o.logger : *spdlog::default_logger(); }
};

Promoter::Promoter(PromoterOptions options) : o_(options), st_(std::make_shared<State>()) {
  st_->o = std::move(options);
  std::shared_ptr<State> st = st_;
  std::thread([st] {
    const std::string why = engine::SetCurrentThreadPriority(st->o.priority);
    if (!why.empty()) st->log().warn("promotion thread keeps normal priority: {}", why);
    std::unique_lock<std::mutex> lock(st->mu);
    for (;;) {
      st->cv.wait(lock, [&] { return st->closing || !st->waiting.empty(); });
      if (st->waiting.empty()) break;  // closing and idle
      PromotionJob job = std::move(st->waiting.front());
      st->waiting.pop_front();
      st->busy = true;
      st->busy_seq = job.seq;
      st->cv.notify_all();  // room for a forced Offer()
      lock.unlock();
      std::string error;
      bool skipped = false;
      uint64_t bytes = 0;
      try {
        if (job.go && !job.go()) {
          skipped = true;
        } else {
          const uint64_t size = job.source->Size();
          std::vector<char> block(std::min<uint64_t>(size, kCopyBlockBytes));
          const auto start = Clock::now();
          AtomicWrite(st->o.env.get(), job.dest_path, st->o.fsync, [&](WritableFile* f) {
            for (uint64_t off = 0; off < size;) {
              {
                std::lock_guard<std::mutex> l(st->mu);
                if (st->abort)
                  throw Error(Error::Code::kIOError, "promotion of checkpoint " +
                                                         std::to_string(job.index) +
                                                         " abandoned: the checkpointer is closing");
              }
              const size_t n = static_cast<size_t>(std::min<uint64_t>(size - off, block.size()));
              job.source->Read(off, n, block.data());
              f->Append(block.data(), n);
              off += n;
              if (st->o.bytes_per_second > 0) {
                // Pace to the cap: sleep until the bytes so far are due.
                const auto due =
                    start +
                    std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                        static_cast<double>(off) / st->o.bytes_per_second));
                std::this_thread::sleep_until(due);
              }
            }
          });
          bytes = size;
          job.commit(bytes);
        }
      } catch (const std::exception& e) {
        error = e.what();
      }
      job.source.reset();  // the local file may now go with local retention
      if (!error.empty() && job.failed) job.failed(error);
      lock.lock();
      st->busy = false;
      if (skipped) {
        ++st->counters.skipped;
      } else if (error.empty()) {
        ++st->counters.completed;
        st->counters.bytes += bytes;
      } else {
        ++st->counters.failed;
        st->last_error = error;
      }
      st->cv.notify_all();
      lock.unlock();
      if (!error.empty()) {
        st->log().error("promotion of checkpoint {} to {} failed (the local checkpoint stays): {}",
                        job.index, job.dest_path, error);
      } else if (skipped) {
        st->log().info("checkpoint {} not promoted (decided by rank 0)", job.index);
      } else {
        st->log().debug("promoted checkpoint {} to {} ({} bytes)", job.index, job.dest_path, bytes);
      }
      lock.lock();
    }
    st->exited = true;
    st->cv.notify_all();
  }).detach();
}

Promoter::~Promoter() {
  std::unique_lock<std::mutex> lock(st_->mu);
  st_->closing = true;
  if (!st_->waiting.empty()) {
    st_->counters.skipped += st_->waiting.size();
    st_->log().warn("{} promotion(s) dropped at close (their local checkpoints stay)",
                    st_->waiting.size());
    st_->waiting.clear();
  }
  st_->cv.notify_all();
  // The copy in progress gets a moment to finish, then stops at its next
  // block; a thread stuck inside the file system is left to finish on its
  // own (it holds only State).
  if (!st_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return st_->exited; })) {
    st_->abort = true;
    st_->cv.wait_for(lock, std::chrono::seconds(5), [&] { return st_->exited; });
  }
}

bool Promoter::Offer(PromotionJob job) {
  std::unique_lock<std::mutex> lock(st_->mu);
  const size_t room = static_cast<size_t>(std::max(0, o_.max_pending));
  if (job.follow) {
    // Bounded by the decider: it says no to what its own queue cannot hold.
  } else if (job.force) {
    // A forced promotion is not skipped; it waits for one of the slots
    // (or, with max_pending 0, for the thread to be idle).
    st_->cv.wait(lock, [&] {
      return st_->waiting.size() < std::max<size_t>(room, 1) && (room > 0 || !st_->busy);
    });
  } else if (st_->waiting.size() >= room && (room > 0 || st_->busy)) {
    return false;
  }
  st_->waiting.push_back(std::move(job));
  st_->cv.notify_all();
  return true;
}

void Promoter::Skipped(int64_t index, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(st_->mu);
    ++st_->counters.skipped;
  }
  st_->log().warn("checkpoint {} not promoted to the persistent tier: {}", index, why);
}

void Promoter::WaitFor(uint64_t seq) {
  std::unique_lock<std::mutex> lock(st_->mu);
  st_->cv.wait(lock, [&] {
    if (st_->busy && st_->busy_seq == seq) return false;
    return std::none_of(st_->waiting.begin(), st_->waiting.end(),
                        [&](const PromotionJob& j) { return j.seq == seq; });
  });
}

bool Promoter::Drain(double timeout_seconds) {
  std::unique_lock<std::mutex> lock(st_->mu);
  return st_->cv.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                          [&] { return !st_->busy && st_->waiting.empty(); });
}

bool Promoter::Idle() const {
  std::lock_guard<std::mutex> lock(st_->mu);
  return !st_->busy && st_->waiting.empty();
}

PromoterCounters Promoter::counters() const {
  std::lock_guard<std::mutex> lock(st_->mu);
  return st_->counters;
}

std::string Promoter::last_error() const {
  std::lock_guard<std::mutex> lock(st_->mu);
  return st_->last_error;
}

}  // namespace ackpt
