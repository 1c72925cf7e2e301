// An Env wrapper that can be cut off from the Env it forwards to.
//
// Background work (the writer pool, retention) calls the file system through
// one of these. When the owner shuts down while a call is stuck (a hung NFS
// server, a blocked device), the owner detaches it and returns: from then on
// every call, on the Env and on files it opened, throws kTimedOut without
// touching the wrapped Env, so the caller may free that Env at once. A call
// already inside the wrapped Env when it is detached cannot be recalled;
// Detach() waits a bounded time for such calls to return.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>

#include "ackpt/env.h"

namespace ackpt {

class DetachableEnv final : public Env, public std::enable_shared_from_this<DetachableEnv> {
 public:
  static std::shared_ptr<DetachableEnv> Create(Env* target);

  // Stops all forwarding; waits up to `wait_seconds` for calls in progress.
  // Returns true if none is still inside the wrapped Env.
  bool Detach(double wait_seconds);
  bool detached() const;

  std::unique_ptr<WritableFile> NewWritableFile(const std::string& path) override;
  std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& path) override;
  void RenameFile(const std::string& from, const std::string& to) override;
  void RemoveFile(const std::string& path) override;
  void SyncDir(const std::string& dir) override;
  std::vector<std::string> GetChildren(const std::string& dir) override;
  bool FileExists(const std::string& path) override;
  uint64_t GetFileSize(const std::string& path) override;
  double GetFileMTime(const std::string& path) override;
  void CreateDirs(const std::string& dir) override;
  std::unique_ptr<FileLock> LockFile(const std::string& path, const std::string& owner) override;

  // Runs fn() unless detached (then throws kTimedOut naming `what`); the
  // wrapped Env stays valid while fn runs.
  template <typename F>
  auto Call(const char* what, F&& fn) -> decltype(fn()) {
    Enter(what);
    struct Exit {
      DetachableEnv* env;
      ~Exit() { env->Leave(); }
    } exit{this};
    return fn();
  }

 private:
  explicit DetachableEnv(Env* target) : target_(target) {}
  void Enter(const char* what);
  void Leave();

  Env* const target_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool detached_ = false;
  int active_ = 0;
};

}  // namespace ackpt
