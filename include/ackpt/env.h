// ackpt::Env: the one seam through which ackpt touches the file system.
//
// Every file operation ackpt performs goes through an Env, so tests (and users)
// can wrap the POSIX implementation and inject faults: leveldb's Env and
// EnvWrapper are the model. All methods report failure by throwing
// ackpt::Error (kIOError, or kNotFound for a missing file) naming the call,
// the path and the errno text. Implementations must be thread-safe; a single
// file object is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ackpt/export.h"

namespace ackpt {

class ACKPT_EXPORT WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Appends all n bytes (retrying short writes and EINTR).
  virtual void Append(const void* data, size_t n) = 0;
  // Makes the written data durable (fsync/fdatasync).
  virtual void Sync() = 0;
  // A hint: start writing [offset, offset + n) of what was appended to the
  // device now, without waiting for it, so the Sync() at the end only has
  // the tail left to flush. It may wait for writeback it started earlier, to
  // bound the dirty memory one file holds. Durability still comes only from
  // Sync(). A failure throws (kIOError) like any other call: once a
  // writeback error has been waited for, the kernel does not report it to
  // the Sync() after it, so it must not be swallowed. The writer calls it
  // every WriteOptions::writeback_bytes appended. Default: does nothing, so
  // a WritableFile written before this hook keeps working (without the
  // early writeback).
  virtual void StartWriteback(uint64_t offset, uint64_t n) {
    (void)offset;
    (void)n;
  }
  // Closes the descriptor; errors from close() are reported. Idempotent.
  virtual void Close() = 0;
  virtual const std::string& path() const = 0;
};

class ACKPT_EXPORT RandomAccessFile {
 public:
  virtual ~RandomAccessFile() = default;
  // Reads exactly n bytes at offset into dst; a short read throws kCorruption
  // ("unexpected end of file"). Safe to call from several threads at once.
  virtual void Read(uint64_t offset, size_t n, void* dst) const = 0;
  virtual uint64_t Size() const = 0;
  virtual const std::string& path() const = 0;
};

// An exclusive advisory lock on a file, held until this object is destroyed.
class ACKPT_EXPORT FileLock {
 public:
  virtual ~FileLock() = default;
  virtual const std::string& path() const = 0;
};

class ACKPT_EXPORT Env {
 public:
  virtual ~Env() = default;

  // The process-wide POSIX implementation. Never deleted.
  static Env* Default();

  // Creates a new file for writing; fails if it already exists (O_EXCL).
  virtual std::unique_ptr<WritableFile> NewWritableFile(const std::string& path) = 0;
  virtual std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& path) = 0;
  // Atomically replaces `to` with `from` (rename(2)).
  virtual void RenameFile(const std::string& from, const std::string& to) = 0;
  virtual void RemoveFile(const std::string& path) = 0;
  // fsyncs a directory, making renames and creations in it durable.
  virtual void SyncDir(const std::string& dir) = 0;
  // Names (not paths) of the entries of dir, "." and ".." excluded, unsorted.
  virtual std::vector<std::string> GetChildren(const std::string& dir) = 0;
  virtual bool FileExists(const std::string& path) = 0;
  virtual uint64_t GetFileSize(const std::string& path) = 0;
  // Modification time in seconds since the epoch.
  virtual double GetFileMTime(const std::string& path) = 0;
  // mkdir -p.
  virtual void CreateDirs(const std::string& dir) = 0;
  // Takes an exclusive advisory lock on `path` (creating it if missing) and
  // records `owner` (e.g. "pid 4711 on host a") in it, as leveldb's LockFile.
  // The lock is held until the returned object is destroyed, or the process
  // exits. Another holder, in this process or another, makes it throw kBusy
  // naming the path and the recorded owner. Never blocks.
  virtual std::unique_ptr<FileLock> LockFile(const std::string& path, const std::string& owner) = 0;
};

// Forwards every call to another Env; subclass it and override what you want
// to change (fault injection in tests, accounting, ...).
class ACKPT_EXPORT EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }

  std::unique_ptr<WritableFile> NewWritableFile(const std::string& p) override {
    return target_->NewWritableFile(p);
  }
  std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& p) override {
    return target_->NewRandomAccessFile(p);
  }
  void RenameFile(const std::string& f, const std::string& t) override {
    target_->RenameFile(f, t);
  }
  void RemoveFile(const std::string& p) override { target_->RemoveFile(p); }
  void SyncDir(const std::string& d) override { target_->SyncDir(d); }
  std::vector<std::string> GetChildren(const std::string& d) override {
    return target_->GetChildren(d);
  }
  bool FileExists(const std::string& p) override { return target_->FileExists(p); }
  uint64_t GetFileSize(const std::string& p) override { return target_->GetFileSize(p); }
  double GetFileMTime(const std::string& p) override { return target_->GetFileMTime(p); }
  void CreateDirs(const std::string& d) override { target_->CreateDirs(d); }
  std::unique_ptr<FileLock> LockFile(const std::string& p, const std::string& owner) override {
    return target_->LockFile(p, owner);
  }

 private:
  Env* target_;
};

// env->GetChildren(dir), or no names if dir does not exist.
ACKPT_EXPORT std::vector<std::string> GetChildrenIfExists(Env* env, const std::string& dir);

// Path helpers shared by the layers above.
ACKPT_EXPORT std::string DirName(const std::string& path);   // "a/b/c" -> "a/b", "c" -> "."
ACKPT_EXPORT std::string BaseName(const std::string& path);  // "a/b/c" -> "c"
ACKPT_EXPORT std::string JoinPath(const std::string& dir, const std::string& name);

}  // namespace ackpt
