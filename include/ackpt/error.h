// ackpt::Error: the one exception type ackpt throws.
#pragma once

#include <stdexcept>
#include <string>

#include "ackpt/export.h"

namespace ackpt {

class ACKPT_EXPORT Error : public std::runtime_error {
 public:
  enum class Code {
    kInvalidArgument,  // the caller passed something ackpt cannot accept
    kIOError,          // a file-system call failed (message names call, path, errno text)
    kCorruption,       // a file is malformed, truncated or fails a checksum
    kNotFound,         // a file, tensor or key that was asked for does not exist
    kUnsupported,      // valid but not supported here (dtype, feature)
    kTimedOut,         // a bounded wait ran out
    kBusy,             // held by someone else (e.g. another writer owns the directory)
  };

  Error(Code code, const std::string& message);

  Code code() const noexcept { return code_; }
  // The message without the "ackpt: <code>: " prefix that what() carries.
  const std::string& message() const noexcept { return message_; }

  static Error InvalidArgument(const std::string& msg) {
    return Error(Code::kInvalidArgument, msg);
  }
  static Error Corruption(const std::string& msg) { return Error(Code::kCorruption, msg); }
  static Error NotFound(const std::string& msg) { return Error(Code::kNotFound, msg); }
  static Error Unsupported(const std::string& msg) { return Error(Code::kUnsupported, msg); }
  static Error TimedOut(const std::string& msg) { return Error(Code::kTimedOut, msg); }
  static Error Busy(const std::string& msg) { return Error(Code::kBusy, msg); }
  // "<call> '<path>': <strerror(err)>", e.g. "fsync '/ckpt/.x.tmp-1': No space left on device".
  static Error IO(const std::string& call, const std::string& path, int err);

 private:
  Code code_;
  std::string message_;
};

ACKPT_EXPORT const char* CodeName(Error::Code code);

}  // namespace ackpt
