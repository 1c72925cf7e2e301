// The POSIX file system behind Env::Default().
#pragma once

#include "ackpt/env.h"

namespace ackpt {

// A new POSIX Env (the process keeps one, Env::Default()).
Env* NewPosixEnv();

}  // namespace ackpt
