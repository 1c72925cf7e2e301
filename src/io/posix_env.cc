// POSIX implementation of ackpt::Env.
#include "io/posix_env.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <utility>

#include "ackpt/error.h"

namespace ackpt {

namespace {

class PosixWritableFile final : public WritableFile {
 public:
  PosixWritableFile(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~PosixWritableFile() override {
    if (fd_ >= 0) ::close(fd_);
  }

  void Append(const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        throw Error::IO("write", path_, errno);
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }

  void Sync() override {
    if (::fdatasync(fd_) != 0) throw Error::IO("fdatasync", path_, errno);
  }

  // SYNC_FILE_RANGE_WRITE queues the range for writeback and returns; the
  // range hinted two calls ago is then waited for, so about two hints' worth
  // of dirty pages stay in flight while the caller appends the next (the
  // device, not the page cache, paces a large save, and the final fdatasync
  // finds little left). Waiting consumes a writeback error for this file
  // description, hence it is thrown here. A file system without the call
  // (EINVAL, ENOSYS, ESPIPE) just gets no hints.
  void StartWriteback(uint64_t offset, uint64_t n) override {
    if (!writeback_ || n == 0) return;
    if (!RangeSync(offset, n, SYNC_FILE_RANGE_WRITE)) return;
    if (older_.second > 0) {
      RangeSync(older_.first, older_.second,
                SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
    }
    older_ = newer_;
    newer_ = {offset, n};
  }

  void Close() override {
    if (fd_ < 0) return;
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) throw Error::IO("close", path_, errno);
  }

  const std::string& path() const override { return path_; }

 private:
  // False (and no more hints) where the file system does not support it.
  bool RangeSync(uint64_t offset, uint64_t n, unsigned flags) {
    while (::sync_file_range(fd_, static_cast<off64_t>(offset), static_cast<off64_t>(n), flags) !=
           0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL || errno == ENOSYS || errno == ESPIPE) {
        writeback_ = false;
        return false;
      }
      throw Error::IO("sync_file_range", path_, errno);
    }
    return true;
  }

  std::string path_;
  int fd_;
  bool writeback_ = true;
  // The last two hinted ranges (offset, length), oldest first.
  std::pair<uint64_t, uint64_t> older_{0, 0};
  std::pair<uint64_t, uint64_t> newer_{0, 0};
};

class PosixRandomAccessFile final : public RandomAccessFile {
 public:
  PosixRandomAccessFile(std::string path, int fd, uint64_t size)
      : path_(std::move(path)), fd_(fd), size_(size) {}
  ~PosixRandomAccessFile() override { ::close(fd_); }

  void Read(uint64_t offset, size_t n, void* dst) const override {
    char* p = static_cast<char*>(dst);
    while (n > 0) {
      ssize_t r = ::pread(fd_, p, n, static_cast<off_t>(offset));
      if (r < 0) {
        if (errno == EINTR) continue;
        throw Error::IO("pread", path_, errno);
      }
      if (r == 0) {
        throw Error::Corruption("unexpected end of file reading '" + path_ + "' at offset " +
                                std::to_string(offset));
      }
      p += r;
      n -= static_cast<size_t>(r);
      offset += static_cast<uint64_t>(r);
    }
  }

  uint64_t Size() const override { return size_; }
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  int fd_;
  uint64_t size_;
};

class PosixFileLock final : public FileLock {
 public:
  PosixFileLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  // Closing the descriptor releases the flock.
  ~PosixFileLock() override { ::close(fd_); }
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  int fd_;
};

class PosixEnv final : public Env {
 public:
  std::unique_ptr<WritableFile> NewWritableFile(const std::string& path) override {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw Error::IO("open", path, errno);
    return std::make_unique<PosixWritableFile>(path, fd);
  }

  std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& path) override {
    // O_NONBLOCK: opening a FIFO for reading blocks until a writer appears
    // (forever, for a stray FIFO named like a checkpoint). The type is checked
    // with fstat on the descriptor, so nothing can swap the file in between.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
      if (errno == ENOENT) throw Error::NotFound("no such file '" + path + "'");
      throw Error::IO("open", path, errno);
    }
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      throw Error::IO("fstat", path, err);
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error::InvalidArgument("'" + path + "' is not a regular file");
    }
    // A regular file: reads never block anyway, but pread gets ordinary
    // semantics (no EAGAIN from mandatory locks or odd file systems).
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
      const int err = errno;
      ::close(fd);
      throw Error::IO("fcntl", path, err);
    }
    return std::make_unique<PosixRandomAccessFile>(path, fd, static_cast<uint64_t>(st.st_size));
  }

  void RenameFile(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0)
      throw Error::IO("rename", from + "' -> '" + to, errno);
  }

  void RemoveFile(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) throw Error::IO("unlink", path, errno);
  }

  void SyncDir(const std::string& dir) override {
    int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) throw Error::IO("open", dir, errno);
    int rc = ::fsync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) throw Error::IO("fsync", dir, err);
  }

  std::vector<std::string> GetChildren(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) {
      if (errno == ENOENT) throw Error::NotFound("no such directory '" + dir + "'");
      throw Error::IO("opendir", dir, errno);
    }
    std::vector<std::string> out;
    while (struct dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") out.push_back(std::move(name));
    }
    ::closedir(d);
    return out;
  }

  bool FileExists(const std::string& path) override { return ::access(path.c_str(), F_OK) == 0; }

  uint64_t GetFileSize(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) throw Error::IO("stat", path, errno);
    return static_cast<uint64_t>(st.st_size);
  }

  double GetFileMTime(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) throw Error::IO("stat", path, errno);
    return static_cast<double>(st.st_mtim.tv_sec) + st.st_mtim.tv_nsec * 1e-9;
  }

  void CreateDirs(const std::string& dir) override {
    if (dir.empty() || dir == "." || dir == "/") return;
    struct stat st;
    if (::stat(dir.c_str(), &st) == 0) {
      if (S_ISDIR(st.st_mode)) return;
      throw Error::InvalidArgument("'" + dir + "' exists and is not a directory");
    }
    CreateDirs(DirName(dir));
    if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) throw Error::IO("mkdir", dir, errno);
  }

  // flock, not fcntl locks: a flock belongs to the open file description, so
  // a second lock from the same process conflicts too (fcntl locks would
  // silently succeed there and be dropped when any descriptor of the file is
  // closed).
  std::unique_ptr<FileLock> LockFile(const std::string& path, const std::string& owner) override {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) throw Error::IO("open", path, errno);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      std::string holder;
      if (err == EWOULDBLOCK) {
        char buf[256];
        ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
        if (n > 0) holder.assign(buf, static_cast<size_t>(n));
        while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0'))
          holder.pop_back();
      }
      ::close(fd);
      if (err == EWOULDBLOCK) {
        throw Error::Busy("'" + path + "' is locked by another writer" +
                          (holder.empty() ? std::string() : " (" + holder + ")"));
      }
      throw Error::IO("flock", path, err);
    }
    // Best effort: the owner text only improves the message another writer sees.
    if (::ftruncate(fd, 0) == 0) {
      const std::string text = owner + "\n";
      ssize_t ignored = ::pwrite(fd, text.data(), text.size(), 0);
      (void)ignored;
    }
    return std::make_unique<PosixFileLock>(path, fd);
  }
};

}  // namespace

Env* NewPosixEnv() { return new PosixEnv(); }

}  // namespace ackpt
