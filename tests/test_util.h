// Shared test helpers: temp directories, a fault-injecting Env, sample states.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "ackpt/env.h"
#include "ackpt/error.h"
#include "ackpt/state_dict.h"

namespace ackpt {
namespace testing {

// Runs f and returns the ackpt::Error it throws; a test failure if none.
template <typename F>
Error CatchError(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "expected an ackpt::Error";
  return Error(Error::Code::kTimedOut, "<no error thrown>");
}

inline bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// A tensor's bytes (contiguous, on the CPU), for bit-exact comparisons.
inline std::string TensorBytes(const at::Tensor& t) {
  at::Tensor c = t.contiguous().cpu();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

// Every dtype the format stores.
inline const std::vector<at::ScalarType>& AllDtypes() {
  static const std::vector<at::ScalarType> kAll = {at::kBool,  at::kByte,  at::kChar, at::kShort,
                                                   at::kInt,   at::kLong,  at::kHalf, at::kBFloat16,
                                                   at::kFloat, at::kDouble};
  return kAll;
}

// A fresh directory under $TMPDIR, removed (recursively) on destruction.
class TempDir {
 public:
  TempDir() {
    const char* base = getenv("TMPDIR");
    std::string tmpl = std::string(base && *base ? base : "/tmp") + "/ackpt-test-XXXXXX";
    char* p = mkdtemp(tmpl.data());
    if (p == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFileBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Runs a shell command; returns its exit status (or -1).
inline int RunCommand(const std::string& cmd, std::string* output = nullptr) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int status = pclose(p);
  if (output) *output = out;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// File-system operations a FaultInjectionEnv can fail.
enum class Op {
  kOpenWrite,
  kAppend,
  kSync,
  kClose,
  kRename,
  kRemove,
  kSyncDir,
  kRead,
  kStartWriteback
};

inline const char* OpName(Op op) {
  switch (op) {
    case Op::kOpenWrite:
      return "open";
    case Op::kAppend:
      return "write";
    case Op::kSync:
      return "fdatasync";
    case Op::kClose:
      return "close";
    case Op::kRename:
      return "rename";
    case Op::kRemove:
      return "unlink";
    case Op::kSyncDir:
      return "fsync";
    case Op::kRead:
      return "pread";
    case Op::kStartWriteback:
      return "sync_file_range";
  }
  return "?";
}

// Wraps the POSIX Env and fails chosen operations with a chosen errno, the way
// leveldb's and tensorstore's fault-injection tests do. Thread-safe.
class FaultInjectionEnv : public EnvWrapper {
 public:
  FaultInjectionEnv() : EnvWrapper(Env::Default()) {}

  // Fail the next `count` calls of `op` (after skipping `skip` successful ones)
  // with `err`. count < 0: fail every call until Clear().
  void FailOp(Op op, int err, int count = -1, int skip = 0) {
    std::lock_guard<std::mutex> lock(mu_);
    faults_[op] = Fault{err, count, skip};
  }
  void Clear() {
    std::lock_guard<std::mutex> lock(mu_);
    faults_.clear();
  }
  int calls(Op op) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = calls_.find(op);
    return it == calls_.end() ? 0 : it->second;
  }
  // Optional hook run before every operation (e.g. to block or observe).
  void SetHook(std::function<void(Op, const std::string&)> hook) {
    std::lock_guard<std::mutex> lock(mu_);
    hook_ = std::move(hook);
  }

  // One RandomAccessFile::Read made through this Env (by any of its files).
  struct ReadRecord {
    std::string path;
    uint64_t offset;
    size_t length;
  };
  // Every read made through files opened by this Env, in call order.
  std::vector<ReadRecord> reads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reads_;
  }
  void ClearReads() {
    std::lock_guard<std::mutex> lock(mu_);
    reads_.clear();
  }
  void RecordRead(const std::string& path, uint64_t offset, size_t length) {
    std::lock_guard<std::mutex> lock(mu_);
    reads_.push_back({path, offset, length});
  }

  // Throws the injected error if `op` is set to fail now.
  void MaybeFail(Op op, const std::string& path) {
    std::function<void(Op, const std::string&)> hook;
    int err = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++calls_[op];
      hook = hook_;
      auto it = faults_.find(op);
      if (it != faults_.end()) {
        Fault& f = it->second;
        if (f.skip > 0) {
          --f.skip;
        } else if (f.count != 0) {
          if (f.count > 0) --f.count;
          err = f.err;
        }
      }
    }
    if (hook) hook(op, path);
    if (err != 0) throw Error::IO(OpName(op), path, err);
  }

  std::unique_ptr<WritableFile> NewWritableFile(const std::string& path) override;
  std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& path) override;
  void RenameFile(const std::string& from, const std::string& to) override {
    MaybeFail(Op::kRename, from);
    EnvWrapper::RenameFile(from, to);
  }
  void RemoveFile(const std::string& path) override {
    MaybeFail(Op::kRemove, path);
    EnvWrapper::RemoveFile(path);
  }
  void SyncDir(const std::string& dir) override {
    MaybeFail(Op::kSyncDir, dir);
    EnvWrapper::SyncDir(dir);
  }

 private:
  struct Fault {
    int err;
    int count;
    int skip;
  };
  mutable std::mutex mu_;
  std::map<Op, Fault> faults_;
  std::map<Op, int> calls_;
  std::function<void(Op, const std::string&)> hook_;
  std::vector<ReadRecord> reads_;
};

class FaultWritableFile : public WritableFile {
 public:
  FaultWritableFile(FaultInjectionEnv* env, std::unique_ptr<WritableFile> base)
      : env_(env), base_(std::move(base)) {}
  void Append(const void* data, size_t n) override {
    env_->MaybeFail(Op::kAppend, base_->path());
    base_->Append(data, n);
  }
  void Sync() override {
    env_->MaybeFail(Op::kSync, base_->path());
    base_->Sync();
  }
  void StartWriteback(uint64_t offset, uint64_t n) override {
    env_->MaybeFail(Op::kStartWriteback, base_->path());
    base_->StartWriteback(offset, n);
  }
  void Close() override {
    env_->MaybeFail(Op::kClose, base_->path());
    base_->Close();
  }
  const std::string& path() const override { return base_->path(); }

