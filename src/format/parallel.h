// Running independent pieces of work on several threads: the format layer's
// own fan-out, and the shape in which the engine hands it its writer pool.
#pragma once

#include <cstddef>
#include <functional>

namespace ackpt {
namespace format {

// Runs fn(0..n-1), each index once, on some threads: what the encoder and
// HashTensors are given (ParallelFor below, or the engine's writer pool).
using ParallelForFn = std::function<void(size_t n, const std::function<void(size_t)>& fn)>;
// Runs fn(0..n-1), each index once, on up to `threads` threads (the caller is
// one of them). Rethrows the first exception after all started work is done.
void ParallelFor(size_t n, int threads, const std::function<void(size_t)>& fn);
// `threads`, or std::thread::hardware_concurrency() (at least 1) for 0.
int ResolveThreads(int threads);

}  // namespace format
}  // namespace ackpt
