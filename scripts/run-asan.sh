#!/usr/bin/env bash
# Builds the lifetime and hostile-input tests with AddressSanitizer and
# UndefinedBehaviorSanitizer (clang 14) and runs them. LibTorch itself is not
# instrumented. Leak checking is off: LibTorch keeps process-lifetime
# allocations, and an engine abandoned at shutdown (a write stuck in the
# kernel) deliberately leaks its state rather than hang.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${ACKPT_ASAN_BUILD_DIR:-build-asan}
TESTS=(dir_ownership_test ${ACKPT_ASAN_EXTRA_TESTS:-})
LAUNCHER=()
if command -v ccache >/dev/null; then LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-14 \
  -DACKPT_SANITIZE="address,undefined" -DACKPT_BUILD_BENCHMARKS=OFF -DACKPT_BUILD_EXAMPLES=OFF \
  "${LAUNCHER[@]}" >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target "${TESTS[@]}"
export ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 ${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 ${UBSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1
for t in "${TESTS[@]}"; do
  echo "== ASan+UBSan: $t"
  "$BUILD_DIR/tests/$t" --gtest_brief=1
done
echo "run-asan: OK"
