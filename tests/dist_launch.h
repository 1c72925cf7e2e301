// Launching the ranks of a multi-process test on 127.0.0.1: every rank of a
// worker binary with "--rank R --world W --store FILE --dir DIR" and the
// common arguments ("{out}" becomes a per-rank output file). A rank killed
// by a signal makes the launcher kill the others (as a job scheduler
// would); the whole launch is bounded by timeout_seconds, and every process
// it started is gone when it returns.
#pragma once

#include <signal.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "child_process.h"
#include "test_util.h"

namespace ackpt {
namespace testing {

struct Launch {
  std::vector<int> status;  // exit code, or 128 + signal; -1: timed out (killed)
  std::vector<std::string> out;
};

// Runs `world` ranks of the worker; a rank killed by a signal makes the
// launcher kill the others (as a job scheduler would). Bounded by timeout.
inline Launch LaunchRanks(const std::string& worker, const TempDir& tmp, int world,
                          const std::string& dir, std::vector<std::string> common,
                          const std::string& name, double timeout_seconds = 120) {
  using Clock = std::chrono::steady_clock;
  static int launches = 0;
  const std::string store = tmp.file("store-" + std::to_string(++launches));
  Launch l;
  l.status.assign(static_cast<size_t>(world), -1);
  l.out.assign(static_cast<size_t>(world), "");
  std::vector<ChildProcess> ranks;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> args{
        worker,    "--rank", std::to_string(r), "--world", std::to_string(world),
        "--store", store,    "--dir",           dir};
    for (auto& c : common)
      args.push_back(c == "{out}" ? tmp.file(name + "-" + std::to_string(r) + ".out") : c);
    ranks.emplace_back(args, tmp.file(name + "-" + std::to_string(r) + ".log"));
    EXPECT_TRUE(ranks.back().started()) << "rank " << r;
  }
  const auto end = Clock::now() + std::chrono::duration<double>(timeout_seconds);
  bool killed_all = false;
  for (bool running = true; running;) {
    running = false;
    for (int r = 0; r < world; ++r) {
      ChildProcess& rank = ranks[static_cast<size_t>(r)];
      if (!rank.Exited()) {
        running = true;
        continue;
      }
      l.status[static_cast<size_t>(r)] = rank.status();
      if (rank.status() > 128 && !killed_all) {  // ended by a signal
        killed_all = true;
        for (auto& other : ranks) other.Signal(SIGKILL);
      }
    }
    if (running && Clock::now() > end) {
      ADD_FAILURE() << name << ": ranks still running after " << timeout_seconds << " s";
      for (auto& rank : ranks) rank.WaitOrKill(0);  // their status stays -1
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (int r = 0; r < world; ++r)
    l.out[static_cast<size_t>(r)] =
        ReadFileBytes(tmp.file(name + "-" + std::to_string(r) + ".log"));
  return l;
}

}  // namespace testing
}  // namespace ackpt
