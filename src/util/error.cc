#include "ackpt/error.h"

#include <cstring>

namespace ackpt {

const char* CodeName(Error::Code code) {
  switch (code) {
    case Error::Code::kInvalidArgument:
      return "invalid argument";
    case Error::Code::kIOError:
      return "I/O error";
    case Error::Code::kCorruption:
      return "corruption";
    case Error::Code::kNotFound:
      return "not found";
    case Error::Code::kUnsupported:
      return "unsupported";
    case Error::Code::kTimedOut:
      return "timed out";
    case Error::Code::kBusy:
      return "busy";
  }
  return "unknown";
}

Error::Error(Code code, const std::string& message)
    : std::runtime_error(std::string("ackpt: ") + CodeName(code) + ": " + message),
      code_(code),
      message_(message) {}

Error Error::IO(const std::string& call, const std::string& path, int err) {
  char buf[256];
  // GNU strerror_r returns a pointer that may or may not be buf.
  const char* text = strerror_r(err, buf, sizeof(buf));
  return Error(Code::kIOError, call + " '" + path + "': " + text);
}

}  // namespace ackpt
