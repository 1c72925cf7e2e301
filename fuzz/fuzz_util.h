// Shared by the fuzz targets: only ackpt::Error may leave the code under test.
// Anything else (another exception, a sanitizer report, a trap) is a finding.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "ackpt/error.h"

namespace ackpt {
namespace fuzz {

template <typename F>
void ExpectOnlyAckptErrors(F&& f) {
  try {
    f();
  } catch (const ackpt::Error&) {
    // Rejecting bad input with a clear error is the expected outcome.
  } catch (const std::exception& e) {
    std::fprintf(stderr, "non-ackpt exception escaped: %s\n", e.what());
    std::abort();
  }
}

inline void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}

}  // namespace fuzz
}  // namespace ackpt