 private:
  FaultInjectionEnv* env_;
  std::unique_ptr<WritableFile> base_;
};

class FaultRandomAccessFile : public RandomAccessFile {
 public:
  FaultRandomAccessFile(FaultInjectionEnv* env, std::unique_ptr<RandomAccessFile> base)
      : env_(env), base_(std::move(base)) {}
  void Read(uint64_t offset, size_t n, void* dst) const override {
    env_->MaybeFail(Op::kRead, base_->path());
    {
      std::lock_guard<std::mutex> lock(mu_);
      reads_.emplace_back(offset, n);
    }
    env_->RecordRead(base_->path(), offset, n);
    base_->Read(offset, n, dst);
  }
  uint64_t Size() const override { return base_->Size(); }
  const std::string& path() const override { return base_->path(); }

  // Every (offset, length) read so far.
  std::vector<std::pair<uint64_t, size_t>> reads() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reads_;
  }

 private:
  FaultInjectionEnv* env_;
  std::unique_ptr<RandomAccessFile> base_;
  mutable std::mutex mu_;
  mutable std::vector<std::pair<uint64_t, size_t>> reads_;
};

inline std::unique_ptr<WritableFile> FaultInjectionEnv::NewWritableFile(const std::string& path) {
  MaybeFail(Op::kOpenWrite, path);
  return std::make_unique<FaultWritableFile>(this, EnvWrapper::NewWritableFile(path));
}

inline std::unique_ptr<RandomAccessFile> FaultInjectionEnv::NewRandomAccessFile(
    const std::string& path) {
  auto base = EnvWrapper::NewRandomAccessFile(path);
  return std::make_unique<FaultRandomAccessFile>(this, std::move(base));
}

// A hand-made safetensors stream: 8-byte little-endian length, `header_json`
// padded with spaces to a multiple of `align` (1 = no padding), then `data`.
inline std::string SafetensorsBytes(const std::string& header_json, const std::string& data,
                                    size_t align = 8) {
  std::string text = header_json;
  if (align > 1) text.append((align - text.size() % align) % align, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) {
    out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  }
  return out + text + data;
}

// Names in dir, sorted; the ownership lock file of a writing checkpointer
// (".ackpt.lock", always there once a writer opened the directory) left out.
inline std::vector<std::string> ListDir(const std::string& dir) {
  auto names = Env::Default()->GetChildren(dir);
  names.erase(std::remove(names.begin(), names.end(), ".ackpt.lock"), names.end());
  std::sort(names.begin(), names.end());
  return names;
}

// A deterministic tensor whose values are exact in every dtype.
inline at::Tensor PatternTensor(at::IntArrayRef shape, at::ScalarType dtype, int seed = 0) {
  int64_t n = 1;
  for (auto d : shape) n *= d;
  at::Tensor t = at::arange(n, at::kLong).mul(7).add(seed).remainder(251).sub(100);
  if (dtype == at::kBool) return t.remainder(2).eq(1).reshape(shape);
  if (at::isFloatingType(dtype)) return t.to(at::kDouble).div(8).to(dtype).reshape(shape);
  if (dtype == at::kByte) return t.add(100).to(dtype).reshape(shape);
  return t.to(dtype).reshape(shape);
}

// A nested state with every value kind.
inline StateDict SampleState(int seed = 0) {
  StateDict model;
  model.set("encoder.weight", PatternTensor({64, 32}, at::kFloat, seed));
  model.set("encoder.bias", PatternTensor({64}, at::kFloat, seed + 1));
  model.set("head.weight", PatternTensor({10, 64}, at::kBFloat16, seed + 2));
  StateDict optim;
  optim.set("step", int64_t{1234});
  optim.set("lr", 3e-4);
  optim.set("amsgrad", false);
  optim.set("name", std::string("adam"));
  optim.set("state", List{StateDict{{"exp_avg", PatternTensor({64, 32}, at::kFloat, seed + 3)},
                                    {"exp_avg_sq", PatternTensor({64, 32}, at::kFloat, seed + 4)}},
                          StateDict{}});
  optim.set("betas", List{0.9, 0.999});
  StateDict state;
  state.set("model", model);
  state.set("optimizer", optim);
  state.set("empty_dict", StateDict{});
  state.set("empty_list", List{});
  return state;
}

}  // namespace testing
}  // namespace ackpt
