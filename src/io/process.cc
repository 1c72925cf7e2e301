#include "io/process.h"

#include <signal.h>

#include <cerrno>

namespace ackpt {

bool ProcessExists(int64_t pid) {
  if (pid <= 0) return false;
  // EPERM: it exists but belongs to someone else.
  return ::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM;
}

}  // namespace ackpt
