#include "io/detachable_env.h"

#include <chrono>

#include "ackpt/error.h"

namespace ackpt {

namespace {

// Files keep their Env alive and, once it is detached, are leaked rather than
// destroyed: their destructors belong to the wrapped Env's code.
template <typename T>
void DestroyThrough(DetachableEnv& env, std::unique_ptr<T>* object) {
  if (env.detached()) {
    object->release();
    return;
  }
  try {
    env.Call("close", [&] { object->reset(); });
  } catch (...) {
    object->release();
  }
}

class DetachableWritableFile final : public WritableFile {
 public:
  DetachableWritableFile(std::shared_ptr<DetachableEnv> env, std::unique_ptr<WritableFile> f)
      : env_(std::move(env)), file_(std::move(f)), path_(file_->path()) {}
  ~DetachableWritableFile() override { DestroyThrough(*env_, &file_); }
  void Append(const void* data, size_t n) override {
    env_->Call("write", [&] { file_->Append(data, n); });
  }
  void Sync() override {
    env_->Call("fsync", [&] { file_->Sync(); });
  }
  void StartWriteback(uint64_t offset, uint64_t n) override {
    env_->Call("sync_file_range", [&] { file_->StartWriteback(offset, n); });
  }
  void Close() override {
    env_->Call("close", [&] { file_->Close(); });
  }
  const std::string& path() const override { return path_; }

 private:
  std::shared_ptr<DetachableEnv> env_;
  std::unique_ptr<WritableFile> file_;
  const std::string path_;
};

class DetachableRandomAccessFile final : public RandomAccessFile {
 public:
  DetachableRandomAccessFile(std::shared_ptr<DetachableEnv> env,
                             std::unique_ptr<RandomAccessFile> f)
      : env_(std::move(env)), file_(std::move(f)), path_(file_->path()), size_(file_->Size()) {}
  ~DetachableRandomAccessFile() override { DestroyThrough(*env_, &file_); }
  void Read(uint64_t offset, size_t n, void* dst) const override {
    env_->Call("read", [&] { file_->Read(offset, n, dst); });
  }
  uint64_t Size() const override { return size_; }
  const std::string& path() const override { return path_; }

 private:
  std::shared_ptr<DetachableEnv> env_;
  std::unique_ptr<RandomAccessFile> file_;
  const std::string path_;
  const uint64_t size_;
};

class DetachableFileLock final : public FileLock {
 public:
  DetachableFileLock(std::shared_ptr<DetachableEnv> env, std::unique_ptr<FileLock> lock)
      : env_(std::move(env)), lock_(std::move(lock)), path_(lock_->path()) {}
  ~DetachableFileLock() override { DestroyThrough(*env_, &lock_); }
  const std::string& path() const override { return path_; }

 private:
  std::shared_ptr<DetachableEnv> env_;
  std::unique_ptr<FileLock> lock_;
  const std::string path_;
};

}  // namespace

std::shared_ptr<DetachableEnv> DetachableEnv::Create(Env* target) {
  return std::shared_ptr<DetachableEnv>(new DetachableEnv(target));
}

void DetachableEnv::Enter(const char* what) {
  std::lock_guard<std::mutex> lock(mu_);
  if (detached_) {
    throw Error::TimedOut(std::string(what) +
                          ": the file system was detached when its owner shut down");
  }
  ++active_;
}

void DetachableEnv::Leave() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--active_ == 0) cv_.notify_all();
}

bool DetachableEnv::Detach(double wait_seconds) {
  std::unique_lock<std::mutex> lock(mu_);
  detached_ = true;
  return cv_.wait_for(lock, std::chrono::duration<double>(wait_seconds),
                      [&] { return active_ == 0; });
}

bool DetachableEnv::detached() const {
  std::lock_guard<std::mutex> lock(mu_);
  return detached_;
}

std::unique_ptr<WritableFile> DetachableEnv::NewWritableFile(const std::string& path) {
  auto f = Call("open", [&] { return target_->NewWritableFile(path); });
  return std::make_unique<DetachableWritableFile>(shared_from_this(), std::move(f));
}

std::unique_ptr<RandomAccessFile> DetachableEnv::NewRandomAccessFile(const std::string& path) {
  auto f = Call("open", [&] { return target_->NewRandomAccessFile(path); });
  return std::make_unique<DetachableRandomAccessFile>(shared_from_this(), std::move(f));
}

void DetachableEnv::RenameFile(const std::string& from, const std::string& to) {
  Call("rename", [&] { target_->RenameFile(from, to); });
}
void DetachableEnv::RemoveFile(const std::string& path) {
  Call("unlink", [&] { target_->RemoveFile(path); });
}
void DetachableEnv::SyncDir(const std::string& dir) {
  Call("fsync", [&] { target_->SyncDir(dir); });
}
std::vector<std::string> DetachableEnv::GetChildren(const std::string& dir) {
  return Call("opendir", [&] { return target_->GetChildren(dir); });
}
bool DetachableEnv::FileExists(const std::string& path) {
  return Call("access", [&] { return target_->FileExists(path); });
}
uint64_t DetachableEnv::GetFileSize(const std::string& path) {
  return Call("stat", [&] { return target_->GetFileSize(path); });
}
double DetachableEnv::GetFileMTime(const std::string& path) {
  return Call("stat", [&] { return target_->GetFileMTime(path); });
}
void DetachableEnv::CreateDirs(const std::string& dir) {
  Call("mkdir", [&] { target_->CreateDirs(dir); });
}
std::unique_ptr<FileLock> DetachableEnv::LockFile(const std::string& path,
                                                  const std::string& owner) {
  auto l = Call("lock", [&] { return target_->LockFile(path, owner); });
  return std::make_unique<DetachableFileLock>(shared_from_this(), std::move(l));
}

}  // namespace ackpt
