// Power-cut simulation for the tests, after leveldb's db/fault_injection_test.cc.
//
// PowerCutEnv wraps the POSIX Env and remembers what a real power loss could
// take away: per file, the size at its last Sync (data written after it is
// not durable), and per directory, the entries created, renamed or removed
// since its last SyncDir (they are not durable either). After `cut_after`
// mutating calls the power is "gone": every further mutating call fails with
// EIO and changes nothing. DropUnsyncedData() then makes the directory look
// as it would after a reboot: unsynced file tails are truncated, and unsynced
// directory operations are undone newest first (created files vanish, renames
// go back, removed files return).
//
// Sync and SyncDir only record; they skip the real fsync, since durability is
// what this Env models.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/error.h"

namespace ackpt {
namespace testing {

class PowerCutEnv : public EnvWrapper {
 public:
  PowerCutEnv() : EnvWrapper(Env::Default()) {}

  // Power fails after `n` more mutating calls (n < 0: never).
  void CutAfter(int64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    cut_after_ = n;
    ops_ = 0;
    dead_ = n == 0;
  }
  bool dead() const {
    std::lock_guard<std::mutex> lock(mu_);
    return dead_;
  }
  // Mutating calls seen since CutAfter (those that ran, not those refused).
  int64_t ops() const {
    std::lock_guard<std::mutex> lock(mu_);
    return ops_;
  }

  // What survives of data written after the last Sync. A real disk may have
  // written back any part of it before the power went.
  enum class Unsynced { kDropAll, kKeepSome, kKeepAll };

  // The reboot: drops what was not made durable, and by default (leveldb's
  // model) everything that was not. `keep_dir_ops` instead lets unsynced
  // directory entries survive (a file system may persist them on its own).
  // Call with no file open for writing through this Env.
  void DropUnsyncedData(Unsynced data = Unsynced::kDropAll, bool keep_dir_ops = false,
                        uint64_t seed = 0) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& kv : files_) {
      const FileState& f = kv.second;
      if (::access(kv.first.c_str(), F_OK) != 0 || f.synced >= f.size) continue;
      uint64_t keep = f.synced;
      if (data == Unsynced::kKeepAll) keep = f.size;
      if (data == Unsynced::kKeepSome) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        keep += (seed >> 33) % (f.size - f.synced + 1);
      }
      if (::truncate(kv.first.c_str(), static_cast<off_t>(keep)) != 0)
        throw Error::IO("truncate", kv.first, errno);
    }
    if (!keep_dir_ops) {
      for (auto& kv : dir_ops_) {
        for (auto it = kv.second.rbegin(); it != kv.second.rend(); ++it) Undo(*it);
      }
    }
    dir_ops_.clear();
    files_.clear();
  }

  std::unique_ptr<WritableFile> NewWritableFile(const std::string& path) override;
  void RenameFile(const std::string& from, const std::string& to) override {
    std::lock_guard<std::mutex> lock(mu_);
    Step("rename", from);
    DirOp op{DirOp::kRename, from, to, false, {}};
    if (::access(to.c_str(), F_OK) == 0) {
      op.had_target = true;
      op.saved = Durable(to);
    }
    target()->RenameFile(from, to);
    auto it = files_.find(from);
    if (it != files_.end()) {
      files_[to] = it->second;
      files_.erase(from);
    } else {
      files_.erase(to);
    }
    dir_ops_[DirName(to)].push_back(std::move(op));
  }
  void RemoveFile(const std::string& path) override {
    std::lock_guard<std::mutex> lock(mu_);
    Step("unlink", path);
    DirOp op{DirOp::kRemove, path, {}, false, Durable(path)};
    target()->RemoveFile(path);
    files_.erase(path);
    dir_ops_[DirName(path)].push_back(std::move(op));
  }
  void SyncDir(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    Step("fsync", dir);
    dir_ops_.erase(dir);
  }
  void CreateDirs(const std::string& dir) override {
    std::lock_guard<std::mutex> lock(mu_);
    Step("mkdir", dir);
    target()->CreateDirs(dir);
  }

  // Called by PowerCutFile with mu_ not held.
  void Append(const std::string& path, WritableFile* base, const void* data, size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    Step("write", path);
    base->Append(data, n);
    files_[path].size += n;
  }
  void Sync(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    Step("fdatasync", path);
    auto& f = files_[path];
    f.synced = f.size;
  }
  void Close(const std::string& path, WritableFile* base) {
    std::lock_guard<std::mutex> lock(mu_);
    // Closing never fails for lack of power: the descriptor goes away anyway.
    base->Close();
    (void)path;
  }

 private:
  struct FileState {
    uint64_t size = 0;
    uint64_t synced = 0;
  };
  struct DirOp {
    enum Kind { kCreate, kRename, kRemove } kind;
    std::string a;  // created / renamed from / removed
    std::string b;  // renamed to
    bool had_target;
    std::string saved;  // bytes of the replaced or removed file
  };

  // Counts a mutating call, or refuses it once the power is gone. mu_ held.
  void Step(const char* call, const std::string& path) {
    if (dead_) throw Error::IO(call, path, EIO);
    if (cut_after_ >= 0 && ops_ >= cut_after_) {
      dead_ = true;
      throw Error::IO(call, path, EIO);
    }
    ++ops_;
  }

  static std::string Slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // The bytes of `path` a power loss would leave. mu_ held.
  std::string Durable(const std::string& path) const {
    std::string bytes = Slurp(path);
    auto it = files_.find(path);
    if (it != files_.end() && it->second.synced < bytes.size()) bytes.resize(it->second.synced);
    return bytes;
  }
  static void Spill(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  void Undo(const DirOp& op) {
    switch (op.kind) {
      case DirOp::kCreate:
        ::unlink(op.a.c_str());
        break;
      case DirOp::kRename:
        ::rename(op.b.c_str(), op.a.c_str());
        if (op.had_target) Spill(op.b, op.saved);
        break;
      case DirOp::kRemove:
        Spill(op.a, op.saved);
        break;
    }
  }

  friend class PowerCutFile;
  void Created(const std::string& path) {
    files_[path] = FileState{};
    dir_ops_[DirName(path)].push_back(DirOp{DirOp::kCreate, path, {}, false, {}});
  }

  mutable std::mutex mu_;
  int64_t cut_after_ = -1;
  int64_t ops_ = 0;
  bool dead_ = false;
  std::map<std::string, FileState> files_;
  std::map<std::string, std::vector<DirOp>> dir_ops_;
};

class PowerCutFile : public WritableFile {
 public:
  PowerCutFile(PowerCutEnv* env, std::unique_ptr<WritableFile> base)
      : env_(env), base_(std::move(base)) {}
  void Append(const void* data, size_t n) override { env_->Append(path(), base_.get(), data, n); }
  void Sync() override { env_->Sync(path()); }
  void Close() override { env_->Close(path(), base_.get()); }
  const std::string& path() const override { return base_->path(); }

 private:
  PowerCutEnv* env_;
  std::unique_ptr<WritableFile> base_;
};

inline std::unique_ptr<WritableFile> PowerCutEnv::NewWritableFile(const std::string& path) {
  std::unique_ptr<WritableFile> base;
  {
    std::lock_guard<std::mutex> lock(mu_);
    Step("open", path);
    base = target()->NewWritableFile(path);
    Created(path);
  }
  return std::make_unique<PowerCutFile>(this, std::move(base));
}

}  // namespace testing
}  // namespace ackpt
