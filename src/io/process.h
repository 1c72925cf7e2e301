// Process facts the io layer knows (POSIX).
#pragma once

#include <cstdint>

namespace ackpt {

// True if a process with this id exists on this host (kill(pid, 0)). A
// reused pid reads as alive: callers treat "alive" as "maybe still writing".
bool ProcessExists(int64_t pid);

}  // namespace ackpt
