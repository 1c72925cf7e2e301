#include "io/atomic_file.h"

#include <unistd.h>

#include <atomic>
#include <cctype>

#include "ackpt/error.h"

namespace ackpt {

namespace {

constexpr const char* kTempMarker = ".tmp-";

bool AllDigits(const std::string& s, size_t begin, size_t end) {
  if (begin >= end) return false;
  for (size_t i = begin; i < end; ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

}  // namespace

std::string TempFileName(const std::string& final_name) {
  static std::atomic<uint64_t> counter{0};
  return "." + BaseName(final_name) + kTempMarker + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

bool IsTempFileName(const std::string& file_name) {
  const std::string name = BaseName(file_name);
  if (name.size() < 2 || name[0] != '.') return false;
  size_t tmp = name.rfind(kTempMarker);
  if (tmp == std::string::npos || tmp < 2) return false;
  size_t dash = name.find('-', tmp + 5);
  if (dash == std::string::npos) return false;
  return AllDigits(name, tmp + 5, dash) && AllDigits(name, dash + 1, name.size());
}

std::optional<std::string> TempFileTarget(const std::string& file_name) {
  if (!IsTempFileName(file_name)) return std::nullopt;
  const std::string name = BaseName(file_name);
  return name.substr(1, name.rfind(kTempMarker) - 1);
}

std::optional<int64_t> TempFileWriterPid(const std::string& file_name) {
  if (!IsTempFileName(file_name)) return std::nullopt;
  const std::string name = BaseName(file_name);
  const size_t begin = name.rfind(kTempMarker) + 5;
  const std::string digits = name.substr(begin, name.find('-', begin) - begin);
  if (digits.size() > 18) return std::nullopt;
  return static_cast<int64_t>(std::stoll(digits));
}

void AtomicWrite(Env* env, const std::string& path, bool fsync,
                 const std::function<void(WritableFile*)>& body) {
  const std::string dir = DirName(path);
  const std::string tmp = JoinPath(dir, TempFileName(path));
  std::unique_ptr<WritableFile> file = env->NewWritableFile(tmp);
  try {
    body(file.get());
    if (fsync) file->Sync();
    file->Close();
    env->RenameFile(tmp, path);
  } catch (...) {
    file.reset();
    try {
      env->RemoveFile(tmp);
    } catch (...) {
      // The original error is the one worth reporting.
    }
    throw;
  }
  // After the rename the final name holds the complete file; this makes the
  // rename itself durable.
  if (fsync) env->SyncDir(dir);
}

}  // namespace ackpt
