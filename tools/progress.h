// Progress bars for the ackpt command-line tool.
//
// The library's reader and writer have no progress callbacks, so the CLI
// measures progress from the outside: a ProgressBar either gets explicit
// updates (for work the CLI does itself) or, with TrackProcessIo, samples
// this process's I/O counters (/proc/self/io: bytes read and written by
// read/pread/write calls, page-cache hits included) while the library call
// runs on the calling thread. That keeps `verify` and `export` on exactly the
// library's code path (the same checks and messages with and without a
// terminal) at the cost of an estimate: the bar counts file bytes moved, not
// checks done.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace ackpt_cli {

// True when progress should be drawn: stderr is a terminal and not --quiet.
bool ShowProgress(bool quiet);

// "12.3 MB", "1.20 GB", "512 B".
std::string HumanBytes(double bytes);

// A one-line bar on stderr, redrawn at most 10 times a second by a helper
// thread:   label [#######.......]  48%  312.5 MB of 650.0 MB  120.4 MB/s
// With an unknown total (0) it shows bytes and rate only. Disabled bars do
// nothing at all. The destructor (or Finish) draws the final state and
// clears the line, so what the command prints next starts on a clean line.
class ProgressBar {
 public:
  ProgressBar(bool enabled, std::string label, uint64_t total_bytes);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // Explicit progress: bytes done so far.
  void Set(uint64_t done) { done_.store(done); }
  // Sample /proc/self/io (bytes read + written since this call) instead of Set().
  // Without /proc the bar shows elapsed time only.
  void TrackProcessIo();
  // A new phase: label and total change, the count restarts from 0.
  void Phase(std::string label, uint64_t total_bytes);
  void Finish();

 private:
  void Loop();
  void Draw(bool final_draw);
  uint64_t Done();

  const bool enabled_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::string label_;
  uint64_t total_ = 0;
  std::atomic<uint64_t> done_{0};
  bool track_io_ = false;
  uint64_t io_base_ = 0;
  std::chrono::steady_clock::time_point start_;
  std::thread thread_;
  bool finished_ = false;
};

// Bytes read plus bytes written by this process so far (rchar + wchar of
// /proc/self/io); false if unavailable.
bool ProcessIoBytes(uint64_t* bytes);

}  // namespace ackpt_cli
