// An Env whose files live in memory: fuzzers and hostile-input tests feed
// thousands of byte strings to the reader without touching the file system.
#pragma once

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "ackpt/env.h"
#include "ackpt/error.h"

namespace ackpt {
namespace testing {

class StringFile : public RandomAccessFile {
 public:
  StringFile(std::string path, std::shared_ptr<const std::string> data)
      : path_(std::move(path)), data_(std::move(data)) {}
  void Read(uint64_t offset, size_t n, void* dst) const override {
    if (offset > data_->size() || n > data_->size() - offset) {
      throw Error::Corruption("unexpected end of file reading '" + path_ + "' at offset " +
                              std::to_string(offset));
    }
    if (n) std::memcpy(dst, data_->data() + offset, n);
  }
  uint64_t Size() const override { return data_->size(); }
  const std::string& path() const override { return path_; }

 private:
  std::string path_;
  std::shared_ptr<const std::string> data_;
};

// Files Put() here are read from memory; every other call goes to the POSIX Env.
class MemEnv : public EnvWrapper {
 public:
  MemEnv() : EnvWrapper(Env::Default()) {}
  void Put(const std::string& path, std::string bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    files_[path] = std::make_shared<const std::string>(std::move(bytes));
  }
  std::unique_ptr<RandomAccessFile> NewRandomAccessFile(const std::string& path) override {
    std::shared_ptr<const std::string> data;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = files_.find(path);
      if (it != files_.end()) data = it->second;
    }
    if (!data) return EnvWrapper::NewRandomAccessFile(path);
    return std::make_unique<StringFile>(path, std::move(data));
  }

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<const std::string>> files_;
};

}  // namespace testing
}  // namespace ackpt
