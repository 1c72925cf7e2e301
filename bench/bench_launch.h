// Launching the ranks of a multi-process benchmark on 127.0.0.1 (bench/reshard.cc,
// bench/tiers.cc): fork+exec each rank with its output to a log, wait for all,
// and kill the rest on a failure, a signal or the timeout.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_common.h"

namespace bench {

// The signal that asked the launch to stop (OnSignal as SIGINT/SIGTERM handler).
inline volatile sig_atomic_t g_signal = 0;
inline void OnSignal(int sig) { g_signal = sig; }

// Starts argv with stdout and stderr to `log`; the child dies with us.
inline pid_t Spawn(const std::vector<std::string>& argv, const std::string& log) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(126);
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::close(fd);
  }
  ::execv(args[0], args.data());
  ::_exit(127);
}

inline std::string Tail(const std::string& path, size_t n = 1500) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

// Runs the ranks of one launch, all waited for; on a failure, a signal or the
// timeout the others are killed. Returns "" or what went wrong.
inline std::string RunRanks(const std::vector<std::vector<std::string>>& argvs,
                            const std::vector<std::string>& logs, double timeout) {
  std::vector<pid_t> kids(argvs.size(), -1);
  std::string error;
  auto kill_all = [&] {
    for (pid_t k : kids)
      if (k > 0) ::kill(k, SIGKILL);
  };
  for (size_t r = 0; r < argvs.size(); ++r) {
    kids[r] = Spawn(argvs[r], logs[r]);
    if (kids[r] < 0) {
      error = "cannot start rank " + std::to_string(r) + ": " + std::strerror(errno);
      kill_all();
      break;
    }
  }
  const auto t0 = Clock::now();
  size_t running = 0;
  for (pid_t k : kids) running += k > 0;
  bool killed = !error.empty();
  while (running > 0) {
    for (size_t r = 0; r < kids.size(); ++r) {
      int st = 0;
      if (kids[r] <= 0 || ::waitpid(kids[r], &st, killed ? 0 : WNOHANG) != kids[r]) continue;
      kids[r] = -1;
      --running;
      const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      if (code != 0 && !killed) {
        error = "rank " + std::to_string(r) + " ended with status " + std::to_string(code) +
                "; its log:\n" + Tail(logs[r]);
        killed = true;
        kill_all();
      }
    }
    if (!killed && g_signal) {
      error = "interrupted (signal " + std::to_string(int(g_signal)) + ")";
      killed = true;
      kill_all();
    }
    if (!killed && Since(t0) > timeout) {
      error =
          "timed out after " + std::to_string(int(timeout)) + " s; rank 0's log:\n" + Tail(logs[0]);
      killed = true;
      kill_all();
    }
    if (running > 0 && !killed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return error;
}

}  // namespace bench
