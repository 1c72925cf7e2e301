// A child process for the multi-process tests: started without a shell
// (posix_spawn), its stdout and stderr appended to a log file (or inherited),
// waited for with a timeout, and killed (SIGKILL) and reaped when the test
// leaves before it ended, so no test leaves a process behind.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ackpt {
namespace testing {

class ChildProcess {
 public:
  // Starts argv[0] with these arguments; `log` (if not empty) receives its
  // stdout and stderr (truncated first). pid() <= 0 if it could not start.
  explicit ChildProcess(std::vector<std::string> args, const std::string& log = "") {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (!log.empty()) {
      posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&fa, 1, 2);
    }
    if (posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  ChildProcess(ChildProcess&& o) noexcept : pid_(o.pid_), status_(o.status_) { o.pid_ = -1; }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }

  // The child's pid while it runs (<= 0 once reaped or if it never started).
  pid_t pid() const { return pid_; }
  bool started() const { return pid_ > 0 || status_ != kRunning; }

  void Signal(int sig) const {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // True once the child has ended (it is reaped; status() has its status).
  bool Exited() {
    if (pid_ <= 0) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) != pid_) return false;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    pid_ = -1;
    return true;
  }

  // Exit status, or 128 + the signal that ended it; -1 while it runs or if it
  // never started.
  int status() const { return status_ == kRunning ? -1 : status_; }

  // Waits up to `timeout_seconds`; returns status(), or -1 if it still runs.
  int Wait(double timeout_seconds) {
    const auto end =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
    while (!Exited()) {
      if (std::chrono::steady_clock::now() > end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return status();
  }

  // Like Wait, but a child still running at the timeout is killed (SIGKILL)
  // and reaped, and -1 is returned.
  int WaitOrKill(double timeout_seconds) {
    if (Wait(timeout_seconds) != -1 || pid_ <= 0) return status();
    Signal(SIGKILL);
    Wait(60);
    return -1;
  }

 private:
  static constexpr int kRunning = -2;
  pid_t pid_ = -1;
  int status_ = kRunning;
};

}  // namespace testing
}  // namespace ackpt
